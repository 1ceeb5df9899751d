use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use storage_backend::format::{BlockEntry, CheckpointId, Codec, PageRun, Region, StateBlob};
use storage_backend::Manifest;

use super::*;

/// A manifest over `total` pages: `blocks` lists each block's page runs;
/// every other page is a zero page. Blocks are 1000 stored bytes each.
fn manifest(total: u64, blocks: &[Vec<PageRun>], order: Vec<u32>) -> Arc<Manifest> {
    let mut owned = vec![false; total as usize];
    let entries: Vec<BlockEntry> = blocks
        .iter()
        .map(|runs| {
            for r in runs {
                for p in r.start..r.end() {
                    owned[p as usize] = true;
                }
            }
            let pages: u64 = runs.iter().map(|r| r.len).sum();
            BlockEntry {
                pages: runs.clone(),
                object: 0,
                offset: 0,
                stored_len: 1000,
                raw_len: pages * 4096,
                codec: Codec::Raw,
                hash: [0; 32],
            }
        })
        .collect();
    let mut zero_pages: Vec<PageRun> = Vec::new();
    for p in 0..total {
        if !owned[p as usize] {
            match zero_pages.last_mut() {
                Some(r) if r.end() == p => r.len += 1,
                _ => zero_pages.push(PageRun { start: p, len: 1 }),
            }
        }
    }
    let m = Manifest {
        id: CheckpointId::new("test").unwrap(),
        created_unix_ms: 0,
        parent: None,
        page_size: 4096,
        regions: vec![Region {
            guest_phys_addr: 0,
            size: total * 4096,
        }],
        objects: vec!["segment".into()],
        blocks: entries,
        zero_pages,
        prefetch_order: order,
        state: StateBlob::new(Vec::new()),
    };
    m.validate().expect("test manifest is valid");
    Arc::new(m)
}

/// Eight blocks of four pages (pages 0..32), then 32 zero pages.
fn simple() -> Arc<Manifest> {
    let blocks: Vec<Vec<PageRun>> = (0..8)
        .map(|b| {
            vec![PageRun {
                start: b * 4,
                len: 4,
            }]
        })
        .collect();
    manifest(64, &blocks, (0..8).collect())
}

fn config(window: usize) -> Config {
    Config {
        prefetch_window: window,
        zero_window: 16,
        stream: None,
        zero_fill_ahead: false,
        install: InstallScope::Block,
    }
}

fn never(_: u32) -> bool {
    false
}

#[test]
fn demand_fault_fetches_its_block_then_prefetches_the_window() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), config(2), t0);
    let actions = r.fault(5, t0, &mut never).unwrap();
    assert_eq!(
        actions,
        vec![
            Action::Fetch {
                block: 1,
                priority: Priority::Demand,
                attempt: 0
            },
            Action::Fetch {
                block: 2,
                priority: Priority::Prefetch,
                attempt: 0
            },
            Action::Fetch {
                block: 3,
                priority: Priority::Prefetch,
                attempt: 0
            },
        ]
    );
    // The block arrives: all four pages installed, the waiter woken.
    let actions = r
        .block_ready(1, t0 + Duration::from_millis(1), None)
        .unwrap();
    let [Action::Install {
        block: 1,
        runs,
        waiters,
        origin: Origin::Fetched(Priority::Demand),
    }] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(
        runs,
        &vec![InstallRun {
            page: 4,
            len: 4,
            block_offset: 0
        }]
    );
    assert_eq!(waiters.len(), 1);
    assert_eq!(waiters[0].page, 5);
    assert_eq!(waiters[0].source, FaultSource::Demand);
    // A second delivery of the same block installs nothing.
    assert!(r.block_ready(1, t0, None).unwrap().is_empty());
}

