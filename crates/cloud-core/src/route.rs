//! The NMS's route decision: which pattern a tunnel takes, who sends the
//! Tunnel Request, who punches, and in what order each side tries the
//! other's endpoints. `docs/routing.md` is the table this implements; the
//! tests below walk every cell of it.

use std::net::SocketAddr;

use cyphonic_proto::signal::{RoutePattern, MAX_ENDPOINTS};
use cyphonic_proto::Transport;

pub use cyphonic_proto::nat::{NatKind, NetInfo};

/// What the route decision reads from a [`NetInfo`] besides its NAT (which
/// the node classifies too, hence its home in `cyphonic_proto`).
trait Endpoints {
    fn v6(&self) -> Vec<SocketAddr>;
    fn has_v4(&self) -> bool;
    fn v4_public(&self) -> Option<SocketAddr>;
    fn quic_endpoints(&self) -> Vec<SocketAddr>;
    fn dials_quic(&self) -> bool;
}

impl Endpoints for NetInfo {
    fn v6(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = std::iter::once(self.observed)
            .chain(self.local_addrs.iter().copied())
            .filter(|a| match a {
                SocketAddr::V6(v6) => (v6.ip().segments()[0] & 0xe000) == 0x2000,
                SocketAddr::V4(_) => false,
            })
            .collect();
        dedup(&mut out);
        out
    }

    fn has_v4(&self) -> bool {
        self.observed.is_ipv4()
            || self.local_addrs.iter().any(|a| a.is_ipv4())
            || self.mapped.is_some_and(|m| m.is_ipv4())
    }

    /// The IPv4 address other nodes reach this one at (a port mapping its
    /// router granted, its NAT's mapping, or its own address), if known.
    fn v4_public(&self) -> Option<SocketAddr> {
        self.public_mapping()
            .or(self.observed.is_ipv4().then_some(self.observed))
    }

    /// Where peers dial this node's QUIC listener: its global IPv6
    /// addresses, and its IPv4 address if the NMS saw it come from that
    /// very address (no NAT in front, whichever port it sent from). Empty
    /// without a listener.
    fn quic_endpoints(&self) -> Vec<SocketAddr> {
        if self.quic_port == 0 {
            return Vec::new();
        }
        let mut out: Vec<SocketAddr> = self
            .local_addrs
            .iter()
            .filter(|a| match a {
                SocketAddr::V6(v6) => (v6.ip().segments()[0] & 0xe000) == 0x2000,
                SocketAddr::V4(_) => a.ip() == self.observed.ip(),
            })
            .map(|a| SocketAddr::new(a.ip(), self.quic_port))
            .collect();
        dedup(&mut out);
        cap(out)
    }

    /// Can dial a QUIC listener: its signaling goes over native UDP or
    /// QUIC, so UDP gets out at least to 443.
    fn dials_quic(&self) -> bool {
        matches!(self.transport, Transport::Udp | Transport::Quic)
    }
}

/// Where a node sits, in the words of `docs/routing.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Global IPv6 only.
    V6,
    /// Global IPv4 only.
    V4,
    /// Global IPv4 and IPv6.
    Ds,
    /// Private IPv4 behind an endpoint-independent NAT.
    Eim,
    /// Private IPv4 behind a symmetric NAT.
    Sym,
}

impl Placement {
    pub const ALL: [Placement; 5] = [
        Placement::V6,
        Placement::V4,
        Placement::Ds,
        Placement::Eim,
        Placement::Sym,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placement::V6 => "v6",
            Placement::V4 => "v4",
            Placement::Ds => "ds",
            Placement::Eim => "eim",
            Placement::Sym => "sym",
        }
    }

    /// The NAT kind the NMS detects for a node placed here.
    pub fn nat(self) -> NatKind {
        match self {
            Placement::V6 | Placement::V4 | Placement::Ds => NatKind::None,
            Placement::Eim => NatKind::EndpointIndependent,
            Placement::Sym => NatKind::Symmetric,
        }
    }

    pub fn has_v4(self) -> bool {
        self != Placement::V6
    }

    pub fn has_v6(self) -> bool {
        matches!(self, Placement::V6 | Placement::Ds)
    }
}

