use super::fixtures::*;
use super::*;

fn frame(h: &str) -> Vec<u8> {
    hex(h)
}

fn class(h: &str) -> Class {
    classify(&frame(h))
}

/// The ICMPv6 message of an IPv6 frame without extension headers.
fn icmp_of(f: &[u8]) -> &[u8] {
    let len = usize::from(u16::from_be_bytes([f[18], f[19]]));
    &f[54..54 + len]
}

// --- checksum -------------------------------------------------------

#[test]
fn checksum_matches_rfc1071_worked_example() {
    // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 once the
    // carry 2 is folded in; the checksum is its complement.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(checksum::fold(checksum::sum(&data)), 0xddf2);
    assert_eq!(checksum::finish(checksum::sum(&data)), 0x220d);
    assert_eq!(reference_checksum(&data), 0x220d);
    // An odd byte counts as the high half of a last word.
    assert_eq!(checksum::sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
}

#[test]
fn checksum_agrees_with_the_reference_on_pseudo_random_data() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for len in 0..300 {
        let data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let ours = checksum::finish(checksum::sum(&data));
        // The two differ only in how they write a zero sum (+0 / -0).
        let reference = reference_checksum(&data);
        assert!(
            ours == reference
                || (ours, reference) == (0xffff, 0x0000)
                || (ours, reference) == (0, 0xffff),
            "{len}: {ours:04x} {reference:04x}"
        );
    }
}

// --- Ethernet -------------------------------------------------------

#[test]
fn ethernet_parses_and_emits_byte_for_byte() {
    let f = frame(DNS4_QUERY);
    let eth = EthernetFrame::new_checked(&f[..]).expect("ethernet");
    let repr = EthernetRepr::parse(&eth).expect("repr");
    assert_eq!(
        repr,
        EthernetRepr {
            dst_addr: ADAPTER,
            src_addr: GN_A,
            ethertype: EtherType::Ipv4,
        }
    );
    assert_eq!(ethernet(ADAPTER, GN_A, EtherType::Ipv4, eth.payload()), f);
    assert_eq!(EtherType::from(0x8100), EtherType::Unknown(ETHERTYPE_VLAN));
    assert_eq!(u16::from(EtherType::Unknown(0x88cc)), 0x88cc);
    assert_eq!(
        EthernetFrame::new_checked(&f[..13]).err(),
        Some(WireError::Truncated)
    );
}

// --- ARP ------------------------------------------------------------

#[test]
fn arp_parses_and_emits_byte_for_byte() {
    let f = frame(ARP_REQUEST_GATEWAY);
    let packet = ArpPacket::new_checked(&f[14..]).expect("arp");
    let repr = ArpRepr::parse(&packet).expect("repr");
    assert_eq!(
        repr,
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: GN_A,
            source_protocol_addr: A4,
            target_hardware_addr: MacAddr([0; 6]),
            target_protocol_addr: GW4,
        }
    );
    assert_eq!(arp(GN_A, MacAddr::BROADCAST, &repr), f);
}

