//! Addresses of inner IP packets, and the ICMP errors a node answers them with.
//!
//! A node reads its virtual interface's packets to pick the tunnel by
//! destination, and checks a decrypted packet's source against the virtual
//! IPs the peer is allowed to use (cryptokey routing, WireGuard whitepaper
//! §2), so the inner packet's addresses are needed on both paths. Only the
//! fixed headers are read; extension headers and options are not.
//!
//! When a packet is larger than the overlay path it would take,
//! [`packet_too_big`] builds the ICMP error that makes the sender's stack
//! lower its path MTU (RFC 1191, RFC 8201).
//!
//! Every input is untrusted (a peer chooses what it encrypts), so these
//! functions return `None` rather than panic on anything that is not a
//! well-formed IPv4 (RFC 791 §3.1) or IPv6 (RFC 8200 §3) header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the IPv4 header without options.
const IPV4_MIN_HEADER_LEN: usize = 20;
/// Length of the IPv6 fixed header.
const IPV6_HEADER_LEN: usize = 40;
/// RFC 8200 §5: every IPv6 link carries 1280 bytes, and RFC 4443 §2.4(c)
/// caps an ICMPv6 error at that size.
const IPV6_MIN_MTU: usize = 1280;
/// RFC 1812 §4.3.2.3: an ICMPv4 error quotes as much of the original as
/// keeps it at most 576 bytes.
const ICMPV4_ERROR_MAX_LEN: usize = 576;
/// Type, code, checksum and the 4-byte field that carries the MTU.
const ICMP_HEADER_LEN: usize = 8;

/// RFC 791 §3.1 flags and fragment offset (bytes 6..8).
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
/// IPv4 protocol number of ICMP (RFC 792).
const PROTOCOL_ICMP: u8 = 1;
/// IPv6 Next Header values of ICMPv6 (RFC 4443 §1) and of the Fragment
/// header (RFC 8200 §4.5).
const NEXT_HEADER_ICMPV6: u8 = 58;
const NEXT_HEADER_FRAGMENT: u8 = 44;
/// RFC 792: Destination Unreachable, code Fragmentation Needed and DF Set.
const ICMPV4_DESTINATION_UNREACHABLE: u8 = 3;
const ICMPV4_FRAGMENTATION_NEEDED: u8 = 4;
/// RFC 4443 §3.2.
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// TTL / Hop Limit of the errors a node originates.
const ERROR_HOP_LIMIT: u8 = 64;

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

/// An ICMP error telling the sender of `packet` (an IPv4 or IPv6 packet read
/// from the TUN device) that the path takes at most `mtu` bytes: ICMPv4
/// Destination Unreachable / Fragmentation Needed (type 3, code 4, next-hop
/// MTU, RFC 1191) or ICMPv6 Packet Too Big (type 2, RFC 4443 §3.2). Its
/// source is the original packet's destination and its destination the
/// original source, so it is written back to the TUN device as if from the
/// peer. None when no such error may be sent: not an IP packet, too short,
/// IPv4 with DF clear (it may be fragmented instead), an ICMP error itself
/// (RFC 1122 / RFC 4443 §2.4: never answer an ICMP error with one), a
/// non-first fragment, or an IPv6 mtu below 1280.
///
/// Also None when either address could not be a unicast source of the
/// error (unspecified, multicast, IPv4 limited broadcast; RFC 1122 §3.2.2,
/// RFC 4443 §2.4(e)): the error would come from the original destination.
///
/// Whether `packet` is in fact larger than `mtu` is the caller's decision;
/// the original is quoted up to its IPv4 Total Length or IPv6 Payload
/// Length, so link-layer padding is not. For IPv6 only the first Next
/// Header is inspected: an ICMPv6 error behind extension headers is not
/// recognised as one, and a Fragment header is read only for its offset.
pub fn packet_too_big(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    match packet.first()? >> 4 {
        4 => ipv4_fragmentation_needed(packet, mtu),
        6 => ipv6_packet_too_big(packet, mtu),
        _ => None,
    }
}

fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => ipv4_addresses(packet),
        6 => ipv6_addresses(packet),
        _ => None,
    }
}

