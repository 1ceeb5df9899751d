//! Child processes the scenarios and benchmarks run: each is killed when its
//! handle is dropped, so a failing run leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A child process killed when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command running the `thaw` binary: the demo runs inside it, benchmarks
/// and tests beside it.
pub fn thaw() -> anyhow::Result<Command> {
    Ok(Command::new(sibling_binary("thaw")?))
}

/// The binary `name` of this build: the running executable when it is that
/// binary, else the one beside it (benchmarks run from `target/PROFILE`,
/// tests from `target/PROFILE/deps`, one level below the binaries).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    if exe.file_name().is_some_and(|n| n == name) {
        return Ok(exe);
    }
    let dir = exe.parent().context("executable without a directory")?;
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("no {name} binary beside {}", exe.display()))
}

/// Starts `thaw block-server` on a free loopback port in front of `store`,
/// with the development PKI in `pki`, and returns it with its address.
/// `threads` is its runtime's worker count (default: one per CPU).
pub fn start_block_server(
    store: &str,
    pki: &Path,
    cache_bytes: u64,
    threads: Option<u16>,
) -> anyhow::Result<(Daemon, SocketAddr)> {
    let mut command = thaw()?;
    command
        .args(["block-server", "--listen", "127.0.0.1:0", "--store", store])
        .arg(format!("--cache-size={cache_bytes}"))
        .arg("--dev-pki")
        .arg(pki);
    if let Some(threads) = threads {
        command.arg(format!("--threads={threads}"));
    }
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("starting thaw block-server")?;
    let stdout = child.stdout.take().context("block server stdout")?;
    let daemon = Daemon(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("block server said {line:?}"))?;
    Ok((daemon, addr))
}
