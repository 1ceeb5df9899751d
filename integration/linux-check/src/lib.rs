//! Checking a Linux guest from the host: ICMP echo (is its network up) and ICMP timestamp (what
//! its wall clock says), in network namespaces that stand in for the checkpoint and restore hosts.
//! The kernel answers both itself, so this works for a guest with no user space at all.
//!
//! - [`icmp`]: the messages, without I/O.
//! - [`probe`]: sending them over a raw socket and waiting for answers.
//! - [`netns`]: namespaces with a tap device in each, deleted on drop.
//! - [`console`]: what the guest kernel's console log says, without I/O.
//! - [`scenario`]: boot, check, checkpoint, restore on another "host", check again.

pub mod console;
pub mod icmp;
pub mod netns;
pub mod probe;
pub mod scenario;
