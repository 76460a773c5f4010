//! `cyphonic lab netcheck` end to end (root, as CI has): `cyphonic
//! netcheck --json` gives the right NAT kind, reachability, relay latency
//! and port mapper behind each NAT kind and firewall mode, beside a running
//! daemon it leaves undisturbed.

// The cloud and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_netcheck_passes() {
    let Some(stdout) = common::lab_passes("netcheck") else {
        return;
    };
    for case in [
        "netcheck public, dual stack, beside its running daemon",
        "netcheck IPv6 only",
        "netcheck endpoint-independent NAT",
        "netcheck symmetric NAT",
        "netcheck firewall (a) UDP 443 and TCP 443 only",
        "netcheck firewall (b) TCP 443 only",
        "netcheck firewall (c) open",
        "netcheck port-mapping router (miniupnpd)",
        "pub's daemon undisturbed",
        "the cloud's /metrics counts the Reflects answered",
    ] {
        assert!(
            stdout.lines().any(|l| l.contains(&format!("ok    {case}"))),
            "{case} missing:\n{stdout}"
        );
    }
}
