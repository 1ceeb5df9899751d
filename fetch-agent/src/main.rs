//! `thaw-fetch-agent`: the fetch agent on its own (the same flags as `thaw agent`).

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(name = "thaw-fetch-agent", version, about = "thaw's fetch agent")]
struct Cli {
    #[command(flatten)]
    args: fetch_agent::cli::Args,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Cli::parse().args;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.into())
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(fetch_agent::cli::run(args))
}