/// The table of `docs/routing.md`: the path ("direct", "punched" or
/// "relayed") a tunnel from an MN at `mn` to a CN at `cn` takes. The one
/// statement of that promise in code; [`decide_route`]'s tests, the
/// simulations and `cyphonic lab nat-matrix` all check against it.
pub fn documented_path(mn: Placement, cn: Placement) -> &'static str {
    use Placement::*;
    match (mn, cn) {
        (V6 | Ds, V6) | (V6, Ds) => "direct",
        (V4 | Ds, V4 | Ds) => "direct",
        (V6, _) | (_, V6) => "relayed",
        (Eim | Sym, V4 | Ds) | (V4 | Ds, Eim | Sym) | (Eim, Eim) => "punched",
        // Over the relay first, then birthday punching finds a mapping of
        // the hard NAT (`decide_route`, rule 7).
        (Eim, Sym) | (Sym, Eim) => "punched",
        _ => "relayed",
    }
}

/// Which end sends the Tunnel Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// The node that asked for the route (the MN).
    Mn,
    /// The node it asked for (the CN).
    Cn,
}

/// The NMS's choice for one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    pub pattern: RoutePattern,
    pub initiator: Initiator,
    /// The CN's endpoints, in the order the MN tries (or probes) them.
    pub cn_endpoints: Vec<SocketAddr>,
    /// The MN's endpoints, in the order the CN tries (or probes) them.
    pub mn_endpoints: Vec<SocketAddr>,
    /// The non-initiating side punches its NAT towards the initiator.
    pub punch: bool,
    /// Birthday punching over the relay: the side behind the hard
    /// (endpoint-dependent) NAT, which opens spare ports; the other side,
    /// behind an easy one, probes random ports at its public address.
    pub hard_side: Option<Initiator>,
    /// How the initiator reaches the other side's endpoints: native UDP, or
    /// QUIC to its listener.
    pub via: Transport,
    /// Why, in words, for `cyphonic status` and logs.
    pub reason: &'static str,
}

