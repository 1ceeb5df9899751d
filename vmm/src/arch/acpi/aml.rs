//! A minimal AML (ACPI Machine Language) encoder: just the terms thaw's DSDT uses (names,
//! integers, strings, buffers, packages, scopes, devices, methods, `If`/`LEqual`, `Notify`,
//! `Return`). Each function returns the term's encoded bytes; callers concatenate them.
//!
//! Encodings follow the ACPI specification, chapter 20 ("ACPI Machine Language Specification").

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const METHOD_OP: u8 = 0x14;
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const ROOT_CHAR: u8 = b'\\';
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ARG0_OP: u8 = 0x68;
const NOTIFY_OP: u8 = 0x86;
const LEQUAL_OP: u8 = 0x93;
const IF_OP: u8 = 0xa0;
const RETURN_OP: u8 = 0xa4;

/// A PkgLength (20.2.4) for `body_len` bytes that follow it: the encoded length counts its own
/// bytes too. One byte up to 63, else a lead byte with the count of following bytes.
fn pkg_length(body_len: usize) -> Vec<u8> {
    for extra in 0..4usize {
        let total = body_len + 1 + extra;
        let fits = match extra {
            0 => total < 0x40,
            n => total < 1 << (4 + 8 * n),
        };
        if fits {
            if extra == 0 {
                return vec![total as u8];
            }
            let mut out = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            for i in 0..extra {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return out;
        }
    }
    panic!("AML package of {body_len} bytes is over the 256 MiB PkgLength limit");
}

/// `op`, PkgLength, body.
fn with_pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// One 4-character name segment, padded with `_` as ASL does.
fn name_seg(seg: &str) -> [u8; 4] {
    assert!(
        !seg.is_empty()
            && seg.len() <= 4
            && seg
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !seg.as_bytes()[0].is_ascii_digit(),
        "{seg:?} is not an AML name segment"
    );
    let mut out = [b'_'; 4];
    out[..seg.len()].copy_from_slice(seg.as_bytes());
    out
}

/// A NameString: `\A.B.C` (rooted) or `A.B` (relative), segments of up to four characters.
///
/// # Panics
/// On a malformed name: the DSDT's names are fixed in code, so that is a bug.
pub(crate) fn name(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let rel = match path.strip_prefix('\\') {
        Some(rest) => {
            out.push(ROOT_CHAR);
            rest
        }
        None => path,
    };
    let segs: Vec<[u8; 4]> = rel.split('.').map(name_seg).collect();
    match segs.len() {
        1 => {}
        2 => out.push(DUAL_NAME_PREFIX),
        n => {
            out.push(MULTI_NAME_PREFIX);
            out.push(n as u8);
        }
    }
    for s in segs {
        out.extend_from_slice(&s);
    }
    out
}

/// An integer constant in its smallest encoding.
pub(crate) fn int(v: u64) -> Vec<u8> {
    match v {
        0 => vec![ZERO_OP],
        1 => vec![ONE_OP],
        2..=0xff => vec![BYTE_PREFIX, v as u8],
        0x100..=0xffff => {
            let mut o = vec![WORD_PREFIX];
            o.extend((v as u16).to_le_bytes());
            o
        }
        0x1_0000..=0xffff_ffff => {
            let mut o = vec![DWORD_PREFIX];
            o.extend((v as u32).to_le_bytes());
            o
        }
        _ => {
            let mut o = vec![QWORD_PREFIX];
            o.extend(v.to_le_bytes());
            o
        }
    }
}

/// A string constant (ASCII, no NUL inside).
pub(crate) fn string(s: &str) -> Vec<u8> {
    assert!(
        s.is_ascii() && !s.contains('\0'),
        "{s:?} is not an AML string"
    );
    let mut o = vec![STRING_PREFIX];
    o.extend_from_slice(s.as_bytes());
    o.push(0);
    o
}

/// `Buffer () { bytes }`.
pub(crate) fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = int(bytes.len() as u64);
    body.extend_from_slice(bytes);
    with_pkg(&[BUFFER_OP], &body)
}

