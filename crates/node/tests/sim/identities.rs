//! Many identities in one process (`docs/architecture.md`): a process at
//! 192.0.2.11:4501 hosts n1 and n2 in one [`Host`] behind one tunnel port;
//! another process at 192.0.2.13 hosts n3. The real NMS core directs the
//! routes; every packet goes through the datapath as the data plane's
//! would, with one receive table for all identities of a process (keyed by
//! the tagged local index) and a transmit table keyed by (identity,
//! destination VIP).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cyphonic_cloud_core::nms::{Nms, NmsConfig, NmsEvent, SessionInfo};
use cyphonic_node::core::{Leg, Login, Node, NodeConfig, NodeEvent};
use cyphonic_node::datapath::{self, Decapsulated, PathReports, Payload, TunnelTable};
use cyphonic_node::host::{identity_of_index, Host, IdentityId};
use cyphonic_node::resolver::{self, Classified};
use cyphonic_proto::handshake::{binding_message, LocalIdentity, StaticKeypair};
use hickory_proto::op::{Message as DnsMessage, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{ipv4_packet, vip4, vip6, NMS_V4};
use crate::pki::{fqdn, pki, serial};

const LATENCY: Duration = Duration::from_millis(1);

/// One process: a host of identities, its data plane's tables, and what
/// its applications received.
struct Process {
    addr: SocketAddr,
    host: Host,
    table: TunnelTable,
    reports: PathReports,
    /// (identity, peer FQDN, packet) delivered to the TUN device.
    received: Vec<(IdentityId, String, Vec<u8>)>,
    /// (identity, client) -> DNS answer.
    dns: BTreeMap<(IdentityId, u64), DnsMessage>,
}

struct World {
    now: Instant,
    nms: Nms,
    sessions: HashMap<cyphonic_proto::SessionId, SessionInfo>,
    procs: Vec<Process>,
    wire: VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    rng: StdRng,
}

impl World {
    /// Node `n<index>`, as identity `index` of its process.
    fn node(&mut self, index: usize) -> Node {
        let pki = pki();
        let name = format!("n{index}");
        let cert = &pki.certs[&name];
        let static_keys = StaticKeypair::generate(&mut self.rng);
        let binding_sig = cert.key.sign(&binding_message(&static_keys.public));
        let identity = LocalIdentity {
            static_keys,
            cert_chain_der: cert.chain.clone(),
            binding_sig,
        };
        let config = NodeConfig {
            index_tag: Some(index as u8),
            ..NodeConfig::default()
        };
        let wall = pki.wall;
        let mut node = Node::new(
            config,
            identity,
            pki.verifier.clone(),
            self.rng.gen(),
            1,
            self.now,
            wall,
        );
        node.start();
        node
    }

    fn new(layout: &[(SocketAddr, &[usize])]) -> World {
        let now = Instant::now();
        let mut w = World {
            now,
            nms: Nms::new(NmsConfig::default(), [7; 32], 1),
            sessions: HashMap::new(),
            procs: Vec::new(),
            wire: VecDeque::new(),
            rng: StdRng::seed_from_u64(21),
        };
        for (addr, indexes) in layout {
            let mut host = Host::default();
            for &i in *indexes {
                let mut node = w.node(i);
                node.handle_local_addrs(now, vec![*addr]);
                host.add(node).expect("a fresh identity");
            }
            w.procs.push(Process {
                addr: *addr,
                host,
                table: TunnelTable::default(),
                reports: PathReports::default(),
                received: Vec::new(),
                dns: BTreeMap::new(),
            });
        }
        for p in 0..w.procs.len() {
            w.drain(p);
        }
        w
    }

    /// What identity `id` of process `p` needs from the shell: a Login.
    fn login(&mut self, p: usize, id: IdentityId) {
        let name = format!("n{id}");
        let info = SessionInfo {
            session_id: cyphonic_proto::SessionId(self.rng.gen_range(1..u64::MAX)),
            common_key: self.rng.gen(),
            device_id: format!("device-{name}"),
            fqdn: fqdn(&name),
            vip4: vip4(id as usize),
            vip6: vip6(id as usize),
            cert_serial: serial(&name),
        };
        self.sessions.insert(info.session_id, info.clone());
        let login = Login {
            session_id: info.session_id,
            common_key: info.common_key,
            fqdn: info.fqdn.clone(),
            vip4: info.vip4,
            vip6: info.vip6,
            nms: NMS_V4,
            nms_alternatives: vec![NMS_V4],
            instances: Vec::new(),
            keepalive: Duration::from_secs(15),
            quic_port: 0,
            tcp_port: 0,
        };
        let now = self.now;
        if let Some(n) = self.procs[p].host.node_mut(id) {
            n.handle_login(now, login);
        }
    }

    /// Everything process `p` has to send or tell its shell.
    fn drain(&mut self, p: usize) {
        loop {
            let mut more = false;
            while let Some((_, t)) = self.procs[p].host.poll_transmit() {
                more = true;
                let src = self.procs[p].addr;
                self.wire
                    .push_back((self.now + LATENCY, src, t.destination, t.payload));
            }
            while let Some((id, e)) = self.procs[p].host.poll_event() {
                more = true;
                match e {
                    NodeEvent::NeedLogin { .. } => self.login(p, id),
                    NodeEvent::TunnelUp(h) => self.procs[p].table.install(id, h),
                    NodeEvent::DnsResponse { client, response } => {
                        let m = DnsMessage::from_vec(&response).expect("the answer parses");
                        self.procs[p].dns.insert((id, client), m);
                    }
                    _ => {}
                }
            }
            if !more {
                return;
            }
        }
    }

    fn drain_nms(&mut self) {
        loop {
            let mut more = false;
            while let Some(t) = self.nms.poll_transmit() {
                more = true;
                self.wire
                    .push_back((self.now + LATENCY, t.local, t.destination, t.payload));
            }
            while let Some(ev) = self.nms.poll_event() {
                more = true;
                if let NmsEvent::NeedSession { session_id } = ev {
                    match self.sessions.get(&session_id).cloned() {
                        Some(info) => self.nms.handle_session(self.now, info),
                        None => self.nms.handle_session_missing(session_id),
                    }
                }
            }
            if !more {
                return;
            }
        }
    }

    /// A datagram for process `p`: data to its data plane, the rest to
    /// the identity the host finds for it.
    fn deliver(&mut self, p: usize, from: SocketAddr, mut payload: Vec<u8>) {
        let now = self.now;
        let proc = &mut self.procs[p];
        let from = Leg::udp(from);
        let table = &proc.table;
        match datapath::decapsulate(&mut payload, from, || now, |i| table.by_index(i)) {
            Decapsulated::Control => proc.host.handle_datagram(now, from, &payload),
            Decapsulated::Dropped(reason) => panic!("process {p} dropped a packet: {reason:?}"),
            Decapsulated::Opened(o) => {
                let id = identity_of_index(o.local_index());
                let node = proc.host.node_mut(id).expect("the index names an identity");
                if o.path_changed() && proc.reports.allow(o.local_index(), o.path, now) {
                    node.handle_path_seen(now, o.local_index(), o.path);
                }
                match o.payload {
                    Payload::Keepalive => {}
                    Payload::Message => {
                        node.handle_tunnel_message(now, o.local_index(), o.path, &payload[o.plain])
                    }
                    Payload::Packet => proc.received.push((
                        id,
                        o.tunnel.fqdn.clone(),
                        payload[o.plain.clone()].to_vec(),
                    )),
                }
            }
        }
        self.drain(p);
    }

    fn step(&mut self) -> bool {
        let wire = self.wire.front().map(|w| w.0);
        let timers = self
            .procs
            .iter()
            .filter_map(|p| p.host.poll_timeout().map(|(t, _)| t))
            .chain(self.nms.poll_timeout().map(|(t, _)| t))
            .min();
        let Some(next) = [wire, timers].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        if wire == Some(next) {
            let (_, src, dst, payload) = self.wire.pop_front().expect("a packet");
            if dst == NMS_V4 {
                self.nms.handle_datagram(self.now, dst, src, &payload);
                self.drain_nms();
            } else if let Some(p) = self.procs.iter().position(|p| p.addr == dst) {
                self.deliver(p, src, payload);
            }
            return true;
        }
        self.nms.handle_timeout(self.now);
        self.drain_nms();
        for p in 0..self.procs.len() {
            let now = self.now;
            self.procs[p].host.handle_timeout(now);
            self.drain(p);
        }
        true
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step() && self.now < until {}
    }

    fn dns_query(&mut self, p: usize, id: IdentityId, client: u64, name: &str) {
        let mut m = DnsMessage::new(client as u16, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        let bytes = m.to_vec().expect("encode");
        let Classified::Overlay { query, name, .. } =
            resolver::classify(&bytes, "cyphonic.internal")
        else {
            panic!("an overlay name");
        };
        let now = self.now;
        self.procs[p]
            .host
            .node_mut(id)
            .expect("identity")
            .handle_dns_query(now, client, query, name);
        self.drain(p);
    }

    /// Identity `id` of process `p` sends an application packet, through
    /// its own transmit table (or its core, with no tunnel yet).
    fn send_app(&mut self, p: usize, id: IdentityId, packet: &[u8]) {
        let dst = cyphonic_proto::ip::inner_destination(packet).expect("an IP packet");
        let now = self.now;
        let proc = &mut self.procs[p];
        match proc.table.by_destination(id, dst) {
            Some(t) => {
                let framed = datapath::encapsulate_vec(&t, t.path, packet).expect("seal");
                self.wire
                    .push_back((now + LATENCY, proc.addr, t.path.address(), framed));
            }
            None => {
                proc.host
                    .node_mut(id)
                    .expect("identity")
                    .handle_outbound(now, packet);
                self.drain(p);
            }
        }
    }
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(192, 0, 2, last).into(), 4501)
}

#[test]
fn two_identities_in_one_process() {
    // Process 0 hosts n1 and n2; process 1 hosts n3.
    let mut w = World::new(&[(addr(11), &[1, 2]), (addr(13), &[3])]);
    w.run_for(Duration::from_secs(1));
    for (p, id) in [(0, 1), (0, 2), (1, 3)] {
        let status = w.procs[p].host.node(id).expect("identity").status(w.now);
        assert!(status.cloud.registered, "n{id} registered");
        assert_eq!(status.vip4, Some(vip4(id as usize)));
    }
    // Each identity of the shared process resolves n3, and n1 resolves n2
    // (its neighbour in the same process).
    w.dns_query(0, 1, 1, "n3.cyphonic.internal.");
    w.dns_query(0, 2, 2, "n3.cyphonic.internal.");
    w.dns_query(0, 1, 3, "n2.cyphonic.internal.");
    w.run_for(Duration::from_secs(2));
    let answer = |w: &World, id: IdentityId, client: u64| {
        w.procs[0].dns[&(id, client)]
            .answers
            .first()
            .map(|r| r.data.to_string())
    };
    assert_eq!(answer(&w, 1, 1), Some(vip4(3).to_string()));
    assert_eq!(answer(&w, 2, 2), Some(vip4(3).to_string()));
    assert_eq!(answer(&w, 1, 3), Some(vip4(2).to_string()));
    // Data both ways on every pair, each identity speaking for itself.
    for round in 0..3u8 {
        for (p, from, to) in [(0, 1, 3), (0, 2, 3), (0, 1, 2), (0, 2, 1)] {
            let packet = ipv4_packet(vip4(from), vip4(to), &[round; 40]);
            w.send_app(p, from as u8, &packet);
        }
        for to in [1usize, 2] {
            let packet = ipv4_packet(vip4(3), vip4(to), &[round; 40]);
            w.send_app(1, 3, &packet);
        }
        w.run_for(Duration::from_millis(50));
    }
    let got = |p: usize, id: IdentityId, from: usize| {
        w.procs[p]
            .received
            .iter()
            .filter(|(i, peer, _)| *i == id && *peer == fqdn(&format!("n{from}")))
            .count()
    };
    // n3 gets three from each of n1 and n2; n1 and n2 three from n3 and
    // three from each other. The first packet of a pair may wait in the
    // core while its tunnel comes up, but none is lost.
    assert_eq!(got(1, 3, 1), 3);
    assert_eq!(got(1, 3, 2), 3);
    assert_eq!(got(0, 1, 3), 3);
    assert_eq!(got(0, 2, 3), 3);
    assert_eq!(got(0, 2, 1), 3);
    assert_eq!(got(0, 1, 2), 3);
    // The identities never share an index, and nothing was left unclaimed.
    let (a, b) = (w.procs[0].table.receiving(1), w.procs[0].table.receiving(2));
    assert!(!a.is_empty() && !b.is_empty());
    assert!(a.iter().chain(&b).all(|i| matches!(i.0 >> 24, 1 | 2)));
    assert_eq!(w.procs[0].host.counters(), Default::default());
}
