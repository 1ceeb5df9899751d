//! Opening a checkpoint store from a user-supplied location, and where a
//! checkpoint's objects live inside it.
//!
//! Locations: a directory path or `file://` URL (the embedded default),
//! `memory://` (in-process, for tests), and `s3://bucket/prefix` for any
//! S3-compatible service, configured by the standard AWS environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` for a non-AWS endpoint).

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

use thaw_format::{CheckpointId, TenantKey, TenantKeys};

#[derive(Debug, thiserror::Error)]
pub enum StoreSpecError {
    #[error("store location {spec:?}: {reason}")]
    Invalid { spec: String, reason: String },
    #[error("store location {spec:?}: {source}")]
    Backend {
        spec: String,
        #[source]
        source: object_store::Error,
    },
}

/// An object store plus the human-readable location it was opened from,
/// and the tenant key its user writes and reads checkpoints with, if any.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: String,
    tenant: Option<Arc<TenantKeys>>,
}

impl Store {
    /// Opens `spec`: a directory, `file://DIR`, `memory://` or `s3://BUCKET[/PREFIX]`.
    /// A directory that does not exist yet is created.
    pub fn open(spec: &str) -> Result<Self, StoreSpecError> {
        Self::open_with(spec, true)
    }

    /// As [`Store::open`], but a directory must exist already: for locations
    /// that come from someone else (a VMM's hand-off), which must not make
    /// this process create directories.
    pub fn open_existing(spec: &str) -> Result<Self, StoreSpecError> {
        Self::open_with(spec, false)
    }

    /// The location `spec` names, in one spelling: `file://` and trailing
    /// slashes dropped, an existing directory as its canonical path. Two specs
    /// naming one store give the same key.
    pub fn location_key(spec: &str) -> String {
        if spec.starts_with("s3://") || spec.starts_with("memory:") {
            return spec.trim_end_matches('/').to_owned();
        }
        let dir = spec.strip_prefix("file://").unwrap_or(spec);
        match std::fs::canonicalize(dir) {
            Ok(path) => path.display().to_string(),
            Err(_) => dir.trim_end_matches('/').to_owned(),
        }
    }

