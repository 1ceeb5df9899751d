//! `idle-os`: a small Linux guest returning from idle. On resume the clock
//! has jumped, so the timers that fell due while it was checkpointed fire
//! at once (timekeeping, the scheduler, workqueues, RCU); then the system
//! settles back into idle and a few daemons wake on their own schedules:
//! the NTP client notices the jump and steps the clock, the journal logs
//! it, sshd sends a keepalive, a systemd timer may start a short job (a
//! fork and exec of a shell and a tool), cron may run one, the DHCP client
//! may renew. When each daemon fires depends on where its timer stood, so
//! order and membership vary by run. The page cache (files read at boot,
//! binaries not running) is mostly left alone.

use super::content::{Content, TextStyle};
use super::kernel::{KPath, Kernel};
use super::model::Workload;
use super::physical::{Frames, FreeCursor, FreeList, Mapping, Physical};
use super::program::{CodeMap, Program, ProgramSize};
use super::rng::Rng;
use super::trace::{merge, Lane, Touch};
use super::Params;

/// A daemon: its process, how often it wakes, how much it does, and the
/// probability that it has anything to do in a given run.
struct Daemon {
    program: Program,
    period_us: f64,
    paths: usize,
    active: f64,
}

pub(super) struct Model {
    kernel: Kernel,
    libc: CodeMap,
    daemons: Vec<Daemon>,
    /// Binaries in the page cache that a job runs: a shell, a tool.
    shell: CodeMap,
    tool: CodeMap,
    journal: Mapping,
    page_cache: Mapping,
}

/// (name for the reader, text, heap, wake period in ms, code paths per
/// wake, chance of activity in a run)
const DAEMONS: &[(&str, usize, usize, f64, usize, f64)] = &[
    ("systemd", 400, 300, 700.0, 6, 1.0),
    ("journald", 100, 200, 0.0, 4, 1.0),
    ("chronyd", 60, 30, 1000.0, 4, 1.0),
    ("sshd", 200, 60, 1500.0, 3, 0.8),
    ("dbus-daemon", 100, 80, 900.0, 3, 0.7),
    ("networkd", 150, 60, 2500.0, 5, 0.4),
    ("cron", 30, 20, 3000.0, 2, 0.5),
];

impl Workload for Model {
    const NAME: &'static str = "idle-os";
    const DESCRIPTION: &'static str =
        "small Linux guest returning from idle: overdue timers, workqueues and \
        writeback right after resume, then mostly idle with ticks; daemons wake on their own \
        timers (NTP client stepping the clock, journald appending to its journal, sshd \
        keepalives, dbus, DHCP renewal in some runs, a systemd timer or cron job forking and \
        exec'ing a shell and a tool in some runs). ~10 MiB of page cache mostly untouched.";
    const MEMORY_PAGES: usize = 16384;

    fn build(mut phys: Physical, kernel: Kernel, p: &Params, rng: &mut Rng) -> (Self, Frames) {
        let libc = CodeMap::load(&mut phys, p, rng, 450);
        let daemons = DAEMONS
            .iter()
            .map(|&(_, text, heap, period_ms, paths, active)| Daemon {
                program: Program::load(
                    &mut phys,
                    p,
                    rng,
                    &ProgramSize {
                        text,
                        data: text / 8 + 2,
                        heap,
                        heap_zero: 0.3,
                        stack: 16,
                    },
                ),
                period_us: period_ms * 1000.0,
                paths,
                active,
            })
            .collect();
        let shell = CodeMap::load(&mut phys, p, rng, 300);
        let tool = CodeMap::load(&mut phys, p, rng, 120);
        let journal_pages = p.pages(512);
        let journal = phys.alloc(journal_pages, |i| {
            if i < journal_pages * 3 / 4 + journal_pages / 32 {
                Content::Text(TextStyle::Log)
            } else {
                Content::Zero
            }
        });
        let page_cache = phys.alloc(p.pages(2400), |i| match i % 7 {
            0 | 1 => Content::Text(TextStyle::Config),
            2 => Content::Text(TextStyle::Prose),
            3 | 4 => Content::Code,
            5 => Content::Media,
            _ => Content::Text(TextStyle::Log),
        });
        let frames = phys.finish(0.1, rng);
        let model = Model {
            kernel,
            libc,
            daemons,
            shell,
            tool,
            journal,
            page_cache,
        };
        (model, frames)
    }

