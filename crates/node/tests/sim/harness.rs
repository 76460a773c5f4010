//! A deterministic simulation of one NMS, N nodes and up to two TRS: the
//! real sans-IO cores ([`Nms`], [`Node`], [`Trs`]) on a virtual clock,
//! joined by an in-memory network with per-link latency, seeded loss and
//! NAT boxes modelled on Linux conntrack ([`NatSpec`]).
//!
//! The driver ([`Sim::step`]) always jumps to the earliest of every core's
//! `poll_timeout` and the next packet's delivery time, so minutes of
//! protocol time pass in milliseconds. After every input it drains the
//! input's core (`poll_transmit`, then `poll_event`), as the cores' docs ask.
//! The shells' jobs are done here too: the NMS's session database, the
//! node's Login, its resolver's clients and its data plane: data packets
//! are sealed and opened with the keys of [`NodeEvent::TunnelUp`] by
//! [`cyphonic_node::datapath`], the receive and send path the data-plane
//! threads run, never by the core.
//!
//! Everything random comes from the seed; a panicking test prints it (see
//! the `Drop` impl) together with the tail of the wire log.
//!
//! A node can move to another attachment mid-run ([`Sim::move_node`]): the
//! network forgets its old addresses and the core hears of the new ones, as
//! after a netlink event.
//!
//! Every packet carries a transport ([`Transport`]). Native UDP leaves the
//! node's tunnel port. QUIC and TLS-over-TCP travel on *legs*, as
//! `cyphonic-transport`'s hub makes them: a node dials a leg from an
//! ephemeral port of its own (one for QUIC, a fresh one per TCP
//! connection), through its NAT like any packet; the dial is a handshake
//! round trip ("LegOpen", "LegAccept") that is retried and gives up as the
//! hub's does ([`LEG_HANDSHAKE_TIMEOUT`]), and datagrams sent meanwhile
//! wait in the leg's queue. The cloud listens for QUIC and TCP on port 443
//! of every cloud address ([`CLOUD_LEG_PORT`]) and hands what comes to the
//! NMS (signaling) or the host's TRS (relay), answering on the leg it came
//! by, as `cloud::edge` does; a node with a QUIC port accepts legs there.
//! TCP loses nothing; QUIC and UDP take the links' loss. A per-node
//! [`Firewall`] filters the node's outbound packets (and lets in only
//! replies to flows it let out); tests change it mid-run
//! ([`Sim::set_firewall`]).
//!
//! The test modules (`basic`, `nat`, `mobility` and `transport`) share
//! this module in one test binary.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cyphonic_cloud_core::nms::{Nms, NmsConfig, NmsEvent, RelayConfig, SessionInfo};
use cyphonic_cloud_core::trs::{Action, DropReason, Trs, TrsConfig};
use cyphonic_node::core::{
    Leg, Login, LoginReason, Node, NodeConfig, NodeEvent, Path, Transmit, Transport, TunnelHandle,
};
use cyphonic_node::datapath::{self, Decapsulated, Opened, PathReports, Payload, TunnelTable};
use cyphonic_node::resolver::{self, Classified};
use cyphonic_proto::handshake::{binding_message, LocalIdentity, StaticKeypair};
use cyphonic_proto::relay::{self, RELAY_HEADER_LEN};
use cyphonic_proto::signal::{self, Message, Role, SignalCipher};
use cyphonic_proto::signal::{GeneralNodeInfo, GeneralNodes, GENERAL_NODES_PER_PAGE};
use hickory_proto::op::{Message as DnsMessage, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::pki::{fqdn, pki, serial, NodeCert};

pub const NMS_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4502);
pub const NMS_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    4502,
);
pub const TUNNEL_PORT: u16 = 4501;
/// The NMS's second port, for NAT Probes (`NmsConfig::probe_port`).
pub const PROBE_PORT: u16 = 4504;
pub const TRS_PORT: u16 = 4503;
/// The secret the NMS and every TRS share (see `cyphonic_proto::relay`).
pub const RELAY_SECRET: &[u8] = b"sim relay secret";
/// The cloud's QUIC (UDP) and TLS-over-TCP (TCP) port at every cloud
/// address: `Login::quic_port` / `tcp_port` and `RelayConfig::quic_port` /
/// `tcp_port` (with [`SimConfig::cloud_legs`]).
pub const CLOUD_LEG_PORT: u16 = 443;
/// Node `i` dials its QUIC legs from port `QUIC_DIAL_PORT + i` (the hub's
/// one dialing socket) and its TCP legs from fresh ports counting up from
/// `TCP_DIAL_PORT + 100 i`.
pub const QUIC_DIAL_PORT: u16 = 40_000;
pub const TCP_DIAL_PORT: u16 = 50_000;
/// A node's spare port `k` is this plus `k`.
pub const SPARE_BASE: u16 = 30_000;
/// As `cyphonic_transport::HubConfig::default()`: a dial (TCP connect and
/// TLS, or the QUIC handshake) gives up after this long; the address is
/// then refused for [`LEG_REDIAL_BACKOFF`]; a leg that received nothing for
/// [`LEG_IDLE_TIMEOUT`] is closed (its PINGs would have been answered if
/// the path worked) and the next send dials again.
pub const LEG_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const LEG_REDIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const LEG_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// The first handshake retransmission (QUIC's first PTO with its initial
/// RTT of 333 ms; TCP's initial SYN RTO); it doubles after each.
pub const LEG_OPEN_RETRY: Duration = Duration::from_secs(1);
/// Datagrams a dialing leg holds (`HubConfig::leg_queue`).
pub const LEG_QUEUE: usize = 1024;
/// How long a firewall remembers a flow it let out (conntrack's UDP
/// stream timeout; TCP flows are held far longer).
pub const FIREWALL_UDP_FLOW: Duration = Duration::from_secs(120);
pub const FIREWALL_TCP_FLOW: Duration = Duration::from_secs(7200);

/// TRS `k`'s addresses: the cloud's (192.0.2.1, 2001:db8::1) for the first,
/// 192.0.2.2 and 2001:db8::2 for the second, port 4503.
pub fn trs_v4(k: usize) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1 + k as u8).into(), TRS_PORT)
}

pub fn trs_v6(k: usize) -> SocketAddr {
    SocketAddr::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 + k as u16).into(),
        TRS_PORT,
    )
}

/// NAT `k`'s public (WAN) address: 192.0.2.(101+k).
pub fn nat_public(k: usize) -> IpAddr {
    Ipv4Addr::new(192, 0, 2, 101 + k as u8).into()
}

/// Node `i`'s private address on NAT `k`'s LAN: 10.(k+1).0.(10+i).
pub fn lan_v4(k: usize, i: usize) -> SocketAddr {
    SocketAddr::new(
        Ipv4Addr::new(10, 1 + k as u8, 0, 10 + i as u8).into(),
        TUNNEL_PORT,
    )
}

/// Node `i`'s underlay addresses: 192.0.2.(10+i) and 2001:db8::(10+i).
pub fn node_v4(i: usize) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(192, 0, 2, 10 + i as u8).into(), TUNNEL_PORT)
}

pub fn node_v6(i: usize) -> SocketAddr {
    SocketAddr::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + i as u16).into(),
        TUNNEL_PORT,
    )
}

/// Another global IPv4 for node `i`, in network `k` (`k` < 16): a move
/// target. 198.51.100.(16k + i).
pub fn roam_v4(i: usize, k: usize) -> Ipv4Addr {
    assert!(k < 16 && i < 16, "roam_v4({i}, {k}) out of range");
    Ipv4Addr::new(198, 51, 100, (16 * k + i) as u8)
}

/// Another global IPv6 for node `i`, in network `k`: 2001:db8:1:k::(10+i).
pub fn roam_v6(i: usize, k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, k as u16, 0, 0, 0, 0x10 + i as u16)
}

/// Where a node attaches to the underlay after a move ([`Sim::move_node`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// A global IPv4 address of its own, nothing else.
    V4(Ipv4Addr),
    /// A global IPv6 address, nothing else.
    V6(Ipv6Addr),
    /// Both, global.
    Dual(Ipv4Addr, Ipv6Addr),
    /// A private IPv4 ([`lan_v4`]) on the LAN of NAT `nat` (of
    /// [`SimConfig::nats`] or [`Sim::add_nat`]), and a global IPv6 if given.
    Behind { nat: usize, v6: Option<Ipv6Addr> },
}

/// Node `i`'s virtual IPs, as the AS assigned them.
pub fn vip4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, i as u8)
}

pub fn vip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, i as u16)
}

/// Which certificate a node presents in its handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// Its own, from the overlay's CA.
    Own,
    /// One for its own name from an unrelated CA; it also trusts only that CA.
    Foreign,
    /// Its own, expired before the simulation starts.
    Expired,
    /// Another node's (`n<i>`), so the name is not the one the NMS vouches for.
    Of(usize),
    /// Its own name, serial and key, but another node's (`n<i>`) virtual IPs.
    VipsOf(usize),
}

/// The underlay a node sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    V4,
    V6,
    /// Both; it talks to the NMS over IPv4.
    Dual,
}

/// A firewall on a node's outbound packets (a corporate or campus
/// network's). Stateful: what comes in passes only as the reply to a flow
/// it let out (same protocol and both endpoints), except when `Open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firewall {
    /// Everything passes, both ways.
    #[default]
    Open,
    /// Only UDP and TCP to port 443 go out: QUIC and TLS to the cloud's 443.
    Only443,
    /// Only TCP to port 443 goes out.
    TcpOnly443,
}

impl Firewall {
    /// Whether a packet of `transport` to `dst` may leave.
    pub fn allows(self, transport: Transport, dst: SocketAddr) -> bool {
        match self {
            Firewall::Open => true,
            Firewall::Only443 => dst.port() == 443,
            Firewall::TcpOnly443 => transport == Transport::Tcp && dst.port() == 443,
        }
    }
}

/// The IP protocol a transport travels in: QUIC is UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Udp,
    Tcp,
}

impl From<Transport> for Proto {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Udp | Transport::Quic => Proto::Udp,
            Transport::Tcp => Proto::Tcp,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `n<index>`; also picks addresses and VIPs.
    pub index: usize,
    pub stack: Stack,
    pub cert: Cert,
    /// Its IPv4 is a private address ([`lan_v4`]) behind this NAT of
    /// [`SimConfig::nats`]; its IPv6, if any, stays global.
    pub nat: Option<usize>,
    /// Overrides `NodeConfig::quic_port` (its QUIC listener) for this node.
    pub quic_port: Option<u16>,
    /// Overrides `NodeConfig::transport` for this node: `Some(t)` forces t.
    pub transport: Option<Transport>,
    /// The firewall its packets pass at the start.
    pub firewall: Firewall,
}

impl NodeSpec {
    pub fn new(index: usize) -> Self {
        Self {
            index,
            stack: Stack::V4,
            cert: Cert::Own,
            nat: None,
            quic_port: None,
            transport: None,
            firewall: Firewall::Open,
        }
    }

    pub fn quic_port(mut self, port: u16) -> Self {
        self.quic_port = Some(port);
        self
    }

    /// Forces `transport` (`NodeConfig::transport = Some(transport)`).
    pub fn forced(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    pub fn firewall(mut self, firewall: Firewall) -> Self {
        self.firewall = firewall;
        self
    }

    pub fn behind(mut self, nat: usize) -> Self {
        self.nat = Some(nat);
        self
    }

    pub fn stack(mut self, stack: Stack) -> Self {
        self.stack = stack;
        self
    }

    pub fn cert(mut self, cert: Cert) -> Self {
        self.cert = cert;
        self
    }
}

/// Latency and loss of one direction of a link.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub latency: Duration,
    /// Probability that a packet is lost, drawn from the seeded RNG.
    pub loss: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            loss: 0.0,
        }
    }
}

