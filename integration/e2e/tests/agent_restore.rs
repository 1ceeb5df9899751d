//! End to end with real processes: the test guest checkpointed by `thaw vm
//! checkpoint`, restored twice by `thaw vm restore --agent` through one
//! `thaw agent` process: checksums equal to an uninterrupted run, the second
//! restore served from the agent's host cache, fault traces written, metrics
//! scraped over HTTP, and each restore freed when its vmm exits.

mod bins;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

const GUEST: [&str; 4] = [
    "--memory=64MiB",
    "--pattern=random",
    "--touches=20000",
    "--seed=11",
];

fn thaw(args: &[&str]) -> Vec<serde_json::Value> {
    let out = bins::thaw()
        .args(args)
        .args(["--json", "--serial=none", "--timeout=120s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thaw {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn event<'a>(lines: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    lines.iter().find(|l| l["event"] == name).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Sum of every sample of a metric family (all label sets).
fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn vmm_restores_through_the_agent_and_a_second_vm_shares_its_cache() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let traces = dir.path().join("traces");
    let sock = dir.path().join("agent.sock");

    let mut run = vec!["vm", "run"];
    run.extend(GUEST);
    let want = event(&thaw(&run), "done")["checksums"].clone();

    let store_arg = format!("--store={store}");
    let mut ck = vec!["vm", "checkpoint", &store_arg, "--at=300ms"];
    ck.extend(GUEST);
    let lines = thaw(&ck);
    let id = event(&lines, "checkpoint")["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let port = free_port();
    let _agent = bins::Killed(
        bins::thaw()
            .args([
                "agent",
                "--socket",
                sock.to_str().unwrap(),
                "--store",
                store,
            ])
            .args(["--trace-dir", traces.to_str().unwrap()])
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    bins::wait_until("the agent starts", Duration::from_secs(20), || {
        sock.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let id_arg = format!("--id={id}");
    let agent_arg = format!("--agent={}", sock.display());
    let restore = ["vm", "restore", &store_arg, &id_arg, &agent_arg];
    let first = thaw(&restore);
    assert_eq!(event(&first, "done")["checksums"], want, "first restore");
    let m1 = scrape(port);
    // The agent's defaults stream blocks besides fetching on faults: count
    // fetches of every priority.
    let fetched1 = metric_sum(&m1, "thaw_agent_blocks_fetched_total");
    assert!(fetched1 > 0.0);

    let second = thaw(&restore);
    assert_eq!(event(&second, "done")["checksums"], want, "second restore");
    let m2 = scrape(port);
    // The first guest touched all its memory, so every block is in the host
    // cache: the second VM is served from it (by faults or by streaming
    // installs) and nothing is fetched again.
    let from_cache = |m: &str| {
        metric(m, "thaw_agent_faults_total{source=\"cache\"}")
            + metric(m, "thaw_agent_cache_install_blocks_total")
    };
    assert!(from_cache(&m2) > from_cache(&m1), "{m2}");
    assert_eq!(
        metric_sum(&m2, "thaw_agent_blocks_fetched_total"),
        fetched1,
        "the second VM fetched nothing"
    );

    // Both vmms exited: both restores freed, both traces written.
    let start = Instant::now();
    loop {
        let m = scrape(port);
        let traces_written = std::fs::read_dir(&traces).map_or(0, |d| d.count());
        if metric(&m, "thaw_agent_restores_active") == 0.0 && traces_written == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "restores not freed:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
