//! `database`: a PostgreSQL-like server restored under an OLTP load from six
//! clients, plus one reporting query per run. Tables and B-tree indexes sit
//! in a shared buffer pool of 8 KiB buffers, filled before the checkpoint in
//! the order blocks were first read (scans and lookups interleaved), so a
//! table's blocks are spread over the pool in runs. Transactions descend
//! indexes (root and inner pages hot, leaves and heap blocks by key),
//! update rows, append to the table tails and the write-ahead log and wait
//! for its flush; each run's report sequentially scans one table (which
//! one differs by run) into a hash aggregate in fresh work memory.

use super::content::Content;
use super::kernel::{KPath, Kernel};
use super::model::Workload;
use super::physical::{Frames, FreeList, Mapping, Physical};
use super::program::{CodeMap, Program, ProgramSize};
use super::rng::{mix, Rng, Zipf};
use super::trace::{merge, Lane, Touch};
use super::Params;

const ROWS_PER_BLOCK: usize = 40;
const KEYS_PER_LEAF: usize = 300;
const CHILDREN_PER_INNER: usize = 250;

/// A table with its primary-key index, as block numbers of the pool.
struct Relation {
    /// Buffer of each heap block.
    heap: Vec<usize>,
    /// Buffers of the index: root, inner pages, leaves.
    root: usize,
    inner: Vec<usize>,
    leaves: Vec<usize>,
}

impl Relation {
    fn rows(&self) -> usize {
        self.heap.len() * ROWS_PER_BLOCK
    }
}

#[derive(Clone, Copy)]
enum Table {
    Customer = 0,
    Orders = 1,
    OrderLine = 2,
    Item = 3,
    Stock = 4,
}

pub(super) struct Model {
    kernel: Kernel,
    libc: CodeMap,
    postgres: Program,
    backends: Vec<Program>,
    buffers: Mapping,
    descriptors: Mapping,
    buffer_table: Mapping,
    wal: Mapping,
    /// Where WAL insertion stood at the checkpoint (page of `wal`).
    wal_start: usize,
    relations: Vec<Relation>,
    customer_popularity: Zipf,
    item_popularity: Zipf,
    seed: u64,
}

impl Workload for Model {
    const NAME: &'static str = "database";
    const DESCRIPTION: &'static str =
        "PostgreSQL-like database with five tables and their B-tree primary keys \
        (~82 MiB of 8 KiB blocks) in a ~100 MiB shared buffer pool filled in first-read \
        order, restored under an OLTP load from six clients (new orders, payments, order \
        status: index descents with hot root and inner pages, row updates, inserts at the \
        table tails, WAL appends and flushes) plus one reporting query per run (a sequential \
        scan of one of three tables into a hash aggregate in fresh work memory).";
    const MEMORY_PAGES: usize = 65536;

