//! The control API's socket: a thread accepts connections (this user's only), a thread per
//! connection reads its one request and hands the command to the thread that owns the VM, which
//! answers between guest events ([`ApiServer::next`]). A checkpoint asked for while another is
//! being written is refused at once rather than queued behind it.

use super::http::{self, Response};
use super::routes::{self, Command};
use fetch_agent::local_socket::{bind_private, peer_uid, LocalSocketError};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// How long a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A command waiting for the VM's owner, with where its answer goes.
pub struct Pending {
    pub command: Command,
    reply: Sender<Response>,
}

impl Pending {
    /// Answers the client (which may have gone: nothing to do then).
    pub fn answer(self, response: Response) {
        let _ = self.reply.send(response);
    }
}

/// A VM's control API socket, removed when dropped.
pub struct ApiServer {
    path: PathBuf,
    commands: Receiver<Pending>,
    closing: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Listens on `path` (mode 0600; a stale socket is replaced, a live one or another file is
    /// not).
    pub fn bind(path: &Path) -> Result<ApiServer, LocalSocketError> {
        let listener = bind_private(path, None)?;
        let (tx, commands) = channel();
        let closing = Arc::new(AtomicBool::new(false));
        let thread = {
            let closing = closing.clone();
            std::thread::Builder::new()
                .name("thaw-api".into())
                .spawn(move || accept_loop(listener, tx, &closing))
                .map_err(|source| LocalSocketError::Io {
                    what: "start the thread serving",
                    path: path.to_path_buf(),
                    source,
                })?
        };
        Ok(ApiServer {
            path: path.to_path_buf(),
            commands,
            closing,
            thread: Some(thread),
        })
    }

    /// The next command waiting, if any.
    pub fn next(&self) -> Option<Pending> {
        self.commands.try_recv().ok()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, commands: Sender<Pending>, closing: &AtomicBool) {
    let me = own_uid();
    let checkpointing = Arc::new(AtomicBool::new(false));
    for conn in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        match peer_uid(&conn) {
            Ok(uid) if uid == me || uid == 0 => {}
            Ok(uid) => {
                tracing::warn!("control API: refused a connection from uid {uid}");
                continue;
            }
            Err(e) => {
                tracing::warn!("control API: refused a connection whose sender is unknown: {e}");
                continue;
            }
        }
        let commands = commands.clone();
        let checkpointing = checkpointing.clone();
        let spawned = std::thread::Builder::new()
            .name("thaw-api-conn".into())
            .spawn(move || {
                if let Err(e) = serve(conn, &commands, &checkpointing) {
                    tracing::debug!("control API connection: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("control API: no thread for a connection: {e}");
        }
    }
}

/// This process's user, as the owner of its /proc entry.
fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

fn serve(
    mut conn: UnixStream,
    commands: &Sender<Pending>,
    checkpointing: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let request = loop {
        match http::parse_request(&buf) {
            Ok(Some(r)) => break Ok(r),
            Ok(None) => {}
            Err(e) => break Err(Response::error(e.status(), e)),
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let response = match request.and_then(|r| routes::route(&r)) {
        Err(refused) => refused,
        Ok(command) => {
            let checkpoint = matches!(command, Command::Checkpoint(_));
            if checkpoint && checkpointing.swap(true, Ordering::SeqCst) {
                Response::error(
                    409,
                    "a checkpoint of this VM is being written; ask again when it is done",
                )
            } else {
                let (reply, answer) = channel();
                let response = match commands.send(Pending { command, reply }) {
                    Ok(()) => answer
                        .recv()
                        .unwrap_or_else(|_| Response::error(503, "the VM is shutting down")),
                    Err(_) => Response::error(503, "the VM is shutting down"),
                };
                if checkpoint {
                    checkpointing.store(false, Ordering::SeqCst);
                }
                response
            }
        }
    };
    conn.write_all(&response.encode())
}
