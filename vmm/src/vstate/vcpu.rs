//! vCPU threads: the KVM_RUN loop, port I/O and MMIO dispatch, and pausing at any moment.
//!
//! Pausing: the controller sets the shared `pause` flag and kicks each vCPU thread with a real-time
//! signal. The signal handler sets `immediate_exit` in that thread's `kvm_run`, so KVM_RUN returns
//! EINTR whether the signal hit inside the guest or just before entering it. Before a thread parks it
//! runs KVM_RUN once more with `immediate_exit` set: that completes a pending port I/O or MMIO
//! instruction (on some KVMs, including this software one, RIP has already moved past the `out`;
//! on hardware KVM it moves during that run) and returns at once, so saved state never carries a
//! half-done instruction.
//!
//! Stopping is bounded: a vCPU thread blocked in a page fault nobody serves (a lazily restored
//! VM whose fetch agent failed or stopped) may not come out of KVM_RUN for a signal. Such a thread
//! is reported and left behind; its process must then exit (which ends it) without closing the
//! userfaultfd first, or the kernel would fill the missing pages with zeros and let it run.

use crate::devices::mmio::MmioBus;
use crate::devices::{BusAction, PortBus};
use crate::persist::state::VcpuState;
use crate::vstate::kvm::KvmError;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu_state::VcpuStateError;
use crate::vstate::vcpu_state::{self, VcpuCaps};
use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// A vCPU thread could not start, failed, or could not be paused or read.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(#[source] std::io::Error),
    #[error("cannot start the thread of vCPU {cpu}: {source}")]
    Spawn { cpu: u32, source: std::io::Error },
    #[error("timed out: vCPU {cpu} did not pause")]
    PauseTimeout { cpu: u32 },
    #[error("vCPU {cpu} did not leave KVM_RUN within {waited:?} of being told to stop (blocked in a page fault nobody serves)")]
    StopTimeout { cpu: u32, waited: Duration },
    #[error("vCPU {cpu}: {what}")]
    ThreadGone { cpu: u32, what: &'static str },
    #[error("vCPU {cpu}: {source}")]
    Kvm { cpu: u32, source: KvmError },
    #[error("vCPU {cpu}: KVM entry failed: reason {reason:#x} on host cpu {host_cpu}")]
    EntryFailed {
        cpu: u32,
        reason: u64,
        host_cpu: u32,
    },
    #[error("vCPU {cpu}: KVM internal error (suberror {suberror}, data {data:x?}) {registers}")]
    Internal {
        cpu: u32,
        suberror: u32,
        data: Vec<u64>,
        registers: String,
    },
    #[error("vCPU {cpu}: {exit}")]
    UnhandledExit { cpu: u32, exit: String },
    #[error("vCPU {cpu}: {source}")]
    State { cpu: u32, source: VcpuStateError },
}

type Result<T> = std::result::Result<T, VcpuError>;

/// Commands to a parked vCPU thread.
pub(crate) enum ParkedCommand {
    Save(Sender<std::result::Result<VcpuState, VcpuStateError>>),
    Resume,
    Stop,
}

/// How a vCPU thread ended.
#[derive(Debug)]
pub(crate) enum VcpuEnd {
    Stopped,
    GuestStopped(String),
    Failed(VcpuError),
}

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer is this thread's kvm_run.immediate_exit, set while the vCPU fd (and
        // so its kvm_run mapping) is alive and cleared before it is dropped.
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub(crate) fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick signal's handler once per process; every later call returns how that went.
fn install_kick_handler() -> Result<()> {
    /// The errno of the installation, 0 when it succeeded.
    static INSTALLED: OnceLock<i32> = OnceLock::new();
    let errno =
        *INSTALLED.get_or_init(
            || match register_signal_handler(kick_signal(), kick_handler) {
                Ok(()) => 0,
                Err(e) => e.errno(),
            },
        );
    if errno != 0 {
        return Err(VcpuError::KickHandler(std::io::Error::from_raw_os_error(
            errno,
        )));
    }
    Ok(())
}

/// Shared pause flag of a VM.
#[derive(Default)]
pub(crate) struct PauseFlag(AtomicBool);

