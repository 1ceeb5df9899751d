//! Which blocks a cold read brings in with the one asked for, free of I/O.
//!
//! Streaming asks for blocks in prefetch order, which is the order they are
//! stored in, so the blocks after a streamed block are about to be asked
//! for too. One ranged read of the run costs the store one request instead
//! of one per block: on an object store, ~20 ms of first-byte latency and a
//! request charge each; on a local directory, a file open and a blocking
//! thread hand-off each. A demand fetch reads its block alone, so the vCPU
//! waiting on it never waits for its neighbours' bytes.

use thaw_format::Manifest;

/// The run read for `block`: it, then the blocks after it (by index) while
/// each lies right after the previous one in the same object and
/// `available(b)` says it is neither cached nor being read; never past the
/// end of its shard of `per_shard` blocks ([`crate::shard`]): with several
/// servers, the next shard is another server's to read.
pub(super) fn read_ahead_run(
    manifest: &Manifest,
    block: u32,
    per_shard: u32,
    mut available: impl FnMut(u32) -> bool,
) -> Vec<u32> {
    let mut run = vec![block];
    let Some(mut last) = manifest.blocks.get(block as usize) else {
        return run;
    };
    for next in block + 1.. {
        let Some(entry) = manifest.blocks.get(next as usize) else {
            break;
        };
        let adjacent = entry.object == last.object && entry.offset == last.offset + last.stored_len;
        if !adjacent || crate::shard::starts_shard(next, per_shard) || !available(next) {
            break;
        }
        run.push(next);
        last = entry;
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_format::{BlockEntry, CheckpointId, Codec, PageRun, Region, StateBlob};

    /// Blocks of 10 stored bytes; `objects[i]` and `offsets[i]` place block i.
    fn manifest(placement: &[(u32, u64)]) -> Manifest {
        let blocks = placement
            .iter()
            .enumerate()
            .map(|(i, &(object, offset))| BlockEntry {
                pages: vec![PageRun {
                    start: i as u64,
                    len: 1,
                }],
                object,
                offset,
                stored_len: 10,
                raw_len: 4096,
                codec: Codec::Lz4,
                hash: [i as u8; 32],
                stored_hash: None,
            })
            .collect();
        Manifest {
            id: CheckpointId::new("ck").unwrap(),
            created_unix_ms: 0,
            parent: None,
            page_size: 4096,
            regions: vec![Region {
                guest_phys_addr: 0,
                size: 4096 * placement.len() as u64,
            }],
            objects: vec!["a".into(), "b".into()],
            blocks,
            zero_pages: vec![],
            prefetch_order: (0..placement.len() as u32).collect(),
            state: StateBlob {
                bytes: vec![],
                hash: *blake3::hash(&[]).as_bytes(),
            },
            encryption: None,
        }
    }

    #[test]
    fn runs_follow_stored_order_and_stop_at_a_gap_another_object_or_a_busy_block() {
        // Blocks 0-2 back to back in object 0; 3 after a gap; 4-5 back to
        // back after it; 6 in object 1.
        let m = manifest(&[(0, 0), (0, 10), (0, 20), (0, 40), (0, 50), (0, 60), (1, 70)]);
        assert_eq!(read_ahead_run(&m, 0, 16, |_| true), vec![0, 1, 2]);
        assert_eq!(read_ahead_run(&m, 2, 16, |_| true), vec![2]);
        assert_eq!(read_ahead_run(&m, 5, 16, |_| true), vec![5]);
        assert_eq!(read_ahead_run(&m, 4, 16, |_| true), vec![4, 5]);
        assert_eq!(read_ahead_run(&m, 0, 16, |b| b != 2), vec![0, 1]);
        // Shards of 0 or 1 are the block alone; an unknown block stays alone.
        assert_eq!(read_ahead_run(&m, 0, 0, |_| true), vec![0]);
        assert_eq!(read_ahead_run(&m, 0, 1, |_| true), vec![0]);
        assert_eq!(read_ahead_run(&m, 9, 16, |_| true), vec![9]);
    }

    #[test]
    fn runs_stop_at_the_end_of_their_shard() {
        let placement: Vec<(u32, u64)> = (0..12).map(|i| (0, i * 10)).collect();
        let m = manifest(&placement);
        assert_eq!(read_ahead_run(&m, 1, 4, |_| true), vec![1, 2, 3]);
        assert_eq!(read_ahead_run(&m, 4, 4, |_| true), vec![4, 5, 6, 7]);
        assert_eq!(read_ahead_run(&m, 0, 2, |_| true), vec![0, 1]);
    }
}
