//! Deterministic simulations of the transport choice: nodes behind
//! firewalls that let only UDP and TCP 443 out (QUIC to the cloud), or only
//! TCP 443 (TLS over TCP), a QUIC listener that a blocked peer dials
//! directly, a firewall that closes and opens mid-session, and a forced
//! transport. The real NMS, node and TRS cores on a virtual clock, their
//! legs made as `cyphonic-transport`'s hub makes them (see
//! `harness.rs`). The simulated counterpart of `cyphonic lab
//! firewall`. A failing case prints its seed.

use std::net::SocketAddr;
use std::time::Duration;

use cyphonic_node::core::{
    CloudStatus, Leg, NodeConfig, Path, PeerStatus, Pong, Transport, RACE_STAGGER,
};
use cyphonic_proto::signal::Message;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

// ---- helpers ---------------------------------------------------------------

fn fqdn(i: usize) -> String {
    format!("n{i}.cyphonic.internal")
}

/// `n` public IPv4 nodes, the NMS with its probe port, one TRS, the cloud
/// listening on 443 (the harness's default).
fn config(seed: u64, n: usize) -> SimConfig {
    let mut config = SimConfig::new(seed, n);
    config.nms.probe_port = PROBE_PORT;
    config.trs = 1;
    config
}

fn cloud(sim: &Sim, i: usize) -> CloudStatus {
    sim.node(i).node.status(sim.now).cloud
}

fn peer_status(sim: &Sim, me: usize, peer: usize) -> Option<PeerStatus> {
    sim.node(me)
        .node
        .status(sim.now)
        .peers
        .into_iter()
        .find(|p| p.fqdn == fqdn(peer))
}

/// The data plane's path from `n<me>` to `n<peer>`.
fn tunnel_path(sim: &Sim, me: usize, peer: usize) -> Option<Path> {
    sim.node(me).tunnel_to(&fqdn(peer)).map(|t| t.path)
}

/// The transport the NMS has `n<i>`'s registration over.
fn nms_sees(sim: &Sim, i: usize) -> Option<Transport> {
    sim.nms
        .registrations()
        .into_iter()
        .find(|(f, _)| *f == fqdn(i))
        .map(|(_, r)| r.transport)
}

fn registered(sim: &Sim) -> bool {
    sim.nodes
        .iter()
        .all(|n| n.node.status(sim.now).cloud.registered)
}

/// Starts the simulation; every node must register within `within`.
fn started(config: SimConfig, within: Duration) -> Sim {
    let mut sim = Sim::new(config);
    sim.start();
    assert!(
        sim.run_until(within, registered),
        "not every node registered within {within:?}"
    );
    sim
}

/// `cyphonic ping n<to>` at `n<from>`, by name, every 500 ms until one is
/// answered or `within` has passed (the first selects the route and fails
/// at once). Returns when the answer came, and the answer.
fn ping_until(sim: &mut Sim, from: usize, to: usize, within: Duration) -> Option<(Duration, Pong)> {
    let deadline = sim.elapsed() + within;
    while sim.elapsed() < deadline {
        let client = sim.ping(from, &fqdn(to));
        let answered = |s: &Sim| {
            s.node(from)
                .pongs
                .iter()
                .any(|(_, c, r)| *c == client && r.is_ok())
        };
        sim.run_until(ms(500), answered);
        let pong = sim.node(from).pongs.iter().find_map(|(at, c, r)| match r {
            Ok(p) if *c == client => Some((*at, p.clone())),
            _ => None,
        });
        if pong.is_some() {
            return pong;
        }
    }
    None
}

/// The TRS's leg address for a transport: its UDP socket, or 443.
fn trs_leg(t: Transport) -> Leg {
    match t {
        Transport::Udp => Leg::udp(trs_v4(0)),
        t => Leg::new(t, SocketAddr::new(trs_v4(0).ip(), CLOUD_LEG_PORT)),
    }
}

fn relayed_over(path: Option<Path>, t: Transport) -> bool {
    matches!(path, Some(Path::Relay { server, .. }) if server == trs_leg(t))
}

