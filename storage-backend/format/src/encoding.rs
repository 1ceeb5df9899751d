//! The manifest's byte encoding.
//!
//! ```text
//! header   magic "THAWMNFS" | version u16 LE | reserved u16 (0) | body length u64 LE
//! body     fields in a fixed order, integers as LEB128 varints
//! trailer  BLAKE3 of header and body (32 bytes)
//! ```
//! Version 2 adds to each block entry, after its hash, a flag byte and, when
//! the flag is 1, the BLAKE3 of its stored bytes. Version 1 manifests still
//! decode, their blocks without a stored-bytes hash.
//!
//! Version 3 adds at the end of the body an encryption flag byte and, when
//! it is 1, the cipher byte and the 16-byte id of the tenant key. Versions 1
//! and 2 decode as checkpoints stored in the clear.
//!
//! A versioned binary encoding rather than JSON: a 4 GiB VM has tens of
//! thousands of blocks, and the manifest sits on the restore path. Parsing is
//! bounded: the header's length is checked against the input and a limit,
//! the checksum before any field is read, and every count against the bytes
//! left. Decoding ends with [`Manifest::validate`], so a decoded manifest is
//! always consistent.

use super::block_crypt::{Cipher, Encryption, KeyId};
use super::error::FormatError;
use super::manifest::{BlockEntry, CheckpointId, Codec, Manifest, PageRun, Region, StateBlob};
use super::wire::{Decoder, Encoder};

pub(crate) const MAGIC: [u8; 8] = *b"THAWMNFS";
pub const VERSION: u16 = 3;
/// The oldest version [`decode`] reads.
pub(crate) const OLDEST_VERSION: u16 = 1;
/// A manifest larger than this is refused before it is parsed.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Smallest encoding of a block entry: 1-byte run count, one 2-byte run, four
/// 1-byte varints, the codec byte and the hash.
const MIN_BLOCK_BYTES: usize = 1 + 2 + 4 + 1 + 32;

pub fn encode(m: &Manifest) -> Vec<u8> {
    encode_as(m, VERSION)
}

/// Encodes in `version` (1 drops the stored-bytes hashes; 1 and 2 cannot
/// say that a checkpoint is encrypted).
fn encode_as(m: &Manifest, version: u16) -> Vec<u8> {
    let mut e = Encoder::default();
    e.bytes(m.id.as_str().as_bytes());
    e.varint(m.created_unix_ms);
    match &m.parent {
        Some(p) => {
            e.u8(1);
            e.bytes(p.as_str().as_bytes());
        }
        None => e.u8(0),
    }
    e.varint(m.page_size);
    e.varint(m.regions.len() as u64);
    for r in &m.regions {
        e.varint(r.guest_phys_addr);
        e.varint(r.size);
    }
    e.varint(m.objects.len() as u64);
    for o in &m.objects {
        e.bytes(o.as_bytes());
    }
    e.varint(m.blocks.len() as u64);
    for b in &m.blocks {
        encode_runs(&mut e, &b.pages);
        e.varint(u64::from(b.object));
        e.varint(b.offset);
        e.varint(b.stored_len);
        e.varint(b.raw_len);
        e.u8(b.codec as u8);
        e.fixed(&b.hash);
        if version >= 2 {
            match &b.stored_hash {
                Some(h) => {
                    e.u8(1);
                    e.fixed(h);
                }
                None => e.u8(0),
            }
        }
    }
    encode_runs(&mut e, &m.zero_pages);
    e.varint(m.prefetch_order.len() as u64);
    for &b in &m.prefetch_order {
        e.varint(u64::from(b));
    }
    e.bytes(&m.state.bytes);
    e.fixed(&m.state.hash);
    if version >= 3 {
        match &m.encryption {
            Some(enc) => {
                e.u8(1);
                e.u8(enc.cipher as u8);
                e.fixed(&enc.key_id.0);
            }
            None => e.u8(0),
        }
    }

    super::envelope::seal(MAGIC, version, &e.buf)
}

