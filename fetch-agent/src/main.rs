//! `thaw-fetch-agent`: the fetch agent on its own (the same flags as `thaw agent`).

use clap::Parser;

#[derive(Parser)]
#[command(name = "thaw-fetch-agent", version, about = "thaw's fetch agent")]
struct Cli {
    #[command(flatten)]
    args: fetch_agent::cli::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    fetch_agent::cli::run(Cli::parse().args).await
}
