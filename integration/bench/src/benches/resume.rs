//! `thaw-bench resume`: time to resume a lazily restored VM at 256 MiB and 4 GiB, and at 256 MiB
//! with devices (a virtio-blk disk and the LAPIC timer ticking), checkpoint time, and the test
//! guest's time to finish a pass over 256 MiB after an eager and after a lazy restore from a
//! local-directory store (the real fault path through KVM and userfaultfd).

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vmm::boot::testguest::{self, Params, Pattern};
use vmm::boot::testguest::{boot_test_guest, boot_test_guest_with, wait_done, Interrupts};
use vmm::devices::report_port;
use vmm::devices::serial::SerialOutput;
use vmm::devices::GuestEvent;
use vmm::persist::checkpoint::{checkpoint, open_store, runtime, CheckpointOutcome};
use vmm::persist::restore::{restore, RestoreMode};
use vmm::vstate::kvm::DEFAULT_KVM_PATH;
use vmm::vstate::vm::VmConfig;

/// The bench's own signing key: restores check signatures as users' do.
fn key() -> thaw_format::signature::SigningKey {
    thaw_format::signature::SigningKey::from_bytes(&[0x5e; 32])
}

fn signed() -> thaw_store::WriteOptions {
    thaw_store::WriteOptions {
        signing_key: Some(key()),
        ..Default::default()
    }
}

fn trust() -> thaw_format::ManifestTrust {
    thaw_format::ManifestTrust::Keys(vec![key().verifying_key()])
}

/// Options of the resume benchmark.
#[derive(Debug, Clone)]
pub struct ResumeBench {
    /// Directory under which the temporary store is made (default: the system temp dir).
    pub dir: Option<PathBuf>,
    pub kvm_path: PathBuf,
    /// Size of the large VM whose lazy resume is timed (4 GiB in the reported figure).
    pub large_memory: u64,
}

impl Default for ResumeBench {
    fn default() -> Self {
        ResumeBench {
            dir: None,
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
            large_memory: 4 << 30,
        }
    }
}

const SMALL: u64 = 256 << 20;
const TIMEOUT: Duration = Duration::from_secs(600);

fn config(kvm: &std::path::Path, memory: u64) -> VmConfig {
    VmConfig {
        kvm_path: kvm.to_path_buf(),
        memory_bytes: memory,
        vcpus: 1,
        serial: SerialOutput::Sink,
        ..Default::default()
    }
}

/// Runs the test guest for one sequential pass over its memory, checkpoints it right after (so
/// the checkpoint holds a populated memory), and leaves a second pass for the restored VM.
fn checkpoint_after_first_pass(
    rt: &tokio::runtime::Runtime,
    store: &thaw_store::Store,
    kvm: &std::path::Path,
    memory: u64,
) -> Result<(CheckpointOutcome, Params)> {
    let pages = testguest::area_size_for(memory) / 4096;
    let params = Params {
        pattern: Pattern::Sequential,
        touches_per_cpu: 2 * pages,
        report_every: pages,
        seed: 1,
        hot_percent: 10,
    };
    let mut vm = boot_test_guest(&config(kvm, memory), &params)?;
    vm.start()?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match vm.next_event(deadline.saturating_duration_since(Instant::now()))? {
            Some(GuestEvent::Report {
                code: report_port::CODE_PROGRESS,
                ..
            }) => break,
            Some(_) => {}
            None => bail!("timed out: first pass of the benchmark guest"),
        }
    }
    let outcome = checkpoint(&vm, rt, store, &signed())?;
    vm.stop()?;
    Ok((outcome, params))
}

