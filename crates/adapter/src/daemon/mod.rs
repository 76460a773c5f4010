//! `cyphonic adapter run`: the adapter as a running service
//! (`docs/adapter.md`). One process holds a [`Host`] of node cores: the
//! adapter's own identity (0), which logs in, registers and polls its
//! general-node list, and one identity per general node, which logs in
//! and registers on that node's behalf with the node's own certificate
//! once the node shows up on the LAN. They share the tunnel port, the QUIC
//! and TCP legs and the node's data plane ([`cyphonic_node::dataplane`]),
//! whose device here is the LAN ([`LanDevice`]) instead of a TUN device.
//!
//! The loop is the node daemon's: wait for the first event source, hand
//! the event to the core it concerns, carry out what the cores asked for.
//!
//! The adapter renews its own certificate as the node daemon does
//! ([`Renewer`]), and the general nodes' certificates on the same schedule
//! ([`Renewal`]: two thirds into their life): a new key, `enroll_general`
//! again, the new certificate installed in `general/<name>/`, a Login with
//! it, and the core presents it from that session on (its static key
//! stays, as the NMS announced it).

mod general;
mod lan_thread;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use cyphonic_node::as_client::LoginInfo;
use cyphonic_node::config::{NodeFile, StatePaths};
use cyphonic_node::core::{LoginReason, Node, NodeConfig, NodeEvent, Transport};
use cyphonic_node::daemon::renewal::{Failure, Renewal};
use cyphonic_node::daemon::{
    bind_ports, control_listener, forward_dns, login, login_of, ping_answer, read_control,
    receive_legs, sleep_until_some, transmit, unix_micros, CertificateStatus, ControlListener,
    ControlMessage, ControlRequest, ControlStream, Credentials, LoginResult, LoginUse, Renewer,
    SpareUse, DEFAULT_MTU,
};
use cyphonic_node::dataplane::{
    spawn_receivers, DataCounters, Device, Inbound, Sender, Sockets, Stop, Tables, ToControl,
};
use cyphonic_node::host::{identity_of_index, Host, IdentityId};
use cyphonic_node::resolver::{self, Classified};
use cyphonic_pki::Verifier;
use cyphonic_platform::netwatch::NetWatch;
use cyphonic_proto::handshake::{LocalIdentity, StaticKeypair};
use cyphonic_proto::prefix::{Ipv4Prefix, Ipv6Prefix};
use cyphonic_proto::signal::GeneralNodeInfo;
use cyphonic_transport::Hub;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::device::LanDevice;
use crate::frame;
use crate::lan::{GeneralNodeAddrs, Lan, LanConfig};
use crate::MacAddr;
use lan_thread::{LanCommand, LanEvent, LanSnapshot, LanThread};

/// The adapter's own identity in the host; general nodes get 1..=255.
const ADAPTER: IdentityId = 0;
const FIRST_LOGIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_LOGIN_BACKOFF: Duration = Duration::from_secs(10);
const ADDR_CHECK_INTERVAL: Duration = Duration::from_secs(10);
const CONTROL_QUEUE: usize = 4096;
const MAX_DNS_CLIENTS: usize = 4096;

#[derive(Debug, Clone)]
pub struct AdapterOptions {
    pub state_dir: PathBuf,
    /// The general nodes' LAN interface (kept without an IP stack).
    pub lan: String,
    pub tunnel_port: u16,
    pub keepalive: Duration,
    /// Tunnel keys' rekey age; keys are refused at one and a half times it.
    pub rekey_after: Duration,
    pub transport: Option<Transport>,
    pub quic_port: u16,
    /// How often the general-node list is asked for again: changes reach
    /// a running adapter within this time.
    pub list_poll: Duration,
}

/// Runs the adapter until SIGINT / SIGTERM.
pub async fn run(opts: AdapterOptions) -> anyhow::Result<()> {
    let mut adapter = Adapter::start(opts).await?;
    let result = adapter.run().await;
    adapter.stop();
    result
}

/// Where a general node is on its way into the overlay.
enum Phase {
    /// Listed, not seen on the LAN yet.
    Listed,
    /// Seen; its credentials are being loaded or issued.
    Preparing,
    /// Its core is in the host.
    Running(Arc<Credentials>),
    /// Its credentials could not be had; tried again when it shows up.
    Failed(String),
}

