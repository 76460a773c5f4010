//! Packetization-layer path MTU discovery (RFC 8899) for a tunnel's
//! current path: padded size probes, sealed like any packet, find the
//! largest inner packet the path carries whether or not ICMP comes back.
//!
//! A search starts when a tunnel takes a path. It is optimistic, as a
//! 1500-byte path is the common case: the tunnel carries packets up to the
//! device MTU meanwhile, and one probe of that size (round 0) settles it
//! within a round trip. When that probe is not answered within
//! [`ROUND`], every size from [`FLOOR`] up, [`STEP`] bytes apart, is probed
//! at once (rounds 1 and 2); the largest answered size becomes the tunnel's
//! MTU after round 1, and may grow after round 2 (a probe lost by chance).
//! A path that answered no size keeps the floor: below it the outer
//! datagram is fragmented instead (`docs/protocol.md` §7.7). A search that
//! ended below the top is tried again after [`RAISE_AFTER`].

use std::time::{Duration, Instant};

use cyphonic_proto::{punch, Transport};
use rand::Rng;

use super::tunnel::PeerState;

/// The smallest inner packet a search assumes every path carries: a
/// 1280-byte path (IPv6's minimum link MTU) relayed over IPv6, less 40 (IPv6)
/// + 8 (UDP) + 12 (relay header) + 16 (data header) + 16 (tag).
pub const FLOOR: u16 = 1280 - 40 - 8 - 12 - 16 - 16;
/// Sizes probed in a full round are this far apart.
pub const STEP: u16 = 16;
/// How long a round's probes may take to be answered.
pub const ROUND: Duration = Duration::from_secs(1);
/// A search that settled below the top tries the top again this much later
/// (RFC 8899's `PMTU_RAISE_TIMER`).
pub const RAISE_AFTER: Duration = Duration::from_secs(600);
/// Full rounds after the optimistic one.
const FULL_ROUNDS: u8 = 2;

/// One path's search.
#[derive(Debug, Clone)]
pub struct Search {
    top: u16,
    /// Probes in flight: (nonce, inner size).
    sent: Vec<(u64, u16)>,
    /// Rounds sent so far (0: none yet).
    rounds: u8,
    /// When the next round is due (or, once settled, the next search).
    next: Instant,
    /// The largest size a probe of this path came back for.
    acked: u16,
    settled: bool,
}

/// What the caller does after a step of the search.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Send a size probe of `size` inner bytes with nonce `nonce`.
    pub probes: Vec<(u64, u16)>,
    /// The tunnel's MTU is now this many inner bytes.
    pub mtu: Option<u16>,
}

impl Search {
    /// A search of a path whose largest inner packet may be `top` (the
    /// device MTU, or less on a leg that carries less), due at once.
    pub fn new(now: Instant, top: u16) -> Search {
        Search {
            top: top.max(FLOOR),
            sent: Vec::new(),
            rounds: 0,
            next: now,
            acked: 0,
            settled: false,
        }
    }

    /// When [`Search::poll`] has something to do.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Whether the search ended (until its next try).
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// The sizes of the next round, and the MTU the last round showed.
    /// `nonce` makes each probe's nonce.
    pub fn poll(&mut self, now: Instant, mut nonce: impl FnMut() -> u64) -> Step {
        let mut step = Step::default();
        if now < self.next {
            return step;
        }
        if self.settled {
            // Time to try the top again.
            *self = Search::new(now, self.top);
        }
        if self.rounds > 0 && self.acked < self.top {
            // The round before went unanswered at the top: from round 1
            // on, the largest size that came back is the MTU (the floor
            // when none did).
            if self.rounds >= 2 || self.acked > 0 {
                step.mtu = Some(self.acked.max(FLOOR));
            }
        }
        if self.rounds > FULL_ROUNDS {
            self.settled = true;
            self.sent.clear();
            self.next = now + RAISE_AFTER;
            step.mtu = Some(self.acked.max(FLOOR));
            return step;
        }
        self.sent.clear();
        let sizes: Vec<u16> = if self.rounds == 0 {
            vec![self.top]
        } else {
            let mut v: Vec<u16> = (0..)
                .map(|k| FLOOR + k * STEP)
                .take_while(|s| *s < self.top)
                .filter(|s| *s > self.acked)
                .collect();
            v.push(self.top);
            v
        };
        for size in sizes {
            let n = nonce();
            self.sent.push((n, size));
            step.probes.push((n, size));
        }
        self.rounds += 1;
        self.next = now + ROUND;
        step
    }

    /// A size probe's ack: `Some(mtu)` when it changes the tunnel's MTU
    /// (the top answered: the search is over), `None` otherwise or when
    /// the nonce is not one of this search's.
    pub fn ack(&mut self, now: Instant, nonce: u64) -> Option<Option<u16>> {
        let size = self.sent.iter().find(|(n, _)| *n == nonce)?.1;
        self.acked = self.acked.max(size);
        if size < self.top {
            return Some(None);
        }
        self.settled = true;
        self.sent.clear();
        self.next = now + RAISE_AFTER;
        Some(Some(self.top))
    }
}

impl super::Node {
    /// A tunnel took a path: its MTU is the device's again until a search
    /// of the new path says otherwise.
    pub(super) fn start_pmtu(&mut self, now: Instant, fqdn: &str) {
        let device = self.config.mtu;
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.as_ref() else {
            return;
        };
        tunnel.mtu.set_probed(0);
        tunnel.mtu.set_kernel(0);
        let leg = tunnel.path.leg();
        let top = if leg.transport == Transport::Quic {
            let limit =
                crate::dataplane::quic_inner_limit(leg.addr.is_ipv6(), tunnel.path.is_relay());
            device.min(u16::try_from(limit).unwrap_or(u16::MAX))
        } else {
            device
        };
        peer.pmtu = Some(Search::new(now, top));
    }

