//! Encryption at rest that keeps dedup: the keys a tenant key gives, and
//! sealing and opening one block or one state blob with them. No I/O: the
//! key file is read by the store crate.
//!
//! Convergent: a block's key is derived from the tenant key and the block's
//! plaintext, so one tenant's identical blocks encrypt to identical bytes
//! (and a child checkpoint reuses its parent's), while another tenant's are
//! unrelated. The manifest names a block by a hash keyed with the tenant's
//! key, never by an unkeyed hash of its plaintext: a store holding the
//! manifest cannot confirm a guess of a block's contents. Each block key
//! encrypts exactly one plaintext (the key is a function of it, and lz4 is
//! deterministic), so a fixed nonce never repeats under one key.
//!
//! Cipher: AES-256-GCM (ring), several times faster than ChaCha20-Poly1305
//! on a CPU with AES-NI and carry-less multiply (docs/decisions/encryption-at-rest.md).

use std::fmt;
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

use crate::block_codec::BlockCodecError;
use crate::manifest::{BlockEntry, CheckpointId, Codec, Manifest};

/// Bytes of the AEAD tag after a sealed block or state blob.
pub const TAG_LEN: usize = 16;
/// Bytes of the random salt that starts a sealed state blob.
pub const STATE_SALT_LEN: usize = 32;

const ID_CONTEXT: &str = "thaw 2026-12 tenant key id";
const HASH_CONTEXT: &str = "thaw 2026-12 block plaintext hash";
const BLOCK_CONTEXT: &str = "thaw 2026-12 block key";
const STATE_CONTEXT: &str = "thaw 2026-12 state blob key";
const CACHE_CONTEXT: &str = "thaw 2026-12 decoded block cache key";

/// A tenant's secret: 32 random bytes, held by checkpoint writers and
/// restoring hosts, never by a store or a block server.
#[derive(Clone)]
pub struct TenantKey([u8; 32]);

impl TenantKey {
    pub const LEN: usize = 32;

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key file's contents: exactly [`TenantKey::LEN`] bytes.
    pub fn parse(file: &[u8]) -> Result<Self, CryptError> {
        let bytes: [u8; 32] = file
            .try_into()
            .map_err(|_| CryptError::BadKeyLength { len: file.len() })?;
        Ok(Self(bytes))
    }

    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's public name, recorded in the manifests it encrypts.
    pub fn id(&self) -> KeyId {
        let full = blake3::derive_key(ID_CONTEXT, &self.0);
        KeyId(full[..KeyId::LEN].try_into().expect("16 bytes"))
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantKey(id {})", self.id())
    }
}

/// Names a tenant key without revealing it (a BLAKE3 derivation of it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub const LEN: usize = 16;
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The AEAD a checkpoint is encrypted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cipher {
    Aes256Gcm = 1,
}

impl Cipher {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        (v == 1).then_some(Cipher::Aes256Gcm)
    }
}

/// What a manifest records of an encrypted checkpoint: how, and with which
/// tenant key (by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encryption {
    pub cipher: Cipher,
    pub key_id: KeyId,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("the checkpoint is encrypted with tenant key {key_id}, and no tenant key was given")]
    MissingKey { key_id: KeyId },
    #[error(
        "the checkpoint is encrypted with tenant key {expected}, but the tenant key given is {given}"
    )]
    WrongKey { expected: KeyId, given: KeyId },
    #[error("a tenant key is exactly 32 bytes; this one has {len}")]
    BadKeyLength { len: usize },
    #[error("encrypted state blob of {len} bytes is shorter than its salt and tag")]
    StateTooShort { len: usize },
    #[error(
        "state blob does not decrypt with the tenant key: tampered with, or not this checkpoint's"
    )]
    StateRefused,
}

/// The keys derived from one tenant key. Deriving costs a few hashes, so
/// writers and readers derive once per store.
#[derive(Clone)]
pub struct TenantKeys {
    id: KeyId,
    hash_key: [u8; 32],
    block_root: [u8; 32],
    state_root: [u8; 32],
    cache_key: [u8; 32],
}

impl fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantKeys(id {})", self.id)
    }
}