#[test]
fn fault_on_a_prefetching_block_upgrades_it_to_demand() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), config(2), t0);
    r.fault(0, t0, &mut never).unwrap();
    assert_eq!(r.in_flight(1), Some(Priority::Prefetch));
    let actions = r.fault(6, t0, &mut never).unwrap();
    // Upgrade of block 1, then only block 3 is new in the window (2 is in flight).
    assert_eq!(
        actions,
        vec![
            Action::Upgrade {
                block: 1,
                priority: Priority::Demand
            },
            Action::Fetch {
                block: 3,
                priority: Priority::Prefetch,
                attempt: 0
            },
        ]
    );
    assert_eq!(r.in_flight(1), Some(Priority::Demand));
    let actions = r.block_ready(1, t0, None).unwrap();
    let [Action::Install { waiters, .. }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(waiters[0].source, FaultSource::Prefetch);
}

#[test]
fn cached_block_is_installed_without_a_fetch() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), config(1), t0);
    let mut cached = |b: u32| b == 3 || b == 4;
    let actions = r.fault(13, t0, &mut cached).unwrap();
    assert_eq!(actions.len(), 2);
    let Action::Install {
        block: 3,
        waiters,
        origin: Origin::Cache,
        ..
    } = &actions[0]
    else {
        panic!("{actions:?}")
    };
    assert_eq!(waiters[0].source, FaultSource::Cache);
    // The prefetch window's cached neighbour is installed too, no waiters.
    assert!(matches!(
        &actions[1],
        Action::Install { block: 4, waiters, origin: Origin::Cache, .. } if waiters.is_empty()
    ));
    // Its pages are present: a racing fault on them only wakes.
    let actions = r.fault(17, t0, &mut cached).unwrap();
    assert!(matches!(actions[0], Action::Wake { .. }), "{actions:?}");
    assert_eq!(r.stats().cache_installs, 2);
}

#[test]
fn zero_pages_are_filled_a_window_at_a_time() {
    let t0 = Instant::now();
    // Blocks at pages 0..4 and 20..24; everything else zero.
    let m = manifest(
        40,
        &[
            vec![PageRun { start: 0, len: 4 }],
            vec![PageRun { start: 20, len: 4 }],
        ],
        vec![0, 1],
    );
    let mut r = Restore::new(m, config(0), t0);
    let actions = r.fault(9, t0, &mut never).unwrap();
    // Window 16 pages aligned: 0..16 minus the block's pages 0..4.
    assert_eq!(
        actions,
        vec![Action::ZeroFill {
            runs: vec![PageRun { start: 4, len: 12 }],
            waiter: Waiter {
                page: 9,
                at: t0,
                source: FaultSource::Zero,
                block: None
            }
        }]
    );
    let actions = r.fault(17, t0, &mut never).unwrap();
    assert_eq!(
        actions,
        vec![Action::ZeroFill {
            runs: vec![PageRun { start: 16, len: 4 }, PageRun { start: 24, len: 8 }],
            waiter: Waiter {
                page: 17,
                at: t0,
                source: FaultSource::Zero,
                block: None
            }
        }]
    );
    // A fault on a zero page already filled only wakes.
    assert!(matches!(
        r.fault(10, t0, &mut never).unwrap()[..],
        [Action::Wake { .. }]
    ));
    // Past the end of memory (window clipped at 40 pages).
    let actions = r.fault(39, t0, &mut never).unwrap();
    assert!(
        matches!(&actions[0], Action::ZeroFill { runs, .. } if runs == &vec![PageRun { start: 32, len: 8 }])
    );
    assert_eq!(
        r.fault(40, t0, &mut never),
        Err(PolicyError::PageOutOfRange {
            page: 40,
            total: 40
        })
    );
}

