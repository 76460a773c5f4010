//! `cyphonic cloud device add` and `device reset` as an operator runs
//! them: a generated one-time password is printed once, a chosen one is
//! checked, and a reset prints a new one.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

use std::process::Command;

fn cyphonic(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(args)
        .env_remove("CYPHONIC_DEVICE_PASSWORD")
        .output()
        .expect("run cyphonic")
}

fn ok(args: &[&str]) -> String {
    let out = cyphonic(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(args: &[&str]) -> String {
    let out = cyphonic(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The password on the line that shows it: four groups of 8 hex digits.
fn shown_password(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("one-time enrollment password"))
        .unwrap_or_else(|| panic!("no password shown:\n{stdout}"));
    let password = line.rsplit(' ').next().unwrap().to_owned();
    let groups: Vec<&str> = password.split('-').collect();
    assert_eq!(groups.len(), 4, "{password}");
    assert!(
        groups
            .iter()
            .all(|g| g.len() == 8 && g.chars().all(|c| c.is_ascii_hexdigit())),
        "{password}"
    );
    password
}

#[test]
fn device_add_and_reset_print_one_time_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = dir.path().join("cloud");
    ok(&[
        "cloud",
        "init",
        "--dir",
        cloud.to_str().unwrap(),
        "--public",
        "192.0.2.1",
    ]);
    let cfg = cloud.join("cloud.toml");
    let cfg = cfg.to_str().unwrap();

    let added = ok(&["cloud", "device", "add", "--config", cfg, "n1"]);
    assert!(
        added.starts_with("added n1 as n1.cyphonic.internal"),
        "{added}"
    );
    let first = shown_password(&added);
    assert!(added.contains("--device n1"), "{added}");

    // A chosen password is not echoed, and must be long enough.
    let chosen = ok(&[
        "cloud",
        "device",
        "add",
        "--config",
        cfg,
        "n2",
        "--password",
        "operator's own",
    ]);
    assert!(!chosen.contains("operator's own"), "{chosen}");
    assert!(chosen.contains("works once"), "{chosen}");
    let e = err(&[
        "cloud",
        "device",
        "add",
        "--config",
        cfg,
        "n3",
        "--password",
        "short",
    ]);
    assert!(e.contains("too short"), "{e}");

    let reset = ok(&["cloud", "device", "reset", "--config", cfg, "n1"]);
    assert!(
        reset.starts_with("reset n1: revoked 0 certificate(s), ended 0 session(s)"),
        "{reset}"
    );
    assert_ne!(shown_password(&reset), first);
    let e = err(&["cloud", "device", "reset", "--config", cfg, "nobody"]);
    assert!(e.contains("device nobody does not exist"), "{e}");
}
