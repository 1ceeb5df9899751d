//! `kv-store`: a memcached/Redis-like key-value server holding 200k items
//! in a large heap, restored under client load. Clients send pipelined
//! batches; a GET hashes the key, reads its bucket in the hash table,
//! walks the chain and reads the item; a SET overwrites in place or
//! allocates in the item's size class (allocator metadata, the class's
//! current extent, fresh pages when it runs out). Key popularity is Zipf
//! (the same data set in every run) plus a per-run set of keys that are
//! hot only in that run; the server's cron samples random buckets to
//! expire keys.

use super::content::Content;
use super::kernel::{KPath, Kernel};
use super::model::Workload;
use super::physical::{Frames, FreeList, Mapping, Physical};
use super::program::{CodeMap, Program, ProgramSize};
use super::rng::{mix, Rng, Zipf};
use super::trace::{merge, Lane, Touch};
use super::Params;

/// Item sizes of the slab classes (header, key, value).
const CLASSES: [u64; 5] = [128, 256, 512, 1024, 2048];
/// Pages per allocator extent.
const EXTENT: usize = 16;

/// Where an item lives.
#[derive(Clone, Copy)]
struct Item {
    first: u64,
    last: u64,
    class: u8,
}

pub(super) struct Model {
    kernel: Kernel,
    libc: CodeMap,
    server: Program,
    /// Allocator metadata: arena, bins per class, extent maps.
    alloc_meta: Mapping,
    buckets: Mapping,
    items: Vec<Item>,
    /// The last extent of each class, where new items of the class go.
    class_tail: Vec<Vec<u64>>,
    /// Query and reply buffers of the client connections.
    clients: Mapping,
    popularity: Zipf,
    by_rank: Vec<u32>,
    seed: u64,
}

impl Model {
    fn bucket_of(&self, key: usize) -> usize {
        (mix(self.seed, key as u64) % self.buckets.len() as u64) as usize
    }
}

impl Workload for Model {
    const NAME: &'static str = "kv-store";
    const DESCRIPTION: &'static str =
        "memcached/Redis-like key-value server with 200k items (5 slab size classes, \
        JSON, binary and compressed values) in a ~110 MiB heap and a 2 MiB hash table, \
        restored under load from 8 clients sending pipelined batches: GETs (hash, bucket, \
        chain, item) and SETs (in place, or allocation in the size class with allocator \
        metadata and fresh pages); Zipf(1.05) key popularity plus keys hot in one run only; \
        serverCron sampling random buckets every 100 ms.";
    const MEMORY_PAGES: usize = 65536;

    fn build(mut phys: Physical, kernel: Kernel, p: &Params, rng: &mut Rng) -> (Self, Frames) {
        let libc = CodeMap::load(&mut phys, p, rng, 450);
        Program::load_many(&mut phys, p, rng, 3, &ProgramSize::IDLE_DAEMON);
        let server = Program::load(
            &mut phys,
            p,
            rng,
            &ProgramSize {
                text: 400,
                data: 60,
                heap: 40,
                heap_zero: 0.2,
                stack: 8,
            },
        );
        let alloc_meta = phys.alloc_mixed(p.pages(112), Content::Heap, 0.2, rng);
        let clients = phys.alloc_mixed(p.pages(64), Content::Heap, 0.3, rng);
        // Bucket arrays: pointers to entries, a share of buckets empty.
        let buckets = phys.alloc(p.pages(512), |_| Content::Heap);

        // Items were inserted in random order of size; each class fills its
        // current extent and takes a new one from the allocator when full.
        let keys = p.count(200_000);
        let mut items = Vec::with_capacity(keys);
        let mut tails: Vec<(Mapping, usize)> =
            CLASSES.iter().map(|_| (Mapping::default(), 0)).collect();
        for _ in 0..keys {
            let class = match rng.below(100) {
                0..=34 => 0,
                35..=64 => 1,
                65..=84 => 2,
                85..=95 => 3,
                _ => 4,
            };
            let size = CLASSES[class] as usize;
            let (extent, used) = &mut tails[class];
            if extent.is_empty() || *used + size > extent.len() * 4096 {
                *extent = phys.alloc(EXTENT, |_| Content::KvItems);
                *used = 0;
            }
            items.push(Item {
                first: extent.at(*used / 4096),
                last: extent.at((*used + size - 1) / 4096),
                class: class as u8,
            });
            *used += size;
        }
        let class_tail = tails.into_iter().map(|(m, _)| m.frames).collect();
        let mut by_rank: Vec<u32> = (0..keys as u32).collect();
        rng.shuffle(&mut by_rank);
        let frames = phys.finish(0.15, rng);
        let model = Model {
            kernel,
            libc,
            server,
            alloc_meta,
            buckets,
            items,
            class_tail,
            clients,
            popularity: Zipf::new(keys, 1.05),
            by_rank,
            seed: rng.u64(),
        };
        (model, frames)
    }

