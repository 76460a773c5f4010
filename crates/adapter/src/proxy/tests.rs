use super::*;
use crate::frame::fixtures::*;
use crate::frame::{classify, solicited_node, Class, NdiscRepr};

fn proxy() -> Proxy {
    let mut proxy = Proxy::new(ProxyConfig {
        mac: ADAPTER,
        gateway_v4: GW4,
        gateway_v6: GW6,
        overlay_v4: Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10).expect("prefix"),
        overlay_v6: Ipv6Prefix::new("fd7a:6379:7068::".parse().expect("ip"), 48).expect("prefix"),
    });
    proxy.set_general_nodes([
        (GN_A, GeneralNode { vip4: A4, vip6: A6 }),
        (GN_B, GeneralNode { vip4: B4, vip6: B6 }),
    ]);
    proxy
}

/// An ARP request as a frame from `mac`, classified.
fn arp_request(mac: MacAddr, sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Class {
    let request = ArpRepr {
        operation: ArpOperation::Request,
        source_hardware_addr: sha,
        source_protocol_addr: spa,
        target_hardware_addr: MacAddr([0; 6]),
        target_protocol_addr: tpa,
    };
    classify(&frame::arp(mac, MacAddr::BROADCAST, &request))
}

/// A Neighbor Solicitation as a frame from `mac`, classified: to the
/// target's solicited-node address, with an SLLA unless from ::.
fn solicitation(mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr, lladdr: Option<MacAddr>) -> Class {
    let dst = solicited_node(target);
    let ns = NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr,
    };
    let f = frame::ipv6_icmp(
        mac,
        frame::multicast_mac(dst),
        src,
        dst,
        255,
        &ns.to_bytes(),
    );
    let class = classify(&f);
    assert!(
        matches!(class, Class::NeighborSolicitation { .. }),
        "{class:?}"
    );
    class
}

/// The refusal `answer` counted for `class`, checking it sent nothing.
fn refusal(proxy: &mut Proxy, class: &Class) -> Refusal {
    let before = *proxy.counters();
    assert_eq!(proxy.answer(class), None, "{class:?}");
    let after = *proxy.counters();
    let reasons = [
        Refusal::UnknownMac,
        Refusal::SenderMismatch,
        Refusal::ForeignSource,
        Refusal::OwnAddress,
        Refusal::NotRequest,
        Refusal::OutsideOverlay,
    ];
    let counted: Vec<_> = reasons
        .into_iter()
        .filter(|r| after.refused(*r) == before.refused(*r) + 1)
        .collect();
    assert_eq!(counted.len(), 1, "{class:?}: {before:?} -> {after:?}");
    counted[0]
}

// --- ARP --------------------------------------------------------------

