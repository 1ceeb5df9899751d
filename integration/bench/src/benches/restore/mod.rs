//! `thaw-bench restore`: every strategy of restoring a checkpoint, side by
//! side on the same workload trace and the same emulated link.
//!
//! Per workload (a directory in the workload format): a layout is learned
//! from every trace but the last and the last is measured. The memory is
//! written as one checkpoint per layout the strategies need, the trace is
//! replayed once with all memory present (the baseline), then once per
//! link × strategy by a replayer process whose memory a fresh fetch agent
//! (cold cache) restores through the link. Restore overhead = time to
//! finish − baseline.

pub(crate) mod checkpoints;
pub(crate) mod eager;
pub(crate) mod env;
pub(crate) mod foresight;
pub mod hops;
pub mod strategy;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::workload_dir::Workload;
use anyhow::{bail, ensure, Context};
use fetch_agent::metrics::SourceKind;
use fetch_agent::{Agent, AgentConfig};
use serde::Serialize;
use thaw_store::Store;

use super::latency;
use crate::link::LinkSpec;
use crate::replay::spawn::Memory;
use crate::replay::{replay, ReplayPlan};
use crate::report::rows::{Link, Row as MeasuredRow};
use env::{LinkEnv, Pki};
use foresight::{Foresight, StallSplit};
use strategy::{Layout, Plan, Strategy};

/// The store name hand-offs carry; each agent maps it to the link's store.
const STORE_SPEC: &str = "bench://checkpoints";
/// Touches that took longer than this waited for memory. A userfaultfd
/// round trip through the agent takes about 4 µs here at the least; a touch
/// of a present page takes well under 1 µs, but up to 2 µs when its page
/// tables are cold (this machine is itself a VM): with a 1 µs bound, thaw's
/// rows counted 500 such touches beside 60-80 faults.
pub const STALL_NS: u64 = 4_000;
/// Host cache of each (fresh) agent: large enough to keep everything.
const AGENT_CACHE_BYTES: u64 = 4 << 30;
/// Points of the fault-latency CDF kept per row.
const CDF_POINTS: usize = 50;

pub struct RestoreBench {
    pub workloads: Vec<PathBuf>,
    pub links: Vec<LinkSpec>,
    pub strategies: Vec<Strategy>,
    /// The `thaw-bench` binary, whose `replay` is the replayer process.
    pub thaw_bench: PathBuf,
    pub json: Option<PathBuf>,
    /// A replay taking longer than this fails.
    pub replay_timeout: Duration,
    /// Where each lazy run's fetch agent writes its fault trace (one
    /// directory per workload × link × strategy), to see which faults a
    /// strategy left and where their pages came from.
    pub agent_traces: Option<PathBuf>,
    /// Where the hop events of block requests are recorded (its layer
    /// installed), to time the legs of each run's demand fetches.
    pub hop_log: Option<hops::HopLog>,
}

/// One workload × link × strategy: what the report reads, plus the
/// comparisons the benchmark prints.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub measured: MeasuredRow,
    /// 1 − overhead / overhead of `lazy-4k` on the same workload and link.
    pub overhead_cut_vs_lazy_4k: Option<f64>,
    /// Time to finish / that of `oracle` on the same workload and link.
    pub time_vs_oracle: Option<f64>,
}

