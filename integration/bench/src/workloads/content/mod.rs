//! What a guest page holds at the checkpoint, and how to fill it with bytes
//! that look (and compress) like the real thing: machine code, text, heap
//! objects with pointers, stacks, page tables, database and key-value pages,
//! compressed media. Each page is filled from its own seed, so images render
//! in parallel and identically for a seed.

use super::rng::{mix, Rng};

mod code;
mod text;

use code::fill_code;
use text::{fill_text, word};

pub const PAGE: usize = 4096;

/// The kind of bytes on one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Content {
    /// Never written (free memory, untouched bss, unused buffers).
    Zero,
    /// x86-64 machine code (kernel, programs, libraries, JIT code cache).
    Code,
    /// Text files and buffers.
    Text(TextStyle),
    /// malloc'd objects: headers, pointers, small integers, short strings.
    Heap,
    /// Kernel data and slab objects: as heap, with more zeros and kernel pointers.
    KernelData,
    /// The used top part of a thread stack (the rest of the page zero).
    Stack,
    PageTable,
    /// Already compressed or encrypted bytes (images, gzip, TLS keys).
    Media,
    /// A heap-table page of a database: line pointers, tuples, free space.
    DbTable,
    /// A B-tree page of a database index: sorted keys and child pointers.
    DbIndex,
    /// Write-ahead log records.
    Wal,
    /// Key-value items: item headers, keys and values.
    KvItems,
    /// A side bitmap (GC mark bits, allocator bitmaps): sparse set bits.
    Bitmap,
    /// Written by the generator itself after rendering.
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextStyle {
    /// Log lines: timestamps, levels, modules, messages with numbers.
    Log,
    /// HTML, CSS and JavaScript.
    Markup,
    /// Prose and documentation.
    Prose,
    /// Configuration files and source code.
    Config,
}

impl Content {
    /// Fills `page` (4 KiB) from `seed`.
    pub(super) fn fill(self, page: &mut [u8], seed: u64) {
        let mut rng = Rng::new(seed);
        match self {
            Content::Zero | Content::Explicit => page.fill(0),
            Content::Code => fill_code(page, &mut rng),
            Content::Text(style) => fill_text(page, style, &mut rng),
            Content::Heap => fill_heap(page, &mut rng, 0x0000_5581_3a00_0000, 8),
            Content::KernelData => fill_heap(page, &mut rng, 0xffff_8880_0400_0000, 6),
            Content::Stack => fill_stack(page, &mut rng),
            Content::PageTable => fill_page_table(page, &mut rng),
            Content::Media => fill_random(page, &mut rng),
            Content::DbTable => fill_db_table(page, &mut rng, seed),
            Content::DbIndex => fill_db_index(page, &mut rng, seed),
            Content::Wal => fill_wal(page, &mut rng, seed),
            Content::KvItems => fill_kv_items(page, &mut rng),
            Content::Bitmap => fill_bitmap(page, &mut rng),
        }
    }
}

/// The seed of page `index` of an image rendered from `seed`.
pub(super) fn page_seed(seed: u64, index: u64) -> u64 {
    mix(seed, index)
}

pub(super) struct Cursor<'a> {
    page: &'a mut [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(page: &'a mut [u8]) -> Self {
        Self { page, at: 0 }
    }

    pub(super) fn full(&self) -> bool {
        self.at >= self.page.len()
    }

    pub(super) fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.page.len() - self.at);
        self.page[self.at..self.at + n].copy_from_slice(&bytes[..n]);
        self.at += n;
    }

    pub(super) fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }

    /// Pads with zeros to a multiple of `to` (a power of two).
    pub(super) fn align(&mut self, to: usize) {
        while self.at & (to - 1) != 0 && !self.full() {
            self.put(&[0]);
        }
    }

    /// Decimal digits of `v`.
    pub(super) fn number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }
}

// ---- heap-like binary data ----

/// malloc chunks holding structs: a size header, a type pointer shared by
/// objects of a type, pointers into the same arena (`base`), small
/// integers, and now and then a short string. `zero_weight` (of 16) sets
/// how many fields are zero.
fn fill_heap(page: &mut [u8], rng: &mut Rng, base: u64, zero_weight: u64) {
    let arena = base + (rng.below(64) << 20);
    let types = [
        base - 0x20_0000 + (rng.below(4096) << 4),
        base - 0x20_0000 + (rng.below(4096) << 4),
        base - 0x20_0000 + (rng.below(4096) << 4),
    ];
    let mut c = Cursor::new(page);
    while !c.full() {
        let words = *rng.pick(&[2u64, 3, 4, 6, 8, 12, 16, 32]);
        c.u64(((words + 1) * 8) | 1);
        if rng.chance(0.15) {
            // A short string (names, keys, paths).
            let mut left = words * 8;
            while left > 0 && !c.full() {
                let w = word(rng).as_bytes();
                let n = (w.len() as u64).min(left) as usize;
                c.put(&w[..n]);
                left -= n as u64;
                if left > 0 {
                    c.put(b"_");
                    left -= 1;
                }
            }
            continue;
        }
        c.u64(*rng.pick(&types));
        for _ in 1..words {
            let v = match rng.below(16) {
                k if k < zero_weight => 0,
                k if k < zero_weight + 4 => arena + (rng.below(1 << 17) << 3),
                k if k < zero_weight + 6 => rng.below(64),
                k if k < zero_weight + 7 => rng.below(1 << 32),
                _ => rng.u64() & 0xffff_ffff_ffff,
            };
            c.u64(v);
        }
    }
}

