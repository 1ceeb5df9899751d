//! The `thaw` binary as users run it: listing and verifying checkpoints in a
//! real S3-compatible store configured through the AWS environment variables.

mod bins;

use std::process::Output;

use object_store::path::Path;
use object_store::ObjectStoreExt;
use thaw_bench::synthetic;
use thaw_s3_test_server::S3TestServer;
use thaw_store::{write_checkpoint, CheckpointReader, MemoryRegion, WriteOptions};

fn thaw(s3: &S3TestServer, args: &[&str]) -> Output {
    let mut cmd = bins::thaw();
    cmd.args(args);
    for (k, v) in s3.env() {
        cmd.env(k, v);
    }
    cmd.output().expect("run thaw")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_verify_over_s3() {
    let s3 = S3TestServer::start("cli").await.unwrap();
    let store = s3.store("fleet").unwrap();
    let memory = synthetic::memory_image(4 << 20, 9);
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let opts = WriteOptions {
        segment_bytes: 1 << 20,
        signing_key: Some(bins::signing_key()),
        ..WriteOptions::default()
    };
    let id = write_checkpoint(&store, &regions, vec![], &opts)
        .await
        .unwrap()
        .id;
    let spec = format!("s3://{}/fleet", s3.bucket);

    let out = thaw(&s3, &["checkpoint", "list", &spec]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(id.as_str()), "{}", text(&out));

    let out = thaw(&s3, &["checkpoint", "verify", &spec, id.as_str()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK"), "{}", text(&out));

    // Corrupt one block: verify fails, naming the block and its object.
    let reader = CheckpointReader::open(&store, &id, &bins::trust())
        .await
        .unwrap();
    let entry = reader.manifest().blocks[3].clone();
    let key = reader.manifest().objects[entry.object as usize].clone();
    let path = Path::from(key.as_str());
    let mut bytes = store
        .object_store()
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    bytes[entry.offset as usize] ^= 0xff;
    store.object_store().put(&path, bytes.into()).await.unwrap();

    let out = thaw(&s3, &["checkpoint", "verify", &spec, id.as_str()]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("block 3") && t.contains(&key), "{t}");

    let out = thaw(&s3, &["checkpoint", "verify", &spec, "no-such-checkpoint"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not found"), "{}", text(&out));
}

#[test]
fn bad_store_location_is_named() {
    let out = bins::thaw()
        .args(["checkpoint", "list", "ftp://nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("unknown scheme"), "{}", text(&out));
}
