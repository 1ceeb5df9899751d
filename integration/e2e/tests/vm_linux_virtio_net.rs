//! Opt-in (slow: guest kernel code is emulated on this machine's KVM): the minimal Linux kernel
//! (scripts/build-linux) with root on virtio-blk configures eth0 on virtio-net from its `ip=`
//! parameter and is checkpointed once it runs init; restored lazily in a fresh process on the
//! checkpoint host's tap and then on another host's (each host a network namespace this test
//! makes and deletes, `--net tap=NAME` at restore), it answers ping from the host each time.
//!
//! `cargo test -p thaw-e2e --test vm_linux_virtio_net -- --ignored --nocapture`
//!
//! The init spins without system calls (Linux user space cannot make them on this KVM); the
//! kernel answers ICMP itself.

mod bins;
mod common;

use common::linux_guest::{ext4_root, minimal_kernel, sh};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Ends the VM process however the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace ("host") with a tap at 10.99.0.1/24; every host's tap has the same MAC,
/// as one network's gateway would.
fn host(tag: &str, tap: &str) -> Netns {
    let ns = Netns(format!("thaw-lnet-{tag}-{}", std::process::id()));
    sh(Command::new("ip").args(["netns", "add", &ns.0]));
    for args in [
        vec!["tuntap", "add", "dev", tap, "mode", "tap"],
        vec!["link", "set", tap, "address", "02:00:00:00:00:aa"],
        vec!["addr", "add", "10.99.0.1/24", "dev", tap],
        vec!["link", "set", tap, "up"],
    ] {
        sh(Command::new("ip").args(["-n", &ns.0]).args(args));
    }
    ns
}

fn thaw_in(ns: &Netns) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(bins::binary("thaw"))
        .env("THAW_KEY_DIR", bins::key_dir())
        .arg("vm");
    cmd
}

/// Restores the checkpoint in `ns` (lazily, in a fresh process), pings the guest, stops it.
fn restore_and_ping(ns: &Netns, store: &Path, id: &str, extra: &[String], log: &Path) -> u16 {
    let _ = std::fs::remove_file(log);
    let t = Instant::now();
    let _vm = Child(
        thaw_in(ns)
            .arg("restore")
            .arg(format!("--store={}", store.display()))
            .arg(format!("--id={id}"))
            .args(extra)
            .arg(format!("--serial={}", log.display()))
            .arg("--timeout=10m")
            .spawn()
            .unwrap(),
    );
    let answered = ping_in(&ns.0, [10, 99, 0, 2], 5);
    eprintln!(
        "restore in {}, ping: {answered} of 5 answered after {:?}",
        ns.0,
        t.elapsed()
    );
    answered
}

#[test]
#[ignore = "opt-in, minutes: cargo test -p thaw-e2e --test vm_linux_virtio_net -- --ignored"]
fn linux_answers_ping_over_virtio_net_before_and_after_a_restore_on_another_hosts_tap() {
    let dir = std::env::var_os("THAW_LINUX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-virtio-net"));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = minimal_kernel();
    let img = ext4_root(
        &dir,
        "static volatile unsigned long counter;\nvoid _start(void) { for (;;) counter++; }\n",
    );
    let a = host("a", "tap0");
    let b = host("b", "tapb");
    let store = dir.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let log = dir.join("console.log");
    let _ = std::fs::remove_file(&log);
    let t0 = Instant::now();
    let out = thaw_in(&a)
        .args([
            "checkpoint",
            "--memory=128MiB",
            "--cpu-baseline=x86-64",
            "--json",
        ])
        .arg(format!("--kernel={}", kernel.display()))
        .arg(format!(
            "--cmdline={} noxsave root=/dev/vda rw ip=10.99.0.2::10.99.0.1:255.255.255.0::eth0:off",
            vmm::boot::linux::DEFAULT_CMDLINE
        ))
        .arg(format!("--disk={}", img.display()))
        .arg("--net=tap=tap0")
        .arg(format!("--store={}", store.display()))
        .arg("--on-serial=Run /sbin/init as init process")
        .arg(format!("--serial={}", log.display()))
        .arg("--timeout=30m")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("boot to init and checkpoint: {:?}", t0.elapsed());
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("virtio_blk virtio0: [vda]"), "{console}");
    assert!(console.contains("IP-Config: Complete"), "{console}");
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["event"] == "checkpoint")
        .expect("a checkpoint event");
    let id = line["checkpoint"]["id"].as_str().unwrap().to_string();
    // The image as it was at the checkpoint, for the second restore (the first one's kernel
    // may write to the disk while it runs).
    let img_b = dir.join("root-b.img");
    std::fs::copy(&img, &img_b).unwrap();

    let before = restore_and_ping(&a, &store, &id, &[], &dir.join("restore-a.log"));
    assert!(before > 0, "no answer on the checkpoint host's tap");
    let after = restore_and_ping(
        &b,
        &store,
        &id,
        &[
            format!("--disk={}", img_b.display()),
            "--net=tap=tapb".into(),
        ],
        &dir.join("restore-b.log"),
    );
    assert!(after > 0, "no answer on the other host's tap");
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `count` ICMP echo requests to `addr` from inside namespace `ns` (a raw socket in a
/// thread that joined it), each waiting up to 20 s; returns how many were answered.
fn ping_in(ns: &str, addr: [u8; 4], count: u16) -> u16 {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: setns with an open namespace fd; changes only this thread's namespace.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        // SAFETY: plain socket creation; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 20,
            tv_usec: 0,
        };
        // SAFETY: sets a timeval option from a valid pointer and size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr),
            },
            sin_zero: [0; 8],
        };
        let mut answered = 0;
        for seq in 1..=count {
            let mut req = vec![8, 0, 0, 0, 0x7a, 0x77];
            req.extend_from_slice(&seq.to_be_bytes());
            req.extend_from_slice(b"thaw linux ping");
            let c = checksum(&req);
            req[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: sends from a valid buffer to a valid sockaddr_in of the given size.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            assert_eq!(
                sent,
                req.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let mut buf = [0u8; 1500];
                // SAFETY: receives into a valid buffer of its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    break;
                }
                let p = &buf[..n as usize];
                let ihl = usize::from(p[0] & 0xf) * 4;
                if p.len() >= ihl + 8
                    && p[12..16] == addr
                    && p[ihl] == 0
                    && p[ihl + 4..ihl + 6] == [0x7a, 0x77]
                    && p[ihl + 6..ihl + 8] == seq.to_be_bytes()
                {
                    answered += 1;
                    break;
                }
            }
        }
        // SAFETY: closes the socket opened above, once.
        unsafe { libc::close(fd) };
        answered
    })
    .join()
    .unwrap()
}