/// Packets of `n<i>` that reached the wire (not stopped by its firewall)
/// and would be signaling over `t`: what a capture outside its network saw.
fn signaling_out(sim: &Sim, i: usize, t: Transport) -> usize {
    let ips: Vec<_> = sim.node(i).addrs.iter().map(|a| a.ip()).collect();
    sim.wire
        .iter()
        .filter(|w| w.transport == t && w.fate != Fate::Firewalled)
        .filter(|w| ips.contains(&w.lan_src.unwrap_or(w.src).ip()))
        .filter(|w| w.message.is_some() || w.kind == "Signaling")
        .count()
}

/// The registration time bound over `t`: the fallback (and for TCP the
/// stagger behind QUIC), then the leg's handshake, the raced Registration
/// and the one over the winner alone (three round trips of 20 ms), with
/// room for a lost copy's retransmission.
fn registration_bound(node: &NodeConfig, t: Transport) -> Duration {
    let stagger = if t == Transport::Tcp {
        RACE_STAGGER
    } else {
        Duration::ZERO
    };
    node.transport_fallback + stagger + ms(300)
}

// ---- 1. UDP blocked: QUIC to 443 -------------------------------------------

/// Both nodes behind firewalls that let only UDP and TCP 443 out: each
/// registers over QUIC a little after the fallback, the NMS relays them,
/// each over its QUIC leg to the TRS's 443, and a ping by name works.
#[test]
fn udp_blocked_on_both_sides_goes_over_quic_through_the_relay() {
    let mut config = config(one_seed(1), 2);
    for n in &mut config.nodes {
        n.firewall = Firewall::Only443;
    }
    config.nodes[1].nat = Some(0);
    config.nats = vec![NatSpec::eim()];
    let node = config.node.clone();
    let sim = &mut started(config, secs(5));

    for i in [1, 2] {
        let c = cloud(sim, i);
        assert_eq!((c.transport.as_str(), c.transport_forced), ("quic", false));
        assert_eq!(nms_sees(sim, i), Some(Transport::Quic), "n{i} at the NMS");
        // Registered only after the fallback, and soon after it.
        let took = sim.node(i).registered[0].at;
        assert!(
            took >= node.transport_fallback && took <= registration_bound(&node, Transport::Quic),
            "n{i} registered after {took:?}"
        );
        // Its native UDP never got out; the QUIC leg is up; no TCP was
        // needed beyond the race.
        assert!(sim
            .wire
            .iter()
            .any(|w| w.transport == Transport::Udp && w.fate == Fate::Firewalled));
    }

    let (at, pong) = ping_until(sim, 1, 2, secs(10)).expect("a ping from n1 to n2 is answered");
    assert_eq!(pong.path, "relayed");
    assert_eq!(pong.endpoint, trs_leg(Transport::Quic).addr);
    assert!(at <= secs(10), "answered at {at:?}");
    for (me, peer) in [(1, 2), (2, 1)] {
        assert!(
            relayed_over(tunnel_path(sim, me, peer), Transport::Quic),
            "n{me}'s tunnel: {:?}",
            tunnel_path(sim, me, peer)
        );
        let p = peer_status(sim, me, peer).unwrap();
        assert_eq!(
            (p.state.as_str(), p.path.as_str(), p.transport.as_str()),
            ("established", "relayed", "quic")
        );
        assert_eq!(p.endpoint, Some(trs_leg(Transport::Quic).addr));
    }
    ping_until(sim, 2, 1, secs(2)).expect("and back from n2");
    assert!(sim.trs[0].trs.counters().forwarded_packets > 0);
    // The cloud answered each node on its QUIC leg.
    let (sent, delivered) = sim.count("RegistrationResponse");
    assert!(sent >= 2 && delivered >= 2);
}

