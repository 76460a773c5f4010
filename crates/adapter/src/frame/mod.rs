//! The LAN's wire formats and the classifier (`docs/adapter.md`, "One
//! interface, one classifier").
//!
//! Each format is a view over bytes plus a representation, as in smoltcp.
//! `Xxx::new_checked(bytes)` checks the lengths the accessors rely on, so no
//! accessor of a checked view panics; `XxxRepr::parse(&view)` checks the
//! rest (version, checksum, fixed values) and gives the fields as plain
//! values; `XxxRepr::emit` writes them back byte for byte. Values the
//! adapter does not know stay wrapped (`EtherType::Unknown(n)`,
//! `IpProtocol::Unknown(n)`, `NdiscOption::Unknown`) rather than failing.
//!
//! | format | spec | view | representation |
//! |---|---|---|---|
//! | Ethernet II | IEEE 802.3, RFC 894 | [`EthernetFrame`] | [`EthernetRepr`] |
//! | ARP (IPv4 over Ethernet) | RFC 826 | [`ArpPacket`] | [`ArpRepr`] |
//! | IPv4 | RFC 791 | [`Ipv4Packet`] | [`Ipv4Repr`] |
//! | IPv6 | RFC 8200 | [`Ipv6Packet`] | [`Ipv6Repr`] |
//! | UDP | RFC 768, RFC 8200 §8.1 | [`UdpPacket`] | [`UdpRepr`] |
//! | ICMPv6 | RFC 4443 | [`Icmpv6Packet`] | (checksum only) |
//! | Neighbor Discovery | RFC 4861, RFC 8106 | [`Icmpv6Packet`] | [`NdiscRepr`], [`NdiscOption`] |
//!
//! [`classify`] takes every frame from the LAN through these in one pass
//! and says which part of the adapter takes it ([`Class`]); what no part
//! takes is [`Class::Other`] with the reason, for the caller to drop and
//! count. It never panics, whatever the bytes.
//!
//! The builders at the end ([`ethernet`], [`ipv4_udp`], [`ipv6_udp`],
//! [`ipv6_icmp`]) make whole frames with every length and checksum filled
//! in, for the parts that answer the LAN (proxy, DHCP, RA, DNS) and for the
//! shell that hands peers' packets to the general nodes.
//!
//! Frames are built without Ethernet padding: the 60-byte minimum of IEEE
//! 802.3 is the NIC driver's to add (`eth_skb_pad` in Linux), and a frame
//! on a veth needs none. Frames are parsed with padding allowed: the IP and
//! UDP length fields, not the frame's length, say where a packet ends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use crate::MacAddr;

/// Why bytes are not a valid packet of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum WireError {
    /// Shorter than the format's fixed part or than a length field says.
    #[error("truncated")]
    Truncated,
    /// A field holds a value the format does not allow (a version, a
    /// length smaller than the header, an option of length zero).
    #[error("malformed")]
    Malformed,
    /// The checksum does not match.
    #[error("bad checksum")]
    Checksum,
    /// Well formed but not what the adapter speaks (ARP for another
    /// hardware or protocol type, an ICMPv6 type that is not ND).
    #[error("unsupported")]
    Unsupported,
}

type Result<T> = std::result::Result<T, WireError>;

// ---------------------------------------------------------------------------
// Well-known numbers

/// IEEE 802.1Q customer VLAN tag; tagged frames are not classified.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// IEEE 802.1ad service VLAN tag (Q-in-Q).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// DHCPv4 server port (RFC 2131 §4.1).
pub const DHCPV4_SERVER_PORT: u16 = 67;
/// DHCPv4 client port (RFC 2131 §4.1).
pub const DHCPV4_CLIENT_PORT: u16 = 68;
/// DHCPv6 client port (RFC 8415 §7.2).
pub const DHCPV6_CLIENT_PORT: u16 = 546;
/// DHCPv6 server and relay agent port (RFC 8415 §7.2).
pub const DHCPV6_SERVER_PORT: u16 = 547;
/// DNS (RFC 1035 §4.2.1).
pub const DNS_PORT: u16 = 53;

/// ICMPv6 Router Solicitation (RFC 4861 §4.1).
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
/// ICMPv6 Router Advertisement (RFC 4861 §4.2).
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
/// ICMPv6 Neighbor Solicitation (RFC 4861 §4.3).
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 Neighbor Advertisement (RFC 4861 §4.4).
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
/// ICMPv6 Redirect (RFC 4861 §4.5).
pub const ICMPV6_REDIRECT: u8 = 137;

/// All-nodes, link-local scope (RFC 4291 §2.7.1).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// All-routers, link-local scope (RFC 4291 §2.7.1).
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_DHCP_RELAY_AGENTS_AND_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Hop limit of every ND message (RFC 4861 §6.1.1, §7.1.1): a message
/// that arrives with 255 was not forwarded by a router.
pub const ND_HOP_LIMIT: u8 = 255;
/// TTL and hop limit of the UDP the adapter sends (RFC 1700's default 64).
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// Longest UDP payload in an IPv4 packet: 65 535 - 20 - 8.
pub const MAX_IPV4_UDP_PAYLOAD: usize = 65_535 - IPV4_HEADER_LEN - UDP_HEADER_LEN;
/// Longest UDP payload in an IPv6 packet without a jumbogram: 65 535 - 8.
pub const MAX_IPV6_UDP_PAYLOAD: usize = 65_535 - UDP_HEADER_LEN;

