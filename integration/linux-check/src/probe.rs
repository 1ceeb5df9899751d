//! Sending ICMP echo and timestamp requests to an address and waiting for the answers, over a raw
//! socket (root or CAP_NET_RAW) in the calling thread's network namespace.

use crate::icmp::{self, Reply};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime};

/// A probe got no answer, or could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open a raw ICMP socket (needs root or CAP_NET_RAW): {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot send to {addr}: {source}")]
    Send {
        addr: Ipv4Addr,
        source: std::io::Error,
    },
    #[error("receiving from {addr}: {source}")]
    Receive {
        addr: Ipv4Addr,
        source: std::io::Error,
    },
    #[error("no {what} reply from {addr} within {waited:?}")]
    NoReply {
        what: &'static str,
        addr: Ipv4Addr,
        waited: Duration,
    },
}

/// What a timestamp exchange showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// How far the other host's wall clock is ahead of ours, in milliseconds (negative: behind).
    pub offset_ms: i64,
    pub round_trip: Duration,
}

/// A raw ICMP socket talking to one address.
pub struct Prober {
    socket: Socket,
    addr: Ipv4Addr,
    id: u16,
    seq: u16,
}

impl Prober {
    /// Opens a raw socket for probing `addr`.
    pub fn new(addr: Ipv4Addr) -> Result<Prober, ProbeError> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .map_err(ProbeError::Socket)?;
        Ok(Prober {
            socket,
            addr,
            // Tells our replies from those to other probes running at the same time.
            id: (std::process::id() as u16) ^ 0x7468,
            seq: 0,
        })
    }

    fn send(&mut self, message: &[u8]) -> Result<(), ProbeError> {
        let to = SockAddr::from(SocketAddrV4::new(self.addr, 0));
        self.socket
            .send_to(message, &to)
            .map_err(|source| ProbeError::Send {
                addr: self.addr,
                source,
            })?;
        Ok(())
    }

    /// Waits until `deadline` for a reply `matches` accepts; packets from elsewhere, other
    /// probes' replies and unreadable packets are skipped.
    fn wait_for(
        &self,
        deadline: Instant,
        what: &'static str,
        waited: Duration,
        matches: impl Fn(&Reply) -> bool,
    ) -> Result<Reply, ProbeError> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProbeError::NoReply {
                    what,
                    addr: self.addr,
                    waited,
                });
            }
            self.socket
                .set_read_timeout(Some(left))
                .map_err(|source| ProbeError::Receive {
                    addr: self.addr,
                    source,
                })?;
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ProbeError::Receive {
                        addr: self.addr,
                        source,
                    })
                }
            };
            if from.as_socket_ipv4().map(|a| *a.ip()) != Some(self.addr) {
                continue;
            }
            // SAFETY: recv_from initialised the first n bytes of buf.
            let packet = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            match icmp::parse_reply(packet) {
                Ok(reply) if matches(&reply) => return Ok(reply),
                _ => continue,
            }
        }
    }

    /// Sends one echo request and returns the round trip of its reply.
    pub fn echo(&mut self, timeout: Duration) -> Result<Duration, ProbeError> {
        self.seq = self.seq.wrapping_add(1);
        let (id, seq) = (self.id, self.seq);
        let payload = b"thaw-linux-check";
        let start = Instant::now();
        self.send(&icmp::echo_request(id, seq, payload))?;
        self.wait_for(start + timeout, "echo", timeout, |r| {
            matches!(r, Reply::Echo { id: i, seq: s, payload: p } if *i == id && *s == seq && p == payload)
        })?;
        Ok(start.elapsed())
    }

    /// Sends one timestamp request and compares the other host's wall clock with ours.
    pub fn clock(&mut self, timeout: Duration) -> Result<ClockSample, ProbeError> {
        self.seq = self.seq.wrapping_add(1);
        let (id, seq) = (self.id, self.seq);
        let start = Instant::now();
        let sent = icmp::ms_since_midnight(SystemTime::now());
        self.send(&icmp::timestamp_request(id, seq, sent))?;
        let reply = self.wait_for(start + timeout, "timestamp", timeout, |r| {
            matches!(r, Reply::Timestamp { id: i, seq: s, originate, .. } if *i == id && *s == seq && *originate == sent)
        })?;
        let received = icmp::ms_since_midnight(SystemTime::now());
        let Reply::Timestamp {
            receive, transmit, ..
        } = reply
        else {
            unreachable!("wait_for only returns timestamp replies here");
        };
        Ok(ClockSample {
            offset_ms: icmp::clock_offset_ms(sent, received, receive, transmit),
            round_trip: start.elapsed(),
        })
    }

    /// Echo requests once every `every` until one is answered or `within` has passed: a host
    /// still booting (or just restored) answers once its network is up.
    pub fn wait_for_echo(
        &mut self,
        within: Duration,
        every: Duration,
    ) -> Result<Duration, ProbeError> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.echo(every.min(left.max(Duration::from_millis(1)))) {
                Ok(rtt) => return Ok(rtt),
                Err(ProbeError::NoReply { .. }) if Instant::now() < deadline => continue,
                Err(ProbeError::NoReply { .. }) => {
                    return Err(ProbeError::NoReply {
                        what: "echo",
                        addr: self.addr,
                        waited: within,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }
}
