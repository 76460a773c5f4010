use super::*;
use dhcproto::v4::{Flags, UnknownOption};

const NOW: u64 = 1_700_000_000;
const ADAPTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const PRINTER: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
const PRINTER_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
const PLC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x02]);
const PLC_VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 12);
const STRANGER: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x99]);
const OTHER_SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

fn config() -> Config {
    Config::new(ADAPTER, 10, "cyphonic.internal")
}

fn server() -> Server {
    let mut s = Server::new(config()).expect("config");
    let rejected = s.set_general_nodes([(PRINTER, PRINTER_VIP, "printer"), (PLC, PLC_VIP, "plc")]);
    assert_eq!(rejected, vec![]);
    s
}

fn events(s: &mut Server) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// A DISCOVER byte for byte as ISC dhclient 4.4 sends it: flags 0, a
/// remembered address in option 50, its host name, its default request
/// list, End and padding to 300 bytes.
fn dhclient_discover() -> Vec<u8> {
    let mut p = vec![
        0x01, 0x01, 0x06, 0x00, // op, htype, hlen, hops
        0x3c, 0x9a, 0x1f, 0x27, // xid
        0x00, 0x00, 0x00, 0x00, // secs, flags
    ];
    p.extend([0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    p.extend(PRINTER.0);
    p.extend([0; 10 + 64 + 128]); // chaddr padding, sname, file
    p.extend(MAGIC_COOKIE);
    p.extend([53, 1, 1]);
    p.extend([50, 4, 100, 64, 0, 11]);
    p.extend([12, 7]);
    p.extend(b"printer");
    p.extend([55, 13, 1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42]);
    p.push(255);
    p.resize(300, 0);
    p
}

/// The index of the End option in [`dhclient_discover`].
const DHCLIENT_END: usize = 240 + 3 + 6 + 9 + 15;

/// A client message built with dhcproto, as `mac` would send it.
fn client(mac: MacAddr, ty: MessageType, build: impl FnOnce(&mut Message)) -> Vec<u8> {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234_5678, z, z, z, z, &mac.0);
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    build(&mut m);
    m.to_vec().expect("encode")
}

fn prl(codes: &[u8]) -> DhcpOption {
    DhcpOption::ParameterRequestList(codes.iter().map(|c| OptionCode::from(*c)).collect())
}

/// DHCPREQUEST in SELECTING as dhclient sends it (RFC 2131 §4.3.2):
/// server identifier and requested IP, ciaddr 0, broadcast.
fn selecting(mac: MacAddr, server: Ipv4Addr, ip: Ipv4Addr) -> Vec<u8> {
    client(mac, MessageType::Request, |m| {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        m.opts_mut().insert(prl(&[1, 28, 2, 3, 15, 6, 119, 12]));
    })
}

/// DHCPREQUEST in RENEWING: ciaddr only, unicast to the server.
fn renewing(mac: MacAddr, ciaddr: Ipv4Addr) -> Vec<u8> {
    client(mac, MessageType::Request, |m| {
        m.set_ciaddr(ciaddr);
        m.opts_mut().insert(prl(&[1, 3, 6, 15]));
    })
}

fn reply_of(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) => r,
        Outcome::NoReply(why) => panic!("no reply: {why:?}"),
    }
}

fn parse(r: &Reply) -> Message {
    Message::decode(&mut Decoder::new(&r.payload)).expect("reply decodes")
}

/// The option codes of a reply in wire order.
fn codes(r: &Reply) -> Vec<u8> {
    options(&r.payload).map(|o| o.expect("framed").0).collect()
}

fn opt(m: &Message, code: OptionCode) -> Option<DhcpOption> {
    m.opts().get(code).cloned()
}

/// The fields every reply to PRINTER shares (RFC 2131 table 3).
fn assert_reply_header(m: &Message, xid: u32) {
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.htype(), HType::Eth);
    assert_eq!(m.chaddr(), &PRINTER.0);
    assert_eq!(m.xid(), xid);
    assert_eq!(m.hops(), 0);
    assert_eq!(m.secs(), 0);
    assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.giaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        opt(m, OptionCode::ServerIdentifier),
        Some(DhcpOption::ServerIdentifier(ADAPTER))
    );
}

