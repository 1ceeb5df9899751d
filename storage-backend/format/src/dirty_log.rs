//! A checkpoint's dirty log: the pages the guest wrote in each of the last
//! windows of time before the checkpoint, as KVM dirty logging saw them, and
//! its byte encoding.
//!
//! It is stored beside the manifest as `checkpoints/ID/dirty-log`, not inside
//! it: the manifest format stays as it is (no version bump, old readers are
//! unaffected), a checkpoint without the object simply has no dirty log, and
//! the storage backend can read it without decoding the vmm's opaque state
//! blob. Because the manifest does not vouch for it, the object carries its
//! own checksum.
//!
//! ```text
//! header   magic "THAWDLOG" | version u16 LE | reserved u16 (0) | body length u64 LE
//! body     page_size | total_pages | window count |
//!          per window: started_us_before | ended_us_before | run count |
//!                      runs as (gap after the previous run's end, length)
//! trailer  BLAKE3 of header and body (32 bytes)
//! ```
//! Integers in the body are LEB128 varints. Pages are stored as runs because
//! a guest writes in stretches (a hot set, a stack, a buffer) and KVM reports
//! them as bitmaps in physical order anyway. They stay runs once decoded: a
//! few bytes can name billions of pages, so decoding and validation cost
//! what the object holds, and only a caller that has checked the log against
//! real memory expands it ([`DirtyLog::page_lists`]).

use super::error::FormatError;
use super::manifest::{PageRun, MAX_TOTAL_PAGES};
use super::wire::{Decoder, Encoder};

pub const MAGIC: [u8; 8] = *b"THAWDLOG";
pub(crate) const VERSION: u16 = 1;
/// A dirty log larger than this is refused before it is parsed.
pub const MAX_DIRTY_LOG_BYTES: u64 = 256 << 20;

/// Smallest encoding of a window: three 1-byte varints.
const MIN_WINDOW_BYTES: usize = 3;
/// Smallest encoding of a run: two 1-byte varints.
const MIN_RUN_BYTES: usize = 2;

/// The pages written during one window of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyWindow {
    /// When the window opened, in microseconds before the checkpoint paused
    /// the guest.
    pub started_us_before: u64,
    /// When it closed, in microseconds before the pause (0: at the pause).
    pub ended_us_before: u64,
    /// Page indices written in the window (byte offset into the regions
    /// concatenated / page size) as runs: ascending, neither overlapping nor
    /// touching, none empty. KVM's log says only *that* a page was written in
    /// the window, not when or how often.
    pub runs: Vec<PageRun>,
}

impl DirtyWindow {
    /// A window holding `pages` (ascending, each once: see
    /// [`DirtyLog::validate`]), merged into runs.
    pub fn from_pages(started_us_before: u64, ended_us_before: u64, pages: &[u64]) -> Self {
        let mut runs: Vec<PageRun> = Vec::new();
        for &p in pages {
            match runs.last_mut() {
                Some(r) if r.start.checked_add(r.len) == Some(p) => r.len += 1,
                _ => runs.push(PageRun { start: p, len: 1 }),
            }
        }
        DirtyWindow {
            started_us_before,
            ended_us_before,
            runs,
        }
    }

    /// How many pages the window names.
    pub fn page_count(&self) -> u64 {
        self.runs.iter().fold(0, |n, r| n.saturating_add(r.len))
    }

    /// The window's pages, ascending.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs
            .iter()
            .flat_map(|r| r.start..r.start.saturating_add(r.len))
    }
}

/// The windows recorded before one checkpoint, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyLog {
    pub page_size: u64,
    /// Pages of guest memory (every page index is below it).
    pub total_pages: u64,
    pub windows: Vec<DirtyWindow>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirtyLogError {
    #[error("dirty log is {len} bytes, shorter than its {min}-byte header and trailer")]
    TooShort { len: usize, min: usize },
    #[error("not a thaw dirty log: magic bytes are {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error(
        "dirty log format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("dirty log body is {declared} bytes by its header but {actual} bytes are present")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("dirty log of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("dirty log checksum does not match its contents (corrupted in storage or transit)")]
    ChecksumMismatch,
    #[error("dirty log is malformed at {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    #[error("dirty log body has {0} unexpected bytes after its last field")]
    TrailingBytes(usize),
    #[error("dirty log page size {0} is invalid (a power of two from 4096 to 1 GiB)")]
    BadPageSize(u64),
    #[error("dirty log window {window} names page {page}, outside the {total} pages of memory")]
    PageOutOfRange {
        window: usize,
        page: u64,
        total: u64,
    },
    #[error("dirty log window {window} lists page {page} out of ascending order or twice")]
    PagesUnsorted { window: usize, page: u64 },
    #[error("dirty log window {window} ends before it starts or overlaps the window before it")]
    WindowsOutOfOrder { window: usize },
    #[error("dirty log covers {log_pages} pages of {log_page_size} bytes, but the memory is {pages} pages of {page_size} bytes")]
    WrongMemory {
        log_pages: u64,
        log_page_size: u64,
        pages: u64,
        page_size: u64,
    },
}

