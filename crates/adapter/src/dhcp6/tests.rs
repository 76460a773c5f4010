use super::*;

const ADAPTER: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
const GN: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x10]);
const GN2: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x20]);
const GN_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe10, 0x10);
const ADAPTER_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 1);
const GN_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0x10);
const GN2_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0x20);
const DOMAIN: &str = "cyphonic.example";
const IAID: u32 = 0x5e10_0010;
const NOW: u64 = 1_700_000_000;

fn server() -> Dhcp6Server {
    let prefix = "fd7a:6379:7068::/48".parse().expect("prefix");
    let mut s =
        Dhcp6Server::new(Dhcp6Config::new(ADAPTER, ADAPTER_VIP6, DOMAIN, prefix)).expect("config");
    s.set_general_nodes([(GN, GN_VIP6), (GN2, GN2_VIP6)]);
    s
}

/// The DUID-LLT dhclient makes: type 1, hardware type 1, seconds since
/// 2000-01-01, the MAC.
fn duid_llt(mac: MacAddr) -> Vec<u8> {
    let mut d = vec![0, 1, 0, 1, 0x2c, 0x39, 0xcf, 0x88];
    d.extend_from_slice(&mac.0);
    d
}

fn xid(n: u8) -> [u8; 3] {
    [0x10, 0x08, n]
}

fn oro() -> DhcpOption {
    DhcpOption::ORO(v6::ORO {
        opts: vec![OptionCode::DomainNameServers, OptionCode::DomainSearchList],
    })
}

fn ia_na(id: u32, addrs: &[Ipv6Addr]) -> DhcpOption {
    let list = addrs
        .iter()
        .map(|&addr| {
            DhcpOption::IAAddr(IAAddr {
                addr,
                preferred_life: 7200,
                valid_life: 7500,
                opts: DhcpOptions::new(),
            })
        })
        .collect();
    DhcpOption::IANA(IANA {
        id,
        t1: 0,
        t2: 0,
        opts: options(list),
    })
}

/// A client message as `dhclient -6` sends it: Client ID (DUID-LLT),
/// Elapsed Time, ORO for DNS and search list, the given options.
fn client_msg(ty: MessageType, x: [u8; 3], extra: Vec<DhcpOption>) -> Vec<u8> {
    let mut m = v6::Message::new_with_id(ty, x);
    let o = m.opts_mut();
    o.insert(DhcpOption::ClientId(duid_llt(GN)));
    o.insert(DhcpOption::ElapsedTime(0));
    if ty != MessageType::Release && ty != MessageType::Decline {
        o.insert(oro());
    }
    for e in extra {
        o.insert(e);
    }
    m.to_vec().expect("encode")
}

fn server_id(s: &Dhcp6Server) -> DhcpOption {
    DhcpOption::ServerId(s.server_duid().as_bytes().to_vec())
}

fn solicit(rapid: bool) -> Vec<u8> {
    let mut extra = vec![ia_na(IAID, &[])];
    if rapid {
        extra.push(DhcpOption::RapidCommit);
    }
    client_msg(MessageType::Solicit, xid(1), extra)
}

fn request(s: &Dhcp6Server) -> Vec<u8> {
    client_msg(
        MessageType::Request,
        xid(2),
        vec![server_id(s), ia_na(IAID, &[GN_VIP6])],
    )
}

fn ask(s: &mut Dhcp6Server, now: u64, msg: &[u8]) -> v6::Message {
    let r = s.handle(now, GN, GN_LL, msg).expect("an answer");
    assert_eq!((r.dst_mac, r.dst_ip, r.dst_port), (GN, GN_LL, 546));
    v6::Message::from_bytes(&r.payload).expect("our answer decodes")
}

/// Binds GN's VIP with Solicit / Advertise / Request / Reply.
fn bound(s: &mut Dhcp6Server) {
    let _ = ask(s, NOW, &solicit(false));
    let req = request(s);
    let _ = ask(s, NOW, &req);
    assert!(s.lease(GN).is_some());
}

fn only(m: &v6::Message, code: OptionCode) -> &DhcpOption {
    let all = m.opts().get_all(code).unwrap_or(&[]);
    assert_eq!(all.len(), 1, "exactly one {code:?} in {m:?}");
    &all[0]
}

fn ia_nas_of(m: &v6::Message) -> Vec<IANA> {
    ia_nas(m).cloned().collect()
}

fn status_of(opts: &DhcpOptions) -> Option<(Status, String)> {
    match opts.get(OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(s)) => Some((s.status, s.msg.clone())),
        _ => None,
    }
}

fn check_ids(s: &Dhcp6Server, m: &v6::Message) {
    assert_eq!(
        only(m, OptionCode::ClientId),
        &DhcpOption::ClientId(duid_llt(GN))
    );
    assert_eq!(only(m, OptionCode::ServerId), &server_id(s));
}

fn check_dns(m: &v6::Message) {
    assert_eq!(
        only(m, OptionCode::DomainNameServers),
        &DhcpOption::DomainNameServers(vec![ADAPTER_VIP6])
    );
    match only(m, OptionCode::DomainSearchList) {
        DhcpOption::DomainSearchList(names) => {
            let names: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
            assert_eq!(names, ["cyphonic.example."]);
        }
        other => panic!("{other:?}"),
    }
}

