//! Seeded randomness for the generators: one small, fast generator
//! (splitmix64) plus the few distributions the models need. Every stream is
//! derived from the user's seed and a label, so adding a draw in one place
//! does not shift the numbers drawn elsewhere.

use crate::synthetic::SplitMix;

pub(super) struct Rng(SplitMix);

/// Mixes `value` into `state` (one splitmix64 round), for deriving seeds.
pub(super) fn mix(state: u64, value: u64) -> u64 {
    let mut z = state ^ value.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed for the stream named `label` under `seed` (FNV-1a of the label).
pub(super) fn derive(seed: u64, label: &str) -> u64 {
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    mix(seed, hash)
}

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self(SplitMix::new(seed))
    }

    /// A generator for the stream `label` under `seed`.
    pub(super) fn derived(seed: u64, label: &str) -> Self {
        Self::new(derive(seed, label))
    }

    pub(super) fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    /// Uniform index into a collection of `len` > 0 items.
    pub(super) fn index(&mut self, len: usize) -> usize {
        self.0.below(len as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponential with the given mean (waiting times of a Poisson process).
    pub(super) fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    /// Standard normal (Box-Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and shape `sigma`: CPU times and
    /// sizes, which are skewed with a long right tail.
    pub(super) fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }
}

/// Zipf popularity over ranks `0..n`: rank `k` has weight `1 / (k+1)^s`.
pub(super) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(super) fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..n.max(1))
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    pub(super) fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks() {
        let zipf = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(1);
        let draws: Vec<usize> = (0..20_000).map(|_| zipf.sample(&mut rng)).collect();
        let top10 = draws.iter().filter(|&&k| k < 10).count() as f64 / 20_000.0;
        // H(10)/H(1000) = 2.93/7.49.
        assert!((0.35..0.43).contains(&top10), "top-10 share {top10}");
        assert!(draws.iter().all(|&k| k < 1000));
    }

    #[test]
    fn lognormal_median_holds() {
        let mut rng = Rng::new(2);
        let mut v: Vec<f64> = (0..10_001).map(|_| rng.lognormal(100.0, 1.0)).collect();
        v.sort_by(f64::total_cmp);
        assert!((85.0..115.0).contains(&v[5000]), "median {}", v[5000]);
    }

    #[test]
    fn derived_streams_differ_and_repeat() {
        let a = Rng::derived(1, "a").u64();
        assert_eq!(a, Rng::derived(1, "a").u64());
        assert_ne!(a, Rng::derived(1, "b").u64());
        assert_ne!(a, Rng::derived(2, "a").u64());
    }
}
