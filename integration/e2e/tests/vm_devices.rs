//! The test guest's device mode checkpointed mid-I/O and restored lazily on another "host": the
//! guest (interrupt mode, 1 and 2 vCPUs) writes and verifies numbered sectors on a virtio disk
//! and sends a numbered byte stream over virtio-net to a peer on its tap while it touches memory.
//! It runs in one network namespace and is checkpointed through its control API with `--stop`
//! at several moments, with disk and network I/O under way; the disk image is copied once the
//! source process has stopped (it is not part of the checkpoint), and the checkpoint is
//! restored lazily through a `thaw agent` process in a fresh `thaw vm restore` in another
//! namespace, on that namespace's tap and the copied image. Each run ends with the memory
//! model's checksums, timer ticks that went on from the checkpoint's, the disk model's checksum
//! and image contents, and the peer holding exactly the stream 0..N: frames lost while the VM
//! moved were sent again, and the ones that came twice were dropped.

mod bins;
mod common;

use common::stream_peer::StreamPeer;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use thaw_format::CheckpointId;
use thaw_linux_check::netns::NetNs;
use thaw_store::{CheckpointReader, Store};
use vmm::boot::testguest::{self, model, IoReport, Params, Pattern, TimerState};
use vmm::persist::state::VmState;

const MEMORY: u64 = 32 << 20;
const HZ: u32 = 1000;
const TOUCHES: u64 = 20_000_000;
const SEED: u64 = 21;
const DISK_BYTES: u64 = 2 << 20;
const DISK_SECTORS: u64 = 1024;
const DISK_PASSES: u64 = 48;
const NET_FRAMES: u64 = 3000;
const TAP: &str = "tgdev0";

fn params() -> Params {
    Params {
        pattern: Pattern::Random,
        touches_per_cpu: TOUCHES,
        report_every: 0,
        seed: SEED,
        hot_percent: 10,
    }
}

