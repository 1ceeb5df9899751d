//! Properties over random manifests and random event sequences, checked
//! against a model driver.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use thaw_format::Manifest;
use thaw_format::PageRun;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Fault(u64),
    Ready(usize),
    Fail(usize),
    Tick(u64),
    /// The host cache drops a block it holds.
    Evict(usize),
}

fn ops(pages: u64) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0..pages).prop_map(Op::Fault),
            3 => any::<usize>().prop_map(Op::Ready),
            1 => any::<usize>().prop_map(Op::Fail),
            1 => (0u64..200).prop_map(Op::Tick),
            1 => any::<usize>().prop_map(Op::Evict),
        ],
        1..120,
    )
}

/// A random manifest: `n` blocks of 1..=4 pages each over shuffled page
/// indices, a few zero pages, and a random prefetch order.
fn random_manifest() -> impl Strategy<Value = Arc<Manifest>> {
    (2usize..12, any::<u64>()).prop_map(|(n, seed)| {
        let mut rng = seed;
        let mut next = move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        let sizes: Vec<u64> = (0..n).map(|_| 1 + next() % 4).collect();
        let zeros = next() % 8;
        let total: u64 = sizes.iter().sum::<u64>() + zeros;
        let mut pages: Vec<u64> = (0..total).collect();
        for i in (1..pages.len()).rev() {
            pages.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let mut it = pages.into_iter();
        let blocks: Vec<Vec<PageRun>> = sizes
            .iter()
            .map(|&s| {
                (0..s)
                    .map(|_| PageRun {
                        start: it.next().unwrap(),
                        len: 1,
                    })
                    .collect()
            })
            .collect();
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        manifest(total, &blocks, order)
    })
}

#[derive(Default)]
struct Model {
    /// Blocks with a fetch outstanding, and its current priority.
    outstanding: HashMap<u32, Priority>,
    fetched: HashSet<(u32, u32)>,
    /// Blocks the host cache holds: delivered ones until evicted.
    in_cache: HashSet<u32>,
    installed_pages: HashSet<u64>,
    faults: Vec<u64>,
    woken: Vec<u64>,
    /// Install only the pages waiters wait for (a profiling restore).
    page_scope: bool,
    /// Pages the guest gave up: zeros from then on.
    removed: HashSet<u64>,
}

impl Model {
    fn cached(&self, mask: u16) -> impl FnMut(u32) -> bool + '_ {
        move |b| mask & (1 << (b % 16)) != 0 || self.in_cache.contains(&b)
    }

    /// The cache drops `block`: a later fetch of it is a fresh one.
    fn evict(&mut self, block: u32) {
        self.in_cache.remove(&block);
        self.fetched.retain(|(b, _)| *b != block);
    }

    fn apply(&mut self, m: &Manifest, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Fetch {
                    block,
                    priority,
                    attempt,
                } => {
                    assert!(
                        self.fetched.insert((block, attempt)),
                        "block {block} fetched twice in attempt {attempt}"
                    );
                    assert!(
                        self.outstanding.insert(block, priority).is_none(),
                        "block {block} fetched while in flight"
                    );
                }
                Action::Upgrade { block, priority } => {
                    let p = self
                        .outstanding
                        .get_mut(&block)
                        .expect("upgrade of a block in flight");
                    assert!(priority > *p, "upgrade must raise the priority");
                    *p = priority;
                }
                Action::Install {
                    block,
                    runs,
                    waiters,
                    ..
                } => {
                    let order: Vec<u64> = m.blocks[block as usize].page_iter().collect();
                    for r in runs {
                        for i in 0..r.len {
                            let page = r.page + i;
                            assert_eq!(order[(r.block_offset + i) as usize], page);
                            assert!(
                                !self.removed.contains(&page),
                                "block {block} installed over page {page}, which the guest gave up"
                            );
                            assert!(self.installed_pages.insert(page), "page {page} twice");
                            if self.page_scope {
                                assert!(
                                    waiters.iter().any(|w| w.page == page),
                                    "page {page} installed though no fault waits for it"
                                );
                            }
                        }
                    }
                    for w in waiters {
                        assert!(self.installed_pages.contains(&w.page));
                        self.woken.push(w.page);
                    }
                }
                Action::ZeroFill { runs, waiter } => {
                    for r in runs {
                        for p in r.start..r.end() {
                            // A removed page may get a zero page again: the
                            // kernel dropped the earlier one.
                            assert!(
                                self.installed_pages.insert(p) || self.removed.contains(&p),
                                "zero page {p} twice"
                            );
                        }
                    }
                    assert!(self.installed_pages.contains(&waiter.page));
                    self.woken.push(waiter.page);
                }
                Action::ZeroFillAhead { runs } => {
                    for r in runs {
                        for p in r.start..r.end() {
                            assert!(self.installed_pages.insert(p), "zero page {p} twice");
                        }
                    }
                }
                Action::Joined { waiter } => self.woken.push(waiter.page),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_waiter_is_woken_and_demand_never_waits_behind_prefetch(
        m in random_manifest(),
        ops in ops(64),
        window in 0usize..4,
        cached_mask in any::<u16>(),
        stream in any::<bool>(),
        zero_ahead in any::<bool>(),
        page_scope in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let cfg = Config {
            prefetch_window: window,
            zero_window: 4,
            stream: stream.then_some(StreamConfig { bytes_per_sec: Some(20_000), max_in_flight: 2 }),
            zero_fill_ahead: zero_ahead,
            install: if page_scope { InstallScope::Page } else { InstallScope::Block },
        };
        let mut r = Restore::new(m.clone(), cfg, t0);
        let mut model = Model { page_scope, ..Model::default() };
        let mut failures = std::collections::HashMap::new();
        let mut now = t0;
        let total = m.total_pages();
        for op in ops {
            match op {
                Op::Fault(page) => {
                    let page = page % total;
                    // Faults on present pages happen too (a fault read after a racing
                    // install): they must be woken like any other.
                    model.faults.push(page);
                    let actions = r.fault(page, now, &mut model.cached(cached_mask)).unwrap();
                    model.apply(&m, actions);
                    // Demand never waits behind prefetch: the faulting page is
                    // present, or its block is in flight at demand priority.
                    if !model.installed_pages.contains(&page) {
                        let block = r.block_of(page).unwrap().unwrap();
                        prop_assert_eq!(model.outstanding.get(&block), Some(&Priority::Demand));
                        prop_assert_eq!(r.in_flight(block), Some(Priority::Demand));
                    }
                }
                Op::Ready(i) | Op::Fail(i) if !model.outstanding.is_empty() => {
                    let mut keys: Vec<u32> = model.outstanding.keys().copied().collect();
                    keys.sort();
                    let block = keys[i % keys.len()];
                    model.outstanding.remove(&block);
                    let actions = if matches!(op, Op::Ready(_)) {
                        // Delivered bytes go to the host cache.
                        model.in_cache.insert(block);
                        r.block_ready(block, now, None).unwrap()
                    } else {
                        // Every failed attempt counts, with waiters or not (a prefetch
                        // that failed was an attempt too).
                        let failed = failures.entry(block).or_insert(0u32);
                        *failed += 1;
                        match r.fetch_failed(block, now) {
                            Ok(actions) => actions,
                            Err(e) => {
                                // Only a block with waiters is failed, once it has failed
                                // at least the allowed attempts; the error says how many;
                                // the restore ends there.
                                prop_assert!(*failed >= MAX_FETCH_ATTEMPTS, "failed after {failed}");
                                prop_assert_eq!(e, PolicyError::BlockFailed {
                                    block,
                                    attempts: *failed,
                                });
                                return Ok(());
                            }
                        }
                    };
                    model.apply(&m, actions);
                }
                Op::Ready(_) | Op::Fail(_) => {}
                Op::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    let actions = r.poll(now, &mut model.cached(cached_mask));
                    model.apply(&m, actions);
                }
                Op::Evict(i) => {
                    let block = (i % m.blocks.len()) as u32;
                    model.evict(block);
                }
            }
        }
        // Deliver everything still in flight.
        while let Some(&block) = model.outstanding.keys().min() {
            model.outstanding.remove(&block);
            model.in_cache.insert(block);
            let actions = r.block_ready(block, now, None).unwrap();
            model.apply(&m, actions);
        }
        let mut faults = model.faults.clone();
        let mut woken = model.woken.clone();
        faults.sort();
        woken.sort();
        prop_assert_eq!(faults, woken, "every fault is woken exactly once");
    }

    #[test]
    fn streaming_alone_installs_every_block_once(
        m in random_manifest(),
        steps in prop::collection::vec(1u64..100, 1..400),
    ) {
        let t0 = Instant::now();
        let cfg = Config {
            prefetch_window: 2,
            zero_window: 4,
            stream: Some(StreamConfig { bytes_per_sec: Some(50_000), max_in_flight: 3 }),
            zero_fill_ahead: true,
            install: InstallScope::Block,
        };
        let mut r = Restore::new(m.clone(), cfg, t0);
        let mut model = Model::default();
        let mut now = t0;
        let mut sent: u64 = 0;
        for ms in steps {
            now += Duration::from_millis(ms);
            let actions = r.poll(now, &mut never);
            sent += actions.iter().filter(|a| matches!(a, Action::Fetch { .. })).count() as u64 * 1000;
            model.apply(&m, actions);
            // The cap: bytes sent never exceed rate x time plus one block.
            let allowed = 50_000 * (now - t0).as_millis() as u64 / 1000 + 1000;
            prop_assert!(sent <= allowed, "{} > {}", sent, allowed);
            let blocks: Vec<u32> = model.outstanding.keys().copied().collect();
            for b in blocks {
                model.outstanding.remove(&b);
                let actions = r.block_ready(b, now, None).unwrap();
                model.apply(&m, actions);
            }
        }
        // Enough time for everything: run until done.
        for _ in 0..1000 {
            if r.all_requested() && model.outstanding.is_empty() { break; }
            now += Duration::from_millis(100);
            let actions = r.poll(now, &mut never);
            model.apply(&m, actions);
            let blocks: Vec<u32> = model.outstanding.keys().copied().collect();
            for b in blocks {
                model.outstanding.remove(&b);
                let actions = r.block_ready(b, now, None).unwrap();
                model.apply(&m, actions);
            }
        }
        prop_assert_eq!(r.installed_blocks(), m.blocks.len());
        // Zero pages were installed ahead too: every page, each once.
        prop_assert_eq!(model.installed_pages.len() as u64, m.total_pages());
        prop_assert_eq!(r.next_poll(now), None);
    }

    /// A profiling restore sees every first touch: no page is present before
    /// a fault asked for it, a block is fetched once however many of its
    /// pages fault (while the cache keeps it), and the block's later pages
    /// come from the cache.
    #[test]
    fn profiling_installs_only_faulted_pages_and_fetches_each_block_once(
        m in random_manifest(),
        ops in ops(64),
        cached_mask in any::<u16>(),
    ) {
        let t0 = Instant::now();
        let mut r = Restore::new(m.clone(), Config::profiling(), t0);
        let mut model = Model { page_scope: true, ..Model::default() };
        let mut now = t0;
        let total = m.total_pages();
        let mut fetches = 0u64;
        // Blocks whose bytes the restore needed from a source: faulted, not
        // in the cache at the time.
        let mut needed: HashSet<u32> = HashSet::new();
        for op in ops {
            match op {
                Op::Fault(page) => {
                    let page = page % total;
                    model.faults.push(page);
                    let block = r.block_of(page).unwrap();
                    let was_cached = block.is_some_and(|b| model.cached(cached_mask)(b));
                    let actions = r.fault(page, now, &mut model.cached(cached_mask)).unwrap();
                    for a in &actions {
                        match a {
                            Action::Fetch { block, .. } => {
                                prop_assert!(!was_cached, "fetched block {} the cache holds", block);
                                prop_assert!(needed.insert(*block), "block {} fetched twice", block);
                                fetches += 1;
                            }
                            Action::Install { origin, waiters, .. } => {
                                prop_assert_eq!(*origin, Origin::Cache);
                                prop_assert_eq!(waiters[0].source, FaultSource::Cache);
                            }
                            Action::ZeroFill { runs, .. } => {
                                prop_assert_eq!(runs, &vec![PageRun { start: page, len: 1 }]);
                            }
                            Action::Joined { .. } => {}
                            other => prop_assert!(false, "{:?} in a profiling restore", other),
                        }
                    }
                    model.apply(&m, actions);
                }
                Op::Ready(i) | Op::Fail(i) if !model.outstanding.is_empty() => {
                    let mut keys: Vec<u32> = model.outstanding.keys().copied().collect();
                    keys.sort();
                    let block = keys[i % keys.len()];
                    model.outstanding.remove(&block);
                    let actions = if matches!(op, Op::Ready(_)) {
                        model.in_cache.insert(block);
                        r.block_ready(block, now, None).unwrap()
                    } else {
                        let a = match r.fetch_failed(block, now) {
                            Ok(a) => a,
                            Err(e) => {
                                prop_assert_eq!(e, PolicyError::BlockFailed {
                                    block,
                                    attempts: MAX_FETCH_ATTEMPTS,
                                });
                                return Ok(());
                            }
                        };
                        fetches += a.len() as u64;
                        a
                    };
                    model.apply(&m, actions);
                }
                Op::Ready(_) | Op::Fail(_) => {}
                Op::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    prop_assert!(r.poll(now, &mut model.cached(cached_mask)).is_empty());
                    prop_assert_eq!(r.next_poll(now), None);
                }
                Op::Evict(i) => {
                    let block = (i % m.blocks.len()) as u32;
                    model.evict(block);
                    // Fetching it again later is right.
                    needed.remove(&block);
                }
            }
            // Every installed page is one a fault asked for.
            let faulted: HashSet<u64> = model.faults.iter().copied().collect();
            prop_assert!(model.installed_pages.is_subset(&faulted));
        }
        while let Some(&block) = model.outstanding.keys().min() {
            model.outstanding.remove(&block);
            let actions = r.block_ready(block, now, None).unwrap();
            model.apply(&m, actions);
        }
        let faulted: HashSet<u64> = model.faults.iter().copied().collect();
        prop_assert_eq!(&model.installed_pages, &faulted, "every faulted page installed");
        prop_assert_eq!(r.stats().fetches, fetches);
        let mut faults = model.faults.clone();
        let mut woken = model.woken.clone();
        faults.sort();
        woken.sort();
        prop_assert_eq!(faults, woken, "every fault is woken exactly once");
    }
}

