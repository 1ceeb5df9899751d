//! The test guest: a freestanding program (guest/*.c, built by build.rs with the host compiler)
//! that the vmm starts directly in 64-bit long mode at CPL3.
//!
//! Layout (guest-physical = guest-virtual, identity mapped with 2 MiB user pages):
//! `0x1000` GDT, `0x3000` parameter page, `0x4000` per-vCPU reports (64 bytes each), `0x5000` TSS
//! with an all-ports-allowed I/O bitmap, `0x10000..` page tables, vCPU stacks below `0x80000`
//! (16 KiB each), code at 1 MiB, and the data area the guest touches from 2 MiB to the end of the
//! first memory region. Mirrors guest/layout.h. The vCPUs report through the report port device
//! (`devices::report_port`), which owns the report records' layout.

use crate::arch::gdt::{self, Gdt, Segment, SegmentKind};
use crate::arch::paging;
use crate::boot::BootError;
use crate::devices::report_port::{self, REPORT_ADDR, REPORT_STRIDE};
use crate::devices::GuestEvent;
use crate::persist::state::GuestKind;
use crate::vstate::kvm::KvmError;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm::{Vm, VmConfig, VmError};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The guest program, a flat binary loaded at [`CODE_ADDR`].
pub(crate) const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testguest.bin"));

pub(crate) const GDT_ADDR: u64 = 0x1000;
pub(crate) const TSS_ADDR: u64 = 0x5000;
/// TSS limit: the 0x68-byte 64-bit TSS, an I/O bitmap for all 65536 ports, and its 0xff end byte.
const TSS_LIMIT: u32 = 0x68 + 0x2000;
pub(crate) const PARAMS_ADDR: u64 = 0x3000;
pub(crate) const PML4_ADDR: u64 = 0x10000;
pub(crate) const STACKS_TOP: u64 = 0x80000;
pub(crate) const STACK_SIZE: u64 = 0x4000;
pub(crate) const CODE_ADDR: u64 = 0x10_0000;
pub const AREA_START: u64 = 0x20_0000;
pub(crate) const MAX_VCPUS: u32 = 8;
/// Smallest memory the test guest runs in: code, tables and one 2 MiB data slice per vCPU.
pub(crate) const MIN_MEMORY: u64 = 4 << 20;
const PARAMS_MAGIC: u64 = 0x5448_4157_5447_5031;
const MAX_MAPPED: u64 = 64 << 30;

/// The segments the test guest runs in (CPL3) and its TSS.
const USER_CODE: Segment = Segment::flat(SegmentKind::Code64, 3);
const USER_DATA: Segment = Segment::flat(SegmentKind::Data, 3);
const TSS: Segment = Segment::tss64(TSS_ADDR, TSS_LIMIT);

/// The test guest's GDT and the selectors its vCPUs start with.
struct Descriptors {
    gdt: Gdt,
    user_code: u16,
    user_data: u16,
    tss: u16,
}

/// Kernel code and data (unused, kept for a conventional layout), user code and data, the TSS.
fn descriptors() -> Descriptors {
    let mut gdt = Gdt::new();
    gdt.push(Segment::flat(SegmentKind::Code64, 0));
    gdt.push(Segment::flat(SegmentKind::Data, 0));
    let user_code = gdt.push(USER_CODE);
    let user_data = gdt.push(USER_DATA);
    let tss = gdt.push(TSS);
    Descriptors {
        gdt,
        user_code,
        user_data,
        tss,
    }
}

/// A test guest pattern name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pattern {0:?} (sequential, random, hot-set, pointer-chase)")]
pub struct UnknownPattern(pub String);

/// A running test guest did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("timed out: test guest not done after {0:?}")]
    Timeout(Duration),
    #[error("guest stopped: vCPU {cpu} refused its parameters")]
    RefusedParams { cpu: u32 },
    #[error("guest stopped: vCPU {cpu}: {reason}")]
    Stopped { cpu: u32, reason: String },
}

