//! An adapter's general nodes (`docs/adapter.md`): fetched from the NMS
//! page by page once registered, polled, and reported once per change,
//! through loss.

use std::net::{Ipv4Addr, Ipv6Addr};

use cyphonic_proto::signal::GeneralNodeInfo;

use crate::harness::*;

fn gn(i: u8) -> GeneralNodeInfo {
    GeneralNodeInfo {
        mac: [2, 0, 0x5e, 0x10, 0, i],
        fqdn: format!("gn{i}.cyphonic.internal"),
        vip4: Ipv4Addr::new(100, 64, 1, i),
        vip6: Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 1, i as u16),
    }
}

fn adapters(seed: u64, loss: f64) -> Sim {
    let mut config = SimConfig::new(seed, 2);
    config.node.general_nodes_poll = Some(secs(30));
    config.link.loss = loss;
    let mut sim = Sim::new(config);
    sim.general
        .insert("device-n1".into(), (1..=6).map(gn).collect());
    sim.start();
    sim
}

#[test]
fn an_adapter_gets_its_general_nodes_and_each_change_once() {
    let mut sim = adapters(one_seed(101), 0.0);
    assert!(
        sim.run_until(secs(5), |s| !s.node(1).general_nodes.is_empty()
            && !s.node(2).general_nodes.is_empty()),
        "both adapters got their lists"
    );
    let (_, _, list) = &sim.node(1).general_nodes[0];
    assert_eq!(
        list,
        &(1..=6).map(gn).collect::<Vec<_>>(),
        "two pages, in order"
    );
    let (_, _, none) = &sim.node(2).general_nodes[0];
    assert!(none.is_empty(), "n2 serves none");
    // Polls that find the same version report nothing.
    sim.run_for(secs(65));
    assert_eq!(sim.node(1).general_nodes.len(), 1);
    assert_eq!(sim.node(2).general_nodes.len(), 1);
    // The operator removes gn1 and adds gn9: the next poll reports it.
    let list = sim.general.get_mut("device-n1").expect("n1's list");
    list.remove(0);
    list.push(gn(9));
    assert!(sim.run_until(secs(31), |s| s.node(1).general_nodes.len() == 2));
    let (_, v2, list) = &sim.node(1).general_nodes[1];
    assert_ne!(*v2, sim.node(1).general_nodes[0].1);
    assert_eq!(
        list.first().map(|g| g.fqdn.as_str()),
        Some("gn2.cyphonic.internal")
    );
    assert_eq!(
        list.last().map(|g| g.fqdn.as_str()),
        Some("gn9.cyphonic.internal")
    );
    assert_eq!(sim.node(2).general_nodes.len(), 1);
}

#[test]
fn general_nodes_arrive_through_loss() {
    let mut sim = adapters(one_seed(102), 0.3);
    assert!(
        sim.run_until(secs(120), |s| !s.node(1).general_nodes.is_empty()),
        "n1 got its list through 30 % loss"
    );
    assert_eq!(sim.node(1).general_nodes[0].2.len(), 6);
}
