//! A mixed fleet, simulated: this host's `thaw cpu dump` and copies of it edited to lack a CPU
//! feature, to be another vendor, or to have a KVM that restores fewer MSRs. A checkpoint taken
//! under the baseline `thaw cpu baseline` computes from this host and the weaker one restores here
//! (checksum right) and passes `thaw cpu check` against the weaker host; one taken with every host
//! feature is refused for it by name, as are the other differences; and bad baselines are refused
//! before a VM exists.

mod bins;

use serde_json::Value;
use std::path::Path;
use vmm::boot::testguest::{self, Params, Pattern};

const MEMORY: u64 = 16 << 20;
const TOUCHES: u64 = 4_000_000;

fn guest_args() -> Vec<String> {
    vec![
        format!("--memory={MEMORY}"),
        "--pattern=random".into(),
        format!("--touches={TOUCHES}"),
        "--seed=5".into(),
    ]
}

fn expected() -> u64 {
    let params = Params {
        pattern: Pattern::Random,
        touches_per_cpu: TOUCHES,
        report_every: 0,
        seed: 5,
        hot_percent: 10,
    };
    testguest::model_checksum(&params, testguest::area_size_for(MEMORY), 1, 0)
}

fn thaw_ok(args: &[&str]) -> String {
    let out = bins::thaw().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "thaw {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn thaw_fails(args: &[&str]) -> String {
    let out = bins::thaw().args(args).output().unwrap();
    assert!(!out.status.success(), "thaw {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// The first of some named features this host has (a software KVM offers few), as
/// (index into the profile's registers, bit, name).
fn a_feature_this_host_has(profile: &Value) -> (usize, u32, &'static str) {
    let named: &[(u64, &str, u32, &str)] = &[
        (1, "Ecx", 13, "cx16"),
        (1, "Ecx", 20, "sse4.2"),
        (1, "Ecx", 23, "popcnt"),
        (1, "Ecx", 9, "ssse3"),
        (7, "Ebx", 5, "avx2"),
        (1, "Ecx", 0, "sse3"),
        (1, "Edx", 26, "sse2"),
    ];
    let regs = profile["features"]["regs"].as_array().unwrap();
    for &(leaf, reg, bit, name) in named {
        for (i, r) in regs.iter().enumerate() {
            let coords = &r[0];
            if coords["leaf"] == leaf && coords["subleaf"] == 0 && coords["reg"] == reg {
                let bits = r[1].as_u64().unwrap();
                if bits & (1 << bit) != 0 {
                    return (i, bit, name);
                }
            }
        }
    }
    panic!("this host has none of the features the test knows by name");
}

fn checkpoint(store: &str, extra: &[String]) -> String {
    let mut args = vec![
        "checkpoint".to_string(),
        format!("--store={store}"),
        "--at=100ms".into(),
    ];
    args.extend(guest_args());
    args.extend_from_slice(extra);
    let lines = bins::thaw_vm(&args);
    bins::event(&lines, "checkpoint")["checkpoint"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_fleet_baseline_restores_on_its_weakest_host_and_differences_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let here = path("here.json");
    thaw_ok(&["cpu", "dump", "--out", here.to_str().unwrap()]);
    let profile: Value = serde_json::from_slice(&std::fs::read(&here).unwrap()).unwrap();
    assert!(profile["vendor"].as_str().unwrap().len() == 12, "{profile}");
    assert!(!profile["msrs"].as_array().unwrap().is_empty());

    // The weaker host: this one without one feature.
    let (reg, bit, name) = a_feature_this_host_has(&profile);
    let mut weak = profile.clone();
    weak["host"] = "weak".into();
    let bits = weak["features"]["regs"][reg][1].as_u64().unwrap();
    weak["features"]["regs"][reg][1] = (bits & !(1u64 << bit)).into();
    write(&path("weak.json"), &weak);

    let baseline = path("baseline.json");
    thaw_ok(&[
        "cpu",
        "baseline",
        here.to_str().unwrap(),
        path("weak.json").to_str().unwrap(),
        "--out",
        baseline.to_str().unwrap(),
    ]);
    let mask: Value = serde_json::from_slice(&std::fs::read(&baseline).unwrap()).unwrap();
    assert_eq!(
        mask["features"]["regs"][reg][1],
        weak["features"]["regs"][reg][1]
    );
    assert_eq!(mask["hosts"], serde_json::json!([profile["host"], "weak"]));

    let store = path("store");
    let store = store.to_str().unwrap();
    let masked = checkpoint(store, &[format!("--cpu-baseline={}", baseline.display())]);
    let full = checkpoint(store, &[]);

    // Under the baseline: the weak host can run it, and it restores here with the right sum.
    let ok = thaw_ok(&[
        "cpu",
        "check",
        store,
        &masked,
        "--host",
        path("weak.json").to_str().unwrap(),
    ]);
    assert!(ok.contains("can run on weak"), "{ok}");
    thaw_ok(&["cpu", "check", store, &masked]);
    let lines = bins::thaw_vm(&[
        "restore".into(),
        format!("--store={store}"),
        format!("--id={masked}"),
    ]);
    assert_eq!(bins::event(&lines, "done")["checksums"][0], expected());

    // With every host feature: the weak host lacks one, named.
    let err = thaw_fails(&[
        "cpu",
        "check",
        store,
        &full,
        "--host",
        path("weak.json").to_str().unwrap(),
    ]);
    assert!(
        err.contains("host weak cannot run") && err.contains(name),
        "{err}"
    );

    // Another vendor, and a KVM that restores one MSR fewer: both named, in one message.
    let mut other = profile.clone();
    other["host"] = "other".into();
    other["vendor"] = if profile["vendor"] == "AuthenticAMD" {
        "GenuineIntel".into()
    } else {
        "AuthenticAMD".into()
    };
    let dropped = other["msrs"]
        .as_array_mut()
        .unwrap()
        .remove(0)
        .as_u64()
        .unwrap();
    write(&path("other.json"), &other);
    let err = thaw_fails(&[
        "cpu",
        "check",
        store,
        &full,
        "--host",
        path("other.json").to_str().unwrap(),
    ]);
    assert!(
        err.contains(&format!(
            "its CPU vendor is {}",
            other["vendor"].as_str().unwrap()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{dropped:#x}")),
        "{err} should name MSR {dropped:#x}"
    );

    // Hosts of two vendors make no baseline; a baseline of another vendor runs no VM.
    let err = thaw_fails(&[
        "cpu",
        "baseline",
        here.to_str().unwrap(),
        path("other.json").to_str().unwrap(),
    ]);
    assert!(err.contains("different CPU vendors"), "{err}");
    let foreign = path("foreign-baseline.json");
    thaw_ok(&[
        "cpu",
        "baseline",
        path("other.json").to_str().unwrap(),
        "--out",
        foreign.to_str().unwrap(),
    ]);
    let mut args = vec![
        "run".to_string(),
        format!("--cpu-baseline={}", foreign.display()),
    ];
    args.extend(guest_args());
    let mut cmd = bins::thaw();
    let out = cmd
        .arg("vm")
        .args(&args)
        .arg("--serial=none")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("this host's CPU is"),
        "{err}"
    );

    // A baseline that is neither a name nor a baseline file.
    std::fs::write(path("junk.json"), b"{\"vendor\": 3}").unwrap();
    let junk = format!("--cpu-baseline={}", path("junk.json").display());
    let err = thaw_fails(&["vm", "run", &junk]);
    assert!(err.contains("junk.json is not a CPU baseline"), "{err}");
    let err = thaw_fails(&["vm", "run", "--cpu-baseline=pentium"]);
    assert!(
        err.contains("unknown CPU baseline") && err.contains("no baseline file"),
        "{err}"
    );
}
