//! An existing tap device, opened for a virtio-net device: frames carry the 12-byte virtio-net
//! header in front (IFF_VNET_HDR), no packet information (IFF_NO_PI), non-blocking.
//!
//! The tap must exist already (made by whoever sets up the host's network, in the namespace this
//! process runs in): a name that does not is refused, never created.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The virtio-net header with VIRTIO_F_VERSION_1 (`struct virtio_net_hdr_v1`).
pub(crate) const VNET_HDR_LEN: usize = 12;
/// Interface names are at most 15 bytes (IFNAMSIZ less the terminator).
const IFNAMSIZ: usize = 16;

/// A tap device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("bad tap name {0:?}: 1 to 15 bytes without NUL or '/' expected")]
    BadName(String),
    #[error("tap {0:?} does not exist in this network namespace (thaw opens an existing tap; create it first, e.g. `ip tuntap add {0} mode tap`)")]
    Missing(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot attach to tap {name:?} (is it a tap device, not a tun or another kind of interface?): {source}")]
    Attach {
        name: String,
        source: std::io::Error,
    },
    #[error("tap {name:?}: cannot set the virtio-net header size: {source}")]
    VnetHeader {
        name: String,
        source: std::io::Error,
    },
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the existing tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['\0', '/']) {
            return Err(TapError::BadName(name.to_string()));
        }
        let cname = std::ffi::CString::new(name).map_err(|_| TapError::BadName(name.into()))?;
        // SAFETY: cname is a valid NUL-terminated string for the call's duration.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(TapError::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        // struct ifreq: the name, then a union whose first member here is the short flags.
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        ifreq[IFNAMSIZ..IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq (40 bytes on x86-64), which the
        // buffer is, for the call's duration; the fd is open.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, ifreq.as_mut_ptr()) } < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, valid for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(TapError::VnetHeader {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Sends one frame (virtio-net header first); false if the tap would block or failed (the
    /// frame is dropped, as a NIC drops what it cannot send).
    pub(crate) fn send(&self, frame: &[u8]) -> bool {
        use std::io::Write;
        (&self.file).write(frame).is_ok()
    }

    /// Receives one frame (virtio-net header first) into `buf`; None when none is waiting.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        use std::io::Read;
        (&self.file).read(buf).ok()
    }
}
