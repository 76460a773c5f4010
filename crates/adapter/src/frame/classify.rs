//! The classifier: every LAN frame through the views in one pass.

use super::*;

// ---------------------------------------------------------------------------
// The classifier

/// What a frame from the LAN is, and so which part of the adapter takes it
/// (`docs/adapter.md`, "One interface, one classifier").
///
/// Payloads are given as ranges into the classified frame, so a `Class`
/// borrows nothing. `src_mac` is always the Ethernet source, which names the
/// general node; nothing here says the MAC is a known one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// An ARP packet for IPv4 over Ethernet, for the ARP proxy. The proxy
    /// compares the sender hardware address with `src_mac`.
    Arp { src_mac: MacAddr, arp: ArpRepr },
    /// A valid Router Solicitation (RFC 4861 §6.1.1), for the RA sender.
    /// `src_ip` is unspecified (then `lladdr` is `None`) or the host's.
    RouterSolicitation {
        src_mac: MacAddr,
        src_ip: Ipv6Addr,
        lladdr: Option<MacAddr>,
    },
    /// A valid Router Advertisement from the LAN: ignored (RA-Guard, RFC
    /// 6105), the adapter is the only router of the general nodes.
    RouterAdvertisement { src_mac: MacAddr, src_ip: Ipv6Addr },
    /// A valid Neighbor Solicitation (RFC 4861 §7.1.1), for the ND proxy.
    /// `src_ip` unspecified is Duplicate Address Detection; `dst_ip`
    /// unicast is a Neighbor Unreachability Detection probe (§7.3.1).
    NeighborSolicitation {
        src_mac: MacAddr,
        src_ip: Ipv6Addr,
        dst_ip: Ipv6Addr,
        target: Ipv6Addr,
        /// The Source Link-Layer Address option.
        lladdr: Option<MacAddr>,
    },
    /// A valid Neighbor Advertisement (RFC 4861 §7.1.2); the adapter keeps
    /// no neighbour cache of the LAN, so the caller only counts these.
    NeighborAdvertisement {
        src_mac: MacAddr,
        src_ip: Ipv6Addr,
        target: Ipv6Addr,
        flags: NaFlags,
        /// The Target Link-Layer Address option.
        lladdr: Option<MacAddr>,
    },
    /// UDP to port 67 (and not from 67), checksum good: a DHCPv4 client's
    /// message for the DHCPv4 server. `src_ip` is 0.0.0.0 before a lease.
    Dhcp4 {
        src_mac: MacAddr,
        src_ip: Ipv4Addr,
        dst_ip: Ipv4Addr,
        payload: Range<usize>,
    },
    /// UDP from port 67 or to 68: a DHCPv4 server or relay on the LAN,
    /// ignored (the spirit of RFC 7610 for IPv4).
    Dhcp4Server { src_mac: MacAddr, src_ip: Ipv4Addr },
    /// UDP to port 547 (and not from 547) from a link-local address (RFC
    /// 8415 §13.1), checksum good: a DHCPv6 client's message for the
    /// DHCPv6 server.
    Dhcp6 {
        src_mac: MacAddr,
        src_ip: Ipv6Addr,
        dst_ip: Ipv6Addr,
        payload: Range<usize>,
    },
    /// UDP from port 547 or to 546: a DHCPv6 server or relay on the LAN,
    /// ignored (DHCPv6-Shield, RFC 7610).
    Dhcp6Server { src_mac: MacAddr, src_ip: Ipv6Addr },
    /// UDP to port 53 from a unicast address to a unicast address,
    /// checksum good: for the local DNS service. The caller serves it when
    /// `dst` is the gateway and treats it as [`Class::Data`] otherwise (a
    /// query to a peer's own DNS server).
    Dns {
        src_mac: MacAddr,
        src: SocketAddr,
        dst: SocketAddr,
        payload: Range<usize>,
    },
    /// Any other unicast IPv4 or IPv6 packet from a unicast source: for
    /// the tunnel of the general node named by `src_mac`, if `dst_ip` is a
    /// peer's VIP (the caller checks; anything else is dropped there).
    /// `packet` is the whole IP packet, Ethernet padding cut off. Checksums
    /// above IP are left to the peer (end to end).
    Data {
        src_mac: MacAddr,
        dst_mac: MacAddr,
        version: IpVersion,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        packet: Range<usize>,
    },
    /// Nothing the adapter takes: dropped and counted.
    Other(OtherReason),
}

