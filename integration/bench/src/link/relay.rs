//! A UDP relay that emulates a network link between clients (fetch agents)
//! and one upstream server (a block server), in-process, because this
//! machine has no netem.
//!
//! Each client address gets its own upstream socket, so replies route back.
//! Both directions pass through their own [`LinkModel`] (shared by all
//! clients, as on one physical path). The relay runs on one dedicated thread:
//! tokio timers are millisecond-granular, while `rack` needs 50 µs one-way
//! delays. The thread waits in epoll_pwait2 with a nanosecond timeout and
//! 1 ns timer slack; wake-ups from a timer still arrive late here (about
//! 20-35 µs on this VM), so the relay asks to wake that much early, learning
//! the lateness as it goes, and polls without blocking for the rest.
//! Datagrams never leave before their modelled departure: measured delays
//! are the model's plus scheduling lateness, never less.
//!
//! Cost and ceiling, measured on this 2-core VM (`thaw-bench link`): a
//! timed wake-up itself costs about 20 µs of CPU here, so the relay uses
//! roughly 45-50% of a core while ping-ponging at rack's 100 µs and about 10%
//! at region's 1 ms. With the kernel's UDP offloads (GRO in, GSO out; see
//! [`super::udp_batch`]) it moves about 500 k datagrams/s of 1472 bytes (5.9
//! Gbit/s) in a UDP blast, against 205 k (2.4 Gbit/s) a datagram at a time;
//! QUIC streaming through it reaches about 2.4 Gbit/s (1.8 without), bound
//! by the QUIC ends sharing the two cores with it. Both are below rack's 10
//! Gbit/s, and QUIC streaming below region's 2.5 Gbit/s: on this machine
//! bulk transfers through either link are bounded by CPU, not by the model,
//! and only the delays are faithful. On a machine with spare cores the
//! model's rate applies up to the relay thread's own ceiling.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::model::{LinkModel, LinkParams, Verdict, IPV4_UDP_HEADER_BYTES, IPV6_UDP_HEADER_BYTES};
use super::spec::{LinkSpec, LinkSpecError};
use super::sys::{self, Epoll, EventFd};
use super::udp_batch::{self, RecvBatch, SendBatch};

/// Datagrams moved per recvmmsg / sendmmsg.
const BATCH: usize = 32;
/// Receive batches per socket per loop turn, so a flood on one socket does
/// not hold back departures.
const MAX_RECV_ROUNDS: usize = 4;
/// Socket buffers: bursts of a window's worth at 10 Gbit/s must fit while
/// the relay thread is descheduled.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// First guess of how late a timed wake-up comes (measured here: 22 µs p50).
const INITIAL_WAKE_LATENESS: Duration = Duration::from_micros(25);
/// Lateness beyond this is preemption, not timer behaviour: not learned.
const MAX_LEARNED_LATENESS: Duration = Duration::from_micros(200);

const TOKEN_LISTEN: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_FIRST_UPSTREAM: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Link(#[from] LinkSpecError),
    #[error("relay socket setup: {0}")]
    Io(#[from] io::Error),
}

/// Counters of one direction, updated by the relay thread.
#[derive(Debug, Default)]
pub(crate) struct DirectionCounters {
    pub datagrams: AtomicU64,
    pub bytes: AtomicU64,
    /// Dropped by the model's full queue.
    pub dropped: AtomicU64,
    /// Dropped for exceeding the link's MTU (QUIC's MTU probes, mostly).
    pub too_large: AtomicU64,
    /// Refused by the kernel on send (e.g. the peer's port closed).
    pub send_errors: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionStats {
    pub datagrams: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub too_large: u64,
    pub send_errors: u64,
}

impl DirectionCounters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            datagrams: self.datagrams.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            too_large: self.too_large.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    to_upstream: DirectionCounters,
    to_clients: DirectionCounters,
    clients: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    /// Client to server (requests, ACKs).
    pub to_upstream: DirectionStats,
    /// Server to clients (block data).
    pub to_clients: DirectionStats,
    pub clients: u64,
}

pub struct UdpRelay;

impl UdpRelay {
    /// Relays datagrams between clients of `listen` and `upstream` through a
    /// relayed link (`rack`, `region`); object-store links are refused.
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        link: LinkSpec,
    ) -> Result<RelayHandle, RelayError> {
        match link {
            LinkSpec::Relayed {
                rtt,
                bandwidth_bits_per_sec,
                mtu_bytes,
                ..
            } => {
                let headers = if upstream.is_ipv4() {
                    IPV4_UDP_HEADER_BYTES
                } else {
                    IPV6_UDP_HEADER_BYTES
                };
                let params =
                    LinkParams::from_rtt(rtt, bandwidth_bits_per_sec).with_mtu(mtu_bytes, headers);
                Ok(Self::start_with(listen, upstream, params)?)
            }
            LinkSpec::ObjectStore { name, .. } => Err(LinkSpecError::NotRelayed { name }.into()),
        }
    }

    /// As [`UdpRelay::start`], with the model's parameters (same each way)
    /// given directly, e.g. another buffer size.
    pub fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        params: LinkParams,
    ) -> io::Result<RelayHandle> {
        let socket = UdpSocket::bind(listen)?;
        socket.set_nonblocking(true)?;
        sys::set_socket_buffers(socket.as_raw_fd(), SOCKET_BUFFER_BYTES);
        udp_batch::enable_gro(socket.as_raw_fd());
        let gso = udp_batch::gso_supported(socket.as_raw_fd());
        let local_addr = socket.local_addr()?;
        let stop = EventFd::new()?;
        let counters = Arc::new(Counters::default());
        let tid = Arc::new(AtomicI32::new(0));
        let epoll = Epoll::new()?;
        epoll.add(socket.as_raw_fd(), TOKEN_LISTEN)?;
        epoll.add(stop.as_raw_fd(), TOKEN_STOP)?;
        let thread_tid = tid.clone();
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("thaw-udp-relay".into())
            .spawn(move || {
                // The batches hold raw pointers (not Send): made here.
                let mut relay = Relay {
                    epoll,
                    listen: socket,
                    flows: Flows {
                        upstream,
                        list: Vec::new(),
                        by_client: HashMap::new(),
                    },
                    to_upstream: Direction::new(params),
                    to_clients: Direction::new(params),
                    recv: RecvBatch::new(BATCH),
                    send: SendBatch::new(BATCH, gso),
                    wake_lateness: INITIAL_WAKE_LATENESS,
                    counters: thread_counters,
                };
                thread_tid.store(sys::thread_id(), Ordering::Relaxed);
                if let Err(e) = sys::set_thread_timer_slack_ns(1) {
                    tracing::warn!("relay: cannot lower timer slack: {e}");
                }
                if let Err(e) = relay.run() {
                    tracing::error!("relay stopped: {e}");
                }
            })?;
        Ok(RelayHandle {
            local_addr,
            stop,
            thread: Some(thread),
            counters,
            tid,
        })
    }
}

