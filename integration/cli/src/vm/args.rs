//! The command line of `thaw vm`: what each subcommand takes.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use thaw_format::units::{parse_duration, parse_size};
use vmm::arch::cpuid::CpuBaseline;
use vmm::boot::testguest::Pattern;
use vmm::devices::virtio::block::DiskConfig;
use vmm::devices::virtio::net::NetConfig;
use vmm::persist::dirty::DirtyConfig;
use vmm::vstate::kvm::DEFAULT_KVM_PATH;

use crate::keys::KeyArgs;

/// `thaw vm …`
#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(subcommand)]
    pub command: VmCommand,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a guest (the built-in test guest, or Linux with --kernel) and run it, optionally
    /// checkpointing it once on the way.
    Run(RunArgs),
    /// Boot a guest, run it for --at, checkpoint it to --store and stop (or go on with --resume).
    Checkpoint(CheckpointArgs),
    /// Restore a checkpoint in this process: lazily by default (a fetch agent inside this
    /// process serves memory from the store), --eager, or through the fetch agent at --agent.
    Restore(RestoreArgs),
    /// Pause a running VM (through its --api socket).
    Pause(ApiArgs),
    /// Resume a VM paused through its --api socket.
    Resume(ApiArgs),
    /// Show a running VM's state, size and last checkpoint (through its --api socket).
    Status(ApiArgs),
    /// Stop a running VM (through its --api socket); its process ends.
    Stop(ApiArgs),
}

/// The control API socket of a running VM (`thaw vm run|restore --api PATH`).
#[derive(Debug, Args)]
pub struct ApiArgs {
    #[arg(long)]
    pub api: PathBuf,
}