impl Class {
    /// The Ethernet source, for anything but [`Class::Other`].
    pub fn src_mac(&self) -> Option<MacAddr> {
        match self {
            Class::Arp { src_mac, .. }
            | Class::RouterSolicitation { src_mac, .. }
            | Class::RouterAdvertisement { src_mac, .. }
            | Class::NeighborSolicitation { src_mac, .. }
            | Class::NeighborAdvertisement { src_mac, .. }
            | Class::Dhcp4 { src_mac, .. }
            | Class::Dhcp4Server { src_mac, .. }
            | Class::Dhcp6 { src_mac, .. }
            | Class::Dhcp6Server { src_mac, .. }
            | Class::Dns { src_mac, .. }
            | Class::Data { src_mac, .. } => Some(*src_mac),
            Class::Other(_) => None,
        }
    }
}

/// Why a frame is [`Class::Other`]: the caller's drop counters' key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum OtherReason {
    /// Shorter than an Ethernet header.
    #[error("ethernet: {0}")]
    Ethernet(WireError),
    /// A group (multicast) address as the Ethernet source, which IEEE 802
    /// never sends.
    #[error("multicast source MAC")]
    SourceMac,
    /// An 802.1Q or 802.1ad tag: the adapter serves the untagged LAN only.
    #[error("VLAN-tagged")]
    Vlan,
    /// An EtherType other than IPv4, ARP, IPv6.
    #[error("ethertype {0:#06x}")]
    EtherType(u16),
    #[error("arp: {0}")]
    Arp(WireError),
    #[error("ipv4: {0}")]
    Ipv4(WireError),
    /// A fragment: neither a service nor the tunnel reassembles.
    #[error("ipv4 fragment")]
    Ipv4Fragment,
    #[error("ipv6: {0}")]
    Ipv6(WireError),
    /// A multicast, broadcast or (outside DHCP and ND) unspecified source.
    #[error("source address not unicast")]
    SourceIp,
    /// Multicast, broadcast or unspecified destination, and no service
    /// takes it (mDNS, MLD, SSDP...).
    #[error("destination not unicast")]
    NotUnicast,
    #[error("udp: {0}")]
    Udp(WireError),
    #[error("icmpv6: {0}")]
    Icmpv6(WireError),
    /// An ND message that fails RFC 4861's validity checks.
    #[error("invalid neighbor discovery: {0}")]
    Ndp(NdpInvalid),
    /// A Redirect from the LAN: only routers send them and the adapter is
    /// the general nodes' only router.
    #[error("redirect")]
    Redirect,
    /// A DHCPv6 client message from a non-link-local address.
    #[error("dhcpv6 not from a link-local address")]
    Dhcp6Source,
}

/// Which validity check of RFC 4861 (§6.1.1 RS, §6.1.2 RA, §7.1.1 NS,
/// §7.1.2 NA) an ND message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum NdpInvalid {
    /// IP Hop Limit is not 255: it crossed a router.
    #[error("hop limit not 255")]
    HopLimit,
    #[error("code not 0")]
    Code,
    /// Shorter than the message type's fixed part.
    #[error("too short")]
    Length,
    /// An option of length zero, running past the end, or of a length
    /// its type does not allow.
    #[error("bad option")]
    Options,
    /// NS or NA for a multicast target.
    #[error("multicast target")]
    TargetMulticast,
    /// From the unspecified address with a link-layer address option.
    #[error("link-layer option from the unspecified address")]
    UnspecifiedWithLinkLayerAddr,
    /// NS from the unspecified address (DAD) not to a solicited-node
    /// multicast address.
    #[error("DAD not to a solicited-node address")]
    DadDestination,
    /// NA with the Solicited flag to a multicast address.
    #[error("solicited advertisement to multicast")]
    SolicitedToMulticast,
    /// RA not from a link-local address.
    #[error("RA not from a link-local address")]
    RaSource,
}

