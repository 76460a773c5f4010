//! The checks behind cyphonic's fuzz targets, one module per parser
//! family. Each `check` feeds bytes to the crate's real public entry point
//! and asserts what must hold for every input: no panic (the fuzzer's job),
//! and properties that can fail, such as `parse(encode(parse(x))) ==
//! parse(x)`, answers that parse back, and ranges inside the input.
//!
//! The targets in `fuzz_targets/` are one line each; the seed generator
//! (`examples/seeds.rs`) runs every seed it writes through the same checks,
//! so a seed that trips one is caught without the fuzzer.
//!
//! Keys and identities are fixed ([`fixed`]), so the seed generator can
//! seal real packets that the targets open.

pub mod fixed;

pub mod data;
pub mod dhcp4;
pub mod dhcp6;
pub mod dns;
pub mod frame;
pub mod handshake;
pub mod login;
pub mod nms_link;
pub mod ra;
pub mod reflect;
pub mod relay;
pub mod signal;
pub mod transport;
pub mod trs_report;

/// A target's check.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name, with their checks: what `cargo fuzz list`
/// shows and what the seed generator writes corpora for.
pub const TARGETS: &[(&str, Check)] = &[
    ("signal", signal::check),
    ("handshake", handshake::check),
    ("data", data::check),
    ("relay", relay::check),
    ("reflect", reflect::check),
    ("trs-report", trs_report::check),
    ("nms-link", nms_link::check),
    ("transport", transport::check),
    ("login", login::check),
    ("dns", dns::check),
    ("frame", frame::check),
    ("dhcp4", dhcp4::check),
    ("dhcp6", dhcp6::check),
    ("ra", ra::check),
];
