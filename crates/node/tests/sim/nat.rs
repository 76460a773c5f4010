//! Deterministic simulations of NAT traversal: the real NMS, node and TRS
//! cores on a virtual clock, with NAT boxes modelled on Linux conntrack
//! (`masquerade` and `masquerade fully-random`, address-and-port-dependent
//! filtering, idle expiry, no hairpinning; see `harness.rs`). The
//! simulated counterpart of `cyphonic lab nat-matrix`: every ordered pair
//! of placements, NAT detection, pattern 2, coordinated punching, same-NAT
//! shortcuts, mapping expiry, relay <-> direct path changes, relay failover
//! and spoofed packets. A failing case prints its seed.

use cyphonic_cloud_core::route::Placement;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use cyphonic_cloud_core::nms::NmsEvent;
use cyphonic_cloud_core::route::NatKind;
use cyphonic_cloud_core::trs::DropReason;
use cyphonic_node::core::{NodeConfig, Path, PeerStatus};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::*;

// ---- placements -------------------------------------------------------

const ALL: [Placement; 5] = [
    Placement::V6,
    Placement::V4,
    Placement::Ds,
    Placement::Eim,
    Placement::Sym,
];

/// The path docs/routing.md promises from an MN placed at `mn` to a CN at
/// `cn` (the table of `cyphonic_lab::scenarios::nat_matrix::expected_path`
/// and of the route decision's tests in `cloud/src/route.rs`).
fn expected_path(mn: Placement, cn: Placement) -> &'static str {
    cyphonic_cloud_core::route::documented_path(mn, cn)
}

fn natted(p: Placement) -> bool {
    matches!(p, Placement::Eim | Placement::Sym)
}

/// Where the MN (`n1` at `mn`) sends its tunnel's packets, without loss:
/// the TRS of its family, the CN's IPv6 when both have it, the CN's NAT
/// when it has one, else the CN's own IPv4.
fn expected_endpoint(mn: Placement, cn: Placement) -> IpAddr {
    let v6 = |p| matches!(p, Placement::V6 | Placement::Ds);
    match expected_path(mn, cn) {
        "relayed" if mn == Placement::V6 => trs_v6(0).ip(),
        "relayed" => trs_v4(0).ip(),
        "direct" if v6(mn) && v6(cn) => node_v6(2).ip(),
        _ if natted(cn) => nat_public(usize::from(natted(mn))),
        _ => node_v4(2).ip(),
    }
}

/// Whether the CN sends the Tunnel Request: a public MN and a NATed CN.
fn cn_initiates(mn: Placement, cn: Placement) -> bool {
    !natted(mn) && mn != Placement::V6 && natted(cn)
}

/// The NAT kind the NMS should detect for a placement.
fn expected_nat(p: Placement) -> &'static str {
    match p {
        Placement::V6 | Placement::V4 | Placement::Ds => "none",
        Placement::Eim => "endpoint-independent",
        Placement::Sym => "symmetric",
    }
}

/// Node `n<index>` at `p`; a NATed node gets a NAT of its own.
fn placed(index: usize, p: Placement, nats: &mut Vec<NatSpec>) -> NodeSpec {
    let node = NodeSpec::new(index);
    match p {
        Placement::V6 => node.stack(Stack::V6),
        Placement::V4 => node,
        Placement::Ds => node.stack(Stack::Dual),
        Placement::Eim | Placement::Sym => {
            nats.push(if p == Placement::Eim {
                NatSpec::eim()
            } else {
                NatSpec::sym()
            });
            node.behind(nats.len() - 1)
        }
    }
}

/// The NMS on ports 4502 and 4504 with relay grants for two TRS, and nodes
/// `n1`, `n2`, … placed as given.
pub(crate) fn nat_config(seed: u64, placements: &[Placement]) -> SimConfig {
    let mut config = SimConfig::new(seed, 0);
    config.nms.probe_port = PROBE_PORT;
    config.trs = 2;
    let mut nats = Vec::new();
    config.nodes = placements
        .iter()
        .enumerate()
        .map(|(i, p)| placed(i + 1, *p, &mut nats))
        .collect();
    config.nats = nats;
    config
}

/// A node is ready once registered and its NAT kind is known (the NAT
/// Probe answered, where there is one to send).
fn ready(sim: &Sim) -> bool {
    sim.nodes
        .iter()
        .all(|n| n.node.status(sim.now).cloud.registered && n.node.nat() != NatKind::Unknown)
}

/// Starts the simulation and waits until every node is ready.
pub(crate) fn started(config: SimConfig) -> Sim {
    let timeout = config.node.registration_timeout * 2;
    let mut sim = Sim::new(config);
    sim.start();
    assert!(
        sim.run_until(timeout, ready),
        "not every node registered and probed its NAT within {timeout:?}"
    );
    sim
}

fn fqdn(i: usize) -> String {
    format!("n{i}.cyphonic.internal")
}

/// `n<me>`'s status of its peer `n<peer>`.
pub(crate) fn peer_status(sim: &Sim, me: usize, peer: usize) -> Option<PeerStatus> {
    sim.node(me)
        .node
        .status(sim.now)
        .peers
        .into_iter()
        .find(|p| p.fqdn == fqdn(peer))
}

pub(crate) fn path_of(sim: &Sim, me: usize, peer: usize) -> String {
    peer_status(sim, me, peer).map_or_else(|| "-".into(), |p| p.path)
}

/// The data plane's path from `n<me>` to `n<peer>`.
fn tunnel_path(sim: &Sim, me: usize, peer: usize) -> Option<Path> {
    sim.node(me).tunnel_to(&fqdn(peer)).map(|t| t.path)
}

/// Looks `n<to>` up at `n<from>` (A, then AAAA), as a stub resolver does:
/// one more try after a SERVFAIL or no answer. Returns what went wrong.
fn lookup(sim: &mut Sim, from: usize, to: usize) -> Result<(), String> {
    let name = format!("n{to}.cyphonic.internal.");
    let timeout = sim.node(from).node.config().direction_timeout + secs(1);
    for qtype in [RecordType::A, RecordType::AAAA] {
        let mut answered = false;
        for _attempt in 0..2 {
            let client = sim.dns_query(from, &name, qtype);
            sim.run_until(timeout, |s| s.dns_answer(from, client).is_some());
            match sim.dns_answer(from, client) {
                Some(a) if a.rcode() == ResponseCode::NoError => {
                    let want: IpAddr = match qtype {
                        RecordType::AAAA => vip6(to).into(),
                        _ => vip4(to).into(),
                    };
                    if a.addresses() != vec![want] {
                        return Err(format!("{qtype} {name}: {:?}", a.addresses()));
                    }
                    answered = true;
                    break;
                }
                Some(a) if a.rcode() != ResponseCode::ServFail => {
                    return Err(format!("{qtype} {name}: {}", a.rcode()));
                }
                _ => {}
            }
        }
        if !answered {
            return Err(format!("no answer to {qtype} {name} in two tries"));
        }
    }
    Ok(())
}

