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
        // Small, as compressed blocks are, yet no smaller than lz4 can be.
        stored_len: (n * 4096).div_ceil(255).max(100),
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
fn stored_lengths_a_codec_cannot_produce() {
    // Raw blocks store exactly their raw bytes: a shorter one would leave the
    // decoder half a destination to fill.
    let err = decode_modified(|m| {
        m.blocks[0].codec = Codec::Raw;
        m.blocks[0].stored_len = m.blocks[0].raw_len - 1;
    });
    assert!(matches!(err, FormatError::BadStoredLen { block: 0, .. }));
    // lz4 yields at most 255 bytes per stored byte: a manifest cannot make a
    // reader allocate more than that for the bytes a store sends.
    let err = decode_modified(|m| m.blocks[0].stored_len = 3 * 4096 / 255);
    assert!(matches!(err, FormatError::BadStoredLen { block: 0, .. }));
}

/// Regions of `pages` pages, all zero pages, then `f`'s changes.
fn zero_memory(pages: u64, f: impl FnOnce(&mut Manifest)) -> Manifest {
    let mut m = sample();
    m.regions = vec![Region {
        guest_phys_addr: 0,
        size: pages * 4096,
    }];
    m.blocks.clear();
    m.prefetch_order.clear();
    m.zero_pages = vec![run(0, pages)];
    f(&mut m);
    m
}

#[test]
fn coverage_of_the_largest_memory_is_checked_by_runs_not_pages() {
    // 16 TiB of zero pages: a page bitmap would be 512 MiB. Checked by
    // runs, in a few bytes of memory (tests/bounded.rs measures it).
    let max = thaw_format::manifest::MAX_TOTAL_PAGES;
    let m = zero_memory(max, |_| {});
    assert_eq!(decode(&encode(&m)).unwrap(), m);
    let cut = zero_memory(max, |m| m.zero_pages = vec![run(0, max - 1)]);
    assert_eq!(
        decode(&encode(&cut)).unwrap_err(),
        FormatError::PageMissing { page: max - 1 }
    );
    let twice = zero_memory(max, |m| m.zero_pages.push(run(max - 1, 1)));
    assert_eq!(
        decode(&encode(&twice)).unwrap_err(),
        FormatError::PageListedTwice {
            page: max - 1,
            first: PageOwner::ZeroPages,
            second: PageOwner::ZeroPages
        }
    );
}

#[test]
fn run_lengths_that_overflow_are_refused() {
    let err = decode_modified(|m| {
        m.blocks[0].pages = vec![run(0, u64::MAX), run(1, u64::MAX)];
    });
    assert!(matches!(err, FormatError::BlockTooLarge { block: 0, .. }));
    let err = decode_modified(|m| m.zero_pages.push(run(u64::MAX, 2)));
    assert!(matches!(err, FormatError::PageOutOfRange { .. }));
}

/// Which pages each claim covers, the slow way: the reference the run-based
/// check must agree with.
fn coverage_by_pages(total: u64, claims: &[(PageRun, PageOwner)]) -> Result<(), FormatError> {
    let mut owner: Vec<Option<PageOwner>> = vec![None; total as usize];
    for (r, o) in claims {
        if r.start + r.len > total {
            return Err(FormatError::PageOutOfRange {
                page: r.start.max(total),
                total,
                owner: *o,
            });
        }
    }
    let mut first_twice: Option<u64> = None;
    for (r, o) in claims {
        for p in r.start..r.end() {
            if owner[p as usize].is_some() {
                first_twice = Some(first_twice.map_or(p, |f| f.min(p)));
            }
            owner[p as usize].get_or_insert(*o);
        }
    }
    if let Some(page) = first_twice {
        return Err(FormatError::PageListedTwice {
            page,
            first: PageOwner::ZeroPages,
            second: PageOwner::ZeroPages,
        });
    }
    match owner.iter().position(|o| o.is_none()) {
        Some(p) => Err(FormatError::PageMissing { page: p as u64 }),
        None => Ok(()),
    }
}

/// Errors compared by kind and page (owners are checked by the named tests).
fn same_verdict(a: &Result<(), FormatError>, b: &Result<(), FormatError>) -> bool {
    use FormatError::*;
    match (a, b) {
        (Ok(()), Ok(())) => true,
        (Err(PageOutOfRange { page: x, .. }), Err(PageOutOfRange { page: y, .. })) => x == y,
        (Err(PageListedTwice { page: x, .. }), Err(PageListedTwice { page: y, .. })) => x == y,
        (Err(PageMissing { page: x }), Err(PageMissing { page: y })) => x == y,
        _ => false,
    }
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
    fn run_coverage_agrees_with_a_page_by_page_check(
        total in 1u64..40,
        runs in proptest::collection::vec((0u64..44, 0u64..12), 0..8),
    ) {
        // Every run a zero-page run, so any mix of them is one manifest.
        let m = zero_memory(total, |m| {
            m.zero_pages = runs.iter().map(|&(s, l)| run(s, l)).collect();
        });
        let claims: Vec<(PageRun, PageOwner)> =
            m.zero_pages.iter().map(|r| (*r, PageOwner::ZeroPages)).collect();
        let expected = coverage_by_pages(total, &claims);
        let got = m.validate();
        prop_assert!(same_verdict(&got, &expected), "{:?} vs {:?}", got, expected);
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
