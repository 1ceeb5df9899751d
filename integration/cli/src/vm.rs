//! `thaw vm run | checkpoint | restore | pause | resume | status | stop`: the command line of the vmm
//! crate (its arguments in [`args`]).
//!
//! Machine-readable results go to standard output as JSON lines when `--json` is given (the guest's
//! console then goes to standard error unless `--serial` says otherwise).

use anyhow::Context;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vmm::boot::testguest::{boot_test_guest_with_devices, wait_done_with, DeviceWork};
use vmm::boot::testguest::{Interrupts, Params};
use vmm::devices::report_port;
use vmm::devices::serial::SerialOutput;
use vmm::persist::checkpoint::{checkpoint, checkpoint_with_dirty_log, runtime};
use vmm::persist::dirty::DirtyConfig;
use vmm::persist::dirty_tracker::DirtyTracker;
use vmm::persist::restore::{restore_with, RestoreMode};
use vmm::vstate::vm::{Vm, VmConfig};

use crate::api::client;
use crate::control::Control;
use crate::keys::KeyArgs;

mod args;
pub use args::*;

/// The console buffer watched for `--until-serial` / `--on-serial` markers, if any.
type Watch = Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>;

fn serial_output(m: &MachineArgs, watch: &Watch) -> SerialOutput {
    if let Some(buf) = watch {
        let file = match m.serial.as_deref() {
            Some("stdout") | None if !m.json => PathBuf::from("/dev/stdout"),
            Some("none") => PathBuf::from("/dev/null"),
            Some(path) if path != "stdout" => PathBuf::from(path),
            _ => PathBuf::from("/dev/stderr"),
        };
        return SerialOutput::Tee(buf.clone(), file);
    }
    match m.serial.as_deref() {
        Some("stdout") => SerialOutput::Stdout,
        Some("none") => SerialOutput::Sink,
        Some(path) => SerialOutput::File(PathBuf::from(path)),
        // With --json, stdout carries results only.
        None if m.json => SerialOutput::File(PathBuf::from("/dev/stderr")),
        None => SerialOutput::Stdout,
    }
}

/// Makes the console interactive when it is shown here (`--serial stdout`, or no `--serial`):
/// standard input goes to COM1 until it ends or the VM stops. A closed or background standard
/// input sends nothing.
fn connect_console_input(m: &MachineArgs, vm: &mut Vm) -> anyhow::Result<()> {
    if m.serial.as_deref().is_none_or(|s| s == "stdout") {
        if let Some(stdin) = vmm::devices::serial_input::host_stdin() {
            vm.connect_serial_input(stdin)?;
        }
    }
    Ok(())
}

/// Prints a result: a JSON line with --json, else pretty JSON on standard error.
pub(crate) fn emit(json: bool, value: serde_json::Value) {
    if json {
        println!("{value}");
    } else {
        eprintln!("{value:#}");
    }
}

fn params(g: &GuestArgs) -> Params {
    Params {
        pattern: g.pattern,
        touches_per_cpu: g.touches,
        report_every: g.report_every,
        seed: g.seed,
        hot_percent: g.hot_percent,
    }
}

fn interrupts(g: &GuestArgs) -> Option<Interrupts> {
    g.interrupts.then_some(Interrupts {
        timer_hz: g.timer_hz,
    })
}

fn device_work(g: &GuestArgs) -> DeviceWork {
    DeviceWork {
        disk_sectors: g.disk_sectors,
        disk_passes: g.disk_passes,
        net_frames: g.net_frames,
    }
}

fn boot(m: &MachineArgs, g: &GuestArgs, watch: &Watch) -> anyhow::Result<Vm> {
    let config = VmConfig {
        kvm_path: m.kvm.clone(),
        memory_bytes: g.memory,
        vcpus: g.vcpus,
        cpu_baseline: g.cpu_baseline.clone(),
        serial: serial_output(m, watch),
        disks: g.disks.clone(),
        nets: g.nets.clone(),
    };
    Ok(match &g.kernel {
        Some(kernel) => vmm::boot::linux::boot(&config, kernel, g.initrd.as_deref(), &g.cmdline)?,
        None => boot_test_guest_with_devices(&config, &params(g), interrupts(g), device_work(g))?,
    })
}

/// How a wait for the guest ended.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// The console printed the marker.
    Marker,
    /// The time limit passed.
    Limit,
    /// The control API asked the VM to stop.
    Stopped,
}

