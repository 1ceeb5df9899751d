//! Decoding costs what the object holds, not what it claims: tiny objects
//! that name the largest memory allowed are decoded and validated (or
//! refused) within a few KiB of heap, measured by a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use thaw_format::dirty_log::{DirtyLog, MAGIC as DIRTY_LOG_MAGIC};
use thaw_format::envelope::seal;
use thaw_format::manifest::MAX_TOTAL_PAGES;
use thaw_format::{
    decode, encode, CheckpointId, FormatError, Manifest, PageRun, Region, StateBlob,
};

/// Counts live heap bytes and their peak; refuses any allocation that would
/// take the process past [`CEILING`], so a regression fails the test instead
/// of exhausting the machine.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
const CEILING: usize = 256 << 20;

// SAFETY: forwards to the system allocator unchanged; only counts (or
// refuses with a null pointer, which GlobalAlloc permits).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        if live > CEILING {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes `f` takes at its peak above what was live when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

fn all_zero_manifest(zero_pages: Vec<PageRun>) -> Manifest {
    Manifest {
        id: CheckpointId::new("inflated").unwrap(),
        created_unix_ms: 0,
        parent: None,
        page_size: 4096,
        regions: vec![Region {
            guest_phys_addr: 0,
            size: MAX_TOTAL_PAGES * 4096,
        }],
        objects: vec![],
        blocks: vec![],
        zero_pages,
        prefetch_order: vec![],
        state: StateBlob::new(vec![]),
        encryption: None,
    }
}

/// One test, so that nothing else allocates while a measurement runs.
#[test]
fn objects_claiming_the_largest_memory_decode_in_bounded_memory() {
    const BOUND: usize = 64 << 10;

    // A 100-odd-byte manifest claiming 16 TiB of zero pages: valid.
    let m = all_zero_manifest(vec![PageRun {
        start: 0,
        len: MAX_TOTAL_PAGES,
    }]);
    let bytes = encode(&m);
    assert!(bytes.len() < 200, "{}", bytes.len());
    let (got, peak) = peak_of(|| decode(&bytes));
    assert_eq!(got.unwrap(), m);
    assert!(peak < BOUND, "decoding took {peak} bytes");

    // The same, one page short or one page twice: refused, as cheaply.
    for (runs, want) in [
        (
            vec![PageRun {
                start: 0,
                len: MAX_TOTAL_PAGES - 1,
            }],
            "neither in a block nor in the zero-page set",
        ),
        (
            vec![
                PageRun {
                    start: 0,
                    len: MAX_TOTAL_PAGES,
                },
                PageRun { start: 7, len: 1 },
            ],
            "listed twice",
        ),
    ] {
        let bytes = encode(&all_zero_manifest(runs));
        let (got, peak) = peak_of(|| decode(&bytes));
        let err: FormatError = got.unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert!(peak < BOUND, "refusing took {peak} bytes");
    }

    // A dirty log naming every one of 2^32 pages in each of 64 windows (a
    // page list would be 2 TiB).
    let mut body = Vec::new();
    let varint = |out: &mut Vec<u8>, mut v: u64| {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    varint(&mut body, 4096);
    varint(&mut body, MAX_TOTAL_PAGES);
    varint(&mut body, 64);
    for w in (0..64u64).rev() {
        varint(&mut body, w + 1);
        varint(&mut body, w);
        varint(&mut body, 1);
        varint(&mut body, 0);
        varint(&mut body, MAX_TOTAL_PAGES);
    }
    let bytes = seal(DIRTY_LOG_MAGIC, 1, &body);
    let (got, peak) = peak_of(|| DirtyLog::decode(&bytes));
    let log = got.unwrap();
    assert_eq!(log.windows.len(), 64);
    assert!(log
        .windows
        .iter()
        .all(|w| w.page_count() == MAX_TOTAL_PAGES));
    assert!(peak < BOUND, "decoding the dirty log took {peak} bytes");
}