pub fn run(cfg: RestoreBench) -> anyhow::Result<Vec<Row>> {
    ensure!(!cfg.workloads.is_empty(), "no workload to run");
    ensure!(!cfg.links.is_empty(), "no link to run");
    ensure!(!cfg.strategies.is_empty(), "no strategy to run");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir().context("benchmark directory")?;
    let pki = Pki::create(&tmp.path().join("pki"))?;
    let mut rows = Vec::new();
    for dir in &cfg.workloads {
        let workload =
            Workload::load(dir).with_context(|| format!("workload {}", dir.display()))?;
        let name = workload.spec.name.clone();
        let rows_before = rows.len();
        let (measured, learn) = workload
            .traces
            .split_last()
            .filter(|(_, learn)| !learn.is_empty())
            .with_context(|| {
                format!(
                    "workload {name} ({}) needs at least two traces: one to learn from, the last to measure",
                    dir.display()
                )
            })?;
        let learn: Vec<_> = learn.iter().collect();
        let foresight = Foresight::new(&learn);
        println!(
            "{name}: learn from {} trace(s), measure {} ({} touches)",
            learn.len(),
            measured.name,
            measured.events.len()
        );

        let store = Store::open("memory://")?;
        let layouts: Vec<Layout> = cfg
            .strategies
            .iter()
            .map(|s| match s.plan() {
                Plan::Eager { layout } | Plan::Lazy { layout, .. } => layout,
            })
            .collect();
        let checkpoints = rt.block_on(checkpoints::write(
            &store, &workload, &learn, measured, &layouts,
        ))?;

        let image = tmp.path().join(format!("{name}.raw"));
        std::fs::write(&image, &workload.memory)
            .with_context(|| format!("writing {}", image.display()))?;
        let plan = ReplayPlan {
            thaw_bench: cfg.thaw_bench.clone(),
            image,
            regions: crate::replay::child::Regions(
                workload
                    .spec
                    .regions
                    .iter()
                    .map(|r| (r.guest_phys_addr, r.size))
                    .collect(),
            ),
            page_size: workload.spec.page_size,
            trace: dir.join("traces").join(format!("{}.trace", measured.name)),
            timeout: cfg.replay_timeout,
        };
        ensure!(
            plan.trace.exists(),
            "the measured trace {} is missing",
            plan.trace.display()
        );
        // The best of two: the baseline is the floor every strategy is
        // measured against.
        let baseline = (0..2)
            .map(|_| replay(&plan, Memory::Present).map(|r| r.time_to_finish_s))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .fold(f64::INFINITY, f64::min);
        println!("{name}: baseline (all memory present) {baseline:.3} s");

        for link in &cfg.links {
            for &strategy in &cfg.strategies {
                let run = Run {
                    rt: &rt,
                    pki: &pki,
                    store: &store,
                    link,
                    strategy,
                    workload: &workload,
                    checkpoints: &checkpoints,
                    plan: &plan,
                    measured,
                    foresight: &foresight,
                    socket: tmp.path().join("agent.sock"),
                    trace_dir: cfg
                        .agent_traces
                        .as_ref()
                        .map(|d| d.join(format!("{name}-{}-{strategy}", link.name()))),
                };
                if let Some(log) = &cfg.hop_log {
                    log.take();
                }
                let m = run
                    .measure()
                    .with_context(|| format!("{name} over {} with {strategy}", link.name()))?;
                let mut row = m.into_row(&name, link_of(link)?, strategy, baseline);
                row.measured.demand_fetch_us =
                    cfg.hop_log.as_ref().and_then(|l| hops::split(&l.take()));
                print_row(&row);
                rows.push(row);
            }
        }
        compare(&mut rows[rows_before..]);
    }
    print_table(&rows);
    if let Some(path) = &cfg.json {
        let text = serde_json::to_string_pretty(&rows)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(rows)
}

/// Fills in each row's cut versus lazy-4k and ratio to the oracle.
fn compare(rows: &mut [Row]) {
    let find = |rows: &[Row], link: Link, strategy: Strategy| {
        rows.iter()
            .map(|r| &r.measured)
            .find(|r| r.link == link && r.strategy == strategy)
            .map(|r| (r.restore_overhead_s, r.time_to_finish_s))
    };
    let snapshot = rows.to_vec();
    for row in rows.iter_mut() {
        let link = row.measured.link;
        if let Some((lazy_overhead, _)) = find(&snapshot, link, Strategy::Lazy4k) {
            if lazy_overhead > 0.0 {
                row.overhead_cut_vs_lazy_4k =
                    Some(1.0 - row.measured.restore_overhead_s / lazy_overhead);
            }
        }
        if let Some((_, oracle_time)) = find(&snapshot, link, Strategy::Oracle) {
            row.time_vs_oracle = Some(row.measured.time_to_finish_s / oracle_time);
        }
    }
}

/// What one strategy measured.
struct Measured {
    time_to_finish_s: f64,
    requests: u64,
    bytes: u64,
    faults: u64,
    stalls_us: Vec<f64>,
    /// None when the guest never waited for memory by design (eager).
    stalls: Option<StallSplit>,
}

impl Measured {
    fn into_row(self, workload: &str, link: Link, strategy: Strategy, baseline: f64) -> Row {
        Row {
            measured: MeasuredRow {
                workload: workload.to_owned(),
                link,
                strategy,
                time_to_finish_s: self.time_to_finish_s,
                restore_overhead_s: self.time_to_finish_s - baseline,
                requests: self.requests,
                bytes: self.bytes,
                faults: self.faults,
                baseline_s: baseline,
                fault_latency_us: latency::percentiles(&self.stalls_us),
                fault_latency_cdf: latency::cdf(&self.stalls_us, CDF_POINTS),
                demand_fetch_us: None,
                stalls_by_foresight: self.stalls,
            },
            overhead_cut_vs_lazy_4k: None,
            time_vs_oracle: None,
        }
    }
}

struct Run<'a> {
    rt: &'a tokio::runtime::Runtime,
    pki: &'a Pki,
    store: &'a Store,
    link: &'a LinkSpec,
    strategy: Strategy,
    workload: &'a Workload,
    checkpoints: &'a checkpoints::Checkpoints,
    plan: &'a ReplayPlan,
    measured: &'a thaw_format::workload::Trace,
    foresight: &'a Foresight,
    socket: PathBuf,
    trace_dir: Option<PathBuf>,
}

