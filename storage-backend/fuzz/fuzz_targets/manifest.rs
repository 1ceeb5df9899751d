//! Feeds arbitrary bytes to the manifest parser: the full decoder (header,
//! checksum, body, validation) and the body decoder alone, which the fuzzer
//! reaches without forging a checksum. Neither may panic; whatever the body
//! decoder accepts must survive validation and re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw_format::{decode, decode_body, encode};

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    if let Ok(m) = decode_body(data) {
        if m.validate().is_ok() {
            assert_eq!(decode(&encode(&m)).as_ref(), Ok(&m));
        }
    }
});
