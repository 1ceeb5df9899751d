//! virtio-blk disks through `thaw vm`: bad disk configuration is refused with a clear error
//! (missing image, a read-only image file given for writing, the wrong count at restore), and a
//! checkpoint keeps its disks: a restore in a fresh process reopens the saved paths or takes
//! `--disk` replacements, and the guest runs on to its checksums.

mod bins;

use std::path::Path;

fn thaw_vm_fails(args: &[String]) -> String {
    let out = bins::thaw()
        .arg("vm")
        .args(args)
        .args(["--json", "--serial=none", "--timeout=120s"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "thaw vm {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn image(path: &Path) -> String {
    std::fs::write(path, vec![0u8; 64 << 10]).unwrap();
    path.to_str().unwrap().to_string()
}

const GUEST: [&str; 2] = ["--memory=16MiB", "--touches=20000000"];

#[test]
fn bad_disk_configuration_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let mut args = vec!["run".to_string(), format!("--disk={}", missing.display())];
    args.extend(GUEST.map(String::from));
    let err = thaw_vm_fails(&args);
    assert!(
        err.contains("disk 0") && err.contains("missing.img") && err.contains("No such file"),
        "{err}"
    );

    let locked = image(&dir.path().join("locked.img"));
    let mut perm = std::fs::metadata(&locked).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&locked, perm).unwrap();
    let mut args = vec!["run".to_string(), format!("--disk={locked}")];
    args.extend(GUEST.map(String::from));
    let err = thaw_vm_fails(&args);
    assert!(err.contains("is read-only") && err.contains(",ro"), "{err}");

    let mut args = vec!["run".to_string(), format!("--disk={locked},rx")];
    args.extend(GUEST.map(String::from));
    let err = thaw_vm_fails(&args);
    assert!(err.contains("unknown option"), "{err}");

    // Read-only use of the same file is fine.
    let mut args = vec!["run".to_string(), format!("--disk={locked},ro")];
    args.extend(GUEST.map(String::from));
    let lines = bins::thaw_vm(&args);
    bins::event(&lines, "done");
}

#[test]
fn a_checkpoint_keeps_its_disks_and_a_restore_reopens_or_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").to_str().unwrap().to_string();
    let a = image(&dir.path().join("a.img"));
    let b = image(&dir.path().join("b.img"));
    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={store}"),
        "--at=50ms".into(),
        format!("--disk={a}"),
        format!("--disk={b},ro"),
    ];
    args.extend(GUEST.map(String::from));
    let lines = bins::thaw_vm(&args);
    let id = bins::event(&lines, "checkpoint")["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let restore = |extra: &[String]| {
        let mut args = vec![
            "restore".to_string(),
            format!("--store={store}"),
            format!("--id={id}"),
            "--eager".into(),
        ];
        args.extend_from_slice(extra);
        args
    };

    // The saved paths are reopened.
    bins::event(&bins::thaw_vm(&restore(&[])), "done");

    let err = thaw_vm_fails(&restore(&[format!("--disk={a}")]));
    assert!(
        err.contains("1 --disk given at restore, but the checkpoint has 2 disks"),
        "{err}"
    );

    // Replacements, same count and order: the first saved image may be gone.
    let c = image(&dir.path().join("c.img"));
    std::fs::remove_file(&a).unwrap();
    let err = thaw_vm_fails(&restore(&[]));
    assert!(err.contains("disk 0") && err.contains("a.img"), "{err}");
    let lines = bins::thaw_vm(&restore(&[format!("--disk={c}"), format!("--disk={b},ro")]));
    bins::event(&lines, "done");
}