/// Waits until `n<a>` and `n<b>` both have a tunnel to each other.
fn tunnel_between(sim: &mut Sim, a: usize, b: usize, timeout: Duration) -> bool {
    let (fa, fb) = (fqdn(a), fqdn(b));
    sim.run_until(timeout, |s| {
        s.node(a).tunnel_to(&fb).is_some() && s.node(b).tunnel_to(&fa).is_some()
    })
}

/// An application packet from `n<from>` to `n<to>`, IPv4 or IPv6.
fn app_packet(from: usize, to: usize, v6: bool, body: &str) -> Vec<u8> {
    if v6 {
        ipv6_packet(vip6(from), vip6(to), body.as_bytes())
    } else {
        ipv4_packet(vip4(from), vip4(to), body.as_bytes())
    }
}

/// One IPv4 and one IPv6 packet each way: each arrives once, intact, in
/// order, through the tunnel (the links lose nothing).
fn exchange(sim: &mut Sim, a: usize, b: usize, tag: &str) -> Result<(), String> {
    for (from, to) in [(a, b), (b, a)] {
        let before = sim.node(to).received.len();
        let sent: Vec<Vec<u8>> = [false, true]
            .iter()
            .map(|&v6| app_packet(from, to, v6, &format!("{tag} n{from}->n{to} v6={v6}")))
            .collect();
        for p in &sent {
            sim.send_app(from, p);
        }
        sim.run_until(secs(1), |s| s.node(to).received.len() >= before + 2);
        sim.run_for(ms(100));
        let got: Vec<Vec<u8>> = sim.node(to).received[before..]
            .iter()
            .filter(|r| r.peer == fqdn(from))
            .map(|r| r.packet.clone())
            .collect();
        if got != sent {
            return Err(format!(
                "{tag}: n{to} got {} of the 2 packets n{from} sent",
                got.iter().filter(|g| sent.contains(g)).count()
            ));
        }
    }
    Ok(())
}

/// On lossy links: `n<from>` sends a packet every 200 ms, up to `tries`,
/// until one arrives at `n<to>` intact.
fn gets_through(sim: &mut Sim, from: usize, to: usize, tag: &str, tries: usize) -> bool {
    let before = sim.node(to).received.len();
    let mut sent = Vec::new();
    for i in 0..tries {
        let p = app_packet(from, to, i % 2 == 1, &format!("{tag} #{i}"));
        sim.send_app(from, &p);
        sent.push(p);
        if sim.run_until(ms(200), |s| s.node(to).received.len() > before) {
            return sim.node(to).received[before..]
                .iter()
                .all(|r| r.peer == fqdn(from) && sent.contains(&r.packet));
        }
    }
    false
}

// ---- 1. The matrix ------------------------------------------------------

/// One cell: MN `n1` at `x`, CN `n2` at `y`, every link losing `loss`.
fn matrix_cell(seed: u64, x: Placement, y: Placement, loss: f64) -> Result<(), String> {
    let mut config = nat_config(seed, &[x, y]);
    config.link.loss = loss;
    let handshake = config.node.handshake_timeout;
    let keepalive = config.node.keepalive;
    let mut sim = Sim::new(config);
    sim.start();
    let mut budget = sim.nodes[0].node.config().registration_timeout * 2;
    if !sim.run_until(budget, ready) {
        // A node whose Registration timed out logs in again by itself.
        budget *= 2;
        if !sim.run_until(budget, ready) {
            return Err(format!("not ready after {budget:?}"));
        }
    }
    let want = expected_path(x, y);
    lookup(&mut sim, 1, 2)?;
    // The responder may wait for a Tunnel Request up to twice the
    // handshake timeout; a handshake that fell back to the relay moves to
    // the direct path by its keepalive probes.
    if !tunnel_between(&mut sim, 1, 2, handshake * 2 + secs(1)) {
        return Err(format!(
            "no tunnel: n1 {:?}, n2 {:?}\n{}",
            peer_status(&sim, 1, 2).map(|p| p.state),
            peer_status(&sim, 2, 1).map(|p| p.state),
            sim.wire_tail(20)
        ));
    }
    if loss == 0.0 {
        // A hard NAT against an easy one starts on the relay; birthday
        // punching moves both ends within seconds.
        sim.run_until(secs(10), |s| {
            path_of(s, 1, 2) == want && path_of(s, 2, 1) == want
        });
        let got = path_of(&sim, 1, 2);
        if got != want {
            return Err(format!("n1's path is {got}, docs/routing.md says {want}"));
        }
        exchange(&mut sim, 1, 2, "matrix")?;
        for me in [1, 2] {
            let n = sim.node(me);
            if n.data_rx_bad != 0 {
                return Err(format!("n{me} refused {} data packets", n.data_rx_bad));
            }
        }
        // The responder's view of the path agrees.
        let theirs = path_of(&sim, 2, 1);
        if theirs != want {
            return Err(format!("n2's path is {theirs}, n1's {want}"));
        }
        let endpoint = peer_status(&sim, 1, 2).and_then(|p| p.endpoint);
        if endpoint.map(|e| e.ip()) != Some(expected_endpoint(x, y)) {
            return Err(format!(
                "n1 sends to {endpoint:?}, expected {}",
                expected_endpoint(x, y)
            ));
        }
        let requests: Vec<Option<SocketAddr>> = sim
            .wire
            .iter()
            .filter(|w| matches!(w.kind, "TunnelRequest" | "RelayedTunnelRequest"))
            .map(|w| w.lan_src.or(Some(w.src)))
            .collect();
        let cn_addrs = &sim.node(2).addrs;
        let by_cn = requests
            .iter()
            .filter(|r| r.is_some_and(|a| cn_addrs.contains(&a)))
            .count();
        let want_by_cn = if cn_initiates(x, y) {
            requests.len()
        } else {
            0
        };
        if requests.is_empty() || by_cn != want_by_cn {
            return Err(format!(
                "{by_cn} of {} Tunnel Requests from the CN, expected {want_by_cn}",
                requests.len()
            ));
        }
    } else {
        for (from, to) in [(1, 2), (2, 1)] {
            if !gets_through(&mut sim, from, to, "lossy", 20) {
                return Err(format!("no data n{from} -> n{to} in 20 tries"));
            }
        }
        let settle = keepalive * 4 + handshake;
        if !sim.run_until(settle, |s| path_of(s, 1, 2) == want) {
            return Err(format!(
                "n1's path is {} after {settle:?} more, docs/routing.md says {want}",
                path_of(&sim, 1, 2)
            ));
        }
        for (from, to) in [(1, 2), (2, 1)] {
            if !gets_through(&mut sim, from, to, "lossy on the final path", 20) {
                return Err(format!("no data n{from} -> n{to} on the {want} path"));
            }
        }
    }
    // The relay carries exactly the tunnels the table says it does.
    let relayed = matches!(tunnel_path(&sim, 1, 2), Some(Path::Relay { .. }));
    if relayed != (want == "relayed") {
        return Err(format!(
            "n1's data plane path {:?} for a {want} tunnel",
            tunnel_path(&sim, 1, 2)
        ));
    }
    Ok(())
}

