//! One function per parser. Each feeds the input to the parser as it
//! arrives, and also, where the parser first checks a checksum, sealed in a
//! valid frame, so mutations reach the fields behind the checksum. Whatever
//! is accepted is re-encoded and must decode to the same value.

use thaw_block_protocol::wire::{
    decode_request, decode_response_header, encode_request, encode_response_header,
    RESPONSE_HEADER_LEN,
};
use thaw_format::block_codec::{decode_block, encode_block, verify_stored};
use thaw_format::dirty_log::{DirtyLog, MAGIC as DIRTY_LOG_MAGIC};
use thaw_format::envelope::seal;
use thaw_format::handoff::Handoff;
use thaw_format::{BlockEntry, BlockOpener, Codec, PageRun, TenantKey, TenantKeys, MANIFEST_MAGIC};
use vmm::persist::state::VmState;

/// A named fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, by the name its corpus directory and cargo-fuzz binary use.
pub const TARGETS: [Target; 6] = [
    Target {
        name: "manifest",
        run: manifest,
    },
    Target {
        name: "handoff",
        run: handoff,
    },
    Target {
        name: "dirty_log",
        run: dirty_log,
    },
    Target {
        name: "state_blob",
        run: state_blob,
    },
    Target {
        name: "block_frames",
        run: block_frames,
    },
    Target {
        name: "block_codec",
        run: block_codec,
    },
];

/// The oldest manifest format version readers still accept.
const OLDEST_MANIFEST_VERSION: u16 = 1;
/// The state blob's frame (vmm::persist::state): magic and current version.
const STATE_MAGIC: [u8; 8] = *b"THAWVMST";
const STATE_VERSION: u16 = 2;

/// The manifest: as an object, and as the body of a frame of every version.
pub fn manifest(data: &[u8]) {
    check_manifest(thaw_format::decode(data));
    // A manifest object as stored: frame and signature section taken apart
    // and checked as a reader does, before any decoding.
    if let Ok(signed) = thaw_format::signature::split(data) {
        let _ = thaw_format::ManifestTrust::Keys(Vec::new()).check(&signed);
        let _ = thaw_format::open_frame(signed.frame);
    }
    for version in OLDEST_MANIFEST_VERSION..=thaw_format::VERSION {
        check_manifest(thaw_format::decode(&seal(MANIFEST_MAGIC, version, data)));
    }
    if let Ok(m) = thaw_format::decode_body(data) {
        let _ = m.validate();
    }
}

fn check_manifest(decoded: Result<thaw_format::Manifest, thaw_format::FormatError>) {
    if let Ok(m) = decoded {
        let again = thaw_format::decode(&thaw_format::encode(&m));
        assert_eq!(again.as_ref(), Ok(&m), "a decoded manifest re-encodes");
        // Accessors a reader calls on any valid manifest.
        let _ = (m.total_pages(), m.stored_bytes(), m.zero_page_count());
    }
}

/// The hand-off message, in whichever form the bytes happen to be.
pub fn handoff(data: &[u8]) {
    if let Ok(h) = Handoff::parse(data) {
        assert_eq!(Handoff::parse(&h.encode()), Ok(h.clone()), "thaw form");
        let fc = Handoff::parse(&h.encode_firecracker()).expect("firecracker form");
        assert_eq!(fc.mappings.len(), h.mappings.len());
        let _ = h.memory_bytes();
        for m in &h.mappings {
            for addr in [m.base_host_virt_addr, m.base_host_virt_addr + m.size - 1] {
                let (_, offset) = h.locate(addr).expect("a mapped address is located");
                assert!(h.region_at(offset).is_some(), "its offset is in a region");
            }
        }
    }
}

