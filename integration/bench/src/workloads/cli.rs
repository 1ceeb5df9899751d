//! `thaw-bench workload generate`: writes the workloads and prints one line each.

use std::path::Path;

use crate::workload_dir::Workload;
use anyhow::Context;
use thaw_format::units::format_bytes;

use super::summary::{summarize, Summary};
use super::{generate as generate_dirs, Params};

pub fn generate(out: &Path, seed: u64, only: &[String]) -> anyhow::Result<()> {
    let outcomes = generate_dirs(out, &Params::full(seed), only)?;
    for outcome in outcomes {
        let workload = Workload::load(&outcome.dir)
            .with_context(|| format!("reading back {}", outcome.dir.display()))?;
        let summary = summarize(&workload);
        println!(
            "{}{}",
            line(&summary),
            if outcome.reused {
                " (already there)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `NAME  MEMORY  touched A/B/C pages  non-zero N (P%)  lz4 R  ...`
pub fn line(s: &Summary) -> String {
    let touched: Vec<String> = s.touched.iter().map(|n| n.to_string()).collect();
    let seconds: Vec<String> = s
        .duration_us
        .iter()
        .map(|us| format!("{:.2}", *us as f64 / 1e6))
        .collect();
    format!(
        "{:<11} {:>9}  touched {} pages in {} s  non-zero {} pages ({:.0}%)  lz4 {:.2}x  overlap {:.2}-{:.2}",
        s.name,
        format_bytes(s.memory_bytes),
        touched.join("/"),
        seconds.join("/"),
        s.nonzero_pages(),
        100.0 * s.nonzero_pages() as f64 / s.total_pages as f64,
        s.lz4_ratio,
        s.jaccard_min,
        s.jaccard_max,
    )
}
