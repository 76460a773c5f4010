//! The stateful DHCPv6 server for the general nodes (RFC 8415), sans-IO.
//!
//! Each GN has one IPv6 address, its VIPv6, fixed when the operator added
//! it (`docs/adapter.md`). The server hands it out in an IA_NA and, with
//! it, the resolver (the adapter's VIPv6, RFC 3646 option 23) and the
//! overlay's search domain (option 24).
//!
//! # Who the client is
//!
//! A GN is named by the **source MAC of the frame** that carried the
//! message, which the shell passes in: the client's DUID may be DUID-LLT,
//! DUID-EN or DUID-UUID and need not contain a MAC at all, so the DUID is
//! only bound to the MAC in the [`Lease6`] (and rebound when a GN comes
//! back with a new DUID, e.g. after a reinstall). A MAC that is not one of
//! this adapter's GNs gets no answer and leaves no state: a burst of
//! Solicits from random MACs costs one map lookup each.
//!
//! # What is answered (RFC 8415 §18.3)
//!
//! | client message | answer |
//! |---|---|
//! | Solicit | Advertise (preference 255); Reply with Rapid Commit if asked (§18.3.1) |
//! | Request | Reply, binding made (§18.3.2) |
//! | Renew | Reply, fresh lifetimes; NoBinding for an IA we do not hold (§18.3.4) |
//! | Rebind | Reply, fresh lifetimes; addresses not ours with lifetimes 0 (§18.3.5) |
//! | Confirm | Reply Success if every address is inside the overlay prefix, else NotOnLink (§18.3.3) |
//! | Release | Reply Success, binding ended (§18.3.7) |
//! | Decline | Reply Success, binding marked declined (§18.3.8) |
//! | Information-request | Reply with the DNS options only (§18.3.6) |
//!
//! The VIPv6 goes in one IA_NA per client (the one already bound, else the
//! lowest IAID); further IA_NAs and every IA_TA get NoAddrsAvail, IA_PDs
//! NoPrefixAvail. Addresses a client lists that are not its VIPv6 come back
//! with lifetimes 0 so it stops using them.
//!
//! # What is dropped
//!
//! Server messages from the LAN (Advertise, Reply, Reconfigure, Relay-reply)
//! in the spirit of DHCPv6-Shield (RFC 7610); relay and leasequery
//! messages; anything whose option framing does not add up; messages that
//! break §16's rules on Client and Server Identifiers. Each reason has a
//! counter ([`Dhcp6Counters`]).
//!
//! # Parsing
//!
//! Messages are `dhcproto` messages, but a client message is first walked
//! here (`check_options`) and only handed to `dhcproto` if every option
//! length is exactly what its type needs and IA options nest only as RFC
//! 8415 nests them. `dhcproto`'s decoder trusts lengths in ways that panic
//! (a Status Code shorter than 2 bytes subtracts past zero), recurses as
//! deep as the options nest, and silently stops at the first option it
//! cannot read; none of that is reachable after the walk.
//!
//! # Call order
//!
//! [`Dhcp6Server::set_general_nodes`] whenever the NMS's list changes,
//! [`Dhcp6Server::restore`] at start with the saved leases,
//! [`Dhcp6Server::handle`] for every UDP datagram to port 547 (the reply, if
//! any, goes to the client's source address, port 546), then
//! [`Dhcp6Server::poll_leases_changed`] to learn whether the leases must be
//! saved again. Time is an input: wall-clock seconds, since leases outlive
//! the process.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use dhcproto::v6::{
    self, DhcpOption, DhcpOptions, IAAddr, MessageType, OptionCode, Status, StatusCode,
    UnknownOption, IANA, IAPD, IATA,
};
use dhcproto::{Decodable, Encodable};

use crate::prefix::Ipv6Prefix;
use crate::MacAddr;

/// Servers listen here.
pub const SERVER_PORT: u16 = 547;
/// Replies go to the client's source address at this port.
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1), where clients send.
pub const ALL_DHCP_RELAY_AGENTS_AND_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// RFC 8415 §11.1: a DUID is at most 130 bytes, its type code included.
pub const MAX_DUID_LEN: usize = 130;
/// The most general nodes (and so leases) one server keeps.
pub const MAX_GENERAL_NODES: usize = 65_536;
/// IAs answered per message; a client has one address to get, more IAs are
/// noise and would only grow the reply.
const MAX_IAS_ANSWERED: usize = 8;
/// Addresses a client lists that are not its VIPv6, returned with lifetimes
/// 0, per IA.
const MAX_STALE_ADDRESSES: usize = 4;
/// The most DNS servers and search domains configured: keeps every reply
/// well under the IPv6 minimum MTU.
const MAX_DNS_ENTRIES: usize = 8;
/// Preference 255 makes the client take our Advertise at once (§18.2.9):
/// the adapter is the one server meant for its GNs.
const PREFERENCE: u8 = 255;

