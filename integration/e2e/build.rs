//! The opt-in Linux boot test (tests/vm_linux_boot.rs) runs only when
//! THAW_LINUX_TEST=1: on a KVM that emulates guest kernel code it takes hours.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(thaw_linux_test)");
    println!("cargo:rerun-if-env-changed=THAW_LINUX_TEST");
    if std::env::var("THAW_LINUX_TEST").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=thaw_linux_test");
    }
}
