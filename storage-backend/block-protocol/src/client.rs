//! The client side of the block protocol: fetches stored block bytes and
//! manifests from a block server over one long-lived QUIC connection, one
//! stream per request, reconnecting when the connection is lost.

use std::net::SocketAddr;

use bytes::Bytes;

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

pub struct BlockClient {
    addr: SocketAddr,
    server_name: String,
    endpoint: quinn::Endpoint,
    connection: tokio::sync::Mutex<Option<quinn::Connection>>,
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
            connection: tokio::sync::Mutex::new(None),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live connection, connecting (again) if there is none.
    pub async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connect_err = |reason: String| ClientError::Connect {
            addr: self.addr,
            reason,
        };
        let conn = self
            .endpoint
            .connect(self.addr, &self.server_name)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        *slot = Some(conn.clone());
        Ok(conn)
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
