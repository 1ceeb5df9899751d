//! A fault that joins a streaming fetch already asked of a source raises it
//! to demand: the fetcher asks that source again at demand priority, so a
//! source that answers in priority order (a block server) answers the fault
//! ahead of every streaming request still queued.
//!
//! The source here answers strictly in priority order, one answer at a
//! time, and only once every request it expects has arrived, so the order
//! is exact. Over real QUIC the same holds only for answers the server has
//! not yet put on the wire, which depends on its congestion window: a test
//! of that ordering would measure the machine, not the fetcher.

mod common;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fetch_agent::cache::BlockCache;
use fetch_agent::fetch::{Checkpoint, FetchConfig, Fetcher, Request};
use fetch_agent::metrics::{Counters, Metrics, SourceKind};
use fetch_agent::policy::Priority;
use fetch_agent::source::{BlockSource, ObjectStoreSource, SourceError};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use thaw_format::CheckpointId;
use thaw_store::reader::open_manifest;
use thaw_store::Store;
use tokio::sync::{oneshot, Notify};

/// Streaming fetches answered before the fault joins.
const JOIN_AFTER: usize = 32;

/// Answers requests one at a time, highest priority first (first asked
/// first among equals), with the stored bytes read beforehand. The next
/// answer goes out only once the last one was taken (the test says so) and
/// as many requests have arrived as it expects.
struct PriorityOrderedSource {
    inner: ObjectStoreSource,
    stored: HashMap<u32, Bytes>,
    state: Mutex<Queue>,
    changed: Notify,
}

#[derive(Default)]
struct Queue {
    expected: usize,
    arrived: usize,
    waiting: Vec<(Priority, usize, oneshot::Sender<()>)>,
    /// Blocks of the streaming requests, in the order they arrived: tokio's
    /// cooperative budget can hold a first poll back, so this is not always
    /// the order the fetches were made in.
    streamed: Vec<u32>,
    /// An answer went out that the test has not taken yet.
    unconsumed: bool,
}

impl PriorityOrderedSource {
    fn update(&self, f: impl FnOnce(&mut Queue)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_one();
    }

    /// Lets `answers` queued requests go, one at a time, in priority order.
    async fn serve(&self, answers: usize) {
        for _ in 0..answers {
            loop {
                let notified = self.changed.notified();
                {
                    let mut q = self.state.lock().unwrap();
                    if !q.unconsumed && q.arrived >= q.expected && !q.waiting.is_empty() {
                        let best = (0..q.waiting.len())
                            .max_by_key(|&i| (q.waiting[i].0, Reverse(q.waiting[i].1)))
                            .expect("not empty");
                        // A request whose asker gave up (the streaming ask
                        // of a block answered at demand) is not taken.
                        q.unconsumed = q.waiting.remove(best).2.send(()).is_ok();
                        break;
                    }
                }
                notified.await;
            }
        }
    }
}

impl BlockSource for PriorityOrderedSource {
    fn name(&self) -> &str {
        "priority-ordered test source"
    }

    fn kind(&self) -> SourceKind {
        SourceKind::BlockServer
    }

    fn fetch_stored<'a>(
        &'a self,
        _checkpoint: &'a CheckpointId,
        block: u32,
        priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        let (tx, rx) = oneshot::channel();
        self.update(|q| {
            q.waiting.push((priority, q.arrived, tx));
            if priority == Priority::Stream {
                q.streamed.push(block);
            }
            q.arrived += 1;
        });
        Box::pin(async move {
            rx.await
                .map_err(|_| SourceError::new("test source", "dropped"))?;
            Ok(self.stored[&block].clone())
        })
    }

    fn orders_by_priority(&self) -> bool {
        true
    }

    fn manifest_object<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        self.inner.manifest_object(checkpoint)
    }
}

#[test]
fn a_fault_joining_a_streaming_fetch_is_answered_ahead_of_the_stream() {
    let fx = common::checkpoint_of(common::incompressible(8 << 20));
    let rt = common::runtime();
    rt.block_on(async {
        let inner = ObjectStoreSource::new(Store::open(&fx.store_spec).unwrap());
        let object = inner.manifest_object(&fx.id).await.unwrap();
        let manifest = Arc::new(
            open_manifest(&fx.id, &object, &common::trust())
                .unwrap()
                .manifest,
        );
        let blocks = manifest.blocks.len();
        assert!(blocks > 2 * JOIN_AFTER, "{blocks} blocks");
        let mut stored = HashMap::new();
        for b in 0..blocks as u32 {
            stored.insert(
                b,
                inner
                    .fetch_stored(&fx.id, b, Priority::Demand)
                    .await
                    .unwrap(),
            );
        }
        let source = Arc::new(PriorityOrderedSource {
            inner,
            stored,
            state: Mutex::new(Queue::default()),
            changed: Notify::new(),
        });
        let last = blocks as u32 - 1;
        let checkpoint = Arc::new(Checkpoint {
            id: fx.id.clone(),
            manifest,
            opener: thaw_format::BlockOpener::Plain,
            sources: vec![source.clone() as Arc<dyn BlockSource>],
        });
        // Every streaming fetch under way at once: none waits for a slot
        // (a raise skips that wait, which is not what is tested here).
        let fetcher = Fetcher::new(
            BlockCache::new(64 << 20),
            FetchConfig {
                stream_slots: 4096,
                ..FetchConfig::default()
            },
            Arc::new(Metrics::default()),
        );
        let restore = Arc::new(Counters::default());
        let mut fetches = FuturesUnordered::new();
        for b in 0..blocks as u32 {
            let Request::Pending(p) =
                fetcher.request(&checkpoint, b, Priority::Stream, restore.clone())
            else {
                panic!("block {b} cached already")
            };
            fetches.push(async move { p.done.await.map(|_| b) });
        }
        source.update(|q| q.expected = blocks);
        // Every streaming answer, plus the demand one asked again.
        let serving = tokio::spawn({
            let source = source.clone();
            async move { source.serve(blocks + 1).await }
        });
        let mut order = Vec::new();
        let mut joined = None;
        // Without the demand request asked again, the source would wait for
        // it forever: bounded, that is a failure, not a hang.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while let Some(done) = tokio::time::timeout_at(deadline, fetches.next())
            .await
            .unwrap_or_else(|_| panic!("stuck after {} answers: no demand request", order.len()))
        {
            order.push(done.unwrap());
            if order.len() == JOIN_AFTER {
                // The fault joins the last block's flight, already asked
                // of the source; the source waits for the demand request.
                source.update(|q| q.expected = blocks + 1);
                let Request::Pending(p) =
                    fetcher.request(&checkpoint, last, Priority::Demand, restore.clone())
                else {
                    panic!("block {last} arrived before the fault")
                };
                joined = Some(p);
            }
            source.update(|q| q.unconsumed = false);
        }
        serving.await.unwrap();
        assert!(joined.is_some());
        // Before the fault, blocks in the order the source was asked; the
        // joined block next, ahead of the blocks asked before it; then the
        // rest in the order asked.
        let q = source.state.lock().unwrap();
        assert_eq!((q.arrived, q.streamed.len()), (blocks + 1, blocks));
        let mut expected = q.streamed[..JOIN_AFTER].to_vec();
        assert!(!expected.contains(&last), "{expected:?}");
        expected.push(last);
        expected.extend(q.streamed[JOIN_AFTER..].iter().filter(|&&b| b != last));
        assert_eq!(order, expected);
    });
}
