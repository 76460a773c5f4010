//! The adapter's DHCPv4 server (RFC 2131, options of RFC 2132).
//!
//! It gives each general node (GN) on the LAN its VIPv4 and points it at the
//! adapter: router, DNS server and server identifier are all the adapter's
//! own VIPv4, the subnet mask is the overlay prefix's
//! (`docs/adapter.md`, "Addresses the GNs see"). A GN's address is its VIPv4
//! from the cloud's general-node list and nothing else: there is no pool, so
//! an OFFER or ACK never depends on what other clients did, and a MAC that is
//! not on the list gets nothing at all (no OFFER, no NAK), only a counter.
//!
//! [`Server`] is sans-IO: [`Server::handle`] takes the UDP payload of a
//! frame the classifier found for port 67, the frame's Ethernet source and
//! the time, and returns the reply's UDP payload with how to address it
//! (RFC 2131 §4.1). The shell builds the Ethernet/IPv4/UDP frame around it.
//!
//! LAN hygiene (`docs/adapter.md`, "LAN hygiene"), cheapest check first:
//! the message must be well formed, a BOOTREQUEST (a BOOTREPLY on the LAN is
//! a rogue server or relay), Ethernet with `hlen` 6, its `chaddr` must be the
//! frame's source MAC, it must not come through a relay (`giaddr` = 0: the
//! GNs are on the adapter's own link), and the MAC must be a known GN. Only
//! then is the message decoded. Per-MAC state is bounded: leases exist only
//! for known GNs, and the memory of unknown MACs (for the operator) holds at
//! most [`MAX_UNKNOWN_MACS`], so a burst of DISCOVERs from random MACs
//! changes nothing for the GNs.
//!
//! Leases are bookkeeping for the shell (which GNs hold their VIPv4, kept in
//! the state directory across a restart): since the address is fixed, the
//! answer to a REQUEST depends only on whether it names the GN's VIPv4.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// The port the server listens on (RFC 2131 §4.1).
pub const SERVER_PORT: u16 = 67;
/// The port replies go to (RFC 2131 §4.1).
pub const CLIENT_PORT: u16 = 68;
/// Lease time when the configuration does not say: one hour.
pub const DEFAULT_LEASE_SECS: u32 = 3600;
/// Shortest lease the configuration accepts; T1 and T2 are fractions of it.
pub const MIN_LEASE_SECS: u32 = 60;
/// How many unknown MACs [`Server::unknown_macs`] remembers; the oldest is
/// forgotten first. This is the only per-MAC state a client that is not a
/// GN can create.
pub const MAX_UNKNOWN_MACS: usize = 64;
/// How many events wait for [`Server::poll_event`]; beyond that the oldest is
/// dropped and counted in [`Counters::events_dropped`].
pub const MAX_EVENTS: usize = 256;

/// Largest reply sent: every client must accept an options field of 312
/// octets (RFC 2131 §2), so 236 + 312 bytes. The host name (option 12) is
/// left out of a reply that would be larger; only the client identifier,
/// echoed as RFC 6842 requires, can still add its (at most 257) bytes, so
/// a reply always fits one Ethernet frame.
const MAX_REPLY_LEN: usize = 548;
/// Replies are padded to the 300 bytes of a BOOTP message (RFC 951, 64-octet
/// vendor area): some old clients drop shorter ones.
const MIN_REPLY_LEN: usize = 300;
/// At most one INFO log about unknown MACs per this many seconds; the rest
/// are TRACE, so a flood does not flood the log.
const UNKNOWN_LOG_INTERVAL_SECS: u64 = 60;

// Offsets in the fixed BOOTP header (RFC 2131 §2, figure 1).
const OP: usize = 0;
const HTYPE: usize = 1;
const HLEN: usize = 2;
const GIADDR: usize = 24;
const CHADDR: usize = 28;
const MAGIC: usize = 236;
/// The options start after the fixed header and the magic cookie.
const OPTIONS: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const HTYPE_ETHERNET: u8 = 1;
const OPT_PAD: u8 = 0;
const OPT_END: u8 = 255;

/// The options the server reads from a client: message type, requested IP
/// address, server identifier, parameter request list, client identifier.
/// Only these are handed to dhcproto (see [`decode`]).
const READ_OPTIONS: [u8; 5] = [53, 50, 54, 55, 61];

/// What the server tells the GNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The adapter's own VIPv4: server identifier (option 54), router (3)
    /// and DNS server (6).
    pub server: Ipv4Addr,
    /// Length of the overlay prefix the VIPs come from (10 for
    /// 100.64.0.0/10): the subnet mask (option 1), so peer VIPs are on-link.
    pub prefix_len: u8,
    /// Lease time (option 51); T1 (58) is half of it, T2 (59) seven eighths
    /// (RFC 2131 §4.4.5).
    pub lease_secs: u32,
    /// Domain name (option 15), e.g. `cyphonic.internal`; empty: not sent.
    pub domain_name: String,
    /// Interface MTU (option 26), when the GNs should keep their packets
    /// small enough for the tunnel; `None`: not sent.
    pub interface_mtu: Option<u16>,
}

