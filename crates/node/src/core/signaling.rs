//! The NMS client: the Login's session, Registration (and the race of
//! transports when native UDP goes unanswered, and the later re-probe of
//! cheaper ones), the NAT Probe, KeepAlive, and every request's
//! retransmission and deadline.
//!
//! It owns no peer: what the NMS says about routes comes out as a
//! [`SignalingEvent`] for the node to act on, and the node hands it the
//! Direction Requests to send. Packets and [`NodeEvent::NeedLogin`] go
//! straight to the shared [`Outbox`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use cyphonic_proto::signal::{
    DirectionErrorCode, Envelope, GeneralNodes, Message, RegistrationRequest, RouteDirection,
    SignalCipher,
};
use cyphonic_proto::Fqdn;
use hickory_proto::op::ResponseCode;
use rand::rngs::StdRng;
use rand::Rng;

use super::latency::{LatencyHistogram, ROUTE_SELECTION_BOUNDS_MS};
use super::requests::{OutRequest, RequestKind, Requests};
use super::session::Session;
use super::types::{
    Leg, Login, LoginReason, NodeConfig, NodeCounters, NodeEvent, TimerReason, Transport,
};
use super::Outbox;
use crate::resolver;
use cyphonic_proto::nat::{NatKind, NetInfo};

/// Between adding one transport to a Registration race and the next.
pub const RACE_STAGGER: Duration = Duration::from_millis(300);

/// What the NMS said that concerns the rest of the node.
pub(crate) enum SignalingEvent {
    /// The NMS has our registration. `transport_change`: it came over
    /// another transport than the last one (before, after). `probing`: a
    /// NAT Probe follows, and routes wait for its answer.
    Registered {
        fqdn: String,
        vip4: Ipv4Addr,
        vip6: Ipv6Addr,
        observed: SocketAddr,
        transport_change: Option<(Option<Transport>, Transport)>,
        probing: bool,
    },
    /// The NAT Probe was answered (or never will be): the NMS knows our
    /// network now.
    NatKnown,
    DirectionToResponder {
        txid: u64,
        direction: RouteDirection,
    },
    DirectionToInitiator {
        /// The name the Direction Request asked for (for one by VIP, the
        /// name the direction gives).
        target: Fqdn,
        /// The VIP a Direction Request by VIP asked for.
        vip: Option<IpAddr>,
        before_move: bool,
        direction: RouteDirection,
    },
    /// Route selection for `target` failed or timed out.
    DirectionFailed { target: Fqdn, rcode: ResponseCode },
    /// Route selection for the holder of `vip` failed or timed out.
    VipFailed { vip: IpAddr, rcode: ResponseCode },
    /// A page of the general nodes this adapter serves.
    GeneralNodes(GeneralNodes),
    /// The node `fqdn` with certificate `cert_serial` left the overlay.
    PeerRevoked { fqdn: Fqdn, cert_serial: u64 },
    /// The access policy changed for the route with `fqdn`: its new
    /// filter, or a closed one (the route is withdrawn).
    RouteUpdate {
        fqdn: Fqdn,
        filter: cyphonic_proto::policy::RouteFilter,
    },
}

pub(crate) struct Signaling {
    config: NodeConfig,
    static_public: [u8; 32],
    local_addrs: Vec<SocketAddr>,
    /// The host reported its addresses at least once (until then an empty
    /// list says nothing).
    addrs_known: bool,
    /// The public address the router's port mapping gives the tunnel
    /// port, if any: registrations carry it.
    mapped: Option<SocketAddr>,
    session: Option<Session>,
    login_requested: bool,
    requests: Requests,
    /// The transport signaling uses (or tries first), kept across logins.
    transport: Transport,
    /// The transport of the last registration the NMS answered, kept
    /// across logins.
    last_registered_over: Option<Transport>,
    /// The NMS stopped answering, the session was dropped, and the NMS has
    /// said nothing since: the cloud is away while the node logs in again.
    lost: bool,
    /// A KeepAlive went unanswered over the transport signaling uses: try
    /// the others at the next timer ([`Signaling::probe_other_transports`]).
    try_others: bool,
    /// NMS addresses (other instances of the cloud) this session moved
    /// away from since the NMS last answered: each is tried once before
    /// the session is given up.
    left_instances: Vec<SocketAddr>,
    /// The session moved to another instance: register there at the next
    /// timer.
    register_due: bool,
    /// The FQDN and VIPs of the last Login: the device's for good (they
    /// stay on the TUN device while the node is logged out).
    identity: Option<(String, Ipv4Addr, Ipv6Addr)>,
    route_selections: RouteSelections,
}

