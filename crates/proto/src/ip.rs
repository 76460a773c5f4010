//! Addresses of inner IP packets, and the ICMP errors a node answers them with.
//!
//! A node reads its virtual interface's packets to pick the tunnel by
//! destination, and checks a decrypted packet's source against the virtual
//! IPs the peer is allowed to use (cryptokey routing, WireGuard whitepaper
//! §2), so the inner packet's addresses are needed on both paths. Only the
//! fixed headers are read for that; extension headers and options are not.
//!
//! When a packet is larger than the overlay path it would take,
//! [`packet_too_big`] builds the ICMP error that makes the sender's stack
//! lower its path MTU (RFC 1191, RFC 8201), and [`fragment_ipv4`] splits an
//! IPv4 packet that may be fragmented (RFC 791 §3.2). [`clamp_tcp_mss`]
//! lowers the MSS a TCP SYN advertises so that the connection's segments
//! fit the path in the first place (RFC 6691).
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

/// RFC 791 §3.1: the More Fragments flag (bytes 6..8, as above).
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
/// RFC 791 §3.1: Total Length is 16 bits, so no datagram (nor the one a
/// fragment is part of) is longer.
const IPV4_MAX_TOTAL_LEN: usize = 65535;
/// RFC 791 §3.2: every fragment but the last carries a multiple of 8 bytes.
const IPV4_FRAGMENT_UNIT: usize = 8;
/// RFC 791 §3.1 option types: bit 0x80 of the type is the copied flag.
const IPV4_OPTION_COPIED: u8 = 0x80;
/// RFC 791 §3.1 and RFC 9293 §3.2 alike: End of Option List and
/// No-Operation are single bytes; every other option has a length byte.
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
/// IPv4 protocol number and IPv6 Next Header value of TCP (RFC 9293).
const PROTOCOL_TCP: u8 = 6;
/// RFC 9293 §3.1: the TCP header without options.
const TCP_MIN_HEADER_LEN: usize = 20;
/// IHL and TCP Data Offset are 4 bits of 32-bit words, so either header is
/// at most 60 bytes, and its options at most 60 - 20.
const MAX_OPTIONS_LEN: usize = 40;
/// RFC 9293 §3.1: the SYN control bit (byte 13).
const TCP_FLAG_SYN: u8 = 0x02;
/// RFC 9293 §3.2: Maximum Segment Size, kind 2, length 4.
const TCP_OPTION_MSS: u8 = 2;
const TCP_OPTION_MSS_LEN: usize = 4;
/// RFC 9293 §3.7.1 (MUST-15): the default send MSS, 576 - 40 for IPv4 and
/// 1280 - 60 for IPv6; MSS clamping never goes below it.
const IPV4_MIN_MSS: u16 = 536;
const IPV6_MIN_MSS: u16 = 1220;

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

/// ICMP Echo Request (RFC 792) and ICMPv6 Echo Request (RFC 4443 §4.1).
const ICMPV4_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Whether the host's stack may answer `packet` before the write that
/// hands it over returns: TCP (an ACK, a SYN-ACK, a reset) and ICMP or
/// ICMPv6 echo requests. Anything else (UDP for an application, echo
/// replies, errors, IPv6 behind extension headers, malformed packets) gets
/// its answer, if any, later. Reads the fixed headers only (not
/// validated beyond that: the answer is a hint, never a check).
pub fn may_be_answered_at_once(packet: &[u8]) -> bool {
    let (protocol, transport) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= IPV4_MIN_HEADER_LEN => {
            (packet[9], usize::from(packet[0] & 0x0f) * 4)
        }
        Some(6) if packet.len() >= IPV6_HEADER_LEN => (packet[6], IPV6_HEADER_LEN),
        _ => return false,
    };
    match protocol {
        PROTOCOL_TCP => true,
        PROTOCOL_ICMP if packet[0] >> 4 == 4 => packet.get(transport) == Some(&ICMPV4_ECHO_REQUEST),
        NEXT_HEADER_ICMPV6 if packet[0] >> 4 == 6 => {
            packet.get(transport) == Some(&ICMPV6_ECHO_REQUEST)
        }
        _ => false,
    }
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

/// RFC 6691 / RFC 9293 §3.7.1 MSS clamping: lowers the Maximum Segment
/// Size option of a TCP SYN (or SYN-ACK) in `packet` so that full-sized
/// segments of the connection fit in `mtu` bytes, and reports whether it
/// changed anything.
///
/// The limit is `mtu` less the packet's IP header (IHL × 4 for IPv4, 40 for
/// IPv6) and the 20-byte TCP header, but never below the default send MSS
/// of RFC 9293 §3.7.1 (536 for IPv4, 1220 for IPv6). Every MSS option
/// (kind 2, length 4) above the limit is rewritten to it, and the TCP
/// checksum is updated incrementally (RFC 1624 eqn 3), so a segment whose
/// checksum was wrong stays wrong. A kind-2 option of another length is not
/// an MSS option and is left alone, as receivers ignore it.
///
/// Changes nothing and returns false for: anything but IPv4 or IPv6, an
/// IPv4 protocol or an IPv6 fixed header's Next Header other than TCP
/// (extension headers are not walked), a non-first IPv4 fragment, a TCP
/// segment without SYN, a Data Offset below 5 or past the end of the
/// packet (IPv4 Total Length / IPv6 Payload Length), a malformed option
/// list (an option without its length byte, with a length below 2, or
/// running past the Data Offset; RFC 9293 §3.1), or no MSS option above
/// the limit. Options after End of Option List are padding and not read.
pub fn clamp_tcp_mss(packet: &mut [u8], mtu: usize) -> bool {
    clamp_mss(packet, mtu).is_some()
}

