//! Getting a block's verified bytes: through the host cache (single flight),
//! admitted by priority, from the checkpoint's sources in order with a
//! timeout each, decoded and hash-checked before anyone sees them.
//!
//! Priorities: a demand fetch starts at once; prefetch and streaming fetches
//! each wait for a slot of their own bounded pool, so they never hold back a
//! demand fetch, and a fetch raised to demand while it waits starts at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use storage_backend::format::block_codec::decode_block_into;
use storage_backend::{CheckpointId, Manifest};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::cache::{BlockCache, FlightError, FlightPriority, Join};
use crate::metrics::{Counters, Metrics};
use crate::policy::Priority;
use crate::source::BlockSource;

/// A checkpoint being served: its manifest and where its blocks come from.
pub struct Checkpoint {
    pub id: CheckpointId,
    pub manifest: Arc<Manifest>,
    /// Tried in order; the first that delivers a block with the right hash wins.
    pub sources: Vec<Arc<dyn BlockSource>>,
}

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// How long one source may take for one block before the next is tried.
    pub source_timeout: Duration,
    /// Prefetch fetches in flight at once (agent-wide).
    pub prefetch_slots: usize,
    /// Streaming fetches in flight at once (agent-wide).
    pub stream_slots: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            source_timeout: Duration::from_secs(2),
            prefetch_slots: 16,
            stream_slots: crate::policy::DEFAULT_STREAM_IN_FLIGHT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("block {block} of checkpoint {checkpoint}: no source delivered it ({errors})")]
    AllSourcesFailed {
        checkpoint: CheckpointId,
        block: u32,
        errors: String,
    },
    #[error("block {block}: {0}", block = .1)]
    Flight(#[source] FlightError, u32),
}

/// A fetched block, as a restore's driver sees it.
pub struct Fetched {
    pub data: Bytes,
    /// How long the source took, when this request went to one (not when
    /// it joined another's fetch or found the block cached): the signal the
    /// streaming window adapts to.
    pub source_latency: Option<Duration>,
}

/// A fetch in progress: await `done`; raise `priority` on an upgrade.
pub struct PendingFetch {
    pub priority: Arc<FlightPriority>,
    pub done: BoxFuture<'static, Result<Fetched, FetchError>>,
}

/// What a request for a block needs next.
pub enum Request {
    /// Already in the host cache.
    Ready(Bytes),
    Pending(PendingFetch),
}

pub struct Fetcher {
    cache: Arc<BlockCache>,
    config: FetchConfig,
    prefetch: Semaphore,
    stream: Semaphore,
    metrics: Arc<Metrics>,
}

impl Fetcher {
    pub fn new(cache: Arc<BlockCache>, config: FetchConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Fetcher {
            prefetch: Semaphore::new(config.prefetch_slots.max(1)),
            stream: Semaphore::new(config.stream_slots.max(1)),
            cache,
            config,
            metrics,
        })
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        &self.cache
    }

    /// Requests a block's verified bytes. `restore` counts this restore's
    /// fetches besides the agent-wide counters.
    pub fn request(
        self: &Arc<Self>,
        checkpoint: &Arc<Checkpoint>,
        block: u32,
        priority: Priority,
        restore: Arc<Counters>,
    ) -> Request {
        let hash = checkpoint.manifest.blocks[block as usize].hash;
        match self.cache.join(&hash, priority) {
            Join::Ready(data) => Request::Ready(data),
            Join::Follow(follow) => {
                let fp = follow.priority().clone();
                Request::Pending(PendingFetch {
                    priority: fp,
                    done: Box::pin(async move {
                        follow
                            .wait()
                            .await
                            .map(|data| Fetched {
                                data,
                                source_latency: None,
                            })
                            .map_err(|e| FetchError::Flight(e, block))
                    }),
                })
            }
            Join::Lead(lead) => {
                let fp = lead.priority().clone();
                let this = self.clone();
                let checkpoint = checkpoint.clone();
                Request::Pending(PendingFetch {
                    priority: fp.clone(),
                    done: Box::pin(async move {
                        let permit = this.admit(&fp).await;
                        let started = std::time::Instant::now();
                        let result = this
                            .fetch_verified(&checkpoint, block, fp.get(), &restore)
                            .await;
                        let source_latency = Some(started.elapsed());
                        drop(permit);
                        match result {
                            Ok(data) => {
                                lead.complete(Ok(data.clone()));
                                Ok(Fetched {
                                    data,
                                    source_latency,
                                })
                            }
                            Err(e) => {
                                lead.complete(Err(FlightError(e.to_string())));
                                Err(e)
                            }
                        }
                    }),
                })
            }
        }
    }

    /// Waits for a slot of the fetch's priority class; demand needs none.
    /// A raise while waiting re-decides at once.
    async fn admit(&self, fp: &FlightPriority) -> Option<SemaphorePermit<'_>> {
        loop {
            let raised = fp.raised();
            tokio::pin!(raised);
            raised.as_mut().enable();
            let pool = match fp.get() {
                Priority::Demand => return None,
                Priority::Prefetch => &self.prefetch,
                Priority::Stream => &self.stream,
            };
            tokio::select! {
                permit = pool.acquire() => return permit.ok(),
                _ = &mut raised => continue,
            }
        }
    }

    /// Tries each source in order until one delivers bytes that decode to
    /// the manifest's hash. Bad bytes are counted and never returned.
    async fn fetch_verified(
        &self,
        checkpoint: &Checkpoint,
        block: u32,
        priority: Priority,
        restore: &Counters,
    ) -> Result<Bytes, FetchError> {
        let entry = &checkpoint.manifest.blocks[block as usize];
        let mut errors = Vec::new();
        for source in &checkpoint.sources {
            let fetched = tokio::time::timeout(
                self.config.source_timeout,
                source.fetch_stored(&checkpoint.id, block, priority),
            )
            .await;
            let stored = match fetched {
                Ok(Ok(stored)) => stored,
                Ok(Err(e)) => {
                    tracing::warn!(block, "fetch failed, trying the next source: {e}");
                    self.metrics.counters.count_source_error();
                    restore.count_source_error();
                    errors.push(e.to_string());
                    continue;
                }
                Err(_) => {
                    tracing::warn!(
                        block,
                        source = source.name(),
                        "fetch timed out after {:?}, trying the next source",
                        self.config.source_timeout
                    );
                    self.metrics.counters.count_source_error();
                    restore.count_source_error();
                    errors.push(format!("{}: timed out", source.name()));
                    continue;
                }
            };
            let mut data = vec![0u8; entry.raw_len as usize];
            match decode_block_into(entry, &stored, &mut data) {
                Ok(()) => {
                    for c in [&self.metrics.counters, restore] {
                        c.fetched(source.kind(), priority, stored.len() as u64);
                    }
                    return Ok(Bytes::from(data));
                }
                Err(e) => {
                    tracing::error!(
                        block,
                        source = source.name(),
                        "block refused, trying the next source: {e}"
                    );
                    self.metrics.counters.count_bad_block();
                    restore.count_bad_block();
                    errors.push(format!("{}: {e}", source.name()));
                }
            }
        }
        Err(FetchError::AllSourcesFailed {
            checkpoint: checkpoint.id.clone(),
            block,
            errors: errors.join("; "),
        })
    }
}
