//! Every fuzz target on stable: its seeds, the inputs committed under
//! `corpus/TARGET/` (each once a failure), then a fixed number of seeded
//! mutations. An input fails when the target panics or when the heap it
//! takes at its peak exceeds a bound proportional to its size.
//!
//! `THAW_FUZZ_ITERATIONS` (default 2000) and `THAW_FUZZ_SEED` change the
//! run; `THAW_FUZZ_TRACE=1` prints each input before it runs (to find the
//! one that aborts the process, should an allocation be refused).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use thaw_fuzz::mutate::Mutator;
use thaw_fuzz::seeds::seeds;
use thaw_fuzz::{Target, TARGETS};

/// Heap any input may take, above what its size explains.
const BASE_BOUND: usize = 32 << 20;
/// Heap per input byte: decoded structures are larger than their encoding
/// (a 2-byte run becomes a 16-byte struct), never by more than this.
const PER_BYTE: usize = 64;
/// A thread that asks for more than this in all is refused (the process
/// aborts) rather than allowed to exhaust the machine.
const CEILING: usize = 1 << 30;

thread_local! {
    /// Live bytes allocated by this thread (frees from other threads can
    /// take it below zero), and their peak since the last reset.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts per thread
// (const-initialised thread locals without destructors never allocate), or
// refuses with a null pointer, which GlobalAlloc permits.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.get() + layout.size() as isize;
        if live > CEILING as isize {
            return std::ptr::null_mut();
        }
        LIVE.set(live);
        PEAK.set(PEAK.get().max(live));
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.set(LIVE.get() - layout.size() as isize);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The committed inputs of `name`.
fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Runs `input`; on a panic or too much heap, saves the input where the
/// message says and fails.
fn run_one(target: &Target, input: &[u8], trace: bool) {
    if trace {
        eprintln!("{}: {:02x?}", target.name, input);
    }
    let base = LIVE.get();
    PEAK.set(base);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let peak = (PEAK.get() - base).max(0) as usize;
    let bound = BASE_BOUND + PER_BYTE * input.len();
    let failure = match result {
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into()),
        ),
        Ok(()) if peak > bound => Some(format!(
            "took {peak} bytes of heap for a {}-byte input (bound {bound})",
            input.len()
        )),
        Ok(()) => None,
    };
    if let Some(why) = failure {
        let path = std::env::temp_dir().join(format!(
            "thaw-fuzz-{}-{}.bin",
            target.name,
            blake3::hash(input).to_hex()
        ));
        std::fs::write(&path, input).unwrap();
        panic!(
            "target {}: {why}\ninput saved to {} (add it to corpus/{}/ once fixed)",
            target.name,
            path.display(),
            target.name
        );
    }
}

fn fuzz(name: &str) {
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a target of that name");
    let iterations = env_u64("THAW_FUZZ_ITERATIONS", 2000);
    let seed = env_u64("THAW_FUZZ_SEED", 1) ^ blake3::hash(name.as_bytes()).as_bytes()[0] as u64;
    let trace = std::env::var_os("THAW_FUZZ_TRACE").is_some();

    let mut inputs = seeds(name);
    inputs.extend(corpus(name));
    for input in &inputs {
        run_one(target, input, trace);
    }
    let mut mutator = Mutator::new(seed);
    for i in 0..iterations as usize {
        let input = mutator.mutate(&inputs[i % inputs.len()], &inputs);
        run_one(target, &input, trace);
    }
}

#[test]
fn manifest() {
    fuzz("manifest");
}

#[test]
fn handoff() {
    fuzz("handoff");
}

#[test]
fn dirty_log() {
    fuzz("dirty_log");
}

#[test]
fn state_blob() {
    fuzz("state_blob");
}

#[test]
fn block_frames() {
    fuzz("block_frames");
}

#[test]
fn block_codec() {
    fuzz("block_codec");
}

/// The seeds are valid: each is accepted by its parser, so mutations start
/// deep inside it rather than at its first check.
#[test]
fn seeds_are_accepted() {
    use thaw_format::dirty_log::DirtyLog;
    use thaw_format::handoff::Handoff;
    let manifest = &seeds("manifest")[0];
    assert!(thaw_format::decode(manifest).is_ok());
    assert!(DirtyLog::decode(&seeds("dirty_log")[0]).is_ok());
    assert!(vmm::persist::state::VmState::decode(&seeds("state_blob")[0]).is_ok());
    for h in seeds("handoff") {
        Handoff::parse(&h).unwrap();
    }
    for f in &seeds("block_frames")[..2] {
        thaw_block_protocol::wire::decode_request(f).unwrap();
    }
}
