//! The fetcher with a source that stops answering (its requests hang, as
//! to a killed or cut-off server): fetches in flight to it move to the next
//! source after one timeout, not each after its own; new fetches skip it; a
//! probe brings it back once it answers; and a block no source delivers
//! fails with every source's reason.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fetch_agent::cache::BlockCache;
use fetch_agent::fetch::{
    Checkpoint, FailureReason, FetchConfig, FetchError, Fetched, Fetcher, Request,
};
use fetch_agent::metrics::{Counters, Metrics, SourceKind};
use fetch_agent::policy::Priority;
use fetch_agent::source::{BlockSource, ObjectStoreSource, SourceError};
use futures::future::BoxFuture;
use thaw_format::{CheckpointId, Manifest};
use thaw_store::Store;

const TIMEOUT: Duration = Duration::from_millis(300);

/// The store's blocks, or no answer at all while `silent`.
struct Switchable {
    name: &'static str,
    inner: ObjectStoreSource,
    silent: AtomicBool,
    /// Requests it answered.
    answered: AtomicUsize,
}

impl BlockSource for Switchable {
    fn name(&self) -> &str {
        self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::BlockServer
    }

    fn fetch_stored<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        block: u32,
        priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async move {
            if self.silent.load(Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            let r = self.inner.fetch_stored(checkpoint, block, priority).await;
            self.answered.fetch_add(1, Ordering::SeqCst);
            r
        })
    }

    fn manifest_object<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        self.inner.manifest_object(checkpoint)
    }
}

/// Refuses every block.
struct Refusing;

impl BlockSource for Refusing {
    fn name(&self) -> &str {
        "refusing"
    }

    fn kind(&self) -> SourceKind {
        SourceKind::ObjectStore
    }

    fn fetch_stored<'a>(
        &'a self,
        _checkpoint: &'a CheckpointId,
        block: u32,
        _priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async move { Err(SourceError::new("refusing", format!("no block {block}"))) })
    }

    fn manifest_object<'a>(
        &'a self,
        _checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async { Err(SourceError::new("refusing", "no manifest")) })
    }
}

struct Setup {
    flaky: Arc<Switchable>,
    store: Arc<ObjectStoreSource>,
    manifest: Arc<Manifest>,
    id: CheckpointId,
    fetcher: Arc<Fetcher>,
}

/// Made outside any runtime (it runs one of its own).
fn fixture() -> common::Fixture {
    common::checkpoint_of(common::incompressible(8 << 20))
}

async fn setup(fx: &common::Fixture) -> Setup {
    let open = || ObjectStoreSource::new(Store::open(&fx.store_spec).unwrap());
    let flaky = Arc::new(Switchable {
        name: "flaky",
        inner: open(),
        silent: AtomicBool::new(false),
        answered: AtomicUsize::new(0),
    });
    let store = Arc::new(open());
    let object = store.manifest_object(&fx.id).await.unwrap();
    let manifest = Arc::new(
        thaw_store::reader::open_manifest(&fx.id, &object, &common::trust())
            .unwrap()
            .manifest,
    );
    let fetcher = Fetcher::new(
        BlockCache::new(64 << 20),
        FetchConfig {
            source_timeout: TIMEOUT,
            ..FetchConfig::default()
        },
        Arc::new(Metrics::default()),
    );
    Setup {
        id: fx.id.clone(),
        flaky,
        store,
        manifest,
        fetcher,
    }
}

impl Setup {
    fn checkpoint(&self, sources: Vec<Arc<dyn BlockSource>>) -> Arc<Checkpoint> {
        Arc::new(Checkpoint {
            id: self.id.clone(),
            manifest: self.manifest.clone(),
            opener: thaw_format::BlockOpener::Plain,
            sources,
        })
    }

