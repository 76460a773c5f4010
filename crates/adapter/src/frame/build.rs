//! Builders of whole frames, every length and checksum filled in.

use super::*;

// ---------------------------------------------------------------------------
// Builders
//
// Each returns a whole frame, every length and checksum filled in. A
// payload longer than the packet can carry gives an empty frame: nothing
// to send (it would not fit any LAN's MTU either).

/// An Ethernet II frame around `payload`.
pub fn ethernet(dst: MacAddr, src: MacAddr, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; ETHERNET_HEADER_LEN + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        dst_addr: dst,
        src_addr: src,
        ethertype,
    }
    .emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// An ARP packet in a frame from `src_mac` to `dst_mac`.
pub fn arp(src_mac: MacAddr, dst_mac: MacAddr, arp: &ArpRepr) -> Vec<u8> {
    let mut buf = vec![0; ETHERNET_HEADER_LEN + ARP_LEN];
    EthernetRepr {
        dst_addr: dst_mac,
        src_addr: src_mac,
        ethertype: EtherType::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    arp.emit(&mut ArpPacket::new_unchecked(
        &mut buf[ETHERNET_HEADER_LEN..],
    ));
    buf
}

/// A UDP datagram in IPv4 (TTL 64, DF, identification 0) in a frame.
/// Empty if `payload` is longer than [`MAX_IPV4_UDP_PAYLOAD`].
pub fn ipv4_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    if payload.len() > MAX_IPV4_UDP_PAYLOAD {
        tracing::debug!(len = payload.len(), "UDP payload too long for IPv4");
        return Vec::new();
    }
    let udp_len = UDP_HEADER_LEN + payload.len();
    let ip_at = ETHERNET_HEADER_LEN;
    let udp_at = ip_at + IPV4_HEADER_LEN;
    let mut buf = vec![0; udp_at + udp_len];
    EthernetRepr {
        dst_addr: dst_mac,
        src_addr: src_mac,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    Ipv4Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: DEFAULT_HOP_LIMIT,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut buf[ip_at..]));
    UdpRepr { src_port, dst_port }.emit(
        &mut UdpPacket::new_unchecked(&mut buf[udp_at..]),
        src_ip.into(),
        dst_ip.into(),
        payload,
    );
    buf
}

/// A UDP datagram in IPv6 (hop limit 64) in a frame. Empty if `payload` is
/// longer than [`MAX_IPV6_UDP_PAYLOAD`].
pub fn ipv6_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    if payload.len() > MAX_IPV6_UDP_PAYLOAD {
        tracing::debug!(len = payload.len(), "UDP payload too long for IPv6");
        return Vec::new();
    }
    let udp_len = UDP_HEADER_LEN + payload.len();
    let udp_at = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    let mut buf = ipv6_frame(
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        IpProtocol::Udp,
        DEFAULT_HOP_LIMIT,
        udp_len,
    );
    UdpRepr { src_port, dst_port }.emit(
        &mut UdpPacket::new_unchecked(&mut buf[udp_at..]),
        src_ip.into(),
        dst_ip.into(),
        payload,
    );
    buf
}

/// An ICMPv6 message in IPv6 in a frame, its checksum computed. `message`
/// runs from the type byte on, the two checksum bytes included (their
/// value is ignored): [`NdiscRepr::to_bytes`] gives one. ND messages need
/// `hop_limit` [`ND_HOP_LIMIT`]. Empty if `message` is shorter than 4 bytes
/// or longer than 65 535.
pub fn ipv6_icmp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    hop_limit: u8,
    message: &[u8],
) -> Vec<u8> {
    if message.len() < 4 || message.len() > usize::from(u16::MAX) {
        tracing::debug!(
            len = message.len(),
            "not an ICMPv6 message of an IPv6 packet"
        );
        return Vec::new();
    }
    let icmp_at = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    let mut buf = ipv6_frame(
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        IpProtocol::Icmpv6,
        hop_limit,
        message.len(),
    );
    buf[icmp_at..].copy_from_slice(message);
    Icmpv6Packet::new_unchecked(&mut buf[icmp_at..]).fill_checksum(src_ip, dst_ip);
    buf
}

/// A frame with Ethernet and IPv6 headers and `payload_len` zero bytes
/// after them.
fn ipv6_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    next_header: IpProtocol,
    hop_limit: u8,
    payload_len: usize,
) -> Vec<u8> {
    let ip_at = ETHERNET_HEADER_LEN;
    let mut buf = vec![0; ip_at + IPV6_HEADER_LEN + payload_len];
    EthernetRepr {
        dst_addr: dst_mac,
        src_addr: src_mac,
        ethertype: EtherType::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    Ipv6Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header,
        payload_len,
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut buf[ip_at..]));
    buf
}
