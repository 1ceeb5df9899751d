//! virtio-net against a real tap in a network namespace the test makes (and deletes): a driver
//! harness sends an ICMP echo request through the transmit queue, the host kernel answers, and
//! the receive thread delivers the reply into the driver's buffers; while quiesced (a paused
//! VM) it delivers nothing. Needs root and `ip` (iproute2).

use super::device::{ModelState, VirtioMmio};
use super::net::{spawn_rx_thread, Net, NetConfig, NetError};
use crate::devices::mmio::MmioDevice;
use crate::devices::tap::{Tap, TapError};
use crate::vstate::memory::GuestMemory;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vmm_sys_util::eventfd::EventFd;

const GUEST_MAC: [u8; 6] = [0x06, 0, 0, 0, 0, 1];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const QSIZE: u16 = 16;
/// Rings of queue q at 0x1000 + 0x3000 * q (descriptors, available, used).
fn rings(q: u64) -> [u64; 3] {
    let base = 0x1000 + 0x3000 * q;
    [base, base + 0x1000, base + 0x2000]
}
const TX_FRAME: u64 = 0x10000;
const RX_BUFS: u64 = 0x20000;
const RX_BUF_LEN: u32 = 2048;
const RX_COUNT: u16 = 8;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with tap0 (10.77.0.1/24, up), the guest's address known statically.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "thaw-vnet-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        let n = ns.0.as_str();
        ip(&["-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&[
            "-n",
            n,
            "link",
            "set",
            "tap0",
            "address",
            "02:00:00:00:00:aa",
        ]);
        ip(&["-n", n, "addr", "add", "10.77.0.1/24", "dev", "tap0"]);
        ip(&["-n", n, "link", "set", "tap0", "up"]);
        ip(&[
            "-n",
            n,
            "neigh",
            "add",
            "10.77.0.2",
            "lladdr",
            "06:00:00:00:00:01",
            "dev",
            "tap0",
            "nud",
            "permanent",
        ]);
        ns
    }

    /// Runs `f` in a thread that has joined the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread with an open namespace fd; affects only this thread.
            let r =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Driver {
    mem: Arc<GuestMemory>,
    dev: Arc<VirtioMmio>,
    irq: EventFd,
    avail: [u16; 2],
    used_seen: [u16; 2],
}

