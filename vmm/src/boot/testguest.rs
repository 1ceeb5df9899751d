//! The test guest: a freestanding program (guest/*.c, built by build.rs with the host compiler)
//! that the vmm starts directly in 64-bit long mode at CPL3.
//!
//! Layout (guest-physical = guest-virtual, identity mapped with 2 MiB user pages, at least up to
//! 4 GiB so the LAPIC page is mapped too): `0x1000` GDT, `0x2000` IDT, `0x3000` parameter page,
//! `0x4000` per-vCPU reports (64 bytes each), `0x5000` one TSS per vCPU (128 bytes apart) and
//! after them the all-ports-allowed I/O bitmap they share, `0x8000` per-vCPU kernel stacks (1 KiB
//! each, the tick counter at the bottom), `0x10000..` page tables, vCPU stacks below `0x80000`
//! (16 KiB each), code at 1 MiB, the device mode's rings, buffers and report at 1.5 MiB
//! ([`IO_ADDR`]), and the data area the guest touches from 2 MiB to the end of the
//! first memory region. Mirrors guest/layout.h. The vCPUs report through the report port device
//! (`devices::report_port`), which owns the report records' layout.
//!
//! Interrupt mode ([`Interrupts`]): each vCPU programs its LAPIC timer (periodic) and enables
//! interrupts; the timer's vector goes through the IDT to a CPL0 handler of a few instructions
//! (guest/entry.S) on the vCPU's kernel stack (its TSS's RSP0), which counts a tick and ends the
//! interrupt. The ticks are outside the data area, so the checksums are those of the model.
//! Every other stretch of 2^20 touches runs with the LAPIC's task priority at the timer's, so
//! its ticks wait in the IRR (pending) as behind a `cli`.
//!
//! Device mode ([`DeviceWork`], with interrupts): vCPU 0 also drives the VM's first virtio disk
//! and first virtio-net interface (guest/devices.c): it writes numbered sectors and reads them
//! back verifying, pass after pass, and sends a numbered byte stream that a peer on the tap
//! acknowledges (go-back-N, so frames lost across a checkpoint are sent again). The devices'
//! interrupts reach it through the IOAPIC (programmed by the guest) on [`DEVICE_VECTOR`], whose
//! CPL0 handler counts them. It reports done once its touches and its device work are done;
//! [`Finished::io`] has the device report, and [`model`]'s functions say what the disk and the
//! stream must hold.

use crate::arch::gdt::{self, Gdt, Segment, SegmentKind};
use crate::arch::paging;
use crate::boot::BootError;
use crate::devices::report_port::{self, REPORT_ADDR, REPORT_STRIDE};
use crate::devices::GuestEvent;
use crate::persist::state::{GuestKind, VcpuState};
use crate::vstate::kvm::KvmError;
use crate::vstate::memory::{GuestMemory, MemoryError};
use crate::vstate::vm::{Vm, VmConfig, VmError};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

pub mod model;
pub use model::{area_size_for, model_checksum};

/// The guest program, a flat binary loaded at [`CODE_ADDR`].
pub(crate) const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testguest.bin"));

