//! QUIC legs over real sockets on loopback.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use cyphonic_transport::{
    Direction, FastRoute, Hub, HubConfig, LegEvent, SendError, Transport, FAST_HEADER_LEN,
    QUIC_UDP_PAYLOAD_V4, QUIC_UDP_PAYLOAD_V6,
};

const N: usize = 1000;
const LEN: usize = 1400;

/// A node hub and a server hub exchange N datagrams of LEN bytes each way;
/// every one arrives, whole, from the right address on one leg.
async fn exchange(ip: &str) {
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![any_port(ip)], vec![], true)
        .await
        .unwrap();
    let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.quic_listen_addrs()[0];
    let kernel_drops_before = kernel_udp_rcvbuf_errors();

    for i in 0..N as u32 {
        client.send(Transport::Quic, to, numbered(i, LEN)).unwrap();
    }
    let got = recv_n(&server, N, Duration::from_secs(20)).await;
    let client_port = client.dial_addr().unwrap().port();
    let mut seen = BTreeSet::new();
    for r in &got {
        assert_eq!(r.transport, Transport::Quic);
        assert_eq!(
            r.from.ip(),
            to.ip(),
            "client address in the server's family"
        );
        assert_eq!(r.from.port(), client_port);
        assert_eq!(r.leg, got[0].leg, "one leg");
        seen.insert(check_numbered(&r.datagram, LEN));
    }
    assert_eq!(
        seen.len(),
        N,
        "client -> server: {} of {N} arrived; kernel UDP receive-buffer drops meanwhile: {}; client legs {:?}",
        seen.len(),
        kernel_udp_rcvbuf_errors() - kernel_drops_before,
        client.legs()
    );

    // The server answers on the leg the client's address names.
    let from = got[0].from;
    for r in got {
        server.send(Transport::Quic, from, r.datagram).unwrap();
    }
    let back = recv_n(&client, N, Duration::from_secs(20)).await;
    let mut seen = BTreeSet::new();
    for r in &back {
        assert_eq!(r.from, to);
        seen.insert(check_numbered(&r.datagram, LEN));
    }
    assert_eq!(
        seen.len(),
        N,
        "server -> client: {} of {N} arrived; kernel UDP receive-buffer drops meanwhile: {}",
        seen.len(),
        kernel_udp_rcvbuf_errors() - kernel_drops_before
    );

    let legs = client.legs();
    assert_eq!(legs.len(), 1);
    let leg = &legs[0];
    assert!(leg.established);
    assert_eq!(leg.direction, Direction::Dialed);
    assert_eq!(leg.tx_datagrams, N as u64);
    assert_eq!(leg.rx_datagrams, N as u64);
    assert_eq!(leg.rx_bytes, (N * LEN) as u64);
    assert!(leg.rtt.is_some());
    let server_legs = server.legs();
    assert_eq!(server_legs.len(), 1);
    assert_eq!(server_legs[0].peer.as_deref(), Some("n1.cyphonic.test"));
    assert_eq!(server_legs[0].direction, Direction::Accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_both_ways_ipv4() {
    exchange("127.0.0.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_both_ways_ipv6() {
    exchange("::1").await;
}

/// The documented DATAGRAM budget: UDP payload − 38 per family; larger
/// datagrams are dropped and counted, never split.
#[tokio::test]
async fn max_datagram_size_follows_the_path_mtu() {
    let pki = TestPki::new("cyphonic.test");
    for (ip, payload) in [
        ("127.0.0.1", QUIC_UDP_PAYLOAD_V4),
        ("::1", QUIC_UDP_PAYLOAD_V6),
    ] {
        let server = Hub::server(pki.server(), vec![any_port(ip)], vec![], true)
            .await
            .unwrap();
        let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
            .await
            .unwrap();
        let to = server.quic_listen_addrs()[0];
        assert_eq!(
            client.max_datagram_size(Transport::Quic, to),
            None,
            "no leg yet"
        );
        client.send(Transport::Quic, to, numbered(0, 10)).unwrap();
        assert_eq!(recv_n(&server, 1, Duration::from_secs(5)).await.len(), 1);
        let max = client.max_datagram_size(Transport::Quic, to).unwrap();
        assert_eq!(max, usize::from(payload) - 38, "{ip}");

        client
            .send(Transport::Quic, to, numbered(1, max + 1))
            .unwrap();
        client.send(Transport::Quic, to, numbered(2, max)).unwrap();
        let got = recv_n(&server, 1, Duration::from_secs(5)).await;
        assert_eq!(check_numbered(&got[0].datagram, max), 2);
        assert!(recv_n(&server, 1, Duration::from_millis(200))
            .await
            .is_empty());
        assert_eq!(client.legs()[0].dropped_too_large, 1);
    }
}

/// After `rebind`, the client's packets leave from a new port; the leg
/// (same id) keeps carrying datagrams both ways and the server reports,
/// and answers to, the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_after_rebind_keeps_the_leg() {
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![any_port("127.0.0.1")], vec![], true)
        .await
        .unwrap();
    let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.quic_listen_addrs()[0];

    client.send(Transport::Quic, to, numbered(0, 100)).unwrap();
    let first = recv_n(&server, 1, Duration::from_secs(5)).await.remove(0);
    let old = first.from;
    let client_leg = client.legs()[0].id;

    client.rebind().unwrap();
    let new_port = client.dial_addr().unwrap().port();
    assert_ne!(new_port, old.port(), "rebind moved to a new local port");

    for i in 1..=50 {
        client.send(Transport::Quic, to, numbered(i, 100)).unwrap();
    }
    let got = recv_n(&server, 50, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 50, "datagrams keep flowing after the move");
    let last = got.last().unwrap();
    assert_eq!(last.leg, first.leg, "same leg on the server");
    assert_eq!(
        last.from.port(),
        new_port,
        "server reports the new remote address"
    );
    for r in &got {
        assert_eq!(r.leg, first.leg);
        assert!(r.from == old || r.from.port() == new_port);
    }
    let new = last.from;

    let legs = server.legs();
    assert_eq!(legs.len(), 1);
    assert_eq!(legs[0].id, first.leg);
    assert_eq!(legs[0].remote, new);

    // The server answers to the new address on the same leg; the old one no
    // longer names a leg.
    server
        .send(Transport::Quic, new, numbered(100, 100))
        .unwrap();
    let back = recv_n(&client, 1, Duration::from_secs(5)).await;
    assert_eq!(check_numbered(&back[0].datagram, 100), 100);
    assert_eq!(back[0].leg, client_leg);
    assert!(matches!(
        server.send(Transport::Quic, old, numbered(101, 100)),
        Err(SendError::NoLeg { .. })
    ));
    assert_eq!(client.legs().len(), 1);
    assert_eq!(client.legs()[0].id, client_leg);
}