fn matrix(loss: f64) {
    let mut failures = Vec::new();
    for (i, x) in ALL.into_iter().enumerate() {
        for (j, y) in ALL.into_iter().enumerate() {
            let seed = one_seed(100 + (i * 5 + j) as u64);
            if let Err(e) = matrix_cell(seed, x, y, loss) {
                failures.push(format!("{x:?} -> {y:?} (seed {seed}): {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 25 pairs failed at {} % loss:\n{}",
        failures.len(),
        loss * 100.0,
        failures.join("\n")
    );
}

/// Every ordered pair of placements: the name resolves to the CN's VIPs,
/// both ends get the tunnel, data flows both ways, and the path is the one
/// docs/routing.md promises, on both ends.
#[test]
fn every_pair_of_placements_takes_its_path() {
    matrix(0.0);
}

/// The same with 10 % loss on every link: retransmissions, relay fallback
/// and the upgrade back to the direct path get every pair there in the end.
#[test]
fn every_pair_of_placements_takes_its_path_at_10_percent_loss() {
    matrix(0.1);
}

/// The lossy matrix over many seeds (`SIM_SEEDS`, default 20 per cell),
/// to measure how often a pair misses its path within the budget above.
#[test]
#[ignore = "measures the lossy matrix over many seeds; takes a while"]
fn measure_the_lossy_matrix() {
    let runs: u64 = std::env::var("SIM_SEEDS").map_or(20, |s| s.parse().expect("a number"));
    let mut failures = Vec::new();
    for x in ALL {
        for y in ALL {
            for seed in 0..runs {
                if let Err(e) = matrix_cell(1000 + seed, x, y, 0.1) {
                    failures.push(format!("{x:?} -> {y:?} (seed {}): {e}", 1000 + seed));
                }
            }
        }
    }
    eprintln!(
        "{} of {} lossy cells failed:\n{}",
        failures.len(),
        25 * runs,
        failures.join("\n")
    );
    assert!(failures.is_empty());
}

// ---- 2. NAT detection ----------------------------------------------------

/// The NMS sees a `masquerade` NAT keep the node's port towards its second
/// port, and a `fully-random` one pick another; nodes with an address of
/// their own have none. Node, NMS and status agree.
#[test]
fn the_nms_detects_each_kind_of_nat() {
    use Placement::*;
    let placements = [Eim, Sym, V4, Ds, V6];
    let sim = started(nat_config(one_seed(2), &placements));
    let registrations = sim.nms.registrations();
    for (i, p) in placements.iter().enumerate() {
        let n = sim.node(i + 1);
        let status = n.node.status(sim.now);
        assert_eq!(status.cloud.nat, expected_nat(*p), "{p:?} node's status");
        let (_, reg) = registrations
            .iter()
            .find(|(f, _)| *f == n.fqdn)
            .expect("registered at the NMS");
        assert_eq!(
            reg.nat().as_str(),
            expected_nat(*p),
            "the NMS's view of {p:?}"
        );
        match p {
            Eim => {
                assert_eq!(reg.observed.ip(), nat_public(0));
                assert_eq!(reg.observed.port(), TUNNEL_PORT, "masquerade kept the port");
                assert_eq!(reg.observed_probe, Some(reg.observed));
                assert_eq!(status.cloud.local_addrs, vec![lan_v4(0, 1)]);
            }
            Sym => {
                assert_eq!(reg.observed.ip(), nat_public(1));
                let probe = reg.observed_probe.expect("probed");
                assert_eq!(probe.ip(), nat_public(1));
                assert_ne!(probe.port(), reg.observed.port());
            }
            _ => assert!(reg.local_addrs.contains(&reg.observed)),
        }
        // The NMS told the world (its NatDetected event) what it concluded.
        if matches!(p, Eim | Sym) {
            let detected = sim.nms_events.iter().rev().find_map(|(_, e)| match e {
                NmsEvent::NatDetected { fqdn, nat } if *fqdn == n.fqdn => Some(*nat),
                _ => None,
            });
            assert_eq!(detected.map(NatKind::as_str), Some(expected_nat(*p)));
        }
    }
}

// ---- 3. Pattern 2, coordinated punching, same NAT ------------------------

/// The Tunnel Requests on the wire: (source after NAT, private source).
fn tunnel_requests(sim: &Sim) -> Vec<(SocketAddr, Option<SocketAddr>)> {
    sim.wire
        .iter()
        .filter(|w| w.kind == "TunnelRequest")
        .map(|w| (w.src, w.lan_src))
        .collect()
}

/// MN public, CN behind a NAT: the NMS has the CN send the Tunnel Request
/// (through its own NAT, which opens it), and the MN answers.
#[test]
fn pattern_2_the_natted_cn_initiates() {
    for cn in [Placement::Eim, Placement::Sym] {
        let mut sim = started(nat_config(one_seed(3), &[Placement::V4, cn]));
        lookup(&mut sim, 1, 2).unwrap();
        assert!(tunnel_between(&mut sim, 1, 2, secs(6)), "{cn:?}");
        let requests = tunnel_requests(&sim);
        assert!(!requests.is_empty());
        assert!(
            requests
                .iter()
                .all(|(src, lan)| src.ip() == nat_public(0) && *lan == Some(lan_v4(0, 2))),
            "{cn:?}: every Tunnel Request from the CN: {requests:?}"
        );
        assert_eq!(sim.count("RelayedTunnelRequest").0, 0);
        let mn = peer_status(&sim, 1, 2).unwrap();
        let cn_view = peer_status(&sim, 2, 1).unwrap();
        assert_eq!(serde_json::to_value(mn.role).unwrap(), "responder");
        assert_eq!(serde_json::to_value(cn_view.role).unwrap(), "initiator");
        assert_eq!(
            (mn.path.as_str(), cn_view.path.as_str()),
            ("punched", "punched")
        );
        // The MN answers the CN's NAT mapping, the CN talks to the MN's own
        // address.
        assert_eq!(mn.endpoint.map(|e| e.ip()), Some(nat_public(0)));
        assert_eq!(cn_view.endpoint, Some(node_v4(1)));
        exchange(&mut sim, 1, 2, "pattern 2").unwrap();
    }
}

/// Both behind endpoint-independent NATs: the CN (not initiating) punches
/// its NAT towards the MN's mapping before the MN's Tunnel Request comes,
/// so that request passes the CN's NAT; nothing goes through the relay.
#[test]
fn coordinated_punching_between_two_eim_nats() {
    let mut sim = started(nat_config(one_seed(4), &[Placement::Eim, Placement::Eim]));
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, secs(6)));
    let punches: Vec<&WireRecord> = sim.wire.iter().filter(|w| w.kind == "Punch").collect();
    assert!(!punches.is_empty(), "the CN punched");
    assert!(
        punches
            .iter()
            .all(|w| w.lan_src == Some(lan_v4(1, 2)) || w.src == lan_v4(1, 2)),
        "only the CN punches"
    );
    assert_eq!(sim.node(1).node.counters().punches_sent, 0);
    assert!(sim.node(2).node.counters().punches_sent > 0);
    let requests = tunnel_requests(&sim);
    assert!(requests.iter().all(|(_, lan)| *lan == Some(lan_v4(0, 1))));
    // The CN's first punch left before the first Tunnel Request, and that
    // request got through the CN's NAT at the first try.
    let first_punch = punches[0].at;
    let first_request = sim
        .wire
        .iter()
        .find(|w| w.kind == "TunnelRequest")
        .expect("a Tunnel Request");
    assert!(first_punch < first_request.at);
    assert_eq!(
        first_request.dst,
        SocketAddr::new(nat_public(1), TUNNEL_PORT)
    );
    assert_eq!(first_request.fate, Fate::Delivered);
    assert_eq!(sim.count("TunnelRequest").0, 1, "no retransmission needed");
    for (me, peer) in [(1, 2), (2, 1)] {
        assert_eq!(path_of(&sim, me, peer), "punched");
        assert!(matches!(tunnel_path(&sim, me, peer), Some(Path::Direct(_))));
    }
    assert_eq!(sim.count("RelayedTunnelRequest").0, 0);
    exchange(&mut sim, 1, 2, "punched").unwrap();
    assert_eq!(
        sim.count("RelayedData").0,
        0,
        "nothing went through the TRS"
    );
}

/// Behind routers without an input firewall, a punch that reaches the
/// MN's router before the MN sent anything is recorded there, and the MN's
/// Tunnel Request would then leave from a fresh port the CN's NAT does not
/// expect (docs/routing.md, "A note on Linux NAT routers"). The CN's first
/// punches therefore die one router past its own NAT: they open it, the
/// MN's request crosses first and finds the hole, and the tunnel is
/// punched, direct from the first handshake.
#[test]
fn coordinated_punching_behind_routers_without_input_firewall_goes_direct() {
    let mut config = nat_config(one_seed(4), &[Placement::Eim, Placement::Eim]);
    for nat in &mut config.nats {
        *nat = nat.without_input_firewall();
    }
    let node = fast_paths(&mut config);
    let mut sim = started(config);
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, node.handshake_timeout));
    let punches: Vec<&WireRecord> = sim.wire.iter().filter(|w| w.kind == "Punch").collect();
    assert!(!punches.is_empty());
    assert!(
        punches.iter().all(|w| w.fate == Fate::Expired),
        "the CN's punches die past its NAT: {:?}",
        punches.iter().map(|w| w.fate).collect::<Vec<_>>()
    );
    let first_request = sim
        .wire
        .iter()
        .find(|w| w.kind == "TunnelRequest")
        .expect("a Tunnel Request");
    assert_eq!(
        first_request.src.port(),
        TUNNEL_PORT,
        "no clash at the MN's router"
    );
    assert_eq!(first_request.fate, Fate::Delivered);
    streams_on(&mut sim, node.keepalive * 2, "punched");
}

