//! `thaw-bench failover`: what losing a block server mid-restore costs a
//! guest. The test guest is checkpointed once; each run starts two block
//! servers on its store (`thaw block-server`), a fetch agent trying them in
//! order, then the object store (`thaw agent`), and restores the guest
//! through it (`thaw vm restore --agent`). A killed run SIGKILLs the first
//! server (the one serving the restore) shortly after the guest resumes.
//! Reported: the restore's wall time, clean and killed (medians), the
//! agent's source timeout, and killed runs whose guest ended with other
//! checksums than the clean runs (`wrong_pages`: a wrong page changes the
//! checksum, so this counts runs with at least one; it must be 0).
//! Goal: killed <= clean + 2 x the source timeout.
//!
//! The agent streams nothing (`--no-stream`): its fetches follow the
//! guest's faults for the whole first pass over memory, so the fault lands
//! while fetches are in flight to the killed server and more are to come.
//! The [`Rig`] is also what the end-to-end failover tests run.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::json;
use thaw_block_protocol::tls::DevPki;

use crate::link::BlackHoleRelay;

/// The test guest: 64 MiB touched sequentially, over and over. Under this
/// machine's emulated KVM a page's first touch is slow (a first pass takes
/// seconds, under 2 s on an idle machine) and later passes are quick, in both the first run and the
/// restored one, whose first pass also faults each block in through the
/// agent: that pass is the restore's fetching, spread over seconds.
pub const GUEST: [&str; 4] = [
    "--memory=64MiB",
    "--pattern=sequential",
    "--touches=16777216",
    "--seed=5",
];

/// When the checkpoint is taken: 1 s in, during the first pass on an idle or
/// a loaded machine, with part of memory written and the guest still running
/// (enough passes follow that it cannot finish first).
const CHECKPOINT_AT: &str = "--at=1s";

/// What goes wrong with the first block server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of its process.
    Kill,
    /// Every packet to and from it dropped (through a relay in this
    /// process); the process stays up.
    BlackHole,
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Block servers the agent tries in order (the object store after them).
    pub block_servers: usize,
    /// Done to the first block server `fault_after` the guest resumed.
    pub fault: Option<Fault>,
    pub fault_after: Duration,
    /// The agent's `--source-timeout`.
    pub source_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Wall time of `thaw vm restore`, start to exit.
    pub finish: Duration,
    /// The `done` event's checksums.
    pub checksums: serde_json::Value,
    /// From the fault to the restore's exit.
    pub fault_to_exit: Option<Duration>,
    /// Times the agent took a source out of use.
    pub sources_down: u64,
    /// Blocks fetched from each kind of source (block server, object store).
    pub fetched_from_block_servers: u64,
    pub fetched_from_store: u64,
}

