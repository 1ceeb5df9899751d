//! Guest memory as a VMM maps it for a lazy restore, without a VM: an
//! anonymous mapping registered with userfaultfd (missing mode) and handed
//! to an agent over its Unix socket exactly as the vmm does (the uffd by
//! SCM_RIGHTS with one JSON message). Touching its pages then faults them in
//! through the agent. Tests and the trace-replaying benchmarks use it.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use thaw_format::handoff::{Handoff, RegionMapping};
use userfaultfd::{Uffd, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("mmap of {0} bytes: {1}")]
    Map(usize, std::io::Error),
    #[error("userfaultfd: {0}")]
    Uffd(String),
    #[error("connecting to the agent at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sending the hand-off: {0}")]
    Send(String),
}

pub struct MappedGuest {
    addr: *mut u8,
    len: usize,
    page_size: usize,
    uffd: Arc<Uffd>,
}

// SAFETY: the mapping is plain memory owned by this value; the raw pointer
// is only an address, valid in every thread of the process.
unsafe impl Send for MappedGuest {}
// SAFETY: shared access only reads the memory (faults are served by the agent).
unsafe impl Sync for MappedGuest {}

impl MappedGuest {
    /// Maps `len` bytes (a multiple of 4 KiB) and registers them with a new userfaultfd.
    pub fn new(len: usize) -> Result<Self, GuestError> {
        let page_size = 4096;
        assert!(len > 0 && len.is_multiple_of(page_size), "whole pages");
        // SAFETY: an anonymous private mapping at an address the kernel picks;
        // nothing else is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(GuestError::Map(len, std::io::Error::last_os_error()));
        }
        let guest = |uffd| MappedGuest {
            addr: addr.cast(),
            len,
            page_size,
            uffd,
        };
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(true)
            .create();
        let uffd = match uffd {
            Ok(u) => u,
            Err(e) => {
                // SAFETY: unmapping the mapping made above, not yet shared.
                unsafe { libc::munmap(addr, len) };
                return Err(GuestError::Uffd(format!("create: {e}")));
            }
        };
        let g = guest(Arc::new(uffd));
        g.uffd
            .register(addr, len)
            .map_err(|e| GuestError::Uffd(format!("register: {e}")))?;
        Ok(g)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The userfaultfd, to serve faults in this process (the floor handler).
    pub fn uffd(&self) -> Arc<Uffd> {
        self.uffd.clone()
    }

    pub fn host_addr(&self) -> u64 {
        self.addr as u64
    }

    /// The hand-off describing this memory as one region at guest address 0.
    pub fn handoff(&self, store: Option<&str>, checkpoint: Option<&str>) -> Handoff {
        let mut h = Handoff::new(vec![RegionMapping {
            base_host_virt_addr: self.addr as u64,
            size: self.len as u64,
            offset: 0,
            page_size: self.page_size as u64,
            guest_phys_addr: Some(0),
        }]);
        h.store = store.map(str::to_owned);
        h.checkpoint = checkpoint.map(str::to_owned);
        h
    }

    /// Connects to the agent and sends `message` with the uffd. The returned
    /// connection must stay open while the memory is in use: closing it ends
    /// the restore.
    pub fn hand_off(&self, socket: &Path, message: &[u8]) -> Result<UnixStream, GuestError> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let sock = UnixStream::connect(socket).map_err(|source| GuestError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        let n = sock
            .send_with_fd(message, self.uffd.as_raw_fd())
            .map_err(|e| GuestError::Send(e.to_string()))?;
        (&sock)
            .write_all(&message[n..])
            .map_err(|e| GuestError::Send(e.to_string()))?;
        Ok(sock)
    }

    /// Reads one byte of `page`: faults it in if missing.
    pub fn touch(&self, page: u64) -> u8 {
        assert!((page as usize) < self.len / self.page_size);
        // SAFETY: the address is inside the live mapping; a volatile read so
        // the access (and its fault) really happens.
        unsafe { std::ptr::read_volatile(self.addr.add(page as usize * self.page_size)) }
    }

    /// All of the memory (touching what is missing).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes for as long as `self`
        // lives; missing pages are faulted in on access.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }
}

impl Drop for MappedGuest {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no reference into it outlives
        // `self` (`bytes` borrows `self`).
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}
