//! The adapter's LAN classifier (`cyphonic_adapter::frame`): every frame
//! from the general nodes goes through [`classify`] (Ethernet, ARP, IPv4,
//! IPv6, UDP, ICMPv6 and Neighbor Discovery), and ARP requests and
//! Neighbor Solicitations on to the ARP / ND proxy ([`Proxy::answer`]).
//!
//! Checks, for both checksum modes:
//! - every range a class gives is inside the frame, the source MAC is the
//!   frame's;
//! - classify, rebuild the frame with the crate's builders, classify again:
//!   the same class (ARP, RS, RA, NS, NA; the same UDP payload for DHCP
//!   and DNS);
//! - an ND message's [`NdiscRepr`] re-encodes to a message that parses to
//!   the same repr;
//! - the proxy's answer is a valid ARP reply or Neighbor Advertisement for
//!   the address asked, from the adapter, and at most 8 bytes longer than
//!   the request (no amplification);
//! - completing a data packet's transport checksum never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use cyphonic_adapter::frame::{
    self, classify, classify_received, complete_transport_checksum, ArpOperation, Checksums, Class,
    Icmpv6Packet, NdiscRepr, ETHERNET_HEADER_LEN, IPV6_HEADER_LEN,
};
use cyphonic_adapter::prefix::{Ipv4Prefix, Ipv6Prefix};
use cyphonic_adapter::proxy::{GeneralNode, Proxy, ProxyConfig};
use cyphonic_adapter::MacAddr;

use crate::fixed;

pub fn check(data: &[u8]) {
    let verified = classify(data);
    check_class(data, &verified, Checksums::Verify);
    let received = classify_received(data, Checksums::NotReady);
    check_class(data, &received, Checksums::NotReady);
    // Skipping the checksum can only let more through, never change what a
    // valid frame is.
    if !matches!(verified, Class::Other(_)) {
        assert_eq!(received, verified);
    }
    check_proxy(data, &verified);
}

pub fn proxy() -> Proxy {
    let mut proxy = Proxy::new(ProxyConfig {
        mac: fixed::ADAPTER_MAC,
        gateway_v4: fixed::GW4,
        gateway_v6: fixed::GW6,
        overlay_v4: Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10).expect("prefix"),
        overlay_v6: fixed::OVERLAY6.parse::<Ipv6Prefix>().expect("prefix"),
    });
    proxy.set_general_nodes([
        (
            fixed::GN_A,
            GeneralNode {
                vip4: fixed::A4,
                vip6: fixed::A6,
            },
        ),
        (
            fixed::GN_B,
            GeneralNode {
                vip4: fixed::B4,
                vip6: fixed::B6,
            },
        ),
    ]);
    proxy
}

fn inside(range: &Range<usize>, data: &[u8]) {
    assert!(
        range.start <= range.end && range.end <= data.len(),
        "{range:?} outside a {}-byte frame",
        data.len()
    );
}

fn mac_at(data: &[u8], at: usize) -> MacAddr {
    MacAddr(data[at..at + 6].try_into().expect("6 bytes"))
}

/// The UDP source port of an IPv4 or IPv6 frame whose UDP payload starts
/// at `payload_start`.
fn udp_src_port(data: &[u8], payload_start: usize) -> u16 {
    let at = payload_start - 8;
    u16::from_be_bytes([data[at], data[at + 1]])
}

fn classify_as(frame: &[u8], checksums: Checksums) -> Class {
    match checksums {
        Checksums::Verify => classify(frame),
        Checksums::NotReady => classify_received(frame, checksums),
    }
}

