//! A host tap device that carries a guest network interface's frames: opened by name, never
//! created (a tap a user did not make, in a namespace they did not mean, would silently carry
//! nothing), with the virtio-net header in front of every frame.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUN_PATH: &str = "/dev/net/tun";
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
/// `_IOW('T', 202, int)`
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 216, int)`
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 208, unsigned int)`
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// The virtio-net header of a modern device (`virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union is
/// unused here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// A tap device could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap name {0:?}: 1 to 15 bytes, no NUL, '/' or whitespace")]
    BadName(String),
    #[error("tap device {0} does not exist in this network namespace (create it first, e.g. `ip tuntap add dev {0} mode tap`)")]
    NoSuchDevice(String),
    #[error("cannot open {TUN_PATH}: {0}")]
    OpenTun(#[source] std::io::Error),
    #[error("tap device {0} is in use by another process")]
    Busy(String),
    #[error("{0} is not a tap device (a tun device or another kind of interface)")]
    NotATap(String),
    #[error("cannot attach to tap device {name}: {source}")]
    Attach {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot configure tap device {name} ({what}): {source}")]
    Configure {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// An open tap device, non-blocking: reads and writes carry one frame each, behind a
/// [`VNET_HDR_LEN`]-byte virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
}

impl Tap {
    /// Attaches to the existing tap device `name` in the calling thread's network namespace.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let cname = CString::new(name).map_err(|_| TapError::BadName(name.to_string()))?;
        // SAFETY: cname is a valid NUL-terminated string; the call only reads it.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(TapError::NoSuchDevice(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write back) one ifreq, which `req` is, laid out as
        // the kernel's struct (name then flags, padded to its 40 bytes); the fd is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                // The name exists but is a tun device, or not a tun/tap device at all.
                Some(libc::EINVAL) | Some(libc::EEXIST) => TapError::NotATap(name.to_string()),
                _ => TapError::Attach {
                    name: name.to_string(),
                    source: e,
                },
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.set_int(
            TUNSETVNETHDRSZ,
            VNET_HDR_LEN as libc::c_int,
            "vnet header size",
        )?;
        // No offloads: every frame the guest gets is complete and checksummed, which is what a
        // driver that negotiated no checksum or segmentation features expects.
        tap.set_int(TUNSETOFFLOAD, 0, "offloads")?;
        Ok(tap)
    }

    fn set_int(
        &self,
        request: libc::c_ulong,
        value: libc::c_int,
        what: &'static str,
    ) -> Result<(), TapError> {
        // TUNSETVNETHDRSZ reads an int through the pointer; TUNSETOFFLOAD takes the value itself.
        let ret = if request == TUNSETOFFLOAD {
            // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is ours.
            unsafe { libc::ioctl(self.file.as_raw_fd(), request, value as libc::c_ulong) }
        } else {
            // SAFETY: the request reads one int through the pointer, which points at `value`.
            unsafe { libc::ioctl(self.file.as_raw_fd(), request, &value as *const libc::c_int) }
        };
        if ret != 0 {
            return Err(TapError::Configure {
                name: self.name.clone(),
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (virtio-net header first) into `buf`; `WouldBlock` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (virtio-net header first).
    pub fn write_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        for bad in ["", "a/b", "has space", "sixteen-bytes-xx"] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
        let err = Tap::open("thaw-no-such0").unwrap_err();
        assert!(matches!(err, TapError::NoSuchDevice(_)), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
