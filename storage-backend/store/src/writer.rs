//! Writes guest memory and VM state as a checkpoint.
//!
//! Steps: find zero pages; plan blocks from the layout; hash and compress
//! blocks on all cores; pack them into segment objects; upload segments with
//! bounded concurrency (multipart when large); write the manifest last, with
//! a create-only put, so readers never see a half-written checkpoint.
//!
//! Why segments (many blocks per object, read back by byte range) rather than
//! one object per block: a 4 GiB VM has ~65 000 blocks of 64 KiB, and object
//! stores charge and throttle per request; a PUT per block would cost more
//! than the storage and make checkpoints slow to write. A ranged GET of a
//! segment costs the same as a GET of a small object, so readers lose
//! nothing, and dedup stays per block because a block entry may point into
//! any object, including a parent checkpoint's segments.
//!
//! Encryption: when the store handle has a tenant key, blocks are hashed
//! with the tenant's keyed hash and encrypted after compression, and the
//! state blob is sealed, before anything leaves this host. Dedup against a
//! parent then works only when the parent was written with the same key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use rayon::prelude::*;
use tokio::task::JoinSet;

use crate::error::CheckpointError;
use crate::memory::{MemoryRegion, MemoryView};
use crate::reader::load_manifest;
use crate::store::{keys, Store};
use thaw_format::block_codec::{block_hash, encode_block_with_hash};
use thaw_format::signature::{self, SigningKey};
use thaw_format::{
    self, is_zero_page, plan_blocks, BlockEntry, CheckpointId, Codec, Manifest, ManifestDigest,
    ManifestTrust, PageRun, StateBlob, TenantKeys,
};

#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// The checkpoint's id; generated from the time when absent.
    pub id: Option<CheckpointId>,
    /// Blocks whose hash exists in this checkpoint are not uploaded again.
    pub parent: Option<CheckpointId>,
    pub page_size: u64,
    /// Pages per block at most (16 = 64 KiB of 4 KiB pages).
    pub block_pages: u64,
    /// Preferred page order; pages it omits follow in physical order.
    pub layout: Vec<u64>,
    /// A segment object is closed once it holds this many bytes.
    pub segment_bytes: usize,
    /// Segments above this size go up as multipart uploads in parts of it.
    pub multipart_part_bytes: usize,
    /// Uploads in flight at once.
    pub upload_concurrency: usize,
    /// Signs the manifest; `None` writes an unsigned checkpoint, which readers
    /// accept only when told to.
    pub signing_key: Option<SigningKey>,
    /// What the parent's manifest must pass before its blocks are reused (the
    /// signing key's own public key is trusted too). By default nothing: a
    /// write with a parent needs a trusted key.
    pub parent_trust: ManifestTrust,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            id: None,
            parent: None,
            page_size: 4096,
            // 64 KiB: a uffd install of 64 KiB costs ~5x one of 4 KiB here,
            // so a block pays off once a fault's neighbours are used at all.
            block_pages: 16,
            layout: Vec::new(),
            // 64 MiB objects in 16 MiB parts: few requests per checkpoint,
            // parts well above S3's 5 MiB minimum.
            segment_bytes: 64 << 20,
            multipart_part_bytes: 16 << 20,
            upload_concurrency: 8,
            signing_key: None,
            parent_trust: ManifestTrust::Keys(Vec::new()),
        }
    }
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct WriteSummary {
    pub id: CheckpointId,
    /// The digest of the manifest written (see [`ManifestDigest`]).
    pub digest: ManifestDigest,
    /// Whether the manifest was signed.
    pub signed: bool,
    pub total_pages: u64,
    pub zero_pages: u64,
    pub blocks: usize,
    /// Blocks found in the parent checkpoint and not uploaded.
    pub reused_blocks: usize,
    /// Bytes of the non-zero pages.
    pub raw_bytes: u64,
    /// Bytes of all blocks as stored (reused ones included).
    pub stored_bytes: u64,
    /// Bytes this write uploaded (segments and manifest).
    pub uploaded_bytes: u64,
    pub segments: usize,
    /// For an incremental write: its parent and what it wrote of the parent's pages.
    pub incremental: Option<IncrementalStats>,
}

/// Where a block's stored bytes already are, in a parent checkpoint.
#[derive(Clone)]
struct ExistingBlock {
    key: String,
    offset: u64,
    stored_len: u64,
    codec: Codec,
    stored_hash: Option<[u8; 32]>,
}

enum PreparedBlock {
    New(thaw_format::EncodedBlock),
    Existing(ExistingBlock, [u8; 32]),
}

