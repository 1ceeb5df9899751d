//! `thaw-bench report`: render the evaluation page from rows written by `thaw-bench restore`.

use std::path::PathBuf;

use super::format::shell_line;
use super::{host, read_rows, write_report, ReportMeta};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Rows written by `thaw-bench restore --json`; repeat to concatenate several files.
    #[arg(long = "json", required = true)]
    pub json: Vec<PathBuf>,
    /// The page to write; its charts go to a directory named after it (docs/evaluation/ for
    /// docs/evaluation.md).
    #[arg(long)]
    pub out: PathBuf,
    /// The command line that produced the rows, shown on the page before this one.
    #[arg(long)]
    pub command: Option<String>,
    /// When the rows were measured [default: today, UTC].
    #[arg(long)]
    pub date: Option<String>,
    /// What they were measured on [default: CPU, CPUs, memory and kernel of this host].
    #[arg(long)]
    pub machine: Option<String>,
    /// Workload whose fault latencies the CDF charts show [default: all workloads merged].
    #[arg(long)]
    pub cdf_workload: Option<String>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let rows = read_rows(&args.json)?;
    // This invocation as typed, with the binary named as users call it.
    let invocation: Vec<String> = std::iter::once("thaw-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect();
    let meta = ReportMeta {
        commands: args
            .command
            .into_iter()
            .chain([shell_line(&invocation)])
            .collect(),
        date: args.date.unwrap_or_else(host::today_utc),
        machine: args.machine.unwrap_or_else(host::this_machine),
        cdf_workload: args.cdf_workload,
    };
    let rendered = write_report(&rows, &args.out, &meta)?;
    println!(
        "wrote {} and {} charts from {} rows; thaw meets the targets on {} of {} workload × link pairs",
        args.out.display(),
        rendered.charts.len(),
        rows.len(),
        rendered.tally.passed,
        rendered.tally.pairs()
    );
    Ok(())
}
