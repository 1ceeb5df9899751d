//! One virtio-mmio device on the MMIO bus: the transport's registers, a device model behind them,
//! guest memory for the rings and buffers, and the interrupt line (an eventfd KVM turns into an
//! edge on the device's IOAPIC pin).

use super::block::BlockState;
use super::net::NetState;
use super::transport::{Effect, Transport, TransportState, TransportStateError};
use crate::devices::mmio::MmioDevice;
use crate::vstate::memory::GuestMemory;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory as _, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

/// Offset of the device-specific config space in the register window.
const CONFIG_OFFSET: u64 = 0x100;

/// A device model found a queue it cannot serve without a reset (a malformed descriptor chain or
/// ring): the transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Broken(pub String);

/// What sits behind a transport: a virtio device type.
pub(crate) trait DeviceModel: Send {
    /// The virtio device ID (2 for a block device).
    fn device_id(&self) -> u32;
    /// Device feature bits (VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Max size of each queue.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Reads the device-specific config space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Serves the available buffers of queue `index`. True when any buffer was used.
    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Broken>;
    /// What a checkpoint needs to build the same model again.
    fn save(&self) -> ModelState;
    /// Wakes the device's own thread, if it has one.
    fn wake(&self) {}
    /// For a device with a receive thread: the fd it waits on for input, its wake-up eventfd,
    /// and whether to watch the input now (not while a frame waits for a driver buffer).
    fn receive_waits(&self) -> Option<(i32, i32, bool)> {
        None
    }
}

/// The descriptors of a chain, or why it cannot be served. `virtio-queue` ends a chain early
/// (without an error) on a loop, a next index past the queue, an unreadable descriptor or over
/// 4 GiB in all: then the last descriptor returned still says it has a next one.
pub(crate) fn descriptors(
    chain: impl Iterator<Item = Descriptor>,
    queue_size: u16,
) -> Result<Vec<Descriptor>, Broken> {
    let mut descs: Vec<Descriptor> = Vec::new();
    for d in chain {
        descs.push(d);
        if descs.len() > usize::from(queue_size) {
            break;
        }
    }
    match descs.last() {
        None => Err(Broken("empty descriptor chain (head index past the queue or table outside guest memory)".into())),
        Some(d) if d.has_next() => Err(Broken(
            "descriptor chain does not end (a loop, a next index past the queue, a descriptor outside guest memory, or over 4 GiB)".into(),
        )),
        Some(_) => Ok(descs),
    }
}

/// The next available chain of `queue`, as its head index and descriptors; None when the
/// driver has made none available. `ring` names the queue in errors.
pub(crate) fn next_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    ring: &str,
) -> Result<Option<(u16, Vec<Descriptor>)>, Broken> {
    let chain = match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => return Err(Broken(format!("{ring}: {e}"))),
    };
    let Some(chain) = chain else {
        return Ok(None);
    };
    let head = chain.head_index();
    let size = queue.size();
    Ok(Some((head, descriptors(chain, size)?)))
}

/// A device model as saved: its configuration (it holds no in-flight requests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelState {
    Block(BlockState),
    Net(NetState),
}

/// One virtio device in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    pub transport: TransportState,
    pub model: ModelState,
}

struct Inner {
    transport: Transport,
    model: Box<dyn DeviceModel>,
    /// Paused: the device's own thread must not touch the queues or guest memory.
    quiesced: bool,
    /// Shut down: the device's own thread ends.
    stopped: bool,
}

/// A virtio device on the MMIO bus.
pub(crate) struct VirtioMmio {
    inner: Mutex<Inner>,
    irq: EventFd,
    /// vm-memory's view of guest memory (for `virtio-queue`); declared before `_memory` so it is
    /// dropped first: it borrows the mappings `_memory` owns.
    mem: GuestMemoryMmap,
    _memory: Arc<GuestMemory>,
}

