//! What the fetch agent's and the block server's Prometheus endpoints share:
//! the latency histogram, a few rendering helpers, and a tiny HTTP responder
//! that answers every GET with the current metrics text.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bucket upper bounds grow by sqrt(2) from 1 µs; the last is +Inf.
const BUCKETS: usize = 56;

fn bucket_bound_us(i: usize) -> f64 {
    2f64.powf(i as f64 / 2.0)
}

/// A latency histogram with buckets sqrt(2) apart (quantiles within 41%).
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let i = if us <= 1.0 {
            0
        } else {
            ((us.log2() * 2.0).ceil() as usize).min(BUCKETS - 1)
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound (µs) of the bucket holding quantile `q`.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(bucket_bound_us(i));
            }
        }
        Some(bucket_bound_us(BUCKETS - 1))
    }

    /// The histogram's samples; `labels` (e.g. `source="cache"`) go on each.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let (sep, set) = if labels.is_empty() {
            ("", String::new())
        } else {
            (",", format!("{{{labels}}}"))
        };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            if i == BUCKETS - 1 {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                );
            } else {
                let le = bucket_bound_us(i) / 1e6;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"{le:.9}\"}} {cumulative}"
                );
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{set} {sum:.9}");
        let _ = writeln!(out, "{name}_count{set} {cumulative}");
    }
}

/// Writes a counter family with one sample per `(labels, value)`; an empty
/// label set is the bare name.
pub fn counter(out: &mut String, name: &str, help: &str, samples: &[(String, u64)]) {
    family(
        out,
        name,
        help,
        "counter",
        samples.iter().map(|(l, v)| (l, *v as f64)),
    );
}

/// Writes a gauge family, as [`counter`].
pub fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    family(
        out,
        name,
        help,
        "gauge",
        samples.iter().map(|(l, v)| (l, *v)),
    );
}

fn family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    samples: impl Iterator<Item = (&'a String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// What renders the metrics text for each request.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and answers every GET with `render()`'s text (anything else
/// a 405) until the runtime stops. Returns the bound address.
pub async fn serve_metrics(addr: SocketAddr, render: Render) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                // Read the request head (bounded); the body, if any, is ignored.
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 << 10 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let response = if req.starts_with(b"GET ") {
                    let body = render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_and_without_labels() {
        let mut out = String::new();
        counter(&mut out, "x_total", "Xs.", &[(String::new(), 3)]);
        gauge(&mut out, "y", "Ys.", &[("k=\"a\"".into(), 1.5)]);
        assert_eq!(
            out,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total 3\n# HELP y Ys.\n# TYPE y gauge\ny{k=\"a\"} 1.5\n"
        );
    }

    #[tokio::test]
    async fn get_returns_the_rendered_text_and_other_methods_405() {
        let addr = serve_metrics(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|| "m 1\n".to_owned()),
        )
        .await
        .unwrap();
        for (req, want) in [("GET /metrics", "200 OK"), ("POST /metrics", "405")] {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("{req} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).await.unwrap();
            assert!(got.contains(want), "{got}");
            assert_eq!(got.ends_with("\r\n\r\nm 1\n"), want == "200 OK", "{got}");
        }
    }
}
