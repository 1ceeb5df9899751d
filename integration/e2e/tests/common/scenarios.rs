//! Writer/reader scenarios run against every kind of store (memory, local
//! directory, a real S3 server).

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use thaw_bench::synthetic;
use thaw_format::signature::SigningKey;
use thaw_format::Codec;
use thaw_format::{CheckpointId, ManifestTrust};
use thaw_store::catalog::list_checkpoints;
use thaw_store::{
    write_checkpoint, CheckpointError, CheckpointReader, MemoryRegion, Store, WriteOptions,
};

use super::recording_store::{RecordingStore, WriteRecorder};

const MIB: usize = 1 << 20;

/// Small segments so that a few MiB of memory spread over several objects;
/// signed with the test key.
fn small_segments() -> WriteOptions {
    WriteOptions {
        segment_bytes: MIB,
        ..signed()
    }
}

/// Checkpoints of these scenarios are signed, and read back trusting the key.
fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x11; 32])
}

fn signed() -> WriteOptions {
    WriteOptions {
        signing_key: Some(key()),
        ..WriteOptions::default()
    }
}

fn trust() -> ManifestTrust {
    ManifestTrust::Keys(vec![key().verifying_key()])
}

fn id(s: &str) -> CheckpointId {
    CheckpointId::new(s).unwrap()
}

/// Two regions (as a VM with a PCI hole has), written and read back.
pub async fn round_trip(store: &Store) {
    let low = synthetic::memory_image(6 * MIB, 1);
    let high = synthetic::memory_image(2 * MIB, 2);
    let regions = [
        MemoryRegion {
            guest_phys_addr: 0,
            bytes: &low,
        },
        MemoryRegion {
            guest_phys_addr: 1 << 32,
            bytes: &high,
        },
    ];
    let summary = write_checkpoint(store, &regions, b"state".to_vec(), &small_segments())
        .await
        .unwrap();
    assert!(
        summary.zero_pages > 0 && summary.segments > 1,
        "{summary:?}"
    );

    let reader = CheckpointReader::open(store, &summary.id, &trust())
        .await
        .unwrap();
    let m = reader.manifest();
    assert_eq!(m.regions.len(), 2);
    assert_eq!(reader.state_blob().unwrap(), b"state");
    assert!(m.blocks.iter().any(|b| b.codec == Codec::Lz4));
    assert!(m.blocks.iter().any(|b| b.codec == Codec::Raw));

    let mut all = low.clone();
    all.extend_from_slice(&high);
    let mut back = vec![0xaa; all.len()];
    reader.read_all_into(&mut back, 8).await.unwrap();
    assert!(back == all, "memory read back differs");

    // One block on its own: its pages carry exactly the memory's bytes.
    let block = reader.fetch_block(m.blocks.len() as u32 / 2).await.unwrap();
    for (page, bytes) in block.pages() {
        let at = page as usize * 4096;
        assert_eq!(bytes, &all[at..at + 4096], "page {page}");
    }
    reader.verify(8).await.unwrap();

    let listed = list_checkpoints(store, &trust()).await.unwrap();
    assert!(listed
        .iter()
        .any(|e| e.id == summary.id && e.manifest.is_ok()));
}

/// Segments large enough to go up as multipart uploads.
pub async fn multipart_round_trip(store: &Store) {
    let memory = synthetic::memory_image(40 * MIB, 3);
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let opts = WriteOptions {
        segment_bytes: 12 * MIB,
        multipart_part_bytes: 5 * MIB,
        ..signed()
    };
    let summary = write_checkpoint(store, &regions, vec![], &opts)
        .await
        .unwrap();
    let reader = CheckpointReader::open(store, &summary.id, &trust())
        .await
        .unwrap();
    let mut back = vec![0; memory.len()];
    reader.read_all_into(&mut back, 8).await.unwrap();
    assert!(back == memory);
}

