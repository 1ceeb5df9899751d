//! Writer and reader against the in-memory store and a local directory.

mod common;

use std::sync::Arc;

use common::scenarios;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use thaw_store::Store;

fn dir_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip() {
    scenarios::round_trip(&Store::open("memory://").unwrap()).await;
    let (_dir, store) = dir_store();
    scenarios::round_trip(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_round_trip() {
    let (_dir, store) = dir_store();
    scenarios::multipart_round_trip(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_last() {
    scenarios::manifest_last(Arc::new(InMemory::new())).await;
    let dir = tempfile::tempdir().unwrap();
    scenarios::manifest_last(Arc::new(
        LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_against_parent() {
    let (_dir, store) = dir_store();
    scenarios::dedup_against_parent(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_named() {
    scenarios::corruption_is_named(&Store::open("memory://").unwrap()).await;
    let (_dir, store) = dir_store();
    scenarios::corruption_is_named(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_manifest_is_refused() {
    let (_dir, store) = dir_store();
    scenarios::garbage_manifest_is_refused(&store).await;
}

#[tokio::test(flavor = "current_thread")]
async fn writer_works_on_a_single_threaded_runtime() {
    scenarios::round_trip(&Store::open("memory://").unwrap()).await;
}