pub(crate) const GDT_ADDR: u64 = 0x1000;
pub(crate) const IDT_ADDR: u64 = 0x2000;
/// vCPU `i`'s 0x68-byte 64-bit TSS is at `TSS_ADDR + i * TSS_STRIDE`.
pub(crate) const TSS_ADDR: u64 = 0x5000;
const TSS_STRIDE: u64 = 0x80;
/// The I/O permission bitmap every TSS points to: all 65536 ports allowed, then its 0xff end byte.
const IO_BITMAP_ADDR: u64 = TSS_ADDR + TSS_STRIDE * MAX_VCPUS as u64;
const IO_BITMAP_LEN: u64 = 0x2000;
/// vCPU `i`'s kernel stack is `KSTACKS_ADDR + i * KSTACK_SIZE ..` that plus `KSTACK_SIZE`; its
/// first word counts the vCPU's timer ticks.
pub(crate) const KSTACKS_ADDR: u64 = 0x8000;
const KSTACK_SIZE: u64 = 0x400;
/// The LAPIC timer's vector, and where its handler is (guest/entry.S's `.org`).
pub const TIMER_VECTOR: u8 = 0x40;
const TIMER_HANDLER: u64 = CODE_ADDR + 0x40;
/// Device mode: the virtio devices' interrupt vector (the guest routes their IOAPIC pins to it)
/// and its handler (guest/entry.S).
pub const DEVICE_VECTOR: u8 = 0x50;
const DEVICE_HANDLER: u64 = CODE_ADDR + 0x80;
/// Device mode: the rings, buffers and device report, between the code and the data area.
pub(crate) const IO_ADDR: u64 = 0x18_0000;
/// The device report (guest/devices.h `struct io_report`).
const IO_REPORT_ADDR: u64 = IO_ADDR + 0x7_f000;
/// Disk requests cover this many sectors, so the region is a multiple of it.
pub const DISK_CHUNK_SECTORS: u64 = 8;
/// Bytes of the stream per network frame.
pub const NET_CHUNK: u64 = 1024;
/// The network stream's ethertype, and its frames' kinds (guest/layout.h).
pub const NET_ETHERTYPE: u16 = 0x88b5;
pub const NET_KIND_DATA: u32 = 1;
pub const NET_KIND_ACK: u32 = 2;
/// The end of the 2 MiB page holding the LAPIC's registers (0xfee00000), mapped for the guest.
const LAPIC_PAGE_END: u64 = 0xfee0_0000 + (2 << 20);
/// The highest timer rate: KVM refuses periodic LAPIC timers faster than 200 µs by default.
pub const MAX_TIMER_HZ: u32 = 5000;
pub(crate) const PARAMS_ADDR: u64 = 0x3000;
// The TSSs with their bitmap and the kernel stacks fit below the page tables.
const _: () = assert!(IO_BITMAP_ADDR + IO_BITMAP_LEN < KSTACKS_ADDR);
const _: () = assert!(KSTACKS_ADDR + KSTACK_SIZE * MAX_VCPUS as u64 <= PML4_ADDR);
pub(crate) const PML4_ADDR: u64 = 0x10000;
pub(crate) const STACKS_TOP: u64 = 0x80000;
pub(crate) const STACK_SIZE: u64 = 0x4000;
pub(crate) const CODE_ADDR: u64 = 0x10_0000;
pub const AREA_START: u64 = 0x20_0000;
pub(crate) const MAX_VCPUS: u32 = 8;
/// Smallest memory the test guest runs in: code, tables and one 2 MiB data slice per vCPU.
pub(crate) const MIN_MEMORY: u64 = 4 << 20;
const PARAMS_MAGIC: u64 = 0x5448_4157_5447_5031;
/// A driver of the device mode failed (guest/layout.h); the device report says how.
const CODE_DEVICE_ERROR: u64 = 5;
const MAX_MAPPED: u64 = 64 << 30;

/// The segments the test guest runs in (CPL3), and the one its timer handler runs in (CPL0).
const KERNEL_CODE: Segment = Segment::flat(SegmentKind::Code64, 0);
const USER_CODE: Segment = Segment::flat(SegmentKind::Code64, 3);
const USER_DATA: Segment = Segment::flat(SegmentKind::Data, 3);

/// vCPU `id`'s TSS: its own RSP0 (kernel stack), the shared I/O bitmap right after the last TSS.
fn tss(id: u32) -> Segment {
    let base = TSS_ADDR + id as u64 * TSS_STRIDE;
    Segment::tss64(base, (IO_BITMAP_ADDR + IO_BITMAP_LEN - base) as u32)
}

/// The test guest's GDT and the selectors its vCPUs start with.
struct Descriptors {
    gdt: Gdt,
    kernel_code: u16,
    user_code: u16,
    user_data: u16,
    /// One TSS per possible vCPU.
    tss: Vec<u16>,
}

/// Kernel code (the timer handler's) and data, user code and data, a TSS per vCPU.
fn descriptors() -> Descriptors {
    let mut gdt = Gdt::new();
    let kernel_code = gdt.push(KERNEL_CODE);
    gdt.push(Segment::flat(SegmentKind::Data, 0));
    let user_code = gdt.push(USER_CODE);
    let user_data = gdt.push(USER_DATA);
    let tss = (0..MAX_VCPUS).map(|id| gdt.push(tss(id))).collect();
    Descriptors {
        gdt,
        kernel_code,
        user_code,
        user_data,
        tss,
    }
}

/// A 64-bit interrupt gate (IF cleared on entry, DPL 0) to `handler` in segment `selector`.
fn interrupt_gate(selector: u16, handler: u64) -> [u64; 2] {
    let low = (handler & 0xffff)
        | (u64::from(selector) << 16)
        | (0x8e << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Interrupt mode: each vCPU's LAPIC timer fires `timer_hz` times a second and its CPL0 handler
/// counts the ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupts {
    pub timer_hz: u32,
}

/// Device mode: what vCPU 0 does with the VM's first virtio disk and network interface besides
/// its page touches. Zero disables a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceWork {
    /// Sectors `0..disk_sectors` of the disk are written and read back each pass (a multiple
    /// of [`DISK_CHUNK_SECTORS`]).
    pub disk_sectors: u64,
    pub disk_passes: u64,
    /// Frames of the network stream ([`NET_CHUNK`] bytes each) to get acknowledged.
    pub net_frames: u64,
}

