//! The peer table: one entry per peer FQDN, with its indexes by VIP, by
//! our local index and by route ID, and the peers' timers, all kept
//! consistent here and nowhere else.
//!
//! A peer is changed through [`PeerMut`], which puts the peer's next
//! deadline back into the timer table when it goes out of scope, so no
//! change of a peer can leave a stale timer behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::time::{Instant, SystemTime};

use cyphonic_proto::signal::RouteDirection;
use cyphonic_proto::{Fqdn, LocalIndex, RouteId};
use rand::rngs::StdRng;
use rand::Rng;

use super::relay::RelayState;
use super::timers::Timers;
use super::tunnel::PeerState;
use super::types::{Path, TimerReason, TunnelHandle, TunnelRole};

pub(crate) struct Peer {
    pub fqdn: Fqdn,
    pub direction: RouteDirection,
    pub role: TunnelRole,
    pub local_index: LocalIndex,
    pub state: PeerState,
    pub tunnel: Option<TunnelHandle>,
    /// The last Tunnel Request we answered and our answer, so a
    /// retransmitted request gets the same answer and the same keys.
    pub last_request: Option<(Vec<u8>, Vec<u8>)>,
    pub last_handshake: Option<SystemTime>,
    pub queue: VecDeque<Vec<u8>>,
    pub relay: Option<RelayState>,
    /// Punch packets go to the peer's endpoints until then.
    pub punch_until: Option<Instant>,
    /// Punches before then go with a TTL that dies past our own NAT.
    pub low_ttl_until: Option<Instant>,
    pub next_punch: Instant,
    /// Keepalives, probes and the liveness check of an established tunnel.
    pub next_keepalive: Instant,
    pub rx_seen: u64,
    pub stale_ticks: u32,
    /// Liveness verdicts "dead" since the peer was last heard.
    pub dead_rounds: u32,
    /// When the tunnel took its current path.
    pub path_since: Instant,
    /// Why the tunnel takes its current path, for status.
    pub path_note: String,
    /// Select this peer's route again after the registration that follows
    /// a move.
    pub reroute: bool,
    /// Keepalive ticks spent on the relay since the last path change
    /// (paces the probes of direct paths).
    pub relayed_rounds: u32,
    /// Path probes in flight: (nonce, path, sent at).
    pub probes: VecDeque<(u64, Path, Instant)>,
    /// Birthday punching, behind the easy NAT: the probes of the attempt
    /// under way (or the last one).
    pub spray: Option<super::spray::SprayRun>,
    /// Behind the hard NAT: when the next attempt may open spare ports, and
    /// the wait after it.
    pub spray_next: Instant,
    pub spray_backoff: std::time::Duration,
    /// The tunnel's path went with a move: application packets wait in
    /// `queue` until it is back.
    pub held: bool,
    /// When the tunnel's current keys were made (its handshake).
    pub keys_at: Instant,
    /// Keys are refused this long after their handshake (the node's
    /// `reject_after`).
    pub reject_after: std::time::Duration,
    /// The initiator's next rekey (set when a tunnel comes up; pushed back
    /// after a rekey that got no answer).
    pub next_rekey: Instant,
    /// A rekey handshake in flight (we initiate).
    pub rekey: Option<Rekey>,
    /// Keys we answered a rekey with, not yet used by the peer, and when.
    pub pending: Option<(TunnelHandle, Instant)>,
    /// The responder's keys of a first handshake wait for the initiator's
    /// first packet under them before they send (key confirmation), at
    /// most until then: the initiator may not have them yet, and what we
    /// sent would be dropped as of an unknown index.
    pub confirm_by: Option<Instant>,
    /// The receive key the current keys replaced, and when it was made:
    /// packets in flight under it still arrive until it is too old.
    pub prev: Option<(std::sync::Arc<cyphonic_proto::data::RecvKey>, Instant)>,
    /// Ephemeral keys of the Tunnel Requests answered on this route (the
    /// newest last, bounded): a replayed request is refused.
    pub answered: VecDeque<[u8; 32]>,
    /// When the initiator asks for the route again, before its relay
    /// grant ends (three quarters into the grant's life).
    pub grant_renew_at: Option<Instant>,
    /// The local indexes the peer table maps to this peer (the table's
    /// own; empty in a new peer).
    pub mapped: Vec<LocalIndex>,
    /// The route's access policy and flow table, shared with its tunnels.
    pub filter: std::sync::Arc<crate::filter::FlowFilter>,
    /// Path MTU discovery on the tunnel's current path.
    pub pmtu: Option<super::pmtu::Search>,
}