pub async fn write_checkpoint(
    store: &Store,
    regions: &[MemoryRegion<'_>],
    state: Vec<u8>,
    opts: &WriteOptions,
) -> Result<WriteSummary, CheckpointError> {
    let target = NewCheckpoint::begin(store, regions, opts).await?;
    let keys = store.tenant_keys().map(|k| k.as_ref());
    let existing = match &opts.parent {
        Some(parent) => {
            let trust = parent_trust(opts);
            existing_blocks(store, parent, &trust, keys).await?
        }
        None => HashMap::new(),
    };

    let started = std::time::Instant::now();
    let zero = crate::cpu::run_cpu(|| find_zero_pages(&target.view));
    tracing::debug!(zero_scan = ?started.elapsed(), "zero pages found");
    let plan = plan_blocks(&opts.layout, &zero, opts.block_pages)?;
    let planned = Planned {
        new_blocks: plan,
        kept: Vec::new(),
        zero,
        existing,
        incremental: None,
    };
    target.write(store, state, opts, planned).await
}

/// What the parent's manifest must pass before anything of it is reused.
pub(crate) fn parent_trust(opts: &WriteOptions) -> ManifestTrust {
    match &opts.signing_key {
        Some(key) => opts.parent_trust.with_key(key.verifying_key()),
        None => opts.parent_trust.clone(),
    }
}

/// A checkpoint about to be written: its id is free in the store and its memory is valid.
pub(crate) struct NewCheckpoint<'a> {
    pub(crate) id: CheckpointId,
    created_unix_ms: u64,
    regions: &'a [MemoryRegion<'a>],
    pub(crate) view: MemoryView<'a>,
}

/// What a write puts in its manifest besides the new blocks' contents.
pub(crate) struct Planned {
    /// Blocks to encode and upload, each a list of page runs.
    pub(crate) new_blocks: Vec<Vec<PageRun>>,
    /// Blocks kept from an ancestor as they are: the entry (its `object` is ignored) and the
    /// store-relative key of the object holding it.
    pub(crate) kept: Vec<(BlockEntry, String)>,
    /// Per page: all zero, in no block.
    pub(crate) zero: Vec<bool>,
    /// Blocks reused by hash when a new block turns out to exist already.
    existing: HashMap<[u8; 32], ExistingBlock>,
    pub(crate) incremental: Option<IncrementalStats>,
}

impl Planned {
    /// A plan reusing nothing by hash (an incremental write knows what is unchanged already).
    pub(crate) fn without_hash_reuse(
        new_blocks: Vec<Vec<PageRun>>,
        kept: Vec<(BlockEntry, String)>,
        zero: Vec<bool>,
        incremental: IncrementalStats,
    ) -> Planned {
        Planned {
            new_blocks,
            kept,
            zero,
            existing: HashMap::new(),
            incremental: Some(incremental),
        }
    }
}

/// What an incremental write did besides a full one's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalStats {
    pub parent: CheckpointId,
    /// Pages written by the guest since the parent.
    pub dirty_pages: u64,
    /// Unwritten pages read again because a page of their parent block was written (the block
    /// is re-packed whole, since an entry cannot point into part of a block).
    pub repacked_clean_pages: u64,
    /// The parent's blocks pointed at as they are.
    pub kept_blocks: usize,
}