/// How a NAT picks the public port of a new mapping (RFC 4787 §4.1), as
/// Linux `masquerade` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatMapping {
    /// `masquerade`: keeps the source port when no other mapping to the
    /// same remote uses it, so one inside endpoint gets the same public
    /// port for every destination (endpoint-independent).
    Masquerade,
    /// `masquerade fully-random`: a fresh random port per destination
    /// (symmetric).
    FullyRandom,
}

/// A NAT box: conntrack entries per (inside endpoint, remote endpoint).
/// Inbound packets pass only on an entry their source matches
/// (address-and-port-dependent filtering, RFC 4787 §5); an entry idle for
/// `udp_timeout` (either direction refreshes it) is forgotten; a packet from
/// the LAN to the NAT's own public address is dropped (no hairpinning).
#[derive(Debug, Clone, Copy)]
pub struct NatSpec {
    pub mapping: NatMapping,
    /// `nf_conntrack_udp_timeout` and `_stream` both.
    pub udp_timeout: Duration,
    /// The router drops unsolicited packets to itself before conntrack
    /// confirms them (`ct state new drop` on its WAN input, as the lab's
    /// routers and home routers do), so they leave no trace. Without it,
    /// conntrack records such a packet, and a later outbound packet to the
    /// same remote cannot take that public port (see docs/routing.md, "A
    /// note on Linux NAT routers").
    pub input_firewall: bool,
}

impl NatSpec {
    pub fn eim() -> Self {
        Self {
            mapping: NatMapping::Masquerade,
            udp_timeout: Duration::from_secs(30),
            input_firewall: true,
        }
    }

    pub fn sym() -> Self {
        Self {
            mapping: NatMapping::FullyRandom,
            ..Self::eim()
        }
    }

    pub fn without_input_firewall(mut self) -> Self {
        self.input_firewall = false;
        self
    }
}

pub struct SimConfig {
    pub seed: u64,
    pub nodes: Vec<NodeSpec>,
    pub node: NodeConfig,
    /// With `trs > 0` its `relay` is replaced by grants for those TRS.
    pub nms: NmsConfig,
    pub link: Link,
    pub nats: Vec<NatSpec>,
    /// TRS instances (0, 1 or 2), dual-stack, at [`trs_v4`] / [`trs_v6`].
    pub trs: usize,
    /// How long the NMS's relay grants last.
    pub relay_lifetime: Duration,
    /// The cloud listens for QUIC and TCP on [`CLOUD_LEG_PORT`] and says so
    /// in Login and relay offers (on by default).
    pub cloud_legs: bool,
    /// How long a node's control task takes to see a non-data datagram
    /// (signaling, handshake) after the data plane read it; data packets
    /// are opened at once, as by the daemon's receive loop. Zero by
    /// default.
    pub control_lag: Duration,
    /// Routers on the internet between any two of its hosts (NAT routers'
    /// WANs, global nodes, the cloud): only a packet sent with a TTL
    /// notices them (it dies past its own NAT when its TTL is that NAT's
    /// hop plus no more than these). One by default, as between any two
    /// homes; zero puts every NAT on one link.
    pub internet_hops: u8,
}

impl SimConfig {
    /// `n` IPv4 nodes with their own certificates, default configs, 10 ms
    /// links without loss.
    pub fn new(seed: u64, n: usize) -> Self {
        Self {
            seed,
            nodes: (1..=n).map(NodeSpec::new).collect(),
            node: NodeConfig::default(),
            nms: NmsConfig::default(),
            link: Link::default(),
            nats: Vec::new(),
            trs: 0,
            relay_lifetime: Duration::from_secs(3600),
            cloud_legs: true,
            control_lag: Duration::ZERO,
            internet_hops: 1,
        }
    }
}

/// What became of a packet the moment it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// In flight; arrives after the link's latency.
    Delivered,
    /// Lost to the link's random loss.
    Lost,
    /// Dropped by a test's rule.
    Dropped,
    /// Nobody has the destination address, or the sender has no address of
    /// its family, or it is another LAN's private address, or a NAT's own
    /// public address from its LAN (no hairpinning).
    Unroutable,
    /// Arrived at a NAT's public address and dropped there: no live
    /// mapping for it from that source (set on arrival).
    Filtered,
    /// Stopped by the sender's [`Firewall`], or on arrival by the
    /// receiver's (no flow it let out matches).
    Firewalled,
    /// Arrived where nothing listens for it (a closed port, no leg for it,
    /// a leg the cloud does not know), set on arrival.
    Refused,
    /// Its TTL ran out on the way (after the sender's NAT, if it passed
    /// that: the NAT's mapping was made).
    Expired,
}

/// One packet on the wire, decoded as far as an observer holding the
/// session database can (signaling is opened, tunnels are not).
#[derive(Debug, Clone)]
pub struct WireRecord {
    pub at: Duration,
    /// Native UDP, or a QUIC or TCP leg.
    pub transport: Transport,
    /// The source on the wire: for a packet from behind a NAT, its mapping.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The private source a NAT translated, if one did.
    pub lan_src: Option<SocketAddr>,
    /// "RegistrationRequest" … for signaling, else "TunnelRequest",
    /// "TunnelResponse", "Data", "Punch", "RelayBind", "RelayBindAck",
    /// "RelayedTunnelRequest", "RelayedTunnelResponse", "RelayedData",
    /// "LegOpen" / "LegAccept" (a leg's handshake) or "Unknown".
    pub kind: &'static str,
    pub message: Option<Message>,
    /// The signaling transaction ID, when the packet could be opened.
    pub txid: Option<u64>,
    /// A hash of the bytes, to tell a retransmitted copy from a new packet.
    pub digest: u64,
    pub fate: Fate,
    /// The bytes, as an attacker on the wire would capture them.
    pub payload: Vec<u8>,
}

/// What a drop rule sees (addresses as on the wire, after any NAT).
pub struct WireInfo {
    pub transport: Transport,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub lan_src: Option<SocketAddr>,
    pub kind: &'static str,
    /// The datagram's payload length (a leg's framing not counted).
    pub len: usize,
}

pub type DropRule = Box<dyn FnMut(&WireInfo) -> bool>;

/// Names a rule for [`Sim::remove_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

pub struct Registered {
    pub at: Duration,
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub observed: SocketAddr,
}

pub struct DnsAnswer {
    pub at: Duration,
    pub response: DnsMessage,
}

impl DnsAnswer {
    pub fn rcode(&self) -> ResponseCode {
        self.response.metadata.response_code
    }

    pub fn addresses(&self) -> Vec<IpAddr> {
        self.response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }
}

/// An inner packet the simulated data plane opened.
pub struct Received {
    pub at: Duration,
    /// The tunnel it came through.
    pub peer: String,
    pub packet: Vec<u8>,
    /// The path it came on.
    pub path: Path,
}

pub struct SimNode {
    pub index: usize,
    pub name: String,
    pub fqdn: String,
    pub addrs: Vec<SocketAddr>,
    pub nms: SocketAddr,
    pub node: Node,
    pub cert_serial: u64,
    /// Answer NeedLogin with a fresh session at once (the AS always works).
    pub auto_login: bool,
    pub session: Option<SessionInfo>,
    pub logins: u32,
    pub need_logins: Vec<(Duration, LoginReason)>,
    pub registered: Vec<Registered>,
    pub dns: BTreeMap<u64, DnsAnswer>,
    pub tunnel_ups: Vec<(Duration, TunnelHandle)>,
    pub tunnel_downs: Vec<(Duration, String)>,
    /// `cyphonic ping` answers: (time, client, result).
    /// Every general-node list this node (an adapter) reported: (time,
    /// version, list).
    pub general_nodes: Vec<(Duration, u64, Vec<GeneralNodeInfo>)>,
    /// Spare ports (birthday punching) open now: spare `k` is port
    /// `SPARE_BASE + k` of the node's address.
    pub spares: BTreeSet<u16>,
    /// Every `SparePorts` release: (time, the ports kept).
    pub spare_releases: Vec<(Duration, Vec<u16>)>,
    pub pongs: Vec<(
        Duration,
        u64,
        Result<cyphonic_node::core::Pong, cyphonic_node::core::PingError>,
    )>,
    pub received: Vec<Received>,
    /// Data packets the data plane dropped, for any
    /// [`datapath::DropReason`].
    pub data_rx_bad: u64,
    /// Of those, the ones the replay window refused.
    pub data_rx_replayed: u64,
    /// Packets the route's policy refused: opened but not let in, and not
    /// let out before sealing.
    pub data_rx_policy_denied: u64,
    pub data_tx_policy_denied: u64,
    /// Tunnel keepalives (empty data packets) opened.
    pub keepalives: u64,
    /// Paths reported to `handle_path_seen`: (time, peer, path).
    pub path_reports: Vec<(Duration, String, Path)>,
    /// Tunnel messages (path probes and acks) handed to the core.
    pub tunnel_messages: u64,
    /// Bounds the reports: one per (tunnel, path) at most every
    /// [`datapath::PATH_REPORT_INTERVAL`], as the data plane's.
    reports: PathReports,
    /// The NAT its IPv4 is behind.
    pub nat: Option<usize>,
    /// Its firewall now ([`Sim::set_firewall`]).
    pub firewall: Firewall,
    /// Flows the firewall let out: (protocol, local, remote) -> last packet.
    fw_flows: BTreeMap<(Proto, SocketAddr, SocketAddr), Instant>,
    /// Its QUIC listener's port (0: none).
    pub quic_port: u16,
    /// Its legs (dialed or accepted), by transport and remote address.
    pub legs: BTreeMap<(Transport, SocketAddr), SimLeg>,
    quic_dial_port: u16,
    next_tcp_port: u16,
    /// Leg dials started, and of them the ones that gave up.
    pub leg_dials: u64,
    pub leg_dial_failures: u64,
    /// Datagrams its hub dropped: a dialing leg's queue full, or the
    /// address refused after a failed dial.
    pub leg_drops: u64,
    /// The data plane's tunnel table (identity 0), as `dataplane::Tables`
    /// keeps it.
    pub table: TunnelTable,
    next_client: u64,
}

impl SimNode {
    /// The tunnel the data plane would use for `fqdn`, if any.
    pub fn tunnel_to(&self, fqdn: &str) -> Option<Arc<TunnelHandle>> {
        let ups = self.tunnel_ups.iter().rev();
        let vip = ups.filter(|(_, t)| t.fqdn == fqdn).map(|(_, t)| t.vip4);
        vip.filter_map(|v| self.table.by_destination(0, IpAddr::V4(v)))
            .next()
    }

    /// A tunnel with `fqdn` was installed and sends: a responder's keys
    /// count once the initiator's first packet confirmed them.
    pub fn tunnel_up_with(&self, fqdn: &str) -> bool {
        self.tunnel_ups
            .iter()
            .any(|(_, t)| t.fqdn == fqdn && t.confirmed.load(Ordering::Relaxed))
    }

    /// Handshakes that installed keys (distinct receive indexes among the
    /// tunnels installed; a confirmation or path change installs the same
    /// keys again).
    pub fn handshakes(&self) -> usize {
        let indexes: std::collections::BTreeSet<_> = self
            .tunnel_ups
            .iter()
            .map(|(_, t)| t.recv.local_index())
            .collect();
        indexes.len()
    }

    pub fn received_from(&self, fqdn: &str) -> Vec<&[u8]> {
        self.received
            .iter()
            .filter(|r| r.peer == fqdn)
            .map(|r| r.packet.as_slice())
            .collect()
    }
}