/// The IA_NA holding the VIP with the configured lifetimes.
fn check_vip_ia(ia: &IANA) {
    assert_eq!((ia.id, ia.t1, ia.t2), (IAID, 1800, 2880));
    let addrs: Vec<&IAAddr> = ia
        .opts
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(addrs.len(), 1, "{ia:?}");
    assert_eq!(
        (addrs[0].addr, addrs[0].preferred_life, addrs[0].valid_life),
        (GN_VIP6, 3600, 7200)
    );
    assert_eq!(status_of(&ia.opts), None);
}

#[test]
fn solicit_gets_an_advertise_with_the_vip_and_dns() {
    let mut s = server();
    let m = ask(&mut s, NOW, &solicit(false));
    assert_eq!(m.msg_type(), MessageType::Advertise);
    assert_eq!(m.xid(), xid(1));
    check_ids(&s, &m);
    assert_eq!(
        only(&m, OptionCode::Preference),
        &DhcpOption::Preference(255)
    );
    let ias = ia_nas_of(&m);
    assert_eq!(ias.len(), 1);
    check_vip_ia(&ias[0]);
    check_dns(&m);
    assert_eq!(m.opts().get(OptionCode::RapidCommit), None);
    assert_eq!(m.opts().get(OptionCode::StatusCode), None);
    assert!(s.lease(GN).is_none(), "an Advertise binds nothing");
    assert!(!s.poll_leases_changed());
    assert_eq!(s.counters().advertises, 1);
}

#[test]
fn the_server_duid_is_duid_ll_of_the_adapter_mac() {
    let s = server();
    assert_eq!(
        s.server_duid().as_bytes(),
        &[0, 3, 0, 1, 0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]
    );
    assert_eq!(s.server_duid().kind(), 3);
    assert_eq!(s.server_duid().to_string(), "0003000102005e100001");
}

#[test]
fn solicit_with_rapid_commit_gets_a_reply_and_a_binding() {
    let mut s = server();
    let m = ask(&mut s, NOW, &solicit(true));
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert_eq!(m.xid(), xid(1));
    check_ids(&s, &m);
    assert_eq!(only(&m, OptionCode::RapidCommit), &DhcpOption::RapidCommit);
    assert_eq!(m.opts().get(OptionCode::Preference), None);
    check_vip_ia(&ia_nas_of(&m)[0]);
    check_dns(&m);
    let l = s.lease(GN).expect("bound");
    assert_eq!(
        (l.mac, l.iaid, l.address, l.expires, l.state),
        (GN, IAID, GN_VIP6, NOW + 7200, LeaseState::Bound)
    );
    assert_eq!(l.duid.as_bytes(), duid_llt(GN).as_slice());
    assert!(s.poll_leases_changed());
    assert!(!s.poll_leases_changed());
}

#[test]
fn request_gets_a_reply_and_a_binding() {
    let mut s = server();
    let _ = ask(&mut s, NOW, &solicit(false));
    let req = request(&s);
    let m = ask(&mut s, NOW, &req);
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert_eq!(m.xid(), xid(2));
    check_ids(&s, &m);
    check_vip_ia(&ia_nas_of(&m)[0]);
    check_dns(&m);
    assert_eq!(m.opts().get(OptionCode::StatusCode), None);
    assert_eq!(s.lease(GN).expect("bound").state, LeaseState::Bound);
    assert_eq!(s.counters().bindings, 1);
}

