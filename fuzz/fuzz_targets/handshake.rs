#![no_main]
// What this target checks: fuzz/src/handshake.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::handshake::check(data));