fn assert_lease_options(m: &Message) {
    assert_eq!(
        opt(m, OptionCode::SubnetMask),
        Some(DhcpOption::SubnetMask(Ipv4Addr::new(255, 192, 0, 0)))
    );
    assert_eq!(
        opt(m, OptionCode::Router),
        Some(DhcpOption::Router(vec![ADAPTER]))
    );
    assert_eq!(
        opt(m, OptionCode::DomainNameServer),
        Some(DhcpOption::DomainNameServer(vec![ADAPTER]))
    );
    assert_eq!(
        opt(m, OptionCode::DomainName),
        Some(DhcpOption::DomainName("cyphonic.internal".into()))
    );
    assert_eq!(
        opt(m, OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(opt(m, OptionCode::Renewal), Some(DhcpOption::Renewal(1800)));
    assert_eq!(
        opt(m, OptionCode::Rebinding),
        Some(DhcpOption::Rebinding(3150))
    );
}

#[test]
fn config_gives_the_mask_and_refuses_nonsense() {
    assert_eq!(config().subnet_mask(), Ipv4Addr::new(255, 192, 0, 0));
    assert_eq!(
        Config::new(ADAPTER, 24, "").subnet_mask(),
        Ipv4Addr::new(255, 255, 255, 0)
    );
    assert_eq!(prefix_mask(30), Ipv4Addr::new(255, 255, 255, 252));
    let bad = |f: fn(&mut Config)| {
        let mut c = config();
        f(&mut c);
        Server::new(c).err()
    };
    assert_eq!(bad(|_| ()), None);
    assert_eq!(bad(|c| c.domain_name.clear()), None);
    assert_eq!(
        bad(|c| c.prefix_len = 0),
        Some(ConfigError::BadPrefixLen(0))
    );
    assert_eq!(
        bad(|c| c.prefix_len = 31),
        Some(ConfigError::BadPrefixLen(31))
    );
    assert_eq!(
        bad(|c| c.server = Ipv4Addr::new(100, 64, 0, 0)),
        Some(ConfigError::BadServerAddress(Ipv4Addr::new(100, 64, 0, 0)))
    );
    assert_eq!(
        bad(|c| c.server = Ipv4Addr::new(100, 127, 255, 255)),
        Some(ConfigError::BadServerAddress(Ipv4Addr::new(
            100, 127, 255, 255
        )))
    );
    assert_eq!(
        bad(|c| c.lease_secs = 59),
        Some(ConfigError::BadLeaseTime(59))
    );
    assert_eq!(
        bad(|c| c.lease_secs = u32::MAX),
        Some(ConfigError::BadLeaseTime(u32::MAX))
    );
    for name in [
        "a..b",
        "-.",
        "has space.internal",
        "ünï.internal",
        "x.",
        &"a".repeat(64),
    ] {
        let mut c = config();
        c.domain_name = name.into();
        assert_eq!(
            Server::new(c).err(),
            Some(ConfigError::BadDomainName(name.into())),
            "{name}"
        );
    }
    assert_eq!(
        bad(|c| c.interface_mtu = Some(67)),
        Some(ConfigError::BadMtu(67))
    );
}

#[test]
fn general_nodes_outside_the_prefix_or_doubled_are_left_out() {
    let mut s = Server::new(config()).expect("config");
    let mac = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
    let rejected = s.set_general_nodes([
        (mac(1), Ipv4Addr::new(100, 64, 0, 11), "a"),
        (
            MacAddr([3, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(100, 64, 0, 12),
            "multicast",
        ),
        (MacAddr([0; 6]), Ipv4Addr::new(100, 64, 0, 13), "zero"),
        (mac(4), Ipv4Addr::new(192, 0, 2, 4), "outside"),
        (mac(5), ADAPTER, "adapter"),
        (mac(6), Ipv4Addr::new(100, 127, 255, 255), "broadcast"),
        (mac(1), Ipv4Addr::new(100, 64, 0, 17), "same mac"),
        (mac(8), Ipv4Addr::new(100, 64, 0, 11), "same vip"),
        (mac(9), Ipv4Addr::new(100, 100, 7, 9), "ok"),
    ]);
    let whys: Vec<_> = rejected.iter().map(|r| (r.mac, r.why)).collect();
    assert_eq!(
        whys,
        vec![
            (MacAddr([3, 0, 0, 0, 0, 2]), GeneralNodeError::NotUnicast),
            (MacAddr([0; 6]), GeneralNodeError::NotUnicast),
            (mac(4), GeneralNodeError::OutsideSubnet),
            (mac(5), GeneralNodeError::ServerAddress),
            (mac(6), GeneralNodeError::NotHostAddress),
            (mac(1), GeneralNodeError::DuplicateMac),
            (mac(8), GeneralNodeError::DuplicateVip),
        ]
    );
    assert_eq!(
        rejected[2].to_string(),
        "general node 02:00:00:00:00:04 (192.0.2.4): VIPv4 outside the overlay prefix"
    );
    let offer = |s: &mut Server, m: MacAddr| {
        s.handle(NOW, m, &client(m, MessageType::Discover, |_| ()))
            .into_reply()
            .map(|r| parse(&r).yiaddr())
    };
    assert_eq!(offer(&mut s, mac(1)), Some(Ipv4Addr::new(100, 64, 0, 11)));
    assert_eq!(offer(&mut s, mac(9)), Some(Ipv4Addr::new(100, 100, 7, 9)));
    assert_eq!(offer(&mut s, mac(8)), None);
}

#[test]
fn dhclient_discover_gets_a_byte_exact_offer_in_its_request_order() {
    let mut s = server();
    let r = reply_of(s.handle(NOW, PRINTER, &dhclient_discover()));
    assert_eq!(r.kind, ReplyKind::Offer);
    // flags 0 and no ciaddr: unicast to yiaddr at chaddr (§4.1).
    assert_eq!(
        (r.src_ip, r.dst_ip, r.dst_mac, r.broadcast),
        (ADAPTER, PRINTER_VIP, PRINTER, false)
    );
    let m = parse(&r);
    assert_reply_header(&m, 0x3c9a_1f27);
    assert_eq!(m.flags(), Flags::default());
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.yiaddr(), PRINTER_VIP);
    assert_lease_options(&m);
    assert_eq!(
        opt(&m, OptionCode::Hostname),
        Some(DhcpOption::Hostname("printer".into()))
    );

    let mut expected = vec![0x02, 0x01, 0x06, 0x00, 0x3c, 0x9a, 0x1f, 0x27, 0, 0, 0, 0];
    expected.extend([0, 0, 0, 0, 100, 64, 0, 11, 0, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend(PRINTER.0);
    expected.extend([0; 10 + 64 + 128]);
    expected.extend(MAGIC_COOKIE);
    expected.extend([53, 1, 2]); // OFFER
    expected.extend([54, 4, 100, 64, 0, 1]);
    // The request list: 1, 28, 2, 3, 15, 6, 119, 12, ...
    expected.extend([1, 4, 255, 192, 0, 0]);
    expected.extend([3, 4, 100, 64, 0, 1]);
    expected.extend([15, 17]);
    expected.extend(b"cyphonic.internal");
    expected.extend([6, 4, 100, 64, 0, 1]);
    expected.extend([12, 7]);
    expected.extend(b"printer");
    // Not asked for, in the server's order.
    expected.extend([51, 4, 0, 0, 0x0e, 0x10]);
    expected.extend([58, 4, 0, 0, 0x07, 0x08]);
    expected.extend([59, 4, 0, 0, 0x0c, 0x4e]);
    expected.push(255);
    assert_eq!(r.payload, expected);
    // A DISCOVER leaves no state behind.
    assert_eq!(s.leases(), vec![]);
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(s.counters().offers, 1);
}

#[test]
fn dhcpcd_discover_gets_its_client_id_back_and_options_in_its_order() {
    let mut c = config();
    c.interface_mtu = Some(1400);
    let mut s = Server::new(c).expect("config");
    let _ = s.set_general_nodes([(PRINTER, PRINTER_VIP, "printer")]);
    let client_id = vec![
        0xff, 0x5e, 0x10, 0x00, 0x01, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef,
    ];
    let discover = client(PRINTER, MessageType::Discover, |m| {
        let o = m.opts_mut();
        o.insert(DhcpOption::ClientIdentifier(client_id.clone()));
        o.insert(DhcpOption::MaxMessageSize(1472));
        o.insert(DhcpOption::ClassIdentifier(
            b"dhcpcd-10.0.6:Linux-6.8.0:x86_64:GenuineIntel".to_vec(),
        ));
        o.insert(DhcpOption::Hostname("printer".into()));
        o.insert(DhcpOption::Unknown(UnknownOption::new(145.into(), vec![1])));
        o.insert(prl(&[1, 121, 33, 3, 6, 15, 26, 28, 51, 58, 59, 119]));
    });
    let r = reply_of(s.handle(NOW, PRINTER, &discover));
    assert_eq!(codes(&r), vec![53, 54, 1, 3, 6, 15, 26, 51, 58, 59, 61]);
    let m = parse(&r);
    assert_reply_header(&m, 0x1234_5678);
    assert_eq!(m.yiaddr(), PRINTER_VIP);
    assert_lease_options(&m);
    assert_eq!(
        opt(&m, OptionCode::InterfaceMtu),
        Some(DhcpOption::InterfaceMtu(1400))
    );
    assert_eq!(
        opt(&m, OptionCode::ClientIdentifier),
        Some(DhcpOption::ClientIdentifier(client_id))
    );
    assert_eq!(opt(&m, OptionCode::Hostname), None, "not asked for");
}

#[test]
fn broadcast_flag_gets_a_broadcast_offer() {
    let mut s = server();
    let discover = client(PRINTER, MessageType::Discover, |m| {
        m.set_flags(Flags::default().set_broadcast());
    });
    let r = reply_of(s.handle(NOW, PRINTER, &discover));
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (Ipv4Addr::BROADCAST, MacAddr::BROADCAST, true)
    );
    let m = parse(&r);
    assert!(m.flags().broadcast(), "flags copied from the client");
    assert_eq!(m.yiaddr(), PRINTER_VIP);
    // No request list: everything, in the server's order.
    assert_eq!(codes(&r), vec![53, 54, 1, 3, 6, 15, 51, 58, 59]);
}

#[test]
fn selecting_request_for_this_server_is_acked_and_leased() {
    let mut s = server();
    let r = reply_of(s.handle(NOW, PRINTER, &selecting(PRINTER, ADAPTER, PRINTER_VIP)));
    assert_eq!(r.kind, ReplyKind::Ack);
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (PRINTER_VIP, PRINTER, false)
    );
    let m = parse(&r);
    assert_reply_header(&m, 0x1234_5678);
    assert_eq!(
        opt(&m, OptionCode::MessageType),
        Some(DhcpOption::MessageType(MessageType::Ack))
    );
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.yiaddr(), PRINTER_VIP);
    assert_lease_options(&m);
    assert_eq!(codes(&r), vec![53, 54, 1, 3, 15, 6, 12, 51, 58, 59]);
    let lease = Lease {
        mac: PRINTER,
        vip4: PRINTER_VIP,
        expires_unix: NOW + 3600,
    };
    assert_eq!(s.leases(), vec![lease]);
    assert_eq!(s.lease(PRINTER), Some(&lease));
    assert_eq!(
        events(&mut s),
        vec![Event::LeaseGranted {
            lease,
            renewal: false
        }]
    );
    assert_eq!(
        s.poll_timeout(),
        Some(Timeout {
            at_unix: NOW + 3600,
            reason: TimeoutReason::LeaseExpires { mac: PRINTER }
        })
    );
}

#[test]
fn request_naming_another_server_gets_nothing() {
    let mut s = server();
    let o = s.handle(
        NOW,
        PRINTER,
        &selecting(PRINTER, OTHER_SERVER, Ipv4Addr::new(192, 168, 1, 50)),
    );
    assert_eq!(o, Outcome::NoReply(NoReply::OtherServer));
    // Even for the GN's own address: the client chose the other server.
    let o = s.handle(NOW, PRINTER, &selecting(PRINTER, OTHER_SERVER, PRINTER_VIP));
    assert_eq!(o, Outcome::NoReply(NoReply::OtherServer));
    assert_eq!(s.leases(), vec![]);
    assert_eq!(s.counters().other_server, 2);
}

#[test]
fn request_for_another_address_is_naked_by_broadcast() {
    let mut s = server();
    let client_id = vec![1, 2, 0, 0x5e, 0x10, 0, 1];
    let request = client(PRINTER, MessageType::Request, |m| {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(ADAPTER));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(PLC_VIP));
        m.opts_mut()
            .insert(DhcpOption::ClientIdentifier(client_id.clone()));
    });
    let r = reply_of(s.handle(NOW, PRINTER, &request));
    assert_eq!(r.kind, ReplyKind::Nak);
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (Ipv4Addr::BROADCAST, MacAddr::BROADCAST, true)
    );
    let m = parse(&r);
    assert_reply_header(&m, 0x1234_5678);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(codes(&r), vec![53, 54, 56, 61]);
    assert_eq!(r.payload.len(), 300, "padded to a BOOTP message");
    assert_eq!(r.payload[298..], [255, 0], "End, then padding");
    assert_eq!(
        opt(&m, OptionCode::MessageType),
        Some(DhcpOption::MessageType(MessageType::Nak))
    );
    assert_eq!(s.leases(), vec![]);
    assert_eq!(s.counters().naks, 1);
}

