//! The access policy at one end of a route (`docs/protocol.md` §7.8):
//! what the NMS said this node may open towards the peer and the peer
//! towards it ([`RouteFilter`]), and a bounded flow table so that replies
//! of an allowed flow come back (as Nebula's conntrack does).
//!
//! A packet passes when a rule of its direction covers its protocol and
//! destination port (it then opens or refreshes its flow), or when it
//! belongs to a flow already open (a reply), or when it is an ICMP error
//! about such a flow. Flows are keyed by protocol, IP version and the two
//! ports (an echo's identifier for ICMP): the VIPs are the tunnel's own.
//!
//! A route the policy allows everything on has an *open* filter: one
//! relaxed atomic load per packet, no lock, no parsing. Otherwise a packet
//! costs a parse of its headers and a lookup under the route's lock; the
//! table never grows past [`MAX_FLOWS`] and allocates only when it grows,
//! never per packet.
//!
//! Non-first IPv4 or IPv6 fragments pass: they carry no ports, and the
//! receiver cannot reassemble them without the first fragment, which was
//! checked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cyphonic_proto::policy::{
    PortRule, RouteFilter, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// Flows remembered per route; a full table records no new flow until
/// one expires (new flows a rule allows still pass, their replies not).
pub const MAX_FLOWS: usize = 4096;
/// Idle time after which a flow is forgotten, by protocol (Nebula's).
pub const TCP_TIMEOUT: Duration = Duration::from_secs(12 * 60);
pub const UDP_TIMEOUT: Duration = Duration::from_secs(3 * 60);
pub const OTHER_TIMEOUT: Duration = Duration::from_secs(60);
/// A full table is swept for expired flows at most this often.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Which way a packet goes through the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From this node to the peer (checked before sealing).
    Out,
    /// From the peer to this node (checked after opening).
    In,
}

/// What the filter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// A rule allowed it, but the flow table is full: its replies will not
    /// pass.
    PassUntracked,
    Deny,
}

/// One route's filter and flow table, shared by every tunnel (every set
/// of keys) of the route and by both packet directions.
#[derive(Debug)]
pub struct FlowFilter {
    open: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: RouteFilter,
    /// Flow key -> expiry, in seconds since `epoch`.
    flows: HashMap<u64, u32>,
    epoch: Instant,
    next_sweep: u32,
}

impl Default for FlowFilter {
    fn default() -> Self {
        FlowFilter::new(None)
    }
}

