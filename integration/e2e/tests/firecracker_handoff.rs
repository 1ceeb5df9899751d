//! `thaw agent` as Firecracker's `Uffd` memory backend, with the test process playing
//! Firecracker: memory mapped as Firecracker maps it, the hand-off message each version sends,
//! pages touched and compared with the memory file, balloon removals (MADV_DONTNEED) read as
//! zeros afterwards without hanging, two regions with a gap between them, malformed messages
//! refused with the agent serving the next hand-off.

mod bins;
mod firecracker;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firecracker::{within, FirecrackerMemory};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// Bound on anything that touches guest memory: generous for a loaded machine, finite so a
/// fault nobody wakes fails the test.
const LIMIT: Duration = Duration::from_secs(60);

/// A Firecracker memory file: every page distinct, every fifth run of 4 pages zero.
fn memory_file(bytes: usize) -> Vec<u8> {
    let mut m = vec![0u8; bytes];
    for (p, page) in m.chunks_mut(PAGE).enumerate() {
        if (p / 4) % 5 == 4 {
            continue;
        }
        for (i, b) in page.iter_mut().enumerate() {
            *b = ((p * 7 + i / 32) % 253) as u8 + 1;
        }
    }
    m
}

/// A checkpoint of `file` laid out as Firecracker's x86 regions: RAM from guest address 0, the
/// rest above 4 GiB (the memory file is the regions concatenated). Returns its id.
fn checkpoint(store: &Path, file: &[u8], first: usize) -> String {
    let store = thaw_store::Store::open(store.to_str().unwrap()).unwrap();
    let regions = [
        thaw_store::MemoryRegion {
            guest_phys_addr: 0,
            bytes: &file[..first],
        },
        thaw_store::MemoryRegion {
            guest_phys_addr: 1 << 32,
            bytes: &file[first..],
        },
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let summary = rt
        .block_on(thaw_store::write_checkpoint(
            &store,
            &regions,
            Vec::new(),
            &thaw_store::WriteOptions {
                signing_key: Some(bins::signing_key()),
                ..thaw_store::WriteOptions::default()
            },
        ))
        .unwrap();
    summary.id.to_string()
}

/// A running `thaw agent` whose log goes to a file.
struct Agent {
    _process: bins::Killed,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, store: &Path, id: &str, extra: &[&str]) -> Agent {
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let process = bins::Killed(
            bins::thaw()
                .arg("agent")
                .arg("--socket")
                .arg(&socket)
                .arg("--store")
                .arg(store)
                .args(["--checkpoint", id])
                .args(extra)
                .env("RUST_LOG", "fetch_agent=debug")
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        bins::wait_for_path(&socket, Duration::from_secs(20));
        Agent {
            _process: process,
            socket,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Compares every page of `mem` with `file`, touching them in a scattered order.
fn check_all(mem: &Arc<FirecrackerMemory>, file: &Arc<Vec<u8>>) {
    let (mem, file) = (mem.clone(), file.clone());
    within(LIMIT, "reading all of memory", move || {
        let pages = file.len() / PAGE;
        for i in 0..pages {
            let p = (i * 389) % pages;
            let off = (p * PAGE) as u64;
            assert!(
                mem.page(off) == file[p * PAGE..(p + 1) * PAGE],
                "page {p} differs from the memory file"
            );
        }
    });
}

struct Setup {
    _dir: tempfile::TempDir,
    agent: Agent,
    file: Arc<Vec<u8>>,
    mem: Arc<FirecrackerMemory>,
    first: usize,
}

/// Two regions (3 MiB at guest address 0, 1 MiB at 4 GiB), their checkpoint, an agent serving
/// it with `extra` flags, and memory mapped as Firecracker maps it (not yet handed off).
fn setup(extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let first = 3 * MIB;
    let file = Arc::new(memory_file(4 * MIB));
    let id = checkpoint(&store, &file, first);
    let agent = Agent::start(dir.path(), &store, &id, extra);
    let mem = Arc::new(FirecrackerMemory::new(&[first, MIB], PAGE).unwrap());
    Setup {
        _dir: dir,
        agent,
        file,
        mem,
        first,
    }
}

#[test]
fn firecracker_1_12_hand_off_of_two_regions_serves_the_memory_file() {
    let s = setup(&["--no-stream", "--no-zero-ahead"]);
    let msg = s.mem.message_1_12();
    assert!(
        String::from_utf8_lossy(&msg).contains(r#""page_size":4096,"page_size_kib":4096}"#),
        "the message is Firecracker 1.12's"
    );
    let _conn = s.mem.hand_off(&s.agent.socket, &msg).unwrap();
    check_all(&s.mem, &s.file);
    // The second region's first page came from the file's byte 3 MiB.
    assert_eq!(s.mem.read(s.first as u64), s.file[s.first]);
}

/// Pages dropped by the balloon (MADV_DONTNEED) read as zeros afterwards, without hanging:
/// pages already served, pages never touched (not fetched: the guest gave them up), pages in
/// both regions; a page written after its removal keeps what was written.
fn balloon(extra: &[&str]) {
    let s = setup(extra);
    let _conn = s
        .mem
        .hand_off(&s.agent.socket, &s.mem.message_1_12())
        .unwrap();
    let (mem, file) = (s.mem.clone(), s.file.clone());
    let first = s.first as u64;
    // Serve the first 64 pages of each region.
    within(LIMIT, "first touches", move || {
        for p in 0..64u64 {
            for base in [0, first] {
                let off = base + p * PAGE as u64;
                assert_eq!(mem.read(off), file[off as usize], "page at {off:#x}");
            }
        }
    });
    // Give up served pages 8..24 of each region, and never-touched pages 200..232 of the first.
    let removed: Vec<(u64, usize)> = vec![
        (8 * PAGE as u64, 16 * PAGE),
        (first + 8 * PAGE as u64, 16 * PAGE),
        (200 * PAGE as u64, 32 * PAGE),
    ];
    for &(off, len) in &removed {
        s.mem.dontneed(off, len);
    }
    let mem = s.mem.clone();
    let gone = removed.clone();
    within(LIMIT, "reading removed pages", move || {
        for (off, len) in gone {
            for p in (off..off + len as u64).step_by(PAGE) {
                assert!(
                    mem.page(p).iter().all(|&b| b == 0),
                    "removed page at {p:#x} is not zero"
                );
            }
        }
    });
    // A removed page the guest writes again is ordinary memory.
    s.mem.write(9 * PAGE as u64 + 5, 0xa5);
    assert_eq!(s.mem.read(9 * PAGE as u64 + 5), 0xa5);
    // Removed again, it reads as zeros again.
    s.mem.dontneed(9 * PAGE as u64, PAGE);
    let mem = s.mem.clone();
    within(LIMIT, "reading a page removed twice", move || {
        assert_eq!(mem.read(9 * PAGE as u64 + 5), 0)
    });
    // Everything else is still the memory file.
    let mut expected = (*s.file).clone();
    for &(off, len) in &removed {
        expected[off as usize..off as usize + len].fill(0);
    }
    check_all(&s.mem, &Arc::new(expected));
    let log = s.agent.log();
    assert!(log.contains("the guest gave pages up"), "{log}");
}

#[test]
fn balloon_removals_read_as_zeros_when_serving_on_faults() {
    balloon(&["--no-stream", "--no-zero-ahead"]);
}

#[test]
fn balloon_removals_read_as_zeros_while_streaming() {
    // Streaming slowly, so removals race fetches in flight and blocks still to come.
    balloon(&["--stream-bandwidth", "256KiB", "--stream-in-flight", "2"]);
}

/// The agent's reason for hanging up (its one report line), read until it closes.
fn refusal(conn: UnixStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    let _ = (&conn).read_to_end(&mut out);
    fetch_agent::hangup::parse(&out).unwrap_or_else(|| String::from_utf8_lossy(&out).into())
}

#[test]
fn malformed_hand_offs_are_refused_clearly_and_the_next_is_served() {
    let s = setup(&["--no-stream"]);
    let r = &s.mem.regions;
    let region = |addr: u64, size: usize, offset: u64, page: &str| {
        format!(r#"{{"base_host_virt_addr":{addr},"size":{size},"offset":{offset}{page}}}"#)
    };
    let both = r#","page_size":4096,"page_size_kib":4096"#;
    let cases: Vec<(String, &str)> = vec![
        ("[{]".into(), "not valid JSON"),
        ("[]".into(), "no memory region"),
        ("\"memory\"".into(), "a string"),
        (
            format!(
                "[{}]",
                region(
                    r[0].addr,
                    r[0].size,
                    0,
                    r#","page_size":4096,"page_size_kib":8192"#
                )
            ),
            "disagree",
        ),
        (
            format!("[{}]", region(r[0].addr, r[0].size - 100, 0, both)),
            "multiple of the page size",
        ),
        (
            format!(
                "[{},{}]",
                region(r[0].addr, r[0].size, 0, both),
                region(r[1].addr, r[1].size, PAGE as u64, both)
            ),
            "offset range overlaps region 0",
        ),
        (
            format!(
                "[{},{}]",
                region(r[0].addr, r[0].size, 0, both),
                region(r[0].addr + PAGE as u64, r[1].size, r[0].size as u64, both)
            ),
            "host range overlaps region 0",
        ),
        // Well formed, but not the checkpoint's size.
        (
            format!("[{}]", region(r[0].addr, r[0].size, 0, both)),
            "the hand-off maps 3145728 bytes",
        ),
    ];
    for (msg, want) in &cases {
        let conn = s.mem.hand_off(&s.agent.socket, msg.as_bytes()).unwrap();
        let reason = refusal(conn);
        assert!(reason.contains(want), "{msg}: {reason}");
    }
    // A message without the userfaultfd.
    let conn = UnixStream::connect(&s.agent.socket).unwrap();
    std::io::Write::write_all(&mut &conn, &s.mem.message_1_12()).unwrap();
    let reason = refusal(conn);
    assert!(reason.contains("no file descriptor"), "{reason}");
    // The agent still serves a good hand-off, of an older Firecracker.
    let started = Instant::now();
    let _conn = s
        .mem
        .hand_off(&s.agent.socket, &s.mem.message_1_7())
        .unwrap();
    check_all(&s.mem, &s.file);
    assert!(started.elapsed() < LIMIT);
}
