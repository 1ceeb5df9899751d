//! From profiles (the pages several restores touched, in order of first
//! touch) to a layout: the page order [`super::plan_blocks`] cuts into blocks.
//!
//! # Algorithm
//! Each trace gives each page it names a *normalised rank*: its position
//! `(i + 0.5) / n` among the trace's `n` first touches, so traces of
//! different lengths weigh the same and a rank says "how far into the run".
//! A page's key is the **median** of its ranks over the traces that name it
//! (for an even count, the mean of the two middle ones). Pages are ordered by
//! key; ties go to the page seen in more traces, then to the page seen first
//! (earliest trace, then earliest position). Pages in no trace are left out:
//! `plan_blocks` places them after, in physical order, and drops zero pages.
//!
//! Why the median: one restore that took another path (a different file
//! order, a late allocation) moves a page's rank in that restore only, and
//! the median ignores one outlier out of three, where a mean would drag the
//! page halfway. With two traces the median is the mean. If page `a` comes
//! before page `b` in every trace that names both and both are named by the
//! same traces, `a`'s ranks are each below `b`'s, so its median is too: the
//! layout keeps every order the restores agree on.
//!
//! Why pages seen in fewer traces are *not* put after the others: a layout
//! groups pages touched close in time, and a page seen in one restore only
//! is, when touched again, touched at about the same point of the run. Put in
//! a tail of rarely-seen pages, it would share a block with pages from other
//! points of the run. Measured on `workloads/shell` (learn from traces 01 and
//! 02, count 16-page blocks first touched by trace 03, zero pages ignored):
//! one order by median rank takes 280 blocks, the same with rarely-seen pages
//! in a tail 282, physical order 462, the exact pages of 03 (an oracle) 204.
//! The mean of ranks gives 280 here as well, the minimum 285, one trace alone
//! 285-286.
//!
//! The result is deterministic for a given list of traces: only integer
//! positions and a total order are involved (ranks are compared as exact
//! fractions, never as floats).
//!
//! # Neighbours of seen pages
//! A restore always touches pages no earlier restore did (other keys, other
//! files, fresh allocations), and those pages sit next to pages that were
//! seen far more often than elsewhere: a heap object or a file spans
//! neighbouring pages, and the allocator hands out pages beside the ones it
//! handed out before. [`with_neighbours`] therefore puts, after the seen
//! pages and before the rest, the unseen pages within [`NEIGHBOUR_RADIUS`]
//! pages of a seen one, in two tiers:
//! 1. the pages right next to a seen page (distance 1), in the layout order
//!    of that seen page: the likeliest of all;
//! 2. the other neighbours, grouped by the seen page nearest to them (the
//!    earliest in the layout among equally near ones), the groups in the
//!    layout order of their seen page and each group in physical order.
//!
//! Measured on the generated workloads (learn from all traces but the last;
//! which unseen pages does the last touch?): the pages at distance 1 hold
//! 3-11% of them per page, those at distance 9-16 about 1%, the pages
//! beyond 16 (left in physical order) 0.1-0.2%. On kv-store the 17,694
//! neighbours hold 976 of the 988 unseen pages the last run touched.
//!
//! Why groups in physical order past distance 1: an unseen page is usually
//! touched with the unseen pages beside it (the rest of a new file read, of
//! a fresh allocation), so one block should hold that run. Ordered by
//! distance alone, pages 2, 3 and 4 after one seen page went into three
//! blocks each shared with pages from fifteen other places, and each page
//! of such a run cost a fault of its own. Measured with `thaw-bench restore
//! --strategy locality` (blocks on demand only, so a fault is a block first
//! touched), rack link, tiers against distance order, two rounds each:
//! shell (a real recording) 229-231 faults against 256, web-server 577-585
//! against 720-731, idle-os 179-182 against 202-203, database 721-723
//! against 746-752, gc-sweep 362-370 against 380-385, kv-store 983 against
//! 988-989. The same runs, `thaw` over rack and region on all six: overhead
//! sums 1.21 and 1.16 s against 1.29 and 1.24 s. Grouping distance 1 with
//! the rest was worse in an offline count of the blocks kv-store's last
//! trace touches (982 against 969): it spends the likeliest pages' early
//! place in the stream.

