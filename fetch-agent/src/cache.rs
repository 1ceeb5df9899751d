//! The host-local block cache: decoded, verified block bytes keyed by the
//! block's BLAKE3 hash, bounded in bytes (least recently used out first),
//! shared by every restore in the agent process. VMs restored from the same
//! checkpoint (or from checkpoints sharing blocks) fetch each block once.
//!
//! Decoded bytes are kept, not stored ones, so a cached fault is a lookup and
//! a `UFFDIO_COPY`. Concurrent requests for one block share one fetch
//! (single flight): the first becomes the leader, the others follow and get
//! its result. A follower that is more urgent than the leader raises the
//! flight's priority, so a demand fault never waits behind another VM's
//! prefetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::policy::Priority;

/// A block's BLAKE3 hash (of its decoded bytes).
pub type BlockHash = [u8; 32];

/// The priority of a flight, raised by whoever needs it sooner.
#[derive(Debug)]
pub struct FlightPriority {
    priority: AtomicU8,
    raised: Notify,
}

impl FlightPriority {
    pub fn new(p: Priority) -> Self {
        FlightPriority {
            priority: AtomicU8::new(p as u8),
            raised: Notify::new(),
        }
    }

    pub fn get(&self) -> Priority {
        match self.priority.load(Ordering::Acquire) {
            0 => Priority::Stream,
            1 => Priority::Prefetch,
            _ => Priority::Demand,
        }
    }

    /// Raises the priority to at least `p` and wakes a leader waiting for
    /// admission.
    pub fn raise(&self, p: Priority) {
        let old = self.priority.fetch_max(p as u8, Ordering::AcqRel);
        if old < p as u8 {
            self.raised.notify_waiters();
        }
    }

    /// Resolves when the priority is raised after this call began (create
    /// the future, `enable` it, then check [`FlightPriority::get`]).
    pub fn raised(&self) -> tokio::sync::futures::Notified<'_> {
        self.raised.notified()
    }
}

/// Why a flight ended without bytes, as its followers see it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FlightError(pub String);

type FlightResult = Result<Bytes, FlightError>;

struct Flight {
    priority: Arc<FlightPriority>,
    followers: Vec<oneshot::Sender<FlightResult>>,
}

struct Entry {
    data: Bytes,
    tick: u64,
}

struct Inner {
    entries: HashMap<BlockHash, Entry>,
    /// Last-use tick to hash: the first key is the least recently used.
    lru: BTreeMap<u64, BlockHash>,
    tick: u64,
    bytes: u64,
    flights: HashMap<BlockHash, Flight>,
}

/// Counters of the cache, for metrics.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Requests that joined another's fetch.
    pub shared: AtomicU64,
    pub evictions: AtomicU64,
}

pub struct BlockCache {
    capacity: u64,
    inner: Mutex<Inner>,
    counters: CacheCounters,
}

/// What a request for a block finds.
pub enum Join {
    /// The bytes are cached.
    Ready(Bytes),
    /// Nobody fetches it: this request must, and complete the flight.
    Lead(Lead),
    /// Another request fetches it: wait for its result.
    Follow(Follow),
}

