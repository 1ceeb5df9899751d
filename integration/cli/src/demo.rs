//! `thaw demo`: the whole pipeline with real processes. Boot the test guest
//! and run it uninterrupted for its reference checksum; boot it again and
//! checkpoint it mid-run into the store; start a block server and a fetch
//! agent on loopback; restore lazily through them; check that the restored
//! guest finishes with the reference checksum; print what it took.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::daemon::{start_block_server, thaw, Daemon};
use thaw_block_protocol::tls::DevPki;

use thaw_format::units::format_bytes;

pub struct DemoOptions {
    pub store: String,
    pub memory_bytes: u64,
    /// Use this block server instead of starting one (its client PKI in `pki`).
    pub block_server: Option<SocketAddr>,
    /// Development PKI directory (ca.pem, client.pem, client.key; created if absent).
    pub pki: Option<PathBuf>,
}

/// Runs `thaw vm …` and returns its JSON events.
fn vm(args: &[String]) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = thaw()?
        .arg("vm")
        .args(args)
        .args(["--json", "--serial=none", "--timeout=5m"])
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "thaw vm {} failed", args.join(" "));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("vmm output {l:?}")))
        .collect()
}

fn event<'a>(events: &'a [serde_json::Value], name: &str) -> anyhow::Result<&'a serde_json::Value> {
    events
        .iter()
        .find(|e| e["event"] == name)
        .with_context(|| format!("the vmm reported no {name:?} event"))
}

fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: thaw\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sum of a metric over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn free_tcp_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs the demo; blocking (it drives processes), so call it off the async runtime.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let pki = opts.pki.clone().unwrap_or_else(|| work.path().join("pki"));
    DevPki::load_or_generate(&pki)?;
    // Checkpoints are signed and restores check the signature: a development key pair in the
    // default key directory, made once, is what later commands (`thaw checkpoint verify`) find.
    let key_dir = crate::keys::key_dir()?;
    let (signer, created) = thaw_store::keys::ensure(&key_dir)?;
    if created {
        println!(
            "made a development signing key pair in {} (thaw keygen)",
            key_dir.display()
        );
    }
    let pages = opts.memory_bytes / 4096;
    let guest: Vec<String> = vec![
        format!("--memory={}", opts.memory_bytes),
        "--pattern=random".into(),
        format!("--touches={}", pages * 2),
        "--seed=7".into(),
    ];

    println!("1/5 running the test guest uninterrupted for its reference checksum");
    let mut run_args = vec!["run".to_owned()];
    run_args.extend(guest.clone());
    let reference = event(&vm(&run_args)?, "done")?["checksums"].clone();

    println!(
        "2/5 booting it again and checkpointing it mid-run into {}",
        opts.store
    );
    let mut ck = vec![
        "checkpoint".to_owned(),
        format!("--store={}", opts.store),
        "--at=300ms".into(),
    ];
    ck.extend(guest.clone());
    let ck_events = vm(&ck)?;
    let id = event(&ck_events, "checkpoint")?["checkpoint"]["id"]
        .as_str()
        .context("checkpoint id")?
        .to_owned();

    println!("3/5 starting a block server and a fetch agent on loopback");
    let (_server, server_addr) = match opts.block_server {
        Some(addr) => (None, addr),
        None => {
            let (d, a) = start_block_server(&opts.store, &pki, 1 << 30, None)?;
            (Some(d), a)
        }
    };
    let socket = work.path().join("agent.sock");
    let metrics = free_tcp_port()?;
    let _agent = Daemon(
        thaw()?
            .args(["agent", "--socket"])
            .arg(&socket)
            .args([
                "--store",
                &opts.store,
                "--block-server",
                &server_addr.to_string(),
            ])
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("client.pem"))
            .arg("--key")
            .arg(pki.join("client.key"))
            .args(["--metrics", &metrics.to_string()])
            .spawn()?,
    );
    wait_for("the fetch agent", || {
        socket.exists() && TcpStream::connect(metrics).is_ok()
    })?;

    println!("4/5 restoring lazily through the agent (checkpoint {id})");
    let restore = vec![
        "restore".to_owned(),
        format!("--store={}", opts.store),
        format!("--id={id}"),
        format!("--agent={}", socket.display()),
    ];
    let events = vm(&restore)?;
    let done = event(&events, "done")?;
    let resume_ms = event(&events, "restored")?["timings"]["resume_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    ensure!(
        done["checksums"] == reference,
        "restored guest ended with checksums {} but the uninterrupted run with {reference}",
        done["checksums"]
    );

    println!("5/5 checksum matches the uninterrupted run");
    let m = scrape(metrics)?;
    println!();
    println!(
        "thaw demo: {} guest restored lazily from {}",
        format_bytes(opts.memory_bytes),
        opts.store
    );
    let rows = [
        ("checkpoint", id.clone()),
        (
            "signed by",
            format!(
                "{} ({})",
                thaw_format::signature::key_id(&signer),
                key_dir.display()
            ),
        ),
        ("resume time", format!("{resume_ms:.2} ms")),
        (
            "faults served",
            format!("{}", metric_sum(&m, "thaw_agent_faults_total")),
        ),
        (
            "blocks fetched",
            format!("{}", metric_sum(&m, "thaw_agent_blocks_fetched_total")),
        ),
        (
            "bytes fetched",
            format_bytes(metric_sum(&m, "thaw_agent_bytes_fetched_total") as u64),
        ),
        (
            "time to finish",
            format!("{:.2} s", done["elapsed_s"].as_f64().unwrap_or(f64::NAN)),
        ),
        ("checksum", "identical to the uninterrupted run".into()),
    ];
    for (k, v) in rows {
        println!("  {k:<16} {v}");
    }
    Ok(())
}
