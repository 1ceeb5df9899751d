//! The eager restore of the benchmark: fetch every block over the link
//! (many requests in flight), verify and decode it into the guest's memory
//! image, and only then let the guest run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fetch_agent::policy::Priority;
use fetch_agent::source::BlockSource;
use futures::StreamExt;
use thaw_format::block_codec::decode_block_into;
use thaw_format::CheckpointId;
use thaw_format::ManifestTrust;
use thaw_store::reader::open_manifest;

/// Requests in flight at once while fetching everything.
pub(crate) const EAGER_CONCURRENCY: usize = 64;

pub(crate) struct EagerFetch {
    pub elapsed: Duration,
    pub requests: u64,
    pub bytes: u64,
}

/// Fetches every block of checkpoint `id` from `source` into a memory image
/// (checked against `expected`, the workload's memory).
pub(crate) async fn fetch_all(
    source: Arc<dyn BlockSource>,
    id: &CheckpointId,
    expected: &[u8],
) -> anyhow::Result<EagerFetch> {
    let started = Instant::now();
    let object = source
        .manifest_object(id)
        .await
        .with_context(|| format!("manifest of {id}"))?;
    // The bench wrote this checkpoint itself.
    let manifest = open_manifest(id, &object, &ManifestTrust::InsecureUnsigned)?.manifest;
    let page_size = manifest.page_size as usize;
    let mut memory = vec![0u8; manifest.total_bytes() as usize];
    let mut fetches = futures::stream::iter(0..manifest.blocks.len() as u32)
        .map(|b| {
            let source = source.clone();
            async move {
                let stored = source.fetch_stored(id, b, Priority::Demand).await;
                (b, stored)
            }
        })
        .buffer_unordered(EAGER_CONCURRENCY);
    let (mut requests, mut bytes) = (0u64, 0u64);
    let mut scratch = Vec::new();
    while let Some((b, stored)) = fetches.next().await {
        let stored = stored.with_context(|| format!("block {b} of {id}"))?;
        requests += 1;
        bytes += stored.len() as u64;
        let entry = &manifest.blocks[b as usize];
        scratch.resize(entry.raw_len as usize, 0);
        // The restore bench's checkpoints are stored in the clear.
        decode_block_into(
            &thaw_format::BlockOpener::Plain,
            entry,
            &stored,
            &mut scratch,
        )
        .with_context(|| format!("block {b} of {id}"))?;
        let mut at = 0;
        for run in &entry.pages {
            let from = run.start as usize * page_size;
            let len = run.len as usize * page_size;
            memory[from..from + len].copy_from_slice(&scratch[at..at + len]);
            at += len;
        }
    }
    let elapsed = started.elapsed();
    if memory != expected {
        bail!("the eagerly restored memory of {id} differs from the workload's");
    }
    Ok(EagerFetch {
        elapsed,
        requests,
        bytes,
    })
}
