//! Starting a replayer process and collecting its result.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::child::{Regions, ReplayResult};

/// What every replay of one workload shares.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The `thaw-bench` binary (the replayer is its `replay` subcommand).
    pub thaw_bench: PathBuf,
    /// The uncompressed memory image.
    pub image: PathBuf,
    pub regions: Regions,
    pub page_size: u64,
    pub trace: PathBuf,
    /// A replay that takes longer is killed and reported as failed.
    pub timeout: Duration,
}

/// Where the replayed memory comes from.
pub enum Memory<'a> {
    /// Filled from the image before the clock starts.
    Present,
    /// Restored lazily by the agent listening on `socket`.
    Agent {
        socket: &'a Path,
        store: &'a str,
        checkpoint: &'a str,
    },
}

/// Runs one replay in a fresh process and returns what it measured.
pub fn replay(plan: &ReplayPlan, memory: Memory<'_>) -> anyhow::Result<ReplayResult> {
    let mut cmd = Command::new(&plan.thaw_bench);
    cmd.args(["replay", "--image"])
        .arg(&plan.image)
        .arg("--regions")
        .arg(plan.regions.to_arg())
        .arg("--page-size")
        .arg(plan.page_size.to_string())
        .arg("--trace")
        .arg(&plan.trace);
    if let Memory::Agent {
        socket,
        store,
        checkpoint,
    } = memory
    {
        cmd.arg("--agent")
            .arg(socket)
            .args(["--store", store, "--checkpoint", checkpoint]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the replayer {}", plan.thaw_bench.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > plan.timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the replay of {} did not finish within {:?}",
                plan.trace.display(),
                plan.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("the replayer failed ({status}): {}", err.trim());
    }
    let line = out
        .lines()
        .last()
        .context("the replayer printed no result")?;
    serde_json::from_str(line).with_context(|| format!("the replayer's result {line:?}"))
}
