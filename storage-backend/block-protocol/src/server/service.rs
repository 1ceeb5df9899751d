//! The QUIC side of the block server: one task per connection, one per
//! request stream; requests for blocks that are not cached are merged so
//! that concurrent requests cause one object-store read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::cache::BlockCache;
use super::metrics::{CacheUsage, ServerStats};
use super::read_ahead::read_ahead_run;
use crate::wire::{self, hop, Priority, Request, ResponseHeader, Status, MAX_REQUEST_LEN};
use thaw_format::{CheckpointId, Manifest, ManifestTrust};
use thaw_store::reader::{open_manifest, read_manifest_object, CheckpointReader};
use thaw_store::CheckpointError;
use thaw_store::Store;

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
    /// `true` once draining: no new connections or requests.
    draining: tokio::sync::watch::Sender<bool>,
}

/// Counts one thing (a connection, a stream) as active while alive.
struct Active<'a>(&'a AtomicU64);

impl<'a> Active<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Active(gauge)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every request in flight was answered.
    Finished,
    /// The bound came first; this many requests were cut off.
    CutShort { streams: u64 },
}

/// An opened checkpoint with its manifest object as stored (what a client asks first).
type OpenCheckpoint = (CheckpointReader, Bytes);

/// One store read of a run of blocks, shared by every request waiting for
/// one of them: each block's bytes or why it failed, or why the read did.
type RunRead = Shared<BoxFuture<'static, Result<Vec<Result<Bytes, Failure>>, Failure>>>;

/// A bound, serving block server.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    server: BlockServer,
    endpoint: quinn::Endpoint,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"server closing");
        self.accept_loop.abort();
    }

    /// Shuts down gracefully: refuses new connections and new requests at
    /// once, waits up to `bound` for the requests in flight to be answered
    /// (and their answers acknowledged), then closes every connection.
    pub async fn drain(&self, bound: Duration) -> Drained {
        let stats = self.server.stats();
        self.server.inner.draining.send_replace(true);
        tracing::info!(
            streams = stats.streams_active.load(Ordering::Relaxed),
            "draining: refusing new connections, finishing requests in flight"
        );
        let deadline = Instant::now() + bound;
        while stats.streams_active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = stats.streams_active.load(Ordering::Relaxed);
        self.endpoint.close(0u32.into(), b"server shutting down");
        // Lets the close reach the clients (bounded: a client may be gone).
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        self.accept_loop.abort();
        if left == 0 {
            Drained::Finished
        } else {
            Drained::CutShort { streams: left }
        }
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
                draining: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    pub fn stats(&self) -> &ServerStats {
        &self.inner.stats
    }

    /// Prometheus text of the server's metrics.
    pub fn render_metrics(&self) -> String {
        let usage = {
            let cache = self.inner.cache.lock().expect("lock");
            CacheUsage {
                bytes: cache.used_bytes(),
                blocks: cache.len() as u64,
                capacity: cache.capacity(),
            }
        };
        self.inner
            .stats
            .render(usage, *self.inner.draining.borrow())
    }

    fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Resolves once the server is draining.
    async fn drain_started(&self) {
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
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
        let running_server = self.clone();
        let accept_loop = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                if server.is_draining() {
                    // A clear refusal, so the client tries another server now.
                    server
                        .inner
                        .stats
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    incoming.refuse();
                    continue;
                }
                let server = server.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => server.serve_connection(conn).await,
                        Err(e) => {
                            server
                                .inner
                                .stats
                                .handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("connection refused: {e}")
                        }
                    }
                });
            }
        });
        Ok(RunningServer {
            local_addr,
            server: running_server,
            endpoint,
            accept_loop,
        })
    }

    async fn serve_connection(&self, conn: quinn::Connection) {
        let peer = conn.remote_address();
        tracing::debug!(%peer, "client connected");
        let stats = &self.inner.stats;
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let _active = Active::new(&stats.connections_active);
        loop {
            let accepted = tokio::select! {
                a = conn.accept_bi() => a,
                // Requests opened from now on are not taken: the connection
                // closes when the drain ends, and the client asks elsewhere.
                _ = self.drain_started() => {
                    let _ = conn.closed().await;
                    return;
                }
            };
            match accepted {
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
        let _active = Active::new(&self.inner.stats.streams_active);
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
                self.inner.stats.answered(status, len);
                // In flight until the client has the answer: a drain closes
                // connections only after that.
                let _ = send.stopped().await;
            }
            Err(e) => {
                self.inner.stats.unsent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("sending response: {e}")
            }
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
                        let started = Instant::now();
                        let object = read_manifest_object(&inner.store, &id).await;
                        inner.stats.store_latency.record(started.elapsed());
                        let object = object.inspect_err(|_| {
                            inner
                                .stats
                                .store_read_errors
                                .fetch_add(1, Ordering::Relaxed);
                        })?;
                        inner
                            .stats
                            .store_bytes_read
                            .fetch_add(object.len() as u64, Ordering::Relaxed);
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
                    // The read that held this block may have ended since the cache was looked
                    // at: it caches and ends its flights under this lock, so look again here.
                    if let Some(bytes) = self.inner.cache.lock().expect("lock").get(&hash) {
                        self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(bytes);
                    }
                    let run = if priority == Priority::Demand {
                        vec![block]
                    } else {
                        let cache = self.inner.cache.lock().expect("lock");
                        read_ahead_run(m, block, crate::shard::shard_blocks(m.blocks.len()), |b| {
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
        self.inner
            .stats
            .cache_misses
            .fetch_add(1, Ordering::Relaxed);
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
            let started = Instant::now();
            let read = reader.fetch_stored_many(&run).await;
            inner.stats.store_latency.record(started.elapsed());
            let mut flights = inner.block_flights.lock().expect("lock");
            let stored = match read {
                Ok(stored) => {
                    let bytes: usize = stored.iter().map(|b| b.len()).sum();
                    inner
                        .stats
                        .store_bytes_read
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    stored
                }
                Err(e) => {
                    inner
                        .stats
                        .store_read_errors
                        .fetch_add(1, Ordering::Relaxed);
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
                    let evicted = cache.insert(hash, bytes.clone());
                    inner
                        .stats
                        .cache_evictions
                        .fetch_add(evicted, Ordering::Relaxed);
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
