#![no_main]
// What this target checks: fuzz/src/dhcp4.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::dhcp4::check(data));
