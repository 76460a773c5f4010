//! The NMS client alone, time stepped by hand: a test NMS holds the other
//! end of the signaling cipher and answers what the part sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use cyphonic_proto::signal::{Envelope, Message, RegistrationResponse, Role, SignalCipher};
use hickory_proto::op::ResponseCode;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{Signaling, SignalingEvent};
use crate::core::types::{Leg, Login, NodeConfig, NodeCounters, NodeEvent, Transport};
use crate::core::Outbox;

const NMS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4502);
const KEY: [u8; 32] = [5; 32];

fn login(keepalive: Duration) -> Login {
    Login {
        session_id: cyphonic_proto::SessionId(9),
        common_key: KEY,
        fqdn: "n1.cyphonic.internal".into(),
        vip4: Ipv4Addr::new(100, 64, 0, 1),
        vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        nms: NMS,
        nms_alternatives: vec![NMS],
        instances: Vec::new(),
        keepalive,
        quic_port: 443,
        tcp_port: 443,
    }
}

#[test]
fn the_common_key_of_a_login_is_wiped_when_it_goes() {
    let login = login(Duration::from_secs(15));
    assert_eq!(login.common_key, KEY);
    assert_eq!(
        cyphonic_proto::key_bytes_after_drop!(login, common_key),
        [0; 32]
    );
}

/// The part, its outbox and randomness, a test NMS, and a hand clock.
struct Bench {
    sig: Signaling,
    out: Outbox,
    rng: StdRng,
    nms: SignalCipher,
    counters: NodeCounters,
    t0: Instant,
}

impl Bench {
    fn new(config: NodeConfig) -> Self {
        Bench::with_login(config, login(Duration::from_secs(10)))
    }

    fn with_login(config: NodeConfig, login: Login) -> Self {
        let mut b = Bench {
            sig: Signaling::new(config, [1; 32]),
            out: Outbox::default(),
            rng: StdRng::seed_from_u64(3),
            nms: SignalCipher::new(cyphonic_proto::SessionId(9), &KEY, Role::Nms, 1),
            counters: NodeCounters::default(),
            t0: Instant::now(),
        };
        b.sig
            .set_local_addrs(vec!["192.0.2.50:4501".parse().expect("addr")]);
        let t0 = b.t0;
        b.sig.handle_login(t0, login, 1, &mut b.rng, &mut b.out);
        b
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// What the part sent since the last call: (transport, message) as the
    /// NMS opens it.
    fn sent(&mut self) -> Vec<(Transport, Envelope)> {
        let mut got = Vec::new();
        while let Some(t) = self.out.transmits.pop_front() {
            let env = self.nms.open(&t.payload).expect("the NMS opens it");
            got.push((t.transport, env));
        }
        got
    }

    fn timeout(&mut self, ms: u64) -> Vec<u64> {
        let now = self.at(ms);
        self.sig.handle_timeout(now, &mut self.out)
    }

    fn answer(
        &mut self,
        ms: u64,
        over: Transport,
        txid: u64,
        message: Message,
    ) -> Option<SignalingEvent> {
        let port = match over {
            Transport::Udp => 4502,
            _ => 443,
        };
        let from = Leg::new(over, SocketAddr::new(NMS.ip(), port));
        let packet = self.nms.seal(&Envelope { txid, message });
        let now = self.at(ms);
        self.sig.handle_packet(
            now,
            from,
            &packet,
            &mut self.rng,
            &mut self.out,
            &mut self.counters,
        )
    }
}

/// The NMS's answer to n1's Registration (192.0.2.50, no NAT, no probe).
pub(crate) fn registered() -> Message {
    Message::RegistrationResponse(RegistrationResponse {
        fqdn: "n1.cyphonic.internal".into(),
        vip4: Ipv4Addr::new(100, 64, 0, 1),
        vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        observed: "192.0.2.50:4501".parse().expect("addr"),
        keepalive_secs: 10,
        probe_port: 0,
    })
}

fn is_registration(m: &Message, over: Transport) -> bool {
    matches!(m, Message::RegistrationRequest(r) if r.transport == over)
}

#[test]
fn an_unanswered_registration_backs_off_then_races_quic_and_tcp() {
    let mut b = Bench::new(NodeConfig::default());
    let first = b.sent();
    assert_eq!(first.len(), 1);
    assert!(is_registration(&first[0].1.message, Transport::Udp));
    let txid = first[0].1.txid;
    assert_eq!(b.sig.poll_timeout().map(|(t, _)| t), Some(b.at(250)));
    // Retransmissions double: 250 ms, then 500 ms later.
    assert!(b.timeout(250).is_empty());
    assert_eq!(b.sent().len(), 1);
    assert!(b.timeout(500).is_empty());
    assert!(b.sent().is_empty(), "not due before 750 ms");
    b.timeout(750);
    assert_eq!(b.sent().len(), 1);
    // At the fallback (1 s), QUIC joins the race with the same txid; TCP
    // follows a stagger later.
    b.timeout(1000);
    let raced = b.sent();
    assert_eq!(raced.len(), 1);
    assert_eq!(raced[0].0, Transport::Quic);
    assert_eq!(raced[0].1.txid, txid);
    assert!(is_registration(&raced[0].1.message, Transport::Quic));
    b.timeout(1300);
    let raced = b.sent();
    assert_eq!(raced[0].0, Transport::Tcp);
    // QUIC answers first: signaling moves there and registers once more
    // over it alone.
    assert!(b
        .answer(1350, Transport::Quic, txid, registered())
        .is_none());
    assert_eq!(b.sig.transport(), Transport::Quic);
    let again = b.sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, Transport::Quic);
    let event = b.answer(1400, Transport::Quic, again[0].1.txid, registered());
    assert!(matches!(
        event,
        Some(SignalingEvent::Registered {
            transport_change: None,
            probing: false,
            ..
        })
    ));
    assert!(b.sig.registered());
    assert_eq!(b.sig.signaling_transport(), Transport::Quic);
}

