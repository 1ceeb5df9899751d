//! Batched UDP receive and send for the relay, with the kernel's UDP
//! segmentation offloads, as a NIC would have them.
//!
//! - Receive (GRO): datagrams a sender passed to the kernel as one run
//!   (quinn sends up to 10 per call with GSO) arrive as one message.
//! - Send (GSO): consecutive datagrams of one size to one address leave in
//!   one message, and reach a GRO-enabled receiver (quinn) as one.
//!
//! Both cut the per-datagram system-call and socket cost, which bounds the
//! relay on this machine. The link model still sees every datagram on its
//! own: only the kernel sees runs.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use super::sys::{check, set_int_option};

/// Receive slot size: the largest UDP payload, and the largest GRO run.
pub(super) const MAX_DATAGRAM: usize = 65_536;
/// The kernel's limit on segments in one GSO send (UDP_MAX_SEGMENTS).
const MAX_GSO_SEGMENTS: usize = 64;
/// Payload bytes of one GSO send: the run must fit one IP packet's 64 KiB.
const MAX_GSO_BYTES: usize = 65_000;
/// Room for one control message carrying an int (GRO size) or u16 (GSO size).
const CONTROL_BYTES: usize = 32;

/// Control-message space, aligned as `cmsghdr` needs.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_BYTES]);