impl FlowFilter {
    /// `None` (or an open filter): everything passes.
    pub fn new(rules: Option<&RouteFilter>) -> Self {
        let f = FlowFilter {
            open: AtomicBool::new(true),
            inner: Mutex::new(Inner {
                rules: RouteFilter::open(),
                flows: HashMap::new(),
                epoch: Instant::now(),
                next_sweep: 0,
            }),
        };
        f.set(rules);
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New rules from the NMS. Flows open under the old rules are
    /// forgotten: each must be allowed again by the new ones.
    pub fn set(&self, rules: Option<&RouteFilter>) {
        let mut inner = self.lock();
        let rules = rules.cloned().unwrap_or_else(RouteFilter::open);
        let open = rules.is_open();
        if inner.rules != rules {
            inner.flows = HashMap::new();
        }
        inner.rules = rules;
        self.open.store(open, Ordering::Relaxed);
    }

    /// The rules in force.
    pub fn rules(&self) -> RouteFilter {
        self.lock().rules.clone()
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Flows remembered now.
    pub fn flows(&self) -> usize {
        self.lock().flows.len()
    }

    /// Whether `packet` (a whole IP packet) may go `dir` at `now`.
    #[inline]
    pub fn check(&self, dir: Direction, packet: &[u8], now: Instant) -> Verdict {
        if self.open.load(Ordering::Relaxed) {
            return Verdict::Pass;
        }
        self.check_slow(dir, packet, now)
    }

    fn check_slow(&self, dir: Direction, packet: &[u8], now: Instant) -> Verdict {
        let Some(p) = parse(packet) else {
            return Verdict::Deny;
        };
        let mut inner = self.lock();
        let t = now.saturating_duration_since(inner.epoch).as_secs() as u32;
        let rules = match dir {
            Direction::Out => &inner.rules.outbound,
            Direction::In => &inner.rules.inbound,
        };
        let allowed = allows(rules, p.proto, p.dst_port);
        let key = match p.kind {
            Kind::Fragment => return Verdict::Pass,
            Kind::IcmpError(embedded) => {
                // The packet it is about went the other way.
                let key = embedded.key(p.v6, flip(dir));
                let known = inner.flows.get(&key).is_some_and(|&e| e >= t);
                return if known || allowed {
                    Verdict::Pass
                } else {
                    Verdict::Deny
                };
            }
            _ => p.key(dir),
        };
        let timeout = match p.proto {
            IPPROTO_TCP => TCP_TIMEOUT,
            IPPROTO_UDP => UDP_TIMEOUT,
            _ => OTHER_TIMEOUT,
        }
        .as_secs() as u32;
        let expiry = t.saturating_add(timeout);
        if let Some(e) = inner.flows.get_mut(&key) {
            if *e >= t {
                *e = expiry;
                return Verdict::Pass;
            }
        }
        if !allowed {
            return Verdict::Deny;
        }
        if inner.flows.len() >= MAX_FLOWS && !inner.flows.contains_key(&key) {
            if t >= inner.next_sweep {
                inner.flows.retain(|_, e| *e >= t);
                inner.next_sweep = t + SWEEP_INTERVAL.as_secs() as u32;
            }
            if inner.flows.len() >= MAX_FLOWS {
                return Verdict::PassUntracked;
            }
        }
        inner.flows.insert(key, expiry);
        Verdict::Pass
    }
}

fn flip(dir: Direction) -> Direction {
    match dir {
        Direction::Out => Direction::In,
        Direction::In => Direction::Out,
    }
}

#[inline]
fn allows(rules: &[PortRule], proto: u8, port: u16) -> bool {
    rules.iter().any(|r| r.matches(proto, port))
}

/// What the filter needs of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    v6: bool,
    /// The IP protocol (after IPv6 extension headers).
    proto: u8,
    src_port: u16,
    dst_port: u16,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP or UDP: the ports name the flow.
    Ports,
    /// An ICMP echo request or reply: its identifier names the flow.
    Echo(u16),
    /// An ICMP error about the packet it quotes.
    IcmpError(Embedded),
    /// Any other protocol, or ICMP that is neither: the protocol alone.
    Other,
    /// A fragment after the first.
    Fragment,
}

/// The flow of the packet an ICMP error quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Embedded {
    proto: u8,
    src_port: u16,
    dst_port: u16,
    echo: Option<u16>,
}

impl Embedded {
    /// The key of the quoted packet, which went `dir`.
    fn key(&self, v6: bool, dir: Direction) -> u64 {
        Parsed {
            v6,
            proto: self.proto,
            src_port: self.src_port,
            dst_port: self.dst_port,
            kind: match self.echo {
                Some(id) => Kind::Echo(id),
                None if matches!(self.proto, IPPROTO_TCP | IPPROTO_UDP) => Kind::Ports,
                None => Kind::Other,
            },
        }
        .key(dir)
    }
}

impl Parsed {
    /// The flow key from this node's side: (protocol, IP version, local
    /// port, remote port); ICMP and ICMPv6 echoes share one code.
    fn key(&self, dir: Direction) -> u64 {
        let (proto, local, remote) = match self.kind {
            Kind::Echo(id) => (IPPROTO_ICMP, id, 0),
            Kind::Ports => match dir {
                Direction::Out => (self.proto, self.src_port, self.dst_port),
                Direction::In => (self.proto, self.dst_port, self.src_port),
            },
            _ => (self.proto, 0, 0),
        };
        u64::from(proto) << 40
            | u64::from(self.v6) << 32
            | u64::from(local) << 16
            | u64::from(remote)
    }
}

/// IPv6 extension headers walked at most.
const MAX_EXTENSIONS: usize = 8;

