//! Several identities in one process: a [`Host`] holds one [`Node`] core
//! per identity (its own certificate, Login, NMS session, VIPs, peers and
//! tunnels) behind one tunnel port, one TUN device and one data plane, and
//! hands each datagram to the node it belongs to. The adapter serves its
//! general nodes this way: one identity per general node.
//!
//! What names the node, by packet type (`docs/architecture.md`, "Many
//! identities"):
//!
//! | packet | demultiplexed by |
//! |---|---|
//! | signaling | the session ID in its clear header |
//! | Tunnel Request | its route ID: the identity that responds on that route |
//! | Tunnel Response, data | the top byte of the receiver index ([`crate::core::NodeConfig::index_tag`]) |
//! | Relay Bind Ack | the route ID (a relay session's ID is its route's) and the Bind's side |
//! | punch | the route ID |
//!
//! Two identities of one host may be the two ends of one route (they reach
//! each other like any two nodes, through the shared port); the role and
//! the relay side tell them apart.
//!
//! A Tunnel Request whose route no node knows yet (it overtook the Route
//! Direction) goes to every node; each holds it as an early request and
//! only the one the direction then reaches answers it.
//!
//! The host is sans-IO like the node: inputs take `now`, outputs are
//! polled, each tagged with the identity it concerns.

use std::collections::BTreeMap;
use std::time::Instant;

use cyphonic_proto::handshake;
use cyphonic_proto::relay::{self, Bind};
use cyphonic_proto::signal;
use cyphonic_proto::{LocalIndex, RouteId};

use crate::core::{Leg, Node, NodeEvent, TimerReason, Transmit, TunnelRole};

/// An identity's slot in the host: the tag of its local indexes.
pub type IdentityId = u8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the node has no index tag: set NodeConfig::index_tag")]
    NoIndexTag,
    #[error("identity {0} is taken")]
    Taken(IdentityId),
}

/// Datagrams no identity could take, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostCounters {
    pub unknown_session: u64,
    pub unknown_index: u64,
    pub unknown_route: u64,
    pub malformed: u64,
}

#[derive(Default)]
pub struct Host {
    nodes: BTreeMap<IdentityId, Node>,
    counters: HostCounters,
}

/// The identity whose index this is.
pub fn identity_of_index(local_index: LocalIndex) -> IdentityId {
    (local_index.0 >> 24) as u8
}

impl Host {
    /// Adds a node, whose `index_tag` becomes its identity.
    pub fn add(&mut self, node: Node) -> Result<IdentityId, HostError> {
        let id = node.config().index_tag.ok_or(HostError::NoIndexTag)?;
        if self.nodes.contains_key(&id) {
            return Err(HostError::Taken(id));
        }
        self.nodes.insert(id, node);
        Ok(id)
    }

    pub fn remove(&mut self, id: IdentityId) -> Option<Node> {
        self.nodes.remove(&id)
    }

    pub fn node(&self, id: IdentityId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub fn node_mut(&mut self, id: IdentityId) -> Option<&mut Node> {
        self.nodes.get_mut(&id)
    }

    pub fn identities(&self) -> impl Iterator<Item = IdentityId> + '_ {
        self.nodes.keys().copied()
    }

    pub fn counters(&self) -> HostCounters {
        self.counters
    }

    /// Which identities a non-data datagram from the network is for.
    pub fn demux(&mut self, packet: &[u8]) -> Vec<IdentityId> {
        let inner = match packet.first() {
            Some(&relay::TYPE_RELAY_DATA) => match relay::parse_data(packet) {
                Ok(_) => &packet[relay::RELAY_HEADER_LEN..],
                Err(_) => {
                    self.counters.malformed += 1;
                    return Vec::new();
                }
            },
            _ => packet,
        };
        // The identities at an end of `route_id` that `fits` (role, side).
        let by_route = |nodes: &BTreeMap<IdentityId, Node>,
                        route_id: RouteId,
                        fits: &dyn Fn(TunnelRole, Option<u8>) -> bool| {
            nodes
                .iter()
                .filter(|(_, n)| n.route_end(route_id).is_some_and(|(r, s)| fits(r, s)))
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
        };
        let found = match inner.first() {
            Some(&signal::TYPE_SIGNALING) => match signal::peek_session(inner) {
                Ok(session) => {
                    let ids: Vec<_> = self
                        .nodes
                        .iter()
                        .filter(|(_, n)| n.session_id() == Some(session))
                        .map(|(id, _)| *id)
                        .collect();
                    if ids.is_empty() {
                        self.counters.unknown_session += 1;
                    }
                    return ids;
                }
                Err(_) => None,
            },
            Some(&handshake::TYPE_TUNNEL_REQUEST) => match handshake::peek_request(inner) {
                Ok(h) => {
                    let responder = |r: TunnelRole, _: Option<u8>| r == TunnelRole::Responder;
                    let ids = by_route(&self.nodes, h.route_id, &responder);
                    // Early: every node holds it until its direction comes.
                    return if ids.is_empty() {
                        self.nodes.keys().copied().collect()
                    } else {
                        ids
                    };
                }
                Err(_) => None,
            },
            Some(&handshake::TYPE_TUNNEL_RESPONSE) => match handshake::peek_response(inner) {
                Ok(h) => {
                    let id = identity_of_index(h.receiver_index);
                    if !self.nodes.contains_key(&id) {
                        self.counters.unknown_index += 1;
                        return Vec::new();
                    }
                    return vec![id];
                }
                Err(_) => None,
            },
            Some(&relay::TYPE_RELAY_BIND_ACK) => Bind::parse(inner)
                .ok()
                .map(|b| (b.relay_id.route_id(), Some(b.side))),
            Some(&relay::TYPE_RELAY_CHALLENGE) => relay::Challenge::parse(inner)
                .ok()
                .map(|c| (c.relay_id.route_id(), Some(c.side))),
            Some(&cyphonic_proto::TYPE_PUNCH) => {
                cyphonic_proto::punch::parse(inner).map(|r| (r, None))
            }
            _ => None,
        };
        match found {
            Some((route_id, side)) => {
                // A Bind Ack names the side it binds; a punch any end.
                let fits = |_: TunnelRole, s: Option<u8>| side.is_none() || s == side;
                let ids = by_route(&self.nodes, route_id, &fits);
                if ids.is_empty() {
                    self.counters.unknown_route += 1;
                }
                ids
            }
            None => {
                self.counters.malformed += 1;
                Vec::new()
            }
        }
    }

    /// A non-data datagram from the network, for the identities it names.
    pub fn handle_datagram(&mut self, now: Instant, from: Leg, packet: &[u8]) {
        for id in self.demux(packet) {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.handle_datagram(now, from, packet);
            }
        }
    }

    /// Wakes every node whose timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for n in self.nodes.values_mut() {
            if n.poll_timeout().is_some_and(|(t, _)| t <= now) {
                n.handle_timeout(now);
            }
        }
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        self.nodes
            .values()
            .filter_map(Node::poll_timeout)
            .min_by_key(|(t, _)| *t)
    }

    /// The next packet any identity sends (they share the tunnel port).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(IdentityId, Transmit)> {
        self.nodes
            .iter_mut()
            .find_map(|(id, n)| n.poll_transmit().map(|t| (*id, t)))
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<(IdentityId, NodeEvent)> {
        self.nodes
            .iter_mut()
            .find_map(|(id, n)| n.poll_event().map(|e| (*id, e)))
    }
}