impl PauseFlag {
    pub(crate) fn set(&self, v: bool) {
        self.0.store(v, Ordering::SeqCst)
    }
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One vCPU ready to run.
pub(crate) struct Vcpu {
    pub fd: VcpuFd,
    pub id: u32,
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

/// A running vCPU thread.
pub(crate) struct VcpuHandle {
    pub id: u32,
    thread: Option<JoinHandle<VcpuEnd>>,
    commands: Sender<ParkedCommand>,
    parked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

struct VcpuThread {
    vcpu: Vcpu,
    bus: Arc<PortBus>,
    mmio: Arc<MmioBus>,
    pause: Arc<PauseFlag>,
    parked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    commands: Receiver<ParkedCommand>,
    caps: Arc<VcpuCaps>,
    memory: Arc<GuestMemory>,
}

impl VcpuThread {
    fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.vcpu.fd.get_kvm_run().immediate_exit as *mut u8
    }

    fn set_immediate_exit(&mut self, v: u8) {
        let p = self.immediate_exit_ptr();
        // SAFETY: p points into this vCPU's live kvm_run mapping; volatile because the kick
        // signal handler writes the same byte.
        unsafe { std::ptr::write_volatile(p, v) };
    }

    /// RIP, RSP, CR2 and the pending event, for error messages about a dead guest.
    fn where_am_i(&self) -> String {
        let regs = self.vcpu.fd.get_regs();
        let sregs = self.vcpu.fd.get_sregs();
        let ev = self.vcpu.fd.get_vcpu_events();
        match (regs, sregs, ev) {
            (Ok(r), Ok(s), Ok(e)) => format!(
                "at rip={:#x} rflags={:#x} rsp={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} exception={}/{}",
                r.rip, r.rflags, r.rsp, s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer,
                e.exception.injected, e.exception.nr
            ),
            _ => String::from("(registers unreadable)"),
        }
    }

    /// A software KVM whose instruction emulator lacks some instructions in guest kernel mode
    /// reports an emulation failure (suberror 1) with the instruction bytes (after a length byte
    /// in data[1]). thaw carries out the few simple ones itself: INT3 (RIP past it, inject #BP),
    /// CLAC and STAC (clear or set RFLAGS.AC), FWAIT, register-to-register POPCNT. Never reached on
    /// hardware KVM.
    fn emulate_missing_instruction(&self, suberror: u32, data: &[u64]) -> bool {
        if suberror != kvm_bindings::KVM_INTERNAL_ERROR_EMULATION || data.len() < 2 {
            return false;
        }
        let bytes = data[1].to_le_bytes();
        let Ok(mut regs) = self.vcpu.fd.get_regs() else {
            return false;
        };
        match crate::arch::emulate::emulate(&bytes[1..], &mut regs) {
            None => false,
            Some(crate::arch::emulate::Outcome::Done) => self.vcpu.fd.set_regs(&regs).is_ok(),
            Some(crate::arch::emulate::Outcome::LoadMxcsr(gva)) => {
                let mut b = [0u8; 4];
                let Some(gpa) = self.translate(gva) else {
                    return false;
                };
                let Ok(mut fpu) = self.vcpu.fd.get_fpu() else {
                    return false;
                };
                if self.memory.read(gpa, &mut b).is_err() {
                    return false;
                }
                fpu.mxcsr = u32::from_le_bytes(b);
                self.vcpu.fd.set_fpu(&fpu).is_ok() && self.vcpu.fd.set_regs(&regs).is_ok()
            }
            Some(crate::arch::emulate::Outcome::StoreMxcsr(gva)) => {
                let (Some(gpa), Ok(fpu)) = (self.translate(gva), self.vcpu.fd.get_fpu()) else {
                    return false;
                };
                self.memory.write(gpa, &fpu.mxcsr.to_le_bytes()).is_ok()
                    && self.vcpu.fd.set_regs(&regs).is_ok()
            }
            Some(crate::arch::emulate::Outcome::InjectBreakpoint) => {
                let Ok(mut events) = self.vcpu.fd.get_vcpu_events() else {
                    return false;
                };
                if events.exception.injected != 0 || events.exception.pending != 0 {
                    return false;
                }
                events.exception.injected = 1;
                events.exception.nr = 3;
                events.exception.has_error_code = 0;
                events.exception.error_code = 0;
                events.flags = 0;
                self.vcpu.fd.set_regs(&regs).is_ok()
                    && self.vcpu.fd.set_vcpu_events(&events).is_ok()
            }
        }
    }

