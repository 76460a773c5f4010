#![no_main]
// What this target checks: fuzz/src/relay.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::relay::check(data));