impl Peer {
    /// When this peer next has something to do, and why.
    pub fn wake(&self) -> Option<(Instant, TimerReason)> {
        let handshake = self.state.wake().map(|t| (t, TimerReason::Handshake));
        let punch = self
            .punch_until
            .filter(|u| self.next_punch < *u)
            .map(|_| self.next_punch);
        let bind = self.relay.as_ref().map(|r| r.next_bind);
        let spray = self
            .spray
            .as_ref()
            .filter(|r| !r.done())
            .map(|r| r.next_at)
            .or_else(|| self.spray_due());
        let keepalive = matches!(self.state, PeerState::Established).then_some(self.next_keepalive);
        let pmtu = self
            .pmtu
            .as_ref()
            .filter(|_| matches!(self.state, PeerState::Established) && self.confirm_by.is_none())
            .map(super::pmtu::Search::deadline);
        let rekey = self
            .rekey
            .as_ref()
            .map(|r| r.next_retransmit.min(r.deadline));
        // The keys' own deadlines: the initiator's next rekey, and when
        // each live key (current, replaced, awaiting confirmation) must be
        // refused.
        let live = self.tunnel.as_ref().filter(|t| !t.send.retired());
        let next_rekey = (self.role == TunnelRole::Initiator
            && matches!(self.state, PeerState::Established)
            && self.rekey.is_none()
            && live.is_some())
        .then_some(self.next_rekey);
        let keys = [
            next_rekey,
            live.map(|_| self.keys_at + self.reject_after),
            self.prev
                .as_ref()
                .map(|(_, made)| *made + self.reject_after),
            self.pending
                .as_ref()
                .map(|(_, made)| *made + self.reject_after),
        ]
        .into_iter()
        .flatten()
        .min();
        let renew = self
            .grant_renew_at
            .filter(|_| self.role == TunnelRole::Initiator);
        let rekey = rekey
            .into_iter()
            .chain(keys)
            .chain(renew)
            .chain(self.confirm_by)
            .min();
        handshake
            .into_iter()
            .chain(
                [punch, bind, keepalive, spray, pmtu]
                    .into_iter()
                    .flatten()
                    .map(|t| (t, TimerReason::Path))
                    .chain(rekey.map(|t| (t, TimerReason::Handshake))),
            )
            .min_by_key(|(t, _)| *t)
    }

    /// Behind the hard NAT of a birthday-punching route: when the next
    /// attempt opens spare ports (its tunnel up and confirmed, on the
    /// relay).
    pub fn spray_due(&self) -> Option<Instant> {
        let relayed = self.tunnel.as_ref().is_some_and(|t| t.path.is_relay());
        (self.direction.spray == cyphonic_proto::signal::Spray::OpenPorts
            && matches!(self.state, PeerState::Established)
            && self.confirm_by.is_none()
            && relayed)
            .then_some(self.spray_next)
    }

    pub fn failed(&self) -> bool {
        matches!(self.state, PeerState::Failed { .. })
    }

    /// Our indexes whose packets belong to this peer: the handshake's, the
    /// tunnel's, the keys awaiting confirmation and the replaced ones.
    fn indexes(&self) -> Vec<LocalIndex> {
        let mut v = vec![self.local_index];
        v.extend(self.tunnel.as_ref().map(|t| t.recv.local_index()));
        v.extend(self.pending.as_ref().map(|(t, _)| t.recv.local_index()));
        v.extend(self.prev.as_ref().map(|(k, _)| k.local_index()));
        v.sort();
        v.dedup();
        v
    }

    /// The tunnel's keys, from a handshake at `now`: sets when they are
    /// rekeyed and refused.
    pub fn keys_made(&mut self, now: Instant, rekey_after: std::time::Duration) {
        self.keys_at = now;
        self.next_rekey = now + rekey_after;
    }
}

/// The initiator's rekey in flight: a fresh handshake on the tunnel's path
/// while the tunnel keeps its keys.
pub(crate) struct Rekey {
    pub initiator: Box<cyphonic_proto::handshake::Initiator>,
    pub request: Vec<u8>,
    pub next_retransmit: Instant,
    pub deadline: Instant,
}

