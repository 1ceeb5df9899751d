//! `thaw cpu`: what this host's CPU offers restores (`dump`), a baseline that every host of a
//! fleet can run (`baseline`), and whether a checkpoint runs on a host (`check`).

use crate::keys::KeyArgs;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use vmm::arch::cpu_profile::{CpuMask, CpuProfile};
use vmm::arch::cpuid::CpuBaseline;
use vmm::vstate::host_cpu;
use vmm::vstate::kvm::DEFAULT_KVM_PATH;

#[derive(Debug, Args)]
pub struct CpuArgs {
    #[command(subcommand)]
    command: CpuCommand,
}

#[derive(Debug, Subcommand)]
enum CpuCommand {
    /// Write this host's CPU profile (vendor, CPUID features, MSRs and TSC as KVM offers them) as
    /// JSON, to stdout or --out.
    Dump {
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_KVM_PATH)]
        kvm: PathBuf,
    },
    /// Compute the CPU baseline every listed host can run (the features all their dumps offer),
    /// for `thaw vm run --cpu-baseline FILE`.
    Baseline {
        /// Profiles written by `thaw cpu dump` on each host.
        #[arg(required = true)]
        dumps: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check that a checkpoint can run on this host (or on the host a --host dump describes),
    /// naming every difference: exits 1 when it cannot.
    Check {
        store: String,
        id: String,
        /// Another host's `thaw cpu dump` instead of this host.
        #[arg(long)]
        host: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_KVM_PATH)]
        kvm: PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

pub fn run(args: CpuArgs) -> anyhow::Result<()> {
    match args.command {
        CpuCommand::Dump { out, kvm } => {
            let profile = host_cpu::profile(&kvm).context("reading this host's CPU from KVM")?;
            write_json(&profile, out.as_deref())
        }
        CpuCommand::Baseline { dumps, out } => {
            let profiles = dumps
                .iter()
                .map(|p| read_json::<CpuProfile>(p, "CPU profile (`thaw cpu dump`)"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mask = CpuMask::intersect(&profiles)?;
            write_json(&mask, out.as_deref())
        }
        CpuCommand::Check {
            store,
            id,
            host,
            kvm,
            keys,
        } => {
            let store = keys.open_store(&store)?;
            let rt = vmm::persist::checkpoint::runtime().context("starting a runtime")?;
            let state = vmm::persist::restore::read_state(&rt, &store, &id, &keys.trust()?)
                .with_context(|| format!("reading checkpoint {id}"))?;
            let name = match &host {
                Some(path) => {
                    let profile = read_json::<CpuProfile>(path, "CPU profile (`thaw cpu dump`)")?;
                    host_cpu::check_profile(&profile, &state)?;
                    profile.host
                }
                None => {
                    host_cpu::check(&kvm, &state)?;
                    "this host".to_string()
                }
            };
            println!("checkpoint {id} can run on {name}");
            Ok(())
        }
    }
}

/// `--cpu-baseline`: a baseline's name, or a file `thaw cpu baseline` wrote.
pub fn parse_baseline(arg: &str) -> Result<CpuBaseline, String> {
    match arg.parse::<CpuBaseline>() {
        Ok(b) => Ok(b),
        Err(unknown) if !Path::new(arg).exists() => {
            Err(format!("{unknown}, and no baseline file {arg:?} exists"))
        }
        Err(_) => read_json::<CpuMask>(Path::new(arg), "CPU baseline (`thaw cpu baseline`)")
            .map(|mask| CpuBaseline::Custom(Box::new(mask)))
            .map_err(|e| format!("{e:#}")),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a {what}", path.display()))
}

fn write_json<T: serde::Serialize>(value: &T, out: Option<&Path>) -> anyhow::Result<()> {
    let mut json = serde_json::to_string_pretty(value)?;
    json.push('\n');
    match out {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{json}");
            Ok(())
        }
    }
}
