//! The node daemon: the tokio shell around [`crate::core::Node`]. It owns
//! the AS TLS client, the UDP sockets' control traffic, the DNS listener,
//! the status socket and the TUN device, and starts the data plane.
//!
//! [`run`] builds a [`Daemon`] and turns its loop: wait for the first of
//! its event sources, hand that event to the core (one `on_*` method per
//! source), then carry out what the core asked for
//! ([`Daemon::drain_core`]) and sleep until the core's next timeout or
//! event.
//!
//! The node certificate is renewed two thirds into its lifetime
//! ([`renewal`], [`Renewer`]): a new key and CSR, `renew` at the AS, the
//! new files, then a Login with the new certificate; with the session it
//! opens, the core gets the new identity (same static key, new chain and
//! binding) and selects its peers' routes again, since their route
//! directions carry the old certificate's serial.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cyphonic_pki::{NodeKey, Verifier};
use cyphonic_platform::dns::DnsGuard;
use cyphonic_platform::netwatch::NetWatch;
use cyphonic_platform::tun::{Tun, TunConfig};
use cyphonic_proto::handshake::{binding_message, LocalIdentity, StaticKeypair};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::as_client::LoginInfo;
use crate::config::{write_private, NodeFile, StatePaths};
use crate::core::{
    DnsClient, Leg, Login, LoginReason, Node, NodeConfig, NodeEvent, NodeStatus, Transmit,
    Transport,
};
use crate::dataplane::{DataCounters, DataCountersSnapshot, DataPlane, Sockets, Tables, ToControl};
use crate::resolver::{self, Classified};
use cyphonic_transport::{Hub, HubConfig, LegInfo, TlsIdentity};

pub const DEFAULT_TUNNEL_PORT: u16 = 4501;
pub const DEFAULT_AS_PORT: u16 = 4501;
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.153";
pub use crate::core::DEFAULT_MTU;
/// Where the AS also answers Login (TLS on TCP, by ALPN) when its own port
/// is blocked: the cloud's `tcp443_listen`.
pub const DEFAULT_AS_FALLBACK_PORT: u16 = 443;

/// The first wait before logging in again after a failure; it doubles up
/// to [`MAX_LOGIN_BACKOFF`] and starts over once registered.
const FIRST_LOGIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_LOGIN_BACKOFF: Duration = Duration::from_secs(10);
/// How often the host's addresses are read without a netlink event: only a
/// backstop, moves are noticed through netlink at once.
const ADDR_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Overlay DNS queries waiting for the core at once; more are dropped.
const MAX_DNS_CLIENTS: usize = 4096;
/// Datagrams from the data plane waiting for the control task.
/// Queries for general names forwarded to the host's resolvers at once;
/// more are dropped (the client retries) and counted.
const MAX_DNS_FORWARDS: usize = 256;
const CONTROL_QUEUE: usize = 4096;

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
    crate::config::private_dir(&state.dir)?;
    let verifier = Verifier::from_pem(root_pem).context("the --ca file is not a certificate")?;
    let key = match std::fs::read_to_string(state.enroll_key()) {
        Ok(pem) => NodeKey::from_pem(&pem)?,
        Err(_) => {
            let key = NodeKey::generate()?;
            write_private(&state.enroll_key(), &key.to_pem())?;
            key
        }
    };
    let csr = key.csr_pem(device_id)?;
    // The AS's own port, and TCP 443 beside it for networks that let only
    // the web out.
    let mut ports = vec![cloud];
    if cloud.port() != DEFAULT_AS_FALLBACK_PORT {
        ports.push(SocketAddr::new(cloud.ip(), DEFAULT_AS_FALLBACK_PORT));
    }
    let enrolled = crate::as_client::enroll(
        &ports,
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
    // A renewal of an earlier enrollment's certificate left its key.
    let _ = std::fs::remove_file(state.next_key());
    let _ = std::fs::remove_file(state.enroll_key());
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
    /// Bring up no TUN device (and so no data plane or resolver): the node
    /// enrolls, logs in, registers and signals only. For hosts without a
    /// TUN driver (a container without /dev/net/tun, wine), to check the
    /// control plane.
    pub no_tun: bool,
    /// Where the resolver listens (port 53); None leaves the host's DNS alone.
    pub dns_listen: Option<IpAddr>,
    pub offload: bool,
    /// Ask the router for a port mapping (PCP, NAT-PMP).
    pub port_mapping: bool,
    /// Tunnel keepalive interval.
    pub keepalive: Duration,
    /// Tunnel keys' rekey age; keys are refused at one and a half times it.
    pub rekey_after: Duration,
    /// Force one transport for every leg; `None` chooses (UDP, then QUIC
    /// and TCP 443).
    pub transport: Option<Transport>,
    /// Accept QUIC legs from peers on this UDP port (0: no listener).
    pub quic_port: u16,
    /// Serve Prometheus metrics on this loopback address (`/metrics`).
    pub metrics_listen: Option<SocketAddr>,
}

/// What `cyphonic status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub node: NodeStatus,
    #[serde(flatten)]
    pub certificate: CertificateStatus,
    pub tun: Option<String>,
    pub dataplane: DataCountersSnapshot,
    /// QUIC and TLS-over-TCP legs (to the cloud, TRSs and peers).
    pub legs: Vec<LegInfo>,
    /// Queries for general names dropped because `MAX_DNS_FORWARDS` were
    /// already being forwarded.
    pub dns_forwards_refused: u64,
}

