#![no_main]
// What this target checks: fuzz/src/nms_link.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::nms_link::check(data));
