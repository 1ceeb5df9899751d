//! The QUIC side of the block server: one task per connection, one per
//! request stream; requests for blocks that are not cached are merged so
//! that concurrent requests cause one object-store read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::cache::BlockCache;
use super::read_ahead::{read_ahead_run, READ_AHEAD_BLOCKS};
use crate::wire::{self, hop, Priority, Request, ResponseHeader, Status, MAX_REQUEST_LEN};
use thaw_format::{CheckpointId, Manifest, ManifestTrust};
use thaw_store::reader::{open_manifest, read_manifest_object, CheckpointReader};
use thaw_store::CheckpointError;
use thaw_store::Store;

/// Counters a block server keeps (all since start).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub requests: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Object-store reads: runs of blocks (see `read_ahead`) and manifests.
    pub store_reads: AtomicU64,
    /// Blocks those reads brought in.
    pub blocks_read: AtomicU64,
    pub bytes_sent: AtomicU64,
}

type Flight<T> = Shared<BoxFuture<'static, Result<T, Failure>>>;

/// Why a request failed, as told to the client.
#[derive(Debug, Clone)]
struct Failure {
    status: Status,
    message: String,
}

impl From<CheckpointError> for Failure {
    fn from(e: CheckpointError) -> Self {
        let status = match e {
            CheckpointError::NotFound { .. } => Status::NotFound,
            _ => Status::Unavailable,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

#[derive(Clone)]
pub struct BlockServer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    stats: ServerStats,
    cache: Mutex<BlockCache>,
    /// Opened checkpoints with their manifest objects (immutable once written).
    checkpoints: Mutex<HashMap<CheckpointId, Flight<Arc<OpenCheckpoint>>>>,
    block_flights: Mutex<HashMap<[u8; 32], Flight<Bytes>>>,
}

/// An opened checkpoint with its manifest object as stored (what a client asks first).
type OpenCheckpoint = (CheckpointReader, Bytes);

/// One store read of a run of blocks, shared by every request waiting for
/// one of them: each block's bytes or why it failed, or why the read did.
type RunRead = Shared<BoxFuture<'static, Result<Vec<Result<Bytes, Failure>>, Failure>>>;

/// A bound, serving block server.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"server closing");
        self.accept_loop.abort();
    }

    /// Runs until the endpoint is closed.
    pub async fn wait(self) {
        let _ = self.accept_loop.await;
    }
}

