//! The hand-off from a VMM to the fetch agent: wire types, parsing and encoding,
//! free of I/O.
//!
//! The VMM connects to the fetch agent's Unix stream socket and sends ONE message: the JSON text
//! below, with the userfaultfd attached by SCM_RIGHTS. Two forms are accepted:
//!
//! - Firecracker's: a JSON array of `{"base_host_virt_addr", "size", "offset", "page_size"}`, one per
//!   guest memory region, `offset` being the region's place in the concatenated guest memory (older
//!   Firecrackers name the page size `page_size_kib` but put bytes in it);
//! - thaw's: a JSON object `{"thaw_handoff": 1, "mappings": [...same entries...], "store": ...,
//!   "checkpoint": ...}` that adds what the fetch agent needs to find the memory.
//!
//! A page index (as in the checkpoint manifest) is a byte offset into the concatenated memory divided
//! by the page size, so [`Handoff::locate`] maps a faulting host address to the page to fetch.

use crate::signature::ManifestDigest;
use serde::{Deserialize, Serialize};

/// Version of thaw's object form.
pub const HANDOFF_VERSION: u32 = 1;
/// Largest hand-off message accepted, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Most regions accepted in one hand-off.
pub const MAX_REGIONS: usize = 4096;

/// One guest memory region as the VMM mapped it (Firecracker's `GuestRegionUffdMapping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RegionMappingFields")]
pub struct RegionMapping {
    /// Host virtual address of the region in the VMM process.
    pub base_host_virt_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the concatenated guest memory.
    pub offset: u64,
    /// Page size of the mapping in bytes. Firecracker 1.12 and later send it twice, as
    /// `page_size` and the deprecated `page_size_kib` (which holds bytes too); 1.7 to 1.11 one
    /// of them; 1.6 and older neither, their pages being 4 KiB.
    pub page_size: u64,
    /// Guest-physical address of the region (thaw's form only; Firecracker does not send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_phys_addr: Option<u64>,
}

/// A region's fields as VMMs send them: the page size under either name, or none.
#[derive(Deserialize)]
struct RegionMappingFields {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default)]
    page_size: Option<u64>,
    #[serde(default)]
    page_size_kib: Option<u64>,
    #[serde(default)]
    guest_phys_addr: Option<u64>,
}

/// Page size of a hand-off that names none (Firecracker 1.6 and older).
const UNNAMED_PAGE_SIZE: u64 = 4096;

impl TryFrom<RegionMappingFields> for RegionMapping {
    type Error = String;

    fn try_from(f: RegionMappingFields) -> Result<Self, String> {
        let page_size = match (f.page_size, f.page_size_kib) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "page_size {a} and page_size_kib {b} disagree (both are bytes)"
                ))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => UNNAMED_PAGE_SIZE,
        };
        Ok(RegionMapping {
            base_host_virt_addr: f.base_host_virt_addr,
            size: f.size,
            offset: f.offset,
            page_size,
            guest_phys_addr: f.guest_phys_addr,
        })
    }
}

/// Everything the fetch agent learns from a hand-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Always [`HANDOFF_VERSION`] for thaw's form.
    pub thaw_handoff: u32,
    pub mappings: Vec<RegionMapping>,
    /// Where the checkpoint lives (a store spec: directory, `file://`, `memory://`, `s3://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Which checkpoint to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Name of the VM, for logs and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// The digest (64 hex digits) of the manifest the VMM verified and restored the VM state
    /// from: the agent serves memory only from a manifest with this digest, whichever source
    /// gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
}

/// Why a hand-off message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    #[error("hand-off message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("hand-off message is not valid JSON: {0}")]
    Json(String),
    #[error("hand-off message must be a JSON array (Firecracker) or object (thaw), got {0}")]
    Shape(&'static str),
    #[error("unsupported thaw hand-off version {0} (this build reads {HANDOFF_VERSION})")]
    Version(u32),
    #[error("hand-off names no memory region")]
    NoRegions,
    #[error("hand-off names {0} regions, more than {MAX_REGIONS}")]
    TooManyRegions(usize),
    #[error("region {index}: {msg}")]
    Region { index: usize, msg: String },
    #[error("manifest_digest: {0}")]
    BadDigest(String),
}

impl Handoff {
    /// A thaw hand-off for these mappings.
    pub fn new(mappings: Vec<RegionMapping>) -> Handoff {
        Handoff {
            thaw_handoff: HANDOFF_VERSION,
            mappings,
            store: None,
            checkpoint: None,
            vm_id: None,
            manifest_digest: None,
        }
    }

    /// The manifest digest the hand-off pins, if any.
    pub fn digest(&self) -> Result<Option<ManifestDigest>, HandoffError> {
        self.manifest_digest
            .as_deref()
            .map(ManifestDigest::from_hex)
            .transpose()
            .map_err(|e| HandoffError::BadDigest(e.to_string()))
    }