#[test]
fn renew_and_rebind_refresh_the_lifetimes() {
    let mut s = server();
    bound(&mut s);
    let later = NOW + 1800;
    let renew = client_msg(
        MessageType::Renew,
        xid(3),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    let m = ask(&mut s, later, &renew);
    assert_eq!((m.msg_type(), m.xid()), (MessageType::Reply, xid(3)));
    check_ids(&s, &m);
    check_vip_ia(&ia_nas_of(&m)[0]);
    check_dns(&m);
    assert_eq!(s.lease(GN).expect("lease").expires, later + 7200);

    let even_later = NOW + 2880;
    let rebind = client_msg(MessageType::Rebind, xid(4), vec![ia_na(IAID, &[GN_VIP6])]);
    let m = ask(&mut s, even_later, &rebind);
    assert_eq!((m.msg_type(), m.xid()), (MessageType::Reply, xid(4)));
    check_ids(&s, &m);
    check_vip_ia(&ia_nas_of(&m)[0]);
    assert_eq!(s.lease(GN).expect("lease").expires, even_later + 7200);
    assert_eq!(s.counters().bindings, 3);
}

#[test]
fn renew_without_a_binding_gets_no_binding() {
    let mut s = server();
    let renew = client_msg(
        MessageType::Renew,
        xid(3),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    let m = ask(&mut s, NOW, &renew);
    let ias = ia_nas_of(&m);
    assert_eq!(ias.len(), 1);
    assert_eq!((ias[0].id, ias[0].t1, ias[0].t2), (IAID, 0, 0));
    assert_eq!(
        status_of(&ias[0].opts).expect("status").0,
        Status::NoBinding
    );
    assert_eq!(addresses(&ias[0].opts).count(), 0);
    assert!(s.lease(GN).is_none());
    // Nor does an expired one renew.
    bound(&mut s);
    let m = ask(&mut s, NOW + 7200, &renew);
    assert_eq!(
        status_of(&ia_nas_of(&m)[0].opts).expect("status").0,
        Status::NoBinding
    );
}

#[test]
fn rebind_for_addresses_not_ours_returns_them_with_lifetimes_zero() {
    let mut s = server();
    let stale: Ipv6Addr = "2001:db8::10".parse().expect("ip");
    let rebind = client_msg(MessageType::Rebind, xid(5), vec![ia_na(IAID, &[stale])]);
    let m = ask(&mut s, NOW, &rebind);
    let ias = ia_nas_of(&m);
    assert_eq!(ias.len(), 1);
    let a: Vec<&IAAddr> = ias[0]
        .opts
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].addr, a[0].preferred_life, a[0].valid_life),
        (stale, 0, 0)
    );
    assert!(s.lease(GN).is_none(), "nothing bound");

    // With a binding, the VIP is refreshed and the stale address zeroed.
    bound(&mut s);
    let rebind = client_msg(
        MessageType::Rebind,
        xid(6),
        vec![ia_na(IAID, &[GN_VIP6, stale])],
    );
    let m = ask(&mut s, NOW + 10, &rebind);
    let ia = &ia_nas_of(&m)[0];
    let a: Vec<(Ipv6Addr, u32, u32)> = ia
        .opts
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some((a.addr, a.preferred_life, a.valid_life)),
            _ => None,
        })
        .collect();
    assert_eq!(a, [(GN_VIP6, 3600, 7200), (stale, 0, 0)]);
}

#[test]
fn rebind_naming_the_vip_without_a_binding_binds_it() {
    let mut s = server();
    let rebind = client_msg(MessageType::Rebind, xid(5), vec![ia_na(IAID, &[GN_VIP6])]);
    let m = ask(&mut s, NOW, &rebind);
    check_vip_ia(&ia_nas_of(&m)[0]);
    assert_eq!(s.lease(GN).expect("bound").iaid, IAID);
    // An empty IA without a binding: NoBinding.
    let rebind = client_msg(MessageType::Rebind, xid(6), vec![ia_na(7, &[])]);
    let m = ask(&mut s, NOW, &rebind);
    assert_eq!(
        status_of(&ia_nas_of(&m)[0].opts).expect("status").0,
        Status::NoBinding
    );
}

