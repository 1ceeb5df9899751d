//! Tenant key files: where a host keeps its tenant key, reading it, and
//! making a new one.
//!
//! The key directory is `$THAW_KEY_DIR` when set, else
//! `$HOME/.config/thaw/keys`; the tenant key is `tenant.key` in it, 32 raw
//! bytes, written 0600 in a directory made 0700.

use std::path::{Path, PathBuf};

use thaw_format::{CryptError, TenantKey};

pub const TENANT_KEY_FILE: &str = "tenant.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading tenant key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tenant key {path} is not a tenant key: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: CryptError,
    },
    #[error("tenant key {path} exists already; remove it first to replace it")]
    Exists { path: PathBuf },
    #[error("writing tenant key {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The tenant key file of the default key directory (the signing keys' too,
/// see [`crate::keys::default_key_dir`]).
pub fn default_tenant_key_path() -> Option<PathBuf> {
    crate::keys::default_key_dir().map(|d| d.join(TENANT_KEY_FILE))
}

/// The tenant key a command uses: the file `explicit` names (which must
/// exist), else the default key directory's `tenant.key` if there is one,
/// else none (checkpoints are written in the clear).
pub fn load_tenant_key(explicit: Option<&Path>) -> Result<Option<TenantKey>, KeyFileError> {
    match explicit {
        Some(path) => read_tenant_key(path).map(Some),
        None => match default_tenant_key_path() {
            Some(path) if path.exists() => read_tenant_key(&path).map(Some),
            _ => Ok(None),
        },
    }
}

pub fn read_tenant_key(path: &Path) -> Result<TenantKey, KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    TenantKey::parse(&bytes).map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Makes a new random tenant key at `path`: the file 0600, missing parent
/// directories 0700. An existing file is never overwritten (its
/// checkpoints would become unreadable).
pub fn write_new_tenant_key(path: &Path) -> Result<TenantKey, KeyFileError> {
    let key = TenantKey::generate();
    crate::keys::create_key_file(path, 0o600, key.as_bytes()).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
            path: path.to_owned(),
        },
        _ => KeyFileError::Write {
            path: path.to_owned(),
            source: e,
        },
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_key_is_private_and_reads_back_and_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keys/tenant.key");
        let key = write_new_tenant_key(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(read_tenant_key(&path).unwrap().id(), key.id());
        assert!(matches!(
            write_new_tenant_key(&path),
            Err(KeyFileError::Exists { .. })
        ));
        assert_eq!(read_tenant_key(&path).unwrap().id(), key.id());
    }

    #[test]
    fn bad_or_missing_key_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("short.key");
        std::fs::write(&path, [1u8; 31]).unwrap();
        let err = load_tenant_key(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("short.key") && err.contains("31"), "{err}");
        let missing = tmp.path().join("absent.key");
        let err = load_tenant_key(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("absent.key"), "{err}");
    }
}
