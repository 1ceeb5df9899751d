//! The complete VM state of a checkpoint (everything but memory) and its byte encoding: the opaque
//! state blob stored in the checkpoint manifest.
//!
//! The blob is JSON of [`VmState`] in the frame thaw's other self-checking objects use
//! ([`thaw_format::envelope`]): magic `THAWVMST`, format version, length, body, BLAKE3 trailer.
//! Decoding checks the frame before parsing, so a truncated or altered blob is refused with a
//! clear error and never reaches KVM.

use crate::arch::cpuid::{CpuBaseline, RequiredFeatures};
use crate::devices::cmos::CmosState;
use crate::devices::serial::UartState;
use crate::devices::virtio::device::VirtioDeviceState;
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
};
use serde::{Deserialize, Serialize};
use thaw_format::envelope::{self, EnvelopeError};

const MAGIC: [u8; 8] = *b"THAWVMST";
/// Version of the blob format this build writes. It also reads version 1, whose frame was its
/// own (see [`open_v1`]), so checkpoints written before the envelope still restore.
pub(crate) const FORMAT_VERSION: u16 = 2;
/// Version 1's header: magic, version (u32), payload length (u64), BLAKE3 of the payload.
const V1_HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// Largest payload accepted (a real state is tens of KiB).
const MAX_PAYLOAD: u64 = 64 << 20;

/// A state blob could not be encoded, or what was read is not one this build restores.
#[derive(Debug, thiserror::Error)]
pub enum StateBlobError {
    #[error("cannot encode the VM state: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("{len} bytes is shorter than the {min}-byte frame")]
    TooShort { len: usize, min: usize },
    #[error("bad magic {found:02x?}: not a thaw VM state")]
    BadMagic { found: [u8; 8] },
    #[error("format version {found}, this build reads version {supported}")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("payload length {len} is over the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    #[error("payload length {declared} does not match the {actual} bytes present")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("hash mismatch: the blob is corrupt")]
    ChecksumMismatch,
    #[error("cannot parse: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("no vCPUs")]
    NoVcpus,
    #[error("bad memory layout {0:x?}")]
    BadMemoryLayout(Vec<(u64, u64)>),
    #[error("vCPU {index} has id {id}")]
    VcpuId { index: usize, id: u32 },
    #[error("vCPU {0}: XSAVE area too short")]
    XsaveTooShort(usize),
}

type Result<T> = std::result::Result<T, StateBlobError>;

impl From<EnvelopeError> for StateBlobError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::TooShort { len, min } => StateBlobError::TooShort { len, min },
            EnvelopeError::BadMagic { found } => StateBlobError::BadMagic { found },
            EnvelopeError::UnsupportedVersion { found, supported } => {
                StateBlobError::UnsupportedVersion { found, supported }
            }
            EnvelopeError::TooLarge { len, max } => StateBlobError::TooLarge { len, max },
            EnvelopeError::LengthMismatch { declared, actual } => {
                StateBlobError::LengthMismatch { declared, actual }
            }
            EnvelopeError::ChecksumMismatch => StateBlobError::ChecksumMismatch,
        }
    }
}

/// The payload of a version 1 blob, checked as the envelope checks its frame: length bound,
/// declared length, then the payload's hash.
fn open_v1(blob: &[u8]) -> Result<&[u8]> {
    if blob.len() < V1_HEADER_LEN {
        return Err(StateBlobError::TooShort {
            len: blob.len(),
            min: V1_HEADER_LEN,
        });
    }
    let declared = u64::from_le_bytes(blob[12..20].try_into().expect("8 bytes"));
    if declared > MAX_PAYLOAD {
        return Err(StateBlobError::TooLarge {
            len: declared,
            max: MAX_PAYLOAD,
        });
    }
    let payload = &blob[V1_HEADER_LEN..];
    if declared != payload.len() as u64 {
        return Err(StateBlobError::LengthMismatch {
            declared,
            actual: payload.len() as u64,
        });
    }
    if blake3::hash(payload).as_bytes() != &blob[20..V1_HEADER_LEN] {
        return Err(StateBlobError::ChecksumMismatch);
    }
    Ok(payload)
}

