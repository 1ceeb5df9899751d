//! The emulated links of the restore benchmark, by name.
//!
//! `rack` and `region` sit between the fetch agent and the block server and
//! are emulated by a UDP relay ([`super::relay`]); `object-store` is the agent
//! reading the object store directly, emulated by [`super::slow_store`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The names [`LinkSpec::from_str`] accepts, in benchmark order.
pub const LINK_NAMES: [&str; 3] = ["rack", "region", "object-store"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkSpecError {
    #[error("unknown link {given:?}: valid links are rack, region, object-store")]
    Unknown { given: String },
    #[error("link {name:?} is not a relayed (agent to block server) link")]
    NotRelayed { name: String },
    #[error("link {name:?} is not an object-store link")]
    NotObjectStore { name: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkSpec {
    /// A network path between fetch agent and block server.
    Relayed {
        name: String,
        /// Round-trip time added by the link (half each way).
        rtt: Duration,
        /// Bottleneck rate, each direction independently.
        bandwidth_bits_per_sec: u64,
        /// Largest IP packet the path carries; larger UDP datagrams are
        /// dropped, as with the don't-fragment bit QUIC sets, so QUIC's path
        /// MTU discovery settles where it would on the real path.
        mtu_bytes: usize,
    },
    /// The fetch agent reading the object store itself.
    ObjectStore {
        name: String,
        /// Time from sending a request to its first byte.
        first_byte: Duration,
        /// Delivery rate of one request's body; requests run in parallel,
        /// each at this rate.
        per_request_bytes_per_sec: u64,
    },
}

impl LinkSpec {
    /// Same rack: 0.1 ms round trip, 10 Gbit/s, jumbo frames (9000 bytes,
    /// as data-centre racks and cloud VPCs run).
    pub fn rack() -> Self {
        Self::Relayed {
            name: "rack".into(),
            rtt: Duration::from_micros(100),
            bandwidth_bits_per_sec: 10_000_000_000,
            mtu_bytes: 9000,
        }
    }

    /// Same region, another zone: 1 ms round trip, 2.5 Gbit/s, standard
    /// 1500-byte Ethernet frames (what a path between zones can be relied on
    /// to carry).
    pub fn region() -> Self {
        Self::Relayed {
            name: "region".into(),
            rtt: Duration::from_millis(1),
            bandwidth_bits_per_sec: 2_500_000_000,
            mtu_bytes: 1500,
        }
    }

    /// S3-like: about 20 ms to first byte, 100 MB/s per request.
    pub fn object_store() -> Self {
        Self::ObjectStore {
            name: "object-store".into(),
            first_byte: Duration::from_millis(20),
            per_request_bytes_per_sec: 100_000_000,
        }
    }

    /// Every preset, in the order of [`LINK_NAMES`].
    pub fn presets() -> Vec<Self> {
        vec![Self::rack(), Self::region(), Self::object_store()]
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Relayed { name, .. } | Self::ObjectStore { name, .. } => name,
        }
    }
}

impl FromStr for LinkSpec {
    type Err = LinkSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::presets()
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| LinkSpecError::Unknown { given: s.into() })
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Relayed {
                name,
                rtt,
                bandwidth_bits_per_sec,
                mtu_bytes,
            } => write!(
                f,
                "{name} (round trip {rtt:?}, {} Gbit/s, MTU {mtu_bytes})",
                *bandwidth_bits_per_sec as f64 / 1e9
            ),
            Self::ObjectStore {
                name,
                first_byte,
                per_request_bytes_per_sec,
            } => write!(
                f,
                "{name} ({first_byte:?} to first byte, {} MB/s per request)",
                *per_request_bytes_per_sec as f64 / 1e6
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_from_their_names() {
        for name in LINK_NAMES {
            assert_eq!(name.parse::<LinkSpec>().unwrap().name(), name);
        }
        assert_eq!(
            "region".parse::<LinkSpec>().unwrap(),
            LinkSpec::Relayed {
                name: "region".into(),
                rtt: Duration::from_millis(1),
                bandwidth_bits_per_sec: 2_500_000_000,
                mtu_bytes: 1500,
            }
        );
    }

    #[test]
    fn unknown_names_are_refused_with_the_valid_ones() {
        let err = "Rack".parse::<LinkSpec>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"Rack\""), "{msg}");
        for name in LINK_NAMES {
            assert!(msg.contains(name), "{msg}");
        }
        assert!("".parse::<LinkSpec>().is_err());
    }
}
