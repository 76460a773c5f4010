//! `cyphonic lab revoke` end to end (root, as CI has): a node revoked
//! during ping and iperf3 loses every tunnel within 5 s; the others keep
//! talking.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_revoke_passes() {
    let Some(stdout) = common::lab_passes("revoke") else {
        return;
    };
    assert!(stdout.contains("closes within 5 s"), "{stdout}");
}
