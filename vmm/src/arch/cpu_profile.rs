//! What a host's KVM offers a guest CPU, and whether a checkpoint can run there.
//!
//! `thaw cpu dump` writes a host's [`CpuProfile`]; `thaw cpu baseline` intersects the profiles
//! of a fleet's hosts into a [`CpuMask`] that VMs are started under (`--cpu-baseline FILE`), so
//! their checkpoints restore on any of those hosts; every restore checks the checkpoint's
//! [`HostRequirements`] against its own host's profile before a VM exists. No I/O here: the
//! live host's profile is read in `vstate::host_cpu`.

use crate::arch::cpuid::{feature_name, FeatureReg, RequiredFeatures};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// One host as restores see it: written by `thaw cpu dump`, read by `thaw cpu baseline` and
/// `thaw cpu check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuProfile {
    /// Where the profile was taken (the host name), for messages.
    pub host: String,
    /// CPUID vendor string (`GenuineIntel`, `AuthenticAMD`).
    pub vendor: String,
    /// The host capability bits of every tracked feature register that KVM offers a guest.
    pub features: RequiredFeatures,
    /// MSRs this host's KVM saves and restores (`KVM_GET_MSR_INDEX_LIST`).
    pub msrs: Vec<u32>,
    /// The TSC frequency a vCPU runs at by default, if KVM reports it.
    pub tsc_khz: Option<u32>,
    /// Whether KVM can run a vCPU's TSC at another frequency (`KVM_CAP_TSC_CONTROL`).
    pub tsc_scaling: bool,
}

/// A fleet-wide CPU baseline computed from host profiles: the features every host offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMask {
    pub vendor: String,
    /// The hosts it was computed from, for messages and audits.
    pub hosts: Vec<String>,
    /// Per tracked register, the capability bits every host offers.
    pub features: RequiredFeatures,
}

/// Profiles that cannot make one baseline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaselineError {
    #[error("no CPU profiles given: a baseline needs at least one host's `thaw cpu dump`")]
    Empty,
    #[error("hosts of different CPU vendors cannot share a baseline: {first_host} is {first}, {other_host} is {other} (a guest sees the vendor, and its state is vendor-specific)")]
    MixedVendors {
        first_host: String,
        first: String,
        other_host: String,
        other: String,
    },
}

impl CpuMask {
    /// The features every profile offers. All must be of one vendor.
    pub fn intersect(profiles: &[CpuProfile]) -> Result<CpuMask, BaselineError> {
        let first = profiles.first().ok_or(BaselineError::Empty)?;
        let mut features = first.features.clone();
        for p in &profiles[1..] {
            if p.vendor != first.vendor {
                return Err(BaselineError::MixedVendors {
                    first_host: first.host.clone(),
                    first: first.vendor.clone(),
                    other_host: p.host.clone(),
                    other: p.vendor.clone(),
                });
            }
            for (reg, bits) in features.regs.iter_mut() {
                *bits &= bits_of(&p.features, *reg);
            }
        }
        Ok(CpuMask {
            vendor: first.vendor.clone(),
            hosts: profiles.iter().map(|p| p.host.clone()).collect(),
            features,
        })
    }

    /// The bits of `reg` this baseline allows (zero for a register it does not list).
    pub fn allowed(&self, reg: FeatureReg) -> u32 {
        bits_of(&self.features, reg)
    }
}

fn bits_of(features: &RequiredFeatures, reg: FeatureReg) -> u32 {
    features
        .regs
        .iter()
        .find(|(r, _)| *r == reg)
        .map(|(_, b)| *b)
        .unwrap_or(0)
}

/// What a checkpoint needs of the host that restores it.
#[derive(Debug, Clone, Copy)]
pub struct HostRequirements<'a> {
    /// The vendor of the CPU it was taken on (empty when the checkpoint did not record one).
    pub vendor: &'a str,
    pub features: &'a RequiredFeatures,
    /// Every MSR index saved in any vCPU's state.
    pub msrs: &'a BTreeSet<u32>,
    /// The guest's TSC frequency, if recorded.
    pub tsc_khz: Option<u32>,
}