fn ipv4_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let (source, destination) = ipv4_header(packet)?.addresses;
    Some((source.into(), destination.into()))
}

fn ipv6_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let (source, destination) = ipv6_header(packet)?.addresses;
    Some((source.into(), destination.into()))
}

/// The fields of a validated IPv4 header that the functions above need.
struct Ipv4Header {
    header_len: usize,
    total_len: usize,
    addresses: (Ipv4Addr, Ipv4Addr),
}

/// RFC 791 §3.1: IHL is the header length in 32-bit words (at least 5);
/// Total Length covers header and data and must fit in what we were given
/// (trailing link-layer padding is allowed).
fn ipv4_header(packet: &[u8]) -> Option<Ipv4Header> {
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
    Some(Ipv4Header {
        header_len,
        total_len,
        addresses: (source.into(), destination.into()),
    })
}

/// The fields of a validated IPv6 fixed header that the functions above
/// need.
struct Ipv6Header {
    /// Fixed header plus payload: where the packet ends.
    total_len: usize,
    addresses: (Ipv6Addr, Ipv6Addr),
}

/// RFC 8200 §3: a 40-byte fixed header; Payload Length counts the bytes
/// after it and must fit in what we were given. (A zero Payload Length with
/// a longer packet is a jumbogram, RFC 2675, and is accepted as such.)
fn ipv6_header(packet: &[u8]) -> Option<Ipv6Header> {
    if packet.len() < IPV6_HEADER_LEN {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    if IPV6_HEADER_LEN + payload_len > packet.len() {
        return None;
    }
    let total_len = match payload_len {
        0 => packet.len(),
        _ => IPV6_HEADER_LEN + payload_len,
    };
    let source: [u8; 16] = packet[8..24].try_into().ok()?;
    let destination: [u8; 16] = packet[24..40].try_into().ok()?;
    Some(Ipv6Header {
        total_len,
        addresses: (source.into(), destination.into()),
    })
}

fn ipv4_fragmentation_needed(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    let header = ipv4_header(packet)?;
    let packet = &packet[..header.total_len];
    let flags_and_offset = u16::from_be_bytes([packet[6], packet[7]]);
    if flags_and_offset & IPV4_DONT_FRAGMENT == 0 || flags_and_offset & IPV4_FRAGMENT_OFFSET != 0 {
        return None;
    }
    // An ICMP packet too short to carry its type cannot be told apart from
    // an error, so it is not answered either.
    if packet[9] == PROTOCOL_ICMP && is_icmpv4_error(*packet.get(header.header_len)?) {
        return None;
    }
    let (source, destination) = header.addresses;
    if !is_ipv4_unicast(source) || !is_ipv4_unicast(destination) {
        return None;
    }

    let quoted = &packet[..packet
        .len()
        .min(ICMPV4_ERROR_MAX_LEN - IPV4_MIN_HEADER_LEN - ICMP_HEADER_LEN)];
    let len = IPV4_MIN_HEADER_LEN + ICMP_HEADER_LEN + quoted.len();
    let mut reply = Vec::with_capacity(len);
    // Version 4, IHL 5, no TOS; Identification 0 and DF clear.
    reply.extend_from_slice(&[0x45, 0]);
    reply.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0, ERROR_HOP_LIMIT, PROTOCOL_ICMP, 0, 0]);
    reply.extend_from_slice(&destination.octets());
    reply.extend_from_slice(&source.octets());
    let header_checksum = internet_checksum(0, &reply);
    reply[10..12].copy_from_slice(&header_checksum.to_be_bytes());

    // RFC 1191 §4: 16 unused bits, then the Next-Hop MTU.
    reply.extend_from_slice(&[
        ICMPV4_DESTINATION_UNREACHABLE,
        ICMPV4_FRAGMENTATION_NEEDED,
        0,
        0,
        0,
        0,
    ]);
    reply.extend_from_slice(&mtu.to_be_bytes());
    reply.extend_from_slice(quoted);
    let icmp_checksum = internet_checksum(0, &reply[IPV4_MIN_HEADER_LEN..]);
    reply[IPV4_MIN_HEADER_LEN + 2..IPV4_MIN_HEADER_LEN + 4]
        .copy_from_slice(&icmp_checksum.to_be_bytes());
    Some(reply)
}

