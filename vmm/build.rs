//! Builds the freestanding test guest (guest/*.c, guest/entry.S) with the host's C compiler into a
//! flat binary loaded at guest-physical 1 MiB. No downloaded toolchain: only `cc` and `objcopy`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let elf = out.join("testguest.elf");
    let bin = out.join("testguest.bin");
    for f in [
        "guest/guest.c",
        "guest/devices.c",
        "guest/entry.S",
        "guest/layout.h",
        "guest/devices.h",
        "guest/types.h",
        "guest/guest.ld",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=CC");
    run(Command::new(&cc)
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-fno-pic",
            "-no-pie",
            "-mno-red-zone",
            "-O2",
            "-fno-stack-protector",
            "-fcf-protection=none",
            "-fno-asynchronous-unwind-tables",
            "-Wall",
            "-Werror",
            "-Wl,-T,guest/guest.ld",
            "-Wl,--build-id=none",
            "-o",
        ])
        .arg(&elf)
        .args(["guest/entry.S", "guest/guest.c", "guest/devices.c"]));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin));
}
