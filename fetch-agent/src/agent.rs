//! The agent: accepts VMM connections on a Unix socket, one restore each,
//! many at once. Per connection it receives the hand-off, opens the
//! checkpoint it names (or the one given on the command line, for
//! Firecracker's bare hand-off), and serves the restore on the connection's
//! own thread until the VMM closes the connection. A restore that fails
//! (the checkpoint cannot be opened, a block no source delivers) writes its
//! reason on the connection ([`crate::hangup`]) before hanging up.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thaw_format::{BlockOpener, CheckpointId, ManifestTrust};
use thaw_store::reader::open_manifest;
use thaw_store::Store;
use tokio::runtime::Handle;

use crate::cache::BlockCache;
use crate::fetch::{Checkpoint, FetchConfig, Fetcher};
use crate::handoff::{self, ReceiveError};
use crate::install::{GuestLayout, Installer};
use crate::metrics::Metrics;
use crate::policy;
use crate::restore::{AgentContext, RestoreDriver, RestoreError, RestoreReport};
use crate::source::{BlockSource, ObjectStoreSource};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error("the hand-off names no {0} and the agent has no default (--{0})")]
    Missing(&'static str),
    #[error("checkpoint id: {0}")]
    BadCheckpoint(String),
    #[error("opening store {spec}: {reason}")]
    Store { spec: String, reason: String },
    #[error(
        "the hand-off names store {spec}, which this agent does not serve (--store, --allow-store)"
    )]
    StoreNotAllowed { spec: String },
    #[error("no source could give a trusted manifest of checkpoint {id}: {errors}")]
    Manifest { id: CheckpointId, errors: String },
    #[error("hand-off: {0}")]
    Handoff(#[from] thaw_format::handoff::HandoffError),
    #[error(
        "checkpoint {id}: {source} (the agent's --tenant-key, or tenant.key in its key directory)"
    )]
    TenantKey {
        id: CheckpointId,
        #[source]
        source: thaw_format::CryptError,
    },
    #[error("the hand-off maps {handed} bytes in pages of {handed_page}, checkpoint {id} has {stored} bytes in pages of {stored_page}")]
    Mismatch {
        id: CheckpointId,
        handed: u64,
        handed_page: u64,
        stored: u64,
        stored_page: u64,
    },
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("accepting connections: {0}")]
    Accept(std::io::Error),
}

pub struct AgentConfig {
    /// The store of hand-offs that name none (Firecracker's form).
    pub store: Option<String>,
    /// Further stores a hand-off may name. A hand-off naming any other store
    /// is refused: a VMM must not make the agent read memory (with the
    /// agent's credentials) from wherever it likes.
    pub allowed_stores: Vec<String>,
    /// Users whose processes may hand memory over; empty: only the agent's
    /// own user.
    pub allowed_uids: Vec<u32>,
    /// The checkpoint of hand-offs that name none.
    pub checkpoint: Option<CheckpointId>,
    /// What a manifest must pass when the hand-off pins no digest (Firecracker's
    /// form): trusted signing keys, or explicitly none. A hand-off that pins a
    /// digest (thaw's VMM verified that manifest) is served from exactly it.
    pub trust: ManifestTrust,
    /// Sources tried before the object store, in order (block servers).
    pub block_servers: Vec<Arc<dyn BlockSource>>,
    pub policy: policy::Config,
    pub fetch: FetchConfig,
    pub cache_bytes: u64,
    pub trace_dir: Option<PathBuf>,
}

/// A checkpoint the agent opened, with the manifest object it came from, so
/// that each later restore checks it under its own trust.
struct OpenedCheckpoint {
    object: bytes::Bytes,
    checkpoint: Arc<Checkpoint>,
}

pub struct Agent {
    ctx: Arc<AgentContext>,
    default_store: Option<String>,
    default_checkpoint: Option<CheckpointId>,
    trust: ManifestTrust,
    block_servers: Vec<Arc<dyn BlockSource>>,
    /// Location keys ([`Store::location_key`]) of the stores hand-offs may name.
    allowed_stores: HashSet<String>,
    allowed_uids: Vec<u32>,
    /// Opened stores by location key.
    stores: Mutex<HashMap<String, Arc<ObjectStoreSource>>>,
    checkpoints: Mutex<HashMap<(String, CheckpointId), OpenedCheckpoint>>,
    next_restore: AtomicU64,
    /// How long one source may take to give a manifest before the next is asked.
    manifest_timeout: std::time::Duration,
}

/// A manifest is one read of at most a few MiB: a source gets this many block timeouts for it
/// (a slow store still answers in time, a dead block server does not stall a restore's start).
const MANIFEST_TIMEOUT_FACTOR: u32 = 4;