fn ipv6_packet_too_big(packet: &[u8], mtu: u16) -> Option<Vec<u8>> {
    if usize::from(mtu) < IPV6_MIN_MTU {
        return None;
    }
    let header = ipv6_header(packet)?;
    let packet = &packet[..header.total_len];
    match packet[6] {
        // RFC 4443 §2.4(e.1): an ICMPv6 error has a type below 128. One too
        // short to carry its type is not answered either.
        NEXT_HEADER_ICMPV6 if *packet.get(IPV6_HEADER_LEN)? < 128 => return None,
        // RFC 8200 §4.5: Fragment Offset is the top 13 bits of bytes 2..4
        // of the Fragment header; only the first fragment is answered.
        NEXT_HEADER_FRAGMENT => {
            let offset = packet.get(IPV6_HEADER_LEN + 2..IPV6_HEADER_LEN + 4)?;
            if u16::from_be_bytes([offset[0], offset[1]]) >> 3 != 0 {
                return None;
            }
        }
        _ => {}
    }
    let (source, destination) = header.addresses;
    if !is_ipv6_unicast(source) || !is_ipv6_unicast(destination) {
        return None;
    }

    let quoted = &packet[..packet
        .len()
        .min(IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN)];
    let icmp_len = u16::try_from(ICMP_HEADER_LEN + quoted.len()).ok()?;
    let mut reply = Vec::with_capacity(IPV6_HEADER_LEN + usize::from(icmp_len));
    // Version 6, Traffic Class 0, Flow Label 0.
    reply.extend_from_slice(&[0x60, 0, 0, 0]);
    reply.extend_from_slice(&icmp_len.to_be_bytes());
    reply.extend_from_slice(&[NEXT_HEADER_ICMPV6, ERROR_HOP_LIMIT]);
    reply.extend_from_slice(&destination.octets());
    reply.extend_from_slice(&source.octets());

    reply.extend_from_slice(&[ICMPV6_PACKET_TOO_BIG, 0, 0, 0]);
    reply.extend_from_slice(&u32::from(mtu).to_be_bytes());
    reply.extend_from_slice(quoted);
    // RFC 4443 §2.3, RFC 8200 §8.1: the pseudo-header is both addresses,
    // the upper-layer length and the Next Header value.
    let pseudo_header = ones_complement_sum(
        u64::from(icmp_len) + u64::from(NEXT_HEADER_ICMPV6),
        &reply[8..IPV6_HEADER_LEN],
    );
    let checksum = internet_checksum(pseudo_header, &reply[IPV6_HEADER_LEN..]);
    reply[IPV6_HEADER_LEN + 2..IPV6_HEADER_LEN + 4].copy_from_slice(&checksum.to_be_bytes());
    Some(reply)
}

/// RFC 1122 §3.2.2: Destination Unreachable, Source Quench, Redirect, Time
/// Exceeded and Parameter Problem are the ICMPv4 errors.
fn is_icmpv4_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

fn is_ipv4_unicast(address: Ipv4Addr) -> bool {
    !(address.is_unspecified() || address.is_multicast() || address.is_broadcast())
}

fn is_ipv6_unicast(address: Ipv6Addr) -> bool {
    !(address.is_unspecified() || address.is_multicast())
}