crate::envelope::impl_from_envelope!(DirtyLogError);

/// The wire decoder's errors, reworded for this object.
impl From<FormatError> for DirtyLogError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Truncated { field } => DirtyLogError::Malformed {
                field,
                reason: "truncated".into(),
            },
            FormatError::VarintOverflow { field } => DirtyLogError::Malformed {
                field,
                reason: "varint longer than 64 bits".into(),
            },
            FormatError::CountExceedsInput {
                field,
                count,
                remaining,
            } => DirtyLogError::Malformed {
                field,
                reason: format!("claims {count} items but only {remaining} bytes remain"),
            },
            other => DirtyLogError::Malformed {
                field: "body",
                reason: other.to_string(),
            },
        }
    }
}

impl DirtyLog {
    /// Checks what decoding relies on: a valid page size, windows in time
    /// order, runs ascending, apart and inside memory. Costs one step per
    /// run, whatever the runs' lengths.
    pub fn validate(&self) -> Result<(), DirtyLogError> {
        if !self.page_size.is_power_of_two() || !(4096..=1 << 30).contains(&self.page_size) {
            return Err(DirtyLogError::BadPageSize(self.page_size));
        }
        let mut previous_end: Option<u64> = None;
        for (i, w) in self.windows.iter().enumerate() {
            let ordered = w.started_us_before >= w.ended_us_before
                && previous_end.is_none_or(|end| w.started_us_before <= end);
            if !ordered {
                return Err(DirtyLogError::WindowsOutOfOrder { window: i });
            }
            previous_end = Some(w.ended_us_before);
            // One past the last page of the run before (0: none yet).
            let mut free_from: Option<u64> = None;
            for run in &w.runs {
                let end = run.start.checked_add(run.len);
                match end {
                    Some(end) if end <= self.total_pages => {}
                    _ => {
                        return Err(DirtyLogError::PageOutOfRange {
                            window: i,
                            page: run.start.saturating_add(run.len).saturating_sub(1),
                            total: self.total_pages,
                        })
                    }
                }
                // Touching runs are one run: refused so that every log has
                // one form and round-trips through its encoding unchanged.
                if run.len == 0 || free_from.is_some_and(|f| run.start <= f) {
                    return Err(DirtyLogError::PagesUnsorted {
                        window: i,
                        page: run.start,
                    });
                }
                free_from = Some(run.start + run.len);
            }
        }
        Ok(())
    }

    /// Checks that the log describes a memory of `pages` pages of
    /// `page_size` bytes (its checkpoint's): only then may its page lists be
    /// expanded.
    pub fn check_memory(&self, page_size: u64, pages: u64) -> Result<(), DirtyLogError> {
        if self.page_size != page_size || self.total_pages != pages {
            return Err(DirtyLogError::WrongMemory {
                log_pages: self.total_pages,
                log_page_size: self.page_size,
                pages,
                page_size,
            });
        }
        Ok(())
    }

    /// The windows' pages, oldest first, for
    /// [`super::layout_from_dirty_windows`]. Takes memory in proportion to
    /// the pages the log names: check it against the memory it describes
    /// first.
    pub fn page_lists(&self) -> Vec<Vec<u64>> {
        self.windows.iter().map(|w| w.pages().collect()).collect()
    }

    /// Encodes the log. It must be valid (see [`DirtyLog::validate`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.varint(self.page_size);
        e.varint(self.total_pages);
        e.varint(self.windows.len() as u64);
        for w in &self.windows {
            e.varint(w.started_us_before);
            e.varint(w.ended_us_before);
            e.varint(w.runs.len() as u64);
            let mut next_free = 0u64;
            for r in &w.runs {
                e.varint(r.start - next_free);
                e.varint(r.len);
                next_free = r.start + r.len;
            }
        }
        super::envelope::seal(MAGIC, VERSION, &e.buf)
    }

    /// Parses and validates a log made by [`DirtyLog::encode`]. Bounded: the
    /// length and checksum are checked before any field is read, every count
    /// against the bytes left, and runs are kept as runs.
    pub fn decode(input: &[u8]) -> Result<DirtyLog, DirtyLogError> {
        let body = super::envelope::open(input, MAGIC, VERSION, MAX_DIRTY_LOG_BYTES)?;
        let log = decode_body(body)?;
        log.validate()?;
        Ok(log)
    }

    /// Parses a body alone (no frame, no checksum, no validation): the part
    /// a fuzzer should reach without forging a checksum.
    pub fn decode_body(body: &[u8]) -> Result<DirtyLog, DirtyLogError> {
        decode_body(body)
    }
}

