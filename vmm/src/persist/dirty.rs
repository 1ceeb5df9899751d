//! Dirty-page windows before a checkpoint, free of I/O: KVM's per-slot dirty bitmaps turned into
//! page indices, the last N windows kept, and the windows as the checkpoint's
//! [`DirtyLog`]. The clock is passed in; [`crate::persist::dirty_tracker`] drives this with the ioctls.
//!
//! A window is the time between two harvests of the bitmap (`KVM_GET_DIRTY_LOG` returns the pages
//! written since the previous call and re-arms write tracking), so it holds the pages the guest
//! wrote at least once in that time, without order. Writes by the vmm itself through its own
//! mapping (not by the guest) do not appear: KVM sees only guest writes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use thaw_format::{DirtyLog, DirtyWindow};

/// KVM's dirty bitmaps have one bit per 4 KiB page on x86, whatever the guest maps.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// How dirty pages are tracked before a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyConfig {
    /// Windows kept (the most recent ones); 0 turns tracking off.
    pub windows: usize,
    /// Length of one window.
    pub window: Duration,
}

impl Default for DirtyConfig {
    /// The last second before the checkpoint in four windows: long enough to see a working set,
    /// short enough that it is the working set of the moment, and a harvest every 250 ms costs
    /// next to nothing (see the README for the measured cost).
    fn default() -> Self {
        DirtyConfig {
            windows: 4,
            window: Duration::from_millis(250),
        }
    }
}

impl DirtyConfig {
    /// Dirty logging that runs for a VM's whole life (a VM behind the control API, for
    /// incremental checkpoints): each harvest write-protects every page again, so the guest's
    /// next write to each costs a fault; windows of seconds keep that to a fault per page written
    /// every few seconds, while still laying a diff out by recency.
    pub fn lifelong() -> Self {
        DirtyConfig {
            windows: 4,
            window: Duration::from_secs(5),
        }
    }

    pub fn enabled(&self) -> bool {
        self.windows > 0 && !self.window.is_zero()
    }

    /// The whole span the kept windows cover.
    pub fn span(&self) -> Duration {
        u32::try_from(self.windows)
            .ok()
            .and_then(|n| self.window.checked_mul(n))
            .unwrap_or(Duration::MAX)
    }
}

/// The page indices set in one memory slot's dirty bitmap (bit `i` of word `w` is the slot's page
/// `64 w + i`), offset by `first_page`, the slot's first page in the regions concatenated.
/// Ascending; bits past `slot_pages` are ignored.
pub(crate) fn pages_in_bitmap(bitmap: &[u64], first_page: u64, slot_pages: u64) -> Vec<u64> {
    let mut pages = Vec::new();
    for (w, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
            if page >= slot_pages {
                return pages;
            }
            pages.push(first_page + page);
            bits &= bits - 1;
        }
    }
    pages
}

/// One closed window.
#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    ended: Instant,
    pages: Vec<u64>,
}

/// The most recent windows of dirty pages, and the window now open.
#[derive(Debug, Clone)]
pub(crate) struct DirtyWindows {
    config: DirtyConfig,
    open_since: Instant,
    /// Boundaries lie on a fixed grid from the start, so late harvests do not push every later
    /// window back (and the last one before a known checkpoint moment stays whole).
    next_due: Instant,
    closed: VecDeque<Window>,
}

impl DirtyWindows {
    /// Starts the first window at `now` (when logging was turned on).
    pub(crate) fn new(config: DirtyConfig, now: Instant) -> DirtyWindows {
        DirtyWindows {
            config,
            open_since: now,
            next_due: now + config.window,
            closed: VecDeque::with_capacity(config.windows + 1),
        }
    }

    /// When the open window is due to close.
    pub(crate) fn next_boundary(&self) -> Instant {
        self.next_due
    }

    /// Closes the open window at `now` with the pages harvested for it (ascending) and opens the
    /// next one. Only the last `windows` are kept.
    pub(crate) fn close(&mut self, now: Instant, pages: Vec<u64>) {
        self.closed.push_back(Window {
            started: self.open_since,
            ended: now,
            pages,
        });
        while self.closed.len() > self.config.windows {
            self.closed.pop_front();
        }
        self.open_since = now;
        self.next_due += self.config.window;
        if self.next_due <= now {
            // More than a window late: start the grid again from here.
            self.next_due = now + self.config.window;
        }
    }

    /// Closes the last window at the checkpoint's `pause` with its pages. A last window shorter
    /// than half a window (the pause came just after a boundary) is merged into the window
    /// before it instead: kept alone it would hold only a few pages and push a full window out.
    pub(crate) fn close_at_pause(&mut self, pause: Instant, pages: Vec<u64>) {
        let short = pause.saturating_duration_since(self.open_since) < self.config.window / 2;
        match self.closed.back_mut() {
            Some(last) if short => {
                last.pages = union_sorted(&last.pages, &pages);
                last.ended = pause;
                self.open_since = pause;
            }
            _ => self.close(pause, pages),
        }
    }

    /// Pages per kept window, oldest first.
    pub(crate) fn page_counts(&self) -> Vec<usize> {
        self.closed.iter().map(|w| w.pages.len()).collect()
    }

