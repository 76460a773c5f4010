//! Tunnel establishment per peer: the initiator's Tunnel Request over each
//! path to try in turn (direct endpoints first, the relay last), the
//! responder's answer (the same answer to a retransmitted request), the
//! check of the peer's certificate, and the tunnel's keys handed to the
//! data plane ([`NodeEvent::TunnelUp`]).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cyphonic_pki::Verifier;
use cyphonic_proto::data::{RecvKey, SendKey, REKEY_AFTER_MESSAGES};
use cyphonic_proto::handshake::{self, Initiator, LocalIdentity, PeerVerifier};
use cyphonic_proto::signal::RoutePattern;
use cyphonic_proto::{Fqdn, LocalIndex, RouteId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::peers::{Peer, Rekey};
use super::relay::RelayState;
use super::types::{Leg, NodeEvent, Path, TunnelHandle, TunnelRole};
use super::Node;

/// Tries of a handshake on one path before the next.
pub const SENDS_PER_ATTEMPT: u32 = 2;
/// Tunnel Requests one route sends to a direct address that has not
/// answered (the last one tried: at 0, 0.3, 0.9, 2.1, 3.3 and 4.5 s, so a
/// handshake still gets through 30 % loss), and to all of them together.
/// The endpoints
/// come from the other side's registration: a direction naming a victim
/// costs it at most this much per route (protocol §5.4).
pub const MAX_SILENT_SENDS: u32 = 6;
pub const MAX_SILENT_SENDS_PER_ROUTE: u32 = 8;

/// Where a peer's tunnel establishment stands.
pub(crate) enum PeerState {
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
        /// Requests sent on direct paths so far (none of them answered).
        silent_sends: u32,
        next_retransmit: Instant,
        deadline: Instant,
    },
    Established,
    Failed {
        reason: EstablishmentFailed,
    },
}

/// Why a peer's tunnel could not be established.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstablishmentFailed {
    #[error("no path to try")]
    NoPath,
    #[error("cannot start handshake: {0}")]
    Start(handshake::HandshakeError),
    #[error("no Tunnel Response on any path")]
    NoResponse,
    #[error("no Tunnel Request from the initiator")]
    NoRequest,
}

impl PeerState {
    /// When establishment next has something to do.
    pub fn wake(&self) -> Option<Instant> {
        match self {
            PeerState::Handshaking {
                next_retransmit,
                deadline,
                ..
            } => Some((*next_retransmit).min(*deadline)),
            PeerState::AwaitingRequest { deadline } => Some(*deadline),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PeerState::AwaitingRequest { .. } => "awaiting-request".into(),
            PeerState::Handshaking { .. } => "handshaking".into(),
            PeerState::Established => "established".into(),
            PeerState::Failed { reason } => format!("failed: {reason}"),
        }
    }
}

/// The peer's endpoints as direct paths, over the transport the NMS named
/// (native UDP, or QUIC to the peer's listener).
pub(crate) fn direct_paths(peer: &Peer) -> impl Iterator<Item = Path> + '_ {
    let via = peer.direction.via;
    peer.direction
        .peer
        .endpoints
        .iter()
        .map(move |e| Path::Direct(Leg::new(via, *e)))
}

/// The paths an initiator tries, in order: for a relayed route the relay;
/// otherwise each direct endpoint, then the relay as fallback.
fn attempt_paths(peer: &Peer) -> Vec<Path> {
    let relay = peer.relay.as_ref().and_then(RelayState::path);
    let direct = direct_paths(peer);
    if peer.direction.pattern == RoutePattern::Relayed && relay.is_some() {
        return relay.into_iter().collect();
    }
    direct.chain(relay).collect()
}

/// The initiator's state and Tunnel Request for `peer`'s route.
fn initiate(
    identity: &LocalIdentity,
    peer: &Peer,
    rng: &mut StdRng,
) -> Result<(Initiator, Vec<u8>), handshake::HandshakeError> {
    let d = &peer.direction;
    Initiator::start_with_rng(
        identity,
        &d.peer.static_public,
        &d.tunnel_key,
        d.route_id,
        peer.local_index,
        rng,
    )
}

