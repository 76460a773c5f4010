//! The store: VIP assignment, credentials, certificates and sessions, and
//! that all of it survives reopening the database.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use cyphonic_cloud::config::{Ipv4Prefix, Ipv6Prefix};
use cyphonic_cloud::store::{CertStatus, CertificateRecord, DeviceKind, Store, StoreError};

fn prefixes() -> (Ipv4Prefix, Ipv6Prefix) {
    (
        "100.64.0.0/10".parse().unwrap(),
        "fd7a:6379:7068::/48".parse().unwrap(),
    )
}

fn cert(serial: u64, device_id: &str) -> CertificateRecord {
    let now = SystemTime::now();
    CertificateRecord {
        serial,
        device_id: device_id.into(),
        fqdn: format!("{device_id}.cyphonic.internal"),
        not_before: now,
        not_after: now + Duration::from_secs(3600),
        issued_at: now,
        status: CertStatus::Good,
        cert_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
    }
}

#[tokio::test]
async fn vips_are_unique_and_stable_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.db");
    let (p4, p6) = prefixes();
    let store = Store::open(&path).await.unwrap();
    let mut added = Vec::new();
    for i in 1..=5 {
        let id = format!("n{i}");
        let fqdn = format!("{id}.cyphonic.internal");
        added.push(store.add_device(&id, "pw", &fqdn, p4, p6).await.unwrap());
    }
    let v4: HashSet<_> = added.iter().map(|d| d.vip4).collect();
    let v6: HashSet<_> = added.iter().map(|d| d.vip6).collect();
    assert_eq!((v4.len(), v6.len()), (5, 5));
    for d in &added {
        assert!(p4.contains(d.vip4) && p6.contains(d.vip6));
        // Host number 0 (network) and 1 (the cloud) are never given out.
        let host = p4.host_number(d.vip4).unwrap();
        assert!(host >= 2);
        assert_eq!(p6.host_number(d.vip6), Some(host));
        assert_eq!(d.kind, DeviceKind::Node);
    }
    assert_eq!(added[0].vip4.to_string(), "100.64.0.2");

    // Duplicates are refused with a message naming what clashed.
    let err = store
        .add_device("n1", "pw", "other.cyphonic.internal", p4, p6)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "device n1 already exists");
    let err = store
        .add_device("n9", "pw", "n2.cyphonic.internal", p4, p6)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::FqdnTaken(_)), "{err:?}");

    // Removing n3 frees its VIPs; the next device gets the lowest free pair.
    store.remove_device("n3").await.unwrap();
    let n6 = store
        .add_device("n6", "pw", "n6.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    assert_eq!((n6.vip4, n6.vip6), (added[2].vip4, added[2].vip6));
    let err = store.remove_device("n3").await.unwrap_err();
    assert_eq!(err.to_string(), "device n3 does not exist");
    store.close().await;

    let store = Store::open(&path).await.unwrap();
    let devices = store.devices().await.unwrap();
    let ids: Vec<_> = devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2", "n4", "n5", "n6"]);
    for d in &devices {
        let before = added
            .iter()
            .chain([&n6])
            .find(|a| a.device_id == d.device_id)
            .unwrap();
        assert_eq!(d, before, "device changed across reopen");
    }
    assert_eq!(
        store
            .device_by_fqdn("n4.cyphonic.internal")
            .await
            .unwrap()
            .unwrap()
            .vip4,
        added[3].vip4
    );
    assert!(store.device("n3").await.unwrap().is_none());
    // Passwords survive too.
    assert_eq!(
        store.check_password("n2", "pw").await.unwrap().device_id,
        "n2"
    );
}

#[tokio::test]
async fn passwords_are_checked_without_telling_which_part_was_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("cloud.db")).await.unwrap();
    let (p4, p6) = prefixes();
    store
        .add_device("n1", "secret one", "n1.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    assert!(store.check_password("n1", "secret one").await.is_ok());
    let wrong = store.check_password("n1", "secret two").await.unwrap_err();
    let unknown = store.check_password("n2", "secret one").await.unwrap_err();
    assert!(matches!(wrong, StoreError::BadCredentials));
    assert!(matches!(unknown, StoreError::BadCredentials));
    assert_eq!(wrong.to_string(), unknown.to_string());

    store.set_device_disabled("n1", true).await.unwrap();
    assert!(matches!(
        store.check_password("n1", "secret one").await,
        Err(StoreError::DeviceDisabled(_))
    ));
    // A wrong password on a disabled device does not reveal that it exists.
    assert!(matches!(
        store.check_password("n1", "secret two").await,
        Err(StoreError::BadCredentials)
    ));
    assert!(store
        .add_device("n2", "", "n2.cyphonic.internal", p4, p6)
        .await
        .is_err());
}

