//! The virtio-mmio register file (virtio 1.x, "version 2" layout) as a state machine: registers in,
//! effects out, no I/O. The device wrapper ([`super::device`]) acts on the effects (processing a
//! queue on a notify, resetting the device model) and raises the interrupt line.
//!
//! Accesses to the registers below 0x100 must be aligned 32-bit ones (the spec requires it of
//! drivers); others read as all ones and are ignored. The device-specific config space at 0x100
//! is not here: the wrapper hands it to the device model.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueState, QueueT};

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
const VERSION: u32 = 2;
/// "THAW", little-endian: any value is allowed; drivers only print it.
const VENDOR_ID: u32 = 0x5741_4854;

/// What the device wrapper must do after a register write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    /// The driver made buffers available on this queue (the device is live).
    Notify(u16),
    /// The driver wrote 0 to status: the device model must drop its in-device state.
    Reset,
}

/// A restored transport state that cannot be right.
#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    #[error("{saved} queues saved, the device has {device}")]
    QueueCount { saved: usize, device: usize },
    #[error("queue {queue}: max size {saved} saved, the device has {device}")]
    QueueMax {
        queue: usize,
        saved: u16,
        device: u16,
    },
    #[error("queue {queue}: {what}")]
    Queue { queue: usize, what: String },
    #[error("queue {queue}: its {ring} at {addr:#x}+{len:#x} is outside guest memory")]
    RingOutsideMemory {
        queue: usize,
        ring: &'static str,
        addr: u64,
        len: u64,
    },
    #[error("driver features {driver:#x} include some the device does not offer ({device:#x})")]
    Features { driver: u64, device: u64 },
}

/// One virtqueue as saved (what the driver configured and how far the device got).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        SavedQueue {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// The transport's registers as saved in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<SavedQueue>,
}

/// The register file of one virtio-mmio device.
#[derive(Debug)]
pub(crate) struct Transport {
    device_id: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    queues: Vec<Queue>,
    interrupt_status: u32,
    config_generation: u32,
}

impl Transport {
    /// A device of type `device_id` offering `device_features` (VERSION_1 is added) with one
    /// queue per entry of `queue_max_sizes` (each a power of two up to 32768).
    pub(crate) fn new(device_id: u32, device_features: u64, queue_max_sizes: &[u16]) -> Transport {
        let queues = queue_max_sizes
            .iter()
            .map(|&m| Queue::new(m).expect("device queue sizes are powers of two"))
            .collect();
        Transport {
            device_id,
            device_features: device_features | 1 << VIRTIO_F_VERSION_1,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            config_generation: 0,
        }
    }

    #[cfg(test)]
    /// Features the device offers (with VERSION_1).
    pub(crate) fn device_features(&self) -> u64 {
        self.device_features
    }

