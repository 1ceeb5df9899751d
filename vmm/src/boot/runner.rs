//! Running the test guest to completion (or to a checkpoint) and collecting its checksums.

use crate::boot::testguest::{self, Params};
use crate::devices::report_port;
use crate::devices::GuestEvent;
use crate::error::{Error, Result};
use crate::persist::state::GuestKind;
use crate::vstate::memory::{self, GuestMemory};
use crate::vstate::vm::{Vm, VmConfig};
use std::time::{Duration, Instant};

/// Final checksum of each vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub checksums: Vec<u64>,
}

impl Outcome {
    /// One number for the whole guest (the vCPUs' checksums folded in order).
    pub fn combined(&self) -> u64 {
        self.checksums
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
                (h ^ c).wrapping_mul(0x100_0000_01b3)
            })
    }
}

/// Builds a VM with the test guest loaded, not yet started.
pub fn boot_test_guest(config: &VmConfig, params: &Params) -> Result<Vm> {
    if config.memory_bytes < testguest::MIN_MEMORY {
        return Err(Error::MemoryTooSmall {
            what: "the test guest".into(),
            needed: testguest::MIN_MEMORY,
            available: config.memory_bytes,
        });
    }
    let mem = GuestMemory::new(&memory::layout(config.memory_bytes))?;
    testguest::load(&mem, config.vcpus, params)?;
    let vm = Vm::create(config, mem, GuestKind::TestGuest, None, None)?;
    for v in vm.pending_vcpus() {
        testguest::setup_vcpu(&v.fd, v.id)?;
    }
    Ok(vm)
}

/// Waits until every vCPU of a running test guest reports done.
pub fn wait_done(vm: &mut Vm, timeout: Duration) -> Result<Outcome> {
    let n = vm.vcpu_count();
    let mut done: Vec<Option<u64>> = vec![None; n];
    let deadline = Instant::now() + timeout;
    while done.iter().any(|d| d.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(format!(
                "test guest not done after {timeout:?}"
            )));
        }
        match vm.next_event(left)? {
            Some(GuestEvent::Report {
                cpu,
                code: report_port::CODE_DONE,
                checksum,
                ..
            }) => {
                if let Some(slot) = done.get_mut(cpu as usize) {
                    *slot = Some(checksum);
                }
            }
            Some(GuestEvent::Report {
                cpu,
                code: report_port::CODE_BAD_PARAMS,
                ..
            }) => return Err(Error::Guest(format!("vCPU {cpu} refused its parameters"))),
            Some(GuestEvent::Stopped { cpu, reason }) => {
                return Err(Error::Guest(format!("vCPU {cpu}: {reason}")))
            }
            Some(GuestEvent::Report { .. }) | None => {}
        }
    }
    Ok(Outcome {
        checksums: done.into_iter().map(|d| d.unwrap_or_default()).collect(),
    })
}