/// One side blocked (QUIC), the other on an open network (native UDP):
/// relayed, each side over its own transport to the same TRS.
#[test]
fn one_blocked_side_is_relayed_each_side_over_its_own_transport() {
    let mut config = config(one_seed(2), 2);
    config.nodes[0].firewall = Firewall::Only443;
    config.nodes[1].nat = Some(0);
    config.nats = vec![NatSpec::eim()];
    let sim = &mut started(config, secs(5));
    assert_eq!(cloud(sim, 1).transport, "quic");
    assert_eq!(cloud(sim, 2).transport, "udp");
    assert_eq!(nms_sees(sim, 2), Some(Transport::Udp));

    ping_until(sim, 1, 2, secs(10)).expect("n1 -> n2");
    ping_until(sim, 2, 1, secs(2)).expect("n2 -> n1");
    assert!(relayed_over(tunnel_path(sim, 1, 2), Transport::Quic));
    assert!(relayed_over(tunnel_path(sim, 2, 1), Transport::Udp));
    let (p1, p2) = (
        peer_status(sim, 1, 2).unwrap(),
        peer_status(sim, 2, 1).unwrap(),
    );
    assert_eq!(
        (p1.path.as_str(), p1.transport.as_str()),
        ("relayed", "quic")
    );
    assert_eq!(
        (p2.path.as_str(), p2.transport.as_str()),
        ("relayed", "udp")
    );
    // Data both ways through the TRS, across transports.
    let before = sim.trs[0].trs.counters().forwarded_packets;
    for (from, to) in [(1, 2), (2, 1)] {
        let p = ipv4_packet(vip4(from), vip4(to), format!("{from}->{to}").as_bytes());
        sim.send_app(from, &p);
        assert!(sim.run_until(secs(1), |s| s
            .node(to)
            .received_from(&fqdn(from))
            .contains(&p.as_slice())));
    }
    assert!(sim.trs[0].trs.counters().forwarded_packets >= before + 2);
}

// ---- 2. Only TCP 443 ----------------------------------------------------------

#[test]
fn only_tcp_443_goes_over_tls_through_the_relay() {
    let mut config = config(one_seed(3), 2);
    for n in &mut config.nodes {
        n.firewall = Firewall::TcpOnly443;
    }
    let node = config.node.clone();
    let sim = &mut started(config, secs(5));
    for i in [1, 2] {
        assert_eq!(cloud(sim, i).transport, "tcp");
        assert_eq!(nms_sees(sim, i), Some(Transport::Tcp));
        let took = sim.node(i).registered[0].at;
        assert!(
            took <= registration_bound(&node, Transport::Tcp),
            "n{i} registered after {took:?}"
        );
    }
    let (_, pong) = ping_until(sim, 1, 2, secs(10)).expect("n1 -> n2 over TCP");
    assert_eq!(
        (pong.path.as_str(), pong.endpoint),
        ("relayed", trs_leg(Transport::Tcp).addr)
    );
    ping_until(sim, 2, 1, secs(2)).expect("n2 -> n1 over TCP");
    for (me, peer) in [(1, 2), (2, 1)] {
        assert!(relayed_over(tunnel_path(sim, me, peer), Transport::Tcp));
        assert_eq!(peer_status(sim, me, peer).unwrap().transport, "tcp");
    }
    // Nothing but TCP got out of either network.
    for i in [1, 2] {
        let ips: Vec<_> = sim.node(i).addrs.iter().map(|a| a.ip()).collect();
        assert!(!sim.wire.iter().any(|w| ips.contains(&w.src.ip())
            && w.transport != Transport::Tcp
            && w.fate != Fate::Firewalled));
    }
}

// ---- 3. QUIC direct ----------------------------------------------------------

