//! The block server's memory cache: stored block bytes keyed by their
//! BLAKE3 hash (so checkpoints sharing blocks share entries), bounded in
//! bytes, least recently used out first. No I/O.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

pub(crate) struct BlockCache {
    capacity: u64,
    used: u64,
    tick: u64,
    entries: HashMap<[u8; 32], (Bytes, u64)>,
    /// Last-use tick to key: the first entry is the least recently used.
    by_use: BTreeMap<u64, [u8; 32]>,
}

impl BlockCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&mut self, hash: &[u8; 32]) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (bytes, last) = self.entries.get_mut(hash)?;
        self.by_use.remove(last);
        *last = tick;
        self.by_use.insert(tick, *hash);
        Some(bytes.clone())
    }

    /// Inserts, evicting least recently used entries to stay in capacity. An
    /// entry larger than the whole cache is not kept. Returns how many
    /// entries were evicted.
    pub(crate) fn insert(&mut self, hash: [u8; 32], bytes: Bytes) -> u64 {
        let len = bytes.len() as u64;
        let mut evicted = 0;
        if len > self.capacity || self.entries.contains_key(&hash) {
            return evicted;
        }
        while self.used + len > self.capacity {
            let Some((_, victim)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((b, _)) = self.entries.remove(&victim) {
                self.used -= b.len() as u64;
                evicted += 1;
            }
        }
        self.tick += 1;
        self.by_use.insert(self.tick, hash);
        self.entries.insert(hash, (bytes, self.tick));
        self.used += len;
        evicted
    }

    /// Whether `hash` is cached (without counting as a use).
    pub(crate) fn contains(&self, hash: &[u8; 32]) -> bool {
        self.entries.contains_key(hash)
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.used
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> [u8; 32] {
        [i; 32]
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut c = BlockCache::new(300);
        c.insert(h(1), Bytes::from(vec![0; 100]));
        c.insert(h(2), Bytes::from(vec![0; 100]));
        c.insert(h(3), Bytes::from(vec![0; 100]));
        assert!(c.get(&h(1)).is_some()); // 2 is now the oldest
        assert_eq!(c.insert(h(4), Bytes::from(vec![0; 100])), 1);
        assert!(c.get(&h(2)).is_none());
        assert!(c.get(&h(1)).is_some() && c.get(&h(3)).is_some() && c.get(&h(4)).is_some());
        assert_eq!(c.used_bytes(), 300);
        c.insert(h(5), Bytes::from(vec![0; 1000]));
        assert!(c.get(&h(5)).is_none());
        assert_eq!(c.len(), 3);
    }
}