impl Config {
    /// The adapter's VIPv4, the overlay prefix length and the domain name,
    /// with a [`DEFAULT_LEASE_SECS`] lease and no MTU option.
    pub fn new(server: Ipv4Addr, prefix_len: u8, domain_name: impl Into<String>) -> Self {
        Self {
            server,
            prefix_len,
            lease_secs: DEFAULT_LEASE_SECS,
            domain_name: domain_name.into(),
            interface_mtu: None,
        }
    }

    /// The subnet mask of the overlay prefix (`/10` → 255.192.0.0).
    pub fn subnet_mask(&self) -> Ipv4Addr {
        prefix_mask(self.prefix_len)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=30).contains(&self.prefix_len) {
            return Err(ConfigError::BadPrefixLen(self.prefix_len));
        }
        let s = self.server;
        let host_bits = u32::from(s) & !u32::from(self.subnet_mask());
        if s.is_unspecified()
            || s.is_broadcast()
            || s.is_multicast()
            || s.is_loopback()
            || host_bits == 0
            || host_bits == !u32::from(self.subnet_mask())
        {
            return Err(ConfigError::BadServerAddress(s));
        }
        if !(MIN_LEASE_SECS..u32::MAX).contains(&self.lease_secs) {
            return Err(ConfigError::BadLeaseTime(self.lease_secs));
        }
        if !is_domain_name(&self.domain_name) {
            return Err(ConfigError::BadDomainName(self.domain_name.clone()));
        }
        if let Some(mtu) = self.interface_mtu {
            if mtu < 68 {
                return Err(ConfigError::BadMtu(mtu));
            }
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} cannot be the server's address (a host address of the overlay prefix)")]
    BadServerAddress(Ipv4Addr),
    #[error("prefix length {0} is not in 1..=30")]
    BadPrefixLen(u8),
    #[error("lease time {0} s is not in {MIN_LEASE_SECS}..{max} s", max = u32::MAX)]
    BadLeaseTime(u32),
    #[error("{0:?} is not a domain name (letters, digits, '-', dots; at most 253 bytes)")]
    BadDomainName(String),
    #[error("interface MTU {0} is below the minimum of 68 (RFC 2132 §5.1)")]
    BadMtu(u16),
}

/// A general node the list named but the server will not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("general node {mac} ({vip4}): {why}")]
pub struct Rejected {
    pub mac: MacAddr,
    pub vip4: Ipv4Addr,
    pub why: GeneralNodeError,
}

/// Why a general node was left out of [`Server::set_general_nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GeneralNodeError {
    #[error("not a unicast MAC")]
    NotUnicast,
    #[error("VIPv4 outside the overlay prefix")]
    OutsideSubnet,
    #[error("VIPv4 is the adapter's own")]
    ServerAddress,
    #[error("VIPv4 is the prefix's network or broadcast address")]
    NotHostAddress,
    #[error("MAC listed twice (the first entry is kept)")]
    DuplicateMac,
    #[error("VIPv4 listed for two MACs (the first entry is kept)")]
    DuplicateVip,
}

/// A GN holding its VIPv4 until `expires_unix` (seconds since the Unix
/// epoch; the lease is over when `now >= expires_unix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub vip4: Ipv4Addr,
    pub expires_unix: u64,
}

/// What [`Server::handle`] did with one message.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send this reply.
    Reply(Reply),
    /// Nothing to send, and why (each reason has a counter).
    NoReply(NoReply),
}

impl Outcome {
    /// The reply to send, if any.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Reply(r) => Some(r),
            Outcome::NoReply(_) => None,
        }
    }

    /// The reply to send, if any.
    pub fn into_reply(self) -> Option<Reply> {
        match self {
            Outcome::Reply(r) => Some(r),
            Outcome::NoReply(_) => None,
        }
    }
}

/// A reply and how to address it (RFC 2131 §4.1). The shell sends `payload`
/// in UDP from `src_ip`:[`SERVER_PORT`] to `dst_ip`:[`CLIENT_PORT`], in an
/// Ethernet frame to `dst_mac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    /// The DHCP message: the UDP payload.
    pub payload: Vec<u8>,
    /// The server identifier, the adapter's VIPv4.
    pub src_ip: Ipv4Addr,
    /// 255.255.255.255 when `broadcast`, else the client's address.
    pub dst_ip: Ipv4Addr,
    /// ff:ff:ff:ff:ff:ff when `broadcast`, else the client's `chaddr`.
    pub dst_mac: MacAddr,
    pub broadcast: bool,
}

