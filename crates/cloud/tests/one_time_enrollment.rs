//! Enrollment passwords are one-time: the enrollment that records a
//! certificate spends the password in the same transaction; only an
//! operator's reset lets the device enroll again, and it revokes what the
//! device had. The real AS over TLS, the real store.

mod common;

use std::time::Duration;

use common::{refusal, CloudDir, Running};
use cyphonic_cloud::admin;
use cyphonic_cloud::as_server::code;
use cyphonic_cloud::run::Roles;
use cyphonic_cloud::store::CertStatus;
use cyphonic_node::as_client;

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn an_enrollment_password_works_once() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    // Without --password the operator gets a generated one; it works once
    // too.
    let generated = dir.add("n2", None).await;
    let cloud = Running::start(&dir, Roles::As).await;

    dir.enroll(dir.as_v4(), "n1", PASSWORD).await.unwrap();
    let (code, message) = refusal(dir.enroll(dir.as_v6(), "n1", PASSWORD).await);
    assert_eq!(code, code::CREDENTIAL_USED);
    assert!(
        message.contains("already used") && message.contains("cyphonic cloud device reset n1"),
        "{message}"
    );
    // A wrong password still says only that: whether the device enrolled
    // is told to whoever holds its password.
    let (code, _) = refusal(dir.enroll(dir.as_v4(), "n1", "not the password").await);
    assert_eq!(code, code::BAD_CREDENTIALS);

    dir.enroll(dir.as_v4(), "n2", &generated).await.unwrap();
    let (code, _) = refusal(dir.enroll(dir.as_v4(), "n2", &generated).await);
    assert_eq!(code, code::CREDENTIAL_USED);

    let store = dir.other_store().await;
    for device in ["n1", "n2"] {
        assert_eq!(
            store.certificates_of(device).await.unwrap().len(),
            1,
            "{device}: one certificate"
        );
    }
    store.close().await;
    cloud.stop().await;
}

/// An enrollment asked again with the spent password and the same key (its
/// first answer lost, or late) gets the certificate issued the first time;
/// with another key it is refused.
#[tokio::test]
async fn an_enrollment_asked_again_with_the_same_key_gets_the_same_certificate() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    let key = cyphonic_pki::NodeKey::generate().unwrap();
    let csr = key.csr_pem("n1.cyphonic.internal").unwrap();
    let ask = |at: std::net::SocketAddr, csr: String| {
        let root = dir.root_der.clone();
        async move { as_client::enroll(&[at], "127.0.0.1", &root, "n1", PASSWORD, &csr).await }
    };
    let first = ask(dir.as_v4(), csr.clone()).await.unwrap();
    let again = ask(dir.as_v4(), csr.clone()).await.unwrap();
    assert_eq!(again.cert_chain_pem, first.cert_chain_pem);
    assert_eq!(again.fqdn, first.fqdn);
    let other = cyphonic_pki::NodeKey::generate().unwrap();
    let (code, _) = refusal(ask(dir.as_v4(), other.csr_pem("n1.cyphonic.internal").unwrap()).await);
    assert_eq!(code, code::CREDENTIAL_USED);
    // A wrong password with the same key gets nothing.
    let root = dir.root_der.clone();
    let wrong = as_client::enroll(&[dir.as_v4()], "127.0.0.1", &root, "n1", "guess", &csr).await;
    assert_eq!(refusal(wrong).0, code::BAD_CREDENTIALS);
    let store = dir.other_store().await;
    assert_eq!(store.certificates_of("n1").await.unwrap().len(), 1);
    store.close().await;
    cloud.stop().await;
}

/// Four enrollments at once with one password (the AS checks four
/// passwords at once): one certificate, three refusals.
#[tokio::test]
async fn concurrent_enrollments_with_one_password_issue_one_certificate() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    let (a, b, c, d) = tokio::join!(
        dir.enroll(dir.as_v4(), "n1", PASSWORD),
        dir.enroll(dir.as_v6(), "n1", PASSWORD),
        dir.enroll(dir.as_v4(), "n1", PASSWORD),
        dir.enroll(dir.as_v6(), "n1", PASSWORD),
    );
    let results = [a, b, c, d];
    let enrolled = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(enrolled, 1, "{results:?}");
    for r in results.into_iter().filter(|r| r.is_err()) {
        assert_eq!(refusal(r).0, code::CREDENTIAL_USED);
    }
    let store = dir.other_store().await;
    assert_eq!(store.certificates_of("n1").await.unwrap().len(), 1);
    store.close().await;
    cloud.stop().await;
}

/// A CSR the AS cannot use spends nothing: the node tries again.
#[tokio::test]
async fn a_refused_csr_does_not_spend_the_password() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    let err = as_client::enroll(
        &[dir.as_v4()],
        "127.0.0.1",
        &dir.root_der,
        "n1",
        PASSWORD,
        "not a CSR",
    )
    .await;
    assert_eq!(refusal(err).0, code::BAD_CSR);
    dir.enroll(dir.as_v4(), "n1", PASSWORD).await.unwrap();
    cloud.stop().await;
}

