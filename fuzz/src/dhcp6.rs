//! The adapter's DHCPv6 server (`cyphonic_adapter::dhcp6`): the UDP
//! payload of every frame the classifier sends to port 547 goes to
//! [`Dhcp6Server::handle`], which walks the options itself before handing
//! them to dhcproto.
//!
//! The server holds a binding for GN A (the DUID and IAID the seeds use),
//! so Renew, Rebind, Release and Decline find one. The input is handled
//! from GN A's link-local address, then again later. Checks: every reply
//! decodes (dhcproto), answers the request's transaction ID as an
//! Advertise or Reply, carries the server's DUID and echoes the client's;
//! the only address given with lifetimes is the GN's own VIPv6; the
//! bindings hold only the GNs' VIPv6s.

use std::net::Ipv6Addr;

use cyphonic_adapter::dhcp6::{Dhcp6Config, Dhcp6Server, Duid, Lease6, LeaseState, CLIENT_PORT};
use cyphonic_adapter::MacAddr;
use dhcproto::v6::{self, DhcpOption, DhcpOptions, MessageType, OptionCode};
use dhcproto::Decodable;

use crate::fixed;

/// The IAID GN A's seeds use, and the binding the server starts with.
pub const IAID: u32 = 0x0a01;

/// The DUID-LLT `dhclient -6` makes for a MAC.
pub fn duid_llt(mac: MacAddr) -> Vec<u8> {
    let mut d = vec![0, 1, 0, 1, 0x2c, 0x39, 0xcf, 0x88];
    d.extend_from_slice(&mac.0);
    d
}

pub fn server() -> Dhcp6Server {
    let prefix = fixed::OVERLAY6.parse().expect("prefix");
    let mut s = Dhcp6Server::new(Dhcp6Config::new(
        fixed::ADAPTER_MAC,
        fixed::GW6,
        fixed::DOMAIN,
        prefix,
    ))
    .expect("config");
    s.set_general_nodes([(fixed::GN_A, fixed::A6), (fixed::GN_B, fixed::B6)]);
    let lease = Lease6 {
        mac: fixed::GN_A,
        duid: Duid::from_bytes(&duid_llt(fixed::GN_A)).expect("duid"),
        iaid: IAID,
        address: fixed::A6,
        expires: fixed::NOW + 3600,
        state: LeaseState::Bound,
    };
    assert_eq!(s.restore(fixed::NOW, [lease]), 1);
    s
}

pub fn check(data: &[u8]) {
    let mut server = server();
    for now in [fixed::NOW, fixed::NOW + 1800, fixed::NOW + 7200] {
        if let Some(reply) = server.handle(now, fixed::GN_A, fixed::A_LL, data) {
            assert_eq!(reply.dst_mac, fixed::GN_A);
            assert_eq!(reply.dst_ip, fixed::A_LL);
            assert_eq!(reply.dst_port, CLIENT_PORT);
            check_reply(&server, data, &reply.payload);
        }
    }
    // From a MAC that is not a general node, nothing.
    let stranger = MacAddr([0x02, 0, 0, 0, 0xee, 0x01]);
    assert!(server
        .handle(fixed::NOW, stranger, fixed::A_LL, data)
        .is_none());
    for lease in server.leases() {
        assert_eq!(lease.mac, fixed::GN_A);
        assert_eq!(lease.address, fixed::A6);
    }
}

fn check_reply(server: &Dhcp6Server, request: &[u8], reply: &[u8]) {
    let m = v6::Message::from_bytes(reply).expect("our reply decodes");
    assert!(matches!(
        m.msg_type(),
        MessageType::Advertise | MessageType::Reply
    ));
    assert_eq!(m.xid()[..], request[1..4]);
    assert_eq!(
        m.opts().get(OptionCode::ServerId),
        Some(&DhcpOption::ServerId(
            server.server_duid().as_bytes().to_vec()
        ))
    );
    let asked = v6::Message::from_bytes(request).expect("an answered request decodes");
    match asked.opts().get(OptionCode::ClientId) {
        Some(id) => assert_eq!(m.opts().get(OptionCode::ClientId), Some(id)),
        None => assert!(m.opts().get(OptionCode::ClientId).is_none()),
    }
    for (addr, valid) in addresses(m.opts()) {
        if valid != 0 {
            assert_eq!(addr, fixed::A6, "gave {addr} for {valid} s");
        }
    }
}

/// Every IA Address in the IAs of `opts`, with its valid lifetime.
fn addresses(opts: &DhcpOptions) -> Vec<(Ipv6Addr, u32)> {
    let mut out = Vec::new();
    for o in opts.iter() {
        let inner = match o {
            DhcpOption::IANA(ia) => &ia.opts,
            DhcpOption::IATA(ia) => &ia.opts,
            _ => continue,
        };
        for a in inner.iter() {
            if let DhcpOption::IAAddr(a) = a {
                out.push((a.addr, a.valid_life));
            }
        }
    }
    out
}
