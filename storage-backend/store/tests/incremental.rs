//! Incremental checkpoints: only the dirty pages (and the clean pages sharing a block with one)
//! are read and uploaded, the rest points at the parent's blocks; a chain restores exactly, its
//! tenth checkpoint with one manifest read like a flat one; encrypted chains keep working under
//! one tenant key and fall back to full writes across keys.

use object_store::ObjectStoreExt;
use thaw_format::signature::SigningKey;
use thaw_format::{CheckpointId, ManifestTrust, TenantKey};
use thaw_store::{
    write_checkpoint, write_incremental_checkpoint, CheckpointReader, MemoryRegion, Store,
    WriteOptions, WriteSummary,
};

const PS: usize = 4096;
const PAGES: usize = 256;

/// Distinct, incompressible-enough pages, with every 8th page zero.
fn memory() -> Vec<u8> {
    let mut m = vec![0u8; PAGES * PS];
    for (p, page) in m.chunks_mut(PS).enumerate() {
        if p % 8 != 7 {
            fill(page, p as u64 + 1);
        }
    }
    m
}

fn fill(page: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    for b in page.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

fn opts(id: &str, parent: Option<&str>) -> WriteOptions {
    WriteOptions {
        id: Some(CheckpointId::new(id).unwrap()),
        parent: parent.map(|p| CheckpointId::new(p).unwrap()),
        block_pages: 16,
        signing_key: Some(key()),
        ..WriteOptions::default()
    }
}

async fn full(store: &Store, id: &str, mem: &[u8]) -> WriteSummary {
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: mem,
    }];
    write_checkpoint(store, &regions, b"state".to_vec(), &opts(id, None))
        .await
        .unwrap()
}

async fn incremental(
    store: &Store,
    id: &str,
    parent: &str,
    mem: &[u8],
    dirty: &[u64],
) -> WriteSummary {
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: mem,
    }];
    write_incremental_checkpoint(
        store,
        &regions,
        id.as_bytes().to_vec(),
        &opts(id, Some(parent)),
        dirty,
        None,
    )
    .await
    .unwrap()
}

async fn read_back(store: &Store, id: &str) -> Vec<u8> {
    let trust = ManifestTrust::Keys(vec![key().verifying_key()]);
    let reader = CheckpointReader::open(store, &CheckpointId::new(id).unwrap(), &trust)
        .await
        .unwrap();
    let mut back = vec![0u8; PAGES * PS];
    reader.read_all_into(&mut back, 4).await.unwrap();
    back
}

fn page(mem: &mut [u8], p: u64) -> &mut [u8] {
    &mut mem[p as usize * PS..(p as usize + 1) * PS]
}

#[tokio::test]
async fn only_dirty_pages_and_their_blocks_are_written_and_clean_pages_are_not_read() {
    let store = Store::open("memory://").unwrap();
    let mut mem = memory();
    full(&store, "base", &mem).await;
    let parent = read_back(&store, "base").await;
    assert_eq!(parent, mem);

    // Page 3 rewritten, page 40 zeroed, page 71 (zero before) filled, page 200 rewritten: the
    // blocks of pages 0-15, 32-47, 64-79, 192-207 are touched.
    fill(page(&mut mem, 3), 1000);
    page(&mut mem, 40).fill(0);
    fill(page(&mut mem, 71), 1001);
    fill(page(&mut mem, 200), 1002);
    let mut expected = mem.clone();
    // A page changed in memory but not reported dirty is not read: the child keeps the
    // parent's (a block without dirty pages is taken as it is).
    fill(page(&mut mem, 130), 1003);
    page(&mut expected, 130).copy_from_slice(&parent[130 * PS..131 * PS]);

    let s = incremental(&store, "child", "base", &mem, &[200, 3, 40, 71, 3]).await;
    let inc = s.incremental.clone().unwrap();
    assert_eq!(inc.parent.as_str(), "base");
    assert_eq!(inc.dirty_pages, 4);
    // Blocks never cross a multiple of 16 pages and hold no zero page: pages 3, 40 and 200 touch
    // three blocks of 14 pages; page 71 was zero, in no block, so it touches none.
    let touched: Vec<u64> = [0u64, 32, 192]
        .iter()
        .flat_map(|&s| s..s + 16)
        .filter(|p| p % 8 != 7 && ![3, 40, 200].contains(p))
        .collect();
    assert_eq!(inc.repacked_clean_pages, touched.len() as u64);
    assert_eq!(inc.kept_blocks, 16 - 3);
    assert_eq!(read_back(&store, "child").await, expected);
    // What went up: four blocks (of 16 pages, less zero pages) and the manifest.
    let raw_touched = (touched.len() + 3) as u64 * PS as u64;
    assert!(
        s.uploaded_bytes < raw_touched + 64 * 1024,
        "{} uploaded for {raw_touched} bytes of touched blocks",
        s.uploaded_bytes
    );
    // The parent is untouched by its child.
    assert_eq!(read_back(&store, "base").await, parent);
}

