//! Legs authenticate both ends against our root only.
//!
//! The log assertions read the binary's global log and pick the lines
//! that name the test's own peer address.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use cyphonic_transport::{Hub, LegEvent, Transport, TCP_ALPN};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn listen_addr(hub: &Hub, transport: Transport) -> std::net::SocketAddr {
    match transport {
        Transport::Quic => hub.quic_listen_addrs()[0],
        _ => hub.tcp_listen_addrs()[0],
    }
}

/// A node certificate from another installation's CA: the server refuses
/// the handshake, says why, and never delivers a datagram.
async fn client_from_another_ca(transport: Transport) {
    let log = capture_logs();
    let ours = TestPki::new("cyphonic.test");
    let theirs = TestPki::new("cyphonic.test");
    let server = Hub::server(
        ours.server(),
        vec![any_port("127.0.0.1")],
        vec![any_port("127.0.0.1")],
        true,
    )
    .await
    .unwrap();
    // The intruder trusts our root (so it would accept our server) but its
    // own certificate chains to the other root.
    let intruder = Hub::new(
        trusting(theirs.node("n1.cyphonic.test"), &ours.root_der),
        None,
        None,
    )
    .await
    .unwrap();
    let to = listen_addr(&server, transport);
    for i in 0..5 {
        let _ = intruder.send(transport, to, numbered(i, 100));
    }

    let refused = wait_event(&server, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Refused { .. })
    })
    .await
    .expect("the server reports the refusal");
    let LegEvent::Refused {
        transport: t,
        remote,
        reason,
    } = refused
    else {
        unreachable!()
    };
    assert_eq!(t, transport);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(
        recv_n(&server, 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "no datagram from a refused peer"
    );
    assert!(server.legs().is_empty());
    assert_eq!(server.stats().refused, 1);
    let remote = format!("remote={remote}");
    assert!(
        !log.lines_with(&["leg refused", &remote, "UnknownIssuer"])
            .is_empty(),
        "server log says why:\n{}",
        log.text()
    );
    // The intruder's leg does not survive either.
    let closed = wait_event(&intruder, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Closed { .. })
    })
    .await;
    assert!(closed.is_some(), "intruder's leg closes");
}

#[tokio::test]
async fn quic_client_certificate_from_another_ca_is_refused() {
    client_from_another_ca(Transport::Quic).await;
}

#[tokio::test]
async fn tcp_client_certificate_from_another_ca_is_refused() {
    client_from_another_ca(Transport::Tcp).await;
}

/// A server whose certificate comes from another CA: the node refuses it
/// and sends nothing.
async fn server_from_another_ca(transport: Transport) {
    let ours = TestPki::new("cyphonic.test");
    let theirs = TestPki::new("cyphonic.test");
    let impostor = Hub::server(
        theirs.server(),
        vec![any_port("127.0.0.1")],
        vec![any_port("127.0.0.1")],
        false,
    )
    .await
    .unwrap();
    let node = Hub::new(ours.node("n1.cyphonic.test"), None, None)
        .await
        .unwrap();
    let to = listen_addr(&impostor, transport);
    node.send(transport, to, numbered(1, 100)).unwrap();

    let closed = wait_event(&node, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Closed { .. })
    })
    .await
    .expect("the dial fails");
    let LegEvent::Closed { reason, .. } = closed else {
        unreachable!()
    };
    assert!(
        reason.contains("dial failed") && reason.contains("UnknownIssuer"),
        "{reason}"
    );
    assert!(recv_n(&impostor, 1, Duration::from_millis(300))
        .await
        .is_empty());
    assert!(node.legs().is_empty());
    assert_eq!(node.stats().dials_failed, 1);
    // Backing off: the next send does not dial at once.
    assert_eq!(
        node.send(transport, to, numbered(2, 100)),
        Err(cyphonic_transport::SendError::Backoff(to))
    );
}

#[tokio::test]
async fn quic_server_certificate_from_another_ca_is_refused() {
    server_from_another_ca(Transport::Quic).await;
}

#[tokio::test]
async fn tcp_server_certificate_from_another_ca_is_refused() {
    server_from_another_ca(Transport::Tcp).await;
}

/// A server hub that requires client certificates refuses a TLS client
/// that has none, and one that speaks another protocol (ALPN).
#[tokio::test]
async fn tcp_peer_without_certificate_or_with_other_alpn_is_refused() {
    let log = capture_logs();
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![], vec![any_port("127.0.0.1")], true)
        .await
        .unwrap();
    let to = server.tcp_listen_addrs()[0];

    // (presents a node certificate, ALPN)
    let cases: [(bool, &[u8]); 2] = [(false, TCP_ALPN), (true, b"h2")];
    let node = pki.node("n1.cyphonic.test");
    for (with_cert, alpn) in cases {
        let identity = with_cert.then_some((node.chain_pem.as_str(), node.key_pem.as_str()));
        let base = cyphonic_pki::node_client_config(&pki.root_der, identity).unwrap();
        let mut config = (*base).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(to).await.unwrap();
        // TLS 1.3: the client may finish before the server judges it.
        if let Ok(mut stream) = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
        {
            let mut frame = Vec::new();
            cyphonic_transport::framing::encode(&numbered(1, 50), &mut frame).unwrap();
            let _ = stream.write_all(&frame).await;
            let _ = stream.flush().await;
        }
        let refused = wait_event(&server, Duration::from_secs(5), |e| {
            matches!(e, LegEvent::Refused { .. })
        })
        .await
        .expect("refused");
        let LegEvent::Refused { reason, remote, .. } = refused else {
            unreachable!()
        };
        assert_eq!(
            log.lines_with(&["leg refused", &format!("remote={remote}")])
                .len(),
            1
        );
        assert!(
            if with_cert {
                reason.contains("protocol")
            } else {
                reason.contains("certificate")
            },
            "{reason}"
        );
    }
    assert!(recv_n(&server, 1, Duration::from_millis(300))
        .await
        .is_empty());
    assert!(server.legs().is_empty());
}

/// A QUIC server hub refuses a client whose ALPN is not ours (say, an
/// HTTP/3 client on the same port).
#[tokio::test]
async fn quic_other_alpn_is_refused() {
    let pki = TestPki::new("cyphonic.test");
    let server = Hub::server(pki.server(), vec![any_port("127.0.0.1")], vec![], true)
        .await
        .unwrap();
    let node = pki.node("n1.cyphonic.test");
    let base =
        cyphonic_pki::node_client_config(&pki.root_der, Some((&node.chain_pem, &node.key_pem)))
            .unwrap();
    let mut tls = (*base).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let result = endpoint
        .connect(server.quic_listen_addrs()[0], "127.0.0.1")
        .unwrap()
        .await;
    assert!(result.is_err(), "handshake must fail");
    let refused = wait_event(&server, Duration::from_secs(5), |e| {
        matches!(e, LegEvent::Refused { .. })
    })
    .await;
    assert!(refused.is_some());
    assert!(server.legs().is_empty());
}
