//! Which block server is a block's home, free of I/O: rendezvous
//! (highest-random-weight) hashing of the block's shard key over the servers.
//!
//! Every server gets a weight for every key (a hash of the two); the servers
//! ranked by weight, highest first, are the order to ask them in: the home,
//! then the second choice, then the rest. Every agent with the same server
//! list ranks the same way, so the tier's caches hold each block about once.
//! Removing a server moves only the keys it was home of (each to its second
//! choice): the others' rankings keep their relative order.
//!
//! Blocks are sharded in aligned groups of consecutive blocks by index
//! ([`shard_blocks`] of them, from the checkpoint's size, which agents and
//! servers both know): a block server's read-ahead (one store read for a
//! run of neighbouring blocks) stops at a group's end, so a server reads
//! only groups it is asked for, not its neighbours' share.

use thaw_format::Manifest;

/// Most blocks of one shard: 1 MiB of 64 KiB blocks, which object stores
/// serve at full rate.
pub const MAX_SHARD_BLOCKS: u32 = 16;

/// Fewest blocks of one shard, so a store read brings in more than one.
pub const MIN_SHARD_BLOCKS: u32 = 2;

/// Shards a checkpoint is cut into at least (when its size allows): a
/// server's share of `n` random shards varies by about `sqrt(n)`, so 512
/// keeps each of 3 servers within ~15% of an even share.
pub const MIN_SHARDS: u32 = 512;

/// Blocks per shard of a checkpoint of `blocks` blocks: as many as keep at
/// least [`MIN_SHARDS`] shards, within the bounds above.
pub fn shard_blocks(blocks: usize) -> u32 {
    let per = u32::try_from(blocks).unwrap_or(u32::MAX) / MIN_SHARDS;
    per.clamp(MIN_SHARD_BLOCKS, MAX_SHARD_BLOCKS)
}

/// The first block of `block`'s shard, with `per_shard` blocks per shard.
pub fn shard_start(block: u32, per_shard: u32) -> u32 {
    block - block % per_shard.max(1)
}

/// Whether `block` starts a shard (a read-ahead run stops before it).
pub fn starts_shard(block: u32, per_shard: u32) -> bool {
    block.is_multiple_of(per_shard.max(1))
}

/// The key `block` of `manifest` is sharded by: the content hash of its
/// shard's first block (content, not position, so checkpoints sharing
/// blocks share homes). `None` for a block the manifest does not have.
pub fn shard_key(manifest: &Manifest, block: u32) -> Option<[u8; 32]> {
    let per_shard = shard_blocks(manifest.blocks.len());
    manifest
        .blocks
        .get(shard_start(block, per_shard) as usize)
        .map(|e| e.hash)
}

/// The key a checkpoint's manifest is sharded by: its id's BLAKE3 hash.
pub fn manifest_key(checkpoint: &thaw_format::CheckpointId) -> [u8; 32] {
    *blake3::hash(checkpoint.as_str().as_bytes()).as_bytes()
}

/// `server`'s weight for `key`: the first 8 bytes of BLAKE3 of both.
pub fn weight(server: &str, key: &[u8; 32]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(key);
    h.update(server.as_bytes());
    let out = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

/// Indices into `servers` (their names, as every agent spells them) in the
/// order to ask them for `key`: highest weight first. Ties (equal names)
/// keep list order.
pub fn rank<S: AsRef<str>>(servers: &[S], key: &[u8; 32]) -> Vec<usize> {
    let weights: Vec<u64> = servers.iter().map(|s| weight(s.as_ref(), key)).collect();
    let mut order: Vec<usize> = (0..servers.len()).collect();
    order.sort_by(|&a, &b| weights[b].cmp(&weights[a]).then(a.cmp(&b)));
    order
}

/// The home of `key` among `servers`: the index of the highest weight.
pub fn home<S: AsRef<str>>(servers: &[S], key: &[u8; 32]) -> Option<usize> {
    rank(servers, key).first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<[u8; 32]> {
        // Random-looking keys, as block hashes are.
        (0..n as u64)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect()
    }

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:4433", i + 1)).collect()
    }

    #[test]
    fn each_server_is_home_to_about_an_even_share() {
        for n in [2, 3, 5, 8] {
            let servers = servers(n);
            let mut homed = vec![0usize; n];
            let keys = keys(10_000);
            for k in &keys {
                homed[home(&servers, k).expect("servers")] += 1;
            }
            let even = keys.len() as f64 / n as f64;
            for (i, &c) in homed.iter().enumerate() {
                let share = c as f64 / even;
                assert!(
                    (0.93..=1.07).contains(&share),
                    "{n} servers: server {i} is home of {c} keys ({share:.3} of an even share)"
                );
            }
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys_to_their_second_choice() {
        let all = servers(4);
        let keys = keys(10_000);
        let lost = 2;
        let left: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != lost)
            .map(|(_, s)| s.clone())
            .collect();
        let mut moved = 0;
        for k in &keys {
            let before = rank(&all, k);
            let after = home(&left, k).map(|i| left[i].clone()).expect("servers");
            if before[0] == lost {
                moved += 1;
                assert_eq!(after, all[before[1]], "goes to its second choice");
            } else {
                assert_eq!(after, all[before[0]], "keeps its home");
            }
        }
        assert!(moved > 2000 && moved < 3000, "{moved} of 10000 moved");
        // And adding it back moves exactly those keys home again.
        let back: usize = keys
            .iter()
            .filter(|k| home(&all, k) != home(&left, k).map(|i| if i >= lost { i + 1 } else { i }))
            .count();
        assert_eq!(back, moved);
    }

    #[test]
    fn rankings_are_complete_and_agree_across_list_orders() {
        let a = servers(5);
        let mut b = a.clone();
        b.reverse();
        for k in keys(100) {
            let ra: Vec<&String> = rank(&a, &k).into_iter().map(|i| &a[i]).collect();
            let rb: Vec<&String> = rank(&b, &k).into_iter().map(|i| &b[i]).collect();
            assert_eq!(ra, rb);
            assert_eq!(ra.len(), 5);
        }
        assert_eq!(home::<String>(&[], &[0; 32]), None);
    }

    #[test]
    fn shards_are_aligned_groups_sized_by_the_checkpoint() {
        assert_eq!(shard_start(0, 4), 0);
        assert_eq!(shard_start(3, 4), 0);
        assert_eq!(shard_start(4, 4), 4);
        assert!(starts_shard(8, 4) && !starts_shard(9, 4));
        assert_eq!(shard_start(5, 0), 5, "a bound of 0 is single blocks");
        assert_eq!(shard_blocks(0), MIN_SHARD_BLOCKS);
        assert_eq!(shard_blocks(1024), MIN_SHARD_BLOCKS);
        assert_eq!(shard_blocks(512 * 5), 5);
        assert_eq!(shard_blocks(1 << 20), MAX_SHARD_BLOCKS);
    }
}