use std::cmp::Ordering;
use std::collections::HashMap;

/// Where one page stands across the traces.
struct Standing {
    /// Its normalised ranks, as fractions `num / den` (`num = 2i + 1`,
    /// `den = 2n`), one per trace that names it.
    ranks: Vec<(u64, u64)>,
    /// (trace, position) where it was first seen.
    first: (usize, usize),
}

/// A page order learned from `traces` (each the pages one restore touched,
/// in order of first touch). A page appears at most once in the result; a
/// page repeated inside one trace counts at its first position there.
pub fn layout_from_traces<T: AsRef<[u64]>>(traces: &[T]) -> Vec<u64> {
    let mut standing: HashMap<u64, Standing> = HashMap::new();
    for (t, trace) in traces.iter().enumerate() {
        let trace = trace.as_ref();
        let mut seen_here = std::collections::HashSet::with_capacity(trace.len());
        let pages: Vec<u64> = trace
            .iter()
            .copied()
            .filter(|&p| seen_here.insert(p))
            .collect();
        let den = 2 * pages.len() as u64;
        for (i, &page) in pages.iter().enumerate() {
            let rank = (2 * i as u64 + 1, den);
            standing
                .entry(page)
                .or_insert_with(|| Standing {
                    ranks: Vec::new(),
                    first: (t, i),
                })
                .ranks
                .push(rank);
        }
    }
    let mut keyed: Vec<(Median, usize, (usize, usize), u64)> = standing
        .into_iter()
        .map(|(page, mut s)| {
            s.ranks.sort_by(|a, b| cmp_fraction(*a, *b));
            (median(&s.ranks), s.ranks.len(), s.first, page)
        })
        .collect();
    keyed.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    keyed.into_iter().map(|k| k.3).collect()
}

/// How far from a seen page [`with_neighbours`] looks: one default block
/// (16 pages) either side; further out, nearness says little (see above).
pub const NEIGHBOUR_RADIUS: u64 = 16;

/// `layout` (pages seen by restores, in order) followed by the unseen pages
/// within [`NEIGHBOUR_RADIUS`] of a seen page, in the two tiers above: first
/// those at distance 1, by the layout position of their seen page (then page
/// index), then the others by the layout position of their nearest seen page
/// (the earliest of equally near ones), then page index. Pages at or past
/// `total_pages` are never added. Every page appears at most once; the
/// result depends only on the arguments.
pub fn with_neighbours(layout: Vec<u64>, total_pages: u64) -> Vec<u64> {
    let position: HashMap<u64, usize> = layout.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    // For each unseen neighbour, its nearest seen page: (distance, position).
    let mut nearest: HashMap<u64, (u64, usize)> = HashMap::new();
    for (i, &page) in layout.iter().enumerate() {
        for d in 1..=NEIGHBOUR_RADIUS {
            let below = page.checked_sub(d);
            let above = page.checked_add(d).filter(|&q| q < total_pages);
            for q in [below, above].into_iter().flatten() {
                if position.contains_key(&q) {
                    continue;
                }
                let key = (d, i);
                nearest
                    .entry(q)
                    .and_modify(|k| *k = (*k).min(key))
                    .or_insert(key);
            }
        }
    }
    let mut neighbours: Vec<((bool, usize), u64)> = nearest
        .into_iter()
        .map(|(q, (d, i))| ((d > 1, i), q))
        .collect();
    neighbours.sort_unstable();
    let mut out = layout;
    out.extend(neighbours.into_iter().map(|(_, q)| q));
    out
}

/// The median of sorted fractions: one fraction, or the mean of the middle
/// two (kept as their sum, which orders the same as the mean).
#[derive(Clone, Copy, Debug)]
enum Median {
    One((u64, u64)),
    Two((u64, u64), (u64, u64)),
}

