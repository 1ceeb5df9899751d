//! `thaw agent`: the fetch agent's command line and its entry point, run by
//! the `thaw` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use thaw_format::CheckpointId;

use crate::agent::{Agent, AgentConfig};
use crate::fetch::FetchConfig;
use crate::policy::{Config, StreamConfig};
use crate::source::block_server::BlockServerSource;
use crate::source::server_list;
use crate::source::tier::{BlockServerTier, Connector};
use crate::source::BlockSource;
use thaw_format::units::{parse_duration, parse_size};

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
    /// A further store hand-offs may name (repeatable). A hand-off naming a
    /// store neither here nor in --store is refused.
    #[arg(long = "allow-store")]
    pub allowed_stores: Vec<String>,
    /// Trust checkpoints signed by the keys in this file (repeatable), for
    /// hand-offs that pin no manifest digest (Firecracker's form) [default:
    /// every *.pub file in $THAW_KEY_DIR or ~/.config/thaw/keys]. thaw's VMM
    /// pins the digest of the manifest it verified: the agent serves exactly
    /// that manifest, whichever source gives it.
    #[arg(long = "trust", value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// Serve unsigned (or any) checkpoints to hand-offs that pin no digest.
    /// Insecure: whoever can write the store chooses the guest's memory.
    #[arg(long, conflicts_with = "trust")]
    pub insecure_unsigned: bool,
    /// A user (uid) whose processes may hand memory over (repeatable)
    /// [default: the agent's own user]. Others are refused by their
    /// credentials on the socket (SO_PEERCRED).
    #[arg(long = "allow-uid")]
    pub allowed_uids: Vec<u32>,
    /// Group (gid) that may connect to the socket: the socket becomes 0660 in
    /// this group instead of 0600.
    #[arg(long)]
    pub socket_group: Option<u32>,
    /// Block server (HOST:PORT) to fetch from over QUIC; repeat for more.
    /// With several, each block is asked of its home server first (by
    /// rendezvous hashing of its hash), then its second choice, then the
    /// rest; then the object store.
    #[arg(long = "block-server", requires = "ca")]
    pub block_servers: Vec<String>,
    /// File listing the block servers, one HOST:PORT per line (`#`
    /// comments), reloaded when it changes: only the blocks of a server
    /// that left move to another.
    #[arg(long, requires = "ca", conflicts_with_all = ["block_servers", "block_servers_dns"])]
    pub block_servers_file: Option<PathBuf>,
    /// DNS name (NAME:PORT) whose addresses are the block servers,
    /// re-resolved every --block-servers-refresh.
    #[arg(long, requires = "ca", conflicts_with = "block_servers")]
    pub block_servers_dns: Option<String>,
    /// How often the block servers file is checked for changes, or the DNS
    /// name re-resolved.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub block_servers_refresh: Duration,
    /// CA certificate (PEM) the block servers' certificates are signed by.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with the block servers.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with the block servers.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Tenant key file that opens encrypted checkpoints [default: tenant.key
    /// in $THAW_KEY_DIR, else in ~/.config/thaw/keys, when it exists].
    #[arg(long)]
    pub tenant_key: Option<PathBuf>,
    /// Blocks after a faulting one (in the checkpoint's prefetch order) to
    /// prefetch [default: the policy's, 4].
    #[arg(long)]
    pub prefetch_window: Option<usize>,
    /// Cap background streaming at this many stored bytes per second
    /// (e.g. 100MiB); uncapped by default (demand fetches still go first).
    #[arg(long, value_parser = parse_size, conflicts_with = "no_stream")]
    pub stream_bandwidth: Option<u64>,
    /// Most streaming fetches in flight per restore [default: 512; the
    /// window adapts below it to the latency fetches see].
    #[arg(long, conflicts_with = "no_stream")]
    pub stream_in_flight: Option<usize>,
    /// Fetch only on faults and prefetches: no background streaming.
    #[arg(long)]
    pub no_stream: bool,
    /// Leave zero pages to faults instead of installing them ahead.
    #[arg(long)]
    pub no_zero_ahead: bool,
    /// Profiling restore: nothing is installed ahead of a fault and a fault
    /// installs only its own page (its block is still fetched once and kept
    /// in the host cache), so every first touch faults and `--trace-dir`
    /// records a complete profile for `thaw checkpoint relayout`.
    #[arg(
        long,
        conflicts_with_all = ["prefetch_window", "stream_bandwidth", "stream_in_flight"]
    )]
    pub profile: bool,
    /// Bound of the host cache of decoded blocks, shared by all restores.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Write each restore's fault trace into this directory.
    #[arg(long)]
    pub trace_dir: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// How long one source may take for one block before the next is tried
    /// (longer for a source observed to be slow). A source that answers
    /// nothing for this long is skipped until a background probe reaches it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub source_timeout: Duration,
    /// Threads of the agent's async runtime (QUIC, fetches, installs of
    /// fetched blocks). One keeps the hand-overs of a demand fetch on one
    /// thread; more suit a host restoring many VMs at once.
    #[arg(long, default_value_t = DEFAULT_RUNTIME_THREADS,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
}

