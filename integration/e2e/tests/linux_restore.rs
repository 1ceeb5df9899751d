//! The minimal Linux kernel (scripts/build-linux) checkpointed mid-boot and restored lazily in a
//! fresh process through a fetch agent process: the restored kernel goes on booting to its init.
//!
//! `thaw vm checkpoint` boots the kernel with an initramfs whose /init makes no system call
//! (vmm/guest/linux/init.c) and checkpoints it when the console prints "Unpacking initramfs"
//! (about 30 s in on an idle machine here, guest kernel code being emulated). A `thaw agent`
//! process serves the checkpoint, and `thaw vm restore --agent` in a new process runs the
//! kernel on until it prints "Run /init as init process" (about 50 s more). Timers,
//! interrupts and kvmclock must survive the restore for that to happen. On the way the kernel
//! sets its clock from the CMOS RTC, which must read the host's wall-clock time. The test prints
//! the boot-to-checkpoint, resume and restore-to-init times.

mod bins;
mod common;

use common::linux_guest::{self, kernel_failures, tail};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const CHECKPOINT_MARKER: &str = "Unpacking initramfs";
const INIT_MARKER: &str = "Run /init as init process";
/// Each of the two runs gets this long: about 30 s and 50 s on an idle machine, several times
/// that on a loaded one.
const RUN_TIMEOUT: &str = "15m";

/// The host's wall clock, seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// rtc_cmos's "setting system clock to DATE UTC (SECONDS)" line, if any, and its Unix time.
fn rtc_clock_set(console: &str) -> Option<(&str, i64)> {
    let line = console
        .lines()
        .find(|l| l.contains("rtc_cmos") && l.contains("setting system clock to"))?;
    let secs = line.rsplit_once('(')?.1.split_once(')')?.0;
    let secs = secs
        .parse()
        .unwrap_or_else(|_| panic!("no seconds in {line:?}"));
    Some((line, secs))
}

fn assert_no_failures(console: &str, what: &str) {
    let bad = kernel_failures(console);
    assert!(
        bad.is_empty(),
        "the {what} kernel failed: {bad:?}\n--- console tail ---\n{}",
        tail(console, 40)
    );
}

#[test]
fn a_kernel_checkpointed_mid_boot_boots_on_to_init_after_a_lazy_restore_in_a_fresh_process() {
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

    bins::binary("thaw"); // built before the clock starts
    let started = Instant::now();
    let boot_window = (unix_now(), 0);
    let lines = bins::thaw_vm_console(
        &[
            "checkpoint".into(),
            format!("--kernel={}", kernel.display()),
            format!("--initrd={}", initrd.display()),
            "--memory=128MiB".into(),
            format!("--cmdline={} noxsave", vmm::boot::linux::DEFAULT_CMDLINE),
            format!("--store={}", store.display()),
            format!("--on-serial={CHECKPOINT_MARKER}"),
        ],
        &boot_log,
        RUN_TIMEOUT,
    );
    let boot_window = (boot_window.0, unix_now());
    let boot = std::fs::read_to_string(&boot_log).unwrap();
    assert!(boot.contains(CHECKPOINT_MARKER), "{}", tail(&boot, 40));
    assert!(
        !boot.contains(INIT_MARKER),
        "the checkpoint was taken after init started"
    );
    assert_no_failures(&boot, "booting");
    let marker_s = bins::event(&lines, "marker")["after_s"].as_f64().unwrap();
    let checkpoint = &bins::event(&lines, "checkpoint")["checkpoint"];
    let id = checkpoint["id"].as_str().unwrap().to_owned();
    eprintln!(
        "boot to checkpoint: {marker_s:.1} s (\"{CHECKPOINT_MARKER}\"), checkpoint pause {:.1} ms, \
         write {:.0} ms, {} MiB stored; thaw vm checkpoint took {:.1} s",
        checkpoint["pause_ms"].as_f64().unwrap(),
        checkpoint["write_ms"].as_f64().unwrap(),
        checkpoint["stored_bytes"].as_u64().unwrap() >> 20,
        started.elapsed().as_secs_f64()
    );

    let sock = dir.path().join("agent.sock");
    let _agent = bins::Killed(
        bins::thaw()
            .args(["agent", "--socket"])
            .arg(&sock)
            .arg("--store")
            .arg(&store)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    bins::wait_for_path(&sock, Duration::from_secs(60));

    let restore_window = (unix_now(), 0);
    let lines = bins::thaw_vm_console(
        &[
            "restore".into(),
            format!("--store={}", store.display()),
            format!("--id={id}"),
            format!("--agent={}", sock.display()),
            format!("--until-serial={INIT_MARKER}"),
        ],
        &restore_log,
        RUN_TIMEOUT,
    );
    let restore_window = (restore_window.0, unix_now());
    let after = std::fs::read_to_string(&restore_log).unwrap();
    assert!(after.contains(INIT_MARKER), "{}", tail(&after, 40));
    assert!(
        !after.contains("Linux version"),
        "the restored kernel booted again:\n{}",
        tail(&after, 40)
    );
    assert_no_failures(&after, "restored");
    let restored = bins::event(&lines, "restored");
    assert_eq!(
        restored["mode"].as_str(),
        Some(format!("Agent({sock:?})").as_str())
    );
    let resume_ms = restored["timings"]["resume_ms"].as_f64().unwrap();
    let stopped = bins::event(&lines, "stopped");
    assert_eq!(stopped["marker_seen"], true);
    let to_init_s = stopped["after_s"].as_f64().unwrap();
    // The kernel set its clock from the CMOS RTC (before or after the checkpoint, as its
    // initcalls ran): the wall-clock time it read is the host's at that run.
    let ((rtc_line, rtc_secs), window) = [(&after, restore_window), (&boot, boot_window)]
        .into_iter()
        .find_map(|(log, window)| rtc_clock_set(log).map(|found| (found, window)))
        .unwrap_or_else(|| {
            panic!(
                "no rtc_cmos \"setting system clock\" line:\n{}",
                tail(&after, 60)
            )
        });
    assert!(
        rtc_secs >= window.0 - 2 && rtc_secs <= window.1 + 2,
        "the guest's RTC read {rtc_secs}, outside the run's wall-clock window {window:?}"
    );
    eprintln!("{rtc_line} (host wall clock during that run: {window:?})");
    eprintln!(
        "lazy restore through the fetch agent: resume {resume_ms:.1} ms, restore to \"{INIT_MARKER}\" \
         {to_init_s:.1} s"
    );
}
/// The archive writer the initramfs is made with.
#[test]
fn cpio_entries_are_newc_with_padded_names_and_data() {
    use linux_guest::{Cpio, REGULAR};
    let mut c = Cpio::new();
    c.entry("init", REGULAR | 0o755, b"abcde", (0, 0));
    let out = c.finish();
    assert!(out.starts_with(b"070701"));
    // 110-byte header, "init\0" padded to 4 bytes (116), 5 bytes of data padded (124).
    assert_eq!(&out[110..115], b"init\0");
    assert_eq!(&out[116..121], b"abcde");
    assert_eq!(&out[124..130], b"070701");
    assert_eq!(out.len() % 4, 0);
    let mode = u32::from_str_radix(std::str::from_utf8(&out[14..22]).unwrap(), 16).unwrap();
    assert_eq!(mode, REGULAR | 0o755);
    assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
}
