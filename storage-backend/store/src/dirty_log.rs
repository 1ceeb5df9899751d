//! A checkpoint's dirty log in a store: written beside the manifest as
//! `checkpoints/ID/dirty-log` (see [`thaw_format::dirty_log`] for why not
//! inside it), read back, and used as the checkpoint's layout when no other
//! is given.

use object_store::{PutMode, PutOptions};

use crate::error::CheckpointError;
use crate::memory::MemoryRegion;
use crate::store::{keys, Store};
use crate::writer::{write_checkpoint, WriteOptions, WriteSummary};
use thaw_format::{layout_from_dirty_windows, CheckpointId, DirtyLog, DirtyLogError};

/// Stores `log` as checkpoint `id`'s dirty log. Create-only: an existing log
/// (a checkpoint of that id, finished or not) is never replaced.
pub async fn write_dirty_log(
    store: &Store,
    id: &CheckpointId,
    log: &DirtyLog,
) -> Result<(), CheckpointError> {
    log.validate()
        .map_err(|source| CheckpointError::BadDirtyLog {
            id: id.clone(),
            source,
        })?;
    let key = keys::dirty_log(id);
    let put = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .object_store()
        .put_opts(&key, log.encode().into(), put)
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(CheckpointError::AlreadyExists {
            id: id.clone(),
            store: store.location().to_owned(),
        }),
        Err(e) => Err(CheckpointError::object(key.as_ref(), e)),
    }
}

/// Checkpoint `id`'s dirty log, or `None` when it was taken without one.
/// Reads only the log object: a log whose manifest is missing belongs to a
/// write that never finished, so callers open the checkpoint first.
pub async fn load_dirty_log(
    store: &Store,
    id: &CheckpointId,
) -> Result<Option<DirtyLog>, CheckpointError> {
    let key = keys::dirty_log(id);
    let bytes = crate::capped_read::read_dirty_log(store, &key).await;
    let bytes = match bytes {
        Ok(b) => b,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(CheckpointError::object(key.as_ref(), e)),
    };
    DirtyLog::decode(&bytes)
        .map(Some)
        .map_err(|source| CheckpointError::BadDirtyLog {
            id: id.clone(),
            source,
        })
}

