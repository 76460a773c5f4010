//! Birthday punching: a direct path between a node behind a hard NAT (a new
//! random port for every destination, `masquerade fully-random`) and one
//! behind an easy NAT (one port for every destination), found while the
//! tunnel runs over the relay. `docs/routing.md` has the reasoning,
//! protocol §5.17 the sequence.
//!
//! The hard side sends one path probe from each of [`SPARE_PORTS`] spare
//! ports to the easy side's mapping, with a TTL that dies past its own NAT:
//! each opens a mapping of its own there (a random public port) and none
//! reaches the easy side's router, which could record it (routers without
//! an input firewall). It then asks over the relay (a probe request). The
//! easy side probes random ports of the hard side's public address, at most
//! [`SPRAY_PROBES`] at [`SPRAY_BATCH`] per [`SPRAY_STEP`]; each probe that
//! hits one of the open mappings is answered on its path, and both sides
//! move onto it as onto any probed path. With 256 mappings among the 64512
//! ports Linux picks from, 2048 probes hit one with probability
//! 1 - (1 - 256/64512)^2048 = 99.97 %, half of the hits in the first
//! 0.2 s. An attempt that finds nothing is
//! repeated once its window is over ([`SPRAY_RETRY`]), then after twice
//! as long each time, up to [`SPRAY_RETRY_MAX`]: an attempt costs about
//! 2300 small datagrams (170 kB), so a pair that cannot meet costs 20 kB/s
//! at first and under 400 B/s after a few minutes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cyphonic_proto::punch::Probe;
use cyphonic_proto::signal::Spray;
use rand::Rng;

use super::path::PUNCH_TTL;
use super::ping::PROBE_LIFETIME;
use super::tunnel::direct_paths;
use super::types::{Leg, NodeEvent, Path};
use super::Node;

/// Spare ports the hard side opens per attempt (shared by all its peers:
/// a hard NAT maps each port anew for every destination).
pub const SPARE_PORTS: u16 = 256;
/// Probes the easy side sends per attempt, at most.
pub const SPRAY_PROBES: usize = 2048;
/// Probes per step, and the step: 800 probes a second (about 60 kB/s),
/// 2.56 s for all.
pub const SPRAY_BATCH: usize = 16;
pub const SPRAY_STEP: Duration = Duration::from_millis(20);
/// How long the spare ports stay open after an attempt opened them (those
/// that carry a tunnel stay as long as it does): the probe request's trip
/// over the relay, the easy side's probes, and their answers.
pub const SPARES_OPEN_FOR: Duration = Duration::from_secs(8);
/// The wait before the second attempt (when the first window is over),
/// doubled after each further one, at most [`SPRAY_RETRY_MAX`].
pub const SPRAY_RETRY: Duration = SPARES_OPEN_FOR;
pub const SPRAY_RETRY_MAX: Duration = Duration::from_secs(480);
/// The lowest port a NAT picks from (Linux: 1024..=65535).
const LOWEST_PORT: u16 = 1024;

/// The easy side's probes of one attempt.
pub(crate) struct SprayRun {
    /// Every probe of the run carries it.
    pub nonce: u64,
    /// The hard side's public address.
    pub ip: IpAddr,
    pub sent: usize,
    pub next_at: Instant,
    /// When the last probe went: acks are taken until `PROBE_LIFETIME`
    /// after it.
    pub last_at: Instant,
    /// A bit per port: probed in this run.
    probed: Vec<u64>,
}

impl SprayRun {
    pub fn new(nonce: u64, ip: IpAddr, now: Instant) -> Self {
        SprayRun {
            nonce,
            ip,
            sent: 0,
            next_at: now,
            last_at: now,
            probed: vec![0; 1024],
        }
    }

    pub fn done(&self) -> bool {
        self.sent >= SPRAY_PROBES
    }