/// The route selections this node made (Direction Requests, by name or
/// by VIP), for `cyphonic status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteSelections {
    /// Requests sent, each once however often it was retransmitted.
    pub started: u64,
    /// Requests the NMS answered (a route or a DirectionError): the time
    /// from the request's first sending to the answer.
    pub answered: LatencyHistogram,
    /// Requests whose deadline passed unanswered. The rest of `started`
    /// are in flight, superseded (the NMS directed us as the responder),
    /// or dropped with a session.
    pub timed_out: u64,
}

impl Signaling {
    pub fn new(config: NodeConfig, static_public: [u8; 32]) -> Self {
        let transport = config.transport.unwrap_or(Transport::Udp);
        Signaling {
            config,
            static_public,
            local_addrs: Vec::new(),
            addrs_known: false,
            mapped: None,
            session: None,
            login_requested: false,
            requests: Requests::default(),
            transport,
            last_registered_over: None,
            lost: false,
            try_others: false,
            left_instances: Vec::new(),
            register_due: false,
            identity: None,
            route_selections: RouteSelections {
                started: 0,
                answered: LatencyHistogram::new(&ROUTE_SELECTION_BOUNDS_MS),
                timed_out: 0,
            },
        }
    }

    /// The route selections made so far.
    pub fn route_selections(&self) -> &RouteSelections {
        &self.route_selections
    }