#[test]
fn init_reboot_acks_the_vip_and_naks_an_old_address() {
    let mut s = server();
    let reboot = |ip| {
        client(PRINTER, MessageType::Request, |m| {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        })
    };
    let r = reply_of(s.handle(NOW, PRINTER, &reboot(PRINTER_VIP)));
    assert_eq!(r.kind, ReplyKind::Ack);
    assert_eq!((r.dst_ip, r.broadcast), (PRINTER_VIP, false));
    assert_eq!(parse(&r).yiaddr(), PRINTER_VIP);
    assert!(s.lease(PRINTER).is_some());

    // The address it had on the LAN before the adapter came.
    let r = reply_of(s.handle(NOW, PRINTER, &reboot(Ipv4Addr::new(192, 168, 1, 50))));
    assert_eq!(r.kind, ReplyKind::Nak);
    assert!(r.broadcast);
}

#[test]
fn renewing_is_acked_by_unicast_to_ciaddr_and_extends_the_lease() {
    let mut s = server();
    let _ = s.handle(NOW, PRINTER, &selecting(PRINTER, ADAPTER, PRINTER_VIP));
    let _ = events(&mut s);
    let t1 = NOW + 1800;
    let r = reply_of(s.handle(t1, PRINTER, &renewing(PRINTER, PRINTER_VIP)));
    assert_eq!(r.kind, ReplyKind::Ack);
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (PRINTER_VIP, PRINTER, false)
    );
    let m = parse(&r);
    assert_reply_header(&m, 0x1234_5678);
    assert_eq!(m.ciaddr(), PRINTER_VIP);
    assert_eq!(m.yiaddr(), PRINTER_VIP);
    assert_lease_options(&m);
    let lease = Lease {
        mac: PRINTER,
        vip4: PRINTER_VIP,
        expires_unix: t1 + 3600,
    };
    assert_eq!(s.leases(), vec![lease]);
    assert_eq!(
        events(&mut s),
        vec![Event::LeaseGranted {
            lease,
            renewal: true
        }]
    );

    // REBINDING: the same, broadcast by IP; ciaddr still wins (§4.1).
    let rebind = client(PRINTER, MessageType::Request, |m| {
        m.set_ciaddr(PRINTER_VIP);
        m.set_flags(Flags::default().set_broadcast());
    });
    let r = reply_of(s.handle(t1 + 1350, PRINTER, &rebind));
    assert_eq!(
        (r.kind, r.dst_ip, r.broadcast),
        (ReplyKind::Ack, PRINTER_VIP, false)
    );

    // Renewing an address that is not the GN's: NAK, broadcast.
    let r = reply_of(s.handle(t1, PRINTER, &renewing(PRINTER, PLC_VIP)));
    assert_eq!((r.kind, r.broadcast), (ReplyKind::Nak, true));
}

