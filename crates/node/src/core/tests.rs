//! The node's front, time stepped by hand, against a test NMS: what only
//! shows when the parts work together.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use cyphonic_pki::Verifier;
use cyphonic_proto::handshake::{LocalIdentity, StaticKeypair};
use cyphonic_proto::signal::{Envelope, Message, Role, RouteDirection, SignalCipher};
use cyphonic_proto::SessionId;
use hickory_proto::op::{Message as DnsMessage, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// `NodeConfig::default().max_peers`.
const MAX_PEERS: usize = 4096;

const NMS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4502);
const KEY: [u8; 32] = [5; 32];

fn verifier() -> Verifier {
    let ca = cyphonic_pki::create_ca("cyphonic.internal", SystemTime::now()).expect("CA");
    Verifier::from_pem(&ca.root_cert_pem).expect("root")
}

/// A registered node and the NMS's end of its signaling.
struct Bench {
    node: Node,
    nms: SignalCipher,
    rng: StdRng,
    t0: Instant,
    now: Instant,
    /// Bytes sent to each address other than the NMS, by `pump`.
    elsewhere: std::collections::BTreeMap<SocketAddr, (usize, usize)>,
}

impl Bench {
    fn registered() -> Self {
        let mut rng = StdRng::seed_from_u64(11);
        let identity = LocalIdentity {
            static_keys: StaticKeypair::generate(&mut rng),
            // The size of a real chain (leaf and intermediate): Tunnel
            // Requests weigh what they weigh on the wire.
            cert_chain_der: vec![vec![0x30; 380], vec![0x30; 420]],
            binding_sig: [0; 64],
        };
        let t0 = Instant::now();
        let config = NodeConfig {
            transport: Some(Transport::Udp),
            ..NodeConfig::default()
        };
        let mut node = Node::new(
            config,
            identity,
            verifier(),
            rng.gen(),
            1,
            t0,
            SystemTime::now(),
        );
        node.handle_local_addrs(t0, vec!["192.0.2.50:4501".parse().expect("addr")]);
        node.start();
        node.handle_login(
            t0,
            Login {
                session_id: SessionId(9),
                common_key: KEY,
                fqdn: "n1.cyphonic.internal".into(),
                vip4: Ipv4Addr::new(100, 64, 0, 1),
                vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
                nms: NMS,
                nms_alternatives: vec![NMS],
                instances: Vec::new(),
                keepalive: Duration::from_secs(10),
                quic_port: 0,
                tcp_port: 0,
            },
        );
        let mut b = Bench {
            node,
            nms: SignalCipher::new(SessionId(9), &KEY, Role::Nms, 1),
            rng,
            t0,
            now: t0,
            elsewhere: std::collections::BTreeMap::new(),
        };
        b.pump();
        assert!(b.node.status(b.now).cloud.registered);
        while b.node.poll_event().is_some() {}
        b
    }

    fn send(&mut self, txid: u64, message: Message) {
        let packet = self.nms.seal(&Envelope { txid, message });
        self.node.handle_datagram(self.now, NMS, &packet);
    }

    /// Plays the NMS for what the node sent: registrations and keepalives
    /// are answered; Direction Requests are returned.
    fn pump(&mut self) -> Vec<(u64, String)> {
        let mut directions = Vec::new();
        while let Some(t) = self.node.poll_transmit() {
            if t.destination != NMS {
                let e = self.elsewhere.entry(t.destination).or_default();
                e.0 += 1;
                e.1 += t.payload.len();
                continue;
            }
            let env = self.nms.open(&t.payload).expect("the NMS opens it");
            match env.message {
                Message::RegistrationRequest(_) => {
                    self.send(env.txid, super::signaling::tests::registered())
                }
                Message::KeepAlive => self.send(
                    env.txid,
                    Message::KeepAliveAck {
                        observed: "192.0.2.50:4501".parse().expect("addr"),
                    },
                ),
                Message::DirectionRequest { target } => directions.push((env.txid, target)),
                _ => {}
            }
        }
        directions
    }

    /// Runs every timer up to `until`, answering the NMS's part.
    fn run_until(&mut self, until: Instant) {
        while let Some((t, _)) = self.node.poll_timeout().filter(|(t, _)| *t <= until) {
            self.now = self.now.max(t);
            self.node.handle_timeout(self.now);
            self.pump();
        }
        self.now = until;
    }
}

/// Route to peer `p<i>` (VIPs from 100.64.0.2 and fd00::2 on; ours are
/// .1 and ::1).
fn direction(i: u32, initiate: bool) -> RouteDirection {
    let mut d = super::peers::tests::direction(i, 1_000_000 + i as u64);
    d.initiate = initiate;
    d
}

