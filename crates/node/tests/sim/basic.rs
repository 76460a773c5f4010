//! Deterministic simulations of the overlay's flows: Registration, route
//! selection, tunnel establishment and data, with the real NMS and node
//! cores on a virtual clock (see `harness.rs`). Each case runs in
//! milliseconds; a failing case prints its seed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cyphonic_proto::signal::{DirectionErrorCode, Message};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

/// `SIM_SEED`, if set, replays the seed a failed case printed.
fn replay_seed() -> Option<u64> {
    std::env::var("SIM_SEED")
        .ok()
        .map(|s| s.parse().expect("SIM_SEED is a number"))
}

/// Seeds for the cases that run over many: 0..n, or just `SIM_SEED`.
fn seeds(n: u64) -> Vec<u64> {
    replay_seed().map_or_else(|| (0..n).collect(), |s| vec![s])
}

/// The seed of a single-run case: `default`, or `SIM_SEED`.
pub(crate) fn one_seed(default: u64) -> u64 {
    replay_seed().unwrap_or(default)
}

/// Starts the simulation and waits until every node registered.
pub(crate) fn registered(config: SimConfig) -> Sim {
    let timeout = config.node.registration_timeout;
    let mut sim = Sim::new(config);
    sim.start();
    assert!(
        sim.run_until(timeout, |s| s
            .nodes
            .iter()
            .all(|n| !n.registered.is_empty())),
        "not every node registered within {timeout:?}"
    );
    sim
}

/// Looks `n<to>` up at `n<from>` and waits for the answer.
pub(crate) fn lookup(sim: &mut Sim, from: usize, to: usize, qtype: RecordType) -> ResponseCode {
    let name = format!("n{to}.cyphonic.internal.");
    let client = sim.dns_query(from, &name, qtype);
    let timeout = sim.node(from).node.config().direction_timeout + Duration::from_secs(1);
    assert!(
        sim.run_until(timeout, |s| s.dns_answer(from, client).is_some()),
        "no answer to {name} at n{from} within {timeout:?}"
    );
    let answer = sim.dns_answer(from, client).expect("answered");
    if answer.rcode() == ResponseCode::NoError {
        let want: IpAddr = match qtype {
            RecordType::AAAA => vip6(to).into(),
            _ => vip4(to).into(),
        };
        assert_eq!(answer.addresses(), vec![want], "{qtype} answer for {name}");
    }
    answer.rcode()
}

/// Waits until `n<a>` and `n<b>` both have a tunnel to each other.
pub(crate) fn tunnel_between(sim: &mut Sim, a: usize, b: usize, timeout: Duration) -> bool {
    let (fa, fb) = (sim.node(a).fqdn.clone(), sim.node(b).fqdn.clone());
    sim.run_until(timeout, |s| {
        s.node(a).tunnel_up_with(&fb) && s.node(b).tunnel_up_with(&fa)
    })
}

/// Sends one IPv4 and one IPv6 packet each way between `n<a>` and `n<b>`
/// and checks each arrives once, intact, through the right tunnel.
fn exchange(sim: &mut Sim, a: usize, b: usize, tag: &str) {
    for (from, to) in [(a, b), (b, a)] {
        let before = sim.node(to).received.len();
        let p4 = ipv4_packet(
            vip4(from),
            vip4(to),
            format!("{tag} v4 n{from}->n{to}").as_bytes(),
        );
        let p6 = ipv6_packet(
            vip6(from),
            vip6(to),
            format!("{tag} v6 n{from}->n{to}").as_bytes(),
        );
        sim.send_app(from, &p4);
        sim.send_app(from, &p6);
        let from_fqdn = sim.node(from).fqdn.clone();
        assert!(
            sim.run_until(Duration::from_secs(1), |s| s.node(to).received.len()
                >= before + 2),
            "data n{from} -> n{to} did not arrive"
        );
        let got: Vec<_> = sim.node(to).received[before..]
            .iter()
            .map(|r| (r.peer.clone(), r.packet.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(from_fqdn.clone(), p4), (from_fqdn, p6)],
            "n{to} opened what n{from} sealed"
        );
    }
}

// ---- 1. Registration ---------------------------------------------------

#[test]
fn every_node_registers_with_the_vips_of_its_session() {
    let mut sim = registered(SimConfig::new(one_seed(1), 3));
    for n in &sim.nodes {
        let session = n.session.as_ref().expect("logged in");
        let reg = &n.registered[0];
        assert_eq!(
            (reg.fqdn.as_str(), reg.vip4, reg.vip6, reg.observed),
            (
                session.fqdn.as_str(),
                session.vip4,
                session.vip6,
                n.addrs[0]
            ),
            "{}'s Registered event",
            n.name
        );
        // The RegistrationResponse on the wire carries the session's VIPs.
        let response = sim
            .wire
            .iter()
            .find_map(|w| match &w.message {
                Some(Message::RegistrationResponse(r)) if w.dst == n.addrs[0] => Some(r),
                _ => None,
            })
            .expect("a RegistrationResponse to the node");
        assert_eq!((response.vip4, response.vip6), (session.vip4, session.vip6));
        assert_eq!(response.fqdn, session.fqdn);
        assert_eq!(response.observed, n.addrs[0]);

        let status = n.node.status(sim.now);
        assert!(status.cloud.logged_in && status.cloud.registered);
        assert_eq!(status.cloud.observed, Some(n.addrs[0]));
        assert_eq!(
            (status.vip4, status.vip6),
            (Some(session.vip4), Some(session.vip6))
        );
    }
    let regs = sim.nms.registrations();
    let observed: Vec<(String, SocketAddr)> =
        regs.iter().map(|(f, r)| (f.clone(), r.observed)).collect();
    let want: Vec<(String, SocketAddr)> = sim
        .nodes
        .iter()
        .map(|n| (n.fqdn.clone(), n.addrs[0]))
        .collect();
    assert_eq!(
        observed, want,
        "the NMS shows every node at its observed address"
    );
    assert_eq!(sim.nms.counters().registrations, 3);
    // One login each, and no second: registration never timed out.
    assert!(sim.nodes.iter().all(|n| n.logins == 1));

    // Keepalives keep the registration for minutes without a new Login.
    sim.run_for(Duration::from_secs(120));
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.logins == 1 && n.node.status(sim.now).cloud.registered));
    let (sent, delivered) = sim.count("KeepAliveAck");
    assert!(
        sent >= 3 * 7 && sent == delivered,
        "keepalives answered: {sent}"
    );
}

