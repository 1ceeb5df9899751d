//! Opt-in (slow: guest kernel code is emulated on this machine's KVM): the minimal Linux kernel
//! (scripts/build-linux) with root on virtio-blk configures eth0 on virtio-net from its `ip=`
//! parameter, and answers ping from the host through a tap in a network namespace this test
//! makes (and deletes).
//!
//! `cargo test -p thaw-e2e --test vm_linux_virtio_net -- --ignored --nocapture`
//!
//! The init spins without system calls (Linux user space cannot make them on this KVM); the
//! kernel answers ICMP itself.

mod bins;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kernel() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-linux");
    let out = sh(&mut Command::new(script));
    PathBuf::from(
        out.lines()
            .last()
            .expect("build-linux prints the vmlinux path")
            .trim(),
    )
}

fn root_image(dir: &Path) -> PathBuf {
    let src = dir.join("init.c");
    std::fs::write(
        &src,
        "static volatile unsigned long counter;\nvoid _start(void) { for (;;) counter++; }\n",
    )
    .unwrap();
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["sbin", "dev", "proc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    sh(Command::new("cc")
        .args(["-static", "-nostdlib", "-O2", "-fno-stack-protector", "-o"])
        .arg(root.join("sbin/init"))
        .arg(&src));
    let img = dir.join("root.img");
    let _ = std::fs::remove_file(&img);
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("16M"));
    img
}

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

#[test]
#[ignore = "opt-in, minutes: cargo test -p thaw-e2e --test vm_linux_virtio_net -- --ignored"]
fn linux_configures_eth0_on_virtio_net_and_answers_ping_through_a_tap() {
    let dir = std::env::var_os("THAW_LINUX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("linux-virtio-net"));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = kernel();
    let img = root_image(&dir);
    let ns = Netns(format!("thaw-lnet-{}", std::process::id()));
    sh(Command::new("ip").args(["netns", "add", &ns.0]));
    for args in [
        vec!["tuntap", "add", "dev", "tap0", "mode", "tap"],
        vec!["addr", "add", "10.99.0.1/24", "dev", "tap0"],
        vec!["link", "set", "tap0", "up"],
    ] {
        sh(Command::new("ip").args(["-n", &ns.0]).args(args));
    }
    let log = dir.join("console.log");
    let _ = std::fs::remove_file(&log);
    let t0 = Instant::now();
    let _vm = Child(
        Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(bins::binary("thaw"))
            .env("THAW_KEY_DIR", bins::key_dir())
            .args(["vm", "run", "--memory=128MiB", "--cpu-baseline=x86-64"])
            .arg(format!("--kernel={}", kernel.display()))
            .arg(format!(
                "--cmdline={} noxsave root=/dev/vda rw ip=10.99.0.2::10.99.0.1:255.255.255.0::eth0:off",
                vmm::boot::linux::DEFAULT_CMDLINE
            ))
            .arg(format!("--disk={}", img.display()))
            .arg("--net=tap=tap0")
            .arg(format!("--serial={}", log.display()))
            .arg("--timeout=30m")
            .spawn()
            .unwrap(),
    );
    let console = || std::fs::read_to_string(&log).unwrap_or_default();
    while !console().contains("Run /sbin/init as init process") {
        assert!(
            t0.elapsed() < Duration::from_secs(30 * 60),
            "no init after 30 minutes: {}",
            console()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("boot to init: {:?}", t0.elapsed());
    let c = console();
    assert!(
        c.contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
        "{c}"
    );
    assert!(c.contains("IP-Config: Complete"), "{c}");
    let t1 = Instant::now();
    let answered = ping_in(&ns.0, [10, 99, 0, 2], 5);
    eprintln!("ping: {answered} replies in {:?}", t1.elapsed());
    assert!(answered > 0, "the guest did not answer ping: {}", console());
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