impl<'a> NewCheckpoint<'a> {
    pub(crate) async fn begin(
        store: &Store,
        regions: &'a [MemoryRegion<'a>],
        opts: &WriteOptions,
    ) -> Result<NewCheckpoint<'a>, CheckpointError> {
        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let id = opts
            .id
            .clone()
            .unwrap_or_else(|| CheckpointId::generate(created_unix_ms));
        let view = MemoryView::new(regions, opts.page_size).map_err(CheckpointError::BadMemory)?;
        if store
            .object_store()
            .head(&keys::manifest(&id))
            .await
            .is_ok()
        {
            return Err(CheckpointError::AlreadyExists {
                id,
                store: store.location().to_owned(),
            });
        }
        Ok(NewCheckpoint {
            id,
            created_unix_ms,
            regions,
            view,
        })
    }

    /// Encodes and uploads the new blocks, then writes the manifest.
    pub(crate) async fn write(
        self,
        store: &Store,
        state: Vec<u8>,
        opts: &WriteOptions,
        planned: Planned,
    ) -> Result<WriteSummary, CheckpointError> {
        let NewCheckpoint {
            id,
            created_unix_ms,
            regions,
            view,
        } = self;
        let manifest_key = keys::manifest(&id);
        let os = store.object_store().clone();
        let keys = store.tenant_keys().map(|k| k.as_ref());
        let Planned {
            new_blocks: plan,
            kept,
            zero,
            existing,
            incremental,
        } = planned;

        let mut packer = SegmentPacker::new(id.clone(), os.clone(), opts);
        // Encode in batches of about one segment of raw bytes, so memory use stays
        // bounded and uploads of one batch overlap the encoding of the next.
        let batch_blocks =
            (opts.segment_bytes as u64 / (opts.block_pages * opts.page_size)).max(1) as usize;
        let mut blocks = Vec::with_capacity(plan.len() + kept.len());
        let mut encoding = std::time::Duration::ZERO;
        for batch in plan.chunks(batch_blocks) {
            let t = std::time::Instant::now();
            let prepared = crate::cpu::run_cpu(|| prepare_blocks(&view, batch, &existing, keys));
            encoding += t.elapsed();
            for (pages, block) in batch.iter().zip(prepared) {
                blocks.push(packer.add(pages.clone(), block).await?);
            }
        }
        let t = std::time::Instant::now();
        packer.finish().await?;
        tracing::debug!(?encoding, upload_tail = ?t.elapsed(), "checkpoint write phases");
        for (entry, key) in kept {
            packer.reused += 1;
            blocks.push(BlockEntry {
                object: packer.object(&key),
                ..entry
            });
        }

        let zero_pages =
            thaw_format::layout::runs_of((0..view.total_pages()).filter(|&p| zero[p as usize]));
        let manifest = Manifest {
            id: id.clone(),
            created_unix_ms,
            parent: opts.parent.clone(),
            page_size: opts.page_size,
            regions: MemoryView::describe(regions),
            objects: packer.objects,
            prefetch_order: (0..blocks.len() as u32).collect(),
            blocks,
            zero_pages,
            state: StateBlob::new(match keys {
                Some(k) => k.seal_state(&id, &state),
                None => state,
            }),
            encryption: keys.map(TenantKeys::encryption),
        };
        manifest
            .validate()
            .map_err(|source| CheckpointError::BadManifest {
                id: id.clone(),
                source,
            })?;
        let frame = thaw_format::encode(&manifest);
        let digest = ManifestDigest::of(&frame);
        let encoded = match &opts.signing_key {
            Some(key) => signature::sign(&frame, key),
            None => frame,
        };
        let manifest_len = encoded.len() as u64;
        let put = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match os.put_opts(&manifest_key, encoded.into(), put).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(CheckpointError::AlreadyExists {
                    id,
                    store: store.location().to_owned(),
                })
            }
            Err(e) => return Err(CheckpointError::object(manifest_key.as_ref(), e)),
        }
        let zero_count = zero.iter().filter(|&&z| z).count() as u64;
        let summary = WriteSummary {
            id,
            digest,
            signed: opts.signing_key.is_some(),
            total_pages: view.total_pages(),
            zero_pages: zero_count,
            blocks: manifest.blocks.len(),
            reused_blocks: packer.reused,
            raw_bytes: (view.total_pages() - zero_count) * opts.page_size,
            stored_bytes: manifest.stored_bytes(),
            uploaded_bytes: packer.uploaded_bytes + manifest_len,
            segments: packer.segments,
            incremental,
        };
        tracing::info!(
            id = %summary.id, blocks = summary.blocks, reused = summary.reused_blocks,
            stored = summary.stored_bytes, uploaded = summary.uploaded_bytes,
            segments = summary.segments, "checkpoint written"
        );
        Ok(summary)
    }
}

fn find_zero_pages(view: &MemoryView<'_>) -> Vec<bool> {
    (0..view.total_pages() as usize)
        .into_par_iter()
        .with_min_len(1024)
        .map(|p| is_zero_page(view.page(p as u64)))
        .collect()
}

fn prepare_blocks(
    view: &MemoryView<'_>,
    batch: &[Vec<PageRun>],
    existing: &HashMap<[u8; 32], ExistingBlock>,
    keys: Option<&TenantKeys>,
) -> Vec<PreparedBlock> {
    batch
        .par_iter()
        .map(|runs| {
            let gathered;
            let raw: &[u8] = match runs.as_slice() {
                [run] if view.run(run).is_some() => view.run(run).expect("checked"),
                _ => {
                    gathered = view.gather(runs);
                    &gathered
                }
            };
            let hash = block_hash(keys, raw);
            match existing.get(&hash) {
                Some(found) => PreparedBlock::Existing(found.clone(), hash),
                None => PreparedBlock::New(encode_block_with_hash(raw, hash, keys)),
            }
        })
        .collect()
}

