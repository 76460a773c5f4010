//! A cloud for the security tests: `cloud run` (or its AS alone) over a
//! real store in a temporary folder, on free loopback ports (the AS on
//! 127.0.0.1 and ::1, two sources), with the NMS's counters to wait on; and
//! a node's end of signaling over UDP.

// Each test file uses some of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyphonic_cloud::admin;
use cyphonic_cloud::nms::NmsCounters;
use cyphonic_cloud::run::{run_observed, Roles};
use cyphonic_cloud::{CloudConfig, Store};
use cyphonic_node::as_client::{self, AsClientError, Enrolled, LoginInfo};
use cyphonic_pki::{NodeKey, Verifier};
use cyphonic_proto::signal::{Envelope, Message, RegistrationRequest, Role, SignalCipher};
use cyphonic_proto::SessionId;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};

/// How long any awaited condition may take.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn free_tcp(ip: &str) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A cloud's folder: its configuration (free loopback ports) and root.
pub struct CloudDir {
    _tmp: std::sync::Arc<tempfile::TempDir>,
    pub cfg: CloudConfig,
    pub root_der: Vec<u8>,
}

impl CloudDir {
    pub async fn new() -> CloudDir {
        CloudDir::with_offline_root(None).await
    }

    /// A cloud whose `init` wrote the root key to `offline_root` (a folder
    /// inside the test's temporary one, by name) instead of its own folder.
    pub async fn with_offline_root(offline_root: Option<&str>) -> CloudDir {
        CloudDir::init("cyphonic.internal", offline_root).await
    }

    /// A cloud of another overlay domain.
    pub async fn with_domain(domain: &str) -> CloudDir {
        CloudDir::init(domain, None).await
    }

    /// Another instance over this cloud's folder (CA and database), with
    /// configuration `cfg`.
    pub fn with_config(&self, cfg: CloudConfig) -> CloudDir {
        CloudDir {
            _tmp: self._tmp.clone(),
            cfg,
            root_der: self.root_der.clone(),
        }
    }

    async fn init(domain: &str, offline_root: Option<&str>) -> CloudDir {
        let tmp = tempfile::tempdir().unwrap();
        let offline_root = offline_root.map(|name| tmp.path().join(name));
        let report = admin::init_with_root(
            &tmp.path().join("cloud"),
            domain,
            &[],
            offline_root.as_deref(),
        )
        .await
        .unwrap();
        let mut cfg = CloudConfig::load(&report.config_path).unwrap();
        cfg.as_listen = vec![free_tcp("127.0.0.1"), free_tcp("::1")];
        cfg.nms_listen = vec![free_udp()];
        cfg.nms_probe_port = 0;
        cfg.trs_listen = vec![free_udp()];
        cfg.quic_listen = vec![];
        cfg.tcp443_listen = vec![];
        cfg.validate().unwrap();
        let root_der =
            Verifier::from_pem(&std::fs::read_to_string(&report.root_cert_path).unwrap())
                .unwrap()
                .root_der()
                .to_vec();
        CloudDir {
            _tmp: std::sync::Arc::new(tmp),
            cfg,
            root_der,
        }
    }

    /// Adds a node with the operator's password (or a generated one);
    /// returns the password.
    pub async fn add(&self, device_id: &str, password: Option<&str>) -> String {
        admin::add_device(&self.cfg, device_id, password)
            .await
            .unwrap()
            .password
            .password
            .clone()
    }

    /// The test's temporary folder (the cloud is in `cloud/` inside it).
    pub fn tmp(&self) -> &std::path::Path {
        self._tmp.path()
    }

    pub fn as_v4(&self) -> SocketAddr {
        self.cfg.as_listen[0]
    }

    pub fn as_v6(&self) -> SocketAddr {
        self.cfg.as_listen[1]
    }

    pub fn nms(&self) -> SocketAddr {
        self.cfg.nms_listen[0]
    }

    /// The store, opened by another process would open it: what it changes
    /// is not announced to the running cloud.
    pub async fn other_store(&self) -> Store {
        Store::open(&self.cfg.database()).await.unwrap()
    }

    /// Enrolls `device_id` with `password` at `at`, with a fresh key.
    pub async fn enroll(
        &self,
        at: SocketAddr,
        device_id: &str,
        password: &str,
    ) -> Result<(Enrolled, NodeKey), AsClientError> {
        let key = NodeKey::generate().unwrap();
        let csr = key
            .csr_pem(&format!("{device_id}.{}", self.cfg.domain))
            .unwrap();
        let name = if at.is_ipv4() { "127.0.0.1" } else { "::1" };
        as_client::enroll(&[at], name, &self.root_der, device_id, password, &csr)
            .await
            .map(|e| (e, key))
    }

    pub async fn login(&self, enrolled: &(Enrolled, NodeKey)) -> LoginInfo {
        as_client::login(
            self.as_v4(),
            "127.0.0.1",
            &self.root_der,
            &enrolled.0.cert_chain_pem,
            &enrolled.1.to_pem(),
        )
        .await
        .unwrap()
    }
}