/// A DHCP Unique Identifier (RFC 8415 §11): 3..=130 bytes, type code first.
/// Written as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duid(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DuidError {
    #[error("a DUID has 3..=130 bytes, not {0}")]
    Length(usize),
    #[error("{0:?} is not a DUID in hex")]
    Hex(String),
}

impl Duid {
    /// DUID-LL (type 3) with hardware type 1, Ethernet (RFC 8415 §11.4). It
    /// has no time in it, so the server's identifier survives restarts
    /// without being stored.
    pub fn link_layer(mac: MacAddr) -> Duid {
        let mut b = vec![0, 3, 0, 1];
        b.extend_from_slice(&mac.0);
        Duid(b)
    }

    pub fn from_bytes(b: &[u8]) -> Result<Duid, DuidError> {
        if !(3..=MAX_DUID_LEN).contains(&b.len()) {
            return Err(DuidError::Length(b.len()));
        }
        Ok(Duid(b.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The DUID type: 1 LLT, 2 EN, 3 LL, 4 UUID (RFC 8415 §11.1, RFC 6355).
    pub fn kind(&self) -> u16 {
        // Every constructor (and deserialization) keeps at least 3 bytes.
        u16::from_be_bytes([self.0[0], self.0[1]])
    }
}

impl std::fmt::Display for Duid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Duid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Duid({self})")
    }
}

impl std::str::FromStr for Duid {
    type Err = DuidError;
    fn from_str(s: &str) -> Result<Duid, DuidError> {
        let hex = || DuidError::Hex(s.to_owned());
        let nibble = |c: u8| (c as char).to_digit(16).ok_or_else(hex);
        let bytes = s
            .as_bytes()
            .chunks(2)
            .map(|pair| match pair {
                [h, l] => Ok((nibble(*h)? * 16 + nibble(*l)?) as u8),
                _ => Err(hex()),
            })
            .collect::<Result<Vec<u8>, _>>()?;
        Duid::from_bytes(&bytes)
    }
}

impl TryFrom<String> for Duid {
    type Error = DuidError;
    fn try_from(s: String) -> Result<Duid, DuidError> {
        s.parse()
    }
}

impl From<Duid> for String {
    fn from(d: Duid) -> String {
        d.to_string()
    }
}

/// What the server gives out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp6Config {
    /// The adapter's LAN MAC; the server's DUID is the DUID-LL made of it.
    pub server_mac: MacAddr,
    /// Option 23: the adapter's VIPv6.
    pub dns_servers: Vec<Ipv6Addr>,
    /// Option 24: the overlay's domain.
    pub domain_search: Vec<String>,
    /// Addresses inside it are on-link for Confirm (§18.3.3).
    pub overlay_prefix: Ipv6Prefix,
    /// Seconds, for the IA Address option.
    pub preferred_lifetime: u32,
    pub valid_lifetime: u32,
    /// Seconds, for the IA_NA: when the client renews (T1) and rebinds (T2).
    pub t1: u32,
    pub t2: u32,
}

impl Dhcp6Config {
    /// Lifetimes of 1 h preferred, 2 h valid, T1 and T2 at 0.5 and 0.8 of
    /// the preferred lifetime (RFC 8415 §21.4's recommendation).
    pub fn new(
        server_mac: MacAddr,
        dns_server: Ipv6Addr,
        domain: &str,
        overlay_prefix: Ipv6Prefix,
    ) -> Self {
        Dhcp6Config {
            server_mac,
            dns_servers: vec![dns_server],
            domain_search: vec![domain.to_owned()],
            overlay_prefix,
            preferred_lifetime: 3600,
            valid_lifetime: 7200,
            t1: 1800,
            t2: 2880,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dhcp6ConfigError {
    #[error("the server MAC {0} is a multicast address")]
    MulticastMac(MacAddr),
    #[error("{0} cannot be a DNS server")]
    DnsServer(Ipv6Addr),
    #[error("{0:?} is not a domain name")]
    Domain(String),
    #[error("at most {MAX_DNS_ENTRIES} DNS servers and search domains")]
    TooMany,
    #[error("lifetimes must satisfy 0 < T1 <= T2 <= preferred <= valid, got {t1}, {t2}, {preferred}, {valid}")]
    Lifetimes {
        t1: u32,
        t2: u32,
        preferred: u32,
        valid: u32,
    },
}

/// The state of a GN's binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Bound,
    /// The client found the address in use (Decline, §18.3.8). A GN has no
    /// other address to get, so a later Request binds it again; the
    /// conflict is the operator's to fix, and is logged.
    Declined,
}

/// A GN's binding: its MAC, the DUID and IAID it used, the address given.
/// Saved in the state directory so that a restarted adapter still knows
/// the bindings its GNs will renew.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease6 {
    pub mac: MacAddr,
    pub duid: Duid,
    pub iaid: u32,
    pub address: Ipv6Addr,
    /// Unix seconds when the valid lifetime ends.
    pub expires: u64,
    pub state: LeaseState,
}

impl Lease6 {
    fn holds(&self, duid: &Duid, iaid: u32, now: u64) -> bool {
        self.state == LeaseState::Bound
            && self.expires > now
            && self.duid == *duid
            && self.iaid == iaid
    }
}

/// A message to send back: UDP from the adapter's link-local address, port
/// 547, to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply6 {
    /// The UDP payload.
    pub payload: Vec<u8>,
    /// The frame's source MAC.
    pub dst_mac: MacAddr,
    /// The client's (link-local) source address.
    pub dst_ip: Ipv6Addr,
    /// [`CLIENT_PORT`].
    pub dst_port: u16,
}