#[test]
fn arp_allows_padding_and_refuses_other_kinds() {
    let f = frame(ARP_PROBE_PADDED);
    assert_eq!(f.len(), 60);
    let repr = ArpRepr::parse(&ArpPacket::new_checked(&f[14..]).expect("arp")).expect("repr");
    assert_eq!(repr.source_protocol_addr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(repr.target_protocol_addr, A4);
    // The unpadded part emits back exactly.
    assert_eq!(arp(GN_A, MacAddr::BROADCAST, &repr), f[..42]);

    let f = frame(ARP_REQUEST_GATEWAY);
    let parse = |g: &[u8]| ArpPacket::new_checked(&g[14..]).and_then(|p| ArpRepr::parse(&p));
    for (at, value, error) in [
        (14, 0x06, WireError::Unsupported), // hardware type 0x0601
        (16, 0x86, WireError::Unsupported), // protocol type 0x8600
        (18, 8, WireError::Truncated),      // 8-byte hardware addresses do not fit
        (19, 2, WireError::Unsupported),    // 2-byte protocol addresses
    ] {
        let mut g = f.clone();
        g[at] = value;
        assert_eq!(parse(&g), Err(error), "byte {at}");
    }
    let mut g = f.clone();
    g[21] = 9; // opcode 9
    let repr = ArpRepr::parse(&ArpPacket::new_checked(&g[14..]).expect("arp")).expect("repr");
    assert_eq!(repr.operation, ArpOperation::Unknown(9));
    assert_eq!(arp(GN_A, MacAddr::BROADCAST, &repr), g);
    assert_eq!(
        ArpPacket::new_checked(&f[14..41]).err(),
        Some(WireError::Truncated)
    );
}

// --- IPv4 -----------------------------------------------------------

#[test]
fn ipv4_header_known_answer() {
    // The worked example of the IPv4 header checksum on Wikipedia's
    // "Internet checksum" / "IPv4 header checksum" pages: b861.
    let header = hex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7");
    let mut packet = header.clone();
    packet.resize(0x73, 0);
    let view = Ipv4Packet::new_checked(&packet[..]).expect("ipv4");
    assert!(view.verify_checksum());
    let repr = Ipv4Repr::parse(&view).expect("repr");
    assert_eq!(
        repr,
        Ipv4Repr {
            src_addr: Ipv4Addr::new(192, 168, 0, 1),
            dst_addr: Ipv4Addr::new(192, 168, 0, 199),
            next_header: IpProtocol::Udp,
            payload_len: 0x73 - 20,
            hop_limit: 64,
        }
    );
    assert!(view.dont_frag() && !view.is_fragment());
    let mut out = vec![0; 20];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
    assert_eq!(out, header);
}

#[test]
fn ipv4_checks_lengths_version_and_checksum() {
    let f = frame(ICMP4_ECHO_PEER);
    let ip = &f[14..];
    let parse = |b: &[u8]| Ipv4Packet::new_checked(b).and_then(|p| Ipv4Repr::parse(&p));
    assert!(parse(ip).is_ok());
    let mut g = ip.to_vec();
    g[0] = 0x44; // IHL 4
    assert_eq!(parse(&g), Err(WireError::Malformed));
    let mut g = ip.to_vec();
    g[0] = 0x4f; // IHL 15: 60 bytes, more than the packet
    assert_eq!(parse(&g), Err(WireError::Truncated));
    let mut g = ip.to_vec();
    g[2..4].copy_from_slice(&16u16.to_be_bytes()); // total < header
    assert_eq!(parse(&g), Err(WireError::Malformed));
    let mut g = ip.to_vec();
    g[2..4].copy_from_slice(&200u16.to_be_bytes()); // total > buffer
    assert_eq!(parse(&g), Err(WireError::Truncated));
    let mut g = f.clone();
    g[14] = 0x65; // version 6, checksum fixed
    fix_checksums(&mut g);
    assert_eq!(parse(&g[14..]), Err(WireError::Malformed));
    let mut g = ip.to_vec();
    g[8] = 63; // TTL changed, checksum not
    assert_eq!(parse(&g), Err(WireError::Checksum));
    assert_eq!(
        classify(&{
            let mut g = f.clone();
            g[22] = 63;
            g
        }),
        Class::Other(OtherReason::Ipv4(WireError::Checksum))
    );
}

#[test]
fn ipv4_options_are_skipped_and_padding_ignored() {
    // DNS4_QUERY with a 4-byte option (three NOPs and End of Options
    // List, RFC 791 §3.1) and Ethernet padding after the packet.
    let f = frame(DNS4_QUERY);
    let mut g = f[..34].to_vec();
    g[14] = 0x46;
    g.extend_from_slice(&[1, 1, 1, 0]);
    g.extend_from_slice(&f[34..]);
    let total = (g.len() - 14) as u16;
    g[16..18].copy_from_slice(&total.to_be_bytes());
    fix_checksums(&mut g);
    g.extend_from_slice(&[0; 6]);
    let Class::Dns {
        src, dst, payload, ..
    } = classify(&g)
    else {
        panic!("{:?}", classify(&g))
    };
    assert_eq!(src, SocketAddr::new(A4.into(), 40000));
    assert_eq!(dst, SocketAddr::new(GW4.into(), 53));
    assert_eq!(g[payload], f[42..]);
}

#[test]
fn ipv4_fragments_are_other() {
    let f = frame(ICMP4_ECHO_PEER);
    for flags in [0x2000u16, 0x0001, 0x2001] {
        let mut g = f.clone();
        g[20..22].copy_from_slice(&flags.to_be_bytes());
        fix_checksums(&mut g);
        let view = Ipv4Packet::new_checked(&g[14..]).expect("ipv4");
        assert!(view.is_fragment());
        assert_eq!(view.frag_offset(), (flags & 0x1fff) * 8);
        assert_eq!(
            classify(&g),
            Class::Other(OtherReason::Ipv4Fragment),
            "{flags:#x}"
        );
    }
}

// --- IPv6 -----------------------------------------------------------

#[test]
fn ipv6_parses_and_emits_byte_for_byte() {
    let f = frame(TCP6_SYN_PEER);
    let view = Ipv6Packet::new_checked(&f[14..]).expect("ipv6");
    let repr = Ipv6Repr::parse(&view).expect("repr");
    assert_eq!(
        repr,
        Ipv6Repr {
            src_addr: A6,
            dst_addr: PEER6,
            next_header: IpProtocol::Tcp,
            payload_len: 20,
            hop_limit: 64,
        }
    );
    assert_eq!((view.traffic_class(), view.flow_label()), (0, 0));
    let mut out = f[14..].to_vec();
    out[..40].fill(0);
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut out[..]));
    assert_eq!(out, f[14..]);

    let mut g = f[14..].to_vec();
    g[0] = 0x40;
    assert_eq!(
        Ipv6Repr::parse(&Ipv6Packet::new_checked(&g[..]).expect("ipv6")),
        Err(WireError::Malformed)
    );
    assert_eq!(
        Ipv6Packet::new_checked(&f[14..f.len() - 1]).err(),
        Some(WireError::Truncated)
    );
    assert_eq!(
        Ipv6Packet::new_checked(&f[14..53]).err(),
        Some(WireError::Truncated)
    );
    // Traffic class and flow label read where RFC 8200 §3 puts them.
    let mut g = f[14..].to_vec();
    g[..4].copy_from_slice(&hex("6ab12345"));
    let view = Ipv6Packet::new_checked(&g[..]).expect("ipv6");
    assert_eq!((view.traffic_class(), view.flow_label()), (0xab, 0x12345));
}

// --- UDP ------------------------------------------------------------

#[test]
fn ipv4_udp_builds_the_frame_byte_for_byte() {
    let built = ipv4_udp(ADAPTER, GN_A, GW4, A4, 67, 68, b"cyphonic dhcp4");
    assert_eq!(built, frame(BUILT_IPV4_UDP));
    let udp = UdpPacket::new_checked(&built[34..]).expect("udp");
    assert!(udp.verify_checksum(GW4.into(), A4.into()));
    assert_eq!(udp.payload(), b"cyphonic dhcp4");
    assert_eq!(
        UdpRepr::parse(&udp, GW4.into(), A4.into()),
        Ok(UdpRepr {
            src_port: 67,
            dst_port: 68,
        })
    );
}