/// The node certificate and its renewal, in `cyphonic status --json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertificateStatus {
    /// The serial of the certificate the node presents ("0x…").
    pub cert_serial: String,
    /// Its notAfter, Unix seconds.
    pub cert_not_after: u64,
    /// Certificates renewed in this run.
    pub cert_renewals: u64,
    /// When the next renewal attempt is due (Unix seconds); none while one
    /// is under way or once the certificate has expired.
    pub cert_next_renewal: Option<u64>,
    /// Failed renewal attempts in this run.
    pub cert_renewal_failures: u64,
    /// Why the last attempt failed, if none succeeded since.
    pub cert_renewal_error: Option<String>,
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Login refusals that say this node left the overlay (its certificate
/// revoked, its device disabled), not that the AS is unwell.
fn withdrawn_code(code: &str) -> bool {
    use cyphonic_proto::login::code;
    [code::CERTIFICATE_REJECTED, code::DEVICE_DISABLED].contains(&code)
}

/// Runs the node until SIGINT / SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    if let Some(listen) = opts.dns_listen.filter(|a| !a.is_loopback()) {
        anyhow::bail!(
            "--dns-listen {listen} is not a loopback address: the resolver forwards any name \
             to the host's resolvers, so anyone who reaches it could use it (an open resolver)"
        );
    }
    if let Some(listen) = opts.metrics_listen.filter(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "--metrics-listen {listen} is not a loopback address: metrics name the node's peers; \
             put a reverse proxy with access control in front to export them"
        );
    }
    let mut daemon = Daemon::start(opts).await?;
    let result = daemon.run().await;
    daemon.portmap.release(Duration::from_secs(2)).await;
    daemon.stop();
    result
}

/// A node's certificate chain, key and root, as read at start (or
/// installed by a renewal): every Login presents them again.
pub struct Credentials {
    pub chain_pem: String,
    /// Wiped on drop.
    pub key_pem: zeroize::Zeroizing<String>,
    pub root_pem: String,
}

/// What a node certificate says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateInfo {
    pub serial: u64,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Credentials {
    /// Reads the key, chain and root in `state`, and checks that the
    /// certificate is valid for `fqdn` now and is the key's: it must be
    /// usable before it is announced to anyone.
    ///
    /// A renewal writes `node.pem` before `node.key`; after a crash
    /// between the two, `node.key.next` holds the key that goes with
    /// `node.pem`, and it becomes `node.key` here.
    pub fn load(state: &StatePaths, fqdn: &str) -> anyhow::Result<Credentials> {
        let mut key_pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(state.key()).context("cannot read node.key")?,
        );
        let chain_pem = std::fs::read_to_string(state.chain()).context("cannot read node.pem")?;
        let root_pem = std::fs::read_to_string(state.root()).context("cannot read root.pem")?;
        let verifier = Verifier::from_pem(&root_pem)?;
        let chain = cyphonic_pki::pem_to_der_chain(&chain_pem)?;
        let cert = verifier
            .verify_node(&chain, Some(fqdn), SystemTime::now())
            .context("this node's certificate is not valid: enroll again")?;
        if NodeKey::from_pem(&key_pem)?.public_key() != cert.public_key {
            let next = std::fs::read_to_string(state.next_key())
                .ok()
                .filter(|pem| {
                    NodeKey::from_pem(pem).is_ok_and(|k| k.public_key() == cert.public_key)
                })
                .context("node.key is not the key of the certificate in node.pem: enroll again")?;
            write_private(&state.key(), &next)?;
            let _ = std::fs::remove_file(state.next_key());
            tracing::warn!(
                "node.key was the key before the certificate's renewal; now the renewed one"
            );
            key_pem = zeroize::Zeroizing::new(next);
        }
        Ok(Credentials {
            chain_pem,
            key_pem,
            root_pem,
        })
    }

    /// Checks a renewed certificate `chain_pem` (valid now for `fqdn`,
    /// under `root_pem`, for `key_pem`) and installs it in `state`:
    /// `node.pem`, then `node.key` (each replaced atomically), then
    /// `node.key.next` goes. Returns the new credentials.
    pub fn install_renewal(
        state: &StatePaths,
        fqdn: &str,
        root_pem: &str,
        key_pem: &str,
        chain_pem: &str,
    ) -> anyhow::Result<Credentials> {
        let verifier = Verifier::from_pem(root_pem)?;
        let chain = cyphonic_pki::pem_to_der_chain(chain_pem)
            .context("the renewed certificate chain is not PEM")?;
        let cert = verifier
            .verify_node(&chain, Some(fqdn), SystemTime::now())
            .context("the renewed certificate is not valid")?;
        if NodeKey::from_pem(key_pem)?.public_key() != cert.public_key {
            bail!("the renewed certificate is not for the key this node sent");
        }
        write_private(&state.chain(), chain_pem)?;
        write_private(&state.key(), key_pem)?;
        if let Err(e) = std::fs::remove_file(state.next_key()) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove node.key.next");
            }
        }
        Ok(Credentials {
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned().into(),
            root_pem: root_pem.to_owned(),
        })
    }

    /// The certificate's serial and validity (it verified when these
    /// credentials were made; this reads it again at its notBefore).
    pub fn certificate(&self) -> anyhow::Result<CertificateInfo> {
        let verifier = Verifier::from_pem(&self.root_pem)?;
        let chain = cyphonic_pki::pem_to_der_chain(&self.chain_pem)?;
        let leaf = chain.first().context("node.pem holds no certificate")?;
        let not_before = not_before(&verifier, leaf)?;
        let cert = verifier
            .verify_node(&chain, None, not_before)
            .context("the node certificate does not verify")?;
        Ok(CertificateInfo {
            serial: cert.serial,
            not_before,
            not_after: cert.not_after,
        })
    }

    /// The tunnel identity for a run: a fresh static key, bound to the
    /// certificate by a signature and registered with the NMS, so it need
    /// not persist.
    pub fn tunnel_identity(&self) -> anyhow::Result<LocalIdentity> {
        self.identity_with(StaticKeypair::generate(&mut rand::rngs::OsRng))
    }

    /// The tunnel identity with `static_keys`, bound to this certificate:
    /// after a renewal, the run's static key (the one the NMS has) with the
    /// new certificate.
    pub fn identity_with(&self, static_keys: StaticKeypair) -> anyhow::Result<LocalIdentity> {
        let key = NodeKey::from_pem(&self.key_pem)?;
        let cert_chain_der = cyphonic_pki::pem_to_der_chain(&self.chain_pem)?;
        let binding_sig = key.sign(&binding_message(&static_keys.public));
        Ok(LocalIdentity {
            static_keys,
            cert_chain_der,
            binding_sig,
        })
    }
}

