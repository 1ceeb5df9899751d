//! Firecracker snapshots into and out of thaw checkpoints. A Firecracker memory file is its
//! guest memory regions concatenated (a diff snapshot leaves holes, which read as zeros); it
//! becomes a checkpoint's memory through the ordinary writer (zero pages elided, blocks in
//! physical or traced order, signed and encrypted as any write), and the vmstate file travels
//! as the checkpoint's state blob ([`thaw_format::firecracker_state`]).

use thaw_format::firecracker_state;
use thaw_format::units::format_bytes;

use crate::memory::MemoryRegion;
use crate::reader::CheckpointReader;
use crate::store::Store;
use crate::writer::{write_checkpoint, WriteOptions, WriteSummary};
use crate::CheckpointError;

/// One guest memory region of the memory file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    pub guest_phys_addr: u64,
    pub size: u64,
}

impl std::str::FromStr for RegionSpec {
    type Err = String;

    /// `GPA:SIZE`, each decimal, `0x` hex, or a size with a unit (`3GiB`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (gpa, size) = s
            .split_once(':')
            .ok_or_else(|| format!("region {s:?}: expected GPA:SIZE"))?;
        let number = |v: &str| -> Result<u64, String> {
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).map_err(|e| e.to_string()),
                None => thaw_format::units::parse_size(v),
            }
            .map_err(|e| format!("region {s:?}: {v:?}: {e}"))
        };
        Ok(RegionSpec {
            guest_phys_addr: number(gpa)?,
            size: number(size)?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the regions add up to {regions} bytes but the memory file has {file}")]
    RegionsDoNotCoverFile { regions: u64, file: u64 },
    #[error("the memory file is empty")]
    EmptyMemory,
    #[error("checkpoint {id} holds thaw's own VM state, not a Firecracker vmstate file")]
    NotFirecracker { id: String },
    #[error("checkpoint {id}: its Firecracker vmstate is damaged: {reason}")]
    BadVmstate { id: String, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The regions of a memory file of `file_len` bytes: `regions` if given (they must add up to
/// the file), else one region at guest address 0.
pub fn regions_of(file_len: u64, regions: &[RegionSpec]) -> Result<Vec<RegionSpec>, ImportError> {
    if file_len == 0 {
        return Err(ImportError::EmptyMemory);
    }
    if regions.is_empty() {
        return Ok(vec![RegionSpec {
            guest_phys_addr: 0,
            size: file_len,
        }]);
    }
    let total = regions
        .iter()
        .try_fold(0u64, |a, r| a.checked_add(r.size))
        .unwrap_or(u64::MAX);
    if total != file_len {
        return Err(ImportError::RegionsDoNotCoverFile {
            regions: total,
            file: file_len,
        });
    }
    Ok(regions.to_vec())
}

/// Writes a checkpoint of Firecracker memory `memory` (the file's bytes, holes read as zeros)
/// in `regions` (see [`regions_of`]), with `vmstate` as its state.
pub async fn import_firecracker(
    store: &Store,
    memory: &[u8],
    regions: &[RegionSpec],
    vmstate: Option<&[u8]>,
    options: &WriteOptions,
) -> Result<WriteSummary, ImportError> {
    let regions = regions_of(memory.len() as u64, regions)?;
    let mut parts = Vec::with_capacity(regions.len());
    let mut at = 0usize;
    for r in &regions {
        parts.push(MemoryRegion {
            guest_phys_addr: r.guest_phys_addr,
            bytes: &memory[at..at + r.size as usize],
        });
        at += r.size as usize;
    }
    let state = firecracker_state::wrap(vmstate.unwrap_or_default());
    let summary = write_checkpoint(store, &parts, state, options).await?;
    tracing::info!(
        "imported {} of Firecracker memory as checkpoint {}",
        format_bytes(memory.len() as u64),
        summary.id
    );
    Ok(summary)
}

/// The Firecracker vmstate file kept in an imported checkpoint, byte for byte.
pub fn firecracker_vmstate(reader: &CheckpointReader) -> Result<Vec<u8>, ImportError> {
    let id = reader.manifest().id.to_string();
    let blob = reader.state_blob()?;
    if !firecracker_state::is_firecracker(blob) {
        return Err(ImportError::NotFirecracker { id });
    }
    firecracker_state::unwrap(blob)
        .map(<[u8]>::to_vec)
        .map_err(|e| ImportError::BadVmstate {
            id,
            reason: format!("{e:?}"),
        })
}

/// The checkpoint's memory as a Firecracker memory file (the regions concatenated).
pub async fn firecracker_memory(reader: &CheckpointReader) -> Result<Vec<u8>, ImportError> {
    let mut memory = vec![0u8; reader.manifest().total_bytes() as usize];
    reader.read_all_into(&mut memory, 16).await?;
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_specs_parse_and_must_cover_the_file() {
        let r: RegionSpec = "0:3GiB".parse().unwrap();
        assert_eq!(r.size, 3 << 30);
        let r: RegionSpec = "0x100000000:1GiB".parse().unwrap();
        assert_eq!(r.guest_phys_addr, 1 << 32);
        assert!("3GiB"
            .parse::<RegionSpec>()
            .unwrap_err()
            .contains("GPA:SIZE"));
        assert!("0:lots".parse::<RegionSpec>().is_err());
        let one = regions_of(8192, &[]).unwrap();
        assert_eq!(
            one,
            vec![RegionSpec {
                guest_phys_addr: 0,
                size: 8192
            }]
        );
        let two = [
            RegionSpec {
                guest_phys_addr: 0,
                size: 4096,
            },
            RegionSpec {
                guest_phys_addr: 1 << 32,
                size: 4096,
            },
        ];
        assert_eq!(regions_of(8192, &two).unwrap().len(), 2);
        let err = regions_of(12288, &two).unwrap_err().to_string();
        assert!(
            err.contains("8192 bytes but the memory file has 12288"),
            "{err}"
        );
        assert!(matches!(regions_of(0, &[]), Err(ImportError::EmptyMemory)));
    }

    #[tokio::test]
    async fn imported_memory_and_vmstate_come_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let mut memory = vec![0u8; 64 * 4096];
        for (i, b) in memory.iter_mut().enumerate().skip(4096 * 3).take(4096 * 20) {
            *b = (i % 251) as u8;
        }
        let regions = [
            RegionSpec {
                guest_phys_addr: 0,
                size: 48 * 4096,
            },
            RegionSpec {
                guest_phys_addr: 1 << 32,
                size: 16 * 4096,
            },
        ];
        let vmstate = b"firecracker vmstate \x00\x01\xff".to_vec();
        let options = WriteOptions {
            signing_key: None,
            ..WriteOptions::default()
        };
        let summary = import_firecracker(&store, &memory, &regions, Some(&vmstate), &options)
            .await
            .unwrap();
        assert_eq!(summary.zero_pages, 44, "zero pages elided");
        let reader = CheckpointReader::open(
            &store,
            &summary.id,
            &thaw_format::ManifestTrust::InsecureUnsigned,
        )
        .await
        .unwrap();
        assert_eq!(reader.manifest().regions[1].guest_phys_addr, 1 << 32);
        assert_eq!(firecracker_vmstate(&reader).unwrap(), vmstate);
        assert_eq!(firecracker_memory(&reader).await.unwrap(), memory);
    }
}