    fn run(&self, free: &FreeList, _p: &Params, mut rng: Rng, speed: f64) -> Vec<Touch> {
        let duration_us = rng.range(2_400_000, 3_000_000) as f64;
        let m = self;
        let mut fresh = free.cursor();
        let mut entries = 0usize;

        // Resume: timekeeping catches up, overdue timers and work run at once.
        let mut kernel = Lane::new(0.0, speed);
        m.kernel.run(&mut kernel, &mut rng, KPath::Resume);
        let mut overdue = vec![
            KPath::TimerTick,
            KPath::Workqueue,
            KPath::Schedule,
            KPath::Workqueue,
        ];
        if rng.chance(0.5) {
            overdue.push(KPath::NetRx);
        }
        if rng.chance(0.4) {
            overdue.push(KPath::BlockIo); // writeback of old dirty pages
        }
        rng.shuffle(&mut overdue);
        for path in overdue {
            m.kernel.run(&mut kernel, &mut rng, path);
            kernel.work(rng.lognormal(30.0, 0.5));
        }
        // Idle from here: a tick now and then, more while something runs.
        let mut tick = kernel.now();
        while tick < duration_us {
            kernel.wait_until(tick);
            m.kernel.run(&mut kernel, &mut rng, KPath::TimerTick);
            if rng.chance(0.05) {
                m.kernel.run(&mut kernel, &mut rng, KPath::Workqueue);
            }
            tick += rng.lognormal(60_000.0, 0.8);
        }

        let mut lanes = vec![kernel];
        // systemd recomputes its timers; a persistent timer that fell due
        // while the guest was checkpointed may start its job at once.
        let mut systemd = Lane::new(rng.lognormal(5_000.0, 0.5), speed);
        recompute_timers(m, &mut systemd, &mut rng);
        if rng.chance(0.6) {
            journal(m, &mut systemd, &mut rng, &mut entries);
            job(m, &mut systemd, &mut rng, &mut fresh);
            journal(m, &mut systemd, &mut rng, &mut entries);
        }
        lanes.push(systemd);
        // The NTP client notices the jump soon and steps the clock; the
        // journal logs it.
        let mut ntp = Lane::new(rng.lognormal(40_000.0, 0.5), speed);
        let chronyd = &m.daemons[2];
        wake(m, chronyd, 2, &mut ntp, &mut rng);
        m.kernel.run(&mut ntp, &mut rng, KPath::NetTx);
        ntp.wait(rng.lognormal(15_000.0, 0.4));
        m.kernel.run(&mut ntp, &mut rng, KPath::NetRx);
        m.kernel.run(&mut ntp, &mut rng, KPath::Syscall(159)); // adjtimex
        journal(m, &mut ntp, &mut rng, &mut entries);
        lanes.push(ntp);

        for (id, d) in m.daemons.iter().enumerate() {
            if d.period_us == 0.0 || !rng.chance(d.active) {
                continue;
            }
            // Its timer fell due while the guest was checkpointed: it fires
            // right after the resume, then on its period.
            let mut lane = Lane::new(rng.lognormal(30_000.0, 1.0), speed);
            while lane.now() < duration_us {
                wake(m, d, id, &mut lane, &mut rng);
                match id {
                    0 if rng.chance(0.35) => {
                        // A timer unit elapsed: start its service.
                        journal(m, &mut lane, &mut rng, &mut entries);
                        job(m, &mut lane, &mut rng, &mut fresh);
                        journal(m, &mut lane, &mut rng, &mut entries);
                    }
                    3 | 5 => {
                        m.kernel.run(&mut lane, &mut rng, KPath::NetTx);
                        lane.wait(rng.lognormal(2_000.0, 0.5));
                        m.kernel.run(&mut lane, &mut rng, KPath::NetRx);
                        if id == 5 {
                            journal(m, &mut lane, &mut rng, &mut entries);
                        }
                    }
                    6 => {
                        job(m, &mut lane, &mut rng, &mut fresh);
                        journal(m, &mut lane, &mut rng, &mut entries);
                    }
                    _ => {}
                }
                lane.wait(d.period_us * rng.lognormal(1.0, 0.1));
            }
            lanes.push(lane);
        }
        merge(lanes)
    }
}

