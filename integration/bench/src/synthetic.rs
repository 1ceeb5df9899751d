//! Synthetic guest memory with a realistic mix of page kinds, for the demo
//! and the checkpoint benchmark: runs of zero pages, text, binary heap-like
//! data and incompressible bytes, as a guest's memory has after some uptime.

use rayon::prelude::*;

pub const PAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    Zero,
    Text,
    Binary,
    Random,
}

/// Small, fast, seedable generator (splitmix64).
#[derive(Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Page kinds in runs of 1 to 64 pages: 40% zero, 25% text, 20% binary, 15%
/// random, by expected page count.
pub fn page_kinds(pages: usize, seed: u64) -> Vec<PageKind> {
    let mut rng = SplitMix::new(seed);
    let mut kinds = Vec::with_capacity(pages);
    while kinds.len() < pages {
        let kind = match rng.below(100) {
            0..40 => PageKind::Zero,
            40..65 => PageKind::Text,
            65..85 => PageKind::Binary,
            _ => PageKind::Random,
        };
        let run = 1 + rng.below(64) as usize;
        kinds.extend(std::iter::repeat_n(kind, run.min(pages - kinds.len())));
    }
    kinds
}

const WORDS: &[&str] = &[
    "the", "of", "and", "kernel", "page", "memory", "restore", "block", "guest", "fault", "thread",
    "socket", "request", "return", "error", "value", "struct", "index", "buffer", "cache", "user",
    "session", "token", "http", "json", "time", "level", "info", "debug", "0x7f3a", "GET",
    "/api/v1",
];

fn fill_text(page: &mut [u8], rng: &mut SplitMix) {
    let mut i = 0;
    while i < page.len() {
        let word = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
        let sep: &[u8] = if rng.below(12) == 0 { b"\n" } else { b" " };
        for &b in word.iter().chain(sep) {
            if i == page.len() {
                break;
            }
            page[i] = b;
            i += 1;
        }
    }
}

/// Heap-like words: small integers, pointers into a few arenas, flags, and
/// repeated object headers.
fn fill_binary(page: &mut [u8], rng: &mut SplitMix) {
    let arena = 0xffff_8880_0000_0000u64 + (rng.below(16) << 24);
    for word in page.chunks_exact_mut(8) {
        let v = match rng.below(8) {
            0 | 1 => rng.below(256),
            2 | 3 => arena + (rng.below(1 << 16) << 3),
            4 => 0x0000_0001_dead_0000 | rng.below(4),
            5 => 0,
            _ => u64::MAX - rng.below(16),
        };
        word.copy_from_slice(&v.to_le_bytes());
    }
}

fn fill_random(page: &mut [u8], rng: &mut SplitMix) {
    for word in page.chunks_exact_mut(8) {
        word.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
}

/// Fills `memory` (a multiple of 4 KiB) with the mix, deterministically for a
/// seed, on all cores.
pub fn fill_memory(memory: &mut [u8], seed: u64) {
    let kinds = page_kinds(memory.len() / PAGE, seed);
    memory
        .par_chunks_mut(PAGE)
        .zip(kinds.par_iter())
        .enumerate()
        .for_each(|(i, (page, kind))| {
            let mut rng = SplitMix::new(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            match kind {
                PageKind::Zero => page.fill(0),
                PageKind::Text => fill_text(page, &mut rng),
                PageKind::Binary => fill_binary(page, &mut rng),
                PageKind::Random => fill_random(page, &mut rng),
            }
        });
}

/// A fresh image of `bytes` bytes.
pub fn memory_image(bytes: usize, seed: u64) -> Vec<u8> {
    let mut memory = vec![0u8; bytes];
    fill_memory(&mut memory, seed);
    memory
}

/// Writes a fresh image of `bytes` bytes as a checkpoint (default options)
/// into `store` and returns its id; the image is built off the async threads.
pub async fn write_image_checkpoint(
    store: &thaw_store::Store,
    bytes: usize,
    seed: u64,
) -> anyhow::Result<thaw_format::CheckpointId> {
    let memory = tokio::task::spawn_blocking(move || memory_image(bytes, seed)).await?;
    write_memory_checkpoint(store, &memory).await
}

/// Writes `memory` as a checkpoint of one region at guest address 0 (default
/// options) into `store` and returns its id.
pub async fn write_memory_checkpoint(
    store: &thaw_store::Store,
    memory: &[u8],
) -> anyhow::Result<thaw_format::CheckpointId> {
    let regions = [thaw_store::MemoryRegion {
        guest_phys_addr: 0,
        bytes: memory,
    }];
    let options = thaw_store::WriteOptions::default();
    Ok(
        thaw_store::write_checkpoint(store, &regions, vec![], &options)
            .await?
            .id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_close_to_the_target_and_deterministic() {
        let kinds = page_kinds(100_000, 7);
        let zero = kinds.iter().filter(|&&k| k == PageKind::Zero).count() as f64 / 1e5;
        assert!((0.33..0.47).contains(&zero), "zero fraction {zero}");
        let a = memory_image(64 * PAGE, 3);
        assert_eq!(a, memory_image(64 * PAGE, 3));
        assert_ne!(a, memory_image(64 * PAGE, 4));
    }

    #[test]
    fn text_and_binary_compress_random_does_not() {
        let mut rng = SplitMix::new(1);
        let mut page = vec![0u8; PAGE];
        let ratio = |p: &[u8]| p.len() as f64 / lz4_len(p) as f64;
        fill_text(&mut page, &mut rng);
        assert!(ratio(&page) > 1.5, "text ratio {}", ratio(&page));
        fill_binary(&mut page, &mut rng);
        assert!(ratio(&page) > 1.3, "binary ratio {}", ratio(&page));
        fill_random(&mut page, &mut rng);
        assert!(ratio(&page) < 1.01);
    }

    fn lz4_len(p: &[u8]) -> usize {
        thaw_format::encode_block(p).stored.len()
    }
}