/// Which message a [`Reply`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// DHCPOFFER of the GN's VIPv4, to a DISCOVER.
    Offer,
    /// DHCPACK of a lease, to a REQUEST.
    Ack,
    /// DHCPACK with configuration only, no address or lease, to an INFORM.
    InformAck,
    /// DHCPNAK, to a REQUEST for an address that is not the GN's VIPv4.
    Nak,
}

/// Why nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReply {
    /// Not a well-formed DHCPv4 message.
    Malformed(Malformed),
    /// Not a client's message: `op` is not BOOTREQUEST (a server or relay
    /// talking on the LAN), or the message type is a server's.
    NotRequest,
    /// Hardware type not Ethernet, or `hlen` not 6.
    NotEthernet,
    /// `chaddr` is not the frame's source MAC.
    ChaddrMismatch,
    /// `giaddr` is set: it came through a relay, but the GNs are on the
    /// adapter's own link.
    Relayed,
    /// The MAC is not one of this adapter's general nodes.
    UnknownMac,
    /// No DHCP message type (option 53): plain BOOTP, not served.
    NotDhcp,
    /// A client message type the server does not answer (e.g. LEASEQUERY),
    /// by its code.
    Unsupported(u8),
    /// A REQUEST, RELEASE or DECLINE for another server (option 54): the
    /// client chose that server, so this one stays silent (RFC 2131 §4.3.2).
    OtherServer,
    /// A RELEASE or DECLINE of an address that is not the GN's VIPv4.
    NotItsAddress,
    /// RELEASE: the lease ended (RFC 2131 §4.3.4); nothing is sent back.
    Released,
    /// DECLINE: the GN found its VIPv4 in use by another host on the LAN
    /// (RFC 2131 §4.3.3); the lease ended.
    Declined,
}

/// How a message failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("{len} bytes, shorter than the BOOTP header and magic cookie (240)")]
    TooShort { len: usize },
    #[error("no DHCP magic cookie")]
    BadMagicCookie,
    #[error("option {code} runs past the end of the message")]
    OptionOverrun { code: u8 },
    #[error("option {code} has length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("the message could not be decoded")]
    Undecodable,
    /// A REQUEST with neither `requested IP address` nor `ciaddr`, a
    /// DECLINE without `requested IP address`, a RELEASE without `ciaddr`.
    #[error("the message does not name the address it is about")]
    MissingAddress,
}

/// Messages by what became of them. Replies count once each; every other
/// message counts under the reason it got no reply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub offers: u64,
    pub acks: u64,
    pub inform_acks: u64,
    pub naks: u64,
    pub released: u64,
    pub declined: u64,
    pub malformed: u64,
    pub not_request: u64,
    pub not_ethernet: u64,
    pub chaddr_mismatch: u64,
    pub relayed: u64,
    pub unknown_mac: u64,
    pub not_dhcp: u64,
    pub unsupported: u64,
    pub other_server: u64,
    pub not_its_address: u64,
    /// Leases that ran out (not messages).
    pub leases_expired: u64,
    /// Events dropped because [`MAX_EVENTS`] were waiting.
    pub events_dropped: u64,
}

/// Something the shell may act on: persist the leases, tell the GN's
/// identity it is up or down, alert the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A GN got (or renewed, `renewal`) its lease with a DHCPACK.
    LeaseGranted { lease: Lease, renewal: bool },
    /// A lease ended.
    LeaseEnded { lease: Lease, why: LeaseEnd },
    /// A GN declined its VIPv4 (RFC 2131 §4.3.3): another host on the LAN
    /// answers for it. The server can only offer the same address again, so
    /// the operator has to find the other host.
    Declined { mac: MacAddr, vip4: Ipv4Addr },
}

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    Released,
    Declined,
    Expired,
    /// The GN left the list, or its VIPv4 changed.
    Removed,
}

/// When to call [`Server::handle_timeout`], and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    pub at_unix: u64,
    pub reason: TimeoutReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutReason {
    /// The earliest lease, this GN's, runs out.
    LeaseExpires { mac: MacAddr },
}

/// A MAC that asked for an address but is not a GN of this adapter, kept so
/// the operator can see which device to add (`cyphonic cloud general-node
/// add`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownMac {
    pub mac: MacAddr,
    pub first_seen_unix: u64,
    pub last_seen_unix: u64,
    pub messages: u64,
}

#[derive(Debug, Clone)]
struct GeneralNode {
    vip4: Ipv4Addr,
    /// Sent as option 12 when the client asks for it.
    hostname: String,
}