/// A checkpoint of the test guest and what runs need to restore it.
pub struct Rig {
    thaw: PathBuf,
    dir: tempfile::TempDir,
    store: String,
    pki: PathBuf,
    /// The rig's own signing key pair ($THAW_KEY_DIR of every process it runs).
    keys: PathBuf,
    id: String,
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Process {
    child: Child,
    /// Kept open: a process writing to a closed pipe would die of it.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rig {
    /// Checkpoints the test guest into a new store under `parent` (a
    /// temporary directory when `None`), using the `thaw` binary at `thaw`.
    pub fn new(thaw: &Path, parent: Option<&Path>) -> anyhow::Result<Self> {
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::tempdir(),
        }
        .context("rig directory")?;
        let store = dir.path().join("store");
        let store = store.to_str().context("UTF-8 path")?.to_owned();
        let pki = dir.path().join("pki");
        DevPki::load_or_generate(&pki).context("development PKI")?;
        let keys = dir.path().join("keys");
        thaw_store::keys::generate(&keys).context("signing key pair")?;
        let out = Command::new(thaw)
            .env("THAW_KEY_DIR", &keys)
            .args([
                "vm",
                "checkpoint",
                &format!("--store={store}"),
                CHECKPOINT_AT,
            ])
            .args(["--dirty-windows=0"])
            .args(GUEST)
            .args(["--json", "--serial=none", "--timeout=120s"])
            .output()
            .context("running thaw vm checkpoint")?;
        ensure!(
            out.status.success(),
            "thaw vm checkpoint failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events = json_lines(&String::from_utf8_lossy(&out.stdout))?;
        let id = event(&events, "checkpoint")?["checkpoint"]["id"]
            .as_str()
            .context("checkpoint id")?
            .to_owned();
        Ok(Rig {
            thaw: thaw.to_owned(),
            dir,
            store,
            pki,
            keys,
            id,
        })
    }

    /// The `thaw` binary, with the rig's key directory.
    fn thaw(&self) -> Command {
        let mut cmd = Command::new(&self.thaw);
        cmd.env("THAW_KEY_DIR", &self.keys);
        cmd
    }

    pub fn checkpoint_id(&self) -> &str {
        &self.id
    }

    fn log(&self, name: &str) -> anyhow::Result<File> {
        File::create(self.dir.path().join(name)).context("log file")
    }

    fn read_log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    fn block_server(&self, n: usize) -> anyhow::Result<(Process, SocketAddr)> {
        let mut child = self
            .thaw()
            .args(["block-server", "--listen", "127.0.0.1:0", "--store"])
            .arg(&self.store)
            .arg("--dev-pki")
            .arg(&self.pki)
            .stdout(Stdio::piped())
            .stderr(self.log(&format!("block-server-{n}.log"))?)
            .spawn()
            .context("starting thaw block-server")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut process = Process {
            child,
            _stdout: None,
        };
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        process._stdout = Some(stdout);
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!(
                    "block server announced no address ({line:?}): {}",
                    self.read_log(&format!("block-server-{n}.log"))
                )
            })?;
        Ok((process, addr))
    }

    /// One restore as `spec` says.
    pub fn run(&self, spec: &RunSpec) -> anyhow::Result<RunOutcome> {
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        for n in 0..spec.block_servers {
            let (p, a) = self.block_server(n)?;
            servers.push(p);
            addrs.push(a);
        }
        let relay = match (spec.fault, addrs.first_mut()) {
            (Some(Fault::BlackHole), Some(first)) => {
                let relay = BlackHoleRelay::start("127.0.0.1:0".parse()?, *first)?;
                *first = relay.local_addr();
                Some(relay)
            }
            _ => None,
        };

        let socket = self.dir.path().join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let metrics = free_tcp_port()?;
        let mut agent = self.thaw();
        agent
            .args(["agent", "--socket"])
            .arg(&socket)
            .args(["--store", &self.store, "--no-stream"])
            .arg(format!(
                "--source-timeout={}ms",
                spec.source_timeout.as_millis()
            ))
            .args(["--metrics", &metrics.to_string()]);
        for a in &addrs {
            agent.args(["--block-server", &a.to_string()]);
        }
        if !addrs.is_empty() {
            agent
                .arg("--ca")
                .arg(self.pki.join("ca.pem"))
                .arg("--cert")
                .arg(self.pki.join("client.pem"))
                .arg("--key")
                .arg(self.pki.join("client.key"));
        }
        let mut agent = Process {
            child: agent
                .stderr(self.log("agent.log")?)
                .spawn()
                .context("starting thaw agent")?,
            _stdout: None,
        };
        let started = Instant::now();
        while !(socket.exists() && TcpStream::connect(metrics).is_ok()) {
            if let Some(status) = agent.child.try_wait()? {
                bail!("thaw agent exited {status}: {}", self.read_log("agent.log"));
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "thaw agent did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        let started = Instant::now();
        let mut vmm = Process {
            child: self
                .thaw()
                .args(["vm", "restore", &format!("--store={}", self.store)])
                .arg(format!("--id={}", self.id))
                .arg(format!("--agent={}", socket.display()))
                .args(["--json", "--serial=none", "--timeout=120s"])
                .stdout(Stdio::piped())
                .stderr(self.log("vmm.log")?)
                .spawn()
                .context("starting thaw vm restore")?,
            _stdout: None,
        };
        let stdout = vmm.child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut fault_at = None;
        for line in rx.iter() {
            let restored = line.contains("\"restored\"");
            lines.push(line);
            if restored {
                if let Some(fault) = spec.fault {
                    std::thread::sleep(spec.fault_after);
                    match fault {
                        Fault::Kill => {
                            let first = servers.first_mut().context("no block server to kill")?;
                            first.child.kill().context("killing the block server")?;
                            first.child.wait()?;
                        }
                        Fault::BlackHole => relay
                            .as_ref()
                            .context("no block server to black-hole")?
                            .black_hole(),
                    }
                    fault_at = Some(Instant::now());
                }
            }
        }
        let status = vmm.child.wait()?;
        let finish = started.elapsed();
        let _ = reader.join();
        ensure!(
            status.success(),
            "thaw vm restore exited {status}:\n{}\nagent:\n{}",
            self.read_log("vmm.log"),
            self.read_log("agent.log")
        );
        let events = json_lines(&lines.join("\n"))?;
        let done = event(&events, "done")?;
        let text = scrape(metrics)?;
        drop(agent);
        drop(servers);
        Ok(RunOutcome {
            finish,
            checksums: done["checksums"].clone(),
            fault_to_exit: fault_at.map(|t| t.elapsed().min(finish)),
            sources_down: metric_sum(&text, "thaw_agent_sources_down_total") as u64,
            fetched_from_block_servers: metric_with(
                &text,
                "thaw_agent_blocks_fetched_total",
                "source=\"block_server\"",
            ) as u64,
            fetched_from_store: metric_with(
                &text,
                "thaw_agent_blocks_fetched_total",
                "source=\"object_store\"",
            ) as u64,
        })
    }
}

fn json_lines(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

fn event<'a>(events: &'a [serde_json::Value], name: &str) -> anyhow::Result<&'a serde_json::Value> {
    events
        .iter()
        .find(|e| e["event"] == name)
        .with_context(|| format!("no {name} event in {events:?}"))
}

