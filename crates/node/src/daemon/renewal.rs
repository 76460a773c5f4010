//! When the daemon renews its node certificate (`docs/protocol.md` §3.3):
//! a pure schedule, wall-clock times in, times out.
//!
//! A certificate is renewed two thirds into its lifetime
//! ([`CertLife::renew_at`]); the AS renews none younger than a third, so
//! a node whose clock is off by less than a third of the lifetime is never
//! refused for being early. A failed attempt is tried again after a
//! backoff that starts at [`FIRST_RETRY`] and doubles up to
//! [`retry_cap`] (a twelfth of the lifetime, at most [`MAX_RETRY`]); a
//! refusal (the AS said no: the next attempt is unlikely to fare better
//! soon) waits the cap at once. Retries stop when the certificate has
//! expired: then the node must be enrolled again.
//!
//! # Use
//!
//! [`Renewal::new`] with the certificate's validity; ask
//! [`Renewal::next_attempt`] when to try (none: expired); report each
//! attempt with [`Renewal::handle_renewed`] (the new certificate's
//! validity) or [`Renewal::handle_failure`].

use std::time::{Duration, SystemTime};

use cyphonic_proto::login::CertLife;

/// The wait after the first failed renewal.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between renewal attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The AS was not reached, failed on its side, or its answer was
    /// unusable: try again soon.
    Unreachable,
    /// The AS refused (too early by its clock, certificate rejected,
    /// device disabled, already renewed): try again at the longest wait.
    Refused,
}

/// The renewal schedule of one certificate after another.
#[derive(Debug, Clone)]
pub struct Renewal {
    life: CertLife,
    /// When to try next.
    next: SystemTime,
    /// The wait after the next unreachable attempt.
    backoff: Duration,
    renewals: u64,
    failures: u64,
    last_error: Option<String>,
}

/// The schedule's state, for `cyphonic status --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalStatus {
    /// Unix seconds.
    pub not_after: u64,
    /// When the next attempt is due (Unix seconds); none once expired.
    pub next_attempt: Option<u64>,
    /// Certificates renewed in this run.
    pub renewals: u64,
    /// Failed attempts in this run.
    pub failures: u64,
    /// Why the last attempt failed, if it did and none succeeded since.
    pub last_error: Option<String>,
}

impl Renewal {
    /// The schedule of a certificate valid from `not_before` to
    /// `not_after`.
    pub fn new(not_before: SystemTime, not_after: SystemTime) -> Renewal {
        let life = CertLife::of(not_before, not_after);
        Renewal {
            life,
            next: life.renew_at(),
            backoff: FIRST_RETRY,
            renewals: 0,
            failures: 0,
            last_error: None,
        }
    }

    /// When to try renewing next; `None` once the certificate has expired
    /// by then (no retry can help: the AS refuses an expired certificate).
    pub fn next_attempt(&self) -> Option<SystemTime> {
        (self.next < self.life.not_after).then_some(self.next)
    }

    /// Whether an attempt is due at `now`.
    pub fn is_due(&self, now: SystemTime) -> bool {
        self.next_attempt().is_some_and(|t| t <= now)
    }

    /// The current certificate's notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.life.not_after
    }

    /// Certificates renewed so far.
    pub fn renewals(&self) -> u64 {
        self.renewals
    }

    /// A renewal succeeded with a certificate valid from `not_before` to
    /// `not_after`: its schedule starts, the backoff starts over.
    pub fn handle_renewed(&mut self, not_before: SystemTime, not_after: SystemTime) {
        self.life = CertLife::of(not_before, not_after);
        self.next = self.life.renew_at();
        self.backoff = FIRST_RETRY;
        self.renewals += 1;
        self.last_error = None;
    }

    /// An attempt at `now` failed (`why` for the status); returns the wait
    /// until the next one.
    pub fn handle_failure(&mut self, now: SystemTime, failure: Failure, why: String) -> Duration {
        let cap = retry_cap(self.life.lifetime());
        let wait = match failure {
            Failure::Unreachable => self.backoff.min(cap),
            Failure::Refused => cap,
        };
        self.backoff = (self.backoff * 2).min(cap);
        self.next = now + wait;
        self.failures += 1;
        self.last_error = Some(why);
        wait
    }

    pub fn status(&self) -> RenewalStatus {
        RenewalStatus {
            not_after: unix_secs(self.life.not_after),
            next_attempt: self.next_attempt().map(unix_secs),
            renewals: self.renewals,
            failures: self.failures,
            last_error: self.last_error.clone(),
        }
    }
}

