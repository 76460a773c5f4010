//! The ARP proxy and the ND proxy (seed slides 17 and 19): the adapter
//! answers for every overlay address a general node asks the LAN about
//! with its own MAC, so peer VIPs and the gateway are on-link and every
//! packet to them comes to the adapter (`docs/adapter.md`, "Addresses the
//! GNs see").
//!
//! [`Proxy::answer`] takes a frame's [`Class`] and returns the frame to
//! send back, or nothing. It answers only known general nodes (a MAC on the
//! operator's list), asking from their own address, for an address that is
//! not theirs:
//!
//! | asked | ARP (RFC 826, RFC 5227) | ND (RFC 4861) |
//! |---|---|---|
//! | the gateway | reply | NA, Router flag |
//! | the adapter's link-local address | - | NA, Router flag |
//! | another address in the overlay prefix | reply | NA |
//! | the asker's own VIP (probe, announcement, DAD) | nothing | nothing |
//! | anything else | nothing | nothing |
//!
//! Everything refused is counted by [`Refusal`] in [`ProxyCounters`].
//!
//! State: the general-node table is the operator's list, replaced whole by
//! [`Proxy::set_general_nodes`]; nothing the LAN sends adds to it. Apart
//! from it the proxy holds only fixed counters, so no LAN input can grow
//! its memory. Each answer is one frame for one request and at most 8 bytes
//! longer (an ARP reply is 42 bytes; an NA with its option 86, an NS at
//! least 78), so the proxy amplifies nothing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::frame::{self, ArpOperation, ArpRepr, Class, NaFlags, NdiscRepr};
use crate::prefix::{Ipv4Prefix, Ipv6Prefix};
use crate::MacAddr;

/// What the proxy needs to know about the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The adapter's MAC on the LAN: every answer names it.
    pub mac: MacAddr,
    /// The gateway the general nodes are given: the adapter's own VIPv4.
    pub gateway_v4: Ipv4Addr,
    /// The adapter's own VIPv6 (the RDNSS and DHCPv6 DNS server).
    pub gateway_v6: Ipv6Addr,
    /// The overlay's IPv4 prefix (100.64.0.0/10 by default).
    pub overlay_v4: Ipv4Prefix,
    /// The overlay's IPv6 prefix (a ULA /48).
    pub overlay_v6: Ipv6Prefix,
}

/// A general node's overlay addresses, from the NMS's Information Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneralNode {
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
}

/// Why the proxy sent nothing for an ARP request or a Neighbor
/// Solicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Refusal {
    /// The frame's source MAC is not a general node of this adapter.
    #[error("unknown MAC")]
    UnknownMac,
    /// The ARP sender hardware address or the NS source link-layer address
    /// is not the frame's source MAC.
    #[error("link-layer address is not the frame's source")]
    SenderMismatch,
    /// A known general node asking from an address that is not its own
    /// (another node's VIP, or anything but its VIP, 0.0.0.0 in a probe,
    /// :: in DAD, or a link-local address).
    #[error("asked from another address than the node's own")]
    ForeignSource,
    /// Asked about its own VIP: an ARP probe or announcement (RFC 5227
    /// §2.1, §2.3) or DAD (RFC 4862 §5.4); silence says the address is
    /// free.
    #[error("asked about its own address")]
    OwnAddress,
    /// An ARP reply or an opcode other than request.
    #[error("not an ARP request")]
    NotRequest,
    /// The address asked for is neither the gateway nor in the overlay.
    #[error("target outside the overlay")]
    OutsideOverlay,
}

/// What the proxy did, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    pub arp_answered: u64,
    pub nd_answered: u64,
    pub unknown_mac: u64,
    pub sender_mismatch: u64,
    pub foreign_source: u64,
    pub own_address: u64,
    pub not_request: u64,
    pub outside_overlay: u64,
}

impl ProxyCounters {
    /// How many were refused for `reason`.
    pub fn refused(&self, reason: Refusal) -> u64 {
        match reason {
            Refusal::UnknownMac => self.unknown_mac,
            Refusal::SenderMismatch => self.sender_mismatch,
            Refusal::ForeignSource => self.foreign_source,
            Refusal::OwnAddress => self.own_address,
            Refusal::NotRequest => self.not_request,
            Refusal::OutsideOverlay => self.outside_overlay,
        }
    }

