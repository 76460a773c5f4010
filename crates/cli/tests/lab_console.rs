//! `cyphonic lab console` end to end (root, as CI has): the operator's web
//! console driven in Debian's headless Chromium: login, devices online
//! with their tunnels' paths, a device added and enrolled with the token
//! the page shows, revoked and shown so; a screenshot of each page kept in
//! `target/tmp/lab-artifacts/console`.

// The cloud and the lab are built for Unix only.
#![cfg(unix)]

mod common;

#[test]
fn lab_console_passes() {
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lab-artifacts");
    // Screenshots of an earlier run prove nothing.
    let _ = std::fs::remove_dir_all(artifacts.join("console"));
    let artifacts_s = artifacts.to_string_lossy().to_string();
    let Some(stdout) =
        common::lab_passes_with("console", &[("CYPHONIC_LAB_ARTIFACTS", &artifacts_s)])
    else {
        return;
    };
    for check in [
        "an anonymous visitor is sent to the login page",
        "a wrong password is refused",
        "the administrator logs in",
        "n1 and n2 show online, n1's tunnel to n2 direct over UDP",
        "n1's page lists its tunnel with its path, transport and bytes",
        "the device laptop is added and its one-time token shown",
        "laptop enrolls with the token from the page, registers and shows online",
        "the token works once: a second enrollment with it is refused",
        "revoking laptop from its page: it goes offline, the node is refused",
        "logging out ends the session",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("ok    {check}"))),
            "{check} missing:\n{stdout}"
        );
    }
    for shot in [
        "1-login",
        "2-devices",
        "3-device-n1",
        "4-token",
        "5-laptop-online",
        "6-laptop-revoked",
    ] {
        let png = artifacts.join("console").join(format!("{shot}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "no screenshot {}",
            png.display()
        );
    }
}
