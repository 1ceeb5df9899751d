//! `thaw vm checkpoint --resume` whose checkpoint cannot be written: the store's `checkpoints`
//! directory is a regular file, so every object write fails. The command must report the error,
//! resume the VM anyway and run it to its end (the right checksum), then exit non-zero.

mod bins;

use std::time::{Duration, Instant};

use vmm::boot::testguest::{self, Params, Pattern};

const MEMORY: u64 = 64 << 20;
const TOUCHES: u64 = 10_000_000;
const SEED: u64 = 9;

#[test]
fn a_failed_checkpoint_with_resume_resumes_the_vm_and_reports_the_error() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::write(store.join("checkpoints"), b"not a directory").unwrap();

    let started = Instant::now();
    let out = bins::thaw()
        .args(["vm", "checkpoint", "--resume", "--at=500ms"])
        .arg(format!("--store={}", store.display()))
        .arg(format!("--memory={MEMORY}"))
        .args(["--pattern=random", "--dirty-windows=0"])
        .arg(format!("--touches={TOUCHES}"))
        .arg(format!("--seed={SEED}"))
        .args(["--json", "--serial=none", "--timeout=120s"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();

    assert!(!out.status.success(), "exited successfully:\n{stderr}");
    assert!(took < Duration::from_secs(100), "took {took:?}");
    let failed = bins::event(&lines, "checkpoint_failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("checkpoint failed"), "{error}");
    assert!(
        error.contains("checkpoints"),
        "the error names no path: {error}"
    );
    assert!(
        !lines.iter().any(|l| l["event"] == "checkpoint"),
        "{lines:?}"
    );
    assert!(stderr.contains("the VM was resumed"), "{stderr}");

    // The VM went on and finished its work, as an uninterrupted run does.
    let params = Params {
        pattern: Pattern::Random,
        touches_per_cpu: TOUCHES,
        report_every: 0,
        seed: SEED,
        hot_percent: 10,
    };
    let expected = testguest::model_checksum(&params, testguest::area_size_for(MEMORY), 1, 0);
    let done = bins::event(&lines, "done");
    assert_eq!(done["checksums"][0].as_u64(), Some(expected), "{lines:?}");
    eprintln!("resumed after the failed checkpoint, done in {took:?}:\n{stderr}");
}
