//! The trace replayer: a process that maps guest memory exactly as the vmm
//! does, hands its userfaultfd to a fetch agent (or fills the memory itself,
//! for the all-memory-present baseline), then touches pages in the order of
//! a workload trace with the trace's think time between touches, and
//! reports how long it took. It runs the real restore path at full speed,
//! which the test guest cannot do on this machine's software KVM.
//!
//! [`pacing`] holds the timing model (free of I/O); [`child`] is the
//! replayer process; [`spawn`] starts one from the benchmark and reads its
//! result.

pub mod child;
pub(crate) mod pacing;
pub(crate) mod spawn;

pub use child::{ReplayArgs, ReplayResult};
pub use spawn::{replay, ReplayPlan};
