//! ICMP echo and timestamp messages (RFC 792): building requests and reading replies, without I/O.
//!
//! A timestamp reply carries the answering host's wall clock as milliseconds since midnight UT,
//! which is how a guest's clock is read from outside without any user space in the guest.

use std::time::{SystemTime, UNIX_EPOCH};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const TIMESTAMP_REQUEST: u8 = 13;
const TIMESTAMP_REPLY: u8 = 14;
/// Milliseconds in a day: timestamps wrap at midnight UT.
pub const DAY_MS: u32 = 86_400_000;

/// A packet that is not an ICMP reply this module reads.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IcmpError {
    #[error("{len}-byte packet is too short for {what}")]
    TooShort { len: usize, what: &'static str },
    #[error("not IPv4 (version {0})")]
    NotIpv4(u8),
    #[error("IP header length {0} is not valid")]
    BadHeaderLength(usize),
    #[error("ICMP checksum mismatch")]
    Checksum,
    #[error("timestamp {0:#x} is not milliseconds since midnight UT (high bit set or past a day)")]
    NonStandardTime(u32),
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn message(kind: u8, id: u16, seq: u16, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(body);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An echo request carrying `payload`.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    message(ECHO_REQUEST, id, seq, payload)
}

/// A timestamp request sent at `originate` (milliseconds since midnight UT).
pub fn timestamp_request(id: u16, seq: u16, originate: u32) -> Vec<u8> {
    let mut body = originate.to_be_bytes().to_vec();
    body.extend_from_slice(&[0; 8]);
    message(TIMESTAMP_REQUEST, id, seq, &body)
}

/// A reply read off a raw socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Echo {
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
    Timestamp {
        id: u16,
        seq: u16,
        originate: u32,
        /// When the answering host received the request, by its clock.
        receive: u32,
        /// When it sent the reply, by its clock.
        transmit: u32,
    },
    /// Any other ICMP message (a raw socket sees every one, our own requests on loopback too).
    Other {
        kind: u8,
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn standard_time(t: u32) -> Result<u32, IcmpError> {
    if t >= DAY_MS {
        return Err(IcmpError::NonStandardTime(t));
    }
    Ok(t)
}

/// Reads an IPv4 packet holding an ICMP message, as a raw ICMP socket delivers it.
pub fn parse_reply(packet: &[u8]) -> Result<Reply, IcmpError> {
    if packet.len() < 20 {
        return Err(IcmpError::TooShort {
            len: packet.len(),
            what: "an IPv4 header",
        });
    }
    if packet[0] >> 4 != 4 {
        return Err(IcmpError::NotIpv4(packet[0] >> 4));
    }
    let ihl = usize::from(packet[0] & 0xf) * 4;
    if ihl < 20 || ihl > packet.len() {
        return Err(IcmpError::BadHeaderLength(ihl));
    }
    let icmp = &packet[ihl..];
    if icmp.len() < 8 {
        return Err(IcmpError::TooShort {
            len: icmp.len(),
            what: "an ICMP header",
        });
    }
    if checksum(icmp) != 0 {
        return Err(IcmpError::Checksum);
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    match icmp[0] {
        ECHO_REPLY => Ok(Reply::Echo {
            id,
            seq,
            payload: icmp[8..].to_vec(),
        }),
        TIMESTAMP_REPLY => {
            if icmp.len() < 20 {
                return Err(IcmpError::TooShort {
                    len: icmp.len(),
                    what: "an ICMP timestamp reply",
                });
            }
            Ok(Reply::Timestamp {
                id,
                seq,
                originate: be32(&icmp[8..]),
                receive: standard_time(be32(&icmp[12..]))?,
                transmit: standard_time(be32(&icmp[16..]))?,
            })
        }
        kind => Ok(Reply::Other { kind }),
    }
}

/// `t` as milliseconds since midnight UT.
pub fn ms_since_midnight(t: SystemTime) -> u32 {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    (ms % u128::from(DAY_MS)) as u32
}

/// How far the answering host's clock is ahead of ours (negative: behind), from a timestamp
/// exchange: our clock at sending and at receiving, its clock at receiving and at answering
/// (NTP's offset estimate, which assumes the two directions take equally long). Midnight wrap is
/// taken into account: the result is within half a day.
pub fn clock_offset_ms(sent: u32, received: u32, their_receive: u32, their_transmit: u32) -> i64 {
    let wrap = |d: i64| {
        let day = i64::from(DAY_MS);
        (d + day / 2).rem_euclid(day) - day / 2
    };
    let outbound = wrap(i64::from(their_receive) - i64::from(sent));
    let inbound = wrap(i64::from(their_transmit) - i64::from(received));
    (outbound + inbound) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header (no options) in front of `icmp`.
    fn ip(icmp: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        p.extend_from_slice(icmp);
        p
    }

    #[test]
    fn checksum_matches_rfc_1071_example_and_verifies_to_zero() {
        // RFC 1071's example words sum to 0xddf2 (one's complement): checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), 0x220d);
        let m = echo_request(7, 1, b"odd");
        assert_eq!(checksum(&m), 0, "a message with its checksum sums to zero");
    }

    #[test]
    fn replies_are_read_and_checked() {
        let mut echo = echo_request(7, 3, b"thaw");
        echo[0] = ECHO_REPLY;
        echo[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(&echo);
        echo[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            parse_reply(&ip(&echo)).unwrap(),
            Reply::Echo {
                id: 7,
                seq: 3,
                payload: b"thaw".to_vec()
            }
        );
        let mut body = 1000u32.to_be_bytes().to_vec();
        body.extend_from_slice(&2000u32.to_be_bytes());
        body.extend_from_slice(&2001u32.to_be_bytes());
        let ts = message(TIMESTAMP_REPLY, 9, 4, &body);
        assert_eq!(
            parse_reply(&ip(&ts)).unwrap(),
            Reply::Timestamp {
                id: 9,
                seq: 4,
                originate: 1000,
                receive: 2000,
                transmit: 2001
            }
        );
        let req = timestamp_request(9, 4, 5);
        assert_eq!(
            parse_reply(&ip(&req)).unwrap(),
            Reply::Other {
                kind: TIMESTAMP_REQUEST
            }
        );
    }

    #[test]
    fn bad_packets_are_refused_with_the_reason() {
        let mut ts = ip(&timestamp_request(1, 1, 5));
        let n = ts.len();
        ts[n - 1] ^= 1;
        assert_eq!(parse_reply(&ts), Err(IcmpError::Checksum));
        assert!(matches!(
            parse_reply(&[0x45; 10]),
            Err(IcmpError::TooShort { .. })
        ));
        let mut v6 = ip(&echo_request(1, 1, b""));
        v6[0] = 0x65;
        assert_eq!(parse_reply(&v6), Err(IcmpError::NotIpv4(6)));
        let mut long_ihl = ip(&echo_request(1, 1, b""));
        long_ihl[0] = 0x4f;
        assert_eq!(parse_reply(&long_ihl), Err(IcmpError::BadHeaderLength(60)));
        let mut body = 1u32.to_be_bytes().to_vec();
        body.extend_from_slice(&0x8000_0001u32.to_be_bytes());
        body.extend_from_slice(&2u32.to_be_bytes());
        let nonstandard = message(TIMESTAMP_REPLY, 1, 1, &body);
        assert_eq!(
            parse_reply(&ip(&nonstandard)),
            Err(IcmpError::NonStandardTime(0x8000_0001))
        );
    }

    #[test]
    fn clock_offset_is_symmetric_and_wraps_at_midnight() {
        // They are 500 ms ahead, each direction takes 10 ms.
        assert_eq!(clock_offset_ms(1000, 1020, 1510, 1510), 500);
        // They are 300 ms behind.
        assert_eq!(clock_offset_ms(1000, 1020, 710, 710), -300);
        // We sent just before midnight, they answered just after, both in step.
        assert_eq!(clock_offset_ms(DAY_MS - 5, 5, 0, 0), 0);
        // They are a second behind across midnight.
        assert_eq!(clock_offset_ms(500, 500, DAY_MS - 500, DAY_MS - 500), -1000);
    }
}