    /// Parses either form and validates the mappings.
    pub fn parse(message: &[u8]) -> Result<Handoff, HandoffError> {
        if message.len() > MAX_MESSAGE {
            return Err(HandoffError::TooLarge(message.len()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(message).map_err(|e| HandoffError::Json(e.to_string()))?;
        let handoff = match value {
            serde_json::Value::Array(_) => {
                let mappings: Vec<RegionMapping> =
                    serde_json::from_value(value).map_err(|e| HandoffError::Json(e.to_string()))?;
                Handoff::new(mappings)
            }
            serde_json::Value::Object(ref obj) => {
                let version = obj
                    .get("thaw_handoff")
                    .and_then(|v| v.as_u64())
                    .ok_or(HandoffError::Shape("an object without \"thaw_handoff\""))?;
                if version != HANDOFF_VERSION as u64 {
                    return Err(HandoffError::Version(version.min(u32::MAX as u64) as u32));
                }
                serde_json::from_value(value).map_err(|e| HandoffError::Json(e.to_string()))?
            }
            serde_json::Value::Null => return Err(HandoffError::Shape("null")),
            serde_json::Value::Bool(_) => return Err(HandoffError::Shape("a boolean")),
            serde_json::Value::Number(_) => return Err(HandoffError::Shape("a number")),
            serde_json::Value::String(_) => return Err(HandoffError::Shape("a string")),
        };
        handoff.validate()?;
        Ok(handoff)
    }

    /// The message bytes of thaw's form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("hand-off serializes")
    }

    /// The message bytes of Firecracker's form (the mappings only).
    pub fn encode_firecracker(&self) -> Vec<u8> {
        let plain: Vec<RegionMapping> = self
            .mappings
            .iter()
            .map(|m| RegionMapping {
                guest_phys_addr: None,
                ..*m
            })
            .collect();
        serde_json::to_vec(&plain).expect("mappings serialize")
    }

    /// Checks sizes, alignment and that neither host ranges nor memory offsets overlap.
    pub fn validate(&self) -> Result<(), HandoffError> {
        if self.mappings.is_empty() {
            return Err(HandoffError::NoRegions);
        }
        if self.mappings.len() > MAX_REGIONS {
            return Err(HandoffError::TooManyRegions(self.mappings.len()));
        }
        self.digest()?;
        let bad = |index: usize, msg: String| HandoffError::Region { index, msg };
        for (i, m) in self.mappings.iter().enumerate() {
            if m.page_size < 4096 || !m.page_size.is_power_of_two() {
                return Err(bad(
                    i,
                    format!("page size {} is not a power of two >= 4096", m.page_size),
                ));
            }
            if m.size == 0 || m.size % m.page_size != 0 {
                return Err(bad(
                    i,
                    format!(
                        "size {} is not a positive multiple of the page size",
                        m.size
                    ),
                ));
            }
            if m.base_host_virt_addr % m.page_size != 0 || m.offset % m.page_size != 0 {
                return Err(bad(i, "address or offset not page aligned".into()));
            }
            if m.base_host_virt_addr.checked_add(m.size).is_none()
                || m.offset.checked_add(m.size).is_none()
            {
                return Err(bad(i, "range overflows".into()));
            }
            for (j, o) in self.mappings[..i].iter().enumerate() {
                let overlap = |a: u64, b: u64| a < b + o.size && b < a + m.size;
                if overlap(m.base_host_virt_addr, o.base_host_virt_addr) {
                    return Err(bad(i, format!("host range overlaps region {j}")));
                }
                if overlap(m.offset, o.offset) {
                    return Err(bad(i, format!("memory offset range overlaps region {j}")));
                }
            }
        }
        Ok(())
    }

    /// The region holding host address `addr`, and `addr`'s byte offset in the concatenated
    /// guest memory.
    pub fn locate(&self, addr: u64) -> Option<(usize, u64)> {
        self.mappings.iter().enumerate().find_map(|(i, m)| {
            (addr >= m.base_host_virt_addr && addr - m.base_host_virt_addr < m.size)
                .then(|| (i, m.offset + (addr - m.base_host_virt_addr)))
        })
    }

    /// The region holding byte `offset` of the concatenated guest memory.
    pub fn region_at(&self, offset: u64) -> Option<&RegionMapping> {
        self.mappings
            .iter()
            .find(|m| offset >= m.offset && offset - m.offset < m.size)
    }

    /// Total bytes of guest memory handed off.
    pub fn memory_bytes(&self) -> u64 {
        self.mappings.iter().map(|m| m.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thaw() -> Handoff {
        let mut h = Handoff::new(vec![
            RegionMapping {
                base_host_virt_addr: 0x7f00_0000_0000,
                size: 0xc000_0000,
                offset: 0,
                page_size: 4096,
                guest_phys_addr: Some(0),
            },
            RegionMapping {
                base_host_virt_addr: 0x7e00_0000_0000,
                size: 0x4000_0000,
                offset: 0xc000_0000,
                page_size: 4096,
                guest_phys_addr: Some(0x1_0000_0000),
            },
        ]);
        h.store = Some("/var/lib/thaw".into());
        h.checkpoint = Some("abc".into());
        h
    }

    #[test]
    fn thaw_form_round_trips() {
        let h = thaw();
        assert_eq!(Handoff::parse(&h.encode()).unwrap(), h);
    }

    #[test]
    fn a_pinned_manifest_digest_round_trips_and_a_bad_one_is_refused() {
        let mut h = thaw();
        assert_eq!(h.digest().unwrap(), None);
        let digest = ManifestDigest::of(b"a manifest");
        h.manifest_digest = Some(digest.to_hex());
        let back = Handoff::parse(&h.encode()).unwrap();
        assert_eq!(back.digest().unwrap(), Some(digest));
        h.manifest_digest = Some("12ab".into());
        assert!(matches!(
            Handoff::parse(&h.encode()),
            Err(HandoffError::BadDigest(_))
        ));
    }

    #[test]
    fn firecracker_array_is_accepted() {
        let msg = br#"[{"base_host_virt_addr":140737488355328,"size":268435456,"offset":0,"page_size":4096}]"#;
        let h = Handoff::parse(msg).unwrap();
        assert_eq!(h.mappings.len(), 1);
        assert_eq!(h.mappings[0].size, 256 << 20);
        assert_eq!(h.store, None);
        // Older Firecrackers: page_size_kib holding bytes.
        let old = br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]"#;
        assert_eq!(Handoff::parse(old).unwrap().mappings[0].page_size, 4096);
        // Our own Firecracker-form encoding parses back to the same mappings.
        let fc = Handoff::parse(&thaw().encode_firecracker()).unwrap();
        assert_eq!(fc.mappings[1].offset, 0xc000_0000);
        assert_eq!(fc.mappings[1].guest_phys_addr, None);
    }

    #[test]
    fn locate_maps_host_addresses_to_memory_offsets() {
        let h = thaw();
        assert_eq!(h.locate(0x7f00_0000_1234), Some((0, 0x1234)));
        assert_eq!(h.locate(0x7e00_0000_0000 + 4096), Some((1, 0xc000_1000)));
        assert_eq!(h.locate(0x7f00_0000_0000 + 0xc000_0000), None);
        assert_eq!(h.memory_bytes(), 4 << 30);
    }

    #[test]
    fn bad_input_is_refused() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "not valid JSON"),
            (b"42", "a number"),
            (b"[]", "no memory region"),
            (br#"{"mappings":[]}"#, "thaw_handoff"),
            (br#"{"thaw_handoff":9,"mappings":[]}"#, "version 9"),
            (
                br#"[{"base_host_virt_addr":4096,"size":100,"offset":0,"page_size":4096}]"#,
                "multiple",
            ),
            (
                br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":3000}]"#,
                "power of two",
            ),
            (
                br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},
                    {"base_host_virt_addr":8192,"size":4096,"offset":8192,"page_size":4096}]"#,
                "host range overlaps",
            ),
            (
                br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},
                    {"base_host_virt_addr":65536,"size":4096,"offset":4096,"page_size":4096}]"#,
                "offset range overlaps",
            ),
        ];
        for (msg, want) in cases {
            let err = Handoff::parse(msg).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(msg)
            );
        }
        let big = vec![b' '; MAX_MESSAGE + 1];
        assert_eq!(
            Handoff::parse(&big),
            Err(HandoffError::TooLarge(MAX_MESSAGE + 1))
        );
    }

    /// Firecracker's hand-off across its versions: 1.12 and later send the page size twice,
    /// 1.7 to 1.11 under one name or the other, 1.6 and older not at all (4 KiB pages).
    #[test]
    fn every_firecracker_spelling_of_the_page_size_parses() {
        let region = |page: &str| {
            format!(
                r#"[{{"base_host_virt_addr": 139637976727552, "size": 2097152, "offset": 0{page}}}]"#
            )
        };
        for (page, expected) in [
            (
                r#", "page_size": 2097152, "page_size_kib": 2097152"#,
                2097152,
            ),
            (r#", "page_size": 4096"#, 4096),
            (r#", "page_size_kib": 4096"#, 4096),
            ("", 4096),
        ] {
            let h =
                Handoff::parse(region(page).as_bytes()).unwrap_or_else(|e| panic!("{page}: {e}"));
            assert_eq!(h.mappings[0].page_size, expected, "{page}");
        }
        let err =
            Handoff::parse(region(r#", "page_size": 4096, "page_size_kib": 2097152"#).as_bytes())
                .unwrap_err()
                .to_string();
        assert!(err.contains("disagree"), "{err}");
    }

    /// The exact bytes each Firecracker version sends: `serde_json::to_string` of its
    /// `Vec<GuestRegionUffdMapping>` (fields in declaration order, compact). Two regions as on
    /// x86 with more than 3 GiB: RAM below the PCI hole, then above 4 GiB, the second at the
    /// first's size in the memory file.
    #[test]
    fn firecracker_fixtures_of_every_version_parse() {
        let fixtures: [(&str, &[u8], u64); 4] = [
            (
                "1.6 and older: no page size",
                br#"[{"base_host_virt_addr":140028688412672,"size":3221225472,"offset":0},{"base_host_virt_addr":140024393445376,"size":1073741824,"offset":3221225472}]"#,
                4096,
            ),
            (
                "1.7 to 1.11: page_size_kib holding bytes",
                br#"[{"base_host_virt_addr":140028688412672,"size":3221225472,"offset":0,"page_size_kib":4096},{"base_host_virt_addr":140024393445376,"size":1073741824,"offset":3221225472,"page_size_kib":4096}]"#,
                4096,
            ),
            (
                "1.12 and later: both keys",
                br#"[{"base_host_virt_addr":140028688412672,"size":3221225472,"offset":0,"page_size":4096,"page_size_kib":4096},{"base_host_virt_addr":140024393445376,"size":1073741824,"offset":3221225472,"page_size":4096,"page_size_kib":4096}]"#,
                4096,
            ),
            (
                "1.12 and later on hugetlbfs",
                br#"[{"base_host_virt_addr":140028686630912,"size":3221225472,"offset":0,"page_size":2097152,"page_size_kib":2097152},{"base_host_virt_addr":140024391663616,"size":1073741824,"offset":3221225472,"page_size":2097152,"page_size_kib":2097152}]"#,
                2 << 20,
            ),
        ];
        for (what, msg, page) in fixtures {
            let h = Handoff::parse(msg).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(h.mappings.len(), 2, "{what}");
            assert!(h.mappings.iter().all(|m| m.page_size == page), "{what}");
            assert_eq!(h.memory_bytes(), 4 << 30, "{what}");
            // The second region's first byte is byte 3 GiB of the memory file.
            let second = h.mappings[1].base_host_virt_addr;
            assert_eq!(h.locate(second), Some((1, 3 << 30)), "{what}");
            assert_eq!(h.store, None, "{what}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored_in_both_forms() {
        let fc = br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4096,"numa_node":0}]"#;
        assert_eq!(Handoff::parse(fc).unwrap().mappings[0].size, 8192);
        let thaw = br#"{"thaw_handoff":1,"future_key":[1,2],"mappings":[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"flags":"x"}]}"#;
        assert_eq!(Handoff::parse(thaw).unwrap().mappings[0].offset, 0);
    }

    #[test]
    fn inconsistent_firecracker_regions_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            // 2 MiB pages but a size of 2 MiB + 4 KiB.
            (
                br#"[{"base_host_virt_addr":2097152,"size":2101248,"offset":0,"page_size":2097152,"page_size_kib":2097152}]"#,
                "multiple of the page size",
            ),
            // A huge-page region at an address that is not huge-page aligned.
            (
                br#"[{"base_host_virt_addr":4096,"size":2097152,"offset":0,"page_size":2097152,"page_size_kib":2097152}]"#,
                "not page aligned",
            ),
            // Two regions whose places in the memory file overlap.
            (
                br#"[{"base_host_virt_addr":1048576,"size":65536,"offset":0,"page_size":4096,"page_size_kib":4096},{"base_host_virt_addr":16777216,"size":65536,"offset":32768,"page_size":4096,"page_size_kib":4096}]"#,
                "offset range overlaps region 0",
            ),
            // The same host memory handed off twice.
            (
                br#"[{"base_host_virt_addr":1048576,"size":65536,"offset":0,"page_size":4096,"page_size_kib":4096},{"base_host_virt_addr":1081344,"size":65536,"offset":65536,"page_size":4096,"page_size_kib":4096}]"#,
                "host range overlaps region 0",
            ),
            (
                br#"[{"base_host_virt_addr":1048576,"size":65536,"offset":0,"page_size":4096,"page_size_kib":2097152}]"#,
                "disagree",
            ),
            (
                br#"[{"base_host_virt_addr":1048576,"size":65536,"offset":0,"page_size":"4096"}]"#,
                "invalid type",
            ),
            (br#"[{"size":65536,"offset":0,"page_size":4096}]"#, "base_host_virt_addr"),
        ];
        for (msg, want) in cases {
            let err = Handoff::parse(msg).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(msg)
            );
        }
    }
}
