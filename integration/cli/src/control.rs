//! The owner side of a running VM's control API: carries out pause, resume, checkpoint, status
//! and stop on the VM between guest events, and answers each request.

use crate::api::http::Response;
use crate::api::routes::{CheckpointRequest, Command, SnapshotType};
use crate::api::server::ApiServer;
use crate::keys::KeyArgs;
use std::path::Path;
use std::time::Instant;
use vmm::persist::checkpoint::{checkpoint, CheckpointOutcome};
use vmm::persist::dirty::DirtyConfig;
use vmm::persist::lineage::{Kind, Lineage};
use vmm::vstate::vm::Vm;

/// A VM's control API and what it reports.
pub struct Control<'a> {
    api: Option<ApiServer>,
    rt: &'a tokio::runtime::Runtime,
    keys: &'a KeyArgs,
    json: bool,
    started: Instant,
    /// Checkpoint this VM was restored from, if any.
    restored_from: Option<String>,
    last_checkpoint: Option<CheckpointOutcome>,
    checkpoints: u64,
    /// Dirty logging and the checkpoints later ones can be diffs of (with an API only).
    lineage: Option<Lineage>,
}

impl<'a> Control<'a> {
    /// Serves the API at `socket` if given; without one, [`Control::serve`] does nothing.
    pub fn new(
        socket: Option<&Path>,
        rt: &'a tokio::runtime::Runtime,
        keys: &'a KeyArgs,
        json: bool,
        restored_from: Option<String>,
    ) -> anyhow::Result<Control<'a>> {
        let api = socket.map(ApiServer::bind).transpose()?;
        Ok(Control {
            api,
            rt,
            keys,
            json,
            started: Instant::now(),
            restored_from,
            last_checkpoint: None,
            checkpoints: 0,
            lineage: None,
        })
    }

    /// With an API, turns dirty logging on so checkpoints through it can be incremental:
    /// `restored_from` (checkpoint id, store location) is the parent of the first one; without
    /// it the first is full. A restored VM must have had dirty logging on from its first
    /// instruction (`restore_with`).
    pub fn track(
        &mut self,
        vm: &Vm,
        restored_from: Option<(String, String)>,
    ) -> anyhow::Result<()> {
        if self.api.is_some() {
            self.lineage = Some(Lineage::start(vm, DirtyConfig::lifelong(), restored_from)?);
        }
        Ok(())
    }

    /// Whether VMs behind this control need dirty logging from their first instruction.
    pub fn wants_dirty_log(&self) -> bool {
        self.api.is_some()
    }

    /// Answers every request waiting; true when one asked the VM to stop (the VM is paused
    /// then, and the caller ends it).
    pub fn serve(&mut self, vm: &mut Vm) -> bool {
        let mut stop = false;
        if let Some(lineage) = &mut self.lineage {
            if let Err(e) = lineage.poll(vm) {
                tracing::warn!("dirty log harvest: {e}");
            }
        }
        while let Some(pending) = self.api.as_ref().and_then(ApiServer::next) {
            let command = pending.command.clone();
            let response = match command {
                Command::Info | Command::Status => None,
                _ if stop => Some(Response::error(409, "the VM is stopping")),
                _ => None,
            };
            let response = response.unwrap_or_else(|| match command {
                Command::Info => Response::ok(serde_json::json!({
                    "id": format!("thaw-{}", std::process::id()),
                    "state": state(vm),
                    "vmm_version": env!("CARGO_PKG_VERSION"),
                    "app_name": "thaw",
                })),
                Command::Status => Response::ok(self.status(vm)),
                Command::Pause if vm.is_paused() => {
                    Response::error(409, "the VM is already paused")
                }
                Command::Pause => match vm.pause() {
                    Ok(()) => Response::no_content(),
                    Err(e) => Response::error(500, format!("pausing: {e}")),
                },
                Command::Resume if !vm.is_paused() => Response::error(409, "the VM is not paused"),
                Command::Resume => {
                    vm.resume();
                    Response::no_content()
                }
                Command::Checkpoint(req) => {
                    let (response, stop_now) = self.checkpoint(vm, &req);
                    stop |= stop_now;
                    response
                }
                Command::Stop => {
                    let _ = vm.pause();
                    stop = true;
                    Response::no_content()
                }
            });
            pending.answer(response);
        }
        stop
    }

    fn status(&self, vm: &Vm) -> serde_json::Value {
        serde_json::json!({
            "state": state(vm),
            "guest": vm.guest(),
            "vcpus": vm.vcpu_count(),
            "memory_bytes": vm.memory().size(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "restored_from": self.restored_from,
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
        })
    }

    /// Checkpoints into the store asked for. A VM that was running is resumed after, whatever
    /// became of the checkpoint, unless the request says stop and the checkpoint was written.
    fn checkpoint(&mut self, vm: &mut Vm, req: &CheckpointRequest) -> (Response, bool) {
        let was_running = !vm.is_paused();
        let kind = match (req.snapshot_type, &req.parent) {
            (Some(SnapshotType::Full), _) => Kind::Full,
            (Some(SnapshotType::Diff), _) | (None, Some(_)) => Kind::Diff,
            (None, None) => Kind::Auto,
        };
        let opened = self
            .keys
            .open_store(&req.store)
            .and_then(|store| Ok((store, self.keys.write_options()?)));
        let (store, opts) = match opened {
            Ok(o) => o,
            Err(e) => return (Response::error(400, format!("checkpoint: {e:#}")), false),
        };
        let written = match &mut self.lineage {
            Some(lineage) => {
                let parent = match lineage.parent(vm, store.location(), req.parent.as_deref(), kind)
                {
                    Ok(p) => p,
                    Err(e) => return (Response::error(400, format!("checkpoint: {e}")), false),
                };
                lineage
                    .checkpoint(vm, self.rt, &store, &opts, parent.as_deref())
                    .map_err(anyhow::Error::from)
            }
            None if kind == Kind::Diff => {
                return (
                    Response::error(400, "checkpoint: this VM does not log dirty pages"),
                    false,
                )
            }
            None => checkpoint(vm, self.rt, &store, &opts).map_err(anyhow::Error::from),
        };
        match written {
            Ok(outcome) => {
                crate::vm::emit(
                    self.json,
                    serde_json::json!({"event": "checkpoint", "checkpoint": outcome}),
                );
                self.checkpoints += 1;
                let body = serde_json::to_value(&outcome).unwrap_or_default();
                self.last_checkpoint = Some(outcome);
                if req.stop {
                    return (Response::ok(body), true);
                }
                if was_running {
                    vm.resume();
                }
                (Response::ok(body), false)
            }
            Err(e) => {
                if was_running {
                    vm.resume();
                }
                let message = format!("checkpoint failed: {e:#}");
                crate::vm::emit(
                    self.json,
                    serde_json::json!({"event": "checkpoint_failed", "error": message}),
                );
                (Response::error(500, message), false)
            }
        }
    }
}

fn state(vm: &Vm) -> &'static str {
    if vm.is_paused() {
        "Paused"
    } else {
        "Running"
    }
}