/// Why a client message did not get past the framing check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than the 4-byte header")]
    TooShort,
    #[error("option {code} runs past its container")]
    Truncated { code: u16 },
    #[error("option {code} cannot have length {len}")]
    BadLength { code: u16, len: usize },
    #[error("option {code} cannot be where it is")]
    Misplaced { code: u16 },
    #[error("option {code} appears twice")]
    Repeated { code: u16 },
    #[error("a status message is not UTF-8")]
    StatusText,
    #[error("the decoder read {decoded} options where the framing has {framed}")]
    Disagreement { framed: usize, decoded: usize },
    #[error("the decoder refused what the framing check let through")]
    Undecodable,
}

/// Why a message got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("malformed: {0}")]
    Malformed(#[from] Malformed),
    #[error("server message type {0} from the LAN (RFC 7610)")]
    ServerMessage(u8),
    #[error("message type {0} is not served")]
    Unsupported(u8),
    #[error("the source is a multicast MAC, or an unspecified or multicast address")]
    BadSource,
    #[error("{0} is not a general node of this adapter")]
    UnknownMac(MacAddr),
    #[error("the Client Identifier is missing or not a DUID")]
    BadClientId,
    #[error("the Server Identifier is missing or not ours")]
    WrongServerId,
    #[error("a Server Identifier on a message to all servers (§16)")]
    UnexpectedServerId,
    #[error("an IA option in an Information-request (§16.12)")]
    UnexpectedIa,
    #[error("a Confirm without addresses (§18.3.3)")]
    NothingToConfirm,
    #[error("the answer could not be encoded")]
    Encode,
}

/// What the server did, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dhcp6Counters {
    pub advertises: u64,
    pub replies: u64,
    /// Bindings made or refreshed (Request, Rapid Commit, Renew, Rebind).
    pub bindings: u64,
    pub releases: u64,
    pub declines: u64,
    /// A GN's MAC came with another DUID than the one bound.
    pub duid_changes: u64,
    pub malformed: u64,
    pub server_messages: u64,
    pub unsupported: u64,
    pub bad_source: u64,
    pub unknown_mac: u64,
    pub bad_client_id: u64,
    pub wrong_server_id: u64,
    pub unexpected_server_id: u64,
    pub unexpected_ia: u64,
    pub nothing_to_confirm: u64,
    pub encode_failures: u64,
}

impl Dhcp6Counters {
    fn count(&mut self, d: &Dropped) {
        let c = match d {
            Dropped::Malformed(_) => &mut self.malformed,
            Dropped::ServerMessage(_) => &mut self.server_messages,
            Dropped::Unsupported(_) => &mut self.unsupported,
            Dropped::BadSource => &mut self.bad_source,
            Dropped::UnknownMac(_) => &mut self.unknown_mac,
            Dropped::BadClientId => &mut self.bad_client_id,
            Dropped::WrongServerId => &mut self.wrong_server_id,
            Dropped::UnexpectedServerId => &mut self.unexpected_server_id,
            Dropped::UnexpectedIa => &mut self.unexpected_ia,
            Dropped::NothingToConfirm => &mut self.nothing_to_confirm,
            Dropped::Encode => &mut self.encode_failures,
        };
        *c += 1;
    }
}

/// The DHCPv6 server of one LAN.
pub struct Dhcp6Server {
    config: Dhcp6Config,
    server_duid: Duid,
    /// Option 24's data, uncompressed (RFC 8415 §10 forbids compression).
    domain_search: Vec<u8>,
    general_nodes: BTreeMap<MacAddr, Ipv6Addr>,
    /// Whether the NMS's list has arrived; until then `restore` cannot tell
    /// a stale lease from one of a GN not yet listed.
    general_nodes_known: bool,
    /// One lease per GN, so as bounded as the GN list.
    leases: BTreeMap<MacAddr, Lease6>,
    leases_changed: bool,
    counters: Dhcp6Counters,
}

/// How an IA is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IaMode {
    /// Solicit, Request.
    Assign,
    Renew,
    Rebind,
}

