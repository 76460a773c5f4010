//! The node's side of the Login flow (see [`cyphonic_proto::login`]): enroll once
//! with device ID and password, then log in with the certificate, and renew
//! the certificate before it expires.
//!
//! Each call opens one TLS connection, sends one request and reads one
//! answer, all within [`TIMEOUT`].

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use cyphonic_proto::login::{encode_line, LoginOk, Password, Request, Response, MAX_LINE};

/// Time allowed for connecting, the TLS handshake and the exchange together.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to the AS failed.
#[derive(Debug, thiserror::Error)]
pub enum AsClientError {
    /// The AS answered with an error; `code` is one of
    /// [`cyphonic_proto::login::code`].
    #[error("the AS refused: {message} ({code})")]
    Refused { code: String, message: String },
    /// TLS failed: the AS's certificate is not from our root, or the AS
    /// rejected ours, or the handshake broke.
    #[error("TLS with the AS failed: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot talk to the AS: {0}")]
    Io(#[source] io::Error),
    #[error("the AS did not answer within {0:?}")]
    Timeout(Duration),
    /// The AS answered something this node does not understand.
    #[error("unexpected answer from the AS: {0}")]
    Protocol(String),
    /// The local side is unusable: bad server name, certificate or key.
    #[error("cannot set up TLS to the AS: {0}")]
    Setup(String),
}

/// What enrolling gives the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub fqdn: String,
    /// The node certificate followed by the intermediate CA certificate.
    pub cert_chain_pem: String,
    pub root_pem: String,
}

/// The common key is wiped on drop.
impl Drop for LoginInfo {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.common_key);
    }
}

impl zeroize::ZeroizeOnDrop for LoginInfo {}

/// What logging in gives the node: its session with the NMS and its
/// addresses.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginInfo {
    pub session_id: u64,
    /// Key for node <-> NMS signaling during this session.
    pub common_key: [u8; 32],
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub domain: String,
    pub keepalive_secs: u64,
    pub nms_port: u16,
    pub session_expires_in: u64,
    /// The cloud's addresses of every IP version.
    pub cloud_addrs: Vec<std::net::IpAddr>,
    pub quic_port: u16,
    pub tcp_port: u16,
    /// Cooperating domains the NMS directs routes to (§5.19).
    pub linked_domains: Vec<cyphonic_proto::login::LinkedDomain>,
    /// The cloud's other instances (§5.19).
    pub instance_addrs: Vec<std::net::IpAddr>,
}

impl fmt::Debug for LoginInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginInfo")
            .field("session_id", &self.session_id)
            .field("common_key", &"<redacted>")
            .field("fqdn", &self.fqdn)
            .field("vip4", &self.vip4)
            .field("vip6", &self.vip6)
            .field("domain", &self.domain)
            .field("keepalive_secs", &self.keepalive_secs)
            .field("nms_port", &self.nms_port)
            .field("session_expires_in", &self.session_expires_in)
            .finish()
    }
}

/// Enrolls a device: proves it with its password and gets a certificate
/// for the key in `csr_pem`. `server_name` is a DNS name or an IP address
/// that the AS certificate names; `root_der` is the root the node trusts.
/// `addrs` are the AS's ports at one address, the first preferred
/// ([`connect_first`]): the request goes on the first connection made,
/// once (a one-time password is spent by the first request the AS reads).
pub async fn enroll(
    addrs: &[SocketAddr],
    server_name: &str,
    root_der: &[u8],
    device_id: &str,
    password: &str,
    csr_pem: &str,
) -> Result<Enrolled, AsClientError> {
    let config = cyphonic_pki::node_client_config(root_der, None)
        .map_err(|e| AsClientError::Setup(e.to_string()))?;
    let request = Request::Enroll {
        device_id: device_id.to_owned(),
        password: Password(password.to_owned()),
        csr_pem: csr_pem.to_owned(),
    };
    enrolled(exchange(addrs, server_name, config, &request).await?)
}

/// An adapter gets a certificate for general node `device_id` (which it
/// serves) for the key in `csr_pem`, proving itself with its own
/// certificate (`chain_pem`) and key.
#[allow(clippy::too_many_arguments)]
pub async fn enroll_general(
    addr: SocketAddr,
    server_name: &str,
    root_der: &[u8],
    chain_pem: &str,
    key_pem: &str,
    device_id: &str,
    csr_pem: &str,
) -> Result<Enrolled, AsClientError> {
    let config = cyphonic_pki::node_client_config(root_der, Some((chain_pem, key_pem)))
        .map_err(|e| AsClientError::Setup(e.to_string()))?;
    let request = Request::EnrollGeneral {
        device_id: device_id.to_owned(),
        csr_pem: csr_pem.to_owned(),
    };
    enrolled(exchange(&[addr], server_name, config, &request).await?)
}