/// Classifies one frame from the LAN. Never panics.
pub fn classify(frame: &[u8]) -> Class {
    classify_frame(frame, Checksums::Verify).unwrap_or_else(Class::Other)
}

/// Whether the UDP and ICMPv6 checksums of a received frame are there to
/// verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksums {
    Verify,
    /// The kernel handed the frame over before its transport checksum was
    /// filled in (`TP_STATUS_CSUMNOTREADY`: it came from a local stack, a
    /// veth or a virtual NIC with checksum offload): there is no checksum
    /// to verify yet, and the path it came by did not alter it.
    NotReady,
}

/// [`classify`] for a frame whose transport checksum may not be filled in
/// yet (see [`Checksums`]).
pub fn classify_received(frame: &[u8], checksums: Checksums) -> Class {
    classify_frame(frame, checksums).unwrap_or_else(Class::Other)
}

type Classified = std::result::Result<Class, OtherReason>;

fn classify_frame(frame: &[u8], checksums: Checksums) -> Classified {
    let eth = EthernetFrame::new_checked(frame).map_err(OtherReason::Ethernet)?;
    let src_mac = eth.src_addr();
    if src_mac.is_multicast() {
        return Err(OtherReason::SourceMac);
    }
    match eth.ethertype() {
        EtherType::Arp => {
            let arp = ArpPacket::new_checked(eth.payload())
                .and_then(|p| ArpRepr::parse(&p))
                .map_err(OtherReason::Arp)?;
            Ok(Class::Arp { src_mac, arp })
        }
        EtherType::Ipv4 => classify_ipv4(src_mac, eth.dst_addr(), eth.payload(), checksums),
        EtherType::Ipv6 => classify_ipv6(src_mac, eth.dst_addr(), eth.payload(), checksums),
        EtherType::Unknown(ETHERTYPE_VLAN | ETHERTYPE_QINQ) => Err(OtherReason::Vlan),
        EtherType::Unknown(t) => Err(OtherReason::EtherType(t)),
    }
}

/// Whether an IPv4 address can be a unicast destination.
fn is_unicast_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast())
}

fn classify_ipv4(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    bytes: &[u8],
    checksums: Checksums,
) -> Classified {
    let ip = Ipv4Packet::new_checked(bytes).map_err(OtherReason::Ipv4)?;
    let repr = Ipv4Repr::parse(&ip).map_err(OtherReason::Ipv4)?;
    if ip.is_fragment() {
        return Err(OtherReason::Ipv4Fragment);
    }
    let (src_ip, dst_ip) = (repr.src_addr, repr.dst_addr);
    if src_ip.is_multicast() || src_ip.is_broadcast() {
        return Err(OtherReason::SourceIp);
    }
    let ip_start = ETHERNET_HEADER_LEN;
    if repr.next_header == IpProtocol::Udp {
        let udp = UdpPacket::new_checked(ip.payload()).map_err(OtherReason::Udp)?;
        let (sport, dport) = (udp.src_port(), udp.dst_port());
        let udp_start = ip_start + ip.header_len();
        let payload = udp_start + UDP_HEADER_LEN..udp_start + usize::from(udp.length());
        let service = sport == DHCPV4_SERVER_PORT
            || [DHCPV4_SERVER_PORT, DHCPV4_CLIENT_PORT, DNS_PORT].contains(&dport);
        if service {
            check_udp(&udp, src_ip.into(), dst_ip.into(), checksums)?;
            // RFC 2131 §4.1: servers and relays send from 67, and only a
            // server's message goes to the client port; a client sends to
            // 67 from 68.
            if sport == DHCPV4_SERVER_PORT || dport == DHCPV4_CLIENT_PORT {
                return Ok(Class::Dhcp4Server { src_mac, src_ip });
            }
            if dport == DHCPV4_SERVER_PORT {
                return Ok(Class::Dhcp4 {
                    src_mac,
                    src_ip,
                    dst_ip,
                    payload,
                });
            }
            if dport == DNS_PORT {
                if src_ip.is_unspecified() {
                    return Err(OtherReason::SourceIp);
                }
                if !is_unicast_v4(dst_ip) {
                    return Err(OtherReason::NotUnicast);
                }
                return Ok(Class::Dns {
                    src_mac,
                    src: SocketAddr::new(src_ip.into(), sport),
                    dst: SocketAddr::new(dst_ip.into(), dport),
                    payload,
                });
            }
        }
    }
    if src_ip.is_unspecified() {
        return Err(OtherReason::SourceIp);
    }
    if !is_unicast_v4(dst_ip) {
        return Err(OtherReason::NotUnicast);
    }
    Ok(Class::Data {
        src_mac,
        dst_mac,
        version: IpVersion::V4,
        src_ip: src_ip.into(),
        dst_ip: dst_ip.into(),
        packet: ip_start..ip_start + usize::from(ip.total_len()),
    })
}

