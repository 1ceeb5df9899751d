//! Incremental checkpoints: given the pages written since a parent checkpoint, writes only those
//! and points at the parent's blocks for the rest.
//!
//! What is read of guest memory: the dirty pages, and the unwritten pages of parent blocks that
//! hold a dirty page (a block entry cannot point into part of a block, so such a block is packed
//! again from memory). Every other page is not touched at all: not hashed, not read, and for a VM
//! restored lazily not even faulted in. Its block entry is copied from the parent's manifest
//! with the parent's object key, so a child's manifest lists every block directly and a restore
//! of the tenth checkpoint of a chain reads one manifest, like a flat one.

use crate::dirty_log::{write_checkpoint_with_dirty_log, write_dirty_log};
use crate::error::CheckpointError;
use crate::memory::MemoryRegion;
use crate::reader::load_manifest;
use crate::store::Store;
use crate::writer::{
    parent_trust, write_checkpoint, IncrementalStats, NewCheckpoint, Planned, WriteOptions,
    WriteSummary,
};
use rayon::prelude::*;
use thaw_format::{
    is_zero_page, layout_from_dirty_windows, plan_blocks, BlockEntry, DirtyLog, Manifest,
    TenantKeys,
};

/// Which of the parent's pages and blocks an incremental write keeps, free of I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carryover {
    /// Parent blocks without a dirty page, by index, in the parent's prefetch order.
    pub(crate) kept: Vec<usize>,
    /// Per page: read from memory for this write (dirty, or sharing a block with a dirty page).
    pub(crate) read: Vec<bool>,
    /// Per page: zero in the parent and not written since.
    pub(crate) zero: Vec<bool>,
    pub(crate) dirty_pages: u64,
    pub(crate) repacked_clean_pages: u64,
}

/// A parent checkpoint that cannot be the base of this write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParentMismatch {
    #[error("its memory layout {parent:?} differs from this VM's {ours:?}")]
    Layout {
        parent: Vec<(u64, u64)>,
        ours: Vec<(u64, u64)>,
    },
    #[error("its page size {parent} differs from this write's {ours}")]
    PageSize { parent: u64, ours: u64 },
    #[error("dirty page {page} lies outside the {total} pages of memory")]
    DirtyPageOutOfRange { page: u64, total: u64 },
}

/// Splits the parent's pages into kept and read again, given the `dirty` pages (any order,
/// duplicates allowed).
pub(crate) fn carry_over(parent: &Manifest, dirty: &[u64]) -> Result<Carryover, ParentMismatch> {
    let total = parent.total_pages();
    let mut read = vec![false; total as usize];
    let mut dirty_pages = 0;
    for &page in dirty {
        let slot = read
            .get_mut(page as usize)
            .ok_or(ParentMismatch::DirtyPageOutOfRange { page, total })?;
        if !std::mem::replace(slot, true) {
            dirty_pages += 1;
        }
    }
    let mut kept = Vec::new();
    let mut repacked_clean_pages = 0;
    for &i in &parent.prefetch_order {
        let block = &parent.blocks[i as usize];
        let pages = || block.pages.iter().flat_map(|r| r.start..r.end());
        if pages().any(|p| read[p as usize]) {
            for p in pages() {
                if !std::mem::replace(&mut read[p as usize], true) {
                    repacked_clean_pages += 1;
                }
            }
        } else {
            kept.push(i as usize);
        }
    }
    let mut zero = vec![false; total as usize];
    for run in &parent.zero_pages {
        for p in run.start..run.end() {
            zero[p as usize] = !read[p as usize];
        }
    }
    Ok(Carryover {
        kept,
        read,
        zero,
        dirty_pages,
        repacked_clean_pages,
    })
}