// ---------------------------------------------------------------------------
// Byte helpers. Callers index only what a checked view guarantees.

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn mac_at(b: &[u8], at: usize) -> MacAddr {
    let mut m = [0; 6];
    m.copy_from_slice(&b[at..at + 6]);
    MacAddr(m)
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

fn ipv6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

/// The Internet checksum (RFC 1071).
mod checksum {
    use std::net::IpAddr;

    /// The ones'-complement sum of `data` as big-endian 16-bit words, an
    /// odd last byte padded with zero (RFC 1071 §4.1), carries not folded.
    /// A `u64` cannot overflow on any packet an IP length field allows.
    pub(super) fn sum(data: &[u8]) -> u64 {
        let mut words = data.chunks_exact(2);
        let mut acc = 0u64;
        for w in &mut words {
            acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            acc += u64::from(*last) << 8;
        }
        acc
    }

    /// Folds the carries back in (the end-around carry, RFC 1071 §2).
    pub(super) fn fold(mut acc: u64) -> u16 {
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The pseudo-header's sum for an upper-layer checksum: RFC 768 for
    /// IPv4 (addresses, zero, protocol, 16-bit length), RFC 8200 §8.1 for
    /// IPv6 (addresses, 32-bit length, 24 zero bits, next header). Zeros add
    /// nothing, so both are the addresses' words plus protocol plus length.
    pub(super) fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u64 {
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => sum(&a.octets()),
            IpAddr::V6(a) => sum(&a.octets()),
        };
        let len = len as u64;
        addr(src) + addr(dst) + u64::from(protocol) + (len & 0xffff) + (len >> 16)
    }

    /// The checksum field's value for data that sums to `acc` with the
    /// field zero.
    pub(super) fn finish(acc: u64) -> u16 {
        !fold(acc)
    }

    /// Whether data that sums to `acc`, the checksum field included, is
    /// intact: the sum is then all ones (RFC 1071 §1).
    pub(super) fn verifies(acc: u64) -> bool {
        fold(acc) == 0xffff
    }
}

/// Defines a byte of flag bits as a newtype: unknown bits are kept, so a
/// parsed value emits as it came.
macro_rules! flags {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $flag:ident = $bit:expr;)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u8);

        impl $name {
            $($(#[$fm])* pub const $flag: $name = $name($bit);)*

            pub const fn empty() -> Self {
                $name(0)
            }

            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Ethernet II

/// Bytes of an Ethernet II header (no 802.1Q tag, no FCS).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// The Ethernet II type field. Types the adapter does not speak stay
/// `Unknown`, VLAN tags included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EtherType {
    Ipv4,
    Arp,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> u16 {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A view of an Ethernet II frame (destination, source, type, payload).
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view without checks: accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// A view whose accessors cannot panic.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < ETHERNET_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), 0)
    }

    pub fn src_addr(&self) -> MacAddr {
        mac_at(self.buffer.as_ref(), 6)
    }

    pub fn ethertype(&self) -> EtherType {
        u16_at(self.buffer.as_ref(), 12).into()
    }

    /// Everything after the header, padding included.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ETHERNET_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[0..6].copy_from_slice(&mac.0);
    }

    pub fn set_src_addr(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[6..12].copy_from_slice(&mac.0);
    }

    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        self.buffer.as_mut()[12..14].copy_from_slice(&u16::from(ethertype).to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[ETHERNET_HEADER_LEN..]
    }
}

/// An Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    pub dst_addr: MacAddr,
    pub src_addr: MacAddr,
    pub ethertype: EtherType,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self> {
        frame.check_len()?;
        Ok(EthernetRepr {
            dst_addr: frame.dst_addr(),
            src_addr: frame.src_addr(),
            ethertype: frame.ethertype(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN
    }

    /// Writes the header; the frame's buffer must hold at least
    /// [`ETHERNET_HEADER_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

// ---------------------------------------------------------------------------
// ARP (RFC 826)

/// Bytes of an ARP packet for IPv4 over Ethernet: 8 + 2 × (6 + 4).
pub const ARP_LEN: usize = 28;
/// ARP hardware type Ethernet (RFC 826, IANA "Hardware Types").
const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_PTYPE_IPV4: u16 = 0x0800;

/// The ARP opcode (RFC 826 `ar$op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArpOperation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(v: u16) -> Self {
        match v {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(v: ArpOperation) -> u16 {
        match v {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// A view of an ARP packet of any hardware and protocol address lengths.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The fixed part and the four addresses its length fields announce
    /// must be there; trailing bytes (Ethernet padding) are allowed.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < 8 {
            return Err(WireError::Truncated);
        }
        if b.len() < self.tpa_range().end {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 0)
    }

    pub fn protocol_type(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 2)
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[4]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[5]
    }

    pub fn operation(&self) -> ArpOperation {
        u16_at(self.buffer.as_ref(), 6).into()
    }

    fn sha_range(&self) -> Range<usize> {
        8..8 + usize::from(self.hardware_len())
    }

    fn spa_range(&self) -> Range<usize> {
        let start = self.sha_range().end;
        start..start + usize::from(self.protocol_len())
    }

    fn tha_range(&self) -> Range<usize> {
        let start = self.spa_range().end;
        start..start + usize::from(self.hardware_len())
    }

    fn tpa_range(&self) -> Range<usize> {
        let start = self.tha_range().end;
        start..start + usize::from(self.protocol_len())
    }

    pub fn source_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.sha_range()]
    }

    pub fn source_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.spa_range()]
    }

    pub fn target_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.tha_range()]
    }

    pub fn target_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.tpa_range()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_hardware_type(&mut self, v: u16) {
        self.buffer.as_mut()[0..2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_protocol_type(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[4] = v;
    }

    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[5] = v;
    }

    pub fn set_operation(&mut self, op: ArpOperation) {
        self.buffer.as_mut()[6..8].copy_from_slice(&u16::from(op).to_be_bytes());
    }

    /// The address lengths must be set first; `addr` must be that long.
    pub fn set_source_hardware_addr(&mut self, addr: &[u8]) {
        let r = self.sha_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }

    pub fn set_source_protocol_addr(&mut self, addr: &[u8]) {
        let r = self.spa_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }

    pub fn set_target_hardware_addr(&mut self, addr: &[u8]) {
        let r = self.tha_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }

    pub fn set_target_protocol_addr(&mut self, addr: &[u8]) {
        let r = self.tpa_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }
}

/// An ARP packet for IPv4 over Ethernet, the only kind the adapter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub source_hardware_addr: MacAddr,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: MacAddr,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Any other hardware or protocol type, or address lengths other than
    /// 6 and 4, is [`WireError::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.hardware_type() != ARP_HTYPE_ETHERNET
            || packet.protocol_type() != ARP_PTYPE_IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(WireError::Unsupported);
        }
        let b = packet.buffer.as_ref();
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: mac_at(b, 8),
            source_protocol_addr: ipv4_at(b, 14),
            target_hardware_addr: mac_at(b, 18),
            target_protocol_addr: ipv4_at(b, 24),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        ARP_LEN
    }

    /// Writes the packet; the buffer must hold at least [`ARP_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(ARP_HTYPE_ETHERNET);
        packet.set_protocol_type(ARP_PTYPE_IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(&self.source_hardware_addr.0);
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(&self.target_hardware_addr.0);
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }
}

// ---------------------------------------------------------------------------
// IP protocol numbers

/// An IPv4 protocol / IPv6 next header number (IANA "Protocol Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProtocol {
    /// IPv6 Hop-by-Hop Options (RFC 8200 §4.3).
    HopByHop,
    Icmp,
    Tcp,
    Udp,
    Icmpv6,
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(v: u8) -> Self {
        match v {
            0 => IpProtocol::HopByHop,
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(v: IpProtocol) -> u8 {
        match v {
            IpProtocol::HopByHop => 0,
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// Which IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpVersion {
    V4,
    V6,
}

// ---------------------------------------------------------------------------
// IPv4 (RFC 791)

/// Bytes of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// RFC 791 §3.1 flags, in the top three bits of bytes 6..8.
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;

/// A view of an IPv4 packet, options included in the header.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// IHL at least 5 words, and the header and the total length inside
    /// the buffer (RFC 791 §3.1); bytes past the total length are padding.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < IPV4_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < IPV4_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < header_len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::Malformed);
        }
        if len < total_len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The header's length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }

    /// DSCP and ECN, the old Type of Service byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    pub fn total_len(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 2)
    }

    pub fn ident(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 4)
    }

    pub fn dont_frag(&self) -> bool {
        u16_at(self.buffer.as_ref(), 6) & IPV4_DONT_FRAGMENT != 0
    }

    pub fn more_frags(&self) -> bool {
        u16_at(self.buffer.as_ref(), 6) & IPV4_MORE_FRAGMENTS != 0
    }

    /// The fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (u16_at(self.buffer.as_ref(), 6) & IPV4_FRAGMENT_OFFSET) << 3
    }

    /// Whether this is a piece of a larger datagram (RFC 791 §2.3): a
    /// first fragment has MF set, the others a non-zero offset.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[8]
    }

    pub fn next_header(&self) -> IpProtocol {
        self.buffer.as_ref()[9].into()
    }

    pub fn checksum(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 10)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), 12)
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), 16)
    }

    /// The header checksum covers the header, options included (RFC 791
    /// §3.1 "Header Checksum").
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(checksum::sum(&self.buffer.as_ref()[..self.header_len()]))
    }

    /// The bytes after the header, up to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the IHL for `header_len` bytes (a multiple of 4).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[0] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[1] = v;
    }

    pub fn set_total_len(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_ident(&mut self, v: u16) {
        self.buffer.as_mut()[4..6].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the flags and the fragment offset (in bytes, a multiple of 8).
    pub fn set_fragmentation(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & IPV4_FRAGMENT_OFFSET;
        if dont_frag {
            v |= IPV4_DONT_FRAGMENT;
        }
        if more_frags {
            v |= IPV4_MORE_FRAGMENTS;
        }
        self.buffer.as_mut()[6..8].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[8] = v;
    }

    pub fn set_next_header(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[9] = v.into();
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[10..12].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[12..16].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[16..20].copy_from_slice(&a.octets());
    }

    /// Computes the header checksum over the header as it stands.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let sum = checksum::sum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(checksum::finish(sum));
    }
}