    /// The host's addresses, as registered.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn set_local_addrs(&mut self, addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
        self.addrs_known = true;
        std::mem::replace(&mut self.local_addrs, addrs)
    }

    /// The host has no address at all (its links are down): nothing can
    /// leave, so nothing is sent, raced or counted as unanswered until the
    /// move that brings an address registers.
    fn offline(&self) -> bool {
        self.addrs_known && self.local_addrs.is_empty()
    }

    pub fn logged_in(&self) -> bool {
        self.session.is_some()
    }

    pub fn registered(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.registered)
    }

    /// The NMS left a request unanswered and has said nothing since.
    pub fn cloud_away(&self) -> bool {
        self.lost || self.session.as_ref().is_some_and(|s| s.away)
    }

    /// A KeepAlive that must be answered within `timeout`.
    fn send_keepalive(
        &mut self,
        now: Instant,
        timeout: Duration,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) {
        self.send_request(
            now,
            RequestKind::KeepAlive,
            Message::KeepAlive,
            None,
            timeout,
            rng,
            out,
        );
    }

    /// Asks the NMS whether it is there (a KeepAlive with a short
    /// deadline) unless a KeepAlive is in flight: a DNS query waits for an
    /// answer the NMS may never give. Unanswered, the cloud is away.
    pub fn check_cloud(
        &mut self,
        now: Instant,
        timeout: Duration,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) {
        let in_flight = self
            .requests
            .find(|r| r.kind == RequestKind::KeepAlive)
            .is_some();
        if in_flight || !self.registered() {
            return;
        }
        self.send_keepalive(now, timeout, rng, out);
    }

    pub fn login(&self) -> Option<&Login> {
        self.session.as_ref().map(|s| &s.login)
    }

    /// The FQDN and VIPs of the last Login, logged in now or not.
    pub fn identity(&self) -> Option<&(String, Ipv4Addr, Ipv6Addr)> {
        self.identity.as_ref()
    }

    pub fn observed(&self) -> Option<SocketAddr> {
        self.session.as_ref().and_then(|s| s.observed)
    }

    pub fn observed_probe(&self) -> Option<SocketAddr> {
        self.session.as_ref().and_then(|s| s.observed_probe)
    }

    /// The transport signaling uses or tries first (relays follow it).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// How signaling travels: the transport the NMS has our registration
    /// over, or the one being tried.
    pub fn signaling_transport(&self) -> Transport {
        match self.last_registered_over {
            Some(t) if self.registered() => t,
            _ => self.transport,
        }
    }

    /// The NAT in front of this node, as the NMS's two ports saw it.
    pub fn nat(&self) -> NatKind {
        match self.observed() {
            Some(observed) => NetInfo {
                local_addrs: self.local_addrs.clone(),
                observed,
                observed_probe: self.observed_probe(),
                transport: self.signaling_transport(),
                quic_port: self.config.quic_port,
                mapped: self.mapped,
            }
            .nat(),
            None => NatKind::Unknown,
        }
    }

    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let requests = self
            .requests
            .timers
            .next()
            .map(|(t, _)| (t, TimerReason::SignalRetransmit));
        let session = self.session.as_ref().filter(|s| s.registered);
        let keepalive = session.map(|s| (s.next_keepalive, TimerReason::KeepAlive));
        let reprobe = session
            .filter(|_| self.reprobes())
            .map(|s| (s.next_reprobe, TimerReason::KeepAlive));
        [requests, keepalive, reprobe]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    /// Asks the shell to log in, once until it answers.
    pub fn request_login(&mut self, reason: LoginReason, out: &mut Outbox) {
        if !self.login_requested {
            self.login_requested = true;
            out.events.push_back(NodeEvent::NeedLogin { reason });
        }
    }

    /// Login succeeded: a new session, and the Registration in it.
    /// `counter_base` must move with the clock (see `Node::handle_login`).
    pub fn handle_login(
        &mut self,
        now: Instant,
        login: Login,
        counter_base: u64,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) {
        self.login_requested = false;
        self.left_instances.clear();
        self.register_due = false;
        self.identity = Some((login.fqdn.clone(), login.vip4, login.vip6));
        let cipher = SignalCipher::new(
            login.session_id,
            &login.common_key,
            cyphonic_proto::signal::Role::Node,
            counter_base,
        );
        self.requests.clear();
        self.session = Some(Session {
            cipher,
            next_keepalive: now + login.keepalive,
            login,
            registered: false,
            observed: None,
            probe: None,
            observed_probe: None,
            missed_keepalives: 0,
            away: false,
            next_reprobe: now,
        });
        self.send_registration(now, rng, out);
    }

    pub fn handle_login_failed(&mut self) {
        self.login_requested = false;
    }

    fn registration(&self, transport: Transport) -> Message {
        Message::RegistrationRequest(RegistrationRequest {
            static_public: self.static_public,
            tunnel_port: self.config.tunnel_port,
            local_addrs: self.local_addrs.clone(),
            transport,
            quic_port: self.config.quic_port,
            mapped: self.mapped,
        })
    }

    /// Sets the port mapping registrations carry; whether it changed.
    pub fn set_mapped(&mut self, mapped: Option<SocketAddr>) -> bool {
        std::mem::replace(&mut self.mapped, mapped) != mapped
    }

    /// Whether the transport is ours to choose (not forced) and a cheaper
    /// one than the current may work.
    fn reprobes(&self) -> bool {
        self.config.transport.is_none() && self.transport != Transport::Udp
    }

    /// Registers over the current transport; unanswered after
    /// `transport_fallback`, the same Registration is raced over every
    /// other transport the cloud offers (unless one is forced).
    pub fn send_registration(&mut self, now: Instant, rng: &mut StdRng, out: &mut Outbox) {
        self.requests.retain(|r| {
            !matches!(
                r.kind,
                RequestKind::Registration | RequestKind::TransportProbe
            )
        });
        if self.offline() {
            // A transport raced now would be judged on a network that is
            // not there, or dialed the instant it comes back, before the
            // move that brings it is known.
            return;
        }
        let message = self.registration(self.transport);
        let timeout = self.config.registration_timeout;
        let txid = self.send_request(
            now,
            RequestKind::Registration,
            message,
            None,
            timeout,
            rng,
            out,
        );
        if self.config.transport.is_none() {
            let race_at = now + self.config.transport_fallback;
            self.requests.update(txid, |r| r.race_at = Some(race_at));
        }
    }

    /// Unanswered Registration: send it over the next transport too,
    /// cheapest first, each `RACE_STAGGER` after the previous (as Happy
    /// Eyeballs staggers address families): QUIC gets a head start on TLS
    /// over TCP, whose handshake takes a round trip more, so it wins
    /// wherever both get out.
    fn race_transports(&mut self, now: Instant, txid: u64, out: &mut Outbox) {
        if self.offline() {
            self.requests.update(txid, |r| r.race_at = None);
            return;
        }
        let others: Vec<Transport> = Transport::ALL
            .into_iter()
            .filter(|t| {
                self.session
                    .as_ref()
                    .is_some_and(|s| s.nms_leg(*t).is_some())
            })
            .collect();
        let Some(r) = self.requests.get(txid) else {
            return;
        };
        let untried: Vec<Transport> = others
            .into_iter()
            .filter(|t| !r.transports.contains(t))
            .collect();
        let Some(&next) = untried.first() else {
            self.requests.update(txid, |r| r.race_at = None);
            return;
        };
        tracing::info!(tried = ?r.transports, adding = %next, "NMS silent; racing another transport");
        self.requests.update(txid, |r| {
            r.transports.push(next);
            r.race_at = (untried.len() > 1).then_some(now + RACE_STAGGER);
        });
        self.seal_to_nms_over(txid, self.registration(next), next, out);
    }

    /// While signaling is on QUIC or TCP: a Registration over each cheaper
    /// transport; the first answer moves signaling there.
    fn reprobe_transports(&mut self, now: Instant, rng: &mut StdRng, out: &mut Outbox) {
        let current = self.transport;
        let Some(sig) = self.session.as_mut() else {
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
                .find(|r| r.kind == RequestKind::TransportProbe)
                .is_some()
        {
            return;
        }
        tracing::debug!(?cheaper, "trying cheaper transports again");
        let txid: u64 = rng.gen();
        let interval = self.config.retransmit;
        self.requests.insert(
            txid,
            OutRequest {
                kind: RequestKind::TransportProbe,
                message: self.registration(cheaper[0]),
                target: None,
                sent: now,
                next_retransmit: now + interval,
                interval,
                deadline: now + self.config.transport_fallback * 2,
                before_move: false,
                transports: cheaper.clone(),
                race_at: None,
            },
        );
        for t in cheaper {
            self.seal_to_nms_over(txid, self.registration(t), t, out);
        }
    }

    /// A Direction Request for `target`.
    pub fn send_direction(
        &mut self,
        now: Instant,
        target: Fqdn,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) {
        let message = Message::DirectionRequest {
            target: target.to_string(),
        };
        self.send_direction_message(now, message, Some(target), rng, out);
    }

    /// A Direction Request for the node holding `vip`.
    pub fn send_direction_by_vip(
        &mut self,
        now: Instant,
        vip: IpAddr,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) {
        let message = Message::DirectionRequestByVip { vip };
        self.send_direction_message(now, message, None, rng, out);
    }

    fn send_direction_message(
        &mut self,
        now: Instant,
        message: Message,
        target: Option<Fqdn>,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) {
        let timeout = self.config.direction_timeout;
        let kind = RequestKind::Direction;
        self.route_selections.started += 1;
        self.send_request(now, kind, message, target, timeout, rng, out);
    }

    /// Whether a Direction Request for the holder of `vip` is in flight.
    pub fn vip_pending(&self, vip: IpAddr) -> bool {
        self.requests
            .find(|r| by_vip(&r.message) == Some(vip))
            .is_some()
    }

    /// An Information Request for the general nodes from `offset` on.
    pub fn send_information(
        &mut self,
        now: Instant,
        offset: u16,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) {
        if !self.registered() {
            return;
        }
        let timeout = self.config.direction_timeout;
        self.send_request(
            now,
            RequestKind::Information,
            Message::InformationRequest { offset },
            None,
            timeout,
            rng,
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &mut self,
        now: Instant,
        kind: RequestKind,
        message: Message,
        target: Option<Fqdn>,
        timeout: Duration,
        rng: &mut StdRng,
        out: &mut Outbox,
    ) -> u64 {
        let txid: u64 = rng.gen();
        let interval = self.config.retransmit;
        let transport = self.transport;
        self.requests.insert(
            txid,
            OutRequest {
                kind,
                message: message.clone(),
                target,
                sent: now,
                next_retransmit: now + interval,
                interval,
                deadline: now + timeout,
                before_move: false,
                transports: vec![transport],
                race_at: None,
            },
        );
        self.seal_to_nms_over(txid, message, transport, out);
        txid
    }

    /// Signaling over the current transport.
    pub fn seal_to_nms(&mut self, txid: u64, message: Message, out: &mut Outbox) {
        self.seal_to_nms_over(txid, message, self.transport, out);
    }

    fn seal_to_nms_over(
        &mut self,
        txid: u64,
        message: Message,
        transport: Transport,
        out: &mut Outbox,
    ) {
        let Some(sig) = self.session.as_mut() else {
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
        out.transmits.push_back(leg.transmit(payload));
    }

    fn take_request(&mut self, txid: u64, kind: RequestKind) -> Option<OutRequest> {
        match self.requests.get(txid) {
            Some(r) if r.kind == kind => self.requests.remove(txid),
            _ => None,
        }
    }

    /// Whether a Direction Request for `target` is in flight.
    pub fn direction_pending(&self, target: &str) -> bool {
        self.requests
            .find(|r| r.target.as_deref() == Some(target))
            .is_some()
    }

    /// Forgets our own Direction Requests for `target`: the route the NMS
    /// directed us to (as responder) supersedes them.
    pub fn cancel_directions(&mut self, target: &str) {
        self.requests
            .retain(|r| !(r.kind == RequestKind::Direction && r.target.as_deref() == Some(target)));
    }

    /// Forgets our own Direction Requests by VIP for `vip`: a route to its
    /// holder is set up.
    pub fn cancel_vip_directions(&mut self, vip: IpAddr) {
        self.requests
            .retain(|r| !(r.kind == RequestKind::Direction && by_vip(&r.message) == Some(vip)));
    }

    /// A move: routes being selected now are chosen from our old
    /// addresses, the NMS is reached over a family we still have, and the
    /// new network may let cheaper transports out.
    pub fn on_move(&mut self, now: Instant) {
        self.pick_nms_family();
        let txids: Vec<u64> = self.requests.map.keys().copied().collect();
        for txid in txids {
            self.requests.update(txid, |r| {
                r.before_move |= r.kind == RequestKind::Direction;
            });
        }
        let fallback = self.config.transport_fallback;
        if let Some(sig) = self.session.as_mut() {
            sig.next_reprobe = now + fallback;
        }
    }

    /// Another instance of the cloud than the NMS in use, of an IP
    /// version the host has, not left since an NMS last answered.
    fn other_instance(&self) -> Option<SocketAddr> {
        let sig = self.session.as_ref()?;
        let has = |v6: bool| self.local_addrs.iter().any(|a| a.is_ipv6() == v6);
        sig.login
            .instances
            .iter()
            .find(|a| {
                a.ip() != sig.login.nms.ip() && has(a.is_ipv6()) && !self.left_instances.contains(a)
            })
            .copied()
    }

    /// Talks to the NMS over an IP version the host still has.
    fn pick_nms_family(&mut self) {
        let local = &self.local_addrs;
        let has = |v6: bool| local.iter().any(|a| a.is_ipv6() == v6);
        let Some(sig) = self.session.as_mut() else {
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

    /// A signaling packet from `from`.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: Leg,
        packet: &[u8],
        rng: &mut StdRng,
        out: &mut Outbox,
        counters: &mut NodeCounters,
    ) -> Option<SignalingEvent> {
        let Some(sig) = self.session.as_mut() else {
            counters.signal_rx_bad += 1;
            return None;
        };
        if !sig.is_nms(from) {
            counters.signal_rx_bad += 1;
            return None;
        }
        let env = match sig.cipher.open(packet) {
            Ok(env) => env,
            Err(e) => {
                counters.signal_rx_bad += 1;
                tracing::debug!(%from, error = %e, "dropping signaling packet");
                return None;
            }
        };
        tracing::trace!(msg = env.message.name(), txid = env.txid, "signaling in");
        if std::mem::take(&mut sig.away) | std::mem::take(&mut self.lost) {
            tracing::info!("the NMS answers again");
        }
        self.left_instances.clear();
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
                    if self.registered() && from.transport != self.transport {
                        tracing::info!(late = %from.transport, using = %self.transport, "late raced registration; registering again");
                        self.send_registration(now, rng, out);
                    }
                    return None;
                };
                if request.transports.len() > 1 || request.kind == RequestKind::TransportProbe {
                    // A race: the first transport to answer wins. The NMS
                    // may have taken another copy last, so register once
                    // more over the winner alone.
                    tracing::info!(transport = %from.transport, "NMS answered; signaling over it");
                    self.transport = from.transport;
                    self.send_registration(now, rng, out);
                    if let Some(txid) = self.requests.find(|r| r.kind == RequestKind::Registration)
                    {
                        self.requests.update(txid, |r| r.race_at = None);
                    }
                    return None;
                }
                let keepalive = Duration::from_secs(resp.keepalive_secs.max(1) as u64);
                let reprobe = self.config.transport_reprobe;
                let sig = self.session.as_mut()?;
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
                    sig.next_reprobe = now + reprobe;
                }
                let probing = sig.probe.is_some();
                // Compared with the last registration of any session: a
                // transport that broke leads to a new Login first.
                let before = self.last_registered_over.replace(from.transport);
                let transport_change = before
                    .is_some_and(|b| b != from.transport)
                    .then_some((before, from.transport));
                if probing {
                    let timeout = self.config.registration_timeout;
                    self.send_request(
                        now,
                        RequestKind::NatProbe,
                        Message::NatProbe,
                        None,
                        timeout,
                        rng,
                        out,
                    );
                }
                tracing::info!(fqdn = %resp.fqdn, vip4 = %resp.vip4, vip6 = %resp.vip6, observed = %resp.observed, transport = %from.transport, "Registration done");
                Some(SignalingEvent::Registered {
                    fqdn: resp.fqdn,
                    vip4: resp.vip4,
                    vip6: resp.vip6,
                    observed: resp.observed,
                    transport_change,
                    probing,
                })
            }
            Message::KeepAliveAck { observed } => {
                self.take_request(env.txid, RequestKind::KeepAlive)?;
                let moved = self.session.as_mut().is_some_and(|sig| {
                    sig.missed_keepalives = 0;
                    sig.observed.is_some_and(|o| o != observed)
                });
                if moved {
                    // Our NAT mapped us anew: register again, so the NMS
                    // learns our network (and probes it) afresh.
                    tracing::info!(%observed, "observed address changed; registering again");
                    self.send_registration(now, rng, out);
                }
                None
            }
            Message::NatProbeAck { observed } => {
                self.take_request(env.txid, RequestKind::NatProbe)?;
                if let Some(sig) = self.session.as_mut() {
                    sig.observed_probe = Some(observed);
                }
                tracing::info!(nat = self.nat().as_str(), "NAT Probe answered");
                Some(SignalingEvent::NatKnown)
            }
            Message::ReRegister => {
                tracing::info!("NMS asked for registration again");
                if let Some(sig) = self.session.as_mut() {
                    sig.registered = false;
                }
                self.send_registration(now, rng, out);
                None
            }
            Message::RouteDirectionToResponder(direction) => {
                Some(SignalingEvent::DirectionToResponder {
                    txid: env.txid,
                    direction,
                })
            }
            Message::RouteDirectionToInitiator(direction) => {
                let req = self.take_request(env.txid, RequestKind::Direction)?;
                self.route_selections
                    .answered
                    .observe(now.saturating_duration_since(req.sent));
                let vip = by_vip(&req.message);
                let target = match (req.target, vip) {
                    (Some(t), _) => t,
                    (None, Some(_)) => resolver::normalize(&direction.peer.fqdn),
                    (None, None) => Fqdn::default(),
                };
                Some(SignalingEvent::DirectionToInitiator {
                    target,
                    vip,
                    before_move: req.before_move,
                    direction,
                })
            }
            Message::InformationResponse(page) => {
                self.take_request(env.txid, RequestKind::Information)?;
                Some(SignalingEvent::GeneralNodes(page))
            }
            Message::PeerRevoked { fqdn, cert_serial } => {
                // Acknowledged every time (a lost ack brings a copy); acted
                // on every time too, which changes nothing the second time.
                self.seal_to_nms_over(env.txid, Message::NoticeAck, from.transport, out);
                Some(SignalingEvent::PeerRevoked {
                    fqdn: Fqdn::new(&fqdn),
                    cert_serial,
                })
            }
            Message::PathChallenge => {
                // Echoed at once, whatever our idea of our address: the NMS
                // checks where the echo comes from (§4.7). Twice: a lost echo
                // would cost the NMS a challenge of its small budget.
                for _ in 0..2 {
                    self.seal_to_nms_over(env.txid, Message::PathResponse, from.transport, out);
                }
                None
            }
            Message::RouteUpdate { fqdn, filter } => {
                // Acknowledged every time, applied every time (the same
                // filter twice changes nothing).
                self.seal_to_nms_over(env.txid, Message::NoticeAck, from.transport, out);
                Some(SignalingEvent::RouteUpdate {
                    fqdn: Fqdn::new(&fqdn),
                    filter,
                })
            }
            Message::DirectionError { code, message } => {
                let req = self.take_request(env.txid, RequestKind::Direction)?;
                self.route_selections
                    .answered
                    .observe(now.saturating_duration_since(req.sent));
                let vip = by_vip(&req.message);
                let target = match vip {
                    Some(vip) => vip.to_string(),
                    None => req.target.clone().unwrap_or_default().to_string(),
                };
                tracing::info!(%target, ?code, %message, "route selection failed");
                let rcode = match code {
                    DirectionErrorCode::NotFound => ResponseCode::NXDomain,
                    DirectionErrorCode::Denied => {
                        counters.directions_denied += 1;
                        tracing::warn!(%target, "the access policy refuses a route to {target}");
                        ResponseCode::Refused
                    }
                    _ => ResponseCode::ServFail,
                };
                Some(match vip {
                    Some(vip) => SignalingEvent::VipFailed { vip, rcode },
                    None => SignalingEvent::DirectionFailed {
                        target: req.target.unwrap_or_default(),
                        rcode,
                    },
                })
            }
            other => {
                counters.signal_rx_bad += 1;
                tracing::debug!(msg = other.name(), "unexpected message from the NMS");
                None
            }
        }
    }

    /// Retransmits and races what is due; returns the requests whose
    /// deadline passed, for [`Signaling::expire`] one by one.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) -> Vec<u64> {
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        let mut race = Vec::new();
        for txid in self.requests.timers.due(now) {
            let Some(r) = self.requests.get(txid) else {
                continue;
            };
            if now >= r.deadline {
                expired.push(txid);
                continue;
            }
            if r.race_at.is_some_and(|t| now >= t) {
                race.push(txid);
            }
            if now >= r.next_retransmit {
                let (message, transports) = self
                    .requests
                    .update(txid, |r| {
                        r.interval = (r.interval * 2).min(Duration::from_secs(2));
                        r.next_retransmit = now + r.interval;
                        (r.message.clone(), r.transports.clone())
                    })
                    .unwrap_or((Message::KeepAlive, Vec::new()));
                resend.push((txid, message, transports));
            }
        }
        for (txid, message, transports) in resend {
            for t in transports {
                // A Registration names the transport it travels by.
                let message = match &message {
                    Message::RegistrationRequest(_) => self.registration(t),
                    m => m.clone(),
                };
                self.seal_to_nms_over(txid, message, t, out);
            }
        }
        for txid in race {
            self.race_transports(now, txid, out);
        }
        expired
    }

    /// A request whose deadline passed. `Err(())`: the session is gone
    /// (the NMS stopped answering), and the rest of the expired requests
    /// with it.
    pub fn expire(&mut self, txid: u64, out: &mut Outbox) -> Result<Option<SignalingEvent>, ()> {
        let Some(r) = self.requests.remove(txid) else {
            return Ok(None);
        };
        match r.kind {
            RequestKind::Registration => {
                tracing::warn!("NMS did not answer the Registration");
                self.session = None;
                self.lost = true;
                self.request_login(LoginReason::RegistrationTimedOut, out);
            }
            RequestKind::KeepAlive => {
                let mut first = false;
                let missed = self.session.as_mut().map(|s| {
                    s.missed_keepalives += 1;
                    // Once one went unanswered, the next goes at once and
                    // each after it as its answer wait ends (see
                    // `keepalive_timer`): a dead NMS is given up after
                    // `max_missed_keepalives` answer waits, not intervals.
                    s.next_keepalive = s.next_keepalive.min(r.deadline);
                    if !s.away {
                        tracing::warn!(
                            "the NMS does not answer: overlay names it must resolve fail at once"
                        );
                        first = true;
                    }
                    s.away = true;
                    s.missed_keepalives
                });
                self.try_others |= first;
                if missed.unwrap_or(0) >= self.config.max_missed_keepalives {
                    if let Some(next) = self.other_instance() {
                        // The session lives in the cloud's database: another
                        // instance takes its Registration as its own.
                        let from = self.session.as_ref().map(|s| s.login.nms);
                        tracing::warn!(?from, to = %next, "NMS stopped answering keepalives; registering the session at another instance");
                        if let Some(s) = self.session.as_mut() {
                            self.left_instances.push(s.login.nms);
                            s.login.nms = next;
                            s.probe = None;
                            s.registered = false;
                            s.missed_keepalives = 0;
                        }
                        self.requests.clear();
                        self.register_due = true;
                        return Err(());
                    }
                    tracing::warn!("NMS stopped answering keepalives; logging in again");
                    self.session = None;
                    self.lost = true;
                    self.requests.clear();
                    self.request_login(LoginReason::NmsUnreachable, out);
                    return Err(());
                }
            }
            RequestKind::Information => {
                tracing::debug!("Information Request unanswered: the next poll asks again");
            }
            RequestKind::TransportProbe => {
                tracing::debug!(transports = ?r.transports, "cheaper transports still blocked");
            }
            RequestKind::NatProbe => {
                tracing::info!("NMS did not answer the NAT Probe: NAT behaviour stays unknown");
                return Ok(Some(SignalingEvent::NatKnown));
            }
            RequestKind::Direction => {
                self.route_selections.timed_out += 1;
                let rcode = ResponseCode::ServFail;
                if let Some(vip) = by_vip(&r.message) {
                    tracing::warn!(%vip, "Direction Request by VIP timed out");
                    return Ok(Some(SignalingEvent::VipFailed { vip, rcode }));
                }
                let target = r.target.unwrap_or_default();
                tracing::warn!(%target, "Direction Request timed out");
                return Ok(Some(SignalingEvent::DirectionFailed { target, rcode }));
            }
        }
        Ok(None)
    }

    /// The NMS stopped answering over the transport signaling uses: the
    /// network may have just begun to block it (a firewall's new policy, a
    /// captive network). A Registration over every other transport the
    /// cloud offers finds out within a round trip; the first answer moves
    /// signaling there (as a re-probe does), and the cheaper one is tried
    /// again later. If the NMS itself is away, nothing answers and the
    /// missed KeepAlives lead to a new Login as before.
    fn probe_other_transports(&mut self, now: Instant, rng: &mut StdRng, out: &mut Outbox) {
        let current = self.transport;
        let Some(sig) = self.session.as_ref().filter(|s| s.registered) else {
            return;
        };
        let others: Vec<Transport> = Transport::ALL
            .into_iter()
            .filter(|t| *t != current && sig.nms_leg(*t).is_some())
            .collect();
        let probing = self
            .requests
            .find(|r| r.kind == RequestKind::TransportProbe)
            .is_some();
        if others.is_empty() || probing || self.config.transport.is_some() {
            return;
        }
        tracing::info!(
            ?others,
            "NMS silent over {current}; trying the other transports"
        );
        let txid: u64 = rng.gen();
        let interval = self.config.retransmit;
        // Cheapest first, the next `RACE_STAGGER` later (as a
        // Registration's race): QUIC wins wherever both get out.
        let first = others[0];
        self.requests.insert(
            txid,
            OutRequest {
                kind: RequestKind::TransportProbe,
                message: self.registration(first),
                target: None,
                sent: now,
                next_retransmit: now + interval,
                interval,
                deadline: now + self.config.registration_timeout,
                before_move: false,
                transports: vec![current, first],
                race_at: (others.len() > 1).then_some(now + RACE_STAGGER),
            },
        );
        self.seal_to_nms_over(txid, self.registration(first), first, out);
    }

    /// The re-probe of cheaper transports and the KeepAlive, when due;
    /// true when a KeepAlive went out.
    pub fn keepalive_timer(&mut self, now: Instant, rng: &mut StdRng, out: &mut Outbox) -> bool {
        if self.offline() {
            self.try_others = false;
            return false;
        }
        if std::mem::take(&mut self.register_due) {
            self.send_registration(now, rng, out);
        }
        if std::mem::take(&mut self.try_others) {
            self.probe_other_transports(now, rng, out);
        }
        if self.reprobes()
            && self
                .session
                .as_ref()
                .is_some_and(|s| s.registered && now >= s.next_reprobe)
        {
            self.reprobe_transports(now, rng, out);
        }
        let Some(sig) = self
            .session
            .as_mut()
            .filter(|s| s.registered && now >= s.next_keepalive)
        else {
            return false;
        };
        // A keepalive may wait for its answer at most until the next one.
        let timeout = sig.login.keepalive.min(Duration::from_secs(5));
        // While the NMS is away, one follows another as each answer wait
        // ends.
        sig.next_keepalive = now
            + if sig.away {
                timeout
            } else {
                sig.login.keepalive
            };
        self.send_keepalive(now, timeout, rng, out);
        true
    }

    /// A message the NMS does not answer (a Tunnel Report), once, over
    /// the current transport; nothing while unregistered.
    pub fn send_unanswered(&mut self, message: Message, rng: &mut StdRng, out: &mut Outbox) {
        if self.registered() {
            let txid: u64 = rng.gen();
            self.seal_to_nms(txid, message, out);
        }
    }
}

/// The VIP a Direction Request by VIP asks for.
fn by_vip(message: &Message) -> Option<IpAddr> {
    match message {
        Message::DirectionRequestByVip { vip } => Some(*vip),
        _ => None,
    }
}

#[cfg(test)]
#[path = "signaling_tests.rs"]
pub(crate) mod tests;