#[test]
fn request_without_any_address_is_malformed() {
    let mut s = server();
    let o = s.handle(NOW, PRINTER, &client(PRINTER, MessageType::Request, |_| ()));
    assert_eq!(
        o,
        Outcome::NoReply(NoReply::Malformed(Malformed::MissingAddress))
    );
    assert_eq!(s.counters().malformed, 1);
}

#[test]
fn release_ends_the_lease() {
    let mut s = server();
    let _ = s.handle(NOW, PRINTER, &selecting(PRINTER, ADAPTER, PRINTER_VIP));
    let _ = events(&mut s);
    let release = |server, ciaddr| {
        client(PRINTER, MessageType::Release, |m| {
            m.set_ciaddr(ciaddr);
            m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        })
    };
    let o = s.handle(NOW + 5, PRINTER, &release(OTHER_SERVER, PRINTER_VIP));
    assert_eq!(o, Outcome::NoReply(NoReply::OtherServer));
    let o = s.handle(NOW + 5, PRINTER, &release(ADAPTER, PLC_VIP));
    assert_eq!(o, Outcome::NoReply(NoReply::NotItsAddress));
    assert!(s.lease(PRINTER).is_some());

    let o = s.handle(NOW + 5, PRINTER, &release(ADAPTER, PRINTER_VIP));
    assert_eq!(o, Outcome::NoReply(NoReply::Released));
    assert_eq!(s.leases(), vec![]);
    assert_eq!(
        events(&mut s),
        vec![Event::LeaseEnded {
            lease: Lease {
                mac: PRINTER,
                vip4: PRINTER_VIP,
                expires_unix: NOW + 3600
            },
            why: LeaseEnd::Released
        }]
    );
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.counters().released, 1);
}

