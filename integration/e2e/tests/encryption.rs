//! Encryption at rest end to end, with real processes and the test guest:
//! a checkpoint written with a tenant key restores eagerly and lazily with
//! the right checksums, is refused clearly without its key or with another,
//! and a block server never given a key serves it to an agent that has it.

mod bins;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use thaw_format::{CheckpointId, TenantKey};
use thaw_store::reader::load_manifest;
use thaw_store::tenant_key::write_new_tenant_key;
use thaw_store::Store;

const GUEST: [&str; 4] = [
    "--memory=64MiB",
    "--pattern=random",
    "--touches=20000",
    "--seed=23",
];

/// Keys and a store in a temporary directory. Every process gets
/// `THAW_KEY_DIR`: `keys` (which holds `tenant.key`) or `empty` (no tenant key), so
/// nothing in the user's own key directory takes part.
struct Setup {
    dir: tempfile::TempDir,
    key: TenantKey,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = write_new_tenant_key(&dir.path().join("keys/tenant.key")).unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        // Both directories hold the tests' signing key pair: checkpoints are signed and
        // checked as everywhere else; only the tenant key differs.
        for sub in ["keys", "empty"] {
            for file in [
                thaw_store::keys::SIGNING_KEY_FILE,
                thaw_store::keys::PUBLIC_KEY_FILE,
            ] {
                std::fs::copy(bins::key_dir().join(file), dir.path().join(sub).join(file)).unwrap();
            }
        }
        Setup { dir, key }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> String {
        self.path("store").to_str().unwrap().to_owned()
    }

    /// `thaw ARGS` with the key directory `key_dir` (`keys` or `empty`).
    fn thaw(&self, key_dir: &str, args: &[&str]) -> Command {
        let mut c = bins::thaw();
        c.env("THAW_KEY_DIR", self.path(key_dir)).args(args);
        c
    }

    /// `thaw vm ARGS` (console off, two-minute timeout).
    fn vm(&self, key_dir: &str, args: &[&str]) -> Output {
        let mut c = self.thaw(key_dir, &["vm"]);
        c.args(args)
            .args(["--json", "--serial=none", "--timeout=120s"]);
        c.output().unwrap()
    }