#[test]
fn ipv6_udp_builds_the_frame_byte_for_byte() {
    let built = ipv6_udp(
        ADAPTER,
        GN_A,
        ADAPTER_LL,
        A_LL,
        547,
        546,
        b"cyphonic dhcp6!",
    );
    assert_eq!(built, frame(BUILT_IPV6_UDP));
    let udp = UdpPacket::new_checked(&built[54..]).expect("udp");
    assert!(udp.verify_checksum(ADAPTER_LL.into(), A_LL.into()));
    assert!(!udp.verify_checksum(A_LL.into(), A_LL.into()));
}

#[test]
fn udp_checksum_zero_is_none_over_ipv4_and_an_error_over_ipv6() {
    let mut f = frame(DHCP4_DISCOVER);
    f[40..42].fill(0);
    assert!(matches!(classify(&f), Class::Dhcp4 { .. }));
    f[60] ^= 1; // a changed payload passes when there is no checksum
    assert!(matches!(classify(&f), Class::Dhcp4 { .. }));

    let mut f = frame(DHCP6_SOLICIT);
    f[60..62].fill(0);
    assert_eq!(
        classify(&f),
        Class::Other(OtherReason::Udp(WireError::Checksum))
    );

    let mut f = frame(DNS6_QUERY);
    f[70] ^= 0x80;
    assert_eq!(
        classify(&f),
        Class::Other(OtherReason::Udp(WireError::Checksum))
    );
    let mut f = frame(DNS4_QUERY);
    f[50] ^= 0x80;
    assert_eq!(
        classify(&f),
        Class::Other(OtherReason::Udp(WireError::Checksum))
    );
}

#[test]
fn udp_emits_all_ones_for_a_zero_checksum() {
    // Find a payload whose checksum comes out 0 by setting its last
    // word to the complement of the rest (RFC 768: sent as all ones).
    let (src, dst) = (IpAddr::from(GW4), IpAddr::from(A4));
    let mut payload = vec![0u8; 4];
    let first = ipv4_udp(ADAPTER, GN_A, GW4, A4, 67, 68, &payload);
    let c = u16::from_be_bytes([first[40], first[41]]);
    payload[2..4].copy_from_slice(&c.to_be_bytes());
    let built = ipv4_udp(ADAPTER, GN_A, GW4, A4, 67, 68, &payload);
    assert_eq!(built[40..42], [0xff, 0xff]);
    let udp = UdpPacket::new_checked(&built[34..]).expect("udp");
    assert!(udp.verify_checksum(src, dst));
}

#[test]
fn udp_checks_its_length_field() {
    let f = frame(DNS4_QUERY);
    let udp = &f[34..];
    let mut g = udp.to_vec();
    g[4..6].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(
        UdpPacket::new_checked(&g[..]).err(),
        Some(WireError::Malformed)
    );
    let mut g = udp.to_vec();
    g[4..6].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(
        UdpPacket::new_checked(&g[..]).err(),
        Some(WireError::Truncated)
    );
    assert_eq!(
        UdpPacket::new_checked(&udp[..7]).err(),
        Some(WireError::Truncated)
    );
}

// --- ICMPv6 and ND ---------------------------------------------------

#[test]
fn icmpv6_checksum_matches_the_generator() {
    for h in [RS_UNSPECIFIED, NS_DAD, NA_UNSOLICITED, RA_ROGUE] {
        let f = frame(h);
        let ip = Ipv6Packet::new_checked(&f[14..]).expect("ipv6");
        let icmp = Icmpv6Packet::new_checked(ip.payload()).expect("icmpv6");
        assert!(icmp.verify_checksum(ip.src_addr(), ip.dst_addr()));
        let mut g = icmp_of(&f).to_vec();
        let mut view = Icmpv6Packet::new_unchecked(&mut g[..]);
        view.fill_checksum(ip.src_addr(), ip.dst_addr());
        assert_eq!(g, icmp_of(&f));
    }
}

#[test]
fn neighbor_advertisement_builds_byte_for_byte() {
    let advert = NdiscRepr::NeighborAdvert {
        flags: NaFlags::SOLICITED | NaFlags::OVERRIDE,
        target_addr: PEER6,
        lladdr: Some(ADAPTER),
    };
    let built = ipv6_icmp(ADAPTER, GN_A, ADAPTER_LL, A6, 255, &advert.to_bytes());
    assert_eq!(built, frame(NA_PROXY_PEER));
}

#[test]
fn router_advertisement_builds_byte_for_byte() {
    let advert = NdiscRepr::RouterAdvert {
        hop_limit: 64,
        flags: RaFlags::MANAGED | RaFlags::OTHER,
        router_lifetime: 1800,
        reachable_time: 0,
        retrans_time: 0,
        lladdr: Some(ADAPTER),
        mtu: Some(1280),
        prefix_info: vec![PrefixInfo {
            prefix_len: 48,
            flags: PrefixFlags::ON_LINK,
            valid_lifetime: u32::MAX,
            preferred_lifetime: u32::MAX,
            prefix: Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0),
        }],
        rdnss: vec![Rdnss {
            lifetime: 1800,
            servers: vec![GW6],
        }],
    };
    assert_eq!(advert.buffer_len(), 88);
    let built = ipv6_icmp(
        ADAPTER,
        multicast_mac(ALL_NODES),
        ADAPTER_LL,
        ALL_NODES,
        255,
        &advert.to_bytes(),
    );
    assert_eq!(built, frame(RA_ADAPTER));
    let parsed = NdiscRepr::parse(&Icmpv6Packet::new_checked(icmp_of(&built)).expect("icmpv6"));
    assert_eq!(parsed, Ok(advert));
}