impl DeviceWork {
    /// Whether there is any device work.
    pub fn any(&self) -> bool {
        self.disk_sectors > 0 || self.net_frames > 0
    }
}

/// Device work the test guest cannot do as given.
#[derive(Debug, thiserror::Error)]
pub enum DeviceWorkError {
    #[error("the device mode needs interrupt mode (--interrupts)")]
    NeedsInterrupts,
    #[error("disk sectors {0} is not a multiple of {DISK_CHUNK_SECTORS}")]
    SectorsNotChunked(u64),
    #[error(
        "disk sectors and disk passes must both be given (sectors {sectors}, passes {passes})"
    )]
    DiskHalfGiven { sectors: u64, passes: u64 },
    #[error("disk work given but the VM has no disk (--disk PATH)")]
    NoDisk,
    #[error("disk work covers {needed} bytes but the disk {path} holds {size}")]
    DiskTooSmall {
        path: std::path::PathBuf,
        needed: u64,
        size: u64,
    },
    #[error("cannot read the size of disk {path}: {source}")]
    DiskSize {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("network frames given but the VM has no network interface (--net tap=NAME)")]
    NoNet,
    #[error("{0} network frames: at most {max} fit the stream's sequence numbers", max = u32::MAX)]
    TooManyFrames(u64),
}

/// Checks device work against the VM it will run in.
fn check_device_work(
    config: &VmConfig,
    work: &DeviceWork,
    interrupts: Option<Interrupts>,
) -> Result<(), DeviceWorkError> {
    if !work.any() {
        return Ok(());
    }
    if interrupts.is_none() {
        return Err(DeviceWorkError::NeedsInterrupts);
    }
    if (work.disk_sectors == 0) != (work.disk_passes == 0) {
        return Err(DeviceWorkError::DiskHalfGiven {
            sectors: work.disk_sectors,
            passes: work.disk_passes,
        });
    }
    if !work.disk_sectors.is_multiple_of(DISK_CHUNK_SECTORS) {
        return Err(DeviceWorkError::SectorsNotChunked(work.disk_sectors));
    }
    if work.disk_sectors > 0 {
        let disk = config.disks.first().ok_or(DeviceWorkError::NoDisk)?;
        let size = std::fs::metadata(&disk.path)
            .map_err(|source| DeviceWorkError::DiskSize {
                path: disk.path.clone(),
                source,
            })?
            .len();
        let needed = work.disk_sectors * 512;
        if size < needed {
            return Err(DeviceWorkError::DiskTooSmall {
                path: disk.path.clone(),
                needed,
                size,
            });
        }
    }
    if work.net_frames > 0 && config.nets.is_empty() {
        return Err(DeviceWorkError::NoNet);
    }
    if work.net_frames > u64::from(u32::MAX) {
        return Err(DeviceWorkError::TooManyFrames(work.net_frames));
    }
    Ok(())
}

/// The device report the guest keeps in its memory (guest/devices.h `struct io_report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IoReport {
    /// `done`, or what failed.
    pub status: &'static str,
    /// Every word the disk gave back, folded ([`model::disk_checksum`] says what it must be).
    pub disk_checksum: u64,
    pub disk_requests: u64,
    pub disk_passes_done: u64,
    /// Stream frames the peer has acknowledged.
    pub net_acked: u64,
    /// Frames sent, first sends and resends.
    pub net_transmitted: u64,
    /// Times the guest went back to the first unacknowledged frame.
    pub net_retransmits: u64,
    /// Frames received (acknowledgements and anything else on the tap).
    pub net_received: u64,
    /// Interrupts the devices' handler counted.
    pub device_interrupts: u64,
    /// With a failure: what failed (a sector, a status byte, a register window).
    pub detail: u64,
}

impl IoReport {
    /// Reads it from guest memory.
    pub fn read(mem: &GuestMemory) -> Result<IoReport, MemoryError> {
        let mut words = [0u64; 10];
        for (i, w) in words.iter_mut().enumerate() {
            *w = mem.read_u64(IO_REPORT_ADDR + i as u64 * 8)?;
        }
        Ok(IoReport::decode(words))
    }