impl Dhcp6Server {
    pub fn new(config: Dhcp6Config) -> Result<Self, Dhcp6ConfigError> {
        let c = &config;
        if c.server_mac.is_multicast() {
            return Err(Dhcp6ConfigError::MulticastMac(c.server_mac));
        }
        if let Some(d) = c
            .dns_servers
            .iter()
            .find(|d| d.is_unspecified() || d.is_multicast() || d.is_loopback())
        {
            return Err(Dhcp6ConfigError::DnsServer(*d));
        }
        if c.dns_servers.len() > MAX_DNS_ENTRIES || c.domain_search.len() > MAX_DNS_ENTRIES {
            return Err(Dhcp6ConfigError::TooMany);
        }
        if !(0 < c.t1
            && c.t1 <= c.t2
            && c.t2 <= c.preferred_lifetime
            && c.preferred_lifetime <= c.valid_lifetime)
        {
            return Err(Dhcp6ConfigError::Lifetimes {
                t1: c.t1,
                t2: c.t2,
                preferred: c.preferred_lifetime,
                valid: c.valid_lifetime,
            });
        }
        let domain_search = encode_domains(&c.domain_search)?;
        Ok(Dhcp6Server {
            server_duid: Duid::link_layer(c.server_mac),
            config,
            domain_search,
            general_nodes: BTreeMap::new(),
            general_nodes_known: false,
            leases: BTreeMap::new(),
            leases_changed: false,
            counters: Dhcp6Counters::default(),
        })
    }

    pub fn server_duid(&self) -> &Duid {
        &self.server_duid
    }

    pub fn counters(&self) -> Dhcp6Counters {
        self.counters
    }

    /// The GNs this adapter serves, by MAC, with their VIPv6s. Replaces the
    /// previous list; leases of MACs no longer listed end. Past
    /// [`MAX_GENERAL_NODES`] entries, further MACs are ignored.
    pub fn set_general_nodes(&mut self, nodes: impl IntoIterator<Item = (MacAddr, Ipv6Addr)>) {
        self.general_nodes.clear();
        for (mac, vip6) in nodes {
            if self.general_nodes.len() >= MAX_GENERAL_NODES
                && !self.general_nodes.contains_key(&mac)
            {
                tracing::warn!(%mac, "more general nodes than the DHCPv6 server keeps");
                continue;
            }
            self.general_nodes.insert(mac, vip6);
        }
        self.general_nodes_known = true;
        let before = self.leases.len();
        let nodes = &self.general_nodes;
        self.leases.retain(|mac, _| nodes.contains_key(mac));
        if self.leases.len() != before {
            self.leases_changed = true;
        }
    }

    /// The bindings, by MAC, for saving.
    pub fn leases(&self) -> impl Iterator<Item = &Lease6> {
        self.leases.values()
    }

    pub fn lease(&self, mac: MacAddr) -> Option<&Lease6> {
        self.leases.get(&mac)
    }

    /// Takes back saved leases at start (or after a restart); returns how
    /// many were kept. Expired ones, and once the GN list is known those of
    /// MACs not on it, are left out.
    pub fn restore(&mut self, now: u64, leases: impl IntoIterator<Item = Lease6>) -> usize {
        let mut kept = 0;
        for lease in leases {
            let listed = !self.general_nodes_known || self.general_nodes.contains_key(&lease.mac);
            let room =
                self.leases.len() < MAX_GENERAL_NODES || self.leases.contains_key(&lease.mac);
            if lease.expires <= now || !listed || !room {
                continue;
            }
            self.leases.insert(lease.mac, lease);
            kept += 1;
        }
        kept
    }

    /// Whether the leases changed since the last call: the shell saves them
    /// when this says so.
    #[must_use]
    pub fn poll_leases_changed(&mut self) -> bool {
        std::mem::take(&mut self.leases_changed)
    }

    /// A UDP datagram to port 547 from `src_ip` in a frame from `src_mac`,
    /// at `now` (Unix seconds): the answer, if any.
    #[must_use]
    pub fn handle(
        &mut self,
        now: u64,
        src_mac: MacAddr,
        src_ip: Ipv6Addr,
        payload: &[u8],
    ) -> Option<Reply6> {
        match self.process(now, src_mac, src_ip, payload) {
            Ok((msg_type, payload)) => {
                if msg_type == MessageType::Advertise {
                    self.counters.advertises += 1;
                } else {
                    self.counters.replies += 1;
                }
                Some(Reply6 {
                    payload,
                    dst_mac: src_mac,
                    dst_ip: src_ip,
                    dst_port: CLIENT_PORT,
                })
            }
            Err(why) => {
                tracing::trace!(%src_mac, %src_ip, %why, "DHCPv6 message dropped");
                self.counters.count(&why);
                None
            }
        }
    }

