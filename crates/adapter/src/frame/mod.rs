//! The LAN's wire formats and the classifier (`docs/adapter.md`, "One
//! interface, one classifier").
//!
//! Each format is a view over bytes plus a representation, as in smoltcp.
//! `Xxx::new_checked(bytes)` checks the lengths the accessors rely on, so no
//! accessor of a checked view panics; `XxxRepr::parse(&view)` checks the
//! rest (version, checksum, fixed values) and gives the fields as plain
//! values; `XxxRepr::emit` writes them back byte for byte. Values the
//! adapter does not know stay wrapped (`EtherType::Unknown(n)`,
//! `IpProtocol::Unknown(n)`, `NdiscOption::Unknown`) rather than failing.
//!
//! | format | spec | view | representation |
//! |---|---|---|---|
//! | Ethernet II | IEEE 802.3, RFC 894 | [`EthernetFrame`] | [`EthernetRepr`] |
//! | ARP (IPv4 over Ethernet) | RFC 826 | [`ArpPacket`] | [`ArpRepr`] |
//! | IPv4 | RFC 791 | [`Ipv4Packet`] | [`Ipv4Repr`] |
//! | IPv6 | RFC 8200 | [`Ipv6Packet`] | [`Ipv6Repr`] |
//! | UDP | RFC 768, RFC 8200 §8.1 | [`UdpPacket`] | [`UdpRepr`] |
//! | ICMPv6 | RFC 4443 | [`Icmpv6Packet`] | (checksum only) |
//! | Neighbor Discovery | RFC 4861, RFC 8106 | [`Icmpv6Packet`] | [`NdiscRepr`], [`NdiscOption`] |
//!
//! [`classify`] takes every frame from the LAN through these in one pass
//! and says which part of the adapter takes it ([`Class`]); what no part
//! takes is [`Class::Other`] with the reason, for the caller to drop and
//! count. It never panics, whatever the bytes.
//!
//! The builders at the end ([`ethernet`], [`ipv4_udp`], [`ipv6_udp`],
//! [`ipv6_icmp`]) make whole frames with every length and checksum filled
//! in, for the parts that answer the LAN (proxy, DHCP, RA, DNS) and for the
//! shell that hands peers' packets to the general nodes.
//!
//! Frames are built without Ethernet padding: the 60-byte minimum of IEEE
//! 802.3 is the NIC driver's to add (`eth_skb_pad` in Linux), and a frame
//! on a veth needs none. Frames are parsed with padding allowed: the IP and
//! UDP length fields, not the frame's length, say where a packet ends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use crate::MacAddr;

/// Why bytes are not a valid packet of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum WireError {
    /// Shorter than the format's fixed part or than a length field says.
    #[error("truncated")]
    Truncated,
    /// A field holds a value the format does not allow (a version, a
    /// length smaller than the header, an option of length zero).
    #[error("malformed")]
    Malformed,
    /// The checksum does not match.
    #[error("bad checksum")]
    Checksum,
    /// Well formed but not what the adapter speaks (ARP for another
    /// hardware or protocol type, an ICMPv6 type that is not ND).
    #[error("unsupported")]
    Unsupported,
}

type Result<T> = std::result::Result<T, WireError>;

// ---------------------------------------------------------------------------
// Well-known numbers

/// IEEE 802.1Q customer VLAN tag; tagged frames are not classified.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// IEEE 802.1ad service VLAN tag (Q-in-Q).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// DHCPv4 server port (RFC 2131 §4.1).
pub const DHCPV4_SERVER_PORT: u16 = 67;
/// DHCPv4 client port (RFC 2131 §4.1).
pub const DHCPV4_CLIENT_PORT: u16 = 68;
/// DHCPv6 client port (RFC 8415 §7.2).
pub const DHCPV6_CLIENT_PORT: u16 = 546;
/// DHCPv6 server and relay agent port (RFC 8415 §7.2).
pub const DHCPV6_SERVER_PORT: u16 = 547;
/// DNS (RFC 1035 §4.2.1).
pub const DNS_PORT: u16 = 53;