    fn count(&mut self, reason: Refusal) {
        let c = match reason {
            Refusal::UnknownMac => &mut self.unknown_mac,
            Refusal::SenderMismatch => &mut self.sender_mismatch,
            Refusal::ForeignSource => &mut self.foreign_source,
            Refusal::OwnAddress => &mut self.own_address,
            Refusal::NotRequest => &mut self.not_request,
            Refusal::OutsideOverlay => &mut self.outside_overlay,
        };
        *c += 1;
    }
}

/// The ARP and ND proxy of one LAN.
///
/// Call [`Proxy::set_general_nodes`] whenever the NMS's list changes, then
/// [`Proxy::answer`] for every classified frame; send what it returns on
/// the LAN. [`Proxy::counters`] at any time.
#[derive(Debug, Clone)]
pub struct Proxy {
    config: ProxyConfig,
    /// The adapter's link-local address (EUI-64 of its MAC), the source of
    /// its RAs and so the general nodes' default router.
    link_local: Ipv6Addr,
    nodes: BTreeMap<MacAddr, GeneralNode>,
    counters: ProxyCounters,
}

/// What the proxy makes of a class.
enum Decision {
    /// Not an ARP packet nor an NS: not the proxy's business.
    NotMine,
    Answer(Vec<u8>),
    Refuse(Refusal),
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Self {
        Proxy {
            config,
            link_local: frame::link_local(config.mac),
            nodes: BTreeMap::new(),
            counters: ProxyCounters::default(),
        }
    }

    /// Replaces the general-node table: MAC to VIPs.
    pub fn set_general_nodes(&mut self, nodes: impl IntoIterator<Item = (MacAddr, GeneralNode)>) {
        self.nodes = nodes.into_iter().collect();
    }

    pub fn general_node(&self, mac: MacAddr) -> Option<&GeneralNode> {
        self.nodes.get(&mac)
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The adapter's link-local address.
    pub fn link_local(&self) -> Ipv6Addr {
        self.link_local
    }

    pub fn counters(&self) -> &ProxyCounters {
        &self.counters
    }

    /// The answer to an ARP request or a Neighbor Solicitation, or
    /// nothing. Other classes get nothing and are not counted.
    #[must_use]
    pub fn answer(&mut self, class: &Class) -> Option<Vec<u8>> {
        match self.decide(class) {
            Decision::NotMine => None,
            Decision::Answer(frame) => {
                match class {
                    Class::Arp { .. } => self.counters.arp_answered += 1,
                    _ => self.counters.nd_answered += 1,
                }
                Some(frame)
            }
            Decision::Refuse(reason) => {
                tracing::trace!(mac = ?class.src_mac(), %reason, "proxy refused");
                self.counters.count(reason);
                None
            }
        }
    }

    fn decide(&self, class: &Class) -> Decision {
        let outcome = match class {
            Class::Arp { src_mac, arp } => self.arp(*src_mac, arp),
            Class::NeighborSolicitation {
                src_mac,
                src_ip,
                target,
                lladdr,
                ..
            } => self.neighbor(*src_mac, *src_ip, *target, *lladdr),
            _ => return Decision::NotMine,
        };
        match outcome {
            Ok(frame) => Decision::Answer(frame),
            Err(reason) => Decision::Refuse(reason),
        }
    }

    /// RFC 826 with RFC 5227's probes and announcements.
    fn arp(&self, src_mac: MacAddr, request: &ArpRepr) -> Result<Vec<u8>, Refusal> {
        if request.operation != ArpOperation::Request {
            return Err(Refusal::NotRequest);
        }
        let node = self.nodes.get(&src_mac).ok_or(Refusal::UnknownMac)?;
        // The reply goes to the sender hardware address (RFC 826): one
        // that is not the frame's source would steer it elsewhere.
        if request.source_hardware_addr != src_mac {
            return Err(Refusal::SenderMismatch);
        }
        let (sender, target) = (request.source_protocol_addr, request.target_protocol_addr);
        // A probe has sender 0.0.0.0 (RFC 5227 §2.1.1); otherwise the
        // sender must be the node's own VIP.
        if !sender.is_unspecified() && sender != node.vip4 {
            return Err(Refusal::ForeignSource);
        }
        // A probe for its own VIP, or an announcement (sender = target,
        // RFC 5227 §2.3): silence means no conflict.
        if target == node.vip4 {
            return Err(Refusal::OwnAddress);
        }
        if !self.proxies_v4(target) {
            return Err(Refusal::OutsideOverlay);
        }
        // A probe for a peer's VIP or the gateway is answered too: the
        // reply's sender IP is the probed address, so the node sees the
        // conflict (RFC 5227 §2.1.1) and does not take an address in use.
        let reply = ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.config.mac,
            source_protocol_addr: target,
            target_hardware_addr: request.source_hardware_addr,
            target_protocol_addr: sender,
        };
        Ok(frame::arp(self.config.mac, src_mac, &reply))
    }