/// The server vanishes without a word (black-holed) and comes back as a
/// new process: the client's leg goes idle and closes, and the next send
/// dials a new leg to the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_leg_is_redialed_after_server_restart() {
    let pki = TestPki::new("cyphonic.test");
    let config = HubConfig {
        keepalive: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(1000),
        ..HubConfig::default()
    };
    let server1 = Hub::server_with_config(
        config.clone(),
        pki.server(),
        vec![any_port("127.0.0.1")],
        vec![],
        true,
    )
    .await
    .unwrap();
    let forwarder = UdpForwarder::new(server1.quic_listen_addrs()[0]).await;
    let client = Hub::client_with_config(config.clone(), pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = forwarder.front;

    client.send(Transport::Quic, to, numbered(1, 200)).unwrap();
    assert_eq!(recv_n(&server1, 1, Duration::from_secs(5)).await.len(), 1);
    let old_leg = client.legs()[0].id;

    // The server goes away; nothing it says reaches the client.
    forwarder.set_target(None);
    drop(server1);
    let server2 = Hub::server_with_config(
        config,
        pki.server(),
        vec![any_port("127.0.0.1")],
        vec![],
        true,
    )
    .await
    .unwrap();

    let closed = wait_event(&client, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Closed { .. })
    })
    .await
    .expect("the idle leg closes");
    let LegEvent::Closed { leg, reason, .. } = closed else {
        unreachable!()
    };
    assert_eq!(leg, old_leg);
    assert!(reason.contains("timed out"), "{reason}");
    assert!(client.legs().is_empty());

    forwarder.set_target(Some(server2.quic_listen_addrs()[0]));
    client.send(Transport::Quic, to, numbered(2, 200)).unwrap();
    let got = recv_n(&server2, 1, Duration::from_secs(5)).await;
    assert_eq!(check_numbered(&got[0].datagram, 200), 2);
    let legs = client.legs();
    assert_eq!(legs.len(), 1);
    assert!(legs[0].id > old_leg, "a new leg");
}

