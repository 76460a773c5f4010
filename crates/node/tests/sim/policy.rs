//! The access policy end to end on the virtual clock: the NMS refuses a
//! route the policy denies, both ends filter what flows on an allowed
//! one (replies of allowed flows pass), and a new policy withdraws a
//! route at once.

use std::net::Ipv4Addr;
use std::time::Duration;

use cyphonic_cloud_core::policy::{DefaultAction, Policy, Rule, Selector};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::basic::{lookup, one_seed, registered, tunnel_between};
use crate::harness::*;

/// Default deny; `device-n<from>` may open `ports` towards `device-n<to>`.
fn deny_but(rules: &[(usize, usize, &str)]) -> Policy {
    Policy {
        default: DefaultAction::Deny,
        rules: rules
            .iter()
            .map(|(from, to, ports)| Rule {
                deny: false,
                from: vec![Selector::Device(format!("device-n{from}"))],
                to: vec![Selector::Device(format!("device-n{to}"))],
                ports: ports.split(',').map(|p| p.parse().unwrap()).collect(),
            })
            .collect(),
        ..Policy::default()
    }
}

/// An IPv4 packet of protocol `proto` (header checksum left zero: the
/// simulation's receivers do not check it).
fn ip4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
    let mut p = ipv4_packet(src, dst, l4);
    p[9] = proto;
    p
}

fn echo(ty: u8, id: u16) -> Vec<u8> {
    let mut l4 = vec![ty, 0, 0, 0, 0, 0, 0, 1];
    l4[4..6].copy_from_slice(&id.to_be_bytes());
    l4
}

fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[12] = 0x50;
    l4
}

#[test]
fn a_policy_refuses_routes_filters_flows_and_withdraws_a_route_when_it_changes() {
    let mut sim = registered(SimConfig::new(one_seed(61), 3));
    sim.set_policy(deny_but(&[(1, 2, "icmp,tcp/5201")]));
    let (f1, f2) = (sim.node(1).fqdn.clone(), sim.node(2).fqdn.clone());

    // n1 -> n2 is routed; n1 -> n3 and n3 -> n2 are refused.
    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::NoError);
    assert!(tunnel_between(&mut sim, 1, 2, Duration::from_secs(3)));
    assert_eq!(lookup(&mut sim, 1, 3, RecordType::A), ResponseCode::Refused);
    assert_eq!(lookup(&mut sim, 3, 2, RecordType::A), ResponseCode::Refused);
    assert_eq!(sim.node(1).node.counters().directions_denied, 1);
    assert_eq!(sim.nms.counters().directions_denied, 2);

    // n1 opens ICMP and tcp/5201 to n2, and the replies come back.
    let (v1, v2) = (vip4(1), vip4(2));
    let sends = [
        (1, ip4(1, v1, v2, &echo(8, 7))),
        (2, ip4(1, v2, v1, &echo(0, 7))),
        (1, ip4(6, v1, v2, &tcp(40000, 5201))),
        (2, ip4(6, v2, v1, &tcp(5201, 40000))),
        // Not allowed: n2 opens towards n1, n1 to another port.
        (2, ip4(1, v2, v1, &echo(8, 8))),
        (2, ip4(6, v2, v1, &tcp(40001, 22))),
        (1, ip4(6, v1, v2, &tcp(40002, 22))),
    ];
    // The opening packets first, so the replies find their flows.
    for (from, packet) in [&sends[0], &sends[2]].into_iter().chain(&sends[4..]) {
        sim.send_app(*from, packet);
    }
    sim.run_for(Duration::from_millis(200));
    for (from, packet) in [&sends[1], &sends[3]] {
        sim.send_app(*from, packet);
    }
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        sim.node(2).received_from(&f1),
        [&sends[0].1[..], &sends[2].1]
    );
    assert_eq!(
        sim.node(1).received_from(&f2),
        [&sends[1].1[..], &sends[3].1]
    );
    assert_eq!(sim.node(2).data_tx_policy_denied, 2);
    assert_eq!(sim.node(1).data_tx_policy_denied, 1);

    // The policy changes: n1 may reach n2 on ICMP only. Both ends learn
    // the new filter; tcp/5201 stops, ICMP goes on.
    sim.set_policy(deny_but(&[(1, 2, "icmp")]));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.node(1).node.counters().route_updates, 1);
    assert_eq!(sim.node(2).node.counters().route_updates, 1);
    let again = ip4(6, v1, v2, &tcp(40003, 5201));
    sim.send_app(1, &again);
    sim.send_app(1, &ip4(1, v1, v2, &echo(8, 9)));
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.node(1).data_tx_policy_denied, 2);
    assert_eq!(sim.node(2).received_from(&f1).len(), 3);

    // Withdrawn: both tunnels close within a round trip of the NMS.
    let changed = sim.elapsed();
    sim.set_policy(deny_but(&[(3, 2, "icmp")]));
    assert!(
        sim.run_until(Duration::from_secs(5), |s| {
            s.node(1).tunnel_downs.iter().any(|(_, f)| *f == f2)
                && s.node(2).tunnel_downs.iter().any(|(_, f)| *f == f1)
        }),
        "the route was not withdrawn"
    );
    for (i, peer) in [(1, &f2), (2, &f1)] {
        let (at, _) = sim
            .node(i)
            .tunnel_downs
            .iter()
            .find(|(_, f)| f == peer)
            .expect("down");
        assert!(
            *at - changed < Duration::from_millis(100),
            "n{i} after {:?}",
            *at - changed
        );
        assert!(sim.node(i).tunnel_to(peer).is_none());
        assert_eq!(sim.node(i).node.counters().routes_withdrawn, 1);
    }
    assert_eq!(sim.nms.counters().routes_withdrawn, 1);
    // And n1 gets no route again; n3 now does.
    assert_eq!(lookup(&mut sim, 1, 2, RecordType::A), ResponseCode::Refused);
    assert_eq!(lookup(&mut sim, 3, 2, RecordType::A), ResponseCode::NoError);
}
