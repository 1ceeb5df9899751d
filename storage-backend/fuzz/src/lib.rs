//! Fuzz targets for every parser thaw runs on bytes it did not write: the
//! manifest (every format version), the VMM's hand-off message (both forms),
//! the dirty log, the VM state blob, the block protocol's frames and the
//! block codec. Each target takes arbitrary bytes and must neither panic nor
//! allocate beyond a bound proportional to its input; what a parser accepts
//! must survive re-encoding.
//!
//! Two drivers call the same functions: `tests/` on stable (a corpus of
//! valid seeds from the real encoders, plus a fixed number of seeded
//! mutations, in every `cargo test`), and the cargo-fuzz project in
//! `nightly/` for long runs (see README.md).

#![forbid(unsafe_code)]

pub mod mutate;
pub mod seeds;
pub mod targets;

pub use targets::{Target, TARGETS};
