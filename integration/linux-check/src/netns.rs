//! Network namespaces standing in for hosts: created with `ip netns`, deleted on drop (with every
//! interface in them), and code run inside one on a thread of its own.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace could not be set up or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run `ip {args}`: {source}")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        name: String,
        source: std::io::Error,
    },
    #[error("the thread inside network namespace {0} panicked")]
    Panicked(String),
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A network namespace: one this process created (deleted when dropped) or an existing one.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    owned: bool,
}

impl NetNs {
    /// Creates a namespace named `thaw-<prefix>-<pid>-<n>` (unique in this process) with its
    /// loopback up.
    pub fn create(prefix: &str) -> Result<NetNs, NetnsError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "thaw-{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace someone else made (named as `ip netns` names it); left in place on drop.
    pub fn existing(name: &str) -> NetNs {
        NetNs {
            name: name.to_string(),
            owned: false,
        }
    }

    /// The namespace's name (for `ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds a tap device `tap` owned by nobody in particular, with `cidr` (e.g. 172.16.0.1/30)
    /// on it, set up: a VMM in this namespace attaches a guest's network interface to it.
    pub fn add_tap(&self, tap: &str, cidr: &str) -> Result<(), NetnsError> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"])?;
        self.ip(&["addr", "add", cidr, "dev", tap])?;
        self.ip(&["link", "set", tap, "up"])
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets `f` opens belong to the namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        let file = File::open(&path).map_err(|source| NetnsError::Open { path, source })?;
        let name = self.name.clone();
        std::thread::spawn(move || {
            // SAFETY: setns on an fd we own naming a network namespace; it changes only this
            // thread's namespace, and the thread ends after `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter {
                    name,
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked(self.name.clone()))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("leaving network namespace {} behind: {e}", self.name);
        }
    }
}
