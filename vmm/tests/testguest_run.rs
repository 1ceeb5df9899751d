//! The test guest runs on KVM at CPL3 and ends with the checksum the host-side model predicts.

use std::time::Duration;
use vmm::boot::testguest::{self, Params, Pattern};
use vmm::boot::testguest::{boot_test_guest, wait_done};
use vmm::devices::serial::SerialOutput;
use vmm::vstate::vm::VmConfig;

fn config(mem: u64, vcpus: u32, serial: SerialOutput) -> VmConfig {
    VmConfig {
        memory_bytes: mem,
        vcpus,
        serial,
        ..Default::default()
    }
}

#[test]
fn every_pattern_matches_the_model() {
    for (pattern, vcpus) in [
        (Pattern::Sequential, 1),
        (Pattern::Random, 2),
        (Pattern::HotSet, 1),
        (Pattern::PointerChase, 2),
    ] {
        let params = Params {
            pattern,
            touches_per_cpu: 200_000,
            report_every: 50_000,
            seed: 7,
            hot_percent: 10,
        };
        let serial = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let cfg = config(16 << 20, vcpus, SerialOutput::Capture(serial.clone()));
        let mut vm = boot_test_guest(&cfg, &params).unwrap();
        vm.start().unwrap();
        let out = wait_done(&mut vm, Duration::from_secs(60)).unwrap();
        vm.stop().unwrap();
        let area = testguest::area_size_for(16 << 20);
        for cpu in 0..vcpus {
            assert_eq!(
                out.checksums[cpu as usize],
                testguest::model_checksum(&params, area, vcpus, cpu),
                "{pattern:?} vCPU {cpu}"
            );
        }
        let text = String::from_utf8_lossy(&serial.lock().unwrap()).to_string();
        assert!(text.contains("thaw-testguest: start"), "{text}");
        assert!(text.contains("thaw-testguest: done"), "{text}");
    }
}