#[test]
fn scattered_block_installs_in_block_order_offsets() {
    let t0 = Instant::now();
    // Block 0 holds pages 10, 11, 2, 3, 30 in that order.
    let m = manifest(
        32,
        &[vec![
            PageRun { start: 10, len: 2 },
            PageRun { start: 2, len: 2 },
            PageRun { start: 30, len: 1 },
        ]],
        vec![0],
    );
    let mut r = Restore::new(m, config(0), t0);
    r.fault(3, t0, &mut never).unwrap();
    let actions = r.block_ready(0, t0, None).unwrap();
    let [Action::Install { runs, .. }] = actions.as_slice() else {
        panic!()
    };
    assert_eq!(
        runs,
        &vec![
            InstallRun {
                page: 10,
                len: 2,
                block_offset: 0
            },
            InstallRun {
                page: 2,
                len: 2,
                block_offset: 2
            },
            InstallRun {
                page: 30,
                len: 1,
                block_offset: 4
            },
        ]
    );
}

#[test]
fn failed_fetch_is_retried_only_when_someone_waits() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), config(1), t0);
    r.fault(0, t0, &mut never).unwrap();
    // Block 0 has a waiter: retried at demand, attempt 1.
    assert_eq!(
        r.fetch_failed(0, t0).unwrap(),
        vec![Action::Fetch {
            block: 0,
            priority: Priority::Demand,
            attempt: 1
        }]
    );
    // Block 1 was only prefetched: dropped, back to absent.
    assert!(r.fetch_failed(1, t0).unwrap().is_empty());
    assert_eq!(r.in_flight(1), None);
    // A later fault fetches it again, as its second attempt.
    let actions = r.fault(4, t0, &mut never).unwrap();
    assert_eq!(
        actions[0],
        Action::Fetch {
            block: 1,
            priority: Priority::Demand,
            attempt: 1
        }
    );
    // Failures of blocks not in flight are ignored.
    assert!(r.fetch_failed(7, t0).unwrap().is_empty());
    assert_eq!(r.fetch_failed(99, t0), Err(PolicyError::NoSuchBlock(99)));
}

#[test]
fn streaming_follows_the_order_under_the_bandwidth_cap() {
    let t0 = Instant::now();
    let blocks: Vec<Vec<PageRun>> = (0..20)
        .map(|b| vec![PageRun { start: b, len: 1 }])
        .collect();
    let order: Vec<u32> = (0..20).rev().collect();
    let cfg = Config {
        prefetch_window: 0,
        zero_window: 16,
        // 10 blocks of 1000 bytes a second; 2 in flight at most.
        stream: Some(StreamConfig {
            bytes_per_sec: Some(10_000),
            max_in_flight: 2,
        }),
        zero_fill_ahead: false,
        install: InstallScope::Block,
    };
    let mut r = Restore::new(manifest(20, &blocks, order), cfg, t0);
    // The burst is one block (10 ms of rate is less than a block).
    let a = r.poll(t0, &mut never);
    assert_eq!(
        a,
        vec![Action::Fetch {
            block: 19,
            priority: Priority::Stream,
            attempt: 0
        }]
    );
    assert_eq!(r.next_poll(t0), Some(t0 + Duration::from_millis(100)));
    assert!(r
        .poll(t0 + Duration::from_millis(99), &mut never)
        .is_empty());
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(r.poll(t1, &mut never).len(), 1);
    // Two in flight: streaming waits for one to finish whatever the tokens.
    let t2 = t0 + Duration::from_secs(5);
    assert!(r.poll(t2, &mut never).is_empty());
    assert_eq!(r.next_poll(t2), None);
    r.block_ready(19, t2, None).unwrap();
    assert_eq!(r.poll(t2, &mut never).len(), 1);
    // A fault on a streaming block raises it to demand.
    let actions = r.fault(17, t2, &mut never).unwrap();
    assert_eq!(
        actions,
        vec![Action::Upgrade {
            block: 17,
            priority: Priority::Demand
        }]
    );
    // That freed a streaming slot; a cached block streams as an install.
    let t3 = t2 + Duration::from_secs(1);
    let a = r.poll(t3, &mut |b| b == 16);
    assert!(matches!(
        a[0],
        Action::Install {
            block: 16,
            origin: Origin::Cache,
            ..
        }
    ));
    assert!(matches!(
        a[1],
        Action::Fetch {
            block: 15,
            priority: Priority::Stream,
            ..
        }
    ));
}

