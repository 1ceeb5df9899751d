//! A tap device in a network namespace made for the test: frames written to it reach the host
//! kernel (an ARP request is answered), and the ways opening one goes wrong are told apart.

use std::time::{Duration, Instant};
use thaw_linux_check::netns::NetNs;
use vmm::devices::tap::{Tap, TapError, VNET_HDR_LEN};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GUEST_IP: [u8; 4] = [172, 31, 1, 2];
const HOST_IP: [u8; 4] = [172, 31, 1, 1];

/// An ARP request from the guest for the host's address, behind an empty virtio-net header.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

/// Waits for an ARP reply to the guest; returns the sender's IP.
fn arp_reply(tap: &Tap, within: Duration) -> Option<[u8; 4]> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match tap.read_frame(&mut buf) {
            Ok(n) => {
                let f = &buf[VNET_HDR_LEN..n];
                // Ethernet to us, ARP, opcode 2 (reply).
                if f.len() >= 42
                    && f[..6] == GUEST_MAC
                    && f[12..14] == [8, 6]
                    && f[20..22] == [0, 2]
                {
                    return Some(f[28..32].try_into().unwrap());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("reading the tap: {e}"),
        }
    }
    None
}

#[test]
fn frames_reach_the_host_and_bad_taps_are_refused() {
    let ns = NetNs::create("vmmtap").unwrap();
    ns.add_tap("thawtap0", "172.31.1.1/24").unwrap();
    ns.ip(&["tuntap", "add", "dev", "thawtun0", "mode", "tun"])
        .unwrap();
    ns.run(|| {
        let tap = Tap::open("thawtap0").unwrap();
        assert_eq!(tap.name(), "thawtap0");
        // Asked again every 200 ms, as a guest would: until the kernel's link watch has seen
        // the carrier come up (it may wait up to a second), the tap drops what it sends.
        let req = arp_request();
        let mut answer = None;
        for _ in 0..25 {
            assert_eq!(tap.write_frame(&req).unwrap(), req.len());
            answer = arp_reply(&tap, Duration::from_millis(200));
            if answer.is_some() {
                break;
            }
        }
        assert_eq!(
            answer,
            Some(HOST_IP),
            "the host kernel answers the guest's ARP request"
        );

        let busy = Tap::open("thawtap0").unwrap_err();
        assert!(matches!(busy, TapError::Busy(_)), "{busy}");
        let tun = Tap::open("thawtun0").unwrap_err();
        assert!(matches!(tun, TapError::NotATap(_)), "{tun}");
        let lo = Tap::open("lo").unwrap_err();
        assert!(matches!(lo, TapError::NotATap(_)), "{lo}");
        drop(tap);
        Tap::open("thawtap0").expect("free again once closed");
    })
    .unwrap();
    // The namespace's taps are not visible outside it.
    let outside = Tap::open("thawtap0").unwrap_err();
    assert!(matches!(outside, TapError::NoSuchDevice(_)), "{outside}");
}
