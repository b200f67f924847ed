//! `cargo +nightly fuzz run load`: arbitrary bytes as a whole data file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvserve_fuzz::check_load(data));