struct GeneralNode {
    info: GeneralNodeInfo,
    /// Its device ID: the first label of its FQDN.
    name: String,
    id: IdentityId,
    phase: Phase,
    registered: bool,
    backoff: Duration,
    /// Its core's static key (kept across certificate renewals).
    static_keys: Option<StaticKeypair>,
    /// Its certificate's renewal schedule, once running.
    renewal: Option<Renewal>,
    /// A renewal is under way.
    renewing: bool,
    /// Counts its certificates: a Login result carries the one it
    /// presented, and older ones are dropped.
    generation: u64,
    /// The renewed certificate's identity, presented from the session its
    /// Login opens.
    renewed: Option<LocalIdentity>,
}

/// One identity's Login result, with the generation of the credentials it
/// presented (the adapter's [`Renewer::generation`]; 0 for general nodes).
type LoginDone = (IdentityId, u64, String, LoginResult);
/// A general node's credentials, loaded or issued.
type Prepared = (MacAddr, anyhow::Result<Credentials>);
/// A general node's renewed credentials.
type Reissued = (MacAddr, anyhow::Result<Credentials>);

/// A DNS query from the LAN the adapter is answering.
#[derive(Debug, Clone, Copy)]
struct DnsQuery {
    mac: MacAddr,
    /// The general node's address and port, and the gateway's it asked.
    src: SocketAddr,
    dst: SocketAddr,
}

