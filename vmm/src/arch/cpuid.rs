//! CPUID for the guest: the host's KVM-supported set, optionally masked to a fleet-wide baseline,
//! plus the list of host CPU features a checkpoint needs and the check a restore host runs.

use crate::arch::cpu_profile::CpuMask;
use crate::vstate::kvm::KvmError;
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use serde::{Deserialize, Serialize};

/// The restore host's CPU lacks a feature the checkpoint's guest was shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this host's CPU lacks feature {feature}, which the checkpoint requires (it was taken on a CPU with it; checkpoint with a CPU baseline to restore on mixed hosts)")]
pub struct MissingCpuFeature {
    pub feature: String,
}

/// A CPU baseline name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CPU baseline {0:?} (expected host, x86-64, x86-64-v2 or x86-64-v3)")]
pub struct UnknownCpuBaseline(pub String);

/// Which CPU features the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CpuBaseline {
    /// Everything the host and KVM support: fastest, but a checkpoint restores only on hosts with
    /// at least the same features.
    #[default]
    Host,
    /// Baseline x86-64 (SSE2, no CX16/POPCNT/SSE4): the widest set of hosts, and a guest kernel
    /// that avoids instructions a software KVM's emulator may lack (cmpxchg16b).
    X86_64,
    /// x86-64-v2 (SSE4.2, POPCNT, CX16): restores on any x86-64 server of the last 15 years.
    X86_64V2,
    /// x86-64-v3 (AVX2, BMI1/2, FMA, XSAVE with AVX state).
    X86_64V3,
    /// The features every host of a fleet offers, computed from their profiles
    /// (`thaw cpu baseline`).
    Custom(Box<CpuMask>),
}

impl std::str::FromStr for CpuBaseline {
    type Err = UnknownCpuBaseline;
    fn from_str(s: &str) -> Result<Self, UnknownCpuBaseline> {
        match s {
            "host" => Ok(CpuBaseline::Host),
            "x86-64" | "v1" => Ok(CpuBaseline::X86_64),
            "x86-64-v2" | "v2" => Ok(CpuBaseline::X86_64V2),
            "x86-64-v3" | "v3" => Ok(CpuBaseline::X86_64V3),
            _ => Err(UnknownCpuBaseline(s.to_string())),
        }
    }
}

/// A CPUID output register that holds feature bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One feature register: (leaf, subleaf, register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureReg {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
}

const fn fr(leaf: u32, subleaf: u32, reg: Reg) -> FeatureReg {
    FeatureReg { leaf, subleaf, reg }
}

/// The feature registers a checkpoint's requirements are recorded for, with the bits that are not
/// host capabilities (set by KVM or by thaw at run time) left out.
const TRACKED: &[(FeatureReg, u32)] = &[
    // OSXSAVE (27) follows CR4, hypervisor (31) is set by thaw.
    (fr(0x1, 0, Reg::Ecx), !((1 << 27) | (1 << 31))),
    // HTT (28) is set by thaw for multi-vCPU guests.
    (fr(0x1, 0, Reg::Edx), !(1 << 28)),
    // OSPKE (4) follows CR4.
    (fr(0x7, 0, Reg::Ebx), !0),
    (fr(0x7, 0, Reg::Ecx), !(1 << 4)),
    (fr(0x7, 0, Reg::Edx), !0),
    (fr(0x7, 1, Reg::Eax), !0),
    (fr(0xd, 0, Reg::Eax), !0),
    (fr(0xd, 1, Reg::Eax), !0),
    (fr(0x8000_0001, 0, Reg::Ecx), !0),
    (fr(0x8000_0001, 0, Reg::Edx), !0),
];

