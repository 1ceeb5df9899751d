//! Summaries of latency samples: percentiles and a CDF small enough for JSON.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted samples.
fn rank(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Percentiles of `samples`, `None` when there are none.
pub(crate) fn percentiles(samples: &[f64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Some(Percentiles {
        p50: rank(&s, 0.50),
        p90: rank(&s, 0.90),
        p99: rank(&s, 0.99),
        max: s[s.len() - 1],
    })
}

/// At most `points` (value, cumulative fraction) pairs tracing the empirical
/// CDF of `samples`, evenly spaced in rank, always ending at the maximum.
pub(crate) fn cdf(samples: &[f64], points: usize) -> Vec<(f64, f64)> {
    if samples.is_empty() || points == 0 {
        return Vec::new();
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let k = points.min(n);
    (1..=k)
        .map(|j| {
            let count = (j * n).div_ceil(k);
            (s[count - 1], count as f64 / n as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&v).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentiles(&[]), None);
        assert_eq!(percentiles(&[7.0]).unwrap().p50, 7.0);
    }

    #[test]
    fn cdf_is_monotone_and_ends_at_one() {
        let v: Vec<f64> = (0..1000).map(|i| f64::from((i * 37) % 1000)).collect();
        let c = cdf(&v, 50);
        assert_eq!(c.len(), 50);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert_eq!(*c.last().unwrap(), (999.0, 1.0));
        assert_eq!(cdf(&[3.0, 1.0], 10), vec![(1.0, 0.5), (3.0, 1.0)]);
        assert!(cdf(&[], 10).is_empty());
    }
}