/// A daemon wakes from poll/epoll, does its work and sleeps again.
fn wake(m: &Model, d: &Daemon, id: usize, lane: &mut Lane, rng: &mut Rng) {
    m.kernel.run(lane, rng, KPath::Schedule);
    m.kernel.run(lane, rng, KPath::Syscall(7)); // poll returns
    d.program.wake(lane, rng);
    let heap = &d.program.heap;
    for path in 0..d.paths {
        d.program.code.run(lane, rng, 50 + path as u64, 5, 4.0);
        // Its hot heap: the first third, where long-lived state sits.
        for _ in 0..2 {
            lane.write(heap.at(rng.index((heap.len() / 3).max(1))));
        }
        if rng.chance(0.3) {
            lane.read(heap.at(rng.index(heap.len())));
        }
        m.libc
            .run(lane, rng, 9 + id as u64 * 8 + path as u64, 3, 1.5);
        // The daemon's own system calls (reads, writes, timerfd, sendmsg).
        m.kernel
            .run(lane, rng, KPath::Syscall(300 + id as u16 * 8 + path as u16));
    }
}

/// systemd notices the clock jump (timerfd cancel-on-set) and walks every
/// timer unit to recompute when it elapses next.
fn recompute_timers(m: &Model, lane: &mut Lane, rng: &mut Rng) {
    let systemd = &m.daemons[0];
    wake(m, systemd, 0, lane, rng);
    systemd.program.code.run(lane, rng, 70, 12, 3.0);
    let heap = &systemd.program.heap;
    let mut unit = rng.index(heap.len());
    for _ in 0..heap.len() / 3 {
        // Units sit in a hash map: each points to one allocated elsewhere.
        lane.read(heap.at(unit));
        lane.work(rng.lognormal(4.0, 0.4));
        unit = (unit * 7 + 13 + rng.index(3)) % heap.len();
    }
}

/// journald appends an entry: the journal file's tail, its entry array,
/// and a bucket of its field hash table.
fn journal(m: &Model, lane: &mut Lane, rng: &mut Rng, entries: &mut usize) {
    let d = &m.daemons[1];
    wake(m, d, 1, lane, rng);
    // Header and field hash table in the first eighth, entry arrays in
    // the second, data appended from three quarters on.
    let j = &m.journal;
    let eighth = (j.len() / 8).max(1);
    lane.write(j.at((j.len() * 3 / 4 + *entries / 6).min(j.len() - 1)));
    lane.write(j.at(rng.index(eighth)));
    lane.read(j.at((eighth + rng.index(eighth)).min(j.len() - 1)));
    *entries += 1;
}

/// A short job: fork, exec a shell, which execs a tool; new pages for the
/// child's copies and stacks.
fn job(m: &Model, lane: &mut Lane, rng: &mut Rng, fresh: &mut FreeCursor) {
    // systemd sets the service up: unit state, cgroup, the fork.
    let systemd = &m.daemons[0];
    systemd.program.code.run(lane, rng, 80, 10, 3.0);
    for _ in 0..10 {
        lane.write(
            systemd
                .program
                .heap
                .at(rng.index(systemd.program.heap.len())),
        );
    }
    m.kernel.run(lane, rng, KPath::Syscall(57)); // fork: page tables, stack
    for _ in 0..rng.range(30, 60) {
        m.kernel.run(lane, rng, KPath::PageFault);
        lane.write(fresh.take(rng));
    }
    m.kernel.run(lane, rng, KPath::Syscall(59)); // execve
    m.kernel.run(lane, rng, KPath::Vfs);
    for f in 0..rng.range(4, 8) {
        m.shell.run(lane, rng, f, 8, 6.0);
        m.libc.run(lane, rng, 200 + f, 4, 2.0);
        for _ in 0..4 {
            lane.write(fresh.take(rng));
        }
    }
    m.kernel.run(lane, rng, KPath::Syscall(59));
    for f in 0..rng.range(6, 14) {
        m.tool.run(lane, rng, f, 6, 8.0);
        m.libc.run(lane, rng, 300 + f, 4, 2.0);
        for _ in 0..rng.range(3, 10) {
            lane.write(fresh.take(rng)); // the tool's heap
        }
    }
    // The tool reads files: configuration, its state, what it maintains.
    for _ in 0..rng.range(3, 10) {
        m.kernel.run(lane, rng, KPath::Vfs);
        let start = rng.index(m.page_cache.len());
        for &page in m.page_cache.span(start, rng.range(1, 12) as usize) {
            lane.read(page);
            lane.work(rng.lognormal(6.0, 0.4));
        }
    }
    m.kernel.run(lane, rng, KPath::Syscall(231)); // exit_group
}
