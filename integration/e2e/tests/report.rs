//! The evaluation page generator on a synthetic row set: verdicts on both sides of the
//! targets, well-formed SVG, errors that name the row, byte-for-byte repeatable output, and the
//! `thaw-bench report` command.

mod bins;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thaw_bench::report::{parse_rows, write_report, ReportMeta};

const STRATEGIES: [&str; 8] = [
    "eager",
    "lazy-4k",
    "fixed-blocks",
    "locality",
    "locality+prefetch",
    "locality+prefetch+stream",
    "oracle",
    "thaw",
];

/// Baseline 10 s; lazy-4k 2 s of overhead; oracle finishes at 10.1 s. thaw's overhead and
/// finish time per case, placed on either side of the 3% / 1.1× bounds.
const CASES: [(&str, &str, f64, f64, &str); 6] = [
    ("shell", "rack", 0.040, 10.60, "PASS"), // 2.0% of lazy, 1.050×
    ("shell", "region", 0.062, 10.50, "**FAIL** (overhead)"), // 3.1%
    ("shell", "object-store", 0.058, 11.12, "**FAIL** (finish)"), // 2.9%, 1.101×
    ("kv-store", "rack", 0.058, 11.10 - 0.02, "PASS"), // 2.9%, 1.097×
    (
        "kv-store",
        "region",
        0.070,
        11.20,
        "**FAIL** (overhead, finish)",
    ),
    ("kv-store", "object-store", 0.001, 10.001, "PASS"),
];

fn row(workload: &str, link: &str, strategy: &str, thaw: (f64, f64)) -> Value {
    let k = STRATEGIES.iter().position(|s| *s == strategy).unwrap() as f64;
    let baseline = 10.0;
    let (overhead, finish) = match strategy {
        "lazy-4k" => (2.0, 12.0),
        "oracle" => (0.1, 10.1),
        "thaw" => (thaw.0, thaw.1),
        // Eager over the object store waits for all memory: ~30× the others, so the time
        // axis spans decades.
        _ if link == "object-store" && k == 0.0 => (290.0, 300.0),
        _ => (1.0 / (k + 1.0), baseline + 1.0 / (k + 1.0)),
    };
    let faulting = strategy != "eager";
    let p = 20.0 * (k + 1.0);
    json!({
        "workload": workload, "link": link, "strategy": strategy,
        "time_to_finish_s": finish, "restore_overhead_s": overhead,
        "requests": 100 * (k as u64 + 1), "bytes": (1u64 << 20) * (k as u64 + 3),
        "faults": if faulting { 500 - 40 * k as u64 } else { 0 },
        "baseline_s": baseline,
        "fault_latency_us": if faulting {
            json!({"p50": p * 2.0, "p90": p * 5.0, "p99": p * 20.0, "max": p * 50.0})
        } else { Value::Null },
        "fault_latency_cdf": if faulting {
            json!([[p, 0.05], [p * 2.0, 0.5], [p * 5.0, 0.9], [p * 20.0, 0.99], [p * 50.0, 1.0]])
        } else { json!([]) },
        "replayer_version": 3
    })
}

fn synthetic_rows() -> Vec<Value> {
    let mut rows = Vec::new();
    for (workload, link, thaw_overhead, thaw_finish, _) in CASES {
        for strategy in STRATEGIES {
            rows.push(row(workload, link, strategy, (thaw_overhead, thaw_finish)));
        }
    }
    rows
}

fn meta() -> ReportMeta {
    ReportMeta {
        commands: vec!["thaw-bench restore --json rows.json --report docs/evaluation.md".into()],
        date: "2030-01-02".into(),
        machine: "a test machine".into(),
        cdf_workload: None,
    }
}

fn rows_from(values: &[Value]) -> Vec<thaw_bench::report::Row> {
    parse_rows(&Value::Array(values.to_vec()).to_string(), "synthetic").unwrap()
}