    fn process(
        &mut self,
        now: u64,
        src_mac: MacAddr,
        src_ip: Ipv6Addr,
        payload: &[u8],
    ) -> Result<(MessageType, Vec<u8>), Dropped> {
        // Cheap checks first: the type byte, the source, the MAC.
        let &type_byte = payload.first().ok_or(Malformed::TooShort)?;
        let msg_type = MessageType::from(type_byte);
        use MessageType as M;
        match msg_type {
            M::Advertise | M::Reply | M::Reconfigure | M::RelayRepl => {
                return Err(Dropped::ServerMessage(type_byte))
            }
            M::Solicit
            | M::Request
            | M::Confirm
            | M::Renew
            | M::Rebind
            | M::Release
            | M::Decline
            | M::InformationRequest => {}
            _ => return Err(Dropped::Unsupported(type_byte)),
        }
        if src_mac.is_multicast() || src_ip.is_unspecified() || src_ip.is_multicast() {
            return Err(Dropped::BadSource);
        }
        let vip = *self
            .general_nodes
            .get(&src_mac)
            .ok_or(Dropped::UnknownMac(src_mac))?;
        if self.leases.get(&src_mac).is_some_and(|l| l.expires <= now) {
            self.leases.remove(&src_mac);
            self.leases_changed = true;
        }

        let msg = parse(payload)?;
        let opts = msg.opts();
        let client = match opts.get(OptionCode::ClientId) {
            Some(DhcpOption::ClientId(id)) => {
                Some(Duid::from_bytes(id).map_err(|_| Dropped::BadClientId)?)
            }
            _ => None,
        };
        let server = match opts.get(OptionCode::ServerId) {
            Some(DhcpOption::ServerId(id)) => Some(id.as_slice()),
            _ => None,
        };
        let ours = server == Some(self.server_duid.as_bytes());
        match msg_type {
            M::Request | M::Renew | M::Release | M::Decline if !ours => {
                return Err(Dropped::WrongServerId)
            }
            M::Solicit | M::Rebind | M::Confirm if server.is_some() => {
                return Err(Dropped::UnexpectedServerId)
            }
            M::InformationRequest if server.is_some() && !ours => {
                return Err(Dropped::WrongServerId)
            }
            _ => {}
        }
        if msg_type == M::InformationRequest {
            let has_ia = [OptionCode::IANA, OptionCode::IATA, OptionCode::IAPD]
                .into_iter()
                .any(|c| opts.get(c).is_some());
            if has_ia {
                return Err(Dropped::UnexpectedIa);
            }
            let mut out = self.reply_head(&msg);
            self.add_dns(&mut out);
            return self.encode(M::Reply, &msg, out);
        }
        let client = client.ok_or(Dropped::BadClientId)?;

        let (answer_type, out) = match msg_type {
            M::Solicit => {
                let rapid = opts.get(OptionCode::RapidCommit).is_some();
                let (ias, chosen) =
                    self.answer_ias(now, src_mac, &client, vip, &msg, IaMode::Assign);
                if rapid && chosen.is_some() {
                    let mut out = self.reply_head(&msg);
                    out.push(DhcpOption::RapidCommit);
                    out.extend(ias);
                    self.add_dns(&mut out);
                    self.bind(now, src_mac, &client, chosen, vip);
                    (M::Reply, out)
                } else {
                    // Without Rapid Commit nothing is bound yet (§18.3.1).
                    let mut out = self.reply_head(&msg);
                    out.push(DhcpOption::Preference(PREFERENCE));
                    out.extend(ias);
                    if chosen.is_none() {
                        // §18.3.9: no address for any IA, said at the top too.
                        out.push(status(Status::NoAddrsAvail, "no address for these IAs"));
                    }
                    self.add_dns(&mut out);
                    (M::Advertise, out)
                }
            }
            M::Request | M::Renew | M::Rebind => {
                let mode = match msg_type {
                    M::Request => IaMode::Assign,
                    M::Renew => IaMode::Renew,
                    _ => IaMode::Rebind,
                };
                let (ias, bound) = self.answer_ias(now, src_mac, &client, vip, &msg, mode);
                let mut out = self.reply_head(&msg);
                out.extend(ias);
                self.add_dns(&mut out);
                self.bind(now, src_mac, &client, bound, vip);
                (M::Reply, out)
            }
            M::Release | M::Decline => {
                let ias = self.end_bindings(src_mac, &client, &msg, msg_type == M::Decline);
                let mut out = self.reply_head(&msg);
                out.push(status(Status::Success, ""));
                out.extend(ias);
                (M::Reply, out)
            }
            M::Confirm => {
                let mut addrs = ia_nas(&msg)
                    .flat_map(|ia| addresses(&ia.opts))
                    .chain(ia_tas(&msg).flat_map(|ia| addresses(&ia.opts)))
                    .peekable();
                if addrs.peek().is_none() {
                    return Err(Dropped::NothingToConfirm);
                }
                let on_link = addrs.all(|a| self.config.overlay_prefix.contains(a));
                let mut out = self.reply_head(&msg);
                out.push(if on_link {
                    status(Status::Success, "")
                } else {
                    status(Status::NotOnLink, "not on this link")
                });
                (M::Reply, out)
            }
            // Every other type returned above.
            _ => return Err(Dropped::Unsupported(type_byte)),
        };
        self.encode(answer_type, &msg, out)
    }

