//! Manifest signatures: the root of trust that lives outside the store.
//!
//! The manifest's own checksum and the block hashes only catch accidents:
//! whoever can write the store can recompute them. A checkpoint writer holding
//! a signing key (ed25519) therefore appends a signature section to the
//! manifest object; the manifest covers the state blob and every block's hash,
//! so the signature covers all of guest memory and VM state. A reader accepts
//! a manifest only under a [`ManifestTrust`]: signed by a trusted key, equal to
//! a digest a trusted party already verified (what a VMM hands its fetch
//! agent), or explicitly unsigned.
//!
//! A manifest object is the manifest frame (see [`crate::envelope`]) followed
//! by nothing, or by one section: `THAWSIG1`, the signer's 32-byte public key
//! and a 64-byte signature over a context string and the frame's
//! [`ManifestDigest`].

use ed25519_dalek::{Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::envelope::{HEADER_LEN, TRAILER_LEN};

/// Magic of the signature section.
pub const SECTION_MAGIC: [u8; 8] = *b"THAWSIG1";
/// Magic + public key + signature.
pub const SECTION_LEN: usize = 8 + 32 + 64;
/// What is signed is this context followed by the digest, so a thaw manifest
/// signature can never be replayed as a signature of anything else.
const CONTEXT: &[u8] = b"thaw manifest signature v1\0";

const SECRET_KEY_TAG: &str = "thaw-signing-key-v1";
const PUBLIC_KEY_TAG: &str = "thaw-trusted-key-v1";

/// Why a manifest or a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("manifest is not signed, and unsigned checkpoints are refused unless explicitly allowed (--insecure-unsigned)")]
    Unsigned,
    #[error("no trusted signing key is configured, so no checkpoint can be verified (give --trust KEY.pub, or --insecure-unsigned)")]
    NoTrustedKeys,
    #[error("manifest is signed by key {key}, which is not among the trusted keys")]
    UntrustedKey { key: String },
    #[error(
        "manifest signature by key {key} does not verify: the manifest was altered after signing"
    )]
    BadSignature { key: String },
    #[error("manifest digest {found} differs from {expected}, the digest of the manifest the VMM verified")]
    DigestMismatch { expected: String, found: String },
    #[error(
        "manifest object has {len} bytes after its manifest frame that are not a signature section"
    )]
    TrailingData { len: usize },
    #[error("signature section holds an invalid public key")]
    BadSectionKey,
    #[error("{what}: {reason}")]
    BadKey { what: &'static str, reason: String },
}

/// BLAKE3 of a manifest frame as stored: what is signed, and what a VMM
/// hands its fetch agent so the agent serves exactly the manifest it verified.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ManifestDigest(pub [u8; 32]);

impl ManifestDigest {
    pub fn of(frame: &[u8]) -> Self {
        Self(*blake3::hash(frame).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, SignatureError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| SignatureError::BadKey {
            what: "manifest digest",
            reason: format!("{s:?} is not 64 hex digits: {e}"),
        })?;
        Ok(Self(out))
    }
}

impl std::fmt::Display for ManifestDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ManifestDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManifestDigest({})", self.to_hex())
    }
}

/// A signature section: who signed, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSignature {
    pub key: VerifyingKey,
    pub signature: ed25519_dalek::Signature,
}

/// A manifest object taken apart: the frame, its digest, and its signature
/// section if any. Nothing is verified yet.
#[derive(Debug, Clone)]
pub struct SignedManifest<'a> {
    pub frame: &'a [u8],
    pub digest: ManifestDigest,
    pub signature: Option<ManifestSignature>,
}

/// Splits a manifest object into frame and signature section. The frame's
/// length comes from its header; an object too short for that is returned
/// whole as the frame, for the manifest decoder to refuse with its own error.
pub fn split(object: &[u8]) -> Result<SignedManifest<'_>, SignatureError> {
    let frame_len = (object.len() >= HEADER_LEN)
        .then(|| u64::from_le_bytes(object[12..20].try_into().expect("8 bytes")))
        .and_then(|body| body.checked_add((HEADER_LEN + TRAILER_LEN) as u64))
        .filter(|&len| len <= object.len() as u64)
        .map_or(object.len(), |len| len as usize);
    let (frame, rest) = object.split_at(frame_len);
    let signature = match rest.len() {
        0 => None,
        SECTION_LEN if rest[..8] == SECTION_MAGIC => {
            let key: [u8; 32] = rest[8..40].try_into().expect("32 bytes");
            let sig: [u8; 64] = rest[40..].try_into().expect("64 bytes");
            Some(ManifestSignature {
                key: VerifyingKey::from_bytes(&key).map_err(|_| SignatureError::BadSectionKey)?,
                signature: ed25519_dalek::Signature::from_bytes(&sig),
            })
        }
        len => return Err(SignatureError::TrailingData { len }),
    };
    Ok(SignedManifest {
        frame,
        digest: ManifestDigest::of(frame),
        signature,
    })
}

