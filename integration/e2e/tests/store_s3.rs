//! Writer and reader against a real S3-compatible server (s3s-fs over HTTP
//! on loopback, SigV4-authenticated), through object_store's S3 client.

mod common;

use std::sync::Arc;

use common::scenarios;
use thaw_s3_test_server::S3TestServer;

async fn server() -> S3TestServer {
    S3TestServer::start("thaw-test").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip() {
    let s3 = server().await;
    scenarios::round_trip(&s3.store("round-trip").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_round_trip() {
    let s3 = server().await;
    scenarios::multipart_round_trip(&s3.store("multipart").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_last() {
    let s3 = server().await;
    let store = s3.store("manifest-last").unwrap();
    scenarios::manifest_last(Arc::clone(store.object_store())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_against_parent() {
    let s3 = server().await;
    scenarios::dedup_against_parent(&s3.store("dedup").unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_named() {
    let s3 = server().await;
    scenarios::corruption_is_named(&s3.store("corruption").unwrap()).await;
}
