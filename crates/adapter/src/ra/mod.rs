//! Router Advertisements for the general nodes' LAN (RFC 4861 §6.2,
//! RFC 8106), sans-IO.
//!
//! The adapter is the only router the GNs see (`docs/adapter.md`,
//! "Addresses the GNs see"). Its advertisements say: get your address and
//! the rest of your configuration from stateful DHCPv6 (M=1, O=1); the
//! overlay's prefix is on-link but not for SLAAC (Prefix Information with
//! L=1, A=0), so a GN resolves peer VIPv6s with Neighbor Solicitations that
//! the ND proxy answers; the resolver is the adapter's own VIPv6 (RDNSS,
//! RFC 8106); the link MTU is the tunnel's.
//!
//! # Timing
//!
//! - Unsolicited advertisements go to all-nodes every
//!   `[MinRtrAdvInterval, MaxRtrAdvInterval]`, uniformly at random
//!   (§6.2.4). The first one is due when the advertiser is made; the timer
//!   after each of the first [`MAX_INITIAL_RTR_ADVERTISEMENTS`] is capped at
//!   [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] so a host that joins with the
//!   adapter learns the router quickly.
//! - A Router Solicitation is answered by a multicast advertisement (the
//!   usual case of §6.2.6: one answer serves every host that is starting),
//!   after a random delay of up to [`MAX_RA_DELAY_TIME`], never sooner than
//!   [`MIN_DELAY_BETWEEN_RAS`] after the previous multicast advertisement,
//!   and not at all if an advertisement is already due before that.
//!   Solicitations that arrive while an answer is pending share it (the delay
//!   counts from the first). Sending any multicast advertisement resets the
//!   periodic timer, as §6.2.6 asks.
//!
//! # Call order
//!
//! Inputs: [`RouterAdvertiser::handle_solicitation`] for every valid RS the
//! classifier passes (hop limit 255, code 0, and no source link-layer
//! option from the unspecified address, §6.1.1: the frame layer checks
//! those), [`RouterAdvertiser::handle_timeout`] when the time from
//! [`RouterAdvertiser::poll_timeout`] has come. Outputs:
//! [`RouterAdvertiser::poll_advertisement`] after any input (it returns the
//! advertisement that is due, if any), then `poll_timeout` for the next
//! wake-up. [`RouterAdvertiser::shutdown`] gives the final advertisement
//! (router lifetime 0, §6.2.5) and stops the timers.
//!
//! Time and randomness are inputs: `now` on every call, a seed at
//! construction.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::prefix::Ipv6Prefix;
use crate::MacAddr;

/// §10: the timer after each of the first advertisements is capped at this.
pub const MAX_INITIAL_RTR_ADVERT_INTERVAL: Duration = Duration::from_secs(16);
/// §10: how many advertisements get the capped timer.
pub const MAX_INITIAL_RTR_ADVERTISEMENTS: u32 = 3;
/// §10: multicast advertisements are at least this far apart.
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);
/// §10: the answer to a solicitation waits a random time up to this.
pub const MAX_RA_DELAY_TIME: Duration = Duration::from_millis(500);
/// §6.2.1 default MaxRtrAdvInterval.
pub const DEFAULT_MAX_RTR_ADV_INTERVAL: Duration = Duration::from_secs(600);
/// §10 MAX_REACHABLE_TIME, the largest Reachable Time an RA may carry.
pub const MAX_REACHABLE_TIME_MS: u32 = 3_600_000;
/// All-nodes multicast, the destination of every advertisement we send.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// `33:33` + the low 32 bits of ff02::1 (RFC 2464 §7).
pub const ALL_NODES_MAC: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 1]);
/// Neighbor Discovery messages are sent with hop limit 255 (§6.1.2).
pub const ND_HOP_LIMIT: u8 = 255;
/// ICMPv6 type of a Router Advertisement (§4.2).
pub const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;

/// RA header flag: addresses come from DHCPv6 (§4.2 "M").
const FLAG_MANAGED: u8 = 0x80;
/// RA header flag: other configuration comes from DHCPv6 (§4.2 "O").
const FLAG_OTHER: u8 = 0x40;
/// Prefix Information flag: on-link (§4.6.2 "L").
const PREFIX_ON_LINK: u8 = 0x80;

