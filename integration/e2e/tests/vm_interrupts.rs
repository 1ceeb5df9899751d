//! The test guest in interrupt mode (each vCPU's LAPIC timer ticking periodically, a CPL0 handler
//! counting the ticks) on 1 and 2 vCPUs, checkpointed at several moments: by `thaw vm checkpoint
//! --interrupts`, and by this process early in the run and at a moment when a timer interrupt is
//! pending in a vCPU's LAPIC (its IRR bit, read back from the stored state; the guest holds its
//! ticks off with the LAPIC's task priority in every other stretch of its work, and a pause never
//! stops a vCPU inside the handler here, see docs/design.md). Each checkpoint is
//! restored in fresh processes, lazily through the fetch agent (inside the restoring process, and
//! a `thaw agent` process). Every run ends with the model's checksums (the ticks are counted
//! outside what the checksum covers), and every vCPU's tick count goes on from the checkpoint's:
//! the counter is in guest memory, and the guest arms its timer once, at start, so ticks after a
//! restore prove the LAPIC timer state was restored.

mod bins;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use thaw_format::CheckpointId;
use thaw_store::{CheckpointReader, Store, WriteOptions};
use vmm::boot::testguest::{self, Interrupts, Params, Pattern, TimerState};
use vmm::devices::serial::SerialOutput;
use vmm::persist::checkpoint::{checkpoint, runtime};
use vmm::persist::state::VmState;
use vmm::vstate::vm::{Vm, VmConfig};

const MEMORY: u64 = 32 << 20;
const HZ: u32 = 1000;
/// About a second of work per vCPU here: the restored runs tick hundreds of times.
const TOUCHES: u64 = 40_000_000;
const SEED: u64 = 13;
/// Pauses tried before giving up on catching a pending timer interrupt. The guest holds its
/// ticks off (LAPIC task priority) in every other stretch of its work, so here about one pause in
/// three finds a tick waiting in a LAPIC's IRR.
const PENDING_TRIES: usize = 40;

fn params() -> Params {
    Params {
        pattern: Pattern::Random,
        touches_per_cpu: TOUCHES,
        report_every: 0,
        seed: SEED,
        hot_percent: 10,
    }
}

fn expected(vcpus: u32) -> Vec<u64> {
    let area = testguest::area_size_for(MEMORY);
    (0..vcpus)
        .map(|c| testguest::model_checksum(&params(), area, vcpus, c))
        .collect()
}

