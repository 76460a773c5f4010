//! `cyphonic lab` cut short by Ctrl-C (SIGINT) or SIGTERM removes its
//! namespaces, reservation and work directory, its daemons die with it,
//! and it exits 128 + the signal.

// The lab is built for Unix only.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the lab run (its daemons die with it) and removes its
/// namespaces, reservation, work directory and the test's own directory,
/// whether the test passed or failed half-way.
struct Guard {
    child: Child,
    prefix: Option<String>,
    dir: std::path::PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.prefix {
            for ns in namespaces(p) {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("cyphonic-lab-{p}-direct")),
            );
            let _ = std::fs::remove_file(Path::new("/run/cyphonic-lab").join(p));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn namespaces(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// The prefix lab run `pid` reserved (its reservation names the pid).
fn prefix_of(pid: u32) -> Option<String> {
    std::fs::read_dir("/run/cyphonic-lab")
        .ok()?
        .flatten()
        .find_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.starts_with(&format!("pid {pid} "))
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// Node daemons running in the lab's namespaces.
fn daemons(prefix: &str) -> Vec<u32> {
    namespaces(prefix)
        .iter()
        .flat_map(|ns| {
            let out = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("node\0run"))
        })
        .collect()
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn interrupted_lab_cleans_up(signal: libc::c_int) {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = tempfile_dir();
    let log = std::fs::File::create(dir.join("lab.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["lab", "direct"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("run cyphonic lab");
    let mut g = Guard {
        child,
        prefix: None,
        dir: dir.clone(),
    };
    let pid = g.child.id();
    let prefix = wait_for("the lab's reservation", Duration::from_secs(30), || {
        prefix_of(pid)
    });
    g.prefix = Some(prefix.clone());
    let workdir = std::env::temp_dir().join(format!("cyphonic-lab-{prefix}-direct"));
    let pids = wait_for("node daemons in the lab", Duration::from_secs(60), || {
        let d = daemons(&prefix);
        (d.len() >= 2).then_some(d)
    });
    assert!(workdir.is_dir(), "{} missing", workdir.display());

    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    let status = wait_for("the lab to exit", Duration::from_secs(20), || {
        g.child.try_wait().expect("wait")
    });
    let log = std::fs::read_to_string(dir.join("lab.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(128 + signal), "{status:?}\n{log}");
    assert!(
        log.contains(&format!(
            "lab {prefix}: interrupted by signal {signal}; removed"
        )),
        "{log}"
    );
    assert_eq!(namespaces(&prefix), Vec::<String>::new(), "namespaces left");
    assert!(!Path::new("/run/cyphonic-lab").join(&prefix).exists());
    assert!(!workdir.exists(), "{} left", workdir.display());
    wait_for("the daemons to die", Duration::from_secs(10), || {
        (!pids.iter().any(|p| alive(*p))).then_some(())
    });
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cyphonic-test-interrupt-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn ctrl_c_removes_the_lab_and_its_daemons() {
    interrupted_lab_cleans_up(libc::SIGINT);
}

#[test]
fn sigterm_removes_the_lab_and_its_daemons() {
    interrupted_lab_cleans_up(libc::SIGTERM);
}
