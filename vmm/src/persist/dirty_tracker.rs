//! Drives [`DirtyWindows`] against a running VM: turns KVM dirty logging on, harvests the bitmaps
//! at each window boundary, and closes the last window at the checkpoint's pause. Every page
//! harvested is also kept in a [`PageSet`] until the next checkpoint, for incremental ones.

use crate::persist::dirty::{DirtyConfig, DirtyWindows, PageSet, PAGE_SIZE};
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

/// What a checkpoint takes from the tracker: the windows before it and all pages written since
/// the previous checkpoint.
pub(crate) struct DirtyCut {
    pub(crate) log: DirtyLog,
    pub(crate) stats: DirtyStats,
    pub(crate) written: PageSet,
}

/// Dirty logging of one running VM.
pub struct DirtyTracker {
    windows: DirtyWindows,
    config: DirtyConfig,
    window: Duration,
    /// Every page harvested since the tracker started or since the last [`DirtyTracker::cut`].
    since_cut: PageSet,
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
            config,
            window: config.window,
            since_cut: PageSet::default(),
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

    /// Pages harvested since the tracker started or since the last cut.
    pub(crate) fn written_since_cut(&self) -> u64 {
        self.since_cut.len()
    }

    /// As [`DirtyTracker::finish`] at a checkpoint that is not the last: dirty logging stays on
    /// and a new first window opens at `pause`. Also returns every page written since the tracker
    /// started or since the previous cut (the pause's harvest included).
    pub(crate) fn cut(&mut self, vm: &Vm, pause: Instant) -> Result<DirtyCut> {
        let pages = self.harvest(vm)?;
        let mut windows =
            std::mem::replace(&mut self.windows, DirtyWindows::new(self.config, pause));
        windows.close_at_pause(pause, pages);
        let stats = DirtyStats {
            window_ms: self.window.as_secs_f64() * 1e3,
            pages_per_window: windows.page_counts(),
            harvests: self.harvests,
            harvest_us_mean: self.harvest_total.as_secs_f64() * 1e6 / self.harvests as f64,
            harvest_us_max: self.harvest_max.as_secs_f64() * 1e6,
        };
        self.harvests = 0;
        self.harvest_total = Duration::ZERO;
        self.harvest_max = Duration::ZERO;
        let total_pages = vm.memory().size() / PAGE_SIZE;
        Ok(DirtyCut {
            log: windows.into_log(pause, PAGE_SIZE, total_pages),
            stats,
            written: std::mem::take(&mut self.since_cut),
        })
    }

    fn harvest(&mut self, vm: &Vm) -> Result<Vec<u64>> {
        let t = Instant::now();
        let pages = vm.harvest_dirty_pages()?;
        let took = t.elapsed();
        self.harvests += 1;
        self.harvest_total += took;
        self.harvest_max = self.harvest_max.max(took);
        self.since_cut.insert_all(&pages);
        tracing::debug!(
            pages = pages.len(),
            us = took.as_micros() as u64,
            "dirty bitmap harvested"
        );
        Ok(pages)
    }
}
