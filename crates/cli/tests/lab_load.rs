//! `cyphonic lab load` end to end (root, as CI has), small: simulated
//! nodes with real keys log in, register and ask for routes at a few
//! rates, against one instance on SQLite and against two sharing a
//! PostgreSQL database; every node must get through, every request be
//! answered with a route direction, and the figures be printed.

// The cloud and the lab are built for Unix only.
#![cfg(unix)]

mod common;

use std::process::Command;

/// Runs `cyphonic lab load <args>`; its stdout, once it passed every
/// check and each of `rates` has its row with every request answered.
fn load_passes(args: &[&str], rates: &[u32]) -> Option<String> {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", "load"])
        .args(args)
        .output()
        .expect("run cyphonic lab load");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    assert!(
        out.status.success(),
        "lab load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("load: 5 passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    for rate in rates {
        let row = stdout
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("route directions {rate}/s"))
            })
            .unwrap_or_else(|| panic!("no row for {rate}/s:\n{stdout}"));
        // "answered/sent", then per second, p50, p99, errors.
        let done = row.split_whitespace().nth(3).unwrap_or_default();
        let (answered, sent) = done.split_once('/').unwrap_or_default();
        assert!(
            answered == sent && sent.parse::<u64>().is_ok_and(|n| n > 0),
            "{row}"
        );
        assert!(!row.contains("saturated"), "{row}");
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("load summary:"))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    for part in [
        "Login",
        "p50",
        "p99",
        "Registration",
        "route directions",
        "KiB of cloud memory per node",
    ] {
        assert!(summary.contains(part), "{part}: {summary}");
    }
    Some(stdout)
}

fn has_check(stdout: &str, case: &str) -> bool {
    stdout.lines().any(|l| l.contains(&format!("ok    {case}")))
}

#[test]
fn lab_load_serves_every_node_and_every_route_request() {
    let Some(stdout) = load_passes(
        &["--nodes", "200", "--rates", "20,50,100", "--step-secs", "2"],
        &[20, 50, 100],
    ) else {
        return;
    };
    for case in [
        "200 devices provisioned from factory keys",
        "every node logged in at the AS (TLS with its certificate), no error: 200 in",
        "every node registered at the NMS: PathChallenge answered, NAT Probe answered, no error: 200 in",
        "route directions at the lowest rate: every Direction Request answered with a Route Direction",
        "no error or timeout at any rate, KeepAlives all answered: up to 100/s",
    ] {
        assert!(has_check(&stdout, case), "{case} missing:\n{stdout}");
    }
    assert!(stdout.contains("on SQLite"), "{stdout}");
}

/// Two instances on one PostgreSQL: half the routes cross the NMS link.
/// PostgreSQL comes from Debian's package (scripts/deps.sh).
#[test]
fn lab_load_on_two_instances_sharing_postgresql() {
    let Some(stdout) = load_passes(
        &[
            "--nodes",
            "100",
            "--instances",
            "2",
            "--rates",
            "20,50",
            "--step-secs",
            "2",
        ],
        &[20, 50],
    ) else {
        return;
    };
    assert!(
        has_check(&stdout, "every node registered at the NMS") && stdout.contains("on PostgreSQL"),
        "{stdout}"
    );
    let across = stdout
        .lines()
        .find_map(|l| l.split_once("(over the NMS link): "))
        .and_then(|(_, n)| n.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no count of routes across instances:\n{stdout}"));
    assert!(across > 0, "{stdout}");
}