/// ND option types (§4.6, RFC 8106 §5.1).
const OPT_SOURCE_LL: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;

/// The link-local address made from a MAC by modified EUI-64 (RFC 4291
/// appendix A): the address the adapter advertises from.
pub fn eui64_link_local(mac: MacAddr) -> Ipv6Addr {
    crate::frame::link_local(mac)
}

/// What the adapter advertises and how often (the AdvXxx variables of
/// RFC 4861 §6.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaConfig {
    /// The adapter's LAN MAC: the Ethernet source and the Source Link-Layer
    /// Address option.
    pub mac: MacAddr,
    /// The IPv6 source: a link-local address (§6.1.2 has hosts drop RAs from
    /// anything else).
    pub link_local: Ipv6Addr,
    /// The overlay's IPv6 prefix, advertised on-link (L=1) and not for
    /// autoconfiguration (A=0). A /48 is fine: only SLAAC needs a /64.
    pub prefix: Ipv6Prefix,
    /// Prefix Information Valid Lifetime, seconds (`u32::MAX` = infinity).
    pub prefix_valid_lifetime: u32,
    /// Prefix Information Preferred Lifetime, seconds; at most the valid one.
    pub prefix_preferred_lifetime: u32,
    /// The recursive DNS server: the adapter's own VIPv6.
    pub rdnss: Ipv6Addr,
    /// RDNSS Lifetime, seconds (RFC 8106 §5.1); at least MaxRtrAdvInterval so
    /// it does not lapse between two advertisements.
    pub rdnss_lifetime: u32,
    /// Router Lifetime, seconds: 0 (not a default router) or
    /// MaxRtrAdvInterval..=9000 (§6.2.1).
    pub router_lifetime: u16,
    /// Cur Hop Limit for the hosts' own packets (0 = unspecified).
    pub cur_hop_limit: u8,
    /// Reachable Time, milliseconds (0 = unspecified).
    pub reachable_time_ms: u32,
    /// Retrans Timer, milliseconds (0 = unspecified).
    pub retrans_timer_ms: u32,
    /// The MTU option (§4.6.4): the tunnel MTU, 1280..=1500; `None` leaves
    /// the option out.
    pub mtu: Option<u16>,
    /// MaxRtrAdvInterval, 4..=1800 s.
    pub max_interval: Duration,
    /// MinRtrAdvInterval, 3 s..=0.75 × MaxRtrAdvInterval.
    pub min_interval: Duration,
}

impl RaConfig {
    /// The RFC 4861 defaults around what only the adapter knows: source
    /// address the EUI-64 link-local of `mac`, intervals 198..600 s, router
    /// and RDNSS lifetimes 3 × MaxRtrAdvInterval (§6.2.1, RFC 8106 §5.1),
    /// prefix lifetimes 30 days / 7 days, hop limit 64, no MTU option.
    pub fn new(mac: MacAddr, prefix: Ipv6Prefix, rdnss: Ipv6Addr) -> Self {
        let max_interval = DEFAULT_MAX_RTR_ADV_INTERVAL;
        RaConfig {
            mac,
            link_local: eui64_link_local(mac),
            prefix,
            prefix_valid_lifetime: 30 * 24 * 3600,
            prefix_preferred_lifetime: 7 * 24 * 3600,
            rdnss,
            rdnss_lifetime: 3 * max_interval.as_secs() as u32,
            router_lifetime: 3 * max_interval.as_secs() as u16,
            cur_hop_limit: 64,
            reachable_time_ms: 0,
            retrans_timer_ms: 0,
            mtu: None,
            max_interval,
            min_interval: Self::default_min_interval(max_interval),
        }
    }

    /// §6.2.1: MinRtrAdvInterval defaults to 0.33 × MaxRtrAdvInterval (not
    /// below the 3 s it must keep).
    pub fn default_min_interval(max_interval: Duration) -> Duration {
        (max_interval * 33 / 100).max(Duration::from_secs(3))
    }

