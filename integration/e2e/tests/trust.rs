//! End to end with real processes: checkpoints are signed, and one altered in the store is
//! refused by every restore mode and by `thaw checkpoint verify`, even when the forger kept it
//! consistent (new block bytes, both of the block's hashes and the manifest's checksum
//! recomputed). A block server fronting a forged copy of the store cannot feed a guest either:
//! the fetch agent serves only the manifest the VMM verified, and the guest ends with the
//! checksums of an uninterrupted run.

mod bins;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use object_store::ObjectStoreExt;
use thaw_format::signature::{self, SigningKey};
use thaw_format::CheckpointId;
use thaw_store::reader::read_manifest_object;
use thaw_store::{CheckpointReader, Store};
use vmm::boot::testguest::{self, Params, Pattern};

const MEMORY: u64 = 32 << 20;
const TOUCHES: u64 = 20_000_000;

fn guest_args() -> Vec<String> {
    vec![
        format!("--memory={MEMORY}"),
        "--pattern=random".into(),
        format!("--touches={TOUCHES}"),
        "--seed=11".into(),
    ]
}

/// The checksums of an uninterrupted run (the host-side model of the test guest).
fn expected() -> Vec<u64> {
    let params = Params {
        pattern: Pattern::Random,
        touches_per_cpu: TOUCHES,
        report_every: 0,
        seed: 11,
        hot_percent: 10,
    };
    vec![testguest::model_checksum(
        &params,
        testguest::area_size_for(MEMORY),
        1,
        0,
    )]
}

