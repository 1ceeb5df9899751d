//! The minimal Linux kernel (scripts/build-linux) on 2 vCPUs: ACPI brings up both, the VMGenID
//! driver binds, and after a checkpoint and a lazy restore in a fresh process the kernel logs
//! that it reseeded its RNG because the generation changed, which it never logs before.
//!
//! `thaw vm checkpoint` boots the kernel (initramfs with a no-system-call /init) and checkpoints
//! it once it runs /init, past every driver's probe; `thaw vm restore` (a new process; lazy, its
//! fetch agent in the process) runs it until the console says "crng reseeded due to virtual
//! machine fork". `random.trust_cpu=on` lets the kernel's RNG be ready at boot from RDRAND (the
//! kernel reseeds on a VMGenID change only once it is). Takes about two minutes here (guest
//! kernel code is emulated), seconds on hardware KVM; the test prints its times.

mod bins;
mod common;

use common::linux_guest::{self, kernel_failures, tail};
use std::path::Path;
use std::time::Instant;

const INIT_MARKER: &str = "Run /init as init process";
const SMP_MARKER: &str = "smp: Brought up 1 node, 2 CPUs";
const RESEED_MARKER: &str = "crng reseeded due to virtual machine fork";
const RUN_TIMEOUT: &str = "15m";

fn assert_no_failures(console: &str, what: &str) {
    let mut bad = kernel_failures(console);
    bad.extend(console.lines().filter(|l| l.contains("ACPI Error")));
    assert!(
        bad.is_empty(),
        "the {what} kernel failed: {bad:?}\n--- console tail ---\n{}",
        tail(console, 40)
    );
}

#[test]
fn two_vcpus_come_up_and_a_restored_kernel_reseeds_its_rng_from_vmgenid() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let kernel = linux_guest::minimal_kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    let init = linux_guest::build_init(dir.path());
    std::fs::write(&initrd, linux_guest::initramfs(&init)).unwrap();
    let store = dir.path().join("store");
    let boot_log = dir.path().join("boot.log");
    let restore_log = dir.path().join("restore.log");

    bins::binary("thaw");
    let started = Instant::now();
    let lines = bins::thaw_vm_console(
        &[
            "checkpoint".into(),
            format!("--kernel={}", kernel.display()),
            format!("--initrd={}", initrd.display()),
            "--memory=128MiB".into(),
            "--vcpus=2".into(),
            format!(
                "--cmdline={} noxsave random.trust_cpu=on",
                vmm::boot::linux::DEFAULT_CMDLINE
            ),
            format!("--store={}", store.display()),
            format!("--on-serial={INIT_MARKER}"),
        ],
        &boot_log,
        RUN_TIMEOUT,
    );
    let boot = std::fs::read_to_string(&boot_log).unwrap();
    assert_no_failures(&boot, "booting");
    assert!(boot.contains(SMP_MARKER), "{}", tail(&boot, 60));
    assert!(
        !boot.contains(RESEED_MARKER),
        "the kernel reseeded before any restore"
    );
    let smp_line = boot.lines().position(|l| l.contains(SMP_MARKER)).unwrap();
    let marker_s = bins::event(&lines, "marker")["after_s"].as_f64().unwrap();
    let id = bins::event(&lines, "checkpoint")["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!(
        "boot to \"{INIT_MARKER}\" on 2 vCPUs: {marker_s:.1} s (both CPUs up by console line {smp_line}); \
         thaw vm checkpoint took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let restore_started = Instant::now();
    let lines = bins::thaw_vm_console(
        &[
            "restore".into(),
            format!("--store={}", store.display()),
            format!("--id={id}"),
            format!("--until-serial={RESEED_MARKER}"),
        ],
        &restore_log,
        RUN_TIMEOUT,
    );
    let after = std::fs::read_to_string(&restore_log).unwrap();
    assert!(after.contains(RESEED_MARKER), "{}", tail(&after, 40));
    assert!(
        !after.contains(INIT_MARKER),
        "the restored kernel booted again:\n{}",
        tail(&after, 40)
    );
    assert_no_failures(&after, "restored");
    let resume_ms = bins::event(&lines, "restored")["timings"]["resume_ms"]
        .as_f64()
        .unwrap();
    let seen_s = bins::event(&lines, "stopped")["after_s"].as_f64().unwrap();
    eprintln!(
        "restore: resumed in {resume_ms:.1} ms, reseed logged {seen_s:.1} s after the restore \
         began; thaw vm restore took {:.1} s",
        restore_started.elapsed().as_secs_f64()
    );
}