#[test]
fn a_registration_unanswered_until_its_deadline_asks_for_a_new_login() {
    let config = NodeConfig {
        transport: Some(Transport::Udp),
        ..NodeConfig::default()
    };
    let mut b = Bench::new(config);
    let txid = b.sent()[0].1.txid;
    let mut ms = 0;
    let mut expired = Vec::new();
    while expired.is_empty() {
        let (t, _) = b.sig.poll_timeout().expect("a timer");
        ms = (t - b.t0).as_millis() as u64;
        expired = b.timeout(ms);
        assert!(
            b.sent().iter().all(|(t, _)| *t == Transport::Udp),
            "a forced transport is never raced"
        );
    }
    assert_eq!(ms, 5000, "registration_timeout");
    assert_eq!(expired, vec![txid]);
    assert!(matches!(b.sig.expire(txid, &mut b.out), Ok(None)));
    assert!(!b.sig.logged_in());
    assert!(matches!(
        b.out.events.pop_front(),
        Some(NodeEvent::NeedLogin { .. })
    ));
}

#[test]
fn three_missed_keepalives_end_the_session() {
    let mut b = Bench::new(NodeConfig::default());
    let txid = b.sent()[0].1.txid;
    b.answer(10, Transport::Udp, txid, registered());
    let mut ms = 10;
    let mut keepalives = 0;
    let mut gone = false;
    while !gone {
        let (t, _) = b.sig.poll_timeout().expect("a timer");
        ms = (t - b.t0).as_millis() as u64;
        for txid in b.timeout(ms) {
            gone |= b.sig.expire(txid, &mut b.out).is_err();
        }
        b.sig.keepalive_timer(b.at(ms), &mut b.rng, &mut b.out);
        keepalives += b
            .sent()
            .iter()
            .filter(|(_, e)| e.message == Message::KeepAlive && e.txid != 0)
            .count();
        assert!(ms < 60_000, "the session ends in time");
    }
    assert!(!b.sig.logged_in());
    assert!(keepalives >= 3);
    // Each keepalive waits 5 s at most (min of keepalive and 5 s). The
    // first goes a keepalive interval (10 s) after the Registration; once
    // it went unanswered, the next go as each answer wait ends: the
    // third expires at 10 + 10 + 3 x 5 s, not a full interval apart
    // (10 + 30 + 5 s).
    assert_eq!(ms, 25_010);
}

#[test]
fn a_direction_request_that_times_out_fails_as_servfail() {
    let mut b = Bench::new(NodeConfig::default());
    let txid = b.sent()[0].1.txid;
    b.answer(10, Transport::Udp, txid, registered());
    b.sig.send_direction(
        b.at(20),
        "n2.cyphonic.internal".into(),
        &mut b.rng,
        &mut b.out,
    );
    assert!(b.sig.direction_pending("n2.cyphonic.internal"));
    let dir = b.sent();
    assert!(
        matches!(&dir[0].1.message, Message::DirectionRequest { target } if target == "n2.cyphonic.internal")
    );
    let expired = b.timeout(5020);
    assert_eq!(expired, vec![dir[0].1.txid]);
    match b.sig.expire(dir[0].1.txid, &mut b.out) {
        Ok(Some(SignalingEvent::DirectionFailed { target, rcode })) => {
            assert_eq!(target, "n2.cyphonic.internal");
            assert_eq!(rcode, ResponseCode::ServFail);
        }
        _ => panic!("a failed direction"),
    }
    assert!(!b.sig.direction_pending("n2.cyphonic.internal"));
}

