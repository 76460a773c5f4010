//! `cyphonic status`: a snapshot of the node's signaling, peers, counters
//! and moves, serialisable as the `--json` output.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use cyphonic_proto::signal::RoutePattern;
use serde::Serialize;

use super::path::path_kind;
use super::signaling::RouteSelections;
use super::types::{NodeCounters, PortMapping, TunnelRole, TunnelStats};
use super::Node;

impl Node {
    /// A snapshot for `cyphonic status`.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let sig = &self.signaling;
        let login = sig.login();
        // The device's name and VIPs stay its own (and on the TUN device)
        // while it is logged out.
        let identity = sig.identity();
        NodeStatus {
            fqdn: identity.map(|i| i.0.clone()),
            vip4: identity.map(|i| i.1),
            vip6: identity.map(|i| i.2),
            cloud: CloudStatus {
                nms: login.map(|l| l.nms),
                session: login.map(|l| format!("{:#x}", l.session_id.0)),
                logged_in: sig.logged_in(),
                registered: sig.registered(),
                observed: sig.observed(),
                observed_probe: sig.observed_probe(),
                nat: sig.nat().as_str().into(),
                local_addrs: sig.local_addrs().to_vec(),
                transport: sig.signaling_transport().as_str().into(),
                transport_forced: self.config.transport.is_some(),
                away: self.signaling.cloud_away(),
                refused: self.refused.clone(),
                port_mapping: self.port_mapping.clone(),
            },
            peers: self
                .peers
                .values()
                .map(|p| {
                    let stats = p.tunnel.as_ref().map(|t| &t.stats);
                    let load = |f: fn(&TunnelStats) -> &AtomicU64| {
                        stats.map(|s| f(s).load(Ordering::Relaxed)).unwrap_or(0)
                    };
                    PeerStatus {
                        fqdn: p.fqdn.to_string(),
                        vip4: p.direction.peer.vip4,
                        vip6: p.direction.peer.vip6,
                        role: p.role,
                        state: p.state.describe(),
                        pattern: p.direction.pattern.to_u8(),
                        path: match p.tunnel.as_ref() {
                            Some(t) => path_kind(t.path, p.direction.pattern).into(),
                            None => p.direction.pattern.as_str().into(),
                        },
                        path_reason: p.path_note.clone(),
                        transport: match p.tunnel.as_ref() {
                            Some(t) => t.path.transport(),
                            None if p.direction.pattern == RoutePattern::Relayed => {
                                p.relay.as_ref().map_or(sig.transport(), |r| r.transport)
                            }
                            None => p.direction.via,
                        }
                        .as_str()
                        .into(),
                        relay: p.relay.as_ref().and_then(|r| r.server()).map(|l| l.addr),
                        endpoint: p.tunnel.as_ref().map(|t| t.path.address()),
                        last_handshake_unix: p
                            .last_handshake
                            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                            .map(|d| d.as_secs()),
                        last_handshake_secs_ago: p
                            .last_handshake
                            .and_then(|t| self.wall(now).duration_since(t).ok())
                            .map(|d| d.as_secs()),
                        rx_bytes: load(|s| &s.rx_bytes),
                        tx_bytes: load(|s| &s.tx_bytes),
                        rx_packets: load(|s| &s.rx_packets),
                        tx_packets: load(|s| &s.tx_packets),
                        mtu: p.tunnel.as_ref().map(|t| {
                            t.mtu.limit().map_or(self.config.mtu, |m| {
                                m.min(usize::from(self.config.mtu)) as u16
                            })
                        }),
                        mtu_searching: p.pmtu.as_ref().is_some_and(|s| !s.settled()),
                    }
                })
                .collect(),
            counters: self.counters,
            route_selection: RouteSelectionStatus::of(sig.route_selections()),
            mobility: MobilityStatus {
                moves: self.mobility.moves,
                last_move: self.mobility.last.as_ref().map(|m| MoveStatus {
                    at_unix_ms: m
                        .wall
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    secs_ago: now.saturating_duration_since(m.at).as_secs(),
                    change: m.change.clone(),
                    tunnels_back_ms: m
                        .back
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_millis() as u64))
                        .collect(),
                }),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub fqdn: Option<String>,
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    pub cloud: CloudStatus,
    pub peers: Vec<PeerStatus>,
    pub counters: NodeCounters,
    pub route_selection: RouteSelectionStatus,
    pub mobility: MobilityStatus,
}

