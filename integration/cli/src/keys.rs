//! Checkpoint signing flags shared by the commands that write or read checkpoints, and `thaw
//! keygen`. Without flags, commands use the key directory (`$THAW_KEY_DIR`, else
//! `~/.config/thaw/keys`) that `thaw keygen` and `thaw demo` fill.

use std::path::{Path, PathBuf};

use anyhow::Context;
use thaw_format::signature::{encode_public_key, key_id, SigningKey};
use thaw_format::ManifestTrust;
use thaw_store::keys::{self, default_key_dir};

/// Which checkpoints a command trusts, and what it signs with when it writes one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyArgs {
    /// Sign checkpoints written with this key [default: signing.key in $THAW_KEY_DIR or
    /// ~/.config/thaw/keys].
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Trust checkpoints signed by the keys in this file (repeatable) [default: every *.pub
    /// file in $THAW_KEY_DIR or ~/.config/thaw/keys].
    #[arg(long = "trust", value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// Write unsigned checkpoints and accept unsigned (or any) checkpoints without checking a
    /// signature. Insecure: whoever can write the store then chooses guest memory and state.
    #[arg(long, conflicts_with = "trust")]
    pub insecure_unsigned: bool,
    /// Tenant key file: checkpoints are written encrypted with it, and encrypted ones read
    /// [default: tenant.key in $THAW_KEY_DIR or ~/.config/thaw/keys, when it exists].
    #[arg(long, value_name = "FILE")]
    pub tenant_key: Option<PathBuf>,
}

impl KeyArgs {
    /// Opens store `spec` with the tenant key found as for `--tenant-key`, if any.
    pub fn open_store(&self, spec: &str) -> anyhow::Result<thaw_store::Store> {
        crate::tenant::open_store_with_tenant_key(spec, self.tenant_key.as_deref())
    }

    /// What manifests must pass to be read.
    pub fn trust(&self) -> anyhow::Result<ManifestTrust> {
        Ok(keys::resolve_trust(
            &self.trust,
            self.insecure_unsigned,
            default_key_dir().as_deref(),
        )?)
    }

    /// The key checkpoints are signed with (`None`: unsigned, on --insecure-unsigned).
    pub fn signing_key(&self) -> anyhow::Result<Option<SigningKey>> {
        Ok(keys::resolve_signing_key(
            self.signing_key.as_deref(),
            self.insecure_unsigned,
            default_key_dir().as_deref(),
        )?)
    }

    /// The store's write options with this signing key, trusting parents as [`Self::trust`]
    /// does (and the signing key's own).
    pub fn write_options(&self) -> anyhow::Result<thaw_store::WriteOptions> {
        let signing_key = self.signing_key()?;
        let trust = keys::resolve_trust(
            &self.trust,
            self.insecure_unsigned,
            default_key_dir().as_deref(),
        );
        let parent_trust = match trust {
            Ok(t) => t,
            // A writer with a key and no trust file still trusts its own key's checkpoints.
            Err(keys::KeyFileError::NoTrust { .. }) if signing_key.is_some() => {
                ManifestTrust::Keys(Vec::new())
            }
            Err(e) => return Err(e.into()),
        };
        Ok(thaw_store::WriteOptions {
            signing_key,
            parent_trust,
            ..Default::default()
        })
    }
}

/// The key directory a command uses without flags.
pub fn key_dir() -> anyhow::Result<PathBuf> {
    default_key_dir().context("no key directory: set THAW_KEY_DIR or HOME")
}

/// `thaw keygen [--dir DIR] [--tenant]`: a new signing key pair, and with `tenant` a tenant key
/// (checkpoints written with it in the directory are encrypted).
pub fn keygen(dir: Option<&Path>, tenant: bool) -> anyhow::Result<()> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => key_dir()?,
    };
    if tenant {
        let path = dir.join(thaw_store::tenant_key::TENANT_KEY_FILE);
        let key = thaw_store::tenant_key::write_new_tenant_key(&path)?;
        println!(
            "tenant key {} written to {} (0600): checkpoints are encrypted with it; copy it to \
             the hosts that restore them, never to block servers",
            key.id(),
            path.display()
        );
        if dir.join(keys::SIGNING_KEY_FILE).exists() {
            return Ok(());
        }
    }
    let public = keys::generate(&dir)?;
    println!(
        "signing key {} written to {} (0600); its public key, to trust on restore hosts: {}\n{}",
        key_id(&public),
        dir.join(keys::SIGNING_KEY_FILE).display(),
        dir.join(keys::PUBLIC_KEY_FILE).display(),
        encode_public_key(&public).trim_end()
    );
    Ok(())
}
