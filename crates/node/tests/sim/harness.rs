//! A deterministic simulation of one NMS and N nodes: the real sans-IO
//! cores ([`Nms`], [`Node`]) on a virtual clock, joined by an in-memory
//! network with per-link latency and seeded loss.
//!
//! The driver ([`Sim::step`]) always jumps to the earliest of every core's
//! `poll_timeout` and the next packet's delivery time, so minutes of
//! protocol time pass in milliseconds. After every input it drains the
//! input's core (`poll_transmit`, then `poll_event`), as the cores' docs ask.
//! The shells' jobs are done here too: the NMS's session database, the
//! node's Login, its resolver's clients and its data plane (data packets
//! are sealed and opened with the keys of [`NodeEvent::TunnelUp`], never by
//! the core).
//!
//! Everything random comes from the seed; a panicking test prints it (see
//! the `Drop` impl) together with the tail of the wire log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cyphonic_cloud::nms::{Nms, NmsConfig, NmsEvent, SessionInfo};
use cyphonic_node::core::{Login, Node, NodeConfig, NodeEvent, TunnelHandle};
use cyphonic_node::resolver::{self, Classified};
use cyphonic_proto::data::{data_receiver_index, DATA_HEADER_LEN, TAG_LEN};
use cyphonic_proto::handshake::{binding_message, LocalIdentity, StaticKeypair};
use cyphonic_proto::signal::{self, Message, Role, SignalCipher};
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
}

/// The underlay a node sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    V4,
    V6,
    /// Both; it talks to the NMS over IPv4.
    Dual,
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `n<index>`; also picks addresses and VIPs.
    pub index: usize,
    pub stack: Stack,
    pub cert: Cert,
}

impl NodeSpec {
    pub fn new(index: usize) -> Self {
        Self {
            index,
            stack: Stack::V4,
            cert: Cert::Own,
        }
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

pub struct SimConfig {
    pub seed: u64,
    pub nodes: Vec<NodeSpec>,
    pub node: NodeConfig,
    pub nms: NmsConfig,
    pub link: Link,
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
    /// its family.
    Unroutable,
}

/// One packet on the wire, decoded as far as an observer holding the
/// session database can (signaling is opened, tunnels are not).
#[derive(Debug, Clone)]
pub struct WireRecord {
    pub at: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// "RegistrationRequest" … for signaling, else "TunnelRequest",
    /// "TunnelResponse", "Data" or "Unknown".
    pub kind: &'static str,
    pub message: Option<Message>,
    /// The signaling transaction ID, when the packet could be opened.
    pub txid: Option<u64>,
    /// A hash of the bytes, to tell a retransmitted copy from a new packet.
    pub digest: u64,
    pub fate: Fate,
}

/// What a drop rule sees.
pub struct WireInfo {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub kind: &'static str,
}

pub type DropRule = Box<dyn FnMut(&WireInfo) -> bool>;

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
    pub need_logins: Vec<(Duration, String)>,
    pub registered: Vec<Registered>,
    pub dns: BTreeMap<u64, DnsAnswer>,
    pub tunnel_ups: Vec<(Duration, TunnelHandle)>,
    pub tunnel_downs: Vec<(Duration, String)>,
    pub received: Vec<Received>,
    /// Data packets no installed key opened.
    pub data_rx_bad: u64,
    /// Data plane tables, as `dataplane::Tables` keeps them.
    tx: HashMap<IpAddr, TunnelHandle>,
    rx: HashMap<u32, TunnelHandle>,
    next_client: u64,
}

impl SimNode {
    /// The tunnel the data plane would use for `fqdn`, if any.
    pub fn tunnel_to(&self, fqdn: &str) -> Option<&TunnelHandle> {
        self.tx.values().find(|t| t.fqdn == fqdn)
    }

    pub fn tunnel_up_with(&self, fqdn: &str) -> bool {
        self.tunnel_ups.iter().any(|(_, t)| t.fqdn == fqdn)
    }

