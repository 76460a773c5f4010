//! One end of a relay session: which TRS of the offer this node uses,
//! over which transport, its Binds (refreshing the TRS's binding and
//! proving it alive) and the failover to the next TRS when Binds go
//! unanswered. Both ends walk the offer's list in the same order, so they
//! meet at the next TRS without talking.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cyphonic_proto::relay::{Bind, Challenge, COOKIE_TAIL_LEN};
use cyphonic_proto::signal::RelayOffer;

use super::types::{Leg, Path, Transmit, Transport};

/// Relay Binds unanswered before moving to the next TRS.
pub const MAX_UNACKED_BINDS: u32 = 3;

pub(crate) struct RelayState {
    pub offer: RelayOffer,
    /// The offer's servers this node can reach (its address families).
    pub servers: Vec<SocketAddr>,
    /// How this side reaches the TRS: the transport signaling found.
    pub transport: Transport,
    pub index: usize,
    pub counter: u64,
    pub bound: bool,
    pub unacked: u32,
    pub next_bind: Instant,
    /// The cookie of the current TRS's last Challenge: our Binds carry it
    /// until one is acknowledged (§6.8).
    pub cookie: Option<(Leg, [u8; COOKIE_TAIL_LEN])>,
}

/// A Bind Ack that does not belong to this session's current TRS or key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadAck;

impl RelayState {
    /// This end of `offer`, or `None` when no TRS in it is reachable from
    /// `local_addrs`. `observed_v6`: the family we reach the cloud by, if
    /// known: the list holds each TRS once per family, and failing over to
    /// the same dead TRS's other address would only cost time.
    pub fn new(
        offer: RelayOffer,
        local_addrs: &[SocketAddr],
        observed_v6: Option<bool>,
        transport: Transport,
        now: Instant,
    ) -> Option<Self> {
        let has_v4 = local_addrs.iter().any(|a| a.is_ipv4());
        let has_v6 = local_addrs.iter().any(|a| a.is_ipv6());
        let reachable = |s: &SocketAddr| (s.is_ipv4() && has_v4) || (s.is_ipv6() && has_v6);
        let mut servers: Vec<SocketAddr> = offer
            .servers
            .iter()
            .copied()
            .filter(|s| reachable(s) && observed_v6.is_none_or(|v6| s.is_ipv6() == v6))
            .collect();
        if servers.is_empty() {
            servers = offer.servers.iter().copied().filter(reachable).collect();
        }
        (!servers.is_empty()).then_some(RelayState {
            offer,
            servers,
            transport,
            index: 0,
            counter: 0,
            bound: false,
            unacked: 0,
            next_bind: now,
            cookie: None,
        })
    }

    /// The current TRS's leg on this end's transport.
    pub fn server(&self) -> Option<Leg> {
        let addr = self.servers.get(self.index).copied()?;
        let port = match self.transport {
            Transport::Udp => addr.port(),
            Transport::Quic => self.offer.quic_port,
            Transport::Tcp => self.offer.tcp_port,
        };
        (port != 0).then(|| Leg::new(self.transport, SocketAddr::new(addr.ip(), port)))
    }

    pub fn path(&self) -> Option<Path> {
        Some(Path::Relay {
            server: self.server()?,
            relay_id: self.offer.relay_id,
        })
    }

    /// When the grant ends (Unix seconds).
    pub fn expires(&self) -> u64 {
        self.offer.expires
    }

    pub fn bind_due(&self, now: Instant) -> bool {
        now >= self.next_bind
    }

    /// The current TRS stopped answering and there is another.
    /// No Bind until `until` (the grant ran out; a new route is coming).
    pub fn hold_binds(&mut self, until: Instant) {
        self.next_bind = until;
    }

    /// There is another TRS to fail over to.
    pub fn can_fail_over(&self) -> bool {
        self.servers.len() > 1
    }

    pub fn should_fail_over(&self) -> bool {
        self.unacked >= MAX_UNACKED_BINDS && self.servers.len() > 1
    }

    /// Moves to the next TRS of the list and binds there at once.
    pub fn fail_over(&mut self, now: Instant) {
        self.index = (self.index + 1) % self.servers.len();
        self.unacked = 0;
        self.bound = false;
        self.next_bind = now;
    }

    /// Makes the next Bind fail over (the path through this TRS is dead).
    pub fn force_fail_over(&mut self, now: Instant) {
        self.unacked = self.unacked.max(MAX_UNACKED_BINDS);
        self.next_bind = now;
    }