/// A node behind an EIM NAT and a firewall that lets only 443 out, and a
/// public peer listening for QUIC on 443: the blocked side dials the
/// peer's listener and the tunnel goes direct over that QUIC leg, in both
/// directions; the TRS carries nothing.
#[test]
fn a_blocked_node_goes_direct_over_quic_to_a_public_listener() {
    let mut config = config(one_seed(4), 2);
    config.nodes[0] = NodeSpec::new(1).behind(0).firewall(Firewall::Only443);
    config.nodes[1] = NodeSpec::new(2).quic_port(443);
    config.nats = vec![NatSpec::eim()];
    let sim = &mut started(config, secs(5));
    assert_eq!(
        (
            cloud(sim, 1).transport.as_str(),
            cloud(sim, 2).transport.as_str()
        ),
        ("quic", "udp")
    );

    let listener = SocketAddr::new(node_v4(2).ip(), 443);
    let (_, pong) = ping_until(sim, 1, 2, secs(10)).expect("n1 -> n2 over QUIC");
    assert_eq!((pong.path.as_str(), pong.endpoint), ("direct", listener));
    assert_eq!(
        tunnel_path(sim, 1, 2),
        Some(Path::Direct(Leg::new(Transport::Quic, listener)))
    );
    // n2 answers on the leg n1 dialed: from its listener to n1's NAT.
    let back = tunnel_path(sim, 2, 1).expect("n2's tunnel");
    assert_eq!(back.transport(), Transport::Quic);
    assert_eq!(back.address().ip(), nat_public(0));
    assert!(!back.is_relay());
    ping_until(sim, 2, 1, secs(2)).expect("n2 -> n1 over the accepted leg");
    for (me, peer) in [(1, 2), (2, 1)] {
        let p = peer_status(sim, me, peer).unwrap();
        assert_eq!(
            (p.path.as_str(), p.transport.as_str()),
            ("direct", "quic"),
            "n{me}"
        );
    }
    assert_eq!(sim.trs[0].trs.counters().forwarded_packets, 0);
    assert!(sim
        .node(2)
        .legs
        .get(&(Transport::Quic, back.address()))
        .is_some_and(|l| l.local_port == 443));
}

// ---- 4. A transport breaks mid-session ----------------------------------------

/// Open at first (native UDP, a direct tunnel); then the firewall lets only
/// 443 out: signaling moves to QUIC once the NMS's silence is noticed, and
/// the tunnel carries pings again, relayed over QUIC. Then the firewall
/// opens: within the re-probe interval signaling is back on UDP, and so is
/// the tunnel.
#[test]
fn a_transport_that_breaks_mid_session_is_left_and_taken_back() {
    let config = config(one_seed(5), 2);
    let node = config.node.clone();
    let sim = &mut started(config, secs(2));
    assert_eq!(cloud(sim, 1).transport, "udp");
    let (_, pong) = ping_until(sim, 1, 2, secs(5)).expect("a tunnel on the open network");
    assert_eq!((pong.path.as_str(), pong.endpoint), ("direct", node_v4(2)));

    sim.set_firewall(1, Firewall::Only443);
    let broke = sim.elapsed();
    // Signaling: the first unanswered KeepAlive (the NMS's keepalive
    // interval is 15 s, each waits up to 5 s) sends Registrations over the
    // other transports; QUIC answers.
    let keepalive = secs(15);
    let signaling_bound = keepalive + secs(5) + registration_bound(&node, Transport::Quic);
    assert!(
        sim.run_until(signaling_bound, |s| cloud(s, 1).registered
            && cloud(s, 1).transport == "quic"),
        "n1 not on QUIC within {signaling_bound:?} of the break: {:?}",
        cloud(sim, 1)
    );
    let on_quic = sim.elapsed() - broke;
    // The tunnel: within the liveness check and a new route after that.
    let tunnel_bound = node.keepalive * (node.dead_after + 1) + node.handshake_timeout * 2;
    let (at, pong) = ping_until(sim, 1, 2, tunnel_bound)
        .unwrap_or_else(|| panic!("no ping through within {tunnel_bound:?} of QUIC signaling ({on_quic:?} after the break); n1 sees {:?}", peer_status(sim, 1, 2)));
    assert_eq!(pong.path, "relayed", "answered at {at:?}");
    assert!(
        relayed_over(tunnel_path(sim, 1, 2), Transport::Quic),
        "{:?}",
        tunnel_path(sim, 1, 2)
    );
    ping_until(sim, 2, 1, secs(3)).expect("n2 -> n1 after the break");

    sim.set_firewall(1, Firewall::Open);
    let opened = sim.elapsed();
    let back_bound = node.transport_reprobe + secs(2);
    assert!(
        sim.run_until(back_bound, |s| cloud(s, 1).transport == "udp"),
        "n1 still on {} {back_bound:?} after the firewall opened",
        cloud(sim, 1).transport
    );
    assert_eq!(nms_sees(sim, 1), Some(Transport::Udp));
    let back = sim.elapsed() - opened;
    // The route is selected again: direct over native UDP.
    assert!(
        sim.run_until(node.handshake_timeout, |s| tunnel_path(s, 1, 2)
            == Some(Path::udp(node_v4(2)))),
        "n1's tunnel {:?} after signaling came back ({back:?})",
        tunnel_path(sim, 1, 2)
    );
    let (_, pong) = ping_until(sim, 1, 2, secs(3)).expect("a ping after the firewall opened");
    assert_eq!((pong.path.as_str(), pong.endpoint), ("direct", node_v4(2)));
    ping_until(sim, 2, 1, secs(3)).expect("n2 -> n1 after the firewall opened");
    assert_eq!(tunnel_path(sim, 2, 1), Some(Path::udp(node_v4(1))));
}