/// ICMPv6 Router Solicitation (RFC 4861 §4.1).
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
/// ICMPv6 Router Advertisement (RFC 4861 §4.2).
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
/// ICMPv6 Neighbor Solicitation (RFC 4861 §4.3).
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 Neighbor Advertisement (RFC 4861 §4.4).
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 Redirect (RFC 4861 §4.5).
pub const ICMPV6_REDIRECT: u8 = 137;

/// All-nodes, link-local scope (RFC 4291 §2.7.1).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// All-routers, link-local scope (RFC 4291 §2.7.1).
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_DHCP_RELAY_AGENTS_AND_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Hop limit of every ND message (RFC 4861 §6.1.1, §7.1.1): a message
/// that arrives with 255 was not forwarded by a router.
pub const ND_HOP_LIMIT: u8 = 255;
/// TTL and hop limit of the UDP the adapter sends (RFC 1700's default 64).
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// Longest UDP payload in an IPv4 packet: 65 535 - 20 - 8.
pub const MAX_IPV4_UDP_PAYLOAD: usize = 65_535 - IPV4_HEADER_LEN - UDP_HEADER_LEN;
/// Longest UDP payload in an IPv6 packet without a jumbogram: 65 535 - 8.
pub const MAX_IPV6_UDP_PAYLOAD: usize = 65_535 - UDP_HEADER_LEN;

