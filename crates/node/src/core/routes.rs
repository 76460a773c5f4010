//! Route directions from the NMS: checked, turned into a peer entry (with
//! its relay end), and set going: the Tunnel Request if we initiate,
//! punches, the relay Bind, and the DNS queries that waited for the route.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cyphonic_proto::signal::{CertStatus, Message, RouteDirection, RoutePattern};
use hickory_proto::op::ResponseCode;

use super::peers::Peer;
use super::relay::RelayState;
use super::tunnel::PeerState;
use super::types::{NodeEvent, Transport, TunnelRole};
use super::Node;
use crate::resolver;
use cyphonic_proto::Fqdn;

/// Why a route direction is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectionRefused {
    #[error("peer certificate status is {0:?}")]
    CertStatus(CertStatus),
    #[error("route direction names our own VIP")]
    OwnVip,
    #[error("peer VIPs are outside the overlay ranges")]
    OutsideOverlay,
    /// Another peer this node has a working tunnel with holds the VIP.
    #[error("the peer's VIP {vip} belongs to {holder}")]
    VipTaken {
        vip: std::net::IpAddr,
        holder: String,
    },
}

/// Whether `ip` lies in the overlay's VIP ranges: the shared address
/// space 100.64.0.0/10 (RFC 6598) or the unique local fc00::/7 (RFC 4193).
pub(crate) fn overlay_vip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        std::net::IpAddr::V6(v6) => v6.segments()[0] & 0xfe00 == 0xfc00,
    }
}

/// Why the tunnel takes the path its route's pattern gives, for status.
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

impl Node {
    /// Route Direction to the responder (this node is the CN): remember the
    /// route, confirm it, and set up our side of it: send the Tunnel Request
    /// if the NMS says we initiate (we are behind the NAT), punch, bind the
    /// relay.
    pub(super) fn on_direction_to_responder(
        &mut self,
        now: Instant,
        txid: u64,
        direction: RouteDirection,
    ) {
        let route_id = direction.route_id;
        if self.peers.name_by_route(route_id).is_none() {
            if let Err(e) = self.check_direction(&direction) {
                tracing::warn!(peer = %direction.peer.fqdn, error = %e, "refusing route direction");
                return;
            }
            let fqdn = resolver::normalize(&direction.peer.fqdn);
            tracing::info!(peer = %fqdn, pattern = direction.pattern.as_str(), initiate = direction.initiate, punch = direction.punch, relay = direction.relay.is_some(), spray = ?direction.spray, "Route Direction to Responder");
            // Both ends asked for the same pair at once (both moved): the
            // NMS serves the first request and ignores the second, so the
            // route we were directed to supersedes our own request.
            self.signaling.cancel_directions(&fqdn);
            let (vip4, vip6) = (direction.peer.vip4, direction.peer.vip6);
            self.setup_route(now, direction);
            self.dns.set_negative(now, &fqdn, false);
            self.dns.answer(&fqdn, Ok((vip4, vip6)), &mut self.out);
        }
        self.signaling.seal_to_nms(
            txid,
            Message::RouteDirectionConfirmation { route_id },
            &mut self.out,
        );
    }

    /// Route Direction to the initiator (this node is the MN): answer the
    /// DNS queries waiting for it, then set up our side of the route. A
    /// route asked for before a move is set up (it may well work) and
    /// selected anew once the NMS has our new registration.
    pub(super) fn on_direction_to_initiator(
        &mut self,
        now: Instant,
        target: Fqdn,
        before_move: bool,
        direction: RouteDirection,
    ) {
        let fqdn = resolver::normalize(&direction.peer.fqdn);
        if fqdn != target {
            tracing::warn!(asked = %target, got = %direction.peer.fqdn, "route direction for another name");
            self.dns
                .answer(&target, Err(ResponseCode::ServFail), &mut self.out);
            return;
        }
        if let Err(e) = self.check_direction(&direction) {
            tracing::warn!(peer = %direction.peer.fqdn, error = %e, "refusing route direction");
            self.dns
                .answer(&fqdn, Err(ResponseCode::ServFail), &mut self.out);
        } else {
            let (vip4, vip6) = (direction.peer.vip4, direction.peer.vip6);
            tracing::info!(peer = %fqdn, pattern = direction.pattern.as_str(), initiate = direction.initiate, punch = direction.punch, relay = direction.relay.is_some(), spray = ?direction.spray, endpoints = ?direction.peer.endpoints, "Route Direction to Initiator");
            self.setup_route(now, direction);
            self.dns.set_negative(now, &fqdn, false);
            self.dns.answer(&fqdn, Ok((vip4, vip6)), &mut self.out);
        }
        if before_move {
            // Select it anew after the re-registration, or now if that is
            // done (`reroute_when_registered` was taken).
            tracing::info!(peer = %target, "route selected before the move; selecting it again");
            if let Some(mut peer) = self.peers.get_mut(&target) {
                peer.reroute = true;
            }
            if !std::mem::replace(&mut self.reroute_when_registered, true) {
                self.reroute_peers(now);
            }
        }
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
        let vips = [direction.peer.vip4.into(), direction.peer.vip6.into()];
        if direction.via == Transport::Quic {
            for addr in &direction.peer.endpoints {
                self.out.events.push_back(NodeEvent::LegName {
                    addr: *addr,
                    fqdn: fqdn.to_string(),
                });
            }
        }
        self.install_peer(
            now,
            direction,
            role,
            PeerState::AwaitingRequest { deadline },
        );
        let natted = self.signaling.nat() != cyphonic_proto::nat::NatKind::None;
        if let Some(mut peer) = self.peers.get_mut(&fqdn) {
            if punch {
                peer.punch_until = Some(now + self.config.handshake_timeout);
                peer.low_ttl_until = natted.then_some(now + super::path::LOW_TTL_WINDOW);
                peer.next_punch = now;
            }
        }
        self.send_relay_bind(now, &fqdn);
        self.send_punches(now, &fqdn);
        if initiate {
            self.start_handshake(now, &fqdn);
        } else {
            let peers = &self.peers;
            let early = self
                .early
                .take(now, |route_id| peers.name_by_route(route_id) == Some(&fqdn));
            for (path, packet) in early {
                self.on_tunnel_request(now, path, &packet);
            }
        }
        self.vips_routed(now, vips);
    }