/// Asks the kernel to hand `fd` runs of datagrams as one message (UDP_GRO).
/// False when the kernel cannot; receiving still works, a datagram at a time.
pub(super) fn enable_gro(fd: RawFd) -> bool {
    set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Whether the kernel segments UDP sends on `fd` (UDP_SEGMENT), asked by
/// setting the socket's default segment size to 0 (that is, none).
pub(super) fn gso_supported(fd: RawFd) -> bool {
    set_int_option(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0)
}

/// How many of the leading datagrams (destination, length) can leave as one
/// GSO send of at most `max_segments`: one destination, every segment the
/// first one's size but the last, which may be shorter. At least 1.
pub(super) fn gso_run(datagrams: &[(Option<SocketAddr>, usize)], max_segments: usize) -> usize {
    let Some(&(to, size)) = datagrams.first() else {
        return 0;
    };
    if size == 0 {
        return 1;
    }
    let mut count = 1;
    let mut bytes = size;
    for &(next_to, len) in &datagrams[1..] {
        if count == max_segments || next_to != to || len > size || bytes + len > MAX_GSO_BYTES {
            break;
        }
        count += 1;
        bytes += len;
        if len < size {
            break;
        }
    }
    count
}

/// Scratch space for receiving up to `slots` messages in one recvmmsg.
pub(super) struct RecvBatch {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    controls: Vec<Control>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

impl RecvBatch {
    pub(super) fn new(slots: usize) -> Self {
        Self {
            data: vec![0; slots * MAX_DATAGRAM],
            // SAFETY: all-zero bytes are a valid sockaddr_storage, iovec and
            // mmsghdr (plain C structs of integers and null pointers).
            addrs: vec![unsafe { zeroed() }; slots],
            // SAFETY: as for `addrs`.
            iovecs: vec![unsafe { zeroed() }; slots],
            controls: vec![Control([0; CONTROL_BYTES]); slots],
            // SAFETY: as for `addrs`.
            headers: vec![unsafe { zeroed() }; slots],
            received: 0,
        }
    }

    /// Receives what is queued on non-blocking `fd`, up to the batch size in
    /// messages; `WouldBlock` when nothing is.
    pub(super) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
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
            h.msg_hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CONTROL_BYTES;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live address slot, control buffer
        // and iovec, and every iovec at its own MAX_DATAGRAM bytes of `data`;
        // all outlive the call.
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

    /// The GRO segment size of received message `i`, if the kernel gave one.
    fn segment_size(&self, i: usize) -> Option<usize> {
        let h = &self.headers[i].msg_hdr;
        // SAFETY: the kernel filled msg_control (msg_controllen bytes of
        // controls[i]) with well-formed control messages; the CMSG macros
        // walk only within it, and the data of a UDP_GRO message is an int.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return usize::try_from(size).ok().filter(|&s| s > 0);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    /// The datagrams of the last receive, runs split back into datagrams:
    /// sender (if it could be decoded) and payload. Truncated messages are
    /// skipped.
    pub(super) fn datagrams(&self) -> impl Iterator<Item = (Option<SocketAddr>, &[u8])> {
        (0..self.received).flat_map(move |i| {
            let h = &self.headers[i];
            let start = i * MAX_DATAGRAM;
            let len = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                h.msg_len as usize
            };
            let data = &self.data[start..start + len];
            let from = to_socket_addr(&self.addrs[i]);
            let segment = self.segment_size(i).unwrap_or(len).max(1);
            data.chunks(segment).map(move |d| (from, d))
        })
    }
}

/// Scratch space for sending up to `messages` messages in one sendmmsg,
/// each a GSO run of up to 64 datagrams when the socket supports it.
pub(super) struct SendBatch {
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    controls: Vec<Control>,
    headers: Vec<libc::mmsghdr>,
    /// Destination and length of each datagram of the call being built.
    queued: Vec<(Option<SocketAddr>, usize)>,
    /// Datagrams in each message of the call being built.
    runs: Vec<usize>,
    max_segments: usize,
}

impl SendBatch {
    /// With `gso`, consecutive datagrams of one size to one address leave as
    /// one message; without, a message is one datagram.
    pub(super) fn new(messages: usize, gso: bool) -> Self {
        let max_segments = if gso { MAX_GSO_SEGMENTS } else { 1 };
        let datagrams = messages * max_segments;
        Self {
            // SAFETY: all-zero bytes are valid for these plain C structs.
            addrs: vec![unsafe { zeroed() }; messages],
            // SAFETY: as for `addrs`.
            iovecs: vec![unsafe { zeroed() }; datagrams],
            controls: vec![Control([0; CONTROL_BYTES]); messages],
            // SAFETY: as for `addrs`.
            headers: vec![unsafe { zeroed() }; messages],
            queued: Vec::with_capacity(datagrams),
            runs: Vec::with_capacity(messages),
            max_segments,
        }
    }

    /// Datagrams one call takes at most.
    pub(super) fn capacity(&self) -> usize {
        self.iovecs.len()
    }

    /// Sends `datagrams` (at most `capacity()`) on non-blocking `fd`, each to
    /// its address or, when `None`, to the socket's connected peer. Returns
    /// how many the kernel took, counted from the front.
    pub(super) fn send<'a>(
        &mut self,
        fd: RawFd,
        datagrams: impl IntoIterator<Item = (Option<SocketAddr>, &'a [u8])>,
    ) -> io::Result<usize> {
        self.queued.clear();
        for (i, (to, data)) in datagrams.into_iter().take(self.iovecs.len()).enumerate() {
            self.iovecs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            self.queued.push((to, data.len()));
        }
        loop {
            match self.send_queued(fd) {
                Err(e) if self.max_segments > 1 && self.runs.iter().any(|&r| r > 1) => {
                    // The path cannot segment after all (EIO from a device
                    // without the offload, for one): go on a datagram at a time.
                    tracing::warn!("relay: UDP GSO send failed ({e}); sending datagrams singly");
                    self.max_segments = 1;
                }
                result => return result,
            }
        }
    }

    /// Sends the queued datagrams (their iovecs are in place), grouped into
    /// runs; returns how many datagrams the kernel took.
    fn send_queued(&mut self, fd: RawFd) -> io::Result<usize> {
        self.runs.clear();
        let mut first = 0;
        while first < self.queued.len() && self.runs.len() < self.headers.len() {
            let run = gso_run(&self.queued[first..], self.max_segments);
            let m = self.runs.len();
            let h = &mut self.headers[m];
            match self.queued[first].0 {
                Some(a) => {
                    h.msg_hdr.msg_namelen = from_socket_addr(&a, &mut self.addrs[m]);
                    h.msg_hdr.msg_name = (&mut self.addrs[m] as *mut libc::sockaddr_storage).cast();
                }
                None => {
                    h.msg_hdr.msg_name = std::ptr::null_mut();
                    h.msg_hdr.msg_namelen = 0;
                }
            }
            h.msg_hdr.msg_iov = &mut self.iovecs[first];
            h.msg_hdr.msg_iovlen = run;
            h.msg_hdr.msg_flags = 0;
            if run > 1 {
                let segment = self.queued[first].1 as u16;
                h.msg_hdr.msg_control = self.controls[m].0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 is well within CONTROL_BYTES.
                h.msg_hdr.msg_controllen =
                    unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
                // SAFETY: msg_control points at controls[m], aligned for
                // cmsghdr and large enough for one header and a u16.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
                }
            } else {
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
            }
            self.runs.push(run);
            first += run;
        }
        if self.runs.is_empty() {
            return Ok(0);
        }
        // SAFETY: the first runs.len() headers point at live addresses,
        // control buffers and iovecs, and the iovecs at the caller's
        // datagrams, which are borrowed for the whole of `send`; the kernel
        // only reads them.
        let sent = check(unsafe {
            libc::sendmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.runs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        })?;
        Ok(self.runs[..sent as usize].iter().sum())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
        let mut send = SendBatch::new(4, false);
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

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (a, b)
    }

    fn receive_all(recv: &mut RecvBatch, fd: RawFd, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "got {} of {want}",
                got.len()
            );
            match recv.recv(fd) {
                Ok(_) => got.extend(recv.datagrams().map(|(_, d)| d.to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    #[test]
    fn gso_runs_keep_one_destination_and_one_size_but_the_last() {
        let x: Option<SocketAddr> = Some("127.0.0.1:1".parse().unwrap());
        let y: Option<SocketAddr> = Some("127.0.0.1:2".parse().unwrap());
        assert_eq!(gso_run(&[], 64), 0);
        assert_eq!(gso_run(&[(x, 1400), (x, 1400), (x, 900), (x, 1400)], 64), 3);
        assert_eq!(gso_run(&[(x, 1400), (x, 1500)], 64), 1);
        assert_eq!(gso_run(&[(x, 1400), (y, 1400)], 64), 1);
        assert_eq!(gso_run(&[(x, 1400); 10], 4), 4);
        assert_eq!(gso_run(&[(x, 1400); 10], 1), 1);
        assert_eq!(gso_run(&[(x, 0), (x, 0)], 64), 1);
        // No run passes 64 KiB of payload.
        assert_eq!(gso_run(&[(None, 1472); 64], 64), 65_000 / 1472);
    }

    #[test]
    fn gso_sends_arrive_as_the_same_datagrams_with_and_without_gro() {
        for gro in [true, false] {
            let (a, b) = pair();
            if gro {
                assert!(enable_gro(b.as_raw_fd()), "this kernel has UDP GRO");
            }
            assert!(gso_supported(a.as_raw_fd()), "this kernel has UDP GSO");
            let to = Some(b.local_addr().unwrap());
            let payloads: Vec<Vec<u8>> = (0..40u8)
                .map(|i| vec![i; if i % 13 == 12 { 300 } else { 1400 }])
                .collect();
            let mut send = SendBatch::new(8, true);
            let mut sent = 0;
            while sent < payloads.len() {
                sent += send
                    .send(
                        a.as_raw_fd(),
                        payloads[sent..].iter().map(|p| (to, p.as_slice())),
                    )
                    .unwrap();
            }
            let mut recv = RecvBatch::new(8);
            let got = receive_all(&mut recv, b.as_raw_fd(), payloads.len());
            assert_eq!(got, payloads, "gro {gro}");
        }
    }

    #[test]
    fn gro_splits_a_senders_run_back_into_its_datagrams() {
        let (a, b) = pair();
        assert!(enable_gro(b.as_raw_fd()));
        let to = Some(b.local_addr().unwrap());
        // One GSO message of 5 datagrams, the last shorter.
        let payloads: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; if i == 4 { 10 } else { 1000 }])
            .collect();
        let mut send = SendBatch::new(1, true);
        assert_eq!(
            send.send(a.as_raw_fd(), payloads.iter().map(|p| (to, p.as_slice())))
                .unwrap(),
            5
        );
        let mut recv = RecvBatch::new(4);
        let got = receive_all(&mut recv, b.as_raw_fd(), 5);
        assert_eq!(got, payloads);
    }
}
