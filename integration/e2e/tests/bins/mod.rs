//! The workspace's binaries (`thaw`, `thaw-bench`) for tests that run them as
//! processes, and reading what `thaw vm` reports. The binaries live in other
//! packages, so cargo does not build them for this one: the first use builds
//! them (a no-op when up to date), so a test never runs a stale binary.

#![allow(dead_code)] // each test binary uses some of these

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `thaw`, the product binary, using the tests' key directory.
pub fn thaw() -> Command {
    let mut cmd = Command::new(binary("thaw"));
    cmd.env("THAW_KEY_DIR", key_dir());
    cmd
}

/// `thaw-bench`, the benchmarks, using the tests' key directory.
pub fn thaw_bench() -> Command {
    let mut cmd = Command::new(binary("thaw-bench"));
    cmd.env("THAW_KEY_DIR", key_dir());
    cmd
}

/// The key directory of every process started here (`$THAW_KEY_DIR`): a signing key pair made
/// once, so checkpoints the binaries write are signed and their restores check signatures, as
/// a user's do.
pub fn key_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("thaw-test-keys");
        thaw_store::keys::ensure(&dir).expect("the tests' signing key pair");
        dir
    })
}

/// The tests' signing key (what `thaw` signs with here).
pub fn signing_key() -> thaw_format::signature::SigningKey {
    thaw_store::keys::load_signing_key(&key_dir().join(thaw_store::keys::SIGNING_KEY_FILE))
        .expect("the tests' signing key")
}

/// Trusting the tests' signing key only.
pub fn trust() -> thaw_format::ManifestTrust {
    thaw_format::ManifestTrust::Keys(vec![signing_key().verifying_key()])
}

/// Runs `thaw vm ARGS --json` (test guest console off, two-minute timeout)
/// and returns its JSON lines; panics with its stderr when it fails.
pub fn thaw_vm(args: &[String]) -> Vec<serde_json::Value> {
    let out = thaw()
        .arg("vm")
        .args(args)
        .args(["--json", "--serial=none", "--timeout=120s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "thaw vm {args:?} failed:\n{stderr}");
    json_lines(&out.stdout)
}

/// Starts `thaw vm ARGS --json` (no console, four-minute timeout) with its output piped, for a
/// test that drives it while it runs (through its control API); killed when dropped.
pub fn spawn_thaw_vm(args: &[String]) -> Killed {
    Killed(
        thaw()
            .arg("vm")
            .args(args)
            .args(["--json", "--serial=none", "--timeout=240s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Runs `thaw vm ARGS --json --timeout=TIMEOUT` with the guest console in `console`; on
/// failure panics with its stderr and the console's last 40 lines.
pub fn thaw_vm_console(args: &[String], console: &Path, timeout: &str) -> Vec<serde_json::Value> {
    let out = thaw()
        .arg("vm")
        .args(args)
        .args(["--json".to_string(), format!("--timeout={timeout}")])
        .arg(format!("--serial={}", console.display()))
        .output()
        .unwrap();
    if !out.status.success() {
        let log = std::fs::read_to_string(console).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        panic!(
            "thaw vm {args:?} failed ({}):\n{}\n--- console tail ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    json_lines(&out.stdout)
}

/// The JSON lines a `thaw ... --json` command printed.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The first JSON line of `lines` whose `event` is `name`.
pub fn event<'a>(lines: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {lines:?}"))
}

/// A process a test started, killed and reaped when dropped, however the test ends. A process
/// the test stopped (SIGSTOP) is continued first so the kill takes.
pub struct Killed(pub Child);

impl Killed {
    /// Waits for the process to end by itself and returns what it printed (its stdout and
    /// stderr must have been piped).
    pub fn output(mut self) -> std::process::Output {
        use std::io::Read;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        // Stderr on a thread: a process blocked writing one pipe never fills the other.
        let err = self.0.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = e.read_to_end(&mut buf);
                buf
            })
        });
        if let Some(mut out) = self.0.stdout.take() {
            let _ = out.read_to_end(&mut stdout);
        }
        if let Some(t) = err {
            stderr = t.join().unwrap_or_default();
        }
        let status = self.0.wait().expect("waiting for the process");
        std::process::Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped
            // (try_wait just saw it unreaped), so the pid is still its.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGCONT) };
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits until `ready` holds (a socket appeared, a port answers), checking every 20 ms;
/// panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` exists (the socket a process makes once it listens).
pub fn wait_for_path(path: &Path, within: Duration) {
    wait_until(&format!("{} appears", path.display()), within, || {
        path.exists()
    });
}

/// The path of the workspace binary `name`, built with this test's profile.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_binaries);
    let path = dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Builds the binaries and returns the directory they are in: the parent of
/// this test's `deps/` directory.
fn build_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable under target/PROFILE/deps")
        .to_owned();
    let release = dir.file_name().is_some_and(|p| p == "release");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        "thaw-cli",
        "-p",
        "thaw-bench",
        "-p",
        "thaw-linux-check",
        "--bins",
    ]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build of thaw, thaw-bench and thaw-linux-check failed"
    );
    dir
}