struct LanSide {
    device: Arc<LanDevice>,
    commands: std::sync::mpsc::Sender<LanCommand>,
    snapshot: Arc<Mutex<LanSnapshot>>,
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

struct Adapter {
    opts: AdapterOptions,
    file: NodeFile,
    credentials: Arc<Credentials>,
    /// The adapter's own certificate's renewal.
    certificate: Renewer,
    host: Host,
    sockets: Arc<Sockets>,
    /// Which identity uses which spare port.
    spare_use: SpareUse,
    hub: Arc<Hub>,
    tables: Arc<Tables>,
    counters: Arc<DataCounters>,
    to_control: mpsc::Sender<ToControl>,
    from_data: mpsc::Receiver<ToControl>,
    quic_port: u16,
    /// The adapter's own VIPs, from its first Login on.
    gateway: Option<(std::net::Ipv4Addr, std::net::Ipv6Addr)>,
    lan: Option<LanSide>,
    lan_events_tx: mpsc::Sender<LanEvent>,
    lan_events: mpsc::Receiver<LanEvent>,
    lan_events_dropped: Arc<AtomicU64>,
    general: BTreeMap<MacAddr, GeneralNode>,
    list_version: Option<u64>,
    prepared_tx: mpsc::Sender<Prepared>,
    prepared: mpsc::Receiver<Prepared>,
    reissued_tx: mpsc::Sender<Reissued>,
    reissued: mpsc::Receiver<Reissued>,
    logins_tx: mpsc::Sender<LoginDone>,
    logins: mpsc::Receiver<LoginDone>,
    backoff: Duration,
    clouds: Vec<IpAddr>,
    upstreams: Vec<SocketAddr>,
    dns_clients: HashMap<u64, DnsQuery>,
    dns_answers_tx: mpsc::Sender<(DnsQuery, Vec<u8>)>,
    dns_answers: mpsc::Receiver<(DnsQuery, Vec<u8>)>,
    listener: ControlListener,
    socket_path: PathBuf,
    requests_tx: mpsc::Sender<ControlMessage>,
    requests: mpsc::Receiver<ControlMessage>,
    ping_waiters: HashMap<u64, oneshot::Sender<String>>,
    _watch: Option<NetWatch>,
    moved: mpsc::Receiver<()>,
    check: tokio::time::Interval,
    /// Reads the kernel's path MTU of every tunnel's path.
    mtu_check: tokio::time::Interval,
    next_client: u64,
    sigterm: Signal,
}

impl Adapter {
    async fn start(opts: AdapterOptions) -> anyhow::Result<Adapter> {
        let state = StatePaths::new(&opts.state_dir);
        let file = state.load()?;
        let credentials = Credentials::load(&state, &file.fqdn)?;
        let identity = credentials.tunnel_identity()?;
        let certificate =
            Renewer::new(&opts.state_dir, &credentials, identity.static_keys.clone())?;
        let (sockets, hub) = bind_ports(&credentials, opts.tunnel_port, opts.quic_port).await?;
        let quic_port = hub.quic_listen_addrs().first().map_or(0, |a| a.port());
        let (to_control, from_data) = mpsc::channel(CONTROL_QUEUE);
        let (listener, socket_path) = control_listener(&state)?;
        let (requests_tx, requests) = mpsc::channel(64);
        let (logins_tx, logins) = mpsc::channel(64);
        let (prepared_tx, prepared) = mpsc::channel(64);
        let (reissued_tx, reissued) = mpsc::channel(64);
        let (lan_events_tx, lan_events) = mpsc::channel(1024);
        let (dns_answers_tx, dns_answers) = mpsc::channel(256);
        let (moved_tx, moved) = mpsc::channel(1);
        let watch = NetWatch::start(Duration::from_millis(20), move || {
            let _ = moved_tx.try_send(());
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch network changes"))
        .ok();
        let upstreams = cyphonic_platform::dns::resolv_conf::upstreams(
            &cyphonic_platform::dns::resolv_conf::parse(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
            &[],
            |_| None,
        );
        let mut adapter = Adapter {
            clouds: vec![file.cloud.ip()],
            opts,
            file,
            credentials: Arc::new(credentials),
            certificate,
            host: Host::default(),
            sockets,
            spare_use: SpareUse::default(),
            hub,
            tables: Arc::new(Tables::default()),
            counters: Arc::new(DataCounters::default()),
            to_control,
            from_data,
            quic_port,
            gateway: None,
            lan: None,
            lan_events_tx,
            lan_events,
            lan_events_dropped: Arc::new(AtomicU64::new(0)),
            general: BTreeMap::new(),
            list_version: None,
            prepared_tx,
            prepared,
            reissued_tx,
            reissued,
            logins_tx,
            logins,
            backoff: FIRST_LOGIN_BACKOFF,
            upstreams,
            dns_clients: HashMap::new(),
            dns_answers_tx,
            dns_answers,
            listener,
            socket_path,
            requests_tx,
            requests,
            ping_waiters: HashMap::new(),
            _watch: watch,
            moved,
            check: tokio::time::interval(ADDR_CHECK_INTERVAL),
            mtu_check: tokio::time::interval(cyphonic_node::dataplane::KERNEL_MTU_CHECK),
            next_client: 1,
            sigterm: signal(SignalKind::terminate())?,
        };
        let own = adapter.new_core(ADAPTER, &adapter.credentials.clone(), identity, true)?;
        adapter.host.add(own).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(adapter)
    }

    /// A node core for identity `id` with `credentials` (presented as
    /// `identity`), started.
    fn new_core(
        &self,
        id: IdentityId,
        credentials: &Credentials,
        identity: LocalIdentity,
        is_adapter: bool,
    ) -> anyhow::Result<Node> {
        let verifier = Verifier::from_pem(&credentials.root_pem)?;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let config = NodeConfig {
            domain: self.file.domain.clone(),
            tunnel_port: self.opts.tunnel_port,
            keepalive: self.opts.keepalive,
            rekey_after: self.opts.rekey_after,
            reject_after: self.opts.rekey_after * 3 / 2,
            transport: self.opts.transport,
            quic_port: self.quic_port,
            index_tag: Some(id),
            general_nodes_poll: is_adapter.then_some(self.opts.list_poll),
            ..NodeConfig::default()
        };
        let now = Instant::now();
        let mut node = Node::new(
            config,
            identity,
            verifier,
            seed,
            unix_micros(),
            now,
            SystemTime::now(),
        );
        node.handle_local_addrs(
            now,
            cyphonic_node::addrs::local_endpoints(self.opts.tunnel_port),
        );
        node.start();
        Ok(node)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        loop {
            self.drain_cores();
            let deadline = self
                .host
                .poll_timeout()
                .map(|(t, _)| tokio::time::Instant::from_std(t))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let renewal = self.certificate.deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => self.host.handle_timeout(Instant::now()),
                _ = sleep_until_some(renewal), if renewal.is_some() => {
                    self.certificate.start(&self.file, &self.credentials, &self.clouds)
                }
                r = self.certificate.next_result() => self.on_renewed(r),
                Some(msg) = self.from_data.recv() => self.on_data_plane(msg),
                Some(done) = self.logins.recv() => self.on_login(done)?,
                Some(p) = self.prepared.recv() => self.on_prepared(p),
                Some(r) = self.reissued.recv() => self.on_reissued(r),
                Some(e) = self.lan_events.recv() => self.on_lan_event(e),
                Some((q, answer)) = self.dns_answers.recv() => self.answer_dns(q, &answer),
                Ok(stream) = self.listener.accept() => self.on_control_connection(stream),
                Some((request, reply)) = self.requests.recv() => self.on_control_request(request, reply),
                Some(()) = self.moved.recv() => self.on_addrs(true),
                _ = self.mtu_check.tick() => {
                    cyphonic_node::dataplane::refresh_kernel_mtus(&self.tables);
                }
                _ = self.check.tick() => {
                    self.on_addrs(false);
                    self.renew_general();
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = self.sigterm.recv() => return Ok(()),
            }
        }
    }

    fn stop(mut self) {
        tracing::info!("stopping");
        if let Some(lan) = self.lan.take() {
            lan.stop.set();
            for t in lan.threads {
                let _ = t.join();
            }
        }
        self.hub.close();
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// Carries out what the cores asked for; events first, as the node
    /// daemon does, so a tunnel is in the tables before its first packet.
    fn drain_cores(&mut self) {
        while let Some((id, event)) = self.host.poll_event() {
            self.on_node_event(id, event);
        }
        while let Some((id, t)) = self.host.poll_transmit() {
            self.spare_use.sent(id, t.local);
            transmit(&self.sockets, &self.hub, t);
        }
    }

    fn on_node_event(&mut self, id: IdentityId, event: NodeEvent) {
        match event {
            NodeEvent::NeedLogin { reason } => {
                tracing::info!(identity = id, %reason, "Login");
                self.login_later(id, reason == LoginReason::Starting);
            }
            NodeEvent::Registered {
                fqdn, vip4, vip6, ..
            } => {
                tracing::info!(identity = id, %fqdn, %vip4, %vip6, "registered");
                if id == ADAPTER {
                    self.backoff = FIRST_LOGIN_BACKOFF;
                } else if let Some(g) = self.general.values_mut().find(|g| g.id == id) {
                    g.registered = true;
                    g.backoff = FIRST_LOGIN_BACKOFF;
                }
            }
            NodeEvent::DnsResponse { client, response } => {
                if let Some(q) = self.dns_clients.remove(&client) {
                    self.answer_dns(q, &response);
                }
            }
            NodeEvent::TunnelUp(handle) => {
                tracing::info!(identity = id, peer = %handle.fqdn, path = %handle.path, "tunnel installed");
                self.tables.install(id, handle);
            }
            NodeEvent::TunnelDown { fqdn, .. } => {
                tracing::info!(identity = id, peer = %fqdn, "tunnel removed");
                self.tables.remove(id, &fqdn);
            }
            NodeEvent::TunnelHold { fqdn } => self.tables.hold(id, &fqdn),
            NodeEvent::LegName { addr, fqdn } => self.hub.set_server_name(addr, fqdn),
            NodeEvent::GeneralNodes { version, nodes } if id == ADAPTER => {
                self.on_general_nodes(version, nodes)
            }
            NodeEvent::GeneralNodes { .. } => {}
            NodeEvent::SparePorts { keep } => self.spare_use.release(id, &keep, &self.sockets),
            NodeEvent::PingResult { client, result } => {
                if let Some(w) = self.ping_waiters.remove(&client) {
                    let _ = w.send(ping_answer(&result));
                }
            }
        }
    }

    fn on_data_plane(&mut self, msg: ToControl) {
        let now = Instant::now();
        match msg {
            ToControl::Datagram { from, packet } => self.host.handle_datagram(now, from, &packet),
            ToControl::Outbound { identity, packet } => {
                if let Some(n) = self.host.node_mut(identity) {
                    n.handle_outbound(now, &packet);
                }
            }
            ToControl::PathSeen { index, path } => {
                if let Some(n) = self.host.node_mut(identity_of_index(index)) {
                    n.handle_path_seen(now, index, path);
                }
            }
            ToControl::TunnelMessage {
                index,
                path,
                message,
            } => {
                if let Some(n) = self.host.node_mut(identity_of_index(index)) {
                    n.handle_tunnel_message(now, index, path, &message);
                }
            }
            ToControl::KeyConfirmed { index } => {
                if let Some(n) = self.host.node_mut(identity_of_index(index)) {
                    n.handle_key_confirmed(now, index);
                }
            }
        }
    }

    /// Logs identity `id` in on a task: at once the first time, else after
    /// its backoff, which doubles.
    fn login_later(&mut self, id: IdentityId, at_once: bool) {
        let (file, credentials, backoff, generation) = if id == ADAPTER {
            let b = &mut self.backoff;
            let delay = *b;
            *b = (*b * 2).min(MAX_LOGIN_BACKOFF);
            let generation = self.certificate.generation();
            (
                self.file.clone(),
                self.credentials.clone(),
                delay,
                generation,
            )
        } else {
            let domain = self.file.domain.clone();
            let Some(g) = self.general.values_mut().find(|g| g.id == id) else {
                return;
            };
            let Phase::Running(c) = &g.phase else {
                return;
            };
            let delay = g.backoff;
            g.backoff = (g.backoff * 2).min(MAX_LOGIN_BACKOFF);
            let mut file = self.file.clone();
            file.device_id = g.name.clone();
            file.fqdn = g.info.fqdn.clone();
            file.domain = domain;
            (file, c.clone(), delay, g.generation)
        };
        let delay = if at_once { Duration::ZERO } else { backoff };
        let (tx, clouds) = (self.logins_tx.clone(), self.clouds.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let r = login(&file, &credentials, &clouds).await;
            let _ = tx.send((id, generation, file.fqdn.clone(), r)).await;
        });
    }

    /// A Login's result. Fails only when the LAN side cannot be brought up
    /// after the adapter's first Login.
    ///
    /// The adapter's Logins with its certificate before a renewal are
    /// dropped: the renewed one logs in (as in the node daemon).
    fn on_login(&mut self, (id, generation, fqdn, result): LoginDone) -> anyhow::Result<()> {
        if id == ADAPTER && generation != self.certificate.generation() {
            return Ok(());
        }
        let general = self.general.values_mut().find(|g| g.id == id);
        if general.as_ref().is_some_and(|g| g.generation != generation) {
            // A Login with a certificate before its renewal.
            return Ok(());
        }
        let renewed_general = general.and_then(|g| g.renewed.take());
        let Some(node) = self.host.node_mut(id) else {
            return Ok(());
        };
        let (info, nms) = match result {
            Ok(done) if done.0.fqdn == fqdn => done,
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(identity = id, %fqdn, error = %format!("{e:#}"), "Login failed; retrying");
                node.handle_login_failed();
                node.handle_timeout(Instant::now());
                self.login_later(id, false);
                return Ok(());
            }
        };
        tracing::info!(identity = id, fqdn = %info.fqdn, %nms, "Login done");
        for ip in &info.cloud_addrs {
            if !self.clouds.contains(ip) {
                self.clouds.push(*ip);
            }
        }
        if id == ADAPTER && self.lan.is_none() {
            self.bring_up(&info)?;
        }
        let login = login_of(&info, nms, &self.clouds);
        let renewed = match id {
            ADAPTER => match self.certificate.on_login(generation) {
                LoginUse::Session => None,
                LoginUse::Stale => return Ok(()),
                LoginUse::RenewedSession(identity) => Some(identity),
            },
            _ => renewed_general,
        };
        if let Some(node) = self.host.node_mut(id) {
            if let Some(identity) = renewed {
                // The NMS vouches for the renewed certificate's serial
                // from this session on (see the node daemon).
                node.set_identity(identity);
                tracing::info!(identity = id, "the core presents its renewed certificate");
            }
            node.handle_login(Instant::now(), login);
        }
        Ok(())
    }

    /// The outcome of a renewal of the adapter's certificate: a new one
    /// (installed by then) logs in at once, and is the one `enroll_general`
    /// presents from now on.
    fn on_renewed(&mut self, result: anyhow::Result<String>) {
        let root_pem = &self.credentials.root_pem;
        if let Some(credentials) = self.certificate.finish(result, &self.file.fqdn, root_pem) {
            self.credentials = Arc::new(credentials);
            self.login_later(ADAPTER, true);
        }
    }

    /// The LAN side with the adapter's VIPs as gateway, its thread, and
    /// the data plane's receivers delivering to it.
    fn bring_up(&mut self, info: &LoginInfo) -> anyhow::Result<()> {
        let (vip4, vip6) = (info.vip4, info.vip6);
        let config = LanConfig {
            iface: self.opts.lan.clone(),
            gateway4: vip4,
            gateway6: vip6,
            overlay4: Ipv4Prefix::containing(vip4, 10)?,
            overlay6: Ipv6Prefix::containing(vip6, 48)?,
            domain: self.file.domain.clone(),
            lease_file: Some(self.opts.state_dir.join("leases.json")),
            mtu: Some(DEFAULT_MTU),
        };
        let lan = Lan::open(&config, &self.lan_addrs())?;
        let device = Arc::new(LanDevice::new(lan.socket(), lan.mac()));
        let (commands_tx, commands) = std::sync::mpsc::channel();
        let snapshot = Arc::new(Mutex::new(LanSnapshot::default()));
        let stop = Arc::new(Stop::new()?);
        let sender = Sender::new(
            self.sockets.clone(),
            Some(self.hub.clone()),
            self.tables.clone(),
            self.counters.clone(),
            self.to_control.clone(),
            usize::from(DEFAULT_MTU),
        );
        let thread = LanThread {
            lan,
            device: device.clone(),
            sender,
            commands,
            events: self.lan_events_tx.clone(),
            snapshot: snapshot.clone(),
            events_dropped: self.lan_events_dropped.clone(),
        };
        let mut threads = Vec::new();
        {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("cy-lan".into())
                    .spawn(move || thread.run(&stop))?,
            );
        }
        let dev: Arc<dyn Device> = device.clone();
        threads.extend(spawn_receivers(
            &self.sockets,
            &dev,
            &self.tables,
            &self.counters,
            &self.to_control,
            &stop,
            None,
        )?);
        let inbound = Inbound::new(dev.clone(), &self.tables, &self.counters, &self.to_control);
        self.hub
            .set_fast_sink(Some(cyphonic_node::dataplane::LegSink::new(Inbound::new(
                dev,
                &self.tables,
                &self.counters,
                &self.to_control,
            ))));
        tokio::spawn(receive_legs(self.hub.clone(), inbound));
        tracing::info!(lan = %self.opts.lan, %vip4, %vip6, "LAN side up");
        self.gateway = Some((vip4, vip6));
        self.lan = Some(LanSide {
            device,
            commands: commands_tx,
            snapshot,
            stop,
            threads,
        });
        Ok(())
    }

    /// The general nodes as the LAN side serves them.
    fn lan_addrs(&self) -> Vec<GeneralNodeAddrs> {
        self.general.values().map(addrs_of).collect()
    }

    /// A new version of the general-node list: new nodes are listed,
    /// those gone leave the host and the LAN.
    fn on_general_nodes(&mut self, version: u64, nodes: Vec<GeneralNodeInfo>) {
        tracing::info!(version, count = nodes.len(), "general-node list");
        self.list_version = Some(version);
        let listed: BTreeMap<MacAddr, GeneralNodeInfo> =
            nodes.into_iter().map(|n| (MacAddr(n.mac), n)).collect();
        let gone: Vec<MacAddr> = self
            .general
            .iter()
            .filter(|(mac, g)| listed.get(*mac) != Some(&g.info))
            .map(|(mac, _)| *mac)
            .collect();
        for mac in gone {
            if let Some(g) = self.general.remove(&mac) {
                tracing::info!(fqdn = %g.info.fqdn, %mac, "general node removed");
                self.host.remove(g.id);
                self.tables.remove_identity(g.id);
                if let Some(lan) = &self.lan {
                    lan.device.leave(g.id);
                }
            }
        }
        let suffix = format!(".{}", self.file.domain);
        for (mac, info) in listed {
            if self.general.contains_key(&mac) {
                continue;
            }
            let Some(id) =
                (1..=IdentityId::MAX).find(|i| self.general.values().all(|g| g.id != *i))
            else {
                tracing::warn!(fqdn = %info.fqdn, "more general nodes than identities (255); left out");
                continue;
            };
            let name = info
                .fqdn
                .strip_suffix(&suffix)
                .unwrap_or(&info.fqdn)
                .to_owned();
            tracing::info!(fqdn = %info.fqdn, %mac, identity = id, "general node listed");
            self.general.insert(
                mac,
                GeneralNode {
                    info,
                    name,
                    id,
                    phase: Phase::Listed,
                    registered: false,
                    backoff: FIRST_LOGIN_BACKOFF,
                    static_keys: None,
                    renewal: None,
                    renewing: false,
                    generation: 0,
                    renewed: None,
                },
            );
        }
        if let Some(lan) = &self.lan {
            let _ = lan
                .commands
                .send(LanCommand::SetGeneralNodes(self.lan_addrs()));
        }
    }

    fn on_lan_event(&mut self, event: LanEvent) {
        match event {
            LanEvent::Arrived(mac) => self.on_arrival(mac),
            LanEvent::Dns {
                src_mac,
                src,
                dst,
                query,
            } => self.on_dns_query(
                DnsQuery {
                    mac: src_mac,
                    src,
                    dst,
                },
                &query,
            ),
        }
    }

    /// A general node showed up: its credentials are loaded (or issued)
    /// on a task, then it logs in.
    fn on_arrival(&mut self, mac: MacAddr) {
        let Some(g) = self.general.get_mut(&mac) else {
            return;
        };
        if !matches!(g.phase, Phase::Listed | Phase::Failed(_)) {
            return;
        }
        tracing::info!(fqdn = %g.info.fqdn, %mac, "general node on the LAN");
        g.phase = Phase::Preparing;
        let dir = self.opts.state_dir.join("general").join(&g.name);
        let (file, adapter, name, fqdn, tx) = (
            self.file.clone(),
            self.credentials.clone(),
            g.name.clone(),
            g.info.fqdn.clone(),
            self.prepared_tx.clone(),
        );
        tokio::spawn(async move {
            let r = general::credentials(&dir, &file, &adapter, &name, &fqdn).await;
            let _ = tx.send((mac, r)).await;
        });
    }

    fn on_prepared(&mut self, (mac, result): Prepared) {
        let Some(g) = self.general.get(&mac) else {
            return;
        };
        let (id, fqdn) = (g.id, g.info.fqdn.clone());
        let credentials = match result {
            Ok(c) => Arc::new(c),
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(%fqdn, error = %why, "no credentials for the general node");
                if let Some(g) = self.general.get_mut(&mac) {
                    g.phase = Phase::Failed(why);
                }
                return;
            }
        };
        let schedule = credentials
            .certificate()
            .map(|c| Renewal::new(c.not_before, c.not_after));
        let node = match schedule.and_then(|schedule| {
            let identity = credentials.tunnel_identity()?;
            let static_keys = identity.static_keys.clone();
            let node = self.new_core(id, &credentials, identity, false)?;
            Ok((node, static_keys, schedule))
        }) {
            Ok(n) => n,
            Err(e) => {
                if let Some(g) = self.general.get_mut(&mac) {
                    g.phase = Phase::Failed(format!("{e:#}"));
                }
                return;
            }
        };
        let (node, static_keys, schedule) = node;
        self.host.remove(id);
        if let Err(e) = self.host.add(node) {
            tracing::warn!(%fqdn, error = %e, "cannot add the general node");
            return;
        }
        let addrs = addrs_of(g);
        if let Some(g) = self.general.get_mut(&mac) {
            g.phase = Phase::Running(credentials);
            g.static_keys = Some(static_keys);
            g.renewal = Some(schedule);
            g.renewing = false;
            g.renewed = None;
            g.generation += 1;
        }
        if let Some(lan) = &self.lan {
            lan.device.join(id, addrs);
        }
    }

