//! The fetch agent's decisions for one restore, free of I/O: events in
//! (a fault, a block arrived, a fetch failed, time passed), actions out
//! (install these pages from these block bytes, fetch this block at this
//! priority, raise a fetch's priority, zero-fill, wake). The clock is passed
//! in, so every policy is tested and simulated without a kernel or a network,
//! the way quinn-proto is to quinn.
//!
//! Per block the state is absent, in flight (with its priority and the faults
//! waiting for it), delivered (its bytes arrived but only some of its pages
//! were installed: a profiling restore) or installed. Pages are tracked one
//! by one as present or not, so an install never covers a page twice, and
//! as removed or not: a page the guest gave up (a balloon inflating, free page
//! reporting) reads as zeros from then on, so no block is installed over it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thaw_format::page_map::PageSource;
use thaw_format::Manifest;
use thaw_format::{PageMap, PageRun};

use token_bucket::TokenBucket;

mod actions;
mod config;
mod retry;
mod token_bucket;
mod window;
pub use actions::{Action, FaultSource, InstallRun, Origin, PolicyError, Priority, Waiter};
pub use config::{Config, InstallScope, StreamConfig, DEFAULT_STREAM_IN_FLIGHT};
pub use retry::{retry_delay, MAX_FETCH_ATTEMPTS};
pub use window::StreamWindow;

/// Streaming installs at most this many cached blocks per poll, so one poll
/// stays short even when the whole checkpoint is in the host cache.
const MAX_CACHE_INSTALLS_PER_POLL: usize = 64;

/// Zero pages installed ahead per poll (one poll's ioctls stay around a
/// millisecond).
const ZERO_AHEAD_PAGES_PER_POLL: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum BlockState {
    Absent,
    InFlight {
        priority: Priority,
        waiters: Vec<Waiter>,
    },
    /// The block's bytes arrived (and went to the host cache) but only some
    /// of its pages were installed ([`InstallScope::Page`]). A fault on one
    /// of the others installs it from the cache, or fetches the block again
    /// if the cache dropped it.
    Delivered,
    /// Every page of the block is present.
    Installed,
}

/// Counters a restore's summary reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyStats {
    pub faults: u64,
    pub faults_by_source: [u64; 4],
    pub fetches: u64,
    pub cache_installs: u64,
    pub zero_pages: u64,
    /// Pages the guest gave up (REMOVE events), each counted once.
    pub removed_pages: u64,
    /// Faults on removed pages, served with a zero page.
    pub removed_faults: u64,
}

/// One restore's state machine.
pub struct Restore {
    manifest: Arc<Manifest>,
    map: PageMap,
    config: Config,
    blocks: Vec<BlockState>,
    /// Failed fetch rounds per block: the next fetch is that attempt.
    failures: Vec<u32>,
    /// Position of each block in the prefetch order.
    order_pos: Vec<u32>,
    /// One bit per page: installed or decided to be installed.
    present: Vec<u64>,
    /// One bit per page: the guest gave it up. Its content is zeros from
    /// then on: blocks are never installed over it, faults on it get a zero
    /// page.
    removed: Vec<u64>,
    /// Next position in the prefetch order the stream looks at.
    stream_cursor: usize,
    stream_in_flight: usize,
    stream_window: StreamWindow,
    /// Streaming fetches are started this many at a time (or as many as the
    /// window allows, if fewer), so neighbouring blocks can share a request.
    stream_batch: usize,
    /// Next zero run (index, pages into it) to install ahead.
    zero_cursor: (usize, u64),
    bucket: Option<TokenBucket>,
    stats: PolicyStats,
}

