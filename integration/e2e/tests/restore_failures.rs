//! A restore whose memory cannot all arrive never runs the guest on what did not: with real
//! processes, a checkpoint of the test guest is broken in the store (one bit flipped in the block
//! holding the guest's code, or the segment object holding it deleted) and restored eagerly,
//! lazily (the fetch agent's code in the restoring process) and through a `thaw agent` process.
//! Every mode must exit non-zero within a bound, print no `done` event (so never a wrong
//! checksum), and name the block and why. Also: every source of a block failing (a block server
//! and the store) ends the restore the same way, and `--timeout` ends the
//! process while a vCPU waits in a fault nobody serves (the agent stopped with SIGSTOP).

mod bins;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thaw_format::CheckpointId;
use thaw_store::{CheckpointReader, Store};
use vmm::boot::testguest::{self, Params, Pattern};

const MEMORY: u64 = 64 << 20;
/// About three seconds of work on these machines: a healthy restore finishes soon.
const TOUCHES: u64 = 10_000_000;
const SEED: u64 = 5;
/// Guest-physical address of the test guest's code: the first thing a restored vCPU touches.
const CODE_ADDR: u64 = 0x10_0000;
/// A failing restore must have ended within this (the guest alone would finish in seconds; the
/// agent gives up on a block after its bounded retries).
const BOUND: Duration = Duration::from_secs(60);

fn guest_args() -> Vec<String> {
    vec![
        format!("--memory={MEMORY}"),
        "--pattern=random".into(),
        format!("--touches={TOUCHES}"),
        format!("--seed={SEED}"),
    ]
}

/// What an uninterrupted run of the guest ends with (the host-side model).
fn expected_checksum() -> u64 {
    let params = Params {
        pattern: Pattern::Random,
        touches_per_cpu: TOUCHES,
        report_every: 0,
        seed: SEED,
        hot_percent: 10,
    };
    testguest::model_checksum(&params, testguest::area_size_for(MEMORY), 1, 0)
}

/// A checkpoint of the test guest taken mid-run, in a store of its own.
struct Fixture {
    dir: tempfile::TempDir,
    store: String,
    id: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store").to_str().unwrap().to_owned();
        let mut args = vec![
            "checkpoint".to_string(),
            format!("--store={store}"),
            "--at=1s".into(),
        ];
        args.extend(guest_args());
        let lines = bins::thaw_vm(&args);
        let id = bins::event(&lines, "checkpoint")["checkpoint"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        Fixture { dir, store, id }
    }

