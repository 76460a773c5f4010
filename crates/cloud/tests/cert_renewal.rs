//! Certificate renewal end to end (`docs/protocol.md` §3.3): the real AS
//! over TLS on loopback, the real store, certificates of a minute (the
//! shortest `cert_validity_secs`), so each test waits the 20 s after which
//! a certificate may be renewed.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{refusal, CloudDir, Running};
use cyphonic_cloud::as_proto::{code, CertLife};
use cyphonic_cloud::run::Roles;
use cyphonic_cloud::store::CertStatus;
use cyphonic_node::as_client::{self, AsClientError, Enrolled, LoginInfo};
use cyphonic_node::config::StatePaths;
use cyphonic_node::daemon::{Credentials, LoginUse, Renewer};
use cyphonic_pki::{NodeKey, VerifiedNode, Verifier};
use cyphonic_proto::handshake::StaticKeypair;

const PASSWORD: &str = "correct horse battery";
const LIFETIME: Duration = Duration::from_secs(60);

/// A cloud whose AS issues certificates of a minute, with devices `names`.
async fn cloud(names: &[&str]) -> (CloudDir, Running) {
    let mut dir = CloudDir::new().await;
    dir.cfg.cert_validity_days = None;
    dir.cfg.cert_validity_secs = Some(LIFETIME.as_secs());
    dir.cfg.validate().unwrap();
    for name in names {
        dir.add(name, Some(PASSWORD)).await;
    }
    let running = Running::start(&dir, Roles::As).await;
    (dir, running)
}

fn verifier(dir: &CloudDir) -> Verifier {
    Verifier::new(dir.root_der.clone()).unwrap()
}

/// What the leaf of `chain_pem` says, verified now.
fn leaf(dir: &CloudDir, chain_pem: &str) -> VerifiedNode {
    let chain = cyphonic_pki::pem_to_der_chain(chain_pem).unwrap();
    verifier(dir)
        .verify_node(&chain, None, SystemTime::now())
        .unwrap()
}

/// `renew` with the certificate `chain_pem` and its key `key`, for the key
/// `new_key`.
async fn renew(
    dir: &CloudDir,
    chain_pem: &str,
    key: &NodeKey,
    new_key: &NodeKey,
) -> Result<String, AsClientError> {
    let csr = new_key.csr_pem("renewing.cyphonic.internal").unwrap();
    as_client::renew(
        dir.as_v4(),
        "127.0.0.1",
        &dir.root_der,
        chain_pem,
        &key.to_pem(),
        &csr,
    )
    .await
}

/// Waits until the AS renews the certificate of `enrolled` (a third of
/// its lifetime after issue), as the AS recorded it.
async fn until_renewable(dir: &CloudDir, chain_pem: &str) {
    let serial = leaf(dir, chain_pem).serial;
    let record = dir
        .other_store()
        .await
        .certificate(serial)
        .await
        .unwrap()
        .unwrap();
    let from = CertLife::of(record.not_before, record.not_after).renewable_from();
    let wait = from.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(300)).await;
}

async fn login(dir: &CloudDir, chain_pem: &str, key: &NodeKey) -> LoginInfo {
    as_client::login(
        dir.as_v4(),
        "127.0.0.1",
        &dir.root_der,
        chain_pem,
        &key.to_pem(),
    )
    .await
    .unwrap()
}

async fn enroll(dir: &CloudDir, device_id: &str) -> (Enrolled, NodeKey) {
    dir.enroll(dir.as_v4(), device_id, PASSWORD).await.unwrap()
}

