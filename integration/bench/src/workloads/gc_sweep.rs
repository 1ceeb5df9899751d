//! `gc-sweep`: a JVM-like runtime whose old generation is collected right
//! after the restore (a full mark-sweep, as a restored serverless function
//! or a heap at its threshold does), then the application resumes.
//!
//! The old generation holds real objects: headers, class pointers, pointer
//! fields holding the addresses of other objects, integers and strings,
//! grouped into data structures (lists, trees, maps) of which some are
//! garbage. Two GC workers mark from the roots (thread stacks, class
//! statics, code) by following pointers with mark stacks and work
//! stealing, so pages are reached in graph order, interleaved differently
//! each run; then the sweep walks the heap in address order, reading dead
//! objects to build free lists; then two mutator threads serve requests,
//! running JIT-compiled code and bump-allocating through the young
//! generation.

use super::content::{Content, PAGE};
use super::kernel::{KPath, Kernel};
use super::model::Workload;
use super::physical::{Frames, FreeList, Mapping, Physical};
use super::program::{CodeMap, Program, ProgramSize};
use super::rng::{Rng, Zipf};
use super::trace::{merge, Lane, Touch};
use super::Params;

/// Virtual address of the old generation (compressed-oops style base).
const OLD_BASE: u64 = 0x0000_0007_c000_0000;

/// The old generation's objects in address order, and their pointers.
struct Heap {
    /// Byte offset of each object in the old generation.
    offset: Vec<u32>,
    size: Vec<u32>,
    /// Out-edges of object `i`: `targets[edge_start[i]..edge_start[i+1]]`.
    edge_start: Vec<u32>,
    targets: Vec<u32>,
    roots: Vec<u32>,
}

impl Heap {
    fn edges(&self, i: usize) -> &[u32] {
        &self.targets[self.edge_start[i] as usize..self.edge_start[i + 1] as usize]
    }

    fn pages(&self, i: usize) -> std::ops::RangeInclusive<usize> {
        let start = self.offset[i] as usize;
        start / PAGE..=(start + self.size[i] as usize - 1) / PAGE
    }
}

/// Objects in clusters (data structures); within a cluster each object
/// hangs off one a few places before it, and some objects also point into
/// other clusters (shared strings, cross-references). Which objects are
/// garbage follows from reachability.
fn build_heap(capacity: usize, rng: &mut Rng) -> Heap {
    let mut sizes: Vec<u32> = Vec::new();
    let mut cluster_of: Vec<u32> = Vec::new();
    let mut cluster_start: Vec<u32> = Vec::new();
    let mut bytes = 0usize;
    // Fill to ~90% with sampled sizes; pointer fields may grow objects.
    while bytes < capacity * 9 / 10 {
        let cluster = cluster_start.len() as u32;
        cluster_start.push(sizes.len() as u32);
        let n = rng.lognormal(40.0, 1.2).ceil() as usize;
        for _ in 0..n {
            let size = if rng.chance(0.01) {
                rng.range(1024, 16384) as u32 & !7
            } else {
                (rng.lognormal(32.0, 0.6) as u32).clamp(16, 512) & !7
            };
            sizes.push(size);
            cluster_of.push(cluster);
            bytes += size as usize;
        }
    }
    let n = sizes.len();
    let clusters = cluster_start.len();
    let mut edges: Vec<(u32, u32)> = Vec::with_capacity(n * 3 / 2);
    for i in 0..n {
        let start = cluster_start[cluster_of[i] as usize] as usize;
        if i > start {
            let parent = i - 1 - rng.index((i - start).min(8));
            edges.push((parent as u32, i as u32));
        }
        if rng.chance(0.12) {
            let c = rng.index(clusters);
            edges.push((i as u32, cluster_start[c] + rng.below(4) as u32));
        }
    }
    let mut roots = Vec::new();
    for &head in &cluster_start {
        match rng.below(100) {
            0..=24 => roots.push(head),
            25..=64 => {
                let from = rng.index(n) as u32;
                edges.push((from, head));
            }
            _ => {} // garbage unless something else reaches it
        }
    }
    edges.retain(|&(_, t)| (t as usize) < n);
    edges.sort_unstable();
    let mut edge_start = vec![0u32; n + 1];
    for &(from, _) in &edges {
        edge_start[from as usize + 1] += 1;
    }
    for i in 0..n {
        edge_start[i + 1] += edge_start[i];
    }
    let targets: Vec<u32> = edges.iter().map(|&(_, t)| t).collect();
    // Objects get room for their pointer fields; drop what no longer fits.
    let mut offset = Vec::with_capacity(n);
    let mut at = 0usize;
    let mut kept = n;
    for i in 0..n {
        let fields = (edge_start[i + 1] - edge_start[i]) as usize;
        sizes[i] = sizes[i].max(16 + 8 * fields as u32);
        if at + sizes[i] as usize > capacity {
            kept = i;
            break;
        }
        offset.push(at as u32);
        at += sizes[i] as usize;
    }
    sizes.truncate(kept);
    edge_start.truncate(kept + 1);
    let targets: Vec<u32> = targets[..edge_start[kept] as usize]
        .iter()
        .map(|&t| if (t as usize) < kept { t } else { 0 })
        .collect();
    roots.retain(|&r| (r as usize) < kept);
    Heap {
        offset,
        size: sizes,
        edge_start,
        targets,
        roots,
    }
}

