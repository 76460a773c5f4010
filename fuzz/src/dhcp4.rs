//! The adapter's DHCPv4 server (`cyphonic_adapter::dhcp4`): the UDP
//! payload of every frame the classifier sends to port 67 goes to
//! [`Server::handle`].
//!
//! The input is handled twice, as the server sees it from a general node:
//! from the MAC in its `chaddr` (so `chaddr` matches and the message is
//! decoded) and from GN A's MAC; then once more a lease time later, and the
//! leases are expired. Checks: every reply decodes (dhcproto), is a
//! BOOTREPLY for the request's `xid` and the GN's `chaddr`, names the
//! adapter as server, is between 300 and 548 bytes (the size every client
//! takes; only an echoed client identifier may add to that, and a reply
//! always fits a frame), offers or acknowledges only the GN's own VIPv4 and is
//! addressed as RFC 2131 §4.1 says (to the GN's MAC or broadcast);
//! leases are only the GNs' VIPv4s.

use std::net::Ipv4Addr;

use cyphonic_adapter::dhcp4::{Config, Outcome, ReplyKind, Server, DEFAULT_LEASE_SECS};
use cyphonic_adapter::MacAddr;
use dhcproto::v4::{DhcpOption, Message, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};

use crate::fixed;

/// Smallest and largest reply (RFC 951's 300-byte BOOTP message; 236 +
/// the 312-byte options field every client must accept, RFC 2131 §2).
const MIN_REPLY: usize = 300;
const MAX_REPLY: usize = 548;
/// UDP payload of a 1500-byte IPv4 packet.
const MAX_UDP_IN_FRAME: usize = 1500 - 20 - 8;

pub fn server() -> Server {
    let mut s = Server::new(Config::new(fixed::GW4, 10, fixed::DOMAIN)).expect("config");
    let rejected = s.set_general_nodes([
        (fixed::GN_A, fixed::A4, "printer"),
        (fixed::GN_B, fixed::B4, "plc"),
    ]);
    assert!(rejected.is_empty());
    s
}

fn vip_of(mac: MacAddr) -> Option<Ipv4Addr> {
    match mac {
        fixed::GN_A => Some(fixed::A4),
        fixed::GN_B => Some(fixed::B4),
        _ => None,
    }
}

pub fn check(data: &[u8]) {
    let mut server = server();
    let chaddr = data
        .get(28..34)
        .map(|m| MacAddr(m.try_into().expect("6 bytes")));
    for mac in chaddr.into_iter().chain([fixed::GN_A]) {
        let outcome = server.handle(fixed::NOW, mac, data);
        check_outcome(data, mac, &outcome);
    }
    let later = fixed::NOW + u64::from(DEFAULT_LEASE_SECS) / 2;
    if let Some(mac) = chaddr {
        let outcome = server.handle(later, mac, data);
        check_outcome(data, mac, &outcome);
    }
    for lease in server.leases() {
        assert_eq!(Some(lease.vip4), vip_of(lease.mac));
        assert!(lease.expires_unix > fixed::NOW);
    }
    while server.poll_event().is_some() {}
    server.handle_timeout(later + u64::from(DEFAULT_LEASE_SECS) + 1);
    assert!(server.leases().is_empty(), "leases outlived their time");
    assert!(server.poll_timeout().is_none());
}

fn check_outcome(request: &[u8], mac: MacAddr, outcome: &Outcome) {
    let Some(reply) = outcome.reply() else {
        return;
    };
    let vip = vip_of(mac).expect("only general nodes get a reply");
    let m = Message::decode(&mut Decoder::new(&reply.payload)).expect("our reply decodes");
    // Only the client identifier, echoed (RFC 6842), may take a reply past
    // 548 bytes, and never past one Ethernet frame.
    let echoed = match m.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => 2 + id.len(),
        _ => 0,
    };
    let len = reply.payload.len();
    assert!(
        (MIN_REPLY..=MAX_REPLY + echoed).contains(&len) && len <= MAX_UDP_IN_FRAME,
        "a {len}-byte reply to a {}-byte request",
        request.len()
    );
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.xid().to_be_bytes(), request[4..8]);
    assert_eq!(m.chaddr(), &mac.0);
    assert_eq!(
        m.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(fixed::GW4))
    );
    assert_eq!(reply.src_ip, fixed::GW4);
    match reply.kind {
        ReplyKind::Offer | ReplyKind::Ack => assert_eq!(m.yiaddr(), vip),
        ReplyKind::InformAck | ReplyKind::Nak => assert!(m.yiaddr().is_unspecified()),
    }
    // RFC 2131 §4.1 (giaddr is always 0 here): a NAK is broadcast; else
    // unicast to a non-zero ciaddr (whatever the client put there: the
    // frame still goes to its own MAC only), else broadcast if the client
    // asks, else unicast to yiaddr.
    let ciaddr = Ipv4Addr::new(request[12], request[13], request[14], request[15]);
    let broadcast_flag = request[10] & 0x80 != 0;
    let (dst_ip, dst_mac) = match reply.kind {
        ReplyKind::Nak => (Ipv4Addr::BROADCAST, MacAddr::BROADCAST),
        _ if !ciaddr.is_unspecified() => (ciaddr, mac),
        _ if broadcast_flag || m.yiaddr().is_unspecified() => {
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        }
        _ => (m.yiaddr(), mac),
    };
    assert_eq!((reply.dst_ip, reply.dst_mac), (dst_ip, dst_mac));
    assert_eq!(reply.broadcast, dst_mac == MacAddr::BROADCAST);
}
