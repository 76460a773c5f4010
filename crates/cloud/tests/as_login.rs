//! The Login flow end to end: real TLS over loopback TCP, the real store in
//! a temporary folder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cyphonic_cloud::as_proto::code;
use cyphonic_cloud::store::CertStatus;
use cyphonic_cloud::{admin, as_server, CloudConfig, Store};
use cyphonic_node::as_client::{self, AsClientError};
use cyphonic_pki::{NodeKey, Verifier};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

const PASSWORD: &str = "correct horse battery";

struct Cloud {
    _dir: tempfile::TempDir,
    store: Store,
    v4: SocketAddr,
    v6: SocketAddr,
    root_der: Vec<u8>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Cloud {
    /// A fresh cloud with device `n1`, its AS listening on 127.0.0.1 and ::1.
    async fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let report = admin::init(&dir.path().join("cloud"), "cyphonic.internal", &[])
            .await
            .unwrap();
        let mut cfg = CloudConfig::load(&report.config_path).unwrap();
        cfg.as_listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
        admin::add_device(&cfg, "n1", Some(PASSWORD)).await.unwrap();
        let store = Store::open(&cfg.database()).await.unwrap();
        let root_der =
            Verifier::from_pem(&std::fs::read_to_string(&report.root_cert_path).unwrap())
                .unwrap()
                .root_der()
                .to_vec();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(as_server::serve_with_ready(
            Arc::new(cfg),
            store.clone(),
            async move {
                let _ = stop_rx.await;
            },
            ready_tx,
        ));
        let addrs = ready_rx.await.expect("the AS reports its addresses");
        let v4 = *addrs.iter().find(|a| a.is_ipv4()).unwrap();
        let v6 = *addrs.iter().find(|a| a.is_ipv6()).unwrap();
        assert_ne!(v4.port(), 0);
        Cloud {
            _dir: dir,
            store,
            v4,
            v6,
            root_der,
            stop: Some(stop_tx),
            task,
        }
    }

    /// Enrolls `n1` with a fresh key; returns (chain PEM, key PEM).
    async fn enroll_n1(&self) -> (String, String) {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem("n1.cyphonic.internal").unwrap();
        let enrolled = as_client::enroll(
            &[self.v4],
            "127.0.0.1",
            &self.root_der,
            "n1",
            PASSWORD,
            &csr,
        )
        .await
        .unwrap();
        (enrolled.cert_chain_pem, key.to_pem().to_string())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("the AS stops")
            .unwrap()
            .unwrap();
    }
}

/// Sends raw lines on a TLS connection without a client certificate and
/// returns the answer lines until the AS closes or stops answering.
async fn raw_exchange(cloud: &Cloud, payload: &[u8]) -> Vec<String> {
    let config = cyphonic_pki::node_client_config(&cloud.root_der, None).unwrap();
    let tcp = TcpStream::connect(cloud.v4).await.unwrap();
    let tls = TlsConnector::from(config)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut stream = BufReader::new(tls);
    stream.get_mut().write_all(payload).await.unwrap();
    stream.get_mut().flush().await.unwrap();
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(3), stream.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => lines.push(line),
            _ => return lines,
        }
    }
}

