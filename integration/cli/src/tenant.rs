//! Opening a store with the tenant key a command finds: `--tenant-key PATH`,
//! else `tenant.key` in the key directory (`$THAW_KEY_DIR`, else
//! `~/.config/thaw/keys`) when it exists. With a key, checkpoints written
//! are encrypted and encrypted ones are read; without, checkpoints are
//! written in the clear.

use std::path::Path;

use anyhow::Context;
use thaw_store::tenant_key::load_tenant_key;
use thaw_store::Store;

/// Opens `spec` with the tenant key found as above, if any.
pub fn open_store_with_tenant_key(spec: &str, explicit: Option<&Path>) -> anyhow::Result<Store> {
    let store = Store::open(spec).with_context(|| format!("opening store {spec}"))?;
    Ok(match load_tenant_key(explicit)? {
        Some(key) => {
            tracing::info!("tenant key {} for store {spec}", key.id());
            store.with_tenant_key(&key)
        }
        None => store,
    })
}
