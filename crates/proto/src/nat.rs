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
    /// The public address a port mapping (PCP, NAT-PMP) on its router
    /// gives its tunnel port: peers reach it there, as a node without NAT.
    pub mapped: Option<SocketAddr>,
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
            mapped: None,
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

    /// The port mapping's address when the internet reaches the node there:
    /// granted by the outermost NAT (its address is the one the NMS sees
    /// the node at), or by a router the NMS cannot compare it with (the
    /// node registered over IPv6).
    pub fn public_mapping(&self) -> Option<SocketAddr> {
        self.mapped
            .filter(|m| m.is_ipv4())
            .filter(|m| !self.observed.is_ipv4() || m.ip() == self.observed.ip())
    }

    /// The port mapping's address when a further NAT lies beyond the
    /// router that granted it (a home router behind a carrier NAT): only
    /// nodes behind that same further NAT (seen at the same address) can
    /// reach it.
    pub fn inner_mapping(&self) -> Option<SocketAddr> {
        self.mapped
            .filter(|m| m.is_ipv4() && self.observed.is_ipv4() && m.ip() != self.observed.ip())
    }

    /// The NAT in front of the node's IPv4, as far as the NMS can tell.
    pub fn nat(&self) -> NatKind {
        if self.transport != Transport::Udp {
            // Seen through a leg from another socket: the tunnel port's
            // mapping is unknown (and native UDP does not get out anyway).
            return NatKind::Unknown;
        }
        if self.public_mapping().is_some() {
            // Its router forwards the mapped port to it: reachable like a
            // node with its own address, whatever its NAT does outbound.
            return NatKind::None;
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

    /// A node with these local addresses that the NMS's two ports saw as
    /// `observed` and `probe`.
    fn seen(local: &str, observed: &str, probe: Option<&str>) -> NetInfo {
        NetInfo {
            local_addrs: vec![local.parse().expect("addr")],
            observed: observed.parse().expect("addr"),
            observed_probe: probe.map(|p| p.parse().expect("addr")),
            transport: Transport::Udp,
            quic_port: 0,
            mapped: None,
        }
    }

    #[test]
    fn nat_kinds() {
        let (v4, v6) = ("192.0.2.11:4501", "[2001:db8::11]:4501");
        assert_eq!(seen(v4, v4, Some(v4)).nat(), NatKind::None);
        assert_eq!(seen(v6, v6, Some(v6)).nat(), NatKind::None);
        let (lan, wan) = ("198.51.100.11:4501", "192.0.2.101:4501");
        assert_eq!(
            seen(lan, wan, Some(wan)).nat(),
            NatKind::EndpointIndependent
        );
        let sym = seen(lan, "192.0.2.111:40001", Some("192.0.2.111:40002"));
        assert_eq!(sym.nat(), NatKind::Symmetric);
        assert_eq!(seen(lan, wan, None).nat(), NatKind::Unknown);
    }
}