    /// Reads it from a copy of guest memory from address 0 (a checkpoint's, read back); None
    /// when the copy is too short.
    pub fn in_copy(memory: &[u8]) -> Option<IoReport> {
        let mut words = [0u64; 10];
        for (i, w) in words.iter_mut().enumerate() {
            *w = word_in_copy(memory, IO_REPORT_ADDR + i as u64 * 8)?;
        }
        Some(IoReport::decode(words))
    }

    fn decode(w: [u64; 10]) -> IoReport {
        let status = match w[0] {
            0 => "running",
            1 => "done",
            2 => "no virtio disk found",
            3 => "the disk is smaller than the work",
            4 => "a disk request failed",
            5 => "a sector read back differs from what was written",
            6 => "no virtio network interface found",
            7 => "the device refused the features (VERSION_1)",
            8 => "a queue is smaller than the driver's",
            9 => "the device needs a reset",
            _ => "unknown status",
        };
        IoReport {
            status,
            disk_checksum: w[1],
            disk_requests: w[2],
            disk_passes_done: w[3],
            net_acked: w[4],
            net_transmitted: w[5],
            net_retransmits: w[6],
            net_received: w[7],
            device_interrupts: w[8],
            detail: w[9],
        }
    }
}

/// The little-endian word at `addr` of a copy of guest memory.
fn word_in_copy(memory: &[u8], addr: u64) -> Option<u64> {
    let at = usize::try_from(addr).ok()?;
    let bytes = memory.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The timer ticks of the first `vcpus` vCPUs in a copy of guest memory from address 0 (a
/// checkpoint's, read back); None when the copy is too short.
pub fn ticks_in_copy(memory: &[u8], vcpus: usize) -> Option<Vec<u64>> {
    (0..vcpus as u64)
        .map(|id| word_in_copy(memory, KSTACKS_ADDR + id * KSTACK_SIZE))
        .collect()
}

/// The device work a loaded guest was given (zero: none), read from its parameter page.
fn device_work(mem: &GuestMemory) -> Result<DeviceWork, MemoryError> {
    Ok(DeviceWork {
        disk_sectors: mem.read_u64(PARAMS_ADDR + 9 * 8)?,
        disk_passes: mem.read_u64(PARAMS_ADDR + 10 * 8)?,
        net_frames: mem.read_u64(PARAMS_ADDR + 11 * 8)?,
    })
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
    #[error("the test guest's device driver failed: {} (detail {:#x}); its report: {report:?}", report.status, report.detail)]
    Device { report: IoReport },
    #[error(transparent)]
    Memory(#[from] MemoryError),
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

/// Writes the program, GDT, IDT, TSSs, page tables and parameters into guest memory.
pub(crate) fn load(
    mem: &GuestMemory,
    vcpus: u32,
    params: &Params,
    interrupts: Option<Interrupts>,
    io: DeviceWork,
) -> Result<(), BootError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(BootError::TestGuestVcpus { vcpus });
    }
    let timer_hz = interrupts.map_or(0, |i| i.timer_hz);
    if interrupts.is_some() && !(1..=MAX_TIMER_HZ).contains(&timer_hz) {
        return Err(BootError::TimerRate {
            hz: timer_hz,
            max: MAX_TIMER_HZ,
        });
    }
    let needed = AREA_START + vcpus as u64 * (2 << 20);
    if area_size(mem) < vcpus as u64 * (2 << 20) {
        return Err(BootError::MemoryTooSmall {
            what: format!("the test guest on {vcpus} vCPUs"),
            needed,
            available: mem.size(),
        });
    }
    if IMAGE.len() as u64 > IO_ADDR - CODE_ADDR {
        return Err(BootError::ImageTooLarge(IMAGE.len()));
    }
    mem.write(CODE_ADDR, IMAGE)?;
    let d = descriptors();
    d.gdt.write(mem, GDT_ADDR)?;
    let gate = interrupt_gate(d.kernel_code, TIMER_HANDLER);
    let vector_addr = IDT_ADDR + u64::from(TIMER_VECTOR) * 16;
    mem.write(IDT_ADDR, &vec![0u8; (vector_addr - IDT_ADDR) as usize])?;
    mem.write_u64(vector_addr, gate[0])?;
    mem.write_u64(vector_addr + 8, gate[1])?;
    let gate = interrupt_gate(d.kernel_code, DEVICE_HANDLER);
    let device_addr = IDT_ADDR + u64::from(DEVICE_VECTOR) * 16;
    mem.write(
        vector_addr + 16,
        &vec![0u8; (device_addr - vector_addr - 16) as usize],
    )?;
    mem.write_u64(device_addr, gate[0])?;
    mem.write_u64(device_addr + 8, gate[1])?;
    // A 64-bit TSS per vCPU (RSP0: the top of its kernel stack) with an I/O permission bitmap
    // that allows every port. RFLAGS.IOPL=3 alone would do on hardware, but a KVM that runs CPL3
    // guest code natively in host user mode (as the software KVM here does) cannot keep IOPL in
    // the real RFLAGS; its emulation of the faulting `in`/`out` then falls back to the TSS
    // bitmap, as the architecture says for CPL > IOPL. All TSSs point at one bitmap after them.
    let mut tss = vec![0u8; (IO_BITMAP_ADDR + IO_BITMAP_LEN + 1 - TSS_ADDR) as usize];
    for id in 0..MAX_VCPUS as usize {
        let at = id * TSS_STRIDE as usize;
        let rsp0 = KSTACKS_ADDR + (id as u64 + 1) * KSTACK_SIZE;
        tss[at + 4..at + 12].copy_from_slice(&rsp0.to_le_bytes());
        let bitmap_offset = (IO_BITMAP_ADDR - TSS_ADDR) as usize - at;
        tss[at + 0x66..at + 0x68].copy_from_slice(&(bitmap_offset as u16).to_le_bytes());
    }
    *tss.last_mut().expect("not empty") = 0xff;
    mem.write(TSS_ADDR, &tss)?;
    mem.write(
        KSTACKS_ADDR,
        &vec![0u8; (KSTACK_SIZE * MAX_VCPUS as u64) as usize],
    )?;

    // Identity map with 2 MiB pages, user accessible, up to the end of guest memory and at
    // least over the LAPIC's page.
    let top = mem
        .regions()
        .iter()
        .map(|r| r.guest_phys_addr + r.size)
        .max()
        .unwrap_or(0)
        .clamp(LAPIC_PAGE_END, MAX_MAPPED);
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
        u64::from(timer_hz),
        io.disk_sectors,
        io.disk_passes,
        io.net_frames,
    ];
    for (i, v) in p.iter().enumerate() {
        mem.write_u64(PARAMS_ADDR + i as u64 * 8, *v)?;
    }
    mem.write(
        REPORT_ADDR,
        &vec![0u8; (REPORT_STRIDE * MAX_VCPUS as u64) as usize],
    )?;
    mem.write(IO_ADDR, &vec![0u8; (AREA_START - IO_ADDR) as usize])?;
    Ok(())
}

/// Puts vCPU `id` at the program's entry point in 64-bit mode, CPL3, IOPL3, interrupts off, or
/// on in interrupt mode. On (RFLAGS.IF) from the start rather than by the guest's STI: IOPL 3
/// allows STI at CPL3 on hardware, but a KVM that runs CPL3 code natively in host user mode (the
/// software KVM here) raises #GP on it. Nothing interrupts before the guest arms its timer.
pub(crate) fn setup_vcpu(fd: &VcpuFd, id: u32, interrupts: bool) -> Result<(), KvmError> {
    let mut sregs = fd.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
    let d = descriptors();
    gdt::load_flat_segments(
        &mut sregs,
        USER_CODE.kvm_segment(d.user_code),
        USER_DATA.kvm_segment(d.user_data),
    );
    sregs.tr = tss(id).kvm_segment(d.tss[id as usize]);
    sregs.ldt = kvm_segment {
        type_: 2,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = d.gdt.limit();
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = (u16::from(DEVICE_VECTOR) + 1) * 16 - 1;
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
        rflags: 0x2 | 0x3000 | if interrupts { 0x200 } else { 0 },
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

/// How a test guest run ended: each vCPU's final checksum and the timer ticks it had counted
/// (interrupt mode; zeros otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub checksums: Vec<u64>,
    pub ticks: Vec<u64>,
    /// Device mode: the device report at the end.
    pub io: Option<IoReport>,
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

/// Builds a VM with the test guest loaded, not yet started, interrupts off.
pub fn boot_test_guest(config: &VmConfig, params: &Params) -> Result<Vm, BootError> {
    boot_test_guest_with(config, params, None)
}

/// Builds a VM with the test guest loaded, not yet started, in interrupt mode when
/// `interrupts` is given.
pub fn boot_test_guest_with(
    config: &VmConfig,
    params: &Params,
    interrupts: Option<Interrupts>,
) -> Result<Vm, BootError> {
    boot_test_guest_with_devices(config, params, interrupts, DeviceWork::default())
}

/// Builds a VM with the test guest loaded, not yet started, in interrupt mode when
/// `interrupts` is given, driving the VM's first disk and network interface as `io` says
/// (device mode, which needs interrupt mode).
pub fn boot_test_guest_with_devices(
    config: &VmConfig,
    params: &Params,
    interrupts: Option<Interrupts>,
    io: DeviceWork,
) -> Result<Vm, BootError> {
    check_device_work(config, &io, interrupts)?;
    if config.memory_bytes < MIN_MEMORY {
        return Err(BootError::MemoryTooSmall {
            what: "the test guest".into(),
            needed: MIN_MEMORY,
            available: config.memory_bytes,
        });
    }
    let mem = GuestMemory::new(&crate::vstate::memory::layout(config.memory_bytes))?;
    load(&mem, config.vcpus, params, interrupts, io)?;
    let vm = Vm::create(config, mem, GuestKind::TestGuest, None, None)?;
    for v in vm.pending_vcpus() {
        setup_vcpu(&v.fd, v.id, interrupts.is_some())?;
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
    let mut done: Vec<Option<(u64, u64)>> = vec![None; n];
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
                ticks,
                ..
            }) => {
                if let Some(slot) = done.get_mut(cpu as usize) {
                    *slot = Some((checksum, ticks));
                }
            }
            Some(GuestEvent::Report {
                cpu,
                code: report_port::CODE_BAD_PARAMS,
                ..
            }) => return Err(RunError::RefusedParams { cpu }),
            Some(GuestEvent::Report {
                code: CODE_DEVICE_ERROR,
                ..
            }) => {
                return Err(RunError::Device {
                    report: IoReport::read(vm.memory())?,
                })
            }
            Some(GuestEvent::Stopped { cpu, reason }) => {
                return Err(RunError::Stopped { cpu, reason })
            }
            Some(GuestEvent::Report { .. }) | None => {}
        }
    }
    let done: Vec<(u64, u64)> = done.into_iter().map(|d| d.unwrap_or_default()).collect();
    let io = if device_work(vm.memory())?.any() {
        Some(IoReport::read(vm.memory())?)
    } else {
        None
    };
    Ok(Some(Finished {
        checksums: done.iter().map(|d| d.0).collect(),
        ticks: done.iter().map(|d| d.1).collect(),
        io,
    }))
}