    /// Demand fetches of `blocks`, all at once; their results in order.
    async fn fetch(
        &self,
        checkpoint: &Arc<Checkpoint>,
        blocks: std::ops::Range<u32>,
    ) -> Vec<Result<Fetched, FetchError>> {
        let restore = Arc::new(Counters::default());
        let pending: Vec<_> = blocks
            .map(|b| {
                match self
                    .fetcher
                    .request(checkpoint, b, Priority::Demand, restore.clone())
                {
                    Request::Pending(p) => p.done,
                    Request::Ready(_) => panic!("block {b} cached already"),
                }
            })
            .collect();
        futures::future::join_all(pending).await
    }
}

#[test]
fn a_silent_source_costs_one_timeout_then_is_skipped_and_probed_back() {
    let fx = fixture();
    let rt = common::runtime();
    rt.block_on(async {
        let s = setup(&fx).await;
        let cp = s.checkpoint(vec![
            s.flaky.clone() as Arc<dyn BlockSource>,
            s.store.clone(),
        ]);
        assert!(s.manifest.blocks.len() >= 64);

        // Answering: everything comes from the first source.
        for r in s.fetch(&cp, 0..8).await {
            r.unwrap();
        }
        assert_eq!(s.flaky.answered.load(Ordering::SeqCst), 8);

        // Silent with 16 fetches in flight to it: they all move on after
        // about one timeout, not one each in turn.
        s.flaky.silent.store(true, Ordering::SeqCst);
        let started = Instant::now();
        for r in s.fetch(&cp, 8..24).await {
            r.unwrap();
        }
        let took = started.elapsed();
        assert!(took >= TIMEOUT, "moved on before the timeout: {took:?}");
        assert!(took < TIMEOUT * 3, "16 fetches took {took:?}");
        assert!(!s.fetcher.monitor().is_up(&*s.flaky));

        // Down: new fetches go straight to the store.
        let started = Instant::now();
        for r in s.fetch(&cp, 24..40).await {
            r.unwrap();
        }
        let took = started.elapsed();
        assert!(took < TIMEOUT, "a down source was waited for: {took:?}");

        // It answers again: a probe brings it back, and it serves again.
        s.flaky.silent.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.fetcher.monitor().is_up(&*s.flaky) {
            assert!(Instant::now() < deadline, "no probe brought it back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = s.flaky.answered.load(Ordering::SeqCst);
        for r in s.fetch(&cp, 40..48).await {
            r.unwrap();
        }
        assert_eq!(s.flaky.answered.load(Ordering::SeqCst), before + 8);
    });
}

#[test]
fn a_block_no_source_delivers_fails_with_every_sources_reason() {
    let fx = fixture();
    let rt = common::runtime();
    rt.block_on(async {
        let s = setup(&fx).await;
        s.flaky.silent.store(true, Ordering::SeqCst);
        let cp = s.checkpoint(vec![
            s.flaky.clone() as Arc<dyn BlockSource>,
            Arc::new(Refusing),
        ]);
        let mut results = s.fetch(&cp, 3..4).await;
        let Err(FetchError::AllSourcesFailed {
            block,
            errors,
            checkpoint,
        }) = results.remove(0)
        else {
            panic!("fetched from no source")
        };
        assert_eq!(block, 3);
        assert_eq!(checkpoint, s.id);
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert_eq!(errors.0[0].source, "flaky");
        assert_eq!(errors.0[0].reason, FailureReason::TimedOut(TIMEOUT));
        assert_eq!(errors.0[1].source, "refusing");
        assert_eq!(
            errors.0[1].reason,
            FailureReason::Failed("no block 3".into())
        );
        let text = errors.to_string();
        assert!(
            text.contains("flaky: no answer within 300ms") && text.contains("refusing: no block 3"),
            "{text}"
        );
        // Both are still tried, the down one last: a later block fails the same way.
        let mut results = s.fetch(&cp, 4..5).await;
        let Err(FetchError::AllSourcesFailed { errors, .. }) = results.remove(0) else {
            panic!("fetched from no source")
        };
        let names: Vec<_> = errors.0.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(names, ["refusing", "flaky"]);
    });
}
