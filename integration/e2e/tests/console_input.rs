//! `thaw vm run` with its console on the terminal reads standard input for the guest: with a
//! standard input that never ends (a pipe the test keeps open, bytes written into it) the VM
//! still finishes and the process exits, so the console input thread stops with the VM. What
//! the guest receives is checked in the vmm's own tests (devices::serial_input), which read
//! the UART's receive register.

mod bins;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn a_run_reading_an_open_standard_input_ends_with_its_guest() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm: skipped");
        return;
    }
    let mut child = bins::Killed(
        bins::thaw()
            .args([
                "vm",
                "run",
                "--memory=64MiB",
                "--touches=20000",
                "--serial=stdout",
                "--timeout=120s",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    // More than the UART's FIFO holds: the guest never reads it, so the input thread is left
    // waiting for room when the VM stops.
    stdin.write_all(&[b'x'; 4096]).unwrap();
    bins::wait_until(
        "thaw vm run exits with its standard input still open",
        Duration::from_secs(180),
        || child.0.try_wait().unwrap().is_some(),
    );
    let out = child.output();
    assert!(
        out.status.success(),
        "thaw vm run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(report.contains("\"done\""), "no done event: {report}");
    drop(stdin);
}
