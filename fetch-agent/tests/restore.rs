//! Restores through the agent with real userfaultfd regions: memory mapped
//! and handed off exactly as the vmm does, pages touched, every byte checked.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{checkpoint, start_agent, wait_until};
use fetch_agent::guest::MappedGuest;
use fetch_agent::metrics::SourceKind;
use fetch_agent::policy::{Config, Priority};
use fetch_agent::source::{BlockSource, ObjectStoreSource, SourceError};
use futures::future::BoxFuture;
use thaw_format::CheckpointId;
use thaw_store::{CheckpointReader, Store};

const PAGES: usize = 1024;

/// Fetches on faults (and prefetches) only, so faults and fetches can be
/// counted exactly.
fn policy(window: usize) -> Config {
    Config {
        prefetch_window: window,
        stream: None,
        zero_fill_ahead: false,
        ..Config::default()
    }
}

/// Touches every page in a scattered order, then compares all of memory.
fn touch_all_and_check(guest: &MappedGuest, expected: &[u8]) {
    let pages = expected.len() / 4096;
    for i in 0..pages {
        guest.touch(((i * 389) % pages) as u64);
    }
    assert!(guest.bytes() == expected, "restored memory differs");
}

#[test]
fn by_default_everything_arrives_without_a_single_fault() {
    let fx = checkpoint(PAGES);
    let running = start_agent(&fx, Config::default(), Vec::new(), None);
    let guest = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let _conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    // The guest does nothing: streaming fetches every block, zero pages are
    // installed ahead.
    let c = &running.agent.metrics().counters;
    assert!(
        wait_until(Duration::from_secs(20), || c.fetched_blocks() as usize
            == fx.blocks),
        "{} of {} blocks streamed",
        c.fetched_blocks(),
        fx.blocks
    );
    // Installs follow the fetch at once; give the last one a moment.
    std::thread::sleep(Duration::from_millis(200));
    touch_all_and_check(&guest, &fx.memory);
    assert_eq!(c.total_faults(), 0, "every page was there before its touch");
}

#[test]
fn restore_through_the_agent_matches_the_checkpoint_and_ends_with_the_vmm() {
    let fx = checkpoint(PAGES);
    let traces = fx.dir.path().join("traces");
    std::fs::create_dir_all(&traces).unwrap();
    let running = start_agent(&fx, policy(4), Vec::new(), Some(traces.clone()));
    let guest = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    touch_all_and_check(&guest, &fx.memory);

    let m = running.agent.metrics();
    assert_eq!(m.restores_active.load(Ordering::SeqCst), 1);
    let c = &m.counters;
    assert!(c.total_faults() > 0);
    assert!(
        c.faults_of(fetch_agent::policy::FaultSource::Zero) > 0,
        "zero pages faulted"
    );
    // Each block fetched at most once.
    assert!(c.fetched_blocks() as usize <= fx.blocks);
    assert_eq!(c.bad_blocks.load(Ordering::SeqCst), 0);

    // The vmm exits: the restore is freed and its trace written.
    drop(conn);
    assert!(wait_until(Duration::from_secs(5), || m
        .restores_active
        .load(Ordering::SeqCst)
        == 0));
    let trace = std::fs::read_dir(&traces)
        .unwrap()
        .next()
        .expect("a trace file")
        .unwrap()
        .path();
    let text = std::fs::read_to_string(trace).unwrap();
    let lines = fetch_agent::trace::parse_pages(&text).unwrap();
    // One line per faulting page, at its first fault. A page still faults
    // twice now and then (1 run in 30 here: 36 faults, 35 pages), so the
    // faults are at least the lines.
    assert!(!lines.is_empty() && lines.len() as u64 <= c.total_faults());
    let pages: std::collections::HashSet<u64> = lines.iter().map(|l| l.1).collect();
    assert_eq!(pages.len(), lines.len(), "each page once");
    assert!(lines.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by time");
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cols.len(), 5, "{l}");
        assert!(
            ["cache", "prefetch", "demand", "zero"].contains(&cols[3]),
            "{l}"
        );
        assert!(cols[4].parse::<u64>().is_ok(), "a stall in µs: {l}");
    }
}