/// A manifest's frame whose magic, version, length and checksum were
/// checked, its body not yet decoded: cheap to get, so a reader can say "not
/// a manifest" before asking whether it is signed, and decode once after.
pub struct ManifestFrame<'a> {
    version: u16,
    body: &'a [u8],
}

impl ManifestFrame<'_> {
    /// Decodes and validates the body.
    pub fn decode(&self) -> Result<Manifest, FormatError> {
        let manifest = decode_body_of(self.version, self.body)?;
        manifest.validate()?;
        Ok(manifest)
    }
}

/// Checks a manifest's frame without decoding its body.
pub fn open_frame(input: &[u8]) -> Result<ManifestFrame<'_>, FormatError> {
    let (version, body) =
        super::envelope::open_versions(input, MAGIC, OLDEST_VERSION..=VERSION, MAX_MANIFEST_BYTES)?;
    Ok(ManifestFrame { version, body })
}

/// Parses and validates a manifest.
pub fn decode(input: &[u8]) -> Result<Manifest, FormatError> {
    open_frame(input)?.decode()
}

/// Parses the body alone (no checksum, no validation): the part a fuzzer
/// should reach without having to forge a checksum.
pub fn decode_body(body: &[u8]) -> Result<Manifest, FormatError> {
    decode_body_of(VERSION, body)
}

fn decode_body_of(version: u16, body: &[u8]) -> Result<Manifest, FormatError> {
    let mut d = Decoder::new(body);
    let id = CheckpointId::new(d.string("id")?)?;
    let created_unix_ms = d.varint("created time")?;
    let parent = match d.u8("parent flag")? {
        0 => None,
        1 => Some(CheckpointId::new(d.string("parent id")?)?),
        v => {
            return Err(FormatError::ValueTooLarge {
                field: "parent flag",
                value: u64::from(v),
            })
        }
    };
    let page_size = d.varint("page size")?;
    let n = d.count("region count", 2)?;
    let mut regions = Vec::with_capacity(n);
    for _ in 0..n {
        regions.push(Region {
            guest_phys_addr: d.varint("region base")?,
            size: d.varint("region size")?,
        });
    }
    let n = d.count("object count", 2)?;
    let mut objects = Vec::with_capacity(n);
    for _ in 0..n {
        objects.push(d.string("object key")?);
    }
    let n = d.count("block count", MIN_BLOCK_BYTES)?;
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let pages = decode_runs(&mut d, "block pages")?;
        let object = d.u32("block object")?;
        let offset = d.varint("block offset")?;
        let stored_len = d.varint("block stored length")?;
        let raw_len = d.varint("block raw length")?;
        let codec_byte = d.u8("block codec")?;
        let codec = Codec::from_u8(codec_byte).ok_or(FormatError::UnknownCodec {
            block: i as u32,
            codec: codec_byte,
        })?;
        let hash = d.hash("block hash")?;
        let stored_hash = match version {
            1 => None,
            _ => match d.u8("stored hash flag")? {
                0 => None,
                1 => Some(d.hash("stored hash")?),
                v => {
                    return Err(FormatError::ValueTooLarge {
                        field: "stored hash flag",
                        value: u64::from(v),
                    })
                }
            },
        };
        blocks.push(BlockEntry {
            pages,
            object,
            offset,
            stored_len,
            raw_len,
            codec,
            hash,
            stored_hash,
        });
    }
    let zero_pages = decode_runs(&mut d, "zero pages")?;
    let n = d.count("prefetch order length", 1)?;
    let mut prefetch_order = Vec::with_capacity(n);
    for _ in 0..n {
        prefetch_order.push(d.u32("prefetch order entry")?);
    }
    let state_bytes = d.bytes("state blob")?.to_vec();
    let state_hash = d.hash("state hash")?;
    let encryption = match version {
        1 | 2 => None,
        _ => decode_encryption(&mut d)?,
    };
    if !d.is_empty() {
        return Err(FormatError::TrailingBytes(d.remaining()));
    }
    Ok(Manifest {
        id,
        created_unix_ms,
        parent,
        page_size,
        regions,
        objects,
        blocks,
        zero_pages,
        prefetch_order,
        state: StateBlob {
            bytes: state_bytes,
            hash: state_hash,
        },
        encryption,
    })
}

