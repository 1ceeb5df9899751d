//! Emulated network links for the restore benchmark: a UDP relay that adds
//! delay and a rate limit between fetch agent and block server, and an
//! object-store wrapper that adds first-byte latency and a per-request rate.

mod black_hole;
pub(crate) mod model;
pub(crate) mod relay;
pub(crate) mod slow_store;
pub(crate) mod spec;
mod sys;
mod udp_batch;

pub use black_hole::BlackHoleRelay;
pub use model::{LinkModel, LinkParams, Verdict};
pub use relay::{RelayError, RelayHandle, RelayStats, UdpRelay};
pub use slow_store::SlowStore;
pub use spec::{LinkSpec, LinkSpecError, LINK_NAMES};
