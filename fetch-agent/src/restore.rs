//! One restore's driver: a thread blocking on the VM's userfaultfd (and on
//! the VMM's connection, whose closing ends the restore) runs the policy and
//! carries out its actions. Faults served from the host cache are handled
//! right there on that thread; misses are fetched on the tokio runtime, which
//! installs the block and wakes the waiters when it arrives.
//!
//! A failure on the runtime (a block failed for good, an install that went
//! wrong) ends the restore as a failure on the fault thread would: it is
//! recorded and the fault thread is woken through an eventfd in its poll set,
//! so the session ends with that error instead of leaving faults unserved.
//!
//! A REMOVE event (the VMM dropped pages: a balloon inflating) is applied to
//! the policy before the kernel drops the pages, which it does as soon as the
//! event is read: installs on the runtime hold the event gate (shared) from
//! their decision to their last copy, and the fault thread reads events
//! holding it exclusively. So an install decided before a REMOVE has landed
//! before the drop, and one decided after skips the removed pages: stale
//! bytes never land on a page the guest gave up. A copy the kernel refuses
//! while an event is pending (`EAGAIN`) is put aside and retried by the fault
//! thread after it has read that event, minus the pages it removed.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use userfaultfd::{Event, EventBuffer};
use vmm_sys_util::eventfd::EventFd;

use crate::cache::{BlockCache, FlightPriority};
use crate::fetch::{
    runs_of_blocks, Checkpoint, FetchError, Fetched, Fetcher, Request, STREAM_RUN_BLOCKS,
};
use crate::install::{InstallError, Installer};
use crate::metrics::{Counters, Metrics};
use crate::policy::{self, Action, Origin, Restore, Waiter};
use crate::trace::TraceRecorder;

/// What restores of one agent share.
pub struct AgentContext {
    pub fetcher: Arc<Fetcher>,
    pub metrics: Arc<Metrics>,
    pub runtime: Handle,
    pub policy: policy::Config,
    pub trace_dir: Option<PathBuf>,
}