    /// The answers to the message's IAs, and the IAID that holds the VIPv6
    /// if one does (the binding to record, unless it is only an offer).
    fn answer_ias(
        &self,
        now: u64,
        mac: MacAddr,
        client: &Duid,
        vip: Ipv6Addr,
        msg: &v6::Message,
        mode: IaMode,
    ) -> (Vec<DhcpOption>, Option<u32>) {
        let lease = self.leases.get(&mac);
        let held = |iaid| lease.is_some_and(|l| l.holds(client, iaid, now));
        let mut out = Vec::new();
        let ias: Vec<&IANA> = ia_nas(msg).take(MAX_IAS_ANSWERED).collect();
        // The IA to hold the VIPv6: Assign chooses the bound one,
        // else the lowest IAID; Renew takes only the bound one; Rebind also
        // takes one that names the VIPv6 (we are the authority for it).
        let chosen = match mode {
            IaMode::Assign => ias
                .iter()
                .map(|ia| ia.id)
                .find(|&id| held(id))
                .or_else(|| ias.iter().map(|ia| ia.id).min()),
            IaMode::Renew => ias.iter().map(|ia| ia.id).find(|&id| held(id)),
            IaMode::Rebind => ias.iter().map(|ia| ia.id).find(|&id| held(id)).or_else(|| {
                ias.iter()
                    .find(|ia| addresses(&ia.opts).any(|a| a == vip))
                    .map(|ia| ia.id)
            }),
        };
        let mut given = false;
        for ia in &ias {
            let stale: Vec<Ipv6Addr> = {
                let mut s: Vec<Ipv6Addr> = Vec::new();
                for a in addresses(&ia.opts).filter(|a| *a != vip) {
                    if !s.contains(&a) && s.len() < MAX_STALE_ADDRESSES {
                        s.push(a);
                    }
                }
                s
            };
            let zeroed = stale.iter().map(|&addr| {
                DhcpOption::IAAddr(IAAddr {
                    addr,
                    preferred_life: 0,
                    valid_life: 0,
                    opts: DhcpOptions::new(),
                })
            });
            let mut inner = Vec::new();
            let (t1, t2);
            if Some(ia.id) == chosen && !given {
                given = true;
                (t1, t2) = (self.config.t1, self.config.t2);
                inner.push(DhcpOption::IAAddr(IAAddr {
                    addr: vip,
                    preferred_life: self.config.preferred_lifetime,
                    valid_life: self.config.valid_lifetime,
                    opts: DhcpOptions::new(),
                }));
                inner.extend(zeroed);
            } else {
                (t1, t2) = (0, 0);
                match mode {
                    IaMode::Assign => {
                        inner.push(status(Status::NoAddrsAvail, "one address per general node"))
                    }
                    IaMode::Renew => inner.push(status(Status::NoBinding, "no binding")),
                    // §18.3.5: addresses not ours come back with lifetimes 0.
                    IaMode::Rebind if !stale.is_empty() => inner.extend(zeroed),
                    IaMode::Rebind => inner.push(status(Status::NoBinding, "no binding")),
                }
            }
            out.push(DhcpOption::IANA(IANA {
                id: ia.id,
                t1,
                t2,
                opts: options(inner),
            }));
        }
        let renewing = matches!(mode, IaMode::Renew | IaMode::Rebind);
        let room = MAX_IAS_ANSWERED.saturating_sub(out.len());
        for ia in ia_tas(msg).take(room) {
            let s = if renewing {
                status(Status::NoBinding, "no binding")
            } else {
                status(Status::NoAddrsAvail, "no temporary addresses")
            };
            out.push(DhcpOption::IATA(IATA {
                id: ia.id,
                opts: options(vec![s]),
            }));
        }
        let room = MAX_IAS_ANSWERED.saturating_sub(out.len());
        for ia in ia_pds(msg).take(room) {
            let s = if renewing {
                status(Status::NoBinding, "no binding")
            } else {
                status(Status::NoPrefixAvail, "no prefix delegation")
            };
            out.push(DhcpOption::IAPD(IAPD {
                id: ia.id,
                t1: 0,
                t2: 0,
                opts: options(vec![s]),
            }));
        }
        (out, chosen)
    }

    /// Records the binding of `iaid` (if any) with fresh lifetimes.
    fn bind(&mut self, now: u64, mac: MacAddr, client: &Duid, iaid: Option<u32>, vip: Ipv6Addr) {
        let Some(iaid) = iaid else { return };
        if let Some(old) = self.leases.get(&mac) {
            if old.duid != *client {
                self.counters.duid_changes += 1;
                tracing::info!(%mac, old = %old.duid, new = %client, "general node's DUID changed");
            }
        }
        self.counters.bindings += 1;
        tracing::debug!(%mac, %vip, iaid, "DHCPv6 binding");
        self.leases.insert(
            mac,
            Lease6 {
                mac,
                duid: client.clone(),
                iaid,
                address: vip,
                expires: now.saturating_add(self.config.valid_lifetime.into()),
                state: LeaseState::Bound,
            },
        );
        self.leases_changed = true;
    }