/// How the guest walks its data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Page after page, wrapping around.
    #[default]
    Sequential,
    /// Uniformly random pages.
    Random,
    /// 90% of touches in the first `hot_percent` of the pages.
    HotSet,
    /// A random cycle through all pages, each page naming the next.
    PointerChase,
}

impl std::str::FromStr for Pattern {
    type Err = UnknownPattern;
    fn from_str(s: &str) -> Result<Self, UnknownPattern> {
        match s {
            "sequential" => Ok(Pattern::Sequential),
            "random" => Ok(Pattern::Random),
            "hot-set" | "hotset" => Ok(Pattern::HotSet),
            "pointer-chase" => Ok(Pattern::PointerChase),
            _ => Err(UnknownPattern(s.to_string())),
        }
    }
}

/// What the test guest does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub pattern: Pattern,
    /// Page touches per vCPU.
    pub touches_per_cpu: u64,
    /// Report progress every this many touches (0: never).
    pub report_every: u64,
    pub seed: u64,
    pub hot_percent: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            pattern: Pattern::Sequential,
            touches_per_cpu: 1 << 20,
            report_every: 0,
            seed: 1,
            hot_percent: 10,
        }
    }
}

/// The data area in bytes for a memory of this size.
fn area_size(mem: &GuestMemory) -> u64 {
    let first = &mem.regions()[0];
    (first.guest_phys_addr + first.size).saturating_sub(AREA_START)
}

/// Writes the program, GDT, TSS, page tables and parameters into guest memory.
pub(crate) fn load(mem: &GuestMemory, vcpus: u32, params: &Params) -> Result<(), BootError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(BootError::TestGuestVcpus { vcpus });
    }
    let needed = AREA_START + vcpus as u64 * (2 << 20);
    if area_size(mem) < vcpus as u64 * (2 << 20) {
        return Err(BootError::MemoryTooSmall {
            what: format!("the test guest on {vcpus} vCPUs"),
            needed,
            available: mem.size(),
        });
    }
    if IMAGE.len() as u64 > AREA_START - CODE_ADDR {
        return Err(BootError::ImageTooLarge(IMAGE.len()));
    }
    mem.write(CODE_ADDR, IMAGE)?;
    descriptors().gdt.write(mem, GDT_ADDR)?;
    // 64-bit TSS with an I/O permission bitmap that allows every port. RFLAGS.IOPL=3 alone would
    // do on hardware, but a KVM that runs CPL3 guest code natively in host user mode (as the
    // software KVM here does) cannot keep IOPL in the real RFLAGS; its emulation of the faulting
    // `in`/`out` then falls back to the TSS bitmap, as the architecture says for CPL > IOPL.
    let mut tss = vec![0u8; TSS_LIMIT as usize + 1];
    tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
    tss[TSS_LIMIT as usize] = 0xff;
    mem.write(TSS_ADDR, &tss)?;

    // Identity map with 2 MiB pages, user accessible, up to the end of guest memory.
    let top = mem
        .regions()
        .iter()
        .map(|r| r.guest_phys_addr + r.size)
        .max()
        .unwrap_or(0)
        .min(MAX_MAPPED);
    paging::identity_map_2m(mem, PML4_ADDR, top, true)?;

    let p = [
        PARAMS_MAGIC,
        match params.pattern {
            Pattern::Sequential => 0,
            Pattern::Random => 1,
            Pattern::HotSet => 2,
            Pattern::PointerChase => 3,
        } | ((vcpus as u64) << 32),
        AREA_START,
        area_size(mem),
        params.touches_per_cpu,
        params.report_every,
        params.seed,
        params.hot_percent.clamp(1, 100),
    ];
    for (i, v) in p.iter().enumerate() {
        mem.write_u64(PARAMS_ADDR + i as u64 * 8, *v)?;
    }
    mem.write(
        REPORT_ADDR,
        &vec![0u8; (REPORT_STRIDE * MAX_VCPUS as u64) as usize],
    )?;
    Ok(())
}

