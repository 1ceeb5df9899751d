//! The test guest's report port: a vCPU of the test guest writes `code << 8 | cpu` (32 bits) to
//! [`PORT`] after updating its report record in guest memory; the device reads the record and
//! passes it on as a [`GuestEvent::Report`]. Mirrors guest/layout.h.

use super::{BusAction, GuestEvent, PortDevice};
use crate::vstate::memory::{GuestMemory, MemoryError};
use std::sync::mpsc::Sender;
use std::sync::Arc;

/// The reporting port (guest/layout.h TG_PORT).
pub(crate) const PORT: u16 = 0x0f00;
/// Guest-physical address of vCPU 0's report record.
pub(crate) const REPORT_ADDR: u64 = 0x4000;
/// Bytes between two vCPUs' report records.
pub(crate) const REPORT_STRIDE: u64 = 64;

/// Report codes (guest/layout.h); 1 is the start report, which needs nothing here.
pub const CODE_PROGRESS: u64 = 2;
pub const CODE_DONE: u64 = 3;
pub(crate) const CODE_BAD_PARAMS: u64 = 4;

/// One vCPU's report record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
    pub checksum: u64,
    pub touches: u64,
    pub code: u64,
    pub slice_pages: u64,
    /// Timer ticks the vCPU had counted when it reported (interrupt mode; 0 otherwise).
    pub ticks: u64,
}

/// Reads vCPU `cpu`'s report from guest memory.
pub(crate) fn read_report(mem: &GuestMemory, cpu: u32) -> Result<Report, MemoryError> {
    let base = REPORT_ADDR + cpu as u64 * REPORT_STRIDE;
    Ok(Report {
        checksum: mem.read_u64(base)?,
        touches: mem.read_u64(base + 8)?,
        code: mem.read_u64(base + 16)?,
        slice_pages: mem.read_u64(base + 24)?,
        ticks: mem.read_u64(base + 32)?,
    })
}

/// The report port of one VM.
pub(crate) struct ReportPort {
    memory: Arc<GuestMemory>,
    events: Sender<GuestEvent>,
}

impl ReportPort {
    /// A report port reading records from `memory` and reporting on `events`.
    pub(crate) fn new(memory: Arc<GuestMemory>, events: Sender<GuestEvent>) -> ReportPort {
        ReportPort { memory, events }
    }
}

impl PortDevice for ReportPort {
    fn write(&self, cpu: u32, _offset: u16, data: &[u8]) -> BusAction {
        let Ok(word) = <[u8; 4]>::try_from(data) else {
            return BusAction::Continue;
        };
        let value = u32::from_le_bytes(word);
        let code = (value >> 8) as u64;
        let reporter = value & 0xff;
        let report = match read_report(&self.memory, reporter) {
            Ok(r) => r,
            Err(e) => return BusAction::Stop(format!("test guest report: {e}")),
        };
        let _ = self.events.send(GuestEvent::Report {
            cpu: reporter,
            code,
            checksum: report.checksum,
            touches: report.touches,
            ticks: report.ticks,
        });
        match code {
            CODE_DONE => BusAction::Park,
            CODE_BAD_PARAMS => {
                BusAction::Stop(format!("test guest on vCPU {cpu} refused its parameters"))
            }
            _ => BusAction::Continue,
        }
    }
}
