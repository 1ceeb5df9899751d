//! `thaw-bench incremental`: a full checkpoint of a running test guest whose memory it has
//! written all over, then, after the guest has written 1% of its pages again, an incremental one
//! against it (the control API's path: dirty logging stays on between them).
//!
//! Fields: `full_s` and `incremental_s` (pause to checkpoint written, the VM paused throughout),
//! `incremental_bytes` (raw bytes of the blocks the incremental checkpoint wrote, before
//! compression: the dirty pages and the unwritten pages sharing a block with one) and
//! `dirty_bytes` (the pages the guest wrote between the two).

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vmm::boot::testguest::{self, boot_test_guest, Params, Pattern};
use vmm::devices::serial::SerialOutput;
use vmm::devices::GuestEvent;
use vmm::persist::checkpoint::{open_store, runtime};
use vmm::persist::dirty::DirtyConfig;
use vmm::persist::lineage::{Kind, Lineage};
use vmm::vstate::kvm::DEFAULT_KVM_PATH;
use vmm::vstate::vm::{Vm, VmConfig};

/// Share of the pages written between the two checkpoints.
const DIRTY_FRACTION: f64 = 0.01;
const TIMEOUT: Duration = Duration::from_secs(900);

/// Options of the incremental benchmark.
#[derive(Debug, Clone)]
pub struct IncrementalBench {
    pub memory: u64,
    /// Directory under which the temporary store is made (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

fn key() -> thaw_format::signature::SigningKey {
    thaw_format::signature::SigningKey::from_bytes(&[0x1c; 32])
}

/// Runs the guest until it has written at least `pages` pages since the last checkpoint
/// (harvested every few milliseconds, so the count overshoots by little).
fn run_until_written(vm: &mut Vm, lineage: &mut Lineage, pages: u64) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while lineage.written_since_checkpoint() < pages {
        if Instant::now() > deadline {
            bail!(
                "timed out: the guest wrote {} of {pages} pages",
                lineage.written_since_checkpoint()
            );
        }
        match vm.next_event(Duration::from_millis(2))? {
            // The start report.
            None | Some(GuestEvent::Report { code: 1, .. }) => {}
            Some(ev) => bail!("the benchmark guest stopped early: {ev:?}"),
        }
        lineage.poll(vm)?;
    }
    Ok(())
}

pub fn incremental(opts: &IncrementalBench) -> Result<Map<String, Value>> {
    let rt = runtime()?;
    let tmp = match &opts.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("creating the benchmark directory")?;
    let spec = tmp.path().join("store").to_string_lossy().into_owned();
    let store = open_store(&spec)?;
    let write = thaw_store::WriteOptions {
        signing_key: Some(key()),
        ..Default::default()
    };
    let config = VmConfig {
        kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
        memory_bytes: opts.memory,
        vcpus: 1,
        serial: SerialOutput::Sink,
        ..Default::default()
    };
    // Sweeps its memory page after page without end: the first sweep fills it, later ones
    // rewrite it at the guest's pace.
    let params = Params {
        pattern: Pattern::Sequential,
        touches_per_cpu: u64::MAX / 4,
        report_every: 0,
        seed: 1,
        hot_percent: 10,
    };
    let area_pages = testguest::area_size_for(opts.memory) / 4096;
    let total_pages = opts.memory / 4096;
    let mut vm = boot_test_guest(&config, &params)?;
    // Short windows: harvests come often, so the dirty count is known to within a few ms.
    let dirty = DirtyConfig {
        windows: 4,
        window: Duration::from_millis(5),
    };
    let mut lineage = Lineage::start(&vm, dirty, None)?;
    vm.start()?;

    run_until_written(&mut vm, &mut lineage, area_pages)?;
    let t = Instant::now();
    let full = lineage.checkpoint(&vm, &rt, &store, &write, None)?;
    let full_s = t.elapsed().as_secs_f64();
    vm.resume();

    let target = (total_pages as f64 * DIRTY_FRACTION) as u64;
    run_until_written(&mut vm, &mut lineage, target)?;
    let parent = lineage.parent(&vm, store.location(), None, Kind::Diff)?;
    let t = Instant::now();
    let inc = lineage.checkpoint(&vm, &rt, &store, &write, parent.as_deref())?;
    let incremental_s = t.elapsed().as_secs_f64();
    vm.stop()?;
    let Some(stats) = &inc.incremental else {
        bail!("the second checkpoint was not incremental: {inc:?}");
    };
    tracing::info!(
        full_uploaded = full.uploaded_bytes,
        incremental_uploaded = inc.uploaded_bytes,
        repacked_clean_pages = stats.repacked_clean_pages,
        kept_blocks = stats.kept_blocks,
        "incremental benchmark"
    );

    let mut out = Map::new();
    out.insert("full_s".into(), json!(full_s));
    out.insert("incremental_s".into(), json!(incremental_s));
    out.insert(
        "incremental_bytes".into(),
        json!((stats.dirty_pages + stats.repacked_clean_pages) * 4096),
    );
    out.insert("dirty_bytes".into(), json!(stats.dirty_bytes));
    Ok(out)
}

/// Runs the benchmark on a plain thread (the vmm drives its own runtime) and reports it.
pub fn run(memory: u64, json: Option<PathBuf>, dir: Option<PathBuf>) -> Result<()> {
    let opts = IncrementalBench { memory, dir };
    let fields = std::thread::spawn(move || incremental(&opts))
        .join()
        .map_err(|_| anyhow::anyhow!("incremental benchmark panicked"))??;
    super::report("incremental", &fields, json.as_deref())
}
