//! Code and the programs that run it. A code path (a request handler, a
//! syscall, a GC phase) executes a fixed set of text pages for a given
//! checkpoint: related functions sit near each other in the binary, so a
//! path's pages cluster around a spot, but which pages and in which order
//! they are first reached is the program's business, not the layout's.
//! Each execution skips some of them (branches not taken), so the first
//! touch of a page moves between runs.

use super::content::Content;
use super::physical::{Mapping, Physical};
use super::rng::{mix, Rng};
use super::trace::Lane;
use super::Params;

/// The text of a binary (kernel, program, library) and its code paths.
#[derive(Debug, Clone)]
pub(super) struct CodeMap {
    pub text: Mapping,
    seed: u64,
}

impl CodeMap {
    pub(super) fn new(text: Mapping, seed: u64) -> Self {
        Self { text, seed }
    }

    /// A binary's text of `pages` pages at full scale in fresh frames (a
    /// library, a binary in the page cache).
    pub(super) fn load(phys: &mut Physical, p: &Params, rng: &mut Rng, pages: usize) -> Self {
        Self::new(phys.alloc(p.pages(pages), |_| Content::Code), rng.u64())
    }

    /// The text pages of path `id`: `len` pages within a window of
    /// `4 * len` pages around the path's spot, in call order.
    pub(super) fn path(&self, id: u64, len: usize) -> Vec<u64> {
        let n = self.text.len() as u64;
        if n == 0 {
            return Vec::new();
        }
        let key = mix(self.seed, id);
        let centre = key % n;
        let window = (4 * len as u64).clamp(1, n);
        (0..len as u64)
            .map(|i| {
                let offset = mix(key, i) % window;
                let page = (centre + n + offset - window / 2) % n;
                self.text.at(page as usize)
            })
            .collect()
    }

    /// Runs path `id` of `len` pages on `lane`: each page reached with
    /// probability 0.9 (branches), `us_per_page` of work per page (median).
    pub(super) fn run(
        &self,
        lane: &mut Lane,
        rng: &mut Rng,
        id: u64,
        len: usize,
        us_per_page: f64,
    ) {
        for page in self.path(id, len) {
            if rng.chance(0.9) {
                lane.read(page);
            }
            lane.work(rng.lognormal(us_per_page, 0.6));
        }
    }
}

/// A user process: its binary's text and data (page cache and private
/// pages), libraries it maps, a heap and thread stacks.
#[derive(Debug, Clone)]
pub(super) struct Program {
    pub code: CodeMap,
    pub data: Mapping,
    pub heap: Mapping,
    pub stack: Mapping,
}

/// Sizes of a program in pages at full scale.
pub(super) struct ProgramSize {
    pub text: usize,
    pub data: usize,
    pub heap: usize,
    /// Share of heap pages never written (malloc'd, not yet used).
    pub heap_zero: f64,
    pub stack: usize,
}

impl ProgramSize {
    /// A daemon of the guest that stays idle in a workload (sshd,
    /// journald, cron): resident, never touched.
    pub(super) const IDLE_DAEMON: ProgramSize = ProgramSize {
        text: 120,
        data: 16,
        heap: 80,
        heap_zero: 0.3,
        stack: 8,
    };
}

impl Program {
    /// `n` processes (or threads) of the same size, one after the other.
    pub(super) fn load_many(
        phys: &mut Physical,
        p: &Params,
        rng: &mut Rng,
        n: usize,
        size: &ProgramSize,
    ) -> Vec<Self> {
        (0..n).map(|_| Self::load(phys, p, rng, size)).collect()
    }

    pub(super) fn load(phys: &mut Physical, p: &Params, rng: &mut Rng, size: &ProgramSize) -> Self {
        let text = phys.alloc(p.pages(size.text), |_| Content::Code);
        let data = phys.alloc_mixed(p.pages(size.data), Content::Heap, 0.4, rng);
        let heap = phys.alloc_mixed(p.pages(size.heap), Content::Heap, size.heap_zero, rng);
        // Stacks are used from the top down: the deepest pages are still zero.
        let stack_pages = p.pages(size.stack).max(2);
        let stack = phys.alloc(stack_pages, |i| {
            if i + 3 >= stack_pages {
                Content::Stack
            } else {
                Content::Zero
            }
        });
        Self {
            code: CodeMap::new(text, rng.u64()),
            data,
            heap,
            stack,
        }
    }

    /// Entering the process after it was scheduled: the top of its stack,
    /// the data it always touches, the event loop's code.
    pub(super) fn wake(&self, lane: &mut Lane, rng: &mut Rng) {
        let top = self.stack.len() - 1;
        lane.write(self.stack.at(top));
        lane.write(self.stack.at(top - 1));
        self.code.run(lane, rng, 0, 3, 2.0);
        for i in 0..self.data.len().min(3) {
            lane.read(self.data.at(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_fixed_per_checkpoint_and_clustered() {
        let code = CodeMap::new(
            Mapping {
                frames: (1000..3000).collect(),
            },
            9,
        );
        let a = code.path(5, 8);
        assert_eq!(a, code.path(5, 8));
        assert_ne!(a, code.path(6, 8));
        let (lo, hi) = (a.iter().min().unwrap(), a.iter().max().unwrap());
        assert!(hi - lo < 32 || hi - lo > 1900, "{a:?}");
    }
}
