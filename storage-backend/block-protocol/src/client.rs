//! The client side of the block protocol: fetches stored block bytes and
//! manifests from a block server over one long-lived QUIC connection, one
//! stream per request, reconnecting when the connection is lost.
//!
//! A reconnect never blocks other requests behind a lock: the handshake in
//! progress is shared by whoever needs the connection meanwhile, and each
//! caller bounds its own wait (a fetch's timeout).

use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::wire::{self, hop, Priority, ProtocolError, Request, Status, RESPONSE_HEADER_LEN};
use thaw_format::CheckpointId;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("block server {addr}: cannot connect: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("block server {addr}: connection lost: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("block server {addr}: stream failed: {reason}")]
    Stream { addr: SocketAddr, reason: String },
    #[error("block server {addr}: {source}")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: ProtocolError,
    },
    #[error("block server {addr} answered {status:?}: {message}")]
    Refused {
        addr: SocketAddr,
        status: Status,
        message: String,
    },
}

impl ClientError {
    /// Whether the server could not be reached or the connection failed
    /// (as opposed to an answer: a refusal, a bad frame or manifest).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Connection { .. }
                | ClientError::Stream { .. }
        )
    }
}

/// A handshake in progress, awaited by every request that needs it.
type Handshake = Shared<BoxFuture<'static, Result<quinn::Connection, String>>>;

enum Slot {
    Empty,
    Connecting(Handshake),
    Live(quinn::Connection),
}

pub struct BlockClient {
    addr: SocketAddr,
    server_name: String,
    endpoint: quinn::Endpoint,
    /// Held only to look at or replace the slot, never across an await.
    connection: Mutex<Slot>,
}

impl BlockClient {
    /// A client for the server at `addr` whose certificate names `server_name`.
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> std::io::Result<Self> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let mut endpoint = crate::endpoint::bind(bind, None)?;
        endpoint.set_default_client_config(config);
        Ok(Self {
            addr,
            server_name: server_name.to_owned(),
            endpoint,
            connection: Mutex::new(Slot::Empty),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection, connecting (again) if there is none; joins a
    /// handshake already under way.
    pub async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: self.addr,
            reason,
        };
        let handshake = {
            let mut slot = self.slot();
            match &*slot {
                Slot::Live(c) if c.close_reason().is_none() => return Ok(c.clone()),
                Slot::Connecting(h) => h.clone(),
                _ => {
                    let connecting = self
                        .endpoint
                        .connect(self.addr, &self.server_name)
                        .map_err(|e| connect_err(e.to_string()))?;
                    let h: Handshake = async move { connecting.await.map_err(|e| e.to_string()) }
                        .boxed()
                        .shared();
                    *slot = Slot::Connecting(h.clone());
                    h
                }
            }
        };
        let result = handshake.clone().await;
        let mut slot = self.slot();
        let current = matches!(&*slot, Slot::Connecting(h) if h.ptr_eq(&handshake));
        match result {
            Ok(conn) => {
                if current {
                    *slot = Slot::Live(conn.clone());
                }
                Ok(conn)
            }
            Err(reason) => {
                if current {
                    *slot = Slot::Empty;
                }
                Err(connect_err(reason))
            }
        }
    }

    /// Closes the connection (or abandons the handshake) so the next
    /// request connects afresh: for a server that stopped answering, whose
    /// connection QUIC would only give up after its idle timeout. Requests
    /// in flight on it fail.
    pub fn forget_connection(&self) {
        let old = std::mem::replace(&mut *self.slot(), Slot::Empty);
        if let Slot::Live(c) = old {
            c.close(0u32.into(), b"server stopped answering");
        }
    }

    /// A block's stored bytes (to be decoded and hash-checked by the caller
    /// against its manifest).
    pub async fn fetch_stored(
        &self,
        checkpoint: &CheckpointId,
        block: u32,
        priority: Priority,
    ) -> Result<Bytes, ClientError> {
        let req = Request::Block {
            checkpoint: checkpoint.clone(),
            block,
            priority,
        };
        self.request(&req, priority).await
    }

    /// A checkpoint's manifest object as the server's store holds it,
    /// neither decoded nor verified: the caller opens it under its own trust
    /// (`thaw_store::reader::open_manifest`), since the server is not trusted.
    pub async fn manifest_object(&self, checkpoint: &CheckpointId) -> Result<Bytes, ClientError> {
        self.request(
            &Request::Manifest {
                checkpoint: checkpoint.clone(),
            },
            Priority::Demand,
        )
        .await
    }

    async fn request(&self, req: &Request, priority: Priority) -> Result<Bytes, ClientError> {
        let conn = self.connection().await?;
        let stream_err = |reason: String| ClientError::Stream {
            addr: self.addr,
            reason,
        };
        let (mut send, mut recv) =
            conn.open_bi()
                .await
                .map_err(|source| ClientError::Connection {
                    addr: self.addr,
                    source,
                })?;
        let _ = send.set_priority(priority.stream_priority());
        let block = match req {
            Request::Block { block, .. } => Some(*block),
            Request::Manifest { .. } => None,
        };
        // Marked before the write: once written, the server may read it
        // before this task runs again.
        if let Some(block) = block {
            hop::mark(hop::REQUEST_SENT, block, priority as u8);
        }
        send.write_all(&wire::encode_request(req))
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        send.finish().map_err(|e| stream_err(e.to_string()))?;
        let mut header = [0u8; RESPONSE_HEADER_LEN];
        recv.read_exact(&mut header)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let header =
            wire::decode_response_header(&header).map_err(|source| ClientError::Protocol {
                addr: self.addr,
                source,
            })?;
        let mut payload = vec![0u8; header.len as usize];
        recv.read_exact(&mut payload)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        if let Some(block) = block {
            hop::mark(hop::RESPONSE_RECEIVED, block, priority as u8);
        }
        if header.status != Status::Ok {
            return Err(ClientError::Refused {
                addr: self.addr,
                status: header.status,
                message: String::from_utf8_lossy(&payload).into_owned(),
            });
        }
        Ok(Bytes::from(payload))
    }
}
