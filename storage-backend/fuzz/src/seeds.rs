//! Valid inputs for each target, made by the real encoders, so mutations
//! start from bytes that reach deep into each parser. Where a target also
//! seals its input in a frame, the frame's body is a seed too.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events,
};
use thaw_block_protocol::wire::{
    encode_request, encode_response_header, Priority, Request, ResponseHeader, Status,
};
use thaw_format::block_codec::encode_block;
use thaw_format::dirty_log::{DirtyLog, DirtyWindow};
use thaw_format::envelope::{HEADER_LEN, TRAILER_LEN};
use thaw_format::handoff::{Handoff, RegionMapping};
use thaw_format::manifest::MAX_TOTAL_PAGES;
use thaw_format::{CheckpointId, Manifest, PageRun, Region, StateBlob};
use vmm::arch::cpuid::{CpuBaseline, RequiredFeatures};
use vmm::devices::serial::UartState;
use vmm::persist::state::{GuestKind, VcpuState, VmState};

/// The seeds of the target named `name` (one of [`crate::TARGETS`]).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "manifest" => [manifest(), largest_memory()]
            .iter()
            .flat_map(|m| with_body(thaw_format::encode(m)))
            .collect(),
        "handoff" => handoffs(),
        "dirty_log" => [dirty_log(), every_page_dirty()]
            .iter()
            .flat_map(|l| with_body(l.encode()))
            .collect(),
        "state_blob" => with_body(state().encode().expect("sample state encodes")),
        "block_frames" => frames(),
        "block_codec" => blocks(),
        other => panic!("no target named {other}"),
    }
}

/// A framed object and its body alone.
fn with_body(framed: Vec<u8>) -> Vec<Vec<u8>> {
    let body = framed[HEADER_LEN..framed.len() - TRAILER_LEN].to_vec();
    vec![framed, body]
}

/// Two regions; blocks with several runs, lz4 and raw; zero pages; a parent.
fn manifest() -> Manifest {
    let text: Vec<u8> = b"thaw fuzz "
        .iter()
        .cycle()
        .take(2 * 4096)
        .copied()
        .collect();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let a = encode_block(&text);
    let b = encode_block(&noise);
    let blocks = vec![
        a.entry(
            vec![PageRun { start: 3, len: 1 }, PageRun { start: 0, len: 1 }],
            0,
            0,
        ),
        b.entry(vec![PageRun { start: 9, len: 1 }], 1, 0),
    ];
    let state = StateBlob::new(b"state".to_vec());
    let m = Manifest {
        id: CheckpointId::new("fuzz-seed").expect("valid id"),
        created_unix_ms: 1_700_000_000_000,
        parent: Some(CheckpointId::new("fuzz-parent").expect("valid id")),
        page_size: 4096,
        regions: vec![
            Region {
                guest_phys_addr: 0,
                size: 8 * 4096,
            },
            Region {
                guest_phys_addr: 1 << 32,
                size: 4 * 4096,
            },
        ],
        objects: vec![
            "checkpoints/fuzz-seed/segment-000000".into(),
            "checkpoints/fuzz-parent/segment-000000".into(),
        ],
        blocks,
        zero_pages: vec![
            PageRun { start: 1, len: 2 },
            PageRun { start: 4, len: 5 },
            PageRun { start: 10, len: 2 },
        ],
        prefetch_order: vec![1, 0],
        state,
        encryption: None,
    };
    m.validate().expect("seed manifest is valid");
    m
}

/// The largest memory a manifest may describe (16 TiB), all zero pages: a
/// hundred bytes that a validator checking page by page pays 512 MiB for.
fn largest_memory() -> Manifest {
    Manifest {
        id: CheckpointId::new("largest").expect("valid id"),
        created_unix_ms: 0,
        parent: None,
        page_size: 4096,
        regions: vec![Region {
            guest_phys_addr: 0,
            size: MAX_TOTAL_PAGES * 4096,
        }],
        objects: vec![],
        blocks: vec![],
        zero_pages: vec![PageRun {
            start: 0,
            len: MAX_TOTAL_PAGES,
        }],
        prefetch_order: vec![],
        state: StateBlob::new(vec![]),
        encryption: None,
    }
}

