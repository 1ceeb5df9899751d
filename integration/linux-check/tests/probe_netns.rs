//! The probes against a real kernel: a fresh network namespace's own loopback answers echo and
//! timestamp requests (the host kernel's clock, so the offset is near zero), and an address
//! nobody answers for times out with the address named.

use std::net::Ipv4Addr;
use std::time::Duration;
use thaw_linux_check::netns::NetNs;
use thaw_linux_check::probe::{ProbeError, Prober};

#[test]
fn loopback_in_a_namespace_answers_echo_and_timestamp() {
    let ns = NetNs::create("probe").unwrap();
    let (rtt, clock) = ns
        .run(|| {
            let mut p = Prober::new(Ipv4Addr::LOCALHOST).unwrap();
            (
                p.echo(Duration::from_secs(5)).unwrap(),
                p.clock(Duration::from_secs(5)).unwrap(),
            )
        })
        .unwrap();
    assert!(rtt < Duration::from_secs(5));
    assert!(
        clock.offset_ms.abs() <= 50,
        "the same kernel's clock: offset {} ms",
        clock.offset_ms
    );
}

#[test]
fn a_tap_in_a_namespace_gets_its_address_and_silence_times_out() {
    let ns = NetNs::create("tap").unwrap();
    ns.add_tap("thawtap0", "172.31.0.1/30").unwrap();
    let err = ns
        .run(|| {
            // The peer address on the tap: nothing is attached, nobody answers.
            let mut p = Prober::new(Ipv4Addr::new(172, 31, 0, 2)).unwrap();
            p.wait_for_echo(Duration::from_millis(600), Duration::from_millis(200))
                .unwrap_err()
        })
        .unwrap();
    assert!(
        matches!(err, ProbeError::NoReply { what: "echo", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("172.31.0.2"), "{err}");
    // The tap's own address answers from inside the namespace.
    let rtt = ns
        .run(|| {
            Prober::new(Ipv4Addr::new(172, 31, 0, 1))
                .unwrap()
                .echo(Duration::from_secs(5))
        })
        .unwrap();
    assert!(rtt.is_ok(), "{rtt:?}");
    let name = ns.name().to_string();
    drop(ns);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace {name} deleted on drop"
    );
}
