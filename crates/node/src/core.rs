//! The node daemon's protocol logic as a pure state machine: signaling with
//! the NMS (Registration, KeepAlive, route selection), the resolver's
//! overlay answers, and tunnel establishment with peers. Data packets of an
//! established tunnel bypass it: the data plane holds the tunnel's keys
//! ([`NodeEvent::TunnelUp`]) and only hands over what it cannot route.
//!
//! # Use
//!
//! Inputs (each takes `now`): [`Node::handle_login`] after the shell logged
//! in to the AS (TLS is the shell's job), [`Node::handle_datagram`] for every
//! non-data packet on the node's UDP port, [`Node::handle_dns_query`] for an
//! overlay-domain query, [`Node::handle_outbound`] for an application packet
//! the data plane had no tunnel for, [`Node::handle_local_addrs`] when the
//! host's addresses change, and [`Node::handle_timeout`]. After each input,
//! drain [`Node::poll_transmit`] and [`Node::poll_event`], then sleep until
//! [`Node::poll_timeout`]. The node never reads a clock, a socket or the
//! OS's randomness.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cyphonic_pki::Verifier;
use cyphonic_proto::data::{RecvKey, SendKey, DATA_HEADER_LEN, TAG_LEN};
use cyphonic_proto::handshake::{self, Initiator, LocalIdentity, PeerVerifier};
use cyphonic_proto::relay::{self, Bind};
use cyphonic_proto::signal::{
    CertStatus, DirectionErrorCode, Envelope, Message, RegistrationRequest, RelayOffer, Role,
    RouteDirection, RoutePattern, SignalCipher, TYPE_SIGNALING,
};
use hickory_proto::op::{Message as DnsMessage, ResponseCode};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use crate::resolver;
use cyphonic_proto::nat::{NatKind, NetInfo};

/// What Login (at the AS) gave the node.
#[derive(Clone)]
pub struct Login {
    pub session_id: u64,
    pub common_key: [u8; 32],
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub nms: SocketAddr,
    /// The NMS at every address the cloud has, so a move into a network of
    /// the other IP version keeps signaling going.
    pub nms_alternatives: Vec<SocketAddr>,
    pub keepalive: Duration,
    /// The cloud's QUIC (UDP) and TLS-over-TCP ports at the NMS's
    /// addresses; 0: not offered.
    pub quic_port: u16,
    pub tcp_port: u16,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub domain: String,
    pub tunnel_port: u16,
    /// First retransmission of a signaling request; doubles up to 2 s.
    pub retransmit: Duration,
    /// How long a Direction Request may take before the DNS query fails.
    pub direction_timeout: Duration,
    pub registration_timeout: Duration,
    /// Tunnel Request retransmission interval and overall limit.
    pub handshake_retransmit: Duration,
    pub handshake_timeout: Duration,
    /// Tunnel keepalive: holds NAT bindings, refreshes relay binds, probes
    /// for a direct path while relayed, and paces the liveness check.
    pub keepalive: Duration,
    /// Keepalive intervals without a packet from the peer before its path
    /// counts as dead.
    pub dead_after: u32,
    pub punch_interval: Duration,
    /// Packets held per peer while its tunnel is being established.
    pub max_queued: usize,
    /// Keepalives to the NMS that may go unanswered before logging in again.
    pub max_missed_keepalives: u32,
    /// `Some`: every leg uses this transport. `None`: native UDP first;
    /// QUIC and TCP 443 when the NMS does not answer it.
    pub transport: Option<Transport>,
    /// How long a Registration waits for an answer on one transport before
    /// the others are raced.
    pub transport_fallback: Duration,
    /// While signaling travels over QUIC or TCP, how often the cheaper
    /// transports are tried again.
    pub transport_reprobe: Duration,
    /// Our QUIC listener's port, told to the NMS (0: none).
    pub quic_port: u16,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            domain: "cyphonic.internal".into(),
            tunnel_port: 4501,
            retransmit: Duration::from_millis(250),
            direction_timeout: Duration::from_secs(5),
            registration_timeout: Duration::from_secs(5),
            handshake_retransmit: Duration::from_millis(300),
            handshake_timeout: Duration::from_secs(6),
            keepalive: Duration::from_secs(5),
            dead_after: 3,
            punch_interval: Duration::from_millis(200),
            max_queued: 256,
            max_missed_keepalives: 3,
            transport: None,
            transport_fallback: Duration::from_secs(1),
            transport_reprobe: Duration::from_secs(30),
            quic_port: 0,
        }
    }
}

/// An opaque handle the shell uses to route a DNS answer to its client.
pub type DnsClient = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    /// Native UDP from the tunnel port, or the QUIC / TCP leg to
    /// `destination`.
    pub transport: Transport,
    pub payload: Vec<u8>,
}

pub use cyphonic_proto::Transport;

/// One way to reach a party: a transport and the remote address on it. On
/// native UDP the address is the party's socket; on QUIC and TCP it names
/// the leg (the listener dialed, or the address an accepted leg comes
/// from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Leg {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Leg {
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Leg { transport, addr }
    }

    pub fn udp(addr: SocketAddr) -> Self {
        Leg::new(Transport::Udp, addr)
    }

    fn transmit(self, payload: Vec<u8>) -> Transmit {
        Transmit {
            destination: self.addr,
            transport: self.transport,
            payload,
        }
    }
}

impl From<SocketAddr> for Leg {
    fn from(addr: SocketAddr) -> Self {
        Leg::udp(addr)
    }
}

impl std::fmt::Display for Leg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.transport {
            Transport::Udp => write!(f, "{}", self.addr),
            t => write!(f, "{t}:{}", self.addr),
        }
    }
}

/// Byte and packet counters of one tunnel, shared with the data plane.
#[derive(Debug, Default)]
pub struct TunnelStats {
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
}

/// Where a tunnel's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Straight to the peer (or its NAT's mapping), over native UDP or a
    /// QUIC leg to its listener.
    Direct(Leg),
    /// Through a TRS, framed with the relay session's header, over the
    /// leg to the TRS.
    Relay { server: Leg, relay_id: u64 },
}

impl Path {
    /// A direct path over native UDP.
    pub fn udp(addr: SocketAddr) -> Self {
        Path::Direct(Leg::udp(addr))
    }

    /// The leg datagrams on this path go out on.
    pub fn leg(&self) -> Leg {
        match self {
            Path::Direct(l) => *l,
            Path::Relay { server, .. } => *server,
        }
    }

    /// The address datagrams on this path are sent to.
    pub fn address(&self) -> SocketAddr {
        self.leg().addr
    }

    pub fn transport(&self) -> Transport {
        self.leg().transport
    }

    /// `packet`, framed for this path, as a transmit.
    pub fn transmit(&self, packet: &[u8]) -> Transmit {
        self.leg().transmit(self.frame(packet))
    }

    pub fn is_relay(&self) -> bool {
        matches!(self, Path::Relay { .. })
    }

    /// Frames `packet` for this path.
    pub fn frame(&self, packet: &[u8]) -> Vec<u8> {
        match self {
            Path::Direct(_) => packet.to_vec(),
            Path::Relay { relay_id, .. } => {
                let mut out = vec![0u8; relay::RELAY_HEADER_LEN + packet.len()];
                relay::write_data_header(&mut out, *relay_id);
                out[relay::RELAY_HEADER_LEN..].copy_from_slice(packet);
                out
            }
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Direct(l) => write!(f, "{l}"),
            Path::Relay { server, relay_id } => write!(f, "relay {server} #{relay_id:x}"),
        }
    }
}

/// A tunnel's data-plane state: everything the fast path needs.
#[derive(Clone)]
pub struct TunnelHandle {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub path: Path,
    pub send: Arc<SendKey>,
    pub recv: Arc<RecvKey>,
    pub stats: Arc<TunnelStats>,
}

pub enum NodeEvent {
    /// Log in to the AS (again) and call `handle_login`.
    NeedLogin { reason: String },
    Registered {
        fqdn: String,
        vip4: Ipv4Addr,
        vip6: Ipv6Addr,
        observed: SocketAddr,
    },
    DnsResponse {
        client: DnsClient,
        response: Vec<u8>,
    },
    /// Install (or replace) the tunnel to a peer in the data plane.
    TunnelUp(TunnelHandle),
    /// Remove a peer's tunnel from the data plane.
    TunnelDown { fqdn: String, local_index: u32 },
    /// The answer to `handle_ping`.
    PingResult {
        client: u64,
        result: Result<Pong, String>,
    },
    /// Stop sending on a peer's tunnel (its path went with a move) and hand
    /// its packets to `handle_outbound`, which holds them until the tunnel
    /// is back (a `TunnelUp`). Receiving goes on.
    TunnelHold { fqdn: String },
    /// A QUIC leg to `addr` leads to the peer `fqdn`: its TLS certificate
    /// must name it.
    LegName { addr: SocketAddr, fqdn: String },
}

/// One answered `cyphonic ping`: the path the probe and its ack took.
#[derive(Debug, Clone, Serialize)]
pub struct Pong {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    /// "direct", "punched" or "relayed".
    pub path: String,
    pub endpoint: SocketAddr,
    pub transport: String,
    pub rtt_us: u64,
}

impl std::fmt::Debug for NodeEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeEvent::NeedLogin { reason } => write!(f, "NeedLogin({reason})"),
            NodeEvent::Registered { fqdn, .. } => write!(f, "Registered({fqdn})"),
            NodeEvent::DnsResponse { client, .. } => write!(f, "DnsResponse({client})"),
            NodeEvent::TunnelUp(t) => write!(f, "TunnelUp({} via {})", t.fqdn, t.path),
            NodeEvent::TunnelDown { fqdn, .. } => write!(f, "TunnelDown({fqdn})"),
            NodeEvent::PingResult { client, .. } => write!(f, "PingResult({client})"),
            NodeEvent::TunnelHold { fqdn } => write!(f, "TunnelHold({fqdn})"),
            NodeEvent::LegName { addr, fqdn } => write!(f, "LegName({addr} = {fqdn})"),
        }
    }
}

/// Why the node wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReason {
    SignalRetransmit,
    KeepAlive,
    Handshake,
    /// Punching, relay binds, tunnel keepalives and path checks.
    Path,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct NodeCounters {
    pub signal_rx_bad: u64,
    pub handshake_rx_bad: u64,
    pub handshake_failures: u64,
    pub outbound_no_route: u64,
    pub outbound_queue_full: u64,
    pub dns_overlay_queries: u64,
    pub punches_sent: u64,
    pub punches_received: u64,
    pub path_changes: u64,
    pub relay_failovers: u64,
    pub relay_rx_bad: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    Registration,
    /// A Registration over cheaper transports than the current one: an
    /// answer moves signaling there.
    TransportProbe,
    KeepAlive,
    Direction,
    NatProbe,
}

struct OutRequest {
    kind: RequestKind,
    message: Message,
    target: Option<String>,
    next_retransmit: Instant,
    interval: Duration,
    deadline: Instant,
    /// A Direction Request sent before a move: the NMS chose its route
    /// from our old addresses.
    before_move: bool,
    /// The transports it is sent over (each retransmission goes on all).
    transports: Vec<Transport>,
    /// A Registration: when to race the other transports if unanswered.
    race_at: Option<Instant>,
}

