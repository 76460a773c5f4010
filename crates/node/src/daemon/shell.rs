//! The daemon's IO helpers: the DNS socket, the AS Login and certificate
//! renewal, the QUIC / TCP hub and its receive task, and forwarding to the
//! host's resolvers.

use super::renewal::{Failure, Renewal};
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
    let (info, ip) = at_cloud(
        file,
        credentials,
        clouds,
        "login",
        |addr, name, root, chain, key| async move {
            crate::as_client::login(addr, &name, &root, &chain, &key).await
        },
    )
    .await?;
    let nms = SocketAddr::new(ip, info.nms_port);
    Ok((info, nms))
}

/// Renews the node certificate (`credentials`) for the key of `csr_pem`,
/// at the cloud addresses and ports [`login`] uses; returns the new chain
/// (certificate, then intermediate).
pub async fn renew(
    file: &NodeFile,
    credentials: &Credentials,
    clouds: &[IpAddr],
    csr_pem: &str,
) -> anyhow::Result<String> {
    let csr_pem = Arc::new(csr_pem.to_owned());
    let (chain, _) = at_cloud(
        file,
        credentials,
        clouds,
        "renew",
        move |addr, name, root, chain, key| {
            let csr_pem = csr_pem.clone();
            async move { crate::as_client::renew(addr, &name, &root, &chain, &key, &csr_pem).await }
        },
    )
    .await?;
    Ok(chain)
}