fn guest_args(vcpus: u32, disk: &Path) -> Vec<String> {
    vec![
        "run".into(),
        format!("--memory={MEMORY}"),
        format!("--vcpus={vcpus}"),
        "--pattern=random".into(),
        format!("--touches={TOUCHES}"),
        format!("--seed={SEED}"),
        "--interrupts".into(),
        format!("--timer-hz={HZ}"),
        format!("--disk={}", disk.display()),
        format!("--net=tap={TAP}"),
        format!("--disk-sectors={DISK_SECTORS}"),
        format!("--disk-passes={DISK_PASSES}"),
        format!("--net-frames={NET_FRAMES}"),
    ]
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// `thaw vm ARGS --json --serial=none` inside `ns`, output piped.
fn spawn_in(ns: &NetNs, args: &[String]) -> bins::Killed {
    bins::Killed(
        std::process::Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bins::binary("thaw"))
            .env("THAW_KEY_DIR", bins::key_dir())
            .arg("vm")
            .args(args)
            .args(["--json", "--serial=none", "--timeout=180s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Waits for a `thaw vm` process; its JSON lines, or a panic with its stderr.
fn lines_of(vm: bins::Killed, what: &str) -> Vec<serde_json::Value> {
    let out = vm.output();
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bins::json_lines(&out.stdout)
}

/// A namespace standing in for a host, with the tap the guest's interface uses.
fn host(tag: &str) -> NetNs {
    let ns = NetNs::create(tag).expect("creating a network namespace");
    ns.add_tap(TAP, "172.30.0.1/30").expect("adding the tap");
    ns
}

/// Guest memory (read back) and VM state of a stored checkpoint.
fn stored(store: &str, id: &str) -> (Vec<u8>, VmState) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(store).unwrap();
    let id: CheckpointId = id.parse().unwrap();
    let reader = rt
        .block_on(CheckpointReader::open(&store, &id, &bins::trust()))
        .unwrap();
    let state = VmState::decode(reader.state_blob().unwrap()).unwrap();
    let mut bytes = vec![0u8; reader.manifest().total_bytes() as usize];
    rt.block_on(reader.read_all_into(&mut bytes, 8)).unwrap();
    (bytes, state)
}

/// `thaw agent` serving `store` on a socket in `dir`, once its socket is there.
fn start_agent(dir: &Path, store: &str) -> (bins::Killed, std::path::PathBuf) {
    let sock = dir.join("agent.sock");
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let agent = bins::Killed(
        bins::thaw()
            .args(["agent", "--socket"])
            .arg(&sock)
            .args(["--store", store])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    bins::wait_for_path(&sock, Duration::from_secs(20));
    // The socket's mode is set right after the bind.
    std::thread::sleep(Duration::from_millis(100));
    (agent, sock)
}

/// One run: start on host a, checkpoint through the API (stopping the source) once the peer has
/// taken `at` frames of the stream, restore lazily on host b, check everything.
fn checkpoint_mid_io_and_restore(vcpus: u32, at: u64) {
    let what = format!("{vcpus} vCPU(s), checkpoint after {at} frames");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").to_str().unwrap().to_string();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let api = dir.path().join("api.sock");
    let a = host("devs-a");
    let b = host("devs-b");
    let peer = StreamPeer::start(&[(&a, TAP), (&b, TAP)]);

    let mut args = guest_args(vcpus, &disk);
    args.push(format!("--api={}", api.display()));
    let source = spawn_in(&a, &args);
    bins::wait_for_path(&api, Duration::from_secs(30));
    bins::wait_until(
        &format!("{what}: the peer takes {at} frames"),
        Duration::from_secs(60),
        || peer.received().frames >= at,
    );
    let out = bins::thaw()
        .args(["vm", "checkpoint", "--json", "--api"])
        .arg(&api)
        .args(["--store", &store, "--stop"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = bins::json_lines(&out.stdout);
    let id = bins::event(&lines, "checkpoint")["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let source_lines = lines_of(source, "the source VM");
    assert!(
        source_lines.iter().all(|l| l["event"] != "done"),
        "{what}: the source finished before its checkpoint; checkpoint earlier"
    );
    // The source has stopped: its disk is what the checkpoint's guest wrote.
    let moved = dir.path().join("moved.img");
    std::fs::copy(&disk, &moved).unwrap();
    let at_checkpoint = peer.received();

    // The checkpoint caught the devices busy and the timer armed.
    let (mem, state) = stored(&store, &id);
    let io = IoReport::in_copy(&mem).unwrap();
    let io_then = io;
    assert_eq!(io.status, "running", "{what}: {io:?}");
    assert!(
        io.net_acked < NET_FRAMES && io.disk_passes_done < DISK_PASSES,
        "{what}: device work already over at the checkpoint: {io:?}"
    );
    assert!(
        io.disk_requests > 0 && io.net_acked > 0 && io.device_interrupts > 0,
        "{what}: no device work before the checkpoint: {io:?}"
    );
    let ticks_then = testguest::ticks_in_copy(&mem, vcpus as usize).unwrap();
    for (cpu, v) in state.vcpus.iter().enumerate() {
        assert!(TimerState::of(v).armed, "{what}: vCPU {cpu}'s timer");
    }
    assert!(ticks_then.iter().all(|&t| t > 0), "{what}: {ticks_then:?}");

    let (_agent, agent_sock) = start_agent(dir.path(), &store);
    let restore = spawn_in(
        &b,
        &[
            "restore".into(),
            format!("--store={store}"),
            format!("--id={id}"),
            format!("--agent={}", agent_sock.display()),
            format!("--disk={}", moved.display()),
            format!("--net=tap={TAP}"),
        ],
    );
    let lines = lines_of(restore, &format!("{what}: the restore"));
    let done = bins::event(&lines, "done");
    let area = testguest::area_size_for(MEMORY);
    let expected: Vec<u64> = (0..vcpus)
        .map(|c| testguest::model_checksum(&params(), area, vcpus, c))
        .collect();
    assert_eq!(u64s(&done["checksums"]), expected, "{what}: memory");
    let ticks = u64s(&done["ticks"]);
    // vCPU 0 drives the devices to the end, so it runs (and ticks) after the restore; another
    // vCPU may have finished its touches before the checkpoint, and its done report keeps the
    // tick count it had then.
    for (cpu, (before, after)) in ticks_then.iter().zip(&ticks).enumerate() {
        assert!(
            after > before || (cpu > 0 && after == before),
            "{what}: vCPU {cpu} ticks {before} then {after}"
        );
    }
    let io: serde_json::Value = done["io"].clone();
    assert_eq!(io["status"], "done", "{what}: {io}");
    assert_eq!(
        io["disk_checksum"].as_u64(),
        Some(model::disk_checksum(DISK_SECTORS, DISK_PASSES)),
        "{what}: disk checksum: {io}"
    );
    assert_eq!(io["net_acked"].as_u64(), Some(NET_FRAMES), "{what}: {io}");
    assert!(io["device_interrupts"].as_u64() > Some(0), "{what}: {io}");

    let image = std::fs::read(&moved).unwrap();
    let written = model::disk_contents(DISK_SECTORS, DISK_PASSES);
    assert!(
        image[..written.len()] == written[..],
        "{what}: the disk's sectors 0..{DISK_SECTORS} differ from the model's"
    );
    assert!(
        image[written.len()..].iter().all(|&b| b == 0),
        "{what}: the guest wrote past its region"
    );

    // The peer's stream: exactly 0..N, in order, nothing corrupt.
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got = peer.received();
        if got.frames == NET_FRAMES || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(got.corrupt.is_empty(), "{what}: {:?}", got.corrupt);
    assert_eq!(got.frames, NET_FRAMES, "{what}");
    assert_eq!(got.stream.len() as u64, NET_FRAMES * testguest::NET_CHUNK);
    assert!(
        got.stream
            .iter()
            .enumerate()
            .all(|(k, &b)| b == model::stream_byte(k as u64)),
        "{what}: the stream differs from the model's"
    );
    eprintln!(
        "{what}: at the checkpoint the peer had {} frames, the guest {} acked, {} disk requests; \
         at the end: {} duplicates, {} early, {} acks sent; guest report {io}; restored run {:.2} s",
        at_checkpoint.frames,
        io_then.net_acked,
        io_then.disk_requests,
        got.duplicates,
        got.early,
        got.acks,
        done["elapsed_s"].as_f64().unwrap_or_default(),
    );
}

#[test]
fn device_mode_on_one_vcpu_restores_mid_io_at_three_moments() {
    for at in [NET_FRAMES / 20, NET_FRAMES / 3, NET_FRAMES * 2 / 3] {
        checkpoint_mid_io_and_restore(1, at);
    }
}

#[test]
fn device_mode_on_two_vcpus_restores_mid_io() {
    for at in [NET_FRAMES / 10, NET_FRAMES / 2] {
        checkpoint_mid_io_and_restore(2, at);
    }
}