    /// Checks the ranges of §6.2.1 (and RFC 8106 §5.1 for the RDNSS
    /// lifetime).
    pub fn validate(&self) -> Result<(), RaConfigError> {
        use RaConfigError as E;
        if !(Duration::from_secs(4)..=Duration::from_secs(1800)).contains(&self.max_interval) {
            return Err(E::MaxInterval(self.max_interval));
        }
        if self.min_interval < Duration::from_secs(3)
            || self.min_interval > self.max_interval * 3 / 4
        {
            return Err(E::MinInterval(self.min_interval));
        }
        let lifetime = Duration::from_secs(self.router_lifetime.into());
        if self.router_lifetime != 0
            && (lifetime < self.max_interval || self.router_lifetime > 9000)
        {
            return Err(E::RouterLifetime(self.router_lifetime));
        }
        if let Some(mtu) = self.mtu {
            if !(1280..=1500).contains(&mtu) {
                return Err(E::Mtu(mtu));
            }
        }
        if self.reachable_time_ms > MAX_REACHABLE_TIME_MS {
            return Err(E::ReachableTime(self.reachable_time_ms));
        }
        if !is_link_local(&self.link_local) {
            return Err(E::SourceNotLinkLocal(self.link_local));
        }
        if self.mac.is_multicast() {
            return Err(E::MulticastMac(self.mac));
        }
        let p = self.prefix.addr();
        if self.prefix.prefix_len() == 0 || p.is_multicast() || is_link_local(&p) {
            return Err(E::Prefix(self.prefix));
        }
        if self.prefix_preferred_lifetime > self.prefix_valid_lifetime {
            return Err(E::PrefixLifetimes {
                preferred: self.prefix_preferred_lifetime,
                valid: self.prefix_valid_lifetime,
            });
        }
        if self.rdnss.is_unspecified() || self.rdnss.is_multicast() {
            return Err(E::Rdnss(self.rdnss));
        }
        if u64::from(self.rdnss_lifetime) < self.max_interval.as_secs() {
            return Err(E::RdnssLifetime(self.rdnss_lifetime));
        }
        Ok(())
    }
}

/// A configuration value outside what RFC 4861 / RFC 8106 allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaConfigError {
    #[error("MaxRtrAdvInterval {0:?} is outside 4..=1800 s")]
    MaxInterval(Duration),
    #[error("MinRtrAdvInterval {0:?} is outside 3 s..=0.75 × MaxRtrAdvInterval")]
    MinInterval(Duration),
    #[error("router lifetime {0} s is neither 0 nor within MaxRtrAdvInterval..=9000 s")]
    RouterLifetime(u16),
    #[error("MTU {0} is outside 1280..=1500")]
    Mtu(u16),
    #[error("reachable time {0} ms is more than 3600000")]
    ReachableTime(u32),
    #[error("source address {0} is not link-local")]
    SourceNotLinkLocal(Ipv6Addr),
    #[error("MAC {0} is a multicast address")]
    MulticastMac(MacAddr),
    #[error("{0} cannot be advertised as an on-link prefix")]
    Prefix(Ipv6Prefix),
    #[error("preferred lifetime {preferred} s exceeds valid lifetime {valid} s")]
    PrefixLifetimes { preferred: u32, valid: u32 },
    #[error("{0} cannot be a DNS server")]
    Rdnss(Ipv6Addr),
    #[error("RDNSS lifetime {0} s would lapse between advertisements")]
    RdnssLifetime(u32),
}

/// An advertisement to send: the ICMPv6 message and its addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Why it is sent.
    pub kind: AdvertisementKind,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// The adapter's link-local address.
    pub src_ip: Ipv6Addr,
    /// All-nodes, ff02::1.
    pub dst_ip: Ipv6Addr,
    /// [`ND_HOP_LIMIT`]: hosts drop ND messages that crossed a router.
    pub hop_limit: u8,
    /// The ICMPv6 message, type 134, with its checksum field zero: the frame
    /// builder fills it in, since it needs the IPv6 pseudo-header.
    pub icmpv6: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvertisementKind {
    /// On the periodic timer (including the first, fast ones).
    Unsolicited,
    /// The (multicast) answer to one or more Router Solicitations.
    Solicited,
    /// The last one, router lifetime 0 (§6.2.5).
    Final,
}