/// Puts vCPU `id` at the program's entry point in 64-bit mode, CPL3, IOPL3, interrupts off.
pub(crate) fn setup_vcpu(fd: &VcpuFd, id: u32) -> Result<(), KvmError> {
    let mut sregs = fd.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    let d = descriptors();
    gdt::load_flat_segments(
        &mut sregs,
        USER_CODE.kvm_segment(d.user_code),
        USER_DATA.kvm_segment(d.user_data),
    );
    sregs.tr = TSS.kvm_segment(d.tss);
    sregs.ldt = kvm_segment {
        type_: 2,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = d.gdt.limit();
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // PG | AM | WP | NE | ET | MP | PE
    sregs.cr0 = 0x8005_0033;
    sregs.cr3 = PML4_ADDR;
    // PAE | OSFXSR | OSXMMEXCPT
    sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
    // SCE | LME | LMA | NXE
    sregs.efer = 0x1 | 0x100 | 0x400 | 0x800;
    fd.set_sregs(&sregs)
        .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: CODE_ADDR,
        rsp: STACKS_TOP - id as u64 * STACK_SIZE,
        rdi: PARAMS_ADDR,
        rsi: id as u64,
        rflags: 0x2 | 0x3000,
        ..Default::default()
    };
    fd.set_regs(&regs)
        .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(KvmError::ioctl("KVM_SET_FPU"))?;
    // With an in-kernel LAPIC, application processors start waiting for INIT/SIPI; this guest
    // starts every vCPU at once instead.
    fd.set_mp_state(kvm_bindings::kvm_mp_state {
        mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
    })
    .map_err(KvmError::ioctl("KVM_SET_MP_STATE"))?;
    Ok(())
}

/// How a test guest run ended: each vCPU's final checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub checksums: Vec<u64>,
}

impl Finished {
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
pub fn boot_test_guest(config: &VmConfig, params: &Params) -> Result<Vm, BootError> {
    if config.memory_bytes < MIN_MEMORY {
        return Err(BootError::MemoryTooSmall {
            what: "the test guest".into(),
            needed: MIN_MEMORY,
            available: config.memory_bytes,
        });
    }
    let mem = GuestMemory::new(&crate::vstate::memory::layout(config.memory_bytes))?;
    load(&mem, config.vcpus, params)?;
    let vm = Vm::create(config, mem, GuestKind::TestGuest, None, None)?;
    for v in vm.pending_vcpus() {
        setup_vcpu(&v.fd, v.id)?;
    }
    Ok(vm)
}

/// Waits until every vCPU of a running test guest reports done.
pub fn wait_done(vm: &mut Vm, timeout: Duration) -> Result<Finished, RunError> {
    let finished = wait_done_with(vm, timeout, &mut |_| false)?;
    Ok(finished.expect("never interrupted"))
}

/// [`wait_done`], calling `between` with the VM at least every 100 ms (to serve a control API,
/// which may pause, checkpoint or resume it); `between` returning true ends the wait early
/// (`Ok(None)`).
pub fn wait_done_with(
    vm: &mut Vm,
    timeout: Duration,
    between: &mut dyn FnMut(&mut Vm) -> bool,
) -> Result<Option<Finished>, RunError> {
    let n = vm.vcpu_count();
    let mut done: Vec<Option<u64>> = vec![None; n];
    let deadline = Instant::now() + timeout;
    while done.iter().any(|d| d.is_none()) {
        if between(vm) {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RunError::Timeout(timeout));
        }
        match vm.next_event(left.min(Duration::from_millis(100)))? {
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
            }) => return Err(RunError::RefusedParams { cpu }),
            Some(GuestEvent::Stopped { cpu, reason }) => {
                return Err(RunError::Stopped { cpu, reason })
            }
            Some(GuestEvent::Report { .. }) | None => {}
        }
    }
    Ok(Some(Finished {
        checksums: done.into_iter().map(|d| d.unwrap_or_default()).collect(),
    }))
}

