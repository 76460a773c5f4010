//! The TRS (relay server) as a pure state machine.
//!
//! A relay session has two sides. Each side binds its current address with
//! a Relay Bind that carries a MAC by the side's key, which the TRS derives
//! from the relay secret it shares with the NMS (see
//! [`cyphonic_proto::relay`]): the TRS needs no message from the NMS and
//! keeps no key a node's traffic could be opened with. Relay Data from a
//! bound address is forwarded, unchanged, to the other side's bound address.
//!
//! # Use
//!
//! [`Trs::handle_datagram`] for each datagram, in the caller's buffer; it
//! answers with an [`Action`]: forward the buffer as it is, send the
//! `len` bytes it wrote back to the source (a Bind Ack, a Challenge, the
//! answer to a Reflect Request), or drop (counted). Call
//! [`Trs::handle_timeout`] now and then to expire idle sessions. No clock,
//! no sockets, no allocation per forwarded packet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cyphonic_proto::reflect::TYPE_REFLECT_REQUEST;
use cyphonic_proto::relay::{
    self, Bind, Challenge, BIND_LEN, BIND_WITH_COOKIE_LEN, CHALLENGE_LEN, TYPE_RELAY_BIND,
    TYPE_RELAY_DATA,
};
use cyphonic_proto::RelayId;
use serde::Serialize;

use crate::reflect::{ReflectConfig, ReflectDrop, Reflector};

/// The relay secret is wiped on drop.
impl Drop for TrsConfig {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl zeroize::ZeroizeOnDrop for TrsConfig {}

#[derive(Debug, Clone)]
pub struct TrsConfig {
    /// Shared with the NMS: grants are derived from it.
    pub secret: Vec<u8>,
    pub max_sessions: usize,
    /// A session neither side used for this long is forgotten.
    pub idle_timeout: Duration,
    /// Per session, both directions together, in bytes per second; a
    /// session may burst a tenth of a second's worth (at least 64 KiB).
    /// Work-conserving: a session over it is dropped only while the relay
    /// is shared, i.e. another session moved at least [`BUSY_BYTES`] in
    /// this second or the one before; alone, a session may use it all.
    /// 0: no limit.
    pub session_rate: u64,
    /// Relay Binds a single source (an IPv4 address, an IPv6 /64) may send
    /// per second (they cost an HMAC each).
    pub binds_per_source: u32,
    /// Sources with a bind budget at once; new sources beyond it share one
    /// budget of `binds_per_source` x 8 until the table is pruned.
    pub max_bind_sources: usize,
    /// Reflect Requests each source may have answered.
    pub reflect: ReflectConfig,
}

impl Default for TrsConfig {
    fn default() -> Self {
        Self {
            secret: Vec::new(),
            max_sessions: 65536,
            idle_timeout: Duration::from_secs(120),
            // 1 Gbit/s per session: one pair of nodes cannot take a relay.
            session_rate: 125_000_000,
            binds_per_source: 50,
            max_bind_sources: 16_384,
            reflect: ReflectConfig::default(),
        }
    }
}

/// A session that forwards at least this many bytes in a one-second epoch
/// shares the relay with the others, for this epoch and the next: while
/// one does, the others are held to `session_rate`. Keepalives and
/// interactive traffic stay below it.
pub const BUSY_BYTES: u64 = 64 * 1024;

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the datagram, unchanged, to this address.
    Forward(SocketAddr),
    /// Send the first `len` bytes of the buffer back to the source.
    Reply(usize),
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    BadMac,
    Expired,
    StaleCounter,
    UnknownSession,
    UnboundSource,
    PeerNotBound,
    RateLimited,
    TooManySessions,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TrsCounters {
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub binds: u64,
    /// Relay Challenges sent: Binds from an address their side is not
    /// bound to, without a valid cookie for it.
    pub challenges: u64,
    pub sessions: u64,
    pub dropped_malformed: u64,
    pub dropped_auth: u64,
    pub dropped_unbound: u64,
    pub dropped_rate: u64,
    /// Reflect Requests answered, dropped as malformed (too short among
    /// them), dropped for their source's rate (`docs/protocol.md` §4.8).
    pub reflects: u64,
    pub reflects_bad: u64,
    pub reflects_limited: u64,
}

struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            last: now,
        }
    }

    fn take(&mut self, now: Instant, n: f64) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

