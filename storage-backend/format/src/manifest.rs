//! The manifest: everything a reader needs to rebuild guest memory and VM
//! state from a checkpoint's blocks, and the rules that make it consistent.

use super::block_crypt::{Encryption, STATE_SALT_LEN, TAG_LEN};
use super::error::{FormatError, PageOwner};

/// Largest number of pages one block may hold (16 MiB of 4 KiB pages): bounds
/// the memory a reader allocates for one block whatever the manifest says.
pub const MAX_BLOCK_PAGES: u64 = 4096;
/// Largest guest memory a manifest may describe, in pages (16 TiB of 4 KiB
/// pages), so page indices and byte offsets stay far from overflow.
pub const MAX_TOTAL_PAGES: u64 = 1 << 32;

/// A checkpoint's name inside a store: also a path component, hence the
/// restricted alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckpointId(String);

impl CheckpointId {
    pub fn new(id: impl Into<String>) -> Result<Self, FormatError> {
        let id = id.into();
        let ok = (1..=128).contains(&id.len())
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(id))
        } else {
            Err(FormatError::BadCheckpointId(id))
        }
    }

    /// A fresh id that sorts by creation time: milliseconds since the epoch in
    /// hex, then random bits so two writers in the same millisecond differ.
    pub fn generate(created_unix_ms: u64) -> Self {
        Self(format!(
            "{created_unix_ms:011x}-{:08x}",
            rand::random::<u32>()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CheckpointId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A contiguous range of guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub guest_phys_addr: u64,
    pub size: u64,
}

/// Consecutive page indices `start .. start + len`. Page indices count pages
/// of the regions concatenated in manifest order (as in the workload format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub start: u64,
    pub len: u64,
}

impl PageRun {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// How a block's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is: compression did not pay.
    Raw = 0,
    /// lz4 block format (lz4_flex), without a size prefix.
    Lz4 = 1,
}

impl Codec {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Lz4),
            _ => None,
        }
    }

    /// The smallest stored length that can decode to `raw_len` bytes: a
    /// reader allocates `raw_len` bytes once it holds the stored ones, so
    /// this bounds that allocation by what the store really sent.
    pub fn min_stored_len(self, raw_len: u64) -> u64 {
        match self {
            Codec::Raw => raw_len,
            // Each lz4 input byte yields at most 255 output bytes (a match
            // length continuation byte); any other byte yields fewer.
            Codec::Lz4 => raw_len.div_ceil(255),
        }
    }

    /// The largest stored length that can decode to `raw_len` bytes.
    pub fn max_stored_len(self, raw_len: u64) -> u64 {
        match self {
            Codec::Raw => raw_len,
            // lz4's worst case expansion: 1 byte per 255 plus a small constant.
            Codec::Lz4 => raw_len + raw_len / 255 + 16,
        }
    }
}

/// One stored block: its pages in layout order, and where its bytes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// The pages, in the order their bytes follow each other in the block.
    pub pages: Vec<PageRun>,
    /// Index into [`Manifest::objects`].
    pub object: u32,
    /// Byte offset of the stored bytes inside the object.
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
    pub codec: Codec,
    /// BLAKE3 of the raw (decoded) bytes; in an encrypted checkpoint keyed
    /// with the tenant's key, so the store cannot confirm guesses.
    pub hash: [u8; 32],
    /// BLAKE3 of the stored bytes (the ciphertext when encrypted), so a
    /// block server can check them without decoding or keys. `None` in
    /// manifests of format version 1.
    pub stored_hash: Option<[u8; 32]>,
}

impl BlockEntry {
    /// Pages in the block (saturating: an unvalidated entry may claim runs
    /// whose lengths overflow).
    pub fn page_count(&self) -> u64 {
        self.pages.iter().fold(0, |n, r| n.saturating_add(r.len))
    }

    /// Page indices in block order.
    pub fn page_iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.iter().flat_map(|r| r.start..r.end())
    }
}

/// Opaque VM and device state, kept with its hash. In an encrypted
/// checkpoint `bytes` are the sealed state and `hash` covers them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateBlob {
    pub bytes: Vec<u8>,
    pub hash: [u8; 32],
}