fn classify_ipv6(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    bytes: &[u8],
    checksums: Checksums,
) -> Classified {
    let ip = Ipv6Packet::new_checked(bytes).map_err(OtherReason::Ipv6)?;
    let repr = Ipv6Repr::parse(&ip).map_err(OtherReason::Ipv6)?;
    let (src_ip, dst_ip) = (repr.src_addr, repr.dst_addr);
    // RFC 4291 §2.7: multicast addresses are never a source.
    if src_ip.is_multicast() {
        return Err(OtherReason::SourceIp);
    }
    let ip_start = ETHERNET_HEADER_LEN;
    let payload_start = ip_start + IPV6_HEADER_LEN;
    match repr.next_header {
        IpProtocol::Icmpv6 => {
            let icmp = Icmpv6Packet::new_checked(ip.payload()).map_err(OtherReason::Icmpv6)?;
            if (ICMPV6_ROUTER_SOLICIT..=ICMPV6_REDIRECT).contains(&icmp.msg_type()) {
                return classify_ndisc(src_mac, &repr, &icmp, checksums);
            }
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(ip.payload()).map_err(OtherReason::Udp)?;
            let (sport, dport) = (udp.src_port(), udp.dst_port());
            let payload = payload_start + UDP_HEADER_LEN..payload_start + usize::from(udp.length());
            let service = sport == DHCPV6_SERVER_PORT
                || [DHCPV6_SERVER_PORT, DHCPV6_CLIENT_PORT, DNS_PORT].contains(&dport);
            if service {
                check_udp(&udp, src_ip.into(), dst_ip.into(), checksums)?;
                // RFC 8415 §7.2: clients listen on 546, servers and relay
                // agents on 547; only those send from 547 or to 546.
                if sport == DHCPV6_SERVER_PORT || dport == DHCPV6_CLIENT_PORT {
                    return Ok(Class::Dhcp6Server { src_mac, src_ip });
                }
                if dport == DHCPV6_SERVER_PORT {
                    // RFC 8415 §13.1: a client uses a link-local source
                    // for the servers on its link (the adapter sends no
                    // Server Unicast option).
                    if !is_link_local(src_ip) {
                        return Err(OtherReason::Dhcp6Source);
                    }
                    return Ok(Class::Dhcp6 {
                        src_mac,
                        src_ip,
                        dst_ip,
                        payload,
                    });
                }
                if dport == DNS_PORT {
                    if src_ip.is_unspecified() {
                        return Err(OtherReason::SourceIp);
                    }
                    if dst_ip.is_multicast() || dst_ip.is_unspecified() {
                        return Err(OtherReason::NotUnicast);
                    }
                    return Ok(Class::Dns {
                        src_mac,
                        src: SocketAddr::new(src_ip.into(), sport),
                        dst: SocketAddr::new(dst_ip.into(), dport),
                        payload,
                    });
                }
            }
        }
        _ => {}
    }
    if src_ip.is_unspecified() {
        return Err(OtherReason::SourceIp);
    }
    if dst_ip.is_multicast() || dst_ip.is_unspecified() {
        return Err(OtherReason::NotUnicast);
    }
    Ok(Class::Data {
        src_mac,
        dst_mac,
        version: IpVersion::V6,
        src_ip: src_ip.into(),
        dst_ip: dst_ip.into(),
        packet: ip_start..payload_start + repr.payload_len,
    })
}

