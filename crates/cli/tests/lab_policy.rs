//! `cyphonic lab policy` end to end (root, as CI has): a default-deny
//! policy lets n1 reach n2 on ICMP and tcp/5201 only, drops n2's ping of
//! n1, refuses n1 a route to n3, and a new policy withdraws n1 -> n2
//! during a ping within 5 s.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_policy_passes() {
    let Some(stdout) = common::lab_passes("policy") else {
        return;
    };
    assert!(stdout.contains("closes within 5 s"), "{stdout}");
    assert!(stdout.contains("n1 gets no route to n3"), "{stdout}");
}