/// RFC 791 §3.2 fragmentation of the IPv4 `packet` (read up to its Total
/// Length, so link-layer padding is not sent) into fragments of at most
/// `mtu` bytes each, in order.
///
/// Every fragment carries the original's Identification, TOS, TTL,
/// Protocol, addresses and reserved flag bit. Its data is a multiple of 8
/// bytes but in the last, and its Fragment Offset counts from the
/// original's, so a fragment may be fragmented again: More Fragments is
/// set on all but the last, which keeps the original's. The first fragment
/// keeps every option; the others keep only those whose copied flag (bit
/// 0x80 of the type) is set, padded with End of Option List to a multiple
/// of 4 bytes. Each has its own Total Length and header checksum.
///
/// None when the packet may or need not be fragmented: not a well-formed
/// IPv4 packet (RFC 791 §3.1), a header checksum that does not verify (a
/// new one would hide the damage), Don't Fragment set, a Total Length of
/// at most `mtu`, an `mtu` below the header length plus 8, a malformed
/// option list (an option without its length byte, with a length below 2,
/// or running past the header), or a Fragment Offset that puts the end of
/// the packet past the 65535 bytes a datagram may have.
pub fn fragment_ipv4(packet: &[u8], mtu: usize) -> Option<Vec<Vec<u8>>> {
    if packet.first()? >> 4 != 4 {
        return None;
    }
    let header = ipv4_header(packet)?;
    let packet = &packet[..header.total_len];
    let first_header = &packet[..header.header_len];
    let flags_and_offset = u16::from_be_bytes([packet[6], packet[7]]);
    if flags_and_offset & IPV4_DONT_FRAGMENT != 0
        || packet.len() <= mtu
        || mtu < header.header_len + IPV4_FRAGMENT_UNIT
        || internet_checksum(0, first_header) != 0
    {
        return None;
    }
    let offset = usize::from(flags_and_offset & IPV4_FRAGMENT_OFFSET) * IPV4_FRAGMENT_UNIT;
    if offset + packet.len() > IPV4_MAX_TOTAL_LEN {
        return None;
    }
    let later_header = ipv4_later_fragment_header(first_header)?;
    // Reserved bit kept, DF known clear; MF and the offset are per fragment.
    let kept_flags = flags_and_offset & !(IPV4_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET);
    let last_more = flags_and_offset & IPV4_MORE_FRAGMENTS;

    let data = &packet[header.header_len..];
    let mut fragments = Vec::new();
    let mut sent = 0;
    while sent < data.len() {
        let fragment_header = if sent == 0 {
            first_header
        } else {
            &later_header[..]
        };
        // mtu - header >= 8 (the later header is no longer than the first),
        // so every fragment makes progress and `sent` stays a multiple of 8.
        let room = (mtu - fragment_header.len()) / IPV4_FRAGMENT_UNIT * IPV4_FRAGMENT_UNIT;
        let len = room.min(data.len() - sent);
        let more = if sent + len < data.len() {
            IPV4_MORE_FRAGMENTS
        } else {
            last_more
        };
        // offset + sent < 65535 (checked above), so it fits 13 bits of units.
        let units = u16::try_from((offset + sent) / IPV4_FRAGMENT_UNIT).ok()?;

        let mut fragment = Vec::with_capacity(fragment_header.len() + len);
        fragment.extend_from_slice(fragment_header);
        fragment.extend_from_slice(&data[sent..sent + len]);
        let total_len = u16::try_from(fragment.len()).ok()?;
        fragment[2..4].copy_from_slice(&total_len.to_be_bytes());
        fragment[6..8].copy_from_slice(&(kept_flags | more | units).to_be_bytes());
        fragment[10..12].copy_from_slice(&[0, 0]);
        let checksum = internet_checksum(0, &fragment[..fragment_header.len()]);
        fragment[10..12].copy_from_slice(&checksum.to_be_bytes());
        fragments.push(fragment);
        sent += len;
    }
    Some(fragments)
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

/// [`clamp_tcp_mss`]: Some when an MSS option was lowered, None when
/// nothing was changed.
fn clamp_mss(packet: &mut [u8], mtu: usize) -> Option<()> {
    let (ip_header_len, total_len, floor) = match packet.first()? >> 4 {
        4 => {
            let header = ipv4_header(packet)?;
            let flags_and_offset = u16::from_be_bytes([packet[6], packet[7]]);
            if packet[9] != PROTOCOL_TCP || flags_and_offset & IPV4_FRAGMENT_OFFSET != 0 {
                return None;
            }
            (header.header_len, header.total_len, IPV4_MIN_MSS)
        }
        6 => {
            let header = ipv6_header(packet)?;
            if packet[6] != PROTOCOL_TCP {
                return None;
            }
            (IPV6_HEADER_LEN, header.total_len, IPV6_MIN_MSS)
        }
        _ => return None,
    };
    let limit = mtu
        .saturating_sub(ip_header_len + TCP_MIN_HEADER_LEN)
        .max(usize::from(floor));
    // No MSS exceeds a limit that does not fit 16 bits.
    let limit = u16::try_from(limit).ok()?;

    // Both headers checked that the IP header ends by `total_len`.
    let segment = &mut packet[ip_header_len..total_len];
    if segment.len() < TCP_MIN_HEADER_LEN || segment[13] & TCP_FLAG_SYN == 0 {
        return None;
    }
    let data_offset = usize::from(segment[12] >> 4) * 4;
    if data_offset < TCP_MIN_HEADER_LEN || data_offset > segment.len() {
        return None;
    }
    // Bit i: an MSS option starts at byte i of the options, of which there
    // are at most 40 (or the walk fails).
    let mut mss_options = 0u64;
    walk_options(&segment[TCP_MIN_HEADER_LEN..data_offset], |at, option| {
        if option[0] == TCP_OPTION_MSS && option.len() == TCP_OPTION_MSS_LEN {
            mss_options |= 1 << at;
        }
    })?;

    let mut checksum = u16::from_be_bytes([segment[16], segment[17]]);
    let mut changed = false;
    for at in (0..data_offset - TCP_MIN_HEADER_LEN).filter(|at| mss_options & (1 << at) != 0) {
        // The walk checked that all 4 bytes of the option are before the
        // Data Offset.
        let value_at = TCP_MIN_HEADER_LEN + at + 2;
        let mss = u16::from_be_bytes([segment[value_at], segment[value_at + 1]]);
        if mss <= limit {
            continue;
        }
        segment[value_at..value_at + 2].copy_from_slice(&limit.to_be_bytes());
        // The checksum sums 16-bit words from the start of the segment (the
        // pseudo-header is a whole number of them). A value at an odd offset
        // straddles two words; as the one's complement sum commutes with
        // swapping bytes (RFC 1071 §2(B)), it counts byte-swapped.
        let (old, new) = if value_at & 1 == 1 {
            (mss.swap_bytes(), limit.swap_bytes())
        } else {
            (mss, limit)
        };
        checksum = checksum_update(checksum, old, new);
        changed = true;
    }
    if !changed {
        return None;
    }
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    Some(())
}

/// Walks an IPv4 (RFC 791 §3.1) or TCP (RFC 9293 §3.1) option list, which
/// share a format: End of Option List (0) ends it and what follows is
/// padding; No-Operation (1) is a single byte; any other option is its
/// kind, a length byte counting the whole option (at least 2), and data.
/// `visit` gets each of those others' offset in `options` and its bytes.
/// None when one has no length byte, a length below 2 or runs past the end
/// of `options`, or when `options` is longer than either protocol allows
/// (the options visited before that are not undone).
fn walk_options(options: &[u8], mut visit: impl FnMut(usize, &[u8])) -> Option<()> {
    if options.len() > MAX_OPTIONS_LEN {
        return None;
    }
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            OPTION_END => break,
            OPTION_NOP => at += 1,
            _ => {
                let len = usize::from(*options.get(at + 1)?);
                if len < 2 {
                    return None;
                }
                visit(at, options.get(at..at + len)?);
                at += len;
            }
        }
    }
    Some(())
}

