//! The TRS pool as the NMS sees it: which configured TRS instances live,
//! and how loaded each is (`docs/protocol.md` §5.18).
//!
//! Each TRS sends a [`TrsReport`] every second. The pool keeps, per
//! configured instance (a group of [`relay_instances`]), its last report;
//! an instance that reported once and then stayed silent for
//! `dead_after` is *dead* and left out of new relay grants until it
//! reports again. An instance that never reported is taken as alive, as
//! every instance was before reports existed: a cloud whose TRSs do not
//! report keeps working exactly as before. When every instance is
//! silent, grants name them all: a silent pool is more likely a broken
//! path to the NMS than every relay down, and a maybe-dead relay is
//! better than none.
//!
//! # Use
//!
//! Inputs: [`TrsPool::handle_report`] for every datagram of type
//! [`TYPE_TRS_REPORT`], [`TrsPool::handle_timeout`] when
//! [`TrsPool::poll_timeout`] passes (it logs instances that died, and
//! updates [`TrsPool::live`] and [`TrsPool::dead`]). Outputs:
//! [`TrsPool::grant_order`] for each new relay grant, [`TrsPool::order`]
//! for the list a Reflect Response names. No clock: `now`, and the wall
//! clock as Unix microseconds, are the caller's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cyphonic_proto::trs_report::{report_key, TrsReport, TrsReportError, TYPE_TRS_REPORT};

use crate::nms::relay_instances;

/// How far a report's `sent` may be from the NMS's wall clock. It bounds
/// replays after an NMS restart (which forgets the last `sent` of each
/// instance): a captured report keeps a dead TRS alive at most this long.
pub const MAX_REPORT_SKEW: Duration = Duration::from_secs(60);

/// Why a report was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportDrop {
    Invalid(TrsReportError),
    /// `sent` not after the instance's last report.
    Replay {
        sent: u64,
        last: u64,
    },
    /// `sent` more than [`MAX_REPORT_SKEW`] from the NMS's clock.
    Skew {
        sent: u64,
        unix_micros: u64,
    },
    /// Authentic, but names no configured TRS.
    Unknown(Vec<SocketAddr>),
}

impl From<TrsReportError> for ReportDrop {
    fn from(e: TrsReportError) -> Self {
        ReportDrop::Invalid(e)
    }
}

impl std::fmt::Display for ReportDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportDrop::Invalid(e) => e.fmt(f),
            ReportDrop::Replay { sent, last } => write!(
                f,
                "sent at {sent} µs, not after the instance's last report ({last} µs)"
            ),
            ReportDrop::Skew { sent, unix_micros } => write!(
                f,
                "sent at {sent} µs, more than {MAX_REPORT_SKEW:?} from this clock ({unix_micros} µs)"
            ),
            ReportDrop::Unknown(addrs) => write!(f, "names no configured TRS: {addrs:?}"),
        }
    }
}

/// What the pool counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounters {
    /// Reports taken.
    pub reports: u64,
    /// Reports dropped: malformed, a wrong MAC, replayed or too far from
    /// the clock.
    pub reports_bad: u64,
    /// Authentic reports of a TRS whose addresses no configured instance
    /// has (the TRS's `trs_listen` / `public_addrs` and the NMS's
    /// `trs_public` disagree).
    pub reports_unknown: u64,
}

struct Instance {
    /// Its relay addresses, at most one per IP version.
    addrs: Vec<SocketAddr>,
    /// When its last report was taken (`None`: never).
    last_report: Option<Instant>,
    /// `sent` of that report.
    last_sent: u64,
    /// Sessions and bytes it reported.
    sessions: u64,
    forwarded_bytes: u64,
    /// Grants naming it first since its last report (since the start
    /// when it never reported).
    handed: u64,
    /// Found dead by the last [`TrsPool::handle_timeout`].
    dead: bool,
}

impl Instance {
    fn alive(&self, now: Instant, dead_after: Duration) -> bool {
        self.last_report
            .is_none_or(|t| now.saturating_duration_since(t) < dead_after)
    }

