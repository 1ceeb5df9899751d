//! The README's main job, as a user runs it: every part a real process
//! (vmm, block server, fetch agent), ending with the restored guest's
//! checksum equal to an uninterrupted run's.

mod bins;

#[test]
fn demo_runs_the_whole_pipeline() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A key directory of its own, empty: the demo makes the development key pair in it.
    let keys = dir.path().join("keys");
    let store = dir.path().join("store");
    let out = bins::thaw()
        .env("THAW_KEY_DIR", &keys)
        .args(["demo", "--memory", "32MiB", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "resume time",
        "faults served",
        "blocks fetched",
        "bytes fetched",
        "time to finish",
    ] {
        assert!(text.contains(row), "no {row:?} in\n{text}");
    }
    assert!(
        text.contains("identical to the uninterrupted run"),
        "{text}"
    );
    assert!(
        text.contains("made a development signing key pair"),
        "{text}"
    );

    // Right after the demo, verifying its checkpoint needs no flag: the key is found.
    let id = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("checkpoint "))
        .map(|rest| rest.trim().to_owned())
        .unwrap_or_else(|| panic!("no checkpoint row in\n{text}"));
    let out = bins::thaw()
        .env("THAW_KEY_DIR", &keys)
        .args(["checkpoint", "verify"])
        .arg(&store)
        .arg(&id)
        .output()
        .unwrap();
    let verified = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && verified.contains("OK,") && verified.contains("signed by"),
        "{verified}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
