//! The `cyphonic` binary as users run it: clear errors for bad input, and
//! the lab scenarios end to end (these need root, as CI has).

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

use std::process::Command;

mod common;
use common::{is_root, loopback_cloud};

fn cyphonic(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(args)
        .output()
        .expect("run cyphonic")
}

#[test]
fn unknown_scenario_lists_the_scenarios() {
    let out = cyphonic(&["lab", "no-such-scenario"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    if is_root() {
        assert!(err.contains("unknown scenario"), "{err}");
        assert!(
            err.contains("direct") && err.contains("demo") && err.contains("bench"),
            "{err}"
        );
    } else {
        assert!(err.contains("needs root"), "{err}");
    }
}

#[test]
fn missing_cloud_config_names_the_file() {
    let out = cyphonic(&["cloud", "run", "--config", "/nonexistent/cloud.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cloud.toml"), "{err}");
}

#[test]
fn status_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cyphonic(&["status", "--state-dir", dir.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `cyphonic node run` running?"), "{err}");
    // CYPHONIC_STATE_DIR stands for --state-dir.
    let out = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .arg("status")
        .env("CYPHONIC_STATE_DIR", dir.path())
        .output()
        .expect("run cyphonic");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let sock = dir.path().join("node.sock");
    assert!(err.contains(&*sock.to_string_lossy()), "{err}");
}

/// Starts `cloud run` with stderr to `log`, waits (20 s at most) until
/// the log holds `want`, stops it, and returns the log.
fn cloud_log(cfg: &std::path::Path, log: &std::path::Path, extra: &[&str], want: &str) -> String {
    let server = common::start_cloud(cfg, extra, Some(log));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(want) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(server);
    assert!(text.contains(want), "no {want:?} in the log: {text}");
    text
}

/// Logs written to a file (a journal, a redirect) carry no terminal
/// colour codes; `--log-format json` writes one JSON object per line.
#[test]
fn logs_are_plain_text_or_json_lines_off_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = loopback_cloud(dir.path());
    let text = cloud_log(&cfg, &dir.path().join("text.log"), &[], "NMS listening");
    assert!(!text.contains('\x1b'), "escape sequences in {text:?}");
    assert!(
        text.lines()
            .any(|l| l.contains(" INFO ") && l.contains("NMS listening")),
        "{text}"
    );
    let json = cloud_log(
        &cfg,
        &dir.path().join("json.log"),
        &["--log-format", "json"],
        "NMS listening",
    );
    assert!(!json.contains('\x1b'), "escape sequences in {json:?}");
    let mut seen = false;
    for line in json.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        seen |= v["fields"]["message"] == "NMS listening (UDP)" && v["level"] == "INFO";
    }
    assert!(seen, "{json}");
}

#[test]
fn enrolling_with_a_wrong_password_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (cfg, port) = loopback_cloud(d);
    let cloud = d.join("cloud");
    common::add_device(&cfg, "n1", "right-password");
    let server = common::start_cloud(&cfg, &[], None);
    let cloud_addr = format!("127.0.0.1:{port}");
    let root = cloud.join("root.pem");
    let state = d.join("n1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let err = loop {
        let out = cyphonic(&[
            "node",
            "enroll",
            "--cloud",
            &cloud_addr,
            "--device",
            "n1",
            "--password",
            "wrong-password",
            "--ca",
            root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if err.contains("wrong device ID or password") || std::time::Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    drop(server);
    assert!(err.contains("wrong device ID or password"), "{err}");
    assert!(
        !state.join("node.key").exists() || !state.join("node.pem").exists(),
        "no certificate may be stored"
    );
}

/// `cyphonic lab direct`: the README's promise for this issue, end to end.
#[test]
fn lab_direct_passes() {
    common::lab_passes("direct");
}

/// `cyphonic lab demo`, what the README's first command ends with: every
/// kind of path, and the camera behind its adapter.
#[test]
fn lab_demo_passes() {
    let Some(stdout) = common::lab_passes("demo") else {
        return;
    };
    for path in ["direct via", "punched via", "relayed via"] {
        assert!(stdout.contains(path), "no {path} in the demo:\n{stdout}");
    }
    assert!(
        stdout.contains("ok    camera (general node) -> server"),
        "{stdout}"
    );
}

/// `cyphonic cloud general-node add | list | remove` as an operator runs
/// them: the adapter must be a node, MACs are checked and unique, the
/// list shows what was added, and an adapter with general nodes cannot be
/// removed from under them.
#[test]
fn general_nodes_are_managed_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = dir.path().join("cloud");
    let ok = |args: &[&str]| {
        let out = cyphonic(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let err = |args: &[&str]| {
        let out = cyphonic(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
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
    ok(&[
        "cloud",
        "device",
        "add",
        "--config",
        cfg,
        "adapter1",
        "--password",
        "adapter-secret",
    ]);
    let gn = |mac: &str, name: &str, adapter: &str| {
        vec![
            "cloud".to_owned(),
            "general-node".into(),
            "add".into(),
            "--config".into(),
            cfg.into(),
            "--adapter".into(),
            adapter.into(),
            "--mac".into(),
            mac.into(),
            name.into(),
        ]
    };
    let added = ok(&strs(&gn("02:00:5E:10:00:01", "camera", "adapter1")));
    assert!(added.contains("camera.cyphonic.internal"), "{added}");
    assert!(added.contains("02:00:5e:10:00:01"), "{added}");
    ok(&strs(&gn("02:00:5e:10:00:02", "plc", "adapter1")));
    let e = err(&strs(&gn("02:00:5e:10:00:01", "printer", "adapter1")));
    assert!(e.contains("already belongs to a general node"), "{e}");
    let e = err(&strs(&gn("02:00:5e:10:00", "printer", "adapter1")));
    assert!(e.contains("is not a MAC address"), "{e}");
    let e = err(&strs(&gn("02:00:5e:10:00:03", "printer", "nobody")));
    assert!(e.contains("nobody does not exist"), "{e}");
    let e = err(&strs(&gn("02:00:5e:10:00:03", "printer", "camera")));
    assert!(e.contains("only a node can be an adapter"), "{e}");
    let list = ok(&["cloud", "general-node", "list", "--config", cfg]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("camera") && lines[0].contains("adapter1"),
        "{list}"
    );
    assert!(lines[1].starts_with("plc"), "{list}");
    ok(&["cloud", "general-node", "remove", "--config", cfg, "camera"]);
    let list = ok(&[
        "cloud",
        "general-node",
        "list",
        "--config",
        cfg,
        "--adapter",
        "adapter1",
    ]);
    assert_eq!(list.lines().count(), 1, "{list}");
    let e = err(&[
        "cloud",
        "general-node",
        "remove",
        "--config",
        cfg,
        "adapter1",
    ]);
    assert!(e.contains("not a general node"), "{e}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `cloud init --offline-root` keeps the root key out of the cloud's
/// folder; `cloud intermediate renew` says where the root is needed and
/// makes a new intermediate with `--root`.
#[test]
fn the_root_stays_offline_and_renews_the_intermediate_from_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cloud = dir.path().join("cloud");
    let root = dir.path().join("usb-root");
    let out = cyphonic(&[
        "cloud",
        "init",
        "--dir",
        cloud.to_str().unwrap(),
        "--offline-root",
        root.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("usb-root/root.key"), "{stdout}");
    assert!(root.join("root.key").is_file() && root.join("root.pem").is_file());
    assert!(!cloud.join("root.key").exists());
    let cfg = cloud.join("cloud.toml");
    let renew = |extra: &[&str]| {
        let mut args = vec![
            "cloud",
            "intermediate",
            "renew",
            "--config",
            cfg.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cyphonic(&args)
    };
    let out = renew(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root.key") && err.contains("--root"), "{err}");
    let before = std::fs::read(cloud.join("as.pem")).unwrap();
    let out = renew(&["--root", root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("new intermediate CA"));
    assert_ne!(std::fs::read(cloud.join("as.pem")).unwrap(), before);
}
