//! The security review's finding "signaling nonces start from the NMS's
//! clock (a clock step back plus a restart repeats nonces)": an NMS run
//! takes its counters from a range reserved in the database
//! (`Store::reserve_signal_counters`, `docs/protocol.md` §4.2), so a
//! restart with the clock set back seals no (key, nonce) pair twice, and
//! the node, which keeps its session and its replay window across the
//! restart, accepts the restarted NMS's messages.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use cyphonic_cloud::nms::{Nms, NmsConfig, SessionInfo};
use cyphonic_cloud::run::SIGNAL_COUNTER_RANGE;
use cyphonic_cloud::Store;
use cyphonic_proto::signal::{Envelope, Message, RegistrationRequest, Role, SignalCipher};
use cyphonic_proto::{SessionId, Transport};

const KEY: [u8; 32] = [0x5a; 32];

fn session() -> SessionInfo {
    SessionInfo {
        session_id: SessionId(77),
        common_key: KEY,
        device_id: "n1".into(),
        fqdn: "n1.cyphonic.internal".into(),
        vip4: "100.64.0.2".parse().unwrap(),
        vip6: "fd7a:6379:7068::2".parse().unwrap(),
        cert_serial: 1,
    }
}

/// One NMS run against the node: the run loads the session (as from the
/// database), the node registers and sends KeepAlives; returns the nonces
/// of everything the NMS sealed, each of which the node opened.
fn one_run(nms: &mut Nms, node: &mut SignalCipher, txid: &mut u64) -> Vec<[u8; 12]> {
    let now = Instant::now();
    let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
    let from: SocketAddr = "198.51.100.20:4501".parse().unwrap();
    nms.handle_session(now, session());
    let mut messages = vec![Message::RegistrationRequest(RegistrationRequest {
        static_public: [1; 32],
        tunnel_port: 4501,
        local_addrs: vec![from],
        transport: Transport::Udp,
        quic_port: 0,
        mapped: None,
    })];
    messages.extend(std::iter::repeat_n(Message::KeepAlive, 3));
    let mut nonces = Vec::new();
    for message in messages {
        *txid += 1;
        let packet = node.seal(&Envelope {
            txid: *txid,
            message,
        });
        nms.handle_datagram(now, local, from, &packet);
        let mut answered = 0;
        while let Some(t) = nms.poll_transmit() {
            let env = node
                .open(&t.payload)
                .unwrap_or_else(|e| panic!("the node refused the NMS's answer: {e}"));
            nonces.push(t.payload[12..24].try_into().unwrap());
            if env.message == Message::PathChallenge {
                // The node's address is new to this run: it echoes.
                let echo = node.seal(&Envelope {
                    txid: env.txid,
                    message: Message::PathResponse,
                });
                nms.handle_datagram(now, local, from, &echo);
                continue;
            }
            assert_eq!(env.txid, *txid);
            answered += 1;
        }
        assert_eq!(answered, 1, "one answer per request");
    }
    nonces
}

/// Run 1 starts at wall clock T; the NMS restarts and its clock reads T + 1
/// µs (it was set back by almost as long as run 1 lasted). Under the
/// session's one common key, no nonce of run 2 is one of run 1, and the
/// node's window, which saw run 1's counters, accepts run 2's. The
/// database is closed and opened again between runs, as a restart does.
#[tokio::test]
async fn a_restart_with_the_clock_set_back_repeats_no_nonce_and_the_node_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("cloud.db");
    let t: u64 = 1_780_000_000_000_000;
    let mut node = SignalCipher::new(SessionId(77), &KEY, Role::Node, t - 5_000_000);
    let mut txid = 0;
    let mut seen = BTreeSet::new();
    let mut bases = Vec::new();
    for (run, wall) in [(1u8, t), (2, t + 1), (3, t - 3_600_000_000)] {
        let store = Store::open(&cyphonic_cloud::Database::Sqlite(db.clone()))
            .await
            .unwrap();
        let base = store
            .reserve_signal_counters(wall, SIGNAL_COUNTER_RANGE)
            .await
            .unwrap();
        store.close().await;
        bases.push(base);
        let mut nms = Nms::new(NmsConfig::default(), [run; 32], base)
            .with_counter_limit(base + SIGNAL_COUNTER_RANGE);
        for nonce in one_run(&mut nms, &mut node, &mut txid) {
            assert!(
                seen.insert(nonce),
                "run {run} repeated the nonce {nonce:02x?}"
            );
        }
    }
    // Three runs of four answers each, plus each run's Path Challenge.
    assert_eq!(seen.len(), 15);
    // Each run starts where the one before reserved up to.
    assert_eq!(
        bases,
        [t, t + SIGNAL_COUNTER_RANGE, t + 2 * SIGNAL_COUNTER_RANGE]
    );
}

/// A run never seals past its reservation: the message is not sent, and
/// counted.
#[test]
fn a_run_seals_nothing_past_its_reserved_range() {
    let base = 1_000;
    let mut nms = Nms::new(NmsConfig::default(), [1; 32], base).with_counter_limit(base + 2);
    let mut node = SignalCipher::new(SessionId(77), &KEY, Role::Node, 1);
    let now = Instant::now();
    let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
    let from: SocketAddr = "198.51.100.20:4501".parse().unwrap();
    nms.handle_session(now, session());
    let mut sent = Vec::new();
    for (txid, message) in (1..).zip([
        Message::RegistrationRequest(RegistrationRequest {
            static_public: [1; 32],
            tunnel_port: 4501,
            local_addrs: vec![from],
            transport: Transport::Udp,
            quic_port: 0,
            mapped: None,
        }),
        Message::KeepAlive,
        Message::KeepAlive,
    ]) {
        let packet = node.seal(&Envelope { txid, message });
        nms.handle_datagram(now, local, from, &packet);
        while let Some(t) = nms.poll_transmit() {
            sent.push(u64::from_be_bytes(t.payload[16..24].try_into().unwrap()));
        }
    }
    // The first registration's Path Challenge and its answer take the two
    // counters of the range; nothing is sealed past it.
    sent.sort_unstable();
    assert_eq!(sent, [base, base + 1]);
    assert_eq!(nms.counters().tx_counter_exhausted, 2);
}

/// The floor is on disk: a reservation after a reopen starts above it.
#[tokio::test]
async fn the_reservation_is_kept_across_reopening_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("cloud.db");
    let store = Store::open(&cyphonic_cloud::Database::Sqlite(db.clone()))
        .await
        .unwrap();
    assert_eq!(store.reserve_signal_counters(5, 10).await.unwrap(), 5);
    store.close().await;
    let store = Store::open(&cyphonic_cloud::Database::Sqlite(db.clone()))
        .await
        .unwrap();
    assert_eq!(store.reserve_signal_counters(0, 10).await.unwrap(), 15);
    // A clock ahead of the floor is taken as it is.
    assert_eq!(store.reserve_signal_counters(100, 10).await.unwrap(), 100);
    // Near 2^64 the reservation is refused, never wrapped.
    assert!(store
        .reserve_signal_counters(u64::MAX - 5, 10)
        .await
        .is_err());
}
