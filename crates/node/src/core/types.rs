//! The node core's vocabulary: what the shell gives it (Login, config),
//! what it hands back (transmits, events, tunnel handles) and the paths
//! tunnels take.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cyphonic_proto::data::{RecvKey, SendKey};
use cyphonic_proto::relay;
use cyphonic_proto::{LocalIndex, RelayId, SessionId};
use serde::Serialize;

/// The common key is wiped on drop.
impl Drop for Login {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.common_key);
    }
}

impl zeroize::ZeroizeOnDrop for Login {}

/// What Login (at the AS) gave the node.
#[derive(Clone)]
pub struct Login {
    pub session_id: SessionId,
    pub common_key: [u8; 32],
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub nms: SocketAddr,
    /// The NMS at every address the cloud has, so a move into a network of
    /// the other IP version keeps signaling going.
    pub nms_alternatives: Vec<SocketAddr>,
    /// The NMS of the cloud's other instances: the session registers at
    /// one of them when this one stops answering (§5.19).
    pub instances: Vec<SocketAddr>,
    pub keepalive: Duration,
    /// The cloud's QUIC (UDP) and TLS-over-TCP ports at the NMS's
    /// addresses; 0: not offered.
    pub quic_port: u16,
    pub tcp_port: u16,
}

/// The TUN device's MTU: 1500 − 40 (outer IPv6) − 8 (UDP) − 12 (relay
/// header) − 16 (data header) − 16 (tag), so the largest inner packet fits
/// every path over a 1500-byte underlay (`docs/protocol.md` §7.7).
pub const DEFAULT_MTU: u16 = 1408;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub domain: String,
    pub tunnel_port: u16,
    /// First retransmission of a signaling request; doubles up to 2 s.
    pub retransmit: Duration,
    /// How long a Direction Request may take before the DNS query fails.
    pub direction_timeout: Duration,
    /// How long a DNS query may wait on a cloud that does not answer: a
    /// query still waiting after `retransmit` sends a KeepAlive, which
    /// must be answered by `dns_cloud_wait`; else the cloud is away and a
    /// query waits one `retransmit` at most before SERVFAIL (a live NMS's
    /// answer may take up to `direction_timeout`).
    pub dns_cloud_wait: Duration,
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
    /// `Some(tag)`: every local index this node hands out has `tag` as its
    /// top byte, so several nodes behind one tunnel port (see
    /// [`crate::host::Host`]) never share an index and a datagram's
    /// receiver index names its node. `None`: any index.
    pub index_tag: Option<u8>,
    /// Peers held at once; when full, peers whose tunnel establishment
    /// failed make room, and a new route is refused only when none did.
    pub max_peers: usize,
    /// `Some(interval)`: this node is an adapter; it fetches the general
    /// nodes it serves once registered, polls for changes this often and
    /// reports each new list ([`NodeEvent::GeneralNodes`]).
    pub general_nodes_poll: Option<Duration>,
    /// The initiator of a tunnel starts a new handshake when its keys are
    /// this old (or have sealed `REKEY_AFTER_MESSAGES` packets).
    pub rekey_after: Duration,
    /// Keys this old are refused for sending and receiving.
    pub reject_after: Duration,
    /// The device MTU: the largest inner packet, where path MTU probing
    /// starts.
    pub mtu: u16,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            domain: "cyphonic.internal".into(),
            tunnel_port: 4501,
            retransmit: Duration::from_millis(250),
            direction_timeout: Duration::from_secs(5),
            dns_cloud_wait: Duration::from_secs(2),
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
            index_tag: None,
            max_peers: 4096,
            general_nodes_poll: None,
            rekey_after: cyphonic_proto::data::REKEY_AFTER_TIME,
            reject_after: cyphonic_proto::data::REJECT_AFTER_TIME,
            mtu: DEFAULT_MTU,
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
    /// Native UDP: the node's socket it goes from (see [`Leg::local`]).
    pub local: u16,
    pub payload: Vec<u8>,
    /// Sent with this IP TTL (IPv6 hop limit) instead of the default: a
    /// punch that must open the node's own NAT and die before the peer's
    /// (docs/routing.md, "A note on Linux NAT routers").
    pub ttl: Option<u8>,
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
    /// Native UDP: which of the node's sockets: 0 the tunnel port, `k` in
    /// `1..=SPARE_PORTS` spare port `k`, which birthday punching opens
    /// behind a hard NAT (`core::spray`). 0 on QUIC and TCP.
    pub local: u16,
}

