//! Tunnels over long virtual times: rekeying under steady traffic (no
//! packet lost), a lost Tunnel Response or a replayed Tunnel Request in a
//! rekey (nothing changes for the traffic), and keys that nobody replaces
//! (refused at their age limit, the route selected anew).

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::basic::{lookup, one_seed, registered, tunnel_between};
use crate::harness::*;

/// Two registered nodes with a direct tunnel between them.
fn pair(seed: u64) -> Sim {
    let mut sim = registered(SimConfig::new(seed, 2));
    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 2, Duration::from_secs(3)));
    sim
}

/// Sends numbered packets both ways every `every` for `total`; returns
/// how many each side sent.
fn steady(sim: &mut Sim, every: Duration, total: Duration) -> u64 {
    let mut sent = 0u64;
    let end = sim.elapsed() + total;
    while sim.elapsed() < end {
        for (a, b) in [(1, 2), (2, 1)] {
            let p = ipv4_packet(vip4(a), vip4(b), format!("seq {sent}").as_bytes());
            sim.send_app(a, &p);
        }
        sent += 1;
        sim.run_for(every);
    }
    sim.run_for(Duration::from_secs(1));
    sent
}

/// Every packet `n<from>` sent arrived at `n<to>` exactly once, in order.
fn all_arrived(sim: &Sim, from: usize, to: usize, sent: u64) {
    let want: Vec<Vec<u8>> = (0..sent)
        .map(|i| ipv4_packet(vip4(from), vip4(to), format!("seq {i}").as_bytes()))
        .collect();
    let got: Vec<Vec<u8>> = sim
        .node(to)
        .received_from(&sim.node(from).fqdn)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let lost = want.iter().filter(|p| !got.contains(p)).count();
    assert_eq!(lost, 0, "n{from} -> n{to}: {lost} of {sent} packets lost");
    assert_eq!(got, want, "n{from} -> n{to}: each packet once, in order");
}

#[test]
fn a_tunnel_rekeys_every_two_minutes_and_loses_no_packet() {
    let mut sim = pair(one_seed(31));
    let hour = Duration::from_secs(3600);
    let sent = steady(&mut sim, Duration::from_millis(500), hour);
    all_arrived(&sim, 1, 2, sent);
    all_arrived(&sim, 2, 1, sent);
    let (c1, c2) = (sim.node(1).node.counters(), sim.node(2).node.counters());
    // One rekey per `rekey_after` (120 s) of the hour, on both ends.
    let want = hour.as_secs() / 120 - 1;
    assert!(c1.rekeys >= want, "initiator rekeyed {} times", c1.rekeys);
    assert!(c2.rekeys >= want, "responder rekeyed {} times", c2.rekeys);
    assert_eq!((c1.keys_expired, c2.keys_expired), (0, 0));
    assert_eq!((c1.rekey_failures, c2.rekey_failures), (0, 0));
    // One tunnel established in the hour, one handshake per role: rekeys
    // are counted apart. It took one route selection, answered.
    assert_eq!((c1.handshakes_initiator, c1.handshakes_responder), (1, 0));
    assert_eq!((c2.handshakes_initiator, c2.handshakes_responder), (0, 1));
    let selection = sim.node(1).node.status(sim.now).route_selection;
    assert_eq!(
        (selection.started, selection.count, selection.timed_out),
        (1, 1, 0)
    );
    // The keys in use now are younger than a rekey interval.
    let t = sim.node(1).tunnel_to(&sim.node(2).fqdn).expect("tunnel");
    assert!(
        t.send.sent() < 2 * 120 * 2 + 100,
        "{} sealed",
        t.send.sent()
    );
    assert_eq!(sim.node(2).data_rx_bad, 0);
}

