//! Checkpoint names: the rules a name follows and the small object a store
//! keeps per name (`names/NAME`), which says which checkpoint the name
//! points at, when and by whom it was tagged.
//!
//! A name is a pointer, never a source of integrity: whoever restores by
//! name still opens the checkpoint's manifest under their trust (signature
//! or digest), exactly as when restoring by id.
//!
//! The object is a short JSON document rather than a binary frame: it is
//! read once per command, written by hand-run commands, and people inspect
//! it with ordinary S3 tools.

use serde::{Deserialize, Serialize};

use crate::manifest::CheckpointId;

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// A name object larger than this is refused before it is parsed.
pub const MAX_NAME_OBJECT_BYTES: usize = 4096;
/// The `format` field of every name object.
pub const NAME_FORMAT: &str = "thaw-name/1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("checkpoint name is empty")]
    Empty,
    #[error("checkpoint name {name:?} is {len} bytes long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { name: String, len: usize },
    #[error(
        "checkpoint name {name:?} contains {found:?}: names use A-Z a-z 0-9 . _ - only (no '/')"
    )]
    BadCharacter { name: String, found: char },
    #[error("checkpoint name {name:?} starts with '.' or contains \"..\"")]
    Dots { name: String },
    #[error("name object is {len} bytes; at most {MAX_NAME_OBJECT_BYTES} are allowed")]
    ObjectTooLarge { len: usize },
    #[error("name object is not valid: {0}")]
    BadObject(String),
}

/// A checked checkpoint name: 1 to [`MAX_NAME_LEN`] bytes of
/// `A-Z a-z 0-9 . _ -`, not starting with `.` and without `..`, so it is one
/// safe key component on every store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointName(String);

impl CheckpointName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            let len = name.len();
            return Err(NameError::TooLong { name, len });
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::BadCharacter { name, found });
        }
        if name.starts_with('.') || name.contains("..") {
            return Err(NameError::Dots { name });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CheckpointName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CheckpointName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The content of `names/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecord {
    /// The checkpoint the name points at.
    pub id: CheckpointId,
    /// When it was tagged, in milliseconds since the Unix epoch.
    pub tagged_unix_ms: u64,
    /// Who or what tagged it (free text, e.g. `user@host`), for people.
    pub tagged_by: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    id: String,
    tagged_unix_ms: u64,
    tagged_by: String,
}

impl NameRecord {
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            format: NAME_FORMAT.to_owned(),
            id: self.id.to_string(),
            tagged_unix_ms: self.tagged_unix_ms,
            tagged_by: self.tagged_by.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&wire).expect("plain fields serialize");
        bytes.push(b'\n');
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NameError> {
        if bytes.len() > MAX_NAME_OBJECT_BYTES {
            return Err(NameError::ObjectTooLarge { len: bytes.len() });
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| NameError::BadObject(e.to_string()))?;
        if wire.format != NAME_FORMAT {
            return Err(NameError::BadObject(format!(
                "format is {:?}, expected {NAME_FORMAT:?}",
                wire.format
            )));
        }
        let id = CheckpointId::new(wire.id).map_err(|e| NameError::BadObject(e.to_string()))?;
        Ok(Self {
            id,
            tagged_unix_ms: wire.tagged_unix_ms,
            tagged_by: wire.tagged_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass_and_bad_ones_say_why() {
        for ok in ["prod", "web-1.2_b", "A", &"x".repeat(MAX_NAME_LEN)] {
            CheckpointName::new(ok).unwrap();
        }
        assert_eq!(CheckpointName::new(""), Err(NameError::Empty));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            CheckpointName::new(long),
            Err(NameError::TooLong { len: 129, .. })
        ));
        for (bad, found) in [("a/b", '/'), ("a b", ' '), ("é", 'é'), ("x\0", '\0')] {
            let err = CheckpointName::new(bad).unwrap_err();
            assert_eq!(
                err,
                NameError::BadCharacter {
                    name: bad.into(),
                    found
                }
            );
            assert!(err.to_string().contains("no '/'"), "{err}");
        }
        for bad in ["..", "a..b", ".hidden"] {
            assert!(matches!(
                CheckpointName::new(bad),
                Err(NameError::Dots { .. })
            ));
        }
    }

    #[test]
    fn records_round_trip_and_bad_objects_are_refused() {
        let r = NameRecord {
            id: CheckpointId::new("0190-abc").unwrap(),
            tagged_unix_ms: 1_700_000_000_000,
            tagged_by: "alice@host".into(),
        };
        let bytes = r.encode();
        assert_eq!(NameRecord::decode(&bytes).unwrap(), r);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"format\": \"thaw-name/1\""), "{text}");

        let other = text.replace("thaw-name/1", "thaw-name/9");
        let err = NameRecord::decode(other.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("thaw-name/9"), "{err}");
        let bad_id = text.replace("0190-abc", "../x");
        assert!(matches!(
            NameRecord::decode(bad_id.as_bytes()),
            Err(NameError::BadObject(_))
        ));
        assert!(matches!(
            NameRecord::decode(b"not json"),
            Err(NameError::BadObject(_))
        ));
        let huge = vec![b' '; MAX_NAME_OBJECT_BYTES + 1];
        assert!(matches!(
            NameRecord::decode(&huge),
            Err(NameError::ObjectTooLarge { .. })
        ));
    }
}