// ---- 2. Route selection and tunnel -----------------------------------

/// DNS for n2 at n1 gives n2's VIPs; both ends get the tunnel; data sealed
/// at either end opens at the other; status says direct and established.
fn route_and_tunnel(stack: Stack, want_endpoint: fn(usize) -> SocketAddr) {
    let mut config = SimConfig::new(one_seed(2), 0);
    config.nodes = (1..=2).map(|i| NodeSpec::new(i).stack(stack)).collect();
    let handshake_timeout = config.node.handshake_timeout;
    let mut sim = registered(config);

    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
    // The second question is answered from the route already selected.
    let directions = sim.count("DirectionRequest").0;
    assert_eq!(
        lookup(&mut sim, 1, 2, RecordType::AAAA),
        ResponseCode::NoError
    );
    assert_eq!(sim.count("DirectionRequest").0, directions);

    assert!(
        tunnel_between(&mut sim, 1, 2, handshake_timeout),
        "tunnel n1 <-> n2 within {handshake_timeout:?}"
    );
    assert!(matches!(
        sim.nms_events.iter().find_map(|(_, e)| match e {
            cyphonic_cloud_core::nms::NmsEvent::RouteDirected { initiator, responder, .. } =>
                Some((initiator.clone(), responder.clone())),
            _ => None,
        }),
        Some((i, r)) if i == "n1.cyphonic.internal" && r == "n2.cyphonic.internal"
    ));
    // n1 sends its Tunnel Request to the endpoint the NMS ordered first.
    let t12 = sim
        .node(1)
        .tunnel_to("n2.cyphonic.internal")
        .expect("n1's tunnel");
    assert_eq!(t12.path.address(), want_endpoint(2));
    let t21 = sim
        .node(2)
        .tunnel_to("n1.cyphonic.internal")
        .expect("n2's tunnel");
    assert_eq!(t21.path.address(), want_endpoint(1));
    assert_eq!((t12.vip4, t12.vip6), (vip4(2), vip6(2)));
    assert_eq!((t21.vip4, t21.vip6), (vip4(1), vip6(1)));

    exchange(&mut sim, 1, 2, "hello");

    for (me, peer, role) in [(1, 2, "initiator"), (2, 1, "responder")] {
        let status = sim.node(me).node.status(sim.now);
        let p = status
            .peers
            .iter()
            .find(|p| p.fqdn == format!("n{peer}.cyphonic.internal"))
            .expect("peer in status");
        assert_eq!(
            (p.path.as_str(), p.state.as_str(), p.pattern),
            ("direct", "established", 1)
        );
        assert_eq!(serde_json::to_value(p.role).unwrap(), role);
        assert_eq!(p.endpoint, Some(want_endpoint(peer)));
        assert_eq!(status.counters.handshake_failures, 0);
        assert!(p.last_handshake_secs_ago.is_some());
    }
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.data_rx_bad == 0 && n.handshakes() == 1));
}

#[test]
fn route_selection_and_tunnel_over_ipv4() {
    route_and_tunnel(Stack::V4, node_v4);
}

/// With 40 ms between the nodes and 10 ms to the NMS, the DNS answer comes
/// after the four signaling hops (40 ms), and each end's tunnel one and two
/// node-to-node hops later: the virtual clock runs exactly as the links say.
#[test]
fn the_flow_takes_exactly_the_link_latencies() {
    let mut sim = registered(SimConfig::new(one_seed(2), 2));
    let slow = Link {
        latency: Duration::from_millis(40),
        loss: 0.0,
    };
    let (a, b) = (node_v4(1).ip(), node_v4(2).ip());
    sim.set_link(a, b, slow);
    sim.set_link(b, a, slow);
    let asked = sim.elapsed();
    let client = sim.dns_query(1, "n2.cyphonic.internal.", RecordType::A);
    assert!(tunnel_between(&mut sim, 1, 2, Duration::from_secs(1)));
    let ms = Duration::from_millis;
    assert_eq!(sim.dns_answer(1, client).unwrap().at - asked, ms(40));
    assert_eq!(sim.node(2).tunnel_ups[0].0 - asked, ms(80));
    assert_eq!(sim.node(1).tunnel_ups[0].0 - asked, ms(120));
    // The initiator's first packet (a keepalive) confirms the responder's
    // keys, which send from then on.
    assert_eq!(sim.node(2).tunnel_ups[1].0 - asked, ms(160));
}

#[test]
fn route_selection_and_tunnel_over_ipv6() {
    route_and_tunnel(Stack::V6, node_v6);
}

/// Dual-stack nodes reach the NMS over IPv4, and the NMS orders IPv6 first.
#[test]
fn route_selection_prefers_ipv6_between_dual_stack_nodes() {
    route_and_tunnel(Stack::Dual, node_v6);
}

// ---- 4. Specific losses ----------------------------------------------

/// The whole flow (Registration, route selection, tunnel, data) with the
/// first `count` packets of `kind` dropped: it completes within the
/// configured timeouts, and the dropped packet was sent again.
fn flow_survives_dropping(kind: &'static str, count: usize) -> Sim {
    let config = SimConfig::new(one_seed(4), 2);
    let (registration, direction, handshake) = (
        config.node.registration_timeout,
        config.node.direction_timeout,
        config.node.handshake_timeout,
    );
    let mut sim = Sim::new(config);
    sim.drop_first(kind, count);
    sim.start();
    assert!(
        sim.run_until(registration, |s| s
            .nodes
            .iter()
            .all(|n| !n.registered.is_empty())),
        "registration with the first {kind} dropped"
    );
    let client = sim.dns_query(1, "n2.cyphonic.internal.", RecordType::A);
    assert!(
        sim.run_until(direction, |s| s.dns_answer(1, client).is_some()),
        "route selection with the first {kind} dropped"
    );
    let answer = sim.dns_answer(1, client).expect("answered");
    assert_eq!(answer.rcode(), ResponseCode::NoError);
    assert_eq!(answer.addresses(), vec![IpAddr::from(vip4(2))]);
    assert!(
        tunnel_between(&mut sim, 1, 2, handshake),
        "tunnel with the first {kind} dropped"
    );
    exchange(&mut sim, 1, 2, kind);

    let (sent, delivered) = sim.count(kind);
    assert_eq!(
        sent - delivered,
        count,
        "exactly the chosen {kind}s were dropped"
    );
    assert!(delivered >= 1, "a {kind} got through in the end");
    // Nobody had to start over.
    assert!(sim.nodes.iter().all(|n| n.logins == 1));
    assert_eq!(sim.nms.counters().direction_failures, 0);
    sim
}