impl Run<'_> {
    fn measure(&self) -> anyhow::Result<Measured> {
        let _guard = self.rt.enter();
        let env = LinkEnv::start(self.link, self.store, self.pki)?;
        match self.strategy.plan() {
            Plan::Eager { layout } => self.eager(&env, layout),
            Plan::Lazy {
                layout,
                policy,
                fetch,
            } => {
                if let Some(dir) = &self.trace_dir {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let config = AgentConfig {
                    // The bench writes its checkpoints itself.
                    trust: thaw_format::ManifestTrust::InsecureUnsigned,
                    store: None,
                    allowed_stores: Vec::new(),
                    allowed_uids: Vec::new(),
                    checkpoint: None,
                    block_servers: env.block_servers()?,
                    policy,
                    fetch,
                    cache_bytes: AGENT_CACHE_BYTES,
                    trace_dir: self.trace_dir.clone(),
                };
                self.lazy(&env, layout, config)
            }
        }
    }

    /// Fetch everything, then run: the fetch time plus the baseline run
    /// (the replay of a guest whose memory is all present).
    fn eager(&self, env: &LinkEnv, layout: Layout) -> anyhow::Result<Measured> {
        let id = self.checkpoints.id(layout);
        let fetched = self.rt.block_on(eager::fetch_all(
            env.eager_source()?,
            id,
            &self.workload.memory,
        ))?;
        let run = replay(self.plan, Memory::Present)?;
        Ok(Measured {
            time_to_finish_s: fetched.elapsed.as_secs_f64() + run.time_to_finish_s,
            requests: fetched.requests,
            bytes: fetched.bytes,
            faults: 0,
            stalls_us: Vec::new(),
            stalls: None,
        })
    }

    fn lazy(&self, env: &LinkEnv, layout: Layout, config: AgentConfig) -> anyhow::Result<Measured> {
        let agent = Agent::new(config, self.rt.handle().clone());
        agent.register_store(STORE_SPEC, env.agent_store.clone());
        // A running agent keeps its block-server connections open.
        self.rt.block_on(agent.connect());
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket)
            .with_context(|| format!("binding {}", self.socket.display()))?;
        let serving = {
            let agent = agent.clone();
            std::thread::spawn(move || {
                let (conn, _) = listener.accept()?;
                anyhow::Ok(agent.handle(conn)?)
            })
        };
        let id = self.checkpoints.id(layout).to_string();
        let store_requests_before = env.store_requests();
        let replayed = replay(
            self.plan,
            Memory::Agent {
                socket: &self.socket,
                store: STORE_SPEC,
                checkpoint: &id,
            },
        );
        if replayed.is_err() {
            // A replayer that died before connecting leaves accept waiting.
            let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        }
        let report = match serving.join() {
            Ok(r) => r,
            Err(_) => bail!("the agent's restore thread panicked"),
        };
        let replayed = replayed?;
        let report = report.context("the agent's restore")?;
        let stalls = self
            .foresight
            .split(&self.measured.events, &replayed.touch_ns, STALL_NS)?;
        if env.has_block_server() {
            let direct: u64 = report.counters.blocks[SourceKind::ObjectStore as usize]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            ensure!(
                direct == 0,
                "{direct} blocks bypassed the block server (and so the link)"
            );
        }
        Ok(Measured {
            time_to_finish_s: replayed.time_to_finish_s,
            // Over the object-store link, what the store answered: a run of
            // neighbouring blocks is one request.
            requests: match (store_requests_before, env.store_requests()) {
                (Some(before), Some(after)) => after - before,
                _ => report.fetched_blocks,
            },
            bytes: report.fetched_bytes,
            faults: report.faults,
            stalls: Some(stalls),
            stalls_us: replayed
                .touch_ns
                .iter()
                .filter(|&&ns| ns > STALL_NS)
                .map(|&ns| ns as f64 / 1000.0)
                .collect(),
        })
    }
}

