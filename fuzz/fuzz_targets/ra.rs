#![no_main]
// What this target checks: fuzz/src/ra.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::ra::check(data));
