use super::*;

const MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
const HOST_MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x99]);
const HOST_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 1);

fn prefix() -> Ipv6Prefix {
    "fd7a:6379:7068::/48".parse().expect("prefix")
}

fn config() -> RaConfig {
    let mut c = RaConfig::new(MAC, prefix(), VIP6);
    c.mtu = Some(1380);
    c
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A Router Advertisement read back field by field.
#[derive(Debug, Default)]
struct ParsedRa {
    hop_limit: u8,
    flags: u8,
    router_lifetime: u16,
    reachable: u32,
    retrans: u32,
    sllao: Option<[u8; 6]>,
    mtu: Option<u32>,
    prefix: Option<(u8, u8, u32, u32, Ipv6Addr)>,
    rdnss: Option<(u32, Vec<Ipv6Addr>)>,
}

fn parse(b: &[u8]) -> ParsedRa {
    assert!(b.len() >= 16);
    assert_eq!(b[0], 134, "type");
    assert_eq!(b[1], 0, "code");
    assert_eq!(&b[2..4], &[0, 0], "checksum left to the frame builder");
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut ra = ParsedRa {
        hop_limit: b[4],
        flags: b[5],
        router_lifetime: u16::from_be_bytes([b[6], b[7]]),
        reachable: u32_at(8),
        retrans: u32_at(12),
        ..ParsedRa::default()
    };
    let mut i = 16;
    while i < b.len() {
        let (t, len) = (b[i], usize::from(b[i + 1]) * 8);
        assert!(len > 0 && i + len <= b.len(), "option framing");
        let o = &b[i..i + len];
        match t {
            1 => {
                assert_eq!(len, 8);
                ra.sllao = Some(o[2..8].try_into().expect("6"));
            }
            5 => {
                assert_eq!(len, 8);
                assert_eq!(&o[2..4], &[0, 0], "reserved");
                ra.mtu = Some(u32_at(i + 4));
            }
            3 => {
                assert_eq!(len, 32);
                assert_eq!(u32_at(i + 12), 0, "reserved2");
                let p: [u8; 16] = o[16..32].try_into().expect("16");
                ra.prefix = Some((o[2], o[3], u32_at(i + 4), u32_at(i + 8), p.into()));
            }
            25 => {
                assert!(len >= 24 && (len - 8) % 16 == 0);
                assert_eq!(&o[2..4], &[0, 0], "reserved");
                let addrs = o[8..]
                    .chunks(16)
                    .map(|c| Ipv6Addr::from(<[u8; 16]>::try_from(c).expect("16")))
                    .collect();
                ra.rdnss = Some((u32_at(i + 4), addrs));
            }
            other => panic!("unexpected option {other}"),
        }
        i += len;
    }
    assert_eq!(i, b.len());
    ra
}

#[test]
fn the_advertisement_carries_every_field_and_option() {
    let t0 = Instant::now();
    let mut ra = RouterAdvertiser::new(config(), 7, t0).expect("config");
    let adv = ra.poll_advertisement(t0).expect("first RA at once");
    assert_eq!(adv.kind, AdvertisementKind::Unsolicited);
    assert_eq!(adv.src_mac, MAC);
    assert_eq!(adv.dst_mac, MacAddr([0x33, 0x33, 0, 0, 0, 1]));
    assert_eq!(
        adv.src_ip,
        "fe80::5eff:fe10:1".parse::<Ipv6Addr>().expect("ip")
    );
    assert_eq!(adv.dst_ip, "ff02::1".parse::<Ipv6Addr>().expect("ip"));
    assert_eq!(adv.hop_limit, 255);
    assert_eq!(adv.icmpv6.len(), 16 + 8 + 8 + 32 + 24);

    let p = parse(&adv.icmpv6);
    assert_eq!(p.hop_limit, 64);
    assert_eq!(p.flags, 0xc0, "M=1 O=1, H=0, preference medium");
    assert_eq!(p.router_lifetime, 1800);
    assert_eq!(p.reachable, 0);
    assert_eq!(p.retrans, 0);
    assert_eq!(p.sllao, Some(MAC.0));
    assert_eq!(p.mtu, Some(1380));
    let (len, flags, valid, preferred, addr) = p.prefix.expect("prefix information");
    assert_eq!(len, 48);
    assert_eq!(flags, 0x80, "L=1 A=0");
    assert_eq!(valid, 2_592_000);
    assert_eq!(preferred, 604_800);
    assert_eq!(addr, "fd7a:6379:7068::".parse::<Ipv6Addr>().expect("ip"));
    assert_eq!(p.rdnss, Some((1800, vec![VIP6])));
}

#[test]
fn configured_values_reach_the_wire_and_host_bits_are_cleared() {
    let mut c = RaConfig::new(MAC, prefix(), VIP6);
    c.prefix = Ipv6Prefix::containing("fd7a:6379:7068:1:2::3".parse().expect("ip"), 48).expect("p");
    c.reachable_time_ms = 30_000;
    c.retrans_timer_ms = 1_000;
    c.cur_hop_limit = 0;
    c.router_lifetime = 0;
    c.prefix_valid_lifetime = u32::MAX;
    c.prefix_preferred_lifetime = u32::MAX;
    c.rdnss_lifetime = 900;
    c.link_local = "fe80::1".parse().expect("ll");
    let t0 = Instant::now();
    let adv = RouterAdvertiser::new(c, 1, t0)
        .expect("config")
        .poll_advertisement(t0)
        .expect("ra");
    assert_eq!(adv.src_ip, "fe80::1".parse::<Ipv6Addr>().expect("ip"));
    let p = parse(&adv.icmpv6);
    assert_eq!((p.hop_limit, p.router_lifetime), (0, 0));
    assert_eq!((p.reachable, p.retrans), (30_000, 1_000));
    assert_eq!(p.mtu, None, "no MTU option unless configured");
    let (_, _, valid, preferred, addr) = p.prefix.expect("pio");
    assert_eq!((valid, preferred), (u32::MAX, u32::MAX));
    assert_eq!(addr, "fd7a:6379:7068::".parse::<Ipv6Addr>().expect("ip"));
    assert_eq!(p.rdnss.expect("rdnss").0, 900);
}

#[test]
fn eui64_link_local_flips_the_universal_bit() {
    let ll = eui64_link_local(MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]));
    assert_eq!(
        ll,
        "fe80::11:22ff:fe33:4455".parse::<Ipv6Addr>().expect("ip")
    );
}

