//! `thaw-bench resume`: lazy-restore resume time at 256 MiB and 4 GiB, checkpoint time, and the
//! test guest's time to finish a pass over 256 MiB after eager and lazy restores (vmm::bench).

use std::path::PathBuf;

/// Runs the benchmark on a plain thread (the vmm drives its own runtime) and reports it.
pub fn run(json: Option<PathBuf>, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let opts = vmm::bench::ResumeBench {
        dir,
        ..Default::default()
    };
    let fields = std::thread::spawn(move || vmm::bench::resume(&opts))
        .join()
        .map_err(|_| anyhow::anyhow!("resume benchmark panicked"))??;
    super::report("resume", &fields, json.as_deref())
}
