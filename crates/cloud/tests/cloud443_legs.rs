//! `cloud run` with its QUIC and TLS-over-TCP listeners: signaling and
//! relay from client hubs with node certificates, over loopback, on free
//! ports; the real store in a temporary folder.

use cyphonic_proto::{RelayId, SessionId};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyphonic_cloud::as_proto::{Response, AS_ALPN};
use cyphonic_cloud::run::{run, Roles};
use cyphonic_cloud::{admin, CloudConfig};
use cyphonic_node::as_client;
use cyphonic_pki::{NodeKey, Verifier};
use cyphonic_proto::relay::{self, Bind, RELAY_HEADER_LEN, TYPE_RELAY_BIND_ACK};
use cyphonic_proto::signal::{Envelope, Message, RegistrationRequest, Role, SignalCipher};
use cyphonic_transport::{Hub, TlsIdentity, Transport, TCP_ALPN};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const PASSWORD: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(10);

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Cloud {
    _dir: tempfile::TempDir,
    cfg: CloudConfig,
    quic: SocketAddr,
    tcp: SocketAddr,
    root_der: Vec<u8>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Cloud {
    /// `cloud run` (every role) on loopback with device `n1`.
    async fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let report = admin::init(&dir.path().join("cloud"), "cyphonic.internal", &[])
            .await
            .unwrap();
        let mut cfg = CloudConfig::load(&report.config_path).unwrap();
        cfg.as_listen = vec![free_tcp()];
        cfg.nms_listen = vec![free_udp()];
        cfg.nms_probe_port = 0;
        cfg.trs_listen = vec![free_udp()];
        let (quic, tcp) = (free_udp(), free_tcp());
        cfg.quic_listen = vec![quic];
        cfg.tcp443_listen = vec![tcp];
        cfg.validate().unwrap();
        admin::add_device(&cfg, "n1", Some(PASSWORD)).await.unwrap();
        let root_der =
            Verifier::from_pem(&std::fs::read_to_string(&report.root_cert_path).unwrap())
                .unwrap()
                .root_der()
                .to_vec();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run(cfg.clone(), Roles::All, async move {
            let _ = stop_rx.await;
        }));
        let cloud = Cloud {
            _dir: dir,
            cfg,
            quic,
            tcp,
            root_der,
            stop: Some(stop_tx),
            task,
        };
        // Up once the AS answers and the TCP listener accepts.
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(cloud.tcp).await.is_err()
            || tokio::net::TcpStream::connect(cloud.cfg.as_listen[0])
                .await
                .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cloud did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cloud
    }

    /// Enrolls `n1`: its TLS identity.
    async fn enroll(&self) -> TlsIdentity {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem("n1.cyphonic.internal").unwrap();
        let enrolled = as_client::enroll(
            &self.cfg.as_listen[..1],
            "127.0.0.1",
            &self.root_der,
            "n1",
            PASSWORD,
            &csr,
        )
        .await
        .unwrap();
        TlsIdentity {
            chain_pem: enrolled.cert_chain_pem,
            key_pem: key.to_pem().to_string(),
            root_der: self.root_der.clone(),
        }
    }

    /// Enrolls `n1` and logs in: its TLS identity and its session.
    async fn node(&self) -> (TlsIdentity, as_client::LoginInfo) {
        let identity = self.enroll().await;
        let login = as_client::login(
            self.cfg.as_listen[0],
            "127.0.0.1",
            &self.root_der,
            &identity.chain_pem,
            &identity.key_pem,
        )
        .await
        .unwrap();
        (identity, login)
    }

    fn addr(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Quic => self.quic,
            _ => self.tcp,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the cloud stops")
            .unwrap()
            .unwrap();
    }
}

async fn recv(hub: &Hub) -> cyphonic_transport::Received {
    tokio::time::timeout(WAIT, hub.recv())
        .await
        .expect("an answer in time")
        .expect("hub open")
}

async fn registration_over(transport: Transport) {
    let cloud = Cloud::start().await;
    let (identity, login) = cloud.node().await;
    let hub = Hub::new(identity, None, None).await.unwrap();
    let mut cipher = SignalCipher::new(
        SessionId(login.session_id),
        &login.common_key,
        Role::Node,
        1,
    );
    let request = Envelope {
        txid: 77,
        message: Message::RegistrationRequest(RegistrationRequest {
            static_public: [9; 32],
            tunnel_port: 4600,
            local_addrs: vec!["192.0.2.10:4600".parse().unwrap()],
            transport,
            quic_port: 0,
            mapped: None,
        }),
    };
    let to = cloud.addr(transport);
    hub.send(transport, to, cipher.seal(&request)).unwrap();
    // The leg's address is new to the NMS: its Path Challenge comes first.
    let got = recv(&hub).await;
    assert_eq!(
        cipher.open(&got.datagram).unwrap().message,
        Message::PathChallenge
    );
    let got = recv(&hub).await;
    assert_eq!(got.transport, transport);
    assert_eq!(got.from, to);
    let answer = cipher.open(&got.datagram).unwrap();
    assert_eq!(answer.txid, 77);
    let Message::RegistrationResponse(response) = answer.message else {
        panic!(
            "expected a RegistrationResponse, got {}",
            answer.message.name()
        );
    };
    assert_eq!(response.fqdn, "n1.cyphonic.internal");
    assert_eq!(response.vip4, login.vip4);
    assert_eq!(response.vip6, login.vip6);
    // The NMS saw the leg's remote address, on loopback.
    assert!(
        response.observed.ip().is_loopback(),
        "{}",
        response.observed
    );
    hub.shutdown().await;
    cloud.stop().await;
}

#[tokio::test]
async fn registration_over_quic() {
    registration_over(Transport::Quic).await;
}

