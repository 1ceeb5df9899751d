//! Checkpoint names, delete and GC, on a local directory store and on the
//! in-repo S3 server: deleting the middle of a chain while its children
//! stay exact, GC racing a real writer, the leftovers of an interrupted
//! write, tag races, bad names, and the `thaw` commands over them.
//!
//! Object ages are made by setting the files' modification times (both
//! stores report them as `last_modified`), so "older than the grace" needs
//! no waiting.

mod bins;
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use thaw_bench::hooked_store::{HookedStore, StoreHooks};
use thaw_format::{CheckpointId, CheckpointName, Manifest};
use thaw_s3_test_server::S3TestServer;
use thaw_store::catalog::delete_checkpoint;
use thaw_store::dirty_log::write_dirty_log;
use thaw_store::gc::{collect_garbage, GcError, GcOptions, GcReport, SweptKind};
use thaw_store::names::{self, NamesError, TagOutcome};
use thaw_store::{write_checkpoint, CheckpointReader, MemoryRegion, Store, WriteOptions};

const PS: usize = 4096;
const PAGES: usize = 64;
const GRACE: Duration = Duration::from_secs(3600);
const OLD: Duration = Duration::from_secs(2 * 3600);

/// A store to test on, and where its objects' files are (to age them).
struct Env {
    store: Store,
    files: Files,
}

enum Files {
    Local(tempfile::TempDir),
    S3 {
        server: S3TestServer,
        prefix: String,
    },
}

impl Env {
    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        Self {
            store,
            files: Files::Local(dir),
        }
    }

    async fn s3(prefix: &str) -> Self {
        let server = S3TestServer::start("names-gc").await.unwrap();
        let store = server.store(prefix).unwrap();
        Self {
            store,
            files: Files::S3 {
                server,
                prefix: prefix.to_owned(),
            },
        }
    }

    fn file(&self, key: &str) -> PathBuf {
        match &self.files {
            Files::Local(dir) => dir.path().join(key),
            Files::S3 { server, prefix } => server.object_path(&format!("{prefix}/{key}")),
        }
    }

    /// Makes every object under `prefix` look `age` old.
    async fn age(&self, prefix: &str, age: Duration) {
        for key in self.keys(prefix).await {
            let file = std::fs::File::options()
                .write(true)
                .open(self.file(&key))
                .unwrap();
            file.set_modified(SystemTime::now() - age).unwrap();
        }
    }

    async fn keys(&self, prefix: &str) -> BTreeSet<String> {
        self.store
            .object_store()
            .list(Some(&Path::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }
}

/// Memory of `PAGES` pages, each distinct, with `generation` written into
/// the pages of `changed` (so a child differs from its parent there).
fn memory(changed: &[usize], generation: u8) -> Vec<u8> {
    let mut m = vec![0u8; PAGES * PS];
    for (i, page) in m.chunks_mut(PS).enumerate() {
        page.fill(i as u8 + 1);
        page[..8].copy_from_slice(&(i as u64).to_le_bytes());
        if changed.contains(&i) {
            page[8..16].fill(generation);
        }
    }
    m
}

/// Options of a small write: one block (4 pages) per segment, so segments
/// are swept or kept block by block.
fn opts(id: &str, parent: Option<&CheckpointId>) -> WriteOptions {
    WriteOptions {
        id: Some(CheckpointId::new(id).unwrap()),
        parent: parent.cloned(),
        block_pages: 4,
        segment_bytes: 1,
        upload_concurrency: 1,
        signing_key: Some(bins::signing_key()),
        ..WriteOptions::default()
    }
}

async fn write(store: &Store, mem: &[u8], opts: &WriteOptions) -> CheckpointId {
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: mem,
    }];
    write_checkpoint(store, &regions, b"state".to_vec(), opts)
        .await
        .unwrap()
        .id
}