/// RFC 1071: the Internet checksum of `data`, continuing the one's
/// complement sum `initial` (a pseudo-header's, or 0).
fn internet_checksum(initial: u64, data: &[u8]) -> u16 {
    let mut sum = ones_complement_sum(initial, data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits, so the cast keeps every bit.
    !(sum as u16)
}

/// The sum of `data` as big-endian 16-bit words (an odd last byte padded
/// with zero) added to `initial`, not yet folded; a u64 cannot overflow on
/// any packet.
fn ones_complement_sum(initial: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    let mut sum = initial;
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
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

    // Tests of `packet_too_big`. Checksums are verified with an independent
    // one's-complement sum (end-around carry at every step) rather than the
    // module's own helper.

    const CLIENT_V4: [u8; 4] = [100, 64, 0, 2];
    const SERVER_V4: [u8; 4] = [100, 64, 0, 3];

    fn client_v6() -> Ipv6Addr {
        "fd00::2".parse().unwrap()
    }

    fn server_v6() -> Ipv6Addr {
        "fd00::3".parse().unwrap()
    }

    /// RFC 1071 §1 one's-complement sum of `bytes`; a correctly checksummed
    /// region sums to 0xffff.
    fn ones_sum(bytes: &[u8]) -> u16 {
        let mut sum: u16 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from(pair[0]) << 8 | u16::from(pair.get(1).copied().unwrap_or(0));
            let (wrapped, carry) = sum.overflowing_add(word);
            sum = wrapped + u16::from(carry);
        }
        sum
    }

    /// A TCP segment (PSH|ACK, port 40000 -> 443) of `len` bytes with a zero
    /// checksum, to be filled in over the right pseudo-header.
    fn tcp_segment(len: usize) -> Vec<u8> {
        let mut tcp = vec![0u8; len];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        tcp[8..12].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x18;
        tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        tcp
    }

    /// A real IPv4 TCP packet of `len` bytes, DF set, with correct header
    /// and TCP checksums.
    fn tcp_ipv4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut tcp = tcp_segment(len - 20);
        let mut pseudo = [src, dst].concat();
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&tcp);
        let c = !ones_sum(&pseudo);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());

        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = !ones_sum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&tcp);
        assert_eq!(ones_sum(&p[..20]), 0xffff);
        p
    }

    /// The IPv6 pseudo-header (RFC 8200 §8.1) followed by the upper-layer
    /// message.
    fn ipv6_pseudo(src: &[u8], dst: &[u8], next_header: u8, message: &[u8]) -> Vec<u8> {
        let mut pseudo = [src, dst].concat();
        pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, next_header]);
        pseudo.extend_from_slice(message);
        pseudo
    }

    /// A real IPv6 TCP packet of `len` bytes with a correct TCP checksum.
    fn tcp_ipv6(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Vec<u8> {
        let mut tcp = tcp_segment(len - 40);
        let c = !ones_sum(&ipv6_pseudo(&src.octets(), &dst.octets(), 6, &tcp));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut p = ipv6(src, dst, 0);
        p[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
        p[6] = 6;
        p.extend_from_slice(&tcp);
        p
    }

    /// An IPv4 ICMP message of the given type, DF set.
    fn icmpv4(icmp_type: u8) -> Vec<u8> {
        let mut p = ipv4(CLIENT_V4, SERVER_V4, 8);
        p[6] = 0x40;
        p[9] = 1;
        p[20] = icmp_type;
        p
    }

    /// An ICMPv6 message of the given type.
    fn icmpv6(icmp_type: u8) -> Vec<u8> {
        let mut p = ipv6(client_v6(), server_v6(), 8);
        p[6] = 58;
        p[40] = icmp_type;
        p
    }

    #[test]
    fn packet_too_big_ipv4_is_fragmentation_needed_from_the_destination() {
        let packet = tcp_ipv4(CLIENT_V4, SERVER_V4, 1400);
        let reply = packet_too_big(&packet, 1280).expect("DF set TCP is answered");

        assert_eq!(reply.len(), 576, "RFC 1812 §4.3.2.3 cap");
        assert_eq!(reply[0], 0x45);
        assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 576);
        assert_eq!(reply[6] & 0x40, 0, "DF clear");
        assert_eq!(reply[8], 64, "TTL");
        assert_eq!(reply[9], 1, "protocol ICMP");
        assert_eq!(
            inner_addresses(&reply),
            Some((
                Ipv4Addr::from(SERVER_V4).into(),
                Ipv4Addr::from(CLIENT_V4).into()
            ))
        );
        assert_eq!(ones_sum(&reply[..20]), 0xffff, "IPv4 header checksum");

        let icmp = &reply[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4), "type 3 code 4");
        assert_eq!(&icmp[4..6], &[0, 0], "unused");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1280, "next-hop MTU");
        assert_eq!(ones_sum(icmp), 0xffff, "ICMP checksum");
        assert_eq!(&icmp[8..28], &packet[..20], "quotes the original header");
        assert_eq!(&icmp[8..], &packet[..548], "then as much payload as fits");
    }

    #[test]
    fn packet_too_big_ipv6_is_packet_too_big_from_the_destination() {
        let packet = tcp_ipv6(client_v6(), server_v6(), 1400);
        let reply = packet_too_big(&packet, 1300).expect("TCP is answered");

        assert_eq!(reply.len(), 1280, "RFC 4443 §2.4(c) cap");
        assert_eq!(reply[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([reply[4], reply[5]]), 1240);
        assert_eq!(reply[6], 58, "next header ICMPv6");
        assert_eq!(reply[7], 64, "hop limit");
        assert_eq!(
            inner_addresses(&reply),
            Some((server_v6().into(), client_v6().into()))
        );

        let icmp = &reply[40..];
        assert_eq!((icmp[0], icmp[1]), (2, 0), "type 2 code 0");
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            1300,
            "MTU"
        );
        let pseudo = ipv6_pseudo(&reply[8..24], &reply[24..40], 58, icmp);
        assert_eq!(ones_sum(&pseudo), 0xffff, "ICMPv6 checksum");
        assert_eq!(&icmp[8..48], &packet[..40], "quotes the original header");
        assert_eq!(&icmp[8..], &packet[..1232], "then as much payload as fits");
    }

    #[test]
    fn packet_too_big_quotes_a_short_packet_whole_without_padding() {
        let mut v4 = tcp_ipv4(CLIENT_V4, SERVER_V4, 100);
        let v4_len = v4.len();
        v4.extend_from_slice(&[0xee; 6]);
        let reply = packet_too_big(&v4, 68).unwrap();
        assert_eq!(reply.len(), 20 + 8 + 100);
        assert_eq!(&reply[28..], &v4[..v4_len]);
        assert_eq!(ones_sum(&reply[..20]), 0xffff);
        assert_eq!(ones_sum(&reply[20..]), 0xffff);

        let v6 = tcp_ipv6(client_v6(), server_v6(), 100);
        let reply = packet_too_big(&v6, 1280).unwrap();
        assert_eq!(reply.len(), 40 + 8 + 100);
        assert_eq!(&reply[48..], &v6[..]);
        let pseudo = ipv6_pseudo(&reply[8..24], &reply[24..40], 58, &reply[40..]);
        assert_eq!(ones_sum(&pseudo), 0xffff);
    }

    #[test]
    fn packet_too_big_answers_icmp_queries_and_first_fragments() {
        assert!(packet_too_big(&icmpv4(8), 1280).is_some(), "echo request");
        assert!(packet_too_big(&icmpv6(128), 1280).is_some(), "echo request");

        let mut first_v4 = tcp_ipv4(CLIENT_V4, SERVER_V4, 200);
        first_v4[6] = 0x60; // DF and MF, offset 0
        assert!(packet_too_big(&first_v4, 1280).is_some());

        let mut first_v6 = ipv6(client_v6(), server_v6(), 16);
        first_v6[6] = 44;
        first_v6[43] = 0x01; // offset 0, M set
        assert!(packet_too_big(&first_v6, 1280).is_some());
    }

    #[test]
    fn packet_too_big_refuses_what_may_not_be_answered() {
        let v4 = tcp_ipv4(CLIENT_V4, SERVER_V4, 1400);
        let v6 = tcp_ipv6(client_v6(), server_v6(), 1400);

        let mut df_clear = v4.clone();
        df_clear[6] = 0;
        let mut later_fragment_v4 = v4.clone();
        later_fragment_v4[6..8].copy_from_slice(&(0x4000u16 | 185).to_be_bytes());
        let mut icmp_without_type = ipv4(CLIENT_V4, SERVER_V4, 0);
        icmp_without_type[6] = 0x40;
        icmp_without_type[9] = 1;
        let mut multicast_v4 = v4.clone();
        multicast_v4[16..20].copy_from_slice(&[224, 0, 0, 1]);
        let mut broadcast_v4 = v4.clone();
        broadcast_v4[16..20].copy_from_slice(&[255; 4]);
        let mut unspecified_v4 = v4.clone();
        unspecified_v4[12..16].copy_from_slice(&[0; 4]);

        let mut later_fragment_v6 = ipv6(client_v6(), server_v6(), 16);
        later_fragment_v6[6] = 44;
        later_fragment_v6[42..44].copy_from_slice(&(150u16 << 3).to_be_bytes());
        let mut icmpv6_without_type = ipv6(client_v6(), server_v6(), 0);
        icmpv6_without_type[6] = 58;
        let mut multicast_v6 = v6.clone();
        multicast_v6[24..40].copy_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        let mut unspecified_v6 = v6.clone();
        unspecified_v6[8..24].copy_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        let mut version_5 = v4.clone();
        version_5[0] = 0x55;

        let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
            ("ipv4 DF clear".into(), df_clear, 1280),
            ("ipv4 non-first fragment".into(), later_fragment_v4, 1280),
            ("ipv4 ICMP without a type".into(), icmp_without_type, 1280),
            ("ipv4 multicast destination".into(), multicast_v4, 1280),
            ("ipv4 broadcast destination".into(), broadcast_v4, 1280),
            ("ipv4 unspecified source".into(), unspecified_v4, 1280),
            ("ipv6 mtu below 1280".into(), v6.clone(), 1279),
            ("ipv6 mtu 0".into(), v6.clone(), 0),
            ("ipv6 non-first fragment".into(), later_fragment_v6, 1280),
            (
                "ipv6 ICMPv6 without a type".into(),
                icmpv6_without_type,
                1280,
            ),
            ("ipv6 multicast destination".into(), multicast_v6, 1280),
            ("ipv6 unspecified source".into(), unspecified_v6, 1280),
            ("empty".into(), vec![], 1280),
            ("version 0".into(), vec![0; 40], 1280),
            ("version 5".into(), version_5, 1280),
            ("all ones".into(), vec![0xff; 64], 1280),
        ];
        for icmp_type in [3, 4, 5, 11, 12] {
            cases.push((
                format!("ICMP error type {icmp_type}"),
                icmpv4(icmp_type),
                1280,
            ));
        }
        for icmp_type in [1, 2, 3, 4, 127] {
            cases.push((
                format!("ICMPv6 error type {icmp_type}"),
                icmpv6(icmp_type),
                1280,
            ));
        }
        for (name, packet, mtu) in &cases {
            assert_eq!(packet_too_big(packet, *mtu), None, "{name}");
        }

        // Every truncation: Total Length / Payload Length run past the end.
        for packet in [&v4, &v6] {
            for len in 0..packet.len() {
                assert_eq!(packet_too_big(&packet[..len], 1280), None, "len {len}");
            }
        }
        // A reply is itself an ICMP error, so it is never answered.
        let reply = packet_too_big(&v4, 1280).unwrap();
        assert_eq!(packet_too_big(&reply, 1280), None);
        let reply = packet_too_big(&v6, 1280).unwrap();
        assert_eq!(packet_too_big(&reply, 1280), None);
    }

    #[test]
    fn packet_too_big_never_panics_on_random_input() {
        // xorshift64 (Marsaglia 2003), fixed seed so failures reproduce.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut answered = 0;
        for _ in 0..5000 {
            let len = (next() % 100) as usize;
            let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Steer a share of the inputs to valid lengths and flags so the
            // deeper paths are exercised, not only the first checks.
            match (next() % 4, packet.len()) {
                (0, 20..) => {
                    packet[0] = 0x45;
                    packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                    packet[6] = 0x40;
                    packet[7] = 0;
                }
                (1, 40..) => {
                    packet[0] = 0x60;
                    packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
                }
                (2, 1..) => packet[0] = 0x40 | (packet[0] & 0x0f),
                (3, 1..) => packet[0] = 0x60 | (packet[0] & 0x0f),
                _ => {}
            }
            let mtu = next() as u16;
            if let Some(reply) = packet_too_big(&packet, mtu) {
                answered += 1;
                assert!(reply.len() <= 1280);
                assert!(inner_addresses(&reply).is_some());
                assert_eq!(
                    packet_too_big(&reply, mtu),
                    None,
                    "an error is not answered"
                );
            }
        }
        assert!(answered > 100, "only {answered} inputs reached a reply");
    }
}
