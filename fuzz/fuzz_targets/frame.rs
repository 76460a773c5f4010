#![no_main]
// What this target checks: fuzz/src/frame.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::frame::check(data));
