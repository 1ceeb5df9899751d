//! Opt-in (THAW_LINUX_TEST=1): boot Debian's cloud kernel with a busybox initramfs to a marker line,
//! checkpoint it once its counter is printing, restore it lazily in a fresh process, and see the
//! counter go on. Kernel and busybox come from Debian's packages (apt-get download + dpkg -x).
//!
//! `THAW_LINUX_TEST=1 cargo test -p thaw-e2e --release --test vm_linux_boot -- --nocapture`
//! On a KVM that emulates guest kernel code (see docs/design.md) this takes hours; on hardware KVM
//! seconds. THAW_LINUX_DIR keeps the downloads and logs (default: a directory under the target dir).

mod bins;
mod common;

use common::linux_guest::{Cpio, CHAR_DEVICE, DIR, REGULAR, SYMLINK};

use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Downloads and unpacks the kernel and busybox once; returns (vmlinuz, busybox).
fn fetch(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let find_kernel = |root: &Path| {
        std::fs::read_dir(root.join("boot")).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
        })
    };
    if find_kernel(&root).is_none() || !root.join("bin/busybox").exists() {
        let deps = sh("apt-cache depends linux-image-cloud-amd64", dir);
        let versioned = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .unwrap_or_else(|| panic!("no versioned kernel package in {deps}"))
            .to_string();
        sh(&format!("apt-get download {versioned} busybox-static"), dir);
        sh("for d in *.deb; do dpkg -x \"$d\" root; done", dir);
    }
    (find_kernel(&root).unwrap(), root.join("bin/busybox"))
}

fn initramfs(busybox: &Path) -> Vec<u8> {
    let init = "#!/bin/busybox sh\n\
/bin/busybox mount -t proc proc /proc\n\
echo THAW-LINUX-BOOTED\n\
i=0\n\
while true; do i=$((i+1)); echo \"thaw-counter $i\"; /bin/busybox sleep 1; done\n";
    let bb = std::fs::read(busybox).unwrap();
    let mut cpio = Cpio::new();
    cpio.entry("bin", DIR | 0o755, &[], (0, 0))
        .entry("dev", DIR | 0o755, &[], (0, 0))
        .entry("proc", DIR | 0o755, &[], (0, 0))
        .entry("dev/console", CHAR_DEVICE | 0o600, &[], (5, 1))
        .entry("bin/busybox", REGULAR | 0o755, &bb, (0, 0))
        .entry("bin/sh", SYMLINK | 0o777, b"busybox", (0, 0))
        .entry("init", REGULAR | 0o755, init.as_bytes(), (0, 0));
    cpio.finish()
}

fn run(args: &[String]) -> Vec<serde_json::Value> {
    let started = std::time::Instant::now();
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
#[cfg_attr(not(thaw_linux_test), ignore = "opt-in: THAW_LINUX_TEST=1")]
fn linux_boots_checkpoints_and_goes_on_after_a_lazy_restore() {
    let dir = std::env::var_os("THAW_LINUX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-guest"));
    std::fs::create_dir_all(&dir).unwrap();
    let (kernel, busybox) = fetch(&dir);
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(&busybox)).unwrap();
    let store = dir.join("store");
    let boot_log = dir.join("boot.log");
    let restore_log = dir.join("restore.log");
    let _ = std::fs::remove_file(&boot_log);
    let _ = std::fs::remove_file(&restore_log);
    let lines = run(&[
        "checkpoint".into(),
        format!("--kernel={}", kernel.display()),
        format!("--initrd={}", initrd.display()),
        "--memory=256MiB".into(),
        // The software KVM here cannot emulate cmpxchg16b or xrstor in guest kernel code: a
        // baseline CPU without CX16 and `noxsave` keep the kernel off them (harmless on hardware).
        "--cpu-baseline=x86-64".into(),
        format!("--cmdline={} noxsave", vmm::boot::linux::DEFAULT_CMDLINE),
        format!("--store={}", store.display()),
        "--on-serial=thaw-counter 3".into(),
        format!("--serial={}", boot_log.display()),
        "--timeout=6h".into(),
    ]);
    let boot = std::fs::read_to_string(&boot_log).unwrap();
    assert!(boot.contains("THAW-LINUX-BOOTED"), "{boot}");
    let id = lines.iter().find(|l| l["event"] == "checkpoint").unwrap()["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    run(&[
        "restore".into(),
        format!("--store={}", store.display()),
        format!("--id={id}"),
        format!("--serial={}", restore_log.display()),
        "--until-serial=thaw-counter 5".into(),
        "--timeout=3h".into(),
    ]);
    let after = std::fs::read_to_string(&restore_log).unwrap();
    assert!(after.contains("thaw-counter 4"), "{after}");
    assert!(
        !after.contains("THAW-LINUX-BOOTED"),
        "the restored guest booted again: {after}"
    );
}
