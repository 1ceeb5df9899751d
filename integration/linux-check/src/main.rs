//! `thaw-linux-check scenario`: the real-guest scenario of `scripts/linux-check` (see
//! [`thaw_linux_check::scenario`]), printing its results as one JSON line.
//! `thaw-linux-check probe`: asks a host (a guest) for an ICMP echo and its wall clock, from
//! inside a network namespace if given, and prints the result as one JSON line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;
use thaw_linux_check::netns::NetNs;
use thaw_linux_check::probe::Prober;
use thaw_linux_check::scenario::{self, Inputs, Report};

#[derive(Parser)]
#[command(about = "Checks a Linux guest from the host over its network")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot, check, checkpoint, restore on another network namespace, check again; prints
    /// {"boot_s", "checkpoint_ms", "resume_ms", "vcpus", "root_mounted", "ping_before",
    /// "ping_after", "clock_ok", "vmgenid_changed", ...} and fails unless every check passed.
    Scenario {
        /// The `thaw` binary.
        #[arg(long)]
        thaw: PathBuf,
        /// The minimal kernel (scripts/build-linux prints its path).
        #[arg(long)]
        kernel: PathBuf,
        /// Source of the guest's /init.
        #[arg(long, default_value = "vmm/guest/linux/init.c")]
        init_source: PathBuf,
        #[arg(long, default_value_t = 2)]
        vcpus: u32,
        /// Seconds the boot may take.
        #[arg(long, default_value_t = 900)]
        boot_timeout: u64,
        /// Seconds between the checkpoint and the restore.
        #[arg(long, default_value_t = 5)]
        pause_between: u64,
        /// Keep the work files (consoles, images, store) here instead of a temporary directory.
        #[arg(long)]
        work: Option<PathBuf>,
    },
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
        Command::Scenario {
            thaw,
            kernel,
            init_source,
            vcpus,
            boot_timeout,
            pause_between,
            work,
        } => {
            let inputs = Inputs {
                thaw: std::fs::canonicalize(&thaw)
                    .with_context(|| format!("the thaw binary {}", thaw.display()))?,
                kernel,
                init_source,
                vcpus,
                boot_timeout: Duration::from_secs(boot_timeout),
                pause_between: Duration::from_secs(pause_between),
            };
            let temp = tempfile::tempdir()?;
            let work = match work {
                Some(w) => {
                    std::fs::create_dir_all(&w)?;
                    w
                }
                None => temp.path().to_path_buf(),
            };
            let mut report = Report::default();
            let result = scenario::run_scenario(&inputs, &work, &mut report);
            if let Err(e) = &result {
                report.error = Some(format!("{e:#}"));
            }
            println!("{}", serde_json::to_string(&report)?);
            result?;
            if !report.all_passed(vcpus) {
                anyhow::bail!("a check failed (see the JSON line)");
            }
        }
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