#[test]
fn a_lost_tunnel_response_in_a_rekey_costs_no_packet() {
    let mut sim = pair(one_seed(32));
    // The first two answers to the first rekey never arrive: the responder
    // holds its new keys back until the initiator has them.
    sim.drop_first("TunnelResponse", 2);
    let sent = steady(
        &mut sim,
        Duration::from_millis(100),
        Duration::from_secs(150),
    );
    all_arrived(&sim, 1, 2, sent);
    all_arrived(&sim, 2, 1, sent);
    let (c1, c2) = (sim.node(1).node.counters(), sim.node(2).node.counters());
    assert_eq!((c1.rekeys, c2.rekeys), (1, 1));
    let lost = sim
        .wire
        .iter()
        .filter(|w| w.kind == "TunnelResponse" && w.fate != Fate::Delivered)
        .count();
    assert_eq!(lost, 2, "the rule dropped two answers");
}

#[test]
fn a_replayed_tunnel_request_is_refused_and_changes_nothing() {
    let mut sim = pair(one_seed(33));
    sim.run_for(Duration::from_secs(125));
    assert_eq!(sim.node(1).node.counters().rekeys, 1);
    // An attacker on the wire recorded the rekey's request; it replays it
    // from the initiator's address later.
    let w = sim
        .wire
        .iter()
        .rev()
        .find(|w| w.kind == "TunnelRequest" && w.fate == Fate::Delivered)
        .expect("the rekey's Tunnel Request");
    let (src, dst, payload) = (w.src, w.dst, w.payload.clone());
    sim.run_for(Duration::from_secs(130));
    assert_eq!(sim.node(2).node.counters().rekeys, 2);
    let ups = sim.node(2).tunnel_ups.len();
    sim.inject(src, dst, payload);
    let sent = steady(&mut sim, Duration::from_millis(100), Duration::from_secs(5));
    all_arrived(&sim, 1, 2, sent);
    all_arrived(&sim, 2, 1, sent);
    let c2 = sim.node(2).node.counters();
    assert_eq!(c2.handshake_replays, 1);
    assert_eq!(c2.rekeys, 2);
    assert_eq!(sim.node(2).tunnel_ups.len(), ups, "nothing installed");
}

#[test]
fn keys_nobody_replaces_are_refused_at_their_age_limit() {
    let mut sim = pair(one_seed(34));
    // The initiator's keys were made when its tunnel came up.
    let t0 = sim.node(1).tunnel_ups[0].0;
    // Every later handshake is lost: rekeys fail, and so does the new
    // route's handshake.
    let rule = sim.add_rule(|w| w.kind == "TunnelRequest");
    let old = sim.node(1).tunnel_to(&sim.node(2).fqdn).expect("tunnel");
    let reject = sim.node(1).node.config().reject_after;
    assert!(sim.run_until(reject + Duration::from_secs(10), |s| s
        .node(1)
        .node
        .counters()
        .keys_expired
        == 1));
    let expired_at = sim.elapsed() - t0;
    assert!(
        expired_at >= reject && expired_at <= reject + Duration::from_secs(1),
        "refused after {expired_at:?}"
    );
    assert!(old.send.retired() && old.recv.retired());
    let c1 = sim.node(1).node.counters();
    assert!(c1.rekey_failures >= 2, "{c1:?}");
    assert_eq!(c1.rekeys, 0);
    // Packets sent now wait for a tunnel; none leaves under the old keys.
    let before = sim.node(2).received.len();
    let p = ipv4_packet(vip4(1), vip4(2), b"after the keys' end");
    sim.send_app(1, &p);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.node(2).received.len(), before);
    // Handshakes get through again: the new route's tunnel carries it.
    sim.remove_rule(rule);
    assert!(sim.run_until(Duration::from_secs(30), |s| s
        .node(2)
        .received_from(&s.node(1).fqdn)
        .contains(&p.as_slice())));
}