// ---- 5. Forced transport ------------------------------------------------------

/// `--transport tcp` on an open network: TCP for everything, not one
/// signaling packet over native UDP (or QUIC), no re-probing.
/// The firewall starts letting only 443 out while the node idles on
/// native UDP, and an application looks a name up at once: the query's
/// KeepAlive check finds the NMS silent within `dns_cloud_wait`, the other
/// transports are tried then, and signaling is on QUIC a few seconds after
/// the query (not after the missed keepalives that mean a dead cloud); a
/// lookup then resolves.
#[test]
fn a_lookup_notices_within_seconds_that_udp_is_blocked() {
    let config = config(one_seed(8), 2);
    let node = config.node.clone();
    let sim = &mut started(config, secs(2));
    assert_eq!(cloud(sim, 1).transport, "udp");
    sim.set_firewall(1, Firewall::Only443);
    let asked = sim.elapsed();
    let name = format!("{}.", fqdn(2));
    let first = sim.dns_query(1, &name, RecordType::A);
    let bound = node.dns_cloud_wait + registration_bound(&node, Transport::Quic);
    assert!(
        sim.run_until(bound, |s| cloud(s, 1).registered
            && cloud(s, 1).transport == "quic"),
        "n1 not on QUIC within {bound:?} of the query: {:?}",
        cloud(sim, 1)
    );
    let noticed = sim.elapsed() - asked;
    // The first query failed fast (the cloud was away) or was answered;
    // the stub resolver's retry is answered over QUIC.
    let answered = |s: &Sim, c| {
        s.dns_answer(1, c)
            .is_some_and(|a| a.rcode() == ResponseCode::NoError)
    };
    if !answered(sim, first) {
        let retry = sim.dns_query(1, &name, RecordType::A);
        assert!(
            sim.run_until(node.direction_timeout, |s| answered(s, retry)),
            "no answer over QUIC {noticed:?} after the query"
        );
    }
    assert!(noticed <= secs(4), "noticed after {noticed:?}");
}

