//! Password guessing at the AS is limited per device ID, per source and per
//! connection, and one source cannot hold every connection. The real AS
//! over TLS on 127.0.0.1 and ::1 (two sources), the real store.

mod common;

use std::time::Duration;

use common::{refusal, CloudDir, Running, WAIT};
use cyphonic_cloud::as_server::{code, FIRST_LOCKOUT, FREE_FAILURES, MAX_CONNECTIONS_PER_SOURCE};
use cyphonic_cloud::run::Roles;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const PASSWORD: &str = "correct horse battery";

/// A refusal for too many attempts, and how long it says to wait.
fn too_many<T: std::fmt::Debug>(
    result: Result<T, cyphonic_node::as_client::AsClientError>,
) -> Duration {
    let (code, message) = refusal(result);
    assert_eq!(code, code::TOO_MANY_ATTEMPTS, "{message}");
    let secs: u64 = message
        .split("try again in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {message:?}"));
    Duration::from_secs(secs)
}

#[tokio::test]
async fn wrong_passwords_lock_a_device_id_from_every_source() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    dir.add("n2", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    // Five wrong passwords for n1, from two sources (neither reaches five).
    for i in 0..FREE_FAILURES {
        let at = if i < 3 { dir.as_v4() } else { dir.as_v6() };
        let (code, _) = refusal(dir.enroll(at, "n1", "guess").await);
        assert_eq!(code, code::BAD_CREDENTIALS);
    }
    // n1 is locked out, even with its password, from anywhere.
    for at in [dir.as_v4(), dir.as_v6()] {
        let wait = too_many(dir.enroll(at, "n1", PASSWORD).await);
        assert!(
            wait <= FIRST_LOCKOUT && wait > FIRST_LOCKOUT / 2,
            "{wait:?}"
        );
    }
    // Other devices from the same sources are not.
    dir.enroll(dir.as_v4(), "n2", PASSWORD).await.unwrap();
    let store = dir.other_store().await;
    assert!(store.certificates_of("n1").await.unwrap().is_empty());
    store.close().await;
    cloud.stop().await;
}

#[tokio::test]
async fn wrong_passwords_lock_a_source_for_every_device_id() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    // Unknown device IDs count like known ones (nothing tells them apart).
    for i in 0..FREE_FAILURES {
        let (code, _) = refusal(dir.enroll(dir.as_v4(), &format!("ghost{i}"), "guess").await);
        assert_eq!(code, code::BAD_CREDENTIALS);
    }
    too_many(dir.enroll(dir.as_v4(), "n1", PASSWORD).await);
    too_many(dir.enroll(dir.as_v4(), "ghost9", "guess").await);
    // The other source is not locked out.
    dir.enroll(dir.as_v6(), "n1", PASSWORD).await.unwrap();
    cloud.stop().await;
}

/// Sends `lines` on one TLS connection without a client certificate;
/// returns the answers until the AS closes.
async fn exchange(dir: &CloudDir, lines: &[u8]) -> Vec<serde_json::Value> {
    let config = cyphonic_pki::node_client_config(&dir.root_der, None).unwrap();
    let tcp = TcpStream::connect(dir.as_v4()).await.unwrap();
    let tls = TlsConnector::from(config)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut stream = BufReader::new(tls);
    stream.get_mut().write_all(lines).await.unwrap();
    stream.get_mut().flush().await.unwrap();
    let mut answers = Vec::new();
    loop {
        let mut line = String::new();
        match tokio::time::timeout(WAIT, stream.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => answers.push(serde_json::from_str(&line).unwrap()),
            Ok(_) => return answers,
            Err(_) => panic!("the AS neither answered nor closed; answers so far {answers:?}"),
        }
    }
}

#[tokio::test]
async fn one_connection_tries_one_enrollment() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    let enroll = |pw: &str| {
        format!(r#"{{"type":"enroll","device_id":"n1","password":"{pw}","csr_pem":"x"}}"#)
    };
    let lines = format!(
        "{}\n{}\n{{\"type\":\"login\"}}\n",
        enroll("guess"),
        enroll(PASSWORD)
    );
    let answers = exchange(&dir, lines.as_bytes()).await;
    assert_eq!(answers.len(), 2, "closed after the second: {answers:?}");
    assert_eq!(answers[0]["code"], code::BAD_CREDENTIALS);
    assert_eq!(answers[1]["code"], code::TOO_MANY_ATTEMPTS);
    assert!(
        answers[1]["message"]
            .as_str()
            .unwrap()
            .contains("new connection"),
        "{answers:?}"
    );
    cloud.stop().await;
}

#[tokio::test]
async fn one_source_cannot_hold_every_connection() {
    let dir = CloudDir::new().await;
    dir.add("n1", Some(PASSWORD)).await;
    let cloud = Running::start(&dir, Roles::As).await;
    // Connections that never start TLS; the AS would wait 10 s for each.
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS_PER_SOURCE {
        held.push(TcpStream::connect(dir.as_v4()).await.unwrap());
    }
    // Accepted in order: this one finds the source full and is closed at
    // once, long before the AS's idle timeout.
    let mut over = TcpStream::connect(dir.as_v4()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Another source is served meanwhile.
    dir.enroll(dir.as_v6(), "n1", PASSWORD).await.unwrap();
    // Once the held ones close, the source is served again.
    drop(held);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match dir.enroll(dir.as_v4(), "n1", PASSWORD).await {
            Err(cyphonic_node::as_client::AsClientError::Refused { code: c, .. })
                if c == code::CREDENTIAL_USED =>
            {
                break
            }
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the source is still refused: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cloud.stop().await;
}