/// A hard NAT (a random port per destination) against an easy one, both
/// routers without an input firewall and a router between them: the
/// tunnel comes up on the relay; the hard side opens its spare ports with
/// probes that die past its NAT (none reaches the easy side's router,
/// which would record it), the easy side probes random ports of the hard
/// side's address, one hits an open mapping, and both ends move onto that
/// path; the other spare ports close, the one in use stays. Over several
/// seeds, both ways round (the hard side asking, and asked).
#[test]
fn birthday_punching_takes_a_hard_and_an_easy_nat_direct() {
    let mut failures = Vec::new();
    let seeds = 8u64;
    for seed in 0..seeds {
        let order = if seed % 2 == 0 {
            [Placement::Sym, Placement::Eim]
        } else {
            [Placement::Eim, Placement::Sym]
        };
        if let Err(e) = birthday(one_seed(300 + seed), order) {
            failures.push(format!("seed {}: {order:?}: {e}", 300 + seed));
        }
    }
    // Each attempt finds a mapping with probability 98 %.
    assert!(
        failures.len() <= 1,
        "{} of {seeds} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn birthday(seed: u64, order: [Placement; 2]) -> Result<(), String> {
    let mut config = nat_config(seed, &order);
    for nat in &mut config.nats {
        *nat = nat.without_input_firewall();
    }
    let handshake = config.node.handshake_timeout;
    let mut sim = started(config);
    lookup(&mut sim, 1, 2)?;
    if !tunnel_between(&mut sim, 1, 2, handshake) {
        return Err("no tunnel".into());
    }
    if path_of(&sim, 1, 2) != "relayed" {
        return Err(format!("first path {}", path_of(&sim, 1, 2)));
    }
    let up = sim.elapsed();
    let direct = |s: &Sim| path_of(s, 1, 2) == "punched" && path_of(s, 2, 1) == "punched";
    if !sim.run_until(secs(5), direct) {
        return Err(format!(
            "still {} / {} 5 s after the tunnel came up",
            path_of(&sim, 1, 2),
            path_of(&sim, 2, 1)
        ));
    }
    let took = sim.elapsed() - up;
    let hard = if order[0] == Placement::Sym { 1 } else { 2 };
    let easy = 3 - hard;
    let hard_path = tunnel_path(&sim, hard, easy).ok_or("no path")?;
    let Path::Direct(leg) = hard_path else {
        return Err(format!("hard side on {hard_path:?}"));
    };
    if leg.local == 0 || leg.addr.ip() != nat_public(easy - 1) {
        return Err(format!(
            "hard side's path {leg}: want a spare port to the easy NAT"
        ));
    }
    // No probe of the hard side reached the easy side's router first.
    let opened: Vec<Fate> = sim
        .wire
        .iter()
        .filter(|w| w.kind == "Data" && w.lan_src.is_some_and(|a| a.port() > SPARE_BASE))
        .map(|w| w.fate)
        .take(256)
        .collect();
    if opened.len() < 256 || opened.iter().any(|f| *f != Fate::Expired) {
        return Err(format!("spare ports' first probes: {opened:?}"));
    }
    // The window closes; only the port in use stays open.
    sim.run_for(secs(10));
    let n = sim.node(hard);
    if n.spares.iter().copied().collect::<Vec<_>>() != vec![leg.local] {
        return Err(format!("spare ports open after the window: {:?}", n.spares));
    }
    if !sim.node(easy).spares.is_empty() {
        return Err("the easy side opened spare ports".into());
    }
    exchange(&mut sim, 1, 2, "birthday")?;
    if path_of(&sim, 1, 2) != "punched" {
        return Err(format!("after traffic: {}", path_of(&sim, 1, 2)));
    }
    eprintln!("seed {seed}: direct {took:?} after the tunnel came up");
    Ok(())
}

/// Two hard NATs: nothing to hit (each side's mappings are unknown to the
/// other); the tunnel stays on the relay and no spare port is opened.
#[test]
fn two_hard_nats_stay_relayed() {
    let mut config = nat_config(one_seed(11), &[Placement::Sym, Placement::Sym]);
    for nat in &mut config.nats {
        *nat = nat.without_input_firewall();
    }
    let handshake = config.node.handshake_timeout;
    let mut sim = started(config);
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, handshake));
    sim.run_for(secs(20));
    assert_eq!(path_of(&sim, 1, 2), "relayed");
    for i in [1, 2] {
        assert_eq!(sim.node(i).node.status(sim.now).counters.spray_attempts, 0);
        assert!(sim.node(i).spare_releases.is_empty());
    }
}