/// One leg of a node's hub.
#[derive(Debug)]
pub struct SimLeg {
    /// Our port: the dialing socket's, or the QUIC listener's for a leg a
    /// peer dialed.
    pub local_port: u16,
    pub state: LegState,
    /// When something last came on it (a dialing leg: when the dial began).
    pub last_rx: Instant,
}

#[derive(Debug)]
pub enum LegState {
    /// The handshake is under way; datagrams wait.
    Dialing {
        started: Instant,
        next_open: Instant,
        interval: Duration,
        queue: Vec<Vec<u8>>,
    },
    Up,
    /// The dial gave up: sends to the address are refused until then.
    Failed {
        until: Instant,
    },
}

/// A leg's handshake, standing for QUIC's Initial/Handshake flights or
/// TCP's SYN and the TLS handshake: one round trip, no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegCtl {
    Open,
    Accept,
}

struct InFlight {
    transport: Transport,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
    ctl: Option<LegCtl>,
    /// Its record in [`Sim::wire`].
    wire: usize,
}

/// Where a packet goes.
#[derive(Clone, Copy)]
enum Endpoint {
    Nms,
    Node(usize),
    Trs(usize),
    /// Cloud host `k`'s QUIC and TCP listeners on [`CLOUD_LEG_PORT`].
    Edge(usize),
}

/// One conntrack entry: inside endpoint and remote endpoint, mapped to a
/// public port.
#[derive(Debug, Clone, Copy)]
struct Conntrack {
    port: u16,
    last_used: Instant,
}

/// A NAT box in the simulation (see [`NatSpec`]).
pub struct SimNat {
    pub spec: NatSpec,
    pub public: IpAddr,
    /// (protocol, inside, remote) -> entry.
    entries: BTreeMap<(Proto, SocketAddr, SocketAddr), Conntrack>,
    /// Without an input firewall: unsolicited packets conntrack recorded
    /// for the router itself, (protocol, remote, public port) -> last seen.
    own: BTreeMap<(Proto, SocketAddr, u16), Instant>,
    /// Port forwards (what a PCP / NAT-PMP mapping installs, as
    /// miniupnpd's DNAT rules do): (protocol, public port) -> inside.
    pub forwards: BTreeMap<(Proto, u16), SocketAddr>,
    rng: StdRng,
    /// Mappings made, inbound packets filtered, entries expired.
    pub mappings: u64,
    pub filtered: u64,
    pub expired: u64,
}

impl SimNat {
    /// How long an idle entry of `proto` lives: the UDP timeout, or
    /// conntrack's established-TCP timeout (days; here two hours).
    fn timeout(&self, proto: Proto) -> Duration {
        match proto {
            Proto::Udp => self.spec.udp_timeout,
            Proto::Tcp => FIREWALL_TCP_FLOW,
        }
    }

    fn expire(&mut self, now: Instant) {
        let (udp, tcp) = (self.timeout(Proto::Udp), self.timeout(Proto::Tcp));
        let timeout = |p: Proto| if p == Proto::Udp { udp } else { tcp };
        let before = self.entries.len();
        self.entries
            .retain(|k, e| now.saturating_duration_since(e.last_used) < timeout(k.0));
        self.expired += (before - self.entries.len()) as u64;
        self.own
            .retain(|k, t| now.saturating_duration_since(*t) < timeout(k.0));
    }

    /// The public source of a packet from `inside` to `remote`, making the
    /// mapping if there is none.
    fn outbound(
        &mut self,
        now: Instant,
        proto: Proto,
        inside: SocketAddr,
        remote: SocketAddr,
    ) -> SocketAddr {
        self.expire(now);
        if let Some(e) = self.entries.get_mut(&(proto, inside, remote)) {
            e.last_used = now;
            return SocketAddr::new(self.public, e.port);
        }
        // The reply tuple (remote -> public:port) must be unique, also
        // against what conntrack recorded for the router itself. Across
        // protocols too (stricter than conntrack), so a remote never sees
        // one public port for two of a node's legs.
        let (entries, own) = (&self.entries, &self.own);
        let taken = |port: u16| {
            own.keys().any(|(_, r, p)| *r == remote && *p == port)
                || entries
                    .iter()
                    .any(|((_, _, r), e)| *r == remote && e.port == port)
        };
        let port = match self.spec.mapping {
            NatMapping::Masquerade if !taken(inside.port()) => inside.port(),
            _ => loop {
                let p: u16 = self.rng.gen_range(1024..=65535);
                if !taken(p) {
                    break p;
                }
            },
        };
        self.entries.insert(
            (proto, inside, remote),
            Conntrack {
                port,
                last_used: now,
            },
        );
        self.mappings += 1;
        SocketAddr::new(self.public, port)
    }

    /// The inside endpoint a packet from `remote` to public `port` goes to,
    /// if a live entry lets it in.
    fn inbound(
        &mut self,
        now: Instant,
        proto: Proto,
        remote: SocketAddr,
        port: u16,
    ) -> Option<SocketAddr> {
        self.expire(now);
        let found = self
            .entries
            .iter_mut()
            .find(|((p, _, r), e)| *p == proto && *r == remote && e.port == port);
        match found {
            Some(((_, inside, _), e)) => {
                e.last_used = now;
                Some(*inside)
            }
            None if self.forwards.contains_key(&(proto, port)) => {
                // DNAT: the flow's entry, whose replies leave from the
                // forwarded port.
                let inside = self.forwards[&(proto, port)];
                self.entries.insert(
                    (proto, inside, remote),
                    Conntrack {
                        port,
                        last_used: now,
                    },
                );
                Some(inside)
            }
            None => {
                self.filtered += 1;
                if !self.spec.input_firewall {
                    self.own.insert((proto, remote, port), now);
                }
                None
            }
        }
    }

    /// The live UDP mappings (native UDP and QUIC): (inside, remote,
    /// public port).
    pub fn mappings_now(&self, now: Instant) -> Vec<(SocketAddr, SocketAddr, u16)> {
        self.entries
            .iter()
            .filter(|((p, _, _), e)| {
                *p == Proto::Udp
                    && now.saturating_duration_since(e.last_used) < self.spec.udp_timeout
            })
            .map(|((_, i, r), e)| (*i, *r, e.port))
            .collect()
    }
}

/// A TRS in the simulation, driven through [`Trs::handle_datagram`].
pub struct SimTrs {
    pub v4: SocketAddr,
    pub v6: SocketAddr,
    pub trs: Trs,
    pub drops: Vec<(Duration, SocketAddr, DropReason)>,
}

pub struct Sim {
    pub seed: u64,
    base: Instant,
    pub now: Instant,
    wall: SystemTime,
    rng: StdRng,
    nms_config: NmsConfig,
    pub nms: Nms,
    pub nms_events: Vec<(Duration, NmsEvent)>,
    /// The database the AS writes and the NMS reads: session ID -> session.
    pub db: BTreeMap<cyphonic_proto::SessionId, SessionInfo>,
    /// The general nodes each adapter (by device ID, `device-n<i>`)
    /// serves, as the cloud's store holds them; the NMS's lookups are
    /// answered from here.
    pub general: BTreeMap<String, Vec<GeneralNodeInfo>>,
    pub nodes: Vec<SimNode>,
    pub nats: Vec<SimNat>,
    pub trs: Vec<SimTrs>,
    addr_book: HashMap<SocketAddr, Endpoint>,
    /// Private IPv4 address -> the NAT whose LAN it is on.
    lan: HashMap<IpAddr, usize>,
    /// Public address -> the NAT that owns it.
    nat_by_public: HashMap<IpAddr, usize>,
    pub link: Link,
    links: HashMap<(IpAddr, IpAddr), Link>,
    rules: Vec<(RuleId, DropRule)>,
    next_rule: usize,
    pub wire: Vec<WireRecord>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, InFlight>,
    /// Datagrams on their way from a node's data plane to its control task
    /// ([`SimConfig::control_lag`]): when, the node's slot, whence, bytes.
    lagged: VecDeque<(Instant, usize, Leg, Vec<u8>)>,
    control_lag: Duration,
    internet_hops: u8,
    /// The TTL of the transmit `send_on` puts on the wire next.
    ttl_next: Option<u8>,
    next_packet: u64,
    /// Hash of every transmit (time, source, destination, bytes) in order.
    transmit_hash: std::collections::hash_map::DefaultHasher,
    steps: u64,
    /// A guard against a livelock: `step` panics past this many.
    max_steps: u64,
    /// Whether this run's packets are pinned in `goldens.txt`.
    pinned: bool,
    /// Every [`Sim::move_node`]: (time, node index, new addresses).
    pub moves: Vec<(Duration, usize, Vec<SocketAddr>)>,
    /// The cloud listens on [`CLOUD_LEG_PORT`] ([`SimConfig::cloud_legs`]).
    pub cloud_legs: bool,
    /// Per cloud host (host `k` has the addresses of TRS `k`; host 0 also
    /// runs the NMS): the transport of the leg each remote address last
    /// sent on, as `cloud::edge::CloudHub` keeps it.
    pub edges: Vec<BTreeMap<SocketAddr, Transport>>,
}

/// Upper bound on driver steps in one simulation, so a timer that never
/// advances fails the test instead of hanging it.
const MAX_STEPS: u64 = 5_000_000;