    /// Release (or Decline) the bindings the message names; the IAs we
    /// hold no binding for, answered with NoBinding (§18.3.7, §18.3.8).
    fn end_bindings(
        &mut self,
        mac: MacAddr,
        client: &Duid,
        msg: &v6::Message,
        decline: bool,
    ) -> Vec<DhcpOption> {
        let mut out = Vec::new();
        let no_binding = || options(vec![status(Status::NoBinding, "no binding")]);
        for ia in ia_nas(msg).take(MAX_IAS_ANSWERED) {
            let held = self
                .leases
                .get(&mac)
                .is_some_and(|l| l.duid == *client && l.iaid == ia.id);
            if held {
                if decline {
                    if let Some(l) = self.leases.get_mut(&mac) {
                        l.state = LeaseState::Declined;
                        tracing::warn!(%mac, address = %l.address, "general node declined its VIPv6: address in use");
                    }
                    self.counters.declines += 1;
                } else {
                    self.leases.remove(&mac);
                    self.counters.releases += 1;
                }
                self.leases_changed = true;
            } else {
                out.push(DhcpOption::IANA(IANA {
                    id: ia.id,
                    t1: 0,
                    t2: 0,
                    opts: no_binding(),
                }));
            }
        }
        let room = MAX_IAS_ANSWERED.saturating_sub(out.len());
        for ia in ia_tas(msg).take(room) {
            out.push(DhcpOption::IATA(IATA {
                id: ia.id,
                opts: no_binding(),
            }));
        }
        let room = MAX_IAS_ANSWERED.saturating_sub(out.len());
        for ia in ia_pds(msg).take(room) {
            out.push(DhcpOption::IAPD(IAPD {
                id: ia.id,
                t1: 0,
                t2: 0,
                opts: no_binding(),
            }));
        }
        out
    }

    /// Client Identifier echoed (if any), Server Identifier.
    fn reply_head(&self, msg: &v6::Message) -> Vec<DhcpOption> {
        let mut out = Vec::new();
        if let Some(DhcpOption::ClientId(id)) = msg.opts().get(OptionCode::ClientId) {
            out.push(DhcpOption::ClientId(id.clone()));
        }
        out.push(DhcpOption::ServerId(self.server_duid.as_bytes().to_vec()));
        out
    }

    /// Options 23 and 24, sent whether or not the ORO asks: a client that
    /// forgets to ask still needs a resolver, and §21.7 lets a server send
    /// options it was not asked for.
    fn add_dns(&self, out: &mut Vec<DhcpOption>) {
        if !self.config.dns_servers.is_empty() {
            out.push(DhcpOption::DomainNameServers(
                self.config.dns_servers.clone(),
            ));
        }
        if !self.domain_search.is_empty() {
            out.push(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::DomainSearchList,
                self.domain_search.clone(),
            )));
        }
    }

    fn encode(
        &self,
        answer: MessageType,
        msg: &v6::Message,
        out: Vec<DhcpOption>,
    ) -> Result<(MessageType, Vec<u8>), Dropped> {
        let mut reply = v6::Message::new_with_id(answer, msg.xid());
        reply.set_opts(options(out));
        let bytes = reply.to_vec().map_err(|_| Dropped::Encode)?;
        Ok((answer, bytes))
    }
}

/// Checks the framing of a client message and decodes it.
fn parse(payload: &[u8]) -> Result<v6::Message, Malformed> {
    let opts = payload.get(4..).ok_or(Malformed::TooShort)?;
    let framed = check_options(opts, Level::Message)?;
    let msg = v6::Message::from_bytes(payload).map_err(|_| Malformed::Undecodable)?;
    let decoded = msg.opts().iter().count();
    if decoded != framed {
        return Err(Malformed::Disagreement { framed, decoded });
    }
    Ok(msg)
}

/// Where an option sits; what may sit inside it depends on this.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Message,
    /// Inside an IA_NA, IA_TA or IA_PD.
    Ia,
    /// Inside an IA Address or IA Prefix.
    Address,
    /// Inside Vendor-specific Information (§21.17): the sub-options have the
    /// vendor's meanings, but `dhcproto` decodes them as DHCPv6 options, so
    /// they are held to the same lengths and may not nest.
    Vendor,
}