    fn check_direction(&self, d: &RouteDirection) -> Result<(), DirectionRefused> {
        if d.peer.cert_status != CertStatus::Good {
            return Err(DirectionRefused::CertStatus(d.peer.cert_status));
        }
        if self.revoked.contains(&d.peer.cert_serial) {
            return Err(DirectionRefused::CertStatus(CertStatus::Revoked));
        }
        if self.signaling.login().map(|l| l.vip4) == Some(d.peer.vip4) {
            return Err(DirectionRefused::OwnVip);
        }
        // A route never takes over the VIP of another peer whose tunnel
        // works: packets for that VIP would go to the newcomer. A failed
        // peer's VIPs are free (the NMS may have given them anew).
        for vip in [
            std::net::IpAddr::V4(d.peer.vip4),
            std::net::IpAddr::V6(d.peer.vip6),
        ] {
            let holder = self.peers.name_by_vip(vip).and_then(|n| self.peers.get(n));
            if let Some(h) = holder.filter(|h| *h.fqdn != *resolver::normalize(&d.peer.fqdn)) {
                if !h.failed() {
                    return Err(DirectionRefused::VipTaken {
                        vip,
                        holder: h.fqdn.to_string(),
                    });
                }
            }
        }
        if !overlay_vip(d.peer.vip4.into()) || !overlay_vip(d.peer.vip6.into()) {
            return Err(DirectionRefused::OutsideOverlay);
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
        if !self.peers.contains(&fqdn) && self.peers.len() >= self.config.max_peers {
            // Peers whose establishment failed hold nothing worth keeping:
            // they make room (and leave the data plane if an older tunnel
            // of theirs was still there).
            for gone in self.peers.evict_failed() {
                if let Some(t) = gone.tunnel {
                    self.out.events.push_back(NodeEvent::TunnelDown {
                        fqdn: gone.fqdn.to_string(),
                        local_index: t.recv.local_index(),
                    });
                }
            }
            if self.peers.len() >= self.config.max_peers {
                tracing::warn!(peer = %fqdn, "peer table full");
                return;
            }
        }
        let local_index = self.peers.fresh_index(&mut self.rng, self.config.index_tag);
        // A new route replaces the old one; the data plane keeps the old
        // tunnel until the new one is up (TunnelUp for the same VIPs), so
        // traffic flows during re-establishment.
        // The kept tunnel keeps its keys' age: it is refused as it would
        // have been.
        let (queue, tunnel, keys_at, prev, filter) = match self.peers.remove(&fqdn) {
            Some(old) => (old.queue, old.tunnel, old.keys_at, old.prev, old.filter),
            None => (VecDeque::new(), None, now, None, Default::default()),
        };
        // One filter per route, shared with the tunnel kept meanwhile: the
        // new direction's rules apply to it at once.
        filter.set(direction.filter.as_ref());
        let observed_v6 = self.signaling.observed().map(|o| o.is_ipv6());
        let relay = direction.relay.clone().and_then(|offer| {
            RelayState::new(
                offer,
                self.signaling.local_addrs(),
                observed_v6,
                self.signaling.transport(),
                now,
            )
        });
        let path_note = path_reason(&direction);
        // Renew the grant three quarters into its life: a new route, whose
        // tunnel replaces this one's without a gap.
        let unix = self
            .wall(now)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let grant_renew_at = relay.as_ref().and_then(|r| {
            let left = r.expires().checked_sub(unix)?;
            (left < 366 * 86_400).then(|| now + Duration::from_secs(left * 3 / 4))
        });
        self.peers.insert(Peer {
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
            low_ttl_until: None,
            next_punch: now,
            next_keepalive: now + self.config.keepalive,
            rx_seen: 0,
            stale_ticks: 0,
            dead_rounds: 0,
            path_since: now,
            path_note,
            reroute: false,
            relayed_rounds: 0,
            probes: VecDeque::new(),
            spray: None,
            spray_next: now,
            spray_backoff: super::spray::SPRAY_RETRY,
            held: false,
            keys_at,
            reject_after: self.config.reject_after,
            next_rekey: keys_at + self.config.rekey_after,
            rekey: None,
            pending: None,
            confirm_by: None,
            prev,
            answered: VecDeque::new(),
            grant_renew_at,
            mapped: Vec::new(),
            filter,
            pmtu: None,
        });
    }
}
