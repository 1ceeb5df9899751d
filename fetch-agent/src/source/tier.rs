//! A tier of block servers as one [`BlockSource`]: the live list of
//! servers, and for each block the order to ask them in, by rendezvous
//! hashing of the block's shard key ([`thaw_block_protocol::shard`]): its
//! home first, then its second choice, then the rest by weight. The fetcher
//! asks the members one by one ([`BlockSource::ranked_members`]), each under
//! its own health, so a server that goes down passes its blocks to their
//! second choice and keeps none of the others'.
//!
//! The list changes while the agent runs ([`super::server_list`]): a server
//! kept keeps its connection; one added is connected on first use; one
//! removed is dropped.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use thaw_block_protocol::shard;
use thaw_format::{CheckpointId, Manifest};

use crate::metrics::SourceKind;
use crate::policy::Priority;
use crate::source::{BlockSource, SourceError};

/// Makes the source of a server named `HOST:PORT`.
pub type Connector = Box<dyn Fn(&str) -> Result<Arc<dyn BlockSource>, String> + Send + Sync>;

struct Member {
    /// The server as the list names it: what every agent hashes.
    spec: String,
    source: Arc<dyn BlockSource>,
}

pub struct BlockServerTier {
    name: String,
    members: RwLock<Vec<Member>>,
    connector: Connector,
    /// How long one member may take for a manifest before the next is asked.
    member_timeout: Duration,
}

impl BlockServerTier {
    /// An empty tier; [`Self::set_servers`] fills it.
    pub fn new(connector: Connector, member_timeout: Duration) -> Arc<Self> {
        Arc::new(BlockServerTier {
            name: "block server tier".to_owned(),
            members: RwLock::new(Vec::new()),
            connector,
            member_timeout,
        })
    }