impl StateBlob {
    pub fn new(bytes: Vec<u8>) -> Self {
        let hash = *blake3::hash(&bytes).as_bytes();
        Self { bytes, hash }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub id: CheckpointId,
    pub created_unix_ms: u64,
    /// The checkpoint this one was written against: blocks with equal hashes
    /// point into the parent's objects instead of being uploaded again.
    pub parent: Option<CheckpointId>,
    pub page_size: u64,
    pub regions: Vec<Region>,
    /// Object keys relative to the store root (may belong to ancestors).
    pub objects: Vec<String>,
    pub blocks: Vec<BlockEntry>,
    /// Pages that are all zero: not stored.
    pub zero_pages: Vec<PageRun>,
    /// Block indices in the order a restore should prefetch them.
    pub prefetch_order: Vec<u32>,
    pub state: StateBlob,
    /// Present when blocks and state are encrypted with a tenant key.
    pub encryption: Option<Encryption>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    pub fn total_pages(&self) -> u64 {
        self.total_bytes() / self.page_size
    }

    pub fn stored_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.stored_len).sum()
    }

    pub fn zero_page_count(&self) -> u64 {
        self.zero_pages.iter().map(|r| r.len).sum()
    }

    /// Checks every rule a reader relies on. Decoding calls this, and the
    /// writer calls it before uploading a manifest.
    pub fn validate(&self) -> Result<(), FormatError> {
        validate_page_size(self.page_size)?;
        validate_regions(&self.regions, self.page_size)?;
        let total = self.total_pages();
        if total > MAX_TOTAL_PAGES {
            return Err(FormatError::TooManyPages {
                pages: total,
                max: MAX_TOTAL_PAGES,
            });
        }
        for key in &self.objects {
            validate_object_key(key)?;
        }
        for (i, block) in self.blocks.iter().enumerate() {
            self.validate_block(i as u32, block)?;
        }
        self.validate_page_coverage(total)?;
        validate_prefetch_order(&self.prefetch_order, self.blocks.len())?;
        if *blake3::hash(&self.state.bytes).as_bytes() != self.state.hash {
            return Err(FormatError::StateHashMismatch);
        }
        if self.encryption.is_some() && self.state.bytes.len() < STATE_SALT_LEN + TAG_LEN {
            return Err(FormatError::StateNotSealed {
                len: self.state.bytes.len(),
            });
        }
        Ok(())
    }

    fn validate_block(&self, index: u32, b: &BlockEntry) -> Result<(), FormatError> {
        let pages = b.page_count();
        if pages == 0 {
            return Err(FormatError::EmptyBlock { block: index });
        }
        if pages > MAX_BLOCK_PAGES {
            return Err(FormatError::BlockTooLarge {
                block: index,
                pages,
                max: MAX_BLOCK_PAGES,
            });
        }
        let expected = pages * self.page_size;
        if b.raw_len != expected {
            return Err(FormatError::RawLenMismatch {
                block: index,
                raw_len: b.raw_len,
                pages,
                expected,
            });
        }
        // An encrypted block carries its tag, and needs its stored hash: a
        // block server checks what it serves by it, without keys.
        let tag = if self.encryption.is_some() {
            if b.stored_hash.is_none() {
                return Err(FormatError::EncryptedWithoutStoredHash { block: index });
            }
            TAG_LEN as u64
        } else {
            0
        };
        let stored_lens =
            b.codec.min_stored_len(b.raw_len) + tag..=b.codec.max_stored_len(b.raw_len) + tag;
        if b.stored_len <= tag || !stored_lens.contains(&b.stored_len) {
            return Err(FormatError::BadStoredLen {
                block: index,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
            });
        }
        if b.object as usize >= self.objects.len() {
            return Err(FormatError::ObjectOutOfRange {
                block: index,
                object: b.object,
                objects: self.objects.len(),
            });
        }
        if b.offset.checked_add(b.stored_len).is_none() {
            return Err(FormatError::RangeOverflow {
                block: index,
                offset: b.offset,
                len: b.stored_len,
            });
        }
        Ok(())
    }

    /// Every page is in exactly one block or in the zero-page set. Checked
    /// on the runs themselves, sorted: the cost follows the number of runs
    /// the manifest holds, never the number of pages they claim.
    fn validate_page_coverage(&self, total: u64) -> Result<(), FormatError> {
        // Claims in the order they are listed: zero pages, then each block.
        let claims =
            self.zero_pages
                .iter()
                .map(|r| (r, PageOwner::ZeroPages))
                .chain(self.blocks.iter().enumerate().flat_map(|(i, b)| {
                    b.pages.iter().map(move |r| (r, PageOwner::Block(i as u32)))
                }));
        let mut runs: Vec<Claim> = Vec::new();
        for (order, (run, owner)) in claims.enumerate() {
            let end = run.start.checked_add(run.len).filter(|&e| e <= total);
            let Some(end) = end else {
                return Err(FormatError::PageOutOfRange {
                    page: run.start.max(total),
                    total,
                    owner,
                });
            };
            if run.len > 0 {
                runs.push(Claim {
                    start: run.start,
                    end,
                    order,
                    owner,
                });
            }
        }
        runs.sort_unstable_by_key(|c| (c.start, c.order));
        // The run reaching furthest so far: any later run starting before its
        // end shares pages with it.
        let mut reach: Option<&Claim> = None;
        let mut first_gap: Option<u64> = None;
        for claim in &runs {
            let covered = reach.map_or(0, |r| r.end);
            match reach {
                Some(r) if claim.start < r.end => {
                    let (first, second) = if r.order < claim.order {
                        (r, claim)
                    } else {
                        (claim, r)
                    };
                    return Err(FormatError::PageListedTwice {
                        page: claim.start,
                        first: first.owner,
                        second: second.owner,
                    });
                }
                _ => {}
            }
            if claim.start > covered && first_gap.is_none() {
                first_gap = Some(covered);
            }
            reach = Some(claim);
        }
        let covered = reach.map_or(0, |r| r.end);
        match first_gap.or((covered < total).then_some(covered)) {
            Some(page) => Err(FormatError::PageMissing { page }),
            None => Ok(()),
        }
    }
}