/// The page `write_report` renders from `rows` (its charts are dropped with the directory).
fn page_of(rows: &[thaw_bench::report::Row]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evaluation.md");
    write_report(rows, &out, &meta()).unwrap();
    std::fs::read_to_string(&out).unwrap()
}

/// Every file under `dir`, as (relative path, bytes), sorted.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path.strip_prefix(dir).unwrap().to_path_buf(), bytes));
            }
        }
    }
    out.sort();
    out
}

/// Parses `text` as XML to the end; returns the root element's name and the element count.
fn parse_xml(text: &str) -> (String, usize) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut root = None;
    let mut elements = 0;
    let mut depth = 0i32;
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                root.get_or_insert_with(|| String::from_utf8_lossy(e.name().as_ref()).into_owned());
                elements += 1;
                depth += 1;
            }
            Event::Empty(e) => {
                root.get_or_insert_with(|| String::from_utf8_lossy(e.name().as_ref()).into_owned());
                elements += 1;
            }
            Event::End(_) => depth -= 1,
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0, "unclosed elements");
    (root.expect("a root element"), elements)
}

#[test]
fn summary_verdicts_match_the_targets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evaluation.md");
    let rendered = write_report(&rows_from(&synthetic_rows()), &out, &meta()).unwrap();
    let page = std::fs::read_to_string(&out).unwrap();
    assert_eq!(page, rendered.page);
    for (workload, link, _, _, expected) in CASES {
        let prefix = format!("| {workload} | {link} |");
        let line = page
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no summary row {prefix} in\n{page}"));
        let result = line
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap()
            .trim();
        assert_eq!(result, expected, "{line}");
    }
    assert!(
        page.contains("**3 of 6 workload × link pairs pass** (3 fail)."),
        "{page}"
    );
    // The figures the summary shows for one case: thaw's cut and ratio.
    assert!(
        page.contains(
            "| shell | rack | 0.04000 | 2.000 | 98.00% | 10.60 | 10.10 | 1.050× | PASS |"
        ),
        "{page}"
    );
    assert!(page.contains("Measured 2030-01-02 on a test machine."));
    assert!(page.contains("thaw-bench restore --json rows.json --report docs/evaluation.md"));
    assert!(page.contains("all workloads merged, weighted by fault count"));
}

#[test]
fn full_tables_have_every_row_and_human_units() {
    let rows = rows_from(&synthetic_rows());
    let page = page_of(&rows);
    for link in ["rack", "region", "object-store"] {
        assert!(page.contains(&format!("## Link: {link}\n")), "{link}");
    }
    // 6 groups × 8 strategies, each a row of an 11-column table.
    let figure_rows = page
        .lines()
        .filter(|l| l.starts_with("| shell |") || l.starts_with("| kv-store |"))
        .filter(|l| l.matches(" | ").count() == 10)
        .count();
    assert_eq!(figure_rows, 48);
    // eager: no faults, so no latency percentiles; lazy-4k is its own reference (0% cut).
    assert!(
        page.contains(
            "| shell | eager | 11.00 | 1.000 | 50.00% | 1.089× | 100 | 3.0 MiB | 0 | – | – |"
        ),
        "{page}"
    );
    assert!(page.contains("| shell | lazy-4k | 12.00 | 2.000 | 0.00% | 1.188× | 200 | 4.0 MiB | 460 | 80.0 | 800 |"), "{page}");
}