#[tokio::test]
async fn enroll_then_login_gives_the_devices_vips() {
    let cloud = Cloud::start().await;
    let device = cloud.store.device("n1").await.unwrap().unwrap();
    assert_eq!(device.vip4.to_string(), "100.64.0.2");
    assert_eq!(device.vip6.to_string(), "fd7a:6379:7068::2");

    let key = NodeKey::generate().unwrap();
    let csr = key.csr_pem("n1.cyphonic.internal").unwrap();
    let enrolled = as_client::enroll(
        &[cloud.v4],
        "127.0.0.1",
        &cloud.root_der,
        "n1",
        PASSWORD,
        &csr,
    )
    .await
    .unwrap();
    assert_eq!(enrolled.fqdn, "n1.cyphonic.internal");
    // The chain is leaf + intermediate, and it verifies to the root we trust.
    let chain = cyphonic_pki::pem_to_der_chain(&enrolled.cert_chain_pem).unwrap();
    assert_eq!(chain.len(), 2);
    let node = Verifier::from_pem(&enrolled.root_pem)
        .unwrap()
        .verify_node(&chain, Some("n1.cyphonic.internal"), SystemTime::now())
        .unwrap();
    assert_eq!(node.public_key, key.public_key());
    let recorded = cloud.store.certificate(node.serial).await.unwrap().unwrap();
    assert_eq!(recorded.device_id, "n1");
    assert_eq!(recorded.status, CertStatus::Good);

    let info = as_client::login(
        cloud.v4,
        "127.0.0.1",
        &cloud.root_der,
        &enrolled.cert_chain_pem,
        &key.to_pem(),
    )
    .await
    .unwrap();
    assert_eq!(info.fqdn, "n1.cyphonic.internal");
    assert_eq!(info.vip4, device.vip4);
    assert_eq!(info.vip6, device.vip6);
    assert_eq!(info.domain, "cyphonic.internal");
    assert_eq!(info.keepalive_secs, 15);
    assert_eq!(info.nms_port, 4502);
    assert!(
        (86_000..=86_400).contains(&info.session_expires_in),
        "{}",
        info.session_expires_in
    );
    assert_ne!(info.session_id, 0);
    // The NMS finds the same session and common key in the store.
    let session = cloud.store.session(info.session_id).await.unwrap().unwrap();
    assert_eq!(session.common_key, info.common_key);
    assert_eq!(session.device_id, "n1");
    assert_eq!(session.cert_serial, node.serial);

    // Over IPv6 and by name too; each login is a new session and key.
    for (addr, name) in [(cloud.v6, "::1"), (cloud.v4, "localhost")] {
        let again = as_client::login(
            addr,
            name,
            &cloud.root_der,
            &enrolled.cert_chain_pem,
            &key.to_pem(),
        )
        .await
        .unwrap();
        assert_eq!(again.vip4, device.vip4);
        assert_ne!(again.session_id, info.session_id);
        assert_ne!(again.common_key, info.common_key);
    }
    cloud.stop().await;
}