/// `Package () { elements }` (each already encoded).
pub(crate) fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    assert!(
        elements.len() <= 0xff,
        "AML package of {} elements",
        elements.len()
    );
    let mut body = vec![elements.len() as u8];
    for e in elements {
        body.extend_from_slice(e);
    }
    with_pkg(&[PACKAGE_OP], &body)
}

/// `Name (path, value)`.
pub(crate) fn name_decl(path: &str, value: &[u8]) -> Vec<u8> {
    let mut o = vec![NAME_OP];
    o.extend(name(path));
    o.extend_from_slice(value);
    o
}

/// `Scope (path) { terms }`.
pub(crate) fn scope(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name(path);
    body.extend(terms.concat());
    with_pkg(&[SCOPE_OP], &body)
}

/// `Device (path) { terms }`.
pub(crate) fn device(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name(path);
    body.extend(terms.concat());
    with_pkg(&[EXT_OP_PREFIX, DEVICE_OP], &body)
}

/// `Method (path, args, NotSerialized) { terms }`.
pub(crate) fn method(path: &str, args: u8, terms: &[Vec<u8>]) -> Vec<u8> {
    assert!(args <= 7, "AML methods take at most 7 arguments");
    let mut body = name(path);
    body.push(args);
    body.extend(terms.concat());
    with_pkg(&[METHOD_OP], &body)
}

/// `Return (value)`.
pub(crate) fn return_(value: &[u8]) -> Vec<u8> {
    let mut o = vec![RETURN_OP];
    o.extend_from_slice(value);
    o
}

/// `Notify (path, value)`.
pub(crate) fn notify(path: &str, value: u64) -> Vec<u8> {
    let mut o = vec![NOTIFY_OP];
    o.extend(name(path));
    o.extend(int(value));
    o
}

/// `Arg0`.
pub(crate) fn arg0() -> Vec<u8> {
    vec![ARG0_OP]
}

/// `LEqual (a, b)`.
pub(crate) fn lequal(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut o = vec![LEQUAL_OP];
    o.extend_from_slice(a);
    o.extend_from_slice(b);
    o
}

/// `If (predicate) { terms }`.
pub(crate) fn if_(predicate: &[u8], terms: &[Vec<u8>]) -> Vec<u8> {
    let mut body = predicate.to_vec();
    body.extend(terms.concat());
    with_pkg(&[IF_OP], &body)
}

/// A resource template (`ResourceTemplate () { ... }` as a buffer) holding one extended
/// interrupt descriptor (6.4.3.6): consumer, edge-triggered, active-high, exclusive, on `gsi`;
/// then the end tag.
pub(crate) fn interrupt_resource(gsi: u32) -> Vec<u8> {
    const EXTENDED_IRQ: u8 = 0x89;
    const CONSUMER: u8 = 1 << 0;
    const EDGE: u8 = 1 << 1;
    let mut r = vec![EXTENDED_IRQ, 6, 0, CONSUMER | EDGE, 1];
    r.extend(gsi.to_le_bytes());
    // End tag; a zero checksum byte means "treat as correct".
    r.extend([0x79, 0]);
    buffer(&r)
}

/// A resource template with a 32-bit fixed memory range (6.4.3.4, read-write) of `len` bytes at
/// `base` and an extended interrupt descriptor (consumer, edge-triggered, active-high,
/// exclusive) on `gsi`: a virtio-mmio device's window and its interrupt.
pub(crate) fn mmio_interrupt_resource(base: u32, len: u32, gsi: u32) -> Vec<u8> {
    const MEMORY32_FIXED: u8 = 0x86;
    const READ_WRITE: u8 = 1;
    const EXTENDED_IRQ: u8 = 0x89;
    const CONSUMER: u8 = 1 << 0;
    const EDGE: u8 = 1 << 1;
    let mut r = vec![MEMORY32_FIXED, 9, 0, READ_WRITE];
    r.extend(base.to_le_bytes());
    r.extend(len.to_le_bytes());
    r.extend([EXTENDED_IRQ, 6, 0, CONSUMER | EDGE, 1]);
    r.extend(gsi.to_le_bytes());
    r.extend([0x79, 0]);
    buffer(&r)
}

