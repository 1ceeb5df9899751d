//! Tests of the restore policy: fixtures here, worked examples in
//! [`examples`], model-checked properties over random events in
//! [`properties`].

use std::sync::Arc;

use thaw_format::Manifest;
use thaw_format::{BlockEntry, CheckpointId, Codec, PageRun, Region, StateBlob};

use super::*;

mod examples;
mod properties;

/// A manifest over `total` pages: `blocks` lists each block's page runs;
/// every other page is a zero page. Blocks are 1000 stored (lz4) bytes each.
fn manifest(total: u64, blocks: &[Vec<PageRun>], order: Vec<u32>) -> Arc<Manifest> {
    let mut owned = vec![false; total as usize];
    let entries: Vec<BlockEntry> = blocks
        .iter()
        .map(|runs| {
            for r in runs {
                for p in r.start..r.end() {
                    owned[p as usize] = true;
                }
            }
            let pages: u64 = runs.iter().map(|r| r.len).sum();
            BlockEntry {
                pages: runs.clone(),
                object: 0,
                offset: 0,
                stored_len: 1000,
                raw_len: pages * 4096,
                codec: Codec::Lz4,
                hash: [0; 32],
                stored_hash: None,
            }
        })
        .collect();
    let mut zero_pages: Vec<PageRun> = Vec::new();
    for p in 0..total {
        if !owned[p as usize] {
            match zero_pages.last_mut() {
                Some(r) if r.end() == p => r.len += 1,
                _ => zero_pages.push(PageRun { start: p, len: 1 }),
            }
        }
    }
    let m = Manifest {
        id: CheckpointId::new("test").unwrap(),
        created_unix_ms: 0,
        parent: None,
        page_size: 4096,
        regions: vec![Region {
            guest_phys_addr: 0,
            size: total * 4096,
        }],
        objects: vec!["segment".into()],
        blocks: entries,
        zero_pages,
        prefetch_order: order,
        state: StateBlob::new(Vec::new()),
        encryption: None,
    };
    m.validate().expect("test manifest is valid");
    Arc::new(m)
}

/// Eight blocks of four pages (pages 0..32), then 32 zero pages.
fn simple() -> Arc<Manifest> {
    let blocks: Vec<Vec<PageRun>> = (0..8)
        .map(|b| {
            vec![PageRun {
                start: b * 4,
                len: 4,
            }]
        })
        .collect();
    manifest(64, &blocks, (0..8).collect())
}

fn config(window: usize) -> Config {
    Config {
        prefetch_window: window,
        zero_window: 16,
        stream: None,
        zero_fill_ahead: false,
        install: InstallScope::Block,
    }
}

fn never(_: u32) -> bool {
    false
}
