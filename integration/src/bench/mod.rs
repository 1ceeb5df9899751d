//! Benchmarks: each prints a table and writes its figures as JSON.

pub mod checkpoint;
pub mod fault_latency;
pub mod fleet;
pub mod resume;
pub mod stream;

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