/// The DHCPv4 server of one adapter's LAN.
///
/// Inputs, each taking the time in seconds since the Unix epoch:
/// - [`handle`](Self::handle) for each UDP payload to port 67 from the LAN;
///   send the [`Reply`] of its [`Outcome`], if any;
/// - [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)
///   is due (expired leases are also forgotten on the next `handle`).
///
/// Commands:
/// - [`set_general_nodes`](Self::set_general_nodes) with the cloud's list,
///   at start and on every change;
/// - [`restore`](Self::restore) with the leases kept in the state directory,
///   after the first `set_general_nodes` (leases are kept only for GNs on
///   the list).
///
/// Outputs, after each input or command: [`poll_event`](Self::poll_event)
/// until `None` (save [`leases`](Self::leases) on lease events), then
/// [`poll_timeout`](Self::poll_timeout). [`counters`](Self::counters) and
/// [`unknown_macs`](Self::unknown_macs) are for status.
pub struct Server {
    config: Config,
    nodes: BTreeMap<MacAddr, GeneralNode>,
    /// At most one per entry of `nodes`, with that node's VIPv4.
    leases: BTreeMap<MacAddr, Lease>,
    /// The earliest `expires_unix` in `leases`.
    next_expiry: Option<(u64, MacAddr)>,
    /// Oldest first, at most [`MAX_UNKNOWN_MACS`].
    unknown: VecDeque<UnknownMac>,
    last_unknown_log: Option<u64>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Server {
    /// A server with no general nodes yet.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            nodes: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_expiry: None,
            unknown: VecDeque::new(),
            last_unknown_log: None,
            events: VecDeque::new(),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the general nodes this adapter serves: `(MAC, VIPv4, host
    /// name)`, the host name being what option 12 carries (the first label
    /// of the GN's FQDN). Entries that cannot be served are returned and
    /// left out; the first of two entries with the same MAC or VIPv4 wins.
    /// Leases of GNs that left the list or whose VIPv4 changed end
    /// ([`LeaseEnd::Removed`]).
    pub fn set_general_nodes<I, S>(&mut self, nodes: I) -> Vec<Rejected>
    where
        I: IntoIterator<Item = (MacAddr, Ipv4Addr, S)>,
        S: Into<String>,
    {
        let mut table = BTreeMap::new();
        let mut vips = BTreeSet::new();
        let mut rejected = Vec::new();
        for (mac, vip4, hostname) in nodes {
            let why = if mac.is_multicast() || mac.0 == [0; 6] {
                Some(GeneralNodeError::NotUnicast)
            } else if !self.in_subnet(vip4) {
                Some(GeneralNodeError::OutsideSubnet)
            } else if vip4 == self.config.server {
                Some(GeneralNodeError::ServerAddress)
            } else if !self.is_host_address(vip4) {
                Some(GeneralNodeError::NotHostAddress)
            } else if table.contains_key(&mac) {
                Some(GeneralNodeError::DuplicateMac)
            } else if vips.contains(&vip4) {
                Some(GeneralNodeError::DuplicateVip)
            } else {
                None
            };
            if let Some(why) = why {
                let r = Rejected { mac, vip4, why };
                tracing::warn!(%mac, %vip4, %why, "dhcp4: general node left out");
                rejected.push(r);
                continue;
            }
            vips.insert(vip4);
            let hostname = hostname.into();
            table.insert(mac, GeneralNode { vip4, hostname });
        }
        let gone: Vec<Lease> = self
            .leases
            .values()
            .filter(|l| table.get(&l.mac).map(|n: &GeneralNode| n.vip4) != Some(l.vip4))
            .copied()
            .collect();
        for lease in gone {
            self.leases.remove(&lease.mac);
            self.push_event(Event::LeaseEnded {
                lease,
                why: LeaseEnd::Removed,
            });
        }
        self.unknown.retain(|u| !table.contains_key(&u.mac));
        self.nodes = table;
        self.recompute_next_expiry();
        rejected
    }

    /// Adds leases kept from before a restart, for GNs on the current list
    /// with the same VIPv4 (others are ignored); returns how many were
    /// kept. Expired ones go on the next `handle` or `handle_timeout`.
    pub fn restore(&mut self, leases: impl IntoIterator<Item = Lease>) -> usize {
        let mut kept = 0;
        for lease in leases {
            if self.nodes.get(&lease.mac).map(|n| n.vip4) == Some(lease.vip4) {
                self.leases.insert(lease.mac, lease);
                kept += 1;
            }
        }
        self.recompute_next_expiry();
        kept
    }

    /// One UDP payload sent to port 67, from a frame with Ethernet source
    /// `src_mac`, at `now` (seconds since the Unix epoch).
    pub fn handle(&mut self, now: u64, src_mac: MacAddr, payload: &[u8]) -> Outcome {
        self.expire(now);
        let outcome = match self.answer(now, src_mac, payload) {
            Ok(reply) => Outcome::Reply(reply),
            Err(why) => Outcome::NoReply(why),
        };
        self.count(&outcome);
        match &outcome {
            Outcome::Reply(r) => {
                tracing::trace!(mac = %src_mac, kind = ?r.kind, dst = %r.dst_ip, "dhcp4: reply")
            }
            Outcome::NoReply(why) => tracing::trace!(mac = %src_mac, ?why, "dhcp4: no reply"),
        }
        outcome
    }

    /// Forgets the leases that ran out by `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        self.expire(now);
    }

    /// When the next lease runs out.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timeout> {
        self.next_expiry.map(|(at_unix, mac)| Timeout {
            at_unix,
            reason: TimeoutReason::LeaseExpires { mac },
        })
    }