/// Parses the headers the filter needs; `None` when it is not an IP
/// packet at all.
fn parse(packet: &[u8]) -> Option<Parsed> {
    let (v6, proto, l4, fragment) = network(packet)?;
    let mut p = Parsed {
        v6,
        proto,
        src_port: 0,
        dst_port: 0,
        kind: Kind::Other,
    };
    if fragment {
        p.kind = Kind::Fragment;
        return Some(p);
    }
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            if let Some(h) = l4.get(..4) {
                p.src_port = u16::from_be_bytes([h[0], h[1]]);
                p.dst_port = u16::from_be_bytes([h[2], h[3]]);
            }
            p.kind = Kind::Ports;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let Some(&ty) = l4.first() else {
                return Some(p);
            };
            let id = l4.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]]));
            let (echo, error) = if v6 {
                (matches!(ty, 128 | 129), matches!(ty, 1..=4))
            } else {
                (matches!(ty, 0 | 8), matches!(ty, 3 | 4 | 5 | 11 | 12))
            };
            if echo {
                p.kind = id.map_or(Kind::Other, Kind::Echo);
            } else if error {
                if let Some(e) = l4.get(8..).and_then(embedded) {
                    p.kind = Kind::IcmpError(e);
                }
            }
        }
        _ => {}
    }
    Some(p)
}

/// The quoted packet of an ICMP error (its header and the first bytes of
/// its payload).
fn embedded(quoted: &[u8]) -> Option<Embedded> {
    let (_, proto, l4, _) = network(quoted)?;
    let port = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut e = Embedded {
        proto,
        src_port: 0,
        dst_port: 0,
        echo: None,
    };
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            e.src_port = port(0)?;
            e.dst_port = port(2)?;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => e.echo = port(4),
        _ => {}
    }
    Some(e)
}

