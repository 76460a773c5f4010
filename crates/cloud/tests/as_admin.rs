//! The operator's setup: `init`, the configuration file, adding devices.

use std::path::Path;

use cyphonic_cloud::admin::{self, AdminError};
use cyphonic_cloud::config::ConfigError;
use cyphonic_cloud::CloudConfig;

#[tokio::test]
async fn init_lays_out_a_cloud_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cloud");
    let public = [
        "192.0.2.10".parse().unwrap(),
        "2001:db8::10".parse().unwrap(),
    ];
    let report = admin::init(&dir, "example.internal", &public)
        .await
        .unwrap();
    for path in [
        &report.config_path,
        &report.database_path,
        &report.root_cert_path,
        &report.root_key_path,
        &report.as_cert_path,
        &report.as_key_path,
    ] {
        assert!(path.is_file(), "{} missing", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&report.root_key_path), 0o600);
        assert_eq!(mode(&report.as_key_path), 0o600);
    }

    let cfg = CloudConfig::load(&report.config_path).unwrap();
    assert_eq!(cfg.domain, "example.internal");
    assert_eq!(cfg.public_addrs, public);
    assert_eq!(cfg.data_dir, report.dir);
    assert_eq!(cfg.as_listen.len(), 2);
    assert_eq!(cfg.vip4_prefix.to_string(), "100.64.0.0/10");

    let root_before = std::fs::read(&report.root_key_path).unwrap();
    let err = admin::init(&dir, "example.internal", &public)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AdminError::AlreadyInitialized { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&report.root_key_path).unwrap(), root_before);

    // A folder with only a database in it is not overwritten either.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cloud.db"), b"precious").unwrap();
    let err = admin::init(&other, "example.internal", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AdminError::AlreadyInitialized { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(other.join("cloud.db")).unwrap(), b"precious");
}

#[tokio::test]
async fn init_rejects_a_bad_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let err = admin::init(&tmp.path().join("c"), "Not A Domain", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`domain`"), "{err}");
}

#[test]
fn config_with_an_unknown_key_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.toml");
    std::fs::write(&path, "data_dir = \"/srv/cloud\"\nkeepalive_sec = 10\n").unwrap();
    let err = CloudConfig::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("keepalive_sec"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("hint"), "{text}");
}

#[test]
fn config_values_are_checked_and_relative_paths_resolved() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.toml");
    std::fs::write(&path, "data_dir = \"d\"\nvip4_prefix = \"10.0.0.0/8\"\n").unwrap();
    let text = CloudConfig::load(&path).unwrap_err().to_string();
    assert!(
        text.contains("`vip4_prefix`") && text.contains("100.64.0.0/10"),
        "{text}"
    );

    std::fs::write(&path, "data_dir = \"d\"\nvip6_prefix = \"fd00::1/64\"\n").unwrap();
    let text = CloudConfig::load(&path).unwrap_err().to_string();
    assert!(
        text.contains("vip6_prefix") && text.contains("fd00::/64"),
        "{text}"
    );

    std::fs::write(
        &path,
        "data_dir = \"d\"\nvip4_prefix = \"100.100.0.0/16\"\n",
    )
    .unwrap();
    let cfg = CloudConfig::load(&path).unwrap();
    assert_eq!(cfg.data_dir, tmp.path().join("d"));
    assert_eq!(
        cfg.database(),
        cyphonic_cloud::Database::Sqlite(tmp.path().join("d").join("cloud.db"))
    );
    assert_eq!(cfg.vip4_prefix.to_string(), "100.100.0.0/16");
}

#[tokio::test]
async fn add_device_checks_its_id_and_lists_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let report = admin::init(&tmp.path().join("c"), "cyphonic.internal", &[])
        .await
        .unwrap();
    let cfg = CloudConfig::load(&report.config_path).unwrap();
    for bad in ["N1", "n_1", "-n1", "n1.x", ""] {
        let err = admin::add_device(&cfg, bad, Some("long enough pw"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, AdminError::InvalidDeviceId(_)),
            "{bad}: {err:?}"
        );
    }
    let err = admin::add_device(&cfg, "n1", Some("short"))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::WeakPassword), "{err:?}");

    let n1 = admin::add_device(&cfg, "n1", Some("long enough pw"))
        .await
        .unwrap();
    assert_eq!(n1.device.fqdn, "n1.cyphonic.internal");
    assert_eq!(n1.password.password, "long enough pw");
    assert!(!n1.password.generated);
    let err = admin::add_device(&cfg, "n1", Some("long enough pw"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "device n1 already exists");
    admin::add_device(&cfg, "gw-2", Some("long enough pw"))
        .await
        .unwrap();
    let ids: Vec<_> = admin::list_devices(&cfg)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(ids, ["gw-2", "n1"]);
}

/// Without `--password` the operator gets a random one-time password of
/// 128 bits, different every time, and it is the one the store checks.
#[tokio::test]
async fn add_device_without_a_password_generates_a_random_one() {
    let tmp = tempfile::tempdir().unwrap();
    let report = admin::init(&tmp.path().join("c"), "cyphonic.internal", &[])
        .await
        .unwrap();
    let cfg = CloudConfig::load(&report.config_path).unwrap();
    let a = admin::add_device(&cfg, "a", None).await.unwrap();
    let b = admin::add_device(&cfg, "b", None).await.unwrap();
    assert!(a.password.generated && b.password.generated);
    assert_ne!(a.password.password, b.password.password);
    for pw in [&a.password.password, &b.password.password] {
        let hex: String = pw.chars().filter(|c| *c != '-').collect();
        assert_eq!(hex.len() * 4, 128, "{pw}");
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{pw}");
    }
    assert!(
        !format!("{a:?}").contains(&a.password.password),
        "Debug never shows it"
    );
    let store = cyphonic_cloud::Store::open(&cfg.database()).await.unwrap();
    assert_eq!(
        store
            .check_password("a", &a.password.password)
            .await
            .unwrap()
            .device_id,
        "a"
    );
    assert!(store
        .check_password("a", &b.password.password)
        .await
        .is_err());
    store.close().await;

    // A reset gives a new one; a chosen one is checked as at `add`.
    let reset = admin::reset_device(&cfg, "a", None).await.unwrap();
    assert!(reset.password.generated);
    assert_ne!(reset.password.password, a.password.password);
    assert!(matches!(
        admin::reset_device(&cfg, "a", Some("short")).await,
        Err(AdminError::WeakPassword)
    ));
    let err = admin::reset_device(&cfg, "nobody", None).await.unwrap_err();
    assert_eq!(err.to_string(), "device nobody does not exist");
}