/// Names of the feature bits users meet most; others are named by their CPUID coordinates.
const NAMES: &[(u32, u32, Reg, u32, &str)] = &[
    (1, 0, Reg::Ecx, 0, "sse3"),
    (1, 0, Reg::Ecx, 1, "pclmulqdq"),
    (1, 0, Reg::Ecx, 9, "ssse3"),
    (1, 0, Reg::Ecx, 12, "fma"),
    (1, 0, Reg::Ecx, 13, "cx16"),
    (1, 0, Reg::Ecx, 19, "sse4.1"),
    (1, 0, Reg::Ecx, 20, "sse4.2"),
    (1, 0, Reg::Ecx, 21, "x2apic"),
    (1, 0, Reg::Ecx, 22, "movbe"),
    (1, 0, Reg::Ecx, 23, "popcnt"),
    (1, 0, Reg::Ecx, 24, "tsc-deadline"),
    (1, 0, Reg::Ecx, 25, "aes"),
    (1, 0, Reg::Ecx, 26, "xsave"),
    (1, 0, Reg::Ecx, 28, "avx"),
    (1, 0, Reg::Ecx, 29, "f16c"),
    (1, 0, Reg::Ecx, 30, "rdrand"),
    (1, 0, Reg::Edx, 0, "fpu"),
    (1, 0, Reg::Edx, 4, "tsc"),
    (1, 0, Reg::Edx, 5, "msr"),
    (1, 0, Reg::Edx, 6, "pae"),
    (1, 0, Reg::Edx, 9, "apic"),
    (1, 0, Reg::Edx, 15, "cmov"),
    (1, 0, Reg::Edx, 23, "mmx"),
    (1, 0, Reg::Edx, 24, "fxsr"),
    (1, 0, Reg::Edx, 25, "sse"),
    (1, 0, Reg::Edx, 26, "sse2"),
    (7, 0, Reg::Ebx, 0, "fsgsbase"),
    (7, 0, Reg::Ebx, 3, "bmi1"),
    (7, 0, Reg::Ebx, 5, "avx2"),
    (7, 0, Reg::Ebx, 7, "smep"),
    (7, 0, Reg::Ebx, 8, "bmi2"),
    (7, 0, Reg::Ebx, 9, "erms"),
    (7, 0, Reg::Ebx, 10, "invpcid"),
    (7, 0, Reg::Ebx, 16, "avx512f"),
    (7, 0, Reg::Ebx, 17, "avx512dq"),
    (7, 0, Reg::Ebx, 18, "rdseed"),
    (7, 0, Reg::Ebx, 19, "adx"),
    (7, 0, Reg::Ebx, 20, "smap"),
    (7, 0, Reg::Ebx, 21, "avx512ifma"),
    (7, 0, Reg::Ebx, 23, "clflushopt"),
    (7, 0, Reg::Ebx, 24, "clwb"),
    (7, 0, Reg::Ebx, 28, "avx512cd"),
    (7, 0, Reg::Ebx, 29, "sha"),
    (7, 0, Reg::Ebx, 30, "avx512bw"),
    (7, 0, Reg::Ebx, 31, "avx512vl"),
    (7, 0, Reg::Ecx, 1, "avx512vbmi"),
    (7, 0, Reg::Ecx, 2, "umip"),
    (7, 0, Reg::Ecx, 3, "pku"),
    (7, 0, Reg::Ecx, 6, "avx512vbmi2"),
    (7, 0, Reg::Ecx, 8, "gfni"),
    (7, 0, Reg::Ecx, 9, "vaes"),
    (7, 0, Reg::Ecx, 10, "vpclmulqdq"),
    (7, 0, Reg::Ecx, 11, "avx512vnni"),
    (7, 0, Reg::Ecx, 12, "avx512bitalg"),
    (7, 0, Reg::Ecx, 14, "avx512vpopcntdq"),
    (7, 0, Reg::Ecx, 16, "la57"),
    (7, 0, Reg::Ecx, 22, "rdpid"),
    (7, 0, Reg::Edx, 4, "fsrm"),
    (7, 0, Reg::Edx, 14, "serialize"),
    (7, 0, Reg::Edx, 23, "avx512fp16"),
    (7, 0, Reg::Edx, 24, "amx-tile"),
    (7, 1, Reg::Eax, 4, "avx-vnni"),
    (7, 1, Reg::Eax, 5, "avx512bf16"),
    (0xd, 0, Reg::Eax, 2, "xsave-avx-state"),
    (0xd, 0, Reg::Eax, 5, "xsave-avx512-opmask-state"),
    (0xd, 0, Reg::Eax, 6, "xsave-avx512-zmm-hi256-state"),
    (0xd, 0, Reg::Eax, 7, "xsave-avx512-hi16-zmm-state"),
    (0xd, 0, Reg::Eax, 9, "xsave-pkru-state"),
    (0xd, 0, Reg::Eax, 17, "xsave-amx-tilecfg-state"),
    (0xd, 0, Reg::Eax, 18, "xsave-amx-tiledata-state"),
    (0xd, 1, Reg::Eax, 0, "xsaveopt"),
    (0xd, 1, Reg::Eax, 1, "xsavec"),
    (0xd, 1, Reg::Eax, 3, "xsaves"),
    (0x8000_0001, 0, Reg::Ecx, 0, "lahf_lm"),
    (0x8000_0001, 0, Reg::Ecx, 5, "abm"),
    (0x8000_0001, 0, Reg::Ecx, 8, "prefetchw"),
    (0x8000_0001, 0, Reg::Edx, 11, "syscall"),
    (0x8000_0001, 0, Reg::Edx, 20, "nx"),
    (0x8000_0001, 0, Reg::Edx, 26, "pdpe1gb"),
    (0x8000_0001, 0, Reg::Edx, 27, "rdtscp"),
    (0x8000_0001, 0, Reg::Edx, 29, "lm"),
];

