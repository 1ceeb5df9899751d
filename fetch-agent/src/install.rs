//! Installing pages into a restored VM's memory through its userfaultfd:
//! the guest layout from the hand-off (page index to host address in the
//! VMM's address space), and `UFFDIO_COPY` / `UFFDIO_ZEROPAGE` / wake with
//! the kernel's partial-copy and `EEXIST` cases handled.

use std::os::fd::AsRawFd;

use thaw_format::handoff::Handoff;
use userfaultfd::Uffd;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("page {page} is outside the handed-off memory")]
    OutsideMemory { page: u64 },
    /// The VMM's memory layout is changing (a REMOVE or other event is
    /// pending on the userfaultfd): pages from `page` on were not installed.
    /// Retry them once the event is read.
    #[error("memory layout changing: pages from {page} on not installed yet")]
    Changing { page: u64 },
    #[error("{op} at {addr:#x} (+{len:#x}): {errno}")]
    Ioctl {
        op: &'static str,
        addr: u64,
        len: u64,
        errno: std::io::Error,
    },
}

impl InstallError {
    /// The VMM's address space is gone (it exited): not a failure of ours.
    pub fn vmm_gone(&self) -> bool {
        matches!(self, InstallError::Ioctl { errno, .. }
            if matches!(errno.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT) | Some(libc::EBADF)))
    }
}

/// Where guest memory lives in the VMM's address space, in pages: the
/// hand-off's byte translations ([`Handoff::locate`], [`Handoff::region_at`])
/// at the checkpoint's page size.
#[derive(Debug, Clone)]
pub struct GuestLayout {
    page_size: u64,
    handoff: Handoff,
}

impl GuestLayout {
    pub fn new(handoff: &Handoff, page_size: u64) -> Self {
        GuestLayout {
            page_size,
            handoff: handoff.clone(),
        }
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The page index of a host address in the VMM.
    pub fn page_of(&self, addr: u64) -> Option<u64> {
        self.handoff
            .locate(addr)
            .map(|(_, offset)| offset / self.page_size)
    }

    /// The pages of host range `start .. end` (widened to whole pages) that
    /// lie in the handed-off memory: `(first page, pages)` per region it
    /// touches.
    pub fn pages_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let ps = self.page_size;
        let start = start - start % ps;
        let end = end.div_ceil(ps).saturating_mul(ps);
        self.handoff
            .mappings
            .iter()
            .filter_map(|m| {
                let from = start.max(m.base_host_virt_addr);
                let to = end.min(m.base_host_virt_addr + m.size);
                (from < to).then(|| {
                    let first = (m.offset + (from - m.base_host_virt_addr)) / ps;
                    (first, (to - from) / ps)
                })
            })
            .collect()
    }

    /// Host ranges of pages `page .. page + len`, split where regions end:
    /// `(host address, first page, pages)`.
    pub fn host_ranges(&self, page: u64, len: u64) -> Result<Vec<(u64, u64, u64)>, InstallError> {
        let ps = self.page_size;
        let mut out = Vec::with_capacity(1);
        let mut p = page;
        while p < page + len {
            let off = p * ps;
            let m = self
                .handoff
                .region_at(off)
                .ok_or(InstallError::OutsideMemory { page: p })?;
            let region_end_page = (m.offset + m.size) / ps;
            let n = (page + len).min(region_end_page) - p;
            out.push((m.base_host_virt_addr + (off - m.offset), p, n));
            p += n;
        }
        Ok(out)
    }
}

/// Why a copy into one host range stopped.
enum Interrupted {
    /// The layout is changing: this many bytes were copied first.
    Changing(usize),
    Failed(InstallError),
}

impl From<InstallError> for Interrupted {
    fn from(e: InstallError) -> Self {
        Interrupted::Failed(e)
    }
}

fn errno_of(e: &userfaultfd::Error) -> std::io::Error {
    match e {
        userfaultfd::Error::CopyFailed(errno) | userfaultfd::Error::ZeropageFailed(errno) => {
            std::io::Error::from_raw_os_error(*errno as i32)
        }
        userfaultfd::Error::SystemError(errno) => std::io::Error::from_raw_os_error(*errno as i32),
        other => std::io::Error::other(other.to_string()),
    }
}

/// A restore's userfaultfd with its guest layout.
pub struct Installer {
    uffd: Uffd,
    layout: GuestLayout,
}

impl Installer {
    pub fn new(uffd: Uffd, layout: GuestLayout) -> Self {
        Installer { uffd, layout }
    }

    pub fn uffd(&self) -> &Uffd {
        &self.uffd
    }

    pub fn raw_fd(&self) -> i32 {
        self.uffd.as_raw_fd()
    }

