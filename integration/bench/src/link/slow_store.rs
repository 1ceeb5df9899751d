//! An object store wrapper that makes reads as slow as a remote object
//! store: each read waits a first-byte latency, then delivers its body at a
//! per-request rate, every request independently (as S3 serves parallel
//! GETs). Writes, lists and deletes pass straight through: checkpoints are
//! written before the benchmark's clock starts.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    coalesce_ranges, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, RenameOptions, Result, OBJECT_STORE_COALESCE_DEFAULT,
};
use tokio::time::Instant;

use super::spec::{LinkSpec, LinkSpecError};

#[derive(Debug)]
pub struct SlowStore {
    inner: Arc<dyn ObjectStore>,
    first_byte: Duration,
    bytes_per_sec: u64,
    requests: AtomicU64,
    bytes_served: AtomicU64,
}

impl SlowStore {
    pub fn new(inner: Arc<dyn ObjectStore>, first_byte: Duration, bytes_per_sec: u64) -> Self {
        Self {
            inner,
            first_byte,
            bytes_per_sec: bytes_per_sec.max(1),
            requests: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
        }
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

impl fmt::Display for SlowStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Slow({:?} first byte, {} B/s per request, {})",
            self.first_byte, self.bytes_per_sec, self.inner
        )
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for SlowStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    /// The whole (range of the) body is read from the inner store first, then
    /// handed over in one chunk once the emulated transfer is over, so a
    /// streaming reader cannot see bytes early.
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let started = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let head = options.head;
        let result = self.inner.get_opts(location, options).await;
        let result = match result {
            Ok(r) if !head => r,
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

    /// As a remote store does: nearby ranges merged, up to 10 requests in
    /// parallel, each one a slow GET.
    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        coalesce_ranges(
            ranges,
            |range| self.get_range(location, range),
            OBJECT_STORE_COALESCE_DEFAULT,
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
