//! `thaw agent`: the fetch agent's command line, shared by the `thaw`
//! binary and the crate's own `thaw-fetch-agent` entry point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use storage_backend::CheckpointId;

use crate::agent::{Agent, AgentConfig};
use crate::block_server::BlockServerSource;
use crate::fetch::FetchConfig;
use crate::policy::{Config, StreamConfig};
use crate::source::BlockSource;
use storage_backend::units::{parse_duration, parse_size};

/// Serve restored VMs' page faults from locality blocks.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Unix socket on which VMMs hand over their userfaultfd.
    #[arg(long)]
    pub socket: PathBuf,
    /// Store of hand-offs that name none (Firecracker's form): a directory,
    /// file://DIR, or s3://BUCKET/PREFIX.
    #[arg(long)]
    pub store: String,
    /// Checkpoint of hand-offs that name none (Firecracker's form).
    #[arg(long)]
    pub checkpoint: Option<CheckpointId>,
    /// Block server (HOST:PORT) to fetch from over QUIC; repeat for more,
    /// tried in order, then the object store.
    #[arg(long = "block-server", requires = "ca")]
    pub block_servers: Vec<String>,
    /// CA certificate (PEM) the block servers' certificates are signed by.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with the block servers.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with the block servers.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Blocks after a faulting one (in the checkpoint's prefetch order) to prefetch.
    #[arg(long, default_value_t = 4)]
    pub prefetch_window: usize,
    /// Stream all remaining blocks in the background at up to this many
    /// stored bytes per second (e.g. 100MiB); off when absent.
    #[arg(long, value_parser = parse_size)]
    pub stream_bandwidth: Option<u64>,
    /// Bound of the host cache of decoded blocks, shared by all restores.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Write each restore's fault trace into this directory.
    #[arg(long)]
    pub trace_dir: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// How long one source may take for one block before the next is tried.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub source_timeout: Duration,
}

impl Args {
    /// The agent's configuration from the flags. Runs inside a tokio
    /// runtime (the block servers' QUIC endpoints live on it).
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let mut block_servers: Vec<Arc<dyn BlockSource>> = Vec::new();
        for spec in &self.block_servers {
            let ca = self.ca.as_deref().context("--block-server needs --ca")?;
            let identity = self.cert.as_deref().zip(self.key.as_deref());
            let source = BlockServerSource::connect(spec, ca, identity)
                .with_context(|| format!("block server {spec}"))?;
            block_servers.push(source.into_source());
        }
        if let Some(dir) = &self.trace_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating trace directory {}", dir.display()))?;
        }
        Ok(AgentConfig {
            store: Some(self.store.clone()),
            checkpoint: self.checkpoint.clone(),
            block_servers,
            policy: Config {
                prefetch_window: self.prefetch_window,
                stream: self.stream_bandwidth.map(|bytes_per_sec| StreamConfig {
                    bytes_per_sec,
                    max_in_flight: 4,
                }),
                ..Config::default()
            },
            fetch: FetchConfig {
                source_timeout: self.source_timeout,
                ..FetchConfig::default()
            },
            cache_bytes: self.cache_size,
            trace_dir: self.trace_dir.clone(),
        })
    }
}

/// Runs the agent until the accept loop fails or the process is interrupted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let agent = Agent::new(args.config()?, tokio::runtime::Handle::current());
    if let Some(addr) = args.metrics {
        let bound = crate::http::serve_metrics(addr, agent.clone())
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let listener = bind(&args.socket)?;
    tracing::info!("fetch agent listening on {}", args.socket.display());
    let serving = {
        let agent: Arc<Agent> = agent.clone();
        tokio::task::spawn_blocking(move || agent.serve(listener))
    };
    let result = tokio::select! {
        r = serving => r.context("accept loop")?.context("serving"),
        r = tokio::signal::ctrl_c() => r.context("waiting for ^C"),
    };
    let _ = std::fs::remove_file(&args.socket);
    result
}

/// Binds the socket, replacing a stale socket file left by a dead agent.
fn bind(path: &std::path::Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket",
            path.display()
        );
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another agent is listening on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))
}
