//! What one run of a strategy over a link needs around the fetch agent: for
//! a relayed link (`rack`, `region`) a fresh QUIC block server over the
//! checkpoints' store behind a delaying UDP relay; for the `object-store`
//! link the store itself, slowed down per request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use fetch_agent::source::block_server::BlockServerSource;
use fetch_agent::source::{BlockSource, ObjectStoreSource};
use thaw_block_protocol::server::{BlockServer, RunningServer};
use thaw_block_protocol::tls::{self, DevPki};
use thaw_store::Store;

use crate::link::{LinkSpec, RelayHandle, SlowStore, UdpRelay};

/// Bound of the block server's cache: it starts cold in every run.
const SERVER_CACHE_BYTES: u64 = 1 << 30;

/// A development PKI written once for all runs.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn create(dir: &Path) -> anyhow::Result<Self> {
        DevPki::generate()?.write_to(dir)?;
        Ok(Pki {
            dir: dir.to_owned(),
        })
    }
}

pub(crate) struct LinkEnv {
    /// What the agent reads directly (its last-resort source; for the
    /// object-store link, its only one).
    pub agent_store: Store,
    relayed: Option<Relayed>,
    /// The object-store link's store, which counts the requests it answers.
    slow: Option<Arc<SlowStore>>,
}

struct Relayed {
    server: RunningServer,
    relay: RelayHandle,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
}

impl LinkEnv {
    /// Starts the link's parts over `store`. Runs inside a tokio runtime.
    pub(crate) fn start(link: &LinkSpec, store: &Store, pki: &Pki) -> anyhow::Result<Self> {
        match link {
            LinkSpec::Relayed { .. } => {
                let config = tls::server_config(
                    &tls::Identity::from_files(
                        &pki.dir.join("server.pem"),
                        &pki.dir.join("server.key"),
                    )?,
                    Some(&tls::read_pem_file(&pki.dir.join("ca.pem"))?),
                )?;
                let server = BlockServer::new(store.clone(), SERVER_CACHE_BYTES)
                    .serve("127.0.0.1:0".parse()?, config)
                    .context("starting the block server")?;
                let relay =
                    UdpRelay::start("127.0.0.1:0".parse()?, server.local_addr, link.clone())
                        .context("starting the link's relay")?;
                Ok(LinkEnv {
                    agent_store: store.clone(),
                    relayed: Some(Relayed {
                        server,
                        relay,
                        ca: pki.dir.join("ca.pem"),
                        client: (pki.dir.join("client.pem"), pki.dir.join("client.key")),
                    }),
                    slow: None,
                })
            }
            LinkSpec::ObjectStore { .. } => {
                let slow = Arc::new(SlowStore::for_link(store.object_store().clone(), link)?);
                Ok(LinkEnv {
                    agent_store: Store::from_object_store(
                        slow.clone(),
                        format!("{} over the {} link", store.location(), link.name()),
                    ),
                    relayed: None,
                    slow: Some(slow),
                })
            }
        }
    }

    /// Requests the object store of an object-store link has answered so
    /// far (GETs and ranged GETs); `None` for links with a block server.
    pub(crate) fn store_requests(&self) -> Option<u64> {
        self.slow.as_ref().map(|s| s.hooks().requests())
    }

    /// Whether blocks should come from a block server (and never straight
    /// from the store, which would skip the link).
    pub(crate) fn has_block_server(&self) -> bool {
        self.relayed.is_some()
    }

    /// A new client of the link's block server, if it has one (a fresh
    /// QUIC connection, as a fresh agent would open). Runs inside a tokio
    /// runtime.
    pub(crate) fn block_servers(&self) -> anyhow::Result<Vec<Arc<dyn BlockSource>>> {
        let Some(r) = &self.relayed else {
            return Ok(Vec::new());
        };
        let source = BlockServerSource::connect(
            &r.relay.local_addr().to_string(),
            &r.ca,
            Some((&r.client.0, &r.client.1)),
        )?;
        Ok(vec![source.into_source()])
    }

    /// Where an eager restore over this link reads blocks.
    pub(crate) fn eager_source(&self) -> anyhow::Result<Arc<dyn BlockSource>> {
        match self.block_servers()?.pop() {
            Some(s) => Ok(s),
            None => Ok(Arc::new(ObjectStoreSource::new(self.agent_store.clone()))),
        }
    }
}

impl Drop for LinkEnv {
    fn drop(&mut self) {
        if let Some(r) = &self.relayed {
            r.server.close();
        }
    }
}