struct Session {
    sides: [Option<SocketAddr>; 2],
    counters: [u64; 2],
    expires: u64,
    last_used: Instant,
    bucket: TokenBucket,
    /// Bytes forwarded in epoch `epoch` (see [`Busy`]).
    epoch: u64,
    epoch_bytes: u64,
}

/// Which sessions were busy (moved [`BUSY_BYTES`] in one epoch) in this
/// epoch and the one before: two of each are enough to tell whether any
/// session other than a given one is busy.
#[derive(Default)]
struct Busy {
    epoch: u64,
    now: [Option<RelayId>; 2],
    before: [Option<RelayId>; 2],
}

impl Busy {
    fn roll(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.before = if epoch == self.epoch + 1 {
                self.now
            } else {
                [None, None]
            };
            self.now = [None, None];
            self.epoch = epoch;
        }
    }

    fn mark(&mut self, id: RelayId) {
        match self.now {
            [None, _] => self.now[0] = Some(id),
            [Some(a), None] if a != id => self.now[1] = Some(id),
            _ => {}
        }
    }

    /// Another session than `id` is busy now or was in the last epoch.
    fn other_than(&self, id: RelayId) -> bool {
        self.now
            .iter()
            .chain(&self.before)
            .any(|b| b.is_some_and(|b| b != id))
    }
}

pub struct Trs {
    config: TrsConfig,
    /// Makes and checks cookies (from the relay secret).
    cookie_key: [u8; 32],
    sessions: HashMap<RelayId, Session>,
    /// Bind budgets by source prefix ([`bind_source`]).
    bind_limits: HashMap<IpAddr, TokenBucket>,
    /// The budget new sources share while `bind_limits` is full.
    overflow: TokenBucket,
    counters: TrsCounters,
    /// Answers Reflect Requests (with the observed address only).
    reflector: Reflector,
    /// Epochs are whole seconds since this instant (the first Relay Data).
    started: Option<Instant>,
    busy: Busy,
}

/// The source a bind budget is kept for: an IPv4 address, or the /64 of
/// an IPv6 address (one host holds a whole /64, so per-address budgets
/// would give it 2^64 of them).
fn bind_source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

impl Trs {
    pub fn new(config: TrsConfig) -> Self {
        let shared = f64::from(config.binds_per_source) * 8.0;
        Self {
            cookie_key: relay::cookie_key(&config.secret),
            sessions: HashMap::new(),
            bind_limits: HashMap::new(),
            overflow: TokenBucket::new(shared, shared, Instant::now()),
            counters: TrsCounters::default(),
            reflector: Reflector::new(config.reflect),
            config,
            started: None,
            busy: Busy::default(),
        }
    }

    /// Sources with a bind budget now.
    pub fn bind_sources(&self) -> usize {
        self.bind_limits.len()
    }

    pub fn counters(&self) -> TrsCounters {
        let reflect = self.reflector.counters();
        TrsCounters {
            sessions: self.sessions.len() as u64,
            reflects: reflect.reflects,
            reflects_bad: reflect.reflects_bad,
            reflects_limited: reflect.reflects_limited,
            ..self.counters
        }
    }

