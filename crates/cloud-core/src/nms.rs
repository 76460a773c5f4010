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
//! socket, [`Nms::handle_session`] / [`Nms::handle_session_missing`] to
//! answer a [`NmsEvent::NeedSession`] (the shell looks the session up in the
//! database the AS writes), [`Nms::handle_timeout`] when the deadline from
//! [`Nms::poll_timeout`] passes. Outputs, to drain after every input:
//! [`Nms::poll_transmit`] then [`Nms::poll_event`], then re-arm the timer
//! with [`Nms::poll_timeout`]. The NMS never reads a clock or a socket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::route::{decide_route, Initiator, NatKind, NetInfo};
use cyphonic_proto::signal::{
    self, CertStatus, DirectionErrorCode, Envelope, GeneralNodes, Message, PeerInfo,
    RegistrationRequest, RegistrationResponse, RelayOffer, Role, RouteDirection, RoutePattern,
    SignalCipher,
};
use cyphonic_proto::{RelayId, RouteId, SessionId};
use rand::{rngs::StdRng, Rng, SeedableRng};

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
}

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
    /// answer with `handle_session` or `handle_session_missing`.
    NeedSession {
        session_id: SessionId,
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
    /// An adapter asked for the general nodes it serves: look up the ones
    /// of `device_id` and answer with `handle_general_nodes`.
    NeedGeneralNodes {
        session_id: SessionId,
        txid: u64,
        device_id: String,
        offset: u16,
    },
}

/// Why the NMS wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReason {
    RetransmitDirection,
    DirectionTimeout,
    Expire,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NmsCounters {
    pub rx_packets: u64,
    pub rx_bad: u64,
    pub rx_unknown_session: u64,
    pub registrations: u64,
    pub directions: u64,
    pub direction_failures: u64,
}

/// Registration state of one node.
#[derive(Debug, Clone)]
pub struct Registration {
    pub static_public: [u8; 32],
    pub tunnel_port: u16,
    pub local_addrs: Vec<SocketAddr>,
    pub observed: SocketAddr,
    /// Where its NAT Probe to the second port came from.
    pub observed_probe: Option<SocketAddr>,
    /// The NMS socket the node talks to (replies leave from it).
    pub nms_local: SocketAddr,
    pub last_seen: Instant,
    /// How its Registration came: native UDP or a QUIC / TCP leg.
    pub transport: cyphonic_proto::Transport,
    /// Its QUIC listener port (0: none).
    pub quic_port: u16,
}

