//! The control API of a running VM, driven through `thaw vm pause|resume|checkpoint|status|stop
//! --api`: a test guest is paused, checkpointed while paused and while running, checkpointed and
//! stopped, and each checkpoint restored in a fresh process runs to the checksum an
//! uninterrupted run ends with. A restored VM serves the API too; a stop ends a VM's process;
//! a socket path holding another file is refused and kept.

mod bins;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use vmm::boot::testguest::{self, Params, Pattern};

const MEMORY: u64 = 64 << 20;
const TOUCHES: u64 = 20_000_000;
const SEED: u64 = 5;

/// Waits for a `thaw vm` process to end; its output and JSON lines.
fn finish(vm: bins::Killed) -> (Output, Vec<serde_json::Value>) {
    let out = vm.output();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (out, lines)
}

/// `thaw vm VERB --api SOCKET EXTRA...`: (success, stdout, stderr).
fn api(verb: &str, socket: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = bins::thaw()
        .args(["vm", verb, "--api"])
        .arg(socket)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(socket: &Path) -> serde_json::Value {
    let (ok, out, err) = api("status", socket, &[]);
    assert!(ok, "status: {err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn checkpoint(socket: &Path, store: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--json", "--store"];
    args.push(store.to_str().unwrap());
    args.extend_from_slice(extra);
    let (ok, out, err) = api("checkpoint", socket, &args);
    assert!(ok, "checkpoint: {err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    line["checkpoint"]["id"].as_str().unwrap().to_string()
}

fn done_checksum(lines: &[serde_json::Value]) -> u64 {
    bins::event(lines, "done")["checksums"][0].as_u64().unwrap()
}

#[test]
fn a_running_vm_is_paused_checkpointed_resumed_and_stopped_through_its_api() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let socket = dir.path().join("vm.sock");
    let expected = testguest::model_checksum(
        &Params {
            pattern: Pattern::Random,
            touches_per_cpu: TOUCHES,
            report_every: 0,
            seed: SEED,
            hot_percent: 10,
        },
        testguest::area_size_for(MEMORY),
        1,
        0,
    );
    let guest = [
        format!("--memory={MEMORY}"),
        "--pattern=random".into(),
        format!("--touches={TOUCHES}"),
        format!("--seed={SEED}"),
    ];
    let mut run_args = vec!["run".to_string(), format!("--api={}", socket.display())];
    run_args.extend_from_slice(&guest);
    let vm = bins::spawn_thaw_vm(&run_args);
    bins::wait_for_path(&socket, Duration::from_secs(60));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is its user's only");

    // Paused by its user, checkpointed, still paused after.
    let (ok, _, err) = api("pause", &socket, &[]);
    assert!(ok, "pause: {err}");
    let (ok, _, err) = api("pause", &socket, &[]);
    assert!(!ok && err.contains("already paused"), "second pause: {err}");
    assert_eq!(status(&socket)["state"], "Paused");
    let paused_id = checkpoint(&socket, &store, &[]);
    let s = status(&socket);
    assert_eq!(s["state"], "Paused", "{s}");
    assert_eq!(s["checkpoints"], 1);
    assert_eq!(s["last_checkpoint"]["id"], paused_id.as_str());
    assert_eq!(s["memory_bytes"], MEMORY);

    // Running: the checkpoint pauses it and it goes on after.
    let (ok, _, err) = api("resume", &socket, &[]);
    assert!(ok, "resume: {err}");
    assert_eq!(status(&socket)["state"], "Running");
    let running_id = checkpoint(&socket, &store, &[]);
    assert_eq!(status(&socket)["state"], "Running");

    // A checkpoint that stops the VM: its process ends without finishing the guest's work.
    let stopped_id = checkpoint(&socket, &store, &["--stop"]);
    let (out, lines) = finish(vm);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(bins::event(&lines, "stopped")["reason"], "api", "{lines:?}");
    assert!(!lines.iter().any(|l| l["event"] == "done"), "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l["event"] == "checkpoint").count(),
        3
    );
    assert!(!socket.exists(), "the socket is removed when the VM ends");

    // Each checkpoint restores in a fresh process and ends as an uninterrupted run does; the
    // restored VM serves the API too.
    let restored_socket = dir.path().join("restored.sock");
    let restored = bins::spawn_thaw_vm(&[
        "restore".into(),
        format!("--store={}", store.display()),
        format!("--id={running_id}"),
        format!("--api={}", restored_socket.display()),
    ]);
    bins::wait_for_path(&restored_socket, Duration::from_secs(60));
    let s = status(&restored_socket);
    assert_eq!(s["restored_from"], running_id.as_str(), "{s}");
    let (out, lines) = finish(restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(done_checksum(&lines), expected);
    for id in [&paused_id, &stopped_id] {
        let lines = bins::thaw_vm(&[
            "restore".into(),
            format!("--store={}", store.display()),
            format!("--id={id}"),
        ]);
        assert_eq!(done_checksum(&lines), expected, "checkpoint {id}");
    }
}

#[test]
fn stop_ends_the_vm_and_a_socket_path_holding_a_file_is_refused() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vm.sock");
    let vm = bins::spawn_thaw_vm(&[
        "run".into(),
        format!("--api={}", socket.display()),
        format!("--memory={MEMORY}"),
        format!("--touches={}", u64::MAX / 4),
    ]);
    bins::wait_for_path(&socket, Duration::from_secs(60));
    let started = Instant::now();
    let (ok, _, err) = api("stop", &socket, &[]);
    assert!(ok, "stop: {err}");
    let (out, lines) = finish(vm);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(bins::event(&lines, "stopped")["reason"], "api");
    eprintln!("stopped in {:?}", started.elapsed());

    let (ok, _, err) = api("status", &socket, &[]);
    assert!(!ok && err.contains("connecting"), "{err}");

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    let out: Output = Command::new(bins::binary("thaw"))
        .args(["vm", "run", "--serial=none"])
        .arg(format!("--api={}", file.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}