/// Human name of one feature bit.
pub fn feature_name(reg: FeatureReg, bit: u32) -> String {
    NAMES
        .iter()
        .find(|n| n.0 == reg.leaf && n.1 == reg.subleaf && n.2 == reg.reg && n.3 == bit)
        .map(|n| n.4.to_string())
        .unwrap_or_else(|| {
            format!(
                "CPUID.(EAX={:#x},ECX={}).{:?}[{bit}]",
                reg.leaf, reg.subleaf, reg.reg
            )
            .to_uppercase()
            .replace("0X", "0x")
        })
}

/// Bits of each tracked register a baseline allows (bits not listed are masked off).
/// `tracked` marks the register's host capability bits; a computed baseline keeps the others
/// (set by KVM or thaw) as they are.
fn baseline_allow(baseline: &CpuBaseline, reg: FeatureReg, tracked: u32) -> u32 {
    if let CpuBaseline::Custom(mask) = baseline {
        return mask.allowed(reg) | !tracked;
    }
    let bits = |list: &[u32]| list.iter().fold(0u32, |m, b| m | (1 << b));
    let v2 = matches!(baseline, CpuBaseline::X86_64V2 | CpuBaseline::X86_64V3);
    let v3 = matches!(baseline, CpuBaseline::X86_64V3);
    match (reg.leaf, reg.subleaf, reg.reg) {
        (1, 0, Reg::Edx) => bits(&[
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 26,
        ]),
        (1, 0, Reg::Ecx) => {
            // x2apic and tsc-deadline are emulated by KVM itself; hypervisor is set by thaw.
            let mut m = bits(&[21, 24, 31]);
            if v2 {
                m |= bits(&[0, 9, 13, 19, 20, 23]);
            }
            if v3 {
                m |= bits(&[12, 22, 26, 27, 28, 29]);
            }
            m
        }
        (7, 0, Reg::Ebx) if v3 => bits(&[3, 5, 8]),
        (0xd, 0, Reg::Eax) if v3 => bits(&[0, 1, 2]),
        (0xd, 0, Reg::Eax) => bits(&[0, 1]),
        (0xd, 1, Reg::Eax) if v3 => bits(&[0]),
        (0x8000_0001, 0, Reg::Edx) => bits(&[11, 20, 29]),
        (0x8000_0001, 0, Reg::Ecx) if v3 => bits(&[0, 5]),
        (0x8000_0001, 0, Reg::Ecx) if v2 => bits(&[0]),
        _ => 0,
    }
}

