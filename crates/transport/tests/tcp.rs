//! TLS-over-TCP legs over real sockets on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use cyphonic_transport::framing::{self, Frame, FrameDecoder};
use cyphonic_transport::{Direction, Hub, HubConfig, LegEvent, SendError, Transport, TCP_ALPN};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const N: usize = 1000;
const LEN: usize = 1400;

async fn exchange(ip: &str) {
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![], vec![any_port(ip)], true)
        .await
        .unwrap();
    let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.tcp_listen_addrs()[0];

    for i in 0..N as u32 {
        client.send(Transport::Tcp, to, numbered(i, LEN)).unwrap();
    }
    let got = recv_n(&server, N, Duration::from_secs(20)).await;
    assert_eq!(got.len(), N);
    // TCP is reliable and ordered: every datagram, in order.
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.transport, Transport::Tcp);
        assert_eq!(r.leg, got[0].leg);
        assert_eq!(check_numbered(&r.datagram, LEN), i as u32);
    }
    let from = got[0].from;
    for r in got {
        server.send(Transport::Tcp, from, r.datagram).unwrap();
    }
    let back = recv_n(&client, N, Duration::from_secs(20)).await;
    assert_eq!(back.len(), N);
    for (i, r) in back.iter().enumerate() {
        assert_eq!(r.from, to);
        assert_eq!(check_numbered(&r.datagram, LEN), i as u32);
    }
    let legs = client.legs();
    assert_eq!(legs.len(), 1);
    assert!(legs[0].established);
    assert_eq!(legs[0].max_datagram_size, Some(65_535));
    assert_eq!(
        (legs[0].tx_datagrams, legs[0].rx_datagrams),
        (N as u64, N as u64)
    );
    let server_legs = server.legs();
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

/// Many small datagrams written quickly are batched into few TLS records
/// (frames straddle records and segments) and still come out one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_datagrams_survive_batching() {
    let pki = TestPki::new("cyphonic.test");
    let config = HubConfig {
        leg_queue: 20_000,
        ..HubConfig::default()
    };
    let server = Hub::server(pki.server(), vec![], vec![any_port("127.0.0.1")], true)
        .await
        .unwrap();
    let client = Hub::client_with_config(config, pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.tcp_listen_addrs()[0];
    let sizes = |i: u32| 5 + (i as usize * 37) % 300;
    for i in 0..10_000u32 {
        client
            .send(Transport::Tcp, to, numbered(i, sizes(i)))
            .unwrap();
    }
    let got = recv_n(&server, 10_000, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 10_000);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(check_numbered(&r.datagram, sizes(i as u32)), i as u32);
    }
}

/// A peer that writes its frames in odd pieces, each flushed on its own
/// (separate TLS records, separate TCP segments), is understood; the
/// server answers on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_split_across_segments() {
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![], vec![any_port("127.0.0.1")], true)
        .await
        .unwrap();
    let to = server.tcp_listen_addrs()[0];
    let identity = pki.node("raw.cyphonic.test");
    let tls = raw_client_config(&identity, Some(TCP_ALPN));
    let tcp = TcpStream::connect(to).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let local = tcp.local_addr().unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);

    let count = 300u32;
    // 5 bytes at least: the type byte and the index.
    let sizes = |i: u32| 5 + (i as usize * 97) % 1500;
    let mut bytes = Vec::new();
    for i in 0..count {
        if i % 50 == 0 {
            framing::encode_keepalive(&mut bytes);
        }
        framing::encode(&numbered(i, sizes(i)), &mut bytes).unwrap();
    }
    let pieces = [1usize, 2, 3, 5, 8, 13, 21, 700, 1501, 4000];
    let mut offset = 0;
    let mut k = 0;
    while offset < bytes.len() {
        let n = pieces[k % pieces.len()].min(bytes.len() - offset);
        wr.write_all(&bytes[offset..offset + n]).await.unwrap();
        wr.flush().await.unwrap();
        offset += n;
        k += 1;
        if k % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    let got = recv_n(&server, count as usize, Duration::from_secs(10)).await;
    assert_eq!(got.len(), count as usize);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.from, local);
        assert_eq!(check_numbered(&r.datagram, sizes(i as u32)), i as u32);
    }

    // Answers come back framed on the same connection.
    for i in 0..20u32 {
        server
            .send(Transport::Tcp, local, numbered(i, 700))
            .unwrap();
    }
    let mut decoder = FrameDecoder::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 4096];
    while answers.len() < 20 {
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        decoder.handle_bytes(&buf[..n]);
        while let Some(f) = decoder.poll_frame() {
            if let Frame::Datagram(d) = f {
                answers.push(check_numbered(&d, 700));
            }
        }
    }
    assert_eq!(answers, (0..20).collect::<Vec<_>>());
}

