//! A guest driver harness for virtio-blk: descriptors and rings written into guest memory as a
//! driver writes them, the device driven through its MMIO registers, results checked against the
//! image file. No KVM: the interrupt line is a plain eventfd the test reads.

use super::block::{Block, DiskConfig, DiskError};
use super::device::{VirtioDeviceState, VirtioMmio};
use crate::devices::mmio::MmioDevice;
use crate::persist::state::VmState;
use crate::vstate::memory::GuestMemory;
use std::path::Path;
use std::sync::Arc;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const QSIZE: u16 = 16;
const HDR: u64 = 0x8000;
const STATUS: u64 = 0x8100;
const DATA: u64 = 0x10000;
const W: u16 = VRING_DESC_F_WRITE as u16;
const IMAGE_SECTORS: u64 = 64;

/// One descriptor as a driver writes it (the harness chains them with NEXT in order).
#[derive(Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    flags: u16,
}

fn d(addr: u64, len: u32, flags: u16) -> D {
    D { addr, len, flags }
}

struct Driver {
    mem: Arc<GuestMemory>,
    dev: VirtioMmio,
    irq: EventFd,
    avail_idx: u16,
    used_seen: u16,
}

fn image(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let bytes: Vec<u8> = (0..IMAGE_SECTORS * 512)
        .map(|i| (i / 512) as u8 ^ (i % 251) as u8)
        .collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

impl Driver {
    fn new(config: &DiskConfig) -> Driver {
        let mem = Arc::new(GuestMemory::new(&[(0, MEM)]).unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let model = Block::open(config).unwrap();
        let dev = VirtioMmio::new(Box::new(model), mem.clone(), irq.try_clone().unwrap()).unwrap();
        let mut drv = Driver {
            mem,
            dev,
            irq,
            avail_idx: 0,
            used_seen: 0,
        };
        drv.bring_up();
        drv
    }

    fn reg(&self, r: u32) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(u64::from(r), &mut b);
        u32::from_le_bytes(b)
    }

    fn set(&self, r: u32, v: u32) {
        self.dev.write(u64::from(r), &v.to_le_bytes());
    }

    /// The Linux driver's sequence (spec 3.1.1), accepting every offered feature.
    fn bring_up(&mut self) {
        self.set(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(self.reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.reg(VIRTIO_MMIO_VERSION), 2);
        assert_eq!(self.reg(VIRTIO_MMIO_DEVICE_ID), 2);
        self.set(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.set(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        for sel in 0..2 {
            self.set(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            let f = self.reg(VIRTIO_MMIO_DEVICE_FEATURES);
            self.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            self.set(VIRTIO_MMIO_DRIVER_FEATURES, f);
        }
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.set(VIRTIO_MMIO_STATUS, s);
        assert_eq!(self.reg(VIRTIO_MMIO_STATUS), s, "features accepted");
        self.set(VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(self.reg(VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        self.set(VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
        self.set(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC as u32);
        self.set(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
        self.set(VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
        self.set(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        self.set(VIRTIO_MMIO_QUEUE_USED_LOW, USED as u32);
        self.set(VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        self.set(VIRTIO_MMIO_QUEUE_READY, 1);
        self.set(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        self.avail_idx = 0;
        self.used_seen = 0;
        for a in [AVAIL, USED] {
            self.mem.write(a, &[0; 4]).unwrap();
        }
    }

    /// Writes descriptors at table slots `first..` (chained in order unless `links` overrides
    /// the next index of a slot), puts the head on the available ring and notifies.
    fn submit_raw(&mut self, first: u16, descs: &[D], links: &[(usize, u16)]) {
        for (i, x) in descs.iter().enumerate() {
            let slot = first + i as u16;
            let last = i + 1 == descs.len();
            let mut next = slot + 1;
            let mut flags = x.flags;
            if let Some(&(_, to)) = links.iter().find(|(at, _)| *at == i) {
                next = to;
                flags |= VRING_DESC_F_NEXT as u16;
            } else if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&x.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&x.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem.write(DESC + 16 * u64::from(slot), &raw).unwrap();
        }
        self.put_avail(first);
    }

    fn put_avail(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write(AVAIL + 4 + 2 * slot, &head.to_le_bytes())
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write(AVAIL + 2, &self.avail_idx.to_le_bytes())
            .unwrap();
        self.set(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    }

    /// A request: header (type, sector), data buffers, status byte. Returns (status, used len).
    fn request(&mut self, kind: u32, sector: u64, data: &[D]) -> Option<(u8, u32)> {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(HDR, &h).unwrap();
        self.mem.write(STATUS, &[0xee]).unwrap();
        let mut chain = vec![d(HDR, 16, 0)];
        chain.extend_from_slice(data);
        chain.push(d(STATUS, 1, W));
        self.submit_raw(0, &chain, &[]);
        self.take_used()
            .map(|(_, len)| (self.mem_byte(STATUS), len))
    }

    fn mem_byte(&self, addr: u64) -> u8 {
        let mut b = [0u8];
        self.mem.read(addr, &mut b).unwrap();
        b[0]
    }

    fn mem_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read(addr, &mut b).unwrap();
        b
    }

    /// The next used element (head, len), if the device added one.
    fn take_used(&mut self) -> Option<(u32, u32)> {
        let mut idx = [0u8; 2];
        self.mem.read(USED + 2, &mut idx).unwrap();
        if u16::from_le_bytes(idx) == self.used_seen {
            return None;
        }
        let slot = u64::from(self.used_seen % QSIZE);
        let mut e = [0u8; 8];
        self.mem.read(USED + 4 + 8 * slot, &mut e).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((
            u32::from_le_bytes(e[0..4].try_into().unwrap()),
            u32::from_le_bytes(e[4..8].try_into().unwrap()),
        ))
    }

    /// Interrupts raised since the last call.
    fn interrupts(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    fn needs_reset(&self) -> bool {
        self.reg(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }
}

fn disk(path: &Path, read_only: bool) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        read_only,
        id: None,
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn reads_return_the_image_bytes_and_interrupt_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "root.img");
    let mut drv = Driver::new(&disk(&img, false));
    let mut cap = [0u8; 8];
    drv.dev.read(0x100, &mut cap);
    assert_eq!(
        u64::from_le_bytes(cap),
        IMAGE_SECTORS,
        "capacity in sectors"
    );

    // Two buffers for three sectors, as a scatter-gather read.
    let r = drv.request(
        VIRTIO_BLK_T_IN,
        5,
        &[d(DATA, 1024, W), d(DATA + 0x4000, 512, W)],
    );
    assert_eq!(r, Some((OK, 1536 + 1)));
    let file = std::fs::read(&img).unwrap();
    assert_eq!(drv.mem_bytes(DATA, 1024), file[5 * 512..7 * 512]);
    assert_eq!(drv.mem_bytes(DATA + 0x4000, 512), file[7 * 512..8 * 512]);
    assert_eq!(drv.interrupts(), 1);
    assert_eq!(drv.reg(VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    drv.set(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(drv.reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn writes_reach_the_image_and_flush_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "data.img");
    let mut drv = Driver::new(&disk(&img, false));
    drv.mem.write(DATA, &[0xab; 1024]).unwrap();
    let r = drv.request(VIRTIO_BLK_T_OUT, 62, &[d(DATA, 1024, 0)]);
    assert_eq!(r, Some((OK, 1)), "a write fills only the status byte");
    assert_eq!(drv.request(VIRTIO_BLK_T_FLUSH, 0, &[]), Some((OK, 1)));
    let file = std::fs::read(&img).unwrap();
    assert!(file[62 * 512..].iter().all(|&b| b == 0xab));
    assert_eq!(
        file[61 * 512],
        (61 ^ (61 * 512 % 251)) as u8,
        "neighbours untouched"
    );
}

#[test]
fn get_id_answers_the_image_name_or_the_configured_id() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "a-rather-long-image-name.img");
    let mut drv = Driver::new(&disk(&img, false));
    let r = drv.request(VIRTIO_BLK_T_GET_ID, 0, &[d(DATA, 20, W)]);
    assert_eq!(r, Some((OK, 21)));
    assert_eq!(drv.mem_bytes(DATA, 20), b"a-rather-long-image-");
    let mut cfg = disk(&img, false);
    cfg.id = Some("vol-7".into());
    let mut drv = Driver::new(&cfg);
    drv.mem.write(DATA, &[0xff; 20]).unwrap();
    assert_eq!(
        drv.request(VIRTIO_BLK_T_GET_ID, 0, &[d(DATA, 20, W)]),
        Some((OK, 21))
    );
    assert_eq!(&drv.mem_bytes(DATA, 20)[..6], b"vol-7\0");
}

#[test]
fn a_read_only_disk_says_so_and_fails_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "ro.img");
    let before = std::fs::read(&img).unwrap();
    let mut drv = Driver::new(&disk(&img, true));
    let (offered, accepted) = drv.dev.features();
    assert_ne!(offered & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(accepted & 1 << VIRTIO_BLK_F_RO, 0);
    drv.mem.write(DATA, &[1; 512]).unwrap();
    assert_eq!(
        drv.request(VIRTIO_BLK_T_OUT, 0, &[d(DATA, 512, 0)]),
        Some((IOERR, 1))
    );
    assert_eq!(
        drv.request(VIRTIO_BLK_T_IN, 0, &[d(DATA, 512, W)]),
        Some((OK, 513))
    );
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "u.img");
    let mut drv = Driver::new(&disk(&img, false));
    assert_eq!(
        drv.request(VIRTIO_BLK_T_DISCARD, 0, &[d(DATA, 16, 0)]),
        Some((VIRTIO_BLK_S_UNSUPP as u8, 1))
    );
    assert!(!drv.needs_reset());
}

#[test]
fn bad_requests_fail_with_ioerr_and_leave_the_device_working() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "bad.img");
    let before = std::fs::read(&img).unwrap();
    let mut drv = Driver::new(&disk(&img, false));
    let cases: Vec<(&str, u32, u64, Vec<D>)> = vec![
        (
            "buffer outside guest memory",
            VIRTIO_BLK_T_IN,
            0,
            vec![d(MEM - 512, 1024, W)],
        ),
        (
            "buffer far outside guest memory",
            VIRTIO_BLK_T_IN,
            0,
            vec![d(u64::MAX - 100, 512, W)],
        ),
        (
            "past the end of the image",
            VIRTIO_BLK_T_IN,
            IMAGE_SECTORS - 1,
            vec![d(DATA, 1024, W)],
        ),
        (
            "sector overflows",
            VIRTIO_BLK_T_IN,
            u64::MAX / 256,
            vec![d(DATA, 512, W)],
        ),
        (
            "oversized length",
            VIRTIO_BLK_T_OUT,
            0,
            vec![d(DATA, u32::MAX - 511, 0)],
        ),
        (
            "not whole sectors",
            VIRTIO_BLK_T_OUT,
            0,
            vec![d(DATA, 100, 0)],
        ),
        (
            "read into a device-readable buffer",
            VIRTIO_BLK_T_IN,
            0,
            vec![d(DATA, 512, 0)],
        ),
        (
            "write from a device-writable buffer",
            VIRTIO_BLK_T_OUT,
            0,
            vec![d(DATA, 512, W)],
        ),
        (
            "get-id into a readable buffer",
            VIRTIO_BLK_T_GET_ID,
            0,
            vec![d(DATA, 20, 0)],
        ),
    ];
    for (what, kind, sector, data) in cases {
        assert_eq!(drv.request(kind, sector, &data), Some((IOERR, 1)), "{what}");
        assert!(!drv.needs_reset(), "{what}");
    }
    // A write-only header and a short one.
    drv.submit_raw(0, &[d(HDR, 16, W), d(DATA, 512, W), d(STATUS, 1, W)], &[]);
    assert!(drv.take_used().is_some());
    assert_eq!(drv.mem_byte(STATUS), IOERR, "write-only header");
    drv.submit_raw(0, &[d(HDR, 8, 0), d(STATUS, 1, W)], &[]);
    assert!(drv.take_used().is_some());
    assert_eq!(drv.mem_byte(STATUS), IOERR, "short header");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    assert_eq!(
        drv.request(VIRTIO_BLK_T_IN, 1, &[d(DATA, 512, W)]),
        Some((OK, 513))
    );
}

/// Chains the device cannot answer break it: no used entry, DEVICE_NEEDS_RESET and a config
/// interrupt; after the driver resets it, it works again.
#[test]
fn malformed_chains_mark_the_device_broken_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "m.img");
    type Submit = fn(&mut Driver);
    let cases: Vec<(&str, Submit)> = vec![
        ("descriptor loop", |drv| {
            drv.submit_raw(
                0,
                &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)],
                &[(2, 1)],
            )
        }),
        ("self loop", |drv| {
            drv.submit_raw(0, &[d(HDR, 16, 0)], &[(0, 0)])
        }),
        ("next index past the queue", |drv| {
            drv.submit_raw(0, &[d(HDR, 16, 0), d(STATUS, 1, W)], &[(0, QSIZE + 3)])
        }),
        ("head index past the queue", |drv| drv.put_avail(QSIZE + 1)),
        ("write request without a status descriptor", |drv| {
            drv.submit_raw(0, &[d(HDR, 16, 0), d(DATA, 512, 0)], &[])
        }),
        ("device-readable status", |drv| {
            drv.submit_raw(0, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, 0)], &[])
        }),
        ("status outside memory", |drv| {
            drv.submit_raw(0, &[d(HDR, 16, 0), d(MEM, 1, W)], &[])
        }),
        ("lone descriptor", |drv| {
            drv.submit_raw(0, &[d(STATUS, 1, W)], &[])
        }),
        ("chain over 4 GiB", |drv| {
            drv.submit_raw(
                0,
                &[d(HDR, u32::MAX, 0), d(DATA, u32::MAX, W), d(STATUS, 1, W)],
                &[],
            )
        }),
        ("available index jumps past the queue", |drv| {
            drv.mem
                .write(AVAIL + 2, &(QSIZE + 5).to_le_bytes())
                .unwrap();
            drv.set(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        }),
    ];
    for (what, submit) in cases {
        let mut drv = Driver::new(&disk(&img, false));
        submit(&mut drv);
        assert!(drv.needs_reset(), "{what}: device marked broken");
        assert!(drv.take_used().is_none(), "{what}: nothing used");
        assert_eq!(drv.interrupts(), 1, "{what}");
        assert_eq!(
            drv.reg(VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG,
            "{what}"
        );
        assert_eq!(drv.reg(VIRTIO_MMIO_CONFIG_GENERATION), 1, "{what}");
        // Broken: notifies do nothing until a reset.
        drv.set(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(drv.interrupts(), 0, "{what}");
        drv.bring_up();
        assert!(!drv.needs_reset(), "{what}");
        assert_eq!(
            drv.request(VIRTIO_BLK_T_IN, 3, &[d(DATA, 512, W)]),
            Some((OK, 513)),
            "{what}: works after a reset"
        );
    }
}

#[test]
fn rings_outside_guest_memory_break_the_device_at_the_first_notify() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "r.img");
    let drv = Driver::new(&disk(&img, false));
    drv.set(VIRTIO_MMIO_STATUS, 0);
    drv.set(
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    drv.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    drv.set(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    drv.set(VIRTIO_MMIO_STATUS, s);
    drv.set(VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
    drv.set(VIRTIO_MMIO_QUEUE_DESC_LOW, DESC as u32);
    drv.set(VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL as u32);
    drv.set(VIRTIO_MMIO_QUEUE_USED_LOW, 0);
    drv.set(VIRTIO_MMIO_QUEUE_USED_HIGH, 7);
    drv.set(VIRTIO_MMIO_QUEUE_READY, 1);
    drv.set(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
    drv.set(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert!(drv.needs_reset());
}

#[test]
fn device_state_round_trips_through_the_vm_state_blob() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "s.img");
    let mut drv = Driver::new(&disk(&img, false));
    for sector in 0..3 {
        let r = drv.request(VIRTIO_BLK_T_IN, sector, &[d(DATA, 512, W)]);
        assert_eq!(r, Some((OK, 513)));
    }
    // Interrupt left unacknowledged, as at a checkpoint taken mid-I/O.
    let saved = drv.dev.save();
    assert_eq!(saved.transport.interrupt_status, 1);
    assert_eq!(saved.transport.queues[0].next_avail, 3);
    let mut vm = crate::persist::state::tests::sample();
    vm.virtio = vec![saved.clone()];
    let back = VmState::decode(&vm.encode().unwrap()).unwrap();
    assert_eq!(back.virtio, vec![saved.clone()]);

    // A fresh device (a fresh process would build the same) takes the state exactly.
    let fresh = Driver::new(&disk(&img, false));
    fresh.dev.restore(&back.virtio[0].transport).unwrap();
    assert_eq!(fresh.dev.save(), saved);
    fresh.interrupts();
    fresh.dev.raise_pending();
    assert_eq!(
        fresh.interrupts(),
        1,
        "the pending interrupt is raised again"
    );

    // And serves the next request where the old one stopped: ring indices continue.
    let mut fresh = fresh;
    fresh.avail_idx = 3;
    fresh.used_seen = 3;
    // Guest memory moves with the checkpoint: copy the rings the old driver wrote.
    for (a, len) in [
        (AVAIL, 4 + 2 * QSIZE as usize),
        (USED, 4 + 8 * QSIZE as usize),
    ] {
        fresh.mem.write(a, &drv.mem_bytes(a, len)).unwrap();
    }
    let r = fresh.request(VIRTIO_BLK_T_IN, 9, &[d(DATA, 512, W)]);
    assert_eq!(r, Some((OK, 513)));
    assert_eq!(fresh.dev.save().transport.queues[0].next_used, 4);
    assert_eq!(
        fresh.mem_bytes(DATA, 512),
        std::fs::read(&img).unwrap()[9 * 512..10 * 512]
    );
    assert_eq!(fresh.dev.transport_status() & VIRTIO_CONFIG_S_DRIVER_OK, 4);
}

#[test]
fn bad_saved_device_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "b.img");
    let drv = Driver::new(&disk(&img, false));
    let good: VirtioDeviceState = drv.dev.save();
    let fresh = || Driver::new(&disk(&img, false));
    let mut bad = good.clone();
    bad.transport.queues[0].desc_table = MEM - 16;
    let e = fresh().dev.restore(&bad.transport).unwrap_err();
    assert!(e.to_string().contains("descriptor table"), "{e}");
    let mut bad = good.clone();
    bad.transport.queues[0].size = 3;
    assert!(fresh().dev.restore(&bad.transport).is_err());
    let mut bad = good.clone();
    bad.transport.queues[0].size = 512;
    assert!(fresh().dev.restore(&bad.transport).is_err());
    let mut bad = good;
    bad.transport.queues[0].avail_ring = u64::MAX - 2;
    assert!(fresh().dev.restore(&bad.transport).is_err());
}

#[test]
fn bad_disk_configuration_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let e = Block::open(&disk(&missing, false)).unwrap_err();
    assert!(matches!(e, DiskError::Open { .. }), "{e}");
    assert!(
        e.to_string().contains("nope.img") && e.to_string().contains("No such file"),
        "{e}"
    );

    let img = image(dir.path(), "locked.img");
    let mut perm = std::fs::metadata(&img).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&img, perm).unwrap();
    let e = Block::open(&disk(&img, false)).unwrap_err();
    assert!(matches!(e, DiskError::ReadOnlyFile { .. }), "{e}");
    assert!(e.to_string().contains(",ro"), "{e}");
    Block::open(&disk(&img, true)).expect("read-only use of a read-only file");

    let e = Block::open(&disk(dir.path(), false)).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    assert_eq!(
        DiskConfig::parse("/a/b.img,ro").unwrap(),
        disk(Path::new("/a/b.img"), true)
    );
    assert_eq!(
        DiskConfig::parse("/a/b.img").unwrap(),
        disk(Path::new("/a/b.img"), false)
    );
    assert!(DiskConfig::parse("/a/b.img,rx")
        .unwrap_err()
        .to_string()
        .contains("rx"));
    assert!(DiskConfig::parse(",ro").is_err());
}
