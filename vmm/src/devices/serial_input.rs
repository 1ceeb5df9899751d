//! Console input: a thread that reads the host's standard input (or any readable file) and puts
//! the bytes in COM1's receive FIFO, raising the UART's receive interrupt as a keyboard on a
//! real serial line would.
//!
//! The thread sleeps in poll(2) until input or a stop request arrives; when the FIFO is full it
//! waits for the guest to read from the UART, never spinning. End of input (a closed pipe,
//! /dev/null) ends the thread: nothing more is sent. It stops with the VM.

use super::serial::Uart;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// How long a reader blocked on a full FIFO waits before it checks for a stop request again.
const FULL_WAIT: Duration = Duration::from_millis(100);
/// Bytes read from the source at a time (the size of the UART's FIFO).
const CHUNK: usize = 64;

/// The console input could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SerialInputError {
    #[error("cannot create the console input's stop eventfd: {0}")]
    Eventfd(#[source] std::io::Error),
    #[error("cannot start the console input thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running console input thread; dropping it stops it.
pub(crate) struct SerialInput {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

/// The stop request: a flag for the FIFO wait, an eventfd to wake the poll.
struct Stop {
    flag: AtomicBool,
    evt: EventFd,
}

impl Stop {
    fn requested(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// What poll(2) saw.
enum Ready {
    Input,
    Stop,
    /// The source cannot be read any more (closed, invalid, hung up with nothing left).
    Gone,
}

/// Waits until `source` has input (or its end) or `stop` is signalled.
fn wait(source: &File, stop: &Stop) -> Ready {
    let mut fds = [
        libc::pollfd {
            fd: source.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two valid pollfds that outlives the call, and both fds
        // stay open while this thread runs (the thread owns `source`; `stop` is kept alive by
        // the Arc it holds).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Ready::Gone;
        }
        if fds[1].revents != 0 || stop.requested() {
            return Ready::Stop;
        }
        let r = fds[0].revents;
        if r & libc::POLLNVAL != 0 {
            return Ready::Gone;
        }
        // Readable, or hung up / in error: the read says which (0 bytes at the end).
        if r != 0 {
            return Ready::Input;
        }
    }
}

fn run(uart: Arc<Uart>, mut source: File, stop: Arc<Stop>) {
    let mut buf = [0u8; CHUNK];
    loop {
        match wait(&source, &stop) {
            Ready::Stop | Ready::Gone => return,
            Ready::Input => {}
        }
        let n = match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("console input: {e}; no more input reaches the guest");
                return;
            }
        };
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            if stop.requested() {
                return;
            }
            let taken = uart.enqueue_input(pending, FULL_WAIT);
            pending = &pending[taken..];
        }
    }
}

impl SerialInput {
    /// Starts feeding `source` to `uart`.
    pub(crate) fn spawn(uart: Arc<Uart>, source: File) -> Result<SerialInput, SerialInputError> {
        let stop = Arc::new(Stop {
            flag: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK).map_err(SerialInputError::Eventfd)?,
        });
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("console-input".into())
            .spawn(move || run(uart, source, thread_stop))
            .map_err(SerialInputError::Thread)?;
        Ok(SerialInput {
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the thread has ended (its source ended, or it was stopped).
    #[cfg(test)]
    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the thread and waits for it (at most about [`FULL_WAIT`]).
    pub(crate) fn stop(&mut self) {
        self.stop.flag.store(true, Ordering::Release);
        let _ = self.stop.evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SerialInput {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The host's standard input, if this process should read it for the guest console: it is open
/// and, when it is a terminal, this process is in the terminal's foreground (a background job
/// reading it would be stopped by SIGTTIN).
pub fn host_stdin() -> Option<File> {
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    // SAFETY: isatty, tcgetpgrp and getpgrp only read process and terminal attributes; `fd` is
    // this process's standard input (an invalid fd just makes them fail).
    let foreground = unsafe { libc::isatty(fd) == 0 || libc::tcgetpgrp(fd) == libc::getpgrp() };
    if !foreground {
        return None;
    }
    use std::os::fd::AsFd;
    stdin.as_fd().try_clone_to_owned().ok().map(File::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::serial::{SerialOutput, COM1_BASE, COM1_LEN};
    use crate::devices::PortBus;
    use std::io::Write;
    use std::time::Instant;

    /// A pipe: (read end, write end).
    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Line status register: data ready.
    const LSR_DATA_READY: u8 = 0x01;

    #[test]
    fn input_reaches_the_receive_register_with_an_interrupt_and_survives_a_restore() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let uart =
            Arc::new(Uart::new(irq.try_clone().unwrap(), &SerialOutput::Sink, None).unwrap());
        uart.write(1, 0x01); // IER: received-data interrupt on
        let (r, mut w) = pipe();
        let mut input = SerialInput::spawn(uart.clone(), r).unwrap();
        w.write_all(b"hello").unwrap();
        wait_for("the input to reach the FIFO", || {
            uart.state().in_buffer.len() == 5
        });
        assert!(irq.read().unwrap() >= 1, "the receive interrupt was raised");
        // The guest reads it through the port bus, as a vCPU's `in` does.
        let mut bus = PortBus::new();
        bus.insert(COM1_BASE, COM1_LEN, uart.clone());
        let inb = |port| {
            let mut b = [0u8];
            bus.read(port, &mut b);
            b[0]
        };
        assert_eq!(inb(COM1_BASE + 5) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(inb(COM1_BASE), b'h');
        assert_eq!(inb(COM1_BASE), b'e');

        // What the guest has not read yet is in the saved state and reads back after a restore.
        let saved = uart.state();
        assert_eq!(saved.in_buffer, b"llo");
        let copy = Uart::new(EventFd::new(0).unwrap(), &SerialOutput::Sink, Some(&saved)).unwrap();
        let rest: Vec<u8> = (0..3).map(|_| copy.read(0)).collect();
        assert_eq!(rest, b"llo");
        assert_eq!(copy.read(5) & LSR_DATA_READY, 0, "FIFO empty");

        // Stopping does not wait for the source to end (the write end is still open).
        input.stop();
        assert!(input.is_finished());
        drop(w);
    }

    #[test]
    fn a_full_fifo_holds_input_back_until_the_guest_reads() {
        let uart =
            Arc::new(Uart::new(EventFd::new(0).unwrap(), &SerialOutput::Sink, None).unwrap());
        let (r, mut w) = pipe();
        let input = SerialInput::spawn(uart.clone(), r).unwrap();
        let sent: Vec<u8> = (0..200u8).collect();
        w.write_all(&sent).unwrap();
        drop(w);
        wait_for("the FIFO to fill", || uart.state().in_buffer.len() == CHUNK);
        let mut got = Vec::new();
        while got.len() < sent.len() {
            if uart.read(5) & LSR_DATA_READY != 0 {
                got.push(uart.read(0));
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(got, sent, "every byte, in order, none lost to a full FIFO");
        wait_for("the thread to end at the end of input", || {
            input.is_finished()
        });
    }

    #[test]
    fn an_empty_source_ends_the_thread_and_sends_nothing() {
        let uart =
            Arc::new(Uart::new(EventFd::new(0).unwrap(), &SerialOutput::Sink, None).unwrap());
        let input = SerialInput::spawn(uart.clone(), File::open("/dev/null").unwrap()).unwrap();
        wait_for("the thread to end", || input.is_finished());
        assert!(uart.state().in_buffer.is_empty());
    }
}