    fn build(mut phys: Physical, kernel: Kernel, p: &Params, rng: &mut Rng) -> (Self, Frames) {
        let libc = CodeMap::load(&mut phys, p, rng, 450);
        let postgres = Program::load(
            &mut phys,
            p,
            rng,
            &ProgramSize {
                text: 2000,
                data: 200,
                heap: 60,
                heap_zero: 0.3,
                stack: 8,
            },
        );

        // Relation sizes in 8 KiB blocks, and the order their blocks entered
        // the pool: runs of a scan, single blocks of lookups, interleaved.
        let table_blocks = [1500, 4000, 3000, 800, 1200].map(|b| p.count(b));
        let mut chunks: Vec<(usize, bool, usize, usize)> = Vec::new(); // (rel, index?, first, len)
        let mut index_sizes = Vec::new();
        for (rel, &blocks) in table_blocks.iter().enumerate() {
            let leaves = (blocks * ROWS_PER_BLOCK).div_ceil(KEYS_PER_LEAF);
            let inner = leaves.div_ceil(CHILDREN_PER_INNER);
            index_sizes.push((leaves, inner));
            let mut b = 0;
            while b < blocks {
                let len = if rng.chance(0.5) {
                    rng.range(8, 64) as usize
                } else {
                    1
                };
                chunks.push((rel, false, b, len.min(blocks - b)));
                b += len;
            }
            let index_blocks = 1 + inner + leaves;
            let mut b = 0;
            while b < index_blocks {
                let len = rng.range(1, 4) as usize;
                chunks.push((rel, true, b, len.min(index_blocks - b)));
                b += len;
            }
        }
        rng.shuffle(&mut chunks);
        let used: usize = chunks.iter().map(|c| c.3).sum();
        let nbuffers = used + used / 4;
        let mut heap_at: Vec<Vec<usize>> = table_blocks.iter().map(|&b| vec![0; b]).collect();
        let mut index_at: Vec<Vec<usize>> = index_sizes
            .iter()
            .map(|&(l, i)| vec![0; 1 + i + l])
            .collect();
        let mut buffer_kind = vec![Content::Zero; nbuffers];
        let mut next = 0;
        for &(rel, index, first, len) in &chunks {
            for b in first..first + len {
                if index {
                    index_at[rel][b] = next;
                    buffer_kind[next] = Content::DbIndex;
                } else {
                    heap_at[rel][b] = next;
                    buffer_kind[next] = Content::DbTable;
                }
                next += 1;
            }
        }
        let buffers = phys.alloc(nbuffers * 2, |i| buffer_kind[i / 2]);
        let descriptors = phys.alloc((nbuffers * 64).div_ceil(4096), |_| Content::Heap);
        let buffer_table =
            phys.alloc_mixed((nbuffers * 24).div_ceil(4096), Content::Heap, 0.1, rng);
        let wal = phys.alloc(p.pages(2048), |_| Content::Wal);
        phys.alloc_mixed(p.pages(64), Content::KernelData, 0.3, rng); // locks, proc array
        let backends = Program::load_many(
            &mut phys,
            p,
            rng,
            6,
            &ProgramSize {
                text: 0,
                data: 0,
                heap: 150,
                heap_zero: 0.2,
                stack: 32,
            },
        );
        let relations = heap_at
            .into_iter()
            .zip(index_at)
            .zip(index_sizes)
            .map(|((heap, index), (leaves, inner))| Relation {
                heap,
                root: index[0],
                inner: index[1..1 + inner].to_vec(),
                leaves: index[1 + inner..1 + inner + leaves].to_vec(),
            })
            .collect::<Vec<_>>();
        let frames = phys.finish(0.12, rng);
        let customer_rows = relations[Table::Customer as usize].rows();
        let item_rows = relations[Table::Item as usize].rows();
        let model = Model {
            kernel,
            libc,
            postgres,
            backends,
            buffers,
            descriptors,
            buffer_table,
            wal_start: rng.index(p.pages(2048)),
            wal,
            relations,
            customer_popularity: Zipf::new(customer_rows, 0.8),
            item_popularity: Zipf::new(item_rows, 0.8),
            seed: rng.u64(),
        };
        (model, frames)
    }