/// Runs the benchmark; returns its figures (milliseconds and seconds as named).
pub fn resume(opts: &ResumeBench) -> Result<Map<String, Value>> {
    let rt = runtime()?;
    let tmp = match &opts.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("creating the benchmark directory")?;
    let spec = tmp.path().join("store").to_string_lossy().into_owned();
    let store = open_store(&spec)?;
    let kvm = &opts.kvm_path;
    let mut out = Map::new();

    let (small, params) = checkpoint_after_first_pass(&rt, &store, kvm, SMALL)?;
    let want = testguest::model_checksum(&params, testguest::area_size_for(SMALL), 1, 0);
    out.insert(
        "checkpoint_ms_256mib".into(),
        json!(small.pause_ms + small.save_state_ms + small.write_ms),
    );
    out.insert(
        "checkpoint_save_state_ms".into(),
        json!(small.save_state_ms),
    );
    out.insert("checkpoint_pause_ms".into(), json!(small.pause_ms));
    out.insert("state_blob_bytes".into(), json!(small.state_blob_bytes));

    for (mode, key) in [
        (RestoreMode::Eager, "finish_s_eager"),
        (RestoreMode::Lazy, "finish_s_lazy"),
    ] {
        let t0 = Instant::now();
        let mut r = restore(
            &config(kvm, SMALL),
            &rt,
            &store,
            &spec,
            &small.id,
            &trust(),
            &mode,
        )?;
        let done = wait_done(&mut r.vm, TIMEOUT)?;
        let finish = t0.elapsed().as_secs_f64();
        r.vm.stop()?;
        if done.checksums != [want] {
            bail!(
                "{mode:?} restore ended with checksum {:?}, expected {want}",
                done.checksums
            );
        }
        out.insert(key.into(), json!(finish));
        if mode == RestoreMode::Lazy {
            out.insert("resume_ms_256mib".into(), json!(r.timings.resume_ms));
            out.insert("resume_open_ms_256mib".into(), json!(r.timings.open_ms));
            out.insert("resume_state_ms_256mib".into(), json!(r.timings.state_ms));
            if let Some(report) = r
                .agent
                .take()
                .map(|link| link.finish())
                .transpose()?
                .flatten()
            {
                out.insert("lazy_faults_256mib".into(), json!(report.faults));
                out.insert("lazy_blocks_256mib".into(), json!(report.fetched_blocks));
            }
        } else {
            out.insert("eager_read_ms_256mib".into(), json!(r.timings.memory_ms));
        }
    }

    // With devices: a virtio-blk disk and the timer interrupting, a short run, then the lazy
    // resume alone (the disk reopened and its queues restored, the timer re-armed).
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .context("creating the benchmark disk image")?;
    let with_disk = VmConfig {
        disks: vec![vmm::devices::virtio::block::DiskConfig {
            path: disk,
            read_only: false,
            id: None,
        }],
        ..config(kvm, SMALL)
    };
    let forever = Params {
        pattern: Pattern::Random,
        touches_per_cpu: u64::MAX,
        ..Params::default()
    };
    let mut vm = boot_test_guest_with(&with_disk, &forever, Some(Interrupts { timer_hz: 1000 }))?;
    vm.start()?;
    std::thread::sleep(Duration::from_millis(300));
    let devices = checkpoint(&vm, &rt, &store, &signed())?;
    vm.stop()?;
    drop(vm);
    let mut r = restore(
        &config(kvm, SMALL),
        &rt,
        &store,
        &spec,
        &devices.id,
        &trust(),
        &RestoreMode::Lazy,
    )?;
    out.insert(
        "resume_ms_256mib_devices".into(),
        json!(r.timings.resume_ms),
    );
    out.insert(
        "resume_state_ms_256mib_devices".into(),
        json!(r.timings.state_ms),
    );
    std::thread::sleep(Duration::from_millis(100));
    r.vm.pause()?;
    r.vm.stop()?;
    drop(r);

    // The large VM: a short run, then time the lazy resume alone.
    let large = opts.large_memory;
    let params = Params {
        pattern: Pattern::Random,
        touches_per_cpu: u64::MAX,
        ..Params::default()
    };
    let mut vm = boot_test_guest(&config(kvm, large), &params)?;
    vm.start()?;
    std::thread::sleep(Duration::from_millis(300));
    let big = checkpoint(&vm, &rt, &store, &signed())?;
    vm.stop()?;
    drop(vm);
    let key = if large == 4 << 30 {
        "4gib".to_string()
    } else {
        format!("{}mib", large >> 20)
    };
    out.insert(
        format!("checkpoint_ms_{key}"),
        json!(big.pause_ms + big.save_state_ms + big.write_ms),
    );
    let mut r = restore(
        &config(kvm, large),
        &rt,
        &store,
        &spec,
        &big.id,
        &trust(),
        &RestoreMode::Lazy,
    )?;
    out.insert(format!("resume_ms_{key}"), json!(r.timings.resume_ms));
    out.insert(format!("resume_open_ms_{key}"), json!(r.timings.open_ms));
    out.insert(
        format!("resume_check_host_ms_{key}"),
        json!(r.timings.check_host_ms),
    );
    out.insert(
        format!("resume_memory_ms_{key}"),
        json!(r.timings.memory_ms),
    );
    out.insert(format!("resume_state_ms_{key}"), json!(r.timings.state_ms));
    std::thread::sleep(Duration::from_millis(100));
    r.vm.pause()?;
    r.vm.stop()?;
    Ok(out)
}

/// Runs the benchmark on a plain thread (the vmm drives its own runtime) and reports it.
pub fn run(json: Option<PathBuf>, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let opts = ResumeBench {
        dir,
        ..Default::default()
    };
    let fields = std::thread::spawn(move || resume(&opts))
        .join()
        .map_err(|_| anyhow::anyhow!("resume benchmark panicked"))??;
    super::report("resume", &fields, json.as_deref())
}
