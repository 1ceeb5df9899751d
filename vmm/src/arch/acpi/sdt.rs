//! System description tables: the common 36-byte header, byte-level field writes, and the
//! checksum every ACPI table carries (all bytes sum to zero modulo 256).

/// Length of the header every system description table starts with.
pub(crate) const HEADER_LEN: usize = 36;
/// OEM id written into every table (six bytes).
pub(crate) const OEM_ID: &[u8; 6] = b"THAW  ";
/// OEM table id (eight bytes).
pub(crate) const OEM_TABLE_ID: &[u8; 8] = b"THAWVM  ";
const CREATOR_ID: &[u8; 4] = b"THAW";
const CHECKSUM_OFFSET: usize = 9;

/// The byte that makes `bytes` sum to zero when stored in a checksum field that holds zero.
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// A table under construction: header first, body appended, length and checksum set by
/// [`Sdt::finish`].
pub(crate) struct Sdt {
    bytes: Vec<u8>,
}

impl Sdt {
    /// A table with `signature` and `revision`, its body `body_len` zero bytes.
    pub(crate) fn new(signature: &[u8; 4], revision: u8, body_len: usize) -> Sdt {
        let mut bytes = vec![0u8; HEADER_LEN + body_len];
        bytes[0..4].copy_from_slice(signature);
        bytes[8] = revision;
        bytes[10..16].copy_from_slice(OEM_ID);
        bytes[16..24].copy_from_slice(OEM_TABLE_ID);
        bytes[24..28].copy_from_slice(&1u32.to_le_bytes());
        bytes[28..32].copy_from_slice(CREATOR_ID);
        bytes[32..36].copy_from_slice(&1u32.to_le_bytes());
        Sdt { bytes }
    }

    /// Writes `v` at byte `offset` of the table (header included).
    pub(crate) fn put(&mut self, offset: usize, v: &[u8]) {
        self.bytes[offset..offset + v.len()].copy_from_slice(v);
    }

    pub(crate) fn put_u8(&mut self, offset: usize, v: u8) {
        self.put(offset, &[v]);
    }

    pub(crate) fn put_u16(&mut self, offset: usize, v: u16) {
        self.put(offset, &v.to_le_bytes());
    }

    pub(crate) fn put_u32(&mut self, offset: usize, v: u32) {
        self.put(offset, &v.to_le_bytes());
    }

    pub(crate) fn put_u64(&mut self, offset: usize, v: u64) {
        self.put(offset, &v.to_le_bytes());
    }

    /// Appends bytes to the body.
    pub(crate) fn append(&mut self, v: &[u8]) {
        self.bytes.extend_from_slice(v);
    }

    /// The table's bytes with its length and checksum filled in.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.put_u32(4, len);
        self.bytes[CHECKSUM_OFFSET] = 0;
        self.bytes[CHECKSUM_OFFSET] = checksum(&self.bytes);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_table_sums_to_zero_and_states_its_length() {
        let mut t = Sdt::new(b"TEST", 3, 4);
        t.put_u32(HEADER_LEN, 0xdead_beef);
        t.append(&[1, 2, 3]);
        let b = t.finish();
        assert_eq!(b.len(), HEADER_LEN + 7);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 43);
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        assert_eq!(&b[0..4], b"TEST");
        assert_eq!(b[8], 3);
    }
}