/// The agent's runtime threads unless told otherwise: one. A demand fetch
/// passes between several tasks (the fetch, both QUIC connection drivers,
/// the endpoint); on one thread each hand-over is a local wake-up, across
/// threads it is a futex wake of a parked thread. Measured with `thaw-bench
/// fault-latency` (which runs its agents on this setting), three rounds
/// alternating: network p50 minus the floor 130-135 µs with one thread,
/// 188-210 µs with two; `thaw-bench restore` (thaw, 4 workloads over rack
/// and region) overhead sum 1.08 s with one, 1.14 s with two. A host
/// restoring many VMs at once may want more (`--threads`).
pub const DEFAULT_RUNTIME_THREADS: u16 = 1;

impl Args {
    /// The agent's configuration from the flags. Runs inside a tokio
    /// runtime (the block servers' QUIC endpoints live on it).
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let block_servers = self.block_server_tier()?.into_iter().collect();
        // The stores hand-offs may name are compared by location, and a
        // directory's is its canonical path: make sure they exist now (a bad
        // location is reported here, before any VMM connects).
        for spec in std::iter::once(&self.store).chain(&self.allowed_stores) {
            thaw_store::Store::open(spec).with_context(|| format!("opening store {spec}"))?;
        }
        if let Some(dir) = &self.trace_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating trace directory {}", dir.display()))?;
        }
        let key_dir = thaw_store::keys::default_key_dir();
        let trust = match thaw_store::keys::resolve_trust(
            &self.trust,
            self.insecure_unsigned,
            key_dir.as_deref(),
        ) {
            Ok(trust) => trust,
            // Hand-offs pinning a digest are still served; others are refused
            // one by one, saying why.
            Err(thaw_store::keys::KeyFileError::NoTrust { dir }) => {
                tracing::warn!("no trusted signing key in {dir}: only hand-offs that pin a manifest digest (thaw's VMM) can be served");
                thaw_format::ManifestTrust::Keys(Vec::new())
            }
            Err(e) => return Err(e.into()),
        };
        Ok(AgentConfig {
            store: Some(self.store.clone()),
            trust,
            allowed_stores: self.allowed_stores.clone(),
            allowed_uids: self.allowed_uids.clone(),
            checkpoint: self.checkpoint.clone(),
            block_servers,
            policy: self.policy(),
            fetch: FetchConfig {
                source_timeout: self.source_timeout,
                stream_slots: self
                    .stream_in_flight
                    .unwrap_or(FetchConfig::default().stream_slots),
                ..FetchConfig::default()
            },
            cache_bytes: self.cache_size,
            trace_dir: self.trace_dir.clone(),
        })
    }
}

impl Args {
    /// The tier of block servers the flags name, watching the file or DNS
    /// name for changes; `None` without block servers.
    fn block_server_tier(&self) -> anyhow::Result<Option<Arc<dyn BlockSource>>> {
        if self.block_servers.is_empty()
            && self.block_servers_file.is_none()
            && self.block_servers_dns.is_none()
        {
            return Ok(None);
        }
        let ca = self.ca.clone().context("block servers need --ca")?;
        let identity = self.cert.clone().zip(self.key.clone());
        // Certificates of servers found by DNS name that name.
        let server_name = self
            .block_servers_dns
            .as_deref()
            .map(|n| n.rsplit_once(':').map_or(n, |(h, _)| h).to_owned());
        let connector: Connector = Box::new(move |spec: &str| {
            let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            BlockServerSource::connect_named(spec, server_name.as_deref(), &ca, identity)
                .map(|s| s.into_source())
                .map_err(|e| e.to_string())
        });
        let tier = BlockServerTier::new(connector, self.source_timeout);
        if let Some(path) = &self.block_servers_file {
            server_list::watch_file(tier.clone(), path.clone(), self.block_servers_refresh)
                .map_err(anyhow::Error::msg)?;
        } else if let Some(name) = &self.block_servers_dns {
            server_list::watch_dns(tier.clone(), name.clone(), self.block_servers_refresh)
                .map_err(anyhow::Error::msg)?;
        }
        if !self.block_servers.is_empty() {
            if let Some((spec, e)) = tier.set_servers(&self.block_servers).into_iter().next() {
                anyhow::bail!("block server {spec}: {e}");
            }
        }
        Ok(Some(tier))
    }