/// The dirty log: as an object, and as the body of a valid frame.
pub fn dirty_log(data: &[u8]) {
    for input in [data, &seal(DIRTY_LOG_MAGIC, 1, data)] {
        if let Ok(log) = DirtyLog::decode(input) {
            assert_eq!(DirtyLog::decode(&log.encode()), Ok(log.clone()));
            let _ = log.check_memory(log.page_size, log.total_pages);
            for w in &log.windows {
                let _ = w.page_count();
                // A few pages of each window, never all: a window may name
                // billions, which is exactly what decoding must not expand.
                let _ = w.pages().take(16).count();
            }
        }
    }
    if let Ok(log) = DirtyLog::decode_body(data) {
        let _ = log.validate();
    }
}

/// The VM state blob: as a blob, as the payload of the current frame, and
/// as the payload of version 1's frame.
pub fn state_blob(data: &[u8]) {
    let v1 = {
        let mut blob = STATE_MAGIC.to_vec();
        blob.extend_from_slice(&1u32.to_le_bytes());
        blob.extend_from_slice(&(data.len() as u64).to_le_bytes());
        blob.extend_from_slice(blake3::hash(data).as_bytes());
        blob.extend_from_slice(data);
        blob
    };
    for input in [data, &seal(STATE_MAGIC, STATE_VERSION, data), &v1] {
        if let Ok(state) = VmState::decode(input) {
            let again = VmState::decode(&state.encode().expect("a decoded state encodes"))
                .expect("a decoded state re-encodes");
            assert_eq!(again.vcpus.len(), state.vcpus.len());
            assert_eq!(again.memory, state.memory);
        }
    }
}

/// The block protocol: a request as the server reads it, a response header
/// as the client reads it.
pub fn block_frames(data: &[u8]) {
    if let Ok(req) = decode_request(data) {
        assert_eq!(decode_request(&encode_request(&req)), Ok(req));
    }
    if let Some(header) = data.first_chunk::<RESPONSE_HEADER_LEN>() {
        if let Ok(h) = decode_response_header(header) {
            assert_eq!(decode_response_header(&encode_response_header(h)), Ok(h));
        }
    }
}

/// The block codec: the first byte picks a codec and a block size, the rest
/// are stored bytes checked against that entry (as a client checks what a
/// block server sends); and the input, as raw pages, must round-trip.
pub fn block_codec(data: &[u8]) {
    let Some((&pick, stored)) = data.split_first() else {
        return;
    };
    let codec = if pick & 1 == 0 {
        Codec::Raw
    } else {
        Codec::Lz4
    };
    let pages = u64::from(pick >> 1) % 16 + 1;
    let raw_len = pages * 4096;
    let entry = BlockEntry {
        pages: vec![PageRun {
            start: 0,
            len: pages,
        }],
        object: 0,
        offset: 0,
        stored_len: stored.len() as u64,
        raw_len,
        codec,
        hash: *blake3::hash(&[]).as_bytes(),
        stored_hash: None,
    };
    if let Ok(raw) = decode_block(&BlockOpener::Plain, &entry, stored) {
        assert_eq!(raw.len() as u64, raw_len);
    }
    // The same bytes as an encrypted block: opened (and refused) without panicking.
    let keys = BlockOpener::Encrypted(std::sync::Arc::new(TenantKeys::new(
        &TenantKey::from_bytes([9; 32]),
    )));
    if let Ok(raw) = decode_block(&keys, &entry, stored) {
        assert_eq!(raw.len() as u64, raw_len);
    }
    let _ = verify_stored(&entry, stored);

    // The input as pages (padded to whole ones, at most 16) round-trips.
    let mut raw = data.to_vec();
    raw.truncate(16 * 4096);
    raw.resize(raw.len().div_ceil(4096).max(1) * 4096, 0);
    let encoded = encode_block(&raw);
    let entry = encoded.entry(
        vec![PageRun {
            start: 0,
            len: raw.len() as u64 / 4096,
        }],
        0,
        0,
    );
    assert_eq!(
        decode_block(&BlockOpener::Plain, &entry, &encoded.stored).as_ref(),
        Ok(&raw)
    );
    assert_eq!(verify_stored(&entry, &encoded.stored), Ok(()));
}
