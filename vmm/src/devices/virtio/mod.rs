//! virtio devices on the virtio-mmio transport (virtio 1.x, version 2 register layout, split
//! virtqueues), announced to Linux on its command line as Firecracker does.
//!
//! - [`transport`]: the virtio-mmio register file as a state machine without I/O (status,
//!   feature negotiation, queue setup, interrupt status and acknowledgement, config generation)
//!   and its saved form.
//! - [`block`]: virtio-blk on a raw image file.
//! - [`device`]: a transport and a device model joined on the MMIO bus, with guest memory and the
//!   interrupt line (an irqfd on one IOAPIC pin).
//!
//! Queues are processed synchronously when the driver notifies (the MMIO store, in the vCPU
//! thread that made it). So a request is never half done when the VM pauses: the pause path
//! completes a pending MMIO instruction before the vCPU parks, and a checkpoint holds only
//! finished requests and untouched available buffers.
//!
//! The rings themselves go through rust-vmm's `virtio-queue` (descriptor chain walking with its
//! bounds and loop checks, used-ring updates); the constants come from `virtio-bindings`.

pub mod block;
pub mod device;
#[cfg(test)]
mod driver_harness;
pub mod transport;

use crate::devices::mmio::MmioBus;
use crate::vstate::memory::{GuestMemory, MemoryError};
use block::{Block, DiskConfig, DiskError};
use device::{ModelState, VirtioDeviceState, VirtioMmio};
use kvm_ioctls::VmFd;
use std::sync::Arc;
use transport::TransportStateError;
use vmm_sys_util::eventfd::EventFd;

/// Virtio devices could not be set up or restored.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("disk {index}: {source}")]
    Disk { index: usize, source: DiskError },
    #[error("{count} virtio devices configured; at most {MAX_DEVICES} fit (one IOAPIC pin each)")]
    TooMany { count: usize },
    #[error("{given} --disk given at restore, but the checkpoint has {saved} disks: give none (reopen the saved paths) or one per saved disk, in order")]
    DiskCount { given: usize, saved: usize },
    #[error("--disk {index} at restore is {given}, but the checkpoint's disk {index} is {saved} (the guest negotiated that): give it the same way")]
    DiskMode {
        index: usize,
        given: &'static str,
        saved: &'static str,
    },
    #[error("corrupt or unsupported VM state blob: virtio device {index}: {source}")]
    State {
        index: usize,
        source: TransportStateError,
    },
    #[error("cannot create the interrupt eventfd of virtio device {index}: {source}")]
    Eventfd {
        index: usize,
        source: std::io::Error,
    },
    #[error(
        "cannot register the interrupt of virtio device {index} (GSI {gsi}) with KVM: {source}"
    )]
    Irqfd {
        index: usize,
        gsi: u32,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// The disks a restore opens: the saved ones, or `overrides` (same count and order) when given.
pub(crate) fn restore_disks(
    overrides: &[DiskConfig],
    saved: &[VirtioDeviceState],
) -> Result<Vec<DiskConfig>, VirtioError> {
    let saved: Vec<DiskConfig> = saved
        .iter()
        .map(|d| match &d.model {
            ModelState::Block(b) => DiskConfig::from(b),
        })
        .collect();
    if overrides.is_empty() {
        return Ok(saved);
    }
    if overrides.len() != saved.len() {
        return Err(VirtioError::DiskCount {
            given: overrides.len(),
            saved: saved.len(),
        });
    }
    let mode = |ro: bool| if ro { "read-only" } else { "read-write" };
    // A new path keeps the saved serial, so the guest sees the same disk.
    overrides
        .iter()
        .zip(saved)
        .enumerate()
        .map(|(index, (o, s))| {
            if o.read_only != s.read_only {
                return Err(VirtioError::DiskMode {
                    index,
                    given: mode(o.read_only),
                    saved: mode(s.read_only),
                });
            }
            Ok(DiskConfig {
                id: o.id.clone().or(s.id),
                ..o.clone()
            })
        })
        .collect()
}

/// Opens `disks` and puts a virtio-blk device for each on `bus`, in order, each interrupting
/// through an irqfd on its own IOAPIC pin (see [`placement`]).
pub(crate) fn attach_disks(
    vm: &VmFd,
    memory: &Arc<GuestMemory>,
    disks: &[DiskConfig],
    bus: &mut MmioBus,
) -> Result<Vec<Arc<VirtioMmio>>, VirtioError> {
    if disks.len() > MAX_DEVICES {
        return Err(VirtioError::TooMany { count: disks.len() });
    }
    let mut devices = Vec::with_capacity(disks.len());
    for (index, disk) in disks.iter().enumerate() {
        let (base, gsi) = placement(index).ok_or(VirtioError::TooMany { count: disks.len() })?;
        let model = Block::open(disk).map_err(|source| VirtioError::Disk { index, source })?;
        let irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| VirtioError::Eventfd { index, source })?;
        vm.register_irqfd(&irq, gsi)
            .map_err(|source| VirtioError::Irqfd { index, gsi, source })?;
        let dev = Arc::new(VirtioMmio::new(Box::new(model), memory.clone(), irq)?);
        bus.insert(base, MMIO_SIZE, dev.clone());
        devices.push(dev);
    }
    Ok(devices)
}

