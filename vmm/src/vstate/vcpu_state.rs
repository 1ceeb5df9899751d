//! Saving and restoring one vCPU's KVM state.
//!
//! Restore order, and why:
//! 0. TSC frequency (KVM_SET_TSC_KHZ, only when the saved one differs from this host's): before
//!    anything reads or writes the TSC, and refused with both frequencies named when this host's
//!    KVM cannot run the guest at the saved rate (the guest's clocks would run wrong).
//! 1. CPUID: KVM checks later writes against it (MSRs the guest's CPUID lacks are refused, CR4 bits
//!    such as OSXSAVE or LA57 need their CPUID feature, the XSAVE components allowed come from
//!    leaf 0xD).
//! 2. Special registers (sregs2/sregs): CR0/CR4/EFER decide the mode every later piece is read in,
//!    and setting them writes the APIC base MSR, which can reset the local APIC; so they go before
//!    the LAPIC state.
//! 3. General registers.
//! 4. XCRs, then XSAVE: XCR0 decides which XSAVE components are live.
//! 5. Debug registers.
//! 6. LAPIC: after sregs (APIC base) so its registers are not reset afterwards.
//! 7. MSRs: after CPUID (validation) and after the LAPIC (the TSC-deadline MSR is only kept while the
//!    LAPIC timer is in TSC-deadline mode); the TSC MSR is written here too.
//! 8. MP state: after the LAPIC, whose pending INIT/SIPI it interacts with.
//! 9. vCPU events last: pending exceptions, interrupts and NMIs are injected into the state above.
//!
//! Saving reads MP state first (KVM_GET_MP_STATE first processes pending APIC events, so the rest
//! of the state reflects them) and vCPU events last.

use crate::persist::state::{pod_bytes, pod_from_bytes, VcpuState};
use crate::vstate::kvm::KvmError;
use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry, kvm_sregs2, kvm_xsave, Msrs, Xsave, KVMIO};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

ioctl_ior_nr!(KVM_GET_SREGS2, KVMIO, 0xcc, kvm_sregs2);
ioctl_iow_nr!(KVM_SET_SREGS2, KVMIO, 0xcd, kvm_sregs2);

/// A vCPU's state could not be read, or a saved one does not fit this host's KVM.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("KVM_GET_MSRS read {read} of {expected} MSRs")]
    MsrsUnread { read: usize, expected: usize },
    #[error(
        "checkpoint does not match this VM: XSAVE area of {saved} bytes, this host's is {host}"
    )]
    XsaveTooLarge { saved: usize, host: usize },
    #[error("checkpoint does not match this VM: this host's KVM refused MSR {index:#x}")]
    MsrRefused { index: u32 },
    #[error("checkpoint does not match this host: its vCPUs ran at a TSC frequency of {saved_khz} kHz, this host's run at {host_khz} kHz, and this host's KVM cannot run them at {saved_khz} kHz (KVM_SET_TSC_KHZ: {source})")]
    TscFrequency {
        saved_khz: u32,
        host_khz: u32,
        source: vmm_sys_util::errno::Error,
    },
    #[error(
        "corrupt or unsupported VM state blob: {len} bytes of sregs2, KVM's struct has {expected}"
    )]
    Sregs2Size { len: usize, expected: usize },
}

type Result<T> = std::result::Result<T, VcpuStateError>;

/// What a host's KVM offers for vCPU state, found once per VM.
#[derive(Debug, Clone)]
pub(crate) struct VcpuCaps {
    /// MSRs that are saved and restored (KVM_GET_MSR_INDEX_LIST, less those that cannot be read).
    pub msrs: Vec<u32>,
    pub sregs2: bool,
    pub xcrs: bool,
    /// Size in bytes of the XSAVE area (KVM_CAP_XSAVE2), at least 4096.
    pub xsave_size: usize,
}

fn get_sregs2(fd: &VcpuFd) -> std::result::Result<kvm_sregs2, KvmError> {
    let mut s = kvm_sregs2::default();
    // SAFETY: KVM_GET_SREGS2 writes exactly one kvm_sregs2 into the struct we own; the return
    // value is checked.
    let ret = unsafe { ioctl_with_mut_ref(fd, KVM_GET_SREGS2(), &mut s) };
    if ret != 0 {
        return Err(KvmError::Ioctl {
            op: "KVM_GET_SREGS2",
            source: vmm_sys_util::errno::Error::last(),
        });
    }
    Ok(s)
}