#[test]
fn release_ends_the_lease() {
    let mut s = server();
    bound(&mut s);
    let _ = s.poll_leases_changed();
    let release = client_msg(
        MessageType::Release,
        xid(7),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    let m = ask(&mut s, NOW + 5, &release);
    assert_eq!((m.msg_type(), m.xid()), (MessageType::Reply, xid(7)));
    check_ids(&s, &m);
    assert_eq!(status_of(m.opts()).expect("status").0, Status::Success);
    assert!(ia_nas_of(&m).is_empty(), "released IAs are not echoed");
    assert!(s.lease(GN).is_none());
    assert!(s.poll_leases_changed());
    assert_eq!(s.counters().releases, 1);
    // Again: nothing to release, NoBinding for the IA.
    let m = ask(&mut s, NOW + 6, &release);
    assert_eq!(status_of(m.opts()).expect("status").0, Status::Success);
    let ias = ia_nas_of(&m);
    assert_eq!(
        status_of(&ias[0].opts).expect("status").0,
        Status::NoBinding
    );
}

#[test]
fn decline_marks_the_lease_and_a_new_request_binds_again() {
    let mut s = server();
    bound(&mut s);
    let decline = client_msg(
        MessageType::Decline,
        xid(8),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    let m = ask(&mut s, NOW + 2, &decline);
    assert_eq!((m.msg_type(), m.xid()), (MessageType::Reply, xid(8)));
    check_ids(&s, &m);
    assert_eq!(status_of(m.opts()).expect("status").0, Status::Success);
    assert!(ia_nas_of(&m).is_empty());
    assert_eq!(s.lease(GN).expect("kept").state, LeaseState::Declined);
    assert_eq!(s.counters().declines, 1);
    // A declined address does not renew ...
    let renew = client_msg(
        MessageType::Renew,
        xid(9),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    let m = ask(&mut s, NOW + 3, &renew);
    assert_eq!(
        status_of(&ia_nas_of(&m)[0].opts).expect("status").0,
        Status::NoBinding
    );
    // ... but the GN has no other address: a Request binds it again.
    let req = request(&s);
    let m = ask(&mut s, NOW + 4, &req);
    check_vip_ia(&ia_nas_of(&m)[0]);
    assert_eq!(s.lease(GN).expect("lease").state, LeaseState::Bound);
}

#[test]
fn confirm_says_whether_the_addresses_are_on_link() {
    let mut s = server();
    let confirm = |x, addrs: &[Ipv6Addr]| {
        let mut ia = ia_na(IAID, addrs);
        if let DhcpOption::IANA(ia) = &mut ia {
            for o in ia.opts.iter_mut() {
                if let DhcpOption::IAAddr(a) = o {
                    (a.preferred_life, a.valid_life) = (0, 0);
                }
            }
        }
        client_msg(MessageType::Confirm, xid(x), vec![ia])
    };
    let m = ask(&mut s, NOW, &confirm(10, &[GN_VIP6]));
    assert_eq!((m.msg_type(), m.xid()), (MessageType::Reply, xid(10)));
    check_ids(&s, &m);
    assert_eq!(status_of(m.opts()).expect("status").0, Status::Success);
    assert!(ia_nas_of(&m).is_empty());
    // Another address of the overlay is on-link too (§18.3.3 asks
    // about the link, not the binding).
    let other: Ipv6Addr = "fd7a:6379:7068:1::99".parse().expect("ip");
    let m = ask(&mut s, NOW, &confirm(11, &[GN_VIP6, other]));
    assert_eq!(status_of(m.opts()).expect("status").0, Status::Success);
    let away: Ipv6Addr = "2001:db8::10".parse().expect("ip");
    let m = ask(&mut s, NOW, &confirm(12, &[GN_VIP6, away]));
    assert_eq!(status_of(m.opts()).expect("status").0, Status::NotOnLink);
    // No addresses: no answer.
    assert!(s.handle(NOW, GN, GN_LL, &confirm(13, &[])).is_none());
    assert_eq!(s.counters().nothing_to_confirm, 1);
}

#[test]
fn information_request_gets_dns_only() {
    let mut s = server();
    let info = client_msg(MessageType::InformationRequest, xid(14), vec![]);
    let m = ask(&mut s, NOW, &info);
    assert_eq!((m.msg_type(), m.xid()), (MessageType::Reply, xid(14)));
    check_ids(&s, &m);
    check_dns(&m);
    let codes: Vec<u16> = m
        .opts()
        .iter()
        .map(|o| OptionCode::from(o).into())
        .collect();
    assert_eq!(codes, [1, 2, 23, 24]);
    assert!(s.lease(GN).is_none());
    // Without a client ID too; with an IA, dropped (§16.12).
    let mut bare = v6::Message::new_with_id(MessageType::InformationRequest, xid(15));
    bare.opts_mut().insert(oro());
    let m = ask(&mut s, NOW, &bare.to_vec().expect("enc"));
    assert_eq!(m.opts().get(OptionCode::ClientId), None);
    check_dns(&m);
    let with_ia = client_msg(
        MessageType::InformationRequest,
        xid(16),
        vec![ia_na(1, &[])],
    );
    assert!(s.handle(NOW, GN, GN_LL, &with_ia).is_none());
    assert_eq!(s.counters().unexpected_ia, 1);
}

#[test]
fn the_answer_bytes_are_exact() {
    let mut s = server();
    let r = s.handle(NOW, GN, GN_LL, &solicit(true)).expect("reply");
    #[rustfmt::skip]
    let expected: Vec<u8> = [
        &[7, 0x10, 0x08, 1][..],                          // Reply, xid
        &[0, 1, 0, 14], &duid_llt(GN),                    // Client ID
        &[0, 2, 0, 10, 0, 3, 0, 1], &ADAPTER.0,           // Server ID, DUID-LL
        &[0, 3, 0, 40], &IAID.to_be_bytes(),              // IA_NA
        &1800u32.to_be_bytes(), &2880u32.to_be_bytes(),   //   T1, T2
        &[0, 5, 0, 24], &GN_VIP6.octets(),                //   IA Address
        &3600u32.to_be_bytes(), &7200u32.to_be_bytes(),   //     lifetimes
        &[0, 14, 0, 0],                                   // Rapid Commit
        &[0, 23, 0, 16], &ADAPTER_VIP6.octets(),          // DNS servers
        &[0, 24, 0, 18, 8], b"cyphonic", &[7], b"example", &[0], // search list
    ]
    .concat();
    assert_eq!(r.payload, expected);
}

#[test]
fn other_ias_get_status_codes() {
    let mut s = server();
    let ta = DhcpOption::IATA(IATA {
        id: 2,
        opts: DhcpOptions::new(),
    });
    let pd = DhcpOption::IAPD(IAPD {
        id: 3,
        t1: 0,
        t2: 0,
        opts: DhcpOptions::new(),
    });
    let msg = client_msg(
        MessageType::Solicit,
        xid(20),
        vec![ia_na(9, &[]), ia_na(IAID + 1, &[]), ta.clone(), pd.clone()],
    );
    let m = ask(&mut s, NOW, &msg);
    let ias = ia_nas_of(&m);
    assert_eq!(ias.len(), 2);
    // The lowest IAID holds the VIP, the other gets NoAddrsAvail.
    let low = ias.iter().find(|ia| ia.id == 9).expect("IA 9");
    assert_eq!(addresses(&low.opts).collect::<Vec<_>>(), [GN_VIP6]);
    assert_eq!((low.t1, low.t2), (1800, 2880));
    let high = ias.iter().find(|ia| ia.id == IAID + 1).expect("IA 2");
    assert_eq!(addresses(&high.opts).count(), 0);
    assert_eq!((high.t1, high.t2), (0, 0));
    assert_eq!(
        status_of(&high.opts).expect("status").0,
        Status::NoAddrsAvail
    );
    match only(&m, OptionCode::IATA) {
        DhcpOption::IATA(ia) => {
            assert_eq!(ia.id, 2);
            assert_eq!(status_of(&ia.opts).expect("s").0, Status::NoAddrsAvail);
        }
        o => panic!("{o:?}"),
    }
    match only(&m, OptionCode::IAPD) {
        DhcpOption::IAPD(ia) => {
            assert_eq!(ia.id, 3);
            assert_eq!(status_of(&ia.opts).expect("s").0, Status::NoPrefixAvail);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(m.opts().get(OptionCode::StatusCode), None);

    // Only an IA_PD (a router asking for a prefix): nothing to give.
    let msg = client_msg(MessageType::Solicit, xid(21), vec![pd]);
    let m = ask(&mut s, NOW, &msg);
    assert_eq!(m.msg_type(), MessageType::Advertise);
    assert_eq!(status_of(m.opts()).expect("top").0, Status::NoAddrsAvail);
    // With Rapid Commit as well: an Advertise, nothing bound.
    let msg = client_msg(
        MessageType::Solicit,
        xid(22),
        vec![ta, DhcpOption::RapidCommit],
    );
    let m = ask(&mut s, NOW, &msg);
    assert_eq!(m.msg_type(), MessageType::Advertise);
    assert!(s.lease(GN).is_none());
}

#[test]
fn a_renew_after_restore_succeeds() {
    let mut s = server();
    bound(&mut s);
    let saved = serde_json::to_string(&s.leases().collect::<Vec<_>>()).expect("ser");
    assert!(
        saved.contains("\"duid\":\"000100012c39cf8802005e100010\""),
        "{saved}"
    );
    assert!(saved.contains("\"state\":\"bound\""), "{saved}");

    // A new process: same MAC, same server ID; leases back before or
    // after the GN list arrives.
    let leases: Vec<Lease6> = serde_json::from_str(&saved).expect("de");
    let prefix = "fd7a:6379:7068::/48".parse().expect("prefix");
    let mut t =
        Dhcp6Server::new(Dhcp6Config::new(ADAPTER, ADAPTER_VIP6, DOMAIN, prefix)).expect("config");
    assert_eq!(t.restore(NOW + 100, leases.clone()), 1);
    t.set_general_nodes([(GN, GN_VIP6)]);
    assert_eq!(t.server_duid(), s.server_duid());
    let renew = client_msg(
        MessageType::Renew,
        xid(30),
        vec![server_id(&t), ia_na(IAID, &[GN_VIP6])],
    );
    let m = ask(&mut t, NOW + 1800, &renew);
    check_vip_ia(&ia_nas_of(&m)[0]);
    assert_eq!(t.lease(GN).expect("lease").expires, NOW + 1800 + 7200);

    // Expired leases, and leases of MACs no longer listed, stay out.
    let mut u = server();
    assert_eq!(u.restore(NOW + 7200, leases.clone()), 0);
    u.set_general_nodes([(GN2, GN2_VIP6)]);
    assert_eq!(u.restore(NOW, leases), 0);
}

#[test]
fn leaving_the_gn_list_ends_the_lease_and_the_answers() {
    let mut s = server();
    bound(&mut s);
    let _ = s.poll_leases_changed();
    s.set_general_nodes([(GN2, GN2_VIP6)]);
    assert!(s.lease(GN).is_none());
    assert!(s.poll_leases_changed());
    assert!(s.handle(NOW, GN, GN_LL, &solicit(false)).is_none());
    assert_eq!(s.counters().unknown_mac, 1);
}

#[test]
fn a_changed_vip_is_given_and_the_old_one_zeroed() {
    let mut s = server();
    bound(&mut s);
    let new_vip: Ipv6Addr = "fd7a:6379:7068::99".parse().expect("ip");
    s.set_general_nodes([(GN, new_vip)]);
    let renew = client_msg(
        MessageType::Renew,
        xid(31),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    let m = ask(&mut s, NOW + 1800, &renew);
    let a: Vec<(Ipv6Addr, u32, u32)> = ia_nas_of(&m)[0]
        .opts
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some((a.addr, a.preferred_life, a.valid_life)),
            _ => None,
        })
        .collect();
    assert_eq!(a, [(new_vip, 3600, 7200), (GN_VIP6, 0, 0)]);
    assert_eq!(s.lease(GN).expect("lease").address, new_vip);
}

#[test]
fn a_new_duid_for_a_known_mac_rebinds() {
    let mut s = server();
    bound(&mut s);
    // A reinstalled GN: DUID-UUID this time.
    let mut uuid = vec![0, 4];
    uuid.extend_from_slice(&[0xab; 16]);
    let mut m = v6::Message::new_with_id(MessageType::Solicit, xid(40));
    m.opts_mut().insert(DhcpOption::ClientId(uuid.clone()));
    m.opts_mut().insert(ia_na(1, &[]));
    m.opts_mut().insert(DhcpOption::RapidCommit);
    let r = ask(&mut s, NOW, &m.to_vec().expect("enc"));
    assert_eq!(
        only(&r, OptionCode::ClientId),
        &DhcpOption::ClientId(uuid.clone())
    );
    assert_eq!(
        addresses(&ia_nas_of(&r)[0].opts).collect::<Vec<_>>(),
        [GN_VIP6]
    );
    let l = s.lease(GN).expect("lease");
    assert_eq!((l.duid.as_bytes(), l.iaid), (uuid.as_slice(), 1));
    assert_eq!(s.counters().duid_changes, 1);
    // The old DUID's Renew now finds no binding.
    let renew = client_msg(
        MessageType::Renew,
        xid(41),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    let r = ask(&mut s, NOW, &renew);
    assert_eq!(
        status_of(&ia_nas_of(&r)[0].opts).expect("status").0,
        Status::NoBinding
    );
}

#[test]
fn section_16_rules_on_identifiers_are_enforced() {
    let mut s = server();
    let wrong = DhcpOption::ServerId(Duid::link_layer(GN2).as_bytes().to_vec());
    type Counter = fn(&Dhcp6Counters) -> u64;
    let cases: Vec<(Vec<u8>, Counter)> = vec![
        // Server ID missing or not ours where it must be ours.
        (
            client_msg(MessageType::Request, xid(1), vec![ia_na(1, &[])]),
            |c| c.wrong_server_id,
        ),
        (
            client_msg(MessageType::Renew, xid(1), vec![wrong.clone()]),
            |c| c.wrong_server_id,
        ),
        (
            client_msg(MessageType::Release, xid(1), vec![wrong.clone()]),
            |c| c.wrong_server_id,
        ),
        (client_msg(MessageType::Decline, xid(1), vec![]), |c| {
            c.wrong_server_id
        }),
        (
            client_msg(MessageType::InformationRequest, xid(1), vec![wrong]),
            |c| c.wrong_server_id,
        ),
        // A server ID where there must be none.
        (
            client_msg(
                MessageType::Solicit,
                xid(1),
                vec![server_id(&s), ia_na(1, &[])],
            ),
            |c| c.unexpected_server_id,
        ),
        (
            client_msg(MessageType::Rebind, xid(1), vec![server_id(&s)]),
            |c| c.unexpected_server_id,
        ),
        (
            client_msg(MessageType::Confirm, xid(1), vec![server_id(&s)]),
            |c| c.unexpected_server_id,
        ),
    ];
    for (i, (msg, counter)) in cases.iter().enumerate() {
        let before = counter(&s.counters());
        assert!(s.handle(NOW, GN, GN_LL, msg).is_none(), "case {i}");
        assert_eq!(counter(&s.counters()), before + 1, "case {i}");
    }
    // No client ID.
    let mut m = v6::Message::new_with_id(MessageType::Solicit, xid(2));
    m.opts_mut().insert(ia_na(1, &[]));
    assert!(s
        .handle(NOW, GN, GN_LL, &m.to_vec().expect("enc"))
        .is_none());
    // A client ID too long to be a DUID.
    m.opts_mut().insert(DhcpOption::ClientId(vec![0; 131]));
    assert!(s
        .handle(NOW, GN, GN_LL, &m.to_vec().expect("enc"))
        .is_none());
    assert_eq!(s.counters().bad_client_id, 2);
    // Two client IDs.
    let mut two = solicit(false);
    two.extend_from_slice(&[0, 1, 0, 3, 0, 4, 9]);
    assert!(s.handle(NOW, GN, GN_LL, &two).is_none());
    assert_eq!(s.counters().malformed, 1);
    assert!(s.leases().next().is_none());
    assert_eq!(s.counters().replies + s.counters().advertises, 0);
}

#[test]
fn server_messages_and_relays_from_the_lan_are_ignored() {
    let mut s = server();
    for ty in [
        MessageType::Advertise,
        MessageType::Reply,
        MessageType::Reconfigure,
    ] {
        let msg = client_msg(ty, xid(1), vec![server_id(&s), ia_na(IAID, &[GN_VIP6])]);
        assert!(s.handle(NOW, GN, GN_LL, &msg).is_none());
    }
    assert!(s.handle(NOW, GN, GN_LL, &[13, 0]).is_none());
    assert_eq!(s.counters().server_messages, 4);
    for ty in [12u8, 14, 20, 200] {
        assert!(s.handle(NOW, GN, GN_LL, &[ty, 0, 0, 0]).is_none());
    }
    assert_eq!(s.counters().unsupported, 4);
}

#[test]
fn bad_sources_and_unknown_macs_get_nothing() {
    let mut s = server();
    let msg = solicit(true);
    assert!(s
        .handle(NOW, MacAddr([0x03, 0, 0, 0, 0, 1]), GN_LL, &msg)
        .is_none());
    assert!(s.handle(NOW, GN, Ipv6Addr::UNSPECIFIED, &msg).is_none());
    assert!(s
        .handle(NOW, GN, "ff02::1".parse().expect("ip"), &msg)
        .is_none());
    assert_eq!(s.counters().bad_source, 3);
    assert!(s
        .handle(NOW, MacAddr([0x02, 9, 9, 9, 9, 9]), GN_LL, &msg)
        .is_none());
    assert_eq!(s.counters().unknown_mac, 1);
    assert!(s.leases().next().is_none());
}

/// xorshift64*, for the tests' random inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn a_burst_of_solicits_from_random_macs_changes_nothing_for_known_gns() {
    let mut s = server();
    bound(&mut s);
    let before: Vec<Lease6> = s.leases().cloned().collect();
    let _ = s.poll_leases_changed();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..5000 {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&rng.bytes(6));
        mac[0] = (mac[0] & 0xfc) | 0x02;
        let mut duid = vec![0, 1, 0, 1];
        duid.extend(rng.bytes(10));
        let mut m = v6::Message::new_with_id(MessageType::Solicit, [1, 2, (i % 256) as u8]);
        m.opts_mut().insert(DhcpOption::ClientId(duid.clone()));
        m.opts_mut().insert(ia_na(rng.next() as u32, &[GN_VIP6]));
        if i % 2 == 0 {
            m.opts_mut().insert(DhcpOption::RapidCommit);
        }
        let bytes = m.to_vec().expect("enc");
        assert!(s.handle(NOW, MacAddr(mac), GN_LL, &bytes).is_none());
        // Requests and Rebinds naming a GN's VIP, too.
        let mut r = v6::Message::new_with_id(MessageType::Request, [3, 4, 5]);
        r.opts_mut().insert(DhcpOption::ClientId(duid));
        r.opts_mut().insert(server_id(&s));
        r.opts_mut().insert(ia_na(IAID, &[GN_VIP6]));
        assert!(s
            .handle(NOW, MacAddr(mac), GN_LL, &r.to_vec().expect("enc"))
            .is_none());
    }
    assert_eq!(s.counters().unknown_mac, 10_000);
    assert_eq!(s.leases().cloned().collect::<Vec<_>>(), before);
    assert!(!s.poll_leases_changed());
    // The known GN still renews.
    let renew = client_msg(
        MessageType::Renew,
        xid(50),
        vec![server_id(&s), ia_na(IAID, &[GN_VIP6])],
    );
    check_vip_ia(&ia_nas_of(&ask(&mut s, NOW + 1, &renew))[0]);
}

#[test]
fn every_truncation_of_real_messages_is_handled() {
    let s0 = server();
    let messages = [
        solicit(false),
        solicit(true),
        request(&s0),
        client_msg(
            MessageType::Renew,
            xid(3),
            vec![
                server_id(&s0),
                ia_na(IAID, &[GN_VIP6, "2001:db8::1".parse().expect("ip")]),
            ],
        ),
    ];
    for msg in &messages {
        let mut s = server();
        for n in 0..msg.len() {
            // Cut at an option boundary the rest is a valid, shorter
            // message; anywhere else it is malformed. Neither panics.
            let _ = s.handle(NOW, GN, GN_LL, &msg[..n]);
        }
        assert!(s.counters().malformed > 0);
        assert!(s.handle(NOW, GN, GN_LL, msg).is_some());
    }
}

#[test]
fn every_single_byte_change_of_a_request_is_handled() {
    let mut s = server();
    let msg = request(&s);
    for i in 0..msg.len() {
        for v in [0u8, 1, 2, 3, 5, 13, 0x7f, 0x80, 0xff] {
            let mut m = msg.clone();
            m[i] = v;
            let _ = s.handle(NOW, GN, GN_LL, &m);
        }
    }
}

#[test]
fn random_bytes_and_random_options_never_panic() {
    let mut s = server();
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let n = (rng.next() % 300) as usize;
        let mut b = rng.bytes(n);
        if let Some(t) = b.first_mut() {
            *t = 1 + (*t % 11);
        }
        let _ = s.handle(NOW, GN, GN_LL, &b);
    }
    // Well-framed messages of random options, nested a little: the
    // codes whose decoding does arithmetic on lengths, at lengths
    // around their minimums.
    let codes = [
        1u16, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 19, 20, 23, 24, 25, 26, 56, 99,
    ];
    fn option(rng: &mut Rng, codes: &[u16], depth: u32) -> Vec<u8> {
        let code = codes[(rng.next() % codes.len() as u64) as usize];
        let n = (rng.next() % 30) as usize;
        let mut data = rng.bytes(n);
        if depth < 3 && rng.next() % 3 < 1 {
            data.truncate((rng.next() % 26) as usize);
            for _ in 0..(rng.next() % 3) {
                data.extend(option(rng, codes, depth + 1));
            }
        }
        let mut o = code.to_be_bytes().to_vec();
        o.extend((data.len() as u16).to_be_bytes());
        o.extend(data);
        o
    }
    for _ in 0..20_000 {
        let mut b = vec![1 + (rng.next() % 11) as u8, 1, 2, 3];
        b.extend(DhcpOption::ClientId(duid_llt(GN)).to_vec().expect("enc"));
        for _ in 0..(rng.next() % 5) {
            b.extend(option(&mut rng, &codes, 0));
        }
        let _ = s.handle(NOW, GN, GN_LL, &b);
    }
    let c = s.counters();
    assert!(c.malformed > 0 && c.replies + c.advertises > 0, "{c:?}");
}

#[test]
fn the_framing_check_refuses_what_would_trip_the_decoder() {
    let head = [1u8, 0, 0, 1];
    let cases: &[(&[u8], Malformed)] = &[
        (&[0, 13, 0, 0], Malformed::BadLength { code: 13, len: 0 }),
        (&[0, 13, 0, 3, 0, 0, 0xff], Malformed::StatusText),
        (
            &[0, 11, 0, 2, 0, 0],
            Malformed::BadLength { code: 11, len: 2 },
        ),
        (&[0, 16, 0, 1, 0], Malformed::BadLength { code: 16, len: 1 }),
        (&[0, 17, 0, 0], Malformed::BadLength { code: 17, len: 0 }),
        (&[0, 7, 0, 0], Malformed::BadLength { code: 7, len: 0 }),
        (&[0, 14, 0, 1, 0], Malformed::BadLength { code: 14, len: 1 }),
        (
            &[0, 23, 0, 4, 0, 0, 0, 0],
            Malformed::BadLength { code: 23, len: 4 },
        ),
        (&[0, 9, 0, 0], Malformed::Misplaced { code: 9 }),
        (&[0, 5, 0, 0], Malformed::Misplaced { code: 5 }),
        (
            &[0, 3, 0, 2, 0, 0],
            Malformed::BadLength { code: 3, len: 2 },
        ),
        (&[0, 1, 0, 9], Malformed::Truncated { code: 1 }),
        (&[0, 1, 0], Malformed::Truncated { code: 1 }),
        (&[0], Malformed::Truncated { code: 0 }),
    ];
    for (opts, want) in cases {
        let msg = [&head[..], opts].concat();
        assert_eq!(parse(&msg).err(), Some(*want), "{opts:?}");
    }
    // An IA_NA inside an IA_NA: refused before the decoder recurses.
    let mut inner = vec![0, 3, 0, 12];
    inner.extend([0; 12]);
    let mut outer = vec![0, 3, 0, 28];
    outer.extend([0; 12]);
    outer.extend(inner);
    assert_eq!(
        parse(&[&head[..], &outer].concat()).err(),
        Some(Malformed::Misplaced { code: 3 })
    );
    assert_eq!(parse(&[1, 0, 0]).err(), Some(Malformed::TooShort));
}

#[test]
fn configuration_is_checked() {
    let prefix: Ipv6Prefix = "fd7a:6379:7068::/48".parse().expect("prefix");
    let ok = Dhcp6Config::new(ADAPTER, ADAPTER_VIP6, DOMAIN, prefix);
    assert!(Dhcp6Server::new(ok.clone()).is_ok());
    let mut c = ok.clone();
    c.t1 = 3000;
    c.t2 = 2000;
    assert!(matches!(
        Dhcp6Server::new(c),
        Err(Dhcp6ConfigError::Lifetimes { .. })
    ));
    let mut c = ok.clone();
    c.preferred_lifetime = c.valid_lifetime + 1;
    assert!(matches!(
        Dhcp6Server::new(c),
        Err(Dhcp6ConfigError::Lifetimes { .. })
    ));
    for bad in ["", "a..b", "-.", "a b", &"x".repeat(64)] {
        let mut c = ok.clone();
        c.domain_search = vec![bad.to_owned()];
        assert!(
            matches!(Dhcp6Server::new(c), Err(Dhcp6ConfigError::Domain(_))),
            "{bad:?}"
        );
    }
    let mut c = ok.clone();
    c.dns_servers = vec!["ff02::1".parse().expect("ip")];
    assert!(matches!(
        Dhcp6Server::new(c),
        Err(Dhcp6ConfigError::DnsServer(_))
    ));
    let mut c = ok.clone();
    c.server_mac = MacAddr::BROADCAST;
    assert!(matches!(
        Dhcp6Server::new(c),
        Err(Dhcp6ConfigError::MulticastMac(_))
    ));
    // Two domains, a trailing dot, upper case: labels, uncompressed.
    assert_eq!(
        encode_domains(&["GN.Cyphonic.Example.".into(), "cyphonic.example".into()]).expect("ok"),
        [
            &[2][..],
            b"gn",
            &[8],
            b"cyphonic",
            &[7],
            b"example",
            &[0],
            &[8],
            b"cyphonic",
            &[7],
            b"example",
            &[0],
        ]
        .concat()
    );
}

#[test]
fn duids_print_parse_and_refuse_junk() {
    let d: Duid = "000100012c39cf8802005e100010".parse().expect("duid");
    assert_eq!(d.kind(), 1);
    assert_eq!(d.as_bytes(), duid_llt(GN).as_slice());
    for bad in ["", "0001", "0g0102", "000", &"00".repeat(131)] {
        assert!(bad.parse::<Duid>().is_err(), "{bad}");
    }
}
