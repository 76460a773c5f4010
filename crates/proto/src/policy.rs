//! What the access policy lets through one route, as the NMS tells each end
//! (`docs/protocol.md` §4.5, *Route filter*).
//!
//! A [`RouteFilter`] is one node's view of a route: what the peer may open
//! towards it (`inbound`) and what it may open towards the peer
//! (`outbound`), each a list of [`PortRule`]s. Replies of an allowed flow
//! are the data plane's business (its flow table), not the filter's.

use std::fmt;
use std::str::FromStr;

use crate::wire::{Reader, WireError, Writer};

/// The version of the filter block's layout; a receiver refuses any other
/// (a node never installs a route whose limits it cannot read).
pub const FILTER_VERSION: u8 = 1;

/// Rules per direction in one filter. With the largest Route Direction
/// (1073 bytes, §4.1) a filter of 2 × 32 rules still fits one signaling
/// datagram; a policy names at most this many protocol/port items.
pub const MAX_FILTER_RULES: usize = 32;

/// The protocol a [`PortRule`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleProto {
    /// Every protocol, every port.
    Any,
    /// ICMP and ICMPv6, every type.
    Icmp,
    Tcp,
    Udp,
}

impl RuleProto {
    /// The wire code: the IP protocol number, 0 for any.
    pub fn to_u8(self) -> u8 {
        match self {
            RuleProto::Any => 0,
            RuleProto::Icmp => 1,
            RuleProto::Tcp => 6,
            RuleProto::Udp => 17,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => RuleProto::Any,
            1 => RuleProto::Icmp,
            6 => RuleProto::Tcp,
            17 => RuleProto::Udp,
            _ => return None,
        })
    }
}

/// IP protocol numbers the filter knows.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// One allowed protocol and destination port range: `*`, `icmp`,
/// `tcp/22`, `udp/5000-5010`, `tcp` (every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub proto: RuleProto,
    /// Destination ports, inclusive; `0..=65535` for `Any` and `Icmp`.
    pub first: u16,
    pub last: u16,
}

impl PortRule {
    pub const ANY: PortRule = PortRule {
        proto: RuleProto::Any,
        first: 0,
        last: u16::MAX,
    };

    /// Whether a packet of IP protocol `ip_proto` to port `port` (0 for
    /// protocols without ports) is covered.
    #[inline]
    pub fn matches(&self, ip_proto: u8, port: u16) -> bool {
        match self.proto {
            RuleProto::Any => true,
            RuleProto::Icmp => ip_proto == IPPROTO_ICMP || ip_proto == IPPROTO_ICMPV6,
            RuleProto::Tcp => ip_proto == IPPROTO_TCP && (self.first..=self.last).contains(&port),
            RuleProto::Udp => ip_proto == IPPROTO_UDP && (self.first..=self.last).contains(&port),
        }
    }
}

/// Why a port rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a protocol/port: write *, icmp, tcp, udp, tcp/22 or udp/5000-5010")]
pub struct BadPortRule(pub String);

impl FromStr for PortRule {
    type Err = BadPortRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPortRule(s.to_owned());
        let t = s.trim().to_ascii_lowercase();
        let (proto, ports) = match t.split_once('/') {
            Some((p, ports)) => (p, Some(ports)),
            None => (t.as_str(), None),
        };
        let proto = match proto {
            "*" | "any" => RuleProto::Any,
            "icmp" => RuleProto::Icmp,
            "tcp" => RuleProto::Tcp,
            "udp" => RuleProto::Udp,
            _ => return Err(bad()),
        };
        let (first, last) = match ports {
            None | Some("*") => (0, u16::MAX),
            Some(_) if matches!(proto, RuleProto::Any | RuleProto::Icmp) => return Err(bad()),
            Some(p) => {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                let a: u16 = a.parse().map_err(|_| bad())?;
                let b: u16 = b.parse().map_err(|_| bad())?;
                if a == 0 || a > b {
                    return Err(bad());
                }
                (a, b)
            }
        };
        Ok(PortRule { proto, first, last })
    }
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.proto {
            RuleProto::Any => return f.write_str("*"),
            RuleProto::Icmp => return f.write_str("icmp"),
            RuleProto::Tcp => "tcp",
            RuleProto::Udp => "udp",
        };
        match (self.first, self.last) {
            (0, u16::MAX) => f.write_str(name),
            (a, b) if a == b => write!(f, "{name}/{a}"),
            (a, b) => write!(f, "{name}/{a}-{b}"),
        }
    }
}

/// What one end of a route may exchange with the other: flows the peer
/// may open towards this node (`inbound`) and flows this node may open
/// towards the peer (`outbound`). Empty lists allow nothing that way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RouteFilter {
    pub inbound: Vec<PortRule>,
    pub outbound: Vec<PortRule>,
}

impl RouteFilter {
    /// Everything both ways (today's behaviour without a policy).
    pub fn open() -> Self {
        RouteFilter {
            inbound: vec![PortRule::ANY],
            outbound: vec![PortRule::ANY],
        }
    }

    /// Nothing either way: the route is not allowed at all.
    pub fn is_closed(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_empty()
    }

