//! `thaw-bench incremental` at a small size: it writes exactly its four fields, and the diff
//! after 1% of the pages were rewritten costs about what was written (judged loosely here; the
//! goals are judged from the 4 GiB run).

mod bins;

#[test]
fn incremental_bench_writes_its_fields_and_the_diff_is_about_the_dirty_pages() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = bins::thaw_bench()
        .args(["incremental", "--mem", "256MiB", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "dirty_bytes",
            "full_s",
            "incremental_bytes",
            "incremental_s"
        ],
        "{v}"
    );
    let f = |k: &str| v[k].as_f64().unwrap();
    let pages_1pct = (256u64 << 20) as f64 / 100.0;
    assert!(f("dirty_bytes") >= pages_1pct, "{v}");
    assert!(f("incremental_bytes") >= f("dirty_bytes"), "{v}");
    // The guest writes pages in order, so only the blocks at the ends of the written stretch
    // mix written and unwritten pages.
    assert!(f("incremental_bytes") <= 1.5 * f("dirty_bytes"), "{v}");
    assert!(f("incremental_s") < f("full_s"), "{v}");
}
