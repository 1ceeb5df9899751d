//! The emulated links: the UDP relay adds at least the configured round trip
//! and never passes more than the configured rate, a real QUIC block fetch
//! through it pays the round trip, and the slow object store delays reads by
//! first byte plus transfer time, per request and in parallel.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use thaw_bench::link::{LinkParams, LinkSpec, SlowStore, UdpRelay};
use thaw_bench::synthetic;
use thaw_block_protocol::client::BlockClient;
use thaw_block_protocol::server::BlockServer;
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};
use thaw_block_protocol::wire::Priority;
use thaw_format::{decode_block, BlockOpener};
use thaw_store::Store;

/// A UDP server that sends every datagram back to its sender until dropped.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relayed(link: &LinkSpec) -> (Duration, u64) {
    match link {
        LinkSpec::Relayed {
            rtt,
            bandwidth_bits_per_sec,
            ..
        } => (*rtt, *bandwidth_bits_per_sec),
        LinkSpec::ObjectStore { .. } => panic!("not a relayed link"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn small_datagrams_take_at_least_the_round_trip() {
    let echo = Echo::start();
    for link in [LinkSpec::rack(), LinkSpec::region()] {
        let (rtt, _) = relayed(&link);
        let relay =
            UdpRelay::start("127.0.0.1:0".parse().unwrap(), echo.addr, link.clone()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(relay.local_addr()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut samples = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0u32..300 {
            let started = Instant::now();
            client.send(&i.to_le_bytes()).unwrap();
            let n = client.recv(&mut buf).unwrap();
            let took = started.elapsed();
            assert_eq!(&buf[..n], &i.to_le_bytes());
            assert!(
                took >= rtt,
                "{}: round trip {took:?} < {rtt:?}",
                link.name()
            );
            samples.push(took);
        }
        samples.sort();
        let cpu = relay.cpu_time().unwrap();
        println!(
            "{}: configured rtt {rtt:?}, measured p50 {:?} p99 {:?}, relay CPU {cpu:?} for {} pings",
            link.name(),
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples.len()
        );
        // The relay counts a datagram just after handing it to the kernel,
        // so the last reply may arrive before its count.
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.stats().to_clients.datagrams < 300 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stats = relay.stats();
        assert_eq!(stats.to_upstream.datagrams, 300);
        assert_eq!(stats.to_clients.datagrams, 300);
        assert_eq!(stats.clients, 1);
    }
}

#[test]
fn several_clients_each_get_their_own_replies() {
    let echo = Echo::start();
    let relay =
        UdpRelay::start("127.0.0.1:0".parse().unwrap(), echo.addr, LinkSpec::rack()).unwrap();
    let clients: Vec<UdpSocket> = (0..4)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.connect(relay.local_addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    for round in 0u8..5 {
        for (i, c) in clients.iter().enumerate() {
            c.send(&[i as u8, round]).unwrap();
        }
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 8];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i as u8, round]);
        }
    }
    assert_eq!(relay.stats().clients, 4);
}

#[test]
fn datagrams_over_the_link_mtu_are_dropped() {
    let echo = Echo::start();
    // region carries 1500-byte IP packets: 1472 bytes of UDP payload.
    let relay = UdpRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        echo.addr,
        LinkSpec::region(),
    )
    .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(relay.local_addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send(&[1u8; 1473]).unwrap();
    client.send(&[2u8; 1472]).unwrap();
    let mut buf = [0u8; 4096];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[2u8; 1472][..]);
    let stats = relay.stats();
    assert_eq!(stats.to_upstream.too_large, 1);
    assert_eq!(stats.to_upstream.datagrams, 1);
}

#[test]
fn object_store_links_are_not_relayed() {
    let err = UdpRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        LinkSpec::object_store(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("object-store"), "{err}");
}

