//! Restores through the agent fetching from a QUIC block server (mutual
//! TLS, dev PKI), and going on from the object store when it dies.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{checkpoint, runtime, start_agent_on, Fixture};
use fetch_agent::block_server::BlockServerSource;
use fetch_agent::guest::MappedGuest;
use fetch_agent::metrics::{Counters, SourceKind};
use fetch_agent::policy::Config;
use storage_backend::block_server::{BlockServer, RunningServer};
use storage_backend::tls::{self, DevPki};
use storage_backend::Store;

fn from(c: &Counters, kind: SourceKind) -> u64 {
    c.blocks[kind as usize]
        .iter()
        .map(|x| x.load(Ordering::SeqCst))
        .sum()
}

/// A block server over the fixture's store and an agent using it first,
/// with `policy` (prefetch window 2) or, by default, streaming too.
fn setup(fx: &Fixture) -> (common::Running, RunningServer) {
    setup_with(
        fx,
        Config {
            prefetch_window: 2,
            ..Config::default()
        },
    )
}

fn setup_with(fx: &Fixture, policy: Config) -> (common::Running, RunningServer) {
    let rt = runtime();
    let pki_dir = fx.dir.path().join("pki");
    let pki = DevPki::generate().unwrap();
    pki.write_to(&pki_dir).unwrap();
    let (running, source) = rt.block_on(async {
        let server = BlockServer::new(Store::open(&fx.store_spec).unwrap(), 64 << 20);
        let config = tls::server_config(&pki.server, Some(pki.ca_pem.as_str())).unwrap();
        let running = server
            .serve("127.0.0.1:0".parse().unwrap(), config)
            .unwrap();
        let source = BlockServerSource::connect(
            &running.local_addr.to_string(),
            &pki_dir.join("ca.pem"),
            Some((&pki_dir.join("client.pem"), &pki_dir.join("client.key"))),
        )
        .unwrap();
        (running, source)
    });
    let agent = start_agent_on(rt, fx, policy, vec![source.into_source()], None);
    (agent, running)
}

#[test]
fn blocks_come_from_the_block_server_over_quic() {
    let fx = checkpoint(512);
    let (agent, _server) = setup(&fx);
    let guest = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let _conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    assert!(guest.bytes() == &fx.memory[..]);
    let c = &agent.agent.metrics().counters;
    assert!(from(c, SourceKind::BlockServer) > 0);
    assert_eq!(from(c, SourceKind::ObjectStore), 0);
    assert_eq!(c.source_errors.load(Ordering::SeqCst), 0);
}

#[test]
fn a_block_server_dying_mid_restore_costs_only_latency() {
    let fx = checkpoint(512);
    // No streaming: the second half of memory must still be fetched when
    // the server dies (streaming could have brought it all in already).
    let (agent, server) = setup_with(
        &fx,
        Config {
            prefetch_window: 2,
            stream: None,
            ..Config::default()
        },
    );
    let guest = Arc::new(MappedGuest::new(fx.memory.len()).unwrap());
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let _conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    let half = fx.memory.len() / 2;
    assert!(guest.bytes()[..half] == fx.memory[..half]);
    let c = &agent.agent.metrics().counters;
    let before = from(c, SourceKind::BlockServer);
    assert!(before > 0);
    agent.runtime.block_on(async { server.close() });
    assert!(
        guest.bytes() == &fx.memory[..],
        "every byte right after the server died"
    );
    assert!(
        from(c, SourceKind::ObjectStore) > 0,
        "went on from the object store"
    );
    assert!(c.source_errors.load(Ordering::SeqCst) > 0);
}