/// The manifest is the last object written, and a write that fails part way
/// leaves no checkpoint behind for readers.
pub async fn manifest_last(raw: Arc<dyn ObjectStore>) {
    let recording = Arc::new(RecordingStore::with_hooks(raw, WriteRecorder::default()));
    let store = Store::from_object_store(recording.clone(), "recording");
    let memory = synthetic::memory_image(4 * MIB, 4);
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];

    let opts = WriteOptions {
        id: Some(id("whole")),
        ..small_segments()
    };
    write_checkpoint(&store, &regions, vec![], &opts)
        .await
        .unwrap();
    let writes = recording.hooks().completed_writes.lock().unwrap().clone();
    assert!(writes.len() > 2, "{writes:?}");
    assert_eq!(
        writes.last().unwrap(),
        "checkpoints/whole/manifest",
        "{writes:?}"
    );

    *recording.hooks().fail_writes_containing.lock().unwrap() = Some("half/segment-000001".into());
    let opts = WriteOptions {
        id: Some(id("half")),
        ..small_segments()
    };
    let err = write_checkpoint(&store, &regions, vec![], &opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let listed: Vec<_> = list_checkpoints(&store, &trust())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, vec![id("whole")]);
    assert!(matches!(
        CheckpointReader::open(&store, &id("half"), &trust()).await,
        Err(CheckpointError::NotFound { .. })
    ));

    // The same id cannot be written twice.
    *recording.hooks().fail_writes_containing.lock().unwrap() = None;
    let opts = WriteOptions {
        id: Some(id("whole")),
        ..small_segments()
    };
    let err = write_checkpoint(&store, &regions, vec![], &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CheckpointError::AlreadyExists { .. }),
        "{err}"
    );
}

/// A child checkpoint uploads only the blocks that changed since its parent.
pub async fn dedup_against_parent(store: &Store) {
    let mut memory = synthetic::memory_image(8 * MIB, 5);
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let parent = write_checkpoint(store, &regions, vec![], &small_segments())
        .await
        .unwrap();

    // Change one byte in each of three pages far apart.
    for page in [10usize, 700, 1900] {
        memory[page * 4096 + 100] ^= 0x5a;
    }
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let opts = WriteOptions {
        parent: Some(parent.id.clone()),
        ..small_segments()
    };
    let child = write_checkpoint(store, &regions, vec![], &opts)
        .await
        .unwrap();
    assert!(child.blocks - child.reused_blocks <= 3, "{child:?}");
    assert!(
        child.uploaded_bytes < parent.uploaded_bytes / 10,
        "{child:?} vs {parent:?}"
    );

    let reader = CheckpointReader::open(store, &child.id, &trust())
        .await
        .unwrap();
    assert_eq!(reader.manifest().parent.as_ref(), Some(&parent.id));
    let mut back = vec![0; memory.len()];
    reader.read_all_into(&mut back, 8).await.unwrap();
    assert!(back == memory);
    reader.verify(8).await.unwrap();
}

/// A flipped byte in stored data or a missing object is found and named, and
/// the bad block's data is never returned.
pub async fn corruption_is_named(store: &Store) {
    let memory = synthetic::memory_image(4 * MIB, 6);
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &memory,
    }];
    let summary = write_checkpoint(store, &regions, vec![], &small_segments())
        .await
        .unwrap();
    let reader = CheckpointReader::open(store, &summary.id, &trust())
        .await
        .unwrap();
    let m = reader.manifest().clone();
    let victim = (m.blocks.len() / 2) as u32;
    let entry = &m.blocks[victim as usize];
    let key = m.objects[entry.object as usize].clone();

    let os = store.object_store();
    let path = Path::from(key.as_str());
    let mut bytes = os.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
    bytes[(entry.offset + entry.stored_len / 2) as usize] ^= 0x01;
    os.put(&path, bytes.into()).await.unwrap();

    let err = reader.fetch_block(victim).await.unwrap_err();
    assert!(
        matches!(err, CheckpointError::BadBlock { block, .. } if block == victim),
        "{err}"
    );
    let err = reader.verify(8).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("block {victim}")) && text.contains(&key),
        "{text}"
    );
    let mut back = vec![0; memory.len()];
    assert!(reader.read_all_into(&mut back, 8).await.is_err());

    os.delete(&path).await.unwrap();
    let err = reader.verify(8).await.unwrap_err();
    assert!(
        matches!(&err, CheckpointError::MissingObject { key: k } if *k == key),
        "{err}"
    );
}

/// A manifest that is not one is reported as invalid, by open and by list.
pub async fn garbage_manifest_is_refused(store: &Store) {
    let path = Path::from("checkpoints/garbage/manifest");
    store
        .object_store()
        .put(
            &path,
            b"definitely not a manifest, just text".to_vec().into(),
        )
        .await
        .unwrap();
    let err = CheckpointReader::open(store, &id("garbage"), &trust())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a thaw manifest"), "{err}");
    let listed = list_checkpoints(store, &trust()).await.unwrap();
    assert!(listed
        .iter()
        .any(|e| e.id == id("garbage") && e.manifest.is_err()));
}
