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
//! host's addresses change, [`Node::handle_path_seen`] and
//! [`Node::handle_tunnel_message`] for what the data plane opened, and
//! [`Node::handle_timeout`]. After each input, drain [`Node::poll_transmit`]
//! and [`Node::poll_event`], then sleep until [`Node::poll_timeout`]. The
//! node never reads a clock, a socket or the OS's randomness.
//!
//! # Parts
//!
//! The node is its parts and this front, the only place that passes events
//! between them; each part keeps its own state and timers:
//!
//! - [`signaling`]: the NMS client (session, Registration and the race of
//!   transports, NAT Probe, KeepAlive, requests and their retransmission);
//!   what the NMS says about routes comes out as a `SignalingEvent`.
//! - [`peers`]: the peer table and its indexes (name, VIP, local index,
//!   route) and the peers' timer table.
//! - [`routes`]: route directions turned into peers.
//! - [`tunnel`]: the handshake per peer.
//! - [`path`]: punching, relay binds, keepalives, probes, path switches,
//!   the liveness check and `cyphonic ping`; [`relay`]: one end of a relay
//!   session.
//! - [`dns`], [`ping`], [`mobility`], [`status`]: the waiting DNS queries,
//!   the pings in flight, the record of moves, and the status snapshot.
//!
//! Packets and events of every part go to one [`Outbox`] in the order the
//! parts produce them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use cyphonic_pki::Verifier;
use cyphonic_proto::handshake::{self, LocalIdentity};
use cyphonic_proto::relay as relay_wire;
use cyphonic_proto::signal::TYPE_SIGNALING;
use cyphonic_proto::{Fqdn, RouteId, SessionId};
use hickory_proto::op::{Message as DnsMessage, ResponseCode};
use rand::{rngs::StdRng, SeedableRng};

use crate::resolver;
use cyphonic_proto::nat::NatKind;

mod dns;
mod general;
mod latency;
mod mobility;
mod path;
mod peers;
mod ping;
pub(crate) mod pmtu;
mod relay;
mod report;
mod requests;
mod routes;
mod session;
mod signaling;
mod spray;
mod status;
mod timers;
mod tunnel;
mod types;
mod vips;

pub use routes::DirectionRefused;
pub use signaling::RACE_STAGGER;
pub use status::{
    BucketStatus, CloudStatus, MobilityStatus, MoveStatus, NodeStatus, PeerStatus,
    RouteSelectionStatus,
};
pub use types::*;

use dns::DnsWaiters;
use mobility::{describe_change, Mobility};
use peers::Peers;
use ping::Pings;
use signaling::{Signaling, SignalingEvent};
use tunnel::{EarlyRequests, PeerState};
use vips::VipWaits;

/// What the parts produce, in order: packets to send and events for the
/// shell.
#[derive(Default)]
pub struct Outbox {
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<NodeEvent>,
}

/// Peers of a previous run whose routes are asked for after a restart.
pub const MAX_RESUMED: usize = 64;
/// Revoked certificate serials a node remembers.
pub const MAX_REVOKED: usize = 1024;

