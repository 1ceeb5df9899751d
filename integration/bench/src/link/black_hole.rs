//! A UDP relay that forwards datagrams between clients and one upstream
//! server until told to drop everything: a server that vanishes from the
//! network without closing anything (a partition, a dead host), as a killed
//! process on the same host cannot show (its port is simply closed).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the relay's threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

struct Shared {
    upstream: SocketAddr,
    dropping: AtomicBool,
    stop: AtomicBool,
    dropped: AtomicU64,
    listen: UdpSocket,
    /// Each client's own socket towards the server, so replies route back.
    flows: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
}

/// A running relay; stops when dropped.
pub struct BlackHoleRelay {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl BlackHoleRelay {
    /// Relays between clients of `listen` and `upstream`, forwarding for now.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(listen)?;
        socket.set_read_timeout(Some(POLL))?;
        let local_addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            dropping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            listen: socket,
            flows: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("thaw-black-hole".into())
            .spawn(move || to_upstream(&s))?;
        Ok(BlackHoleRelay {
            local_addr,
            shared,
            threads: vec![thread],
        })
    }

    /// Where clients send to reach the server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// From now on every datagram, either way, is dropped.
    pub fn black_hole(&self) {
        self.shared.dropping.store(true, Ordering::SeqCst);
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for BlackHoleRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Client to server; starts a server-to-client thread per new client.
fn to_upstream(shared: &Arc<Shared>) {
    let mut buf = vec![0u8; 65_536];
    let mut back: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let (n, client) = match shared.listen.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if timed_out(&e) => continue,
            Err(e) => {
                tracing::warn!("black-hole relay: {e}");
                continue;
            }
        };
        if shared.dropping.load(Ordering::SeqCst) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let flow = {
            let mut flows = shared.flows.lock().unwrap_or_else(|e| e.into_inner());
            match flows.get(&client) {
                Some(f) => f.clone(),
                None => {
                    let Ok(f) = new_flow(shared) else { continue };
                    flows.insert(client, f.clone());
                    let s = shared.clone();
                    let up = f.clone();
                    if let Ok(t) = std::thread::Builder::new()
                        .name("thaw-black-hole-back".into())
                        .spawn(move || to_client(&s, &up, client))
                    {
                        back.push(t);
                    }
                    f
                }
            }
        };
        let _ = flow.send_to(&buf[..n], shared.upstream);
    }
    for t in back {
        let _ = t.join();
    }
}

fn new_flow(shared: &Shared) -> io::Result<Arc<UdpSocket>> {
    let bind: SocketAddr = if shared.upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(Arc::new(socket))
}

/// Server to one client.
fn to_client(shared: &Shared, upstream: &UdpSocket, client: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::SeqCst) {
        let n = match upstream.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if timed_out(&e) => continue,
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        if shared.dropping.load(Ordering::SeqCst) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = shared.listen.send_to(&buf[..n], client);
    }
}