impl Median {
    /// The value as a fraction, exactly: `(a/b + c/d) / 2 = (ad + cb) / 2bd`.
    fn value(self) -> (u128, u128) {
        match self {
            Median::One((n, d)) => (n as u128 * 2, d as u128 * 2),
            Median::Two((a, b), (c, d)) => {
                let (a, b, c, d) = (a as u128, b as u128, c as u128, d as u128);
                (a * d + c * b, 2 * b * d)
            }
        }
    }
}

impl PartialEq for Median {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Median {}
impl PartialOrd for Median {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Median {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = self.value();
        let (c, d) = other.value();
        // Exact for any trace shorter than 2^30 pages; beyond that the
        // products may overflow and floats decide.
        match (a.checked_mul(d), c.checked_mul(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => (a as f64 / b as f64).total_cmp(&(c as f64 / d as f64)),
        }
    }
}

fn median(sorted: &[(u64, u64)]) -> Median {
    let n = sorted.len();
    if n % 2 == 1 {
        Median::One(sorted[n / 2])
    } else {
        Median::Two(sorted[n / 2 - 1], sorted[n / 2])
    }
}

fn cmp_fraction((a, b): (u64, u64), (c, d): (u64, u64)) -> Ordering {
    (a as u128 * d as u128).cmp(&(c as u128 * b as u128))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_trace_is_its_own_layout() {
        assert_eq!(layout_from_traces(&[vec![5, 2, 9, 0]]), vec![5, 2, 9, 0]);
        assert_eq!(layout_from_traces::<Vec<u64>>(&[]), Vec::<u64>::new());
    }

    #[test]
    fn the_median_ignores_one_outlying_restore() {
        // Page 9 is early in two restores and last in one: it stays early.
        let traces = [vec![1, 9, 2, 3], vec![1, 9, 2, 3], vec![1, 2, 3, 9]];
        assert_eq!(layout_from_traces(&traces), vec![1, 9, 2, 3]);
    }

    #[test]
    fn ranks_are_normalised_and_pages_seen_once_interleave() {
        // 7 is only in the short trace, halfway through it: it lands among
        // the pages at the middle of the others, not at the end.
        let traces = [vec![1, 2, 3, 4, 5, 6], vec![1, 7, 6]];
        let layout = layout_from_traces(&traces);
        let at = |p| layout.iter().position(|&x| x == p).unwrap();
        assert!(at(7) > at(2) && at(7) < at(5), "{layout:?}");
        // Ties: same key, the page seen in more traces first.
        let layout = layout_from_traces(&[vec![1, 2], vec![3, 2]]);
        assert_eq!(layout, vec![1, 3, 2]);
    }

    #[test]
    fn neighbours_follow_adjacent_first_then_in_runs_by_their_seen_page() {
        // Seen: 40 then 10. Distance 1 of both (40's first), then the rest
        // of 40's neighbours in physical order, then 10's.
        let out = with_neighbours(vec![40, 10], 42);
        assert_eq!(&out[..6], &[40, 10, 39, 41, 9, 11]);
        // 40 owns 25..=38: 25 is 15 from both, and the earlier seen page
        // wins the tie; 24 is nearer 10.
        let owned_by_40: Vec<u64> = (25..=38).collect();
        assert_eq!(&out[6..20], &owned_by_40[..]);
        let owned_by_10: Vec<u64> = (0..=8).chain(12..=24).collect();
        assert_eq!(&out[20..], &owned_by_10[..]);
        // Never past the memory, never below page 0, each page once.
        assert!(out.iter().all(|&p| p < 42));
        let unique: std::collections::HashSet<_> = out.iter().collect();
        assert_eq!(unique.len(), out.len());
        // 10 reaches 0..=26, 40 reaches 24..=41: pages 0..42 all present.
        assert_eq!(out.len(), 42);
        // A neighbour of both takes its nearest seen page's distance.
        let out = with_neighbours(vec![0, 3], 100);
        assert_eq!(&out[2..5], &[1, 2, 4]);
    }

    #[test]
    fn repeats_inside_a_trace_count_once() {
        assert_eq!(layout_from_traces(&[vec![4, 4, 1, 4]]), vec![4, 1]);
    }

    /// Traces as noisy views of one underlying order: each trace takes a
    /// random subset of pages and swaps some neighbours.
    fn traces_strategy() -> impl Strategy<Value = Vec<Vec<u64>>> {
        (1usize..60, 1usize..5)
            .prop_flat_map(|(pages, n)| {
                (
                    Just(pages),
                    proptest::collection::vec(
                        (
                            proptest::collection::vec(any::<bool>(), pages),
                            proptest::collection::vec(0usize..pages, 0..6),
                        ),
                        n,
                    ),
                    proptest::collection::vec(0u64..10_000, pages),
                )
            })
            .prop_map(|(_, views, ids)| {
                views
                    .into_iter()
                    .map(|(keep, swaps)| {
                        let mut t: Vec<u64> = ids
                            .iter()
                            .zip(&keep)
                            .filter(|(_, &k)| k)
                            .map(|(&p, _)| p)
                            .collect();
                        for s in swaps {
                            if s + 1 < t.len() {
                                t.swap(s, s + 1);
                            }
                        }
                        t
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn every_page_at_most_once_and_only_pages_seen(traces in traces_strategy()) {
            let layout = layout_from_traces(&traces);
            let mut seen = std::collections::HashSet::new();
            for &p in &layout {
                prop_assert!(seen.insert(p), "page {} twice", p);
            }
            let named: std::collections::HashSet<u64> = traces.iter().flatten().copied().collect();
            prop_assert_eq!(seen, named);
        }

        #[test]
        fn neighbours_keep_the_layout_first_and_every_page_once(
            traces in traces_strategy(),
            total in 1u64..12_000,
        ) {
            let layout: Vec<u64> = layout_from_traces(&traces)
                .into_iter()
                .filter(|&p| p < total)
                .collect();
            let out = with_neighbours(layout.clone(), total);
            prop_assert_eq!(&out[..layout.len()], &layout[..]);
            let mut seen = std::collections::HashSet::new();
            for &p in &out {
                prop_assert!(seen.insert(p), "page {} twice", p);
                prop_assert!(p < total);
            }
            for &p in &out[layout.len()..] {
                prop_assert!(layout.iter().any(|&q| q.abs_diff(p) <= NEIGHBOUR_RADIUS));
            }
            prop_assert_eq!(with_neighbours(layout.clone(), total), out);
        }

        #[test]
        fn deterministic(traces in traces_strategy()) {
            let a = layout_from_traces(&traces);
            let b = layout_from_traces(&traces.clone());
            prop_assert_eq!(a, b);
        }

        #[test]
        fn orders_all_restores_agree_on_are_kept(traces in traces_strategy()) {
            let layout = layout_from_traces(&traces);
            let at: HashMap<u64, usize> =
                layout.iter().enumerate().map(|(i, &p)| (p, i)).collect();
            let pos: Vec<HashMap<u64, usize>> = traces
                .iter()
                .map(|t| {
                    let mut m = HashMap::new();
                    for (i, &p) in t.iter().enumerate() {
                        m.entry(p).or_insert(i);
                    }
                    m
                })
                .collect();
            // Pages named by every trace: if a is before b in all, a leads.
            let common: Vec<u64> = layout
                .iter()
                .copied()
                .filter(|p| pos.iter().all(|m| m.contains_key(p)))
                .collect();
            for &a in &common {
                for &b in &common {
                    if a != b && pos.iter().all(|m| m[&a] < m[&b]) {
                        prop_assert!(at[&a] < at[&b], "{} before {} in all traces", a, b);
                    }
                }
            }
        }
    }
}
