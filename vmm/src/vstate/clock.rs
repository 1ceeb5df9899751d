//! The guest's clocks across a checkpoint and restore: kvmclock advanced by the wall time that
//! passed, and the TSC frequency kept or refused.
//!
//! kvmclock: a checkpoint records the host's wall clock (CLOCK_REALTIME) at the moment it read the
//! guest's kvmclock: KVM's own reading when it offers one (`KVM_CLOCK_REALTIME` in
//! KVM_GET_CLOCK's flags, Linux 5.16+), else `clock_gettime` right after the ioctl. A restore sets
//! the kvmclock to the saved value plus the wall time elapsed since, so the guest's wall clock is
//! right on another host and after any time in storage: through KVM (`KVM_SET_CLOCK` with
//! `KVM_CLOCK_REALTIME`, which adds the elapsed time itself, atomically with its own clock read)
//! where the restore host supports it, else by adding it here.
//!
//! A restore host whose wall clock is behind the checkpoint's (skew between hosts, or a clock
//! stepped back) must never move guest time backwards: the elapsed time counts as zero and the
//! guest goes on from the saved value, as KVM does itself in that case. Blobs written before the
//! wall clock was recorded restore as before: no advance.

use kvm_bindings::{kvm_clock_data, KVM_CLOCK_REALTIME};

/// The host's CLOCK_REALTIME in nanoseconds since the epoch.
pub(crate) fn host_realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own; CLOCK_REALTIME always
    // exists, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The host wall clock that goes with a KVM_GET_CLOCK reading: KVM's own when it filled it in,
/// else `fallback_ns` (read next to the ioctl).
pub(crate) fn realtime_of(clock: &kvm_clock_data, fallback_ns: u64) -> u64 {
    if clock.flags & KVM_CLOCK_REALTIME != 0 {
        clock.realtime
    } else {
        fallback_ns
    }
}

/// What a restore writes with KVM_SET_CLOCK, and by how much it moves the guest's clock on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockRestore {
    pub data: kvm_clock_data,
    /// The wall time added, as this host sees it now (KVM may add a few µs more when it does
    /// the addition itself).
    pub advance_ns: u64,
    /// The restore host's wall clock is behind the checkpoint's by this much (0 if not).
    pub behind_ns: u64,
}

/// The KVM_SET_CLOCK argument for restoring `saved`, read when the host's wall clock said
/// `saved_realtime_ns` (None: a blob from before it was recorded), now that it says `now_ns`.
/// `kvm_adds_realtime`: the restore host's KVM takes `KVM_CLOCK_REALTIME` in KVM_SET_CLOCK.
pub(crate) fn plan_restore(
    saved: &kvm_clock_data,
    saved_realtime_ns: Option<u64>,
    now_ns: u64,
    kvm_adds_realtime: bool,
) -> ClockRestore {
    let base = kvm_clock_data {
        clock: saved.clock,
        ..Default::default()
    };
    let Some(then) = saved_realtime_ns else {
        return ClockRestore {
            data: base,
            advance_ns: 0,
            behind_ns: 0,
        };
    };
    let advance_ns = now_ns.saturating_sub(then);
    let behind_ns = then.saturating_sub(now_ns);
    let data = if kvm_adds_realtime {
        // KVM adds its own "now - realtime" when positive, never stepping the clock back.
        kvm_clock_data {
            flags: KVM_CLOCK_REALTIME,
            realtime: then,
            ..base
        }
    } else {
        kvm_clock_data {
            clock: saved.clock.saturating_add(advance_ns),
            ..base
        }
    };
    ClockRestore {
        data,
        advance_ns,
        behind_ns,
    }
}

/// KVM_SET_TSC_KHZ is skipped when the saved frequency is this close to the host's (KVM itself
/// ignores smaller differences: its default `tsc_tolerance_ppm`).
const TSC_TOLERANCE_PPM: u64 = 250;