fn message(digest: &ManifestDigest) -> Vec<u8> {
    [CONTEXT, &digest.0].concat()
}

/// The manifest object for `frame` signed with `key`.
pub fn sign(frame: &[u8], key: &SigningKey) -> Vec<u8> {
    let digest = ManifestDigest::of(frame);
    let signature = key.sign(&message(&digest));
    let mut out = Vec::with_capacity(frame.len() + SECTION_LEN);
    out.extend_from_slice(frame);
    out.extend_from_slice(&SECTION_MAGIC);
    out.extend_from_slice(key.verifying_key().as_bytes());
    out.extend_from_slice(&signature.to_bytes());
    out
}

/// What a reader accepts a manifest on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestTrust {
    /// Signed by one of these keys.
    Keys(Vec<VerifyingKey>),
    /// Exactly this manifest, verified by someone the reader trusts (the VMM
    /// that handed its memory to a fetch agent).
    Digest(ManifestDigest),
    /// Anything that decodes: only on an explicit opt-in.
    InsecureUnsigned,
}

/// How a manifest passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    SignedBy(VerifyingKey),
    DigestMatched,
    Unsigned,
}

impl ManifestTrust {
    /// Checks a split manifest object against this trust.
    pub fn check(&self, m: &SignedManifest<'_>) -> Result<Verified, SignatureError> {
        match self {
            ManifestTrust::InsecureUnsigned => Ok(Verified::Unsigned),
            ManifestTrust::Digest(expected) if *expected == m.digest => Ok(Verified::DigestMatched),
            ManifestTrust::Digest(expected) => Err(SignatureError::DigestMismatch {
                expected: expected.to_hex(),
                found: m.digest.to_hex(),
            }),
            ManifestTrust::Keys(keys) => {
                let sig = m.signature.as_ref().ok_or(SignatureError::Unsigned)?;
                if keys.is_empty() {
                    return Err(SignatureError::NoTrustedKeys);
                }
                if !keys.contains(&sig.key) {
                    return Err(SignatureError::UntrustedKey {
                        key: key_id(&sig.key),
                    });
                }
                sig.key
                    .verify(&message(&m.digest), &sig.signature)
                    .map_err(|_| SignatureError::BadSignature {
                        key: key_id(&sig.key),
                    })?;
                Ok(Verified::SignedBy(sig.key))
            }
        }
    }

    /// This trust extended with `key` (a writer trusts its own key for the
    /// parent it dedups against).
    pub fn with_key(&self, key: VerifyingKey) -> ManifestTrust {
        match self {
            ManifestTrust::Keys(keys) if !keys.contains(&key) => {
                ManifestTrust::Keys(keys.iter().copied().chain([key]).collect())
            }
            other => other.clone(),
        }
    }
}

/// A short, stable name for a public key in messages: its first 16 hex digits.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&key.as_bytes()[..8])
}

/// A new signing key from 32 random bytes.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// The text of a secret key file.
pub fn encode_signing_key(key: &SigningKey) -> String {
    format!("{SECRET_KEY_TAG} {}\n", hex::encode(key.to_bytes()))
}

/// The text of a public key file (one line; trust files may hold several).
pub fn encode_public_key(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_TAG} {}\n", hex::encode(key.as_bytes()))
}

