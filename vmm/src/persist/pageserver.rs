//! A minimal page server: receives a hand-off (uffd + JSON) on a Unix socket, opens the checkpoint
//! in its store, and serves missing-page faults by fetching the block that holds the page and
//! installing all of the block's pages with UFFDIO_COPY (zero pages with UFFDIO_ZEROPAGE).
//!
//! It stands in for the fetch agent (a later issue) behind the same hand-off protocol, so the vmm
//! talks to either the same way. It serves faults one at a time, without prefetching.

use crate::error::{Error, Result};
use crate::persist::handoff;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use thaw_format::handoff::Handoff;
use thaw_format::{CheckpointId, Manifest};
use thaw_store::CheckpointReader;
use userfaultfd::{Event, Uffd};

/// Counters of one page server session.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServeStats {
    pub faults: u64,
    pub blocks_fetched: u64,
    pub pages_copied: u64,
    pub zero_installs: u64,
}

const NO_BLOCK: u32 = u32::MAX;
/// Zero pages installed around a faulting zero page (one block's worth).
const ZERO_WINDOW_PAGES: u64 = 16;

/// Where each page of the concatenated memory comes from.
struct PageMap {
    page_size: u64,
    /// Block index per page, NO_BLOCK for zero pages.
    block_of: Vec<u32>,
    fetched: Vec<bool>,
}

impl PageMap {
    fn new(m: &Manifest) -> PageMap {
        let mut block_of = vec![NO_BLOCK; m.total_pages() as usize];
        for (i, b) in m.blocks.iter().enumerate() {
            for run in &b.pages {
                for p in run.start..run.end() {
                    if let Some(slot) = block_of.get_mut(p as usize) {
                        *slot = i as u32;
                    }
                }
            }
        }
        PageMap {
            page_size: m.page_size,
            fetched: vec![false; m.blocks.len()],
            block_of,
        }
    }
}

struct Server {
    handoff: Handoff,
    uffd: Uffd,
    reader: CheckpointReader,
    rt: tokio::runtime::Runtime,
    map: PageMap,
    stats: ServeStats,
}

fn errno_of(e: &userfaultfd::Error) -> Option<i32> {
    match e {
        userfaultfd::Error::CopyFailed(errno) | userfaultfd::Error::ZeropageFailed(errno) => {
            Some(*errno as i32)
        }
        _ => None,
    }
}

impl Server {
    fn host_addr(&self, page: u64) -> Option<u64> {
        let off = page * self.map.page_size;
        self.handoff
            .mappings
            .iter()
            .find(|m| off >= m.offset && off < m.offset + m.size)
            .map(|m| m.base_host_virt_addr + (off - m.offset))
    }

    /// Installs one page; a page that is already there (EEXIST) only needs its waiters woken.
    fn copy_page(&mut self, page: u64, bytes: &[u8]) -> Result<()> {
        let Some(dst) = self.host_addr(page) else {
            return Err(Error::Uffd(format!(
                "page {page} outside the handed-off memory"
            )));
        };
        // SAFETY: dst is a page inside a region registered with this uffd (from the hand-off);
        // src is a page-sized slice that lives across the call. UFFDIO_COPY writes only into the
        // registered range of the VMM's address space.
        let r = unsafe {
            self.uffd.copy(
                bytes.as_ptr().cast(),
                dst as *mut libc::c_void,
                bytes.len(),
                true,
            )
        };
        match r {
            Ok(_) => {
                self.stats.pages_copied += 1;
                Ok(())
            }
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => self
                .uffd
                .wake(dst as *mut libc::c_void, bytes.len())
                .map_err(|e| Error::Uffd(format!("wake: {e}"))),
            Err(e) => Err(Error::Uffd(format!("UFFDIO_COPY at {dst:#x}: {e}"))),
        }
    }

    fn serve_fault(&mut self, addr: u64) -> Result<()> {
        self.stats.faults += 1;
        let ps = self.map.page_size;
        let (_, off) = self
            .handoff
            .locate(addr)
            .ok_or_else(|| Error::Uffd(format!("fault at {addr:#x} outside guest memory")))?;
        let page = off / ps;
        let block = self
            .map
            .block_of
            .get(page as usize)
            .copied()
            .unwrap_or(NO_BLOCK);
        if block == NO_BLOCK {
            return self.install_zero(page);
        }
        if self.map.fetched[block as usize] {
            // Installed already (the fault raced the install): wake the faulting thread.
            let dst = self.host_addr(page).unwrap_or(addr & !(ps - 1));
            return self
                .uffd
                .wake(dst as *mut libc::c_void, ps as usize)
                .map_err(|e| Error::Uffd(format!("wake: {e}")));
        }
        let b = self
            .rt
            .block_on(self.reader.fetch_block(block))
            .map_err(|e| Error::Store(e.to_string()))?;
        self.stats.blocks_fetched += 1;
        let pages: Vec<(u64, Vec<u8>)> = b.pages().map(|(p, d)| (p, d.to_vec())).collect();
        for (p, bytes) in pages {
            self.copy_page(p, &bytes)?;
        }
        self.map.fetched[block as usize] = true;
        Ok(())
    }

