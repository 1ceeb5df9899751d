//! The test guest in interrupt mode on KVM: every vCPU's LAPIC timer delivers ticks to the CPL0
//! handler, the checksums are the model's as with interrupts off, and a paused VM's saved LAPICs
//! show each timer armed and counting.

use std::time::{Duration, Instant};
use vmm::boot::testguest::{self, Interrupts, Params, Pattern, TimerState};
use vmm::devices::serial::SerialOutput;
use vmm::vstate::vm::VmConfig;

const HZ: u32 = 500;

#[test]
fn every_vcpu_ticks_and_the_checksums_are_the_models() {
    for vcpus in [1, 2] {
        let params = Params {
            pattern: Pattern::Random,
            touches_per_cpu: 10_000_000,
            report_every: 0,
            seed: 9,
            hot_percent: 10,
        };
        let config = VmConfig {
            memory_bytes: 16 << 20,
            vcpus,
            serial: SerialOutput::Sink,
            ..Default::default()
        };
        let interrupts = Some(Interrupts { timer_hz: HZ });
        let mut vm = testguest::boot_test_guest_with(&config, &params, interrupts).unwrap();
        let t0 = Instant::now();
        vm.start().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        vm.pause().unwrap();
        let state = vm.save_state().unwrap();
        for (cpu, v) in state.vcpus.iter().enumerate() {
            let t = TimerState::of(v);
            assert!(t.armed, "vCPU {cpu}: {t:?}");
            assert_eq!(t.initial_count, 1_000_000_000 / HZ);
            assert!(
                t.current_count > 0 && t.current_count <= t.initial_count,
                "{t:?}"
            );
        }
        vm.resume();
        let done = testguest::wait_done(&mut vm, Duration::from_secs(120)).unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        vm.stop().unwrap();
        let area = testguest::area_size_for(16 << 20);
        for cpu in 0..vcpus {
            let i = cpu as usize;
            assert_eq!(
                done.checksums[i],
                testguest::model_checksum(&params, area, vcpus, cpu),
                "{vcpus} vCPUs: vCPU {cpu}"
            );
            let most = (elapsed * f64::from(HZ) * 1.1) as u64 + 2;
            assert!(
                done.ticks[i] > 0 && done.ticks[i] <= most,
                "{vcpus} vCPUs: vCPU {cpu} counted {} ticks in {elapsed:.2} s at {HZ} Hz",
                done.ticks[i]
            );
        }
    }
}
