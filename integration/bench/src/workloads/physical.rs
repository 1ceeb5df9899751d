//! Guest-physical memory at the checkpoint: which frame holds what, and how
//! frames were handed out. A program's virtually contiguous memory is not
//! physically contiguous in a guest that has been up for a while: the
//! kernel's page allocator hands out runs of frames from fragmented free
//! lists. [`Physical`] models that, so a sequential read of a file or heap
//! shows up as runs of neighbouring page indices broken at run ends, as in
//! real recordings.

use rayon::prelude::*;

use super::content::{page_seed, Content, PAGE};
use super::rng::Rng;

/// Frames backing a virtually contiguous range: `frames[i]` holds virtual
/// page `i`.
#[derive(Debug, Clone, Default)]
pub(super) struct Mapping {
    pub frames: Vec<u64>,
}

impl Mapping {
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frame of virtual page `i`.
    pub(super) fn at(&self, i: usize) -> u64 {
        self.frames[i]
    }

    /// Pages `start..start+len` (clamped to the mapping).
    pub(super) fn span(&self, start: usize, len: usize) -> &[u64] {
        let start = start.min(self.frames.len());
        let end = (start + len).min(self.frames.len());
        &self.frames[start..end]
    }
}

/// Builds the physical memory of a checkpoint: fixed placements (the
/// kernel image), allocations from fragmented free memory, and what is left
/// free at the end.
pub(super) struct Physical {
    contents: Vec<Content>,
    /// Free runs `(first frame, length)` in the order the allocator hands
    /// them out.
    free_runs: Vec<(u64, u64)>,
    next_run: usize,
}

impl Physical {
    /// `total_pages` of memory; `reserved` ranges (firmware, the kernel
    /// image) are kept out of the free lists. Free memory is cut into runs
    /// of 1 to 512 frames (buddy orders 0 to 9, mostly small after uptime)
    /// and shuffled.
    pub(super) fn new(total_pages: u64, reserved: &[(u64, u64)], rng: &mut Rng) -> Self {
        let mut taken = vec![false; total_pages as usize];
        for &(start, len) in reserved {
            for f in start..(start + len).min(total_pages) {
                taken[f as usize] = true;
            }
        }
        let mut free_runs = Vec::new();
        let mut frame = 0u64;
        while frame < total_pages {
            if taken[frame as usize] {
                frame += 1;
                continue;
            }
            let order = match rng.below(100) {
                0..=29 => rng.below(2),
                30..=69 => rng.range(2, 4),
                70..=89 => rng.range(5, 6),
                _ => rng.range(7, 9),
            };
            let mut len = 1u64 << order;
            let mut end = frame;
            while end < total_pages && end - frame < len && !taken[end as usize] {
                end += 1;
            }
            len = end - frame;
            free_runs.push((frame, len));
            frame = end;
        }
        rng.shuffle(&mut free_runs);
        Self {
            contents: vec![Content::Zero; total_pages as usize],
            free_runs,
            next_run: 0,
        }
    }

    /// A fixed, physically contiguous range (must have been reserved).
    pub(super) fn place(
        &mut self,
        start: u64,
        len: u64,
        content: impl Fn(usize) -> Content,
    ) -> Mapping {
        let frames: Vec<u64> = (start..start + len).collect();
        for (i, &f) in frames.iter().enumerate() {
            self.contents[f as usize] = content(i);
        }
        Mapping { frames }
    }

    /// `len` frames from the free lists, in allocation order; virtual page
    /// `i` holds `content(i)`. Panics when memory runs out: the generators
    /// size their checkpoints to fit.
    pub(super) fn alloc(&mut self, len: usize, content: impl Fn(usize) -> Content) -> Mapping {
        let mut frames = Vec::with_capacity(len);
        while frames.len() < len {
            let run = self
                .free_runs
                .get_mut(self.next_run)
                .expect("workload model larger than its memory");
            let take = (len - frames.len()).min(run.1 as usize) as u64;
            frames.extend(run.0..run.0 + take);
            run.0 += take;
            run.1 -= take;
            if run.1 == 0 {
                self.next_run += 1;
            }
        }
        for (i, &f) in frames.iter().enumerate() {
            self.contents[f as usize] = content(i);
        }
        Mapping { frames }
    }