    /// The search's next round, when due: size probes on the current path,
    /// and the MTU the last round showed.
    pub(super) fn pmtu_tick(&mut self, now: Instant, fqdn: &str) {
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        if !matches!(peer.state, PeerState::Established) || peer.confirm_by.is_some() {
            return;
        }
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        let rng = &mut self.rng;
        let Some(step) = peer.pmtu.as_mut().map(|s| s.poll(now, || rng.gen())) else {
            return;
        };
        drop(peer);
        if let Some(mtu) = step.mtu {
            self.set_pmtu(fqdn, &tunnel, mtu);
        }
        for (nonce, size) in step.probes {
            self.counters.pmtu_probes += 1;
            self.seal_to(
                &tunnel,
                tunnel.path,
                &punch::size_probe(nonce, usize::from(size)),
            );
        }
    }

    /// A size probe came back.
    pub(super) fn pmtu_ack(&mut self, now: Instant, fqdn: &str, nonce: u64) {
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        let changed = peer.pmtu.as_mut().and_then(|s| s.ack(now, nonce));
        drop(peer);
        if let Some(Some(mtu)) = changed {
            self.set_pmtu(fqdn, &tunnel, mtu);
        }
    }

    fn set_pmtu(&mut self, fqdn: &str, tunnel: &super::TunnelHandle, mtu: u16) {
        let before = tunnel.mtu.probed();
        tunnel.mtu.set_probed(mtu);
        if before != mtu && (before != 0 || mtu < self.config.mtu) {
            tracing::info!(peer = %fqdn, path = %tunnel.path, mtu, "path MTU");
            self.counters.pmtu_changes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
    }

    /// Runs a search on a path that carries `carries` inner bytes (every
    /// probe up to it answered at once); returns the MTU it settles on and
    /// when.
    fn run(top: u16, carries: u16) -> (u16, Duration) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Search::new(now, top);
        let mut nonce = counter();
        let mut mtu = top;
        for _ in 0..20 {
            let step = s.poll(now, &mut nonce);
            if let Some(m) = step.mtu {
                mtu = m;
            }
            for (n, size) in step.probes {
                if size <= carries {
                    if let Some(Some(m)) = s.ack(now, n) {
                        mtu = m;
                    }
                }
            }
            if s.settled() {
                return (mtu, now - t0);
            }
            now = s.deadline();
        }
        panic!("search never settled");
    }

    #[test]
    fn a_full_size_path_settles_at_the_top_in_one_probe() {
        let t0 = Instant::now();
        let mut s = Search::new(t0, 1408);
        let step = s.poll(t0, counter());
        assert_eq!(step.probes, vec![(1, 1408)]);
        assert_eq!(step.mtu, None);
        assert_eq!(s.ack(t0, 1), Some(Some(1408)));
        assert!(s.settled());
        assert_eq!(s.deadline(), t0 + RAISE_AFTER);
        // A late or unknown ack changes nothing.
        assert_eq!(s.ack(t0, 99), None);
    }

    #[test]
    fn a_narrow_path_settles_on_the_largest_step_it_carries() {
        // A 1280-byte IPv4 path: 1280 - 20 - 8 - 32 = 1220 inner bytes.
        let (mtu, took) = run(1408, 1220);
        assert!(mtu <= 1220 && mtu > 1220 - STEP, "{mtu}");
        assert_eq!(took, 3 * ROUND);
        let (mtu, _) = run(1408, 1350);
        assert!(mtu <= 1350 && mtu > 1350 - STEP, "{mtu}");
    }

    #[test]
    fn the_mtu_drops_after_the_first_full_round() {
        let t0 = Instant::now();
        let mut s = Search::new(t0, 1408);
        let mut nonce = counter();
        s.poll(t0, &mut nonce); // the top, lost
        let step = s.poll(t0 + ROUND, &mut nonce);
        assert_eq!(step.mtu, None, "nothing answered yet");
        assert_eq!(step.probes.first().map(|p| p.1), Some(FLOOR));
        assert_eq!(step.probes.last().map(|p| p.1), Some(1408));
        for (n, size) in step.probes {
            if size <= 1250 {
                s.ack(t0 + ROUND, n);
            }
        }
        let step = s.poll(t0 + 2 * ROUND, &mut nonce);
        assert_eq!(step.mtu, Some(1236));
        assert!(
            step.probes.iter().all(|p| p.1 > 1236),
            "only larger sizes again"
        );
    }

    #[test]
    fn a_path_that_answers_nothing_keeps_the_floor_and_tries_again_later() {
        let (mtu, took) = run(1408, 0);
        assert_eq!(mtu, FLOOR);
        assert_eq!(took, 3 * ROUND);
        let t0 = Instant::now();
        let mut s = Search::new(t0, 1408);
        let mut nonce = counter();
        let mut now = t0;
        loop {
            s.poll(now, &mut nonce);
            if s.settled() {
                break;
            }
            now = s.deadline();
        }
        let again = s.deadline();
        assert_eq!(again, now + RAISE_AFTER);
        let step = s.poll(again, &mut nonce);
        assert_eq!(step.probes.len(), 1, "the top alone, again");
    }

    #[test]
    fn a_top_below_the_floor_is_the_floor() {
        let (mtu, _) = run(1000, 1000);
        assert_eq!(mtu, FLOOR);
    }
}
