//! thaw's virtual machine monitor on KVM: boots the test guest (or Linux), pauses it at any moment,
//! saves its complete state, and restores it in a fresh process eagerly or lazily through
//! userfaultfd.

pub mod arch;
pub mod bench;
pub mod boot;
pub mod cli;
pub mod devices;
pub mod persist;
pub mod vstate;
