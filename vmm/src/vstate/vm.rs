//! A KVM virtual machine: creation, vCPU threads, pause/resume, full state save and restore.

use crate::arch::cpuid::MissingCpuFeature;
use crate::arch::cpuid::{self, CpuBaseline, RequiredFeatures};
use crate::devices::cmos::{CmosPort, CMOS_BASE, CMOS_LEN};
use crate::devices::i8042::{self, ResetLine};
use crate::devices::mmio::MmioBus;
use crate::devices::report_port::{self, ReportPort};
use crate::devices::serial::{
    SerialError, SerialOutput, Uart, UartState, COM1_BASE, COM1_IRQ, COM1_LEN,
};
use crate::devices::serial_input::{SerialInput, SerialInputError};
use crate::devices::virtio::block::DiskConfig;
use crate::devices::virtio::device::VirtioMmio;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::{self, VirtioError};
use crate::devices::vmgenid::{self, VmGenId, VmGenIdError};
use crate::devices::{GuestEvent, PortBus};
use crate::persist::state::{GuestKind, VmState};
use crate::vstate::clock;
use crate::vstate::kvm::{open_kvm, KvmError, DEFAULT_KVM_PATH};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vcpu::{PauseFlag, Vcpu, VcpuEnd, VcpuHandle, STOP_TIMEOUT};
use crate::vstate::vcpu_state::{self, VcpuCaps};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_irqchip, kvm_pit_config, kvm_userspace_memory_region, KVM_CAP_SREGS2,
    KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

const TSS_ADDRESS: usize = 0xfffb_d000;
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// How long a pause waits for every vCPU to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM could not be built, run, paused or saved, or its guest stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    MissingCpuFeature(#[from] MissingCpuFeature),
    #[error("invalid configuration: {0} vCPUs (1 to 64 supported)")]
    VcpuCount(u32),
    #[error("cannot create the serial port's interrupt eventfd: {0}")]
    Eventfd(#[source] std::io::Error),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    #[error(transparent)]
    SerialInput(#[from] SerialInputError),
    #[error(transparent)]
    VmGenId(#[from] VmGenIdError),
    #[error("checkpoint does not match this VM: memory layout {vm:x?} differs from the checkpoint's {checkpoint:x?}")]
    LayoutMismatch {
        vm: Vec<(u64, u64)>,
        checkpoint: Vec<(u64, u64)>,
    },
    #[error("corrupt or unsupported VM state blob: no CPUID for vCPU {0}")]
    NoCpuid(u32),
    #[error("the VM's state can only be saved while it is paused")]
    NotPaused,
    #[error("guest stopped: {0}")]
    GuestStopped(String),
    #[error(transparent)]
    Host(#[from] Box<crate::arch::cpu_profile::HostMismatch>),
    #[error(
        "CPU baseline computed for {baseline} hosts (from {hosts}), but this host's CPU is {host}"
    )]
    BaselineVendor {
        baseline: String,
        hosts: String,
        host: String,
    },
    /// Ended from another thread (its fetch agent failed or went away); the vCPUs were stopped
    /// first.
    #[error(transparent)]
    Aborted(Box<dyn StdError + Send + Sync>),
}

type Result<T> = std::result::Result<T, VmError>;

/// How to build a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kvm_path: PathBuf,
    pub memory_bytes: u64,
    pub vcpus: u32,
    pub cpu_baseline: CpuBaseline,
    pub serial: SerialOutput,
    /// virtio-blk disks, in order (at restore: none to reopen the saved ones, or one per saved
    /// disk to replace them).
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces on existing taps, in order (at restore: none to reopen the saved
    /// taps, or one per saved interface to use other taps).
    pub nets: Vec<NetConfig>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
            memory_bytes: 256 << 20,
            vcpus: 1,
            cpu_baseline: CpuBaseline::Host,
            serial: SerialOutput::Stdout,
            disks: Vec::new(),
            nets: Vec::new(),
        }
    }
}

