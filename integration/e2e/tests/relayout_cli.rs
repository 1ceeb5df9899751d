//! `thaw checkpoint relayout` as users run it: a checkpoint in a local store
//! is rewritten with a layout learned from two traces; both checkpoints then
//! read back the same memory and verify.

mod bins;

use thaw_format::CheckpointId;
use thaw_store::{write_checkpoint, CheckpointReader, MemoryRegion, Store, WriteOptions};

#[tokio::test]
async fn relayout_from_traces() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let spec = store_dir.to_str().unwrap().to_owned();
    let store = Store::open(&spec).unwrap();
    let mut memory = vec![0u8; 128 * 4096];
    for (i, page) in memory.chunks_mut(4096).enumerate() {
        if i % 5 != 0 {
            page.fill(i as u8 | 1);
        }
    }
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let opts = WriteOptions {
        id: Some(CheckpointId::new("base").unwrap()),
        signing_key: Some(bins::signing_key()),
        ..WriteOptions::default()
    };
    write_checkpoint(&store, &regions, b"state".to_vec(), &opts)
        .await
        .unwrap();

    let t1 = dir.path().join("01.trace");
    let t2 = dir.path().join("02.trace");
    std::fs::write(&t1, "# restore 1\n0 121\n10 3 cpu0\n20 64\n30 7\n").unwrap();
    std::fs::write(&t2, "0 121\n5 3\n\n9 7\n40 64\n").unwrap();
    let out = bins::thaw()
        .args(["checkpoint", "relayout", &spec, "base", "--trace"])
        .arg(&t1)
        .arg("--trace")
        .arg(&t2)
        .args(["--id", "relaid"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("checkpoint relaid written from base"),
        "{stdout}"
    );

    for id in ["base", "relaid"] {
        let reader =
            CheckpointReader::open(&store, &CheckpointId::new(id).unwrap(), &bins::trust())
                .await
                .unwrap();
        let mut back = vec![0u8; memory.len()];
        reader.read_all_into(&mut back, 4).await.unwrap();
        assert!(back == memory, "{id} reads back different memory");
        reader.verify(4).await.unwrap();
        assert_eq!(reader.state_blob().unwrap(), b"state");
    }
    let relaid = CheckpointReader::open(
        &store,
        &CheckpointId::new("relaid").unwrap(),
        &bins::trust(),
    )
    .await
    .unwrap();
    let first: Vec<u64> = relaid.manifest().blocks[0]
        .pages
        .iter()
        .flat_map(|r| r.start..r.end())
        .collect();
    // The traced pages first, in trace order; the rest of the block holds
    // unseen pages near them (`format::profile::with_neighbours`).
    let traced = [121u64, 3, 64, 7];
    assert_eq!(first[..4], traced, "{first:?}");
    for &p in &first[4..] {
        assert!(!traced.contains(&p), "{first:?}");
        assert!(
            traced.iter().any(|&t| t.abs_diff(p) <= 16),
            "page {p} is no neighbour of a traced page: {first:?}"
        );
    }

    // A trace naming a page outside the memory is refused with file and line.
    std::fs::write(&t2, "0 1\n1 128\n").unwrap();
    let out = bins::thaw()
        .args(["checkpoint", "relayout", &spec, "base", "--trace"])
        .arg(&t2)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("02.trace:2: page 128 is outside the memory"),
        "{stderr}"
    );
}
