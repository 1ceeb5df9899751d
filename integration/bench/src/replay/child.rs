//! The replayer process (`thaw-bench replay`): maps the workload's regions
//! with the vmm's own guest-memory code, either hands them to a fetch agent
//! through the vmm's own hand-off (lazy restore) or copies the memory image
//! in (all memory present), replays one trace, checks every touched page
//! against the image, and prints one JSON result line on stdout.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};
use thaw_format::workload::parse_trace;
use vmm::vstate::memory::GuestMemory;

use super::pacing::{wait_step, Pacer, Wait};

/// Replay one trace over guest memory served by a fetch agent (or present).
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The memory image (regions concatenated), to fill present memory and
    /// to check touched pages against.
    #[arg(long)]
    pub image: PathBuf,
    /// Guest-physical regions, `ADDR:SIZE,...` in the image's order.
    #[arg(long, value_parser = parse_regions)]
    pub regions: Regions,
    #[arg(long, default_value_t = 4096)]
    pub page_size: u64,
    /// The trace to replay (`<t_us> <page_index>` lines).
    #[arg(long)]
    pub trace: PathBuf,
    /// The fetch agent's socket; without it, memory is filled from the image
    /// before the clock starts (the all-memory-present baseline).
    #[arg(long, requires_all = ["store", "checkpoint"])]
    pub agent: Option<PathBuf>,
    /// The store the hand-off names.
    #[arg(long)]
    pub store: Option<String>,
    /// The checkpoint the hand-off names.
    #[arg(long)]
    pub checkpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regions(pub Vec<(u64, u64)>);

fn parse_regions(s: &str) -> Result<Regions, String> {
    s.split(',')
        .map(|r| {
            let (a, b) = r
                .split_once(':')
                .ok_or_else(|| format!("region {r:?} is not ADDR:SIZE"))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{v:?} in region {r:?} is not a number"))
            };
            Ok((num(a)?, num(b)?))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Regions)
}

impl Regions {
    pub fn to_arg(&self) -> String {
        self.0
            .iter()
            .map(|(a, s)| format!("{a}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What a replay measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayResult {
    /// From the hand-off (or the start, with memory present) to the end of
    /// the last touch.
    pub time_to_finish_s: f64,
    /// Time the replayer spent inside touches (waiting for memory).
    pub stalled_s: f64,
    pub touches: u64,
    /// How long each touch took, in trace order, nanoseconds.
    pub touch_ns: Vec<u64>,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let result = replay(&args)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn replay(args: &ReplayArgs) -> anyhow::Result<ReplayResult> {
    let image = std::fs::read(&args.image)
        .with_context(|| format!("reading the memory image {}", args.image.display()))?;
    let total: u64 = args.regions.0.iter().map(|r| r.1).sum();
    ensure!(
        image.len() as u64 == total,
        "{} has {} bytes, the regions {total}",
        args.image.display(),
        image.len()
    );
    let text = std::fs::read_to_string(&args.trace)
        .with_context(|| format!("reading {}", args.trace.display()))?;
    let trace = parse_trace(
        &args.trace.display().to_string(),
        "replayed",
        &text,
        total / args.page_size,
    )?;
    let mut memory = GuestMemory::new(&args.regions.0)?;
    // Precise sleeps: the default 50 µs timer slack would blur think times.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };

    // Kept open for the whole replay: closing it ends the restore.
    let _connection = match &args.agent {
        Some(socket) => Some(hand_off(&memory, socket, args)?),
        None => {
            let mut offset = 0usize;
            for i in 0..memory.regions().len() {
                let dst = memory.region_bytes_mut(i);
                dst.copy_from_slice(&image[offset..offset + dst.len()]);
                offset += dst.len();
            }
            None
        }
    };

    let addresses: Vec<*const u8> = trace
        .events
        .iter()
        .map(|e| host_address(&memory, e.page * args.page_size))
        .collect();
    let start = Instant::now();
    let mut pacer = Pacer::new(start);
    let mut touch_ns = Vec::with_capacity(addresses.len());
    for (event, &addr) in trace.events.iter().zip(&addresses) {
        wait_until(pacer.due(event.t_us));
        let before = Instant::now();
        // SAFETY: `addr` lies inside a live mapping of `memory` (host_address
        // checked it); a volatile read keeps the touch from being optimised
        // away. A missing page blocks here until the agent installs it.
        unsafe { std::ptr::read_volatile(addr) };
        let took = before.elapsed();
        pacer.touched(took);
        touch_ns.push(took.as_nanos() as u64);
    }
    let time_to_finish = start.elapsed();

    for event in &trace.events {
        let at = (event.page * args.page_size) as usize;
        let want = &image[at..at + args.page_size as usize];
        let addr = host_address(&memory, event.page * args.page_size);
        // SAFETY: the page is inside the mapping and was installed (touched above).
        let got = unsafe { std::slice::from_raw_parts(addr, args.page_size as usize) };
        if got != want {
            bail!(
                "page {} differs from the checkpoint's memory after the restore",
                event.page
            );
        }
    }
    Ok(ReplayResult {
        time_to_finish_s: time_to_finish.as_secs_f64(),
        stalled_s: pacer.stalled().as_secs_f64(),
        touches: touch_ns.len() as u64,
        touch_ns,
    })
}

/// Registers the memory with userfaultfd and sends it to the agent the way
/// `thaw vm restore --agent` does.
fn hand_off(
    memory: &GuestMemory,
    socket: &std::path::Path,
    args: &ReplayArgs,
) -> anyhow::Result<UnixStream> {
    let uffd = vmm::persist::handoff::register(memory)?;
    let message =
        vmm::persist::handoff::describe(memory, args.store.clone(), args.checkpoint.clone());
    let conn = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    vmm::persist::handoff::send(&conn, &message, &uffd)?;
    // Our copy of the uffd goes: if the agent refuses the restore and drops
    // its copy, faults fall through to plain zero pages, which the check
    // after the replay reports, instead of hanging forever.
    drop(uffd);
    Ok(conn)
}

/// Host address of byte `offset` of the regions concatenated.
fn host_address(memory: &GuestMemory, offset: u64) -> *const u8 {
    let mut base = 0;
    for r in memory.regions() {
        if offset < base + r.size {
            return (r.host_addr() + (offset - base)) as *const u8;
        }
        base += r.size;
    }
    panic!("offset {offset} beyond guest memory (the trace parser checks pages)")
}

fn wait_until(deadline: Instant) {
    loop {
        match wait_step(Instant::now(), deadline) {
            Wait::Done => return,
            Wait::Sleep(d) => std::thread::sleep(d),
            Wait::Spin => std::hint::spin_loop(),
        }
    }
}
