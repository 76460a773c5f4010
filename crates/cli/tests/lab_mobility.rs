//! `cyphonic lab mobility` end to end (root, as CI has): nodes move under
//! TCP and ping; the TCP connection survives and every tunnel comes back.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_mobility_passes() {
    let Some(stdout) = common::lab_passes("mobility") else {
        return;
    };
    assert!(stdout.contains("survives every move"), "{stdout}");
}
