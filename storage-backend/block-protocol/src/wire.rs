//! The block protocol spoken over QUIC between fetch agents and block
//! servers, free of I/O.
//!
//! One request per bidirectional stream: the client writes a request and
//! finishes its side; the server answers with a header and a payload, then
//! finishes. A stream per request gives independent flow control and lets
//! QUIC stream priorities put demand fetches ahead of prefetch traffic,
//! with no head-of-line blocking between blocks.
//!
//! ```text
//! request   version u8 | kind u8 | priority u8 | id length u8 | id bytes | block u32 LE
//! response  version u8 | status u8 | payload length u64 LE | payload
//! ```
//! A block payload is the block's *stored* bytes (compressed as in the
//! checkpoint); the client decodes and checks them against the manifest's
//! hash, so a server or cache can never hand it bad data undetected. A
//! manifest payload is the manifest's encoded bytes; an error payload is a
//! UTF-8 message.

use thaw_format::{CheckpointId, FormatError, MAX_MANIFEST_BYTES};

pub const VERSION: u8 = 1;
/// TLS ALPN identifier of the protocol.
pub const ALPN: &[u8] = b"thaw-blocks/1";
/// Longest request: header, a 128-byte id and the block index.
pub const MAX_REQUEST_LEN: usize = 4 + 128 + 4;
pub const RESPONSE_HEADER_LEN: usize = 10;
/// Largest payload a client accepts (a manifest at its size limit).
pub const MAX_PAYLOAD_LEN: u64 = MAX_MANIFEST_BYTES;

/// Trace events marking where a block request is on its way, for timing the
/// legs of a fetch (`thaw-bench restore --hop-timings`). Both ends emit them
/// at TRACE level under [`hop::TARGET`], with the fields `hop` (one of the
/// names below), `block` and `priority` (the wire value); off, they cost a
/// disabled-callsite check.
pub mod hop {
    pub const TARGET: &str = "thaw::hop";
    /// The client hands the request to its QUIC stream.
    pub const REQUEST_SENT: &str = "request_sent";
    /// The server read and decoded the whole request.
    pub const REQUEST_RECEIVED: &str = "request_received";
    /// The server hands the answer to its QUIC stream.
    pub const RESPONSE_SENT: &str = "response_sent";
    /// The client read the whole answer.
    pub const RESPONSE_RECEIVED: &str = "response_received";

    /// Emits the mark `hop` (one of the names above) for a request of
    /// `block` at `priority` (its wire value).
    #[inline]
    pub fn mark(hop: &'static str, block: u32, priority: u8) {
        tracing::trace!(target: TARGET, hop, block, priority);
    }
}

/// Who is waiting for a fetch: a faulting vCPU, a prefetch, or background
/// streaming. Maps to QUIC stream priorities (higher is sent first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Background = 0,
    Prefetch = 1,
    Demand = 2,
}