    fn run(&self, free: &FreeList, _p: &Params, mut rng: Rng, speed: f64) -> Vec<Touch> {
        let duration_us = rng.range(2_200_000, 2_700_000) as f64;
        let m = self;
        let mut kernel_lane = m.kernel.resume(&mut rng, speed);
        let mut backends: Vec<Backend> = m
            .backends
            .iter()
            .map(|program| Backend {
                m,
                program,
                lane: Lane::new(kernel_lane.now() + rng.exp(2_000.0), speed),
            })
            .collect();
        let mut fresh = free.cursor();
        let mut wal_bytes = 0usize;
        let mut inserted = [0usize; 5];
        // The report: one of three, started a little into the run by client 0.
        let report = rng.index(3);
        let report_at = rng.range(200_000, 900_000) as f64;
        let mut report_done = false;

        loop {
            let (b, at) = backends
                .iter()
                .enumerate()
                .map(|(i, b)| (i, b.lane.now()))
                .min_by(|x, y| x.1.total_cmp(&y.1))
                .expect("backends");
            if at > duration_us {
                break;
            }
            let be = &mut backends[b];
            // Receive the statement, parse, plan: backend code and caches.
            m.kernel.run(&mut be.lane, &mut rng, KPath::NetRx);
            m.kernel.run(&mut be.lane, &mut rng, KPath::Syscall(45));
            be.program.wake(&mut be.lane, &mut rng);
            m.postgres.code.run(&mut be.lane, &mut rng, 43, 10, 4.0);
            for _ in 0..3 {
                let page = be.program.heap.at(rng.index(be.program.heap.len()) / 4);
                be.lane.read(page); // catalog and plan caches
            }
            m.libc.run(&mut be.lane, &mut rng, 8, 2, 1.0);
            if b == 0 && !report_done && at >= report_at {
                report_done = true;
                reporting(be, &mut rng, &mut fresh, report);
            } else {
                let customer = m.customer_popularity.sample(&mut rng);
                match rng.below(100) {
                    0..=44 => {
                        be.lookup(&mut rng, Table::Customer, customer, false);
                        for _ in 0..rng.range(3, 8) {
                            let item = m.item_popularity.sample(&mut rng);
                            be.lookup(&mut rng, Table::Item, item, false);
                            be.lookup(&mut rng, Table::Stock, item, true);
                            be.wal(&mut rng, &mut wal_bytes, 120);
                            be.insert(&mut rng, Table::OrderLine, inserted[2]);
                            inserted[2] += 1;
                        }
                        be.insert(&mut rng, Table::Orders, inserted[1]);
                        inserted[1] += 1;
                        be.wal(&mut rng, &mut wal_bytes, 200);
                    }
                    45..=89 => {
                        be.lookup(&mut rng, Table::Customer, customer, true);
                        be.wal(&mut rng, &mut wal_bytes, 150);
                    }
                    _ => {
                        // Order status: the customer's recent orders.
                        be.lookup(&mut rng, Table::Customer, customer, false);
                        let orders = m.relations[Table::Orders as usize].rows();
                        let recent = orders - 1 - rng.index(orders / 10);
                        for k in 0..rng.range(1, 5) as usize {
                            be.lookup(&mut rng, Table::Orders, recent - k, false);
                        }
                    }
                }
                be.commit(&mut rng, &mut wal_bytes);
            }
            m.kernel.run(&mut be.lane, &mut rng, KPath::NetTx);
            // The client thinks, then sends its next transaction.
            be.lane.wait(rng.lognormal(25_000.0, 0.7));
        }
        let mut tick = 0.0;
        while tick < duration_us {
            kernel_lane.wait_until(tick);
            m.kernel.run(&mut kernel_lane, &mut rng, KPath::TimerTick);
            tick += rng.lognormal(4_000.0, 0.2);
        }
        let mut lanes = vec![kernel_lane];
        lanes.extend(backends.into_iter().map(|b| b.lane));
        merge(lanes)
    }
}

/// One backend serving a client during a run.
struct Backend<'a> {
    m: &'a Model,
    program: &'a Program,
    lane: Lane,
}

