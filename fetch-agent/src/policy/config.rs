//! How a restore behaves: prefetch, streaming, zero pages, install scope;
//! the defaults `thaw agent` starts from, and the profiling restore.

/// Background streaming of the blocks no fault asked for yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamConfig {
    /// Stored bytes per second; `None`: as fast as `max_in_flight` fetches
    /// at a time go (they still never hold back a demand fetch).
    pub bytes_per_sec: Option<u64>,
    /// Most streaming fetches in flight at once; within it, the window
    /// adapts to the latency fetches see ([`super::StreamWindow`]).
    pub max_in_flight: usize,
}

/// Which pages of a block an install covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstallScope {
    /// Every page of the block not yet present: one fault brings in the
    /// block's pages the guest is about to need.
    #[default]
    Block,
    /// Only the pages faults wait for. The block is still fetched whole (one
    /// fetch) and kept in the host cache, but its other pages stay absent,
    /// so their first touch faults too and is served from the cache: every
    /// first touch is seen, which a profile needs.
    Page,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Blocks after a faulting block in the prefetch order to prefetch.
    pub prefetch_window: usize,
    /// Zero pages are installed in aligned windows of this many pages around
    /// a faulting zero page, so a run of zero pages costs one fault.
    pub zero_window: u64,
    pub stream: Option<StreamConfig>,
    /// Install every zero page in the background from the start. Each
    /// costs the kernel a page-table entry pointing at the shared zero page,
    /// versus a userfaultfd round trip through the agent when the guest
    /// touches it first (a later write is an ordinary in-kernel copy).
    pub zero_fill_ahead: bool,
    /// Whole blocks per install, or only the faulting pages (profiling).
    pub install: InstallScope,
}

/// What a restore does unless told otherwise (`thaw agent` flags start from
/// here): prefetch a few blocks after each fault, stream every other block
/// in prefetch order as fast as a bounded number of fetches in flight
/// allows (demand fetches always go first), and install the zero pages
/// ahead. Why, with measurements: `docs/evaluation.md`.
impl Default for Config {
    fn default() -> Self {
        Config {
            prefetch_window: 4,
            zero_window: 64,
            stream: Some(StreamConfig {
                bytes_per_sec: None,
                max_in_flight: DEFAULT_STREAM_IN_FLIGHT,
            }),
            zero_fill_ahead: true,
            install: InstallScope::Block,
        }
    }
}

impl Config {
    /// A profiling restore (`thaw agent --profile`): every first touch of a
    /// page faults, so the fault trace is a complete profile. Nothing is
    /// installed ahead of a fault (no prefetch, no streaming, no zero pages
    /// ahead, one zero page per fault) and a fault installs only its own
    /// page; the rest of its block waits in the host cache for its own
    /// fault, a local copy of one page.
    pub fn profiling() -> Self {
        Config {
            prefetch_window: 0,
            zero_window: 1,
            stream: None,
            zero_fill_ahead: false,
            install: InstallScope::Page,
        }
    }
}

/// Streaming fetches in flight per restore by default.
pub const DEFAULT_STREAM_IN_FLIGHT: usize = 512;