    /// An encrypted checkpoint of the test guest (the key found in the key
    /// directory, as a user who ran key generation has it) and the
    /// checksums of an uninterrupted run.
    fn checkpoint(&self) -> (String, serde_json::Value) {
        let mut run = vec!["run"];
        run.extend(GUEST);
        let want = done(&ok(self.vm("empty", &run)))["checksums"].clone();
        let store_arg = format!("--store={}", self.store());
        let mut ck = vec!["checkpoint", &store_arg, "--at=300ms"];
        ck.extend(GUEST);
        let lines = ok(self.vm("keys", &ck));
        let id = lines
            .iter()
            .find(|l| l["event"] == "checkpoint")
            .expect("checkpoint event")["checkpoint"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (id, want)
    }
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ok(out: Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "thaw failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&out)
}

fn done(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines
        .iter()
        .find(|l| l["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {lines:?}"))
}

/// A failed command: its stderr, after checking no guest finished.
fn refused(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    assert!(
        !lines(&out).iter().any(|l| l["event"] == "done"),
        "a guest ran"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn kvm() -> bool {
    let here = Path::new("/dev/kvm").exists();
    if !here {
        eprintln!("no /dev/kvm: skipped");
    }
    here
}

fn manifest_key_id(store: &str, id: &str) -> thaw_format::KeyId {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(store).unwrap();
    let m = rt
        .block_on(load_manifest(
            &store,
            &CheckpointId::new(id).unwrap(),
            &bins::trust(),
        ))
        .unwrap();
    m.manifest
        .encryption
        .expect("the checkpoint is encrypted")
        .key_id
}

#[test]
fn encrypted_checkpoint_restores_eagerly_and_lazily_and_only_with_its_key() {
    if !kvm() {
        return;
    }
    let s = Setup::new();
    let (id, want) = s.checkpoint();
    let store = s.store();
    assert_eq!(manifest_key_id(&store, &id), s.key.id());

    let store_arg = format!("--store={store}");
    let id_arg = format!("--id={id}");
    let restore = ["restore", &store_arg, &id_arg];
    // Eager, with the key of the key directory.
    let eager = ok(s.vm("keys", &[&restore[..], &["--eager"]].concat()));
    assert_eq!(done(&eager)["checksums"], want, "eager restore");
    // Lazy (the in-process fetch agent), with the key named by flag.
    let key_file = s.path("keys/tenant.key");
    let key_arg = format!("--tenant-key={}", key_file.display());
    let lazy = ok(s.vm("empty", &[&restore[..], &[key_arg.as_str()]].concat()));
    assert_eq!(done(&lazy)["checksums"], want, "lazy restore");

    // Without a key: refused, naming the key the checkpoint needs.
    let key_id = s.key.id().to_string();
    for mode in [&[][..], &["--eager"][..]] {
        let err = refused(s.vm("empty", &[&restore[..], mode].concat()));
        assert!(
            err.contains(&key_id) && err.contains("no tenant key"),
            "{err}"
        );
    }
    // With another tenant's key: refused, naming both.
    let other = s.path("other.key");
    let other_key = write_new_tenant_key(&other).unwrap();
    let other_arg = format!("--tenant-key={}", other.display());
    let err = refused(s.vm("keys", &[&restore[..], &[other_arg.as_str()]].concat()));
    assert!(
        err.contains(&key_id) && err.contains(&other_key.id().to_string()),
        "{err}"
    );

    // `thaw checkpoint verify` decrypts every block with the key, and
    // refuses without it.
    let verify = |key_dir: &str| {
        s.thaw(key_dir, &["checkpoint", "verify", &store, &id])
            .output()
            .unwrap()
    };
    let out = verify("keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    let out = verify("empty");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&key_id), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn block_server_without_a_key_serves_an_encrypted_checkpoint_to_an_agent_with_it() {
    if !kvm() {
        return;
    }
    let s = Setup::new();
    let (id, want) = s.checkpoint();
    let store = s.store();
    let pki = s.path("pki");

    // The block server has no key: an empty key directory, no flag.
    let mut server = s.thaw(
        "empty",
        &["block-server", "--listen", "127.0.0.1:0", "--store", &store],
    );
    server
        .arg("--dev-pki")
        .arg(&pki)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = bins::Killed(server.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();

    let sock = s.path("agent.sock");
    let port = free_port();
    let key_file = s.path("keys/tenant.key");
    let mut agent = s.thaw(
        "empty",
        &[
            "agent",
            "--socket",
            sock.to_str().unwrap(),
            "--store",
            &store,
            "--block-server",
            &addr,
        ],
    );
    agent
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("client.pem"))
        .arg("--key")
        .arg(pki.join("client.key"))
        .arg("--tenant-key")
        .arg(&key_file)
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null());
    let _agent = bins::Killed(agent.spawn().unwrap());
    bins::wait_until("the agent starts", Duration::from_secs(30), || {
        sock.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    // The vmm reads the (encrypted) state blob itself: it has the key too.
    let store_arg = format!("--store={store}");
    let id_arg = format!("--id={id}");
    let agent_arg = format!("--agent={}", sock.display());
    let restored = ok(s.vm("keys", &["restore", &store_arg, &id_arg, &agent_arg]));
    assert_eq!(
        done(&restored)["checksums"],
        want,
        "restore via the block server"
    );

    // The blocks came from the block server, as ciphertext it verified by
    // their stored hashes; the agent decrypted them.
    let metrics = scrape(port);
    let from_server: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("thaw_agent_blocks_fetched_total{source=\"block_server\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        from_server > 0.0,
        "no block came from the block server:\n{metrics}"
    );
    let bad: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("thaw_agent_bad_blocks_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(bad, 0.0, "{metrics}");
}
