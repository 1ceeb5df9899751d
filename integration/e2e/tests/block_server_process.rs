//! `thaw block-server` as a process: development PKI written to disk, the
//! bound address announced on stdout, blocks served to a mutual-TLS client
//! that uses the written client certificate.

mod bins;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use thaw_bench::synthetic;
use thaw_block_protocol::client::BlockClient;
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};
use thaw_block_protocol::wire::Priority;
use thaw_format::{decode_block, BlockOpener};
use thaw_store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_store_with_a_development_pki() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let pki_dir = dir.path().join("pki");
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let memory = synthetic::memory_image(1 << 20, 3);
    let id = synthetic::write_memory_checkpoint(&store, &memory)
        .await
        .unwrap();

    let mut server = bins::thaw()
        .args(["block-server", "--listen", "127.0.0.1:0", "--store"])
        .arg(&store_dir)
        .arg("--dev-pki")
        .arg(&pki_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();

    let pki = DevPki::load_or_generate(&pki_dir).unwrap();
    let config = tls::client_config(&pki.ca_pem, Some(&pki.client)).unwrap();
    let client = BlockClient::new(addr, SERVER_NAME, config).unwrap();
    // The manifest object is passed on as stored, for the client to verify.
    let object = client.manifest_object(&id).await.unwrap();
    assert_eq!(
        object,
        thaw_store::reader::read_manifest_object(&store, &id)
            .await
            .unwrap()
    );
    let m = thaw_store::reader::open_manifest(
        &id,
        &object,
        &thaw_format::ManifestTrust::InsecureUnsigned,
    )
    .unwrap()
    .manifest;
    let stored = client.fetch_stored(&id, 0, Priority::Demand).await.unwrap();
    let raw = decode_block(&BlockOpener::Plain, &m.blocks[0], &stored).unwrap();
    let first = m.blocks[0].page_iter().next().unwrap() as usize * 4096;
    assert_eq!(&raw[..4096], &memory[first..first + 4096]);

    // Without a client certificate the server refuses.
    let anonymous = BlockClient::new(
        addr,
        SERVER_NAME,
        tls::client_config(&pki.ca_pem, None).unwrap(),
    )
    .unwrap();
    assert!(anonymous.manifest_object(&id).await.is_err());
    server.kill().unwrap();
    server.wait().unwrap();
}
