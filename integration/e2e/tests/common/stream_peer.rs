//! The host end of the test guest's network stream (device mode): raw AF_PACKET sockets on one
//! or more taps (each in its own network namespace, standing in for a host), taking the guest's
//! numbered frames in order and answering each with a cumulative acknowledgement (the next
//! frame it wants). A frame it already has is counted as a duplicate and acknowledged again; a
//! frame past the next one is dropped (the guest goes back to the first unacknowledged frame).
//! Every byte taken is checked against the stream's model as it arrives.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use thaw_linux_check::netns::NetNs;
use vmm::boot::testguest::{model, NET_CHUNK, NET_ETHERTYPE, NET_KIND_ACK, NET_KIND_DATA};

/// What the peer has taken so far.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// The stream, in order, as taken.
    pub stream: Vec<u8>,
    /// Frames taken (the next one wanted).
    pub frames: u64,
    /// Frames that came again after they were taken.
    pub duplicates: u64,
    /// Frames that came before their turn (dropped).
    pub early: u64,
    /// Acknowledgements sent.
    pub acks: u64,
    /// Frames whose header or bytes were wrong.
    pub corrupt: Vec<String>,
}

/// A running peer; stopped (its thread joined) when dropped.
pub struct StreamPeer {
    received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// An AF_PACKET socket for the stream's ethertype bound to interface `tap`, opened inside `ns`.
fn packet_socket(ns: &NetNs, tap: &str) -> OwnedFd {
    let tap = std::ffi::CString::new(tap).unwrap();
    ns.run(move || {
        let proto = NET_ETHERTYPE.to_be();
        // SAFETY: plain socket(2) call; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh socket no one else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: tap is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(tap.as_ptr()) };
        assert!(ifindex > 0, "no interface {tap:?} in the namespace");
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the length given, fd an open socket.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    })
    .expect("entering the namespace")
}

/// The acknowledgement frame for `next`, to the guest at `to`.
fn ack_frame(to: &[u8], next: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(to);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xfe]);
    f.extend_from_slice(&NET_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&NET_KIND_ACK.to_le_bytes());
    f.extend_from_slice(&next.to_le_bytes());
    f.resize(60, 0);
    f
}

/// Takes one frame off `fd` (if it is a data frame of the stream) and answers it.
fn serve_frame(fd: &OwnedFd, frame: &[u8], r: &mut Received) {
    let word = |at: usize| u32::from_le_bytes(frame[at..at + 4].try_into().unwrap());
    if frame.len() < 30 || frame[12..14] != NET_ETHERTYPE.to_be_bytes() {
        return;
    }
    if word(14) != NET_KIND_DATA {
        return; // our own acknowledgements, seen going out
    }
    let seq = u64::from(word(18));
    let len = word(26) as usize;
    if len as u64 != NET_CHUNK || frame.len() < 30 + len {
        r.corrupt
            .push(format!("frame {seq}: {} bytes, says {len}", frame.len()));
        return;
    }
    if seq == r.frames {
        let payload = &frame[30..30 + len];
        let start = seq * NET_CHUNK;
        if let Some(i) = (0..len).find(|&i| payload[i] != model::stream_byte(start + i as u64)) {
            r.corrupt.push(format!("frame {seq}: byte {i} wrong"));
            return;
        }
        r.stream.extend_from_slice(payload);
        r.frames += 1;
    } else if seq < r.frames {
        r.duplicates += 1;
    } else {
        r.early += 1;
    }
    let ack = ack_frame(&frame[6..12], r.frames as u32);
    // SAFETY: fd is an open, bound packet socket; ack is a valid buffer of its length.
    let sent = unsafe { libc::send(fd.as_raw_fd(), ack.as_ptr().cast(), ack.len(), 0) };
    // A tap no VMM holds drops what is sent to it (or refuses it): the guest resends.
    if sent > 0 {
        r.acks += 1;
    }
}

impl StreamPeer {
    /// Starts serving the taps named, each in its namespace.
    pub fn start(taps: &[(&NetNs, &str)]) -> StreamPeer {
        let fds: Vec<OwnedFd> = taps
            .iter()
            .map(|(ns, tap)| packet_socket(ns, tap))
            .collect();
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = received.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let mut polls: Vec<libc::pollfd> = fds
                        .iter()
                        .map(|fd| libc::pollfd {
                            fd: fd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        })
                        .collect();
                    // SAFETY: polls is a valid array of pollfds of the length given.
                    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as u64, 50) };
                    if n <= 0 {
                        continue;
                    }
                    for (p, fd) in polls.iter().zip(&fds) {
                        if p.revents & libc::POLLIN == 0 {
                            continue;
                        }
                        // SAFETY: buf is writable for its length; fd an open socket.
                        let got = unsafe {
                            libc::recv(
                                fd.as_raw_fd(),
                                buf.as_mut_ptr().cast(),
                                buf.len(),
                                libc::MSG_DONTWAIT,
                            )
                        };
                        if got > 0 {
                            let mut r = received.lock().unwrap();
                            serve_frame(fd, &buf[..got as usize], &mut r);
                        }
                    }
                }
            })
        };
        StreamPeer {
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// What it has taken so far.
    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for StreamPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