    pub fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    /// Copies `data` (`len` pages) to pages `page ..` and wakes their
    /// waiters. Pages already present (`EEXIST`) are skipped and woken.
    pub fn copy(&self, page: u64, data: &[u8]) -> Result<(), InstallError> {
        let ps = self.layout.page_size;
        let len = data.len() as u64 / ps;
        for (host, first, n) in self.layout.host_ranges(page, len)? {
            let src = &data[((first - page) * ps) as usize..((first - page + n) * ps) as usize];
            self.copy_range(host, src).map_err(|e| match e {
                Interrupted::Changing(done) => InstallError::Changing {
                    page: first + done as u64 / ps,
                },
                Interrupted::Failed(e) => e,
            })?;
        }
        Ok(())
    }

    fn copy_range(&self, host: u64, src: &[u8]) -> Result<(), Interrupted> {
        let ps = self.layout.page_size as usize;
        let mut done = 0usize;
        while done < src.len() {
            let rest = &src[done..];
            let dst = host + done as u64;
            // SAFETY: UFFDIO_COPY reads `rest.len()` bytes from `rest`, a live
            // slice of ours, and writes only into the VMM's address space (the
            // mm the userfaultfd belongs to), never into ours; the kernel
            // checks that `dst` lies in a range registered with this uffd.
            let r = unsafe {
                self.uffd.copy(
                    rest.as_ptr().cast(),
                    dst as *mut libc::c_void,
                    rest.len(),
                    true,
                )
            };
            match r {
                Ok(n) if n > 0 => done += n,
                Ok(_) => done += ps,
                // EAGAIN: a negative count is the error itself (nothing
                // copied, the layout is changing); a positive one what was
                // copied before the layout began to change.
                Err(userfaultfd::Error::PartiallyCopied(n)) => {
                    return Err(Interrupted::Changing(done + (n as i64).max(0) as usize))
                }
                Err(e) => {
                    let errno = errno_of(&e);
                    if errno.raw_os_error() == Some(libc::EEXIST) {
                        // Present already: someone else installed it. Wake
                        // whoever faulted on it and go on with the next page.
                        self.wake_range(dst, ps as u64)?;
                        done += ps;
                        continue;
                    }
                    return Err(Interrupted::Failed(InstallError::Ioctl {
                        op: "UFFDIO_COPY",
                        addr: dst,
                        len: rest.len() as u64,
                        errno,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Installs zero pages `page .. page + len` and wakes their waiters.
    pub fn zero(&self, page: u64, len: u64) -> Result<(), InstallError> {
        let ps = self.layout.page_size;
        for (host, first, n) in self.layout.host_ranges(page, len)? {
            let mut done = 0u64;
            while done < n * ps {
                let addr = host + done;
                let rest = n * ps - done;
                // SAFETY: UFFDIO_ZEROPAGE maps zero pages into the VMM's
                // address space only; no memory of ours is read or written.
                let r = unsafe {
                    self.uffd
                        .zeropage(addr as *mut libc::c_void, rest as usize, true)
                };
                match r {
                    Ok(n) if n > 0 => done += n as u64,
                    Ok(_) => done += ps,
                    Err(e) => {
                        let errno = errno_of(&e);
                        match errno.raw_os_error() {
                            Some(libc::EEXIST) => {
                                self.wake_range(addr, ps)?;
                                done += ps;
                            }
                            Some(libc::EAGAIN) => {
                                return Err(InstallError::Changing {
                                    page: first + done / ps,
                                })
                            }
                            _ => {
                                return Err(InstallError::Ioctl {
                                    op: "UFFDIO_ZEROPAGE",
                                    addr,
                                    len: rest,
                                    errno,
                                })
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn wake_range(&self, addr: u64, len: u64) -> Result<(), InstallError> {
        self.uffd
            .wake(addr as *mut libc::c_void, len as usize)
            .map_err(|e| InstallError::Ioctl {
                op: "UFFDIO_WAKE",
                addr,
                len,
                errno: errno_of(&e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_format::handoff::RegionMapping;

    fn layout() -> GuestLayout {
        let h = Handoff::new(vec![
            RegionMapping {
                base_host_virt_addr: 0x10_0000,
                size: 4 * 4096,
                offset: 0,
                page_size: 4096,
                guest_phys_addr: None,
            },
            RegionMapping {
                base_host_virt_addr: 0x80_0000,
                size: 4 * 4096,
                offset: 4 * 4096,
                page_size: 4096,
                guest_phys_addr: None,
            },
        ]);
        GuestLayout::new(&h, 4096)
    }

    #[test]
    fn page_runs_split_at_region_ends() {
        let l = layout();
        assert_eq!(l.page_of(0x10_0000 + 4096 * 3 + 5), Some(3));
        assert_eq!(l.page_of(0x80_0000), Some(4));
        assert_eq!(l.page_of(0x80_0000 + 4 * 4096), None);
        assert_eq!(
            l.host_ranges(2, 4).unwrap(),
            vec![(0x10_0000 + 2 * 4096, 2, 2), (0x80_0000, 4, 2)]
        );
        assert!(matches!(
            l.host_ranges(7, 2),
            Err(InstallError::OutsideMemory { page: 8 })
        ));
    }
}