fn reg_of(e: &kvm_cpuid_entry2, r: Reg) -> u32 {
    match r {
        Reg::Eax => e.eax,
        Reg::Ebx => e.ebx,
        Reg::Ecx => e.ecx,
        Reg::Edx => e.edx,
    }
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// The CPU vendor string of a CPUID (leaf 0).
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> String {
    entries
        .iter()
        .find(|e| e.function == 0)
        .map(|e| crate::arch::cpu_profile::vendor_string(e.ebx, e.edx, e.ecx))
        .unwrap_or_default()
}

fn lookup(entries: &[kvm_cpuid_entry2], reg: FeatureReg) -> u32 {
    entries
        .iter()
        .find(|e| e.function == reg.leaf && e.index == reg.subleaf)
        .map(|e| reg_of(e, reg.reg))
        .unwrap_or(0)
}

/// The host's KVM-supported CPUID.
pub fn supported(kvm: &kvm_ioctls::Kvm) -> Result<Vec<kvm_cpuid_entry2>, KvmError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(cpuid.as_slice().to_vec())
}

/// KVM's paravirtual feature leaf.
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// KVM paravirtual features whose guest side makes hypercalls (VMCALL): PV_UNHALT (7, spinlock
/// kicks), PV_SEND_IPI (11), PV_SCHED_YIELD (13). They are only used with more than one vCPU,
/// and this machine's software KVM never completes such a hypercall from guest kernel code (an SMP
/// Linux hangs in `kvm_hypercall4` sending its first IPI). Without them Linux sends IPIs through
/// the LAPIC and spins plainly: a little slower under overcommit on hardware, and the same CPUID
/// restores on every host.
const PV_HYPERCALL_FEATURES: u32 = (1 << 7) | (1 << 11) | (1 << 13);

/// The CPUID template of a VM: the supported set masked to `baseline`, with the hypervisor bit
/// and without the paravirtual features that need hypercalls.
pub(crate) fn template(
    supported: &[kvm_cpuid_entry2],
    baseline: &CpuBaseline,
) -> Vec<kvm_cpuid_entry2> {
    let mut entries = supported.to_vec();
    for e in entries.iter_mut() {
        if e.function == 1 {
            e.ecx |= 1 << 31;
        }
        if e.function == KVM_CPUID_FEATURES {
            e.eax &= !PV_HYPERCALL_FEATURES;
        }
        if *baseline == CpuBaseline::Host {
            continue;
        }
        for &(reg, tracked) in TRACKED {
            if e.function == reg.leaf && e.index == reg.subleaf {
                *reg_mut(e, reg.reg) &= baseline_allow(baseline, reg, tracked);
            }
        }
    }
    if *baseline != CpuBaseline::Host {
        let xcr0 = lookup(&entries, fr(0xd, 0, Reg::Eax)) as u64;
        let mut max_end = 512 + 64;
        for e in entries
            .iter_mut()
            .filter(|e| e.function == 0xd && e.index >= 2)
        {
            if e.index < 63 && xcr0 & (1 << e.index) == 0 {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            } else {
                max_end = max_end.max(e.eax + e.ebx);
            }
        }
        for e in entries
            .iter_mut()
            .filter(|e| e.function == 0xd && e.index == 0)
        {
            e.ecx = max_end;
            e.edx = 0;
        }
    }
    entries
}

/// The CPUID of one vCPU: the template with that vCPU's APIC id, and one package of `count`
/// single-threaded cores as the topology (APIC ids 0..count, as the MADT lists them).
///
/// Linux reads the topology from leaf 1 (logical processors per package) and leaf 4 (cores per
/// package, and which caches are shared) when leaf 0xB is empty, as KVM reports it here: both
/// say the same power of two, so threads per core = 1 and every vCPU is its own core with its
/// own L1/L2, sharing the L3. The host's leaf 4 values would describe the host's core count
/// instead, which makes vCPUs of a larger guest SMT siblings.
pub(crate) fn for_vcpu(
    template: &[kvm_cpuid_entry2],
    index: u32,
    count: u32,
) -> Result<CpuId, KvmError> {
    let per_package = count.next_power_of_two().min(64);
    let mut entries = template.to_vec();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (per_package << 16);
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the logical processor count in EBX is valid.
                }
            }
            4 if e.eax & 0x1f != 0 => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: logical processors sharing
                // this cache - 1 (the L3 is the package's, lower levels a core's own).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { per_package - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((per_package - 1) << 26) | (sharing << 14);
            }
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
    CpuId::from_entries(&entries).map_err(KvmError::table("CPUID"))
}

