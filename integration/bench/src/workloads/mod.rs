//! Generators of realistic restore workloads (docs/format.md, "Workload files"):
//! a model of a guest's memory at a checkpoint (what each physical page
//! holds) and of several runs after the restore (which pages each run
//! touches first, when). Runs of one checkpoint share its structure (the
//! same code, the same data in the same frames) and differ in requests,
//! keys, random choices and timing, as restores of one VM do.
//!
//! The models know nothing about layouts: page order in a trace follows
//! what the modeled program does (call paths, hash lookups, pointer
//! chasing, scans), and physical placement follows a fragmented page
//! allocator.

pub mod cli;
mod content;
mod database;
mod gc_sweep;
mod idle_os;
mod kernel;
mod kv_store;
mod model;
mod physical;
mod program;
mod rng;
pub mod summary;
mod trace;
mod web_server;
mod writer;

use std::path::{Path, PathBuf};

use model::Workload;

pub use content::PAGE;
pub use trace::Touch;
pub use writer::GenerateError;

/// Runs recorded per workload: the benchmark learns a layout from all but
/// the last and measures on the last.
pub const RUNS: usize = 4;

/// What a generator is asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub seed: u64,
    /// 1.0 for the full-size workload; smaller shrinks memory, data sets
    /// and the work done per run alike (for quick tests).
    pub scale: f64,
}

impl Params {
    pub fn full(seed: u64) -> Self {
        Self { seed, scale: 1.0 }
    }

    /// `full` pages (or items) at this scale, at least one.
    pub fn pages(&self, full: usize) -> usize {
        ((full as f64 * self.scale).round() as usize).max(1)
    }

    /// A count of operations at this scale, at least one.
    pub fn count(&self, full: usize) -> usize {
        self.pages(full)
    }
}

/// A generated workload, in memory.
pub struct Generated {
    pub name: &'static str,
    pub description: String,
    /// Guest memory at the checkpoint (one region from address 0).
    pub memory: Vec<u8>,
    /// One trace per run, in run order.
    pub traces: Vec<Vec<Touch>>,
}

/// A workload model.
pub struct Generator {
    /// Kebab-case; becomes the workload's name and directory.
    pub name: &'static str,
    /// Bumped whenever the output for a seed changes.
    pub version: u32,
    pub build: fn(&Params) -> Generated,
}

impl Generator {
    /// The generator of workload model `W`.
    const fn of<W: Workload>(version: u32) -> Self {
        Self {
            name: W::NAME,
            version,
            build: model::generate::<W>,
        }
    }

    /// The key written into workload.json as `"generator"`: a directory
    /// holding it is not generated again.
    pub fn marker(&self, params: &Params) -> String {
        let mut marker = format!("thaw {} v{} seed {}", self.name, self.version, params.seed);
        if params.scale != 1.0 {
            marker.push_str(&format!(" scale {}", params.scale));
        }
        marker
    }
}

pub const GENERATORS: &[Generator] = &[
    Generator::of::<web_server::Model>(1),
    Generator::of::<kv_store::Model>(1),
    Generator::of::<database::Model>(1),
    Generator::of::<gc_sweep::Model>(1),
    Generator::of::<idle_os::Model>(1),
];

/// What [`generate`] did for one workload.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: &'static str,
    pub dir: PathBuf,
    /// The directory already held this generator's output for these params.
    pub reused: bool,
}

/// Writes `out/NAME/` for every workload (or those named in `only`),
/// skipping directories that already hold the same generator version's
/// output for these params.
pub fn generate(
    out: &Path,
    params: &Params,
    only: &[String],
) -> Result<Vec<Outcome>, GenerateError> {
    for name in only {
        if !GENERATORS.iter().any(|g| g.name == name) {
            return Err(GenerateError::UnknownWorkload {
                name: name.clone(),
                known: GENERATORS
                    .iter()
                    .map(|g| g.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let mut outcomes = Vec::new();
    for generator in GENERATORS {
        if !only.is_empty() && !only.iter().any(|n| n == generator.name) {
            continue;
        }
        let dir = out.join(generator.name);
        let marker = generator.marker(params);
        let reused = writer::holds(&dir, &marker);
        if !reused {
            let started = std::time::Instant::now();
            let generated = (generator.build)(params);
            writer::write(&dir, &generated, &marker)?;
            tracing::info!(workload = generator.name, elapsed = ?started.elapsed(), "generated");
        }
        outcomes.push(Outcome {
            name: generator.name,
            dir,
            reused,
        });
    }
    Ok(outcomes)
}

/// Full-size workloads under `out` for `seed` (all of them when `only` is
/// empty); returns their directories. Existing output of the same
/// generator version and seed is reused.
pub fn generate_all(out: &Path, seed: u64, only: &[String]) -> Result<Vec<PathBuf>, GenerateError> {
    Ok(generate(out, &Params::full(seed), only)?
        .into_iter()
        .map(|o| o.dir)
        .collect())
}
