//! The evaluation page: `docs/evaluation.md` and its SVG charts, generated from the rows
//! `thaw-bench restore` writes. Parsing, analysis and rendering are pure functions of the rows
//! and a [`ReportMeta`] (same input, same bytes); [`write_report`] and [`read_rows`] are the
//! thin file-system driver around them.

pub(crate) mod analysis;
pub(crate) mod bars;
pub(crate) mod cdf;
pub mod cli;
pub mod format;
pub mod host;
pub(crate) mod markdown;
pub(crate) mod rows;
pub(crate) mod svg;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use analysis::{Evaluation, Tally, Verdict};
pub use rows::{parse_rows, LatencySummary, Link, Row, Strategy};

use cdf::CdfSource;
use markdown::LinkCharts;

/// What the page says about where its figures come from; the caller supplies it, nothing is
/// made up.
#[derive(Debug, Clone)]
pub struct ReportMeta {
    /// Command lines that regenerate the page, in the order to run them.
    pub commands: Vec<String>,
    /// When the rows were measured, e.g. `2025-06-01`.
    pub date: String,
    /// What they were measured on, e.g. the output of [`host::this_machine`].
    pub machine: String,
    /// The workload whose faults the latency CDFs show; None merges all workloads.
    pub cdf_workload: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Analysis(#[from] analysis::AnalysisError),
    #[error("no rows for workload {name:?}, chosen for the latency CDFs (workloads: {known})")]
    UnknownCdfWorkload { name: String, known: String },
}

/// The page and its charts, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedReport {
    pub page: String,
    /// (path relative to the page's directory, SVG text), in a fixed order.
    pub charts: Vec<(String, String)>,
    pub tally: Tally,
}

/// Renders the page, whose charts live in the directory `chart_dir` beside it.
pub fn render_report(
    rows: &[Row],
    meta: &ReportMeta,
    chart_dir: &str,
) -> Result<RenderedReport, ReportError> {
    let eval = Evaluation::new(rows)?;
    let cdf_source = match &meta.cdf_workload {
        None => CdfSource::AllMerged,
        Some(name) if eval.workloads.contains(&name.as_str()) => CdfSource::Workload(name),
        Some(name) => {
            return Err(ReportError::UnknownCdfWorkload {
                name: name.clone(),
                known: eval.workloads.join(", "),
            })
        }
    };
    let mut charts = Vec::new();
    let mut links = Vec::new();
    for link in eval.links() {
        let mut place = |stem: &str, svg: Option<String>| {
            svg.map(|svg| {
                let path = format!("{chart_dir}/{stem}-{}.svg", link.name());
                charts.push((path.clone(), svg));
                path.replace(' ', "%20")
            })
        };
        let time_to_finish = place("time-to-finish", bars::render(&eval, link));
        let fault_latency = place("fault-latency", cdf::render(&eval, link, cdf_source));
        links.push(LinkCharts {
            link,
            time_to_finish,
            fault_latency,
        });
    }
    Ok(RenderedReport {
        page: markdown::render(&eval, meta, cdf_source, &links),
        charts,
        tally: eval.tally(),
    })
}

/// Writes the page to `out` and its charts to a directory named after it beside it
/// (`docs/evaluation.md` → `docs/evaluation/*.svg`). Returns what was rendered.
pub fn write_report(rows: &[Row], out: &Path, meta: &ReportMeta) -> anyhow::Result<RenderedReport> {
    let chart_dir = out
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{}: the page needs a file name", out.display()))?;
    let rendered = render_report(rows, meta, chart_dir)?;
    let base = out.parent().unwrap_or(Path::new(""));
    std::fs::create_dir_all(base.join(chart_dir))
        .with_context(|| format!("creating {}", base.join(chart_dir).display()))?;
    for (path, svg) in &rendered.charts {
        let path = base.join(path);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    // The page last, so it never links to a chart that is not there yet.
    std::fs::write(out, &rendered.page).with_context(|| format!("writing {}", out.display()))?;
    Ok(rendered)
}

/// Reads and concatenates the rows of several files; errors name the file and row, and a
/// workload × link × strategy measured twice (even across files) is refused.
pub fn read_rows(paths: &[PathBuf]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut origins = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
        let parsed = parse_rows(&text, &name)?;
        origins.extend((1..=parsed.len()).map(|n| format!("{name} row {n}")));
        rows.extend(parsed);
    }
    if let Some((first, second)) = rows::find_duplicate(&rows) {
        anyhow::bail!(
            "{} and {} both measure {}",
            origins[first],
            origins[second],
            rows[second].label()
        );
    }
    Ok(rows)
}
