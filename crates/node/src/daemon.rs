//! The node daemon: the tokio shell around [`crate::core::Node`]. It owns
//! the AS TLS client, the UDP sockets' control traffic, the DNS listener,
//! the status socket and the TUN device, and starts the data plane.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cyphonic_pki::{NodeKey, Verifier};
use cyphonic_platform::tun::{Tun, TunConfig};
use cyphonic_proto::handshake::{binding_message, LocalIdentity, StaticKeypair};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixListener};
use tokio::sync::mpsc;

use crate::config::{write_private, NodeFile, StatePaths};
use crate::core::{Leg, Login, Node, NodeConfig, NodeEvent, NodeStatus, Transport};
use crate::dataplane::{DataCounters, DataCountersSnapshot, DataPlane, Sockets, Tables, ToControl};
use crate::resolver::{self, Classified};
use cyphonic_transport::{Hub, HubConfig, LegInfo, TlsIdentity};

pub const DEFAULT_TUNNEL_PORT: u16 = 4501;
pub const DEFAULT_AS_PORT: u16 = 4501;
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.153";
/// Underlay MTU 1500 minus IPv6 (40) + UDP (8) + CYPHONIC header (16) + tag
/// (16) + the relay header (12): a full packet fits unfragmented on every
/// path, relayed over IPv6 included.
pub const DEFAULT_MTU: u16 = 1408;
/// Where the AS also answers Login (TLS on TCP, by ALPN) when its own port
/// is blocked: the cloud's `tcp443_listen`.
pub const DEFAULT_AS_FALLBACK_PORT: u16 = 443;

/// Enrolls this node: makes its key, sends a CSR with the one-time device
/// password, and stores the certificate the AS issued.
pub async fn enroll(
    state: &StatePaths,
    cloud: SocketAddr,
    server_name: &str,
    root_pem: &str,
    device_id: &str,
    password: &str,
) -> anyhow::Result<NodeFile> {
    std::fs::create_dir_all(&state.dir)
        .with_context(|| format!("cannot create {}", state.dir.display()))?;
    let verifier = Verifier::from_pem(root_pem).context("the --ca file is not a certificate")?;
    let key = NodeKey::generate()?;
    let csr = key.csr_pem(device_id)?;
    let enrolled = crate::as_client::enroll(
        cloud,
        server_name,
        verifier.root_der(),
        device_id,
        password,
        &csr,
    )
    .await
    .context("enrollment failed")?;
    write_private(&state.key(), &key.to_pem())?;
    write_private(&state.chain(), &enrolled.cert_chain_pem)?;
    write_private(&state.root(), root_pem)?;
    let domain = enrolled
        .fqdn
        .split_once('.')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let file = NodeFile {
        cloud,
        server_name: server_name.to_owned(),
        device_id: device_id.to_owned(),
        fqdn: enrolled.fqdn,
        domain,
    };
    write_private(&state.config(), &toml::to_string(&file)?)?;
    Ok(file)
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    pub tunnel_port: u16,
    pub tun_name: String,
    /// Where the resolver listens (port 53); None leaves the host's DNS alone.
    pub dns_listen: Option<IpAddr>,
    pub offload: bool,
    /// Tunnel keepalive interval.
    pub keepalive: Duration,
    /// Force one transport for every leg; `None` chooses (UDP, then QUIC
    /// and TCP 443).
    pub transport: Option<Transport>,
    /// Accept QUIC legs from peers on this UDP port (0: no listener).
    pub quic_port: u16,
}

/// What `cyphonic status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub node: NodeStatus,
    pub tun: Option<String>,
    pub dataplane: DataCountersSnapshot,
    /// QUIC and TLS-over-TCP legs (to the cloud, TRSs and peers).
    pub legs: Vec<LegInfo>,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct LoginResult(anyhow::Result<(crate::as_client::LoginInfo, SocketAddr)>);

