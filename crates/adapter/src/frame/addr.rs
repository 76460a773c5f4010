//! Link-local, solicited-node and multicast addresses (RFC 4291, RFC 2464).

use super::*;

// ---------------------------------------------------------------------------
// Addresses

/// The link-local address of an interface with this MAC: fe80::/64 and
/// the modified EUI-64 interface identifier, the MAC with ff:fe in the
/// middle and the universal/local bit inverted (RFC 4291 §2.5.1 and
/// appendix A, RFC 2464 §4-§5).
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The solicited-node multicast address of `ip`: ff02::1:ff00:0/104 and
/// its low 24 bits (RFC 4291 §2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let a = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, a[13], a[14], a[15],
    ])
}

/// Whether `ip` is a solicited-node multicast address (ff02::1:ff00:0/104).
pub fn is_solicited_node(ip: Ipv6Addr) -> bool {
    ip.octets()[..13] == solicited_node(Ipv6Addr::UNSPECIFIED).octets()[..13]
}

/// The MAC an IPv6 multicast address is sent to: 33:33 and its low 32
/// bits (RFC 2464 §7).
pub fn multicast_mac(ip: Ipv6Addr) -> MacAddr {
    let a = ip.octets();
    MacAddr([0x33, 0x33, a[12], a[13], a[14], a[15]])
}

/// Whether `ip` is in fe80::/10 (RFC 4291 §2.5.6).
pub fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}