fn free_tcp_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).context("agent metrics")?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: thaw\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sum of a metric over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    metric_with(text, name, "")
}

/// Sum of a metric over the label sets containing `labels`.
fn metric_with(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

pub struct FailoverBench {
    pub json: Option<PathBuf>,
    pub runs: usize,
    pub source_timeout: Duration,
    /// The `thaw` binary; by default the one next to this executable.
    pub thaw: Option<PathBuf>,
}

/// Runs clean and killed restores alternately, `runs` of each.
pub fn run(cfg: FailoverBench) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    ensure!(cfg.runs >= 1, "need at least one run");
    let thaw = match cfg.thaw {
        Some(t) => t,
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("thaw"),
    };
    ensure!(thaw.is_file(), "no thaw binary at {}", thaw.display());
    let rig = Rig::new(&thaw, None)?;
    let spec = |fault| RunSpec {
        block_servers: 2,
        fault,
        fault_after: Duration::from_millis(300),
        source_timeout: cfg.source_timeout,
    };
    let mut clean = Vec::new();
    let mut killed = Vec::new();
    for i in 0..cfg.runs {
        let c = rig.run(&spec(None))?;
        eprintln!("clean run {}: {:.2} s", i + 1, c.finish.as_secs_f64());
        clean.push(c);
        let k = rig.run(&spec(Some(Fault::Kill)))?;
        eprintln!(
            "killed run {}: {:.2} s (sources down {}, blocks from block servers {}, from the store {})",
            i + 1,
            k.finish.as_secs_f64(),
            k.sources_down,
            k.fetched_from_block_servers,
            k.fetched_from_store
        );
        killed.push(k);
    }
    let reference = &clean[0].checksums;
    let wrong = clean
        .iter()
        .chain(&killed)
        .filter(|r| &r.checksums != reference)
        .count();
    let secs = |rs: &[RunOutcome]| {
        rs.iter()
            .map(|r| r.finish.as_secs_f64())
            .collect::<Vec<_>>()
    };
    let finish_clean = median(secs(&clean));
    let finish_killed = median(secs(&killed));
    let timeout_s = cfg.source_timeout.as_secs_f64();
    let fields = json!({
        "finish_s_clean": finish_clean,
        "finish_s_killed": finish_killed,
        "source_timeout_s": timeout_s,
        "wrong_pages": wrong,
        "extra_s_killed": finish_killed - finish_clean,
        "goal_met": finish_killed <= finish_clean + 2.0 * timeout_s,
        "runs": cfg.runs,
        "finish_s_clean_runs": secs(&clean),
        "finish_s_killed_runs": secs(&killed),
        "sources_down_killed_runs": killed.iter().map(|r| r.sources_down).collect::<Vec<_>>(),
        "kill_after_resume_s": spec(None).fault_after.as_secs_f64(),
    });
    let fields = fields.as_object().cloned().context("report fields")?;
    super::report(
        "failover: SIGKILL of the serving block server (of two) mid-restore",
        &fields,
        cfg.json.as_deref(),
    )?;
    Ok(fields)
}
