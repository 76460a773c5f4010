//! `cyphonic lab scale` end to end (root, as CI has): two cloud instances
//! on one PostgreSQL, nodes spread over them, a route across them over the
//! NMS link; one instance is killed under ping and iperf3: the nodes'
//! sessions move to the other with their VIPs, the tunnels go on, a new
//! route comes up.

// The cloud and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_scale_passes() {
    let Some(stdout) = common::lab_passes("scale") else {
        return;
    };
    for case in [
        "two instances on one PostgreSQL, linked; n1, n2 at a, n3 at b",
        "n1 -> n3 by name across the instances",
        "instance b directed n3's side of n1 -> n3 (asked over the link)",
        "n1 and n2 register their sessions at b: same session, same VIPs",
        "iperf3 n2 -> n1 runs through the kill",
        "the ping n1 -> n3 goes on (longest gap after the kill)",
        "a new route n2 -> n3 through b alone",
    ] {
        assert!(
            stdout.lines().any(|l| l.contains(&format!("ok    {case}"))),
            "{case} missing:\n{stdout}"
        );
    }
}