#[test]
fn packets_not_from_the_nms_or_not_sealed_by_it_are_counted_and_ignored() {
    let mut b = Bench::new(NodeConfig::default());
    let txid = b.sent()[0].1.txid;
    let packet = b.nms.seal(&Envelope {
        txid,
        message: registered(),
    });
    let now = b.at(5);
    let stranger = Leg::udp("198.51.100.7:4502".parse().expect("addr"));
    assert!(b
        .sig
        .handle_packet(
            now,
            stranger,
            &packet,
            &mut b.rng,
            &mut b.out,
            &mut b.counters
        )
        .is_none());
    let mut forged = packet.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(b
        .sig
        .handle_packet(
            now,
            Leg::udp(NMS),
            &forged,
            &mut b.rng,
            &mut b.out,
            &mut b.counters
        )
        .is_none());
    assert_eq!(b.counters.signal_rx_bad, 2);
    assert!(!b.sig.registered(), "nothing changed");
    assert!(b.answer(6, Transport::Udp, txid, registered()).is_some());
}

/// A second instance of the cloud (the Login's `cloud_addrs`).
const NMS2: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 4502);

/// Steps the clock through timers until an expired request ends the
/// session at its NMS; returns when (ms) and where the part sent since.
fn until_given_up(b: &mut Bench, mut ms: u64) -> (u64, Vec<(SocketAddr, Envelope)>) {
    let mut sent = Vec::new();
    loop {
        let (t, _) = b.sig.poll_timeout().expect("a timer");
        ms = ms.max((t - b.t0).as_millis() as u64);
        let mut gone = false;
        for txid in b.timeout(ms) {
            gone |= b.sig.expire(txid, &mut b.out).is_err();
        }
        b.sig.keepalive_timer(b.at(ms), &mut b.rng, &mut b.out);
        while let Some(t) = b.out.transmits.pop_front() {
            let env = b.nms.open(&t.payload).expect("the NMS opens it");
            sent.push((t.destination, env));
        }
        if gone {
            return (ms, sent);
        }
        assert!(ms < 120_000, "the session ends in time");
    }
}

#[test]
fn a_silent_instance_hands_the_session_to_another_before_a_new_login() {
    let mut two = login(Duration::from_secs(10));
    two.instances = vec![NMS2];
    let mut b = Bench::with_login(NodeConfig::default(), two);
    let txid = b.sent()[0].1.txid;
    b.answer(10, Transport::Udp, txid, registered());
    assert!(b.sig.registered());

    // The instance at NMS stops answering: after the missed keepalives
    // (and the other transports tried there) the same session registers
    // at NMS2, no Login asked.
    let (ms, sent) = until_given_up(&mut b, 10);
    let (last, before) = sent.split_last().expect("something sent");
    assert!(
        before.iter().all(|(to, _)| to.ip() == NMS.ip()),
        "{before:?}"
    );
    assert!(b.sig.logged_in(), "the session stays");
    assert!(b
        .out
        .events
        .iter()
        .all(|e| !matches!(e, NodeEvent::NeedLogin { .. })));
    let (to, reg) = last.clone();
    assert!(is_registration(&reg.message, Transport::Udp), "{reg:?}");
    assert_eq!(to, NMS2);

    // NMS2 answers under the same session: registered there.
    let from = Leg::new(Transport::Udp, NMS2);
    let packet = b.nms.seal(&Envelope {
        txid: reg.txid,
        message: registered(),
    });
    b.sig.handle_packet(
        b.at(ms + 5),
        from,
        &packet,
        &mut b.rng,
        &mut b.out,
        &mut b.counters,
    );
    assert!(b.sig.registered());

    // NMS2 falls silent too, and no other instance is left to try: a
    // new Login (which asks every address of the cloud).
    let (_, sent) = until_given_up(&mut b, ms + 5);
    assert!(sent.iter().all(|(to, _)| to.ip() == NMS2.ip()), "{sent:?}");
    assert!(!b.sig.logged_in());
    assert!(b
        .out
        .events
        .iter()
        .any(|e| matches!(e, NodeEvent::NeedLogin { .. })));
}