    fn is_probed(&self, port: u16) -> bool {
        self.probed[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    /// Up to `n` ports not probed yet in this run, chosen at random and
    /// marked probed.
    pub fn next_ports(&mut self, rng: &mut impl Rng, n: usize) -> Vec<u16> {
        let n = n.min(SPRAY_PROBES - self.sent.min(SPRAY_PROBES));
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let port: u16 = rng.gen_range(LOWEST_PORT..=u16::MAX);
            if !self.is_probed(port) {
                self.probed[usize::from(port / 64)] |= 1 << (port % 64);
                out.push(port);
            }
        }
        self.sent += out.len();
        out
    }

    /// Whether an ack with `nonce` that came on `path` answers one of this
    /// run's probes, in time.
    pub fn answers(&self, nonce: u64, path: Path, now: Instant) -> bool {
        let Path::Direct(leg) = path else {
            return false;
        };
        nonce == self.nonce
            && leg.local == 0
            && leg.addr.ip() == self.ip
            && self.is_probed(leg.addr.port())
            && now.saturating_duration_since(self.last_at) < PROBE_LIFETIME
    }
}

/// The node's spare ports: open while an attempt may still be answered on
/// them.
#[derive(Default)]
pub(crate) struct Spares {
    /// When the last attempt's window closes (`None`: none open, besides
    /// the ports that carry tunnels).
    pub open_until: Option<Instant>,
    /// The ports the last release kept (they carry tunnels).
    pub kept: Vec<u16>,
}

impl Node {
    /// The hard side, its tunnel on the relay: when an attempt is due (at
    /// once, then after the backoff), a probe from every spare port to each of the peer's IPv4
    /// endpoints, dying past our NAT, and a probe request on the relay.
    pub(super) fn open_spares(&mut self, now: Instant, fqdn: &str) {
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        if peer.spray_due().is_none_or(|t| now < t) {
            return;
        }
        let targets: Vec<SocketAddr> = direct_paths(&peer)
            .map(|p| p.address())
            .filter(SocketAddr::is_ipv4)
            .collect();
        if targets.is_empty() {
            return;
        }
        peer.spray_next = now + peer.spray_backoff;
        peer.spray_backoff = (peer.spray_backoff * 2).min(SPRAY_RETRY_MAX);
        drop(peer);
        tracing::debug!(peer = %fqdn, ports = SPARE_PORTS, "birthday punching: opening spare ports");
        self.counters.spray_attempts += 1;
        for k in 1..=SPARE_PORTS {
            for &t in &targets {
                let nonce: u64 = self.rng.gen();
                let path = Path::Direct(Leg::spare(k, t));
                self.seal_to_ttl(
                    &tunnel,
                    path,
                    &Probe::Probe { nonce }.encode(),
                    Some(PUNCH_TTL),
                );
            }
        }
        self.spares.open_until = Some(now + SPARES_OPEN_FOR);
        // Twice: a lost request would waste the attempt (the easy side
        // acts on the first and ignores the second while it probes).
        for _ in 0..2 {
            let nonce: u64 = self.rng.gen();
            self.seal_to(&tunnel, tunnel.path, &Probe::Request { nonce }.encode());
        }
    }

    /// The easy side, asked over the relay: probe the hard side's public
    /// address at random ports (unless a run is under way).
    pub(super) fn start_spray(&mut self, now: Instant, fqdn: &str) {
        let nonce: u64 = self.rng.gen();
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let relayed = peer.tunnel.as_ref().is_some_and(|t| t.path.is_relay());
        let running = peer.spray.as_ref().is_some_and(|r| !r.done());
        if peer.direction.spray != Spray::Probe || !relayed || running {
            return;
        }
        let Some(ip) = direct_paths(&peer)
            .map(|p| p.address())
            .find(SocketAddr::is_ipv4)
            .map(|a| a.ip())
        else {
            return;
        };
        tracing::debug!(peer = %fqdn, %ip, "birthday punching: probing random ports");
        peer.spray = Some(SprayRun::new(nonce, ip, now));
        drop(peer);
        self.counters.spray_attempts += 1;
        self.spray_tick(now, fqdn);
    }

