//! Reading a framed object (a manifest, a dirty log: see
//! [`thaw_format::envelope`]) with a size cap that holds before anything of
//! the object's size is allocated.
//!
//! One ranged GET fetches the first bytes together with the object's size.
//! An object larger than the cap, or larger than its own header declares
//! (plus a little slack for sections that follow the frame, such as a
//! signature), is refused there; only then is the rest read. A small object
//! costs one request, as a plain GET would.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStoreExt};

use crate::store::Store;
use thaw_format::envelope::{declared_frame_len, HEADER_LEN, TRAILER_LEN};

/// Bytes read by the first request: most manifests fit whole.
const FIRST_READ: u64 = 64 << 10;
/// Bytes an object may hold past the frame its header declares.
pub const SLACK: u64 = 1 << 10;
/// The `store` name of the [`object_store::Error::Generic`] that carries a
/// refusal, so callers that map object-store errors can tell it apart.
pub(crate) const REFUSAL: &str = "thaw size cap";

/// Why an object was refused before it was read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{size} bytes, more than the {max} bytes {why}; refused before reading it")]
pub struct TooLarge {
    pub size: u64,
    pub max: u64,
    why: &'static str,
}

/// The object at `key`, a frame of `magic` whose body is at most `max_body`
/// bytes: read whole only when its size fits both that limit and its own
/// header. Refusals are [`object_store::Error::Generic`] errors holding a
/// [`TooLarge`], so callers treat them as any other failed read.
pub async fn read_frame(
    store: &Store,
    key: &Path,
    magic: [u8; 8],
    max_body: u64,
) -> Result<Bytes, object_store::Error> {
    let first = match get(store, key, 0..FIRST_READ).await {
        Ok(first) => first,
        // A range cannot start inside an empty object: it is read as such
        // (and refused by the decoder as too short).
        Err(e @ object_store::Error::NotFound { .. }) => return Err(e),
        Err(e) => match store.object_store().head(key).await {
            Ok(meta) if meta.size == 0 => return Ok(Bytes::new()),
            _ => return Err(e),
        },
    };
    let (head, size) = first;
    check_size(size, &head, magic, max_body)?;
    if head.len() as u64 >= size {
        return Ok(head);
    }
    let (rest, _) = get(store, key, head.len() as u64..size).await?;
    let mut whole = BytesMut::with_capacity(size as usize);
    whole.extend_from_slice(&head);
    whole.extend_from_slice(&rest);
    Ok(whole.freeze())
}

/// Refuses an object of `size` bytes starting with `head` when it is larger
/// than any frame of at most `max_body` body bytes, or than the frame its
/// header declares (each with [`SLACK`]).
fn check_size(size: u64, head: &[u8], magic: [u8; 8], max_body: u64) -> Result<(), TooLarge> {
    let overhead = (HEADER_LEN + TRAILER_LEN) as u64 + SLACK;
    let max = max_body.saturating_add(overhead);
    if size > max {
        return Err(TooLarge {
            size,
            max,
            why: "such an object may hold",
        });
    }
    if let Some(frame) = declared_frame_len(head, magic) {
        let max = frame.saturating_add(SLACK);
        if size > max {
            return Err(TooLarge {
                size,
                max,
                why: "its header declares",
            });
        }
    }
    Ok(())
}

impl From<TooLarge> for object_store::Error {
    fn from(e: TooLarge) -> Self {
        object_store::Error::Generic {
            store: REFUSAL,
            source: Box::new(e),
        }
    }
}

/// A manifest object, capped at the manifest format's limit.
pub async fn read_manifest(store: &Store, key: &Path) -> Result<Bytes, object_store::Error> {
    read_frame(
        store,
        key,
        thaw_format::MANIFEST_MAGIC,
        thaw_format::MAX_MANIFEST_BYTES,
    )
    .await
}

/// A dirty-log object, capped at the dirty log format's limit.
pub async fn read_dirty_log(store: &Store, key: &Path) -> Result<Bytes, object_store::Error> {
    use thaw_format::dirty_log::{MAGIC, MAX_DIRTY_LOG_BYTES};
    read_frame(store, key, MAGIC, MAX_DIRTY_LOG_BYTES).await
}

/// The bytes of `range` (cut at the object's end) and the object's size.
async fn get(
    store: &Store,
    key: &Path,
    range: Range<u64>,
) -> Result<(Bytes, u64), object_store::Error> {
    let opts = GetOptions {
        range: Some(GetRange::Bounded(range)),
        ..Default::default()
    };
    let got = store.object_store().get_opts(key, opts).await?;
    let size = got.meta.size;
    Ok((got.bytes().await?, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use thaw_format::envelope::seal;

    const M: [u8; 8] = *b"TESTTEST";

    async fn put(store: &Store, key: &Path, bytes: Vec<u8>) {
        store.object_store().put(key, bytes.into()).await.unwrap();
    }

    fn refusal(e: object_store::Error) -> TooLarge {
        match e {
            object_store::Error::Generic { store, source } if store == REFUSAL => {
                *source.downcast::<TooLarge>().unwrap()
            }
            other => panic!("not a refusal: {other}"),
        }
    }

    #[tokio::test]
    async fn small_and_large_frames_are_read_whole_with_their_slack() {
        let dir = tempfile::tempdir().unwrap();
        for store in [
            Store::open("memory://").unwrap(),
            Store::open(dir.path().to_str().unwrap()).unwrap(),
        ] {
            let key = Path::from("a/frame");
            for body_len in [0usize, 10, FIRST_READ as usize, 3 * FIRST_READ as usize] {
                let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
                let mut framed = seal(M, 1, &body);
                // A section after the frame, within the slack.
                framed.extend_from_slice(&[9; SLACK as usize]);
                put(&store, &key, framed.clone()).await;
                let got = read_frame(&store, &key, M, 1 << 20).await.unwrap();
                assert_eq!(got, framed, "body of {body_len} bytes");
            }
            put(&store, &key, Vec::new()).await;
            assert!(read_frame(&store, &key, M, 10).await.unwrap().is_empty());
            let missing = read_frame(&store, &Path::from("nope"), M, 10).await;
            assert!(matches!(missing, Err(object_store::Error::NotFound { .. })));
        }
    }

    #[tokio::test]
    async fn objects_over_the_cap_or_their_header_are_refused() {
        let store = Store::open("memory://").unwrap();
        let key = Path::from("frame");
        let framed = seal(M, 1, &[1; 100]);

        // Larger than its header declares (a small header on a big object).
        let mut padded = framed.clone();
        padded.resize(framed.len() + SLACK as usize + 1, 0);
        put(&store, &key, padded.clone()).await;
        let e = refusal(read_frame(&store, &key, M, 1 << 20).await.unwrap_err());
        assert_eq!(e.size, padded.len() as u64);
        assert_eq!(e.max, framed.len() as u64 + SLACK);

        // Larger than any frame may be, whatever its header says.
        let cap = 1000;
        let mut big = seal(M, 1, &vec![2; 5000]);
        put(&store, &key, big.clone()).await;
        let e = refusal(read_frame(&store, &key, M, cap).await.unwrap_err());
        assert_eq!(e.max, cap + (HEADER_LEN + TRAILER_LEN) as u64 + SLACK);
        assert!(e.to_string().contains("refused before reading it"), "{e}");

        // Not a frame at all: read whole when small enough, for the decoder
        // to name what is wrong.
        big.truncate(600);
        big[0] = b'X';
        put(&store, &key, big.clone()).await;
        assert_eq!(read_frame(&store, &key, M, cap).await.unwrap(), big);
    }
}