/// n1 and n2 stream to each other for `d`: every packet arrives, and both
/// ends are on `want` ("punched" or "relayed") and were on nothing else
/// (no one-way path taken, or no relay used).
fn streams_on(sim: &mut Sim, d: Duration, want: &str) {
    let sent = stream(sim, d, ms(200), want);
    sim.run_for(ms(200));
    assert!(sent
        .iter()
        .all(|(_, from, p)| arrived(sim, *from, 3 - from, p)));
    for (me, peer) in [(1, 2), (2, 1)] {
        assert_eq!(path_of(sim, me, peer), want, "n{me}");
        let relayed = want == "relayed";
        assert!(
            sim.node(me)
                .tunnel_ups
                .iter()
                .all(|(_, t)| t.path.is_relay() == relayed),
            "n{me} was on another kind of path"
        );
    }
}

/// With both NATs on one link (no router between), no TTL stops a punch
/// short of the peer's router: the clash happens, the pair falls back to
/// the relay and keeps probing, and the one-way holes never strand the
/// tunnel.
#[test]
fn coordinated_punching_between_adjacent_routers_without_input_firewall_falls_back_to_the_relay() {
    let mut config = nat_config(one_seed(4), &[Placement::Eim, Placement::Eim]);
    config.internet_hops = 0;
    for nat in &mut config.nats {
        *nat = nat.without_input_firewall();
    }
    let node = fast_paths(&mut config);
    let mut sim = started(config);
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, node.handshake_timeout));
    let first_request = sim
        .wire
        .iter()
        .find(|w| w.kind == "TunnelRequest")
        .expect("a Tunnel Request");
    assert_ne!(
        first_request.src.port(),
        TUNNEL_PORT,
        "the MN's router had recorded the CN's punch on that port"
    );
    assert_eq!(first_request.fate, Fate::Filtered);
    streams_on(&mut sim, node.keepalive * 10, "relayed");
    // Both kept probing the direct endpoints, none answered: n2 (the
    // responder) opens its NAT and asks over the relay at each of the
    // first six keepalive ticks, then at every fourth; n1 probes on each
    // request: 7 times in these ten intervals.
    let probes = sim
        .wire
        .iter()
        .filter(|w| w.kind == "Data" && w.dst.ip() == nat_public(1))
        .count();
    assert!((6..=8).contains(&probes), "{probes} probes from n1");
}

/// The same routers, with a port mapping on n2's (as miniupnpd installs
/// for a PCP or NAT-PMP request): n2 registers the mapped address and
/// counts as reachable, n1 sends first, and the tunnel is direct from the
/// first handshake, both ways, whichever side looks the other up.
#[test]
fn a_port_mapping_makes_routers_without_input_firewall_direct() {
    for (from, to) in [(1, 2), (2, 1)] {
        let mut config = nat_config(one_seed(4), &[Placement::Eim, Placement::Eim]);
        for nat in &mut config.nats {
            *nat = nat.without_input_firewall();
        }
        let node = fast_paths(&mut config);
        let mut sim = started(config);
        sim.map_port(2, 30001);
        // Registered again with the mapping: the NMS sees no NAT in front.
        assert!(sim.run_until(secs(2), |s| s.node(2).registered.len() >= 2));
        lookup(&mut sim, from, to).unwrap();
        assert!(tunnel_between(&mut sim, 1, 2, node.handshake_timeout));
        // Pattern 2 (a NAT on the path, opened from inside): direct.
        streams_on(&mut sim, node.keepalive * 2, "punched");
        let to_n2 = sim
            .node(1)
            .tunnel_to(&sim.node(2).fqdn)
            .expect("n1's tunnel");
        assert_eq!(to_n2.path.address(), SocketAddr::new(nat_public(1), 30001));
        assert_eq!(sim.node(2).node.nat(), NatKind::None);
    }
}