/// The parent's blocks by hash, if they can stand in for this write's: the
/// parent was written with the same tenant key, or both are in the clear.
async fn existing_blocks(
    store: &Store,
    parent: &CheckpointId,
    trust: &ManifestTrust,
    keys: Option<&TenantKeys>,
) -> Result<HashMap<[u8; 32], ExistingBlock>, CheckpointError> {
    let m = load_manifest(store, parent, trust).await?.manifest;
    let ours = keys.map(TenantKeys::encryption);
    if m.encryption != ours {
        tracing::info!(
            %parent,
            "parent is encrypted differently (or not at all): no block is reused from it"
        );
        return Ok(HashMap::new());
    }
    Ok(m.blocks
        .iter()
        .map(|b| {
            let found = ExistingBlock {
                key: m.objects[b.object as usize].clone(),
                offset: b.offset,
                stored_len: b.stored_len,
                codec: b.codec,
                stored_hash: b.stored_hash,
            };
            (b.hash, found)
        })
        .collect())
}

/// Packs new blocks into segment objects and uploads full segments in the
/// background, with a bound on uploads in flight.
struct SegmentPacker {
    id: CheckpointId,
    store: Arc<dyn ObjectStore>,
    page_size: u64,
    segment_bytes: usize,
    part_bytes: usize,
    concurrency: usize,
    objects: Vec<String>,
    object_index: HashMap<String, u32>,
    /// The open segment's blocks, uploaded as one object without concatenating.
    current: Vec<Bytes>,
    current_len: u64,
    current_object: Option<u32>,
    uploads: JoinSet<Result<u64, CheckpointError>>,
    segments: usize,
    reused: usize,
    uploaded_bytes: u64,
}

impl SegmentPacker {
    fn new(id: CheckpointId, store: Arc<dyn ObjectStore>, opts: &WriteOptions) -> Self {
        Self {
            id,
            store,
            page_size: opts.page_size,
            segment_bytes: opts.segment_bytes.max(1),
            part_bytes: opts.multipart_part_bytes.max(5 << 20),
            concurrency: opts.upload_concurrency.max(1),
            objects: Vec::new(),
            object_index: HashMap::new(),
            current: Vec::new(),
            current_len: 0,
            current_object: None,
            uploads: JoinSet::new(),
            segments: 0,
            reused: 0,
            uploaded_bytes: 0,
        }
    }

    fn object(&mut self, key: &str) -> u32 {
        if let Some(&i) = self.object_index.get(key) {
            return i;
        }
        let i = self.objects.len() as u32;
        self.objects.push(key.to_owned());
        self.object_index.insert(key.to_owned(), i);
        i
    }

    async fn add(
        &mut self,
        pages: Vec<PageRun>,
        block: PreparedBlock,
    ) -> Result<BlockEntry, CheckpointError> {
        match block {
            PreparedBlock::Existing(found, hash) => {
                self.reused += 1;
                let object = self.object(&found.key);
                Ok(BlockEntry {
                    raw_len: pages.iter().map(|r| r.len).sum::<u64>() * self.page_size,
                    pages,
                    object,
                    offset: found.offset,
                    stored_len: found.stored_len,
                    codec: found.codec,
                    hash,
                    stored_hash: found.stored_hash,
                })
            }
            PreparedBlock::New(enc) => {
                let object = match self.current_object {
                    Some(o) => o,
                    None => {
                        let key = keys::segment(&self.id, self.segments);
                        self.segments += 1;
                        let o = self.object(&key);
                        self.current_object = Some(o);
                        o
                    }
                };
                let entry = enc.entry(pages, object, self.current_len);
                self.current_len += enc.stored.len() as u64;
                self.current.push(Bytes::from(enc.stored));
                if self.current_len >= self.segment_bytes as u64 {
                    self.flush().await?;
                }
                Ok(entry)
            }
        }
    }

    async fn flush(&mut self) -> Result<(), CheckpointError> {
        let Some(object) = self.current_object.take() else {
            return Ok(());
        };
        while self.uploads.len() >= self.concurrency {
            self.join_one().await?;
        }
        let key = self.objects[object as usize].clone();
        let data = std::mem::take(&mut self.current);
        self.current_len = 0;
        let store = self.store.clone();
        let part = self.part_bytes;
        self.uploads.spawn(upload(store, key, data, part));
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), CheckpointError> {
        match self.uploads.join_next().await {
            Some(Ok(Ok(n))) => {
                self.uploaded_bytes += n;
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(CheckpointError::Task(e.to_string())),
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<(), CheckpointError> {
        self.flush().await?;
        while !self.uploads.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

async fn upload(
    store: Arc<dyn ObjectStore>,
    key: String,
    chunks: Vec<Bytes>,
    part_bytes: usize,
) -> Result<u64, CheckpointError> {
    let path = Path::from(key.as_str());
    let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let result = if len > part_bytes as u64 {
        async {
            let upload = store.put_multipart(&path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes);
            for chunk in chunks {
                writer.put(chunk);
            }
            writer.finish().await
        }
        .await
    } else {
        store.put(&path, PutPayload::from_iter(chunks)).await
    };
    result.map_err(|e| CheckpointError::object(&key, e))?;
    Ok(len)
}