    /// The restore policy: the defaults, changed only where a flag says so
    /// (`--profile`: the profiling policy).
    pub fn policy(&self) -> Config {
        if self.profile {
            return Config::profiling();
        }
        let defaults = Config::default();
        let stream = if self.no_stream {
            None
        } else {
            let base = defaults.stream.unwrap_or(StreamConfig {
                bytes_per_sec: None,
                max_in_flight: crate::policy::DEFAULT_STREAM_IN_FLIGHT,
            });
            Some(StreamConfig {
                bytes_per_sec: self.stream_bandwidth.or(base.bytes_per_sec),
                max_in_flight: self.stream_in_flight.unwrap_or(base.max_in_flight),
            })
        };
        Config {
            prefetch_window: self.prefetch_window.unwrap_or(defaults.prefetch_window),
            stream,
            zero_fill_ahead: defaults.zero_fill_ahead && !self.no_zero_ahead,
            ..defaults
        }
    }
}

/// Runs the agent until the accept loop fails or the process is interrupted.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let agent = Agent::new(args.config()?, tokio::runtime::Handle::current());
    // With a tenant key, the stores hand-offs may name are opened now with
    // it: the agent decrypts their encrypted checkpoints.
    if let Some(key) = thaw_store::tenant_key::load_tenant_key(args.tenant_key.as_deref())? {
        tracing::info!("tenant key {} opens encrypted checkpoints", key.id());
        for spec in std::iter::once(&args.store).chain(&args.allowed_stores) {
            let store = thaw_store::Store::open_existing(spec)
                .with_context(|| format!("opening store {spec}"))?;
            agent.register_store(spec, store.with_tenant_key(&key));
        }
    }
    agent.connect().await;
    if let Some(addr) = args.metrics {
        let bound = crate::http::serve_metrics(addr, agent.clone())
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let listener = crate::local_socket::bind_private(&args.socket, args.socket_group)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["thaw-agent", "--socket", "/tmp/s", "--store", "memory://"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn no_flags_give_exactly_the_policy_defaults() {
        // `thaw-bench restore`'s `thaw` strategy is Config::default(): the
        // agent a user starts must be the same.
        assert_eq!(parse(&[]).policy(), Config::default());
    }

    #[test]
    fn flags_change_only_what_they_name() {
        let p = parse(&["--prefetch-window", "9", "--stream-bandwidth", "10MiB"]).policy();
        assert_eq!(p.prefetch_window, 9);
        let s = p.stream.unwrap();
        assert_eq!(s.bytes_per_sec, Some(10 << 20));
        assert_eq!(
            s.max_in_flight,
            Config::default().stream.unwrap().max_in_flight
        );
        let p = parse(&["--no-stream", "--no-zero-ahead"]).policy();
        assert_eq!((p.stream, p.zero_fill_ahead), (None, false));
        assert!(Cli::try_parse_from([
            "a",
            "--socket",
            "s",
            "--store",
            "x",
            "--no-stream",
            "--stream-bandwidth",
            "1MiB"
        ])
        .is_err());
    }

    #[test]
    fn runtime_threads_default_to_one_and_zero_is_refused() {
        assert_eq!(parse(&[]).threads, DEFAULT_RUNTIME_THREADS);
        assert_eq!(parse(&["--threads", "3"]).threads, 3);
        let argv = ["a", "--socket", "s", "--store", "x", "--threads", "0"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn profile_gives_the_profiling_policy_and_refuses_prefetch_and_stream_flags() {
        let p = parse(&["--profile", "--trace-dir", "/tmp/traces"]).policy();
        assert_eq!(p, Config::profiling());
        assert_eq!(p.install, crate::policy::InstallScope::Page);
        // Flags that agree with it are fine.
        assert_eq!(
            parse(&["--profile", "--no-stream", "--no-zero-ahead"]).policy(),
            Config::profiling()
        );
        for flag in [
            ["--prefetch-window", "2"],
            ["--stream-bandwidth", "1MiB"],
            ["--stream-in-flight", "8"],
        ] {
            let mut argv = vec!["a", "--socket", "s", "--store", "x", "--profile"];
            argv.extend_from_slice(&flag);
            assert!(Cli::try_parse_from(argv).is_err(), "{flag:?}");
        }
    }
}