/// Walks the options in `buf` (RFC 8415 §21.1 framing) and checks each
/// length against what its type needs, recursing into the options that
/// encapsulate others only where RFC 8415 puts them: IAs in the message,
/// addresses and prefixes in IAs. Returns how many options `buf` holds.
fn check_options(mut buf: &[u8], level: Level) -> Result<usize, Malformed> {
    let mut count = 0;
    let mut seen_ids = [false; 2];
    while !buf.is_empty() {
        let code = match buf {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => 0,
        };
        let (len, data) = match buf {
            [_, _, l0, l1, rest @ ..] => {
                let len = usize::from(u16::from_be_bytes([*l0, *l1]));
                (len, rest.get(..len).ok_or(Malformed::Truncated { code })?)
            }
            _ => return Err(Malformed::Truncated { code }),
        };
        let bad = Malformed::BadLength { code, len };
        let misplaced = Malformed::Misplaced { code };
        let need = |ok: bool| if ok { Ok(()) } else { Err(bad) };
        let at = |l: Level| if level == l { Ok(()) } else { Err(misplaced) };
        match code {
            // Client / Server Identifier: once each in a message.
            1 | 2 if level == Level::Message => {
                let seen = &mut seen_ids[usize::from(code - 1)];
                if *seen {
                    return Err(Malformed::Repeated { code });
                }
                *seen = true;
            }
            1 | 2 if level != Level::Vendor => return Err(misplaced),
            // IA_NA, IA_PD: IAID, T1, T2, options.
            3 | 25 => {
                at(Level::Message)?;
                need(len >= 12)?;
                check_options(&data[12..], Level::Ia)?;
            }
            // IA_TA: IAID, options.
            4 => {
                at(Level::Message)?;
                need(len >= 4)?;
                check_options(&data[4..], Level::Ia)?;
            }
            // IA Address: address, preferred and valid lifetimes, options.
            5 => {
                at(Level::Ia)?;
                need(len >= 24)?;
                check_options(&data[24..], Level::Address)?;
            }
            // IA Prefix: lifetimes, length, prefix, options.
            26 => {
                at(Level::Ia)?;
                need(len >= 25)?;
                check_options(&data[25..], Level::Address)?;
            }
            // Option Request: a list of 16-bit codes.
            6 => need(len % 2 == 0)?,
            // Preference, Reconfigure Message.
            7 | 19 => need(len == 1)?,
            8 => need(len == 2)?,
            // Relay Message: only in relay messages, which we do not serve.
            9 => return Err(misplaced),
            11 => need(len >= 11)?,
            12 => need(len == 16)?,
            13 => {
                need(len >= 2)?;
                std::str::from_utf8(&data[2..]).map_err(|_| Malformed::StatusText)?;
            }
            // Rapid Commit, Reconfigure Accept.
            14 | 20 => need(len == 0)?,
            16 => need(len >= 4)?,
            17 => {
                at(Level::Message)?;
                need(len >= 4)?;
                check_options(&data[4..], Level::Vendor)?;
            }
            23 => need(len % 16 == 0)?,
            _ => {}
        }
        count += 1;
        buf = &buf[4 + len..];
    }
    Ok(count)
}

fn ia_nas(msg: &v6::Message) -> impl Iterator<Item = &IANA> {
    msg.opts().iter().filter_map(|o| match o {
        DhcpOption::IANA(ia) => Some(ia),
        _ => None,
    })
}

fn ia_tas(msg: &v6::Message) -> impl Iterator<Item = &IATA> {
    msg.opts().iter().filter_map(|o| match o {
        DhcpOption::IATA(ia) => Some(ia),
        _ => None,
    })
}

fn ia_pds(msg: &v6::Message) -> impl Iterator<Item = &IAPD> {
    msg.opts().iter().filter_map(|o| match o {
        DhcpOption::IAPD(ia) => Some(ia),
        _ => None,
    })
}

/// The addresses in an IA's options.
fn addresses(opts: &DhcpOptions) -> impl Iterator<Item = Ipv6Addr> + '_ {
    opts.iter().filter_map(|o| match o {
        DhcpOption::IAAddr(a) => Some(a.addr),
        _ => None,
    })
}

fn status(status: Status, msg: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode {
        status,
        msg: msg.to_owned(),
    })
}

/// Options in the order given among those of one code. (`DhcpOptions`
/// keeps options sorted by code and inserts each before the others of its
/// code, hence the reversal.)
fn options(list: Vec<DhcpOption>) -> DhcpOptions {
    let mut opts = DhcpOptions::new();
    for o in list.into_iter().rev() {
        opts.insert(o);
    }
    opts
}

/// Domain names as RFC 1035 §3.1 labels, uncompressed, each ending in the
/// root label.
fn encode_domains(names: &[String]) -> Result<Vec<u8>, Dhcp6ConfigError> {
    let mut out = Vec::new();
    for name in names {
        let bad = || Dhcp6ConfigError::Domain(name.clone());
        let n = name.strip_suffix('.').unwrap_or(name);
        if n.is_empty() || n.len() > 253 {
            return Err(bad());
        }
        for label in n.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(bad());
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        out.push(0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