    /// Makes `specs` (`HOST:PORT`, duplicates ignored) the tier's servers:
    /// those already members stay as they are, new ones are connected,
    /// missing ones are dropped. Returns the servers that could not be set
    /// up, with why; the others are set.
    pub fn set_servers(&self, specs: &[String]) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let mut old: Vec<Member> = std::mem::take(&mut *self.write());
        let mut next: Vec<Member> = Vec::with_capacity(specs.len());
        for spec in specs {
            if next.iter().any(|m| &m.spec == spec) {
                continue;
            }
            if let Some(i) = old.iter().position(|m| &m.spec == spec) {
                next.push(old.swap_remove(i));
                continue;
            }
            match (self.connector)(spec) {
                Ok(source) => {
                    tracing::info!(server = spec.as_str(), "block server joins the tier");
                    next.push(Member {
                        spec: spec.clone(),
                        source,
                    });
                }
                Err(e) => failed.push((spec.clone(), e)),
            }
        }
        for gone in &old {
            tracing::info!(server = gone.spec.as_str(), "block server leaves the tier");
        }
        *self.write() = next;
        failed
    }

    /// The servers, as listed.
    pub fn servers(&self) -> Vec<String> {
        self.read().iter().map(|m| m.spec.clone()).collect()
    }

    /// The members in the order to ask them for `key`.
    fn ranked_by(&self, key: &[u8; 32]) -> Vec<Arc<dyn BlockSource>> {
        let members = self.read();
        let specs: Vec<&str> = members.iter().map(|m| m.spec.as_str()).collect();
        shard::rank(&specs, key)
            .into_iter()
            .map(|i| members[i].source.clone())
            .collect()
    }

    /// A checkpoint's manifest has no block: its members in the order of
    /// its id's hash, which spreads manifests too.
    fn ranked_for_checkpoint(&self, checkpoint: &CheckpointId) -> Vec<Arc<dyn BlockSource>> {
        self.ranked_by(&shard::manifest_key(checkpoint))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Member>> {
        self.members.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Member>> {
        self.members.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the members in turn, each for at most the member timeout.
    async fn first_answer<'a, T>(
        &'a self,
        ranked: Vec<Arc<dyn BlockSource>>,
        ask: impl Fn(Arc<dyn BlockSource>) -> BoxFuture<'a, Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        let mut reasons = Vec::new();
        for member in ranked {
            let name = member.name().to_owned();
            match tokio::time::timeout(self.member_timeout, ask(member)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => reasons.push(e.to_string()),
                Err(_) => reasons.push(format!(
                    "{name}: no answer within {:?}",
                    self.member_timeout
                )),
            }
        }
        if reasons.is_empty() {
            reasons.push("no block servers listed".to_owned());
        }
        Err(SourceError::new(&self.name, reasons.join("; ")))
    }
}

impl BlockSource for BlockServerTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> SourceKind {
        SourceKind::BlockServer
    }

    fn ranked_members(&self, manifest: &Manifest, block: u32) -> Option<Vec<Arc<dyn BlockSource>>> {
        let key = shard::shard_key(manifest, block)?;
        Some(self.ranked_by(&key))
    }

    fn fetch_stored<'a>(
        &'a self,
        checkpoint: &'a CheckpointId,
        block: u32,
        priority: Priority,
    ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
        // The fetcher asks members itself (it knows the manifest); without
        // one, the checkpoint's order is as good as any.
        Box::pin(async move {
            let ranked = self.ranked_for_checkpoint(checkpoint);
            self.first_answer(ranked, |m| {
                Box::pin(async move { m.fetch_stored(checkpoint, block, priority).await })
            })
            .await
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
            let ranked = self.ranked_for_checkpoint(checkpoint);
            self.first_answer(ranked, |m| {
                Box::pin(async move { m.manifest_object(checkpoint).await })
            })
            .await
        })
    }

    /// Connects every member at once; fails only if none could be reached.
    fn connect(&self) -> BoxFuture<'_, Result<(), SourceError>> {
        Box::pin(async move {
            let members: Vec<Arc<dyn BlockSource>> =
                self.read().iter().map(|m| m.source.clone()).collect();
            let results = futures::future::join_all(members.iter().map(|m| m.connect())).await;
            let errors: Vec<String> = results
                .into_iter()
                .filter_map(|r| r.err().map(|e| e.to_string()))
                .collect();
            if !errors.is_empty() && errors.len() == members.len() {
                return Err(SourceError::unreachable(&self.name, errors.join("; ")));
            }
            for e in errors {
                tracing::warn!("connecting ahead: {e}");
            }
            Ok(())
        })
    }

    fn reset(&self) {
        for m in self.read().iter() {
            m.source.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Named(String);

    impl BlockSource for Named {
        fn name(&self) -> &str {
            &self.0
        }
        fn kind(&self) -> SourceKind {
            SourceKind::BlockServer
        }
        fn fetch_stored<'a>(
            &'a self,
            _: &'a CheckpointId,
            _: u32,
            _: Priority,
        ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
            Box::pin(async move { Ok(Bytes::from(self.0.clone())) })
        }
        fn manifest_object<'a>(
            &'a self,
            _: &'a CheckpointId,
        ) -> BoxFuture<'a, Result<Bytes, SourceError>> {
            Box::pin(async move { Err(SourceError::new(&self.0, "no manifest here")) })
        }
    }

    fn tier(connected: Arc<AtomicUsize>) -> Arc<BlockServerTier> {
        BlockServerTier::new(
            Box::new(move |spec: &str| {
                if spec.starts_with("bad") {
                    return Err("refused".into());
                }
                connected.fetch_add(1, Ordering::Relaxed);
                Ok(Arc::new(Named(spec.to_owned())) as Arc<dyn BlockSource>)
            }),
            Duration::from_secs(1),
        )
    }

    fn specs(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_changed_list_keeps_the_members_it_still_names() {
        let connected = Arc::new(AtomicUsize::new(0));
        let t = tier(connected.clone());
        assert!(t.set_servers(&specs(&["a:1", "b:1", "a:1"])).is_empty());
        assert_eq!(t.servers(), specs(&["a:1", "b:1"]));
        let key = [7u8; 32];
        let b_before = t
            .ranked_by(&key)
            .into_iter()
            .find(|m| m.name() == "b:1")
            .expect("b");
        let failed = t.set_servers(&specs(&["b:1", "c:1", "bad:1"]));
        assert_eq!(failed, vec![("bad:1".to_owned(), "refused".to_owned())]);
        assert_eq!(t.servers(), specs(&["b:1", "c:1"]));
        // a, b and c connected once each: b was kept, not made again.
        assert_eq!(connected.load(Ordering::Relaxed), 3);
        let b_after = t
            .ranked_by(&key)
            .into_iter()
            .find(|m| m.name() == "b:1")
            .expect("b");
        assert!(Arc::ptr_eq(&b_before, &b_after));
    }

    #[test]
    fn members_are_ranked_by_rendezvous_weight() {
        let t = tier(Arc::new(AtomicUsize::new(0)));
        let list = specs(&["a:1", "b:1", "c:1"]);
        t.set_servers(&list);
        for k in 0..50u8 {
            let key = [k; 32];
            let names: Vec<String> = t
                .ranked_by(&key)
                .iter()
                .map(|m| m.name().to_owned())
                .collect();
            let expected: Vec<String> = shard::rank(&list, &key)
                .into_iter()
                .map(|i| list[i].clone())
                .collect();
            assert_eq!(names, expected);
        }
    }

    #[tokio::test]
    async fn an_empty_tier_says_so() {
        let t = tier(Arc::new(AtomicUsize::new(0)));
        let id = CheckpointId::new("ck").expect("id");
        let e = t.manifest_object(&id).await.expect_err("no servers");
        assert!(e.to_string().contains("no block servers listed"), "{e}");
        t.set_servers(&specs(&["a:1"]));
        let e = t.manifest_object(&id).await.expect_err("a has none");
        assert!(e.to_string().contains("no manifest here"), "{e}");
    }
}