/// Whether a vCPU saved at `saved_khz` needs its TSC frequency set on a host running vCPUs at
/// `host_khz`.
pub(crate) fn tsc_needs_scaling(saved_khz: u32, host_khz: u32) -> bool {
    let diff = u64::from(saved_khz.abs_diff(host_khz));
    diff * 1_000_000 > u64::from(host_khz) * TSC_TOLERANCE_PPM
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn saved(clock: u64) -> kvm_clock_data {
        kvm_clock_data {
            clock,
            flags: KVM_CLOCK_REALTIME | 2, // as KVM_GET_CLOCK returns them, TSC_STABLE included
            realtime: 1_700_000_000 * S,
            ..Default::default()
        }
    }

    #[test]
    fn the_clock_advances_by_the_wall_time_since_the_checkpoint() {
        let then = 1_700_000_000 * S;
        let r = plan_restore(&saved(5 * S), Some(then), then + 90 * S, false);
        assert_eq!(r.data.clock, 95 * S);
        assert_eq!(r.data.flags, 0);
        assert_eq!((r.advance_ns, r.behind_ns), (90 * S, 0));
        // With KVM_CLOCK_REALTIME, KVM adds it: the saved clock and wall time go in unchanged.
        let k = plan_restore(&saved(5 * S), Some(then), then + 90 * S, true);
        assert_eq!(k.data.clock, 5 * S);
        assert_eq!(k.data.flags, KVM_CLOCK_REALTIME);
        assert_eq!(k.data.realtime, then);
        assert_eq!(k.advance_ns, 90 * S);
    }

    #[test]
    fn a_host_clock_behind_the_checkpoint_never_moves_guest_time_back() {
        let then = 1_700_000_000 * S;
        let r = plan_restore(&saved(5 * S), Some(then), then - 30 * S, false);
        assert_eq!(r.data.clock, 5 * S);
        assert_eq!((r.advance_ns, r.behind_ns), (0, 30 * S));
    }

    #[test]
    fn old_blobs_restore_the_clock_as_saved() {
        let r = plan_restore(&saved(5 * S), None, 1_800_000_000 * S, true);
        assert_eq!(r.data.clock, 5 * S);
        assert_eq!(r.data.flags, 0, "no flag asks KVM to add anything");
        assert_eq!(r.advance_ns, 0);
    }

    #[test]
    fn the_wall_clock_of_a_reading_is_kvms_when_it_gave_one() {
        assert_eq!(realtime_of(&saved(1), 7), 1_700_000_000 * S);
        let plain = kvm_clock_data {
            clock: 1,
            ..Default::default()
        };
        assert_eq!(realtime_of(&plain, 7), 7);
        assert!(host_realtime_ns() > 1_600_000_000 * S);
    }

    #[test]
    fn tsc_frequencies_within_250_ppm_need_no_scaling() {
        assert!(!tsc_needs_scaling(2_600_000, 2_600_000));
        assert!(!tsc_needs_scaling(2_600_650, 2_600_000));
        assert!(tsc_needs_scaling(2_600_651, 2_600_000));
        assert!(tsc_needs_scaling(2_000_000, 2_600_000));
    }

    /// A test guest running on real KVM, paused, and its saved state.
    fn saved_test_guest() -> (crate::vstate::vm::VmConfig, crate::persist::state::VmState) {
        let (config, mut vm) = crate::boot::testguest::endless_test_guest();
        vm.start().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        vm.pause().unwrap();
        let state = vm.save_state().unwrap();
        vm.stop().unwrap();
        (config, state)
    }

    fn restore(
        config: &crate::vstate::vm::VmConfig,
        state: &crate::persist::state::VmState,
    ) -> Result<crate::vstate::vm::Vm, crate::vstate::vm::VmError> {
        let mem = crate::vstate::memory::GuestMemory::new(&state.memory).unwrap();
        crate::vstate::vm::Vm::restore(config, state, mem)
    }

    #[test]
    fn a_restore_after_two_seconds_puts_the_kvmclock_two_seconds_on() {
        let (config, state) = saved_test_guest();
        assert!(state.clock_host_realtime_ns.is_some());
        let saved = state.clock.clock;

        let at_once = restore(&config, &state).unwrap().kvm_clock_ns().unwrap();
        let ahead = at_once.saturating_sub(saved);
        assert!(at_once >= saved, "the clock went back");
        assert!(
            ahead < S,
            "an immediate restore moved the clock {ahead} ns on"
        );

        std::thread::sleep(std::time::Duration::from_secs(2));
        let vm = restore(&config, &state).unwrap();
        let later = vm.kvm_clock_ns().unwrap();
        let ahead = later.saturating_sub(saved);
        let flags = vm.kvm().check_extension_int(kvm_ioctls::Cap::AdjustClock) as u32;
        eprintln!(
            "restored 2 s later: kvmclock {ahead} ns ahead (KVM adds the wall time itself: {})",
            flags & KVM_CLOCK_REALTIME != 0
        );
        assert!(
            (2 * S - S / 10..10 * S).contains(&ahead),
            "restored 2 s after the checkpoint, the clock is {ahead} ns ahead"
        );

        // A blob from before the wall clock was recorded restores the clock as saved.
        let old = crate::persist::state::VmState {
            clock_host_realtime_ns: None,
            ..state.clone()
        };
        let ahead = restore(&config, &old)
            .unwrap()
            .kvm_clock_ns()
            .unwrap()
            .saturating_sub(saved);
        assert!(ahead < S, "an old blob's clock moved {ahead} ns on");

        // A checkpoint from a host whose clock is an hour ahead of this one: time does not go back.
        let future = crate::persist::state::VmState {
            clock_host_realtime_ns: Some(host_realtime_ns() + 3600 * S),
            ..state
        };
        let now = restore(&config, &future).unwrap().kvm_clock_ns().unwrap();
        assert!(now >= saved && now - saved < S, "{now} vs {saved}");
    }

    #[test]
    fn a_tsc_frequency_this_host_cannot_run_is_refused_naming_both() {
        let (config, mut state) = saved_test_guest();
        // The same host's frequency restores (and a blob without one keeps the host's).
        restore(&config, &state).unwrap();
        let host_khz = state.vcpus[0].tsc_khz.expect("KVM_GET_TSC_KHZ works here");
        // Slower than this host: a KVM without TSC scaling cannot (a faster rate it emulates by
        // catching the TSC up).
        let other = host_khz - host_khz / 10;
        state.vcpus[0].tsc_khz = Some(other);
        match restore(&config, &state) {
            Err(e) => {
                let msg = e.to_string();
                eprintln!("refused: {msg}");
                assert!(
                    msg.contains(&format!("{other} kHz"))
                        && msg.contains(&format!("{host_khz} kHz")),
                    "{msg}"
                );
            }
            // A KVM with TSC scaling (hardware) runs the vCPU at the saved rate instead.
            Ok(vm) => {
                assert_eq!(vm.pending_vcpus()[0].fd.get_tsc_khz().unwrap(), other);
            }
        }
    }
}