/// The old generation's bytes: each object's mark word and class pointer,
/// its pointer fields, then integers, characters or raw data.
fn heap_bytes(heap: &Heap, capacity: usize, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = vec![0u8; capacity];
    let classes: Vec<u64> = (0..200)
        .map(|k| 0x0000_0008_0010_0000 + k * 0x240)
        .collect();
    for i in 0..heap.offset.len() {
        let start = heap.offset[i] as usize;
        let obj = &mut bytes[start..start + heap.size[i] as usize];
        let mark = if rng.chance(0.1) {
            (rng.below(1 << 31) << 8) | 1
        } else {
            1
        };
        obj[..8].copy_from_slice(&mark.to_le_bytes());
        let class = classes[rng.index(classes.len()).min(rng.index(classes.len()))];
        obj[8..16].copy_from_slice(&class.to_le_bytes());
        let edges = heap.edges(i);
        for (k, &t) in edges.iter().enumerate() {
            let addr = OLD_BASE + u64::from(heap.offset[t as usize]);
            obj[16 + 8 * k..24 + 8 * k].copy_from_slice(&addr.to_le_bytes());
        }
        let rest = &mut obj[16 + 8 * edges.len()..];
        match rng.below(10) {
            0..=4 => {
                for w in rest.chunks_mut(8) {
                    let v = if rng.chance(0.5) { rng.below(1000) } else { 0 };
                    w.copy_from_slice(&v.to_le_bytes()[..w.len()]);
                }
            }
            5..=7 => {
                for b in rest.iter_mut() {
                    *b = b"etaoinshrdlu cmfwypvbgk-_.0123"[rng.index(30)];
                }
            }
            8 => {
                for b in rest.iter_mut() {
                    *b = rng.u64() as u8;
                }
            }
            _ => {}
        }
    }
    bytes
}

pub(super) struct Model {
    kernel: Kernel,
    libjvm: CodeMap,
    code_cache: CodeMap,
    metaspace: Mapping,
    mutators: Vec<Program>,
    gc_stacks: Vec<Mapping>,
    old: Mapping,
    heap: Heap,
    bitmap: Mapping,
    card_table: Mapping,
    eden: Mapping,
    root_popularity: Zipf,
    /// The old generation's bytes, page by page in `old`'s order.
    old_bytes: Vec<u8>,
}