    pub fn received_from(&self, fqdn: &str) -> Vec<&[u8]> {
        self.received
            .iter()
            .filter(|r| r.peer == fqdn)
            .map(|r| r.packet.as_slice())
            .collect()
    }
}

struct InFlight {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// Where a packet goes.
#[derive(Clone, Copy)]
enum Endpoint {
    Nms,
    Node(usize),
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
    pub db: BTreeMap<u64, SessionInfo>,
    pub nodes: Vec<SimNode>,
    addr_book: HashMap<SocketAddr, Endpoint>,
    pub link: Link,
    links: HashMap<(IpAddr, IpAddr), Link>,
    rules: Vec<DropRule>,
    pub wire: Vec<WireRecord>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, InFlight>,
    next_packet: u64,
    /// Hash of every transmit (time, source, destination, bytes) in order.
    transmit_hash: std::collections::hash_map::DefaultHasher,
    steps: u64,
}

/// Upper bound on driver steps in one simulation, so a timer that never
/// advances fails the test instead of hanging it.
const MAX_STEPS: u64 = 5_000_000;

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let pki = pki();
        let mut rng = StdRng::seed_from_u64(config.seed);
        let base = Instant::now();
        let wall = pki.wall;
        let nms = Nms::new(config.nms.clone(), rng.gen(), micros(wall));
        let mut addr_book = HashMap::new();
        addr_book.insert(NMS_V4, Endpoint::Nms);
        addr_book.insert(NMS_V6, Endpoint::Nms);
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
            };
            let static_keys = StaticKeypair::generate(&mut rng);
            let binding_sig = cert.key.sign(&binding_message(&static_keys.public));
            let identity = LocalIdentity {
                static_keys,
                cert_chain_der: cert.chain.clone(),
                binding_sig,
            };
            let addrs = match spec.stack {
                Stack::V4 => vec![node_v4(spec.index)],
                Stack::V6 => vec![node_v6(spec.index)],
                Stack::Dual => vec![node_v4(spec.index), node_v6(spec.index)],
            };
            let nms_addr = match spec.stack {
                Stack::V6 => NMS_V6,
                _ => NMS_V4,
            };
            for a in &addrs {
                addr_book.insert(*a, Endpoint::Node(slot));
            }
            let mut node = Node::new(
                config.node.clone(),
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
                received: Vec::new(),
                data_rx_bad: 0,
                tx: HashMap::new(),
                rx: HashMap::new(),
                next_client: 1,
            });
        }
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
            nodes,
            addr_book,
            link: config.link,
            links: HashMap::new(),
            rules: Vec::new(),
            wire: Vec::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_packet: 0,
            transmit_hash: Default::default(),
            steps: 0,
        }
    }

    /// Starts every node (each asks to log in, and is logged in at once).
    pub fn start(&mut self) {
        for slot in 0..self.nodes.len() {
            self.nodes[slot].node.start();
            self.drain_node(slot);
        }
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

    /// Drops every packet for which `rule` says true.
    pub fn add_rule(&mut self, rule: impl FnMut(&WireInfo) -> bool + 'static) {
        self.rules.push(Box::new(rule));
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

    /// Drops everything node `n<index>` sends or is sent, from now on.
    pub fn silence(&mut self, index: usize) {
        let addrs = self.node(index).addrs.clone();
        self.add_rule(move |w| addrs.contains(&w.src) || addrs.contains(&w.dst));
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

    fn send(&mut self, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        let at = self.elapsed();
        at.as_nanos().hash(&mut self.transmit_hash);
        src.hash(&mut self.transmit_hash);
        dst.hash(&mut self.transmit_hash);
        payload.hash(&mut self.transmit_hash);

        let (kind, message, txid) = self.decode(dst, &payload);
        let info = WireInfo { src, dst, kind };
        let link = self
            .links
            .get(&(src.ip(), dst.ip()))
            .copied()
            .unwrap_or(self.link);
        let fate = if !self.addr_book.contains_key(&dst) {
            Fate::Unroutable
        } else if self.rules.iter_mut().any(|r| r(&info)) {
            Fate::Dropped
        } else if link.loss > 0.0 && self.rng.gen_bool(link.loss) {
            Fate::Lost
        } else {
            Fate::Delivered
        };
        self.wire.push(WireRecord {
            at,
            src,
            dst,
            kind,
            message,
            txid,
            digest: digest(&payload),
            fate,
        });
        if fate == Fate::Delivered {
            let id = self.next_packet;
            self.next_packet += 1;
            self.queue.push(Reverse((self.now + link.latency, id)));
            self.in_flight.insert(id, InFlight { src, dst, payload });
        }
    }

    /// Opens a signaling packet with the session database's key (a fresh
    /// cipher each time, so the observer keeps no replay window).
    fn decode(
        &self,
        dst: SocketAddr,
        payload: &[u8],
    ) -> (&'static str, Option<Message>, Option<u64>) {
        match payload.first() {
            Some(&signal::TYPE_SIGNALING) => {
                let to_nms = matches!(self.addr_book.get(&dst), Some(Endpoint::Nms));
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
        packets.into_iter().chain(nms).chain(nodes).min()
    }

    /// Advances to the next event and handles everything due then. False
    /// when nothing is pending at all.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_wake() else {
            return false;
        };
        self.steps += 1;
        assert!(
            self.steps < MAX_STEPS,
            "simulation did not settle after {MAX_STEPS} steps"
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
        match self.addr_book.get(&p.dst).copied() {
            Some(Endpoint::Nms) => {
                self.nms.handle_datagram(now, p.dst, p.src, &p.payload);
                self.drain_nms();
            }
            Some(Endpoint::Node(slot)) => {
                if p.payload.first() == Some(&cyphonic_proto::data::TYPE_DATA) {
                    self.data_in(slot, p.payload);
                } else {
                    self.nodes[slot]
                        .node
                        .handle_datagram(now, p.src, &p.payload);
                    self.drain_node(slot);
                }
            }
            None => {}
        }
    }

    fn drain_nms(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.nms.poll_transmit() {
                progressed = true;
                self.send(t.local, t.destination, t.payload);
            }
            while let Some(ev) = self.nms.poll_event() {
                progressed = true;
                if let NmsEvent::NeedSession { session_id } = ev {
                    match self.db.get(&session_id).cloned() {
                        Some(info) => self.nms.handle_session(self.now, info),
                        None => self.nms.handle_session_missing(session_id),
                    }
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
                let n = &self.nodes[slot];
                let src = n
                    .addrs
                    .iter()
                    .find(|a| a.is_ipv4() == t.destination.is_ipv4())
                    .copied();
                match src {
                    Some(src) => self.send(src, t.destination, t.payload),
                    None => {
                        // No address of the destination's family: the send
                        // fails in the kernel; record it as unroutable.
                        let (kind, message, txid) = self.decode(t.destination, &t.payload);
                        self.wire.push(WireRecord {
                            at: self.elapsed(),
                            src: n.addrs[0],
                            dst: t.destination,
                            kind,
                            message,
                            txid,
                            digest: digest(&t.payload),
                            fate: Fate::Unroutable,
                        });
                    }
                }
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
                // As `dataplane::Tables::install`: the previous receive key
                // stays for packets in flight, older ones go.
                let previous =
                    n.tx.get(&IpAddr::V4(handle.vip4))
                        .map(|h| h.recv.local_index());
                n.rx.retain(|i, h| h.fqdn != handle.fqdn || Some(*i) == previous);
                n.rx.insert(handle.recv.local_index(), handle.clone());
                n.tx.insert(IpAddr::V4(handle.vip4), handle.clone());
                n.tx.insert(IpAddr::V6(handle.vip6), handle.clone());
                n.tunnel_ups.push((at, handle));
            }
            NodeEvent::TunnelDown { fqdn, .. } => {
                let n = &mut self.nodes[slot];
                n.rx.retain(|_, h| h.fqdn != fqdn);
                n.tx.retain(|_, h| h.fqdn != fqdn);
                n.tunnel_downs.push((at, fqdn));
            }
        }
    }

    /// The AS's Login: a new session in the database, handed to the node.
    pub fn login(&mut self, slot: usize) {
        let n = &self.nodes[slot];
        let info = SessionInfo {
            session_id: self.rng.gen_range(1..u64::MAX),
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
            keepalive: Duration::from_secs(15),
        };
        let n = &mut self.nodes[slot];
        n.session = Some(info);
        n.logins += 1;
        n.node.handle_login(self.now, login);
    }

    /// Replaces the NMS with a fresh process over the same database. Its
    /// counter base is the wall clock now, as a restarted NMS's would be.
    pub fn restart_nms(&mut self) {
        let wall_now = self.wall + self.elapsed();
        self.nms = Nms::new(self.nms_config.clone(), self.rng.gen(), micros(wall_now));
    }

    // ---- applications --------------------------------------------------

    /// A stub resolver's query for `name` at node `n<index>`; returns the
    /// client handle its answer is filed under in [`SimNode::dns`].
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
        match self.nodes[slot].tx.get(&dst).cloned() {
            Some(tunnel) => {
                let sealed = seal(&tunnel, packet);
                let src = self.nodes[slot]
                    .addrs
                    .iter()
                    .find(|a| a.is_ipv4() == tunnel.path.address().is_ipv4())
                    .copied()
                    .expect("an address of the tunnel's family");
                self.send(src, tunnel.path.address(), sealed);
            }
            None => {
                self.nodes[slot].node.handle_outbound(self.now, packet);
                self.drain_node(slot);
            }
        }
    }

    fn data_in(&mut self, slot: usize, mut payload: Vec<u8>) {
        let at = self.elapsed();
        let n = &mut self.nodes[slot];
        let handle = data_receiver_index(&payload).and_then(|i| n.rx.get(&i));
        let Some(handle) = handle else {
            n.data_rx_bad += 1;
            return;
        };
        match handle.recv.open_in_place(&mut payload) {
            Ok(range) => {
                // Cryptokey routing: the inner source must be the peer's VIP.
                let src = cyphonic_proto::ip::inner_source(&payload[range.clone()]);
                if src != Some(IpAddr::V4(handle.vip4)) && src != Some(IpAddr::V6(handle.vip6)) {
                    n.data_rx_bad += 1;
                    return;
                }
                let peer = handle.fqdn.clone();
                n.received.push(Received {
                    at,
                    peer,
                    packet: payload[range].to_vec(),
                });
            }
            Err(_) => n.data_rx_bad += 1,
        }
    }

    /// The tail of the wire log, for failure reports.
    pub fn wire_tail(&self, n: usize) -> String {
        let start = self.wire.len().saturating_sub(n);
        self.wire[start..]
            .iter()
            .map(|w| {
                format!(
                    "{:>10.3?} {} -> {} {} {:?}\n",
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
        }
    }
}

/// Seals `packet` with a tunnel's send key, as the data plane does.
pub fn seal(tunnel: &TunnelHandle, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + packet.len() + TAG_LEN];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + packet.len()].copy_from_slice(packet);
    let n = tunnel
        .send
        .seal_in_place(&mut buf, packet.len())
        .expect("seal a data packet");
    buf.truncate(n);
    buf
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