#[tokio::test]
async fn a_chain_of_ten_restores_exactly_reading_one_manifest() {
    let store = Store::open("memory://").unwrap();
    let mut mem = memory();
    full(&store, "c0", &mem).await;
    let mut models = vec![mem.clone()];
    for i in 1..10u64 {
        let dirty: Vec<u64> = (0..6).map(|k| (i * 37 + k * 41) % PAGES as u64).collect();
        for &p in &dirty {
            fill(page(&mut mem, p), 5000 + i * 100 + p);
        }
        let s = incremental(
            &store,
            &format!("c{i}"),
            &format!("c{}", i - 1),
            &mem,
            &dirty,
        )
        .await;
        assert!(s.incremental.unwrap().kept_blocks >= 16 - 6);
        models.push(mem.clone());
    }
    for (i, model) in models.iter().enumerate() {
        assert!(
            read_back(&store, &format!("c{i}")).await == *model,
            "checkpoint c{i} differs from the memory it was taken of"
        );
    }
    // The tenth manifest lists every block itself: its objects are segments of ancestors, and
    // opening it reads that one manifest only.
    let trust = ManifestTrust::Keys(vec![key().verifying_key()]);
    let tenth = CheckpointReader::open(&store, &CheckpointId::new("c9").unwrap(), &trust)
        .await
        .unwrap();
    let m = tenth.manifest();
    assert!(
        m.objects.iter().filter(|k| !k.contains("/c9/")).count() >= 2,
        "{:?}",
        m.objects
    );
    assert_eq!(m.parent.as_ref().unwrap().as_str(), "c8");
    // Without any ancestor's manifest, the tenth still restores exactly: its manifest is the
    // only one a restore reads, however deep the chain.
    for i in 0..9 {
        let key = object_store::path::Path::from(format!("checkpoints/c{i}/manifest"));
        store.object_store().delete(&key).await.unwrap();
    }
    assert!(read_back(&store, "c9").await == models[9]);
}

#[tokio::test]
async fn encrypted_chains_share_blocks_under_one_key_only() {
    let plain = Store::open("memory://").unwrap();
    let tenant = TenantKey::generate();
    let store = plain.clone().with_tenant_key(&tenant);
    let mut mem = memory();
    full(&store, "e0", &mem).await;
    fill(page(&mut mem, 9), 77);
    let s = incremental(&store, "e1", "e0", &mem, &[9]).await;
    assert_eq!(s.incremental.unwrap().kept_blocks, 15);
    assert_eq!(read_back(&store, "e1").await, mem);

    // Another tenant key cannot use e0's blocks: a full write.
    let other = plain.clone().with_tenant_key(&TenantKey::generate());
    let s = incremental(&other, "x1", "e0", &mem, &[9]).await;
    assert!(s.incremental.is_none(), "written against a foreign key");
    assert_eq!(read_back(&other, "x1").await, mem);
}