/// Logs in with the node certificate (`chain_pem`: node certificate then
/// intermediate) and its key, and opens a session.
pub async fn login(
    addr: SocketAddr,
    server_name: &str,
    root_der: &[u8],
    chain_pem: &str,
    key_pem: &str,
) -> Result<LoginInfo, AsClientError> {
    let config = cyphonic_pki::node_client_config(root_der, Some((chain_pem, key_pem)))
        .map_err(|e| AsClientError::Setup(e.to_string()))?;
    match exchange(&[addr], server_name, config, &Request::Login {}).await? {
        Response::LoginOk(ok) => login_info(ok),
        other => Err(unexpected(other)),
    }
}

/// Renews the node certificate (`chain_pem`, proved with its key
/// `key_pem`): the AS issues a new one for the same device and the key in
/// `csr_pem` (a new key). Returns the new chain (certificate, then
/// intermediate).
pub async fn renew(
    addr: SocketAddr,
    server_name: &str,
    root_der: &[u8],
    chain_pem: &str,
    key_pem: &str,
    csr_pem: &str,
) -> Result<String, AsClientError> {
    let config = cyphonic_pki::node_client_config(root_der, Some((chain_pem, key_pem)))
        .map_err(|e| AsClientError::Setup(e.to_string()))?;
    let request = Request::Renew {
        csr_pem: csr_pem.to_owned(),
    };
    match exchange(&[addr], server_name, config, &request).await? {
        Response::Renewed { cert_chain_pem, .. } => Ok(cert_chain_pem),
        other => Err(unexpected(other)),
    }
}

/// The certificate an `enrolled` answer carries.
fn enrolled(response: Response) -> Result<Enrolled, AsClientError> {
    match response {
        Response::Enrolled {
            fqdn,
            cert_chain_pem,
            root_pem,
        } => Ok(Enrolled {
            fqdn,
            cert_chain_pem,
            root_pem,
        }),
        other => Err(unexpected(other)),
    }
}

fn login_info(mut ok: LoginOk) -> Result<LoginInfo, AsClientError> {
    let mut info = LoginInfo {
        session_id: ok.session_id,
        // Decoded in place below: no copy of the key is left behind.
        common_key: [0u8; 32],
        fqdn: std::mem::take(&mut ok.fqdn),
        vip4: ok.vip4,
        vip6: ok.vip6,
        domain: std::mem::take(&mut ok.domain),
        keepalive_secs: ok.keepalive_secs,
        nms_port: ok.nms_port,
        session_expires_in: ok.session_expires_in,
        cloud_addrs: std::mem::take(&mut ok.cloud_addrs),
        quic_port: ok.quic_port,
        tcp_port: ok.tcp_port,
        linked_domains: std::mem::take(&mut ok.linked_domains),
        instance_addrs: std::mem::take(&mut ok.instance_addrs),
    };
    hex::decode_to_slice(&ok.common_key, &mut info.common_key)
        .map_err(|_| AsClientError::Protocol("common_key is not 32 bytes of hex".into()))?;
    Ok(info)
}

fn unexpected(response: Response) -> AsClientError {
    match response {
        Response::Error { code, message } => AsClientError::Refused { code, message },
        Response::Enrolled { .. } => AsClientError::Protocol("unexpected `enrolled`".into()),
        Response::LoginOk(_) => AsClientError::Protocol("unexpected `login_ok`".into()),
        Response::Renewed { .. } => AsClientError::Protocol("unexpected `renewed`".into()),
    }
}

/// How long the preferred address has before the next is tried as well
/// (RFC 8305's connection attempt delay).
pub const CONNECT_STAGGER: Duration = Duration::from_millis(250);

