//! Figures describing a workload directory: memory, zero pages, how well
//! the rest compresses, and per trace how many pages, over how long, and
//! how much the traces overlap. Free of I/O: works on a loaded workload.

use std::collections::HashSet;

use crate::workload_dir::Workload;

#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub memory_bytes: u64,
    pub total_pages: u64,
    pub zero_pages: u64,
    /// Bytes of non-zero pages over their size compressed with lz4 page by
    /// page (a lower bound: blocks of several pages compress better).
    pub lz4_ratio: f64,
    /// Pages touched by each trace.
    pub touched: Vec<usize>,
    /// Last touch of each trace, in µs.
    pub duration_us: Vec<u64>,
    /// Jaccard similarity of the touched-page sets, over all pairs of traces.
    pub jaccard_min: f64,
    pub jaccard_max: f64,
}

impl Summary {
    pub fn nonzero_pages(&self) -> u64 {
        self.total_pages - self.zero_pages
    }
}

pub fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

pub fn summarize(workload: &Workload) -> Summary {
    let page_size = workload.spec.page_size as usize;
    let mut zero_pages = 0u64;
    let (mut raw, mut stored) = (0usize, 0usize);
    for page in workload.memory.chunks(page_size) {
        if page.iter().all(|&b| b == 0) {
            zero_pages += 1;
        } else {
            raw += page.len();
            stored += lz4_flex::block::compress(page).len().min(page.len());
        }
    }
    let sets: Vec<HashSet<u64>> = workload
        .traces
        .iter()
        .map(|t| t.pages().into_iter().collect())
        .collect();
    let mut jaccards = Vec::new();
    for i in 0..sets.len() {
        for j in i + 1..sets.len() {
            jaccards.push(jaccard(&sets[i], &sets[j]));
        }
    }
    Summary {
        name: workload.spec.name.clone(),
        memory_bytes: workload.spec.memory_bytes,
        total_pages: workload.spec.total_pages(),
        zero_pages,
        lz4_ratio: if stored == 0 {
            1.0
        } else {
            raw as f64 / stored as f64
        },
        touched: workload.traces.iter().map(|t| t.events.len()).collect(),
        duration_us: workload
            .traces
            .iter()
            .map(|t| t.events.last().map_or(0, |e| e.t_us))
            .collect(),
        jaccard_min: jaccards.iter().copied().fold(f64::INFINITY, f64::min),
        jaccard_max: jaccards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}