    /// Guest-physical address of a 4-byte guest-virtual operand that does not cross a page.
    fn translate(&self, gva: u64) -> Option<u64> {
        if gva & 0xfff > 0xffc {
            return None;
        }
        let t = self.vcpu.fd.translate_gva(gva).ok()?;
        (t.valid != 0).then_some(t.physical_address)
    }

    /// Completes any pending I/O instruction without running further guest code.
    fn finish_pending_io(&mut self) -> Result<()> {
        self.set_immediate_exit(1);
        let r = self.vcpu.fd.run();
        let out = match r {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(VcpuError::Kvm {
                cpu: self.vcpu.id,
                source: KvmError::ioctl("KVM_RUN (immediate exit)")(e),
            }),
            Ok(exit) => Err(VcpuError::UnhandledExit {
                cpu: self.vcpu.id,
                exit: format!("unexpected exit under immediate_exit: {exit:?}"),
            }),
        };
        self.set_immediate_exit(0);
        out
    }

    /// Parks until resumed; returns false when told to stop.
    fn park(&mut self) -> Result<bool> {
        self.finish_pending_io()?;
        self.parked.store(true, Ordering::SeqCst);
        let result = loop {
            match self.commands.recv() {
                Ok(ParkedCommand::Save(reply)) => {
                    let s =
                        vcpu_state::save(&self.vcpu.fd, self.vcpu.id, &self.vcpu.cpuid, &self.caps);
                    let _ = reply.send(s);
                }
                Ok(ParkedCommand::Resume) => break true,
                Ok(ParkedCommand::Stop) | Err(_) => break false,
            }
        };
        self.parked.store(false, Ordering::SeqCst);
        Ok(result)
    }

    fn run(mut self) -> VcpuEnd {
        let p = self.immediate_exit_ptr();
        IMMEDIATE_EXIT.with(|c| c.set(p));
        let end = self.run_loop();
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        self.parked.store(true, Ordering::SeqCst);
        end
    }

    fn run_loop(&mut self) -> VcpuEnd {
        let id = self.vcpu.id;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return VcpuEnd::Stopped;
            }
            if self.pause.get() {
                match self.park() {
                    Ok(true) => continue,
                    Ok(false) => return VcpuEnd::Stopped,
                    Err(e) => return VcpuEnd::Failed(e),
                }
            }
            let action = match self.vcpu.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => self.bus.write(id, port, data),
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.bus.read(port, data);
                    BusAction::Continue
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                    BusAction::Continue
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                    BusAction::Continue
                }
                Ok(VcpuExit::Hlt) => BusAction::Continue,
                Ok(VcpuExit::Shutdown) => BusAction::Stop(format!(
                    "triple fault or shutdown (KVM_EXIT_SHUTDOWN) {}",
                    self.where_am_i()
                )),
                Ok(VcpuExit::SystemEvent(t, _)) => BusAction::Stop(format!("system event {t}")),
                Ok(VcpuExit::FailEntry(reason, host_cpu)) => {
                    return VcpuEnd::Failed(VcpuError::EntryFailed {
                        cpu: id,
                        reason,
                        host_cpu,
                    })
                }
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit
                    // union is the one KVM filled in.
                    let internal = unsafe { self.vcpu.fd.get_kvm_run().__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    if self.emulate_missing_instruction(internal.suberror, &internal.data[..n]) {
                        continue;
                    }
                    return VcpuEnd::Failed(VcpuError::Internal {
                        cpu: id,
                        suberror: internal.suberror,
                        data: internal.data[..n].to_vec(),
                        registers: self.where_am_i(),
                    });
                }
                Ok(other) => {
                    return VcpuEnd::Failed(VcpuError::UnhandledExit {
                        cpu: id,
                        exit: format!("unhandled exit {other:?}"),
                    })
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.set_immediate_exit(0);
                    BusAction::Continue
                }
                Err(e) => {
                    return VcpuEnd::Failed(VcpuError::Kvm {
                        cpu: id,
                        source: KvmError::ioctl("KVM_RUN")(e),
                    })
                }
            };
            match action {
                BusAction::Continue => {}
                BusAction::Park => match self.park() {
                    Ok(true) => {}
                    Ok(false) => return VcpuEnd::Stopped,
                    Err(e) => return VcpuEnd::Failed(e),
                },
                BusAction::Stop(why) => return VcpuEnd::GuestStopped(why),
            }
        }
    }
}

