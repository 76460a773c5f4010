//! Shared by the transport tests: certificates from a throwaway CA, log
//! capture, a UDP forwarder that can black-hole, and receive helpers.

#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cyphonic_pki::{create_ca, pem_to_der_chain, CaMaterial, Issuer, NodeKey};
use cyphonic_transport::{Hub, LegEvent, Received, TlsIdentity};
use tokio::net::UdpSocket;

pub const CLOUD_NAME: &str = "cloud.cyphonic.test";

static SERIAL: AtomicU64 = AtomicU64::new(1000);

fn serial() -> u64 {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A throwaway installation: root, AS intermediate, issued certificates.
pub struct TestPki {
    pub ca: CaMaterial,
    issuer: Issuer,
    pub root_der: Vec<u8>,
}

impl TestPki {
    pub fn new(domain: &str) -> Self {
        let ca = create_ca(domain, SystemTime::now()).expect("CA");
        let issuer =
            Issuer::from_pem(&ca.intermediate_cert_pem, &ca.intermediate_key_pem).expect("issuer");
        let root_der = pem_to_der_chain(&ca.root_cert_pem)
            .expect("root PEM")
            .remove(0);
        TestPki {
            ca,
            issuer,
            root_der,
        }
    }

    /// A node certificate for `fqdn`, trusting this installation's root.
    pub fn node(&self, fqdn: &str) -> TlsIdentity {
        let now = SystemTime::now();
        self.node_valid(
            fqdn,
            now - Duration::from_secs(300),
            now + Duration::from_secs(86_400),
        )
    }

    /// [`TestPki::node`] valid from `not_before` to `not_after`.
    pub fn node_valid(
        &self,
        fqdn: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> TlsIdentity {
        let key = NodeKey::generate().expect("key");
        let csr = key.csr_pem(fqdn).expect("CSR");
        let cert = self
            .issuer
            .issue_node(&csr, fqdn, &[], serial(), not_before, not_after)
            .expect("node certificate");
        TlsIdentity {
            chain_pem: format!("{}{}", cert.cert_pem, self.issuer.cert_pem()),
            key_pem: key.to_pem().to_string(),
            root_der: self.root_der.clone(),
        }
    }

    /// A cloud server certificate for `CLOUD_NAME`, 127.0.0.1 and ::1.
    pub fn server(&self) -> TlsIdentity {
        let ips = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let (cert, key_pem) = self
            .issuer
            .issue_server(&[CLOUD_NAME.to_owned()], &ips, serial(), SystemTime::now())
            .expect("server certificate");
        TlsIdentity {
            chain_pem: format!("{}{}", cert.cert_pem, self.issuer.cert_pem()),
            key_pem: key_pem.to_string(),
            root_der: self.root_der.clone(),
        }
    }
}

/// `identity` trusting another root.
pub fn trusting(mut identity: TlsIdentity, root_der: &[u8]) -> TlsIdentity {
    identity.root_der = root_der.to_vec();
    identity
}

/// A server restarted on the ports of one that was dropped: bound as soon
/// as they are free (the old listener goes with its task, and another
/// test's connection may hold a port as its ephemeral one for a moment),
/// as a restarted service's supervisor would retry.
pub async fn restart_server(
    identity: &TlsIdentity,
    quic: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
) -> Hub {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Hub::server(identity.clone(), quic.clone(), tcp.clone(), true).await {
            Ok(s) => return s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %format!("{e:#}"), "ports not free yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the ports never came free: {e:#}"),
        }
    }
}

pub fn any_port(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("IP"), 0)
}

/// Received datagrams until `n` arrived or `limit` passed.
pub async fn recv_n(hub: &Hub, n: usize, limit: Duration) -> Vec<Received> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, hub.recv()).await {
            Ok(Some(r)) => got.push(r),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// The next event matching `pred` within `limit`.
pub async fn wait_event(
    hub: &Hub,
    limit: Duration,
    pred: impl Fn(&LegEvent) -> bool,
) -> Option<LegEvent> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, hub.leg_event()).await {
            Ok(Some(e)) if pred(&e) => return Some(e),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A datagram of `len` bytes naming `index`: type byte 4, the index, then
/// a fill derived from it, so corruption and mix-ups show.
pub fn numbered(index: u32, len: usize) -> Vec<u8> {
    let mut d = vec![(index % 251) as u8; len];
    d[0] = 4;
    d[1..5].copy_from_slice(&index.to_be_bytes());
    d
}

pub fn index_of(d: &[u8]) -> u32 {
    u32::from_be_bytes([d[1], d[2], d[3], d[4]])
}

pub fn check_numbered(d: &[u8], len: usize) -> u32 {
    assert_eq!(d.len(), len, "datagram arrived in one piece");
    let i = index_of(d);
    assert_eq!(d, numbered(i, len).as_slice(), "datagram {i} intact");
    i
}

/// The kernel's UDP receive-buffer drop counters (IPv4 + IPv6), to tell
/// the kernel's losses from ours.
pub fn kernel_udp_rcvbuf_errors() -> u64 {
    let mut total = 0;
    if let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") {
        let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        if lines.len() == 2 {
            let names: Vec<&str> = lines[0].split_whitespace().collect();
            let values: Vec<&str> = lines[1].split_whitespace().collect();
            if let Some(i) = names.iter().position(|n| *n == "RcvbufErrors") {
                total += values
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    if let Ok(snmp6) = std::fs::read_to_string("/proc/net/snmp6") {
        for line in snmp6.lines() {
            let mut parts = line.split_whitespace();
            if parts.next() == Some("Udp6RcvbufErrors") {
                total += parts
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Log output of the whole test binary. Installed once as the global
/// subscriber (thread-local subscribers miss events from callsites other
/// threads registered first); tests running in parallel share it, so look
/// for lines that name your own addresses.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines containing every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

pub fn capture_logs() -> LogBuf {
    static LOGS: std::sync::OnceLock<LogBuf> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
    .clone()
}

/// A UDP forwarder for one client: client -> `front` -> target, and back.
/// With no target it black-holes both ways, like a server that vanished.
pub struct UdpForwarder {
    pub front: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UdpForwarder {
    pub async fn new(target: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let target = Arc::new(Mutex::new(Some(target)));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (front, back, target, client) =
                (front.clone(), back.clone(), target.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let to = *target.lock().unwrap();
                    if let Some(to) = to {
                        let _ = back.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        let down = {
            let (front, back, target, client) =
                (front.clone(), back.clone(), target.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = back.recv_from(&mut buf).await {
                    let expected = *target.lock().unwrap();
                    let to = *client.lock().unwrap();
                    if let (Some(expected), Some(to)) = (expected, to) {
                        if from == expected {
                            let _ = front.send_to(&buf[..n], to).await;
                        }
                    }
                }
            })
        };
        UdpForwarder {
            front: front.local_addr().unwrap(),
            target,
            tasks: vec![up, down],
        }
    }

    pub fn set_target(&self, target: Option<SocketAddr>) {
        *self.target.lock().unwrap() = target;
    }
}

impl Drop for UdpForwarder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
