//! `thaw block-server`: a QUIC block server in front of a store, with its
//! Prometheus endpoint (`--metrics`) and a graceful drain on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use thaw_block_protocol::server::{BlockServer, Drained};
use thaw_block_protocol::tls::{self, DevPki, Identity};
use thaw_store::Store;

use thaw_format::units::{parse_duration, parse_size};

#[derive(clap::Args, Debug)]
pub struct BlockServerArgs {
    /// Store to serve: a directory, file://DIR or s3://BUCKET/PREFIX.
    #[arg(long)]
    pub store: String,
    /// UDP address to listen on: loopback unless told otherwise (a fleet's
    /// block servers listen on their host's address, e.g. 0.0.0.0:4433).
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,
    /// Threads serving connections (default: one per CPU). One connection is
    /// served by one thread at a time, so more threads help many clients, not one.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Memory cache of stored blocks.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Server certificate chain (PEM).
    #[arg(long, requires = "key", conflicts_with = "dev_pki")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, conflicts_with = "no_client_auth")]
    pub client_ca: Option<PathBuf>,
    /// Serve any client, with or without a certificate. Whoever reaches the
    /// port can then read every checkpoint of the store.
    #[arg(long, requires = "cert")]
    pub no_client_auth: bool,
    /// Development mode: use (creating if absent) a self-signed CA, server and
    /// client certificate in DIR, with mutual TLS.
    #[arg(long)]
    pub dev_pki: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address; `--metrics`
    /// alone serves them on 127.0.0.1:9465.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9465")]
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM (or ^C), how long requests in flight may take to finish
    /// once no new connections are taken; a second signal ends at once.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

pub async fn run(args: BlockServerArgs) -> anyhow::Result<()> {
    let store =
        Store::open(&args.store).with_context(|| format!("opening store {}", args.store))?;
    let config = match (&args.dev_pki, &args.cert, &args.key) {
        (Some(dir), _, _) => {
            let pki = DevPki::load_or_generate(dir)?;
            tls::server_config(&pki.server, Some(&pki.ca_pem))?
        }
        (None, Some(cert), Some(key)) => {
            if args.client_ca.is_none() && !args.no_client_auth {
                bail!(
                    "--cert and --key without --client-ca would serve clients without \
                     certificates: give --client-ca CA.pem, or --no-client-auth to mean it"
                );
            }
            let ca = args
                .client_ca
                .as_deref()
                .map(tls::read_pem_file)
                .transpose()?;
            tls::server_config(&Identity::from_files(cert, key)?, ca.as_deref())?
        }
        _ => bail!("give --cert and --key (optionally --client-ca), or --dev-pki DIR"),
    };
    let server = BlockServer::new(store, args.cache_size);
    let running = server
        .serve(args.listen, config)
        .with_context(|| format!("binding {}", args.listen))?;
    if let Some(addr) = args.metrics {
        let s = server.clone();
        let bound =
            thaw_store::prometheus::serve_metrics(addr, Arc::new(move || s.render_metrics()))
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        // Scripts and tests read the bound address from this line.
        println!("block server metrics on http://{bound}/metrics");
    }
    // Scripts and tests read the bound address (the port may be 0) from this line.
    println!("block server listening on {}", running.local_addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let s = server.stats();
    let in_flight = || s.streams_active.load(Ordering::Relaxed);
    let drained = tokio::select! {
        d = running.drain(args.drain_timeout) => d,
        _ = term.recv() => Drained::CutShort { streams: in_flight() },
        _ = tokio::signal::ctrl_c() => Drained::CutShort { streams: in_flight() },
    };
    tracing::info!(
        requests = s.requests.load(Ordering::Relaxed),
        store_reads = s.store_reads.load(Ordering::Relaxed),
        "block server stopped"
    );
    match drained {
        Drained::Finished => Ok(()),
        Drained::CutShort { streams } => {
            bail!("stopped before {streams} requests in flight were answered (--drain-timeout, or a second signal)")
        }
    }
}
