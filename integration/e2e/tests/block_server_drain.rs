//! `thaw block-server` as a process: its Prometheus endpoint counts real
//! requests, and SIGTERM drains it (new connections refused, a request in
//! flight answered, exit 0), while a second SIGTERM or the drain bound ends
//! it at once.

mod bins;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bins::Killed;
use thaw_bench::synthetic;
use thaw_block_protocol::client::BlockClient;
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};
use thaw_block_protocol::wire::{self, Priority, Request};
use thaw_format::CheckpointId;
use thaw_store::Store;

struct Server {
    process: Killed,
    addr: SocketAddr,
    metrics: SocketAddr,
}

/// Starts `thaw block-server` with metrics on an ephemeral loopback port.
fn start(store: &Path, pki: &Path, extra: &[&str]) -> Server {
    let mut child: Child = bins::thaw()
        .args(["block-server", "--listen", "127.0.0.1:0", "--store"])
        .arg(store)
        .arg("--dev-pki")
        .arg(pki)
        .args(["--metrics", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr_of = |prefix: &str| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with(prefix), "{line:?}");
        line.trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .parse()
            .unwrap()
    };
    let metrics = addr_of("block server metrics on");
    let addr = addr_of("block server listening on");
    Server {
        process: Killed(child),
        addr,
        metrics,
    }
}

/// One sample of the server's metrics (`name` or `name{labels}`).
fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
        .parse()
        .unwrap()
}

fn client(pki: &Path, addr: SocketAddr) -> BlockClient {
    let pki = DevPki::load_or_generate(pki).unwrap();
    let config = tls::client_config(&pki.ca_pem, Some(&pki.client)).unwrap();
    BlockClient::new(addr, SERVER_NAME, config).unwrap()
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not
    // reaped, so the pid is still its.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0);
}