    /// Starts the renewal of every running general node's certificate
    /// that is due (a task each).
    fn renew_general(&mut self) {
        let now = SystemTime::now();
        for (mac, g) in &mut self.general {
            let due = g.renewal.as_ref().is_some_and(|r| r.is_due(now));
            let Phase::Running(_) = &g.phase else {
                continue;
            };
            if !due || g.renewing {
                continue;
            }
            g.renewing = true;
            tracing::info!(fqdn = %g.info.fqdn, "renewing the general node's certificate");
            let dir = self.opts.state_dir.join("general").join(&g.name);
            let (file, adapter, name, fqdn, tx, mac) = (
                self.file.clone(),
                self.credentials.clone(),
                g.name.clone(),
                g.info.fqdn.clone(),
                self.reissued_tx.clone(),
                *mac,
            );
            tokio::spawn(async move {
                let r = general::reissue(&dir, &file, &adapter, &name, &fqdn).await;
                let _ = tx.send((mac, r)).await;
            });
        }
    }

    /// A general node's renewal: the new certificate logs in at once and
    /// its core presents it from that session on; a failure is tried again
    /// on the renewal schedule.
    fn on_reissued(&mut self, (mac, result): Reissued) {
        let Some(g) = self.general.get_mut(&mac) else {
            return;
        };
        g.renewing = false;
        let (Phase::Running(_), Some(static_keys), Some(schedule)) =
            (&g.phase, g.static_keys.clone(), g.renewal.as_mut())
        else {
            return;
        };
        let renewed = result.and_then(|c| {
            let info = c.certificate()?;
            let identity = c.identity_with(static_keys)?;
            Ok((c, info, identity))
        });
        match renewed {
            Ok((credentials, info, identity)) => {
                schedule.handle_renewed(info.not_before, info.not_after);
                tracing::info!(fqdn = %g.info.fqdn, serial = format_args!("{:#x}", info.serial), "general node's certificate renewed");
                g.phase = Phase::Running(Arc::new(credentials));
                g.renewed = Some(identity);
                g.generation += 1;
                g.backoff = FIRST_LOGIN_BACKOFF;
                let id = g.id;
                self.login_later(id, true);
            }
            Err(e) => {
                let why = format!("{e:#}");
                let wait =
                    schedule.handle_failure(SystemTime::now(), Failure::Unreachable, why.clone());
                tracing::warn!(fqdn = %g.info.fqdn, error = %why, retry_in = ?wait, "general node's certificate not renewed");
            }
        }
    }

