//! Writing a generated workload as a directory in the workload format, and
//! recognising one written before. workload.json is written last (through
//! a rename), so a directory interrupted mid-write is never taken as done.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{Generated, Touch, PAGE};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: holds a workload that thaw did not generate; not overwriting it", dir.display())]
    NotGenerated { dir: PathBuf },
    #[error("no workload generator named {name:?} (known: {known})")]
    UnknownWorkload { name: String, known: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `dir/workload.json` says about who wrote it.
enum Existing {
    /// No workload.json (nothing there, or a write that did not finish).
    Nothing,
    /// Written by a thaw generator, with this marker.
    Generated(String),
    /// Anything else: a recording or a user's workload.
    Foreign,
}

fn existing(dir: &Path) -> Existing {
    let Ok(text) = std::fs::read_to_string(dir.join("workload.json")) else {
        return Existing::Nothing;
    };
    let value: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    match value
        .as_ref()
        .and_then(|v| v.get("generator"))
        .and_then(|g| g.as_str())
    {
        Some(marker) if marker.starts_with("thaw ") => Existing::Generated(marker.to_owned()),
        _ => Existing::Foreign,
    }
}

/// Whether `dir` holds a complete workload written with `marker`.
pub(super) fn holds(dir: &Path, marker: &str) -> bool {
    if !matches!(existing(dir), Existing::Generated(m) if m == marker) {
        return false;
    }
    let Ok(spec) = std::fs::read_to_string(dir.join("workload.json"))
        .map_err(drop)
        .and_then(|t| thaw_format::workload::parse_spec("workload.json", &t).map_err(drop))
    else {
        return false;
    };
    let memory_ok =
        std::fs::metadata(dir.join("memory.raw")).is_ok_and(|m| m.len() == spec.memory_bytes);
    let traces = std::fs::read_dir(dir.join("traces")).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "trace"))
            .count()
    });
    memory_ok && traces >= 3
}

/// The text of one trace file.
pub(super) fn trace_text(marker: &str, run: usize, touches: &[Touch]) -> String {
    let mut text = String::with_capacity(touches.len() * 16 + 64);
    let _ = writeln!(text, "# {marker}, run {run}: t_us page_index r|w");
    for t in touches {
        let _ = writeln!(
            text,
            "{} {} {}",
            t.t_us,
            t.page,
            if t.write { 'w' } else { 'r' }
        );
    }
    text
}

/// workload.json.
pub(super) fn spec_json(generated: &Generated, marker: &str) -> String {
    let spec = serde_json::json!({
        "name": generated.name,
        "description": generated.description,
        "page_size": PAGE,
        "memory_bytes": generated.memory.len(),
        "regions": [{"guest_phys_addr": 0, "size": generated.memory.len()}],
        "generator": marker,
    });
    serde_json::to_string_pretty(&spec).expect("JSON of plain values") + "\n"
}

/// Writes `generated` into `dir` (created if needed; an earlier generated
/// workload there is replaced, anything else is refused).
pub(super) fn write(dir: &Path, generated: &Generated, marker: &str) -> Result<(), GenerateError> {
    if let Existing::Foreign = existing(dir) {
        return Err(GenerateError::NotGenerated {
            dir: dir.to_owned(),
        });
    }
    let spec_path = dir.join("workload.json");
    match std::fs::remove_file(&spec_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&spec_path)(e)),
        _ => {}
    }
    let traces_dir = dir.join("traces");
    if traces_dir.exists() {
        std::fs::remove_dir_all(&traces_dir).map_err(io(&traces_dir))?;
    }
    std::fs::create_dir_all(&traces_dir).map_err(io(&traces_dir))?;

    let memory_path = dir.join("memory.raw");
    let file = std::fs::File::create(&memory_path).map_err(io(&memory_path))?;
    let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
    out.write_all(&generated.memory).map_err(io(&memory_path))?;
    out.into_inner()
        .map_err(|e| io(&memory_path)(e.into_error()))?
        .sync_all()
        .map_err(io(&memory_path))?;

    for (i, touches) in generated.traces.iter().enumerate() {
        let path = traces_dir.join(format!("{:02}.trace", i + 1));
        std::fs::write(&path, trace_text(marker, i + 1, touches)).map_err(io(&path))?;
    }

    let tmp = dir.join("workload.json.tmp");
    std::fs::write(&tmp, spec_json(generated, marker)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &spec_path).map_err(io(&spec_path))?;
    Ok(())
}