#[test]
fn decline_ends_the_lease_and_tells_the_shell() {
    let mut s = server();
    let _ = s.handle(NOW, PRINTER, &selecting(PRINTER, ADAPTER, PRINTER_VIP));
    let _ = events(&mut s);
    let decline = |ip| {
        client(PRINTER, MessageType::Decline, |m| {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(ADAPTER));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        })
    };
    let o = s.handle(NOW + 1, PRINTER, &decline(PLC_VIP));
    assert_eq!(o, Outcome::NoReply(NoReply::NotItsAddress));
    let o = s.handle(NOW + 1, PRINTER, &decline(PRINTER_VIP));
    assert_eq!(o, Outcome::NoReply(NoReply::Declined));
    assert_eq!(s.leases(), vec![]);
    let lease = Lease {
        mac: PRINTER,
        vip4: PRINTER_VIP,
        expires_unix: NOW + 3600,
    };
    assert_eq!(
        events(&mut s),
        vec![
            Event::LeaseEnded {
                lease,
                why: LeaseEnd::Declined
            },
            Event::Declined {
                mac: PRINTER,
                vip4: PRINTER_VIP
            },
        ]
    );
    assert_eq!(s.counters().declined, 1);
    let o = s.handle(
        NOW + 1,
        PRINTER,
        &client(PRINTER, MessageType::Decline, |_| ()),
    );
    assert_eq!(
        o,
        Outcome::NoReply(NoReply::Malformed(Malformed::MissingAddress))
    );
}

#[test]
fn inform_is_acked_without_lease_options() {
    let mut s = server();
    let inform = client(PRINTER, MessageType::Inform, |m| {
        m.set_ciaddr(PRINTER_VIP);
        m.opts_mut().insert(prl(&[6, 15, 1, 3, 51]));
    });
    let r = reply_of(s.handle(NOW, PRINTER, &inform));
    assert_eq!(r.kind, ReplyKind::InformAck);
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (PRINTER_VIP, PRINTER, false)
    );
    let m = parse(&r);
    assert_reply_header(&m, 0x1234_5678);
    assert_eq!(
        opt(&m, OptionCode::MessageType),
        Some(DhcpOption::MessageType(MessageType::Ack))
    );
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr(), PRINTER_VIP);
    assert_eq!(codes(&r), vec![53, 54, 6, 15, 1, 3]);
    assert_eq!(s.leases(), vec![]);
    assert_eq!(s.counters().inform_acks, 1);
}

#[test]
fn unknown_macs_get_nothing_and_are_remembered_boundedly() {
    let mut s = server();
    let discover = client(STRANGER, MessageType::Discover, |_| ());
    assert_eq!(
        s.handle(NOW, STRANGER, &discover),
        Outcome::NoReply(NoReply::UnknownMac)
    );
    let request = selecting(STRANGER, ADAPTER, PRINTER_VIP);
    assert_eq!(
        s.handle(NOW + 3, STRANGER, &request),
        Outcome::NoReply(NoReply::UnknownMac)
    );
    let seen: Vec<_> = s.unknown_macs().copied().collect();
    assert_eq!(
        seen,
        vec![UnknownMac {
            mac: STRANGER,
            first_seen_unix: NOW,
            last_seen_unix: NOW + 3,
            messages: 2
        }]
    );
    assert_eq!(s.counters().unknown_mac, 2);
    // Once listed, it is served and no longer "unknown".
    let _ = s.set_general_nodes([
        (PRINTER, PRINTER_VIP, "printer"),
        (STRANGER, Ipv4Addr::new(100, 64, 0, 99), "new"),
    ]);
    assert_eq!(s.unknown_macs().count(), 0);
    let r = reply_of(s.handle(NOW + 4, STRANGER, &discover));
    assert_eq!(parse(&r).yiaddr(), Ipv4Addr::new(100, 64, 0, 99));
}