#[tokio::test]
async fn a_renewal_gives_a_new_certificate_for_a_new_key_once() {
    let (dir, cloud) = cloud(&["n1"]).await;
    let (enrolled, key) = enroll(&dir, "n1").await;
    let old = leaf(&dir, &enrolled.cert_chain_pem);

    // A certificate younger than a third of its lifetime is not renewed.
    let fresh = renew(
        &dir,
        &enrolled.cert_chain_pem,
        &key,
        &NodeKey::generate().unwrap(),
    )
    .await;
    let (c, message) = refusal(fresh);
    assert_eq!(c, code::RENEWAL_TOO_EARLY, "{message}");
    assert!(message.contains("renew in"), "{message}");

    until_renewable(&dir, &enrolled.cert_chain_pem).await;

    // Not for the key it has: a renewal moves to a new key.
    let same_key = renew(&dir, &enrolled.cert_chain_pem, &key, &key).await;
    assert_eq!(refusal(same_key).0, code::BAD_CSR);

    let new_key = NodeKey::generate().unwrap();
    let chain = renew(&dir, &enrolled.cert_chain_pem, &key, &new_key)
        .await
        .expect("renewed");
    let new = leaf(&dir, &chain);
    assert_ne!(new.serial, old.serial, "a fresh serial");
    assert!(new.not_after > old.not_after, "a later notAfter");
    assert_eq!(new.fqdn, "n1.cyphonic.internal");
    assert_eq!(new.public_key, new_key.public_key(), "for the CSR's key");
    let chain_der = cyphonic_pki::pem_to_der_chain(&chain).unwrap();
    assert_eq!(chain_der.len(), 2, "the certificate, then the intermediate");

    // Recorded, and the old one stays good until it expires.
    let store = dir.other_store().await;
    let certs = store.certificates_of("n1").await.unwrap();
    assert_eq!(certs.len(), 2);
    assert!(certs.iter().all(|c| c.status == CertStatus::Good));
    assert_eq!(certs[1].serial, new.serial);
    let record = store.certificate(new.serial).await.unwrap().unwrap();
    let life = CertLife::of(record.not_before, record.not_after).lifetime();
    assert_eq!(life, LIFETIME, "the configured lifetime");

    // The new certificate logs in, with the same VIPs; so does the old.
    let with_new = login(&dir, &chain, &new_key).await;
    let with_old = login(&dir, &enrolled.cert_chain_pem, &key).await;
    assert_eq!(
        (with_new.vip4, with_new.vip6, &with_new.fqdn),
        (with_old.vip4, with_old.vip6, &with_old.fqdn)
    );
    let sessions = store.session(with_new.session_id).await.unwrap().unwrap();
    assert_eq!(
        sessions.cert_serial, new.serial,
        "the session carries the new serial"
    );

    // Asked again for the same key (an answer lost on the way): the same
    // certificate, nothing new recorded.
    let again = renew(&dir, &enrolled.cert_chain_pem, &key, &new_key)
        .await
        .expect("the same renewal again");
    assert_eq!(leaf(&dir, &again).serial, new.serial);
    // For another key: each certificate is renewed once.
    let thief = renew(
        &dir,
        &enrolled.cert_chain_pem,
        &key,
        &NodeKey::generate().unwrap(),
    )
    .await;
    let (c, message) = refusal(thief);
    assert_eq!(c, code::ALREADY_RENEWED, "{message}");
    assert!(message.contains("device reset n1"), "{message}");
    // The new certificate is too young to be renewed in turn.
    let chained = renew(&dir, &chain, &new_key, &NodeKey::generate().unwrap()).await;
    assert_eq!(refusal(chained).0, code::RENEWAL_TOO_EARLY);
    assert_eq!(store.certificates_of("n1").await.unwrap().len(), 2);
    cloud.stop().await;
}

#[tokio::test]
async fn a_revoked_certificate_or_a_disabled_device_renews_nothing() {
    let (dir, cloud) = cloud(&["n2", "n3", "n4"]).await;
    let (n2, k2) = enroll(&dir, "n2").await;
    let (n3, k3) = enroll(&dir, "n3").await;
    let (n4, k4) = enroll(&dir, "n4").await;
    // Old enough: only the revocation or the disabling can refuse.
    until_renewable(&dir, &n4.cert_chain_pem).await;

    let store = dir.other_store().await;
    let serial2 = leaf(&dir, &n2.cert_chain_pem).serial;
    store
        .set_certificate_status(serial2, CertStatus::Revoked)
        .await
        .unwrap();
    let revoked = renew(&dir, &n2.cert_chain_pem, &k2, &NodeKey::generate().unwrap()).await;
    let (c, message) = refusal(revoked);
    assert_eq!(c, code::CERTIFICATE_REJECTED, "{message}");
    assert!(message.contains("revoked"), "{message}");

    store.set_device_disabled("n3", true).await.unwrap();
    let disabled = renew(&dir, &n3.cert_chain_pem, &k3, &NodeKey::generate().unwrap()).await;
    assert_eq!(refusal(disabled).0, code::DEVICE_DISABLED);

    // No client certificate at all.
    let csr = NodeKey::generate()
        .unwrap()
        .csr_pem("n4.cyphonic.internal")
        .unwrap();
    let config = cyphonic_pki::node_client_config(&dir.root_der, None).unwrap();
    let anonymous = anonymous_renew(&dir, config, &csr).await;
    assert_eq!(anonymous.0, code::CERTIFICATE_REQUIRED);

    // Nothing was issued for any of them; the enabled n4 still renews.
    for device in ["n2", "n3"] {
        assert_eq!(store.certificates_of(device).await.unwrap().len(), 1);
    }
    renew(&dir, &n4.cert_chain_pem, &k4, &NodeKey::generate().unwrap())
        .await
        .expect("n4 renews");
    cloud.stop().await;
}

