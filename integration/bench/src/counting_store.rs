//! An object store wrapper that counts reads: how benchmarks measure
//! object-store requests (what a cloud bill and S3 throttling count).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{GetResult, ObjectStore, Result};

use crate::hooked_store::{GetRequest, HookedStore, RangeReads, StoreHooks};

/// An object store that counts its reads ([`ReadCounter`]).
pub(crate) type CountingStore = HookedStore<ReadCounter>;

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self::with_hooks(inner, ReadCounter::default())
    }
}

/// Counts GET requests and the body bytes they returned.
#[derive(Debug, Default)]
pub struct ReadCounter {
    reads: AtomicU64,
    read_bytes: AtomicU64,
}

impl ReadCounter {
    /// GET requests so far (ranged or whole).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl StoreHooks for ReadCounter {
    fn describe(&self, inner: &dyn ObjectStore, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({inner})")
    }

    async fn get(
        &self,
        _request: GetRequest<'_>,
        forward: BoxFuture<'_, Result<GetResult>>,
    ) -> Result<GetResult> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let r = forward.await?;
        self.read_bytes
            .fetch_add(r.range.end - r.range.start, Ordering::Relaxed);
        Ok(r)
    }

    /// Each range counts as a read, however the inner store serves them.
    fn range_reads(&self) -> RangeReads {
        RangeReads::Inner
    }

    async fn get_ranges(
        &self,
        _location: &Path,
        ranges: &[Range<u64>],
        forward: BoxFuture<'_, Result<Vec<Bytes>>>,
    ) -> Result<Vec<Bytes>> {
        self.reads.fetch_add(ranges.len() as u64, Ordering::Relaxed);
        let r = forward.await?;
        let n: usize = r.iter().map(Bytes::len).sum();
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(r)
    }
}