/// Ranks (0 = first) at which streaming fetches of every block of
/// `checkpoint` through `fetcher`, asked in block order, completed; with
/// `demand`, a fault's demand request for that block joins its streaming
/// fetch 2 ms after they were asked for.
async fn stream_ranks(
    fetcher: &Arc<fetch_agent::fetch::Fetcher>,
    checkpoint: &Arc<fetch_agent::fetch::Checkpoint>,
    demand: Option<u32>,
) -> Vec<usize> {
    use fetch_agent::fetch::Request;
    use fetch_agent::policy::Priority;
    use futures::stream::{FuturesUnordered, StreamExt};
    let blocks = checkpoint.manifest.blocks.len() as u32;
    let restore = Arc::new(Counters::default());
    // One task polls them all, in the order pushed: requests go out in
    // block order.
    let mut fetches = FuturesUnordered::new();
    for b in 0..blocks {
        let Request::Pending(p) = fetcher.request(checkpoint, b, Priority::Stream, restore.clone())
        else {
            panic!("block {b} cached already")
        };
        fetches.push(async move { p.done.await.map(|_| b) });
    }
    let mut rank = vec![usize::MAX; blocks as usize];
    let mut order = 0;
    let mut joined = None;
    let join = tokio::time::sleep(std::time::Duration::from_millis(2));
    tokio::pin!(join);
    loop {
        tokio::select! {
            done = fetches.next() => {
                let Some(done) = done else { break };
                rank[done.unwrap() as usize] = order;
                order += 1;
            }
            _ = &mut join, if demand.is_some() && joined.is_none() => {
                // The fault joins the flight under way, raising it to demand.
                let b = demand.expect("checked");
                let Request::Pending(p) =
                    fetcher.request(checkpoint, b, Priority::Demand, restore.clone())
                else {
                    panic!("block {b} arrived before the fault")
                };
                joined = Some(p);
            }
        }
    }
    rank
}

#[test]
fn a_fault_joining_a_streaming_fetch_does_not_wait_behind_the_stream() {
    use fetch_agent::cache::BlockCache;
    use fetch_agent::fetch::{Checkpoint, FetchConfig, Fetcher};
    use fetch_agent::metrics::Metrics;
    let rt = runtime();
    let fx = common::checkpoint_of(common::incompressible(32 << 20));
    let store = Store::open(&fx.store_spec).unwrap();
    let dir = &fx.dir;
    let pki_dir = dir.path().join("pki");
    let pki = DevPki::generate().unwrap();
    pki.write_to(&pki_dir).unwrap();
    // The server on one thread of its own: it answers in the order
    // asked, as one busy server thread would.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_store = store.clone();
    let server_pki = pki.clone();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = BlockServer::new(server_store, 128 << 20);
            let config =
                tls::server_config(&server_pki.server, Some(server_pki.ca_pem.as_str())).unwrap();
            let running = server
                .serve("127.0.0.1:0".parse().unwrap(), config)
                .unwrap();
            addr_tx.send(running.local_addr).unwrap();
            let _ = stop_rx.await;
            running.close();
        });
    });
    rt.block_on(async {
        let id = fx.id.clone();
        let server_addr = addr_rx.recv().unwrap();
        let source = BlockServerSource::connect(
            &server_addr.to_string(),
            &pki_dir.join("ca.pem"),
            Some((&pki_dir.join("client.pem"), &pki_dir.join("client.key"))),
        )
        .unwrap()
        .into_source();
        let manifest = source.manifest(&id).await.unwrap();
        let last = manifest.blocks.len() as u32 - 1;
        let checkpoint = Arc::new(Checkpoint {
            id,
            manifest,
            sources: vec![source],
        });
        // Each pass gets its own host cache; the first warms the server's.
        // Every fetch is under way at once (none waits for a slot, which a
        // raise would skip).
        let fetcher = || {
            Fetcher::new(
                BlockCache::new(128 << 20),
                FetchConfig {
                    stream_slots: 4096,
                    ..FetchConfig::default()
                },
                Arc::new(Metrics::default()),
            )
        };
        stream_ranks(&fetcher(), &checkpoint, None).await;
        let plain = stream_ranks(&fetcher(), &checkpoint, None).await;
        let joined = stream_ranks(&fetcher(), &checkpoint, Some(last)).await;
        let (n, last) = (plain.len(), last as usize);
        eprintln!(
            "last block: alone {} of {n}, joined by a fault {}",
            plain[last], joined[last]
        );
        assert!(
            plain[last] > n / 2,
            "alone, the last block came {} of {n}",
            plain[last]
        );
        // Joined by a fault, it overtakes most of the blocks it waited behind.
        assert!(
            joined[last] * 2 < plain[last],
            "joined by a fault, it came {} of {n}",
            joined[last]
        );
        stop_tx.send(()).unwrap();
    });
    server_thread.join().unwrap();
}