/// A VM: KVM objects, memory, devices and vCPUs (created, then running).
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: Arc<GuestMemory>,
    uart: Arc<Uart>,
    cmos: Arc<CmosPort>,
    /// The thread feeding console input to the UART, once connected.
    serial_input: Option<SerialInput>,
    bus: Arc<PortBus>,
    mmio: Arc<MmioBus>,
    virtio: Vec<Arc<VirtioMmio>>,
    events: Receiver<GuestEvent>,
    pause: Arc<PauseFlag>,
    caps: Arc<VcpuCaps>,
    pending: Vec<Vcpu>,
    running: Vec<VcpuHandle>,
    guest: GuestKind,
    baseline: CpuBaseline,
    /// The host CPU's vendor, recorded in checkpoints.
    vendor: String,
    required: RequiredFeatures,
    abort: AbortHandle,
    /// vCPUs that did not stop when told to (blocked in a page fault): see [`Vm::stop`].
    stuck: Vec<u32>,
    _serial_irq: EventFd,
    /// Linux guests' VMGenID device (see [`Vm::attach_vmgenid`]).
    vmgenid: Option<VmGenId>,
}

/// Lets another thread end a running VM with an error (e.g. its fetch agent failed): the next
/// [`Vm::next_event`] stops the vCPUs and returns it as [`VmError::Aborted`] instead of waiting
/// on.
#[derive(Clone, Default)]
pub(crate) struct AbortHandle(Arc<Mutex<Option<VmError>>>);

