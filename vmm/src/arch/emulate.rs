//! The few guest-kernel instructions a software KVM's emulator may lack, carried out on the saved
//! registers (see `vstate::vcpu`). Pure: instruction bytes and registers in, new registers out.

use kvm_bindings::kvm_regs;

/// What the caller still has to do after [`emulate`] changed the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing: write the registers back.
    Done,
    /// Write the registers back and inject #BP (vector 3): INT3 is a trap, RIP is past it.
    InjectBreakpoint,
    /// Load MXCSR from the 4 bytes at this guest-virtual address, then write the registers back.
    LoadMxcsr(u64),
    /// Store MXCSR to the 4 bytes at this guest-virtual address, then write the registers back.
    StoreMxcsr(u64),
}

const AC: u64 = 1 << 18;
const ZF: u64 = 1 << 6;
/// CF, PF, AF, SF, OF.
const ARITH_FLAGS: u64 = 0x8d5;

/// General register `n` in x86 encoding order.
fn gpr(regs: &mut kvm_regs, n: u8) -> &mut u64 {
    match n {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => &mut regs.rsp,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    }
}

/// Decodes a ModRM memory operand (64-bit addressing, no RIP-relative form) starting at
/// `bytes[0]` = ModRM; returns the effective address and the bytes ModRM, SIB and displacement
/// took.
fn memory_operand(bytes: &[u8], rex: u8, regs: &mut kvm_regs) -> Option<(u64, u64)> {
    let modrm = *bytes.first()?;
    let md = modrm >> 6;
    let rm = modrm & 7;
    if md == 3 || (md == 0 && rm == 5) {
        return None;
    }
    let mut used = 1usize;
    let mut addr: u64;
    if rm == 4 {
        let sib = *bytes.get(1)?;
        used += 1;
        let base = ((rex & 1) << 3) | (sib & 7);
        let index = (((rex >> 1) & 1) << 3) | ((sib >> 3) & 7);
        if md == 0 && sib & 7 == 5 {
            return None;
        }
        addr = *gpr(regs, base);
        if index != 4 {
            addr = addr.wrapping_add(gpr(regs, index).wrapping_shl((sib >> 6) as u32));
        }
    } else {
        addr = *gpr(regs, ((rex & 1) << 3) | rm);
    }
    match md {
        1 => {
            let d = *bytes.get(used)? as i8 as i64 as u64;
            used += 1;
            addr = addr.wrapping_add(d);
        }
        2 => {
            let d = i32::from_le_bytes(bytes.get(used..used + 4)?.try_into().ok()?) as i64 as u64;
            used += 4;
            addr = addr.wrapping_add(d);
        }
        _ => {}
    }
    Some((addr, used as u64))
}

