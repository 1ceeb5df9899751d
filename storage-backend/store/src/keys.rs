//! Checkpoint signing keys on disk: generating a key pair, loading a signing
//! key and trusted public keys, and the default key directory that commands
//! fall back to when no key is named (`$THAW_KEY_DIR`, else
//! `$HOME/.config/thaw/keys`). The key formats are `thaw_format::signature`'s.
//!
//! The directory is 0700 and the secret key 0600; a secret key readable by
//! others is refused, as ssh does, since anyone who read it can sign memory
//! that restores will run.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thaw_format::signature::{
    self, encode_public_key, encode_signing_key, generate_signing_key, SignatureError, SigningKey,
    VerifyingKey,
};
use thaw_format::ManifestTrust;

/// The secret key's file name in a key directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// Its public key's file name; every `*.pub` file of the directory is trusted.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("{path} is readable by other users (mode {mode:o}): a signing key must be 0600 (chmod 600 {path})")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} exists already: not overwriting a key")]
    Exists { path: PathBuf },
    #[error("no trusted signing key: none given (--trust) and no *.pub file in {dir} (run `thaw keygen`, or pass --insecure-unsigned to accept unsigned checkpoints)")]
    NoTrust { dir: String },
    #[error("no signing key: none given (--signing-key) and no {dir}/{SIGNING_KEY_FILE} (run `thaw keygen`, or pass --insecure-unsigned to write an unsigned checkpoint)")]
    NoSigningKey { dir: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `$THAW_KEY_DIR`, else `$HOME/.config/thaw/keys`; `None` without either.
pub fn default_key_dir() -> Option<PathBuf> {
    match std::env::var_os("THAW_KEY_DIR") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".config/thaw/keys")),
    }
}

fn dir_name(dir: Option<&Path>) -> String {
    dir.map_or_else(
        || "the key directory ($THAW_KEY_DIR or $HOME unset)".into(),
        |d| d.display().to_string(),
    )
}

/// A new key pair in `dir` (created 0700): `signing.key` (0600) and
/// `signing.pub`. Never overwrites an existing key.
pub fn generate(dir: &Path) -> Result<VerifyingKey, KeyFileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let secret = dir.join(SIGNING_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    for path in [&secret, &public] {
        if path.exists() {
            return Err(KeyFileError::Exists { path: path.clone() });
        }
    }
    let key = generate_signing_key();
    write_new(&secret, 0o600, &encode_signing_key(&key))?;
    write_new(&public, 0o644, &encode_public_key(&key.verifying_key()))?;
    Ok(key.verifying_key())
}

/// The key pair of `dir`, generated first if the directory has no signing
/// key: what `thaw demo` does so later commands find a key. Returns the
/// public key and whether it was generated now.
pub fn ensure(dir: &Path) -> Result<(VerifyingKey, bool), KeyFileError> {
    let secret = dir.join(SIGNING_KEY_FILE);
    if secret.exists() {
        Ok((load_signing_key(&secret)?.verifying_key(), false))
    } else {
        Ok((generate(dir)?, true))
    }
}

/// Creates key file `path` with `mode` (its directory 0700 if missing),
/// never replacing an existing file: a key that readers depend on is never
/// lost. An existing file is an `AlreadyExists` error.
pub(crate) fn create_key_file(path: &Path, mode: u32, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), KeyFileError> {
    create_key_file(path, mode, text.as_bytes()).map_err(io(path))
}

/// Loads a secret key file, refusing one that other users can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    signature::parse_signing_key(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Loads every key of the trust files `paths`.
pub fn load_trusted_keys(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>, KeyFileError> {
    let mut keys = Vec::new();
    for path in paths {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let parsed = signature::parse_public_keys(&text).map_err(|source| KeyFileError::Parse {
            path: path.clone(),
            source,
        })?;
        keys.extend(parsed);
    }
    Ok(keys)
}

/// The `*.pub` files of `dir`, sorted; none when it does not exist.
fn public_key_files(dir: &Path) -> Result<Vec<PathBuf>, KeyFileError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What a reading command trusts: `--insecure-unsigned` accepts anything;
/// else the keys of the `--trust` files; else every `*.pub` of `key_dir`.
pub fn resolve_trust(
    trust_files: &[PathBuf],
    insecure_unsigned: bool,
    key_dir: Option<&Path>,
) -> Result<ManifestTrust, KeyFileError> {
    if insecure_unsigned {
        return Ok(ManifestTrust::InsecureUnsigned);
    }
    let files = match (trust_files, key_dir) {
        ([], Some(dir)) => public_key_files(dir)?,
        _ => trust_files.to_vec(),
    };
    if files.is_empty() {
        return Err(KeyFileError::NoTrust {
            dir: dir_name(key_dir),
        });
    }
    Ok(ManifestTrust::Keys(load_trusted_keys(&files)?))
}

/// What a writing command signs with: the `--signing-key` file; else none
/// with `--insecure-unsigned`; else `key_dir`'s signing key.
pub fn resolve_signing_key(
    signing_key: Option<&Path>,
    insecure_unsigned: bool,
    key_dir: Option<&Path>,
) -> Result<Option<SigningKey>, KeyFileError> {
    if let Some(path) = signing_key {
        return load_signing_key(path).map(Some);
    }
    if insecure_unsigned {
        return Ok(None);
    }
    match key_dir.map(|d| d.join(SIGNING_KEY_FILE)) {
        Some(path) if path.exists() => load_signing_key(&path).map(Some),
        _ => Err(KeyFileError::NoSigningKey {
            dir: dir_name(key_dir),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_private_found_by_default_and_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let public = generate(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(SIGNING_KEY_FILE)), 0o600);
        assert!(matches!(generate(&dir), Err(KeyFileError::Exists { .. })));
        assert_eq!(ensure(&dir).unwrap(), (public, false));

        let signer = resolve_signing_key(None, false, Some(&dir))
            .unwrap()
            .unwrap();
        assert_eq!(signer.verifying_key(), public);
        assert_eq!(
            resolve_trust(&[], false, Some(&dir)).unwrap(),
            ManifestTrust::Keys(vec![public])
        );
        // An explicit trust file replaces the directory's.
        let other = tmp.path().join("other");
        let other_key = generate(&other).unwrap();
        assert_eq!(
            resolve_trust(&[other.join(PUBLIC_KEY_FILE)], false, Some(&dir)).unwrap(),
            ManifestTrust::Keys(vec![other_key])
        );
        assert_eq!(
            resolve_trust(&[], true, Some(&dir)).unwrap(),
            ManifestTrust::InsecureUnsigned
        );
    }

    #[test]
    fn missing_or_exposed_keys_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("none");
        let e = resolve_trust(&[], false, Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("thaw keygen"), "{e}");
        assert!(matches!(
            resolve_signing_key(None, false, Some(&empty)),
            Err(KeyFileError::NoSigningKey { .. })
        ));
        assert!(resolve_signing_key(None, true, Some(&empty))
            .unwrap()
            .is_none());

        let dir = tmp.path().join("keys");
        generate(&dir).unwrap();
        let secret = dir.join(SIGNING_KEY_FILE);
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_signing_key(&secret).unwrap_err();
        assert!(
            matches!(e, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{e}"
        );
        let garbage = tmp.path().join("garbage.pub");
        fs::write(&garbage, "hello").unwrap();
        assert!(matches!(
            load_trusted_keys(&[garbage]),
            Err(KeyFileError::Parse { .. })
        ));
    }
}
