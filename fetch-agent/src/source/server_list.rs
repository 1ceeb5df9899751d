//! Where a tier's list of block servers comes from while the agent runs: a
//! file (one `HOST:PORT` per line, `#` comments) reloaded when it changes,
//! or a DNS name re-resolved periodically. Parsing is free of I/O; the
//! watchers are tokio tasks that hand each new list to the tier.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::source::tier::BlockServerTier;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("line {line}: {text:?} is not HOST:PORT (a block server's address and UDP port)")]
    NotAnAddress { line: usize, text: String },
}

/// The servers a list names, in order: one `HOST:PORT` per line; blank
/// lines and `#` comments (whole lines or after an address) are ignored.
pub fn parse_server_list(text: &str) -> Result<Vec<String>, ListError> {
    let mut servers = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        if !is_host_port(entry) {
            return Err(ListError::NotAnAddress {
                line: i + 1,
                text: entry.to_owned(),
            });
        }
        servers.push(entry.to_owned());
    }
    Ok(servers)
}

/// `HOST:PORT` or `[V6]:PORT`, with a port in 1..=65535 and no spaces.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|v6| !v6.is_empty())
    } else {
        !host.is_empty() && !host.contains(':')
    };
    host_ok && !s.contains(char::is_whitespace) && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Loads the list in `path` into `tier` now (failing if the file is missing
/// or malformed), then reloads it every `every` when its modification time
/// or size changed. A reload that fails keeps the servers the tier has.
pub fn watch_file(
    tier: Arc<BlockServerTier>,
    path: PathBuf,
    every: Duration,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut seen = stamp(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    apply(&tier, load(&path)?);
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let now = match stamp(&path) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("block servers file {}: {e}", path.display());
                    continue;
                }
            };
            if now == seen {
                continue;
            }
            seen = now;
            match load(&path) {
                Ok(servers) => apply(&tier, servers),
                Err(e) => tracing::warn!("{e}; keeping the block servers in use"),
            }
        }
    }))
}

/// Resolves `name` (`HOST:PORT`) into `tier` now (failing if it resolves
/// to nothing), then again every `every`. A name that stops resolving keeps
/// the servers the tier has. Must be called inside a tokio runtime.
pub fn watch_dns(
    tier: Arc<BlockServerTier>,
    name: String,
    every: Duration,
) -> Result<tokio::task::JoinHandle<()>, String> {
    // At start-up, before anything is served: a blocking lookup is fine.
    let mut first: Vec<String> = std::net::ToSocketAddrs::to_socket_addrs(name.as_str())
        .map_err(|e| format!("block servers name {name}: {e}"))?
        .map(|a| a.to_string())
        .collect();
    first.sort();
    first.dedup();
    if first.is_empty() {
        return Err(format!("block servers name {name}: resolves to nothing"));
    }
    apply(&tier, first);
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match resolve(&name).await {
                Ok(servers) => apply(&tier, servers),
                Err(e) => tracing::warn!("{e}; keeping the block servers in use"),
            }
        }
    }))
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

fn load(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("block servers file {}: {e}", path.display()))?;
    parse_server_list(&text).map_err(|e| format!("block servers file {}: {e}", path.display()))
}

/// Every address `name` resolves to, sorted (resolvers rotate their order).
async fn resolve(name: &str) -> Result<Vec<String>, String> {
    let mut servers: Vec<String> = tokio::net::lookup_host(name)
        .await
        .map_err(|e| format!("block servers name {name}: {e}"))?
        .map(|a| a.to_string())
        .collect();
    servers.sort();
    servers.dedup();
    if servers.is_empty() {
        return Err(format!("block servers name {name}: resolves to nothing"));
    }
    Ok(servers)
}

fn apply(tier: &BlockServerTier, servers: Vec<String>) {
    if servers == tier.servers() {
        return;
    }
    for (spec, e) in tier.set_servers(&servers) {
        tracing::warn!(server = spec.as_str(), "block server left out: {e}");
    }
    tracing::info!(servers = ?tier.servers(), "block servers in the tier");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_take_addresses_and_skip_comments_and_blanks() {
        let text = "# the rack's block servers\n\n10.0.0.1:4433\n  bs-2.internal:4433  # rack 2\n[fd00::3]:4433\n";
        assert_eq!(
            parse_server_list(text).unwrap(),
            vec!["10.0.0.1:4433", "bs-2.internal:4433", "[fd00::3]:4433"]
        );
        assert_eq!(
            parse_server_list("# none yet\n").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        for bad in [
            "10.0.0.1",
            "10.0.0.1:0",
            "host:port",
            "a b:1",
            "fd00::3:4433",
            ":4433",
        ] {
            let text = format!("10.0.0.1:4433\n{bad}\n");
            assert_eq!(
                parse_server_list(&text),
                Err(ListError::NotAnAddress {
                    line: 2,
                    text: bad.to_owned()
                }),
                "{bad}"
            );
        }
    }
}