/// The notBefore of the node certificate `leaf` (DER). `Verifier` reports
/// a leaf's notAfter but not its notBefore; verifying the leaf alone at
/// the epoch fails on the leaf's own validity (checked before its issuer
/// is looked for, and the leaf is the only certificate given) with its
/// notBefore.
fn not_before(verifier: &Verifier, leaf: &[u8]) -> anyhow::Result<SystemTime> {
    match verifier.verify_node(&[leaf.to_vec()], None, UNIX_EPOCH) {
        Err(cyphonic_pki::PkiError::NotYetValid { not_before }) => Ok(not_before),
        Err(e) => Err(anyhow::Error::from(e).context("cannot read the certificate's notBefore")),
        Ok(_) => bail!("the node certificate is valid at the Unix epoch"),
    }
}

/// What a Login task reports: the AS's answer and the NMS it names.
pub type LoginResult = anyhow::Result<(LoginInfo, SocketAddr)>;

/// A Login task's result and the generation of the credentials it
/// presented ([`Renewer::generation`]).
type LoginDone = (u64, LoginResult);

/// A request on the status socket and where its answer goes.
pub type ControlMessage = (ControlRequest, oneshot::Sender<String>);

/// The daemon: the core and the IO around it. Each event source has its
/// `on_*` method, which hands the event to the core; after each,
/// [`Daemon::drain_core`] carries out what the core asked for.
struct Daemon {
    opts: RunOptions,
    file: NodeFile,
    credentials: Arc<Credentials>,
    certificate: Renewer,
    node: Node,
    /// The tunnel port: the core's control traffic goes out here, and the
    /// data plane receives on it.
    sockets: Arc<Sockets>,
    /// The QUIC and TLS-over-TCP legs.
    hub: Arc<Hub>,
    /// The data plane's tunnels, as the core's events set them.
    tables: Arc<Tables>,
    counters: Arc<DataCounters>,
    /// What the data plane hands to the core.
    to_control: mpsc::Sender<ToControl>,
    from_data: mpsc::Receiver<ToControl>,
    /// The TUN device and the data plane: up from the first Login on (the
    /// VIPs are the device's for good).
    tun: Option<Arc<Tun>>,
    dataplane: Option<DataPlane>,
    /// Peers whose tunnels came up in this run (saved for the next).
    tunnel_peers: BTreeSet<String>,
    logins: Logins,
    dns: Dns,
    control: Control,
    moves: Moves,
    portmap: PortMap,
    /// Numbers DNS clients and pings for the core.
    next_client: u64,
    stop: StopSignal,
}

/// The port mapping task ([`crate::portmap::run`]) and its channels.
struct PortMap {
    /// The IPv4 default gateway it asks (changes make it ask again).
    gateway: tokio::sync::watch::Sender<Option<std::net::Ipv4Addr>>,
    stop: tokio::sync::watch::Sender<bool>,
    changes: mpsc::Receiver<Option<crate::portmap::Mapping>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PortMap {
    /// Starts the task unless `enabled` is false (then nothing is ever
    /// asked).
    fn start(enabled: bool, tunnel_port: u16) -> PortMap {
        let (gateway, gateway_rx) = tokio::sync::watch::channel(crate::addrs::default_gateway_v4());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (tx, changes) = mpsc::channel(4);
        let task = enabled
            .then(|| tokio::spawn(crate::portmap::run(tunnel_port, gateway_rx, stop_rx, tx)));
        PortMap {
            gateway,
            stop,
            changes,
            task,
        }
    }

    /// Deletes the mapping (waits at most `wait` for the gateway).
    async fn release(&mut self, wait: Duration) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(wait, task).await;
        }
    }
}