impl Backend<'_> {
    /// Pins buffer `buffer` (mapping table, descriptor) and reads the
    /// half of the block holding the line pointers and, at `row`, the tuple.
    fn block(&mut self, rng: &mut Rng, buffer: usize, row: usize, write: bool) {
        let m = self.m;
        let hash = mix(m.seed, buffer as u64);
        self.lane.read(
            m.buffer_table
                .at((hash % m.buffer_table.len() as u64) as usize),
        );
        self.lane.write(m.descriptors.at(buffer * 64 / 4096));
        self.lane.read(m.buffers.at(2 * buffer));
        let half = 2 * buffer + usize::from(row % ROWS_PER_BLOCK >= ROWS_PER_BLOCK / 3);
        if write {
            self.lane.write(m.buffers.at(half));
        } else {
            self.lane.read(m.buffers.at(half));
        }
        self.lane.work(rng.lognormal(3.0, 0.4));
    }

    /// Index descent to `key`'s leaf, then its heap tuple.
    fn lookup(&mut self, rng: &mut Rng, table: Table, key: usize, write: bool) {
        let m = self.m;
        let rel = &m.relations[table as usize];
        let key = key.min(rel.rows() - 1);
        m.postgres.code.run(&mut self.lane, rng, 40, 3, 1.5); // _bt_search
        self.block(rng, rel.root, 0, false);
        let leaf = key / KEYS_PER_LEAF;
        self.block(rng, rel.inner[leaf / CHILDREN_PER_INNER], leaf, false);
        self.block(rng, rel.leaves[leaf], key % KEYS_PER_LEAF, false);
        self.block(rng, rel.heap[key / ROWS_PER_BLOCK], key, write);
    }

    /// A new row at the end of `table` and its index entry.
    fn insert(&mut self, rng: &mut Rng, table: Table, nth: usize) {
        let m = self.m;
        let rel = &m.relations[table as usize];
        m.postgres.code.run(&mut self.lane, rng, 41, 4, 1.5); // heap_insert
        let block = rel.heap.len() - 1 - (nth / ROWS_PER_BLOCK).min(rel.heap.len() - 1);
        self.block(rng, rel.heap[block], nth, true);
        self.block(rng, rel.root, 0, false);
        self.block(rng, *rel.inner.last().expect("inner"), 0, false);
        let leaf = rel.leaves.len() - 1 - (nth / KEYS_PER_LEAF).min(rel.leaves.len() - 1);
        self.block(rng, rel.leaves[leaf], nth, true);
    }

    fn wal(&mut self, rng: &mut Rng, wal_bytes: &mut usize, bytes: usize) {
        let m = self.m;
        m.postgres.code.run(&mut self.lane, rng, 42, 3, 1.0); // XLogInsert
        let start = *wal_bytes / 4096;
        *wal_bytes += bytes;
        for page in start..=*wal_bytes / 4096 {
            self.lane
                .write(m.wal.at((m.wal_start + page) % m.wal.len()));
        }
    }

    fn commit(&mut self, rng: &mut Rng, wal_bytes: &mut usize) {
        self.wal(rng, wal_bytes, 80);
        self.m.kernel.run(&mut self.lane, rng, KPath::Syscall(75)); // fdatasync
        self.m.kernel.run(&mut self.lane, rng, KPath::BlockIo);
        self.lane.wait(rng.lognormal(900.0, 0.5));
    }
}

/// A reporting query: a sequential scan of one table (blocks in table
/// order, wherever their buffers are) into a hash aggregate held in work
/// memory that the backend allocates fresh.
fn reporting(
    be: &mut Backend,
    rng: &mut Rng,
    fresh: &mut super::physical::FreeCursor,
    which: usize,
) {
    let m = be.m;
    let (table, from, to) = match which {
        0 => (Table::Item, 0.0, 1.0),
        1 => (Table::Stock, 0.0, 0.7),
        _ => (Table::OrderLine, 0.7, 1.0),
    };
    let rel = &m.relations[table as usize];
    let (from, to) = (
        (rel.heap.len() as f64 * from) as usize,
        (rel.heap.len() as f64 * to) as usize,
    );
    m.postgres.code.run(&mut be.lane, rng, 44, 12, 3.0); // seq scan, hash agg
    let groups: Vec<u64> = (0..48).map(|_| fresh.take(rng)).collect();
    for block in from..to {
        let buffer = rel.heap[block];
        be.lane.read(m.buffers.at(2 * buffer));
        be.lane.work(rng.lognormal(12.0, 0.3));
        be.lane.read(m.buffers.at(2 * buffer + 1));
        be.lane.work(rng.lognormal(12.0, 0.3));
        for _ in 0..2 {
            be.lane.write(groups[rng.index(groups.len())]);
        }
    }
    // Sort the groups and send them.
    for &g in &groups {
        be.lane.read(g);
        be.lane.work(rng.lognormal(20.0, 0.3));
    }
}
