//! `cyphonic ping` probes in flight: which control client asked and when,
//! by the probe's nonce (the ack names the peer by its tunnel).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a probe waits for its ack.
pub const PROBE_LIFETIME: Duration = Duration::from_secs(5);
/// Pings in flight at once.
pub const MAX_PINGS: usize = 64;

pub(crate) struct PendingPing {
    pub client: u64,
    pub sent: Instant,
}

#[derive(Default)]
pub(crate) struct Pings {
    by_nonce: HashMap<u64, PendingPing>,
}

impl Pings {
    /// Forgets pings whose ack can no longer come; `false` when there is
    /// still no room for another.
    pub fn make_room(&mut self, now: Instant) -> bool {
        self.by_nonce
            .retain(|_, p| now.saturating_duration_since(p.sent) < PROBE_LIFETIME);
        self.by_nonce.len() < MAX_PINGS
    }

    pub fn insert(&mut self, nonce: u64, client: u64, sent: Instant) {
        self.by_nonce.insert(nonce, PendingPing { client, sent });
    }

    /// The ping a probe's ack answers, if it was one.
    pub fn take(&mut self, nonce: u64) -> Option<PendingPing> {
        self.by_nonce.remove(&nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut p = Pings::default();
        for n in 0..MAX_PINGS as u64 {
            assert!(p.make_room(t0));
            p.insert(n, 1, t0);
        }
        assert!(!p.make_room(t0 + Duration::from_secs(1)));
        assert_eq!(p.take(3).map(|x| x.client), Some(1));
        assert!(p.take(3).is_none());
        assert!(p.make_room(t0 + Duration::from_secs(1)));
        assert!(p.make_room(t0 + PROBE_LIFETIME));
        assert!(p.take(4).is_none(), "expired");
    }
}