/// The validity checks of RFC 4861 §6.1.1 (RS), §6.1.2 (RA), §7.1.1 (NS)
/// and §7.1.2 (NA). A message that fails one is silently discarded there;
/// here it is `Other` for the caller to count.
/// The UDP header's length, and its checksum unless it is not ready.
fn check_udp(
    udp: &UdpPacket<&[u8]>,
    src: IpAddr,
    dst: IpAddr,
    checksums: Checksums,
) -> std::result::Result<(), OtherReason> {
    match checksums {
        Checksums::Verify => UdpRepr::parse(udp, src, dst)
            .map(|_| ())
            .map_err(OtherReason::Udp),
        Checksums::NotReady => udp.check_len().map_err(OtherReason::Udp),
    }
}

fn classify_ndisc(
    src_mac: MacAddr,
    ip: &Ipv6Repr,
    icmp: &Icmpv6Packet<&[u8]>,
    checksums: Checksums,
) -> Classified {
    use NdpInvalid as Why;
    let ndp = |why| Err(OtherReason::Ndp(why));
    let (src_ip, dst_ip) = (ip.src_addr, ip.dst_addr);
    if ip.hop_limit != ND_HOP_LIMIT {
        return ndp(Why::HopLimit);
    }
    if checksums == Checksums::Verify && !icmp.verify_checksum(src_ip, dst_ip) {
        return Err(OtherReason::Icmpv6(WireError::Checksum));
    }
    if icmp.msg_code() != 0 {
        return ndp(Why::Code);
    }
    if icmp.msg_type() == ICMPV6_REDIRECT {
        return Err(OtherReason::Redirect);
    }
    let message = NdiscRepr::parse(icmp).map_err(|e| {
        OtherReason::Ndp(match e {
            WireError::Truncated => Why::Length,
            _ => Why::Options,
        })
    })?;
    let unspecified = src_ip.is_unspecified();
    match message {
        NdiscRepr::RouterSolicit { lladdr } => {
            if unspecified && lladdr.is_some() {
                return ndp(Why::UnspecifiedWithLinkLayerAddr);
            }
            Ok(Class::RouterSolicitation {
                src_mac,
                src_ip,
                lladdr,
            })
        }
        NdiscRepr::RouterAdvert { .. } => {
            if !is_link_local(src_ip) {
                return ndp(Why::RaSource);
            }
            Ok(Class::RouterAdvertisement { src_mac, src_ip })
        }
        NdiscRepr::NeighborSolicit {
            target_addr,
            lladdr,
        } => {
            if target_addr.is_multicast() {
                return ndp(Why::TargetMulticast);
            }
            if unspecified {
                if !is_solicited_node(dst_ip) {
                    return ndp(Why::DadDestination);
                }
                if lladdr.is_some() {
                    return ndp(Why::UnspecifiedWithLinkLayerAddr);
                }
            }
            Ok(Class::NeighborSolicitation {
                src_mac,
                src_ip,
                dst_ip,
                target: target_addr,
                lladdr,
            })
        }
        NdiscRepr::NeighborAdvert {
            flags,
            target_addr,
            lladdr,
        } => {
            if target_addr.is_multicast() {
                return ndp(Why::TargetMulticast);
            }
            if dst_ip.is_multicast() && flags.contains(NaFlags::SOLICITED) {
                return ndp(Why::SolicitedToMulticast);
            }
            Ok(Class::NeighborAdvertisement {
                src_mac,
                src_ip,
                target: target_addr,
                flags,
                lladdr,
            })
        }
    }
}