#[test]
fn profiling_defaults_change_nothing_else() {
    // The tuned defaults install whole blocks; profiling is its own policy.
    assert_eq!(Config::default().install, InstallScope::Block);
    let p = Config::profiling();
    assert_eq!(
        (
            p.prefetch_window,
            p.zero_window,
            p.stream,
            p.zero_fill_ahead
        ),
        (0, 1, None, false)
    );
    assert_eq!(p.install, InstallScope::Page);
}

#[test]
fn profiling_installs_the_faulting_page_and_serves_the_block_s_others_from_the_cache() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), Config::profiling(), t0);
    // Block 1 holds pages 4..8. One fetch, nothing prefetched.
    assert_eq!(
        r.fault(5, t0, &mut never).unwrap(),
        vec![Action::Fetch {
            block: 1,
            priority: Priority::Demand,
            attempt: 0
        }]
    );
    // The block arrives: only page 5 (its second page) is installed.
    let actions = r.block_ready(1, t0, None).unwrap();
    let [Action::Install {
        block: 1,
        runs,
        waiters,
        origin: Origin::Fetched(Priority::Demand),
    }] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(
        runs,
        &vec![InstallRun {
            page: 5,
            len: 1,
            block_offset: 1
        }]
    );
    assert_eq!(waiters[0].page, 5);
    assert!(r.is_present(5));
    assert!(!r.is_present(4) && !r.is_present(6) && !r.is_present(7));
    assert_eq!(r.installed_blocks(), 0, "delivered, not installed");
    assert_eq!(r.in_flight(1), None);

    // The block's next page faults too and is served from the host cache,
    // without a second fetch.
    let in_cache = |b: u32| b == 1;
    let actions = r.fault(7, t0, &mut { in_cache }).unwrap();
    assert_eq!(
        actions,
        vec![Action::Install {
            block: 1,
            runs: vec![InstallRun {
                page: 7,
                len: 1,
                block_offset: 3
            }],
            waiters: vec![Waiter {
                page: 7,
                at: t0,
                source: FaultSource::Cache,
                block: Some(1)
            }],
            origin: Origin::Cache,
        }]
    );
    r.fault(4, t0, &mut { in_cache }).unwrap();
    assert_eq!(r.installed_blocks(), 0);
    r.fault(6, t0, &mut { in_cache }).unwrap();
    assert_eq!(r.installed_blocks(), 1, "every page present: installed");
    // A racing second fault on a present page only wakes.
    assert!(matches!(
        r.fault(6, t0, &mut { in_cache }).unwrap()[..],
        [Action::Wake { .. }]
    ));
    let stats = r.stats();
    assert_eq!(stats.fetches, 1, "one fetch for the whole block");
    assert_eq!(stats.cache_installs, 3);
    assert_eq!(
        stats.faults_by_source,
        [3, 1, 1, 0],
        "cache, prefetch (the racing wake), demand, zero"
    );
}

#[test]
fn profiling_fetches_a_delivered_block_again_only_when_the_cache_dropped_it() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), Config::profiling(), t0);
    r.fault(0, t0, &mut never).unwrap();
    r.block_ready(0, t0, None).unwrap();
    // Evicted from the host cache: the next page's fault fetches the block
    // again, at demand priority, and installs only that page.
    let actions = r.fault(2, t0, &mut never).unwrap();
    assert_eq!(
        actions,
        vec![Action::Fetch {
            block: 0,
            priority: Priority::Demand,
            attempt: 0
        }]
    );
    let actions = r.block_ready(0, t0, None).unwrap();
    assert!(
        matches!(&actions[..], [Action::Install { runs, waiters, .. }]
            if runs == &vec![InstallRun { page: 2, len: 1, block_offset: 2 }]
                && waiters.len() == 1 && waiters[0].source == FaultSource::Demand),
        "{actions:?}"
    );
    assert!(!r.is_present(1) && !r.is_present(3));
}