#[tokio::test]
async fn certificates_and_sessions_persist_and_end() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.db");
    let (p4, p6) = prefixes();
    let store = Store::open(&path).await.unwrap();
    store
        .add_device("n1", "pw", "n1.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    let serial = store.next_serial().await.unwrap();
    assert!(serial > 0 && serial < 1 << 63);
    assert_ne!(serial, store.next_serial().await.unwrap());
    store.record_certificate(&cert(serial, "n1")).await.unwrap();
    assert!(matches!(
        store.record_certificate(&cert(serial, "n1")).await,
        Err(StoreError::SerialExists(_))
    ));
    let session = store
        .create_session("n1", serial, Duration::from_secs(600))
        .await
        .unwrap();
    assert_ne!(session.session_id, 0);
    assert_eq!(session.fqdn, "n1.cyphonic.internal");
    assert!(!format!("{session:?}").contains(&format!("{:?}", session.common_key)));
    store.close().await;

    let store = Store::open(&path).await.unwrap();
    let again = store.session(session.session_id).await.unwrap().unwrap();
    assert_eq!(again, session);
    let later = SystemTime::now() + Duration::from_secs(601);
    assert!(store
        .session_at(session.session_id, later)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .session(session.session_id ^ 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store.certificate(serial).await.unwrap().unwrap().status,
        CertStatus::Good
    );

    // Revocation ends the session and persists.
    store
        .set_certificate_status(serial, CertStatus::Revoked)
        .await
        .unwrap();
    assert!(store.session(session.session_id).await.unwrap().is_none());
    store.close().await;
    let store = Store::open(&path).await.unwrap();
    assert_eq!(
        store.certificate(serial).await.unwrap().unwrap().status,
        CertStatus::Revoked
    );
    assert!(matches!(
        store
            .set_certificate_status(12345, CertStatus::Revoked)
            .await,
        Err(StoreError::NoSuchCertificate(12345))
    ));

    // A session needs a device and a recorded certificate.
    assert!(matches!(
        store
            .create_session("ghost", serial, Duration::from_secs(60))
            .await,
        Err(StoreError::NoSuchDevice(_))
    ));
    assert!(matches!(
        store
            .create_session("n1", 999, Duration::from_secs(60))
            .await,
        Err(StoreError::NoSuchCertificate(999))
    ));
    // Removing a device revokes its certificates but keeps their record.
    let serial2 = store.next_serial().await.unwrap();
    store
        .record_certificate(&cert(serial2, "n1"))
        .await
        .unwrap();
    store.remove_device("n1").await.unwrap();
    assert_eq!(
        store.certificate(serial2).await.unwrap().unwrap().status,
        CertStatus::Revoked
    );
    assert_eq!(store.certificates_of("n1").await.unwrap().len(), 2);
}

#[tokio::test]
async fn general_nodes_belong_to_an_adapter_and_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.db");
    let (p4, p6) = prefixes();
    let store = Store::open(&path).await.unwrap();
    let a1 = store
        .add_device("a1", "adapter password", "a1.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    store
        .add_device("a2", "adapter password", "a2.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    let gn = store
        .add_general_node(
            "a1",
            "02:00:00:00:00:01",
            "gn1",
            "gn1.cyphonic.internal",
            p4,
            p6,
        )
        .await
        .unwrap();
    assert_eq!(gn.device.kind, DeviceKind::General);
    assert_ne!(
        gn.device.vip4, a1.vip4,
        "VIPs from the same pool, never shared"
    );
    store
        .add_general_node(
            "a2",
            "02:00:00:00:00:02",
            "gn2",
            "gn2.cyphonic.internal",
            p4,
            p6,
        )
        .await
        .unwrap();
    // A MAC names one general node; a general node cannot be an adapter.
    assert!(matches!(
        store
            .add_general_node(
                "a2",
                "02:00:00:00:00:01",
                "gn3",
                "gn3.cyphonic.internal",
                p4,
                p6
            )
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store
            .add_general_node(
                "gn1",
                "02:00:00:00:00:03",
                "gn3",
                "gn3.cyphonic.internal",
                p4,
                p6
            )
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(
        store.device("gn3").await.unwrap().is_none(),
        "nothing half-added"
    );
    // An adapter serving general nodes cannot be removed from under them.
    assert!(matches!(
        store.remove_device("a1").await,
        Err(StoreError::InvalidInput(_))
    ));
    store.close().await;

    let store = Store::open(&path).await.unwrap();
    let of_a1 = store.general_nodes(Some("a1")).await.unwrap();
    assert_eq!(of_a1.len(), 1);
    assert_eq!(of_a1[0], gn);
    assert_eq!(store.general_nodes(None).await.unwrap().len(), 2);
    store.remove_device("gn1").await.unwrap();
    assert!(store.general_nodes(Some("a1")).await.unwrap().is_empty());
    store.remove_device("a1").await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn the_policy_document_is_versioned_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.db");
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.policy_version().await.unwrap(), 0);
    assert_eq!(store.policy().await.unwrap(), None);
    let now = SystemTime::now();
    assert_eq!(
        store.set_policy("default = \"deny\"\n", now).await.unwrap(),
        1
    );
    assert_eq!(
        store
            .set_policy("default = \"allow\"\n", now)
            .await
            .unwrap(),
        2
    );
    store.close().await;
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.policy_version().await.unwrap(), 2);
    assert_eq!(
        store.policy().await.unwrap(),
        Some((2, "default = \"allow\"\n".to_owned()))
    );
}

/// Certificates issued within one second (a reset and the enrollment after
/// it, a renewal) are listed in the order they were issued, whatever their
/// random serials, and keep it across a reopen.
#[tokio::test]
async fn certificates_issued_in_one_second_keep_their_order() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cloud.db");
    let (p4, p6) = prefixes();
    let store = Store::open(&path).await.unwrap();
    store
        .add_device("n1", "pw", "n1.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    let issued_at = SystemTime::now();
    let serials = [
        0x7000_0000_0000_0003,
        0x1000_0000_0000_0001,
        0x4000_0000_0000_0002,
    ];
    for serial in serials {
        let mut c = cert(serial, "n1");
        c.issued_at = issued_at;
        store.record_certificate(&c).await.unwrap();
    }
    let listed = |certs: Vec<CertificateRecord>| certs.iter().map(|c| c.serial).collect::<Vec<_>>();
    assert_eq!(listed(store.certificates_of("n1").await.unwrap()), serials);
    store.close().await;
    let store = Store::open(&path).await.unwrap();
    assert_eq!(listed(store.certificates_of("n1").await.unwrap()), serials);
    store.close().await;
}