/// An IPv4 header as the adapter reads and writes it. Options are skipped
/// on parse and never emitted; fragmentation is read from the view
/// ([`Ipv4Packet::is_fragment`]) and emitted as "don't fragment".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub next_header: IpProtocol,
    /// Bytes after the header (total length - header length).
    pub payload_len: usize,
    /// The TTL.
    pub hop_limit: u8,
}

impl Ipv4Repr {
    /// Checks the version and the header checksum.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(WireError::Malformed);
        }
        if !packet.verify_checksum() {
            return Err(WireError::Checksum);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            hop_limit: packet.hop_limit(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        IPV4_HEADER_LEN
    }

    /// Writes a 20-byte header with DSCP 0, identification 0 and DF set,
    /// which RFC 6864 §4.1 allows for atomic datagrams, and its checksum.
    /// `payload_len` must be at most 65 515.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version_and_header_len(IPV4_HEADER_LEN);
        packet.set_dscp_ecn(0);
        packet.set_total_len((IPV4_HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(0);
        packet.set_fragmentation(true, false, 0);
        packet.set_hop_limit(self.hop_limit);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

// ---------------------------------------------------------------------------
// IPv6 (RFC 8200)

/// Bytes of the IPv6 fixed header.
pub const IPV6_HEADER_LEN: usize = 40;

/// A view of an IPv6 packet (fixed header and payload; extension headers
/// are part of the payload).
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The fixed header and the payload length inside the buffer; bytes
    /// past them are padding.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < IPV6_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if len < IPV6_HEADER_LEN + usize::from(self.payload_len()) {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        ((u16_at(self.buffer.as_ref(), 0) >> 4) & 0xff) as u8
    }

    pub fn flow_label(&self) -> u32 {
        u32_at(self.buffer.as_ref(), 0) & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 4)
    }

    pub fn next_header(&self) -> IpProtocol {
        self.buffer.as_ref()[6].into()
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), 8)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        ipv6_at(self.buffer.as_ref(), 24)
    }

    /// The payload, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, the traffic class and the flow label.
    pub fn set_version_class_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let v = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[0..4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[4..6].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_next_header(&mut self, v: IpProtocol) {
        self.buffer.as_mut()[6] = v.into();
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[7] = v;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[8..24].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[24..40].copy_from_slice(&a.octets());
    }
}

/// An IPv6 fixed header as the adapter reads and writes it (traffic class
/// and flow label emitted as 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.version() != 6 {
            return Err(WireError::Malformed);
        }
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        IPV6_HEADER_LEN
    }

    /// Writes the fixed header. `payload_len` must be at most 65 535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        packet.set_version_class_flow(0, 0);
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

// ---------------------------------------------------------------------------
// UDP (RFC 768)

pub const UDP_HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The length field covers at least the header and at most the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < UDP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let field = usize::from(self.length());
        if field < UDP_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < field {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 0)
    }

    pub fn dst_port(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 2)
    }

    /// The Length field: header and payload (RFC 768).
    pub fn length(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 4)
    }

    pub fn checksum(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 6)
    }

    /// Whether the checksum over the pseudo-header (RFC 768; RFC 8200 §8.1
    /// for IPv6), header and payload is right. A zero field is not
    /// special here; see [`UdpRepr::parse`].
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let len = usize::from(self.length());
        let acc = checksum::pseudo_header(src, dst, IpProtocol::Udp.into(), len)
            + checksum::sum(&self.buffer.as_ref()[..len]);
        checksum::verifies(acc)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[UDP_HEADER_LEN..usize::from(self.length())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[0..2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_length(&mut self, v: u16) {
        self.buffer.as_mut()[4..6].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[6..8].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes the checksum over the datagram as its length field says.
    /// A result of zero is sent as all ones, zero meaning "no checksum"
    /// (RFC 768 "Fields"; RFC 8200 §8.1).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let len = usize::from(self.length());
        let acc = checksum::pseudo_header(src, dst, IpProtocol::Udp.into(), len)
            + checksum::sum(&self.buffer.as_ref()[..len]);
        let sum = match checksum::finish(acc) {
            0 => 0xffff,
            sum => sum,
        };
        self.set_checksum(sum);
    }
}

/// A UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    /// Checks the checksum: over IPv4 a zero field means the sender did
    /// not compute one (RFC 768); over IPv6 it is mandatory and a zero
    /// field is an error (RFC 8200 §8.1).
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>, src: IpAddr, dst: IpAddr) -> Result<Self> {
        packet.check_len()?;
        let ok = match (packet.checksum(), dst) {
            (0, IpAddr::V4(_)) => true,
            (0, IpAddr::V6(_)) => false,
            _ => packet.verify_checksum(src, dst),
        };
        if !ok {
            return Err(WireError::Checksum);
        }
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }

    pub const fn header_len(&self) -> usize {
        UDP_HEADER_LEN
    }

    /// Writes the header, `payload` and the checksum. The buffer must hold
    /// exactly `8 + payload.len()` bytes, at most 65 535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_length((UDP_HEADER_LEN + payload.len()) as u16);
        packet.buffer.as_mut()[UDP_HEADER_LEN..UDP_HEADER_LEN + payload.len()]
            .copy_from_slice(payload);
        packet.fill_checksum(src, dst);
    }
}

// ---------------------------------------------------------------------------
// ICMPv6 (RFC 4443)

/// A view of an ICMPv6 message: type, code, checksum and the body.
#[derive(Debug, Clone)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Type, code and checksum (RFC 4443 §2.1). The whole buffer is the
    /// message: slice it to the IPv6 payload length first.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < 4 {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    pub fn checksum(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 2)
    }

    /// The checksum covers the pseudo-header and the whole message (RFC
    /// 4443 §2.3, RFC 8200 §8.1).
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        let acc =
            checksum::pseudo_header(src.into(), dst.into(), IpProtocol::Icmpv6.into(), b.len())
                + checksum::sum(b);
        checksum::verifies(acc)
    }

    /// The bytes after type, code and checksum.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[4..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[0] = v;
    }

    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[1] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes the checksum over the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let acc =
            checksum::pseudo_header(src.into(), dst.into(), IpProtocol::Icmpv6.into(), b.len())
                + checksum::sum(b);
        self.set_checksum(checksum::finish(acc));
    }

    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[4..]
    }
}

