//! The VMM side of the lazy-restore hand-off: register guest memory with userfaultfd and pass the
//! uffd plus ONE JSON message (thaw_format::handoff) over a Unix stream socket by SCM_RIGHTS.

use crate::error::{Error, Result};
use crate::vstate::memory::GuestMemory;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use thaw_format::handoff::{Handoff, RegionMapping, MAX_MESSAGE};
use userfaultfd::{Uffd, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Page size of guest memory mappings.
pub const PAGE_SIZE: u64 = 4096;

/// Creates a userfaultfd and registers all guest memory with it in missing mode.
pub fn register(mem: &GuestMemory) -> Result<Uffd> {
    // Not user-mode-only: KVM touches guest memory from kernel context on the vCPU's behalf, and
    // those faults must reach the page server too.
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .create()
        .map_err(|e| Error::Uffd(format!("create: {e}")))?;
    for r in mem.regions() {
        uffd.register(r.host_addr() as *mut libc::c_void, r.size as usize)
            .map_err(|e| {
                Error::Uffd(format!("register {:#x}+{:#x}: {e}", r.host_addr(), r.size))
            })?;
    }
    Ok(uffd)
}

/// The hand-off message describing `mem`.
pub fn describe(mem: &GuestMemory, store: Option<String>, checkpoint: Option<String>) -> Handoff {
    let mut offset = 0;
    let mappings = mem
        .regions()
        .iter()
        .map(|r| {
            let m = RegionMapping {
                base_host_virt_addr: r.host_addr(),
                size: r.size,
                offset,
                page_size: PAGE_SIZE,
                guest_phys_addr: Some(r.guest_phys_addr),
            };
            offset += r.size;
            m
        })
        .collect();
    let mut h = Handoff::new(mappings);
    h.store = store;
    h.checkpoint = checkpoint;
    h
}

/// Sends the hand-off and the uffd in one message.
pub fn send(sock: &UnixStream, handoff: &Handoff, uffd: &Uffd) -> Result<()> {
    let msg = handoff.encode();
    let n = sock
        .send_with_fd(&msg[..], uffd.as_raw_fd())
        .map_err(|e| Error::Handoff(format!("send: {e}")))?;
    if n != msg.len() {
        // The fd went with the first bytes; the rest follows as plain data.
        use std::io::Write;
        (&*sock)
            .write_all(&msg[n..])
            .map_err(|e| Error::Handoff(format!("send: {e}")))?;
    }
    Ok(())
}

/// Receives a hand-off: the uffd and the JSON message (either form).
pub fn recv(sock: &UnixStream) -> Result<(Handoff, Uffd)> {
    let mut buf = vec![0u8; 64 << 10];
    let (n, file) = sock
        .recv_with_fd(&mut buf)
        .map_err(|e| Error::Handoff(format!("receive: {e}")))?;
    let file = file.ok_or_else(|| Error::Handoff("no userfaultfd attached".into()))?;
    let mut msg = buf[..n].to_vec();
    // The message may arrive in pieces: read on until it parses or cannot grow.
    loop {
        match serde_json::from_slice::<serde_json::Value>(&msg) {
            Ok(_) => break,
            Err(e) if e.is_eof() && msg.len() < MAX_MESSAGE => {
                use std::io::Read;
                let got = (&*sock)
                    .read(&mut buf)
                    .map_err(|e| Error::Handoff(format!("receive: {e}")))?;
                if got == 0 {
                    return Err(Error::Handoff("connection closed mid-message".into()));
                }
                msg.extend_from_slice(&buf[..got]);
            }
            Err(_) => break,
        }
    }
    let handoff = Handoff::parse(&msg).map_err(|e| Error::Handoff(e.to_string()))?;
    // SAFETY: the fd was just received by SCM_RIGHTS and is owned by `file` alone; ownership moves
    // into the Uffd.
    let uffd = unsafe { Uffd::from_raw_fd(file.into_raw_fd()) };
    Ok((handoff, uffd))
}
