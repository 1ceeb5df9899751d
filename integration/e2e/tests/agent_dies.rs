//! End to end with real processes: `thaw agent` is killed while `thaw vm
//! restore --agent` runs a long test guest through it. The vmm must notice the
//! agent's socket hanging up, stop the guest and exit non-zero with a message
//! naming the agent, within a bounded time (not hang, not run on with memory
//! nobody serves).

mod bins;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Runs for minutes uninterrupted: the restore is still running when the agent dies.
const GUEST: [&str; 4] = [
    "--memory=64MiB",
    "--pattern=random",
    "--touches=4000000000",
    "--seed=5",
];

#[test]
fn the_vmm_reports_the_agent_dying_mid_restore() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let sock = dir.path().join("agent.sock");
    let store_arg = format!("--store={store}");

    let out = bins::thaw()
        .args(["vm", "checkpoint", &store_arg, "--at=300ms"])
        .args(GUEST)
        .args(["--json", "--serial=none", "--timeout=120s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["event"] == "checkpoint")
        .unwrap()["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut agent = bins::Killed(
        bins::thaw()
            .args([
                "agent",
                "--socket",
                sock.to_str().unwrap(),
                "--store",
                store,
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    bins::wait_for_path(&sock, Duration::from_secs(20));

    let mut vmm = bins::Killed(
        bins::thaw()
            .args(["vm", "restore", &store_arg])
            .arg(format!("--id={id}"))
            .arg(format!("--agent={}", sock.display()))
            .args(["--json", "--serial=none", "--timeout=300s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait until the guest runs on the agent's memory, then let it run a little.
    let mut stdout = BufReader::new(vmm.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "vmm ended before restoring"
        );
        if line.contains("\"restored\"") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vmm.0.try_wait().unwrap().is_none(),
        "the guest should still be running"
    );

    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = vmm.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the vmm still runs 30 s after its agent died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    vmm.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "vmm exited successfully: {stderr}");
    let want = format!(
        "fetch agent at {} exited; guest memory can no longer be served",
        sock.display()
    );
    assert!(stderr.contains(&want), "no {want:?} in:\n{stderr}");
    eprintln!(
        "vmm exited {:?} after {:?}",
        status.code(),
        killed.elapsed()
    );
}