    /// Signaling moved to `transport`: bind anew over it at once.
    pub fn set_transport(&mut self, transport: Transport, now: Instant) {
        self.transport = transport;
        self.bound = false;
        self.unacked = 0;
        self.next_bind = now;
    }

    /// The next Bind to the current TRS; the one after it is due a
    /// keepalive later when bound, a retransmission later when not.
    pub fn bind(
        &mut self,
        now: Instant,
        keepalive: Duration,
        retransmit: Duration,
    ) -> Option<Transmit> {
        let server = self.server()?;
        self.counter += 1;
        self.unacked += 1;
        self.next_bind = now + if self.bound { keepalive } else { retransmit };
        let mut bind = Bind {
            ack: false,
            relay_id: self.offer.relay_id,
            side: self.offer.side,
            expires: self.offer.expires,
            counter: self.counter,
        }
        .encode(&self.offer.key)
        .to_vec();
        if let Some((_, tail)) = self.cookie.filter(|(leg, _)| *leg == server) {
            bind.extend_from_slice(&tail);
        }
        Some(server.transmit(bind))
    }

    /// A Relay Challenge from `from`: when it is the current TRS's answer
    /// to our latest Bind, keep its cookie and return true (bind again at
    /// once). Anything else changes nothing: one answer per Bind, so a
    /// forged Challenge costs at most one Bind.
    pub fn on_challenge(&mut self, from: Leg, challenge: &Challenge) -> bool {
        if self.server() != Some(from)
            || challenge.relay_id != self.offer.relay_id
            || challenge.side != self.offer.side
            || challenge.counter != self.counter
        {
            return false;
        }
        self.cookie = Some((from, challenge.tail()));
        // The TRS answered: it is alive.
        self.unacked = 0;
        true
    }

    /// A Bind Ack from `from`: `Ok(true)` when it bound us now.
    pub fn on_ack(&mut self, from: Leg, ack: &Bind, packet: &[u8]) -> Result<bool, BadAck> {
        if !ack.ack || self.server() != Some(from) || Bind::verify(packet, &self.offer.key).is_err()
        {
            return Err(BadAck);
        }
        let newly = !self.bound;
        self.bound = true;
        self.unacked = 0;
        self.cookie = None;
        Ok(newly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn v4(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), port)
    }

