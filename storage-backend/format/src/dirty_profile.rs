//! From a dirty log (the pages the guest wrote in each of the last windows
//! before a checkpoint) to a layout: the page order [`super::plan_blocks`]
//! cuts into blocks. The second source of locality profiles, next to restore
//! traces ([`super::layout_from_traces`]); it needs no restore at all, so the
//! very first checkpoint of a VM already has a profiled layout.
//!
//! # Algorithm
//! Windows are taken **newest first**. Each window contributes the pages it
//! names that no newer window named, in **physical order**. Pages in no
//! window are left out: `plan_blocks` places them after, in physical order,
//! and drops zero pages. Every page appears at most once, so the result is a
//! valid layout for any memory that holds the pages.
//!
//! Why newest first: the pages written in the last window are the working
//! set closest to the pause, and a guest resumed from the checkpoint goes on
//! from that instant, so those are the pages it most likely touches first.
//! Each older window is one step further from the pause and a weaker guess.
//! A page written in every window (a hot set) lands in the newest group,
//! which is where it belongs: it is hot now.
//!
//! Why physical order inside a window: KVM's log is a bitmap per window; it
//! says *that* a page was written, not when or how often, so there is no
//! finer order to recover. Physical order at least keeps stretches the guest
//! writes together (a stack, a buffer, a contiguous hot set) in one block.
//! Shorter windows give a finer order at the cost of more harvests.
//!
//! What the log cannot see: pages only *read* before the checkpoint (code,
//! read-mostly data) and pages the guest will touch next but has not written
//! lately. Those follow in physical order; a layout learned from restore
//! traces (`thaw checkpoint relayout`) replaces this one once a restore has
//! been recorded.

/// A page order from dirty-log windows given **oldest first** (the order they
/// were recorded in): the newest window's pages first, then each older
/// window's pages not already placed; inside a window, ascending page index.
/// Pages repeated inside one window count once.
pub fn layout_from_dirty_windows<W: AsRef<[u64]>>(windows_oldest_first: &[W]) -> Vec<u64> {
    let mut placed = std::collections::HashSet::new();
    let mut layout = Vec::new();
    for window in windows_oldest_first.iter().rev() {
        let mut pages: Vec<u64> = window.as_ref().to_vec();
        pages.sort_unstable();
        pages.dedup();
        layout.extend(pages.into_iter().filter(|&p| placed.insert(p)));
    }
    layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newest_window_first_then_older_pages_not_yet_placed() {
        let windows = [vec![1, 2, 3, 40], vec![7, 3, 8], vec![50, 8, 2]];
        assert_eq!(
            layout_from_dirty_windows(&windows),
            vec![2, 8, 50, 3, 7, 1, 40]
        );
    }

    #[test]
    fn a_hot_set_written_in_every_window_leads() {
        // Hot pages 10..14 written every window; cold pages once each, early.
        let windows = [
            vec![0, 10, 11, 12, 13],
            vec![10, 11, 12, 13, 99],
            vec![13, 12, 11, 10],
        ];
        let layout = layout_from_dirty_windows(&windows);
        assert_eq!(&layout[..4], &[10, 11, 12, 13]);
        assert_eq!(&layout[4..], &[99, 0]);
    }

    #[test]
    fn empty_inputs_give_an_empty_layout() {
        assert!(layout_from_dirty_windows::<Vec<u64>>(&[]).is_empty());
        assert!(layout_from_dirty_windows(&[vec![], vec![]]).is_empty());
        assert_eq!(layout_from_dirty_windows(&[vec![5, 5, 5]]), vec![5]);
    }

    proptest! {
        #[test]
        fn each_page_once_grouped_by_newest_window_and_ascending_inside(
            windows in proptest::collection::vec(proptest::collection::vec(0u64..300, 0..80), 0..6)
        ) {
            let layout = layout_from_dirty_windows(&windows);
            let mut seen = std::collections::HashSet::new();
            for &p in &layout {
                prop_assert!(seen.insert(p), "page {} twice", p);
            }
            let named: std::collections::HashSet<u64> = windows.iter().flatten().copied().collect();
            prop_assert_eq!(&seen, &named);
            // The newest window naming a page, per page; the layout walks
            // these groups newest first and ascending inside each.
            let newest = |p: u64| windows.iter().rposition(|w| w.contains(&p)).unwrap();
            for pair in layout.windows(2) {
                let (a, b) = (newest(pair[0]), newest(pair[1]));
                prop_assert!(a > b || (a == b && pair[0] < pair[1]), "{:?}", pair);
            }
        }
    }
}
