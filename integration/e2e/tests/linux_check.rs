//! The real-guest scenario of `scripts/linux-check` in every test run: the minimal Linux kernel
//! on 2 vCPUs with its root on virtio-blk and eth0 on a tap in a network namespace, booted,
//! pinged, checkpointed through its control API while it runs, restored lazily through a fetch
//! agent in a fresh process in another namespace with a tap of another name, then pinged again,
//! its wall clock read by ICMP timestamp, and its VMGenID reseed seen on its console.

mod bins;
mod common;

use common::linux_guest;

#[test]
fn a_linux_guest_with_disk_and_network_restores_on_another_host_with_every_check_true() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let kernel = linux_guest::minimal_kernel();
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bins::binary("thaw-linux-check"))
        .arg("scenario")
        .arg("--thaw")
        .arg(bins::binary("thaw"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--init-source")
        .arg(linux_guest::workspace_root().join("vmm/guest/linux/init.c"))
        .arg("--work")
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let console = |name: &str| {
        let text = std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
        linux_guest::tail(&text, 25)
    };
    let line = stdout.lines().last().unwrap_or("");
    eprintln!("{line}");
    let report: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "no JSON line ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let failed: Vec<&str> = [
        "root_mounted",
        "ping_before",
        "ping_after",
        "clock_ok",
        "vmgenid_changed",
    ]
    .into_iter()
    .filter(|f| report[f] != true)
    .collect();
    assert!(
        out.status.success() && failed.is_empty() && report["vcpus"] == 2,
        "failed: {failed:?}\n{report:#}\n{}\nbefore the checkpoint:\n{}\nafter the restore:\n{}",
        String::from_utf8_lossy(&out.stderr),
        console("console-before.log"),
        console("console-after.log"),
    );
    for timing in ["boot_s", "checkpoint_ms", "resume_ms"] {
        assert!(report[timing].as_f64().is_some(), "{timing}: {report}");
    }
}
