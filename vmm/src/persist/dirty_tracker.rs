//! Drives [`DirtyWindows`] against a running VM: turns KVM dirty logging on, harvests the bitmaps
//! at each window boundary, and closes the last window at the checkpoint's pause.

use crate::persist::dirty::{DirtyConfig, DirtyWindows, PAGE_SIZE};
use crate::vstate::vm::{Vm, VmError};
use std::time::{Duration, Instant};
use thaw_format::DirtyLog;

type Result<T> = std::result::Result<T, VmError>;

/// What dirty tracking saw and cost, reported with the checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DirtyStats {
    pub window_ms: f64,
    /// Pages written per kept window, oldest first (the last one ends at the pause).
    pub pages_per_window: Vec<usize>,
    /// Bitmap harvests (`KVM_GET_DIRTY_LOG` over every slot), the one at the pause included.
    pub harvests: u32,
    pub harvest_us_mean: f64,
    pub harvest_us_max: f64,
}

/// Dirty logging of one running VM.
pub struct DirtyTracker {
    windows: DirtyWindows,
    window: Duration,
    harvests: u32,
    harvest_total: Duration,
    harvest_max: Duration,
}

impl DirtyTracker {
    /// Enables dirty logging on `vm` and opens the first window.
    pub fn start(vm: &Vm, config: DirtyConfig) -> Result<DirtyTracker> {
        vm.set_dirty_log(true)?;
        Ok(DirtyTracker {
            windows: DirtyWindows::new(config, Instant::now()),
            window: config.window,
            harvests: 0,
            harvest_total: Duration::ZERO,
            harvest_max: Duration::ZERO,
        })
    }

    /// When [`DirtyTracker::poll`] next has work.
    pub fn next_boundary(&self) -> Instant {
        self.windows.next_boundary()
    }

    /// Closes the open window if its time is up.
    pub fn poll(&mut self, vm: &Vm) -> Result<()> {
        let now = Instant::now();
        if now >= self.windows.next_boundary() {
            let pages = self.harvest(vm)?;
            self.windows.close(now, pages);
        }
        Ok(())
    }

    /// Closes the last window at `pause` (the vCPUs are parked, so nothing is written after it),
    /// turns dirty logging off (a resumed guest runs without its cost) and returns the kept
    /// windows as the checkpoint's dirty log.
    pub(crate) fn finish(mut self, vm: &Vm, pause: Instant) -> Result<(DirtyLog, DirtyStats)> {
        let pages = self.harvest(vm)?;
        vm.set_dirty_log(false)?;
        self.windows.close_at_pause(pause, pages);
        let stats = DirtyStats {
            window_ms: self.window.as_secs_f64() * 1e3,
            pages_per_window: self.windows.page_counts(),
            harvests: self.harvests,
            harvest_us_mean: self.harvest_total.as_secs_f64() * 1e6 / self.harvests as f64,
            harvest_us_max: self.harvest_max.as_secs_f64() * 1e6,
        };
        let total_pages = vm.memory().size() / PAGE_SIZE;
        let log = self.windows.into_log(pause, PAGE_SIZE, total_pages);
        Ok((log, stats))
    }

    fn harvest(&mut self, vm: &Vm) -> Result<Vec<u64>> {
        let t = Instant::now();
        let pages = vm.harvest_dirty_pages()?;
        let took = t.elapsed();
        self.harvests += 1;
        self.harvest_total += took;
        self.harvest_max = self.harvest_max.max(took);
        tracing::debug!(
            pages = pages.len(),
            us = took.as_micros() as u64,
            "dirty bitmap harvested"
        );
        Ok(pages)
    }
}
