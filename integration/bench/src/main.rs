//! `thaw-bench`: thaw's benchmarks, apart from the product binary. Each
//! prints a table and writes its figures as JSON; `replay` is the trace
//! replayer process `restore` starts, `report` renders the evaluation page.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use thaw_bench::benches as bench;
use thaw_format::units::parse_size;

#[derive(Parser)]
#[command(
    name = "thaw-bench",
    version,
    about = "thaw's benchmarks: each prints a table and writes JSON"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Write DIR/NAME/ (workload.json, memory.raw, traces/) for each generated workload.
    Generate {
        /// Directory to write the workloads into.
        #[arg(long)]
        out: PathBuf,
        /// Only this workload (repeatable); all of them when absent.
        #[arg(long = "only")]
        only: Vec<String>,
        /// Seed of every random choice: the same seed gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Generate the restore benchmark's workloads (memory image and traces).
    Workload {
        #[command(subcommand)]
        command: WorkloadCommand,
    },
    /// Lazy-restore resume time (256 MiB, 4 GiB), checkpoint time, finish time eager vs lazy.
    Resume {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Directory under which the temporary store is created.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A full checkpoint of a running test guest, then an incremental one after it wrote 1% of
    /// its pages: times and bytes.
    Incremental {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Guest memory (4 GiB in the reported figures).
        #[arg(long, default_value = "4GiB", value_parser = parse_size)]
        mem: u64,
        /// Directory under which the temporary store is created.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Fault service latency through the fetch agent (cached, network) next to the bare uffd floor.
    FaultLatency {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Blocks (64 KiB) touched per measurement.
        #[arg(long, default_value_t = 2048)]
        blocks: usize,
    },
    /// Losing a block server mid-restore: the test guest restored through two block servers,
    /// clean and with the serving one SIGKILLed (`thaw` processes).
    Failover {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Clean and killed restores each (medians reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The agent's --source-timeout.
        #[arg(long, default_value = "2s", value_parser = thaw_format::units::parse_duration)]
        source_timeout: std::time::Duration,
    },
    /// A fleet of hosts restoring one checkpoint through a sharded tier of block servers: store
    /// reads, each server's share of requests, and the bytes the tier read.
    Fleet {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Guest memory of each restored VM.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        memory: u64,
        /// Hosts (fetch agents) restoring at once.
        #[arg(long, default_value_t = 16)]
        hosts: usize,
        /// Block servers in the tier.
        #[arg(long, default_value_t = 3)]
        block_servers: usize,
    },
    /// QUIC streaming throughput of blocks from a block server over loopback.
    Stream {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Size of the synthetic memory image served.
        #[arg(long, default_value = "512MiB", value_parser = parse_size)]
        memory: u64,
        /// Requests in flight at once; by default as many as a fetch agent
        /// keeps in flight when it streams a restore.
        #[arg(long, default_value_t = fetch_agent::policy::DEFAULT_STREAM_IN_FLIGHT)]
        concurrency: usize,
    },
    /// Restore strategies side by side: replay workload traces through the fetch agent over emulated links.
    Restore(RestoreArgs),
    /// The trace replayer process (started by `bench restore`): map memory as the vmm does, replay a trace.
    Replay(thaw_bench::replay::ReplayArgs),
    /// What an emulated link delivers: round trips, QUIC fetches and throughput through it.
    Link {
        /// rack, region or object-store.
        #[arg(long)]
        link: thaw_bench::link::LinkSpec,
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Bytes streamed (memory image, or object read by ranges).
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        memory: u64,
        /// Requests in flight when measuring throughput.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Write a synthetic memory image as a checkpoint and read it back.
    Checkpoint {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Size of the synthetic memory image.
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        memory: u64,
        /// Directory under which the temporary store is created.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Render the evaluation page (markdown and SVG charts) from `bench restore` rows.
    Report(thaw_bench::report::cli::ReportArgs),
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// A workload directory (workload.json, memory.raw[.zst], traces/); repeat for more.
    /// Without it, the generated set runs.
    #[arg(long = "workload")]
    workloads: Vec<PathBuf>,
    /// Also run the generated set (generated into --generated-dir unless already there).
    #[arg(long)]
    generated: bool,
    /// Where the generated workloads live.
    #[arg(long, default_value = "target/workloads")]
    generated_dir: PathBuf,
    /// Seed of the generated workloads.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Links to run over: rack, region, object-store (all when absent).
    #[arg(long = "link")]
    links: Vec<String>,
    /// Strategies to run (all when absent): eager, lazy-4k, fixed-blocks, locality,
    /// locality+prefetch, locality+prefetch+stream, oracle, thaw.
    #[arg(long = "strategy")]
    strategies: Vec<bench::restore::strategy::Strategy>,
    /// Where to write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A replay taking longer than this fails.
    #[arg(long, default_value = "10min", value_parser = thaw_format::units::parse_duration)]
    replay_timeout: std::time::Duration,
    /// Also write the evaluation page (e.g. docs/evaluation.md) and its charts from the rows.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the fetch agent's fault trace of every lazy run, in
    /// DIR/WORKLOAD-LINK-STRATEGY/ (trace format plus block, source and stall columns).
    #[arg(long, value_name = "DIR")]
    agent_traces: Option<PathBuf>,
    /// Time the legs of every demand fetch to the block server (to it, at
    /// it, back) and add their summary to each row (`demand_fetch_us`).
    #[arg(long)]
    hop_timings: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let hop_log = match &cli.command {
        BenchCommand::Restore(args) if args.hop_timings => {
            Some(bench::restore::hops::HopLog::default())
        }
        _ => None,
    };
    init_tracing(hop_log.as_ref());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // Its agents (and their block server) live in this process: it runs
    // them on the agent's default runtime.
    if let BenchCommand::FaultLatency { .. } = &cli.command {
        runtime.worker_threads(fetch_agent::cli::DEFAULT_RUNTIME_THREADS.into());
    }
    runtime
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli, hop_log))
}

/// Logs to stderr as `RUST_LOG` says (warnings by default), plus the hop
/// events of block requests into `hop_log` when given.
fn init_tracing(hop_log: Option<&bench::restore::hops::HopLog>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(hop_log.map(|log| log.layer()))
        .init();
}

async fn run(cli: Cli, hop_log: Option<bench::restore::hops::HopLog>) -> anyhow::Result<()> {
    match cli.command {
        BenchCommand::Workload {
            command: WorkloadCommand::Generate { out, only, seed },
        } => {
            tokio::task::spawn_blocking(move || {
                thaw_bench::workloads::cli::generate(&out, seed, &only)
            })
            .await?
        }
        BenchCommand::Failover {
            json,
            runs,
            source_timeout,
        } => tokio::task::spawn_blocking(move || {
            bench::failover::run(bench::failover::FailoverBench {
                json,
                runs,
                source_timeout,
                thaw: None,
            })
        })
        .await?
        .map(drop),
        BenchCommand::Fleet {
            json,
            memory,
            hosts,
            block_servers,
        } => tokio::task::spawn_blocking(move || {
            bench::fleet::run(bench::fleet::FleetBench {
                memory_bytes: memory,
                hosts,
                block_servers,
                json,
            })
        })
        .await?
        .map(drop),
        BenchCommand::Stream {
            json,
            memory,
            concurrency,
        } => bench::stream::run(bench::stream::StreamBench {
            memory_bytes: memory,
            concurrency,
            json,
        })
        .await
        .map(drop),
        BenchCommand::Link {
            link,
            json,
            memory,
            concurrency,
        } => bench::link::run(bench::link::LinkBench {
            link,
            memory_bytes: memory,
            concurrency,
            json,
        })
        .await
        .map(drop),
        BenchCommand::Resume { json, dir } => bench::resume::run(json, dir),
        BenchCommand::Incremental { json, mem, dir } => bench::incremental::run(mem, json, dir),
        BenchCommand::FaultLatency { json, blocks } => {
            bench::fault_latency::run(bench::fault_latency::FaultLatencyBench { blocks, json })
                .await
                .map(drop)
        }
        BenchCommand::Checkpoint { json, memory, dir } => {
            bench::checkpoint::run(bench::checkpoint::CheckpointBench {
                memory_bytes: memory,
                dir,
                json,
            })
            .await
            .map(drop)
        }
        BenchCommand::Restore(args) => {
            let links = if args.links.is_empty() {
                thaw_bench::link::LinkSpec::presets()
            } else {
                args.links
                    .iter()
                    .map(|l| l.parse())
                    .collect::<Result<Vec<_>, _>>()?
            };
            let strategies = if args.strategies.is_empty() {
                bench::restore::strategy::Strategy::ALL.to_vec()
            } else {
                args.strategies
            };
            let mut workloads = args.workloads;
            if workloads.is_empty() || args.generated {
                let (dir, seed) = (args.generated_dir.clone(), args.seed);
                let generated = tokio::task::spawn_blocking(move || {
                    thaw_bench::workloads::generate_all(&dir, seed, &[])
                })
                .await??;
                workloads.extend(generated);
            }
            let cfg = bench::restore::RestoreBench {
                workloads,
                links,
                strategies,
                thaw_bench: thaw_cli::daemon::sibling_binary("thaw-bench")?,
                json: args.json,
                replay_timeout: args.replay_timeout,
                agent_traces: args.agent_traces,
                hop_log,
            };
            let rows = tokio::task::spawn_blocking(move || bench::restore::run(cfg)).await??;
            if let Some(out) = args.report {
                let measured: Vec<_> = rows.into_iter().map(|r| r.measured).collect();
                let meta = thaw_bench::report::ReportMeta {
                    commands: vec![thaw_bench::report::format::shell_line(
                        &std::iter::once("thaw-bench".to_string())
                            .chain(std::env::args().skip(1))
                            .collect::<Vec<_>>(),
                    )],
                    date: thaw_bench::report::host::today_utc(),
                    machine: thaw_bench::report::host::this_machine(),
                    cdf_workload: None,
                };
                thaw_bench::report::write_report(&measured, &out, &meta)?;
                println!("wrote {}", out.display());
            }
            Ok(())
        }
        BenchCommand::Replay(args) => thaw_bench::replay::child::run(args),
        BenchCommand::Report(args) => thaw_bench::report::cli::run(args),
    }
}