impl Registration {
    pub fn net(&self) -> NetInfo {
        NetInfo {
            local_addrs: self.local_addrs.clone(),
            observed: self.observed,
            observed_probe: self.observed_probe,
            transport: self.transport,
            quic_port: self.quic_port,
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
}

struct PendingRoute {
    mn_session: SessionId,
    mn_txid: u64,
    cn_session: SessionId,
    cn_txid: u64,
    to_initiator: RouteDirection,
    to_responder: RouteDirection,
    next_retransmit: Instant,
    interval: Duration,
    deadline: Instant,
}

/// Bounds on state a remote party can grow.
const MAX_PENDING_PER_UNKNOWN_SESSION: usize = 4;
const MAX_UNKNOWN_SESSIONS: usize = 1024;
const MAX_PENDING_ROUTES: usize = 4096;
const RESPONSE_CACHE: usize = 4096;
/// Information Requests waiting for the shell's lookup.
const MAX_INFORMATION_PENDING: usize = 1024;

pub struct Nms {
    config: NmsConfig,
    rng: StdRng,
    counter_base: u64,
    sessions: HashMap<SessionId, Session>,
    /// fqdn -> session of its latest registration.
    by_fqdn: HashMap<String, SessionId>,
    /// Packets waiting for a session lookup, by session ID.
    awaiting_session: BTreeMap<SessionId, Vec<(SocketAddr, SocketAddr, Vec<u8>)>>,
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
    /// Relay grants handed out per TRS instance: the least used goes first
    /// in the next route's list.
    relay_load: Vec<u64>,
}

impl Nms {
    /// `seed` drives route IDs and tunnel keys in tests; production passes
    /// OS randomness. `counter_base` is the wall clock in microseconds (see
    /// [`cyphonic_proto::signal`]).
    pub fn new(config: NmsConfig, seed: [u8; 32], counter_base: u64) -> Self {
        Self {
            config,
            rng: StdRng::from_seed(seed),
            counter_base,
            sessions: HashMap::new(),
            by_fqdn: HashMap::new(),
            awaiting_session: BTreeMap::new(),
            routes: BTreeMap::new(),
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            information_pending: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: NmsCounters::default(),
            relay_load: Vec::new(),
        }
    }

    pub fn counters(&self) -> NmsCounters {
        self.counters
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
        self.routes
            .values()
            .flat_map(|r| {
                [
                    (r.next_retransmit, TimerReason::RetransmitDirection),
                    (r.deadline, TimerReason::DirectionTimeout),
                ]
            })
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
            if !self.awaiting_session.contains_key(&session_id)
                && self.awaiting_session.len() >= MAX_UNKNOWN_SESSIONS
            {
                return;
            }
            let queue = self.awaiting_session.entry(session_id).or_default();
            if queue.is_empty() {
                self.events.push_back(NmsEvent::NeedSession { session_id });
            }
            if queue.len() < MAX_PENDING_PER_UNKNOWN_SESSION {
                queue.push((local, from, packet.to_vec()));
            }
            return;
        };
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
        self.dispatch(now, session_id, local, from, envelope);
    }

    /// The shell found the session a [`NmsEvent::NeedSession`] asked for.
    pub fn handle_session(&mut self, now: Instant, info: SessionInfo) {
        let id = info.session_id;
        self.insert_session(info);
        for (local, from, packet) in self.awaiting_session.remove(&id).unwrap_or_default() {
            self.handle_datagram(now, local, from, &packet);
        }
    }

    /// The shell has no such session (expired or forged): drop its packets.
    pub fn handle_session_missing(&mut self, session_id: SessionId) {
        self.awaiting_session.remove(&session_id);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
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
                        let payload = session.cipher.seal(&Envelope {
                            txid: r.cn_txid,
                            message: Message::RouteDirectionToResponder(r.to_responder.clone()),
                        });
                        self.transmits.push_back(Transmit {
                            local: reg.nms_local,
                            destination: reg.observed,
                            payload,
                        });
                    }
                }
                r.interval *= 2;
                r.next_retransmit = now + r.interval;
            }
        }
        for route_id in failed {
            if let Some(r) = self.routes.remove(&route_id) {
                let target = r.to_initiator.peer.fqdn.clone();
                self.fail_direction(
                    r.mn_session,
                    r.mn_txid,
                    &target,
                    DirectionErrorCode::Timeout,
                    format!("{target} did not answer the route direction"),
                );
            }
        }
    }

    fn insert_session(&mut self, info: SessionInfo) {
        let cipher = SignalCipher::new(
            info.session_id,
            &info.common_key,
            Role::Nms,
            self.counter_base,
        );
        self.sessions.insert(
            info.session_id,
            Session {
                info,
                cipher,
                registration: None,
            },
        );
    }

    fn dispatch(
        &mut self,
        now: Instant,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        env: Envelope,
    ) {
        if let Some(cached) = self.answered.get(&(session_id, env.txid)) {
            // A retransmitted request: same answer, no second action. The
            // cached packet is re-sent as is; its counter is already past the
            // receiver's window only if the first copy arrived, in which case
            // the duplicate is harmlessly dropped there.
            let payload = cached.clone();
            self.transmits.push_back(Transmit {
                local,
                destination: from,
                payload,
            });
            return;
        }
        match env.message {
            Message::RegistrationRequest(req) => {
                self.on_registration(now, session_id, local, from, env.txid, req)
            }
            Message::KeepAlive => self.on_keepalive(session_id, local, from, env.txid),
            Message::NatProbe => self.on_nat_probe(session_id, local, from, env.txid),
            Message::DirectionRequest { target } => {
                self.on_direction_request(now, session_id, env.txid, &target)
            }
            Message::RouteDirectionConfirmation { route_id } => {
                self.on_confirmation(session_id, env.txid, route_id)
            }
            Message::InformationRequest { offset } => {
                self.on_information_request(session_id, local, from, env.txid, offset)
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

    fn on_registration(
        &mut self,
        now: Instant,
        session_id: SessionId,
        local: SocketAddr,
        from: SocketAddr,
        txid: u64,
        req: RegistrationRequest,
    ) {
        let keepalive_secs = self.config.keepalive.as_secs().clamp(1, u16::MAX as u64) as u16;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let local_addrs = req
            .local_addrs
            .into_iter()
            .filter(|a| usable_endpoint(a.ip()))
            .collect();
        session.registration = Some(Registration {
            static_public: req.static_public,
            tunnel_port: req.tunnel_port,
            local_addrs,
            observed: from,
            observed_probe: None,
            nms_local: local,
            last_seen: now,
            transport: req.transport,
            quic_port: req.quic_port,
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
        // A node that logged in again replaces its older session.
        if let Some(old) = self.by_fqdn.insert(fqdn.clone(), session_id) {
            if old != session_id {
                self.sessions.remove(&old);
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
            self.on_direction_request(now, r.mn_session, r.mn_txid, &target);
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
            Some(reg) => {
                if reg.observed != from {
                    // The NAT mapped the node anew: its probe result is
                    // stale until it probes again.
                    reg.observed = from;
                    reg.observed_probe = None;
                }
                reg.nms_local = local;
                Message::KeepAliveAck { observed: from }
            }
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
        self.answer(
            session_id,
            local,
            from,
            txid,
            Message::NatProbeAck { observed: from },
            false,
        );
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

    /// The TRS list for one route, by instance, least used first (ties in
    /// configured order, so the operator's nearest-first order holds while
    /// the load is even). Both ends get the same order, so they meet at
    /// the same instance and fail over to the same next one.
    fn relay_servers(&mut self) -> Vec<SocketAddr> {
        let Some(relay) = self.config.relay.as_ref() else {
            return Vec::new();
        };
        let instances = relay_instances(&relay.servers);
        self.relay_load.resize(instances.len(), 0);
        let mut order: Vec<usize> = (0..instances.len()).collect();
        order.sort_by_key(|i| (self.relay_load[*i], *i));
        if let Some(first) = order.first() {
            self.relay_load[*first] += 1;
        }
        order
            .into_iter()
            .flat_map(|i| instances[i].clone())
            .collect()
    }

    fn on_direction_request(&mut self, now: Instant, mn: SessionId, txid: u64, target: &str) {
        let target = normalize(target);
        if self
            .routes
            .values()
            .any(|r| r.mn_session == mn && r.mn_txid == txid)
        {
            return; // already directing the responder; it answers in time
        }
        let Some(mn_reg) = self.sessions.get(&mn).and_then(|s| s.registration.clone()) else {
            self.fail_direction(
                mn,
                txid,
                &target,
                DirectionErrorCode::NotRegistered,
                "register first".into(),
            );
            return;
        };
        let cn = match self.by_fqdn.get(&target) {
            Some(&cn) if cn != mn => cn,
            _ => {
                let msg = format!("no node named {target} is online");
                self.fail_direction(mn, txid, &target, DirectionErrorCode::NotFound, msg);
                return;
            }
        };
        if self
            .routes
            .values()
            .any(|r| r.mn_session == cn && r.cn_session == mn)
        {
            // The peer asked for this pair first (both moved at once): the
            // route being set up serves both; the requester learns it as
            // responder and drops its own request.
            return;
        }
        let Some(cn_session) = self.sessions.get(&cn) else {
            return;
        };
        let Some(cn_reg) = cn_session.registration.clone() else {
            let msg = format!("no node named {target} is online");
            self.fail_direction(mn, txid, &target, DirectionErrorCode::NotFound, msg);
            return;
        };
        if now.saturating_duration_since(cn_reg.last_seen) > self.config.offline_after {
            let msg = format!("{target} is offline");
            self.fail_direction(mn, txid, &target, DirectionErrorCode::NotFound, msg);
            return;
        }
        if self.routes.len() >= MAX_PENDING_ROUTES {
            self.fail_direction(
                mn,
                txid,
                &target,
                DirectionErrorCode::Timeout,
                "NMS busy".into(),
            );
            return;
        }
        let mn_info = &self.sessions[&mn].info;
        let cn_info = &cn_session.info;
        let decision = decide_route(&mn_reg.net(), &cn_reg.net());
        tracing::debug!(mn = %mn_info.fqdn, cn = %cn_info.fqdn, pattern = decision.pattern.as_str(), reason = decision.reason, "route decided");
        let (mn_peer, cn_peer) = (
            peer_info(mn_info, &mn_reg, decision.mn_endpoints.clone()),
            peer_info(cn_info, &cn_reg, decision.cn_endpoints.clone()),
        );
        let route_id = RouteId(self.rng.gen_range(1..u64::MAX));
        let tunnel_key: [u8; 32] = self.rng.gen();
        let servers = self.relay_servers();
        let mn_initiates = decision.initiator == Initiator::Mn;
        let to_responder = RouteDirection {
            route_id,
            pattern: decision.pattern,
            peer: mn_peer,
            tunnel_key,
            initiate: !mn_initiates,
            punch: decision.punch && mn_initiates,
            relay: self.relay_offer(now, route_id.relay_id(), 1, &servers),
            via: decision.via,
        };
        let to_initiator = RouteDirection {
            route_id,
            pattern: decision.pattern,
            peer: cn_peer,
            tunnel_key,
            initiate: mn_initiates,
            punch: decision.punch && !mn_initiates,
            relay: self.relay_offer(now, route_id.relay_id(), 0, &servers),
            via: decision.via,
        };
        let cn_txid: u64 = self.rng.gen();
        let Some(cn_session) = self.sessions.get_mut(&cn) else {
            return;
        };
        let packet = cn_session.cipher.seal(&Envelope {
            txid: cn_txid,
            message: Message::RouteDirectionToResponder(to_responder.clone()),
        });
        self.transmits.push_back(Transmit {
            local: cn_reg.nms_local,
            destination: cn_reg.observed,
            payload: packet,
        });
        self.routes.insert(
            route_id,
            PendingRoute {
                mn_session: mn,
                mn_txid: txid,
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

    fn on_confirmation(&mut self, cn: SessionId, txid: u64, route_id: RouteId) {
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
        let Some(reg) = self
            .sessions
            .get(&route.mn_session)
            .and_then(|s| s.registration.clone())
        else {
            return;
        };
        let initiator = self.sessions[&route.mn_session].info.fqdn.clone();
        let responder = route.to_initiator.peer.fqdn.clone();
        let pattern = route.to_initiator.pattern;
        self.counters.directions += 1;
        self.events.push_back(NmsEvent::RouteDirected {
            route_id,
            initiator,
            responder,
            pattern,
        });
        self.answer(
            route.mn_session,
            reg.nms_local,
            reg.observed,
            route.mn_txid,
            Message::RouteDirectionToInitiator(route.to_initiator),
            true,
        );
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
        let payload = session.cipher.seal(&Envelope { txid, message });
        if cache {
            if self.answered_order.len() >= RESPONSE_CACHE {
                if let Some(old) = self.answered_order.pop_front() {
                    self.answered.remove(&old);
                }
            }
            self.answered.insert((session_id, txid), payload.clone());
            self.answered_order.push_back((session_id, txid));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let firsts: Vec<SocketAddr> = (0..4).map(|_| nms.relay_servers()[0]).collect();
        assert_eq!(firsts, vec![servers[0], servers[2], servers[0], servers[2]]);
        // Every list still holds every instance, for failover.
        assert_eq!(nms.relay_servers().len(), 4);
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
            }),
        });
        nms.handle_datagram(now, local, from, &reg);
        while nms.poll_transmit().is_some() {}
        while nms.poll_event().is_some() {}
        (node, from)
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
}