#[tokio::test]
async fn wrong_password_or_unknown_device_is_bad_credentials() {
    let cloud = Cloud::start().await;
    let csr = NodeKey::generate()
        .unwrap()
        .csr_pem("n1.cyphonic.internal")
        .unwrap();
    let mut answers = Vec::new();
    for (device, password) in [("n1", "wrong password"), ("nobody", PASSWORD)] {
        let err = as_client::enroll(
            &[cloud.v4],
            "127.0.0.1",
            &cloud.root_der,
            device,
            password,
            &csr,
        )
        .await
        .unwrap_err();
        match err {
            AsClientError::Refused { code, message } => answers.push((code, message)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // Identical answers: an attacker cannot tell which device IDs exist.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, code::BAD_CREDENTIALS);
    assert_eq!(answers[0].1, "wrong device ID or password");
    assert!(cloud.store.certificates_of("n1").await.unwrap().is_empty());
    cloud.stop().await;
}

#[tokio::test]
async fn login_without_certificate_is_refused() {
    let cloud = Cloud::start().await;
    let lines = raw_exchange(&cloud, b"{\"type\":\"login\"}\n").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let answer: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], code::CERTIFICATE_REQUIRED);
    cloud.stop().await;
}

#[tokio::test]
async fn bad_requests_get_bad_request_and_a_closed_connection() {
    let cloud = Cloud::start().await;
    // The second line is never answered: the AS closes after the first.
    let lines = raw_exchange(&cloud, b"{\"type\":\"fly\"}\n{\"type\":\"login\"}\n").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let answer: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(answer["code"], code::BAD_REQUEST);

    let lines = raw_exchange(&cloud, b"not json\n").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(code::BAD_REQUEST));

    // A line over 64 KiB is refused without waiting for its end.
    let long = vec![b'x'; 70 * 1024];
    let lines = raw_exchange(&cloud, &long).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(code::BAD_REQUEST));
    cloud.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_fails_at_tls() {
    let cloud = Cloud::start().await;
    let now = SystemTime::now();
    let other = cyphonic_pki::create_ca("cyphonic.internal", now).unwrap();
    let issuer =
        cyphonic_pki::Issuer::from_pem(&other.intermediate_cert_pem, &other.intermediate_key_pem)
            .unwrap();
    let key = NodeKey::generate().unwrap();
    let cert = issuer
        .issue_node(
            &key.csr_pem("n1.cyphonic.internal").unwrap(),
            "n1.cyphonic.internal",
            &[],
            7,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .unwrap();
    let chain = format!("{}{}", cert.cert_pem, issuer.cert_pem());
    let err = as_client::login(
        cloud.v4,
        "127.0.0.1",
        &cloud.root_der,
        &chain,
        &key.to_pem(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, AsClientError::Tls(_)),
        "expected a TLS failure, got {err:?}"
    );
    cloud.stop().await;
}

#[tokio::test]
async fn revoked_certificate_is_rejected_and_its_sessions_end() {
    let cloud = Cloud::start().await;
    let (chain, key) = cloud.enroll_n1().await;
    let info = as_client::login(cloud.v4, "127.0.0.1", &cloud.root_der, &chain, &key)
        .await
        .unwrap();
    let serial = cloud
        .store
        .session(info.session_id)
        .await
        .unwrap()
        .unwrap()
        .cert_serial;

    cloud
        .store
        .set_certificate_status(serial, CertStatus::Revoked)
        .await
        .unwrap();
    assert!(cloud
        .store
        .session(info.session_id)
        .await
        .unwrap()
        .is_none());
    let err = as_client::login(cloud.v4, "127.0.0.1", &cloud.root_der, &chain, &key)
        .await
        .unwrap_err();
    match err {
        AsClientError::Refused { code, message } => {
            assert_eq!(code, code::CERTIFICATE_REJECTED);
            assert!(message.contains("revoked"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    cloud.stop().await;
}

#[tokio::test]
async fn removed_or_disabled_device_cannot_log_in() {
    let cloud = Cloud::start().await;
    let (chain, key) = cloud.enroll_n1().await;

    cloud.store.set_device_disabled("n1", true).await.unwrap();
    let err = as_client::login(cloud.v4, "127.0.0.1", &cloud.root_der, &chain, &key)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AsClientError::Refused { code, .. } if code == code::DEVICE_DISABLED),
        "{err:?}"
    );
    cloud.store.set_device_disabled("n1", false).await.unwrap();
    as_client::login(cloud.v4, "127.0.0.1", &cloud.root_der, &chain, &key)
        .await
        .unwrap();

    // Removed and added again under the same ID: the old certificate is dead.
    cloud.store.remove_device("n1").await.unwrap();
    cloud
        .store
        .add_device(
            "n1",
            PASSWORD,
            "n1.cyphonic.internal",
            "100.64.0.0/10".parse().unwrap(),
            "fd7a:6379:7068::/48".parse().unwrap(),
        )
        .await
        .unwrap();
    let err = as_client::login(cloud.v4, "127.0.0.1", &cloud.root_der, &chain, &key)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AsClientError::Refused { code, .. } if code == code::CERTIFICATE_REJECTED),
        "{err:?}"
    );
    cloud.stop().await;
}

#[tokio::test]
async fn unreachable_as_is_an_io_error() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = cyphonic_pki::create_ca("cyphonic.internal", SystemTime::now()).unwrap();
    let root_der = Verifier::from_pem(&root.root_cert_pem)
        .unwrap()
        .root_der()
        .to_vec();
    let err = as_client::enroll(
        &[SocketAddr::from(([127, 0, 0, 1], port))],
        "127.0.0.1",
        &root_der,
        "n1",
        PASSWORD,
        "csr",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, AsClientError::Io(_)), "{err:?}");
}

