//! What a Linux guest's console log says about it, without I/O: how many CPUs the kernel brought
//! up, whether it mounted its root read-write, whether it started init, and whether it reseeded
//! its random number generator because its VM generation changed.

/// `init/do_mounts.c`: "VFS: Mounted root (%s filesystem)%s on device %u:%u."
const MOUNTED_ROOT: &str = "VFS: Mounted root (";
/// `init/main.c`, as the kernel starts /init.
pub const RAN_INIT: &str = "Run /init as init process";
/// `drivers/char/random.c` add_vmfork_randomness(), called by the vmgenid driver.
pub const VM_FORK_RESEED: &str = "crng reseeded due to virtual machine fork";

/// CPUs the kernel brought up ("smp: Brought up 1 node, 2 CPUs"), if it said.
pub fn cpus_brought_up(log: &str) -> Option<u32> {
    log.lines().find_map(|l| {
        let rest = &l[l.find("Brought up ")? + "Brought up ".len()..];
        let cpus = rest.split(", ").nth(1)?;
        cpus.split_whitespace().next()?.parse().ok()
    })
}

/// The root file system's type when the kernel mounted it read-write; None when it did not (or
/// mounted it read-only).
pub fn root_mounted_rw(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = &l[l.find(MOUNTED_ROOT)? + MOUNTED_ROOT.len()..];
        let (fs, after) = rest.split_once(" filesystem)")?;
        (!after.starts_with(" readonly")).then(|| fs.to_string())
    })
}

/// Whether the log holds `line`.
pub fn says(log: &str, line: &str) -> bool {
    log.contains(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[    0.100000] smp: Bringing up secondary CPUs ...\n\
        [    0.200000] smp: Brought up 1 node, 2 CPUs\n\
        [    1.000000] VFS: Mounted root (ext4 filesystem) on device 254:0.\n\
        [    1.100000] Run /init as init process\n";

    #[test]
    fn reads_what_the_kernel_said() {
        assert_eq!(cpus_brought_up(LOG), Some(2));
        assert_eq!(
            cpus_brought_up("[ 0.1] smp: Brought up 1 node, 1 CPU\n"),
            Some(1)
        );
        assert_eq!(root_mounted_rw(LOG).as_deref(), Some("ext4"));
        assert!(says(LOG, RAN_INIT));
        assert!(!says(LOG, VM_FORK_RESEED));
    }

    #[test]
    fn missing_or_read_only_is_no() {
        assert_eq!(cpus_brought_up("nothing here"), None);
        let ro = "VFS: Mounted root (ext4 filesystem) readonly on device 254:0.";
        assert_eq!(root_mounted_rw(ro), None);
        assert_eq!(root_mounted_rw(""), None);
    }
}