fn decode_body(body: &[u8]) -> Result<DirtyLog, DirtyLogError> {
    let mut d = Decoder::new(body);
    let page_size = d.varint("page_size")?;
    let total_pages = d.varint("total_pages")?;
    if total_pages > MAX_TOTAL_PAGES {
        return Err(DirtyLogError::Malformed {
            field: "total_pages",
            reason: format!("{total_pages} is above the limit of {MAX_TOTAL_PAGES}"),
        });
    }
    let window_count = d.count("window count", MIN_WINDOW_BYTES)?;
    let mut windows = Vec::with_capacity(window_count);
    for window in 0..window_count {
        let started_us_before = d.varint("window start")?;
        let ended_us_before = d.varint("window end")?;
        let run_count = d.count("run count", MIN_RUN_BYTES)?;
        let mut runs: Vec<PageRun> = Vec::with_capacity(run_count);
        let mut next_free = 0u64;
        for _ in 0..run_count {
            let gap = d.varint("run gap")?;
            let len = d.varint("run length")?;
            if len == 0 {
                return Err(DirtyLogError::Malformed {
                    field: "run length",
                    reason: "empty run".into(),
                });
            }
            let end = next_free
                .checked_add(gap)
                .and_then(|s| s.checked_add(len))
                .filter(|&end| end <= total_pages);
            let Some(end) = end else {
                return Err(DirtyLogError::PageOutOfRange {
                    window,
                    page: next_free.saturating_add(gap).saturating_add(len),
                    total: total_pages,
                });
            };
            match runs.last_mut() {
                // No gap: the run goes on (as the pages it encodes do).
                Some(last) if gap == 0 => last.len += len,
                _ => runs.push(PageRun {
                    start: end - len,
                    len,
                }),
            }
            next_free = end;
        }
        windows.push(DirtyWindow {
            started_us_before,
            ended_us_before,
            runs,
        });
    }
    if !d.is_empty() {
        return Err(DirtyLogError::TrailingBytes(d.remaining()));
    }
    Ok(DirtyLog {
        page_size,
        total_pages,
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> DirtyLog {
        DirtyLog {
            page_size: 4096,
            total_pages: 1000,
            windows: vec![
                DirtyWindow::from_pages(500_000, 250_000, &[0, 1, 2, 3, 10, 999]),
                DirtyWindow::from_pages(250_000, 0, &[]),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let log = sample();
        log.validate().unwrap();
        assert_eq!(DirtyLog::decode(&log.encode()).unwrap(), log);
    }

    #[test]
    fn corrupt_or_foreign_bytes_are_refused() {
        let bytes = sample().encode();
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 40] ^= 1;
        assert_eq!(
            DirtyLog::decode(&flipped),
            Err(DirtyLogError::ChecksumMismatch)
        );
        assert!(matches!(
            DirtyLog::decode(&bytes[..bytes.len() - 1]),
            Err(DirtyLogError::LengthMismatch { .. })
        ));
        assert!(matches!(
            DirtyLog::decode(b"THAWMNFS and more bytes than a header needs, really"),
            Err(DirtyLogError::BadMagic { .. })
        ));
        let mut version = bytes.clone();
        version[8] = 7;
        assert!(matches!(
            DirtyLog::decode(&version),
            Err(DirtyLogError::UnsupportedVersion { found: 7, .. })
        ));
        assert!(matches!(
            DirtyLog::decode(b"THAW"),
            Err(DirtyLogError::TooShort { .. })
        ));
    }

    /// Re-signs a body so that decoding gets past the checksum.
    fn signed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    #[test]
    fn forged_bodies_are_refused_with_the_field() {
        let mut e = Encoder::default();
        e.varint(4096);
        e.varint(8);
        e.varint(1 << 40); // window count
        let err = DirtyLog::decode(&signed(&e.buf)).unwrap_err();
        assert!(
            matches!(
                err,
                DirtyLogError::Malformed {
                    field: "window count",
                    ..
                }
            ),
            "{err}"
        );
        // A run reaching past the end of memory.
        let mut e = Encoder::default();
        e.varint(4096);
        e.varint(8);
        e.varint(1);
        e.varint(10);
        e.varint(0);
        e.varint(1);
        e.varint(6);
        e.varint(3);
        let err = DirtyLog::decode(&signed(&e.buf)).unwrap_err();
        assert!(matches!(err, DirtyLogError::PageOutOfRange { .. }), "{err}");
        // A window ending before it starts.
        let mut e = Encoder::default();
        e.varint(4096);
        e.varint(8);
        e.varint(1);
        e.varint(0);
        e.varint(10);
        e.varint(0);
        let err = DirtyLog::decode(&signed(&e.buf)).unwrap_err();
        assert_eq!(err, DirtyLogError::WindowsOutOfOrder { window: 0 });
    }

    #[test]
    fn a_log_naming_every_page_of_the_largest_memory_stays_runs() {
        // 12 body bytes naming 2^32 pages in each of two windows: decoding
        // keeps two runs instead of expanding 64 GiB of page indices.
        let mut e = Encoder::default();
        e.varint(4096);
        e.varint(MAX_TOTAL_PAGES);
        e.varint(2);
        for (start, end) in [(2, 1), (1, 0)] {
            e.varint(start);
            e.varint(end);
            e.varint(1);
            e.varint(0);
            e.varint(MAX_TOTAL_PAGES);
        }
        let log = DirtyLog::decode(&signed(&e.buf)).unwrap();
        assert_eq!(
            log.windows
                .iter()
                .map(|w| w.page_count())
                .collect::<Vec<_>>(),
            vec![MAX_TOTAL_PAGES; 2]
        );
        assert_eq!(log.windows[1].pages().nth(5), Some(5));
    }

    #[test]
    fn runs_without_a_gap_decode_as_one() {
        let mut e = Encoder::default();
        e.varint(4096);
        e.varint(100);
        e.varint(1);
        e.varint(5);
        e.varint(0);
        e.varint(2);
        for (gap, len) in [(3, 2), (0, 4)] {
            e.varint(gap);
            e.varint(len);
        }
        let log = DirtyLog::decode(&signed(&e.buf)).unwrap();
        assert_eq!(log.windows[0].runs, vec![PageRun { start: 3, len: 6 }]);
        assert_eq!(DirtyLog::decode(&log.encode()).unwrap(), log);
        let mut touching = log.clone();
        touching.windows[0].runs = vec![PageRun { start: 3, len: 2 }, PageRun { start: 5, len: 4 }];
        assert_eq!(
            touching.validate(),
            Err(DirtyLogError::PagesUnsorted { window: 0, page: 5 })
        );
    }

    #[test]
    fn a_log_fits_only_the_memory_it_was_recorded_for() {
        let log = sample();
        assert_eq!(log.check_memory(4096, 1000), Ok(()));
        let err = log.check_memory(4096, 64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dirty log covers 1000 pages of 4096 bytes, but the memory is 64 pages of 4096 bytes"
        );
        assert!(log.check_memory(8192, 1000).is_err());
    }

    #[test]
    fn validate_names_the_bad_window() {
        let mut log = sample();
        log.windows[0] = DirtyWindow::from_pages(500_000, 250_000, &[3, 2]);
        assert_eq!(
            log.validate(),
            Err(DirtyLogError::PagesUnsorted { window: 0, page: 2 })
        );
        let mut log = sample();
        log.windows[1] = DirtyWindow::from_pages(250_000, 0, &[1000]);
        assert!(matches!(
            log.validate(),
            Err(DirtyLogError::PageOutOfRange { window: 1, .. })
        ));
        let mut log = sample();
        log.windows.swap(0, 1);
        assert_eq!(
            log.validate(),
            Err(DirtyLogError::WindowsOutOfOrder { window: 1 })
        );
        let mut log = sample();
        log.page_size = 1000;
        assert_eq!(log.validate(), Err(DirtyLogError::BadPageSize(1000)));
    }

    proptest! {
        #[test]
        fn any_valid_log_round_trips(
            total in 1u64..5000,
            sets in proptest::collection::vec(proptest::collection::btree_set(0u64..5000, 0..200), 0..5),
        ) {
            let n = sets.len() as u64;
            let windows = sets
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let pages: Vec<u64> = s.into_iter().filter(|&p| p < total).collect();
                    DirtyWindow::from_pages((n - i as u64) * 1000, (n - i as u64 - 1) * 1000, &pages)
                })
                .collect();
            let log = DirtyLog { page_size: 4096, total_pages: total, windows };
            prop_assert!(log.validate().is_ok());
            prop_assert_eq!(DirtyLog::decode(&log.encode()).unwrap(), log);
        }
    }
}