/// RFC 791 §3.2: the header of every fragment but the first is `header`'s
/// fixed 20 bytes followed by only the options whose copied flag is set,
/// padded with End of Option List to a multiple of 4 bytes, with IHL to
/// match; its Total Length, flags, offset and checksum are the caller's to
/// set. None when the options are malformed (see [`walk_options`]).
fn ipv4_later_fragment_header(header: &[u8]) -> Option<Vec<u8>> {
    let options = header.get(IPV4_MIN_HEADER_LEN..)?;
    let mut later = header[..IPV4_MIN_HEADER_LEN].to_vec();
    walk_options(options, |_, option| {
        if option[0] & IPV4_OPTION_COPIED != 0 {
            later.extend_from_slice(option);
        }
    })?;
    later.resize(later.len().next_multiple_of(4), OPTION_END);
    // At most 60 bytes: the copied options are no longer than all of them.
    let ihl = u8::try_from(later.len() / 4).ok()?;
    later[0] = 0x40 | ihl;
    Some(later)
}

/// RFC 1624 eqn 3: the Internet checksum `checksum` after one 16-bit word
/// of what it covers changes from `old` to `new`, HC' = ~(~HC + ~m + m').
fn checksum_update(checksum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits, so the cast keeps every bit.
    !(sum as u16)
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

    #[test]
    fn only_tcp_and_echo_requests_may_be_answered_at_once() {
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[9] = PROTOCOL_TCP;
        assert!(may_be_answered_at_once(&v4));
        v4[9] = PROTOCOL_ICMP;
        v4[20] = ICMPV4_ECHO_REQUEST;
        assert!(may_be_answered_at_once(&v4));
        v4[20] = 0; // echo reply
        assert!(!may_be_answered_at_once(&v4));
        v4[9] = 17; // UDP
        assert!(!may_be_answered_at_once(&v4));
        // An echo request's type behind IPv4 options.
        v4[0] = 0x46;
        v4[9] = PROTOCOL_ICMP;
        v4[20] = 0;
        v4.extend([ICMPV4_ECHO_REQUEST, 0, 0, 0]);
        v4[24] = ICMPV4_ECHO_REQUEST;
        assert!(may_be_answered_at_once(&v4));
        v4.truncate(24);
        assert!(!may_be_answered_at_once(&v4), "type past the end");
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = NEXT_HEADER_ICMPV6;
        v6[40] = ICMPV6_ECHO_REQUEST;
        assert!(may_be_answered_at_once(&v6));
        v6[40] = 129; // echo reply
        assert!(!may_be_answered_at_once(&v6));
        v6[6] = PROTOCOL_TCP;
        assert!(may_be_answered_at_once(&v6));
        v6[6] = NEXT_HEADER_FRAGMENT;
        assert!(!may_be_answered_at_once(&v6));
        for junk in [&[][..], &[0x45][..], &[0x60; 39][..], &[0x10; 60][..]] {
            assert!(!may_be_answered_at_once(junk));
        }
    }

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

    // Tests of `clamp_tcp_mss`. TCP checksums are verified by summing the
    // pseudo-header and the whole segment again with `ones_sum`.

    /// The pseudo-header (RFC 9293 §3.1 for IPv4, RFC 8200 §8.1 for IPv6)
    /// and the TCP segment of `packet`.
    fn tcp_pseudo_and_segment(packet: &[u8]) -> Vec<u8> {
        if packet[0] >> 4 == 4 {
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let segment = &packet[header_len..total_len];
            let mut pseudo = packet[12..20].to_vec();
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
            pseudo.extend_from_slice(segment);
            pseudo
        } else {
            ipv6_pseudo(&packet[8..24], &packet[24..40], 6, &packet[40..])
        }
    }

    fn tcp_checksum_ok(packet: &[u8]) -> bool {
        ones_sum(&tcp_pseudo_and_segment(packet)) == 0xffff
    }

    /// Where the TCP header of `packet` starts.
    fn tcp_start(packet: &[u8]) -> usize {
        match packet[0] >> 4 {
            4 => usize::from(packet[0] & 0x0f) * 4,
            _ => 40,
        }
    }

    /// Fills in the TCP checksum of `packet` (and, for IPv4, the header
    /// checksum).
    fn fix_checksums(packet: &mut [u8]) {
        let at = tcp_start(packet) + 16;
        packet[at..at + 2].copy_from_slice(&[0, 0]);
        let c = !ones_sum(&tcp_pseudo_and_segment(packet));
        packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
        if packet[0] >> 4 == 4 {
            let header_len = tcp_start(packet);
            packet[10..12].copy_from_slice(&[0, 0]);
            let c = !ones_sum(&packet[..header_len]);
            packet[10..12].copy_from_slice(&c.to_be_bytes());
        }
        assert!(tcp_checksum_ok(packet));
    }

    /// A TCP SYN (port 40000 -> 443) with `options` (a multiple of 4 bytes)
    /// and 12 bytes of data, checksum not yet filled in.
    fn syn_segment(options: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let mut tcp = tcp_segment(20 + options.len() + 12);
        tcp[12] = (((20 + options.len()) / 4) << 4) as u8;
        tcp[13] = 0x02;
        tcp[20..20 + options.len()].copy_from_slice(options);
        tcp
    }

    /// An IPv4 TCP SYN with `options`, DF set, checksums correct.
    fn syn_ipv4(options: &[u8]) -> Vec<u8> {
        let tcp = syn_segment(options);
        let mut p = ipv4(CLIENT_V4, SERVER_V4, tcp.len());
        p[6] = 0x40;
        p[9] = 6;
        p[20..].copy_from_slice(&tcp);
        fix_checksums(&mut p);
        p
    }

    /// An IPv6 TCP SYN with `options`, checksum correct.
    fn syn_ipv6(options: &[u8]) -> Vec<u8> {
        let tcp = syn_segment(options);
        let mut p = ipv6(client_v6(), server_v6(), tcp.len());
        p[6] = 6;
        p[40..].copy_from_slice(&tcp);
        fix_checksums(&mut p);
        p
    }

    /// The MSS option's value at byte `option_at` of `packet`'s TCP options.
    fn mss_at(packet: &[u8], option_at: usize) -> u16 {
        let at = tcp_start(packet) + 20 + option_at;
        assert_eq!(packet[at..at + 2], [2, 4], "an MSS option");
        u16::from_be_bytes([packet[at + 2], packet[at + 3]])
    }

    /// MSS 1460 alone.
    const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];
    /// Linux's SYN: MSS 1460, SACK permitted, timestamps, NOP, window
    /// scale 7.
    const LINUX_SYN: [u8; 20] = [
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0, 1, 3, 3, 7,
    ];

    /// Clamps `packet` and checks that only the MSS value at `option_at`
    /// and the TCP checksum changed, and that the checksum still verifies.
    fn assert_clamped(packet: &[u8], mtu: usize, option_at: usize, expected: u16) {
        let mut clamped = packet.to_vec();
        assert!(clamp_tcp_mss(&mut clamped, mtu), "clamped");
        assert_eq!(mss_at(&clamped, option_at), expected);
        assert!(tcp_checksum_ok(&clamped), "TCP checksum after clamping");
        let tcp = tcp_start(packet);
        let value = tcp + 20 + option_at + 2;
        for (i, (a, b)) in packet.iter().zip(&clamped).enumerate() {
            if ![value, value + 1, tcp + 16, tcp + 17].contains(&i) {
                assert_eq!(a, b, "byte {i} changed");
            }
        }
        if packet[0] >> 4 == 4 {
            assert_eq!(ones_sum(&clamped[..tcp]), 0xffff, "IPv4 header untouched");
        }
    }

    /// `clamp_tcp_mss` returns false and leaves `packet` as it was.
    fn assert_untouched(packet: &[u8], mtu: usize, name: &str) {
        let mut copy = packet.to_vec();
        assert!(!clamp_tcp_mss(&mut copy, mtu), "{name}");
        assert_eq!(copy, packet, "{name}");
    }

    #[test]
    fn clamp_tcp_mss_lowers_an_ipv4_syn() {
        // 1400 - 20 - 20.
        assert_clamped(&syn_ipv4(&MSS_1460), 1400, 0, 1360);
        assert_clamped(&syn_ipv4(&LINUX_SYN), 1400, 0, 1360);
        assert_clamped(&syn_ipv4(&LINUX_SYN), 1419, 0, 1379);
        // A SYN-ACK too.
        let mut syn_ack = syn_ipv4(&LINUX_SYN);
        syn_ack[33] = 0x12;
        fix_checksums(&mut syn_ack);
        assert_clamped(&syn_ack, 1300, 0, 1260);
        // A first fragment (MF set, offset 0) carries the TCP header.
        let mut first_fragment = syn_ipv4(&MSS_1460);
        first_fragment[6] = 0x20;
        fix_checksums(&mut first_fragment);
        assert_clamped(&first_fragment, 1400, 0, 1360);
    }

    #[test]
    fn clamp_tcp_mss_lowers_an_ipv6_syn() {
        // 1400 - 40 - 20.
        assert_clamped(&syn_ipv6(&MSS_1460), 1400, 0, 1340);
        assert_clamped(&syn_ipv6(&LINUX_SYN), 1420, 0, 1360);
        assert_clamped(&syn_ipv6(&[2, 4, 0xff, 0xff]), 1500, 0, 1440);
    }

    #[test]
    fn clamp_tcp_mss_finds_the_option_behind_others() {
        // NOP, NOP, timestamps, then MSS: the value at an even offset.
        let ts_first = [1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 2, 4, 0x05, 0xb4];
        assert_clamped(&syn_ipv4(&ts_first), 1400, 12, 1360);
        assert_clamped(&syn_ipv6(&ts_first), 1400, 12, 1340);
        // Behind 1 and 3 NOPs the value is at an odd offset in the segment,
        // so it straddles two checksummed words.
        let one_nop = [1, 2, 4, 0x05, 0xb4, 0, 0, 0];
        assert_clamped(&syn_ipv4(&one_nop), 1400, 1, 1360);
        assert_clamped(&syn_ipv6(&one_nop), 1400, 1, 1340);
        let three_nops = [1, 1, 1, 2, 4, 0x05, 0xb4, 0];
        assert_clamped(&syn_ipv4(&three_nops), 1400, 3, 1360);
        // Behind window scale and SACK permitted: 3 + 2 bytes, odd again.
        let ws_sack = [3, 3, 7, 4, 2, 2, 4, 0x05, 0xb4, 1, 1, 1];
        assert_clamped(&syn_ipv6(&ws_sack), 1400, 5, 1340);
        // A kind-2 option of another length is not MSS and is skipped.
        let odd_mss_first = [2, 3, 9, 2, 4, 0x05, 0xb4, 0];
        assert_clamped(&syn_ipv4(&odd_mss_first), 1400, 3, 1360);
    }

    #[test]
    fn clamp_tcp_mss_checksum_matches_a_full_recomputation() {
        // Every alignment, values around the carries, many limits.
        for nops in 0..4 {
            for mss in [1221u16, 1300, 1460, 0x7fff, 0x8000, 0xff00, 0xfffe, 0xffff] {
                for mtu in (1280..=1600).step_by(7).chain([65535, 65555]) {
                    let mut options = vec![1; nops];
                    options.extend_from_slice(&[2, 4]);
                    options.extend_from_slice(&mss.to_be_bytes());
                    options.resize(8, 0);
                    for (packet, limit) in [
                        (syn_ipv4(&options), mtu - 40),
                        (syn_ipv6(&options), mtu - 60),
                    ] {
                        let limit = limit.max(if packet[0] >> 4 == 4 { 536 } else { 1220 });
                        if usize::from(mss) > limit {
                            assert_clamped(&packet, mtu, nops, limit as u16);
                        } else {
                            assert_untouched(&packet, mtu, "small enough");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn clamp_tcp_mss_clamps_every_mss_option() {
        let two = [2, 4, 0x05, 0xb4, 1, 2, 4, 0x05, 0xa0, 0, 0, 0];
        let mut packet = syn_ipv4(&two);
        assert!(clamp_tcp_mss(&mut packet, 1400));
        assert_eq!((mss_at(&packet, 0), mss_at(&packet, 5)), (1360, 1360));
        assert!(tcp_checksum_ok(&packet));

        // Only the one above the limit changes.
        let one_small = [2, 4, 0x04, 0x00, 2, 4, 0x05, 0xb4];
        assert_clamped(&syn_ipv6(&one_small), 1400, 4, 1340);
    }

    #[test]
    fn clamp_tcp_mss_never_goes_below_the_default_mss() {
        assert_clamped(&syn_ipv4(&MSS_1460), 576, 0, 536);
        assert_clamped(&syn_ipv4(&MSS_1460), 500, 0, 536);
        assert_clamped(&syn_ipv4(&MSS_1460), 0, 0, 536);
        assert_clamped(&syn_ipv6(&MSS_1460), 1280, 0, 1220);
        assert_clamped(&syn_ipv6(&MSS_1460), 1000, 0, 1220);
        assert_clamped(&syn_ipv6(&MSS_1460), 0, 0, 1220);
        assert_untouched(&syn_ipv4(&[2, 4, 0x02, 0x18]), 100, "536 at the floor");
        assert_untouched(&syn_ipv6(&[2, 4, 0x04, 0xc4]), 100, "1220 at the floor");
        assert_untouched(&syn_ipv4(&[2, 4, 0, 100]), 100, "below the floor");
    }

    #[test]
    fn clamp_tcp_mss_counts_ipv4_options_in_the_header() {
        // IHL 6 (a 4-byte NOP-padded option): 1400 - 24 - 20.
        let base = syn_ipv4(&MSS_1460);
        let mut packet = base[..20].to_vec();
        packet.extend_from_slice(&[1, 1, 1, 0]);
        packet.extend_from_slice(&base[20..]);
        packet[0] = 0x46;
        let total_len = packet.len() as u16;
        packet[2..4].copy_from_slice(&total_len.to_be_bytes());
        fix_checksums(&mut packet);
        assert_clamped(&packet, 1400, 0, 1356);
    }

    #[test]
    fn clamp_tcp_mss_leaves_what_it_should_not_clamp() {
        let v4 = syn_ipv4(&LINUX_SYN);
        let v6 = syn_ipv6(&LINUX_SYN);

        assert_untouched(&v4, 1500, "1460 fits 1500");
        assert!(clamp_tcp_mss(&mut v6.clone(), 1500), "1460 is above 1440");
        assert_untouched(&v6, 1520, "1460 fits 1520");
        assert_untouched(&v4, usize::MAX, "huge mtu");
        assert_untouched(&syn_ipv4(&[1, 1, 1, 1]), 1400, "no MSS option");
        assert_untouched(&syn_ipv4(&[]), 1400, "no options");

        let mut ack = v4.clone();
        ack[33] = 0x10;
        fix_checksums(&mut ack);
        let mut psh_ack_v6 = v6.clone();
        psh_ack_v6[53] = 0x18;
        fix_checksums(&mut psh_ack_v6);
        let mut udp = v4.clone();
        udp[9] = 17;
        let mut later_fragment = v4.clone();
        later_fragment[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        let mut hop_by_hop = v6.clone();
        hop_by_hop[6] = 0;
        let mut fragment_header = v6.clone();
        fragment_header[6] = 44;
        let mut version_5 = v4.clone();
        version_5[0] = 0x55;
        let eol_first = syn_ipv4(&[0, 0, 0, 0, 2, 4, 0x05, 0xb4]);
        let mut checksum_wrong = v4.clone();
        checksum_wrong[36] ^= 0xff;

        for (name, packet) in [
            ("ipv4 ACK without SYN", &ack),
            ("ipv6 PSH ACK without SYN", &psh_ack_v6),
            ("UDP", &udp),
            ("non-first fragment", &later_fragment),
            ("ipv6 extension header first", &hop_by_hop),
            ("ipv6 fragment header first", &fragment_header),
            ("version 5", &version_5),
            ("MSS after End of Option List", &eol_first),
        ] {
            assert_untouched(packet, 1400, name);
        }

        // A wrong checksum stays exactly as wrong.
        let mut clamped = checksum_wrong.clone();
        assert!(clamp_tcp_mss(&mut clamped, 1400));
        assert_eq!(
            ones_sum(&tcp_pseudo_and_segment(&clamped)),
            ones_sum(&tcp_pseudo_and_segment(&checksum_wrong))
        );
    }

    #[test]
    fn clamp_tcp_mss_rejects_malformed_options_without_panic() {
        let cases: &[(&str, &[u8])] = &[
            ("length 0 before MSS", &[8, 0, 2, 4, 0x05, 0xb4, 0, 0]),
            ("length 1 before MSS", &[8, 1, 2, 4, 0x05, 0xb4, 0, 0]),
            (
                "length past the end after MSS",
                &[2, 4, 0x05, 0xb4, 8, 10, 0, 0],
            ),
            ("MSS without its length byte", &[1, 1, 1, 2]),
            ("MSS past the data offset", &[1, 1, 2, 4]),
            ("MSS length 1", &[2, 1, 0x05, 0xb4]),
            ("MSS length 0", &[2, 0, 0x05, 0xb4]),
            ("MSS length past the end", &[2, 5, 0x05, 0xb4]),
            ("kind 255 length 255", &[255, 255, 2, 4, 0x05, 0xb4, 0, 0]),
            ("only a kind at the end", &[1, 1, 1, 1, 1, 1, 1, 8]),
        ];
        for (name, options) in cases {
            assert_untouched(&syn_ipv4(options), 1400, name);
            assert_untouched(&syn_ipv6(options), 1400, name);
        }

        let v4 = syn_ipv4(&MSS_1460);
        let v6 = syn_ipv6(&MSS_1460);
        let mut data_offset_4 = v4.clone();
        data_offset_4[32] = 0x40;
        let mut data_offset_past_end = v4.clone();
        data_offset_past_end[32] = 0xf0;
        let mut segment_19_bytes = v4[..39].to_vec();
        segment_19_bytes[2..4].copy_from_slice(&39u16.to_be_bytes());
        let mut total_len_past_end = v4.clone();
        total_len_past_end[2..4].copy_from_slice(&2000u16.to_be_bytes());
        let mut payload_len_past_end = v6.clone();
        payload_len_past_end[4..6].copy_from_slice(&2000u16.to_be_bytes());
        let mut v6_segment_short = v6[..50].to_vec();
        v6_segment_short[4..6].copy_from_slice(&10u16.to_be_bytes());
        for (name, packet) in [
            ("data offset 4", &data_offset_4),
            ("data offset past the end", &data_offset_past_end),
            ("19-byte segment", &segment_19_bytes),
            ("total length past the end", &total_len_past_end),
            ("payload length past the end", &payload_len_past_end),
            ("10-byte ipv6 segment", &v6_segment_short),
        ] {
            assert_untouched(packet, 1400, name);
        }
        for packet in [
            vec![],
            vec![0x45],
            vec![0x60; 39],
            vec![0xff; 80],
            vec![0; 80],
        ] {
            assert_untouched(&packet, 1400, "garbage");
        }
    }

    #[test]
    fn clamp_tcp_mss_survives_every_truncation() {
        for packet in [syn_ipv4(&LINUX_SYN), syn_ipv6(&LINUX_SYN)] {
            let tcp = tcp_start(&packet);
            for len in 0..packet.len() {
                // The buffer alone cut short: the length field runs past it.
                assert_untouched(&packet[..len], 1300, &format!("cut at {len}"));

                // The length field cut too: clamped as soon as the options
                // are whole.
                let mut cut = packet[..len].to_vec();
                if packet[0] >> 4 == 4 && len >= 4 {
                    cut[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                } else if len >= 6 {
                    cut[4..6].copy_from_slice(&(len.saturating_sub(40) as u16).to_be_bytes());
                }
                let whole = len >= tcp + 40;
                assert_eq!(clamp_tcp_mss(&mut cut, 1300), whole, "length {len}");
                if whole {
                    assert_eq!(mss_at(&cut, 0), 1300 - tcp as u16 - 20);
                }
            }
        }
    }

    #[test]
    fn clamp_tcp_mss_never_panics_and_keeps_checksums_on_random_input() {
        // xorshift64 (Marsaglia 2003), fixed seed so failures reproduce.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut clamped = 0;
        for round in 0..5000 {
            // Options from real kinds (NOP, MSS, window scale, SACK
            // permitted, timestamps), then padding with EOL.
            let mut options = Vec::new();
            loop {
                let option: &[u8] = match next() % 6 {
                    0 => &[1],
                    1 => &[2, 4, 0, 0],
                    2 => &[3, 3, 7],
                    3 => &[4, 2],
                    4 => &[8, 10, 1, 2, 3, 4, 5, 6, 7, 8],
                    _ => &[],
                };
                if option.is_empty() || options.len() + option.len() > 40 {
                    break;
                }
                let start = options.len();
                options.extend_from_slice(option);
                if option[0] == 2 {
                    options[start + 2..start + 4].copy_from_slice(&(next() as u16).to_be_bytes());
                }
            }
            options.resize(options.len().next_multiple_of(4), 0);
            let mut packet = if round % 2 == 0 {
                syn_ipv4(&options)
            } else {
                syn_ipv6(&options)
            };
            let mtu = (next() % 2000) as usize;
            // Some rounds: corrupt a byte or cut the packet (keeping the
            // length field), so the malformed paths run too.
            match next() % 4 {
                0 => {
                    let at = (next() as usize) % packet.len();
                    packet[at] = next() as u8;
                    let _ = clamp_tcp_mss(&mut packet, mtu);
                }
                1 => {
                    let len = (next() as usize) % packet.len();
                    packet.truncate(len);
                    let _ = clamp_tcp_mss(&mut packet, mtu);
                }
                _ => {
                    let before = packet.clone();
                    if clamp_tcp_mss(&mut packet, mtu) {
                        clamped += 1;
                        assert!(tcp_checksum_ok(&packet), "round {round}");
                        assert_eq!(packet.len(), before.len());
                    } else {
                        assert_eq!(packet, before, "round {round}");
                    }
                }
            }
        }
        assert!(clamped > 500, "only {clamped} rounds clamped");
    }

    // Tests of `fragment_ipv4`, with reassembly written here (RFC 791
    // §3.2, in order) to check the fragments against the original.

    /// An IPv4 UDP packet of `len` bytes with a 20-byte header plus
    /// `options` (a multiple of 4 bytes), DF clear, Identification 0xbeef,
    /// patterned data and a correct header checksum.
    fn udp_ipv4(options: &[u8], len: usize) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let header_len = 20 + options.len();
        let mut p = ipv4(CLIENT_V4, SERVER_V4, len - 20);
        p[0] = 0x40 | (header_len / 4) as u8;
        p[4..6].copy_from_slice(&0xbeefu16.to_be_bytes());
        p[20..header_len].copy_from_slice(options);
        let udp_len = (len - header_len) as u16;
        p[header_len..header_len + 2].copy_from_slice(&5353u16.to_be_bytes());
        p[header_len + 2..header_len + 4].copy_from_slice(&53u16.to_be_bytes());
        p[header_len + 4..header_len + 6].copy_from_slice(&udp_len.to_be_bytes());
        for (i, b) in p[header_len + 8..].iter_mut().enumerate() {
            *b = (i * 7 + i / 256) as u8;
        }
        let c = !ones_sum(&p[..header_len]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn header_len_of(packet: &[u8]) -> usize {
        usize::from(packet[0] & 0x0f) * 4
    }

    fn offset_of(packet: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff) * 8
    }

    fn more_fragments(packet: &[u8]) -> bool {
        packet[6] & 0x20 != 0
    }

    /// Checks each of `fragments` of `original` (at most `mtu` bytes, a
    /// correct Total Length and header checksum, DF clear, the original's
    /// other fixed fields, data a multiple of 8 bytes in all but the last,
    /// offsets contiguous from the original's, MF on all but the last and
    /// the original's on the last) and returns the reassembled data.
    fn reassemble(original: &[u8], fragments: &[Vec<u8>], mtu: usize) -> Vec<u8> {
        assert!(fragments.len() >= 2, "{} fragments", fragments.len());
        let mut data = Vec::new();
        for (i, fragment) in fragments.iter().enumerate() {
            let last = i == fragments.len() - 1;
            let header_len = header_len_of(fragment);
            assert!(
                fragment.len() <= mtu,
                "fragment {i}: {} bytes",
                fragment.len()
            );
            assert_eq!(fragment[0] >> 4, 4);
            assert!(header_len >= 20);
            assert_eq!(
                usize::from(u16::from_be_bytes([fragment[2], fragment[3]])),
                fragment.len(),
                "fragment {i} Total Length"
            );
            assert_eq!(
                ones_sum(&fragment[..header_len]),
                0xffff,
                "fragment {i} checksum"
            );
            assert_eq!(fragment[1], original[1], "TOS");
            assert_eq!(fragment[4..6], original[4..6], "Identification");
            assert_eq!(fragment[6] & 0xc0, original[6] & 0xc0, "DF and reserved");
            assert_eq!(fragment[8..10], original[8..10], "TTL and protocol");
            assert_eq!(fragment[12..20], original[12..20], "addresses");
            assert_eq!(
                offset_of(fragment),
                offset_of(original) + data.len(),
                "fragment {i} offset"
            );
            assert_eq!(offset_of(fragment) % 8, 0);
            let expect_more = if last { more_fragments(original) } else { true };
            assert_eq!(more_fragments(fragment), expect_more, "fragment {i} MF");
            if !last {
                assert_eq!((fragment.len() - header_len) % 8, 0, "fragment {i} data");
            }
            assert!(fragment.len() > header_len, "fragment {i} is empty");
            data.extend_from_slice(&fragment[header_len..]);
        }
        data
    }

    fn original_data(packet: &[u8]) -> &[u8] {
        let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        &packet[header_len_of(packet)..total_len]
    }

    #[test]
    fn fragment_ipv4_splits_a_udp_packet() {
        let packet = udp_ipv4(&[], 1400);
        for (mtu, sizes) in [
            (1000, vec![996, 424]),
            (576, vec![572, 572, 296]),
            (1399, vec![1396, 24]),
            (28, vec![28; 172].into_iter().chain([24]).collect()),
        ] {
            let fragments = fragment_ipv4(&packet, mtu).expect("fragmented");
            let lens: Vec<usize> = fragments.iter().map(Vec::len).collect();
            assert_eq!(lens, sizes, "mtu {mtu}");
            assert_eq!(
                reassemble(&packet, &fragments, mtu),
                &packet[20..],
                "mtu {mtu}"
            );
            for fragment in &fragments {
                assert_eq!(fragment[..20].len(), 20);
                assert_eq!(fragment[0], 0x45);
            }
        }
        // An mtu that is not a multiple of 8 past the header still gives
        // fragments of whole 8-byte units.
        for mtu in 28..=1399 {
            let fragments = fragment_ipv4(&packet, mtu).expect("fragmented");
            assert_eq!(
                reassemble(&packet, &fragments, mtu),
                &packet[20..],
                "mtu {mtu}"
            );
        }
    }

    #[test]
    fn fragment_ipv4_ignores_trailing_padding() {
        let packet = udp_ipv4(&[], 1400);
        let mut padded = packet.clone();
        padded.extend_from_slice(&[0xee; 30]);
        assert_eq!(fragment_ipv4(&padded, 1000), fragment_ipv4(&packet, 1000));

        // Padding does not count towards fitting.
        let small = udp_ipv4(&[], 990);
        let mut padded = small.clone();
        padded.extend_from_slice(&[0xee; 20]);
        assert_eq!(fragment_ipv4(&padded, 1000), None);
    }

    #[test]
    fn fragment_ipv4_refuses_what_may_not_or_need_not_be_fragmented() {
        let packet = udp_ipv4(&[], 1400);
        assert_eq!(fragment_ipv4(&packet, 1400), None, "exactly fits");
        assert_eq!(fragment_ipv4(&packet, 1500), None, "fits");
        assert_eq!(fragment_ipv4(&packet, usize::MAX), None, "huge mtu");
        assert_eq!(fragment_ipv4(&packet, 27), None, "mtu below 20 + 8");
        assert_eq!(fragment_ipv4(&packet, 0), None, "mtu 0");

        let mut df = packet.clone();
        df[6] = 0x40;
        assert_eq!(
            fragment_ipv4(&with_header_checksum(df), 1000),
            None,
            "DF set"
        );
        let mut df_and_mf = packet.clone();
        df_and_mf[6] = 0x60;
        let df_and_mf = with_header_checksum(df_and_mf);
        assert_eq!(fragment_ipv4(&df_and_mf, 1000), None, "DF and MF set");
        assert_eq!(
            fragment_ipv4(&tcp_ipv4(CLIENT_V4, SERVER_V4, 1400), 1000),
            None
        );

        let mut bad_checksum = packet.clone();
        bad_checksum[10] ^= 1;
        assert_eq!(fragment_ipv4(&bad_checksum, 1000), None, "header checksum");
    }

    /// `packet` with its header checksum recomputed.
    fn with_header_checksum(mut packet: Vec<u8>) -> Vec<u8> {
        let header_len = header_len_of(&packet);
        packet[10..12].copy_from_slice(&[0, 0]);
        let c = !ones_sum(&packet[..header_len]);
        packet[10..12].copy_from_slice(&c.to_be_bytes());
        packet
    }

    #[test]
    fn fragment_ipv4_copies_only_copied_options_past_the_first() {
        // Record Route (7, not copied), NOP, Stream ID (136, copied).
        let options = [7, 7, 4, 0, 0, 0, 0, 1, 136, 4, 0x12, 0x34];
        let packet = udp_ipv4(&options, 1400);
        let fragments = fragment_ipv4(&packet, 576).expect("fragmented");
        assert_eq!(reassemble(&packet, &fragments, 576), &packet[32..]);
        assert_eq!(header_len_of(&fragments[0]), 32);
        assert_eq!(fragments[0][20..32], options, "the first keeps all");
        for fragment in &fragments[1..] {
            assert_eq!(fragment[0], 0x46);
            assert_eq!(fragment[20..24], [136, 4, 0x12, 0x34]);
        }
        // 576 - 32 = 544 in the first; 576 - 24 = 552 after.
        let lens: Vec<usize> = fragments.iter().map(Vec::len).collect();
        assert_eq!(lens, [576, 576, 24 + 1368 - 544 - 552]);

        // Timestamp (68, not copied), Loose Source Route (131, copied),
        // End of Option List: 7 bytes padded to 8.
        let options = [68, 4, 5, 0, 131, 7, 4, 10, 0, 0, 1, 0];
        let packet = udp_ipv4(&options, 1400);
        let fragments = fragment_ipv4(&packet, 1000).expect("fragmented");
        assert_eq!(reassemble(&packet, &fragments, 1000), &packet[32..]);
        assert_eq!(fragments[0][20..32], options);
        assert_eq!(fragments[1][0], 0x47);
        assert_eq!(fragments[1][20..28], [131, 7, 4, 10, 0, 0, 1, 0]);

        // Nothing copied: later fragments have a bare 20-byte header. What
        // follows End of Option List is padding, not options.
        let options = [1, 1, 0, 0xff, 0x83, 0x83, 0x83, 0x83];
        let packet = udp_ipv4(&options, 1400);
        let fragments = fragment_ipv4(&packet, 1000).expect("fragmented");
        assert_eq!(reassemble(&packet, &fragments, 1000), &packet[28..]);
        assert_eq!(fragments[0][20..28], options);
        assert_eq!(fragments[1][0], 0x45);

        // All 40 bytes of options copied: every header is 60 bytes, and
        // 60 + 8 is the smallest mtu.
        let mut options = vec![130, 40];
        options.resize(40, 0xab);
        let packet = udp_ipv4(&options, 1400);
        let fragments = fragment_ipv4(&packet, 68).expect("fragmented");
        assert_eq!(reassemble(&packet, &fragments, 68), &packet[60..]);
        assert!(fragments.iter().all(|f| f[20..60] == options[..]));
        assert_eq!(fragment_ipv4(&packet, 67), None);
    }

    #[test]
    fn fragment_ipv4_fragments_a_fragment() {
        let packet = udp_ipv4(&[], 1400);
        let fragments = fragment_ipv4(&packet, 1000).unwrap();

        // The first (MF set, offset 0): every piece keeps MF.
        let pieces_of_first = fragment_ipv4(&fragments[0], 576).expect("first");
        assert_eq!(
            reassemble(&fragments[0], &pieces_of_first, 576),
            &fragments[0][20..]
        );
        assert!(pieces_of_first.iter().all(|p| more_fragments(p)));

        // The last (MF clear, offset 976): offsets count from 976.
        let pieces_of_last = fragment_ipv4(&fragments[1], 300).expect("last");
        assert_eq!(
            reassemble(&fragments[1], &pieces_of_last, 300),
            &fragments[1][20..]
        );
        assert_eq!(offset_of(&pieces_of_last[0]), 976);
        assert!(!more_fragments(pieces_of_last.last().unwrap()));

        // Together they are the original.
        let all: Vec<Vec<u8>> = pieces_of_first.into_iter().chain(pieces_of_last).collect();
        assert_eq!(reassemble(&packet, &all, 576), &packet[20..]);

        // A later fragment keeps only its copied options, on every piece.
        let options = [7, 7, 4, 0, 0, 0, 0, 1, 136, 4, 0x12, 0x34];
        let packet = udp_ipv4(&options, 1400);
        let fragments = fragment_ipv4(&packet, 1000).unwrap();
        let pieces = fragment_ipv4(&fragments[1], 200).unwrap();
        assert_eq!(reassemble(&fragments[1], &pieces, 200), &fragments[1][24..]);
        assert!(pieces
            .iter()
            .all(|p| p[0] == 0x46 && p[20..24] == options[8..]));
    }

    #[test]
    fn fragment_ipv4_keeps_within_65535_bytes() {
        // Offset 8016 units: 64128 + 1400 = 65528 fits.
        let mut packet = udp_ipv4(&[], 1400);
        packet[6..8].copy_from_slice(&8016u16.to_be_bytes());
        let packet = with_header_checksum(packet);
        let fragments = fragment_ipv4(&packet, 576).expect("fits 65535");
        assert_eq!(reassemble(&packet, &fragments, 576), &packet[20..]);

        // Offset 8100 units: 64800 + 1400 does not.
        let mut packet = udp_ipv4(&[], 1400);
        packet[6..8].copy_from_slice(&8100u16.to_be_bytes());
        let packet = with_header_checksum(packet);
        assert_eq!(fragment_ipv4(&packet, 576), None);
    }

    #[test]
    fn fragment_ipv4_rejects_malformed_packets_without_panic() {
        let packet = udp_ipv4(&[], 1400);
        for len in 0..packet.len() {
            assert_eq!(fragment_ipv4(&packet[..len], 576), None, "cut at {len}");
        }

        let options_cases: &[(&str, [u8; 8])] = &[
            ("option length 0", [68, 0, 0, 0, 0, 0, 0, 0]),
            ("option length 1", [131, 1, 0, 0, 0, 0, 0, 0]),
            ("option past the header", [131, 9, 4, 0, 0, 0, 0, 0]),
            ("option without its length byte", [1, 1, 1, 1, 1, 1, 1, 131]),
            ("second option past the header", [136, 4, 0, 1, 68, 5, 5, 0]),
        ];
        for (name, options) in options_cases {
            let packet = udp_ipv4(options, 1400);
            assert_eq!(fragment_ipv4(&packet, 576), None, "{name}");
        }

        let mut ihl_4 = packet.clone();
        ihl_4[0] = 0x44;
        let mut total_below_header = packet.clone();
        total_below_header[2..4].copy_from_slice(&19u16.to_be_bytes());
        let mut total_past_end = packet.clone();
        total_past_end[2..4].copy_from_slice(&1401u16.to_be_bytes());
        let mut version_6 = packet.clone();
        version_6[0] = 0x65;
        for (name, bad) in [
            ("IHL 4", ihl_4),
            ("Total Length below the header", total_below_header),
            ("Total Length past the end", total_past_end),
            ("version 6", version_6),
            ("ipv6", ipv6(client_v6(), server_v6(), 1400)),
            ("empty", vec![]),
            ("all ones", vec![0xff; 1400]),
        ] {
            assert_eq!(
                fragment_ipv4(&with_checksum_if_v4(bad), 576),
                None,
                "{name}"
            );
        }
    }

    /// `packet` with its header checksum recomputed when it is long enough
    /// to have one, so that only the flaw under test is left.
    fn with_checksum_if_v4(packet: Vec<u8>) -> Vec<u8> {
        if packet.len() >= 60 && packet[0] >> 4 == 4 {
            with_header_checksum(packet)
        } else {
            packet
        }
    }

    #[test]
    fn fragment_ipv4_never_panics_on_random_input() {
        // xorshift64 (Marsaglia 2003), fixed seed so failures reproduce.
        let mut state: u64 = 0x1234_5678_9abc_def1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut fragmented = 0;
        for _ in 0..3000 {
            let len = (next() % 1500) as usize;
            let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Most inputs: a plausible header (random IHL, flags and
            // options, copied or not) with the right length and checksum,
            // so the deeper paths run; some with one option byte spoiled.
            if len >= 60 && next() % 4 != 0 {
                packet[0] = 0x45 + (next() % 11) as u8;
                packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                // DF clear; reserved bit, MF and small offsets random.
                packet[6] &= 0xa1;
                let header_len = header_len_of(&packet);
                let mut options = Vec::new();
                loop {
                    let option: &[u8] = match next() % 7 {
                        0 => &[1],
                        1 => &[7, 7, 4, 0, 0, 0, 0],
                        2 => &[68, 4, 5, 0],
                        3 => &[131, 7, 4, 1, 2, 3, 4],
                        4 => &[136, 4, 0, 1],
                        5 => &[130, 3, 9],
                        _ => &[0],
                    };
                    if options.len() + option.len() > header_len - 20 {
                        break;
                    }
                    options.extend_from_slice(option);
                }
                options.resize(header_len - 20, 0);
                if !options.is_empty() && next() % 8 == 0 {
                    let at = (next() as usize) % options.len();
                    options[at] = next() as u8;
                }
                packet[20..header_len].copy_from_slice(&options);
                packet = with_header_checksum(packet);
            }
            let mtu = (next() % 1600) as usize;
            if let Some(fragments) = fragment_ipv4(&packet, mtu) {
                fragmented += 1;
                let data = reassemble(&packet, &fragments, mtu);
                assert_eq!(data, original_data(&packet));
            }
        }
        assert!(fragmented > 500, "only {fragmented} inputs fragmented");
    }
}
