//! The block protocol between fetch agents and block servers: its frames,
//! free of I/O ([`wire`]), and the QUIC client ([`client`]) and block server
//! ([`server`]) that speak it, with their TLS ([`tls`]) and UDP endpoints
//! ([`endpoint`]), and which server is a block's home ([`shard`]).

#![forbid(unsafe_code)]

pub mod client;
pub mod endpoint;
pub mod server;
pub mod shard;
pub mod tls;
pub mod wire;