    /// The next event, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The lease table, by MAC: what the shell keeps across a restart
    /// (serde-serializable as it is) and gives back to [`restore`](Self::restore).
    pub fn leases(&self) -> Vec<Lease> {
        self.leases.values().copied().collect()
    }

    /// This GN's lease, if it holds one.
    pub fn lease(&self, mac: MacAddr) -> Option<&Lease> {
        self.leases.get(&mac)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The last [`MAX_UNKNOWN_MACS`] MACs that asked but are not GNs, least
    /// recently seen first.
    pub fn unknown_macs(&self) -> impl Iterator<Item = &UnknownMac> {
        self.unknown.iter()
    }

    fn answer(&mut self, now: u64, src_mac: MacAddr, payload: &[u8]) -> Result<Reply, NoReply> {
        // The cheap checks on the raw header come first: nothing is decoded
        // or allocated for a message that will be dropped.
        check_framing(payload).map_err(NoReply::Malformed)?;
        if payload[OP] != BOOTREQUEST {
            return Err(NoReply::NotRequest);
        }
        if payload[HTYPE] != HTYPE_ETHERNET || payload[HLEN] != 6 {
            return Err(NoReply::NotEthernet);
        }
        if payload[CHADDR..CHADDR + 6] != src_mac.0 {
            return Err(NoReply::ChaddrMismatch);
        }
        if payload[GIADDR..GIADDR + 4] != [0; 4] {
            return Err(NoReply::Relayed);
        }
        let Some(vip4) = self.nodes.get(&src_mac).map(|n| n.vip4) else {
            self.remember_unknown(now, src_mac);
            return Err(NoReply::UnknownMac);
        };
        let msg = decode(payload).map_err(NoReply::Malformed)?;
        let Some(kind) = msg.opts().msg_type() else {
            return Err(NoReply::NotDhcp);
        };
        match kind {
            MessageType::Discover => Ok(self.reply(&msg, src_mac, vip4, ReplyKind::Offer)),
            MessageType::Request => self.request(now, &msg, src_mac, vip4),
            MessageType::Decline => self.decline(&msg, src_mac, vip4),
            MessageType::Release => self.release(&msg, src_mac, vip4),
            MessageType::Inform => Ok(self.reply(&msg, src_mac, vip4, ReplyKind::InformAck)),
            MessageType::Offer
            | MessageType::Ack
            | MessageType::Nak
            | MessageType::ForceRenew
            | MessageType::LeaseUnassigned
            | MessageType::LeaseUnknown
            | MessageType::LeaseActive
            | MessageType::LeaseQueryDone
            | MessageType::LeaseQueryStatus => Err(NoReply::NotRequest),
            other => Err(NoReply::Unsupported(other.into())),
        }
    }

    /// RFC 2131 §4.3.2. The client's state shows in which fields it filled:
    /// SELECTING (server identifier and requested IP), INIT-REBOOT
    /// (requested IP), RENEWING / REBINDING (`ciaddr`). Every address the
    /// client names must be the GN's VIPv4 for an ACK; otherwise NAK.
    fn request(
        &mut self,
        now: u64,
        msg: &Message,
        mac: MacAddr,
        vip4: Ipv4Addr,
    ) -> Result<Reply, NoReply> {
        if self.names_other_server(msg) {
            return Err(NoReply::OtherServer);
        }
        let named = [requested_ip(msg), nonzero(msg.ciaddr())];
        if named.iter().all(Option::is_none) {
            return Err(NoReply::Malformed(Malformed::MissingAddress));
        }
        if named.iter().flatten().any(|a| *a != vip4) {
            tracing::debug!(%mac, ?named, %vip4, "dhcp4: REQUEST for another address, NAK");
            return Ok(self.reply(msg, mac, vip4, ReplyKind::Nak));
        }
        let lease = Lease {
            mac,
            vip4,
            expires_unix: now.saturating_add(u64::from(self.config.lease_secs)),
        };
        let renewal = self.leases.insert(mac, lease).is_some();
        if !renewal {
            tracing::debug!(%mac, %vip4, "dhcp4: lease granted");
        }
        self.recompute_next_expiry();
        self.push_event(Event::LeaseGranted { lease, renewal });
        Ok(self.reply(msg, mac, vip4, ReplyKind::Ack))
    }

    /// RFC 2131 §4.3.3: the address is in `requested IP address`.
    fn decline(&mut self, msg: &Message, mac: MacAddr, vip4: Ipv4Addr) -> Result<Reply, NoReply> {
        if self.names_other_server(msg) {
            return Err(NoReply::OtherServer);
        }
        let Some(declined) = requested_ip(msg) else {
            return Err(NoReply::Malformed(Malformed::MissingAddress));
        };
        if declined != vip4 {
            return Err(NoReply::NotItsAddress);
        }
        tracing::warn!(
            %mac, %vip4,
            "dhcp4: general node declined its VIPv4: another host on the LAN uses it"
        );
        self.end_lease(mac, LeaseEnd::Declined);
        self.push_event(Event::Declined { mac, vip4 });
        Err(NoReply::Declined)
    }

    /// RFC 2131 §4.3.4: the address is in `ciaddr`.
    fn release(&mut self, msg: &Message, mac: MacAddr, vip4: Ipv4Addr) -> Result<Reply, NoReply> {
        if self.names_other_server(msg) {
            return Err(NoReply::OtherServer);
        }
        let Some(released) = nonzero(msg.ciaddr()) else {
            return Err(NoReply::Malformed(Malformed::MissingAddress));
        };
        if released != vip4 {
            return Err(NoReply::NotItsAddress);
        }
        self.end_lease(mac, LeaseEnd::Released);
        Err(NoReply::Released)
    }

    fn names_other_server(&self, msg: &Message) -> bool {
        matches!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(id)) if *id != self.config.server
        )
    }

    /// Builds a reply per RFC 2131 table 3 and addresses it per §4.1.
    fn reply(&self, req: &Message, mac: MacAddr, vip4: Ipv4Addr, kind: ReplyKind) -> Reply {
        let (yiaddr, ciaddr) = match kind {
            ReplyKind::Offer => (vip4, Ipv4Addr::UNSPECIFIED),
            ReplyKind::Ack => (vip4, req.ciaddr()),
            ReplyKind::InformAck => (Ipv4Addr::UNSPECIFIED, req.ciaddr()),
            ReplyKind::Nak => (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED),
        };
        // siaddr is the next bootstrap server: there is none. The server
        // names itself in option 54.
        let mut header = Message::new_with_id(
            req.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            &mac.0,
        );
        header
            .set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_flags(req.flags());

        let mut options = self.reply_options(req, mac, kind);
        let mut payload = encode(&header, &options);
        if payload.len() > MAX_REPLY_LEN {
            options.retain(|o| !matches!(o, DhcpOption::Hostname(_)));
            payload = encode(&header, &options);
        }
        if payload.len() < MIN_REPLY_LEN {
            payload.resize(MIN_REPLY_LEN, 0);
        }

        // §4.1: a NAK is broadcast when giaddr is 0 (always, here); other
        // replies are unicast to ciaddr when the client filled it in (it has
        // that address configured), broadcast when it asks for that or has
        // no address to receive unicast on, else unicast to yiaddr at
        // chaddr.
        let to_all = (Ipv4Addr::BROADCAST, MacAddr::BROADCAST, true);
        let (dst_ip, dst_mac, broadcast) = match (kind, nonzero(req.ciaddr())) {
            (ReplyKind::Nak, _) => to_all,
            (_, Some(ciaddr)) => (ciaddr, mac, false),
            _ if req.flags().broadcast() => to_all,
            _ => nonzero(yiaddr).map_or(to_all, |ip| (ip, mac, false)),
        };
        Reply {
            kind,
            payload,
            src_ip: self.config.server,
            dst_ip,
            dst_mac,
            broadcast,
        }
    }

    /// Options 53 and 54 first, then the rest in the order of the client's
    /// parameter request list (option 55), those it did not ask for after
    /// in a fixed order, then the client identifier echoed (RFC 6842 §3).
    fn reply_options(&self, req: &Message, mac: MacAddr, kind: ReplyKind) -> Vec<DhcpOption> {
        let c = &self.config;
        let message_type = match kind {
            ReplyKind::Offer => MessageType::Offer,
            ReplyKind::Ack | ReplyKind::InformAck => MessageType::Ack,
            ReplyKind::Nak => MessageType::Nak,
        };
        let mut options = vec![
            DhcpOption::MessageType(message_type),
            DhcpOption::ServerIdentifier(c.server),
        ];
        let prl: &[OptionCode] = match req.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(codes)) => codes,
            _ => &[],
        };
        if kind == ReplyKind::Nak {
            options.push(DhcpOption::Message(
                "requested address is not this client's".into(),
            ));
        } else {
            let mut params = vec![
                DhcpOption::SubnetMask(c.subnet_mask()),
                DhcpOption::Router(vec![c.server]),
                DhcpOption::DomainNameServer(vec![c.server]),
            ];
            if !c.domain_name.is_empty() {
                params.push(DhcpOption::DomainName(c.domain_name.clone()));
            }
            if let Some(mtu) = c.interface_mtu {
                params.push(DhcpOption::InterfaceMtu(mtu));
            }
            // Table 3: no lease time in the ACK to an INFORM.
            if kind != ReplyKind::InformAck {
                let lease = u64::from(c.lease_secs);
                // Lossless: lease_secs < u32::MAX, so both fractions fit.
                params.push(DhcpOption::AddressLeaseTime(c.lease_secs));
                params.push(DhcpOption::Renewal((lease / 2) as u32));
                params.push(DhcpOption::Rebinding((lease * 7 / 8) as u32));
            }
            if prl.contains(&OptionCode::Hostname) {
                if let Some(node) = self.nodes.get(&mac).filter(|n| !n.hostname.is_empty()) {
                    params.push(DhcpOption::Hostname(node.hostname.clone()));
                }
            }
            // Stable: what the client did not ask for keeps the order above.
            params.sort_by_key(|o| {
                let code = OptionCode::from(o);
                prl.iter().position(|c| *c == code).unwrap_or(usize::MAX)
            });
            options.extend(params);
        }
        if let Some(id @ DhcpOption::ClientIdentifier(_)) =
            req.opts().get(OptionCode::ClientIdentifier)
        {
            options.push(id.clone());
        }
        options
    }

    fn end_lease(&mut self, mac: MacAddr, why: LeaseEnd) {
        if let Some(lease) = self.leases.remove(&mac) {
            self.recompute_next_expiry();
            self.push_event(Event::LeaseEnded { lease, why });
        }
    }

    fn expire(&mut self, now: u64) {
        if self.next_expiry.is_none_or(|(at, _)| now < at) {
            return;
        }
        let expired: Vec<Lease> = self
            .leases
            .values()
            .filter(|l| now >= l.expires_unix)
            .copied()
            .collect();
        for lease in expired {
            tracing::debug!(mac = %lease.mac, vip4 = %lease.vip4, "dhcp4: lease expired");
            self.leases.remove(&lease.mac);
            self.counters.leases_expired += 1;
            self.push_event(Event::LeaseEnded {
                lease,
                why: LeaseEnd::Expired,
            });
        }
        self.recompute_next_expiry();
    }

    fn recompute_next_expiry(&mut self) {
        self.next_expiry = self.leases.values().map(|l| (l.expires_unix, l.mac)).min();
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
            self.counters.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn remember_unknown(&mut self, now: u64, mac: MacAddr) {
        let entry = match self.unknown.iter().position(|u| u.mac == mac) {
            Some(i) => self.unknown.remove(i),
            None => None,
        };
        let mut entry = entry.unwrap_or(UnknownMac {
            mac,
            first_seen_unix: now,
            last_seen_unix: now,
            messages: 0,
        });
        entry.last_seen_unix = now;
        entry.messages += 1;
        if self.unknown.len() >= MAX_UNKNOWN_MACS {
            self.unknown.pop_front();
        }
        self.unknown.push_back(entry);
        let quiet = self
            .last_unknown_log
            .is_some_and(|t| now.saturating_sub(t) < UNKNOWN_LOG_INTERVAL_SECS);
        if quiet {
            tracing::trace!(%mac, "dhcp4: MAC is not a general node of this adapter");
        } else {
            self.last_unknown_log = Some(now);
            tracing::info!(
                %mac,
                "dhcp4: MAC is not a general node of this adapter, no address \
                 (`cyphonic cloud general-node add` to serve it)"
            );
        }
    }

    fn count(&mut self, outcome: &Outcome) {
        let c = &mut self.counters;
        let counter = match outcome {
            Outcome::Reply(r) => match r.kind {
                ReplyKind::Offer => &mut c.offers,
                ReplyKind::Ack => &mut c.acks,
                ReplyKind::InformAck => &mut c.inform_acks,
                ReplyKind::Nak => &mut c.naks,
            },
            Outcome::NoReply(why) => match why {
                NoReply::Malformed(_) => &mut c.malformed,
                NoReply::NotRequest => &mut c.not_request,
                NoReply::NotEthernet => &mut c.not_ethernet,
                NoReply::ChaddrMismatch => &mut c.chaddr_mismatch,
                NoReply::Relayed => &mut c.relayed,
                NoReply::UnknownMac => &mut c.unknown_mac,
                NoReply::NotDhcp => &mut c.not_dhcp,
                NoReply::Unsupported(_) => &mut c.unsupported,
                NoReply::OtherServer => &mut c.other_server,
                NoReply::NotItsAddress => &mut c.not_its_address,
                NoReply::Released => &mut c.released,
                NoReply::Declined => &mut c.declined,
            },
        };
        *counter += 1;
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.config.subnet_mask());
        u32::from(ip) & mask == u32::from(self.config.server) & mask
    }

    fn is_host_address(&self, ip: Ipv4Addr) -> bool {
        let host_mask = !u32::from(self.config.subnet_mask());
        let host = u32::from(ip) & host_mask;
        host != 0 && host != host_mask
    }
}