// ---------------------------------------------------------------------------
// Neighbor Discovery (RFC 4861) and its options

flags! {
    /// Router Advertisement flags (RFC 4861 §4.2; other bits, such as the
    /// RFC 4191 preference, kept as they came).
    RaFlags {
        /// M: addresses from DHCPv6.
        MANAGED = 0x80;
        /// O: other configuration (DNS) from DHCPv6.
        OTHER = 0x40;
    }
}

flags! {
    /// Neighbor Advertisement flags (RFC 4861 §4.4).
    NaFlags {
        /// R: the sender is a router.
        ROUTER = 0x80;
        /// S: sent in answer to a Neighbor Solicitation.
        SOLICITED = 0x40;
        /// O: overrides an existing cache entry.
        OVERRIDE = 0x20;
    }
}

flags! {
    /// Prefix Information flags (RFC 4861 §4.6.2).
    PrefixFlags {
        /// L: the prefix is on-link.
        ON_LINK = 0x80;
        /// A: the prefix may be used for SLAAC (RFC 4862).
        AUTONOMOUS = 0x40;
    }
}

/// ND option types (RFC 4861 §4.6, RFC 8106 §5.1).
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_TARGET_LLADDR: u8 = 2;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;

/// A Prefix Information option's content (RFC 4861 §4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixInfo {
    pub prefix_len: u8,
    pub flags: PrefixFlags,
    /// Seconds; all ones is infinity.
    pub valid_lifetime: u32,
    /// Seconds; all ones is infinity.
    pub preferred_lifetime: u32,
    pub prefix: Ipv6Addr,
}

/// A Recursive DNS Server option's content (RFC 8106 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rdnss {
    /// Seconds the servers may be used; all ones is infinity.
    pub lifetime: u32,
    /// At least one (RFC 8106 §5.1: length at least 3).
    pub servers: Vec<Ipv6Addr>,
}

/// One ND option (RFC 4861 §4.6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NdiscOption {
    /// Source Link-Layer Address (type 1); 6 bytes on Ethernet (RFC 2464 §6).
    SourceLinkLayerAddr(MacAddr),
    /// Target Link-Layer Address (type 2).
    TargetLinkLayerAddr(MacAddr),
    /// Prefix Information (type 3).
    PrefixInformation(PrefixInfo),
    /// MTU (type 5).
    Mtu(u32),
    /// Recursive DNS Server (type 25, RFC 8106).
    Rdnss(Rdnss),
    /// Anything else, skipped as RFC 4861 §4.6 requires; `length` in units
    /// of 8 bytes. Emitted with a zero body.
    Unknown { option_type: u8, length: u8 },
}

impl NdiscOption {
    /// Parses one option, `b` being exactly its `length × 8` bytes.
    fn parse(b: &[u8]) -> Result<Self> {
        let option_type = b[0];
        let length = b[1];
        let option = match option_type {
            OPT_SOURCE_LLADDR | OPT_TARGET_LLADDR => {
                if b.len() != 8 {
                    return Err(WireError::Malformed);
                }
                let mac = mac_at(b, 2);
                if option_type == OPT_SOURCE_LLADDR {
                    NdiscOption::SourceLinkLayerAddr(mac)
                } else {
                    NdiscOption::TargetLinkLayerAddr(mac)
                }
            }
            OPT_PREFIX_INFO => {
                if b.len() != 32 {
                    return Err(WireError::Malformed);
                }
                NdiscOption::PrefixInformation(PrefixInfo {
                    prefix_len: b[2],
                    flags: PrefixFlags(b[3]),
                    valid_lifetime: u32_at(b, 4),
                    preferred_lifetime: u32_at(b, 8),
                    prefix: ipv6_at(b, 16),
                })
            }
            OPT_MTU => {
                if b.len() != 8 {
                    return Err(WireError::Malformed);
                }
                NdiscOption::Mtu(u32_at(b, 4))
            }
            OPT_RDNSS => {
                if b.len() < 24 || (b.len() - 8) % 16 != 0 {
                    return Err(WireError::Malformed);
                }
                NdiscOption::Rdnss(Rdnss {
                    lifetime: u32_at(b, 4),
                    servers: b[8..].chunks_exact(16).map(|c| ipv6_at(c, 0)).collect(),
                })
            }
            _ => NdiscOption::Unknown {
                option_type,
                length,
            },
        };
        Ok(option)
    }

    /// Bytes on the wire, a multiple of 8.
    pub fn buffer_len(&self) -> usize {
        match self {
            NdiscOption::SourceLinkLayerAddr(_) | NdiscOption::TargetLinkLayerAddr(_) => 8,
            NdiscOption::PrefixInformation(_) => 32,
            NdiscOption::Mtu(_) => 8,
            NdiscOption::Rdnss(r) => 8 + 16 * r.servers.len(),
            NdiscOption::Unknown { length, .. } => usize::from(*length) * 8,
        }
    }

    /// Writes the option into the first [`Self::buffer_len`] bytes of `b`.
    /// An RDNSS option with more than 127 servers does not fit the length
    /// byte and must not be emitted.
    pub fn emit(&self, b: &mut [u8]) {
        let len = self.buffer_len();
        let b = &mut b[..len];
        b.fill(0);
        b[1] = (len / 8) as u8;
        match self {
            NdiscOption::SourceLinkLayerAddr(mac) | NdiscOption::TargetLinkLayerAddr(mac) => {
                b[0] = if matches!(self, NdiscOption::SourceLinkLayerAddr(_)) {
                    OPT_SOURCE_LLADDR
                } else {
                    OPT_TARGET_LLADDR
                };
                b[2..8].copy_from_slice(&mac.0);
            }
            NdiscOption::PrefixInformation(p) => {
                b[0] = OPT_PREFIX_INFO;
                b[2] = p.prefix_len;
                b[3] = p.flags.0;
                b[4..8].copy_from_slice(&p.valid_lifetime.to_be_bytes());
                b[8..12].copy_from_slice(&p.preferred_lifetime.to_be_bytes());
                b[16..32].copy_from_slice(&p.prefix.octets());
            }
            NdiscOption::Mtu(mtu) => {
                b[0] = OPT_MTU;
                b[4..8].copy_from_slice(&mtu.to_be_bytes());
            }
            NdiscOption::Rdnss(r) => {
                b[0] = OPT_RDNSS;
                b[4..8].copy_from_slice(&r.lifetime.to_be_bytes());
                for (chunk, server) in b[8..].chunks_exact_mut(16).zip(&r.servers) {
                    chunk.copy_from_slice(&server.octets());
                }
            }
            NdiscOption::Unknown { option_type, .. } => b[0] = *option_type,
        }
    }
}

/// The options of an ND message, in order. An option of length zero or
/// running past the message ends the walk with an error: RFC 4861 §6.1,
/// §7.1 say to discard such a message whole.
#[derive(Debug, Clone)]
pub struct NdiscOptions<'a> {
    rest: &'a [u8],
}

impl<'a> NdiscOptions<'a> {
    pub fn new(options: &'a [u8]) -> Self {
        NdiscOptions { rest: options }
    }
}

