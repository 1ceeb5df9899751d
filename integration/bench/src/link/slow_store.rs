//! An object store wrapper that makes reads as slow as a remote object
//! store: each read waits a first-byte latency, then delivers its body at a
//! per-request rate, every request independently (as S3 serves parallel
//! GETs). Writes, lists and deletes pass straight through: checkpoints are
//! written before the benchmark's clock starts.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use object_store::{GetResult, GetResultPayload, ObjectStore, Result};
use tokio::time::Instant;

use super::spec::{LinkSpec, LinkSpecError};
use crate::hooked_store::{GetRequest, HookedStore, StoreHooks};

/// An object store behind an emulated object-store link ([`SlowReads`]).
/// `get_ranges` goes as a remote store serves it: nearby ranges merged, up
/// to 10 requests in parallel, each one a slow GET.
pub type SlowStore = HookedStore<SlowReads>;

impl SlowStore {
    pub fn new(inner: Arc<dyn ObjectStore>, first_byte: Duration, bytes_per_sec: u64) -> Self {
        Self::with_hooks(inner, SlowReads::new(first_byte, bytes_per_sec))
    }

    /// Wraps `inner` in an object-store link (e.g. [`LinkSpec::object_store`]).
    pub fn for_link(inner: Arc<dyn ObjectStore>, link: &LinkSpec) -> Result<Self, LinkSpecError> {
        match link {
            LinkSpec::ObjectStore {
                first_byte,
                per_request_bytes_per_sec,
                ..
            } => Ok(Self::new(inner, *first_byte, *per_request_bytes_per_sec)),
            LinkSpec::Relayed { name, .. } => {
                Err(LinkSpecError::NotObjectStore { name: name.clone() })
            }
        }
    }
}

/// The delays of an object-store link, and the reads that went through it.
#[derive(Debug)]
pub struct SlowReads {
    first_byte: Duration,
    bytes_per_sec: u64,
    requests: AtomicU64,
    bytes_served: AtomicU64,
}

impl SlowReads {
    pub fn new(first_byte: Duration, bytes_per_sec: u64) -> Self {
        Self {
            first_byte,
            bytes_per_sec: bytes_per_sec.max(1),
            requests: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
        }
    }

    /// Read requests so far (GETs, ranged GETs, HEADs).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Body bytes returned so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    /// How long a read of `len` body bytes takes from request to last byte.
    pub fn read_time(&self, len: u64) -> Duration {
        let body_ns = u128::from(len) * 1_000_000_000 / u128::from(self.bytes_per_sec);
        self.first_byte + Duration::from_nanos(u64::try_from(body_ns).unwrap_or(u64::MAX))
    }
}

#[async_trait]
impl StoreHooks for SlowReads {
    fn describe(&self, inner: &dyn ObjectStore, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Slow({:?} first byte, {} B/s per request, {})",
            self.first_byte, self.bytes_per_sec, inner
        )
    }

    /// The whole (range of the) body is read from the inner store first, then
    /// handed over in one chunk once the emulated transfer is over, so a
    /// streaming reader cannot see bytes early.
    async fn get(
        &self,
        request: GetRequest<'_>,
        forward: BoxFuture<'_, Result<GetResult>>,
    ) -> Result<GetResult> {
        let started = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = match forward.await {
            Ok(r) if !request.head => r,
            // Errors (not found, precondition failed) and HEADs cost a round
            // trip without a body.
            other => {
                tokio::time::sleep_until(started + self.first_byte).await;
                return other;
            }
        };
        let GetResult {
            payload,
            meta,
            range,
            attributes,
            extensions,
        } = result;
        let body = GetResult {
            payload,
            meta: meta.clone(),
            range: range.clone(),
            attributes: Default::default(),
            extensions: Default::default(),
        }
        .bytes()
        .await?;
        tokio::time::sleep_until(started + self.read_time(body.len() as u64)).await;
        self.bytes_served
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(body) }).boxed()),
            meta,
            range,
            attributes,
            extensions,
        })
    }
}