/// A running relay; stops when dropped.
pub struct RelayHandle {
    local_addr: SocketAddr,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    tid: Arc<AtomicI32>,
}

impl RelayHandle {
    /// Where clients send to reach the upstream server through the link.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            to_upstream: self.counters.to_upstream.snapshot(),
            to_clients: self.counters.to_clients.snapshot(),
            clients: self.counters.clients.load(Ordering::Relaxed),
        }
    }

    /// CPU time the relay thread has used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        match self.tid.load(Ordering::Relaxed) {
            0 => None,
            tid => sys::thread_cpu_time(tid),
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if self.stop.signal().is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// One client and the socket that speaks for it to the upstream server.
struct Flow {
    client: SocketAddr,
    upstream: UdpSocket,
}

/// Every client seen so far (never forgotten: relays live for one run).
struct Flows {
    upstream: SocketAddr,
    list: Vec<Flow>,
    by_client: HashMap<SocketAddr, usize>,
}

impl Flows {
    /// The flow of `client`, opening its upstream socket on first sight.
    fn get_or_add(
        &mut self,
        client: SocketAddr,
        epoll: &Epoll,
        counters: &Counters,
    ) -> io::Result<usize> {
        if let Some(&index) = self.by_client.get(&client) {
            return Ok(index);
        }
        let bind: SocketAddr = if self.upstream.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal address")
        } else {
            "[::]:0".parse().expect("literal address")
        };
        let upstream = UdpSocket::bind(bind)?;
        upstream.connect(self.upstream)?;
        upstream.set_nonblocking(true)?;
        sys::set_socket_buffers(upstream.as_raw_fd(), SOCKET_BUFFER_BYTES);
        udp_batch::enable_gro(upstream.as_raw_fd());
        let index = self.list.len();
        epoll.add(upstream.as_raw_fd(), TOKEN_FIRST_UPSTREAM + index as u64)?;
        self.list.push(Flow { client, upstream });
        self.by_client.insert(client, index);
        counters.clients.fetch_add(1, Ordering::Relaxed);
        Ok(index)
    }

    /// Where a datagram of `flow` is sent from and to.
    fn route(&self, listen: RawFd, to_clients: bool, flow: usize) -> (RawFd, Option<SocketAddr>) {
        if to_clients {
            (listen, Some(self.list[flow].client))
        } else {
            (self.list[flow].upstream.as_raw_fd(), None)
        }
    }
}

struct Pending {
    depart: Instant,
    flow: usize,
    data: Vec<u8>,
}

struct Direction {
    model: LinkModel,
    queue: VecDeque<Pending>,
}

impl Direction {
    fn new(params: LinkParams) -> Self {
        Self {
            model: LinkModel::new(params),
            queue: VecDeque::new(),
        }
    }