impl Restore {
    /// A restore of `manifest` starting at `now`.
    pub fn new(manifest: Arc<Manifest>, config: Config, now: Instant) -> Self {
        let map = PageMap::new(&manifest);
        let mut order_pos = vec![0u32; manifest.blocks.len()];
        for (pos, &b) in manifest.prefetch_order.iter().enumerate() {
            order_pos[b as usize] = pos as u32;
        }
        let largest = manifest
            .blocks
            .iter()
            .map(|b| b.stored_len)
            .max()
            .unwrap_or(0);
        let bucket = config
            .stream
            .and_then(|s| s.bytes_per_sec)
            .map(|rate| TokenBucket::new(rate, largest, now));
        let stream_window = StreamWindow::new(config.stream.map_or(1, |s| s.max_in_flight));
        Restore {
            blocks: vec![BlockState::Absent; manifest.blocks.len()],
            failures: vec![0; manifest.blocks.len()],
            present: vec![0; manifest.total_pages().div_ceil(64) as usize],
            removed: vec![0; manifest.total_pages().div_ceil(64) as usize],
            order_pos,
            map,
            config,
            stream_cursor: 0,
            stream_in_flight: 0,
            stream_window,
            stream_batch: 1,
            zero_cursor: (0, 0),
            bucket,
            stats: PolicyStats::default(),
            manifest,
        }
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// Start streaming fetches `blocks` at a time: for a source where
    /// neighbouring blocks cost one request together (1, the default: each
    /// as soon as the window has room). The window then starts with as many
    /// requests in flight as it would with one block per request.
    pub fn set_stream_batch(&mut self, blocks: usize) {
        self.stream_batch = blocks.max(1);
        self.stream_window.start_with_runs(self.stream_batch);
    }

    /// Whether the window has room for the next batch of streaming fetches.
    fn stream_has_room(&self, max_in_flight: usize) -> bool {
        let allowed = self.stream_window.allowed().min(max_in_flight);
        let batch = self.stream_batch.min(allowed).max(1);
        self.stream_in_flight + batch <= allowed
    }

    pub fn stats(&self) -> &PolicyStats {
        &self.stats
    }

    /// The block holding `page`, `None` for a zero page.
    pub fn block_of(&self, page: u64) -> Result<Option<u32>, PolicyError> {
        match self.map.source(page) {
            Some(PageSource::Block(b)) => Ok(Some(b)),
            Some(PageSource::Zero) => Ok(None),
            None => Err(PolicyError::PageOutOfRange {
                page,
                total: self.manifest.total_pages(),
            }),
        }
    }

    pub fn is_present(&self, page: u64) -> bool {
        self.present
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    fn mark_present(&mut self, page: u64) {
        self.present[(page / 64) as usize] |= 1 << (page % 64);
    }

    /// Whether the guest gave `page` up (see [`Restore::remove`]).
    pub fn is_removed(&self, page: u64) -> bool {
        self.removed
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// The guest gave pages `start .. start + len` up: the VMM dropped them
    /// (madvise(MADV_DONTNEED): a balloon inflating, free page reporting)
    /// and the kernel told us with a REMOVE event. They are missing again and
    /// read as zeros from now on: a fault on one gets a zero page, never a
    /// fetch, and no block install covers them any more (a fetch in flight
    /// or streaming that lands later skips them, as does an install from
    /// the cache). Faults already waiting on one for its block are served
    /// with a zero page at once.
    ///
    /// The driver must apply this before any install decided earlier can
    /// land after the kernel drops the pages (it holds installs off while it
    /// reads the event and calls this).
    pub fn remove(&mut self, start: u64, len: u64) -> Result<Vec<Action>, PolicyError> {
        let total = self.manifest.total_pages();
        let end =
            start
                .checked_add(len)
                .filter(|&e| e <= total)
                .ok_or(PolicyError::PageOutOfRange {
                    page: start.saturating_add(len.saturating_sub(1)),
                    total,
                })?;
        for p in start..end {
            if !self.is_removed(p) {
                self.removed[(p / 64) as usize] |= 1 << (p % 64);
                self.stats.removed_pages += 1;
            }
            self.present[(p / 64) as usize] &= !(1 << (p % 64));
        }
        let mut actions = Vec::new();
        let mut served = Vec::new();
        for state in &mut self.blocks {
            if let BlockState::InFlight { waiters, .. } = state {
                waiters.retain(|w| {
                    let gone = (start..end).contains(&w.page);
                    if gone {
                        served.push(*w);
                    }
                    !gone
                });
            }
        }
        for waiter in served {
            let runs = if self.is_present(waiter.page) {
                // Another waiter on the same page got it just above.
                Vec::new()
            } else {
                self.mark_present(waiter.page);
                vec![PageRun {
                    start: waiter.page,
                    len: 1,
                }]
            };
            actions.push(Action::ZeroFill { runs, waiter });
        }
        Ok(actions)
    }

    /// True when every block is installed or in flight (nothing left to stream).
    pub fn all_requested(&self) -> bool {
        self.blocks.iter().all(|b| !matches!(b, BlockState::Absent))
    }

    /// Blocks installed so far.
    pub fn installed_blocks(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| matches!(b, BlockState::Installed))
            .count()
    }

    /// Priority of a block's fetch while it is in flight.
    pub fn in_flight(&self, block: u32) -> Option<Priority> {
        match self.blocks.get(block as usize) {
            Some(BlockState::InFlight { priority, .. }) => Some(*priority),
            _ => None,
        }
    }

    /// A fault on `page`, read at `now`. `cached(block)` says whether the
    /// host cache holds the block's bytes (and, in a driver, pins them for
    /// the install that follows).
    pub fn fault(
        &mut self,
        page: u64,
        now: Instant,
        cached: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Vec<Action>, PolicyError> {
        let block = self.block_of(page)?;
        self.stats.faults += 1;
        let mut actions = Vec::new();
        if self.is_removed(page) {
            // Zeros, whatever the checkpoint held. Even when the page is
            // marked present: the fault says the kernel dropped it again (a
            // zero page installed just before the REMOVE's drop), and a zero
            // page on a present one only wakes.
            self.stats.removed_faults += 1;
            self.mark_present(page);
            self.count(FaultSource::Zero);
            let waiter = Waiter {
                page,
                at: now,
                source: FaultSource::Zero,
                block,
            };
            actions.push(Action::ZeroFill {
                runs: vec![PageRun {
                    start: page,
                    len: 1,
                }],
                waiter,
            });
            return Ok(actions);
        }
        let Some(block) = block else {
            let waiter = Waiter {
                page,
                at: now,
                source: FaultSource::Zero,
                block: None,
            };
            self.count(FaultSource::Zero);
            if self.is_present(page) {
                actions.push(Action::Joined { waiter });
            } else {
                let runs = self.zero_window(page);
                actions.push(Action::ZeroFill { runs, waiter });
            }
            return Ok(actions);
        };
        let mut waiter = Waiter {
            page,
            at: now,
            source: FaultSource::Demand,
            block: Some(block),
        };
        if self.is_present(page) {
            waiter.source = FaultSource::Prefetch;
            self.count(waiter.source);
            actions.push(Action::Joined { waiter });
        } else {
            match &mut self.blocks[block as usize] {
                BlockState::Installed => {
                    unreachable!("an installed block's pages are all present or removed")
                }
                BlockState::InFlight {
                    priority, waiters, ..
                } => {
                    waiter.source = FaultSource::Prefetch;
                    waiters.push(waiter);
                    if *priority < Priority::Demand {
                        let was = *priority;
                        *priority = Priority::Demand;
                        if was == Priority::Stream {
                            self.stream_in_flight -= 1;
                        }
                        actions.push(Action::Upgrade {
                            block,
                            priority: Priority::Demand,
                        });
                    }
                    self.count(FaultSource::Prefetch);
                }
                BlockState::Absent | BlockState::Delivered => {
                    if cached(block) {
                        waiter.source = FaultSource::Cache;
                        actions.extend(self.install(block, vec![waiter], Origin::Cache));
                    } else {
                        let fetch = self.start_fetch(block, Priority::Demand, vec![waiter]);
                        actions.push(fetch);
                    }
                    self.count(waiter.source);
                }
            }
        }
        self.prefetch_after(block, cached, &mut actions);
        Ok(actions)
    }

    fn count(&mut self, source: FaultSource) {
        let i = FaultSource::ALL
            .iter()
            .position(|s| *s == source)
            .expect("listed");
        self.stats.faults_by_source[i] += 1;
    }

    /// The zero pages not yet present in the aligned window around `page`.
    fn zero_window(&mut self, page: u64) -> Vec<PageRun> {
        let w = self.config.zero_window.max(1);
        let start = page - page % w;
        let end = (start + w).min(self.manifest.total_pages());
        let mut runs: Vec<PageRun> = Vec::new();
        for p in start..end {
            let zero = matches!(self.map.source(p), Some(PageSource::Zero));
            if !zero || self.is_present(p) || self.is_removed(p) {
                continue;
            }
            self.mark_present(p);
            self.stats.zero_pages += 1;
            match runs.last_mut() {
                Some(r) if r.end() == p => r.len += 1,
                _ => runs.push(PageRun { start: p, len: 1 }),
            }
        }
        runs
    }

    /// Prefetches the `prefetch_window` blocks after `block` in the prefetch
    /// order: cached ones are installed at once, absent ones fetched, and
    /// streaming ones raised to prefetch priority.
    fn prefetch_after(
        &mut self,
        block: u32,
        cached: &mut dyn FnMut(u32) -> bool,
        actions: &mut Vec<Action>,
    ) {
        let pos = self.order_pos[block as usize] as usize;
        let order_len = self.manifest.prefetch_order.len();
        let end = (pos + 1 + self.config.prefetch_window).min(order_len);
        for i in pos + 1..end {
            let next = self.manifest.prefetch_order[i];
            match &mut self.blocks[next as usize] {
                BlockState::Absent => {
                    if cached(next) {
                        actions.extend(self.install(next, Vec::new(), Origin::Cache));
                    } else {
                        let fetch = self.start_fetch(next, Priority::Prefetch, Vec::new());
                        actions.push(fetch);
                    }
                }
                BlockState::InFlight { priority, .. } if *priority == Priority::Stream => {
                    *priority = Priority::Prefetch;
                    self.stream_in_flight -= 1;
                    actions.push(Action::Upgrade {
                        block: next,
                        priority: Priority::Prefetch,
                    });
                }
                BlockState::InFlight { .. } | BlockState::Delivered | BlockState::Installed => {}
            }
        }
    }

    /// Marks the block in flight and returns its fetch.
    fn start_fetch(&mut self, block: u32, priority: Priority, waiters: Vec<Waiter>) -> Action {
        self.stats.fetches += 1;
        if priority == Priority::Stream {
            self.stream_in_flight += 1;
        }
        self.blocks[block as usize] = BlockState::InFlight { priority, waiters };
        Action::Fetch {
            block,
            priority,
            attempt: self.failures[block as usize],
        }
    }

    /// Marks the block's pages the install scope covers that are not yet
    /// present as present and returns the install of exactly those (`None`
    /// when there is nothing to copy and nobody to wake). The block ends
    /// installed when all its pages are present, delivered otherwise.
    fn install(&mut self, block: u32, waiters: Vec<Waiter>, origin: Origin) -> Option<Action> {
        let whole = self.config.install == InstallScope::Block;
        let manifest = self.manifest.clone();
        let mut runs: Vec<InstallRun> = Vec::new();
        let mut all_present = true;
        for (offset, page) in manifest.blocks[block as usize].page_iter().enumerate() {
            let offset = offset as u64;
            let wanted = whole || waiters.iter().any(|w| w.page == page);
            if wanted && !self.is_present(page) && !self.is_removed(page) {
                self.mark_present(page);
                match runs.last_mut() {
                    Some(r) if r.page + r.len == page && r.block_offset + r.len == offset => {
                        r.len += 1
                    }
                    _ => runs.push(InstallRun {
                        page,
                        len: 1,
                        block_offset: offset,
                    }),
                }
            }
            all_present &= self.is_present(page) || self.is_removed(page);
        }
        self.blocks[block as usize] = if all_present {
            BlockState::Installed
        } else {
            BlockState::Delivered
        };
        if runs.is_empty() && waiters.is_empty() {
            return None;
        }
        // Runs with a waiting page go first, the rest keep block order:
        // UFFDIO_COPY wakes the threads faulting in the range it fills, so
        // the vCPU resumes after its own run instead of the whole block
        // (a scattered 64 KiB block is about a dozen copies, ~50 µs here).
        runs.sort_by_key(|r| {
            !waiters
                .iter()
                .any(|w| (r.page..r.page + r.len).contains(&w.page))
        });
        if origin == Origin::Cache {
            self.stats.cache_installs += 1;
        }
        Some(Action::Install {
            block,
            runs,
            waiters,
            origin,
        })
    }

    /// A block's verified bytes are available (and in the host cache):
    /// install its pages not yet present and wake its waiters. A block that
    /// is not in flight (already installed) yields nothing.
    ///
    /// `source_latency` is how long the source took when this fetch went to
    /// one; the streaming window adapts to it.
    pub fn block_ready(
        &mut self,
        block: u32,
        now: Instant,
        source_latency: Option<Duration>,
    ) -> Result<Vec<Action>, PolicyError> {
        let state = self
            .blocks
            .get_mut(block as usize)
            .ok_or(PolicyError::NoSuchBlock(block))?;
        if !matches!(state, BlockState::InFlight { .. }) {
            return Ok(Vec::new());
        }
        let BlockState::InFlight {
            priority, waiters, ..
        } = std::mem::replace(state, BlockState::Absent)
        else {
            unreachable!("checked just above")
        };
        if priority == Priority::Stream {
            self.stream_in_flight -= 1;
        }
        if let Some(latency) = source_latency {
            self.stream_window
                .completed(latency, priority == Priority::Stream, now);
        }
        Ok(self
            .install(block, waiters, Origin::Fetched(priority))
            .into_iter()
            .collect())
    }

    /// Every source failed to deliver the block. With faults waiting, it is
    /// fetched again at demand priority (the driver waits
    /// [`retry_delay`]`(attempt)` first), until the block has failed
    /// [`MAX_FETCH_ATTEMPTS`] times: then it is failed
    /// ([`PolicyError::BlockFailed`]) and the restore must end, since the
    /// faults waiting for it can never be served. Without waiters it goes
    /// back to absent (its failures still count) and a later fault or the
    /// stream asks again.
    pub fn fetch_failed(&mut self, block: u32, _now: Instant) -> Result<Vec<Action>, PolicyError> {
        let state = self
            .blocks
            .get_mut(block as usize)
            .ok_or(PolicyError::NoSuchBlock(block))?;
        if !matches!(state, BlockState::InFlight { .. }) {
            return Ok(Vec::new());
        }
        let BlockState::InFlight { priority, waiters } =
            std::mem::replace(state, BlockState::Absent)
        else {
            unreachable!("checked just above")
        };
        self.failures[block as usize] += 1;
        if priority == Priority::Stream {
            // The cursor has moved on: a fault or a prefetch window asks again.
            self.stream_in_flight -= 1;
        }
        if waiters.is_empty() {
            return Ok(Vec::new());
        }
        let attempts = self.failures[block as usize];
        if attempts >= MAX_FETCH_ATTEMPTS {
            // The waiters stay unserved: their vCPUs stay blocked in the
            // fault until the VMM stops them.
            return Err(PolicyError::BlockFailed { block, attempts });
        }
        Ok(vec![self.start_fetch(block, Priority::Demand, waiters)])
    }

    /// Whether zero pages are still to be installed ahead.
    fn zero_ahead_left(&self) -> bool {
        self.config.zero_fill_ahead && self.zero_cursor.0 < self.manifest.zero_pages.len()
    }

    /// The next zero pages not yet present, up to a poll's share.
    fn zero_ahead(&mut self) -> Option<Action> {
        if !self.config.zero_fill_ahead {
            return None;
        }
        let mut runs: Vec<PageRun> = Vec::new();
        let mut budget = ZERO_AHEAD_PAGES_PER_POLL;
        while budget > 0 && self.zero_cursor.0 < self.manifest.zero_pages.len() {
            let run = self.manifest.zero_pages[self.zero_cursor.0];
            let page = run.start + self.zero_cursor.1;
            if self.zero_cursor.1 + 1 >= run.len {
                self.zero_cursor = (self.zero_cursor.0 + 1, 0);
            } else {
                self.zero_cursor.1 += 1;
            }
            budget -= 1;
            if self.is_present(page) || self.is_removed(page) {
                continue;
            }
            self.mark_present(page);
            self.stats.zero_pages += 1;
            match runs.last_mut() {
                Some(r) if r.end() == page => r.len += 1,
                _ => runs.push(PageRun {
                    start: page,
                    len: 1,
                }),
            }
        }
        (!runs.is_empty()).then_some(Action::ZeroFillAhead { runs })
    }

    /// Background streaming: fetches (or installs from cache) the next
    /// absent blocks in prefetch order while the token bucket and the
    /// in-flight limit allow.
    pub fn poll(&mut self, now: Instant, cached: &mut dyn FnMut(u32) -> bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(zero) = self.zero_ahead() {
            actions.push(zero);
        }
        let Some(stream) = self.config.stream else {
            return actions;
        };
        let mut cache_installs = 0;
        let order_len = self.manifest.prefetch_order.len();
        if !self.stream_has_room(stream.max_in_flight) {
            return actions;
        }
        while self.stream_cursor < order_len
            && self.stream_in_flight < self.stream_window.allowed().min(stream.max_in_flight)
            && cache_installs < MAX_CACHE_INSTALLS_PER_POLL
        {
            let block = self.manifest.prefetch_order[self.stream_cursor];
            if !matches!(self.blocks[block as usize], BlockState::Absent) {
                self.stream_cursor += 1;
                continue;
            }
            // Installs from the host cache cost no bandwidth.
            if cached(block) {
                self.stream_cursor += 1;
                cache_installs += 1;
                actions.extend(self.install(block, Vec::new(), Origin::Cache));
                continue;
            }
            let cost = self.manifest.blocks[block as usize].stored_len;
            if let Some(bucket) = self.bucket.as_mut() {
                if !bucket.try_take(cost, now) {
                    break;
                }
            }
            self.stream_cursor += 1;
            let fetch = self.start_fetch(block, Priority::Stream, Vec::new());
            actions.push(fetch);
        }
        actions
    }

    /// When [`Restore::poll`] next has something to do, if ever: `None`
    /// when streaming is off or done, or when it waits for in-flight
    /// streaming fetches to complete (poll again after `block_ready`).
    pub fn next_poll(&self, now: Instant) -> Option<Instant> {
        if self.zero_ahead_left() {
            return Some(now);
        }
        let stream = self.config.stream?;
        let next = self.manifest.prefetch_order[self.stream_cursor..]
            .iter()
            .find(|&&b| matches!(self.blocks[b as usize], BlockState::Absent))?;
        if !self.stream_has_room(stream.max_in_flight) {
            return None;
        }
        let cost = self.manifest.blocks[*next as usize].stored_len;
        match &self.bucket {
            Some(bucket) => Some(now + bucket.wait_for(cost, now)),
            None => Some(now),
        }
    }
}

#[cfg(test)]
mod tests;
