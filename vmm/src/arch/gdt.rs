//! Segment descriptors. One [`Segment`] gives both its GDT entry (what the guest's table holds)
//! and the segment register KVM loads at boot (the descriptor's cached form), so the two cannot
//! disagree.

use crate::vstate::memory::{GuestMemory, MemoryError};
use kvm_bindings::{kvm_segment, kvm_sregs};

/// Loads `code` into CS and `data` into every data segment register (DS, ES, FS, GS, SS): the
/// flat 64-bit setup both guests start in.
pub(crate) fn load_flat_segments(sregs: &mut kvm_sregs, code: kvm_segment, data: kvm_segment) {
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
}

/// What a segment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentKind {
    /// 64-bit code (L=1), execute/read.
    Code64,
    /// Read/write data, 32-bit default operand size (B=1).
    Data,
    /// A 64-bit TSS (busy): a 16-byte system descriptor.
    Tss64,
}

/// One segment descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub kind: SegmentKind,
    /// Descriptor privilege level, 0 (kernel) to 3 (user).
    pub dpl: u8,
    pub base: u64,
    /// The 20-bit limit field: in 4 KiB units when `granular`, else in bytes.
    pub limit: u32,
    pub granular: bool,
}

impl Segment {
    /// A flat code or data segment over the whole 4 GiB (limit 0xfffff in 4 KiB units).
    pub(crate) const fn flat(kind: SegmentKind, dpl: u8) -> Segment {
        Segment {
            kind,
            dpl,
            base: 0,
            limit: 0xf_ffff,
            granular: true,
        }
    }

    /// A 64-bit TSS at `base` whose last byte is at `base + limit`.
    pub(crate) const fn tss64(base: u64, limit: u32) -> Segment {
        Segment {
            kind: SegmentKind::Tss64,
            dpl: 0,
            base,
            limit,
            granular: false,
        }
    }

    /// Descriptor type: execute/read accessed, read/write accessed, or busy 64-bit TSS.
    fn type_(&self) -> u8 {
        match self.kind {
            SegmentKind::Code64 | SegmentKind::Tss64 => 0xb,
            SegmentKind::Data => 0x3,
        }
    }

    /// S: a code or data segment (1) rather than a system descriptor (0).
    fn code_or_data(&self) -> u8 {
        u8::from(self.kind != SegmentKind::Tss64)
    }

    fn long(&self) -> u8 {
        u8::from(self.kind == SegmentKind::Code64)
    }

    fn big(&self) -> u8 {
        u8::from(self.kind == SegmentKind::Data)
    }

    /// The descriptor as GDT entries: one for code and data, two for a TSS.
    pub(crate) fn gdt_entries(&self) -> Vec<u64> {
        let limit = u64::from(self.limit);
        let access = 0x80
            | (u64::from(self.dpl & 3) << 5)
            | (u64::from(self.code_or_data()) << 4)
            | u64::from(self.type_());
        let flags = (u64::from(self.granular) << 3)
            | (u64::from(self.big()) << 2)
            | (u64::from(self.long()) << 1);
        let low = (limit & 0xffff)
            | ((self.base & 0xff_ffff) << 16)
            | (access << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (flags << 52)
            | (((self.base >> 24) & 0xff) << 56);
        match self.kind {
            SegmentKind::Tss64 => vec![low, self.base >> 32],
            _ => vec![low],
        }
    }

    /// The segment register KVM loads for this descriptor under `selector`.
    pub(crate) fn kvm_segment(&self, selector: u16) -> kvm_segment {
        let limit = if self.granular {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        };
        kvm_segment {
            base: self.base,
            limit,
            selector,
            type_: self.type_(),
            present: 1,
            dpl: self.dpl,
            db: self.big(),
            s: self.code_or_data(),
            l: self.long(),
            g: u8::from(self.granular),
            avl: 0,
            unusable: 0,
            padding: 0,
        }
    }
}

/// A global descriptor table being built: the null descriptor, then segments in order.
#[derive(Debug, Clone)]
pub(crate) struct Gdt {
    entries: Vec<u64>,
}

impl Default for Gdt {
    fn default() -> Self {
        Gdt { entries: vec![0] }
    }
}

impl Gdt {
    /// A table holding only the null descriptor.
    pub(crate) fn new() -> Gdt {
        Gdt::default()
    }

    /// Leaves one more slot null (for a layout that expects a segment at a fixed selector).
    pub(crate) fn skip(&mut self) {
        self.entries.push(0);
    }

    /// Appends `segment`; returns its selector, with the requested privilege level set to the
    /// segment's DPL.
    pub(crate) fn push(&mut self, segment: Segment) -> u16 {
        let selector = (self.entries.len() * 8) as u16 | u16::from(segment.dpl & 3);
        self.entries.extend(segment.gdt_entries());
        selector
    }

    /// The GDTR limit: the table's size in bytes less one.
    pub(crate) fn limit(&self) -> u16 {
        (self.entries.len() * 8 - 1) as u16
    }

    /// Writes the table into guest memory at `addr`.
    pub(crate) fn write(&self, mem: &GuestMemory, addr: u64) -> Result<(), MemoryError> {
        for (i, e) in self.entries.iter().enumerate() {
            mem.write_u64(addr + i as u64 * 8, *e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_give_the_usual_descriptors() {
        let code = |dpl| Segment::flat(SegmentKind::Code64, dpl);
        let data = |dpl| Segment::flat(SegmentKind::Data, dpl);
        assert_eq!(code(0).gdt_entries(), [0x00af_9b00_0000_ffff]);
        assert_eq!(data(0).gdt_entries(), [0x00cf_9300_0000_ffff]);
        assert_eq!(code(3).gdt_entries(), [0x00af_fb00_0000_ffff]);
        assert_eq!(data(3).gdt_entries(), [0x00cf_f300_0000_ffff]);
        let cs = code(3).kvm_segment(0x1b);
        assert_eq!(
            (cs.limit, cs.type_, cs.dpl, cs.l, cs.db, cs.s, cs.g),
            (0xffff_ffff, 0xb, 3, 1, 0, 1, 1)
        );
        let ds = data(0).kvm_segment(0x18);
        assert_eq!((ds.type_, ds.l, ds.db), (0x3, 0, 1));
    }

    #[test]
    fn a_tss_takes_two_entries_and_keeps_its_byte_limit() {
        let tss = Segment::tss64(0x1_2345_5000, 0x2068);
        let e = tss.gdt_entries();
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0],
            0x2068 | (0x45_5000 << 16) | (0x8b << 40) | (0x23 << 56)
        );
        assert_eq!(e[1], 1);
        let tr = tss.kvm_segment(0x28);
        assert_eq!(
            (tr.base, tr.limit, tr.type_, tr.s, tr.present, tr.g),
            (0x1_2345_5000, 0x2068, 0xb, 0, 1, 0)
        );
    }

    #[test]
    fn selectors_follow_the_table_and_carry_the_privilege_level() {
        let mut gdt = Gdt::new();
        gdt.skip();
        assert_eq!(gdt.push(Segment::flat(SegmentKind::Code64, 0)), 0x10);
        assert_eq!(gdt.push(Segment::flat(SegmentKind::Data, 3)), 0x1b);
        assert_eq!(gdt.push(Segment::tss64(0x5000, 0x67)), 0x20);
        assert_eq!(gdt.limit(), 6 * 8 - 1);
    }
}