    /// The stored block holding the guest's code page: its index, the file of the object it is
    /// in, and where in that object its stored bytes are.
    fn code_block(&self) -> (u32, PathBuf, u64, u64) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = Store::open(&self.store).unwrap();
        let id: CheckpointId = self.id.parse().unwrap();
        let reader = rt
            .block_on(CheckpointReader::open(&store, &id, &bins::trust()))
            .unwrap();
        let m = reader.manifest();
        let page = CODE_ADDR / m.page_size;
        let (index, block) = m
            .blocks
            .iter()
            .enumerate()
            .find(|(_, b)| b.page_iter().any(|p| p == page))
            .expect("the code page is in a stored block");
        let object = Path::new(&self.store).join(&m.objects[block.object as usize]);
        (index as u32, object, block.offset, block.stored_len)
    }

    /// Flips one bit in the middle of the code block's stored bytes; returns the block.
    fn flip_a_bit(&self) -> u32 {
        let (block, object, offset, len) = self.code_block();
        let mut bytes = std::fs::read(&object).unwrap();
        // The block's last byte: always a literal of the decoded bytes (lz4
        // ends every block with literals; raw blocks are all literal), so
        // the flip always changes what the block decodes to. A flip in the
        // middle can land in a match offset that copies equal bytes.
        bytes[(offset + len - 1) as usize] ^= 0x10;
        std::fs::write(&object, bytes).unwrap();
        block
    }

    /// Deletes the object holding the code block; returns the block.
    fn delete_its_object(&self) -> u32 {
        let (block, object, _, _) = self.code_block();
        std::fs::remove_file(&object).unwrap();
        block
    }

    /// Starts `thaw agent` serving this store, plus `extra` arguments.
    fn agent(&self, name: &str, extra: &[String]) -> (bins::Killed, PathBuf) {
        let sock = self.dir.path().join(format!("{name}.sock"));
        let agent = bins::Killed(
            bins::thaw()
                .args(["agent", "--socket"])
                .arg(&sock)
                .args(["--store", &self.store])
                .args(extra)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        bins::wait_for_path(&sock, Duration::from_secs(20));
        (agent, sock)
    }

    /// Starts `thaw vm restore` in `mode` ("eager", "lazy", or an agent socket).
    fn start_restore(&self, mode: &Mode, timeout: &str) -> bins::Killed {
        let mut cmd = bins::thaw();
        cmd.args(["vm", "restore", "--store", &self.store, "--id", &self.id]);
        match mode {
            Mode::Eager => {
                cmd.arg("--eager");
            }
            Mode::Lazy => {}
            Mode::Agent(sock) => {
                cmd.arg("--agent").arg(sock);
            }
        }
        bins::Killed(
            cmd.args(["--json", "--serial=none"])
                .arg(format!("--timeout={timeout}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Restores in `mode` and waits (at most [`BOUND`]) for the process to end.
    fn restore(&self, mode: &Mode) -> Ended {
        let started = Instant::now();
        let mut vmm = self.start_restore(mode, "300s");
        let stdout = vmm.0.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map(|l| l.unwrap())
                .collect::<Vec<_>>()
        });
        wait_ended(vmm, started, lines)
    }
}

enum Mode {
    Eager,
    Lazy,
    Agent(PathBuf),
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Eager => f.write_str("eager"),
            Mode::Lazy => f.write_str("lazy (in-process agent)"),
            Mode::Agent(_) => f.write_str("thaw agent process"),
        }
    }
}

/// How a `thaw vm restore` process ended.
struct Ended {
    status: ExitStatus,
    lines: Vec<serde_json::Value>,
    stderr: String,
    took: Duration,
}

impl Ended {
    fn done(&self) -> Option<&serde_json::Value> {
        self.lines.iter().find(|l| l["event"] == "done")
    }

    /// Failed within the bound, with no `done` event, and an error containing each of `words`.
    fn assert_failed(&self, what: &str, words: &[&str]) {
        assert!(
            !self.status.success(),
            "{what}: exited successfully\n{}",
            self.stderr
        );
        assert!(
            self.done().is_none(),
            "{what}: the guest ran to its end on memory that did not arrive: {:?} (right: {})\n{}",
            self.done(),
            expected_checksum(),
            self.stderr
        );
        assert!(self.took < BOUND, "{what}: took {:?}", self.took);
        for w in words {
            assert!(
                self.stderr.contains(w),
                "{what}: no {w:?} in the error:\n{}",
                self.stderr
            );
        }
        eprintln!(
            "{what}: exited {:?} after {:?}:\n{}",
            self.status, self.took, self.stderr
        );
    }
}

fn wait_ended(
    mut vmm: bins::Killed,
    started: Instant,
    lines: std::thread::JoinHandle<Vec<String>>,
) -> Ended {
    // Read as it comes: a full pipe would block the process's logging.
    let mut pipe = vmm.0.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).unwrap();
        text
    });
    let status = loop {
        if let Some(s) = vmm.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < BOUND + Duration::from_secs(30),
            "thaw vm restore still runs after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let stderr = stderr.join().unwrap();
    let lines = lines
        .join()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    Ended {
        status,
        lines,
        stderr,
        took,
    }
}

fn kvm() -> bool {
    let here = Path::new("/dev/kvm").exists();
    if !here {
        eprintln!("no /dev/kvm: skipped");
    }
    here
}

/// Each mode, the agent mode with a fresh agent each time (nothing cached from an earlier run).
fn each_mode(f: &Fixture, mut check: impl FnMut(&Mode, Ended)) {
    check(&Mode::Eager, f.restore(&Mode::Eager));
    check(&Mode::Lazy, f.restore(&Mode::Lazy));
    let (_agent, sock) = f.agent("agent", &[]);
    let mode = Mode::Agent(sock);
    check(&mode, f.restore(&mode));
}

