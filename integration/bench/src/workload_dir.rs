//! Reads a workload directory (docs/format.md, "Workload files") into memory:
//! `workload.json`, `memory.raw` (or `memory.raw.zst`) and `traces/*.trace`,
//! parsed by `thaw_format::workload`.

use std::path::{Path, PathBuf};

use thaw_format::workload::{parse_spec, parse_trace, Trace, WorkloadError, WorkloadSpec};

/// A workload directory, read into memory.
#[derive(Debug)]
pub struct Workload {
    pub dir: PathBuf,
    pub spec: WorkloadSpec,
    /// `memory.raw`: the regions' bytes concatenated in the listed order.
    pub memory: Vec<u8>,
    /// `traces/*.trace` in file-name order.
    pub traces: Vec<Trace>,
}

impl Workload {
    /// Reads `dir/workload.json`, `dir/memory.raw` and every
    /// `dir/traces/*.trace` (in file-name order).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, WorkloadError> {
        let dir = dir.as_ref();
        let spec_path = dir.join("workload.json");
        let spec = parse_spec(&shown(&spec_path), &read_text(&spec_path)?)?;

        let (memory_path, memory) = read_memory(dir)?;
        if memory.len() as u64 != spec.memory_bytes {
            return Err(WorkloadError::MemorySize {
                file: shown(&memory_path),
                expected: spec.memory_bytes,
                got: memory.len() as u64,
            });
        }

        let traces_dir = dir.join("traces");
        let entries = match std::fs::read_dir(&traces_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WorkloadError::MissingTraces {
                    dir: shown(&traces_dir),
                })
            }
            Err(source) => {
                return Err(WorkloadError::Io {
                    file: shown(&traces_dir),
                    source,
                })
            }
        };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| WorkloadError::Io {
                file: shown(&traces_dir),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "trace") {
                paths.push(path);
            }
        }
        paths.sort();
        let total_pages = spec.total_pages();
        let traces = paths
            .iter()
            .map(|p| {
                let name = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                parse_trace(&shown(p), &name, &read_text(p)?, total_pages)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            dir: dir.to_owned(),
            spec,
            memory,
            traces,
        })
    }
}

/// `memory.raw`, or `memory.raw.zst` decompressed when only that is there
/// (recordings ship compressed: mostly zero pages).
fn read_memory(dir: &Path) -> Result<(PathBuf, Vec<u8>), WorkloadError> {
    let raw = dir.join("memory.raw");
    match std::fs::read(&raw) {
        Ok(bytes) => return Ok((raw, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(WorkloadError::Io {
                file: shown(&raw),
                source,
            })
        }
    }
    let zst = dir.join("memory.raw.zst");
    let file = match std::fs::File::open(&zst) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(WorkloadError::MissingMemory { file: shown(&raw) })
        }
        Err(source) => {
            return Err(WorkloadError::Io {
                file: shown(&zst),
                source,
            })
        }
    };
    let corrupt = |reason: String| WorkloadError::Io {
        file: shown(&zst),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    };
    let mut decoder = ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(file))
        .map_err(|e| corrupt(format!("not a zstd stream: {e}")))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut decoder, &mut bytes)
        .map_err(|e| corrupt(format!("decompressing: {e}")))?;
    Ok((zst, bytes))
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn read_text(path: &Path) -> Result<String, WorkloadError> {
    std::fs::read_to_string(path).map_err(|source| WorkloadError::Io {
        file: shown(path),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"name": "t", "page_size": 4096, "memory_bytes": 40960,
        "regions": [{"guest_phys_addr": 0, "size": 32768},
                    {"guest_phys_addr": 1048576, "size": 8192}],
        "future_key": {"anything": [1, 2]}}"#;

    fn write_dir(memory: Option<usize>, traces: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("workload.json"), SPEC).unwrap();
        if let Some(len) = memory {
            std::fs::write(dir.path().join("memory.raw"), vec![7u8; len]).unwrap();
        }
        if !traces.is_empty() {
            std::fs::create_dir(dir.path().join("traces")).unwrap();
            for (name, text) in traces {
                std::fs::write(dir.path().join("traces").join(name), text).unwrap();
            }
        }
        dir
    }

    #[test]
    fn load_reads_traces_in_file_name_order() {
        let dir = write_dir(
            Some(40960),
            &[
                ("02.trace", "0 2\n"),
                ("01.trace", "0 1\n"),
                ("notes.txt", "x"),
            ],
        );
        let w = Workload::load(dir.path()).unwrap();
        let names: Vec<&str> = w.traces.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["01", "02"]);
        assert_eq!(w.memory.len(), 40960);
    }

    #[test]
    fn load_names_missing_or_wrong_files() {
        let dir = write_dir(None, &[("01.trace", "0 1\n")]);
        let err = Workload::load(dir.path()).unwrap_err();
        assert!(matches!(err, WorkloadError::MissingMemory { .. }), "{err}");
        assert!(err.to_string().contains("memory.raw"), "{err}");

        let dir = write_dir(Some(4096), &[("01.trace", "0 1\n")]);
        let err = Workload::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                WorkloadError::MemorySize {
                    expected: 40960,
                    got: 4096,
                    ..
                }
            ),
            "{err}"
        );

        let dir = write_dir(Some(40960), &[]);
        let err = Workload::load(dir.path()).unwrap_err();
        assert!(matches!(err, WorkloadError::MissingTraces { .. }), "{err}");

        let dir = write_dir(
            Some(40960),
            &[("01.trace", "0 1\n"), ("02.trace", "0 99\n")],
        );
        let err = Workload::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("02.trace:1: page 99"), "{err}");
    }

    /// The real recording in ../shared/workloads: its description and traces parse,
    /// and the figures in its README hold. Its memory image is compressed
    /// (and must not be copied into the repository), so the memory part is
    /// checked by `Workload::load` pointing out the packed image.
    #[test]
    fn shell_recording_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/workloads/shell");
        let dir = if dir.exists() {
            dir
        } else {
            PathBuf::from("/work/shared/workloads/shell")
        };
        if !dir.exists() {
            eprintln!("skipping: {} not present", dir.display());
            return;
        }
        let spec_path = dir.join("workload.json");
        let spec = parse_spec(
            "workload.json",
            &std::fs::read_to_string(spec_path).unwrap(),
        )
        .unwrap();
        assert_eq!((spec.name.as_str(), spec.total_pages()), ("shell", 32768));
        let mut counts = Vec::new();
        for name in ["01", "02", "03"] {
            let path = dir.join("traces").join(format!("{name}.trace"));
            let text = std::fs::read_to_string(&path).unwrap();
            let trace = parse_trace(&shown(&path), name, &text, spec.total_pages()).unwrap();
            assert_eq!(&trace.pages()[..3], &[192, 193, 194]);
            counts.push(trace.events.len());
        }
        assert_eq!(counts, [3938, 3923, 3260]);
        let workload = Workload::load(&dir).unwrap();
        assert_eq!(workload.memory.len() as u64, spec.memory_bytes);
        assert_eq!(workload.traces.len(), 3);
    }
}
