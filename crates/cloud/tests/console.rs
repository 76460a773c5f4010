//! The web console's guards, over real HTTP to a running cloud: login
//! (and its limit), the session cookie's attributes, CSRF tokens on every
//! form, cross-site posts, logout; and HTTPS with the cloud's certificate.
//! The pages themselves are driven in Chromium by `cyphonic lab console`.

mod common;

use std::sync::Arc;

use common::{free_tcp, CloudDir, Running};
use cyphonic_cloud::admin;
use cyphonic_cloud::run::Roles;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "correct horse battery";

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `name=value` of a Set-Cookie header for cookie `name`.
    fn cookie(&self, name: &str) -> Option<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| {
                let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
                let (k, value) = pair.split_once('=')?;
                (k == name).then(|| (value.to_owned(), attrs.to_owned()))
            })
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        self.body[at..at + 64].to_owned()
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Answer {
    let body = form.unwrap_or("");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if form.is_some() {
        head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(common::WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A cloud with the console on plain HTTP on loopback and one
/// administrator, `ops`.
async fn cloud(tls: bool) -> (CloudDir, Running, std::net::SocketAddr) {
    let mut dir = CloudDir::new().await;
    let listen = free_tcp("127.0.0.1");
    dir.cfg.console_listen = Some(listen);
    dir.cfg.console_tls = tls;
    dir.cfg.validate().unwrap();
    admin::add_admin(&dir.cfg, "ops", Some(PASSWORD))
        .await
        .unwrap();
    let running = Running::start(&dir, Roles::All).await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while TcpStream::connect(listen).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no console");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (dir, running, listen)
}

async fn http(
    at: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: Option<&str>,
) -> Answer {
    exchange(
        TcpStream::connect(at).await.unwrap(),
        method,
        path,
        headers,
        form,
    )
    .await
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Logs `ops` in; the session cookie header and the page's CSRF token.
async fn log_in(at: std::net::SocketAddr) -> (String, String) {
    let page = http(at, "GET", "/login", &[], None).await;
    let (login_token, _) = page.cookie("__Host-cyphonic-login").unwrap();
    let cookie = format!("__Host-cyphonic-login={login_token}");
    let form = format!("name=ops&password={}&csrf={}", enc(PASSWORD), page.csrf());
    let done = http(at, "POST", "/login", &[("Cookie", &cookie)], Some(&form)).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let (session, _) = done.cookie("__Host-cyphonic-session").unwrap();
    let cookie = format!("__Host-cyphonic-session={session}");
    let devices = http(at, "GET", "/devices", &[("Cookie", &cookie)], None).await;
    assert_eq!(devices.status, 200);
    (cookie, devices.csrf())
}

#[tokio::test]
async fn login_sessions_and_forms_are_guarded() {
    let (dir, running, at) = cloud(false).await;

    // Anonymous: to the login page.
    let r = http(at, "GET", "/devices", &[], None).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));

    // The login form's token must come back in the cookie it was set in.
    let page = http(at, "GET", "/login", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("frame-ancestors 'none'")));
    let (login_token, attrs) = page.cookie("__Host-cyphonic-login").unwrap();
    assert_eq!(page.csrf(), login_token);
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("Secure") && attrs.contains("SameSite=Strict")
    );
    let form = format!("name=ops&password={}&csrf={login_token}", enc(PASSWORD));
    let no_cookie = http(at, "POST", "/login", &[], Some(&form)).await;
    assert_eq!(no_cookie.status, 403, "a login without its cookie");
    let cookie = format!("__Host-cyphonic-login={login_token}");
    let wrong = format!("name=ops&password=wrong-password&csrf={login_token}");
    let r = http(at, "POST", "/login", &[("Cookie", &cookie)], Some(&wrong)).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong name or password"));
    assert!(r.cookie("__Host-cyphonic-session").is_none());
    let unknown = format!("name=nobody&password={}&csrf={login_token}", enc(PASSWORD));
    let r = http(at, "POST", "/login", &[("Cookie", &cookie)], Some(&unknown)).await;
    assert_eq!(r.status, 401);

    let (session, csrf) = log_in(at).await;
    assert_eq!(csrf.len(), 64);

    // A form without the token, with a wrong one, or from another site
    // changes nothing.
    let store = dir.other_store().await;
    let r = http(
        at,
        "POST",
        "/devices",
        &[("Cookie", &session)],
        Some("device_id=d1"),
    )
    .await;
    assert!(r.status >= 400, "no token: {}", r.status);
    let bad = format!("device_id=d1&csrf={}", "0".repeat(64));
    let r = http(at, "POST", "/devices", &[("Cookie", &session)], Some(&bad)).await;
    assert_eq!(r.status, 403);
    let good = format!("device_id=d1&csrf={csrf}");
    let r = http(
        at,
        "POST",
        "/devices",
        &[("Cookie", &session), ("Sec-Fetch-Site", "cross-site")],
        Some(&good),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http(at, "POST", "/devices", &[], Some(&good)).await;
    assert_eq!(r.status, 303, "no session: to the login page");
    assert!(store.device("d1").await.unwrap().is_none());

    // With both, the device is added and its one-time token shown once.
    let r = http(at, "POST", "/devices", &[("Cookie", &session)], Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("id=\"token\""));
    assert!(store.device("d1").await.unwrap().is_some());
    let list = http(at, "GET", "/devices", &[("Cookie", &session)], None).await;
    assert!(list.body.contains("id=\"device-d1\""));
    assert!(!list.body.contains("id=\"token\""));

    // Markup in a value is shown, never run.
    let evil = format!("device_id={}&csrf={csrf}", enc("<b>x</b>"));
    let r = http(at, "POST", "/devices", &[("Cookie", &session)], Some(&evil)).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("&lt;b&gt;x&lt;/b&gt;") && !r.body.contains("<b>x</b>"));

    // Disable from the console reaches the store.
    let form = format!("csrf={csrf}");
    let r = http(
        at,
        "POST",
        "/devices/d1/disable",
        &[("Cookie", &session)],
        Some(&form),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(store.device("d1").await.unwrap().unwrap().disabled);

    // Logout ends the session for good.
    let r = http(at, "POST", "/logout", &[("Cookie", &session)], Some(&form)).await;
    assert_eq!(r.status, 303);
    let r = http(at, "GET", "/devices", &[("Cookie", &session)], None).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    store.close().await;
    running.stop().await;
}

#[tokio::test]
async fn failed_logins_from_one_address_are_limited() {
    let (_dir, running, at) = cloud(false).await;
    let page = http(at, "GET", "/login", &[], None).await;
    let (token, _) = page.cookie("__Host-cyphonic-login").unwrap();
    let cookie = format!("__Host-cyphonic-login={token}");
    let wrong = format!("name=ops&password=wrong-password&csrf={token}");
    for _ in 0..cyphonic_cloud::console::MAX_LOGIN_FAILURES {
        let r = http(at, "POST", "/login", &[("Cookie", &cookie)], Some(&wrong)).await;
        assert_eq!(r.status, 401);
    }
    // Now even the right password waits.
    let right = format!("name=ops&password={}&csrf={token}", enc(PASSWORD));
    let r = http(at, "POST", "/login", &[("Cookie", &cookie)], Some(&right)).await;
    assert_eq!(r.status, 429);
    assert!(r.cookie("__Host-cyphonic-session").is_none());
    running.stop().await;
}

#[tokio::test]
async fn over_tls_the_console_presents_a_certificate_of_the_clouds_root() {
    let (dir, running, at) = cloud(true).await;
    let mut config = (*cyphonic_pki::node_client_config(&dir.root_der, None).unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector
        .connect(name, TcpStream::connect(at).await.unwrap())
        .await
        .expect("a TLS handshake that verifies against the root");
    let page = exchange(tls, "GET", "/login", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"password\""));
    // Plain HTTP to the TLS port gets no page.
    let mut plain = TcpStream::connect(at).await.unwrap();
    plain
        .write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("id=\"password\""));
    running.stop().await;
}

#[test]
fn plain_http_beyond_loopback_is_refused_by_the_configuration() {
    let mut cfg = cyphonic_cloud::CloudConfig::new("/var/lib/cyphonic");
    cfg.console_listen = Some("192.0.2.1:8443".parse().unwrap());
    cfg.console_tls = false;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("console_listen"), "{e}");
    cfg.console_listen = Some("127.0.0.1:8443".parse().unwrap());
    cfg.validate().unwrap();
}