/// The timer ticks each of the first `vcpus` vCPUs has counted so far, read from guest memory
/// (of a paused VM, for a count that holds still).
pub fn ticks(mem: &GuestMemory, vcpus: usize) -> Result<Vec<u64>, MemoryError> {
    (0..vcpus as u64)
        .map(|id| mem.read_u64(KSTACKS_ADDR + id * KSTACK_SIZE))
        .collect()
}

/// What a vCPU's saved state says about its timer interrupt: evidence that a checkpoint caught
/// the interrupt machinery live (the LAPIC registers are KVM_GET_LAPIC's, current count
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimerState {
    /// The LVT timer entry holds the test guest's vector, periodic, not masked.
    pub armed: bool,
    pub initial_count: u32,
    /// Counts down to the next tick.
    pub current_count: u32,
    /// The timer's vector is requested but not yet delivered (IRR).
    pub pending: bool,
    /// The timer's vector is being handled (ISR): the handler has not sent its EOI yet.
    pub in_service: bool,
    /// The vCPU was at CPL0, i.e. inside the timer handler, the only CPL0 code.
    pub in_handler: bool,
    /// The LAPIC's task priority holds the timer off (the guest's every other stretch of
    /// touches): a tick now waits in the IRR.
    pub held: bool,
}

impl TimerState {
    /// Reads it from a saved vCPU.
    pub fn of(vcpu: &VcpuState) -> TimerState {
        let reg = |offset: usize| {
            let b = &vcpu.lapic.regs[offset..offset + 4];
            u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
        };
        // IRR and ISR: 256 bits each, 32 in each 16-byte register.
        let vector_bit = |base: usize| {
            let v = usize::from(TIMER_VECTOR);
            reg(base + (v / 32) * 0x10) & (1 << (v % 32)) != 0
        };
        let lvt = reg(0x320);
        TimerState {
            armed: lvt & 0xff == u32::from(TIMER_VECTOR)
                && lvt & (1 << 16) == 0
                && (lvt >> 17) & 3 == 1,
            initial_count: reg(0x380),
            current_count: reg(0x390),
            pending: vector_bit(0x200),
            in_service: vector_bit(0x100),
            in_handler: vcpu.sregs.cs.selector & 3 == 0,
            held: reg(0x80) & 0xf0 >= u32::from(TIMER_VECTOR) & 0xf0,
        }
    }
}

