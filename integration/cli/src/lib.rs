//! What the `thaw` binary's subcommands do, apart from parsing their
//! arguments: checkpoint tools ([`commands`]), the block server ([`serve`]),
//! the demo ([`demo`]), and the child processes it and the benchmarks start
//! ([`daemon`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod commands;
pub mod control;
pub mod cpu;
pub mod daemon;
pub mod demo;
pub mod keys;
pub mod serve;
pub mod tenant;
pub mod vm;