/// Two nodes behind one NAT talk over their private addresses: no packet
/// between them crosses the NAT (which would not hairpin it anyway).
#[test]
fn two_nodes_behind_one_nat_go_direct_over_the_lan() {
    for nat in [NatSpec::eim(), NatSpec::sym()] {
        let mut config = nat_config(one_seed(5), &[]);
        config.nats = vec![nat];
        config.nodes = vec![NodeSpec::new(1).behind(0), NodeSpec::new(2).behind(0)];
        let mut sim = started(config);
        lookup(&mut sim, 1, 2).unwrap();
        assert!(tunnel_between(&mut sim, 1, 2, secs(6)), "{nat:?}");
        for (me, peer) in [(1, 2), (2, 1)] {
            let p = peer_status(&sim, me, peer).unwrap();
            assert_eq!(p.path, "direct", "{nat:?}");
            assert_eq!(p.endpoint, Some(lan_v4(0, peer)), "{nat:?}");
        }
        exchange(&mut sim, 1, 2, "same NAT").unwrap();
        let (a, b) = (lan_v4(0, 1), lan_v4(0, 2));
        let between = |w: &&WireRecord| {
            let from = w.lan_src.unwrap_or(w.src);
            (from == a || from == b)
                && matches!(w.kind, "TunnelRequest" | "TunnelResponse" | "Data")
        };
        let packets: Vec<&WireRecord> = sim.wire.iter().filter(between).collect();
        assert!(packets.len() >= 6);
        assert!(
            packets
                .iter()
                .all(|w| w.lan_src.is_none() && (w.dst == a || w.dst == b)),
            "{nat:?}: every packet between them stayed on the LAN"
        );
        assert!(sim.node(1).received.iter().all(|r| r.path == Path::udp(b)));
    }
}

// ---- 4. NAT mapping expiry -----------------------------------------------

/// A tunnel through NATs that forget a mapping after 2 s of silence, with
/// tunnel keepalives every `keepalive`: after 10 s without application
/// data, the public side's packet reaches the NATed side on the same path,
/// without a new handshake. Returns whether it did, and the simulation.
fn after_silence(mn: Placement, cn: Placement, keepalive: Duration) -> (bool, Sim) {
    let mut config = nat_config(one_seed(6), &[mn, cn]);
    for nat in &mut config.nats {
        nat.udp_timeout = secs(2);
    }
    config.node.keepalive = keepalive;
    let mut sim = started(config);
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, secs(6)));
    exchange(&mut sim, 1, 2, "before").unwrap();
    let paths = (tunnel_path(&sim, 1, 2), tunnel_path(&sim, 2, 1));
    let ups = (sim.node(1).tunnel_ups.len(), sim.node(2).tunnel_ups.len());
    let requests = sim.count("TunnelRequest").0 + sim.count("RelayedTunnelRequest").0;
    sim.run_for(secs(10));
    // The CN speaks first: with a NAT in front of the MN, only a live
    // mapping lets it in.
    let before = sim.node(1).received.len();
    let p = app_packet(2, 1, false, "after 10 s of silence");
    sim.send_app(2, &p);
    sim.run_for(ms(500));
    let arrived = sim.node(1).received[before..].iter().any(|r| r.packet == p);
    if arrived {
        exchange(&mut sim, 1, 2, "after").unwrap();
        assert_eq!(
            (tunnel_path(&sim, 1, 2), tunnel_path(&sim, 2, 1)),
            paths,
            "same path as before the silence"
        );
        assert_eq!(
            (sim.node(1).tunnel_ups.len(), sim.node(2).tunnel_ups.len()),
            ups,
            "no new tunnel"
        );
        assert_eq!(
            sim.count("TunnelRequest").0 + sim.count("RelayedTunnelRequest").0,
            requests,
            "no new handshake"
        );
        assert_eq!(sim.node(1).node.counters().path_changes, 0);
        assert_eq!(sim.node(2).node.counters().path_changes, 0);
    }
    (arrived, sim)
}

#[test]
fn keepalives_hold_nat_mappings_through_silence() {
    use Placement::*;
    for (mn, cn) in [(Eim, V4), (Eim, Eim), (Sym, Ds)] {
        let (arrived, sim) = after_silence(mn, cn, secs(1));
        assert!(arrived, "{mn:?} -> {cn:?}: data after 10 s of silence");
        assert!(
            sim.nodes.iter().all(|n| n.keepalives >= 8),
            "keepalives flowed"
        );
        // The mappings were only held, never remade: one per destination.
        let mn_nat = &sim.nats[0];
        assert_eq!(mn_nat.spec.udp_timeout, secs(2));
    }
    // The control: with keepalives rarer than the NAT's timeout, the NAT
    // forgets the mapping and filters the public side's packet.
    let (arrived, sim) = after_silence(Eim, V4, secs(30));
    assert!(!arrived, "without keepalives the 2 s NAT drops the packet");
    assert!(sim.nats[0].filtered > 0 && sim.nats[0].expired > 0);
    let last = sim
        .wire
        .iter()
        .rev()
        .find(|w| w.kind == "Data" && w.src == node_v4(2));
    assert_eq!(last.map(|w| w.fate), Some(Fate::Filtered));
}

// ---- 5. Path changes -----------------------------------------------------

/// Fast keepalives, so path changes take seconds of virtual time.
fn fast_paths(config: &mut SimConfig) -> NodeConfig {
    config.node.keepalive = secs(1);
    config.node.clone()
}

/// Drops packets between the public addresses of NATs 0 and 1.
fn block_between_nats(sim: &mut Sim) -> RuleId {
    let (a, b) = (nat_public(0), nat_public(1));
    sim.add_rule(move |w| {
        (w.src.ip() == a && w.dst.ip() == b) || (w.src.ip() == b && w.dst.ip() == a)
    })
}

/// Application data both ways every `every` for `d`; returns the packets
/// sent as (time, sender, bytes).
fn stream(
    sim: &mut Sim,
    d: Duration,
    every: Duration,
    tag: &str,
) -> Vec<(Duration, usize, Vec<u8>)> {
    let mut sent = Vec::new();
    let end = sim.elapsed() + d;
    let mut i = 0;
    while sim.elapsed() < end {
        for (from, to) in [(1, 2), (2, 1)] {
            let p = app_packet(from, to, i % 2 == 0, &format!("{tag} {i} n{from}"));
            sim.send_app(from, &p);
            sent.push((sim.elapsed(), from, p));
        }
        i += 1;
        sim.run_for(every);
    }
    sent
}

fn arrived(sim: &Sim, from: usize, to: usize, p: &[u8]) -> bool {
    sim.node(to)
        .received
        .iter()
        .any(|r| r.peer == fqdn(from) && r.packet == p)
}

/// eim <-> eim with the direct path blocked at first: the tunnel comes up
/// through the relay. Once the path opens, the keepalive probes find it and
/// both ends move onto it within a few keepalive intervals, and no data
/// packet sent from then on is lost.
#[test]
fn a_relayed_tunnel_moves_to_the_direct_path_once_it_opens() {
    relayed_tunnel_moves_to_the_direct_path_once_it_opens(false);
}

