//! `thaw-linux-check probe`: asks a host (a guest) for an ICMP echo and its wall clock, from
//! inside a network namespace if given, and prints the result as one JSON line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::Ipv4Addr;
use std::time::Duration;
use thaw_linux_check::netns::NetNs;
use thaw_linux_check::probe::Prober;

#[derive(Parser)]
#[command(about = "Checks a Linux guest from the host over its network")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo and timestamp requests to ADDR; prints {"echo_ms", "clock_offset_ms"}.
    Probe {
        addr: Ipv4Addr,
        /// Probe from inside this network namespace (as `ip netns` names it).
        #[arg(long)]
        netns: Option<String>,
        /// Keep asking for an echo this long (seconds) before giving up.
        #[arg(long, default_value_t = 5.0)]
        wait: f64,
    },
}

fn probe(addr: Ipv4Addr, wait: Duration) -> Result<serde_json::Value> {
    let mut p = Prober::new(addr)?;
    let rtt = p.wait_for_echo(wait, Duration::from_millis(500))?;
    let clock = p.clock(Duration::from_secs(2))?;
    Ok(serde_json::json!({
        "addr": addr.to_string(),
        "echo_ms": rtt.as_secs_f64() * 1e3,
        "clock_offset_ms": clock.offset_ms,
    }))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { addr, netns, wait } => {
            let wait = Duration::from_secs_f64(wait);
            let result = match netns {
                None => probe(addr, wait)?,
                Some(name) => {
                    let ns = NetNs::existing(&name);
                    ns.run(move || probe(addr, wait))
                        .with_context(|| format!("entering network namespace {name}"))??
                }
            };
            println!("{result}");
        }
    }
    Ok(())
}
