//! VMGenID: a 16-byte generation ID that changes on every restore, so a Linux guest's `vmgenid`
//! driver reseeds its RNG ("crng reseeded due to virtual machine fork") and clones of one
//! checkpoint never share random streams, TLS nonces or UUIDs.
//!
//! The guest finds the ID through ACPI (`arch::acpi`: a DSDT device with `_CID`
//! "VM_GEN_COUNTER" whose `ADDR` method returns [`ADDR`]) and maps it as memory. The vmm announces
//! a change with an edge on [`GED_GSI`]: the Generic Event Device's `_EVT` then notifies the
//! VMGenID device (0x80), and the driver reads the new ID.
//!
//! Where the 16 bytes live: their own one-page KVM memory slot in the MMIO hole (e820-reserved),
//! outside guest RAM. A lazy restore serves RAM through userfaultfd, so writing the new ID into an
//! ordinary RAM page before the vCPUs run would first have to fetch that page; this page is filled
//! by the vmm at once, on boot and on every restore, and is not part of the checkpoint's memory
//! (the generation is saved in the VM state instead).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// Guest-physical address of the generation page (in the MMIO hole, clear of the virtio-mmio
/// devices at 0xd000_0000, the IOAPIC and the LAPIC).
pub(crate) const ADDR: u64 = 0xfeb0_0000;
/// Size of the page that holds it.
pub(crate) const PAGE_SIZE: u64 = 0x1000;
/// The Generic Event Device's interrupt, which announces a new generation.
pub(crate) const GED_GSI: u32 = 9;
/// The KVM memory slot of the page (guest RAM takes the slots from 0).
const KVM_SLOT: u32 = 32;

/// A generation: 16 random bytes.
pub type Generation = [u8; 16];