/// The options of a message, as (code, data), Pad skipped, up to End or
/// the end of the buffer (End is not required, as in common servers). After
/// an error it yields nothing more.
struct OptionWalk<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for OptionWalk<'a> {
    type Item = Result<(u8, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let code = *self.buf.get(self.pos)?;
            match code {
                OPT_PAD => self.pos += 1,
                OPT_END => {
                    self.pos = self.buf.len();
                    return None;
                }
                _ => {
                    let data = self
                        .buf
                        .get(self.pos + 1)
                        .map(|len| self.pos + 2..self.pos + 2 + usize::from(*len))
                        .and_then(|range| self.buf.get(range));
                    let Some(data) = data else {
                        self.pos = self.buf.len();
                        return Some(Err(Malformed::OptionOverrun { code }));
                    };
                    self.pos += 2 + data.len();
                    return Some(Ok((code, data)));
                }
            }
        }
    }
}

fn options(payload: &[u8]) -> OptionWalk<'_> {
    OptionWalk {
        buf: payload,
        pos: OPTIONS.min(payload.len()),
    }
}

/// The fixed header, the magic cookie and the options' lengths, without
/// decoding anything.
fn check_framing(payload: &[u8]) -> Result<(), Malformed> {
    if payload.len() < OPTIONS {
        return Err(Malformed::TooShort { len: payload.len() });
    }
    if payload[MAGIC..OPTIONS] != MAGIC_COOKIE {
        return Err(Malformed::BadMagicCookie);
    }
    options(payload).try_for_each(|o| o.map(drop))
}

