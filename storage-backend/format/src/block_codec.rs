//! Turning a block's raw page bytes into stored bytes and back: compressed
//! when it pays, then encrypted when the checkpoint is (see `block_crypt`).

use super::block_crypt::{BlockOpener, TenantKeys, TAG_LEN};
use super::manifest::{BlockEntry, Codec, PageRun};

/// A block ready to store: its codec, stored bytes and raw-bytes hash
/// (keyed with the tenant's key when encrypted).
#[derive(Debug, Clone)]
pub struct EncodedBlock {
    pub codec: Codec,
    pub stored: Vec<u8>,
    pub raw_len: u64,
    pub hash: [u8; 32],
    /// BLAKE3 of `stored`.
    pub stored_hash: [u8; 32],
}

impl EncodedBlock {
    /// Its manifest entry, once stored at `offset` of object `object`.
    pub fn entry(&self, pages: Vec<PageRun>, object: u32, offset: u64) -> BlockEntry {
        BlockEntry {
            pages,
            object,
            offset,
            stored_len: self.stored.len() as u64,
            raw_len: self.raw_len,
            codec: self.codec,
            hash: self.hash,
            stored_hash: Some(self.stored_hash),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockCodecError {
    #[error("stored length is {got} bytes, the manifest says {expected}")]
    StoredLenMismatch { expected: u64, got: u64 },
    #[error("lz4 data does not decode to {raw_len} bytes: {reason}")]
    Decompress { raw_len: u64, reason: String },
    #[error("BLAKE3 hash of the decoded bytes does not match the manifest")]
    HashMismatch,
    #[error("BLAKE3 hash of the stored bytes does not match the manifest")]
    StoredHashMismatch,
    #[error("stored bytes do not decrypt with the block's key (tampered with, or the manifest entry altered)")]
    Decrypt,
}

/// Compression is kept only when it saves at least 1/16 of the bytes: below
/// that, decoding costs the restore path more than the transfer it saves.
fn compression_pays(raw_len: usize, compressed_len: usize) -> bool {
    compressed_len <= raw_len - raw_len / 16
}

/// Encodes a block of a checkpoint stored in the clear.
pub fn encode_block(raw: &[u8]) -> EncodedBlock {
    encode_block_with_hash(raw, block_hash(None, raw), None)
}

/// The manifest's hash of a block's raw bytes: BLAKE3, keyed with the
/// tenant's key when the checkpoint is encrypted.
pub fn block_hash(keys: Option<&TenantKeys>, raw: &[u8]) -> [u8; 32] {
    match keys {
        Some(k) => k.block_hash(raw),
        None => *blake3::hash(raw).as_bytes(),
    }
}

/// Encodes a block whose [`block_hash`] is known (the writer hashes first to
/// find blocks it can reuse from a parent checkpoint); encrypts it after
/// compressing when `keys` is given.
pub fn encode_block_with_hash(
    raw: &[u8],
    hash: [u8; 32],
    keys: Option<&TenantKeys>,
) -> EncodedBlock {
    let compressed = lz4_flex::block::compress(raw);
    let (codec, mut stored) = if compression_pays(raw.len(), compressed.len()) {
        (Codec::Lz4, compressed)
    } else {
        (Codec::Raw, raw.to_vec())
    };
    if let Some(k) = keys {
        k.seal_block(&hash, codec, raw.len() as u64, &mut stored);
    }
    let stored_hash = *blake3::hash(&stored).as_bytes();
    EncodedBlock {
        codec,
        stored,
        raw_len: raw.len() as u64,
        hash,
        stored_hash,
    }
}

fn check_stored_len(entry: &BlockEntry, stored: &[u8]) -> Result<(), BlockCodecError> {
    if stored.len() as u64 != entry.stored_len {
        return Err(BlockCodecError::StoredLenMismatch {
            expected: entry.stored_len,
            got: stored.len() as u64,
        });
    }
    Ok(())
}

/// Checks stored bytes against the manifest without using them: against the
/// stored-bytes hash when the manifest has one (a hash of the stored bytes,
/// several times cheaper than decoding), else by decoding and checking the
/// raw hash. Either way, bytes that pass decode to the manifest's raw hash
/// as the writer checked when it wrote them.
pub fn verify_stored(entry: &BlockEntry, stored: &[u8]) -> Result<(), BlockCodecError> {
    match entry.stored_hash {
        Some(expected) => {
            check_stored_len(entry, stored)?;
            if *blake3::hash(stored).as_bytes() != expected {
                return Err(BlockCodecError::StoredHashMismatch);
            }
            Ok(())
        }
        // Only manifests in the clear lack stored hashes (validation).
        None => {
            // Checked before the raw-size buffer is allocated.
            check_stored_len(entry, stored)?;
            check_raw_len(entry, stored.len() as u64)?;
            decode_block_into(
                &BlockOpener::Plain,
                entry,
                stored,
                &mut vec![0u8; entry.raw_len as usize],
            )
        }
    }
}

/// The raw length must be one the (decrypted) stored bytes can decode to, as
/// a validated manifest guarantees, so decoding never allocates more than the
/// codec's expansion of what was actually received.
fn check_raw_len(entry: &BlockEntry, plain_len: u64) -> Result<(), BlockCodecError> {
    let fits = entry.codec.min_stored_len(entry.raw_len) <= plain_len
        && plain_len <= entry.codec.max_stored_len(entry.raw_len);
    if !fits {
        return Err(BlockCodecError::Decompress {
            raw_len: entry.raw_len,
            reason: format!(
                "{plain_len} stored bytes cannot hold {} raw bytes with this codec",
                entry.raw_len
            ),
        });
    }
    Ok(())
}

/// Decodes stored bytes into `out` (exactly the block's raw length),
/// decrypting them first with `opener`'s keys when the checkpoint is
/// encrypted, and checks the hash. On error `out` holds garbage and must
/// not be used.
pub fn decode_block_into(
    opener: &BlockOpener,
    entry: &BlockEntry,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), BlockCodecError> {
    check_stored_len(entry, stored)?;
    let plain_len = match opener {
        BlockOpener::Plain => stored.len(),
        BlockOpener::Encrypted(_) => stored.len().saturating_sub(TAG_LEN),
    };
    check_raw_len(entry, plain_len as u64)?;
    if out.len() as u64 != entry.raw_len {
        return Err(BlockCodecError::Decompress {
            raw_len: entry.raw_len,
            reason: format!("the destination holds {} bytes", out.len()),
        });
    }
    match opener {
        BlockOpener::Plain => decode_plain(entry, stored, out)?,
        BlockOpener::Encrypted(keys) => match entry.codec {
            Codec::Raw if plain_len == out.len() => keys.open_block(entry, stored, out)?,
            Codec::Raw => {
                return Err(BlockCodecError::StoredLenMismatch {
                    expected: entry.raw_len + TAG_LEN as u64,
                    got: stored.len() as u64,
                })
            }
            Codec::Lz4 => {
                let mut compressed = vec![0u8; plain_len];
                keys.open_block(entry, stored, &mut compressed)?;
                decode_plain(entry, &compressed, out)?;
            }
        },
    }
    if block_hash(opener.keys(), out) != entry.hash {
        return Err(BlockCodecError::HashMismatch);
    }
    Ok(())
}

/// Decompresses (or copies) a block's decrypted bytes into `out`.
fn decode_plain(entry: &BlockEntry, stored: &[u8], out: &mut [u8]) -> Result<(), BlockCodecError> {
    match entry.codec {
        Codec::Raw if stored.len() != out.len() => {
            return Err(BlockCodecError::StoredLenMismatch {
                expected: entry.raw_len,
                got: stored.len() as u64,
            })
        }
        Codec::Raw => out.copy_from_slice(stored),
        Codec::Lz4 => {
            let n = lz4_flex::block::decompress_into(stored, out).map_err(|e| {
                BlockCodecError::Decompress {
                    raw_len: entry.raw_len,
                    reason: e.to_string(),
                }
            })?;
            if n as u64 != entry.raw_len {
                return Err(BlockCodecError::Decompress {
                    raw_len: entry.raw_len,
                    reason: format!("decoded {n} bytes"),
                });
            }
        }
    }
    Ok(())
}

/// Decodes and verifies a block into a fresh buffer.
pub fn decode_block(
    opener: &BlockOpener,
    entry: &BlockEntry,
    stored: &[u8],
) -> Result<Vec<u8>, BlockCodecError> {
    let mut out = vec![0u8; entry.raw_len as usize];
    decode_block_into(opener, entry, stored, &mut out)?;
    Ok(out)
}

/// True when every byte of the page is zero. Works a cache line at a time so
/// the common non-zero page is rejected within its first 64 bytes.
pub fn is_zero_page(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(64);
    for chunk in &mut chunks {
        let mut acc = 0u64;
        for word in chunk.chunks_exact(8) {
            acc |= u64::from_ne_bytes(word.try_into().expect("8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_crypt::TenantKey;

    fn entry_for(e: &EncodedBlock) -> BlockEntry {
        let pages = vec![PageRun {
            start: 0,
            len: e.raw_len / 4096,
        }];
        e.entry(pages, 0, 0)
    }

    #[test]
    fn text_is_compressed_and_noise_is_stored_raw() {
        let text: Vec<u8> = b"the quick brown fox "
            .iter()
            .cycle()
            .take(8192)
            .copied()
            .collect();
        let e = encode_block(&text);
        assert_eq!(e.codec, Codec::Lz4);
        assert!(e.stored.len() < 1000);
        assert_eq!(
            decode_block(&BlockOpener::Plain, &entry_for(&e), &e.stored).unwrap(),
            text
        );

        let mut x = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = encode_block(&noise);
        assert_eq!(e.codec, Codec::Raw);
        assert_eq!(
            decode_block(&BlockOpener::Plain, &entry_for(&e), &e.stored).unwrap(),
            noise
        );
    }

    #[test]
    fn flipped_bit_is_caught() {
        let text: Vec<u8> = b"abcdefgh".iter().cycle().take(4096).copied().collect();
        let e = encode_block(&text);
        let entry = entry_for(&e);
        for i in [0, e.stored.len() / 2, e.stored.len() - 1] {
            let mut bad = e.stored.clone();
            bad[i] ^= 0x10;
            assert!(
                decode_block(&BlockOpener::Plain, &entry, &bad).is_err(),
                "flip at {i} went unnoticed"
            );
        }
        assert_eq!(
            decode_block(&BlockOpener::Plain, &entry, &e.stored[1..]),
            Err(BlockCodecError::StoredLenMismatch {
                expected: e.stored.len() as u64,
                got: e.stored.len() as u64 - 1
            })
        );
    }

    #[test]
    fn stored_bytes_are_verified_by_their_hash_or_else_by_decoding() {
        let text: Vec<u8> = b"abcdefgh".iter().cycle().take(8192).copied().collect();
        let e = encode_block(&text);
        let with = entry_for(&e);
        let without = BlockEntry {
            stored_hash: None,
            ..with.clone()
        };
        for entry in [&with, &without] {
            assert_eq!(verify_stored(entry, &e.stored), Ok(()));
            let mut bad = e.stored.clone();
            bad[e.stored.len() / 2] ^= 0x10;
            assert!(verify_stored(entry, &bad).is_err());
            assert!(matches!(
                verify_stored(entry, &e.stored[1..]),
                Err(BlockCodecError::StoredLenMismatch { .. })
            ));
        }
        let mut bad = e.stored.clone();
        bad[0] ^= 1;
        assert_eq!(
            verify_stored(&with, &bad),
            Err(BlockCodecError::StoredHashMismatch)
        );
    }

    fn text(len: usize) -> Vec<u8> {
        b"the quick brown fox "
            .iter()
            .cycle()
            .take(len)
            .copied()
            .collect()
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn encrypted(keys: &TenantKeys, raw: &[u8]) -> EncodedBlock {
        encode_block_with_hash(raw, block_hash(Some(keys), raw), Some(keys))
    }

    #[test]
    fn encrypted_blocks_round_trip_compressed_or_raw() {
        let keys = std::sync::Arc::new(TenantKeys::new(&TenantKey::generate()));
        let opener = BlockOpener::Encrypted(keys.clone());
        for (raw, codec) in [(text(65536), Codec::Lz4), (noise(65536, 9), Codec::Raw)] {
            let e = encrypted(&keys, &raw);
            assert_eq!(e.codec, codec);
            let plain = encode_block(&raw);
            assert_eq!(e.stored.len(), plain.stored.len() + TAG_LEN);
            // Nothing of the plaintext or its compressed form shows.
            assert_ne!(&e.stored[..64], &plain.stored[..64]);
            assert_ne!(e.hash, plain.hash);
            let entry = entry_for(&e);
            assert_eq!(verify_stored(&entry, &e.stored), Ok(()));
            assert_eq!(decode_block(&opener, &entry, &e.stored).unwrap(), raw);
        }
    }

    #[test]
    fn encryption_is_convergent_per_tenant() {
        let a = TenantKeys::new(&TenantKey::generate());
        let b = TenantKeys::new(&TenantKey::generate());
        let raw = text(8192);
        assert_eq!(encrypted(&a, &raw).stored, encrypted(&a, &raw).stored);
        assert_ne!(encrypted(&a, &raw).stored, encrypted(&b, &raw).stored);
        assert_ne!(encrypted(&a, &raw).hash, encrypted(&b, &raw).hash);
    }

    #[test]
    fn tampered_or_misread_encrypted_blocks_are_refused() {
        let keys = std::sync::Arc::new(TenantKeys::new(&TenantKey::generate()));
        let opener = BlockOpener::Encrypted(keys.clone());
        let e = encrypted(&keys, &text(8192));
        let entry = entry_for(&e);
        for i in [0, e.stored.len() / 2, e.stored.len() - 1] {
            let mut bad = e.stored.clone();
            bad[i] ^= 0x10;
            assert_eq!(
                decode_block(&opener, &entry, &bad),
                Err(BlockCodecError::Decrypt)
            );
        }
        let other =
            BlockOpener::Encrypted(std::sync::Arc::new(TenantKeys::new(&TenantKey::generate())));
        assert_eq!(
            decode_block(&other, &entry, &e.stored),
            Err(BlockCodecError::Decrypt)
        );
        // A manifest entry claiming another codec fails the tag too.
        let relabelled = BlockEntry {
            codec: Codec::Raw,
            stored_len: entry.stored_len,
            ..entry.clone()
        };
        assert!(decode_block(&opener, &relabelled, &e.stored).is_err());
        // Read as if in the clear, ciphertext never passes.
        assert!(decode_block(&BlockOpener::Plain, &entry, &e.stored).is_err());
    }

    #[test]
    fn zero_page_detection() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero_page(&page));
        page[4095] = 1;
        assert!(!is_zero_page(&page));
        page[4095] = 0;
        page[3] = 1;
        assert!(!is_zero_page(&page));
    }
}
