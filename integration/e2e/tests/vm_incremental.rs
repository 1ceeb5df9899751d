//! Incremental checkpoints through the control API: a chain of ten checkpoints of one running
//! test guest (it writes between them), each restored in a fresh process and finishing with the
//! model's checksum; each after the first uploads about what the guest wrote; a restored VM's
//! first checkpoint is a diff of the checkpoint it was restored from and restores exactly too;
//! and the API refuses a second concurrent checkpoint, a parent it does not know, and a VM that
//! has stopped, each saying why.

mod bins;

use std::path::Path;
use std::time::Duration;
use vmm::boot::testguest::{self, Params, Pattern};

const MEMORY: u64 = 64 << 20;
const TOUCHES: u64 = 60_000_000;
const SEED: u64 = 11;

fn expected() -> u64 {
    testguest::model_checksum(
        &Params {
            pattern: Pattern::Random,
            touches_per_cpu: TOUCHES,
            report_every: 0,
            seed: SEED,
            hot_percent: 10,
        },
        testguest::area_size_for(MEMORY),
        1,
        0,
    )
}

fn guest_args() -> Vec<String> {
    vec![
        format!("--memory={MEMORY}"),
        "--pattern=random".into(),
        format!("--touches={TOUCHES}"),
        format!("--seed={SEED}"),
    ]
}

/// `thaw vm checkpoint --api SOCKET --store STORE EXTRA...`: the checkpoint's JSON, or the error.
fn checkpoint(socket: &Path, store: &Path, extra: &[&str]) -> Result<serde_json::Value, String> {
    let out = bins::thaw()
        .args(["vm", "checkpoint", "--json", "--api"])
        .arg(socket)
        .arg("--store")
        .arg(store)
        .args(extra)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    Ok(line["checkpoint"].clone())
}

fn restore_checksum(store: &Path, id: &str) -> u64 {
    let lines = bins::thaw_vm(&[
        "restore".into(),
        format!("--store={}", store.display()),
        format!("--id={id}"),
    ]);
    bins::event(&lines, "done")["checksums"][0]
        .as_u64()
        .unwrap()
}

fn stop(socket: &Path) {
    let out = bins::thaw()
        .args(["vm", "stop", "--api"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_chain_of_ten_checkpoints_restores_each_exactly_and_diffs_upload_what_changed() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let socket = dir.path().join("vm.sock");
    let mut args = vec!["run".to_string(), format!("--api={}", socket.display())];
    args.extend(guest_args());
    let vm = bins::spawn_thaw_vm(&args);
    bins::wait_for_path(&socket, Duration::from_secs(60));

    let mut chain: Vec<serde_json::Value> = Vec::new();
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let ck = checkpoint(&socket, &store, &[]).unwrap_or_else(|e| panic!("checkpoint {i}: {e}"));
        match chain.last() {
            None => {
                assert!(ck["parent"].is_null(), "the first is full: {ck}");
                assert!(ck["incremental"].is_null(), "{ck}");
            }
            Some(prev) => {
                assert_eq!(ck["parent"], prev["id"], "checkpoint {i}: {ck}");
                let inc = &ck["incremental"];
                let dirty = inc["dirty_bytes"].as_u64().unwrap();
                assert!(dirty > 0, "the guest wrote between checkpoints: {ck}");
                assert!(inc["kept_blocks"].as_u64().unwrap() > 0, "{ck}");
                // What went up: blocks holding the dirty pages (compressed), the state and the
                // manifest (its block list, about 100 bytes an entry).
                let uploaded = ck["uploaded_bytes"].as_u64().unwrap();
                let state = ck["state_blob_bytes"].as_u64().unwrap();
                let manifest = ck["blocks"].as_u64().unwrap() * 128 + 4096;
                assert!(
                    uploaded as f64 <= 1.1 * dirty as f64 + (state + manifest) as f64,
                    "checkpoint {i} uploaded {uploaded} bytes for {dirty} dirty bytes: {ck}"
                );
            }
        }
        chain.push(ck);
    }
    stop(&socket);
    drop(vm);

    let expected = expected();
    for (i, ck) in chain.iter().enumerate() {
        let id = ck["id"].as_str().unwrap();
        assert_eq!(
            restore_checksum(&store, id),
            expected,
            "checkpoint {i} ({id}) of the chain"
        );
    }
}

#[test]
fn a_restored_vm_is_checkpointed_as_a_diff_of_its_checkpoint() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let socket = dir.path().join("vm.sock");
    let mut args = vec!["run".to_string(), format!("--api={}", socket.display())];
    args.extend(guest_args());
    let vm = bins::spawn_thaw_vm(&args);
    bins::wait_for_path(&socket, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let base = checkpoint(&socket, &store, &["--stop"]).unwrap();
    drop(vm);
    let base_id = base["id"].as_str().unwrap();

    // Restored lazily and eagerly: each one's first checkpoint is a diff of `base`.
    for mode in [None, Some("--eager")] {
        let restored_socket = dir.path().join("restored.sock");
        let mut args = vec![
            "restore".to_string(),
            format!("--store={}", store.display()),
            format!("--id={base_id}"),
            format!("--api={}", restored_socket.display()),
        ];
        args.extend(mode.map(String::from));
        let restored = bins::spawn_thaw_vm(&args);
        bins::wait_for_path(&restored_socket, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let child = checkpoint(&restored_socket, &store, &[]).unwrap();
        assert_eq!(child["parent"], base_id, "{mode:?}: {child}");
        let inc = &child["incremental"];
        let total_pages = MEMORY / 4096;
        assert!(
            inc["dirty_pages"].as_u64().unwrap() < total_pages / 2,
            "{mode:?}: only what the restored guest wrote is dirty: {child}"
        );
        stop(&restored_socket);
        drop(restored);
        let id = child["id"].as_str().unwrap();
        assert_eq!(restore_checksum(&store, id), expected(), "{mode:?}");
    }
}

#[test]
fn the_api_refuses_concurrent_unknown_parent_and_stopped_vm_checkpoints_saying_why() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let socket = dir.path().join("vm.sock");
    // Big enough that a full checkpoint takes a while here.
    let vm = bins::spawn_thaw_vm(&[
        "run".into(),
        format!("--api={}", socket.display()),
        "--memory=1GiB".into(),
        format!("--touches={}", u64::MAX / 4),
    ]);
    bins::wait_for_path(&socket, Duration::from_secs(60));

    let diff = checkpoint(&socket, &store, &["--parent", "1a2b3c-unknown"]).unwrap_err();
    assert!(
        diff.contains("1a2b3c-unknown") && diff.contains("not one this VM produced"),
        "{diff}"
    );
    let no_parent = bins::thaw()
        .args(["vm", "checkpoint", "--api"])
        .arg(&socket)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(no_parent.status.success());

    // Two at once: the one asked for while the other is written is refused.
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| checkpoint(&socket, &store, &["--full"]));
        std::thread::sleep(Duration::from_millis(100));
        let second = s.spawn(|| checkpoint(&socket, &store, &[]));
        (first.join().unwrap(), second.join().unwrap())
    });
    let refused = match (&first, &second) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e.clone(),
        _ => panic!("one of two concurrent checkpoints is refused: {first:?} {second:?}"),
    };
    assert!(
        refused.contains("409") && refused.contains("being written"),
        "{refused}"
    );

    stop(&socket);
    let out = vm.output();
    assert!(out.status.success());
    let gone = checkpoint(&socket, &store, &[]).unwrap_err();
    assert!(
        gone.contains("connecting to the VM's control API"),
        "{gone}"
    );
}
