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
