//! Opt-in (slow: guest kernel code is emulated on this machine's KVM): the minimal Linux kernel
//! (scripts/build-linux) mounts its root file system read-write from a virtio-blk ext4 image,
//! is checkpointed right after the mount, and restored lazily in a fresh process, where it goes
//! on to read /sbin/init from the same disk and run it.
//!
//! `cargo test -p thaw-e2e --test vm_linux_virtio_blk -- --ignored --nocapture`
//!
//! The init makes no system call (Linux user space cannot make them on this KVM). To leave
//! evidence that it was read from the disk and ran, it stores to address 0: the kernel logs
//! `init[1]: segfault at 0 ip ...` (and, with `panic=0`, halts rather than rebooting).
//! THAW_LINUX_DIR keeps the image and logs (default: a directory under the target dir).

mod bins;
mod common;

use common::linux_guest::{ext4_root, minimal_kernel};
use std::path::PathBuf;
use std::time::Instant;

fn run(args: &[String]) -> Vec<serde_json::Value> {
    let started = Instant::now();
    let out = bins::thaw()
        .arg("vm")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    eprintln!(
        "thaw vm {} took {:?}\n{}",
        args[0],
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.success(),
        "thaw vm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
#[ignore = "opt-in, minutes: cargo test -p thaw-e2e --test vm_linux_virtio_blk -- --ignored"]
fn linux_mounts_its_root_from_virtio_blk_and_execs_init_from_it_after_a_restore() {
    let dir = std::env::var_os("THAW_LINUX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-virtio-blk"));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = minimal_kernel();
    let img = ext4_root(
        &dir,
        "void _start(void) { *(volatile long *)0 = 1; for (;;) ; }\n",
    );
    let store = dir.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let boot_log = dir.join("boot.log");
    let restore_log = dir.join("restore.log");
    let _ = std::fs::remove_file(&boot_log);
    let _ = std::fs::remove_file(&restore_log);
    let t0 = Instant::now();
    let lines = run(&[
        "checkpoint".into(),
        format!("--kernel={}", kernel.display()),
        "--memory=128MiB".into(),
        "--cpu-baseline=x86-64".into(),
        format!(
            "--cmdline={} noxsave root=/dev/vda rw panic=0",
            vmm::boot::linux::DEFAULT_CMDLINE
        ),
        format!("--disk={}", img.display()),
        format!("--store={}", store.display()),
        "--on-serial=VFS: Mounted root".into(),
        format!("--serial={}", boot_log.display()),
        "--timeout=30m".into(),
    ]);
    eprintln!("boot to the root mount and checkpoint: {:?}", t0.elapsed());
    let boot = std::fs::read_to_string(&boot_log).unwrap();
    assert!(boot.contains("virtio_blk virtio0: [vda]"), "{boot}");
    assert!(
        boot.contains("[vda] 32768 512-byte logical blocks"),
        "{boot}"
    );
    assert!(boot.contains("EXT4-fs (vda): mounted filesystem"), "{boot}");
    assert!(
        boot.contains("VFS: Mounted root (ext4 filesystem) on device"),
        "{boot}"
    );
    assert!(!boot.contains("readonly"), "mounted read-only: {boot}");
    let id = lines.iter().find(|l| l["event"] == "checkpoint").unwrap()["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The restored kernel reads /sbin/init from the disk to execute it, and init's fault is
    // logged only if its code arrived intact and ran.
    let t1 = Instant::now();
    run(&[
        "restore".into(),
        format!("--store={}", store.display()),
        format!("--id={id}"),
        format!("--serial={}", restore_log.display()),
        "--until-serial=segfault at 0 ip".into(),
        "--timeout=20m".into(),
    ]);
    eprintln!("restore and run: {:?}", t1.elapsed());
    let after = std::fs::read_to_string(&restore_log).unwrap();
    assert!(after.contains("Run /sbin/init as init process"), "{after}");
    assert!(!after.contains("Failed to execute"), "{after}");
    assert!(after.contains("init[1]: segfault at 0 ip"), "{after}");
    assert!(
        !after.contains("VFS: Mounted root"),
        "the restored guest mounted its root again: {after}"
    );
}
