//! `cyphonic lab abuse` end to end (root, as CI has): under a replayed
//! Registration, forged Tunnel Requests, Relay Binds from a /48, random
//! session IDs and password guesses, a fresh node connects in under a
//! second, nothing comes back at more than 3x, memory stops growing.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_abuse_passes() {
    let Some(stdout) = common::lab_passes("abuse") else {
        return;
    };
    assert!(stdout.contains("in under a second"), "{stdout}");
    assert!(stdout.contains("at most 3x back"), "{stdout}");
}