impl Iterator for NdiscOptions<'_> {
    type Item = Result<NdiscOption>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let error = |this: &mut Self, e| {
            this.rest = &[];
            Some(Err(e))
        };
        if self.rest.len() < 2 {
            return error(self, WireError::Truncated);
        }
        let len = usize::from(self.rest[1]) * 8;
        if len == 0 {
            return error(self, WireError::Malformed);
        }
        if len > self.rest.len() {
            return error(self, WireError::Truncated);
        }
        let (option, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(NdiscOption::parse(option))
    }
}

/// A Neighbor Discovery message (RFC 4861 §4.1-§4.4), the options the
/// adapter uses lifted out. Options it does not use (a nonce, RFC 3971) are
/// skipped on parse; options that do not belong to the message type are
/// ignored. The code, hop limit and addresses are checked by [`classify`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NdiscRepr {
    RouterSolicit {
        lladdr: Option<MacAddr>,
    },
    RouterAdvert {
        /// Cur Hop Limit for the hosts; 0 is unspecified.
        hop_limit: u8,
        flags: RaFlags,
        /// Seconds; 0 is "not a default router".
        router_lifetime: u16,
        /// Milliseconds; 0 is unspecified.
        reachable_time: u32,
        /// Milliseconds; 0 is unspecified.
        retrans_time: u32,
        lladdr: Option<MacAddr>,
        mtu: Option<u32>,
        prefix_info: Vec<PrefixInfo>,
        rdnss: Vec<Rdnss>,
    },
    NeighborSolicit {
        target_addr: Ipv6Addr,
        lladdr: Option<MacAddr>,
    },
    NeighborAdvert {
        flags: NaFlags,
        target_addr: Ipv6Addr,
        lladdr: Option<MacAddr>,
    },
}

impl NdiscRepr {
    /// Parses an RS, RA, NS or NA; any other type is
    /// [`WireError::Unsupported`]. A message shorter than its type's fixed
    /// part is `Truncated`, one with a bad option `Malformed`. The
    /// checksum is not checked here ([`Icmpv6Packet::verify_checksum`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Icmpv6Packet<T>) -> Result<Self> {
        packet.check_len()?;
        let b = packet.buffer.as_ref();
        let fixed = match packet.msg_type() {
            ICMPV6_ROUTER_SOLICIT => 8,
            ICMPV6_ROUTER_ADVERT => 16,
            ICMPV6_NEIGHBOR_SOLICIT | ICMPV6_NEIGHBOR_ADVERT => 24,
            _ => return Err(WireError::Unsupported),
        };
        if b.len() < fixed {
            return Err(WireError::Truncated);
        }
        let mut source_lladdr = None;
        let mut target_lladdr = None;
        let mut mtu = None;
        let mut prefix_info = Vec::new();
        let mut rdnss = Vec::new();
        for option in NdiscOptions::new(&b[fixed..]) {
            match option.map_err(|_| WireError::Malformed)? {
                NdiscOption::SourceLinkLayerAddr(mac) => {
                    source_lladdr.get_or_insert(mac);
                }
                NdiscOption::TargetLinkLayerAddr(mac) => {
                    target_lladdr.get_or_insert(mac);
                }
                NdiscOption::Mtu(m) => {
                    mtu.get_or_insert(m);
                }
                NdiscOption::PrefixInformation(p) => prefix_info.push(p),
                NdiscOption::Rdnss(r) => rdnss.push(r),
                NdiscOption::Unknown { .. } => {}
            }
        }
        Ok(match packet.msg_type() {
            ICMPV6_ROUTER_SOLICIT => NdiscRepr::RouterSolicit {
                lladdr: source_lladdr,
            },
            ICMPV6_ROUTER_ADVERT => NdiscRepr::RouterAdvert {
                hop_limit: b[4],
                flags: RaFlags(b[5]),
                router_lifetime: u16_at(b, 6),
                reachable_time: u32_at(b, 8),
                retrans_time: u32_at(b, 12),
                lladdr: source_lladdr,
                mtu,
                prefix_info,
                rdnss,
            },
            ICMPV6_NEIGHBOR_SOLICIT => NdiscRepr::NeighborSolicit {
                target_addr: ipv6_at(b, 8),
                lladdr: source_lladdr,
            },
            _ => NdiscRepr::NeighborAdvert {
                flags: NaFlags(b[4]),
                target_addr: ipv6_at(b, 8),
                lladdr: target_lladdr,
            },
        })
    }

    pub fn msg_type(&self) -> u8 {
        match self {
            NdiscRepr::RouterSolicit { .. } => ICMPV6_ROUTER_SOLICIT,
            NdiscRepr::RouterAdvert { .. } => ICMPV6_ROUTER_ADVERT,
            NdiscRepr::NeighborSolicit { .. } => ICMPV6_NEIGHBOR_SOLICIT,
            NdiscRepr::NeighborAdvert { .. } => ICMPV6_NEIGHBOR_ADVERT,
        }
    }

    /// The options this message emits, in the order written.
    fn options(&self) -> Vec<NdiscOption> {
        let mut options = Vec::new();
        match self {
            NdiscRepr::RouterSolicit { lladdr } | NdiscRepr::NeighborSolicit { lladdr, .. } => {
                options.extend(lladdr.map(NdiscOption::SourceLinkLayerAddr));
            }
            NdiscRepr::NeighborAdvert { lladdr, .. } => {
                options.extend(lladdr.map(NdiscOption::TargetLinkLayerAddr));
            }
            NdiscRepr::RouterAdvert {
                lladdr,
                mtu,
                prefix_info,
                rdnss,
                ..
            } => {
                options.extend(lladdr.map(NdiscOption::SourceLinkLayerAddr));
                options.extend(mtu.map(NdiscOption::Mtu));
                options.extend(
                    prefix_info
                        .iter()
                        .copied()
                        .map(NdiscOption::PrefixInformation),
                );
                options.extend(rdnss.iter().cloned().map(NdiscOption::Rdnss));
            }
        }
        options
    }

    fn fixed_len(&self) -> usize {
        match self {
            NdiscRepr::RouterSolicit { .. } => 8,
            NdiscRepr::RouterAdvert { .. } => 16,
            NdiscRepr::NeighborSolicit { .. } | NdiscRepr::NeighborAdvert { .. } => 24,
        }
    }

    /// Bytes of the whole ICMPv6 message.
    pub fn buffer_len(&self) -> usize {
        self.fixed_len()
            + self
                .options()
                .iter()
                .map(NdiscOption::buffer_len)
                .sum::<usize>()
    }

    /// Writes the message with code 0 and a zero checksum, for
    /// [`ipv6_icmp`] (or [`Icmpv6Packet::fill_checksum`]) to complete. The
    /// buffer must hold [`Self::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv6Packet<T>) {
        let fixed = self.fixed_len();
        let b = packet.buffer.as_mut();
        b[..fixed].fill(0);
        b[0] = self.msg_type();
        match self {
            NdiscRepr::RouterSolicit { .. } => {}
            NdiscRepr::RouterAdvert {
                hop_limit,
                flags,
                router_lifetime,
                reachable_time,
                retrans_time,
                ..
            } => {
                b[4] = *hop_limit;
                b[5] = flags.0;
                b[6..8].copy_from_slice(&router_lifetime.to_be_bytes());
                b[8..12].copy_from_slice(&reachable_time.to_be_bytes());
                b[12..16].copy_from_slice(&retrans_time.to_be_bytes());
            }
            NdiscRepr::NeighborSolicit { target_addr, .. } => {
                b[8..24].copy_from_slice(&target_addr.octets());
            }
            NdiscRepr::NeighborAdvert {
                flags, target_addr, ..
            } => {
                b[4] = flags.0;
                b[8..24].copy_from_slice(&target_addr.octets());
            }
        }
        let mut at = fixed;
        for option in self.options() {
            option.emit(&mut b[at..]);
            at += option.buffer_len();
        }
    }

    /// The message as bytes, checksum zero: the `message` for [`ipv6_icmp`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = vec![0; self.buffer_len()];
        self.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]));
        buf
    }
}