fn set_sregs2(fd: &VcpuFd, s: &kvm_sregs2) -> std::result::Result<(), KvmError> {
    // SAFETY: KVM_SET_SREGS2 reads one kvm_sregs2 from the reference; the return value is checked.
    let ret = unsafe { ioctl_with_ref(fd, KVM_SET_SREGS2(), s) };
    if ret != 0 {
        return Err(KvmError::Ioctl {
            op: "KVM_SET_SREGS2",
            source: vmm_sys_util::errno::Error::last(),
        });
    }
    Ok(())
}

fn msrs_wrapper(indices: impl Iterator<Item = u32>) -> std::result::Result<Msrs, KvmError> {
    let entries: Vec<kvm_msr_entry> = indices
        .map(|index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(KvmError::table("MSR list"))
}

/// The saveable MSRs that this vCPU can actually read (a few listed ones fail on some hosts).
pub(crate) fn readable_msrs(
    fd: &VcpuFd,
    candidates: &[u32],
) -> std::result::Result<Vec<u32>, KvmError> {
    let mut list = candidates.to_vec();
    loop {
        let mut msrs = msrs_wrapper(list.iter().copied())?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(KvmError::ioctl("KVM_GET_MSRS"))?;
        if n == list.len() {
            return Ok(list);
        }
        tracing::debug!("MSR {:#x} cannot be read; not saved", list[n]);
        list.remove(n);
    }
}

/// Reads the complete state of a paused vCPU.
pub(crate) fn save(
    fd: &VcpuFd,
    id: u32,
    cpuid: &[kvm_cpuid_entry2],
    caps: &VcpuCaps,
) -> Result<VcpuState> {
    let mp_state = fd
        .get_mp_state()
        .map_err(KvmError::ioctl("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(KvmError::ioctl("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    let sregs2 = if caps.sregs2 {
        Some(pod_bytes(&get_sregs2(fd)?))
    } else {
        None
    };
    let xcrs = if caps.xcrs {
        Some(fd.get_xcrs().map_err(KvmError::ioctl("KVM_GET_XCRS"))?)
    } else {
        None
    };
    let xsave = if caps.xsave_size > std::mem::size_of::<kvm_xsave>() {
        let extra = (caps.xsave_size - std::mem::size_of::<kvm_xsave>()).div_ceil(4);
        let mut x = Xsave::new(extra).map_err(KvmError::table("XSAVE area"))?;
        // SAFETY: x was allocated for the full KVM_CAP_XSAVE2 size, as get_xsave2 requires.
        unsafe { fd.get_xsave2(&mut x) }.map_err(KvmError::ioctl("KVM_GET_XSAVE2"))?;
        let mut words = x.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(x.as_slice());
        words
    } else {
        fd.get_xsave()
            .map_err(KvmError::ioctl("KVM_GET_XSAVE"))?
            .region
            .to_vec()
    };
    let debug_regs = fd
        .get_debug_regs()
        .map_err(KvmError::ioctl("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
    let mut msrs = msrs_wrapper(caps.msrs.iter().copied())?;
    let n = fd
        .get_msrs(&mut msrs)
        .map_err(KvmError::ioctl("KVM_GET_MSRS"))?;
    if n != caps.msrs.len() {
        return Err(VcpuStateError::MsrsUnread {
            read: n,
            expected: caps.msrs.len(),
        });
    }
    let vcpu_events = fd
        .get_vcpu_events()
        .map_err(KvmError::ioctl("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        id,
        cpuid: cpuid.to_vec(),
        sregs,
        sregs2,
        regs,
        xcrs,
        xsave,
        debug_regs,
        lapic,
        msrs: msrs.as_slice().to_vec(),
        mp_state,
        vcpu_events,
        tsc_khz: fd.get_tsc_khz().ok(),
    })
}

/// Runs the vCPU at the saved TSC frequency if this host's differs (step 0 of the restore order).
/// A state without one (the saving host could not say) keeps this host's.
fn restore_tsc_khz(fd: &VcpuFd, saved: Option<u32>) -> Result<()> {
    let Some(saved_khz) = saved else {
        return Ok(());
    };
    let host_khz = fd
        .get_tsc_khz()
        .map_err(KvmError::ioctl("KVM_GET_TSC_KHZ"))?;
    if !crate::vstate::clock::tsc_needs_scaling(saved_khz, host_khz) {
        return Ok(());
    }
    fd.set_tsc_khz(saved_khz)
        .map_err(|source| VcpuStateError::TscFrequency {
            saved_khz,
            host_khz,
            source,
        })
}

/// Writes a saved state into a fresh vCPU, in the order the module documentation explains.
/// CPUID (step 1) is set when the vCPU is created, before this is called.
pub(crate) fn restore(fd: &VcpuFd, s: &VcpuState, caps: &VcpuCaps) -> Result<()> {
    restore_tsc_khz(fd, s.tsc_khz)?;
    match (&s.sregs2, caps.sregs2) {
        (Some(raw), true) => {
            let sregs2 = pod_from_bytes::<kvm_sregs2>(raw).ok_or(VcpuStateError::Sregs2Size {
                len: raw.len(),
                expected: std::mem::size_of::<kvm_sregs2>(),
            })?;
            set_sregs2(fd, &sregs2)?
        }
        _ => fd
            .set_sregs(&s.sregs)
            .map_err(KvmError::ioctl("KVM_SET_SREGS"))?,
    }
    fd.set_regs(&s.regs)
        .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
    if let Some(xcrs) = &s.xcrs {
        fd.set_xcrs(xcrs).map_err(KvmError::ioctl("KVM_SET_XCRS"))?;
    }
    if s.xsave.len() * 4 > caps.xsave_size.max(4096) {
        return Err(VcpuStateError::XsaveTooLarge {
            saved: s.xsave.len() * 4,
            host: caps.xsave_size,
        });
    }
    if caps.xsave_size > std::mem::size_of::<kvm_xsave>() {
        // The buffer always has this host's full size (KVM reads all of it); a smaller saved
        // area is zero-extended, which XSAVE reads as "component in its initial state".
        let extra = (caps.xsave_size - std::mem::size_of::<kvm_xsave>()).div_ceil(4);
        let mut x = Xsave::new(extra).map_err(KvmError::table("XSAVE area"))?;
        // SAFETY: only the fixed-size region of the FAM struct is written here; the flexible
        // tail is written through the bounds-checked as_mut_slice below.
        unsafe { x.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(&s.xsave[..1024]);
        let tail = &s.xsave[1024..];
        x.as_mut_slice()[..tail.len()].copy_from_slice(tail);
        // SAFETY: x is allocated with this host's full KVM_CAP_XSAVE2 size.
        unsafe { fd.set_xsave2(&x) }.map_err(KvmError::ioctl("KVM_SET_XSAVE2"))?;
    } else {
        let mut x = kvm_xsave::default();
        x.region.copy_from_slice(&s.xsave[..1024]);
        // SAFETY: this host's XSAVE area is the legacy 4 KiB (no KVM_CAP_XSAVE2 beyond it), so KVM
        // reads exactly the kvm_xsave struct passed.
        unsafe { fd.set_xsave(&x) }.map_err(KvmError::ioctl("KVM_SET_XSAVE"))?;
    }
    fd.set_debug_regs(&s.debug_regs)
        .map_err(KvmError::ioctl("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic)
        .map_err(KvmError::ioctl("KVM_SET_LAPIC"))?;
    let msrs = Msrs::from_entries(&s.msrs).map_err(KvmError::table("saved MSRs"))?;
    let n = fd
        .set_msrs(&msrs)
        .map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
    if n != s.msrs.len() {
        return Err(VcpuStateError::MsrRefused {
            index: s.msrs[n].index,
        });
    }
    fd.set_mp_state(s.mp_state)
        .map_err(KvmError::ioctl("KVM_SET_MP_STATE"))?;
    fd.set_vcpu_events(&s.vcpu_events)
        .map_err(KvmError::ioctl("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
