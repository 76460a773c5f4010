//! `cyphonic lab domains` end to end (root, as CI has): two cooperating
//! domains, each with its own cloud and root, linked NMS to NMS; a node of
//! each reaches the other by name, directly, and relayed through the
//! other domain's TRS when a firewall blocks the direct path.

// The cloud and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_domains_passes() {
    let Some(stdout) = common::lab_passes("domains") else {
        return;
    };
    for case in [
        "two clouds, two domains, linked; w1 at west, e1 and e2 at east",
        "e1 -> w1.cyphonic.internal by name: direct (east asks west)",
        "w1 -> e1.east.example by name: the same tunnel",
        "w1 -> e2.east.example by name: relayed (e2's firewall drops w1's UDP)",
        "each NMS answered the other's link requests",
    ] {
        assert!(
            stdout.lines().any(|l| l.contains(&format!("ok    {case}"))),
            "{case} missing:\n{stdout}"
        );
    }
}
