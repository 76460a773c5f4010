//! The lab harness against the real kernel. Needs root; skipped otherwise.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cyphonic_lab::{wait_until, Lab};

macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
    };
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// What a lab left behind after it was dropped; empty when it cleaned up.
fn leftovers(prefix: &str, dir: &Path, namespaces: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    let list = netns_list();
    for ns in namespaces {
        if list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns))
        {
            left.push(format!("namespace {ns}"));
        }
        if Path::new("/etc/netns").join(ns).exists() {
            left.push(format!("/etc/netns/{ns}"));
        }
    }
    if dir.exists() {
        left.push(dir.display().to_string());
    }
    if Path::new("/run/cyphonic-lab").join(prefix).exists() {
        left.push(format!("reservation {prefix}"));
    }
    left
}

/// Two namespaces `a` and `b` joined by a veth with v4 and v6 addresses.
fn pair(lab: &mut Lab, v4: &str, v6: &str) {
    lab.add_ns("a").unwrap();
    lab.add_ns("b").unwrap();
    lab.link(
        "a",
        "veth-a",
        &[&format!("{v4}.1/24"), &format!("{v6}::1/64")],
        "b",
        "veth-b",
        &[&format!("{v4}.2/24"), &format!("{v6}::2/64")],
    )
    .unwrap();
}

fn ping_both_ways(lab: &Lab, v4: &str, v6: &str) {
    lab.sh("a", &format!("ping -c1 -W2 {v4}.2")).unwrap();
    lab.sh("b", &format!("ping -c1 -W2 {v4}.1")).unwrap();
    for (from, to) in [("a", format!("{v6}::2")), ("b", format!("{v6}::1"))] {
        wait_until(
            &format!("ping {to} from {from}"),
            Duration::from_secs(5),
            || lab.sh(from, &format!("ping -6 -c1 -W2 {to}")).map(Some),
        )
        .unwrap();
    }
}

#[test]
fn linked_namespaces_ping_both_ways_and_drop_removes_everything() {
    require_root!();
    let mut lab = Lab::new("harness-ping").unwrap();
    assert!(lab.prefix().starts_with("cy") && lab.prefix().len() == 6);
    pair(&mut lab, "192.0.2", "2001:db8:1");
    let (prefix, dir, namespaces) = (
        lab.prefix().to_owned(),
        lab.dir().to_owned(),
        lab.namespaces().to_vec(),
    );
    assert_eq!(namespaces, [format!("{prefix}-a"), format!("{prefix}-b")]);
    assert!(dir.is_dir());
    assert!(Path::new("/etc/netns")
        .join(&namespaces[0])
        .join("resolv.conf")
        .exists());
    // Distinct explicit ifindexes on the two ends.
    let a = lab.sh("a", "ip -o link show veth-a").unwrap();
    let b = lab.sh(&namespaces[1], "ip -o link show veth-b").unwrap();
    assert!(String::from_utf8_lossy(&a.stdout).starts_with("1000: veth-a@"));
    assert!(String::from_utf8_lossy(&b.stdout).starts_with("1001: veth-b@"));
    // Forwarding off by default, on for routers.
    let fwd = |lab: &Lab| {
        let out = lab.sh("a", "cat /proc/sys/net/ipv4/ip_forward").unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(fwd(&lab), "0");
    lab.router("a").unwrap();
    assert_eq!(fwd(&lab), "1");

    ping_both_ways(&lab, "192.0.2", "2001:db8:1");
    drop(lab);
    assert_eq!(leftovers(&prefix, &dir, &namespaces), Vec::<String>::new());
}

#[test]
fn a_panicking_test_body_still_cleans_up() {
    require_root!();
    type Seen = (String, PathBuf, Vec<String>, u32);
    let seen: Mutex<Option<Seen>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let mut lab = Lab::new("harness-panic").unwrap();
        lab.add_ns("x").unwrap();
        let pid = lab.spawn("x", &["sleep", "100"], "sleeper", &[]).unwrap();
        *seen.lock().unwrap() = Some((
            lab.prefix().to_owned(),
            lab.dir().to_owned(),
            lab.namespaces().to_vec(),
            pid,
        ));
        panic!("test body failed");
    });
    assert!(result.is_err());
    let (prefix, dir, namespaces, pid) = seen.lock().unwrap().take().unwrap();
    assert_eq!(leftovers(&prefix, &dir, &namespaces), Vec::<String>::new());
    assert!(!process_alive(pid), "spawned process survived");
}

