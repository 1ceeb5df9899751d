//! The port I/O bus: COM1, the test guest's report port, and harmless defaults for the ports a
//! Linux guest probes.

pub mod serial;

use crate::boot::testguest;
use crate::devices::serial::{Uart, COM1_BASE, COM1_LEN};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::{BusAction, IoBus};
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// Something a guest reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    /// A test guest report (start, progress, done, bad parameters).
    Report {
        cpu: u32,
        code: u64,
        checksum: u64,
        touches: u64,
    },
    /// A vCPU stopped because the guest reset or powered off.
    Stopped { cpu: u32, reason: String },
}

/// All port I/O devices of a VM.
pub struct Devices {
    pub uart: Uart,
    memory: Arc<GuestMemory>,
    events: Sender<GuestEvent>,
}

impl Devices {
    pub fn new(uart: Uart, memory: Arc<GuestMemory>, events: Sender<GuestEvent>) -> Devices {
        Devices {
            uart,
            memory,
            events,
        }
    }

    fn test_report(&self, cpu: u32, value: u32) -> BusAction {
        let code = (value >> 8) as u64;
        let reporter = value & 0xff;
        let report = match testguest::read_report(&self.memory, reporter) {
            Ok(r) => r,
            Err(e) => return BusAction::Stop(format!("test guest report: {e}")),
        };
        let _ = self.events.send(GuestEvent::Report {
            cpu: reporter,
            code,
            checksum: report.checksum,
            touches: report.touches,
        });
        match code {
            testguest::CODE_DONE => BusAction::Park,
            testguest::CODE_BAD_PARAMS => {
                BusAction::Stop(format!("test guest on vCPU {cpu} refused its parameters"))
            }
            _ => BusAction::Continue,
        }
    }
}

impl IoBus for Devices {
    fn pio_out(&self, cpu: u32, port: u16, data: &[u8]) -> BusAction {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                if let Some(&b) = data.first() {
                    self.uart.write((p - COM1_BASE) as u8, b);
                }
                BusAction::Continue
            }
            testguest::PORT if data.len() == 4 => {
                let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
                self.test_report(cpu, v)
            }
            // i8042 "pulse reset line": the guest reboots; thaw stops it instead.
            0x64 if data.first() == Some(&0xfe) => {
                let reason = "guest requested a reset (i8042)".to_string();
                let _ = self.events.send(GuestEvent::Stopped {
                    cpu,
                    reason: reason.clone(),
                });
                BusAction::Stop(reason)
            }
            _ => BusAction::Continue,
        }
    }

    fn pio_in(&self, _cpu: u32, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                let v = self.uart.read((p - COM1_BASE) as u8);
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = v;
                }
            }
            // No device: the bus floats high.
            _ => data.fill(0xff),
        }
    }
}