#[test]
fn two_vms_from_one_checkpoint_share_each_fetch() {
    let fx = checkpoint(PAGES);
    // No prefetch: every fetched block is one a fault needed.
    let running = start_agent(&fx, policy(0), Vec::new(), None);
    let guests: Vec<Arc<MappedGuest>> = (0..2)
        .map(|_| Arc::new(MappedGuest::new(fx.memory.len()).unwrap()))
        .collect();
    let mut conns = Vec::new();
    for g in &guests {
        let msg = g
            .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
            .encode();
        conns.push(g.hand_off(&fx.socket(), &msg).unwrap());
    }
    // Both touch everything at the same time.
    let memory = Arc::new(fx.memory.clone());
    let threads: Vec<_> = guests
        .iter()
        .map(|g| {
            let (g, memory) = (g.clone(), memory.clone());
            std::thread::spawn(move || touch_all_and_check(&g, &memory))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = &running.agent.metrics().counters;
    assert_eq!(
        c.fetched_blocks() as usize,
        fx.blocks,
        "one network fetch per block for both VMs"
    );
    // A third VM later is served from the host cache alone.
    let g3 = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = g3
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let _c3 = g3.hand_off(&fx.socket(), &msg).unwrap();
    touch_all_and_check(&g3, &fx.memory);
    assert_eq!(c.fetched_blocks() as usize, fx.blocks);
    // The fault thread counts a fault after the wake-up returns control to
    // the guest, so the last count may trail the last touch by a moment.
    let cached = || c.faults_of(fetch_agent::policy::FaultSource::Cache);
    assert!(
        wait_until(Duration::from_secs(5), || cached() >= fx.blocks as u64),
        "{} faults served from the cache for {} blocks",
        cached(),
        fx.blocks
    );
}

/// A source that serves every block with one byte flipped.
struct Corrupting(ObjectStoreSource);

impl BlockSource for Corrupting {
    fn name(&self) -> &str {
        "corrupting"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::BlockServer
    }
    fn fetch_stored<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        block: u32,
        priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async move {
            let mut b = self
                .0
                .fetch_stored(checkpoint, block, priority)
                .await?
                .to_vec();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            Ok(Bytes::from(b))
        })
    }
    fn manifest_object<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        self.0.manifest_object(checkpoint)
    }
}

/// A block server that took the connection and then went silent: it answers
/// nothing, not even the manifest.
struct Silent;

impl BlockSource for Silent {
    fn name(&self) -> &str {
        "silent"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::BlockServer
    }
    fn fetch_stored<'a>(
        &'a self,
        _checkpoint: &'a CheckpointId,
        _block: u32,
        _priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(futures::future::pending())
    }
    fn manifest_object<'a>(
        &'a self,
        _checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(futures::future::pending())
    }
}

#[test]
fn a_source_silent_from_the_start_does_not_stall_the_restore() {
    let fx = checkpoint(256);
    let running = start_agent(&fx, policy(2), vec![Arc::new(Silent)], None);
    let guest = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let _conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    // The manifest and every block come from the store after the silent server's timeouts.
    touch_all_and_check(&guest, &fx.memory);
    let c = &running.agent.metrics().counters;
    assert_eq!(
        c.blocks[SourceKind::BlockServer as usize]
            .iter()
            .map(|x| x.load(Ordering::SeqCst))
            .sum::<u64>(),
        0
    );
}