/// Reads every block of `id` (each hash-checked), checks them against
/// `expected`, then verifies the whole checkpoint.
async fn assert_reads_exactly(store: &Store, id: &CheckpointId, expected: &[u8]) {
    let reader = CheckpointReader::open(store, id, &bins::trust())
        .await
        .unwrap();
    let mut out = vec![0xAA; expected.len()];
    reader.read_all_into(&mut out, 8).await.unwrap();
    assert!(
        out == expected,
        "checkpoint {id} does not read back exactly"
    );
    reader.verify(8).await.unwrap();
}

async fn manifest(store: &Store, id: &CheckpointId) -> Manifest {
    thaw_store::reader::load_manifest(store, id, &bins::trust())
        .await
        .unwrap()
        .manifest
}

async fn gc(store: &Store, dry_run: bool) -> GcReport {
    let opts = GcOptions {
        grace: GRACE,
        dry_run,
        force: false,
    };
    collect_garbage(store, &bins::trust(), &opts).await.unwrap()
}

fn swept_keys(report: &GcReport) -> BTreeSet<String> {
    report.swept.iter().map(|s| s.key.clone()).collect()
}

/// A chain A <- B <- C; B (tagged `middle`) is deleted by name; GC keeps
/// every object C reads (some of them B's) and sweeps B's others, and C
/// reads back exactly.
async fn delete_middle_of_chain(env: Env) {
    let store = &env.store;
    let mem_a = memory(&[], 0);
    let mem_b = memory(&[0, 1, 20, 21, 40], 1);
    // C rewrites two of B's blocks (pages 0..4 and 20..24), keeps B's
    // block of page 40.
    let mem_c = memory(&[0, 1, 20, 21, 40, 60], 1)
        .iter()
        .enumerate()
        .map(|(i, &b)| match i / PS {
            0 | 20 if (8..16).contains(&(i % PS)) => 2,
            _ => b,
        })
        .collect::<Vec<_>>();
    let a = write(store, &mem_a, &opts("a", None)).await;
    let b = write(store, &mem_b, &opts("b", Some(&a))).await;
    let c = write(store, &mem_c, &opts("c", Some(&b))).await;
    let (ma, mb, mc) = (
        manifest(store, &a).await,
        manifest(store, &b).await,
        manifest(store, &c).await,
    );
    assert!(
        mb.objects.len() > 3,
        "B shares A's segments: {:?}",
        mb.objects
    );
    let b_own: BTreeSet<String> = mb
        .objects
        .iter()
        .filter(|k| k.starts_with("checkpoints/b/"))
        .cloned()
        .collect();
    let c_reads: BTreeSet<String> = mc.objects.iter().cloned().collect();
    let b_only: BTreeSet<String> = b_own.difference(&c_reads).cloned().collect();
    assert_eq!(b_only.len(), 2, "C rewrote two of B's blocks: {b_only:?}");
    assert!(
        b_own.iter().any(|k| c_reads.contains(k)),
        "C keeps one of B's blocks"
    );

    let middle = CheckpointName::new("middle").unwrap();
    names::tag(store, &middle, &b, "test", false).await.unwrap();
    assert_eq!(names::resolve(store, "middle").await.unwrap(), b);
    let id = names::resolve(store, "middle").await.unwrap();
    let deleted = delete_checkpoint(store, &id).await.unwrap();
    assert_eq!(deleted.names, vec![middle.clone()]);
    assert!(names::read_name(store, &middle).await.unwrap().is_none());
    assert!(matches!(
        names::resolve(store, "b").await,
        Err(NamesError::Unknown { .. })
    ));

    // Just deleted: B's tombstone still marks everything B used.
    env.age("checkpoints", OLD).await;
    let report = gc(store, false).await;
    assert!(report.swept.is_empty(), "{:?}", report.swept);
    assert_eq!(report.young_tombstones, 1);

    // A grace later: B's own objects that C does not read go, with the
    // tombstone; everything else stays.
    env.age("deleted", OLD).await;
    let report = gc(store, false).await;
    let mut expected = b_only.clone();
    expected.insert("deleted/b".to_owned());
    assert_eq!(swept_keys(&report), expected);
    assert_eq!(
        report.swept_bytes,
        report.swept.iter().map(|s| s.bytes).sum::<u64>()
    );
    for key in &b_only {
        assert!(!env.keys("checkpoints/b").await.contains(key));
    }
    assert_reads_exactly(store, &c, &mem_c).await;
    assert_reads_exactly(store, &a, &mem_a).await;
    assert_eq!(manifest(store, &a).await.objects, ma.objects);
    // Nothing left to sweep.
    assert!(gc(store, false).await.swept.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_middle_of_chain_local() {
    delete_middle_of_chain(Env::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_middle_of_chain_s3() {
    delete_middle_of_chain(Env::s3("chain").await).await;
}

/// Holds the first write of a key containing `pause_at` until released.
#[derive(Debug)]
struct Gate {
    pause_at: String,
    paused: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl StoreHooks for Gate {
    fn describe(
        &self,
        inner: &dyn ObjectStore,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        write!(f, "Gate({inner})")
    }

    fn before_write(&self, location: &Path) -> object_store::Result<()> {
        if location.as_ref().contains(&self.pause_at) {
            if let Some(paused) = self.paused.lock().unwrap().take() {
                paused.send(()).unwrap();
                // The writer runs on its own thread and runtime: blocking
                // here stops the write, as a slow writer would be.
                self.release.lock().unwrap().recv().unwrap();
            }
        }
        Ok(())
    }
}

/// A writer of child D of P is stopped between its first and second new
/// segment; meanwhile P is deleted and GC runs. With `writer_within_grace`,
/// P's tombstone is fresh (the rule holds): GC keeps P's old segments and
/// D's young one, and D, finished after GC, reads back exactly. Without it,
/// the tombstone is aged past the grace (a writer that outlived it): GC
/// sweeps what D reuses, which the test sees as D missing objects, so the
/// test fails if GC marks nothing for a writer in flight.
async fn gc_racing_a_writer(env: Env, writer_within_grace: bool) {
    let store = env.store.clone();
    let mem_p = memory(&[], 0);
    let p = write(&store, &mem_p, &opts("p", None)).await;
    env.age("checkpoints", OLD).await;

    let mem_d = memory(&[0, 20, 40], 3);
    let (paused_tx, paused_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = HookedStore::with_hooks(
        Arc::clone(store.object_store()),
        Gate {
            pause_at: "checkpoints/d/segment-000001".into(),
            paused: Mutex::new(Some(paused_tx)),
            release: Mutex::new(release_rx),
        },
    );
    let writer_store = Store::from_object_store(Arc::new(gate), store.location());
    let writer_mem = mem_d.clone();
    let writer_opts = opts("d", Some(&p));
    let writer = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let regions = [MemoryRegion {
                    guest_phys_addr: 0,
                    bytes: &writer_mem,
                }];
                write_checkpoint(&writer_store, &regions, b"state".to_vec(), &writer_opts).await
            })
    });
    paused_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the writer reaches its second segment");
    assert_eq!(
        env.keys("checkpoints/d").await,
        BTreeSet::from(["checkpoints/d/segment-000000".to_owned()]),
        "the writer has one segment up and no manifest"
    );

    delete_checkpoint(&store, &p).await.unwrap();
    if !writer_within_grace {
        env.age("deleted", OLD).await;
    }
    let report = gc(&store, false).await;
    release_tx.send(()).unwrap();
    let summary = writer.join().unwrap().unwrap();
    assert!(summary.reused_blocks > 10, "{summary:?}");

    if writer_within_grace {
        assert!(
            report.swept.is_empty(),
            "GC swept in-flight data: {:?}",
            report.swept
        );
        assert!(report.kept_young >= 1, "the writer's young segment is kept");
        assert_reads_exactly(&store, &summary.id, &mem_d).await;
        // Once D's manifest exists it marks what it reuses by itself: even
        // with the tombstone gone, only P's blocks D does not use go.
        env.age("deleted", OLD).await;
        env.age("checkpoints/d", OLD).await;
        let report = gc(&store, false).await;
        let d_reads: BTreeSet<String> = manifest(&store, &summary.id)
            .await
            .objects
            .into_iter()
            .collect();
        assert!(!report.swept.is_empty());
        for s in &report.swept {
            assert!(!d_reads.contains(&s.key), "swept {} which D reads", s.key);
        }
        assert_reads_exactly(&store, &summary.id, &mem_d).await;
    } else {
        assert!(
            report.swept.iter().any(|s| s.kind == SweptKind::Object),
            "past the grace, P's segments are swept"
        );
        let reader = CheckpointReader::open(&store, &summary.id, &bins::trust())
            .await
            .unwrap();
        let mut out = vec![0; mem_d.len()];
        let err = reader.read_all_into(&mut out, 8).await.unwrap_err();
        assert!(
            err.to_string().contains("missing") || err.to_string().contains("not found"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_a_writer_local() {
    gc_racing_a_writer(Env::local(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_racing_a_writer_s3() {
    gc_racing_a_writer(Env::s3("race").await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_outliving_the_grace_loses_its_parent_blocks() {
    gc_racing_a_writer(Env::local(), false).await;
}

/// A write that died before its manifest leaves segments and a dirty log:
/// kept while younger than the grace, listed by a dry run, then swept; the
/// live checkpoint beside it stays whole.
async fn interrupted_leftovers(env: Env) {
    let store = &env.store;
    let mem = memory(&[], 0);
    let live = write(store, &mem, &opts("live", None)).await;

    let failing = HookedStore::with_hooks(
        Arc::clone(store.object_store()),
        common::recording_store::WriteRecorder::default(),
    );
    *failing.hooks().fail_writes_containing.lock().unwrap() = Some("/manifest".into());
    let failing = Store::from_object_store(Arc::new(failing), store.location());
    let dead = CheckpointId::new("dead").unwrap();
    let log = thaw_format::DirtyLog {
        page_size: PS as u64,
        total_pages: 8,
        windows: vec![],
    };
    write_dirty_log(&failing, &dead, &log).await.unwrap();
    let regions = [MemoryRegion {
        guest_phys_addr: 0,
        bytes: &mem[..8 * PS],
    }];
    write_checkpoint(&failing, &regions, vec![], &opts("dead", None))
        .await
        .unwrap_err();
    let leftovers = env.keys("checkpoints/dead").await;
    assert!(
        leftovers.len() >= 3,
        "segments and a dirty log: {leftovers:?}"
    );
    assert!(leftovers.contains("checkpoints/dead/dirty-log"));

    let report = gc(store, false).await;
    assert!(
        report.swept.is_empty(),
        "young leftovers are kept: {:?}",
        report.swept
    );
    assert_eq!(report.kept_young, leftovers.len());

    env.age("checkpoints", OLD).await;
    let report = gc(store, true).await;
    assert_eq!(swept_keys(&report), leftovers);
    assert_eq!(
        env.keys("checkpoints/dead").await,
        leftovers,
        "a dry run deletes nothing"
    );

    let report = gc(store, false).await;
    assert_eq!(swept_keys(&report), leftovers);
    assert!(env.keys("checkpoints/dead").await.is_empty());
    assert_reads_exactly(store, &live, &mem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_leftovers_local() {
    interrupted_leftovers(Env::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_leftovers_s3() {
    interrupted_leftovers(Env::s3("leftovers").await).await;
}

/// Eight taggers race to create each of several new names: exactly one wins
/// each, and every loser is told the winner's checkpoint (it lost the
/// create-only put, or read the name after it and does not move it).
async fn tag_create_race(env: Env) {
    let store = &env.store;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(write(store, &memory(&[i], i as u8), &opts(&format!("t{i}"), None)).await);
    }
    for round in 0..5 {
        let name = CheckpointName::new(format!("race-{round}")).unwrap();
        let results = futures::future::join_all(ids.iter().map(|id| {
            let (store, name, id) = (store.clone(), name.clone(), id.clone());
            tokio::spawn(async move { names::tag(&store, &name, &id, "racer", false).await })
        }))
        .await;
        let now = names::read_name(store, &name).await.unwrap().unwrap().id;
        let mut winners = 0;
        for (id, result) in ids.iter().zip(results) {
            match result.unwrap() {
                Ok(TagOutcome::Created) => {
                    winners += 1;
                    assert_eq!(&now, id, "the winner's tag stands");
                }
                Err(e @ (NamesError::Conflict { .. } | NamesError::Exists { .. })) => {
                    assert!(e.to_string().contains(now.as_str()), "{e}");
                }
                other => panic!("unexpected tag result {other:?}"),
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one creator wins");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_create_race_local() {
    tag_create_race(Env::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_create_race_s3() {
    tag_create_race(Env::s3("tag-race").await).await;
}

/// On S3 a move is an `If-Match` put on the version read: of eight movers
/// racing on one name, no two succeed from the same version (no update is
/// lost). The successful moves chain from the start to where the name ends,
/// and every loser is told where it points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_move_race_s3() {
    let env = Env::s3("move-race").await;
    let store = &env.store;
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(write(store, &memory(&[i], i as u8), &opts(&format!("m{i}"), None)).await);
    }
    let start = ids.pop().unwrap();
    for round in 0..5 {
        let name = CheckpointName::new(format!("moving-{round}")).unwrap();
        names::tag(store, &name, &start, "setup", false)
            .await
            .unwrap();
        let results = futures::future::join_all(ids.iter().map(|id| {
            let (store, name, id) = (store.clone(), name.clone(), id.clone());
            tokio::spawn(async move { names::tag(&store, &name, &id, "mover", true).await })
        }))
        .await;
        let now = names::read_name(store, &name).await.unwrap().unwrap().id;
        let mut moves = std::collections::BTreeMap::new();
        let mut conflicts = 0;
        for (id, result) in ids.iter().zip(results) {
            match result.unwrap() {
                Ok(TagOutcome::Moved { from }) => {
                    let twice = moves.insert(from.clone(), id.clone());
                    assert!(
                        twice.is_none(),
                        "round {round}: two moves from {from}: an update was lost"
                    );
                }
                Err(e @ NamesError::Conflict { .. }) => {
                    conflicts += 1;
                    assert!(e.to_string().contains("points at checkpoint"), "{e}");
                }
                other => panic!("unexpected tag result {other:?}"),
            }
        }
        let mut at = start.clone();
        let mut hops = 0;
        while let Some(next) = moves.get(&at) {
            at = next.clone();
            hops += 1;
        }
        assert_eq!(
            at, now,
            "round {round}: the chain of moves ends where the name is"
        );
        assert_eq!(
            hops,
            moves.len(),
            "round {round}: every move is on the chain"
        );
        assert!(
            hops >= 1 && conflicts >= 1,
            "round {round}: {hops} moves, {conflicts} conflicts"
        );
        assert_eq!(hops + conflicts, ids.len());
    }
}

/// On a local directory (no conditional update) a move is check, delete,
/// create-only put: sequential moves work and report where the name was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_moves_on_a_local_store() {
    let env = Env::local();
    let store = &env.store;
    let x = write(store, &memory(&[1], 1), &opts("x", None)).await;
    let y = write(store, &memory(&[2], 2), &opts("y", None)).await;
    let name = CheckpointName::new("prod").unwrap();
    assert_eq!(
        names::tag(store, &name, &x, "t", true).await.unwrap(),
        TagOutcome::Created
    );
    assert_eq!(
        names::tag(store, &name, &x, "t", true).await.unwrap(),
        TagOutcome::Unchanged
    );
    let err = names::tag(store, &name, &y, "t", false).await.unwrap_err();
    assert!(
        matches!(err, NamesError::Exists { .. }) && err.to_string().contains("--move"),
        "{err}"
    );
    assert_eq!(
        names::tag(store, &name, &y, "t", true).await.unwrap(),
        TagOutcome::Moved { from: x.clone() }
    );
    assert_eq!(names::resolve(store, "prod").await.unwrap(), y);
    assert_eq!(
        names::tag(store, &name, &x, "t", true).await.unwrap(),
        TagOutcome::Moved { from: y }
    );
    assert_eq!(names::resolve(store, "prod").await.unwrap(), x);
}

/// Bad names, names that would hide an id, missing checkpoints and unknown
/// arguments are refused, each with an error that says what is wrong.
async fn bad_names(env: Env) {
    let store = &env.store;
    let x = write(store, &memory(&[], 0), &opts("x", None)).await;
    for bad in ["a/b", "..", "../x", ".hidden", "sp ace", &"n".repeat(129)] {
        let err = CheckpointName::new(bad).unwrap_err().to_string();
        assert!(err.contains("name"), "{bad}: {err}");
        let err = names::resolve(store, bad).await.unwrap_err();
        assert!(
            matches!(err, NamesError::BadName(_) | NamesError::Unknown { .. }),
            "{bad}: {err}"
        );
    }
    let err = names::tag(store, &CheckpointName::new("x").unwrap(), &x, "t", false)
        .await
        .unwrap_err();
    assert!(matches!(err, NamesError::ShadowsId { .. }), "{err}");
    let missing = CheckpointId::new("missing").unwrap();
    let err = names::tag(
        store,
        &CheckpointName::new("n").unwrap(),
        &missing,
        "t",
        false,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("missing not found"), "{err}");
    let err = names::resolve(store, "nothing-here").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("neither a checkpoint id nor a checkpoint name"),
        "{err}"
    );
    // An id always means itself, and a name resolves to its checkpoint.
    assert_eq!(names::resolve(store, "x").await.unwrap(), x);
    // A name object that is not one is named in the error.
    store
        .object_store()
        .put(&Path::from("names/junk"), b"{}".to_vec().into())
        .await
        .unwrap();
    let err = names::resolve(store, "junk").await.unwrap_err();
    assert!(err.to_string().contains("names/junk"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_local() {
    bad_names(Env::local()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_s3() {
    bad_names(Env::s3("bad-names").await).await;
}

/// A manifest GC cannot read stops the sweep; `force` sweeps the rest and
/// keeps that checkpoint's own objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_manifest_stops_gc_unless_forced() {
    let env = Env::local();
    let store = &env.store;
    let good = write(store, &memory(&[], 0), &opts("good", None)).await;
    write(store, &memory(&[5], 5), &opts("odd", None)).await;
    store
        .object_store()
        .put(
            &Path::from("checkpoints/odd/manifest"),
            b"garbage".to_vec().into(),
        )
        .await
        .unwrap();
    store
        .object_store()
        .put(
            &Path::from("checkpoints/gone/segment-000000"),
            vec![1u8; 100].into(),
        )
        .await
        .unwrap();
    env.age("checkpoints", OLD).await;
    let err = collect_garbage(
        store,
        &bins::trust(),
        &GcOptions {
            grace: GRACE,
            ..GcOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, GcError::Unreadable(ref v) if v.len() == 1),
        "{err}"
    );
    assert!(
        err.to_string().contains("odd") && err.to_string().contains("--force"),
        "{err}"
    );
    assert!(
        env.keys("checkpoints/gone").await.len() == 1,
        "nothing swept"
    );

    let odd_before = env.keys("checkpoints/odd").await;
    let forced = GcOptions {
        grace: GRACE,
        force: true,
        ..GcOptions::default()
    };
    let report = collect_garbage(store, &bins::trust(), &forced)
        .await
        .unwrap();
    assert_eq!(
        swept_keys(&report),
        BTreeSet::from(["checkpoints/gone/segment-000000".to_owned()])
    );
    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(env.keys("checkpoints/odd").await, odd_before);
    assert_reads_exactly(store, &good, &memory(&[], 0)).await;
}

fn run_thaw(args: &[&str]) -> (String, bool) {
    let out = bins::thaw().args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

/// The commands as a user runs them: tag, list (table and JSON), verify by
/// name, delete by name, gc with --dry-run and --json, and clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thaw_commands_tag_list_delete_gc() {
    let env = Env::local();
    let store = &env.store;
    let spec = match &env.files {
        Files::Local(dir) => dir.path().to_str().unwrap().to_owned(),
        Files::S3 { .. } => unreachable!(),
    };
    let base = write(store, &memory(&[], 0), &opts("base", None)).await;
    let mem_child = memory(&[3, 30], 7);
    let child = write(store, &mem_child, &opts("child", Some(&base))).await;

    let (out, ok) = run_thaw(&["checkpoint", "tag", &spec, "golden", "base"]);
    assert!(ok, "{out}");
    assert!(out.contains("golden -> base"), "{out}");
    let (out, ok) = run_thaw(&["checkpoint", "tag", &spec, "golden", "child"]);
    assert!(
        !ok && out.contains("points at checkpoint base already"),
        "{out}"
    );
    let (out, ok) = run_thaw(&["checkpoint", "tag", &spec, "bad/name", "base"]);
    assert!(!ok && out.contains("no '/'"), "{out}");

    let (out, ok) = run_thaw(&["checkpoint", "list", &spec]);
    assert!(ok, "{out}");
    assert!(out.contains("golden") && out.contains("shared"), "{out}");
    let (out, ok) = run_thaw(&["checkpoint", "list", &spec, "--json"]);
    assert!(ok, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entries = doc["checkpoints"].as_array().unwrap();
    let child_entry = entries.iter().find(|e| e["id"] == "child").unwrap();
    let mc = manifest(store, &child).await;
    let own: u64 = mc
        .blocks
        .iter()
        .filter(|b| mc.objects[b.object as usize].starts_with("checkpoints/child/"))
        .map(|b| b.stored_len)
        .sum();
    assert_eq!(child_entry["own_bytes"], own);
    assert_eq!(child_entry["shared_bytes"], mc.stored_bytes() - own);
    assert!(own > 0 && mc.stored_bytes() > own);
    assert_eq!(child_entry["parent"], "base");
    let base_entry = entries.iter().find(|e| e["id"] == "base").unwrap();
    assert_eq!(base_entry["names"], serde_json::json!(["golden"]));
    assert_eq!(base_entry["shared_bytes"], 0);

    let (out, ok) = run_thaw(&["checkpoint", "verify", &spec, "golden"]);
    assert!(ok && out.contains("checkpoint base: OK"), "{out}");
    let (out, ok) = run_thaw(&["checkpoint", "verify", &spec, "nope"]);
    assert!(
        !ok && out.contains("neither a checkpoint id nor a checkpoint name"),
        "{out}"
    );

    let (out, ok) = run_thaw(&["checkpoint", "delete", &spec, "golden"]);
    assert!(
        ok && out.contains("checkpoint base and its name(s) golden deleted"),
        "{out}"
    );
    let (out, ok) = run_thaw(&["checkpoint", "list", &spec]);
    assert!(ok && out.contains("base (deleted)"), "{out}");

    env.age("checkpoints", OLD).await;
    env.age("deleted", OLD).await;
    let (out, ok) = run_thaw(&["store", "gc", &spec, "--grace", "1h", "--dry-run", "--json"]);
    assert!(ok, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["dry_run"], true);
    let would = doc["swept_count"].as_u64().unwrap();
    assert!(would >= 2, "{out}");
    let (out, ok) = run_thaw(&["store", "gc", &spec, "--grace", "1h"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("swept {would} object(s)")), "{out}");
    assert_reads_exactly(store, &child, &mem_child).await;
    let (out, ok) = run_thaw(&["checkpoint", "verify", &spec, "child"]);
    assert!(ok, "{out}");
}