#[test]
fn a_flipped_bit_stops_every_restore_mode() {
    if !kvm() {
        return;
    }
    let f = Fixture::new();
    // Unbroken, the lazy restore runs to the model's checksum: the guest does reach its end.
    let healthy = f.restore(&Mode::Lazy);
    assert!(healthy.status.success(), "{}", healthy.stderr);
    assert_eq!(
        healthy.done().expect("a done event")["checksums"][0].as_u64(),
        Some(expected_checksum())
    );

    let block = f.flip_a_bit();
    each_mode(&f, |mode, ended| {
        let what = format!("{mode}, bit flipped in block {block}");
        ended.assert_failed(&what, &[&format!("block {block}")]);
        if !matches!(mode, Mode::Eager) {
            // The agent tried its bounded attempts and said why.
            assert!(
                ended.stderr.contains("attempts"),
                "{what}:\n{}",
                ended.stderr
            );
            assert!(
                ended.stderr.contains("hash") || ended.stderr.contains("decod"),
                "{what}: the reason is not named:\n{}",
                ended.stderr
            );
        }
    });
}

#[test]
fn a_missing_segment_stops_every_restore_mode() {
    if !kvm() {
        return;
    }
    let f = Fixture::new();
    let block = f.delete_its_object();
    each_mode(&f, |mode, ended| {
        let what = format!("{mode}, the object of block {block} deleted");
        ended.assert_failed(&what, &["missing"]);
        if !matches!(mode, Mode::Eager) {
            assert!(
                ended.stderr.contains(&format!("block {block}"))
                    || ended.stderr.contains("could not be fetched"),
                "{what}: no block named:\n{}",
                ended.stderr
            );
        }
    });
}

#[test]
fn every_source_failing_ends_the_restore() {
    if !kvm() {
        return;
    }
    let f = Fixture::new();
    // Every block is in the one segment: whichever the guest waits for first fails.
    f.delete_its_object();
    // A block server on the same (broken) store, then the store itself.
    let pki = f.dir.path().join("pki");
    let mut server = bins::Killed(
        bins::thaw()
            .args(["block-server", "--listen", "127.0.0.1:0", "--store"])
            .arg(&f.store)
            .arg("--dev-pki")
            .arg(&pki)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let live = line.trim().rsplit(' ').next().unwrap().to_owned();
    let pki_arg = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    let (_agent, sock) = f.agent(
        "agent",
        &[
            "--block-server".into(),
            live,
            "--ca".into(),
            pki_arg("ca.pem"),
            "--cert".into(),
            pki_arg("client.pem"),
            "--key".into(),
            pki_arg("client.key"),
        ],
    );
    let ended = f.restore(&Mode::Agent(sock));
    // Both sources are named with their reasons.
    ended.assert_failed(
        "every source failing",
        &[
            "could not be fetched (5 attempts",
            "block server 127.0.0.1",
            "object store",
            "missing",
        ],
    );
}

#[test]
fn timeout_ends_the_process_while_a_vcpu_waits_in_a_fault() {
    if !kvm() {
        return;
    }
    let f = Fixture::new();
    let (agent, sock) = f.agent("stopped", &["--no-stream".into()]);
    let started = Instant::now();
    let mut vmm = f.start_restore(&Mode::Agent(sock), "5s");
    let mut stdout = BufReader::new(vmm.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "vmm ended before restoring"
        );
        if line.contains("\"restored\"") {
            break;
        }
    }
    // The agent holds the uffd and serves nothing more: the vCPU blocks in its next fault.
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    let stopped = unsafe { libc::kill(agent.0.id() as libc::pid_t, libc::SIGSTOP) };
    assert_eq!(stopped, 0);
    let lines = std::thread::spawn(move || stdout.lines().map(|l| l.unwrap()).collect());
    let ended = wait_ended(vmm, started, lines);
    assert!(
        ended.took < Duration::from_secs(30),
        "--timeout=5s ended the process after {:?}",
        ended.took
    );
    ended.assert_failed("--timeout with the agent stopped", &["timed out"]);
    drop(agent);
}