#[test]
fn arp_request_for_the_gateway_gets_the_adapters_mac() {
    let mut proxy = proxy();
    let reply = proxy
        .answer(&classify(&hex(ARP_REQUEST_GATEWAY)))
        .expect("reply");
    // RFC 826: to the requester, sender = the asked address at the
    // adapter's MAC, target = the requester.
    let expected = hex("020000000a01 020000000001 0806
         0001 0800 06 04 0002 020000000001 64400001 020000000a01 6440000a");
    assert_eq!(reply, expected);
    assert_eq!(proxy.counters().arp_answered, 1);
}

#[test]
fn arp_requests_for_peers_and_other_general_nodes_are_answered() {
    let mut proxy = proxy();
    for target in [
        PEER4,
        B4,
        Ipv4Addr::new(100, 127, 255, 254),
        Ipv4Addr::new(100, 64, 0, 1),
    ] {
        let reply = proxy
            .answer(&arp_request(GN_A, GN_A, A4, target))
            .expect("reply");
        let Class::Arp { src_mac, arp } = classify(&reply) else {
            panic!("{reply:?}")
        };
        assert_eq!(src_mac, ADAPTER);
        assert_eq!(
            arp,
            ArpRepr {
                operation: ArpOperation::Reply,
                source_hardware_addr: ADAPTER,
                source_protocol_addr: target,
                target_hardware_addr: GN_A,
                target_protocol_addr: A4,
            }
        );
        assert_eq!(reply[..6], GN_A.0);
    }
    assert_eq!(proxy.counters().arp_answered, 4);
}

#[test]
fn arp_probes_are_silent_for_the_nodes_own_address_and_answered_for_others() {
    let mut proxy = proxy();
    // RFC 5227 §2.1.1: silence means the address is free.
    let own = classify(&hex(ARP_PROBE_PADDED));
    assert_eq!(refusal(&mut proxy, &own), Refusal::OwnAddress);
    // A probe for a peer's address is a conflict the node must see: the
    // reply's sender is the probed address, its target 0.0.0.0.
    let probe = arp_request(GN_A, GN_A, Ipv4Addr::UNSPECIFIED, PEER4);
    let reply = proxy.answer(&probe).expect("reply");
    let expected = hex("020000000a01 020000000001 0806
         0001 0800 06 04 0002 020000000001 64400114 020000000a01 00000000");
    assert_eq!(reply, expected);
    // An announcement (RFC 5227 §2.3: sender = target = own) too.
    let announcement = arp_request(GN_A, GN_A, A4, A4);
    assert_eq!(refusal(&mut proxy, &announcement), Refusal::OwnAddress);
}

#[test]
fn arp_refusals() {
    let mut proxy = proxy();
    let unknown = arp_request(ROGUE, ROGUE, Ipv4Addr::new(100, 64, 9, 9), GW4);
    assert_eq!(refusal(&mut proxy, &unknown), Refusal::UnknownMac);
    let spoofed_sha = arp_request(GN_A, GN_B, A4, GW4);
    assert_eq!(refusal(&mut proxy, &spoofed_sha), Refusal::SenderMismatch);
    let as_b = arp_request(GN_A, GN_A, B4, GW4);
    assert_eq!(refusal(&mut proxy, &as_b), Refusal::ForeignSource);
    let off_overlay_sender = arp_request(GN_A, GN_A, Ipv4Addr::new(192, 0, 2, 7), GW4);
    assert_eq!(
        refusal(&mut proxy, &off_overlay_sender),
        Refusal::ForeignSource
    );
    for target in [
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(100, 128, 0, 1),
        Ipv4Addr::new(100, 64, 0, 0),
        Ipv4Addr::new(100, 127, 255, 255),
    ] {
        let outside = arp_request(GN_A, GN_A, A4, target);
        assert_eq!(
            refusal(&mut proxy, &outside),
            Refusal::OutsideOverlay,
            "{target}"
        );
    }
    let reply = ArpRepr {
        operation: ArpOperation::Reply,
        source_hardware_addr: GN_A,
        source_protocol_addr: A4,
        target_hardware_addr: ADAPTER,
        target_protocol_addr: GW4,
    };
    let reply = classify(&frame::arp(GN_A, ADAPTER, &reply));
    assert_eq!(refusal(&mut proxy, &reply), Refusal::NotRequest);
    assert_eq!(proxy.counters().arp_answered, 0);
}

// --- ND ---------------------------------------------------------------

#[test]
fn neighbor_solicitation_for_a_peer_gets_a_solicited_advertisement() {
    let mut proxy = proxy();
    let answer = proxy
        .answer(&classify(&hex(NS_RESOLVE_PEER)))
        .expect("answer");
    assert_eq!(answer, hex(NA_PROXY_PEER));
    assert_eq!(proxy.counters().nd_answered, 1);
}

#[test]
fn unicast_nud_probes_are_answered_the_same_way() {
    // RFC 4861 §7.3.1: the probe is unicast, the answer is unicast and
    // solicited, so the entry becomes REACHABLE again.
    let mut proxy = proxy();
    let answer = proxy.answer(&classify(&hex(NS_NUD_PEER))).expect("answer");
    assert_eq!(answer, hex(NA_PROXY_PEER));
}

#[test]
fn the_router_link_local_and_gateway_are_answered_with_the_router_flag() {
    let mut proxy = proxy();
    let answer = proxy.answer(&classify(&hex(NS_ROUTER_LL))).expect("answer");
    assert_eq!(answer, hex(NA_PROXY_ROUTER));

    let gateway = solicitation(GN_A, A6, GW6, Some(GN_A));
    let answer = proxy.answer(&gateway).expect("answer");
    assert_eq!(answer[..12], [GN_A.0, ADAPTER.0].concat());
    assert_eq!(
        classify(&answer),
        Class::NeighborAdvertisement {
            src_mac: ADAPTER,
            src_ip: GW6,
            target: GW6,
            flags: NaFlags::ROUTER | NaFlags::SOLICITED | NaFlags::OVERRIDE,
            lladdr: Some(ADAPTER),
        }
    );
    let ip = frame::Ipv6Packet::new_checked(&answer[14..]).expect("ipv6");
    assert_eq!((ip.dst_addr(), ip.hop_limit()), (A6, 255));
}

#[test]
fn link_local_sources_and_other_general_nodes_are_answered() {
    let mut proxy = proxy();
    let from_link_local = solicitation(GN_A, A_LL, PEER6, Some(GN_A));
    let answer = proxy.answer(&from_link_local).expect("answer");
    let ip = frame::Ipv6Packet::new_checked(&answer[14..]).expect("ipv6");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (ADAPTER_LL, A_LL));
    // Another GN on the same LAN is reached through the adapter too.
    let for_b = solicitation(GN_A, A6, B6, None);
    let answer = proxy.answer(&for_b).expect("answer");
    assert!(
        matches!(classify(&answer), Class::NeighborAdvertisement { target, .. } if target == B6)
    );
}

#[test]
fn dad_for_the_nodes_own_address_is_silent_and_for_a_peer_is_defended() {
    let mut proxy = proxy();
    // RFC 4862 §5.4.3: no answer means the tentative address is unique.
    let own = classify(&hex(NS_DAD));
    assert_eq!(refusal(&mut proxy, &own), Refusal::OwnAddress);
    // DAD for a peer's VIP: RFC 4861 §7.2.4 multicast to all-nodes with
    // Solicited clear, and the node gives the address up.
    let peer = solicitation(GN_A, Ipv6Addr::UNSPECIFIED, PEER6, None);
    let answer = proxy.answer(&peer).expect("answer");
    assert_eq!(answer, hex(NA_PROXY_DAD));
    // DAD for its own link-local address is outside the overlay.
    let link_local = solicitation(GN_A, Ipv6Addr::UNSPECIFIED, A_LL, None);
    assert_eq!(refusal(&mut proxy, &link_local), Refusal::OutsideOverlay);
    // A solicitation for its own VIPv6 from elsewhere is silent too.
    let own_again = solicitation(GN_A, A_LL, A6, Some(GN_A));
    assert_eq!(refusal(&mut proxy, &own_again), Refusal::OwnAddress);
}

#[test]
fn neighbor_solicitation_refusals() {
    let mut proxy = proxy();
    let unknown = solicitation(ROGUE, ROGUE_LL, PEER6, Some(ROGUE));
    assert_eq!(refusal(&mut proxy, &unknown), Refusal::UnknownMac);
    let spoofed_slla = solicitation(GN_A, A6, PEER6, Some(GN_B));
    assert_eq!(refusal(&mut proxy, &spoofed_slla), Refusal::SenderMismatch);
    let as_b = solicitation(GN_A, B6, PEER6, Some(GN_A));
    assert_eq!(refusal(&mut proxy, &as_b), Refusal::ForeignSource);
    let global = solicitation(GN_A, "2001:db8::a".parse().expect("ip"), PEER6, Some(GN_A));
    assert_eq!(refusal(&mut proxy, &global), Refusal::ForeignSource);
    for target in ["2001:db8::1", "fd7a:6379:7069::1", "fe80::1"] {
        let outside = solicitation(GN_A, A6, target.parse().expect("ip"), Some(GN_A));
        assert_eq!(
            refusal(&mut proxy, &outside),
            Refusal::OutsideOverlay,
            "{target}"
        );
    }
    assert_eq!(proxy.counters().nd_answered, 0);
}

// --- the table and the counters ---------------------------------------

#[test]
fn the_general_node_list_is_replaced_whole() {
    let mut proxy = proxy();
    let request = classify(&hex(ARP_REQUEST_GATEWAY));
    assert!(proxy.answer(&request).is_some());
    proxy.set_general_nodes([(GN_B, GeneralNode { vip4: B4, vip6: B6 })]);
    assert_eq!(proxy.general_node(GN_A), None);
    assert_eq!(refusal(&mut proxy, &request), Refusal::UnknownMac);
    // The same MAC with a new VIP: the old one is now foreign.
    proxy.set_general_nodes([(
        GN_A,
        GeneralNode {
            vip4: Ipv4Addr::new(100, 64, 0, 99),
            vip6: A6,
        },
    )]);
    assert_eq!(refusal(&mut proxy, &request), Refusal::ForeignSource);
}

#[test]
fn other_classes_are_not_the_proxys_and_not_counted() {
    let mut proxy = proxy();
    for h in [
        RS_UNSPECIFIED,
        RA_ROGUE,
        NA_UNSOLICITED,
        DHCP4_DISCOVER,
        DHCP6_SOLICIT,
        DNS4_QUERY,
        ICMP4_ECHO_PEER,
        MLD_REPORT,
    ] {
        assert_eq!(proxy.answer(&classify(&hex(h))), None, "{h}");
    }
    assert_eq!(*proxy.counters(), ProxyCounters::default());
}

#[test]
fn counters_add_up() {
    let mut proxy = proxy();
    let frames = [
        classify(&hex(ARP_REQUEST_GATEWAY)),
        classify(&hex(ARP_PROBE_PADDED)),
        classify(&hex(NS_RESOLVE_PEER)),
        classify(&hex(NS_DAD)),
        arp_request(ROGUE, ROGUE, Ipv4Addr::new(100, 64, 9, 9), GW4),
        solicitation(GN_A, B6, PEER6, None),
    ];
    for class in &frames {
        let _ = proxy.answer(class);
    }
    assert_eq!(
        *proxy.counters(),
        ProxyCounters {
            arp_answered: 1,
            nd_answered: 1,
            unknown_mac: 1,
            sender_mismatch: 0,
            foreign_source: 1,
            own_address: 2,
            not_request: 0,
            outside_overlay: 0,
        }
    );
}