/// Runs the node until SIGINT / SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let state = StatePaths::new(&opts.state_dir);
    let file = state.load()?;
    let key_pem = std::fs::read_to_string(state.key()).context("cannot read node.key")?;
    let chain_pem = std::fs::read_to_string(state.chain()).context("cannot read node.pem")?;
    let root_pem = std::fs::read_to_string(state.root()).context("cannot read root.pem")?;
    let key = NodeKey::from_pem(&key_pem)?;
    let verifier = Verifier::from_pem(&root_pem)?;
    let chain = cyphonic_pki::pem_to_der_chain(&chain_pem)?;
    // The own certificate must be usable before we announce it to anyone.
    verifier
        .verify_node(&chain, Some(&file.fqdn), SystemTime::now())
        .context("this node's certificate is not valid: enroll again")?;

    // A fresh static key per run: it is bound to the certificate by a
    // signature and registered with the NMS, so it need not persist.
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let static_keys = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let binding_sig = key.sign(&binding_message(&static_keys.public));
    let identity = LocalIdentity {
        static_keys,
        cert_chain_der: chain,
        binding_sig,
    };

    if cyphonic_platform::dns::recover(&opts.state_dir)? {
        tracing::warn!("restored the resolver configuration a previous run left behind");
    }

    let sockets = Arc::new(Sockets::bind(opts.tunnel_port).with_context(|| {
        format!(
            "cannot bind UDP port {} (is another node running?)",
            opts.tunnel_port
        )
    })?);
    let tables = Arc::new(Tables::default());
    let counters = Arc::new(DataCounters::default());
    let (to_control, mut from_data) = mpsc::channel::<ToControl>(4096);

    let hub = Arc::new(
        node_hub(&chain_pem, &key_pem, &verifier, opts.quic_port)
            .await
            .context("cannot start the QUIC / TCP legs")?,
    );
    let quic_port = hub.quic_listen_addrs().first().map_or(0, |a| a.port());
    let config = NodeConfig {
        domain: file.domain.clone(),
        tunnel_port: opts.tunnel_port,
        keepalive: opts.keepalive,
        transport: opts.transport,
        quic_port,
        ..NodeConfig::default()
    };
    let start = Instant::now();
    let mut node = Node::new(
        config,
        identity,
        verifier.clone(),
        seed,
        unix_micros(),
        start,
        SystemTime::now(),
    );
    node.handle_local_addrs(start, crate::addrs::local_endpoints(opts.tunnel_port));
    node.start();

    let socket_path = state.socket();
    let _ = std::fs::remove_file(&socket_path);
    let status_listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("cannot listen on {}", socket_path.display()))?;

    let (login_tx, mut login_rx) = mpsc::channel::<LoginResult>(4);
    let mut login_backoff = Duration::from_millis(500);
    // Every address the cloud is known at (the enrolled one, then what
    // Login reports).
    let mut clouds: Vec<IpAddr> = vec![file.cloud.ip()];
    let mut tun: Option<Arc<Tun>> = None;
    let mut dataplane: Option<DataPlane> = None;
    let mut dns_guard = None;
    let mut dns: Option<Arc<UdpSocket>> = None;
    let mut upstreams: Vec<SocketAddr> = Vec::new();
    let mut dns_clients: HashMap<u64, SocketAddr> = HashMap::new();
    let mut next_client: u64 = 1;
    let (control_tx, mut control_rx) =
        mpsc::channel::<(ControlRequest, tokio::sync::oneshot::Sender<String>)>(64);
    let mut ping_waiters: HashMap<u64, tokio::sync::oneshot::Sender<String>> = HashMap::new();
    let (dns_fwd_tx, mut dns_fwd_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(256);
    let mut dns_buf = vec![0u8; 4096];
    // Moves are noticed through netlink at once; the periodic check is
    // only a backstop.
    let mut addr_check = tokio::time::interval(Duration::from_secs(10));
    let (moved_tx, mut moved_rx) = mpsc::channel::<()>(1);
    let mut default_routes = crate::addrs::default_routes();
    let _netwatch =
        match cyphonic_platform::netwatch::NetWatch::start(Duration::from_millis(20), move || {
            let _ = moved_tx.try_send(());
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch network changes; checking every 10 s");
                None
            }
        };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let result: anyhow::Result<()> = loop {
        // Drain the core's outputs: events first, so a tunnel is in the
        // data plane's tables before the packet that completes its
        // handshake (or the queued packets after it) leaves; the peer's
        // answer may come back at once.
        while let Some(ev) = node.poll_event() {
            match ev {
                NodeEvent::NeedLogin { reason } => {
                    tracing::info!(%reason, cloud = %file.cloud, "Login");
                    let clouds_snapshot = clouds.clone();
                    let (tx, file, root, chain, key) = (
                        login_tx.clone(),
                        file.clone(),
                        root_pem.clone(),
                        chain_pem.clone(),
                        key_pem.clone(),
                    );
                    let delay = if reason == "starting" {
                        Duration::ZERO
                    } else {
                        login_backoff
                    };
                    login_backoff = (login_backoff * 2).min(Duration::from_secs(10));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let r = login(&file, &root, &chain, &key, &clouds_snapshot).await;
                        let _ = tx.send(LoginResult(r)).await;
                    });
                }
                NodeEvent::Registered {
                    fqdn,
                    vip4,
                    vip6,
                    observed,
                } => {
                    login_backoff = Duration::from_millis(500);
                    println!("registered {fqdn} vip4={vip4} vip6={vip6} observed={observed}");
                }
                NodeEvent::DnsResponse { client, response } => {
                    if let (Some(sock), Some(addr)) = (dns.as_ref(), dns_clients.remove(&client)) {
                        let _ = sock.send_to(&response, addr).await;
                    }
                }
                NodeEvent::TunnelUp(handle) => {
                    tracing::info!(peer = %handle.fqdn, path = %handle.path, "tunnel installed");
                    tables.install(handle);
                }
                NodeEvent::TunnelDown { fqdn, .. } => tables.remove(&fqdn),
                NodeEvent::TunnelHold { fqdn } => {
                    tracing::info!(peer = %fqdn, "holding packets until the tunnel is back");
                    tables.hold(&fqdn);
                }
                NodeEvent::LegName { addr, fqdn } => hub.set_server_name(addr, fqdn),
                NodeEvent::PingResult { client, result } => {
                    if let Some(w) = ping_waiters.remove(&client) {
                        let body = match result {
                            Ok(pong) => serde_json::json!({ "ok": pong }),
                            Err(e) => serde_json::json!({ "error": e }),
                        };
                        let _ = w.send(body.to_string());
                    }
                }
            }
        }
        while let Some(t) = node.poll_transmit() {
            if t.transport == Transport::Udp {
                if let Err(e) = sockets.send_to(&t.payload, t.destination) {
                    tracing::debug!(dst = %t.destination, error = %e, "send failed");
                }
            } else if let Err(e) = hub.send(t.transport, t.destination, t.payload) {
                tracing::debug!(dst = %t.destination, transport = %t.transport, error = %e, "send failed");
            }
        }
        let deadline = node
            .poll_timeout()
            .map(|(t, _)| tokio::time::Instant::from_std(t))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let dns_recv = async {
            match dns.as_ref() {
                Some(s) => s.recv_from(&mut dns_buf).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => node.handle_timeout(Instant::now()),
            Some(msg) = from_data.recv() => match msg {
                ToControl::Datagram { from, packet } => node.handle_datagram(Instant::now(), from, &packet),
                ToControl::Outbound(packet) => node.handle_outbound(Instant::now(), &packet),
                ToControl::PathSeen { index, path } => node.handle_path_seen(Instant::now(), index, path),
                ToControl::TunnelMessage { index, path, message } => node.handle_tunnel_message(Instant::now(), index, path, &message),
            },
            Some(LoginResult(r)) = login_rx.recv() => match r {
                Ok((info, nms)) => {
                    tracing::info!(fqdn = %info.fqdn, session = info.session_id, %nms, "Login done");
                    if tun.is_none() {
                        // The VIPs are the device's for good: the TUN device
                        // and the data plane come up once, at the first Login.
                        let (vip4, vip6) = (info.vip4, info.vip6);
                        let t = Arc::new(
                            Tun::create(&TunConfig {
                                name: opts.tun_name.clone(),
                                mtu: DEFAULT_MTU,
                                vip4,
                                prefix4: 10,
                                vip6,
                                prefix6: 48,
                                offload: opts.offload,
                            })
                            .with_context(|| format!("cannot create TUN device {}", opts.tun_name))?,
                        );
                        let dp = DataPlane::start(
                            t.clone(),
                            sockets.clone(),
                            Some(hub.clone()),
                            tables.clone(),
                            counters.clone(),
                            to_control.clone(),
                        )?;
                        tokio::spawn(receive_legs(hub.clone(), dp.inbound()));
                        dataplane = Some(dp);
                        tracing::info!(tun = %t.name(), %vip4, %vip6, "TUN device up");
                        tun = Some(t);
                        if let Some(listen) = opts.dns_listen {
                            let sock = UdpSocket::bind(SocketAddr::new(listen, 53))
                                .await
                                .with_context(|| format!("cannot listen for DNS on {listen}:53"))?;
                            let (guard, ups) = cyphonic_platform::dns::install(&cyphonic_platform::dns::DnsSetup {
                                listen,
                                domain: file.domain.clone(),
                                tun_name: opts.tun_name.clone(),
                                state_dir: opts.state_dir.clone(),
                            })
                            .context("cannot configure the host's resolver")?;
                            tracing::info!(%listen, upstreams = ?ups, domain = %file.domain, "resolver installed");
                            upstreams = ups;
                            dns_guard = Some(guard);
                            dns = Some(Arc::new(sock));
                        }
                    }
                    for ip in &info.cloud_addrs {
                        if !clouds.contains(ip) {
                            clouds.push(*ip);
                        }
                    }
                    let nms_alternatives = clouds.iter().map(|ip| SocketAddr::new(*ip, info.nms_port)).collect();
                    node.handle_login(Instant::now(), Login {
                        session_id: info.session_id,
                        common_key: info.common_key,
                        fqdn: info.fqdn,
                        vip4: info.vip4,
                        vip6: info.vip6,
                        nms,
                        nms_alternatives,
                        keepalive: Duration::from_secs(info.keepalive_secs.max(1)),
                        quic_port: info.quic_port,
                        tcp_port: info.tcp_port,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "Login failed; retrying");
                    node.handle_login_failed();
                    node.handle_timeout(Instant::now());
                    // Ask again after the backoff.
                    let tx = login_tx.clone();
                    let (file, root, chain, key) = (file.clone(), root_pem.clone(), chain_pem.clone(), key_pem.clone());
                    let clouds_snapshot = clouds.clone();
                    let delay = login_backoff;
                    login_backoff = (login_backoff * 2).min(Duration::from_secs(10));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let r = login(&file, &root, &chain, &key, &clouds_snapshot).await;
                        let _ = tx.send(LoginResult(r)).await;
                    });
                }
            },
            r = dns_recv => if let Ok((n, from)) = r {
                let query = &dns_buf[..n];
                match resolver::classify(query, &file.domain) {
                    Classified::Overlay { query, name, .. } => {
                        let id = next_client;
                        next_client += 1;
                        if dns_clients.len() < 4096 {
                            dns_clients.insert(id, from);
                            node.handle_dns_query(Instant::now(), id, query, name);
                        }
                    }
                    Classified::Forward => {
                        let (q, ups, tx) = (query.to_vec(), upstreams.clone(), dns_fwd_tx.clone());
                        tokio::spawn(async move {
                            if let Some(resp) = forward_dns(&q, &ups).await {
                                let _ = tx.send((from, resp)).await;
                            }
                        });
                    }
                    Classified::Invalid(Some(resp)) => {
                        if let Some(s) = dns.as_ref() { let _ = s.send_to(&resp, from).await; }
                    }
                    Classified::Invalid(None) => {}
                }
            },
            Some((to, resp)) = dns_fwd_rx.recv() => {
                if let Some(s) = dns.as_ref() { let _ = s.send_to(&resp, to).await; }
            },
            Ok((stream, _)) = status_listener.accept() => {
                tokio::spawn(read_control(stream, control_tx.clone()));
            },
            Some((request, reply)) = control_rx.recv() => {
                match request {
                    ControlRequest::Status => {
                        let report = StatusReport {
                            node: node.status(Instant::now()),
                            tun: tun.as_ref().map(|t| t.name().to_owned()),
                            dataplane: counters.snapshot(),
                            legs: hub.legs(),
                        };
                        let _ = reply.send(serde_json::to_string(&report).unwrap_or_default());
                    }
                    ControlRequest::Ping(fqdn) => {
                        let id = next_client;
                        next_client += 1;
                        ping_waiters.retain(|_, w| !w.is_closed());
                        ping_waiters.insert(id, reply);
                        node.handle_ping(Instant::now(), id, &fqdn);
                    }
                }
            },
            Some(()) = moved_rx.recv() => {
                let addrs = crate::addrs::local_endpoints(opts.tunnel_port);
                let routes = crate::addrs::default_routes();
                let same_addrs = node.local_addrs() == addrs.as_slice();
                if same_addrs && routes != default_routes {
                    node.handle_route_change(Instant::now(), format!("default route now {}", routes.join(", ")));
                }
                default_routes = routes;
                if !same_addrs {
                    // QUIC legs migrate to the new address (RFC 9000 §9);
                    // TCP legs are dialed again.
                    if let Err(e) = hub.rebind() {
                        tracing::warn!(error = %format!("{e:#}"), "cannot move the QUIC legs");
                    }
                }
                node.handle_local_addrs(Instant::now(), addrs);
            },
            _ = addr_check.tick() => {
                node.handle_local_addrs(Instant::now(), crate::addrs::local_endpoints(opts.tunnel_port));
            },
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    tracing::info!("stopping");
    drop(dataplane);
    hub.close();
    if let Some(mut g) = dns_guard.take() {
        if let Err(e) = g.restore() {
            tracing::warn!(error = %e, "could not restore the resolver configuration");
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    result
}

/// Logs in at the first cloud address that answers, trying those of an IP
/// version this host has first (after a move into an IPv6-only network the
/// enrolled IPv4 address is useless).
async fn login(
    file: &NodeFile,
    root_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    clouds: &[IpAddr],
) -> anyhow::Result<(crate::as_client::LoginInfo, SocketAddr)> {
    let verifier = Verifier::from_pem(root_pem)?;
    let local = crate::addrs::local_endpoints(0);
    let mut order: Vec<IpAddr> = std::iter::once(file.cloud.ip())
        .chain(clouds.iter().copied())
        .collect();
    order.dedup();
    order.sort_by_key(|ip| !local.iter().any(|l| l.is_ipv4() == ip.is_ipv4()));
    let mut last = None;
    for ip in order {
        let name = if ip == file.cloud.ip() {
            file.server_name.clone()
        } else {
            ip.to_string()
        };
        // The AS's own port and TCP 443 at once: a firewall that lets only
        // the web out drops the first silently.
        let (tx, mut rx) = mpsc::channel(2);
        for port in [file.cloud.port(), DEFAULT_AS_FALLBACK_PORT] {
            let addr = SocketAddr::new(ip, port);
            let (tx, name, root, chain, key) = (
                tx.clone(),
                name.clone(),
                verifier.root_der().to_vec(),
                chain_pem.to_owned(),
                key_pem.to_owned(),
            );
            tokio::spawn(async move {
                let r = crate::as_client::login(addr, &name, &root, &chain, &key).await;
                let _ = tx.send((addr, r)).await;
            });
        }
        drop(tx);
        while let Some((addr, r)) = rx.recv().await {
            match r {
                Ok(info) => {
                    let nms = SocketAddr::new(ip, info.nms_port);
                    return Ok((info, nms));
                }
                Err(e) => last = Some(anyhow::Error::from(e).context(format!("login at {addr}"))),
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no cloud address to log in at")))
}

/// The node's hub: dials QUIC and TLS-over-TCP legs with the node
/// certificate, and with `quic_port` set accepts QUIC legs from peers on
/// it (IPv4, and IPv6 where the host has it).
async fn node_hub(
    chain_pem: &str,
    key_pem: &str,
    verifier: &Verifier,
    quic_port: u16,
) -> anyhow::Result<Hub> {
    let identity = TlsIdentity {
        chain_pem: chain_pem.to_owned(),
        key_pem: key_pem.to_owned(),
        root_der: verifier.root_der().to_vec(),
    };
    let mut listen: Vec<SocketAddr> = Vec::new();
    if quic_port != 0 {
        listen.push(SocketAddr::new(IpAddr::from([0u8; 4]), quic_port));
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            listen.push(SocketAddr::new(IpAddr::from([0u16; 8]), quic_port));
        }
    }
    Hub::node(HubConfig::default(), identity, listen, Vec::new()).await
}

/// Datagrams from QUIC and TCP legs into the data plane (which hands
/// what is not data to the control task).
async fn receive_legs(hub: Arc<Hub>, mut inbound: crate::dataplane::Inbound) {
    let mut batch = Vec::with_capacity(crate::dataplane::BATCH);
    loop {
        batch.clear();
        if hub.recv_many(&mut batch, crate::dataplane::BATCH).await == 0 {
            return;
        }
        for r in batch.iter_mut() {
            inbound.datagram(Leg::new(r.transport, r.from), &mut r.datagram);
        }
        inbound.flush();
    }
}

/// Forwards a query to the host's own resolvers, first answer wins.
async fn forward_dns(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == *up => {
                buf.truncate(n);
                return Some(buf);
            }
            _ => continue,
        }
    }
    None
}

/// What the local control socket is asked: one line per request.
enum ControlRequest {
    Status,
    Ping(String),
}

/// Reads one request line, hands it to the daemon's loop and writes the
/// answer (one JSON line). Bad requests get an error line.
async fn read_control(
    mut stream: tokio::net::UnixStream,
    to_daemon: mpsc::Sender<(ControlRequest, tokio::sync::oneshot::Sender<String>)>,
) {
    let (r, mut w) = stream.split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        BufReader::new(r.take(1024)).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let mut words = line.split_whitespace();
    let request = match (words.next(), words.next()) {
        (Some("status"), None) => ControlRequest::Status,
        (Some("ping"), Some(name)) => ControlRequest::Ping(name.to_owned()),
        _ => {
            let err = serde_json::json!({ "error": format!("unknown request {:?}", line.trim()) });
            let _ = w.write_all(format!("{err}\n").as_bytes()).await;
            return;
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if to_daemon.send((request, tx)).await.is_err() {
        return;
    }
    if let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(5), rx).await {
        let _ = w.write_all(body.as_bytes()).await;
        let _ = w.write_all(b"\n").await;
    }
}

/// `cyphonic status`: asks the running daemon.
pub async fn query_status(state_dir: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    query(state_dir, "status").await
}

/// `cyphonic ping`: one probe through the tunnel to `fqdn`; the answer says
/// which path it took and its round trip.
pub async fn query_ping(
    state_dir: &std::path::Path,
    fqdn: &str,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        !fqdn.is_empty() && fqdn.len() < 254 && !fqdn.contains(char::is_whitespace),
        "{fqdn:?} is not a node name"
    );
    query(state_dir, &format!("ping {fqdn}")).await
}

async fn query(state_dir: &std::path::Path, request: &str) -> anyhow::Result<serde_json::Value> {
    let path = StatePaths::new(state_dir).socket();
    let mut stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => bail!(
            "no node daemon answers on {} ({e}): is `cyphonic node run` running?",
            path.display()
        ),
    };
    stream.write_all(format!("{request}\n").as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(stream).read_line(&mut body),
    )
    .await
    .context("the node daemon did not answer")??;
    Ok(serde_json::from_str(&body)?)
}

/// Human-readable status, like `tailscale status`.
pub fn render_status(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let s = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    out.push_str(&format!(
        "{}  {}  {}\n",
        s(&v["fqdn"]),
        s(&v["vip4"]),
        s(&v["vip6"])
    ));
    let cloud = &v["cloud"];
    out.push_str(&format!(
        "cloud: nms {}  logged in: {}  registered: {}  seen as {}\n",
        s(&cloud["nms"]),
        cloud["logged_in"],
        cloud["registered"],
        s(&cloud["observed"])
    ));
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        out.push_str("no peers yet\n");
    }
    for p in peers {
        out.push_str(&format!(
            "{:<32} {:<15} {:<12} {:<8} {:<4} {:<28} rx {} B  tx {} B  handshake {}s ago\n",
            s(&p["fqdn"]),
            s(&p["vip4"]),
            s(&p["state"]),
            s(&p["path"]),
            s(&p["transport"]),
            s(&p["endpoint"]),
            p["rx_bytes"],
            p["tx_bytes"],
            s(&p["last_handshake_secs_ago"]),
        ));
    }
    out
}
