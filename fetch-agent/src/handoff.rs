//! Receiving a hand-off on a VMM's connection: the userfaultfd by
//! SCM_RIGHTS with the first bytes of ONE JSON message (thaw's object form
//! or Firecracker's bare array, see `thaw_format::handoff`), the rest of
//! the message as plain data. The connection then stays open as the VMM's
//! liveness signal.

use std::io::Read;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;

use thaw_format::handoff::{Handoff, HandoffError, MAX_MESSAGE};
use userfaultfd::Uffd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("receiving the hand-off: {0}")]
    Io(#[from] std::io::Error),
    #[error("receiving the hand-off: {0}")]
    Scm(String),
    #[error("the hand-off carried no file descriptor (expected the userfaultfd)")]
    NoFd,
    #[error("the connection closed before a complete hand-off message")]
    Truncated,
    #[error(transparent)]
    Handoff(#[from] HandoffError),
}

/// Reads one hand-off from `sock`: the message and the userfaultfd.
pub(crate) fn receive(sock: &UnixStream) -> Result<(Handoff, Uffd), ReceiveError> {
    let mut buf = vec![0u8; 64 << 10];
    let (n, file) = sock
        .recv_with_fd(&mut buf)
        .map_err(|e| ReceiveError::Scm(e.to_string()))?;
    let file = file.ok_or(ReceiveError::NoFd)?;
    let mut msg = buf[..n].to_vec();
    // The message may arrive in pieces: read on until it parses or cannot grow.
    loop {
        match serde_json::from_slice::<serde::de::IgnoredAny>(&msg) {
            Err(e) if e.is_eof() && msg.len() <= MAX_MESSAGE => {
                let got = (&*sock).read(&mut buf)?;
                if got == 0 {
                    return Err(ReceiveError::Truncated);
                }
                msg.extend_from_slice(&buf[..got]);
            }
            _ => break,
        }
    }
    let handoff = Handoff::parse(&msg)?;
    // SAFETY: the descriptor was just received by SCM_RIGHTS and `file` is
    // its only owner; ownership moves into the Uffd, which closes it once.
    let uffd = unsafe { Uffd::from_raw_fd(file.into_raw_fd()) };
    set_nonblocking(&uffd)?;
    Ok((handoff, uffd))
}

/// The fault loop polls before reading: reads must never block, whatever
/// flags the VMM created the userfaultfd with.
fn set_nonblocking(uffd: &Uffd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = uffd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
