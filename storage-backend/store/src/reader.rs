//! Reads a checkpoint back: the manifest, single blocks (one ranged GET
//! each, verified before use), all of memory, and a full verification.
//!
//! An encrypted checkpoint opens without its tenant key (a block server
//! serves and verifies its stored bytes so); decoding a block or reading
//! the state blob then needs the key of the store handle, and says which
//! key is missing or wrong.

use std::sync::Arc;

use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use rayon::prelude::*;

use crate::error::CheckpointError;
use crate::store::{keys, Store};
use thaw_format::block_codec::{decode_block_into, verify_stored, BlockCodecError};
use thaw_format::signature::{self, Verified};
use thaw_format::{
    BlockEntry, BlockOpener, CheckpointId, CryptError, Manifest, ManifestDigest, ManifestTrust,
    PageRun,
};

/// Blocks fetched at once by whole-checkpoint reads.
pub const DEFAULT_READ_CONCURRENCY: usize = 32;
/// Blocks decoded together on all cores by whole-checkpoint reads.
const READ_BATCH: usize = 256;

/// A manifest that passed a [`ManifestTrust`], with the digest of the frame
/// it was decoded from (what a VMM hands its fetch agent).
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    pub digest: ManifestDigest,
    pub verified: Verified,
}

/// Fetches a checkpoint's manifest object and opens it under `trust`.
pub async fn load_manifest(
    store: &Store,
    id: &CheckpointId,
    trust: &ManifestTrust,
) -> Result<VerifiedManifest, CheckpointError> {
    let object = read_manifest_object(store, id).await?;
    open_manifest(id, &object, trust)
}

/// A checkpoint's manifest object as stored, signature section included:
/// what a block server passes on, for its clients to verify.
pub async fn read_manifest_object(
    store: &Store,
    id: &CheckpointId,
) -> Result<Bytes, CheckpointError> {
    let key = keys::manifest(id);
    match crate::capped_read::read_manifest(store, &key).await {
        Ok(b) => Ok(b),
        Err(object_store::Error::NotFound { .. }) => Err(CheckpointError::NotFound {
            id: id.clone(),
            store: store.location().to_owned(),
        }),
        Err(e) => Err(CheckpointError::object(key.as_ref(), e)),
    }
}

/// Opens manifest object bytes from anywhere (the store, a block server):
/// checks the signature or digest under `trust` before decoding, then decodes,
/// validates and checks the id.
pub fn open_manifest(
    id: &CheckpointId,
    object: &[u8],
    trust: &ManifestTrust,
) -> Result<VerifiedManifest, CheckpointError> {
    let untrusted = |source| CheckpointError::Untrusted {
        id: id.clone(),
        source,
    };
    let bad = |source| CheckpointError::BadManifest {
        id: id.clone(),
        source,
    };
    let split = signature::split(object).map_err(untrusted)?;
    let frame = thaw_format::open_frame(split.frame).map_err(bad)?;
    let verified = trust.check(&split).map_err(untrusted)?;
    let manifest = frame.decode().map_err(bad)?;
    if &manifest.id != id {
        return Err(CheckpointError::BadManifest {
            id: id.clone(),
            source: thaw_format::FormatError::BadCheckpointId(manifest.id.to_string()),
        });
    }
    Ok(VerifiedManifest {
        manifest,
        digest: split.digest,
        verified,
    })
}

/// A verified block: its pages (in block order) and their bytes.
#[derive(Debug, Clone)]
pub struct Block {
    pub index: u32,
    pub pages: Vec<PageRun>,
    pub page_size: u64,
    pub data: Bytes,
}

impl Block {
    /// Each page index with its bytes, in block order.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let ps = self.page_size as usize;
        self.pages
            .iter()
            .flat_map(|r| r.start..r.end())
            .zip(self.data.chunks_exact(ps))
    }
}

/// An open checkpoint. Cheap to clone; clones share the manifest.
#[derive(Clone)]
pub struct CheckpointReader {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    manifest: Manifest,
    digest: ManifestDigest,
    verified: Verified,
    object_paths: Vec<Path>,
    /// How blocks are opened, or why they cannot be (no key, wrong key).
    opener: Result<BlockOpener, CryptError>,
    /// The VM state, decrypted when the checkpoint is encrypted.
    state: Result<Vec<u8>, CryptError>,
}

impl CheckpointReader {
    /// Opens checkpoint `id`, whose manifest must pass `trust`.
    pub async fn open(
        store: &Store,
        id: &CheckpointId,
        trust: &ManifestTrust,
    ) -> Result<Self, CheckpointError> {
        Ok(Self::new(store, load_manifest(store, id, trust).await?))
    }