/// (IPv6?, protocol, layer-4 bytes, a non-first fragment?) of an IPv4 or
/// IPv6 packet, however short its payload (an ICMP error quotes only the
/// start of one).
fn network(packet: &[u8]) -> Option<(bool, u8, &[u8], bool)> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl {
                return None;
            }
            let offset = u16::from_be_bytes([packet[6] & 0x1f, packet[7]]);
            Some((false, packet[9], &packet[ihl..], offset != 0))
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let (mut next, mut at) = (packet[6], 40);
            for _ in 0..MAX_EXTENSIONS {
                let len = match next {
                    // Hop-by-hop, routing, destination options.
                    0 | 43 | 60 => (usize::from(*packet.get(at + 1)?) + 1) * 8,
                    44 => {
                        let h = packet.get(at..at + 4)?;
                        let offset = u16::from_be_bytes([h[2], h[3]]) >> 3;
                        if offset != 0 {
                            return Some((true, h[0], &[], true));
                        }
                        8
                    }
                    // Authentication header.
                    51 => (usize::from(*packet.get(at + 1)?) + 2) * 4,
                    _ => break,
                };
                next = *packet.get(at)?;
                at += len;
            }
            Some((true, next, packet.get(at..).unwrap_or(&[]), false))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

    fn v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p.extend_from_slice(l4);
        p
    }

    fn ports(src: u16, dst: u16) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[..2].copy_from_slice(&src.to_be_bytes());
        l4[2..4].copy_from_slice(&dst.to_be_bytes());
        l4
    }

    fn tcp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16) -> Vec<u8> {
        v4(src, dst, IPPROTO_TCP, &ports(sp, dp))
    }

    fn echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
        let mut l4 = vec![ty, 0, 0, 0, 0, 0, 0, 1];
        l4[4..6].copy_from_slice(&id.to_be_bytes());
        v4(src, dst, IPPROTO_ICMP, &l4)
    }

    fn filter(inbound: &[&str], outbound: &[&str]) -> FlowFilter {
        let f = RouteFilter {
            inbound: inbound.iter().map(|p| p.parse().unwrap()).collect(),
            outbound: outbound.iter().map(|p| p.parse().unwrap()).collect(),
        };
        FlowFilter::new(Some(&f))
    }

    #[test]
    fn no_rules_means_open_and_everything_passes() {
        let f = FlowFilter::new(None);
        assert!(f.is_open());
        let now = Instant::now();
        assert_eq!(f.check(Direction::In, b"not even ip", now), Verdict::Pass);
        assert_eq!(f.flows(), 0);
    }

    #[test]
    fn an_allowed_flow_gets_its_replies_and_nothing_else_comes_in() {
        // A's side: A may open tcp/5201 and ICMP to B; B may open nothing.
        let a = filter(&[], &["icmp", "tcp/5201"]);
        let now = Instant::now();
        let out = |p: &[u8]| a.check(Direction::Out, p, now);
        let inn = |p: &[u8]| a.check(Direction::In, p, now);
        // B cannot open anything towards A.
        assert_eq!(inn(&tcp(B, 40000, A, 22)), Verdict::Deny);
        assert_eq!(inn(&echo(B, A, 8, 7)), Verdict::Deny);
        // A opens; the replies pass.
        assert_eq!(out(&tcp(A, 40001, B, 5201)), Verdict::Pass);
        assert_eq!(inn(&tcp(B, 5201, A, 40001)), Verdict::Pass);
        assert_eq!(out(&echo(A, B, 8, 9)), Verdict::Pass);
        assert_eq!(inn(&echo(B, A, 0, 9)), Verdict::Pass);
        // Not the same flow: another local port, another echo id.
        assert_eq!(inn(&tcp(B, 5201, A, 40002)), Verdict::Deny);
        assert_eq!(inn(&echo(B, A, 0, 10)), Verdict::Deny);
        // A cannot open what the rules do not name.
        assert_eq!(out(&tcp(A, 40003, B, 22)), Verdict::Deny);
        assert_eq!(out(&v4(A, B, IPPROTO_UDP, &ports(1, 5201))), Verdict::Deny);
        assert_eq!(a.flows(), 2);
    }

    #[test]
    fn icmp_errors_about_an_allowed_flow_pass_and_others_do_not() {
        let a = filter(&[], &["udp/5000-5010"]);
        let now = Instant::now();
        let sent = v4(A, B, IPPROTO_UDP, &ports(40000, 5005));
        assert_eq!(a.check(Direction::Out, &sent, now), Verdict::Pass);
        let unreachable = |quoted: &[u8]| {
            let mut l4 = vec![3, 3, 0, 0, 0, 0, 0, 0];
            l4.extend_from_slice(&quoted[..28]);
            v4(B, A, IPPROTO_ICMP, &l4)
        };
        assert_eq!(
            a.check(Direction::In, &unreachable(&sent), now),
            Verdict::Pass
        );
        let other = v4(A, B, IPPROTO_UDP, &ports(40001, 5005));
        assert_eq!(
            a.check(Direction::In, &unreachable(&other), now),
            Verdict::Deny
        );
        // The peer's side: the error goes out about a packet that came in.
        let b = filter(&["udp/5000-5010"], &[]);
        assert_eq!(b.check(Direction::In, &sent, now), Verdict::Pass);
        assert_eq!(
            b.check(Direction::Out, &unreachable(&sent), now),
            Verdict::Pass
        );
    }

    #[test]
    fn ipv6_echoes_and_extension_headers_are_followed() {
        let (a6, b6): (Ipv6Addr, Ipv6Addr) =
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let v6 = |src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]| {
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            p[6] = next;
            p[7] = 64;
            p[8..24].copy_from_slice(&src.octets());
            p[24..40].copy_from_slice(&dst.octets());
            p.extend_from_slice(l4);
            p
        };
        let f = filter(&["tcp/22"], &["icmp"]);
        let now = Instant::now();
        let req = v6(a6, b6, IPPROTO_ICMPV6, &[128, 0, 0, 0, 0, 5, 0, 1]);
        let rep = v6(b6, a6, IPPROTO_ICMPV6, &[129, 0, 0, 0, 0, 5, 0, 1]);
        assert_eq!(f.check(Direction::Out, &req, now), Verdict::Pass);
        assert_eq!(f.check(Direction::In, &rep, now), Verdict::Pass);
        // tcp/22 behind a destination options header.
        let mut opts = vec![IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
        opts.extend_from_slice(&ports(40000, 22));
        assert_eq!(
            f.check(Direction::In, &v6(b6, a6, 60, &opts), now),
            Verdict::Pass
        );
        let mut opts23 = vec![IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
        opts23.extend_from_slice(&ports(40000, 23));
        assert_eq!(
            f.check(Direction::In, &v6(b6, a6, 60, &opts23), now),
            Verdict::Deny
        );
        // A later fragment carries no ports and passes; a first one is checked.
        let later = [IPPROTO_TCP, 0, 0x05, 0x00, 0, 0, 0, 1];
        assert_eq!(
            f.check(Direction::In, &v6(b6, a6, 44, &later), now),
            Verdict::Pass
        );
        let mut first = vec![IPPROTO_TCP, 0, 0x00, 0x01, 0, 0, 0, 1];
        first.extend_from_slice(&ports(40000, 23));
        assert_eq!(
            f.check(Direction::In, &v6(b6, a6, 44, &first), now),
            Verdict::Deny
        );
        // Garbage never passes a closed filter, and never panics.
        for len in 0..48 {
            let _ = f.check(Direction::In, &req[..len.min(req.len())], now);
        }
        assert_eq!(f.check(Direction::In, &[0x60; 12], now), Verdict::Deny);
    }

    #[test]
    fn flows_expire_the_table_is_bounded_and_new_rules_start_over() {
        let a = filter(&[], &["udp"]);
        let t0 = Instant::now();
        let out = |sp: u16, t| a.check(Direction::Out, &v4(A, B, IPPROTO_UDP, &ports(sp, 53)), t);
        let back = |sp: u16, t| a.check(Direction::In, &v4(B, A, IPPROTO_UDP, &ports(53, sp)), t);
        assert_eq!(out(1, t0), Verdict::Pass);
        assert_eq!(back(1, t0 + UDP_TIMEOUT), Verdict::Pass);
        assert_eq!(
            back(1, t0 + 2 * UDP_TIMEOUT + Duration::from_secs(2)),
            Verdict::Deny
        );
        for sp in 1..=MAX_FLOWS as u16 {
            assert_eq!(out(sp, t0), Verdict::Pass);
        }
        assert_eq!(a.flows(), MAX_FLOWS);
        // Full: a new flow still goes out, but is not remembered.
        assert_eq!(out(60000, t0), Verdict::PassUntracked);
        assert_eq!(back(60000, t0), Verdict::Deny);
        // Once the others expired, the sweep makes room.
        let later = t0 + 3 * UDP_TIMEOUT;
        assert_eq!(out(60000, later), Verdict::Pass);
        assert_eq!(a.flows(), 1);
        // New rules: flows start over, and a closed way stays closed.
        a.set(Some(&RouteFilter::default()));
        assert_eq!(back(60000, later), Verdict::Deny);
        assert_eq!(out(60001, later), Verdict::Deny);
        a.set(None);
        assert!(a.is_open());
    }

    /// The cost of the filter per packet, printed (run with `--nocapture`
    /// to see it): open, a lookup of an established flow, and a refused
    /// packet.
    #[test]
    fn the_filter_costs_little_per_packet() {
        let rounds = 200_000u32;
        let pkt = tcp(A, 40000, B, 5201);
        let reply = tcp(B, 5201, A, 40000);
        let measure = |f: &FlowFilter, dir, p: &[u8]| {
            let now = Instant::now();
            let start = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(f.check(dir, std::hint::black_box(p), now));
            }
            start.elapsed().as_nanos() as f64 / f64::from(rounds)
        };
        let open = FlowFilter::new(None);
        let a = filter(&[], &["icmp", "tcp/5201"]);
        let _ = a.check(Direction::Out, &pkt, Instant::now());
        let (o, e, r) = (
            measure(&open, Direction::Out, &pkt),
            measure(&a, Direction::In, &reply),
            measure(&a, Direction::In, &tcp(B, 1, A, 2)),
        );
        println!(
            "filter cost per packet: open {o:.1} ns, established flow {e:.1} ns, refused {r:.1} ns"
        );
        assert_eq!(a.flows(), 1, "no flow per refused packet");
    }
}