impl Workload for Model {
    const NAME: &'static str = "gc-sweep";
    const DESCRIPTION: &'static str =
        "JVM-like runtime collected right after the restore: safepoint and root \
        scan (stacks, metaspace), mark-bitmap clear, parallel marking by two workers with \
        mark stacks and work stealing through a 14 MiB old generation of real objects \
        (pointers hold object addresses; clusters of lists and trees, some garbage), a sweep \
        in address order over dead objects, then two mutator threads serving requests with \
        JIT-compiled code, reads of old objects from popular roots, and bump allocation \
        through a 16 MiB young generation.";
    const MEMORY_PAGES: usize = 32768;

    fn build(mut phys: Physical, kernel: Kernel, p: &Params, rng: &mut Rng) -> (Self, Frames) {
        phys.alloc(p.pages(450), |_| Content::Code); // libc
        let libjvm = CodeMap::load(&mut phys, p, rng, 3000);
        let code_cache = CodeMap::new(
            phys.alloc(p.pages(1024), |i| {
                if i % 10 < 6 {
                    Content::Code
                } else {
                    Content::Zero
                }
            }),
            rng.u64(),
        );
        let metaspace = phys.alloc_mixed(p.pages(600), Content::Heap, 0.1, rng);
        let mutators = Program::load_many(
            &mut phys,
            p,
            rng,
            2,
            &ProgramSize {
                text: 0,
                data: 0,
                heap: 40,
                heap_zero: 0.3,
                stack: 64,
            },
        );
        let gc_stacks = (0..2)
            .map(|_| {
                phys.alloc(p.pages(64).max(4), |i| {
                    if i < 4 {
                        Content::Stack
                    } else {
                        Content::Zero
                    }
                })
            })
            .collect();
        let old_pages = p.pages(3584);
        let old = phys.alloc(old_pages, |_| Content::Explicit);
        let heap = build_heap(old_pages * PAGE, rng);
        let old_bytes = heap_bytes(&heap, old_pages * PAGE, rng);
        // One mark bit per 8 bytes: stale bits from the last cycle.
        let bitmap = phys.alloc(old_pages.div_ceil(64), |_| Content::Bitmap);
        let card_table = phys.alloc(old_pages.div_ceil(128), |_| Content::Bitmap);
        // Young generation: stale objects from before the last young GC.
        let eden = phys.alloc(p.pages(4096), |_| Content::Heap);
        phys.alloc(p.pages(512), |_| Content::Heap); // survivor spaces
        let frames = phys.finish(0.1, rng);
        let roots = heap.roots.len();
        let model = Model {
            kernel,
            libjvm,
            code_cache,
            metaspace,
            mutators,
            gc_stacks,
            old,
            heap,
            bitmap,
            card_table,
            eden,
            root_popularity: Zipf::new(roots.max(1), 1.0),
            old_bytes,
        };
        (model, frames)
    }

