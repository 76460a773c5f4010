//! The NMS link (`docs/protocol.md` §5.19) between running clouds over real
//! TLS on loopback: a route to a node another NMS holds is directed by
//! that NMS, for two instances of one cloud (one database) and for two
//! cooperating domains (two clouds, two roots).

mod common;

use std::time::Duration;

use common::{free_tcp, CloudDir, Running, SignalingNode};
use cyphonic_cloud::config::LinkPeerConfig;
use cyphonic_cloud::run::Roles;
use cyphonic_proto::signal::{DirectionErrorCode, Message};

/// Enrolls and logs in `device` at `dir`'s AS.
async fn logged_in(dir: &CloudDir, device: &str) -> cyphonic_node::as_client::LoginInfo {
    let password = dir.add(device, None).await;
    let enrolled = dir.enroll(dir.as_v4(), device, &password).await.unwrap();
    dir.login(&enrolled).await
}

/// `n`'s next message that is not a RouteUpdate or other notice.
async fn next_direction(n: &mut SignalingNode) -> Message {
    loop {
        match n.recv().await {
            m @ (Message::RouteDirectionToResponder(_)
            | Message::RouteDirectionToInitiator(_)
            | Message::DirectionError { .. }) => return m,
            _ => continue,
        }
    }
}

/// `cn` confirms the direction it got; returns it.
async fn confirm(cn: &mut SignalingNode) -> cyphonic_proto::signal::RouteDirection {
    let Message::RouteDirectionToResponder(d) = next_direction(cn).await else {
        panic!("the responder got no direction");
    };
    // The NMS matches the confirmation by txid: answer as the daemon does,
    // under the txid the direction came with (recv does not keep it, so
    // the confirmation is sent for the route; the NMS retransmits with the
    // same txid until confirmed).
    cn.confirm_last(d.route_id).await;
    d
}

#[tokio::test]
async fn two_cooperating_domains_direct_a_route_between_their_nodes() {
    let mut west = CloudDir::with_domain("west.example").await;
    let mut east = CloudDir::with_domain("east.example").await;
    // One overlay address space: disjoint prefixes in one /48.
    west.cfg.vip4_prefix = "100.64.0.0/16".parse().unwrap();
    west.cfg.vip6_prefix = "fd7a:6379:7068::/64".parse().unwrap();
    east.cfg.vip4_prefix = "100.65.0.0/16".parse().unwrap();
    east.cfg.vip6_prefix = "fd7a:6379:7068:1::/64".parse().unwrap();
    west.cfg.link_listen = Some(free_tcp("127.0.0.1"));
    east.cfg.link_listen = Some(free_tcp("127.0.0.1"));
    let peer = |of: &CloudDir| LinkPeerConfig {
        addr: of.cfg.link_listen.unwrap(),
        server_name: None,
        domain: Some(of.cfg.domain.clone()),
        root: Some(of.cfg.root_cert_path()),
        vip4_prefix: Some(of.cfg.vip4_prefix),
        vip6_prefix: Some(of.cfg.vip6_prefix),
        public_addrs: Vec::new(),
    };
    west.cfg.links = vec![peer(&east)];
    east.cfg.links = vec![peer(&west)];
    west.cfg.validate().unwrap();
    east.cfg.validate().unwrap();

    let west_run = Running::start(&west, Roles::All).await;
    let mut east_run = Running::start(&east, Roles::All).await;
    let l1 = logged_in(&west, "n1").await;
    let l2 = logged_in(&east, "n2").await;
    let linked: Vec<&str> = l1
        .linked_domains
        .iter()
        .map(|l| l.domain.as_str())
        .collect();
    assert_eq!(linked, ["east.example"]);
    assert_eq!(
        l1.linked_domains[0].root_pem,
        std::fs::read_to_string(east.cfg.root_cert_path()).unwrap()
    );
    assert_eq!(l1.vip4.octets()[..2], [100, 64]);
    assert_eq!(l2.vip4.octets()[..2], [100, 65]);
    let mut n1 = SignalingNode::new(&l1, west.nms()).await;
    let mut n2 = SignalingNode::new(&l2, east.nms()).await;
    n1.register().await;
    n2.register().await;

    n1.send(Message::DirectionRequest {
        target: "n2.east.example".into(),
    })
    .await;
    let to_cn = confirm(&mut n2).await;
    assert_eq!(to_cn.peer.fqdn, "n1.west.example");
    assert_eq!(to_cn.peer.vip4, l1.vip4);
    // (Loopback endpoints are never handed out: the keys tell the ends.)
    assert_eq!(to_cn.peer.static_public, [7; 32]);
    let Message::RouteDirectionToInitiator(to_mn) = next_direction(&mut n1).await else {
        panic!("the initiator got no direction");
    };
    assert_eq!(to_mn.route_id, to_cn.route_id);
    assert_eq!(to_mn.tunnel_key, to_cn.tunnel_key);
    assert_eq!(to_mn.peer.fqdn, "n2.east.example");
    assert_eq!(to_mn.peer.vip4, l2.vip4);
    assert_eq!(to_mn.peer.static_public, [7; 32]);
    let c = east_run
        .wait_for("a link request", |c| c.links_asked >= 1)
        .await;
    assert_eq!(c.directions, 1);

    // A name the other domain does not hold: NotFound from over there.
    n1.send(Message::DirectionRequest {
        target: "n9.east.example".into(),
    })
    .await;
    assert!(
        matches!(
            next_direction(&mut n1).await,
            Message::DirectionError {
                code: DirectionErrorCode::NotFound,
                ..
            }
        ),
        "an unknown remote name"
    );

    // The other domain gone: the request fails at once, not at a timeout.
    east_run.stop().await;
    let asked = std::time::Instant::now();
    n1.send(Message::DirectionRequest {
        target: "n2.east.example".into(),
    })
    .await;
    assert!(matches!(
        next_direction(&mut n1).await,
        Message::DirectionError {
            code: DirectionErrorCode::NotFound,
            ..
        }
    ));
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    west_run.stop().await;
}