    /// The easy side's next batch of probes, when due.
    pub(super) fn spray_tick(&mut self, now: Instant, fqdn: &str) {
        let Some(mut peer) = self.peers.get_mut(fqdn) else {
            return;
        };
        let Some(tunnel) = peer.tunnel.clone() else {
            return;
        };
        let relayed = tunnel.path.is_relay();
        let Some(run) = peer.spray.as_mut() else {
            return;
        };
        if run.done() || now < run.next_at {
            return;
        }
        if !relayed {
            // Direct already (this run's hit, or another path): stop.
            run.sent = SPRAY_PROBES;
            return;
        }
        let ports = run.next_ports(&mut self.rng, SPRAY_BATCH);
        run.next_at = now + SPRAY_STEP;
        run.last_at = now;
        let (ip, nonce) = (run.ip, run.nonce);
        drop(peer);
        let probe = Probe::Probe { nonce }.encode();
        for port in ports {
            self.counters.spray_probes += 1;
            self.seal_to(&tunnel, Path::udp(SocketAddr::new(ip, port)), &probe);
        }
    }

    /// Closes the spare ports once the last attempt's window is over, but
    /// those that carry a tunnel; and, outside a window, a kept one no
    /// tunnel uses anymore.
    pub(super) fn spares_timer(&mut self, now: Instant) {
        match self.spares.open_until {
            Some(t) if now < t => return,
            None if self.spares.kept.is_empty() => return,
            _ => {}
        }
        let in_use = self.peers.spare_ports_in_use();
        if self.spares.open_until.is_none() && self.spares.kept.iter().all(|k| in_use.contains(k)) {
            return;
        }
        self.spares.open_until = None;
        self.spares.kept.clone_from(&in_use);
        self.out
            .events
            .push_back(NodeEvent::SparePorts { keep: in_use });
    }

    /// When [`Node::spares_timer`] has work.
    pub(super) fn spares_deadline(&self) -> Option<Instant> {
        self.spares.open_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn a_run_probes_each_port_once_within_its_budget() {
        let now = Instant::now();
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let mut run = SprayRun::new(7, ip, now);
        let mut rng = StdRng::seed_from_u64(1);
        let mut all = Vec::new();
        while !run.done() {
            let ports = run.next_ports(&mut rng, SPRAY_BATCH);
            assert!(!ports.is_empty());
            all.extend(ports);
        }
        assert_eq!(all.len(), SPRAY_PROBES);
        assert!(run.next_ports(&mut rng, SPRAY_BATCH).is_empty());
        assert!(all.iter().all(|p| *p >= LOWEST_PORT));
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "a port probed twice");
        // Acks: only for a probed port, the run's nonce, from the tunnel
        // port's path to that address, in time.
        let hit = Path::udp(SocketAddr::new(ip, all[3]));
        assert!(run.answers(7, hit, now));
        assert!(!run.answers(8, hit, now));
        let unprobed = (LOWEST_PORT..=u16::MAX)
            .find(|p| !all.contains(p))
            .expect("a port not probed");
        assert!(!run.answers(7, Path::udp(SocketAddr::new(ip, unprobed)), now));
        let other_ip = Path::udp(SocketAddr::new("203.0.113.8".parse().expect("ip"), all[3]));
        assert!(!run.answers(7, other_ip, now));
        let spare = Path::Direct(Leg::spare(3, SocketAddr::new(ip, all[3])));
        assert!(!run.answers(7, spare, now));
        assert!(!run.answers(7, hit, now + PROBE_LIFETIME));
    }

    /// The budget's promise: 256 open mappings, 2048 probes, at least
    /// 99.9 % (computed, not sampled).
    #[test]
    fn the_budget_finds_a_mapping_almost_always() {
        let ports = f64::from(u16::MAX - LOWEST_PORT + 1);
        let miss = (1.0 - f64::from(SPARE_PORTS) / ports).powi(SPRAY_PROBES as i32);
        assert!(1.0 - miss >= 0.999, "success {:.4}", 1.0 - miss);
        let time = SPRAY_STEP * (SPRAY_PROBES / SPRAY_BATCH) as u32;
        assert!(time <= Duration::from_secs(3), "{time:?} for the whole run");
    }
}