/// A peer being changed; its timer follows when this is dropped.
pub(crate) struct PeerMut<'a> {
    peer: &'a mut Peer,
    timers: &'a mut Timers<Fqdn>,
    by_index: &'a mut HashMap<LocalIndex, Fqdn>,
}

impl Deref for PeerMut<'_> {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        self.peer
    }
}

impl DerefMut for PeerMut<'_> {
    fn deref_mut(&mut self) -> &mut Peer {
        self.peer
    }
}

impl Drop for PeerMut<'_> {
    fn drop(&mut self) {
        let wake = self.peer.wake().map(|(t, _)| t);
        self.timers.set(self.peer.fqdn.clone(), wake);
        reindex(self.by_index, self.peer);
    }
}

/// Maps exactly `peer`'s indexes to it.
fn reindex(by_index: &mut HashMap<LocalIndex, Fqdn>, peer: &mut Peer) {
    let now = peer.indexes();
    if now == peer.mapped {
        return;
    }
    for i in &peer.mapped {
        if !now.contains(i) && by_index.get(i) == Some(&peer.fqdn) {
            by_index.remove(i);
        }
    }
    for i in &now {
        by_index.insert(*i, peer.fqdn.clone());
    }
    peer.mapped = now;
}

#[derive(Default)]
pub(crate) struct Peers {
    by_name: BTreeMap<Fqdn, Peer>,
    by_vip: HashMap<IpAddr, Fqdn>,
    by_index: HashMap<LocalIndex, Fqdn>,
    by_route: HashMap<RouteId, Fqdn>,
    timers: Timers<Fqdn>,
}

impl Peers {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn contains(&self, fqdn: &str) -> bool {
        self.by_name.contains_key(fqdn)
    }

    pub fn get(&self, fqdn: &str) -> Option<&Peer> {
        self.by_name.get(fqdn)
    }

