//! The owner side of a running VM's control API: carries out pause, resume, checkpoint, status
//! and stop on the VM between guest events, and answers each request.

use crate::api::http::Response;
use crate::api::routes::{CheckpointRequest, Command};
use crate::api::server::ApiServer;
use crate::keys::KeyArgs;
use std::path::Path;
use std::time::Instant;
use vmm::persist::checkpoint::{checkpoint, CheckpointOutcome};
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
        })
    }

    /// Answers every request waiting; true when one asked the VM to stop (the VM is paused
    /// then, and the caller ends it).
    pub fn serve(&mut self, vm: &mut Vm) -> bool {
        let mut stop = false;
        while let Some(pending) = self.api.as_ref().and_then(ApiServer::next) {
            let command = pending.command.clone();
            let response = match command {
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
            };
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
        let written = self
            .keys
            .open_store(&req.store)
            .and_then(|store| Ok((store, self.keys.write_options()?)))
            .and_then(|(store, opts)| Ok(checkpoint(vm, self.rt, &store, &opts)?));
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
