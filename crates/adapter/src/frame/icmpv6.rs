//! ICMPv6 (RFC 4443) and Neighbor Discovery with its options (RFC 4861, RFC 8106).

use super::*;

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