#[test]
fn profiling_faults_on_every_zero_page() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), Config::profiling(), t0);
    assert_eq!(r.next_poll(t0), None, "nothing ahead of faults");
    assert!(r.poll(t0, &mut never).is_empty());
    // Pages 32..64 are zero: one page per fault.
    for page in [40, 41, 33] {
        let actions = r.fault(page, t0, &mut never).unwrap();
        assert!(
            matches!(&actions[..], [Action::ZeroFill { runs, .. }]
                if runs == &vec![PageRun { start: page, len: 1 }]),
            "{actions:?}"
        );
    }
}

#[test]
fn page_scope_with_streaming_fills_the_cache_and_installs_nothing_ahead() {
    let t0 = Instant::now();
    let cfg = Config {
        stream: Some(StreamConfig {
            bytes_per_sec: None,
            max_in_flight: 8,
        }),
        ..Config::profiling()
    };
    let mut r = Restore::new(simple(), cfg, t0);
    let mut streamed = 0;
    while !r.all_requested() {
        for a in r.poll(t0, &mut never) {
            let Action::Fetch { block, .. } = a else {
                panic!("{a:?}")
            };
            streamed += 1;
            assert!(r.block_ready(block, t0, None).unwrap().is_empty());
        }
    }
    assert_eq!(streamed, 8, "delivered blocks are not streamed again");
    assert!(r.poll(t0, &mut never).is_empty());
    assert!((0..32).all(|p| !r.is_present(p)));
    let actions = r.fault(9, t0, &mut |_| true).unwrap();
    assert!(
        matches!(&actions[..], [Action::Install { origin: Origin::Cache, runs, .. }] if runs.len() == 1 && runs[0].len == 1),
        "{actions:?}"
    );
}

// ---- Property tests: a model driver over random events. ----

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
                            assert!(self.installed_pages.insert(p), "zero page {p} twice");
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
                Action::Wake { waiter } => self.woken.push(waiter.page),
            }
        }
    }
}

#[test]
fn zero_pages_are_installed_ahead_once_and_then_only_woken() {
    let t0 = Instant::now();
    // 40 pages: blocks hold 0..4 and 20..24, the rest is zero.
    let m = manifest(
        40,
        &[
            vec![PageRun { start: 0, len: 4 }],
            vec![PageRun { start: 20, len: 4 }],
        ],
        vec![0, 1],
    );
    let cfg = Config {
        zero_fill_ahead: true,
        ..config(0)
    };
    let mut r = Restore::new(m, cfg, t0);
    // A fault on a zero page first: its window is installed at once.
    let a = r.fault(9, t0, &mut never).unwrap();
    assert!(
        matches!(&a[0], Action::ZeroFill { runs, .. } if runs == &vec![PageRun { start: 4, len: 12 }])
    );
    assert_eq!(r.next_poll(t0), Some(t0));
    let a = r.poll(t0, &mut never);
    assert_eq!(
        a,
        vec![Action::ZeroFillAhead {
            runs: vec![
                PageRun { start: 16, len: 4 },
                PageRun { start: 24, len: 16 }
            ]
        }]
    );
    assert_eq!(r.next_poll(t0), None, "nothing left: no stream, zeros done");
    assert!(r.poll(t0, &mut never).is_empty());
    let a = r.fault(30, t0, &mut never).unwrap();
    assert!(matches!(&a[0], Action::Wake { .. }), "{a:?}");
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
                        r.fetch_failed(block, now).unwrap()
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
                            Action::Wake { .. } => {}
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
                        let a = r.fetch_failed(block, now).unwrap();
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