    /// `unix_now` is the wall clock in seconds, for grant expiry.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: SocketAddr,
        buf: &mut [u8],
    ) -> Action {
        let action = match buf.first() {
            Some(&TYPE_RELAY_DATA) => self.on_data(now, from, buf),
            Some(&TYPE_REFLECT_REQUEST) => {
                // Counted by the reflector, apart from relay traffic.
                return match self.reflector.handle_request(now, from, buf, &[], &[]) {
                    Ok(len) => Action::Reply(len),
                    Err(ReflectDrop::Malformed) => Action::Drop(DropReason::Malformed),
                    Err(ReflectDrop::RateLimited) => Action::Drop(DropReason::RateLimited),
                };
            }
            Some(&TYPE_RELAY_BIND) => self.on_bind(now, unix_now, from, buf),
            _ => Action::Drop(DropReason::Malformed),
        };
        match action {
            Action::Drop(DropReason::Malformed) => self.counters.dropped_malformed += 1,
            Action::Drop(DropReason::BadMac | DropReason::Expired | DropReason::StaleCounter) => {
                self.counters.dropped_auth += 1
            }
            Action::Drop(DropReason::RateLimited | DropReason::TooManySessions) => {
                self.counters.dropped_rate += 1
            }
            Action::Drop(_) => self.counters.dropped_unbound += 1,
            Action::Forward(_) => {
                self.counters.forwarded_packets += 1;
                self.counters.forwarded_bytes += buf.len() as u64;
            }
            Action::Reply(CHALLENGE_LEN) if buf[0] == relay::TYPE_RELAY_CHALLENGE => {
                self.counters.challenges += 1
            }
            Action::Reply(_) => self.counters.binds += 1,
        }
        action
    }

    fn on_data(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) -> Action {
        let Ok(relay_id) = relay::parse_data(buf) else {
            return Action::Drop(DropReason::Malformed);
        };
        let Some(s) = self.sessions.get_mut(&relay_id) else {
            return Action::Drop(DropReason::UnknownSession);
        };
        let side = if s.sides[0] == Some(from) {
            0
        } else if s.sides[1] == Some(from) {
            1
        } else {
            return Action::Drop(DropReason::UnboundSource);
        };
        let Some(dst) = s.sides[1 - side] else {
            return Action::Drop(DropReason::PeerNotBound);
        };
        let len = buf.len() as u64;
        let started = *self.started.get_or_insert(now);
        let epoch = now.saturating_duration_since(started).as_secs();
        self.busy.roll(epoch);
        // The bucket is drawn from even while the session is alone, so a
        // session over its rate is held to it as soon as another one
        // gets busy.
        if self.config.session_rate != 0
            && !s.bucket.take(now, len as f64)
            && self.busy.other_than(relay_id)
        {
            return Action::Drop(DropReason::RateLimited);
        }
        if s.epoch != epoch {
            s.epoch = epoch;
            s.epoch_bytes = 0;
        }
        s.epoch_bytes += len;
        if s.epoch_bytes >= BUSY_BYTES && s.epoch_bytes - len < BUSY_BYTES {
            self.busy.mark(relay_id);
        }
        s.last_used = now;
        Action::Forward(dst)
    }

    fn on_bind(&mut self, now: Instant, unix_now: u64, from: SocketAddr, buf: &mut [u8]) -> Action {
        // A Bind, or a Bind with the cookie of a Challenge.
        let tail = match buf.len() {
            BIND_LEN => None,
            BIND_WITH_COOKIE_LEN => Some(BIND_LEN..BIND_WITH_COOKIE_LEN),
            _ => return Action::Drop(DropReason::Malformed),
        };
        let Ok(bind) = Bind::parse(&buf[..BIND_LEN]) else {
            return Action::Drop(DropReason::Malformed);
        };
        // Cheap checks and the per-source limit before the HMAC.
        if bind.expires <= unix_now {
            return Action::Drop(DropReason::Expired);
        }
        // Bounded, and never scanned here: a flood from many sources
        // (a whole IPv6 /48) shares one budget until `handle_timeout`
        // prunes the table, and forwarding never waits for a scan.
        let rate = self.config.binds_per_source as f64;
        let source = bind_source(from.ip());
        let full = self.bind_limits.len() >= self.config.max_bind_sources;
        let limiter = match self.bind_limits.get_mut(&source) {
            Some(b) => b,
            None if full => &mut self.overflow,
            None => self
                .bind_limits
                .entry(source)
                .or_insert_with(|| TokenBucket::new(rate, rate, now)),
        };
        if !limiter.take(now, 1.0) {
            return Action::Drop(DropReason::RateLimited);
        }
        let key = relay::side_key(&self.config.secret, bind.relay_id, bind.side, bind.expires);
        if Bind::verify(&buf[..BIND_LEN], &key).is_err() {
            return Action::Drop(DropReason::BadMac);
        }
        let side = bind.side as usize;
        if let Some(s) = self.sessions.get(&bind.relay_id) {
            // A replayed Bind is dropped before it earns a Challenge.
            let stale = s.sides[side].is_some() && bind.counter <= s.counters[side];
            if stale && (s.sides[side] != Some(from) || bind.counter != s.counters[side]) {
                return Action::Drop(DropReason::StaleCounter);
            }
        }
        // Return routability: only the bound address, or one that shows a
        // cookie sent to it, binds; anything else gets a Challenge of the
        // Bind's own size, and the TRS keeps nothing.
        let bound_here = self
            .sessions
            .get(&bind.relay_id)
            .is_some_and(|s| s.sides[side] == Some(from));
        let routable = bound_here
            || tail.is_some_and(|t| {
                relay::cookie_valid(
                    &self.cookie_key,
                    from,
                    bind.relay_id,
                    bind.side,
                    &buf[t],
                    unix_now,
                )
            });
        if !routable {
            let challenge = Challenge {
                relay_id: bind.relay_id,
                side: bind.side,
                counter: bind.counter,
                issued: unix_now,
                cookie: relay::cookie(&self.cookie_key, from, bind.relay_id, bind.side, unix_now),
            };
            buf[..CHALLENGE_LEN].copy_from_slice(&challenge.encode());
            return Action::Reply(CHALLENGE_LEN);
        }
        if !self.sessions.contains_key(&bind.relay_id)
            && self.sessions.len() >= self.config.max_sessions
        {
            return Action::Drop(DropReason::TooManySessions);
        }
        let rate = self.config.session_rate as f64;
        let s = self
            .sessions
            .entry(bind.relay_id)
            .or_insert_with(|| Session {
                sides: [None, None],
                counters: [0, 0],
                expires: bind.expires,
                last_used: now,
                bucket: TokenBucket::new(rate, (rate / 10.0).max(65_536.0), now),
                epoch: 0,
                epoch_bytes: 0,
            });
        if bind.counter <= s.counters[side] && s.sides[side].is_some() {
            // A replayed Bind: answer only if it names the address already
            // bound (a lost Ack), never move the side.
            if s.sides[side] != Some(from) || bind.counter != s.counters[side] {
                return Action::Drop(DropReason::StaleCounter);
            }
        }
        s.counters[side] = bind.counter;
        s.sides[side] = Some(from);
        s.expires = s.expires.max(bind.expires);
        s.last_used = now;
        let ack = Bind { ack: true, ..bind }.encode(&key);
        buf[..BIND_LEN].copy_from_slice(&ack);
        Action::Reply(BIND_LEN)
    }

    /// Forgets sessions idle too long or past their grant.
    pub fn handle_timeout(&mut self, now: Instant, unix_now: u64) {
        let idle = self.config.idle_timeout;
        self.sessions.retain(|_, s| {
            s.expires > unix_now && now.saturating_duration_since(s.last_used) < idle
        });
        self.bind_limits
            .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test relay secret";

    fn bind(relay_id: u64, side: u8, expires: u64, counter: u64) -> Vec<u8> {
        let relay_id = RelayId(relay_id);
        let key = relay::side_key(SECRET, relay_id, side, expires);
        Bind {
            ack: false,
            relay_id,
            side,
            expires,
            counter,
        }
        .encode(&key)
        .to_vec()
    }

    fn data(relay_id: u64, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; relay::RELAY_HEADER_LEN];
        relay::write_data_header(&mut p, RelayId(relay_id));
        p.extend_from_slice(payload);
        p
    }

    /// Binds as a node does: the Bind, and on a Challenge the Bind again
    /// with its cookie, from the same address.
    fn bind_routable(
        t: &mut Trs,
        now: Instant,
        unix_now: u64,
        from: SocketAddr,
        b: Vec<u8>,
    ) -> Action {
        let mut first = b.clone();
        match t.handle_datagram(now, unix_now, from, &mut first) {
            Action::Reply(CHALLENGE_LEN) if first[0] == relay::TYPE_RELAY_CHALLENGE => {
                let c = Challenge::parse(&first[..CHALLENGE_LEN]).expect("a challenge");
                let mut again = b;
                again.extend_from_slice(&c.tail());
                t.handle_datagram(now, unix_now, from, &mut again)
            }
            other => other,
        }
    }

    fn trs() -> Trs {
        Trs::new(TrsConfig {
            secret: SECRET.to_vec(),
            ..TrsConfig::default()
        })
    }

    fn trs_at_rate(session_rate: u64) -> Trs {
        Trs::new(TrsConfig {
            secret: SECRET.to_vec(),
            session_rate,
            ..TrsConfig::default()
        })
    }

    #[test]
    fn forwards_only_between_the_two_bound_sides() {
        let mut t = trs();
        let now = Instant::now();
        let a: SocketAddr = "198.51.100.10:40000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::20]:41000".parse().unwrap();
        let evil: SocketAddr = "203.0.113.66:40000".parse().unwrap();
        assert_eq!(
            t.handle_datagram(now, 1000, a, &mut data(5, b"x")),
            Action::Drop(DropReason::UnknownSession)
        );
        // A first Bind is challenged, and binds nothing.
        let mut ba = bind(5, 0, 2000, 1);
        assert_eq!(
            t.handle_datagram(now, 1000, a, &mut ba),
            Action::Reply(CHALLENGE_LEN)
        );
        let c = Challenge::parse(&ba).expect("a challenge");
        assert_eq!((c.relay_id, c.side, c.counter), (RelayId(5), 0, 1));
        assert_eq!(t.counters().sessions, 0);
        let mut ba = bind(5, 0, 2000, 1);
        ba.extend_from_slice(&c.tail());
        assert_eq!(
            t.handle_datagram(now, 1000, a, &mut ba),
            Action::Reply(BIND_LEN)
        );
        assert!(Bind::parse(&ba[..BIND_LEN]).unwrap().ack);
        assert_eq!(
            t.handle_datagram(now, 1000, a, &mut data(5, b"x")),
            Action::Drop(DropReason::PeerNotBound)
        );
        assert_eq!(
            bind_routable(&mut t, now, 1000, b, bind(5, 1, 2000, 1)),
            Action::Reply(BIND_LEN)
        );
        // Bound: the next Bind from there needs no cookie.
        assert_eq!(
            t.handle_datagram(now, 1000, b, &mut bind(5, 1, 2000, 2)),
            Action::Reply(BIND_LEN)
        );
        assert_eq!(
            t.handle_datagram(now, 1000, a, &mut data(5, b"x")),
            Action::Forward(b)
        );
        assert_eq!(
            t.handle_datagram(now, 1000, b, &mut data(5, b"y")),
            Action::Forward(a)
        );
        assert_eq!(
            t.handle_datagram(now, 1000, evil, &mut data(5, b"z")),
            Action::Drop(DropReason::UnboundSource)
        );
        assert_eq!(t.counters().forwarded_packets, 2);
    }

    #[test]
    fn forged_expired_and_replayed_binds_change_nothing() {
        let mut t = trs();
        let now = Instant::now();
        let a: SocketAddr = "198.51.100.10:40000".parse().unwrap();
        let b: SocketAddr = "198.51.100.11:40000".parse().unwrap();
        let evil: SocketAddr = "203.0.113.66:40000".parse().unwrap();
        let mut forged = bind(5, 0, 2000, 1);
        forged[40] ^= 1;
        assert_eq!(
            t.handle_datagram(now, 1000, evil, &mut forged),
            Action::Drop(DropReason::BadMac)
        );
        assert_eq!(
            t.handle_datagram(now, 3000, a, &mut bind(5, 0, 2000, 1)),
            Action::Drop(DropReason::Expired)
        );
        let captured = bind(5, 0, 2000, 1);
        assert_eq!(
            bind_routable(&mut t, now, 1000, a, captured.clone()),
            Action::Reply(BIND_LEN)
        );
        assert_eq!(
            bind_routable(&mut t, now, 1000, b, bind(5, 1, 2000, 1)),
            Action::Reply(BIND_LEN)
        );
        // The attacker replays side 0's Bind from its own address, cookie
        // and all.
        assert_eq!(
            bind_routable(&mut t, now, 1000, evil, captured.clone()),
            Action::Drop(DropReason::StaleCounter)
        );
        assert_eq!(
            t.handle_datagram(now, 1000, b, &mut data(5, b"x")),
            Action::Forward(a)
        );
        // A lost Ack: the same Bind from the same address is answered again.
        assert_eq!(
            t.handle_datagram(now, 1000, a, &mut captured.clone()),
            Action::Reply(BIND_LEN)
        );
        // A moved node binds with a higher counter.
        let moved: SocketAddr = "198.51.100.99:50000".parse().unwrap();
        assert_eq!(
            bind_routable(&mut t, now, 1000, moved, bind(5, 0, 2000, 2)),
            Action::Reply(BIND_LEN)
        );
        assert_eq!(
            t.handle_datagram(now, 1000, b, &mut data(5, b"x")),
            Action::Forward(moved)
        );
        for len in 0..BIND_LEN {
            let mut short = captured[..len].to_vec();
            assert!(matches!(
                t.handle_datagram(now, 1000, a, &mut short),
                Action::Drop(_)
            ));
        }
    }

    /// A captured Bind sent from a victim's address (many copies, from a
    /// whole prefix) binds nothing, creates no session, and gets the
    /// victim one packet of the Bind's own size each: the peer's traffic is
    /// never forwarded there. A cookie sent to one address is worth
    /// nothing from another.
    #[test]
    fn spoofed_binds_bind_nothing_and_are_answered_at_most_their_size() {
        let mut t = trs();
        let now = Instant::now();
        let a: SocketAddr = "198.51.100.10:40000".parse().unwrap();
        let b: SocketAddr = "198.51.100.11:40000".parse().unwrap();
        assert_eq!(
            bind_routable(&mut t, now, 1000, b, bind(5, 1, 2000, 1)),
            Action::Reply(BIND_LEN)
        );
        let (mut received, mut sent) = (0, 0);
        for i in 0..40u64 {
            let victim: SocketAddr = format!("[2001:db8:6:{i:x}::1]:4501").parse().unwrap();
            let mut spoofed = bind(5, 0, 2000, 10 + i);
            received += spoofed.len();
            match t.handle_datagram(now, 1000, victim, &mut spoofed) {
                Action::Reply(n) => {
                    assert_eq!(spoofed[0], relay::TYPE_RELAY_CHALLENGE);
                    sent += n;
                }
                Action::Drop(_) => {}
                Action::Forward(to) => panic!("forwarded to {to}"),
            }
            assert!(!matches!(
                t.handle_datagram(now, 1000, b, &mut data(5, b"to the victim?")),
                Action::Forward(_)
            ));
        }
        assert!(sent <= received, "{sent} bytes for {received}");
        assert_eq!(
            t.counters().challenges,
            1 + 40,
            "b's own, and one per spoofed Bind"
        );
        // A's cookie, shown by someone else, binds nothing either.
        let mut first = bind(5, 0, 2000, 100);
        t.handle_datagram(now, 1000, a, &mut first);
        let c = Challenge::parse(&first).unwrap();
        let evil: SocketAddr = "203.0.113.66:40000".parse().unwrap();
        let mut stolen = bind(5, 0, 2000, 101);
        stolen.extend_from_slice(&c.tail());
        assert_eq!(
            t.handle_datagram(now, 1000, evil, &mut stolen),
            Action::Reply(CHALLENGE_LEN)
        );
        // An old cookie is refused too.
        let mut late = bind(5, 0, 2000, 102);
        late.extend_from_slice(&c.tail());
        assert_eq!(
            t.handle_datagram(now, 1000 + relay::COOKIE_LIFETIME_SECS + 1, a, &mut late),
            Action::Reply(CHALLENGE_LEN)
        );
        assert_eq!(
            bind_routable(&mut t, now, 1000, a, bind(5, 0, 2000, 103)),
            Action::Reply(BIND_LEN)
        );
        assert_eq!(
            t.handle_datagram(now, 1000, b, &mut data(5, b"x")),
            Action::Forward(a)
        );
    }

    #[test]
    fn rate_limits_hold() {
        let mut t = Trs::new(TrsConfig {
            secret: SECRET.to_vec(),
            session_rate: 10_000,
            binds_per_source: 3,
            ..TrsConfig::default()
        });
        let now = Instant::now();
        let a: SocketAddr = "198.51.100.10:40000".parse().unwrap();
        let b: SocketAddr = "198.51.100.11:40000".parse().unwrap();
        let mut replies = 0;
        for i in 0..10 {
            if let Action::Reply(_) = t.handle_datagram(now, 1000, a, &mut bind(9, 0, 2000, i + 1))
            {
                replies += 1;
            }
        }
        assert_eq!(replies, 3, "binds per source are limited");
        let later = now + Duration::from_secs(1);
        bind_routable(&mut t, later, 1000, a, bind(9, 0, 2000, 20));
        bind_routable(&mut t, later, 1000, b, bind(9, 1, 2000, 1));
        assert_eq!(t.counters().sessions, 1);
        t.handle_timeout(later + Duration::from_secs(1000), 1000);
        assert_eq!(t.counters().sessions, 0, "idle sessions expire");
    }

    /// Sends `n` datagrams of 1200 bytes on `relay_id` from `from` at
    /// `now`; how many were forwarded.
    fn flood(t: &mut Trs, now: Instant, from: SocketAddr, relay_id: u64, n: usize) -> usize {
        let payload = vec![0u8; 1200];
        (0..n)
            .filter(|_| {
                matches!(
                    t.handle_datagram(now, 1000, from, &mut data(relay_id, &payload)),
                    Action::Forward(_)
                )
            })
            .count()
    }

    /// 198.51.100.`i`, port 40000.
    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 40000))
    }

    /// Binds session 9 between `addr(10)` and `addr(11)`, and session 10
    /// between `addr(20)` and `addr(21)`.
    fn bind_two_sessions(t: &mut Trs, now: Instant) {
        for (id, first) in [(9, 10), (10, 20)] {
            for side in 0..2 {
                assert_eq!(
                    bind_routable(t, now, 1000, addr(first + side), bind(id, side, 2000, 1)),
                    Action::Reply(BIND_LEN)
                );
            }
        }
    }

    /// The session rate is work-conserving: a session alone on the relay
    /// may use all of it; while another session is busy (moved 64 KiB in
    /// this second or the last), each is held to its rate, and alone
    /// again two seconds after the other one stopped.
    #[test]
    fn the_session_rate_holds_while_the_relay_is_shared() {
        let mut t = trs_at_rate(1_000_000);
        let now = Instant::now();
        bind_two_sessions(&mut t, now);
        // 2.4 MB at one instant, alone: far over the burst (100 kB), all
        // forwarded.
        assert_eq!(flood(&mut t, now, addr(10), 9, 2000), 2000);
        assert_eq!(t.counters().dropped_rate, 0);
        // The second session is held to its burst at once, since the
        // first is busy...
        let half = now + Duration::from_millis(500);
        let burst = 100_000 / 1212 + 1;
        let second = flood(&mut t, half, addr(20), 10, 2000);
        assert!(
            second > BUSY_BYTES as usize / 1212 && second <= burst,
            "{second}"
        );
        // ... and now that it is busy too, so is the first, in both
        // directions, with what its bucket refilled in half a second.
        let first = flood(&mut t, half, addr(11), 9, 2000);
        assert!(first <= burst, "{first}");
        assert!(t.counters().dropped_rate >= 2 * (2000 - burst) as u64);
        // A keepalive now and then does not make a session busy: two
        // epochs after the second session stopped, the first is alone.
        let alone = now + Duration::from_millis(3500);
        assert_eq!(
            flood(&mut t, alone - Duration::from_secs(1), addr(20), 10, 1),
            1
        );
        assert_eq!(flood(&mut t, alone, addr(10), 9, 2000), 2000);
    }

    #[test]
    fn a_session_rate_of_zero_forwards_without_limit() {
        let mut t = trs_at_rate(0);
        let now = Instant::now();
        bind_two_sessions(&mut t, now);
        // 2.4 MB at one instant each, the relay shared: far over any
        // burst a rate would allow.
        assert_eq!(flood(&mut t, now, addr(20), 10, 2000), 2000);
        assert_eq!(flood(&mut t, now, addr(10), 9, 2000), 2000);
        assert_eq!(t.counters().dropped_rate, 0);
    }

    #[test]
    fn bind_budgets_are_per_prefix_and_bounded() {
        let mut t = Trs::new(TrsConfig {
            secret: SECRET.to_vec(),
            binds_per_source: 2,
            max_bind_sources: 4,
            ..TrsConfig::default()
        });
        let now = Instant::now();
        // Every address of one IPv6 /64 shares one budget.
        let mut replies = 0;
        for i in 1..=10u64 {
            let from: SocketAddr = format!("[2001:db8:1:2::{i:x}]:4501").parse().unwrap();
            if let Action::Reply(_) = t.handle_datagram(now, 1000, from, &mut bind(i, 0, 2000, 1)) {
                replies += 1;
            }
        }
        assert_eq!(replies, 2, "one /64, one budget");
        assert_eq!(t.bind_sources(), 1);
        // A flood from many /64s fills the table and then shares the
        // overflow budget (8 x 2), whatever the number of sources.
        let mut flood = 0;
        for i in 1..=1000u64 {
            let from: SocketAddr = format!("[2001:db8:2:{i:x}::1]:4501").parse().unwrap();
            if let Action::Reply(_) =
                t.handle_datagram(now, 1000, from, &mut bind(100 + i, 0, 2000, 1))
            {
                flood += 1;
            }
        }
        assert_eq!(t.bind_sources(), 4, "the table stays bounded");
        assert_eq!(flood, 3 + 16, "three new prefixes fit, the rest share 16");
        // Pruned off the hot path, the table makes room again.
        t.handle_timeout(now + Duration::from_secs(11), 1000);
        assert_eq!(t.bind_sources(), 0);
        let v4: SocketAddr = "198.51.100.10:4501".parse().unwrap();
        assert!(matches!(
            t.handle_datagram(
                now + Duration::from_secs(11),
                1000,
                v4,
                &mut bind(5000, 0, 2000, 1)
            ),
            Action::Reply(_)
        ));
    }
}
