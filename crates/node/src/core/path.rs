//! The life of an established tunnel's path: punching, relay binds and
//! their failover, keepalives, path probes (a probe's ack proves a path
//! both ways) and the switch to a better or surviving path, the liveness
//! check, and `cyphonic ping`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use cyphonic_proto::relay::Bind;
use cyphonic_proto::signal::{RoutePattern, Spray};
use cyphonic_proto::{Fqdn, LocalIndex, Transport};
use rand::Rng;

use super::peers::PeerMut;
use super::ping::PROBE_LIFETIME;
use super::relay::RelayState;
use super::tunnel::{direct_paths, PeerState};
use super::types::TunnelRole;

/// The TTL of a punching side's first punches (over IPv4): through the
/// NAT in front of the node, and no further.
pub(crate) const PUNCH_TTL: u8 = 2;
/// Keepalive ticks of a relayed tunnel whose IPv4 probe rounds run every
/// tick; later ones, every fourth (with the default 5 s keepalive: every
/// 5 s for the first 30 s on the relay, then every 20 s).
pub(crate) const RELAYED_V4_ROUNDS: u32 = 6;
/// How long the first punches keep that TTL: by then the initiator has
/// sent its Tunnel Request (it learns the route one NMS round trip after
/// the punching side), and punches at full TTL can open a NAT further out.
pub(crate) const LOW_TTL_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// A tunnel that comes up on the relay has its first keepalive tick (and
/// probe round) this soon, not a whole keepalive interval later: past the
/// low-TTL window, when full-TTL punches have opened every NAT of the
/// punching side.
pub(crate) const FIRST_RELAYED_ROUND: std::time::Duration = std::time::Duration::from_millis(1500);
use super::types::{Leg, NodeEvent, Path, PingError, Pong, TunnelHandle};
use super::Node;
use crate::resolver;
use cyphonic_proto::punch::Probe;

/// Path probes in flight per peer.
const MAX_PROBES: usize = 16;

/// "direct", "punched" or "relayed": how a path of a route of `pattern`
/// goes, for status and ping.
pub(crate) fn path_kind(path: Path, pattern: RoutePattern) -> &'static str {
    path_pattern(path, pattern).as_str()
}

/// [`path_kind`] as the wire's pattern code (for the tunnel report).
pub(crate) fn path_pattern(path: Path, pattern: RoutePattern) -> RoutePattern {
    match (path, pattern) {
        (Path::Relay { .. }, _) => RoutePattern::Relayed,
        (Path::Direct(_), RoutePattern::Direct) => RoutePattern::Direct,
        (Path::Direct(_), _) => RoutePattern::Punched,
    }
}

impl Node {
    /// Seals `packet` (empty: a keepalive) for `tunnel` and sends it on `path`.
    pub(super) fn seal_to(&mut self, tunnel: &TunnelHandle, path: Path, packet: &[u8]) {
        self.seal_to_ttl(tunnel, path, packet, None);
    }