/// The same behind routers without an input firewall: the responder
/// opens its NAT with probes that die past it and asks over the relay,
/// so the initiator's probes are the first packets to cross and nothing
/// is recorded against either side.
#[test]
fn a_relayed_tunnel_behind_routers_without_input_firewall_moves_to_the_direct_path() {
    relayed_tunnel_moves_to_the_direct_path_once_it_opens(true);
}

fn relayed_tunnel_moves_to_the_direct_path_once_it_opens(plain: bool) {
    let mut config = nat_config(one_seed(7), &[Placement::Eim, Placement::Eim]);
    if plain {
        for nat in &mut config.nats {
            *nat = nat.without_input_firewall();
        }
    }
    let node = fast_paths(&mut config);
    let mut sim = Sim::new(config);
    let blocked = block_between_nats(&mut sim);
    sim.start();
    assert!(sim.run_until(secs(10), ready));
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, node.handshake_timeout));
    for (me, peer) in [(1, 2), (2, 1)] {
        assert_eq!(path_of(&sim, me, peer), "relayed");
        assert!(matches!(
            tunnel_path(&sim, me, peer),
            Some(Path::Relay { server, .. }) if server == trs_v4(0).into()
        ));
    }
    let relayed = stream(&mut sim, secs(3), ms(100), "relayed");
    assert!(relayed
        .iter()
        .all(|(_, from, p)| arrived(&sim, *from, 3 - from, p)));

    sim.remove_rule(blocked);
    let opened = sim.elapsed();
    let mut sent = Vec::new();
    let deadline = opened + node.keepalive * 3;
    while sim.elapsed() < deadline
        && !(path_of(&sim, 1, 2) == "punched" && path_of(&sim, 2, 1) == "punched")
    {
        sent.extend(stream(&mut sim, ms(50), ms(50), "opening"));
    }
    for (me, peer) in [(1, 2), (2, 1)] {
        assert_eq!(
            path_of(&sim, me, peer),
            "punched",
            "n{me} within {:?} of the path opening",
            node.keepalive * 3
        );
        assert_eq!(
            tunnel_path(&sim, me, peer),
            Some(Path::udp(SocketAddr::new(
                nat_public(peer - 1),
                TUNNEL_PORT
            )))
        );
    }
    sent.extend(stream(&mut sim, secs(2), ms(50), "direct"));
    sim.run_for(secs(1));
    let lost: Vec<_> = sent
        .iter()
        .filter(|(_, from, p)| !arrived(&sim, *from, 3 - from, p))
        .map(|(at, from, _)| (*at, *from))
        .collect();
    assert!(lost.is_empty(), "lost after the path opened: {lost:?}");
    // The last second's data came directly.
    let since = sim.elapsed() - secs(1);
    for me in [1, 2] {
        assert!(sim
            .node(me)
            .received
            .iter()
            .filter(|r| r.at >= since)
            .all(|r| matches!(r.path, Path::Direct(_))));
    }
    assert_eq!(
        sim.node(1)
            .tunnel_ups
            .iter()
            .filter(|(_, t)| t.path.is_relay())
            .count(),
        1
    );
}

/// A punched tunnel whose direct path is then blocked: both ends move to
/// the relay within `dead_after` keepalive intervals (and one for the
/// phase), and data flows again. The end whose liveness check fires first
/// moves and sends through the relay; what it sends there, application
/// data (`traffic`) or its first keepalive when the relay is nearer than
/// the peer (`direct_latency`), reaches the other end before that end's own
/// check, which must not take it for a sign of a live direct path.
fn falls_back_to_the_relay(direct_latency: Duration, traffic: bool) {
    let mut config = nat_config(one_seed(8), &[Placement::Eim, Placement::Eim]);
    let node = fast_paths(&mut config);
    let mut sim = started(config);
    let slow = Link {
        latency: direct_latency,
        loss: 0.0,
    };
    sim.set_link(nat_public(0), nat_public(1), slow);
    sim.set_link(nat_public(1), nat_public(0), slow);
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, node.handshake_timeout));
    assert_eq!(path_of(&sim, 1, 2), "punched");
    stream(&mut sim, secs(2), ms(100), "direct");

    block_between_nats(&mut sim);
    let blocked = sim.elapsed();
    let bound = node.keepalive * (node.dead_after + 1) + ms(500);
    let mut moved = [None, None];
    while sim.elapsed() < blocked + bound * 2 && moved.iter().any(Option::is_none) {
        if traffic {
            stream(&mut sim, ms(100), ms(100), "blocked");
        } else {
            sim.run_for(ms(100));
        }
        for (k, (me, peer)) in [(1, 2), (2, 1)].into_iter().enumerate() {
            if moved[k].is_none() && path_of(&sim, me, peer) == "relayed" {
                moved[k] = Some(sim.elapsed() - blocked);
            }
        }
    }
    for (k, me) in [1, 2].into_iter().enumerate() {
        let took = moved[k].unwrap_or_else(|| panic!("n{me} never moved to the relay"));
        assert!(
            took <= bound,
            "n{me} moved to the relay {took:?} after the block (bound {bound:?})"
        );
    }
    sim.run_for(ms(200));
    exchange(&mut sim, 1, 2, "relayed").unwrap();
    let last = sim.node(1).received.last().unwrap();
    assert!(matches!(last.path, Path::Relay { server, .. } if server == trs_v4(0).into()));
}

#[test]
fn a_blocked_direct_path_falls_back_to_the_relay_under_traffic() {
    falls_back_to_the_relay(ms(10), true);
}

#[test]
fn a_blocked_direct_path_falls_back_to_the_relay_when_the_relay_is_nearer() {
    falls_back_to_the_relay(ms(60), false);
}

