//! The QUIC block server and client over loopback with real TLS: blocks
//! served and verified, concurrent requests merged into one store read,
//! mutual TLS enforced, corrupt stored data never served.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::join_all;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use thaw_bench::synthetic;
use thaw_block_protocol::client::{BlockClient, ClientError};
use thaw_block_protocol::server::{BlockServer, RunningServer};
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};
use thaw_block_protocol::wire::{Priority, Status};
use thaw_format::CheckpointId;
use thaw_format::{decode_block, BlockOpener};
use thaw_store::Store;

/// The manifest a block server gives, decoded: these tests' checkpoints are written unsigned
/// and this file is about the protocol (signatures are checked by the agent, see trust.rs).
trait ManifestOf {
    async fn manifest(&self, id: &CheckpointId) -> Result<thaw_format::Manifest, ClientError>;
}

impl ManifestOf for BlockClient {
    async fn manifest(&self, id: &CheckpointId) -> Result<thaw_format::Manifest, ClientError> {
        let object = self.manifest_object(id).await?;
        let trust = thaw_format::ManifestTrust::InsecureUnsigned;
        Ok(thaw_store::reader::open_manifest(id, &object, &trust)
            .unwrap()
            .manifest)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    memory: Vec<u8>,
    id: CheckpointId,
    pki: DevPki,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let memory = synthetic::memory_image(4 << 20, 11);
    let id = synthetic::write_memory_checkpoint(&store, &memory)
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        store,
        memory,
        id,
        pki: DevPki::generate().unwrap(),
    }
}

fn start(f: &Fixture, mtls: bool) -> (BlockServer, RunningServer) {
    let server = BlockServer::new(f.store.clone(), 64 << 20);
    let config = tls::server_config(&f.pki.server, mtls.then_some(f.pki.ca_pem.as_str())).unwrap();
    let running = server
        .serve("127.0.0.1:0".parse().unwrap(), config)
        .unwrap();
    (server, running)
}

fn client(f: &Fixture, running: &RunningServer, with_cert: bool) -> BlockClient {
    let config = tls::client_config(&f.pki.ca_pem, with_cert.then_some(&f.pki.client)).unwrap();
    BlockClient::new(running.local_addr, SERVER_NAME, config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_verified_blocks() {
    let f = fixture().await;
    let (_server, running) = start(&f, false);
    let c = client(&f, &running, false);
    let m = c.manifest(&f.id).await.unwrap();
    for (i, entry) in m.blocks.iter().enumerate() {
        let stored = c
            .fetch_stored(&f.id, i as u32, Priority::Demand)
            .await
            .unwrap();
        let raw = decode_block(&BlockOpener::Plain, entry, &stored).unwrap();
        for (k, page) in entry.page_iter().enumerate() {
            let at = page as usize * 4096;
            assert_eq!(&raw[k * 4096..(k + 1) * 4096], &f.memory[at..at + 4096]);
        }
    }
    let err = c
        .fetch_stored(&f.id, m.blocks.len() as u32, Priority::Demand)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                status: Status::NotFound,
                ..
            }
        ),
        "{err}"
    );
    let missing = CheckpointId::new("nope").unwrap();
    let err = c.manifest(&missing).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                status: Status::NotFound,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_cause_one_store_read_per_block() {
    let f = fixture().await;
    let (server, running) = start(&f, false);
    let clients: Vec<Arc<BlockClient>> = (0..16)
        .map(|_| Arc::new(client(&f, &running, false)))
        .collect();
    let blocks = clients[0].manifest(&f.id).await.unwrap().blocks.len() as u32;
    let fetches = clients.iter().map(|c| {
        let c = c.clone();
        let id = f.id.clone();
        async move {
            for b in 0..blocks {
                c.fetch_stored(&id, b, Priority::Prefetch).await.unwrap();
            }
        }
    });
    join_all(fetches).await;
    // Every block read from the store once, in runs of neighbours (prefetch
    // reads ahead): fewer reads than blocks, plus one for the manifest.
    let stats = server.stats();
    assert_eq!(stats.blocks_read.load(Ordering::Relaxed), u64::from(blocks));
    let reads = stats.store_reads.load(Ordering::Relaxed);
    assert!(
        blocks > 1 && reads < 1 + u64::from(blocks),
        "{reads} reads for {blocks} blocks"
    );
    assert_eq!(
        server.stats().requests.load(Ordering::Relaxed),
        1 + 16 * u64::from(blocks)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_valid_certificate() {
    let f = fixture().await;
    let (_server, running) = start(&f, true);
    client(&f, &running, true).manifest(&f.id).await.unwrap();

    let err = client(&f, &running, false)
        .manifest(&f.id)
        .await
        .unwrap_err();
    assert!(
        !matches!(err, ClientError::Refused { .. }),
        "no certificate got through: {err}"
    );

    // A certificate from another CA (that the client itself trusts the server's CA).
    let other = DevPki::generate().unwrap();
    let config = tls::client_config(&f.pki.ca_pem, Some(&other.client)).unwrap();
    let stranger = BlockClient::new(running.local_addr, SERVER_NAME, config).unwrap();
    let err = stranger.manifest(&f.id).await.unwrap_err();
    assert!(
        !matches!(err, ClientError::Refused { .. }),
        "foreign certificate got through: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_stored_block_is_never_served() {
    let f = fixture().await;
    let (_server, running) = start(&f, false);
    let c = client(&f, &running, false);
    let m = c.manifest(&f.id).await.unwrap();
    let entry = &m.blocks[2];
    let path = Path::from(m.objects[entry.object as usize].as_str());
    let os = f.store.object_store();
    let mut bytes = os.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
    bytes[entry.offset as usize + 7] ^= 0x40;
    os.put(&path, bytes.into()).await.unwrap();

    let err = c
        .fetch_stored(&f.id, 2, Priority::Demand)
        .await
        .unwrap_err();
    match err {
        ClientError::Refused {
            status: Status::Unavailable,
            message,
            ..
        } => {
            assert!(message.contains("block 2"), "{message}")
        }
        other => panic!("expected a refusal, got {other}"),
    }
    c.fetch_stored(&f.id, 1, Priority::Demand).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_reads_its_block_alone_and_streaming_reads_ahead() {
    let f = fixture().await;
    let (server, running) = start(&f, false);
    let c = client(&f, &running, false);
    let blocks = c.manifest(&f.id).await.unwrap().blocks.len() as u64;
    assert!(blocks > 3, "the fixture has {blocks} blocks");
    let stats = server.stats();
    c.fetch_stored(&f.id, 0, Priority::Demand).await.unwrap();
    assert_eq!(stats.blocks_read.load(Ordering::Relaxed), 1);
    // Streaming reads the rest of its shard (blocks 2 and 3 of 2-block
    // shards: the fixture is small, see thaw_block_protocol::shard).
    c.fetch_stored(&f.id, 2, Priority::Background)
        .await
        .unwrap();
    let read = stats.blocks_read.load(Ordering::Relaxed);
    assert!(read > 2, "streaming block 2 read {} blocks", read - 1);
    // The blocks read ahead are served from the cache.
    let reads = stats.store_reads.load(Ordering::Relaxed);
    c.fetch_stored(&f.id, 3, Priority::Background)
        .await
        .unwrap();
    assert_eq!(stats.store_reads.load(Ordering::Relaxed), reads);
}