impl VcpuHandle {
    /// Starts the vCPU's thread.
    pub(crate) fn spawn(
        vcpu: Vcpu,
        bus: Arc<PortBus>,
        mmio: Arc<MmioBus>,
        pause: Arc<PauseFlag>,
        caps: Arc<VcpuCaps>,
        memory: Arc<GuestMemory>,
    ) -> Result<VcpuHandle> {
        install_kick_handler()?;
        let id = vcpu.id;
        let (tx, rx) = channel();
        let parked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let vcpu_thread = VcpuThread {
            vcpu,
            bus,
            mmio,
            pause,
            parked: parked.clone(),
            stop: stop.clone(),
            commands: rx,
            caps,
            memory,
        };
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu_thread.run())
            .map_err(|source| VcpuError::Spawn { cpu: id, source })?;
        Ok(VcpuHandle {
            id,
            thread: Some(thread),
            commands: tx,
            parked,
            stop,
        })
    }

    /// True while the thread waits for commands (paused, done, or exited).
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst) || self.is_finished()
    }

    /// True once the thread has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Interrupts KVM_RUN on this vCPU's thread.
    pub(crate) fn kick(&self) {
        if let Some(t) = &self.thread {
            if !t.is_finished() {
                let _ = t.kill(kick_signal());
            }
        }
    }

    /// Waits until the thread is parked, kicking it until then.
    pub(crate) fn wait_parked(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !self.is_parked() {
            if start.elapsed() > timeout {
                return Err(VcpuError::PauseTimeout { cpu: self.id });
            }
            self.kick();
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Reads the state of the parked vCPU.
    pub(crate) fn save(&self) -> Result<VcpuState> {
        let (tx, rx) = channel();
        self.commands
            .send(ParkedCommand::Save(tx))
            .map_err(|_| VcpuError::ThreadGone {
                cpu: self.id,
                what: "vCPU thread has exited",
            })?;
        let saved = rx.recv().map_err(|_| VcpuError::ThreadGone {
            cpu: self.id,
            what: "vCPU thread exited while saving",
        })?;
        saved.map_err(|source| VcpuError::State {
            cpu: self.id,
            source,
        })
    }

    /// Lets a parked vCPU run again.
    pub(crate) fn resume(&self) {
        let _ = self.commands.send(ParkedCommand::Resume);
    }

    /// Tells the thread to stop and kicks it out of KVM_RUN; [`VcpuHandle::stop_by`] waits.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.commands.send(ParkedCommand::Stop);
        self.kick();
    }

    /// Stops the thread and returns how it ended, waiting (and kicking) until `deadline`. A thread
    /// still running then is left behind (detached) and reported as
    /// [`VcpuError::StopTimeout`]: it can only be in KVM_RUN, blocked in a page fault.
    pub(crate) fn stop_by(&mut self, deadline: Instant) -> VcpuEnd {
        self.request_stop();
        let Some(t) = self.thread.take() else {
            return VcpuEnd::Stopped;
        };
        let asked = Instant::now();
        while !t.is_finished() {
            if Instant::now() >= deadline {
                // Dropping the handle detaches the thread; it ends with the process.
                return VcpuEnd::Failed(VcpuError::StopTimeout {
                    cpu: self.id,
                    waited: asked.elapsed(),
                });
            }
            let _ = t.kill(kick_signal());
            let _ = self.commands.send(ParkedCommand::Stop);
            std::thread::sleep(Duration::from_micros(500));
        }
        t.join().unwrap_or(VcpuEnd::Failed(VcpuError::ThreadGone {
            cpu: self.id,
            what: "vCPU thread panicked",
        }))
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_by(Instant::now() + STOP_TIMEOUT);
        }
    }
}

/// How long stopping a vCPU waits for its thread to leave KVM_RUN. A kick takes it out within
/// microseconds unless it is blocked in a page fault that is never served.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(3);
