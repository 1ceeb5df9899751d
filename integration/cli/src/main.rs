//! `thaw`: checkpoint KVM VMs into object storage and restore them lazily.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use thaw_cli::commands;
use thaw_cli::keys::KeyArgs;
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
    /// Make a checkpoint signing key pair (signing.key, 0600, and signing.pub), and with --tenant
    /// a tenant key, in --dir or the default key directory ($THAW_KEY_DIR, else
    /// ~/.config/thaw/keys).
    Keygen {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write a tenant key (tenant.key): checkpoints written with it are encrypted.
        #[arg(long)]
        tenant: bool,
    },
    /// Inspect checkpoints in a store.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Maintain a store: collect the objects no checkpoint uses.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Run, checkpoint and restore KVM guests.
    Vm(thaw_cli::vm::VmArgs),
    /// This host's CPU as restores see it, fleet CPU baselines, and whether a checkpoint runs
    /// on a host.
    Cpu(thaw_cli::cpu::CpuArgs),
    /// Run the fetch agent: serve restored VMs' page faults from locality blocks.
    Agent(fetch_agent::cli::Args),
    /// Serve checkpoint blocks to fetch agents over QUIC.
    BlockServer(thaw_cli::serve::BlockServerArgs),
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// List the complete checkpoints of a store, each checked against the trusted keys, with
    /// names, parent, sizes (own: in objects it wrote; shared: in its ancestors') and age.
    List {
        store: String,
        #[command(flatten)]
        keys: KeyArgs,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Point a new NAME at a checkpoint (or an existing one, with --move): anywhere an ID is
    /// taken, NAME may be given instead. Fails, naming where NAME points, if another writer
    /// changed it meanwhile.
    Tag {
        store: String,
        name: String,
        /// The checkpoint: its ID, or another NAME.
        #[arg(value_name = "ID|NAME")]
        checkpoint: String,
        /// Move NAME if it points at another checkpoint.
        #[arg(long = "move")]
        allow_move: bool,
    },
    /// Delete a checkpoint: its manifest and the names pointing at it. Its blocks stay while
    /// other checkpoints use them; `thaw store gc` frees the rest.
    Delete {
        store: String,
        #[arg(value_name = "ID|NAME")]
        checkpoint: String,
    },
    /// Check a checkpoint's signature, then fetch and hash-check every block (and decrypt it,
    /// when encrypted).
    Verify {
        store: String,
        #[arg(value_name = "ID|NAME")]
        id: String,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Rewrite a checkpoint with a layout learned from restore traces (the old one stays as it is).
    Relayout {
        store: String,
        #[arg(value_name = "ID|NAME")]
        id: String,
        #[command(flatten)]
        keys: KeyArgs,
        /// A fault trace in the workload format; repeat to merge several restores.
        #[arg(long = "trace", required = true)]
        traces: Vec<PathBuf>,
        /// Id of the new checkpoint (generated when absent).
        #[arg(long = "id")]
        new_id: Option<CheckpointId>,
    },
    /// Import a Firecracker snapshot (memory file, full or diff, and vmstate file) as a
    /// checkpoint, signed and encrypted like any write; prints its id as the last line.
    Import {
        store: String,
        #[command(flatten)]
        keys: KeyArgs,
        /// Firecracker's memory file (`mem_file_path` of its snapshot/create).
        #[arg(long = "firecracker-mem", value_name = "FILE")]
        memory: PathBuf,
        /// Firecracker's vmstate file (`snapshot_path`), kept opaque for `export`.
        #[arg(long = "firecracker-state", value_name = "FILE")]
        state: Option<PathBuf>,
        /// A guest memory region GPA:SIZE of the memory file, in file order (repeat; they must
        /// add up to the file) [default: one region at guest address 0].
        #[arg(long = "region", value_name = "GPA:SIZE")]
        regions: Vec<thaw_store::import::RegionSpec>,
        /// A fault trace to lay blocks out by (repeatable) [default: physical order].
        #[arg(long = "trace")]
        traces: Vec<PathBuf>,
        /// Id of the new checkpoint (generated when absent).
        #[arg(long = "id")]
        id: Option<CheckpointId>,
    },
    /// Write an imported checkpoint back as Firecracker snapshot files.
    Export {
        store: String,
        id: CheckpointId,
        #[command(flatten)]
        keys: KeyArgs,
        /// Where to write the vmstate file, byte for byte as imported.
        #[arg(long = "firecracker-state", value_name = "OUT")]
        state: PathBuf,
        /// Also write the memory file (the regions concatenated) here.
        #[arg(long = "firecracker-mem", value_name = "OUT")]
        memory: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Delete what no checkpoint uses: objects no live (or recently deleted) manifest
    /// references, older than --grace; leftovers of interrupted checkpoints included.
    Gc {
        store: String,
        /// Keep unreferenced objects younger than this: longer than any checkpoint write takes.
        #[arg(long, default_value = "24h", value_parser = thaw_format::units::parse_duration)]
        grace: std::time::Duration,
        /// Print what would be swept; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Sweep even if some manifest cannot be read or verified (its own objects are kept,
        /// but what it shares with ancestors may be swept).
        #[arg(long)]
        force: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

fn open_store(spec: &str) -> anyhow::Result<Store> {
    Store::open(spec).with_context(|| format!("opening store {spec}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
        _ => {}
    }
    runtime
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            store,
            memory,
            block_server,
            pki,
        } => {
            let opts = thaw_cli::demo::DemoOptions {
                store,
                memory_bytes: memory,
                block_server,
                pki,
            };
            tokio::task::spawn_blocking(move || thaw_cli::demo::run(opts)).await?
        }
        Command::Keygen { dir, tenant } => thaw_cli::keys::keygen(dir.as_deref(), tenant),
        Command::Checkpoint { command } => match command {
            CheckpointCommand::List { store, keys, json } => {
                commands::list(&open_store(&store)?, &keys.trust()?, json).await
            }
            CheckpointCommand::Tag {
                store,
                name,
                checkpoint,
                allow_move,
            } => commands::tag(&open_store(&store)?, &name, &checkpoint, allow_move).await,
            CheckpointCommand::Delete { store, checkpoint } => {
                commands::delete(&open_store(&store)?, &checkpoint).await
            }
            CheckpointCommand::Verify { store, id, keys } => {
                let store = keys.open_store(&store)?;
                let id = commands::resolve(&store, &id).await?;
                commands::verify(&store, &id, &keys.trust()?).await
            }
            CheckpointCommand::Relayout {
                store,
                id,
                keys,
                traces,
                new_id,
            } => {
                let store = keys.open_store(&store)?;
                let id = commands::resolve(&store, &id).await?;
                commands::relayout(&store, &id, &keys, &traces, new_id).await
            }
            CheckpointCommand::Import {
                store,
                keys,
                memory,
                state,
                regions,
                traces,
                id,
            } => {
                let args = commands::FirecrackerImport {
                    memory,
                    state,
                    regions,
                    traces,
                    id,
                };
                commands::import_firecracker(&keys.open_store(&store)?, &keys, &args).await
            }
            CheckpointCommand::Export {
                store,
                id,
                keys,
                state,
                memory,
            } => {
                commands::export_firecracker(
                    &keys.open_store(&store)?,
                    &id,
                    &keys.trust()?,
                    &state,
                    memory.as_deref(),
                )
                .await
            }
        },
        Command::Store { command } => match command {
            StoreCommand::Gc {
                store,
                grace,
                dry_run,
                force,
                json,
                keys,
            } => {
                let opts = thaw_store::gc::GcOptions {
                    grace,
                    dry_run,
                    force,
                };
                commands::gc(&open_store(&store)?, &keys.trust()?, &opts, json).await
            }
        },
        // The vmm is synchronous and makes its own runtime: run it on a plain thread.
        Command::Vm(args) => std::thread::spawn(move || thaw_cli::vm::run(args))
            .join()
            .map_err(|_| anyhow::anyhow!("vm command panicked"))?,
        Command::Cpu(args) => std::thread::spawn(move || thaw_cli::cpu::run(args))
            .join()
            .map_err(|_| anyhow::anyhow!("cpu command panicked"))?,
        Command::Agent(args) => fetch_agent::cli::run(args).await,
        Command::BlockServer(args) => thaw_cli::serve::run(args).await,
    }
}