impl BlockCache {
    pub fn new(capacity_bytes: u64) -> Arc<Self> {
        Arc::new(BlockCache {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                lru: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                flights: HashMap::new(),
            }),
            counters: CacheCounters::default(),
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every
        // update is a few infallible steps), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held and number of blocks.
    pub fn usage(&self) -> (u64, usize) {
        let inner = self.lock();
        (inner.bytes, inner.entries.len())
    }

    /// The cached bytes of a block, marking it recently used.
    pub fn get(&self, hash: &BlockHash) -> Option<Bytes> {
        let mut inner = self.lock();
        let found = touch(&mut inner, hash);
        // Only hits count here: a miss goes on to `join`, which counts it.
        if found.is_some() {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Finds the block in the cache, joins the fetch in flight for it, or
    /// makes the caller the one who fetches it.
    pub fn join(self: &Arc<Self>, hash: &BlockHash, priority: Priority) -> Join {
        let mut inner = self.lock();
        if let Some(data) = touch(&mut inner, hash) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Join::Ready(data);
        }
        if let Some(flight) = inner.flights.get_mut(hash) {
            self.counters.shared.fetch_add(1, Ordering::Relaxed);
            flight.priority.raise(priority);
            let (tx, rx) = oneshot::channel();
            flight.followers.push(tx);
            return Join::Follow(Follow {
                rx,
                priority: flight.priority.clone(),
            });
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let fp = Arc::new(FlightPriority::new(priority));
        inner.flights.insert(
            *hash,
            Flight {
                priority: fp.clone(),
                followers: Vec::new(),
            },
        );
        Join::Lead(Lead {
            cache: self.clone(),
            hash: *hash,
            priority: fp,
            done: false,
        })
    }

    fn insert(inner: &mut Inner, capacity: u64, hash: BlockHash, data: Bytes) -> u64 {
        let len = data.len() as u64;
        if len > capacity || inner.entries.contains_key(&hash) {
            return 0;
        }
        let mut evicted = 0;
        while inner.bytes + len > capacity {
            let Some((_, victim)) = inner.lru.pop_first() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&victim) {
                inner.bytes -= e.data.len() as u64;
                evicted += 1;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.lru.insert(tick, hash);
        inner.entries.insert(hash, Entry { data, tick });
        inner.bytes += len;
        evicted
    }

    fn finish(&self, hash: &BlockHash, result: FlightResult) {
        let mut inner = self.lock();
        let flight = inner.flights.remove(hash);
        if let Ok(data) = &result {
            let evicted = Self::insert(&mut inner, self.capacity, *hash, data.clone());
            self.counters
                .evictions
                .fetch_add(evicted, Ordering::Relaxed);
        }
        drop(inner);
        for tx in flight.map(|f| f.followers).unwrap_or_default() {
            let _ = tx.send(result.clone());
        }
    }
}

fn touch(inner: &mut Inner, hash: &BlockHash) -> Option<Bytes> {
    inner.tick += 1;
    let tick = inner.tick;
    let entry = inner.entries.get_mut(hash)?;
    let old = std::mem::replace(&mut entry.tick, tick);
    let data = entry.data.clone();
    inner.lru.remove(&old);
    inner.lru.insert(tick, *hash);
    Some(data)
}

/// The duty to fetch a block and hand the result to the cache and the
/// followers. Dropped without [`Lead::complete`], the followers get an error.
pub struct Lead {
    cache: Arc<BlockCache>,
    hash: BlockHash,
    priority: Arc<FlightPriority>,
    done: bool,
}

impl Lead {
    pub fn priority(&self) -> &Arc<FlightPriority> {
        &self.priority
    }

    /// Ends the flight: verified bytes go into the cache and to followers.
    pub fn complete(mut self, result: Result<Bytes, FlightError>) {
        self.done = true;
        self.cache.finish(&self.hash, result);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.done {
            self.cache.finish(
                &self.hash,
                Err(FlightError("the fetch was abandoned".into())),
            );
        }
    }
}

pub struct Follow {
    rx: oneshot::Receiver<FlightResult>,
    priority: Arc<FlightPriority>,
}

impl Follow {
    pub fn priority(&self) -> &Arc<FlightPriority> {
        &self.priority
    }

    pub async fn wait(self) -> Result<Bytes, FlightError> {
        self.rx
            .await
            .unwrap_or_else(|_| Err(FlightError("the fetch was abandoned".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> BlockHash {
        [i; 32]
    }

    fn lead(c: &Arc<BlockCache>, i: u8) -> Lead {
        match c.join(&h(i), Priority::Demand) {
            Join::Lead(l) => l,
            _ => panic!("expected to lead"),
        }
    }

    #[test]
    fn bounded_in_bytes_least_recently_used_out_first() {
        let c = BlockCache::new(300);
        for i in 0..3 {
            lead(&c, i).complete(Ok(Bytes::from(vec![i; 100])));
        }
        assert_eq!(c.usage(), (300, 3));
        // Use 0 so 1 is the least recently used.
        assert!(c.get(&h(0)).is_some());
        lead(&c, 3).complete(Ok(Bytes::from(vec![3; 100])));
        assert!(c.get(&h(1)).is_none());
        assert!(c.get(&h(0)).is_some());
        assert!(c.get(&h(2)).is_some());
        assert_eq!(c.get(&h(3)).unwrap()[0], 3);
        assert_eq!(c.usage(), (300, 3));
        // Larger than the whole cache: delivered but not kept.
        lead(&c, 9).complete(Ok(Bytes::from(vec![9; 301])));
        assert!(c.get(&h(9)).is_none());
        assert_eq!(c.counters().evictions.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch() {
        let c = BlockCache::new(1 << 20);
        let l = lead(&c, 1);
        let followers: Vec<Follow> = (0..5)
            .map(|_| match c.join(&h(1), Priority::Prefetch) {
                Join::Follow(f) => f,
                _ => panic!("expected to follow"),
            })
            .collect();
        l.complete(Ok(Bytes::from_static(b"block")));
        for f in followers {
            assert_eq!(&f.wait().await.unwrap()[..], b"block");
        }
        assert!(matches!(c.join(&h(1), Priority::Demand), Join::Ready(_)));
        assert_eq!(c.counters().shared.load(Ordering::Relaxed), 5);
        assert_eq!(c.counters().misses.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn failed_or_abandoned_flights_reach_followers_and_are_not_cached() {
        let c = BlockCache::new(1 << 20);
        let l = lead(&c, 1);
        let Join::Follow(f) = c.join(&h(1), Priority::Demand) else {
            panic!()
        };
        l.complete(Err(FlightError("bad hash".into())));
        assert_eq!(f.wait().await, Err(FlightError("bad hash".into())));
        // The next request leads a fresh flight.
        let l = lead(&c, 1);
        let Join::Follow(f) = c.join(&h(1), Priority::Demand) else {
            panic!()
        };
        drop(l);
        assert!(f.wait().await.unwrap_err().0.contains("abandoned"));
        assert!(c.get(&h(1)).is_none());
    }

    #[tokio::test]
    async fn a_more_urgent_follower_raises_the_flight() {
        let c = BlockCache::new(1 << 20);
        let Join::Lead(l) = c.join(&h(1), Priority::Stream) else {
            panic!()
        };
        let fp = l.priority().clone();
        let raised = fp.raised();
        tokio::pin!(raised);
        raised.as_mut().enable();
        assert_eq!(fp.get(), Priority::Stream);
        let _f = c.join(&h(1), Priority::Demand);
        assert_eq!(fp.get(), Priority::Demand);
        tokio::time::timeout(std::time::Duration::from_secs(1), raised)
            .await
            .expect("the leader is told");
        // Lowering never happens.
        fp.raise(Priority::Prefetch);
        assert_eq!(fp.get(), Priority::Demand);
    }
}