/// Logging in at the AS, each attempt on a task of its own.
struct Logins {
    results_tx: mpsc::Sender<LoginDone>,
    results: mpsc::Receiver<LoginDone>,
    /// The wait before the next attempt that is not the first.
    backoff: Duration,
    /// Every address the cloud is known at (the enrolled one, then what
    /// Login reports).
    clouds: Vec<IpAddr>,
}

/// The local resolver: listening from the first Login on when
/// [`RunOptions::dns_listen`] is set.
struct Dns {
    socket: Option<UdpSocket>,
    /// Puts the host's resolver configuration back.
    guard: Option<DnsGuard>,
    /// The host's own resolvers, for names outside the overlay.
    upstreams: Vec<SocketAddr>,
    /// Overlay queries the core is answering, by the core's client number.
    clients: HashMap<DnsClient, SocketAddr>,
    buf: Vec<u8>,
    /// Upstream answers to forwarded queries, and their clients.
    answers_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    answers: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    /// Permits for queries being forwarded (`MAX_DNS_FORWARDS`).
    forwards: Arc<tokio::sync::Semaphore>,
    forwards_refused: u64,
    /// Cooperating domains the cloud directs routes to (from Login): their
    /// names are overlay names too.
    linked_domains: Vec<String>,
}

/// The status socket (`cyphonic status`, `cyphonic ping`): each connection
/// is read on a task of its own, which hands its request to the loop.
struct Control {
    listener: control::ControlListener,
    path: PathBuf,
    requests_tx: mpsc::Sender<ControlMessage>,
    requests: mpsc::Receiver<ControlMessage>,
    /// `cyphonic ping`s the core is answering, by client number.
    ping_waiters: HashMap<u64, oneshot::Sender<String>>,
}

/// Noticing moves: netlink events at once, a periodic check as backstop.
struct Moves {
    /// Stops the netlink watcher when dropped.
    _watch: Option<NetWatch>,
    changed: mpsc::Receiver<()>,
    check: tokio::time::Interval,
    /// Reads the kernel's path MTU of every tunnel's path.
    mtu_check: tokio::time::Interval,
    default_routes: Vec<String>,
}

impl Daemon {
    /// Reads the node's state, binds the tunnel port, the legs and the
    /// status socket, and starts the core (which asks to log in first).
    async fn start(opts: RunOptions) -> anyhow::Result<Daemon> {
        let state = StatePaths::new(&opts.state_dir);
        let file = state.load()?;
        crate::config::private_dir(&opts.state_dir)?;
        let credentials = Credentials::load(&state, &file.fqdn)?;
        let verifier = Verifier::from_pem(&credentials.root_pem)?;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let identity = credentials.tunnel_identity()?;
        let certificate =
            Renewer::new(&opts.state_dir, &credentials, identity.static_keys.clone())?;

        if cyphonic_platform::dns::recover(&opts.state_dir)? {
            tracing::warn!("restored the resolver configuration a previous run left behind");
        }

        let (sockets, hub) = bind_ports(&credentials, opts.tunnel_port, opts.quic_port).await?;
        let quic_port = hub.quic_listen_addrs().first().map_or(0, |a| a.port());
        let (to_control, from_data) = mpsc::channel(CONTROL_QUEUE);
        let config = NodeConfig {
            domain: file.domain.clone(),
            tunnel_port: opts.tunnel_port,
            keepalive: opts.keepalive,
            rekey_after: opts.rekey_after,
            reject_after: opts.rekey_after * 3 / 2,
            transport: opts.transport,
            quic_port,
            ..NodeConfig::default()
        };
        let start = Instant::now();
        let mut node = Node::new(
            config,
            identity,
            verifier,
            seed,
            unix_micros(),
            start,
            SystemTime::now(),
        );
        node.handle_local_addrs(start, crate::addrs::local_endpoints(opts.tunnel_port));
        if let Ok(text) = std::fs::read_to_string(state.peers()) {
            node.resume_peers(text.lines().map(str::to_owned));
        }
        node.start();

        let (listener, socket_path) = control_listener(&state)?;
        let (requests_tx, requests) = mpsc::channel(64);
        if let Some(listen) = opts.metrics_listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot serve metrics on {listen}"))?;
            tracing::info!(%listen, "metrics on /metrics");
            tokio::spawn(control::serve_metrics(listener, requests_tx.clone()));
        }
        let (results_tx, results) = mpsc::channel(4);
        let (answers_tx, answers) = mpsc::channel(256);
        let (moved, changed) = mpsc::channel(1);
        let watch = match NetWatch::start(Duration::from_millis(20), move || {
            let _ = moved.try_send(());
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch network changes; checking every 10 s");
                None
            }
        };
        let stop = StopSignal::new()?;

