//! thaw's storage backend: the checkpoint format (manifest and compressed
//! locality blocks) and its writer and reader over any object store.
//!
//! [`format`] is free of I/O; [`writer`], [`reader`] and [`catalog`] drive it
//! against a [`Store`].

pub mod block_client;
pub mod block_server;
pub mod catalog;
mod cpu;
pub mod dirty_log;
pub mod error;
pub mod format;
pub mod handoff;
pub mod memory;
pub mod protocol;
pub mod quic_endpoint;
pub mod reader;
pub mod relayout;
pub mod store;
pub mod tls;
pub mod units;
pub mod workload;
pub mod writer;

pub use error::CheckpointError;
pub use format::{CheckpointId, Manifest};
pub use memory::MemoryRegion;
pub use reader::{Block, CheckpointReader};
pub use store::Store;
pub use writer::{write_checkpoint, WriteOptions, WriteSummary};
