//! The Windows `cyphonic.exe` under wine against a Linux cloud on loopback:
//! it enrolls, logs in and registers, and answers `status --json` over its
//! named pipe. Wine has no TUN driver, so the node runs with `--no-tun`
//! (docs/windows.md says what needs a real Windows machine).
//!
//! Needs the Windows build and wine: `scripts/windows.sh test` sets
//! CYPHONIC_WINDOWS_EXE and CYPHONIC_WINE and runs it.

// The cloud, the adapter and the lab are built for Unix only.
#![cfg(unix)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{add_device, loopback_cloud, start_cloud};
mod wine;
use wine::{win_path, windows_cyphonic, Running, WineServer};

#[test]
#[ignore = "needs the Windows build and wine: scripts/windows.sh test"]
fn a_windows_node_under_wine_enrolls_logs_in_and_registers() {
    let _wineserver = WineServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (cfg, port) = loopback_cloud(d);
    add_device(&cfg, "win1", "a-windows-password");
    let cloud_log = d.join("cloud.log");
    let _cloud = start_cloud(&cfg, &[], Some(&cloud_log));

    // Enroll, retried until the cloud listens.
    let state = d.join("win1");
    let root = d.join("cloud").join("root.pem");
    let cloud_addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let enrolled = loop {
        let out = windows_cyphonic(&[
            "node",
            "enroll",
            "--cloud",
            &cloud_addr,
            "--device",
            "win1",
            "--password",
            "a-windows-password",
            "--ca",
            &win_path(&root),
            "--state-dir",
            &win_path(&state),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() || Instant::now() > deadline {
            break (out, stdout);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        enrolled.0.status.success(),
        "enroll under wine failed: {}\n{}",
        enrolled.1,
        String::from_utf8_lossy(&enrolled.0.stderr)
    );
    assert!(enrolled.1.contains("enrolled as win1."), "{}", enrolled.1);
    assert!(state.join("node.pem").exists() && state.join("node.key").exists());

    // Run without a TUN: Login, then Registration with the NMS.
    let (wine_bin, exe) = wine::wine();
    let node_log = d.join("node.log");
    // Below the loopback cloud's range (20000 and up).
    let tunnel_port = (10_000 + std::process::id() % 10_000).to_string();
    let _node = Running(
        Command::new(wine_bin)
            .arg(exe)
            .args([
                "node",
                "run",
                "--no-tun",
                "--no-port-mapping",
                "--port",
                &tunnel_port,
                "--state-dir",
                &win_path(&state),
            ])
            .env("WINEDEBUG", "-all")
            .env("CYPHONIC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&node_log).unwrap())
            .spawn()
            .expect("start cyphonic.exe node run"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = windows_cyphonic(&["status", "--json", "--state-dir", &win_path(&state)]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
            if v["cloud"]["registered"] == true {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not registered within 60 s; node log:\n{}\ncloud log:\n{}",
            std::fs::read_to_string(&node_log).unwrap_or_default(),
            std::fs::read_to_string(&cloud_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(status["cloud"]["logged_in"] == true, "{status}");
    assert!(
        status["fqdn"]
            .as_str()
            .is_some_and(|f| f.starts_with("win1.")),
        "{status}"
    );
    assert!(
        status["vip4"]
            .as_str()
            .is_some_and(|v| v.starts_with("100.")),
        "{status}"
    );
    assert!(status["tun"].is_null(), "no TUN under wine: {status}");
    let log = std::fs::read_to_string(&node_log).unwrap_or_default();
    assert!(log.contains("Login done"), "{log}");
    assert!(log.contains("Registration done"), "{log}");
}
