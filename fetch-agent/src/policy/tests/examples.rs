//! Worked examples: one scenario each, exact actions expected.

use std::time::{Duration, Instant};

use thaw_format::PageRun;

use super::*;

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
    assert!(matches!(actions[0], Action::Joined { .. }), "{actions:?}");
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
        [Action::Joined { .. }]
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
fn scattered_block_installs_the_faulting_run_first_then_block_order() {
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
                page: 2,
                len: 2,
                block_offset: 2
            },
            InstallRun {
                page: 10,
                len: 2,
                block_offset: 0
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
fn a_block_failing_every_attempt_while_a_fault_waits_is_failed() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), config(0), t0);
    r.fault(0, t0, &mut never).unwrap();
    for attempt in 1..MAX_FETCH_ATTEMPTS {
        assert_eq!(
            r.fetch_failed(0, t0).unwrap(),
            vec![Action::Fetch {
                block: 0,
                priority: Priority::Demand,
                attempt
            }]
        );
    }
    assert_eq!(
        r.fetch_failed(0, t0),
        Err(PolicyError::BlockFailed {
            block: 0,
            attempts: MAX_FETCH_ATTEMPTS
        })
    );
    // Failed: nothing retries it, nothing is installed.
    assert_eq!(r.in_flight(0), None);
    assert!(r.poll(t0, &mut never).iter().all(|a| !matches!(
        a,
        Action::Fetch { block: 0, .. } | Action::Install { block: 0, .. }
    )));
}

#[test]
fn failures_without_waiters_count_towards_the_limit() {
    let t0 = Instant::now();
    let mut r = Restore::new(simple(), config(1), t0);
    // Block 1 is prefetched after block 0's fault and fails with nobody
    // waiting, MAX - 1 times over as many faults on block 0's pages.
    for _ in 1..MAX_FETCH_ATTEMPTS {
        r.fault(0, t0, &mut never).unwrap();
        assert!(r.fetch_failed(1, t0).unwrap().is_empty());
        assert_eq!(r.in_flight(1), None);
    }
    // A fault on it starts its last attempt, whose failure fails it.
    let actions = r.fault(4, t0, &mut never).unwrap();
    assert_eq!(
        actions[0],
        Action::Fetch {
            block: 1,
            priority: Priority::Demand,
            attempt: MAX_FETCH_ATTEMPTS - 1
        }
    );
    assert_eq!(
        r.fetch_failed(1, t0),
        Err(PolicyError::BlockFailed {
            block: 1,
            attempts: MAX_FETCH_ATTEMPTS
        })
    );
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
        [Action::Joined { .. }]
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
    assert!(matches!(&a[0], Action::Joined { .. }), "{a:?}");
}

#[test]
fn batched_streaming_starts_fetches_a_batch_at_a_time() {
    let t0 = Instant::now();
    let blocks: Vec<Vec<PageRun>> = (0..40)
        .map(|b| vec![PageRun { start: b, len: 1 }])
        .collect();
    let cfg = Config {
        prefetch_window: 0,
        zero_window: 16,
        stream: Some(StreamConfig {
            bytes_per_sec: None,
            max_in_flight: 16,
        }),
        zero_fill_ahead: false,
        install: InstallScope::Block,
    };
    let fetched = |actions: &[Action]| -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Fetch { block, .. } => Some(*block),
                _ => None,
            })
            .collect()
    };
    let mut r = Restore::new(manifest(40, &blocks, (0..40).collect()), cfg, t0);
    r.set_stream_batch(4);
    // The window starts with 4 requests of 4 blocks: 16 blocks (the ceiling).
    assert_eq!(
        fetched(&r.poll(t0, &mut never)),
        (0..16).collect::<Vec<_>>()
    );
    // Three blocks back: no room for a batch of four yet.
    for b in 0..3 {
        r.block_ready(b, t0, Some(Duration::from_millis(20)))
            .unwrap();
    }
    assert!(fetched(&r.poll(t0, &mut never)).is_empty());
    assert_eq!(r.next_poll(t0), None);
    // The fourth makes room: the next four, in order.
    r.block_ready(3, t0, Some(Duration::from_millis(20)))
        .unwrap();
    assert_eq!(fetched(&r.poll(t0, &mut never)), vec![16, 17, 18, 19]);
}
