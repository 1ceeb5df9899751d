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
    let out = bins::thaw()
        .args(["demo", "--memory", "32MiB", "--store"])
        .arg(dir.path().join("store"))
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
}
