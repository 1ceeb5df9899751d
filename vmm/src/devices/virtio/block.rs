//! virtio-blk on a raw image file: read, write, flush and get-id, read-only images, and the
//! capacity in the config space.
//!
//! A request is a descriptor chain: a device-readable 16-byte header (type, reserved, sector),
//! data buffers (device-writable for reads, device-readable for writes), and a device-writable
//! status byte at the end. Requests the device can answer (bad header, bad data buffers, out of
//! range, read-only) get `VIRTIO_BLK_S_IOERR`; unknown types get `VIRTIO_BLK_S_UNSUPP`. A chain
//! with no status byte to answer in (malformed: a loop, an index past the queue, a table
//! outside memory, no writable last descriptor) breaks the device until the driver resets it.

use super::device::{next_chain, Broken, DeviceModel, ModelState};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, GuestMemoryMmap, Permissions};

/// Bytes per sector, the unit of the header's sector and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the one request queue.
const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use (the header and status take two descriptors).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Size of a request header.
const HEADER_LEN: u32 = 16;
/// File I/O goes through a bounce buffer of at most this many bytes at a time.
const CHUNK: usize = 128 << 10;

/// A disk as configured: an image file, read-only or not, and the serial get-id answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Serial number (get-id); the image's file name when None. At most 20 bytes are used.
    pub id: Option<String>,
}

impl DiskConfig {
    /// Parses `PATH[,ro]` (the `--disk` argument).
    pub fn parse(arg: &str) -> Result<DiskConfig, DiskError> {
        let (path, read_only) = match arg.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, opt)) => {
                return Err(DiskError::BadArgument {
                    arg: arg.to_string(),
                    why: format!("unknown option {opt:?} (PATH[,ro] expected)"),
                })
            }
            None => (arg, false),
        };
        if path.is_empty() {
            return Err(DiskError::BadArgument {
                arg: arg.to_string(),
                why: "no image path".into(),
            });
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
            id: None,
        })
    }
}

/// A disk image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("bad --disk {arg:?}: {why}")]
    BadArgument { arg: String, why: String },
    #[error("disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {path} is read-only ({why}): give it as {path},ro")]
    ReadOnlyFile { path: PathBuf, why: String },
    #[error("disk image {path} is not a regular file")]
    NotAFile { path: PathBuf },
}

/// A block device as saved in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub path: PathBuf,
    pub read_only: bool,
    pub id: String,
}

impl From<&BlockState> for DiskConfig {
    fn from(s: &BlockState) -> Self {
        DiskConfig {
            path: s.path.clone(),
            read_only: s.read_only,
            id: Some(s.id.clone()),
        }
    }
}

/// A virtio-blk device model over an open image file.
#[derive(Debug)]
pub struct Block {
    file: File,
    path: PathBuf,
    read_only: bool,
    id: String,
    /// Capacity in bytes: the image's size rounded down to whole sectors.
    capacity: u64,
}