/// For unit tests of VM-wide state: a 16 MiB test guest, console off, that runs until stopped;
/// returned with its configuration, built and not yet started.
#[cfg(test)]
pub(crate) fn endless_test_guest() -> (VmConfig, Vm) {
    let config = VmConfig {
        memory_bytes: 16 << 20,
        serial: crate::devices::serial::SerialOutput::Sink,
        ..Default::default()
    };
    let params = Params {
        pattern: Pattern::Sequential,
        touches_per_cpu: u64::MAX / 2,
        report_every: 0,
        seed: 1,
        hot_percent: 10,
    };
    let vm = boot_test_guest(&config, &params).expect("booting the test guest");
    (config, vm)
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
        load(&mem, 2, &Params::default(), None, DeviceWork::default()).unwrap();
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
    fn the_timer_handler_is_where_the_idt_points() {
        let at = (TIMER_HANDLER - CODE_ADDR) as usize;
        // push %rax ... pop %rax; iretq (48 cf)
        assert_eq!(IMAGE[at], 0x50);
        let end = IMAGE[at..].windows(3).position(|w| w == [0x58, 0x48, 0xcf]);
        assert!(
            end.is_some_and(|e| e < 32),
            "a handler of a few instructions"
        );

        let mem = GuestMemory::new(&[(0, 8 << 20)]).unwrap();
        load(
            &mem,
            2,
            &Params::default(),
            Some(Interrupts { timer_hz: 250 }),
            DeviceWork::default(),
        )
        .unwrap();
        assert_eq!(mem.read_u64(PARAMS_ADDR + 64).unwrap(), 250);
        let gate = IDT_ADDR + u64::from(TIMER_VECTOR) * 16;
        let low = mem.read_u64(gate).unwrap();
        let handler =
            (low & 0xffff) | ((low >> 32) & 0xffff_0000) | (mem.read_u64(gate + 8).unwrap() << 32);
        assert_eq!(handler, TIMER_HANDLER);
        assert_eq!((low >> 16) & 0xffff, 0x08, "the kernel code segment");
        assert_eq!((low >> 40) & 0xff, 0x8e, "a present 64-bit interrupt gate");
        assert_eq!(mem.read_u64(IDT_ADDR).unwrap(), 0, "other vectors absent");
        // The LAPIC's page is mapped for the guest (PD of the fourth GiB, entry 0x1f7).
        assert_eq!(
            mem.read_u64(PML4_ADDR + 0x5000 + 0x1f7 * 8).unwrap(),
            0xfee0_0000 | 0x87
        );
    }

    #[test]
    fn every_vcpu_has_its_own_kernel_stack_and_shares_the_io_bitmap() {
        let mem = GuestMemory::new(&[(0, 8 << 20)]).unwrap();
        load(&mem, 1, &Params::default(), None, DeviceWork::default()).unwrap();
        for id in 0..MAX_VCPUS as u64 {
            let at = TSS_ADDR + id * TSS_STRIDE;
            let rsp0 = mem.read_u64(at + 4).unwrap();
            assert_eq!(rsp0, KSTACKS_ADDR + (id + 1) * KSTACK_SIZE);
            let mut b = [0u8; 2];
            mem.read(at + 0x66, &mut b).unwrap();
            assert_eq!(at + u64::from(u16::from_le_bytes(b)), IO_BITMAP_ADDR);
            let seg = tss(id as u32);
            assert_eq!(
                seg.base + u64::from(seg.limit),
                IO_BITMAP_ADDR + IO_BITMAP_LEN
            );
        }
        let mut end = [0u8; 2];
        mem.read(IO_BITMAP_ADDR + IO_BITMAP_LEN - 1, &mut end)
            .unwrap();
        assert_eq!(end, [0, 0xff], "every port allowed, then the end byte");
        assert_eq!(ticks(&mem, 2).unwrap(), vec![0, 0]);
    }

    #[test]
    fn a_timer_rate_out_of_range_is_refused() {
        let mem = GuestMemory::new(&[(0, 8 << 20)]).unwrap();
        for hz in [0, MAX_TIMER_HZ + 1] {
            let err = load(
                &mem,
                1,
                &Params::default(),
                Some(Interrupts { timer_hz: hz }),
                DeviceWork::default(),
            );
            assert!(
                matches!(err, Err(BootError::TimerRate { hz: h, .. }) if h == hz),
                "{err:?}"
            );
        }
    }

    #[test]
    fn timer_state_reads_the_lapic_registers() {
        let mut vcpu = crate::persist::state::tests::sample().vcpus.remove(0);
        let set = |vcpu: &mut VcpuState, offset: usize, value: u32| {
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                vcpu.lapic.regs[offset + i] = *b as i8;
            }
        };
        set(&mut vcpu, 0x320, u32::from(TIMER_VECTOR) | (1 << 17));
        set(&mut vcpu, 0x380, 1_000_000);
        set(&mut vcpu, 0x390, 400_000);
        // Vector 0x40: bit 0 of the third 32-bit word of the IRR.
        set(&mut vcpu, 0x220, 1);
        let t = TimerState::of(&vcpu);
        assert!(t.armed && t.pending && !t.in_service && !t.held);
        set(&mut vcpu, 0x80, 0x40);
        assert!(TimerState::of(&vcpu).held);
        assert_eq!((t.initial_count, t.current_count), (1_000_000, 400_000));
        vcpu.sregs.cs.selector = 0x1b;
        assert!(!TimerState::of(&vcpu).in_handler);
        vcpu.sregs.cs.selector = 0x08;
        assert!(TimerState::of(&vcpu).in_handler);
        // Masked, or one-shot: not the guest's running timer.
        vcpu.lapic.regs[0x322] = 0x03;
        assert!(!TimerState::of(&vcpu).armed);
    }

    #[test]
    fn device_mode_routes_its_vector_and_writes_its_work() {
        let at = (DEVICE_HANDLER - CODE_ADDR) as usize;
        assert_eq!(IMAGE[at], 0x50, "push %rax");
        let mem = GuestMemory::new(&[(0, 8 << 20)]).unwrap();
        let work = DeviceWork {
            disk_sectors: 64,
            disk_passes: 3,
            net_frames: 100,
        };
        load(
            &mem,
            1,
            &Params::default(),
            Some(Interrupts { timer_hz: 1000 }),
            work,
        )
        .unwrap();
        assert_eq!(device_work(&mem).unwrap(), work);
        let gate = IDT_ADDR + u64::from(DEVICE_VECTOR) * 16;
        let low = mem.read_u64(gate).unwrap();
        let handler =
            (low & 0xffff) | ((low >> 32) & 0xffff_0000) | (mem.read_u64(gate + 8).unwrap() << 32);
        assert_eq!(handler, DEVICE_HANDLER);
        assert_eq!(IoReport::read(&mem).unwrap().status, "running");
        assert!(
            IMAGE.len() as u64 <= IO_ADDR - CODE_ADDR,
            "the image stays below the I/O area"
        );
    }

    #[test]
    fn device_work_the_vm_cannot_do_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, vec![0u8; 64 * 512]).unwrap();
        let with_disk = VmConfig {
            disks: vec![
                crate::devices::virtio::block::DiskConfig::parse(img.to_str().unwrap()).unwrap(),
            ],
            ..Default::default()
        };
        let irq = Some(Interrupts { timer_hz: 1000 });
        let disk = |sectors, passes| DeviceWork {
            disk_sectors: sectors,
            disk_passes: passes,
            net_frames: 0,
        };
        check_device_work(&with_disk, &disk(64, 1), irq).unwrap();
        check_device_work(&VmConfig::default(), &DeviceWork::default(), None).unwrap();
        for (config, work, irq, says) in [
            (&with_disk, disk(64, 1), None, "needs interrupt mode"),
            (&with_disk, disk(60, 1), irq, "not a multiple of 8"),
            (&with_disk, disk(64, 0), irq, "must both be given"),
            (&with_disk, disk(72, 1), irq, "holds 32768"),
            (&VmConfig::default(), disk(8, 1), irq, "has no disk"),
            (
                &with_disk,
                DeviceWork {
                    net_frames: 5,
                    ..DeviceWork::default()
                },
                irq,
                "no network interface",
            ),
        ] {
            let e = check_device_work(config, &work, irq)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{work:?}: {e}");
        }
    }

    #[test]
    fn too_little_memory_is_refused() {
        let mem = GuestMemory::new(&[(0, 4 << 20)]).unwrap();
        let err = load(&mem, 2, &Params::default(), None, DeviceWork::default()).unwrap_err();
        assert!(matches!(err, BootError::MemoryTooSmall { .. }), "{err}");
        assert!(load(&mem, 9, &Params::default(), None, DeviceWork::default()).is_err());
        "pointer-chase".parse::<Pattern>().unwrap();
        assert!("zigzag".parse::<Pattern>().is_err());
    }
}