/// Rows timed with `--hop-timings` carry their demand fetches' legs; the page shows them in
/// a table under their link, and only where some row has them.
#[test]
fn demand_fetch_legs_appear_under_their_link_when_timed() {
    let leg = |p50: f64| json!({"mean": p50 + 1.0, "p50": p50, "p90": p50 * 2.0, "p99": p50 * 3.0, "max": p50 * 4.0});
    let mut values = synthetic_rows();
    for v in values.iter_mut() {
        if v["link"] == "rack" && v["workload"] == "kv-store" && v["strategy"] != "eager" {
            v["demand_fetch_us"] = json!({
                "fetches": 42,
                "to_server_us": leg(150.0), "at_server_us": leg(12.0),
                "back_us": leg(210.0), "total_us": leg(372.0)
            });
        }
    }
    let rows = rows_from(&values);
    assert_eq!(
        rows.iter().filter(|r| r.demand_fetch_us.is_some()).count(),
        7
    );
    let page = page_of(&rows);
    let rack = &page[page.find("## Link: rack").unwrap()..page.find("## Link: region").unwrap()];
    assert!(
        rack.contains(
            "| workload | strategy | fetches | to the server | at the server | back | total |"
        ),
        "{rack}"
    );
    assert!(
        rack.contains("| kv-store | thaw | 42 | 150 | 12.0 | 210 | 372 |"),
        "{rack}"
    );
    assert_eq!(rack.matches("| kv-store | ").count(), 8 + 7, "{rack}");
    let rest = &page[page.find("## Link: region").unwrap()..];
    assert!(!rest.contains("to the server"), "{rest}");
    // Without any timed row, no such table at all.
    assert!(!page_of(&rows_from(&synthetic_rows())).contains("to the server"));
}

/// Rows that split their stalls by foresight get a table after the targets: one line per
/// workload × link with a measured thaw row, the unforeseen share of the wait worked out.
#[test]
fn thaw_stalls_on_unforeseen_pages_are_tallied_after_the_targets() {
    let mut values = synthetic_rows();
    for v in values.iter_mut() {
        if v["workload"] == "kv-store" && v["link"] != "object-store" {
            v["stalls_by_foresight"] = json!({
                "foreseen": {"touches": 10, "waited_s": 0.010},
                "unforeseen": {"touches": 30, "waited_s": 0.030}
            });
        }
    }
    let rows = rows_from(&values);
    let page = page_of(&rows);
    let section = &page
        [page.find("### Which of thaw's stalls").unwrap()..page.find("## Link: rack").unwrap()];
    assert!(
        section.contains("| kv-store | rack | 0.0580 | 40 | 0.0400 | 30 | 0.0300 | 75.00% |"),
        "{section}"
    );
    assert_eq!(section.matches("| kv-store | ").count(), 2, "{section}");
    // Without any such row, no such section.
    assert!(!page_of(&rows_from(&synthetic_rows())).contains("unforeseen"));
}

#[test]
fn charts_are_well_formed_svg_and_linked_from_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evaluation.md");
    write_report(&rows_from(&synthetic_rows()), &out, &meta()).unwrap();
    let page = std::fs::read_to_string(&out).unwrap();
    let charts: Vec<_> = files(&dir.path().join("evaluation"));
    assert_eq!(charts.len(), 6, "two charts per link");
    for (name, bytes) in &charts {
        let text = std::str::from_utf8(bytes).unwrap();
        let (root, elements) = parse_xml(text);
        assert_eq!(root, "svg", "{name:?}");
        assert!(elements > 50, "{name:?} has only {elements} elements");
        let link = format!("](evaluation/{})", name.display());
        assert!(page.contains(&link), "page does not link {link}");
    }
    let bars = std::fs::read_to_string(
        dir.path()
            .join("evaluation/time-to-finish-object-store.svg"),
    )
    .unwrap();
    // 2 workloads × 8 strategies, each bar with its tooltip.
    assert_eq!(bars.matches("s to finish, ").count(), 16);
    let cdf =
        std::fs::read_to_string(dir.path().join("evaluation/fault-latency-rack.svg")).unwrap();
    assert_eq!(
        cdf.matches("<polyline").count(),
        7,
        "one line per faulting strategy"
    );
    assert!(cdf.contains("no faults: eager"));
}

#[test]
fn a_chosen_workload_drives_the_cdfs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evaluation.md");
    let mut meta = meta();
    meta.cdf_workload = Some("kv-store".into());
    write_report(&rows_from(&synthetic_rows()), &out, &meta).unwrap();
    let page = std::fs::read_to_string(&out).unwrap();
    assert!(
        page.contains("fault-latency CDFs show workload kv-store"),
        "{page}"
    );
    meta.cdf_workload = Some("nope".into());
    let err = write_report(&rows_from(&synthetic_rows()), &out, &meta).unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[test]