/// The node's protocol state machine.
pub struct Node {
    config: NodeConfig,
    rng: StdRng,
    counter_base: u64,
    clock_origin: (Instant, SystemTime),
    identity: LocalIdentity,
    verifier: Verifier,
    /// Cooperating domains' roots, each for names under its domain only
    /// (from Login, `docs/protocol.md` §5.19).
    linked_roots: Vec<(String, Verifier)>,
    signaling: Signaling,
    peers: Peers,
    dns: DnsWaiters,
    /// Packets to VIPs no peer holds, waiting for their route.
    vips: VipWaits,
    /// The port mapping the daemon keeps on the router, if granted.
    port_mapping: Option<PortMapping>,
    pings: Pings,
    /// Spare ports for birthday punching.
    spares: spray::Spares,
    early: EarlyRequests,
    mobility: Mobility,
    /// Set by a move: select every peer's route again once registered.
    reroute_when_registered: bool,
    /// Peers of the node's previous run, whose routes are asked for once
    /// registered ([`Node::resume_peers`]).
    resume: Vec<Fqdn>,
    /// Certificates the NMS said left the overlay (newest last): no route
    /// naming one is taken.
    revoked: VecDeque<u64>,
    /// Why the AS refused this node's Login for good (its certificate
    /// revoked, its device disabled), when it did.
    refused: Option<String>,
    /// The host's addresses were reported at least once: any later change
    /// is a move, also one from no address at all (a link that went down
    /// and came back on another network).
    addrs_reported: bool,
    /// An adapter's list of general nodes.
    general: Option<general::GeneralNodesFetch>,
    /// When the last tunnel report went to the NMS.
    reported_at: Option<Instant>,
    /// The last report listed no tunnel (a node that never had one counts
    /// as having said so).
    reported_empty: bool,
    out: Outbox,
    counters: NodeCounters,
}

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
        let signaling = Signaling::new(config.clone(), identity.static_keys.public);
        let general = config
            .general_nodes_poll
            .map(|poll| general::GeneralNodesFetch::new(poll, now));
        Self {
            config,
            rng: StdRng::from_seed(seed),
            counter_base,
            clock_origin: (now, wall),
            identity,
            verifier,
            linked_roots: Vec::new(),
            signaling,
            peers: Peers::default(),
            dns: DnsWaiters::default(),
            vips: VipWaits::default(),
            port_mapping: None,
            pings: Pings::default(),
            spares: Default::default(),
            early: EarlyRequests::default(),
            mobility: Mobility::default(),
            reroute_when_registered: false,
            resume: Vec::new(),
            revoked: VecDeque::new(),
            refused: None,
            addrs_reported: false,
            general,
            reported_at: None,
            reported_empty: true,
            out: Outbox::default(),
            counters: NodeCounters::default(),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The host's addresses as last reported by `handle_local_addrs`.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.signaling.local_addrs()
    }

    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    /// The first input: asks the shell to log in.
    pub fn start(&mut self) {
        self.signaling
            .request_login(LoginReason::Starting, &mut self.out);
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.out.events.pop_front()
    }

    /// When to call [`Node::handle_timeout`], and why: the earliest of the
    /// signaling part's timers and the peers' timer table.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let general = self
            .general
            .as_ref()
            .filter(|_| self.signaling.registered())
            .map(|g| (g.next_poll(), TimerReason::KeepAlive));
        let dns = if self.signaling.cloud_away() {
            self.dns.next_wait(self.config.retransmit)
        } else {
            self.dns.next_check(self.config.retransmit)
        }
        .map(|t| (t, TimerReason::SignalRetransmit));
        let vips = self
            .vips
            .next_expiry(self.vip_wait())
            .map(|t| (t, TimerReason::SignalRetransmit));
        let spares = self.spares_deadline().map(|t| (t, TimerReason::Path));
        [
            self.signaling.poll_timeout(),
            self.peers.poll_timeout(),
            general,
            dns,
            vips,
            spares,
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(t, _)| *t)
    }

    fn wall(&self, now: Instant) -> SystemTime {
        self.clock_origin.1 + now.saturating_duration_since(self.clock_origin.0)
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
        let first = !std::mem::replace(&mut self.addrs_reported, true);
        if addrs == self.signaling.local_addrs() {
            return;
        }
        let before = self.signaling.set_local_addrs(addrs);
        if !self.signaling.logged_in() || first {
            return;
        }
        let change = describe_change(&before, self.signaling.local_addrs());
        self.on_move(now, change);
    }

    /// The default route changed while the addresses stayed (another
    /// gateway, another uplink with the same address): the path to every
    /// peer may have changed, so it counts as a move.
    pub fn handle_route_change(&mut self, now: Instant, description: String) {
        if !self.signaling.logged_in() || self.signaling.local_addrs().is_empty() {
            return;
        }
        self.on_move(now, description);
    }

    fn on_move(&mut self, now: Instant, change: String) {
        tracing::info!(%change, "network move");
        self.signaling.on_move(now);
        let wall = self.wall(now);
        self.mobility.record(now, wall, change);
        // Relay binds go out at once from the new address, so a relayed
        // tunnel does not wait for the next scheduled bind.
        self.peers.for_each_mut(|peer| {
            if let Some(r) = peer.relay.as_mut() {
                r.next_bind = now;
            }
        });
        let local = self.signaling.local_addrs().to_vec();
        let has_family = |a: SocketAddr| local.iter().any(|l| l.is_ipv6() == a.is_ipv6());
        let names: Vec<Fqdn> = self
            .peers
            .values()
            .filter(|p| !p.failed())
            .map(|p| p.fqdn.clone())
            .collect();
        for fqdn in &names {
            let Some(mut peer) = self.peers.get_mut(fqdn) else {
                continue;
            };
            let tunnel = peer.tunnel.clone();
            let lost_path = tunnel
                .as_ref()
                .is_some_and(|t| !has_family(t.path.address()));
            peer.reroute = true;
            let mut resumed = Vec::new();
            if lost_path && !peer.held {
                // Nothing can leave on this path now: hold the
                // application's packets (bounded) rather than drop them.
                peer.held = true;
                self.out.events.push_back(NodeEvent::TunnelHold {
                    fqdn: fqdn.to_string(),
                });
            } else if !lost_path && peer.held && tunnel.as_ref().is_some_and(|t| !t.send.retired())
            {
                // The path's IP version is back (a link that went down came
                // up on another network): send on it again at once, as
                // after an instant move, while the route is selected anew.
                peer.held = false;
                if peer.confirm_by.is_none() {
                    resumed = peer.queue.drain(..).collect();
                }
                if let Some(t) = tunnel.clone() {
                    self.out.events.push_back(NodeEvent::TunnelUp(t));
                }
                self.mobility.tunnel_back(fqdn, now);
            }
            drop(peer);
            if let (Some(t), false) = (tunnel, lost_path) {
                self.seal_to(&t, t.path, &[]);
                for packet in resumed {
                    self.seal_to(&t, t.path, &packet);
                }
            }
        }
        self.reroute_when_registered = true;
        self.signaling
            .send_registration(now, &mut self.rng, &mut self.out);
    }

    /// After a move, once the NMS has our new registration (and NAT
    /// probe), asks for every peer's route again.
    fn reroute_peers(&mut self, now: Instant) {
        // Queries still waiting whose Direction Request went with an
        // earlier session (dropped when the NMS stopped answering).
        let orphans: Vec<Fqdn> = self
            .dns
            .names()
            .filter(|n| !self.signaling.direction_pending(n))
            .cloned()
            .collect();
        for name in orphans {
            tracing::info!(target = %name, "Direction Request again, with the new session");
            self.signaling
                .send_direction(now, name, &mut self.rng, &mut self.out);
        }
        let orphans: Vec<std::net::IpAddr> = self
            .vips
            .vips()
            .filter(|v| !self.signaling.vip_pending(*v))
            .collect();
        for vip in orphans {
            tracing::info!(%vip, "Direction Request by VIP again, with the new session");
            self.signaling
                .send_direction_by_vip(now, vip, &mut self.rng, &mut self.out);
        }
        let own = self.signaling.login().map(|l| resolver::normalize(&l.fqdn));
        for fqdn in std::mem::take(&mut self.resume) {
            let fresh = !self.peers.contains(&fqdn) && !self.signaling.direction_pending(&fqdn);
            if fresh && Some(&fqdn) != own.as_ref() {
                tracing::info!(peer = %fqdn, "Direction Request for a peer of the previous run");
                self.signaling
                    .send_direction(now, fqdn, &mut self.rng, &mut self.out);
            }
        }
        if !std::mem::take(&mut self.reroute_when_registered) {
            return;
        }
        let mut names = Vec::new();
        self.peers.for_each_mut(|p| {
            if std::mem::take(&mut p.reroute) {
                names.push(p.fqdn.clone());
            }
        });
        for fqdn in names {
            tracing::info!(peer = %fqdn, "Direction Request after the move");
            self.signaling
                .send_direction(now, fqdn, &mut self.rng, &mut self.out);
        }
    }

    /// The NMS says the node `fqdn` with certificate `cert_serial` left
    /// the overlay: its tunnel closes now, and no route naming that
    /// certificate is taken again.
    fn on_peer_revoked(&mut self, fqdn: &str, cert_serial: u64) {
        let own = self.signaling.login().map(|l| resolver::normalize(&l.fqdn));
        if own.is_some_and(|o| *o == *fqdn) {
            // Us: the cloud withdrew this node.
            self.handle_login_refused(
                "the cloud withdrew this node (its certificate was revoked or its device disabled)"
                    .into(),
            );
            return;
        }
        if !self.revoked.contains(&cert_serial) {
            if self.revoked.len() >= MAX_REVOKED {
                self.revoked.pop_front();
            }
            self.revoked.push_back(cert_serial);
        }
        let ours = self
            .peers
            .get(fqdn)
            .is_some_and(|p| p.direction.peer.cert_serial == cert_serial);
        if !ours {
            return;
        }
        tracing::warn!(peer = %fqdn, serial = format_args!("{cert_serial:#x}"), "peer left the overlay (revoked or disabled): closing its tunnel");
        self.counters.peers_revoked += 1;
        self.drop_peer(fqdn);
    }

    /// The NMS applied a new access policy to the route with `fqdn`: its
    /// filter changes at once in the data plane (the tunnels share it), or
    /// the route is withdrawn and its tunnel closes.
    fn on_route_update(&mut self, fqdn: &str, filter: cyphonic_proto::policy::RouteFilter) {
        let Some(peer) = self.peers.get(fqdn) else {
            return;
        };
        if filter.is_closed() {
            tracing::warn!(peer = %fqdn, "the access policy withdrew the route: closing its tunnel");
            self.counters.routes_withdrawn += 1;
            self.drop_peer(fqdn);
            return;
        }
        tracing::info!(peer = %fqdn, %filter, "the access policy changed the route's filter");
        peer.filter.set(Some(&filter));
        self.counters.route_updates += 1;
    }

    /// Removes a peer and its tunnel from the data plane.
    fn drop_peer(&mut self, fqdn: &str) {
        if let Some(gone) = self.peers.remove(fqdn) {
            let index = gone.tunnel.as_ref().map(|t| t.recv.local_index());
            if let Some(t) = &gone.tunnel {
                t.send.retire();
                t.recv.retire();
            }
            if let Some(local_index) = index.or(Some(gone.local_index)) {
                self.out.events.push_back(NodeEvent::TunnelDown {
                    fqdn: gone.fqdn.to_string(),
                    local_index,
                });
            }
        }
    }

    /// The AS refused this node's Login for good: its certificate was
    /// revoked or its device disabled or removed (`reason` says which).
    /// The node is no longer part of the overlay: every tunnel closes. It
    /// keeps asking (an operator may enable the device again).
    pub fn handle_login_refused(&mut self, reason: String) {
        tracing::error!(%reason, "the cloud refused this node: closing every tunnel");
        let names: Vec<String> = self.peers.values().map(|p| p.fqdn.to_string()).collect();
        for fqdn in names {
            self.drop_peer(&fqdn);
        }
        self.refused = Some(reason);
        self.signaling.handle_login_failed();
    }

    /// Why the AS refused this node for good, if it did (since its last
    /// successful Login).
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// The peers this node had tunnels with when it last ran (at most
    /// [`MAX_RESUMED`]): once registered, it asks for their routes. Their
    /// tunnels still hold the keys of our previous run, which nothing
    /// opens now; a new route replaces them at once, instead of after
    /// their liveness checks.
    pub fn resume_peers(&mut self, names: impl IntoIterator<Item = String>) {
        let own = self.signaling.login().map(|l| resolver::normalize(&l.fqdn));
        self.resume = names
            .into_iter()
            .map(|n| resolver::normalize(&n))
            .filter(|n| Some(n) != own.as_ref() && !n.is_empty())
            .take(MAX_RESUMED)
            .collect();
        self.resume.sort();
        self.resume.dedup();
    }

    /// The cooperating domains' roots from the latest Login: a peer
    /// whose name is under one of those domains is checked against its
    /// root instead of ours (§5.19).
    pub fn set_linked_roots(&mut self, roots: Vec<(String, Verifier)>) {
        self.linked_roots = roots;
    }

    /// The node certificate was renewed: later handshakes (new tunnels and
    /// rekeys, as initiator and responder) present `identity`. Its static
    /// key must be the one the NMS has (the shell binds it to the new
    /// certificate again). Call it with [`Node::handle_login`] of the first
    /// session the new certificate opened: peers check our certificate's
    /// serial against the one in their route direction, which the NMS took
    /// from our session, so every peer's route is selected again once the
    /// new session is registered; tunnels keep their keys until then.
    pub fn set_identity(&mut self, identity: LocalIdentity) {
        // Invariant (the shell's): the static key stays; the NMS hands it
        // to peers from our Registration.
        debug_assert_eq!(
            identity.static_keys.public,
            self.identity.static_keys.public
        );
        self.identity = identity;
        self.peers.for_each_mut(|peer| {
            if !peer.failed() {
                peer.reroute = true;
            }
        });
        self.reroute_when_registered = true;
    }

    /// The peers with a tunnel now, for [`Node::resume_peers`] after a
    /// restart.
    pub fn tunnel_peers(&self) -> Vec<String> {
        self.peers
            .values()
            .filter(|p| p.tunnel.is_some())
            .map(|p| p.fqdn.to_string())
            .take(MAX_RESUMED)
            .collect()
    }

    /// Login succeeded: start (or restart) signaling with the NMS.
    pub fn handle_login(&mut self, now: Instant, login: Login) {
        self.refused = None;
        let counter_base = self.counter_base_now(now);
        self.signaling
            .handle_login(now, login, counter_base, &mut self.rng, &mut self.out);
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
        self.signaling.handle_login_failed();
    }

    /// A datagram that is not a data packet arrived on the tunnel port.
    /// Relay Data wraps a packet from the peer; the TRS's address and the
    /// relay session are its path.
    pub fn handle_datagram(&mut self, now: Instant, from: impl Into<Leg>, packet: &[u8]) {
        let from: Leg = from.into();
        let (path, inner) = match packet.first() {
            Some(&relay_wire::TYPE_RELAY_DATA) => match relay_wire::parse_data(packet) {
                Ok(relay_id) => (
                    Path::Relay {
                        server: from,
                        relay_id,
                    },
                    &packet[relay_wire::RELAY_HEADER_LEN..],
                ),
                Err(_) => {
                    self.counters.relay_rx_bad += 1;
                    return;
                }
            },
            _ => (Path::Direct(from), packet),
        };
        match (inner.first(), path) {
            (Some(&TYPE_SIGNALING), Path::Direct(_)) => {
                let event = self.signaling.handle_packet(
                    now,
                    from,
                    packet,
                    &mut self.rng,
                    &mut self.out,
                    &mut self.counters,
                );
                if let Some(event) = event {
                    self.on_signaling_event(now, event);
                }
            }
            (Some(&handshake::TYPE_TUNNEL_REQUEST), _) => self.on_tunnel_request(now, path, inner),
            (Some(&handshake::TYPE_TUNNEL_RESPONSE), _) => {
                self.on_tunnel_response(now, path, inner)
            }
            (Some(&relay_wire::TYPE_RELAY_BIND_ACK), Path::Direct(_)) => {
                self.on_relay_bind_ack(from, packet)
            }
            (Some(&relay_wire::TYPE_RELAY_CHALLENGE), Path::Direct(_)) => {
                self.on_relay_challenge(now, from, packet)
            }
            (Some(&cyphonic_proto::TYPE_PUNCH), _) => self.counters.punches_received += 1,
            _ => self.counters.handshake_rx_bad += 1,
        }
    }

    /// What the NMS said, passed to the parts it concerns.
    fn on_signaling_event(&mut self, now: Instant, event: SignalingEvent) {
        match event {
            SignalingEvent::Registered {
                fqdn,
                vip4,
                vip6,
                observed,
                transport_change,
                probing,
            } => {
                if let Some((before, after)) = transport_change {
                    self.on_transport_change(now, before, after);
                }
                if !probing {
                    self.reroute_peers(now);
                }
                if let Some(step) = self.general.as_mut().map(|g| g.poll(now)) {
                    self.general_step(now, step);
                }
                self.out.events.push_back(NodeEvent::Registered {
                    fqdn,
                    vip4,
                    vip6,
                    observed,
                });
            }
            SignalingEvent::NatKnown => self.reroute_peers(now),
            SignalingEvent::DirectionToResponder { txid, direction } => {
                self.on_direction_to_responder(now, txid, direction)
            }
            SignalingEvent::DirectionToInitiator {
                target,
                vip,
                before_move,
                direction,
            } => {
                let (vip4, vip6) = (direction.peer.vip4, direction.peer.vip6);
                if let Some(vip) = vip.filter(|v| *v != vip4 && *v != vip6) {
                    tracing::warn!(%vip, peer = %direction.peer.fqdn, "route direction for another VIP");
                    self.counters.outbound_no_route += self.vips.fail(now, vip, false) as u64;
                    return;
                }
                self.on_direction_to_initiator(now, target, before_move, direction)
            }
            SignalingEvent::VipFailed { vip, rcode } => {
                let unknown = rcode != ResponseCode::ServFail;
                self.counters.outbound_no_route += self.vips.fail(now, vip, unknown) as u64;
            }
            SignalingEvent::DirectionFailed { target, rcode } => {
                if rcode != ResponseCode::ServFail {
                    self.dns
                        .set_negative(now, &target, rcode == ResponseCode::NXDomain);
                }
                self.dns.answer(&target, Err(rcode), &mut self.out)
            }
            SignalingEvent::PeerRevoked { fqdn, cert_serial } => {
                self.on_peer_revoked(&fqdn, cert_serial)
            }
            SignalingEvent::RouteUpdate { fqdn, filter } => self.on_route_update(&fqdn, filter),
            SignalingEvent::GeneralNodes(page) => {
                if let Some(step) = self.general.as_mut().map(|g| g.on_page(page)) {
                    self.general_step(now, step);
                }
            }
        }
    }

    /// The next move in fetching an adapter's general nodes.
    fn general_step(&mut self, now: Instant, step: general::Step) {
        match step {
            general::Step::Ask(offset) => {
                self.signaling
                    .send_information(now, offset, &mut self.rng, &mut self.out)
            }
            general::Step::Done { version, nodes } => {
                tracing::info!(count = nodes.len(), version = %format!("{version:x}"), "general nodes");
                self.out
                    .events
                    .push_back(NodeEvent::GeneralNodes { version, nodes });
            }
            general::Step::Idle => {}
        }
    }

    /// Signaling moved to another transport (native UDP got blocked, or
    /// came back): relays follow it, and every peer's route is selected
    /// again, since the NMS chooses routes by how each node reaches it.
    fn on_transport_change(&mut self, now: Instant, before: Option<Transport>, after: Transport) {
        tracing::info!(?before, %after, "signaling transport changed; selecting routes again");
        self.peers.for_each_mut(|peer| {
            if let Some(r) = peer.relay.as_mut() {
                r.set_transport(after, now);
            }
            if !peer.failed() {
                peer.reroute = true;
            }
        });
        // The NAT Probe (or its absence) that follows decides when.
        self.reroute_when_registered = true;
    }

    /// An application packet for which the data plane has no tunnel: hold it
    /// while the peer's tunnel is being set up, send it if the tunnel came up
    /// meanwhile, drop it otherwise.
    pub fn handle_outbound(&mut self, now: Instant, packet: &[u8]) {
        let Some(dst) = cyphonic_proto::ip::inner_destination(packet) else {
            self.counters.outbound_no_route += 1;
            return;
        };
        let Some(fqdn) = self.peers.name_by_vip(dst).cloned() else {
            self.outbound_to_vip(now, dst, packet);
            return;
        };
        let Some(mut peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        if peer
            .filter
            .check(crate::filter::Direction::Out, packet, now)
            == crate::filter::Verdict::Deny
        {
            drop(peer);
            self.counters.tx_policy_denied += 1;
            return;
        }
        let max_queued = self.config.max_queued;
        let established = matches!(peer.state, PeerState::Established);
        let establishing = matches!(
            peer.state,
            PeerState::Handshaking { .. } | PeerState::AwaitingRequest { .. }
        );
        let unconfirmed = peer.confirm_by.is_some();
        if peer.held || unconfirmed || (establishing && !(established && peer.tunnel.is_some())) {
            if peer.queue.len() < max_queued {
                peer.queue.push_back(packet.to_vec());
            } else {
                self.counters.outbound_queue_full += 1;
            }
            return;
        }
        match peer.tunnel.clone().filter(|_| established) {
            Some(tunnel) => {
                drop(peer);
                self.seal_to(&tunnel, tunnel.path, packet);
            }
            None => {
                // Its route failed: the application still wants the peer,
                // so the route is selected anew (as a DNS query would);
                // this packet is lost, a later one finds the tunnel.
                let failed = peer.failed();
                drop(peer);
                self.counters.outbound_no_route += 1;
                if failed && self.signaling.registered() && !self.signaling.direction_pending(&fqdn)
                {
                    tracing::info!(peer = %fqdn, "Direction Request for a failed peer's packet");
                    self.signaling
                        .send_direction(now, fqdn, &mut self.rng, &mut self.out);
                }
            }
        }
    }

    /// The router granted a port mapping for the tunnel port, moved it, or
    /// it is gone (`None`): the NMS hands it to peers as this node's
    /// address (a node reachable there is treated as one without NAT), so
    /// it hears of a change at once.
    pub fn handle_port_mapping(&mut self, now: Instant, mapping: Option<PortMapping>) {
        let addr = mapping.as_ref().map(|m| m.external);
        self.port_mapping = mapping;
        if self.signaling.set_mapped(addr) && self.signaling.registered() {
            tracing::info!(mapped = ?addr, "port mapping changed: registering again");
            self.signaling
                .send_registration(now, &mut self.rng, &mut self.out);
        }
    }

    /// How long packets to a VIP wait for its route: the Direction
    /// Request's own deadline, and a retransmission's worth more.
    fn vip_wait(&self) -> std::time::Duration {
        self.config.direction_timeout + self.config.retransmit
    }

    /// A packet to `dst`, which no peer holds: when it is a VIP of the
    /// overlay, it waits while the NMS is asked who holds it (the first
    /// such packet asks).
    fn outbound_to_vip(&mut self, now: Instant, dst: std::net::IpAddr, packet: &[u8]) {
        let own = self
            .signaling
            .login()
            .is_some_and(|l| dst == l.vip4 || dst == l.vip6);
        if !routes::overlay_vip(dst) || own || !self.signaling.registered() {
            self.counters.outbound_no_route += 1;
            return;
        }
        match self.vips.hold(now, dst, packet, self.config.max_queued) {
            vips::Hold::Ask => {
                tracing::info!(vip = %dst, "Direction Request by VIP");
                self.counters.directions_by_vip += 1;
                self.signaling
                    .send_direction_by_vip(now, dst, &mut self.rng, &mut self.out);
            }
            vips::Hold::Held => {}
            vips::Hold::Full => self.counters.outbound_queue_full += 1,
            vips::Hold::Unknown => self.counters.outbound_no_route += 1,
        }
    }

    /// A route to the peer with these VIPs is set up: packets that waited
    /// for one of them go the way of any packet to the peer (its filter,
    /// then its queue), and a question by VIP still open is moot.
    fn vips_routed(&mut self, now: Instant, vips: [std::net::IpAddr; 2]) {
        for vip in vips {
            self.signaling.cancel_vip_directions(vip);
        }
        let held = self.vips.take(&vips);
        if self.peers.name_by_vip(vips[0]).is_none() {
            // The route was not installed (the peer table is full).
            self.counters.outbound_no_route += held.len() as u64;
            return;
        }
        for packet in held {
            self.handle_outbound(now, &packet);
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
        name: Fqdn,
    ) {
        self.counters.dns_overlay_queries += 1;
        if let Some(login) = self.signaling.login() {
            if resolver::normalize(&login.fqdn) == name {
                let response = resolver::answer(&query, login.vip4, login.vip6);
                self.out
                    .events
                    .push_back(NodeEvent::DnsResponse { client, response });
                return;
            }
        }
        if let Some(peer) = self.peers.get(&name).filter(|p| !p.failed()) {
            let response =
                resolver::answer(&query, peer.direction.peer.vip4, peer.direction.peer.vip6);
            self.out
                .events
                .push_back(NodeEvent::DnsResponse { client, response });
            return;
        }
        if !self.signaling.registered() {
            let response = resolver::error(&query, ResponseCode::ServFail);
            self.out
                .events
                .push_back(NodeEvent::DnsResponse { client, response });
            return;
        }
        if self.signaling.cloud_away() && self.dns.negative(now, &name) {
            // While the cloud is away, what it said lately stands.
            let response = resolver::error(&query, ResponseCode::NXDomain);
            self.out
                .events
                .push_back(NodeEvent::DnsResponse { client, response });
            return;
        }
        match self.dns.add(now, &name, client, query.clone()) {
            Err(dns::Full) => {
                let response = resolver::error(&query, ResponseCode::ServFail);
                self.out
                    .events
                    .push_back(NodeEvent::DnsResponse { client, response });
            }
            Ok(true) => {
                tracing::info!(target = %name, "Direction Request");
                self.signaling
                    .send_direction(now, name, &mut self.rng, &mut self.out);
            }
            Ok(false) => {}
        }
    }

    /// Everything due at `now`: signaling first (retransmissions, races,
    /// expired requests, then the keepalive), then each peer with a timer
    /// due, in name order.
    pub fn handle_timeout(&mut self, now: Instant) {
        for txid in self.signaling.handle_timeout(now, &mut self.out) {
            match self.signaling.expire(txid, &mut self.out) {
                Ok(Some(event)) => self.on_signaling_event(now, event),
                Ok(None) => {}
                Err(()) => break,
            }
        }
        if self
            .signaling
            .keepalive_timer(now, &mut self.rng, &mut self.out)
        {
            self.report_tunnels(now);
        }
        let general_due = self.signaling.registered()
            && self.general.as_ref().is_some_and(|g| now >= g.next_poll());
        if let Some(step) = self
            .general
            .as_mut()
            .filter(|_| general_due)
            .map(|g| g.poll(now))
        {
            self.general_step(now, step);
        }
        for fqdn in self.peers.due(now) {
            self.peer_timers(now, &fqdn);
        }
        self.spares_timer(now);
        for vip in self.vips.expired(now, self.vip_wait()) {
            // Its question went with a session that ended, and no new one
            // came in time.
            tracing::info!(%vip, "no route for the VIP in time: its packets are dropped");
            self.counters.outbound_no_route += self.vips.fail(now, vip, false) as u64;
        }
        let (check_after, wait) = (self.config.retransmit, self.config.dns_cloud_wait);
        if self.dns.check_due(now, check_after) {
            let timeout = wait.saturating_sub(check_after);
            self.signaling
                .check_cloud(now, timeout, &mut self.rng, &mut self.out);
        }
        if self.signaling.cloud_away() {
            // Applications fail fast while the cloud is away: a query gets
            // one `retransmit` for the NMS to answer (the cloud may be back)
            // and SERVFAIL then; its route is still asked for, so a later
            // query finds it.
            for name in self.dns.waited(now, check_after) {
                self.dns
                    .answer(&name, Err(ResponseCode::ServFail), &mut self.out);
            }
        }
    }

    /// The session of the last Login, which the NMS's packets name.
    pub fn session_id(&self) -> Option<SessionId> {
        self.signaling.login().map(|l| l.session_id)
    }

    /// Whether a peer's route (and relay session) has this ID.
    pub fn knows_route(&self, route_id: RouteId) -> bool {
        self.peers.name_by_route(route_id).is_some()
    }

    /// Our end of route `route_id`: our role in its handshake and, if it
    /// has a relay session, our side of it. Two identities of one process
    /// can be both ends of one route (see [`crate::host`]).
    pub fn route_end(&self, route_id: RouteId) -> Option<(TunnelRole, Option<u8>)> {
        let peer = self.peers.get(self.peers.name_by_route(route_id)?)?;
        Some((peer.role, peer.relay.as_ref().map(|r| r.offer.side)))
    }

    /// The NAT in front of this node, as the NMS's two ports saw it.
    pub fn nat(&self) -> NatKind {
        self.signaling.nat()
    }

    /// How signaling travels: the transport the NMS has our registration
    /// over, or the one being tried.
    pub fn signaling_transport(&self) -> Transport {
        self.signaling.signaling_transport()
    }
}

#[cfg(test)]
mod tests;
