//! A profiling restore (`thaw agent --profile`) records every first touch:
//! pages touched in a scattered order through a real userfaultfd hand-off
//! appear in the fault trace exactly, in touch order, while each touched
//! block is fetched once. A default restore's trace, for contrast, lists
//! only the pages that happened to fault.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{checkpoint, start_agent, wait_until, Fixture, Running};
use fetch_agent::guest::MappedGuest;
use fetch_agent::metrics::Counters;
use fetch_agent::policy::{Config, FaultSource};
use thaw_format::page_map::PageSource;
use thaw_format::PageMap;
use thaw_store::{CheckpointReader, Store};

const PAGES: usize = 1024;

/// A scattered touch order: 400 distinct pages (389 is prime to 1024, so
/// `i * 389 mod 1024` never repeats), with an earlier page touched again
/// every 25 touches (present by then: no fault, no trace line).
fn touch_order() -> Vec<u64> {
    let mut order = Vec::new();
    for i in 0..400u64 {
        order.push((i * 389 + 7) % PAGES as u64);
        if i % 25 == 24 {
            order.push(order[(i / 2) as usize]);
        }
    }
    order
}

/// Each page once, at its first touch.
fn first_touches(order: &[u64]) -> Vec<u64> {
    let mut seen = HashSet::new();
    order.iter().copied().filter(|p| seen.insert(*p)).collect()
}

fn page_map(fx: &Fixture) -> PageMap {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&fx.store_spec).unwrap();
    let reader = rt
        .block_on(CheckpointReader::open(&store, &fx.id, &common::trust()))
        .unwrap();
    PageMap::new(reader.manifest())
}

/// Hands a fresh mapping to the agent, touches `order` (checking each
/// touched page's first byte), and returns the guest with its connection.
fn restore_and_touch(fx: &Fixture, order: &[u64]) -> (MappedGuest, std::os::unix::net::UnixStream) {
    let guest = MappedGuest::new(fx.memory.len()).unwrap();
    let msg = guest
        .handoff(Some(&fx.store_spec), Some(fx.id.as_str()))
        .encode();
    let conn = guest.hand_off(&fx.socket(), &msg).unwrap();
    for &page in order {
        assert_eq!(
            guest.touch(page),
            fx.memory[page as usize * 4096],
            "page {page}"
        );
    }
    (guest, conn)
}

/// Closes the VMM's side and returns the restore's trace lines as
/// `(page, source)`.
fn end_and_read_trace(
    running: &Running,
    conn: std::os::unix::net::UnixStream,
    traces: &Path,
) -> Vec<(u64, String)> {
    drop(conn);
    let m = running.agent.metrics();
    assert!(wait_until(Duration::from_secs(5), || m
        .restores_active
        .load(Ordering::SeqCst)
        == 0));
    let files: Vec<PathBuf> = std::fs::read_dir(traces)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let timed = fetch_agent::trace::parse_pages(&text).unwrap();
    assert!(timed.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by time");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 5, "{l}");
            let _stall_us: u64 = cols[4].parse().expect("a stall in µs");
            (cols[1].parse().unwrap(), cols[3].to_owned())
        })
        .collect()
}

