//! The workspace's binaries (`thaw`, `thaw-bench`) for tests that run them as
//! processes, and reading what `thaw vm` reports. The binaries live in other
//! packages, so cargo does not build them for this one: the first use builds
//! them (a no-op when up to date), so a test never runs a stale binary.

#![allow(dead_code)] // each test binary uses some of these

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// `thaw`, the product binary.
pub fn thaw() -> Command {
    Command::new(binary("thaw"))
}

/// `thaw-bench`, the benchmarks.
pub fn thaw_bench() -> Command {
    Command::new(binary("thaw-bench"))
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
    String::from_utf8_lossy(&out.stdout)
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

/// The path of the workspace binary `name`, built with this test's profile.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_binaries);
    let path = dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Builds both binaries and returns the directory they are in: the parent of
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
        "--bins",
    ]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build of thaw and thaw-bench failed"
    );
    dir
}
