//! Relayout: rewrite an existing checkpoint with a new layout without running
//! the VM again.
//!
//! The old checkpoint's memory and VM state are read back and written as a
//! new checkpoint whose parent is the old one, so every block that comes out
//! the same (same pages, same bytes: same hash) points into the old
//! checkpoint's segments instead of being uploaded again. Nothing of the old
//! checkpoint is touched, and the new one does not exist for readers until
//! its manifest, written last, is in place. A dirty log recorded before the
//! old checkpoint is copied to the new one (it describes the same moment).

use crate::dirty_log::{load_dirty_log, write_dirty_log};
use crate::error::CheckpointError;
use crate::memory::MemoryRegion;
use crate::reader::{CheckpointReader, DEFAULT_READ_CONCURRENCY};
use crate::store::Store;
use crate::writer::{write_checkpoint, WriteOptions, WriteSummary};
use thaw_format::signature::SigningKey;
use thaw_format::{CheckpointId, ManifestTrust};

/// Writes checkpoint `new_id` (generated when `None`) holding the memory and
/// state of `old_id`, its pages ordered by `layout` (pages it omits follow in
/// physical order, as for any write). The old checkpoint must pass `trust`;
/// the new one is signed with `signing_key` (unsigned when `None`). Block
/// size and upload settings are the writer's defaults.
pub async fn relayout(
    store: &Store,
    old_id: &CheckpointId,
    layout: Vec<u64>,
    new_id: Option<CheckpointId>,
    trust: &ManifestTrust,
    signing_key: Option<SigningKey>,
) -> Result<WriteSummary, CheckpointError> {
    let reader = CheckpointReader::open(store, old_id, trust).await?;
    let manifest = reader.manifest();
    let mut memory = vec![0u8; manifest.total_bytes() as usize];
    reader
        .read_all_into(&mut memory, DEFAULT_READ_CONCURRENCY)
        .await?;
    let mut regions = Vec::with_capacity(manifest.regions.len());
    let mut rest: &[u8] = &memory;
    for r in &manifest.regions {
        let (bytes, tail) = rest.split_at(r.size as usize);
        regions.push(MemoryRegion {
            guest_phys_addr: r.guest_phys_addr,
            bytes,
        });
        rest = tail;
    }
    let new_id = new_id.unwrap_or_else(|| {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        CheckpointId::generate(now_ms)
    });
    if let Some(log) = load_dirty_log(store, old_id).await? {
        write_dirty_log(store, &new_id, &log).await?;
    }
    let opts = WriteOptions {
        id: Some(new_id),
        parent: Some(old_id.clone()),
        page_size: manifest.page_size,
        layout,
        signing_key,
        // The parent is the manifest just verified, to the byte.
        parent_trust: ManifestTrust::Digest(reader.digest()),
        ..WriteOptions::default()
    };
    write_checkpoint(store, &regions, reader.state_blob()?.to_vec(), &opts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 4096;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn trust() -> ManifestTrust {
        ManifestTrust::Keys(vec![key().verifying_key()])
    }

    fn signed(id: Option<CheckpointId>) -> WriteOptions {
        WriteOptions {
            id,
            signing_key: Some(key()),
            ..WriteOptions::default()
        }
    }

    /// 256 pages over two regions: every fourth page zero, the others
    /// distinct.
    fn memory() -> Vec<u8> {
        let mut m = vec![0u8; 256 * PS];
        for (i, page) in m.chunks_mut(PS).enumerate() {
            if i % 4 != 3 {
                page.fill((i % 251) as u8 + 1);
                page[..8].copy_from_slice(&(i as u64).to_le_bytes());
            }
        }
        m
    }

    async fn read_all(store: &Store, id: &CheckpointId) -> (Vec<u8>, CheckpointReader) {
        let reader = CheckpointReader::open(store, id, &trust()).await.unwrap();
        let mut out = vec![0xAAu8; reader.manifest().total_bytes() as usize];
        reader.read_all_into(&mut out, 8).await.unwrap();
        (out, reader)
    }

    #[tokio::test]
    async fn relayout_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let mem = memory();
        let (a, b) = mem.split_at(192 * PS);
        let regions = [
            MemoryRegion {
                guest_phys_addr: 0,
                bytes: a,
            },
            MemoryRegion {
                guest_phys_addr: 1 << 30,
                bytes: b,
            },
        ];
        let old = CheckpointId::new("old").unwrap();
        let opts = signed(Some(old.clone()));
        write_checkpoint(&store, &regions, b"vm state".to_vec(), &opts)
            .await
            .unwrap();

        // A trace touching pages of both regions out of physical order; the
        // zero page 3 is named too (it must stay out of the blocks).
        let trace: Vec<u64> = vec![200, 5, 130, 3, 64, 201, 6, 7, 100, 250];
        let layout = thaw_format::layout_from_traces(std::slice::from_ref(&trace));
        let new = CheckpointId::new("new").unwrap();
        let summary = relayout(
            &store,
            &old,
            layout,
            Some(new.clone()),
            &trust(),
            Some(key()),
        )
        .await
        .unwrap();
        assert_eq!(summary.id, new);
        // Only the blocks the layout changed are new: 16 aligned blocks of
        // 16 pages before; the layout's 8 non-zero pages make one block and
        // change the 6 aligned blocks they came from; the other 10 are reused.
        assert_eq!(summary.blocks, 17);
        assert_eq!(summary.reused_blocks, 10);

        let (old_mem, old_reader) = read_all(&store, &old).await;
        let (new_mem, new_reader) = read_all(&store, &new).await;
        assert_eq!(new_mem, mem);
        assert_eq!(old_mem, mem);
        assert_eq!(new_reader.state_blob().unwrap(), b"vm state");
        assert_eq!(new_reader.manifest().parent.as_ref(), Some(&old));
        assert_eq!(
            crate::dirty_log::load_dirty_log(&store, &new)
                .await
                .unwrap(),
            None
        );
        old_reader.verify(8).await.unwrap();
        new_reader.verify(8).await.unwrap();

        // The first block holds the trace's non-zero pages in trace order.
        let first = &new_reader.manifest().blocks[0];
        let pages: Vec<u64> = first.pages.iter().flat_map(|r| r.start..r.end()).collect();
        let expected: Vec<u64> = trace.into_iter().filter(|p| p % 4 != 3).collect();
        assert_eq!(pages, expected);
    }

    #[tokio::test]
    async fn the_dirty_log_goes_with_the_relayout() {
        use thaw_format::{DirtyLog, DirtyWindow};
        let store = Store::open("memory://").unwrap();
        let mem = memory();
        let regions = [MemoryRegion {
            guest_phys_addr: 0,
            bytes: &mem,
        }];
        let log = DirtyLog {
            page_size: PS as u64,
            total_pages: 256,
            windows: vec![DirtyWindow::from_pages(250_000, 0, &[100, 101])],
        };
        let old = crate::dirty_log::write_checkpoint_with_dirty_log(
            &store,
            &regions,
            vec![],
            &signed(None),
            &log,
        )
        .await
        .unwrap()
        .id;
        let new = relayout(&store, &old, vec![6, 5], None, &trust(), Some(key()))
            .await
            .unwrap()
            .id;
        assert_ne!(new, old);
        let loaded = crate::dirty_log::load_dirty_log(&store, &new)
            .await
            .unwrap();
        assert_eq!(loaded, Some(log));
        // The given layout, not the log's, orders the new checkpoint.
        let (_, reader) = read_all(&store, &new).await;
        let first = &reader.manifest().blocks[0];
        let pages: Vec<u64> = first.pages.iter().flat_map(|r| r.start..r.end()).collect();
        assert_eq!(pages, vec![6, 5]);
    }

    #[tokio::test]
    async fn relayout_of_a_missing_checkpoint_or_bad_layout_fails_cleanly() {
        let store = Store::open("memory://").unwrap();
        let missing = CheckpointId::new("nope").unwrap();
        let err = relayout(&store, &missing, vec![], None, &trust(), Some(key()))
            .await
            .unwrap_err();
        assert!(matches!(err, CheckpointError::NotFound { .. }), "{err}");

        let mem = vec![1u8; 4 * PS];
        let old = CheckpointId::new("old").unwrap();
        let regions = [MemoryRegion {
            guest_phys_addr: 0,
            bytes: &mem,
        }];
        let opts = signed(Some(old.clone()));
        write_checkpoint(&store, &regions, vec![], &opts)
            .await
            .unwrap();
        let new = CheckpointId::new("new").unwrap();
        let err = relayout(
            &store,
            &old,
            vec![9],
            Some(new.clone()),
            &trust(),
            Some(key()),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CheckpointError::BadLayout(_)), "{err}");
        // Nothing of the failed write is visible; the old one still reads.
        assert!(matches!(
            CheckpointReader::open(&store, &new, &trust()).await,
            Err(CheckpointError::NotFound { .. })
        ));
        let (old_mem, _) = read_all(&store, &old).await;
        assert_eq!(old_mem, mem);
    }
}