    /// The kept windows as a checkpoint's dirty log, times counted back from `pause` (the moment
    /// the guest stopped for the checkpoint). Close the last window at the pause first, so the
    /// writes up to it are in.
    pub(crate) fn into_log(self, pause: Instant, page_size: u64, total_pages: u64) -> DirtyLog {
        let before = |t: Instant| pause.saturating_duration_since(t).as_micros() as u64;
        DirtyLog {
            page_size,
            total_pages,
            windows: self
                .closed
                .into_iter()
                .map(|w| DirtyWindow::from_pages(before(w.started), before(w.ended), &w.pages))
                .collect(),
        }
    }
}

/// Pages written since some moment (a checkpoint), one bit per page: what an incremental
/// checkpoint must write. Harvests are merged in as they come, so none is lost between
/// checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    words: Vec<u64>,
}

impl PageSet {
    pub fn insert_all(&mut self, pages: &[u64]) {
        for &page in pages {
            let w = (page / 64) as usize;
            if w >= self.words.len() {
                self.words.resize(w + 1, 0);
            }
            self.words[w] |= 1 << (page % 64);
        }
    }

    pub fn union_with(&mut self, other: &PageSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The pages, ascending.
    pub fn pages(&self) -> Vec<u64> {
        pages_in_bitmap(&self.words, 0, self.words.len() as u64 * 64)
    }
}

/// The union of two ascending lists, ascending.
fn union_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_bits_become_page_indices() {
        let bitmap = [0b1011u64, 1 << 63, 0, 1];
        assert_eq!(pages_in_bitmap(&bitmap, 0, 256), vec![0, 1, 3, 127, 192]);
        assert_eq!(
            pages_in_bitmap(&bitmap, 1000, 256),
            vec![1000, 1001, 1003, 1127, 1192]
        );
        // A slot of 100 pages: bits past it are padding.
        assert_eq!(pages_in_bitmap(&bitmap, 0, 100), vec![0, 1, 3]);
        assert!(pages_in_bitmap(&[], 0, 0).is_empty());
    }

    #[test]
    fn only_the_last_windows_are_kept_and_timed_back_from_the_pause() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let config = DirtyConfig {
            windows: 2,
            window: ms(100),
        };
        let mut w = DirtyWindows::new(config, t0);
        assert_eq!(w.next_boundary(), t0 + ms(100));
        // A late harvest does not move the grid; one more than a window late restarts it.
        w.close(t0 + ms(130), vec![1]);
        assert_eq!(w.next_boundary(), t0 + ms(200));
        w.close(t0 + ms(200), vec![2, 3]);
        assert_eq!(w.next_boundary(), t0 + ms(300));
        // The last window closes early, at the pause, but is long enough to stand alone.
        w.close_at_pause(t0 + ms(250), vec![4, 5, 6]);
        assert_eq!(w.page_counts(), vec![2, 3]);
        let log = w.into_log(t0 + ms(250), 4096, 10);
        log.validate().unwrap();
        assert_eq!(log.windows.len(), 2);
        assert_eq!(log.windows[0].started_us_before, 120_000);
        assert_eq!(log.windows[0].ended_us_before, 50_000);
        assert_eq!(log.windows[1].ended_us_before, 0);
        assert_eq!(log.windows[1].pages().collect::<Vec<_>>(), vec![4, 5, 6]);
    }

    #[test]
    fn a_short_last_window_is_merged_into_the_one_before() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let config = DirtyConfig {
            windows: 3,
            window: ms(100),
        };
        let mut w = DirtyWindows::new(config, t0);
        w.close(t0 + ms(100), vec![1, 2]);
        w.close(t0 + ms(200), vec![3, 5, 9]);
        w.close_at_pause(t0 + ms(210), vec![2, 4, 5, 10]);
        assert_eq!(w.page_counts(), vec![2, 6]);
        let log = w.into_log(t0 + ms(210), 4096, 16);
        log.validate().unwrap();
        assert_eq!(
            log.windows[1].pages().collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 9, 10]
        );
        assert_eq!(log.windows[1].started_us_before, 110_000);
        assert_eq!(log.windows[1].ended_us_before, 0);
        let mut late = DirtyWindows::new(config, t0);
        late.close(t0 + ms(350), vec![]);
        assert_eq!(late.next_boundary(), t0 + ms(450));
        // With nothing to merge into, a short window stands alone.
        let mut w = DirtyWindows::new(config, t0);
        w.close_at_pause(t0 + ms(5), vec![7]);
        assert_eq!(w.page_counts(), vec![1]);
    }

    #[test]
    fn a_page_set_merges_harvests_and_lists_them_once() {
        let mut a = PageSet::default();
        assert!(a.is_empty());
        a.insert_all(&[5, 200, 5, 63]);
        let mut b = PageSet::default();
        b.insert_all(&[64, 1000]);
        a.union_with(&b);
        assert_eq!(a.pages(), vec![5, 63, 64, 200, 1000]);
        assert_eq!(a.len(), 5);
        b.union_with(&a);
        assert_eq!(b, a);
    }

    #[test]
    fn config_span_and_switch() {
        let c = DirtyConfig::default();
        assert!(c.enabled());
        assert_eq!(c.span(), Duration::from_secs(1));
        let huge = DirtyConfig {
            windows: usize::MAX,
            ..c
        };
        assert_eq!(huge.span(), Duration::MAX);
        assert!(!DirtyConfig { windows: 0, ..c }.enabled());
    }
}
