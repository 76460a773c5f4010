//! `cyphonic lab firewall` end to end (root, as CI has): nodes behind
//! nftables firewalls reach each other over QUIC on UDP 443 (web-only
//! firewall), TLS over TCP 443 (TCP 443 only) and native UDP (open), never
//! in clear on the TRS's link, and a node moving behind the web-only
//! firewall keeps its TCP transfers.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

use std::process::Command;

mod common;

#[test]
fn lab_firewall_passes() {
    let Some(stdout) = common::lab_passes("firewall") else {
        return;
    };
    for mode in ["mode (a)", "mode (b)", "mode (c)"] {
        assert!(stdout.contains(mode), "{mode} missing:\n{stdout}");
    }
}

/// The transport bench: figures, not a proof (run with --ignored).
#[test]
#[ignore = "measurement run: cargo test -p cyphonic-cli --test lab_firewall -- --ignored"]
fn lab_bench_transports_measures_every_transport() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", "bench-transports"])
        .output()
        .expect("run cyphonic lab bench-transports");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "lab bench-transports failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