// ---------------------------------------------------------------------------
// Addresses

/// The link-local address of an interface with this MAC: fe80::/64 and
/// the modified EUI-64 interface identifier, the MAC with ff:fe in the
/// middle and the universal/local bit inverted (RFC 4291 §2.5.1 and
/// appendix A, RFC 2464 §4-§5).
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The solicited-node multicast address of `ip`: ff02::1:ff00:0/104 and
/// its low 24 bits (RFC 4291 §2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let a = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, a[13], a[14], a[15],
    ])
}

/// Whether `ip` is a solicited-node multicast address (ff02::1:ff00:0/104).
pub fn is_solicited_node(ip: Ipv6Addr) -> bool {
    ip.octets()[..13] == solicited_node(Ipv6Addr::UNSPECIFIED).octets()[..13]
}

/// The MAC an IPv6 multicast address is sent to: 33:33 and its low 32
/// bits (RFC 2464 §7).
pub fn multicast_mac(ip: Ipv6Addr) -> MacAddr {
    let a = ip.octets();
    MacAddr([0x33, 0x33, a[12], a[13], a[14], a[15]])
}

/// Whether `ip` is in fe80::/10 (RFC 4291 §2.5.6).
pub fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

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

// ---------------------------------------------------------------------------
// Builders
//
// Each returns a whole frame, every length and checksum filled in. A
// payload longer than the packet can carry gives an empty frame: nothing
// to send (it would not fit any LAN's MTU either).

/// An Ethernet II frame around `payload`.
pub fn ethernet(dst: MacAddr, src: MacAddr, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; ETHERNET_HEADER_LEN + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        dst_addr: dst,
        src_addr: src,
        ethertype,
    }
    .emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// An ARP packet in a frame from `src_mac` to `dst_mac`.
pub fn arp(src_mac: MacAddr, dst_mac: MacAddr, arp: &ArpRepr) -> Vec<u8> {
    let mut buf = vec![0; ETHERNET_HEADER_LEN + ARP_LEN];
    EthernetRepr {
        dst_addr: dst_mac,
        src_addr: src_mac,
        ethertype: EtherType::Arp,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    arp.emit(&mut ArpPacket::new_unchecked(
        &mut buf[ETHERNET_HEADER_LEN..],
    ));
    buf
}

/// A UDP datagram in IPv4 (TTL 64, DF, identification 0) in a frame.
/// Empty if `payload` is longer than [`MAX_IPV4_UDP_PAYLOAD`].
pub fn ipv4_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    if payload.len() > MAX_IPV4_UDP_PAYLOAD {
        tracing::debug!(len = payload.len(), "UDP payload too long for IPv4");
        return Vec::new();
    }
    let udp_len = UDP_HEADER_LEN + payload.len();
    let ip_at = ETHERNET_HEADER_LEN;
    let udp_at = ip_at + IPV4_HEADER_LEN;
    let mut buf = vec![0; udp_at + udp_len];
    EthernetRepr {
        dst_addr: dst_mac,
        src_addr: src_mac,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    Ipv4Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: DEFAULT_HOP_LIMIT,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut buf[ip_at..]));
    UdpRepr { src_port, dst_port }.emit(
        &mut UdpPacket::new_unchecked(&mut buf[udp_at..]),
        src_ip.into(),
        dst_ip.into(),
        payload,
    );
    buf
}

/// A UDP datagram in IPv6 (hop limit 64) in a frame. Empty if `payload` is
/// longer than [`MAX_IPV6_UDP_PAYLOAD`].
pub fn ipv6_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    if payload.len() > MAX_IPV6_UDP_PAYLOAD {
        tracing::debug!(len = payload.len(), "UDP payload too long for IPv6");
        return Vec::new();
    }
    let udp_len = UDP_HEADER_LEN + payload.len();
    let udp_at = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    let mut buf = ipv6_frame(
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        IpProtocol::Udp,
        DEFAULT_HOP_LIMIT,
        udp_len,
    );
    UdpRepr { src_port, dst_port }.emit(
        &mut UdpPacket::new_unchecked(&mut buf[udp_at..]),
        src_ip.into(),
        dst_ip.into(),
        payload,
    );
    buf
}

/// An ICMPv6 message in IPv6 in a frame, its checksum computed. `message`
/// runs from the type byte on, the two checksum bytes included (their
/// value is ignored): [`NdiscRepr::to_bytes`] gives one. ND messages need
/// `hop_limit` [`ND_HOP_LIMIT`]. Empty if `message` is shorter than 4 bytes
/// or longer than 65 535.
pub fn ipv6_icmp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    hop_limit: u8,
    message: &[u8],
) -> Vec<u8> {
    if message.len() < 4 || message.len() > usize::from(u16::MAX) {
        tracing::debug!(
            len = message.len(),
            "not an ICMPv6 message of an IPv6 packet"
        );
        return Vec::new();
    }
    let icmp_at = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN;
    let mut buf = ipv6_frame(
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        IpProtocol::Icmpv6,
        hop_limit,
        message.len(),
    );
    buf[icmp_at..].copy_from_slice(message);
    Icmpv6Packet::new_unchecked(&mut buf[icmp_at..]).fill_checksum(src_ip, dst_ip);
    buf
}

/// A frame with Ethernet and IPv6 headers and `payload_len` zero bytes
/// after them.
fn ipv6_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    next_header: IpProtocol,
    hop_limit: u8,
    payload_len: usize,
) -> Vec<u8> {
    let ip_at = ETHERNET_HEADER_LEN;
    let mut buf = vec![0; ip_at + IPV6_HEADER_LEN + payload_len];
    EthernetRepr {
        dst_addr: dst_mac,
        src_addr: src_mac,
        ethertype: EtherType::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    Ipv6Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header,
        payload_len,
        hop_limit,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut buf[ip_at..]));
    buf
}

