#![no_main]
// What this target checks: fuzz/src/dns.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::dns::check(data));
