//! `dns::install` for real, inside `ip netns exec`, where /etc/resolv.conf
//! is a bind mount of /etc/netns/<ns>/resolv.conf (a rename over it fails
//! with EBUSY, so this checks the in-place rewrite). The test re-runs its
//! own binary inside the namespace for each step. Needs root.
#![cfg(target_os = "linux")]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cyphonic_platform::dns::{self, DnsSetup};
use support::{is_root, Netns};

const ORIGINAL: &str = "search example.net\nnameserver 192.0.2.53\noptions edns0\n";
const STEP_ENV: &str = "CYPHONIC_DNS_TEST_STEP";
const STATE_ENV: &str = "CYPHONIC_DNS_TEST_STATE";

/// Removes /etc/netns/<ns> and the state dir even when an assertion fails.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn run_step(ns: &Netns, step: &str, state: &Path) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "netns_step", "--ignored", "--nocapture"])
        .env(STEP_ENV, step)
        .env(STATE_ENV, state)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "step {step} failed:\n{text}");
    text
}

#[test]
fn install_crash_recover_and_restore_inside_a_namespace() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = Netns::new("dns");
    let etc = PathBuf::from("/etc/netns").join(&ns.name);
    let state = std::env::temp_dir().join(format!("{}-state", ns.name));
    let _cleanup = Cleanup(vec![etc.clone(), state.clone()]);
    fs::create_dir_all(&etc).unwrap();
    let resolv = etc.join("resolv.conf");
    fs::write(&resolv, ORIGINAL).unwrap();
    let host_before = fs::read("/etc/resolv.conf").ok();

    let out = run_step(&ns, "install-and-crash", &state);
    assert!(out.contains("upstreams [192.0.2.53:53]"), "{out}");
    let rewritten = fs::read_to_string(&resolv).unwrap();
    assert!(rewritten.starts_with("# cyphonic: overlay domain cy.internal via 127.0.0.153"));
    assert!(rewritten.contains("nameserver 127.0.0.153\nsearch example.net\noptions edns0\n"));
    assert_eq!(
        fs::read("/etc/resolv.conf").ok(),
        host_before,
        "host file touched"
    );

    let out = run_step(&ns, "recover", &state);
    assert!(out.contains("recovered true"), "{out}");
    assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);

    run_step(&ns, "install-and-restore", &state);
    assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
    assert_eq!(
        fs::read("/etc/resolv.conf").ok(),
        host_before,
        "host file touched"
    );
}

/// One step, run by the test above inside the namespace; does nothing in a
/// normal test run.
#[test]
#[ignore = "run by install_crash_recover_and_restore_inside_a_namespace"]
fn netns_step() {
    let (Ok(step), Ok(state)) = (std::env::var(STEP_ENV), std::env::var(STATE_ENV)) else {
        return;
    };
    // Never rewrite a resolv.conf that is not the namespace's bind mount.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/etc/resolv.conf")),
        "/etc/resolv.conf is not a bind mount here; refusing to touch it"
    );
    let setup = DnsSetup {
        listen: "127.0.0.153".parse().unwrap(),
        domain: "cy.internal".into(),
        tun_name: "cy0".into(),
        state_dir: state.into(),
    };
    match step.as_str() {
        "install-and-crash" => {
            let (guard, upstreams) = dns::install(&setup).unwrap();
            println!("upstreams {upstreams:?}");
            let now = fs::read_to_string("/etc/resolv.conf").unwrap();
            assert!(now.contains("nameserver 127.0.0.153"), "{now}");
            std::mem::forget(guard);
        }
        "recover" => println!("recovered {}", dns::recover(&setup.state_dir).unwrap()),
        "install-and-restore" => {
            assert!(!dns::recover(&setup.state_dir).unwrap());
            let (mut guard, _) = dns::install(&setup).unwrap();
            guard.restore().unwrap();
            assert_eq!(fs::read_to_string("/etc/resolv.conf").unwrap(), ORIGINAL);
        }
        other => panic!("unknown step {other}"),
    }
}