struct Signaling {
    cipher: SignalCipher,
    login: Login,
    registered: bool,
    observed: Option<SocketAddr>,
    /// The NMS's probe address (its address, second port), when it has one.
    probe: Option<SocketAddr>,
    observed_probe: Option<SocketAddr>,
    next_keepalive: Instant,
    missed_keepalives: u32,
    /// When to try cheaper transports again (signaling on QUIC or TCP).
    next_reprobe: Instant,
}

impl Signaling {
    /// The NMS's leg on `transport`: its UDP port, or the cloud's QUIC or
    /// TCP port at the same address.
    fn nms_leg(&self, transport: Transport) -> Option<Leg> {
        let port = match transport {
            Transport::Udp => self.login.nms.port(),
            Transport::Quic => self.login.quic_port,
            Transport::Tcp => self.login.tcp_port,
        };
        (port != 0).then(|| Leg::new(transport, SocketAddr::new(self.login.nms.ip(), port)))
    }

    fn is_nms(&self, from: Leg) -> bool {
        self.nms_leg(from.transport) == Some(from)
            || (from.transport == Transport::Udp && Some(from.addr) == self.probe)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelRole {
    Initiator,
    Responder,
}

enum PeerState {
    /// Waiting for the initiator's Tunnel Request.
    AwaitingRequest {
        deadline: Instant,
    },
    Handshaking {
        initiator: Option<Box<Initiator>>,
        request: Vec<u8>,
        /// Paths to try, in order; each gets `SENDS_PER_ATTEMPT` tries.
        attempts: Vec<Path>,
        attempt: usize,
        sent_on_attempt: u32,
        next_retransmit: Instant,
        deadline: Instant,
    },
    Established,
    Failed {
        reason: String,
    },
}

struct Peer {
    fqdn: String,
    direction: RouteDirection,
    role: TunnelRole,
    local_index: u32,
    state: PeerState,
    tunnel: Option<TunnelHandle>,
    /// The last Tunnel Request we answered and our answer, so a
    /// retransmitted request gets the same answer and the same keys.
    last_request: Option<(Vec<u8>, Vec<u8>)>,
    last_handshake: Option<SystemTime>,
    queue: VecDeque<Vec<u8>>,
    relay: Option<RelayState>,
    /// Punch packets go to the peer's endpoints until then.
    punch_until: Option<Instant>,
    next_punch: Instant,
    /// Keepalives, probes and the liveness check of an established tunnel.
    next_keepalive: Instant,
    rx_seen: u64,
    stale_ticks: u32,
    /// When the tunnel took its current path.
    path_since: Instant,
    /// Why the tunnel takes its current path, for status.
    path_note: String,
    /// Select this peer's route again after the registration that follows
    /// a move.
    reroute: bool,
    /// Path probes in flight: (nonce, path, sent at).
    probes: VecDeque<(u64, Path, Instant)>,
    /// The tunnel's path went with a move: application packets wait in
    /// `queue` until it is back.
    held: bool,
}

/// Tunnel messages: plaintexts of data packets whose first byte is not an
/// IP version nibble (4 or 6). A path probe asks the peer to answer on the
/// path it came by; its ack proves the path works both ways.
pub const MSG_PATH_PROBE: u8 = 0x01;
pub const MSG_PATH_PROBE_ACK: u8 = 0x02;
/// How long a probe waits for its ack.
const PROBE_LIFETIME: Duration = Duration::from_secs(5);
const MAX_PROBES: usize = 16;

/// A relay session's state at one end.
struct RelayState {
    offer: RelayOffer,
    /// The offer's servers this node can reach (its address families).
    servers: Vec<SocketAddr>,
    /// How this side reaches the TRS: the transport signaling found.
    transport: Transport,
    index: usize,
    counter: u64,
    bound: bool,
    unacked: u32,
    next_bind: Instant,
}

impl RelayState {
    fn server(&self) -> Option<Leg> {
        let addr = self.servers.get(self.index).copied()?;
        let port = match self.transport {
            Transport::Udp => addr.port(),
            Transport::Quic => self.offer.quic_port,
            Transport::Tcp => self.offer.tcp_port,
        };
        (port != 0).then(|| Leg::new(self.transport, SocketAddr::new(addr.ip(), port)))
    }

    fn path(&self) -> Option<Path> {
        Some(Path::Relay {
            server: self.server()?,
            relay_id: self.offer.relay_id,
        })
    }
}

/// Between adding one transport to a Registration race and the next.
pub const RACE_STAGGER: Duration = Duration::from_millis(300);

/// Tries of a handshake on one path before the next.
const SENDS_PER_ATTEMPT: u32 = 2;
/// Relay Binds unanswered before moving to the next TRS.
const MAX_UNACKED_BINDS: u32 = 3;

/// The node's protocol state machine.
pub struct Node {
    config: NodeConfig,
    rng: StdRng,
    counter_base: u64,
    clock_origin: (Instant, SystemTime),
    identity: LocalIdentity,
    verifier: Verifier,
    local_addrs: Vec<SocketAddr>,
    signaling: Option<Signaling>,
    login_requested: bool,
    requests: BTreeMap<u64, OutRequest>,
    peers: BTreeMap<String, Peer>,
    by_vip: HashMap<IpAddr, String>,
    by_index: HashMap<u32, String>,
    by_route: HashMap<u64, String>,
    dns_waiting: BTreeMap<String, Vec<(DnsClient, DnsMessage)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
    counters: NodeCounters,
    mobility: Mobility,
    /// Set by a move: select every peer's route again once registered.
    reroute_when_registered: bool,
    /// Tunnel Requests for routes not directed yet: (received, path, packet).
    early_requests: VecDeque<(Instant, Path, Vec<u8>)>,
    /// `cyphonic ping` probes in flight: nonce -> (client, peer, sent at).
    pings: HashMap<u64, (u64, String, Instant)>,
    /// The transport signaling uses (or tries first), kept across logins.
    transport: Transport,
    /// The transport of the last registration the NMS answered, kept
    /// across logins.
    last_registered_over: Option<Transport>,
}

const MAX_EARLY_REQUESTS: usize = 8;
const EARLY_REQUEST_LIFETIME: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Mobility {
    moves: u64,
    last: Option<Move>,
}

struct Move {
    at: Instant,
    wall: SystemTime,
    change: String,
    /// Peer -> time from the move until its tunnel carried traffic again.
    back: BTreeMap<String, Duration>,
}

/// "lost 192.0.2.11:4501; gained [2001:db8::11]:4501" and the like.
fn describe_change(before: &[SocketAddr], after: &[SocketAddr]) -> String {
    let lost: Vec<String> = before
        .iter()
        .filter(|a| !after.contains(a))
        .map(|a| a.to_string())
        .collect();
    let gained: Vec<String> = after
        .iter()
        .filter(|a| !before.contains(a))
        .map(|a| a.to_string())
        .collect();
    match (lost.is_empty(), gained.is_empty()) {
        (false, false) => format!("lost {}; gained {}", lost.join(", "), gained.join(", ")),
        (false, true) => format!("lost {}", lost.join(", ")),
        (true, false) => format!("gained {}", gained.join(", ")),
        (true, true) => "addresses reordered".into(),
    }
}

/// Bounds on what the network can make us hold.
const MAX_DNS_WAITERS: usize = 256;
const MAX_PEERS: usize = 4096;

impl Node {
    /// `seed` makes the node's choices (transaction IDs, indexes, handshake
    /// ephemeral keys) repeatable in tests; `counter_base` is the wall clock
    /// in microseconds; `now` and `wall` are the same moment on the two
    /// clocks, so certificate validity can be checked without reading the
    /// clock.
    pub fn new(
        config: NodeConfig,
        identity: LocalIdentity,
        verifier: Verifier,
        seed: [u8; 32],
        counter_base: u64,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let transport = config.transport.unwrap_or(Transport::Udp);
        Self {
            config,
            rng: StdRng::from_seed(seed),
            counter_base,
            clock_origin: (now, wall),
            identity,
            verifier,
            local_addrs: Vec::new(),
            signaling: None,
            login_requested: false,
            requests: BTreeMap::new(),
            peers: BTreeMap::new(),
            by_vip: HashMap::new(),
            by_index: HashMap::new(),
            by_route: HashMap::new(),
            dns_waiting: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: NodeCounters::default(),
            mobility: Mobility::default(),
            reroute_when_registered: false,
            early_requests: VecDeque::new(),
            pings: HashMap::new(),
            transport,
            last_registered_over: None,
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The host's addresses as last reported by `handle_local_addrs`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    /// The first input: asks the shell to log in.
    pub fn start(&mut self) {
        self.request_login("starting");
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let requests = self.requests.values().map(|r| {
            (
                r.next_retransmit.min(r.deadline),
                TimerReason::SignalRetransmit,
            )
        });
        let keepalive = self
            .signaling
            .as_ref()
            .filter(|s| s.registered)
            .map(|s| (s.next_keepalive, TimerReason::KeepAlive));
        let reprobe = self
            .signaling
            .as_ref()
            .filter(|s| s.registered && self.reprobes())
            .map(|s| (s.next_reprobe, TimerReason::KeepAlive));
        let races = self
            .requests
            .values()
            .filter_map(|r| r.race_at)
            .map(|t| (t, TimerReason::SignalRetransmit));
        let handshakes = self.peers.values().filter_map(|p| match &p.state {
            PeerState::Handshaking {
                next_retransmit,
                deadline,
                ..
            } => Some(((*next_retransmit).min(*deadline), TimerReason::Handshake)),
            PeerState::AwaitingRequest { deadline } => Some((*deadline, TimerReason::Handshake)),
            _ => None,
        });
        let paths = self.peers.values().flat_map(|p| {
            let punch = p
                .punch_until
                .filter(|u| p.next_punch < *u)
                .map(|_| p.next_punch);
            let bind = p.relay.as_ref().map(|r| r.next_bind);
            let keepalive = matches!(p.state, PeerState::Established).then_some(p.next_keepalive);
            [punch, bind, keepalive]
                .into_iter()
                .flatten()
                .map(|t| (t, TimerReason::Path))
        });
        requests
            .chain(keepalive)
            .chain(reprobe)
            .chain(races)
            .chain(handshakes)
            .chain(paths)
            .min_by_key(|(t, _)| *t)
    }

    fn wall(&self, now: Instant) -> SystemTime {
        self.clock_origin.1 + now.saturating_duration_since(self.clock_origin.0)
    }

    fn request_login(&mut self, reason: &str) {
        if !self.login_requested {
            self.login_requested = true;
            self.events.push_back(NodeEvent::NeedLogin {
                reason: reason.to_owned(),
            });
        }
    }

    /// The host's usable addresses (with the tunnel port) changed.
    ///
    /// A change after the first report is a move (seed: mobility
    /// management): every tunnel sends a keepalive at once from the new
    /// address (a peer that can still reach us follows it, authenticated),
    /// the node registers again, and once the NMS knows the new network
    /// every peer's route is selected anew, possibly with another pattern.
    /// The VIPs stay, so connections inside the overlay do not notice.
    pub fn handle_local_addrs(&mut self, now: Instant, addrs: Vec<SocketAddr>) {
        if addrs == self.local_addrs {
            return;
        }
        let before = std::mem::replace(&mut self.local_addrs, addrs);
        if self.signaling.is_none() || before.is_empty() {
            return;
        }
        let change = describe_change(&before, &self.local_addrs);
        self.on_move(now, change);
    }

    /// The default route changed while the addresses stayed (another
    /// gateway, another uplink with the same address): the path to every
    /// peer may have changed, so it counts as a move.
    pub fn handle_route_change(&mut self, now: Instant, description: String) {
        if self.signaling.is_none() || self.local_addrs.is_empty() {
            return;
        }
        self.on_move(now, description);
    }

    fn on_move(&mut self, now: Instant, change: String) {
        tracing::info!(%change, "network move");
        self.pick_nms_family();
        self.mobility.moves += 1;
        self.mobility.last = Some(Move {
            at: now,
            wall: self.wall(now),
            change,
            back: BTreeMap::new(),
        });
        let names: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| !matches!(p.state, PeerState::Failed { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        // Relay binds go out at once from the new address, so a relayed
        // tunnel does not wait for the next scheduled bind.
        for peer in self.peers.values_mut() {
            if let Some(r) = peer.relay.as_mut() {
                r.next_bind = now;
            }
        }
        let has_family =
            |a: SocketAddr, local: &[SocketAddr]| local.iter().any(|l| l.is_ipv6() == a.is_ipv6());
        for fqdn in &names {
            let tunnel = self.peers.get(fqdn).and_then(|p| p.tunnel.clone());
            let lost_path = tunnel
                .as_ref()
                .is_some_and(|t| !has_family(t.path.address(), &self.local_addrs));
            if let Some(peer) = self.peers.get_mut(fqdn) {
                peer.reroute = true;
                if lost_path && !peer.held {
                    // Nothing can leave on this path now: hold the
                    // application's packets (bounded) rather than drop them.
                    peer.held = true;
                    self.events
                        .push_back(NodeEvent::TunnelHold { fqdn: fqdn.clone() });
                }
            }
            if let (Some(t), false) = (tunnel, lost_path) {
                self.seal_to(&t, t.path, &[]);
            }
        }
        // A route being selected now is chosen from our old addresses:
        // select it again once the NMS has the new ones.
        for r in self.requests.values_mut() {
            r.before_move |= r.kind == RequestKind::Direction;
        }
        self.reroute_when_registered = true;
        // The new network may let native UDP out again (or block it).
        let fallback = self.config.transport_fallback;
        if let Some(sig) = self.signaling.as_mut() {
            sig.next_reprobe = now + fallback;
        }
        self.send_registration(now);
    }

    /// Talks to the NMS over an IP version the host still has.
    fn pick_nms_family(&mut self) {
        let has = |v6: bool| self.local_addrs.iter().any(|a| a.is_ipv6() == v6);
        let Some(sig) = self.signaling.as_mut() else {
            return;
        };
        if has(sig.login.nms.is_ipv6()) {
            return;
        }
        if let Some(alt) = sig
            .login
            .nms_alternatives
            .iter()
            .find(|a| has(a.is_ipv6()))
            .copied()
        {
            tracing::info!(from = %sig.login.nms, to = %alt, "NMS reached over the other IP version");
            sig.login.nms = alt;
            sig.probe = None;
        }
    }

    /// After a move, once the NMS has our new registration (and NAT
    /// probe), asks for every peer's route again.
    fn reroute_peers(&mut self, now: Instant) {
        if !std::mem::take(&mut self.reroute_when_registered) {
            return;
        }
        let names: Vec<String> = self
            .peers
            .iter_mut()
            .filter_map(|(n, p)| std::mem::take(&mut p.reroute).then(|| n.clone()))
            .collect();
        let timeout = self.config.direction_timeout;
        for fqdn in names {
            tracing::info!(peer = %fqdn, "Direction Request after the move");
            self.send_request(
                now,
                RequestKind::Direction,
                Message::DirectionRequest {
                    target: fqdn.clone(),
                },
                Some(fqdn),
                timeout,
            );
        }
    }

    /// Login succeeded: start (or restart) signaling with the NMS.
    pub fn handle_login(&mut self, now: Instant, login: Login) {
        self.login_requested = false;
        let cipher = SignalCipher::new(
            login.session_id,
            &login.common_key,
            Role::Node,
            self.counter_base_now(now),
        );
        self.requests.clear();
        self.signaling = Some(Signaling {
            cipher,
            next_keepalive: now + login.keepalive,
            login,
            registered: false,
            observed: None,
            probe: None,
            observed_probe: None,
            missed_keepalives: 0,
            next_reprobe: now,
        });
        self.send_registration(now);
    }

    /// A later session reuses no nonce of an earlier one even if the AS
    /// handed out the same key: the counter base moves with the clock.
    fn counter_base_now(&self, now: Instant) -> u64 {
        self.counter_base
            + now
                .saturating_duration_since(self.clock_origin.0)
                .as_micros() as u64
    }

    /// The login failed; the shell retries later by itself.
    pub fn handle_login_failed(&mut self) {
        self.login_requested = false;
    }

    fn registration(&self, transport: Transport) -> Message {
        Message::RegistrationRequest(RegistrationRequest {
            static_public: self.identity.static_keys.public,
            tunnel_port: self.config.tunnel_port,
            local_addrs: self.local_addrs.clone(),
            transport,
            quic_port: self.config.quic_port,
        })
    }

    /// Whether the transport is ours to choose (not forced) and a cheaper
    /// one than the current may work.
    fn reprobes(&self) -> bool {
        self.config.transport.is_none() && self.transport != Transport::Udp
    }

    /// Registers over the current transport; unanswered after
    /// `transport_fallback`, the same Registration is raced over every
    /// other transport the cloud offers (unless one is forced).
    fn send_registration(&mut self, now: Instant) {
        self.requests.retain(|_, r| {
            !matches!(
                r.kind,
                RequestKind::Registration | RequestKind::TransportProbe
            )
        });
        let message = self.registration(self.transport);
        let timeout = self.config.registration_timeout;
        let txid = self.send_request(now, RequestKind::Registration, message, None, timeout);
        if self.config.transport.is_none() {
            if let Some(r) = self.requests.get_mut(&txid) {
                r.race_at = Some(now + self.config.transport_fallback);
            }
        }
    }

    /// Unanswered Registration: send it over the next transport too,
    /// cheapest first, each `RACE_STAGGER` after the previous (as Happy
    /// Eyeballs staggers address families): QUIC gets a head start on TLS
    /// over TCP, whose handshake takes a round trip more, so it wins
    /// wherever both get out.
    fn race_transports(&mut self, now: Instant, txid: u64) {
        let others: Vec<Transport> = Transport::ALL
            .into_iter()
            .filter(|t| {
                self.signaling
                    .as_ref()
                    .is_some_and(|s| s.nms_leg(*t).is_some())
            })
            .collect();
        let Some(r) = self.requests.get_mut(&txid) else {
            return;
        };
        let untried: Vec<Transport> = others
            .into_iter()
            .filter(|t| !r.transports.contains(t))
            .collect();
        let Some(&next) = untried.first() else {
            r.race_at = None;
            return;
        };
        tracing::info!(tried = ?r.transports, adding = %next, "NMS silent; racing another transport");
        r.transports.push(next);
        r.race_at = (untried.len() > 1).then_some(now + RACE_STAGGER);
        self.seal_to_nms_over(txid, self.registration(next), next);
    }

    /// While signaling is on QUIC or TCP: a Registration over each cheaper
    /// transport; the first answer moves signaling there.
    fn reprobe_transports(&mut self, now: Instant) {
        let current = self.transport;
        let Some(sig) = self.signaling.as_mut() else {
            return;
        };
        sig.next_reprobe = now + self.config.transport_reprobe;
        let cheaper: Vec<Transport> = Transport::ALL
            .into_iter()
            .filter(|t| *t < current && sig.nms_leg(*t).is_some())
            .collect();
        if cheaper.is_empty()
            || self
                .requests
                .values()
                .any(|r| r.kind == RequestKind::TransportProbe)
        {
            return;
        }
        tracing::debug!(?cheaper, "trying cheaper transports again");
        let txid: u64 = self.rng.gen();
        let interval = self.config.retransmit;
        self.requests.insert(
            txid,
            OutRequest {
                kind: RequestKind::TransportProbe,
                message: self.registration(cheaper[0]),
                target: None,
                next_retransmit: now + interval,
                interval,
                deadline: now + self.config.transport_fallback * 2,
                before_move: false,
                transports: cheaper.clone(),
                race_at: None,
            },
        );
        for t in cheaper {
            self.seal_to_nms_over(txid, self.registration(t), t);
        }
    }

    fn send_request(
        &mut self,
        now: Instant,
        kind: RequestKind,
        message: Message,
        target: Option<String>,
        timeout: Duration,
    ) -> u64 {
        let txid: u64 = self.rng.gen();
        let interval = self.config.retransmit;
        let transport = self.transport;
        self.requests.insert(
            txid,
            OutRequest {
                kind,
                message: message.clone(),
                target,
                next_retransmit: now + interval,
                interval,
                deadline: now + timeout,
                before_move: false,
                transports: vec![transport],
                race_at: None,
            },
        );
        self.seal_to_nms_over(txid, message, transport);
        txid
    }

    /// Signaling over the current transport.
    fn seal_to_nms(&mut self, txid: u64, message: Message) {
        self.seal_to_nms_over(txid, message, self.transport);
    }

    fn seal_to_nms_over(&mut self, txid: u64, message: Message, transport: Transport) {
        let Some(sig) = self.signaling.as_mut() else {
            return;
        };
        // A NAT Probe goes to the NMS's second port; all else to the first.
        let leg = match (&message, sig.probe) {
            (Message::NatProbe, Some(probe)) => Some(Leg::udp(probe)),
            _ => sig.nms_leg(transport),
        };
        let Some(leg) = leg else {
            return;
        };
        let payload = sig.cipher.seal(&Envelope { txid, message });
        self.transmits.push_back(leg.transmit(payload));
    }

    /// A datagram that is not a data packet arrived on the tunnel port.
    /// Relay Data wraps a packet from the peer; the TRS's address and the
    /// relay session are its path.
    pub fn handle_datagram(&mut self, now: Instant, from: impl Into<Leg>, packet: &[u8]) {
        let from: Leg = from.into();
        let (path, inner) = match packet.first() {
            Some(&relay::TYPE_RELAY_DATA) => match relay::parse_data(packet) {
                Ok(relay_id) => (
                    Path::Relay {
                        server: from,
                        relay_id,
                    },
                    &packet[relay::RELAY_HEADER_LEN..],
                ),
                Err(_) => {
                    self.counters.relay_rx_bad += 1;
                    return;
                }
            },
            _ => (Path::Direct(from), packet),
        };
        match (inner.first(), path) {
            (Some(&TYPE_SIGNALING), Path::Direct(_)) => self.on_signaling(now, from, packet),
            (Some(&handshake::TYPE_TUNNEL_REQUEST), _) => self.on_tunnel_request(now, path, inner),
            (Some(&handshake::TYPE_TUNNEL_RESPONSE), _) => {
                self.on_tunnel_response(now, path, inner)
            }
            (Some(&relay::TYPE_RELAY_BIND_ACK), Path::Direct(_)) => {
                self.on_relay_bind_ack(from, packet)
            }
            (Some(&cyphonic_proto::TYPE_PUNCH), _) => self.counters.punches_received += 1,
            _ => self.counters.handshake_rx_bad += 1,
        }
    }

    fn on_signaling(&mut self, now: Instant, from: Leg, packet: &[u8]) {
        let Some(sig) = self.signaling.as_mut() else {
            self.counters.signal_rx_bad += 1;
            return;
        };
        if !sig.is_nms(from) {
            self.counters.signal_rx_bad += 1;
            return;
        }
        let env = match sig.cipher.open(packet) {
            Ok(env) => env,
            Err(e) => {
                self.counters.signal_rx_bad += 1;
                tracing::debug!(%from, error = %e, "dropping signaling packet");
                return;
            }
        };
        tracing::trace!(msg = env.message.name(), txid = env.txid, "signaling in");
        match env.message {
            Message::RegistrationResponse(resp) => {
                let probe = self.take_request(env.txid, RequestKind::TransportProbe);
                let request = match probe {
                    Some(r) => Some(r),
                    None => self.take_request(env.txid, RequestKind::Registration),
                };
                let Some(request) = request else {
                    // A raced copy that reached the NMS late (its leg came
                    // up after the winner's): the NMS now has us on that
                    // leg. Register again over the transport we use.
                    if self.signaling.as_ref().is_some_and(|s| s.registered)
                        && from.transport != self.transport
                    {
                        tracing::info!(late = %from.transport, using = %self.transport, "late raced registration; registering again");
                        self.send_registration(now);
                    }
                    return;
                };
                if request.transports.len() > 1 || request.kind == RequestKind::TransportProbe {
                    // A race: the first transport to answer wins. The NMS
                    // may have taken another copy last, so register once
                    // more over the winner alone.
                    tracing::info!(transport = %from.transport, "NMS answered; signaling over it");
                    self.transport = from.transport;
                    self.send_registration(now);
                    if let Some(r) = self
                        .requests
                        .values_mut()
                        .find(|r| r.kind == RequestKind::Registration)
                    {
                        r.race_at = None;
                    }
                    return;
                }
                let keepalive = Duration::from_secs(resp.keepalive_secs.max(1) as u64);
                let Some(sig) = self.signaling.as_mut() else {
                    return;
                };
                let first = !std::mem::replace(&mut sig.registered, true);
                sig.observed = Some(resp.observed);
                sig.observed_probe = None;
                // NAT behaviour is probed on native UDP only: a leg's
                // socket is not the tunnel port.
                sig.probe = (resp.probe_port != 0 && from.transport == Transport::Udp)
                    .then(|| SocketAddr::new(sig.login.nms.ip(), resp.probe_port));
                sig.missed_keepalives = 0;
                sig.login.keepalive = keepalive;
                sig.next_keepalive = now + keepalive;
                if first {
                    sig.next_reprobe = now + self.config.transport_reprobe;
                }
                // Compared with the last registration of any session: a
                // transport that broke leads to a new Login first.
                let before = self.last_registered_over.replace(from.transport);
                if before.is_some_and(|b| b != from.transport) {
                    self.on_transport_change(now, before, from.transport);
                }
                let Some(sig) = self.signaling.as_mut() else {
                    return;
                };
                if sig.probe.is_some() {
                    let timeout = self.config.registration_timeout;
                    self.send_request(now, RequestKind::NatProbe, Message::NatProbe, None, timeout);
                } else {
                    self.reroute_peers(now);
                }
                tracing::info!(fqdn = %resp.fqdn, vip4 = %resp.vip4, vip6 = %resp.vip6, observed = %resp.observed, transport = %from.transport, "Registration done");
                self.events.push_back(NodeEvent::Registered {
                    fqdn: resp.fqdn,
                    vip4: resp.vip4,
                    vip6: resp.vip6,
                    observed: resp.observed,
                });
            }
            Message::KeepAliveAck { observed } => {
                if self
                    .take_request(env.txid, RequestKind::KeepAlive)
                    .is_none()
                {
                    return;
                }
                let moved = self.signaling.as_mut().is_some_and(|sig| {
                    sig.missed_keepalives = 0;
                    sig.observed.is_some_and(|o| o != observed)
                });
                if moved {
                    // Our NAT mapped us anew: register again, so the NMS
                    // learns our network (and probes it) afresh.
                    tracing::info!(%observed, "observed address changed; registering again");
                    self.send_registration(now);
                }
            }
            Message::NatProbeAck { observed } => {
                if self.take_request(env.txid, RequestKind::NatProbe).is_none() {
                    return;
                }
                if let Some(sig) = self.signaling.as_mut() {
                    sig.observed_probe = Some(observed);
                }
                tracing::info!(nat = self.nat().as_str(), "NAT Probe answered");
                self.reroute_peers(now);
            }
            Message::ReRegister => {
                tracing::info!("NMS asked for registration again");
                if let Some(sig) = self.signaling.as_mut() {
                    sig.registered = false;
                }
                self.send_registration(now);
            }
            Message::RouteDirectionToResponder(direction) => {
                self.on_direction_to_responder(now, env.txid, direction);
            }
            Message::RouteDirectionToInitiator(direction) => {
                let Some(req) = self.take_request(env.txid, RequestKind::Direction) else {
                    return;
                };
                let target = req.target.unwrap_or_default();
                if resolver::normalize(&direction.peer.fqdn) != target {
                    tracing::warn!(asked = %target, got = %direction.peer.fqdn, "route direction for another name");
                    self.answer_dns_waiters(&target, Err(ResponseCode::ServFail));
                    return;
                }
                self.on_direction_to_initiator(now, direction);
                if req.before_move {
                    // Set up the stale route (it may well work) and select
                    // it anew after the re-registration, or now if that is
                    // done (`reroute_when_registered` was taken).
                    tracing::info!(peer = %target, "route selected before the move; selecting it again");
                    if let Some(peer) = self.peers.get_mut(&target) {
                        peer.reroute = true;
                    }
                    if !std::mem::replace(&mut self.reroute_when_registered, true) {
                        self.reroute_peers(now);
                    }
                }
            }
            Message::DirectionError { code, message } => {
                let Some(req) = self.take_request(env.txid, RequestKind::Direction) else {
                    return;
                };
                let target = req.target.unwrap_or_default();
                tracing::info!(%target, ?code, %message, "route selection failed");
                let rcode = match code {
                    DirectionErrorCode::NotFound => ResponseCode::NXDomain,
                    _ => ResponseCode::ServFail,
                };
                self.answer_dns_waiters(&target, Err(rcode));
            }
            other => {
                self.counters.signal_rx_bad += 1;
                tracing::debug!(msg = other.name(), "unexpected message from the NMS");
            }
        }
    }

    /// Signaling moved to another transport (native UDP got blocked, or
    /// came back): relays follow it, and every peer's route is selected
    /// again, since the NMS chooses routes by how each node reaches it.
    fn on_transport_change(&mut self, now: Instant, before: Option<Transport>, after: Transport) {
        tracing::info!(?before, %after, "signaling transport changed; selecting routes again");
        for peer in self.peers.values_mut() {
            if let Some(r) = peer.relay.as_mut() {
                r.transport = after;
                r.bound = false;
                r.unacked = 0;
                r.next_bind = now;
            }
            if !matches!(peer.state, PeerState::Failed { .. }) {
                peer.reroute = true;
            }
        }
        // The NAT Probe (or its absence) that follows decides when.
        self.reroute_when_registered = true;
    }

    fn take_request(&mut self, txid: u64, kind: RequestKind) -> Option<OutRequest> {
        match self.requests.get(&txid) {
            Some(r) if r.kind == kind => self.requests.remove(&txid),
            _ => None,
        }
    }

    /// Route Direction to the responder (this node is the CN): remember the
    /// route, confirm it, and set up our side of it: send the Tunnel Request
    /// if the NMS says we initiate (we are behind the NAT), punch, bind the
    /// relay.
    fn on_direction_to_responder(&mut self, now: Instant, txid: u64, direction: RouteDirection) {
        let route_id = direction.route_id;
        let known = self.by_route.contains_key(&route_id);
        if !known {
            if let Err(e) = self.check_direction(&direction) {
                tracing::warn!(peer = %direction.peer.fqdn, error = %e, "refusing route direction");
                return;
            }
            let fqdn = resolver::normalize(&direction.peer.fqdn);
            tracing::info!(peer = %fqdn, pattern = direction.pattern.as_str(), initiate = direction.initiate, punch = direction.punch, relay = direction.relay.is_some(), "Route Direction to Responder");
            // Both ends asked for the same pair at once (both moved): the
            // NMS serves the first request and ignores the second, so the
            // route we were directed to supersedes our own request.
            self.requests.retain(|_, r| {
                !(r.kind == RequestKind::Direction && r.target.as_deref() == Some(fqdn.as_str()))
            });
            let (vip4, vip6) = (direction.peer.vip4, direction.peer.vip6);
            self.setup_route(now, direction);
            self.answer_dns_waiters(&fqdn, Ok((vip4, vip6)));
        }
        self.seal_to_nms(txid, Message::RouteDirectionConfirmation { route_id });
    }

    /// Route Direction to the initiator (this node is the MN): answer the
    /// DNS queries waiting for it, then set up our side of the route.
    fn on_direction_to_initiator(&mut self, now: Instant, direction: RouteDirection) {
        if let Err(e) = self.check_direction(&direction) {
            tracing::warn!(peer = %direction.peer.fqdn, error = %e, "refusing route direction");
            let fqdn = resolver::normalize(&direction.peer.fqdn);
            self.answer_dns_waiters(&fqdn, Err(ResponseCode::ServFail));
            return;
        }
        let fqdn = resolver::normalize(&direction.peer.fqdn);
        let (vip4, vip6) = (direction.peer.vip4, direction.peer.vip6);
        tracing::info!(peer = %fqdn, pattern = direction.pattern.as_str(), initiate = direction.initiate, punch = direction.punch, relay = direction.relay.is_some(), endpoints = ?direction.peer.endpoints, "Route Direction to Initiator");
        self.setup_route(now, direction);
        self.answer_dns_waiters(&fqdn, Ok((vip4, vip6)));
    }

    /// Installs the peer for a new route and starts what this side does.
    fn setup_route(&mut self, now: Instant, direction: RouteDirection) {
        let fqdn = resolver::normalize(&direction.peer.fqdn);
        let initiate = direction.initiate;
        let role = if initiate {
            TunnelRole::Initiator
        } else {
            TunnelRole::Responder
        };
        let deadline = now + self.config.handshake_timeout * 2;
        let punch = direction.punch;
        if direction.via == Transport::Quic {
            for addr in &direction.peer.endpoints {
                self.events.push_back(NodeEvent::LegName {
                    addr: *addr,
                    fqdn: fqdn.clone(),
                });
            }
        }
        self.install_peer(
            now,
            direction,
            role,
            PeerState::AwaitingRequest { deadline },
        );
        if let Some(peer) = self.peers.get_mut(&fqdn) {
            if punch {
                peer.punch_until = Some(now + self.config.handshake_timeout);
                peer.next_punch = now;
            }
        }
        self.send_relay_bind(now, &fqdn);
        self.send_punches(now, &fqdn);
        if initiate {
            self.start_handshake(now, &fqdn);
        } else {
            let early = std::mem::take(&mut self.early_requests);
            for (at, path, packet) in early {
                let fresh = now.saturating_duration_since(at) < EARLY_REQUEST_LIFETIME;
                if fresh
                    && handshake::peek_request(&packet)
                        .is_ok_and(|h| self.by_route.get(&h.route_id) == Some(&fqdn))
                {
                    self.on_tunnel_request(now, path, &packet);
                } else if fresh {
                    self.early_requests.push_back((at, path, packet));
                }
            }
        }
    }

    fn check_direction(&self, d: &RouteDirection) -> Result<(), String> {
        if d.peer.cert_status != CertStatus::Good {
            return Err(format!(
                "peer certificate status is {:?}",
                d.peer.cert_status
            ));
        }
        let own = self.signaling.as_ref().map(|s| s.login.vip4);
        if own == Some(d.peer.vip4) {
            return Err("route direction names our own VIP".into());
        }
        let o = d.peer.vip4.octets();
        let v4_shared = o[0] == 100 && (o[1] & 0xc0) == 64;
        if !v4_shared || d.peer.vip6.segments()[0] & 0xfe00 != 0xfc00 {
            return Err("peer VIPs are outside the overlay ranges".into());
        }
        Ok(())
    }

    fn install_peer(
        &mut self,
        now: Instant,
        direction: RouteDirection,
        role: TunnelRole,
        state: PeerState,
    ) {
        let fqdn = resolver::normalize(&direction.peer.fqdn);
        if !self.peers.contains_key(&fqdn) && self.peers.len() >= MAX_PEERS {
            tracing::warn!(peer = %fqdn, "peer table full");
            return;
        }
        let local_index = self.fresh_index();
        // A new route replaces the old one; the data plane keeps the old
        // tunnel until the new one is up (TunnelUp for the same VIPs), so
        // traffic flows during re-establishment.
        let (queue, tunnel) = match self.peers.remove(&fqdn) {
            Some(old) => {
                self.by_index.remove(&old.local_index);
                self.by_route.remove(&old.direction.route_id);
                (old.queue, old.tunnel)
            }
            None => (VecDeque::new(), None),
        };
        let relay = direction.relay.clone().and_then(|offer| {
            let has_v4 = self.local_addrs.iter().any(|a| a.is_ipv4());
            let has_v6 = self.local_addrs.iter().any(|a| a.is_ipv6());
            let reachable = |s: &SocketAddr| (s.is_ipv4() && has_v4) || (s.is_ipv6() && has_v6);
            // One family only, the one we reach the cloud by: the list
            // holds each TRS once per family, and failing over to the same
            // dead TRS's other address would only cost time.
            let family_v6 = self
                .signaling
                .as_ref()
                .and_then(|s| s.observed)
                .map(|o| o.is_ipv6());
            let mut servers: Vec<SocketAddr> = offer
                .servers
                .iter()
                .copied()
                .filter(|s| reachable(s) && family_v6.is_none_or(|v6| s.is_ipv6() == v6))
                .collect();
            if servers.is_empty() {
                servers = offer.servers.iter().copied().filter(reachable).collect();
            }
            (!servers.is_empty()).then_some(RelayState {
                offer,
                servers,
                transport: self.transport,
                index: 0,
                counter: 0,
                bound: false,
                unacked: 0,
                next_bind: now,
            })
        });
        self.by_vip
            .insert(IpAddr::V4(direction.peer.vip4), fqdn.clone());
        self.by_vip
            .insert(IpAddr::V6(direction.peer.vip6), fqdn.clone());
        self.by_index.insert(local_index, fqdn.clone());
        self.by_route.insert(direction.route_id, fqdn.clone());
        let path_note = path_reason(&direction);
        self.peers.insert(
            fqdn.clone(),
            Peer {
                fqdn,
                direction,
                role,
                local_index,
                state,
                tunnel,
                last_request: None,
                last_handshake: None,
                queue,
                relay,
                punch_until: None,
                next_punch: now,
                next_keepalive: now + self.config.keepalive,
                rx_seen: 0,
                stale_ticks: 0,
                path_since: now,
                path_note,
                reroute: false,
                probes: VecDeque::new(),
                held: false,
            },
        );
    }

    fn fresh_index(&mut self) -> u32 {
        loop {
            let i: u32 = self.rng.gen();
            if i != 0 && !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// Randomness for one handshake's ephemeral key. The node's generator is
    /// re-keyed from its own output afterwards (fast key erasure), so its
    /// state never lets anyone recompute an earlier ephemeral key: forward
    /// secrecy does not rest on the OS's generator being used per handshake.
    fn ephemeral_rng(&mut self) -> StdRng {
        let rng = StdRng::from_seed(self.rng.gen());
        self.rng = StdRng::from_seed(self.rng.gen());
        rng
    }

    /// The paths an initiator tries, in order: for a relayed route the
    /// relay; otherwise each direct endpoint, then the relay as fallback.
    fn attempt_paths(peer: &Peer) -> Vec<Path> {
        let relay = peer.relay.as_ref().and_then(RelayState::path);
        let direct = Self::direct_paths(peer);
        if peer.direction.pattern == RoutePattern::Relayed && relay.is_some() {
            return relay.into_iter().collect();
        }
        direct.chain(relay).collect()
    }

    /// The peer's endpoints as direct paths, over the transport the NMS
    /// named (native UDP, or QUIC to the peer's listener).
    fn direct_paths(peer: &Peer) -> impl Iterator<Item = Path> + '_ {
        let via = peer.direction.via;
        peer.direction
            .peer
            .endpoints
            .iter()
            .map(move |e| Path::Direct(Leg::new(via, *e)))
    }

    fn start_handshake(&mut self, now: Instant, fqdn: &str) {
        let mut rng = self.ephemeral_rng();
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let attempts = Self::attempt_paths(peer);
        let Some(&first) = attempts.first() else {
            peer.state = PeerState::Failed {
                reason: "no path to try".into(),
            };
            self.counters.handshake_failures += 1;
            return;
        };
        let d = &peer.direction;
        match Initiator::start_with_rng(
            &self.identity,
            &d.peer.static_public,
            &d.tunnel_key,
            d.route_id,
            peer.local_index,
            &mut rng,
        ) {
            Ok((initiator, request)) => {
                tracing::debug!(peer = %fqdn, path = %first, "Tunnel Request");
                self.transmits.push_back(first.transmit(&request));
                peer.state = PeerState::Handshaking {
                    initiator: Some(Box::new(initiator)),
                    request,
                    attempts,
                    attempt: 0,
                    sent_on_attempt: 1,
                    next_retransmit: now + self.config.handshake_retransmit,
                    deadline: now + self.config.handshake_timeout,
                };
            }
            Err(e) => {
                self.counters.handshake_failures += 1;
                peer.state = PeerState::Failed {
                    reason: format!("cannot start handshake: {e}"),
                };
            }
        }
    }

    fn peer_verifier(&self, peer: &Peer, now: Instant) -> CertCheck {
        CertCheck {
            verifier: self.verifier.clone(),
            fqdn: peer.fqdn.clone(),
            serial: peer.direction.peer.cert_serial,
            now: self.wall(now),
        }
    }

    fn on_tunnel_request(&mut self, now: Instant, path: Path, packet: &[u8]) {
        let Ok(header) = handshake::peek_request(packet) else {
            self.counters.handshake_rx_bad += 1;
            return;
        };
        let Some(fqdn) = self.by_route.get(&header.route_id).cloned() else {
            // Not a route the NMS directed us to (yet): no reply at all.
            // When the peer initiates (pattern 2 with the CN behind the
            // NAT), its request can overtake our route direction, so a few
            // are held briefly and answered once the direction arrives.
            while self.early_requests.len() >= MAX_EARLY_REQUESTS {
                self.early_requests.pop_front();
            }
            self.early_requests.push_back((now, path, packet.to_vec()));
            self.counters.handshake_rx_bad += 1;
            return;
        };
        let Some(peer) = self.peers.get(&fqdn) else {
            return;
        };
        if peer.role != TunnelRole::Responder {
            self.counters.handshake_rx_bad += 1;
            return;
        }
        if let Some((req, resp)) = &peer.last_request {
            if req == packet {
                self.transmits.push_back(path.transmit(resp));
                return;
            }
        }
        let check = self.peer_verifier(peer, now);
        let local_index = self.fresh_index();
        let mut rng = self.ephemeral_rng();
        let Some(peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        let d = &peer.direction;
        match handshake::respond_with_rng(
            packet,
            &self.identity,
            &d.peer.static_public,
            &d.tunnel_key,
            local_index,
            &check,
            &mut rng,
        ) {
            Ok((keys, response)) => {
                self.by_index.remove(&peer.local_index);
                peer.local_index = local_index;
                self.by_index.insert(local_index, fqdn.clone());
                peer.last_request = Some((packet.to_vec(), response.clone()));
                self.transmits.push_back(path.transmit(&response));
                tracing::info!(peer = %fqdn, %path, "Tunnel Response sent; tunnel up");
                self.tunnel_up(now, &fqdn, path, keys);
            }
            Err(e) => {
                self.counters.handshake_failures += 1;
                tracing::warn!(peer = %fqdn, %path, error = %e, "Tunnel Request refused");
            }
        }
    }

    fn on_tunnel_response(&mut self, now: Instant, path: Path, packet: &[u8]) {
        let Ok(header) = handshake::peek_response(packet) else {
            self.counters.handshake_rx_bad += 1;
            return;
        };
        let Some(fqdn) = self.by_index.get(&header.receiver_index).cloned() else {
            self.counters.handshake_rx_bad += 1;
            return;
        };
        let Some(peer) = self.peers.get(&fqdn) else {
            return;
        };
        let check = self.peer_verifier(peer, now);
        let Some(peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        let PeerState::Handshaking { initiator, .. } = &mut peer.state else {
            self.counters.handshake_rx_bad += 1;
            return;
        };
        // Cheap checks (index, MAC) first: junk must not cost the pending
        // handshake its state.
        match initiator.as_ref().map(|i| i.check_response(packet)) {
            Some(Ok(_)) => {}
            _ => {
                self.counters.handshake_rx_bad += 1;
                return;
            }
        }
        let Some(init) = initiator.take() else { return };
        match init.finish(packet, &check) {
            Ok(keys) => {
                tracing::info!(peer = %fqdn, %path, "Tunnel Response received; tunnel up");
                self.tunnel_up(now, &fqdn, path, keys);
            }
            Err(e) => {
                // A forged or stale response must not end a handshake that a
                // genuine response may still complete: rebuild the initiator
                // state on the same path. The new request waits for the
                // retransmission timer; sent at once, a peer whose every
                // response we refuse would have us handshake once per round
                // trip until the deadline.
                self.counters.handshake_failures += 1;
                tracing::warn!(peer = %fqdn, %path, error = %e, "Tunnel Response refused");
                self.rearm_handshake(&fqdn);
            }
        }
    }

    /// A fresh initiator state and Tunnel Request for a pending handshake,
    /// leaving its paths, timers and deadline as they are.
    fn rearm_handshake(&mut self, fqdn: &str) {
        let mut rng = self.ephemeral_rng();
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let d = &peer.direction;
        let PeerState::Handshaking {
            initiator, request, ..
        } = &mut peer.state
        else {
            return;
        };
        match Initiator::start_with_rng(
            &self.identity,
            &d.peer.static_public,
            &d.tunnel_key,
            d.route_id,
            peer.local_index,
            &mut rng,
        ) {
            Ok((fresh, fresh_request)) => {
                *initiator = Some(Box::new(fresh));
                *request = fresh_request;
            }
            Err(e) => {
                peer.state = PeerState::Failed {
                    reason: format!("cannot start handshake: {e}"),
                };
            }
        }
    }

    fn tunnel_up(&mut self, now: Instant, fqdn: &str, path: Path, keys: handshake::SessionKeys) {
        let wall = self.wall(now);
        let keepalive = self.config.keepalive;
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let handle = TunnelHandle {
            fqdn: fqdn.to_owned(),
            vip4: peer.direction.peer.vip4,
            vip6: peer.direction.peer.vip6,
            path,
            send: Arc::new(SendKey::new(&keys.send, keys.remote_index)),
            recv: Arc::new(RecvKey::new(&keys.recv, keys.local_index)),
            stats: peer
                .tunnel
                .as_ref()
                .map(|t| t.stats.clone())
                .unwrap_or_default(),
        };
        peer.state = PeerState::Established;
        peer.held = false;
        peer.last_handshake = Some(wall);
        if let Some(m) = self.mobility.last.as_mut() {
            m.back
                .entry(fqdn.to_owned())
                .or_insert_with(|| now.saturating_duration_since(m.at));
        }
        peer.tunnel = Some(handle.clone());
        peer.punch_until = None;
        peer.next_keepalive = now + keepalive;
        peer.rx_seen = handle.stats.rx_packets.load(Ordering::Relaxed);
        peer.stale_ticks = 0;
        peer.path_since = now;
        if path.is_relay() && peer.direction.pattern != RoutePattern::Relayed {
            peer.path_note = "direct attempts failed: relay until a direct path answers".into();
        }
        let queued: Vec<Vec<u8>> = peer.queue.drain(..).collect();
        self.events.push_back(NodeEvent::TunnelUp(handle.clone()));
        for packet in queued {
            self.seal_and_send(&handle, &packet);
        }
    }

    fn seal_and_send(&mut self, tunnel: &TunnelHandle, packet: &[u8]) {
        let path = tunnel.path;
        self.seal_to(tunnel, path, packet);
    }

    /// Seals `packet` (empty: a keepalive) for `tunnel` and sends it on `path`.
    fn seal_to(&mut self, tunnel: &TunnelHandle, path: Path, packet: &[u8]) {
        let mut buf = vec![0u8; DATA_HEADER_LEN + packet.len() + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(packet);
        match tunnel.send.seal_in_place(&mut buf, packet.len()) {
            Ok(n) => {
                buf.truncate(n);
                tunnel.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                tunnel
                    .stats
                    .tx_bytes
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
                self.transmits.push_back(path.transmit(&buf));
            }
            Err(e) => tracing::warn!(peer = %tunnel.fqdn, error = ?e, "cannot seal"),
        }
    }

    /// The data plane opened a packet of tunnel `local_index` that came on
    /// `path`, which is not the tunnel's current one. Authenticated traffic
    /// on a direct path is probed, and the tunnel moves onto it when the
    /// probe's ack comes back over it (the relay-to-direct upgrade, or the
    /// peer's new address after a NAT rebinding or a move). Traffic through
    /// the relay moves a direct tunnel onto the relay: the peer's liveness
    /// check found the direct path dead.
    pub fn handle_path_seen(&mut self, now: Instant, local_index: u32, path: Path) {
        let Some(fqdn) = self.by_index.get(&local_index).cloned() else {
            return;
        };
        let Some(peer) = self.peers.get(&fqdn) else {
            return;
        };
        let Some(current) = peer.tunnel.as_ref().map(|t| t.path) else {
            return;
        };
        if current == path {
            return;
        }
        if path.is_relay() {
            // The peer sends through the relay only when its liveness check
            // found our packets on the direct path gone (or it never had
            // one): follow it. Its relayed packets keep our own liveness
            // check content, so we would otherwise stay on a dead path. Not
            // for relayed packets still in flight when we moved onto the
            // direct path: those stop within a keepalive interval.
            let relay = peer.relay.as_ref().and_then(RelayState::path);
            let settled = now >= peer.path_since + self.config.keepalive;
            if let (Path::Direct(_), Some(relay), true) = (current, relay, settled) {
                self.switch_path(now, &fqdn, relay, "the peer fell back to the relay");
            }
            return;
        }
        // Traffic arriving on a path shows only that it works towards us:
        // probe it, and move when the ack shows it works both ways.
        self.send_probe(now, &fqdn, path);
    }

    /// `cyphonic ping <fqdn>`: a path probe over the tunnel's current path;
    /// its ack, or a failure, comes back as [`NodeEvent::PingResult`]. With
    /// no tunnel yet, the route is selected (as a DNS query would) and this
    /// ping fails; later ones find the tunnel.
    pub fn handle_ping(&mut self, now: Instant, client: u64, fqdn: &str) {
        let fqdn = resolver::normalize(fqdn);
        let path = self
            .peers
            .get(&fqdn)
            .filter(|p| matches!(p.state, PeerState::Established))
            .and_then(|p| p.tunnel.as_ref().map(|t| t.path));
        let Some(path) = path else {
            let registered = self.signaling.as_ref().is_some_and(|s| s.registered);
            let pending = self
                .requests
                .values()
                .any(|r| r.target.as_deref() == Some(fqdn.as_str()));
            if registered && !pending {
                let timeout = self.config.direction_timeout;
                self.send_request(
                    now,
                    RequestKind::Direction,
                    Message::DirectionRequest {
                        target: fqdn.clone(),
                    },
                    Some(fqdn.clone()),
                    timeout,
                );
            }
            self.events.push_back(NodeEvent::PingResult {
                client,
                result: Err(format!("no tunnel to {fqdn} yet: selecting a route")),
            });
            return;
        };
        self.pings
            .retain(|_, (_, _, at)| now.saturating_duration_since(*at) < PROBE_LIFETIME);
        if self.pings.len() >= 64 {
            self.events.push_back(NodeEvent::PingResult {
                client,
                result: Err("too many pings in flight".into()),
            });
            return;
        }
        if let Some(nonce) = self.send_probe(now, &fqdn, path) {
            self.pings.insert(nonce, (client, fqdn, now));
        }
    }

    fn send_probe(&mut self, now: Instant, fqdn: &str, path: Path) -> Option<u64> {
        let nonce: u64 = self.rng.gen();
        let peer = self.peers.get_mut(fqdn)?;
        let tunnel = peer.tunnel.clone()?;
        while peer.probes.len() >= MAX_PROBES {
            peer.probes.pop_front();
        }
        peer.probes.push_back((nonce, path, now));
        let mut msg = [0u8; 9];
        msg[0] = MSG_PATH_PROBE;
        msg[1..].copy_from_slice(&nonce.to_be_bytes());
        self.seal_to(&tunnel, path, &msg);
        Some(nonce)
    }

    /// A tunnel message (see [`MSG_PATH_PROBE`]) the data plane opened for
    /// tunnel `local_index`, which came on `path`.
    pub fn handle_tunnel_message(
        &mut self,
        now: Instant,
        local_index: u32,
        path: Path,
        msg: &[u8],
    ) {
        let Some(fqdn) = self.by_index.get(&local_index).cloned() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        match (msg.first(), msg.len()) {
            (Some(&MSG_PATH_PROBE), 9) => {
                let mut ack = [0u8; 9];
                ack[0] = MSG_PATH_PROBE_ACK;
                ack[1..].copy_from_slice(&msg[1..]);
                self.seal_to(&tunnel, path, &ack);
            }
            (Some(&MSG_PATH_PROBE_ACK), 9) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&msg[1..]);
                let nonce = u64::from_be_bytes(n);
                let found = peer.probes.iter().position(|(pn, pp, at)| {
                    *pn == nonce
                        && *pp == path
                        && now.saturating_duration_since(*at) < PROBE_LIFETIME
                });
                let Some(i) = found else {
                    self.counters.handshake_rx_bad += 1;
                    return;
                };
                peer.probes.remove(i);
                if let Some((client, _, sent)) = self.pings.remove(&nonce) {
                    let path_kind = match (path, peer.direction.pattern) {
                        (Path::Relay { .. }, _) => "relayed",
                        (Path::Direct(_), RoutePattern::Direct) => "direct",
                        (Path::Direct(_), _) => "punched",
                    };
                    self.events.push_back(NodeEvent::PingResult {
                        client,
                        result: Ok(Pong {
                            fqdn: fqdn.clone(),
                            vip4: tunnel.vip4,
                            path: path_kind.into(),
                            endpoint: path.address(),
                            transport: path.transport().as_str().into(),
                            rtt_us: now.saturating_duration_since(sent).as_micros() as u64,
                        }),
                    });
                }
                let current = tunnel.path;
                if path == current || path.is_relay() {
                    return;
                }
                let note = if current.is_relay() {
                    "a direct path answered both ways: moved off the relay"
                } else {
                    "the peer is at a new address"
                };
                self.switch_path(now, &fqdn, path, note);
            }
            _ => self.counters.handshake_rx_bad += 1,
        }
    }

    fn switch_path(&mut self, now: Instant, fqdn: &str, path: Path, note: &str) {
        let keepalive = self.config.keepalive;
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.as_mut() else {
            return;
        };
        tracing::info!(peer = %fqdn, from = %tunnel.path, to = %path, why = note, "path change");
        tunnel.path = path;
        let handle = tunnel.clone();
        if let Some(m) = self.mobility.last.as_mut() {
            m.back
                .entry(fqdn.to_owned())
                .or_insert_with(|| now.saturating_duration_since(m.at));
        }
        peer.path_note = note.to_owned();
        peer.stale_ticks = 0;
        peer.path_since = now;
        peer.next_keepalive = now + keepalive;
        self.counters.path_changes += 1;
        let queued: Vec<Vec<u8>> = if std::mem::take(&mut peer.held) {
            peer.queue.drain(..).collect()
        } else {
            Vec::new()
        };
        self.events.push_back(NodeEvent::TunnelUp(handle.clone()));
        // Tell the peer at once on the new path.
        self.seal_to(&handle, path, &[]);
        for packet in queued {
            self.seal_to(&handle, path, &packet);
        }
    }

    fn send_punches(&mut self, now: Instant, fqdn: &str) {
        let interval = self.config.punch_interval;
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        match peer.punch_until {
            Some(until) if now < until && now >= peer.next_punch => {}
            _ => return,
        }
        peer.next_punch = now + interval;
        let mut packet = [0u8; 12];
        packet[0] = cyphonic_proto::TYPE_PUNCH;
        packet[4..12].copy_from_slice(&peer.direction.route_id.to_be_bytes());
        if peer.direction.via != Transport::Udp {
            return; // QUIC legs need no holes punched
        }
        for e in peer.direction.peer.endpoints.clone() {
            self.counters.punches_sent += 1;
            self.transmits
                .push_back(Leg::udp(e).transmit(packet.to_vec()));
        }
    }

    fn send_relay_bind(&mut self, now: Instant, fqdn: &str) {
        let (keepalive, retransmit) = (self.config.keepalive, self.config.handshake_retransmit);
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(relay) = peer.relay.as_mut() else {
            return;
        };
        if relay.unacked >= MAX_UNACKED_BINDS && relay.servers.len() > 1 {
            // This TRS stopped answering: the next one, for both sides of
            // the session (they walk the same list).
            relay.index = (relay.index + 1) % relay.servers.len();
            relay.unacked = 0;
            relay.bound = false;
            self.counters.relay_failovers += 1;
            tracing::warn!(peer = %fqdn, server = ?relay.server(), "relay unreachable; failing over");
            let new_path = relay.path();
            if let (Some(tunnel), Some(p)) = (peer.tunnel.as_ref(), new_path) {
                if tunnel.path.is_relay() {
                    self.switch_path(now, fqdn, p, "relay failover");
                }
            }
            let Some(peer) = self.peers.get_mut(fqdn) else {
                return;
            };
            let Some(relay) = peer.relay.as_mut() else {
                return;
            };
            relay.next_bind = now;
            let _ = relay;
        }
        let Some(relay) = self.peers.get_mut(fqdn).and_then(|p| p.relay.as_mut()) else {
            return;
        };
        let Some(server) = relay.server() else {
            return;
        };
        relay.counter += 1;
        relay.unacked += 1;
        relay.next_bind = now + if relay.bound { keepalive } else { retransmit };
        let bind = Bind {
            ack: false,
            relay_id: relay.offer.relay_id,
            side: relay.offer.side,
            expires: relay.offer.expires,
            counter: relay.counter,
        }
        .encode(&relay.offer.key);
        self.transmits.push_back(server.transmit(bind.to_vec()));
    }

    fn on_relay_bind_ack(&mut self, from: Leg, packet: &[u8]) {
        let Ok(ack) = Bind::parse(packet) else {
            self.counters.relay_rx_bad += 1;
            return;
        };
        let Some(fqdn) = self.by_route.get(&ack.relay_id).cloned() else {
            self.counters.relay_rx_bad += 1;
            return;
        };
        let Some(relay) = self.peers.get_mut(&fqdn).and_then(|p| p.relay.as_mut()) else {
            return;
        };
        if !ack.ack
            || relay.server() != Some(from)
            || Bind::verify(packet, &relay.offer.key).is_err()
        {
            self.counters.relay_rx_bad += 1;
            return;
        }
        if !relay.bound {
            tracing::debug!(peer = %fqdn, server = %from, "relay bound");
        }
        relay.bound = true;
        relay.unacked = 0;
    }

    /// Per-peer timers: handshake retransmission over the attempt paths,
    /// punching, relay binds, keepalives, probes and the liveness check.
    fn peer_timers(&mut self, now: Instant) {
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for fqdn in names {
            self.handshake_timer(now, &fqdn);
            self.send_punches(now, &fqdn);
            let bind_due = self
                .peers
                .get(&fqdn)
                .and_then(|p| p.relay.as_ref())
                .is_some_and(|r| now >= r.next_bind);
            if bind_due {
                self.send_relay_bind(now, &fqdn);
            }
            self.keepalive_tick(now, &fqdn);
        }
    }

    fn handshake_timer(&mut self, now: Instant, fqdn: &str) {
        let retransmit = self.config.handshake_retransmit;
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let mut failed = None;
        match &mut peer.state {
            PeerState::Handshaking {
                request,
                attempts,
                attempt,
                sent_on_attempt,
                next_retransmit,
                deadline,
                ..
            } => {
                if now >= *deadline {
                    failed = Some("no Tunnel Response on any path".to_string());
                } else if now >= *next_retransmit {
                    if *sent_on_attempt >= SENDS_PER_ATTEMPT && *attempt + 1 < attempts.len() {
                        *attempt += 1;
                        *sent_on_attempt = 0;
                    }
                    // The relay path follows the current TRS (failover).
                    let mut path = attempts[*attempt];
                    if let (Path::Relay { .. }, Some(r)) =
                        (path, peer.relay.as_ref().and_then(RelayState::path))
                    {
                        path = r;
                        attempts[*attempt] = r;
                    }
                    *sent_on_attempt += 1;
                    *next_retransmit = now + retransmit;
                    self.transmits.push_back(path.transmit(request));
                }
            }
            PeerState::AwaitingRequest { deadline } if now >= *deadline => {
                failed = Some("no Tunnel Request from the initiator".to_string());
            }
            _ => {}
        }
        if let Some(reason) = failed {
            tracing::warn!(peer = %fqdn, %reason, "tunnel establishment failed");
            self.counters.handshake_failures += 1;
            peer.state = PeerState::Failed { reason };
            peer.queue.clear();
            peer.punch_until = None;
        }
    }

    /// Once per keepalive interval for an established tunnel: a keepalive
    /// on the current path (holding NAT bindings), probes to the direct
    /// endpoints while relayed, and the liveness check: a path that brought
    /// nothing for `dead_after` intervals is dead, and the tunnel moves to
    /// the relay (or to route selection anew when there is none).
    fn keepalive_tick(&mut self, now: Instant, fqdn: &str) {
        let (keepalive, dead_after) = (self.config.keepalive, self.config.dead_after);
        let Some(peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        if !matches!(peer.state, PeerState::Established) || now < peer.next_keepalive {
            return;
        }
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        peer.next_keepalive = now + keepalive;
        let rx = tunnel.stats.rx_packets.load(Ordering::Relaxed);
        if rx == peer.rx_seen {
            peer.stale_ticks += 1;
        } else {
            peer.rx_seen = rx;
            peer.stale_ticks = 0;
        }
        let dead = peer.stale_ticks >= dead_after;
        let relay_path = peer.relay.as_ref().and_then(RelayState::path);
        let probes: Vec<Path> = if tunnel.path.is_relay() {
            Self::direct_paths(peer).collect()
        } else {
            Vec::new()
        };
        let pattern = peer.direction.pattern;
        self.seal_to(&tunnel, tunnel.path, &[]);
        for p in probes {
            self.send_probe(now, fqdn, p);
        }
        if !dead {
            return;
        }
        match (tunnel.path, relay_path) {
            (Path::Direct(_), Some(relay)) => {
                self.switch_path(
                    now,
                    fqdn,
                    relay,
                    "direct path silent: fell back to the relay",
                );
            }
            (Path::Relay { .. }, Some(_)) => {
                // Make the next bind fail over to another TRS.
                if let Some(r) = self.peers.get_mut(fqdn).and_then(|p| p.relay.as_mut()) {
                    r.unacked = r.unacked.max(MAX_UNACKED_BINDS);
                    r.next_bind = now;
                }
                if let Some(p) = self.peers.get_mut(fqdn) {
                    p.stale_ticks = 0;
                }
            }
            _ => {
                tracing::warn!(peer = %fqdn, pattern = pattern.as_str(), "path silent and no relay: selecting the route again");
                if let Some(p) = self.peers.get_mut(fqdn) {
                    p.stale_ticks = 0;
                }
                let timeout = self.config.direction_timeout;
                self.send_request(
                    now,
                    RequestKind::Direction,
                    Message::DirectionRequest {
                        target: fqdn.to_owned(),
                    },
                    Some(fqdn.to_owned()),
                    timeout,
                );
            }
        }
    }

    /// An application packet for which the data plane has no tunnel: hold it
    /// while the peer's tunnel is being set up, send it if the tunnel came up
    /// meanwhile, drop it otherwise.
    pub fn handle_outbound(&mut self, _now: Instant, packet: &[u8]) {
        let Some(dst) = cyphonic_proto::ip::inner_destination(packet) else {
            self.counters.outbound_no_route += 1;
            return;
        };
        let Some(fqdn) = self.by_vip.get(&dst).cloned() else {
            self.counters.outbound_no_route += 1;
            return;
        };
        let Some(peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        if peer.held {
            if peer.queue.len() < self.config.max_queued {
                peer.queue.push_back(packet.to_vec());
            } else {
                self.counters.outbound_queue_full += 1;
            }
            return;
        }
        if let Some(tunnel) = peer
            .tunnel
            .clone()
            .filter(|_| matches!(peer.state, PeerState::Established))
        {
            self.seal_and_send(&tunnel, packet);
            return;
        }
        match peer.state {
            PeerState::Handshaking { .. } | PeerState::AwaitingRequest { .. } => {
                if peer.queue.len() < self.config.max_queued {
                    peer.queue.push_back(packet.to_vec());
                } else {
                    self.counters.outbound_queue_full += 1;
                }
            }
            _ => self.counters.outbound_no_route += 1,
        }
    }

    /// A DNS query for a name in the overlay domain (see
    /// [`resolver::classify`]). The answer comes as a
    /// [`NodeEvent::DnsResponse`], at once or after route selection.
    pub fn handle_dns_query(
        &mut self,
        now: Instant,
        client: DnsClient,
        query: DnsMessage,
        name: String,
    ) {
        self.counters.dns_overlay_queries += 1;
        let own = self
            .signaling
            .as_ref()
            .map(|s| (s.login.fqdn.clone(), s.login.vip4, s.login.vip6));
        if let Some((fqdn, v4, v6)) = own {
            if resolver::normalize(&fqdn) == name {
                let response = resolver::answer(&query, v4, v6);
                self.events
                    .push_back(NodeEvent::DnsResponse { client, response });
                return;
            }
        }
        if let Some(peer) = self.peers.get(&name) {
            if !matches!(peer.state, PeerState::Failed { .. }) {
                let response =
                    resolver::answer(&query, peer.direction.peer.vip4, peer.direction.peer.vip6);
                self.events
                    .push_back(NodeEvent::DnsResponse { client, response });
                return;
            }
        }
        let registered = self.signaling.as_ref().is_some_and(|s| s.registered);
        if !registered {
            let response = resolver::error(&query, ResponseCode::ServFail);
            self.events
                .push_back(NodeEvent::DnsResponse { client, response });
            return;
        }
        let total: usize = self.dns_waiting.values().map(Vec::len).sum();
        if total >= MAX_DNS_WAITERS {
            let response = resolver::error(&query, ResponseCode::ServFail);
            self.events
                .push_back(NodeEvent::DnsResponse { client, response });
            return;
        }
        let waiting = self.dns_waiting.entry(name.clone()).or_default();
        let first = waiting.is_empty();
        waiting.push((client, query));
        if first {
            tracing::info!(target = %name, "Direction Request");
            let timeout = self.config.direction_timeout;
            self.send_request(
                now,
                RequestKind::Direction,
                Message::DirectionRequest {
                    target: name.clone(),
                },
                Some(name),
                timeout,
            );
        }
    }

    fn answer_dns_waiters(
        &mut self,
        fqdn: &str,
        result: Result<(Ipv4Addr, Ipv6Addr), ResponseCode>,
    ) {
        for (client, query) in self.dns_waiting.remove(fqdn).unwrap_or_default() {
            let response = match result {
                Ok((v4, v6)) => resolver::answer(&query, v4, v6),
                Err(code) => resolver::error(&query, code),
            };
            self.events
                .push_back(NodeEvent::DnsResponse { client, response });
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.signal_timers(now);
        self.keepalive_timer(now);
        self.peer_timers(now);
    }

    fn signal_timers(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        let mut race = Vec::new();
        for (txid, r) in self.requests.iter_mut() {
            if now >= r.deadline {
                expired.push(*txid);
                continue;
            }
            if r.race_at.is_some_and(|t| now >= t) {
                race.push(*txid);
            }
            if now >= r.next_retransmit {
                r.interval = (r.interval * 2).min(Duration::from_secs(2));
                r.next_retransmit = now + r.interval;
                resend.push((*txid, r.message.clone(), r.transports.clone()));
            }
        }
        for (txid, message, transports) in resend {
            for t in transports {
                // A Registration names the transport it travels by.
                let message = match &message {
                    Message::RegistrationRequest(_) => self.registration(t),
                    m => m.clone(),
                };
                self.seal_to_nms_over(txid, message, t);
            }
        }
        for txid in race {
            self.race_transports(now, txid);
        }
        for txid in expired {
            let Some(r) = self.requests.remove(&txid) else {
                continue;
            };
            match r.kind {
                RequestKind::Registration => {
                    tracing::warn!("NMS did not answer the Registration");
                    self.signaling = None;
                    self.request_login("registration timed out");
                }
                RequestKind::KeepAlive => {
                    let missed = self.signaling.as_mut().map(|s| {
                        s.missed_keepalives += 1;
                        s.missed_keepalives
                    });
                    if missed.unwrap_or(0) >= self.config.max_missed_keepalives {
                        tracing::warn!("NMS stopped answering keepalives; logging in again");
                        self.signaling = None;
                        self.requests.clear();
                        self.request_login("NMS unreachable");
                        return;
                    }
                }
                RequestKind::TransportProbe => {
                    tracing::debug!(transports = ?r.transports, "cheaper transports still blocked");
                }
                RequestKind::NatProbe => {
                    tracing::info!("NMS did not answer the NAT Probe: NAT behaviour stays unknown");
                    self.reroute_peers(now);
                }
                RequestKind::Direction => {
                    let target = r.target.unwrap_or_default();
                    tracing::warn!(%target, "Direction Request timed out");
                    self.answer_dns_waiters(&target, Err(ResponseCode::ServFail));
                }
            }
        }
    }

    fn keepalive_timer(&mut self, now: Instant) {
        if self.reprobes()
            && self
                .signaling
                .as_ref()
                .is_some_and(|s| s.registered && now >= s.next_reprobe)
        {
            self.reprobe_transports(now);
        }
        let due = self
            .signaling
            .as_ref()
            .is_some_and(|s| s.registered && now >= s.next_keepalive);
        if !due {
            return;
        }
        let Some(sig) = self.signaling.as_mut() else {
            return;
        };
        sig.next_keepalive = now + sig.login.keepalive;
        // A keepalive may wait for its answer at most until the next one.
        let timeout = sig.login.keepalive.min(Duration::from_secs(5));
        self.send_request(
            now,
            RequestKind::KeepAlive,
            Message::KeepAlive,
            None,
            timeout,
        );
    }

    /// The NAT in front of this node, as the NMS's two ports saw it.
    pub fn nat(&self) -> NatKind {
        match self.signaling.as_ref().and_then(|s| s.observed) {
            Some(observed) => NetInfo {
                local_addrs: self.local_addrs.clone(),
                observed,
                observed_probe: self.signaling.as_ref().and_then(|s| s.observed_probe),
                transport: self.signaling_transport(),
                quic_port: self.config.quic_port,
            }
            .nat(),
            None => NatKind::Unknown,
        }
    }

    /// How signaling travels: the transport the NMS has our registration
    /// over, or the one being tried.
    pub fn signaling_transport(&self) -> Transport {
        match self.last_registered_over {
            Some(t) if self.signaling.as_ref().is_some_and(|s| s.registered) => t,
            _ => self.transport,
        }
    }

    /// A snapshot for `cyphonic status`.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let sig = self.signaling.as_ref();
        NodeStatus {
            fqdn: sig.map(|s| s.login.fqdn.clone()),
            vip4: sig.map(|s| s.login.vip4),
            vip6: sig.map(|s| s.login.vip6),
            cloud: CloudStatus {
                nms: sig.map(|s| s.login.nms),
                logged_in: sig.is_some(),
                registered: sig.is_some_and(|s| s.registered),
                observed: sig.and_then(|s| s.observed),
                observed_probe: sig.and_then(|s| s.observed_probe),
                nat: self.nat().as_str().into(),
                local_addrs: self.local_addrs.clone(),
                transport: self.signaling_transport().as_str().into(),
                transport_forced: self.config.transport.is_some(),
            },
            peers: self
                .peers
                .values()
                .map(|p| {
                    let stats = p.tunnel.as_ref().map(|t| &t.stats);
                    let load = |f: fn(&TunnelStats) -> &AtomicU64| {
                        stats.map(|s| f(s).load(Ordering::Relaxed)).unwrap_or(0)
                    };
                    PeerStatus {
                        fqdn: p.fqdn.clone(),
                        vip4: p.direction.peer.vip4,
                        vip6: p.direction.peer.vip6,
                        role: p.role,
                        state: match &p.state {
                            PeerState::AwaitingRequest { .. } => "awaiting-request".into(),
                            PeerState::Handshaking { .. } => "handshaking".into(),
                            PeerState::Established => "established".into(),
                            PeerState::Failed { reason } => format!("failed: {reason}"),
                        },
                        pattern: p.direction.pattern.to_u8(),
                        path: match (p.tunnel.as_ref().map(|t| t.path), p.direction.pattern) {
                            (Some(Path::Relay { .. }), _) => "relayed".into(),
                            (Some(Path::Direct(_)), RoutePattern::Direct) => "direct".into(),
                            (Some(Path::Direct(_)), _) => "punched".into(),
                            (None, pattern) => pattern.as_str().into(),
                        },
                        path_reason: p.path_note.clone(),
                        transport: match p.tunnel.as_ref() {
                            Some(t) => t.path.transport(),
                            None if p.direction.pattern == RoutePattern::Relayed => {
                                p.relay.as_ref().map_or(self.transport, |r| r.transport)
                            }
                            None => p.direction.via,
                        }
                        .as_str()
                        .into(),
                        relay: p.relay.as_ref().and_then(|r| r.server()).map(|l| l.addr),
                        endpoint: p.tunnel.as_ref().map(|t| t.path.address()),
                        last_handshake_unix: p
                            .last_handshake
                            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs()),
                        last_handshake_secs_ago: p
                            .last_handshake
                            .and_then(|t| self.wall(now).duration_since(t).ok())
                            .map(|d| d.as_secs()),
                        rx_bytes: load(|s| &s.rx_bytes),
                        tx_bytes: load(|s| &s.tx_bytes),
                        rx_packets: load(|s| &s.rx_packets),
                        tx_packets: load(|s| &s.tx_packets),
                    }
                })
                .collect(),
            counters: self.counters,
            mobility: MobilityStatus {
                moves: self.mobility.moves,
                last_move: self.mobility.last.as_ref().map(|m| MoveStatus {
                    at_unix_ms: m
                        .wall
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    secs_ago: now.saturating_duration_since(m.at).as_secs(),
                    change: m.change.clone(),
                    tunnels_back_ms: m
                        .back
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_millis() as u64))
                        .collect(),
                }),
            },
        }
    }
}

fn path_reason(d: &RouteDirection) -> String {
    match d.pattern {
        RoutePattern::Direct => "no NAT between the nodes: pattern 1, direct".into(),
        RoutePattern::Punched if d.punch || (!d.initiate && d.peer.endpoints.is_empty()) => {
            "pattern 2: both behind endpoint-independent NATs, punched from both sides".into()
        }
        RoutePattern::Punched => "pattern 2: a NAT on the path, opened from inside".into(),
        RoutePattern::Relayed => "no direct path possible: pattern 3, relay".into(),
        RoutePattern::Unknown(v) => format!("pattern {v}"),
    }
}

/// Checks a peer's handshake identity: its certificate chains to our root,
/// names the expected FQDN, is valid now, carries the serial the NMS vouched
/// for, and its key signed the peer's static key.
struct CertCheck {
    verifier: Verifier,
    fqdn: String,
    serial: u64,
    now: SystemTime,
}

impl PeerVerifier for CertCheck {
    fn verify_peer(
        &self,
        chain: &[Vec<u8>],
        static_public: &[u8; 32],
        binding_sig: &[u8; 64],
    ) -> Result<(), String> {
        let node = self
            .verifier
            .verify_node(chain, Some(&self.fqdn), self.now)
            .map_err(|e| e.to_string())?;
        if node.serial != self.serial {
            return Err(format!(
                "certificate serial {:x} is not the one the NMS vouched for ({:x})",
                node.serial, self.serial
            ));
        }
        cyphonic_pki::verify_ed25519(
            &node.public_key,
            &handshake::binding_message(static_public),
            binding_sig,
        )
        .map_err(|e| format!("static key not bound to the certificate: {e}"))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub fqdn: Option<String>,
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    pub cloud: CloudStatus,
    pub peers: Vec<PeerStatus>,
    pub counters: NodeCounters,
    pub mobility: MobilityStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct MobilityStatus {
    pub moves: u64,
    pub last_move: Option<MoveStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoveStatus {
    pub at_unix_ms: u64,
    pub secs_ago: u64,
    /// What changed, e.g. "lost 192.0.2.11:4501; gained [2001:db8::11]:4501".
    pub change: String,
    /// Each peer's tunnel: milliseconds from the move until it carried
    /// traffic again (roamed, or re-established).
    pub tunnels_back_ms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloudStatus {
    pub nms: Option<SocketAddr>,
    pub logged_in: bool,
    pub registered: bool,
    pub observed: Option<SocketAddr>,
    pub observed_probe: Option<SocketAddr>,
    /// "none", "endpoint-independent", "symmetric" or "unknown".
    pub nat: String,
    pub local_addrs: Vec<SocketAddr>,
    /// How signaling (and relaying) travels: "udp", "quic" or "tcp".
    pub transport: String,
    /// The transport was forced by configuration, not chosen.
    pub transport_forced: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub role: TunnelRole,
    pub state: String,
    pub pattern: u8,
    /// "direct", "punched" or "relayed".
    pub path: String,
    pub path_reason: String,
    /// "udp", "quic" or "tcp": how the tunnel's packets travel (to the peer
    /// or to the TRS).
    pub transport: String,
    pub endpoint: Option<SocketAddr>,
    /// The TRS this tunnel may fall back to (or uses).
    pub relay: Option<SocketAddr>,
    pub last_handshake_unix: Option<u64>,
    pub last_handshake_secs_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}
