//! `cyphonic lab lifetime` end to end (root, as CI has): tunnels rekey
//! every few seconds and relay grants renew under TCP, without a second
//! lost.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_lifetime_passes() {
    let Some(stdout) = common::lab_passes("lifetime") else {
        return;
    };
    assert!(stdout.contains("rekeyed all along"), "{stdout}");
    assert!(stdout.contains("renewed its grants"), "{stdout}");
}