/// Picks the route between `mn` (asking) and `cn`.
///
/// 1. Both have global IPv6: direct over IPv6 (no NAT on IPv6).
/// 2. Both behind the same IPv4 NAT (same public address): direct over
///    their private addresses.
/// 3. Both public on IPv4: direct.
/// 4. One behind a NAT, the other public: pattern 2, the NATed side sends
///    the Tunnel Request, opening its own NAT as it goes.
/// 5. Both behind endpoint-independent NATs: coordinated punching — the MN
///    initiates towards the CN's mapping while the CN punches towards the
///    MN's.
/// 6. One behind a symmetric (hard) NAT, the other behind an
///    endpoint-independent (easy) one: pattern 3 through a TRS, and
///    birthday punching over it (`hard_side`): the hard side opens many
///    ports, the easy side probes many.
/// 7. Otherwise (a symmetric or unknown NAT on both sides, or no common
///    address family): pattern 3 through a TRS.
///
/// A node that registered over a QUIC or TCP leg (its network lets no
/// native UDP out) takes none of those: see [`decide_leg_route`].
pub fn decide_route(mn: &NetInfo, cn: &NetInfo) -> RouteDecision {
    if mn.transport != Transport::Udp || cn.transport != Transport::Udp {
        return decide_leg_route(mn, cn);
    }
    let (mn6, cn6) = (mn.v6(), cn.v6());
    if !mn6.is_empty() && !cn6.is_empty() {
        return RouteDecision {
            pattern: RoutePattern::Direct,
            initiator: Initiator::Mn,
            cn_endpoints: with_fallbacks(cn6, cn, mn),
            mn_endpoints: with_fallbacks(mn6, mn, cn),
            punch: false,
            hard_side: None,
            via: Transport::Udp,
            reason: "both have global IPv6: direct",
        };
    }
    let relayed = |reason| RouteDecision {
        pattern: RoutePattern::Relayed,
        initiator: Initiator::Mn,
        cn_endpoints: probe_candidates(cn, mn),
        mn_endpoints: probe_candidates(mn, cn),
        punch: false,
        hard_side: None,
        via: Transport::Udp,
        reason,
    };
    if !(mn.has_v4() && cn.has_v4()) {
        return relayed("no address family in common: relay");
    }
    let (mn_nat, cn_nat) = (mn.nat(), cn.nat());
    let natted = |k: NatKind| k != NatKind::None;
    // Behind a NAT, a port mapping on it or not: two such nodes seen from
    // one address share it: one router (they reach each other on their
    // LAN), or a carrier NAT in front of two homes (they reach each other
    // through a mapping of their home routers, on the carrier's network,
    // or through the carrier's own mappings when it hairpins).
    let behind = |n: &NetInfo| natted(n.nat()) || n.mapped.is_some();
    if behind(mn) && behind(cn) && mn.observed.is_ipv4() && mn.observed.ip() == cn.observed.ip() {
        return RouteDecision {
            pattern: RoutePattern::Direct,
            initiator: Initiator::Mn,
            cn_endpoints: behind_one_nat(cn),
            mn_endpoints: behind_one_nat(mn),
            // Through a carrier NAT that hairpins, the CN's NATs must be
            // open toward the MN's mapping, as in coordinated punching.
            punch: natted(cn.nat()),
            hard_side: None,
            via: Transport::Udp,
            reason:
                "behind the same NAT: direct over local addresses, else through the NAT's mappings",
        };
    }
    let at = |n: &NetInfo, other: &NetInfo| -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = n
            .v4_public()
            .into_iter()
            .chain(shared_locals(n, other))
            .collect();
        dedup(&mut v);
        cap(v)
    };

    match (mn_nat, cn_nat) {
        (NatKind::None, NatKind::None) => RouteDecision {
            pattern: RoutePattern::Direct,
            initiator: Initiator::Mn,
            cn_endpoints: at(cn, mn),
            mn_endpoints: at(mn, cn),
            punch: false,
            hard_side: None,
            via: Transport::Udp,
            reason: "no NAT between the nodes: direct",
        },
        (_, NatKind::None) => RouteDecision {
            pattern: RoutePattern::Punched,
            initiator: Initiator::Mn,
            cn_endpoints: at(cn, mn),
            mn_endpoints: at(mn, cn),
            punch: false,
            hard_side: None,
            via: Transport::Udp,
            reason: "this side behind a NAT, the peer public: the NATed side initiates (pattern 2)",
        },
        (NatKind::None, _) => RouteDecision {
            pattern: RoutePattern::Punched,
            initiator: Initiator::Cn,
            cn_endpoints: at(cn, mn),
            mn_endpoints: at(mn, cn),
            punch: false,
            hard_side: None,
            via: Transport::Udp,
            reason: "the peer behind a NAT, this side public: the NATed side initiates (pattern 2)",
        },
        (NatKind::EndpointIndependent, NatKind::EndpointIndependent) => RouteDecision {
            pattern: RoutePattern::Punched,
            initiator: Initiator::Mn,
            cn_endpoints: at(cn, mn),
            mn_endpoints: at(mn, cn),
            punch: true,
            hard_side: None,
            via: Transport::Udp,
            reason: "both behind endpoint-independent NATs: coordinated punching",
        },
        (NatKind::Symmetric, NatKind::EndpointIndependent) => RouteDecision {
            hard_side: Some(Initiator::Mn),
            ..relayed("a hard NAT against an easy one: relay, then birthday punching")
        },
        (NatKind::EndpointIndependent, NatKind::Symmetric) => RouteDecision {
            hard_side: Some(Initiator::Cn),
            ..relayed("a hard NAT against an easy one: relay, then birthday punching")
        },
        _ => relayed("NATs on both sides that cannot be punched: relay (pattern 3)"),
    }
}