    /// A query from a general node to the gateway: overlay names through
    /// its own core (route selection on its behalf), others forwarded to
    /// the adapter's resolvers.
    fn on_dns_query(&mut self, q: DnsQuery, query: &[u8]) {
        let id = self.lan.as_ref().and_then(|l| l.device.identity(q.mac));
        match resolver::classify(query, &self.file.domain) {
            Classified::Overlay { query, name, .. } => {
                let Some(node) = id.and_then(|id| self.host.node_mut(id)) else {
                    // Not in the overlay yet: SERVFAIL, so the node retries.
                    self.answer_dns(q, &resolver::servfail(&query));
                    return;
                };
                let client = self.next_client;
                self.next_client += 1;
                if self.dns_clients.len() < MAX_DNS_CLIENTS {
                    self.dns_clients.insert(client, q);
                    node.handle_dns_query(Instant::now(), client, query, name);
                }
            }
            Classified::Forward => {
                let (query, upstreams, answers) = (
                    query.to_vec(),
                    self.upstreams.clone(),
                    self.dns_answers_tx.clone(),
                );
                tokio::spawn(async move {
                    if let Some(answer) = forward_dns(&query, &upstreams).await {
                        let _ = answers.send((q, answer)).await;
                    }
                });
            }
            Classified::Invalid(Some(answer)) => self.answer_dns(q, &answer),
            Classified::Invalid(None) => {}
        }
    }