fn dns_query(name: &str) -> DnsMessage {
    let mut m = DnsMessage::new(1, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m
}

#[test]
fn five_thousand_names_come_and_go_and_routes_still_work() {
    let mut b = Bench::registered();
    let names = 5000;
    for i in 0..names {
        // The NMS directs us as responder; the initiator never shows up,
        // so the peer fails when its deadline passes.
        let txid = b.rng.gen();
        b.send(
            txid,
            Message::RouteDirectionToResponder(direction(i, false)),
        );
        if i % 1000 == 999 {
            let until = b.now + b.node.config().handshake_timeout * 2 + Duration::from_secs(1);
            b.run_until(until);
        }
    }
    b.run_until(b.now + Duration::from_secs(13));
    let status = b.node.status(b.now);
    assert!(status.peers.len() <= MAX_PEERS, "the table stays bounded");
    assert!(status.peers.iter().all(|p| p.state.starts_with("failed")));
    assert_eq!(b.node.counters().handshake_failures, names as u64);
    b.node.peers.check_indexes();

    // A name never seen before still gets its route.
    let fresh = direction(names, true);
    let name = fresh.peer.fqdn.clone();
    b.node
        .handle_dns_query(b.now, 7, dns_query(&format!("{name}.")), Fqdn::new(&name));
    let asked = b.pump();
    assert_eq!(
        asked.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        vec![name.as_str()]
    );
    b.send(asked[0].0, Message::RouteDirectionToInitiator(fresh));
    let answered = std::iter::from_fn(|| b.node.poll_event()).any(|e| {
        matches!(e, NodeEvent::DnsResponse { client: 7, response }
            if DnsMessage::from_vec(&response).is_ok_and(|m| m.answers.len() == 1))
    });
    assert!(answered, "the DNS query got the peer's VIP");
    let status = b.node.status(b.now);
    let peer = status
        .peers
        .iter()
        .find(|p| p.fqdn == name)
        .expect("installed");
    let v = names + 2;
    assert_eq!(peer.vip4, Ipv4Addr::new(100, 64, (v >> 8) as u8, v as u8));
    // And an old name that failed is selected anew.
    b.node.handle_dns_query(
        b.now,
        8,
        dns_query("p3.cyphonic.internal."),
        Fqdn::new("p3.cyphonic.internal"),
    );
    assert_eq!(b.pump().len(), 1);
    b.node.peers.check_indexes();
}

#[test]
fn the_default_bound_is_the_documented_one() {
    assert_eq!(NodeConfig::default().max_peers, MAX_PEERS);
}

#[test]
fn a_full_table_of_live_peers_refuses_new_routes() {
    let mut b = Bench::registered();
    for i in 0..MAX_PEERS as u32 {
        let txid = b.rng.gen();
        b.send(
            txid,
            Message::RouteDirectionToResponder(direction(i, false)),
        );
    }
    assert_eq!(b.node.status(b.now).peers.len(), MAX_PEERS);
    let txid = b.rng.gen();
    b.send(
        txid,
        Message::RouteDirectionToResponder(direction(MAX_PEERS as u32, false)),
    );
    let status = b.node.status(b.now);
    assert_eq!(
        status.peers.len(),
        MAX_PEERS,
        "nothing evicted: none failed"
    );
    assert!(!status
        .peers
        .iter()
        .any(|p| p.fqdn == format!("p{MAX_PEERS}.cyphonic.internal")));
    assert!(b.t0 <= b.now);
}

#[test]
fn a_route_never_takes_over_a_live_peers_vip() {
    let mut b = Bench::registered();
    let txid = b.rng.gen();
    b.send(
        txid,
        Message::RouteDirectionToResponder(direction(1, false)),
    );
    // Another name with p1's VIPs: refused, p1 keeps them.
    let mut thief = direction(2, false);
    thief.peer.vip4 = direction(1, false).peer.vip4;
    let txid = b.rng.gen();
    b.send(txid, Message::RouteDirectionToResponder(thief));
    let peers: Vec<String> = b
        .node
        .status(b.now)
        .peers
        .into_iter()
        .map(|p| p.fqdn)
        .collect();
    assert_eq!(peers, vec!["p1.cyphonic.internal".to_owned()]);
    // Once p1's establishment failed, its VIPs are free for the new name.
    b.run_until(b.now + Duration::from_secs(30));
    assert!(b.node.status(b.now).peers[0].state.starts_with("failed"));
    let mut heir = direction(2, false);
    heir.peer.vip4 = direction(1, false).peer.vip4;
    let txid = b.rng.gen();
    b.send(txid, Message::RouteDirectionToResponder(heir));
    assert!(b
        .node
        .status(b.now)
        .peers
        .iter()
        .any(|p| p.fqdn == "p2.cyphonic.internal"));
}

/// A route direction naming addresses that never answer (a hostile peer's
/// registered addresses, or a victim's): the Tunnel Requests they get from
/// one route are bounded in number and bytes, however long the handshake
/// is retried.
#[test]
fn addresses_that_never_answer_get_a_few_tunnel_requests_per_route() {
    for endpoints in [1usize, 16] {
        let mut b = Bench::registered();
        let mut d = direction(1, true);
        d.peer.endpoints = (0..endpoints)
            .map(|i| {
                SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, i as u16 + 1)),
                    4501,
                )
            })
            .collect();
        let txid = b.rng.gen();
        b.send(txid, Message::RouteDirectionToResponder(d));
        b.pump();
        let until = b.now + Duration::from_secs(30);
        b.run_until(until);
        let (packets, bytes): (usize, usize) = b
            .elsewhere
            .values()
            .fold((0, 0), |(p, n), (pp, nn)| (p + pp, n + nn));
        let most = b.elsewhere.values().map(|(p, _)| *p).max().unwrap_or(0);
        eprintln!(
            "{endpoints} silent endpoint(s): {packets} packets, {bytes} bytes in all; at most {most} to one address"
        );
        assert!(
            most <= super::tunnel::MAX_SILENT_SENDS as usize,
            "{most} to one address"
        );
        assert!(
            packets <= super::tunnel::MAX_SILENT_SENDS_PER_ROUTE as usize,
            "{packets} packets per route"
        );
    }
}

