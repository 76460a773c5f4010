//! Sessions at a running cloud (`cloud run`: AS, NMS, store): the security
//! review's finding — "a device's older sessions stay valid for 24 h and
//! are reloaded from the database with a fresh replay window, so one
//! recorded RegistrationRequest of an older session, replayed from
//! anywhere, takes over the device's registration" — replayed exactly, and
//! refused; sessions that end stop at once in the running NMS; lookups of
//! unknown session IDs are bounded.

mod common;

use std::time::{Duration, SystemTime};

use common::{pending, registration, CloudDir, Running, SignalingNode};
use cyphonic_cloud::admin;
use cyphonic_cloud::run::Roles;
use cyphonic_cloud::store::LOGIN_OVERLAP;
use cyphonic_proto::signal::{Envelope, Message};
use tokio::net::UdpSocket;

/// The replay: n1 registers under session S1 (the attacker records that
/// Registration), logs in again (S2) and registers under S2. The attacker
/// replays S1's Registration from its own address, to the running NMS and
/// to a restarted one, and S2's own recorded Registration to the restarted
/// one. Every replay is refused: nothing is answered to the attacker, and
/// a route to n1 still goes to n1.
#[tokio::test]
async fn a_recorded_registration_of_an_older_session_cannot_take_over() {
    let dir = CloudDir::new().await;
    let pw1 = dir.add("n1", None).await;
    let pw2 = dir.add("n2", None).await;
    let mut cloud = Running::start(&dir, Roles::All).await;
    let n1 = dir.enroll(dir.as_v4(), "n1", &pw1).await.unwrap();
    let n2 = dir.enroll(dir.as_v4(), "n2", &pw2).await.unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let s1 = dir.login(&n1).await;
    let mut old = SignalingNode::new(&s1, dir.nms()).await;
    let recorded_old = old.register().await;
    let s2 = dir.login(&n1).await;
    let mut node = SignalingNode::new(&s2, dir.nms()).await;
    let recorded_new = node.register().await;
    // S2's Registration ended S1, in the store too.
    let store = dir.other_store().await;
    assert!(store.session(s1.session_id).await.unwrap().is_none());
    store.close().await;

    // The replay, to the running NMS.
    let before = cloud.now();
    attacker.send_to(&recorded_old, dir.nms()).await.unwrap();
    cloud
        .wait_for("the replay to be refused", |c| {
            c.rx_ended_session > before.rx_ended_session
                || c.lookups_missing > before.lookups_missing
        })
        .await;
    assert!(pending(&attacker).is_empty(), "the NMS answered the replay");
    // n1's registration is n1's: n2's route to it goes to n1's socket.
    let mut asker = SignalingNode::new(&dir.login(&n2).await, dir.nms()).await;
    asker.register().await;
    asker
        .send(Message::DirectionRequest {
            target: "n1.cyphonic.internal".into(),
        })
        .await;
    match node.recv().await {
        Message::RouteDirectionToResponder(d) => {
            assert_eq!(d.peer.fqdn, "n2.cyphonic.internal")
        }
        other => panic!("expected a route direction at n1, got {}", other.name()),
    }
    assert!(pending(&attacker).is_empty());

    // A restarted NMS: empty replay windows, sessions from the store.
    cloud.stop().await;
    let mut cloud = Running::start(&dir, Roles::All).await;
    for (what, recorded) in [("S1's", &recorded_old), ("S2's", &recorded_new)] {
        let before = cloud.now();
        attacker.send_to(recorded, dir.nms()).await.unwrap();
        cloud
            .wait_for(&format!("{what} replay to be refused"), |c| {
                c.lookups_missing > before.lookups_missing
                    || c.rx_below_floor > before.rx_below_floor
            })
            .await;
        assert!(
            pending(&attacker).is_empty(),
            "the restarted NMS answered {what} replay"
        );
    }
    assert_eq!(cloud.now().registrations, 0);
    // n1 itself carries on under S2: asked to register again, it does.
    node.send(Message::KeepAlive).await;
    assert_eq!(node.recv().await, Message::ReRegister);
    node.register().await;
    cloud.stop().await;
}