impl Leg {
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Leg {
            transport,
            addr,
            local: 0,
        }
    }

    pub fn udp(addr: SocketAddr) -> Self {
        Leg::new(Transport::Udp, addr)
    }

    /// Native UDP to `addr` from spare port `k` (0: the tunnel port).
    pub fn spare(k: u16, addr: SocketAddr) -> Self {
        Leg {
            transport: Transport::Udp,
            addr,
            local: k,
        }
    }

    pub(crate) fn transmit(self, payload: Vec<u8>) -> Transmit {
        Transmit {
            destination: self.addr,
            transport: self.transport,
            local: self.local,
            payload,
            ttl: None,
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
            Transport::Udp if self.local != 0 => {
                write!(f, "{} (spare port {})", self.addr, self.local)
            }
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

/// The largest inner packet a tunnel's current path carries, shared with
/// the data plane: the least of what path MTU probing found (`core::pmtu`)
/// and what the kernel learned from ICMP for the path's address (the
/// shell's). Zero: not known (the device MTU). The data plane answers a
/// larger packet with a too-big, or fragments it (`docs/protocol.md` §7.7).
#[derive(Debug, Default)]
pub struct PathMtu {
    probed: AtomicU16,
    kernel: AtomicU16,
}

impl PathMtu {
    /// The tunnel's MTU, when something lowered it.
    pub fn limit(&self) -> Option<usize> {
        let probed = self.probed.load(Ordering::Relaxed);
        let kernel = self.kernel.load(Ordering::Relaxed);
        match (probed, kernel) {
            (0, 0) => None,
            (0, m) | (m, 0) => Some(usize::from(m)),
            (a, b) => Some(usize::from(a.min(b))),
        }
    }

    pub fn probed(&self) -> u16 {
        self.probed.load(Ordering::Relaxed)
    }

    pub fn set_probed(&self, mtu: u16) {
        self.probed.store(mtu, Ordering::Relaxed);
    }

    pub fn kernel(&self) -> u16 {
        self.kernel.load(Ordering::Relaxed)
    }

    pub fn set_kernel(&self, mtu: u16) {
        self.kernel.store(mtu, Ordering::Relaxed);
    }
}

/// Where a tunnel's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Straight to the peer (or its NAT's mapping), over native UDP or a
    /// QUIC leg to its listener.
    Direct(Leg),
    /// Through a TRS, framed with the relay session's header, over the
    /// leg to the TRS.
    Relay { server: Leg, relay_id: RelayId },
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
            Path::Relay { server, relay_id } => write!(f, "relay {server} #{relay_id}"),
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
    /// The peer has these keys: it answered with them (we initiated) or
    /// sent under them. Keys a responder made in a rekey are not confirmed
    /// until the first packet under them arrives; until then the data
    /// plane receives with them but keeps sending with the older ones, so
    /// a lost Tunnel Response (or a replayed Tunnel Request) costs nothing.
    pub confirmed: Arc<AtomicBool>,
    /// The route's access policy and flow table, shared by every set of
    /// keys of the route ([`crate::filter`]).
    pub filter: Arc<crate::filter::FlowFilter>,
    /// The current path's MTU, shared by every set of keys of the route.
    pub mtu: Arc<PathMtu>,
}

pub enum NodeEvent {
    /// Log in to the AS (again) and call `handle_login`.
    NeedLogin { reason: LoginReason },
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
    TunnelDown {
        fqdn: String,
        local_index: LocalIndex,
    },
    /// The answer to `handle_ping`.
    PingResult {
        client: u64,
        result: Result<Pong, PingError>,
    },
    /// Stop sending on a peer's tunnel (its path went with a move) and hand
    /// its packets to `handle_outbound`, which holds them until the tunnel
    /// is back (a `TunnelUp`). Receiving goes on.
    TunnelHold { fqdn: String },
    /// A QUIC leg to `addr` leads to the peer `fqdn`: its TLS certificate
    /// must name it.
    LegName { addr: SocketAddr, fqdn: String },
    /// The general nodes this adapter serves, whole, each time the list
    /// changed (see [`NodeConfig::general_nodes_poll`]).
    GeneralNodes {
        version: u64,
        nodes: Vec<cyphonic_proto::signal::GeneralNodeInfo>,
    },
    /// Close every spare port (a [`Leg::local`] other than 0) but those in
    /// `keep`, which carry tunnels: birthday punching is over. A spare
    /// port is opened (an ephemeral UDP port) by the first transmit from
    /// it.
    SparePorts { keep: Vec<u16> },
}

/// Why the node asks to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginReason {
    /// The first Login of this run.
    #[error("starting")]
    Starting,
    /// The NMS did not answer the Registration: the session may be gone.
    #[error("registration timed out")]
    RegistrationTimedOut,
    /// The NMS stopped answering keepalives.
    #[error("NMS unreachable")]
    NmsUnreachable,
}