/// The longest wait between attempts for a certificate of `lifetime`: a
/// twelfth of it (four tries in the last third at the least), between
/// [`FIRST_RETRY`] and [`MAX_RETRY`].
pub fn retry_cap(lifetime: Duration) -> Duration {
    (lifetime / 12).clamp(FIRST_RETRY, MAX_RETRY)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_proto::login::CERT_BACKDATE;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    /// The schedule of a certificate issued at `at(issued)` for `secs`,
    /// backdated as the AS does.
    fn issued(issued: u64, secs: u64) -> Renewal {
        Renewal::new(at(issued) - CERT_BACKDATE, at(issued + secs))
    }

    #[test]
    fn renews_at_two_thirds_of_a_minute_and_of_ninety_days() {
        let r = issued(0, 60);
        assert_eq!(r.next_attempt(), Some(at(40)));
        assert!(!r.is_due(at(39)));
        assert!(r.is_due(at(40)));
        let days = 90 * 86_400;
        let r = issued(0, days);
        assert_eq!(r.next_attempt(), Some(at(60 * 86_400)));
        // A node started late in its certificate's life renews at once.
        assert!(issued(0, 60).is_due(at(55)));
    }

    #[test]
    fn failures_back_off_doubling_to_a_twelfth_of_the_lifetime() {
        let mut r = issued(0, 60);
        // A twelfth of a minute is 5 s.
        let waits: Vec<u64> = (0..4)
            .map(|i| {
                r.handle_failure(at(40 + i), Failure::Unreachable, "no route".into())
                    .as_secs()
            })
            .collect();
        assert_eq!(waits, [2, 4, 5, 5]);
        assert_eq!(r.next_attempt(), Some(at(43 + 5)));
        let s = r.status();
        assert_eq!((s.failures, s.renewals), (4, 0));
        assert_eq!(s.last_error.as_deref(), Some("no route"));

        // Ninety days: 2 s doubling up to an hour.
        let mut r = issued(0, 90 * 86_400);
        let now = at(60 * 86_400);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = r.handle_failure(now, Failure::Unreachable, "down".into());
        }
        assert_eq!(last, MAX_RETRY);
        assert_eq!(retry_cap(Duration::from_secs(12)), FIRST_RETRY);
    }

    #[test]
    fn a_refusal_waits_the_longest_and_success_starts_over() {
        let mut r = issued(0, 60);
        let wait = r.handle_failure(at(40), Failure::Refused, "renewal_too_early".into());
        assert_eq!(wait, Duration::from_secs(5));
        assert_eq!(r.next_attempt(), Some(at(45)));

        // Renewed at 46 for another minute.
        r.handle_renewed(at(46) - CERT_BACKDATE, at(106));
        assert_eq!(r.next_attempt(), Some(at(86)));
        assert_eq!(r.not_after(), at(106));
        let s = r.status();
        assert_eq!(s.renewals, 1);
        assert_eq!(s.last_error, None);
        assert_eq!(s.not_after, (T0 + Duration::from_secs(106)).as_secs());
        // The backoff started over.
        let wait = r.handle_failure(at(86), Failure::Unreachable, "x".into());
        assert_eq!(wait, FIRST_RETRY);
    }

    #[test]
    fn no_attempt_after_expiry() {
        let mut r = issued(0, 60);
        r.handle_failure(at(58), Failure::Unreachable, "x".into());
        assert_eq!(r.next_attempt(), None, "58 + 2 is the expiry");
        assert!(!r.is_due(at(61)));
        assert_eq!(r.status().next_attempt, None);
    }
}
