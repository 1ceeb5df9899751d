//! Restores through the agent fetching from a QUIC block server (mutual
//! TLS, dev PKI), and going on from the object store when it dies.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{checkpoint, runtime, start_agent_on, Fixture};
use fetch_agent::guest::MappedGuest;
use fetch_agent::metrics::{Counters, SourceKind};
use fetch_agent::policy::Config;
use fetch_agent::source::block_server::BlockServerSource;
use thaw_block_protocol::server::{BlockServer, RunningServer};
use thaw_block_protocol::tls::{self, DevPki};
use thaw_store::Store;

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