/// The refusal's code, or a panic naming what came instead.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, AsClientError>) -> (String, String) {
    match result {
        Err(AsClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A running `cloud run` over a [`CloudDir`].
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub counters: watch::Receiver<NmsCounters>,
}

impl Running {
    /// Starts `roles` and waits until every AS address accepts.
    pub async fn start(dir: &CloudDir, roles: Roles) -> Running {
        let (counters_tx, counters) = watch::channel(NmsCounters::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_observed(
            dir.cfg.clone(),
            roles,
            async move {
                let _ = stop_rx.await;
            },
            Some(counters_tx),
        ));
        let deadline = tokio::time::Instant::now() + WAIT;
        for addr in &dir.cfg.as_listen {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if task.is_finished() {
                    panic!("the cloud stopped: {:?}", task.await);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cloud did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Running {
            stop: Some(stop_tx),
            task,
            counters,
        }
    }

    /// Waits until the NMS's counters satisfy `ready`; returns them.
    pub async fn wait_for(
        &mut self,
        what: &str,
        ready: impl FnMut(&NmsCounters) -> bool,
    ) -> NmsCounters {
        let result = tokio::time::timeout(WAIT, self.counters.wait_for(ready))
            .await
            .map(|r| r.map(|c| *c));
        match result {
            Ok(Ok(c)) => c,
            Ok(Err(_)) => panic!("the NMS stopped while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; counters {:?}",
                *self.counters.borrow()
            ),
        }
    }

    pub fn now(&self) -> NmsCounters {
        *self.counters.borrow()
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the cloud stops")
            .unwrap()
            .unwrap();
    }
}

/// A node's end of its signaling session, on its own UDP socket.
pub struct SignalingNode {
    pub sock: UdpSocket,
    pub cipher: SignalCipher,
    pub session_id: u64,
    nms: SocketAddr,
    next_txid: u64,
    /// The txid of the last message [`SignalingNode::recv`] returned.
    last_rx_txid: u64,
}

impl SignalingNode {
    /// The node's end of `login`'s session.
    pub async fn new(login: &LoginInfo, nms: SocketAddr) -> SignalingNode {
        SignalingNode::for_session(login.session_id, &login.common_key, nms).await
    }

    /// The node's end of session `session_id`; counters start at the wall
    /// clock in microseconds, as the daemon's do.
    pub async fn for_session(session_id: u64, key: &[u8; 32], nms: SocketAddr) -> SignalingNode {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        SignalingNode {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            cipher: SignalCipher::new(SessionId(session_id), key, Role::Node, micros),
            session_id,
            nms,
            next_txid: 1,
            last_rx_txid: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Talks to another NMS from now on (another instance of the cloud),
    /// keeping the session and its replay window, as a node that moves.
    pub fn move_to(&mut self, nms: SocketAddr) {
        self.nms = nms;
    }

    /// Seals `message` and sends it; returns the datagram (to replay).
    pub async fn send(&mut self, message: Message) -> Vec<u8> {
        let txid = self.next_txid;
        self.next_txid += 1;
        let packet = self.cipher.seal(&Envelope { txid, message });
        self.sock.send_to(&packet, self.nms).await.unwrap();
        packet
    }

    /// The next message from the NMS that opens under this session.
    pub async fn recv(&mut self) -> Message {
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf))
                .await
                .expect("an answer from the NMS in time")
                .unwrap();
            if let Ok(env) = self.cipher.open(&buf[..n]) {
                if env.message == Message::PathChallenge {
                    self.echo(env.txid).await;
                    continue;
                }
                self.last_rx_txid = env.txid;
                return env.message;
            }
        }
    }

    /// Confirms the Route Direction [`SignalingNode::recv`] returned last.
    pub async fn confirm_last(&mut self, route_id: cyphonic_proto::RouteId) {
        let packet = self.cipher.seal(&Envelope {
            txid: self.last_rx_txid,
            message: Message::RouteDirectionConfirmation { route_id },
        });
        self.sock.send_to(&packet, self.nms).await.unwrap();
    }

    /// Answers a Path Challenge, as the daemon does.
    async fn echo(&mut self, txid: u64) {
        let packet = self.cipher.seal(&Envelope {
            txid,
            message: Message::PathResponse,
        });
        self.sock.send_to(&packet, self.nms).await.unwrap();
    }

    /// Registers (from this socket) and waits for the answer; returns the
    /// Registration datagram.
    pub async fn register(&mut self) -> Vec<u8> {
        let packet = self.send(registration(self.addr())).await;
        match self.recv().await {
            Message::RegistrationResponse(r) => assert_eq!(r.observed, self.addr()),
            other => panic!("expected a RegistrationResponse, got {}", other.name()),
        }
        // A new address's Path Challenge came just before the answer
        // (`recv` echoed it).
        packet
    }
}

pub fn registration(local: SocketAddr) -> Message {
    Message::RegistrationRequest(RegistrationRequest {
        static_public: [7; 32],
        tunnel_port: local.port(),
        local_addrs: vec![local],
        transport: cyphonic_proto::Transport::Udp,
        quic_port: 0,
        mapped: None,
    })
}

/// Whatever has arrived on `sock` so far (nothing waits).
pub fn pending(sock: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}
