//! Addresses of inner IP packets.
//!
//! A node reads its virtual interface's packets to pick the tunnel by
//! destination, and checks a decrypted packet's source against the virtual
//! IPs the peer is allowed to use (cryptokey routing, WireGuard whitepaper
//! §2), so the inner packet's addresses are needed on both paths. Only the
//! fixed headers are read; extension headers and options are not.
//!
//! Every input is untrusted (a peer chooses what it encrypts), so these
//! functions return `None` rather than panic on anything that is not a
//! well-formed IPv4 (RFC 791 §3.1) or IPv6 (RFC 8200 §3) header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the IPv4 header without options.
const IPV4_MIN_HEADER_LEN: usize = 20;
/// Length of the IPv6 fixed header.
const IPV6_HEADER_LEN: usize = 40;

/// The source address of an IPv4 or IPv6 packet, or `None` if `packet` is
/// not one.
pub fn inner_source(packet: &[u8]) -> Option<IpAddr> {
    addresses(packet).map(|(source, _)| source)
}

/// The destination address of an IPv4 or IPv6 packet, or `None` if `packet`
/// is not one.
pub fn inner_destination(packet: &[u8]) -> Option<IpAddr> {
    addresses(packet).map(|(_, destination)| destination)
}

/// Source and destination of an IPv4 or IPv6 packet, or `None` if `packet`
/// is not one.
pub fn inner_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    addresses(packet)
}

fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => ipv4_addresses(packet),
        6 => ipv6_addresses(packet),
        _ => None,
    }
}

/// RFC 791 §3.1: IHL is the header length in 32-bit words (at least 5);
/// Total Length covers header and data and must fit in what we were given
/// (trailing link-layer padding is allowed).
fn ipv4_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    if packet.len() < IPV4_MIN_HEADER_LEN {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < IPV4_MIN_HEADER_LEN || total_len < header_len || total_len > packet.len() {
        return None;
    }
    let source: [u8; 4] = packet[12..16].try_into().ok()?;
    let destination: [u8; 4] = packet[16..20].try_into().ok()?;
    Some((
        Ipv4Addr::from(source).into(),
        Ipv4Addr::from(destination).into(),
    ))
}

/// RFC 8200 §3: a 40-byte fixed header; Payload Length counts the bytes
/// after it and must fit in what we were given. (A zero Payload Length with
/// a longer packet is a jumbogram, RFC 2675, and is accepted as such.)
fn ipv6_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    if packet.len() < IPV6_HEADER_LEN {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    if IPV6_HEADER_LEN + payload_len > packet.len() {
        return None;
    }
    let source: [u8; 16] = packet[8..24].try_into().ok()?;
    let destination: [u8; 16] = packet[24..40].try_into().ok()?;
    Some((
        Ipv6Addr::from(source).into(),
        Ipv6Addr::from(destination).into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let total = (20 + payload) as u16;
        let mut p = vec![0u8; 20 + payload];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn ipv4_addresses_are_read() {
        let p = ipv4([100, 64, 0, 1], [100, 64, 0, 2], 8);
        assert_eq!(inner_source(&p), Some("100.64.0.1".parse().unwrap()));
        assert_eq!(inner_destination(&p), Some("100.64.0.2".parse().unwrap()));
    }

    #[test]
    fn ipv4_with_options_and_padding() {
        let mut p = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 12);
        // IHL 6: 4 bytes of options, still within Total Length.
        p[0] = 0x46;
        // Link-layer padding after Total Length is allowed.
        p.extend_from_slice(&[0; 6]);
        assert_eq!(inner_source(&p), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_addresses_are_read() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let p = ipv6(src, dst, 8);
        assert_eq!(inner_source(&p), Some(src.into()));
        assert_eq!(inner_destination(&p), Some(dst.into()));
        assert_eq!(inner_addresses(&p), Some((src.into(), dst.into())));
    }

    #[test]
    fn garbage_is_rejected() {
        let v4 = ipv4([1, 2, 3, 4], [5, 6, 7, 8], 4);
        let v6 = ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 4);

        let mut bad_ihl = v4.clone();
        bad_ihl[0] = 0x44;
        let mut ihl_past_total = v4.clone();
        ihl_past_total[0] = 0x4f;
        let mut total_too_long = v4.clone();
        total_too_long[2..4].copy_from_slice(&100u16.to_be_bytes());
        let mut total_short = v4.clone();
        total_short[2..4].copy_from_slice(&19u16.to_be_bytes());
        let mut payload_too_long = v6.clone();
        payload_too_long[4..6].copy_from_slice(&5u16.to_be_bytes());
        let mut version_5 = v4.clone();
        version_5[0] = 0x55;

        let cases: &[(&str, &[u8])] = &[
            ("empty", &[]),
            ("version 0", &[0x00; 40]),
            ("version 5", &version_5),
            ("ihl below 5", &bad_ihl),
            ("ihl past total length", &ihl_past_total),
            ("ipv4 total length past end", &total_too_long),
            ("ipv4 total length below header", &total_short),
            ("ipv6 payload length past end", &payload_too_long),
        ];
        for (name, packet) in cases {
            assert_eq!(inner_source(packet), None, "{name}");
            assert_eq!(inner_destination(packet), None, "{name}");
        }
    }

    #[test]
    fn every_truncation_is_rejected_without_panic() {
        let v4 = ipv4([1, 2, 3, 4], [5, 6, 7, 8], 0);
        let v6 = ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED, 0);
        for packet in [&v4, &v6] {
            for len in 0..packet.len() {
                assert_eq!(inner_source(&packet[..len]), None, "len {len}");
            }
            assert!(inner_source(packet).is_some());
        }
        // Every one-byte packet and a few patterns: no panics.
        for b in 0..=255u8 {
            let _ = inner_addresses(&[b]);
            let _ = inner_addresses(&[b; 64]);
        }
    }
}
