#![no_main]
// What this target checks: fuzz/src/transport.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::transport::check(data));