#[test]
fn registration_survives_a_lost_registration_response() {
    let sim = flow_survives_dropping("RegistrationResponse", 1);
    assert_eq!(sim.count("RegistrationRequest").0, 3, "one retransmission");
}

#[test]
fn registration_survives_a_lost_registration_request() {
    flow_survives_dropping("RegistrationRequest", 1);
}

#[test]
fn route_selection_survives_a_lost_direction_request() {
    flow_survives_dropping("DirectionRequest", 1);
}

#[test]
fn route_selection_survives_a_lost_route_direction_to_responder() {
    let sim = flow_survives_dropping("RouteDirectionToResponder", 1);
    // The NMS retransmitted it without the initiator having to ask again.
    assert_eq!(sim.count("RouteDirectionToResponder").0, 2);
}

#[test]
fn route_selection_survives_a_lost_route_direction_confirmation() {
    flow_survives_dropping("RouteDirectionConfirmation", 1);
}

#[test]
fn route_selection_survives_a_lost_route_direction_to_initiator() {
    flow_survives_dropping("RouteDirectionToInitiator", 1);
}

#[test]
fn tunnel_survives_a_lost_tunnel_request() {
    flow_survives_dropping("TunnelRequest", 1);
}

#[test]
fn tunnel_survives_a_lost_tunnel_response() {
    let sim = flow_survives_dropping("TunnelResponse", 1);
    // The responder answered the retransmitted request with the same keys:
    // one TunnelUp each side, and the data above opened.
    assert!(sim.nodes.iter().all(|n| n.handshakes() == 1));
    assert_eq!(sim.count("TunnelRequest").0, 2);
}

#[test]
fn an_unknown_name_is_nxdomain() {
    let mut sim = registered(SimConfig::new(one_seed(4), 2));
    let client = sim.dns_query(1, "nobody.cyphonic.internal.", RecordType::A);
    assert!(sim.run_until(Duration::from_secs(1), |s| s
        .dns_answer(1, client)
        .is_some()));
    let answer = sim.dns_answer(1, client).unwrap();
    assert_eq!(answer.rcode(), ResponseCode::NXDomain);
    assert!(answer.addresses().is_empty());
    // Within one round trip: the NMS knew at once.
    assert!(answer.at - sim.node(1).registered[0].at < Duration::from_millis(100));
    assert!(sim.wire.iter().any(|w| matches!(
        w.message,
        Some(Message::DirectionError {
            code: DirectionErrorCode::NotFound,
            ..
        })
    )));
    assert!(sim.node(1).node.status(sim.now).peers.is_empty());
}

#[test]
fn a_silent_node_is_servfail_after_the_timeout() {
    let config = SimConfig::new(one_seed(4), 2);
    let nms_timeout = config.nms.direction_timeout;
    let node_timeout = config.node.direction_timeout;
    let mut sim = registered(config);
    sim.silence(2);
    let asked = sim.elapsed();
    let client = sim.dns_query(1, "n2.cyphonic.internal.", RecordType::A);
    assert!(sim.run_until(node_timeout + Duration::from_secs(1), |s| s
        .dns_answer(1, client)
        .is_some()));
    let answer = sim.dns_answer(1, client).unwrap();
    assert_eq!(answer.rcode(), ResponseCode::ServFail);
    let took = answer.at - asked;
    assert!(
        took >= nms_timeout && took <= node_timeout,
        "SERVFAIL after {took:?}: the NMS gives up after {nms_timeout:?}, the node after {node_timeout:?}"
    );
    // The NMS kept trying the responder until then.
    let tries = sim.count("RouteDirectionToResponder").0;
    assert!(tries >= 4, "{tries} Route Directions to the silent node");
    assert!(sim.wire.iter().any(|w| matches!(
        w.message,
        Some(Message::DirectionError {
            code: DirectionErrorCode::Timeout,
            ..
        })
    )));
    assert!(sim.nodes.iter().all(|n| n.tunnel_ups.is_empty()));
}

// ---- 5. Packets queued before the tunnel -----------------------------