impl VirtioMmio {
    /// A device serving `model` over `memory`, interrupting through `irq`.
    pub(crate) fn new(
        model: Box<dyn DeviceModel>,
        memory: Arc<GuestMemory>,
        irq: EventFd,
    ) -> Result<VirtioMmio, crate::vstate::memory::MemoryError> {
        let transport = Transport::new(
            model.device_id(),
            model.features(),
            &model.queue_max_sizes(),
        );
        Ok(VirtioMmio {
            inner: Mutex::new(Inner {
                transport,
                model,
                quiesced: false,
                stopped: false,
            }),
            irq,
            mem: memory.as_vm_memory()?,
            _memory: memory,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the registers half written in a way that
        // matters more than losing the device: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn raise(&self) {
        if let Err(e) = self.irq.write(1) {
            tracing::error!("virtio interrupt lost: {e}");
        }
    }

    fn notify(&self, inner: &mut Inner, index: u16) {
        let Inner {
            transport, model, ..
        } = inner;
        let Some(queue) = transport.queue_mut(index) else {
            return;
        };
        match model.process_queue(index, queue, &self.mem) {
            Ok(false) => {}
            Ok(true) => {
                transport.signal_used();
                self.raise();
            }
            Err(Broken(why)) => {
                tracing::warn!(
                    "virtio device {}: queue {index}: {why}; the device needs a reset",
                    model.device_id()
                );
                transport.mark_broken();
                self.raise();
            }
        }
    }

    /// Stops (or lets go on) the device's own thread's work on queues and guest memory: a
    /// paused VM's devices change nothing. Returns once any work under way is finished.
    pub(crate) fn quiesce(&self, on: bool) {
        let mut inner = self.lock();
        inner.quiesced = on;
        if !on {
            inner.model.wake();
        }
    }

    /// Ends the device's own thread.
    pub(crate) fn shutdown(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        inner.model.wake();
    }

    /// For the receive thread: serves queue `index` unless paused or not live, and says what
    /// to wait on next (see [`DeviceModel::receive_waits`]); None once shut down.
    pub(crate) fn service_receive(&self, index: u16) -> Option<(i32, i32, bool)> {
        let mut inner = self.lock();
        if inner.stopped {
            return None;
        }
        let (input, wake, _) = inner.model.receive_waits()?;
        if inner.quiesced || !inner.transport.is_live() {
            return Some((input, wake, false));
        }
        self.notify(&mut inner, index);
        let watch = inner.transport.is_live() && inner.model.receive_waits().is_some_and(|w| w.2);
        Some((input, wake, watch))
    }

    /// The device's full state.
    pub(crate) fn save(&self) -> VirtioDeviceState {
        let inner = self.lock();
        VirtioDeviceState {
            transport: inner.transport.save(),
            model: inner.model.save(),
        }
    }

    /// Puts saved transport registers back (checked against guest memory).
    pub(crate) fn restore(&self, state: &TransportState) -> Result<(), TransportStateError> {
        let mem = &self.mem;
        self.lock().transport.restore(state, |addr, len| {
            usize::try_from(len)
                .is_ok_and(|len| mem.check_range(GuestAddress(addr), len, Permissions::ReadWrite))
        })
    }

    /// Raises the interrupt line again if the restored device had an interrupt pending: the
    /// edge the driver has not acknowledged yet may have been lost with the old process.
    pub(crate) fn raise_pending(&self) {
        if self.lock().transport.interrupt_status() != 0 {
            self.raise();
        }
    }

    #[cfg(test)]
    pub(crate) fn transport_status(&self) -> u32 {
        self.lock().transport.status()
    }

    #[cfg(test)]
    pub(crate) fn features(&self) -> (u64, u64) {
        let inner = self.lock();
        (
            inner.transport.device_features(),
            inner.transport.driver_features(),
        )
    }
}

impl MmioDevice for VirtioMmio {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.lock().model.read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            let v = self.lock().transport.read(offset).unwrap_or(0);
            data.copy_from_slice(&v.to_le_bytes());
        } else {
            data.fill(0xff);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        // The config space of thaw's devices is read-only; registers take aligned 32-bit stores.
        if offset >= CONFIG_OFFSET || data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes(data.try_into().expect("4 bytes"));
        let mut inner = self.lock();
        match inner.transport.write(offset, value) {
            Effect::None | Effect::Reset => {}
            Effect::Notify(q) => self.notify(&mut inner, q),
        }
    }
}