/// The report's name for a link.
fn link_of(link: &LinkSpec) -> anyhow::Result<Link> {
    serde_json::from_value(serde_json::Value::from(link.name()))
        .with_context(|| format!("link {:?} has no place in the report", link.name()))
}

fn print_row(r: &Row) {
    let m = &r.measured;
    println!(
        "  {:<13} {:<25} finish {:>8.3} s  overhead {:>8.3} s  requests {:>6}  bytes {:>10}  faults {:>6}",
        m.link.name(),
        m.strategy.name(),
        m.time_to_finish_s,
        m.restore_overhead_s,
        m.requests,
        m.bytes,
        m.faults
    );
    if let Some(s) = &m.stalls_by_foresight {
        println!(
            "  {:<13} stalled touches {:>5} ({:.1} ms), of them on pages no learning trace touched {:>5} ({:.1} ms)",
            "",
            s.foreseen.touches + s.unforeseen.touches,
            (s.foreseen.waited_s + s.unforeseen.waited_s) * 1e3,
            s.unforeseen.touches,
            s.unforeseen.waited_s * 1e3,
        );
    }
    if let Some(s) = &m.demand_fetch_us {
        let p50 = |l: &hops::Leg| l.percentiles.p50;
        println!(
            "  {:<13} demand fetches {:>5}: to server {:>6.0} µs, at server {:>5.0}, back {:>6.0}, total {:>6.0} (medians; means {:.0}, {:.0}, {:.0}, {:.0})",
            "",
            s.fetches,
            p50(&s.to_server_us),
            p50(&s.at_server_us),
            p50(&s.back_us),
            p50(&s.total_us),
            s.to_server_us.mean,
            s.at_server_us.mean,
            s.back_us.mean,
            s.total_us.mean
        );
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<12} {:<13} {:<25} {:>9} {:>9} {:>9} {:>8}",
        "workload", "link", "strategy", "finish s", "overhd s", "cut", "×oracle"
    );
    for r in rows {
        let m = &r.measured;
        let cut = r
            .overhead_cut_vs_lazy_4k
            .map_or("-".to_owned(), |c| format!("{:.1}%", c * 100.0));
        let vs = r
            .time_vs_oracle
            .map_or("-".to_owned(), |v| format!("{v:.3}"));
        println!(
            "{:<12} {:<13} {:<25} {:>9.3} {:>9.3} {:>9} {:>8}",
            m.workload,
            m.link.name(),
            m.strategy.name(),
            m.time_to_finish_s,
            m.restore_overhead_s,
            cut,
            vs
        );
    }
}
