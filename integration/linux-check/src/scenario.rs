//! The real-guest scenario (`scripts/linux-check`): the minimal Linux kernel with two vCPUs, its
//! root file system on virtio-blk and eth0 on virtio-net (a tap in a network namespace standing
//! in for the first host), booted, checked from the host, checkpointed through its control API
//! while it runs, and restored lazily through a fetch agent in a fresh process in a second
//! namespace with a tap of another name, then checked again.
//!
//! Everything checked is done by the guest kernel itself (this machine's KVM cannot run Linux
//! user space system calls): its console log, ICMP echo, and ICMP timestamp (its wall clock).

use crate::console;
use crate::netns::NetNs;
use crate::probe::Prober;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const HOST_CIDR: &str = "172.16.0.1/30";
/// The guest's address, its gateway (the tap) and netmask, for the kernel's `ip=` parameter.
const GUEST_IP_PARAM: &str = "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off";
/// The checkpoint host's tap and the restore host's: different names, as on real hosts.
const TAP_BEFORE: &str = "thawtap-a";
const TAP_AFTER: &str = "thawtap-b";

/// What the scenario needs from the build.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The `thaw` binary.
    pub thaw: PathBuf,
    /// The minimal kernel (scripts/build-linux).
    pub kernel: PathBuf,
    /// Source of the guest's /init (vmm/guest/linux/init.c).
    pub init_source: PathBuf,
    pub vcpus: u32,
    /// How long the boot may take before giving up.
    pub boot_timeout: Duration,
    /// Time left to pass between the checkpoint and the restore (the guest clock must catch up).
    pub pause_between: Duration,
}

/// The scenario's results: the JSON line `scripts/linux-check` prints.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub boot_s: Option<f64>,
    pub checkpoint_ms: Option<f64>,
    pub resume_ms: Option<f64>,
    pub vcpus: Option<u32>,
    pub root_mounted: bool,
    pub ping_before: bool,
    pub ping_after: bool,
    pub clock_ok: bool,
    /// How far the restored guest's wall clock was from the host's (ICMP timestamp), in ms.
    pub clock_offset_ms: Option<i64>,
    pub vmgenid_changed: bool,
    /// Why the scenario stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    /// Every check this machine can make passed, with `vcpus` CPUs brought up.
    pub fn all_passed(&self, vcpus: u32) -> bool {
        self.error.is_none()
            && self.vcpus == Some(vcpus)
            && self.root_mounted
            && self.ping_before
            && self.ping_after
            && self.clock_ok
            && self.vmgenid_changed
    }
}

/// A process killed on drop if it is still running.
struct Process {
    child: Child,
    what: &'static str,
}

impl Process {
    fn spawn(what: &'static str, cmd: &mut Command) -> Result<Process> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        Ok(Process { child, what })
    }