fn output_is_deterministic() {
    let rows = rows_from(&synthetic_rows());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for dir in &dirs {
        write_report(&rows, &dir.path().join("evaluation.md"), &meta()).unwrap();
    }
    let (a, b) = (files(dirs[0].path()), files(dirs[1].path()));
    assert_eq!(a.len(), 7);
    assert!(a == b, "two renderings of the same rows differ");
}

fn thaw_bench(args: &[&str]) -> std::process::Output {
    bins::thaw_bench().args(args).output().unwrap()
}

fn write_json(path: &Path, rows: &[Value]) {
    std::fs::write(path, serde_json::to_string_pretty(rows).unwrap()).unwrap();
}

#[test]
fn command_concatenates_files_and_records_how_to_regenerate() {
    let dir = tempfile::tempdir().unwrap();
    let rows = synthetic_rows();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    write_json(&a, &rows[..20]);
    write_json(&b, &rows[20..]);
    let out = dir.path().join("docs/evaluation.md");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let output = thaw_bench(&[
        "report",
        "--json",
        a.to_str().unwrap(),
        "--json",
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--command",
        "thaw-bench restore --json rows.json",
        "--date",
        "2030-01-02",
        "--machine",
        "a test machine",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("on 3 of 6 workload × link pairs"),
        "{stdout}"
    );
    let page = std::fs::read_to_string(&out).unwrap();
    assert!(
        page.contains("```sh\nthaw-bench restore --json rows.json\nthaw-bench report --json "),
        "{page}"
    );
    assert!(
        page.contains("--command 'thaw-bench restore --json rows.json'"),
        "{page}"
    );
    // Same rows, same page apart from the commands shown.
    let library =
        thaw_bench::report::render_report(&rows_from(&rows), &meta(), "evaluation").unwrap();
    let strip = |p: &str| p.split("## How it is measured").nth(1).unwrap().to_string();
    assert_eq!(strip(&page), strip(&library.page));
    assert_eq!(files(&dir.path().join("docs/evaluation")).len(), 6);
}

#[test]
fn bad_rows_are_errors_naming_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("evaluation.md");
    let path = dir.path().join("rows.json");
    let run = |rows: &[Value]| {
        write_json(&path, rows);
        let output = thaw_bench(&[
            "report",
            "--json",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!output.status.success());
        assert!(!out.exists(), "no page from bad rows");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let mut rows = synthetic_rows()[..3].to_vec();
    rows[1].as_object_mut().unwrap().remove("requests");
    let err = run(&rows);
    assert!(
        err.contains(&format!(
            "{}: row 2 of 3 (shell/rack/lazy-4k): missing field `requests`",
            path.display()
        )),
        "{err}"
    );

    let mut rows = synthetic_rows()[..3].to_vec();
    rows[2]["strategy"] = json!("lazy-2m");
    let err = run(&rows);
    assert!(
        err.contains("row 3 of 3 (shell/rack/lazy-2m): unknown variant `lazy-2m`"),
        "{err}"
    );

    let mut rows = synthetic_rows()[..3].to_vec();
    rows[0]["link"] = json!("lan");
    let err = run(&rows);
    assert!(
        err.contains("row 1 of 3 (shell/lan/eager): unknown variant `lan`"),
        "{err}"
    );

    let rows = synthetic_rows()[..3].to_vec();
    let other = dir.path().join("again.json");
    write_json(&path, &rows);
    write_json(&other, &rows[2..]);
    let output = thaw_bench(&[
        "report",
        "--json",
        path.to_str().unwrap(),
        "--json",
        other.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("rows.json row 3 and")
            && err.contains("again.json row 1 both measure shell/rack/fixed-blocks"),
        "{err}"
    );
}