impl Sim {
    pub fn new(mut config: SimConfig) -> Self {
        let pki = pki();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let base = Instant::now();
        let wall = pki.wall;
        assert!(config.trs <= 2, "the simulation has at most two TRS");
        if config.trs > 0 {
            config.nms.relay = Some(RelayConfig {
                secret: RELAY_SECRET.to_vec(),
                servers: (0..config.trs)
                    .flat_map(|k| [trs_v4(k), trs_v6(k)])
                    .collect(),
                lifetime: config.relay_lifetime,
                wall_origin: (base, micros(wall) / 1_000_000),
                quic_port: if config.cloud_legs { CLOUD_LEG_PORT } else { 0 },
                tcp_port: if config.cloud_legs { CLOUD_LEG_PORT } else { 0 },
            });
        }
        let nms = Nms::new(config.nms.clone(), rng.gen(), micros(wall));
        let mut addr_book = HashMap::new();
        addr_book.insert(NMS_V4, Endpoint::Nms);
        addr_book.insert(NMS_V6, Endpoint::Nms);
        if config.nms.probe_port != 0 {
            for nms in [NMS_V4, NMS_V6] {
                addr_book.insert(
                    SocketAddr::new(nms.ip(), config.nms.probe_port),
                    Endpoint::Nms,
                );
            }
        }
        let mut lan = HashMap::new();
        let mut nodes = Vec::new();
        for (slot, spec) in config.nodes.iter().enumerate() {
            let name = format!("n{}", spec.index);
            let (cert, verifier): (&NodeCert, _) = match spec.cert {
                Cert::Own => (&pki.certs[&name], pki.verifier.clone()),
                Cert::Foreign => {
                    assert_eq!(name, "n3", "the fixture has a foreign certificate for n3");
                    (&pki.foreign_n3, pki.foreign_verifier.clone())
                }
                Cert::Expired => {
                    assert_eq!(name, "n2", "the fixture has an expired certificate for n2");
                    (&pki.expired_n2, pki.verifier.clone())
                }
                Cert::Of(other) => (&pki.certs[&format!("n{other}")], pki.verifier.clone()),
                Cert::VipsOf(other) => {
                    assert_eq!(
                        (name.as_str(), other),
                        ("n2", 4),
                        "the fixture has n2 with n4's VIPs"
                    );
                    (&pki.n2_with_vips_of_n4, pki.verifier.clone())
                }
            };
            let static_keys = StaticKeypair::generate(&mut rng);
            let binding_sig = cert.key.sign(&binding_message(&static_keys.public));
            let identity = LocalIdentity {
                static_keys,
                cert_chain_der: cert.chain.clone(),
                binding_sig,
            };
            let v4 = match spec.nat {
                Some(k) => {
                    assert!(k < config.nats.len(), "no NAT {k}");
                    lan.insert(lan_v4(k, spec.index).ip(), k);
                    lan_v4(k, spec.index)
                }
                None => node_v4(spec.index),
            };
            let addrs = match spec.stack {
                Stack::V4 => vec![v4],
                Stack::V6 => vec![node_v6(spec.index)],
                Stack::Dual => vec![v4, node_v6(spec.index)],
            };
            let nms_addr = match spec.stack {
                Stack::V6 => NMS_V6,
                _ => NMS_V4,
            };
            for a in &addrs {
                addr_book.insert(*a, Endpoint::Node(slot));
            }
            let mut node_config = config.node.clone();
            if let Some(port) = spec.quic_port {
                node_config.quic_port = port;
            }
            if let Some(t) = spec.transport {
                node_config.transport = Some(t);
            }
            let quic_port = node_config.quic_port;
            let mut node = Node::new(
                node_config,
                identity,
                verifier,
                rng.gen(),
                micros(wall),
                base,
                wall,
            );
            node.handle_local_addrs(base, addrs.clone());
            nodes.push(SimNode {
                index: spec.index,
                fqdn: fqdn(&name),
                name,
                addrs,
                nms: nms_addr,
                node,
                // The serial the AS recorded at enrollment: the node's own,
                // whatever certificate it presents.
                cert_serial: serial(&format!("n{}", spec.index)),
                auto_login: true,
                session: None,
                logins: 0,
                need_logins: Vec::new(),
                registered: Vec::new(),
                dns: BTreeMap::new(),
                tunnel_ups: Vec::new(),
                tunnel_downs: Vec::new(),
                general_nodes: Vec::new(),
                spares: BTreeSet::new(),
                spare_releases: Vec::new(),
                pongs: Vec::new(),
                received: Vec::new(),
                data_rx_bad: 0,
                data_rx_replayed: 0,
                data_rx_policy_denied: 0,
                data_tx_policy_denied: 0,
                keepalives: 0,
                path_reports: Vec::new(),
                tunnel_messages: 0,
                reports: PathReports::default(),
                nat: spec.nat,
                firewall: spec.firewall,
                fw_flows: BTreeMap::new(),
                quic_port,
                legs: BTreeMap::new(),
                quic_dial_port: QUIC_DIAL_PORT + spec.index as u16,
                next_tcp_port: TCP_DIAL_PORT + 100 * spec.index as u16,
                leg_dials: 0,
                leg_dial_failures: 0,
                leg_drops: 0,
                table: TunnelTable::default(),
                next_client: 1,
            });
        }
        let mut nat_by_public = HashMap::new();
        let nats = config
            .nats
            .iter()
            .enumerate()
            .map(|(k, spec)| {
                nat_by_public.insert(nat_public(k), k);
                SimNat {
                    spec: *spec,
                    public: nat_public(k),
                    entries: BTreeMap::new(),
                    own: BTreeMap::new(),
                    forwards: BTreeMap::new(),
                    rng: StdRng::seed_from_u64(rng.gen()),
                    mappings: 0,
                    filtered: 0,
                    expired: 0,
                }
            })
            .collect();
        let trs = (0..config.trs)
            .map(|k| {
                addr_book.insert(trs_v4(k), Endpoint::Trs(k));
                addr_book.insert(trs_v6(k), Endpoint::Trs(k));
                SimTrs {
                    v4: trs_v4(k),
                    v6: trs_v6(k),
                    trs: Trs::new(TrsConfig {
                        secret: RELAY_SECRET.to_vec(),
                        ..TrsConfig::default()
                    }),
                    drops: Vec::new(),
                }
            })
            .collect();
        Self {
            seed: config.seed,
            base,
            now: base,
            wall,
            rng,
            nms_config: config.nms,
            nms,
            nms_events: Vec::new(),
            db: BTreeMap::new(),
            general: BTreeMap::new(),
            nodes,
            nats,
            trs,
            addr_book,
            lan,
            nat_by_public,
            link: config.link,
            links: HashMap::new(),
            rules: Vec::new(),
            next_rule: 0,
            wire: Vec::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            lagged: VecDeque::new(),
            control_lag: config.control_lag,
            internet_hops: config.internet_hops,
            ttl_next: None,
            next_packet: 0,
            transmit_hash: Default::default(),
            steps: 0,
            max_steps: MAX_STEPS,
            pinned: true,
            moves: Vec::new(),
            cloud_legs: config.cloud_legs,
            edges: vec![BTreeMap::new(); config.trs.max(1)],
        }
    }

    /// Starts every node (each asks to log in, and is logged in at once).
    pub fn start(&mut self) {
        for slot in 0..self.nodes.len() {
            self.nodes[slot].node.start();
            self.drain_node(slot);
        }
    }