#[test]
fn lan_hygiene_drops_what_is_not_a_gns_own_request() {
    let mut s = server();
    let discover = client(PRINTER, MessageType::Discover, |_| ());

    // chaddr is the GN's, the frame is someone else's.
    assert_eq!(
        s.handle(NOW, STRANGER, &discover),
        Outcome::NoReply(NoReply::ChaddrMismatch)
    );
    // A rogue server's OFFER on the LAN.
    let mut offer = Message::new_with_id(
        1,
        Ipv4Addr::UNSPECIFIED,
        PRINTER_VIP,
        OTHER_SERVER,
        Ipv4Addr::UNSPECIFIED,
        &PRINTER.0,
    );
    offer.set_opcode(Opcode::BootReply);
    offer
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Offer));
    let offer = offer.to_vec().expect("encode");
    assert_eq!(
        s.handle(NOW, PRINTER, &offer),
        Outcome::NoReply(NoReply::NotRequest)
    );
    // A server's message type in a BOOTREQUEST.
    let ack = client(PRINTER, MessageType::Ack, |_| ());
    assert_eq!(
        s.handle(NOW, PRINTER, &ack),
        Outcome::NoReply(NoReply::NotRequest)
    );
    let mut bad_op = discover.clone();
    bad_op[OP] = 7;
    assert_eq!(
        s.handle(NOW, PRINTER, &bad_op),
        Outcome::NoReply(NoReply::NotRequest)
    );
    // Not Ethernet.
    let mut token_ring = discover.clone();
    token_ring[HTYPE] = 6;
    assert_eq!(
        s.handle(NOW, PRINTER, &token_ring),
        Outcome::NoReply(NoReply::NotEthernet)
    );
    let mut hlen = discover.clone();
    hlen[HLEN] = 16;
    assert_eq!(
        s.handle(NOW, PRINTER, &hlen),
        Outcome::NoReply(NoReply::NotEthernet)
    );
    // Through a relay.
    let relayed = client(PRINTER, MessageType::Discover, |m| {
        m.set_giaddr(Ipv4Addr::new(100, 64, 0, 200));
    });
    assert_eq!(
        s.handle(NOW, PRINTER, &relayed),
        Outcome::NoReply(NoReply::Relayed)
    );
    // Plain BOOTP.
    let mut bootp = discover[..OPTIONS].to_vec();
    bootp.push(255);
    assert_eq!(
        s.handle(NOW, PRINTER, &bootp),
        Outcome::NoReply(NoReply::NotDhcp)
    );
    // A message type the server does not answer.
    let query = client(PRINTER, MessageType::LeaseQuery, |_| ());
    assert_eq!(
        s.handle(NOW, PRINTER, &query),
        Outcome::NoReply(NoReply::Unsupported(10))
    );
    // No magic cookie.
    let mut no_cookie = discover.clone();
    no_cookie[MAGIC] = 0;
    assert_eq!(
        s.handle(NOW, PRINTER, &no_cookie),
        Outcome::NoReply(NoReply::Malformed(Malformed::BadMagicCookie))
    );
    // A message type of the wrong length.
    let mut long_type = discover[..OPTIONS].to_vec();
    long_type.extend([53, 2, 1, 1, 255]);
    assert_eq!(
        s.handle(NOW, PRINTER, &long_type),
        Outcome::NoReply(NoReply::Malformed(Malformed::BadOptionLength {
            code: 53,
            len: 2
        }))
    );

    let c = *s.counters();
    assert_eq!(
        (
            c.chaddr_mismatch,
            c.not_request,
            c.not_ethernet,
            c.relayed,
            c.not_dhcp
        ),
        (1, 3, 2, 1, 1)
    );
    assert_eq!((c.unsupported, c.malformed, c.offers, c.acks), (1, 2, 0, 0));
    assert_eq!(s.leases(), vec![]);
}

#[test]
fn options_the_server_does_not_read_cannot_hide_the_ones_it_does() {
    let mut s = server();
    // A SELECTING REQUEST whose host name (before the server identifier)
    // is Latin-1, not UTF-8, and whose request list is split in two
    // (RFC 3396), with a client FQDN too short for its flags.
    let mut p = dhclient_discover()[..OPTIONS].to_vec();
    p.extend([53, 1, 3]);
    p.extend([12, 6, b'b', 0xfc, b'h', b'n', b'e', b'r']);
    p.extend([81, 1, 0]);
    p.extend([55, 2, 1, 3]);
    p.extend([54, 4, 100, 64, 0, 1]);
    p.extend([55, 2, 6, 15]);
    p.extend([50, 4, 100, 64, 0, 11]);
    p.push(255);
    let r = reply_of(s.handle(NOW, PRINTER, &p));
    assert_eq!(r.kind, ReplyKind::Ack);
    assert_eq!(codes(&r), vec![53, 54, 1, 3, 6, 15, 51, 58, 59]);
    // The same with another server's identifier: silence, not an ACK.
    let i = p.windows(2).position(|w| w == [54, 4]).expect("option 54") + 2;
    p[i..i + 4].copy_from_slice(&OTHER_SERVER.octets());
    assert_eq!(
        s.handle(NOW, PRINTER, &p),
        Outcome::NoReply(NoReply::OtherServer)
    );
}

#[test]
fn a_long_hostname_is_left_out_rather_than_overflow_the_reply() {
    let mut s = Server::new(config()).expect("config");
    let long = "h".repeat(300);
    let _ = s.set_general_nodes([(PRINTER, PRINTER_VIP, long)]);
    let r = reply_of(s.handle(NOW, PRINTER, &dhclient_discover()));
    assert!(r.payload.len() <= MAX_REPLY_LEN, "{}", r.payload.len());
    assert!(!codes(&r).contains(&12));
}