/// Randomness for one handshake's ephemeral key. The node's generator is
/// re-keyed from its own output afterwards (fast key erasure), so its state
/// never lets anyone recompute an earlier ephemeral key: forward secrecy
/// does not rest on the OS's generator being used per handshake.
pub(crate) fn ephemeral_rng(rng: &mut StdRng) -> StdRng {
    let one = StdRng::from_seed(rng.gen());
    *rng = StdRng::from_seed(rng.gen());
    one
}

impl Node {
    pub(super) fn start_handshake(&mut self, now: Instant, fqdn: &str) {
        let mut rng = ephemeral_rng(&mut self.rng);
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let attempts = attempt_paths(&peer);
        let Some(&first) = attempts.first() else {
            peer.state = PeerState::Failed {
                reason: EstablishmentFailed::NoPath,
            };
            self.counters.handshake_failures += 1;
            return;
        };
        match initiate(&self.identity, &peer, &mut rng) {
            Ok((initiator, request)) => {
                tracing::debug!(peer = %fqdn, path = %first, "Tunnel Request");
                self.out.transmits.push_back(first.transmit(&request));
                peer.state = PeerState::Handshaking {
                    initiator: Some(Box::new(initiator)),
                    request,
                    silent_sends: u32::from(matches!(first, Path::Direct(_))),
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
                    reason: EstablishmentFailed::Start(e),
                };
            }
        }
    }

    fn peer_verifier(&self, peer: &Peer, now: Instant) -> CertCheck {
        // A peer of a cooperating domain is vouched for by that domain's
        // root, and only for names under that domain.
        let fqdn = peer.fqdn.to_string();
        let verifier = self
            .linked_roots
            .iter()
            .find(|(domain, _)| fqdn.ends_with(&format!(".{domain}")))
            .map_or(&self.verifier, |(_, v)| v);
        CertCheck {
            verifier: verifier.clone(),
            fqdn: peer.fqdn.to_string(),
            serial: peer.direction.peer.cert_serial,
            vips: [
                peer.direction.peer.vip4.into(),
                peer.direction.peer.vip6.into(),
            ],
            now: self.wall(now),
        }
    }

