//! Router Advertisements and Neighbor Discovery messages
//! (`cyphonic_adapter::ra`, `cyphonic_adapter::frame::NdiscRepr`).
//!
//! The first byte picks a mode:
//! - even: the rest is an ICMPv6 message; [`NdiscRepr::parse`] of it
//!   re-encodes ([`NdiscRepr::to_bytes`]) to a message that parses to the
//!   same repr.
//! - odd: the rest drives a [`RouterAdvertiser`], three bytes per step
//!   (what happens, and after how many milliseconds): Router Solicitations
//!   from the LAN (from a host, from a multicast or the adapter's own MAC,
//!   from a multicast address), the timer firing, polls, a shutdown. Checks
//!   RFC 4861 §6.2.4 and §6.2.6 as the module states them: multicast
//!   advertisements at least [`MIN_DELAY_BETWEEN_RAS`] apart, a
//!   solicitation answered within [`MAX_RA_DELAY_TIME`] of when it may be,
//!   every advertisement a valid RA (it classifies as one once framed) with
//!   the configured contents, none after the final one.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use cyphonic_adapter::frame::{self, Class, Icmpv6Packet, NdiscRepr};
use cyphonic_adapter::ra::{
    Advertisement, AdvertisementKind, RaConfig, RouterAdvertiser, MAX_RA_DELAY_TIME,
    MIN_DELAY_BETWEEN_RAS,
};
use cyphonic_adapter::MacAddr;

use crate::fixed;

pub fn config() -> RaConfig {
    let mut c = RaConfig::new(
        fixed::ADAPTER_MAC,
        fixed::OVERLAY6.parse().expect("prefix"),
        fixed::GW6,
    );
    c.mtu = Some(1380);
    c
}

pub fn check(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check_ndisc(input);
    } else {
        check_advertiser(input);
    }
}

fn check_ndisc(message: &[u8]) {
    let Ok(packet) = Icmpv6Packet::new_checked(message) else {
        return;
    };
    let Ok(repr) = NdiscRepr::parse(&packet) else {
        return;
    };
    let bytes = repr.to_bytes();
    assert_eq!(bytes.len(), repr.buffer_len());
    assert_eq!(bytes[0], repr.msg_type());
    let again = NdiscRepr::parse(&Icmpv6Packet::new_checked(&bytes[..]).expect("ours"))
        .expect("our ND message parses");
    assert_eq!(again, repr);
    assert_eq!(again.to_bytes(), bytes);
}

fn check_advertiser(script: &[u8]) {
    let start = Instant::now();
    let seed = script.len() as u64;
    let mut ra = RouterAdvertiser::new(config(), seed, start).expect("config");
    let mut now = start;
    let mut last_multicast: Option<Instant> = None;
    // The latest time a pending solicitation must be answered by.
    let mut answer_by: Option<Instant> = None;
    let mut stopped = false;

    let sent = |ad: Advertisement, now: Instant, last: &mut Option<Instant>| {
        check_advertisement(&ad);
        assert_ne!(ad.kind, AdvertisementKind::Final);
        if let Some(last) = *last {
            assert!(
                now - last >= MIN_DELAY_BETWEEN_RAS,
                "advertisements {:?} apart",
                now - last
            );
        }
        *last = Some(now);
    };

    for step in script.chunks_exact(3) {
        now += Duration::from_millis(u64::from(u16::from_be_bytes([step[1], step[2]])));
        match step[0] % 8 {
            0..=2 => {
                let (mac, ip) = match step[0] % 8 {
                    0 => (fixed::GN_A, fixed::A_LL),
                    1 => (fixed::GN_B, Ipv6Addr::UNSPECIFIED),
                    _ => (MacAddr([0x02, 0, 0, 0, 0x0c, step[0]]), fixed::A6),
                };
                ra.handle_solicitation(now, mac, ip);
                if !stopped {
                    let earliest = match last_multicast {
                        Some(last) if now < last + MIN_DELAY_BETWEEN_RAS => {
                            last + MIN_DELAY_BETWEEN_RAS
                        }
                        _ => now,
                    };
                    let by = earliest + MAX_RA_DELAY_TIME;
                    answer_by = Some(answer_by.map_or(by, |b| b.min(by)));
                }
            }
            3 => {
                // Ignored: a multicast source MAC, our own MAC, a multicast
                // source address.
                let before = ra.poll_timeout();
                ra.handle_solicitation(now, MacAddr([0x33, 0x33, 0, 0, 0, 1]), fixed::A_LL);
                ra.handle_solicitation(now, fixed::ADAPTER_MAC, fixed::A_LL);
                ra.handle_solicitation(now, fixed::GN_A, frame::ALL_NODES);
                assert_eq!(
                    ra.poll_timeout(),
                    before,
                    "an ignored solicitation moved the timer"
                );
            }
            4 | 5 => {
                // The timer fires when it said (never late here).
                if let Some((at, _)) = ra.poll_timeout() {
                    now = now.max(at);
                    if let Some(by) = answer_by {
                        assert!(at <= by, "solicitation answered {:?} late", at - by);
                    }
                    let ad = ra.handle_timeout(now).expect("due at its timeout");
                    sent(ad, now, &mut last_multicast);
                    answer_by = None;
                }
            }
            6 => {
                if let Some(ad) = ra.poll_advertisement(now) {
                    sent(ad, now, &mut last_multicast);
                    answer_by = None;
                }
            }
            _ => {
                if stopped {
                    continue;
                }
                let last = ra.shutdown();
                check_advertisement(&last);
                assert_eq!(last.kind, AdvertisementKind::Final);
                assert!(ra.poll_timeout().is_none());
                stopped = true;
                answer_by = None;
            }
        }
        if stopped {
            assert!(ra.poll_advertisement(now).is_none());
        }
    }
}

/// A valid RA as the crate frames it, with the configured contents.
fn check_advertisement(ad: &Advertisement) {
    let c = config();
    let f = frame::ipv6_icmp(
        ad.src_mac,
        ad.dst_mac,
        ad.src_ip,
        ad.dst_ip,
        ad.hop_limit,
        &ad.icmpv6,
    );
    assert!(
        matches!(frame::classify(&f), Class::RouterAdvertisement { .. }),
        "{:?}",
        frame::classify(&f)
    );
    let repr = NdiscRepr::parse(&Icmpv6Packet::new_checked(&ad.icmpv6[..]).expect("icmpv6"))
        .expect("an RA");
    let NdiscRepr::RouterAdvert {
        router_lifetime,
        lladdr,
        mtu,
        prefix_info,
        rdnss,
        ..
    } = repr
    else {
        panic!("not an RA: {repr:?}");
    };
    let final_one = ad.kind == AdvertisementKind::Final;
    assert_eq!(router_lifetime == 0, final_one || c.router_lifetime == 0);
    assert_eq!(lladdr, Some(c.mac));
    assert_eq!(mtu, c.mtu.map(u32::from));
    assert_eq!(prefix_info.len(), 1);
    assert_eq!(prefix_info[0].prefix, c.prefix.addr());
    assert_eq!(rdnss.len(), 1);
    assert_eq!(rdnss[0].servers, vec![c.rdnss]);
}
