//! `database = "postgres://..."` in cloud.toml, as an operator sets it: the
//! operator's commands and `cloud run` keep the cloud's state in
//! PostgreSQL (a private cluster of the test's own), not in the SQLite
//! file `cloud init` made.

#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::{add_device, cyphonic, loopback_cloud, start_cloud};
use cyphonic_cloud::pg_cluster::PgCluster;
use cyphonic_cloud::{Database, Store};

#[test]
fn the_cloud_runs_on_postgres_from_its_configuration() {
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.create_database("cloud").unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (cfg, port) = loopback_cloud(d);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\ndatabase = "), "{text}");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("database = ") {
                format!("database = \"{url}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&cfg, text).unwrap();

    add_device(&cfg, "n1", "right-password");
    let out = cyphonic(&["cloud", "device", "list", "--config", cfg.to_str().unwrap()]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && list.starts_with("n1 "), "{list}");

    let _server = start_cloud(&cfg, &[], Some(&d.join("cloud.log")));
    let root = d.join("cloud").join("root.pem");
    let state = d.join("n1");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cyphonic(&[
            "node",
            "enroll",
            "--cloud",
            &format!("127.0.0.1:{port}"),
            "--device",
            "n1",
            "--password",
            "right-password",
            "--ca",
            root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "enrollment failed: {}\ncloud log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(d.join("cloud.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The device and its certificate are in PostgreSQL; the SQLite file
    // holds nothing.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(&Database::Postgres(url)).await.unwrap();
        let certs = store.certificates_of("n1").await.unwrap();
        assert_eq!(certs.len(), 1);
        store.close().await;
        let sqlite = d.join("cloud").join("cloud.db");
        let store = Store::open(&Database::Sqlite(sqlite)).await.unwrap();
        assert!(store.devices().await.unwrap().is_empty());
        store.close().await;
    });
}