    /// A reader of a manifest already opened (see [`open_manifest`]).
    pub fn new(store: &Store, verified: VerifiedManifest) -> Self {
        let VerifiedManifest {
            manifest,
            digest,
            verified,
        } = verified;
        let object_paths = manifest
            .objects
            .iter()
            .map(|k| Path::from(k.as_str()))
            .collect();
        let opener = BlockOpener::for_manifest(&manifest, store.tenant_keys());
        let state = opener
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|o| o.state(&manifest));
        Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                manifest,
                digest,
                verified,
                object_paths,
                opener,
                state,
            }),
        }
    }

    /// How this checkpoint's blocks are opened; an error naming the tenant
    /// key when the store handle lacks it or has another.
    pub fn opener(&self) -> Result<&BlockOpener, CheckpointError> {
        self.inner.opener.as_ref().map_err(|e| self.crypt_error(e))
    }

    fn crypt_error(&self, source: &CryptError) -> CheckpointError {
        CheckpointError::Encryption {
            id: self.inner.manifest.id.clone(),
            source: source.clone(),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// The digest of the manifest as stored (see [`ManifestDigest`]).
    pub fn digest(&self) -> ManifestDigest {
        self.inner.digest
    }

    /// How the manifest passed its trust check.
    pub fn verified(&self) -> &Verified {
        &self.inner.verified
    }

    /// The VM state blob (its hash was checked when the manifest was
    /// opened; an encrypted one is decrypted and authenticated).
    pub fn state_blob(&self) -> Result<&[u8], CheckpointError> {
        match &self.inner.state {
            Ok(state) => Ok(state),
            Err(e) => Err(self.crypt_error(e)),
        }
    }

    /// Several blocks' stored bytes, in the order asked. The ranges of each
    /// object go to the store in one `get_ranges` call, which merges ranges
    /// lying close together into one request (object_store: gaps under
    /// 1 MiB): blocks stored back to back cost one GET, not one each.
    pub async fn fetch_stored_many(&self, blocks: &[u32]) -> Result<Vec<Bytes>, CheckpointError> {
        let m = &self.inner.manifest;
        // Object -> (positions in `blocks`, byte ranges), objects in first-use order.
        let mut by_object: Vec<(u32, Vec<usize>, Vec<std::ops::Range<u64>>)> = Vec::new();
        for (i, &block) in blocks.iter().enumerate() {
            let entry = m
                .blocks
                .get(block as usize)
                .ok_or(CheckpointError::NoSuchBlock(block))?;
            let range = entry.offset..entry.offset + entry.stored_len;
            match by_object.iter_mut().find(|(o, _, _)| *o == entry.object) {
                Some((_, at, ranges)) => {
                    at.push(i);
                    ranges.push(range);
                }
                None => by_object.push((entry.object, vec![i], vec![range])),
            }
        }
        let mut out = vec![Bytes::new(); blocks.len()];
        for (object, at, ranges) in by_object {
            let path = &self.inner.object_paths[object as usize];
            let got = self
                .inner
                .store
                .object_store()
                .get_ranges(path, &ranges)
                .await
                .map_err(|e| CheckpointError::object(path.as_ref(), e))?;
            for (i, bytes) in at.into_iter().zip(got) {
                out[i] = bytes;
            }
        }
        Ok(out)
    }

    /// The block's stored bytes: exactly one ranged read from the store.
    pub async fn fetch_stored(&self, block: u32) -> Result<Bytes, CheckpointError> {
        let m = &self.inner.manifest;
        let entry = m
            .blocks
            .get(block as usize)
            .ok_or(CheckpointError::NoSuchBlock(block))?;
        let path = &self.inner.object_paths[entry.object as usize];
        self.inner
            .store
            .object_store()
            .get_range(path, entry.offset..entry.offset + entry.stored_len)
            .await
            .map_err(|e| CheckpointError::object(path.as_ref(), e))
    }

    /// Checks stored bytes against the manifest and decodes them.
    pub fn decode(&self, block: u32, stored: &[u8]) -> Result<Block, CheckpointError> {
        let opener = self.opener()?;
        self.check_block(block, |entry| {
            let mut data = vec![0u8; entry.raw_len as usize];
            decode_block_into(opener, entry, stored, &mut data)?;
            Ok(Block {
                index: block,
                pages: entry.pages.clone(),
                page_size: self.inner.manifest.page_size,
                data: data.into(),
            })
        })
    }

    /// Checks one block's stored bytes against the manifest without decoding
    /// them when the manifest allows (see [`verify_stored`]).
    pub fn verify_stored(&self, block: u32, stored: &[u8]) -> Result<(), CheckpointError> {
        self.check_block(block, |entry| verify_stored(entry, stored))
    }

    /// Runs `check` on the block's manifest entry; a refusal becomes a
    /// `BadBlock` naming where the block is stored.
    fn check_block<T>(
        &self,
        block: u32,
        check: impl FnOnce(&BlockEntry) -> Result<T, BlockCodecError>,
    ) -> Result<T, CheckpointError> {
        let m = &self.inner.manifest;
        let entry = m
            .blocks
            .get(block as usize)
            .ok_or(CheckpointError::NoSuchBlock(block))?;
        check(entry).map_err(|source| CheckpointError::BadBlock {
            block,
            key: m.objects[entry.object as usize].clone(),
            offset: entry.offset,
            source,
        })
    }

    /// Fetches, decodes and verifies one block.
    pub async fn fetch_block(&self, block: u32) -> Result<Block, CheckpointError> {
        let stored = self.fetch_stored(block).await?;
        self.decode(block, &stored)
    }

    /// Fetches blocks concurrently, decoding on the runtime's worker threads;
    /// yields them as they complete.
    pub fn fetch_blocks(
        &self,
        blocks: impl IntoIterator<Item = u32>,
        concurrency: usize,
    ) -> impl futures::Stream<Item = Result<Block, CheckpointError>> + '_ {
        let blocks: Vec<u32> = blocks.into_iter().collect();
        stream::iter(blocks)
            .map(move |b| {
                let reader = self.clone();
                async move {
                    tokio::spawn(async move { reader.fetch_block(b).await })
                        .await
                        .map_err(|e| CheckpointError::Task(e.to_string()))?
                }
            })
            .buffer_unordered(concurrency.max(1))
    }

    /// Reads all of guest memory into `dest` (the regions concatenated).
    /// Stored bytes are fetched `concurrency` at a time; each batch is then
    /// decoded and verified on all cores straight into its place in `dest`.
    /// On error `dest` holds partial data and must not be used.
    pub async fn read_all_into(
        &self,
        dest: &mut [u8],
        concurrency: usize,
    ) -> Result<(), CheckpointError> {
        let m = self.manifest();
        self.opener()?;
        if dest.len() as u64 != m.total_bytes() {
            return Err(CheckpointError::DestinationSize {
                expected: m.total_bytes(),
                got: dest.len() as u64,
            });
        }
        let ps = m.page_size as usize;
        for run in &m.zero_pages {
            dest[run.start as usize * ps..run.end() as usize * ps].fill(0);
        }
        let mut fetched = stream::iter(m.prefetch_order.iter().copied())
            .map(|b| async move { self.fetch_stored(b).await.map(|s| (b, s)) })
            .buffer_unordered(concurrency.max(1));
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            let next = fetched.try_next().await?;
            let done = next.is_none();
            batch.extend(next);
            if batch.len() == READ_BATCH || (done && !batch.is_empty()) {
                crate::cpu::run_cpu(|| self.decode_batch_into(&batch, dest))?;
                batch.clear();
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Decodes blocks in parallel into their pages of `dest`. Blocks own
    /// disjoint pages (the manifest is validated), so `dest` is carved into
    /// one slice per run without overlap.
    fn decode_batch_into(
        &self,
        batch: &[(u32, Bytes)],
        dest: &mut [u8],
    ) -> Result<(), CheckpointError> {
        let m = self.manifest();
        let opener = self.opener()?;
        let ps = m.page_size as usize;
        let mut runs: Vec<(u64, u64, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, (b, _))| {
                m.blocks[*b as usize]
                    .pages
                    .iter()
                    .map(move |r| (r.start, r.len, i))
            })
            .collect();
        runs.sort_unstable_by_key(|r| r.0);
        let mut slices: Vec<Vec<(u64, &mut [u8])>> = (0..batch.len()).map(|_| Vec::new()).collect();
        let mut rest = dest;
        let mut offset = 0usize;
        for (start, len, i) in runs {
            let at = start as usize * ps - offset;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(at);
            let (slice, tail) = tail.split_at_mut(len as usize * ps);
            slices[i].push((start, slice));
            rest = tail;
            offset = (start + len) as usize * ps;
        }
        batch
            .par_iter()
            .zip(slices.par_iter_mut())
            .try_for_each(|((b, stored), parts)| {
                let entry = &m.blocks[*b as usize];
                let bad = |source| CheckpointError::BadBlock {
                    block: *b,
                    key: m.objects[entry.object as usize].clone(),
                    offset: entry.offset,
                    source,
                };
                if let [(_, only)] = parts.as_mut_slice() {
                    return decode_block_into(opener, entry, stored, only).map_err(bad);
                }
                let mut raw = vec![0u8; entry.raw_len as usize];
                decode_block_into(opener, entry, stored, &mut raw).map_err(bad)?;
                // Runs in block order, each to its slice.
                let mut at = 0;
                for run in &entry.pages {
                    let (_, slice) = parts
                        .iter_mut()
                        .find(|(start, _)| *start == run.start)
                        .expect("every run was given a slice");
                    let n = slice.len();
                    slice.copy_from_slice(&raw[at..at + n]);
                    at += n;
                }
                Ok(())
            })
    }

    /// Fetches and hash-checks every block. Returns the number of blocks and
    /// stored bytes checked, or the error of the first bad block in block order.
    pub async fn verify(&self, concurrency: usize) -> Result<VerifyReport, CheckpointError> {
        let m = self.manifest();
        self.state_blob()?;
        let results: Vec<(u32, Result<(), CheckpointError>)> =
            stream::iter(0..m.blocks.len() as u32)
                .map(|b| {
                    let reader = self.clone();
                    async move {
                        let r = tokio::spawn(async move { reader.fetch_block(b).await.map(drop) })
                            .await
                            .map_err(|e| CheckpointError::Task(e.to_string()))
                            .and_then(|r| r);
                        (b, r)
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        let first_bad = results
            .into_iter()
            .filter_map(|(b, r)| r.err().map(|e| (b, e)))
            .min_by_key(|(b, _)| *b);
        match first_bad {
            Some((_, e)) => Err(e),
            None => Ok(VerifyReport {
                blocks: m.blocks.len(),
                stored_bytes: m.stored_bytes(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct VerifyReport {
    pub blocks: usize,
    pub stored_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{write_checkpoint, MemoryRegion, WriteOptions};
    use thaw_format::signature::{self, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    async fn write(
        store: &Store,
        id: &str,
        opts: WriteOptions,
    ) -> Result<CheckpointId, CheckpointError> {
        let memory: Vec<u8> = (0..64 * 4096).map(|i| (i / 4096) as u8 | 1).collect();
        let regions = [MemoryRegion {
            guest_phys_addr: 0,
            bytes: &memory,
        }];
        let opts = WriteOptions {
            id: Some(CheckpointId::new(id).unwrap()),
            ..opts
        };
        Ok(write_checkpoint(store, &regions, b"state".to_vec(), &opts)
            .await?
            .id)
    }

    #[tokio::test]
    async fn manifests_open_only_under_a_trust_they_pass() {
        let store = Store::open("memory://").unwrap();
        let signed = WriteOptions {
            signing_key: Some(key(1)),
            ..WriteOptions::default()
        };
        let id = write(&store, "signed", signed.clone()).await.unwrap();
        let trusted = ManifestTrust::Keys(vec![key(1).verifying_key()]);
        let reader = CheckpointReader::open(&store, &id, &trusted).await.unwrap();
        assert_eq!(
            reader.verified(),
            &Verified::SignedBy(key(1).verifying_key())
        );
        let object = read_manifest_object(&store, &id).await.unwrap();
        assert_eq!(reader.digest(), signature::split(&object).unwrap().digest);
        // The digest pins exactly this manifest.
        CheckpointReader::open(&store, &id, &ManifestTrust::Digest(reader.digest()))
            .await
            .unwrap();

        let other = ManifestTrust::Keys(vec![key(2).verifying_key()]);
        let err = CheckpointReader::open(&store, &id, &other)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, CheckpointError::Untrusted { .. }), "{err}");

        let unsigned = write(&store, "unsigned", WriteOptions::default())
            .await
            .unwrap();
        let err = CheckpointReader::open(&store, &unsigned, &trusted)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not signed"), "{err}");
        CheckpointReader::open(&store, &unsigned, &ManifestTrust::InsecureUnsigned)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_child_dedups_only_against_a_trusted_parent() {
        let store = Store::open("memory://").unwrap();
        let parent = write(&store, "parent", WriteOptions::default())
            .await
            .unwrap();
        // Unsigned parent, signing child: the parent's blocks are not taken on trust.
        let child = WriteOptions {
            parent: Some(parent.clone()),
            signing_key: Some(key(1)),
            ..WriteOptions::default()
        };
        let err = write(&store, "child", child.clone()).await.unwrap_err();
        assert!(matches!(err, CheckpointError::Untrusted { .. }), "{err}");
        // A parent signed by the writer's own key is trusted without saying so.
        let signed_parent = write(
            &store,
            "signed-parent",
            WriteOptions {
                signing_key: Some(key(1)),
                ..WriteOptions::default()
            },
        )
        .await
        .unwrap();
        let child = WriteOptions {
            parent: Some(signed_parent),
            ..child
        };
        write(&store, "child", child).await.unwrap();
    }
}