/// Packets an application sends right after the DNS answer, before the
/// handshake finished, are held by the core and arrive after it, in order;
/// past the queue bound they are dropped and counted.
#[test]
fn packets_sent_before_the_tunnel_arrive_after_it_in_order() {
    let mut config = SimConfig::new(one_seed(5), 2);
    config.node.max_queued = 32;
    let bound = config.node.max_queued;
    let handshake = config.node.handshake_timeout;
    let mut sim = registered(config);
    let client = sim.dns_query(1, "n2.cyphonic.internal.", RecordType::A);

    // The responder, directed but not yet reached by the Tunnel Request,
    // holds its packets to the initiator as well.
    assert!(sim.run_until(Duration::from_secs(1), |s| {
        let status = s.node(2).node.status(s.now);
        status.peers.iter().any(|p| p.state == "awaiting-request")
    }));
    let early: Vec<Vec<u8>> = (0..3)
        .map(|i| ipv4_packet(vip4(2), vip4(1), format!("early {i}").as_bytes()))
        .collect();
    for p in &early {
        sim.send_app(2, p);
    }

    assert!(sim.run_until(Duration::from_secs(1), |s| s
        .dns_answer(1, client)
        .is_some()));
    assert!(
        sim.node(1).tunnel_ups.is_empty(),
        "the answer comes before the tunnel"
    );

    let extra = 5;
    let packets: Vec<Vec<u8>> = (0..bound + extra)
        .map(|i| {
            let body = format!("queued {i}");
            if i % 2 == 0 {
                ipv4_packet(vip4(1), vip4(2), body.as_bytes())
            } else {
                ipv6_packet(vip6(1), vip6(2), body.as_bytes())
            }
        })
        .collect();
    for p in &packets {
        sim.send_app(1, p);
    }
    assert_eq!(sim.count("Data").0, 0, "nothing leaves before the tunnel");
    assert_eq!(
        sim.node(1).node.counters().outbound_queue_full,
        extra as u64
    );

    assert!(tunnel_between(&mut sim, 1, 2, handshake));
    assert!(
        sim.run_until(Duration::from_secs(1), |s| s.node(2).received.len()
            >= bound)
    );
    sim.run_for(Duration::from_secs(1));
    let got = sim.node(2).received_from("n1.cyphonic.internal");
    assert_eq!(got.len(), bound, "every queued packet, and no more");
    assert_eq!(
        got,
        packets[..bound]
            .iter()
            .map(Vec::as_slice)
            .collect::<Vec<_>>()
    );
    // They went out the moment the Tunnel Response arrived, one link
    // latency (10 ms) before they landed.
    let up = sim.node(1).tunnel_ups[0].0;
    let first_data = sim
        .wire
        .iter()
        .find(|w| w.kind == "Data" && w.src == node_v4(1))
        .unwrap()
        .at;
    assert_eq!(first_data, up);
    assert!(sim
        .node(2)
        .received
        .iter()
        .all(|r| r.at == up + Duration::from_millis(10)));
    assert_eq!(sim.node(2).data_rx_bad, 0);
    assert_eq!(
        sim.node(1).received_from("n2.cyphonic.internal"),
        early.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    assert_eq!(sim.node(1).data_rx_bad, 0);
    exchange(&mut sim, 1, 2, "after");
}

/// `from1` (sent by n1) and `from2` (by n2) arrive at the other end
/// within `within`, in order, and nothing more in the `settle` after.
fn each_received(
    sim: &mut Sim,
    from1: &[Vec<u8>],
    from2: &[Vec<u8>],
    within: Duration,
    settle: Duration,
) {
    assert!(
        sim.run_until(within, |s| s.node(1).received.len() >= from2.len()
            && s.node(2).received.len() >= from1.len())
    );
    sim.run_for(settle);
    for (to, peer, sent) in [(2, "n1", from1), (1, "n2", from2)] {
        assert_eq!(
            sim.node(to)
                .received_from(&format!("{peer}.cyphonic.internal")),
            sent.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            "at n{to}"
        );
    }
}

/// Both ends look each other up and send at the same instant, and each
/// daemon's control task sees handshake packets a little after its data
/// plane (`control_lag`), as in the real daemon. The responder's packets
/// must not overtake its Tunnel Response into the initiator's control
/// task: its keys send only once the initiator's first packet confirms
/// them (§7.6), and every packet of both ends arrives.
#[test]
fn both_ends_sending_at_once_lose_nothing() {
    let mut config = SimConfig::new(one_seed(8), 2);
    config.control_lag = Duration::from_millis(5);
    let handshake = config.node.handshake_timeout;
    let mut sim = registered(config);
    let q1 = sim.dns_query(1, "n2.cyphonic.internal.", RecordType::A);
    let q2 = sim.dns_query(2, "n1.cyphonic.internal.", RecordType::A);
    assert!(
        sim.run_until(Duration::from_secs(2), |s| s.dns_answer(1, q1).is_some()
            && s.dns_answer(2, q2).is_some())
    );
    let from1: Vec<Vec<u8>> = (0..3)
        .map(|i| ipv4_packet(vip4(1), vip4(2), format!("one {i}").as_bytes()))
        .collect();
    let from2: Vec<Vec<u8>> = (0..3)
        .map(|i| ipv4_packet(vip4(2), vip4(1), format!("two {i}").as_bytes()))
        .collect();
    for (a, b) in from1.iter().zip(&from2) {
        sim.send_app(1, a);
        sim.send_app(2, b);
    }
    assert!(tunnel_between(&mut sim, 1, 2, handshake));
    each_received(&mut sim, &from1, &from2, secs(2), ms(500));
    assert_eq!(sim.node(1).data_rx_bad, 0, "nothing dropped at n1");
    assert_eq!(sim.node(2).data_rx_bad, 0, "nothing dropped at n2");
    exchange(&mut sim, 1, 2, "after");
}

/// A packet to a peer's VIP that nobody looked up by name (an address
/// typed by hand, or cached across a restart) starts route selection by
/// VIP, waits for the tunnel, and arrives; so does everything sent
/// meanwhile, over IPv4 and IPv6.
#[test]
fn a_packet_to_a_vip_nobody_looked_up_arrives() {
    let mut sim = registered(SimConfig::new(one_seed(9), 3));
    let sent: Vec<Vec<u8>> = vec![
        ipv4_packet(vip4(1), vip4(2), b"first by v4"),
        ipv6_packet(vip6(1), vip6(2), b"then by v6"),
        ipv4_packet(vip4(1), vip4(2), b"and v4 again"),
    ];
    for p in &sent {
        sim.send_app(1, p);
    }
    // One question per VIP: nothing tells the two apart before the answer.
    assert_eq!(sim.count("DirectionRequestByVip").0, 2);
    assert!(sim.run_until(Duration::from_secs(2), |s| s.node(2).received.len() >= 3));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        sim.node(2).received_from("n1.cyphonic.internal"),
        sent.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    let c = sim.node(1).node.counters();
    assert_eq!((c.directions_by_vip, c.outbound_no_route), (2, 0));
    assert_eq!(sim.node(1).handshakes(), 1, "one route, one handshake");
    // n3's IPv6 VIP first: the same, by the other family.
    let to3 = ipv6_packet(vip6(1), vip6(3), b"to n3 by v6");
    sim.send_app(1, &to3);
    assert!(sim.run_until(Duration::from_secs(2), |s| !s.node(3).received.is_empty()));
    assert_eq!(
        sim.node(3).received_from("n1.cyphonic.internal"),
        vec![&to3[..]]
    );
    exchange(&mut sim, 1, 2, "after");
    exchange(&mut sim, 1, 3, "after");
}

/// Both ends send to each other's VIP at the same instant, nothing looked
/// up, with the daemon's lag between data plane and control task: one
/// route serves both questions, and every packet arrives.
#[test]
fn both_ends_sending_to_each_others_vip_at_once_lose_nothing() {
    let mut config = SimConfig::new(one_seed(10), 2);
    config.control_lag = Duration::from_millis(5);
    let mut sim = registered(config);
    let from1: Vec<Vec<u8>> = (0..3)
        .map(|i| ipv4_packet(vip4(1), vip4(2), format!("one {i}").as_bytes()))
        .collect();
    let from2: Vec<Vec<u8>> = (0..3)
        .map(|i| ipv6_packet(vip6(2), vip6(1), format!("two {i}").as_bytes()))
        .collect();
    for (a, b) in from1.iter().zip(&from2) {
        sim.send_app(1, a);
        sim.send_app(2, b);
    }
    each_received(&mut sim, &from1, &from2, secs(3), secs(6));
    for n in [1, 2] {
        assert_eq!(sim.node(n).data_rx_bad, 0);
        assert_eq!(sim.node(n).handshakes(), 1, "one route, one handshake");
        assert_eq!(sim.node(n).node.counters().outbound_no_route, 0);
    }
}

/// A VIP no node holds: the packets are dropped and counted once the NMS
/// says so, and for a few seconds later packets to it ask nothing.
#[test]
fn a_vip_nobody_holds_is_dropped_without_asking_again_at_once() {
    let mut sim = registered(SimConfig::new(one_seed(11), 1));
    let nobody = std::net::Ipv4Addr::new(100, 64, 0, 250);
    sim.send_app(1, &ipv4_packet(vip4(1), nobody, b"a"));
    sim.send_app(1, &ipv4_packet(vip4(1), nobody, b"b"));
    assert!(sim.run_until(Duration::from_secs(1), |s| s
        .node(1)
        .node
        .counters()
        .outbound_no_route
        == 2));
    sim.send_app(1, &ipv4_packet(vip4(1), nobody, b"c"));
    assert_eq!(sim.node(1).node.counters().outbound_no_route, 3);
    assert_eq!(sim.count("DirectionRequestByVip").0, 1);
    // An address outside the overlay's ranges asks nothing at all.
    sim.send_app(
        1,
        &ipv4_packet(vip4(1), std::net::Ipv4Addr::new(192, 0, 2, 1), b"d"),
    );
    sim.run_for(Duration::from_secs(4));
    assert_eq!(sim.count("DirectionRequestByVip").0, 1);
    assert_eq!(sim.node(1).node.counters().outbound_no_route, 4);
    sim.send_app(1, &ipv4_packet(vip4(1), nobody, b"e"));
    assert_eq!(sim.count("DirectionRequestByVip").0, 2, "asked again later");
}

// ---- 6. Refusals -------------------------------------------------------

/// `n1` (honest) and a node with a bad certificate: after the lookup from
/// `initiator` to `responder`, `n1` never installs a tunnel, counts the
/// refused handshake, and opens nothing the bad node sends.
fn refused(bad: NodeSpec, initiator: usize, responder: usize) -> Sim {
    let bad_index = bad.index;
    let mut config = SimConfig::new(one_seed(6), 0);
    config.nodes = vec![NodeSpec::new(1), bad];
    let handshake = config.node.handshake_timeout;
    let mut sim = registered(config);
    // Route selection itself succeeds: the NMS vouches for the names, the
    // certificates are checked end to end.
    assert_eq!(
        lookup(&mut sim, initiator, responder, RecordType::A),
        ResponseCode::NoError
    );
    // Both the initiator's and the responder's give-up times pass.
    sim.run_for(handshake * 2 + Duration::from_secs(1));

    let bad_fqdn = format!("n{bad_index}.cyphonic.internal");
    let honest = sim.node(1);
    assert!(
        honest.tunnel_ups.is_empty(),
        "n1 installed a tunnel to {bad_fqdn}"
    );
    assert!(honest.tunnel_to(&bad_fqdn).is_none());
    assert!(
        honest.node.counters().handshake_failures >= 1,
        "n1 counted the refused handshake"
    );
    let status = honest.node.status(sim.now);
    let peer = status
        .peers
        .iter()
        .find(|p| p.fqdn == bad_fqdn)
        .expect("peer");
    assert!(
        peer.state.starts_with("failed"),
        "n1's state: {}",
        peer.state
    );

    // Whatever the bad node may seal never opens at n1.
    if let Some(t) = sim.node(bad_index).tunnel_to("n1.cyphonic.internal") {
        let before = sim.node(1).data_rx_bad;
        let p = ipv4_packet(vip4(bad_index), vip4(1), b"let me in");
        sim.send_app(bad_index, &p);
        sim.run_for(Duration::from_secs(1));
        assert!(sim.node(1).received.is_empty());
        assert_eq!(
            sim.node(1).data_rx_bad,
            before + 1,
            "sealed to {}",
            t.path.address()
        );
    }
    assert!(sim.node(1).received.is_empty());
    // A refusal is not a storm: the initiator keeps its retransmission pace.
    let requests = sim.count("TunnelRequest").0;
    let retransmit = cyphonic_node::core::NodeConfig::default().handshake_retransmit;
    let pace = (handshake.as_millis() / retransmit.as_millis() + 2) as usize;
    assert!(
        requests <= pace,
        "{requests} Tunnel Requests in {handshake:?}"
    );
    sim
}

#[test]
fn a_responder_from_another_ca_is_refused() {
    // n3 trusts only its own CA, so it refuses n1's Tunnel Request.
    let sim = refused(NodeSpec::new(3).cert(Cert::Foreign), 1, 3);
    assert!(sim.node(3).node.counters().handshake_failures >= 1);
    assert!(sim.node(3).tunnel_ups.is_empty());
}

#[test]
fn an_initiator_from_another_ca_is_refused() {
    let sim = refused(NodeSpec::new(3).cert(Cert::Foreign), 3, 1);
    assert!(sim.node(3).tunnel_ups.is_empty());
    assert_eq!(sim.count("TunnelResponse").0, 0, "n1 never answered");
}

#[test]
fn a_responder_with_another_nodes_certificate_is_refused() {
    // n2 presents n3's certificate while the NMS vouches for n2.
    refused(NodeSpec::new(2).cert(Cert::Of(3)), 1, 2);
}

#[test]
fn an_initiator_with_another_nodes_certificate_is_refused() {
    let sim = refused(NodeSpec::new(2).cert(Cert::Of(3)), 2, 1);
    assert!(sim.node(2).tunnel_ups.is_empty());
    assert_eq!(sim.count("TunnelResponse").0, 0);
}

#[test]
fn a_responder_whose_certificate_lacks_its_vips_is_refused() {
    // n2's own certificate but with n4's virtual IPs: the route gives n2
    // its own VIPs, which the certificate does not carry.
    refused(NodeSpec::new(2).cert(Cert::VipsOf(4)), 1, 2);
}

#[test]
fn an_initiator_whose_certificate_lacks_its_vips_is_refused() {
    let sim = refused(NodeSpec::new(2).cert(Cert::VipsOf(4)), 2, 1);
    assert!(sim.node(2).tunnel_ups.is_empty());
    assert_eq!(sim.count("TunnelResponse").0, 0);
}

#[test]
fn a_responder_with_an_expired_certificate_is_refused() {
    refused(NodeSpec::new(2).cert(Cert::Expired), 1, 2);
}

#[test]
fn an_initiator_with_an_expired_certificate_is_refused() {
    let sim = refused(NodeSpec::new(2).cert(Cert::Expired), 2, 1);
    assert!(sim.node(2).tunnel_ups.is_empty());
}

// ---- 8. Determinism ----------------------------------------------------

/// A busy run: four nodes, 20 % loss, lookups in both directions, data.
fn busy_run(seed: u64) -> (u64, usize, usize) {
    let mut config = SimConfig::new(seed, 4);
    config.link.loss = 0.2;
    let mut sim = Sim::new(config);
    sim.start();
    sim.run_for(Duration::from_secs(3));
    for (from, to) in [(1, 2), (3, 4), (2, 3), (4, 1)] {
        sim.dns_query(from, &format!("n{to}.cyphonic.internal."), RecordType::A);
        sim.run_for(Duration::from_millis(7));
    }
    sim.run_for(Duration::from_secs(5));
    for i in 0..20u8 {
        for (from, to) in [(1, 2), (2, 1), (3, 4), (1, 4)] {
            sim.send_app(from, &ipv4_packet(vip4(from), vip4(to), &[i; 40]));
        }
        sim.run_for(Duration::from_millis(3));
    }
    sim.run_for(Duration::from_secs(30));
    let received: usize = sim.nodes.iter().map(|n| n.received.len()).sum();
    (sim.transmit_hash(), sim.wire.len(), received)
}

#[test]
fn the_same_seed_gives_the_same_packets() {
    assert_deterministic(one_seed(8), busy_run, 100, 0);
}

// ---- 7. NMS restart ----------------------------------------------------

/// A fresh NMS over the same database: the nodes' next keepalives get
/// ReRegister, they register again with the same VIPs (no new Login), a new
/// lookup works, and the tunnel made before the restart keeps carrying data.
#[test]
fn nodes_register_again_after_an_nms_restart() {
    let config = SimConfig::new(one_seed(7), 3);
    let keepalive = config.nms.keepalive;
    let mut sim = registered(config);
    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 2, Duration::from_secs(5)));
    sim.run_for(Duration::from_secs(3));

    sim.restart_nms();
    let restarted = sim.elapsed();
    assert!(sim.nms.registrations().is_empty());
    // Within one keepalive interval (and the retransmissions of its
    // Registration) every node is back.
    assert!(
        sim.run_until(keepalive + Duration::from_secs(2), |s| s
            .nodes
            .iter()
            .all(|n| n.registered.len() == 2)),
        "every node registered again"
    );
    for n in &sim.nodes {
        let (first, again) = (&n.registered[0], &n.registered[1]);
        assert!(again.at > restarted);
        assert_eq!(
            (again.vip4, again.vip6),
            (first.vip4, first.vip6),
            "{}'s VIPs",
            n.name
        );
        assert_eq!((again.vip4, again.vip6), (vip4(n.index), vip6(n.index)));
        assert_eq!(n.logins, 1, "{} kept its session", n.name);
        let rereg = sim.wire.iter().any(|w| {
            w.at > restarted
                && w.dst == n.addrs[0]
                && matches!(w.message, Some(Message::ReRegister))
        });
        assert!(rereg, "{} was told to register again", n.name);
    }
    let regs: Vec<String> = sim
        .nms
        .registrations()
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(regs.len(), 3);

    // A route the new NMS selects, and the old tunnel, both work.
    assert_eq!(
        lookup(&mut sim, 1, 3, RecordType::AAAA),
        ResponseCode::NoError
    );
    assert!(tunnel_between(&mut sim, 1, 3, Duration::from_secs(5)));
    exchange(&mut sim, 1, 3, "new route");
    exchange(&mut sim, 1, 2, "old tunnel");

    // And they stay registered: keepalives are answered, nobody logs in again.
    sim.run_for(Duration::from_secs(60));
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.logins == 1 && n.node.status(sim.now).cloud.registered));
}

