//! The agent's counters and the fault service latency histogram (fault read
//! to wake), rendered in the Prometheus text format (the histogram and the
//! HTTP endpoint are shared with the block server: [`thaw_store::prometheus`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use thaw_store::prometheus::Histogram;

use crate::cache::BlockCache;
use crate::policy::{FaultSource, Priority};

/// Where a fetched block's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    BlockServer = 0,
    ObjectStore = 1,
}

impl SourceKind {
    pub const ALL: [SourceKind; 2] = [SourceKind::BlockServer, SourceKind::ObjectStore];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::BlockServer => "block_server",
            SourceKind::ObjectStore => "object_store",
        }
    }
}

const PRIORITIES: [Priority; 3] = [Priority::Demand, Priority::Prefetch, Priority::Stream];

/// Counters of one restore or of the whole agent.
#[derive(Debug, Default)]
pub struct Counters {
    pub faults: [AtomicU64; 4],
    /// Blocks and stored bytes fetched, by source kind and priority.
    pub blocks: [[AtomicU64; 3]; 2],
    pub bytes: [[AtomicU64; 3]; 2],
    /// Installs straight from the host cache (a block's missing pages, or in
    /// a profiling restore the faulting page), and the bytes they copied.
    pub cache_blocks: AtomicU64,
    pub cache_bytes: AtomicU64,
    /// Fetches that failed on one source (error, timeout) and moved on.
    pub source_errors: AtomicU64,
    /// Blocks whose bytes did not match the manifest's hash.
    pub bad_blocks: AtomicU64,
    pub latency: Histogram,
    /// The same latencies split by where the page came from (in
    /// [`FaultSource::ALL`] order): a cache-served page and a network fetch
    /// differ by orders of magnitude.
    pub latency_by_source: [Histogram; 4],
}

fn priority_index(p: Priority) -> usize {
    PRIORITIES.iter().position(|x| *x == p).expect("listed")
}

impl Counters {
    pub fn fault(&self, source: FaultSource, latency: Duration) {
        let i = FaultSource::ALL
            .iter()
            .position(|s| *s == source)
            .expect("listed");
        self.faults[i].fetch_add(1, Ordering::Relaxed);
        self.latency.record(latency);
        self.latency_by_source[i].record(latency);
    }

    /// Latencies of the faults served from `source`.
    pub fn latency_of(&self, source: FaultSource) -> &Histogram {
        let i = FaultSource::ALL
            .iter()
            .position(|s| *s == source)
            .expect("listed");
        &self.latency_by_source[i]
    }

    pub fn fetched(&self, kind: SourceKind, priority: Priority, stored_bytes: u64) {
        let p = priority_index(priority);
        self.blocks[kind as usize][p].fetch_add(1, Ordering::Relaxed);
        self.bytes[kind as usize][p].fetch_add(stored_bytes, Ordering::Relaxed);
    }