#[test]
fn router_advertisement_from_the_lan_parses() {
    let f = frame(RA_ROGUE);
    let parsed = NdiscRepr::parse(&Icmpv6Packet::new_checked(icmp_of(&f)).expect("icmpv6"));
    assert_eq!(
        parsed,
        Ok(NdiscRepr::RouterAdvert {
            hop_limit: 64,
            flags: RaFlags(0xc0),
            router_lifetime: 1800,
            reachable_time: 0,
            retrans_time: 0,
            lladdr: Some(ROGUE),
            mtu: Some(1500),
            prefix_info: vec![PrefixInfo {
                prefix_len: 64,
                flags: PrefixFlags::ON_LINK | PrefixFlags::AUTONOMOUS,
                valid_lifetime: 86400,
                preferred_lifetime: 14400,
                prefix: "2001:db8:1::".parse().expect("ip"),
            }],
            rdnss: vec![Rdnss {
                lifetime: 600,
                servers: vec!["2001:db8:1::53".parse().expect("ip")],
            }],
        })
    );
}

#[test]
fn nd_messages_round_trip_through_repr_and_builder() {
    for h in [
        RS_UNSPECIFIED,
        RS_LINK_LOCAL,
        NS_RESOLVE_PEER,
        NS_NUD_PEER,
        NS_ROUTER_LL,
        NA_UNSOLICITED,
        RA_ROGUE,
        NA_PROXY_ROUTER,
        NA_PROXY_DAD,
    ] {
        let f = frame(h);
        let eth =
            EthernetRepr::parse(&EthernetFrame::new_checked(&f[..]).expect("eth")).expect("eth");
        let ip = Ipv6Repr::parse(&Ipv6Packet::new_checked(&f[14..]).expect("ipv6")).expect("ipv6");
        let nd =
            NdiscRepr::parse(&Icmpv6Packet::new_checked(icmp_of(&f)).expect("icmpv6")).expect("nd");
        let built = ipv6_icmp(
            eth.src_addr,
            eth.dst_addr,
            ip.src_addr,
            ip.dst_addr,
            ip.hop_limit,
            &nd.to_bytes(),
        );
        assert_eq!(built, f, "{h}");
    }
}

#[test]
fn nd_options_unknown_are_skipped_and_bad_ones_refused() {
    // DAD's nonce (type 14) is not the adapter's: skipped.
    let f = frame(NS_DAD);
    let nd = NdiscRepr::parse(&Icmpv6Packet::new_checked(icmp_of(&f)).expect("icmpv6"));
    assert_eq!(
        nd,
        Ok(NdiscRepr::NeighborSolicit {
            target_addr: A6,
            lladdr: None,
        })
    );
    let options: Vec<_> = NdiscOptions::new(&icmp_of(&f)[24..]).collect();
    assert_eq!(
        options,
        [Ok(NdiscOption::Unknown {
            option_type: 14,
            length: 1,
        })]
    );
    let parse = |m: &[u8]| NdiscRepr::parse(&Icmpv6Packet::new_checked(m).expect("icmpv6"));
    let mut m = icmp_of(&frame(NS_RESOLVE_PEER)).to_vec();
    m[25] = 0; // SLLA of length 0 (RFC 4861 §4.6: discard)
    assert_eq!(parse(&m), Err(WireError::Malformed));
    m[25] = 2; // runs past the end
    assert_eq!(parse(&m), Err(WireError::Malformed));
    m[25] = 1;
    m.push(3); // one stray byte of a next option
    assert_eq!(parse(&m), Err(WireError::Malformed));
    let mut m = icmp_of(&frame(RA_ROGUE)).to_vec();
    m[64 + 1] = 2; // RDNSS of length 2 (RFC 8106 §5.1: at least 3, odd)
    m.truncate(64 + 16);
    assert_eq!(parse(&m), Err(WireError::Malformed));
    assert_eq!(
        parse(&icmp_of(&frame(NS_NUD_PEER))[..23]),
        Err(WireError::Truncated)
    );
    assert_eq!(
        parse(&[128, 0, 0, 0, 0, 0, 0, 0]),
        Err(WireError::Unsupported)
    );
}

#[test]
fn nd_options_emit_what_they_parse() {
    let options = [
        NdiscOption::SourceLinkLayerAddr(GN_A),
        NdiscOption::TargetLinkLayerAddr(ADAPTER),
        NdiscOption::Mtu(1500),
        NdiscOption::PrefixInformation(PrefixInfo {
            prefix_len: 64,
            flags: PrefixFlags(0xe0),
            valid_lifetime: 1,
            preferred_lifetime: 2,
            prefix: "2001:db8::".parse().expect("ip"),
        }),
        NdiscOption::Rdnss(Rdnss {
            lifetime: 3,
            servers: vec![
                "2001:db8::1".parse().expect("ip"),
                "2001:db8::2".parse().expect("ip"),
            ],
        }),
        NdiscOption::Unknown {
            option_type: 14,
            length: 1,
        },
    ];
    let mut bytes = Vec::new();
    for o in &options {
        let mut b = vec![0xaa; o.buffer_len()];
        o.emit(&mut b);
        bytes.extend(b);
    }
    let parsed: Vec<_> = NdiscOptions::new(&bytes)
        .map(|o| o.expect("option"))
        .collect();
    assert_eq!(parsed, options);
    assert_eq!(bytes[..8], hex("0101 020000000a01"));
}

// --- addresses ------------------------------------------------------