    /// [`Node::seal_to`], the datagram sent with IP TTL `ttl`.
    pub(super) fn seal_to_ttl(
        &mut self,
        tunnel: &TunnelHandle,
        path: Path,
        packet: &[u8],
        ttl: Option<u8>,
    ) {
        match crate::datapath::encapsulate_vec(tunnel, path, packet) {
            Ok(framed) => {
                let mut t = path.leg().transmit(framed);
                t.ttl = ttl;
                self.out.transmits.push_back(t);
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
    pub fn handle_path_seen(&mut self, now: Instant, local_index: LocalIndex, path: Path) {
        let Some(fqdn) = self.peers.name_by_index(local_index).cloned() else {
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
            if self.signaling.registered() && !self.signaling.direction_pending(&fqdn) {
                self.signaling
                    .send_direction(now, fqdn.clone(), &mut self.rng, &mut self.out);
            }
            self.out.events.push_back(NodeEvent::PingResult {
                client,
                result: Err(PingError::NoTunnel(fqdn.to_string())),
            });
            return;
        };
        if !self.pings.make_room(now) {
            self.out.events.push_back(NodeEvent::PingResult {
                client,
                result: Err(PingError::TooMany),
            });
            return;
        }
        if let Some(nonce) = self.send_probe(now, &fqdn, path) {
            self.pings.insert(nonce, client, now);
        }
    }

    fn send_probe(&mut self, now: Instant, fqdn: &str, path: Path) -> Option<u64> {
        self.send_probe_ttl(now, fqdn, path, None)
    }

    /// A path probe sent with IP TTL `ttl` (`None`: the default).
    fn send_probe_ttl(
        &mut self,
        now: Instant,
        fqdn: &str,
        path: Path,
        ttl: Option<u8>,
    ) -> Option<u64> {
        let nonce: u64 = self.rng.gen();
        let mut peer = self.peers.get_mut(fqdn)?;
        let tunnel = peer.tunnel.clone()?;
        while peer.probes.len() >= MAX_PROBES {
            peer.probes.pop_front();
        }
        peer.probes.push_back((nonce, path, now));
        drop(peer);
        self.seal_to_ttl(&tunnel, path, &Probe::Probe { nonce }.encode(), ttl);
        Some(nonce)
    }

    /// Probes of a relayed tunnel's direct paths, once per keepalive tick
    /// (IPv4 ones in the first rounds, then every fourth: see
    /// [`RELAYED_V4_ROUNDS`]). IPv6 paths are probed by both sides. An
    /// IPv4 path crosses NATs that may record whichever packet reaches them
    /// first (docs/routing.md), so only the initiator sends full probes
    /// there, when the responder asks: the responder first opens its own
    /// NAT with probes that die past it (when it is behind one), then asks
    /// over the relay (a probe request), and the initiator's probes that
    /// follow find the hole.
    fn probe_relayed(&mut self, now: Instant, fqdn: &str, paths: Vec<Path>, v4_round: bool) {
        let Some((role, tunnel)) = self.peers.get(fqdn).map(|p| (p.role, p.tunnel.clone())) else {
            return;
        };
        let natted = self.signaling.nat() != cyphonic_proto::nat::NatKind::None;
        let spray = self
            .peers
            .get(fqdn)
            .map_or(Spray::None, |p| p.direction.spray);
        let mut ask = false;
        for p in paths {
            if !p.address().is_ipv4() {
                self.send_probe(now, fqdn, p);
            } else if spray != Spray::None {
                // A hard NAT against an easy one: IPv4 is birthday
                // punching's (`core::spray`), on its own schedule.
            } else if v4_round && role == TunnelRole::Responder {
                if natted {
                    self.send_probe_ttl(now, fqdn, p, Some(PUNCH_TTL));
                }
                ask = true;
            }
        }
        if let (true, Some(t)) = (ask, tunnel) {
            let nonce: u64 = self.rng.gen();
            self.seal_to(&t, t.path, &Probe::Request { nonce }.encode());
        }
    }

    /// A tunnel message (a path probe or ack, [`Probe`]) the data plane opened for
    /// tunnel `local_index`, which came on `path`.
    pub fn handle_tunnel_message(
        &mut self,
        now: Instant,
        local_index: LocalIndex,
        path: Path,
        msg: &[u8],
    ) {
        let Some(fqdn) = self.peers.name_by_index(local_index).cloned() else {
            return;
        };
        let Some(mut peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        match Probe::parse(msg) {
            Some(Probe::Probe { nonce }) => {
                drop(peer);
                self.seal_to(&tunnel, path, &Probe::Ack { nonce }.encode());
            }
            Some(Probe::Request { .. }) if peer.direction.spray == Spray::Probe => {
                // The peer, behind a hard NAT, opened its spare ports
                // toward us: probe random ports of its address.
                drop(peer);
                self.start_spray(now, &fqdn);
            }
            Some(Probe::Request { .. }) => {
                // The peer opened its NAT toward our endpoints: probe its
                // IPv4 direct paths now (only while relayed, and only the
                // initiator is asked).
                let paths: Vec<Path> =
                    if tunnel.path.is_relay() && peer.role == TunnelRole::Initiator {
                        direct_paths(&peer)
                            .filter(|p| p.address().is_ipv4())
                            .collect()
                    } else {
                        Vec::new()
                    };
                drop(peer);
                for p in paths {
                    self.send_probe(now, &fqdn, p);
                }
            }
            Some(Probe::Size { nonce }) => {
                drop(peer);
                self.seal_to(&tunnel, path, &Probe::SizeAck { nonce }.encode());
            }
            Some(Probe::SizeAck { nonce }) => {
                drop(peer);
                self.pmtu_ack(now, &fqdn, nonce);
            }
            Some(Probe::Ack { nonce }) => {
                let found = peer.probes.iter().position(|(pn, pp, at)| {
                    *pn == nonce
                        && *pp == path
                        && now.saturating_duration_since(*at) < PROBE_LIFETIME
                });
                let sprayed = found.is_none()
                    && peer
                        .spray
                        .as_ref()
                        .is_some_and(|r| r.answers(nonce, path, now));
                match found {
                    Some(i) => {
                        peer.probes.remove(i);
                    }
                    None if sprayed => {
                        tracing::info!(peer = %fqdn, %path, "birthday punching hit a mapping");
                        if let Some(run) = peer.spray.as_mut() {
                            run.sent = super::spray::SPRAY_PROBES;
                        }
                    }
                    None => {
                        drop(peer);
                        self.counters.handshake_rx_bad += 1;
                        return;
                    }
                }
                let pattern = peer.direction.pattern;
                drop(peer);
                if let Some(ping) = self.pings.take(nonce) {
                    self.out.events.push_back(NodeEvent::PingResult {
                        client: ping.client,
                        result: Ok(Pong {
                            fqdn: fqdn.to_string(),
                            vip4: tunnel.vip4,
                            path: path_kind(path, pattern).into(),
                            endpoint: path.address(),
                            transport: path.transport().as_str().into(),
                            rtt_us: now.saturating_duration_since(ping.sent).as_micros() as u64,
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
            None => {
                drop(peer);
                self.counters.handshake_rx_bad += 1;
            }
        }
    }

    pub(super) fn switch_path(&mut self, now: Instant, fqdn: &str, path: Path, note: &str) {
        let keepalive = self.config.keepalive;
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.as_mut() else {
            return;
        };
        tracing::info!(peer = %fqdn, from = %tunnel.path, to = %path, why = note, "path change");
        let left_spare = tunnel.path.leg().local != 0;
        tunnel.path = path;
        let handle = tunnel.clone();
        peer.relayed_rounds = 0;
        peer.path_note = note.to_owned();
        peer.stale_ticks = 0;
        peer.path_since = now;
        peer.next_keepalive = now + keepalive;
        let confirmed = peer.confirm_by.is_none();
        let queued: Vec<Vec<u8>> = if std::mem::take(&mut peer.held) && confirmed {
            peer.queue.drain(..).collect()
        } else {
            Vec::new()
        };
        drop(peer);
        self.start_pmtu(now, fqdn);
        self.mobility.tunnel_back(fqdn, now);
        self.counters.path_changes += 1;
        self.report_tunnels_soon(now);
        self.out
            .events
            .push_back(NodeEvent::TunnelUp(handle.clone()));
        // Tell the peer at once on the new path.
        self.seal_to(&handle, path, &[]);
        for packet in queued {
            self.seal_to(&handle, path, &packet);
        }
        if left_spare {
            self.spares_timer(now);
        }
    }

    pub(super) fn send_punches(&mut self, now: Instant, fqdn: &str) {
        let interval = self.config.punch_interval;
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        match peer.punch_until {
            Some(until) if now < until && now >= peer.next_punch => {}
            _ => return,
        }
        peer.next_punch = now + interval;
        if peer.direction.via != Transport::Udp {
            return; // QUIC legs need no holes punched
        }
        // The first punches open our NAT without reaching the peer's: one
        // reaching a router that has not yet seen the initiator's packet
        // would be recorded there and make it take another port (Linux
        // routers without an input firewall). Two hops leave a NAT in
        // front of us; later punches go all the way, for a second NAT
        // further out (a carrier's), once the initiator has sent.
        let low = peer.low_ttl_until.is_some_and(|t| now < t);
        let packet = cyphonic_proto::punch::encode(peer.direction.route_id);
        for e in peer.direction.peer.endpoints.clone() {
            self.counters.punches_sent += 1;
            let mut t = Leg::udp(e).transmit(packet.to_vec());
            if low && e.is_ipv4() {
                t.ttl = Some(PUNCH_TTL);
            }
            self.out.transmits.push_back(t);
        }
    }

    pub(super) fn send_relay_bind(&mut self, now: Instant, fqdn: &str) {
        let (keepalive, retransmit) = (self.config.keepalive, self.config.handshake_retransmit);
        let unix_now = self
            .wall(now)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(relay) = peer.relay.as_mut() else {
            return;
        };
        if relay.should_fail_over() && relay.expires() <= unix_now {
            // No TRS takes an expired grant: failing over between them
            // would go on forever. A new route brings a new grant.
            relay.hold_binds(now + keepalive);
            drop(peer);
            if !self.signaling.direction_pending(fqdn) {
                tracing::warn!(peer = %fqdn, "relay grant expired: selecting the route again");
                self.counters.grant_renewals += 1;
                self.signaling
                    .send_direction(now, Fqdn::new(fqdn), &mut self.rng, &mut self.out);
            }
            return;
        }
        if relay.should_fail_over() {
            // This TRS stopped answering: the next one, for both sides of
            // the session (they walk the same list).
            relay.fail_over(now);
            self.counters.relay_failovers += 1;
            tracing::warn!(peer = %fqdn, server = ?relay.server(), "relay unreachable; failing over");
            let new_path = relay.path();
            let on_relay = peer.tunnel.as_ref().is_some_and(|t| t.path.is_relay());
            drop(peer);
            if let (true, Some(p)) = (on_relay, new_path) {
                self.switch_path(now, fqdn, p, "relay failover");
            }
        } else {
            drop(peer);
        }
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(bind) = peer
            .relay
            .as_mut()
            .and_then(|r| r.bind(now, keepalive, retransmit))
        else {
            return;
        };
        drop(peer);
        self.out.transmits.push_back(bind);
    }

    pub(super) fn on_relay_bind_ack(&mut self, from: Leg, packet: &[u8]) {
        let Ok(ack) = Bind::parse(packet) else {
            self.counters.relay_rx_bad += 1;
            return;
        };
        let Some(fqdn) = self.peers.name_by_route(ack.relay_id.route_id()).cloned() else {
            self.counters.relay_rx_bad += 1;
            return;
        };
        let Some(mut peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        let Some(relay) = peer.relay.as_mut() else {
            return;
        };
        match relay.on_ack(from, &ack, packet) {
            Ok(true) => {
                tracing::debug!(peer = %fqdn, server = %from, "relay bound");
                // A Tunnel Request sent on the relay before the TRS took
                // our address (its cookie round trip) was dropped there:
                // send it again now rather than a retransmission later.
                let relay_path = relay.path();
                if let PeerState::Handshaking {
                    request,
                    attempts,
                    attempt,
                    ..
                } = &peer.state
                {
                    if let (Some(Path::Relay { .. }), Some(path)) =
                        (attempts.get(*attempt), relay_path)
                    {
                        let t = path.transmit(request);
                        drop(peer);
                        self.out.transmits.push_back(t);
                    }
                }
            }
            Ok(false) => {}
            Err(_) => {
                drop(peer);
                self.counters.relay_rx_bad += 1;
            }
        }
    }

    /// A Relay Challenge: the TRS wants our Bind again with its cookie,
    /// which shows the TRS we receive at the address we bind. Sent at once,
    /// once per Bind of ours (§6.8).
    pub(super) fn on_relay_challenge(&mut self, now: Instant, from: Leg, packet: &[u8]) {
        let Ok(challenge) = cyphonic_proto::relay::Challenge::parse(packet) else {
            self.counters.relay_rx_bad += 1;
            return;
        };
        let Some(fqdn) = self
            .peers
            .name_by_route(challenge.relay_id.route_id())
            .cloned()
        else {
            self.counters.relay_rx_bad += 1;
            return;
        };
        let (keepalive, retransmit) = (self.config.keepalive, self.config.handshake_retransmit);
        let Some(mut peer) = self.peers.get_mut(&fqdn) else {
            return;
        };
        let Some(relay) = peer.relay.as_mut() else {
            return;
        };
        if !relay.on_challenge(from, &challenge) {
            drop(peer);
            self.counters.relay_rx_bad += 1;
            return;
        }
        let Some(bind) = relay.bind(now, keepalive, retransmit) else {
            return;
        };
        drop(peer);
        tracing::debug!(peer = %fqdn, server = %from, "relay challenge answered");
        self.out.transmits.push_back(bind);
    }

    /// Everything due for one peer: handshake retransmission over the
    /// attempt paths, punching, relay binds, keepalives, probes and the
    /// liveness check.
    pub(super) fn peer_timers(&mut self, now: Instant, fqdn: &str) {
        self.handshake_timer(now, fqdn);
        self.key_timer(now, fqdn);
        self.send_punches(now, fqdn);
        self.spray_tick(now, fqdn);
        self.open_spares(now, fqdn);
        self.pmtu_tick(now, fqdn);
        let bind_due = self
            .peers
            .get(fqdn)
            .and_then(|p| p.relay.as_ref())
            .is_some_and(|r| r.bind_due(now));
        if bind_due {
            self.send_relay_bind(now, fqdn);
        }
        self.keepalive_tick(now, fqdn);
    }

    /// Once per keepalive interval for an established tunnel: a keepalive
    /// on the current path (holding NAT bindings), probes to the direct
    /// endpoints while relayed, and the liveness check: a path that brought
    /// nothing for `dead_after` intervals is dead, and the tunnel moves to
    /// the relay (or to route selection anew when there is none).
    fn keepalive_tick(&mut self, now: Instant, fqdn: &str) {
        let (keepalive, dead_after) = (self.config.keepalive, self.config.dead_after);
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        if !matches!(peer.state, PeerState::Established) || now < peer.next_keepalive {
            return;
        }
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        peer.next_keepalive = now + keepalive;
        let dead = liveness(&mut peer, &tunnel, dead_after);
        let relay_path = peer.relay.as_ref().and_then(RelayState::path);
        let probes: Vec<Path> = if tunnel.path.is_relay() {
            direct_paths(&peer).collect()
        } else {
            Vec::new()
        };
        let v4_round = peer.relayed_rounds < RELAYED_V4_ROUNDS || peer.relayed_rounds % 4 == 0;
        if tunnel.path.is_relay() {
            peer.relayed_rounds = peer.relayed_rounds.saturating_add(1);
        }
        let pattern = peer.direction.pattern;
        drop(peer);
        self.seal_to(&tunnel, tunnel.path, &[]);
        if !probes.is_empty() {
            self.probe_relayed(now, fqdn, probes, v4_round);
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
                // First make the next bind fail over to another TRS; when
                // that brings nothing either (the peer restarted, or its
                // grant ended), select the route again.
                let mut reroute = false;
                if let Some(mut p) = self.peers.get_mut(fqdn) {
                    p.dead_rounds += 1;
                    p.stale_ticks = 0;
                    let more = p.relay.as_ref().is_some_and(RelayState::can_fail_over);
                    if p.dead_rounds == 1 && more {
                        if let Some(r) = p.relay.as_mut() {
                            r.force_fail_over(now);
                        }
                    } else {
                        reroute = true;
                    }
                }
                if reroute && !self.signaling.direction_pending(fqdn) {
                    tracing::warn!(peer = %fqdn, "relayed path silent on every TRS: selecting the route again");
                    self.counters.relay_dead_reroutes += 1;
                    self.signaling.send_direction(
                        now,
                        Fqdn::new(fqdn),
                        &mut self.rng,
                        &mut self.out,
                    );
                }
            }
            _ => {
                tracing::warn!(peer = %fqdn, pattern = pattern.as_str(), "path silent and no relay: selecting the route again");
                if let Some(mut p) = self.peers.get_mut(fqdn) {
                    p.stale_ticks = 0;
                }
                self.signaling
                    .send_direction(now, Fqdn::new(fqdn), &mut self.rng, &mut self.out);
            }
        }
    }
}

/// One liveness tick: whether the tunnel's path brought nothing for
/// `dead_after` ticks in a row.
fn liveness(peer: &mut PeerMut<'_>, tunnel: &TunnelHandle, dead_after: u32) -> bool {
    let rx = tunnel.stats.rx_packets.load(Ordering::Relaxed);
    if rx == peer.rx_seen {
        peer.stale_ticks += 1;
    } else {
        peer.rx_seen = rx;
        peer.stale_ticks = 0;
        peer.dead_rounds = 0;
    }
    peer.stale_ticks >= dead_after
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_kinds_name_the_route() {
        let direct = Path::udp("192.0.2.21:4501".parse().expect("addr"));
        let relay = Path::Relay {
            server: Leg::udp("192.0.2.1:4503".parse().expect("addr")),
            relay_id: cyphonic_proto::RelayId(1),
        };
        assert_eq!(path_kind(direct, RoutePattern::Direct), "direct");
        assert_eq!(path_kind(direct, RoutePattern::Punched), "punched");
        assert_eq!(path_kind(relay, RoutePattern::Direct), "relayed");
    }
}