/// Runs until the test guest is done (or, for Linux, until it stops or `limit` passes), or the
/// control API stops it.
fn finish(
    vm: &mut Vm,
    linux: bool,
    limit: Duration,
    m: &MachineArgs,
    watch: &Watch,
    t0: Instant,
    control: &mut Control<'_>,
) -> anyhow::Result<()> {
    let json = m.json;
    let stopped_by_api = |json| {
        emit(
            json,
            serde_json::json!({"event": "stopped", "after_s": t0.elapsed().as_secs_f64(), "reason": "api"}),
        )
    };
    if linux {
        let waited = wait_serial(vm, watch, m.until_serial.as_deref(), limit, None, control)?;
        vm.pause()?;
        if waited == Waited::Stopped {
            stopped_by_api(json);
            return Ok(());
        }
        let seen = waited == Waited::Marker;
        emit(
            json,
            serde_json::json!({"event": "stopped", "after_s": t0.elapsed().as_secs_f64(), "marker_seen": seen}),
        );
        if m.until_serial.is_some() && !seen {
            anyhow::bail!(
                "the guest console did not print {:?} within {limit:?}",
                m.until_serial
            );
        }
        return Ok(());
    }
    let Some(out) = wait_done_with(vm, limit, &mut |vm| control.serve(vm))? else {
        stopped_by_api(json);
        return Ok(());
    };
    emit(
        json,
        serde_json::json!({
            "event": "done",
            "checksums": out.checksums,
            "combined": out.combined(),
            "ticks": out.ticks,
            "io": out.io,
            "elapsed_s": t0.elapsed().as_secs_f64(),
        }),
    );
    Ok(())
}

/// Runs until the console shows `marker`, `limit` passes, or the control API stops the VM,
/// closing dirty-log windows on time meanwhile.
fn wait_serial(
    vm: &mut Vm,
    watch: &Watch,
    marker: Option<&str>,
    limit: Duration,
    mut tracker: Option<&mut DirtyTracker>,
    control: &mut Control<'_>,
) -> anyhow::Result<Waited> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if control.serve(vm) {
            return Ok(Waited::Stopped);
        }
        if let Some(t) = tracker.as_deref_mut() {
            t.poll(vm)?;
        }
        if let (Some(buf), Some(marker)) = (watch, marker) {
            let text = buf.lock().unwrap_or_else(|p| p.into_inner());
            if text.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                return Ok(Waited::Marker);
            }
        }
        let mut step = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if let Some(t) = tracker.as_deref() {
            step = step.min(t.next_boundary().saturating_duration_since(Instant::now()));
        }
        if let Some(ev) = vm.next_event(step)? {
            tracing::debug!("guest event {ev:?}");
        }
    }
    Ok(Waited::Limit)
}

