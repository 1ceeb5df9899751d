//! What every workload model is made of, and the steps every generator
//! takes: a guest of a given memory size whose kernel boots into fragmented
//! physical memory, the workload's own memory laid out after it (from the
//! checkpoint's random stream), [`RUNS`] runs after the restore (each from
//! its own random stream, at its own speed), and the memory image rendered
//! from what each page holds.

use super::kernel::Kernel;
use super::physical::{render, Frames, FreeList, Physical};
use super::rng::Rng;
use super::trace::Touch;
use super::{Generated, Params, RUNS};

/// One workload model: what is particular to a generator.
pub(super) trait Workload: Sized {
    /// Kebab-case: the workload's name and directory, and the label its
    /// random streams are derived from.
    const NAME: &'static str;
    /// For workload.json: what the model is, in a paragraph.
    const DESCRIPTION: &'static str;
    /// Guest memory at full scale, in pages.
    const MEMORY_PAGES: usize;

    /// The guest at the checkpoint: lays the workload out in `phys`, where
    /// `kernel` has booted, and finishes the physical memory.
    fn build(phys: Physical, kernel: Kernel, p: &Params, rng: &mut Rng) -> (Self, Frames);

    /// The pages one run after the restore touches first, when. `rng` is
    /// the run's own stream; `speed` scales how fast this run's guest works.
    fn run(&self, free: &FreeList, p: &Params, rng: Rng, speed: f64) -> Vec<Touch>;

    /// Writes the bytes the model holds itself (its pages of
    /// [`Content::Explicit`](super::content::Content::Explicit)) into the
    /// rendered `memory`.
    fn write_explicit(&self, _memory: &mut [u8]) {}
}

/// Generates workload `W`.
pub(super) fn generate<W: Workload>(p: &Params) -> Generated {
    let mut rng = Rng::derived(p.seed, &format!("{}/checkpoint", W::NAME));
    let total = p.pages(W::MEMORY_PAGES) as u64;
    let mut phys = Physical::new(total, &Kernel::reserved(p), &mut rng);
    let kernel = Kernel::boot(&mut phys, p, &mut rng);
    let (model, Frames { contents, free }) = W::build(phys, kernel, p, &mut rng);
    let traces = (0..RUNS)
        .map(|run| {
            let mut rng = Rng::derived(p.seed, &format!("{}/run/{run}", W::NAME));
            let speed = rng.lognormal(1.0, 0.05);
            model.run(&free, p, rng, speed)
        })
        .collect();
    let mut memory = render(&contents, rng.u64());
    model.write_explicit(&mut memory);
    Generated {
        name: W::NAME,
        description: W::DESCRIPTION.into(),
        memory,
        traces,
    }
}