#[test]
fn spawn_logs_kill_stops_and_drop_kills_processes_that_ignore_sigterm() {
    require_root!();
    let mut lab = Lab::new("harness-procs").unwrap();
    lab.add_ns("p").unwrap();
    let pid = lab
        .spawn(
            "p",
            &["sh", "-c", "echo hello $GREETING; exec sleep 100"],
            "greeter",
            &[("GREETING", "lab")],
        )
        .unwrap();
    wait_until("greeting in the log", Duration::from_secs(5), || {
        Ok(lab.log("greeter").contains("hello lab").then_some(()))
    })
    .unwrap();
    assert!(lab.try_wait(pid).unwrap().is_none());
    lab.kill(pid).unwrap();
    assert!(!process_alive(pid));
    assert!(lab.kill(pid).is_err(), "pid is no longer tracked");

    let stubborn = lab
        .spawn(
            "p",
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 0.1; done",
            ],
            "stubborn",
            &[],
        )
        .unwrap();
    wait_until("stubborn ready", Duration::from_secs(5), || {
        Ok(lab.log("stubborn").contains("ready").then_some(()))
    })
    .unwrap();
    let start = Instant::now();
    lab.cleanup().unwrap();
    let took = start.elapsed();
    assert!(!process_alive(stubborn));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "SIGKILL after the 2 s grace, took {took:?}"
    );
    lab.cleanup().unwrap();
}

#[test]
fn dnsmasq_record_resolves_from_another_namespace() {
    require_root!();
    let mut lab = Lab::new("harness-dns").unwrap();
    lab.add_ns("client").unwrap();
    lab.add_ns("dns").unwrap();
    lab.link(
        "client",
        "eth0",
        &["198.51.100.1/24"],
        "dns",
        "eth0",
        &["198.51.100.53/24"],
    )
    .unwrap();
    let v4: IpAddr = "203.0.113.7".parse().unwrap();
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    let server: IpAddr = "198.51.100.53".parse().unwrap();
    lab.start_dns_server(
        "dns",
        &[server],
        &[("svc.lab.test", v4), ("svc.lab.test", v6)],
    )
    .unwrap();

    let a = lab
        .sh(
            "client",
            "dig @198.51.100.53 +short +time=2 +tries=1 svc.lab.test A",
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&a.stdout).trim(), "203.0.113.7");
    let aaaa = lab
        .sh(
            "client",
            "dig @198.51.100.53 +short +time=2 +tries=1 svc.lab.test AAAA",
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&aaaa.stdout).trim(), "2001:db8::7");

    // The namespace's own resolv.conf routes glibc lookups there too.
    lab.set_resolv_conf("client", "nameserver 198.51.100.53\n")
        .unwrap();
    let hosts = lab.sh("client", "getent ahostsv4 svc.lab.test").unwrap();
    assert!(String::from_utf8_lossy(&hosts.stdout).contains("203.0.113.7"));
}

