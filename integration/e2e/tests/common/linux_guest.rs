//! What a Linux guest test boots: the minimal kernel (`scripts/build-linux`, cached outside the
//! clone), the no-system-call init built from `vmm/guest/linux/init.c`, ext4 root images with an
//! init of the test's own, and newc cpio archives to pack an initramfs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root (this package is integration/e2e).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The minimal kernel's vmlinux: `scripts/build-linux` builds it the first time (about 4 minutes
/// on 2 cores, its progress on this process's stderr) and prints the cached path afterwards.
pub fn minimal_kernel() -> PathBuf {
    let script = workspace_root().join("scripts/build-linux");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); its stderr is above",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("{} printed no path", script.display()))
            .trim(),
    );
    assert!(
        path.is_file(),
        "{} printed {}, which is not a file",
        script.display(),
        path.display()
    );
    path
}

/// Builds the guest's /init (static, freestanding, no libc: it makes no system call) into `dir`
/// and returns its bytes.
pub fn build_init(dir: &Path) -> Vec<u8> {
    let source = workspace_root().join("vmm/guest/linux/init.c");
    let exe = dir.join("init");
    let out = Command::new("gcc")
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-O2",
            "-o",
        ])
        .arg(&exe)
        .arg(&source)
        .output()
        .expect("running gcc (apt-get install gcc)");
    assert!(
        out.status.success(),
        "gcc {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&exe).unwrap()
}

/// A newc ("070701") cpio archive, as the kernel unpacks an initramfs.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

/// File type bits of a cpio entry's mode.
pub const DIR: u32 = 0o040000;
pub const REGULAR: u32 = 0o100000;
pub const SYMLINK: u32 = 0o120000;
pub const CHAR_DEVICE: u32 = 0o020000;

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// Appends one entry: `mode` holds the type and permission bits, `rdev` the (major, minor)
    /// of a device node.
    pub fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> &mut Cpio {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(name, mode, data, rdev, ino);
        self
    }

    fn raw_entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32), ino: u32) {
        let nlink = if mode & DIR != 0 { 2 } else { 1 };
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 0, data.len(), 0, 0, rdev.0, rdev.1, name.len() + 1, 0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.raw_entry("TRAILER!!!", 0, &[], (0, 0), 0);
        self.out
    }
}

/// An initramfs holding `/init` (the program given), `/dev/console` and the directories the
/// kernel mounts on.
pub fn initramfs(init: &[u8]) -> Vec<u8> {
    let mut cpio = Cpio::new();
    cpio.entry("dev", DIR | 0o755, &[], (0, 0))
        .entry("dev/console", CHAR_DEVICE | 0o600, &[], (5, 1))
        .entry("proc", DIR | 0o755, &[], (0, 0))
        .entry("sys", DIR | 0o755, &[], (0, 0))
        .entry("init", REGULAR | 0o755, init, (0, 0));
    cpio.finish()
}

/// The last `lines` lines of a console log, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Console lines that say the kernel failed: a panic, an oops, a BUG, a fault, an init that
/// could not run.
pub fn kernel_failures(console: &str) -> Vec<&str> {
    const SIGNS: [&str; 6] = [
        "Kernel panic",
        "Oops",
        "BUG:",
        "general protection fault",
        "segfault at",
        "Failed to execute /init",
    ];
    console
        .lines()
        .filter(|l| SIGNS.iter().any(|s| l.contains(s)))
        .collect()
}

/// Runs a setup command; its stdout, or a panic naming it with its stderr.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 16 MiB ext4 image `dir/root.img` holding /sbin/init built (static, no libc, no system
/// call) from the C source `init_source`, and the directories the kernel mounts on.
pub fn ext4_root(dir: &Path, init_source: &str) -> PathBuf {
    let src = dir.join("init.c");
    std::fs::write(&src, init_source).unwrap();
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