fn checksums(lines: &[serde_json::Value]) -> Vec<u64> {
    bins::event(lines, "done")["checksums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Checkpoints the test guest mid-run into `store` (signed with the tests' key).
fn checkpoint(store: &str) -> String {
    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={store}"),
        "--at=200ms".into(),
    ];
    args.extend(guest_args());
    let lines = bins::thaw_vm(&args);
    let ck = &bins::event(&lines, "checkpoint")["checkpoint"];
    assert_eq!(ck["signed"], true, "{ck}");
    ck["id"].as_str().unwrap().to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Rewrites one block of checkpoint `id` consistently, as a forger with write access to the
/// store can: new bytes in a new object, the block's entry pointing at them with both hashes
/// recomputed, the manifest re-encoded (its checksum too). Returns the forged manifest frame and
/// the original manifest object.
fn forge_block(store: &Store, id: &str) -> (Vec<u8>, Vec<u8>) {
    let rt = runtime();
    let cid = CheckpointId::new(id).unwrap();
    rt.block_on(async {
        let original = read_manifest_object(store, &cid).await.unwrap().to_vec();
        let reader = CheckpointReader::open(store, &cid, &bins::trust())
            .await
            .unwrap();
        let mut m = reader.manifest().clone();
        let victim = m.blocks.len() / 2;
        let mut raw = reader
            .fetch_block(victim as u32)
            .await
            .unwrap()
            .data
            .to_vec();
        raw[100] ^= 0xff;
        let forged = thaw_format::encode_block(&raw);
        let key = format!("checkpoints/{id}/forged-000000");
        store
            .object_store()
            .put(&key.as_str().into(), forged.stored.clone().into())
            .await
            .unwrap();
        m.objects.push(key);
        let pages = m.blocks[victim].pages.clone();
        m.blocks[victim] = forged.entry(pages, m.objects.len() as u32 - 1, 0);
        (thaw_format::encode(&m), original)
    })
}

fn put_manifest(store: &Store, id: &str, object: Vec<u8>) {
    runtime().block_on(async {
        store
            .object_store()
            .put(
                &format!("checkpoints/{id}/manifest").as_str().into(),
                object.into(),
            )
            .await
            .unwrap();
    });
}

fn vm(args: &[String]) -> Output {
    bins::thaw()
        .arg("vm")
        .args(args)
        .args(["--json", "--serial=none", "--timeout=120s"])
        .output()
        .unwrap()
}

fn refused(out: &Output, what: &str, why: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded:\n{stdout}");
    assert!(
        !stdout.contains("\"done\""),
        "{what}: a guest ran on forged memory:\n{stdout}"
    );
    assert!(
        stderr.contains("not trusted") && stderr.contains(why),
        "{what} should say the checkpoint is not trusted ({why}):\n{stderr}"
    );
}

#[test]
fn a_forged_checkpoint_is_refused_by_every_restore_mode_and_by_verify() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("store").to_str().unwrap().to_owned();
    let id = checkpoint(&spec);
    let store = Store::open(&spec).unwrap();
    let (forged, original) = forge_block(&store, &id);
    let sock = dir.path().join("agent.sock");
    let _agent = bins::Killed(
        bins::thaw()
            .args([
                "agent",
                "--socket",
                sock.to_str().unwrap(),
                "--store",
                &spec,
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    bins::wait_for_path(&sock, Duration::from_secs(20));

    let forger = SigningKey::from_bytes(&[0xf0; 32]);
    let section = &original[original.len() - signature::SECTION_LEN..];
    let variants: [(&str, Vec<u8>, &str); 3] = [
        ("unsigned", forged.clone(), "not signed"),
        (
            "the original signature kept",
            [forged.as_slice(), section].concat(),
            "does not verify",
        ),
        (
            "signed by the forger",
            signature::sign(&forged, &forger),
            "not among the trusted keys",
        ),
    ];
    for (variant, object, why) in variants {
        put_manifest(&store, &id, object);
        let out = bins::thaw()
            .args(["checkpoint", "verify", &spec, &id])
            .output()
            .unwrap();
        refused(&out, &format!("verify ({variant})"), why);
        for mode in [
            Some("--eager".to_string()),
            None,
            Some(format!("--agent={}", sock.display())),
        ] {
            let mut args = vec![
                "restore".to_string(),
                format!("--store={spec}"),
                format!("--id={id}"),
            ];
            args.extend(mode.clone());
            refused(&vm(&args), &format!("restore {mode:?} ({variant})"), why);
        }
    }

    // The forgery is consistent: only the signature tells it apart. Accepting unsigned
    // checkpoints explicitly, verify passes it.
    put_manifest(&store, &id, forged);
    let out = bins::thaw()
        .args(["checkpoint", "verify", &spec, &id, "--insecure-unsigned"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The original object, restored, verifies and restores again.
    put_manifest(&store, &id, original);
    let out = bins::thaw()
        .args(["checkpoint", "verify", &spec, &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = bins::thaw_vm(&[
        "restore".into(),
        format!("--store={spec}"),
        format!("--id={id}"),
        "--eager".into(),
    ]);
    assert_eq!(checksums(&lines), expected());
}

#[test]
fn a_block_server_fronting_a_forged_store_cannot_feed_the_guest() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let genuine = dir.path().join("genuine").to_str().unwrap().to_owned();
    let id = checkpoint(&genuine);
    // The block server's store: a copy, then forged (re-signed by the forger).
    let copy = dir.path().join("copy");
    let status = std::process::Command::new("cp")
        .args(["-r", &genuine, copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let copy_store = Store::open(copy.to_str().unwrap()).unwrap();
    let (forged, _) = forge_block(&copy_store, &id);
    let forger = SigningKey::from_bytes(&[0xf0; 32]);
    put_manifest(&copy_store, &id, signature::sign(&forged, &forger));

    let pki = dir.path().join("pki");
    let mut server = bins::Killed(
        bins::thaw()
            .args(["block-server", "--listen", "127.0.0.1:0", "--store"])
            .arg(&copy)
            .arg("--dev-pki")
            .arg(&pki)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();

    let sock = dir.path().join("agent.sock");
    let agent_log = dir.path().join("agent.log");
    let _agent = bins::Killed(
        bins::thaw()
            .args([
                "agent",
                "--socket",
                sock.to_str().unwrap(),
                "--store",
                &genuine,
            ])
            .args(["--block-server", &addr])
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("client.pem"))
            .arg("--key")
            .arg(pki.join("client.key"))
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap(),
    );
    bins::wait_for_path(&sock, Duration::from_secs(20));
    let lines = bins::thaw_vm(&[
        "restore".into(),
        format!("--store={genuine}"),
        format!("--id={id}"),
        format!("--agent={}", sock.display()),
    ]);
    assert_eq!(
        checksums(&lines),
        expected(),
        "the guest must end as an uninterrupted run does"
    );
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        log.contains("differs from") && log.contains("the VMM verified"),
        "the agent should have refused the block server's manifest:\n{log}"
    );
}