/// A Login ends the device's sessions opened more than `LOGIN_OVERLAP`
/// before it, and the running NMS that holds one drops it at once.
#[tokio::test]
async fn a_login_ends_older_sessions_in_the_running_nms_at_once() {
    let dir = CloudDir::new().await;
    let pw = dir.add("n1", None).await;
    let mut cloud = Running::start(&dir, Roles::All).await;
    let n1 = dir.enroll(dir.as_v4(), "n1", &pw).await.unwrap();
    // A session as a Login made it a while ago.
    let store = dir.other_store().await;
    let serial = store.certificates_of("n1").await.unwrap()[0].serial;
    let opened = SystemTime::now() - LOGIN_OVERLAP - Duration::from_secs(5);
    let session = store
        .create_session_at("n1", serial, Duration::from_secs(3600), opened)
        .await
        .unwrap();
    let mut old =
        SignalingNode::for_session(session.session_id, &session.common_key, dir.nms()).await;
    old.register().await;

    let before = cloud.now();
    let new = dir.login(&n1).await;
    assert!(store.session(session.session_id).await.unwrap().is_none());
    assert!(store.session(new.session_id).await.unwrap().is_some());
    store.close().await;
    cloud
        .wait_for("the NMS to drop the superseded session", |c| {
            c.sessions_ended > before.sessions_ended
        })
        .await;
    let before = cloud.now();
    old.send(Message::KeepAlive).await;
    cloud
        .wait_for("the old session's KeepAlive to be dropped", |c| {
            c.rx_ended_session > before.rx_ended_session
        })
        .await;
    assert!(
        pending(&old.sock).is_empty(),
        "the old session was answered"
    );
    cloud.stop().await;
}

/// `cyphonic cloud device reset` runs in another process: the NMS learns
/// from its periodic re-check, and the device's session stops.
#[tokio::test]
async fn a_reset_from_another_process_ends_the_session_in_the_running_nms() {
    let dir = CloudDir::new().await;
    let pw = dir.add("n1", None).await;
    let mut cloud = Running::start(&dir, Roles::All).await;
    let n1 = dir.enroll(dir.as_v4(), "n1", &pw).await.unwrap();
    let mut node = SignalingNode::new(&dir.login(&n1).await, dir.nms()).await;
    node.register().await;
    let before = cloud.now();
    admin::reset_device(&dir.cfg, "n1", None).await.unwrap();
    cloud
        .wait_for("the re-check to end the session", |c| {
            c.sessions_ended > before.sessions_ended
        })
        .await;
    // The reset revoked n1's certificate: the NMS tells n1 itself, once,
    // over its ended session (protocol §5.14), and says nothing else.
    match node.recv().await {
        Message::PeerRevoked { fqdn, .. } => assert_eq!(fqdn, "n1.cyphonic.internal"),
        other => panic!("expected n1's own PeerRevoked, got {other:?}"),
    }
    let before = cloud.now();
    node.send(Message::KeepAlive).await;
    cloud
        .wait_for("the KeepAlive to be dropped", |c| {
            c.rx_ended_session > before.rx_ended_session
        })
        .await;
    assert!(pending(&node.sock).is_empty());
    cloud.stop().await;
}

/// Datagrams with random session IDs from one address cost at most its
/// burst of lookups; a session the store did not have costs one lookup.
#[tokio::test]
async fn random_session_ids_do_not_each_cost_a_lookup() {
    let dir = CloudDir::new().await;
    let mut cloud = Running::start(&dir, Roles::All).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // More than a source's burst, few enough for the socket's buffer.
    const SENT: u64 = 150;
    const FORGED: u64 = 0x5eed_0000_0000;
    let started = std::time::Instant::now();
    for i in 0..SENT {
        let id = FORGED + i;
        let mut forger = SignalingNode::for_session(id, &[i as u8; 32], dir.nms()).await;
        let packet = forger.cipher.seal(&Envelope {
            txid: i,
            message: registration(sock.local_addr().unwrap()),
        });
        sock.send_to(&packet, dir.nms()).await.unwrap();
    }
    let seen = cloud
        .wait_for("every datagram to be handled", |c| {
            c.lookups + c.lookups_limited >= SENT
        })
        .await;
    // The burst, and what the rate refilled meanwhile.
    let rate = u64::from(cyphonic_cloud::nms::NmsConfig::default().lookups_per_source);
    let refilled = rate * started.elapsed().as_millis() as u64 / 1000 + 1;
    assert!(seen.lookups <= 2 * rate + refilled, "{seen:?}");
    assert!(seen.lookups_limited > 0, "{seen:?}");
    let seen = cloud
        .wait_for("the lookups to come back empty", |c| {
            c.lookups_missing == c.lookups
        })
        .await;
    // The first ID again: known to be missing, no second lookup.
    let mut forger = SignalingNode::for_session(FORGED, &[0; 32], dir.nms()).await;
    let packet = forger.cipher.seal(&Envelope {
        txid: 1,
        message: Message::KeepAlive,
    });
    sock.send_to(&packet, dir.nms()).await.unwrap();
    let after = cloud
        .wait_for("the known-missing ID to be dropped", |c| {
            c.rx_ended_session > seen.rx_ended_session
        })
        .await;
    assert_eq!(after.lookups, seen.lookups);
    cloud.stop().await;
}
