//! Checkpoints written with a tenant key: read back with it, refused
//! clearly without it or with another, served as ciphertext without it, and
//! deduplicated against a parent of the same tenant only.

use thaw_format::signature::SigningKey;
use thaw_format::ManifestTrust;
use thaw_format::{BlockOpener, CheckpointId, CryptError, TenantKey};
use thaw_store::{
    write_checkpoint, CheckpointError, CheckpointReader, MemoryRegion, Store, WriteOptions,
};

const PS: usize = 4096;

/// 64 pages: text-like (compressible), noise (stored raw), and zero pages.
fn memory() -> Vec<u8> {
    let mut m = vec![0u8; 64 * PS];
    let mut x = 0x2545f4914f6cdd1du64;
    for (p, page) in m.chunks_mut(PS).enumerate() {
        match p % 4 {
            0 => page.copy_from_slice(&b"guest text page ".repeat(PS / 16)),
            1 | 2 => page.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
            _ => {}
        }
    }
    m
}

async fn write(
    store: &Store,
    id: &str,
    parent: Option<&str>,
    mem: &[u8],
) -> thaw_store::WriteSummary {
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: mem,
    }];
    let opts = WriteOptions {
        id: Some(CheckpointId::new(id).unwrap()),
        parent: parent.map(|p| CheckpointId::new(p).unwrap()),
        block_pages: 4,
        signing_key: Some(signing_key()),
        ..WriteOptions::default()
    };
    write_checkpoint(store, &regions, b"secret vcpu state".to_vec(), &opts)
        .await
        .unwrap()
}

/// Checkpoints here are signed with this key and read trusting it.
fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[0x3c; 32])
}

fn trust() -> ManifestTrust {
    ManifestTrust::Keys(vec![signing_key().verifying_key()])
}

async fn open(store: &Store, id: &str) -> CheckpointReader {
    CheckpointReader::open(store, &CheckpointId::new(id).unwrap(), &trust())
        .await
        .unwrap()
}

#[tokio::test]
async fn encrypted_checkpoint_round_trips_with_its_key_and_leaks_nothing_to_the_store() {
    let plain = Store::open("memory://").unwrap();
    let key = TenantKey::generate();
    let store = plain.clone().with_tenant_key(&key);
    let mem = memory();
    write(&store, "enc", None, &mem).await;

    let reader = open(&store, "enc").await;
    let m = reader.manifest();
    assert_eq!(m.encryption.unwrap().key_id, key.id());
    let mut out = vec![0xAAu8; mem.len()];
    reader.read_all_into(&mut out, 4).await.unwrap();
    assert_eq!(out, mem);
    assert_eq!(reader.state_blob().unwrap(), b"secret vcpu state");
    reader.verify(4).await.unwrap();

    // What the store holds: no unkeyed hash of any block's plaintext, no
    // plaintext of the state, stored bytes that are not the plaintext.
    assert!(!m.state.bytes.windows(6).any(|w| w == b"secret"));
    for (i, entry) in m.blocks.iter().enumerate() {
        let raw = reader.fetch_block(i as u32).await.unwrap().data;
        assert_ne!(entry.hash, *blake3::hash(&raw).as_bytes());
        let stored = reader.fetch_stored(i as u32).await.unwrap();
        assert!(!stored.windows(16).any(|w| w == b"guest text page "));
    }
}

#[tokio::test]
async fn missing_or_wrong_key_is_refused_by_name_but_stored_bytes_still_verify() {
    let plain = Store::open("memory://").unwrap();
    let key = TenantKey::generate();
    write(&plain.clone().with_tenant_key(&key), "enc", None, &memory()).await;

    // A block server's view: no key. It opens the manifest and checks
    // stored bytes by their hash, and cannot decode them.
    let keyless = open(&plain, "enc").await;
    for b in 0..keyless.manifest().blocks.len() as u32 {
        let stored = keyless.fetch_stored(b).await.unwrap();
        keyless.verify_stored(b, &stored).unwrap();
    }
    let expect_missing = |e: CheckpointError| match e {
        CheckpointError::Encryption {
            source: CryptError::MissingKey { key_id },
            ..
        } => assert_eq!(key_id, key.id()),
        other => panic!("expected a missing key, got {other}"),
    };
    expect_missing(keyless.state_blob().unwrap_err());
    expect_missing(keyless.fetch_block(0).await.unwrap_err());
    expect_missing(keyless.verify(4).await.unwrap_err());
    let mut out = vec![0u8; 64 * PS];
    let err = keyless.read_all_into(&mut out, 4).await.unwrap_err();
    assert!(err.to_string().contains(&key.id().to_string()), "{err}");
    assert!(err.to_string().contains("no tenant key"), "{err}");

    let other = TenantKey::generate();
    let wrong = open(&plain.clone().with_tenant_key(&other), "enc").await;
    match wrong.fetch_block(0).await.unwrap_err() {
        CheckpointError::Encryption {
            source: CryptError::WrongKey { expected, given },
            ..
        } => assert_eq!((expected, given), (key.id(), other.id())),
        other => panic!("expected a wrong key, got {other}"),
    }

    // A plain checkpoint still reads with a key at hand.
    write(&plain, "clear", None, &memory()).await;
    let keyed = open(&plain.clone().with_tenant_key(&key), "clear").await;
    assert!(matches!(keyed.opener().unwrap(), BlockOpener::Plain));
    keyed.verify(4).await.unwrap();
}