fn decode_encryption(d: &mut Decoder<'_>) -> Result<Option<Encryption>, FormatError> {
    match d.u8("encryption flag")? {
        0 => Ok(None),
        1 => {
            let value = d.u8("cipher")?;
            let cipher = Cipher::from_u8(value).ok_or(FormatError::UnknownCipher {
                field: "cipher",
                value,
            })?;
            let id = d.fixed("tenant key id", KeyId::LEN)?;
            Ok(Some(Encryption {
                cipher,
                key_id: KeyId(id.try_into().expect("16 bytes")),
            }))
        }
        v => Err(FormatError::ValueTooLarge {
            field: "encryption flag",
            value: u64::from(v),
        }),
    }
}

fn encode_runs(e: &mut Encoder, runs: &[PageRun]) {
    e.varint(runs.len() as u64);
    for r in runs {
        e.varint(r.start);
        e.varint(r.len);
    }
}

fn decode_runs(d: &mut Decoder<'_>, field: &'static str) -> Result<Vec<PageRun>, FormatError> {
    let n = d.count(field, 2)?;
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        runs.push(PageRun {
            start: d.varint(field)?,
            len: d.varint(field)?,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_codec::encode_block;

    fn one_block_manifest() -> Manifest {
        let e = encode_block(&[7u8; 4096]);
        Manifest {
            id: CheckpointId::new("ck-v").unwrap(),
            created_unix_ms: 1,
            parent: None,
            page_size: 4096,
            regions: vec![Region {
                guest_phys_addr: 0,
                size: 4096,
            }],
            objects: vec!["seg-0".into()],
            blocks: vec![e.entry(vec![PageRun { start: 0, len: 1 }], 0, 0)],
            zero_pages: vec![],
            prefetch_order: vec![0],
            state: StateBlob {
                bytes: vec![1, 2],
                hash: *blake3::hash(&[1, 2]).as_bytes(),
            },
            encryption: None,
        }
    }

    #[test]
    fn stored_hashes_round_trip_and_version_1_still_decodes_without_them() {
        let m = one_block_manifest();
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        let mut none = m.clone();
        none.blocks[0].stored_hash = None;
        assert_eq!(decode(&encode(&none)).unwrap(), none);
        // A version 1 manifest (written before stored hashes) reads as one
        // whose blocks have none.
        assert_eq!(decode(&encode_as(&m, 1)).unwrap(), none);
        // A version 2 manifest reads as one stored in the clear.
        assert_eq!(decode(&encode_as(&m, 2)).unwrap(), m);
    }

    #[test]
    fn encryption_round_trips_and_its_rules_are_checked() {
        use crate::block_codec::{block_hash, encode_block_with_hash};
        use crate::block_crypt::{TenantKey, TenantKeys};
        let keys = TenantKeys::new(&TenantKey::generate());
        let raw = [7u8; 4096];
        let e = encode_block_with_hash(&raw, block_hash(Some(&keys), &raw), Some(&keys));
        let mut m = one_block_manifest();
        m.blocks = vec![e.entry(vec![PageRun { start: 0, len: 1 }], 0, 0)];
        m.state = StateBlob::new(keys.seal_state(&m.id, b"state"));
        m.encryption = Some(keys.encryption());
        assert_eq!(decode(&encode(&m)).unwrap(), m);

        let mut unhashed = m.clone();
        unhashed.blocks[0].stored_hash = None;
        assert_eq!(
            decode(&encode(&unhashed)),
            Err(FormatError::EncryptedWithoutStoredHash { block: 0 })
        );
        let mut unsealed = m.clone();
        unsealed.state = StateBlob::new(b"state".to_vec());
        assert_eq!(
            decode(&encode(&unsealed)),
            Err(FormatError::StateNotSealed { len: 5 })
        );
        // Without its tag a block is too short for an encrypted checkpoint.
        let mut short = m.clone();
        short.blocks[0].stored_len = crate::block_crypt::TAG_LEN as u64;
        assert!(matches!(
            decode(&encode(&short)),
            Err(FormatError::BadStoredLen { .. })
        ));
    }
}