/// Everything that stops a checkpoint from running on a host, found before any VM exists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostMismatch {
    pub host: String,
    /// (the checkpoint's, the host's)
    pub vendor: Option<(String, String)>,
    pub missing_features: Vec<String>,
    pub refused_msrs: Vec<u32>,
    /// (the guest's kHz, the host's kHz if known)
    pub tsc: Option<(u32, Option<u32>)>,
}

impl std::error::Error for HostMismatch {}

impl fmt::Display for HostMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} cannot run this checkpoint:", self.host)?;
        let mut sep = " ";
        if let Some((ours, host)) = &self.vendor {
            write!(
                f,
                "{sep}its CPU vendor is {host}, the checkpoint was taken on {ours}"
            )?;
            sep = "; ";
        }
        if !self.missing_features.is_empty() {
            write!(
                f,
                "{sep}its CPU lacks {} (checkpoint under a CPU baseline to restore on mixed hosts: `thaw cpu baseline`)",
                self.missing_features.join(", ")
            )?;
            sep = "; ";
        }
        if !self.refused_msrs.is_empty() {
            let list: Vec<String> = self
                .refused_msrs
                .iter()
                .map(|m| format!("{m:#x}"))
                .collect();
            write!(
                f,
                "{sep}its KVM does not restore MSRs {} that the checkpoint saved",
                list.join(", ")
            )?;
            sep = "; ";
        }
        if let Some((guest, host)) = self.tsc {
            match host {
                Some(h) => write!(
                    f,
                    "{sep}it cannot run the guest's TSC at {guest} kHz (its own runs at {h} kHz)"
                )?,
                None => write!(f, "{sep}it cannot run the guest's TSC at {guest} kHz")?,
            }
        }
        Ok(())
    }
}

/// Checks `req` against `host`. `tsc_settable` answers whether the host can run a vCPU's TSC at a
/// frequency other than its own (asked only when the frequencies differ beyond the tolerance
/// [`tsc_differs`] applies): a live host tries it, a profile goes by `tsc_scaling`.
pub fn check(
    req: &HostRequirements<'_>,
    host: &CpuProfile,
    tsc_differs: impl Fn(u32, u32) -> bool,
    tsc_settable: impl FnOnce(u32) -> bool,
) -> Result<(), Box<HostMismatch>> {
    let mut m = HostMismatch {
        host: host.host.clone(),
        ..Default::default()
    };
    if !req.vendor.is_empty() && req.vendor != host.vendor {
        m.vendor = Some((req.vendor.to_string(), host.vendor.clone()));
    }
    for &(reg, bits) in &req.features.regs {
        let missing = bits & !bits_of(&host.features, reg);
        for bit in (0..32).filter(|b| missing & (1 << b) != 0) {
            m.missing_features.push(feature_name(reg, bit));
        }
    }
    let offered: BTreeSet<u32> = host.msrs.iter().copied().collect();
    m.refused_msrs = req.msrs.difference(&offered).copied().collect();
    if let Some(guest) = req.tsc_khz {
        let differs = host.tsc_khz.is_none_or(|h| tsc_differs(guest, h));
        if differs && !tsc_settable(guest) {
            m.tsc = Some((guest, host.tsc_khz));
        }
    }
    if m.vendor.is_none()
        && m.missing_features.is_empty()
        && m.refused_msrs.is_empty()
        && m.tsc.is_none()
    {
        Ok(())
    } else {
        Err(Box::new(m))
    }
}