    /// Relay sessions it holds, as far as the NMS knows: the reported
    /// ones, plus one for each grant handed out since.
    fn load(&self) -> u64 {
        self.sessions.saturating_add(self.handed)
    }
}

pub struct TrsPool {
    key: [u8; 32],
    dead_after: Duration,
    instances: Vec<Instance>,
    counters: PoolCounters,
}

impl Drop for TrsPool {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl TrsPool {
    /// The pool of the TRS addresses `servers` (`trs_public`, instances
    /// grouped by [`relay_instances`]), whose reports are authenticated
    /// with a key from the relay `secret`.
    pub fn new(servers: &[SocketAddr], secret: &[u8], dead_after: Duration) -> Self {
        Self {
            key: report_key(secret),
            dead_after,
            instances: relay_instances(servers)
                .into_iter()
                .map(|addrs| Instance {
                    addrs,
                    last_report: None,
                    last_sent: 0,
                    sessions: 0,
                    forwarded_bytes: 0,
                    handed: 0,
                    dead: false,
                })
                .collect(),
            counters: PoolCounters::default(),
        }
    }

    /// A TRS Report arrived (`unix_micros`: the wall clock now). Cheap
    /// checks first, then the MAC, then the replay rule: `sent` must be
    /// later than the instance's last report, and within
    /// [`MAX_REPORT_SKEW`] of the clock. Returns the instance's index.
    pub fn handle_report(
        &mut self,
        now: Instant,
        unix_micros: u64,
        packet: &[u8],
    ) -> Result<usize, ReportDrop> {
        let result = self.take(now, unix_micros, packet);
        match &result {
            Ok(_) => self.counters.reports += 1,
            Err(ReportDrop::Unknown(_)) => self.counters.reports_unknown += 1,
            Err(_) => self.counters.reports_bad += 1,
        }
        result
    }

    fn take(&mut self, now: Instant, unix_micros: u64, packet: &[u8]) -> Result<usize, ReportDrop> {
        let report = TrsReport::open(packet, &self.key)?;
        if report.sent.abs_diff(unix_micros) > MAX_REPORT_SKEW.as_micros() as u64 {
            return Err(ReportDrop::Skew {
                sent: report.sent,
                unix_micros,
            });
        }
        let Some(i) = self
            .instances
            .iter()
            .position(|inst| report.relays.iter().any(|a| inst.addrs.contains(a)))
        else {
            return Err(ReportDrop::Unknown(report.relays));
        };
        let inst = &mut self.instances[i];
        if report.sent <= inst.last_sent {
            return Err(ReportDrop::Replay {
                sent: report.sent,
                last: inst.last_sent,
            });
        }
        if inst.dead || inst.last_report.is_none() {
            tracing::info!(trs = ?inst.addrs, sessions = report.sessions, "TRS reporting: alive");
        }
        inst.last_report = Some(now);
        inst.last_sent = report.sent;
        inst.sessions = report.sessions;
        inst.forwarded_bytes = report.forwarded_bytes;
        inst.handed = 0;
        inst.dead = false;
        Ok(i)
    }

    /// When the next live instance turns dead if it stays silent.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.instances
            .iter()
            .filter(|i| !i.dead)
            .filter_map(|i| i.last_report)
            .map(|t| t + self.dead_after)
            .min()
    }

    /// Marks the instances silent for `dead_after` dead (logged once each).
    pub fn handle_timeout(&mut self, now: Instant) {
        for inst in &mut self.instances {
            if !inst.dead && !inst.alive(now, self.dead_after) {
                inst.dead = true;
                tracing::warn!(trs = ?inst.addrs, silent = ?self.dead_after, "TRS silent: left out of new relay grants");
            }
        }
    }

    /// The TRS list for a new grant: the live instances, least loaded
    /// first (ties in configured order), each with its addresses; every
    /// instance when none lives. The first instance counts the grant.
    pub fn grant_order(&mut self, now: Instant) -> Vec<SocketAddr> {
        let order = self.ranked(now);
        if let Some(&first) = order.first() {
            self.instances[first].handed += 1;
        }
        self.flatten(&order)
    }

    /// The same list without counting a grant (for Reflect Responses).
    pub fn order(&self, now: Instant) -> Vec<SocketAddr> {
        self.flatten(&self.ranked(now))
    }