/// Route selection is timed from the Direction Request to the NMS's
/// answer, a route or an error; one that times out is counted apart. The
/// status and `/metrics` show the same histogram.
#[test]
fn route_selections_are_timed_from_request_to_answer() {
    use cyphonic_proto::signal::DirectionErrorCode;

    let mut b = Bench::registered();
    let ask = |b: &mut Bench, i: u32| {
        let name = format!("p{i}.cyphonic.internal");
        b.node.handle_dns_query(
            b.now,
            u64::from(i),
            dns_query(&format!("{name}.")),
            Fqdn::new(&name),
        );
        let asked = b.pump();
        assert_eq!(asked.len(), 1, "one Direction Request for {name}");
        asked[0].0
    };
    // Answered with a route after 35 ms.
    let txid = ask(&mut b, 1);
    b.now += Duration::from_millis(35);
    b.send(txid, Message::RouteDirectionToInitiator(direction(1, true)));
    // A second copy of the answer (a retransmission's) is not timed again.
    b.send(txid, Message::RouteDirectionToInitiator(direction(1, true)));
    // Refused after 700 ms.
    let txid = ask(&mut b, 2);
    b.now += Duration::from_millis(700);
    b.send(
        txid,
        Message::DirectionError {
            code: DirectionErrorCode::NotFound,
            message: "no such node".into(),
        },
    );
    // Never answered.
    ask(&mut b, 3);
    b.run_until(b.now + b.node.config().direction_timeout + Duration::from_secs(1));

    let status = b.node.status(b.now);
    let r = &status.route_selection;
    assert_eq!((r.started, r.count, r.timed_out), (3, 2, 1));
    let at_most = |ms: u64| {
        r.buckets
            .iter()
            .find(|b| b.le_ms == ms)
            .map(|b| b.count)
            .expect("a bound")
    };
    assert_eq!(
        (at_most(20), at_most(50), at_most(500), at_most(1000)),
        (0, 1, 1, 2)
    );
    assert!((r.sum_ms - 735.0).abs() < 1e-6, "{}", r.sum_ms);

    let text = crate::metrics::render(&serde_json::to_value(&status).expect("JSON"));
    for line in [
        "cyphonic_node_route_selection_seconds_count 2",
        "cyphonic_node_route_selection_seconds_bucket{le=\"0.02\"} 0",
        "cyphonic_node_route_selection_seconds_bucket{le=\"0.05\"} 1",
        "cyphonic_node_route_selection_seconds_bucket{le=\"1.0\"} 2",
        "cyphonic_node_route_selection_seconds_bucket{le=\"+Inf\"} 2",
        "cyphonic_node_events_total{event=\"route_selections\"} 3",
        "cyphonic_node_events_total{event=\"route_selection_timeouts\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}