    fn run(&self, free: &FreeList, p: &Params, mut rng: Rng, speed: f64) -> Vec<Touch> {
        let m = self;
        let duration_us = rng.range(1_300_000, 1_700_000) as f64;
        let keys = m.items.len();
        // Keys hot in this run only (a trending topic, a batch job's range).
        let trending: Vec<usize> = (0..p.count(300)).map(|_| rng.index(keys)).collect();
        let mut fresh = free.cursor();
        let mut lane = m.kernel.resume(&mut rng, speed);
        m.server.wake(&mut lane, &mut rng);

        let clients = 8usize;
        let mut next_batch: Vec<f64> = (0..clients).map(|_| rng.exp(2_000.0)).collect();
        let mut next_cron = rng.below(100_000) as f64;
        let mut class_used = vec![0usize; CLASSES.len()];
        loop {
            let (client, &at) = next_batch
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .expect("clients");
            if at > duration_us {
                break;
            }
            if next_cron < at {
                lane.wait_until(next_cron);
                cron(m, &mut lane, &mut rng);
                next_cron += 100_000.0;
                continue;
            }
            lane.wait_until(at);
            m.kernel.run(&mut lane, &mut rng, KPath::NetRx);
            m.kernel.run(&mut lane, &mut rng, KPath::Syscall(0));
            let conn = client * m.clients.len() / clients;
            lane.write(m.clients.at(conn));
            m.server.code.run(&mut lane, &mut rng, 20, 5, 2.0); // read and parse the query buffer
            let batch = rng.lognormal(6.0, 0.7).ceil() as usize;
            for _ in 0..batch {
                let key = if rng.chance(0.08) {
                    trending[rng.index(trending.len())]
                } else {
                    m.by_rank[m.popularity.sample(&mut rng)] as usize
                };
                lane.work(rng.lognormal(1.0, 0.3)); // hash the key
                let bucket = m.bucket_of(key);
                lane.read(m.buckets.at(bucket));
                if rng.chance(0.1) {
                    // A collision earlier in the chain: read that entry first.
                    let other = m.items[rng.index(keys)];
                    lane.read(other.first);
                }
                let item = m.items[key];
                if rng.chance(0.9) {
                    m.server.code.run(&mut lane, &mut rng, 21, 3, 1.0);
                    lane.read(item.first);
                    lane.read(item.last);
                    lane.write(m.clients.at((conn + 1) % m.clients.len()));
                    lane.work(rng.lognormal(3.0, 0.4));
                } else {
                    m.server.code.run(&mut lane, &mut rng, 22, 4, 1.5);
                    if rng.chance(0.6) {
                        lane.write(item.first);
                        lane.write(item.last);
                    } else {
                        // New size: allocate in the class, free the old item.
                        let class = rng.index(CLASSES.len());
                        m.libc.run(&mut lane, &mut rng, 7, 3, 1.0);
                        lane.write(m.alloc_meta.at(class * 4 % m.alloc_meta.len()));
                        let tail = &m.class_tail[class];
                        let page = class_used[class] * CLASSES[class] as usize / 4096;
                        class_used[class] += 1;
                        let target = match tail.get(EXTENT / 2 + page) {
                            Some(&f) => f,
                            None => fresh.take(&mut rng),
                        };
                        lane.write(target);
                        lane.write(
                            m.alloc_meta
                                .at((20 + item.class as usize * 7) % m.alloc_meta.len()),
                        );
                        lane.write(m.buckets.at(bucket));
                    }
                    lane.work(rng.lognormal(4.0, 0.4));
                }
            }
            m.kernel.run(&mut lane, &mut rng, KPath::NetTx);
            // The client waits for the reply, works, sends its next batch.
            next_batch[client] = lane.now() + rng.lognormal(20_000.0, 0.6) / p.scale.sqrt();
        }
        merge(vec![lane])
    }
}

/// serverCron: statistics, client timeouts, and active expiry sampling
/// random buckets.
fn cron(m: &Model, lane: &mut Lane, rng: &mut Rng) {
    m.kernel.run(lane, rng, KPath::TimerTick);
    m.server.code.run(lane, rng, 30, 6, 2.0);
    for i in 0..m.server.data.len().min(6) {
        lane.write(m.server.data.at(i));
    }
    for _ in 0..20 {
        let bucket = rng.index(m.buckets.len());
        lane.read(m.buckets.at(bucket));
        if rng.chance(0.5) {
            lane.read(m.items[rng.index(m.items.len())].first);
        }
        lane.work(rng.lognormal(0.8, 0.3));
    }
}