    fn open_with(spec: &str, create: bool) -> Result<Self, StoreSpecError> {
        let invalid = |reason: &str| StoreSpecError::Invalid {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let backend = |source| StoreSpecError::Backend {
            spec: spec.to_owned(),
            source,
        };
        let inner: Arc<dyn ObjectStore> = if spec == "memory://" || spec == "memory:" {
            Arc::new(InMemory::new())
        } else if spec.starts_with("s3://") {
            return Self::open_s3(spec, std::iter::empty::<(&str, String)>());
        } else if spec.contains("://") && !spec.starts_with("file://") {
            return Err(invalid(
                "unknown scheme (use a directory, file://, memory:// or s3://)",
            ));
        } else {
            let dir = spec.strip_prefix("file://").unwrap_or(spec);
            if dir.is_empty() {
                return Err(invalid("empty directory path"));
            }
            if create {
                std::fs::create_dir_all(dir)
                    .map_err(|e| invalid(&format!("cannot create directory: {e}")))?;
            } else if !std::path::Path::new(dir).is_dir() {
                return Err(invalid("no such directory"));
            }
            let local = LocalFileSystem::new_with_prefix(dir).map_err(backend)?;
            Arc::new(local.with_automatic_cleanup(true))
        };
        Ok(Self {
            inner,
            location: spec.to_owned(),
            tenant: None,
        })
    }

    /// Opens `s3://BUCKET[/PREFIX]` with settings from the environment, then
    /// `options` on top (object_store's S3 keys, e.g. `aws_endpoint`).
    pub fn open_s3<K: AsRef<str>>(
        spec: &str,
        options: impl IntoIterator<Item = (K, String)>,
    ) -> Result<Self, StoreSpecError> {
        let invalid = |reason: String| StoreSpecError::Invalid {
            spec: spec.to_owned(),
            reason,
        };
        let rest = spec
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("not an s3:// location".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("no bucket name after s3://".into()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        // object_store reads AWS_ENDPOINT; the AWS CLI and SDKs use AWS_ENDPOINT_URL.
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        for (key, value) in options {
            let key = key
                .as_ref()
                .parse()
                .map_err(|e| invalid(format!("S3 option: {e}")))?;
            builder = builder.with_config(key, value);
        }
        let s3 = builder.build().map_err(|source| StoreSpecError::Backend {
            spec: spec.to_owned(),
            source,
        })?;
        Ok(Self {
            inner: with_prefix(Arc::new(s3), prefix),
            location: spec.to_owned(),
            tenant: None,
        })
    }

    /// Wraps an already-built object store (tests, custom backends).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        Self {
            inner,
            location: location.into(),
            tenant: None,
        }
    }

    /// This handle with a tenant key: checkpoints it writes are encrypted
    /// with it, and encrypted checkpoints it reads are opened with it.
    pub fn with_tenant_key(mut self, key: &TenantKey) -> Self {
        self.tenant = Some(Arc::new(TenantKeys::new(key)));
        self
    }

    /// The tenant key's derived keys, when this handle has one.
    pub fn tenant_keys(&self) -> Option<&Arc<TenantKeys>> {
        self.tenant.as_ref()
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    pub fn location(&self) -> &str {
        &self.location
    }
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// Where checkpoints live inside a store: `checkpoints/ID/manifest`,
/// `checkpoints/ID/segment-NNNNNN` and, when recorded,
/// `checkpoints/ID/dirty-log`; names at `names/NAME`, and the manifests of
/// deleted checkpoints, kept for one GC grace period, at `deleted/ID`.
pub(crate) mod keys {
    use super::*;
    use thaw_format::CheckpointName;

    pub(crate) const CHECKPOINTS: &str = "checkpoints";
    pub(crate) const NAMES: &str = "names";
    pub(crate) const DELETED: &str = "deleted";

    pub(crate) fn name(name: &CheckpointName) -> Path {
        Path::from(format!("{NAMES}/{name}"))
    }

    pub(crate) fn tombstone(id: &CheckpointId) -> Path {
        Path::from(format!("{DELETED}/{id}"))
    }

    pub(crate) fn manifest(id: &CheckpointId) -> Path {
        Path::from(format!("{CHECKPOINTS}/{id}/manifest"))
    }

    pub(crate) fn dirty_log(id: &CheckpointId) -> Path {
        Path::from(format!("{CHECKPOINTS}/{id}/dirty-log"))
    }

    pub(crate) fn segment(id: &CheckpointId, index: usize) -> String {
        format!("{CHECKPOINTS}/{id}/segment-{index:06}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let err = Store::open("ftp://x").unwrap_err().to_string();
        assert!(err.contains("unknown scheme"), "{err}");
        let err = Store::open("s3://").unwrap_err().to_string();
        assert!(err.contains("no bucket"), "{err}");
        let err = Store::open("").unwrap_err().to_string();
        assert!(err.contains("empty directory"), "{err}");
    }

    #[test]
    fn directory_store_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/store");
        Store::open(path.to_str().unwrap()).unwrap();
        assert!(path.is_dir());
    }

    #[test]
    fn open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = Store::open_existing(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such directory"), "{err}");
        assert!(!path.exists());
        Store::open_existing(dir.path().to_str().unwrap()).unwrap();
    }

    #[test]
    fn location_keys_name_one_store_in_one_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().to_str().unwrap().to_owned();
        let key = Store::location_key(&plain);
        assert_eq!(Store::location_key(&format!("file://{plain}/")), key);
        assert_eq!(Store::location_key(&format!("{plain}/./")), key);
        assert_ne!(Store::location_key(&format!("{plain}/other")), key);
        assert_eq!(Store::location_key("s3://b/p/"), "s3://b/p");
    }
}