#[test]
fn eui64_link_local_solicited_node_and_multicast_mac() {
    assert_eq!(link_local(ADAPTER), ADAPTER_LL);
    assert_eq!(link_local(GN_A), A_LL);
    // RFC 4291 appendix A: 34-56-78-9A-BC-DE gives 3656:78ff:fe9a:bcde.
    assert_eq!(
        link_local(MacAddr([0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde])),
        "fe80::3656:78ff:fe9a:bcde".parse::<Ipv6Addr>().expect("ip")
    );
    // RFC 4291 §2.7.1: 4037::01:800:200E:8C6C gives FF02::1:FF0E:8C6C.
    let sn = solicited_node("4037::1:800:200e:8c6c".parse().expect("ip"));
    assert_eq!(sn, "ff02::1:ff0e:8c6c".parse::<Ipv6Addr>().expect("ip"));
    assert!(is_solicited_node(sn));
    assert!(!is_solicited_node(ALL_NODES));
    assert_eq!(
        solicited_node(PEER6),
        "ff02::1:ff01:20".parse::<Ipv6Addr>().expect("ip")
    );
    // RFC 2464 §7: FF02::1 goes to 33-33-00-00-00-01.
    assert_eq!(multicast_mac(ALL_NODES), MacAddr([0x33, 0x33, 0, 0, 0, 1]));
    assert_eq!(
        multicast_mac(sn),
        MacAddr([0x33, 0x33, 0xff, 0x0e, 0x8c, 0x6c])
    );
    assert!(is_link_local(A_LL) && is_link_local("febf::1".parse().expect("ip")));
    assert!(!is_link_local(A6) && !is_link_local("fec0::1".parse().expect("ip")));
}

// --- the classifier on real-world frames ------------------------------

#[test]
fn classifies_arp() {
    assert_eq!(
        class(ARP_REQUEST_GATEWAY),
        Class::Arp {
            src_mac: GN_A,
            arp: ArpRepr {
                operation: ArpOperation::Request,
                source_hardware_addr: GN_A,
                source_protocol_addr: A4,
                target_hardware_addr: MacAddr([0; 6]),
                target_protocol_addr: GW4,
            },
        }
    );
    let Class::Arp { arp, .. } = class(ARP_PROBE_PADDED) else {
        panic!()
    };
    assert_eq!(
        (arp.source_protocol_addr, arp.target_protocol_addr),
        (Ipv4Addr::UNSPECIFIED, A4)
    );
}

#[test]
fn classifies_router_solicitations() {
    assert_eq!(
        class(RS_UNSPECIFIED),
        Class::RouterSolicitation {
            src_mac: GN_A,
            src_ip: Ipv6Addr::UNSPECIFIED,
            lladdr: None,
        }
    );
    assert_eq!(
        class(RS_LINK_LOCAL),
        Class::RouterSolicitation {
            src_mac: GN_A,
            src_ip: A_LL,
            lladdr: Some(GN_A),
        }
    );
}

#[test]
fn classifies_neighbor_solicitations() {
    assert_eq!(
        class(NS_DAD),
        Class::NeighborSolicitation {
            src_mac: GN_A,
            src_ip: Ipv6Addr::UNSPECIFIED,
            dst_ip: solicited_node(A6),
            target: A6,
            lladdr: None,
        }
    );
    assert_eq!(
        class(NS_RESOLVE_PEER),
        Class::NeighborSolicitation {
            src_mac: GN_A,
            src_ip: A6,
            dst_ip: solicited_node(PEER6),
            target: PEER6,
            lladdr: Some(GN_A),
        }
    );
    assert_eq!(
        class(NS_NUD_PEER),
        Class::NeighborSolicitation {
            src_mac: GN_A,
            src_ip: A6,
            dst_ip: PEER6,
            target: PEER6,
            lladdr: None,
        }
    );
    assert_eq!(
        class(NS_ROUTER_LL),
        Class::NeighborSolicitation {
            src_mac: GN_A,
            src_ip: A_LL,
            dst_ip: solicited_node(ADAPTER_LL),
            target: ADAPTER_LL,
            lladdr: Some(GN_A),
        }
    );
}

#[test]
fn classifies_advertisements_from_the_lan() {
    assert_eq!(
        class(RA_ROGUE),
        Class::RouterAdvertisement {
            src_mac: ROGUE,
            src_ip: ROGUE_LL,
        }
    );
    assert_eq!(
        class(NA_UNSOLICITED),
        Class::NeighborAdvertisement {
            src_mac: GN_A,
            src_ip: A6,
            target: A6,
            flags: NaFlags::OVERRIDE,
            lladdr: Some(GN_A),
        }
    );
    assert!(matches!(
        class(NA_PROXY_PEER),
        Class::NeighborAdvertisement { target: PEER6, .. }
    ));
}