/// Computes on the host what vCPU `cpu` of the test guest ends with: the same algorithm as
/// guest/guest.c over a zeroed data area, so tests can check a run against an independent model.
pub fn model_checksum(params: &Params, area_size: u64, ncpus: u32, cpu: u32) -> u64 {
    let slice = (area_size / ncpus as u64) & !0xfff;
    let pages = slice >> 12;
    let mut sum = 0x9e37_79b9_7f4a_7c15u64 ^ cpu as u64;
    let mut rng = params
        .seed
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        .wrapping_add(cpu as u64 + 1);
    let hot_pages = (pages * params.hot_percent.clamp(1, 100) / 100).max(1);
    let xorshift = |s: &mut u64| {
        let mut x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *s = x;
        x
    };
    if pages == 0 {
        return 0;
    }
    let mut next: Vec<u64> = Vec::new();
    if params.pattern == Pattern::PointerChase {
        next = (0..pages).collect();
        for i in (1..pages).rev() {
            let j = xorshift(&mut rng) % i;
            next.swap(i as usize, j as usize);
        }
    }
    let mut data = vec![0u64; pages as usize];
    let mut cur = 0u64;
    for t in 0..params.touches_per_cpu {
        let page = match params.pattern {
            Pattern::Sequential => t % pages,
            Pattern::Random => xorshift(&mut rng) % pages,
            Pattern::HotSet => {
                let x = xorshift(&mut rng);
                if x % 100 < 90 {
                    (x >> 8) % hot_pages
                } else {
                    (x >> 8) % pages
                }
            }
            Pattern::PointerChase => {
                cur = next[cur as usize];
                cur
            }
        };
        let v = data[page as usize];
        let mut s = (sum ^ v).wrapping_mul(0x100_0000_01b3).wrapping_add(page);
        s ^= s >> 29;
        sum = s;
        data[page as usize] = v
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(page + 1);
    }
    sum
}

/// The data area size the guest sees in a memory of `memory_bytes` (first region).
pub fn area_size_for(memory_bytes: u64) -> u64 {
    let first = crate::vstate::memory::layout(memory_bytes)[0];
    (first.0 + first.1).saturating_sub(AREA_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_starts_at_its_entry_point() {
        // entry.S begins with `and $-16, %rsp` (48 83 e4 f0).
        assert_eq!(&IMAGE[..4], &[0x48, 0x83, 0xe4, 0xf0]);
        assert!(IMAGE.len() < 64 << 10);
    }

    #[test]
    fn load_writes_tables_and_params() {
        let mem = GuestMemory::new(&[(0, 8 << 20)]).unwrap();
        load(&mem, 2, &Params::default()).unwrap();
        assert_eq!(mem.read_u64(PARAMS_ADDR).unwrap(), PARAMS_MAGIC);
        assert_eq!(mem.read_u64(PARAMS_ADDR + 8).unwrap() >> 32, 2);
        assert_eq!(mem.read_u64(PARAMS_ADDR + 24).unwrap(), 6 << 20);
        // PD entry for 2 MiB: present, writable, user, large.
        assert_eq!(
            mem.read_u64(PML4_ADDR + 0x2000 + 8).unwrap(),
            (2 << 20) | 0x87
        );
        assert_eq!(mem.read_u64(GDT_ADDR + 24).unwrap(), 0x00af_fb00_0000_ffff);
    }

    #[test]
    fn too_little_memory_is_refused() {
        let mem = GuestMemory::new(&[(0, 4 << 20)]).unwrap();
        let err = load(&mem, 2, &Params::default()).unwrap_err();
        assert!(matches!(err, BootError::MemoryTooSmall { .. }), "{err}");
        assert!(load(&mem, 9, &Params::default()).is_err());
        "pointer-chase".parse::<Pattern>().unwrap();
        assert!("zigzag".parse::<Pattern>().is_err());
    }
}
