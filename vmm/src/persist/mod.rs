//! Checkpoints: the VM state blob, taking a checkpoint, restoring one, dirty-page logging, and
//! the hand-off of guest memory to a fetch agent.

pub mod agent_link;
pub mod checkpoint;
pub mod dirty;
pub mod dirty_tracker;
pub mod handoff;
pub mod restore;
pub mod state;