/// `renew` without a client certificate: the code and message.
async fn anonymous_renew(
    dir: &CloudDir,
    config: Arc<cyphonic_pki::rustls::ClientConfig>,
    csr_pem: &str,
) -> (String, String) {
    use cyphonic_proto::login::{encode_line, Request, Response};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let tcp = tokio::net::TcpStream::connect(dir.as_v4()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut stream = BufReader::new(tls);
    let request = Request::Renew {
        csr_pem: csr_pem.to_owned(),
    };
    stream
        .get_mut()
        .write_all(&encode_line(&request))
        .await
        .unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    match serde_json::from_str(&line).unwrap() {
        Response::Error { code, message } => (code, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_daemon_renews_into_its_state_directory_and_after_a_lost_answer() {
    let (dir, cloud) = cloud(&["n5"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = StatePaths::new(tmp.path().join("state"));
    let root_pem = cyphonic_pki::der_to_pem(&dir.root_der);
    let file =
        cyphonic_node::daemon::enroll(&state, dir.as_v4(), "127.0.0.1", &root_pem, "n5", PASSWORD)
            .await
            .unwrap();
    let credentials = Credentials::load(&state, &file.fqdn).unwrap();
    let first = credentials.certificate().unwrap();
    let statics = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut renewer = Renewer::new(&state.dir, &credentials, statics.clone()).unwrap();
    let status = renewer.status();
    assert_eq!(status.cert_renewals, 0);
    assert_eq!(status.cert_serial, format!("{:#x}", first.serial));
    let life = CertLife::of(first.not_before, first.not_after);
    assert_eq!(life.lifetime(), LIFETIME);
    let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(status.cert_next_renewal, Some(unix(life.renew_at())));
    assert_eq!(status.cert_not_after, unix(first.not_after));

    // A renewal before this run: its key in node.key.next, its answer lost.
    let lost_key = NodeKey::generate().unwrap();
    cyphonic_node::config::write_private(&state.next_key(), &lost_key.to_pem()).unwrap();
    until_renewable(&dir, &credentials.chain_pem).await;
    let lost = renew(
        &dir,
        &credentials.chain_pem,
        &NodeKey::from_pem(&credentials.key_pem).unwrap(),
        &lost_key,
    )
    .await
    .expect("renewed, answer lost");

    // The daemon's attempt is for the same key, so it gets that same
    // certificate (another key would be `already_renewed`).
    let credentials = Arc::new(credentials);
    renewer.start(&file, &credentials, &[]);
    let result = tokio::time::timeout(Duration::from_secs(15), renewer.next_result())
        .await
        .expect("an answer");
    let renewed = renewer
        .finish(result, &file.fqdn, &credentials.root_pem)
        .unwrap_or_else(|| panic!("renewal failed: {:?}", renewer.status()));
    assert_eq!(renewed.chain_pem, lost);
    assert_eq!(renewed.key_pem, lost_key.to_pem());

    // Installed: node.pem and node.key are the new ones, node.key.next is
    // gone, and a restart loads them.
    assert_eq!(std::fs::read_to_string(state.chain()).unwrap(), lost);
    assert_eq!(
        std::fs::read_to_string(state.key()).unwrap(),
        *lost_key.to_pem()
    );
    assert!(!state.next_key().exists());
    let loaded = Credentials::load(&state, &file.fqdn).unwrap();
    let second = loaded.certificate().unwrap();
    assert_ne!(second.serial, first.serial);
    assert!(second.not_after > first.not_after);
    let status = renewer.status();
    assert_eq!(status.cert_renewals, 1);
    assert_eq!(status.cert_serial, format!("{:#x}", second.serial));
    assert_eq!(status.cert_not_after, unix(second.not_after));
    assert_eq!(status.cert_renewal_error, None);

    // The core gets the new identity with the first session of the new
    // certificate, bound to the run's static key; Logins with the old one
    // are stale.
    assert_eq!(renewer.generation(), 1);
    assert!(matches!(renewer.on_login(0), LoginUse::Stale));
    let LoginUse::RenewedSession(identity) = renewer.on_login(1) else {
        panic!("the first session of the renewed certificate");
    };
    assert_eq!(identity.static_keys.public, statics.public);
    assert_eq!(
        identity.cert_chain_der,
        cyphonic_pki::pem_to_der_chain(&lost).unwrap()
    );
    cyphonic_pki::verify_ed25519(
        &lost_key.public_key(),
        &cyphonic_proto::handshake::binding_message(&statics.public),
        &identity.binding_sig,
    )
    .expect("the static key is bound to the new certificate");
    assert!(matches!(renewer.on_login(1), LoginUse::Session));

    // And the daemon's Login with it works.
    let (info, _) = cyphonic_node::daemon::login(&file, &renewed, &[])
        .await
        .unwrap();
    let session = dir
        .other_store()
        .await
        .session(info.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.cert_serial, second.serial);
    cloud.stop().await;
}