/// Guest-physical address of the first virtio-mmio window (in the hole below 4 GiB, which guest
/// RAM never reaches: it ends at 0xc000_0000).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one device's register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// IOAPIC pins free for virtio devices, in the order devices get them: 8 is the RTC's and 9 is
/// reserved for ACPI's event device; 0-4 are the PIT, keyboard, cascade and serial ports.
const GSIS: [u32; 17] = [
    5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];
/// Most virtio devices one VM can have (one IOAPIC pin each).
pub const MAX_DEVICES: usize = GSIS.len();

/// Where the `index`th virtio device lives: its MMIO base and its IOAPIC pin (GSI); None past
/// [`MAX_DEVICES`].
pub fn placement(index: usize) -> Option<(u64, u32)> {
    GSIS.get(index)
        .map(|&gsi| (MMIO_BASE + MMIO_SIZE * index as u64, gsi))
}

/// The Linux command-line parameters that announce `count` virtio-mmio devices
/// (`virtio_mmio.device=4K@0xd0000000:5 ...`, needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
pub fn linux_cmdline(count: usize) -> String {
    (0..count.min(MAX_DEVICES))
        .filter_map(placement)
        .map(|(base, gsi)| format!("virtio_mmio.device=4K@{base:#x}:{gsi}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use block::BlockState;
    use transport::TransportState;

    fn saved_disk(path: &str, read_only: bool) -> VirtioDeviceState {
        VirtioDeviceState {
            transport: TransportState {
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                status: 0,
                queue_sel: 0,
                interrupt_status: 0,
                config_generation: 0,
                queues: vec![],
            },
            model: ModelState::Block(BlockState {
                path: path.into(),
                read_only,
                id: "serial-1".into(),
            }),
        }
    }

    #[test]
    fn a_restore_reopens_saved_disks_or_takes_matching_replacements() {
        let saved = [saved_disk("/a.img", false), saved_disk("/b.img", true)];
        let reopened = restore_disks(&[], &saved).unwrap();
        assert_eq!(reopened[1].path, std::path::Path::new("/b.img"));
        assert!(reopened[1].read_only);
        assert_eq!(reopened[0].id.as_deref(), Some("serial-1"));

        let given = [
            DiskConfig::parse("/c.img").unwrap(),
            DiskConfig::parse("/d.img,ro").unwrap(),
        ];
        let replaced = restore_disks(&given, &saved).unwrap();
        assert_eq!(replaced[0].path, std::path::Path::new("/c.img"));
        assert_eq!(
            replaced[0].id.as_deref(),
            Some("serial-1"),
            "the guest sees the same serial"
        );

        let e = restore_disks(&given[..1], &saved).unwrap_err();
        assert!(e.to_string().contains("1 --disk given"), "{e}");
        let e = restore_disks(&[given[1].clone(), given[0].clone()], &saved).unwrap_err();
        assert!(
            e.to_string().contains("--disk 0 at restore is read-only"),
            "{e}"
        );
    }

    #[test]
    fn devices_get_windows_and_pins_in_order_and_skip_the_rtc_and_acpi_pins() {
        assert_eq!(placement(0), Some((0xd000_0000, 5)));
        assert_eq!(placement(2), Some((0xd000_2000, 7)));
        assert_eq!(placement(3), Some((0xd000_3000, 10)));
        assert_eq!(placement(MAX_DEVICES - 1).map(|p| p.1), Some(23));
        assert_eq!(placement(MAX_DEVICES), None);
        assert_eq!(linux_cmdline(0), "");
        assert_eq!(
            linux_cmdline(2),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