    pub(super) fn on_tunnel_request(&mut self, now: Instant, path: Path, packet: &[u8]) {
        let Ok(header) = handshake::peek_request(packet) else {
            self.counters.handshake_rx_bad += 1;
            return;
        };
        let Some(fqdn) = self.peers.name_by_route(header.route_id).cloned() else {
            // Not a route the NMS directed us to (yet): no reply at all.
            // When the peer initiates (pattern 2 with the CN behind the
            // NAT), its request can overtake our route direction, so a few
            // are held briefly and answered once the direction arrives.
            self.early.hold(now, path, packet);
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
                // Our response was lost: the initiator has no keys yet, so
                // ours wait for its first packet a while longer.
                let resend = path.transmit(resp);
                let wait = self.config.handshake_retransmit;
                if let Some(mut peer) = self.peers.get_mut(&fqdn) {
                    if peer.confirm_by.is_some() {
                        peer.confirm_by = Some(now + wait);
                    }
                }
                self.out.transmits.push_back(resend);
                return;
            }
        }
        let ephemeral = handshake::request_ephemeral(packet).ok();
        if ephemeral.is_some_and(|e| peer.answered.contains(&e)) {
            // A recorded request of this route, replayed: answering it
            // would only cost us a handshake.
            self.counters.handshake_replays += 1;
            return;
        }
        let check = self.peer_verifier(peer, now);
        let local_index = self.peers.fresh_index(&mut self.rng, self.config.index_tag);
        let mut rng = ephemeral_rng(&mut self.rng);
        let Some(peer) = self.peers.get(&fqdn) else {
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
                self.peers.set_local_index(&fqdn, local_index);
                let mut rekey = false;
                if let Some(mut peer) = self.peers.get_mut(&fqdn) {
                    peer.last_request = Some((packet.to_vec(), response.clone()));
                    if let Some(e) = ephemeral {
                        if peer.answered.len() >= MAX_ANSWERED {
                            peer.answered.pop_front();
                        }
                        peer.answered.push_back(e);
                    }
                    rekey = matches!(peer.state, PeerState::Established) && peer.tunnel.is_some();
                }
                self.out.transmits.push_back(path.transmit(&response));
                if rekey {
                    tracing::debug!(peer = %fqdn, %path, "rekey answered; new keys await the peer's first packet");
                    self.rekey_answered(now, &fqdn, path, keys);
                } else {
                    tracing::info!(peer = %fqdn, %path, "Tunnel Response sent; tunnel up");
                    self.tunnel_up(now, &fqdn, path, keys, false);
                }
            }
            Err(e) => {
                self.counters.handshake_failures += 1;
                tracing::warn!(peer = %fqdn, %path, error = %e, "Tunnel Request refused");
            }
        }
    }

    pub(super) fn on_tunnel_response(&mut self, now: Instant, path: Path, packet: &[u8]) {
        let Ok(header) = handshake::peek_response(packet) else {
            self.counters.handshake_rx_bad += 1;
            return;
        };
        let Some(fqdn) = self.peers.name_by_index(header.receiver_index).cloned() else {
            self.counters.handshake_rx_bad += 1;
            return;
        };
        let Some(peer) = self.peers.get(&fqdn) else {
            return;
        };
        let check = self.peer_verifier(peer, now);
        let rekeying = peer
            .rekey
            .as_ref()
            .is_some_and(|r| r.initiator.local_index() == header.receiver_index);
        if rekeying {
            self.on_rekey_response(now, &fqdn, packet, &check);
            return;
        }
        let Some(mut peer) = self.peers.get_mut(&fqdn) else {
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
        drop(peer);
        match init.finish(packet, &check) {
            Ok(keys) => {
                tracing::info!(peer = %fqdn, %path, "Tunnel Response received; tunnel up");
                self.tunnel_up(now, &fqdn, path, keys, true);
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
        let mut rng = ephemeral_rng(&mut self.rng);
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let started = initiate(&self.identity, &peer, &mut rng);
        let PeerState::Handshaking {
            initiator, request, ..
        } = &mut peer.state
        else {
            return;
        };
        match started {
            Ok((fresh, fresh_request)) => {
                *initiator = Some(Box::new(fresh));
                *request = fresh_request;
            }
            Err(e) => {
                peer.state = PeerState::Failed {
                    reason: EstablishmentFailed::Start(e),
                };
            }
        }
    }

    /// The tunnel is up with the keys of a first handshake. The initiator
    /// (`confirmed`) sends at once, a keepalive when nothing waits: its
    /// first packet confirms the keys to the responder, whose keys send
    /// only after that (§7.6), so none of its packets can reach the
    /// initiator before the Tunnel Response has.
    fn tunnel_up(
        &mut self,
        now: Instant,
        fqdn: &str,
        path: Path,
        keys: handshake::SessionKeys,
        confirmed: bool,
    ) {
        let wall = self.wall(now);
        let (keepalive, rekey_after) = (self.config.keepalive, self.config.rekey_after);
        let confirm_wait = self.config.handshake_retransmit;
        self.mobility.tunnel_back(fqdn, now);
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        if confirmed {
            self.counters.handshakes_initiator += 1;
        } else {
            self.counters.handshakes_responder += 1;
        }
        let handle = new_handle(&peer, path, &keys, confirmed);
        let new_path = peer.tunnel.as_ref().map(|t| t.path) != Some(path);
        peer.confirm_by = (!confirmed).then_some(now + confirm_wait);
        peer.prev = peer.tunnel.as_ref().map(|t| (t.recv.clone(), peer.keys_at));
        peer.keys_made(now, rekey_after);
        peer.rekey = None;
        peer.pending = None;
        peer.state = PeerState::Established;
        peer.held = false;
        peer.last_handshake = Some(wall);
        peer.tunnel = Some(handle.clone());
        if path.is_relay() {
            // Punching goes on (at full TTL past its first second) until
            // its deadline: a NAT beyond the first (a carrier's) is opened
            // toward the peer only by those punches, and the relayed
            // tunnel's first probe round, soon, finds it open.
            peer.next_keepalive = now + keepalive.min(super::path::FIRST_RELAYED_ROUND);
        } else {
            peer.punch_until = None;
            peer.next_keepalive = now + keepalive;
        }
        peer.rx_seen = handle.stats.rx_packets.load(Ordering::Relaxed);
        peer.stale_ticks = 0;
        peer.path_since = now;
        if path.is_relay() && peer.direction.pattern != RoutePattern::Relayed {
            peer.path_note = "direct attempts failed: relay until a direct path answers".into();
        }
        let queued: Vec<Vec<u8>> = if confirmed {
            peer.queue.drain(..).collect()
        } else {
            Vec::new()
        };
        drop(peer);
        if new_path {
            self.start_pmtu(now, fqdn);
            self.report_tunnels_soon(now);
        }
        self.out
            .events
            .push_back(NodeEvent::TunnelUp(handle.clone()));
        if confirmed && queued.is_empty() {
            self.seal_to(&handle, handle.path, &[]);
        }
        for packet in queued {
            self.seal_to(&handle, handle.path, &packet);
        }
    }

    /// The responder's first keys are confirmed (the initiator's first
    /// packet under them, or `confirm_by` passed): they send from now on,
    /// the packets held meanwhile first.
    fn first_keys_confirmed(&mut self, fqdn: &str) {
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        if peer.confirm_by.take().is_none() {
            return;
        }
        let Some(handle) = peer.tunnel.clone() else {
            return;
        };
        handle.confirmed.store(true, Ordering::Relaxed);
        let queued: Vec<Vec<u8>> = if peer.held {
            Vec::new()
        } else {
            peer.queue.drain(..).collect()
        };
        drop(peer);
        tracing::debug!(peer = %fqdn, "first keys confirmed");
        self.out
            .events
            .push_back(NodeEvent::TunnelUp(handle.clone()));
        for packet in queued {
            self.seal_to(&handle, handle.path, &packet);
        }
    }

    /// Keys we answered a rekey with: the data plane receives with them at
    /// once but sends with them only once the peer has (its first packet
    /// under them, [`Node::handle_key_confirmed`]).
    fn rekey_answered(
        &mut self,
        now: Instant,
        fqdn: &str,
        path: Path,
        keys: handshake::SessionKeys,
    ) {
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let handle = new_handle(&peer, path, &keys, false);
        peer.pending = Some((handle.clone(), now));
        drop(peer);
        self.out.events.push_back(NodeEvent::TunnelUp(handle));
    }

    /// The data plane opened the first packet under keys that awaited
    /// confirmation: the tunnel sends with them from now on.
    pub fn handle_key_confirmed(&mut self, _now: Instant, local_index: LocalIndex) {
        let Some(fqdn) = self.peers.name_by_index(local_index).cloned() else {
            return;
        };
        let first = self.peers.get(&fqdn).is_some_and(|p| {
            p.confirm_by.is_some()
                && p.tunnel
                    .as_ref()
                    .is_some_and(|t| t.recv.local_index() == local_index)
        });
        if first {
            self.first_keys_confirmed(&fqdn);
        } else {
            self.promote_pending(&fqdn);
        }
    }

    fn promote_pending(&mut self, fqdn: &str) {
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let confirmed = peer
            .pending
            .as_ref()
            .is_some_and(|(h, _)| h.confirmed.load(Ordering::Relaxed));
        if !confirmed {
            return;
        }
        let Some((mut handle, made)) = peer.pending.take() else {
            return;
        };
        if let Some(t) = &peer.tunnel {
            handle.path = t.path;
        }
        drop(peer);
        tracing::debug!(peer = %fqdn, "rekeyed (responder)");
        self.replace_keys(fqdn, handle, made);
    }

    /// The tunnel's keys replaced by those of a rekey made at `made`; the
    /// replaced receive key keeps opening packets in flight.
    fn replace_keys(&mut self, fqdn: &str, handle: TunnelHandle, made: Instant) {
        let (rekey_after, wall) = (self.config.rekey_after, self.wall(made));
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        peer.prev = peer.tunnel.as_ref().map(|t| (t.recv.clone(), peer.keys_at));
        peer.keys_made(made, rekey_after);
        peer.last_handshake = Some(wall);
        peer.tunnel = Some(handle.clone());
        drop(peer);
        self.counters.rekeys += 1;
        self.out.events.push_back(NodeEvent::TunnelUp(handle));
    }

    /// Starts the initiator's rekey: a fresh handshake (new ephemeral, new
    /// index) on the tunnel's current path; the tunnel keeps its keys
    /// until the answer.
    fn start_rekey(&mut self, now: Instant, fqdn: &str) {
        let (retransmit, timeout, keepalive) = (
            self.config.handshake_retransmit,
            self.config.handshake_timeout,
            self.config.keepalive,
        );
        let mut rng = ephemeral_rng(&mut self.rng);
        let index = self.peers.fresh_index(&mut self.rng, self.config.index_tag);
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(path) = peer.tunnel.as_ref().map(|t| t.path) else {
            return;
        };
        peer.local_index = index;
        match initiate(&self.identity, &peer, &mut rng) {
            Ok((initiator, request)) => {
                tracing::debug!(peer = %fqdn, %path, "rekey: Tunnel Request");
                self.out.transmits.push_back(path.transmit(&request));
                peer.rekey = Some(Rekey {
                    initiator: Box::new(initiator),
                    request,
                    next_retransmit: now + retransmit,
                    deadline: now + timeout,
                });
            }
            Err(e) => {
                tracing::warn!(peer = %fqdn, error = %e, "cannot start a rekey");
                peer.next_rekey = now + keepalive;
                drop(peer);
                self.counters.rekey_failures += 1;
            }
        }
    }

    fn on_rekey_response(&mut self, now: Instant, fqdn: &str, packet: &[u8], check: &CertCheck) {
        let keepalive = self.config.keepalive;
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(rekey) = peer.rekey.as_ref() else {
            return;
        };
        if rekey.initiator.check_response(packet).is_err() {
            drop(peer);
            self.counters.handshake_rx_bad += 1;
            return;
        }
        let Some(rekey) = peer.rekey.take() else {
            return;
        };
        match rekey.initiator.finish(packet, check) {
            Ok(keys) => {
                let path = peer.tunnel.as_ref().map(|t| t.path);
                let handle = path.map(|p| new_handle(&peer, p, &keys, true));
                drop(peer);
                if let Some(handle) = handle {
                    tracing::debug!(peer = %fqdn, "rekeyed (initiator)");
                    self.replace_keys(fqdn, handle, now);
                }
            }
            Err(e) => {
                // Refused (a peer whose certificate no longer passes, or a
                // forgery that passed the mac): the tunnel keeps its keys
                // and the rekey is tried again; keys that reach
                // `reject_after` end the tunnel.
                peer.next_rekey = now + keepalive;
                drop(peer);
                self.counters.handshake_failures += 1;
                self.counters.rekey_failures += 1;
                tracing::warn!(peer = %fqdn, error = %e, "rekey response refused");
            }
        }
    }

    /// The keys' lifecycle for one peer: confirmation of keys we answered
    /// a rekey with, the initiator's rekey (start, retransmission, giving
    /// up), and refusal of keys that reached `reject_after` (the tunnel is
    /// held and the route selected again).
    pub(super) fn key_timer(&mut self, now: Instant, fqdn: &str) {
        let (retransmit, keepalive, reject_after) = (
            self.config.handshake_retransmit,
            self.config.keepalive,
            self.config.reject_after,
        );
        self.promote_pending(fqdn);
        if self
            .peers
            .get(fqdn)
            .and_then(|p| p.confirm_by)
            .is_some_and(|t| now >= t)
        {
            // No packet of the initiator's came (its keepalive was lost):
            // it has had time to install the keys.
            self.first_keys_confirmed(fqdn);
        }
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        if peer
            .pending
            .as_ref()
            .is_some_and(|(_, made)| now >= *made + reject_after)
        {
            if let Some((h, _)) = peer.pending.take() {
                h.recv.retire();
                h.send.retire();
            }
        }
        if let Some((prev, made)) = &peer.prev {
            if now >= *made + reject_after {
                prev.retire();
                peer.prev = None;
            }
        }
        let mut resend = None;
        let mut gave_up = false;
        if let Some(rekey) = peer.rekey.as_mut() {
            if now >= rekey.deadline {
                gave_up = true;
            } else if now >= rekey.next_retransmit {
                rekey.next_retransmit = now + retransmit;
                resend = Some(rekey.request.clone());
            }
        }
        if gave_up {
            peer.rekey = None;
            peer.next_rekey = now + keepalive;
        }
        let path = peer.tunnel.as_ref().map(|t| t.path);
        if let (Some(request), Some(path)) = (resend, path) {
            self.out.transmits.push_back(path.transmit(&request));
        }
        let live = peer.tunnel.as_ref().filter(|t| !t.send.retired()).cloned();
        let Some(tunnel) = live else {
            drop(peer);
            if gave_up {
                self.counters.rekey_failures += 1;
            }
            return;
        };
        if now >= peer.keys_at + reject_after {
            tunnel.send.retire();
            tunnel.recv.retire();
            peer.held = true;
            let established = matches!(peer.state, PeerState::Established);
            drop(peer);
            self.counters.keys_expired += 1;
            tracing::warn!(peer = %fqdn, "tunnel keys expired unreplaced: selecting the route again");
            self.out.events.push_back(NodeEvent::TunnelHold {
                fqdn: fqdn.to_owned(),
            });
            if established && !self.signaling.direction_pending(fqdn) {
                self.signaling
                    .send_direction(now, Fqdn::new(fqdn), &mut self.rng, &mut self.out);
            }
            return;
        }
        let renew =
            peer.role == TunnelRole::Initiator && peer.grant_renew_at.is_some_and(|t| now >= t);
        if renew {
            // Asked again until a new route (with a new grant) replaces
            // this peer: a request lost with an NMS restart must not leave
            // the grant to run out.
            peer.grant_renew_at = Some(now + RENEW_RETRY);
        }
        let due = peer.role == TunnelRole::Initiator
            && matches!(peer.state, PeerState::Established)
            && peer.rekey.is_none()
            && (now >= peer.next_rekey || tunnel.send.sent() >= REKEY_AFTER_MESSAGES);
        drop(peer);
        if gave_up {
            self.counters.rekey_failures += 1;
        }
        if renew && !self.signaling.direction_pending(fqdn) {
            tracing::info!(peer = %fqdn, "relay grant nearing its end: selecting the route again");
            self.counters.grant_renewals += 1;
            self.signaling
                .send_direction(now, Fqdn::new(fqdn), &mut self.rng, &mut self.out);
        }
        if due {
            self.start_rekey(now, fqdn);
        }
    }

    /// Retransmits a pending Tunnel Request (on the next path once this
    /// one had its tries) or gives up at the deadline.
    pub(super) fn handshake_timer(&mut self, now: Instant, fqdn: &str) {
        let retransmit = self.config.handshake_retransmit;
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let peer = &mut *peer;
        let relay_path = peer.relay.as_ref().and_then(RelayState::path);
        let mut failed = None;
        match &mut peer.state {
            PeerState::Handshaking {
                request,
                attempts,
                attempt,
                sent_on_attempt,
                silent_sends,
                next_retransmit,
                deadline,
                ..
            } => {
                if now >= *deadline {
                    failed = Some(EstablishmentFailed::NoResponse);
                } else if now >= *next_retransmit {
                    let last = attempts.len() - 1;
                    if *sent_on_attempt >= SENDS_PER_ATTEMPT && *attempt < last {
                        *attempt += 1;
                        *sent_on_attempt = 0;
                    }
                    if *silent_sends >= MAX_SILENT_SENDS_PER_ROUTE
                        && matches!(attempts[*attempt], Path::Direct(_))
                        && matches!(attempts[last], Path::Relay { .. })
                    {
                        // The direct budget is spent: the relay is left.
                        *attempt = last;
                        *sent_on_attempt = 0;
                    }
                    // The relay path follows the current TRS (failover).
                    let mut path = attempts[*attempt];
                    if let (Path::Relay { .. }, Some(r)) = (path, relay_path) {
                        path = r;
                        attempts[*attempt] = r;
                    }
                    let direct = matches!(path, Path::Direct(_));
                    if direct
                        && (*sent_on_attempt >= MAX_SILENT_SENDS
                            || *silent_sends >= MAX_SILENT_SENDS_PER_ROUTE)
                    {
                        // Nothing more to a silent address: wait for the
                        // deadline (a Response may still come).
                        *next_retransmit = *deadline;
                    } else {
                        // The last direct address backs off, to 1.2 s
                        // between tries; the relay keeps the pace.
                        let backoff = if direct && *attempt == last {
                            1u32 << (*sent_on_attempt).min(2)
                        } else {
                            1
                        };
                        *sent_on_attempt += 1;
                        *silent_sends += u32::from(direct);
                        *next_retransmit = now + retransmit * backoff;
                        self.out.transmits.push_back(path.transmit(request));
                    }
                }
            }
            PeerState::AwaitingRequest { deadline } if now >= *deadline => {
                failed = Some(EstablishmentFailed::NoRequest);
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
}

/// How soon a grant renewal is asked for again while no new route came.
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Ephemeral keys of answered Tunnel Requests remembered per route: a
/// rekey every two minutes keeps about two hours of them.
const MAX_ANSWERED: usize = 64;

/// A tunnel handle for `peer` with the keys of a handshake; its stats
/// carry on from the tunnel it replaces.
fn new_handle(
    peer: &Peer,
    path: Path,
    keys: &handshake::SessionKeys,
    confirmed: bool,
) -> TunnelHandle {
    TunnelHandle {
        fqdn: peer.fqdn.to_string(),
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
        confirmed: Arc::new(AtomicBool::new(confirmed)),
        filter: peer.filter.clone(),
        mtu: peer
            .tunnel
            .as_ref()
            .map(|t| t.mtu.clone())
            .unwrap_or_default(),
    }
}

/// Tunnel Requests held before their route's direction reached us.
const MAX_EARLY_REQUESTS: usize = 8;
const EARLY_REQUEST_LIFETIME: Duration = Duration::from_secs(2);

/// Tunnel Requests for routes not directed yet: the initiator's request
/// can overtake our Route Direction (pattern 2 with the CN behind the
/// NAT), so a few are held briefly and answered once it arrives.
#[derive(Default)]
pub(crate) struct EarlyRequests {
    held: VecDeque<(Instant, Path, Vec<u8>)>,
}

impl EarlyRequests {
    pub fn hold(&mut self, now: Instant, path: Path, packet: &[u8]) {
        while self.held.len() >= MAX_EARLY_REQUESTS {
            self.held.pop_front();
        }
        self.held.push_back((now, path, packet.to_vec()));
    }

    /// The fresh requests for a route `ours` accepts, in arrival order;
    /// the other fresh ones stay, stale ones go.
    pub fn take(&mut self, now: Instant, ours: impl Fn(RouteId) -> bool) -> Vec<(Path, Vec<u8>)> {
        let mut taken = Vec::new();
        for (at, path, packet) in std::mem::take(&mut self.held) {
            let fresh = now.saturating_duration_since(at) < EARLY_REQUEST_LIFETIME;
            if fresh && handshake::peek_request(&packet).is_ok_and(|h| ours(h.route_id)) {
                taken.push((path, packet));
            } else if fresh {
                self.held.push_back((at, path, packet));
            }
        }
        taken
    }
}

/// Checks a peer's handshake identity: its certificate chains to our root,
/// names the expected FQDN and the virtual IPs the route direction gives
/// the peer, is valid now, carries the serial the NMS vouched for, and its
/// key signed the peer's static key.
struct CertCheck {
    verifier: Verifier,
    fqdn: String,
    serial: u64,
    vips: [IpAddr; 2],
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
        if let Some(missing) = self.vips.iter().find(|v| !node.vips.contains(v)) {
            return Err(format!(
                "the route gives the peer virtual IP {missing}, which its certificate does not \
                 carry (it carries {:?})",
                node.vips
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::peers::tests::peer;

    #[test]
    fn attempts_go_direct_first_and_relayed_routes_only_to_the_relay() {
        let now = Instant::now();
        let mut p = peer(1, 1, now, PeerState::Established);
        let e1 = "192.0.2.21:4501".parse().expect("addr");
        let e2 = "198.51.100.21:4501".parse().expect("addr");
        p.direction.peer.endpoints = vec![e1, e2];
        assert_eq!(attempt_paths(&p), vec![Path::udp(e1), Path::udp(e2)]);
        p.relay = RelayState::new(
            cyphonic_proto::signal::RelayOffer {
                relay_id: cyphonic_proto::RelayId(9),
                side: 0,
                expires: u64::MAX,
                key: [1; 32],
                servers: vec!["192.0.2.1:4503".parse().expect("addr")],
                quic_port: 0,
                tcp_port: 0,
            },
            &["192.0.2.50:4501".parse().expect("addr")],
            None,
            super::super::types::Transport::Udp,
            now,
        );
        let relay = p
            .relay
            .as_ref()
            .and_then(RelayState::path)
            .expect("relay path");
        assert_eq!(attempt_paths(&p), vec![Path::udp(e1), Path::udp(e2), relay]);
        p.direction.pattern = RoutePattern::Relayed;
        assert_eq!(attempt_paths(&p), vec![relay]);
    }

    #[test]
    fn early_requests_are_bounded_and_stale_ones_dropped() {
        let t0 = Instant::now();
        let mut e = EarlyRequests::default();
        let path = Path::udp("192.0.2.21:4501".parse().expect("addr"));
        // Not a Tunnel Request at all: never taken, dropped when stale.
        for i in 0..(MAX_EARLY_REQUESTS as u8 + 3) {
            e.hold(t0, path, &[0xff, i]);
        }
        assert_eq!(e.held.len(), MAX_EARLY_REQUESTS);
        assert_eq!(e.held.front().map(|h| h.2[1]), Some(3), "oldest dropped");
        assert!(e.take(t0, |_| true).is_empty());
        assert_eq!(e.held.len(), MAX_EARLY_REQUESTS);
        assert!(e.take(t0 + EARLY_REQUEST_LIFETIME, |_| true).is_empty());
        assert!(e.held.is_empty());
    }

    #[test]
    fn establishment_wakes_at_retransmission_or_deadline() {
        let now = Instant::now();
        let s = PeerState::AwaitingRequest {
            deadline: now + Duration::from_secs(12),
        };
        assert_eq!(s.wake(), Some(now + Duration::from_secs(12)));
        assert_eq!(s.describe(), "awaiting-request");
        assert_eq!(PeerState::Established.wake(), None);
        let f = PeerState::Failed {
            reason: EstablishmentFailed::NoPath,
        };
        assert_eq!(f.describe(), "failed: no path to try");
    }

    #[test]
    fn each_handshake_gets_fresh_randomness_and_the_generator_moves_on() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut a = ephemeral_rng(&mut rng);
        let mut b = ephemeral_rng(&mut rng);
        let (x, y): (u64, u64) = (a.gen(), b.gen());
        assert_ne!(x, y);
        let mut again = StdRng::seed_from_u64(5);
        let mut a2 = ephemeral_rng(&mut again);
        assert_eq!(a2.gen::<u64>(), x, "seeded: repeatable");
    }
}
