#![no_main]
// What this target checks: fuzz/src/login.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::login::check(data));