/// One run of pages claimed by a block or the zero-page set, with its place
/// in the manifest's listing (which decides which claim of a page was first).
struct Claim {
    start: u64,
    end: u64,
    order: usize,
    owner: PageOwner,
}

pub fn validate_page_size(page_size: u64) -> Result<(), FormatError> {
    if page_size.is_power_of_two() && (4096..=1 << 30).contains(&page_size) {
        Ok(())
    } else {
        Err(FormatError::BadPageSize(page_size))
    }
}

pub fn validate_regions(regions: &[Region], page_size: u64) -> Result<(), FormatError> {
    for (index, r) in regions.iter().enumerate() {
        let aligned = r.size != 0 && r.size % page_size == 0 && r.guest_phys_addr % page_size == 0;
        if !aligned || r.guest_phys_addr.checked_add(r.size).is_none() {
            return Err(FormatError::BadRegion {
                index,
                base: r.guest_phys_addr,
                size: r.size,
            });
        }
    }
    let mut sorted: Vec<(usize, &Region)> = regions.iter().enumerate().collect();
    sorted.sort_by_key(|(_, r)| r.guest_phys_addr);
    for pair in sorted.windows(2) {
        let ((i, a), (j, b)) = (pair[0], pair[1]);
        if a.guest_phys_addr + a.size > b.guest_phys_addr {
            return Err(FormatError::RegionsOverlap {
                first: i.min(j),
                second: i.max(j),
            });
        }
    }
    let pages: u64 = regions.iter().map(|r| r.size / page_size).sum();
    if pages > MAX_TOTAL_PAGES {
        return Err(FormatError::TooManyPages {
            pages,
            max: MAX_TOTAL_PAGES,
        });
    }
    Ok(())
}

fn validate_object_key(key: &str) -> Result<(), FormatError> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !key.bytes().any(|b| b.is_ascii_control() || b == b'\\');
    if ok {
        Ok(())
    } else {
        Err(FormatError::BadObjectKey(key.to_owned()))
    }
}

fn validate_prefetch_order(order: &[u32], blocks: usize) -> Result<(), FormatError> {
    let bad = |reason: String| FormatError::BadPrefetchOrder { blocks, reason };
    if order.len() != blocks {
        return Err(bad(format!("it lists {} entries", order.len())));
    }
    let mut seen = vec![false; blocks];
    for &b in order {
        let slot = seen
            .get_mut(b as usize)
            .ok_or_else(|| bad(format!("block {b} does not exist")))?;
        if std::mem::replace(slot, true) {
            return Err(bad(format!("block {b} appears twice")));
        }
    }
    Ok(())
}
