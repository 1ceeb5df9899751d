//! Both ends of a block request mark its way (`thaw_block_protocol::wire::hop`), so the bench
//! can time the legs of demand fetches: real fetches over loopback QUIC give four marks each, in
//! order, and none for the manifest.
//!
//! A test binary of its own, with the recording subscriber as the global default: tracing
//! caches each callsite's interest process-wide, and a callsite first reached on another test's
//! thread (no subscriber there) would be cached as uninteresting.

use thaw_bench::benches::restore::hops::{split, Hop, HopLog};
use thaw_bench::synthetic;
use thaw_block_protocol::client::BlockClient;
use thaw_block_protocol::server::BlockServer;
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};
use thaw_block_protocol::wire::Priority;
use thaw_store::Store;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_marks_time_each_demand_fetch() {
    let log = HopLog::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log.layer()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let id = synthetic::write_image_checkpoint(&store, 4 << 20, 11)
        .await
        .unwrap();
    let pki = DevPki::generate().unwrap();
    let server = BlockServer::new(store, 64 << 20);
    let running = server
        .serve(
            "127.0.0.1:0".parse().unwrap(),
            tls::server_config(&pki.server, None).unwrap(),
        )
        .unwrap();
    let c = BlockClient::new(
        running.local_addr,
        SERVER_NAME,
        tls::client_config(&pki.ca_pem, None).unwrap(),
    )
    .unwrap();
    c.manifest_object(&id).await.unwrap();
    for block in [0, 1, 2] {
        c.fetch_stored(&id, block, Priority::Demand).await.unwrap();
    }
    c.fetch_stored(&id, 3, Priority::Background).await.unwrap();
    let events = log.take();
    // Four marks per block request, none for the manifest.
    assert_eq!(events.len(), 16, "{events:?}");
    for block in 0..4 {
        let hops: Vec<Hop> = events
            .iter()
            .filter(|e| e.block == block)
            .map(|e| e.hop)
            .collect();
        assert_eq!(
            hops,
            [
                Hop::RequestSent,
                Hop::RequestReceived,
                Hop::ResponseSent,
                Hop::ResponseReceived
            ],
            "block {block}"
        );
    }
    // The streaming fetch is left out of the split.
    let s = split(&events).unwrap();
    assert_eq!(s.fetches, 3);
    let sum = s.to_server_us.mean + s.at_server_us.mean + s.back_us.mean;
    assert!((sum - s.total_us.mean).abs() < 1.0, "{s:?}");
    assert!(s.to_server_us.mean > 0.0 && s.back_us.mean > 0.0, "{s:?}");
}
