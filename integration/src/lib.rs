//! thaw's command-line front end, end-to-end scenarios and benchmarks.

pub mod bench;
pub mod commands;
pub mod counting_store;
pub mod daemon;
pub mod demo;
pub mod link;
pub mod replay;
pub mod report;
pub mod s3_server;
pub mod serve;
pub mod synthetic;
pub mod workload_dir;
pub mod workloads;