/// Found by the `dhcp4` fuzz target: a client identifier split over
/// several options (RFC 3396) was joined and echoed whole, so a GN could
/// make the reply as long as its request: past the 548 bytes every client
/// takes and, from a full-size request, past the link's MTU.
#[test]
fn a_client_identifier_longer_than_one_option_is_refused() {
    let mut s = server();
    let discover = |client_id: &[&[u8]]| {
        let mut p = dhclient_discover();
        p.truncate(DHCLIENT_END);
        for part in client_id {
            p.extend([61, part.len() as u8]);
            p.extend_from_slice(part);
        }
        p.push(255);
        p
    };
    let mut full = vec![1u8];
    full.extend([0xab; 254]);
    let too_long = discover(&[&full, &[0xcd, 0xef]]);
    assert_eq!(
        s.handle(NOW, PRINTER, &too_long),
        Outcome::NoReply(NoReply::Malformed(Malformed::BadOptionLength {
            code: 61,
            len: 257
        }))
    );
    // The longest one that fits one option is still echoed.
    let r = reply_of(s.handle(NOW, PRINTER, &discover(&[&full])));
    assert_eq!(
        opt(&parse(&r), OptionCode::ClientIdentifier),
        Some(DhcpOption::ClientIdentifier(full))
    );
    assert!(
        r.payload.len() <= MAX_REPLY_LEN + 257,
        "{}",
        r.payload.len()
    );
}

#[test]
fn every_truncation_of_a_discover_is_refused_or_answered_whole() {
    let mut s = server();
    let full = dhclient_discover();
    let whole = reply_of(s.handle(NOW, PRINTER, &full)).payload;
    for n in 0..full.len() {
        let o = s.handle(NOW, PRINTER, &full[..n]);
        match (n, &o) {
            (0..OPTIONS, Outcome::NoReply(NoReply::Malformed(Malformed::TooShort { len }))) => {
                assert_eq!(*len, n)
            }
            // Before the End option: cut in an option, or between
            // options (the message type's gone, or a shorter message).
            (OPTIONS..DHCLIENT_END, Outcome::NoReply(NoReply::Malformed(_)))
            | (OPTIONS..DHCLIENT_END, Outcome::NoReply(NoReply::NotDhcp)) => {}
            (OPTIONS..DHCLIENT_END, Outcome::Reply(r)) => {
                assert!([OPTIONS + 3, OPTIONS + 9, OPTIONS + 18].contains(&n), "{n}");
                assert_eq!(r.kind, ReplyKind::Offer);
            }
            (DHCLIENT_END.., Outcome::Reply(r)) => assert_eq!(r.payload, whole, "{n}"),
            _ => panic!("truncated to {n}: {o:?}"),
        }
    }
    assert_eq!(s.leases(), vec![]);
}

/// xorshift64*: deterministic bytes for the fuzz-style tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut s = server();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Pure noise, of every plausible length.
    for _ in 0..2000 {
        let len = rng.below(700);
        let p: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let _ = s.handle(NOW, PRINTER, &p);
    }
    // A valid header from a known GN followed by random options, so the
    // option walk and dhcproto see junk (biased towards the options the
    // server reads and those dhcproto asserts on).
    let header = dhclient_discover()[..OPTIONS].to_vec();
    let interesting = [53, 50, 54, 55, 61, 80, 81, 94, 151, 152, 0, 255, 12, 52];
    for _ in 0..20_000 {
        let mut p = header.clone();
        for _ in 0..rng.below(8) {
            let code = if rng.below(2) == 0 {
                interesting[rng.below(interesting.len() as u64)]
            } else {
                rng.byte()
            };
            p.push(code);
            let len = rng.below(12);
            p.push(if rng.below(8) == 0 {
                rng.byte()
            } else {
                len as u8
            });
            p.extend((0..len).map(|_| rng.byte()));
        }
        if rng.below(2) == 0 {
            p.truncate(rng.below(p.len() as u64 + 1));
        }
        let _ = s.handle(NOW, PRINTER, &p);
    }
    // Random flips in a real DISCOVER.
    let full = dhclient_discover();
    for _ in 0..5000 {
        let mut p = full.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(p.len() as u64);
            p[i] = rng.byte();
        }
        let src = if rng.below(2) == 0 { PRINTER } else { STRANGER };
        let _ = s.handle(NOW, src, &p);
    }
    assert!(s.leases().iter().all(|l| l.mac == PRINTER || l.mac == PLC));
}

#[test]
fn a_flood_of_random_macs_changes_nothing_for_the_gns() {
    let mut s = server();
    let _ = s.handle(NOW, PRINTER, &selecting(PRINTER, ADAPTER, PRINTER_VIP));
    let _ = events(&mut s);
    let before = s.leases();
    let mut rng = Rng(42);
    let flood = 5000;
    for i in 0..flood {
        let mut mac = [0u8; 6];
        mac.iter_mut().for_each(|b| *b = rng.byte());
        mac[0] = (mac[0] & 0xfc) | 0x02; // locally administered unicast
        let mac = MacAddr(mac);
        // DISCOVERs, and REQUESTs for the GNs' own VIPs.
        let p = if i % 2 == 0 {
            client(mac, MessageType::Discover, |_| ())
        } else {
            selecting(mac, ADAPTER, PRINTER_VIP)
        };
        assert_eq!(
            s.handle(NOW + 10, mac, &p),
            Outcome::NoReply(NoReply::UnknownMac)
        );
    }
    assert_eq!(s.counters().unknown_mac, flood);
    assert_eq!(s.unknown_macs().count(), MAX_UNKNOWN_MACS);
    assert_eq!(s.leases(), before);
    assert_eq!(events(&mut s), vec![]);

    // The GN renews; the other GN can still get its address.
    let r = reply_of(s.handle(NOW + 1800, PRINTER, &renewing(PRINTER, PRINTER_VIP)));
    assert_eq!((r.kind, parse(&r).yiaddr()), (ReplyKind::Ack, PRINTER_VIP));
    let r = reply_of(s.handle(NOW + 1800, PLC, &client(PLC, MessageType::Discover, |_| ())));
    assert_eq!(parse(&r).yiaddr(), PLC_VIP);
    let r = reply_of(s.handle(NOW + 1800, PLC, &selecting(PLC, ADAPTER, PLC_VIP)));
    assert_eq!(r.kind, ReplyKind::Ack);
    assert_eq!(s.leases().len(), 2);
}

