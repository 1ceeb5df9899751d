//! The manifest encoding: round trips, and each kind of bad input giving its
//! own error.

use proptest::prelude::*;
use thaw_format::{
    decode, decode_body, encode, BlockEntry, CheckpointId, Codec, FormatError, Manifest, PageOwner,
    PageRun, Region, StateBlob, VERSION,
};

fn run(start: u64, len: u64) -> PageRun {
    PageRun { start, len }
}

fn block(pages: Vec<PageRun>, offset: u64) -> BlockEntry {
    let n: u64 = pages.iter().map(|r| r.len).sum();
    BlockEntry {
        pages,
        object: 0,
        offset,
        stored_len: 100,
        raw_len: n * 4096,
        codec: Codec::Lz4,
        hash: [7; 32],
        stored_hash: Some([8; 32]),
    }
}

/// Two regions of 8 and 4 pages; pages 0-3 and 8 in blocks, the rest zero.
fn sample() -> Manifest {
    Manifest {
        id: CheckpointId::new("ck-1").unwrap(),
        created_unix_ms: 1_700_000_000_000,
        parent: Some(CheckpointId::new("ck-0").unwrap()),
        page_size: 4096,
        regions: vec![
            Region {
                guest_phys_addr: 0,
                size: 8 * 4096,
            },
            Region {
                guest_phys_addr: 1 << 32,
                size: 4 * 4096,
            },
        ],
        objects: vec!["checkpoints/ck-1/segment-000000".into()],
        blocks: vec![
            block(vec![run(2, 2), run(0, 1)], 0),
            block(vec![run(8, 1), run(1, 1)], 100),
        ],
        zero_pages: vec![run(4, 4), run(9, 3)],
        prefetch_order: vec![1, 0],
        state: StateBlob::new(b"vcpu state".to_vec()),
        encryption: None,
    }
}

#[test]
fn round_trip() {
    let m = sample();
    m.validate().unwrap();
    assert_eq!(decode(&encode(&m)).unwrap(), m);
}

#[test]
fn bad_magic_version_truncation_and_bit_flips() {
    let bytes = encode(&sample());

    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(matches!(decode(&bad), Err(FormatError::BadMagic { .. })));

    let mut bad = bytes.clone();
    bad[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert_eq!(
        decode(&bad),
        Err(FormatError::UnsupportedVersion {
            found: VERSION + 1,
            supported: VERSION
        })
    );

    for cut in [0, 5, 19, bytes.len() / 2, bytes.len() - 1] {
        let err = decode(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::TooShort { .. } | FormatError::LengthMismatch { .. }
            ),
            "cut at {cut}: {err}"
        );
    }

    // Any single flipped bit past the magic and version is caught.
    for i in 12..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 1 << (i % 8);
        assert!(decode(&bad).is_err(), "flip in byte {i} went unnoticed");
    }
}

/// Encodes a manifest without validating it first, as a buggy or hostile
/// writer would.
fn decode_modified(f: impl FnOnce(&mut Manifest)) -> FormatError {
    let mut m = sample();
    f(&mut m);
    decode(&encode(&m)).unwrap_err()
}

#[test]
fn page_outside_every_region() {
    let err = decode_modified(|m| {
        m.blocks[0].pages.push(run(12, 1));
        m.blocks[0].raw_len += 4096;
    });
    assert_eq!(
        err,
        FormatError::PageOutOfRange {
            page: 12,
            total: 12,
            owner: PageOwner::Block(0)
        }
    );
    assert!(err.to_string().contains("page 12"));
}

#[test]
fn page_in_two_places() {
    let err = decode_modified(|m| m.zero_pages.push(run(0, 1)));
    assert_eq!(
        err,
        FormatError::PageListedTwice {
            page: 0,
            first: PageOwner::ZeroPages,
            second: PageOwner::Block(0)
        }
    );
    assert_eq!(
        err.to_string(),
        "page 0 is listed twice: in the zero-page set and in block 0"
    );
}

#[test]
fn page_missing() {
    let err = decode_modified(|m| m.zero_pages[0] = run(4, 3));
    assert_eq!(err, FormatError::PageMissing { page: 7 });
}

#[test]
fn overlapping_regions() {
    let err = decode_modified(|m| m.regions[1].guest_phys_addr = 4096);
    assert_eq!(
        err,
        FormatError::RegionsOverlap {
            first: 0,
            second: 1
        }
    );
}

#[test]
fn inconsistent_sizes() {
    let err = decode_modified(|m| m.blocks[1].raw_len = 4096);
    assert!(matches!(err, FormatError::RawLenMismatch { block: 1, .. }));
    let err = decode_modified(|m| m.blocks[0].stored_len = 1 << 20);
    assert!(matches!(err, FormatError::BadStoredLen { block: 0, .. }));
    let err = decode_modified(|m| m.blocks[0].object = 3);
    assert!(matches!(
        err,
        FormatError::ObjectOutOfRange {
            block: 0,
            object: 3,
            ..
        }
    ));
    let err = decode_modified(|m| m.page_size = 3000);
    assert_eq!(err, FormatError::BadPageSize(3000));
}

#[test]
fn bad_prefetch_order_and_state() {
    let err = decode_modified(|m| m.prefetch_order = vec![1, 1]);
    assert!(matches!(err, FormatError::BadPrefetchOrder { .. }));
    let err = decode_modified(|m| m.state.bytes.push(0));
    assert_eq!(err, FormatError::StateHashMismatch);
}

#[test]
fn bad_object_key() {
    let err = decode_modified(|m| m.objects[0] = "../../etc/passwd".into());
    assert!(matches!(err, FormatError::BadObjectKey(_)));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_body(&body);
        let _ = decode(&body);
    }

    #[test]
    fn mutated_bodies_never_panic(pos in any::<prop::sample::Index>(), byte: u8, cut in any::<prop::sample::Index>()) {
        let full = encode(&sample());
        let body = &full[20..full.len() - 32];
        let mut mutated = body.to_vec();
        let i = pos.index(mutated.len());
        mutated[i] = byte;
        mutated.truncate(cut.index(mutated.len() + 1));
        if let Ok(m) = decode_body(&mutated) {
            let _ = m.validate();
        }
    }

    #[test]
    fn generated_manifests_round_trip(
        pages_per_block in 1u64..8,
        blocks in 1usize..20,
        zeros in 0u64..10,
        state in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let stored = blocks as u64 * pages_per_block;
        let m = Manifest {
            id: CheckpointId::new("p").unwrap(),
            created_unix_ms: 1,
            parent: None,
            page_size: 4096,
            regions: vec![Region { guest_phys_addr: 1 << 20, size: (stored + zeros) * 4096 }],
            objects: vec!["a/b".into()],
            blocks: (0..blocks as u64)
                .map(|b| block(vec![run(b * pages_per_block, pages_per_block)], b * 100))
                .collect(),
            zero_pages: if zeros > 0 { vec![run(stored, zeros)] } else { vec![] },
            prefetch_order: (0..blocks as u32).rev().collect(),
            state: StateBlob::new(state),
            encryption: None,
        };
        prop_assert_eq!(decode(&encode(&m)).unwrap(), m);
    }
}