/// A relayed tunnel (symmetric NATs on both sides) whose grants last a
/// minute: the initiator selects the route again three quarters into each
/// grant, the new route's tunnel replaces the old one, and no packet is
/// lost across five grants.
#[test]
fn relay_grants_are_renewed_before_they_end_and_lose_no_packet() {
    use crate::nat::{nat_config, path_of, started};
    use cyphonic_cloud_core::route::Placement;
    let mut config = nat_config(one_seed(35), &[Placement::Sym, Placement::Sym]);
    config.relay_lifetime = Duration::from_secs(60);
    let mut sim = started(config);
    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 2, Duration::from_secs(6)));
    assert_eq!(path_of(&sim, 1, 2), "relayed");
    let sent = steady(
        &mut sim,
        Duration::from_millis(250),
        Duration::from_secs(300),
    );
    all_arrived(&sim, 1, 2, sent);
    all_arrived(&sim, 2, 1, sent);
    let c1 = sim.node(1).node.counters();
    assert!(c1.grant_renewals >= 5, "{c1:?}");
    assert_eq!(path_of(&sim, 1, 2), "relayed");
    // The TRS never had to refuse an expired grant.
    let expired = sim.trs[0]
        .drops
        .iter()
        .filter(|d| format!("{:?}", d.2).contains("Expired"))
        .count();
    assert_eq!(expired, 0);
}

/// Asks `n<from>` for `name` and waits for the answer: its code and how
/// long it took.
fn ask(sim: &mut Sim, from: usize, name: &str) -> (ResponseCode, Duration) {
    let asked = sim.elapsed();
    let client = sim.dns_query(from, name, RecordType::A);
    assert!(
        sim.run_until(Duration::from_secs(6), |s| s
            .dns_answer(from, client)
            .is_some()),
        "no answer to {name}"
    );
    let a = sim.dns_answer(from, client).expect("answered");
    (a.rcode(), a.at - asked)
}

/// The cloud dies: overlay names the node cannot answer itself fail fast
/// (SERVFAIL, or NXDOMAIN where the NMS said so), known peers still
/// resolve, and the running tunnel carries every packet. When the cloud
/// is back, the names resolve again.
#[test]
fn while_the_cloud_is_away_names_fail_fast_and_tunnels_go_on() {
    let mut sim = registered(SimConfig::new(one_seed(36), 3));
    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 2, Duration::from_secs(3)));
    let (rcode, _) = ask(&mut sim, 1, "nobody.cyphonic.internal.");
    assert_eq!(rcode, ResponseCode::NXDomain);

    let nms = [NMS_V4.ip(), NMS_V6.ip()];
    let dead = sim.add_rule(move |w| nms.contains(&w.src.ip()) || nms.contains(&w.dst.ip()));
    let wait = sim.node(1).node.config().dns_cloud_wait;
    // The first query finds out: it waits `dns_cloud_wait`, no longer.
    let (rcode, took) = ask(&mut sim, 1, "n3.cyphonic.internal.");
    assert_eq!(rcode, ResponseCode::ServFail);
    assert!(took <= wait + Duration::from_millis(50), "took {took:?}");
    // Later ones get one retransmission interval for the NMS, no more;
    // what the NMS said does not exist, and known peers, at once.
    let retransmit = sim.node(1).node.config().retransmit;
    let (rcode, took) = ask(&mut sim, 1, "n3.cyphonic.internal.");
    assert_eq!((rcode, took), (ResponseCode::ServFail, retransmit));
    let (rcode, took) = ask(&mut sim, 1, "nobody.cyphonic.internal.");
    assert_eq!((rcode, took), (ResponseCode::NXDomain, Duration::ZERO));
    let (rcode, took) = ask(&mut sim, 1, "n2.cyphonic.internal.");
    assert_eq!((rcode, took), (ResponseCode::NoError, Duration::ZERO));
    // The tunnel does not notice: every packet of 20 s arrives.
    let sent = steady(
        &mut sim,
        Duration::from_millis(100),
        Duration::from_secs(20),
    );
    let from_n1 = sim.node(2).received_from(&sim.node(1).fqdn).len() as u64;
    assert!(from_n1 >= sent);

    sim.remove_rule(dead);
    assert!(
        sim.run_until(Duration::from_secs(60), |s| !s
            .node(1)
            .node
            .status(s.now)
            .cloud
            .away
            && s.node(1).node.status(s.now).cloud.registered),
        "the node did not find the cloud again"
    );
    assert_eq!(lookup(&mut sim, 1, 3, RecordType::A), ResponseCode::NoError);
}