    fn ranked(&self, now: Instant) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.instances.len())
            .filter(|&i| self.instances[i].alive(now, self.dead_after))
            .collect();
        if order.is_empty() {
            order = (0..self.instances.len()).collect();
        }
        order.sort_by_key(|&i| (self.instances[i].load(), i));
        order
    }

    fn flatten(&self, order: &[usize]) -> Vec<SocketAddr> {
        order
            .iter()
            .flat_map(|&i| self.instances[i].addrs.iter().copied())
            .collect()
    }

    pub fn counters(&self) -> PoolCounters {
        self.counters
    }

    /// Instances whose last report is fresh (as of the last input).
    pub fn live(&self) -> u64 {
        self.instances
            .iter()
            .filter(|i| i.last_report.is_some() && !i.dead)
            .count() as u64
    }

    /// Instances that reported once and then fell silent.
    pub fn dead(&self) -> u64 {
        self.instances.iter().filter(|i| i.dead).count() as u64
    }

    /// Per instance: its addresses, whether it ever reported, its last
    /// reported sessions and forwarded bytes (for logs and tests).
    pub fn reported(&self) -> Vec<(Vec<SocketAddr>, bool, u64, u64)> {
        self.instances
            .iter()
            .map(|i| {
                (
                    i.addrs.clone(),
                    i.last_report.is_some(),
                    i.sessions,
                    i.forwarded_bytes,
                )
            })
            .collect()
    }
}

/// A TRS's side of reporting: writes its reports, each `sent` later than
/// the one before even when the wall clock steps back.
pub struct TrsReporter {
    key: [u8; 32],
    relays: Vec<SocketAddr>,
    last_sent: u64,
}

impl Drop for TrsReporter {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// How often a TRS reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

impl TrsReporter {
    /// A reporter for the TRS serving `relays` (its public relay
    /// addresses), with a key from the relay `secret`.
    pub fn new(secret: &[u8], relays: Vec<SocketAddr>) -> Self {
        Self {
            key: report_key(secret),
            relays,
            last_sent: 0,
        }
    }

