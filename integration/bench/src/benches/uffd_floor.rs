//! The bare userfaultfd floor benchmarks compare against: a plain handler
//! thread that serves each fault with one `UFFDIO_COPY` of the aligned block
//! around it from a buffer already in memory, and nothing else.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use userfaultfd::{Event, Uffd};

/// A running floor handler; stops when dropped.
pub(super) struct FloorHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FloorHandler {
    /// Serves faults on `uffd` (registered over `base .. base + source.len()`)
    /// with blocks of `block_bytes` copied from `source`.
    ///
    /// # Safety
    /// `base .. base + source.len()` must be a range registered with `uffd`
    /// in this process's address space, mapped for as long as the handler runs.
    pub(super) unsafe fn start(
        uffd: Arc<Uffd>,
        base: u64,
        source: Arc<Vec<u8>>,
        block_bytes: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut fds = [libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: one initialised pollfd that outlives the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 20) };
                if n <= 0 {
                    continue;
                }
                while let Ok(Some(Event::Pagefault { addr, .. })) = uffd.read_event() {
                    let off = (addr as u64 - base) as usize / block_bytes * block_bytes;
                    let len = block_bytes.min(source.len() - off);
                    // SAFETY: the caller guarantees the destination range is
                    // registered and mapped; the source is a live buffer of
                    // at least `off + len` bytes.
                    let _ = unsafe {
                        uffd.copy(
                            source[off..].as_ptr().cast(),
                            (base + off as u64) as *mut libc::c_void,
                            len,
                            true,
                        )
                    };
                }
            }
        });
        FloorHandler {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FloorHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