#[test]
fn capture_sees_a_sent_marker_and_not_an_absent_one() {
    require_root!();
    let mut lab = Lab::new("harness-capture").unwrap();
    pair(&mut lab, "203.0.113", "2001:db8:2");
    let mut capture = lab.capture("b", "veth-b").unwrap();
    let marker = format!("cyphonic-marker-{}", lab.prefix());
    let absent = format!("cyphonic-absent-{}", lab.prefix());
    let send = format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
         .sendto(b'{marker}', ('203.0.113.2', 9999))"
    );
    lab.sh("a", &format!("python3 -c \"{send}\"")).unwrap();
    let pcap = capture.stop().unwrap();
    // pcap magic (microsecond timestamps, either byte order).
    assert!(
        pcap.starts_with(&[0xd4, 0xc3, 0xb2, 0xa1]) || pcap.starts_with(&[0xa1, 0xb2, 0xc3, 0xd4])
    );
    assert!(capture.contains(marker.as_bytes()), "marker not captured");
    assert!(!capture.contains(absent.as_bytes()));
}

#[test]
fn parallel_labs_use_distinct_prefixes_with_the_same_names_and_addresses() {
    require_root!();
    let mut one = Lab::new("harness-par").unwrap();
    let mut two = Lab::new("harness-par").unwrap();
    assert_ne!(one.prefix(), two.prefix());
    assert_ne!(one.dir(), two.dir());
    pair(&mut one, "192.0.2", "2001:db8:3");
    pair(&mut two, "192.0.2", "2001:db8:3");
    ping_both_ways(&one, "192.0.2", "2001:db8:3");
    ping_both_ways(&two, "192.0.2", "2001:db8:3");
    let two_ns = two.namespaces().to_vec();
    drop(one);
    // Dropping one lab leaves the other intact.
    let list = netns_list();
    assert!(two_ns.iter().all(|ns| list.contains(ns.as_str())));
    ping_both_ways(&two, "192.0.2", "2001:db8:3");
}

#[test]
fn a_lab_refuses_namespaces_it_does_not_own() {
    require_root!();
    let mut one = Lab::new("harness-own").unwrap();
    let two = Lab::new("harness-own").unwrap();
    let ns = one.add_ns("mine").unwrap();
    assert!(two.sh(&ns, "true").is_err());
    assert!(two.sh("mine", "true").is_err());
    assert!(one.sh("mine", "true").is_ok());
    let err = one
        .sh("mine", "echo out; echo err >&2; exit 3")
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("stdout: out") && msg.contains("stderr: err"),
        "{msg}"
    );
    assert!(!one.exec("mine", &["false"]).unwrap().status.success());
}

const CRASH_ENV: &str = "CYPHONIC_LAB_TEST_CRASH";

/// A lab process that dies without running destructors (abort, SIGKILL)
/// leaves no running children behind: they were forked with a parent-death
/// signal. Its namespaces do stay (only the owner removes them); the test
/// deletes them itself.
#[test]
fn children_die_with_a_crashed_lab_process() {
    require_root!();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crashing_lab", "--ignored", "--nocapture"])
        .env(CRASH_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CRASHING "))
        .unwrap_or_else(|| panic!("no CRASHING line: {out:?}"));
    let mut words = line.split_whitespace();
    let pid: u32 = words.next().unwrap().parse().unwrap();
    let ns = words.next().unwrap().to_owned();
    let dir = PathBuf::from(words.next().unwrap());
    let prefix = ns.split('-').next().unwrap().to_owned();
    let cleanup = || {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(Path::new("/run/cyphonic-lab").join(&prefix));
    };
    let gone = wait_until("the orphan to die", Duration::from_secs(2), || {
        Ok((!process_alive(pid)).then_some(()))
    });
    cleanup();
    gone.unwrap();
    assert!(!out.status.success(), "the child was meant to abort");
}

#[test]
#[ignore = "run by children_die_with_a_crashed_lab_process"]
fn crashing_lab() {
    if std::env::var_os(CRASH_ENV).is_none() {
        return;
    }
    let mut lab = Lab::new("harness-crash").unwrap();
    let ns = lab.add_ns("c").unwrap();
    let pid = lab.spawn("c", &["sleep", "100"], "orphan", &[]).unwrap();
    println!("CRASHING {pid} {ns} {}", lab.dir().display());
    std::process::abort();
}

#[test]
fn lab_and_capture_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Lab>();
    assert_send::<cyphonic_lab::Capture>();
}