#[test]
fn out_of_range_configuration_is_refused() {
    type Edit = fn(&mut RaConfig);
    type Is = fn(&RaConfigError) -> bool;
    let cases: [(Edit, Is); 12] = [
        (
            |c| c.max_interval = secs(3.0),
            |e| matches!(e, RaConfigError::MaxInterval(_)),
        ),
        (
            |c| c.max_interval = secs(1801.0),
            |e| matches!(e, RaConfigError::MaxInterval(_)),
        ),
        (
            |c| c.min_interval = secs(2.0),
            |e| matches!(e, RaConfigError::MinInterval(_)),
        ),
        (
            |c| c.min_interval = secs(451.0),
            |e| matches!(e, RaConfigError::MinInterval(_)),
        ),
        (
            |c| c.router_lifetime = 599,
            |e| matches!(e, RaConfigError::RouterLifetime(599)),
        ),
        (
            |c| c.router_lifetime = 9001,
            |e| matches!(e, RaConfigError::RouterLifetime(_)),
        ),
        (
            |c| c.mtu = Some(1279),
            |e| matches!(e, RaConfigError::Mtu(1279)),
        ),
        (
            |c| c.mtu = Some(1501),
            |e| matches!(e, RaConfigError::Mtu(1501)),
        ),
        (
            |c| c.link_local = "2001:db8::1".parse().expect("ip"),
            |e| matches!(e, RaConfigError::SourceNotLinkLocal(_)),
        ),
        (
            |c| c.prefix_preferred_lifetime = c.prefix_valid_lifetime + 1,
            |e| matches!(e, RaConfigError::PrefixLifetimes { .. }),
        ),
        (
            |c| c.rdnss = Ipv6Addr::UNSPECIFIED,
            |e| matches!(e, RaConfigError::Rdnss(_)),
        ),
        (
            |c| c.rdnss_lifetime = 599,
            |e| matches!(e, RaConfigError::RdnssLifetime(599)),
        ),
    ];
    for (i, (edit, is)) in cases.iter().enumerate() {
        let mut c = config();
        edit(&mut c);
        let err = RouterAdvertiser::new(c, 0, Instant::now())
            .err()
            .expect("refused");
        assert!(is(&err), "case {i}: {err}");
    }
    let mut c = config();
    c.prefix = "fe80::/64".parse().expect("p");
    assert!(matches!(c.validate(), Err(RaConfigError::Prefix(_))));
    c.prefix = "::/0".parse().expect("p");
    assert!(matches!(c.validate(), Err(RaConfigError::Prefix(_))));
    let mut c = config();
    c.reachable_time_ms = MAX_REACHABLE_TIME_MS + 1;
    assert!(matches!(c.validate(), Err(RaConfigError::ReachableTime(_))));
    // The edges themselves are fine.
    let mut c = config();
    c.mtu = Some(1500);
    c.router_lifetime = 600;
    c.min_interval = secs(450.0);
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(RaConfig::default_min_interval(secs(600.0)), secs(198.0));
    assert_eq!(RaConfig::default_min_interval(secs(4.0)), secs(3.0));
}