/// The VMGenID device could not be set up or signal the guest.
#[derive(Debug, thiserror::Error)]
pub enum VmGenIdError {
    #[error("VMGenID: cannot read 16 random bytes from the OS (getrandom): {0}")]
    Random(#[source] std::io::Error),
    #[error("VMGenID: cannot map its page: {0}")]
    Map(#[source] std::io::Error),
    #[error("VMGenID: cannot give its page to KVM (KVM_SET_USER_MEMORY_REGION): {0}")]
    Slot(#[source] vmm_sys_util::errno::Error),
    #[error("VMGenID: cannot wire the event device's interrupt (GSI {GED_GSI}): {0}")]
    Irq(#[source] std::io::Error),
}

/// 16 bytes from the OS's random source.
pub fn new_generation() -> Result<Generation, VmGenIdError> {
    let mut g = [0u8; 16];
    let mut filled = 0;
    while filled < g.len() {
        // SAFETY: getrandom writes at most the given length into the buffer we own, from the
        // offset reached so far.
        let n = unsafe { libc::getrandom(g[filled..].as_mut_ptr().cast(), g.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(VmGenIdError::Random(e));
        }
        filled += n as usize;
    }
    Ok(g)
}

/// A generation for a restore of a checkpoint whose generation was `old`: fresh, and never
/// equal to it.
pub(crate) fn next_generation(old: &Generation) -> Result<Generation, VmGenIdError> {
    loop {
        let g = new_generation()?;
        if &g != old {
            return Ok(g);
        }
    }
}

/// The device: its page (mapped into the VM) and the interrupt that announces a change.
pub(crate) struct VmGenId {
    page: *mut u8,
    generation: Generation,
    irq: EventFd,
}

// SAFETY: the page is plain memory owned by this struct; the vmm writes it only before the
// vCPUs run (new), and reads nothing back but the generation kept beside it.
unsafe impl Send for VmGenId {}
// SAFETY: as above; shared references read only `generation` and write the eventfd.
unsafe impl Sync for VmGenId {}

impl VmGenId {
    /// Maps the page holding `generation` into the VM at [`ADDR`] and wires [`GED_GSI`].
    pub(crate) fn new(vm: &VmFd, generation: Generation) -> Result<VmGenId, VmGenIdError> {
        // SAFETY: an anonymous private mapping of one page at an address of the kernel's choosing;
        // checked below, unmapped once in Drop.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(VmGenIdError::Map(std::io::Error::last_os_error()));
        }
        let page = page.cast::<u8>();
        // SAFETY: the mapping is PAGE_SIZE bytes, more than the 16 copied, and no vCPU runs yet.
        unsafe { std::ptr::copy_nonoverlapping(generation.as_ptr(), page, generation.len()) };
        let dev = VmGenId {
            page,
            generation,
            irq: EventFd::new(libc::EFD_NONBLOCK).map_err(VmGenIdError::Irq)?,
        };
        let region = kvm_userspace_memory_region {
            slot: KVM_SLOT,
            flags: 0,
            guest_phys_addr: ADDR,
            memory_size: PAGE_SIZE,
            userspace_addr: page as u64,
        };
        // SAFETY: the page is a live mapping owned by the device, which the VM keeps for as long
        // as its fd exists (and stops every vCPU before either is dropped).
        unsafe { vm.set_user_memory_region(region) }.map_err(VmGenIdError::Slot)?;
        vm.register_irqfd(&dev.irq, GED_GSI)
            .map_err(|e| VmGenIdError::Irq(e.into()))?;
        Ok(dev)
    }

    /// The generation the guest sees.
    pub(crate) fn generation(&self) -> Generation {
        self.generation
    }

    /// Raises an edge on [`GED_GSI`]: the guest's event device tells its VMGenID driver to read
    /// the generation again.
    pub(crate) fn notify(&self) -> Result<(), VmGenIdError> {
        self.irq.write(1).map_err(VmGenIdError::Irq)
    }

    /// The generation as the guest reads it from its page.
    #[cfg(test)]
    pub(crate) fn page_bytes(&self) -> Generation {
        let mut g = [0u8; 16];
        // SAFETY: the page is mapped for the device's life and holds at least 16 bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.page, g.as_mut_ptr(), g.len()) };
        g
    }
}

impl Drop for VmGenId {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page mapped in new(); the VM stopped its vCPUs before.
        unsafe { libc::munmap(self.page.cast(), PAGE_SIZE as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_random_and_a_restore_never_repeats_one() {
        let a = new_generation().unwrap();
        let b = new_generation().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
        assert_ne!(next_generation(&a).unwrap(), a);
    }

    fn lapic_u32(regs: &[std::os::raw::c_char; 1024], off: usize) -> u32 {
        u32::from_le_bytes(std::array::from_fn(|i| regs[off + i] as u8))
    }

    #[test]
    fn a_restored_vm_gets_a_new_generation_and_the_event_interrupt() {
        let (config, mut vm) = crate::boot::testguest::endless_test_guest();
        let booted = new_generation().unwrap();
        vm.attach_vmgenid(booted).unwrap();
        assert_eq!(vm.vmgenid().unwrap().page_bytes(), booted);
        vm.start().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        vm.pause().unwrap();
        let mut state = vm.save_state().unwrap();
        vm.stop().unwrap();
        assert_eq!(state.vmgenid, Some(booted));

        // Route GSI 9 as a guest kernel would (edge, fixed, vector 0x40, to APIC 0, unmasked) and
        // enable vCPU 0's LAPIC, so the edge leaves a trace: the vector pending in its IRR.
        const VECTOR: u64 = 0x40;
        // SAFETY: chip_id 2 (IOAPIC) makes `ioapic` the union's live member, and every bit
        // pattern of a redirection entry is a valid u64.
        unsafe { state.ioapic.chip.ioapic.redirtbl[GED_GSI as usize].bits = VECTOR };
        let svr = lapic_u32(&state.vcpus[0].lapic.regs, 0xf0) | 1 << 8;
        for (i, b) in svr.to_le_bytes().iter().enumerate() {
            state.vcpus[0].lapic.regs[0xf0 + i] = *b as std::os::raw::c_char;
        }

        let mem = crate::vstate::memory::GuestMemory::new(&state.memory).unwrap();
        let restored = crate::vstate::vm::Vm::restore(&config, &state, mem).unwrap();
        let dev = restored.vmgenid().expect("the restored VM has the device");
        assert_ne!(dev.page_bytes(), booted, "the generation must change");
        assert_eq!(dev.page_bytes(), dev.generation());
        let irr = || {
            let lapic = restored.pending_vcpus()[0].fd.get_lapic().unwrap();
            let reg = 0x200 + 0x10 * (VECTOR as usize / 32);
            lapic_u32(&lapic.regs, reg) & (1 << (VECTOR % 32)) != 0
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !irr() {
            assert!(
                std::time::Instant::now() < deadline,
                "the GED interrupt never reached vCPU 0"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        // A VM restored from a state without the device has none.
        let mem = crate::vstate::memory::GuestMemory::new(&state.memory).unwrap();
        let without = crate::persist::state::VmState {
            vmgenid: None,
            ..state
        };
        let plain = crate::vstate::vm::Vm::restore(&config, &without, mem).unwrap();
        assert!(plain.vmgenid().is_none());
    }
}
