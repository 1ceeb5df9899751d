//! thaw's checkpoint format, free of I/O and of async: the manifest, its
//! encoding and rules, how blocks are planned from a layout, how block bytes
//! are encoded, the envelope of stored blobs, the dirty log, the message a
//! VMM hands the fetch agent, and the workload file format. docs/format.md is
//! the normative description; the store and the block protocol crates drive
//! these types against object storage and QUIC.

#![forbid(unsafe_code)]

pub mod block_codec;
pub mod block_crypt;
pub mod dirty_log;
mod dirty_profile;
mod encoding;
pub mod envelope;
mod error;
pub mod firecracker_state;
pub mod handoff;
pub mod layout;
pub mod manifest;
pub mod name;
pub mod page_map;
pub mod profile;
pub mod signature;
pub mod units;
mod wire;
pub mod workload;

pub use block_codec::{decode_block, encode_block, is_zero_page, BlockCodecError, EncodedBlock};
pub use block_crypt::{BlockOpener, Cipher, CryptError, Encryption, KeyId, TenantKey, TenantKeys};
pub use dirty_log::{DirtyLog, DirtyLogError, DirtyWindow};
pub use dirty_profile::layout_from_dirty_windows;
pub use encoding::{
    decode, decode_body, encode, open_frame, ManifestFrame, MAX_MANIFEST_BYTES, VERSION,
};
/// The first bytes of every manifest object (its frame's magic).
pub const MANIFEST_MAGIC: [u8; 8] = encoding::MAGIC;
pub use error::{FormatError, PageOwner};
pub use layout::{plan_blocks, LayoutError};
pub use manifest::{BlockEntry, CheckpointId, Codec, Manifest, PageRun, Region, StateBlob};
pub use name::{CheckpointName, NameError, NameRecord};
pub use page_map::PageMap;
pub use profile::{layout_from_traces, with_neighbours};
pub use signature::{ManifestDigest, ManifestTrust, SignatureError};