#[test]
fn a_forced_transport_is_the_only_one_used() {
    let mut config = config(one_seed(6), 2);
    config.nodes = vec![
        NodeSpec::new(1).forced(Transport::Tcp),
        NodeSpec::new(2).behind(0).forced(Transport::Tcp),
    ];
    config.nats = vec![NatSpec::eim()];
    let node = config.node.clone();
    let sim = &mut started(config, secs(2));
    for i in [1, 2] {
        let c = cloud(sim, i);
        assert_eq!((c.transport.as_str(), c.transport_forced), ("tcp", true));
        // No fallback to wait for: at once.
        assert!(sim.node(i).registered[0].at < ms(200));
    }
    ping_until(sim, 1, 2, secs(5)).expect("n1 -> n2 over TCP");
    ping_until(sim, 2, 1, secs(2)).expect("n2 -> n1 over TCP");
    for (me, peer) in [(1, 2), (2, 1)] {
        assert!(relayed_over(tunnel_path(sim, me, peer), Transport::Tcp));
    }
    // Past a re-probe interval: still TCP, nothing else tried.
    sim.run_for(node.transport_reprobe * 2);
    for i in [1, 2] {
        assert_eq!(cloud(sim, i).transport, "tcp");
        assert_eq!(
            signaling_out(sim, i, Transport::Udp),
            0,
            "n{i}: UDP signaling"
        );
        assert_eq!(
            signaling_out(sim, i, Transport::Quic),
            0,
            "n{i}: QUIC signaling"
        );
        assert!(signaling_out(sim, i, Transport::Tcp) > 0);
    }
    let node_ips: Vec<_> = sim
        .nodes
        .iter()
        .flat_map(|n| n.addrs.iter().map(|a| a.ip()))
        .collect();
    assert!(
        !sim.wire.iter().any(|w| w.transport != Transport::Tcp
            && node_ips.contains(&w.lan_src.unwrap_or(w.src).ip())),
        "a node sent something not over TCP"
    );
    ping_until(sim, 1, 2, secs(2)).expect("still answered");
}

// ---- 6. Bugs the transports show ------------------------------------------------

/// The race's late copy: QUIC's handshake loses its first flight, so TCP
/// answers first and the node registers once more over TCP alone; then the
/// QUIC leg comes up and delivers the raced Registration it held. The NMS
/// must end up with the registration the node uses.
#[test]
fn a_late_raced_registration_does_not_leave_the_nms_on_another_transport() {
    let mut config = config(one_seed(7), 1);
    config.nodes[0].firewall = Firewall::Only443;
    let sim = &mut Sim::new(config);
    let mut first = true;
    sim.add_rule(move |w| {
        let drop = first && w.transport == Transport::Quic && w.kind == "LegOpen";
        first &= !drop;
        drop
    });
    sim.start();
    assert!(sim.run_until(secs(5), registered));
    sim.run_for(secs(5));
    assert_eq!(cloud(sim, 1).transport, "tcp", "TCP won the race");
    let quic_copy = sim.wire.iter().any(|w| {
        w.transport == Transport::Quic
            && matches!(w.message, Some(Message::RegistrationRequest(_)))
            && w.fate == Fate::Delivered
    });
    assert!(
        quic_copy,
        "the raced copy went out once the QUIC leg was up"
    );
    assert_eq!(
        nms_sees(sim, 1),
        Some(Transport::Tcp),
        "the node signals over TCP; the NMS took the late QUIC copy last"
    );
}

/// `cyphonic ping` says which transport the probe took.
#[test]
fn a_ping_reports_the_transport_it_took() {
    let mut config = config(one_seed(8), 2);
    config.nodes[0].firewall = Firewall::Only443;
    let sim = &mut started(config, secs(5));
    let (_, pong) = ping_until(sim, 1, 2, secs(10)).expect("n1 -> n2");
    assert!(relayed_over(tunnel_path(sim, 1, 2), Transport::Quic));
    assert_eq!(pong.transport, "quic");
}

// ---- 7. Determinism -----------------------------------------------------------

