//! virtio-net through `thaw vm`: a tap that does not exist is refused (never created), and a
//! checkpoint taken on one host's tap restores in a fresh process on another host's tap
//! (`--net tap=NAME`), each "host" a network namespace this test makes and deletes.

mod bins;

use std::process::{Command, Output};

struct Netns(String);

impl Netns {
    fn new(tag: &str, tap: &str) -> Netns {
        let name = format!("thaw-e2e-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "tuntap", "add", "dev", tap, "mode", "tap"]);
        ip(&["-n", &ns.0, "link", "set", tap, "up"]);
        ns
    }

    /// `thaw vm ARGS --json --serial=none` inside the namespace.
    fn thaw_vm(&self, args: &[String]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .arg(bins::binary("thaw"))
            .env("THAW_KEY_DIR", bins::key_dir())
            .arg("vm")
            .args(args)
            .args(["--json", "--serial=none", "--timeout=120s"])
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ok_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const GUEST: [&str; 2] = ["--memory=16MiB", "--touches=20000000"];

#[test]
fn a_missing_tap_is_refused_and_a_restore_moves_to_another_hosts_tap() {
    let a = Netns::new("a", "tapa");
    let b = Netns::new("b", "tapb");
    let mut args = vec!["run".to_string(), "--net=tap=nosuch0".into()];
    args.extend(GUEST.map(String::from));
    let err = failure(&a.thaw_vm(&args));
    assert!(
        err.contains("network interface 0") && err.contains("tap device nosuch0 does not exist"),
        "{err}"
    );
    let out = Command::new("ip")
        .args(["-n", &a.0, "link", "show", "nosuch0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "thaw created the missing tap");

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").to_str().unwrap().to_string();
    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={store}"),
        "--at=50ms".into(),
        "--net=tap=tapa,mac=06:00:00:00:00:42".into(),
    ];
    args.extend(GUEST.map(String::from));
    let lines = ok_lines(&a.thaw_vm(&args));
    let id = bins::event(&lines, "checkpoint")["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore".to_string(),
            format!("--store={store}"),
            format!("--id={id}"),
            "--eager".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // Host b has no tapa: the saved tap is refused, an override to b's tap restores.
    let err = failure(&b.thaw_vm(&restore(&[])));
    assert!(err.contains("tap device tapa does not exist"), "{err}");
    let err = failure(&b.thaw_vm(&restore(&["--net=tap=tapb,mac=06:00:00:00:00:01"])));
    assert!(err.contains("keeps the MAC"), "{err}");
    let lines = ok_lines(&b.thaw_vm(&restore(&["--net=tap=tapb"])));
    bins::event(&lines, "done");
    // And on host a the saved tap is reopened.
    let lines = ok_lines(&a.thaw_vm(&restore(&[])));
    bins::event(&lines, "done");
}