    fn v6(last: u16, port: u16) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)),
            port,
        )
    }

    fn offer() -> RelayOffer {
        RelayOffer {
            relay_id: cyphonic_proto::RelayId(0x42),
            side: 1,
            expires: u64::MAX,
            key: [7; 32],
            servers: vec![v4(1, 4503), v6(1, 4503), v4(2, 4503), v6(2, 4503)],
            quic_port: 443,
            tcp_port: 0,
        }
    }

    #[test]
    fn only_reachable_servers_of_the_cloud_family_are_used() {
        let now = Instant::now();
        let local = [v4(50, 4501), v6(50, 4501)];
        let r = RelayState::new(offer(), &local, Some(false), Transport::Udp, now).expect("relay");
        assert_eq!(r.servers, vec![v4(1, 4503), v4(2, 4503)]);
        let r = RelayState::new(offer(), &local[1..], None, Transport::Udp, now).expect("relay");
        assert_eq!(r.servers, vec![v6(1, 4503), v6(2, 4503)]);
        // The cloud's family has no TRS we reach: any reachable one.
        let r =
            RelayState::new(offer(), &local[..1], Some(true), Transport::Udp, now).expect("relay");
        assert_eq!(r.servers, vec![v4(1, 4503), v4(2, 4503)]);
        assert!(RelayState::new(offer(), &[], None, Transport::Udp, now).is_none());
    }

    #[test]
    fn the_leg_follows_the_transport() {
        let now = Instant::now();
        let mut r =
            RelayState::new(offer(), &[v4(50, 4501)], None, Transport::Quic, now).expect("relay");
        assert_eq!(r.server(), Some(Leg::new(Transport::Quic, v4(1, 443))));
        r.set_transport(Transport::Tcp, now);
        assert_eq!(r.server(), None, "no TCP port offered");
        assert!(r
            .bind(now, Duration::from_secs(5), Duration::from_millis(300))
            .is_none());
        r.set_transport(Transport::Udp, now);
        assert_eq!(r.path().map(|p| p.address()), Some(v4(1, 4503)));
    }

    /// A Challenge for our latest Bind from our TRS: the next Bind carries
    /// its cookie, until an Ack. Any other Challenge changes nothing.
    #[test]
    fn a_challenge_puts_its_cookie_on_the_next_bind_only() {
        let now = Instant::now();
        let (keepalive, retransmit) = (Duration::from_secs(5), Duration::from_millis(300));
        let mut r =
            RelayState::new(offer(), &[v4(50, 4501)], None, Transport::Udp, now).expect("relay");
        let first = r.bind(now, keepalive, retransmit).expect("bind");
        assert_eq!(first.payload.len(), cyphonic_proto::relay::BIND_LEN);
        let challenge = Challenge {
            relay_id: r.offer.relay_id,
            side: 1,
            counter: 1,
            issued: 1_900_000_000,
            cookie: [9; 16],
        };
        let trs = Leg::udp(v4(1, 4503));
        assert!(
            !r.on_challenge(Leg::udp(v4(2, 4503)), &challenge),
            "another TRS"
        );
        assert!(
            !r.on_challenge(
                trs,
                &Challenge {
                    counter: 7,
                    ..challenge
                }
            ),
            "not our Bind"
        );
        assert!(
            !r.on_challenge(
                trs,
                &Challenge {
                    side: 0,
                    ..challenge
                }
            ),
            "the other side"
        );
        assert!(r.on_challenge(trs, &challenge));
        let again = r.bind(now, keepalive, retransmit).expect("bind");
        assert_eq!(
            again.payload.len(),
            cyphonic_proto::relay::BIND_WITH_COOKIE_LEN
        );
        assert_eq!(
            &again.payload[cyphonic_proto::relay::BIND_LEN..],
            &challenge.tail()
        );
        assert!(!r.on_challenge(trs, &challenge), "one answer per Bind");
        let bind = Bind::parse(&again.payload[..cyphonic_proto::relay::BIND_LEN]).unwrap();
        let ack_bytes = Bind { ack: true, ..bind }.encode(&[7; 32]);
        let ack = Bind::parse(&ack_bytes).unwrap();
        assert_eq!(r.on_ack(trs, &ack, &ack_bytes), Ok(true));
        let later = r.bind(now, keepalive, retransmit).expect("bind");
        assert_eq!(later.payload.len(), cyphonic_proto::relay::BIND_LEN);
    }

    #[test]
    fn unanswered_binds_fail_over_and_an_ack_binds() {
        let t0 = Instant::now();
        let (keepalive, retransmit) = (Duration::from_secs(5), Duration::from_millis(300));
        let mut r =
            RelayState::new(offer(), &[v4(50, 4501)], None, Transport::Udp, t0).expect("relay");
        let mut now = t0;
        for _ in 0..MAX_UNACKED_BINDS {
            assert!(r.bind_due(now));
            let t = r.bind(now, keepalive, retransmit).expect("bind");
            assert_eq!(t.destination, v4(1, 4503));
            assert!(!r.bind_due(now));
            now += retransmit;
        }
        assert!(r.should_fail_over());
        r.fail_over(now);
        assert_eq!(r.server(), Some(Leg::udp(v4(2, 4503))));
        let t = r.bind(now, keepalive, retransmit).expect("bind");
        // The TRS's answer, as the TRS makes it.
        let bind = Bind::parse(&t.payload).expect("our bind parses");
        let ack_bytes = Bind { ack: true, ..bind }.encode(&[7; 32]);
        let ack = Bind::parse(&ack_bytes).expect("ack parses");
        assert_eq!(
            r.on_ack(Leg::udp(v4(1, 4503)), &ack, &ack_bytes),
            Err(BadAck),
            "the old TRS"
        );
        let forged = Bind { ack: true, ..bind }.encode(&[8; 32]);
        assert_eq!(
            r.on_ack(Leg::udp(v4(2, 4503)), &ack, &forged),
            Err(BadAck),
            "another key"
        );
        assert_eq!(r.on_ack(Leg::udp(v4(2, 4503)), &ack, &ack_bytes), Ok(true));
        assert_eq!(r.on_ack(Leg::udp(v4(2, 4503)), &ack, &ack_bytes), Ok(false));
        // Bound: the next Bind is a keepalive away.
        r.bind(now, keepalive, retransmit).expect("bind");
        assert!(!r.bind_due(now + retransmit));
        assert!(r.bind_due(now + keepalive));
        r.force_fail_over(now);
        assert!(r.should_fail_over());
    }
}