fn default_id(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Block {
    /// Opens the image (for reading and writing unless read-only).
    pub fn open(config: &DiskConfig) -> Result<Block, DiskError> {
        let path = &config.path;
        let meta = std::fs::metadata(path).map_err(|source| DiskError::Open {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(DiskError::NotAFile { path: path.clone() });
        }
        // Root may open a file without write permission for writing anyway: refuse by the mode
        // too, so a read-only image is never written unless it says ro.
        if !config.read_only && meta.permissions().readonly() {
            return Err(DiskError::ReadOnlyFile {
                path: path.clone(),
                why: "no write permission in its mode".into(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EACCES | libc::EPERM | libc::EROFS) if !config.read_only => {
                    DiskError::ReadOnlyFile {
                        path: path.clone(),
                        why: source.to_string(),
                    }
                }
                _ => DiskError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let mut id = config.id.clone().unwrap_or_else(|| default_id(path));
        while id.len() > VIRTIO_BLK_ID_BYTES as usize {
            id.pop();
        }
        Ok(Block {
            file,
            path: path.clone(),
            read_only: config.read_only,
            id,
            capacity: meta.len() / SECTOR_SIZE * SECTOR_SIZE,
        })
    }

    fn config_space(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&(self.capacity / SECTOR_SIZE).to_le_bytes());
        // size_max (offset 8) is not offered; seg_max at 12.
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }

    /// Serves one well-formed chain: returns the status byte and the bytes written into
    /// device-writable data buffers.
    fn execute(
        &self,
        header: &Descriptor,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> (u8, u32) {
        const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
        if header.is_write_only() || header.len() < HEADER_LEN {
            return (IOERR, 0);
        }
        let mut h = [0u8; HEADER_LEN as usize];
        if mem.read_slice(&mut h, header.addr()).is_err() {
            return (IOERR, 0);
        }
        let kind = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = kind == VIRTIO_BLK_T_OUT;
                if write && self.read_only {
                    return (IOERR, 0);
                }
                match self.transfer(write, sector, data, mem) {
                    Some(n) => (VIRTIO_BLK_S_OK as u8, if write { 0 } else { n }),
                    None => (IOERR, 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only && self.file.sync_data().is_err() {
                    return (IOERR, 0);
                }
                (VIRTIO_BLK_S_OK as u8, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let Some(buf) = data.first().filter(|d| d.is_write_only()) else {
                    return (IOERR, 0);
                };
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                id[..self.id.len()].copy_from_slice(self.id.as_bytes());
                let n = (buf.len() as usize).min(id.len());
                if mem.write_slice(&id[..n], buf.addr()).is_err() {
                    return (IOERR, 0);
                }
                (VIRTIO_BLK_S_OK as u8, n as u32)
            }
            _ => (VIRTIO_BLK_S_UNSUPP as u8, 0),
        }
    }

    /// Reads (`write` false) or writes the sectors from `sector` through the data buffers, after
    /// checking them all: the right direction, inside guest memory, whole sectors, inside the
    /// image. Returns the bytes moved; None for a request to fail.
    fn transfer(
        &self,
        write: bool,
        sector: u64,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Option<u32> {
        // Reading the image writes guest memory, and the other way round.
        let access = if write {
            Permissions::Read
        } else {
            Permissions::Write
        };
        let mut total = 0u64;
        for d in data {
            if d.is_write_only() == write || !mem.check_range(d.addr(), d.len() as usize, access) {
                return None;
            }
            total += u64::from(d.len());
        }
        let start = sector.checked_mul(SECTOR_SIZE)?;
        if !total.is_multiple_of(SECTOR_SIZE) || start.checked_add(total)? > self.capacity {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(total as usize)];
        let mut offset = start;
        for d in data {
            let mut done = 0u64;
            while done < u64::from(d.len()) {
                let n = (u64::from(d.len()) - done).min(buf.len() as u64) as usize;
                let gpa = GuestAddress(d.addr().0 + done);
                let chunk = &mut buf[..n];
                if write {
                    mem.read_slice(chunk, gpa).ok()?;
                    self.file.write_all_at(chunk, offset).ok()?;
                } else {
                    self.file.read_exact_at(chunk, offset).ok()?;
                    mem.write_slice(chunk, gpa).ok()?;
                }
                done += n as u64;
                offset += n as u64;
            }
        }
        u32::try_from(total).ok()
    }
}

impl DeviceModel for Block {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| config.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn process_queue(
        &mut self,
        _index: u16,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, Broken> {
        if !queue.is_valid(mem) {
            return Err(Broken(
                "queue not ready or its rings lie outside guest memory".into(),
            ));
        }
        let mut used = false;
        loop {
            let Some((head, descs)) = next_chain(queue, mem, "available ring")? else {
                return Ok(used);
            };
            let status = descs.last().expect("descriptors() returns a chain");
            if descs.len() < 2
                || !status.is_write_only()
                || status.len() < 1
                || !mem.check_range(status.addr(), 1, Permissions::Write)
            {
                return Err(Broken(format!(
                    "request {head} has no device-writable status byte at its end"
                )));
            }
            let (st, written) = self.execute(&descs[0], &descs[1..descs.len() - 1], mem);
            mem.write_slice(&[st], status.addr())
                .map_err(|e| Broken(format!("request {head}: status byte: {e}")))?;
            queue
                .add_used(mem, head, written + 1)
                .map_err(|e| Broken(format!("used ring: {e}")))?;
            used = true;
        }
    }

    fn save(&self) -> ModelState {
        ModelState::Block(BlockState {
            path: self.path.clone(),
            read_only: self.read_only,
            id: self.id.clone(),
        })
    }
}