/// A TCP leg whose server went away closes; the next send dials the
/// server that restarted on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leg_is_redialed_after_server_restart() {
    let pki = TestPki::new("cyphonic.test");
    let server1 = Hub::server(pki.server(), vec![], vec![any_port("127.0.0.1")], true)
        .await
        .unwrap();
    let addr = server1.tcp_listen_addrs()[0];
    let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    client.send(Transport::Tcp, addr, numbered(1, 100)).unwrap();
    assert_eq!(recv_n(&server1, 1, Duration::from_secs(5)).await.len(), 1);
    let old_leg = client.legs()[0].id;

    drop(server1);
    let closed = wait_event(&client, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Closed { .. })
    })
    .await
    .expect("leg closes");
    let LegEvent::Closed { leg, .. } = closed else {
        unreachable!()
    };
    assert_eq!(leg, old_leg);

    let server2 = restart_server(&pki.server(), vec![], vec![addr]).await;
    client.send(Transport::Tcp, addr, numbered(2, 100)).unwrap();
    let got = recv_n(&server2, 1, Duration::from_secs(5)).await;
    assert_eq!(check_numbered(&got[0].datagram, 100), 2);
    assert!(client.legs()[0].id > old_leg);
}

/// A TCP leg that hears nothing (no data, no keepalive) for the idle
/// timeout closes; keepalives keep a quiet leg open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_holds_and_silence_closes() {
    let pki = TestPki::new("cyphonic.test");
    let config = HubConfig {
        keepalive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(500),
        ..HubConfig::default()
    };
    let server = Hub::server_with_config(
        config.clone(),
        pki.server(),
        vec![],
        vec![any_port("127.0.0.1")],
        true,
    )
    .await
    .unwrap();
    let client = Hub::client_with_config(config, pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.tcp_listen_addrs()[0];
    client.send(Transport::Tcp, to, numbered(1, 100)).unwrap();
    assert_eq!(recv_n(&server, 1, Duration::from_secs(5)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.legs().len(), 1, "keepalives held the quiet leg");
    assert_eq!(server.legs().len(), 1);

    // A raw peer that completes TLS and then says nothing is dropped.
    let identity = pki.node("quiet.cyphonic.test");
    let tcp = TcpStream::connect(to).await.unwrap();
    let _stream =
        tokio_rustls::TlsConnector::from(Arc::new(raw_client_config(&identity, Some(TCP_ALPN))))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
    let closed = wait_event(
        &server,
        Duration::from_secs(5),
        |e| matches!(e, LegEvent::Closed { reason, .. } if reason.contains("idle")),
    )
    .await;
    assert!(closed.is_some());
    assert_eq!(server.legs().len(), 1);
}

/// After `rebind`, dialed TCP legs are dialed again and keep carrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebind_redials_tcp_legs() {
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![], vec![any_port("127.0.0.1")], true)
        .await
        .unwrap();
    let client = Hub::new(pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.tcp_listen_addrs()[0];
    client.send(Transport::Tcp, to, numbered(1, 100)).unwrap();
    let first = recv_n(&server, 1, Duration::from_secs(5)).await.remove(0);
    let old_leg = client.legs()[0].id;

    client.rebind().unwrap();
    let legs = client.legs();
    assert_eq!(legs.len(), 1);
    assert!(legs[0].id > old_leg, "a new leg replaced the old one");
    client.send(Transport::Tcp, to, numbered(2, 100)).unwrap();
    let got = recv_n(&server, 1, Duration::from_secs(5)).await;
    assert_eq!(check_numbered(&got[0].datagram, 100), 2);
    assert_ne!(got[0].from, first.from, "a new connection");
    assert_ne!(got[0].leg, first.leg);
}

/// Queue bound on TCP legs: a full queue drops and counts.
#[tokio::test]
async fn bounded_queue_drops_and_counts() {
    let pki = TestPki::new("cyphonic.test");
    let config = HubConfig {
        leg_queue: 4,
        ..HubConfig::default()
    };
    let server = Hub::server(pki.server(), vec![], vec![any_port("127.0.0.1")], true)
        .await
        .unwrap();
    let client = Hub::client_with_config(config, pki.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = server.tcp_listen_addrs()[0];
    let results: Vec<_> = (0..100)
        .map(|i| client.send(Transport::Tcp, to, numbered(i, 100)))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    assert!(results[4..].iter().all(|r| *r == Err(SendError::QueueFull)));
    assert_eq!(client.legs()[0].dropped_queue_full, 96);
    assert_eq!(recv_n(&server, 4, Duration::from_secs(5)).await.len(), 4);
    assert_eq!(
        client.send(Transport::Tcp, to, vec![0; 65_536]),
        Err(SendError::TooLarge {
            len: 65_536,
            max: 65_535
        })
    );
}

fn raw_client_config(
    identity: &cyphonic_transport::TlsIdentity,
    alpn: Option<&[u8]>,
) -> cyphonic_pki::rustls::ClientConfig {
    let base = cyphonic_pki::node_client_config(
        &identity.root_der,
        Some((&identity.chain_pem, &identity.key_pem)),
    )
    .unwrap();
    let mut config = (*base).clone();
    config.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    config
}