/// Writes a checkpoint together with the dirty log recorded before it: the
/// log first (so a checkpoint never exists without it; a failed write leaves
/// it behind like its segments, unreachable without a manifest), then memory
/// and state laid out by `opts.layout`, or by the log when `opts.layout` is
/// empty. The id is generated here when `opts.id` is `None`, since the log
/// needs it before the writer runs.
pub async fn write_checkpoint_with_dirty_log(
    store: &Store,
    regions: &[MemoryRegion<'_>],
    state: Vec<u8>,
    opts: &WriteOptions,
    log: &DirtyLog,
) -> Result<WriteSummary, CheckpointError> {
    let id = opts.id.clone().unwrap_or_else(|| {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        CheckpointId::generate(now_ms)
    });
    let total_bytes: u64 = regions.iter().map(|r| r.bytes.len() as u64).sum();
    if log.page_size != opts.page_size || log.total_pages * log.page_size != total_bytes {
        return Err(CheckpointError::BadDirtyLog {
            id,
            source: DirtyLogError::Malformed {
                field: "total_pages",
                reason: format!(
                    "the log covers {} pages of {} bytes, the memory is {total_bytes} bytes in pages of {}",
                    log.total_pages, log.page_size, opts.page_size
                ),
            },
        });
    }
    write_dirty_log(store, &id, log).await?;
    let layout = if opts.layout.is_empty() {
        layout_from_dirty_windows(&log.page_lists())
    } else {
        opts.layout.clone()
    };
    let opts = WriteOptions {
        id: Some(id),
        layout,
        ..opts.clone()
    };
    write_checkpoint(store, regions, state, &opts).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::CheckpointReader;
    use object_store::ObjectStoreExt;
    use thaw_format::{DirtyWindow, ManifestTrust};

    const PS: usize = 4096;

    fn memory(pages: usize) -> Vec<u8> {
        let mut m = vec![0u8; pages * PS];
        for (i, page) in m.chunks_mut(PS).enumerate() {
            page[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        }
        m
    }

    fn log(total_pages: u64) -> DirtyLog {
        DirtyLog {
            page_size: PS as u64,
            total_pages,
            windows: vec![
                DirtyWindow::from_pages(2000, 1000, &[3, 40, 41]),
                DirtyWindow::from_pages(1000, 0, &[41, 60, 61, 62, 63]),
            ],
        }
    }

    #[tokio::test]
    async fn checkpoint_is_laid_out_by_its_dirty_log_and_keeps_it() {
        let store = Store::open("memory://").unwrap();
        let mem = memory(64);
        let regions = [MemoryRegion {
            guest_phys_addr: 0,
            bytes: &mem,
        }];
        let log = log(64);
        let opts = WriteOptions {
            block_pages: 4,
            ..WriteOptions::default()
        };
        let summary = write_checkpoint_with_dirty_log(&store, &regions, vec![1], &opts, &log)
            .await
            .unwrap();
        let reader = CheckpointReader::open(&store, &summary.id, &ManifestTrust::InsecureUnsigned)
            .await
            .unwrap();
        let blocks: Vec<Vec<u64>> = reader
            .manifest()
            .blocks
            .iter()
            .map(|b| b.pages.iter().flat_map(|r| r.start..r.end()).collect())
            .collect();
        // The log's pages (newest window first) are cut into their own blocks; the rest follow
        // at aligned boundaries.
        assert_eq!(blocks[0], vec![41, 60, 61, 62]);
        assert_eq!(blocks[1], vec![63, 3, 40]);
        assert_eq!(blocks[2], vec![0, 1, 2]);
        let mut back = vec![0u8; mem.len()];
        reader.read_all_into(&mut back, 4).await.unwrap();
        assert_eq!(back, mem);
        assert_eq!(
            load_dirty_log(&store, &summary.id).await.unwrap(),
            Some(log)
        );
    }

    #[tokio::test]
    async fn a_given_layout_wins_and_a_missing_log_is_none() {
        let store = Store::open("memory://").unwrap();
        let mem = memory(16);
        let regions = [MemoryRegion {
            guest_phys_addr: 0,
            bytes: &mem,
        }];
        let opts = WriteOptions {
            block_pages: 4,
            layout: vec![9, 8],
            ..WriteOptions::default()
        };
        let mut small = log(64);
        small.total_pages = 16;
        small.windows[0] = DirtyWindow::from_pages(2000, 1000, &[3]);
        small.windows[1] = DirtyWindow::from_pages(1000, 0, &[5]);
        let summary = write_checkpoint_with_dirty_log(&store, &regions, vec![], &opts, &small)
            .await
            .unwrap();
        let reader = CheckpointReader::open(&store, &summary.id, &ManifestTrust::InsecureUnsigned)
            .await
            .unwrap();
        let first = &reader.manifest().blocks[0];
        let pages: Vec<u64> = first.pages.iter().flat_map(|r| r.start..r.end()).collect();
        assert_eq!(pages, vec![9, 8]);

        let plain = crate::writer::write_checkpoint(&store, &regions, vec![], &Default::default())
            .await
            .unwrap();
        assert_eq!(load_dirty_log(&store, &plain.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_log_that_does_not_fit_the_memory_or_an_existing_id_is_refused() {
        let store = Store::open("memory://").unwrap();
        let mem = memory(16);
        let regions = [MemoryRegion {
            guest_phys_addr: 0,
            bytes: &mem,
        }];
        let err = write_checkpoint_with_dirty_log(
            &store,
            &regions,
            vec![],
            &WriteOptions::default(),
            &log(64),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CheckpointError::BadDirtyLog { .. }), "{err}");

        let mut fits = log(16);
        fits.windows[0] = DirtyWindow::from_pages(2000, 1000, &[3]);
        fits.windows[1] = DirtyWindow::from_pages(1000, 0, &[5]);
        let opts = WriteOptions {
            id: Some(CheckpointId::new("one").unwrap()),
            ..WriteOptions::default()
        };
        write_checkpoint_with_dirty_log(&store, &regions, vec![], &opts, &fits)
            .await
            .unwrap();
        let err = write_checkpoint_with_dirty_log(&store, &regions, vec![], &opts, &fits)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CheckpointError::AlreadyExists { .. }),
            "{err}"
        );
        // The first checkpoint's log is untouched.
        assert_eq!(
            load_dirty_log(&store, opts.id.as_ref().unwrap())
                .await
                .unwrap(),
            Some(fits)
        );
    }

    #[tokio::test]
    async fn a_corrupt_log_is_reported_as_such() {
        let store = Store::open("memory://").unwrap();
        let id = CheckpointId::new("c").unwrap();
        store
            .object_store()
            .put(
                &keys::dirty_log(&id),
                b"THAWDLOG garbage garbage garbage garbage".to_vec().into(),
            )
            .await
            .unwrap();
        let err = load_dirty_log(&store, &id).await.unwrap_err();
        assert!(matches!(err, CheckpointError::BadDirtyLog { .. }), "{err}");
    }
}