/// Events of a restore whose guest gives pages up now and then.
#[derive(Debug, Clone)]
enum BalloonOp {
    Fault(u64),
    Ready(usize),
    Tick(u64),
    /// A REMOVE event: pages `start .. start + len` (clipped to memory).
    Remove(u64, u64),
}

fn balloon_ops(pages: u64) -> impl Strategy<Value = Vec<BalloonOp>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0..pages).prop_map(BalloonOp::Fault),
            3 => any::<usize>().prop_map(BalloonOp::Ready),
            1 => (0u64..200).prop_map(BalloonOp::Tick),
            2 => (0..pages, 1u64..6).prop_map(|(s, l)| BalloonOp::Remove(s, l)),
        ],
        1..150,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// REMOVE events interleaved with faults, fetches in flight (demand,
    /// prefetch, streaming), cache installs and zero pages ahead: no block
    /// is ever installed over a removed page, a fault on one is served at
    /// once with a zero page and starts no fetch, and every fault is woken
    /// exactly once, including faults that waited for a block when their
    /// page was removed.
    #[test]
    fn removed_pages_read_as_zeros_and_no_fault_is_left_waiting(
        m in random_manifest(),
        ops in balloon_ops(64),
        window in 0usize..4,
        cached_mask in any::<u16>(),
        stream in any::<bool>(),
        zero_ahead in any::<bool>(),
        page_scope in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let cfg = Config {
            prefetch_window: window,
            zero_window: 4,
            stream: stream.then_some(StreamConfig { bytes_per_sec: Some(20_000), max_in_flight: 2 }),
            zero_fill_ahead: zero_ahead,
            install: if page_scope { InstallScope::Page } else { InstallScope::Block },
        };
        let mut r = Restore::new(m.clone(), cfg, t0);
        let mut model = Model { page_scope, ..Model::default() };
        let mut now = t0;
        let total = m.total_pages();
        for op in ops {
            match op {
                BalloonOp::Fault(page) => {
                    let page = page % total;
                    model.faults.push(page);
                    let actions = r.fault(page, now, &mut model.cached(cached_mask)).unwrap();
                    if model.removed.contains(&page) {
                        prop_assert_eq!(actions.len(), 1);
                        let zero = matches!(&actions[0], Action::ZeroFill { runs, waiter }
                            if waiter.page == page && runs == &vec![PageRun { start: page, len: 1 }]);
                        prop_assert!(zero, "fault on removed page {}: {:?}", page, actions);
                    }
                    model.apply(&m, actions);
                    if !model.installed_pages.contains(&page) {
                        let block = r.block_of(page).unwrap().unwrap();
                        prop_assert_eq!(r.in_flight(block), Some(Priority::Demand));
                    }
                }
                BalloonOp::Ready(i) if !model.outstanding.is_empty() => {
                    let mut keys: Vec<u32> = model.outstanding.keys().copied().collect();
                    keys.sort();
                    let block = keys[i % keys.len()];
                    model.outstanding.remove(&block);
                    model.in_cache.insert(block);
                    let actions = r.block_ready(block, now, None).unwrap();
                    model.apply(&m, actions);
                }
                BalloonOp::Ready(_) => {}
                BalloonOp::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    let actions = r.poll(now, &mut model.cached(cached_mask));
                    model.apply(&m, actions);
                }
                BalloonOp::Remove(start, len) => {
                    let start = start % total;
                    let len = len.min(total - start);
                    for p in start..start + len {
                        // The kernel drops the page whatever was in it.
                        model.installed_pages.remove(&p);
                        model.removed.insert(p);
                    }
                    let actions = r.remove(start, len).unwrap();
                    for a in &actions {
                        let zero = matches!(a, Action::ZeroFill { waiter, .. }
                            if (start..start + len).contains(&waiter.page));
                        prop_assert!(zero, "REMOVE of {}+{} gave {:?}", start, len, a);
                    }
                    model.apply(&m, actions);
                    for p in start..start + len {
                        prop_assert!(r.is_removed(p));
                    }
                }
            }
        }
        while let Some(&block) = model.outstanding.keys().min() {
            model.outstanding.remove(&block);
            let actions = r.block_ready(block, now, None).unwrap();
            model.apply(&m, actions);
        }
        let mut faults = model.faults.clone();
        let mut woken = model.woken.clone();
        faults.sort();
        woken.sort();
        prop_assert_eq!(faults, woken, "every fault is woken exactly once");
        // A removal past the end of memory is refused, naming the page.
        prop_assert_eq!(
            r.remove(total - 1, 2),
            Err(PolicyError::PageOutOfRange { page: total, total })
        );
    }
}