fn handoffs() -> Vec<Vec<u8>> {
    let mut h = Handoff::new(vec![
        RegionMapping {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 0xc000_0000,
            offset: 0,
            page_size: 4096,
            guest_phys_addr: Some(0),
        },
        RegionMapping {
            base_host_virt_addr: 0x7f10_0000_0000,
            size: 0x4000_0000,
            offset: 0xc000_0000,
            page_size: 4096,
            guest_phys_addr: Some(0x1_0000_0000),
        },
    ]);
    h.store = Some("/var/lib/thaw/store".into());
    h.checkpoint = Some("ck-1".into());
    h.vm_id = Some("vm-7".into());
    vec![
        h.encode(),
        h.encode_firecracker(),
        // Firecracker 1.7-1.11 and 1.12+ spellings of the page size.
        br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]"#.to_vec(),
        br#"[{"base_host_virt_addr":0,"size":2097152,"offset":0,"page_size":2097152,"page_size_kib":2097152}]"#
            .to_vec(),
    ]
}

fn dirty_log() -> DirtyLog {
    let log = DirtyLog {
        page_size: 4096,
        total_pages: 1 << 20,
        windows: vec![
            DirtyWindow::from_pages(3_000_000, 2_000_000, &[0, 1, 2, 3, 700, 701, 90_000]),
            DirtyWindow::from_pages(2_000_000, 1_000_000, &[]),
            DirtyWindow::from_pages(1_000_000, 0, &[5, 6, 1_048_575]),
        ],
    };
    log.validate().expect("seed log is valid");
    log
}

/// Every page of the largest memory written in two windows: a decoder that
/// expands runs into page lists pays 64 GiB for these few bytes.
fn every_page_dirty() -> DirtyLog {
    let all = PageRun {
        start: 0,
        len: MAX_TOTAL_PAGES,
    };
    DirtyLog {
        page_size: 4096,
        total_pages: MAX_TOTAL_PAGES,
        windows: vec![
            DirtyWindow {
                started_us_before: 2,
                ended_us_before: 1,
                runs: vec![all],
            },
            DirtyWindow {
                started_us_before: 1,
                ended_us_before: 0,
                runs: vec![all],
            },
        ],
    }
}

/// One vCPU of the test guest, as a checkpoint stores it.
fn state() -> VmState {
    VmState {
        guest: GuestKind::TestGuest,
        memory: vec![(0, 1 << 20)],
        cpu_baseline: CpuBaseline::Host,
        cpu_vendor: "GenuineIntel".into(),
        required_features: RequiredFeatures::of(&[]),
        vcpus: vec![VcpuState {
            id: 0,
            cpuid: vec![],
            sregs: kvm_sregs::default(),
            sregs2: None,
            regs: kvm_regs {
                rip: 0x100000,
                ..Default::default()
            },
            xcrs: None,
            xsave: vec![0; 1024],
            debug_regs: kvm_debugregs::default(),
            lapic: kvm_lapic_state::default(),
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: 7,
                ..Default::default()
            }],
            mp_state: kvm_mp_state::default(),
            vcpu_events: kvm_vcpu_events::default(),
            tsc_khz: Some(2_000_000),
        }],
        pic_master: kvm_irqchip::default(),
        pic_slave: kvm_irqchip::default(),
        ioapic: kvm_irqchip::default(),
        pit: kvm_pit_state2::default(),
        clock: kvm_clock_data::default(),
        clock_host_realtime_ns: Some(1_700_000_000_000_000_000),
        serial: UartState {
            baud_divisor_low: 12,
            baud_divisor_high: 0,
            interrupt_enable: 0,
            interrupt_identification: 1,
            line_control: 3,
            line_status: 0x60,
            modem_control: 8,
            modem_status: 0xb0,
            scratch: 0,
            in_buffer: vec![],
        },
        virtio: vec![],
        cmos: Default::default(),
        vmgenid: Some([7; 16]),
    }
}

fn frames() -> Vec<Vec<u8>> {
    let id = CheckpointId::new("ck-0123456789").expect("valid id");
    vec![
        encode_request(&Request::Block {
            checkpoint: id.clone(),
            block: 77,
            priority: Priority::Demand,
        }),
        encode_request(&Request::Manifest { checkpoint: id }),
        encode_response_header(ResponseHeader {
            status: Status::Ok,
            len: 4096,
        })
        .to_vec(),
    ]
}

/// For [`crate::targets::block_codec`]: a codec-and-size byte, then stored
/// bytes (lz4 of two pages of text, and a raw page).
fn blocks() -> Vec<Vec<u8>> {
    let text: Vec<u8> = b"the quick brown fox "
        .iter()
        .cycle()
        .take(8192)
        .copied()
        .collect();
    let lz4 = encode_block(&text);
    let mut seed = vec![1 | (1 << 1)];
    seed.extend_from_slice(&lz4.stored);
    let mut raw = vec![0u8];
    raw.extend((0..4096u32).map(|i| (i * 7) as u8));
    vec![seed, raw]
}