/// Restores a checkpoint whose first source corrupts every block it
/// delivers (the store of the hand-off comes next), touches every page and
/// checks all of memory.
fn restore_behind_a_corrupting_source(fx: &common::Fixture, policy: Config) -> common::Running {
    let bad = Corrupting(ObjectStoreSource::new(Store::open(&fx.store_spec).unwrap()));
    let running = start_agent(fx, policy, vec![Arc::new(bad)], None);
    let guest = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let _conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    touch_all_and_check(&guest, &fx.memory);
    running
}

#[test]
fn bad_bytes_from_one_source_are_refetched_from_the_next_never_installed() {
    let fx = checkpoint(256);
    let running = restore_behind_a_corrupting_source(&fx, policy(2));
    let c = &running.agent.metrics().counters;
    let fetched = c.fetched_blocks();
    assert!(fetched > 0);
    assert_eq!(c.bad_blocks.load(Ordering::SeqCst), fetched);
    assert_eq!(
        c.blocks[SourceKind::ObjectStore as usize]
            .iter()
            .map(|x| x.load(Ordering::SeqCst))
            .sum::<u64>(),
        fetched
    );
}

#[test]
fn bad_streamed_bytes_are_refetched_from_the_next_source_never_installed() {
    // The default restore streams every block (one block per request from a
    // source that does not prefer runs); a refused one goes to the next source.
    // 128 blocks: enough that streaming reaches some before the guest's own
    // faults and their prefetch do (with 16, faults sometimes took them all).
    let fx = checkpoint(2048);
    let running = restore_behind_a_corrupting_source(&fx, Config::default());
    let c = &running.agent.metrics().counters;
    let streamed = c.blocks[SourceKind::ObjectStore as usize][Priority::Stream as usize]
        .load(Ordering::SeqCst);
    assert!(streamed > 0, "no block was streamed");
    assert_eq!(c.bad_blocks.load(Ordering::SeqCst), c.fetched_blocks());
}

#[test]
fn a_corrupt_block_in_the_store_is_never_installed() {
    let fx = checkpoint(256);
    // Flip a byte inside block 0's stored bytes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&fx.store_spec).unwrap();
    let reader = rt
        .block_on(CheckpointReader::open(&store, &fx.id, &common::trust()))
        .unwrap();
    let entry = reader.manifest().blocks[0].clone();
    let victim_page = entry.pages[0].start;
    let mut seg = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.segment())
        .unwrap();
    let mut all = Vec::new();
    seg.read_to_end(&mut all).unwrap();
    all[(entry.offset + entry.stored_len / 2) as usize] ^= 0x01;
    use std::io::Seek;
    seg.seek(std::io::SeekFrom::Start(0)).unwrap();
    seg.write_all(&all).unwrap();
    drop(seg);

    let running = start_agent(&fx, policy(0), Vec::new(), None);
    let guest = Arc::new(MappedGuest::new(fx.memory.len()).unwrap());
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    // Pages of other blocks restore fine.
    let other = reader.manifest().blocks[1].pages[0].start;
    assert_eq!(
        guest.touch(other),
        fx.memory[other as usize * 4096],
        "another block"
    );
    // The corrupt block's page stays missing: its toucher waits.
    let (tx, rx) = std::sync::mpsc::channel();
    let g = guest.clone();
    std::thread::spawn(move || {
        let _ = tx.send(g.touch(victim_page));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "a page of the corrupt block was installed"
    );
    let c = &running.agent.metrics().counters;
    assert!(
        c.bad_blocks.load(Ordering::SeqCst) >= 2,
        "refetched and refused again"
    );
    // The vmm gives up: the restore is freed. (The blocked toucher and its
    // mapping are left to the end of the test process.)
    drop(conn);
    let m = running.agent.metrics();
    assert!(wait_until(Duration::from_secs(5), || m
        .restores_active
        .load(Ordering::SeqCst)
        == 0));
    std::mem::forget(guest);
}