/// Decodes a framed message with dhcproto, keeping only [`READ_OPTIONS`].
///
/// dhcproto stops decoding options at the first one it cannot decode (a
/// host name that is not UTF-8 would hide a server identifier after it),
/// and a few of its option decoders assert on the length in debug builds;
/// handing it only the options the server reads, length-checked, avoids
/// both. Several instances of one option are joined into one as RFC 3396
/// says (dhcproto joins only adjacent ones). Option overload (52) is not
/// honoured: options in `sname` / `file` are ignored.
fn decode(payload: &[u8]) -> Result<Message, Malformed> {
    let mut data: [Option<Vec<u8>>; READ_OPTIONS.len()] = Default::default();
    for option in options(payload) {
        let (code, bytes) = option?;
        if let Some(i) = READ_OPTIONS.iter().position(|c| *c == code) {
            data[i]
                .get_or_insert_with(Vec::new)
                .extend_from_slice(bytes);
        }
    }
    let mut buf = payload[..OPTIONS].to_vec();
    for (code, bytes) in READ_OPTIONS.iter().zip(&data) {
        let Some(bytes) = bytes else { continue };
        let ok = match code {
            53 => bytes.len() == 1,
            50 | 54 => bytes.len() == 4,
            55 => !bytes.is_empty(),
            // One option's worth (RFC 2132 §9.14): a longer identifier,
            // joined from several (RFC 3396) and echoed whole, would make
            // the reply as long as the request, past a frame.
            61 => (2..=255).contains(&bytes.len()),
            _ => true,
        };
        if !ok {
            return Err(Malformed::BadOptionLength {
                code: *code,
                len: bytes.len(),
            });
        }
        for chunk in bytes.chunks(255) {
            buf.push(*code);
            // chunks(255): the length fits.
            buf.push(chunk.len() as u8);
            buf.extend_from_slice(chunk);
        }
    }
    buf.push(OPT_END);
    Message::decode(&mut Decoder::new(&buf)).map_err(|_| Malformed::Undecodable)
}