/// Carries out the instruction at the start of `insn` on `regs`: INT3, CLAC, STAC, FWAIT, or
/// register-to-register POPCNT, LDMXCSR/STMXCSR (the memory access is left to the caller). None: not one of these (the registers are unchanged).
pub(crate) fn emulate(insn: &[u8], regs: &mut kvm_regs) -> Option<Outcome> {
    match insn {
        [0xcc, ..] => {
            regs.rip += 1;
            Some(Outcome::InjectBreakpoint)
        }
        [0x0f, 0x01, op @ (0xca | 0xcb), ..] => {
            if *op == 0xca {
                regs.rflags &= !AC;
            } else {
                regs.rflags |= AC;
            }
            regs.rip += 3;
            Some(Outcome::Done)
        }
        // FWAIT with no x87 exception pending does nothing.
        [0x9b, ..] => {
            regs.rip += 1;
            Some(Outcome::Done)
        }
        // LDMXCSR / STMXCSR m32: [REX] 0F AE /2 or /3 with a memory operand.
        [0x0f, 0xae, rest @ ..] | [0x40..=0x4f, 0x0f, 0xae, rest @ ..] => {
            let rex = if insn[0] != 0x0f { insn[0] } else { 0 };
            let op = (rest.first()? >> 3) & 7;
            if op != 2 && op != 3 {
                return None;
            }
            let mut probe = *regs;
            let (addr, used) = memory_operand(rest, rex, &mut probe)?;
            regs.rip += used + if rex != 0 { 3 } else { 2 };
            Some(if op == 2 {
                Outcome::LoadMxcsr(addr)
            } else {
                Outcome::StoreMxcsr(addr)
            })
        }
        // POPCNT r, r: F3 [REX] 0F B8 /r with mod = 11.
        [0xf3, rest @ ..] => {
            let (rex, modrm, len) = match rest {
                [r @ 0x40..=0x4f, 0x0f, 0xb8, m, ..] => (*r, *m, 5),
                [0x0f, 0xb8, m, ..] => (0, *m, 4),
                _ => return None,
            };
            if modrm >> 6 != 3 {
                return None;
            }
            let dst = (((rex >> 2) & 1) << 3) | ((modrm >> 3) & 7);
            let src = ((rex & 1) << 3) | (modrm & 7);
            let value = *gpr(regs, src);
            let value = if rex & 8 != 0 {
                value
            } else {
                value & 0xffff_ffff
            };
            *gpr(regs, dst) = value.count_ones() as u64;
            regs.rflags &= !(ARITH_FLAGS | ZF);
            if value == 0 {
                regs.rflags |= ZF;
            }
            regs.rip += len;
            Some(Outcome::Done)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> kvm_regs {
        kvm_regs {
            rip: 0x1000,
            rflags: 0x2,
            ..Default::default()
        }
    }

    #[test]
    fn int3_clac_stac_fwait() {
        let mut r = regs();
        assert_eq!(
            emulate(&[0xcc, 0x90], &mut r),
            Some(Outcome::InjectBreakpoint)
        );
        assert_eq!(r.rip, 0x1001);
        let mut r = regs();
        assert_eq!(emulate(&[0x0f, 0x01, 0xcb], &mut r), Some(Outcome::Done));
        assert_eq!((r.rip, r.rflags & AC), (0x1003, AC));
        assert_eq!(emulate(&[0x0f, 0x01, 0xca], &mut r), Some(Outcome::Done));
        assert_eq!((r.rip, r.rflags & AC), (0x1006, 0));
        assert_eq!(emulate(&[0x9b, 0x65], &mut r), Some(Outcome::Done));
        assert_eq!(r.rip, 0x1007);
    }

    #[test]
    fn popcnt_registers_and_flags() {
        // popcnt %rdi, %rax (as seen from the Debian kernel): f3 48 0f b8 c7
        let mut r = regs();
        r.rdi = 0xff00_0000_0000_0f0f;
        r.rflags |= 1; // CF set before: cleared after
        assert_eq!(
            emulate(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7], &mut r),
            Some(Outcome::Done)
        );
        assert_eq!((r.rax, r.rip, r.rflags), (16, 0x1005, 0x2));
        // popcnt %r9d, %r10d: f3 45 0f b8 d1, 32-bit: the upper half is ignored
        let mut r = regs();
        r.r9 = 0xffff_ffff_0000_0000;
        assert_eq!(
            emulate(&[0xf3, 0x45, 0x0f, 0xb8, 0xd1], &mut r),
            Some(Outcome::Done)
        );
        assert_eq!((r.r10, r.rflags & ZF), (0, ZF));
        // popcnt %ecx, %edx without REX: f3 0f b8 d1
        let mut r = regs();
        r.rcx = 7;
        assert_eq!(
            emulate(&[0xf3, 0x0f, 0xb8, 0xd1], &mut r),
            Some(Outcome::Done)
        );
        assert_eq!((r.rdx, r.rip), (3, 0x1004));
    }

    #[test]
    fn mxcsr_memory_operands() {
        // ldmxcsr 0x4(%rsp): 0f ae 54 24 04 (seen in the Debian kernel)
        let mut r = regs();
        r.rsp = 0x8000;
        assert_eq!(
            emulate(&[0x0f, 0xae, 0x54, 0x24, 0x04, 0x83], &mut r),
            Some(Outcome::LoadMxcsr(0x8004))
        );
        assert_eq!(r.rip, 0x1005);
        // stmxcsr -0x10(%rbp): 0f ae 5d f0
        let mut r = regs();
        r.rbp = 0x9000;
        assert_eq!(
            emulate(&[0x0f, 0xae, 0x5d, 0xf0], &mut r),
            Some(Outcome::StoreMxcsr(0x8ff0))
        );
        assert_eq!(r.rip, 0x1004);
        // ldmxcsr (%r8,%rcx,4): 41 0f ae 14 88
        let mut r = regs();
        r.r8 = 0x100;
        r.rcx = 2;
        assert_eq!(
            emulate(&[0x41, 0x0f, 0xae, 0x14, 0x88], &mut r),
            Some(Outcome::LoadMxcsr(0x108))
        );
        assert_eq!(r.rip, 0x1005);
        // fxsave (/0) and a RIP-relative ldmxcsr are not handled.
        assert_eq!(emulate(&[0x0f, 0xae, 0x07], &mut regs()), None);
        assert_eq!(emulate(&[0x0f, 0xae, 0x15, 0, 0, 0, 0], &mut regs()), None);
    }

    #[test]
    fn anything_else_is_left_alone() {
        let mut r = regs();
        // popcnt with a memory operand, rep movsb, xrstor
        for insn in [
            &[0xf3, 0x0f, 0xb8, 0x07][..],
            &[0xf3, 0xa4],
            &[0x48, 0x0f, 0xae, 0x2f],
        ] {
            assert_eq!(emulate(insn, &mut r), None);
        }
        assert_eq!(r, regs());
    }
}