    /// Raises the livelock guard for a simulation of many virtual days,
    /// whose packets are not pinned in `goldens.txt` (run on demand, its
    /// hash would pin nothing the suite checks).
    pub fn set_max_steps(&mut self, max: u64) {
        self.max_steps = max;
        self.pinned = false;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Time since the simulation began.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// The slot of node `n<index>`.
    pub fn slot(&self, index: usize) -> usize {
        self.nodes
            .iter()
            .position(|n| n.index == index)
            .unwrap_or_else(|| panic!("no node n{index}"))
    }

    pub fn node(&self, index: usize) -> &SimNode {
        &self.nodes[self.slot(index)]
    }

    /// The wall clock in Unix seconds, as the TRS reads it.
    pub fn unix_now(&self) -> u64 {
        micros(self.wall + self.elapsed()) / 1_000_000
    }

    // ---- network -------------------------------------------------------

    /// Overrides the link from `src` to `dst` (one direction).
    pub fn set_link(&mut self, src: IpAddr, dst: IpAddr, link: Link) {
        self.links.insert((src, dst), link);
    }

    /// Sets the random loss of every link.
    pub fn set_loss(&mut self, loss: f64) {
        self.link.loss = loss;
        for l in self.links.values_mut() {
            l.loss = loss;
        }
    }

    /// Drops every packet for which `rule` says true, until removed.
    pub fn add_rule(&mut self, rule: impl FnMut(&WireInfo) -> bool + 'static) -> RuleId {
        let id = RuleId(self.next_rule);
        self.next_rule += 1;
        self.rules.push((id, Box::new(rule)));
        id
    }

    pub fn remove_rule(&mut self, id: RuleId) {
        self.rules.retain(|(i, _)| *i != id);
    }

    /// Drops everything to and from TRS `k` (both its addresses, and relay
    /// packets on its host's legs), from now on: the TRS is dead. TRS 0
    /// shares its host with the NMS, whose legs stay.
    pub fn kill_trs(&mut self, k: usize) -> RuleId {
        let (v4, v6) = (trs_v4(k), trs_v6(k));
        let legs = [v4, v6].map(|a| SocketAddr::new(a.ip(), CLOUD_LEG_PORT));
        let whole_host = k > 0;
        self.add_rule(move |w| {
            let on_host = |a: &SocketAddr| [v4.ip(), v6.ip()].contains(&a.ip());
            let relay = w.kind.starts_with("Relay");
            [v4, v6].contains(&w.src)
                || [v4, v6].contains(&w.dst)
                || (whole_host && (on_host(&w.src) || on_host(&w.dst)))
                || (relay && (legs.contains(&w.src) || legs.contains(&w.dst)))
        })
    }

    /// Sends a packet as if from `src`, whoever owns it: an attacker's
    /// forged packet. It takes the network like any other.
    pub fn inject(&mut self, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        self.send(src, dst, payload);
    }

    /// Node `n<index>`'s firewall from now on. Flows the old one let out
    /// are forgotten (as after `conntrack -F`): only what the new rules let
    /// out may be answered.
    pub fn set_firewall(&mut self, index: usize, firewall: Firewall) {
        let slot = self.slot(index);
        let n = &mut self.nodes[slot];
        n.firewall = firewall;
        n.fw_flows.clear();
    }

    /// Drops the first `count` packets of `kind` (a [`WireRecord::kind`]).
    pub fn drop_first(&mut self, kind: &'static str, count: usize) {
        let mut left = count;
        self.add_rule(move |w| {
            if w.kind == kind && left > 0 {
                left -= 1;
                true
            } else {
                false
            }
        });
    }

    /// Drops everything node `n<index>` sends or is sent (at its
    /// addresses, any port: its legs too), from now on.
    pub fn silence(&mut self, index: usize) {
        let ips: Vec<IpAddr> = self.node(index).addrs.iter().map(|a| a.ip()).collect();
        self.add_rule(move |w| {
            ips.contains(&w.src.ip())
                || ips.contains(&w.dst.ip())
                || w.lan_src.is_some_and(|s| ips.contains(&s.ip()))
        });
    }

    // ---- mobility ------------------------------------------------------

    /// A NAT box that was not there at the start, for a node to move
    /// behind; returns its index (its public address is [`nat_public`]).
    pub fn add_nat(&mut self, spec: NatSpec) -> usize {
        let k = self.nats.len();
        self.nat_by_public.insert(nat_public(k), k);
        self.nats.push(SimNat {
            spec,
            public: nat_public(k),
            entries: BTreeMap::new(),
            own: BTreeMap::new(),
            forwards: BTreeMap::new(),
            rng: StdRng::seed_from_u64(self.rng.gen()),
            mappings: 0,
            filtered: 0,
            expired: 0,
        });
        k
    }

    /// Moves node `n<index>` to another attachment at once: its old
    /// addresses go (packets still in flight to them are lost), the new ones
    /// take their place on the network, and the core hears of them as the
    /// daemon tells it after a netlink event: `handle_local_addrs` with the
    /// host's usable addresses and the tunnel port, IPv6 first. Returns the
    /// new addresses.
    pub fn move_node(&mut self, index: usize, to: Attachment) -> Vec<SocketAddr> {
        let slot = self.slot(index);
        let old = std::mem::take(&mut self.nodes[slot].addrs);
        for a in &old {
            if matches!(self.addr_book.get(a), Some(Endpoint::Node(s)) if *s == slot) {
                self.addr_book.remove(a);
            }
            if self.lan.contains_key(&a.ip()) {
                self.lan.remove(&a.ip());
            }
        }
        let port = |ip: IpAddr| SocketAddr::new(ip, TUNNEL_PORT);
        let (addrs, nat) = match to {
            Attachment::V4(v4) => (vec![port(v4.into())], None),
            Attachment::V6(v6) => (vec![port(v6.into())], None),
            Attachment::Dual(v4, v6) => (vec![port(v4.into()), port(v6.into())], None),
            Attachment::Behind { nat, v6 } => {
                assert!(nat < self.nats.len(), "no NAT {nat}");
                let private = lan_v4(nat, index);
                self.lan.insert(private.ip(), nat);
                let mut addrs = vec![private];
                addrs.extend(v6.map(|v6| port(v6.into())));
                (addrs, Some(nat))
            }
        };
        for a in &addrs {
            let previous = self.addr_book.insert(*a, Endpoint::Node(slot));
            assert!(
                previous.is_none() || old.contains(a),
                "{a} belongs to another endpoint"
            );
        }
        let n = &mut self.nodes[slot];
        n.addrs = addrs.clone();
        n.nat = nat;
        // As `Hub::rebind`: QUIC legs migrate to the new address, TCP
        // connections are gone and are dialed again.
        n.legs.retain(|(t, _), _| *t != Transport::Tcp);
        // A later Login goes to the NMS over a family the node still has.
        if !addrs.iter().any(|a| a.is_ipv4() == n.nms.is_ipv4()) {
            n.nms = if n.nms.is_ipv4() { NMS_V6 } else { NMS_V4 };
        }
        let mut reported = addrs.clone();
        reported.sort_by_key(|a| (a.is_ipv4(), *a));
        self.moves.push((self.elapsed(), index, addrs.clone()));
        self.nodes[slot].node.handle_local_addrs(self.now, reported);
        self.drain_node(slot);
        addrs
    }

    /// As `move_node`, with the link down first: the core hears that the
    /// host has no usable address at all, then the new ones.
    /// Node `n<index>`'s link goes down: it has no address (netlink
    /// reports the flush) and nothing it sends leaves. A later
    /// [`Sim::move_node`] brings it up on a network.
    pub fn link_down(&mut self, index: usize) {
        let slot = self.slot(index);
        let old = std::mem::take(&mut self.nodes[slot].addrs);
        for a in &old {
            if matches!(self.addr_book.get(a), Some(Endpoint::Node(s)) if *s == slot) {
                self.addr_book.remove(a);
            }
            self.lan.remove(&a.ip());
        }
        self.nodes[slot]
            .node
            .handle_local_addrs(self.now, Vec::new());
        self.drain_node(slot);
    }

    pub fn move_node_link_down(&mut self, index: usize, to: Attachment) -> Vec<SocketAddr> {
        let slot = self.slot(index);
        self.nodes[slot]
            .node
            .handle_local_addrs(self.now, Vec::new());
        self.drain_node(slot);
        self.move_node(index, to)
    }

    /// Whether node `n<index>` receives what is sent to `addr` now: one of
    /// its own addresses, or a live mapping of its NAT for one of them.
    pub fn holds(&self, index: usize, addr: SocketAddr) -> bool {
        let n = self.node(index);
        if n.addrs.contains(&addr) {
            return true;
        }
        let Some(&k) = self.nat_by_public.get(&addr.ip()) else {
            return false;
        };
        self.nats[k]
            .mappings_now(self.now)
            .iter()
            .any(|(inside, _, port)| *port == addr.port() && n.addrs.contains(inside))
    }

    /// Packets of `kind` sent so far, and how many of them were delivered.
    pub fn count(&self, kind: &str) -> (usize, usize) {
        let of_kind = self.wire.iter().filter(|w| w.kind == kind);
        let sent = of_kind.clone().count();
        let delivered = of_kind.filter(|w| w.fate == Fate::Delivered).count();
        (sent, delivered)
    }

    /// Packets sent and delivered, of every kind.
    pub fn totals(&self) -> (usize, usize) {
        let delivered = self
            .wire
            .iter()
            .filter(|w| w.fate == Fate::Delivered)
            .count();
        (self.wire.len(), delivered)
    }

    /// A hash of every packet sent so far, with its time and addresses.
    pub fn transmit_hash(&self) -> u64 {
        self.transmit_hash.finish()
    }

    /// Native UDP from `src`, not from a node's own stack (the cloud's
    /// sockets, an attacker).
    fn send(&mut self, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        self.send_on(Transport::Udp, src, dst, payload, None, None);
    }

    /// Which cloud host has `ip`: host `k` has TRS `k`'s addresses (host 0
    /// is also the NMS's).
    fn cloud_host(&self, ip: IpAddr) -> Option<usize> {
        (0..self.edges.len()).find(|&k| ip == trs_v4(k).ip() || ip == trs_v6(k).ip())
    }

    /// Who receives a packet of `transport` at `dst` (after any NAT).
    /// Native UDP goes to the socket at that very address; QUIC and TCP to
    /// the cloud's 443, or to the node owning the address (which may have
    /// no socket on that port: the packet is refused there).
    fn listener(&self, dst: SocketAddr, transport: Transport) -> Option<Endpoint> {
        if transport == Transport::Udp {
            if let Some(e) = self.addr_book.get(&dst) {
                return Some(*e);
            }
            // A node's spare port (birthday punching) opened by a send.
            return match self.addr_book.get(&SocketAddr::new(dst.ip(), TUNNEL_PORT)) {
                Some(Endpoint::Node(slot))
                    if self.nodes[*slot]
                        .spares
                        .contains(&dst.port().wrapping_sub(SPARE_BASE)) =>
                {
                    Some(Endpoint::Node(*slot))
                }
                _ => None,
            };
        }
        if let Some(k) = self.cloud_host(dst.ip()) {
            return (self.cloud_legs && dst.port() == CLOUD_LEG_PORT).then_some(Endpoint::Edge(k));
        }
        match self.addr_book.get(&SocketAddr::new(dst.ip(), TUNNEL_PORT)) {
            Some(Endpoint::Node(slot)) => Some(Endpoint::Node(*slot)),
            _ => None,
        }
    }

    /// Puts a packet on the wire. Its fate is decided now: the sending
    /// node's firewall (`from_node`), routing, the sender's NAT, the test's
    /// rules, the link's loss (TCP loses nothing: it retransmits below
    /// us, and the latency hides that).
    fn send_on(
        &mut self,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
        ctl: Option<LegCtl>,
        from_node: Option<usize>,
    ) {
        let at = self.elapsed();
        transmit_fingerprint(
            &mut self.transmit_hash,
            at,
            transport,
            src,
            dst,
            &payload,
            ctl,
        );

        let (kind, message, txid) = self.decode(dst, &payload, ctl);
        let proto = Proto::from(transport);
        let ttl = self.ttl_next.take();
        let firewalled = match from_node {
            Some(slot) => {
                let n = &mut self.nodes[slot];
                let allowed = n.firewall.allows(transport, dst);
                if allowed && n.firewall != Firewall::Open {
                    n.fw_flows.insert((proto, src, dst), self.now);
                }
                !allowed
            }
            None => false,
        };
        // The sender's NAT translates a packet that leaves its LAN; private
        // addresses are reachable only from their own LAN.
        let routable =
            self.listener(dst, transport).is_some() || self.nat_by_public.contains_key(&dst.ip());
        let (mut wire_src, mut lan_src, mut unroutable) = (src, None, !routable);
        match self.lan.get(&src.ip()).copied() {
            Some(k) if self.lan.get(&dst.ip()) == Some(&k) => {}
            Some(k) => {
                if self.lan.contains_key(&dst.ip()) || dst.ip() == self.nats[k].public {
                    unroutable = true;
                } else if routable && !firewalled && ttl != Some(1) {
                    // (A TTL of 1 dies at the NAT, before it maps.)
                    wire_src = self.nats[k].outbound(self.now, proto, src, dst);
                    lan_src = Some(src);
                }
            }
            None => unroutable |= self.lan.contains_key(&dst.ip()),
        }
        // Routers a packet crosses before its destination host (a NAT
        // router's public address counts as one): its own NAT and the
        // internet's. It dies at the first it reaches with a TTL of 1.
        let hops = u16::from(self.lan.contains_key(&src.ip()) && lan_src.is_some())
            + u16::from(self.internet_hops);
        let expired = ttl.is_some_and(|t| u16::from(t) <= hops)
            || (ttl == Some(1) && self.lan.contains_key(&src.ip()));
        let info = WireInfo {
            transport,
            src: wire_src,
            dst,
            lan_src,
            kind,
            len: payload.len(),
        };
        let link = self
            .links
            .get(&(wire_src.ip(), dst.ip()))
            .copied()
            .unwrap_or(self.link);
        let lossy = transport != Transport::Tcp && link.loss > 0.0;
        let fate = if firewalled {
            Fate::Firewalled
        } else if unroutable {
            Fate::Unroutable
        } else if expired {
            Fate::Expired
        } else if self.rules.iter_mut().any(|(_, r)| r(&info)) {
            Fate::Dropped
        } else if lossy && self.rng.gen_bool(link.loss) {
            Fate::Lost
        } else {
            Fate::Delivered
        };
        self.wire.push(WireRecord {
            at,
            transport,
            src: wire_src,
            dst,
            lan_src,
            kind,
            message,
            txid,
            digest: digest(&payload),
            fate,
            payload: payload.clone(),
        });
        if fate == Fate::Delivered {
            let id = self.next_packet;
            self.next_packet += 1;
            self.queue.push(Reverse((self.now + link.latency, id)));
            self.in_flight.insert(
                id,
                InFlight {
                    transport,
                    src: wire_src,
                    dst,
                    payload,
                    ctl,
                    wire: self.wire.len() - 1,
                },
            );
        }
    }

    /// A packet that never reached the wire (no source address of the
    /// destination's family, no leg to answer on): recorded as unroutable.
    fn record_unsent(
        &mut self,
        transport: Transport,
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
        ctl: Option<LegCtl>,
    ) {
        let at = self.elapsed();
        transmit_fingerprint(
            &mut self.transmit_hash,
            at,
            transport,
            src,
            dst,
            &payload,
            ctl,
        );
        let (kind, message, txid) = self.decode(dst, &payload, ctl);
        self.wire.push(WireRecord {
            at,
            transport,
            src,
            dst,
            lan_src: None,
            kind,
            message,
            txid,
            digest: digest(&payload),
            fate: Fate::Unroutable,
            payload,
        });
    }

    /// Opens a signaling packet with the session database's key (a fresh
    /// cipher each time, so the observer keeps no replay window).
    fn decode(
        &self,
        dst: SocketAddr,
        payload: &[u8],
        ctl: Option<LegCtl>,
    ) -> (&'static str, Option<Message>, Option<u64>) {
        match ctl {
            Some(LegCtl::Open) => return ("LegOpen", None, None),
            Some(LegCtl::Accept) => return ("LegAccept", None, None),
            None => {}
        }
        match payload.first() {
            Some(&signal::TYPE_SIGNALING) => {
                let to_nms = matches!(self.addr_book.get(&dst), Some(Endpoint::Nms))
                    || (dst.port() == CLOUD_LEG_PORT && self.cloud_host(dst.ip()) == Some(0));
                let envelope = signal::peek_session(payload)
                    .ok()
                    .and_then(|id| self.db.get(&id))
                    .and_then(|s| {
                        let role = if to_nms { Role::Nms } else { Role::Node };
                        SignalCipher::new(s.session_id, &s.common_key, role, 0)
                            .open(payload)
                            .ok()
                    });
                match envelope {
                    Some(env) => (env.message.name(), Some(env.message), Some(env.txid)),
                    None => ("Signaling", None, None),
                }
            }
            Some(2) => ("TunnelRequest", None, None),
            Some(3) => ("TunnelResponse", None, None),
            Some(4) => ("Data", None, None),
            Some(&relay::TYPE_RELAY_BIND) => ("RelayBind", None, None),
            Some(&relay::TYPE_RELAY_BIND_ACK) => ("RelayBindAck", None, None),
            Some(&relay::TYPE_RELAY_CHALLENGE) => ("RelayChallenge", None, None),
            Some(&relay::TYPE_RELAY_DATA) => match payload.get(RELAY_HEADER_LEN) {
                Some(2) => ("RelayedTunnelRequest", None, None),
                Some(3) => ("RelayedTunnelResponse", None, None),
                Some(4) => ("RelayedData", None, None),
                _ => ("RelayedUnknown", None, None),
            },
            Some(&cyphonic_proto::TYPE_PUNCH) => ("Punch", None, None),
            _ => ("Unknown", None, None),
        }
    }

    /// Requests sent again: signaling requests with a (sender, receiver,
    /// transaction) seen before, and Tunnel Requests byte for byte equal to
    /// an earlier one.
    pub fn retransmissions(&self) -> usize {
        const REQUESTS: [&str; 5] = [
            "RegistrationRequest",
            "KeepAlive",
            "DirectionRequest",
            "RouteDirectionToResponder",
            "TunnelRequest",
        ];
        let mut seen = std::collections::HashSet::new();
        self.wire
            .iter()
            .filter(|w| REQUESTS.contains(&w.kind))
            .filter(|w| !seen.insert((w.src, w.dst, w.kind, w.txid.unwrap_or(w.digest))))
            .count()
    }

    // ---- driver --------------------------------------------------------

    fn next_wake(&self) -> Option<Instant> {
        let packets = self.queue.peek().map(|Reverse((t, _))| *t);
        let nms = self.nms.poll_timeout().map(|(t, _)| t);
        let nodes = self
            .nodes
            .iter()
            .filter_map(|n| n.node.poll_timeout().map(|(t, _)| t));
        let legs = self.nodes.iter().filter_map(leg_wake);
        let lagged = self.lagged.front().map(|l| l.0);
        packets
            .into_iter()
            .chain(lagged)
            .chain(nms)
            .chain(nodes)
            .chain(legs)
            .min()
    }

    /// Advances to the next event and handles everything due then. False
    /// when nothing is pending at all.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_wake() else {
            return false;
        };
        self.steps += 1;
        assert!(
            self.steps < self.max_steps,
            "simulation did not settle after {} steps",
            self.max_steps
        );
        self.now = self.now.max(next);
        while let Some(Reverse((t, id))) = self.queue.peek().copied() {
            if t > self.now {
                break;
            }
            self.queue.pop();
            if let Some(p) = self.in_flight.remove(&id) {
                self.deliver(p);
            }
        }
        while self.lagged.front().is_some_and(|l| l.0 <= self.now) {
            if let Some((_, slot, from, payload)) = self.lagged.pop_front() {
                self.nodes[slot]
                    .node
                    .handle_datagram(self.now, from, &payload);
                self.drain_node(slot);
            }
        }
        if self.nms.poll_timeout().is_some_and(|(t, _)| t <= self.now) {
            self.nms.handle_timeout(self.now);
            self.drain_nms();
        }
        for slot in 0..self.nodes.len() {
            if self.nodes[slot]
                .node
                .poll_timeout()
                .is_some_and(|(t, _)| t <= self.now)
            {
                self.nodes[slot].node.handle_timeout(self.now);
                self.drain_node(slot);
            }
            if leg_wake(&self.nodes[slot]).is_some_and(|t| t <= self.now) {
                self.leg_timers(slot);
            }
        }
        true
    }

    /// Runs until `done` holds or `timeout` of virtual time has passed;
    /// returns whether `done` held.
    pub fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now + timeout;
        loop {
            if done(self) {
                return true;
            }
            match self.next_wake() {
                Some(t) if t <= deadline => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            }
        }
    }

    /// Lets `d` of virtual time pass.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    fn deliver(&mut self, p: InFlight) {
        let now = self.now;
        let proto = Proto::from(p.transport);
        let mut dst = p.dst;
        if let Some(&k) = self.nat_by_public.get(&dst.ip()) {
            match self.nats[k].inbound(now, proto, p.src, dst.port()) {
                Some(inside) => dst = inside,
                None => {
                    self.wire[p.wire].fate = Fate::Filtered;
                    return;
                }
            }
        }
        match self.listener(dst, p.transport) {
            Some(Endpoint::Nms) => {
                self.nms.handle_datagram(now, dst, p.src, &p.payload);
                self.drain_nms();
            }
            Some(Endpoint::Node(slot)) => {
                if !self.firewall_in(slot, proto, dst, p.src) {
                    self.wire[p.wire].fate = Fate::Firewalled;
                    return;
                }
                if p.transport == Transport::Udp {
                    let local = if self.nodes[slot].addrs.contains(&dst) {
                        0
                    } else {
                        dst.port() - SPARE_BASE
                    };
                    self.node_in(slot, Leg::spare(local, p.src), p.payload);
                } else {
                    self.leg_in(slot, dst, p);
                }
            }
            Some(Endpoint::Trs(k)) => self.trs_in(k, dst, p.src, p.payload, None),
            Some(Endpoint::Edge(k)) => self.edge_in(k, dst, p),
            None if p.transport != Transport::Udp => self.wire[p.wire].fate = Fate::Refused,
            None => {}
        }
    }

    /// A datagram for node `slot` from `from`, as the data plane's inbound
    /// loop takes it: [`datapath::decapsulate`] opens data packets, bare or
    /// in Relay Data, and counts them; everything else goes to the core as
    /// it came.
    fn node_in(&mut self, slot: usize, from: Leg, mut payload: Vec<u8>) {
        let (table, now) = (&self.nodes[slot].table, self.now);
        match datapath::decapsulate(&mut payload, from, || now, |i| table.by_index(i)) {
            Decapsulated::Control if !self.control_lag.is_zero() => {
                let at = self.now + self.control_lag;
                self.lagged.push_back((at, slot, from, payload));
            }
            Decapsulated::Control => {
                self.nodes[slot]
                    .node
                    .handle_datagram(self.now, from, &payload);
                self.drain_node(slot);
            }
            Decapsulated::Opened(opened) => self.data_in(slot, opened, &payload),
            Decapsulated::Dropped(reason) => {
                let n = &mut self.nodes[slot];
                n.data_rx_bad += 1;
                if reason == datapath::DropReason::Replayed {
                    n.data_rx_replayed += 1;
                }
                if reason == datapath::DropReason::PolicyDenied {
                    n.data_rx_policy_denied += 1;
                }
            }
        }
    }

    /// Whether node `slot`'s firewall lets in a packet from `remote` to its
    /// `local` address: always when open, else only as the reply to a flow
    /// it let out.
    fn firewall_in(
        &mut self,
        slot: usize,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> bool {
        let now = self.now;
        let n = &mut self.nodes[slot];
        if n.firewall == Firewall::Open {
            return true;
        }
        let life = match proto {
            Proto::Udp => FIREWALL_UDP_FLOW,
            Proto::Tcp => FIREWALL_TCP_FLOW,
        };
        match n.fw_flows.get_mut(&(proto, local, remote)) {
            Some(t) if now.saturating_duration_since(*t) < life => {
                *t = now;
                true
            }
            _ => false,
        }
    }

    /// A QUIC or TCP packet at node `slot`'s `local` address: a leg's
    /// handshake, or a datagram on one of its legs (or a new one on its
    /// QUIC listener, as a peer's migrated connection would be).
    fn leg_in(&mut self, slot: usize, local: SocketAddr, p: InFlight) {
        let now = self.now;
        let key = (p.transport, p.src);
        let n = &mut self.nodes[slot];
        let listening =
            p.transport == Transport::Quic && n.quic_port != 0 && local.port() == n.quic_port;
        match p.ctl {
            Some(LegCtl::Open) => {
                if !listening {
                    self.wire[p.wire].fate = Fate::Refused;
                    return;
                }
                let queued = match n.legs.get_mut(&key) {
                    Some(leg) if matches!(leg.state, LegState::Up) => {
                        leg.last_rx = now;
                        Vec::new()
                    }
                    other => {
                        let queued = match other.map(|l| &mut l.state) {
                            Some(LegState::Dialing { queue, .. }) => std::mem::take(queue),
                            _ => Vec::new(),
                        };
                        n.legs.insert(
                            key,
                            SimLeg {
                                local_port: local.port(),
                                state: LegState::Up,
                                last_rx: now,
                            },
                        );
                        queued
                    }
                };
                self.leg_transmit(
                    slot,
                    p.transport,
                    local.port(),
                    p.src,
                    Vec::new(),
                    Some(LegCtl::Accept),
                );
                for d in queued {
                    self.leg_transmit(slot, p.transport, local.port(), p.src, d, None);
                }
            }
            Some(LegCtl::Accept) => {
                let Some(leg) = n.legs.get_mut(&key) else {
                    return;
                };
                let LegState::Dialing { queue, .. } = &mut leg.state else {
                    return;
                };
                if leg.local_port != local.port() {
                    return;
                }
                let queued = std::mem::take(queue);
                leg.state = LegState::Up;
                leg.last_rx = now;
                let port = leg.local_port;
                for d in queued {
                    self.leg_transmit(slot, p.transport, port, p.src, d, None);
                }
            }
            None => {
                let known = match n.legs.get_mut(&key) {
                    Some(leg)
                        if matches!(leg.state, LegState::Up) && leg.local_port == local.port() =>
                    {
                        leg.last_rx = now;
                        true
                    }
                    _ => false,
                };
                if !known {
                    if !listening {
                        self.wire[p.wire].fate = Fate::Refused;
                        return;
                    }
                    n.legs.insert(
                        key,
                        SimLeg {
                            local_port: local.port(),
                            state: LegState::Up,
                            last_rx: now,
                        },
                    );
                }
                self.node_in(slot, Leg::new(p.transport, p.src), p.payload);
            }
        }
    }

    /// A QUIC or TCP packet at cloud host `k`'s 443, as `cloud::edge`
    /// handles it: a handshake is answered; a datagram is filed under its
    /// remote address and goes to the NMS (signaling, host 0) or the host's
    /// TRS (relay).
    fn edge_in(&mut self, k: usize, local: SocketAddr, p: InFlight) {
        match p.ctl {
            Some(LegCtl::Open) => self.send_on(
                p.transport,
                local,
                p.src,
                Vec::new(),
                Some(LegCtl::Accept),
                None,
            ),
            Some(LegCtl::Accept) => {}
            None => {
                self.edges[k].insert(p.src, p.transport);
                match p.payload.first() {
                    Some(&signal::TYPE_SIGNALING) if k == 0 => {
                        self.nms.handle_datagram(self.now, local, p.src, &p.payload);
                        self.drain_nms();
                    }
                    Some(
                        &(relay::TYPE_RELAY_BIND
                        | relay::TYPE_RELAY_BIND_ACK
                        | relay::TYPE_RELAY_DATA),
                    ) if k < self.trs.len() => {
                        self.trs_in(k, local, p.src, p.payload, Some(p.transport));
                    }
                    _ => self.wire[p.wire].fate = Fate::Refused,
                }
            }
        }
    }

    /// A datagram reaches TRS `k` at its address `local` (over a leg of
    /// transport `via`, or native UDP): forward, answer or drop, as its core
    /// says. Answers go back the way the datagram came; forwards go on the
    /// leg the destination last sent on, else over UDP, as `cloud::edge`.
    fn trs_in(
        &mut self,
        k: usize,
        local: SocketAddr,
        from: SocketAddr,
        mut payload: Vec<u8>,
        via: Option<Transport>,
    ) {
        let (now, unix) = (self.now, self.unix_now());
        let at = self.elapsed();
        let t = &mut self.trs[k];
        t.trs.handle_timeout(now, unix);
        match t.trs.handle_datagram(now, unix, from, &mut payload) {
            Action::Forward(to) => {
                let src = if to.is_ipv4() { t.v4 } else { t.v6 };
                match self.edges.get(k).and_then(|e| e.get(&to)).copied() {
                    Some(leg) => {
                        let src = SocketAddr::new(src.ip(), CLOUD_LEG_PORT);
                        self.send_on(leg, src, to, payload, None, None);
                    }
                    None => self.send(src, to, payload),
                }
            }
            Action::Reply(len) => {
                payload.truncate(len);
                match via {
                    Some(leg) => self.send_on(leg, local, from, payload, None, None),
                    None => self.send(local, from, payload),
                }
            }
            Action::Drop(reason) => t.drops.push((at, from, reason)),
        }
    }

    fn drain_nms(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.nms.poll_transmit() {
                progressed = true;
                if self.cloud_legs && t.local.port() == CLOUD_LEG_PORT {
                    // The edge's hub: on the leg the node last sent on.
                    match self.edges[0].get(&t.destination).copied() {
                        Some(leg) => {
                            self.send_on(leg, t.local, t.destination, t.payload, None, None)
                        }
                        None => self.record_unsent(
                            Transport::Quic,
                            t.local,
                            t.destination,
                            t.payload,
                            None,
                        ),
                    }
                } else {
                    self.send(t.local, t.destination, t.payload);
                }
            }
            while let Some(ev) = self.nms.poll_event() {
                progressed = true;
                if let NmsEvent::NeedSession { session_id } = ev {
                    match self.db.get(&session_id).cloned() {
                        Some(info) => self.nms.handle_session(self.now, info),
                        None => self.nms.handle_session_missing(session_id),
                    }
                }
                if let NmsEvent::NeedGeneralNodes {
                    session_id,
                    txid,
                    ref device_id,
                    offset,
                } = ev
                {
                    let page = general_page(
                        self.general.get(device_id).map_or(&[][..], Vec::as_slice),
                        offset,
                    );
                    self.nms.handle_general_nodes(session_id, txid, page);
                }
                self.nms_events.push((self.elapsed(), ev));
            }
            if !progressed {
                return;
            }
        }
    }

    fn drain_node(&mut self, slot: usize) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.nodes[slot].node.poll_transmit() {
                progressed = true;
                self.send_from_node(slot, t);
            }
            while let Some(ev) = self.nodes[slot].node.poll_event() {
                progressed = true;
                self.node_event(slot, ev);
            }
            if !progressed {
                return;
            }
        }
    }

    /// A node's transmit: native UDP from the tunnel port, QUIC and TCP on
    /// its hub's leg to the destination.
    fn send_from_node(&mut self, slot: usize, t: Transmit) {
        match t.transport {
            Transport::Udp => {
                let port = match t.local {
                    0 => TUNNEL_PORT,
                    k => {
                        self.nodes[slot].spares.insert(k);
                        SPARE_BASE + k
                    }
                };
                self.ttl_next = t.ttl;
                self.node_transmit(slot, Transport::Udp, port, t.destination, t.payload, None);
                self.ttl_next = None;
            }
            leg => self.leg_send(slot, leg, t.destination, t.payload),
        }
    }

    /// Sends from the node's address of the destination's family (port
    /// `port`), as the kernel picks the source of a socket bound to the
    /// wildcard address.
    fn node_transmit(
        &mut self,
        slot: usize,
        transport: Transport,
        port: u16,
        dst: SocketAddr,
        payload: Vec<u8>,
        ctl: Option<LegCtl>,
    ) {
        let addrs = &self.nodes[slot].addrs;
        let src = addrs.iter().find(|a| a.is_ipv4() == dst.is_ipv4()).copied();
        // With no address at all (the link is down), as unroutable from
        // the unspecified address.
        let first = addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
        match src {
            Some(src) => {
                let src = SocketAddr::new(src.ip(), port);
                self.send_on(transport, src, dst, payload, ctl, Some(slot));
            }
            // No address of the destination's family: the send fails in
            // the kernel; record it as unroutable.
            None => self.record_unsent(transport, first, dst, payload, ctl),
        }
    }

    fn leg_transmit(
        &mut self,
        slot: usize,
        transport: Transport,
        port: u16,
        dst: SocketAddr,
        payload: Vec<u8>,
        ctl: Option<LegCtl>,
    ) {
        self.node_transmit(slot, transport, port, dst, payload, ctl);
    }

    /// As `Hub::send`: on the leg to `dst` if it is up; queued while it is
    /// being dialed; dropped while the address is refused after a failed
    /// dial; else a new dial (a leg idle for [`LEG_IDLE_TIMEOUT`] is closed
    /// and dialed anew).
    fn leg_send(&mut self, slot: usize, transport: Transport, dst: SocketAddr, payload: Vec<u8>) {
        let now = self.now;
        let n = &mut self.nodes[slot];
        let mut payload = Some(payload);
        let up = match n.legs.get_mut(&(transport, dst)) {
            Some(leg) => match &mut leg.state {
                LegState::Up if now.saturating_duration_since(leg.last_rx) < LEG_IDLE_TIMEOUT => {
                    Some(leg.local_port)
                }
                LegState::Dialing { queue, .. } => {
                    if queue.len() < LEG_QUEUE {
                        queue.extend(payload.take());
                    } else {
                        n.leg_drops += 1;
                    }
                    return;
                }
                LegState::Failed { until } if now < *until => {
                    n.leg_drops += 1;
                    return;
                }
                _ => None,
            },
            None => None,
        };
        let payload = payload.take().unwrap_or_default();
        if let Some(port) = up {
            self.leg_transmit(slot, transport, port, dst, payload, None);
            return;
        }
        let port = match transport {
            Transport::Tcp => {
                let base = TCP_DIAL_PORT + 100 * n.index as u16;
                let port = n.next_tcp_port;
                n.next_tcp_port = base + (port - base + 1) % 100;
                port
            }
            _ => n.quic_dial_port,
        };
        n.leg_dials += 1;
        n.legs.insert(
            (transport, dst),
            SimLeg {
                local_port: port,
                state: LegState::Dialing {
                    started: now,
                    next_open: now + LEG_OPEN_RETRY,
                    interval: LEG_OPEN_RETRY,
                    queue: vec![payload],
                },
                last_rx: now,
            },
        );
        self.leg_transmit(slot, transport, port, dst, Vec::new(), Some(LegCtl::Open));
    }

    /// Dialing legs of node `slot`: handshakes sent again, dials given up.
    fn leg_timers(&mut self, slot: usize) {
        let now = self.now;
        let mut opens = Vec::new();
        let n = &mut self.nodes[slot];
        for ((transport, remote), leg) in n.legs.iter_mut() {
            let LegState::Dialing {
                started,
                next_open,
                interval,
                ..
            } = &mut leg.state
            else {
                continue;
            };
            if now >= *started + LEG_HANDSHAKE_TIMEOUT {
                leg.state = LegState::Failed {
                    until: now + LEG_REDIAL_BACKOFF,
                };
                n.leg_dial_failures += 1;
            } else if now >= *next_open {
                *interval *= 2;
                *next_open = now + *interval;
                opens.push((*transport, leg.local_port, *remote));
            }
        }
        for (transport, port, remote) in opens {
            self.leg_transmit(
                slot,
                transport,
                port,
                remote,
                Vec::new(),
                Some(LegCtl::Open),
            );
        }
    }

    fn node_event(&mut self, slot: usize, ev: NodeEvent) {
        let at = self.elapsed();
        match ev {
            NodeEvent::NeedLogin { reason } => {
                self.nodes[slot].need_logins.push((at, reason));
                if self.nodes[slot].auto_login {
                    self.login(slot);
                }
            }
            NodeEvent::Registered {
                fqdn,
                vip4,
                vip6,
                observed,
            } => self.nodes[slot].registered.push(Registered {
                at,
                fqdn,
                vip4,
                vip6,
                observed,
            }),
            NodeEvent::DnsResponse { client, response } => {
                let response =
                    DnsMessage::from_vec(&response).expect("the resolver's answer parses");
                self.nodes[slot]
                    .dns
                    .insert(client, DnsAnswer { at, response });
            }
            NodeEvent::TunnelUp(handle) => {
                let n = &mut self.nodes[slot];
                n.table.install(0, handle.clone());
                n.tunnel_ups.push((at, handle));
            }
            NodeEvent::TunnelDown { fqdn, .. } => {
                let n = &mut self.nodes[slot];
                n.table.remove(0, &fqdn);
                n.tunnel_downs.push((at, fqdn));
            }
            NodeEvent::PingResult { client, result } => {
                self.nodes[slot].pongs.push((at, client, result));
            }
            NodeEvent::TunnelHold { fqdn } => {
                self.nodes[slot].table.hold(0, &fqdn);
            }
            NodeEvent::LegName { .. } => {}
            NodeEvent::GeneralNodes { version, nodes } => {
                self.nodes[slot].general_nodes.push((at, version, nodes));
            }
            NodeEvent::SparePorts { keep } => {
                let n = &mut self.nodes[slot];
                n.spares.retain(|k| keep.contains(k));
                n.spare_releases.push((at, keep));
            }
        }
    }

    /// The AS's Login: a new session in the database, handed to the node.
    pub fn login(&mut self, slot: usize) {
        let n = &self.nodes[slot];
        let info = SessionInfo {
            session_id: cyphonic_proto::SessionId(self.rng.gen_range(1..u64::MAX)),
            common_key: self.rng.gen(),
            device_id: format!("device-{}", n.name),
            fqdn: n.fqdn.clone(),
            vip4: vip4(n.index),
            vip6: vip6(n.index),
            cert_serial: n.cert_serial,
        };
        self.db.insert(info.session_id, info.clone());
        let login = Login {
            session_id: info.session_id,
            common_key: info.common_key,
            fqdn: info.fqdn.clone(),
            vip4: info.vip4,
            vip6: info.vip6,
            nms: n.nms,
            // As the daemon: the NMS at every cloud address, so a move
            // into a network of the other IP version keeps signaling going.
            nms_alternatives: vec![NMS_V4, NMS_V6],
            instances: Vec::new(),
            keepalive: Duration::from_secs(15),
            quic_port: if self.cloud_legs { CLOUD_LEG_PORT } else { 0 },
            tcp_port: if self.cloud_legs { CLOUD_LEG_PORT } else { 0 },
        };
        let n = &mut self.nodes[slot];
        n.session = Some(info);
        n.logins += 1;
        n.node.handle_login(self.now, login);
    }

    /// Kills node `n<index>` and starts it again: a new process with a
    /// new static key, the same certificate and addresses, and `resume` as
    /// the peer list its state directory kept. Its data plane starts empty;
    /// what it received stays on record.
    pub fn restart_node(&mut self, index: usize, resume: Vec<String>) {
        let slot = self.slot(index);
        let name = self.nodes[slot].name.clone();
        let cert = &pki().certs[&name];
        let static_keys = StaticKeypair::generate(&mut self.rng);
        let binding_sig = cert.key.sign(&binding_message(&static_keys.public));
        let identity = LocalIdentity {
            static_keys,
            cert_chain_der: cert.chain.clone(),
            binding_sig,
        };
        let config = self.nodes[slot].node.config().clone();
        let wall_now = self.wall + self.elapsed();
        let mut node = Node::new(
            config,
            identity,
            pki().verifier.clone(),
            self.rng.gen(),
            micros(wall_now),
            self.now,
            wall_now,
        );
        node.handle_local_addrs(self.now, self.nodes[slot].addrs.clone());
        node.resume_peers(resume);
        let n = &mut self.nodes[slot];
        n.node = node;
        n.session = None;
        n.table = TunnelTable::default();
        n.legs.clear();
        n.node.start();
        self.drain_node(slot);
    }

    /// An operator revokes node `n<index>`'s certificate: its sessions
    /// leave the database, the NMS is told (as the cloud's shell tells it
    /// on finding the certificate revoked) and the AS refuses the node's
    /// Logins from now on.
    pub fn revoke(&mut self, index: usize) {
        let slot = self.slot(index);
        let (fqdn, serial) = (self.nodes[slot].fqdn.clone(), self.nodes[slot].cert_serial);
        self.db.retain(|_, s| s.cert_serial != serial);
        self.nms.handle_withdrawn(self.now, &fqdn, serial);
        self.drain_nms();
        let n = &mut self.nodes[slot];
        n.auto_login = false;
        n.node
            .handle_login_refused(format!("certificate {serial:#x} has been revoked"));
        self.drain_node(slot);
    }

    /// The operator sets an access policy: the NMS applies it at once (as
    /// the cloud's shell does when it reads a new version from the store)
    /// and its notices go out.
    pub fn set_policy(&mut self, policy: cyphonic_cloud_core::policy::Policy) {
        self.nms.handle_policy(self.now, policy);
        self.drain_nms();
    }

    /// Replaces the NMS with a fresh process over the same database. Its
    /// counter base is the wall clock now, as a restarted NMS's would be.
    pub fn restart_nms(&mut self) {
        let wall_now = self.wall + self.elapsed();
        self.nms = Nms::new(self.nms_config.clone(), self.rng.gen(), micros(wall_now));
    }

    /// Node `n<index>`'s router forwards UDP `public_port` to the node's
    /// tunnel port (what a PCP or NAT-PMP request makes miniupnpd
    /// install), and the node hears of its mapping, as the daemon's port
    /// mapping task tells it.
    pub fn map_port(&mut self, index: usize, public_port: u16) {
        let slot = self.slot(index);
        let inside = self.nodes[slot]
            .addrs
            .iter()
            .copied()
            .find(|a| self.lan.contains_key(&a.ip()))
            .expect("the node is behind a NAT");
        let k = self.lan[&inside.ip()];
        self.nats[k]
            .forwards
            .insert((Proto::Udp, public_port), inside);
        let mapping = cyphonic_node::core::PortMapping {
            protocol: "pcp".into(),
            external: SocketAddr::new(nat_public(k), public_port),
            lifetime_secs: 7200,
        };
        self.nodes[slot]
            .node
            .handle_port_mapping(self.now, Some(mapping));
        self.drain_node(slot);
    }

    // ---- applications --------------------------------------------------

    /// A stub resolver's query for `name` at node `n<index>`; returns the
    /// client handle its answer is filed under in [`SimNode::dns`].
    /// `cyphonic ping <fqdn>` at node `index`; the answer lands in `pongs`.
    pub fn ping(&mut self, index: usize, fqdn: &str) -> u64 {
        let slot = self.slot(index);
        let client = self.nodes[slot].next_client;
        self.nodes[slot].next_client += 1;
        self.nodes[slot].node.handle_ping(self.now, client, fqdn);
        self.drain_node(slot);
        client
    }

    pub fn dns_query(&mut self, index: usize, name: &str, qtype: RecordType) -> u64 {
        let slot = self.slot(index);
        let client = self.nodes[slot].next_client;
        self.nodes[slot].next_client += 1;
        let mut m = DnsMessage::new(client as u16, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("query name"),
            qtype,
        ));
        let bytes = m.to_vec().expect("encode query");
        let domain = self.nodes[slot].node.config().domain.clone();
        let Classified::Overlay { query, name, .. } = resolver::classify(&bytes, &domain) else {
            panic!("{name} is not an overlay name");
        };
        self.nodes[slot]
            .node
            .handle_dns_query(self.now, client, query, name);
        self.drain_node(slot);
        client
    }

    pub fn dns_answer(&self, index: usize, client: u64) -> Option<&DnsAnswer> {
        self.node(index).dns.get(&client)
    }

    /// An application at node `n<index>` sends an IP packet: the data plane
    /// seals it if it has a tunnel for the destination, else the core gets
    /// it (`handle_outbound`), as `dataplane` does.
    pub fn send_app(&mut self, index: usize, packet: &[u8]) {
        let slot = self.slot(index);
        let dst = cyphonic_proto::ip::inner_destination(packet).expect("an IP packet");
        let tunnel = self.nodes[slot].table.by_destination(0, dst);
        if tunnel.as_ref().is_some_and(|t| {
            t.filter
                .check(cyphonic_node::filter::Direction::Out, packet, self.now)
                == cyphonic_node::filter::Verdict::Deny
        }) {
            self.nodes[slot].data_tx_policy_denied += 1;
            return;
        }
        let sealed =
            tunnel.and_then(|t| Some((datapath::encapsulate_vec(&t, t.path, packet).ok()?, t)));
        match sealed {
            Some((payload, tunnel)) => {
                // As the data plane's outbound loop: sealed, counted and
                // framed for the tunnel's path (the relay header for a TRS);
                // a key that may not seal any more hands the packet to the
                // core.
                let leg = tunnel.path.leg();
                let t = Transmit {
                    destination: leg.addr,
                    transport: leg.transport,
                    local: leg.local,
                    payload,
                    ttl: None,
                };
                self.send_from_node(slot, t);
            }
            None => {
                self.nodes[slot].node.handle_outbound(self.now, packet);
                self.drain_node(slot);
            }
        }
    }

    /// A data packet [`datapath::decapsulate`] opened in `datagram` at node
    /// `slot`, as `dataplane::inbound_loop` handles it: arriving on a path
    /// other than the tunnel's, it is reported to the core (rate-limited);
    /// then a keepalive is counted, a tunnel message goes to the core, and
    /// a packet to the TUN device ([`SimNode::received`]).
    fn data_in(&mut self, slot: usize, opened: Opened, datagram: &[u8]) {
        let (at, now) = (self.elapsed(), self.now);
        let index = opened.local_index();
        let path = opened.path;
        if opened.confirms_keys() {
            self.nodes[slot].node.handle_key_confirmed(now, index);
            self.drain_node(slot);
        }
        let n = &mut self.nodes[slot];
        if opened.path_changed() && n.reports.allow(index, path, now) {
            n.path_reports.push((at, opened.tunnel.fqdn.clone(), path));
            n.node.handle_path_seen(now, index, path);
            self.drain_node(slot);
        }
        let n = &mut self.nodes[slot];
        let plain = &datagram[opened.plain];
        match opened.payload {
            Payload::Keepalive => n.keepalives += 1,
            Payload::Message => {
                n.tunnel_messages += 1;
                n.node.handle_tunnel_message(now, index, path, plain);
                self.drain_node(slot);
            }
            Payload::Packet => n.received.push(Received {
                at,
                peer: opened.tunnel.fqdn.clone(),
                packet: plain.to_vec(),
                path,
            }),
        }
    }

    /// The tail of the wire log, for failure reports.
    pub fn wire_tail(&self, n: usize) -> String {
        let start = self.wire.len().saturating_sub(n);
        self.wire[start..]
            .iter()
            .map(|w| {
                let lan = w
                    .lan_src
                    .map(|l| format!(" (from {l})"))
                    .unwrap_or_default();
                let on = match w.transport {
                    Transport::Udp => String::new(),
                    t => format!("{t} "),
                };
                format!(
                    "{:>10.3?} {on}{}{lan} -> {} {} {:?}\n",
                    w.at, w.src, w.dst, w.kind, w.fate
                )
            })
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {} at t = {:?}; last packets:\n{}",
                self.seed,
                self.elapsed(),
                self.wire_tail(30)
            );
            return;
        }
        if self.pinned {
            goldens::check(self.transmit_hash(), self.wire.len());
        }
    }
}

