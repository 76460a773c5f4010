//! The NMS (node management server) as a pure state machine.
//!
//! It keeps each logged-in node's registration (real addresses, as the node
//! sees them and as the NMS observes them), answers Direction Requests by
//! choosing a route pattern and a tunnel key, directs the responder (CN),
//! waits for its Route Direction Confirmation and then directs the initiator
//! (MN) — seed slides 38-39.
//!
//! # Use
//!
//! Inputs: [`Nms::handle_datagram`] for every packet that reaches an NMS
//! socket, [`Nms::handle_stored_session`] / [`Nms::handle_session_missing`]
//! to answer a [`NmsEvent::NeedSession`] (the shell looks the session up in
//! the database the AS writes), [`Nms::handle_replay_floor_stored`] to
//! answer a [`NmsEvent::StoreReplayFloor`], [`Nms::handle_sessions_ended`]
//! when the database ends sessions (a newer Login, revocation, reset, a
//! periodic re-check of [`Nms::held_sessions`]), [`Nms::handle_timeout`]
//! when the deadline from [`Nms::poll_timeout`] passes. Outputs, to drain
//! after every input: [`Nms::poll_transmit`] then [`Nms::poll_event`], then
//! re-arm the timer with [`Nms::poll_timeout`]. The NMS never reads a clock
//! or a socket.
//!
//! # Sessions (`docs/protocol.md` §3.4, §4.3, §4.6)
//!
//! A session from the store ([`Nms::handle_stored_session`]) comes with its
//! [`SessionStanding`]: its Login's number and its replay floor. Then:
//!
//! - A node counter at or below the floor is refused before any crypto:
//!   the floor is the counter of the session's latest Registration any NMS
//!   accepted, so nothing recorded before it is accepted again, even by a
//!   restarted NMS whose replay window is empty.
//! - A Registration takes effect only once its counter is stored as the new
//!   floor ([`NmsEvent::StoreReplayFloor`]); the store then ends the
//!   device's sessions from earlier Logins, and so does the NMS. A
//!   Registration under a session older than the device's registered one is
//!   refused, as is loading such a session.
//! - Lookups of unknown session IDs are bounded: IDs the store did not
//!   know (or ended) are remembered for [`MISSING_TTL`], and new lookups
//!   are rate-limited per source and in all ([`NmsConfig::lookups_per_source`],
//!   [`NmsConfig::lookups_total`]).
//!
//! [`Nms::handle_session`] loads a session without a standing (no order,
//! no floor to store): for harnesses without a store.
//!
//! # Access policy (`docs/protocol.md` §5.15)
//!
//! [`Nms::handle_policy`] sets the operator's [`Policy`]. A Direction
//! Request between two devices neither of which may reach the other is
//! refused (`DirectionError` Denied); every other route carries each end's
//! [`RouteFilter`] (none when the policy allows everything). The NMS keeps
//! the routes it directed ([`MAX_LINKS`]), so when the policy changes it
//! tells both ends of each route whose filter changed (`RouteUpdate`, sent
//! until acknowledged), and a closed filter withdraws the route.

mod link;

pub use link::{in_domain, LinkAnswer, LinkScope};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::policy::Policy;
use crate::reflect::{ReflectConfig, Reflector};
use crate::route::{decide_route, Initiator, NatKind, NetInfo};
use crate::trs_pool::TrsPool;
use cyphonic_proto::nms_link::{LinkInitiator, LinkMessage};
use cyphonic_proto::policy::RouteFilter;
use cyphonic_proto::reflect::TYPE_REFLECT_REQUEST;
use cyphonic_proto::signal::{
    self, CertStatus, DirectionErrorCode, Envelope, GeneralNodes, Message, PeerInfo,
    RegistrationRequest, RegistrationResponse, RelayOffer, Role, RouteDirection, RoutePattern,
    SignalCipher, Spray, TunnelReport,
};
use cyphonic_proto::{RelayId, RouteId, SessionId};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The common key is wiped on drop.
impl Drop for SessionInfo {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.common_key);
    }
}

impl zeroize::ZeroizeOnDrop for SessionInfo {}

/// What the AS recorded at Login, as the NMS needs it.
#[derive(Clone)]
pub struct SessionInfo {
    pub session_id: SessionId,
    pub common_key: [u8; 32],
    pub device_id: String,
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub cert_serial: u64,
}

impl std::fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInfo")
            .field("session_id", &self.session_id)
            .field("fqdn", &self.fqdn)
            .finish_non_exhaustive()
    }
}

/// Where a stored session stands among its device's sessions, and what an
/// NMS accepted under it before (the store's `sessions` row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStanding {
    /// The Login's number: a later Login has a greater one.
    pub login_seq: u64,
    /// Node counters at or below this are refused: the counter of the
    /// latest Registration an NMS accepted under this session (0: none).
    pub replay_floor: u64,
}

/// How storing a replay floor ([`NmsEvent::StoreReplayFloor`]) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorStored {
    /// Stored: the Registration may take effect.
    Stored,
    /// The session has ended (superseded, revoked, expired): it goes.
    SessionEnded,
    /// The store failed; the Registration is dropped (the node sends it
    /// again, under a new counter).
    Failed,
}

#[derive(Debug, Clone)]
pub struct NmsConfig {
    pub keepalive: Duration,
    /// A node not heard from for this long is offline.
    pub offline_after: Duration,
    /// First retransmission of a Route Direction to the responder; doubles.
    pub retransmit: Duration,
    /// Give up on a responder after this long and tell the initiator.
    pub direction_timeout: Duration,
    /// The second NMS port nodes send their NAT Probe to (0: none, and NAT
    /// behaviour stays unknown).
    pub probe_port: u16,
    /// Relay grants for route directions, when TRS instances run.
    pub relay: Option<RelayConfig>,
    /// Lookups of unknown session IDs one source (an IPv4 address or an
    /// IPv6 /64) may cause per second; bursts of twice as many.
    pub lookups_per_source: u32,
    /// The NMS's public addresses with its signaling port, named in
    /// answers to Reflect Requests (`docs/protocol.md` §4.8).
    pub public: Vec<SocketAddr>,
    /// Reflect Requests each source may have answered.
    pub reflect: ReflectConfig,
    /// Direction Requests one session may make per second (burst twice
    /// that): each makes the NMS and two nodes work, and sends handshakes.
    pub directions_per_session: u32,
    /// Route directions per second towards one target, whoever asks
    /// (burst twice that).
    pub directions_per_target: u32,
    /// Lookups of unknown session IDs per second in all (bursts as many).
    pub lookups_total: u32,
    /// A TRS that reported (TRS Report, `docs/protocol.md` §5.18) and then
    /// stayed silent this long is left out of new relay grants.
    pub trs_dead_after: Duration,
    /// This cloud's overlay domain; names outside it belong to
    /// cooperating domains. Empty: every name is this cloud's.
    pub domain: String,
    /// Other instances of this cloud answer for names of its domain that
    /// no node registered here holds (§5.19).
    pub peer_instances: bool,
    /// Cooperating domains whose NMSs answer for their names (§5.19).
    pub linked_domains: Vec<String>,
}

/// The relay secret is wiped on drop.
impl Drop for RelayConfig {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl zeroize::ZeroizeOnDrop for RelayConfig {}

/// How the NMS hands out relay grants (see [`cyphonic_proto::relay`]).
#[derive(Clone)]
pub struct RelayConfig {
    pub secret: Vec<u8>,
    /// TRS addresses, best first.
    pub servers: Vec<SocketAddr>,
    /// The TRSs' QUIC and TLS-over-TCP port at the same addresses (0: none),
    /// for nodes whose network lets only those out.
    pub quic_port: u16,
    pub tcp_port: u16,
    /// How long a grant is valid.
    pub lifetime: Duration,
    /// The same moment as an `Instant` and as Unix seconds: grants carry
    /// wall-clock expiry, and the NMS reads no clock.
    pub wall_origin: (Instant, u64),
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("servers", &self.servers)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Default for NmsConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(15),
            offline_after: Duration::from_secs(50),
            retransmit: Duration::from_millis(250),
            direction_timeout: Duration::from_secs(4),
            probe_port: 0,
            relay: None,
            lookups_per_source: 50,
            public: Vec::new(),
            reflect: ReflectConfig::default(),
            directions_per_session: 10,
            directions_per_target: 50,
            lookups_total: 5000,
            trs_dead_after: Duration::from_secs(3),
            domain: String::new(),
            peer_instances: false,
            linked_domains: Vec::new(),
        }
    }
}

/// A datagram to send from the NMS socket the node talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The local address of the NMS socket to send from.
    pub local: SocketAddr,
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NmsEvent {
    /// A packet arrived for a session the NMS does not hold: look it up and
    /// answer with `handle_stored_session` or `handle_session_missing`.
    NeedSession {
        session_id: SessionId,
    },
    /// A Registration under a stored session waits: store `floor` as the
    /// session's replay floor (raising it, never lowering), end the
    /// device's sessions from earlier Logins, then answer with
    /// `handle_replay_floor_stored`.
    StoreReplayFloor {
        session_id: SessionId,
        floor: u64,
    },
    Registered {
        fqdn: String,
        observed: SocketAddr,
    },
    RouteDirected {
        route_id: RouteId,
        initiator: String,
        responder: String,
        pattern: RoutePattern,
    },
    NatDetected {
        fqdn: String,
        nat: NatKind,
    },
    DirectionFailed {
        initiator: String,
        target: String,
        reason: String,
    },
    /// A session ended (ended in the store, superseded, expired): if its
    /// certificate was revoked or its device disabled or removed, answer
    /// with `handle_withdrawn`, and the NMS tells every node.
    SessionEnded {
        fqdn: String,
        cert_serial: u64,
    },
    /// An adapter asked for the general nodes it serves: look up the ones
    /// of `device_id` and answer with `handle_general_nodes`.
    NeedGeneralNodes {
        session_id: SessionId,
        txid: u64,
        device_id: String,
        offset: u16,
    },
    /// A Direction Request for a name no node registered here holds: ask
    /// the NMSs of `scope` (the other instances, or the cooperating
    /// domain `target` is in) and answer with `handle_link_answer`.
    LinkDirect {
        ticket: u64,
        target: String,
        scope: LinkScope,
        initiator: LinkInitiator,
    },
    /// The answer to a link's request `ticket` (`handle_link_direct`):
    /// send `message` back over that link.
    LinkReply {
        ticket: u64,
        message: LinkMessage,
    },
}

/// Why the NMS wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReason {
    RetransmitDirection,
    DirectionTimeout,
    Expire,
    /// A TRS that reported turns dead unless it reports first.
    TrsSilent,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NmsCounters {
    /// Sessions held now (a level, not a total).
    pub sessions: u64,
    pub rx_packets: u64,
    pub rx_bad: u64,
    pub rx_unknown_session: u64,
    /// Reflect Requests answered, dropped as malformed (too short among
    /// them), dropped for their source's rate (§4.8); not in `rx_packets`.
    pub reflects: u64,
    pub reflects_bad: u64,
    pub reflects_limited: u64,
    /// TRS Reports taken, dropped (malformed, wrong MAC, replayed, off
    /// the clock) and authentic but naming no configured TRS (§5.18);
    /// not in `rx_packets`.
    pub trs_reports: u64,
    pub trs_reports_bad: u64,
    pub trs_reports_unknown: u64,
    /// TRS instances whose reports are fresh, and those that reported and
    /// fell silent (levels).
    pub trs_live: u64,
    pub trs_dead: u64,
    pub registrations: u64,
    pub directions: u64,
    pub direction_failures: u64,
    /// Session lookups asked of the shell.
    pub lookups: u64,
    /// Lookups the store answered with no such (live) session.
    pub lookups_missing: u64,
    /// Packets of unknown sessions dropped without a lookup: rate limits,
    /// or too many lookups waiting.
    pub lookups_limited: u64,
    /// Packets of sessions known to be missing or ended, dropped without a
    /// lookup.
    pub rx_ended_session: u64,
    /// Packets whose counter is at or below the session's replay floor.
    pub rx_below_floor: u64,
    /// Registrations (and session loads) refused because the device has
    /// registered under a newer session.
    pub rx_superseded: u64,
    /// Sessions dropped because they ended.
    pub sessions_ended: u64,
    /// Nodes withdrawn from the overlay (revoked, disabled, removed).
    pub withdrawn: u64,
    /// PeerRevoked notices sent (retransmissions included), and the ones
    /// that were never acknowledged.
    pub notices_sent: u64,
    pub notices_unacked: u64,
    /// Direction Requests refused for their rate (per session or target).
    pub directions_limited: u64,
    /// Direction Requests for a route already being set up between the
    /// same two nodes, left to that route.
    pub directions_coalesced: u64,
    /// Path Challenges sent to new source addresses of sessions, and the
    /// addresses that answered them (§4.7).
    pub path_challenges: u64,
    pub paths_validated: u64,
    /// Datagrams not sent to an unvalidated address because they would
    /// have taken it past three times the bytes received from it.
    pub tx_unvalidated_limited: u64,
    /// Direction Requests held until a party's new address answered.
    pub directions_held: u64,
    /// Messages not sent because the session's counters reached the limit
    /// of the range this NMS reserved ([`Nms::with_counter_limit`]).
    pub tx_counter_exhausted: u64,
    /// Direction Requests refused by the access policy.
    pub directions_denied: u64,
    /// Routes withdrawn because the policy no longer allows them, and
    /// routes whose filters changed (each told to both ends).
    pub routes_withdrawn: u64,
    pub routes_refiltered: u64,
    /// Policies applied.
    pub policies: u64,
    /// Tunnel Reports taken (the console shows them).
    pub tunnel_reports: u64,
    /// Direction Requests forwarded to the links, requests other NMSs
    /// asked of this one, and link answers naming another node than the
    /// one asked for (§5.19).
    pub links_forwarded: u64,
    pub links_asked: u64,
    pub links_bad_answers: u64,
}

/// Registration state of one node.
#[derive(Debug, Clone)]
pub struct Registration {
    pub static_public: [u8; 32],
    pub tunnel_port: u16,
    pub local_addrs: Vec<SocketAddr>,
    /// The address the NMS sends to and hands to peers. Once `validated`,
    /// only a Path Response from a new address replaces it (§4.7).
    pub observed: SocketAddr,
    /// `observed` answered a Path Challenge.
    pub validated: bool,
    /// Where its NAT Probe to the second port came from.
    pub observed_probe: Option<SocketAddr>,
    /// The NMS socket the node talks to (replies leave from it).
    pub nms_local: SocketAddr,
    pub last_seen: Instant,
    /// When this Registration arrived: a NAT Probe is due soon after.
    pub registered_at: Instant,
    /// How its Registration came: native UDP or a QUIC / TCP leg.
    pub transport: cyphonic_proto::Transport,
    /// Its QUIC listener port (0: none).
    pub quic_port: u16,
    /// The public IPv4 address its router's port mapping gives it.
    pub mapped: Option<SocketAddr>,
    /// Its tunnels as its latest Tunnel Report gave them (kept across a
    /// new Registration of the same session: the tunnels outlive it).
    pub tunnels: Option<TunnelReport>,
}

impl Registration {
    pub fn net(&self) -> NetInfo {
        NetInfo {
            local_addrs: self.local_addrs.clone(),
            observed: self.observed,
            observed_probe: self.observed_probe,
            transport: self.transport,
            quic_port: self.quic_port,
            mapped: self.mapped,
        }
    }

    pub fn nat(&self) -> NatKind {
        self.net().nat()
    }
}

struct Session {
    info: SessionInfo,
    cipher: SignalCipher,
    registration: Option<Registration>,
    /// A source address of authentic packets that has not answered a Path
    /// Challenge yet (§4.7).
    path: Option<PathCandidate>,
    /// For a session from the store: its order and replay floor.
    stored: Option<Stored>,
}

/// A stored session's standing as the NMS tracks it.
struct Stored {
    login_seq: u64,
    /// Counters at or below this are refused.
    floor: u64,
    /// The greatest floor known to be in the store.
    stored_floor: u64,
    /// The floor being stored now (one write per session at a time).
    storing: Option<u64>,
    /// The latest Registration waiting for its counter to be stored.
    waiting: Option<WaitingRegistration>,
}

struct WaitingRegistration {
    counter: u64,
    local: SocketAddr,
    from: SocketAddr,
    txid: u64,
    request: RegistrationRequest,
}

/// A new source address of a session, on trial (RFC 9000 §8.2 path
/// validation; §9.3's three-times limit on what it is sent meanwhile).
struct PathCandidate {
    addr: SocketAddr,
    /// The NMS socket its packets reached.
    local: SocketAddr,
    /// The challenge (a Path Challenge's txid).
    challenge: u64,
    /// Bytes received from it and sent to it while on trial.
    received: usize,
    sent: usize,
    /// `received` when the challenge was last sent: it goes with an answer
    /// to a new packet, never twice for one.
    challenged_at: usize,
    /// When the challenge is sent again (a lost challenge or echo), within
    /// the budget, while the trial lasts.
    next_challenge: Instant,
    /// It echoed its challenge before any Registration of its session
    /// took effect (the first one waits for its replay floor to be
    /// stored): the Registration that takes effect from it starts
    /// validated.
    answered: bool,
    /// When it was first seen: it holds route selection for at most
    /// [`PATH_VALIDATION_TIMEOUT`].
    since: Instant,
}

/// A Direction Request waiting for a party's new address to answer its
/// Path Challenge.
struct HeldDirection {
    mn: SessionId,
    txid: u64,
    target: String,
    since: Instant,
}

/// How long a new address may take to answer its Path Challenge before
/// route selection goes on without it (with the validated address, or
/// failing when there is none).
pub const PATH_VALIDATION_TIMEOUT: Duration = Duration::from_secs(1);
/// A Path Challenge unanswered this long is sent again (the budget
/// allows three or four).
pub const PATH_CHALLENGE_RETRANSMIT: Duration = Duration::from_millis(150);
/// An unvalidated address is sent at most this many times the bytes
/// received from it (RFC 9000 §8.1).
pub const UNVALIDATED_AMPLIFICATION: usize = 3;
/// Direction Requests held at once.
const MAX_HELD_DIRECTIONS: usize = 4096;

