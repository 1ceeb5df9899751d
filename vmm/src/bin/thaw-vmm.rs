//! `thaw-vmm`: the vmm's commands on their own (the same as `thaw vm …`), used by the vmm's
//! fresh-process tests.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "thaw-vmm",
    about = "thaw's VMM: run, checkpoint and restore KVM guests"
)]
struct Cli {
    #[command(subcommand)]
    command: vmm::cli::VmCommand,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = vmm::cli::run(vmm::cli::VmArgs {
        command: cli.command,
    }) {
        eprintln!("error: {}", chain(&e));
        std::process::exit(1);
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text a message before it
/// already holds (thaw's errors name their source in their own message too).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