/// Writes a checkpoint whose parent is `opts.parent`, reading only the `dirty` pages (those the
/// guest wrote since the parent was taken, ascending or not) and the unwritten pages of parent
/// blocks that hold one. The dirty pages are laid out by `log`'s windows when given (and the log
/// is stored with the checkpoint), else by `opts.layout`.
///
/// A parent written under another tenant key (or in the clear when this write is encrypted, or
/// the other way round) cannot lend its blocks: the write is then a full one, logged.
pub async fn write_incremental_checkpoint(
    store: &Store,
    regions: &[MemoryRegion<'_>],
    state: Vec<u8>,
    opts: &WriteOptions,
    dirty: &[u64],
    log: Option<&DirtyLog>,
) -> Result<WriteSummary, CheckpointError> {
    let Some(parent_id) = opts.parent.clone() else {
        return full(store, regions, state, opts, log).await;
    };
    let parent = load_manifest(store, &parent_id, &parent_trust(opts))
        .await?
        .manifest;
    let keys = store.tenant_keys().map(|k| k.as_ref());
    if parent.encryption != keys.map(TenantKeys::encryption) {
        tracing::warn!(
            parent = %parent_id,
            "the parent is encrypted under another key (or not alike): writing a full checkpoint"
        );
        return full(store, regions, state, opts, log).await;
    }
    let mismatch = |source| CheckpointError::Parent {
        parent: parent_id.clone(),
        source,
    };
    let ours: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| (r.guest_phys_addr, r.bytes.len() as u64))
        .collect();
    let theirs: Vec<(u64, u64)> = parent
        .regions
        .iter()
        .map(|r| (r.guest_phys_addr, r.size))
        .collect();
    if ours != theirs {
        return Err(mismatch(ParentMismatch::Layout {
            parent: theirs,
            ours,
        }));
    }
    if parent.page_size != opts.page_size {
        return Err(mismatch(ParentMismatch::PageSize {
            parent: parent.page_size,
            ours: opts.page_size,
        }));
    }
    let carry = carry_over(&parent, dirty).map_err(mismatch)?;

    let target = NewCheckpoint::begin(store, regions, opts).await?;
    let layout = match log {
        Some(log) => {
            write_dirty_log(store, &target.id, log).await?;
            layout_from_dirty_windows(&log.page_lists())
        }
        None => opts.layout.clone(),
    };
    let to_read: Vec<u64> = (0..carry.read.len() as u64)
        .filter(|&p| carry.read[p as usize])
        .collect();
    let view = &target.view;
    let new_zero: Vec<u64> = crate::cpu::run_cpu(|| {
        to_read
            .par_iter()
            .with_min_len(1024)
            .filter(|&&p| is_zero_page(view.page(p)))
            .copied()
            .collect()
    });
    let mut zero = carry.zero;
    // Pages planned into blocks: those read, less the zero ones. plan_blocks skips pages marked.
    let mut skip: Vec<bool> = carry.read.iter().map(|&r| !r).collect();
    for &p in &new_zero {
        zero[p as usize] = true;
        skip[p as usize] = true;
    }
    let layout: Vec<u64> = layout
        .into_iter()
        .filter(|&p| p < carry.read.len() as u64)
        .collect();
    let new_blocks = plan_blocks(&layout, &skip, opts.block_pages)?;
    let kept: Vec<(BlockEntry, String)> = carry
        .kept
        .iter()
        .map(|&i| {
            let b = &parent.blocks[i];
            (b.clone(), parent.objects[b.object as usize].clone())
        })
        .collect();
    let stats = IncrementalStats {
        parent: parent_id,
        dirty_pages: carry.dirty_pages,
        repacked_clean_pages: carry.repacked_clean_pages,
        kept_blocks: kept.len(),
    };
    tracing::debug!(
        dirty = stats.dirty_pages,
        repacked = stats.repacked_clean_pages,
        kept = stats.kept_blocks,
        new_blocks = new_blocks.len(),
        "incremental checkpoint planned"
    );
    let planned = Planned::without_hash_reuse(new_blocks, kept, zero, stats);
    target.write(store, state, opts, planned).await
}

async fn full(
    store: &Store,
    regions: &[MemoryRegion<'_>],
    state: Vec<u8>,
    opts: &WriteOptions,
    log: Option<&DirtyLog>,
) -> Result<WriteSummary, CheckpointError> {
    let opts = WriteOptions {
        parent: None,
        ..opts.clone()
    };
    match log {
        Some(log) => write_checkpoint_with_dirty_log(store, regions, state, &opts, log).await,
        None => write_checkpoint(store, regions, state, &opts).await,
    }
}