    /// As [`Physical::alloc`] with one kind of content, a share `zero` of
    /// pages (chosen at random) never written.
    pub(super) fn alloc_mixed(
        &mut self,
        len: usize,
        content: Content,
        zero: f64,
        rng: &mut Rng,
    ) -> Mapping {
        let zeros: Vec<bool> = (0..len).map(|_| rng.chance(zero)).collect();
        self.alloc(len, |i| if zeros[i] { Content::Zero } else { content })
    }

    /// Ends the layout: what every frame holds, and the frames still free
    /// in the order the allocator hands them out after the restore. A share
    /// `stale` of those keeps what a freed page held (the kernel does not
    /// clear freed pages), the rest are zero.
    pub(super) fn finish(mut self, stale: f64, rng: &mut Rng) -> Frames {
        let stale_kinds = [
            Content::Heap,
            Content::Text(super::content::TextStyle::Log),
            Content::Text(super::content::TextStyle::Prose),
            Content::Code,
            Content::Media,
        ];
        let mut frames = Vec::new();
        for &(start, len) in &self.free_runs[self.next_run..] {
            frames.extend(start..start + len);
        }
        for &f in &frames {
            if rng.chance(stale) {
                self.contents[f as usize] = *rng.pick(&stale_kinds);
            }
        }
        Frames {
            contents: self.contents,
            free: FreeList { frames },
        }
    }
}

/// Every frame at the checkpoint, once [`Physical`] is finished.
pub(super) struct Frames {
    /// What each frame holds.
    pub contents: Vec<Content>,
    pub free: FreeList,
}

/// Free frames at the checkpoint, in the order the allocator hands them out.
#[derive(Debug, Clone)]
pub(super) struct FreeList {
    frames: Vec<u64>,
}

impl FreeList {
    /// A cursor for one run after the restore.
    pub(super) fn cursor(&self) -> FreeCursor<'_> {
        FreeCursor { list: self, at: 0 }
    }
}

/// Allocation of fresh frames during one run. The same checkpoint hands
/// out the same frames in the same order, but other CPUs and interrupts
/// take some in between, differently each run.
pub(super) struct FreeCursor<'a> {
    list: &'a FreeList,
    at: usize,
}

impl FreeCursor<'_> {
    pub(super) fn take(&mut self, rng: &mut Rng) -> u64 {
        if rng.chance(0.05) {
            self.at += rng.range(1, 8) as usize;
        }
        let frame = self.list.frames[self.at % self.list.frames.len()];
        self.at += 1;
        frame
    }
}

/// The memory image: every page filled by its content kind, in parallel.
pub(super) fn render(contents: &[Content], seed: u64) -> Vec<u8> {
    let mut image = vec![0u8; contents.len() * PAGE];
    image
        .par_chunks_mut(PAGE)
        .zip(contents.par_iter())
        .enumerate()
        .for_each(|(i, (page, content))| {
            if *content != Content::Zero {
                content.fill(page, page_seed(seed, i as u64));
            }
        });
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_fragmented_disjoint_and_avoid_reserved() {
        let mut rng = Rng::new(3);
        let mut phys = Physical::new(8192, &[(0, 256), (1024, 512)], &mut rng);
        let a = phys.alloc(1000, |_| Content::Heap);
        let b = phys.alloc(3000, |_| Content::Code);
        let mut all: Vec<u64> = a.frames.iter().chain(&b.frames).copied().collect();
        assert!(all.iter().all(|&f| f >= 256 && !(1024..1536).contains(&f)));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4000);
        let contiguous = a.frames.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(contiguous > 500 && contiguous < 999, "{contiguous}");
        let Frames { contents, free } = phys.finish(0.0, &mut rng);
        assert_eq!(
            contents.iter().filter(|&&c| c == Content::Zero).count(),
            8192 - 4000
        );
        let mut cursor = free.cursor();
        for _ in 0..100 {
            let f = cursor.take(&mut rng);
            assert!(!all.contains(&f) && f >= 256 && !(1024..1536).contains(&f));
        }
    }
}