/// A TCP connection to the first of `addrs` that accepts: the first is
/// tried at once, each next one [`CONNECT_STAGGER`] later or as soon as
/// every earlier one failed, all racing from then on (a firewall that
/// lets only the web out drops the others silently). Errs with the last
/// failure when none connects. The MSS is capped
/// ([`cyphonic_transport::CONSERVATIVE_MSS`]) so the exchange survives a
/// small-MTU path that drops ICMP.
pub async fn connect_first(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut last_err = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    loop {
        if next < addrs.len() && (attempts.is_empty() || next == 0) {
            let addr = addrs[next];
            attempts.spawn(cyphonic_transport::connect_tcp(addr));
            next += 1;
            continue;
        }
        if attempts.is_empty() {
            return Err(last_err);
        }
        let stagger = tokio::time::sleep(CONNECT_STAGGER);
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(e))) => last_err = e,
                Some(Err(e)) => last_err = io::Error::other(e),
                None => {}
            },
            () = stagger, if next < addrs.len() => {
                let addr = addrs[next];
                attempts.spawn(cyphonic_transport::connect_tcp(addr));
                next += 1;
            }
        }
    }
}

/// Sends one request on a fresh TLS connection (to the first of `addrs`
/// that accepts, [`connect_first`]) and reads its answer.
async fn exchange(
    addrs: &[SocketAddr],
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    request: &Request,
) -> Result<Response, AsClientError> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
        AsClientError::Setup(format!(
            "{server_name:?} is neither a DNS name nor an IP address"
        ))
    })?;
    // The AS shares TCP 443 with the cloud's TLS legs and tells its
    // connections apart by ALPN; on its own port the offer is ignored.
    let mut config = (*config).clone();
    config.alpn_protocols = vec![cyphonic_proto::login::AS_ALPN.to_vec()];
    let config = Arc::new(config);
    let exchange = async {
        let tcp = connect_first(addrs).await.map_err(AsClientError::Io)?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(classify)?;
        let mut stream = BufReader::new(tls);
        stream
            .get_mut()
            .write_all(&encode_line(request))
            .await
            .map_err(classify)?;
        stream.get_mut().flush().await.map_err(classify)?;
        let mut line = Vec::new();
        // With TLS 1.3 the AS judges our certificate after our side of the
        // handshake is done, so its rejection arrives here, as an alert.
        (&mut stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(classify)?;
        if line.last() != Some(&b'\n') {
            return Err(AsClientError::Protocol(if line.is_empty() {
                "the AS closed the connection without answering".into()
            } else if line.len() >= MAX_LINE {
                format!("answer longer than {MAX_LINE} bytes")
            } else {
                "the AS closed the connection mid-answer".into()
            }));
        }
        let response: Response = serde_json::from_slice(&line)
            .map_err(|e| AsClientError::Protocol(format!("unreadable answer: {e}")))?;
        // Best effort close_notify; the answer is already in hand.
        let _ = stream.get_mut().shutdown().await;
        Ok(response)
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| AsClientError::Timeout(TIMEOUT))?
}

/// Separates TLS failures (carried inside io::Error by tokio-rustls) from
/// plain IO ones.
fn classify(e: io::Error) -> AsClientError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => AsClientError::Tls(tls.clone()),
        None => AsClientError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preferred port refuses (or is dropped): the next one is used;
    /// with none that accepts, the error says why.
    #[tokio::test]
    async fn the_first_port_that_accepts_is_used() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let stream = connect_first(&[closed, open]).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        // Capped from the SYN on (the listener here does not cap).
        #[cfg(unix)]
        {
            let mss = socket2::SockRef::from(&stream).mss().unwrap();
            assert!(mss <= cyphonic_transport::CONSERVATIVE_MSS, "MSS {mss}");
        }
        let err = connect_first(&[closed]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(connect_first(&[]).await.is_err());
    }

    #[test]
    fn the_common_key_is_decoded_in_place_and_wiped_with_the_login() {
        let ok = LoginOk {
            session_id: 1,
            common_key: "a5".repeat(32),
            fqdn: "n1.cyphonic.internal".into(),
            vip4: Ipv4Addr::new(100, 64, 0, 2),
            vip6: "fd7a:6379:7068::2".parse().unwrap(),
            domain: "cyphonic.internal".into(),
            keepalive_secs: 15,
            nms_port: 4502,
            session_expires_in: 86_400,
            cloud_addrs: Vec::new(),
            quic_port: 0,
            tcp_port: 0,
            linked_domains: Vec::new(),
            instance_addrs: Vec::new(),
        };
        let info = login_info(ok).unwrap();
        assert_eq!(info.common_key, [0xa5; 32]);
        assert_eq!(info.fqdn, "n1.cyphonic.internal");
        assert_eq!(
            cyphonic_proto::key_bytes_after_drop!(info, common_key),
            [0; 32]
        );
    }
}
