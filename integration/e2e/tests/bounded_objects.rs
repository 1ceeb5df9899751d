//! Oversized and count-inflated objects in a store are refused (or, when
//! valid, checked) by the real `thaw checkpoint verify` within bounded
//! memory: each case names what is wrong, and the process's peak RSS stays
//! far below what reading or expanding the object would take (every input
//! here made the earlier code read or build 256 MiB or more).

mod bins;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Stdio;

use thaw_format::dirty_log::MAGIC as DIRTY_LOG_MAGIC;
use thaw_format::envelope::seal;
use thaw_format::manifest::MAX_TOTAL_PAGES;
use thaw_format::ManifestTrust;
use thaw_format::{encode, CheckpointId, Manifest, PageRun, Region, StateBlob};
use thaw_store::{write_checkpoint, MemoryRegion, Store, WriteOptions};

/// Peak RSS allowed to `thaw checkpoint verify` on any of these stores.
const RSS_BOUND: u64 = 100 << 20;

/// What `thaw checkpoint verify DIR ID` printed, whether it succeeded, and
/// its peak RSS in bytes (from `wait4`, for this child alone).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
fn verify(dir: &Path, id: &str) -> (String, bool, u64) {
    let out = tempfile::tempfile().unwrap();
    let child = bins::thaw()
        .args(["checkpoint", "verify", dir.to_str().unwrap(), id])
        // The objects are made by hand, unsigned, to reach the size caps and the validator
        // (a signature check would refuse them before).
        .arg("--insecure-unsigned")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child by pid; both out-pointers are valid.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let mut text = String::new();
    let len = out.metadata().unwrap().len() as usize;
    let mut buf = vec![0u8; len];
    out.read_exact_at(&mut buf, 0).unwrap();
    text.push_str(&String::from_utf8_lossy(&buf));
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // ru_maxrss is in KiB on Linux.
    (text, exited_ok, usage.ru_maxrss as u64 * 1024)
}

fn put(dir: &Path, key: &str, bytes: &[u8]) -> File {
    let path = dir.join(key);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = File::create(&path).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f
}

