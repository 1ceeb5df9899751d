//! The policy's vocabulary: how urgent a fetch is, where a fault's page came
//! from, a fault waiting to be served, and the actions the policy hands its
//! driver to carry out. Plain data, no decisions (those are in `mod.rs`).

use std::time::Instant;

use thaw_format::PageRun;

/// How urgent a fetch is. Ordered: a higher priority is served first, and a
/// demand fetch never waits behind a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Background streaming of the rest of memory under a bandwidth cap.
    Stream = 0,
    /// A neighbour of a faulting block in the prefetch order.
    Prefetch = 1,
    /// A vCPU is blocked on it.
    Demand = 2,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Stream => "stream",
            Priority::Prefetch => "prefetch",
            Priority::Demand => "demand",
        }
    }
}

/// Where the page of a fault came from (the fault trace's `source` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultSource {
    /// Its block was in the host cache at fault time.
    Cache,
    /// Its block was already on its way (prefetch or streaming), or already
    /// installed when the fault was read.
    Prefetch,
    /// The fault started the block's fetch.
    Demand,
    /// A zero page.
    Zero,
}

impl FaultSource {
    pub const ALL: [FaultSource; 4] = [
        FaultSource::Cache,
        FaultSource::Prefetch,
        FaultSource::Demand,
        FaultSource::Zero,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultSource::Cache => "cache",
            FaultSource::Prefetch => "prefetch",
            FaultSource::Demand => "demand",
            FaultSource::Zero => "zero",
        }
    }
}

/// A fault that is waiting to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    pub page: u64,
    /// When the fault was read.
    pub at: Instant,
    pub source: FaultSource,
    /// The block holding the page (`None` for zero pages).
    pub block: Option<u32>,
}

/// Consecutive pages of a block to install: guest pages `page .. page + len`
/// are the block's pages `block_offset .. block_offset + len` (in pages, in
/// block order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallRun {
    pub page: u64,
    pub len: u64,
    pub block_offset: u64,
}

/// Where the bytes of an install come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The host cache, at the moment of the decision.
    Cache,
    /// A fetch of this priority that just completed.
    Fetched(Priority),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy these pages of the block's decoded bytes into guest memory
    /// (waking their waiters), then wake `waiters` whose page was covered.
    Install {
        block: u32,
        runs: Vec<InstallRun>,
        waiters: Vec<Waiter>,
        origin: Origin,
    },
    /// Start fetching a block. `attempt` counts earlier failed rounds over
    /// all sources (0 the first time).
    Fetch {
        block: u32,
        priority: Priority,
        attempt: u32,
    },
    /// A block already in flight became more urgent.
    Upgrade { block: u32, priority: Priority },
    /// Install zero pages (`UFFDIO_ZEROPAGE`), then the waiter is served.
    ZeroFill { runs: Vec<PageRun>, waiter: Waiter },
    /// Install zero pages no fault asked for yet (background), so the guest
    /// never faults on them.
    ZeroFillAhead { runs: Vec<PageRun> },
    /// The page is already present, or its install was decided earlier and
    /// may still be copying: nothing to do but record the fault. The install
    /// wakes the faulting thread when its copy lands (UFFDIO_COPY and
    /// UFFDIO_ZEROPAGE wake the range they fill; the kernel re-checks the
    /// page before a faulting thread sleeps, so no wake is lost). Waking it
    /// here could only let it fault again before the copy lands.
    Joined { waiter: Waiter },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("page {page} is outside the checkpoint's {total} pages")]
    PageOutOfRange { page: u64, total: u64 },
    #[error("block {0} does not exist in this checkpoint")]
    NoSuchBlock(u32),
    /// No source delivered the block in this many attempts while faults
    /// waited for it.
    #[error("block {block} failed {attempts} fetch attempts, each over every source")]
    BlockFailed { block: u32, attempts: u32 },
}