#[test]
fn initial_advertisements_come_every_16_s_then_the_periodic_interval() {
    let t0 = Instant::now();
    let mut ra = RouterAdvertiser::new(config(), 42, t0).expect("config");
    assert_eq!(ra.poll_timeout(), Some((t0, RaTimer::Initial)));
    let mut sent = vec![];
    let mut now = t0;
    while sent.len() < 40 {
        let (at, _) = ra.poll_timeout().expect("timer");
        // Nothing comes early.
        if at > now {
            assert!(ra.handle_timeout(at - Duration::from_millis(1)).is_none());
        }
        now = at;
        let adv = ra.handle_timeout(now).expect("due");
        assert_eq!(adv.kind, AdvertisementKind::Unsolicited);
        assert!(ra.handle_timeout(now).is_none(), "one per firing");
        sent.push(now - t0);
    }
    // The timer after each of the first three is capped at 16 s (the
    // random interval, at least 198 s, always exceeds it).
    assert_eq!(&sent[..4], &[secs(0.0), secs(16.0), secs(32.0), secs(48.0)]);
    let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    for g in &gaps[3..] {
        assert!((secs(198.0)..=secs(600.0)).contains(g), "{g:?}");
    }
    // Uniform, not constant.
    let distinct: std::collections::BTreeSet<_> = gaps[3..].iter().collect();
    assert!(distinct.len() > 30);
    assert_eq!(ra.counters().unsolicited_sent, 40);
}

#[test]
fn the_timer_reason_says_initial_then_periodic() {
    let t0 = Instant::now();
    let mut ra = RouterAdvertiser::new(config(), 3, t0).expect("config");
    let mut reasons = vec![];
    for _ in 0..5 {
        let (at, why) = ra.poll_timeout().expect("timer");
        reasons.push(why);
        let _ = ra.handle_timeout(at).expect("ra");
    }
    use RaTimer::*;
    assert_eq!(reasons, [Initial, Initial, Initial, Initial, Periodic]);
}

#[test]
fn a_late_wake_up_sends_once_and_counts_from_when_it_was_sent() {
    let t0 = Instant::now();
    let mut ra = RouterAdvertiser::new(config(), 5, t0).expect("config");
    let late = t0 + secs(100.0);
    assert!(ra.handle_timeout(late).is_some());
    assert!(ra.handle_timeout(late).is_none());
    assert_eq!(
        ra.poll_timeout(),
        Some((late + secs(16.0), RaTimer::Initial))
    );
}

