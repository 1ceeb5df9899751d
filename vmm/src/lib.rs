//! thaw's virtual machine monitor on KVM: boots the test guest (or Linux), pauses it at any moment,
//! saves its complete state, and restores it in a fresh process eagerly or lazily through
//! userfaultfd.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod cpuid;
pub mod devices;
pub mod dirty;
pub mod dirty_tracker;
pub mod emulate;
pub mod error;
pub mod handoff;
pub mod linux;
pub mod memory;
pub mod pageserver;
pub mod restore;
pub mod runner;
pub mod serial;
pub mod state;
pub mod testguest;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;

pub use error::{Error, Result};