    /// Fails if the process has ended (naming how).
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the {} exited early: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path`'s text satisfies `done`, while `process` runs.
fn wait_for_log(
    path: &Path,
    process: &mut Process,
    within: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if done(&text) {
            return Ok(text);
        }
        process
            .check_alive()
            .with_context(|| format!("waiting for {what}"))?;
        if Instant::now() >= deadline {
            let tail: String = text
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!("no {what} within {within:?}; console ends with:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for_file(path: &Path, process: &mut Process, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !path.exists() {
        process.check_alive()?;
        if Instant::now() >= deadline {
            bail!("{} did not appear within {within:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the guest's root file system: /init (compiled without libc) and the directories the
/// kernel mounts on, in an ext4 image.
fn root_image(work: &Path, init_source: &Path) -> Result<PathBuf> {
    let root = work.join("rootfs");
    for d in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    run(
        Command::new("gcc")
            .args([
                "-static",
                "-nostdlib",
                "-ffreestanding",
                "-fno-stack-protector",
                "-fno-pie",
                "-no-pie",
                "-O2",
                "-o",
            ])
            .arg(root.join("init"))
            .arg(init_source),
        "gcc (the guest's /init)",
    )?;
    let image = work.join("root.ext4");
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&image)
            .arg("32M"),
        "mkfs.ext4",
    )?;
    Ok(image)
}

/// The `thaw` command run inside `ns`, with the scenario's key directory.
fn thaw_in(inputs: &Inputs, ns: &NetNs, keys: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(&inputs.thaw)
        .env("THAW_KEY_DIR", keys)
        .stdin(Stdio::null());
    cmd
}

/// Runs the scenario, filling `report` as it goes (so a failure still says how far it got).
pub fn run_scenario(inputs: &Inputs, work: &Path, report: &mut Report) -> Result<()> {
    let keys = work.join("keys");
    run(
        Command::new(&inputs.thaw)
            .args(["keygen", "--dir"])
            .arg(&keys),
        "thaw keygen",
    )?;
    let image = root_image(work, &inputs.init_source)?;
    let store = work.join("store");
    std::fs::create_dir_all(&store)?;
    let host_a = NetNs::create("ckpt")?;
    host_a.add_tap(TAP_BEFORE, HOST_CIDR)?;
    let host_b = NetNs::create("rest")?;
    host_b.add_tap(TAP_AFTER, HOST_CIDR)?;

    // Boot on the first host.
    let console_a = work.join("console-before.log");
    let api_a = work.join("vm-before.sock");
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 noxsave random.trust_cpu=on i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check root=/dev/vda rw rootfstype=ext4 init=/init {GUEST_IP_PARAM}"
    );
    let started = Instant::now();
    let mut vm_a = Process::spawn(
        "VM on the checkpoint host",
        thaw_in(inputs, &host_a, &keys)
            .args([
                "vm",
                "run",
                "--memory",
                "256MiB",
                "--json",
                "--timeout",
                "60m",
            ])
            .arg(format!("--vcpus={}", inputs.vcpus))
            .arg("--kernel")
            .arg(&inputs.kernel)
            .arg(format!("--cmdline={cmdline}"))
            .arg(format!("--disk={}", image.display()))
            .arg(format!("--net=tap={TAP_BEFORE}"))
            .arg(format!("--serial={}", console_a.display()))
            .arg(format!("--api={}", api_a.display()))
            .stdout(Stdio::null()),
    )?;
    let log = wait_for_log(
        &console_a,
        &mut vm_a,
        inputs.boot_timeout,
        "\"Run /init\"",
        |t| console::says(t, console::RAN_INIT),
    )?;
    report.boot_s = Some(started.elapsed().as_secs_f64());
    report.vcpus = console::cpus_brought_up(&log);
    report.root_mounted = console::root_mounted_rw(&log).as_deref() == Some("ext4");

    let before = host_a.run(|| {
        Prober::new(GUEST_IP)?.wait_for_echo(Duration::from_secs(120), Duration::from_secs(1))
    })?;
    report.ping_before = before.is_ok();
    before.context("ping before the checkpoint")?;

    // Checkpoint it while it runs, and stop it: the restore host takes over.
    wait_for_file(&api_a, &mut vm_a, Duration::from_secs(10))?;
    let t = Instant::now();
    run(
        thaw_in(inputs, &host_a, &keys)
            .args(["vm", "checkpoint", "--json", "--stop", "--api"])
            .arg(&api_a)
            .arg(format!("--store={}", store.display())),
        "thaw vm checkpoint --api",
    )
    .and_then(|out| {
        let line: serde_json::Value = serde_json::from_str(out.trim())?;
        let id = line["checkpoint"]["id"]
            .as_str()
            .context("no checkpoint id in the answer")?
            .to_string();
        report.checkpoint_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        std::fs::write(work.join("checkpoint-id"), &id)?;
        Ok(())
    })?;
    let id = std::fs::read_to_string(work.join("checkpoint-id"))?;
    drop(vm_a);
    std::thread::sleep(inputs.pause_between);

    // Restore lazily through a fetch agent on the second host.
    let agent_socket = work.join("agent.sock");
    let mut agent = Process::spawn(
        "fetch agent",
        thaw_in(inputs, &host_b, &keys)
            .args(["agent", "--socket"])
            .arg(&agent_socket)
            .arg("--store")
            .arg(&store)
            .stdout(Stdio::null()),
    )?;
    wait_for_file(&agent_socket, &mut agent, Duration::from_secs(30))?;
    let console_b = work.join("console-after.log");
    let api_b = work.join("vm-after.sock");
    let events = work.join("restore-events.jsonl");
    let mut vm_b = Process::spawn(
        "restored VM",
        thaw_in(inputs, &host_b, &keys)
            .args(["vm", "restore", "--json", "--timeout", "60m"])
            .arg(format!("--store={}", store.display()))
            .arg(format!("--id={id}"))
            .arg(format!("--agent={}", agent_socket.display()))
            .arg(format!("--net=tap={TAP_AFTER}"))
            .arg(format!("--serial={}", console_b.display()))
            .arg(format!("--api={}", api_b.display()))
            .stdout(std::fs::File::create(&events)?),
    )?;
    wait_for_log(
        &events,
        &mut vm_b,
        Duration::from_secs(120),
        "the restored event",
        |t| t.contains("\"restored\""),
    )
    .and_then(|t| {
        let line = t
            .lines()
            .find(|l| l.contains("\"restored\""))
            .context("no restored event")?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        report.resume_ms = v["timings"]["resume_ms"].as_f64();
        Ok(())
    })?;

    let after = host_b.run(|| -> Result<(i64, bool)> {
        let mut p = Prober::new(GUEST_IP)?;
        p.wait_for_echo(Duration::from_secs(180), Duration::from_secs(1))?;
        let clock = p.clock(Duration::from_secs(10))?;
        Ok((clock.offset_ms, true))
    })?;
    let (offset, answered) = after.context("ping after the restore")?;
    report.ping_after = answered;
    report.clock_offset_ms = Some(offset);
    report.clock_ok = offset.abs() < 1000;

    let reseeded = wait_for_log(
        &console_b,
        &mut vm_b,
        Duration::from_secs(120),
        "the VM generation change",
        |t| console::says(t, console::VM_FORK_RESEED),
    );
    report.vmgenid_changed = reseeded.is_ok();
    reseeded?;
    let _ = Command::new("ip")
        .args(["netns", "exec", host_b.name()])
        .arg(&inputs.thaw)
        .args(["vm", "stop", "--api"])
        .arg(&api_b)
        .output();
    Ok(())
}