impl AbortHandle {
    /// Records `why`; the first error recorded wins.
    pub(crate) fn abort(&self, why: impl StdError + Send + Sync + 'static) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(VmError::Aborted(Box::new(why)));
        }
    }

    fn take(&self) -> Option<VmError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Vm {
    /// Builds a VM over `memory` with fresh vCPUs. `cpuids`, when given (restore), is the CPUID of
    /// each vCPU; otherwise it is derived from the host and the baseline.
    pub(crate) fn create(
        config: &VmConfig,
        memory: GuestMemory,
        guest: GuestKind,
        cpuids: Option<&[Vec<kvm_cpuid_entry2>]>,
        uart_state: Option<&UartState>,
    ) -> Result<Vm> {
        Self::create_checked(config, memory, guest, cpuids, uart_state, None)
    }

    /// [`Vm::create`], failing first if the host lacks a feature `required` names: the
    /// check uses the CPUID that creation reads anyway (opening KVM and reading it again
    /// would cost ~0.7 ms of every restore here).
    fn create_checked(
        config: &VmConfig,
        memory: GuestMemory,
        guest: GuestKind,
        cpuids: Option<&[Vec<kvm_cpuid_entry2>]>,
        uart_state: Option<&UartState>,
        required: Option<&RequiredFeatures>,
    ) -> Result<Vm> {
        if config.vcpus == 0 || config.vcpus > 64 {
            return Err(VmError::VcpuCount(config.vcpus));
        }
        let t0 = Instant::now();
        let kvm = open_kvm(&config.kvm_path)?;
        let supported = cpuid::supported(&kvm)?;
        if let Some(required) = required {
            required.check(&supported)?;
        }
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "KVM opened, CPUID read"
        );
        let vendor = cpuid::vendor(&supported);
        if let CpuBaseline::Custom(mask) = &config.cpu_baseline {
            if mask.vendor != vendor {
                return Err(VmError::BaselineVendor {
                    baseline: mask.vendor.clone(),
                    hosts: mask.hosts.join(", "),
                    host: vendor,
                });
            }
        }
        let template = cpuid::template(&supported, &config.cpu_baseline);
        let fd = kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            fd.set_identity_map_address(IDENTITY_MAP_ADDRESS)
                .map_err(KvmError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        }
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "VM created");
        fd.create_irq_chip()
            .map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(KvmError::ioctl("KVM_CREATE_PIT2"))?;
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "irqchip and PIT created"
        );
        for (slot, r) in memory.regions().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.size,
                userspace_addr: r.host_addr(),
            };
            // SAFETY: the host range is a live mapping owned by `memory`, which the VM keeps
            // (in an Arc) for as long as the VM fd exists.
            unsafe { fd.set_user_memory_region(region) }
                .map_err(KvmError::ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        }
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "VM, irqchip, PIT, memory slots"
        );
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Eventfd)?;
        fd.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(KvmError::ioctl("KVM_IRQFD"))?;
        let uart = Arc::new(Uart::new(
            serial_irq.try_clone().map_err(VmError::Eventfd)?,
            &config.serial,
            uart_state,
        )?);

        let mut pending = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let vfd = fd
                .create_vcpu(id as u64)
                .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
            let entries = match cpuids {
                Some(c) => c.get(id as usize).ok_or(VmError::NoCpuid(id))?.clone(),
                None => cpuid::for_vcpu(&template, id, config.vcpus)?
                    .as_slice()
                    .to_vec(),
            };
            let c =
                kvm_bindings::CpuId::from_entries(&entries).map_err(KvmError::table("CPUID"))?;
            vfd.set_cpuid2(&c)
                .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
            pending.push(Vcpu {
                fd: vfd,
                id,
                cpuid: entries,
            });
        }
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "vCPUs created with CPUID"
        );
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(KvmError::ioctl("KVM_GET_MSR_INDEX_LIST"))?;
        let msrs = vcpu_state::readable_msrs(&pending[0].fd, msr_list.as_slice())?;
        let caps = VcpuCaps {
            msrs,
            sregs2: fd.check_extension_raw(KVM_CAP_SREGS2 as u64) > 0,
            xcrs: kvm.check_extension(Cap::Xcrs),
            xsave_size: (fd.check_extension_int(Cap::Xsave2).max(0) as usize).max(4096),
        };
        tracing::debug!(us = t0.elapsed().as_micros() as u64, "MSR list probed");
        let required = RequiredFeatures::of(&pending[0].cpuid);
        let memory = Arc::new(memory);
        let (tx, events) = channel();
        let mut bus = PortBus::new();
        bus.insert(COM1_BASE, COM1_LEN, uart.clone());
        let cmos = Arc::new(CmosPort::new());
        bus.insert(CMOS_BASE, CMOS_LEN, cmos.clone());
        bus.insert(i8042::COMMAND_PORT, 1, Arc::new(ResetLine::new(tx.clone())));
        if guest == GuestKind::TestGuest {
            let port = ReportPort::new(memory.clone(), tx);
            bus.insert(report_port::PORT, 1, Arc::new(port));
        }
        let mut mmio = MmioBus::new();
        let virtio = virtio::attach(&fd, &memory, &config.disks, &config.nets, &mut mmio)?;
        Ok(Vm {
            kvm,
            fd,
            memory,
            uart,
            cmos,
            serial_input: None,
            bus: Arc::new(bus),
            mmio: Arc::new(mmio),
            virtio,
            events,
            pause: Arc::new(PauseFlag::default()),
            caps: Arc::new(caps),
            pending,
            running: Vec::new(),
            guest,
            baseline: config.cpu_baseline.clone(),
            vendor,
            required,
            abort: AbortHandle::default(),
            stuck: Vec::new(),
            _serial_irq: serial_irq,
            vmgenid: None,
        })
    }

    /// Builds a VM from a checkpoint's state over `memory` (filled, or empty and served lazily).
    /// Fails before any vCPU runs if this host lacks a CPU feature the checkpoint needs.
    pub(crate) fn restore(config: &VmConfig, state: &VmState, memory: GuestMemory) -> Result<Vm> {
        let layout: Vec<(u64, u64)> = memory
            .regions()
            .iter()
            .map(|r| (r.guest_phys_addr, r.size))
            .collect();
        if layout != state.memory {
            return Err(VmError::LayoutMismatch {
                vm: layout,
                checkpoint: state.memory.clone(),
            });
        }
        let (disks, nets) = virtio::restore_devices(&config.disks, &config.nets, &state.virtio)?;
        let cfg = VmConfig {
            vcpus: state.vcpus.len() as u32,
            memory_bytes: state.memory_bytes(),
            cpu_baseline: state.cpu_baseline.clone(),
            disks,
            nets,
            ..config.clone()
        };
        let cpuids: Vec<Vec<kvm_cpuid_entry2>> =
            state.vcpus.iter().map(|v| v.cpuid.clone()).collect();
        let mut vm = Vm::create_checked(
            &cfg,
            memory,
            state.guest.clone(),
            Some(&cpuids),
            Some(&state.serial),
            Some(&state.required_features),
        )?;
        vm.required = state.required_features.clone();
        for (index, (dev, saved)) in vm.virtio.iter().zip(&state.virtio).enumerate() {
            dev.restore(&saved.transport)
                .map_err(|source| VirtioError::State { index, source })?;
        }
        vm.cmos.restore(&state.cmos);
        if let Some(old) = &state.vmgenid {
            vm.attach_vmgenid(vmgenid::next_generation(old)?)?;
        }
        // Per vCPU, in the order vcpu_state documents (CPUID was set by create()).
        for (vcpu, s) in vm.pending.iter().zip(&state.vcpus) {
            vcpu_state::restore(&vcpu.fd, s, &vm.caps).map_err(|source| VcpuError::State {
                cpu: vcpu.id,
                source,
            })?;
        }
        // VM-wide devices after the vCPUs: the IOAPIC/PIC routes and the PIT do not depend on
        // vCPU state, but interrupts they hold pending must find the LAPICs already restored.
        vm.fd
            .set_irqchip(&state.pic_master)
            .map_err(KvmError::ioctl("KVM_SET_IRQCHIP (PIC master)"))?;
        vm.fd
            .set_irqchip(&state.pic_slave)
            .map_err(KvmError::ioctl("KVM_SET_IRQCHIP (PIC slave)"))?;
        vm.fd
            .set_irqchip(&state.ioapic)
            .map_err(KvmError::ioctl("KVM_SET_IRQCHIP (IOAPIC)"))?;
        vm.fd
            .set_pit2(&state.pit)
            .map_err(KvmError::ioctl("KVM_SET_PIT2"))?;
        // The new generation is announced once the IOAPIC routes (and the LAPICs) are back, so
        // the edge reaches the guest's event device as the guest set it up.
        if let Some(dev) = &vm.vmgenid {
            dev.notify()?;
        }
        // The kvmclock last, right before the vCPUs can run: the saved value plus the wall time
        // since the checkpoint (vstate::clock says how, and why never backwards).
        let kvm_adds_realtime =
            vm.fd.check_extension_int(Cap::AdjustClock) as u32 & KVM_CLOCK_REALTIME != 0;
        let plan = clock::plan_restore(
            &state.clock,
            state.clock_host_realtime_ns,
            clock::host_realtime_ns(),
            kvm_adds_realtime,
        );
        if plan.behind_ns > 0 {
            tracing::warn!(
                behind_ms = plan.behind_ns / 1_000_000,
                "this host's wall clock is behind the checkpoint's; the guest clock goes on from the saved value"
            );
        }
        tracing::debug!(
            advance_ms = plan.advance_ns / 1_000_000,
            kvm_adds_realtime,
            "kvmclock advanced by the wall time since the checkpoint"
        );
        vm.fd
            .set_clock(&plan.data)
            .map_err(KvmError::ioctl("KVM_SET_CLOCK"))?;
        // Device interrupts the guest had not acknowledged, now that the IOAPIC is restored.
        for dev in &vm.virtio {
            dev.raise_pending();
        }
        Ok(vm)
    }

    /// Feeds `source` (the host's standard input, see
    /// [`crate::devices::serial_input::host_stdin`]) to COM1's receive FIFO until it ends or the
    /// VM stops.
    pub fn connect_serial_input(&mut self, source: std::fs::File) -> Result<()> {
        self.serial_input = Some(SerialInput::spawn(self.uart.clone(), source)?);
        Ok(())
    }

    /// The guest's kvmclock now (KVM_GET_CLOCK), in nanoseconds.
    #[cfg(test)]
    pub(crate) fn kvm_clock_ns(&self) -> Result<u64> {
        Ok(self
            .fd
            .get_clock()
            .map_err(KvmError::ioctl("KVM_GET_CLOCK"))?
            .clock)
    }

    /// Gives the guest a VMGenID device holding `generation` (the ACPI tables that describe it
    /// are the boot code's).
    pub(crate) fn attach_vmgenid(&mut self, generation: vmgenid::Generation) -> Result<()> {
        self.vmgenid = Some(VmGenId::new(&self.fd, generation)?);
        Ok(())
    }

    /// The VMGenID device, if the guest has one.
    #[cfg(test)]
    pub(crate) fn vmgenid(&self) -> Option<&VmGenId> {
        self.vmgenid.as_ref()
    }

    /// Guest memory.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// The KVM handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// vCPUs not started yet (to set their boot registers).
    pub(crate) fn pending_vcpus(&self) -> &[Vcpu] {
        &self.pending
    }

    /// What runs in the VM.
    pub fn guest(&self) -> &GuestKind {
        &self.guest
    }

    /// Whether the vmm itself writes guest memory while the VM runs (virtio devices fill queues
    /// and buffers): such writes are not in KVM's dirty log.
    pub fn writes_guest_memory_itself(&self) -> bool {
        !self.virtio.is_empty()
    }

    /// Whether the VM is paused (or being paused).
    pub fn is_paused(&self) -> bool {
        self.pause.get()
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.pending.len() + self.running.len()
    }

    /// Starts a thread per vCPU.
    pub fn start(&mut self) -> Result<()> {
        for vcpu in self.pending.drain(..) {
            let h = VcpuHandle::spawn(
                vcpu,
                self.bus.clone(),
                self.mmio.clone(),
                self.pause.clone(),
                self.caps.clone(),
                self.memory.clone(),
            )?;
            self.running.push(h);
        }
        Ok(())
    }

    /// Stops every vCPU at whatever instruction it is on and completes pending I/O.
    pub fn pause(&self) -> Result<()> {
        self.pause.set(true);
        for h in &self.running {
            h.wait_parked(PAUSE_TIMEOUT)?;
        }
        // Device threads (virtio-net receive) finish what they are doing and stop touching
        // queues and memory.
        for dev in &self.virtio {
            dev.quiesce(true);
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) {
        for dev in &self.virtio {
            dev.quiesce(false);
        }
        self.pause.set(false);
        for h in &self.running {
            h.resume();
        }
    }

    /// Saves the complete state of a paused VM (not its memory).
    pub fn save_state(&self) -> Result<VmState> {
        if !self.pause.get() || self.running.iter().any(|h| !h.is_parked()) {
            return Err(VmError::NotPaused);
        }
        if self.running.iter().any(|h| h.is_finished()) {
            return Err(VmError::GuestStopped(
                "a vCPU has exited; its state is gone".into(),
            ));
        }
        let mut vcpus = Vec::with_capacity(self.running.len());
        for h in &self.running {
            vcpus.push(h.save()?);
        }
        let clock = self
            .fd
            .get_clock()
            .map_err(KvmError::ioctl("KVM_GET_CLOCK"))?;
        let realtime = clock::host_realtime_ns();
        let chip = |id: u32, op: &'static str| -> Result<kvm_irqchip> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).map_err(KvmError::ioctl(op))?;
            Ok(c)
        };
        Ok(VmState {
            guest: self.guest.clone(),
            memory: self
                .memory
                .regions()
                .iter()
                .map(|r| (r.guest_phys_addr, r.size))
                .collect(),
            cpu_baseline: self.baseline.clone(),
            cpu_vendor: self.vendor.clone(),
            required_features: self.required.clone(),
            vcpus,
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER, "KVM_GET_IRQCHIP (PIC master)")?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE, "KVM_GET_IRQCHIP (PIC slave)")?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC, "KVM_GET_IRQCHIP (IOAPIC)")?,
            pit: self
                .fd
                .get_pit2()
                .map_err(KvmError::ioctl("KVM_GET_PIT2"))?,
            clock,
            clock_host_realtime_ns: Some(clock::realtime_of(&clock, realtime)),
            serial: self.uart.state(),
            virtio: self.virtio.iter().map(|d| d.save()).collect(),
            cmos: self.cmos.state(),
            vmgenid: self.vmgenid.as_ref().map(VmGenId::generation),
        })
    }

    /// Turns KVM dirty logging on or off for every memory slot (`KVM_MEM_LOG_DIRTY_PAGES`, a
    /// flags-only change of the slots). While on, KVM write-protects guest pages and records the
    /// first write to each in a bitmap per slot, read by [`Vm::harvest_dirty_pages`].
    pub(crate) fn set_dirty_log(&self, on: bool) -> Result<()> {
        for (slot, r) in self.memory.regions().iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.size,
                userspace_addr: r.host_addr(),
            };
            // SAFETY: the same live mapping the slot already has (see create()); only the flags
            // change, and `memory` outlives the VM fd.
            unsafe { self.fd.set_user_memory_region(region) }.map_err(KvmError::ioctl(
                "KVM_SET_USER_MEMORY_REGION (dirty logging flag)",
            ))?;
        }
        Ok(())
    }

    /// The pages the guest wrote since dirty logging was enabled or since the previous call
    /// (`KVM_GET_DIRTY_LOG` per slot, which also clears the bitmap and re-arms tracking), as
    /// ascending page indices into the regions concatenated.
    pub(crate) fn harvest_dirty_pages(&self) -> Result<Vec<u64>> {
        let mut pages = Vec::new();
        let mut first_page = 0u64;
        for (slot, r) in self.memory.regions().iter().enumerate() {
            let bitmap = self
                .fd
                .get_dirty_log(slot as u32, r.size as usize)
                .map_err(KvmError::ioctl("KVM_GET_DIRTY_LOG"))?;
            let slot_pages = r.size / crate::persist::dirty::PAGE_SIZE;
            pages.extend(crate::persist::dirty::pages_in_bitmap(
                &bitmap, first_page, slot_pages,
            ));
            first_page += slot_pages;
        }
        Ok(pages)
    }

    /// A handle that makes [`Vm::next_event`] fail from another thread.
    pub(crate) fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }

    /// Waits for the next guest event; fails if a vCPU thread died or the VM was aborted
    /// through its [`AbortHandle`]. An aborted VM's vCPUs are stopped before the error returns
    /// (see [`Vm::stop`] for one that cannot be).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<GuestEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.abort.take() {
                if let Err(stop) = self.stop() {
                    tracing::error!("stopping the aborted VM: {stop}");
                }
                return Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            match self
                .events
                .recv_timeout((deadline - now).min(Duration::from_millis(50)))
            {
                Ok(e) => return Ok(Some(e)),
                Err(RecvTimeoutError::Timeout) => self.check_threads()?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VmError::GuestStopped("device bus gone".into()))
                }
            }
        }
    }

    fn check_threads(&mut self) -> Result<()> {
        if let Some(i) = self.running.iter().position(|h| h.is_finished()) {
            let id = self.running[i].id;
            return match self.running[i].stop_by(Instant::now() + STOP_TIMEOUT) {
                VcpuEnd::Failed(e) => Err(e.into()),
                VcpuEnd::GuestStopped(why) => {
                    Err(VmError::GuestStopped(format!("vCPU {id}: {why}")))
                }
                VcpuEnd::Stopped => Err(VmError::GuestStopped(format!("vCPU {id} stopped"))),
            };
        }
        Ok(())
    }

    /// Stops all vCPU threads, each kicked out of KVM_RUN, waiting a bounded time
    /// ([`STOP_TIMEOUT`] in all); returns the first failure among them.
    ///
    /// A vCPU blocked in a page fault nobody serves (a lazy restore whose fetch agent failed or
    /// stopped) may not come out: it is left behind and reported as
    /// [`VcpuError::StopTimeout`], now and by every later call. Its guest memory's userfaultfd
    /// must then stay open until the process exits (which ends the thread), or the kernel would
    /// fill the missing page with zeros and the guest would run on them.
    pub fn stop(&mut self) -> Result<()> {
        for dev in &self.virtio {
            dev.shutdown();
        }
        // Console input first: the guest will read no more of it.
        drop(self.serial_input.take());
        for h in &self.running {
            h.request_stop();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut first = Ok(());
        for h in self.running.iter_mut() {
            match h.stop_by(deadline) {
                VcpuEnd::Failed(VcpuError::StopTimeout { cpu, waited }) => {
                    tracing::error!("vCPU {cpu} did not stop within {waited:?}");
                    self.stuck.push(cpu);
                }
                VcpuEnd::Failed(e) if first.is_ok() => first = Err(e.into()),
                _ => {}
            }
        }
        self.running.clear();
        if let Some(&cpu) = self.stuck.first() {
            return Err(VcpuError::StopTimeout {
                cpu,
                waited: STOP_TIMEOUT,
            }
            .into());
        }
        first
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Fails if this host cannot run the checkpoint, naming every difference (see
/// [`crate::vstate::host_cpu::check`]).
pub(crate) fn check_host(kvm_path: &std::path::Path, state: &VmState) -> Result<()> {
    use crate::vstate::host_cpu::{check, HostCheckError};
    check(kvm_path, state).map_err(|e| match e {
        HostCheckError::Kvm(e) => VmError::Kvm(e),
        HostCheckError::Mismatch(m) => VmError::Host(m),
    })
}
