//! The block server's counters, rendered in the Prometheus text format with
//! the fetch agent's conventions (`thaw_blockserver_...`, `_total` counters,
//! seconds, the shared histogram of [`thaw_store::prometheus`]).

use std::sync::atomic::{AtomicU64, Ordering};

use thaw_store::prometheus::{counter, gauge, Histogram};

use crate::wire::Status;

/// Results a request ends with, as labelled: its answer's status.
const RESULTS: [(Status, &str); 4] = [
    (Status::Ok, "ok"),
    (Status::NotFound, "not_found"),
    (Status::BadRequest, "bad_request"),
    (Status::Unavailable, "unavailable"),
];

fn result_index(s: Status) -> usize {
    RESULTS
        .iter()
        .position(|(x, _)| *x == s)
        .expect("every status is listed")
}

/// Counters a block server keeps (all since start).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests received (streams opened), whatever their result.
    pub requests: AtomicU64,
    /// Requests answered, and the bytes of their answers, by result
    /// ([`RESULTS`] order).
    pub answered: [AtomicU64; 4],
    pub answered_bytes: [AtomicU64; 4],
    /// Answers that could not be sent (the client reset the stream or left).
    pub unsent: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Block requests not in the cache (read from the store, or joining a
    /// read already under way).
    pub cache_misses: AtomicU64,
    pub cache_evictions: AtomicU64,
    /// Object-store reads: runs of blocks (see `read_ahead`) and manifests.
    pub store_reads: AtomicU64,
    pub store_read_errors: AtomicU64,
    /// Blocks those reads brought in, and their stored bytes (manifests
    /// included).
    pub blocks_read: AtomicU64,
    pub store_bytes_read: AtomicU64,
    pub store_latency: Histogram,
    /// Payload bytes of successful answers.
    pub bytes_sent: AtomicU64,
    pub connections: AtomicU64,
    pub connections_active: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Requests being served (until the client acknowledged the answer).
    pub streams_active: AtomicU64,
}

/// What the cache holds, sampled when rendering.
pub(crate) struct CacheUsage {
    pub bytes: u64,
    pub blocks: u64,
    pub capacity: u64,
}

impl ServerStats {
    pub(crate) fn answered(&self, status: Status, bytes: u64) {
        let i = result_index(status);
        self.answered[i].fetch_add(1, Ordering::Relaxed);
        self.answered_bytes[i].fetch_add(bytes, Ordering::Relaxed);
        if status == Status::Ok {
            self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Requests answered with `status`.
    pub fn answered_with(&self, status: Status) -> u64 {
        self.answered[result_index(status)].load(Ordering::Relaxed)
    }

    pub(crate) fn render(&self, cache: CacheUsage, draining: bool) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let one = |v: u64| vec![(String::new(), v)];
        let by_result = |a: &[AtomicU64; 4]| -> Vec<(String, u64)> {
            RESULTS
                .iter()
                .zip(a)
                .map(|((_, name), c)| (format!("result=\"{name}\""), get(c)))
                .collect()
        };
        let mut out = String::new();
        let o = &mut out;
        counter(
            o,
            "thaw_blockserver_requests_total",
            "Requests received.",
            &one(get(&self.requests)),
        );
        counter(
            o,
            "thaw_blockserver_responses_total",
            "Requests answered, by result.",
            &by_result(&self.answered),
        );
        counter(
            o,
            "thaw_blockserver_response_bytes_total",
            "Payload bytes of answers, by result.",
            &by_result(&self.answered_bytes),
        );
        counter(
            o,
            "thaw_blockserver_responses_unsent_total",
            "Answers not sent: the client reset the stream or left.",
            &one(get(&self.unsent)),
        );
        counter(
            o,
            "thaw_blockserver_cache_hits_total",
            "Block requests served from the cache.",
            &one(get(&self.cache_hits)),
        );
        counter(
            o,
            "thaw_blockserver_cache_misses_total",
            "Block requests not in the cache (read, or joined a read under way).",
            &one(get(&self.cache_misses)),
        );
        counter(
            o,
            "thaw_blockserver_cache_evictions_total",
            "Blocks evicted from the cache to make room.",
            &one(get(&self.cache_evictions)),
        );
        counter(
            o,
            "thaw_blockserver_store_reads_total",
            "Object-store reads (runs of blocks and manifests).",
            &one(get(&self.store_reads)),
        );
        counter(
            o,
            "thaw_blockserver_store_read_errors_total",
            "Object-store reads that failed.",
            &one(get(&self.store_read_errors)),
        );
        counter(
            o,
            "thaw_blockserver_store_blocks_read_total",
            "Blocks read from the object store.",
            &one(get(&self.blocks_read)),
        );
        counter(
            o,
            "thaw_blockserver_store_bytes_read_total",
            "Stored bytes read from the object store (blocks and manifests).",
            &one(get(&self.store_bytes_read)),
        );
        counter(
            o,
            "thaw_blockserver_connections_total",
            "Client connections established.",
            &one(get(&self.connections)),
        );
        counter(
            o,
            "thaw_blockserver_handshake_failures_total",
            "Connections that failed their QUIC/TLS handshake (or were refused while draining).",
            &one(get(&self.handshake_failures)),
        );
        let g = |v: u64| vec![(String::new(), v as f64)];
        gauge(
            o,
            "thaw_blockserver_connections_active",
            "Client connections open.",
            &g(get(&self.connections_active)),
        );
        gauge(
            o,
            "thaw_blockserver_streams_active",
            "Requests being served.",
            &g(get(&self.streams_active)),
        );
        gauge(
            o,
            "thaw_blockserver_cache_bytes",
            "Stored bytes held by the cache.",
            &g(cache.bytes),
        );
        gauge(
            o,
            "thaw_blockserver_cache_blocks",
            "Blocks held by the cache.",
            &g(cache.blocks),
        );
        gauge(
            o,
            "thaw_blockserver_cache_capacity_bytes",
            "Bound of the cache.",
            &g(cache.capacity),
        );
        gauge(
            o,
            "thaw_blockserver_draining",
            "1 while shutting down: no new connections, finishing requests in flight.",
            &g(u64::from(draining)),
        );
        let name = "thaw_blockserver_store_read_latency_seconds";
        let _ = std::fmt::Write::write_fmt(
            o,
            format_args!("# HELP {name} Object-store read latency.\n# TYPE {name} histogram\n"),
        );
        self.store_latency.render(o, name, "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_family_renders_with_its_counts() {
        let s = ServerStats::default();
        s.requests.fetch_add(3, Ordering::Relaxed);
        s.answered(Status::Ok, 100);
        s.answered(Status::Ok, 50);
        s.answered(Status::NotFound, 7);
        s.store_latency.record(Duration::from_millis(3));
        let text = s.render(
            CacheUsage {
                bytes: 150,
                blocks: 2,
                capacity: 1000,
            },
            false,
        );
        for want in [
            "thaw_blockserver_requests_total 3",
            "thaw_blockserver_responses_total{result=\"ok\"} 2",
            "thaw_blockserver_responses_total{result=\"not_found\"} 1",
            "thaw_blockserver_response_bytes_total{result=\"ok\"} 150",
            "thaw_blockserver_cache_bytes 150",
            "thaw_blockserver_cache_blocks 2",
            "thaw_blockserver_draining 0",
            "thaw_blockserver_store_read_latency_seconds_count 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').expect(line);
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