fn check_class(data: &[u8], class: &Class, checksums: Checksums) {
    let Some(src_mac) = class.src_mac() else {
        return;
    };
    assert_eq!(src_mac, mac_at(data, 6));
    assert!(!src_mac.is_multicast());
    let dst_mac = mac_at(data, 0);
    let again = |rebuilt: Vec<u8>| classify_as(&rebuilt, checksums);
    match class {
        Class::Arp { arp, .. } => {
            let rebuilt = frame::arp(src_mac, dst_mac, arp);
            assert_eq!(again(rebuilt), *class);
        }
        Class::RouterSolicitation { src_ip, .. }
        | Class::RouterAdvertisement { src_ip, .. }
        | Class::NeighborSolicitation { src_ip, .. }
        | Class::NeighborAdvertisement { src_ip, .. } => {
            let dst_ip = Ipv6Addr::from(<[u8; 16]>::try_from(&data[38..54]).expect("16"));
            let len = usize::from(u16::from_be_bytes([data[18], data[19]]));
            let start = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
            inside(&(start..start + len), data);
            let icmp = Icmpv6Packet::new_checked(&data[start..start + len]).expect("ICMPv6");
            let repr = NdiscRepr::parse(&icmp).expect("a classified ND message parses");
            let bytes = repr.to_bytes();
            let reparsed = NdiscRepr::parse(&Icmpv6Packet::new_checked(&bytes[..]).expect("ours"))
                .expect("our ND message parses");
            assert_eq!(reparsed, repr);
            let rebuilt = frame::ipv6_icmp(
                src_mac,
                dst_mac,
                *src_ip,
                dst_ip,
                frame::ND_HOP_LIMIT,
                &bytes,
            );
            assert_eq!(again(rebuilt), *class);
        }
        Class::Dhcp4 {
            src_ip,
            dst_ip,
            payload,
            ..
        } => {
            inside(payload, data);
            let sport = udp_src_port(data, payload.start);
            let rebuilt = frame::ipv4_udp(
                src_mac,
                dst_mac,
                *src_ip,
                *dst_ip,
                sport,
                frame::DHCPV4_SERVER_PORT,
                &data[payload.clone()],
            );
            same_udp_payload(&rebuilt, checksums, class, data);
        }
        Class::Dhcp6 {
            src_ip,
            dst_ip,
            payload,
            ..
        } => {
            inside(payload, data);
            let sport = udp_src_port(data, payload.start);
            let rebuilt = frame::ipv6_udp(
                src_mac,
                dst_mac,
                *src_ip,
                *dst_ip,
                sport,
                frame::DHCPV6_SERVER_PORT,
                &data[payload.clone()],
            );
            same_udp_payload(&rebuilt, checksums, class, data);
        }
        Class::Dns {
            src, dst, payload, ..
        } => {
            inside(payload, data);
            let p = &data[payload.clone()];
            let rebuilt = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    frame::ipv4_udp(src_mac, dst_mac, s, d, src.port(), dst.port(), p)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    frame::ipv6_udp(src_mac, dst_mac, s, d, src.port(), dst.port(), p)
                }
                _ => panic!("DNS with mixed address families: {class:?}"),
            };
            same_udp_payload(&rebuilt, checksums, class, data);
        }
        Class::Data {
            dst_mac: d,
            src_ip,
            dst_ip,
            packet,
            ..
        } => {
            assert_eq!(*d, dst_mac);
            assert_eq!(packet.start, ETHERNET_HEADER_LEN);
            inside(packet, data);
            assert_eq!(src_ip.is_ipv4(), dst_ip.is_ipv4());
            let mut copy = data[packet.clone()].to_vec();
            complete_transport_checksum(&mut copy);
        }
        Class::Dhcp4Server { .. } | Class::Dhcp6Server { .. } | Class::Other(_) => {}
    }
}

/// `rebuilt` classifies as `original` did, with the same UDP payload
/// (ranges may differ: the rebuilt frame has no IP options or padding).
fn same_udp_payload(rebuilt: &[u8], checksums: Checksums, original: &Class, data: &[u8]) {
    let payload = |c: &Class| match c {
        Class::Dhcp4 { payload, .. }
        | Class::Dhcp6 { payload, .. }
        | Class::Dns { payload, .. } => Some(payload.clone()),
        _ => None,
    };
    let class = classify_as(rebuilt, checksums);
    assert_eq!(
        std::mem::discriminant(&class),
        std::mem::discriminant(original),
        "rebuilt {class:?} from {original:?}"
    );
    let (a, b) = (
        payload(&class).expect("udp"),
        payload(original).expect("udp"),
    );
    assert_eq!(rebuilt[a], data[b]);
}

fn check_proxy(data: &[u8], class: &Class) {
    let mut proxy = proxy();
    let Some(answer) = proxy.answer(class) else {
        return;
    };
    assert!(
        answer.len() <= data.len() + 8,
        "a {}-byte answer to a {}-byte frame",
        answer.len(),
        data.len()
    );
    let answered = classify(&answer);
    match (class, &answered) {
        (
            Class::Arp { src_mac, arp },
            Class::Arp {
                src_mac: from,
                arp: reply,
            },
        ) => {
            assert_eq!(*from, fixed::ADAPTER_MAC);
            assert_eq!(reply.operation, ArpOperation::Reply);
            assert_eq!(reply.source_hardware_addr, fixed::ADAPTER_MAC);
            assert_eq!(reply.source_protocol_addr, arp.target_protocol_addr);
            assert_eq!(reply.target_hardware_addr, *src_mac);
            assert_eq!(mac_at(&answer, 0), *src_mac);
        }
        (
            Class::NeighborSolicitation { target, .. },
            Class::NeighborAdvertisement {
                src_mac: from,
                target: advertised,
                lladdr,
                ..
            },
        ) => {
            assert_eq!(*from, fixed::ADAPTER_MAC);
            assert_eq!(advertised, target);
            assert_eq!(*lladdr, Some(fixed::ADAPTER_MAC));
        }
        _ => panic!("answered {class:?} with {answered:?}"),
    }
}