// ---------------------------------------------------------------------------
// Byte helpers. Callers index only what a checked view guarantees.

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn mac_at(b: &[u8], at: usize) -> MacAddr {
    let mut m = [0; 6];
    m.copy_from_slice(&b[at..at + 6]);
    MacAddr(m)
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn ipv6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

/// The Internet checksum (RFC 1071).
mod checksum {
    use std::net::IpAddr;

    /// The ones'-complement sum of `data` as big-endian 16-bit words, an
    /// odd last byte padded with zero (RFC 1071 §4.1), carries not folded.
    /// A `u64` cannot overflow on any packet an IP length field allows.
    pub(super) fn sum(data: &[u8]) -> u64 {
        let mut words = data.chunks_exact(2);
        let mut acc = 0u64;
        for w in &mut words {
            acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            acc += u64::from(*last) << 8;
        }
        acc
    }

    /// Folds the carries back in (the end-around carry, RFC 1071 §2).
    pub(super) fn fold(mut acc: u64) -> u16 {
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The pseudo-header's sum for an upper-layer checksum: RFC 768 for
    /// IPv4 (addresses, zero, protocol, 16-bit length), RFC 8200 §8.1 for
    /// IPv6 (addresses, 32-bit length, 24 zero bits, next header). Zeros add
    /// nothing, so both are the addresses' words plus protocol plus length.
    pub(super) fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u64 {
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => sum(&a.octets()),
            IpAddr::V6(a) => sum(&a.octets()),
        };
        let len = len as u64;
        addr(src) + addr(dst) + u64::from(protocol) + (len & 0xffff) + (len >> 16)
    }

    /// The checksum field's value for data that sums to `acc` with the
    /// field zero.
    pub(super) fn finish(acc: u64) -> u16 {
        !fold(acc)
    }

    /// Whether data that sums to `acc`, the checksum field included, is
    /// intact: the sum is then all ones (RFC 1071 §1).
    pub(super) fn verifies(acc: u64) -> bool {
        fold(acc) == 0xffff
    }
}

/// Completes the TCP or UDP checksum of an IP packet whose sender left it
/// to checksum offload (the kernel says so: [`Checksums::NotReady`]), so
/// the packet can leave the LAN; the field holds only the pseudo-header's
/// partial sum until then. IPv4 first fragments and IPv6 packets without
/// extension headers are completed; anything else is left as it is.
/// Returns whether it completed one.
pub fn complete_transport_checksum(packet: &mut [u8]) -> bool {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let Some(&first) = packet.first() else {
        return false;
    };
    let (src, dst, protocol, start) = match first >> 4 {
        4 if packet.len() >= 20 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
            if ihl < 20 || fragment != 0 {
                return false;
            }
            let a = |at: usize| {
                IpAddr::from(<[u8; 4]>::try_from(&packet[at..at + 4]).unwrap_or([0; 4]))
            };
            (a(12), a(16), packet[9], ihl)
        }
        6 if packet.len() >= 40 => {
            let a = |at: usize| {
                IpAddr::from(<[u8; 16]>::try_from(&packet[at..at + 16]).unwrap_or([0; 16]))
            };
            (a(8), a(24), packet[6], 40)
        }
        _ => return false,
    };
    let field = match protocol {
        TCP => 16,
        UDP => 6,
        _ => return false,
    };
    let Some(segment) = packet.get_mut(start..) else {
        return false;
    };
    if segment.len() < field + 2 {
        return false;
    }
    segment[field..field + 2].copy_from_slice(&[0, 0]);
    let acc = checksum::pseudo_header(src, dst, protocol, segment.len()) + checksum::sum(segment);
    let sum = match (checksum::finish(acc), protocol) {
        (0, UDP) => 0xffff,
        (sum, _) => sum,
    };
    segment[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Defines a byte of flag bits as a newtype: unknown bits are kept, so a
/// parsed value emits as it came.
macro_rules! flags {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $flag:ident = $bit:expr;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u8);

        impl $name {
            $($(#[$fm])* pub const $flag: $name = $name($bit);)*

            pub const fn empty() -> Self {
                $name(0)
            }

            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }
    };
}

mod addr;
mod arp4;
mod build;
mod classify;
mod ethernet;
mod icmpv6;
mod ip;
mod udp;

pub use addr::*;
pub use arp4::*;
pub use build::*;
pub use classify::*;
pub use ethernet::*;
pub use icmpv6::*;
pub use ip::*;
pub use udp::*;

/// Hop-by-Hop header. Fields are separated by spaces, layers by lines.
/// Frames and helpers shared by this module's and the proxy's tests.
///
/// The frames were made by a separate generator (its own field packing,
/// its own checksum as a sum modulo 0xffff) and every checksum in them was
/// checked by tcpdump (`-vvv`: "sum ok", no "bad cksum"). They are
/// real-world shaped: Linux's ARP, RS, DAD (with its RFC 7527 nonce) and
/// NS; ISC dhclient's DHCPDISCOVER (TOS 0x10, no DF, 300-byte BOOTP); a
/// DHCPv6 Solicit with DUID-LL; DNS queries; an MLDv2 report behind a
#[cfg(test)]
pub(crate) mod fixtures {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::MacAddr;

    pub const ADAPTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
    pub const ADAPTER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0001);
    pub const GN_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0a, 0x01]);
    pub const A4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0xa);
    pub const A_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0a01);
    pub const GN_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0x01]);
    pub const B4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0xb);
    pub const GW4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 1);
    pub const PEER4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 20);
    pub const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 1, 0x20);
    pub const ROGUE: MacAddr = MacAddr([0x02, 0, 0, 0, 0xee, 0x01]);
    pub const ROGUE_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0xee01);

    /// Bytes from hex, whitespace ignored.
    pub fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len() % 2 == 0, "odd number of hex digits");
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    /// The Internet checksum computed another way than the module's: the
    /// ones'-complement sum is the sum modulo 0xffff (RFC 1071 §2), with
    /// 0xffff standing for a non-zero sum that is 0 modulo 0xffff.
    pub fn reference_checksum(data: &[u8]) -> u16 {
        let total: u64 = data
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i % 2 == 0 {
                    u64::from(*b) << 8
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        let mut sum = (total % 0xffff) as u16;
        if sum == 0 && total != 0 {
            sum = 0xffff;
        }
        !sum
    }

    /// Recomputes, with [`reference_checksum`], the IPv4 header checksum and
    /// the UDP or ICMPv6 checksum of a frame without IPv6 extension
    /// headers, after a test changed a field. Leaves alone what its length
    /// fields do not fit.
    pub fn fix_checksums(f: &mut [u8]) {
        let be = |f: &[u8], at: usize| usize::from(u16::from_be_bytes([f[at], f[at + 1]]));
        if f.len() < 14 {
            return;
        }
        match be(f, 12) {
            0x0800 => {
                let ihl = usize::from(f[14.min(f.len() - 1)] & 0x0f) * 4;
                if ihl < 20 || f.len() < 14 + ihl {
                    return;
                }
                f[24..26].fill(0);
                let c = reference_checksum(&f[14..14 + ihl]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
                let at = 14 + ihl;
                if f[23] != 17 || f.len() < at + 8 {
                    return;
                }
                let len = be(f, at + 4);
                if len < 8 || f.len() < at + len {
                    return;
                }
                let mut pseudo = f[26..34].to_vec();
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&(len as u16).to_be_bytes());
                f[at + 6..at + 8].fill(0);
                pseudo.extend_from_slice(&f[at..at + len]);
                let c = match reference_checksum(&pseudo) {
                    0 => 0xffff,
                    c => c,
                };
                f[at + 6..at + 8].copy_from_slice(&c.to_be_bytes());
            }
            0x86dd => {
                if f.len() < 54 {
                    return;
                }
                let len = be(f, 18);
                let next = f[20];
                let field = match next {
                    58 => 56,
                    17 => 60,
                    _ => return,
                };
                if len < field + 2 - 54 || f.len() < 54 + len {
                    return;
                }
                let mut pseudo = f[22..54].to_vec();
                pseudo.extend_from_slice(&(len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, next]);
                f[field..field + 2].fill(0);
                pseudo.extend_from_slice(&f[54..54 + len]);
                let mut c = reference_checksum(&pseudo);
                if next == 17 && c == 0 {
                    c = 0xffff;
                }
                f[field..field + 2].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
    }

    /// Sets an IPv6 frame's payload length to what follows the header.
    pub fn fix_ipv6_len(f: &mut [u8]) {
        let len = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
    }

    /// Every fixture frame, by name.
    pub fn all() -> Vec<(&'static str, Vec<u8>)> {
        [
            ("ARP_REQUEST_GATEWAY", ARP_REQUEST_GATEWAY),
            ("ARP_PROBE_PADDED", ARP_PROBE_PADDED),
            ("RS_UNSPECIFIED", RS_UNSPECIFIED),
            ("RS_LINK_LOCAL", RS_LINK_LOCAL),
            ("NS_DAD", NS_DAD),
            ("NS_RESOLVE_PEER", NS_RESOLVE_PEER),
            ("NS_NUD_PEER", NS_NUD_PEER),
            ("NS_ROUTER_LL", NS_ROUTER_LL),
            ("DHCP4_DISCOVER", DHCP4_DISCOVER),
            ("DHCP6_SOLICIT", DHCP6_SOLICIT),
            ("DNS4_QUERY", DNS4_QUERY),
            ("DNS6_QUERY", DNS6_QUERY),
            ("ICMP4_ECHO_PEER", ICMP4_ECHO_PEER),
            ("RA_ROGUE", RA_ROGUE),
            ("DHCP4_OFFER_ROGUE", DHCP4_OFFER_ROGUE),
            ("DHCP6_ADVERTISE_ROGUE", DHCP6_ADVERTISE_ROGUE),
            ("NA_UNSOLICITED", NA_UNSOLICITED),
            ("TCP6_SYN_PEER", TCP6_SYN_PEER),
            ("MLD_REPORT", MLD_REPORT),
            ("BUILT_IPV4_UDP", BUILT_IPV4_UDP),
            ("BUILT_IPV6_UDP", BUILT_IPV6_UDP),
            ("NA_PROXY_PEER", NA_PROXY_PEER),
            ("NA_PROXY_ROUTER", NA_PROXY_ROUTER),
            ("NA_PROXY_DAD", NA_PROXY_DAD),
            ("RA_ADAPTER", RA_ADAPTER),
        ]
        .into_iter()
        .map(|(name, h)| (name, hex(h)))
        .collect()
    }

    /// GN A asks for the gateway, as Linux sends it (42 bytes, unpadded).
    pub const ARP_REQUEST_GATEWAY: &str = "
        ffffffffffff 020000000a01 0806
        0001 0800 06 04 0001 020000000a01 6440000a 000000000000 64400001";

    /// GN A probes its offered address (RFC 5227, `arping -D`), padded to
    /// 60 bytes as a NIC delivers it.
    pub const ARP_PROBE_PADDED: &str = "
        ffffffffffff 020000000a01 0806
        0001 0800 06 04 0001 020000000a01 00000000 000000000000 6440000a
        000000000000000000000000000000000000";

    /// Linux at boot: RS from :: to all-routers, no option.
    pub const RS_UNSPECIFIED: &str = "
        333300000002 020000000a01 86dd
        60000000 0008 3a ff 00000000000000000000000000000000 ff020000000000000000000000000002
        85 00 7bb8 00000000";

    /// RS from the link-local address with a Source Link-Layer Address option.
    pub const RS_LINK_LOCAL: &str = "
        333300000002 020000000a01 86dd
        60000000 0010 3a ff fe80000000000000000000fffe000a01 ff020000000000000000000000000002
        85 00 672c 00000000
        0101020000000a01";

    /// DAD for GN A's VIPv6: from ::, to its solicited-node address, with a nonce option (type 14).
    pub const NS_DAD: &str = "
        3333ff00000a 020000000a01 86dd
        60000000 0020 3a ff 00000000000000000000000000000000 ff0200000000000000000001ff00000a
        87 00 4fb0 00000000 fd7a637970680000000000000000000a
        0e01a1b2c3d4e5f6";

    /// GN A resolves a peer VIP: from its VIPv6 to the solicited-node address, SLLA.
    pub const NS_RESOLVE_PEER: &str = "
        3333ff010020 020000000a01 86dd
        60000000 0020 3a ff fd7a637970680000000000000000000a ff0200000000000000000001ff010020
        87 00 ca98 00000000 fd7a6379706800000000000000010020
        0101020000000a01";

    /// GN A's unicast NUD probe for a peer VIP (RFC 4861 §7.3.1), no option.
    pub const NS_NUD_PEER: &str = "
        020000000001 020000000a01 86dd
        60000000 0018 3a ff fd7a637970680000000000000000000a fd7a6379706800000000000000010020
        87 00 044b 00000000 fd7a6379706800000000000000010020";

    /// GN A resolves its default router, the adapter's link-local address.
    pub const NS_ROUTER_LL: &str = "
        3333ff000001 020000000a01 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000a01 ff0200000000000000000001ff000001
        87 00 6899 00000000 fe80000000000000000000fffe000001
        0101020000000a01";

    /// ISC dhclient's DHCPDISCOVER: 0.0.0.0:68 to 255.255.255.255:67.
    pub const DHCP4_DISCOVER: &str = "
        ffffffffffff 020000000a01 0800
        4510 0148 0000 0000 40 11 7996 00000000 ffffffff
        0044 0043 0134 b9af
        010106003903f326000000000000000000000000000000000000000002000000
        0a01000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000006382536335010137040103060fff000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        000000000000000000000000";

    /// DHCPv6 Solicit from GN A's link-local address to ff02::1:2, hop limit 1.
    pub const DHCP6_SOLICIT: &str = "
        333300010002 020000000a01 86dd
        60000000 0030 11 01 fe80000000000000000000fffe000a01 ff020000000000000000000000010002
        0222 0223 0030 c211
        015a1b2c0001000a00030001020000000a010008000200000003000c00000a010000000000000000";

    /// A query for peer.example A to the gateway.
    pub const DNS4_QUERY: &str = "
        020000000001 020000000a01 0800
        4500 003a 1c46 4000 40 11 55e2 6440000a 64400001
        9c40 0035 0026 0f3b
        1234010000010000000000000470656572076578616d706c650000010001";

    /// A query for peer.example AAAA to the gateway's VIPv6.
    pub const DNS6_QUERY: &str = "
        020000000001 020000000a01 86dd
        60000000 0026 11 40 fd7a637970680000000000000000000a fd7a6379706800000000000000000001
        9c41 0035 0026 03f9
        4321010000010000000000000470656572076578616d706c6500001c0001";

    /// GN A pings a peer VIP.
    pub const ICMP4_ECHO_PEER: &str = "
        020000000001 020000000a01 0800
        4500 0024 5bd1 4000 40 01 156a 6440000a 64400114
        08 00 4b4a 00010001 637970686f6e6963";

    /// A rogue router's RA: M, O, SLLA, MTU, PIO 2001:db8:1::/64, RDNSS.
    pub const RA_ROGUE: &str = "
        333300000001 02000000ee01 86dd
        60000000 0058 3a ff fe80000000000000000000fffe00ee01 ff020000000000000000000000000001
        86 00 0696 40c0 0708 00000000 00000000
        010102000000ee01
        05010000000005dc
        030440c000015180000038400000000020010db8000100000000000000000000
        190300000000025820010db8000100000000000000000053";

    /// A rogue DHCPv4 server's OFFER, 67 to 68.
    pub const DHCP4_OFFER_ROGUE: &str = "
        ffffffffffff 02000000ee01 0800
        4500 0110 0000 4000 40 11 77dc c0000201 ffffffff
        0043 0044 00fc 185d
        020106003903f326000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        00000000000000000000000063825363350102ff";

    /// A rogue DHCPv6 server's Advertise, 547 to 546.
    pub const DHCP6_ADVERTISE_ROGUE: &str = "
        020000000a01 02000000ee01 86dd
        60000000 000c 11 40 fe80000000000000000000fffe00ee01 fe80000000000000000000fffe000a01
        0223 0222 000c eb06
        025a1b2c";

    /// GN A's unsolicited NA for its VIPv6 to all-nodes, Override set.
    pub const NA_UNSOLICITED: &str = "
        333300000001 020000000a01 86dd
        60000000 0020 3a ff fd7a637970680000000000000000000a ff020000000000000000000000000001
        88 00 a7d1 20000000 fd7a637970680000000000000000000a
        0201020000000a01";

    /// A TCP SYN to a peer VIPv6.
    pub const TCP6_SYN_PEER: &str = "
        020000000001 020000000a01 86dd
        60000000 0014 06 40 fd7a637970680000000000000000000a fd7a6379706800000000000000010020
        c350001600000001000000005002faf04ea60000";

    /// An MLDv2 report to ff02::16 behind a Hop-by-Hop router alert.
    pub const MLD_REPORT: &str = "
        333300000016 020000000a01 86dd
        60000000 0024 00 01 fe80000000000000000000fffe000a01 ff020000000000000000000000000016
        3a00050200000100
        8f0067fe0000000104000000ff0200000000000000000001ff00000a";

    /// What `ipv4_udp` must make: adapter to GN A, 100.64.0.1:67 to 100.64.0.10:68.
    pub const BUILT_IPV4_UDP: &str = "
        020000000a01 020000000001 0800
        4500 002a 0000 4000 40 11 7238 64400001 6440000a
        0043 0044 0016 9100
        637970686f6e6963206468637034";

    /// What `ipv6_udp` must make: link-local 547 to 546, odd-length payload.
    pub const BUILT_IPV6_UDP: &str = "
        020000000a01 020000000001 86dd
        60000000 0017 11 40 fe80000000000000000000fffe000001 fe80000000000000000000fffe000a01
        0223 0222 0017 2fc6
        637970686f6e696320646863703621";

    /// The ND proxy's answer to NS_RESOLVE_PEER: S and O, TLLA, from the adapter's link-local.
    pub const NA_PROXY_PEER: &str = "
        020000000a01 020000000001 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000001 fd7a637970680000000000000000000a
        88 00 733c 60000000 fd7a6379706800000000000000010020
        0201020000000001";

    /// The ND proxy's answer to NS_ROUTER_LL: R, S and O, from the target.
    pub const NA_PROXY_ROUTER: &str = "
        020000000a01 020000000001 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000001 fe80000000000000000000fffe000a01
        88 00 911c e0000000 fe80000000000000000000fffe000001
        0201020000000001";

    /// The ND proxy's answer to DAD for a peer VIP: O only, to all-nodes.
    pub const NA_PROXY_DAD: &str = "
        333300000001 020000000001 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000001 ff020000000000000000000000000001
        88 00 859f 20000000 fd7a6379706800000000000000010020
        0201020000000001";

    /// An RA as the adapter sends it: M, O, SLLA, MTU 1280, PIO
    /// fd7a:6379:7068::/48 with L only, RDNSS = the gateway.
    pub const RA_ADAPTER: &str = "
        333300000001 020000000001 86dd
        60000000 0058 3a ff fe80000000000000000000fffe000001 ff020000000000000000000000000001
        86 00 31d2 40c0 0708 00000000 00000000
        0101020000000001
        0501000000000500
        03043080ffffffffffffffff00000000fd7a6379706800000000000000000000
        1903000000000708fd7a6379706800000000000000000001";
}

#[cfg(test)]
mod tests;