#[tokio::test]
async fn registration_over_tcp() {
    registration_over(Transport::Tcp).await;
}

#[tokio::test]
async fn relay_between_a_quic_side_and_a_tcp_side() {
    let cloud = Cloud::start().await;
    let (identity, _) = cloud.node().await;
    let secret = cyphonic_cloud::run::load_relay_secret(&cloud.cfg).unwrap();
    let sides = [
        (
            Transport::Quic,
            Hub::new(identity.clone(), None, None).await.unwrap(),
        ),
        (
            Transport::Tcp,
            Hub::new(identity, None, None).await.unwrap(),
        ),
    ];
    let relay_id = 0x5eed_0001;
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    for (side, (transport, hub)) in sides.iter().enumerate() {
        let side = side as u8;
        let key = relay::side_key(&secret, RelayId(relay_id), side, expires);
        let bind = Bind {
            ack: false,
            relay_id: RelayId(relay_id),
            side,
            expires,
            counter: 1,
        };
        hub.send(
            *transport,
            cloud.addr(*transport),
            bind.encode(&key).to_vec(),
        )
        .unwrap();
        // A first Bind is answered with the TRS's cookie; the Bind again
        // with it binds (return routability, protocol §6.8).
        let challenge = recv(hub).await;
        let challenge = relay::Challenge::parse(&challenge.datagram).expect("a Relay Challenge");
        let mut again = bind.encode(&key).to_vec();
        again.extend_from_slice(&challenge.tail());
        hub.send(*transport, cloud.addr(*transport), again).unwrap();
        let ack = recv(hub).await;
        assert_eq!(ack.transport, *transport);
        assert_eq!(ack.datagram[0], TYPE_RELAY_BIND_ACK);
        let parsed = Bind::parse(&ack.datagram).unwrap();
        assert!(parsed.ack && parsed.relay_id == RelayId(relay_id) && parsed.side == side);
        Bind::verify(&ack.datagram, &key).unwrap();
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let mut datagram = vec![0u8; RELAY_HEADER_LEN + 100];
        relay::write_data_header(&mut datagram, RelayId(relay_id));
        datagram[RELAY_HEADER_LEN..].fill(from as u8 + 1);
        let (transport, hub) = &sides[from];
        hub.send(*transport, cloud.addr(*transport), datagram.clone())
            .unwrap();
        let (other_transport, other) = &sides[to];
        let got = recv(other).await;
        assert_eq!(got.transport, *other_transport);
        assert_eq!(got.from, cloud.addr(*other_transport));
        assert_eq!(got.datagram, datagram, "relayed unchanged");
    }
    for (_, hub) in sides {
        hub.shutdown().await;
    }
    cloud.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let cloud = Cloud::start().await;
    let base = cyphonic_pki::node_client_config(&cloud.root_der, None).unwrap();
    let mut config = (*base).clone();
    config.alpn_protocols = vec![TCP_ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(cloud.tcp).await.unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await;
    // TLS 1.3: the client may finish its side before the server's alert
    // arrives; then the first read fails or ends instead.
    if let Ok(mut tls) = connected {
        let _ = tls.write_all(&[0, 1, 1]).await;
        let _ = tls.flush().await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("the server ends the connection");
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "the server answered: {read:?}"
        );
    }
    cloud.stop().await;
}

/// Enrollment on the TLS-over-TCP listener (ALPN `cyphonic-as/1`): the
/// device has no certificate yet, and gets one; the AS's own port may be
/// blocked (it is first in the list and refuses here).
#[tokio::test]
async fn enrollment_over_tcp_443_by_alpn() {
    let cloud = Cloud::start().await;
    let key = NodeKey::generate().unwrap();
    let csr = key.csr_pem("n1.cyphonic.internal").unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let enrolled = as_client::enroll(
        &[closed, cloud.tcp],
        "127.0.0.1",
        &cloud.root_der,
        "n1",
        PASSWORD,
        &csr,
    )
    .await
    .unwrap();
    assert_eq!(enrolled.fqdn, "n1.cyphonic.internal");
    cloud.stop().await;
}

/// The Login flow on the TLS-over-TCP listener, told apart from legs by
/// ALPN `cyphonic-as/1`.
#[tokio::test]
async fn login_over_tcp_443_by_alpn() {
    let cloud = Cloud::start().await;
    let identity = cloud.enroll().await;
    let base = cyphonic_pki::node_client_config(
        &cloud.root_der,
        Some((&identity.chain_pem, &identity.key_pem)),
    )
    .unwrap();
    let mut config = (*base).clone();
    config.alpn_protocols = vec![AS_ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(cloud.tcp).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(AS_ALPN));
    let mut stream = tokio::io::BufReader::new(tls);
    stream
        .get_mut()
        .write_all(b"{\"type\":\"login\"}\n")
        .await
        .unwrap();
    stream.get_mut().flush().await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, stream.read_line(&mut line))
        .await
        .expect("an answer in time")
        .unwrap();
    let response: Response = serde_json::from_str(&line).unwrap();
    let Response::LoginOk(ok) = response else {
        panic!("expected login_ok, got {line}");
    };
    assert_eq!(ok.fqdn, "n1.cyphonic.internal");
    let session = cloud_store_session(&cloud, ok.session_id).await;
    assert_eq!(session.device_id, "n1");
    cloud.stop().await;
}

async fn cloud_store_session(cloud: &Cloud, id: u64) -> cyphonic_cloud::SessionRecord {
    let store = cyphonic_cloud::Store::open(&cloud.cfg.database())
        .await
        .unwrap();
    let session = store
        .session(id)
        .await
        .unwrap()
        .expect("the session exists");
    store.close().await;
    session
}
