//! libFuzzer driver of `thaw_fuzz::targets::block_codec` (see ../../README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| thaw_fuzz::targets::block_codec(data));