#[test]
fn classifies_dhcp() {
    let f = frame(DHCP4_DISCOVER);
    let Class::Dhcp4 {
        src_mac,
        src_ip,
        dst_ip,
        payload,
    } = classify(&f)
    else {
        panic!("{:?}", classify(&f))
    };
    assert_eq!(
        (src_mac, src_ip, dst_ip),
        (GN_A, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
    );
    assert_eq!(payload, 42..342);
    assert_eq!(f[payload][..4], [1, 1, 6, 0]);

    let f = frame(DHCP6_SOLICIT);
    assert_eq!(
        classify(&f),
        Class::Dhcp6 {
            src_mac: GN_A,
            src_ip: A_LL,
            dst_ip: ALL_DHCP_RELAY_AGENTS_AND_SERVERS,
            payload: 62..102,
        }
    );
    assert_eq!(f[62], 1); // SOLICIT

    assert_eq!(
        class(DHCP4_OFFER_ROGUE),
        Class::Dhcp4Server {
            src_mac: ROGUE,
            src_ip: Ipv4Addr::new(192, 0, 2, 1),
        }
    );
    assert_eq!(
        class(DHCP6_ADVERTISE_ROGUE),
        Class::Dhcp6Server {
            src_mac: ROGUE,
            src_ip: ROGUE_LL,
        }
    );
    // A relay's message to a server (67 to 67) is a server's side too.
    let relayed = ipv4_udp(
        ROGUE,
        ADAPTER,
        Ipv4Addr::new(192, 0, 2, 1),
        GW4,
        67,
        67,
        b"x",
    );
    assert!(matches!(classify(&relayed), Class::Dhcp4Server { .. }));
    // DHCPv6 from a global address: the adapter sends no Server Unicast.
    let global = ipv6_udp(GN_A, ADAPTER, A6, GW6, 546, 547, &f[62..102]);
    assert_eq!(classify(&global), Class::Other(OtherReason::Dhcp6Source));
}

#[test]
fn classifies_dns() {
    assert_eq!(
        class(DNS4_QUERY),
        Class::Dns {
            src_mac: GN_A,
            src: SocketAddr::new(A4.into(), 40000),
            dst: SocketAddr::new(GW4.into(), 53),
            payload: 42..72,
        }
    );
    let f = frame(DNS6_QUERY);
    assert_eq!(
        classify(&f),
        Class::Dns {
            src_mac: GN_A,
            src: SocketAddr::new(A6.into(), 40001),
            dst: SocketAddr::new(GW6.into(), 53),
            payload: 62..92,
        }
    );
    assert_eq!(f[62..64], [0x43, 0x21]);
    let broadcast = ipv4_udp(
        GN_A,
        MacAddr::BROADCAST,
        A4,
        Ipv4Addr::BROADCAST,
        40000,
        53,
        b"q",
    );
    assert_eq!(classify(&broadcast), Class::Other(OtherReason::NotUnicast));
    let unspecified = ipv4_udp(GN_A, ADAPTER, Ipv4Addr::UNSPECIFIED, GW4, 40000, 53, b"q");
    assert_eq!(classify(&unspecified), Class::Other(OtherReason::SourceIp));
    let multicast = ipv6_udp(GN_A, ADAPTER, A6, ALL_NODES, 40000, 53, b"q");
    assert_eq!(classify(&multicast), Class::Other(OtherReason::NotUnicast));
}

#[test]
fn classifies_data_to_peers() {
    assert_eq!(
        class(ICMP4_ECHO_PEER),
        Class::Data {
            src_mac: GN_A,
            dst_mac: ADAPTER,
            version: IpVersion::V4,
            src_ip: A4.into(),
            dst_ip: PEER4.into(),
            packet: 14..50,
        }
    );
    let mut padded = frame(TCP6_SYN_PEER);
    padded.extend_from_slice(&[0; 8]);
    assert_eq!(
        classify(&padded),
        Class::Data {
            src_mac: GN_A,
            dst_mac: ADAPTER,
            version: IpVersion::V6,
            src_ip: A6.into(),
            dst_ip: PEER6.into(),
            packet: 14..74,
        }
    );
    // UDP that is no service's, over both IPs.
    let udp4 = ipv4_udp(GN_A, ADAPTER, A4, PEER4, 5000, 6000, b"hello");
    assert!(matches!(
        classify(&udp4),
        Class::Data {
            version: IpVersion::V4,
            ..
        }
    ));
    let udp6 = ipv6_udp(GN_A, ADAPTER, A6, PEER6, 5000, 6000, b"hello");
    assert!(matches!(
        classify(&udp6),
        Class::Data {
            version: IpVersion::V6,
            ..
        }
    ));
    // ICMPv6 that is not ND (echo request, type 128).
    let echo = ipv6_icmp(GN_A, ADAPTER, A6, PEER6, 64, &hex("80 00 0000 0001 0001"));
    assert!(matches!(classify(&echo), Class::Data { .. }));
}

#[test]
fn ipv6_with_an_unknown_next_header_is_data_only_to_unicast() {
    // No Next Header (59), an empty payload.
    let mut f = frame(TCP6_SYN_PEER)[..54].to_vec();
    f[20] = 59;
    fix_ipv6_len(&mut f);
    assert!(matches!(classify(&f), Class::Data { dst_ip, .. } if dst_ip == IpAddr::from(PEER6)));
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    assert_eq!(classify(&f), Class::Other(OtherReason::NotUnicast));
    assert_eq!(class(MLD_REPORT), Class::Other(OtherReason::NotUnicast));
}

#[test]
fn classifies_the_rest_as_other() {
    let f = frame(ICMP4_ECHO_PEER);
    // 802.1Q-tagged: the adapter serves the untagged LAN.
    let mut tagged = f[..12].to_vec();
    tagged.extend_from_slice(&hex("8100 0064"));
    tagged.extend_from_slice(&f[12..]);
    assert_eq!(classify(&tagged), Class::Other(OtherReason::Vlan));
    let mut g = f.clone();
    g[12..14].copy_from_slice(&hex("88a8"));
    assert_eq!(classify(&g), Class::Other(OtherReason::Vlan));
    g[12..14].copy_from_slice(&hex("88cc"));
    assert_eq!(classify(&g), Class::Other(OtherReason::EtherType(0x88cc)));
    // A multicast source MAC.
    let mut g = f.clone();
    g[6] = 0x03;
    assert_eq!(classify(&g), Class::Other(OtherReason::SourceMac));
    // Broadcast and multicast destinations, broadcast source.
    let to_broadcast = ipv4_udp(
        GN_A,
        MacAddr::BROADCAST,
        A4,
        Ipv4Addr::BROADCAST,
        5000,
        5000,
        b"x",
    );
    assert_eq!(
        classify(&to_broadcast),
        Class::Other(OtherReason::NotUnicast)
    );
    let ssdp = ipv4_udp(
        GN_A,
        MacAddr([1, 0, 0x5e, 0x7f, 0xff, 0xfa]),
        A4,
        Ipv4Addr::new(239, 255, 255, 250),
        5000,
        1900,
        b"x",
    );
    assert_eq!(classify(&ssdp), Class::Other(OtherReason::NotUnicast));
    let from_broadcast = ipv4_udp(GN_A, ADAPTER, Ipv4Addr::BROADCAST, PEER4, 5000, 5000, b"x");
    assert_eq!(
        classify(&from_broadcast),
        Class::Other(OtherReason::SourceIp)
    );
    let from_unspecified = ipv4_udp(
        GN_A,
        ADAPTER,
        Ipv4Addr::UNSPECIFIED,
        PEER4,
        5000,
        5000,
        b"x",
    );
    assert_eq!(
        classify(&from_unspecified),
        Class::Other(OtherReason::SourceIp)
    );
    let from_multicast6 = ipv6_udp(GN_A, ADAPTER, ALL_NODES, PEER6, 5000, 5000, b"x");
    assert_eq!(
        classify(&from_multicast6),
        Class::Other(OtherReason::SourceIp)
    );
    let from_unspecified6 = ipv6_udp(
        GN_A,
        ADAPTER,
        Ipv6Addr::UNSPECIFIED,
        PEER6,
        5000,
        5000,
        b"x",
    );
    assert_eq!(
        classify(&from_unspecified6),
        Class::Other(OtherReason::SourceIp)
    );
    // Short things.
    assert_eq!(
        classify(&[]),
        Class::Other(OtherReason::Ethernet(WireError::Truncated))
    );
    assert_eq!(
        classify(&f[..30]),
        Class::Other(OtherReason::Ipv4(WireError::Truncated))
    );
    assert_eq!(
        classify(&frame(NS_DAD)[..60]),
        Class::Other(OtherReason::Ipv6(WireError::Truncated))
    );
}

// --- ND validity (RFC 4861 §6.1, §7.1) ---------------------------------

/// `h` with `change` applied and the checksums recomputed.
fn changed(h: &str, change: impl FnOnce(&mut Vec<u8>)) -> Class {
    let mut f = frame(h);
    change(&mut f);
    fix_checksums(&mut f);
    classify(&f)
}

fn invalid(why: NdpInvalid) -> Class {
    Class::Other(OtherReason::Ndp(why))
}

#[test]
fn nd_needs_hop_limit_255_code_0_and_a_good_checksum() {
    for h in [
        RS_UNSPECIFIED,
        NS_DAD,
        NS_NUD_PEER,
        NA_UNSOLICITED,
        RA_ROGUE,
    ] {
        assert_eq!(
            changed(h, |f| f[21] = 64),
            invalid(NdpInvalid::HopLimit),
            "{h}"
        );
        assert_eq!(changed(h, |f| f[55] = 1), invalid(NdpInvalid::Code), "{h}");
        let mut f = frame(h);
        f[58] ^= 1;
        assert_eq!(
            classify(&f),
            Class::Other(OtherReason::Icmpv6(WireError::Checksum)),
            "{h}"
        );
    }
}

#[test]
fn nd_refuses_short_messages_and_bad_options() {
    // NS of 20 bytes: shorter than its 24-byte fixed part.
    let short = changed(NS_NUD_PEER, |f| {
        f.truncate(f.len() - 4);
        fix_ipv6_len(f);
    });
    assert_eq!(short, invalid(NdpInvalid::Length));
    let zero_option = changed(NS_RESOLVE_PEER, |f| f[79] = 0);
    assert_eq!(zero_option, invalid(NdpInvalid::Options));
    let long_option = changed(NS_RESOLVE_PEER, |f| f[79] = 2);
    assert_eq!(long_option, invalid(NdpInvalid::Options));
}

#[test]
fn ns_validity() {
    // §7.1.1: the target is not multicast.
    let multicast_target = changed(NS_NUD_PEER, |f| {
        f[62..78].copy_from_slice(&ALL_NODES.octets())
    });
    assert_eq!(multicast_target, invalid(NdpInvalid::TargetMulticast));
    // From :: only to a solicited-node address...
    let dad_unicast = changed(NS_DAD, |f| f[38..54].copy_from_slice(&A6.octets()));
    assert_eq!(dad_unicast, invalid(NdpInvalid::DadDestination));
    // ...and without a Source Link-Layer Address option.
    let dad_with_slla = changed(NS_DAD, |f| {
        f[78..86].copy_from_slice(&hex("0101 020000000a01"))
    });
    assert_eq!(
        dad_with_slla,
        invalid(NdpInvalid::UnspecifiedWithLinkLayerAddr)
    );
}

#[test]
fn rs_ra_na_validity() {
    // §6.1.1: an RS from :: carries no SLLA.
    let rs = changed(RS_LINK_LOCAL, |f| f[22..38].fill(0));
    assert_eq!(rs, invalid(NdpInvalid::UnspecifiedWithLinkLayerAddr));
    // §6.1.2: an RA comes from a link-local address.
    let ra = changed(RA_ROGUE, |f| f[22..38].copy_from_slice(&A6.octets()));
    assert_eq!(ra, invalid(NdpInvalid::RaSource));
    // §7.1.2: a solicited NA is not multicast, the target is not.
    let na = changed(NA_UNSOLICITED, |f| f[58] = 0x60);
    assert_eq!(na, invalid(NdpInvalid::SolicitedToMulticast));
    let na = changed(NA_UNSOLICITED, |f| {
        f[62..78].copy_from_slice(&ALL_NODES.octets())
    });
    assert_eq!(na, invalid(NdpInvalid::TargetMulticast));
    // Redirects are routers' business.
    let redirect = changed(NS_NUD_PEER, |f| {
        f[54] = ICMPV6_REDIRECT;
        f.extend_from_slice(&PEER6.octets());
        fix_ipv6_len(f);
    });
    assert_eq!(redirect, Class::Other(OtherReason::Redirect));
}

// --- builders at their limits ----------------------------------------

#[test]
fn builders_refuse_what_does_not_fit() {
    let big = vec![0; MAX_IPV4_UDP_PAYLOAD + 1];
    assert!(ipv4_udp(GN_A, ADAPTER, A4, PEER4, 1, 2, &big).is_empty());
    assert_eq!(
        ipv4_udp(GN_A, ADAPTER, A4, PEER4, 1, 2, &big[1..]).len(),
        14 + 65_535
    );
    let big = vec![0; MAX_IPV6_UDP_PAYLOAD + 1];
    assert!(ipv6_udp(GN_A, ADAPTER, A6, PEER6, 1, 2, &big).is_empty());
    let max = ipv6_udp(GN_A, ADAPTER, A6, PEER6, 1, 2, &big[1..]);
    assert_eq!(max.len(), 54 + 65_535);
    assert!(matches!(classify(&max), Class::Data { packet, .. } if packet == (14..max.len())));
    assert!(ipv6_icmp(GN_A, ADAPTER, A6, PEER6, 64, &[128, 0, 0]).is_empty());
    assert!(ipv6_icmp(GN_A, ADAPTER, A6, PEER6, 64, &vec![0; 65_536]).is_empty());
}

// --- never panics ------------------------------------------------------

/// A small deterministic generator (xorshift64), for the tests only.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

#[test]
fn every_truncation_is_classified_without_panic() {
    for (name, f) in all() {
        let whole = classify(&f);
        assert_eq!(
            matches!(whole, Class::Other(_)),
            name == "MLD_REPORT",
            "{name}: {whole:?}"
        );
        // Cut anywhere before its padding, a frame is short of what its
        // length fields say, and so `Other`.
        let unpadded = if name == "ARP_PROBE_PADDED" {
            42
        } else {
            f.len()
        };
        for len in 0..f.len() {
            let class = classify(&f[..len]);
            if len < unpadded {
                assert!(
                    matches!(class, Class::Other(_)),
                    "{name} cut to {len}: {class:?}"
                );
            } else {
                assert_eq!(class, whole, "{name} cut to {len}");
            }
        }
    }
}

#[test]
fn random_and_mutated_bytes_are_classified_without_panic() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..20_000 {
        let len = (rng.next() % 200) as usize;
        let f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let _ = classify(&f);
    }
    // Valid frames with a few bytes changed, checksums fixed half the
    // time so the changes reach the deeper checks.
    let frames = all();
    for i in 0..50_000 {
        let (_, f) = &frames[i % frames.len()];
        let mut g = f.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() as usize) % g.len();
            g[at] = rng.byte();
        }
        if rng.next() % 2 == 0 && g.len() >= 54 {
            fix_checksums(&mut g);
        }
        let class = classify(&g);
        // Whatever comes out, its ranges lie inside the frame.
        match class {
            Class::Dhcp4 { payload, .. }
            | Class::Dhcp6 { payload, .. }
            | Class::Dns { payload, .. } => {
                assert!(payload.start <= payload.end && payload.end <= g.len());
            }
            Class::Data { packet, .. } => {
                assert!(packet.start <= packet.end && packet.end <= g.len())
            }
            _ => {}
        }
    }
}