/// The server restarts on the same port after telling its peers: the
/// client's leg closes at once and the next send reaches the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leg_is_redialed_after_server_restart_on_the_same_port() {
    let pki = TestPki::new("cyphonic.test");
    let server1 = Hub::server(pki.server(), vec![any_port("127.0.0.1")], vec![], true)
        .await
        .unwrap();
    let addr = server1.quic_listen_addrs()[0];
    let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    client
        .send(Transport::Quic, addr, numbered(1, 200))
        .unwrap();
    assert_eq!(recv_n(&server1, 1, Duration::from_secs(5)).await.len(), 1);

    server1.shutdown().await;
    let closed = wait_event(&client, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Closed { .. })
    })
    .await;
    assert!(
        closed.is_some(),
        "the peer's CONNECTION_CLOSE closes the leg"
    );

    let server2 = restart_server(&pki.server(), vec![addr], vec![]).await;
    client
        .send(Transport::Quic, addr, numbered(2, 200))
        .unwrap();
    let got = recv_n(&server2, 1, Duration::from_secs(5)).await;
    assert_eq!(check_numbered(&got[0].datagram, 200), 2);
}

/// Sending faster than the leg drains drops and counts; `send` never
/// blocks, whether the leg is still being dialed or established.
#[tokio::test]
async fn bounded_queue_drops_and_counts() {
    let pki = TestPki::new("cyphonic.test");
    let config = HubConfig {
        leg_queue: 8,
        ..HubConfig::default()
    };
    let server = Hub::server(pki.server(), vec![any_port("127.0.0.1")], vec![], true)
        .await
        .unwrap();
    let client = Hub::client_with_config(config, pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.quic_listen_addrs()[0];

    // On a current-thread runtime nothing else runs during this loop: the
    // dial has not even started, so exactly the queue's 8 fit.
    let started = Instant::now();
    let (mut ok, mut full) = (0, 0);
    for i in 0..10_000 {
        match client.send(Transport::Quic, to, numbered(i, 1200)) {
            Ok(()) => ok += 1,
            Err(SendError::QueueFull) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!((ok, full), (8, 9_992));
    assert!(
        elapsed < Duration::from_secs(1),
        "10 000 sends took {elapsed:?}"
    );
    assert_eq!(client.legs()[0].dropped_queue_full, 9_992);
    assert_eq!(client.stats().dropped_queue_full, 9_992);

    let got = recv_n(&server, 8, Duration::from_secs(5)).await;
    let indexes: Vec<u32> = got
        .iter()
        .map(|r| check_numbered(&r.datagram, 1200))
        .collect();
    assert_eq!(indexes, (0..8).collect::<Vec<_>>());

    // Established: a burst still never waits; whatever is refused is counted.
    let before = client.legs()[0].dropped_queue_full;
    let mut slowest = Duration::ZERO;
    let mut refused = 0u64;
    for i in 0..20_000 {
        let t = Instant::now();
        if client.send(Transport::Quic, to, numbered(i, 1200)).is_err() {
            refused += 1;
        }
        slowest = slowest.max(t.elapsed());
    }
    assert!(refused > 0);
    assert_eq!(client.legs()[0].dropped_queue_full - before, refused);
    // Generous: only preemption of the test thread could make one slow.
    assert!(
        slowest < Duration::from_millis(250),
        "slowest send {slowest:?}"
    );
}

/// A server does not dial: a send to an unknown address is refused.
#[tokio::test]
async fn server_does_not_dial() {
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![any_port("127.0.0.1")], vec![], true)
        .await
        .unwrap();
    let nowhere = "192.0.2.1:443".parse().unwrap();
    assert!(matches!(
        server.send(Transport::Quic, nowhere, vec![1]),
        Err(SendError::NoLeg { .. })
    ));
    assert_eq!(
        server.send(Transport::Udp, nowhere, vec![1]),
        Err(SendError::Unsupported(Transport::Udp))
    );
    assert_eq!(
        server.send(Transport::Quic, nowhere, vec![]),
        Err(SendError::Empty)
    );
    assert_eq!(server.stats().dropped_no_leg, 1);
}

/// Node a, listening for QUIC on loopback, and node b, which dials; a's
/// listening address.
async fn two_nodes() -> (Hub, Hub, std::net::SocketAddr) {
    let pki = TestPki::new("cyphonic.test");
    let a = Hub::new(
        pki.node("a.cyphonic.test"),
        Some(any_port("127.0.0.1")),
        None,
    )
    .await
    .unwrap();
    let b = Hub::new(pki.node("b.cyphonic.test"), None, None)
        .await
        .unwrap();
    let a_addr = a.quic_listen_addrs()[0];
    (a, b, a_addr)
}

/// Node to node: a node's QUIC listener accepts another node (both present
/// node certificates) and the dialer checks the peer's FQDN.
#[tokio::test]
async fn node_to_node_with_fqdn() {
    let (a, b, a_addr) = two_nodes().await;

    // Wrong name: the dial fails on the certificate check.
    b.set_server_name(a_addr, "c.cyphonic.test".into());
    b.send(Transport::Quic, a_addr, numbered(1, 50)).unwrap();
    let closed = wait_event(&b, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Closed { .. })
    })
    .await
    .unwrap();
    let LegEvent::Closed { reason, .. } = closed else {
        unreachable!()
    };
    assert!(reason.contains("certificate"), "{reason}");
    assert!(recv_n(&a, 1, Duration::from_millis(300)).await.is_empty());

    // Right name (after the dial backoff).
    b.set_server_name(a_addr, "a.cyphonic.test".into());
    tokio::time::sleep(HubConfig::default().redial_backoff).await;
    b.send(Transport::Quic, a_addr, numbered(2, 50)).unwrap();
    let got = recv_n(&a, 1, Duration::from_secs(5)).await;
    assert_eq!(check_numbered(&got[0].datagram, 50), 2);
    assert_eq!(a.legs()[0].peer.as_deref(), Some("b.cyphonic.test"));
    assert_eq!(b.legs()[0].peer.as_deref(), Some("a.cyphonic.test"));
    // And back on the accepted leg.
    a.send(Transport::Quic, got[0].from, numbered(3, 50))
        .unwrap();
    assert_eq!(
        check_numbered(&recv_n(&b, 1, Duration::from_secs(5)).await[0].datagram, 50),
        3
    );
}