/// Route selection: how many Direction Requests the node sent, how long
/// the answered ones took (a histogram: bucket upper bounds in ms with the
/// cumulative count of each, as Prometheus's `le` buckets), how many
/// timed out.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSelectionStatus {
    pub started: u64,
    pub timed_out: u64,
    /// Answered, each with the time from its request to its answer: at
    /// most `le_ms` for `count` of them. Every answered one is at most
    /// +Inf: that is [`Self::count`].
    pub buckets: Vec<BucketStatus>,
    /// Answered ones (a route or a DirectionError).
    pub count: u64,
    /// Their latencies' sum, in milliseconds.
    pub sum_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BucketStatus {
    pub le_ms: u64,
    pub count: u64,
}

impl RouteSelectionStatus {
    fn of(r: &RouteSelections) -> Self {
        RouteSelectionStatus {
            started: r.started,
            timed_out: r.timed_out,
            buckets: r
                .answered
                .cumulative()
                .map(|(le_ms, count)| BucketStatus { le_ms, count })
                .collect(),
            count: r.answered.count(),
            sum_ms: r.answered.sum().as_secs_f64() * 1e3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MobilityStatus {
    pub moves: u64,
    pub last_move: Option<MoveStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoveStatus {
    pub at_unix_ms: u64,
    pub secs_ago: u64,
    /// What changed, e.g. "lost 192.0.2.11:4501; gained [2001:db8::11]:4501".
    pub change: String,
    /// Each peer's tunnel: milliseconds from the move until it carried
    /// traffic again (roamed, or re-established).
    pub tunnels_back_ms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CloudStatus {
    pub nms: Option<SocketAddr>,
    /// The Login session in use (its ID, as the NMS and the console show
    /// it): it stays when the node moves to another instance of the cloud.
    pub session: Option<String>,
    pub logged_in: bool,
    pub registered: bool,
    pub observed: Option<SocketAddr>,
    pub observed_probe: Option<SocketAddr>,
    /// "none", "endpoint-independent", "symmetric" or "unknown".
    pub nat: String,
    pub local_addrs: Vec<SocketAddr>,
    /// How signaling (and relaying) travels: "udp", "quic" or "tcp".
    pub transport: String,
    /// The transport was forced by configuration, not chosen.
    pub transport_forced: bool,
    /// The port mapping the router granted for the tunnel port, which the
    /// NMS hands to peers as this node's address.
    pub port_mapping: Option<PortMapping>,
    /// The NMS left a request unanswered and said nothing since: overlay
    /// names it would have to resolve fail at once.
    pub away: bool,
    /// Why the AS refused this node for good (certificate revoked, device
    /// disabled), if it did.
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub role: TunnelRole,
    pub state: String,
    pub pattern: u8,
    /// "direct", "punched" or "relayed".
    pub path: String,
    pub path_reason: String,
    /// "udp", "quic" or "tcp": how the tunnel's packets travel (to the peer
    /// or to the TRS).
    pub transport: String,
    pub endpoint: Option<SocketAddr>,
    /// The TRS this tunnel may fall back to (or uses).
    pub relay: Option<SocketAddr>,
    pub last_handshake_unix: Option<u64>,
    pub last_handshake_secs_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// The largest inner packet the tunnel's path carries (path MTU
    /// discovery and the kernel's ICMP-learned MTU, at most the device's).
    pub mtu: Option<u16>,
    /// Path MTU discovery of the current path is still under way.
    pub mtu_searching: bool,
}
