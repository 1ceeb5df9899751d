//! The one message a fetch agent sends a VMM after the hand-off: why it is
//! about to hang up when a restore fails. A single JSON line,
//! `{"error": "..."}\n`, at most [`MAX_LINE`] bytes, written just before the
//! agent closes the connection (spec in docs/format.md). A VMM that reads it
//! stops its guest with that reason instead of a bare "agent gone"; one that
//! never reads (Firecracker) loses nothing.

use serde::{Deserialize, Serialize};

/// Longest line written; a longer reason is cut (on a character boundary).
pub const MAX_LINE: usize = 16 << 10;

#[derive(Serialize, Deserialize)]
struct Line {
    error: String,
}

/// The line that reports `reason`, newline included.
pub fn encode(reason: &str) -> Vec<u8> {
    // Room for the braces, key, quotes and escapes of the worst case: each
    // byte of the reason escaped as \u00XX (six bytes).
    let mut cut = reason.len().min((MAX_LINE - 16) / 6);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = serde_json::to_vec(&Line {
        error: reason[..cut].to_owned(),
    })
    .expect("a struct of one string always serializes");
    out.push(b'\n');
    out
}

/// The reason in what a VMM read from the connection after the hand-off:
/// `None` if it holds no complete report line (the agent died, or sent
/// something else).
pub fn parse(read: &[u8]) -> Option<String> {
    let end = read.iter().position(|&b| b == b'\n')?;
    let line: Line = serde_json::from_slice(&read[..end]).ok()?;
    Some(line.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_round_trips() {
        let line = encode("block 7 of checkpoint c1: hash mismatch \"x\"\n");
        assert!(line.len() <= MAX_LINE);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(
            parse(&line).as_deref(),
            Some("block 7 of checkpoint c1: hash mismatch \"x\"\n")
        );
    }

    #[test]
    fn a_long_reason_is_cut_to_fit() {
        let reason = "\u{1}é".repeat(MAX_LINE);
        let line = encode(&reason);
        assert!(line.len() <= MAX_LINE, "{} bytes", line.len());
        assert!(reason.starts_with(&parse(&line).unwrap()));
    }

    #[test]
    fn anything_else_is_no_report() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"{\"error\": \"no newline yet\"}"), None);
        assert_eq!(parse(b"{\"other\": 1}\n"), None);
        assert_eq!(parse(b"\xff\xfe\n"), None);
    }
}
