//! thaw's benchmarks, behind the `thaw-bench` binary: each benchmark prints a
//! table and writes JSON ([`benches`]). Around them: the trace replayer that
//! stands in for a guest ([`replay`]), emulated links between hosts
//! ([`link`]), generated workloads ([`workloads`], [`synthetic`]) and their
//! directories ([`workload_dir`]), and the evaluation page ([`report`]).

pub mod benches;
pub(crate) mod counting_store;
pub mod hooked_store;
pub mod link;
pub mod replay;
pub mod report;
pub mod synthetic;
pub mod workload_dir;
pub mod workloads;
