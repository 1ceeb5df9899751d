//! The i8042 keyboard controller's one command thaw implements: "pulse the reset line" (0xfe
//! written to its command port 0x64), with which a Linux guest reboots. thaw stops the vCPU
//! instead and reports why.

use super::{BusAction, GuestEvent, PortDevice};
use std::sync::mpsc::Sender;

/// The controller's command (write) and status (read) port.
pub(crate) const COMMAND_PORT: u16 = 0x64;
const PULSE_RESET: u8 = 0xfe;

/// The reset line of the i8042 at [`COMMAND_PORT`].
pub(crate) struct ResetLine {
    events: Sender<GuestEvent>,
}

impl ResetLine {
    /// A reset line that reports a reset on `events`.
    pub(crate) fn new(events: Sender<GuestEvent>) -> ResetLine {
        ResetLine { events }
    }
}

impl PortDevice for ResetLine {
    fn write(&self, cpu: u32, _offset: u16, data: &[u8]) -> BusAction {
        if data.first() != Some(&PULSE_RESET) {
            return BusAction::Continue;
        }
        let reason = "guest requested a reset (i8042)".to_string();
        let _ = self.events.send(GuestEvent::Stopped {
            cpu,
            reason: reason.clone(),
        });
        BusAction::Stop(reason)
    }
}