#[test]
fn the_same_seed_gives_the_same_schedule_another_seed_another() {
    let schedule = |seed| {
        let t0 = Instant::now();
        let mut ra = RouterAdvertiser::new(config(), seed, t0).expect("config");
        (0..10)
            .map(|_| {
                let (at, _) = ra.poll_timeout().expect("timer");
                let _ = ra.handle_timeout(at);
                at - t0
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(schedule(9), schedule(9));
    assert_ne!(schedule(9), schedule(10));
}

/// Steps a fresh advertiser past its initial advertisements; returns it
/// with `now` just after the last one sent.
fn past_initial(seed: u64) -> (RouterAdvertiser, Instant, Instant) {
    let t0 = Instant::now();
    let mut ra = RouterAdvertiser::new(config(), seed, t0).expect("config");
    let mut last = t0;
    for _ in 0..4 {
        let (at, _) = ra.poll_timeout().expect("timer");
        let _ = ra.handle_timeout(at).expect("ra");
        last = at;
    }
    (ra, t0, last)
}

#[test]
fn a_solicitation_is_answered_by_multicast_within_500_ms() {
    for seed in 0..50 {
        let (mut ra, _, last) = past_initial(seed);
        let (periodic, why) = ra.poll_timeout().expect("timer");
        assert_eq!(why, RaTimer::Periodic);
        let rs = last + secs(60.0);
        ra.handle_solicitation(rs, HOST_MAC, HOST_LL);
        let (at, why) = ra.poll_timeout().expect("timer");
        assert_eq!(why, RaTimer::Solicited);
        assert!(at >= rs && at <= rs + MAX_RA_DELAY_TIME, "{:?}", at - rs);
        if at > rs {
            assert!(ra.poll_advertisement(rs).is_none(), "delayed");
        }
        let adv = ra.poll_advertisement(at).expect("answer");
        assert_eq!(adv.kind, AdvertisementKind::Solicited);
        assert_eq!(adv.dst_ip, ALL_NODES, "answers are multicast (§6.2.6)");
        assert_eq!(adv.dst_mac, ALL_NODES_MAC);
        assert_eq!(parse(&adv.icmpv6).router_lifetime, 1800);
        // The periodic timer restarts from the answer.
        let (next, why) = ra.poll_timeout().expect("timer");
        assert_eq!(why, RaTimer::Periodic);
        assert!(next >= at + secs(198.0) && next <= at + secs(600.0));
        assert_ne!(next, periodic);
    }
}

#[test]
fn the_unspecified_source_is_answered_too() {
    let (mut ra, _, last) = past_initial(1);
    let rs = last + secs(10.0);
    ra.handle_solicitation(rs, HOST_MAC, Ipv6Addr::UNSPECIFIED);
    assert_eq!(ra.poll_timeout().expect("timer").1, RaTimer::Solicited);
    let adv = ra
        .poll_advertisement(rs + MAX_RA_DELAY_TIME)
        .expect("answer");
    assert_eq!(adv.dst_ip, ALL_NODES);
}

#[test]
fn a_solicitation_soon_after_an_advertisement_waits_for_min_delay() {
    for seed in 0..50 {
        let t0 = Instant::now();
        let mut ra = RouterAdvertiser::new(config(), seed, t0).expect("config");
        let _ = ra.poll_advertisement(t0).expect("first");
        ra.handle_solicitation(t0 + secs(1.0), HOST_MAC, HOST_LL);
        let (at, why) = ra.poll_timeout().expect("timer");
        assert_eq!(why, RaTimer::Solicited);
        assert!(
            at >= t0 + secs(3.0) && at <= t0 + secs(3.5),
            "{:?}",
            at - t0
        );
        assert!(ra.poll_advertisement(t0 + secs(2.999)).is_none());
        assert_eq!(
            ra.poll_advertisement(at).expect("answer").kind,
            AdvertisementKind::Solicited
        );
        // The answer counted as one of the initial advertisements.
        assert_eq!(ra.poll_timeout(), Some((at + secs(16.0), RaTimer::Initial)));
    }
}

#[test]
fn an_advertisement_due_sooner_answers_the_solicitation() {
    let t0 = Instant::now();
    let mut ra = RouterAdvertiser::new(config(), 11, t0).expect("config");
    let _ = ra.poll_advertisement(t0).expect("first");
    // The next initial one is due at 16 s; an RS at 15.9 s would be
    // answered at 15.9..16.4 s: the scheduled one goes at 16 s anyway.
    let mut answered_by_schedule = 0;
    for seed in 0..50 {
        let mut ra = RouterAdvertiser::new(config(), seed, t0).expect("config");
        let _ = ra.poll_advertisement(t0).expect("first");
        ra.handle_solicitation(t0 + secs(15.9), HOST_MAC, HOST_LL);
        let (at, why) = ra.poll_timeout().expect("timer");
        assert!(at <= t0 + secs(16.0));
        if why == RaTimer::Initial {
            assert_eq!(at, t0 + secs(16.0));
            answered_by_schedule += 1;
        }
    }
    assert!(answered_by_schedule > 30, "{answered_by_schedule}");
    // And an RS with the periodic RA due at once changes nothing.
    let (at, why) = ra.poll_timeout().expect("timer");
    ra.handle_solicitation(at, HOST_MAC, HOST_LL);
    assert_eq!(ra.poll_timeout(), Some((at, why)));
}

#[test]
fn solicitations_while_an_answer_is_pending_share_it() {
    let (mut ra, _, last) = past_initial(2);
    let rs = last + secs(30.0);
    ra.handle_solicitation(rs, HOST_MAC, HOST_LL);
    let first = ra.poll_timeout().expect("timer");
    for i in 1..20u8 {
        let mac = MacAddr([0x02, 0, 0, 0, 1, i]);
        ra.handle_solicitation(rs + Duration::from_millis(10 * u64::from(i)), mac, HOST_LL);
        assert_eq!(
            ra.poll_timeout(),
            Some(first),
            "delay counts from the first RS"
        );
    }
    assert!(ra.poll_advertisement(first.0).is_some());
    assert!(ra.poll_advertisement(first.0 + secs(1.0)).is_none());
    let c = ra.counters();
    assert_eq!(
        (c.solicitations, c.solicitations_coalesced, c.solicited_sent),
        (20, 19, 1)
    );
}

#[test]
fn a_storm_of_solicitations_gets_multicast_answers_at_most_every_3_s() {
    let (mut ra, _, last) = past_initial(4);
    let start = last + secs(5.0);
    let mut sent = vec![last];
    let mut rs_times = vec![];
    let mut now = start;
    let end = start + secs(60.0);
    // An RS every 100 ms from changing hosts, with the shell's loop:
    // input, poll, and wake-ups in between.
    while now < end {
        let mac = MacAddr([0x02, 0, 0, 0, 2, (rs_times.len() % 200) as u8]);
        ra.handle_solicitation(now, mac, HOST_LL);
        rs_times.push(now);
        if let Some(adv) = ra.poll_advertisement(now) {
            assert_eq!(adv.dst_ip, ALL_NODES);
            sent.push(now);
        }
        let step = now + Duration::from_millis(100);
        while let Some((at, _)) = ra.poll_timeout() {
            if at >= step {
                break;
            }
            let _ = ra.handle_timeout(at).expect("due");
            sent.push(at);
        }
        now = step;
    }
    for w in sent.windows(2) {
        assert!(w[1] - w[0] >= MIN_DELAY_BETWEEN_RAS, "{:?}", w[1] - w[0]);
    }
    // Every RS was followed by an RA within MIN_DELAY + MAX_RA_DELAY.
    for rs in &rs_times[..rs_times.len() - 40] {
        let answer = sent.iter().find(|&&s| s >= *rs).expect("answered");
        assert!(*answer - *rs <= MIN_DELAY_BETWEEN_RAS + MAX_RA_DELAY_TIME);
    }
    // About one every 3..3.5 s over 60 s.
    assert!((17..=21).contains(&(sent.len() - 1)), "{}", sent.len());
}

#[test]
fn solicitations_from_bad_sources_are_ignored() {
    let (mut ra, _, last) = past_initial(6);
    let before = ra.poll_timeout();
    let now = last + secs(20.0);
    ra.handle_solicitation(now, MacAddr([0x03, 0, 0, 0, 0, 1]), HOST_LL);
    ra.handle_solicitation(now, MAC, HOST_LL);
    ra.handle_solicitation(now, HOST_MAC, "ff02::2".parse().expect("ip"));
    assert_eq!(ra.poll_timeout(), before);
    let c = ra.counters();
    assert_eq!((c.solicitations, c.solicitations_ignored), (0, 3));
}

#[test]
fn shutdown_sends_router_lifetime_zero_and_stops() {
    let t0 = Instant::now();
    let mut ra = RouterAdvertiser::new(config(), 8, t0).expect("config");
    let first = ra.poll_advertisement(t0).expect("first");
    let last = ra.shutdown();
    assert_eq!(last.kind, AdvertisementKind::Final);
    assert_eq!(
        (last.dst_ip, last.dst_mac, last.hop_limit),
        (ALL_NODES, ALL_NODES_MAC, 255)
    );
    let p = parse(&last.icmpv6);
    assert_eq!(p.router_lifetime, 0);
    // Only the router lifetime (bytes 6..8) differs.
    assert_eq!(first.icmpv6[..6], last.icmpv6[..6]);
    assert_eq!(first.icmpv6[8..], last.icmpv6[8..]);
    assert_eq!(ra.poll_timeout(), None);
    ra.handle_solicitation(t0 + secs(10.0), HOST_MAC, HOST_LL);
    assert_eq!(ra.poll_timeout(), None);
    assert!(ra.handle_timeout(t0 + secs(1000.0)).is_none());
    assert_eq!(ra.counters().solicitations_ignored, 1);
}
