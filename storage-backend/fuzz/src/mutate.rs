//! A small deterministic mutation engine: the same seed gives the same
//! inputs on every machine, so a failure in CI reproduces locally. Mutations
//! are the ones that find parser bugs: bit flips, interesting bytes,
//! insertions and deletions, truncation, splices of two inputs, and length
//! or count fields inflated (as LEB128 varints and as little-endian u32/u64).

/// Inputs are kept below this size.
pub const MAX_INPUT: usize = 1 << 16;

/// Bytes that sit on boundaries.
const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, b'"', b'{'];
/// Lengths and counts that overflow or exhaust a careless parser.
const HUGE: [u64; 7] = [
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// xorshift64*: small, fast, good enough to pick mutations.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `input` changed by one to four mutations; `others` are inputs to
    /// splice from.
    pub fn mutate(&mut self, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            self.once(&mut out, others);
        }
        out.truncate(MAX_INPUT);
        out
    }

    fn once(&mut self, out: &mut Vec<u8>, others: &[Vec<u8>]) {
        let at = |m: &mut Self, len: usize| m.below(len.max(1));
        match self.below(9) {
            0 if !out.is_empty() => {
                let i = at(self, out.len());
                out[i] ^= 1 << self.below(8);
            }
            1 if !out.is_empty() => {
                let i = at(self, out.len());
                out[i] = INTERESTING[self.below(INTERESTING.len())];
            }
            2 if !out.is_empty() => {
                let i = at(self, out.len());
                out[i] = self.next() as u8;
            }
            3 => {
                let i = at(self, out.len() + 1);
                let n = 1 + self.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                out.splice(i..i, bytes);
            }
            4 if !out.is_empty() => {
                let i = at(self, out.len());
                let n = (1 + self.below(16)).min(out.len() - i);
                out.drain(i..i + n);
            }
            5 => {
                let keep = at(self, out.len() + 1);
                out.truncate(keep);
            }
            6 if !others.is_empty() => {
                // This input's head, another's tail.
                let other = &others[self.below(others.len())];
                let cut = at(self, out.len() + 1);
                let from = at(self, other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from.min(other.len())..]);
            }
            7 if !out.is_empty() => {
                // A varint-encoded length or count, overwriting what was there.
                let i = at(self, out.len());
                let mut v = HUGE[self.below(HUGE.len())] >> self.below(32);
                let mut varint = Vec::new();
                while v >= 0x80 {
                    varint.push(v as u8 | 0x80);
                    v >>= 7;
                }
                varint.push(v as u8);
                let end = (i + 1).min(out.len());
                out.splice(i..end, varint);
            }
            8 if out.len() >= 4 => {
                // A fixed-width little-endian length, in place.
                let v = HUGE[self.below(HUGE.len())];
                let width = if self.next() & 1 == 0 { 4 } else { 8 };
                let width = width.min(out.len());
                let i = at(self, out.len() - width + 1);
                out[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            _ => {
                if let Some(b) = out.last_mut() {
                    *b = b.wrapping_add(1);
                } else {
                    out.push(self.next() as u8);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs_and_inputs_change() {
        let seed = b"a seed input of some length".to_vec();
        let run = |s| {
            let mut m = Mutator::new(s);
            (0..200)
                .map(|_| m.mutate(&seed, std::slice::from_ref(&seed)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let changed = run(7).iter().filter(|m| **m != seed).count();
        assert!(changed > 180, "{changed} of 200 inputs changed");
        assert!(run(7).iter().all(|m| m.len() <= MAX_INPUT));
    }
}