impl BlockServer {
    pub fn new(store: Store, cache_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                stats: ServerStats::default(),
                cache: Mutex::new(BlockCache::new(cache_bytes)),
                checkpoints: Mutex::new(HashMap::new()),
                block_flights: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn stats(&self) -> &ServerStats {
        &self.inner.stats
    }

    /// Binds a QUIC endpoint on `addr` and serves until closed.
    pub fn serve(
        &self,
        addr: SocketAddr,
        config: quinn::ServerConfig,
    ) -> std::io::Result<RunningServer> {
        let endpoint = crate::endpoint::bind(addr, Some(config))?;
        let local_addr = endpoint.local_addr()?;
        let server = self.clone();
        let ep = endpoint.clone();
        let accept_loop = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => server.serve_connection(conn).await,
                        Err(e) => tracing::debug!("connection refused: {e}"),
                    }
                });
            }
        });
        Ok(RunningServer {
            local_addr,
            endpoint,
            accept_loop,
        })
    }

    async fn serve_connection(&self, conn: quinn::Connection) {
        let peer = conn.remote_address();
        tracing::debug!(%peer, "client connected");
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let server = self.clone();
                    tokio::spawn(async move { server.serve_stream(send, recv).await });
                }
                Err(e) => {
                    tracing::debug!(%peer, "connection ended: {e}");
                    return;
                }
            }
        }
    }

    async fn serve_stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        // The block and priority of a block request, for hop events.
        let mut timed: Option<(u32, u8)> = None;
        let reply = match recv.read_to_end(MAX_REQUEST_LEN).await {
            Ok(bytes) => match wire::decode_request(&bytes) {
                Ok(req) => {
                    if let Request::Block {
                        priority, block, ..
                    } = &req
                    {
                        let _ = send.set_priority(priority.stream_priority());
                        timed = Some((*block, *priority as u8));
                        hop::mark(hop::REQUEST_RECEIVED, *block, *priority as u8);
                    }
                    self.answer(req).await
                }
                Err(e) => Err(Failure {
                    status: Status::BadRequest,
                    message: e.to_string(),
                }),
            },
            Err(e) => Err(Failure {
                status: Status::BadRequest,
                message: format!("reading request: {e}"),
            }),
        };
        let (status, payload) = match reply {
            Ok(bytes) => (Status::Ok, bytes),
            Err(f) => (f.status, Bytes::from(f.message.into_bytes())),
        };
        let header = wire::encode_response_header(ResponseHeader {
            status,
            len: payload.len() as u64,
        });
        let len = payload.len() as u64;
        // Marked before the write: once written, the client may read the
        // answer before this task runs again.
        if let Some((block, priority)) = timed {
            hop::mark(hop::RESPONSE_SENT, block, priority);
        }
        let sent = async {
            send.write_all(&header).await?;
            send.write_chunk(payload).await?;
            send.finish()?;
            Ok::<_, quinn::WriteError>(())
        }
        .await;
        match sent {
            Ok(()) => {
                self.inner
                    .stats
                    .bytes_sent
                    .fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("sending response: {e}"),
        }
    }

    async fn answer(&self, req: Request) -> Result<Bytes, Failure> {
        match req {
            Request::Manifest { checkpoint } => Ok(self.checkpoint(&checkpoint).await?.1.clone()),
            Request::Block {
                checkpoint,
                block,
                priority,
            } => self.block(&checkpoint, block, priority).await,
        }
    }

    async fn checkpoint(&self, id: &CheckpointId) -> Result<Arc<OpenCheckpoint>, Failure> {
        let flight = {
            let mut map = self.inner.checkpoints.lock().expect("lock");
            map.entry(id.clone())
                .or_insert_with(|| {
                    let inner = self.inner.clone();
                    let id = id.clone();
                    async move {
                        inner.stats.store_reads.fetch_add(1, Ordering::Relaxed);
                        // Passed on as stored, signature and all: clients check it
                        // against their own trust; this server is not trusted and
                        // decodes it only to find blocks.
                        let object = read_manifest_object(&inner.store, &id).await?;
                        let opened = open_manifest(&id, &object, &ManifestTrust::InsecureUnsigned)?;
                        Ok(Arc::new((
                            CheckpointReader::new(&inner.store, opened),
                            object,
                        )))
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = flight.await;
        if result.is_err() {
            // Do not remember failures: the checkpoint may appear or the store recover.
            self.inner.checkpoints.lock().expect("lock").remove(id);
        }
        result
    }

    async fn block(
        &self,
        id: &CheckpointId,
        block: u32,
        priority: Priority,
    ) -> Result<Bytes, Failure> {
        let checkpoint = self.checkpoint(id).await?;
        let reader = checkpoint.0.clone();
        let m: &Manifest = reader.manifest();
        let hash = m
            .blocks
            .get(block as usize)
            .ok_or_else(|| Failure {
                status: Status::NotFound,
                message: format!("checkpoint {id} has no block {block}"),
            })?
            .hash;
        if let Some(bytes) = self.inner.cache.lock().expect("lock").get(&hash) {
            self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(bytes);
        }
        let flight = {
            let mut flights = self.inner.block_flights.lock().expect("lock");
            match flights.get(&hash) {
                Some(f) => f.clone(),
                None => {
                    let run = if priority == Priority::Demand {
                        vec![block]
                    } else {
                        let cache = self.inner.cache.lock().expect("lock");
                        read_ahead_run(m, block, READ_AHEAD_BLOCKS, |b| {
                            let h = &m.blocks[b as usize].hash;
                            !flights.contains_key(h) && !cache.contains(h)
                        })
                    };
                    let read = self.read_run(reader.clone(), run.clone());
                    let mut mine = None;
                    for (i, &b) in run.iter().enumerate() {
                        let f = read
                            .clone()
                            .map(move |r| r.and_then(|blocks| blocks[i].clone()))
                            .boxed()
                            .shared();
                        flights.insert(m.blocks[b as usize].hash, f.clone());
                        if b == block {
                            mine = Some(f);
                        }
                    }
                    mine.expect("a run starts with its block")
                }
            }
        };
        flight.await
    }

    /// Reads `run` (consecutive stored blocks) from the store in one request,
    /// verifies each block before caching it (a corrupt object is never
    /// served), and ends the blocks' flights.
    fn read_run(&self, reader: CheckpointReader, run: Vec<u32>) -> RunRead {
        let inner = self.inner.clone();
        async move {
            inner.stats.store_reads.fetch_add(1, Ordering::Relaxed);
            inner
                .stats
                .blocks_read
                .fetch_add(run.len() as u64, Ordering::Relaxed);
            let m = reader.manifest();
            let read = reader.fetch_stored_many(&run).await;
            let mut flights = inner.block_flights.lock().expect("lock");
            let stored = match read {
                Ok(stored) => stored,
                Err(e) => {
                    // Forget the failure: the store may recover.
                    for &b in &run {
                        flights.remove(&m.blocks[b as usize].hash);
                    }
                    return Err(Failure::from(e));
                }
            };
            let mut cache = inner.cache.lock().expect("lock");
            let mut out = Vec::with_capacity(run.len());
            for (&b, bytes) in run.iter().zip(stored) {
                let hash = m.blocks[b as usize].hash;
                let checked = reader.verify_stored(b, &bytes).map(|()| {
                    cache.insert(hash, bytes.clone());
                    bytes
                });
                flights.remove(&hash);
                out.push(checked.map_err(Failure::from));
            }
            Ok(out)
        }
        .boxed()
        .shared()
    }
}