    /// The next report, for a TRS holding `sessions` that forwarded
    /// `forwarded_bytes`, at wall-clock `unix_micros`.
    pub fn report(&mut self, unix_micros: u64, sessions: u64, forwarded_bytes: u64) -> Vec<u8> {
        self.last_sent = unix_micros.max(self.last_sent + 1);
        TrsReport {
            sent: self.last_sent,
            sessions,
            forwarded_bytes,
            relays: self.relays.clone(),
        }
        .encode(&self.key)
    }
}

/// Whether a datagram is a TRS Report (by its type byte).
pub fn is_report(packet: &[u8]) -> bool {
    packet.first() == Some(&TYPE_TRS_REPORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = &[7; 32];
    const UNIX: u64 = 1_900_000_000_000_000;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn servers() -> Vec<SocketAddr> {
        vec![
            a("192.0.2.1:4503"),
            a("[2001:db8::1]:4503"),
            a("192.0.2.2:4503"),
            a("[2001:db8::2]:4503"),
        ]
    }

    fn t1() -> TrsReporter {
        TrsReporter::new(SECRET, vec![a("192.0.2.1:4503"), a("[2001:db8::1]:4503")])
    }

    fn t2() -> TrsReporter {
        TrsReporter::new(SECRET, vec![a("192.0.2.2:4503"), a("[2001:db8::2]:4503")])
    }

    fn micros(start: Instant, now: Instant) -> u64 {
        UNIX + now.duration_since(start).as_micros() as u64
    }

    /// Drives the pool with both TRSs reporting every second until
    /// `until`, T2 only until `t2_stops`; returns when T2 left the grants.
    #[test]
    fn a_silent_trs_leaves_the_grants_within_dead_after_and_comes_back() {
        let start = Instant::now();
        let dead_after = Duration::from_secs(3);
        let mut pool = TrsPool::new(&servers(), SECRET, dead_after);
        let (mut r1, mut r2) = (t1(), t2());
        let mut now = start;
        // Both report for 5 s: both in every grant.
        let step = Duration::from_millis(100);
        let mut last_t2 = now;
        while now < start + Duration::from_secs(5) {
            if (now - start).as_millis().is_multiple_of(1000) {
                let p = r1.report(micros(start, now), 0, 0);
                assert_eq!(pool.handle_report(now, micros(start, now), &p), Ok(0));
                let p = r2.report(micros(start, now), 0, 0);
                assert_eq!(pool.handle_report(now, micros(start, now), &p), Ok(1));
                last_t2 = now;
            }
            assert_eq!(pool.order(now).len(), 4);
            now += step;
        }
        assert_eq!((pool.live(), pool.dead()), (2, 0));
        // T2 falls silent; T1 keeps reporting. Step the timer as the NMS
        // shell would.
        let died = loop {
            if (now - start).as_millis().is_multiple_of(1000) {
                let p = r1.report(micros(start, now), 0, 0);
                pool.handle_report(now, micros(start, now), &p).unwrap();
            }
            if pool.poll_timeout().is_some_and(|t| t <= now) {
                pool.handle_timeout(now);
            }
            if !pool.order(now).contains(&a("192.0.2.2:4503")) {
                break now;
            }
            assert!(now < start + Duration::from_secs(20), "T2 never left");
            now += step;
        };
        let silent = died - last_t2;
        assert!(
            silent <= dead_after && silent > dead_after - Duration::from_secs(1),
            "left after {silent:?}"
        );
        assert_eq!(
            pool.grant_order(now),
            vec![a("192.0.2.1:4503"), a("[2001:db8::1]:4503")]
        );
        assert_eq!((pool.live(), pool.dead()), (1, 1));
        // It reports again: back in the grants at once.
        let p = r2.report(micros(start, now), 0, 0);
        assert_eq!(pool.handle_report(now, micros(start, now), &p), Ok(1));
        assert_eq!(pool.order(now).len(), 4);
        assert_eq!((pool.live(), pool.dead()), (2, 0));
        assert_eq!(pool.counters().reports_bad, 0);
    }

    #[test]
    fn every_trs_silent_keeps_the_whole_list_and_silent_ones_never_reported_count_alive() {
        let start = Instant::now();
        let mut pool = TrsPool::new(&servers(), SECRET, Duration::from_secs(3));
        // Nobody ever reported: as before reports existed, both listed
        // and routes spread over them by the grants handed out.
        let later = start + Duration::from_secs(3600);
        let firsts: Vec<SocketAddr> = (0..4).map(|_| pool.grant_order(later)[0]).collect();
        assert_eq!(
            firsts,
            [servers()[0], servers()[2], servers()[0], servers()[2]]
        );
        // T1 reports once, then both are silent: T1 dead, T2 unknown.
        let p = t1().report(UNIX, 0, 0);
        pool.handle_report(start, UNIX, &p).unwrap();
        let now = start + Duration::from_secs(4);
        pool.handle_timeout(now);
        assert_eq!(pool.order(now), servers()[2..].to_vec());
        // Both reported once and both silent: the whole list.
        let p = t2().report(UNIX + 1, 0, 0);
        pool.handle_report(start, UNIX + 1, &p).unwrap();
        pool.handle_timeout(now);
        assert_eq!((pool.live(), pool.dead()), (0, 2));
        assert_eq!(pool.order(now).len(), 4);
    }

    #[test]
    fn the_least_loaded_live_trs_comes_first() {
        let now = Instant::now();
        let mut pool = TrsPool::new(&servers(), SECRET, Duration::from_secs(3));
        let p = t1().report(UNIX, 10, 5_000);
        pool.handle_report(now, UNIX, &p).unwrap();
        let p = t2().report(UNIX, 3, 9_000);
        pool.handle_report(now, UNIX, &p).unwrap();
        // T2 carries 3 sessions, T1 10: the next 7 grants go to T2 first,
        // then they alternate (ties in configured order).
        let firsts: Vec<SocketAddr> = (0..10).map(|_| pool.grant_order(now)[0]).collect();
        let t2 = servers()[2];
        let t1 = servers()[0];
        assert_eq!(firsts, [t2, t2, t2, t2, t2, t2, t2, t1, t2, t1]);
        // Every grant still names both, for failover.
        assert_eq!(pool.grant_order(now).len(), 4);
        assert_eq!(
            pool.reported(),
            vec![
                (servers()[..2].to_vec(), true, 10, 5_000),
                (servers()[2..].to_vec(), true, 3, 9_000)
            ]
        );
    }

    #[test]
    fn bad_macs_replays_skewed_clocks_and_garbage_are_counted_and_change_nothing() {
        let now = Instant::now();
        let mut pool = TrsPool::new(&servers(), SECRET, Duration::from_secs(3));
        let mut r1 = t1();
        let first = r1.report(UNIX, 0, 0);
        assert_eq!(pool.handle_report(now, UNIX, &first), Ok(0));
        // The same report again, and an older one: replays.
        assert!(matches!(
            pool.handle_report(now, UNIX, &first),
            Err(ReportDrop::Replay { .. })
        ));
        // Another secret.
        let mut forger = TrsReporter::new(&[8; 32], vec![a("192.0.2.2:4503")]);
        assert!(matches!(
            pool.handle_report(now, UNIX, &forger.report(UNIX + 5, 0, 0)),
            Err(ReportDrop::Invalid(TrsReportError::BadMac))
        ));
        // One byte changed.
        let mut flipped = r1.report(UNIX + 10, 0, 0);
        flipped[15] ^= 1;
        assert!(pool.handle_report(now, UNIX, &flipped).is_err());
        // Two minutes off the clock, either way.
        let skewed = r1.report(UNIX + 120_000_000, 0, 0);
        assert!(matches!(
            pool.handle_report(now, UNIX, &skewed),
            Err(ReportDrop::Skew { .. })
        ));
        let mut old = TrsReporter::new(SECRET, vec![a("192.0.2.1:4503")]);
        let past = old.report(UNIX - 120_000_000, 0, 0);
        assert!(pool.handle_report(now, UNIX, &past).is_err());
        // Garbage of every length, and nothing at all.
        for len in 0..200 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 13) as u8).collect();
            let mut typed = junk.clone();
            if let Some(b) = typed.first_mut() {
                *b = TYPE_TRS_REPORT;
            }
            assert!(pool.handle_report(now, UNIX, &junk).is_err());
            assert!(pool.handle_report(now, UNIX, &typed).is_err());
        }
        // An authentic report of a TRS the NMS does not know.
        let mut stranger = TrsReporter::new(SECRET, vec![a("198.51.100.9:4503")]);
        assert!(matches!(
            pool.handle_report(now, UNIX, &stranger.report(UNIX, 0, 0)),
            Err(ReportDrop::Unknown(_))
        ));
        let c = pool.counters();
        assert_eq!(c.reports, 1);
        assert_eq!(c.reports_unknown, 1);
        // replay, forged, flipped, two skewed, 400 garbage.
        assert_eq!(c.reports_bad, 5 + 2 * 200);
        // The good report still stands; the replayed one did not refresh
        // it: T1 dies 3 s after its one report.
        pool.handle_timeout(now + Duration::from_secs(3));
        assert_eq!(pool.dead(), 1);
    }

    #[test]
    fn report_keys_are_wiped_on_drop() {
        let pool = TrsPool::new(&servers(), SECRET, Duration::from_secs(3));
        assert_ne!(pool.key, [0; 32]);
        assert_eq!(cyphonic_proto::key_bytes_after_drop!(pool, key), [0; 32]);
        let reporter = t1();
        assert_ne!(reporter.key, [0; 32]);
        assert_eq!(
            cyphonic_proto::key_bytes_after_drop!(reporter, key),
            [0; 32]
        );
    }

    #[test]
    fn a_reporter_never_repeats_sent_when_the_clock_steps_back() {
        let mut r = t1();
        let a = TrsReport::parse(&r.report(UNIX, 0, 0)).unwrap().sent;
        let b = TrsReport::parse(&r.report(UNIX - 5_000_000, 0, 0))
            .unwrap()
            .sent;
        assert_eq!(b, a + 1);
    }
}