#[allow(clippy::too_many_arguments)]
fn run_and_maybe_checkpoint(
    m: &MachineArgs,
    g: &GuestArgs,
    ck: Option<(&str, Duration)>,
    on_serial: Option<&str>,
    stop_after: bool,
    dirty: DirtyConfig,
    keys: &KeyArgs,
    api: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let mut control = Control::new(api, &rt, keys, m.json, None)?;
    let store = ck.map(|(spec, _)| keys.open_store(spec)).transpose()?;
    // Keys are checked before the guest runs: a missing key is no reason to lose a run.
    let write_options = ck.map(|_| keys.write_options()).transpose()?;
    let watch: Watch = (m.until_serial.is_some() || on_serial.is_some())
        .then(|| std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
    let mut vm = boot(m, g, &watch)?;
    connect_console_input(m, &mut vm)?;
    let t0 = Instant::now();
    vm.start()?;
    let linux = g.kernel.is_some();
    if let (Some(store), Some((_, after))) = (&store, ck) {
        let dirty = dirty.enabled().then_some(dirty);
        let mut tracker = None;
        // Progress events are drained while waiting so a failing guest is reported at once.
        if let Some(marker) = on_serial {
            // The moment is not known in advance: track from the start.
            if let Some(config) = dirty {
                tracker = Some(DirtyTracker::start(&vm, config)?);
            }
            let waited = wait_serial(
                &mut vm,
                &watch,
                Some(marker),
                m.timeout,
                tracker.as_mut(),
                &mut control,
            )?;
            if waited == Waited::Stopped {
                vm.stop()?;
                return Ok(());
            }
            if waited == Waited::Limit {
                anyhow::bail!(
                    "the guest console did not print {marker:?} within {:?}",
                    m.timeout
                );
            }
            emit(
                m.json,
                serde_json::json!({"event": "marker", "after_s": t0.elapsed().as_secs_f64()}),
            );
        }
        let deadline = if on_serial.is_some() {
            Instant::now()
        } else {
            t0 + after
        };
        // A known moment: track only the windows that will be kept, so the guest runs
        // without dirty logging's write faults before them.
        let track_from = dirty
            .map(|c| deadline.checked_sub(c.span()).unwrap_or(t0).max(t0))
            .unwrap_or(deadline);
        while Instant::now() < deadline {
            if let (None, Some(config)) = (&tracker, dirty) {
                if Instant::now() >= track_from {
                    tracker = Some(DirtyTracker::start(&vm, config)?);
                }
            }
            let wake = match &tracker {
                Some(t) => t.next_boundary().min(deadline),
                None => track_from.min(deadline),
            };
            if let Some(vmm::devices::GuestEvent::Report {
                code: report_port::CODE_DONE,
                cpu,
                ..
            }) = vm.next_event(wake.saturating_duration_since(Instant::now()))?
            {
                anyhow::bail!("vCPU {cpu} finished before the checkpoint time; checkpoint earlier or give it more work");
            }
            // The window open at the deadline is closed by the checkpoint, at its pause.
            if let Some(t) = &mut tracker {
                if Instant::now() < deadline {
                    t.poll(&vm)?;
                }
            }
        }
        let opts = write_options.unwrap_or_default();
        let outcome = match tracker {
            Some(t) => checkpoint_with_dirty_log(&vm, &rt, store, &opts, t),
            None => checkpoint(&vm, &rt, store, &opts),
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) if !stop_after => {
                // The original VM goes on whatever became of its checkpoint: resume it, say
                // what failed now, run it to its end, and fail the command after.
                vm.resume();
                let e = anyhow::Error::new(e).context("checkpoint failed; the VM was resumed");
                tracing::error!("{e:#}");
                emit(
                    m.json,
                    serde_json::json!({"event": "checkpoint_failed", "error": format!("{e:#}")}),
                );
                finish(&mut vm, linux, m.timeout, m, &watch, t0, &mut control)?;
                vm.stop()?;
                return Err(e);
            }
            Err(e) => return Err(e.into()),
        };
        // The test guest's tick counts at the checkpoint (interrupt mode), read while it is
        // paused: a restore's ticks go on from these.
        let ticks = (!linux && g.interrupts)
            .then(|| vmm::boot::testguest::ticks(vm.memory(), g.vcpus as usize))
            .transpose()?;
        emit(
            m.json,
            serde_json::json!({"event": "checkpoint", "checkpoint": outcome, "ticks": ticks}),
        );
        if stop_after {
            vm.stop()?;
            return Ok(());
        }
        vm.resume();
    }
    // Checkpoints through the API are incremental from here (the first is full).
    control.track(&vm, None)?;
    finish(&mut vm, linux, m.timeout, m, &watch, t0, &mut control)?;
    vm.stop()?;
    Ok(())
}