/// Firewalls of every kind, a NAT, QUIC and TCP legs, a relay, a QUIC
/// listener, 5 % loss and a firewall that changes: a fingerprint of every
/// packet sent.
fn transport_run(seed: u64) -> (u64, usize, usize) {
    let mut config = config(seed, 4);
    config.nodes = vec![
        NodeSpec::new(1).firewall(Firewall::Only443).behind(0),
        NodeSpec::new(2).firewall(Firewall::TcpOnly443),
        NodeSpec::new(3).quic_port(443),
        NodeSpec::new(4).behind(1),
    ];
    config.nats = vec![NatSpec::eim(), NatSpec::sym()];
    config.link.loss = 0.05;
    let mut sim = Sim::new(config);
    sim.start();
    sim.run_for(secs(5));
    for (from, to) in [(1, 2), (1, 3), (4, 2), (3, 4)] {
        sim.ping(from, &fqdn(to));
        sim.run_for(ms(7));
    }
    sim.run_for(secs(5));
    for i in 0..20u8 {
        for (from, to) in [(1, 2), (2, 1), (1, 3), (4, 2), (3, 4)] {
            sim.send_app(from, &ipv4_packet(vip4(from), vip4(to), &[i; 40]));
        }
        sim.run_for(ms(50));
    }
    sim.set_firewall(4, Firewall::Only443);
    sim.set_firewall(2, Firewall::Open);
    sim.run_for(secs(40));
    for (from, to) in [(1, 2), (4, 2)] {
        sim.ping(from, &fqdn(to));
    }
    sim.run_for(secs(5));
    let received = sim.nodes.iter().map(|n| n.received.len()).sum();
    (sim.transmit_hash(), sim.wire.len(), received)
}

#[test]
fn the_same_seed_gives_the_same_packets_through_firewalls_and_legs() {
    assert_deterministic(one_seed(17), transport_run, 300, 40);
}

// ---- Path MTU across legs ------------------------------------------------------

/// n1 reaches the relay over TLS on TCP (a stream: any size), n2 over QUIC
/// (a DATAGRAM frame must fit one QUIC packet): the TRS cannot pass n1's
/// full-size packets to n2. n1's size probes, end to end through the
/// relay, find the smaller leg within seconds, so its too-bigs make inner
/// senders fit; n2's tunnel starts at its own leg's size and keeps it.
#[test]
fn a_relayed_tunnel_learns_the_smaller_leg_of_the_peer() {
    let limit = cyphonic_node::dataplane::quic_inner_limit(false, true);
    for seed in [one_seed(11), 12, 13] {
        let mut config = config(seed, 2);
        config.nodes[0].firewall = Firewall::TcpOnly443;
        config.nodes[1].firewall = Firewall::Only443;
        let sim = &mut started(config, secs(5));
        let n2 = node_v4(2).ip();
        // The TRS's hub refuses a DATAGRAM larger than n2's QUIC leg takes.
        sim.add_rule(move |w| {
            w.transport == Transport::Quic
                && w.dst.ip() == n2
                && w.len > limit + cyphonic_proto::relay::RELAY_HEADER_LEN + 32
        });
        ping_until(sim, 1, 2, secs(10)).expect("n1 -> n2");
        assert!(relayed_over(tunnel_path(sim, 1, 2), Transport::Tcp));
        assert!(relayed_over(tunnel_path(sim, 2, 1), Transport::Quic));
        let mtu = |s: &Sim, me: usize, peer: usize| {
            s.node(me)
                .tunnel_to(&fqdn(peer))
                .and_then(|t| t.mtu.limit())
        };
        assert!(
            sim.run_until(secs(5), |s| mtu(s, 1, 2).is_some_and(|m| m <= limit)),
            "seed {seed}: n1 learned n2's leg: {:?}",
            mtu(sim, 1, 2)
        );
        let m = mtu(sim, 1, 2).expect("mtu");
        assert!(
            m + 16 > limit,
            "seed {seed}: {m} is the largest step under {limit}"
        );
        sim.run_for(secs(3));
        assert_eq!(mtu(sim, 2, 1), Some(limit), "seed {seed}");
        let status = peer_status(sim, 2, 1).expect("peer");
        assert_eq!(
            (status.mtu, status.mtu_searching),
            (Some(limit as u16), false)
        );
        // A packet of the size found crosses both legs.
        let p = ipv4_packet(vip4(1), vip4(2), &vec![5u8; m - 20]);
        sim.send_app(1, &p);
        assert!(sim.run_until(secs(1), |s| s
            .node(2)
            .received_from(&fqdn(1))
            .contains(&p.as_slice())));
    }
}