/// The AS issues a general node's certificate only to the adapter that
/// serves it, for a key the adapter made; with it the adapter logs in on
/// the general node's behalf and gets the general node's VIPs.
#[tokio::test]
async fn an_adapter_enrolls_and_logs_in_for_its_general_node_only() {
    let cloud = Cloud::start().await;
    let (adapter_chain, adapter_key) = cloud.enroll_n1().await;
    let cfg_domain = "cyphonic.internal";
    // n1 serves `camera`; `plc` belongs to another adapter, n2.
    let (p4, p6) = (
        "100.64.0.0/10".parse().unwrap(),
        "fd7a:6379:7068::/48".parse().unwrap(),
    );
    cloud
        .store
        .add_general_node(
            "n1",
            "02:00:5e:10:00:01",
            "camera",
            &format!("camera.{cfg_domain}"),
            p4,
            p6,
        )
        .await
        .unwrap();
    cloud
        .store
        .add_device("n2", PASSWORD, &format!("n2.{cfg_domain}"), p4, p6)
        .await
        .unwrap();
    cloud
        .store
        .add_general_node(
            "n2",
            "02:00:5e:10:00:02",
            "plc",
            &format!("plc.{cfg_domain}"),
            p4,
            p6,
        )
        .await
        .unwrap();

    let gn_key = NodeKey::generate().unwrap();
    let csr = gn_key.csr_pem("camera.cyphonic.internal").unwrap();
    let enrolled = as_client::enroll_general(
        cloud.v4,
        "127.0.0.1",
        &cloud.root_der,
        &adapter_chain,
        &adapter_key,
        "camera",
        &csr,
    )
    .await
    .unwrap();
    assert_eq!(enrolled.fqdn, "camera.cyphonic.internal");
    let chain = cyphonic_pki::pem_to_der_chain(&enrolled.cert_chain_pem).unwrap();
    let node = Verifier::from_pem(&enrolled.root_pem)
        .unwrap()
        .verify_node(&chain, Some("camera.cyphonic.internal"), SystemTime::now())
        .unwrap();
    assert_eq!(
        node.public_key,
        gn_key.public_key(),
        "the adapter's key for it"
    );
    assert_eq!(
        cloud
            .store
            .certificate(node.serial)
            .await
            .unwrap()
            .unwrap()
            .device_id,
        "camera"
    );

    // Another adapter's general node: refused, and nothing issued.
    let csr = gn_key.csr_pem("plc.cyphonic.internal").unwrap();
    let err = as_client::enroll_general(
        cloud.v4,
        "127.0.0.1",
        &cloud.root_der,
        &adapter_chain,
        &adapter_key,
        "plc",
        &csr,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, AsClientError::Refused { code: c, .. } if c == code::NOT_SERVED),
        "{err:?}"
    );
    assert!(cloud.store.certificates_of("plc").await.unwrap().is_empty());
    // Without a client certificate there is no adapter to speak for.
    let lines = raw_exchange(
        &cloud,
        b"{\"type\":\"enroll_general\",\"device_id\":\"camera\",\"csr_pem\":\"x\"}\n",
    )
    .await;
    assert!(lines[0].contains(code::CERTIFICATE_REQUIRED), "{lines:?}");

    // The adapter logs in as the general node.
    let info = as_client::login(
        cloud.v4,
        "127.0.0.1",
        &cloud.root_der,
        &enrolled.cert_chain_pem,
        &gn_key.to_pem(),
    )
    .await
    .unwrap();
    let camera = cloud.store.device("camera").await.unwrap().unwrap();
    assert_eq!(
        (info.fqdn.as_str(), info.vip4, info.vip6),
        ("camera.cyphonic.internal", camera.vip4, camera.vip6)
    );
    cloud.stop().await;
}