    /// Sends a DNS answer from the gateway to the general node that asked.
    fn answer_dns(&self, q: DnsQuery, answer: &[u8]) {
        let Some(lan) = &self.lan else {
            return;
        };
        let Some(gateway_mac) = self.lan_mac() else {
            return;
        };
        let out = match (q.dst, q.src) {
            (SocketAddr::V4(d), SocketAddr::V4(s)) => frame::ipv4_udp(
                gateway_mac,
                q.mac,
                *d.ip(),
                *s.ip(),
                d.port(),
                s.port(),
                answer,
            ),
            (SocketAddr::V6(d), SocketAddr::V6(s)) => frame::ipv6_udp(
                gateway_mac,
                q.mac,
                *d.ip(),
                *s.ip(),
                d.port(),
                s.port(),
                answer,
            ),
            _ => return,
        };
        if let Err(e) = lan.device.send_frame(&out) {
            tracing::debug!(error = %e, "DNS answer not sent");
        }
    }

    fn lan_mac(&self) -> Option<MacAddr> {
        self.lan.as_ref().map(|l| l.device.mac())
    }

    fn on_control_connection(&mut self, stream: ControlStream) {
        tokio::spawn(read_control(stream, self.requests_tx.clone()));
    }

    fn on_control_request(&mut self, request: ControlRequest, reply: oneshot::Sender<String>) {
        match request {
            ControlRequest::Status => {
                let report = StatusWithCertificate {
                    adapter: self.status(Instant::now()),
                    certificate: self.certificate.status(),
                };
                let _ = reply.send(serde_json::to_string(&report).unwrap_or_default());
            }
            ControlRequest::Ping(fqdn) => {
                let id = self.next_client;
                self.next_client += 1;
                self.ping_waiters.retain(|_, w| !w.is_closed());
                self.ping_waiters.insert(id, reply);
                if let Some(n) = self.host.node_mut(ADAPTER) {
                    n.handle_ping(Instant::now(), id, &fqdn);
                }
            }
        }
    }

