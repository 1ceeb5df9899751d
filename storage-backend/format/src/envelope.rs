//! The frame shared by thaw's self-checking binary objects (the manifest,
//! the dirty log): magic, version, a reserved u16, the body's length, the
//! body, and a BLAKE3 trailer over everything before it. Opening checks the
//! magic, version, a length bound and the checksum before any field of the
//! body is read.

/// Magic (8) + version (2) + reserved (2) + body length (8).
pub const HEADER_LEN: usize = 8 + 2 + 2 + 8;
/// BLAKE3 of header and body.
pub const TRAILER_LEN: usize = 32;

/// Why a frame was refused (each caller maps it to its own error type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    TooShort { len: usize, min: usize },
    BadMagic { found: [u8; 8] },
    UnsupportedVersion { found: u16, supported: u16 },
    TooLarge { len: u64, max: u64 },
    LengthMismatch { declared: u64, actual: u64 },
    ChecksumMismatch,
}

/// Frames `body`.
pub fn seal(magic: [u8; 8], version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// The body of a frame made by [`seal`] with this magic and version, whose
/// body is at most `max_body` bytes.
pub fn open(
    input: &[u8],
    magic: [u8; 8],
    version: u16,
    max_body: u64,
) -> Result<&[u8], EnvelopeError> {
    open_versions(input, magic, version..=version, max_body).map(|(_, body)| body)
}

/// As [`open`] for any version in `versions`; returns the frame's version
/// with its body. A version outside is refused naming the newest.
pub fn open_versions(
    input: &[u8],
    magic: [u8; 8],
    versions: std::ops::RangeInclusive<u16>,
    max_body: u64,
) -> Result<(u16, &[u8]), EnvelopeError> {
    let min = HEADER_LEN + TRAILER_LEN;
    if input.len() < 8 {
        return Err(EnvelopeError::TooShort {
            len: input.len(),
            min,
        });
    }
    let found: [u8; 8] = input[..8].try_into().expect("8 bytes");
    if found != magic {
        return Err(EnvelopeError::BadMagic { found });
    }
    if input.len() < min {
        return Err(EnvelopeError::TooShort {
            len: input.len(),
            min,
        });
    }
    let found = u16::from_le_bytes([input[8], input[9]]);
    if !versions.contains(&found) {
        return Err(EnvelopeError::UnsupportedVersion {
            found,
            supported: *versions.end(),
        });
    }
    let version = found;
    let declared = u64::from_le_bytes(input[12..20].try_into().expect("8 bytes"));
    if declared > max_body {
        return Err(EnvelopeError::TooLarge {
            len: declared,
            max: max_body,
        });
    }
    let actual = (input.len() - min) as u64;
    if declared != actual {
        return Err(EnvelopeError::LengthMismatch { declared, actual });
    }
    let (signed, trailer) = input.split_at(input.len() - TRAILER_LEN);
    if blake3::hash(signed).as_bytes() != trailer {
        return Err(EnvelopeError::ChecksumMismatch);
    }
    Ok((version, &signed[HEADER_LEN..]))
}

/// The length of the whole frame whose first bytes are `start`, as its
/// header declares it (header + body + trailer), or `None` when `start` is
/// shorter than a header or is not a frame of this magic. Lets a reader
/// refuse an oversized object after reading its first bytes only.
pub fn declared_frame_len(start: &[u8], magic: [u8; 8]) -> Option<u64> {
    if start.len() < HEADER_LEN || start[..8] != magic {
        return None;
    }
    let body = u64::from_le_bytes(start[12..20].try_into().expect("8 bytes"));
    Some(body.saturating_add((HEADER_LEN + TRAILER_LEN) as u64))
}

/// Maps a frame error onto an error type with variants of the same names.
macro_rules! impl_from_envelope {
    ($target:ty) => {
        impl From<$crate::envelope::EnvelopeError> for $target {
            fn from(e: $crate::envelope::EnvelopeError) -> Self {
                use $crate::envelope::EnvelopeError as E;
                match e {
                    E::TooShort { len, min } => Self::TooShort { len, min },
                    E::BadMagic { found } => Self::BadMagic { found },
                    E::UnsupportedVersion { found, supported } => {
                        Self::UnsupportedVersion { found, supported }
                    }
                    E::TooLarge { len, max } => Self::TooLarge { len, max },
                    E::LengthMismatch { declared, actual } => {
                        Self::LengthMismatch { declared, actual }
                    }
                    E::ChecksumMismatch => Self::ChecksumMismatch,
                }
            }
        }
    };
}
pub(crate) use impl_from_envelope;

#[cfg(test)]
mod tests {
    use super::*;

    const M: [u8; 8] = *b"TESTTEST";

    #[test]
    fn seal_then_open_gives_the_body_and_every_flaw_is_named() {
        let framed = seal(M, 3, b"body");
        assert_eq!(open(&framed, M, 3, 100), Ok(&b"body"[..]));
        assert!(matches!(
            open(&framed[..5], M, 3, 100),
            Err(EnvelopeError::TooShort { .. })
        ));
        assert!(matches!(
            open(&framed, *b"OTHEROTH", 3, 100),
            Err(EnvelopeError::BadMagic { .. })
        ));
        assert!(matches!(
            open(&framed, M, 4, 100),
            Err(EnvelopeError::UnsupportedVersion {
                found: 3,
                supported: 4
            })
        ));
        assert!(matches!(
            open(&framed, M, 3, 2),
            Err(EnvelopeError::TooLarge { len: 4, max: 2 })
        ));
        let mut cut = framed.clone();
        cut.remove(HEADER_LEN);
        assert!(matches!(
            open(&cut, M, 3, 100),
            Err(EnvelopeError::LengthMismatch { .. })
        ));
        assert_eq!(
            declared_frame_len(&framed[..HEADER_LEN], M),
            Some(framed.len() as u64)
        );
        assert_eq!(declared_frame_len(&framed[..HEADER_LEN - 1], M), None);
        assert_eq!(declared_frame_len(&framed, *b"OTHEROTH"), None);
        let mut flipped = framed;
        flipped[HEADER_LEN] ^= 1;
        assert_eq!(
            open(&flipped, M, 3, 100),
            Err(EnvelopeError::ChecksumMismatch)
        );
    }
}
