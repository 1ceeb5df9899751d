//! From a layout (the order pages should be stored in) to the blocks a
//! checkpoint is cut into.
//!
//! A layout names pages in the order they are likely to be touched after a
//! restore. Pages it omits follow in physical order, zero pages are left out
//! (they are not stored). The layout's pages are cut into blocks of
//! `max_block_pages` pages; the rest are cut at aligned boundaries of that
//! many pages. An empty layout is plain physical order.

use super::manifest::PageRun;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("layout names page {page}, outside the memory's {total} pages")]
    PageOutOfRange { page: u64, total: u64 },
    #[error("layout names page {page} twice")]
    DuplicatePage { page: u64 },
    #[error("block size of {0} pages is invalid (1 to {max})", max = super::manifest::MAX_BLOCK_PAGES)]
    BadBlockSize(u64),
}

/// Cuts memory into blocks: returns each block's pages as runs, in order.
pub fn plan_blocks(
    layout: &[u64],
    zero: &[bool],
    max_block_pages: u64,
) -> Result<Vec<Vec<PageRun>>, LayoutError> {
    if max_block_pages == 0 || max_block_pages > super::manifest::MAX_BLOCK_PAGES {
        return Err(LayoutError::BadBlockSize(max_block_pages));
    }
    let total = zero.len() as u64;
    let mut placed = vec![false; zero.len()];
    let mut ordered = Vec::new();
    for &page in layout {
        let slot = placed
            .get_mut(page as usize)
            .ok_or(LayoutError::PageOutOfRange { page, total })?;
        if std::mem::replace(slot, true) {
            return Err(LayoutError::DuplicatePage { page });
        }
        if !zero[page as usize] {
            ordered.push(page);
        }
    }
    let mut blocks: Vec<Vec<PageRun>> = ordered
        .chunks(max_block_pages as usize)
        .map(|chunk| runs_of(chunk.iter().copied()))
        .collect();
    // The rest, in physical order, cut at aligned boundaries (block i never
    // crosses a multiple of max_block_pages): a page turning from zero to
    // non-zero then changes one block, not every block after it, so a child
    // checkpoint still shares the others with its parent.
    let mut current: Vec<u64> = Vec::new();
    for page in (0..total).filter(|&p| !placed[p as usize] && !zero[p as usize]) {
        if let Some(&first) = current.first() {
            if first / max_block_pages != page / max_block_pages {
                blocks.push(runs_of(current.drain(..)));
            }
        }
        current.push(page);
    }
    if !current.is_empty() {
        blocks.push(runs_of(current));
    }
    Ok(blocks)
}

/// Groups pages, in the order given, into runs of consecutive indices.
pub fn runs_of(pages: impl IntoIterator<Item = u64>) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = Vec::new();
    for page in pages {
        match runs.last_mut() {
            Some(run) if run.end() == page => run.len += 1,
            _ => runs.push(PageRun {
                start: page,
                len: 1,
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn physical_order_skips_zero_pages_and_cuts_at_aligned_boundaries() {
        let zero = [false, true, false, false, true, false];
        let blocks = plan_blocks(&[], &zero, 2).unwrap();
        assert_eq!(
            blocks,
            vec![
                vec![PageRun { start: 0, len: 1 }],
                vec![PageRun { start: 2, len: 2 }],
                vec![PageRun { start: 5, len: 1 }],
            ]
        );
    }

    #[test]
    fn a_page_turning_non_zero_changes_one_block_only() {
        let mut zero = vec![false; 64];
        zero[3] = true;
        let before = plan_blocks(&[], &zero, 8).unwrap();
        zero[3] = false;
        let after = plan_blocks(&[], &zero, 8).unwrap();
        let differing = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!((before.len(), differing), (after.len(), 1));
    }

    #[test]
    fn layout_comes_first_then_the_rest_in_physical_order() {
        let zero = [false; 6];
        let blocks = plan_blocks(&[5, 4, 1], &zero, 4).unwrap();
        let pages: Vec<u64> = blocks
            .iter()
            .flat_map(|b| b.iter().flat_map(|r| r.start..r.end()))
            .collect();
        assert_eq!(pages, vec![5, 4, 1, 0, 2, 3]);
    }

    #[test]
    fn bad_layouts_are_named() {
        let zero = [false; 4];
        assert_eq!(
            plan_blocks(&[1, 9], &zero, 4),
            Err(LayoutError::PageOutOfRange { page: 9, total: 4 })
        );
        assert_eq!(
            plan_blocks(&[1, 2, 1], &zero, 4),
            Err(LayoutError::DuplicatePage { page: 1 })
        );
        assert_eq!(
            plan_blocks(&[], &zero, 0),
            Err(LayoutError::BadBlockSize(0))
        );
    }

    proptest! {
        #[test]
        fn every_nonzero_page_lands_in_exactly_one_block(
            zero in proptest::collection::vec(any::<bool>(), 1..300),
            seed in any::<u64>(),
            take in 0usize..300,
            block in 1u64..40,
        ) {
            let total = zero.len() as u64;
            // A layout: a pseudo-random subset of pages in a pseudo-random order.
            let mut layout: Vec<u64> = (0..total).collect();
            let mut x = seed | 1;
            for i in (1..layout.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                layout.swap(i, (x % (i as u64 + 1)) as usize);
            }
            layout.truncate(take.min(layout.len()));
            let blocks = plan_blocks(&layout, &zero, block).unwrap();
            let mut count = vec![0u32; zero.len()];
            for b in &blocks {
                let n: u64 = b.iter().map(|r| r.len).sum();
                prop_assert!(n >= 1 && n <= block);
                for r in b { for p in r.start..r.end() { count[p as usize] += 1; } }
            }
            for (p, &z) in zero.iter().enumerate() {
                prop_assert_eq!(count[p], if z { 0 } else { 1 });
            }
            prop_assert_eq!(plan_blocks(&layout, &zero, block).unwrap(), blocks);
        }
    }
}