    /// Netlink said something changed (`moved`), or the periodic check:
    /// every core learns the host's addresses; the QUIC legs move.
    fn on_addrs(&mut self, moved: bool) {
        let addrs = cyphonic_node::addrs::local_endpoints(self.opts.tunnel_port);
        let same = self
            .host
            .node(ADAPTER)
            .is_some_and(|n| n.local_addrs() == addrs.as_slice());
        if moved && !same {
            if let Err(e) = self.hub.rebind() {
                tracing::warn!(error = %format!("{e:#}"), "cannot move the QUIC legs");
            }
        }
        let ids: Vec<IdentityId> = self.host.identities().collect();
        for id in ids {
            if let Some(n) = self.host.node_mut(id) {
                n.handle_local_addrs(Instant::now(), addrs.clone());
            }
        }
    }
}

/// `cyphonic status --json` on an adapter: its status and its own
/// certificate's, as the node daemon shows them.
#[derive(serde::Serialize)]
struct StatusWithCertificate {
    #[serde(flatten)]
    adapter: status::AdapterStatus,
    #[serde(flatten)]
    certificate: CertificateStatus,
}

fn addrs_of(g: &GeneralNode) -> GeneralNodeAddrs {
    GeneralNodeAddrs {
        mac: MacAddr(g.info.mac),
        vip4: g.info.vip4,
        vip6: g.info.vip6,
        name: g.name.clone(),
    }
}