/// Packets waiting for a session lookup, since when.
struct Awaiting {
    since: Instant,
    packets: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

struct PendingRoute {
    /// Who asked: a node this NMS holds, or another NMS over a link.
    origin: Origin,
    cn_session: SessionId,
    cn_txid: u64,
    to_initiator: RouteDirection,
    to_responder: RouteDirection,
    next_retransmit: Instant,
    interval: Duration,
    deadline: Instant,
}

/// Who asked for a route.
#[derive(Debug, Clone)]
enum Origin {
    /// A node of this NMS: its session and its request's txid.
    Local { session: SessionId, txid: u64 },
    /// Another NMS, over a link (§5.19): the shell's ticket for the request,
    /// and the initiator as that NMS described it.
    Link {
        ticket: u64,
        initiator: Box<LinkInitiator>,
        scope: LinkScope,
    },
}

impl Origin {
    fn is_local(&self, session: SessionId) -> bool {
        matches!(self, Origin::Local { session: s, .. } if *s == session)
    }
}

/// The initiator of a route, as the responder's NMS knows it.
struct Asker {
    fqdn: String,
    vip4: Ipv4Addr,
    vip6: Ipv6Addr,
    static_public: [u8; 32],
    cert_serial: u64,
    net: NetInfo,
    /// Its name in the access policy: its device ID within this cloud,
    /// its FQDN when it belongs to a cooperating domain.
    policy_name: String,
}

/// A notice to one node (`PeerRevoked`), sent until acknowledged.
struct Notice {
    message: Message,
    next_retransmit: Instant,
    interval: Duration,
    tries: u32,
}

/// Sends of one notice before the NMS gives up (250 ms doubling: about
/// 8 s in all).
const NOTICE_TRIES: u32 = 6;
/// Notices in flight at once; beyond, the oldest give up.
const MAX_NOTICES: usize = 65_536;
/// Withdrawn certificates remembered (newest last), so no session of one
/// registers or is routed to again while the store catches up.
const MAX_WITHDRAWN: usize = 4096;

/// Routes remembered for policy changes; beyond, the oldest is forgotten
/// (its tunnel keeps the filter it had until it is routed again).
pub const MAX_LINKS: usize = 65_536;

/// Direction budgets tracked at once, per kind (sessions, targets).
const MAX_DIRECTION_BUCKETS: usize = 16_384;

/// Token buckets by key, at most `max`: when full, the ones that refilled
/// (idle) go first, and all if that frees too little.
pub(crate) struct KeyedBuckets<K> {
    buckets: HashMap<K, Bucket>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    pub(crate) fn new(max: usize) -> Self {
        KeyedBuckets {
            buckets: HashMap::new(),
            max,
        }
    }

    /// Keys with a bucket now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Takes a token from `key`'s bucket (`rate` per second, `burst`) if it
    /// has one.
    pub(crate) fn allow(&mut self, now: Instant, key: &K, rate: f64, burst: f64) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max {
            self.buckets.retain(|_, b| {
                b.refill(now, rate, burst);
                b.tokens < burst
            });
            if self.buckets.len() >= self.max / 2 {
                self.buckets.clear();
            }
        }
        let b = self
            .buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(burst, now));
        b.refill(now, rate, burst);
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }
}

/// Bounds on state a remote party can grow.
const MAX_PENDING_PER_UNKNOWN_SESSION: usize = 4;
const MAX_UNKNOWN_SESSIONS: usize = 1024;
const MAX_PENDING_ROUTES: usize = 4096;
const RESPONSE_CACHE: usize = 4096;
/// Information Requests waiting for the shell's lookup.
const MAX_INFORMATION_PENDING: usize = 1024;
/// Session IDs remembered as missing or ended, and for how long.
pub const MAX_MISSING_SESSIONS: usize = 4096;
pub const MISSING_TTL: Duration = Duration::from_secs(60);
/// Sources whose lookup rate is tracked; beyond, idle ones are dropped
/// (and if that frees too little, all are).
pub const MAX_LOOKUP_SOURCES: usize = 4096;

pub struct Nms {
    config: NmsConfig,
    rng: StdRng,
    counter_base: u64,
    /// No session seals a counter at or above this (`docs/protocol.md`
    /// §4.2): the end of the range the shell reserved for this run.
    counter_limit: u64,
    sessions: HashMap<SessionId, Session>,
    /// fqdn -> session of its latest registration.
    by_fqdn: HashMap<String, SessionId>,
    /// The VIPs of the registered nodes in `by_fqdn`: whose each is.
    by_vip: HashMap<IpAddr, String>,
    /// Packets waiting for a session lookup, by session ID.
    awaiting_session: BTreeMap<SessionId, Awaiting>,
    /// Session IDs the store did not know, or that ended.
    missing: MissingSessions,
    lookup_limits: LookupLimits,
    /// Direction Request budgets per requesting session and per target.
    session_directions: KeyedBuckets<SessionId>,
    target_directions: KeyedBuckets<String>,
    routes: BTreeMap<RouteId, PendingRoute>,
    /// (session, txid) -> sealed answer, so a retransmitted request is
    /// answered the same way instead of being acted on twice.
    answered: HashMap<(SessionId, u64), Vec<u8>>,
    answered_order: VecDeque<(SessionId, u64)>,
    /// Information Requests the shell is looking up: where to answer.
    information_pending: BTreeMap<(SessionId, u64), (SocketAddr, SocketAddr)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NmsEvent>,
    counters: NmsCounters,
    /// The TRS instances: which live, and their load (§5.18); `None`
    /// without relays.
    trs_pool: Option<TrsPool>,
    /// Notices in flight, by (session, txid).
    notices: BTreeMap<(SessionId, u64), Notice>,
    /// Certificate serials withdrawn from the overlay.
    withdrawn: VecDeque<u64>,
    /// Sessions that ended lately, kept a short while so a node whose
    /// certificate turns out withdrawn can be told (newest last).
    ended_lately: VecDeque<(Instant, Session)>,
    /// Direction Requests waiting for a path validation, oldest first.
    held_directions: VecDeque<HeldDirection>,
    /// Sessions with an address on trial, whose challenge may be sent
    /// again.
    challenging: std::collections::BTreeSet<SessionId>,
    /// The access policy.
    policy: Policy,
    /// Routes directed, by (initiator, responder) session: the filter the
    /// initiator was given (the responder has its reverse), and when.
    links: BTreeMap<(SessionId, SessionId), (u64, RouteFilter)>,
    /// Orders `links` by age, for the bound.
    link_seq: u64,
    /// The RouteUpdate notice in flight per (session, peer FQDN): a newer
    /// one replaces it.
    route_notices: HashMap<(SessionId, String), u64>,
    /// Answers Reflect Requests (§4.8).
    reflector: Reflector,
    /// Direction Requests waiting for the links, by ticket (§5.19).
    forwarded: BTreeMap<u64, link::Forwarded>,
}

/// How long, and how many, ended sessions are kept for telling their node
/// it was withdrawn.
const ENDED_KEPT: Duration = Duration::from_secs(30);
const MAX_ENDED_KEPT: usize = 256;

impl Nms {
    /// `seed` drives route IDs and tunnel keys in tests; production passes
    /// OS randomness. `counter_base` is the wall clock in microseconds (see
    /// [`cyphonic_proto::signal`]).
    pub fn new(config: NmsConfig, seed: [u8; 32], counter_base: u64) -> Self {
        let trs_pool = config
            .relay
            .as_ref()
            .map(|r| TrsPool::new(&r.servers, &r.secret, config.trs_dead_after));
        Self {
            reflector: Reflector::new(config.reflect),
            config,
            rng: StdRng::from_seed(seed),
            counter_base,
            counter_limit: u64::MAX,
            sessions: HashMap::new(),
            by_fqdn: HashMap::new(),
            by_vip: HashMap::new(),
            awaiting_session: BTreeMap::new(),
            missing: MissingSessions::default(),
            lookup_limits: LookupLimits::default(),
            session_directions: KeyedBuckets::new(MAX_DIRECTION_BUCKETS),
            target_directions: KeyedBuckets::new(MAX_DIRECTION_BUCKETS),
            routes: BTreeMap::new(),
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            information_pending: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: NmsCounters::default(),
            trs_pool,
            notices: BTreeMap::new(),
            withdrawn: VecDeque::new(),
            ended_lately: VecDeque::new(),
            held_directions: VecDeque::new(),
            challenging: std::collections::BTreeSet::new(),
            policy: Policy::default(),
            links: BTreeMap::new(),
            link_seq: 0,
            route_notices: HashMap::new(),
            forwarded: BTreeMap::new(),
        }
    }

    /// Seals no counter at or above `limit`, under any session: the shell
    /// reserved `counter_base .. limit` in the database before this run
    /// (`Store::reserve_signal_counters`), so no other run of any NMS uses
    /// them, whatever the clock did. A message past it is not sent
    /// (counted `tx_counter_exhausted`).
    pub fn with_counter_limit(mut self, limit: u64) -> Self {
        self.counter_limit = limit;
        self
    }

    /// The operator's access policy, new or changed: from now on routes
    /// follow it, and every route already directed whose filter changes is
    /// told to both ends (a route it no longer allows is withdrawn).
    pub fn handle_policy(&mut self, now: Instant, policy: Policy) {
        self.counters.policies += 1;
        self.policy = policy;
        let keys: Vec<(SessionId, SessionId)> = self.links.keys().copied().collect();
        for key in keys {
            self.reconcile_link(now, key);
        }
        self.send_notices(now);
    }

    /// The filter of the route between two sessions, from `me`'s side.
    fn route_filter(&self, me: SessionId, peer: SessionId) -> Option<RouteFilter> {
        if self.policy.allows_everything() {
            return Some(RouteFilter::open());
        }
        let me = &self.sessions.get(&me)?.info.device_id;
        let peer = &self.sessions.get(&peer)?.info.device_id;
        Some(self.policy.filter(me, peer))
    }

    /// Tells both ends of a directed route its filter when the policy's
    /// differs from the one they have; a closed one withdraws the route.
    fn reconcile_link(&mut self, now: Instant, key: (SessionId, SessionId)) {
        let Some((_, current)) = self.links.get(&key) else {
            return;
        };
        let Some(wanted) = self.route_filter(key.0, key.1) else {
            self.links.remove(&key);
            return;
        };
        if *current == wanted {
            return;
        }
        let names = (
            self.sessions.get(&key.0).map(|s| s.info.fqdn.clone()),
            self.sessions.get(&key.1).map(|s| s.info.fqdn.clone()),
        );
        let (Some(mn_fqdn), Some(cn_fqdn)) = names else {
            self.links.remove(&key);
            return;
        };
        if wanted.is_closed() {
            tracing::info!(initiator = %mn_fqdn, responder = %cn_fqdn, "route withdrawn: the policy no longer allows it");
            self.counters.routes_withdrawn += 1;
            self.links.remove(&key);
        } else {
            tracing::info!(initiator = %mn_fqdn, responder = %cn_fqdn, filter = %wanted, "route filter changed");
            self.counters.routes_refiltered += 1;
            if let Some(link) = self.links.get_mut(&key) {
                link.1 = wanted.clone();
            }
        }
        let reversed = wanted.reversed();
        self.notify(
            now,
            key.0,
            Message::RouteUpdate {
                fqdn: cn_fqdn,
                filter: wanted,
            },
        );
        self.notify(
            now,
            key.1,
            Message::RouteUpdate {
                fqdn: mn_fqdn,
                filter: reversed,
            },
        );
    }

    /// Queues a notice to one session, sent until acknowledged; an older
    /// notice about the same peer route gives way.
    fn notify(&mut self, now: Instant, id: SessionId, message: Message) {
        let txid: u64 = self.rng.gen();
        if let Message::RouteUpdate { fqdn, .. } = &message {
            if let Some(old) = self.route_notices.insert((id, fqdn.clone()), txid) {
                self.notices.remove(&(id, old));
            }
            if self.route_notices.len() > 2 * MAX_LINKS {
                // Forget those whose notice is done (acknowledged or given up).
                let notices = &self.notices;
                self.route_notices
                    .retain(|(s, _), t| notices.contains_key(&(*s, *t)));
            }
        }
        while self.notices.len() >= MAX_NOTICES {
            self.notices.pop_first();
            self.counters.notices_unacked += 1;
        }
        self.notices.insert(
            (id, txid),
            Notice {
                message,
                next_retransmit: now,
                interval: self.config.retransmit,
                tries: 0,
            },
        );
    }