        Ok(Daemon {
            logins: Logins {
                results_tx,
                results,
                backoff: FIRST_LOGIN_BACKOFF,
                clouds: vec![file.cloud.ip()],
            },
            dns: Dns {
                socket: None,
                guard: None,
                upstreams: Vec::new(),
                clients: HashMap::new(),
                buf: vec![0u8; 4096],
                answers_tx,
                answers,
                forwards: Arc::new(tokio::sync::Semaphore::new(MAX_DNS_FORWARDS)),
                forwards_refused: 0,
                linked_domains: Vec::new(),
            },
            control: Control {
                listener,
                path: socket_path,
                requests_tx,
                requests,
                ping_waiters: HashMap::new(),
            },
            moves: Moves {
                _watch: watch,
                changed,
                check: tokio::time::interval(ADDR_CHECK_INTERVAL),
                mtu_check: tokio::time::interval(crate::dataplane::KERNEL_MTU_CHECK),
                default_routes: crate::addrs::default_routes(),
            },
            portmap: PortMap::start(opts.port_mapping, opts.tunnel_port),
            opts,
            file,
            credentials: Arc::new(credentials),
            certificate,
            node,
            sockets,
            hub,
            tables: Arc::new(Tables::default()),
            counters: Arc::new(DataCounters::default()),
            to_control,
            from_data,
            tun: None,
            dataplane: None,
            tunnel_peers: BTreeSet::new(),
            next_client: 1,
            stop,
        })
    }

    /// Turns the loop until SIGINT / SIGTERM, or until bringing up the TUN
    /// device or the resolver fails.
    async fn run(&mut self) -> anyhow::Result<()> {
        loop {
            self.drain_core().await;
            let deadline = self
                .node
                .poll_timeout()
                .map(|(t, _)| tokio::time::Instant::from_std(t))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let renewal = self.certificate.deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => self.on_timeout(),
                Some(msg) = self.from_data.recv() => self.on_data_plane(msg),
                Some(r) = self.logins.results.recv() => self.on_login_result(r).await?,
                _ = sleep_until_some(renewal), if renewal.is_some() => self.on_renewal_due(),
                r = self.certificate.next_result() => self.on_renewed(r),
                r = recv_dns(self.dns.socket.as_ref(), &mut self.dns.buf) => {
                    self.on_dns_query(r).await
                }
                Some((to, answer)) = self.dns.answers.recv() => {
                    self.on_dns_answer(to, answer).await
                }
                Ok(stream) = self.control.listener.accept() => {
                    self.on_control_connection(stream)
                }
                Some((request, reply)) = self.control.requests.recv() => {
                    self.on_control_request(request, reply)
                }
                Some(()) = self.moves.changed.recv() => self.on_netlink(),
                Some(m) = self.portmap.changes.recv() => self.on_port_mapping(m),
                _ = self.moves.check.tick() => self.on_addr_check(),
                _ = self.moves.mtu_check.tick() => {
                    crate::dataplane::refresh_kernel_mtus(&self.tables);
                }
                _ = self.stop.recv() => return Ok(()),
            }
        }
    }

    /// Stops the data plane and the legs, puts the host's resolver back
    /// and removes the status socket.
    fn stop(mut self) {
        tracing::info!("stopping");
        drop(self.dataplane.take());
        self.hub.close();
        if let Some(mut g) = self.dns.guard.take() {
            if let Err(e) = g.restore() {
                tracing::warn!(error = %e, "could not restore the resolver configuration");
            }
        }
        let _ = std::fs::remove_file(&self.control.path);
    }

    /// Carries out the core's outputs. Events first, so a tunnel is in the
    /// data plane's tables before the packet that completes its handshake
    /// (or the queued packets after it) leaves; the peer's answer may come
    /// back at once.
    async fn drain_core(&mut self) {
        while let Some(event) = self.node.poll_event() {
            self.on_node_event(event).await;
        }
        while let Some(t) = self.node.poll_transmit() {
            self.transmit(t);
        }
    }

    async fn on_node_event(&mut self, event: NodeEvent) {
        match event {
            NodeEvent::NeedLogin { reason } => {
                tracing::info!(%reason, cloud = %self.file.cloud, "Login");
                self.login_later(reason == LoginReason::Starting);
            }
            NodeEvent::Registered {
                fqdn,
                vip4,
                vip6,
                observed,
            } => {
                self.logins.backoff = FIRST_LOGIN_BACKOFF;
                tracing::info!(%fqdn, %vip4, %vip6, %observed, "registered");
            }
            NodeEvent::DnsResponse { client, response } => {
                if let (Some(sock), Some(addr)) =
                    (self.dns.socket.as_ref(), self.dns.clients.remove(&client))
                {
                    let _ = sock.send_to(&response, addr).await;
                }
            }
            NodeEvent::TunnelUp(handle) => {
                tracing::debug!(peer = %handle.fqdn, path = %handle.path, "tunnel installed");
                if !self.tunnel_peers.contains(&handle.fqdn) {
                    self.tunnel_peers.insert(handle.fqdn.clone());
                    self.save_peers();
                }
                self.tables.install(0, handle);
            }
            NodeEvent::TunnelDown { fqdn, local_index } => {
                // The core no longer knows the peer, so every key of its
                // leaves the tables: the one before `local_index`, kept for
                // packets in flight, too. Hence by name, not by index.
                tracing::info!(peer = %fqdn, %local_index, "tunnel removed");
                self.tables.remove(0, &fqdn);
            }
            NodeEvent::TunnelHold { fqdn } => {
                tracing::info!(peer = %fqdn, "holding packets until the tunnel is back");
                self.tables.hold(0, &fqdn);
            }
            NodeEvent::LegName { addr, fqdn } => self.hub.set_server_name(addr, fqdn),
            // Only an adapter asks for general nodes; the node daemon
            // never does (`general_nodes_poll` is off).
            NodeEvent::GeneralNodes { .. } => {}
            NodeEvent::SparePorts { keep } => self.sockets.spares.keep(&keep),
            NodeEvent::PingResult { client, result } => {
                if let Some(w) = self.control.ping_waiters.remove(&client) {
                    let _ = w.send(ping_answer(&result));
                }
            }
        }
    }

    fn transmit(&self, t: Transmit) {
        transmit(&self.sockets, &self.hub, t);
    }

    /// Writes the peers with tunnels (at most `MAX_RESUMED`) for the next
    /// run ([`Node::resume_peers`]).
    fn save_peers(&self) {
        let names: Vec<&str> = self
            .tunnel_peers
            .iter()
            .take(crate::core::MAX_RESUMED)
            .map(String::as_str)
            .collect();
        let path = StatePaths::new(&self.opts.state_dir).peers();
        if let Err(e) = write_private(&path, &(names.join("\n") + "\n")) {
            tracing::warn!(error = %e, path = %path.display(), "cannot save the peer list");
        }
    }

    fn on_timeout(&mut self) {
        self.node.handle_timeout(Instant::now());
    }

    fn on_data_plane(&mut self, msg: ToControl) {
        let now = Instant::now();
        match msg {
            ToControl::Datagram { from, packet } => self.node.handle_datagram(now, from, &packet),
            ToControl::Outbound { packet, .. } => self.node.handle_outbound(now, &packet),
            ToControl::PathSeen { index, path } => self.node.handle_path_seen(now, index, path),
            ToControl::TunnelMessage {
                index,
                path,
                message,
            } => self.node.handle_tunnel_message(now, index, path, &message),
            ToControl::KeyConfirmed { index } => self.node.handle_key_confirmed(now, index),
        }
    }

    /// Logs in on a task of its own: at once for the first Login, else
    /// after the backoff, which doubles.
    fn login_later(&mut self, at_once: bool) {
        let delay = if at_once {
            Duration::ZERO
        } else {
            self.logins.backoff
        };
        self.logins.backoff = (self.logins.backoff * 2).min(MAX_LOGIN_BACKOFF);
        let (results, file, credentials, clouds, generation) = (
            self.logins.results_tx.clone(),
            self.file.clone(),
            self.credentials.clone(),
            self.logins.clouds.clone(),
            self.certificate.generation(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let r = login(&file, &credentials, &clouds).await;
            let _ = results.send((generation, r)).await;
        });
    }

    /// A Login task's result. Fails only when the first Login's TUN device,
    /// data plane or resolver cannot be brought up.
    ///
    /// A Login with a certificate older than the newest is dropped: the
    /// Login with the newest is under way (a renewal starts one, and it
    /// retries until it succeeds) and its session replaces any other.
    async fn on_login_result(&mut self, (generation, result): LoginDone) -> anyhow::Result<()> {
        if generation != self.certificate.generation() {
            tracing::debug!(
                generation,
                newest = self.certificate.generation(),
                ok = result.is_ok(),
                "a Login with the certificate before its renewal; the renewed one logs in"
            );
            return Ok(());
        }
        let (info, nms) = match result {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Login failed; retrying");
                match e.downcast_ref::<crate::as_client::AsClientError>() {
                    Some(crate::as_client::AsClientError::Refused { code, message })
                        if withdrawn_code(code) =>
                    {
                        self.node.handle_login_refused(message.clone())
                    }
                    _ => self.node.handle_login_failed(),
                }
                self.node.handle_timeout(Instant::now());
                self.login_later(false);
                return Ok(());
            }
        };
        tracing::info!(fqdn = %info.fqdn, session = info.session_id, %nms, "Login done");
        if self.dataplane.is_none() {
            if self.opts.no_tun {
                let dataplane = DataPlane::receive_only(
                    self.sockets.clone(),
                    self.tables.clone(),
                    self.counters.clone(),
                    self.to_control.clone(),
                )?;
                self.install_dataplane(dataplane);
                tracing::info!("no TUN device (--no-tun): signaling only");
            } else {
                self.bring_up(&info).await?;
            }
        }
        for ip in &info.cloud_addrs {
            if !self.logins.clouds.contains(ip) {
                self.logins.clouds.push(*ip);
            }
        }
        self.dns.linked_domains = info
            .linked_domains
            .iter()
            .map(|l| l.domain.clone())
            .collect();
        let roots = info
            .linked_domains
            .iter()
            .filter_map(|l| match Verifier::from_pem(&l.root_pem) {
                Ok(v) => Some((l.domain.clone(), v)),
                Err(e) => {
                    tracing::warn!(domain = %l.domain, error = %e, "a linked domain's root is not a certificate");
                    None
                }
            })
            .collect();
        self.node.set_linked_roots(roots);
        let login = login_of(&info, nms, &self.logins.clouds);
        match self.certificate.on_login(generation) {
            LoginUse::Session => {}
            LoginUse::Stale => return Ok(()),
            LoginUse::RenewedSession(identity) => {
                // From this session on the NMS vouches for the renewed
                // certificate's serial: the core presents it, and selects
                // its peers' routes again once registered.
                // (`Node::resume_peers` would not do here: it asks only for
                // peers without a route, and replaces the previous run's
                // list.)
                self.node.set_identity(identity);
                tracing::info!(
                    session = info.session_id,
                    "the core presents the renewed certificate"
                );
            }
        }
        self.node.handle_login(Instant::now(), login);
        Ok(())
    }

    /// The certificate is due for renewal: an attempt on a task.
    fn on_renewal_due(&mut self) {
        self.certificate
            .start(&self.file, &self.credentials, &self.logins.clouds);
    }

    /// A renewal attempt's outcome. A new certificate (installed by then)
    /// logs in at once; its identity goes to the core with the session
    /// that Login opens ([`Daemon::on_login_result`]).
    fn on_renewed(&mut self, result: anyhow::Result<String>) {
        let root_pem = &self.credentials.root_pem;
        if let Some(credentials) = self.certificate.finish(result, &self.file.fqdn, root_pem) {
            // Legs set up from now on (to the cloud and to peers) present
            // the renewed certificate; the hub's trust stays the root.
            let identity = Verifier::from_pem(&credentials.root_pem).map(|root| TlsIdentity {
                chain_pem: credentials.chain_pem.clone(),
                key_pem: credentials.key_pem.to_string(),
                root_der: root.root_der().to_vec(),
            });
            if let Err(e) = identity
                .map_err(anyhow::Error::from)
                .and_then(|identity| self.hub.set_identity(&identity))
            {
                tracing::warn!(error = %format!("{e:#}"), "legs keep the certificate before the renewal");
            }
            self.credentials = Arc::new(credentials);
            self.login_later(true);
        }
    }

    /// The TUN device with the VIPs of the first Login, the data plane on
    /// it, and the resolver when asked for.
    /// The data plane takes the QUIC and TCP legs' datagrams too, from now on.
    fn install_dataplane(&mut self, dataplane: DataPlane) {
        self.hub
            .set_fast_sink(Some(crate::dataplane::LegSink::new(dataplane.inbound())));
        tokio::spawn(receive_legs(self.hub.clone(), dataplane.inbound()));
        self.dataplane = Some(dataplane);
    }

    async fn bring_up(&mut self, info: &LoginInfo) -> anyhow::Result<()> {
        let (vip4, vip6) = (info.vip4, info.vip6);
        let tun = Arc::new(
            Tun::create(&TunConfig {
                name: self.opts.tun_name.clone(),
                mtu: DEFAULT_MTU,
                vip4,
                prefix4: 10,
                vip6,
                prefix6: 48,
                offload: self.opts.offload,
            })
            .with_context(|| format!("cannot create TUN device {}", self.opts.tun_name))?,
        );
        let dataplane = DataPlane::start(
            tun.clone(),
            self.sockets.clone(),
            Some(self.hub.clone()),
            self.tables.clone(),
            self.counters.clone(),
            self.to_control.clone(),
        )?;
        self.install_dataplane(dataplane);
        tracing::info!(tun = %tun.name(), %vip4, %vip6, "TUN device up");
        self.tun = Some(tun);
        if let Some(listen) = self.opts.dns_listen {
            self.start_resolver(listen).await?;
        }
        Ok(())
    }

    /// Listens for DNS on `listen`:53 and makes it the host's resolver for
    /// the overlay domain.
    async fn start_resolver(&mut self, listen: IpAddr) -> anyhow::Result<()> {
        let socket = UdpSocket::bind(SocketAddr::new(listen, 53))
            .await
            .with_context(|| format!("cannot listen for DNS on {listen}:53"))?;
        let (guard, upstreams) =
            cyphonic_platform::dns::install(&cyphonic_platform::dns::DnsSetup {
                listen,
                domain: self.file.domain.clone(),
                tun_name: self.opts.tun_name.clone(),
                state_dir: self.opts.state_dir.clone(),
            })
            .context("cannot configure the host's resolver")?;
        let domain = &self.file.domain;
        tracing::info!(%listen, ?upstreams, %domain, "resolver installed");
        self.dns.upstreams = upstreams;
        self.dns.guard = Some(guard);
        self.dns.socket = Some(socket);
        Ok(())
    }

    /// A query on the resolver's socket: overlay names go to the core,
    /// others to the host's resolvers on a task, and malformed ones get
    /// their FORMERR.
    async fn on_dns_query(&mut self, received: io::Result<(usize, SocketAddr)>) {
        let Ok((n, from)) = received else {
            return;
        };
        let query = &self.dns.buf[..n];
        let mut class = resolver::classify(query, &self.file.domain);
        for domain in &self.dns.linked_domains {
            if !matches!(class, Classified::Forward) {
                break;
            }
            class = resolver::classify(query, domain);
        }
        match class {
            Classified::Overlay { query, name, .. } => {
                let id = self.next_client;
                self.next_client += 1;
                if self.dns.clients.len() < MAX_DNS_CLIENTS {
                    self.dns.clients.insert(id, from);
                    self.node.handle_dns_query(Instant::now(), id, query, name);
                }
            }
            Classified::Forward => {
                // Bounded: each forward holds a task and a socket until
                // its upstream answers or times out.
                let Ok(permit) = self.dns.forwards.clone().try_acquire_owned() else {
                    self.dns.forwards_refused += 1;
                    return;
                };
                let (query, upstreams, answers) = (
                    query.to_vec(),
                    self.dns.upstreams.clone(),
                    self.dns.answers_tx.clone(),
                );
                tokio::spawn(async move {
                    if let Some(answer) = forward_dns(&query, &upstreams).await {
                        let _ = answers.send((from, answer)).await;
                    }
                    drop(permit);
                });
            }
            Classified::Invalid(Some(answer)) => self.on_dns_answer(from, answer).await,
            Classified::Invalid(None) => {}
        }
    }

    /// An answer for a DNS client that the core did not make.
    async fn on_dns_answer(&mut self, to: SocketAddr, answer: Vec<u8>) {
        if let Some(s) = self.dns.socket.as_ref() {
            let _ = s.send_to(&answer, to).await;
        }
    }

    fn on_control_connection(&mut self, stream: control::ControlStream) {
        tokio::spawn(read_control(stream, self.control.requests_tx.clone()));
    }

    fn on_control_request(&mut self, request: ControlRequest, reply: oneshot::Sender<String>) {
        match request {
            ControlRequest::Status => {
                let report = StatusReport {
                    node: self.node.status(Instant::now()),
                    certificate: self.certificate.status(),
                    tun: self.tun.as_ref().map(|t| t.name().to_owned()),
                    dataplane: self.counters.snapshot(),
                    legs: self.hub.legs(),
                    dns_forwards_refused: self.dns.forwards_refused,
                };
                let _ = reply.send(serde_json::to_string(&report).unwrap_or_default());
            }
            ControlRequest::Ping(fqdn) => {
                let id = self.next_client;
                self.next_client += 1;
                let waiters = &mut self.control.ping_waiters;
                waiters.retain(|_, w| !w.is_closed());
                waiters.insert(id, reply);
                self.node.handle_ping(Instant::now(), id, &fqdn);
            }
        }
    }

    /// Netlink says addresses, routes or links changed: a move when the
    /// addresses did, a route change when only the default route did.
    fn on_netlink(&mut self) {
        let addrs = crate::addrs::local_endpoints(self.opts.tunnel_port);
        let routes = crate::addrs::default_routes();
        let same_addrs = self.node.local_addrs() == addrs.as_slice();
        if same_addrs && routes != self.moves.default_routes {
            self.node.handle_route_change(
                Instant::now(),
                format!("default route now {}", routes.join(", ")),
            );
        }
        self.moves.default_routes = routes;
        self.portmap.gateway.send_if_modified(|g| {
            let now = crate::addrs::default_gateway_v4();
            std::mem::replace(g, now) != now
        });
        if !same_addrs {
            // QUIC legs migrate to the new address (RFC 9000 §9); TCP legs
            // are dialed again.
            if let Err(e) = self.hub.rebind() {
                tracing::warn!(error = %format!("{e:#}"), "cannot move the QUIC legs");
            }
        }
        self.node.handle_local_addrs(Instant::now(), addrs);
    }

    /// The router granted a port mapping, moved it, or it is gone.
    fn on_port_mapping(&mut self, mapping: Option<crate::portmap::Mapping>) {
        let mapping = mapping.map(|m| crate::core::PortMapping {
            protocol: m.protocol.as_str().to_owned(),
            external: crate::portmap::registered(&m),
            lifetime_secs: m.lifetime.as_secs(),
        });
        self.node.handle_port_mapping(Instant::now(), mapping);
    }

    /// The backstop for a missed netlink event.
    fn on_addr_check(&mut self) {
        let addrs = crate::addrs::local_endpoints(self.opts.tunnel_port);
        self.node.handle_local_addrs(Instant::now(), addrs);
    }
}

