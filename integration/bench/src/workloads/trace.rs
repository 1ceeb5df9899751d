//! Recording one run of a model as a trace. Each concurrent actor (a vCPU
//! running a worker, a GC thread, the kernel's timer) is a [`Lane`] with
//! its own clock; [`merge`] interleaves the lanes by time and keeps the
//! first touch of every page, which is what a fault trace records.

use std::collections::HashSet;

/// One first touch: `t_us` of guest progress since resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    pub t_us: u64,
    pub page: u64,
    pub write: bool,
}

/// An actor's accesses in time. `speed` stretches its CPU work: runs of the
/// same checkpoint differ a little in speed (caches, host noise).
pub(super) struct Lane {
    t_us: f64,
    speed: f64,
    touches: Vec<(f64, u64, bool)>,
}

impl Lane {
    pub(super) fn new(start_us: f64, speed: f64) -> Self {
        Self {
            t_us: start_us,
            speed,
            touches: Vec::new(),
        }
    }

    pub(super) fn now(&self) -> f64 {
        self.t_us
    }

    /// CPU work taking `us` at nominal speed.
    pub(super) fn work(&mut self, us: f64) {
        self.t_us += us.max(0.0) * self.speed;
    }

    /// Waiting (idle, network round trips, timers): wall time, not CPU.
    pub(super) fn wait(&mut self, us: f64) {
        self.t_us += us.max(0.0);
    }

    /// Waits until `t_us` if that is later.
    pub(super) fn wait_until(&mut self, t_us: f64) {
        self.t_us = self.t_us.max(t_us);
    }

    pub(super) fn read(&mut self, page: u64) {
        self.touches.push((self.t_us, page, false));
    }

    pub(super) fn write(&mut self, page: u64) {
        self.touches.push((self.t_us, page, true));
    }
}

/// The trace of a run: every lane's accesses in time order (ties keep lane
/// order), only the first touch of each page, times in whole microseconds
/// counted from the first touch.
pub(super) fn merge(lanes: Vec<Lane>) -> Vec<Touch> {
    let mut all: Vec<(f64, u64, bool)> = lanes.into_iter().flat_map(|l| l.touches).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let origin = all.first().map_or(0.0, |t| t.0);
    let mut seen = HashSet::with_capacity(all.len());
    all.into_iter()
        .filter(|&(_, page, _)| seen.insert(page))
        .map(|(t, page, write)| Touch {
            t_us: (t - origin) as u64,
            page,
            write,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_interleaves_lanes_and_keeps_first_touches() {
        let mut a = Lane::new(10.0, 1.0);
        a.read(1);
        a.work(100.0);
        a.write(2);
        a.read(1);
        let mut b = Lane::new(50.0, 2.0);
        b.write(1);
        b.read(3);
        b.work(10.0);
        b.read(2);
        let trace = merge(vec![a, b]);
        let got: Vec<(u64, u64, bool)> = trace.iter().map(|t| (t.t_us, t.page, t.write)).collect();
        assert_eq!(got, vec![(0, 1, false), (40, 3, false), (60, 2, false)]);
    }
}
