//! A real S3-compatible server on loopback (s3s-fs, in-process) for tests
//! and demos: HTTP, SigV4 authentication, ranged GETs, multipart uploads
//! and conditional puts, storing objects in a temporary directory.
//!
//! s3s-fs checks a put's `If-None-Match` / `If-Match` and then writes, with
//! nothing in between to stop a second request doing the same: two
//! create-only puts of one key could both succeed. And a GET reads an
//! object's bytes and its e-tag at two moments, so it can pair old bytes
//! with a new e-tag. S3 does neither, and thaw relies on that (manifests,
//! names), so this server runs each conditional put alone, while no GET or
//! HEAD is being answered ([`ConditionalPuts`]).

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::header::{IF_MATCH, IF_NONE_MATCH};
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use thaw_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ACCESS_KEY: &str = "thaw-test-access";
pub const SECRET_KEY: &str = "thaw-test-secret-key";
pub const REGION: &str = "us-east-1";

pub struct S3TestServer {
    pub addr: SocketAddr,
    pub bucket: String,
    root: tempfile::TempDir,
    accept_loop: JoinHandle<()>,
}

impl S3TestServer {
    /// Starts a server with one empty bucket on an ephemeral loopback port.
    pub async fn start(bucket: &str) -> anyhow::Result<Self> {
        let root = tempfile::tempdir().context("temporary directory for the S3 server")?;
        std::fs::create_dir(root.path().join(bucket)).context("creating the bucket")?;
        let fs =
            s3s_fs::FileSystem::new(root.path()).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = ConditionalPuts {
            inner: builder.build(),
            lock: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept_loop = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Ok(Self {
            addr,
            bucket: bucket.to_owned(),
            root,
            accept_loop,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment a `thaw` process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// A store on this server under `prefix`.
    pub fn store(&self, prefix: &str) -> anyhow::Result<Store> {
        let spec = format!("s3://{}/{prefix}", self.bucket);
        let options = [
            ("aws_access_key_id", ACCESS_KEY.to_owned()),
            ("aws_secret_access_key", SECRET_KEY.to_owned()),
            ("aws_region", REGION.to_owned()),
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_owned()),
        ];
        Ok(Store::open_s3(&spec, options)?)
    }

    /// Where the server keeps an object's bytes (to corrupt them in tests).
    pub fn object_path(&self, key: &str) -> std::path::PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }
}

/// The S3 service with conditional puts made atomic: each one's check and
/// write happen while no other conditional put runs and no GET or HEAD is
/// being answered, so a reader's bytes and e-tag belong together, as on S3.
#[derive(Clone)]
struct ConditionalPuts {
    inner: S3Service,
    lock: Arc<tokio::sync::RwLock<()>>,
}

type ServiceResult = Result<
    <S3Service as hyper::service::Service<Request<Incoming>>>::Response,
    <S3Service as hyper::service::Service<Request<Incoming>>>::Error,
>;

impl hyper::service::Service<Request<Incoming>> for ConditionalPuts {
    type Response = <S3Service as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = <S3Service as hyper::service::Service<Request<Incoming>>>::Error;
    type Future = Pin<Box<dyn Future<Output = ServiceResult> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let conditional = req.method() == Method::PUT
            && (req.headers().contains_key(IF_NONE_MATCH) || req.headers().contains_key(IF_MATCH));
        let read = req.method() == Method::GET || req.method() == Method::HEAD;
        let inner = self.inner.clone();
        let lock = Arc::clone(&self.lock);
        Box::pin(async move {
            if conditional {
                let _alone = lock.write_owned().await;
                hyper::service::Service::call(&inner, req).await
            } else if read {
                let _no_conditional_put = lock.read_owned().await;
                hyper::service::Service::call(&inner, req).await
            } else {
                hyper::service::Service::call(&inner, req).await
            }
        })
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}