    /// Zero-fills the faulting page and its zero neighbours in the same aligned window.
    fn install_zero(&mut self, page: u64) -> Result<()> {
        let ps = self.map.page_size;
        let start = page - page % ZERO_WINDOW_PAGES;
        let mut p = start;
        while p < start + ZERO_WINDOW_PAGES {
            let is_zero = self.map.block_of.get(p as usize) == Some(&NO_BLOCK);
            if let (true, Some(dst)) = (is_zero, self.host_addr(p)) {
                // SAFETY: dst is a page of a registered region (from the hand-off).
                let r = unsafe {
                    self.uffd
                        .zeropage(dst as *mut libc::c_void, ps as usize, true)
                };
                match r {
                    Ok(_) => self.stats.zero_installs += 1,
                    Err(e) if errno_of(&e) == Some(libc::EEXIST) => {
                        let _ = self.uffd.wake(dst as *mut libc::c_void, ps as usize);
                    }
                    Err(e) => return Err(Error::Uffd(format!("UFFDIO_ZEROPAGE at {dst:#x}: {e}"))),
                }
            }
            p += 1;
        }
        Ok(())
    }
}

/// Serves one hand-off on `sock` until `stop` is set or the VMM closes the socket.
pub fn serve_connection(sock: UnixStream, stop: Arc<AtomicBool>) -> Result<ServeStats> {
    let (handoff, uffd) = handoff::recv(&sock)?;
    let store_spec = handoff
        .store
        .clone()
        .ok_or_else(|| Error::Handoff("hand-off names no store".into()))?;
    let id = handoff
        .checkpoint
        .clone()
        .ok_or_else(|| Error::Handoff("hand-off names no checkpoint".into()))?;
    let id: CheckpointId = id
        .parse()
        .map_err(|e| Error::Handoff(format!("checkpoint id: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("page server runtime"))?;
    let store = crate::persist::checkpoint::open_store(&store_spec)?;
    let reader = rt
        .block_on(CheckpointReader::open(&store, &id))
        .map_err(|e| Error::Store(e.to_string()))?;
    if reader.manifest().total_bytes() != handoff.memory_bytes() {
        return Err(Error::Handoff(format!(
            "hand-off maps {} bytes, checkpoint {id} has {}",
            handoff.memory_bytes(),
            reader.manifest().total_bytes()
        )));
    }
    let map = PageMap::new(reader.manifest());
    let mut server = Server {
        handoff,
        uffd,
        reader,
        rt,
        map,
        stats: ServeStats::default(),
    };
    let mut fds = [
        libc::pollfd {
            fd: server.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: fds is a valid array of two pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("poll")(e));
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            // The VMM sends nothing after the hand-off: readable means it closed the socket.
            break;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        while let Some(ev) = server
            .uffd
            .read_event()
            .map_err(|e| Error::Uffd(format!("read event: {e}")))?
        {
            if let Event::Pagefault { addr, .. } = ev {
                server.serve_fault(addr as u64)?;
            }
        }
    }
    Ok(server.stats)
}

/// A page server thread inside the vmm process, behind the same socket hand-off.
pub struct InProcessServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<ServeStats>>>,
}

impl InProcessServer {
    /// Starts the server thread; returns it and the VMM's end of the socket.
    pub fn spawn() -> Result<(InProcessServer, UnixStream)> {
        let (vmm_end, server_end) = UnixStream::pair().map_err(Error::io("socketpair"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("page-server".into())
            .spawn(move || serve_connection(server_end, s))
            .map_err(Error::io("spawn page server"))?;
        Ok((
            InProcessServer {
                stop,
                thread: Some(thread),
            },
            vmm_end,
        ))
    }

    /// Stops the server and returns its counters.
    pub fn finish(mut self) -> Result<ServeStats> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Uffd("page server panicked".into()))?,
            None => Ok(ServeStats::default()),
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a page server process: accepts hand-offs on `listener`, one thread each.
pub fn serve_forever(listener: std::os::unix::net::UnixListener) -> Result<()> {
    for conn in listener.incoming() {
        let conn = conn.map_err(Error::io("accept"))?;
        std::thread::spawn(move || {
            match serve_connection(conn, Arc::new(AtomicBool::new(false))) {
                Ok(stats) => tracing::info!(?stats, "page server session ended"),
                Err(e) => tracing::error!("page server session failed: {e}"),
            }
        });
    }
    Ok(())
}