    fn offer(&mut self, at: Instant, flow: usize, data: &[u8], counters: &DirectionCounters) {
        match self.model.offer(at, data.len()) {
            Verdict::Depart(depart) => self.queue.push_back(Pending {
                depart,
                flow,
                data: data.to_vec(),
            }),
            Verdict::Drop => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::TooLarge => {
                counters.too_large.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn next_departure(&self) -> Option<Instant> {
        self.queue.front().map(|p| p.depart)
    }
}

struct Relay {
    epoll: Epoll,
    listen: UdpSocket,
    flows: Flows,
    to_upstream: Direction,
    to_clients: Direction,
    recv: RecvBatch,
    send: SendBatch,
    /// How late timed wake-ups come, learned (moving average).
    wake_lateness: Duration,
    counters: Arc<Counters>,
}

impl Relay {
    fn run(&mut self) -> io::Result<()> {
        let mut ready: Vec<u64> = Vec::with_capacity(64);
        loop {
            let now = Instant::now();
            self.flush(true, now);
            self.flush(false, now);
            let next = [
                self.to_upstream.next_departure(),
                self.to_clients.next_departure(),
            ]
            .into_iter()
            .flatten()
            .min();
            // Sleep until just before the next departure, then poll without
            // blocking until it is due.
            let sleep = next.map(|at| at.saturating_duration_since(Instant::now()));
            let timeout = match sleep {
                None => None,
                Some(left) if left > self.wake_lateness => Some(left - self.wake_lateness),
                Some(_) => Some(Duration::ZERO),
            };
            let asked_at = Instant::now();
            ready.clear();
            ready.extend(self.epoll.wait(timeout)?);
            if let Some(t) = timeout.filter(|t| !t.is_zero() && ready.is_empty()) {
                self.learn_lateness(asked_at.elapsed().saturating_sub(t));
            }
            for &token in &ready {
                match token {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_LISTEN => self.receive_from_clients(),
                    t => self.receive_from_upstream((t - TOKEN_FIRST_UPSTREAM) as usize),
                }
            }
        }
    }

    fn learn_lateness(&mut self, late: Duration) {
        if late <= MAX_LEARNED_LATENESS {
            // Moving average over about 8 wake-ups.
            self.wake_lateness = (self.wake_lateness * 7 + late) / 8;
        }
    }

    fn receive_from_clients(&mut self) {
        let Relay {
            epoll,
            listen,
            flows,
            to_upstream,
            recv,
            counters,
            ..
        } = self;
        for _ in 0..MAX_RECV_ROUNDS {
            match recv.recv(listen.as_raw_fd()) {
                Ok(n) => {
                    let at = Instant::now();
                    for (from, data) in recv.datagrams() {
                        let Some(from) = from else { continue };
                        match flows.get_or_add(from, epoll, counters) {
                            Ok(flow) => to_upstream.offer(at, flow, data, &counters.to_upstream),
                            Err(e) => tracing::warn!("relay: no upstream socket for {from}: {e}"),
                        }
                    }
                    if n < BATCH {
                        return;
                    }
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!("relay: receive from clients: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn receive_from_upstream(&mut self, flow: usize) {
        let Some(fd) = self.flows.list.get(flow).map(|f| f.upstream.as_raw_fd()) else {
            return;
        };
        for _ in 0..MAX_RECV_ROUNDS {
            match self.recv.recv(fd) {
                Ok(n) => {
                    let at = Instant::now();
                    for (_, data) in self.recv.datagrams() {
                        self.to_clients
                            .offer(at, flow, data, &self.counters.to_clients);
                    }
                    if n < BATCH {
                        return;
                    }
                }
                Err(e) => {
                    // ECONNREFUSED here reports an earlier send to a closed port.
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::debug!("relay: receive from upstream: {e}");
                    }
                    return;
                }
            }
        }
    }

    /// Sends every datagram of one direction that is due at `now`, in
    /// batches of consecutive datagrams leaving through the same socket.
    fn flush(&mut self, to_clients: bool, now: Instant) {
        let listen = self.listen.as_raw_fd();
        let (dir, counters) = if to_clients {
            (&mut self.to_clients, &self.counters.to_clients)
        } else {
            (&mut self.to_upstream, &self.counters.to_upstream)
        };
        loop {
            let Some(first) = dir.queue.front().filter(|p| p.depart <= now) else {
                return;
            };
            let flows = &self.flows;
            let (fd, _) = flows.route(listen, to_clients, first.flow);
            let batch = dir
                .queue
                .iter()
                .take(self.send.capacity())
                .map(|p| (p, flows.route(listen, to_clients, p.flow)))
                .take_while(|(p, (via, _))| p.depart <= now && *via == fd)
                .map(|(p, (_, to))| (to, p.data.as_slice()));
            match self.send.send(fd, batch) {
                Ok(sent) => {
                    for p in dir.queue.drain(..sent) {
                        counters.datagrams.fetch_add(1, Ordering::Relaxed);
                        counters
                            .bytes
                            .fetch_add(p.data.len() as u64, Ordering::Relaxed);
                    }
                }
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock)
                        || e.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    // The socket buffer is full: retry on the next turn.
                    return;
                }
                Err(e) => {
                    // The first datagram was refused (e.g. ECONNREFUSED from an
                    // earlier ICMP error): drop it, keep the rest.
                    tracing::debug!("relay: send: {e}");
                    dir.queue.pop_front();
                    counters.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
