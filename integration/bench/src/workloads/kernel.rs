//! The guest kernel every workload runs on: its image at a fixed physical
//! address (text, read-only data, data and bss), slab caches, per-CPU
//! areas and page tables, and the code paths a restored guest runs through
//! (resume, timer ticks, scheduling, syscalls, the network and block
//! stacks, page faults).

use super::content::Content;
use super::physical::{Mapping, Physical};
use super::program::CodeMap;
use super::rng::{mix, Rng};
use super::trace::Lane;
use super::Params;

/// Kernel code paths. Each has its own text pages and data it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KPath {
    /// Back from the checkpoint: clock sources, interrupts, the idle loop.
    Resume,
    TimerTick,
    Schedule,
    /// A system call of the given number.
    Syscall(u16),
    NetRx,
    NetTx,
    Vfs,
    PageFault,
    BlockIo,
    Workqueue,
}

impl KPath {
    fn id(self) -> u64 {
        match self {
            KPath::Resume => 1,
            KPath::TimerTick => 2,
            KPath::Schedule => 3,
            KPath::Syscall(n) => 1000 + u64::from(n),
            KPath::NetRx => 4,
            KPath::NetTx => 5,
            KPath::Vfs => 6,
            KPath::PageFault => 7,
            KPath::BlockIo => 8,
            KPath::Workqueue => 9,
        }
    }

    /// (text pages, data pages) the path touches.
    fn size(self) -> (usize, usize) {
        match self {
            KPath::Resume => (40, 12),
            KPath::TimerTick => (10, 4),
            KPath::Schedule => (8, 3),
            KPath::Syscall(_) => (5, 2),
            KPath::NetRx | KPath::NetTx => (18, 5),
            KPath::Vfs => (12, 4),
            KPath::PageFault => (7, 2),
            KPath::BlockIo => (14, 4),
            KPath::Workqueue => (9, 3),
        }
    }
}

pub(super) struct Kernel {
    /// The first MiB: real-mode trampoline, boot parameters, ACPI tables.
    low: Mapping,
    code: CodeMap,
    rodata: Mapping,
    data: Mapping,
    slab: Mapping,
    percpu: Mapping,
    seed: u64,
}

impl Kernel {
    /// Where the kernel image goes (Linux loads at 16 MiB) and how big it
    /// is, in pages: reserve these before allocating anything else.
    pub(super) fn reserved(p: &Params) -> Vec<(u64, u64)> {
        let image = Self::image_pages(p);
        vec![
            (0, p.pages(256) as u64),
            (p.pages(4096) as u64, image.0 + image.1 + image.2),
        ]
    }

    /// (text, rodata, data+bss) pages.
    fn image_pages(p: &Params) -> (u64, u64, u64) {
        (
            p.pages(2048) as u64,
            p.pages(640) as u64,
            p.pages(512) as u64,
        )
    }

    pub(super) fn boot(phys: &mut Physical, p: &Params, rng: &mut Rng) -> Self {
        let low = phys.place(0, p.pages(256) as u64, |i| {
            if i % 16 == 0 {
                Content::KernelData
            } else {
                Content::Zero
            }
        });
        let (text, rodata, data) = Self::image_pages(p);
        let base = p.pages(4096) as u64;
        let text = phys.place(base, text, |_| Content::Code);
        let rodata = phys.place(base + text.len() as u64, rodata, |i| {
            if i % 3 == 0 {
                Content::Text(super::content::TextStyle::Config)
            } else {
                Content::KernelData
            }
        });
        // .data first, then .bss, which is mostly still zero.
        let data_len = data;
        let data = phys.place(base + (text.len() + rodata.len()) as u64, data_len, |i| {
            if (i as u64) < data_len * 2 / 5 || i % 7 == 0 {
                Content::KernelData
            } else {
                Content::Zero
            }
        });
        let percpu = phys.alloc(p.pages(16).max(4), |_| Content::KernelData);
        let slab = phys.alloc_mixed(p.pages(1024), Content::KernelData, 0.1, rng);
        phys.alloc_mixed(p.pages(160), Content::PageTable, 0.05, rng);
        Self {
            low,
            code: CodeMap::new(text, rng.u64()),
            rodata,
            data,
            slab,
            percpu,
            seed: rng.u64(),
        }
    }

    /// The kernel's lane after the restore: it resumes, then schedules.
    pub(super) fn resume(&self, rng: &mut Rng, speed: f64) -> Lane {
        let mut lane = Lane::new(0.0, speed);
        self.run(&mut lane, rng, KPath::Resume);
        self.run(&mut lane, rng, KPath::Schedule);
        lane
    }

    /// Runs `path` on `lane`.
    pub(super) fn run(&self, lane: &mut Lane, rng: &mut Rng, path: KPath) {
        let (text, data) = path.size();
        let key = mix(self.seed, path.id());
        lane.write(self.percpu.at((key % self.percpu.len() as u64) as usize));
        if path == KPath::Resume {
            for i in [3, 4, 5] {
                lane.read(self.low.at(i * self.low.len() / 16));
            }
        }
        for (i, page) in self.code.path(path.id(), text).into_iter().enumerate() {
            if rng.chance(0.9) {
                lane.read(page);
            }
            lane.work(rng.lognormal(0.8, 0.6));
            if i % 4 == 3 {
                let d = mix(key, i as u64);
                let region = if d % 3 < 1 { &self.rodata } else { &self.data };
                lane.read(region.at((d >> 8) as usize % region.len()));
            }
        }
        for i in 0..data {
            let d = mix(key, 100 + i as u64);
            lane.write(self.slab.at((d % self.slab.len() as u64) as usize));
        }
    }

    /// The slab page holding kernel object `key` (an inode, a socket, a
    /// task): always the same page for the same object in a checkpoint.
    pub(super) fn object(&self, key: u64) -> u64 {
        self.slab
            .at((mix(self.seed ^ 0x5ab, key) % self.slab.len() as u64) as usize)
    }
}
