//! Checkpoints: the VM state blob, taking a checkpoint, restoring one, dirty-page logging, and
//! the hand-off of guest memory to a page server.

pub mod checkpoint;
pub mod dirty;
pub mod dirty_tracker;
pub mod handoff;
pub mod pageserver;
pub mod restore;
pub mod state;