/// Asks the AS with the node certificate (`call` with the address, TLS
/// server name, root, chain and key) at the first cloud address that
/// answers: the enrolled one and `clouds`, those of an IP version this host
/// has first, each at the AS's own port and TCP 443 at once (a firewall
/// that lets only the web out drops the first silently). The first answer
/// wins; when none does, the error is a refusal if there was one (what the
/// AS said is more telling than a port nobody answered on), else the last.
async fn at_cloud<T, F, Fut>(
    file: &NodeFile,
    credentials: &Credentials,
    clouds: &[IpAddr],
    what: &'static str,
    call: F,
) -> anyhow::Result<(T, IpAddr)>
where
    T: Send + 'static,
    F: Fn(SocketAddr, String, Vec<u8>, String, zeroize::Zeroizing<String>) -> Fut
        + Clone
        + Send
        + 'static,
    Fut: std::future::Future<Output = Result<T, crate::as_client::AsClientError>> + Send,
{
    let verifier = Verifier::from_pem(&credentials.root_pem)?;
    let local = crate::addrs::local_endpoints(0);
    let mut order: Vec<IpAddr> = std::iter::once(file.cloud.ip())
        .chain(clouds.iter().copied())
        .collect();
    order.dedup();
    order.sort_by_key(|ip| !local.iter().any(|l| l.is_ipv4() == ip.is_ipv4()));
    let mut last: Option<anyhow::Error> = None;
    let mut refused = false;
    for ip in order {
        let name = if ip == file.cloud.ip() {
            file.server_name.clone()
        } else {
            ip.to_string()
        };
        let (tx, mut rx) = mpsc::channel(2);
        for port in [file.cloud.port(), DEFAULT_AS_FALLBACK_PORT] {
            let addr = SocketAddr::new(ip, port);
            let (tx, call, name, root, chain, key) = (
                tx.clone(),
                call.clone(),
                name.clone(),
                verifier.root_der().to_vec(),
                credentials.chain_pem.clone(),
                credentials.key_pem.clone(),
            );
            tokio::spawn(async move {
                let r = call(addr, name, root, chain, key).await;
                let _ = tx.send((addr, r)).await;
            });
        }
        drop(tx);
        while let Some((addr, r)) = rx.recv().await {
            match r {
                Ok(answer) => return Ok((answer, ip)),
                Err(e) => {
                    let is_refusal = matches!(e, crate::as_client::AsClientError::Refused { .. });
                    if is_refusal || !refused {
                        refused |= is_refusal;
                        last = Some(anyhow::Error::from(e).context(format!("{what} at {addr}")));
                    }
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no cloud address to {what} at")))
}

/// Renewing a node certificate before it expires ([`super::renewal`]): the
/// schedule, the attempt on a task of its own, the key it is for; and which
/// certificate the core presents.
///
/// Use: sleep until [`Renewer::deadline`], then [`Renewer::start`]; hand
/// what [`Renewer::next_result`] gives to [`Renewer::finish`], which
/// installs a new certificate in the state directory and returns its
/// credentials: log in with them at once. Tag every Login with the
/// [`Renewer::generation`] of the credentials it presented, and ask
/// [`Renewer::on_login`] what to do with its session.
pub struct Renewer {
    state: StatePaths,
    schedule: Renewal,
    serial: u64,
    results_tx: mpsc::Sender<anyhow::Result<String>>,
    results: mpsc::Receiver<anyhow::Result<String>>,
    in_flight: bool,
    /// The key (PEM) the renewal under way is for, also in
    /// `node.key.next`: kept across attempts, so a renewal asked again
    /// (its answer lost) is for the same key and gets the same certificate.
    next_key: Option<zeroize::Zeroizing<String>>,
    /// The run's static key, which the NMS has: a renewed certificate is
    /// bound to it again.
    static_keys: StaticKeypair,
    /// Counts the renewals of this run: the credentials' generation.
    generation: u64,
    /// The generation whose certificate the core presents; it gets a newer
    /// one with the first session a Login with it opens.
    core_generation: u64,
    /// The newest generation's identity, until the core has it.
    pending_identity: Option<LocalIdentity>,
}

/// What to do with the session of a Login ([`Renewer::on_login`]).
pub enum LoginUse {
    /// Hand it to the core.
    Session,
    /// The first session of a renewed certificate: give the core this
    /// identity (`Node::set_identity`), then the session.
    RenewedSession(LocalIdentity),
    /// A Login with a certificate older than the newest: drop it (the
    /// newest one's Login is under way).
    Stale,
}

impl Renewer {
    /// The schedule of the certificate in `credentials`, kept in
    /// `state_dir`; the core presents it bound to `static_keys`.
    pub fn new(
        state_dir: &std::path::Path,
        credentials: &Credentials,
        static_keys: StaticKeypair,
    ) -> anyhow::Result<Renewer> {
        let cert = credentials.certificate()?;
        let (results_tx, results) = mpsc::channel(1);
        Ok(Renewer {
            state: StatePaths::new(state_dir),
            schedule: Renewal::new(cert.not_before, cert.not_after),
            serial: cert.serial,
            results_tx,
            results,
            in_flight: false,
            next_key: None,
            static_keys,
            generation: 0,
            core_generation: 0,
            pending_identity: None,
        })
    }

    /// The generation of the newest credentials: 0 for those of the
    /// start, one more with each renewal.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A Login that presented credentials of `generation` opened a
    /// session: what to do with it.
    pub fn on_login(&mut self, generation: u64) -> LoginUse {
        if generation != self.generation {
            return LoginUse::Stale;
        }
        if generation == self.core_generation {
            return LoginUse::Session;
        }
        self.core_generation = generation;
        match self.pending_identity.take() {
            Some(identity) => LoginUse::RenewedSession(identity),
            None => LoginUse::Session,
        }
    }

    /// When the next attempt is due; none while one is under way or once
    /// the certificate has expired.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        if self.in_flight {
            return None;
        }
        let at = self.schedule.next_attempt()?;
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(tokio::time::Instant::now() + wait)
    }

    /// Starts an attempt for `file`'s device with `credentials` at the
    /// cloud addresses `clouds`: a new key (or the one of an attempt
    /// before) and its CSR, `renew` on a task.
    pub fn start(&mut self, file: &NodeFile, credentials: &Arc<Credentials>, clouds: &[IpAddr]) {
        let csr = self.prepare_key(credentials).and_then(|key| {
            let csr = NodeKey::from_pem(&key)?.csr_pem(&file.fqdn)?;
            Ok(csr)
        });
        let csr = match csr {
            Ok(csr) => csr,
            Err(e) => {
                self.failed(
                    Failure::Unreachable,
                    e.context("cannot make the key to renew with"),
                );
                return;
            }
        };
        tracing::info!(
            serial = format_args!("{:#x}", self.serial),
            "renewing the node certificate"
        );
        self.in_flight = true;
        let (tx, file, credentials, clouds) = (
            self.results_tx.clone(),
            file.clone(),
            credentials.clone(),
            clouds.to_vec(),
        );
        tokio::spawn(async move {
            let r = renew(&file, &credentials, &clouds, &csr).await;
            let _ = tx.send(r).await;
        });
    }

    /// The result of the attempt under way; never while there is none.
    pub async fn next_result(&mut self) -> anyhow::Result<String> {
        match self.results.recv().await {
            Some(r) => r,
            // Invariant: `self` holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// The outcome of an attempt: the new certificate `chain_pem` is
    /// checked and installed (`node.pem`, `node.key`) and its credentials
    /// returned; a failure is logged and the next attempt scheduled.
    pub fn finish(
        &mut self,
        result: anyhow::Result<String>,
        fqdn: &str,
        root_pem: &str,
    ) -> Option<Credentials> {
        self.in_flight = false;
        let installed = result.and_then(|chain_pem| {
            let key = self
                .next_key
                .as_deref()
                .context("a renewal answer without a key it was for")?;
            Credentials::install_renewal(&self.state, fqdn, root_pem, key, &chain_pem)
        });
        let credentials = match installed {
            Ok(c) => c,
            Err(e) => {
                let failure = failure_of(&e);
                self.failed(failure, e);
                return None;
            }
        };
        let cert = match credentials.certificate() {
            Ok(cert) => cert,
            Err(e) => {
                self.failed(Failure::Unreachable, e);
                return None;
            }
        };
        let identity = match credentials.identity_with(self.static_keys.clone()) {
            Ok(identity) => identity,
            Err(e) => {
                self.failed(Failure::Unreachable, e);
                return None;
            }
        };
        self.next_key = None;
        self.generation += 1;
        self.pending_identity = Some(identity);
        self.schedule
            .handle_renewed(cert.not_before, cert.not_after);
        tracing::info!(
            renewed = format_args!("{:#x}", self.serial),
            serial = format_args!("{:#x}", cert.serial),
            not_after = unix_secs(cert.not_after),
            renewals = self.schedule.renewals(),
            "node certificate renewed"
        );
        self.serial = cert.serial;
        Some(credentials)
    }

    /// What `cyphonic status --json` shows of the certificate.
    pub fn status(&self) -> CertificateStatus {
        let s = self.schedule.status();
        CertificateStatus {
            cert_serial: format!("{:#x}", self.serial),
            cert_not_after: s.not_after,
            cert_renewals: s.renewals,
            cert_next_renewal: s.next_attempt,
            cert_renewal_failures: s.failures,
            cert_renewal_error: s.last_error,
        }
    }

    /// The key to renew with: the one in `node.key.next` if there is one
    /// (an attempt before this run's, whose answer may have been lost) and
    /// it is not already the certificate's, else a new one, written there
    /// first.
    pub(super) fn prepare_key(
        &mut self,
        credentials: &Credentials,
    ) -> anyhow::Result<zeroize::Zeroizing<String>> {
        if let Some(key) = &self.next_key {
            return Ok(key.clone());
        }
        let current = NodeKey::from_pem(&credentials.key_pem)?.public_key();
        let path = self.state.next_key();
        let kept = std::fs::read_to_string(&path)
            .ok()
            .map(zeroize::Zeroizing::new)
            .filter(|pem| NodeKey::from_pem(pem).is_ok_and(|k| k.public_key() != current));
        let key = match kept {
            Some(pem) => pem,
            None => {
                let pem = NodeKey::generate()?.to_pem();
                write_private(&path, &pem)?;
                pem
            }
        };
        self.next_key = Some(key.clone());
        Ok(key)
    }

    fn failed(&mut self, failure: Failure, e: anyhow::Error) {
        let why = format!("{e:#}");
        let wait = self
            .schedule
            .handle_failure(SystemTime::now(), failure, why.clone());
        match self.schedule.next_attempt() {
            Some(_) => tracing::warn!(
                error = %why,
                retry_in_secs = wait.as_secs(),
                "cannot renew the node certificate; trying again"
            ),
            None => tracing::error!(
                error = %why,
                not_after = unix_secs(self.schedule.not_after()),
                "cannot renew the node certificate before it expires: enroll this node again"
            ),
        }
    }
}

/// How a renewal failed: a refusal from the AS (other than `internal`) or
/// anything else.
pub fn failure_of(e: &anyhow::Error) -> Failure {
    match e.downcast_ref::<crate::as_client::AsClientError>() {
        Some(crate::as_client::AsClientError::Refused { code, .. })
            if code != cyphonic_proto::login::code::INTERNAL =>
        {
            Failure::Refused
        }
        _ => Failure::Unreachable,
    }
}

/// Sleeps until `deadline`; never without one.
pub async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Unix seconds of `t` (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
    if t.transport == Transport::Udp && t.local != 0 {
        let sent = sockets.spares.get_or_bind(t.local).and_then(|sock| {
            cyphonic_platform::udp::send_from(&sock, &t.payload, t.destination, t.ttl)
        });
        if let Err(e) = sent {
            tracing::debug!(dst = %t.destination, spare = t.local, error = %e, "send failed");
        }
    } else if t.transport == Transport::Udp {
        let sent = match t.ttl {
            Some(ttl) => sockets.send_to_with_ttl(&t.payload, t.destination, ttl),
            None => sockets.send_to(&t.payload, t.destination),
        };
        if let Err(e) = sent {
            tracing::debug!(dst = %t.destination, error = %e, "send failed");
        }
    } else if let Err(e) = hub.send(t.transport, t.destination, t.payload) {
        let (dst, transport) = (t.destination, t.transport);
        tracing::debug!(%dst, %transport, error = %e, "send failed");
    }
}

/// Which identity of a host sends from which spare port (birthday
/// punching), so that one identity closing its spare ports never closes
/// those another one uses.
#[derive(Default)]
pub struct SpareUse(
    std::collections::HashMap<crate::host::IdentityId, std::collections::BTreeSet<u16>>,
);

impl SpareUse {
    /// Identity `id` sent from spare port `k`.
    pub fn sent(&mut self, id: crate::host::IdentityId, k: u16) {
        if k != 0 {
            self.0.entry(id).or_default().insert(k);
        }
    }

    /// Identity `id` needs only the spare ports in `keep` now: closes every
    /// spare port no identity needs.
    pub fn release(&mut self, id: crate::host::IdentityId, keep: &[u16], sockets: &Sockets) {
        self.0.insert(id, keep.iter().copied().collect());
        let all: Vec<u16> = self.0.values().flatten().copied().collect();
        sockets.spares.keep(&all);
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
        instances: info
            .instance_addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, info.nms_port))
            .collect(),
        keepalive: Duration::from_secs(info.keepalive_secs.max(1)),
        quic_port: info.quic_port,
        tcp_port: info.tcp_port,
    }
}
