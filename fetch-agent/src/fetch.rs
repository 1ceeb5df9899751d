//! Getting a block's verified bytes: through the host cache (single flight),
//! admitted by priority, from the checkpoint's sources in order with a
//! timeout each, decoded and hash-checked before anyone sees them.
//!
//! Priorities: a demand fetch starts at once; prefetch and streaming fetches
//! each wait for a slot of their own bounded pool, so they never hold back a
//! demand fetch, and a fetch raised to demand while it waits starts at once.
//!
//! Runs: streaming asks for blocks in prefetch order, which is the order
//! they are stored in. From a source that pays per request (an object store:
//! ~20 ms to first byte, and a request-rate limit per prefix), neighbouring
//! streamed blocks are read in one request of up to [`STREAM_RUN_BLOCKS`]
//! blocks ([`Fetcher::request_run`]); each block is still decoded and
//! hash-checked on its own.
//!
//! Raised while under way: a fault that joins a prefetch or streaming fetch
//! raises its flight to demand. A block server sends the answers queued at
//! one priority in the order they were queued, and quinn keeps a queued
//! answer's place when its priority changes, so the fetch would wait behind
//! every lower-priority answer queued before it. The fetcher therefore asks
//! such a source for the block again at demand priority and takes whichever
//! answer comes first; dropping the other stops its stream.
//!
//! Failing sources: each source's health is tracked ([`SourceMonitor`]).
//! A fetch waits for one source at most its adapted timeout; a source that
//! answered nothing since a fetch that timed out was sent (or that cannot
//! be reached) goes down: fetches in flight to it move to the next source at once, new fetches skip it, and a probe
//! brings it back when it answers. So a source dying costs the guest about
//! one timeout in total, not one per fetch (docs/design.md, "Failing
//! sources").

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use thaw_format::block_codec::decode_block_into;
use thaw_format::{BlockOpener, CheckpointId, Manifest};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::cache::{BlockCache, FlightError, FlightPriority, Join};
use crate::metrics::{Counters, Metrics};
use crate::policy::Priority;
use crate::source::health::TimeoutVerdict;
use crate::source::monitor::{ProbeTarget, SourceMonitor, Tracked};
use crate::source::{BlockSource, SourceError};

mod failure;
pub use failure::{FailureReason, FetchError, SourceFailure, SourceFailures};

/// Most blocks one run reads in one request: 1 MiB of 64 KiB blocks, the
/// size object stores serve at full rate (and object_store's own limit for
/// merging neighbouring ranges). Larger runs would also delay the first
/// block of a run behind the transfer of the rest.
pub const STREAM_RUN_BLOCKS: usize = 16;

/// Cuts `blocks` (in the order streaming asks for them) into runs of
/// consecutive block indices, at most `max` long, keeping the order.
pub fn runs_of_blocks(blocks: &[u32], max: usize) -> Vec<Vec<u32>> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    for &b in blocks {
        match runs.last_mut() {
            Some(run) if run.len() < max.max(1) && run.last().map(|&l| l + 1) == Some(b) => {
                run.push(b)
            }
            _ => runs.push(vec![b]),
        }
    }
    runs
}

/// `source`'s stored bytes for `block`, asked at the flight's priority; if
/// the flight is raised to demand meanwhile and the source orders answers
/// by priority, asked again at demand and the first answer taken (see the
/// module's "Raised while under way").
async fn fetch_hedged(
    source: &dyn BlockSource,
    checkpoint: &CheckpointId,
    block: u32,
    fp: &FlightPriority,
) -> Result<Bytes, crate::source::SourceError> {
    let asked = fp.get();
    let first = source.fetch_stored(checkpoint, block, asked);
    if asked == Priority::Demand || !source.orders_by_priority() {
        return first.await;
    }
    tokio::pin!(first);
    loop {
        let raised = fp.raised();
        tokio::pin!(raised);
        raised.as_mut().enable();
        if fp.get() == Priority::Demand {
            break;
        }
        tokio::select! {
            answer = &mut first => return answer,
            _ = &mut raised => {}
        }
    }
    tracing::debug!(block, "raised to demand while under way: asking again");
    let again = source.fetch_stored(checkpoint, block, Priority::Demand);
    tokio::pin!(again);
    tokio::select! {
        answer = &mut first => answer,
        answer = &mut again => answer,
    }
}