/// A message with the header fields of `header` (whose options are empty)
/// and `options` in this order. dhcproto keeps options in a hash map, so
/// they are written here one by one to keep the order.
fn encode(header: &Message, options: &[DhcpOption]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(MAX_REPLY_LEN);
    let mut e = Encoder::new(&mut buf);
    // dhcproto's encoder fails only for `sname` / `file` longer than their
    // fields (never set here), for domain-name options (never sent here)
    // and on offset overflow; none can happen, whatever the client sent.
    header
        .encode(&mut e)
        .and_then(|()| options.iter().try_for_each(|o| o.encode(&mut e)))
        .and_then(|()| DhcpOption::End.encode(&mut e))
        .expect("encoding a DHCP reply cannot fail");
    buf
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => nonzero(*ip),
        _ => None,
    }
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}

fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    match prefix_len {
        0 => Ipv4Addr::UNSPECIFIED,
        n => Ipv4Addr::from(u32::MAX << (32 - u32::from(n.min(32)))),
    }
}

/// Letters, digits and '-' in dot-separated labels of 1 to 63 bytes, 253
/// bytes at most (RFC 1035 §2.3.1, RFC 1123 §2.1); empty is allowed (no
/// option 15).
fn is_domain_name(name: &str) -> bool {
    name.is_empty()
        || (name.len() <= 253
            && name.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

#[cfg(test)]
mod tests;
