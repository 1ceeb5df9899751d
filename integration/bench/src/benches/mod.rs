//! Benchmarks: each prints a table and writes its figures as JSON.

pub mod checkpoint;
pub mod failover;
pub mod fault_latency;
pub mod fleet;
pub mod incremental;
pub(crate) mod latency;
pub mod link;
pub mod restore;
pub mod resume;
pub mod stream;
mod uffd_floor;

use std::path::Path;

use anyhow::Context;

/// Prints `fields` as a two-column table under `title` and writes them as a
/// JSON object to `json_path`.
pub fn report(
    title: &str,
    fields: &serde_json::Map<String, serde_json::Value>,
    json_path: Option<&Path>,
) -> anyhow::Result<()> {
    println!("{title}");
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in fields {
        let shown = match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                format!("{:.3}", n.as_f64().unwrap_or(0.0))
            }
            other => other.to_string(),
        };
        println!("  {k:<width$}  {shown}");
    }
    if let Some(path) = json_path {
        let text = serde_json::to_string_pretty(fields)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// User plus system CPU time of this process so far (from /proc, in clock
/// ticks of 10 ms).
pub fn process_cpu_seconds() -> f64 {
    cpu_seconds_from("/proc/self/stat")
}

/// CPU seconds (user and system) another process has used so far; 0 once it is gone.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    cpu_seconds_from(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_from(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