// --- checksum completion (offloaded senders) --------------------------

#[test]
fn transport_checksums_left_to_offload_are_completed() {
    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
    let (s4, d4): (Ipv4Addr, Ipv4Addr) =
        ("100.64.0.5".parse().unwrap(), "100.64.0.2".parse().unwrap());
    let (s6, d6): (Ipv6Addr, Ipv6Addr) = (
        "fd7a:6379:7068::5".parse().unwrap(),
        "fd7a:6379:7068::2".parse().unwrap(),
    );
    // UDP over IPv4 and IPv6, as the builders make them (checksums right).
    for whole in [
        ipv4_udp(mac, mac, s4, d4, 4000, 53, b"some payload"),
        ipv6_udp(mac, mac, s6, d6, 4000, 53, b"odd payload"),
    ] {
        let packet = &whole[ETHERNET_HEADER_LEN..];
        let field = if packet[0] >> 4 == 4 { 20 + 6 } else { 40 + 6 };
        let mut partial = packet.to_vec();
        partial[field..field + 2].copy_from_slice(&[0x12, 0x34]);
        assert!(complete_transport_checksum(&mut partial));
        assert_eq!(partial, packet, "the builder's checksum again");
    }
    // A TCP SYN over IPv4: the completed checksum verifies.
    let mut tcp = hex("45000028 0001 4000 4006 0000 64400005 64400002
        c350 1f90 00000001 00000000 5002 faf0 beef 0000");
    assert!(complete_transport_checksum(&mut tcp));
    let acc = checksum::pseudo_header(s4.into(), d4.into(), 6, 20) + checksum::sum(&tcp[20..]);
    assert!(checksum::verifies(acc));
    // Not TCP or UDP, a later fragment, or truncated: left alone.
    let mut icmp = tcp.clone();
    icmp[9] = 1;
    let before = icmp.clone();
    assert!(!complete_transport_checksum(&mut icmp));
    assert_eq!(icmp, before);
    let mut fragment = tcp.clone();
    fragment[7] = 8;
    assert!(!complete_transport_checksum(&mut fragment));
    for len in 0..tcp.len() - 4 {
        let mut cut = tcp[..len].to_vec();
        let _ = complete_transport_checksum(&mut cut);
    }
}