fn guest_args(vcpus: u32) -> Vec<String> {
    vec![
        format!("--memory={MEMORY}"),
        format!("--vcpus={vcpus}"),
        "--pattern=random".into(),
        format!("--touches={TOUCHES}"),
        format!("--seed={SEED}"),
        "--interrupts".into(),
        format!("--timer-hz={HZ}"),
    ]
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// A checkpoint and the vCPUs' tick counts at it.
struct Taken {
    what: String,
    id: String,
    ticks: Vec<u64>,
}

/// A process killed (and reaped) when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `thaw agent` serving `store` on a socket in `dir`; returns once its socket is there.
fn start_agent(dir: &Path, store: &str) -> (Killed, std::path::PathBuf) {
    let sock = dir.join("agent.sock");
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let agent = Killed(
        bins::thaw()
            .args(["agent", "--socket"])
            .arg(&sock)
            .args(["--store", store])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the agent's socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The socket's mode is set right after the bind.
    std::thread::sleep(Duration::from_millis(100));
    (agent, sock)
}

/// The VM state a checkpoint holds, read back from the store.
fn stored_state(store: &str, id: &str) -> VmState {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(store).unwrap();
    let id: CheckpointId = id.parse().unwrap();
    let reader = rt
        .block_on(CheckpointReader::open(&store, &id, &bins::trust()))
        .unwrap();
    VmState::decode(reader.state_blob().unwrap()).unwrap()
}

/// Every vCPU's timer in a stored state is the guest's, armed at HZ and counting down.
fn check_timers(state: &VmState, what: &str) -> Vec<TimerState> {
    let timers: Vec<TimerState> = state.vcpus.iter().map(TimerState::of).collect();
    for (cpu, t) in timers.iter().enumerate() {
        assert!(t.armed, "{what}: vCPU {cpu}'s timer is not armed: {t:?}");
        assert_eq!(t.initial_count, 1_000_000_000 / HZ, "{what}: vCPU {cpu}");
        assert!(
            t.current_count > 0 && t.current_count <= t.initial_count,
            "{what}: vCPU {cpu}'s timer is not counting: {t:?}"
        );
    }
    timers
}

/// Checkpoints the paused `vm` into `store`; returns it with the tick counts at that moment.
fn take(vm: &Vm, store: &str, vcpus: u32, what: &str) -> Taken {
    let rt = runtime().unwrap();
    let ticks = testguest::ticks(vm.memory(), vcpus as usize).unwrap();
    let opts = WriteOptions {
        signing_key: Some(bins::signing_key()),
        ..WriteOptions::default()
    };
    let outcome = checkpoint(vm, &rt, &Store::open(store).unwrap(), &opts).unwrap();
    Taken {
        what: what.to_string(),
        id: outcome.id,
        ticks,
    }
}

/// Runs the guest in this process and checkpoints it twice: early, and once a pause finds a
/// timer interrupt pending in a LAPIC. The original VM then runs to its end.
fn checkpoint_in_process(store: &str, vcpus: u32) -> Vec<Taken> {
    let config = VmConfig {
        memory_bytes: MEMORY,
        vcpus,
        serial: SerialOutput::Sink,
        ..Default::default()
    };
    let interrupts = Some(Interrupts { timer_hz: HZ });
    let mut vm = testguest::boot_test_guest_with(&config, &params(), interrupts).unwrap();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let early = take(&vm, store, vcpus, "early, in this process");
    vm.resume();
    std::thread::sleep(Duration::from_millis(200));

    let mut pending = None;
    for attempt in 1..=PENDING_TRIES {
        vm.pause().unwrap();
        let state = vm.save_state().unwrap();
        if state.vcpus.iter().any(|v| TimerState::of(v).pending) {
            pending = Some(take(
                &vm,
                store,
                vcpus,
                &format!("with a timer interrupt pending (pause {attempt})"),
            ));
            break;
        }
        vm.resume();
        std::thread::sleep(Duration::from_millis(3));
    }
    let pending = pending.unwrap_or_else(|| {
        panic!("no pause in {PENDING_TRIES} found a timer interrupt pending in a LAPIC")
    });
    let stored = stored_state(store, &pending.id);
    let timers = check_timers(&stored, &pending.what);
    assert!(
        timers.iter().any(|t| t.pending),
        "the stored state lost the pending interrupt: {timers:?}"
    );
    check_timers(&stored_state(store, &early.id), &early.what);

    vm.resume();
    let done = testguest::wait_done(&mut vm, Duration::from_secs(120)).unwrap();
    vm.stop().unwrap();
    assert_eq!(done.checksums, expected(vcpus), "the original VM");
    for cpu in 0..vcpus as usize {
        assert!(
            done.ticks[cpu] > pending.ticks[cpu],
            "the original VM's vCPU {cpu} stopped ticking: {:?} then {:?}",
            pending.ticks,
            done.ticks
        );
    }
    vec![early, pending]
}

/// `thaw vm checkpoint --interrupts` at 300 ms, the original VM resumed to its end.
fn checkpoint_by_cli(store: &str, vcpus: u32) -> Taken {
    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={store}"),
        "--at=300ms".into(),
        "--resume".into(),
    ];
    args.extend(guest_args(vcpus));
    let lines = bins::thaw_vm(&args);
    let done = bins::event(&lines, "done");
    assert_eq!(
        u64s(&done["checksums"]),
        expected(vcpus),
        "thaw vm checkpoint"
    );
    let ck = bins::event(&lines, "checkpoint");
    let ticks = u64s(&ck["ticks"]);
    assert!(
        ticks.iter().all(|&t| t > 0),
        "no ticks in 300 ms: {ticks:?}"
    );
    let id = ck["checkpoint"]["id"].as_str().unwrap().to_string();
    check_timers(&stored_state(store, &id), "thaw vm checkpoint");
    Taken {
        what: "by thaw vm checkpoint at 300ms".into(),
        id,
        ticks,
    }
}

/// Restores `taken` in a fresh `thaw vm restore` process, lazily with the fetch agent's code in
/// that process and through the `thaw agent` at `sock`: the model's checksums, and every vCPU's
/// ticks go on from the checkpoint's at no more than the timer's rate.
fn restore_everywhere(store: &str, taken: &Taken, sock: &Path, vcpus: u32) {
    for mode in [vec![], vec![format!("--agent={}", sock.display())]] {
        let mut args = vec![
            "restore".to_string(),
            format!("--store={store}"),
            format!("--id={}", taken.id),
        ];
        args.extend(mode.clone());
        let lines = bins::thaw_vm(&args);
        let done = bins::event(&lines, "done");
        let what = format!("restore {mode:?} of the checkpoint {}", taken.what);
        assert_eq!(u64s(&done["checksums"]), expected(vcpus), "{what}");
        let ticks = u64s(&done["ticks"]);
        let elapsed = done["elapsed_s"].as_f64().unwrap();
        let most = (elapsed * f64::from(HZ) * 1.1) as u64 + 2;
        assert_eq!(ticks.len(), vcpus as usize, "{what}: {ticks:?}");
        for (cpu, (&before, &after)) in taken.ticks.iter().zip(&ticks).enumerate() {
            assert!(
                after > before && after - before <= most,
                "{what}: vCPU {cpu} counted {before} ticks at the checkpoint and {after} at the end \
                 ({elapsed:.2} s later, at most {most} ticks at {HZ} Hz)"
            );
        }
    }
}

fn checkpoint_and_restore(vcpus: u32) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap().to_string();
    let mut taken = checkpoint_in_process(&store, vcpus);
    taken.push(checkpoint_by_cli(&store, vcpus));
    let (_agent, sock) = start_agent(dir.path(), &store);
    for t in &taken {
        restore_everywhere(&store, t, &sock, vcpus);
    }
}

#[test]
fn interrupt_mode_on_one_vcpu_restores_with_its_timer_ticking() {
    checkpoint_and_restore(1);
}

#[test]
fn interrupt_mode_on_two_vcpus_restores_with_each_timer_ticking() {
    checkpoint_and_restore(2);
}

#[test]
fn a_bad_interrupt_mode_is_refused_with_a_clear_error() {
    for (args, says) in [
        (
            vec!["--interrupts", "--timer-hz=0"],
            "a test guest timer of 0 Hz (1 to 5000 Hz supported)",
        ),
        (
            vec!["--interrupts", "--timer-hz=9000"],
            "a test guest timer of 9000 Hz (1 to 5000 Hz supported)",
        ),
        (vec!["--timer-hz=100"], "--interrupts"),
        (
            vec!["--interrupts", "--kernel=/nonexistent/vmlinux"],
            "cannot be used with",
        ),
    ] {
        let out = bins::thaw()
            .args(["vm", "run", "--serial=none", "--memory=8MiB"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