#[tokio::test]
async fn same_tenant_dedups_and_converges_other_tenants_do_not() {
    let plain = Store::open("memory://").unwrap();
    let a = plain.clone().with_tenant_key(&TenantKey::generate());
    let b = plain.clone().with_tenant_key(&TenantKey::generate());
    let mem = memory();
    let parent = write(&a, "parent", None, &mem).await;
    assert!(parent.blocks > 0);

    let mut changed = mem.clone();
    changed[5 * PS] ^= 0xff;
    let child = write(&a, "child", Some("parent"), &changed).await;
    assert_eq!(child.reused_blocks, child.blocks - 1);
    let reader = open(&a, "child").await;
    let mut out = vec![0u8; mem.len()];
    reader.read_all_into(&mut out, 4).await.unwrap();
    assert_eq!(out, changed);

    // Another tenant's child of the same parent reuses nothing (and does
    // not fail: the parent's blocks are simply not its own).
    let foreign = write(&b, "foreign", Some("parent"), &mem).await;
    assert_eq!(foreign.reused_blocks, 0);
    let mut out = vec![0u8; mem.len()];
    open(&b, "foreign")
        .await
        .read_all_into(&mut out, 4)
        .await
        .unwrap();
    assert_eq!(out, mem);
    // And a child in the clear reuses nothing of an encrypted parent.
    assert_eq!(
        write(&plain, "clear", Some("parent"), &mem)
            .await
            .reused_blocks,
        0
    );

    // Convergent: the same tenant's same block is the same ciphertext, in
    // two checkpoints written independently; another tenant's differs.
    write(&a, "again", None, &mem).await;
    let (first, again, other) = (
        open(&a, "parent").await,
        open(&a, "again").await,
        open(&b, "foreign").await,
    );
    for blk in 0..first.manifest().blocks.len() as u32 {
        let x = first.fetch_stored(blk).await.unwrap();
        assert_eq!(x, again.fetch_stored(blk).await.unwrap());
        assert_ne!(x, other.fetch_stored(blk).await.unwrap());
    }
}

#[tokio::test]
async fn relayout_of_an_encrypted_checkpoint_stays_encrypted_and_dedups() {
    let plain = Store::open("memory://").unwrap();
    let key = TenantKey::generate();
    let store = plain.clone().with_tenant_key(&key);
    let mem = memory();
    // Written with the writer's default block size, as relayout writes.
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &mem,
    }];
    let opts = WriteOptions {
        id: Some(CheckpointId::new("old").unwrap()),
        signing_key: Some(signing_key()),
        ..WriteOptions::default()
    };
    write_checkpoint(&store, &regions, b"secret vcpu state".to_vec(), &opts)
        .await
        .unwrap();
    let new = CheckpointId::new("new").unwrap();
    // Pages 0-15 in reverse: the blocks holding them change, the others stay.
    let layout: Vec<u64> = (0..16).rev().collect();
    let summary = thaw_store::relayout::relayout(
        &store,
        &CheckpointId::new("old").unwrap(),
        layout,
        Some(new.clone()),
        &trust(),
        Some(signing_key()),
    )
    .await
    .unwrap();
    // Four blocks of 16 pages: the first is rewritten, the other three reused.
    assert_eq!((summary.blocks, summary.reused_blocks), (4, 3));
    let reader = open(&store, "new").await;
    assert_eq!(reader.manifest().encryption.unwrap().key_id, key.id());
    assert_eq!(reader.state_blob().unwrap(), b"secret vcpu state");
    let mut out = vec![0u8; mem.len()];
    reader.read_all_into(&mut out, 4).await.unwrap();
    assert_eq!(out, mem);
    // Without the key there is nothing to relayout from.
    let err = thaw_store::relayout::relayout(
        &plain,
        &CheckpointId::new("old").unwrap(),
        vec![],
        None,
        &trust(),
        Some(signing_key()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Encryption { .. }), "{err}");
}