/// A manifest of 16 TiB of memory, all of it zero pages except `missing`.
fn all_zero_manifest(id: &str, missing: u64) -> Vec<u8> {
    encode(&Manifest {
        id: CheckpointId::new(id).unwrap(),
        created_unix_ms: 0,
        parent: None,
        page_size: 4096,
        regions: vec![Region {
            guest_phys_addr: 0,
            size: MAX_TOTAL_PAGES * 4096,
        }],
        objects: vec![],
        blocks: vec![],
        zero_pages: vec![PageRun {
            start: 0,
            len: MAX_TOTAL_PAGES - missing,
        }],
        prefetch_order: vec![],
        state: StateBlob::new(vec![]),
        encryption: None,
    })
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_count_inflated_objects_are_refused_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = Store::open(dir.to_str().unwrap()).unwrap();

    // A real, small checkpoint: verify passes in little memory.
    let memory: Vec<u8> = (0..64 * 4096u32).map(|i| (i / 4096) as u8).collect();
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let opts = WriteOptions {
        id: Some(CheckpointId::new("small").unwrap()),
        ..WriteOptions::default()
    };
    write_checkpoint(&store, &regions, vec![1, 2, 3], &opts)
        .await
        .unwrap();
    let (text, ok, rss) = verify(dir, "small");
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");
    let baseline = rss;

    let mut cases: Vec<(&str, bool, &str)> = Vec::new();

    // A 400 MiB manifest object (sparse on disk) behind a small frame: the
    // earlier reader read all of it before checking its size.
    let big = all_zero_manifest("big", 0);
    put(dir, "checkpoints/big/manifest", &big)
        .set_len(400 << 20)
        .unwrap();
    cases.push((
        "big",
        false,
        "object checkpoints/big/manifest is 419430400 bytes, more than the",
    ));

    // 16 TiB of zero pages, one page short: the earlier validator filled a
    // 512 MiB page bitmap before it noticed.
    put(
        dir,
        "checkpoints/inflated/manifest",
        &all_zero_manifest("inflated", 1),
    );
    cases.push((
        "inflated",
        false,
        "page 4294967295 is neither in a block nor in the zero-page set",
    ));

    // The same without the missing page is a valid (empty) checkpoint.
    let huge = all_zero_manifest("huge", 0);
    assert!(huge.len() < 200);
    put(dir, "checkpoints/huge/manifest", &huge);
    cases.push(("huge", true, "checkpoint huge: OK, 0 blocks"));

    // A dirty log beside the small checkpoint naming 2^25 pages in one run
    // (the earlier decoder expanded it into a 256 MiB page list): it does not
    // fit the checkpoint's 64 pages.
    let mut body = Vec::new();
    for v in [4096, 1 << 25, 1, 1, 0, 1, 0, 1 << 25] {
        varint(&mut body, v);
    }
    put(
        dir,
        "checkpoints/small/dirty-log",
        &seal(DIRTY_LOG_MAGIC, 1, &body),
    );
    cases.push((
        "small",
        false,
        "dirty log covers 33554432 pages of 4096 bytes, but the memory is 64 pages",
    ));

    for (id, succeeds, want) in &cases {
        let (text, ok, rss) = verify(dir, id);
        assert_eq!(ok, *succeeds, "{id}: {text}");
        assert!(text.contains(want), "{id}: wanted {want:?} in:\n{text}");
        assert!(
            rss < RSS_BOUND,
            "{id}: peak RSS {} MiB (a valid small checkpoint takes {} MiB)",
            rss >> 20,
            baseline >> 20
        );
        println!("{id}: peak RSS {} MiB: {}", rss >> 20, text.trim());
    }

    // A 300 MiB dirty log object whose header declares all of it: over the
    // format's limit, refused before reading.
    let mut header = seal(DIRTY_LOG_MAGIC, 1, &[]);
    header.truncate(20);
    header[12..20].copy_from_slice(&(300u64 << 20).to_le_bytes());
    put(dir, "checkpoints/small/dirty-log", &header)
        .set_len((300 << 20) + 52)
        .unwrap();
    let (text, ok, rss) = verify(dir, "small");
    assert!(!ok, "{text}");
    assert!(
        text.contains("object checkpoints/small/dirty-log is 314572852 bytes")
            && text.contains("refused before reading it"),
        "{text}"
    );
    assert!(rss < RSS_BOUND, "peak RSS {} MiB", rss >> 20);
}

/// The capped read over real S3 (ranged GETs through HTTP): a manifest
/// object larger than its frame is refused, a normal one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_reads_work_over_s3() {
    use object_store::ObjectStoreExt;
    let s3 = thaw_s3_test_server::S3TestServer::start("capped")
        .await
        .unwrap();
    let store = s3.store("fleet").unwrap();
    let memory = vec![7u8; 300 * 4096];
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let id = write_checkpoint(&store, &regions, vec![], &WriteOptions::default())
        .await
        .unwrap()
        .id;
    let reader = thaw_store::CheckpointReader::open(&store, &id, &ManifestTrust::InsecureUnsigned)
        .await
        .unwrap();
    assert_eq!(reader.manifest().total_pages(), 300);

    let key = object_store::path::Path::from(format!("checkpoints/{id}/manifest"));
    let mut padded = encode(reader.manifest());
    padded.resize(padded.len() + (2 << 20), 0);
    store.object_store().put(&key, padded.into()).await.unwrap();
    let err = thaw_store::reader::load_manifest(&store, &id, &ManifestTrust::InsecureUnsigned)
        .await
        .expect_err("a padded manifest is refused");
    assert!(
        err.to_string().contains("refused before reading it"),
        "{err}"
    );
}