/// A checkpoint being served: its manifest and where its blocks come from.
pub struct Checkpoint {
    pub id: CheckpointId,
    pub manifest: Arc<Manifest>,
    /// Decrypts its blocks when it is encrypted (the agent's tenant key).
    pub opener: BlockOpener,
    /// Tried in order; the first that delivers a block with the right hash wins.
    pub sources: Vec<Arc<dyn BlockSource>>,
}

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// How long one source may take for one block before the next is
    /// tried, and before a source silent that long is taken out of use:
    /// the floor of each source's timeout, which grows with the latency
    /// the source is observed to have (see [`crate::source::health`]).
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
    monitor: Arc<SourceMonitor>,
}

/// How asking one source for something ended.
enum Asked<T> {
    Got(T),
    Failed(FailureReason),
}

impl Fetcher {
    pub fn new(cache: Arc<BlockCache>, config: FetchConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Fetcher {
            prefetch: Semaphore::new(config.prefetch_slots.max(1)),
            stream: Semaphore::new(config.stream_slots.max(1)),
            monitor: SourceMonitor::new(config.source_timeout, metrics.clone()),
            cache,
            config,
            metrics,
        })
    }

    /// The sources' health.
    pub fn monitor(&self) -> &Arc<SourceMonitor> {
        &self.monitor
    }

    /// Waits for `source`'s answer to `asked` at most the source's timeout,
    /// and only while the source is up (if it was when asked); tells the
    /// monitor what happened.
    async fn ask<T>(
        &self,
        source: &Arc<dyn BlockSource>,
        tracked: &Arc<Tracked>,
        target: ProbeTarget,
        asked: impl std::future::Future<Output = Result<T, SourceError>>,
    ) -> Asked<T> {
        let timeout = tracked.timeout();
        let watch_down = tracked.is_up();
        let started = Instant::now();
        let went_down = tracked.went_down();
        tokio::pin!(went_down);
        tokio::select! {
            biased;
            answer = asked => match answer {
                Ok(v) => {
                    self.monitor.answered(&**source, tracked, started.elapsed());
                    Asked::Got(v)
                }
                Err(e) => {
                    self.monitor.failed(source, tracked, &e, target);
                    Asked::Failed(FailureReason::Failed(e.reason()))
                }
            },
            _ = tokio::time::sleep(timeout) => {
                let verdict = self.monitor.timed_out(source, tracked, started, target);
                tracing::warn!(
                    source = source.name(),
                    "no answer within {timeout:?} ({}), trying the next source",
                    match verdict {
                        TimeoutVerdict::Slow => "slow: it answers others",
                        TimeoutVerdict::WentDown => "silent: now down",
                        TimeoutVerdict::StillDown => "down",
                    }
                );
                Asked::Failed(FailureReason::TimedOut(timeout))
            }
            _ = &mut went_down, if watch_down => {
                tracing::debug!(source = source.name(), "source went down: asking the next one");
                Asked::Failed(FailureReason::WentDown)
            }
        }
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
        let hash = checkpoint
            .opener
            .cache_key(&checkpoint.manifest.blocks[block as usize]);
        match self.cache.join(&hash, priority) {
            Join::Ready(data) => Request::Ready(data),
            Join::Follow(follow) => Self::follow(follow, block),
            Join::Lead(lead) => self.lead(checkpoint, block, lead, restore),
        }
    }

    /// Whether streaming should read neighbouring blocks of `checkpoint` in
    /// runs: when its first source pays per request.
    pub fn runs_pay_off(checkpoint: &Checkpoint) -> bool {
        checkpoint.sources.first().is_some_and(|s| s.prefers_runs())
    }

    /// Streaming requests for `blocks` (consecutive, see [`runs_of_blocks`]):
    /// those cached or already in flight are answered as by
    /// [`Fetcher::request`]; the rest are read together, one source call for
    /// all of them, and each completes when the run does.
    pub fn request_run(
        self: &Arc<Self>,
        checkpoint: &Arc<Checkpoint>,
        blocks: &[u32],
        restore: Arc<Counters>,
    ) -> Vec<(u32, Request)> {
        let mut out = Vec::with_capacity(blocks.len());
        let mut leads = Vec::new();
        for &block in blocks {
            let hash = checkpoint.manifest.blocks[block as usize].hash;
            match self.cache.join(&hash, Priority::Stream) {
                Join::Ready(data) => out.push((block, Request::Ready(data))),
                Join::Follow(follow) => out.push((block, Self::follow(follow, block))),
                Join::Lead(lead) => leads.push((block, lead)),
            }
        }
        if leads.len() <= 1 {
            for (block, lead) in leads {
                out.push((block, self.lead(checkpoint, block, lead, restore.clone())));
            }
            return out;
        }
        let run_blocks: Vec<u32> = leads.iter().map(|(b, _)| *b).collect();
        let priorities: Vec<Arc<FlightPriority>> =
            leads.iter().map(|(_, l)| l.priority().clone()).collect();
        let run = {
            let this = self.clone();
            let checkpoint = checkpoint.clone();
            let priorities = priorities.clone();
            let run_blocks = run_blocks.clone();
            async move {
                let permit = this.admit_run(&priorities).await;
                let started = Instant::now();
                let results = this
                    .fetch_verified_run(&checkpoint, &run_blocks, &restore)
                    .await;
                let latency = started.elapsed();
                drop(permit);
                let mut shared = Vec::with_capacity(results.len());
                for ((_, lead), result) in leads.into_iter().zip(results) {
                    lead.complete(result.clone().map_err(|e| FlightError(e.to_string())));
                    shared.push(result);
                }
                Arc::new((shared, latency))
            }
            .boxed()
            .shared()
        };
        for (i, (block, priority)) in run_blocks.into_iter().zip(priorities).enumerate() {
            let run = run.clone();
            let id = checkpoint.id.clone();
            out.push((
                block,
                Request::Pending(PendingFetch {
                    priority,
                    done: Box::pin(async move {
                        let done = run.await;
                        match &done.0[i] {
                            Ok(data) => Ok(Fetched {
                                data: data.clone(),
                                source_latency: Some(done.1),
                            }),
                            Err(errors) => Err(FetchError::AllSourcesFailed {
                                checkpoint: id,
                                block,
                                errors: errors.clone(),
                            }),
                        }
                    }),
                }),
            ));
        }
        out
    }

    fn follow(follow: crate::cache::Follow, block: u32) -> Request {
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

    fn lead(
        self: &Arc<Self>,
        checkpoint: &Arc<Checkpoint>,
        block: u32,
        lead: crate::cache::Lead,
        restore: Arc<Counters>,
    ) -> Request {
        let fp = lead.priority().clone();
        let this = self.clone();
        let checkpoint = checkpoint.clone();
        Request::Pending(PendingFetch {
            priority: fp.clone(),
            done: Box::pin(async move {
                let permit = this.admit(&fp).await;
                let started = Instant::now();
                let result = this.fetch_verified(&checkpoint, block, &fp, &restore).await;
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

    /// Slots for a run of streaming fetches, one per block; none once any of
    /// them is raised (a fault now waits for it).
    async fn admit_run(&self, priorities: &[Arc<FlightPriority>]) -> Option<SemaphorePermit<'_>> {
        let wanted = priorities.len().min(self.config.stream_slots.max(1)) as u32;
        loop {
            let mut raised: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> =
                priorities.iter().map(|p| Box::pin(p.raised())).collect();
            for r in &mut raised {
                r.as_mut().enable();
            }
            if priorities.iter().any(|p| p.get() != Priority::Stream) {
                return None;
            }
            tokio::select! {
                permit = self.stream.acquire_many(wanted) => return permit.ok(),
                _ = futures::future::select_all(raised) => continue,
            }
        }
    }

    /// [`Fetcher::fetch_verified`] for a run: each source is asked for the
    /// blocks no earlier source delivered good bytes for, in one call.
    /// Returns, per block, its bytes or every source's reason.
    async fn fetch_verified_run(
        &self,
        checkpoint: &Checkpoint,
        blocks: &[u32],
        restore: &Counters,
    ) -> Vec<Result<Bytes, SourceFailures>> {
        let mut results: Vec<Option<Bytes>> = vec![None; blocks.len()];
        let mut errors: Vec<SourceFailures> = vec![SourceFailures::default(); blocks.len()];
        let mut todo: Vec<usize> = (0..blocks.len()).collect();
        let order = self
            .monitor
            .order(&checkpoint.sources, &checkpoint.manifest, blocks[0]);
        for (source, tracked) in order {
            if todo.is_empty() {
                break;
            }
            let asked: Vec<u32> = todo.iter().map(|&i| blocks[i]).collect();
            let target = ProbeTarget {
                checkpoint: checkpoint.id.clone(),
                block: asked[0],
            };
            let fetched = self
                .ask(
                    &source,
                    &tracked,
                    target,
                    source.fetch_stored_run(&checkpoint.id, &asked, Priority::Stream),
                )
                .await;
            let failure = match fetched {
                Asked::Got(stored) if stored.len() == asked.len() => {
                    let mut left = Vec::new();
                    for (&i, bytes) in todo.iter().zip(stored) {
                        match self.accept(
                            checkpoint,
                            blocks[i],
                            &*source,
                            &bytes,
                            Priority::Stream,
                            restore,
                        ) {
                            Ok(data) => results[i] = Some(data),
                            Err(e) => {
                                errors[i].push(&*source, e);
                                left.push(i);
                            }
                        }
                    }
                    todo = left;
                    continue;
                }
                Asked::Got(stored) => FailureReason::ShortRun {
                    asked: asked.len(),
                    returned: stored.len(),
                },
                Asked::Failed(reason) => reason,
            };
            tracing::warn!(
                blocks = asked.len(),
                source = source.name(),
                "run fetch failed, trying the next source: {failure}"
            );
            self.metrics.counters.count_source_error();
            restore.count_source_error();
            for &i in &todo {
                errors[i].push(&*source, failure.clone());
            }
        }
        results
            .into_iter()
            .zip(errors)
            .map(|(r, e)| r.ok_or(e))
            .collect()
    }

    /// Decodes a source's stored bytes and checks them against the
    /// manifest's hash; counts them. The reason if they are refused.
    fn accept(
        &self,
        checkpoint: &Checkpoint,
        block: u32,
        source: &dyn BlockSource,
        stored: &Bytes,
        priority: Priority,
        restore: &Counters,
    ) -> Result<Bytes, FailureReason> {
        let entry = &checkpoint.manifest.blocks[block as usize];
        let mut data = vec![0u8; entry.raw_len as usize];
        match decode_block_into(&checkpoint.opener, entry, stored, &mut data) {
            Ok(()) => {
                for c in [&self.metrics.counters, restore] {
                    c.fetched(source.kind(), priority, stored.len() as u64);
                }
                Ok(Bytes::from(data))
            }
            Err(e) => {
                tracing::error!(
                    block,
                    source = source.name(),
                    "block refused, trying the next source: {e}"
                );
                self.metrics.counters.count_bad_block();
                restore.count_bad_block();
                Err(FailureReason::BadBytes(e.to_string()))
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

    /// Tries each source (those up first, in order; see
    /// [`SourceMonitor::order`]) until one delivers bytes that decode to
    /// the manifest's hash. Bad bytes are counted and never returned.
    async fn fetch_verified(
        &self,
        checkpoint: &Checkpoint,
        block: u32,
        fp: &FlightPriority,
        restore: &Counters,
    ) -> Result<Bytes, FetchError> {
        let mut errors = SourceFailures::default();
        let order = self
            .monitor
            .order(&checkpoint.sources, &checkpoint.manifest, block);
        for (source, tracked) in order {
            let priority = fp.get();
            let target = ProbeTarget {
                checkpoint: checkpoint.id.clone(),
                block,
            };
            let fetched = self
                .ask(
                    &source,
                    &tracked,
                    target,
                    fetch_hedged(&*source, &checkpoint.id, block, fp),
                )
                .await;
            let stored = match fetched {
                Asked::Got(stored) => stored,
                Asked::Failed(reason) => {
                    tracing::debug!(block, source = source.name(), "fetch failed: {reason}");
                    self.metrics.counters.count_source_error();
                    restore.count_source_error();
                    errors.push(&*source, reason);
                    continue;
                }
            };
            match self.accept(checkpoint, block, &*source, &stored, priority, restore) {
                Ok(data) => return Ok(data),
                Err(e) => errors.push(&*source, e),
            }
        }
        Err(FetchError::AllSourcesFailed {
            checkpoint: checkpoint.id.clone(),
            block,
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::runs_of_blocks;

    #[test]
    fn runs_are_consecutive_blocks_in_order_and_bounded() {
        assert_eq!(
            runs_of_blocks(&[4, 5, 6, 9, 10, 3, 4, 5, 6, 7], 3),
            vec![vec![4, 5, 6], vec![9, 10], vec![3, 4, 5], vec![6, 7]]
        );
        assert_eq!(runs_of_blocks(&[], 16), Vec::<Vec<u32>>::new());
        assert_eq!(
            runs_of_blocks(&[2, 1, 0], 16),
            vec![vec![2], vec![1], vec![0]]
        );
        // A bound of 0 means single blocks, never an empty run.
        assert_eq!(runs_of_blocks(&[1, 2], 0), vec![vec![1], vec![2]]);
    }
}