/// Options shared by every command that creates a VM.
#[derive(Debug, Clone, Args)]
pub struct MachineArgs {
    /// KVM device.
    #[arg(long, default_value = DEFAULT_KVM_PATH)]
    pub kvm: PathBuf,
    /// Where the guest console goes: "stdout", "stderr"-less "none", or a file path. On this
    /// terminal (stdout, or by default) the console is interactive: standard input goes to the
    /// guest's COM1.
    #[arg(long)]
    pub serial: Option<String>,
    /// Print results as JSON lines on standard output.
    #[arg(long)]
    pub json: bool,
    /// Linux guests: run until the console prints this text, then stop (restore) or go on.
    #[arg(long)]
    pub until_serial: Option<String>,
    /// Give up after this long (e.g. 30s, 5m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// What to boot.
#[derive(Debug, Clone, Args)]
pub struct GuestArgs {
    /// Guest memory (e.g. 256MiB, 4GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub memory: u64,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// CPU features shown to the guest: host, x86-64, x86-64-v2, x86-64-v3, or a file written by
    /// `thaw cpu baseline` from the dumps of a fleet's hosts.
    #[arg(long, default_value = "host", value_parser = crate::cpu::parse_baseline)]
    pub cpu_baseline: CpuBaseline,
    /// Test guest access pattern: sequential, random, hot-set, pointer-chase.
    #[arg(long, default_value = "sequential")]
    pub pattern: Pattern,
    /// Test guest page touches per vCPU.
    #[arg(long, default_value_t = 1 << 20)]
    pub touches: u64,
    /// Test guest progress report interval in touches (0: none).
    #[arg(long, default_value_t = 0)]
    pub report_every: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of pages that get 90% of the touches in the hot-set pattern.
    #[arg(long, default_value_t = 10)]
    pub hot_percent: u64,
    /// Test guest with interrupts on: each vCPU's LAPIC timer ticks at --timer-hz and a CPL0
    /// handler counts the ticks (reported with the results).
    #[arg(long, conflicts_with = "kernel")]
    pub interrupts: bool,
    /// The LAPIC timer's rate in interrupt mode.
    #[arg(long, requires = "interrupts", default_value_t = 1000)]
    pub timer_hz: u32,
    /// Test guest device mode (with --interrupts): vCPU 0 writes sectors 0..N of the first
    /// --disk and reads them back verifying (N a multiple of 8), --disk-passes times.
    #[arg(long, requires = "interrupts", default_value_t = 0)]
    pub disk_sectors: u64,
    #[arg(long, requires = "disk_sectors", default_value_t = 0)]
    pub disk_passes: u64,
    /// Test guest device mode (with --interrupts): vCPU 0 sends a numbered stream of this many
    /// 1 KiB frames on the first --net, resending until a peer on the tap acknowledges each.
    #[arg(long, requires = "interrupts", default_value_t = 0)]
    pub net_frames: u64,
    /// Boot this Linux kernel (bzImage or ELF vmlinux) instead of the test guest.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    #[arg(long, requires = "kernel", default_value = vmm::boot::linux::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// A virtio-blk disk on a raw image file, PATH or PATH,ro (repeatable; Linux sees them as
    /// /dev/vda, /dev/vdb, ... in this order).
    #[arg(long = "disk", value_name = "PATH[,ro]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net interface on an existing tap device, tap=NAME[,mac=MAC] (repeatable; Linux
    /// sees eth0, eth1, ... in this order).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
}

/// Dirty-page tracking before a checkpoint: its windows are stored with the checkpoint and lay
/// it out (pages written in the last window first) unless another layout is given.
#[derive(Debug, Clone, Args)]
pub struct DirtyArgs {
    /// Dirty-log windows kept before a checkpoint (0: no dirty logging).
    #[arg(long, default_value_t = DirtyConfig::default().windows)]
    pub dirty_windows: usize,
    /// Length of one dirty-log window (e.g. 250ms).
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub dirty_window: Duration,
}

impl DirtyArgs {
    pub(crate) fn config(&self) -> DirtyConfig {
        DirtyConfig {
            windows: self.dirty_windows,
            window: self.dirty_window,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub dirty: DirtyArgs,
    /// Checkpoint into this store (directory, file://, s3://) after --checkpoint-after.
    #[arg(long, requires = "checkpoint_after")]
    pub store: Option<String>,
    /// When to checkpoint (e.g. 200ms): any moment, the guest is not asked.
    #[arg(long, requires = "store", value_parser = parse_duration)]
    pub checkpoint_after: Option<Duration>,
    /// Stop right after the checkpoint instead of resuming the original VM.
    #[arg(long)]
    pub stop_after_checkpoint: bool,
    /// Serve the control API (pause, resume, checkpoint, status, stop) on this Unix socket.
    #[arg(long)]
    pub api: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    #[command(flatten)]
    pub guest: GuestArgs,
    #[command(flatten)]
    pub dirty: DirtyArgs,
    #[arg(long)]
    pub store: String,
    /// How long the guest runs before the checkpoint.
    #[arg(long, value_parser = parse_duration, required_unless_present_any = ["on_serial", "api"])]
    pub at: Option<Duration>,
    /// Checkpoint as soon as the guest console prints this text (instead of --at).
    #[arg(long, conflicts_with = "at")]
    pub on_serial: Option<String>,
    /// Resume the original VM after the checkpoint and run it to the end.
    #[arg(long)]
    pub resume: bool,
    /// Checkpoint the VM already running behind this control API socket instead of booting
    /// one; it goes on running after unless --stop.
    #[arg(long, conflicts_with_all = ["at", "on_serial", "resume", "kernel"])]
    pub api: Option<PathBuf>,
    /// With --api: stop the VM once its checkpoint is written.
    #[arg(long, requires = "api")]
    pub stop: bool,
    /// With --api: write all of memory, not only what changed since the VM's last checkpoint
    /// (or the checkpoint it was restored from).
    #[arg(long, requires = "api", conflicts_with = "parent")]
    pub full: bool,
    /// With --api: the parent of this incremental checkpoint, a checkpoint this VM produced or
    /// was restored from (default: its latest).
    #[arg(long, requires = "api")]
    pub parent: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    #[arg(long)]
    pub store: String,
    /// Checkpoint id, or a name given by `thaw checkpoint tag`.
    #[arg(long, value_name = "ID|NAME")]
    pub id: String,
    /// Read all memory before running.
    #[arg(long, conflicts_with = "agent")]
    pub eager: bool,
    /// Hand guest memory to the fetch agent listening on this Unix socket.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// For a Linux guest: run this long after the restore, then stop.
    #[arg(long, value_parser = parse_duration)]
    pub run_for: Option<Duration>,
    /// Replace the checkpoint's disks (PATH or PATH,ro; repeatable): none reopens the saved
    /// paths, otherwise one per saved disk, in order.
    #[arg(long = "disk", value_name = "PATH[,ro]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// Put the checkpoint's network interfaces on these taps (tap=NAME; repeatable): none
    /// reopens the saved taps, otherwise one per saved interface, in order. The MAC stays.
    #[arg(long = "net", value_name = "tap=NAME", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// Serve the control API (pause, resume, checkpoint, status, stop) on this Unix socket.
    #[arg(long)]
    pub api: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

fn parse_disk(arg: &str) -> Result<DiskConfig, String> {
    DiskConfig::parse(arg).map_err(|e| e.to_string())
}

fn parse_net(arg: &str) -> Result<NetConfig, String> {
    NetConfig::parse(arg).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3 weeks").is_err());
    }
}
