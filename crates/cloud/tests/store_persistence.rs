//! The store: VIP assignment, credentials, certificates, sessions, the
//! NMS's counter floor, the policy and the console's rows, and that all of
//! it survives reopening the database; on SQLite and on PostgreSQL, and
//! with several instances (separate pools, as separate processes have)
//! writing at once.

#[macro_use]
mod backends;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use backends::TestDb;
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

async fn vips_are_unique_and_stable_across_reopen(db: &TestDb) {
    let (p4, p6) = prefixes();
    let store = db.open().await;
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

    let store = db.open().await;
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

async fn passwords_are_checked_without_telling_which_part_was_wrong(db: &TestDb) {
    let store = db.open().await;
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

async fn certificates_and_sessions_persist_and_end(db: &TestDb) {
    let (p4, p6) = prefixes();
    let store = db.open().await;
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

    let store = db.open().await;
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
    let store = db.open().await;
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

async fn general_nodes_belong_to_an_adapter_and_survive_a_reopen(db: &TestDb) {
    let (p4, p6) = prefixes();
    let store = db.open().await;
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

    let store = db.open().await;
    let of_a1 = store.general_nodes(Some("a1")).await.unwrap();
    assert_eq!(of_a1.len(), 1);
    assert_eq!(of_a1[0], gn);
    assert_eq!(store.general_nodes(None).await.unwrap().len(), 2);
    store.remove_device("gn1").await.unwrap();
    assert!(store.general_nodes(Some("a1")).await.unwrap().is_empty());
    store.remove_device("a1").await.unwrap();
    store.close().await;
}

async fn the_policy_document_is_versioned_and_survives_reopen(db: &TestDb) {
    let store = db.open().await;
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
    let store = db.open().await;
    assert_eq!(store.policy_version().await.unwrap(), 2);
    assert_eq!(
        store.policy().await.unwrap(),
        Some((2, "default = \"allow\"\n".to_owned()))
    );
}

/// Certificates issued within one second (a reset and the enrollment after
/// it, a renewal) are listed in the order they were issued, whatever their
/// random serials, and keep it across a reopen.
async fn certificates_issued_in_one_second_keep_their_order(db: &TestDb) {
    let (p4, p6) = prefixes();
    let store = db.open().await;
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
    let store = db.open().await;
    assert_eq!(listed(store.certificates_of("n1").await.unwrap()), serials);
    store.close().await;
}

/// Logins are numbered in order; a Registration raises its session's
/// replay floor (never lowers it, all 64 bits kept) and ends the device's
/// sessions from earlier Logins; a later Login ends the device's sessions
/// opened long enough before it.
async fn logins_are_ordered_and_registrations_keep_replay_floors(db: &TestDb) {
    let (p4, p6) = prefixes();
    let store = db.open().await;
    let mut ended = store.subscribe_ended_sessions();
    for id in ["n1", "n2"] {
        store
            .add_device(id, "pw", &format!("{id}.cyphonic.internal"), p4, p6)
            .await
            .unwrap();
    }
    let (s1, s2) = (store.next_serial().await.unwrap(), 0x10);
    store.record_certificate(&cert(s1, "n1")).await.unwrap();
    store.record_certificate(&cert(s2, "n2")).await.unwrap();
    let t0 = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let a = store.create_session_at("n1", s1, day, t0).await.unwrap();
    let b = store.create_session_at("n2", s2, day, t0).await.unwrap();
    // Within the Login overlap, n1's first session stays.
    let c = store
        .create_session_at("n1", s1, day, t0 + Duration::from_secs(1))
        .await
        .unwrap();
    assert!(a.login_seq < b.login_seq && b.login_seq < c.login_seq);
    assert!(store.session(a.session_id).await.unwrap().is_some());

    // c registers: a (an earlier Login of n1) ends, b (n2's) stays.
    assert_eq!(
        store.record_registration(c.session_id, 100).await.unwrap(),
        [a.session_id]
    );
    assert_eq!(ended.recv().await.unwrap(), [a.session_id]);
    assert!(store.session(a.session_id).await.unwrap().is_none());
    assert!(matches!(
        store.record_registration(a.session_id, 1).await,
        Err(StoreError::NoSuchSession(_))
    ));
    async fn floor_of(store: &Store, session_id: u64) -> u64 {
        let session = store.session(session_id).await.unwrap().unwrap();
        session.replay_floor
    }
    assert_eq!(floor_of(&store, c.session_id).await, 100);
    store.record_registration(c.session_id, 50).await.unwrap();
    assert_eq!(
        floor_of(&store, c.session_id).await,
        100,
        "a floor never goes down"
    );
    // Counters above 2^63 are stored as their bits and compared as u64.
    store
        .record_registration(c.session_id, u64::MAX - 1)
        .await
        .unwrap();
    store
        .record_registration(c.session_id, 1 << 63)
        .await
        .unwrap();
    assert_eq!(floor_of(&store, c.session_id).await, u64::MAX - 1);
    let live = store
        .live_sessions(&[a.session_id, b.session_id, c.session_id], t0)
        .await
        .unwrap();
    assert_eq!(live, HashSet::from([b.session_id, c.session_id]));
    store.close().await;

    // Another instance sees the same; a Login of n1 past the overlap ends
    // c, and the number keeps rising.
    let store = db.open().await;
    assert_eq!(floor_of(&store, c.session_id).await, u64::MAX - 1);
    let d = store
        .create_session_at("n1", s1, day, t0 + Duration::from_secs(60))
        .await
        .unwrap();
    assert!(d.login_seq > c.login_seq);
    assert!(store.session(c.session_id).await.unwrap().is_none());
    assert_eq!(
        store.purge_expired_sessions(t0 + 2 * day).await.unwrap(),
        2,
        "b and d expired"
    );
    store.close().await;
}

/// The NMS's counter floor: each reservation starts at the wall clock or
/// the floor, whichever is higher, and the floor is kept across instances;
/// near 2^64 it is refused, never wrapped.
async fn counter_reservations_never_overlap(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.reserve_signal_counters(5, 10).await.unwrap(), 5);
    store.close().await;
    let store = db.open().await;
    assert_eq!(store.reserve_signal_counters(0, 10).await.unwrap(), 15);
    assert_eq!(store.reserve_signal_counters(100, 10).await.unwrap(), 100);
    // Above 2^63 (a negative BIGINT underneath) it still compares as u64.
    let high = (1 << 63) + 7;
    assert_eq!(store.reserve_signal_counters(high, 10).await.unwrap(), high);
    assert_eq!(
        store.reserve_signal_counters(0, 10).await.unwrap(),
        high + 10
    );
    assert!(matches!(
        store.reserve_signal_counters(u64::MAX - 5, 10).await,
        Err(StoreError::CountersExhausted)
    ));
    store.close().await;
}

/// The console's administrators and their sessions, and the device
/// columns only the console reads.
async fn console_admins_and_sessions_are_kept(db: &TestDb) {
    let (p4, p6) = prefixes();
    let store = db.open().await;
    store.add_admin("bob", "bob's password").await.unwrap();
    store.add_admin("alice", "alice's password").await.unwrap();
    assert!(matches!(
        store.add_admin("alice", "again").await,
        Err(StoreError::AdminExists(_))
    ));
    let names: Vec<_> = store
        .admins()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(store
        .check_admin("alice", "alice's password")
        .await
        .unwrap());
    assert!(!store.check_admin("alice", "bob's password").await.unwrap());
    assert!(!store.check_admin("carol", "anything").await.unwrap());

    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let (alice_token, bob_token) = ([1u8; 32], [2u8; 32]);
    store
        .create_console_session(&alice_token, "alice", "csrf-a", now, hour)
        .await
        .unwrap();
    store
        .create_console_session(&bob_token, "bob", "csrf-b", now, hour)
        .await
        .unwrap();
    let session = store
        .console_session(&alice_token, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (session.admin.as_str(), session.csrf.as_str()),
        ("alice", "csrf-a")
    );
    assert!(store
        .console_session(&alice_token, now + 2 * hour)
        .await
        .unwrap()
        .is_none());
    store.end_console_session(&alice_token, now).await.unwrap();
    assert!(store
        .console_session(&alice_token, now)
        .await
        .unwrap()
        .is_none());
    // Removing an administrator ends its sessions.
    store.remove_admin("bob").await.unwrap();
    assert!(store
        .console_session(&bob_token, now)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.remove_admin("bob").await,
        Err(StoreError::NoSuchAdmin(_))
    ));

    store
        .add_device("n1", "pw", "n1.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    store
        .add_device("n2", "pw", "n2.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    store.record_certificate(&cert(11, "n1")).await.unwrap();
    store.record_certificate(&cert(12, "n1")).await.unwrap();
    store
        .set_certificate_status(11, CertStatus::Revoked)
        .await
        .unwrap();
    let counts = store.certificate_counts().await.unwrap();
    assert_eq!(counts.get("n1"), Some(&(1, 1)));
    assert_eq!(counts.get("n2"), None);
    assert!(store.last_seen().await.unwrap().is_empty());
    let seen = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    store
        .touch_last_seen(&["n2.cyphonic.internal".to_owned()], seen)
        .await
        .unwrap();
    let last = store.last_seen().await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last.get("n2"), Some(&seen));
    store.close().await;
}

/// Devices added at once through two instances (separate pools, as two
/// cloud processes on one database have) all get in, each with VIPs of
/// its own, and together they fill the lowest host numbers without a gap.
async fn two_instances_adding_at_once_fill_the_lowest_vips(db: &TestDb) {
    const PER_INSTANCE: usize = 100;
    let (p4, p6) = prefixes();
    let instances = [db.open().await, db.open().await];
    let mut adds = tokio::task::JoinSet::new();
    for (i, store) in instances.iter().enumerate() {
        for n in 0..PER_INSTANCE {
            let store = store.clone();
            adds.spawn(async move {
                // No password: no argon2 work, only the store's.
                let id = format!("i{i}-d{n}");
                store
                    .add_device_of_kind(
                        DeviceKind::General,
                        &id,
                        None,
                        &format!("{id}.cyphonic.internal"),
                        p4,
                        p6,
                    )
                    .await
            });
        }
    }
    let mut hosts = Vec::new();
    let mut v6 = HashSet::new();
    while let Some(added) = adds.join_next().await {
        let device = added.unwrap().unwrap();
        let host = p4.host_number(device.vip4).unwrap();
        assert_eq!(p6.host_number(device.vip6), Some(host));
        hosts.push(host);
        v6.insert(device.vip6);
    }
    hosts.sort_unstable();
    let expected: Vec<u128> = (2..2 + 2 * PER_INSTANCE as u128).collect();
    assert_eq!(hosts, expected, "distinct, lowest first, no gap");
    assert_eq!(v6.len(), 2 * PER_INSTANCE);
    assert_eq!(
        instances[1].devices().await.unwrap().len(),
        2 * PER_INSTANCE
    );
    for store in &instances {
        store.close().await;
    }
}

/// Logins, counter reservations and policy changes from two instances at
/// once: every Login gets its own number (1 to N, none skipped), every
/// reservation a range no other overlaps, every policy change its own
/// version.
async fn two_instances_number_logins_counters_and_policies_apart(db: &TestDb) {
    const PER_INSTANCE: usize = 50;
    const RANGE: u64 = 1000;
    let (p4, p6) = prefixes();
    let instances = [db.open().await, db.open().await];
    instances[0]
        .add_device("n1", "pw", "n1.cyphonic.internal", p4, p6)
        .await
        .unwrap();
    instances[0]
        .record_certificate(&cert(7, "n1"))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for store in &instances {
        for n in 0..PER_INSTANCE {
            let store = store.clone();
            tasks.spawn(async move {
                let login = store
                    .create_session("n1", 7, Duration::from_secs(600))
                    .await
                    .unwrap()
                    .login_seq;
                let base = store.reserve_signal_counters(0, RANGE).await.unwrap();
                let version = store
                    .set_policy(&format!("# {n}\n"), SystemTime::now())
                    .await
                    .unwrap();
                (login, base, version)
            });
        }
    }
    let (mut logins, mut bases, mut versions) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (login, base, version) = done.unwrap();
        logins.push(login);
        bases.push(base);
        versions.push(version);
    }
    let n = 2 * PER_INSTANCE as u64;
    logins.sort_unstable();
    assert_eq!(logins, (1..=n).collect::<Vec<_>>());
    bases.sort_unstable();
    assert_eq!(bases, (0..n).map(|i| i * RANGE).collect::<Vec<_>>());
    versions.sort_unstable();
    assert_eq!(versions, (1..=n).collect::<Vec<_>>());
    assert_eq!(instances[1].policy_version().await.unwrap(), n);
    for store in &instances {
        store.close().await;
    }
}

on_both_backends!(
    vips_are_unique_and_stable_across_reopen,
    passwords_are_checked_without_telling_which_part_was_wrong,
    certificates_and_sessions_persist_and_end,
    general_nodes_belong_to_an_adapter_and_survive_a_reopen,
    the_policy_document_is_versioned_and_survives_reopen,
    certificates_issued_in_one_second_keep_their_order,
    logins_are_ordered_and_registrations_keep_replay_floors,
    counter_reservations_never_overlap,
    console_admins_and_sessions_are_kept,
    two_instances_adding_at_once_fill_the_lowest_vips,
    two_instances_number_logins_counters_and_policies_apart,
);
