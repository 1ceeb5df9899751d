//! This host's CPU as restores see it ([`CpuProfile`]), read from KVM, and the check a restore
//! runs against it before any of the checkpoint's VM exists.

use crate::arch::cpu_profile::{self, CpuProfile, HostMismatch, HostRequirements};
use crate::arch::cpuid::{self, RequiredFeatures};
use crate::persist::state::VmState;
use crate::vstate::clock::tsc_needs_scaling;
use crate::vstate::kvm::{open_kvm, KvmError};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use std::collections::BTreeSet;
use std::path::Path;

/// A restore host could not be read, or cannot run the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum HostCheckError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Mismatch(#[from] Box<HostMismatch>),
}

/// The profile of the host whose KVM is at `kvm_path`.
pub fn profile(kvm_path: &Path) -> Result<CpuProfile, KvmError> {
    let kvm = open_kvm(kvm_path)?;
    let probe = TscProbe::new(&kvm)?;
    profile_of(&kvm, &probe)
}

fn profile_of(kvm: &Kvm, probe: &TscProbe) -> Result<CpuProfile, KvmError> {
    let supported = cpuid::supported(kvm)?;
    let msrs = kvm
        .get_msr_index_list()
        .map_err(KvmError::ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(CpuProfile {
        host: host_name(),
        vendor: cpuid::vendor(&supported),
        features: RequiredFeatures::of(&supported),
        msrs: msrs.as_slice().to_vec(),
        tsc_khz: probe.vcpu.get_tsc_khz().ok(),
        tsc_scaling: kvm.check_extension(Cap::TscControl),
    })
}

/// Fails, naming every difference at once, if this host cannot run the checkpoint whose state is
/// `state`: another CPU vendor, CPU features it lacks, MSRs its KVM does not restore, a TSC
/// frequency it cannot run the guest at.
pub fn check(kvm_path: &Path, state: &VmState) -> Result<(), HostCheckError> {
    let kvm = open_kvm(kvm_path)?;
    // A throwaway vCPU tells the host's TSC frequency and whether another one can be set.
    let probe = TscProbe::new(&kvm)?;
    let host = profile_of(&kvm, &probe)?;
    let msrs = saved_msrs(state);
    cpu_profile::check(
        &requirements(state, &msrs),
        &host,
        tsc_needs_scaling,
        |khz| probe.vcpu.set_tsc_khz(khz).is_ok(),
    )?;
    Ok(())
}

/// As [`check`], against another host's profile (`thaw cpu dump` there): a TSC frequency other
/// than the host's counts as runnable where it has TSC scaling.
pub fn check_profile(host: &CpuProfile, state: &VmState) -> Result<(), Box<HostMismatch>> {
    let msrs = saved_msrs(state);
    cpu_profile::check(&requirements(state, &msrs), host, tsc_needs_scaling, |_| {
        host.tsc_scaling
    })
}

fn saved_msrs(state: &VmState) -> BTreeSet<u32> {
    state
        .vcpus
        .iter()
        .flat_map(|v| v.msrs.iter().map(|m| m.index))
        .collect()
}

fn requirements<'a>(state: &'a VmState, msrs: &'a BTreeSet<u32>) -> HostRequirements<'a> {
    HostRequirements {
        vendor: &state.cpu_vendor,
        features: &state.required_features,
        msrs,
        tsc_khz: state.vcpus.first().and_then(|v| v.tsc_khz),
    }
}

/// A VM with one vCPU that never runs.
struct TscProbe {
    vcpu: VcpuFd,
    _vm: kvm_ioctls::VmFd,
}

impl TscProbe {
    fn new(kvm: &Kvm) -> Result<TscProbe, KvmError> {
        let vm = kvm
            .create_vm()
            .map_err(KvmError::ioctl("KVM_CREATE_VM (CPU probe)"))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(KvmError::ioctl("KVM_CREATE_VCPU (CPU probe)"))?;
        Ok(TscProbe { vcpu, _vm: vm })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this host".to_string())
}