/// State of one vCPU, in the order it is restored (see `vstate::vcpu_state` for why that order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u32,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub sregs: kvm_sregs,
    /// KVM_GET_SREGS2 output (adds the PAE PDPTRs), raw, when the host has it.
    pub sregs2: Option<Vec<u8>>,
    pub regs: kvm_regs,
    pub xcrs: Option<kvm_xcrs>,
    /// The XSAVE area as 32-bit words (KVM_GET_XSAVE2 when larger than 4 KiB).
    pub xsave: Vec<u32>,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    pub tsc_khz: Option<u32>,
}

/// How the guest was started, so a restore can name what it is restoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestKind {
    TestGuest,
    Linux,
}

/// Everything of a VM but its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub guest: GuestKind,
    /// Guest memory layout: `(guest_phys_addr, size)` per region, in order.
    pub memory: Vec<(u64, u64)>,
    pub cpu_baseline: CpuBaseline,
    /// The CPU vendor of the host the VM was started on; a restore host must be the same.
    /// Empty in blobs written before it was recorded.
    #[serde(default)]
    pub cpu_vendor: String,
    /// Host CPU features the guest's CPUID exposes; a restore host must have them all.
    pub required_features: RequiredFeatures,
    pub vcpus: Vec<VcpuState>,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    /// The host's wall clock (CLOCK_REALTIME, ns) when `clock` was read: a restore advances the
    /// kvmclock by the wall time since (`vstate::clock`). None in blobs written before.
    #[serde(default)]
    pub clock_host_realtime_ns: Option<u64>,
    pub serial: UartState,
    /// virtio-mmio devices in bus order (absent in checkpoints from before virtio).
    #[serde(default)]
    pub virtio: Vec<VirtioDeviceState>,
    /// The CMOS clock and RAM; blobs from before it restore a power-on CMOS.
    #[serde(default)]
    pub cmos: CmosState,
    /// The VMGenID generation the guest saw (Linux guests; `devices::vmgenid`). A restore gives
    /// the guest a new one. None for guests without the device and blobs written before it.
    #[serde(default)]
    pub vmgenid: Option<[u8; 16]>,
}

impl VmState {
    /// Total guest memory in bytes.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.memory.iter().map(|r| r.1).sum()
    }

    /// Encodes the state as a versioned, checksummed blob.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let payload = serde_json::to_vec(self).map_err(StateBlobError::Encode)?;
        Ok(envelope::seal(MAGIC, FORMAT_VERSION, &payload))
    }

    /// Decodes and verifies a blob made by [`VmState::encode`].
    pub fn decode(blob: &[u8]) -> Result<VmState> {
        // Version 1's u32 version reads as version 1 with a zero reserved field in the envelope's
        // header, so the version at offset 8 tells the frames apart.
        let payload = if blob.len() >= 10 && blob[..8] == MAGIC && blob[8..10] == [1, 0] {
            open_v1(blob)?
        } else {
            envelope::open(blob, MAGIC, FORMAT_VERSION, MAX_PAYLOAD)?
        };
        let state: VmState = serde_json::from_slice(payload).map_err(StateBlobError::Parse)?;
        state.validate()?;
        Ok(state)
    }

    fn validate(&self) -> Result<()> {
        if self.vcpus.is_empty() {
            return Err(StateBlobError::NoVcpus);
        }
        if self.memory.is_empty()
            || self
                .memory
                .iter()
                .any(|&(gpa, size)| size == 0 || gpa % 4096 != 0 || size % 4096 != 0)
        {
            return Err(StateBlobError::BadMemoryLayout(self.memory.clone()));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.id as usize != i {
                return Err(StateBlobError::VcpuId { index: i, id: v.id });
            }
            if v.xsave.len() < 1024 {
                return Err(StateBlobError::XsaveTooShort(i));
            }
        }
        Ok(())
    }
}

/// Copies a plain-old-data KVM struct into bytes.
pub(crate) fn pod_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: T is a Copy, repr(C) KVM ABI struct without pointers; reading its size_of bytes
    // through a byte pointer is valid (padding bytes are copied as they are).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// Rebuilds a plain-old-data KVM struct from bytes of exactly its size; None for any other size.
