//! The test guest checkpointed mid-run at several moments, by one process; the original VM resumes
//! to the end, and fresh processes restore the checkpoint eagerly, lazily (the fetch agent's code
//! inside the restoring process) and through a fetch agent in another process (this test's).
//! Every run ends with the checksums of the host-side model of an uninterrupted run.

mod bins;

use fetch_agent::{Agent, AgentConfig};
use std::os::unix::net::UnixListener;
use vmm::boot::testguest::{self, Params, Pattern};

struct Workload {
    pattern: Pattern,
    vcpus: u32,
    touches: u64,
    memory: u64,
}

impl Workload {
    fn params(&self) -> Params {
        Params {
            pattern: self.pattern,
            touches_per_cpu: self.touches,
            report_every: 0,
            seed: 11,
            hot_percent: 10,
        }
    }

    fn expected(&self) -> Vec<u64> {
        let area = testguest::area_size_for(self.memory);
        (0..self.vcpus)
            .map(|c| testguest::model_checksum(&self.params(), area, self.vcpus, c))
            .collect()
    }

    fn guest_args(&self) -> Vec<String> {
        let pattern = match self.pattern {
            Pattern::Sequential => "sequential",
            Pattern::Random => "random",
            Pattern::HotSet => "hot-set",
            Pattern::PointerChase => "pointer-chase",
        };
        vec![
            format!("--memory={}", self.memory),
            format!("--vcpus={}", self.vcpus),
            format!("--pattern={pattern}"),
            format!("--touches={}", self.touches),
            "--seed=11".into(),
        ]
    }
}

fn checksums(lines: &[serde_json::Value]) -> Vec<u64> {
    bins::event(lines, "done")["checksums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// A fetch agent serving `store` on `sock` from this test process, for restores given
/// `--agent`. Its accept thread lives as long as the test process; the runtime is returned to be
/// kept alive while restores run.
fn start_agent(sock: &std::path::Path, store: &str) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let agent = Agent::new(
        AgentConfig {
            store: Some(store.to_string()),
            allowed_stores: Vec::new(),
            allowed_uids: Vec::new(),
            checkpoint: None,
            // No key: thaw's VMM pins the digest of the manifest it verified, and that is all
            // this agent serves.
            trust: thaw_format::ManifestTrust::Keys(Vec::new()),
            block_servers: Vec::new(),
            policy: Default::default(),
            fetch: Default::default(),
            cache_bytes: 256 << 20,
            trace_dir: None,
        },
        runtime.handle().clone(),
    );
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || agent.serve(listener));
    runtime
}

fn checkpoint_and_restore_everywhere(w: &Workload, at: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap().to_string();
    let want = w.expected();
    let sock = dir.path().join("agent.sock");
    let _agent = start_agent(&sock, &store);
    for moment in at {
        let mut args = vec!["checkpoint".to_string(), format!("--store={store}")];
        args.push(format!("--at={moment}"));
        args.push("--resume".into());
        args.extend(w.guest_args());
        let lines = bins::thaw_vm(&args);
        assert_eq!(
            checksums(&lines),
            want,
            "original VM resumed after a checkpoint at {moment}"
        );
        let id = bins::event(&lines, "checkpoint")["checkpoint"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        for mode in [
            vec!["--eager".to_string()],
            vec![],
            vec![format!("--agent={}", sock.display())],
        ] {
            let mut args = vec![
                "restore".to_string(),
                format!("--store={store}"),
                format!("--id={id}"),
            ];
            args.extend(mode.clone());
            let lines = bins::thaw_vm(&args);
            assert_eq!(
                checksums(&lines),
                want,
                "restore {mode:?} of the checkpoint at {moment}"
            );
            let resume_ms = bins::event(&lines, "restored")["timings"]["resume_ms"]
                .as_f64()
                .unwrap();
            assert!(resume_ms > 0.0 && resume_ms < 30_000.0, "{resume_ms}");
        }
    }
}

#[test]
fn random_on_two_vcpus_checkpointed_at_several_moments() {
    checkpoint_and_restore_everywhere(
        &Workload {
            pattern: Pattern::Random,
            vcpus: 2,
            touches: 20_000_000,
            memory: 32 << 20,
        },
        &["30ms", "400ms"],
    );
}

#[test]
fn pointer_chase_on_one_vcpu() {
    checkpoint_and_restore_everywhere(
        &Workload {
            pattern: Pattern::PointerChase,
            vcpus: 1,
            touches: 20_000_000,
            memory: 24 << 20,
        },
        &["200ms"],
    );
}

#[test]
fn a_guest_that_finishes_before_the_checkpoint_is_reported() {
    let w = Workload {
        pattern: Pattern::Sequential,
        vcpus: 1,
        touches: 1000,
        memory: 8 << 20,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={}", dir.path().display()),
        "--at=2s".into(),
    ];
    args.extend(w.guest_args());
    let out = bins::thaw()
        .arg("vm")
        .args(&args)
        .arg("--serial=none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("finished before the checkpoint"));
}
