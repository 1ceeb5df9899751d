//! Calling a VM's control API: one request per connection.

use super::http::{self, Response};
use anyhow::Context;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Largest response read.
const MAX_RESPONSE: u64 = 1 << 20;

/// Sends `method path` with `body` to the API at `socket` and returns the response.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Response> {
    let mut conn = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the VM's control API at {}", socket.display()))?;
    conn.write_all(&http::encode_request(method, path, body))?;
    let mut buf = Vec::new();
    conn.take(MAX_RESPONSE)
        .read_to_end(&mut buf)
        .context("reading the response")?;
    Ok(http::parse_response(&buf)?)
}

/// As [`call`], failing with the API's message unless the status is 2xx; returns the body.
pub fn call_ok(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let r = call(socket, method, path, body)?;
    if !(200..300).contains(&r.status) {
        let message = r
            .body
            .as_ref()
            .and_then(|b| b.get("fault_message"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:?}", r.body));
        anyhow::bail!("{method} {path}: {} {message}", r.status);
    }
    Ok(r.body)
}
