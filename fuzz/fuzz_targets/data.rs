#![no_main]
// What this target checks: fuzz/src/data.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::data::check(data));