/// Why the advertiser wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaTimer {
    /// One of the first advertisements, at most 16 s apart (§6.2.4).
    Initial,
    /// The periodic advertisement.
    Periodic,
    /// The delayed answer to a Router Solicitation (§6.2.6).
    Solicited,
}

/// What the advertiser did, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RaCounters {
    pub unsolicited_sent: u64,
    pub solicited_sent: u64,
    /// Router Solicitations taken.
    pub solicitations: u64,
    /// Solicitations that found an answer already pending and share it.
    pub solicitations_coalesced: u64,
    /// Solicitations from a multicast or our own MAC, or a multicast source
    /// address, or after shutdown: not answered.
    pub solicitations_ignored: u64,
}

/// The Router Advertisement sender of one LAN interface.
pub struct RouterAdvertiser {
    config: RaConfig,
    /// The message as configured; only the router lifetime differs in the
    /// final one, so it is built once.
    message: Vec<u8>,
    rng: SplitMix64,
    /// The next multicast advertisement; `None` after shutdown.
    next: Option<(Instant, RaTimer)>,
    /// Multicast advertisements sent so far (saturating).
    sent: u32,
    last_multicast: Option<Instant>,
    counters: RaCounters,
}

impl RouterAdvertiser {
    /// An advertiser whose interface becomes an advertising one at `now`:
    /// the first advertisement is due at once.
    pub fn new(config: RaConfig, seed: u64, now: Instant) -> Result<Self, RaConfigError> {
        config.validate()?;
        let message = build(&config, config.router_lifetime);
        Ok(RouterAdvertiser {
            config,
            message,
            rng: SplitMix64(seed),
            next: Some((now, RaTimer::Initial)),
            sent: 0,
            last_multicast: None,
            counters: RaCounters::default(),
        })
    }

    pub fn config(&self) -> &RaConfig {
        &self.config
    }

    pub fn counters(&self) -> RaCounters {
        self.counters
    }

