//! What each request of the control API asks for, without I/O. Paths and bodies follow
//! Firecracker's API where it has the same action (`PATCH /vm`, `PUT /snapshot/create`,
//! `GET /`), so its users find their way; thaw's own actions use its style.

use super::http::{Request, Response};
use serde::Deserialize;

/// An action for the VM's owner to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `GET /`: who this is and what state it is in (Firecracker's instance info).
    Info,
    /// `GET /vm`: the VM's state, size and last checkpoint.
    Status,
    /// `PATCH /vm {"state": "Paused"}`
    Pause,
    /// `PATCH /vm {"state": "Resumed"}`
    Resume,
    /// `PUT /snapshot/create {"store": SPEC, "snapshot_type": "Full"|"Diff", "parent": ID}`:
    /// checkpoint into the store. A running VM is paused for it and resumed after (unless
    /// `"stop": true`); a paused one stays paused.
    Checkpoint(CheckpointRequest),
    /// `PUT /actions {"action_type": "Stop"}`: end the VM and its process.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// Where the checkpoint goes: a directory, file://, s3://BUCKET/PREFIX.
    pub store: String,
    /// `Full` writes all of memory; `Diff` only what the guest wrote since the parent (an error
    /// when there is none). Absent: a diff when the VM has a parent in this store, else full.
    #[serde(default)]
    pub snapshot_type: Option<SnapshotType>,
    /// The parent of a diff: a checkpoint this VM produced or was restored from. Absent: the
    /// VM's latest.
    #[serde(default)]
    pub parent: Option<String>,
    /// Stop the VM after the checkpoint instead of resuming it.
    #[serde(default)]
    pub stop: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    Full,
    Diff,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmStateWanted,
}

#[derive(Deserialize)]
enum VmStateWanted {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: Action,
}

#[derive(Deserialize)]
enum Action {
    Stop,
}

fn body<'a, T: Deserialize<'a>>(req: &'a Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body).map_err(|e| {
        Response::error(
            400,
            format!("{} {}: bad request body: {e}", req.method, req.path),
        )
    })
}

/// The command a request asks for, or the response refusing it.
pub fn route(req: &Request) -> Result<Command, Response> {
    let allowed =
        |methods: &str| Response::error(405, format!("{} {}: use {methods}", req.method, req.path));
    match req.path.as_str() {
        "/" => match req.method.as_str() {
            "GET" => Ok(Command::Info),
            _ => Err(allowed("GET")),
        },
        "/vm" => match req.method.as_str() {
            "GET" => Ok(Command::Status),
            "PATCH" => Ok(match body::<VmStateBody>(req)?.state {
                VmStateWanted::Paused => Command::Pause,
                VmStateWanted::Resumed => Command::Resume,
            }),
            _ => Err(allowed("GET or PATCH")),
        },
        "/snapshot/create" => match req.method.as_str() {
            "PUT" => {
                let ck: CheckpointRequest = body(req)?;
                if ck.snapshot_type == Some(SnapshotType::Full) && ck.parent.is_some() {
                    return Err(Response::error(
                        400,
                        "PUT /snapshot/create: a Full snapshot has no parent; drop \"parent\" or ask for a Diff",
                    ));
                }
                Ok(Command::Checkpoint(ck))
            }
            _ => Err(allowed("PUT")),
        },
        "/actions" => match req.method.as_str() {
            "PUT" => match body::<ActionBody>(req)?.action_type {
                Action::Stop => Ok(Command::Stop),
            },
            _ => Err(allowed("PUT")),
        },
        other => Err(Response::error(404, format!("no such resource {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn firecracker_shaped_requests_map_to_commands() {
        assert_eq!(route(&req("GET", "/", "")), Ok(Command::Info));
        assert_eq!(route(&req("GET", "/vm", "")), Ok(Command::Status));
        assert_eq!(
            route(&req("PATCH", "/vm", r#"{"state":"Paused"}"#)),
            Ok(Command::Pause)
        );
        assert_eq!(
            route(&req("PATCH", "/vm", r#"{"state":"Resumed"}"#)),
            Ok(Command::Resume)
        );
        assert_eq!(
            route(&req(
                "PUT",
                "/snapshot/create",
                r#"{"store":"s3://b/p","snapshot_type":"Full"}"#
            )),
            Ok(Command::Checkpoint(CheckpointRequest {
                store: "s3://b/p".into(),
                snapshot_type: Some(SnapshotType::Full),
                parent: None,
                stop: false
            }))
        );
        assert_eq!(
            route(&req(
                "PUT",
                "/snapshot/create",
                r#"{"store":"d","snapshot_type":"Diff","parent":"c1"}"#
            )),
            Ok(Command::Checkpoint(CheckpointRequest {
                store: "d".into(),
                snapshot_type: Some(SnapshotType::Diff),
                parent: Some("c1".into()),
                stop: false
            }))
        );
        assert_eq!(
            route(&req("PUT", "/actions", r#"{"action_type":"Stop"}"#)),
            Ok(Command::Stop)
        );
    }

    #[test]
    fn wrong_requests_are_refused_saying_why() {
        let status = |r: Result<Command, Response>| r.unwrap_err().status;
        let message = |r: Result<Command, Response>| r.unwrap_err().body.unwrap().to_string();
        assert_eq!(status(route(&req("DELETE", "/vm", ""))), 405);
        assert_eq!(status(route(&req("GET", "/machine-config", ""))), 404);
        let bad_state = route(&req("PATCH", "/vm", r#"{"state":"Frozen"}"#));
        assert!(
            message(bad_state.clone()).contains("Frozen"),
            "{bad_state:?}"
        );
        assert_eq!(status(bad_state), 400);
        // Firecracker's file paths mean nothing here: the error names the field.
        let fc = route(&req(
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#,
        ));
        assert!(message(fc.clone()).contains("snapshot_path"), "{fc:?}");
        let kind = route(&req(
            "PUT",
            "/snapshot/create",
            r#"{"store":"d","snapshot_type":"Partial"}"#,
        ));
        assert!(message(kind).contains("Partial"));
        let full_with_parent = route(&req(
            "PUT",
            "/snapshot/create",
            r#"{"store":"d","snapshot_type":"Full","parent":"c1"}"#,
        ));
        assert!(message(full_with_parent.clone()).contains("parent"));
        assert_eq!(status(full_with_parent), 400);
        assert_eq!(status(route(&req("PATCH", "/vm", "not json"))), 400);
    }
}
