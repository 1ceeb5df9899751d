//! `thaw`: checkpoint KVM VMs into object storage and restore them lazily.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use integration::{bench, commands};
use thaw_format::units::parse_size;
use thaw_format::CheckpointId;
use thaw_store::Store;

#[derive(Parser)]
#[command(
    name = "thaw",
    version,
    about = "Checkpoint KVM VMs into object storage and restore them lazily"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job end to end on the embedded default (a local directory store).
    Demo {
        /// Store: a directory, file://DIR, or s3://BUCKET/PREFIX.
        #[arg(long, default_value = "thaw-store")]
        store: String,
        /// Guest memory size (e.g. 256MiB, 1GiB).
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        memory: u64,
        /// Use this block server (HOST:PORT) instead of starting one.
        #[arg(long, requires = "pki")]
        block_server: Option<std::net::SocketAddr>,
        /// Development PKI directory (ca.pem, client.pem, client.key), created if absent.
        #[arg(long)]
        pki: Option<PathBuf>,
    },
    /// Inspect checkpoints in a store.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Run, checkpoint and restore KVM guests.
    Vm(vmm::cli::VmArgs),
    /// Run the fetch agent: serve restored VMs' page faults from locality blocks.
    Agent(fetch_agent::cli::Args),
    /// Serve checkpoint blocks to fetch agents over QUIC.
    BlockServer(integration::serve::BlockServerArgs),
    /// Generate the restore benchmark's workloads (memory image and traces).
    Workload {
        #[command(subcommand)]
        command: WorkloadCommand,
    },
    /// Run a benchmark: print a table and write JSON.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// List the complete checkpoints of a store.
    List { store: String },
    /// Fetch and hash-check every block of a checkpoint.
    Verify { store: String, id: CheckpointId },
    /// Rewrite a checkpoint with a layout learned from restore traces (the old one stays as it is).
    Relayout {
        store: String,
        id: CheckpointId,
        /// A fault trace in the workload format; repeat to merge several restores.
        #[arg(long = "trace", required = true)]
        traces: Vec<PathBuf>,
        /// Id of the new checkpoint (generated when absent).
        #[arg(long = "id")]
        new_id: Option<CheckpointId>,
    },
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
    /// Lazy-restore resume time (256 MiB, 4 GiB), checkpoint time, finish time eager vs lazy.
    Resume {
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
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
    /// Object-store reads when a fleet of hosts restores one checkpoint through one block server.
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
    Replay(integration::replay::ReplayArgs),
    /// What an emulated link delivers: round trips, QUIC fetches and throughput through it.
    Link {
        /// rack, region or object-store.
        #[arg(long)]
        link: integration::link::LinkSpec,
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
    Report(integration::report::cli::ReportArgs),
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

fn open_store(spec: &str) -> anyhow::Result<Store> {
    Store::open(spec).with_context(|| format!("opening store {spec}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let hop_log = match &cli.command {
        Command::Bench {
            bench: BenchCommand::Restore(args),
        } if args.hop_timings => Some(bench::restore::hops::HopLog::default()),
        _ => None,
    };
    init_tracing(hop_log.as_ref());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    match &cli.command {
        Command::BlockServer(args) => {
            if let Some(threads) = args.threads {
                runtime.worker_threads(threads.into());
            }
        }
        Command::Agent(args) => {
            runtime.worker_threads(args.threads.into());
        }
        // Its agents (and their block server) live in this process: it
        // runs them on the agent's default runtime.
        Command::Bench {
            bench: BenchCommand::FaultLatency { .. },
        } => {
            runtime.worker_threads(fetch_agent::cli::DEFAULT_RUNTIME_THREADS.into());
        }
        _ => {}
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
        Command::Demo {
            store,
            memory,
            block_server,
            pki,
        } => {
            let opts = integration::demo::DemoOptions {
                store,
                memory_bytes: memory,
                block_server,
                pki,
            };
            tokio::task::spawn_blocking(move || integration::demo::run(opts)).await?
        }
        Command::Checkpoint { command } => match command {
            CheckpointCommand::List { store } => commands::list(&open_store(&store)?).await,
            CheckpointCommand::Verify { store, id } => {
                commands::verify(&open_store(&store)?, &id).await
            }
            CheckpointCommand::Relayout {
                store,
                id,
                traces,
                new_id,
            } => commands::relayout(&open_store(&store)?, &id, &traces, new_id).await,
        },
        // The vmm is synchronous and makes its own runtime: run it on a plain thread.
        Command::Vm(args) => std::thread::spawn(move || vmm::cli::run(args))
            .join()
            .map_err(|_| anyhow::anyhow!("vm command panicked"))?,
        Command::Agent(args) => fetch_agent::cli::run(args).await,
        Command::BlockServer(args) => integration::serve::run(args).await,
        Command::Workload {
            command: WorkloadCommand::Generate { out, only, seed },
        } => {
            tokio::task::spawn_blocking(move || {
                integration::workloads::cli::generate(&out, seed, &only)
            })
            .await?
        }
        Command::Bench { bench } => match bench {
            BenchCommand::Fleet {
                json,
                memory,
                hosts,
            } => tokio::task::spawn_blocking(move || {
                bench::fleet::run(bench::fleet::FleetBench {
                    memory_bytes: memory,
                    hosts,
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
                    integration::link::LinkSpec::presets()
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
                        integration::workloads::generate_all(&dir, seed, &[])
                    })
                    .await??;
                    workloads.extend(generated);
                }
                let cfg = bench::restore::RestoreBench {
                    workloads,
                    links,
                    strategies,
                    thaw: bench::restore::locate_thaw()?,
                    json: args.json,
                    replay_timeout: args.replay_timeout,
                    agent_traces: args.agent_traces,
                    hop_log,
                };
                let rows = tokio::task::spawn_blocking(move || bench::restore::run(cfg)).await??;
                if let Some(out) = args.report {
                    let measured: Vec<_> = rows.into_iter().map(|r| r.measured).collect();
                    let meta = integration::report::ReportMeta {
                        commands: vec![integration::report::format::shell_line(
                            &std::iter::once("thaw".to_string())
                                .chain(std::env::args().skip(1))
                                .collect::<Vec<_>>(),
                        )],
                        date: integration::report::host::today_utc(),
                        machine: integration::report::host::this_machine(),
                        cdf_workload: None,
                    };
                    integration::report::write_report(&measured, &out, &meta)?;
                    println!("wrote {}", out.display());
                }
                Ok(())
            }
            BenchCommand::Replay(args) => integration::replay::child::run(args),
            BenchCommand::Report(args) => integration::report::cli::run(args),
        },
    }
}
