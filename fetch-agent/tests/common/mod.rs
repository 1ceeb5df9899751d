//! Shared by the agent's tests: checkpoints of known memory in a local
//! directory store, and an agent serving them in this process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fetch_agent::fetch::FetchConfig;
use fetch_agent::policy::Config;
use fetch_agent::source::BlockSource;
use fetch_agent::{Agent, AgentConfig};
use thaw_format::CheckpointId;
use thaw_store::{write_checkpoint, MemoryRegion, Store, WriteOptions};

/// Memory of `pages` pages: every fourth run of 8 pages zero, the rest a
/// pattern unique per page (so a misplaced page is caught).
pub fn memory(pages: usize) -> Vec<u8> {
    let mut m = vec![0u8; pages * 4096];
    for p in 0..pages {
        if (p / 8) % 4 == 3 {
            continue;
        }
        for (i, b) in m[p * 4096..(p + 1) * 4096].iter_mut().enumerate() {
            *b = ((p * 31 + i / 64) % 251) as u8 + 1;
        }
    }
    m
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store_spec: String,
    pub id: CheckpointId,
    pub memory: Vec<u8>,
    pub blocks: usize,
}

impl Fixture {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// Path of the checkpoint's first segment object.
    pub fn segment(&self) -> PathBuf {
        Path::new(&self.store_spec)
            .join("checkpoints")
            .join(self.id.as_str())
            .join("segment-000000")
    }
}

/// `bytes` of pseudo-random memory: incompressible, so every block is
/// stored at its full size.
pub fn incompressible(bytes: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..bytes / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

pub fn checkpoint(pages: usize) -> Fixture {
    checkpoint_of(memory(pages))
}

/// A checkpoint of `memory` in a local-directory store.
/// The key fixtures are signed with; agents started here trust it.
pub fn signing_key() -> thaw_format::signature::SigningKey {
    thaw_format::signature::SigningKey::from_bytes(&[0x42; 32])
}

pub fn trust() -> thaw_format::ManifestTrust {
    thaw_format::ManifestTrust::Keys(vec![signing_key().verifying_key()])
}

pub fn checkpoint_of(memory: Vec<u8>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store_spec = store_dir.to_str().unwrap().to_owned();
    let store = Store::open(&store_spec).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let summary = rt
        .block_on(write_checkpoint(
            &store,
            &[MemoryRegion {
                guest_phys_addr: 0,
                bytes: &memory,
            }],
            b"state".to_vec(),
            &WriteOptions {
                signing_key: Some(signing_key()),
                ..WriteOptions::default()
            },
        ))
        .unwrap();
    Fixture {
        dir,
        store_spec,
        id: summary.id,
        memory,
        blocks: summary.blocks,
    }
}

pub struct Running {
    pub agent: Arc<Agent>,
    pub runtime: tokio::runtime::Runtime,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An agent in this process listening on the fixture's socket.
pub fn start_agent(
    fx: &Fixture,
    policy: Config,
    block_servers: Vec<Arc<dyn BlockSource>>,
    trace_dir: Option<PathBuf>,
) -> Running {
    start_agent_on(runtime(), fx, policy, block_servers, trace_dir)
}

/// As [`start_agent`], on a runtime made beforehand (block-server sources
/// must be created inside it).
pub fn start_agent_on(
    runtime: tokio::runtime::Runtime,
    fx: &Fixture,
    policy: Config,
    block_servers: Vec<Arc<dyn BlockSource>>,
    trace_dir: Option<PathBuf>,
) -> Running {
    let agent = Agent::new(
        AgentConfig {
            store: Some(fx.store_spec.clone()),
            allowed_stores: Vec::new(),
            allowed_uids: Vec::new(),
            checkpoint: Some(fx.id.clone()),
            trust: trust(),
            block_servers,
            policy,
            fetch: FetchConfig {
                source_timeout: Duration::from_millis(500),
                ..FetchConfig::default()
            },
            cache_bytes: 256 << 20,
            trace_dir,
        },
        runtime.handle().clone(),
    );
    let listener = std::os::unix::net::UnixListener::bind(fx.socket()).unwrap();
    let a = agent.clone();
    std::thread::spawn(move || a.serve(listener));
    Running { agent, runtime }
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
