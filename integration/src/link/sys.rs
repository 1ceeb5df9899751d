//! Thin Linux wrappers the relay needs: epoll with a nanosecond timeout,
//! batched UDP receive and send, an eventfd to stop, timer slack.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_536;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the returned descriptor is
        // fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        Ok(Self {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 64],
        })
    }

    /// Watches `fd` for input, reporting it as `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits at most `timeout` (forever when `None`, not at all when zero)
    /// and returns the tokens of ready descriptors. epoll_pwait2 takes a
    /// timespec, so waits are not rounded to milliseconds as epoll_wait's are.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
    ) -> io::Result<impl Iterator<Item = u64> + '_> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `events` has room for `len` entries, `ts_ptr` is null or
        // points to a live timespec, and a null sigmask leaves it unchanged.
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                ts_ptr,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        let n = match n {
            n if n >= 0 => n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    0
                } else {
                    return Err(e);
                }
            }
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

/// An eventfd: written by one thread to wake another's epoll.
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers; the descriptor is fresh.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64, as eventfd requires.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Lets this thread's timed waits end within nanoseconds of their deadline
/// instead of the default 50 µs slack.
pub fn set_thread_timer_slack_ns(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory.
    check(unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// CPU time a thread of this process has used, from the scheduler's
/// nanosecond accounting.
pub fn thread_cpu_time(tid: i32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Asks for socket buffers of `bytes` each way; as root the limit of
/// net.core.{r,w}mem_max is lifted, otherwise the kernel caps silently.
pub fn set_socket_buffers(fd: RawFd, bytes: usize) {
    let value = bytes as libc::c_int;
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [forced, plain] {
            // SAFETY: passes a live c_int of the stated size.
            let ret = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&value as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret == 0 {
                break;
            }
        }
    }
}

fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(addr: &SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a
            // sockaddr_in; every field is written below.
            let sin =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Scratch space for receiving up to `slots` datagrams in one recvmmsg.
pub struct RecvBatch {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

impl RecvBatch {
    pub fn new(slots: usize) -> Self {
        Self {
            data: vec![0; slots * MAX_DATAGRAM],
            // SAFETY: all-zero bytes are a valid sockaddr_storage, iovec and
            // mmsghdr (plain C structs of integers and null pointers).
            addrs: vec![unsafe { zeroed() }; slots],
            iovecs: vec![unsafe { zeroed() }; slots],
            headers: vec![unsafe { zeroed() }; slots],
            received: 0,
        }
    }

    /// Receives what is queued on non-blocking `fd`, up to the batch size;
    /// `WouldBlock` when nothing is.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let slots = self.headers.len();
        let base = self.data.as_mut_ptr();
        for i in 0..slots {
            self.iovecs[i] = libc::iovec {
                // SAFETY: slot i lies inside `data`, which holds
                // slots × MAX_DATAGRAM bytes.
                iov_base: unsafe { base.add(i * MAX_DATAGRAM) }.cast(),
                iov_len: MAX_DATAGRAM,
            };
            let h = &mut self.headers[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live address slot and iovec, and
        // every iovec at its own MAX_DATAGRAM bytes of `data`; all outlive
        // the call.
        let n = check(unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        })?;
        self.received = n as usize;
        Ok(self.received)
    }

    /// The datagrams of the last receive: sender (if it could be decoded)
    /// and payload; truncated datagrams are skipped.
    pub fn datagrams(&self) -> impl Iterator<Item = (Option<SocketAddr>, &[u8])> {
        (0..self.received).filter_map(move |i| {
            let h = &self.headers[i];
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                return None;
            }
            let start = i * MAX_DATAGRAM;
            let data = &self.data[start..start + h.msg_len as usize];
            Some((to_socket_addr(&self.addrs[i]), data))
        })
    }
}

/// Scratch space for sending up to `slots` datagrams in one sendmmsg.
pub struct SendBatch {
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl SendBatch {
    pub fn new(slots: usize) -> Self {
        Self {
            // SAFETY: all-zero bytes are valid for these plain C structs.
            addrs: vec![unsafe { zeroed() }; slots],
            iovecs: vec![unsafe { zeroed() }; slots],
            headers: vec![unsafe { zeroed() }; slots],
        }
    }

    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Sends `datagrams` (at most `capacity()`) on non-blocking `fd`, each to
    /// its address or, when `None`, to the socket's connected peer. Returns
    /// how many the kernel took, counted from the front.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        datagrams: impl IntoIterator<Item = (Option<SocketAddr>, &'a [u8])>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (i, (addr, data)) in datagrams.into_iter().take(self.headers.len()).enumerate() {
            self.iovecs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let h = &mut self.headers[i];
            match addr {
                Some(a) => {
                    h.msg_hdr.msg_namelen = from_socket_addr(&a, &mut self.addrs[i]);
                    h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                }
                None => {
                    h.msg_hdr.msg_name = std::ptr::null_mut();
                    h.msg_hdr.msg_namelen = 0;
                }
            }
            h.msg_hdr.msg_iov = &mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            n = i + 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the first `n` headers point at live addresses and iovecs,
        // and the iovecs at the caller's datagrams, which are borrowed for
        // 'a and so outlive the call; the kernel only reads them.
        let sent = check(unsafe {
            libc::sendmmsg(
                fd,
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        })?;
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_sockaddr_storage() {
        for text in ["127.0.0.1:4433", "[::1]:9", "[fe80::1%2]:65535"] {
            let addr: SocketAddr = text.parse().unwrap();
            // SAFETY: all-zero bytes are a valid sockaddr_storage.
            let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
            from_socket_addr(&addr, &mut ss);
            assert_eq!(to_socket_addr(&ss), Some(addr));
        }
    }

    #[test]
    fn batches_carry_datagrams_and_senders() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut send = SendBatch::new(4);
        let payloads: [&[u8]; 3] = [b"one", b"two", &[7u8; 1400]];
        let sent = send
            .send(
                a.as_raw_fd(),
                payloads.iter().map(|p| (Some(b.local_addr().unwrap()), *p)),
            )
            .unwrap();
        assert_eq!(sent, 3);
        let mut recv = RecvBatch::new(8);
        let mut got = Vec::new();
        while got.len() < 3 {
            match recv.recv(b.as_raw_fd()) {
                Ok(_) => got.extend(recv.datagrams().map(|(from, d)| (from, d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        for ((from, data), want) in got.iter().zip(payloads) {
            assert_eq!(*from, Some(a.local_addr().unwrap()));
            assert_eq!(data.as_slice(), want);
        }
    }
}