/// A node renews its certificate while its hub runs: from the next
/// handshake on, as client and as server, the hub presents the new one.
/// (An expired certificate stands for the one renewed too late.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_from_the_next_handshake_on() {
    let pki = TestPki::new("cyphonic.test");
    let now = SystemTime::now();
    let expired = |fqdn: &str| {
        pki.node_valid(
            fqdn,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
    };
    let fresh_a = pki.node("a.cyphonic.test");
    let a = Hub::new(
        expired("a.cyphonic.test"),
        Some(any_port("127.0.0.1")),
        None,
    )
    .await
    .unwrap();
    let b = Hub::new(expired("b.cyphonic.test"), None, None)
        .await
        .unwrap();
    let a_addr = a.quic_listen_addrs()[0];
    b.set_server_name(a_addr, "a.cyphonic.test".into());

    let refused = |hub: &'static str| {
        move |e: &LegEvent| match e {
            LegEvent::Closed { reason, .. } => {
                assert!(
                    reason.contains("certificate") || reason.contains("expired"),
                    "{hub}: {reason}"
                );
                true
            }
            _ => false,
        }
    };
    // Both certificates expired: refused.
    b.send(Transport::Quic, a_addr, numbered(1, 50)).unwrap();
    assert!(wait_event(&b, Duration::from_secs(5), refused("b"))
        .await
        .is_some());
    // A key that is not the certificate's changes nothing.
    let mut mismatched = fresh_a.clone();
    mismatched.key_pem = pki.node("a.cyphonic.test").key_pem.clone();
    assert!(a.set_identity(&mismatched).is_err());
    // The listener renewed, the dialer not yet: still refused.
    a.set_identity(&fresh_a).unwrap();
    tokio::time::sleep(HubConfig::default().redial_backoff).await;
    b.send(Transport::Quic, a_addr, numbered(2, 50)).unwrap();
    assert!(wait_event(&b, Duration::from_secs(5), refused("b"))
        .await
        .is_some());
    assert!(recv_n(&a, 1, Duration::from_millis(300)).await.is_empty());
    // Both renewed: the leg comes up.
    b.set_identity(&pki.node("b.cyphonic.test")).unwrap();
    tokio::time::sleep(HubConfig::default().redial_backoff).await;
    b.send(Transport::Quic, a_addr, numbered(3, 50)).unwrap();
    let got = recv_n(&a, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "a leg with the renewed certificates");
    assert_eq!(check_numbered(&got[0].datagram, 50), 3);
    assert_eq!(a.legs()[0].peer.as_deref(), Some("b.cyphonic.test"));
}