/// What stops the daemon: Ctrl-C, SIGTERM (systemd), or on Windows the
/// console closing and the service control manager's stop.
pub struct StopSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(windows)]
    close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl StopSignal {
    pub fn new() -> io::Result<StopSignal> {
        Ok(StopSignal {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
            #[cfg(windows)]
            close: tokio::signal::windows::ctrl_close()?,
            #[cfg(windows)]
            shutdown: tokio::signal::windows::ctrl_shutdown()?,
        })
    }

    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(windows)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.close.recv() => {}
            _ = self.shutdown.recv() => {}
            _ = service_stop() => {}
        }
    }
}

/// Resolves when the service control manager asks the service to stop
/// (see [`request_service_stop`]); never when not run as a service.
#[cfg(windows)]
async fn service_stop() {
    SERVICE_STOP.notified().await
}

#[cfg(windows)]
static SERVICE_STOP: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Stops a daemon running as a Windows service (its control handler
/// calls this).
#[cfg(windows)]
pub fn request_service_stop() {
    SERVICE_STOP.notify_one();
}

mod control;
pub mod renewal;
mod shell;
#[cfg(test)]
mod tests;

pub use control::{
    control_listener, ping_answer, query_ping, query_status, read_control, render_status,
    ControlListener, ControlRequest, ControlStream,
};
pub use shell::{
    bind_ports, failure_of, forward_dns, login, login_of, node_hub, receive_legs, recv_dns, renew,
    sleep_until_some, transmit, unix_secs, LoginUse, Renewer, SpareUse,
};