    pub fn get_mut(&mut self, fqdn: &str) -> Option<PeerMut<'_>> {
        let peer = self.by_name.get_mut(fqdn)?;
        Some(PeerMut {
            peer,
            timers: &mut self.timers,
            by_index: &mut self.by_index,
        })
    }

    pub fn values(&self) -> impl Iterator<Item = &Peer> {
        self.by_name.values()
    }

    /// The spare ports (birthday punching) tunnels' paths go from, sorted.
    pub fn spare_ports_in_use(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .by_name
            .values()
            .filter_map(|p| p.tunnel.as_ref())
            .map(|t| t.path.leg().local)
            .filter(|k| *k != 0)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Changes every peer, in name order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut Peer)) {
        for (name, peer) in self.by_name.iter_mut() {
            f(peer);
            self.timers.set(name.clone(), peer.wake().map(|(t, _)| t));
            reindex(&mut self.by_index, peer);
        }
    }

    pub fn name_by_vip(&self, vip: IpAddr) -> Option<&Fqdn> {
        self.by_vip.get(&vip)
    }

    pub fn name_by_index(&self, local_index: LocalIndex) -> Option<&Fqdn> {
        self.by_index.get(&local_index)
    }

    pub fn name_by_route(&self, route_id: RouteId) -> Option<&Fqdn> {
        self.by_route.get(&route_id)
    }

    /// A local index no peer has (never 0), with `tag` as its top byte
    /// when given.
    pub fn fresh_index(&self, rng: &mut StdRng, tag: Option<u8>) -> LocalIndex {
        loop {
            let i: u32 = match tag {
                None => rng.gen(),
                Some(t) => (rng.gen::<u32>() & 0x00ff_ffff) | (u32::from(t) << 24),
            };
            if i & 0x00ff_ffff != 0 && !self.by_index.contains_key(&LocalIndex(i)) {
                return LocalIndex(i);
            }
        }
    }

    /// Gives a peer a new local index (a new handshake).
    pub fn set_local_index(&mut self, fqdn: &str, local_index: LocalIndex) {
        if let Some(mut peer) = self.get_mut(fqdn) {
            peer.local_index = local_index;
        }
    }

    /// Adds a peer, replacing (and returning) the one of the same name.
    pub fn insert(&mut self, mut peer: Peer) -> Option<Peer> {
        let name = peer.fqdn.clone();
        let old = self.remove(&name);
        let d = &peer.direction;
        self.by_vip.insert(IpAddr::V4(d.peer.vip4), name.clone());
        self.by_vip.insert(IpAddr::V6(d.peer.vip6), name.clone());
        self.by_route.insert(d.route_id, name.clone());
        peer.mapped.clear();
        reindex(&mut self.by_index, &mut peer);
        self.timers.set(name.clone(), peer.wake().map(|(t, _)| t));
        self.by_name.insert(name, peer);
        old
    }

    pub fn remove(&mut self, fqdn: &str) -> Option<Peer> {
        let peer = self.by_name.remove(fqdn)?;
        self.timers.remove(&peer.fqdn);
        for i in &peer.mapped {
            if self.by_index.get(i) == Some(&peer.fqdn) {
                self.by_index.remove(i);
            }
        }
        self.by_route.remove(&peer.direction.route_id);
        for vip in [
            IpAddr::V4(peer.direction.peer.vip4),
            IpAddr::V6(peer.direction.peer.vip6),
        ] {
            if self.by_vip.get(&vip).map(Fqdn::as_str) == Some(fqdn) {
                self.by_vip.remove(&vip);
            }
        }
        Some(peer)
    }

    /// Removes every peer whose tunnel establishment failed, to make room;
    /// returns them (their tunnels, if any, leave the data plane).
    pub fn evict_failed(&mut self) -> Vec<Peer> {
        let failed: Vec<Fqdn> = self
            .by_name
            .iter()
            .filter(|(_, p)| p.failed())
            .map(|(n, _)| n.clone())
            .collect();
        failed.iter().filter_map(|n| self.remove(n)).collect()
    }

    /// The earliest peer timer, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let (t, name) = self.timers.next()?;
        let reason = self
            .by_name
            .get(name)
            .and_then(Peer::wake)
            .map_or(TimerReason::Path, |(_, r)| r);
        Some((t, reason))
    }

    /// The peers with something due at `now`, in name order.
    pub fn due(&self, now: Instant) -> Vec<Fqdn> {
        self.timers.due(now)
    }

    #[cfg(test)]
    pub fn check_indexes(&self) {
        for (name, peer) in &self.by_name {
            for i in peer.indexes() {
                assert_eq!(self.by_index.get(&i), Some(name));
            }
            assert_eq!(self.by_route.get(&peer.direction.route_id), Some(name));
        }
        assert_eq!(
            self.by_index.len(),
            self.by_name
                .values()
                .map(|p| p.indexes().len())
                .sum::<usize>()
        );
        assert_eq!(self.by_route.len(), self.by_name.len());
        assert!(self.by_vip.values().all(|n| self.by_name.contains_key(n)));
        assert_eq!(
            self.timers.len(),
            self.by_name.values().filter(|p| p.wake().is_some()).count()
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cyphonic_proto::signal::{CertStatus, PeerInfo, RoutePattern};
    use cyphonic_proto::Transport;
    use rand::SeedableRng;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    /// Route `route_id` to peer `p<i>`, whose VIPs are 100.64.0.0 + i + 2
    /// and fd00::(i + 2) (a node under test has .1 and ::1).
    pub fn direction(i: u32, route_id: u64) -> RouteDirection {
        let v = i + 2;
        RouteDirection {
            route_id: RouteId(route_id),
            pattern: RoutePattern::Direct,
            initiate: true,
            punch: false,
            spray: Default::default(),
            tunnel_key: [0; 32],
            relay: None,
            via: Transport::Udp,
            filter: None,
            peer: PeerInfo {
                fqdn: format!("p{i}.cyphonic.internal"),
                vip4: Ipv4Addr::new(100, 64 + (v >> 16) as u8, (v >> 8) as u8, v as u8),
                vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, (v >> 16) as u16, v as u16),
                static_public: [0; 32],
                cert_serial: 1,
                cert_status: CertStatus::Good,
                endpoints: Vec::new(),
            },
        }
    }

    pub fn peer(i: u32, local_index: u32, now: Instant, state: PeerState) -> Peer {
        let direction = direction(i, 1000 + i as u64);
        Peer {
            fqdn: Fqdn::new(&direction.peer.fqdn),
            direction,
            role: TunnelRole::Initiator,
            local_index: LocalIndex(local_index),
            state,
            tunnel: None,
            last_request: None,
            last_handshake: None,
            queue: VecDeque::new(),
            relay: None,
            punch_until: None,
            low_ttl_until: None,
            next_punch: now,
            next_keepalive: now + Duration::from_secs(5),
            rx_seen: 0,
            stale_ticks: 0,
            dead_rounds: 0,
            path_since: now,
            path_note: String::new(),
            reroute: false,
            relayed_rounds: 0,
            probes: VecDeque::new(),
            spray: None,
            spray_next: now,
            spray_backoff: crate::core::spray::SPRAY_RETRY,
            held: false,
            keys_at: now,
            reject_after: Duration::from_secs(180),
            next_rekey: now,
            rekey: None,
            pending: None,
            confirm_by: None,
            prev: None,
            answered: VecDeque::new(),
            grant_renew_at: None,
            mapped: Vec::new(),
            filter: Default::default(),
            pmtu: None,
        }
    }

    #[test]
    fn indexes_follow_inserts_replacements_and_removals() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let deadline = now + Duration::from_secs(3);
        peers.insert(peer(1, 11, now, PeerState::AwaitingRequest { deadline }));
        peers.insert(peer(2, 22, now, PeerState::AwaitingRequest { deadline }));
        peers.check_indexes();
        let name = "p1.cyphonic.internal";
        assert_eq!(
            peers.name_by_index(LocalIndex(11)).map(Fqdn::as_str),
            Some(name)
        );
        assert_eq!(
            peers
                .name_by_vip(Ipv4Addr::new(100, 64, 0, 3).into())
                .map(Fqdn::as_str),
            Some(name)
        );
        // A new route for the same peer replaces the old one everywhere.
        let mut again = peer(1, 33, now, PeerState::AwaitingRequest { deadline });
        again.direction.route_id = RouteId(77);
        let old = peers.insert(again).expect("replaced");
        assert_eq!(old.local_index, LocalIndex(11));
        assert!(peers.name_by_index(LocalIndex(11)).is_none());
        assert!(peers.name_by_route(RouteId(1001)).is_none());
        assert_eq!(
            peers.name_by_route(RouteId(77)).map(Fqdn::as_str),
            Some(name)
        );
        peers.set_local_index(name, LocalIndex(44));
        assert!(peers.name_by_index(LocalIndex(33)).is_none());
        peers.check_indexes();
        peers.remove(name);
        assert!(peers
            .name_by_vip(Ipv4Addr::new(100, 64, 0, 3).into())
            .is_none());
        peers.check_indexes();
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn a_change_through_get_mut_moves_the_peers_timer() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let deadline = now + Duration::from_secs(3);
        peers.insert(peer(1, 11, now, PeerState::AwaitingRequest { deadline }));
        assert_eq!(
            peers.poll_timeout(),
            Some((deadline, TimerReason::Handshake))
        );
        assert!(peers.due(now).is_empty());
        {
            let mut p = peers.get_mut("p1.cyphonic.internal").expect("peer");
            p.state = PeerState::Established;
        }
        // Established: the keepalive is the next thing to do.
        assert_eq!(
            peers.poll_timeout(),
            Some((now + Duration::from_secs(5), TimerReason::Path))
        );
        peers.for_each_mut(|p| p.next_keepalive = now);
        assert_eq!(peers.due(now), vec!["p1.cyphonic.internal".to_string()]);
        peers.check_indexes();
    }

    #[test]
    fn failed_peers_make_room() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let mut rng = StdRng::seed_from_u64(1);
        for i in 0..10 {
            let state = if i % 2 == 0 {
                PeerState::Failed {
                    reason: crate::core::tunnel::EstablishmentFailed::NoRequest,
                }
            } else {
                PeerState::Established
            };
            let index = peers.fresh_index(&mut rng, None);
            peers.insert(peer(i, index.0, now, state));
        }
        let gone = peers.evict_failed();
        assert_eq!(gone.len(), 5);
        assert_eq!(peers.len(), 5);
        assert!(peers.values().all(|p| !p.failed()));
        peers.check_indexes();
    }

    #[test]
    fn tagged_indexes_carry_their_tag() {
        let mut rng = StdRng::seed_from_u64(2);
        let peers = Peers::default();
        for _ in 0..1000 {
            let i = peers.fresh_index(&mut rng, Some(0xa5));
            assert_eq!(i.0 >> 24, 0xa5);
            assert_ne!(i.0 & 0x00ff_ffff, 0);
        }
    }
}
