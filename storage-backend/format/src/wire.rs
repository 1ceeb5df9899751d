//! Byte-level primitives of the manifest encoding: LEB128 varints and
//! length-prefixed byte strings, with a reader that never reads or allocates
//! past the end of its input.

use super::error::FormatError;

/// Appends encoded values to a byte vector.
#[derive(Default)]
pub(crate) struct Encoder {
    pub(crate) buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn fixed(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
}

/// Reads values back; every read names the field it was reading so that a
/// truncated or malformed manifest says where it broke.
pub(crate) struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self { input, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        let b = *self
            .input
            .get(self.pos)
            .ok_or(FormatError::Truncated { field })?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u64, FormatError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(field)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(FormatError::VarintOverflow { field });
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(FormatError::VarintOverflow { field })
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        let v = self.varint(field)?;
        u32::try_from(v).map_err(|_| FormatError::ValueTooLarge { field, value: v })
    }

    /// A count of items that each take at least `min_item_bytes` bytes: bounded
    /// by what is left of the input, so a forged count cannot force a huge
    /// allocation.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        min_item_bytes: usize,
    ) -> Result<usize, FormatError> {
        let n = self.varint(field)?;
        let fits = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > fits {
            return Err(FormatError::CountExceedsInput {
                field,
                count: n,
                remaining: self.remaining(),
            });
        }
        Ok(n as usize)
    }

    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], FormatError> {
        let len = self.count(field, 1)?;
        self.fixed(field, len)
    }

    pub(crate) fn fixed(
        &mut self,
        field: &'static str,
        len: usize,
    ) -> Result<&'a [u8], FormatError> {
        if self.remaining() < len {
            return Err(FormatError::Truncated { field });
        }
        let out = &self.input[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn hash(&mut self, field: &'static str) -> Result<[u8; 32], FormatError> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.fixed(field, 32)?);
        Ok(h)
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, FormatError> {
        let b = self.bytes(field)?;
        String::from_utf8(b.to_vec()).map_err(|_| FormatError::NotUtf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v: u64) {
            let mut e = Encoder::default();
            e.varint(v);
            let mut d = Decoder::new(&e.buf);
            prop_assert_eq!(d.varint("v").unwrap(), v);
            prop_assert!(d.is_empty());
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let bytes = [0xffu8; 11];
        assert!(matches!(
            Decoder::new(&bytes).varint("x"),
            Err(FormatError::VarintOverflow { field: "x" })
        ));
    }

    #[test]
    fn forged_count_is_bounded_by_input() {
        let mut e = Encoder::default();
        e.varint(1 << 40);
        let err = Decoder::new(&e.buf).count("blocks", 8).unwrap_err();
        assert!(matches!(
            err,
            FormatError::CountExceedsInput {
                field: "blocks",
                ..
            }
        ));
    }
}