/// Every simulation's outcome (the hash of every packet it sent, with its
/// time and addresses, and how many there were) is pinned per test in
/// `tests/sim/goldens.txt`, recorded from the node core before it was
/// split into parts. Each line is keyed by the test's path and the
/// simulation's number in it (`nat::some_test#0`); the file is kept sorted
/// (`LC_ALL=C sort`). A change of the node's behaviour shows here first: a
/// commit that changes one says why and records them again with
/// `SIM_GOLDENS=record` (after deleting the file; each simulation appends
/// its line, so sort it afterwards). Runs with `SIM_SEED` set are not
/// compared.
mod goldens {
    use std::cell::Cell;
    use std::io::Write;

    thread_local! {
        /// Simulations finished so far in this test (a test may run several).
        static RUN: Cell<usize> = const { Cell::new(0) };
    }

    fn file() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sim/goldens.txt")
    }

    pub fn check(hash: u64, packets: usize) {
        if std::env::var_os("SIM_SEED").is_some() {
            return;
        }
        let run = RUN.with(|r| {
            let n = r.get();
            r.set(n + 1);
            n
        });
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        // One test binary: the test's path (`nat::some_test`) names it.
        let key = format!("{test}#{run}");
        let line = format!("{key} {hash:016x} {packets}");
        if std::env::var("SIM_GOLDENS").as_deref() == Ok("record") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file())
                .expect("open goldens.txt");
            f.write_all(format!("{line}\n").as_bytes())
                .expect("write goldens.txt");
            return;
        }
        let text = std::fs::read_to_string(file()).unwrap_or_default();
        let golden = text
            .lines()
            .find(|l| l.split(' ').next() == Some(key.as_str()));
        match golden {
            Some(golden) => assert_eq!(line, golden, "the simulation differs from its golden"),
            None => panic!("no golden for {key}: record it with SIM_GOLDENS=record"),
        }
    }
}

