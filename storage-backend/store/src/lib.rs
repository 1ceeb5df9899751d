//! thaw's checkpoints in object storage: the writer, the reader, the
//! catalog of complete checkpoints, relayout, and the dirty-log objects, over
//! any `object_store` backend (a local directory or S3) named by a store URL
//! ([`Store`]). The bytes they read and write are `thaw_format`'s.

#![forbid(unsafe_code)]

pub mod capped_read;
pub mod catalog;
mod cpu;
pub mod dirty_log;
mod error;
pub mod gc;
pub mod import;
pub mod incremental;
pub mod keys;
mod memory;
pub mod names;
pub mod prometheus;
pub mod reader;
pub mod relayout;
pub mod store;
pub mod tenant_key;
mod writer;

pub use error::CheckpointError;
pub use incremental::write_incremental_checkpoint;
pub use memory::MemoryRegion;
pub use reader::{Block, CheckpointReader};
pub use store::Store;
pub use writer::{write_checkpoint, IncrementalStats, WriteOptions, WriteSummary};