impl TenantKeys {
    pub fn new(key: &TenantKey) -> Self {
        Self {
            id: key.id(),
            hash_key: blake3::derive_key(HASH_CONTEXT, &key.0),
            block_root: blake3::derive_key(BLOCK_CONTEXT, &key.0),
            state_root: blake3::derive_key(STATE_CONTEXT, &key.0),
            cache_key: blake3::derive_key(CACHE_CONTEXT, &key.0),
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    pub fn encryption(&self) -> Encryption {
        Encryption {
            cipher: Cipher::Aes256Gcm,
            key_id: self.id,
        }
    }

    /// The manifest's name for a block of this tenant: its plaintext hashed
    /// with a key only the tenant has.
    pub fn block_hash(&self, raw: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.hash_key, raw).as_bytes()
    }

    /// The block's own key, a function of its (keyed) plaintext hash.
    fn block_key(&self, hash: &[u8; 32]) -> LessSafeKey {
        let key = blake3::keyed_hash(&self.block_root, hash);
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte key"))
    }

    /// Encrypts a block's encoded bytes (compressed or not) in place and
    /// appends the tag.
    pub fn seal_block(&self, hash: &[u8; 32], codec: Codec, raw_len: u64, stored: &mut Vec<u8>) {
        let tag = self
            .block_key(hash)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                block_aad(codec, raw_len),
                stored,
            )
            .expect("a block is far below AES-GCM's message limit");
        stored.extend_from_slice(tag.as_ref());
    }

    /// Decrypts a block's stored bytes into `out` (the stored length minus
    /// the tag) and checks the tag.
    pub(crate) fn open_block(
        &self,
        entry: &BlockEntry,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), BlockCodecError> {
        let Some(body_len) = stored.len().checked_sub(TAG_LEN) else {
            return Err(BlockCodecError::Decrypt);
        };
        debug_assert_eq!(out.len(), body_len);
        let (body, tag) = stored.split_at(body_len);
        let tag = Tag::try_from(tag).map_err(|_| BlockCodecError::Decrypt)?;
        out.copy_from_slice(body);
        self.block_key(&entry.hash)
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                block_aad(entry.codec, entry.raw_len),
                tag,
                out,
                0..,
            )
            .map_err(|_| BlockCodecError::Decrypt)?;
        Ok(())
    }

    /// Encrypts a checkpoint's state blob: a fresh random salt gives a fresh
    /// key, and the checkpoint id is bound in, so a store cannot swap the
    /// state blobs of two checkpoints.
    pub fn seal_state(&self, id: &CheckpointId, plain: &[u8]) -> Vec<u8> {
        let salt: [u8; STATE_SALT_LEN] = rand::random();
        let mut out = Vec::with_capacity(STATE_SALT_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&salt);
        out.extend_from_slice(plain);
        let tag = self
            .state_key(&salt)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                state_aad(id),
                &mut out[STATE_SALT_LEN..],
            )
            .expect("a state blob is far below AES-GCM's message limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    pub fn open_state(&self, id: &CheckpointId, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        if sealed.len() < STATE_SALT_LEN + TAG_LEN {
            return Err(CryptError::StateTooShort { len: sealed.len() });
        }
        let (salt, rest) = sealed.split_at(STATE_SALT_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| CryptError::StateRefused)?;
        let mut out = body.to_vec();
        self.state_key(salt.try_into().expect("salt length"))
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                state_aad(id),
                tag,
                &mut out,
                0..,
            )
            .map_err(|_| CryptError::StateRefused)?;
        Ok(out)
    }

    fn state_key(&self, salt: &[u8; STATE_SALT_LEN]) -> LessSafeKey {
        let key = blake3::keyed_hash(&self.state_root, salt);
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte key"))
    }
}

/// The block's codec and raw length are bound to its ciphertext: a manifest
/// entry altered to decode the bytes differently fails the tag.
fn block_aad(codec: Codec, raw_len: u64) -> Aad<[u8; 9]> {
    let mut aad = [0u8; 9];
    aad[0] = codec as u8;
    aad[1..].copy_from_slice(&raw_len.to_le_bytes());
    Aad::from(aad)
}

fn state_aad(id: &CheckpointId) -> Aad<Vec<u8>> {
    Aad::from(id.as_str().as_bytes().to_vec())
}

/// What a reader needs to open one checkpoint's blocks: nothing for a
/// checkpoint stored in the clear, the tenant's keys for an encrypted one.
/// Made by [`BlockOpener::for_manifest`], which refuses a missing or wrong key.
#[derive(Debug, Clone)]
pub enum BlockOpener {
    Plain,
    Encrypted(Arc<TenantKeys>),
}

