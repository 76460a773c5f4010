#![no_main]
// What this target checks: fuzz/src/reflect.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::reflect::check(data));
