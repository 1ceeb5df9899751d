//! Bad input gets a clear error and leaves no VM behind: no KVM device, a file that is not a
//! kernel, too little memory, a corrupt state blob, a checkpoint from a CPU with a feature this
//! host lacks.

mod bins;

use std::time::Duration;
use thaw_format::CheckpointId;
use thaw_store::{MemoryRegion, WriteOptions};
use vmm::arch::cpuid::{self, Reg};
use vmm::boot::testguest::boot_test_guest;
use vmm::boot::testguest::Params;
use vmm::boot::BootError;
use vmm::devices::serial::SerialOutput;
use vmm::persist::checkpoint::{open_store, runtime};
use vmm::persist::restore::RestoreError;
use vmm::persist::restore::{restore, RestoreMode};
use vmm::persist::state::VmState;
use vmm::vstate::kvm::KvmError;
use vmm::vstate::vm::VmConfig;
use vmm::vstate::vm::VmError;

fn vcpu_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.starts_with("vcpu"))
                .unwrap_or(false)
        })
        .count()
}

fn config() -> VmConfig {
    VmConfig {
        memory_bytes: 8 << 20,
        vcpus: 1,
        serial: SerialOutput::Sink,
        ..Default::default()
    }
}

fn thaw_vmm_fails(args: &[&str]) -> String {
    let out = bins::thaw().arg("vm").args(args).output().unwrap();
    assert!(!out.status.success(), "thaw vm {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_kvm_device() {
    let cfg = VmConfig {
        kvm_path: "/nonexistent/kvm".into(),
        ..config()
    };
    let err = boot_test_guest(&cfg, &Params::default()).err().unwrap();
    assert!(
        matches!(err, BootError::Vm(VmError::Kvm(KvmError::Open { .. }))),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/kvm"), "{err}");
    let stderr = thaw_vmm_fails(&["run", "--kvm=/nonexistent/kvm", "--memory=8MiB"]);
    assert!(
        stderr.contains("cannot open KVM device /nonexistent/kvm"),
        "{stderr}"
    );
}

#[test]
fn not_a_kernel_and_too_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("vmlinuz");
    std::fs::write(&fake, vec![0x5a; 100_000]).unwrap();
    let fake = fake.to_str().unwrap();
    let stderr = thaw_vmm_fails(&["run", "--kernel", fake, "--memory=128MiB"]);
    assert!(stderr.contains("not a bootable kernel"), "{stderr}");
    let stderr = thaw_vmm_fails(&["run", "--kernel", fake, "--memory=16MiB"]);
    assert!(stderr.contains("guest memory too small"), "{stderr}");
    let stderr = thaw_vmm_fails(&["run", "--memory=2MiB"]);
    assert!(stderr.contains("guest memory too small"), "{stderr}");
    let stderr = thaw_vmm_fails(&["run", "--memory=6MiB", "--vcpus=4"]);
    assert!(stderr.contains("guest memory too small"), "{stderr}");
}

/// The first tracked CPUID feature bit this host's KVM does not offer.
fn missing_bit(host: &[kvm_bindings::kvm_cpuid_entry2]) -> (cpuid::FeatureReg, u32) {
    let probe = cpuid::RequiredFeatures::of(host);
    for (reg, have) in &probe.regs {
        // Leaf 7 EDX and leaf 0xD EAX always have unused bits on real CPUs.
        if (reg.leaf == 7 && reg.reg == Reg::Edx) || (reg.leaf == 0xd && reg.reg == Reg::Eax) {
            for bit in (0..32).rev() {
                if have & (1 << bit) == 0 {
                    return (*reg, bit);
                }
            }
        }
    }
    panic!("host offers every feature bit");
}

#[test]
fn corrupt_state_and_incompatible_cpu() {
    let rt = runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().to_str().unwrap().to_string();
    let store = open_store(&spec).unwrap();

    let params = Params {
        touches_per_cpu: u64::MAX,
        ..Params::default()
    };
    let mut vm = boot_test_guest(&config(), &params).unwrap();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    vm.pause().unwrap();
    let state = vm.save_state().unwrap();
    let good = state.encode().unwrap();
    let mut corrupt = good.clone();
    let n = corrupt.len();
    corrupt[n / 2] ^= 0x40;
    let host = cpuid::supported(vm.kvm()).unwrap();
    let (reg, bit) = missing_bit(&host);
    let mut foreign: VmState = state.clone();
    for (r, bits) in foreign.required_features.regs.iter_mut() {
        if *r == reg {
            *bits |= 1 << bit;
        }
    }
    let foreign = foreign.encode().unwrap();
    let mem = vm.memory().clone();
    let regions: Vec<MemoryRegion<'_>> = (0..mem.regions().len())
        .map(|i| MemoryRegion {
            guest_phys_addr: mem.regions()[i].guest_phys_addr,
            bytes: mem.region_bytes(i),
        })
        .collect();
    for (id, blob) in [("good", good), ("corrupt", corrupt), ("foreign", foreign)] {
        let opts = WriteOptions {
            id: Some(CheckpointId::new(id).unwrap()),
            signing_key: Some(bins::signing_key()),
            ..Default::default()
        };
        rt.block_on(thaw_store::write_checkpoint(&store, &regions, blob, &opts))
            .unwrap();
    }
    vm.stop().unwrap();
    drop(regions);
    drop(vm);
    drop(mem);
    assert_eq!(vcpu_threads(), 0);

    let cfg = config();
    for mode in [RestoreMode::Eager, RestoreMode::Lazy] {
        let err = restore(&cfg, &rt, &store, &spec, "corrupt", &bins::trust(), &mode)
            .err()
            .unwrap();
        assert!(matches!(err, RestoreError::State(_)), "{err}");
        assert!(err.to_string().contains("hash mismatch"), "{err}");
        assert_eq!(vcpu_threads(), 0, "no vCPU may run after a failed restore");

        let err = restore(&cfg, &rt, &store, &spec, "foreign", &bins::trust(), &mode)
            .err()
            .unwrap();
        let name = cpuid::feature_name(reg, bit);
        assert!(matches!(err, RestoreError::Vm(VmError::Host(_))), "{err}");
        assert!(err.to_string().contains(&name), "{err} should name {name}");
        assert_eq!(vcpu_threads(), 0);

        let err = restore(&cfg, &rt, &store, &spec, "missing", &bins::trust(), &mode)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not found"), "{err}");
    }
    let no_kvm = VmConfig {
        kvm_path: "/nonexistent/kvm".into(),
        ..config()
    };
    let err = restore(
        &no_kvm,
        &rt,
        &store,
        &spec,
        "good",
        &bins::trust(),
        &RestoreMode::Lazy,
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, RestoreError::Vm(VmError::Kvm(KvmError::Open { .. }))),
        "{err}"
    );
    // The good one restores (and runs: the guest never finishes, so pause and stop it).
    let mut r = restore(
        &cfg,
        &rt,
        &store,
        &spec,
        "good",
        &bins::trust(),
        &RestoreMode::Lazy,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    r.vm.pause().unwrap();
    r.vm.stop().unwrap();
    let stderr = thaw_vmm_fails(&["restore", "--store", &spec, "--id", "foreign", "--eager"]);
    assert!(stderr.contains("its CPU lacks"), "{stderr}");
}