    pub fn count_source_error(&self) {
        self.source_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_bad_block(&self) {
        self.bad_blocks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache_install(&self, copied_bytes: u64) {
        self.cache_blocks.fetch_add(1, Ordering::Relaxed);
        self.cache_bytes.fetch_add(copied_bytes, Ordering::Relaxed);
    }

    pub fn faults_of(&self, source: FaultSource) -> u64 {
        let i = FaultSource::ALL
            .iter()
            .position(|s| *s == source)
            .expect("listed");
        self.faults[i].load(Ordering::Relaxed)
    }

    pub fn total_faults(&self) -> u64 {
        self.faults.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Blocks fetched over the network (any source, any priority).
    pub fn fetched_blocks(&self) -> u64 {
        self.blocks
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn fetched_bytes(&self) -> u64 {
        self.bytes
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The one-line summary of a restore.
    pub fn summary(&self) -> String {
        let q = |x| {
            self.latency
                .quantile_us(x)
                .map_or("-".to_owned(), |v| format!("{v:.0}us"))
        };
        format!(
            "faults={} (cache={} prefetch={} demand={} zero={}) blocks_fetched={} bytes_fetched={} \
             cache_installs={} source_errors={} bad_blocks={} fault_p50<={} fault_p99<={}",
            self.total_faults(),
            self.faults_of(FaultSource::Cache),
            self.faults_of(FaultSource::Prefetch),
            self.faults_of(FaultSource::Demand),
            self.faults_of(FaultSource::Zero),
            self.fetched_blocks(),
            self.fetched_bytes(),
            self.cache_blocks.load(Ordering::Relaxed),
            self.source_errors.load(Ordering::Relaxed),
            self.bad_blocks.load(Ordering::Relaxed),
            q(0.5),
            q(0.99),
        )
    }
}

/// The whole agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub counters: Counters,
    pub restores_started: AtomicU64,
    pub restores_active: AtomicU64,
    /// Times a source was taken out of use (silent for a timeout, or
    /// unreachable), and times one came back (a probe or late answer).
    pub sources_down: AtomicU64,
    pub sources_recovered: AtomicU64,
}

impl Metrics {
    /// The Prometheus text exposition of the counters and the cache.
    pub fn render(&self, cache: &BlockCache) -> String {
        let c = &self.counters;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP thaw_agent_faults_total Page faults served, by where the page came from."
        );
        let _ = writeln!(out, "# TYPE thaw_agent_faults_total counter");
        for (i, s) in FaultSource::ALL.iter().enumerate() {
            let v = c.faults[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "thaw_agent_faults_total{{source=\"{}\"}} {v}",
                s.as_str()
            );
        }
        for (metric, arr, help) in [
            (
                "thaw_agent_blocks_fetched_total",
                &c.blocks,
                "Blocks fetched",
            ),
            (
                "thaw_agent_bytes_fetched_total",
                &c.bytes,
                "Stored bytes fetched",
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}, by source and priority.");
            let _ = writeln!(out, "# TYPE {metric} counter");
            for k in SourceKind::ALL {
                for (pi, p) in PRIORITIES.iter().enumerate() {
                    let v = arr[k as usize][pi].load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{metric}{{source=\"{}\",priority=\"{}\"}} {v}",
                        k.as_str(),
                        p.as_str()
                    );
                }
            }
        }
        let simple = [
            (
                "thaw_agent_cache_install_blocks_total",
                "Installs from the host cache (a block's missing pages, or one page when profiling).",
                c.cache_blocks.load(Ordering::Relaxed),
            ),
            (
                "thaw_agent_cache_install_bytes_total",
                "Bytes installed from the host cache.",
                c.cache_bytes.load(Ordering::Relaxed),
            ),
            (
                "thaw_agent_source_errors_total",
                "Fetches that failed on one source and moved on.",
                c.source_errors.load(Ordering::Relaxed),
            ),
            (
                "thaw_agent_bad_blocks_total",
                "Blocks refused because their hash did not match.",
                c.bad_blocks.load(Ordering::Relaxed),
            ),
            (
                "thaw_agent_sources_down_total",
                "Times a source was taken out of use (silent for its timeout, or unreachable).",
                self.sources_down.load(Ordering::Relaxed),
            ),
            (
                "thaw_agent_sources_recovered_total",
                "Times a source out of use answered a probe and came back.",
                self.sources_recovered.load(Ordering::Relaxed),
            ),
            (
                "thaw_agent_restores_started_total",
                "Restores handed to this agent.",
                self.restores_started.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let cc = cache.counters();
        let hits = cc.hits.load(Ordering::Relaxed) + cc.shared.load(Ordering::Relaxed);
        let misses = cc.misses.load(Ordering::Relaxed);
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let (bytes, blocks) = cache.usage();
        let gauges = [
            (
                "thaw_agent_restores_active",
                "Restores being served.",
                self.restores_active.load(Ordering::Relaxed) as f64,
            ),
            (
                "thaw_agent_cache_hit_ratio",
                "Block requests served without a fetch of their own (cached or shared).",
                ratio,
            ),
            (
                "thaw_agent_cache_bytes",
                "Decoded bytes held by the host cache.",
                bytes as f64,
            ),
            (
                "thaw_agent_cache_blocks",
                "Blocks held by the host cache.",
                blocks as f64,
            ),
            (
                "thaw_agent_cache_capacity_bytes",
                "Bound of the host cache.",
                cache.capacity() as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "thaw_agent_fault_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Fault service latency, fault read to wake."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        c.latency.render(&mut out, name, "");
        let name = "thaw_agent_fault_latency_by_source_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Fault service latency, fault read to wake, by where the page came from."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, s) in FaultSource::ALL.iter().enumerate() {
            let labels = format!("source=\"{}\"", s.as_str());
            c.latency_by_source[i].render(&mut out, name, &labels);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_fall_in_the_right_bucket() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(10));
        }
        h.record(Duration::from_micros(1000));
        h.record(Duration::from_micros(1000));
        let p50 = h.quantile_us(0.5).unwrap();
        assert!((10.0..=14.2).contains(&p50), "{p50}");
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((1000.0..=1415.0).contains(&p99), "{p99}");
        assert_eq!(h.count(), 100);
        assert_eq!(Histogram::default().quantile_us(0.5), None);
    }

    #[test]
    fn prometheus_text_has_every_family() {
        let m = Metrics::default();
        m.counters
            .fault(FaultSource::Cache, Duration::from_micros(7));
        m.counters
            .fault(FaultSource::Demand, Duration::from_micros(300));
        m.counters
            .fetched(SourceKind::ObjectStore, Priority::Demand, 4096);
        let cache = BlockCache::new(1 << 20);
        let text = m.render(&cache);
        assert!(
            text.contains("thaw_agent_faults_total{source=\"cache\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "thaw_agent_bytes_fetched_total{source=\"object_store\",priority=\"demand\"} 4096"
        ));
        assert!(text.contains("thaw_agent_fault_latency_seconds_count 2"));
        assert!(
            text.contains("thaw_agent_fault_latency_by_source_seconds_count{source=\"cache\"} 1")
        );
        assert!(text.contains(
            "thaw_agent_fault_latency_by_source_seconds_bucket{source=\"demand\",le=\"+Inf\"} 1"
        ));
        assert_eq!(
            m.counters
                .latency_of(FaultSource::Cache)
                .quantile_us(0.5)
                .unwrap(),
            8.0,
            "7 us falls in the bucket up to 2^3 us"
        );
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("thaw_agent_cache_hit_ratio 0"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').expect(line);
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
        assert!(m
            .counters
            .summary()
            .contains("faults=2 (cache=1 prefetch=0 demand=1 zero=0)"));
    }
}
