//! `cyphonic lab trs-health` end to end (root, as CI has): two TRSs
//! (`cloud run --role trs`) report to the NMS; the one carrying a relayed
//! tunnel is killed: the NMS marks it dead within seconds, a new route's
//! grant leaves it out, and the tunnel fails over under its ping.

// The cloud and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_trs_health_passes() {
    let Some(stdout) = common::lab_passes("trs-health") else {
        return;
    };
    for case in [
        "both TRSs report: the NMS counts 2 live",
        "a -> b relayed, its grant naming both TRSs",
        "the NMS marks the killed TRS dead within 5 s",
        "a new route (a -> c) gets a grant without the dead TRS",
        "the relayed tunnel a -> b fails over to the other TRS and keeps carrying ping",
        "the cloud's /metrics counts the TRS Reports, none refused",
    ] {
        assert!(
            stdout.lines().any(|l| l.contains(&format!("ok    {case}"))),
            "{case} missing:\n{stdout}"
        );
    }
}