/// The route when at least one side reaches the cloud only over a QUIC or
/// TCP leg: direct over QUIC when one side listens for QUIC at a public
/// address and the other can dial it (the dialer initiates), else relayed,
/// each side over its own transport to the TRS. No native UDP endpoints are
/// handed out: the blocked side could not use them.
pub fn decide_leg_route(mn: &NetInfo, cn: &NetInfo) -> RouteDecision {
    let reachable = |of: &NetInfo, from: &NetInfo| -> Vec<SocketAddr> {
        if !from.dials_quic() {
            return Vec::new();
        }
        let from_v6 = !from.v6().is_empty() || from.observed.is_ipv6();
        let from_v4 = from.has_v4();
        of.quic_endpoints()
            .into_iter()
            .filter(|a| if a.is_ipv6() { from_v6 } else { from_v4 })
            .collect()
    };
    let (to_cn, to_mn) = (reachable(cn, mn), reachable(mn, cn));
    if !to_cn.is_empty() {
        return RouteDecision {
            pattern: RoutePattern::Direct,
            initiator: Initiator::Mn,
            cn_endpoints: to_cn,
            mn_endpoints: Vec::new(),
            punch: false,
            hard_side: None,
            via: Transport::Quic,
            reason: "UDP blocked at one end; the peer listens for QUIC: direct over QUIC",
        };
    }
    if !to_mn.is_empty() {
        return RouteDecision {
            pattern: RoutePattern::Direct,
            initiator: Initiator::Cn,
            cn_endpoints: Vec::new(),
            mn_endpoints: to_mn,
            punch: false,
            hard_side: None,
            via: Transport::Quic,
            reason: "UDP blocked at one end; this side listens for QUIC: the peer dials it",
        };
    }
    RouteDecision {
        pattern: RoutePattern::Relayed,
        initiator: Initiator::Mn,
        cn_endpoints: Vec::new(),
        mn_endpoints: Vec::new(),
        punch: false,
        hard_side: None,
        via: Transport::Udp,
        reason: "native UDP blocked at one end: relay, each side over its own transport",
    }
}

/// Where a node behind the same public address as its peer is reached, in
/// the order to try: its own IPv4 addresses (one LAN), a port mapping its
/// router granted on the network between it and that address (a home
/// router behind a carrier NAT), a mapping of that address itself (the
/// NAT's own, when it keeps one port per destination; reached when the NAT
/// hairpins), and a port mapping there.
fn behind_one_nat(n: &NetInfo) -> Vec<SocketAddr> {
    let mut v = n.v4_locals();
    v.extend(n.inner_mapping());
    if n.nat() == NatKind::EndpointIndependent {
        v.push(n.observed);
    }
    v.extend(n.public_mapping());
    dedup(&mut v);
    cap(v)
}

/// `of`'s endpoints for `from`: the given ones first, then every other
/// address of a family `from` has, as fallbacks.
fn with_fallbacks(first: Vec<SocketAddr>, of: &NetInfo, from: &NetInfo) -> Vec<SocketAddr> {
    let mut out = first;
    out.extend(probe_candidates(of, from));
    dedup(&mut out);
    cap(out)
}

/// Every address of `of` in a family `from` has: what a relayed tunnel
/// probes for a direct path.
fn probe_candidates(of: &NetInfo, from: &NetInfo) -> Vec<SocketAddr> {
    let from_v6 = !from.v6().is_empty();
    let from_v4 = from.has_v4();
    let mut out: Vec<SocketAddr> = Vec::new();
    if from_v6 {
        out.extend(of.v6());
    }
    if from_v4 {
        out.extend(of.v4_public());
        out.extend(shared_locals(of, from));
    }
    dedup(&mut out);
    cap(out)
}

