//! Safe defaults with real processes: the block server listens on loopback
//! and refuses to serve TLS without client certificates unless told to; the
//! development PKI's keys are private; the agent's socket is its user's
//! alone, a process of another user is refused by its credentials, and a
//! hand-off cannot name a store the agent was not started with (nor make it
//! create a directory).

mod bins;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fetch_agent::guest::MappedGuest;

/// The unprivileged user and group the refused client runs as.
const NOBODY: u32 = 65534;

impl bins::Killed {
    /// Kills the process and returns what it wrote to stderr.
    fn stderr(mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut text = String::new();
        if let Some(mut err) = self.0.stderr.take() {
            err.read_to_string(&mut text).unwrap();
        }
        text
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Starts `thaw block-server` on `store` with `args`; returns it with the
/// first line it prints (empty when it exits first).
fn start_block_server(store: &Path, args: &[&std::ffi::OsStr]) -> (bins::Killed, String) {
    let mut server = bins::Killed(
        bins::thaw()
            .args(["block-server", "--store"])
            .arg(store)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (server, line)
}

#[test]
fn block_server_listens_on_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (server, line) = start_block_server(
        &dir.path().join("store"),
        &["--dev-pki".as_ref(), pki.as_os_str()],
    );
    let stderr = server.stderr();
    // Another process may hold the default port; then the error names the address.
    let shown = if line.is_empty() { &stderr } else { &line };
    assert!(shown.contains("127.0.0.1:4433"), "{shown}");

    assert_eq!(mode(&pki), 0o700);
    for key in ["server.key", "client.key"] {
        assert_eq!(mode(&pki.join(key)), 0o600, "{key}");
    }
}

#[test]
fn tls_without_client_certificates_needs_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    thaw_block_protocol::tls::DevPki::load_or_generate(&pki).unwrap();
    let out = bins::thaw()
        .args(["block-server", "--listen", "127.0.0.1:0", "--store"])
        .arg(dir.path().join("store"))
        .arg("--cert")
        .arg(pki.join("server.pem"))
        .arg("--key")
        .arg(pki.join("server.key"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--client-ca") && stderr.contains("--no-client-auth"),
        "{stderr}"
    );

    let (_server, line) = start_block_server(
        &dir.path().join("store"),
        &[
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--cert".as_ref(),
            pki.join("server.pem").as_os_str(),
            "--key".as_ref(),
            pki.join("server.key").as_os_str(),
            "--no-client-auth".as_ref(),
        ],
    );
    assert!(line.contains("listening on 127.0.0.1:"), "{line}");
}

/// A running `thaw agent` whose log goes to a file.
struct AgentProcess {
    _process: bins::Killed,
    log: PathBuf,
}

impl AgentProcess {
    /// Waits (up to 10 s) for the agent's log to contain `text`; returns the log.
    fn log_with(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(text) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `thaw agent` on a socket in `dir`, serving `store`, with `extra` flags;
/// returns once its socket is there.
fn start_agent(dir: &Path, store: &Path, extra: &[&str]) -> (AgentProcess, PathBuf) {
    let sock = dir.join("agent.sock");
    let log = dir.join(format!("agent-{}.log", extra.len()));
    let process = bins::Killed(
        bins::thaw()
            .arg("agent")
            .arg("--socket")
            .arg(&sock)
            .arg("--store")
            .arg(store)
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    bins::wait_for_path(&sock, Duration::from_secs(20));
    // The mode is set right after the bind.
    std::thread::sleep(Duration::from_millis(100));
    let agent = AgentProcess {
        _process: process,
        log,
    };
    (agent, sock)
}

/// Hands `guest`'s memory to the agent at `sock` from a thread running as
/// `uid`:`gid` (the thread alone changes its credentials, which the socket
/// records at connect), and waits for the agent to close the connection.
/// Returns whether it did within `limit` (or before the message was sent).
fn hand_off_as(uid: u32, gid: u32, sock: &Path, message: Vec<u8>, limit: Duration) -> bool {
    let sock = sock.to_owned();
    // Made while privileged: an unprivileged userfaultfd may be off here.
    let guest = MappedGuest::new(1 << 20).unwrap();
    std::thread::spawn(move || {
        // SAFETY: raw setresgid/setresuid change this thread's credentials only
        // (glibc's wrappers would change every thread's); the thread ends here.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        // The agent may close the connection before the message is all sent.
        let conn: UnixStream = match guest.hand_off(&sock, &message) {
            Ok(conn) => conn,
            Err(e) => return e.to_string().contains("Broken pipe"),
        };
        closed_by_peer(&conn, limit)
    })
    .join()
    .unwrap()
}

/// Whether the agent closes `conn` within `limit`, sending nothing.
fn closed_by_peer(conn: &UnixStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    // The agent may say why before it hangs up (one line); closed with the message unread, the
    // socket is reset rather than ended.
    loop {
        match (&*conn).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn agent_socket_is_private_and_refuses_other_users() {
    let dir = tempfile::tempdir().unwrap();
    // Others may pass through to the socket (the group decides who connects).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();

    let (agent, sock) = start_agent(dir.path(), &store, &[]);
    assert_eq!(mode(&sock), 0o600);
    drop(agent);

    // The socket open to nobody's group, nobody not an allowed user: refused
    // by its credentials, the connection closed without reading the hand-off.
    let group = NOBODY.to_string();
    let (agent, sock) = start_agent(dir.path(), &store, &["--socket-group", &group]);
    assert_eq!(mode(&sock), 0o660);
    let message = b"{\"thaw_handoff\": 1, \"mappings\": []}".to_vec();
    assert!(hand_off_as(
        NOBODY,
        NOBODY,
        &sock,
        message.clone(),
        Duration::from_secs(10)
    ));
    let log = agent.log_with("refused a hand-off from uid 65534");
    assert!(log.contains("refused a hand-off from uid 65534"), "{log}");
    drop(agent);

    // Allowed, the same client is heard: its (empty) hand-off is read and
    // refused for what it says, not for who sent it.
    let (agent, sock) = start_agent(
        dir.path(),
        &store,
        &["--socket-group", &group, "--allow-uid", &group],
    );
    hand_off_as(NOBODY, NOBODY, &sock, message, Duration::from_secs(10));
    let log = agent.log_with("restore:");
    assert!(!log.contains("refused a hand-off from uid"), "{log}");
    assert!(log.contains("restore:"), "{log}");
}

#[test]
fn a_hand_off_cannot_name_another_store_or_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let (agent, sock) = start_agent(dir.path(), &store, &[]);

    let elsewhere = dir.path().join("elsewhere");
    let guest = MappedGuest::new(1 << 20).unwrap();
    let handoff = guest.handoff(
        Some(elsewhere.to_str().unwrap()),
        Some("0000000000a-00000001"),
    );
    let conn = guest.hand_off(&sock, &handoff.encode()).unwrap();
    assert!(closed_by_peer(&conn, Duration::from_secs(10)));
    let log = agent.log_with("which this agent does not serve");
    assert!(log.contains("which this agent does not serve"), "{log}");
    assert!(
        !elsewhere.exists(),
        "the hand-off made the agent create a directory"
    );
}
