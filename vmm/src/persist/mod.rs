//! Checkpoints: the VM state blob ([`state`]), taking a checkpoint ([`checkpoint`]) with
//! dirty-page logging before it (`dirty`, `dirty_tracker`), incremental checkpoints of a running
//! VM ([`lineage`]), restoring one ([`restore`]), and for
//! lazy restores the hand-off of guest memory to a fetch agent ([`handoff`]) and the connection
//! to it (`agent_link`).

pub(crate) mod agent_link;
pub mod checkpoint;
pub mod dirty;
pub mod dirty_tracker;
pub mod handoff;
pub mod lineage;
pub mod restore;
pub mod state;
