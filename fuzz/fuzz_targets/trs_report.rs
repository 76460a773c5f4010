#![no_main]
// What this target checks: fuzz/src/trs_report.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| cyphonic_fuzz::trs_report::check(data));
