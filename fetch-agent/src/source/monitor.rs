//! Keeps every source's [`SourceHealth`] for the fetcher: tells fetches in
//! flight to a source that it went down (so they go elsewhere at once, not
//! each after its own timeout), and probes a down source in the background
//! until it answers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thaw_format::{CheckpointId, Manifest};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::policy::Priority;
use crate::source::health::{HealthConfig, SourceHealth, TimeoutVerdict};
use crate::source::{BlockSource, SourceError};

/// One source's health and the signal fetches in flight to it watch.
pub struct Tracked {
    health: Mutex<SourceHealth>,
    /// `true` while up.
    up: watch::Sender<bool>,
}

impl Tracked {
    fn lock(&self) -> std::sync::MutexGuard<'_, SourceHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_up(&self) -> bool {
        self.lock().is_up()
    }

    pub fn timeout(&self) -> Duration {
        self.lock().timeout()
    }

    /// Resolves once the source is down (at once if it is).
    pub async fn went_down(&self) {
        let mut rx = self.up.subscribe();
        let _ = rx.wait_for(|up| !*up).await;
    }
}

/// A block a probe may ask for: any block of a checkpoint the source serves.
#[derive(Clone)]
pub struct ProbeTarget {
    pub checkpoint: CheckpointId,
    pub block: u32,
}

/// Every source's health, by source name.
pub struct SourceMonitor {
    base_timeout: Duration,
    sources: Mutex<HashMap<String, Arc<Tracked>>>,
    metrics: Arc<Metrics>,
}

impl SourceMonitor {
    pub fn new(base_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(SourceMonitor {
            base_timeout,
            sources: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The health of `source`, tracked from its first use.
    pub fn tracked(&self, source: &dyn BlockSource) -> Arc<Tracked> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources
            .entry(source.name().to_owned())
            .or_insert_with(|| {
                Arc::new(Tracked {
                    health: Mutex::new(SourceHealth::new(HealthConfig::from_base(
                        self.base_timeout,
                    ))),
                    up: watch::Sender::new(true),
                })
            })
            .clone()
    }

    /// `sources` in the order a fetch of `block` should try them: those up
    /// in their given order (a tier's members in its order for the block),
    /// then those down (tried only when every other failed). So a block
    /// whose home is down goes to its second choice, and comes home again
    /// when the home does.
    pub fn order(
        &self,
        sources: &[Arc<dyn BlockSource>],
        manifest: &Manifest,
        block: u32,
    ) -> Vec<(Arc<dyn BlockSource>, Arc<Tracked>)> {
        let all: Vec<_> = sources
            .iter()
            .flat_map(|s| {
                s.ranked_members(manifest, block)
                    .unwrap_or_else(|| vec![s.clone()])
            })
            .map(|s| {
                let tracked = self.tracked(&*s);
                (s, tracked)
            })
            .collect();
        let (up, down): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, t)| t.is_up());
        up.into_iter().chain(down).collect()
    }

    /// Whether `source` is up.
    pub fn is_up(&self, source: &dyn BlockSource) -> bool {
        self.tracked(source).is_up()
    }

    pub fn answered(&self, source: &dyn BlockSource, tracked: &Tracked, latency: Duration) {
        let back = tracked.lock().answered(Instant::now(), latency);
        if back {
            self.came_back(source, tracked);
        }
    }

    /// A fetch's error: an unreachable source goes down, any other error
    /// is an answer.
    pub fn failed(
        self: &Arc<Self>,
        source: &Arc<dyn BlockSource>,
        tracked: &Arc<Tracked>,
        error: &SourceError,
        target: ProbeTarget,
    ) {
        if error.is_unreachable() {
            let down = tracked.lock().unreachable(Instant::now());
            if down {
                self.went_down(source, tracked, target, &error.to_string());
            }
        } else if tracked.lock().refused(Instant::now()) {
            self.came_back(&**source, tracked);
        }
    }

    /// A fetch sent at `asked_at` waited its timeout: what that means for
    /// its source.
    pub fn timed_out(
        self: &Arc<Self>,
        source: &Arc<dyn BlockSource>,
        tracked: &Arc<Tracked>,
        asked_at: Instant,
        target: ProbeTarget,
    ) -> TimeoutVerdict {
        let verdict = tracked.lock().timed_out(Instant::now(), asked_at);
        if verdict == TimeoutVerdict::WentDown {
            let reason = format!("nothing answered for {:?}", asked_at.elapsed());
            self.went_down(source, tracked, target, &reason);
        }
        verdict
    }

    fn went_down(
        self: &Arc<Self>,
        source: &Arc<dyn BlockSource>,
        tracked: &Arc<Tracked>,
        target: ProbeTarget,
        reason: &str,
    ) {
        tracing::warn!(
            source = source.name(),
            "source down ({reason}): skipped by new fetches, fetches in flight go elsewhere, \
             probing it in the background"
        );
        self.metrics.sources_down.fetch_add(1, Ordering::Relaxed);
        tracked.up.send_replace(false);
        // Its connection may be dead without QUIC knowing yet: the probe
        // starts a new one.
        source.reset();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let this = self.clone();
                let source = source.clone();
                let tracked = tracked.clone();
                rt.spawn(async move { this.probe(source, tracked, target).await });
            }
            Err(_) => tracing::warn!(
                source = source.name(),
                "no runtime to probe on: tried again only after every other source fails"
            ),
        }
    }

    fn came_back(&self, source: &dyn BlockSource, tracked: &Tracked) {
        tracing::info!(source = source.name(), "source answers again: back in use");
        self.metrics
            .sources_recovered
            .fetch_add(1, Ordering::Relaxed);
        tracked.up.send_replace(true);
    }

    /// Asks the source for `target` until it answers (or something else
    /// brings it back up).
    async fn probe(
        &self,
        source: Arc<dyn BlockSource>,
        tracked: Arc<Tracked>,
        target: ProbeTarget,
    ) {
        loop {
            let (delay, timeout) = {
                let h = tracked.lock();
                if h.is_up() {
                    return;
                }
                (h.probe_delay(), h.probe_timeout())
            };
            tokio::time::sleep(delay).await;
            if tracked.is_up() {
                return;
            }
            source.reset();
            let started = Instant::now();
            let asked = source.fetch_stored(&target.checkpoint, target.block, Priority::Demand);
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok(_)) => {
                    self.answered(&*source, &tracked, started.elapsed());
                    return;
                }
                Ok(Err(e)) if !e.is_unreachable() => {
                    if tracked.lock().refused(Instant::now()) {
                        self.came_back(&*source, &tracked);
                    }
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(source = source.name(), "probe failed: {e}");
                    tracked.lock().probe_failed();
                }
                Err(_) => {
                    tracing::debug!(source = source.name(), "probe timed out after {timeout:?}");
                    tracked.lock().probe_failed();
                }
            }
        }
    }
}
