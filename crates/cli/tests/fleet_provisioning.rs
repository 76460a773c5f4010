//! Fleets provisioned from factory keys: `cyphonic cloud device add-many`
//! issues certificates for CSRs that `openssl` made, `cyphonic node enroll
//! --certificate` installs one without a password, and the node daemon
//! logs in and registers with it.

// The cloud is built for Unix only.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cyphonic, loopback_cloud};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
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

/// An Ed25519 key and a CSR for it, as a factory makes them with openssl.
fn factory_key(dir: &Path, device: &str) {
    let key = dir.join(format!("{device}.key"));
    let csr = dir.join(format!("{device}.csr"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ],
        vec![
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            &format!("/CN={device}"),
            "-out",
            csr.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn factory_keys_get_certificates_in_bulk_and_nodes_run_with_them() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: needs openssl");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (cfg, port) = loopback_cloud(d);
    let cfg_s = cfg.to_str().unwrap();
    let root = d.join("cloud").join("root.pem");
    let root_s = root.to_str().unwrap();
    // Keys stay at the factory; only the CSRs go to the operator.
    let factory = d.join("factory");
    let csrs = d.join("csrs");
    std::fs::create_dir_all(&factory).unwrap();
    std::fs::create_dir_all(&csrs).unwrap();
    for device in ["sensor-1", "sensor-2", "sensor-3"] {
        factory_key(&factory, device);
        std::fs::rename(
            factory.join(format!("{device}.csr")),
            csrs.join(format!("{device}.csr")),
        )
        .unwrap();
    }
    let csrs_s = csrs.to_str().unwrap();

    let added = ok(&[
        "cloud",
        "device",
        "add-many",
        "--config",
        cfg_s,
        "--csr-dir",
        csrs_s,
    ]);
    assert!(added.starts_with("added 3 device(s)"), "{added}");
    assert!(added.contains("--certificate <device-id>.pem"), "{added}");
    for device in ["sensor-1", "sensor-2", "sensor-3"] {
        let chain = std::fs::read_to_string(csrs.join(format!("{device}.pem"))).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    }
    let list = ok(&["cloud", "device", "list", "--config", cfg_s]);
    assert_eq!(list.matches(".cyphonic.internal").count(), 3, "{list}");
    let first = std::fs::read_to_string(csrs.join("sensor-1.pem")).unwrap();

    // Again with one more: only the new one is added; the others' chains
    // are written again, the same certificates.
    factory_key(&factory, "sensor-4");
    std::fs::rename(factory.join("sensor-4.csr"), csrs.join("sensor-4.csr")).unwrap();
    let again = ok(&[
        "cloud",
        "device",
        "add-many",
        "--config",
        cfg_s,
        "--csr-dir",
        csrs_s,
    ]);
    assert!(
        again.starts_with("added 1 device(s)") && again.contains("(3 added before"),
        "{again}"
    );
    assert_eq!(
        std::fs::read_to_string(csrs.join("sensor-1.pem")).unwrap(),
        first
    );

    // A CSR for a device that exists with another key (here one added with
    // a password) adds nothing at all.
    common::add_device(&cfg, "n1", "n1-password");
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    factory_key(&other, "n1");
    factory_key(&other, "sensor-5");
    let refused = err(&[
        "cloud",
        "device",
        "add-many",
        "--config",
        cfg_s,
        "--csr-dir",
        other.to_str().unwrap(),
    ]);
    assert!(
        refused.contains("already exist") && refused.contains("n1"),
        "{refused}"
    );
    let list = ok(&["cloud", "device", "list", "--config", cfg_s]);
    assert!(!list.contains("sensor-5"), "{list}");
    // A file that is no CSR is named.
    std::fs::write(other.join("sensor-6.csr"), "not a request").unwrap();
    std::fs::remove_file(other.join("n1.csr")).unwrap();
    let bad = err(&[
        "cloud",
        "device",
        "add-many",
        "--config",
        cfg_s,
        "--csr-dir",
        other.to_str().unwrap(),
    ]);
    assert!(bad.contains("sensor-6.csr"), "{bad}");

    // On the device: the certificate with its key, checked before anything
    // is written.
    let cloud_addr = format!("127.0.0.1:{port}");
    let state = d.join("sensor-1-state");
    let state_s = state.to_str().unwrap();
    let key1 = factory.join("sensor-1.key");
    let key2 = factory.join("sensor-2.key");
    let chain1 = csrs.join("sensor-1.pem");
    let enroll = |device: &str, key: &Path| {
        vec![
            "node".to_owned(),
            "enroll".into(),
            "--cloud".into(),
            cloud_addr.clone(),
            "--device".into(),
            device.into(),
            "--certificate".into(),
            chain1.to_str().unwrap().into(),
            "--key".into(),
            key.to_str().unwrap().into(),
            "--ca".into(),
            root_s.into(),
            "--state-dir".into(),
            state_s.into(),
        ]
    };
    let wrong_key = err(&strs(&enroll("sensor-1", &key2)));
    assert!(wrong_key.contains("not for the key"), "{wrong_key}");
    let wrong_device = err(&strs(&enroll("sensor-2", &key1)));
    assert!(
        wrong_device.contains("sensor-1.cyphonic.internal's"),
        "{wrong_device}"
    );
    assert!(!state.join("node.toml").exists());
    let enrolled = ok(&strs(&enroll("sensor-1", &key1)));
    assert!(
        enrolled.starts_with("enrolled as sensor-1.cyphonic.internal"),
        "{enrolled}"
    );
    for file in ["node.toml", "node.key", "node.pem", "root.pem"] {
        assert!(state.join(file).exists(), "{file}");
    }

    // The daemon logs in with the certificate and registers.
    let _cloud = common::start_cloud(&cfg, &[], None);
    // Below the cloud's ports (20000 and up), one per test process.
    let tunnel_port = (10_000 + std::process::id() % 10_000).to_string();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_cyphonic"))
        .args(["node", "run", "--no-tun", "--no-port-mapping"])
        .args(["--state-dir", state_s, "--port", &tunnel_port])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let registered = loop {
        let out = cyphonic(&["status", "--json", "--state-dir", state_s]);
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if status["cloud"]["registered"] == true || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(registered["cloud"]["registered"], true, "{registered}");
    assert_eq!(
        registered["fqdn"], "sensor-1.cyphonic.internal",
        "{registered}"
    );
}