#[tokio::test]
async fn two_instances_of_one_cloud_direct_a_route_between_their_nodes() {
    let mut a = CloudDir::new().await;
    let b = two_instances(&mut a, &["192.0.2.7".parse().unwrap()]);

    // b first: its counters lie below a's, which n1 sees first.
    let mut b_run = Running::start(&b, Roles::All).await;
    let a_run = Running::start(&a, Roles::All).await;
    let l1 = logged_in(&a, "n1").await;
    // n2 logs in at the other instance: one database, one VIP space.
    let l2 = logged_in(&b, "n2").await;
    assert_ne!(l1.vip4, l2.vip4);
    assert!(
        l1.cloud_addrs.contains(&"192.0.2.7".parse().unwrap()),
        "nodes learn the other instance: {:?}",
        l1.cloud_addrs
    );
    assert_eq!(
        l1.instance_addrs,
        vec!["192.0.2.7".parse::<std::net::IpAddr>().unwrap()]
    );
    let mut n1 = SignalingNode::new(&l1, a.nms()).await;
    let mut n2 = SignalingNode::new(&l2, b.nms()).await;
    n1.register().await;
    n2.register().await;

    n1.send(Message::DirectionRequest {
        target: "n2.cyphonic.internal".into(),
    })
    .await;
    let to_cn = confirm(&mut n2).await;
    assert_eq!(to_cn.peer.fqdn, "n1.cyphonic.internal");
    let Message::RouteDirectionToInitiator(to_mn) = next_direction(&mut n1).await else {
        panic!("the initiator got no direction");
    };
    assert_eq!(to_mn.tunnel_key, to_cn.tunnel_key);
    assert_eq!(to_mn.peer.fqdn, "n2.cyphonic.internal");
    b_run
        .wait_for("a link request", |c| c.links_asked >= 1)
        .await;

    // n1 moves to the other instance with its session: b loads it from
    // the database, with counters above a's (which n1's replay window has
    // seen), and takes its Registration.
    n1.move_to(b.nms());
    n1.register().await;
    n1.send(Message::DirectionRequest {
        target: "n2.cyphonic.internal".into(),
    })
    .await;
    let again = confirm(&mut n2).await;
    assert_eq!(again.peer.fqdn, "n1.cyphonic.internal");
    assert!(matches!(
        next_direction(&mut n1).await,
        Message::RouteDirectionToInitiator(_)
    ));
    a_run.stop().await;
    b_run.stop().await;
}

/// Two instances of one cloud over one folder (CA, database; the second
/// on its own ports), linked; each announces the other at `public_addrs`.
fn two_instances(a: &mut CloudDir, public_addrs: &[std::net::IpAddr]) -> CloudDir {
    let mut b_cfg = a.cfg.clone();
    b_cfg.as_listen = vec![free_tcp("127.0.0.1"), free_tcp("::1")];
    b_cfg.nms_listen = vec![common::free_udp()];
    b_cfg.trs_listen = vec![common::free_udp()];
    b_cfg.instance = Some("b".into());
    a.cfg.instance = Some("a".into());
    a.cfg.link_listen = Some(free_tcp("127.0.0.1"));
    b_cfg.link_listen = Some(free_tcp("127.0.0.1"));
    let link_to = |addr| LinkPeerConfig {
        addr,
        server_name: None,
        domain: None,
        root: None,
        vip4_prefix: None,
        vip6_prefix: None,
        public_addrs: public_addrs.to_vec(),
    };
    a.cfg.links = vec![link_to(b_cfg.link_listen.unwrap())];
    b_cfg.links = vec![link_to(a.cfg.link_listen.unwrap())];
    a.with_config(b_cfg)
}

#[tokio::test]
async fn a_node_revoked_at_one_instance_is_withdrawn_from_the_others_nodes() {
    let mut a = CloudDir::new().await;
    let b = two_instances(&mut a, &[]);
    let a_run = Running::start(&a, Roles::All).await;
    let mut b_run = Running::start(&b, Roles::All).await;
    let l1 = logged_in(&a, "n1").await;
    let l2 = logged_in(&a, "n2").await;
    let mut n1 = SignalingNode::new(&l1, a.nms()).await;
    let mut n2 = SignalingNode::new(&l2, b.nms()).await;
    n1.register().await;
    n2.register().await;

    // The operator revokes n2 (from its own process): b, holding n2's
    // session, finds out, tells its nodes, and tells a over the link.
    cyphonic_cloud::admin::revoke_device(&a.cfg, "n2")
        .await
        .unwrap();
    b_run
        .wait_for("n2 withdrawn at b", |c| c.withdrawn >= 1)
        .await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "n1 was never told");
        match n1.recv().await {
            Message::PeerRevoked { fqdn, .. } => {
                assert_eq!(fqdn, "n2.cyphonic.internal");
                break;
            }
            _ => continue,
        }
    }
    assert!(a_run.now().withdrawn >= 1);
    a_run.stop().await;
    b_run.stop().await;
}