/// A name asked while the node gives up on the NMS (its requests are
/// dropped with the session) is asked for again once the node is
/// registered anew: a later query for it is answered, not joined to a
/// wait nobody ends.
#[test]
fn a_name_asked_as_the_session_ends_resolves_when_the_cloud_is_back() {
    let mut sim = registered(SimConfig::new(one_seed(39), 3));
    let nms = [NMS_V4.ip(), NMS_V6.ip()];
    let dead = sim.add_rule(move |w| nms.contains(&w.src.ip()) || nms.contains(&w.dst.ip()));
    let logins = sim.node(1).need_logins.len();
    // Ask every 50 ms until the node drops its session, and a little after.
    let mut dropped_for = 0;
    for _ in 0..2400 {
        sim.dns_query(1, "n3.cyphonic.internal.", RecordType::A);
        sim.run_for(Duration::from_millis(50));
        if sim.node(1).need_logins.len() > logins {
            dropped_for += 1;
            if dropped_for > 6 {
                break;
            }
        }
    }
    assert!(dropped_for > 6, "the node never gave up on the NMS");
    sim.remove_rule(dead);
    assert!(
        sim.run_until(Duration::from_secs(60), |s| {
            let st = s.node(1).node.status(s.now);
            !st.cloud.away && st.cloud.registered
        }),
        "the node did not find the cloud again"
    );
    let (rcode, took) = ask(&mut sim, 1, "n3.cyphonic.internal.");
    assert_eq!(rcode, ResponseCode::NoError, "after {took:?}");
}

/// A node that lost its session and is not logged in again still shows
/// its FQDN and VIPs: they are the device's, and stay on its TUN device.
#[test]
fn a_logged_out_node_still_shows_its_vips() {
    let mut sim = registered(SimConfig::new(one_seed(40), 2));
    let slot = sim.slot(1);
    sim.nodes[slot].auto_login = false;
    let nms = [NMS_V4.ip(), NMS_V6.ip()];
    sim.add_rule(move |w| nms.contains(&w.src.ip()) || nms.contains(&w.dst.ip()));
    assert!(
        sim.run_until(Duration::from_secs(120), |s| !s
            .node(1)
            .node
            .status(s.now)
            .cloud
            .logged_in),
        "the node never gave up on the NMS"
    );
    let st = sim.node(1).node.status(sim.now);
    assert_eq!(st.vip4, Some(vip4(1)));
    assert_eq!(st.vip6, Some(vip6(1)));
    assert_eq!(st.fqdn.as_deref(), Some(sim.node(1).fqdn.as_str()));
}

/// The time from `n<b>`'s restart until a packet `n<a>` sends every
/// 100 ms arrives at it again.
fn reached_after_restart(seed: u64, resume: bool) -> Duration {
    let mut sim = pair(seed);
    steady(&mut sim, Duration::from_millis(100), Duration::from_secs(2));
    let peers = sim.node(2).node.tunnel_peers();
    assert_eq!(peers, vec![sim.node(1).fqdn.clone()]);
    sim.restart_node(2, if resume { peers } else { Vec::new() });
    let restarted = sim.elapsed();
    let before = sim.node(2).received.len();
    for i in 0..400 {
        let p = ipv4_packet(vip4(1), vip4(2), format!("after {i}").as_bytes());
        sim.send_app(1, &p);
        sim.run_for(Duration::from_millis(100));
        if let Some(r) = sim.node(2).received[before..].first() {
            return r.at - restarted;
        }
    }
    panic!("n1 never reached the restarted n2");
}

/// A node killed and restarted (a new static key) asks for the routes of
/// the peers its state directory lists: they reach it again within two
/// seconds, where their liveness checks alone take about 15.
#[test]
fn a_restarted_node_is_reached_again_within_two_seconds() {
    let resumed = reached_after_restart(one_seed(37), true);
    assert!(resumed < Duration::from_secs(2), "took {resumed:?}");
    let waited = reached_after_restart(one_seed(37), false);
    assert!(
        waited > Duration::from_secs(10),
        "took {waited:?} without the list"
    );
    eprintln!("reached again after {resumed:?} with the peer list, {waited:?} without");
}