/// Why a `cyphonic ping` got no pong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// No tunnel yet; the ping started route selection, a later one will
    /// find the tunnel.
    #[error("no tunnel to {0} yet: selecting a route")]
    NoTunnel(String),
    #[error("too many pings in flight")]
    TooMany,
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

impl std::fmt::Debug for TunnelHandle {
    /// Names the tunnel and its path; never its keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TunnelHandle({} {} via {})",
            self.fqdn, self.vip4, self.path
        )
    }
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
            NodeEvent::GeneralNodes { version, nodes } => {
                write!(f, "GeneralNodes({} v{version:x})", nodes.len())
            }
            NodeEvent::SparePorts { keep } => write!(f, "SparePorts(keep {keep:?})"),
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

/// A port mapping the node's router granted (PCP or NAT-PMP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// "pcp" or "nat-pmp".
    pub protocol: String,
    /// The public address the router forwards to the tunnel port.
    pub external: SocketAddr,
    /// The lifetime the router granted (renewed at half of it).
    pub lifetime_secs: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct NodeCounters {
    pub signal_rx_bad: u64,
    pub handshake_rx_bad: u64,
    pub handshake_failures: u64,
    pub outbound_no_route: u64,
    pub outbound_queue_full: u64,
    /// Route selections started by a packet to a VIP no peer held (a
    /// Direction Request by VIP).
    pub directions_by_vip: u64,
    pub dns_overlay_queries: u64,
    pub punches_sent: u64,
    pub punches_received: u64,
    /// Birthday punching attempts (opening spare ports behind a hard NAT,
    /// or probing random ports behind an easy one) and the random-port
    /// probes sent.
    pub spray_attempts: u64,
    pub spray_probes: u64,
    /// Path MTU discovery: size probes sent, and changes of a tunnel's
    /// MTU it made.
    pub pmtu_probes: u64,
    pub pmtu_changes: u64,
    pub path_changes: u64,
    pub relay_failovers: u64,
    /// Routes selected again because their relay grant neared its end.
    pub grant_renewals: u64,
    /// Relayed tunnels that stayed silent on every TRS: route selected anew.
    pub relay_dead_reroutes: u64,
    pub relay_rx_bad: u64,
    /// Tunnels established by a completed handshake, as initiator and as
    /// responder (a rekey's handshake counts in `rekeys` instead).
    pub handshakes_initiator: u64,
    pub handshakes_responder: u64,
    /// Tunnels whose keys were replaced by a new handshake (both roles).
    pub rekeys: u64,
    /// Rekey handshakes that got no answer in time (retried).
    pub rekey_failures: u64,
    /// Tunnels whose keys reached `reject_after` unreplaced: a new route.
    pub keys_expired: u64,
    /// Tunnel Requests refused because their ephemeral key was answered
    /// before (a replay).
    pub handshake_replays: u64,
    /// Peers whose tunnels closed because they left the overlay.
    pub peers_revoked: u64,
    /// Application packets the core held or sent itself (while a tunnel
    /// came up) that the route's policy did not allow out.
    pub tx_policy_denied: u64,
    /// Routes the NMS refused because the access policy lets neither end
    /// reach the other (DirectionError Denied).
    pub directions_denied: u64,
    /// Route filters the NMS changed, and routes it withdrew, for a new
    /// policy (RouteUpdate).
    pub route_updates: u64,
    pub routes_withdrawn: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelRole {
    Initiator,
    Responder,
}

pub use cyphonic_proto::punch::{MSG_PATH_PROBE, MSG_PATH_PROBE_ACK};