    fn run(&self, free: &FreeList, p: &Params, mut rng: Rng, speed: f64) -> Vec<Touch> {
        let m = self;
        let mut fresh = free.cursor();
        let mut vm_lane = m.kernel.resume(&mut rng, speed);
        // Safepoint: scan the mutators' stacks, class statics, code roots.
        m.libjvm.run(&mut vm_lane, &mut rng, 1, 20, 2.0);
        for t in &m.mutators {
            for i in 0..4.min(t.stack.len()) {
                vm_lane.read(t.stack.at(t.stack.len() - 1 - i));
            }
        }
        for i in 0..m.metaspace.len() / 8 {
            vm_lane.read(m.metaspace.at(i * 8 + rng.index(8)));
            vm_lane.work(rng.lognormal(1.0, 0.3));
        }
        // Clear the mark bitmap.
        m.libjvm.run(&mut vm_lane, &mut rng, 2, 6, 2.0);
        for &page in &m.bitmap.frames {
            vm_lane.write(page);
            vm_lane.work(rng.lognormal(0.4, 0.2));
        }
        let start = vm_lane.now();
        let mut workers: Vec<Marker> = m
            .gc_stacks
            .iter()
            .map(|stack| {
                let mut lane = Lane::new(start + rng.exp(20.0), speed);
                lane.write(stack.at(0));
                m.libjvm.run(&mut lane, &mut rng, 3, 15, 1.0);
                Marker {
                    lane,
                    stack: Vec::new(),
                }
            })
            .collect();
        let marked = mark(m, &mut rng, &mut workers, &mut fresh);
        let end_mark = workers.iter().map(|w| w.lane.now()).fold(0.0, f64::max);
        for w in &mut workers {
            w.lane.wait_until(end_mark);
            m.libjvm.run(&mut w.lane, &mut rng, 4, 10, 1.0); // sweep code
        }
        sweep(m, &mut rng, &mut workers, &marked);
        let end_gc = workers.iter().map(|w| w.lane.now()).fold(0.0, f64::max);

        // The application resumes: two threads serving requests.
        let duration_us = end_gc + rng.range(900_000, 1_300_000) as f64;
        let mut eden_top = 0usize; // bytes allocated so far
        let mut lanes: Vec<Lane> = m
            .mutators
            .iter()
            .map(|_| Lane::new(end_gc, speed))
            .collect();
        for (t, lane) in m.mutators.iter().zip(&mut lanes) {
            t.wake(lane, &mut rng);
        }
        let methods = Zipf::new(60, 1.0);
        let mut arrival = end_gc + rng.exp(1_500.0);
        while arrival < duration_us {
            let t = rng.index(lanes.len());
            let lane = &mut lanes[t];
            lane.wait_until(arrival);
            m.kernel.run(lane, &mut rng, KPath::NetRx);
            m.kernel.run(lane, &mut rng, KPath::Syscall(0));
            // Run compiled methods, reading the objects a request needs.
            for _ in 0..rng.range(3, 8) {
                let method = methods.sample(&mut rng) as u64;
                m.code_cache.run(lane, &mut rng, 100 + method, 2, 15.0);
                let root = m.heap.roots[m
                    .root_popularity
                    .sample(&mut rng)
                    .min(m.heap.roots.len() - 1)];
                let mut obj = root as usize;
                for _ in 0..rng.range(2, 12) {
                    lane.read(m.old.at(*m.heap.pages(obj).start()));
                    lane.work(rng.lognormal(0.5, 0.5));
                    let edges = m.heap.edges(obj);
                    if edges.is_empty() {
                        break;
                    }
                    obj = edges[rng.index(edges.len())] as usize;
                }
            }
            // Allocate the request's objects: TLABs of 16 KiB from eden.
            let bytes = rng.lognormal(10_000.0, 0.8) as usize;
            let (from, to) = (eden_top / PAGE, (eden_top + bytes) / PAGE);
            for page in from..=to {
                if page < m.eden.len() {
                    lane.write(m.eden.at(page));
                    lane.work(rng.lognormal(3.0, 0.3));
                }
            }
            eden_top += bytes;
            if rng.chance(0.1) {
                m.libjvm.run(lane, &mut rng, 5, 4, 2.0); // TLAB refill slow path
            }
            m.kernel.run(lane, &mut rng, KPath::NetTx);
            arrival += rng.exp(2_000.0 / p.scale.sqrt());
        }
        let mut all = vec![vm_lane];
        all.extend(workers.into_iter().map(|w| w.lane));
        all.extend(lanes);
        merge(all)
    }

    /// The old generation's objects over its pages.
    fn write_explicit(&self, memory: &mut [u8]) {
        for (i, &frame) in self.old.frames.iter().enumerate() {
            let at = frame as usize * PAGE;
            memory[at..at + PAGE].copy_from_slice(&self.old_bytes[i * PAGE..(i + 1) * PAGE]);
        }
    }
}

/// A GC worker: its lane and mark stack.
struct Marker {
    lane: Lane,
    stack: Vec<u32>,
}