/// A relayed tunnel (symmetric NATs on both sides) whose TRS dies: both
/// ends fail over to the second TRS, and data flows again.
#[test]
fn a_relayed_tunnel_fails_over_to_the_second_trs() {
    let mut config = nat_config(one_seed(9), &[Placement::Sym, Placement::Sym]);
    let node = fast_paths(&mut config);
    let mut sim = started(config);
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, node.handshake_timeout));
    for (me, peer) in [(1, 2), (2, 1)] {
        let p = peer_status(&sim, me, peer).unwrap();
        assert_eq!((p.path.as_str(), p.endpoint), ("relayed", Some(trs_v4(0))));
    }
    stream(&mut sim, secs(2), ms(100), "trs 1");
    assert!(sim.trs[0].trs.counters().forwarded_packets > 0);

    sim.kill_trs(0);
    let killed = sim.elapsed();
    // What was in flight to it lands and is forwarded (into the void).
    stream(&mut sim, ms(100), ms(100), "killed");
    let forwarded = sim.trs[0].trs.counters().forwarded_packets;
    let bound = node.keepalive * (node.dead_after + 3);
    while sim.elapsed() < killed + bound
        && [(1, 2), (2, 1)].iter().any(|&(me, peer)| {
            peer_status(&sim, me, peer).and_then(|p| p.endpoint) != Some(trs_v4(1))
        })
    {
        stream(&mut sim, ms(100), ms(100), "failing over");
    }
    for (me, peer) in [(1, 2), (2, 1)] {
        let p = peer_status(&sim, me, peer).unwrap();
        assert_eq!(
            (p.path.as_str(), p.endpoint, p.relay),
            ("relayed", Some(trs_v4(1)), Some(trs_v4(1))),
            "n{me} within {bound:?} of TRS 1's death"
        );
        assert!(sim.node(me).node.counters().relay_failovers >= 1);
    }
    sim.run_for(ms(300));
    exchange(&mut sim, 1, 2, "trs 2").unwrap();
    let sent = stream(&mut sim, secs(2), ms(100), "trs 2 stream");
    sim.run_for(ms(200));
    assert!(sent
        .iter()
        .all(|(_, from, p)| arrived(&sim, *from, 3 - from, p)));
    assert!(sim.trs[1].trs.counters().forwarded_packets > 0);
    assert_eq!(
        sim.trs[0].trs.counters().forwarded_packets,
        forwarded,
        "nothing reached the dead TRS"
    );
}

// ---- 6. Spoofing ---------------------------------------------------------

const ATTACKER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), TUNNEL_PORT);

/// A genuine data packet replayed from a forged source, and a tampered one,
/// reach the node but do not move its tunnel: the replay window and the
/// AEAD refuse them before any path report.
#[test]
fn a_replayed_data_packet_from_a_forged_source_does_not_move_the_tunnel() {
    let mut sim = started(nat_config(one_seed(10), &[Placement::Eim, Placement::V4]));
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, secs(6)));
    exchange(&mut sim, 1, 2, "genuine").unwrap();
    let path = tunnel_path(&sim, 2, 1);
    let captured = sim
        .wire
        .iter()
        .rev()
        .find(|w| w.kind == "Data" && w.dst == node_v4(2) && w.fate == Fate::Delivered)
        .expect("a data packet to n2")
        .payload
        .clone();
    let (bad, replayed) = (sim.node(2).data_rx_bad, sim.node(2).data_rx_replayed);
    sim.inject(ATTACKER, node_v4(2), captured.clone());
    let mut tampered = captured.clone();
    tampered[8] ^= 0x40; // the counter: new to the window, but not authentic
    sim.inject(ATTACKER, node_v4(2), tampered);
    sim.run_for(ms(100));
    let n2 = sim.node(2);
    assert_eq!(n2.data_rx_replayed, replayed + 1);
    assert_eq!(n2.data_rx_bad, bad + 2);
    assert!(n2
        .path_reports
        .iter()
        .all(|(_, _, p)| p.address() != ATTACKER));
    assert_eq!(tunnel_path(&sim, 2, 1), path);
    assert_eq!(n2.node.counters().path_changes, 0);
    exchange(&mut sim, 1, 2, "after the replay").unwrap();
    assert_eq!(tunnel_path(&sim, 2, 1), path);
}

/// A relayed tunnel: a captured Relay Bind replayed from another address
/// does not move that side at the TRS, and relayed data wrapped by the
/// attacker does not come through; the tunnel stays where it was.
#[test]
fn a_replayed_relay_bind_from_another_address_does_not_move_the_tunnel() {
    let mut sim = started(nat_config(one_seed(11), &[Placement::Sym, Placement::Sym]));
    lookup(&mut sim, 1, 2).unwrap();
    assert!(tunnel_between(&mut sim, 1, 2, secs(6)));
    exchange(&mut sim, 1, 2, "genuine").unwrap();
    let paths = (tunnel_path(&sim, 1, 2), tunnel_path(&sim, 2, 1));
    let bind = sim
        .wire
        .iter()
        .rev()
        .find(|w| w.kind == "RelayBind" && w.lan_src == Some(lan_v4(0, 1)))
        .expect("n1's Relay Bind")
        .payload
        .clone();
    let data = sim
        .wire
        .iter()
        .rev()
        .find(|w| w.kind == "RelayedData" && w.lan_src == Some(lan_v4(1, 2)))
        .expect("n2's relayed data")
        .payload
        .clone();
    let drops = sim.trs[0].drops.len();
    sim.inject(ATTACKER, trs_v4(0), bind);
    sim.inject(ATTACKER, trs_v4(0), data);
    sim.run_for(ms(100));
    let reasons: Vec<DropReason> = sim.trs[0].drops[drops..].iter().map(|d| d.2).collect();
    assert_eq!(
        reasons,
        vec![DropReason::StaleCounter, DropReason::UnboundSource]
    );
    // n2's data still reaches n1 at n1's own mapping, not the attacker.
    exchange(&mut sim, 1, 2, "after the replay").unwrap();
    assert_eq!((tunnel_path(&sim, 1, 2), tunnel_path(&sim, 2, 1)), paths);
    assert!(!sim.wire.iter().any(|w| w.dst == ATTACKER));
    for me in [1, 2] {
        assert_eq!(sim.node(me).node.counters().path_changes, 0);
    }
}

// ---- 7. Determinism ------------------------------------------------------

/// NATs (and their random ports), two TRS, punching, relaying and path
/// probes at 10 % loss: a fingerprint of every packet sent.
fn busy_nat_run(seed: u64) -> (u64, usize, usize) {
    use Placement::*;
    let mut config = nat_config(seed, &[Eim, Sym, Eim, V6]);
    config.link.loss = 0.1;
    let mut sim = Sim::new(config);
    sim.start();
    sim.run_for(secs(5));
    for (from, to) in [(1, 2), (3, 1), (4, 3)] {
        sim.dns_query(from, &format!("n{to}.cyphonic.internal."), RecordType::A);
        sim.run_for(ms(7));
    }
    sim.run_for(secs(5));
    for i in 0..20u8 {
        for (from, to) in [(1, 2), (2, 1), (3, 1), (4, 3)] {
            sim.send_app(from, &ipv4_packet(vip4(from), vip4(to), &[i; 40]));
        }
        sim.run_for(ms(50));
    }
    sim.run_for(secs(20));
    let received = sim.nodes.iter().map(|n| n.received.len()).sum();
    (sim.transmit_hash(), sim.wire.len(), received)
}

#[test]
fn the_same_seed_gives_the_same_packets_through_nats_and_relays() {
    assert_deterministic(one_seed(13), busy_nat_run, 200, 40);
}