/// An object-store source that counts its calls, and with `corrupt`
/// flips a byte of every block it returns from a run.
struct Counting {
    inner: ObjectStoreSource,
    corrupt: bool,
    single_calls: std::sync::atomic::AtomicU64,
    run_calls: std::sync::atomic::AtomicU64,
    run_blocks: std::sync::atomic::AtomicU64,
}

impl Counting {
    fn new(fx: &common::Fixture, corrupt: bool) -> Self {
        Counting {
            inner: ObjectStoreSource::new(Store::open(&fx.store_spec).unwrap()),
            corrupt,
            single_calls: Default::default(),
            run_calls: Default::default(),
            run_blocks: Default::default(),
        }
    }
}

impl BlockSource for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn kind(&self) -> SourceKind {
        SourceKind::BlockServer
    }
    fn prefers_runs(&self) -> bool {
        true
    }
    fn fetch_stored<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        block: u32,
        priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        self.single_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch_stored(checkpoint, block, priority)
    }
    fn fetch_stored_run<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        blocks: &'a [u32],
        priority: Priority,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, SourceError>> {
        self.run_calls.fetch_add(1, Ordering::SeqCst);
        self.run_blocks
            .fetch_add(blocks.len() as u64, Ordering::SeqCst);
        Box::pin(async move {
            let got = self
                .inner
                .fetch_stored_run(checkpoint, blocks, priority)
                .await?;
            Ok(got
                .into_iter()
                .map(|b| {
                    if !self.corrupt {
                        return b;
                    }
                    let mut v = b.to_vec();
                    let mid = v.len() / 2;
                    v[mid] ^= 0x40;
                    Bytes::from(v)
                })
                .collect())
        })
    }
    fn manifest_object<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        self.inner.manifest_object(checkpoint)
    }
}

/// Streams a whole checkpoint with the default policy through `source`,
/// then checks every byte.
fn stream_everything(fx: &common::Fixture, source: Arc<Counting>) -> common::Running {
    let running = start_agent(fx, Config::default(), vec![source], None);
    let guest = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let _conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    let c = &running.agent.metrics().counters;
    assert!(
        wait_until(Duration::from_secs(20), || c.fetched_blocks() as usize
            >= fx.blocks),
        "{} of {} blocks streamed",
        c.fetched_blocks(),
        fx.blocks
    );
    std::thread::sleep(Duration::from_millis(200));
    touch_all_and_check(&guest, &fx.memory);
    running
}

#[test]
fn streaming_from_an_object_store_reads_neighbouring_blocks_in_runs() {
    let fx = checkpoint(PAGES);
    let source = Arc::new(Counting::new(&fx, false));
    stream_everything(&fx, source.clone());
    let runs = source.run_calls.load(Ordering::SeqCst);
    let in_runs = source.run_blocks.load(Ordering::SeqCst);
    let single = source.single_calls.load(Ordering::SeqCst);
    // Every block once, most of them in runs of up to 16: far fewer
    // requests than blocks.
    assert_eq!(
        in_runs + single,
        fx.blocks as u64,
        "runs {runs}, single {single}"
    );
    assert!(
        runs + single <= fx.blocks as u64 / 4,
        "{runs} runs and {single} single requests for {} blocks",
        fx.blocks
    );
}

#[test]
fn a_run_with_bad_bytes_is_refetched_from_the_next_source_never_installed() {
    let fx = checkpoint(PAGES);
    let source = Arc::new(Counting::new(&fx, true));
    let running = stream_everything(&fx, source.clone());
    let c = &running.agent.metrics().counters;
    let in_runs = source.run_blocks.load(Ordering::SeqCst);
    assert!(in_runs > 0);
    // Every block read in a run was refused and came from the object store;
    // memory is intact (checked above).
    assert_eq!(c.bad_blocks.load(Ordering::SeqCst), in_runs);
    assert_eq!(
        c.blocks[SourceKind::ObjectStore as usize]
            .iter()
            .map(|x| x.load(Ordering::SeqCst))
            .sum::<u64>(),
        in_runs,
    );
}
