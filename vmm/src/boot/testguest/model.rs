//! The host-side model of the test guest: what a run must end with, computed independently of
//! the guest (the same algorithms as guest/guest.c), so tests can check a run against it.

use super::{Params, Pattern, AREA_START};

/// Computes on the host what vCPU `cpu` of the test guest ends with: the same algorithm as
/// guest/guest.c over a zeroed data area, so tests can check a run against an independent model.
pub fn model_checksum(params: &Params, area_size: u64, ncpus: u32, cpu: u32) -> u64 {
    let slice = (area_size / ncpus as u64) & !0xfff;
    let pages = slice >> 12;
    let mut sum = 0x9e37_79b9_7f4a_7c15u64 ^ cpu as u64;
    let mut rng = params
        .seed
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        .wrapping_add(cpu as u64 + 1);
    let hot_pages = (pages * params.hot_percent.clamp(1, 100) / 100).max(1);
    let xorshift = |s: &mut u64| {
        let mut x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *s = x;
        x
    };
    if pages == 0 {
        return 0;
    }
    let mut next: Vec<u64> = Vec::new();
    if params.pattern == Pattern::PointerChase {
        next = (0..pages).collect();
        for i in (1..pages).rev() {
            let j = xorshift(&mut rng) % i;
            next.swap(i as usize, j as usize);
        }
    }
    let mut data = vec![0u64; pages as usize];
    let mut cur = 0u64;
    for t in 0..params.touches_per_cpu {
        let page = match params.pattern {
            Pattern::Sequential => t % pages,
            Pattern::Random => xorshift(&mut rng) % pages,
            Pattern::HotSet => {
                let x = xorshift(&mut rng);
                if x % 100 < 90 {
                    (x >> 8) % hot_pages
                } else {
                    (x >> 8) % pages
                }
            }
            Pattern::PointerChase => {
                cur = next[cur as usize];
                cur
            }
        };
        let v = data[page as usize];
        let mut s = (sum ^ v).wrapping_mul(0x100_0000_01b3).wrapping_add(page);
        s ^= s >> 29;
        sum = s;
        data[page as usize] = v
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(page + 1);
    }
    sum
}

/// The data area size the guest sees in a memory of `memory_bytes` (first region).
pub fn area_size_for(memory_bytes: u64) -> u64 {
    let first = crate::vstate::memory::layout(memory_bytes)[0];
    (first.0 + first.1).saturating_sub(AREA_START)
}

/// Device mode: word `w` (of 64) of disk sector `sector` as pass `pass` writes it
/// (guest/devices.c `disk_word`).
pub fn disk_word(sector: u64, pass: u64, w: u64) -> u64 {
    let x = ((sector << 24) ^ (pass << 8) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 31)
}

/// Device mode: what the first `sectors` sectors of the disk hold once `passes` passes are
/// done (the last pass's pattern), as bytes; the rest of the disk is left alone.
pub fn disk_contents(sectors: u64, passes: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((sectors * 512) as usize);
    if passes == 0 {
        return out;
    }
    for s in 0..sectors {
        for w in 0..64 {
            out.extend_from_slice(&disk_word(s, passes - 1, w).to_le_bytes());
        }
    }
    out
}

/// Device mode: the disk checksum a guest that did `passes` passes over `sectors` sectors
/// reports: every word it read back, in order, folded.
pub fn disk_checksum(sectors: u64, passes: u64) -> u64 {
    let mut sum = 0x6469_736bu64;
    for pass in 0..passes {
        for s in 0..sectors {
            for w in 0..64 {
                let x = (sum ^ disk_word(s, pass, w)).wrapping_mul(0x100_0000_01b3);
                sum = x ^ (x >> 29);
            }
        }
    }
    sum
}

/// Device mode: byte `k` of the network stream (guest/devices.c `stream_byte`).
pub fn stream_byte(k: u64) -> u8 {
    ((k.wrapping_mul(7)) ^ ((k >> 8).wrapping_mul(131)) ^ (k >> 16) ^ 0x5a) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_model_keeps_the_last_pass_and_folds_every_pass() {
        let two = disk_contents(16, 2);
        assert_eq!(two.len(), 16 * 512);
        assert_eq!(two[8..16], disk_word(0, 1, 1).to_le_bytes());
        assert_ne!(disk_contents(16, 1), two, "each pass writes other words");
        assert!(disk_contents(16, 0).is_empty());
        assert_ne!(disk_checksum(16, 1), disk_checksum(16, 2));
        assert_eq!(disk_checksum(16, 0), 0x6469_736b);
    }

    #[test]
    fn stream_bytes_differ_between_neighbouring_frames() {
        let frame = |i: u64| -> Vec<u8> { (i * 1024..(i + 1) * 1024).map(stream_byte).collect() };
        assert_ne!(frame(0), frame(1));
        assert_ne!(frame(1), frame(257));
    }
}
