//! Unix sockets that only their owner may use: the fetch agent's hand-off socket and a VM's
//! control API. Whoever can connect can ask for any checkpoint an agent serves, or stop a VM.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A private socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalSocketError {
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("another process is listening on {0}")]
    InUse(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds `path`, replacing a stale socket file a dead process left (never a live one or a file
/// that is not a socket), and lets only this user (mode 0600) or, with `group`, its members
/// (0660) connect.
pub fn bind_private(path: &Path, group: Option<u32>) -> Result<UnixListener, LocalSocketError> {
    let io = |what, source| LocalSocketError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(LocalSocketError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(LocalSocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| io("remove the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io("chown", e))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("set the mode of", e))?;
    Ok(listener)
}

/// The user of the process at the other end of `conn` (SO_PEERCRED: the credentials it
/// connected with, which it cannot forge). Checked on every connection, since a socket is
/// connectable for the moment between its bind and its chmod.
pub fn peer_uid(conn: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred on this stack frame,
    // and reads the open socket `conn` owns.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_sockets_are_0600_and_never_replace_what_they_should_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = bind_private(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let conn = UnixStream::connect(&path).unwrap();
        // SAFETY: getuid has no preconditions.
        assert_eq!(peer_uid(&conn).unwrap(), unsafe { libc::getuid() });
        let err = bind_private(&path, None).unwrap_err();
        assert!(matches!(err, LocalSocketError::InUse(_)), "{err}");
        drop((conn, listener));
        bind_private(&path, None).expect("a stale socket is replaced");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        let err = bind_private(&file, None).unwrap_err();
        assert!(matches!(err, LocalSocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
