//! The checkpoints of one workload's memory that the strategies restore
//! from: the same pages cut and ordered four ways.

use std::collections::HashMap;

use crate::workload_dir::Workload;
use anyhow::Context;
use thaw_format::profile::{layout_from_traces, with_neighbours};
use thaw_format::workload::Trace;
use thaw_format::CheckpointId;
use thaw_store::{write_checkpoint, MemoryRegion, Store, WriteOptions};

use super::strategy::Layout;

/// Checkpoint ids by layout, all in one store.
pub(crate) struct Checkpoints {
    ids: HashMap<Layout, CheckpointId>,
}

impl Checkpoints {
    pub(crate) fn id(&self, layout: Layout) -> &CheckpointId {
        &self.ids[&layout]
    }
}

/// Writes a checkpoint of `workload`'s memory for each layout. The profiled
/// layout is learned from `learn` only; only the oracle sees `measured`.
pub(crate) async fn write(
    store: &Store,
    workload: &Workload,
    learn: &[&Trace],
    measured: &Trace,
    layouts: &[Layout],
) -> anyhow::Result<Checkpoints> {
    let spec = &workload.spec;
    let mut offset = 0usize;
    let regions: Vec<MemoryRegion<'_>> = spec
        .regions
        .iter()
        .map(|r| {
            let bytes = &workload.memory[offset..offset + r.size as usize];
            offset += r.size as usize;
            MemoryRegion {
                guest_phys_addr: r.guest_phys_addr,
                bytes,
            }
        })
        .collect();
    let mut ids = HashMap::new();
    for &layout in layouts {
        if ids.contains_key(&layout) {
            continue;
        }
        let defaults = WriteOptions::default();
        let (block_pages, order) = match layout {
            Layout::Pages => (1, Vec::new()),
            Layout::Physical => (defaults.block_pages, Vec::new()),
            Layout::Profiled => {
                let pages: Vec<Vec<u64>> = learn.iter().map(|t| t.pages()).collect();
                let order = with_neighbours(layout_from_traces(&pages), spec.total_pages());
                (defaults.block_pages, order)
            }
            Layout::Oracle => (defaults.block_pages, measured.pages()),
        };
        let options = WriteOptions {
            page_size: spec.page_size,
            block_pages,
            layout: order,
            ..defaults
        };
        let summary = write_checkpoint(store, &regions, Vec::new(), &options)
            .await
            .with_context(|| format!("writing the {layout:?} checkpoint of {}", spec.name))?;
        ids.insert(layout, summary.id);
    }
    Ok(Checkpoints { ids })
}