impl Agent {
    pub fn new(config: AgentConfig, runtime: Handle) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let cache = BlockCache::new(config.cache_bytes);
        let manifest_timeout = config.fetch.source_timeout * MANIFEST_TIMEOUT_FACTOR;
        let fetcher = Fetcher::new(cache, config.fetch, metrics.clone());
        Arc::new(Agent {
            ctx: Arc::new(AgentContext {
                fetcher,
                metrics,
                runtime,
                policy: config.policy,
                trace_dir: config.trace_dir,
            }),
            allowed_stores: config
                .store
                .iter()
                .chain(&config.allowed_stores)
                .map(|spec| Store::location_key(spec))
                .collect(),
            allowed_uids: if config.allowed_uids.is_empty() {
                // SAFETY: geteuid has no preconditions and cannot fail.
                vec![unsafe { libc::geteuid() }]
            } else {
                config.allowed_uids
            },
            default_store: config.store,
            default_checkpoint: config.checkpoint,
            trust: config.trust,
            block_servers: config.block_servers,
            stores: Mutex::new(HashMap::new()),
            checkpoints: Mutex::new(HashMap::new()),
            next_restore: AtomicU64::new(1),
            manifest_timeout,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    pub fn cache(&self) -> &Arc<BlockCache> {
        self.ctx.cache()
    }

    /// Connects to every block server now, so the first restore does not
    /// wait for QUIC and TLS handshakes. A server that cannot be reached is
    /// reported and tried again by the first fetch.
    pub async fn connect(&self) {
        for source in &self.block_servers {
            if let Err(e) = source.connect().await {
                tracing::warn!("connecting ahead: {e}");
            }
        }
    }

    /// Serves hand-offs naming `spec` from `store` instead of opening the
    /// spec: for stores that cannot be named by a string (an in-memory
    /// store, or one wrapped to emulate a link). Hand-offs may name it.
    pub fn register_store(&self, spec: &str, store: Store) {
        let source = Arc::new(ObjectStoreSource::new(store));
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.insert(Store::location_key(spec), source);
    }

    /// Prometheus text of the agent's metrics.
    pub fn render_metrics(&self) -> String {
        self.ctx.metrics.render(self.ctx.cache())
    }

    /// Accepts connections forever, one thread per restore.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> Result<(), AgentError> {
        for conn in listener.incoming() {
            let conn = conn.map_err(AgentError::Accept)?;
            match crate::local_socket::peer_uid(&conn) {
                Ok(uid) if self.allowed_uids.contains(&uid) => {}
                Ok(uid) => {
                    tracing::warn!(
                        "refused a hand-off from uid {uid}: not an allowed user (--allow-uid)"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!("refused a hand-off whose sender is unknown: {e}");
                    continue;
                }
            }
            let this = self.clone();
            let spawned = std::thread::Builder::new()
                .name("thaw-restore".into())
                .spawn(move || {
                    if let Err(e) = this.handle(conn) {
                        tracing::error!("restore: {e}");
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a restore thread: {e}");
            }
        }
        Ok(())
    }

    /// Serves one VMM connection to its end. On failure the VMM is told why
    /// on the connection before it closes.
    pub fn handle(self: &Arc<Self>, conn: UnixStream) -> Result<RestoreReport, AgentError> {
        let result = self.serve_connection(&conn);
        if let Err(e) = &result {
            report_failure(&conn, e);
        }
        result
    }

    fn serve_connection(self: &Arc<Self>, conn: &UnixStream) -> Result<RestoreReport, AgentError> {
        let (handoff, uffd) = handoff::receive(conn)?;
        let spec = handoff
            .store
            .clone()
            .or_else(|| self.default_store.clone())
            .ok_or(AgentError::Missing("store"))?;
        let id = match handoff.checkpoint.as_deref() {
            Some(id) => id
                .parse::<CheckpointId>()
                .map_err(|e| AgentError::BadCheckpoint(e.to_string()))?,
            None => self
                .default_checkpoint
                .clone()
                .ok_or(AgentError::Missing("checkpoint"))?,
        };
        let trust = match handoff.digest()? {
            Some(digest) => ManifestTrust::Digest(digest),
            None => self.trust.clone(),
        };
        let opening = std::time::Instant::now();
        let checkpoint = self.checkpoint(&spec, &id, &trust)?;
        tracing::debug!(checkpoint = %id, "opened in {:?}", opening.elapsed());
        let m = &checkpoint.manifest;
        let handed_page = handoff.mappings[0].page_size;
        let pages_agree = handoff.mappings.iter().all(|r| r.page_size == m.page_size);
        if handoff.memory_bytes() != m.total_bytes() || !pages_agree {
            return Err(AgentError::Mismatch {
                id,
                handed: handoff.memory_bytes(),
                handed_page,
                stored: m.total_bytes(),
                stored_page: m.page_size,
            });
        }
        let n = self.next_restore.fetch_add(1, Ordering::Relaxed);
        let name = match &handoff.vm_id {
            Some(vm)
                if vm
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                format!("{vm}-{n}")
            }
            _ => format!("restore-{n}-{id}"),
        };
        let installer = Installer::new(uffd, GuestLayout::new(&handoff, m.page_size));
        tracing::info!(restore = %name, checkpoint = %id, store = %spec, "restore started");
        let metrics = &self.ctx.metrics;
        metrics.restores_started.fetch_add(1, Ordering::Relaxed);
        metrics.restores_active.fetch_add(1, Ordering::Relaxed);
        let result = RestoreDriver::new(name, checkpoint, installer, self.ctx.clone())
            .and_then(|driver| driver.serve(conn));
        metrics.restores_active.fetch_sub(1, Ordering::Relaxed);
        Ok(result?)
    }

    /// The checkpoint `id` of store `spec`, its manifest passing `trust`:
    /// opened once and shared by every restore of it, and checked against each
    /// restore's trust. A source whose manifest does not pass is skipped.
    fn checkpoint(
        &self,
        spec: &str,
        id: &CheckpointId,
        trust: &ManifestTrust,
    ) -> Result<Arc<Checkpoint>, AgentError> {
        let key = (spec.to_owned(), id.clone());
        let mut errors = Vec::new();
        if let Some(opened) = self.lock_checkpoints().get(&key) {
            // Decoded and validated when it was opened: only this restore's
            // trust is left to check.
            let passed =
                thaw_format::signature::split(&opened.object).and_then(|split| trust.check(&split));
            match passed {
                Ok(_) => return Ok(opened.checkpoint.clone()),
                Err(e) => errors.push(format!("the manifest opened before: {e}")),
            }
        }
        let mut sources = self.block_servers.clone();
        let store = self.object_store(spec)?;
        sources.push(store.clone());
        let mut found = None;
        for s in &sources {
            let opened = self
                .ctx
                .runtime
                // The timer is made inside the runtime (block_on's future runs there).
                .block_on(async {
                    tokio::time::timeout(self.manifest_timeout, s.manifest_object(id)).await
                })
                .map_err(|_| {
                    format!(
                        "{}: no manifest within {:?}",
                        s.name(),
                        self.manifest_timeout
                    )
                })
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|object| {
                    let verified = open_manifest(id, &object, trust)
                        .map_err(|e| format!("{}: {e}", s.name()))?;
                    Ok((object, verified))
                });
            match opened {
                Ok(v) => {
                    found = Some(v);
                    break;
                }
                Err(e) => {
                    tracing::warn!("manifest of {id}: {e}");
                    errors.push(e);
                }
            }
        }
        let (object, verified) = found.ok_or_else(|| AgentError::Manifest {
            id: id.clone(),
            errors: errors.join("; "),
        })?;
        let manifest = Arc::new(verified.manifest);
        // The key comes with the store handle: the agent's own, or the one
        // a VMM registered for its in-process agent.
        let opener =
            BlockOpener::for_manifest(&manifest, store.tenant_keys()).map_err(|source| {
                AgentError::TenantKey {
                    id: id.clone(),
                    source,
                }
            })?;
        let checkpoint = Arc::new(Checkpoint {
            id: id.clone(),
            manifest,
            opener,
            sources,
        });
        self.lock_checkpoints().insert(
            key,
            OpenedCheckpoint {
                object,
                checkpoint: checkpoint.clone(),
            },
        );
        Ok(checkpoint)
    }

    fn lock_checkpoints(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, CheckpointId), OpenedCheckpoint>> {
        self.checkpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The source of store `spec`, opened on first use, if it is one
    /// hand-offs may name. Opening never creates a directory.
    fn object_store(&self, spec: &str) -> Result<Arc<ObjectStoreSource>, AgentError> {
        let key = Store::location_key(spec);
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = stores.get(&key) {
            return Ok(s.clone());
        }
        if !self.allowed_stores.contains(&key) {
            return Err(AgentError::StoreNotAllowed {
                spec: spec.to_owned(),
            });
        }
        let store = Store::open_existing(spec).map_err(|e| AgentError::Store {
            spec: spec.to_owned(),
            reason: e.to_string(),
        })?;
        let source = Arc::new(ObjectStoreSource::new(store));
        stores.insert(key, source.clone());
        Ok(source)
    }
}

/// Tells the VMM why its restore ends, best effort: a VMM that hung up
/// already, or never reads, is no error.
fn report_failure(conn: &UnixStream, e: &AgentError) {
    let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    if let Err(w) = (&*conn).write_all(&crate::hangup::encode(&e.to_string())) {
        tracing::debug!("telling the VMM why the restore ends: {w}");
    }
}
