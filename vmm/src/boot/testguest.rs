//! The test guest: a freestanding program (guest/*.c, built by build.rs with the host compiler)
//! that the vmm starts directly in 64-bit long mode at CPL3.
//!
//! Layout (guest-physical = guest-virtual, identity mapped with 2 MiB user pages):
//! `0x1000` GDT, `0x3000` parameter page, `0x4000` per-vCPU reports (64 bytes each), `0x5000` TSS
//! with an all-ports-allowed I/O bitmap, `0x10000..` page tables, vCPU stacks below `0x80000` (16 KiB each), code at 1 MiB, and the data
//! area the guest touches from 2 MiB to the end of the first memory region. Mirrors guest/layout.h.

use crate::devices::report_port::{REPORT_ADDR, REPORT_STRIDE};
use crate::error::{Error, Result};
use crate::vstate::memory::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// The guest program, a flat binary loaded at [`CODE_ADDR`].
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testguest.bin"));

pub const GDT_ADDR: u64 = 0x1000;
pub const TSS_ADDR: u64 = 0x5000;
/// TSS limit: the 0x68-byte 64-bit TSS, an I/O bitmap for all 65536 ports, and its 0xff end byte.
const TSS_LIMIT: u64 = 0x68 + 0x2000;
pub const PARAMS_ADDR: u64 = 0x3000;
pub const PML4_ADDR: u64 = 0x10000;
pub const STACKS_TOP: u64 = 0x80000;
pub const STACK_SIZE: u64 = 0x4000;
pub const CODE_ADDR: u64 = 0x10_0000;
pub const AREA_START: u64 = 0x20_0000;
pub const MAX_VCPUS: u32 = 8;
/// Smallest memory the test guest runs in: code, tables and one 2 MiB data slice per vCPU.
pub const MIN_MEMORY: u64 = 4 << 20;
const PARAMS_MAGIC: u64 = 0x5448_4157_5447_5031;
const MAX_MAPPED: u64 = 64 << 30;

const USER_CS: u16 = 0x18 | 3;
const USER_DS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

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
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sequential" => Ok(Pattern::Sequential),
            "random" => Ok(Pattern::Random),
            "hot-set" | "hotset" => Ok(Pattern::HotSet),
            "pointer-chase" => Ok(Pattern::PointerChase),
            _ => Err(Error::Config(format!(
                "unknown pattern {s:?} (sequential, random, hot-set, pointer-chase)"
            ))),
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

fn gdt_entries() -> [u64; 7] {
    let tss_limit = TSS_LIMIT;
    let tss_low = (tss_limit & 0xffff)
        | ((TSS_ADDR & 0xff_ffff) << 16)
        | (0x8b << 40)
        | (((tss_limit >> 16) & 0xf) << 48)
        | (((TSS_ADDR >> 24) & 0xff) << 56);
    [
        0,
        0x00af_9b00_0000_ffff, // kernel code (unused, kept for a conventional layout)
        0x00cf_9300_0000_ffff, // kernel data
        0x00af_fb00_0000_ffff, // user code: 64-bit, DPL 3
        0x00cf_f300_0000_ffff, // user data: DPL 3
        tss_low,
        TSS_ADDR >> 32,
    ]
}

/// Writes the program, GDT, TSS, page tables and parameters into guest memory.
pub fn load(mem: &GuestMemory, vcpus: u32, params: &Params) -> Result<()> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::Config(format!(
            "the test guest runs on 1 to {MAX_VCPUS} vCPUs, not {vcpus}"
        )));
    }
    let needed = AREA_START + vcpus as u64 * (2 << 20);
    if area_size(mem) < vcpus as u64 * (2 << 20) {
        return Err(Error::MemoryTooSmall {
            what: format!("the test guest on {vcpus} vCPUs"),
            needed,
            available: mem.size(),
        });
    }
    if IMAGE.len() as u64 > AREA_START - CODE_ADDR {
        return Err(Error::Config("test guest image larger than 1 MiB".into()));
    }
    mem.write(CODE_ADDR, IMAGE)?;
    for (i, e) in gdt_entries().iter().enumerate() {
        mem.write_u64(GDT_ADDR + i as u64 * 8, *e)?;
    }
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
    let gib = top.div_ceil(1 << 30);
    let pdpt = PML4_ADDR + 0x1000;
    mem.write(PML4_ADDR, &[0u8; 4096])?;
    mem.write(pdpt, &[0u8; 4096])?;
    mem.write_u64(PML4_ADDR, pdpt | 0x7)?;
    for g in 0..gib {
        let pd = pdpt + 0x1000 * (g + 1);
        mem.write_u64(pdpt + g * 8, pd | 0x7)?;
        let mut table = vec![0u8; 4096];
        for e in 0..512u64 {
            let addr = (g << 30) | (e << 21);
            table[e as usize * 8..e as usize * 8 + 8].copy_from_slice(&(addr | 0x87).to_le_bytes());
        }
        mem.write(pd, &table)?;
    }

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

fn user_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: if code { 0 } else { 1 },
        s: 1,
        l: if code { 1 } else { 0 },
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts vCPU `id` at the program's entry point in 64-bit mode, CPL3, IOPL3, interrupts off.
pub fn setup_vcpu(fd: &VcpuFd, id: u32) -> Result<()> {
    let mut sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    sregs.cs = user_segment(USER_CS, true);
    let data = user_segment(USER_DS, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: TSS_LIMIT as u32,
        selector: TSS_SEL,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        type_: 2,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt_entries().len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // PG | AM | WP | NE | ET | MP | PE
    sregs.cr0 = 0x8005_0033;
    sregs.cr3 = PML4_ADDR;
    // PAE | OSFXSR | OSXMMEXCPT
    sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
    // SCE | LME | LMA | NXE
    sregs.efer = 0x1 | 0x100 | 0x400 | 0x800;
    fd.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rip: CODE_ADDR,
        rsp: STACKS_TOP - id as u64 * STACK_SIZE,
        rdi: PARAMS_ADDR,
        rsi: id as u64,
        rflags: 0x2 | 0x3000,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))?;
    // With an in-kernel LAPIC, application processors start waiting for INIT/SIPI; this guest
    // starts every vCPU at once instead.
    fd.set_mp_state(kvm_bindings::kvm_mp_state {
        mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
    })
    .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
    Ok(())
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
        assert!(matches!(err, Error::MemoryTooSmall { .. }), "{err}");
        assert!(load(&mem, 9, &Params::default()).is_err());
        "pointer-chase".parse::<Pattern>().unwrap();
        assert!("zigzag".parse::<Pattern>().is_err());
    }
}