fn mark(
    m: &Model,
    rng: &mut Rng,
    workers: &mut [Marker],
    free: &mut super::physical::FreeCursor,
) -> Vec<bool> {
    let heap = &m.heap;
    let mut marked = vec![false; heap.offset.len()];
    let mut next_root = 0usize;
    let chunk = 16;
    // Mark stacks overflow into fresh pages as they grow.
    let mut stack_pages: Vec<Vec<u64>> = workers.iter().map(|_| Vec::new()).collect();
    loop {
        let w = (0..workers.len())
            .min_by(|&a, &b| workers[a].lane.now().total_cmp(&workers[b].lane.now()))
            .expect("workers");
        let Some(obj) = workers[w].stack.pop() else {
            if next_root < heap.roots.len() {
                let end = (next_root + chunk).min(heap.roots.len());
                let roots = heap.roots[next_root..end].to_vec();
                next_root = end;
                workers[w].stack.extend(roots.into_iter().rev());
                workers[w].lane.work(rng.lognormal(0.5, 0.3));
                continue;
            }
            // Steal the older half of the busiest worker's stack.
            let victim = (0..workers.len())
                .filter(|&v| v != w)
                .max_by_key(|&v| workers[v].stack.len())
                .expect("two workers");
            let n = workers[victim].stack.len() / 2;
            if n == 0 {
                if workers.iter().all(|x| x.stack.is_empty()) {
                    break;
                }
                workers[w].lane.work(2.0);
                continue;
            }
            let stolen: Vec<u32> = workers[victim].stack.drain(..n).collect();
            workers[w].stack.extend(stolen);
            workers[w].lane.work(rng.lognormal(1.0, 0.3));
            continue;
        };
        let i = obj as usize;
        let lane = &mut workers[w].lane;
        // Test-and-set the mark bit in the side bitmap.
        let bit_page = heap.offset[i] as usize / 8 / 8 / PAGE;
        lane.write(m.bitmap.at(bit_page.min(m.bitmap.len() - 1)));
        lane.work(rng.lognormal(0.03, 0.3));
        if marked[i] {
            continue;
        }
        marked[i] = true;
        // Scan the object: its header and its pointer fields.
        let pages = heap.pages(i);
        let scanned = (heap.offset[i] as usize + 16 + 8 * heap.edges(i).len()) / PAGE;
        for page in *pages.start()..=scanned.min(*pages.end()) {
            lane.read(m.old.at(page));
        }
        lane.work(rng.lognormal(0.08, 0.4));
        for &t in heap.edges(i).iter().rev() {
            if !marked[t as usize] {
                workers[w].stack.push(t);
            }
        }
        let depth_page = workers[w].stack.len() * 4 / PAGE;
        let pages_used = &mut stack_pages[w];
        while pages_used.len() <= depth_page {
            let page = free.take(rng);
            workers[w].lane.write(page);
            pages_used.push(page);
        }
    }
    marked
}

/// Sweeps in address order: workers claim 64-page regions in turn; a dead
/// object's header is read for its size, the first of a dead run gets a
/// free-chunk header.
fn sweep(m: &Model, rng: &mut Rng, workers: &mut [Marker], marked: &[bool]) {
    let heap = &m.heap;
    let region = 64 * PAGE;
    let mut obj = 0usize;
    let mut in_dead_run = false;
    while obj < heap.offset.len() {
        let w = (0..workers.len())
            .min_by(|&a, &b| workers[a].lane.now().total_cmp(&workers[b].lane.now()))
            .expect("workers");
        let lane = &mut workers[w].lane;
        let region_end = (heap.offset[obj] as usize / region + 1) * region;
        while obj < heap.offset.len() && (heap.offset[obj] as usize) < region_end {
            let bit_page = heap.offset[obj] as usize / 64 / PAGE;
            lane.read(m.bitmap.at(bit_page.min(m.bitmap.len() - 1)));
            if !marked[obj] {
                let page = m.old.at(*heap.pages(obj).start());
                if in_dead_run {
                    lane.read(page);
                } else {
                    lane.write(page);
                }
                in_dead_run = true;
            } else {
                in_dead_run = false;
            }
            lane.work(rng.lognormal(0.02, 0.3));
            obj += 1;
        }
        lane.write(m.card_table.at((region_end / region) % m.card_table.len()));
    }
}
