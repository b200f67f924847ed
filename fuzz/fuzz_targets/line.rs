//! `cargo +nightly fuzz run line`: the line grammar on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvserve_fuzz::check_line(data));
