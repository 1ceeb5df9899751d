//! Every way a manifest can be malformed, each its own variant so callers and
//! tests can tell them apart and users read what exactly is wrong.

use std::fmt;

/// Where a page was claimed: by a stored block or by the zero-page set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOwner {
    Block(u32),
    ZeroPages,
}

impl fmt::Display for PageOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageOwner::Block(b) => write!(f, "block {b}"),
            PageOwner::ZeroPages => f.write_str("the zero-page set"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("manifest is {len} bytes, shorter than its {min}-byte header and trailer")]
    TooShort { len: usize, min: usize },
    #[error("not a thaw manifest: magic bytes are {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error(
        "manifest format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("manifest body is {declared} bytes by its header but {actual} bytes are present")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("manifest of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    #[error("manifest checksum does not match its contents (corrupted in storage or transit)")]
    ChecksumMismatch,
    #[error("manifest truncated while reading {field}")]
    Truncated { field: &'static str },
    #[error("manifest field {field} holds a varint longer than 64 bits")]
    VarintOverflow { field: &'static str },
    #[error("manifest field {field} holds {value}, which is out of range")]
    ValueTooLarge { field: &'static str, value: u64 },
    #[error("manifest field {field} claims {count} items but only {remaining} bytes remain")]
    CountExceedsInput {
        field: &'static str,
        count: u64,
        remaining: usize,
    },
    #[error("manifest field {field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("manifest body has {0} unexpected bytes after its last field")]
    TrailingBytes(usize),
    #[error("checkpoint id {0:?} is invalid (1-128 characters of A-Z a-z 0-9 . _ -, not starting with '.')")]
    BadCheckpointId(String),
    #[error("page size {0} is invalid (a power of two from 4096 to 1 GiB)")]
    BadPageSize(u64),
    #[error("memory region {index} (base {base:#x}, size {size:#x}) is empty or not page aligned")]
    BadRegion { index: usize, base: u64, size: u64 },
    #[error("memory regions {first} and {second} overlap in guest-physical address space")]
    RegionsOverlap { first: usize, second: usize },
    #[error("memory regions hold {pages} pages, more than the limit of {max}")]
    TooManyPages { pages: u64, max: u64 },
    #[error("object key {0:?} is invalid")]
    BadObjectKey(String),
    #[error("block {block} uses unknown codec {codec}")]
    UnknownCodec { block: u32, codec: u8 },
    #[error("block {block} holds no pages")]
    EmptyBlock { block: u32 },
    #[error("block {block} holds {pages} pages, more than the limit of {max}")]
    BlockTooLarge { block: u32, pages: u64, max: u64 },
    #[error("block {block} has raw length {raw_len}, but its {pages} pages make {expected} bytes")]
    RawLenMismatch {
        block: u32,
        raw_len: u64,
        pages: u64,
        expected: u64,
    },
    #[error("block {block} has stored length {stored_len}, impossible for raw length {raw_len} with its codec")]
    BadStoredLen {
        block: u32,
        stored_len: u64,
        raw_len: u64,
    },
    #[error("block {block} names object {object}, but the manifest lists {objects} objects")]
    ObjectOutOfRange {
        block: u32,
        object: u32,
        objects: usize,
    },
    #[error("block {block} byte range overflows: offset {offset} + length {len}")]
    RangeOverflow { block: u32, offset: u64, len: u64 },
    #[error("page {page} in {owner} lies outside every memory region ({total} pages in all)")]
    PageOutOfRange {
        page: u64,
        total: u64,
        owner: PageOwner,
    },
    #[error("page {page} is listed twice: in {first} and in {second}")]
    PageListedTwice {
        page: u64,
        first: PageOwner,
        second: PageOwner,
    },
    #[error("page {page} is neither in a block nor in the zero-page set")]
    PageMissing { page: u64 },
    #[error("prefetch order is not a permutation of the {blocks} blocks: {reason}")]
    BadPrefetchOrder { blocks: usize, reason: String },
    #[error("VM state blob does not match its hash")]
    StateHashMismatch,
    #[error("block {block} of an encrypted checkpoint has no stored-bytes hash")]
    EncryptedWithoutStoredHash { block: u32 },
    #[error("state blob of an encrypted checkpoint is {len} bytes, too short to be sealed")]
    StateNotSealed { len: usize },
    #[error("manifest field {field} names unknown cipher {value}")]
    UnknownCipher { field: &'static str, value: u8 },
}

crate::envelope::impl_from_envelope!(FormatError);
