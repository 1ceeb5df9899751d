//! A Firecracker snapshot's vmstate file kept in a thaw checkpoint: the file's bytes, opaque,
//! framed with their own magic as the checkpoint's state blob. The blob is hashed in the
//! manifest (so covered by its signature) and sealed with the tenant key like thaw's own VM
//! state; the frame tells it apart from thaw's state, whose magic differs, so thaw's VMM refuses
//! an imported checkpoint instead of misreading it and `thaw checkpoint export` refuses a
//! checkpoint of thaw's own.

use crate::envelope::{self, EnvelopeError};

const MAGIC: [u8; 8] = *b"THAWFCVS";
const VERSION: u16 = 1;
/// Largest vmstate file kept (Firecracker's are tens of KiB).
pub const MAX_VMSTATE: u64 = 64 << 20;

/// The state blob holding `vmstate`.
pub fn wrap(vmstate: &[u8]) -> Vec<u8> {
    envelope::seal(MAGIC, VERSION, vmstate)
}

/// The vmstate file in a state blob made by [`wrap`].
pub fn unwrap(blob: &[u8]) -> Result<&[u8], EnvelopeError> {
    envelope::open(blob, MAGIC, VERSION, MAX_VMSTATE)
}

/// Whether the state blob holds a Firecracker vmstate file.
pub fn is_firecracker(blob: &[u8]) -> bool {
    blob.starts_with(&MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmstate_round_trips_byte_for_byte_and_other_blobs_are_refused() {
        let vmstate: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        let blob = wrap(&vmstate);
        assert!(is_firecracker(&blob));
        assert_eq!(unwrap(&blob).unwrap(), &vmstate[..]);
        assert_eq!(unwrap(&wrap(b"")).unwrap(), b"");
        let thaw_state = envelope::seal(*b"THAWVMST", 2, b"{}");
        assert!(!is_firecracker(&thaw_state));
        assert!(unwrap(&thaw_state).is_err());
        let mut bad = blob.clone();
        bad[30] ^= 1;
        assert!(unwrap(&bad).is_err(), "a changed byte is caught");
    }
}