impl AgentContext {
    pub fn cache(&self) -> &Arc<BlockCache> {
        self.fetcher.cache()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("polling the userfaultfd: {0}")]
    Poll(std::io::Error),
    #[error("reading the userfaultfd: {0}")]
    Read(String),
    #[error("installing pages: {0}")]
    Install(#[from] InstallError),
    #[error("fault at {addr:#x} outside the handed-off memory")]
    Outside { addr: u64 },
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// No source delivered a block the guest waits for, attempt after
    /// attempt ([`policy::MAX_FETCH_ATTEMPTS`]).
    #[error("block {block} of checkpoint {checkpoint} could not be fetched ({attempts} attempts, each over every source); last failure: {reason}")]
    BlockFailed {
        checkpoint: String,
        block: u32,
        attempts: u32,
        reason: String,
    },
    #[error("cannot create the restore's wake-up eventfd: {0}")]
    Eventfd(std::io::Error),
    /// The VMM moved or unmapped guest memory (or forked) under a restore:
    /// the hand-off no longer says where the memory is.
    #[error("the VMM {0} guest memory during the restore; thaw serves memory only where the hand-off mapped it")]
    Unsupported(&'static str),
}

/// How a restore ended.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub name: String,
    pub faults: u64,
    pub fetched_blocks: u64,
    pub fetched_bytes: u64,
    pub summary: String,
    /// Everything counted for this restore (faults by source, latencies).
    pub counters: Arc<Counters>,
}

struct State {
    policy: Restore,
    /// Priorities of this restore's fetches in flight, to raise on upgrades.
    flights: HashMap<u32, Arc<FlightPriority>>,
    trace: TraceRecorder,
}

pub struct RestoreDriver {
    name: String,
    checkpoint: Arc<Checkpoint>,
    installer: Installer,
    ctx: Arc<AgentContext>,
    state: Mutex<State>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    stream_kick: Notify,
    /// The first failure on the runtime, for the fault thread to end with.
    failure: Mutex<Option<RestoreError>>,
    /// Written when `failure` is set or an install is put aside: wakes the
    /// fault thread's poll.
    failure_wake: EventFd,
    /// Held shared by installs on the runtime from decision to copy, and
    /// exclusively while the fault thread reads events and applies REMOVEs.
    event_gate: RwLock<()>,
    /// Installs the kernel refused while an event was pending, for the fault
    /// thread to retry after reading it.
    deferred: Mutex<Vec<Deferred>>,
}

/// An install put aside until a pending event is read.
enum Deferred {
    /// Copy these bytes to pages from `page` on.
    Copy {
        page: u64,
        data: Bytes,
    },
    Zero {
        page: u64,
        len: u64,
    },
}

/// Blocks pinned from the cache while a decision is carried out.
type Pinned = Vec<(u32, Bytes)>;

impl RestoreDriver {
    pub fn new(
        name: String,
        checkpoint: Arc<Checkpoint>,
        installer: Installer,
        ctx: Arc<AgentContext>,
    ) -> Result<Arc<Self>, RestoreError> {
        let failure_wake = EventFd::new(libc::EFD_NONBLOCK).map_err(RestoreError::Eventfd)?;
        let now = Instant::now();
        let mut policy = Restore::new(checkpoint.manifest.clone(), ctx.policy.clone(), now);
        if Fetcher::runs_pay_off(&checkpoint) {
            policy.set_stream_batch(STREAM_RUN_BLOCKS);
        }
        Ok(Arc::new(RestoreDriver {
            name,
            checkpoint,
            installer,
            state: Mutex::new(State {
                policy,
                flights: HashMap::new(),
                trace: TraceRecorder::new(now),
            }),
            ctx,
            counters: Arc::new(Counters::default()),
            closed: AtomicBool::new(false),
            stream_kick: Notify::new(),
            failure: Mutex::new(None),
            failure_wake,
            event_gate: RwLock::new(()),
            deferred: Mutex::new(Vec::new()),
        }))
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves faults until the VMM closes `conn`, or until the restore fails
    /// (a block no source delivers, the uffd failing), then frees the
    /// restore: writes the trace and logs the summary. On failure the faults
    /// still waiting stay unserved (their vCPUs stay blocked): the caller
    /// tells the VMM why before it hangs up.
    pub fn serve(self: &Arc<Self>, conn: &UnixStream) -> Result<RestoreReport, RestoreError> {
        if self.ctx.policy.stream.is_some() || self.ctx.policy.zero_fill_ahead {
            let this = self.clone();
            self.ctx
                .runtime
                .spawn(async move { this.stream_loop().await });
        }
        let result = self.fault_loop(conn);
        self.closed.store(true, Ordering::SeqCst);
        self.stream_kick.notify_one();
        let report = self.finish();
        match result {
            Ok(()) => {
                tracing::info!(restore = %self.name, "restore ended: {}", report.summary);
                Ok(report)
            }
            Err(e) => {
                tracing::error!(restore = %self.name, "restore failed: {e}; {}", report.summary);
                Err(e)
            }
        }
    }

    fn finish(&self) -> RestoreReport {
        let st = self.lock();
        if let Some(dir) = &self.ctx.trace_dir {
            let path = dir.join(format!("{}.trace", self.name));
            let what = format!(
                "restore {} of checkpoint {} (page size {})",
                self.name, self.checkpoint.id, self.checkpoint.manifest.page_size
            );
            match st.trace.write(&path, &what) {
                Ok(()) => tracing::info!(restore = %self.name, "fault trace in {}", path.display()),
                Err(e) => tracing::warn!(restore = %self.name, "writing {}: {e}", path.display()),
            }
        }
        RestoreReport {
            name: self.name.clone(),
            faults: self.counters.total_faults(),
            fetched_blocks: self.counters.fetched_blocks(),
            fetched_bytes: self.counters.fetched_bytes(),
            summary: self.counters.summary(),
            counters: self.counters.clone(),
        }
    }

    fn fault_loop(self: &Arc<Self>, conn: &UnixStream) -> Result<(), RestoreError> {
        let mut fds = [
            libc::pollfd {
                fd: self.installer.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: conn.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.failure_wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut events = EventBuffer::new(64);
        loop {
            // SAFETY: `fds` is an array of initialised pollfd structs that
            // outlives the call; the length passed matches.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RestoreError::Poll(e));
            }
            if fds[2].revents & libc::POLLIN != 0 {
                if let Some(e) = self.take_failure() {
                    return Err(e);
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.read_events(&mut events)?;
            }
            self.retry_deferred()?;
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                tracing::info!(restore = %self.name, "userfaultfd closed");
                return Ok(());
            }
            if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                // The VMM sends nothing after the hand-off: readable means closed.
                let mut byte = [0u8; 1];
                // SAFETY: recv into a live one-byte buffer; MSG_DONTWAIT so it never blocks.
                let got = unsafe {
                    libc::recv(
                        conn.as_raw_fd(),
                        byte.as_mut_ptr().cast(),
                        1,
                        libc::MSG_DONTWAIT,
                    )
                };
                if got <= 0 {
                    tracing::info!(restore = %self.name, "the VMM closed its connection");
                    return Ok(());
                }
            }
        }
    }

    /// Reads a batch of events: REMOVEs are applied to the policy under the
    /// event gate (see the module's comment), then faults are served and the
    /// faults REMOVE released are zero-filled, in order.
    fn read_events(self: &Arc<Self>, events: &mut EventBuffer) -> Result<(), RestoreError> {
        let mut faults = Vec::new();
        let mut released = Vec::new();
        {
            let _gate = self.event_gate.write().unwrap_or_else(|e| e.into_inner());
            let batch = self
                .installer
                .uffd()
                .read_events(events)
                .map_err(|e| RestoreError::Read(e.to_string()))?;
            for event in batch {
                match event.map_err(|e| RestoreError::Read(e.to_string()))? {
                    Event::Pagefault { addr, .. } => faults.push(addr as u64),
                    Event::Remove { start, end } => {
                        let mut st = self.lock();
                        for (page, len) in
                            self.installer.layout().pages_in(start as u64, end as u64)
                        {
                            tracing::debug!(restore = %self.name, page, len, "the guest gave pages up");
                            released.extend(st.policy.remove(page, len)?);
                        }
                    }
                    Event::Unmap { .. } => return Err(RestoreError::Unsupported("unmapped")),
                    Event::Remap { .. } => return Err(RestoreError::Unsupported("moved (mremap)")),
                    Event::Fork { .. } => return Err(RestoreError::Unsupported("forked with")),
                }
            }
        }
        self.execute(released, &Vec::new(), None)?;
        for addr in faults {
            self.fault(addr)?;
        }
        Ok(())
    }

    /// Retries the installs the kernel refused while an event was pending,
    /// skipping pages removed since: on the fault thread, after the events
    /// were read.
    fn retry_deferred(self: &Arc<Self>) -> Result<(), RestoreError> {
        let items = std::mem::take(&mut *self.lock_deferred());
        if items.is_empty() {
            return Ok(());
        }
        let ps = self.installer.layout().page_size();
        for item in items {
            match item {
                Deferred::Copy { page, data } => {
                    let len = data.len() as u64 / ps;
                    let kept: Vec<(u64, u64)> = {
                        let st = self.lock();
                        let mut runs: Vec<(u64, u64)> = Vec::new();
                        for p in page..page + len {
                            if st.policy.is_removed(p) {
                                continue;
                            }
                            match runs.last_mut() {
                                Some((s, n)) if *s + *n == p => *n += 1,
                                _ => runs.push((p, 1)),
                            }
                        }
                        runs
                    };
                    for (p, n) in kept {
                        let from = ((p - page) * ps) as usize;
                        let to = ((p - page + n) * ps) as usize;
                        self.install_copy(p, data.slice(from..to))?;
                    }
                }
                Deferred::Zero { page, len } => self.install_zero(page, len)?,
            }
        }
        Ok(())
    }

    fn lock_deferred(&self) -> MutexGuard<'_, Vec<Deferred>> {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `data` to pages from `page` on; what the kernel refuses while
    /// an event is pending is put aside for the fault thread.
    fn install_copy(&self, page: u64, data: Bytes) -> Result<(), RestoreError> {
        match self.installer.copy(page, &data) {
            Err(InstallError::Changing { page: from }) => {
                let ps = self.installer.layout().page_size();
                let data = data.slice(((from - page) * ps) as usize..);
                self.defer(Deferred::Copy { page: from, data });
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// Installs zero pages; as [`RestoreDriver::install_copy`].
    fn install_zero(&self, page: u64, len: u64) -> Result<(), RestoreError> {
        match self.installer.zero(page, len) {
            Err(InstallError::Changing { page: from }) => {
                self.defer(Deferred::Zero {
                    page: from,
                    len: page + len - from,
                });
                Ok(())
            }
            other => Ok(other?),
        }
    }

    fn defer(&self, item: Deferred) {
        self.lock_deferred().push(item);
        if let Err(e) = self.failure_wake.write(1) {
            tracing::error!(restore = %self.name, "waking the fault thread: {e}");
        }
    }

    /// One fault read from the uffd.
    fn fault(self: &Arc<Self>, addr: u64) -> Result<(), RestoreError> {
        let at = Instant::now();
        let page = self
            .installer
            .layout()
            .page_of(addr)
            .ok_or(RestoreError::Outside { addr })?;
        let mut pinned: Pinned = Vec::new();
        let actions = {
            let mut st = self.lock();
            let cache = self.ctx.cache();
            let blocks = &self.checkpoint.manifest.blocks;
            st.policy.fault(page, at, &mut |b| {
                cache
                    .get(&blocks[b as usize].hash)
                    .map(|d| pinned.push((b, d)))
                    .is_some()
            })?
        };
        self.execute(actions, &pinned, None)
    }

    /// Carries out the policy's actions. `fetched` holds the bytes of a block
    /// that just arrived.
    fn execute(
        self: &Arc<Self>,
        actions: Vec<Action>,
        pinned: &Pinned,
        fetched: Option<(u32, &Bytes)>,
    ) -> Result<(), RestoreError> {
        let ps = self.installer.layout().page_size();
        // First streaming fetches, grouped into runs when the source pays per
        // request; everything else in order below.
        let (actions, streamed) = split_streaming(actions, Fetcher::runs_pay_off(&self.checkpoint));
        for run in runs_of_blocks(&streamed, STREAM_RUN_BLOCKS) {
            let requests =
                self.ctx
                    .fetcher
                    .request_run(&self.checkpoint, &run, self.counters.clone());
            for (block, request) in requests {
                self.await_request(block, request, 0)?;
            }
        }
        for action in actions {
            match action {
                Action::Install {
                    block,
                    runs,
                    waiters,
                    origin,
                } => {
                    let data = match origin {
                        Origin::Cache => pinned.iter().find(|(b, _)| *b == block).map(|(_, d)| d),
                        Origin::Fetched(_) => fetched.filter(|(b, _)| *b == block).map(|(_, d)| d),
                    }
                    .expect("the policy installs only blocks whose bytes it was shown");
                    let mut copied = 0u64;
                    for r in &runs {
                        let from = (r.block_offset * ps) as usize;
                        let to = ((r.block_offset + r.len) * ps) as usize;
                        self.install_copy(r.page, data.slice(from..to))?;
                        copied += r.len * ps;
                    }
                    if origin == Origin::Cache {
                        // What was copied: a profiling restore installs one
                        // page of a cached block at a time.
                        for c in [&self.ctx.metrics.counters, &*self.counters] {
                            c.cache_install(copied);
                        }
                    }
                    self.served(&waiters);
                }
                Action::Fetch {
                    block,
                    priority,
                    attempt,
                } => self.start_fetch(block, priority, attempt)?,
                Action::Upgrade { block, priority } => {
                    if let Some(fp) = self.lock().flights.get(&block) {
                        fp.raise(priority);
                    }
                }
                Action::ZeroFill { runs, waiter } => {
                    for r in &runs {
                        self.install_zero(r.start, r.len)?;
                    }
                    self.served(&[waiter]);
                }
                Action::ZeroFillAhead { runs } => {
                    for r in &runs {
                        self.install_zero(r.start, r.len)?;
                    }
                }
                Action::Joined { waiter } => self.served(&[waiter]),
            }
        }
        Ok(())
    }

    /// Records served faults: metrics and trace.
    fn served(&self, waiters: &[Waiter]) {
        if waiters.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut st = self.lock();
        for w in waiters {
            let latency = now.saturating_duration_since(w.at);
            self.counters.fault(w.source, latency);
            self.ctx.metrics.counters.fault(w.source, latency);
            st.trace.record(w.at, latency, w.page, w.block, w.source);
        }
    }

    fn start_fetch(
        self: &Arc<Self>,
        block: u32,
        priority: policy::Priority,
        attempt: u32,
    ) -> Result<(), RestoreError> {
        let request =
            self.ctx
                .fetcher
                .request(&self.checkpoint, block, priority, self.counters.clone());
        self.await_request(block, request, attempt)
    }

    /// Delivers a cached block at once, or waits for its fetch in a task.
    fn await_request(
        self: &Arc<Self>,
        block: u32,
        request: Request,
        attempt: u32,
    ) -> Result<(), RestoreError> {
        match request {
            Request::Ready(data) => {
                // Cached since the decision: deliver it at once.
                self.fetch_done(
                    block,
                    Ok(Fetched {
                        data,
                        source_latency: None,
                    }),
                )
            }
            Request::Pending(pending) => {
                self.lock().flights.insert(block, pending.priority.clone());
                let this = self.clone();
                self.ctx.runtime.spawn(async move {
                    if attempt > 0 {
                        tokio::time::sleep(policy::retry_delay(attempt)).await;
                    }
                    let result = pending.done.await;
                    let done = {
                        let _gate = this.event_gate.read().unwrap_or_else(|e| e.into_inner());
                        this.fetch_done(block, result)
                    };
                    if let Err(e) = done {
                        this.failed(e);
                    }
                });
                Ok(())
            }
        }
    }

    fn fetch_done(
        self: &Arc<Self>,
        block: u32,
        result: Result<Fetched, FetchError>,
    ) -> Result<(), RestoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let now = Instant::now();
        let (actions, data) = {
            let mut st = self.lock();
            st.flights.remove(&block);
            match result {
                Ok(f) => (
                    st.policy.block_ready(block, now, f.source_latency)?,
                    Some(f.data),
                ),
                Err(e) => {
                    tracing::warn!(restore = %self.name, "{e}");
                    let actions = match st.policy.fetch_failed(block, now) {
                        Err(policy::PolicyError::BlockFailed { block, attempts }) => {
                            return Err(RestoreError::BlockFailed {
                                checkpoint: self.checkpoint.id.to_string(),
                                block,
                                attempts,
                                reason: e.to_string(),
                            });
                        }
                        other => other?,
                    };
                    (actions, None)
                }
            }
        };
        let r = self.execute(actions, &Vec::new(), data.as_ref().map(|d| (block, d)));
        self.stream_kick.notify_one();
        r
    }

    /// A failure on the runtime: ends the restore (the fault thread returns
    /// it), unless the VMM is gone anyway.
    fn failed(&self, e: RestoreError) {
        if let RestoreError::Install(i) = &e {
            if i.vmm_gone() {
                self.closed.store(true, Ordering::SeqCst);
                return;
            }
        }
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
            drop(slot);
            if let Err(e) = self.failure_wake.write(1) {
                // Cannot happen short of a counter overflow; the fault thread
                // would then still see the failure at its next event.
                tracing::error!(restore = %self.name, "waking the fault thread: {e}");
            }
        }
    }

    fn take_failure(&self) -> Option<RestoreError> {
        let _ = self.failure_wake.read();
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Background streaming under the bandwidth cap, until everything is
    /// requested or the restore ends.
    async fn stream_loop(self: Arc<Self>) {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            let mut pinned: Pinned = Vec::new();
            let gate = self.event_gate.read().unwrap_or_else(|e| e.into_inner());
            let (actions, next, done) = {
                let mut st = self.lock();
                let cache = self.ctx.cache();
                let blocks = &self.checkpoint.manifest.blocks;
                let actions = st.policy.poll(now, &mut |b| {
                    cache
                        .get(&blocks[b as usize].hash)
                        .map(|d| pinned.push((b, d)))
                        .is_some()
                });
                (actions, st.policy.next_poll(now), st.policy.all_requested())
            };
            let executed = self.execute(actions, &pinned, None);
            drop(gate);
            if let Err(e) = executed {
                self.failed(e);
                return;
            }
            match next {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        _ = self.stream_kick.notified() => {}
                    }
                }
                None if done => return,
                None => self.stream_kick.notified().await,
            }
        }
    }
}

/// Takes first-attempt streaming fetches out of `actions` (their blocks, in
/// order) when `runs` is on; the other actions keep their order.
fn split_streaming(actions: Vec<Action>, runs: bool) -> (Vec<Action>, Vec<u32>) {
    if !runs {
        return (actions, Vec::new());
    }
    let mut rest = Vec::with_capacity(actions.len());
    let mut streamed = Vec::new();
    for action in actions {
        match action {
            Action::Fetch {
                block,
                priority: policy::Priority::Stream,
                attempt: 0,
            } => streamed.push(block),
            other => rest.push(other),
        }
    }
    (rest, streamed)
}