/// A sender offering 1.5× the link rate: what arrives never beats the rate.
#[test]
fn bulk_transfer_does_not_exceed_the_rate() {
    const RATE_BITS: u64 = 200_000_000;
    const DATAGRAM: usize = 1200;
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let params = LinkParams::from_rtt(Duration::from_millis(2), RATE_BITS);
    let relay = UdpRelay::start_with(
        "127.0.0.1:0".parse().unwrap(),
        sink.local_addr().unwrap(),
        params,
    )
    .unwrap();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut arrivals = Vec::new();
        while let Ok(n) = sink.recv(&mut buf) {
            arrivals.push((Instant::now(), n));
        }
        arrivals
    });
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(relay.local_addr()).unwrap();
    // 1.5 × 200 Mbit/s = 37.5 MB/s: 31 datagrams per millisecond, for 0.6 s.
    let payload = [0x5au8; DATAGRAM];
    let started = Instant::now();
    let mut offered = 0u64;
    while started.elapsed() < Duration::from_millis(600) {
        let due = (started.elapsed().as_secs_f64() * RATE_BITS as f64 * 1.5 / 8.0) as u64;
        while offered < due {
            sender.send(&payload).unwrap();
            offered += DATAGRAM as u64;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let sending = started.elapsed();
    let arrivals = receiver.join().unwrap();
    assert!(
        arrivals.len() > 100,
        "only {} datagrams arrived",
        arrivals.len()
    );
    let (first, _) = arrivals[0];
    let (last, _) = *arrivals.last().unwrap();
    let after_first: usize = arrivals[1..].iter().map(|&(_, n)| n).sum();
    let bits_per_sec = after_first as f64 * 8.0 / (last - first).as_secs_f64();
    let stats = relay.stats();
    println!(
        "bulk: configured {} Mbit/s, offered {:.0} Mbit/s, delivered {:.1} Mbit/s, {} datagrams, {} dropped by the queue",
        RATE_BITS / 1_000_000,
        offered as f64 * 8.0 / sending.as_secs_f64() / 1e6,
        bits_per_sec / 1e6,
        arrivals.len(),
        stats.to_upstream.dropped
    );
    assert!(
        bits_per_sec <= RATE_BITS as f64 * 1.1,
        "delivered {bits_per_sec} bit/s through a {RATE_BITS} bit/s link"
    );
    // The sink's own socket may overflow too, so it sees at most what the
    // relay sent.
    assert!(stats.to_upstream.datagrams >= arrivals.len() as u64);
    assert!(
        stats.to_upstream.dropped > 0,
        "1.5× the rate must overflow the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_block_fetches_through_the_relay_pay_the_round_trip() {
    let store = Store::open("memory://").unwrap();
    let memory = synthetic::memory_image(2 << 20, 7);
    let id = synthetic::write_memory_checkpoint(&store, &memory)
        .await
        .unwrap();
    let pki = DevPki::generate().unwrap();
    let server = BlockServer::new(store, 64 << 20);
    let running = server
        .serve(
            "127.0.0.1:0".parse().unwrap(),
            tls::server_config(&pki.server, Some(&pki.ca_pem)).unwrap(),
        )
        .unwrap();
    for link in [LinkSpec::rack(), LinkSpec::region()] {
        let (rtt, _) = relayed(&link);
        let relay = UdpRelay::start(
            "127.0.0.1:0".parse().unwrap(),
            running.local_addr,
            link.clone(),
        )
        .unwrap();
        let client = BlockClient::new(
            relay.local_addr(),
            SERVER_NAME,
            tls::client_config(&pki.ca_pem, Some(&pki.client)).unwrap(),
        )
        .unwrap();
        // Written just above, unsigned: this test is about the link.
        let object = client.manifest_object(&id).await.unwrap();
        let manifest = thaw_store::reader::open_manifest(
            &id,
            &object,
            &thaw_format::ManifestTrust::InsecureUnsigned,
        )
        .unwrap()
        .manifest;
        let mut took = Vec::new();
        for (i, entry) in manifest.blocks.iter().enumerate() {
            let started = Instant::now();
            let stored = client
                .fetch_stored(&id, i as u32, Priority::Demand)
                .await
                .unwrap();
            let t = started.elapsed();
            assert!(t >= rtt, "{}: block {i} in {t:?} < {rtt:?}", link.name());
            took.push(t);
            let raw = decode_block(&BlockOpener::Plain, entry, &stored).unwrap();
            for (k, page) in entry.page_iter().enumerate() {
                let at = page as usize * 4096;
                assert_eq!(&raw[k * 4096..(k + 1) * 4096], &memory[at..at + 4096]);
            }
        }
        took.sort();
        println!(
            "{}: {} block fetches over QUIC, p50 {:?} p99 {:?} (rtt {rtt:?})",
            link.name(),
            took.len(),
            percentile(&took, 0.5),
            percentile(&took, 0.99)
        );
        assert!(relay.stats().to_clients.bytes > 0);
        // MTU discovery keeps datagrams within what the link carries.
        let path = client.connection().await.unwrap().stats().path;
        let &LinkSpec::Relayed { mtu_bytes, .. } = &link else {
            unreachable!("rack and region are relayed")
        };
        assert!(
            usize::from(path.current_mtu) <= mtu_bytes - 28,
            "{}: path MTU {} over a {mtu_bytes}-byte link",
            link.name(),
            path.current_mtu
        );
    }
    running.close();
}

async fn slow_store_with_object(len: usize) -> (Arc<SlowStore>, Path, Vec<u8>) {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let slow = Arc::new(SlowStore::for_link(inner, &LinkSpec::object_store()).unwrap());
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = Path::from("checkpoints/x/segment-0");
    slow.put(&path, data.clone().into()).await.unwrap();
    (slow, path, data)
}

#[tokio::test]
async fn slow_store_ranged_get_waits_first_byte_and_transfer_time() {
    let (slow, path, data) = slow_store_with_object(4 << 20).await;
    assert_eq!(slow.hooks().requests(), 0, "puts are not read requests");
    let range = 1000u64..1000 + (256 << 10);
    let expected = slow.hooks().read_time(range.end - range.start);
    assert!(expected >= Duration::from_millis(22), "{expected:?}");

    let started = Instant::now();
    let got = slow.get_range(&path, range.clone()).await.unwrap();
    let single = started.elapsed();
    assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
    assert!(single >= expected, "{single:?} < {expected:?}");

    // A streamed whole-object GET: nothing before the last byte's time.
    let started = Instant::now();
    let result = slow.get(&path).await.unwrap();
    let chunks: Vec<_> = result.into_stream().try_collect().await.unwrap();
    let whole = started.elapsed();
    assert_eq!(chunks.concat(), data);
    assert!(
        whole >= slow.hooks().read_time(data.len() as u64),
        "{whole:?}"
    );

    let started = Instant::now();
    let meta = slow.head(&path).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert!(started.elapsed() >= Duration::from_millis(20));

    assert_eq!(slow.hooks().requests(), 3);
    assert_eq!(
        slow.hooks().bytes_served(),
        (range.end - range.start) + data.len() as u64
    );
    println!("slow store: 256 KiB ranged get {single:?} (model {expected:?}), 4 MiB get {whole:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_store_serves_parallel_requests_independently() {
    let (slow, path, data) = slow_store_with_object(4 << 20).await;
    let len = 256u64 << 10;
    let one = slow.hooks().read_time(len);
    let started = Instant::now();
    let gets = (0..8u64).map(|i| {
        let slow = slow.clone();
        let path = path.clone();
        async move { slow.get_range(&path, i * len..(i + 1) * len).await.unwrap() }
    });
    let got = join_all(gets).await;
    let eight = started.elapsed();
    for (i, bytes) in got.iter().enumerate() {
        let at = i * len as usize;
        assert_eq!(&bytes[..], &data[at..at + len as usize]);
    }
    println!("slow store: 8 parallel 256 KiB gets in {eight:?}, one takes {one:?}");
    assert!(eight >= one);
    assert!(
        eight < one * 4,
        "8 parallel gets took {eight:?}, one {one:?}"
    );
    assert_eq!(slow.hooks().requests(), 8);

    // Ranges far apart are separate requests; close ones are merged.
    let ranges = [0..4096, 8192..12288, (3 << 20)..(3 << 20) + 4096];
    let got = slow.get_ranges(&path, &ranges).await.unwrap();
    for (r, bytes) in ranges.iter().zip(&got) {
        assert_eq!(&bytes[..], &data[r.start as usize..r.end as usize]);
    }
    assert_eq!(slow.hooks().requests(), 8 + 2);
}