    /// Remembers a route the NMS directed, replacing any earlier one of
    /// the pair (in either direction).
    fn remember_link(&mut self, mn: SessionId, cn: SessionId, filter: RouteFilter) {
        self.links.remove(&(cn, mn));
        if !self.links.contains_key(&(mn, cn)) && self.links.len() >= MAX_LINKS {
            if let Some(oldest) = self
                .links
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(k, _)| *k)
            {
                self.links.remove(&oldest);
            }
        }
        self.link_seq += 1;
        self.links.insert((mn, cn), (self.link_seq, filter));
    }

    /// The node `fqdn` with certificate `cert_serial` left the overlay (the
    /// shell found its certificate revoked or its device disabled or
    /// removed, [`NmsEvent::SessionEnded`]): its sessions end, and every
    /// registered node is told to close its tunnels with it
    /// ([`Message::PeerRevoked`], sent until acknowledged).
    pub fn handle_withdrawn(&mut self, now: Instant, fqdn: &str, cert_serial: u64) {
        let fqdn = normalize(fqdn);
        if !self.withdrawn.contains(&cert_serial) {
            if self.withdrawn.len() >= MAX_WITHDRAWN {
                self.withdrawn.pop_front();
            }
            self.withdrawn.push_back(cert_serial);
            self.counters.withdrawn += 1;
        }
        // In session order: the notices' txids come from the NMS's
        // generator, so the same inputs send the same packets.
        let mut theirs: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.info.cert_serial == cert_serial)
            .map(|(id, _)| *id)
            .collect();
        theirs.sort_unstable();
        for id in theirs {
            self.end_session(now, id);
        }
        // The node itself, told once over its ended session (the AS
        // refuses its next Login in any case).
        self.ended_lately
            .retain(|(at, _)| now.saturating_duration_since(*at) < ENDED_KEPT);
        for (_, s) in self
            .ended_lately
            .iter_mut()
            .filter(|(_, s)| s.info.cert_serial == cert_serial)
        {
            let Some(reg) = s.registration.as_ref() else {
                continue;
            };
            let txid: u64 = self.rng.gen();
            let Ok(payload) = s.cipher.try_seal(&Envelope {
                txid,
                message: Message::PeerRevoked {
                    fqdn: fqdn.clone(),
                    cert_serial,
                },
            }) else {
                self.counters.tx_counter_exhausted += 1;
                continue;
            };
            self.transmits.push_back(Transmit {
                local: reg.nms_local,
                destination: reg.observed,
                payload,
            });
            self.counters.notices_sent += 1;
        }
        let mut others: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.registration.is_some() && normalize(&s.info.fqdn) != fqdn)
            .map(|(id, _)| *id)
            .collect();
        others.sort_unstable();
        tracing::info!(%fqdn, serial = format_args!("{cert_serial:#x}"), nodes = others.len(), "node withdrawn: telling every node");
        for id in others {
            while self.notices.len() >= MAX_NOTICES {
                self.notices.pop_first();
                self.counters.notices_unacked += 1;
            }
            let txid: u64 = self.rng.gen();
            let notice = Notice {
                message: Message::PeerRevoked {
                    fqdn: fqdn.clone(),
                    cert_serial,
                },
                next_retransmit: now,
                interval: self.config.retransmit,
                tries: 0,
            };
            self.notices.insert((id, txid), notice);
        }
        self.send_notices(now);
    }

    /// Whether a certificate was withdrawn from the overlay.
    pub fn is_withdrawn(&self, cert_serial: u64) -> bool {
        self.withdrawn.contains(&cert_serial)
    }

    /// Sends the notices due (first sends and retransmissions, each sealed
    /// afresh) and gives up on those sent `NOTICE_TRIES` times.
    fn send_notices(&mut self, now: Instant) {
        let mut done = Vec::new();
        for (&(id, txid), n) in self.notices.iter_mut() {
            if now < n.next_retransmit {
                continue;
            }
            let Some(session) = self.sessions.get_mut(&id) else {
                done.push((id, txid));
                continue;
            };
            let Some(reg) = session.registration.as_ref() else {
                done.push((id, txid));
                continue;
            };
            if n.tries >= NOTICE_TRIES {
                self.counters.notices_unacked += 1;
                done.push((id, txid));
                continue;
            }
            let Ok(payload) = session.cipher.try_seal(&Envelope {
                txid,
                message: n.message.clone(),
            }) else {
                self.counters.tx_counter_exhausted += 1;
                done.push((id, txid));
                continue;
            };
            self.transmits.push_back(Transmit {
                local: reg.nms_local,
                destination: reg.observed,
                payload,
            });
            self.counters.notices_sent += 1;
            n.tries += 1;
            n.next_retransmit = now + n.interval;
            n.interval *= 2;
        }
        for key in done {
            self.notices.remove(&key);
        }
    }

    pub fn counters(&self) -> NmsCounters {
        let reflect = self.reflector.counters();
        let pool = self
            .trs_pool
            .as_ref()
            .map(TrsPool::counters)
            .unwrap_or_default();
        NmsCounters {
            sessions: self.sessions.len() as u64,
            reflects: reflect.reflects,
            reflects_bad: reflect.reflects_bad,
            reflects_limited: reflect.reflects_limited,
            trs_reports: pool.reports,
            trs_reports_bad: pool.reports_bad,
            trs_reports_unknown: pool.reports_unknown,
            trs_live: self.trs_pool.as_ref().map_or(0, TrsPool::live),
            trs_dead: self.trs_pool.as_ref().map_or(0, TrsPool::dead),
            ..self.counters
        }
    }

    /// Registered nodes, for status pages: (fqdn, registration).
    pub fn registrations(&self) -> Vec<(String, Registration)> {
        let mut out: Vec<_> = self
            .sessions
            .values()
            .filter_map(|s| Some((s.info.fqdn.clone(), s.registration.clone()?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<NmsEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let notices = self
            .notices
            .values()
            .map(|n| (n.next_retransmit, TimerReason::RetransmitDirection))
            .chain(self.held_directions.front().map(|h| {
                (
                    h.since + PATH_VALIDATION_TIMEOUT,
                    TimerReason::DirectionTimeout,
                )
            }))
            .chain(
                self.challenging
                    .iter()
                    .filter_map(|id| self.sessions.get(id)?.path.as_ref())
                    .map(|p| (p.next_challenge, TimerReason::RetransmitDirection)),
            );
        self.routes
            .values()
            .flat_map(|r| {
                [
                    (r.next_retransmit, TimerReason::RetransmitDirection),
                    (r.deadline, TimerReason::DirectionTimeout),
                ]
            })
            .chain(notices)
            .chain(
                self.forwarded
                    .values()
                    .map(|f| (f.deadline, TimerReason::DirectionTimeout)),
            )
            .chain(
                self.trs_pool
                    .as_ref()
                    .and_then(TrsPool::poll_timeout)
                    .map(|t| (t, TimerReason::TrsSilent)),
            )
            .min_by_key(|(t, _)| *t)
    }

    /// A packet reached the NMS socket bound to `local` from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        packet: &[u8],
    ) {
        if packet.first() == Some(&TYPE_REFLECT_REQUEST) {
            self.on_reflect(now, local, from, packet);
            return;
        }
        if crate::trs_pool::is_report(packet) {
            self.on_trs_report(now, from, packet);
            return;
        }
        self.counters.rx_packets += 1;
        let session_id = match signal::peek_session(packet) {
            Ok(id) => id,
            Err(e) => {
                self.counters.rx_bad += 1;
                tracing::debug!(%from, error = %e, "dropping packet");
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            self.counters.rx_unknown_session += 1;
            self.on_unknown_session(now, local, from, session_id, packet);
            return;
        };
        // peek_session checked the length: the counter is there.
        let counter = signal_counter(packet).unwrap_or(0);
        if let Some(stored) = &session.stored {
            if counter <= stored.floor {
                self.counters.rx_below_floor += 1;
                tracing::debug!(%from, %session_id, counter, floor = stored.floor, "dropping signaling packet at or below the replay floor");
                return;
            }
        }
        let envelope = match session.cipher.open(packet) {
            Ok(env) => env,
            Err(e) => {
                self.counters.rx_bad += 1;
                tracing::debug!(%from, %session_id, error = %e, "dropping signaling packet");
                return;
            }
        };
        tracing::trace!(%from, %session_id, msg = envelope.message.name(), txid = envelope.txid, "signaling in");
        if let Some(reg) = session.registration.as_mut() {
            reg.last_seen = now;
        }
        // A NAT Probe comes from the node's mapping towards the probe port,
        // another address behind a symmetric NAT: it is no candidate, and
        // its one answer is smaller than three times the probe (§4.7).
        let probe = matches!(envelope.message, Message::NatProbe);
        let validated = session
            .registration
            .as_ref()
            .is_some_and(|r| r.validated && r.observed == from);
        if probe {
            // Neither a candidate nor a sign of the validated path.
        } else if validated {
            // The node speaks from its validated address: an address on
            // trial was a raced copy's, or a path it left.
            session.path = None;
        } else {
            // Authentic, but maybe a copy an attacker raced from a spoofed
            // source: the address is on trial until it echoes a challenge.
            let fresh = session.path.as_ref().is_none_or(|p| p.addr != from);
            if fresh {
                let challenge = self.rng.gen_range(1..u64::MAX);
                session.path = Some(PathCandidate {
                    addr: from,
                    local,
                    challenge,
                    received: 0,
                    sent: 0,
                    challenged_at: 0,
                    next_challenge: now + PATH_CHALLENGE_RETRANSMIT,
                    answered: false,
                    since: now,
                });
            }
            if let Some(path) = session.path.as_mut() {
                path.received += packet.len();
            }
            self.challenging.insert(session_id);
        }
        self.dispatch(now, session_id, local, from, counter, envelope);
    }

    /// A Reflect Request (§4.8), on any NMS socket: answered from that
    /// socket with the source address, the NMS's public addresses and the
    /// relay list, or dropped (counted by the reflector).
    fn on_reflect(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, packet: &[u8]) {
        let mut buf = packet.to_vec();
        let relays = self
            .trs_pool
            .as_ref()
            .map(|p| p.order(now))
            .unwrap_or_default();
        match self
            .reflector
            .handle_request(now, from, &mut buf, &self.config.public, &relays)
        {
            Ok(len) => {
                buf.truncate(len);
                self.transmits.push_back(Transmit {
                    local,
                    destination: from,
                    payload: buf,
                });
            }
            Err(reason) => tracing::trace!(%from, ?reason, "Reflect Request dropped"),
        }
    }

    /// Sends the challenges whose time came again, within each address's
    /// budget; a trial over (validated, timed out, budget spent) ends here.
    fn resend_challenges(&mut self, now: Instant) {
        let ids: Vec<SessionId> = self.challenging.iter().copied().collect();
        for id in ids {
            let Some(session) = self.sessions.get_mut(&id) else {
                self.challenging.remove(&id);
                continue;
            };
            let Some(path) = session.path.as_mut() else {
                self.challenging.remove(&id);
                continue;
            };
            if now >= path.since + PATH_VALIDATION_TIMEOUT {
                self.challenging.remove(&id);
                continue;
            }
            if path.answered || now < path.next_challenge {
                continue;
            }
            path.next_challenge = now + PATH_CHALLENGE_RETRANSMIT;
            let Ok(challenge) = session.cipher.try_seal(&Envelope {
                txid: path.challenge,
                message: Message::PathChallenge,
            }) else {
                self.counters.tx_counter_exhausted += 1;
                continue;
            };
            if path.sent + challenge.len() > UNVALIDATED_AMPLIFICATION * path.received {
                self.challenging.remove(&id);
                continue;
            }
            path.sent += challenge.len();
            self.counters.path_challenges += 1;
            self.transmits.push_back(Transmit {
                local: path.local,
                destination: path.addr,
                payload: challenge,
            });
        }
    }

    /// A Path Response: if it echoes the challenge and comes from the
    /// address on trial, that address becomes the session's observed one.
    fn on_path_response(
        &mut self,
        now: Instant,
        session_id: SessionId,
        from: SocketAddr,
        txid: u64,
    ) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let matches = session
            .path
            .as_ref()
            .is_some_and(|p| p.addr == from && p.challenge == txid);
        if !matches {
            // The second echo of a validated path changes nothing.
            let echo = session
                .registration
                .as_ref()
                .is_some_and(|r| r.validated && r.observed == from);
            if !echo {
                self.counters.rx_bad += 1;
            }
            return;
        }
        if session.registration.is_none() {
            // The Registration is still waiting for its replay floor: the
            // address answered, and the Registration taking effect from it
            // starts validated (`apply_registration`).
            if let Some(path) = session.path.as_mut() {
                if !path.answered {
                    path.answered = true;
                    self.counters.paths_validated += 1;
                }
            }
            return;
        }
        let Some(path) = session.path.take() else {
            return;
        };
        self.counters.paths_validated += 1;
        if let Some(reg) = session.registration.as_mut() {
            if reg.observed != path.addr {
                // The probe result belongs to the new network only if it
                // came from the same public address.
                if reg.observed_probe.is_some_and(|p| p.ip() != path.addr.ip()) {
                    reg.observed_probe = None;
                }
                tracing::debug!(%session_id, old = %reg.observed, new = %path.addr, "new address validated");
            }
            reg.observed = path.addr;
            reg.nms_local = path.local;
            reg.validated = true;
        }
        self.run_held_directions(now);
    }

    /// Whether route selection may use this session's registration as it
    /// stands: validated, and no newer address on trial (for at most
    /// [`PATH_VALIDATION_TIMEOUT`]).
    fn settled(&self, session_id: SessionId, now: Instant) -> bool {
        self.sessions.get(&session_id).is_some_and(|s| {
            s.registration
                .as_ref()
                .is_some_and(|r| r.validated && !self.nat_probe_due(r, now))
                && s.path
                    .as_ref()
                    .is_none_or(|p| now >= p.since + PATH_VALIDATION_TIMEOUT)
        })
    }

    /// A node behind an IPv4 NAT whose NAT Probe has not arrived yet, within
    /// [`PATH_VALIDATION_TIMEOUT`] of its Registration: a route decided now
    /// would take its NAT for unknown (relayed, no punching), so route
    /// selection waits for the probe as for a new address on trial.
    fn nat_probe_due(&self, r: &Registration, now: Instant) -> bool {
        self.config.probe_port != 0
            && r.observed_probe.is_none()
            && r.nat() == NatKind::Unknown
            && r.transport == cyphonic_proto::Transport::Udp
            && r.observed.is_ipv4()
            && now < r.registered_at + PATH_VALIDATION_TIMEOUT
    }

    /// Runs the held Direction Requests whose parties are settled, and
    /// the ones that waited [`PATH_VALIDATION_TIMEOUT`].
    fn run_held_directions(&mut self, now: Instant) {
        let held = std::mem::take(&mut self.held_directions);
        for h in held {
            let cn = self.by_fqdn.get(&h.target).copied();
            let ready = self.settled(h.mn, now) && cn.is_none_or(|cn| self.settled(cn, now));
            if ready || now >= h.since + PATH_VALIDATION_TIMEOUT {
                self.direct(now, h.mn, h.txid, &h.target);
            } else {
                self.held_directions.push_back(h);
            }
        }
    }

    /// A packet for a session the NMS does not hold: queue it and ask for
    /// a lookup, unless the session is known to be missing or the lookup
    /// limits say no.
    fn on_unknown_session(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        session_id: SessionId,
        packet: &[u8],
    ) {
        if let Some(waiting) = self.awaiting_session.get_mut(&session_id) {
            if waiting.packets.len() < MAX_PENDING_PER_UNKNOWN_SESSION {
                waiting.packets.push((local, from, packet.to_vec()));
            }
            return;
        }
        if self.missing.contains(session_id, now) {
            self.counters.rx_ended_session += 1;
            return;
        }
        if self.awaiting_session.len() >= MAX_UNKNOWN_SESSIONS
            || !self.lookup_limits.allow(
                now,
                from.ip(),
                self.config.lookups_per_source,
                self.config.lookups_total,
            )
        {
            self.counters.lookups_limited += 1;
            tracing::debug!(%from, %session_id, "unknown session: lookup limited");
            return;
        }
        self.awaiting_session.insert(
            session_id,
            Awaiting {
                since: now,
                packets: vec![(local, from, packet.to_vec())],
            },
        );
        self.counters.lookups += 1;
        self.events.push_back(NmsEvent::NeedSession { session_id });
    }

    /// The shell found the session a [`NmsEvent::NeedSession`] asked for,
    /// in a store that does not order sessions or keep replay floors (a
    /// test harness): the session is used as it is. A shell over the
    /// cloud's store answers with [`Nms::handle_stored_session`].
    pub fn handle_session(&mut self, now: Instant, info: SessionInfo) {
        self.load_session(now, info, None, None);
    }

    /// The shell found the session a [`NmsEvent::NeedSession`] asked for,
    /// with its standing in the store.
    pub fn handle_stored_session(
        &mut self,
        now: Instant,
        info: SessionInfo,
        standing: SessionStanding,
    ) {
        self.load_session(now, info, Some(standing), None);
    }

    /// [`Nms::handle_stored_session`] with the session's own signaling
    /// counters, `base .. limit`, reserved in the database for this load
    /// (`Store::reserve_signal_counters`). Instances sharing a database do
    /// this: a node that moved from another instance has seen counters of
    /// that instance's range, which may lie above this run's, and its
    /// replay window would drop everything sealed below them. A range
    /// reserved now lies above every range reserved before it.
    pub fn handle_stored_session_with_counters(
        &mut self,
        now: Instant,
        info: SessionInfo,
        standing: SessionStanding,
        (base, limit): (u64, u64),
    ) {
        self.load_session(now, info, Some(standing), Some((base, limit)));
    }

    /// The shell has no such session (expired, ended or forged): drop its
    /// packets, and its next ones for [`MISSING_TTL`] without a lookup.
    pub fn handle_session_missing(&mut self, session_id: SessionId) {
        if let Some(waiting) = self.awaiting_session.remove(&session_id) {
            self.counters.lookups_missing += 1;
            self.missing.insert(session_id, waiting.since);
        }
    }

    /// The lookup failed (the store, not the session): drop the packets;
    /// the session's next packet asks again.
    pub fn handle_session_lookup_failed(&mut self, session_id: SessionId) {
        self.awaiting_session.remove(&session_id);
    }

    /// These sessions ended in the store: they stop now, and their packets
    /// are dropped without a lookup for [`MISSING_TTL`]. IDs the NMS does
    /// not hold are remembered too (a lookup may be under way).
    pub fn handle_sessions_ended(&mut self, now: Instant, ended: &[SessionId]) {
        for &id in ended {
            self.end_session(now, id);
        }
    }

    /// The sessions the NMS holds, for the shell's re-check against the
    /// store.
    pub fn held_sessions(&self) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The shell's answer to [`NmsEvent::StoreReplayFloor`].
    pub fn handle_replay_floor_stored(
        &mut self,
        now: Instant,
        session_id: SessionId,
        floor: u64,
        outcome: FloorStored,
    ) {
        let Some(stored) = self
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.stored.as_mut())
        else {
            return;
        };
        if stored.storing == Some(floor) {
            stored.storing = None;
        }
        match outcome {
            FloorStored::Stored => {}
            FloorStored::SessionEnded => {
                self.end_session(now, session_id);
                return;
            }
            FloorStored::Failed => {
                tracing::warn!(%session_id, "cannot store the replay floor: Registration dropped");
                stored.waiting = None;
                return;
            }
        }
        stored.stored_floor = stored.stored_floor.max(floor);
        let Some(waiting) = stored.waiting.take() else {
            return;
        };
        if waiting.counter > stored.stored_floor {
            // A newer Registration came while storing: store its counter.
            if stored.storing.is_none() {
                stored.storing = Some(waiting.counter);
                self.events.push_back(NmsEvent::StoreReplayFloor {
                    session_id,
                    floor: waiting.counter,
                });
            }
            stored.waiting = Some(waiting);
            return;
        }
        if self.superseded(session_id) {
            self.counters.rx_superseded += 1;
            return;
        }
        self.apply_registration(
            now,
            session_id,
            waiting.local,
            waiting.from,
            waiting.txid,
            waiting.counter,
            waiting.request,
        );
    }

    fn load_session(
        &mut self,
        now: Instant,
        info: SessionInfo,
        standing: Option<SessionStanding>,
        counters: Option<(u64, u64)>,
    ) {
        let id = info.session_id;
        let waiting = self.awaiting_session.remove(&id);
        if self.missing.contains(id, now) {
            // It ended while the shell looked it up.
            return;
        }
        if self.is_withdrawn(info.cert_serial) {
            // Its certificate left the overlay; the store will say so too.
            self.missing.insert(id, now);
            return;
        }
        if let Some(standing) = standing {
            if self.older_than_registered(&info.fqdn, standing.login_seq) {
                self.counters.rx_superseded += 1;
                tracing::debug!(session_id = %id, fqdn = %info.fqdn, "refusing a session older than the device's registered one");
                self.missing.insert(id, now);
                return;
            }
        }
        // A session already held keeps its window: loading it afresh would
        // accept its recorded packets once more.
        if !self.sessions.contains_key(&id) {
            self.insert_session(info, standing, counters);
        }
        for (local, from, packet) in waiting.map(|w| w.packets).unwrap_or_default() {
            self.handle_datagram(now, local, from, &packet);
        }
    }

    /// Drops a session that ended; its next packets need no lookup.
    fn end_session(&mut self, now: Instant, id: SessionId) {
        self.awaiting_session.remove(&id);
        self.challenging.remove(&id);
        self.missing.insert(id, now);
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        if self.by_fqdn.get(&session.info.fqdn) == Some(&id) {
            self.by_fqdn.remove(&session.info.fqdn);
            for vip in [IpAddr::V4(session.info.vip4), IpAddr::V6(session.info.vip6)] {
                if self.by_vip.get(&vip) == Some(&session.info.fqdn) {
                    self.by_vip.remove(&vip);
                }
            }
        }
        self.notices.retain(|(s, _), _| *s != id);
        self.links.retain(|(a, b), _| *a != id && *b != id);
        self.route_notices.retain(|(s, _), _| *s != id);
        self.counters.sessions_ended += 1;
        self.events.push_back(NmsEvent::SessionEnded {
            fqdn: session.info.fqdn.clone(),
            cert_serial: session.info.cert_serial,
        });
        if self.ended_lately.len() >= MAX_ENDED_KEPT {
            self.ended_lately.pop_front();
        }
        tracing::debug!(session_id = %id, fqdn = %session.info.fqdn, "session ended");
        self.ended_lately.push_back((now, session));
    }

    /// Whether a stored session of this FQDN with Login number `login_seq`
    /// is older than the stored session the device is registered under.
    fn older_than_registered(&self, fqdn: &str, login_seq: u64) -> bool {
        self.by_fqdn
            .get(fqdn)
            .and_then(|r| self.sessions.get(r))
            .and_then(|r| r.stored.as_ref())
            .is_some_and(|r| r.login_seq > login_seq)
    }

    /// Whether this stored session's device is registered under a newer
    /// one.
    fn superseded(&self, session_id: SessionId) -> bool {
        let Some(session) = self.sessions.get(&session_id) else {
            return true;
        };
        let Some(stored) = session.stored.as_ref() else {
            return false;
        };
        self.by_fqdn.get(&session.info.fqdn) != Some(&session_id)
            && self.older_than_registered(&session.info.fqdn, stored.login_seq)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(pool) = self.trs_pool.as_mut() {
            pool.handle_timeout(now);
        }
        self.send_notices(now);
        self.resend_challenges(now);
        self.expire_forwarded(now);
        if self
            .held_directions
            .front()
            .is_some_and(|h| now >= h.since + PATH_VALIDATION_TIMEOUT)
        {
            self.run_held_directions(now);
        }
        let mut failed = Vec::new();
        for (route_id, r) in self.routes.iter_mut() {
            if now >= r.deadline {
                failed.push(*route_id);
                continue;
            }
            if now >= r.next_retransmit {
                if let Some(session) = self.sessions.get_mut(&r.cn_session) {
                    if let Some(reg) = session.registration.as_ref() {
                        // Sealed afresh, not the first packet again: if that
                        // one arrived and only the confirmation was lost, the
                        // responder's replay window drops a copy, and it
                        // would never confirm again.
                        match session.cipher.try_seal(&Envelope {
                            txid: r.cn_txid,
                            message: Message::RouteDirectionToResponder(r.to_responder.clone()),
                        }) {
                            Ok(payload) => self.transmits.push_back(Transmit {
                                local: reg.nms_local,
                                destination: reg.observed,
                                payload,
                            }),
                            Err(_) => self.counters.tx_counter_exhausted += 1,
                        }
                    }
                }
                r.interval *= 2;
                r.next_retransmit = now + r.interval;
            }
        }
        for route_id in failed {
            if let Some(r) = self.routes.remove(&route_id) {
                let target = r.to_initiator.peer.fqdn.clone();
                let code = DirectionErrorCode::Timeout;
                let message = format!("{target} did not answer the route direction");
                match r.origin {
                    Origin::Local { session, txid } => {
                        self.fail_direction(session, txid, &target, code, message)
                    }
                    Origin::Link { ticket, .. } => self.refuse_link(ticket, code, message),
                }
            }
        }
    }

    fn insert_session(
        &mut self,
        info: SessionInfo,
        standing: Option<SessionStanding>,
        counters: Option<(u64, u64)>,
    ) {
        let (base, limit) = counters.unwrap_or((self.counter_base, self.counter_limit));
        let cipher = SignalCipher::new(info.session_id, &info.common_key, Role::Nms, base)
            .with_tx_limit(limit);
        self.sessions.insert(
            info.session_id,
            Session {
                info,
                cipher,
                registration: None,
                path: None,
                stored: standing.map(|s| Stored {
                    login_seq: s.login_seq,
                    floor: s.replay_floor,
                    stored_floor: s.replay_floor,
                    storing: None,
                    waiting: None,
                }),
            },
        );
    }

    fn dispatch(
        &mut self,
        now: Instant,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        counter: u64,
        env: Envelope,
    ) {
        if let Some(cached) = self.answered.get(&(session_id, env.txid)) {
            // A retransmitted request: same answer, no second action. The
            // cached packet is re-sent as is; its counter is already past the
            // receiver's window only if the first copy arrived, in which case
            // the duplicate is harmlessly dropped there.
            let payload = cached.clone();
            self.send_sealed(session_id, local, from, payload);
            return;
        }
        match env.message {
            Message::RegistrationRequest(req) => {
                self.on_registration(now, session_id, local, from, env.txid, counter, req)
            }
            Message::KeepAlive => self.on_keepalive(session_id, local, from, env.txid),
            Message::NatProbe => self.on_nat_probe(now, session_id, local, from, env.txid),
            Message::DirectionRequest { target } => {
                self.on_direction_request(now, session_id, env.txid, &target)
            }
            Message::DirectionRequestByVip { vip } => {
                self.on_direction_by_vip(now, session_id, env.txid, vip)
            }
            Message::RouteDirectionConfirmation { route_id } => {
                self.on_confirmation(now, session_id, env.txid, route_id)
            }
            Message::InformationRequest { offset } => {
                self.on_information_request(session_id, local, from, env.txid, offset)
            }
            Message::NoticeAck => {
                if self.notices.remove(&(session_id, env.txid)).is_none() {
                    self.counters.rx_bad += 1;
                }
            }
            Message::PathResponse => self.on_path_response(now, session_id, from, env.txid),
            Message::TunnelReport(report) => {
                match self
                    .sessions
                    .get_mut(&session_id)
                    .and_then(|s| s.registration.as_mut())
                {
                    Some(reg) => {
                        reg.tunnels = Some(report);
                        self.counters.tunnel_reports += 1;
                    }
                    None => self.counters.rx_bad += 1,
                }
            }
            other => {
                self.counters.rx_bad += 1;
                tracing::debug!(
                    %session_id,
                    msg = other.name(),
                    "unexpected message at the NMS"
                );
            }
        }
    }

    /// A Registration under a stored session takes effect once its counter
    /// is stored as the session's replay floor; one under a session older
    /// than the device's registered one is refused.
    #[allow(clippy::too_many_arguments)]
    fn on_registration(
        &mut self,
        now: Instant,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        txid: u64,
        counter: u64,
        req: RegistrationRequest,
    ) {
        if self.superseded(session_id) {
            self.counters.rx_superseded += 1;
            tracing::info!(%from, %session_id, "Registration under a superseded session refused");
            return;
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let Some(stored) = session.stored.as_mut() else {
            self.apply_registration(now, session_id, local, from, txid, counter, req);
            return;
        };
        if counter <= stored.stored_floor {
            self.apply_registration(now, session_id, local, from, txid, counter, req);
            return;
        }
        stored.waiting = Some(WaitingRegistration {
            counter,
            local,
            from,
            txid,
            request: req,
        });
        if stored.storing.is_none() {
            stored.storing = Some(counter);
            self.events.push_back(NmsEvent::StoreReplayFloor {
                session_id,
                floor: counter,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_registration(
        &mut self,
        now: Instant,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        txid: u64,
        counter: u64,
        req: RegistrationRequest,
    ) {
        let keepalive_secs = self.config.keepalive.as_secs().clamp(1, u16::MAX as u64) as u16;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let login_seq = session.stored.as_mut().map(|stored| {
            // Nothing sealed before this Registration is accepted again.
            stored.floor = stored.floor.max(counter);
            stored.login_seq
        });
        let device_id = session.info.device_id.clone();
        let local_addrs = req
            .local_addrs
            .into_iter()
            .filter(|a| usable_endpoint(a.ip()))
            .collect();
        // A validated address stays until a new one answers its challenge
        // (§4.7); a first Registration's address is on trial.
        let kept = session
            .registration
            .as_ref()
            .filter(|r| r.validated)
            .map(|r| (r.observed, (), r.nms_local));
        // An address that echoed its challenge while this first
        // Registration waited for its floor is validated already.
        let answered = kept.is_none()
            && session
                .path
                .as_ref()
                .is_some_and(|p| p.answered && p.addr == from);
        if answered {
            session.path = None;
        }
        let (observed, nms_local, validated) = match kept {
            Some((o, _, l)) => (o, l, true),
            None => (from, local, answered),
        };
        // A Registration again from the same mapping (a retransmission
        // that arrived after the NAT Probe, a raced copy) leaves the NAT's
        // behaviour as probed: the node, which knows it, would not probe
        // again, and routes would be decided as if the NAT were unknown.
        let observed_probe = session
            .registration
            .as_ref()
            .filter(|r| r.observed == from && r.transport == req.transport)
            .and_then(|r| r.observed_probe);
        let tunnels = session.registration.as_mut().and_then(|r| r.tunnels.take());
        session.registration = Some(Registration {
            static_public: req.static_public,
            tunnel_port: req.tunnel_port,
            local_addrs,
            observed,
            validated,
            observed_probe,
            nms_local,
            last_seen: now,
            registered_at: now,
            transport: req.transport,
            quic_port: req.quic_port,
            mapped: req
                .mapped
                .filter(|m| m.is_ipv4() && usable_endpoint(m.ip()) && m.port() != 0),
            tunnels,
        });
        let fqdn = session.info.fqdn.clone();
        let response = Message::RegistrationResponse(RegistrationResponse {
            fqdn: fqdn.clone(),
            vip4: session.info.vip4,
            vip6: session.info.vip6,
            observed: from,
            keepalive_secs,
            probe_port: self.config.probe_port,
        });
        for vip in [IpAddr::V4(session.info.vip4), IpAddr::V6(session.info.vip6)] {
            self.by_vip.insert(vip, fqdn.clone());
        }
        // A node that logged in again replaces its older session.
        if let Some(old) = self.by_fqdn.insert(fqdn.clone(), session_id) {
            if old != session_id && login_seq.is_none() {
                self.sessions.remove(&old);
            }
        }
        if let Some(login_seq) = login_seq {
            // The store ended the device's sessions from earlier Logins
            // before this took effect; so does the NMS, at once.
            let older: Vec<SessionId> = self
                .sessions
                .iter()
                .filter(|(id, s)| {
                    **id != session_id
                        && s.info.device_id == device_id
                        && s.stored.as_ref().is_none_or(|o| o.login_seq < login_seq)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in older {
                self.end_session(now, id);
            }
        }
        self.counters.registrations += 1;
        self.events.push_back(NmsEvent::Registered {
            fqdn,
            observed: from,
        });
        self.answer(session_id, local, from, txid, response, false);
        self.redecide_pending(now, session_id);
    }

    /// A node registered anew (it moved) while it is the responder of a
    /// route being set up: that route was chosen from its old network.
    /// Choose it again, under a fresh route ID; the responder replaces the
    /// stale direction it may have installed.
    fn redecide_pending(&mut self, now: Instant, session_id: SessionId) {
        let stale: Vec<RouteId> = self
            .routes
            .iter()
            .filter(|(_, r)| r.cn_session == session_id)
            .map(|(id, _)| *id)
            .collect();
        for route_id in stale {
            let Some(r) = self.routes.remove(&route_id) else {
                continue;
            };
            let target = r.to_initiator.peer.fqdn.clone();
            tracing::debug!(%route_id, %target, "responder moved during route selection: choosing again");
            match r.origin {
                Origin::Local { session, txid } => {
                    self.on_direction_request(now, session, txid, &target)
                }
                Origin::Link {
                    ticket,
                    initiator,
                    scope,
                } => self.handle_link_direct(now, ticket, &target, *initiator, scope),
            }
        }
    }

    fn on_keepalive(
        &mut self,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        txid: u64,
    ) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let message = match session.registration.as_mut() {
            // A new address (the NAT mapped the node anew) replaces the
            // observed one once it answers its Path Challenge (§4.7); the
            // node, told where it is seen, registers again.
            Some(_) => Message::KeepAliveAck { observed: from },
            // After a cloud restart the NMS has the session (from the
            // database) but not the registration: ask for it again.
            None => Message::ReRegister,
        };
        self.answer(session_id, local, from, txid, message, false);
    }

    /// A NAT Probe: only meaningful on the probe port, where it shows the
    /// node's mapping towards a second destination.
    fn on_nat_probe(
        &mut self,
        now: Instant,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        txid: u64,
    ) {
        if self.config.probe_port == 0 || local.port() != self.config.probe_port {
            self.counters.rx_bad += 1;
            return;
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let Some(reg) = session.registration.as_mut() else {
            return;
        };
        reg.observed_probe = Some(from);
        let (fqdn, nat) = (session.info.fqdn.clone(), reg.nat());
        self.events.push_back(NmsEvent::NatDetected { fqdn, nat });
        // One answer per probe, at most 68 bytes for a 49-byte probe: under
        // three times what the address sent, validated or not (§4.7).
        let Ok(payload) = session.cipher.try_seal(&Envelope {
            txid,
            message: Message::NatProbeAck { observed: from },
        }) else {
            self.counters.tx_counter_exhausted += 1;
            return;
        };
        self.transmits.push_back(Transmit {
            local,
            destination: from,
            payload,
        });
        // Routes held for this node's NAT kind can be decided now.
        self.run_held_directions(now);
    }

    fn relay_offer(
        &mut self,
        now: Instant,
        relay_id: RelayId,
        side: u8,
        servers: &[SocketAddr],
    ) -> Option<RelayOffer> {
        let relay = self.config.relay.as_ref()?;
        let (origin, unix) = relay.wall_origin;
        let expires =
            unix + now.saturating_duration_since(origin).as_secs() + relay.lifetime.as_secs();
        Some(RelayOffer {
            relay_id,
            side,
            expires,
            key: cyphonic_proto::relay::side_key(&relay.secret, relay_id, side, expires),
            servers: servers.to_vec(),
            quic_port: relay.quic_port,
            tcp_port: relay.tcp_port,
        })
    }

    /// A TRS Report (§5.18): taken or dropped by the pool, never
    /// answered.
    fn on_trs_report(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) {
        let (Some(pool), Some(relay)) = (self.trs_pool.as_mut(), self.config.relay.as_ref()) else {
            tracing::debug!(%from, "TRS Report dropped: no relays configured");
            return;
        };
        let (origin, unix) = relay.wall_origin;
        let unix_micros = unix
            .saturating_mul(1_000_000)
            .saturating_add(now.saturating_duration_since(origin).as_micros() as u64);
        match pool.handle_report(now, unix_micros, packet) {
            Ok(instance) => tracing::trace!(%from, instance, "TRS Report"),
            Err(e) => tracing::debug!(%from, error = %e, "TRS Report dropped"),
        }
    }

    /// The TRS list for one route, by instance: the live ones (§5.18),
    /// least loaded first (ties in configured order, so the operator's
    /// nearest-first order holds while the load is even). Both ends get
    /// the same order, so they meet at the same instance and fail over to
    /// the same next one.
    fn relay_servers(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.trs_pool
            .as_mut()
            .map(|p| p.grant_order(now))
            .unwrap_or_default()
    }

    fn on_direction_request(&mut self, now: Instant, mn: SessionId, txid: u64, target: &str) {
        let target = normalize(target);
        if self
            .routes
            .values()
            .any(|r| matches!(r.origin, Origin::Local { session, txid: t } if session == mn && t == txid))
        {
            return; // already directing the responder; it answers in time
        }
        if self
            .sessions
            .get(&mn)
            .and_then(|s| s.registration.as_ref())
            .is_none()
        {
            self.fail_direction(
                mn,
                txid,
                &target,
                DirectionErrorCode::NotRegistered,
                "register first".into(),
            );
            return;
        };
        let per_session = f64::from(self.config.directions_per_session);
        let per_target = f64::from(self.config.directions_per_target);
        if !self
            .session_directions
            .allow(now, &mn, per_session, 2.0 * per_session)
            || !self
                .target_directions
                .allow(now, &target, per_target, 2.0 * per_target)
        {
            self.counters.directions_limited += 1;
            self.fail_direction(
                mn,
                txid,
                &target,
                DirectionErrorCode::RateLimited,
                "too many route requests: try again shortly".into(),
            );
            return;
        }
        let cn = self.by_fqdn.get(&target).copied();
        let settled = self.settled(mn, now) && cn.is_none_or(|cn| self.settled(cn, now));
        if !settled {
            // A party's address is on trial: its endpoints are not handed
            // out until it answers (or the trial times out).
            if self
                .held_directions
                .iter()
                .any(|h| h.mn == mn && h.txid == txid)
            {
                return;
            }
            if self.held_directions.len() >= MAX_HELD_DIRECTIONS {
                if let Some(old) = self.held_directions.pop_front() {
                    self.direct(now, old.mn, old.txid, &old.target);
                }
            }
            self.counters.directions_held += 1;
            self.held_directions.push_back(HeldDirection {
                mn,
                txid,
                target,
                since: now,
            });
            return;
        }
        self.direct(now, mn, txid, &target);
    }

    /// A Direction Request for whoever holds `vip`: the same as one for
    /// that node's name; a VIP no registered node holds is `NotFound`, and
    /// costs the asker's limit like any request (a node scanning the VIP
    /// range gets no faster answers than one asking names).
    fn on_direction_by_vip(&mut self, now: Instant, mn: SessionId, txid: u64, vip: IpAddr) {
        if let Some(fqdn) = self.by_vip.get(&vip).cloned() {
            self.on_direction_request(now, mn, txid, &fqdn);
            return;
        }
        let target = vip.to_string();
        let registered = self
            .sessions
            .get(&mn)
            .is_some_and(|s| s.registration.is_some());
        if !registered {
            let code = DirectionErrorCode::NotRegistered;
            self.fail_direction(mn, txid, &target, code, "register first".into());
            return;
        }
        let per_session = f64::from(self.config.directions_per_session);
        if !self
            .session_directions
            .allow(now, &mn, per_session, 2.0 * per_session)
        {
            self.counters.directions_limited += 1;
            self.fail_direction(
                mn,
                txid,
                &target,
                DirectionErrorCode::RateLimited,
                "too many route requests: try again shortly".into(),
            );
            return;
        }
        let msg = format!("no online node holds {vip}");
        self.fail_direction(mn, txid, &target, DirectionErrorCode::NotFound, msg);
    }

    /// Selects the route for a Direction Request that passed the limits,
    /// and directs the responder.
    fn direct(&mut self, now: Instant, mn: SessionId, txid: u64, target: &str) {
        let target = target.to_owned();
        let Some(mn_reg) = self.sessions.get(&mn).and_then(|s| s.registration.clone()) else {
            return;
        };
        if !mn_reg.validated {
            self.fail_direction(
                mn,
                txid,
                &target,
                DirectionErrorCode::NotRegistered,
                "the registered address did not answer its challenge".into(),
            );
            return;
        }
        let cn = match self.by_fqdn.get(&target) {
            Some(&cn) if cn != mn => cn,
            found => {
                if let (None, Some(scope)) = (found, self.link_scope(&target)) {
                    self.forward(now, mn, txid, target, scope);
                    return;
                }
                let msg = format!("no node named {target} is online");
                self.fail_direction(mn, txid, &target, DirectionErrorCode::NotFound, msg);
                return;
            }
        };
        if self
            .routes
            .values()
            .any(|r| r.origin.is_local(cn) && r.cn_session == mn)
        {
            // The peer asked for this pair first (both moved at once): the
            // route being set up serves both; the requester learns it as
            // responder and drops its own request.
            return;
        }
        if self
            .routes
            .values()
            .any(|r| r.origin.is_local(mn) && r.cn_session == cn)
        {
            // A second question for a route being set up (packets to both
            // VIPs of one peer, asked by VIP before either was known): the
            // route answers the first, and the node drops the other
            // question once it has the route.
            self.counters.directions_coalesced += 1;
            return;
        }
        let Some(mn_session) = self.sessions.get(&mn) else {
            return;
        };
        let asker = Asker {
            fqdn: mn_session.info.fqdn.clone(),
            vip4: mn_session.info.vip4,
            vip6: mn_session.info.vip6,
            static_public: mn_reg.static_public,
            cert_serial: mn_session.info.cert_serial,
            net: mn_reg.net(),
            policy_name: mn_session.info.device_id.clone(),
        };
        self.direct_responder(now, Origin::Local { session: mn, txid }, asker, cn, target);
    }

    /// Directs the responder `cn` for a route from `asker` (a node of this
    /// NMS, or one another NMS holds): the checks on the responder, the
    /// access policy, the route pattern, relay grants and the tunnel key.
    fn direct_responder(
        &mut self,
        now: Instant,
        origin: Origin,
        asker: Asker,
        cn: SessionId,
        target: String,
    ) {
        let Some(cn_session) = self.sessions.get(&cn) else {
            return;
        };
        let Some(cn_reg) = cn_session.registration.clone() else {
            let msg = format!("no node named {target} is online");
            self.fail_origin(origin, &target, DirectionErrorCode::NotFound, msg);
            return;
        };
        if !cn_reg.validated {
            let msg = format!("{target}'s address did not answer its challenge");
            self.fail_origin(origin, &target, DirectionErrorCode::Timeout, msg);
            return;
        }
        if now.saturating_duration_since(cn_reg.last_seen) > self.config.offline_after {
            let msg = format!("{target} is offline");
            self.fail_origin(origin, &target, DirectionErrorCode::NotFound, msg);
            return;
        }
        if self.routes.len() >= MAX_PENDING_ROUTES {
            let msg = "NMS busy".to_owned();
            self.fail_origin(origin, &target, DirectionErrorCode::Timeout, msg);
            return;
        }
        // From the initiator's side.
        let filter = if self.policy.allows_everything() {
            RouteFilter::open()
        } else {
            self.policy
                .filter(&asker.policy_name, &cn_session.info.device_id)
        };
        if filter.is_closed() {
            self.counters.directions_denied += 1;
            let msg =
                format!("the access policy lets neither this node nor {target} reach the other");
            self.fail_origin(origin, &target, DirectionErrorCode::Denied, msg);
            return;
        }
        let cn_info = &cn_session.info;
        let decision = decide_route(&asker.net, &cn_reg.net());
        tracing::debug!(mn = %asker.fqdn, cn = %cn_info.fqdn, pattern = decision.pattern.as_str(), reason = decision.reason, "route decided");
        let mn_peer = PeerInfo {
            fqdn: asker.fqdn.clone(),
            vip4: asker.vip4,
            vip6: asker.vip6,
            static_public: asker.static_public,
            cert_serial: asker.cert_serial,
            cert_status: CertStatus::Good,
            endpoints: decision.mn_endpoints.clone(),
        };
        let cn_peer = peer_info(cn_info, &cn_reg, decision.cn_endpoints.clone());
        let route_id = RouteId(self.rng.gen_range(1..u64::MAX));
        let tunnel_key: [u8; 32] = self.rng.gen();
        let servers = self.relay_servers(now);
        if !servers.is_empty() {
            tracing::info!(%route_id, relays = ?servers, "relay grant");
        }
        let mn_initiates = decision.initiator == Initiator::Mn;
        // The part of the end a direction goes to (the MN's side or the
        // CN's) in birthday punching.
        let spray = |side: Initiator| match decision.hard_side {
            None => Spray::None,
            Some(hard) if hard == side => Spray::OpenPorts,
            Some(_) => Spray::Probe,
        };
        let to_responder = RouteDirection {
            route_id,
            pattern: decision.pattern,
            peer: mn_peer,
            tunnel_key,
            initiate: !mn_initiates,
            punch: decision.punch && mn_initiates,
            spray: spray(Initiator::Cn),
            relay: self.relay_offer(now, route_id.relay_id(), 1, &servers),
            via: decision.via,
            filter: (!filter.is_open()).then(|| filter.reversed()),
        };
        let to_initiator = RouteDirection {
            route_id,
            pattern: decision.pattern,
            peer: cn_peer,
            tunnel_key,
            initiate: mn_initiates,
            punch: decision.punch && !mn_initiates,
            spray: spray(Initiator::Mn),
            relay: self.relay_offer(now, route_id.relay_id(), 0, &servers),
            via: decision.via,
            filter: (!filter.is_open()).then(|| filter.clone()),
        };
        let cn_txid: u64 = self.rng.gen();
        let Some(cn_session) = self.sessions.get_mut(&cn) else {
            return;
        };
        let Ok(packet) = cn_session.cipher.try_seal(&Envelope {
            txid: cn_txid,
            message: Message::RouteDirectionToResponder(to_responder.clone()),
        }) else {
            // No route: the initiator's request goes unanswered.
            self.counters.tx_counter_exhausted += 1;
            return;
        };
        self.send_sealed(cn, cn_reg.nms_local, cn_reg.observed, packet);
        self.routes.insert(
            route_id,
            PendingRoute {
                origin,
                cn_session: cn,
                cn_txid,
                to_initiator,
                to_responder,
                next_retransmit: now + self.config.retransmit,
                interval: self.config.retransmit,
                deadline: now + self.config.direction_timeout,
            },
        );
    }

    /// A route request failed: tells whoever asked.
    fn fail_origin(&mut self, origin: Origin, target: &str, code: DirectionErrorCode, msg: String) {
        match origin {
            Origin::Local { session, txid } => {
                self.fail_direction(session, txid, target, code, msg)
            }
            Origin::Link { ticket, .. } => self.refuse_link(ticket, code, msg),
        }
    }

    fn on_confirmation(&mut self, now: Instant, cn: SessionId, txid: u64, route_id: RouteId) {
        let matches = self
            .routes
            .get(&route_id)
            .is_some_and(|r| r.cn_session == cn && r.cn_txid == txid);
        if !matches {
            tracing::debug!(%route_id, "confirmation for no pending route");
            return;
        }
        let Some(route) = self.routes.remove(&route_id) else {
            return;
        };
        let (mn_session, mn_txid) = match route.origin {
            Origin::Local { session, txid } => (session, txid),
            Origin::Link {
                ticket, initiator, ..
            } => {
                self.link_confirmed(route_id, ticket, &initiator.fqdn, route.to_initiator);
                return;
            }
        };
        let Some(reg) = self
            .sessions
            .get(&mn_session)
            .and_then(|s| s.registration.clone())
        else {
            return;
        };
        let initiator = self.sessions[&mn_session].info.fqdn.clone();
        let responder = route.to_initiator.peer.fqdn.clone();
        let pattern = route.to_initiator.pattern;
        let sent = route
            .to_initiator
            .filter
            .clone()
            .unwrap_or_else(RouteFilter::open);
        self.remember_link(mn_session, route.cn_session, sent);
        self.counters.directions += 1;
        self.events.push_back(NmsEvent::RouteDirected {
            route_id,
            initiator,
            responder,
            pattern,
        });
        self.answer(
            mn_session,
            reg.nms_local,
            reg.observed,
            mn_txid,
            Message::RouteDirectionToInitiator(route.to_initiator),
            true,
        );
        // The policy may have changed while the responder confirmed.
        self.reconcile_link(now, (mn_session, route.cn_session));
        self.send_notices(now);
    }

    fn fail_direction(
        &mut self,
        mn: SessionId,
        txid: u64,
        target: &str,
        code: DirectionErrorCode,
        message: String,
    ) {
        self.counters.direction_failures += 1;
        let Some(session) = self.sessions.get(&mn) else {
            return;
        };
        self.events.push_back(NmsEvent::DirectionFailed {
            initiator: session.info.fqdn.clone(),
            target: target.to_owned(),
            reason: message.clone(),
        });
        let Some(reg) = session.registration.clone() else {
            return;
        };
        self.answer(
            mn,
            reg.nms_local,
            reg.observed,
            txid,
            Message::DirectionError { code, message },
            false,
        );
    }

    /// Seals and sends an answer; with `cache`, a retransmitted request is
    /// answered from the cache rather than acted on again.
    /// Information Request (seed slide 15): the shell looks the list up.
    /// Only a registered session may ask; the answer goes where the
    /// request came from.
    fn on_information_request(
        &mut self,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        txid: u64,
        offset: u16,
    ) {
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        if session.registration.is_none() {
            self.counters.rx_bad += 1;
            return;
        }
        while self.information_pending.len() >= MAX_INFORMATION_PENDING {
            self.information_pending.pop_first();
        }
        self.information_pending
            .insert((session_id, txid), (local, from));
        self.events.push_back(NmsEvent::NeedGeneralNodes {
            session_id,
            txid,
            device_id: session.info.device_id.clone(),
            offset,
        });
    }

    /// The shell's answer to [`NmsEvent::NeedGeneralNodes`]: one page of
    /// the adapter's general nodes.
    pub fn handle_general_nodes(&mut self, session_id: SessionId, txid: u64, page: GeneralNodes) {
        let Some((local, from)) = self.information_pending.remove(&(session_id, txid)) else {
            return;
        };
        self.answer(
            session_id,
            local,
            from,
            txid,
            Message::InformationResponse(page),
            true,
        );
    }

    fn answer(
        &mut self,
        session_id: SessionId,
        local: SocketAddr,
        to: SocketAddr,
        txid: u64,
        message: Message,
        cache: bool,
    ) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let Ok(payload) = session.cipher.try_seal(&Envelope { txid, message }) else {
            self.counters.tx_counter_exhausted += 1;
            return;
        };
        if cache {
            if self.answered_order.len() >= RESPONSE_CACHE {
                if let Some(old) = self.answered_order.pop_front() {
                    self.answered.remove(&old);
                }
            }
            self.answered.insert((session_id, txid), payload.clone());
            self.answered_order.push_back((session_id, txid));
        }
        self.send_sealed(session_id, local, to, payload);
    }

    /// Sends a sealed packet of this session to `to`: freely to its
    /// validated address, within three times the bytes received to its
    /// address on trial, and not at all elsewhere (§4.7).
    fn send_sealed(
        &mut self,
        session_id: SessionId,
        local: SocketAddr,
        to: SocketAddr,
        payload: Vec<u8>,
    ) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let validated = session
            .registration
            .as_ref()
            .is_some_and(|r| r.validated && r.observed == to);
        if !validated {
            let Some(path) = session.path.as_mut().filter(|p| p.addr == to) else {
                self.counters.tx_unvalidated_limited += 1;
                tracing::debug!(%session_id, %to, "not sending to an address that has not answered a challenge");
                return;
            };
            if path.sent + payload.len() > UNVALIDATED_AMPLIFICATION * path.received {
                self.counters.tx_unvalidated_limited += 1;
                tracing::debug!(%session_id, %to, "unvalidated address: three-times budget spent");
                return;
            }
            path.sent += payload.len();
            // The challenge goes just before the answer (it arrives as
            // fast, and a node that has the answer has the challenge),
            // once per packet received, within the same budget.
            if path.challenged_at != path.received {
                path.challenged_at = path.received;
                let challenge = session.cipher.try_seal(&Envelope {
                    txid: path.challenge,
                    message: Message::PathChallenge,
                });
                if let Err(e) = &challenge {
                    tracing::debug!(error = %e, "no Path Challenge: counters exhausted");
                }
                let challenge = challenge.unwrap_or_default();
                if !challenge.is_empty()
                    && path.sent + challenge.len() <= UNVALIDATED_AMPLIFICATION * path.received
                {
                    path.sent += challenge.len();
                    self.counters.path_challenges += 1;
                    self.transmits.push_back(Transmit {
                        local: path.local,
                        destination: to,
                        payload: challenge,
                    });
                } else {
                    self.counters.tx_unvalidated_limited += 1;
                }
            }
            self.transmits.push_back(Transmit {
                local,
                destination: to,
                payload,
            });
            return;
        }
        self.transmits.push_back(Transmit {
            local,
            destination: to,
            payload,
        });
    }
}

/// Groups a TRS list into instances: each instance lists its addresses
/// together, at most one per IP version (`trs_public` is written that way:
/// `[T1 v4, T1 v6, T2 v4, T2 v6]`).
pub fn relay_instances(servers: &[SocketAddr]) -> Vec<Vec<SocketAddr>> {
    let mut out: Vec<Vec<SocketAddr>> = Vec::new();
    for s in servers {
        match out.last_mut() {
            Some(group) if !group.iter().any(|g| g.is_ipv6() == s.is_ipv6()) => group.push(*s),
            _ => out.push(vec![*s]),
        }
    }
    out
}

fn peer_info(info: &SessionInfo, reg: &Registration, endpoints: Vec<SocketAddr>) -> PeerInfo {
    PeerInfo {
        fqdn: info.fqdn.clone(),
        vip4: info.vip4,
        vip6: info.vip6,
        static_public: reg.static_public,
        cert_serial: info.cert_serial,
        cert_status: CertStatus::Good,
        endpoints,
    }
}

/// Loopback, unspecified, link-local and multicast addresses are never
/// endpoints another node could use.
fn usable_endpoint(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// DNS names compare case-insensitively and without the root dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The sender's counter of a signaling packet: nonce bytes 4..12, at
/// offset 16 (`docs/protocol.md` §4.1).
fn signal_counter(packet: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = packet.get(16..24)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Session IDs known not to exist (the store said so, or they ended), for
/// [`MISSING_TTL`] each, at most [`MAX_MISSING_SESSIONS`] (the oldest go
/// first).
#[derive(Default)]
struct MissingSessions {
    until: HashMap<SessionId, Instant>,
    order: VecDeque<(SessionId, Instant)>,
}

impl MissingSessions {
    fn insert(&mut self, id: SessionId, now: Instant) {
        let until = now + MISSING_TTL;
        while let Some(&(old, old_until)) = self.order.front() {
            if old_until > now && self.order.len() < MAX_MISSING_SESSIONS {
                break;
            }
            self.order.pop_front();
            if self.until.get(&old) == Some(&old_until) {
                self.until.remove(&old);
            }
        }
        self.until.insert(id, until);
        self.order.push_back((id, until));
    }

    fn contains(&self, id: SessionId, now: Instant) -> bool {
        self.until.get(&id).is_some_and(|until| now < *until)
    }
}

/// Token buckets that bound session lookups, per source (an IPv4 address
/// or an IPv6 /64: spoofing either is cheap, so the total bucket is the
/// real bound) and in all.
#[derive(Default)]
struct LookupLimits {
    total: Option<Bucket>,
    sources: HashMap<IpAddr, Bucket>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }
}

impl LookupLimits {
    /// Whether a lookup caused by a packet from `ip` may go ahead now;
    /// takes a token from the source's bucket and the total one if so.
    fn allow(&mut self, now: Instant, ip: IpAddr, per_source: u32, total: u32) -> bool {
        let (rate, burst) = (f64::from(per_source), 2.0 * f64::from(per_source));
        let (total_rate, total_burst) = (f64::from(total), f64::from(total));
        let key = source_key(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_LOOKUP_SOURCES {
            // Buckets that refilled say nothing a fresh one would not.
            self.sources.retain(|_, b| {
                b.refill(now, rate, burst);
                b.tokens < burst
            });
            if self.sources.len() >= MAX_LOOKUP_SOURCES / 2 {
                self.sources.clear();
            }
        }
        let source = self
            .sources
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now));
        source.refill(now, rate, burst);
        let total_bucket = self
            .total
            .get_or_insert_with(|| Bucket::full(total_burst, now));
        total_bucket.refill(now, total_rate, total_burst);
        if source.tokens < 1.0 || total_bucket.tokens < 1.0 {
            return false;
        }
        source.tokens -= 1.0;
        total_bucket.tokens -= 1.0;
        true
    }
}

/// An IPv4 address, or the /64 of an IPv6 address (IPv4-mapped ones count
/// as IPv4).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_common_key_is_wiped_when_the_session_goes() {
        let session = info(7, "a7");
        assert_ne!(session.common_key, [0; 32]);
        assert_eq!(
            cyphonic_proto::key_bytes_after_drop!(session, common_key),
            [0; 32]
        );
    }

    #[test]
    fn relay_instances_group_one_address_per_family() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let list = [
            a("192.0.2.1:4503"),
            a("[2001:db8::1]:4503"),
            a("192.0.2.2:4503"),
            a("[2001:db8::2]:4503"),
            a("192.0.2.3:4503"),
        ];
        assert_eq!(
            relay_instances(&list),
            vec![
                vec![list[0], list[1]],
                vec![list[2], list[3]],
                vec![list[4]]
            ]
        );
    }

    #[test]
    fn routes_spread_over_relay_instances() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let servers = vec![
            a("192.0.2.1:4503"),
            a("[2001:db8::1]:4503"),
            a("192.0.2.2:4503"),
            a("[2001:db8::2]:4503"),
        ];
        let config = NmsConfig {
            relay: Some(RelayConfig {
                secret: vec![1; 32],
                servers: servers.clone(),
                quic_port: 443,
                tcp_port: 443,
                lifetime: Duration::from_secs(60),
                wall_origin: (Instant::now(), 1_900_000_000),
            }),
            ..NmsConfig::default()
        };
        let mut nms = Nms::new(config, [0; 32], 0);
        let now = Instant::now();
        let firsts: Vec<SocketAddr> = (0..4).map(|_| nms.relay_servers(now)[0]).collect();
        assert_eq!(firsts, vec![servers[0], servers[2], servers[0], servers[2]]);
        // Every list still holds every instance, for failover.
        assert_eq!(nms.relay_servers(now).len(), 4);
    }

    /// TRS Reports through the NMS's socket input: a TRS that stops
    /// reporting leaves new grants and the Reflect list when the NMS's
    /// timer fires, `trs_dead_after` after its last report, and comes
    /// back with its next report; bad reports are counted, not taken.
    #[test]
    fn a_silent_trs_leaves_new_grants_and_reports_bring_it_back() {
        use crate::trs_pool::TrsReporter;
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let servers = vec![
            a("192.0.2.1:4503"),
            a("[2001:db8::1]:4503"),
            a("192.0.2.2:4503"),
            a("[2001:db8::2]:4503"),
        ];
        let start = Instant::now();
        let unix = 1_900_000_000;
        let config = NmsConfig {
            relay: Some(RelayConfig {
                secret: vec![1; 32],
                servers: servers.clone(),
                quic_port: 443,
                tcp_port: 443,
                lifetime: Duration::from_secs(60),
                wall_origin: (start, unix),
            }),
            trs_dead_after: Duration::from_secs(3),
            ..NmsConfig::default()
        };
        let mut nms = Nms::new(config, [0; 32], 0);
        let nms_local = a("192.0.2.1:4502");
        let mut t1 = TrsReporter::new(&[1; 32], servers[..2].to_vec());
        let mut t2 = TrsReporter::new(&[1; 32], servers[2..].to_vec());
        let micros = |now: Instant| unix * 1_000_000 + (now - start).as_micros() as u64;
        // T1 carries more sessions: T2 goes first while both live.
        let mut now = start;
        nms.handle_datagram(now, nms_local, servers[0], &t1.report(micros(now), 5, 0));
        nms.handle_datagram(now, nms_local, servers[2], &t2.report(micros(now), 1, 0));
        assert!(nms.poll_transmit().is_none(), "a report is never answered");
        assert_eq!(nms.relay_servers(now)[0], servers[2]);
        let c = nms.counters();
        assert_eq!(
            (c.trs_reports, c.trs_live, c.trs_dead, c.rx_packets),
            (2, 2, 0, 0)
        );
        // T1 reports every second, T2 no more: the timer names T2's end.
        let mut last_t2 = now;
        let mut wake = nms.poll_timeout();
        assert_eq!(
            wake,
            Some((last_t2 + Duration::from_secs(3), TimerReason::TrsSilent))
        );
        for _ in 0..4 {
            now += Duration::from_secs(1);
            if let Some((t, _)) = wake.filter(|(t, _)| *t <= now) {
                nms.handle_timeout(t);
            }
            nms.handle_datagram(now, nms_local, servers[0], &t1.report(micros(now), 5, 0));
            wake = nms.poll_timeout();
        }
        assert_eq!(nms.counters().trs_dead, 1);
        assert_eq!(nms.counters().trs_live, 1);
        assert_eq!(nms.relay_servers(now), servers[..2].to_vec());
        // The Reflect list names T1 alone too.
        let mut request = cyphonic_proto::reflect::ReflectRequest { txid: 9 }
            .encode()
            .to_vec();
        nms.handle_datagram(now, nms_local, a("198.51.100.7:40000"), &request);
        let answer = nms.poll_transmit().expect("a Reflect Response");
        let answer = cyphonic_proto::reflect::ReflectResponse::parse(&answer.payload).unwrap();
        assert_eq!(answer.relays, servers[..2].to_vec());
        // A replay of T2's old report, a forged one and garbage do not
        // revive it.
        let mut forged = TrsReporter::new(&[2; 32], servers[2..].to_vec());
        nms.handle_datagram(
            now,
            nms_local,
            servers[2],
            &forged.report(micros(now), 0, 0),
        );
        request[0] = cyphonic_proto::trs_report::TYPE_TRS_REPORT;
        nms.handle_datagram(now, nms_local, servers[2], &request);
        // T2's first report again (same `sent`), as captured on the wire.
        let replay = {
            let mut r = TrsReporter::new(&[1; 32], servers[2..].to_vec());
            r.report(micros(last_t2), 1, 0)
        };
        nms.handle_datagram(now, nms_local, servers[2], &replay);
        assert_eq!(nms.relay_servers(now), servers[..2].to_vec());
        assert_eq!(nms.counters().trs_reports_bad, 3);
        // T2 reports again: back in the grants at once.
        last_t2 = now;
        nms.handle_datagram(
            last_t2,
            nms_local,
            servers[2],
            &t2.report(micros(now), 0, 0),
        );
        assert_eq!(nms.relay_servers(now).len(), 4);
        let c = nms.counters();
        assert_eq!((c.trs_live, c.trs_dead, c.trs_reports), (2, 0, 7));
    }

    /// A node's end of one session with `nms`, registered.
    fn registered_node(nms: &mut Nms, now: Instant, id: u64) -> (SignalCipher, SocketAddr) {
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let from: SocketAddr = format!("192.0.2.{}:4501", 10 + id).parse().unwrap();
        let key = [id as u8; 32];
        nms.handle_session(
            now,
            SessionInfo {
                session_id: SessionId(id),
                common_key: key,
                device_id: format!("a{id}"),
                fqdn: format!("a{id}.cyphonic.internal"),
                vip4: std::net::Ipv4Addr::new(100, 64, 0, id as u8),
                vip6: format!("fd7a:6379:7068::{id}").parse().unwrap(),
                cert_serial: id,
            },
        );
        let mut node = SignalCipher::new(SessionId(id), &key, Role::Node, 1);
        let reg = node.seal(&Envelope {
            txid: 1,
            message: Message::RegistrationRequest(RegistrationRequest {
                static_public: [1; 32],
                tunnel_port: 4501,
                local_addrs: vec![from],
                transport: cyphonic_proto::Transport::Udp,
                quic_port: 0,
                mapped: None,
            }),
        });
        nms.handle_datagram(now, local, from, &reg);
        let out: Vec<Transmit> = std::iter::from_fn(|| nms.poll_transmit()).collect();
        echo_challenges(nms, now, &mut node, out);
        while nms.poll_transmit().is_some() {}
        while nms.poll_event().is_some() {}
        (node, from)
    }

    /// Opens the NMS's packets as the node at their destination does:
    /// echoes every Path Challenge from there, returns the other messages.
    fn echo_challenges(
        nms: &mut Nms,
        now: Instant,
        node: &mut SignalCipher,
        out: Vec<Transmit>,
    ) -> Vec<Message> {
        let mut messages = Vec::new();
        for t in out {
            let env = node.open(&t.payload).expect("sealed for the node");
            if env.message == Message::PathChallenge {
                let echo = node.seal(&Envelope {
                    txid: env.txid,
                    message: Message::PathResponse,
                });
                nms.handle_datagram(now, t.local, t.destination, &echo);
            } else {
                messages.push(env.message);
            }
        }
        messages
    }

    /// A Registration that arrives again from the same mapping after the
    /// NAT Probe (a retransmitted or raced copy) keeps the NAT kind the
    /// probe showed: the node, told its NAT is known, does not probe again,
    /// and a hard NAT would otherwise get a plain relayed route. From
    /// another mapping, the NAT is unknown until probed anew.
    #[test]
    fn a_registration_again_from_the_same_mapping_keeps_the_probed_nat() {
        let now = Instant::now();
        let config = NmsConfig {
            probe_port: 4504,
            ..NmsConfig::default()
        };
        let mut nms = Nms::new(config, [8; 32], 1);
        let (mut node, from) = registered_node(&mut nms, now, 1);
        let nat = |nms: &Nms| {
            nms.registrations()
                .into_iter()
                .find(|(f, _)| f == "a1.cyphonic.internal")
                .map(|(_, r)| r.nat())
        };
        let again = |node: &mut SignalCipher, txid| {
            node.seal(&Envelope {
                txid,
                message: Message::RegistrationRequest(RegistrationRequest {
                    static_public: [1; 32],
                    tunnel_port: 4501,
                    // Behind a NAT: its own address is not the one seen.
                    local_addrs: vec![at("198.51.100.20:4501")],
                    transport: cyphonic_proto::Transport::Udp,
                    quic_port: 0,
                    mapped: None,
                }),
            })
        };
        let reg = again(&mut node, 2);
        nms.handle_datagram(now, at("192.0.2.1:4502"), from, &reg);
        assert_eq!(nat(&nms), Some(NatKind::Unknown));
        // The probe port sees another mapping: a symmetric NAT.
        let probe = node.seal(&Envelope {
            txid: 3,
            message: Message::NatProbe,
        });
        let mapped_anew = SocketAddr::new(from.ip(), 40999);
        nms.handle_datagram(now, at("192.0.2.1:4504"), mapped_anew, &probe);
        assert_eq!(nat(&nms), Some(NatKind::Symmetric));
        let reg = again(&mut node, 4);
        nms.handle_datagram(now, at("192.0.2.1:4502"), from, &reg);
        assert_eq!(nat(&nms), Some(NatKind::Symmetric));
        // The node moved: its NAT is probed again.
        let reg = again(&mut node, 5);
        nms.handle_datagram(now, at("192.0.2.1:4502"), at("203.0.113.9:4501"), &reg);
        let out = transmits(&mut nms);
        echo_challenges(&mut nms, now, &mut node, out);
        let reg = again(&mut node, 6);
        nms.handle_datagram(now, at("192.0.2.1:4502"), at("203.0.113.9:4501"), &reg);
        assert_eq!(nat(&nms), Some(NatKind::Unknown));
    }

    #[test]
    fn a_route_waits_for_the_nat_probe_of_a_node_that_just_registered() {
        let now = Instant::now();
        let config = NmsConfig {
            probe_port: 4504,
            ..NmsConfig::default()
        };
        let mut nms = Nms::new(config, [8; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        let nms_port = at("192.0.2.1:4502");
        // Both behind NATs: their own addresses are not the ones seen.
        let behind_nat = |node: &mut SignalCipher, txid, local: &str| {
            node.seal(&Envelope {
                txid,
                message: Message::RegistrationRequest(RegistrationRequest {
                    static_public: [1; 32],
                    tunnel_port: 4501,
                    local_addrs: vec![at(local)],
                    transport: cyphonic_proto::Transport::Udp,
                    quic_port: 0,
                    mapped: None,
                }),
            })
        };
        let probe = |node: &mut SignalCipher, txid| {
            node.seal(&Envelope {
                txid,
                message: Message::NatProbe,
            })
        };
        let reg = behind_nat(&mut n1, 2, "198.51.100.21:4501");
        nms.handle_datagram(now, nms_port, at1, &reg);
        let p = probe(&mut n1, 3);
        nms.handle_datagram(now, at("192.0.2.1:4504"), at1, &p);
        let reg = behind_nat(&mut n2, 2, "198.51.100.22:4501");
        nms.handle_datagram(now, nms_port, at2, &reg);
        while nms.poll_transmit().is_some() {}
        // a1 (endpoint-independent) asks for a2 before a2's probe is in.
        let ask = n1.seal(&Envelope {
            txid: 4,
            message: Message::DirectionRequest {
                target: "a2.cyphonic.internal".into(),
            },
        });
        let soon = now + Duration::from_millis(5);
        nms.handle_datagram(soon, nms_port, at1, &ask);
        let directions = |nms: &mut Nms, node: &mut SignalCipher, to| -> Vec<RouteDirection> {
            std::iter::from_fn(|| nms.poll_transmit())
                .filter(|t| t.destination == to)
                .filter_map(|t| node.open(&t.payload).ok())
                .filter_map(|e| match e.message {
                    Message::RouteDirectionToResponder(d) => Some(d),
                    _ => None,
                })
                .collect()
        };
        assert!(
            directions(&mut nms, &mut n2, at2).is_empty(),
            "decided before a2's NAT was known"
        );
        // a2's probe shows another mapping: a hard NAT against an easy
        // one, so a2 opens spare ports.
        let p = probe(&mut n2, 3);
        let later = now + Duration::from_millis(20);
        let mapped_anew = SocketAddr::new(at2.ip(), 40999);
        nms.handle_datagram(later, at("192.0.2.1:4504"), mapped_anew, &p);
        let d = directions(&mut nms, &mut n2, at2);
        assert_eq!(d.len(), 1, "the held route is decided on the probe");
        assert_eq!(d[0].spray, Spray::OpenPorts);

        // A node that never probes holds a route for at most a second.
        let (mut n3, at3) = registered_node(&mut nms, now, 3);
        let reg = behind_nat(&mut n3, 2, "198.51.100.23:4501");
        let t = now + Duration::from_secs(2);
        nms.handle_datagram(t, nms_port, at3, &reg);
        while nms.poll_transmit().is_some() {}
        let ask = n1.seal(&Envelope {
            txid: 5,
            message: Message::DirectionRequest {
                target: "a3.cyphonic.internal".into(),
            },
        });
        nms.handle_datagram(t, nms_port, at1, &ask);
        assert!(directions(&mut nms, &mut n3, at3).is_empty());
        let (deadline, _) = nms.poll_timeout().expect("a held route has a timer");
        assert!(deadline <= t + PATH_VALIDATION_TIMEOUT);
        nms.handle_timeout(t + PATH_VALIDATION_TIMEOUT);
        let d = directions(&mut nms, &mut n3, at3);
        assert_eq!(d.len(), 1, "decided without the probe after the wait");
        assert_eq!(d[0].spray, Spray::None);
    }

    #[test]
    fn direction_requests_are_limited_per_session_and_per_target() {
        let now = Instant::now();
        let config = NmsConfig {
            directions_per_session: 2,
            directions_per_target: 3,
            ..NmsConfig::default()
        };
        let mut nms = Nms::new(config, [4; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let ask = |nms: &mut Nms, node: &mut SignalCipher, from, txid, target: &str| {
            let p = node.seal(&Envelope {
                txid,
                message: Message::DirectionRequest {
                    target: target.into(),
                },
            });
            nms.handle_datagram(now, local, from, &p);
            std::iter::from_fn(|| nms.poll_transmit())
                .filter(|t| t.destination == from)
                .filter_map(|t| node.open(&t.payload).ok())
                .any(|e| {
                    matches!(
                        e.message,
                        Message::DirectionError {
                            code: DirectionErrorCode::RateLimited,
                            ..
                        }
                    )
                })
        };
        // n1 may ask four times at once (burst 2 x 2), not a fifth.
        let limited: Vec<bool> = (10..15)
            .map(|t| {
                ask(
                    &mut nms,
                    &mut n1,
                    at1,
                    t,
                    &format!("x{t}.cyphonic.internal"),
                )
            })
            .collect();
        assert_eq!(limited, vec![false, false, false, false, true]);
        // A target takes six at once (burst 2 x 3) from everybody together:
        // n2 and n3 ask in turn, each within its own budget.
        let (mut n3, at3) = registered_node(&mut nms, now, 3);
        let mut limited = Vec::new();
        for t in 20..27 {
            let (node, from) = if t % 2 == 0 {
                (&mut n2, at2)
            } else {
                (&mut n3, at3)
            };
            limited.push(ask(&mut nms, node, from, t, "a9.cyphonic.internal"));
        }
        assert_eq!(
            limited,
            vec![false, false, false, false, false, false, true]
        );
        assert_eq!(nms.counters().directions_limited, 2);
    }

    fn direction_request(node: &mut SignalCipher, txid: u64, target: &str) -> Vec<u8> {
        node.seal(&Envelope {
            txid,
            message: Message::DirectionRequest {
                target: target.into(),
            },
        })
    }

    /// Directs a route from `mn` to `cn` through to the initiator's Route
    /// Direction; returns where the responder was directed and the
    /// endpoints of `cn` handed to `mn`.
    fn route(
        nms: &mut Nms,
        now: Instant,
        (mn, mn_at): (&mut SignalCipher, SocketAddr),
        (cn, cn_at): (&mut SignalCipher, SocketAddr),
        target: &str,
    ) -> (SocketAddr, Vec<SocketAddr>) {
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let ask = direction_request(mn, 300, target);
        nms.handle_datagram(now, local, mn_at, &ask);
        let t = nms
            .poll_transmit()
            .expect("a Route Direction to the responder");
        let env = cn.open(&t.payload).unwrap();
        let Message::RouteDirectionToResponder(d) = env.message else {
            panic!("{env:?}");
        };
        let confirm = cn.seal(&Envelope {
            txid: env.txid,
            message: Message::RouteDirectionConfirmation {
                route_id: d.route_id,
            },
        });
        nms.handle_datagram(now, local, cn_at, &confirm);
        let endpoints = std::iter::from_fn(|| nms.poll_transmit())
            .filter_map(|t| mn.open(&t.payload).ok())
            .find_map(|e| match e.message {
                Message::RouteDirectionToInitiator(d) => Some(d.peer.endpoints.clone()),
                _ => None,
            })
            .expect("a Route Direction to the initiator");
        (t.destination, endpoints)
    }

    /// An authentic packet raced from a spoofed source (an on-path
    /// attacker copies a node's KeepAlive and sends it first from the
    /// victim's address): the victim is sent at most three times what it
    /// "sent", the node's observed address does not move, and peers are
    /// never handed the victim.
    #[test]
    fn a_raced_copy_from_a_spoofed_address_is_not_handed_out_nor_amplified() {
        let now = Instant::now();
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let victim: SocketAddr = "203.0.113.99:80".parse().unwrap();
        let mut nms = Nms::new(NmsConfig::default(), [5; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        let (mut received, mut sent) = (0, 0);
        for txid in 100..120 {
            for message in [
                Message::KeepAlive,
                Message::InformationRequest { offset: 0 },
                Message::DirectionRequest {
                    target: "a2.cyphonic.internal".into(),
                },
            ] {
                let copy = n1.seal(&Envelope { txid, message });
                received += copy.len();
                nms.handle_datagram(now, local, victim, &copy);
                while let Some(e) = nms.poll_event() {
                    if let NmsEvent::NeedGeneralNodes {
                        session_id, txid, ..
                    } = e
                    {
                        let page = GeneralNodes {
                            version: 1,
                            total: 4,
                            offset: 0,
                            nodes: (0..4)
                                .map(|i| cyphonic_proto::signal::GeneralNodeInfo {
                                    mac: [2, 0, 0, 0, 0, i],
                                    fqdn: format!("{}.cyphonic.internal", "g".repeat(200)),
                                    vip4: std::net::Ipv4Addr::new(100, 64, 1, i),
                                    vip6: "fd7a:6379:7068::1:5".parse().unwrap(),
                                })
                                .collect(),
                        };
                        nms.handle_general_nodes(session_id, txid, page);
                    }
                }
                sent += std::iter::from_fn(|| nms.poll_transmit())
                    .filter(|t| t.destination == victim)
                    .map(|t| t.payload.len())
                    .sum::<usize>();
            }
        }
        assert!(
            sent <= 3 * received,
            "the victim got {sent} bytes for {received}"
        );
        assert!(nms.counters().tx_unvalidated_limited > 0);
        assert_eq!(observed(&nms, "a1.cyphonic.internal"), Some(at1));
        // Once n1 speaks from its own address again, a route to it names
        // that address, at once.
        let k = keepalive(&mut n1, 200);
        nms.handle_datagram(now, local, at1, &k);
        while nms.poll_transmit().is_some() {}
        let (directed, endpoints) = route(
            &mut nms,
            now,
            (&mut n2, at2),
            (&mut n1, at1),
            "a1.cyphonic.internal",
        );
        assert_eq!(directed, at1);
        assert!(!endpoints.contains(&victim), "{endpoints:?}");
    }

    /// A move (or NAT rebinding): the new address is used once it echoes
    /// its challenge, one round trip after the Registration; a route asked
    /// for meanwhile waits for it rather than naming the old address.
    #[test]
    fn a_new_address_is_followed_after_its_challenge_round_trip() {
        let now = Instant::now();
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let moved: SocketAddr = "198.51.100.77:4501".parse().unwrap();
        let mut nms = Nms::new(NmsConfig::default(), [6; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        let reg = n1.seal(&Envelope {
            txid: 50,
            message: Message::RegistrationRequest(RegistrationRequest {
                static_public: [1; 32],
                tunnel_port: 4501,
                local_addrs: vec![moved],
                transport: cyphonic_proto::Transport::Udp,
                quic_port: 0,
                mapped: None,
            }),
        });
        nms.handle_datagram(now, local, moved, &reg);
        let out: Vec<Transmit> = std::iter::from_fn(|| nms.poll_transmit()).collect();
        assert!(out.iter().all(|t| t.destination == moved));
        assert_eq!(
            observed(&nms, "a1.cyphonic.internal"),
            Some(at1),
            "on trial"
        );
        // n2 asks for n1 before the echo: held, not directed to the old
        // address.
        let ask = direction_request(&mut n2, 60, "a1.cyphonic.internal");
        nms.handle_datagram(now, local, at2, &ask);
        assert!(nms.poll_transmit().is_none());
        assert_eq!(nms.counters().directions_held, 1);
        let rtt = Duration::from_millis(30);
        let messages = echo_challenges(&mut nms, now + rtt, &mut n1, out);
        assert!(matches!(messages[..], [Message::RegistrationResponse(_)]));
        assert_eq!(observed(&nms, "a1.cyphonic.internal"), Some(moved));
        assert_eq!(nms.counters().paths_validated, 3);
        // The held request goes on at the echo: the responder (n1) is
        // directed at its new address.
        let t = nms.poll_transmit().expect("the Route Direction");
        assert_eq!(t.destination, moved);
        let env = n1.open(&t.payload).unwrap();
        let Message::RouteDirectionToResponder(d) = env.message else {
            panic!("{env:?}");
        };
        assert_eq!(d.peer.fqdn, "a2.cyphonic.internal");
    }

    /// A spoofed candidate holds route selection at most
    /// [`PATH_VALIDATION_TIMEOUT`]; then the validated address serves.
    #[test]
    fn an_address_that_never_answers_holds_routes_at_most_the_validation_timeout() {
        let now = Instant::now();
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let victim: SocketAddr = "203.0.113.99:80".parse().unwrap();
        let mut nms = Nms::new(NmsConfig::default(), [7; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        nms.handle_datagram(now, local, victim, &keepalive(&mut n1, 70));
        while nms.poll_transmit().is_some() {}
        let ask = direction_request(&mut n2, 71, "a1.cyphonic.internal");
        nms.handle_datagram(now, local, at2, &ask);
        assert!(nms.poll_transmit().is_none());
        let k = keepalive(&mut n1, 70).len();
        let mut to_victim = 0;
        let directed = loop {
            let (when, _) = nms.poll_timeout().expect("a timer for the held request");
            assert!(when <= now + PATH_VALIDATION_TIMEOUT);
            nms.handle_timeout(when);
            let out: Vec<Transmit> = std::iter::from_fn(|| nms.poll_transmit()).collect();
            to_victim += out
                .iter()
                .filter(|t| t.destination == victim)
                .map(|t| t.payload.len())
                .sum::<usize>();
            if let Some(t) = out.iter().find(|t| t.destination != victim) {
                break (when, t.destination);
            }
        };
        assert_eq!(directed, (now + PATH_VALIDATION_TIMEOUT, at1));
        assert!(
            nms.counters().path_challenges >= 2,
            "challenges are sent again"
        );
        assert!(to_victim <= 3 * k, "{to_victim} bytes for {k}");
    }

    /// Opens every transmit addressed to `at` with `node`.
    fn received(nms: &mut Nms, node: &mut SignalCipher, at: SocketAddr) -> Vec<Envelope> {
        std::iter::from_fn(|| nms.poll_transmit())
            .filter(|t| t.destination == at)
            .filter_map(|t| node.open(&t.payload).ok())
            .collect()
    }

    /// n1 asks for a2: the responder's direction, its confirmation, and
    /// what n1 got back.
    fn direct(
        nms: &mut Nms,
        now: Instant,
        (n1, at1): (&mut SignalCipher, SocketAddr),
        (n2, at2): (&mut SignalCipher, SocketAddr),
        txid: u64,
    ) -> (Option<RouteDirection>, Message) {
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let ask = n1.seal(&Envelope {
            txid,
            message: Message::DirectionRequest {
                target: "a2.cyphonic.internal".into(),
            },
        });
        nms.handle_datagram(now, local, at1, &ask);
        let sent: Vec<Transmit> = std::iter::from_fn(|| nms.poll_transmit()).collect();
        for t in &sent {
            if t.destination == at1 {
                return (None, n1.open(&t.payload).unwrap().message);
            }
        }
        let to_cn = sent
            .iter()
            .find(|t| t.destination == at2)
            .map(|t| n2.open(&t.payload).unwrap())
            .expect("a direction to the responder");
        let Message::RouteDirectionToResponder(dir) = to_cn.message else {
            panic!("{to_cn:?}");
        };
        let confirm = n2.seal(&Envelope {
            txid: to_cn.txid,
            message: Message::RouteDirectionConfirmation {
                route_id: dir.route_id,
            },
        });
        nms.handle_datagram(now, local, at2, &confirm);
        let back = received(nms, n1, at1);
        (Some(dir), back[0].message.clone())
    }

    fn deny_but(rules: &[(&str, &str, &str)]) -> Policy {
        use crate::policy::{DefaultAction, Rule, Selector};
        Policy {
            default: DefaultAction::Deny,
            rules: rules
                .iter()
                .map(|(from, to, ports)| Rule {
                    deny: false,
                    from: vec![Selector::Device((*from).into())],
                    to: vec![Selector::Device((*to).into())],
                    ports: ports.split(',').map(|p| p.parse().unwrap()).collect(),
                })
                .collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn a_pair_the_policy_denies_gets_no_route_and_an_allowed_one_its_filters() {
        let now = Instant::now();
        let mut nms = Nms::new(NmsConfig::default(), [5; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        // Without a policy: no filter at all, the wire as before.
        let (dir, back) = direct(&mut nms, now, (&mut n1, at1), (&mut n2, at2), 10);
        assert_eq!(dir.expect("routed").filter, None);
        assert!(matches!(back, Message::RouteDirectionToInitiator(d) if d.filter.is_none()));
        // a2 may reach a1 on tcp/22 only; nothing the other way.
        nms.handle_policy(now, deny_but(&[("a2", "a1", "tcp/22")]));
        let _ = received(&mut nms, &mut n1, at1);
        let (dir, back) = direct(&mut nms, now, (&mut n1, at1), (&mut n2, at2), 11);
        let to_cn = dir.expect("routed").filter.clone().expect("a filter");
        assert_eq!(to_cn.outbound, vec!["tcp/22".parse().unwrap()]);
        assert!(to_cn.inbound.is_empty());
        let Message::RouteDirectionToInitiator(d) = back else {
            panic!("{back:?}");
        };
        assert_eq!(d.filter, Some(to_cn.reversed()));
        // Neither way: refused, with its own code, and the responder is
        // never disturbed.
        nms.handle_policy(now, deny_but(&[("a1", "a3", "*")]));
        let _ = std::iter::from_fn(|| nms.poll_transmit()).count();
        let (dir, back) = direct(&mut nms, now, (&mut n1, at1), (&mut n2, at2), 12);
        assert!(dir.is_none());
        assert!(matches!(
            back,
            Message::DirectionError {
                code: DirectionErrorCode::Denied,
                ..
            }
        ));
        assert_eq!(nms.counters().directions_denied, 1);
    }

    #[test]
    fn a_policy_change_withdraws_routes_it_no_longer_allows_and_refilters_the_rest() {
        let now = Instant::now();
        let mut nms = Nms::new(NmsConfig::default(), [6; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        nms.handle_policy(now, deny_but(&[("a1", "a2", "icmp,tcp/5201")]));
        let (dir, _) = direct(&mut nms, now, (&mut n1, at1), (&mut n2, at2), 10);
        assert!(dir.is_some());
        // Narrowed: both ends hear the new filter, each from its side.
        nms.handle_policy(now, deny_but(&[("a1", "a2", "icmp")]));
        let sent: Vec<Transmit> = std::iter::from_fn(|| nms.poll_transmit()).collect();
        let open = |node: &mut SignalCipher, at| {
            sent.iter()
                .filter(|t| t.destination == at)
                .map(|t| node.open(&t.payload).unwrap())
                .collect::<Vec<_>>()
        };
        let (to1, to2) = (open(&mut n1, at1), open(&mut n2, at2));
        let icmp = vec!["icmp".parse().unwrap()];
        assert_eq!(
            to1[0].message,
            Message::RouteUpdate {
                fqdn: "a2.cyphonic.internal".into(),
                filter: RouteFilter {
                    inbound: vec![],
                    outbound: icmp.clone()
                }
            }
        );
        assert_eq!(
            to2[0].message,
            Message::RouteUpdate {
                fqdn: "a1.cyphonic.internal".into(),
                filter: RouteFilter {
                    inbound: icmp,
                    outbound: vec![]
                }
            }
        );
        // n1 acknowledges; the same policy again changes nothing.
        let ack = n1.seal(&Envelope {
            txid: to1[0].txid,
            message: Message::NoticeAck,
        });
        nms.handle_datagram(now, "192.0.2.1:4502".parse().unwrap(), at1, &ack);
        nms.handle_policy(now, deny_but(&[("a1", "a2", "icmp")]));
        assert!(received(&mut nms, &mut n1, at1).is_empty());
        // Removed: a closed filter to both, retransmitted to the one that
        // does not acknowledge, and the route is forgotten.
        nms.handle_policy(now, deny_but(&[]));
        let sent: Vec<Transmit> = std::iter::from_fn(|| nms.poll_transmit()).collect();
        assert_eq!(sent.len(), 2);
        for (node, at) in [(&mut n1, at1), (&mut n2, at2)] {
            let t = sent.iter().find(|t| t.destination == at).unwrap();
            assert!(matches!(
                node.open(&t.payload).unwrap().message,
                Message::RouteUpdate { filter, .. } if filter.is_closed()
            ));
        }
        nms.handle_timeout(now + Duration::from_millis(300));
        assert_eq!(std::iter::from_fn(|| nms.poll_transmit()).count(), 2);
        let c = nms.counters();
        assert_eq!((c.routes_withdrawn, c.routes_refiltered), (1, 1));
        assert!(nms.links.is_empty());
        // And it is not routed again.
        let (dir, back) = direct(&mut nms, now, (&mut n1, at1), (&mut n2, at2), 11);
        assert!(dir.is_none());
        assert!(matches!(
            back,
            Message::DirectionError {
                code: DirectionErrorCode::Denied,
                ..
            }
        ));
    }

    #[test]
    fn a_withdrawn_node_is_announced_to_every_node_until_acknowledged() {
        let now = Instant::now();
        let mut nms = Nms::new(NmsConfig::default(), [3; 32], 1);
        let (mut n1, at1) = registered_node(&mut nms, now, 1);
        let (mut n2, at2) = registered_node(&mut nms, now, 2);
        let (mut n3, at3) = registered_node(&mut nms, now, 3);
        nms.handle_withdrawn(now, "A1.cyphonic.internal.", 1);
        assert_eq!(nms.held_sessions(), vec![SessionId(2), SessionId(3)]);
        assert!(nms.is_withdrawn(1) && !nms.is_withdrawn(2));
        assert!(nms.poll_event().is_some_and(|e| e
            == NmsEvent::SessionEnded {
                fqdn: "a1.cyphonic.internal".into(),
                cert_serial: 1
            }));
        let notice =
            |t: &Transmit, node: &mut SignalCipher| node.open(&t.payload).expect("sealed for it");
        let sent: Vec<Transmit> = std::iter::from_fn(|| nms.poll_transmit()).collect();
        assert_eq!(sent.len(), 3, "one notice per node, the withdrawn one too");
        let to1 = sent
            .iter()
            .find(|t| t.destination == at1)
            .expect("to n1 itself");
        assert!(matches!(
            notice(to1, &mut n1).message,
            Message::PeerRevoked { fqdn, .. } if fqdn == "a1.cyphonic.internal"
        ));
        let to2 = sent.iter().find(|t| t.destination == at2).expect("to n2");
        let env2 = notice(to2, &mut n2);
        assert_eq!(
            env2.message,
            Message::PeerRevoked {
                fqdn: "a1.cyphonic.internal".into(),
                cert_serial: 1
            }
        );
        // n2 acknowledges; n3 stays silent and hears it again, sealed afresh.
        let ack = n2.seal(&Envelope {
            txid: env2.txid,
            message: Message::NoticeAck,
        });
        nms.handle_datagram(now, "192.0.2.1:4502".parse().unwrap(), at2, &ack);
        let mut again = Vec::new();
        let mut t = now;
        for _ in 0..10 {
            t += Duration::from_secs(2);
            nms.handle_timeout(t);
            again.extend(std::iter::from_fn(|| nms.poll_transmit()));
        }
        assert!(
            again.iter().all(|x| x.destination == at3),
            "n2 acknowledged"
        );
        assert_eq!(again.len() as u32, NOTICE_TRIES - 1);
        for x in &again {
            assert!(matches!(
                notice(x, &mut n3).message,
                Message::PeerRevoked { .. }
            ));
        }
        let c = nms.counters();
        assert_eq!(
            (c.withdrawn, c.notices_sent, c.notices_unacked),
            (1, 3 + 5, 1)
        );
        // A session of the withdrawn certificate is not loaded again.
        nms.handle_session(t, info(9, "a1"));
        let mut late = info(10, "a1");
        late.cert_serial = 1;
        late.session_id = SessionId(10);
        nms.handle_session(t, late);
        assert!(!nms.held_sessions().contains(&SessionId(10)));
    }

    #[test]
    fn an_adapter_gets_its_general_nodes_where_it_asked_from() {
        let now = Instant::now();
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let mut nms = Nms::new(NmsConfig::default(), [0; 32], 0);
        let (mut adapter, from) = registered_node(&mut nms, now, 1);
        let ask = adapter.seal(&Envelope {
            txid: 7,
            message: Message::InformationRequest { offset: 4 },
        });
        nms.handle_datagram(now, local, from, &ask);
        let mut asked = Vec::new();
        while let Some(e) = nms.poll_event() {
            if let NmsEvent::NeedGeneralNodes {
                session_id,
                txid,
                device_id,
                offset,
            } = e
            {
                asked.push((session_id, txid, device_id, offset));
            }
        }
        assert_eq!(asked, vec![(SessionId(1), 7, "a1".to_string(), 4)]);
        assert!(nms.poll_transmit().is_none(), "no answer before the lookup");
        let page = GeneralNodes {
            version: 9,
            total: 5,
            offset: 4,
            nodes: vec![cyphonic_proto::signal::GeneralNodeInfo {
                mac: [2, 0, 0, 0, 0, 5],
                fqdn: "gn5.cyphonic.internal".into(),
                vip4: std::net::Ipv4Addr::new(100, 64, 1, 5),
                vip6: "fd7a:6379:7068::1:5".parse().unwrap(),
            }],
        };
        nms.handle_general_nodes(SessionId(1), 7, page.clone());
        let t = nms.poll_transmit().expect("the answer");
        assert_eq!((t.local, t.destination), (local, from));
        let env = adapter.open(&t.payload).expect("sealed for the adapter");
        assert_eq!(env.txid, 7);
        assert_eq!(env.message, Message::InformationResponse(page.clone()));
        // A late or unknown lookup answers nothing.
        nms.handle_general_nodes(SessionId(1), 7, page);
        assert!(nms.poll_transmit().is_none());
    }

    #[test]
    fn an_unregistered_session_gets_no_general_nodes() {
        let now = Instant::now();
        let local: SocketAddr = "192.0.2.1:4502".parse().unwrap();
        let mut nms = Nms::new(NmsConfig::default(), [0; 32], 0);
        let key = [3; 32];
        nms.handle_session(
            now,
            SessionInfo {
                session_id: SessionId(3),
                common_key: key,
                device_id: "a3".into(),
                fqdn: "a3.cyphonic.internal".into(),
                vip4: std::net::Ipv4Addr::new(100, 64, 0, 3),
                vip6: "fd7a:6379:7068::3".parse().unwrap(),
                cert_serial: 3,
            },
        );
        let mut node = SignalCipher::new(SessionId(3), &key, Role::Node, 1);
        let ask = node.seal(&Envelope {
            txid: 1,
            message: Message::InformationRequest { offset: 0 },
        });
        nms.handle_datagram(now, local, "192.0.2.13:4501".parse().unwrap(), &ask);
        assert!(std::iter::from_fn(|| nms.poll_event())
            .all(|e| !matches!(e, NmsEvent::NeedGeneralNodes { .. })));
        assert!(nms.poll_transmit().is_none());
    }

    // ---- sessions: order, replay floor, ended sessions, lookups -----------

    const NMS_LOCAL: &str = "192.0.2.1:4502";

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn info(id: u64, device: &str) -> SessionInfo {
        SessionInfo {
            session_id: SessionId(id),
            common_key: [id as u8; 32],
            device_id: device.into(),
            fqdn: format!("{device}.cyphonic.internal"),
            vip4: std::net::Ipv4Addr::new(100, 64, 0, 2),
            vip6: "fd7a:6379:7068::2".parse().unwrap(),
            cert_serial: 7,
        }
    }

    /// The node's end of session `id`, its counters from `base`.
    fn node_cipher(id: u64, base: u64) -> SignalCipher {
        SignalCipher::new(SessionId(id), &[id as u8; 32], Role::Node, base)
    }

    fn registration(node: &mut SignalCipher, txid: u64) -> Vec<u8> {
        node.seal(&Envelope {
            txid,
            message: Message::RegistrationRequest(RegistrationRequest {
                static_public: [txid as u8; 32],
                tunnel_port: 4501,
                local_addrs: vec![at("198.51.100.20:4501")],
                transport: cyphonic_proto::Transport::Udp,
                quic_port: 0,
                mapped: None,
            }),
        })
    }

    fn keepalive(node: &mut SignalCipher, txid: u64) -> Vec<u8> {
        node.seal(&Envelope {
            txid,
            message: Message::KeepAlive,
        })
    }

    fn events(nms: &mut Nms) -> Vec<NmsEvent> {
        std::iter::from_fn(|| nms.poll_event()).collect()
    }

    fn transmits(nms: &mut Nms) -> Vec<Transmit> {
        std::iter::from_fn(|| nms.poll_transmit()).collect()
    }

    /// The floors the NMS asked to store, answered as stored.
    fn store_floors(nms: &mut Nms, now: Instant) -> Vec<(SessionId, u64)> {
        let mut stored = Vec::new();
        loop {
            let asked: Vec<(SessionId, u64)> = events(nms)
                .into_iter()
                .filter_map(|e| match e {
                    NmsEvent::StoreReplayFloor { session_id, floor } => Some((session_id, floor)),
                    _ => None,
                })
                .collect();
            if asked.is_empty() {
                return stored;
            }
            for (id, floor) in asked {
                nms.handle_replay_floor_stored(now, id, floor, FloorStored::Stored);
                stored.push((id, floor));
            }
        }
    }

    /// Registers stored session `id` of `device` from `from`; returns the
    /// node's cipher and the Registration packet (to replay).
    fn register_stored(
        nms: &mut Nms,
        now: Instant,
        id: u64,
        device: &str,
        standing: SessionStanding,
        base: u64,
        from: SocketAddr,
    ) -> (SignalCipher, Vec<u8>) {
        nms.handle_stored_session(now, info(id, device), standing);
        let mut node = node_cipher(id, base);
        let reg = registration(&mut node, 1);
        nms.handle_datagram(now, at(NMS_LOCAL), from, &reg);
        assert!(
            transmits(nms).is_empty(),
            "no answer before the floor is stored"
        );
        assert_eq!(store_floors(nms, now), vec![(SessionId(id), base)]);
        let answers = transmits(nms);
        let answers = echo_challenges(nms, now, &mut node, answers);
        assert_eq!(answers.len(), 1, "the RegistrationResponse");
        assert!(matches!(answers[0], Message::RegistrationResponse(_)));
        (node, reg)
    }

    fn observed(nms: &Nms, fqdn: &str) -> Option<SocketAddr> {
        nms.registrations()
            .into_iter()
            .find(|(f, _)| f == fqdn)
            .map(|(_, r)| r.observed)
    }

    /// Where [`registered_before_its_floor`]'s node sends from.
    const N1_FROM: &str = "198.51.100.20:4501";

    /// An NMS with session 5 loaded (floor 0) and n1's Registration just
    /// received, with counters from 1000: its floor is to be stored.
    fn registered_before_its_floor(now: Instant) -> (Nms, SignalCipher) {
        let mut nms = Nms::new(NmsConfig::default(), [0; 32], 1);
        let standing = SessionStanding {
            login_seq: 1,
            replay_floor: 0,
        };
        nms.handle_stored_session(now, info(5, "n1"), standing);
        let mut node = node_cipher(5, 1000);
        nms.handle_datagram(now, at(NMS_LOCAL), at(N1_FROM), &registration(&mut node, 1));
        (nms, node)
    }

    /// Under load the store takes longer than the challenge's
    /// retransmission: the node echoes a challenge before its Registration
    /// takes effect. The Registration then starts validated, and its
    /// answer goes out at once.
    #[test]
    fn a_challenge_echoed_while_the_floor_is_stored_validates_the_registration() {
        let now = Instant::now();
        let (mut nms, mut node) = registered_before_its_floor(now);
        let floors: Vec<NmsEvent> = events(&mut nms);
        assert_eq!(floors.len(), 1, "{floors:?}");
        // The store is slow: the challenge goes out again, and the node
        // echoes it.
        let later = now + PATH_CHALLENGE_RETRANSMIT;
        nms.handle_timeout(later);
        let sent = transmits(&mut nms);
        assert!(!sent.is_empty(), "the challenge again");
        assert!(echo_challenges(&mut nms, later, &mut node, sent).is_empty());
        assert!(nms.registrations().is_empty(), "not in effect yet");
        nms.handle_replay_floor_stored(later, SessionId(5), 1000, FloorStored::Stored);
        let answers: Vec<Message> = transmits(&mut nms)
            .into_iter()
            .filter_map(|t| node.open(&t.payload).ok())
            .map(|e| e.message)
            .collect();
        assert!(
            answers
                .iter()
                .any(|m| matches!(m, Message::RegistrationResponse(_))),
            "{answers:?}"
        );
        assert_eq!(nms.counters().tx_unvalidated_limited, 0);
        assert!(nms.registrations()[0].1.validated);
    }

    #[test]
    fn a_registration_takes_effect_only_once_its_floor_is_stored() {
        let now = Instant::now();
        let (mut nms, mut node) = registered_before_its_floor(now);
        let from = at(N1_FROM);
        assert_eq!(
            events(&mut nms),
            vec![NmsEvent::StoreReplayFloor {
                session_id: SessionId(5),
                floor: 1000
            }]
        );
        assert!(nms.registrations().is_empty());
        // The store failed: nothing took effect, and the node's next copy
        // (a new counter) is stored and answered.
        nms.handle_replay_floor_stored(now, SessionId(5), 1000, FloorStored::Failed);
        assert!(transmits(&mut nms).is_empty() && nms.registrations().is_empty());
        nms.handle_datagram(now, at(NMS_LOCAL), from, &registration(&mut node, 1));
        assert_eq!(store_floors(&mut nms, now), vec![(SessionId(5), 1001)]);
        assert_eq!(observed(&nms, "n1.cyphonic.internal"), Some(from));
        assert_eq!(
            transmits(&mut nms).len(),
            2,
            "the answer and a Path Challenge"
        );
        // Its session ended meanwhile: it goes, without an answer.
        nms.handle_datagram(now, at(NMS_LOCAL), from, &registration(&mut node, 2));
        let [NmsEvent::StoreReplayFloor { floor, .. }] = events(&mut nms)[..] else {
            panic!("a floor to store");
        };
        nms.handle_replay_floor_stored(now, SessionId(5), floor, FloorStored::SessionEnded);
        assert!(transmits(&mut nms).is_empty());
        assert!(nms.held_sessions().is_empty());
    }

    /// The review's finding, in the core: a device registered under a newer
    /// session; a recorded Registration of its older session, replayed
    /// from anywhere, must not take the registration over: not while the
    /// NMS runs, not from a lookup that raced the newer Registration, and
    /// not after a restart that finds the old session still stored.
    #[test]
    fn an_older_sessions_recorded_registration_cannot_take_over() {
        let now = Instant::now();
        let home = at("198.51.100.20:4501");
        let attacker = at("203.0.113.66:40000");
        let fqdn = "n1.cyphonic.internal";
        let mut nms = Nms::new(NmsConfig::default(), [0; 32], 1);
        let first = SessionStanding {
            login_seq: 1,
            replay_floor: 0,
        };
        let second = SessionStanding {
            login_seq: 2,
            replay_floor: 0,
        };
        let (_, old_reg) = register_stored(&mut nms, now, 1, "n1", first, 1000, home);
        register_stored(&mut nms, now, 2, "n1", second, 5000, home);
        assert_eq!(nms.held_sessions(), vec![SessionId(2)], "S2 ended S1");

        nms.handle_datagram(now, at(NMS_LOCAL), attacker, &old_reg);
        assert!(transmits(&mut nms).is_empty());
        assert!(
            events(&mut nms).is_empty(),
            "no lookup for an ended session"
        );
        assert_eq!(nms.counters().rx_ended_session, 1);
        assert_eq!(observed(&nms, fqdn), Some(home));

        // A lookup of S1 that read the store before S2's Registration
        // ended it answers late: refused.
        nms.handle_stored_session(now, info(1, "n1"), first);
        assert_eq!(nms.held_sessions(), vec![SessionId(2)]);

        // A restarted NMS whose store (wrongly) still has S1: S2
        // registers again, then S1's session is refused on load.
        let mut nms = Nms::new(NmsConfig::default(), [0; 32], 2);
        let stored_second = SessionStanding {
            login_seq: 2,
            replay_floor: 5000,
        };
        register_stored(&mut nms, now, 2, "n1", stored_second, 6000, home);
        nms.handle_datagram(now, at(NMS_LOCAL), attacker, &old_reg);
        let [NmsEvent::NeedSession { session_id }] = events(&mut nms)[..] else {
            panic!("a lookup of S1");
        };
        assert_eq!(session_id, SessionId(1));
        nms.handle_stored_session(now, info(1, "n1"), first);
        assert!(transmits(&mut nms).is_empty());
        assert!(events(&mut nms).is_empty());
        assert_eq!(nms.counters().rx_superseded, 1);
        assert_eq!(observed(&nms, fqdn), Some(home));
        assert_eq!(nms.held_sessions(), vec![SessionId(2)]);
    }

    /// Both sessions held (a node's parallel Logins): whichever registers
    /// is the device's; an older one's Registration waiting for its floor
    /// when a newer one took effect never does.
    #[test]
    fn an_older_session_never_replaces_a_newer_ones_registration() {
        let now = Instant::now();
        let (home, elsewhere) = (at("198.51.100.20:4501"), at("203.0.113.66:40000"));
        let mut nms = Nms::new(NmsConfig::default(), [0; 32], 1);
        for (id, seq) in [(1, 1), (2, 2)] {
            nms.handle_stored_session(
                now,
                info(id, "n1"),
                SessionStanding {
                    login_seq: seq,
                    replay_floor: 0,
                },
            );
        }
        let (mut old, mut new) = (node_cipher(1, 1000), node_cipher(2, 5000));
        nms.handle_datagram(now, at(NMS_LOCAL), elsewhere, &registration(&mut old, 1));
        nms.handle_datagram(now, at(NMS_LOCAL), home, &registration(&mut new, 1));
        let asked = events(&mut nms);
        assert_eq!(asked.len(), 2);
        // S2's floor is stored first: S2 takes effect and ends S1.
        nms.handle_replay_floor_stored(now, SessionId(2), 5000, FloorStored::Stored);
        nms.handle_replay_floor_stored(now, SessionId(1), 1000, FloorStored::Stored);
        assert_eq!(observed(&nms, "n1.cyphonic.internal"), Some(home));
        assert_eq!(nms.held_sessions(), vec![SessionId(2)]);
        let out = transmits(&mut nms);
        let messages = echo_challenges(&mut nms, now, &mut new, out);
        assert_eq!(messages.len(), 1, "S2's answer only");
    }

    /// What a restarted NMS must refuse: every counter at or below the
    /// stored floor (the last Registration accepted before), and, once the
    /// node registered anew, every counter before that Registration.
    #[test]
    fn a_restarted_nms_refuses_what_was_accepted_before() {
        let now = Instant::now();
        let (home, attacker) = (at("198.51.100.20:4501"), at("203.0.113.66:40000"));
        let fqdn = "n1.cyphonic.internal";
        let standing = SessionStanding {
            login_seq: 1,
            replay_floor: 0,
        };
        let mut before = Nms::new(NmsConfig::default(), [0; 32], 1);
        let (mut node, reg) = register_stored(&mut before, now, 1, "n1", standing, 1000, home);
        let (first, second) = (keepalive(&mut node, 2), keepalive(&mut node, 3));
        for k in [&first, &second] {
            before.handle_datagram(now, at(NMS_LOCAL), home, k);
        }
        assert_eq!(transmits(&mut before).len(), 2, "two KeepAliveAcks");

        // The store holds floor 1000 (the Registration's counter).
        let mut after = Nms::new(NmsConfig::default(), [0; 32], 2);
        after.handle_stored_session(
            now,
            info(1, "n1"),
            SessionStanding {
                login_seq: 1,
                replay_floor: 1000,
            },
        );
        after.handle_datagram(now, at(NMS_LOCAL), attacker, &reg);
        assert!(transmits(&mut after).is_empty() && events(&mut after).is_empty());
        assert_eq!(after.counters().rx_below_floor, 1);
        // A KeepAlive from after that Registration only asks for a new
        // one, and changes nothing.
        after.handle_datagram(now, at(NMS_LOCAL), attacker, &first);
        let answers = transmits(&mut after);
        assert_eq!(answers.len(), 2, "a Path Challenge and ReRegister");
        let mut reader = node_cipher(1, 0);
        let env = reader.open(&answers[0].payload).unwrap();
        assert_eq!(env.message, Message::PathChallenge);
        let env = reader.open(&answers[1].payload).unwrap();
        assert_eq!(env.message, Message::ReRegister);
        assert!(after.registrations().is_empty());
        // The node registers anew; the other KeepAlive, never seen by this
        // NMS's window, is refused: it is older than that Registration.
        after.handle_datagram(now, at(NMS_LOCAL), home, &registration(&mut node, 3));
        store_floors(&mut after, now);
        assert_eq!(observed(&after, fqdn), Some(home));
        transmits(&mut after);
        after.handle_datagram(now, at(NMS_LOCAL), attacker, &second);
        assert!(transmits(&mut after).is_empty());
        assert_eq!(observed(&after, fqdn), Some(home));
        assert_eq!(after.counters().rx_below_floor, 2);
    }

    #[test]
    fn ended_sessions_stop_at_once_and_are_not_looked_up_again() {
        let now = Instant::now();
        let home = at("198.51.100.20:4501");
        let mut nms = Nms::new(NmsConfig::default(), [0; 32], 1);
        let standing = SessionStanding {
            login_seq: 1,
            replay_floor: 0,
        };
        let (mut node, _) = register_stored(&mut nms, now, 1, "n1", standing, 1000, home);
        nms.handle_sessions_ended(now, &[SessionId(1)]);
        assert!(nms.held_sessions().is_empty() && nms.registrations().is_empty());
        // The shell is asked whether its certificate left the overlay.
        assert_eq!(
            events(&mut nms),
            vec![NmsEvent::SessionEnded {
                fqdn: "n1.cyphonic.internal".into(),
                cert_serial: 7
            }]
        );
        nms.handle_datagram(now, at(NMS_LOCAL), home, &keepalive(&mut node, 2));
        assert!(transmits(&mut nms).is_empty() && events(&mut nms).is_empty());
        // After MISSING_TTL the store is asked again.
        nms.handle_datagram(
            now + MISSING_TTL,
            at(NMS_LOCAL),
            home,
            &keepalive(&mut node, 3),
        );
        assert_eq!(
            events(&mut nms),
            vec![NmsEvent::NeedSession {
                session_id: SessionId(1)
            }]
        );
        // A lookup answered after the session ended (ended while it ran)
        // loads nothing.
        nms.handle_stored_session(now, info(9, "n9"), standing);
        nms.handle_sessions_ended(now, &[SessionId(10)]);
        nms.handle_stored_session(now, info(10, "n10"), standing);
        assert_eq!(nms.held_sessions(), vec![SessionId(9)]);
    }

    #[test]
    fn unknown_session_lookups_are_bounded() {
        let now = Instant::now();
        let config = NmsConfig {
            lookups_per_source: 10,
            lookups_total: 100,
            ..NmsConfig::default()
        };
        let mut nms = Nms::new(config, [0; 32], 1);
        let mut rng = StdRng::seed_from_u64(7);
        let mut probe = |nms: &mut Nms, from: SocketAddr, id: u64, now: Instant| {
            let packet = keepalive(&mut node_cipher(id, 1), rng.gen());
            nms.handle_datagram(now, at(NMS_LOCAL), from, &packet);
            let asked = events(nms).len();
            // The shell finds none of them.
            nms.handle_session_missing(SessionId(id));
            asked
        };
        // One source: its burst (twice its rate), then nothing.
        let one = at("203.0.113.66:40000");
        let asked: usize = (1..=1000).map(|id| probe(&mut nms, one, id, now)).sum();
        assert_eq!(asked, 20);
        assert_eq!(nms.counters().lookups_limited, 980);
        // The same /64 is the same source; the next /64 is another.
        let v6 = |s: &str| SocketAddr::new(s.parse().unwrap(), 4501);
        assert_eq!(probe(&mut nms, v6("2001:db8:0:1::1"), 2001, now), 1);
        for id in 2002..2030 {
            probe(&mut nms, v6("2001:db8:0:1::ffff"), id, now);
        }
        assert_eq!(probe(&mut nms, v6("2001:db8:0:1::2"), 2030, now), 0);
        assert_eq!(probe(&mut nms, v6("2001:db8:0:2::1"), 2031, now), 1);
        // A second later, the source's rate again.
        let later = now + Duration::from_secs(1);
        let asked: usize = (3000..3100).map(|id| probe(&mut nms, one, id, later)).sum();
        assert_eq!(asked, 10);
        // Many sources: the total bounds them, and the source table stays
        // bounded.
        let much_later = now + Duration::from_secs(3600);
        let asked: usize = (0..(2 * MAX_LOOKUP_SOURCES as u32))
            .map(|i| {
                let from =
                    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), 1);
                probe(&mut nms, from, 10_000 + u64::from(i), much_later)
            })
            .sum();
        assert_eq!(asked, 100);
        assert!(nms.lookup_limits.sources.len() <= MAX_LOOKUP_SOURCES);
        // A session the store did not know costs no second lookup.
        let known_missing = keepalive(&mut node_cipher(1, 1), 1);
        nms.handle_datagram(much_later, at(NMS_LOCAL), one, &known_missing);
        assert!(events(&mut nms).is_empty());
        // The missing table stays bounded.
        assert!(nms.missing.order.len() <= MAX_MISSING_SESSIONS);
    }

    /// Two NMSs of one cloud, or of two cooperating domains (§5.19).
    fn linked_pair(a_domain: &str, b_domain: &str) -> (Nms, Nms) {
        let config = |domain: &str, other: &str| NmsConfig {
            domain: domain.into(),
            peer_instances: domain == other,
            linked_domains: if domain == other {
                Vec::new()
            } else {
                vec![other.into()]
            },
            ..NmsConfig::default()
        };
        (
            Nms::new(config(a_domain, b_domain), [1; 32], 1),
            Nms::new(config(b_domain, a_domain), [2; 32], 1),
        )
    }

    /// What an NMS asked the links, as the wire carries it.
    fn link_direct(nms: &mut Nms) -> (u64, String, LinkScope, LinkInitiator) {
        events(nms)
            .into_iter()
            .find_map(|e| match e {
                NmsEvent::LinkDirect {
                    ticket,
                    target,
                    scope,
                    initiator,
                } => {
                    let frame = LinkMessage::Direct {
                        ticket,
                        target: target.clone(),
                        initiator: Box::new(initiator.clone()),
                    }
                    .encode();
                    assert!(matches!(
                        LinkMessage::decode(&frame[4..]),
                        Ok(LinkMessage::Direct { .. })
                    ));
                    Some((ticket, target, scope, initiator))
                }
                _ => None,
            })
            .expect("a request to the links")
    }

    fn link_reply(nms: &mut Nms) -> LinkMessage {
        events(nms)
            .into_iter()
            .find_map(|e| match e {
                NmsEvent::LinkReply { message, .. } => {
                    let frame = message.encode();
                    Some(LinkMessage::decode(&frame[4..]).expect("a well-formed answer"))
                }
                _ => None,
            })
            .expect("an answer for the link")
    }

    #[test]
    fn a_route_to_a_node_of_another_instance_is_directed_by_that_instance() {
        let now = Instant::now();
        let (mut a, mut b) = linked_pair("cyphonic.internal", "cyphonic.internal");
        let (mut n1, at1) = registered_node(&mut a, now, 1);
        let (mut n2, at2) = registered_node(&mut b, now, 2);
        let local = at(NMS_LOCAL);
        a.handle_datagram(
            now,
            local,
            at1,
            &direction_request(&mut n1, 5, "a2.cyphonic.internal"),
        );
        assert!(transmits(&mut a).is_empty(), "n1 waits for the link");
        let (ticket, target, scope, initiator) = link_direct(&mut a);
        assert_eq!(target, "a2.cyphonic.internal");
        assert_eq!(scope, LinkScope::Instance);
        assert_eq!(initiator.fqdn, "a1.cyphonic.internal");
        assert_eq!(initiator.observed, at1);

        b.handle_link_direct(now, 900, &target, initiator, scope);
        let to_cn = received(&mut b, &mut n2, at2);
        let Message::RouteDirectionToResponder(dir) = &to_cn[0].message else {
            panic!("{to_cn:?}");
        };
        assert_eq!(dir.peer.fqdn, "a1.cyphonic.internal");
        assert_eq!(dir.peer.vip4, std::net::Ipv4Addr::new(100, 64, 0, 1));
        assert!(
            dir.peer.endpoints.contains(&at1),
            "{:?}",
            dir.peer.endpoints
        );
        let confirm = n2.seal(&Envelope {
            txid: to_cn[0].txid,
            message: Message::RouteDirectionConfirmation {
                route_id: dir.route_id,
            },
        });
        b.handle_datagram(now, local, at2, &confirm);
        let LinkMessage::Directed {
            ticket: answered,
            direction,
        } = link_reply(&mut b)
        else {
            panic!("not directed");
        };
        assert_eq!(answered, 900);
        assert_eq!(b.counters().links_asked, 1);

        a.handle_link_answer(now, ticket, LinkAnswer::Directed(direction));
        let back = received(&mut a, &mut n1, at1);
        let Message::RouteDirectionToInitiator(to_mn) = &back[0].message else {
            panic!("{back:?}");
        };
        // Both ends got one route: the same ID and key, each the other.
        assert_eq!(to_mn.route_id, dir.route_id);
        assert_eq!(to_mn.tunnel_key, dir.tunnel_key);
        assert_eq!(to_mn.peer.fqdn, "a2.cyphonic.internal");
        assert!(to_mn.peer.endpoints.contains(&at2));
        assert_ne!(to_mn.initiate, dir.initiate, "exactly one end initiates");
        assert_eq!(a.counters().links_forwarded, 1);
        assert_eq!(a.counters().directions, 1);
        // A late second answer for the same ticket changes nothing.
        a.handle_link_answer(now, ticket, LinkAnswer::NotFound("late".into()));
        assert!(transmits(&mut a).is_empty());
    }

    #[test]
    fn a_name_no_instance_holds_fails_and_a_silent_link_times_out() {
        let now = Instant::now();
        let (mut a, mut b) = linked_pair("cyphonic.internal", "cyphonic.internal");
        let (mut n1, at1) = registered_node(&mut a, now, 1);
        let local = at(NMS_LOCAL);
        a.handle_datagram(
            now,
            local,
            at1,
            &direction_request(&mut n1, 5, "a9.cyphonic.internal"),
        );
        let (ticket, target, scope, initiator) = link_direct(&mut a);
        b.handle_link_direct(now, 1, &target, initiator, scope);
        assert_eq!(link_reply(&mut b), LinkMessage::NotHere { ticket: 1 });
        a.handle_link_answer(now, ticket, LinkAnswer::NotFound("nobody".into()));
        let back = received(&mut a, &mut n1, at1);
        assert!(
            matches!(
                back[0].message,
                Message::DirectionError {
                    code: DirectionErrorCode::NotFound,
                    ..
                }
            ),
            "{back:?}"
        );

        // Nobody answers: the request fails at its deadline.
        a.handle_datagram(
            now,
            local,
            at1,
            &direction_request(&mut n1, 6, "a8.cyphonic.internal"),
        );
        let _ = link_direct(&mut a);
        let (deadline, _) = a.poll_timeout().expect("a deadline for the link");
        assert!(deadline <= now + a.config.direction_timeout + Duration::from_secs(1));
        a.handle_timeout(deadline);
        let back = received(&mut a, &mut n1, at1);
        assert!(
            matches!(
                back[0].message,
                Message::DirectionError {
                    code: DirectionErrorCode::Timeout,
                    ..
                }
            ),
            "{back:?}"
        );
    }

    #[test]
    fn each_domain_applies_its_own_policy_to_its_own_node() {
        let now = Instant::now();
        // a1 (registered at A, domain west) asks for a2.cyphonic.internal
        // (B's domain).
        let (mut a, mut b) = linked_pair("west.example", "cyphonic.internal");
        let (mut n1, at1) = registered_node(&mut a, now, 1);
        let (_n2, _at2) = registered_node(&mut b, now, 2);
        let local = at(NMS_LOCAL);

        // A's policy closes the route: the links are never asked.
        a.handle_policy(now, deny_but(&[]));
        a.handle_datagram(
            now,
            local,
            at1,
            &direction_request(&mut n1, 5, "a2.cyphonic.internal"),
        );
        assert!(!events(&mut a)
            .iter()
            .any(|e| matches!(e, NmsEvent::LinkDirect { .. })));
        let back = received(&mut a, &mut n1, at1);
        assert!(matches!(
            back[0].message,
            Message::DirectionError {
                code: DirectionErrorCode::Denied,
                ..
            }
        ));

        // A lets a1 reach a2 on TCP 22 (naming the remote node by FQDN);
        // B lets nothing reach its a2 from a1: B refuses.
        a.handle_policy(now, deny_but(&[("a1", "a2.cyphonic.internal", "tcp/22")]));
        b.handle_policy(now, deny_but(&[]));
        a.handle_datagram(
            now,
            local,
            at1,
            &direction_request(&mut n1, 6, "a2.cyphonic.internal"),
        );
        let (ticket, target, scope, initiator) = link_direct(&mut a);
        assert_eq!(scope, LinkScope::Domain);
        b.handle_link_direct(now, 2, &target, initiator.clone(), scope);
        let LinkMessage::Refused { code, message, .. } = link_reply(&mut b) else {
            panic!("B directed a route its policy closes");
        };
        assert_eq!(code, DirectionErrorCode::Denied);
        a.handle_link_answer(now, ticket, LinkAnswer::Refused { code, message });
        let back = received(&mut a, &mut n1, at1);
        assert!(matches!(
            back[0].message,
            Message::DirectionError {
                code: DirectionErrorCode::Denied,
                ..
            }
        ));

        // B names the remote initiator by its FQDN and lets it in: each
        // end's filter is its own domain's.
        b.handle_policy(now, deny_but(&[("a1.cyphonic.internal", "a2", "tcp/22")]));
        b.handle_link_direct(now, 3, &target, initiator, scope);
        let events_b = events(&mut b);
        assert!(
            !events_b
                .iter()
                .any(|e| matches!(e, NmsEvent::LinkReply { .. })),
            "B directs its node: {events_b:?}"
        );
    }
}
