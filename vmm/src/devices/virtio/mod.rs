//! virtio devices on the virtio-mmio transport (virtio 1.x, version 2 register layout, split
//! virtqueues), described to Linux in the ACPI DSDT (`LNRO0005` devices, see `arch::acpi`).
//!
//! - [`transport`]: the virtio-mmio register file as a state machine without I/O (status,
//!   feature negotiation, queue setup, interrupt status and acknowledgement, config generation)
//!   and its saved form.
//! - [`block`]: virtio-blk on a raw image file.
//! - [`net`]: virtio-net on an existing tap device ([`crate::devices::tap`]), with a receive
//!   thread.
//! - [`device`]: a transport and a device model joined on the MMIO bus, with guest memory and the
//!   interrupt line (an irqfd on one IOAPIC pin).
//!
//! Queues are processed synchronously when the driver notifies (the MMIO store, in the vCPU
//! thread that made it). So a request is never half done when the VM pauses: the pause path
//! completes a pending MMIO instruction before the vCPU parks, and a checkpoint holds only
//! finished requests and untouched available buffers. The one device thread, virtio-net's
//! receive thread, works under the device lock and is quiesced by `Vm::pause` before state is
//! saved.
//!
//! The rings themselves go through rust-vmm's `virtio-queue` (descriptor chain walking with its
//! bounds and loop checks, used-ring updates); the constants come from `virtio-bindings`.

pub mod block;
pub mod device;
#[cfg(test)]
mod driver_harness;
pub mod net;
#[cfg(test)]
mod net_harness;
pub mod transport;

use crate::devices::mmio::MmioBus;
use crate::vstate::memory::{GuestMemory, MemoryError};
use block::{Block, DiskConfig, DiskError};
use device::{DeviceModel, ModelState, VirtioDeviceState, VirtioMmio};
use kvm_ioctls::VmFd;
use net::{Net, NetConfig, NetError};
use std::sync::Arc;
use transport::TransportStateError;
use vmm_sys_util::eventfd::EventFd;

/// Virtio devices could not be set up or restored.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("disk {index}: {source}")]
    Disk { index: usize, source: DiskError },
    #[error("network interface {index}: {source}")]
    Net { index: usize, source: NetError },
    #[error("{given} --net given at restore, but the checkpoint has {saved} network interfaces: give none (reopen the saved taps) or one per saved interface, in order")]
    NetCount { given: usize, saved: usize },
    #[error("--net {index} at restore gives MAC {given:02x?}, but the guest knows the interface as {saved:02x?}: a restore keeps the MAC")]
    NetMac {
        index: usize,
        given: [u8; 6],
        saved: [u8; 6],
    },
    #[error("corrupt or unsupported VM state blob: virtio device {index} is a disk after a network interface (disks come first)")]
    DeviceOrder { index: usize },
    #[error("cannot start the receive thread of network interface {index}: {source}")]
    RxThread {
        index: usize,
        source: std::io::Error,
    },
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

/// The disks and network interfaces a restore opens: the saved ones, or the overrides (same
/// count and order) when given.
pub(crate) fn restore_devices(
    disks: &[DiskConfig],
    nets: &[NetConfig],
    saved: &[VirtioDeviceState],
) -> Result<(Vec<DiskConfig>, Vec<NetConfig>), VirtioError> {
    let mut saved_disks = Vec::new();
    let mut saved_nets = Vec::new();
    for (index, d) in saved.iter().enumerate() {
        match &d.model {
            ModelState::Block(_) if !saved_nets.is_empty() => {
                return Err(VirtioError::DeviceOrder { index })
            }
            ModelState::Block(b) => saved_disks.push(b.clone()),
            ModelState::Net(n) => saved_nets.push(n.clone()),
        }
    }
    let disks = restore_disks(disks, &saved_disks)?;
    let nets = if nets.is_empty() {
        saved_nets
            .iter()
            .map(|n| NetConfig {
                tap: n.tap.clone(),
                mac: Some(n.mac),
            })
            .collect()
    } else {
        if nets.len() != saved_nets.len() {
            return Err(VirtioError::NetCount {
                given: nets.len(),
                saved: saved_nets.len(),
            });
        }
        // The tap may differ (the restore host's network is its own); the MAC may not.
        nets.iter()
            .zip(&saved_nets)
            .enumerate()
            .map(|(index, (given, s))| match given.mac {
                Some(mac) if mac != s.mac => Err(VirtioError::NetMac {
                    index,
                    given: mac,
                    saved: s.mac,
                }),
                _ => Ok(NetConfig {
                    tap: given.tap.clone(),
                    mac: Some(s.mac),
                }),
            })
            .collect::<Result<_, _>>()?
    };
    Ok((disks, nets))
}