pub(crate) fn pod_from_bytes<T: Copy + Default>(b: &[u8]) -> Option<T> {
    if b.len() != std::mem::size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: the length matches size_of::<T>() (checked above) and T is a KVM ABI struct for
    // which every bit pattern is valid (integers and arrays of integers only).
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len()) };
    Some(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> VmState {
        let regs = kvm_regs {
            rip: 0x100000,
            rax: 42,
            ..Default::default()
        };
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
                regs,
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
            vmgenid: Some([7; 16]),
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
            cmos: CmosState::default(),
        }
    }

    #[test]
    fn blob_round_trips() {
        let blob = sample().encode().unwrap();
        let back = VmState::decode(&blob).unwrap();
        assert_eq!(back.vcpus[0].regs.rip, 0x100000);
        assert_eq!(back.vcpus[0].msrs[0].data, 7);
        assert_eq!(back.memory_bytes(), 1 << 20);
    }

    #[test]
    fn blobs_from_before_the_cmos_restore_a_power_on_cmos() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json.as_object_mut().unwrap().remove("cmos").unwrap();
        let blob = envelope::seal(MAGIC, FORMAT_VERSION, json.to_string().as_bytes());
        let back = VmState::decode(&blob).unwrap();
        assert_eq!(back.cmos, CmosState::default());
    }

    /// Version 1's frame, as thaw wrote it before the envelope.
    fn v1_blob(payload: &[u8]) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&1u32.to_le_bytes());
        blob.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        blob.extend_from_slice(blake3::hash(payload).as_bytes());
        blob.extend_from_slice(payload);
        blob
    }

    #[test]
    fn version_1_blobs_still_decode_and_are_checked() {
        let payload = serde_json::to_vec(&sample()).unwrap();
        let blob = v1_blob(&payload);
        let back = VmState::decode(&blob).unwrap();
        assert_eq!(back.vcpus[0].regs.rip, 0x100000);

        let mut flipped = blob.clone();
        let n = flipped.len();
        flipped[n - 3] ^= 1;
        let err = VmState::decode(&flipped).unwrap_err().to_string();
        assert!(err.contains("hash mismatch"), "{err}");
        let err = VmState::decode(&blob[..n - 1]).unwrap_err().to_string();
        assert!(err.contains("length"), "{err}");
        let err = VmState::decode(&blob[..30]).unwrap_err().to_string();
        assert!(err.contains("shorter"), "{err}");
        let mut too_big = blob.clone();
        too_big[12..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        let err = VmState::decode(&too_big).unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
    }

    #[test]
    fn blobs_from_before_the_clock_wall_time_and_vmgenid_still_decode() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json.as_object_mut()
            .unwrap()
            .remove("clock_host_realtime_ns")
            .unwrap();
        json.as_object_mut().unwrap().remove("vmgenid").unwrap();
        let blob = envelope::seal(MAGIC, FORMAT_VERSION, &serde_json::to_vec(&json).unwrap());
        let back = VmState::decode(&blob).unwrap();
        assert_eq!(back.clock_host_realtime_ns, None);
        assert_eq!(back.vmgenid, None);
    }

    #[test]
    fn corrupt_blobs_are_refused() {
        let blob = sample().encode().unwrap();
        let mut flipped = blob.clone();
        let n = flipped.len();
        flipped[n - 5] ^= 1;
        let err = VmState::decode(&flipped).unwrap_err().to_string();
        assert!(err.contains("hash mismatch"), "{err}");
        assert!(VmState::decode(&blob[..blob.len() - 1])
            .unwrap_err()
            .to_string()
            .contains("length"));
        assert!(VmState::decode(b"short").is_err());
        let mut magic = blob.clone();
        magic[0] = b'X';
        assert!(VmState::decode(&magic)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut version = blob.clone();
        version[8] = 9;
        assert!(VmState::decode(&version)
            .unwrap_err()
            .to_string()
            .contains("version"));
        let mut too_big = blob.clone();
        too_big[12..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        let err = VmState::decode(&too_big).unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
        let mut body = blob.clone();
        body[n / 2] ^= 0x40;
        let err = VmState::decode(&body).unwrap_err().to_string();
        assert!(err.contains("hash mismatch"), "{err}");
    }

    #[test]
    fn pod_bytes_round_trip_and_check_size() {
        let r = kvm_regs {
            rflags: 0x3002,
            ..Default::default()
        };
        let b = pod_bytes(&r);
        let back: kvm_regs = pod_from_bytes(&b).unwrap();
        assert_eq!(back.rflags, 0x3002);
        assert!(pod_from_bytes::<kvm_regs>(&b[1..]).is_none());
    }
}
