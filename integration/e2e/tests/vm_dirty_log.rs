//! Dirty logging before a checkpoint, end to end through `thaw vm checkpoint`: the test guest
//! writes a hot set per vCPU, KVM's dirty log sees it, the checkpoint stores the log and is laid
//! out by it (the hot sets in the first blocks, where physical order would put everything the
//! guest ever wrote between them), and a fresh process restores it to the exact checksum.
//!
//! Calibrated for this machine's software KVM, where a port-I/O exit costs tens of microseconds:
//! see [`params`].

mod bins;

use std::collections::HashSet;
use thaw_format::{layout_from_dirty_windows, CheckpointId};
use thaw_store::dirty_log::load_dirty_log;
use thaw_store::CheckpointReader;
use vmm::boot::testguest::{self, Params, Pattern};

const MEMORY: u64 = 16 << 20;
const VCPUS: u32 = 2;
const PAGE: u64 = 4096;

/// The hot-set guest, slowed by a port-I/O report every 8 touches so that its rarely touched
/// pages are not all written in every window, as they are at native speed (about 45 million
/// touches a second); its hot set is still written many times per window.
fn params() -> Params {
    Params {
        pattern: Pattern::HotSet,
        touches_per_cpu: 150_000,
        report_every: 8,
        seed: 5,
        hot_percent: 10,
    }
}

fn guest_args() -> Vec<String> {
    let p = params();
    vec![
        format!("--memory={MEMORY}"),
        format!("--vcpus={VCPUS}"),
        "--pattern=hot-set".into(),
        format!("--touches={}", p.touches_per_cpu),
        format!("--report-every={}", p.report_every),
        format!("--seed={}", p.seed),
        format!("--hot-percent={}", p.hot_percent),
    ]
}

/// Page indices of the vCPUs' hot sets (the first hot_percent of each vCPU's slice).
fn hot_pages() -> HashSet<u64> {
    let slice_pages = ((testguest::area_size_for(MEMORY) / VCPUS as u64) & !0xfff) / PAGE;
    let hot = slice_pages * params().hot_percent / 100;
    (0..VCPUS as u64)
        .flat_map(|cpu| {
            let first = testguest::AREA_START / PAGE + cpu * slice_pages;
            first..first + hot
        })
        .collect()
}

/// Stored pages in block order (zero pages are not stored).
fn block_order(reader: &CheckpointReader) -> Vec<u64> {
    reader
        .manifest()
        .blocks
        .iter()
        .flat_map(|b| b.pages.iter().flat_map(|r| r.start..r.end()))
        .collect()
}

/// How many pages from the front of `order` it takes to hold 90% of the hot pages.
fn prefix_holding_most_of(order: &[u64], hot: &HashSet<u64>) -> usize {
    let want = hot.len() * 9 / 10;
    let mut seen = 0;
    for (i, p) in order.iter().enumerate() {
        seen += usize::from(hot.contains(p));
        if seen >= want {
            return i + 1;
        }
    }
    usize::MAX
}

#[test]
fn a_checkpoint_after_dirty_logging_puts_the_hot_sets_first_and_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("store").to_str().unwrap().to_string();
    let rt = vmm::persist::checkpoint::runtime().unwrap();
    let store = vmm::persist::checkpoint::open_store(&spec).unwrap();
    let hot = hot_pages();

    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={spec}"),
        "--at=600ms".into(),
        "--dirty-windows=4".into(),
        "--dirty-window=100ms".into(),
    ];
    args.extend(guest_args());
    let lines = bins::thaw_vm(&args);
    let outcome = &bins::event(&lines, "checkpoint")["checkpoint"];
    let id = CheckpointId::new(outcome["id"].as_str().unwrap()).unwrap();
    let stats = &outcome["dirty"];
    let per_window: Vec<u64> = stats["pages_per_window"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(!per_window.is_empty() && per_window.len() <= 4, "{stats}");
    assert!(
        stats["harvests"].as_u64().unwrap() >= per_window.len() as u64,
        "{stats}"
    );

    // The log is stored with the checkpoint and its newest window holds the hot sets.
    let log = rt
        .block_on(load_dirty_log(&store, &id))
        .unwrap()
        .expect("a dirty log beside the checkpoint");
    assert_eq!(log.total_pages, MEMORY / PAGE);
    let counts: Vec<u64> = log.windows.iter().map(|w| w.page_count()).collect();
    assert_eq!(counts, per_window);
    assert_eq!(log.windows.last().unwrap().ended_us_before, 0);
    let newest: Vec<u64> = log.windows.last().unwrap().pages().collect();
    let hot_seen = newest.iter().filter(|p| hot.contains(p)).count();
    assert!(
        hot_seen * 10 >= hot.len() * 9,
        "newest window holds {hot_seen} of {} hot pages",
        hot.len()
    );

    // The checkpoint is laid out by the log: stored pages follow the log's order, then the rest
    // in physical order.
    let reader = rt
        .block_on(CheckpointReader::open(&store, &id, &bins::trust()))
        .unwrap();
    let order = block_order(&reader);
    let zero: HashSet<u64> = reader
        .manifest()
        .zero_pages
        .iter()
        .flat_map(|r| r.start..r.end())
        .collect();
    let expected: Vec<u64> = layout_from_dirty_windows(&log.page_lists())
        .into_iter()
        .filter(|p| !zero.contains(p))
        .collect();
    assert_eq!(&order[..expected.len()], &expected[..]);
    // So the hot sets come early: physical order of the same pages puts everything the guest
    // wrote since boot in the first slice before the second hot set.
    let mut physical = order.clone();
    physical.sort_unstable();
    let by_log = prefix_holding_most_of(&order, &hot);
    let by_address = prefix_holding_most_of(&physical, &hot);
    eprintln!(
        "pages per window {per_window:?}, 90% of {} hot pages within the first {by_log} stored \
         pages (physical order: {by_address})",
        hot.len()
    );
    assert!(
        by_log * 4 <= by_address * 3,
        "laid out by the log, 90% of the hot pages take {by_log} pages; in physical order {by_address}"
    );

    // A fresh process restores it to the checksums of an uninterrupted run.
    let lines = bins::thaw_vm(&[
        "restore".to_string(),
        format!("--store={spec}"),
        format!("--id={id}"),
    ]);
    let got: Vec<u64> = bins::event(&lines, "done")["checksums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let area = testguest::area_size_for(MEMORY);
    let want: Vec<u64> = (0..VCPUS)
        .map(|cpu| testguest::model_checksum(&params(), area, VCPUS, cpu))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn without_dirty_logging_there_is_no_log_and_memory_stays_in_physical_order() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("store").to_str().unwrap().to_string();
    let rt = vmm::persist::checkpoint::runtime().unwrap();
    let store = vmm::persist::checkpoint::open_store(&spec).unwrap();
    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={spec}"),
        "--at=300ms".into(),
        "--dirty-windows=0".into(),
    ];
    args.extend(guest_args());
    let lines = bins::thaw_vm(&args);
    let outcome = &bins::event(&lines, "checkpoint")["checkpoint"];
    assert!(outcome["dirty"].is_null(), "{outcome}");
    let id = CheckpointId::new(outcome["id"].as_str().unwrap()).unwrap();
    assert_eq!(rt.block_on(load_dirty_log(&store, &id)).unwrap(), None);
    let reader = rt
        .block_on(CheckpointReader::open(&store, &id, &bins::trust()))
        .unwrap();
    let order = block_order(&reader);
    assert!(order.windows(2).all(|w| w[0] < w[1]));
}