/// Waits (up to `limit`) until `hub` has a fast route to `to`.
async fn fast_route(hub: &Hub, to: std::net::SocketAddr, limit: Duration) -> FastRoute {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(route) = hub.fast_route(to) {
            return route;
        }
        assert!(
            Instant::now() < deadline,
            "no fast route to {to} after {limit:?}: legs {:?}",
            hub.legs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends datagrams `from..to` along `route` in GSO trains of up to 16,
/// each after the route's header.
fn send_fast(route: &FastRoute, from: u32, to: u32, len: usize) {
    let seg = FAST_HEADER_LEN + len;
    let per = route.max_segments().min(16);
    let all: Vec<u32> = (from..to).collect();
    for chunk in all.chunks(per) {
        let mut train = Vec::with_capacity(chunk.len() * seg);
        for i in chunk {
            train.extend_from_slice(route.header());
            train.extend_from_slice(&numbered(*i, len));
        }
        route.send(&train, seg).unwrap();
    }
}

/// Both nodes offer their fast-path IDs over a new leg; data then goes in
/// QUIC-shaped datagrams beside the connection, both ways, arrives as the
/// leg's datagrams, and leaves the connection's own datagrams alone. After
/// the dialing side moves to a new port the fast path follows the leg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_carries_data_beside_the_connection() {
    let (a, b, a_addr) = two_nodes().await;
    b.set_server_name(a_addr, "a.cyphonic.test".into());
    b.send(Transport::Quic, a_addr, numbered(0, 100)).unwrap();
    let first = recv_n(&a, 1, Duration::from_secs(5)).await.remove(0);
    let b_addr = first.from;

    // b -> a and a -> b on the fast path, 200 each way in GSO trains (50
    // at a time, so no socket buffer overflows on a loaded machine).
    let to_a = fast_route(&b, a_addr, Duration::from_secs(5)).await;
    let mut got = Vec::new();
    for from in (1..201).step_by(50) {
        send_fast(&to_a, from, from + 50, 1200);
        got.extend(recv_n(&a, 50, Duration::from_secs(5)).await);
    }
    let seen: BTreeSet<u32> = got
        .iter()
        .map(|r| {
            assert_eq!(
                (r.transport, r.leg, r.from),
                (Transport::Quic, first.leg, b_addr)
            );
            check_numbered(&r.datagram, 1200)
        })
        .collect();
    assert_eq!(seen, (1..201).collect());
    let to_b = fast_route(&a, b_addr, Duration::from_secs(5)).await;
    let mut back = Vec::new();
    for from in (300..500).step_by(50) {
        send_fast(&to_b, from, from + 50, 1200);
        back.extend(recv_n(&b, 50, Duration::from_secs(5)).await);
    }
    assert_eq!(back.len(), 200);
    assert!(back.iter().all(|r| r.from == a_addr));

    // The connection's datagrams still flow, and the counters tell the two
    // apart.
    a.send(Transport::Quic, b_addr, numbered(600, 100)).unwrap();
    assert_eq!(
        check_numbered(
            &recv_n(&b, 1, Duration::from_secs(5)).await[0].datagram,
            100
        ),
        600
    );
    let (la, lb) = (&a.legs()[0], &b.legs()[0]);
    assert_eq!((la.rx_fast, la.tx_fast), (200, 200));
    assert_eq!((lb.rx_fast, lb.tx_fast), (200, 200));
    assert_eq!(lb.rx_datagrams, 201);
    assert_eq!(la.rx_datagrams, 201);

    // b moves: its fast packets come from the new port and a's go there
    // once the connection has seen the move.
    b.rebind().unwrap();
    let new_port = b.dial_addr().unwrap().port();
    b.send(Transport::Quic, a_addr, numbered(700, 100)).unwrap();
    let moved = recv_n(&a, 1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(moved.from.port(), new_port);
    send_fast(
        &fast_route(&b, a_addr, Duration::from_secs(5)).await,
        800,
        810,
        500,
    );
    let got = recv_n(&a, 10, Duration::from_secs(5)).await;
    assert!(got
        .iter()
        .all(|r| r.from.port() == new_port && r.leg == first.leg));
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.legs()[0].remote != moved.from {
        assert!(Instant::now() < deadline, "a's leg did not follow the move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send_fast(
        &fast_route(&a, moved.from, Duration::from_secs(5)).await,
        900,
        910,
        500,
    );
    assert_eq!(recv_n(&b, 10, Duration::from_secs(5)).await.len(), 10);
}
