#![no_main]
// What this target checks: fuzz/src/signal.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::signal::check(data));
