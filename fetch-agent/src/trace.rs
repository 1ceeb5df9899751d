//! A restore's fault trace in the workload trace format (docs/format.md): one line
//! per first touch of a page, sorted by time, `<t_us> <page_index>`, then the
//! agent's extra columns `<block> <source> <stall_us>` (`-` as block for
//! zero pages; source one of cache, prefetch, demand, zero; stall_us how long
//! the fault waited for its page); `#` starts a comment.
//!
//! `t_us` counts guest progress: time since the hand-off minus the time the
//! guest spent waiting for the agent (the sum of earlier faults' service
//! times), so a trace recorded during a slow restore still describes the
//! workload. With several vCPUs faulting at once this over-subtracts; the
//! order of pages, what profiling uses, stays right: records are ordered by
//! when their fault was read, not by when they were recorded (a fault served
//! from the cache on the fault thread can be recorded before an earlier one
//! whose fetch completes on another thread), and `t_us` never goes back (a
//! service time is measured a little after the wake-up, so the guest may
//! already fault again within it).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::policy::FaultSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRecord {
    pub t_us: u64,
    pub page: u64,
    pub block: Option<u32>,
    pub source: FaultSource,
    /// How long the fault waited, in µs.
    pub stall_us: u64,
}

/// Collects a restore's faults; written out when the restore ends.
#[derive(Debug)]
pub struct TraceRecorder {
    start: Instant,
    faults: Vec<Served>,
}

/// A fault as recorded: read at `at`, served `latency` later.
#[derive(Debug, Clone, Copy)]
struct Served {
    at: Instant,
    latency: Duration,
    page: u64,
    block: Option<u32>,
    source: FaultSource,
}

impl TraceRecorder {
    pub fn new(start: Instant) -> Self {
        TraceRecorder {
            start,
            faults: Vec::new(),
        }
    }

    /// A fault read at `at`, served `latency` later.
    pub fn record(
        &mut self,
        at: Instant,
        latency: Duration,
        page: u64,
        block: Option<u32>,
        source: FaultSource,
    ) {
        self.faults.push(Served {
            at,
            latency,
            page,
            block,
            source,
        });
    }

    pub fn len(&self) -> usize {
        self.faults.len()
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// The records in the order their faults were read, each page once (its
    /// first fault), with guest progress that never goes back.
    pub fn finish(&self) -> Vec<TraceRecord> {
        let mut faults = self.faults.clone();
        faults.sort_by_key(|f| f.at);
        let mut stalled = Duration::ZERO;
        let mut last = Duration::ZERO;
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(faults.len());
        for f in faults {
            let progress =
                f.at.saturating_duration_since(self.start)
                    .saturating_sub(stalled)
                    .max(last);
            stalled += f.latency;
            last = progress;
            if seen.insert(f.page) {
                out.push(TraceRecord {
                    t_us: progress.as_micros() as u64,
                    page: f.page,
                    block: f.block,
                    source: f.source,
                    stall_us: f.latency.as_micros() as u64,
                });
            }
        }
        out
    }

    /// Writes the trace file with a comment header naming `description`.
    pub fn write(&self, path: &Path, description: &str) -> std::io::Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(w, "# thaw fetch-agent fault trace: {description}")?;
        writeln!(w, "# t_us page_index block source stall_us")?;
        for r in self.finish() {
            let (t, p, s, stall) = (r.t_us, r.page, r.source.as_str(), r.stall_us);
            match r.block {
                Some(b) => writeln!(w, "{t} {p} {b} {s} {stall}")?,
                None => writeln!(w, "{t} {p} - {s} {stall}")?,
            }
        }
        w.flush()
    }
}

/// Parses a trace's first two columns (the part every reader needs).
pub fn parse_pages(text: &str) -> Result<Vec<(u64, u64)>, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut cols = l.split_whitespace();
            let t = cols.next().and_then(|c| c.parse().ok());
            let p = cols.next().and_then(|c| c.parse().ok());
            t.zip(p).ok_or_else(|| format!("bad trace line {l:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_excludes_waiting_and_pages_appear_once_in_order() {
        let t0 = Instant::now();
        let mut r = TraceRecorder::new(t0);
        let ms = Duration::from_millis;
        // Fault at 10 ms, served in 5 ms.
        r.record(t0 + ms(10), ms(5), 7, Some(1), FaultSource::Demand);
        // Next fault at 20 ms wall clock: 15 ms of guest progress.
        r.record(t0 + ms(20), ms(1), 3, None, FaultSource::Zero);
        // A racing second fault on page 7.
        r.record(t0 + ms(21), ms(0), 7, Some(1), FaultSource::Prefetch);
        let recs = r.finish();
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].t_us, recs[0].page), (10_000, 7));
        assert_eq!((recs[1].t_us, recs[1].page), (15_000, 3));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.trace");
        r.write(&path, "test").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# thaw fetch-agent fault trace: test\n"));
        assert!(
            text.contains("\n10000 7 1 demand 5000\n15000 3 - zero 1000\n"),
            "{text}"
        );
        assert_eq!(parse_pages(&text).unwrap(), vec![(10_000, 7), (15_000, 3)]);
        assert!(parse_pages("1 x").is_err());
    }

    #[test]
    fn order_is_the_order_faults_were_read_whoever_records_first() {
        let t0 = Instant::now();
        let mut r = TraceRecorder::new(t0);
        let us = Duration::from_micros;
        // A demand fault read at 100 us, woken at 400 us, but its service
        // time measured at 420 us by the thread that fetched it, after the
        // fault thread already read (405 us) and served the next fault from
        // the cache and recorded it.
        r.record(t0 + us(405), us(10), 9, Some(2), FaultSource::Cache);
        r.record(t0 + us(100), us(320), 8, Some(2), FaultSource::Demand);
        r.record(t0 + us(500), us(10), 10, Some(2), FaultSource::Cache);
        let recs = r.finish();
        let pages: Vec<u64> = recs.iter().map(|r| r.page).collect();
        assert_eq!(pages, vec![8, 9, 10]);
        let t: Vec<u64> = recs.iter().map(|r| r.t_us).collect();
        // 405 - 320 would be 85 < 100: held at 100. Then 500 - 330 = 170.
        assert_eq!(t, vec![100, 100, 170]);
    }
}