/// One of three nodes is revoked while all three talk: every tunnel with
/// it closes within a round trip of the NMS's notice, no route to it is
/// taken again, the other two keep talking, and it knows why.
#[test]
fn a_revoked_node_loses_every_tunnel_and_the_others_keep_talking() {
    let mut sim = registered(SimConfig::new(one_seed(38), 3));
    for (a, b) in [(1, 2), (1, 3), (2, 3)] {
        assert_eq!(lookup(&mut sim, a, b, RecordType::A), ResponseCode::NoError);
        assert!(tunnel_between(&mut sim, a, b, Duration::from_secs(3)));
    }
    let f3 = sim.node(3).fqdn.clone();
    let revoked_at = sim.elapsed();
    sim.revoke(3);
    assert!(
        sim.run_until(Duration::from_secs(5), |s| [1, 2].iter().all(|&i| s
            .node(i)
            .tunnel_downs
            .iter()
            .any(|(_, f)| *f == f3))),
        "the tunnels with n3 did not close"
    );
    for i in [1, 2] {
        let (at, _) = sim
            .node(i)
            .tunnel_downs
            .iter()
            .find(|(_, f)| *f == f3)
            .expect("down");
        let took = *at - revoked_at;
        assert!(
            took < Duration::from_millis(100),
            "n{i} closed after {took:?}"
        );
        assert!(sim.node(i).tunnel_to(&f3).is_none());
        assert_eq!(sim.node(i).node.counters().peers_revoked, 1);
    }
    // n3 knows why and holds no tunnel either.
    let status = sim.node(3).node.status(sim.now);
    assert!(status
        .cloud
        .refused
        .as_deref()
        .is_some_and(|r| r.contains("revoked")));
    assert!(status.peers.is_empty());
    // Packets n1 sends to n3 go nowhere, and n3 is not found again.
    let p = ipv4_packet(vip4(1), vip4(3), b"still there?");
    sim.send_app(1, &p);
    sim.run_for(Duration::from_secs(1));
    assert!(!sim
        .node(3)
        .received_from(&sim.node(1).fqdn)
        .contains(&p.as_slice()));
    assert_ne!(lookup(&mut sim, 1, 3, RecordType::A), ResponseCode::NoError);
    // n1 and n2 keep talking.
    let sent = steady(&mut sim, Duration::from_millis(100), Duration::from_secs(3));
    all_arrived(&sim, 1, 2, sent);
}