// ---- 3. Random loss ----------------------------------------------------

#[derive(Debug)]
struct LossyRun {
    /// Every phase completed within its configured timeout, at the first
    /// attempt.
    first_try: bool,
    /// Every phase completed, allowing the recovery the system has: a node
    /// whose Registration timed out logs in again, and a stub resolver asks
    /// once more after a SERVFAIL (as glibc's `attempts:2` does).
    completed: bool,
    sent: usize,
    delivered: usize,
    retransmissions: usize,
}

/// Three nodes on links that lose `loss` of all packets: every node
/// registers, lookups n1 -> n2 (A) and n3 -> n1 (AAAA) are answered with the
/// right VIPs, and both tunnels come up, each within its configured timeout
/// (twice that with one recovery). Then the loss stops and data flows both
/// ways through both tunnels: the two ends of each agreed on the keys.
fn lossy_run(seed: u64, loss: f64) -> LossyRun {
    let mut config = SimConfig::new(seed, 3);
    config.link.loss = loss;
    // No 443 legs: these runs measure native UDP signaling's own
    // retransmission (with legs, a second of loss moves a node to QUIC or
    // TCP and its routes to a relay this cloud does not run; the `transport`
    // module covers the transports).
    config.cloud_legs = false;
    let (registration, direction, handshake) = (
        config.node.registration_timeout,
        config.node.direction_timeout,
        config.node.handshake_timeout,
    );
    let mut sim = Sim::new(config);
    let mut first_try = true;
    let outcome = |sim: &Sim, first_try: bool, completed: bool| {
        let (sent, delivered) = sim.totals();
        LossyRun {
            first_try: first_try && completed,
            completed,
            sent,
            delivered,
            retransmissions: sim.retransmissions(),
        }
    };

    sim.start();
    let all_registered = |s: &Sim| s.nodes.iter().all(|n| !n.registered.is_empty());
    if !sim.run_until(registration, all_registered) {
        first_try = false;
        if !sim.run_until(registration, all_registered) {
            return outcome(&sim, first_try, false);
        }
    }

    let lookups = [(1, 2, RecordType::A), (3, 1, RecordType::AAAA)];
    let mut pending: Vec<(usize, usize, RecordType)> = lookups.to_vec();
    for attempt in 0..2 {
        let clients: Vec<_> = pending
            .iter()
            .map(|&(from, to, qtype)| {
                let client = sim.dns_query(from, &format!("n{to}.cyphonic.internal."), qtype);
                (from, to, qtype, client)
            })
            .collect();
        sim.run_until(direction, |s| {
            clients
                .iter()
                .all(|&(from, _, _, c)| s.dns_answer(from, c).is_some())
        });
        pending.clear();
        for &(from, to, qtype, client) in &clients {
            match sim.dns_answer(from, client) {
                Some(a) if a.rcode() == ResponseCode::NoError => {
                    let want: IpAddr = match qtype {
                        RecordType::AAAA => vip6(to).into(),
                        _ => vip4(to).into(),
                    };
                    assert_eq!(a.addresses(), vec![want], "seed {seed}");
                }
                other => {
                    // Only a timeout may fail a lookup of a registered node.
                    let rcode = other.map(DnsAnswer::rcode);
                    assert!(
                        matches!(rcode, None | Some(ResponseCode::ServFail)),
                        "seed {seed}: n{from} asking for n{to} got {rcode:?}"
                    );
                    pending.push((from, to, qtype));
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        first_try = false;
        if attempt == 1 {
            return outcome(&sim, first_try, false);
        }
    }

    let tunnels =
        tunnel_between(&mut sim, 1, 2, handshake) && tunnel_between(&mut sim, 3, 1, handshake);
    let run = outcome(&sim, first_try, tunnels);
    if tunnels {
        sim.set_loss(0.0);
        // Retransmitted handshakes still in flight land before the check.
        sim.run_for(handshake);
        exchange(&mut sim, 1, 2, "after loss");
        exchange(&mut sim, 3, 1, "after loss");
    }
    run
}

/// Checks the network lost what it should have and the protocol made up
/// for it by sending again; returns (first-try successes, completions).
fn check_loss(loss: f64, runs: &[(u64, LossyRun)]) -> (usize, usize) {
    let (sent, delivered) = runs
        .iter()
        .fold((0, 0), |(s, d), (_, r)| (s + r.sent, d + r.delivered));
    let lost = (sent - delivered) as f64 / sent as f64;
    // Three standard deviations of a binomial with this many packets.
    let slack = 3.0 * (loss * (1.0 - loss) / sent as f64).sqrt();
    assert!(
        (lost - loss).abs() <= slack,
        "the network lost {lost:.3} of {sent} packets, configured {loss}"
    );
    // Every packet of these flows is a request or the answer to one, so in
    // a run that completed, each loss was made up for by sending again.
    for (seed, r) in runs {
        if r.completed && r.sent > r.delivered {
            assert!(
                r.retransmissions > 0,
                "seed {seed}: losses but no retransmission"
            );
        }
    }
    let first = runs.iter().filter(|(_, r)| r.first_try).count();
    let completed = runs.iter().filter(|(_, r)| r.completed).count();
    let retransmissions: usize = runs.iter().map(|(_, r)| r.retransmissions).sum();
    eprintln!(
        "loss {loss}: {first}/{n} within the timeouts at the first try, {completed}/{n} with \
         recovery; {sent} packets sent, {delivered} delivered, {retransmissions} retransmitted \
         requests",
        n = runs.len()
    );
    (first, completed)
}

/// At 20 % loss every seed completes (one re-login or DNS retry allowed);
/// measured over 1000 seeds, 94 % need neither, and the rest fail only
/// because all five tries a 5 s timeout leaves were lost.
#[test]
fn every_flow_completes_at_20_percent_loss() {
    let runs: Vec<_> = seeds(20)
        .into_iter()
        .map(|s| (s, lossy_run(s, 0.2)))
        .collect();
    for (seed, r) in &runs {
        assert!(
            r.completed,
            "seed {seed} did not complete at 20 % loss: {r:?}"
        );
    }
    let (first, _) = check_loss(0.2, &runs);
    if runs.len() == 20 {
        assert!(first >= 17, "{first}/20 at the first try (94 % expected)");
    }
}

/// At 30 % loss most seeds still complete within the configured timeouts
/// at the first try, and most with recovery. Measured over seeds 0-199:
/// 64 % at the first try and 88-90 % with recovery (the earlier figures
/// of 74 % and 98 % no longer hold); 20 seeds are too few to tell those
/// rates apart from a few points less, so the bounds sit below them.
#[test]
fn most_flows_complete_at_30_percent_loss() {
    let runs: Vec<_> = seeds(20)
        .into_iter()
        .map(|s| (s, lossy_run(s, 0.3)))
        .collect();
    let (first, completed) = check_loss(0.3, &runs);
    if runs.len() == 20 {
        assert!(first >= 10, "{first}/20 at the first try (64 % expected)");
        assert!(
            completed >= 16,
            "{completed}/20 with recovery (88 % expected)"
        );
    }
}

#[test]
#[ignore = "measures the rates quoted above; takes minutes"]
fn measure_loss_rates() {
    for loss in [0.2, 0.3] {
        let runs: Vec<_> = (0..1000).map(|s| (s, lossy_run(s, loss))).collect();
        check_loss(loss, &runs);
    }
}

// ---- cyphonic ping -------------------------------------------------------

/// `cyphonic ping` before a tunnel exists selects the route and fails;
/// once the tunnel is up, each ping is answered over its path with the
/// link's round trip.
#[test]
fn ping_reports_the_path_and_round_trip() {
    let mut sim = registered(SimConfig::new(one_seed(71), 2));
    let n2 = sim.node(2).fqdn.clone();
    let first = sim.ping(1, &n2);
    sim.run_for(Duration::from_millis(1));
    let early = sim.node(1).pongs.iter().find(|p| p.1 == first).cloned();
    assert!(matches!(early, Some((_, _, Err(_)))), "{early:?}");
    assert!(
        tunnel_between(&mut sim, 1, 2, Duration::from_secs(5)),
        "the ping selected the route"
    );
    let second = sim.ping(1, &n2);
    assert!(sim.run_until(Duration::from_secs(1), |s| s
        .node(1)
        .pongs
        .iter()
        .any(|p| p.1 == second)));
    let (_, _, result) = sim
        .node(1)
        .pongs
        .iter()
        .find(|p| p.1 == second)
        .cloned()
        .expect("answered");
    let pong = result.expect("a pong");
    assert_eq!(pong.fqdn, n2);
    assert_eq!(pong.path, "direct");
    assert_eq!(pong.endpoint, node_v4(2));
    // Two link latencies (10 ms each way by default), measured on the
    // virtual clock.
    assert_eq!(pong.rtt_us, 20_000, "{pong:?}");
}

// ---- 9. A full peer table ---------------------------------------------

/// A peer whose tunnel went dead and whose new route failed makes room
/// when the table is full, and its old tunnel leaves the data plane
/// (`TunnelDown`); live peers stay.
#[test]
fn a_failed_peer_makes_room_and_its_tunnel_goes_down() {
    let mut config = SimConfig::new(one_seed(91), 4);
    config.node.max_peers = 2;
    let mut sim = registered(config);
    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 2, secs(5)));
    // n1 and n2 stop reaching each other (the NMS still reaches both): the
    // liveness check selects the route again, and its handshake fails.
    let (a, b) = (node_v4(1).ip(), node_v4(2).ip());
    sim.add_rule(move |w| {
        (w.src.ip() == a && w.dst.ip() == b) || (w.src.ip() == b && w.dst.ip() == a)
    });
    let n2 = sim.node(2).fqdn.clone();
    assert!(
        sim.run_until(secs(60), |s| s
            .node(1)
            .node
            .status(s.now)
            .peers
            .iter()
            .any(|p| p.fqdn == n2 && p.state.starts_with("failed"))),
        "n1's new route to n2 failed"
    );
    assert!(
        sim.node(1).tunnel_downs.is_empty(),
        "the old tunnel stays until room is needed"
    );
    // n3 fills the table; n4 needs the room n2 holds.
    assert_eq!(lookup(&mut sim, 1, 3, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 3, secs(5)));
    assert_eq!(lookup(&mut sim, 1, 4, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 4, secs(5)));
    let downs: Vec<&str> = sim
        .node(1)
        .tunnel_downs
        .iter()
        .map(|(_, f)| f.as_str())
        .collect();
    assert_eq!(downs, vec![n2.as_str()]);
    let peers: Vec<String> = sim
        .node(1)
        .node
        .status(sim.now)
        .peers
        .into_iter()
        .map(|p| p.fqdn)
        .collect();
    assert_eq!(
        peers,
        vec![sim.node(3).fqdn.clone(), sim.node(4).fqdn.clone()]
    );
    exchange(&mut sim, 1, 3, "after eviction");
    exchange(&mut sim, 1, 4, "after eviction");
}

// ---- 10. Path MTU --------------------------------------------------------

/// Between two nodes on a path that drops every datagram over 1280 bytes
/// and says nothing (a narrow link behind a firewall that filters ICMP),
/// each end's size probes find the largest inner packet the path carries,
/// within seconds of the tunnel coming up: packets of that size arrive,
/// larger ones would not. On a path that carries everything, one probe
/// settles it at the device MTU.
#[test]
fn path_mtu_probing_finds_a_narrow_path_that_drops_icmp() {
    // IPv4 outside: 1280 - 20 (IP) - 8 (UDP) - 32 (our header and tag).
    const CARRIES: usize = 1280 - 20 - 8 - 32;
    for seed in seeds(4) {
        let mut sim = registered(SimConfig::new(seed, 3));
        let (a, b, c) = (node_v4(1).ip(), node_v4(2).ip(), node_v4(3).ip());
        sim.add_rule(move |w| {
            let narrow =
                [w.src.ip(), w.dst.ip()].contains(&a) && [w.src.ip(), w.dst.ip()].contains(&b);
            narrow && w.len > 1280 - 28
        });
        assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
        assert_eq!(lookup(&mut sim, 1, 3, RecordType::A), ResponseCode::NoError);
        assert!(tunnel_between(&mut sim, 1, 2, secs(5)), "seed {seed}");
        assert!(tunnel_between(&mut sim, 1, 3, secs(5)), "seed {seed}");
        let up = sim.now;
        let (f1, f2, f3) = (
            sim.node(1).fqdn.clone(),
            sim.node(2).fqdn.clone(),
            sim.node(3).fqdn.clone(),
        );
        let mtu =
            |s: &Sim, me: usize, peer: &str| s.node(me).tunnel_to(peer).and_then(|t| t.mtu.limit());
        let settled = |m: Option<usize>| m.is_some_and(|m| m <= CARRIES && m + 16 > CARRIES);
        assert!(
            sim.run_until(secs(10), |s| settled(mtu(s, 1, &f2))
                && settled(mtu(s, 2, &f1))),
            "seed {seed}: both ends found the narrow path's size: {:?} {:?}",
            mtu(&sim, 1, &f2),
            mtu(&sim, 2, &f1)
        );
        let took = sim.now - up;
        assert!(took <= secs(4), "seed {seed}: took {took:?}");
        // The wide path kept the device MTU, settled by one probe each way.
        assert_eq!(mtu(&sim, 1, &f3), Some(1408), "seed {seed}");
        assert_eq!(mtu(&sim, 3, &f1), Some(1408), "seed {seed}");
        let status = sim.node(3).node.status(sim.now);
        assert_eq!(status.counters.pmtu_probes, 1, "seed {seed}");
        let p = status.peers.iter().find(|p| p.fqdn == f1).expect("peer");
        assert_eq!((p.mtu, p.mtu_searching), (Some(1408), false));
        let status = sim.node(1).node.status(sim.now);
        let p = status.peers.iter().find(|p| p.fqdn == f2).expect("peer");
        assert_eq!(p.mtu, mtu(&sim, 1, &f2).map(|m| m as u16));
        // A packet of the size found arrives; one a step larger is lost.
        let m = mtu(&sim, 1, &f2).expect("mtu");
        let fits = ipv4_packet(vip4(1), vip4(2), &vec![7u8; m - 20]);
        let over = ipv4_packet(vip4(1), vip4(2), &vec![8u8; m + 16 - 20]);
        let before = sim.node(2).received.len();
        sim.send_app(1, &over);
        sim.send_app(1, &fits);
        assert!(sim.run_until(secs(1), |s| s.node(2).received.len() > before));
        sim.run_for(secs(1));
        let got: Vec<&[u8]> = sim.node(2).received[before..]
            .iter()
            .map(|r| r.packet.as_slice())
            .collect();
        assert_eq!(got, vec![fits.as_slice()], "seed {seed}");
        let _ = c;
    }
}