#[test]
fn leases_expire_on_timeout_or_on_the_next_message() {
    let mut s = server();
    let _ = s.handle(NOW, PRINTER, &selecting(PRINTER, ADAPTER, PRINTER_VIP));
    let _ = s.handle(NOW + 100, PLC, &selecting(PLC, ADAPTER, PLC_VIP));
    let _ = events(&mut s);
    assert_eq!(
        s.poll_timeout(),
        Some(Timeout {
            at_unix: NOW + 3600,
            reason: TimeoutReason::LeaseExpires { mac: PRINTER }
        })
    );
    s.handle_timeout(NOW + 3599);
    assert_eq!(s.leases().len(), 2);
    s.handle_timeout(NOW + 3600);
    assert_eq!(
        s.leases().iter().map(|l| l.mac).collect::<Vec<_>>(),
        vec![PLC]
    );
    assert_eq!(
        events(&mut s),
        vec![Event::LeaseEnded {
            lease: Lease {
                mac: PRINTER,
                vip4: PRINTER_VIP,
                expires_unix: NOW + 3600
            },
            why: LeaseEnd::Expired
        }]
    );
    assert_eq!(s.poll_timeout().map(|t| t.at_unix), Some(NOW + 3700));
    // No timeout call: the next message forgets it, whoever sends it.
    let _ = s.handle(NOW + 3700, STRANGER, &[]);
    assert_eq!(s.leases(), vec![]);
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.counters().leases_expired, 2);
}

#[test]
fn a_restored_server_acks_the_renewal_of_a_lease_from_before() {
    let mut before = server();
    let _ = before.handle(NOW, PRINTER, &selecting(PRINTER, ADAPTER, PRINTER_VIP));
    let saved = serde_json::to_string(&before.leases()).expect("serialize");
    drop(before);

    let mut after = server();
    let leases: Vec<Lease> = serde_json::from_str(&saved).expect("deserialize");
    assert_eq!(after.restore(leases), 1);
    assert_eq!(
        after.leases(),
        vec![Lease {
            mac: PRINTER,
            vip4: PRINTER_VIP,
            expires_unix: NOW + 3600
        }]
    );
    assert_eq!(after.poll_timeout().map(|t| t.at_unix), Some(NOW + 3600));
    let r = reply_of(after.handle(NOW + 1800, PRINTER, &renewing(PRINTER, PRINTER_VIP)));
    assert_eq!(r.kind, ReplyKind::Ack);
    assert_eq!((r.dst_ip, r.broadcast), (PRINTER_VIP, false));
    let m = parse(&r);
    assert_eq!((m.ciaddr(), m.yiaddr()), (PRINTER_VIP, PRINTER_VIP));
    assert_eq!(
        after.lease(PRINTER).map(|l| l.expires_unix),
        Some(NOW + 1800 + 3600)
    );
    assert_eq!(
        events(&mut after),
        vec![Event::LeaseGranted {
            lease: Lease {
                mac: PRINTER,
                vip4: PRINTER_VIP,
                expires_unix: NOW + 5400
            },
            renewal: true
        }]
    );
}

#[test]
fn restore_and_list_changes_keep_leases_only_for_listed_gns() {
    let mut s = server();
    let lease = |mac, vip4| Lease {
        mac,
        vip4,
        expires_unix: NOW + 600,
    };
    let kept = s.restore([
        lease(PRINTER, PRINTER_VIP),
        lease(PLC, Ipv4Addr::new(100, 64, 0, 77)), // its VIPv4 changed since
        lease(STRANGER, Ipv4Addr::new(100, 64, 0, 99)),
    ]);
    assert_eq!(kept, 1);
    assert_eq!(s.leases(), vec![lease(PRINTER, PRINTER_VIP)]);

    // The printer leaves the list: its lease ends, and it is unknown.
    let _ = s.set_general_nodes([(PLC, PLC_VIP, "plc")]);
    assert_eq!(s.leases(), vec![]);
    assert_eq!(
        events(&mut s),
        vec![Event::LeaseEnded {
            lease: lease(PRINTER, PRINTER_VIP),
            why: LeaseEnd::Removed
        }]
    );
    assert_eq!(s.poll_timeout(), None);
    let o = s.handle(NOW, PRINTER, &renewing(PRINTER, PRINTER_VIP));
    assert_eq!(o, Outcome::NoReply(NoReply::UnknownMac));
}

#[test]
fn events_are_bounded() {
    let mut s = server();
    for i in 0..(MAX_EVENTS as u64 + 10) {
        let _ = s.handle(NOW + i, PRINTER, &renewing(PRINTER, PRINTER_VIP));
    }
    assert_eq!(s.counters().events_dropped, 10);
    let all = events(&mut s);
    assert_eq!(all.len(), MAX_EVENTS);
    assert_eq!(
        all[0],
        Event::LeaseGranted {
            lease: Lease {
                mac: PRINTER,
                vip4: PRINTER_VIP,
                expires_unix: NOW + 10 + 3600
            },
            renewal: true
        }
    );
}