/// Parses a secret key file made by [`encode_signing_key`].
pub fn parse_signing_key(text: &str) -> Result<SigningKey, SignatureError> {
    let bad = |reason: String| SignatureError::BadKey {
        what: "signing key",
        reason,
    };
    let hex_key = key_lines(text)
        .next()
        .and_then(|l| l.strip_prefix(SECRET_KEY_TAG))
        .map(str::trim)
        .ok_or_else(|| {
            bad(format!(
                "expected a line \"{SECRET_KEY_TAG} <64 hex digits>\""
            ))
        })?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut seed)
        .map_err(|e| bad(format!("the key is not 64 hex digits: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a trust file: one or more lines made by [`encode_public_key`];
/// blank lines and lines starting with `#` are ignored.
pub fn parse_public_keys(text: &str) -> Result<Vec<VerifyingKey>, SignatureError> {
    let mut keys = Vec::new();
    for (n, line) in key_lines(text).enumerate() {
        let bad = |reason: String| SignatureError::BadKey {
            what: "trusted key",
            reason: format!("key {}: {reason}", n + 1),
        };
        let hex_key = line
            .strip_prefix(PUBLIC_KEY_TAG)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| bad(format!("expected \"{PUBLIC_KEY_TAG} <64 hex digits>\"")))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut bytes)
            .map_err(|e| bad(format!("not 64 hex digits: {e}")))?;
        keys.push(VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?);
    }
    if keys.is_empty() {
        return Err(SignatureError::BadKey {
            what: "trusted key file",
            reason: "holds no key".into(),
        });
    }
    Ok(keys)
}

fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::seal;

    fn frame() -> Vec<u8> {
        seal(*b"THAWMNFS", 2, b"some manifest body")
    }

    #[test]
    fn signed_object_verifies_under_its_key_only() {
        let key = generate_signing_key();
        let other = generate_signing_key();
        let f = frame();
        let object = sign(&f, &key);
        let m = split(&object).unwrap();
        assert_eq!(m.frame, &f[..]);
        assert_eq!(m.digest, ManifestDigest::of(&f));
        let trust = ManifestTrust::Keys(vec![key.verifying_key()]);
        assert_eq!(
            trust.check(&m).unwrap(),
            Verified::SignedBy(key.verifying_key())
        );
        let wrong = ManifestTrust::Keys(vec![other.verifying_key()]);
        assert!(matches!(
            wrong.check(&m),
            Err(SignatureError::UntrustedKey { .. })
        ));
        assert_eq!(
            ManifestTrust::Keys(vec![]).check(&m),
            Err(SignatureError::NoTrustedKeys)
        );
    }

    #[test]
    fn altered_frame_or_signature_is_refused() {
        let key = generate_signing_key();
        let trust = ManifestTrust::Keys(vec![key.verifying_key()]);
        let object = sign(&frame(), &key);
        // Any byte of the frame (re-sealing would not help: the digest changes),
        // the key or the signature.
        for at in [0, 20, object.len() - SECTION_LEN - 1, object.len() - 1] {
            let mut forged = object.clone();
            forged[at] ^= 1;
            let refused = match split(&forged) {
                Ok(m) => trust.check(&m).is_err(),
                Err(_) => true,
            };
            assert!(refused, "flipping byte {at} went unnoticed");
        }
        // A forger re-signing with their own key is not trusted.
        let forger = generate_signing_key();
        let reforged = sign(split(&object).unwrap().frame, &forger);
        assert!(matches!(
            trust.check(&split(&reforged).unwrap()),
            Err(SignatureError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn unsigned_needs_opt_in_and_digest_must_match() {
        let f = frame();
        let m = split(&f).unwrap();
        assert!(m.signature.is_none());
        let key = generate_signing_key();
        assert_eq!(
            ManifestTrust::Keys(vec![key.verifying_key()]).check(&m),
            Err(SignatureError::Unsigned)
        );
        assert_eq!(
            ManifestTrust::InsecureUnsigned.check(&m).unwrap(),
            Verified::Unsigned
        );
        assert_eq!(
            ManifestTrust::Digest(ManifestDigest::of(&f))
                .check(&m)
                .unwrap(),
            Verified::DigestMatched
        );
        assert!(matches!(
            ManifestTrust::Digest(ManifestDigest([7; 32])).check(&m),
            Err(SignatureError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn trailing_bytes_that_are_not_a_section_are_refused() {
        let mut object = frame();
        object.extend_from_slice(b"junk");
        assert_eq!(
            split(&object).unwrap_err(),
            SignatureError::TrailingData { len: 4 }
        );
        // Too short for its header: handed whole to the decoder.
        assert_eq!(split(b"THAW").unwrap().frame, b"THAW");
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_say_why() {
        let key = generate_signing_key();
        let parsed = parse_signing_key(&encode_signing_key(&key)).unwrap();
        assert_eq!(parsed.to_bytes(), key.to_bytes());
        let other = generate_signing_key();
        let trust = format!(
            "# fleet keys\n{}\n{}",
            encode_public_key(&key.verifying_key()),
            encode_public_key(&other.verifying_key())
        );
        assert_eq!(
            parse_public_keys(&trust).unwrap(),
            vec![key.verifying_key(), other.verifying_key()]
        );
        let digest = ManifestDigest::of(b"x");
        assert_eq!(ManifestDigest::from_hex(&digest.to_hex()).unwrap(), digest);
        assert!(parse_signing_key("thaw-signing-key-v1 abc").is_err());
        assert!(parse_signing_key(&encode_public_key(&key.verifying_key())).is_err());
        assert!(parse_public_keys("").is_err());
        assert!(parse_public_keys(&encode_signing_key(&key)).is_err());
    }
}