/// A resource template with an I/O port range (6.4.2.5: 16-bit decode, fixed at `port`, `len`
/// ports) and an extended interrupt descriptor (consumer, edge-triggered, active-high,
/// exclusive) on `gsi`: a legacy device such as the CMOS clock, whose IRQ a hardware-reduced
/// ACPI guest knows only from here.
pub(crate) fn io_interrupt_resource(port: u16, len: u8, gsi: u32) -> Vec<u8> {
    const IO_PORT: u8 = 0x47;
    const DECODE_16: u8 = 1;
    const EXTENDED_IRQ: u8 = 0x89;
    const CONSUMER: u8 = 1 << 0;
    const EDGE: u8 = 1 << 1;
    let mut r = vec![IO_PORT, DECODE_16];
    r.extend(port.to_le_bytes());
    r.extend(port.to_le_bytes());
    r.extend([1, len]);
    r.extend([EXTENDED_IRQ, 6, 0, CONSUMER | EDGE, 1]);
    r.extend(gsi.to_le_bytes());
    r.extend([0x79, 0]);
    buffer(&r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_interrupt_resources_are_laid_out_as_the_spec_says() {
        let b = io_interrupt_resource(0x70, 2, 8);
        // Buffer op, length, size 19, then the descriptors.
        assert_eq!(&b[b.len() - 21..b.len() - 19], &[0x0a, 19]);
        let body = &b[b.len() - 19..];
        assert_eq!(&body[..8], &[0x47, 1, 0x70, 0, 0x70, 0, 1, 2]);
        assert_eq!(&body[8..17], &[0x89, 6, 0, 3, 1, 8, 0, 0, 0]);
        assert_eq!(&body[17..19], &[0x79, 0]);
    }

    #[test]
    fn package_lengths_use_the_fewest_bytes_and_count_themselves() {
        assert_eq!(pkg_length(0), vec![1]);
        assert_eq!(pkg_length(62), vec![63]);
        // 63 body bytes + 2 length bytes = 65 = 0x41: lead 0x41 (1 extra byte, low nibble 1), 0x04.
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0xffd), vec![0x4f, 0xff]);
        assert_eq!(pkg_length(0xffe), vec![0x81, 0x00, 0x01]);
    }

    #[test]
    fn names_integers_and_strings_encode_as_the_spec_says() {
        assert_eq!(name("_SB"), b"_SB_".to_vec());
        assert_eq!(name("\\_SB.VGEN"), b"\\\x2e_SB_VGEN".to_vec());
        assert_eq!(name("\\A.B.C"), b"\\\x2f\x03A___B___C___".to_vec());
        assert_eq!(int(0), vec![0]);
        assert_eq!(int(1), vec![1]);
        assert_eq!(int(9), vec![0x0a, 9]);
        assert_eq!(int(0x1234), vec![0x0b, 0x34, 0x12]);
        assert_eq!(int(0xfeb0_0000), vec![0x0c, 0, 0, 0xb0, 0xfe]);
        assert_eq!(int(1 << 32)[0], 0x0e);
        assert_eq!(string("AB"), vec![0x0d, b'A', b'B', 0]);
    }

    #[test]
    fn a_method_that_notifies_encodes_like_iasl_output() {
        // Method (_EVT, 1) { If (LEqual (Arg0, 9)) { Notify (\_SB.VGEN, 0x80) } }
        let m = method(
            "_EVT",
            1,
            &[if_(
                &lequal(&arg0(), &int(9)),
                &[notify("\\_SB.VGEN", 0x80)],
            )],
        );
        let expected: Vec<u8> = [
            &[0x14, 0x19][..],
            b"_EVT",
            &[0x01, 0xa0, 0x12, 0x93, 0x68, 0x0a, 0x09, 0x86],
            b"\\\x2e_SB_VGEN",
            &[0x0a, 0x80],
        ]
        .concat();
        assert_eq!(m, expected);
    }

    #[test]
    #[should_panic(expected = "not an AML name segment")]
    fn a_bad_name_is_a_bug() {
        name("toolong");
    }
}