/// The CPUID vendor string of leaf 0's EBX, EDX, ECX.
pub fn vendor_string(ebx: u32, edx: u32, ecx: u32) -> String {
    let mut bytes = Vec::with_capacity(12);
    for r in [ebx, edx, ecx] {
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::cpuid::Reg;

    const LEAF7_EBX: FeatureReg = FeatureReg {
        leaf: 7,
        subleaf: 0,
        reg: Reg::Ebx,
    };
    const LEAF1_ECX: FeatureReg = FeatureReg {
        leaf: 1,
        subleaf: 0,
        reg: Reg::Ecx,
    };
    const AVX2: u32 = 1 << 5;
    const AVX512F: u32 = 1 << 16;
    const SSE42: u32 = 1 << 20;

    fn profile(host: &str, vendor: &str, leaf7: u32) -> CpuProfile {
        CpuProfile {
            host: host.into(),
            vendor: vendor.into(),
            features: RequiredFeatures {
                regs: vec![(LEAF1_ECX, SSE42), (LEAF7_EBX, leaf7)],
            },
            msrs: vec![0x10, 0x174, 0xc000_0080],
            tsc_khz: Some(2_000_000),
            tsc_scaling: false,
        }
    }

    fn never(_: u32, _: u32) -> bool {
        false
    }

    #[test]
    fn a_baseline_keeps_what_every_host_offers() {
        let mask = CpuMask::intersect(&[
            profile("new", "GenuineIntel", AVX2 | AVX512F),
            profile("old", "GenuineIntel", AVX2),
        ])
        .unwrap();
        assert_eq!(mask.allowed(LEAF7_EBX), AVX2);
        assert_eq!(mask.allowed(LEAF1_ECX), SSE42);
        assert_eq!(mask.hosts, ["new", "old"]);
        assert_eq!(CpuMask::intersect(&[]), Err(BaselineError::Empty));
        let err = CpuMask::intersect(&[
            profile("a", "GenuineIntel", AVX2),
            profile("b", "AuthenticAMD", AVX2),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("a is GenuineIntel") && text.contains("b is AuthenticAMD"));
    }

    #[test]
    fn every_difference_is_named_at_once() {
        let features = RequiredFeatures {
            regs: vec![(LEAF7_EBX, AVX2 | AVX512F)],
        };
        let msrs: BTreeSet<u32> = [0x10, 0x174, 0x4b56_4d00].into();
        let req = HostRequirements {
            vendor: "GenuineIntel",
            features: &features,
            msrs: &msrs,
            tsc_khz: Some(2_500_000),
        };
        let host = profile("b7", "AuthenticAMD", AVX2);
        let err = check(&req, &host, |a, b| a != b, |_| false).unwrap_err();
        assert_eq!(
            err.vendor,
            Some(("GenuineIntel".into(), "AuthenticAMD".into()))
        );
        assert_eq!(err.missing_features, ["avx512f"]);
        assert_eq!(err.refused_msrs, [0x4b56_4d00]);
        assert_eq!(err.tsc, Some((2_500_000, Some(2_000_000))));
        let text = err.to_string();
        for part in [
            "host b7",
            "AuthenticAMD",
            "avx512f",
            "0x4b564d00",
            "2500000 kHz",
        ] {
            assert!(text.contains(part), "{text} should name {part}");
        }
    }

    #[test]
    fn a_matching_host_passes_and_tsc_scaling_is_asked_only_on_a_difference() {
        let features = RequiredFeatures {
            regs: vec![(LEAF7_EBX, AVX2)],
        };
        let msrs: BTreeSet<u32> = [0x10].into();
        let req = HostRequirements {
            vendor: "GenuineIntel",
            features: &features,
            msrs: &msrs,
            tsc_khz: Some(2_000_000),
        };
        let host = profile("h", "GenuineIntel", AVX2 | AVX512F);
        check(&req, &host, never, |_| panic!("same frequency: no probe")).unwrap();
        let faster = HostRequirements {
            tsc_khz: Some(3_000_000),
            ..req
        };
        check(&faster, &host, |a, b| a != b, |khz| khz == 3_000_000).unwrap();
        // A checkpoint that recorded no vendor (older builds) is not refused for it.
        let unknown = HostRequirements { vendor: "", ..req };
        check(&unknown, &profile("h", "AuthenticAMD", AVX2), never, |_| {
            true
        })
        .unwrap();
    }

    #[test]
    fn vendor_string_reads_leaf_zero() {
        // "GenuineIntel" as CPUID returns it: EBX "Genu", EDX "ineI", ECX "ntel".
        assert_eq!(
            vendor_string(0x756e_6547, 0x4965_6e69, 0x6c65_746e),
            "GenuineIntel"
        );
    }

    #[test]
    fn a_profile_reads_back_from_its_json() {
        let p = profile("h", "GenuineIntel", AVX2);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<CpuProfile>(&json).unwrap(), p);
    }
}
