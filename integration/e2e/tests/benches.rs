//! The storage benchmarks run end to end at small sizes and write the JSON
//! fields the README documents. (Figures are judged from full runs, not here.)

mod bins;

fn bench(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = bins::thaw_bench()
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

#[test]
fn checkpoint_bench_writes_its_fields() {
    let v = bench(&["checkpoint", "--memory", "32MiB"]);
    for key in [
        "write_gib_per_s",
        "read_gib_per_s",
        "write_gib_per_s_encrypted",
        "read_gib_per_s_encrypted",
        "stored_bytes_encrypted",
        "compression_ratio",
        "zero_pages",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
}

#[test]
fn stream_bench_writes_its_fields() {
    let v = bench(&["stream", "--memory", "16MiB"]);
    for key in [
        "stream_gb_per_s",
        "stream_decoded_gb_per_s",
        "stream_gb_per_s_encrypted",
        "stream_decoded_gb_per_s_encrypted",
    ] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
    }
}

#[test]
fn fleet_restores_cost_one_store_read_per_block() {
    let v = bench(&[
        "fleet",
        "--memory",
        "8MiB",
        "--hosts",
        "4",
        "--block-servers",
        "3",
    ]);
    // Single flight and the servers' caches: four hosts read the store
    // exactly as often as one.
    assert_eq!(v["store_reads_fleet"], v["store_reads_one_host"], "{v}");
    assert_eq!(v["store_reads_ratio"].as_f64().unwrap(), 1.0);
    // Sharded: each shard read by its home alone (the manifest by each
    // server), and every server took some of the requests. 8 MiB is too
    // few shards for the evenness goal, which the full-size run checks.
    let tier = v["tier_bytes_ratio"].as_f64().unwrap();
    assert!((1.0..1.1).contains(&tier), "{v}");
    let share = v["server_share_max"].as_f64().unwrap();
    assert!((1.0..2.0).contains(&share), "{v}");
    let per_server = v["server_block_requests_fleet"].as_array().unwrap();
    assert_eq!(per_server.len(), 3, "{v}");
    assert!(per_server.iter().all(|n| n.as_u64().unwrap() > 0), "{v}");
}
