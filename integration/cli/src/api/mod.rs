//! A running VM's control API: HTTP/1.1 and JSON on a Unix socket (`--api PATH`, mode 0600,
//! this user only), with Firecracker's paths and bodies where Firecracker has the same action.
//!
//! - [`http`] and [`routes`]: the protocol, without I/O.
//! - [`server`]: the socket and its thread; the VM's owner answers commands between guest events.
//! - [`client`]: what `thaw vm pause|resume|checkpoint|status|stop --api PATH` call.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;