impl Priority {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Background),
            1 => Some(Self::Prefetch),
            2 => Some(Self::Demand),
            _ => None,
        }
    }

    /// The QUIC stream priority for this class.
    pub fn stream_priority(self) -> i32 {
        self as i32
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Block {
        checkpoint: CheckpointId,
        block: u32,
        priority: Priority,
    },
    Manifest {
        checkpoint: CheckpointId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadRequest = 2,
    /// The server could not read the store (or the data there is corrupt).
    Unavailable = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub status: Status,
    pub len: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("block protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("message truncated: {0}")]
    Truncated(&'static str),
    #[error("unknown request kind {0}")]
    UnknownKind(u8),
    #[error("unknown priority {0}")]
    UnknownPriority(u8),
    #[error("unknown response status {0}")]
    UnknownStatus(u8),
    #[error("request has {0} unexpected trailing bytes")]
    Trailing(usize),
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge { len: u64, max: u64 },
    #[error("bad checkpoint id: {0}")]
    BadId(#[from] FormatError),
}

const KIND_BLOCK: u8 = 1;
const KIND_MANIFEST: u8 = 2;

pub fn encode_request(req: &Request) -> Vec<u8> {
    let (kind, priority, id, block) = match req {
        Request::Block {
            checkpoint,
            block,
            priority,
        } => (KIND_BLOCK, *priority, checkpoint, *block),
        Request::Manifest { checkpoint } => (KIND_MANIFEST, Priority::Demand, checkpoint, 0),
    };
    let id = id.as_str().as_bytes();
    let mut out = Vec::with_capacity(4 + id.len() + 4);
    out.extend_from_slice(&[VERSION, kind, priority as u8, id.len() as u8]);
    out.extend_from_slice(id);
    out.extend_from_slice(&block.to_le_bytes());
    out
}

pub fn decode_request(b: &[u8]) -> Result<Request, ProtocolError> {
    let [version, kind, priority, id_len, rest @ ..] = b else {
        return Err(ProtocolError::Truncated("request header"));
    };
    if *version != VERSION {
        return Err(ProtocolError::Version(*version));
    }
    let priority = Priority::from_u8(*priority).ok_or(ProtocolError::UnknownPriority(*priority))?;
    let id_len = *id_len as usize;
    if rest.len() < id_len + 4 {
        return Err(ProtocolError::Truncated("request id and block"));
    }
    if rest.len() > id_len + 4 {
        return Err(ProtocolError::Trailing(rest.len() - id_len - 4));
    }
    let id =
        std::str::from_utf8(&rest[..id_len]).map_err(|_| FormatError::NotUtf8 { field: "id" })?;
    let checkpoint = CheckpointId::new(id)?;
    let block = u32::from_le_bytes(rest[id_len..].try_into().expect("4 bytes"));
    match *kind {
        KIND_BLOCK => Ok(Request::Block {
            checkpoint,
            block,
            priority,
        }),
        KIND_MANIFEST => Ok(Request::Manifest { checkpoint }),
        k => Err(ProtocolError::UnknownKind(k)),
    }
}

pub fn encode_response_header(h: ResponseHeader) -> [u8; RESPONSE_HEADER_LEN] {
    let mut out = [0u8; RESPONSE_HEADER_LEN];
    out[0] = VERSION;
    out[1] = h.status as u8;
    out[2..].copy_from_slice(&h.len.to_le_bytes());
    out
}

pub fn decode_response_header(
    b: &[u8; RESPONSE_HEADER_LEN],
) -> Result<ResponseHeader, ProtocolError> {
    if b[0] != VERSION {
        return Err(ProtocolError::Version(b[0]));
    }
    let status = match b[1] {
        0 => Status::Ok,
        1 => Status::NotFound,
        2 => Status::BadRequest,
        3 => Status::Unavailable,
        s => return Err(ProtocolError::UnknownStatus(s)),
    };
    let len = u64::from_le_bytes(b[2..].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD_LEN {
        return Err(ProtocolError::PayloadTooLarge {
            len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    Ok(ResponseHeader { status, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> CheckpointId {
        CheckpointId::new(s).unwrap()
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::Block {
                checkpoint: id("ck-1"),
                block: 77,
                priority: Priority::Prefetch,
            },
            Request::Manifest {
                checkpoint: id("x"),
            },
        ] {
            assert_eq!(decode_request(&encode_request(&req)).unwrap(), req);
        }
    }

    #[test]
    fn bad_requests_are_named() {
        let good = encode_request(&Request::Block {
            checkpoint: id("ck"),
            block: 1,
            priority: Priority::Demand,
        });
        let mut bad = good.clone();
        bad[0] = 9;
        assert_eq!(decode_request(&bad), Err(ProtocolError::Version(9)));
        let mut bad = good.clone();
        bad[1] = 7;
        assert_eq!(decode_request(&bad), Err(ProtocolError::UnknownKind(7)));
        let mut bad = good.clone();
        bad[2] = 5;
        assert_eq!(decode_request(&bad), Err(ProtocolError::UnknownPriority(5)));
        assert!(matches!(
            decode_request(&good[..good.len() - 1]),
            Err(ProtocolError::Truncated(_))
        ));
        let mut bad = good.clone();
        bad.push(0);
        assert_eq!(decode_request(&bad), Err(ProtocolError::Trailing(1)));
        let mut bad = good;
        bad[4] = b'/';
        assert!(matches!(decode_request(&bad), Err(ProtocolError::BadId(_))));
    }

    #[test]
    fn response_headers() {
        let h = ResponseHeader {
            status: Status::Unavailable,
            len: 12345,
        };
        assert_eq!(
            decode_response_header(&encode_response_header(h)).unwrap(),
            h
        );
        let mut b = encode_response_header(ResponseHeader {
            status: Status::Ok,
            len: MAX_PAYLOAD_LEN + 1,
        });
        assert!(matches!(
            decode_response_header(&b),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
        b[1] = 44;
        assert_eq!(
            decode_response_header(&b),
            Err(ProtocolError::UnknownStatus(44))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = decode_request(&b);
        }
    }
}