impl Driver {
    fn new(net: Net) -> Driver {
        let mem = Arc::new(GuestMemory::new(&[(0, 1 << 20)]).unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = Arc::new(
            VirtioMmio::new(Box::new(net), mem.clone(), irq.try_clone().unwrap()).unwrap(),
        );
        spawn_rx_thread(dev.clone()).unwrap();
        let drv = Driver {
            mem,
            dev,
            irq,
            avail: [0; 2],
            used_seen: [0; 2],
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

    fn bring_up(&self) {
        assert_eq!(self.reg(VIRTIO_MMIO_DEVICE_ID), 1);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        self.set(VIRTIO_MMIO_STATUS, s);
        for sel in 0..2 {
            self.set(VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            let f = self.reg(VIRTIO_MMIO_DEVICE_FEATURES);
            self.set(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            self.set(VIRTIO_MMIO_DRIVER_FEATURES, f);
        }
        self.set(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
        for q in 0..2u32 {
            let [desc, avail, used] = rings(u64::from(q));
            self.set(VIRTIO_MMIO_QUEUE_SEL, q);
            self.set(VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
            self.set(VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
            self.set(VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
            self.set(VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
            self.set(VIRTIO_MMIO_QUEUE_READY, 1);
        }
        self.set(
            VIRTIO_MMIO_STATUS,
            s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        let mut mac = [0u8; 6];
        self.dev.read(0x100, &mut mac);
        assert_eq!(mac, GUEST_MAC);
    }

    /// One-descriptor chain in slot `slot` of queue `q`, made available and notified.
    fn offer(&mut self, q: usize, slot: u16, addr: u64, len: u32, flags: u16) {
        let [desc, avail, _] = rings(q as u64);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        self.mem.write(desc + 16 * u64::from(slot), &raw).unwrap();
        let i = u64::from(self.avail[q] % QSIZE);
        self.mem
            .write(avail + 4 + 2 * i, &slot.to_le_bytes())
            .unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem
            .write(avail + 2, &self.avail[q].to_le_bytes())
            .unwrap();
        self.set(VIRTIO_MMIO_QUEUE_NOTIFY, q as u32);
    }

    fn used(&mut self, q: usize) -> Option<(u32, u32)> {
        let [_, _, used] = rings(q as u64);
        let mut idx = [0u8; 2];
        self.mem.read(used + 2, &mut idx).unwrap();
        if u16::from_le_bytes(idx) == self.used_seen[q] {
            return None;
        }
        let mut e = [0u8; 8];
        let i = u64::from(self.used_seen[q] % QSIZE);
        self.mem.read(used + 4 + 8 * i, &mut e).unwrap();
        self.used_seen[q] = self.used_seen[q].wrapping_add(1);
        Some((
            u32::from_le_bytes(e[0..4].try_into().unwrap()),
            u32::from_le_bytes(e[4..8].try_into().unwrap()),
        ))
    }

    fn send_ping(&mut self, seq: u16) {
        let frame = echo_request(seq);
        self.mem.write(TX_FRAME, &frame).unwrap();
        self.offer(1, 0, TX_FRAME, frame.len() as u32, 0);
        assert_eq!(self.used(1), Some((0, 0)), "transmitted");
    }

    /// Waits up to `limit` for an echo reply with `seq` among received frames; re-offers each
    /// receive buffer it consumed.
    fn wait_reply(&mut self, seq: u16, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            while let Some((head, len)) = self.used(0) {
                let addr = RX_BUFS + u64::from(head) * u64::from(RX_BUF_LEN);
                let mut f = vec![0u8; len as usize];
                self.mem.read(addr, &mut f).unwrap();
                let reply = is_echo_reply(&f[12..], seq);
                self.offer(0, head as u16, addr, RX_BUF_LEN, VRING_DESC_F_WRITE as u16);
                if reply {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const PAYLOAD: &[u8] = b"thaw virtio-net";

/// virtio-net header, Ethernet, IPv4 10.77.0.2 -> 10.77.0.1, ICMP echo request.
fn echo_request(seq: u16) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + PAYLOAD.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 77, 0, 2, 10, 77, 0, 1,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(PAYLOAD);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

fn is_echo_reply(eth: &[u8], seq: u16) -> bool {
    eth.len() >= 14 + 28 + PAYLOAD.len()
        && eth[0..6] == GUEST_MAC
        && eth[12..14] == [0x08, 0x00]
        && eth[14 + 9] == 1
        && eth[14 + 12..14 + 16] == [10, 77, 0, 1]
        && eth[34] == 0
        && eth[38..40] == [0x12, 0x34]
        && eth[40..42] == seq.to_be_bytes()
        && &eth[42..42 + PAYLOAD.len()] == PAYLOAD
}

#[test]
fn a_missing_tap_and_bad_arguments_are_refused_clearly() {
    let ns = Netns::new();
    let e = ns.run(|| Tap::open("nosuch0").unwrap_err());
    assert!(matches!(e, TapError::NoSuchDevice(_)), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = ns.run(|| Tap::open("lo").unwrap_err());
    assert!(e.to_string().contains("lo"), "{e}");
    assert!(Tap::open("a/b").is_err());
    assert!(Tap::open("sixteen-bytes-xx").is_err());
    let cfg = NetConfig::parse("tap=tap0,mac=06:00:00:00:00:07").unwrap();
    assert_eq!(cfg.mac, Some([6, 0, 0, 0, 0, 7]));
    assert!(matches!(
        NetConfig::parse("tap=tap0,mac=06:00"),
        Err(NetError::BadArgument { .. })
    ));
    assert!(NetConfig::parse("mac=06:00:00:00:00:07").is_err());
    assert!(NetConfig::parse("tap=tap0,speed=10").is_err());
}

#[test]
fn a_ping_goes_out_and_its_reply_comes_back_except_while_quiesced() {
    let ns = Netns::new();
    let net = ns.run(|| {
        Net::open(
            &NetConfig {
                tap: "tap0".into(),
                mac: None,
            },
            0,
        )
        .unwrap()
    });
    let mut drv = Driver::new(net);
    for i in 0..RX_COUNT {
        let addr = RX_BUFS + u64::from(i) * u64::from(RX_BUF_LEN);
        drv.offer(0, i, addr, RX_BUF_LEN, VRING_DESC_F_WRITE as u16);
    }
    // As ping does, ask again if no answer comes: the first frames on a fresh link may be lost.
    let answered = (0..5).any(|_| {
        drv.send_ping(1);
        drv.wait_reply(1, Duration::from_secs(3))
    });
    assert!(
        answered,
        "echo reply received (device status {:#x}, receive queue {:?})",
        drv.reg(VIRTIO_MMIO_STATUS),
        drv.dev.save().transport.queues[0]
    );
    assert!(drv.irq.read().unwrap() >= 2, "interrupts for TX and RX");

    // A paused VM's device thread leaves queues and memory alone.
    drv.dev.quiesce(true);
    let mem = drv.mem.clone();
    let used_idx = move || {
        let mut idx = [0u8; 2];
        mem.read(rings(0)[2] + 2, &mut idx).unwrap();
        u16::from_le_bytes(idx)
    };
    let at_pause = used_idx();
    drv.send_ping(2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(used_idx(), at_pause, "nothing delivered while quiesced");
    drv.dev.quiesce(false);
    assert!(
        drv.wait_reply(2, Duration::from_secs(10)),
        "the reply arrives after the resume"
    );

    let saved = drv.dev.save();
    match &saved.model {
        ModelState::Net(n) => {
            assert_eq!(n.tap, "tap0");
            assert_eq!(n.mac, GUEST_MAC);
        }
        other => panic!("{other:?}"),
    }
    let json = serde_json::to_string(&saved).unwrap();
    let back: super::device::VirtioDeviceState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, saved);
    drv.dev.shutdown();
}
