//! The block server: serves blocks of any checkpoint in its object store to
//! fetch agents over QUIC, with a bounded cache and one store read per block
//! however many agents ask for it at once.

pub(crate) mod cache;
mod metrics;
mod read_ahead;
mod service;

pub use metrics::ServerStats;
pub use service::{BlockServer, Drained, RunningServer};