/// Waits (bounded) for the process to exit; its status.
fn exit_within(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn fixture(dir: &Path) -> (std::path::PathBuf, CheckpointId) {
    let store_dir = dir.join("store");
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let memory = synthetic::memory_image(1 << 20, 5);
    let id = synthetic::write_memory_checkpoint(&store, &memory)
        .await
        .unwrap();
    (store_dir, id)
}

/// A block request's first byte alone: the server has the stream (it is
/// in flight) and waits for the rest.
fn partial_request(id: &CheckpointId, block: u32) -> (Vec<u8>, Vec<u8>) {
    let mut whole = wire::encode_request(&Request::Block {
        checkpoint: id.clone(),
        block,
        priority: Priority::Demand,
    });
    let rest = whole.split_off(1);
    (whole, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_real_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = fixture(dir.path()).await;
    let pki = dir.path().join("pki");
    let server = start(&store, &pki, &[]);
    let c = client(&pki, server.addr);
    let object = c.manifest_object(&id).await.unwrap();
    let m = thaw_store::reader::open_manifest(
        &id,
        &object,
        &thaw_format::ManifestTrust::InsecureUnsigned,
    )
    .unwrap()
    .manifest;
    let mut bytes = 0;
    for b in 0..3 {
        bytes += c
            .fetch_stored(&id, b, Priority::Demand)
            .await
            .unwrap()
            .len();
    }
    // Twice: the second from the cache.
    c.fetch_stored(&id, 0, Priority::Demand).await.unwrap();
    let missing = CheckpointId::new("missing").unwrap();
    assert!(c.manifest_object(&missing).await.is_err());
    let addr = server.metrics;
    let ok = metric(addr, "thaw_blockserver_responses_total{result=\"ok\"}");
    assert_eq!(ok, 5.0, "manifest + 4 blocks");
    assert_eq!(
        metric(
            addr,
            "thaw_blockserver_responses_total{result=\"not_found\"}"
        ),
        1.0
    );
    assert_eq!(metric(addr, "thaw_blockserver_requests_total"), 6.0);
    assert_eq!(metric(addr, "thaw_blockserver_cache_misses_total"), 3.0);
    assert_eq!(metric(addr, "thaw_blockserver_cache_hits_total"), 1.0);
    assert_eq!(
        metric(addr, "thaw_blockserver_store_blocks_read_total"),
        3.0
    );
    let stored: u64 = (0..3).map(|b| m.blocks[b].stored_len).sum();
    assert_eq!(stored as usize, bytes);
    assert_eq!(metric(addr, "thaw_blockserver_cache_bytes"), stored as f64);
    assert_eq!(metric(addr, "thaw_blockserver_connections_total"), 1.0);
    assert_eq!(metric(addr, "thaw_blockserver_connections_active"), 1.0);
    // Two manifest reads (one found, one missing) and three block reads.
    assert_eq!(metric(addr, "thaw_blockserver_store_reads_total"), 5.0);
    assert_eq!(
        metric(addr, "thaw_blockserver_store_read_latency_seconds_count"),
        5.0
    );
    assert_eq!(
        metric(addr, "thaw_blockserver_store_read_errors_total"),
        1.0
    );
    assert!(metric(addr, "thaw_blockserver_response_bytes_total{result=\"ok\"}") > stored as f64);
    // A client without a certificate fails its handshake, and is counted.
    let pki_files = DevPki::load_or_generate(&pki).unwrap();
    let anonymous = BlockClient::new(
        server.addr,
        SERVER_NAME,
        tls::client_config(&pki_files.ca_pem, None).unwrap(),
    )
    .unwrap();
    assert!(anonymous.manifest_object(&id).await.is_err());
    bins::wait_until(
        "the failed handshake counted",
        Duration::from_secs(10),
        || metric(addr, "thaw_blockserver_handshake_failures_total") >= 1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = fixture(dir.path()).await;
    let pki = dir.path().join("pki");
    let mut server = start(&store, &pki, &["--drain-timeout", "60s"]);
    let c = client(&pki, server.addr);
    let conn = c.connection().await.unwrap();
    let (head, rest) = partial_request(&id, 1);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&head).await.unwrap();
    bins::wait_until("the request in flight", Duration::from_secs(10), || {
        metric(server.metrics, "thaw_blockserver_streams_active") == 1.0
    });

    sigterm(&server.process.0);
    bins::wait_until("draining", Duration::from_secs(10), || {
        metric(server.metrics, "thaw_blockserver_draining") == 1.0
    });
    // New connections are refused while the request in flight holds the drain.
    let late = client(&pki, server.addr);
    let refused = late.manifest_object(&id).await;
    assert!(
        refused.is_err(),
        "a new connection was served while draining"
    );
    assert!(
        server.process.0.try_wait().unwrap().is_none(),
        "exited early"
    );

    // The request completes and is answered in full.
    send.write_all(&rest).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    let header =
        wire::decode_response_header(answer[..wire::RESPONSE_HEADER_LEN].try_into().unwrap())
            .unwrap();
    assert_eq!(header.status, wire::Status::Ok);
    assert_eq!(
        answer.len() - wire::RESPONSE_HEADER_LEN,
        header.len as usize
    );
    let status = exit_within(&mut server.process.0, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_or_the_bound_ends_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = fixture(dir.path()).await;
    let pki = dir.path().join("pki");
    for second_signal in [true, false] {
        let bound = if second_signal { "600s" } else { "1s" };
        let mut server = start(&store, &pki, &["--drain-timeout", bound]);
        let c = client(&pki, server.addr);
        let conn = c.connection().await.unwrap();
        // A request that never completes.
        let (head, _) = partial_request(&id, 0);
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&head).await.unwrap();
        bins::wait_until("the request in flight", Duration::from_secs(10), || {
            metric(server.metrics, "thaw_blockserver_streams_active") == 1.0
        });
        let started = Instant::now();
        sigterm(&server.process.0);
        if second_signal {
            bins::wait_until("draining", Duration::from_secs(10), || {
                metric(server.metrics, "thaw_blockserver_draining") == 1.0
            });
            sigterm(&server.process.0);
        }
        let status = exit_within(&mut server.process.0, Duration::from_secs(30));
        // Cut short: not a clean exit, and said why.
        assert!(!status.success(), "{status}");
        if second_signal {
            assert!(started.elapsed() < Duration::from_secs(30));
        } else {
            assert!(started.elapsed() >= Duration::from_secs(1));
        }
        let mut stderr = String::new();
        server
            .process
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(stderr.contains("requests in flight"), "{stderr}");
    }
}