    /// When to call [`Self::handle_timeout`], and why; `None` after
    /// [`Self::shutdown`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, RaTimer)> {
        self.next
    }

    /// The timer has fired: the advertisement due at `now`, if any.
    #[must_use]
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Advertisement> {
        self.poll_advertisement(now)
    }

    /// A valid Router Solicitation from `src_mac` / `src_ip` (which may be
    /// the unspecified address) arrived at `now`: schedules the multicast
    /// answer as §6.2.6 describes.
    pub fn handle_solicitation(&mut self, now: Instant, src_mac: MacAddr, src_ip: Ipv6Addr) {
        let Some((due, timer)) = self.next else {
            self.counters.solicitations_ignored += 1;
            return;
        };
        if src_mac.is_multicast() || src_mac == self.config.mac || src_ip.is_multicast() {
            self.counters.solicitations_ignored += 1;
            return;
        }
        self.counters.solicitations += 1;
        if timer == RaTimer::Solicited {
            // One answer serves every solicitation; its delay counts from
            // the first.
            self.counters.solicitations_coalesced += 1;
            return;
        }
        let delay = self.rng.duration(Duration::ZERO, MAX_RA_DELAY_TIME);
        let at = match self.last_multicast {
            Some(last) if now < last + MIN_DELAY_BETWEEN_RAS => {
                last + MIN_DELAY_BETWEEN_RAS + delay
            }
            _ => now + delay,
        };
        // An advertisement already due sooner answers it.
        if at < due {
            self.next = Some((at, RaTimer::Solicited));
        }
        tracing::trace!(%src_mac, %src_ip, "router solicitation");
    }

    /// The advertisement due at `now`, if any. Call it after every input;
    /// once it returns one, the periodic timer is rescheduled.
    #[must_use]
    pub fn poll_advertisement(&mut self, now: Instant) -> Option<Advertisement> {
        let (due, timer) = self.next?;
        if now < due {
            return None;
        }
        let mut interval = self
            .rng
            .duration(self.config.min_interval, self.config.max_interval);
        let mut next_timer = RaTimer::Periodic;
        if self.sent < MAX_INITIAL_RTR_ADVERTISEMENTS {
            interval = interval.min(MAX_INITIAL_RTR_ADVERT_INTERVAL);
            next_timer = RaTimer::Initial;
        }
        self.sent = self.sent.saturating_add(1);
        self.last_multicast = Some(now);
        self.next = Some((now + interval, next_timer));
        let kind = if timer == RaTimer::Solicited {
            self.counters.solicited_sent += 1;
            AdvertisementKind::Solicited
        } else {
            self.counters.unsolicited_sent += 1;
            AdvertisementKind::Unsolicited
        };
        Some(self.advertisement(kind, self.message.clone()))
    }

    /// The adapter stops advertising: the final advertisement, router
    /// lifetime 0 so hosts drop the adapter as a default router at once
    /// (§6.2.5; send it up to MAX_FINAL_RTR_ADVERTISEMENTS = 3 times). The
    /// prefix and RDNSS keep their lifetimes: a restarted adapter serves the
    /// same ones. No more timers or answers afterwards.
    pub fn shutdown(&mut self) -> Advertisement {
        self.next = None;
        let message = build(&self.config, 0);
        self.advertisement(AdvertisementKind::Final, message)
    }

    fn advertisement(&self, kind: AdvertisementKind, icmpv6: Vec<u8>) -> Advertisement {
        Advertisement {
            kind,
            src_mac: self.config.mac,
            dst_mac: ALL_NODES_MAC,
            src_ip: self.config.link_local,
            dst_ip: ALL_NODES,
            hop_limit: ND_HOP_LIMIT,
            icmpv6,
        }
    }
}

/// The RA (§4.2) with its options: Source Link-Layer Address (§4.6.1), MTU
/// (§4.6.4), Prefix Information (§4.6.2), RDNSS (RFC 8106 §5.1).
fn build(c: &RaConfig, router_lifetime: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 8 + 8 + 32 + 24);
    b.extend_from_slice(&[ICMPV6_ROUTER_ADVERTISEMENT, 0, 0, 0]);
    b.extend_from_slice(&[c.cur_hop_limit, FLAG_MANAGED | FLAG_OTHER]);
    b.extend_from_slice(&router_lifetime.to_be_bytes());
    b.extend_from_slice(&c.reachable_time_ms.to_be_bytes());
    b.extend_from_slice(&c.retrans_timer_ms.to_be_bytes());

    // Option lengths are in units of 8 bytes.
    b.extend_from_slice(&[OPT_SOURCE_LL, 1]);
    b.extend_from_slice(&c.mac.0);

    if let Some(mtu) = c.mtu {
        b.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
        b.extend_from_slice(&u32::from(mtu).to_be_bytes());
    }

    // A=0: the GN's address is its VIPv6, from DHCPv6, never SLAAC.
    b.extend_from_slice(&[OPT_PREFIX_INFO, 4, c.prefix.prefix_len(), PREFIX_ON_LINK]);
    b.extend_from_slice(&c.prefix_valid_lifetime.to_be_bytes());
    b.extend_from_slice(&c.prefix_preferred_lifetime.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&c.prefix.addr().octets());

    b.extend_from_slice(&[OPT_RDNSS, 3, 0, 0]);
    b.extend_from_slice(&c.rdnss_lifetime.to_be_bytes());
    b.extend_from_slice(&c.rdnss.octets());
    b
}

fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// SplitMix64: a small seeded generator; the delays it draws need to be
/// unpredictable enough to desynchronise routers, not secret.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` at millisecond resolution.
    fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_ms = lo.as_millis() as u64;
        let span = (hi.as_millis() as u64).saturating_sub(lo_ms);
        Duration::from_millis(lo_ms + self.next_u64() % (span + 1))
    }
}

#[cfg(test)]
mod tests;