/// A feature register's bits that a checkpoint needs the restore host to support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredFeatures {
    pub regs: Vec<(FeatureReg, u32)>,
}

impl RequiredFeatures {
    /// The host features a guest with this CPUID uses.
    pub fn of(guest: &[kvm_cpuid_entry2]) -> RequiredFeatures {
        RequiredFeatures {
            regs: TRACKED
                .iter()
                .map(|&(reg, mask)| (reg, lookup(guest, reg) & mask))
                .collect(),
        }
    }

    /// Fails with the first required feature the host's supported CPUID lacks.
    pub(crate) fn check(&self, host: &[kvm_cpuid_entry2]) -> Result<(), MissingCpuFeature> {
        for &(reg, bits) in &self.regs {
            let missing = bits & !lookup(host, reg);
            if missing != 0 {
                let bit = missing.trailing_zeros();
                return Err(MissingCpuFeature {
                    feature: feature_name(reg, bit),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0, 0, 0, (1 << 28) | (1 << 20) | (1 << 26), 1 | (1 << 26)),
            entry(7, 0, 1, (1 << 5) | (1 << 16), 0, 0),
            entry(0xd, 0, 0b1110_0111, 0, 2696, 0),
            entry(0xd, 2, 256, 576, 0, 0),
            entry(0xd, 5, 64, 1088, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 1, 1 << 29),
        ]
    }

    #[test]
    fn baseline_masks_features_and_xsave_components() {
        let t = template(&host(), &CpuBaseline::X86_64V3);
        assert_eq!(
            lookup(&t, fr(7, 0, Reg::Ebx)),
            1 << 5,
            "avx2 kept, avx512f masked"
        );
        assert_eq!(lookup(&t, fr(0xd, 0, Reg::Eax)), 0b111);
        assert_eq!(lookup(&t, fr(0xd, 5, Reg::Eax)), 0, "opmask state masked");
        assert_eq!(
            lookup(&t, fr(0xd, 0, Reg::Ecx)),
            832,
            "xsave size recomputed"
        );
        let v2 = template(&host(), &CpuBaseline::X86_64V2);
        assert_eq!(
            lookup(&v2, fr(1, 0, Reg::Ecx)) & (1 << 28),
            0,
            "no avx in v2"
        );
        assert_ne!(
            lookup(&v2, fr(1, 0, Reg::Ecx)) & (1 << 20),
            0,
            "sse4.2 in v2"
        );
        let v1 = template(&host(), &CpuBaseline::X86_64);
        assert_eq!(
            lookup(&v1, fr(1, 0, Reg::Ecx)) & (1 << 20),
            0,
            "no sse4.2 in x86-64"
        );
        assert_ne!(
            lookup(&v1, fr(1, 0, Reg::Edx)) & (1 << 26),
            0,
            "sse2 in x86-64"
        );
        assert_eq!(
            "x86-64".parse::<CpuBaseline>().unwrap(),
            CpuBaseline::X86_64
        );
        let h = template(&host(), &CpuBaseline::Host);
        assert_eq!(lookup(&h, fr(7, 0, Reg::Ebx)), (1 << 5) | (1 << 16));
        assert_ne!(
            lookup(&h, fr(1, 0, Reg::Ecx)) & (1 << 31),
            0,
            "hypervisor bit"
        );
    }

    #[test]
    fn a_computed_baseline_masks_capabilities_only() {
        let mut features = RequiredFeatures::of(&host());
        for (reg, bits) in features.regs.iter_mut() {
            if *reg == fr(7, 0, Reg::Ebx) {
                *bits &= !(1 << 16); // a host of the fleet lacks avx512f
            }
        }
        let mask = CpuMask {
            vendor: "GenuineIntel".into(),
            hosts: vec!["a".into(), "b".into()],
            features,
        };
        let t = template(&host(), &CpuBaseline::Custom(Box::new(mask)));
        assert_eq!(
            lookup(&t, fr(7, 0, Reg::Ebx)),
            1 << 5,
            "avx2 kept, avx512f masked"
        );
        let ecx = lookup(&t, fr(1, 0, Reg::Ecx));
        assert_ne!(
            ecx & (1 << 31),
            0,
            "the hypervisor bit is thaw's, not a capability"
        );
        assert_ne!(ecx & (1 << 28), 0, "avx: every host has it");
        assert_eq!(
            lookup(&t, fr(0xd, 5, Reg::Eax)),
            64,
            "xsave components kept"
        );
        RequiredFeatures::of(&t)
            .check(&{
                let mut older = host();
                older[1].ebx &= !(1 << 16);
                older
            })
            .unwrap();
    }

    #[test]
    fn paravirtual_features_that_need_hypercalls_are_hidden() {
        let mut supported = host();
        // KVM's leaf: clocksource2 (3), async PF (4), steal time (5), PV EOI (6), PV_UNHALT (7),
        // PV TLB flush (9), PV_SEND_IPI (11), poll control (12), PV_SCHED_YIELD (13).
        let offered = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 9);
        let offered = offered | (1 << 11) | (1 << 12) | (1 << 13);
        supported.push(entry(KVM_CPUID_FEATURES, 0, offered, 0, 0, 0));
        for baseline in [CpuBaseline::Host, CpuBaseline::X86_64] {
            let t = template(&supported, &baseline);
            let kvm = t.iter().find(|e| e.function == KVM_CPUID_FEATURES).unwrap();
            assert_eq!(kvm.eax, offered & !((1 << 7) | (1 << 11) | (1 << 13)));
        }
    }

    #[test]
    fn every_vcpu_is_a_core_of_one_package() {
        let mut t = host();
        // The host's leaf 4: L1d and L3, claiming 8 cores of which 2 threads share the L3.
        t.push(entry(4, 0, (7 << 26) | (1 << 5) | 1, 0, 0, 0));
        t.push(entry(4, 3, (7 << 26) | (1 << 14) | (3 << 5) | 3, 0, 0, 0));
        t.push(entry(4, 4, 0, 0, 0, 0));
        for (count, per_package) in [(1u32, 1u32), (2, 2), (3, 4), (64, 64)] {
            let c = for_vcpu(&t, count - 1, count).unwrap();
            let get = |f: u32, i: u32| {
                *c.as_slice()
                    .iter()
                    .find(|e| e.function == f && e.index == i)
                    .unwrap()
            };
            let leaf1 = get(1, 0);
            assert_eq!(leaf1.ebx >> 24, count - 1, "APIC id");
            assert_eq!((leaf1.ebx >> 16) & 0xff, per_package);
            let l1 = get(4, 0);
            assert_eq!((l1.eax >> 26) + 1, per_package, "cores per package");
            assert_eq!((l1.eax >> 14) & 0xfff, 0, "an L1 per core");
            assert_eq!(l1.eax & 0x3fff, (1 << 5) | 1, "cache type and level kept");
            let l3 = get(4, 3);
            assert_eq!(((l3.eax >> 14) & 0xfff) + 1, per_package, "one L3");
            assert_eq!(get(4, 4).eax, 0, "the end of the list stays");
        }
    }

    #[test]
    fn missing_feature_is_named() {
        let guest = template(&host(), &CpuBaseline::Host);
        let req = RequiredFeatures::of(&guest);
        req.check(&host()).unwrap();
        let mut older = host();
        older[1].ebx &= !(1 << 16);
        let err = req.check(&older).unwrap_err();
        assert!(err.to_string().contains("avx512f"), "{err}");
        // A baseline checkpoint restores on the older host.
        RequiredFeatures::of(&template(&host(), &CpuBaseline::X86_64V3))
            .check(&older)
            .unwrap();
    }

    #[test]
    fn unnamed_bits_get_coordinates() {
        assert_eq!(
            feature_name(fr(7, 0, Reg::Edx), 30),
            "CPUID.(EAX=0x7,ECX=0).EDX[30]"
        );
        assert_eq!(
            "x86-64-v2".parse::<CpuBaseline>().unwrap(),
            CpuBaseline::X86_64V2
        );
        assert!("pentium".parse::<CpuBaseline>().is_err());
    }
}