fn restore_cmd(a: &RestoreArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let store = a.keys.open_store(&a.store)?;
    let trust = a.keys.trust()?;
    // --id may name the checkpoint: resolved once, here; only the id is used below.
    let id = rt
        .block_on(thaw_store::names::resolve(&store, &a.id))?
        .to_string();
    let mode = match (&a.agent, a.eager) {
        (Some(p), _) => RestoreMode::Agent(p.clone()),
        (None, true) => RestoreMode::Eager,
        (None, false) => RestoreMode::Lazy,
    };
    let watch: Watch = a
        .machine
        .until_serial
        .is_some()
        .then(|| std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
    let config = VmConfig {
        kvm_path: a.machine.kvm.clone(),
        serial: serial_output(&a.machine, &watch),
        disks: a.disks.clone(),
        nets: a.nets.clone(),
        ..Default::default()
    };
    let mut control = Control::new(
        a.api.as_deref(),
        &rt,
        &a.keys,
        a.machine.json,
        Some(id.clone()),
    )?;
    let t0 = Instant::now();
    let dirty_log = control.wants_dirty_log();
    let mut r = restore_with(
        &config, &rt, &store, &a.store, &id, &trust, &mode, dirty_log,
    )
    .with_context(|| format!("restoring checkpoint {id} from {}", a.store))?;
    // The restored checkpoint is the parent of the first checkpoint through the API.
    control.track(&r.vm, Some((id.clone(), store.location().to_string())))?;
    emit(
        a.machine.json,
        serde_json::json!({"event": "restored", "mode": format!("{mode:?}"), "timings": r.timings}),
    );
    connect_console_input(&a.machine, &mut r.vm)?;
    let linux = r.state.guest == vmm::persist::state::GuestKind::Linux;
    let limit = if linux {
        a.run_for.unwrap_or(a.machine.timeout)
    } else {
        a.machine.timeout
    };
    let ran = finish(
        &mut r.vm,
        linux,
        limit,
        &a.machine,
        &watch,
        t0,
        &mut control,
    );
    // Whatever ended the run (the guest finished, --timeout, the fetch agent failing), the vCPUs
    // stop first. One that cannot (blocked in a fault nobody serves) is reported and the process
    // ends with guest memory still registered with the userfaultfd (the link is dropped without
    // `finish`), so the guest never runs on pages that did not arrive.
    let stopped = r.vm.stop();
    match (ran, stopped) {
        (Ok(()), Ok(())) => {}
        (Err(e), Ok(())) => return Err(e),
        (Ok(()), Err(stuck)) => return Err(stuck.into()),
        (Err(e), Err(stuck)) => {
            return Err(anyhow::anyhow!(
                "{e:#}; then {stuck}: the process ends with guest memory still registered"
            ))
        }
    }
    if let Some(report) = r
        .agent
        .take()
        .map(|link| link.finish())
        .transpose()?
        .flatten()
    {
        emit(
            a.machine.json,
            serde_json::json!({
                "event": "fetch_agent",
                "faults": report.faults,
                "fetched_blocks": report.fetched_blocks,
                "fetched_bytes": report.fetched_bytes,
            }),
        );
    }
    Ok(())
}

/// Runs a `thaw vm …` command. Synchronous: it makes its own tokio runtime, so call it from a
/// plain thread, not from inside an async runtime.
pub fn run(args: VmArgs) -> anyhow::Result<()> {
    match args.command {
        VmCommand::Run(a) => run_and_maybe_checkpoint(
            &a.machine,
            &a.guest,
            a.store.as_deref().zip(a.checkpoint_after),
            None,
            a.stop_after_checkpoint,
            a.dirty.config(),
            &a.keys,
            a.api.as_deref(),
        ),
        VmCommand::Checkpoint(a) => match &a.api {
            Some(socket) => {
                let body = client::call_ok(
                    socket,
                    "PUT",
                    "/snapshot/create",
                    Some(&checkpoint_body(&a)),
                )?;
                emit(
                    a.machine.json,
                    serde_json::json!({"event": "checkpoint", "checkpoint": body}),
                );
                Ok(())
            }
            None => run_and_maybe_checkpoint(
                &a.machine,
                &a.guest,
                Some((&a.store, a.at.unwrap_or_default())),
                a.on_serial.as_deref(),
                !a.resume,
                a.dirty.config(),
                &a.keys,
                None,
            ),
        },
        VmCommand::Restore(a) => restore_cmd(&a),
        VmCommand::Pause(a) => api_call(&a, "PATCH", "/vm", r#"{"state":"Paused"}"#),
        VmCommand::Resume(a) => api_call(&a, "PATCH", "/vm", r#"{"state":"Resumed"}"#),
        VmCommand::Status(a) => api_call(&a, "GET", "/vm", ""),
        VmCommand::Stop(a) => api_call(&a, "PUT", "/actions", r#"{"action_type":"Stop"}"#),
    }
}

/// The body of `PUT /snapshot/create` for `thaw vm checkpoint --api`.
fn checkpoint_body(a: &CheckpointArgs) -> serde_json::Value {
    let mut body = serde_json::json!({"store": a.store, "stop": a.stop});
    if a.full {
        body["snapshot_type"] = "Full".into();
    }
    if let Some(parent) = &a.parent {
        body["parent"] = parent.as_str().into();
    }
    body
}

/// Calls the control API and prints what it answers (nothing for an empty answer).
fn api_call(a: &ApiArgs, method: &str, path: &str, body: &str) -> anyhow::Result<()> {
    let body: Option<serde_json::Value> = (!body.is_empty())
        .then(|| serde_json::from_str(body))
        .transpose()?;
    if let Some(answer) = client::call_ok(&a.api, method, path, body.as_ref())? {
        println!("{answer}");
    }
    Ok(())
}