    /// The gateway, and any address of the overlay prefix but its network
    /// and broadcast addresses, which no host has.
    fn proxies_v4(&self, a: Ipv4Addr) -> bool {
        let prefix = self.config.overlay_v4;
        if a == self.config.gateway_v4 {
            return true;
        }
        let edge = prefix.prefix_len() < 31 && (a == prefix.addr() || a == prefix.broadcast());
        prefix.contains(a) && !edge
    }

    /// RFC 4861 §7.2.3-§7.2.4 and §7.2.8, for NS from a known node.
    fn neighbor(
        &self,
        src_mac: MacAddr,
        src_ip: Ipv6Addr,
        target: Ipv6Addr,
        lladdr: Option<MacAddr>,
    ) -> Result<Vec<u8>, Refusal> {
        let node = self.nodes.get(&src_mac).ok_or(Refusal::UnknownMac)?;
        if lladdr.is_some_and(|l| l != src_mac) {
            return Err(Refusal::SenderMismatch);
        }
        let dad = src_ip.is_unspecified();
        // A node solicits from its VIPv6 or from its link-local address
        // (RFC 4861 §7.2.2 takes the source of the packet that prompted
        // the solicitation); the link-local one is not on any list, but an
        // answer to it goes only to this node's MAC.
        if !dad && src_ip != node.vip6 && !frame::is_link_local(src_ip) {
            return Err(Refusal::ForeignSource);
        }
        if target == node.vip6 {
            return Err(Refusal::OwnAddress);
        }
        let router = target == self.config.gateway_v6 || target == self.link_local;
        if !router && !self.config.overlay_v6.contains(target) {
            return Err(Refusal::OutsideOverlay);
        }
        // Override is set although §7.2.8 says a proxy SHOULD clear it:
        // that is so a real owner on the link wins, and these addresses
        // have no owner on this link, so the adapter's answer must replace
        // any stale entry.
        let mut flags = NaFlags::OVERRIDE;
        if router {
            flags = flags | NaFlags::ROUTER;
        }
        // §7.2.4: to a solicitation from the unspecified address (DAD),
        // multicast to all-nodes with Solicited clear; otherwise unicast to
        // the solicitation's source with Solicited set, which is also the
        // answer to a unicast NUD probe (§7.3.1).
        let (dst_ip, dst_mac) = if dad {
            (frame::ALL_NODES, frame::multicast_mac(frame::ALL_NODES))
        } else {
            flags = flags | NaFlags::SOLICITED;
            (src_ip, src_mac)
        };
        // The adapter's own addresses speak for themselves; for a proxied
        // one it speaks from its link-local address, as Linux's proxy_ndp
        // does.
        let src = if router { target } else { self.link_local };
        let advert = NdiscRepr::NeighborAdvert {
            flags,
            target_addr: target,
            lladdr: Some(self.config.mac),
        };
        Ok(frame::ipv6_icmp(
            self.config.mac,
            dst_mac,
            src,
            dst_ip,
            frame::ND_HOP_LIMIT,
            &advert.to_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests;