/// The disks a restore opens: the saved ones, or `overrides` (same count and order) when given.
fn restore_disks(
    overrides: &[DiskConfig],
    saved: &[block::BlockState],
) -> Result<Vec<DiskConfig>, VirtioError> {
    let saved: Vec<DiskConfig> = saved.iter().map(DiskConfig::from).collect();
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

/// Opens `disks` and `nets` and puts a virtio device for each on `bus`, disks first, in order,
/// each interrupting through an irqfd on its own IOAPIC pin (see [`placement`]). Network
/// interfaces get their receive thread.
pub(crate) fn attach(
    vm: &VmFd,
    memory: &Arc<GuestMemory>,
    disks: &[DiskConfig],
    nets: &[NetConfig],
    bus: &mut MmioBus,
) -> Result<Vec<Arc<VirtioMmio>>, VirtioError> {
    let count = disks.len() + nets.len();
    if count > MAX_DEVICES {
        return Err(VirtioError::TooMany { count });
    }
    let mut models: Vec<Box<dyn DeviceModel>> = Vec::with_capacity(count);
    for (index, disk) in disks.iter().enumerate() {
        let model = Block::open(disk).map_err(|source| VirtioError::Disk { index, source })?;
        models.push(Box::new(model));
    }
    for (index, net) in nets.iter().enumerate() {
        let model = Net::open(net, index).map_err(|source| VirtioError::Net { index, source })?;
        models.push(Box::new(model));
    }
    let mut devices = Vec::with_capacity(count);
    for (index, model) in models.into_iter().enumerate() {
        let (base, gsi) = placement(index).ok_or(VirtioError::TooMany { count })?;
        let irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| VirtioError::Eventfd { index, source })?;
        vm.register_irqfd(&irq, gsi)
            .map_err(|source| VirtioError::Irqfd { index, gsi, source })?;
        let receives = model.receive_waits().is_some();
        let dev = Arc::new(VirtioMmio::new(model, memory.clone(), irq)?);
        if receives {
            net::spawn_rx_thread(dev.clone()).map_err(|source| VirtioError::RxThread {
                index: index - disks.len(),
                source,
            })?;
        }
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
        let reopened = restore_devices(&[], &[], &saved).unwrap().0;
        assert_eq!(reopened[1].path, std::path::Path::new("/b.img"));
        assert!(reopened[1].read_only);
        assert_eq!(reopened[0].id.as_deref(), Some("serial-1"));

        let given = [
            DiskConfig::parse("/c.img").unwrap(),
            DiskConfig::parse("/d.img,ro").unwrap(),
        ];
        let replaced = restore_devices(&given, &[], &saved).unwrap().0;
        assert_eq!(replaced[0].path, std::path::Path::new("/c.img"));
        assert_eq!(
            replaced[0].id.as_deref(),
            Some("serial-1"),
            "the guest sees the same serial"
        );

        let e = restore_devices(&given[..1], &[], &saved).unwrap_err();
        assert!(e.to_string().contains("1 --disk given"), "{e}");
        let e = restore_devices(&[given[1].clone(), given[0].clone()], &[], &saved).unwrap_err();
        assert!(
            e.to_string().contains("--disk 0 at restore is read-only"),
            "{e}"
        );

        let mut with_net = saved.to_vec();
        let mut net = saved_disk("/x", false);
        net.model = ModelState::Net(net::NetState {
            tap: "tap0".into(),
            mac: [6, 0, 0, 0, 0, 9],
        });
        with_net.push(net.clone());
        let (_, nets) = restore_devices(&[], &[], &with_net).unwrap();
        assert_eq!(nets[0].tap, "tap0");
        assert_eq!(nets[0].mac, Some([6, 0, 0, 0, 0, 9]));
        let other = NetConfig::parse("tap=tap7").unwrap();
        let (_, nets) = restore_devices(&[], std::slice::from_ref(&other), &with_net).unwrap();
        assert_eq!(nets[0].tap, "tap7", "the restore host's tap");
        assert_eq!(nets[0].mac, Some([6, 0, 0, 0, 0, 9]), "the MAC stays");
        let e = restore_devices(&[], &[other.clone(), other], &with_net).unwrap_err();
        assert!(e.to_string().contains("2 --net given"), "{e}");
        let e = restore_devices(
            &[],
            &[NetConfig::parse("tap=tap7,mac=06:00:00:00:00:01").unwrap()],
            &with_net,
        )
        .unwrap_err();
        assert!(e.to_string().contains("keeps the MAC"), "{e}");
        let disordered = [net, saved[0].clone()];
        let e = restore_devices(&[], &[], &disordered).unwrap_err();
        assert!(e.to_string().contains("disks come first"), "{e}");
    }

    #[test]
    fn devices_get_windows_and_pins_in_order_and_skip_the_rtc_and_acpi_pins() {
        assert_eq!(placement(0), Some((0xd000_0000, 5)));
        assert_eq!(placement(2), Some((0xd000_2000, 7)));
        assert_eq!(placement(3), Some((0xd000_3000, 10)));
        assert_eq!(placement(MAX_DEVICES - 1).map(|p| p.1), Some(23));
        assert_eq!(placement(MAX_DEVICES), None);
    }
}
