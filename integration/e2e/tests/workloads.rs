//! The workload generators: every workload is valid in the workload format
//! (read back with storage-backend's own reader), realistic in its mix of
//! memory and in how its runs relate, and reproducible from its seed.

mod bins;

use std::collections::HashSet;
use std::path::Path;

use thaw_bench::workload_dir::Workload;
use thaw_bench::workloads::summary::{jaccard, summarize};
use thaw_bench::workloads::{generate, GenerateError, Params, GENERATORS};

/// Small enough for a debug build, large enough for the structure to show.
const TEST_SCALE: f64 = 0.25;

#[test]
fn every_workload_is_valid_and_realistic() {
    let out = tempfile::tempdir().unwrap();
    let params = Params {
        seed: 1,
        scale: TEST_SCALE,
    };
    let outcomes = generate(out.path(), &params, &[]).unwrap();
    let names: Vec<&str> = outcomes.iter().map(|o| o.name).collect();
    assert_eq!(
        names,
        ["web-server", "kv-store", "database", "gc-sweep", "idle-os"]
    );
    for outcome in &outcomes {
        assert!(!outcome.reused);
        // Pages in range, times sorted, no page twice: checked by the reader.
        let w = Workload::load(&outcome.dir).unwrap_or_else(|e| panic!("{e}"));
        let s = summarize(&w);
        let name = &s.name;
        assert_eq!(name, outcome.name);
        assert_eq!(w.spec.page_size, 4096);
        assert!(w.traces.len() >= 3, "{name}: {} traces", w.traces.len());
        let zero = s.zero_pages as f64 / s.total_pages as f64;
        assert!((0.25..0.75).contains(&zero), "{name}: zero share {zero}");
        assert!(
            (1.3..4.0).contains(&s.lz4_ratio),
            "{name}: non-zero pages compress {}x",
            s.lz4_ratio
        );
        for (trace, (&touched, &us)) in w.traces.iter().zip(s.touched.iter().zip(&s.duration_us)) {
            assert!(
                touched >= 150 && (touched as u64) < s.total_pages / 2,
                "{name}/{}: {touched} pages",
                trace.name
            );
            assert!(
                (300_000..4_000_000).contains(&us),
                "{name}/{}: {us} µs",
                trace.name
            );
            // Think time: many touches come in bursts, but there are gaps.
            let gaps: Vec<u64> = trace
                .events
                .windows(2)
                .map(|p| p[1].t_us - p[0].t_us)
                .collect();
            let long = gaps.iter().filter(|&&g| g >= 1_000).count();
            assert!(
                long >= 5,
                "{name}/{}: {long} gaps of 1 ms or more",
                trace.name
            );
        }
        // Same checkpoint, different runs: much in common, never the same.
        assert!(
            s.jaccard_min > 0.3 && s.jaccard_max < 0.98,
            "{name}: overlap {:.2}..{:.2}",
            s.jaccard_min,
            s.jaccard_max
        );
        let orders: HashSet<Vec<u64>> = w.traces.iter().map(|t| t.pages()).collect();
        assert_eq!(
            orders.len(),
            w.traces.len(),
            "{name}: two runs touched the same pages in the same order"
        );
        // First touches land on zero pages (fresh allocations, unused
        // buffers) as well as on data.
        let touched_zero = w.traces[0]
            .pages()
            .iter()
            .filter(|&&p| {
                let at = p as usize * 4096;
                w.memory[at..at + 4096].iter().all(|&b| b == 0)
            })
            .count();
        assert!(
            touched_zero > 0 && touched_zero < w.traces[0].events.len(),
            "{name}: {touched_zero} zero pages touched"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_bytes_another_seed_other_runs() {
    for g in GENERATORS {
        let params = Params {
            seed: 7,
            scale: 0.1,
        };
        let a = (g.build)(&params);
        let b = (g.build)(&params);
        assert!(
            a.memory == b.memory,
            "{}: memory differs for one seed",
            g.name
        );
        assert_eq!(a.traces, b.traces, "{}", g.name);
        let c = (g.build)(&Params { seed: 8, ..params });
        assert_ne!(a.traces, c.traces, "{}: seed ignored", g.name);
        let first =
            |t: &[thaw_bench::workloads::Touch]| t.iter().map(|x| x.page).collect::<HashSet<u64>>();
        assert!(
            jaccard(&first(&a.traces[0]), &first(&c.traces[0])) < 0.99,
            "{}",
            g.name
        );
    }
}

fn file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for sub in ["", "traces"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn output_is_reused_for_the_same_generator_and_seed() {
    let out = tempfile::tempdir().unwrap();
    let only = ["idle-os".to_string()];
    let small = Params {
        seed: 3,
        scale: 0.2,
    };
    let first = generate(out.path(), &small, &only).unwrap();
    assert_eq!(first.len(), 1);
    assert!(!first[0].reused);
    let dir = &first[0].dir;
    let before = file_bytes(dir);
    let marker = std::fs::read_to_string(dir.join("workload.json")).unwrap();
    assert!(
        marker.contains("\"generator\": \"thaw idle-os v1 seed 3 scale 0.2\""),
        "{marker}"
    );

    assert!(generate(out.path(), &small, &only).unwrap()[0].reused);
    // Another seed replaces it; the first seed again writes the same bytes.
    assert!(!generate(out.path(), &Params { seed: 4, ..small }, &only).unwrap()[0].reused);
    assert_ne!(file_bytes(dir), before);
    assert!(!generate(out.path(), &small, &only).unwrap()[0].reused);
    assert_eq!(file_bytes(dir), before);

    // A half-written directory (no workload.json) is generated again.
    std::fs::remove_file(dir.join("workload.json")).unwrap();
    assert!(!generate(out.path(), &small, &only).unwrap()[0].reused);
}

#[test]
fn foreign_workloads_and_unknown_names_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("idle-os");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("workload.json"),
        r#"{"name": "recorded", "page_size": 4096}"#,
    )
    .unwrap();
    let small = Params {
        seed: 1,
        scale: 0.1,
    };
    let err = generate(out.path(), &small, &["idle-os".into()]).unwrap_err();
    assert!(matches!(err, GenerateError::NotGenerated { .. }), "{err}");
    assert!(dir.join("workload.json").exists());
    let err = generate(out.path(), &small, &["web".into()]).unwrap_err();
    assert!(err.to_string().contains("web-server"), "{err}");
}

#[test]
fn cli_writes_a_workload_and_prints_its_figures() {
    let out = tempfile::tempdir().unwrap();
    let run = || {
        bins::thaw_bench()
            .args([
                "workload", "generate", "--only", "idle-os", "--seed", "5", "--out",
            ])
            .arg(out.path())
            .output()
            .unwrap()
    };
    let output = run();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("idle-os") && stdout.contains("64.0 MiB"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let w = Workload::load(out.path().join("idle-os")).unwrap();
    assert_eq!(w.spec.memory_bytes, 64 << 20);
    let again = String::from_utf8(run().stdout).unwrap();
    assert!(again.contains("(already there)"), "{again}");
}