/// `device reset`: the old password and certificates stop working, the
/// sessions end, and the new password enrolls once.
#[tokio::test]
async fn a_reset_revokes_the_device_and_gives_one_new_enrollment() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    let old = dir.enroll(dir.as_v4(), "n1", PASSWORD).await.unwrap();
    let session = dir.login(&old).await.session_id;

    let reset = admin::reset_device(&dir.cfg, "n1", None).await.unwrap();
    assert_eq!(reset.revoked.len(), 1);
    assert_eq!(reset.ended_sessions, 1);
    let store = dir.other_store().await;
    assert!(store.session(session).await.unwrap().is_none());
    let certs = store.certificates_of("n1").await.unwrap();
    assert_eq!(certs[0].status, CertStatus::Revoked);
    let revoked_serial = certs[0].serial;

    let (code, message) = refusal(
        as_client::login(
            dir.as_v4(),
            "127.0.0.1",
            &dir.root_der,
            &old.0.cert_chain_pem,
            &old.1.to_pem(),
        )
        .await,
    );
    assert_eq!(code, code::CERTIFICATE_REJECTED);
    assert!(message.contains("revoked"), "{message}");
    let (code, _) = refusal(dir.enroll(dir.as_v4(), "n1", PASSWORD).await);
    assert_eq!(code, code::BAD_CREDENTIALS, "the old password is gone");

    let new = dir
        .enroll(dir.as_v4(), "n1", &reset.password.password)
        .await
        .unwrap();
    dir.login(&new).await;
    let (code, _) = refusal(
        dir.enroll(dir.as_v4(), "n1", &reset.password.password)
            .await,
    );
    assert_eq!(code, code::CREDENTIAL_USED);
    // Both were issued within a second or so: tell them apart by serial,
    // not by their order.
    let certs = store.certificates_of("n1").await.unwrap();
    assert_eq!(certs.len(), 2);
    for cert in &certs {
        let expected = if cert.serial == revoked_serial {
            CertStatus::Revoked
        } else {
            CertStatus::Good
        };
        assert_eq!(cert.status, expected, "certificate {}", cert.serial);
    }
    store.close().await;
    cloud.stop().await;
}

/// A store from before this change: a device that had enrolled has spent
/// its password; one that had not keeps it.
#[tokio::test]
async fn an_upgraded_store_counts_earlier_enrollments_as_spent() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.db");
    {
        // The schema of the two earlier migrations, applied by sqlx as an
        // older AS did, and filled as it would have.
        let earlier = tmp.path().join("earlier");
        std::fs::create_dir(&earlier).unwrap();
        for file in [
            "20250101000000_initial.sql",
            "20261202000000_general_nodes.sql",
        ] {
            std::fs::copy(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("migrations")
                    .join(file),
                earlier.join(file),
            )
            .unwrap();
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(earlier.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let hash = cyphonic_pki::hash_password(PASSWORD).unwrap();
        for (id, host) in [("old", 2), ("new", 3)] {
            sqlx::query(
                "INSERT INTO devices (device_id, kind, password_hash, fqdn, vip4, vip6, created_at) \
                 VALUES (?, 'node', ?, ?, ?, ?, 100)",
            )
            .bind(id)
            .bind(&hash)
            .bind(format!("{id}.cyphonic.internal"))
            .bind(format!("100.64.0.{host}"))
            .bind(format!("fd7a:6379:7068::{host}"))
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO certificates \
             (serial, device_id, fqdn, not_before, not_after, issued_at, cert_pem) \
             VALUES (5, 'old', 'old.cyphonic.internal', 100, 99999999999, 200, 'x')",
        )
        .execute(&pool)
        .await
        .unwrap();
        // Two sessions of `old`: only the newer survives the upgrade.
        for (id, created) in [(11, 300), (12, 400)] {
            sqlx::query(
                "INSERT INTO sessions \
                 (session_id, device_id, common_key, cert_serial, created_at, expires_at) \
                 VALUES (?, 'old', zeroblob(32), 5, ?, 99999999999)",
            )
            .bind(id)
            .bind(created)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = cyphonic_cloud::Store::open(&cyphonic_cloud::Database::Sqlite(path.clone()))
        .await
        .unwrap();
    assert!(matches!(
        store.check_password("old", PASSWORD).await,
        Err(cyphonic_cloud::StoreError::CredentialUsed(_))
    ));
    assert_eq!(
        store
            .check_password("new", PASSWORD)
            .await
            .unwrap()
            .device_id,
        "new"
    );
    assert!(store.session(11).await.unwrap().is_none());
    let kept = store.session(12).await.unwrap().unwrap();
    assert_eq!((kept.login_seq, kept.replay_floor), (2, 0));
    // Logins go on numbering after the sessions there were.
    let next = store
        .create_session("old", 5, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(next.login_seq, 3);
    store.close().await;
}
