//! A block server as a [`BlockSource`]: stored block bytes and manifests
//! over QUIC (`thaw_block_protocol::client`), demand requests on
//! higher-priority streams than prefetch and streaming.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use thaw_block_protocol::client::{BlockClient, ClientError};
use thaw_block_protocol::tls::{self, Identity};
use thaw_block_protocol::wire;
use thaw_format::CheckpointId;

use crate::metrics::SourceKind;
use crate::policy::Priority;
use crate::source::{BlockSource, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum BlockServerError {
    #[error("block server address {0:?}: {1}")]
    Address(String, String),
    #[error("TLS settings: {0}")]
    Tls(String),
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
}

pub struct BlockServerSource {
    name: String,
    client: BlockClient,
}

fn wire_priority(p: Priority) -> wire::Priority {
    match p {
        Priority::Demand => wire::Priority::Demand,
        Priority::Prefetch => wire::Priority::Prefetch,
        Priority::Stream => wire::Priority::Background,
    }
}

impl BlockServerSource {
    /// A client of the server at `spec` (`HOST:PORT`) trusting the CA in
    /// `ca`, presenting `cert` + `key` when given (mutual TLS). Must be
    /// called inside a tokio runtime.
    pub fn connect(
        spec: &str,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, BlockServerError> {
        Self::connect_named(spec, None, ca, identity)
    }

    /// [`Self::connect`], checking the server's certificate for
    /// `server_name` when given (an address a DNS name resolved to), else
    /// for the host `spec` names.
    pub fn connect_named(
        spec: &str,
        server_name: Option<&str>,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Self, BlockServerError> {
        let addr: SocketAddr = spec
            .to_socket_addrs()
            .map_err(|e| BlockServerError::Address(spec.into(), e.to_string()))?
            .next()
            .ok_or_else(|| BlockServerError::Address(spec.into(), "resolves to nothing".into()))?;
        let host = spec.rsplit_once(':').map_or(spec, |(h, _)| h);
        let host = server_name.unwrap_or(host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // Certificates name the server; a bare IP uses the dev PKI's name.
        let server_name = if host.parse::<IpAddr>().is_ok() {
            tls::SERVER_NAME
        } else {
            host
        };
        let ca_pem = tls::read_pem_file(ca).map_err(|e| BlockServerError::Tls(e.to_string()))?;
        let identity = identity
            .map(|(cert, key)| Identity::from_files(cert, key))
            .transpose()
            .map_err(|e| BlockServerError::Tls(e.to_string()))?;
        let config = tls::client_config(&ca_pem, identity.as_ref())
            .map_err(|e| BlockServerError::Tls(e.to_string()))?;
        let client =
            BlockClient::new(addr, server_name, config).map_err(BlockServerError::Endpoint)?;
        Ok(BlockServerSource {
            name: format!("block server {addr}"),
            client,
        })
    }

    /// A client error as a source error: unreachable when the connection
    /// failed, a plain failure when the server answered.
    fn error(&self, e: ClientError) -> SourceError {
        if e.is_unreachable() {
            SourceError::unreachable(&self.name, e)
        } else {
            SourceError::new(&self.name, e)
        }
    }

    pub fn into_source(self) -> Arc<dyn BlockSource> {
        Arc::new(self)
    }
}

impl BlockSource for BlockServerSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::BlockServer
    }

    fn fetch_stored<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        block: u32,
        priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async move {
            self.client
                .fetch_stored(checkpoint, block, wire_priority(priority))
                .await
                .map_err(|e| self.error(e))
        })
    }

    fn orders_by_priority(&self) -> bool {
        true
    }

    fn manifest_object<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        Box::pin(async move {
            self.client
                .manifest_object(checkpoint)
                .await
                .map_err(|e| SourceError::new(&self.name, e))
        })
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async move {
            self.client
                .connection()
                .await
                .map(drop)
                .map_err(|e| self.error(e))
        })
    }

    fn reset(&self) {
        self.client.forget_connection();
    }
}