/// `of`'s own IPv4 addresses, for `from` to try: only when both are seen at
/// the same public address (the same NAT, or the same host), since
/// another network's private addresses are nobody `from` should send to
/// (at best lost, at worst a host on `from`'s own LAN that never asked for
/// a handshake). Otherwise none: `of`'s public address stands for it.
fn shared_locals(of: &NetInfo, from: &NetInfo) -> Vec<SocketAddr> {
    let (a, b) = (of.v4_public(), from.v4_public());
    if a.is_some() && a.map(|x| x.ip()) == b.map(|x| x.ip()) {
        of.v4_locals()
    } else {
        Vec::new()
    }
}

fn dedup(v: &mut Vec<SocketAddr>) {
    let mut seen = Vec::with_capacity(v.len());
    v.retain(|a| {
        if seen.contains(a) {
            false
        } else {
            seen.push(*a);
            true
        }
    });
}

fn cap(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.truncate(MAX_ENDPOINTS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The placements of `docs/routing.md`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum P {
        V6,
        V4,
        Ds,
        Eim,
        Sym,
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A node of placement `p`; `n` tells two nodes of one placement apart
    /// (different addresses and different NATs).
    fn node(p: P, n: u8) -> NetInfo {
        match p {
            P::V6 => NetInfo {
                local_addrs: vec![a(&format!("[2001:db8::1{n}]:4501"))],
                observed: a(&format!("[2001:db8::1{n}]:4501")),
                observed_probe: Some(a(&format!("[2001:db8::1{n}]:4501"))),
                transport: Transport::Udp,
                quic_port: 0,
                mapped: None,
            },
            P::V4 => NetInfo {
                local_addrs: vec![a(&format!("192.0.2.1{n}:4501"))],
                observed: a(&format!("192.0.2.1{n}:4501")),
                observed_probe: Some(a(&format!("192.0.2.1{n}:4501"))),
                transport: Transport::Udp,
                quic_port: 0,
                mapped: None,
            },
            P::Ds => NetInfo {
                local_addrs: vec![
                    a(&format!("[2001:db8::2{n}]:4501")),
                    a(&format!("192.0.2.2{n}:4501")),
                ],
                observed: a(&format!("192.0.2.2{n}:4501")),
                observed_probe: Some(a(&format!("192.0.2.2{n}:4501"))),
                transport: Transport::Udp,
                quic_port: 0,
                mapped: None,
            },
            P::Eim => NetInfo {
                local_addrs: vec![a(&format!("198.51.100.1{n}:4501"))],
                observed: a(&format!("192.0.2.10{n}:4501")),
                observed_probe: Some(a(&format!("192.0.2.10{n}:4501"))),
                transport: Transport::Udp,
                quic_port: 0,
                mapped: None,
            },
            P::Sym => NetInfo {
                local_addrs: vec![a(&format!("203.0.113.1{n}:4501"))],
                observed: a(&format!("192.0.2.11{n}:40001")),
                observed_probe: Some(a(&format!("192.0.2.11{n}:40002"))),
                transport: Transport::Udp,
                quic_port: 0,
                mapped: None,
            },
        }
    }

    fn placement(p: P) -> Placement {
        match p {
            P::V6 => Placement::V6,
            P::V4 => Placement::V4,
            P::Ds => Placement::Ds,
            P::Eim => Placement::Eim,
            P::Sym => Placement::Sym,
        }
    }

    fn expected(mn: P, cn: P) -> (RoutePattern, Initiator) {
        use Initiator::*;
        use RoutePattern::*;
        use P::*;
        match (mn, cn) {
            (V6, V6) | (V6, Ds) | (Ds, V6) | (Ds, Ds) => (Direct, Mn),
            (V4, V4) | (V4, Ds) | (Ds, V4) => (Direct, Mn),
            (V6, _) | (_, V6) => (Relayed, Mn),
            (Eim | Sym, V4 | Ds) => (Punched, Mn),
            (V4 | Ds, Eim | Sym) => (Punched, Cn),
            (Eim, Eim) => (Punched, Mn),
            _ => (Relayed, Mn),
        }
    }

    #[test]
    fn every_cell_of_the_routing_table() {
        let all = [P::V6, P::V4, P::Ds, P::Eim, P::Sym];
        for mn in all {
            for cn in all {
                let d = decide_route(&node(mn, 1), &node(cn, 2));
                let (pattern, initiator) = expected(mn, cn);
                let birthday = matches!((mn, cn), (P::Eim, P::Sym) | (P::Sym, P::Eim));
                let documented = match pattern {
                    RoutePattern::Direct => "direct",
                    RoutePattern::Punched => "punched",
                    // Relayed, then birthday punching moves it.
                    _ if birthday => "punched",
                    _ => "relayed",
                };
                let hard = match (mn, cn) {
                    (P::Sym, P::Eim) => Some(Initiator::Mn),
                    (P::Eim, P::Sym) => Some(Initiator::Cn),
                    _ => None,
                };
                assert_eq!(d.hard_side, hard, "{mn:?} -> {cn:?} hard side");
                assert_eq!(
                    documented,
                    documented_path(placement(mn), placement(cn)),
                    "{mn:?} -> {cn:?}"
                );
                assert_eq!(
                    (d.pattern, d.initiator),
                    (pattern, initiator),
                    "{mn:?} -> {cn:?}: {}",
                    d.reason
                );
                assert_eq!(
                    d.punch,
                    mn == P::Eim && cn == P::Eim,
                    "{mn:?} -> {cn:?} punch"
                );
                if pattern != RoutePattern::Relayed {
                    // The initiator's first target is an address the other
                    // side is reachable at.
                    let target = match initiator {
                        Initiator::Mn => d.cn_endpoints[0],
                        Initiator::Cn => d.mn_endpoints[0],
                    };
                    let of = if initiator == Initiator::Mn {
                        node(cn, 2)
                    } else {
                        node(mn, 1)
                    };
                    assert!(
                        target == of.observed || of.local_addrs.contains(&target),
                        "{mn:?} -> {cn:?}: {target}"
                    );
                }
            }
        }
    }

    #[test]
    fn ipv6_first_for_dual_stack_pairs() {
        let d = decide_route(&node(P::Ds, 1), &node(P::Ds, 2));
        assert!(d.cn_endpoints[0].is_ipv6());
        assert!(
            d.cn_endpoints.iter().any(|e| e.is_ipv4()),
            "IPv4 stays as a fallback"
        );
    }

    #[test]
    fn same_nat_goes_over_local_addresses() {
        let mut b = node(P::Eim, 1);
        b.local_addrs = vec![a("198.51.100.99:4501")];
        b.observed = a("192.0.2.101:5000");
        b.observed_probe = Some(b.observed);
        let d = decide_route(&node(P::Eim, 1), &b);
        assert_eq!(d.pattern, RoutePattern::Direct);
        // The LAN address first; the NAT's mapping (reached if it
        // hairpins) after it, opened by the CN's punches.
        assert_eq!(
            d.cn_endpoints,
            vec![a("198.51.100.99:4501"), a("192.0.2.101:5000")]
        );
        assert!(d.punch);
    }

    /// Two homes behind one carrier NAT: seen at one address, but on
    /// different LANs. Their LAN addresses are tried first (they may share
    /// one), then a mapping a home router granted on the carrier's
    /// network, then the carrier's own mapping (if it hairpins). A mapping
    /// on the carrier's network is for those behind the carrier only:
    /// peers elsewhere get the carrier's mapping.
    #[test]
    fn two_homes_behind_one_carrier_nat() {
        let home = |lan: &str, port: u16| NetInfo {
            local_addrs: vec![a(lan)],
            observed: SocketAddr::new("192.0.2.120".parse().unwrap(), port),
            observed_probe: Some(SocketAddr::new("192.0.2.120".parse().unwrap(), port)),
            transport: Transport::Udp,
            quic_port: 0,
            mapped: None,
        };
        let x = home("198.51.100.10:4501", 14501);
        let mut y = home("203.0.113.10:4501", 24501);
        let d = decide_route(&x, &y);
        assert_eq!(d.pattern, RoutePattern::Direct);
        assert_eq!(
            d.cn_endpoints,
            vec![a("203.0.113.10:4501"), a("192.0.2.120:24501")]
        );
        assert!(d.punch);
        y.mapped = Some(a("198.51.100.200:30000"));
        assert_eq!(
            y.nat(),
            NatKind::EndpointIndependent,
            "still behind the carrier"
        );
        assert_eq!(y.public_mapping(), None);
        let d = decide_route(&x, &y);
        assert_eq!(
            d.cn_endpoints,
            vec![
                a("203.0.113.10:4501"),
                a("198.51.100.200:30000"),
                a("192.0.2.120:24501")
            ]
        );
        // From elsewhere: the carrier's mapping, never the inner one.
        for other in [P::V4, P::Eim] {
            let d = decide_route(&node(other, 2), &y);
            assert_eq!(d.cn_endpoints, vec![a("192.0.2.120:24501")], "{other:?}");
        }
    }

    /// A node whose router mapped its tunnel port counts as reachable at
    /// the mapping, against every placement: its peers send to the mapped
    /// address, and a NATed peer initiates (nothing has to cross from the
    /// mapped side first). Two mapped nodes behind one router stay on
    /// their LAN.
    #[test]
    fn a_port_mapping_makes_a_node_reachable() {
        let mut mapped = node(P::Eim, 1);
        mapped.mapped = Some(a("192.0.2.101:30001"));
        assert_eq!(mapped.nat(), NatKind::None);
        for other in [P::V4, P::Ds, P::Eim, P::Sym] {
            for (mn, cn, mapped_is_cn) in [
                (&mapped, &node(other, 2), false),
                (&node(other, 2), &mapped, true),
            ] {
                let d = decide_route(mn, cn);
                assert_ne!(d.pattern, RoutePattern::Relayed, "{other:?}");
                let to_mapped = if mapped_is_cn {
                    &d.cn_endpoints
                } else {
                    &d.mn_endpoints
                };
                assert_eq!(to_mapped[0], a("192.0.2.101:30001"), "{other:?}");
                assert!(!d.punch, "{other:?}: nothing punches");
                if matches!(other, P::Eim | P::Sym) {
                    // The NATed side sends first.
                    let natted_initiates = if mapped_is_cn {
                        d.initiator == Initiator::Mn
                    } else {
                        d.initiator == Initiator::Cn
                    };
                    assert!(natted_initiates, "{other:?}");
                }
            }
        }
        let mut twin = node(P::Eim, 1);
        twin.local_addrs = vec![a("198.51.100.99:4501")];
        twin.observed = a("192.0.2.101:5000");
        twin.observed_probe = Some(twin.observed);
        twin.mapped = Some(a("192.0.2.101:30002"));
        let d = decide_route(&mapped, &twin);
        assert_eq!(d.pattern, RoutePattern::Direct);
        assert_eq!(
            d.cn_endpoints,
            vec![a("198.51.100.99:4501"), a("192.0.2.101:30002")]
        );
    }

    #[test]
    fn unknown_nats() {
        // The NAT kinds themselves are tested in `cyphonic_proto::nat`.
        let mut unknown = node(P::Eim, 1);
        unknown.observed_probe = None;
        assert_eq!(unknown.nat(), NatKind::Unknown);
        // Unknown NAT on both sides: relay rather than a punch that may fail.
        assert_eq!(
            decide_route(&unknown, &node(P::Eim, 2)).pattern,
            RoutePattern::Relayed
        );
        // Unknown NAT against a public peer: it initiates, which works
        // through any NAT.
        assert_eq!(
            decide_route(&unknown, &node(P::V4, 2)).pattern,
            RoutePattern::Punched
        );
    }

    fn on_leg(mut n: NetInfo, transport: Transport, quic_port: u16) -> NetInfo {
        // Seen from the leg's own socket, not the tunnel port.
        n.observed = SocketAddr::new(n.observed.ip(), 50_000);
        n.observed_probe = None;
        n.transport = transport;
        n.quic_port = quic_port;
        n
    }

    #[test]
    fn nodes_on_legs_are_relayed_unless_a_quic_listener_is_reachable() {
        let all = [P::V6, P::V4, P::Ds, P::Eim, P::Sym];
        for other in all {
            for t in [Transport::Quic, Transport::Tcp] {
                let blocked = on_leg(node(P::Eim, 1), t, 0);
                // No listener anywhere: relayed, no native endpoints.
                for (mn, cn) in [(&blocked, &node(other, 2)), (&node(other, 2), &blocked)] {
                    let d = decide_route(mn, cn);
                    assert_eq!(d.pattern, RoutePattern::Relayed, "{other:?} {t:?}");
                    assert!(d.cn_endpoints.is_empty() && d.mn_endpoints.is_empty());
                    assert!(!d.punch);
                }
                // The peer listens for QUIC at a public address.
                let mut listening = node(other, 2);
                listening.quic_port = 443;
                let public = matches!(other, P::V4 | P::Ds);
                for (mn_blocked, d) in [
                    (true, decide_route(&blocked, &listening)),
                    (false, decide_route(&listening, &blocked)),
                ] {
                    if public && t == Transport::Quic {
                        assert_eq!(d.pattern, RoutePattern::Direct, "{other:?}");
                        assert_eq!(d.via, Transport::Quic);
                        // The blocked side dials.
                        let (initiator, target) = if mn_blocked {
                            (Initiator::Mn, &d.cn_endpoints)
                        } else {
                            (Initiator::Cn, &d.mn_endpoints)
                        };
                        assert_eq!(d.initiator, initiator);
                        assert_eq!(target[0].port(), 443);
                        assert!(listening
                            .local_addrs
                            .iter()
                            .any(|a| a.ip() == target[0].ip()));
                    } else {
                        // TCP-only cannot dial QUIC; a NATed listener is
                        // not reachable.
                        assert_eq!(d.pattern, RoutePattern::Relayed, "{other:?} {t:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn two_public_nodes_forced_onto_quic_go_direct() {
        let mut a1 = on_leg(node(P::V4, 1), Transport::Quic, 443);
        let b = on_leg(node(P::V4, 2), Transport::Quic, 443);
        let d = decide_route(&a1, &b);
        assert_eq!(
            (d.pattern, d.via, d.initiator),
            (RoutePattern::Direct, Transport::Quic, Initiator::Mn)
        );
        assert_eq!(d.cn_endpoints, vec![a("192.0.2.12:443")]);
        // Behind a NAT (seen from another address) nobody can dial it, but
        // it can dial the public one.
        a1.observed = a("192.0.2.200:50000");
        let d = decide_route(&b, &a1);
        assert_eq!(
            (d.pattern, d.initiator),
            (RoutePattern::Direct, Initiator::Cn)
        );
        assert_eq!(d.mn_endpoints, vec![a("192.0.2.12:443")]);
        assert_eq!(a1.nat(), NatKind::Unknown);
        let mut b2 = b.clone();
        b2.observed = a("192.0.2.201:50000");
        assert_eq!(decide_route(&b2, &a1).pattern, RoutePattern::Relayed);
    }
}
