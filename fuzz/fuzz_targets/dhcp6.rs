#![no_main]
// What this target checks: fuzz/src/dhcp6.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::dhcp6::check(data));