/// Frames and helpers shared by this module's and the proxy's tests.
///
/// The frames were made by a separate generator (its own field packing,
/// its own checksum as a sum modulo 0xffff) and every checksum in them was
/// checked by tcpdump (`-vvv`: "sum ok", no "bad cksum"). They are
/// real-world shaped: Linux's ARP, RS, DAD (with its RFC 7527 nonce) and
/// NS; ISC dhclient's DHCPDISCOVER (TOS 0x10, no DF, 300-byte BOOTP); a
/// DHCPv6 Solicit with DUID-LL; DNS queries; an MLDv2 report behind a
/// Hop-by-Hop header. Fields are separated by spaces, layers by lines.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::MacAddr;

    pub const ADAPTER: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
    pub const ADAPTER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0001);
    pub const GN_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0a, 0x01]);
    pub const A4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0xa);
    pub const A_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0x0a01);
    pub const GN_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0x01]);
    pub const B4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0xb);
    pub const GW4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 1);
    pub const PEER4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 20);
    pub const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 1, 0x20);
    pub const ROGUE: MacAddr = MacAddr([0x02, 0, 0, 0, 0xee, 0x01]);
    pub const ROGUE_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0xff, 0xfe00, 0xee01);

    /// Bytes from hex, whitespace ignored.
    pub fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len() % 2 == 0, "odd number of hex digits");
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    /// The Internet checksum computed another way than the module's: the
    /// ones'-complement sum is the sum modulo 0xffff (RFC 1071 §2), with
    /// 0xffff standing for a non-zero sum that is 0 modulo 0xffff.
    pub fn reference_checksum(data: &[u8]) -> u16 {
        let total: u64 = data
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i % 2 == 0 {
                    u64::from(*b) << 8
                } else {
                    u64::from(*b)
                }
            })
            .sum();
        let mut sum = (total % 0xffff) as u16;
        if sum == 0 && total != 0 {
            sum = 0xffff;
        }
        !sum
    }

    /// Recomputes, with [`reference_checksum`], the IPv4 header checksum and
    /// the UDP or ICMPv6 checksum of a frame without IPv6 extension
    /// headers, after a test changed a field. Leaves alone what its length
    /// fields do not fit.
    pub fn fix_checksums(f: &mut [u8]) {
        let be = |f: &[u8], at: usize| usize::from(u16::from_be_bytes([f[at], f[at + 1]]));
        if f.len() < 14 {
            return;
        }
        match be(f, 12) {
            0x0800 => {
                let ihl = usize::from(f[14.min(f.len() - 1)] & 0x0f) * 4;
                if ihl < 20 || f.len() < 14 + ihl {
                    return;
                }
                f[24..26].fill(0);
                let c = reference_checksum(&f[14..14 + ihl]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
                let at = 14 + ihl;
                if f[23] != 17 || f.len() < at + 8 {
                    return;
                }
                let len = be(f, at + 4);
                if len < 8 || f.len() < at + len {
                    return;
                }
                let mut pseudo = f[26..34].to_vec();
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&(len as u16).to_be_bytes());
                f[at + 6..at + 8].fill(0);
                pseudo.extend_from_slice(&f[at..at + len]);
                let c = match reference_checksum(&pseudo) {
                    0 => 0xffff,
                    c => c,
                };
                f[at + 6..at + 8].copy_from_slice(&c.to_be_bytes());
            }
            0x86dd => {
                if f.len() < 54 {
                    return;
                }
                let len = be(f, 18);
                let next = f[20];
                let field = match next {
                    58 => 56,
                    17 => 60,
                    _ => return,
                };
                if len < field + 2 - 54 || f.len() < 54 + len {
                    return;
                }
                let mut pseudo = f[22..54].to_vec();
                pseudo.extend_from_slice(&(len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, next]);
                f[field..field + 2].fill(0);
                pseudo.extend_from_slice(&f[54..54 + len]);
                let mut c = reference_checksum(&pseudo);
                if next == 17 && c == 0 {
                    c = 0xffff;
                }
                f[field..field + 2].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
    }

    /// Sets an IPv6 frame's payload length to what follows the header.
    pub fn fix_ipv6_len(f: &mut [u8]) {
        let len = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&len.to_be_bytes());
    }

    /// Every fixture frame, by name.
    pub fn all() -> Vec<(&'static str, Vec<u8>)> {
        [
            ("ARP_REQUEST_GATEWAY", ARP_REQUEST_GATEWAY),
            ("ARP_PROBE_PADDED", ARP_PROBE_PADDED),
            ("RS_UNSPECIFIED", RS_UNSPECIFIED),
            ("RS_LINK_LOCAL", RS_LINK_LOCAL),
            ("NS_DAD", NS_DAD),
            ("NS_RESOLVE_PEER", NS_RESOLVE_PEER),
            ("NS_NUD_PEER", NS_NUD_PEER),
            ("NS_ROUTER_LL", NS_ROUTER_LL),
            ("DHCP4_DISCOVER", DHCP4_DISCOVER),
            ("DHCP6_SOLICIT", DHCP6_SOLICIT),
            ("DNS4_QUERY", DNS4_QUERY),
            ("DNS6_QUERY", DNS6_QUERY),
            ("ICMP4_ECHO_PEER", ICMP4_ECHO_PEER),
            ("RA_ROGUE", RA_ROGUE),
            ("DHCP4_OFFER_ROGUE", DHCP4_OFFER_ROGUE),
            ("DHCP6_ADVERTISE_ROGUE", DHCP6_ADVERTISE_ROGUE),
            ("NA_UNSOLICITED", NA_UNSOLICITED),
            ("TCP6_SYN_PEER", TCP6_SYN_PEER),
            ("MLD_REPORT", MLD_REPORT),
            ("BUILT_IPV4_UDP", BUILT_IPV4_UDP),
            ("BUILT_IPV6_UDP", BUILT_IPV6_UDP),
            ("NA_PROXY_PEER", NA_PROXY_PEER),
            ("NA_PROXY_ROUTER", NA_PROXY_ROUTER),
            ("NA_PROXY_DAD", NA_PROXY_DAD),
            ("RA_ADAPTER", RA_ADAPTER),
        ]
        .into_iter()
        .map(|(name, h)| (name, hex(h)))
        .collect()
    }

    /// GN A asks for the gateway, as Linux sends it (42 bytes, unpadded).
    pub const ARP_REQUEST_GATEWAY: &str = "
        ffffffffffff 020000000a01 0806
        0001 0800 06 04 0001 020000000a01 6440000a 000000000000 64400001";

    /// GN A probes its offered address (RFC 5227, `arping -D`), padded to
    /// 60 bytes as a NIC delivers it.
    pub const ARP_PROBE_PADDED: &str = "
        ffffffffffff 020000000a01 0806
        0001 0800 06 04 0001 020000000a01 00000000 000000000000 6440000a
        000000000000000000000000000000000000";

    /// Linux at boot: RS from :: to all-routers, no option.
    pub const RS_UNSPECIFIED: &str = "
        333300000002 020000000a01 86dd
        60000000 0008 3a ff 00000000000000000000000000000000 ff020000000000000000000000000002
        85 00 7bb8 00000000";

    /// RS from the link-local address with a Source Link-Layer Address option.
    pub const RS_LINK_LOCAL: &str = "
        333300000002 020000000a01 86dd
        60000000 0010 3a ff fe80000000000000000000fffe000a01 ff020000000000000000000000000002
        85 00 672c 00000000
        0101020000000a01";

    /// DAD for GN A's VIPv6: from ::, to its solicited-node address, with a nonce option (type 14).
    pub const NS_DAD: &str = "
        3333ff00000a 020000000a01 86dd
        60000000 0020 3a ff 00000000000000000000000000000000 ff0200000000000000000001ff00000a
        87 00 4fb0 00000000 fd7a637970680000000000000000000a
        0e01a1b2c3d4e5f6";

    /// GN A resolves a peer VIP: from its VIPv6 to the solicited-node address, SLLA.
    pub const NS_RESOLVE_PEER: &str = "
        3333ff010020 020000000a01 86dd
        60000000 0020 3a ff fd7a637970680000000000000000000a ff0200000000000000000001ff010020
        87 00 ca98 00000000 fd7a6379706800000000000000010020
        0101020000000a01";

    /// GN A's unicast NUD probe for a peer VIP (RFC 4861 §7.3.1), no option.
    pub const NS_NUD_PEER: &str = "
        020000000001 020000000a01 86dd
        60000000 0018 3a ff fd7a637970680000000000000000000a fd7a6379706800000000000000010020
        87 00 044b 00000000 fd7a6379706800000000000000010020";

    /// GN A resolves its default router, the adapter's link-local address.
    pub const NS_ROUTER_LL: &str = "
        3333ff000001 020000000a01 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000a01 ff0200000000000000000001ff000001
        87 00 6899 00000000 fe80000000000000000000fffe000001
        0101020000000a01";

    /// ISC dhclient's DHCPDISCOVER: 0.0.0.0:68 to 255.255.255.255:67.
    pub const DHCP4_DISCOVER: &str = "
        ffffffffffff 020000000a01 0800
        4510 0148 0000 0000 40 11 7996 00000000 ffffffff
        0044 0043 0134 b9af
        010106003903f326000000000000000000000000000000000000000002000000
        0a01000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000006382536335010137040103060fff000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        000000000000000000000000";

    /// DHCPv6 Solicit from GN A's link-local address to ff02::1:2, hop limit 1.
    pub const DHCP6_SOLICIT: &str = "
        333300010002 020000000a01 86dd
        60000000 0030 11 01 fe80000000000000000000fffe000a01 ff020000000000000000000000010002
        0222 0223 0030 c211
        015a1b2c0001000a00030001020000000a010008000200000003000c00000a010000000000000000";

    /// A query for peer.example A to the gateway.
    pub const DNS4_QUERY: &str = "
        020000000001 020000000a01 0800
        4500 003a 1c46 4000 40 11 55e2 6440000a 64400001
        9c40 0035 0026 0f3b
        1234010000010000000000000470656572076578616d706c650000010001";

    /// A query for peer.example AAAA to the gateway's VIPv6.
    pub const DNS6_QUERY: &str = "
        020000000001 020000000a01 86dd
        60000000 0026 11 40 fd7a637970680000000000000000000a fd7a6379706800000000000000000001
        9c41 0035 0026 03f9
        4321010000010000000000000470656572076578616d706c6500001c0001";

    /// GN A pings a peer VIP.
    pub const ICMP4_ECHO_PEER: &str = "
        020000000001 020000000a01 0800
        4500 0024 5bd1 4000 40 01 156a 6440000a 64400114
        08 00 4b4a 00010001 637970686f6e6963";

    /// A rogue router's RA: M, O, SLLA, MTU, PIO 2001:db8:1::/64, RDNSS.
    pub const RA_ROGUE: &str = "
        333300000001 02000000ee01 86dd
        60000000 0058 3a ff fe80000000000000000000fffe00ee01 ff020000000000000000000000000001
        86 00 0696 40c0 0708 00000000 00000000
        010102000000ee01
        05010000000005dc
        030440c000015180000038400000000020010db8000100000000000000000000
        190300000000025820010db8000100000000000000000053";

    /// A rogue DHCPv4 server's OFFER, 67 to 68.
    pub const DHCP4_OFFER_ROGUE: &str = "
        ffffffffffff 02000000ee01 0800
        4500 0110 0000 4000 40 11 77dc c0000201 ffffffff
        0043 0044 00fc 185d
        020106003903f326000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        0000000000000000000000000000000000000000000000000000000000000000
        00000000000000000000000063825363350102ff";

    /// A rogue DHCPv6 server's Advertise, 547 to 546.
    pub const DHCP6_ADVERTISE_ROGUE: &str = "
        020000000a01 02000000ee01 86dd
        60000000 000c 11 40 fe80000000000000000000fffe00ee01 fe80000000000000000000fffe000a01
        0223 0222 000c eb06
        025a1b2c";

    /// GN A's unsolicited NA for its VIPv6 to all-nodes, Override set.
    pub const NA_UNSOLICITED: &str = "
        333300000001 020000000a01 86dd
        60000000 0020 3a ff fd7a637970680000000000000000000a ff020000000000000000000000000001
        88 00 a7d1 20000000 fd7a637970680000000000000000000a
        0201020000000a01";

    /// A TCP SYN to a peer VIPv6.
    pub const TCP6_SYN_PEER: &str = "
        020000000001 020000000a01 86dd
        60000000 0014 06 40 fd7a637970680000000000000000000a fd7a6379706800000000000000010020
        c350001600000001000000005002faf04ea60000";

    /// An MLDv2 report to ff02::16 behind a Hop-by-Hop router alert.
    pub const MLD_REPORT: &str = "
        333300000016 020000000a01 86dd
        60000000 0024 00 01 fe80000000000000000000fffe000a01 ff020000000000000000000000000016
        3a00050200000100
        8f0067fe0000000104000000ff0200000000000000000001ff00000a";

    /// What `ipv4_udp` must make: adapter to GN A, 100.64.0.1:67 to 100.64.0.10:68.
    pub const BUILT_IPV4_UDP: &str = "
        020000000a01 020000000001 0800
        4500 002a 0000 4000 40 11 7238 64400001 6440000a
        0043 0044 0016 9100
        637970686f6e6963206468637034";

    /// What `ipv6_udp` must make: link-local 547 to 546, odd-length payload.
    pub const BUILT_IPV6_UDP: &str = "
        020000000a01 020000000001 86dd
        60000000 0017 11 40 fe80000000000000000000fffe000001 fe80000000000000000000fffe000a01
        0223 0222 0017 2fc6
        637970686f6e696320646863703621";

    /// The ND proxy's answer to NS_RESOLVE_PEER: S and O, TLLA, from the adapter's link-local.
    pub const NA_PROXY_PEER: &str = "
        020000000a01 020000000001 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000001 fd7a637970680000000000000000000a
        88 00 733c 60000000 fd7a6379706800000000000000010020
        0201020000000001";

    /// The ND proxy's answer to NS_ROUTER_LL: R, S and O, from the target.
    pub const NA_PROXY_ROUTER: &str = "
        020000000a01 020000000001 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000001 fe80000000000000000000fffe000a01
        88 00 911c e0000000 fe80000000000000000000fffe000001
        0201020000000001";

    /// The ND proxy's answer to DAD for a peer VIP: O only, to all-nodes.
    pub const NA_PROXY_DAD: &str = "
        333300000001 020000000001 86dd
        60000000 0020 3a ff fe80000000000000000000fffe000001 ff020000000000000000000000000001
        88 00 859f 20000000 fd7a6379706800000000000000010020
        0201020000000001";

    /// An RA as the adapter sends it: M, O, SLLA, MTU 1280, PIO
    /// fd7a:6379:7068::/48 with L only, RDNSS = the gateway.
    pub const RA_ADAPTER: &str = "
        333300000001 020000000001 86dd
        60000000 0058 3a ff fe80000000000000000000fffe000001 ff020000000000000000000000000001
        86 00 31d2 40c0 0708 00000000 00000000
        0101020000000001
        0501000000000500
        03043080ffffffffffffffff00000000fd7a6379706800000000000000000000
        1903000000000708fd7a6379706800000000000000000001";
}

#[cfg(test)]
mod tests;