    #[cfg(test)]
    /// Features the driver accepted.
    pub(crate) fn driver_features(&self) -> u64 {
        self.driver_features
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> u32 {
        self.status
    }

    pub(crate) fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// The queues, for the device model to process.
    pub(crate) fn queue_mut(&mut self, index: u16) -> Option<&mut Queue> {
        self.queues.get_mut(index as usize)
    }

    /// True once the driver set DRIVER_OK and the device has not failed since.
    pub(crate) fn is_live(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    /// Records used buffers for the driver; the caller raises the interrupt line.
    pub(crate) fn signal_used(&mut self) {
        self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
    }

    /// The device hit an error it cannot report in a request (a malformed descriptor chain or
    /// ring): it sets DEVICE_NEEDS_RESET and tells the driver with a config-change interrupt,
    /// which the caller raises.
    pub(crate) fn mark_broken(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Reads the 32-bit register at `offset` (below 0x100); None for no register there.
    pub(crate) fn read(&self, offset: u64) -> Option<u32> {
        let Ok(offset) = u32::try_from(offset) else {
            return None;
        };
        Some(match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_id,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // Write-only registers and the queue addresses read as 0 (the spec leaves them
            // undefined; Linux never reads them).
            VIRTIO_MMIO_DEVICE_FEATURES_SEL
            | VIRTIO_MMIO_DRIVER_FEATURES
            | VIRTIO_MMIO_DRIVER_FEATURES_SEL
            | VIRTIO_MMIO_QUEUE_SEL
            | VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_NOTIFY
            | VIRTIO_MMIO_INTERRUPT_ACK
            | VIRTIO_MMIO_QUEUE_DESC_LOW..=VIRTIO_MMIO_QUEUE_USED_HIGH => 0,
            // No shared memory regions: length all ones means "none" (spec 4.2.2).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => return None,
        })
    }

    /// Writes the 32-bit register at `offset` (below 0x100).
    pub(crate) fn write(&mut self, offset: u64, value: u32) -> Effect {
        let Ok(offset) = u32::try_from(offset) else {
            return Effect::None;
        };
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => self.with_queue_setup(|q| q.set_size(value as u16)),
            VIRTIO_MMIO_QUEUE_READY => self.with_queue_setup(|q| q.set_ready(value == 1)),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.with_queue_setup(|q| q.set_desc_table_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.with_queue_setup(|q| q.set_desc_table_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.with_queue_setup(|q| q.set_avail_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.with_queue_setup(|q| q.set_avail_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                self.with_queue_setup(|q| q.set_used_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.with_queue_setup(|q| q.set_used_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY if self.is_live() && (value as usize) < self.queues.len() => {
                return Effect::Notify(value as u16);
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !value,
            VIRTIO_MMIO_STATUS => return self.write_status(value),
            _ => {}
        }
        Effect::None
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated between DRIVER and FEATURES_OK only.
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mask = 0xffff_ffffu64 << shift;
        self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
    }

    /// Queue registers change only while the driver sets the device up (FEATURES_OK, not yet
    /// DRIVER_OK) and the selected queue is not ready, except that READY itself may be cleared.
    fn with_queue_setup(&mut self, f: impl FnOnce(&mut Queue)) {
        let setting_up = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        if !setting_up {
            return;
        }
        if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
            f(q);
        }
    }

    fn write_status(&mut self, value: u32) -> Effect {
        if value == 0 {
            self.reset();
            return Effect::Reset;
        }
        // The driver only adds bits (spec 3.1.1); anything else is ignored.
        if value & self.status != self.status {
            return Effect::None;
        }
        let mut value = value;
        let adds = value & !self.status;
        if adds & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let acceptable = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                && self.driver_features & !self.device_features == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !acceptable {
                // The driver reads FEATURES_OK back and gives up (spec 3.1.1 step 6).
                value &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if adds & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            value &= !VIRTIO_CONFIG_S_DRIVER_OK;
        }
        if adds & VIRTIO_CONFIG_S_DRIVER != 0 && value & VIRTIO_CONFIG_S_ACKNOWLEDGE == 0 {
            value &= !VIRTIO_CONFIG_S_DRIVER;
        }
        self.status = value;
        Effect::None
    }

    fn reset(&mut self) {
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }

    /// The registers as saved in a checkpoint.
    pub(crate) fn save(&self) -> TransportState {
        TransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Puts saved registers back, after checking them: the same queues as this device has, each
    /// a valid size, the rings of ready queues inside guest memory (`in_memory(addr, len)`), no
    /// feature the device does not offer.
    pub(crate) fn restore(
        &mut self,
        state: &TransportState,
        in_memory: impl Fn(u64, u64) -> bool,
    ) -> Result<(), TransportStateError> {
        if state.queues.len() != self.queues.len() {
            return Err(TransportStateError::QueueCount {
                saved: state.queues.len(),
                device: self.queues.len(),
            });
        }
        if state.driver_features & !self.device_features != 0 {
            return Err(TransportStateError::Features {
                driver: state.driver_features,
                device: self.device_features,
            });
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, (saved, current)) in state.queues.iter().zip(&self.queues).enumerate() {
            if saved.max_size != current.max_size() {
                return Err(TransportStateError::QueueMax {
                    queue: i,
                    saved: saved.max_size,
                    device: current.max_size(),
                });
            }
            let q = Queue::try_from(QueueState::from(*saved)).map_err(|e| {
                TransportStateError::Queue {
                    queue: i,
                    what: format!("{e} (size {}, max {})", saved.size, saved.max_size),
                }
            })?;
            if q.ready() {
                let n = u64::from(q.size());
                let rings = [
                    ("descriptor table", q.desc_table(), 16 * n),
                    ("available ring", q.avail_ring(), 6 + 2 * n),
                    ("used ring", q.used_ring(), 6 + 8 * n),
                ];
                for (ring, addr, len) in rings {
                    if !in_memory(addr, len) {
                        return Err(TransportStateError::RingOutsideMemory {
                            queue: i,
                            ring,
                            addr,
                            len,
                        });
                    }
                }
            }
            queues.push(q);
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.queue_sel = state.queue_sel;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        self.queues = queues;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ALL_UP: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK;

    /// Drives `t` through the driver's initialisation (spec 3.1.1) with one queue of `size` at
    /// the given ring addresses.
    pub(crate) fn bring_up(t: &mut Transport, features: u64, size: u16, rings: [u64; 3]) {
        assert_eq!(t.write(u64::from(VIRTIO_MMIO_STATUS), 0), Effect::Reset);
        t.write(u64::from(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
        t.write(
            u64::from(VIRTIO_MMIO_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        t.write(u64::from(VIRTIO_MMIO_DRIVER_FEATURES_SEL), 0);
        t.write(u64::from(VIRTIO_MMIO_DRIVER_FEATURES), features as u32);
        t.write(u64::from(VIRTIO_MMIO_DRIVER_FEATURES_SEL), 1);
        t.write(
            u64::from(VIRTIO_MMIO_DRIVER_FEATURES),
            (features >> 32) as u32,
        );
        t.write(
            u64::from(VIRTIO_MMIO_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        t.write(u64::from(VIRTIO_MMIO_QUEUE_SEL), 0);
        t.write(u64::from(VIRTIO_MMIO_QUEUE_NUM), u32::from(size));
        let regs = [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_AVAIL_HIGH),
            (VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_QUEUE_USED_HIGH),
        ];
        for ((lo, hi), addr) in regs.into_iter().zip(rings) {
            t.write(u64::from(lo), addr as u32);
            t.write(u64::from(hi), (addr >> 32) as u32);
        }
        t.write(u64::from(VIRTIO_MMIO_QUEUE_READY), 1);
        t.write(u64::from(VIRTIO_MMIO_STATUS), ALL_UP);
    }

    fn reg(t: &Transport, r: u32) -> u32 {
        t.read(u64::from(r)).unwrap()
    }

    #[test]
    fn identity_registers_say_virtio_mmio_version_2() {
        let t = Transport::new(2, 0, &[256]);
        assert_eq!(reg(&t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(reg(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(reg(&t, VIRTIO_MMIO_DEVICE_ID), 2);
        assert_eq!(reg(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        assert_eq!(t.read(0x0ff), None);
    }

    #[test]
    fn features_are_offered_in_two_halves_and_version_1_is_always_there() {
        let mut t = Transport::new(2, 1 << 9, &[8]);
        t.write(u64::from(VIRTIO_MMIO_DEVICE_FEATURES_SEL), 0);
        assert_eq!(reg(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 9);
        t.write(u64::from(VIRTIO_MMIO_DEVICE_FEATURES_SEL), 1);
        assert_eq!(reg(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        t.write(u64::from(VIRTIO_MMIO_DEVICE_FEATURES_SEL), 2);
        assert_eq!(reg(&t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn a_full_bring_up_makes_the_device_live_and_notifies_reach_it() {
        let mut t = Transport::new(2, 1 << 9, &[16]);
        bring_up(&mut t, 1 << 32 | 1 << 9, 8, [0x1000, 0x2000, 0x3000]);
        assert_eq!(reg(&t, VIRTIO_MMIO_STATUS), ALL_UP);
        assert!(t.is_live());
        assert_eq!(t.driver_features(), 1 << 32 | 1 << 9);
        let s = t.save();
        assert_eq!(s.queues[0].size, 8);
        assert!(s.queues[0].ready);
        assert_eq!(
            (
                s.queues[0].desc_table,
                s.queues[0].avail_ring,
                s.queues[0].used_ring
            ),
            (0x1000, 0x2000, 0x3000)
        );
        assert_eq!(
            t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 0),
            Effect::Notify(0)
        );
        assert_eq!(
            t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 1),
            Effect::None,
            "no queue 1"
        );
        // Queue setup is frozen once the device is live.
        t.write(u64::from(VIRTIO_MMIO_QUEUE_NUM), 4);
        assert_eq!(t.save().queues[0].size, 8);
    }

    #[test]
    fn features_ok_is_refused_without_version_1_or_with_unoffered_features() {
        let mut t = Transport::new(2, 1 << 9, &[8]);
        bring_up(&mut t, 1 << 9, 8, [0x1000, 0x2000, 0x3000]);
        assert_eq!(
            reg(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "legacy drivers are not served"
        );
        assert!(!t.is_live(), "DRIVER_OK needs FEATURES_OK");
        assert_eq!(
            t.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 0),
            Effect::None
        );
        let mut t = Transport::new(2, 1 << 9, &[8]);
        bring_up(&mut t, 1 << 32 | 1 << 5, 8, [0x1000, 0x2000, 0x3000]);
        assert_eq!(reg(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn bad_queue_sizes_are_ignored() {
        let mut t = Transport::new(2, 0, &[16]);
        bring_up(&mut t, 1 << 32, 12, [0x1000, 0x2000, 0x3000]);
        assert_eq!(t.save().queues[0].size, 16, "12 is not a power of two");
        let mut t = Transport::new(2, 0, &[16]);
        bring_up(&mut t, 1 << 32, 32, [0x1000, 0x2000, 0x3000]);
        assert_eq!(t.save().queues[0].size, 16, "32 is over the max");
    }

    #[test]
    fn interrupts_are_acknowledged_bit_by_bit_and_reset_clears_everything() {
        let mut t = Transport::new(2, 0, &[8]);
        bring_up(&mut t, 1 << 32, 8, [0x1000, 0x2000, 0x3000]);
        t.signal_used();
        t.mark_broken();
        assert_eq!(reg(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        assert_eq!(reg(&t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert!(!t.is_live(), "a broken device processes nothing");
        assert_ne!(reg(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        t.write(u64::from(VIRTIO_MMIO_INTERRUPT_ACK), 1);
        assert_eq!(reg(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(t.write(u64::from(VIRTIO_MMIO_STATUS), 0), Effect::Reset);
        assert_eq!(reg(&t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(reg(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        let q = t.save().queues[0];
        assert!(!q.ready);
        assert_eq!(q.size, 8, "a reset queue offers its max size");
        assert_eq!(
            reg(&t, VIRTIO_MMIO_CONFIG_GENERATION),
            1,
            "the generation survives resets"
        );
    }

    #[test]
    fn status_bits_are_only_added() {
        let mut t = Transport::new(2, 0, &[8]);
        bring_up(&mut t, 1 << 32, 8, [0x1000, 0x2000, 0x3000]);
        t.write(u64::from(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert_eq!(reg(&t, VIRTIO_MMIO_STATUS), ALL_UP);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_refused() {
        let mut t = Transport::new(2, 1 << 9, &[16]);
        bring_up(&mut t, 1 << 32 | 1 << 9, 8, [0x1000, 0x2000, 0x3000]);
        t.signal_used();
        let mut s = t.save();
        s.queues[0].next_avail = 5;
        s.queues[0].next_used = 4;
        let json = serde_json::to_string(&s).unwrap();
        let back: TransportState = serde_json::from_str(&json).unwrap();
        let mut fresh = Transport::new(2, 1 << 9, &[16]);
        fresh.restore(&back, |_, _| true).unwrap();
        assert_eq!(fresh.save(), s);
        assert!(fresh.is_live());
        assert_eq!(fresh.interrupt_status(), 1);

        let mem = |a: u64, l: u64| a + l <= 0x10000;
        let mut bad = s.clone();
        bad.queues[0].size = 12;
        let e = Transport::new(2, 1 << 9, &[16])
            .restore(&bad, mem)
            .unwrap_err();
        assert!(e.to_string().contains("size 12"), "{e}");
        let mut bad = s.clone();
        bad.queues[0].size = 32;
        assert!(Transport::new(2, 1 << 9, &[16]).restore(&bad, mem).is_err());
        let mut bad = s.clone();
        bad.queues[0].used_ring = 0xfff0;
        let e = Transport::new(2, 1 << 9, &[16])
            .restore(&bad, mem)
            .unwrap_err();
        assert!(e.to_string().contains("used ring"), "{e}");
        let mut bad = s.clone();
        bad.queues.push(bad.queues[0]);
        assert!(matches!(
            Transport::new(2, 1 << 9, &[16]).restore(&bad, mem),
            Err(TransportStateError::QueueCount { .. })
        ));
        let mut bad = s.clone();
        bad.driver_features |= 1 << 5;
        assert!(matches!(
            Transport::new(2, 1 << 9, &[16]).restore(&bad, mem),
            Err(TransportStateError::Features { .. })
        ));
        let mut bad = s.clone();
        bad.queues[0].max_size = 8;
        assert!(Transport::new(2, 1 << 9, &[16]).restore(&bad, mem).is_err());
    }
}