fn transmit_fingerprint(
    h: &mut std::collections::hash_map::DefaultHasher,
    at: Duration,
    transport: Transport,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    ctl: Option<LegCtl>,
) {
    at.as_nanos().hash(h);
    transport.hash(h);
    src.hash(h);
    dst.hash(h);
    payload.hash(h);
    ctl.map(|c| c as u8).hash(h);
}

/// When node `n`'s hub next has something to do: a dialing leg's
/// handshake retransmission or its giving up.
fn leg_wake(n: &SimNode) -> Option<Instant> {
    n.legs
        .values()
        .filter_map(|l| match &l.state {
            LegState::Dialing {
                started, next_open, ..
            } => Some((*next_open).min(*started + LEG_HANDSHAKE_TIMEOUT)),
            _ => None,
        })
        .min()
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// An IPv4 packet (20-byte header, protocol 253 "experimentation",
/// RFC 3692) from `src` to `dst` carrying `payload`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet (40-byte header, next header 253) from `src` to `dst`.
pub fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 253;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// `SIM_SEED`, if set, replays the seed a failed case printed.
pub fn one_seed(default: u64) -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .map_or(default, |s| s.parse().expect("SIM_SEED is a number"))
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Runs `run` twice with `seed` and once with `seed + 1`: the same seed
/// must give the same (transmit hash, packets on the wire, deliveries), the
/// run must have done something (`min_wire`, `min_received`), and another
/// seed other packets.
pub fn assert_deterministic(
    seed: u64,
    run: impl Fn(u64) -> (u64, usize, usize),
    min_wire: usize,
    min_received: usize,
) {
    let first = run(seed);
    assert_eq!(first, run(seed), "seed {seed} ran twice");
    assert!(
        first.1 > min_wire && first.2 > min_received,
        "the run did something: {first:?}"
    );
    assert_ne!(first.0, run(seed + 1).0, "another seed, other packets");
}

/// A page of an adapter's general nodes, as `cloud::general::page` cuts
/// them (the version a digest of the whole list).
pub fn general_page(all: &[GeneralNodeInfo], offset: u16) -> GeneralNodes {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for n in all {
        (n.mac, &n.fqdn, n.vip4, n.vip6).hash(&mut h);
    }
    let start = (offset as usize).min(all.len());
    let end = (start + GENERAL_NODES_PER_PAGE).min(all.len());
    GeneralNodes {
        version: h.finish(),
        total: all.len() as u16,
        offset: start as u16,
        nodes: all[start..end].to_vec(),
    }
}
