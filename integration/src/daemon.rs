//! Child processes the scenarios and benchmarks run: each is killed when its
//! handle is dropped, so a failing run leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
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

/// `thaw` itself: scenarios and benchmarks run inside the `thaw` binary.
pub fn thaw() -> anyhow::Result<Command> {
    Ok(Command::new(
        std::env::current_exe().context("locating the thaw binary")?,
    ))
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
