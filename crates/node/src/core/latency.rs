//! Latency histograms for `cyphonic status` and `/metrics`: a count per
//! bucket of fixed upper bounds, read out cumulatively as Prometheus's
//! `le` buckets are (a latency equal to a bound falls in that bound's
//! bucket), with the sum and count beside them.

use std::time::Duration;

/// Upper bounds, in milliseconds, of route selection's buckets: 1-2-5
/// steps from 1 ms (an NMS on the same link) to 10 s (twice the 5 s a
/// Direction Request waits by default). Anything longer is counted above
/// every bound (`+Inf`).
pub const ROUTE_SELECTION_BOUNDS_MS: [u64; 13] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Ascending upper bounds, in milliseconds.
    bounds_ms: &'static [u64],
    /// Observations per bucket, not cumulative; one more than there are
    /// bounds, the last for those above every bound.
    counts: Vec<u64>,
    sum: Duration,
}

impl LatencyHistogram {
    pub fn new(bounds_ms: &'static [u64]) -> Self {
        debug_assert!(bounds_ms.windows(2).all(|w| w[0] < w[1]), "ascending");
        LatencyHistogram {
            bounds_ms,
            counts: vec![0; bounds_ms.len() + 1],
            sum: Duration::ZERO,
        }
    }

    /// One latency, in the bucket of the smallest bound not below it.
    pub fn observe(&mut self, latency: Duration) {
        let bucket = self
            .bounds_ms
            .partition_point(|&b| Duration::from_millis(b) < latency);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(latency);
    }

    /// Latencies observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their sum.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// Each bound (ms) with how many latencies were at most that long.
    /// The bucket above every bound is left out: it holds [`Self::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.bounds_ms
            .iter()
            .zip(self.counts.iter().scan(0, |total, c| {
                *total += c;
                Some(*total)
            }))
            .map(|(b, c)| (*b, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_latency_lands_in_the_bucket_of_the_first_bound_not_below_it() {
        let mut h = LatencyHistogram::new(&ROUTE_SELECTION_BOUNDS_MS);
        assert_eq!(h.count(), 0);
        assert!(h.cumulative().all(|(_, c)| c == 0));
        for latency in [
            Duration::from_micros(300), // le 1
            ms(1),                      // le 1: a bound is inclusive
            Duration::from_micros(1_001),
            ms(35),     // le 50
            ms(50),     // le 50
            ms(9_999),  // le 10000
            ms(10_001), // +Inf
            ms(60_000), // +Inf
        ] {
            h.observe(latency);
        }
        let got: Vec<(u64, u64)> = h.cumulative().collect();
        assert_eq!(
            got,
            vec![
                (1, 2),
                (2, 3),
                (5, 3),
                (10, 3),
                (20, 3),
                (50, 5),
                (100, 5),
                (200, 5),
                (500, 5),
                (1_000, 5),
                (2_000, 5),
                (5_000, 5),
                (10_000, 6),
            ]
        );
        assert_eq!(h.count(), 8, "+Inf holds every latency");
        assert_eq!(
            h.sum(),
            Duration::from_micros(300 + 1_000 + 1_001) + ms(35 + 50 + 9_999 + 10_001 + 60_000)
        );
    }

    #[test]
    fn counts_never_go_down_and_the_last_bound_at_most_the_count() {
        let mut h = LatencyHistogram::new(&ROUTE_SELECTION_BOUNDS_MS);
        for i in 0..200u64 {
            h.observe(Duration::from_micros(i * i * 397));
        }
        let counts: Vec<u64> = h.cumulative().map(|(_, c)| c).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert!(counts.last().is_some_and(|&c| c <= h.count()));
        assert_eq!(h.count(), 200);
    }
}