    /// Everything both ways.
    pub fn is_open(&self) -> bool {
        self.inbound.contains(&PortRule::ANY) && self.outbound.contains(&PortRule::ANY)
    }

    /// The same route seen from the peer.
    pub fn reversed(&self) -> Self {
        RouteFilter {
            inbound: self.outbound.clone(),
            outbound: self.inbound.clone(),
        }
    }

    /// Writes the filter block: version, then each direction as a count
    /// and `count × (proto u8, first u16, last u16)`. Lists longer than
    /// [`MAX_FILTER_RULES`] are cut (writers never make them: the NMS
    /// refuses such a policy).
    pub fn encode(&self, w: &mut Writer) {
        w.u8(FILTER_VERSION);
        for list in [&self.inbound, &self.outbound] {
            let list = &list[..list.len().min(MAX_FILTER_RULES)];
            w.u8(list.len() as u8);
            for r in list {
                w.u8(r.proto.to_u8()).u16(r.first).u16(r.last);
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        if r.u8()? != FILTER_VERSION {
            return Err(WireError::Invalid {
                field: "filter version",
            });
        }
        let mut lists = [Vec::new(), Vec::new()];
        for list in lists.iter_mut() {
            let n = r.u8()? as usize;
            if n > MAX_FILTER_RULES {
                return Err(WireError::Invalid {
                    field: "filter rule count",
                });
            }
            for _ in 0..n {
                let proto = RuleProto::from_u8(r.u8()?).ok_or(WireError::Invalid {
                    field: "filter protocol",
                })?;
                let (first, last) = (r.u16()?, r.u16()?);
                if first > last {
                    return Err(WireError::Invalid {
                        field: "filter port range",
                    });
                }
                list.push(PortRule { proto, first, last });
            }
        }
        let [inbound, outbound] = lists;
        Ok(RouteFilter { inbound, outbound })
    }
}

impl fmt::Display for RouteFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &[PortRule]| {
            if l.is_empty() {
                "nothing".to_owned()
            } else {
                l.iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        write!(
            f,
            "in: {}; out: {}",
            list(&self.inbound),
            list(&self.outbound)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_rules_parse_and_print_back() {
        for (text, shown) in [
            ("*", "*"),
            ("icmp", "icmp"),
            ("TCP/22", "tcp/22"),
            ("udp/5000-5010", "udp/5000-5010"),
            ("tcp", "tcp"),
            ("udp/*", "udp"),
        ] {
            let r: PortRule = text.parse().unwrap();
            assert_eq!(r.to_string(), shown);
            assert_eq!(shown.parse::<PortRule>().unwrap(), r);
        }
        for bad in [
            "",
            "sctp/1",
            "tcp/0",
            "tcp/22-21",
            "tcp/70000",
            "icmp/8",
            "*/22",
            "tcp/a",
        ] {
            let e = bad.parse::<PortRule>().unwrap_err();
            assert!(e.to_string().contains("tcp/22"), "{e}");
        }
    }

    #[test]
    fn rules_match_their_protocol_and_ports_only() {
        let ssh: PortRule = "tcp/22".parse().unwrap();
        assert!(ssh.matches(IPPROTO_TCP, 22));
        assert!(!ssh.matches(IPPROTO_TCP, 23));
        assert!(!ssh.matches(IPPROTO_UDP, 22));
        let icmp: PortRule = "icmp".parse().unwrap();
        assert!(icmp.matches(IPPROTO_ICMP, 0) && icmp.matches(IPPROTO_ICMPV6, 0));
        assert!(!icmp.matches(IPPROTO_TCP, 0));
        let range: PortRule = "udp/5000-5010".parse().unwrap();
        assert!(range.matches(IPPROTO_UDP, 5000) && range.matches(IPPROTO_UDP, 5010));
        assert!(!range.matches(IPPROTO_UDP, 5011));
        assert!(PortRule::ANY.matches(47, 0));
    }

    #[test]
    fn the_filter_block_round_trips_and_refuses_what_it_cannot_read() {
        let f = RouteFilter {
            inbound: vec!["icmp".parse().unwrap(), "tcp/5201".parse().unwrap()],
            outbound: vec![],
        };
        let mut w = Writer::new();
        f.encode(&mut w);
        let bytes = w.into_inner();
        assert_eq!(
            bytes,
            [1, 2, 1, 0, 0, 0xff, 0xff, 6, 0x14, 0x51, 0x14, 0x51, 0]
        );
        let mut r = Reader::new(&bytes);
        assert_eq!(RouteFilter::decode(&mut r).unwrap(), f);
        r.finish().unwrap();
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(RouteFilter::decode(&mut Reader::new(&v2)).is_err());
        let mut proto = bytes.clone();
        proto[2] = 47;
        assert!(RouteFilter::decode(&mut Reader::new(&proto)).is_err());
        let mut range = bytes.clone();
        range[8..12].copy_from_slice(&[0, 23, 0, 22]);
        assert!(RouteFilter::decode(&mut Reader::new(&range)).is_err());
        let too_many = [1, 33];
        assert!(RouteFilter::decode(&mut Reader::new(&too_many)).is_err());
    }
}
