//! virtio-net on a tap device: queue 0 receives, queue 1 transmits; the MAC in the config space.
//!
//! Transmit runs on the notify, in the vCPU thread. Receive needs someone to wait for the tap:
//! a device thread ([`spawn_rx_thread`]) that delivers frames into the driver's receive buffers
//! under the device lock. `Vm::pause` quiesces it (under the same lock) before any state is
//! saved, so a checkpoint never holds a frame half delivered; a frame read from the tap but not
//! delivered yet is dropped with the old process, as a network may drop any frame.

use super::device::{next_chain, Broken, DeviceModel, ModelState, VirtioMmio};
use crate::devices::tap::{Tap, TapError, VNET_HDR_LEN};
use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory as _, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 256;
/// Largest frame with its header: a 64 KiB IP packet, an Ethernet header and a VLAN tag.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_562;
const RX: u16 = 0;
const TX: u16 = 1;

/// A network interface as configured: `tap=NAME[,mac=MAC]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
}

/// A network interface could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad --net {arg:?}: {why}")]
    BadArgument { arg: String, why: String },
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create the receive thread's wake-up eventfd: {0}")]
    Eventfd(#[source] std::io::Error),
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

impl NetConfig {
    /// Parses `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]` (the `--net` argument).
    pub fn parse(arg: &str) -> Result<NetConfig, NetError> {
        let bad = |why: String| NetError::BadArgument {
            arg: arg.to_string(),
            why,
        };
        let mut tap = None;
        let mut mac = None;
        for part in arg.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_string()),
                Some(("mac", m)) => {
                    mac = Some(parse_mac(m).ok_or_else(|| {
                        bad(format!("{m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
                    })?)
                }
                _ => return Err(bad(format!("unknown part {part:?} (tap=NAME[,mac=MAC])"))),
            }
        }
        let tap = tap.ok_or_else(|| bad("no tap=NAME".into()))?;
        Ok(NetConfig { tap, mac })
    }
}

/// A network interface as saved in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub tap: String,
    pub mac: [u8; 6],
}

/// A virtio-net device model over an open tap.
pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    /// A frame read from the tap while the driver had no receive buffer.
    pending: Option<Vec<u8>>,
    buf: Vec<u8>,
    /// Wakes the receive thread (buffers arrived, resumed, stopping).
    wake: EventFd,
}

impl Net {
    /// Opens the tap; `index` (the interface's place among the VM's) picks the default MAC.
    pub fn open(config: &NetConfig, index: usize) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap)?;
        // Locally administered, unicast.
        let mac = config.mac.unwrap_or([0x06, 0, 0, 0, 0, index as u8 + 1]);
        Ok(Net {
            tap,
            mac,
            pending: None,
            buf: vec![0; MAX_FRAME],
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::Eventfd)?,
        })
    }

    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, Broken> {
        let was_blocked = self.pending.is_some();
        let mut used = false;
        loop {
            let mut frame = match self.pending.take() {
                Some(f) => f,
                None => match self.tap.read_frame(&mut self.buf).ok() {
                    Some(n) if n >= VNET_HDR_LEN => self.buf[..n].to_vec(),
                    Some(_) => continue,
                    None => break,
                },
            };
            let Some((head, descs)) = next_chain(queue, mem, "receive queue")? else {
                self.pending = Some(frame);
                break;
            };
            let room: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
            if descs.iter().any(|d| {
                !d.is_write_only()
                    || !mem.check_range(d.addr(), d.len() as usize, Permissions::Write)
            }) {
                return Err(Broken(format!(
                    "receive buffer {head}: a descriptor is device-readable or outside guest memory"
                )));
            }
            if (frame.len() as u64) > room {
                // Too big for the buffer: drop the frame, keep the buffer for the next one.
                queue.go_to_previous_position();
                continue;
            }
            // num_buffers: one buffer per frame without VIRTIO_NET_F_MRG_RXBUF.
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let mut done = 0usize;
            for d in &descs {
                if done == frame.len() {
                    break;
                }
                let n = (d.len() as usize).min(frame.len() - done);
                mem.write_slice(&frame[done..done + n], d.addr())
                    .map_err(|e| Broken(format!("receive buffer {head}: {e}")))?;
                done += n;
            }
            queue
                .add_used(mem, head, frame.len() as u32)
                .map_err(|e| Broken(format!("used ring: {e}")))?;
            used = true;
        }
        if was_blocked && self.pending.is_none() {
            // Unblocked from outside the receive thread: it must watch the tap again.
            let _ = self.wake.write(1);
        }
        Ok(used)
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, Broken> {
        let mut used = false;
        loop {
            let Some((head, descs)) = next_chain(queue, mem, "transmit queue")? else {
                return Ok(used);
            };
            if descs.iter().any(|d| d.is_write_only()) {
                return Err(Broken(format!(
                    "transmit buffer {head} has a device-writable descriptor"
                )));
            }
            let len: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
            if len as usize <= MAX_FRAME && len as usize > VNET_HDR_LEN {
                let mut frame = Vec::with_capacity(len as usize);
                for d in &descs {
                    let start = frame.len();
                    frame.resize(start + d.len() as usize, 0);
                    mem.read_slice(&mut frame[start..], d.addr())
                        .map_err(|e| Broken(format!("transmit buffer {head}: {e}")))?;
                }
                // A full tap drops the frame, as a busy link would.
                let _ = self.tap.write_frame(&frame);
            }
            queue
                .add_used(mem, head, 0)
                .map_err(|e| Broken(format!("used ring: {e}")))?;
            used = true;
        }
    }
}

impl DeviceModel for Net {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| self.mac.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Broken> {
        if !queue.is_valid(mem) {
            return Err(Broken(
                "queue not ready or its rings lie outside guest memory".into(),
            ));
        }
        match index {
            RX => self.receive(queue, mem),
            TX => self.transmit(queue, mem),
            _ => Ok(false),
        }
    }

    fn save(&self) -> ModelState {
        ModelState::Net(NetState {
            tap: self.tap.name().to_string(),
            mac: self.mac,
        })
    }

    fn wake(&self) {
        let _ = self.wake.write(1);
    }

    fn receive_waits(&self) -> Option<(i32, i32, bool)> {
        Some((
            self.tap.as_raw_fd(),
            self.wake.as_raw_fd(),
            self.pending.is_none(),
        ))
    }
}

/// Starts the thread that delivers received frames to `dev` until it is shut down.
pub(crate) fn spawn_rx_thread(dev: Arc<VirtioMmio>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("virtio-net-rx".into())
        .spawn(move || rx_loop(&dev))
        .map(|_| ())
}

fn rx_loop(dev: &VirtioMmio) {
    loop {
        let Some((tap, wake, watch_tap)) = dev.service_receive(RX) else {
            return;
        };
        let mut fds = [
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: tap,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let n = if watch_tap { 2 } else { 1 };
        // SAFETY: fds is a valid array of `n` pollfd entries for the call's duration.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n, 1000) };
        if r > 0 && fds[0].revents & libc::POLLIN != 0 {
            let mut b = [0u8; 8];
            // SAFETY: reads 8 bytes into b from the eventfd, which stays open while the
            // device (kept alive by this thread) exists.
            unsafe { libc::read(wake, b.as_mut_ptr().cast(), 8) };
        }
    }
}
