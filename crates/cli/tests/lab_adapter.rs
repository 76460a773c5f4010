//! `cyphonic lab adapter`: general nodes behind two adapters, configured by
//! dhclient, dhcpcd and rdisc6, reaching a node and each other by name
//! (needs root and the clients `scripts/deps.sh` installs, as CI has).

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_adapter_passes() {
    let Some(stdout) = common::lab_passes("adapter") else {
        return;
    };
    for what in [
        "gn1 -> gn3, behind two adapters",
        "iperf3 gn1 -> n1",
        "change nothing the adapter gives",
        "gn1's lease is kept",
        "gn3's tunnel follows",
        "gn3 reaches n1 over quic",
        "gn3 reaches n1 over tcp",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("ok ") && l.contains(what)),
            "{what}:\n{stdout}"
        );
    }
}