/// `days` virtual days of two tunnels, one direct (n1-n2, public) and one
/// relayed (n3-n4, symmetric NATs), a packet each way on each every
/// minute: rekeys every two minutes, relay grants (of an hour here)
/// renewed every 45 minutes, an NMS restart (at 1/7 of the time: with
/// 7 days, exactly when a renewal is due), a peer restart (3/7), the first
/// TRS dying (5/7). No tunnel is lost, no packet is lost but those sent to a
/// node while it restarts, and every renewal is counted.
fn long_run(seed: u64, days: u32) {
    use crate::nat::{nat_config, started};
    use cyphonic_cloud_core::route::Placement;
    let placements = [Placement::V4, Placement::V4, Placement::Sym, Placement::Sym];
    let mut sim = started(nat_config(seed, &placements));
    sim.set_max_steps(u64::from(days) * 8_000_000);
    for (a, b) in [(1, 2), (3, 4)] {
        assert_eq!(lookup(&mut sim, a, b, RecordType::A), ResponseCode::NoError);
        assert!(tunnel_between(&mut sim, a, b, Duration::from_secs(6)));
    }
    let total = Duration::from_secs(86_400) * days;
    let seventh = total / 7;
    let minute = Duration::from_secs(60);
    let pairs = [(1, 2), (2, 1), (3, 4), (4, 3)];
    let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); pairs.len()];
    // Packets sent to a node that is down are lost by nature: not counted.
    let mut excused = 0;
    let start = sim.elapsed();
    let mut seq = 0u64;
    let (mut restarted_nms, mut restarted_peer, mut killed_trs) = (false, false, false);
    while sim.elapsed() < start + total {
        let t = sim.elapsed() - start;
        if !restarted_nms && t >= seventh {
            restarted_nms = true;
            sim.restart_nms();
        }
        let restart_due = !restarted_peer && t >= seventh * 3;
        if restart_due {
            restarted_peer = true;
            let peers = sim.node(2).node.tunnel_peers();
            sim.restart_node(2, peers);
        }
        if !killed_trs && t >= seventh * 5 {
            killed_trs = true;
            sim.kill_trs(0);
        }
        for (k, &(a, b)) in pairs.iter().enumerate() {
            let p = ipv4_packet(vip4(a), vip4(b), format!("seq {seq}").as_bytes());
            sim.send_app(a, &p);
            // Right after n2's restart its tunnels are being set up again.
            if restart_due && (a == 2 || b == 2) {
                excused += 1;
            } else {
                sent[k].push(p);
            }
        }
        seq += 1;
        sim.run_for(minute);
    }
    sim.run_for(Duration::from_secs(10));
    for (k, &(a, b)) in pairs.iter().enumerate() {
        let got = sim.node(b).received_from(&sim.node(a).fqdn);
        let lost: Vec<String> = sent[k]
            .iter()
            .filter(|p| !got.contains(&p.as_slice()))
            .map(|p| String::from_utf8_lossy(&p[20..]).into_owned())
            .collect();
        assert!(
            lost.is_empty(),
            "n{a} -> n{b}: lost {lost:?} of {}",
            sent[k].len()
        );
    }
    assert!(excused <= 2);
    let (c1, c3) = (sim.node(1).node.counters(), sim.node(3).node.counters());
    // A rekey every two minutes, less the new tunnels of renewals and
    // restarts.
    let two_minutes = u64::from(days) * 86_400 / 120;
    assert!(c1.rekeys > two_minutes * 9 / 10, "n1: {c1:?}");
    assert!(c3.rekeys > two_minutes * 9 / 10, "n3: {c3:?}");
    // Grants of an hour renewed three quarters in, by the route's
    // initiator (n2 initiates the direct pair's routes after its restart).
    let renewals = u64::from(days) * 24 * 60 / 45;
    assert!(c3.grant_renewals >= renewals, "{c3:?}");
    let c2 = sim.node(2).node.counters();
    assert!(
        c1.grant_renewals + c2.grant_renewals >= renewals * 9 / 10,
        "{c1:?} {c2:?}"
    );
    for i in 1..=4 {
        assert_eq!(sim.node(i).node.counters().keys_expired, 0, "n{i}");
    }
    // The relayed tunnel outlived its first TRS: it ends relayed through
    // the second.
    let p = crate::nat::peer_status(&sim, 3, 4).expect("n3 still has n4");
    assert_eq!(p.path, "relayed");
    assert!(
        p.endpoint
            .is_some_and(|e| e.ip() == trs_v4(1).ip() || e.ip() == trs_v6(1).ip()),
        "n3's tunnel ends through {:?}",
        p.endpoint
    );
    eprintln!(
        "{days} days: n1 {} rekeys, {} grant renewals; n3 {} rekeys, {} grant renewals, {} relay failovers; {} steps",
        c1.rekeys, c1.grant_renewals, c3.rekeys, c3.grant_renewals, c3.relay_failovers, sim.steps()
    );
}

/// [`long_run`] over one virtual day: about two minutes of CPU in a debug
/// build, so on demand too.
#[test]
#[ignore = "a virtual day takes minutes; run on demand in release"]
fn a_virtual_day_of_rekeys_renewals_restarts_and_failover() {
    long_run(one_seed(39), 1);
}

/// [`long_run`] over seven virtual days: minutes of CPU, so run on demand
/// (release build):
/// `cargo nextest run --release -p cyphonic-node --test sim --run-ignored only seven_virtual_days`.
#[test]
#[ignore = "seven virtual days take minutes; run on demand in release"]
fn seven_virtual_days_of_rekeys_renewals_restarts_and_failover() {
    long_run(one_seed(39), 7);
}
