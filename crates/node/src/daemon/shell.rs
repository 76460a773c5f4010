//! The daemon's IO helpers: the DNS socket, the AS Login, the QUIC / TCP
//! hub and its receive task, and forwarding to the host's resolvers.

use super::*;

/// The next query on the resolver's socket; never, while there is none.
pub async fn recv_dns(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Logs in at the first cloud address that answers, trying those of an IP
/// version this host has first (after a move into an IPv6-only network the
/// enrolled IPv4 address is useless).
pub async fn login(file: &NodeFile, credentials: &Credentials, clouds: &[IpAddr]) -> LoginResult {
    let verifier = Verifier::from_pem(&credentials.root_pem)?;
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
                credentials.chain_pem.clone(),
                credentials.key_pem.clone(),
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
pub async fn node_hub(
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

/// The tunnel port (UDP, both families) and the QUIC / TCP legs with this
/// identity's certificate, accepting QUIC from peers on `quic_port`.
pub async fn bind_ports(
    credentials: &Credentials,
    tunnel_port: u16,
    quic_port: u16,
) -> anyhow::Result<(Arc<Sockets>, Arc<Hub>)> {
    let sockets = Arc::new(Sockets::bind(tunnel_port).with_context(|| {
        format!("cannot bind UDP port {tunnel_port} (is another node running?)")
    })?);
    let verifier = Verifier::from_pem(&credentials.root_pem)?;
    let hub = node_hub(
        &credentials.chain_pem,
        &credentials.key_pem,
        &verifier,
        quic_port,
    )
    .await
    .context("cannot start the QUIC / TCP legs")?;
    Ok((sockets, Arc::new(hub)))
}

/// Sends what a core asked for: native UDP on the tunnel port, QUIC and
/// TCP on the hub's legs.
pub fn transmit(sockets: &Sockets, hub: &Hub, t: Transmit) {
    if t.transport == Transport::Udp {
        if let Err(e) = sockets.send_to(&t.payload, t.destination) {
            tracing::debug!(dst = %t.destination, error = %e, "send failed");
        }
    } else if let Err(e) = hub.send(t.transport, t.destination, t.payload) {
        let (dst, transport) = (t.destination, t.transport);
        tracing::debug!(%dst, %transport, error = %e, "send failed");
    }
}

/// Datagrams from QUIC and TCP legs into the data plane (which hands
/// what is not data to the control task).
pub async fn receive_legs(hub: Arc<Hub>, mut inbound: crate::dataplane::Inbound) {
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
pub async fn forward_dns(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
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

/// The core's Login from the AS's answer: the NMS it named, and the same
/// port at every other address the cloud is known at.
pub fn login_of(info: &LoginInfo, nms: SocketAddr, clouds: &[IpAddr]) -> Login {
    Login {
        session_id: cyphonic_proto::SessionId(info.session_id),
        common_key: info.common_key,
        fqdn: info.fqdn.clone(),
        vip4: info.vip4,
        vip6: info.vip6,
        nms,
        nms_alternatives: clouds
            .iter()
            .map(|ip| SocketAddr::new(*ip, info.nms_port))
            .collect(),
        keepalive: Duration::from_secs(info.keepalive_secs.max(1)),
        quic_port: info.quic_port,
        tcp_port: info.tcp_port,
    }
}
