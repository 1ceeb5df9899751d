//! The one object store wrapper: [`HookedStore`] forwards every
//! `ObjectStore` method to an inner store and calls [`StoreHooks`] around
//! the requests something wants to watch or shape, GETs and writes.
//! Counting reads ([`crate::counting_store`]), emulating a remote store's
//! link ([`crate::link::slow_store`]) and recording writes (the end-to-end
//! tests) are each a small set of hooks.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    coalesce_ranges, CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result, UploadPart, OBJECT_STORE_COALESCE_DEFAULT,
};

/// One `get_opts` request as hooks see it.
#[derive(Debug, Clone)]
pub struct GetRequest<'a> {
    pub location: &'a Path,
    /// A HEAD: metadata only, no body.
    pub head: bool,
    /// The byte range asked for; `None` for the whole object.
    pub range: Option<GetRange>,
}

/// How a [`HookedStore`] serves `get_ranges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReads {
    /// As `object_store` does by default: nearby ranges merged, each merged
    /// range one `get_opts` through the wrapper, so [`StoreHooks::get`]
    /// sees every request a remote store would.
    Coalesced,
    /// Handed whole to the inner store, around [`StoreHooks::get_ranges`].
    Inner,
}

/// What a [`HookedStore`] does besides forwarding. Every method but
/// [`describe`](Self::describe) defaults to plain forwarding.
#[async_trait]
pub trait StoreHooks: fmt::Debug + Send + Sync + 'static {
    /// The wrapper's `Display`, around the inner store's.
    fn describe(&self, inner: &dyn ObjectStore, f: &mut fmt::Formatter<'_>) -> fmt::Result;

    /// Around one `get_opts` (a GET, ranged GET or HEAD): `forward` is the
    /// inner store's answer, not yet asked for until awaited.
    async fn get(
        &self,
        _request: GetRequest<'_>,
        forward: BoxFuture<'_, Result<GetResult>>,
    ) -> Result<GetResult> {
        forward.await
    }

    /// How `get_ranges` is served.
    fn range_reads(&self) -> RangeReads {
        RangeReads::Coalesced
    }

    /// Around a `get_ranges` handed whole to the inner store
    /// ([`RangeReads::Inner`]).
    async fn get_ranges(
        &self,
        _location: &Path,
        _ranges: &[Range<u64>],
        forward: BoxFuture<'_, Result<Vec<Bytes>>>,
    ) -> Result<Vec<Bytes>> {
        forward.await
    }

    /// Before a write to `location` (a put, or the start of a multipart
    /// upload): an error fails the write before the inner store sees it.
    fn before_write(&self, _location: &Path) -> Result<()> {
        Ok(())
    }

    /// After a write to `location` completed (a put, or a multipart
    /// upload's `complete`).
    fn write_completed(&self, _location: &Path) {}
}

/// An object store that forwards to `inner`, calling `hooks` around requests.
#[derive(Debug)]
pub struct HookedStore<H> {
    inner: Arc<dyn ObjectStore>,
    hooks: Arc<H>,
}

impl<H: StoreHooks> HookedStore<H> {
    pub fn with_hooks(inner: Arc<dyn ObjectStore>, hooks: H) -> Self {
        Self {
            inner,
            hooks: Arc::new(hooks),
        }
    }

    pub fn hooks(&self) -> &H {
        &self.hooks
    }
}

impl<H: StoreHooks> fmt::Display for HookedStore<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.hooks.describe(&*self.inner, f)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<H: StoreHooks> ObjectStore for HookedStore<H> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.hooks.before_write(location)?;
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.hooks.write_completed(location);
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.hooks.before_write(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(HookedUpload {
            inner,
            location: location.clone(),
            hooks: self.hooks.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let request = GetRequest {
            location,
            head: options.head,
            range: options.range.clone(),
        };
        let forward = self.inner.get_opts(location, options);
        self.hooks.get(request, forward).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.hooks.range_reads() {
            RangeReads::Coalesced => {
                coalesce_ranges(
                    ranges,
                    |range| self.get_range(location, range),
                    OBJECT_STORE_COALESCE_DEFAULT,
                )
                .await
            }
            RangeReads::Inner => {
                let forward = self.inner.get_ranges(location, ranges);
                self.hooks.get_ranges(location, ranges, forward).await
            }
        }
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

/// A multipart upload through a [`HookedStore`]: its `complete` is a
/// completed write.
#[derive(Debug)]
struct HookedUpload<H> {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    hooks: Arc<H>,
}

#[async_trait]
impl<H: StoreHooks> MultipartUpload for HookedUpload<H> {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await?;
        self.hooks.write_completed(&self.location);
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use object_store::memory::InMemory;

    use super::*;
    use crate::counting_store::CountingStore;

    #[derive(Debug, Default)]
    struct Writes(Mutex<Vec<String>>);

    impl StoreHooks for Writes {
        fn describe(&self, inner: &dyn ObjectStore, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Writes({inner})")
        }

        fn before_write(&self, location: &Path) -> Result<()> {
            match location.as_ref() {
                "refused" => Err(object_store::Error::Generic {
                    store: "test",
                    source: "refused".into(),
                }),
                _ => Ok(()),
            }
        }

        fn write_completed(&self, location: &Path) {
            self.0.lock().unwrap().push(location.to_string());
        }
    }

    #[tokio::test]
    async fn writes_complete_after_the_inner_store_and_can_be_refused() {
        let store = HookedStore::with_hooks(Arc::new(InMemory::new()), Writes::default());
        assert_eq!(store.to_string(), "Writes(InMemory)");
        store.put(&"a".into(), vec![1u8; 10].into()).await.unwrap();
        let mut upload = store.put_multipart(&"b".into()).await.unwrap();
        upload.put_part(vec![2u8; 10].into()).await.unwrap();
        assert_eq!(*store.hooks().0.lock().unwrap(), ["a"]);
        upload.complete().await.unwrap();
        assert!(store
            .put(&"refused".into(), vec![3u8].into())
            .await
            .is_err());
        assert_eq!(*store.hooks().0.lock().unwrap(), ["a", "b"]);
        assert_eq!(
            store
                .get(&"b".into())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            10
        );
        assert!(store.head(&"refused".into()).await.is_err());
    }

    #[tokio::test]
    async fn counting_counts_every_range_and_its_bytes() {
        let store = CountingStore::new(Arc::new(InMemory::new()));
        let path = Path::from("x");
        store.put(&path, vec![7u8; 1000].into()).await.unwrap();
        assert_eq!(store.hooks().reads(), 0);
        store.get_range(&path, 10..20).await.unwrap();
        store
            .get_ranges(&path, &[0..5, 5..10, 900..1000])
            .await
            .unwrap();
        assert_eq!(store.hooks().reads(), 4);
        assert_eq!(store.hooks().read_bytes(), 10 + 5 + 5 + 100);
    }
}