impl BlockOpener {
    /// The opener of `manifest`'s blocks with the reader's keys, if any. A
    /// reader with a key still opens a checkpoint stored in the clear.
    pub fn for_manifest(
        manifest: &Manifest,
        keys: Option<&Arc<TenantKeys>>,
    ) -> Result<Self, CryptError> {
        let Some(enc) = manifest.encryption else {
            return Ok(BlockOpener::Plain);
        };
        match keys {
            None => Err(CryptError::MissingKey { key_id: enc.key_id }),
            Some(k) if k.id != enc.key_id => Err(CryptError::WrongKey {
                expected: enc.key_id,
                given: k.id,
            }),
            Some(k) => Ok(BlockOpener::Encrypted(k.clone())),
        }
    }

    /// The tenant's keys, for an encrypted checkpoint.
    pub fn keys(&self) -> Option<&TenantKeys> {
        match self {
            BlockOpener::Plain => None,
            BlockOpener::Encrypted(k) => Some(k),
        }
    }

    /// The key a cache of decoded blocks shared by several checkpoints
    /// should file this block under. An encrypted block's manifest hash is
    /// public (any reader of the store sees it), so it is keyed once more:
    /// a forged manifest that copies it cannot draw the tenant's decoded
    /// block out of a shared cache.
    pub fn cache_key(&self, entry: &BlockEntry) -> [u8; 32] {
        match self {
            BlockOpener::Plain => entry.hash,
            BlockOpener::Encrypted(k) => *blake3::keyed_hash(&k.cache_key, &entry.hash).as_bytes(),
        }
    }

    /// The manifest's VM state, decrypted when the checkpoint is encrypted.
    pub fn state(&self, manifest: &Manifest) -> Result<Vec<u8>, CryptError> {
        match self {
            BlockOpener::Plain => Ok(manifest.state.bytes.clone()),
            BlockOpener::Encrypted(k) => k.open_state(&manifest.id, &manifest.state.bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CheckpointId {
        CheckpointId::new(s).unwrap()
    }

    #[test]
    fn key_file_must_be_32_bytes_and_debug_never_shows_the_key() {
        assert_eq!(
            TenantKey::parse(&[1; 31]).unwrap_err(),
            CryptError::BadKeyLength { len: 31 }
        );
        let k = TenantKey::parse(&[0xab; 32]).unwrap();
        let shown = format!("{k:?} {:?}", TenantKeys::new(&k));
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&k.id().to_string()));
        assert_ne!(k.id(), TenantKey::from_bytes([0xac; 32]).id());
    }

    #[test]
    fn state_round_trips_and_is_bound_to_its_checkpoint() {
        let keys = TenantKeys::new(&TenantKey::generate());
        let sealed = keys.seal_state(&id("a"), b"vcpu state");
        assert!(!sealed.windows(10).any(|w| w == b"vcpu state"));
        assert_eq!(keys.open_state(&id("a"), &sealed).unwrap(), b"vcpu state");
        // Fresh salt each time: two seals of one state differ.
        assert_ne!(sealed, keys.seal_state(&id("a"), b"vcpu state"));
        assert_eq!(
            keys.open_state(&id("b"), &sealed),
            Err(CryptError::StateRefused)
        );
        let other = TenantKeys::new(&TenantKey::generate());
        assert_eq!(
            other.open_state(&id("a"), &sealed),
            Err(CryptError::StateRefused)
        );
        let mut flipped = sealed.clone();
        flipped[STATE_SALT_LEN + 3] ^= 1;
        assert_eq!(
            keys.open_state(&id("a"), &flipped),
            Err(CryptError::StateRefused)
        );
        assert_eq!(
            keys.open_state(&id("a"), &sealed[..40]),
            Err(CryptError::StateTooShort { len: 40 })
        );
    }

    #[test]
    fn block_hashes_are_keyed_per_tenant() {
        let a = TenantKeys::new(&TenantKey::generate());
        let b = TenantKeys::new(&TenantKey::generate());
        let raw = [5u8; 4096];
        assert_eq!(a.block_hash(&raw), a.block_hash(&raw));
        assert_ne!(a.block_hash(&raw), b.block_hash(&raw));
        assert_ne!(a.block_hash(&raw), *blake3::hash(&raw).as_bytes());
    }
}
