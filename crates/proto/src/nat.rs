//! The NAT in front of a node's IPv4, classified by mapping behaviour
//! (RFC 4787 §4.1) from what the NMS observed of its Registration and NAT
//! Probe. The NMS decides routes with it; the node reports it in
//! `cyphonic status`.

use std::net::SocketAddr;

use crate::Transport;

/// What the NMS knows of a node's network, from its Registration and NAT
/// Probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInfo {
    /// The node's own addresses (tunnel port), as it listed them.
    pub local_addrs: Vec<SocketAddr>,
    /// Where the NMS saw its Registration / KeepAlives come from.
    pub observed: SocketAddr,
    /// Where the NMS saw its NAT Probe (to the second port) come from.
    pub observed_probe: Option<SocketAddr>,
    /// How its Registration travelled: native UDP, or a QUIC / TLS-over-TCP
    /// leg (its network lets no other UDP out).
    pub transport: Transport,
    /// Its QUIC listener port (0: none).
    pub quic_port: u16,
}

impl NetInfo {
    /// A node on native UDP with these addresses, as the NMS saw it.
    pub fn udp(
        local_addrs: Vec<SocketAddr>,
        observed: SocketAddr,
        observed_probe: Option<SocketAddr>,
    ) -> Self {
        NetInfo {
            local_addrs,
            observed,
            observed_probe,
            transport: Transport::Udp,
            quic_port: 0,
        }
    }
}

/// IPv4 NAT in front of a node, by mapping behaviour (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// The node is reachable at an address it has itself.
    None,
    /// One mapping for every destination: punchable.
    EndpointIndependent,
    /// A new mapping per destination: not punchable from both sides.
    Symmetric,
    /// Behind a NAT whose behaviour is not known (no probe answer yet, or
    /// registered over IPv6).
    Unknown,
}

impl NatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::EndpointIndependent => "endpoint-independent",
            NatKind::Symmetric => "symmetric",
            NatKind::Unknown => "unknown",
        }
    }
}

impl NetInfo {
    /// The node's own IPv4 addresses, in the order it listed them.
    pub fn v4_locals(&self) -> Vec<SocketAddr> {
        self.local_addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv4())
            .collect()
    }

    /// The NAT in front of the node's IPv4, as far as the NMS can tell.
    pub fn nat(&self) -> NatKind {
        if self.transport != Transport::Udp {
            // Seen through a leg from another socket: the tunnel port's
            // mapping is unknown (and native UDP does not get out anyway).
            return NatKind::Unknown;
        }
        if !self.observed.is_ipv4() {
            // Registered over IPv6: global IPv6 needs no NAT; its IPv4, if
            // any, was never observed.
            return if self.v4_locals().is_empty() {
                NatKind::None
            } else {
                NatKind::Unknown
            };
        }
        if self.local_addrs.contains(&self.observed) {
            return NatKind::None;
        }
        match self.observed_probe {
            Some(p) if p == self.observed => NatKind::EndpointIndependent,
            Some(_) => NatKind::Symmetric,
            None => NatKind::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Placements of `docs/routing.md` that tell the NAT kinds apart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum P {
        V6,
        V4,
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
            },
            P::V4 => NetInfo {
                local_addrs: vec![a(&format!("192.0.2.1{n}:4501"))],
                observed: a(&format!("192.0.2.1{n}:4501")),
                observed_probe: Some(a(&format!("192.0.2.1{n}:4501"))),
                transport: Transport::Udp,
                quic_port: 0,
            },
            P::Eim => NetInfo {
                local_addrs: vec![a(&format!("198.51.100.1{n}:4501"))],
                observed: a(&format!("192.0.2.10{n}:4501")),
                observed_probe: Some(a(&format!("192.0.2.10{n}:4501"))),
                transport: Transport::Udp,
                quic_port: 0,
            },
            P::Sym => NetInfo {
                local_addrs: vec![a(&format!("203.0.113.1{n}:4501"))],
                observed: a(&format!("192.0.2.11{n}:40001")),
                observed_probe: Some(a(&format!("192.0.2.11{n}:40002"))),
                transport: Transport::Udp,
                quic_port: 0,
            },
        }
    }

    #[test]
    fn nat_kinds() {
        assert_eq!(node(P::V4, 1).nat(), NatKind::None);
        assert_eq!(node(P::V6, 1).nat(), NatKind::None);
        assert_eq!(node(P::Eim, 1).nat(), NatKind::EndpointIndependent);
        assert_eq!(node(P::Sym, 1).nat(), NatKind::Symmetric);
        let mut unknown = node(P::Eim, 1);
        unknown.observed_probe = None;
        assert_eq!(unknown.nat(), NatKind::Unknown);
    }
}
