//! Checkpoint a running test guest at arbitrary moments, resume it, and restore the checkpoint
//! (eager and lazy) in the same process: every path ends with the model's checksum.

use std::time::Duration;
use vmm::checkpoint::{checkpoint, open_store, runtime};
use vmm::restore::{restore, Mode};
use vmm::runner::{boot_test_guest, wait_done};
use vmm::serial::SerialOutput;
use vmm::testguest::{self, Params, Pattern};
use vmm::vm::VmConfig;

const MEM: u64 = 32 << 20;

fn expected(params: &Params, vcpus: u32) -> Vec<u64> {
    let area = testguest::area_size_for(MEM);
    (0..vcpus)
        .map(|c| testguest::model_checksum(params, area, vcpus, c))
        .collect()
}

#[test]
fn checkpoint_resume_and_restore_in_process() {
    let rt = runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().to_str().unwrap().to_string();
    let store = open_store(&spec).unwrap();
    let params = Params {
        pattern: Pattern::Random,
        touches_per_cpu: 30_000_000,
        report_every: 0,
        seed: 3,
        hot_percent: 10,
    };
    let vcpus = 2;
    let cfg = VmConfig {
        memory_bytes: MEM,
        vcpus,
        serial: SerialOutput::Sink,
        ..Default::default()
    };
    let want = expected(&params, vcpus);
    let mut vm = boot_test_guest(&cfg, &params).unwrap();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let ck = checkpoint(&vm, &rt, &store, &Default::default()).unwrap();
    vm.resume();
    let out = wait_done(&mut vm, Duration::from_secs(120)).unwrap();
    assert_eq!(out.checksums, want, "original VM after checkpoint + resume");
    vm.stop().unwrap();
    drop(vm);

    for mode in [Mode::Eager, Mode::Lazy] {
        let mut r = restore(&cfg, &rt, &store, &spec, &ck.id, &mode).unwrap();
        let out = wait_done(&mut r.vm, Duration::from_secs(120)).unwrap();
        assert_eq!(out.checksums, want, "restored {mode:?}");
        r.vm.stop().unwrap();
        if let Some(ps) = r.page_server.take() {
            let stats = ps.finish().unwrap();
            assert!(stats.faults > 0, "lazy restore served no fault: {stats:?}");
        }
    }
}
