//! Firecracker's side of a `Uffd` memory backend, played by the test process: guest memory
//! mapped as Firecracker maps it (one anonymous private mapping per region, registered for
//! missing faults on a userfaultfd created with `UFFD_FEATURE_EVENT_REMOVE`), and the hand-off
//! message each Firecracker version sends with the userfaultfd by SCM_RIGHTS.

#![allow(dead_code)] // each test binary uses some of these

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// One guest memory region as mapped.
pub struct Region {
    pub addr: u64,
    pub size: usize,
    /// Its place in the memory file (the regions concatenated).
    pub offset: u64,
}

pub struct FirecrackerMemory {
    pub regions: Vec<Region>,
    pub page_size: usize,
    pub uffd: Uffd,
}

// SAFETY: the mappings are plain memory owned by this value; the addresses are valid in every
// thread of the process.
unsafe impl Sync for FirecrackerMemory {}

impl FirecrackerMemory {
    /// Maps regions of `sizes` bytes in pages of `page_size` (2 MiB: hugetlbfs, as Firecracker's
    /// `huge_pages: "2M"`) and registers them on a new userfaultfd with the REMOVE event.
    pub fn new(sizes: &[usize], page_size: usize) -> std::io::Result<Self> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        if page_size == 2 << 20 {
            flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        }
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(true)
            .require_features(FeatureFlags::EVENT_REMOVE)
            .create()
            .map_err(|e| std::io::Error::other(format!("userfaultfd: {e}")))?;
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for &size in sizes {
            // SAFETY: a new anonymous private mapping at an address the kernel picks.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    -1,
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            regions.push(Region {
                addr: addr as u64,
                size,
                offset,
            });
            uffd.register(addr, size)
                .map_err(|e| std::io::Error::other(format!("register: {e}")))?;
            offset += size as u64;
        }
        Ok(FirecrackerMemory {
            regions,
            page_size,
            uffd,
        })
    }

    /// Firecracker 1.12 and later: `serde_json::to_string` of its `GuestRegionUffdMapping`s,
    /// the page size under both keys.
    pub fn message_1_12(&self) -> Vec<u8> {
        self.message(|ps| format!(r#","page_size":{ps},"page_size_kib":{ps}"#))
    }

    /// Firecracker 1.7 to 1.11: the page size (in bytes) as `page_size_kib` only.
    pub fn message_1_7(&self) -> Vec<u8> {
        self.message(|ps| format!(r#","page_size_kib":{ps}"#))
    }

    /// Firecracker 1.6 and older: no page size.
    pub fn message_1_6(&self) -> Vec<u8> {
        self.message(|_| String::new())
    }

    fn message(&self, page: impl Fn(usize) -> String) -> Vec<u8> {
        let entries: Vec<String> = self
            .regions
            .iter()
            .map(|r| {
                format!(
                    r#"{{"base_host_virt_addr":{},"size":{},"offset":{}{}}}"#,
                    r.addr,
                    r.size,
                    r.offset,
                    page(self.page_size)
                )
            })
            .collect();
        format!("[{}]", entries.join(",")).into_bytes()
    }

    /// Connects to the handler's socket and sends `message` with the userfaultfd, as
    /// Firecracker's `send_uffd_handshake` does. The connection stays open.
    pub fn hand_off(&self, socket: &Path, message: &[u8]) -> std::io::Result<UnixStream> {
        hand_off_fd(socket, message, self.uffd.as_raw_fd())
    }

    /// Byte `offset` of the memory file, read through the mapping (faulting it in).
    pub fn read(&self, offset: u64) -> u8 {
        let (addr, _) = self.locate(offset);
        // SAFETY: the address lies inside a live mapping of ours; volatile so the read (and its
        // fault) really happens.
        unsafe { std::ptr::read_volatile(addr as *const u8) }
    }

    pub fn write(&self, offset: u64, value: u8) {
        let (addr, _) = self.locate(offset);
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile(addr as *mut u8, value) }
    }

    /// The page at byte `offset` of the memory file, read through the mapping.
    pub fn page(&self, offset: u64) -> Vec<u8> {
        let (addr, _) = self.locate(offset);
        let start = addr - addr % self.page_size as u64;
        // SAFETY: a whole page inside a live mapping of ours.
        unsafe { std::slice::from_raw_parts(start as *const u8, self.page_size) }.to_vec()
    }

    /// The balloon inflating over bytes `offset .. offset + len` of the memory file:
    /// madvise(MADV_DONTNEED), as Firecracker does for the pages its guest gives up.
    pub fn dontneed(&self, offset: u64, len: usize) {
        let (addr, _) = self.locate(offset);
        // SAFETY: the range lies inside one live mapping of ours; its pages are dropped.
        let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
    }

    fn locate(&self, offset: u64) -> (u64, usize) {
        let (i, r) = self
            .regions
            .iter()
            .enumerate()
            .find(|(_, r)| offset >= r.offset && offset - r.offset < r.size as u64)
            .expect("offset inside the memory");
        (r.addr + (offset - r.offset), i)
    }

    pub fn len(&self) -> u64 {
        self.regions.iter().map(|r| r.size as u64).sum()
    }
}

impl Drop for FirecrackerMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: unmapping our own mappings; nothing borrows them past `self`.
            unsafe { libc::munmap(r.addr as *mut libc::c_void, r.size) };
        }
    }
}

/// Sends `message` with `fd` attached on a new connection to `socket`.
pub fn hand_off_fd(socket: &Path, message: &[u8], fd: i32) -> std::io::Result<UnixStream> {
    let sock = UnixStream::connect(socket)?;
    let n = sock
        .send_with_fd(message, fd)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    (&sock).write_all(&message[n..])?;
    Ok(sock)
}

/// Runs `work` on its own thread and waits at most `limit` for it: a fault nobody serves
/// would block the thread for ever, and the test must fail instead of hanging.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?} (a fault left unwoken?)"))
}