fn trace_dir(fx: &Fixture) -> PathBuf {
    let dir = fx.dir.path().join("traces");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn quantiles(c: &Counters, source: FaultSource) -> String {
    let h = c.latency_of(source);
    let q = |x| h.quantile_us(x).map_or("-".into(), |v| format!("{v:.0}"));
    format!(
        "{} faults, p50 <= {} us, p99 <= {} us",
        h.count(),
        q(0.5),
        q(0.99)
    )
}

#[test]
fn a_profiling_restore_traces_every_first_touch_in_order_with_one_fetch_per_block() {
    let fx = checkpoint(PAGES);
    let traces = trace_dir(&fx);
    let running = start_agent(&fx, Config::profiling(), Vec::new(), Some(traces.clone()));
    let map = page_map(&fx);
    let order = touch_order();
    let firsts = first_touches(&order);
    let block_of = |p: u64| match map.source(p) {
        Some(PageSource::Block(b)) => Some(b),
        _ => None,
    };
    let blocks: HashSet<u32> = firsts.iter().filter_map(|&p| block_of(p)).collect();
    let zero_pages = firsts.iter().filter(|&&p| block_of(p).is_none()).count() as u64;
    assert!(zero_pages > 0 && blocks.len() < firsts.len() - zero_pages as usize);

    let (guest, conn) = restore_and_touch(&fx, &order);
    let c = &running.agent.metrics().counters;
    // One fetch per touched block, every other touched page of it from the
    // host cache. (Counts follow the wake-up: give the last one a moment.)
    let data_pages = firsts.len() as u64 - zero_pages;
    assert!(
        wait_until(Duration::from_secs(5), || c.total_faults()
            == firsts.len() as u64),
        "{} faults for {} first touches",
        c.total_faults(),
        firsts.len()
    );
    assert_eq!(c.fetched_blocks(), blocks.len() as u64);
    assert_eq!(c.faults_of(FaultSource::Demand), blocks.len() as u64);
    assert_eq!(
        c.faults_of(FaultSource::Cache),
        data_pages - blocks.len() as u64
    );
    assert_eq!(c.faults_of(FaultSource::Zero), zero_pages);
    assert_eq!(c.faults_of(FaultSource::Prefetch), 0);
    assert_eq!(
        c.cache_bytes.load(Ordering::SeqCst),
        4096 * c.cache_blocks.load(Ordering::SeqCst)
    );
    eprintln!(
        "profiling restore, {} first touches over {} blocks: cache-served pages {}; \
         demand (block fetched from the local store) {}; zero {}",
        firsts.len(),
        blocks.len(),
        quantiles(c, FaultSource::Cache),
        quantiles(c, FaultSource::Demand),
        quantiles(c, FaultSource::Zero),
    );

    // Then the untouched pages, in address order, and all of memory
    // matches the checkpoint.
    let rest: Vec<u64> = (0..PAGES as u64).filter(|p| !firsts.contains(p)).collect();
    for &page in &rest {
        guest.touch(page);
    }
    assert!(guest.bytes() == fx.memory, "restored memory differs");
    assert_eq!(c.fetched_blocks() as usize, fx.blocks, "each block once");

    let trace = end_and_read_trace(&running, conn, &traces);
    let pages: Vec<u64> = trace.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        &pages[..firsts.len()],
        &firsts[..],
        "exactly the first touches, in touch order"
    );
    assert_eq!(
        &pages[firsts.len()..],
        &rest[..],
        "then the rest, each once"
    );
    // The source column: the first touch of a block is its fetch, the
    // block's other pages come from the cache.
    let mut fetched: HashSet<u32> = HashSet::new();
    for (page, source) in &trace {
        let expected = match block_of(*page) {
            None => "zero",
            Some(b) if fetched.insert(b) => "demand",
            Some(_) => "cache",
        };
        assert_eq!(source, expected, "page {page}");
    }
}

#[test]
fn a_default_restore_traces_only_a_subset_of_the_touches() {
    let fx = checkpoint(PAGES);
    let traces = trace_dir(&fx);
    let running = start_agent(&fx, Config::default(), Vec::new(), Some(traces.clone()));
    let order = touch_order();
    let firsts = first_touches(&order);
    let (guest, conn) = restore_and_touch(&fx, &order);
    assert!(guest.bytes() == fx.memory, "restored memory differs");
    let c = &running.agent.metrics().counters;
    let trace = end_and_read_trace(&running, conn, &traces);
    // Whole blocks, prefetch, streaming and zero pages ahead: most first
    // touches find their page present and never fault. (Touched pages share
    // blocks, and a block's pages arrive together, so this holds however
    // the race with streaming goes.)
    let touched: HashSet<u64> = firsts.iter().copied().collect();
    let traced: Vec<u64> = trace
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| touched.contains(p))
        .collect();
    assert!(
        traced.len() < firsts.len(),
        "{} of {} first touches traced",
        traced.len(),
        firsts.len()
    );
    // What it does list keeps the touch order: a subsequence.
    let mut rest = firsts.iter();
    assert!(
        traced.iter().all(|p| rest.any(|f| f == p)),
        "traced pages out of touch order"
    );
    eprintln!(
        "default restore: {} of {} first touches in the trace ({} lines, {} faults, {} blocks fetched)",
        traced.len(),
        firsts.len(),
        trace.len(),
        c.total_faults(),
        c.fetched_blocks()
    );
}
