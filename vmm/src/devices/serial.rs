//! The 8250 UART on COM1 (0x3f8, IRQ 4) backed by vm-superio, writing to stdout, a file or memory.

use super::{BusAction, PortDevice};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// First I/O port of COM1.
pub(crate) const COM1_BASE: u16 = 0x3f8;
/// Number of I/O ports a UART decodes.
pub(crate) const COM1_LEN: u16 = 8;
/// ISA IRQ (and IOAPIC GSI) of COM1.
pub(crate) const COM1_IRQ: u32 = 4;

/// The serial port's output could not be opened, or its saved state not restored.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open serial output {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt or unsupported VM state blob: serial port state: {0}")]
    State(#[source] vm_superio::serial::Error<std::io::Error>),
}

/// Where the guest's console output goes.
#[derive(Debug, Clone, Default)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Kept in memory (tests read it back).
    Capture(Arc<Mutex<Vec<u8>>>),
    /// Kept in memory and appended to a file (the vmm watches the console for a marker).
    Tee(Arc<Mutex<Vec<u8>>>, PathBuf),
    /// Dropped.
    Sink,
}

impl SerialOutput {
    fn open(&self) -> Result<Box<dyn Write + Send>, SerialError> {
        Ok(match self {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            SerialOutput::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| SerialError::Open {
                        path: p.clone(),
                        source,
                    })?,
            ),
            SerialOutput::Capture(buf) => Box::new(CaptureWriter(buf.clone())),
            SerialOutput::Tee(buf, p) => Box::new(TeeWriter(
                CaptureWriter(buf.clone()),
                SerialOutput::File(p.clone()).open()?,
            )),
            SerialOutput::Sink => Box::new(std::io::sink()),
        })
    }
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct TeeWriter(CaptureWriter, Box<dyn Write + Send>);

impl Write for TeeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(data)?;
        self.1.write_all(data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

/// Raises the UART's interrupt through an irqfd registered for IRQ 4.
pub(crate) struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serializable state of the UART (vm-superio's SerialState mirrored with serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&UartState> for SerialState {
    fn from(s: &UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// COM1: the vm-superio device behind a lock shared by the vCPU threads and the console input.
pub(crate) struct Uart {
    inner: Mutex<Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>>,
    /// Signalled when the guest reads the receive register: the FIFO may have room for input.
    room: Condvar,
}

impl Uart {
    /// A UART in reset state (or in `state`), raising `irq_evt` for interrupts.
    pub(crate) fn new(
        irq_evt: EventFd,
        out: &SerialOutput,
        state: Option<&UartState>,
    ) -> Result<Uart, SerialError> {
        let writer = out.open()?;
        let trigger = IrqTrigger(irq_evt);
        let serial = match state {
            None => Serial::new(trigger, writer),
            Some(s) => Serial::from_state(&s.into(), trigger, NoEvents, writer)
                .map_err(SerialError::State)?,
        };
        Ok(Uart {
            inner: Mutex::new(serial),
            room: Condvar::new(),
        })
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A guest write to port `COM1_BASE + offset`.
    pub(crate) fn write(&self, offset: u8, value: u8) {
        let mut s = self.lock();
        if let Err(e) = s.write(offset, value) {
            tracing::warn!("serial write at offset {offset}: {e:?}");
        }
        if offset == 0 {
            let _ = s.writer_mut().flush();
        }
    }

    /// A guest read of port `COM1_BASE + offset`.
    pub(crate) fn read(&self, offset: u8) -> u8 {
        let value = self.lock().read(offset);
        if offset == 0 {
            self.room.notify_all();
        }
        value
    }

    /// Puts console input in the receive FIFO (raising the receive interrupt if the guest
    /// enabled it) and returns how many bytes of `input` it took: as many as fit. With the FIFO
    /// full (or the UART in loopback mode), first waits up to `wait` for the guest to read.
    pub(crate) fn enqueue_input(&self, input: &[u8], wait: Duration) -> usize {
        let mut s = self.lock();
        for attempt in 0..2 {
            let room = s.fifo_capacity().min(input.len());
            if room > 0 {
                match s.enqueue_raw_bytes(input) {
                    Ok(n) if n > 0 => return n,
                    Ok(_) => {} // loopback mode takes no input
                    Err(e) => {
                        // The bytes are queued; only the interrupt failed.
                        tracing::warn!("serial input interrupt: {e:?}");
                        return room;
                    }
                }
            }
            if attempt == 0 {
                s = match self.room.wait_timeout(s, wait) {
                    Ok((guard, _)) => guard,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        0
    }

    /// The device state for a checkpoint.
    pub(crate) fn state(&self) -> UartState {
        self.lock().state().into()
    }
}

impl PortDevice for Uart {
    fn write(&self, _cpu: u32, offset: u16, data: &[u8]) -> BusAction {
        if let Some(&b) = data.first() {
            Uart::write(self, offset as u8, b);
        }
        BusAction::Continue
    }

    fn read(&self, offset: u16, data: &mut [u8]) {
        let v = Uart::read(self, offset as u8);
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_captured_and_state_round_trips() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out = SerialOutput::Capture(buf.clone());
        let uart = Uart::new(EventFd::new(0).unwrap(), &out, None).unwrap();
        for b in b"hi\n" {
            uart.write(0, *b);
        }
        uart.write(7, 0x5a); // scratch register
        assert_eq!(&buf.lock().unwrap()[..], b"hi\n");
        let st = uart.state();
        assert_eq!(st.scratch, 0x5a);
        let copy = Uart::new(EventFd::new(0).unwrap(), &SerialOutput::Sink, Some(&st)).unwrap();
        assert_eq!(copy.read(7), 0x5a);
        assert_eq!(copy.state(), st);
    }
}