/// Frames of a stack that grows down: return addresses, saved frame
/// pointers, locals in the top part of the page; below them, never-used zeros.
fn fill_stack(page: &mut [u8], rng: &mut Rng) {
    let used = (rng.range(1, 8) as usize * PAGE / 8).min(PAGE);
    let start = PAGE - used;
    page[..start].fill(0);
    let frame_base = 0x7ffd_4000_0000u64 + (rng.below(1 << 20) << 4);
    let mut c = Cursor::new(&mut page[start..]);
    while !c.full() {
        match rng.below(6) {
            0 => c.u64(0x5581_3900_0000 + rng.below(1 << 22)),
            1 => c.u64(0x7f3a_c000_0000 + rng.below(1 << 24)),
            2 => c.u64(frame_base + (rng.below(512) << 3)),
            3 => c.u64(0),
            _ => c.u64(rng.below(1 << 16)),
        }
    }
}

/// Page-table entries: runs of present entries mapping consecutive frames
/// with the same flags, holes of zero entries between them.
fn fill_page_table(page: &mut [u8], rng: &mut Rng) {
    let mut c = Cursor::new(page);
    while !c.full() {
        let run = rng.range(1, 64);
        if rng.chance(0.35) {
            for _ in 0..run {
                c.u64(0);
            }
            continue;
        }
        let mut frame = rng.below(1 << 18);
        let flags = *rng.pick(&[
            0x067u64,
            0x025,
            0x8000_0000_0000_0025,
            0x8000_0000_0000_0067,
        ]);
        for _ in 0..run {
            c.u64((frame << 12) | flags);
            frame += if rng.chance(0.8) {
                1
            } else {
                rng.range(2, 300)
            };
        }
    }
}

fn fill_random(page: &mut [u8], rng: &mut Rng) {
    for word in page.chunks_exact_mut(8) {
        word.copy_from_slice(&rng.u64().to_le_bytes());
    }
}

fn fill_bitmap(page: &mut [u8], rng: &mut Rng) {
    for word in page.chunks_exact_mut(8) {
        let v = if rng.chance(0.4) {
            0
        } else {
            rng.u64() & rng.u64() & rng.u64()
        };
        word.copy_from_slice(&v.to_le_bytes());
    }
}

// ---- database pages ----

/// A 4 KiB half of an 8 KiB heap-table page: a page header and line
/// pointers, free space, then tuples (tuple header with transaction ids,
/// an id counting up, a timestamp, a name, an amount).
fn fill_db_table(page: &mut [u8], rng: &mut Rng, seed: u64) {
    let first_id = (seed >> 40) * 40;
    let xid = 700_000 + (seed >> 50);
    let mut c = Cursor::new(page);
    let header_half = seed & 1 == 0;
    if header_half {
        c.u64(0x0000_0001_8a3f_2c10 + (seed & 0xffff));
        c.u64(0x2000_0000_0000_0000 | 0x01f0_0180);
        c.u64(0);
        let tuples = rng.range(20, 40);
        for i in 0..tuples {
            c.u32(0x8000_0000 | ((8192 - (i as u32 + 1) * 96) << 15) | 96);
        }
        let gap = rng.range(200, 1500) as usize;
        c.put(&vec![0u8; gap]);
    }
    let mut id = first_id;
    while !c.full() {
        c.u32(xid as u32 + rng.below(40) as u32);
        c.u32(0);
        c.u32(rng.below(40) as u32);
        c.u32(0x0802_0006);
        c.u64(id);
        c.u64(1_700_000_000_000_000 + id * 1_000_003 + rng.below(1_000_000));
        let name = word(rng);
        c.put(&[((name.len() as u8 + 1) << 1) | 1]);
        c.put(name.as_bytes());
        c.align(8);
        c.u64(rng.below(100_000));
        c.u32(rng.below(50) as u32);
        c.align(8);
        id += 1;
    }
}

/// B-tree page: a header, then index tuples with increasing keys, each
/// pointing at a heap block and line.
fn fill_db_index(page: &mut [u8], rng: &mut Rng, seed: u64) {
    let mut key = (seed >> 36) * 200;
    let mut c = Cursor::new(page);
    c.u64(0x0000_0001_7c00_0000 + (seed & 0xfff));
    c.u64(0x0010_0000_1ff0_0200);
    while !c.full() {
        key += rng.range(1, 3);
        let block = key / 38;
        c.u32(block as u32);
        c.put(&[(key % 38) as u8, 0, 0x10, 0]);
        c.u64(key);
    }
}

/// Write-ahead log: records with a length, a transaction id, the previous
/// record's position, a resource manager, a checksum, then tuple data.
fn fill_wal(page: &mut [u8], rng: &mut Rng, seed: u64) {
    let mut lsn = (seed >> 30) << 12;
    let mut c = Cursor::new(page);
    while !c.full() {
        let len = rng.range(3, 20) * 8;
        c.u32(len as u32 + 24);
        c.u32(800_000 + rng.below(500) as u32);
        c.u64(lsn);
        c.put(&[*rng.pick(&[10u8, 10, 11, 1]), 0x20, 0, 0]);
        c.u32(rng.u64() as u32);
        let mut left = len;
        while left > 0 && !c.full() {
            c.u64(rng.below(1 << 20));
            left -= 8;
        }
        lsn += len + 24;
    }
}

// ---- key-value items ----

/// Slab items of one size class: an item header (LRU links, times, sizes),
/// a key like `user:00412345`, then the value: JSON-like text, a binary
/// serialization with varints, or an already compressed blob.
fn fill_kv_items(page: &mut [u8], rng: &mut Rng) {
    let class = *rng.pick(&[128u64, 256, 512, 1024, 2048]);
    let slab = 0x7f3a_8000_0000u64 + (rng.below(1 << 14) << 20);
    let value_kind = rng.below(20);
    let mut c = Cursor::new(page);
    while !c.full() {
        let start = c.at;
        c.u64(slab + rng.below(1 << 14) * class);
        c.u64(slab + rng.below(1 << 14) * class);
        c.u32(86_400 + rng.below(50_000) as u32);
        c.u32(0);
        c.u32(rng.range(class / 3, class - 40) as u32);
        c.put(&[1, 0, 2, 12]);
        c.put(b"user:");
        c.number(rng.range(10_000_000, 99_999_999));
        c.put(b"\r\n");
        let end = start + class as usize;
        while c.at < end && !c.full() {
            match value_kind {
                0..=11 => {
                    c.put(b"{\"id\":");
                    c.number(rng.below(10_000_000));
                    c.put(b",\"name\":\"");
                    c.put(word(rng).as_bytes());
                    c.put(b"\",\"score\":");
                    c.number(rng.below(10_000));
                    c.put(b",\"tags\":[\"");
                    c.put(word(rng).as_bytes());
                    c.put(b"\"]}");
                }
                12..=16 => {
                    c.put(&[0x08, rng.below(128) as u8, 0x12, 0x0a]);
                    c.put(word(rng).as_bytes());
                    c.put(&[0x18, rng.u64() as u8, rng.u64() as u8, 0x20, 0x01]);
                }
                _ => c.u64(rng.u64()),
            }
        }
        if end > c.at {
            let pad = (end - c.at).min(PAGE);
            c.put(&vec![0u8; pad]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(content: Content) -> f64 {
        let mut raw = 0;
        let mut stored = 0;
        let mut page = vec![0u8; PAGE];
        for seed in 0..64 {
            content.fill(&mut page, seed * 7919 + 13);
            raw += PAGE;
            stored += lz4_flex::block::compress(&page).len();
        }
        raw as f64 / stored as f64
    }

    #[test]
    fn kinds_compress_like_the_real_thing() {
        let r = ratio(Content::Code);
        assert!((1.4..2.8).contains(&r), "code {r}");
        for style in [
            TextStyle::Log,
            TextStyle::Markup,
            TextStyle::Prose,
            TextStyle::Config,
        ] {
            let r = ratio(Content::Text(style));
            assert!((1.5..4.0).contains(&r), "{style:?} {r}");
        }
        for kind in [
            Content::Heap,
            Content::KernelData,
            Content::KvItems,
            Content::DbTable,
        ] {
            let r = ratio(kind);
            assert!((1.3..5.0).contains(&r), "{kind:?} {r}");
        }
        for kind in [
            Content::Stack,
            Content::PageTable,
            Content::DbIndex,
            Content::Wal,
            Content::Bitmap,
        ] {
            let r = ratio(kind);
            assert!((1.3..4.0).contains(&r), "{kind:?} {r}");
        }
        assert!(ratio(Content::Media) < 1.01);
    }

    #[test]
    fn pages_are_deterministic_and_never_all_zero_unless_zero() {
        let mut a = vec![0u8; PAGE];
        let mut b = vec![0u8; PAGE];
        for kind in [
            Content::Code,
            Content::Heap,
            Content::Stack,
            Content::PageTable,
            Content::Wal,
        ] {
            kind.fill(&mut a, 5);
            kind.fill(&mut b, 5);
            assert_eq!(a, b);
            assert!(a.iter().any(|&x| x != 0), "{kind:?}");
        }
    }
}
