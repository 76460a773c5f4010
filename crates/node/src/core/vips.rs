//! Packets to VIPs of the overlay that no peer holds yet: an application
//! sent to an address nobody looked up by name (typed by hand, in a
//! configuration file, cached across a restart). The first one starts
//! route selection by VIP (a Direction Request by VIP); the packets wait
//! here until the route is directed, then join the peer's queue, or are
//! dropped when the NMS knows no such VIP.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// VIPs asked for at once: a scan of the VIP range holds no more.
pub const MAX_VIP_WAITS: usize = 64;
/// VIPs the NMS said nobody holds, remembered so a retrying application
/// does not turn every packet into a Direction Request.
pub const MAX_VIP_NEGATIVE: usize = 1024;
/// How long "nobody holds it" stands: short, since a device that comes
/// online should be reachable at once.
pub const VIP_NEGATIVE_LIFETIME: Duration = Duration::from_secs(3);

/// What became of a packet handed to [`VipWaits::hold`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The first packet for the VIP: ask the NMS who holds it.
    Ask,
    /// Held behind earlier ones; the question is asked already.
    Held,
    /// Dropped: the VIP's queue, or the table, is full.
    Full,
    /// Dropped: the NMS said lately that nobody holds the VIP.
    Unknown,
}

/// A held packet and its place in the order packets came.
type Held = (u64, Vec<u8>);

#[derive(Default)]
pub(crate) struct VipWaits {
    /// Per VIP: since when it is asked for, and the packets held with
    /// their place in the order they came.
    waiting: BTreeMap<IpAddr, (Instant, Vec<Held>)>,
    next_seq: u64,
    /// VIPs nobody holds, and since when (oldest first).
    negative: VecDeque<(IpAddr, Instant)>,
}

impl VipWaits {
    /// Holds `packet` for `vip`, at most `max_queued` per VIP.
    pub fn hold(&mut self, now: Instant, vip: IpAddr, packet: &[u8], max_queued: usize) -> Hold {
        if self
            .negative
            .iter()
            .any(|(v, at)| *v == vip && now < *at + VIP_NEGATIVE_LIFETIME)
        {
            return Hold::Unknown;
        }
        if let Some((_, held)) = self.waiting.get_mut(&vip) {
            if held.len() >= max_queued {
                return Hold::Full;
            }
            held.push((self.next_seq, packet.to_vec()));
            self.next_seq += 1;
            return Hold::Held;
        }
        if self.waiting.len() >= MAX_VIP_WAITS {
            return Hold::Full;
        }
        self.waiting
            .insert(vip, (now, vec![(self.next_seq, packet.to_vec())]));
        self.next_seq += 1;
        Hold::Ask
    }

    /// The packets held for any of `vips`, which one route now serves, in
    /// the order they came.
    pub fn take(&mut self, vips: &[IpAddr]) -> Vec<Vec<u8>> {
        let mut held: Vec<Held> = vips
            .iter()
            .filter_map(|v| self.waiting.remove(v))
            .flat_map(|(_, p)| p)
            .collect();
        held.sort_by_key(|(seq, _)| *seq);
        held.into_iter().map(|(_, p)| p).collect()
    }

    /// Route selection for `vip` failed: its packets are dropped (their
    /// number is returned); with `unknown`, the NMS said nobody holds it.
    pub fn fail(&mut self, now: Instant, vip: IpAddr, unknown: bool) -> usize {
        self.negative.retain(|(v, _)| *v != vip);
        if unknown {
            if self.negative.len() >= MAX_VIP_NEGATIVE {
                self.negative.pop_front();
            }
            self.negative.push_back((vip, now));
        }
        self.take(&[vip]).len()
    }

    /// The VIPs asked for.
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.waiting.keys().copied()
    }

    /// When the oldest question will have waited `wait`.
    pub fn next_expiry(&self, wait: Duration) -> Option<Instant> {
        self.waiting.values().map(|(since, _)| *since + wait).min()
    }

    /// The VIPs asked for `wait` or longer at `now`.
    pub fn expired(&self, now: Instant, wait: Duration) -> Vec<IpAddr> {
        self.waiting
            .iter()
            .filter(|(_, (since, _))| now >= *since + wait)
            .map(|(v, _)| *v)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(n: u8) -> IpAddr {
        IpAddr::from([100, 64, 0, n])
    }

    #[test]
    fn the_first_packet_asks_and_later_ones_wait_bounded() {
        let now = Instant::now();
        let mut w = VipWaits::default();
        assert_eq!(w.hold(now, vip(3), b"a", 2), Hold::Ask);
        assert_eq!(w.hold(now, vip(3), b"b", 2), Hold::Held);
        assert_eq!(w.hold(now, vip(3), b"c", 2), Hold::Full);
        assert_eq!(w.take(&[vip(3)]), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(w.take(&[vip(3)]).is_empty());
        assert_eq!(w.hold(now, vip(3), b"d", 2), Hold::Ask, "asked anew");
    }

    #[test]
    fn packets_for_both_vips_of_a_peer_keep_their_order() {
        let now = Instant::now();
        let mut w = VipWaits::default();
        let v6: IpAddr = "fd7a:6379:7068::3".parse().unwrap();
        w.hold(now, vip(3), b"1", 8);
        w.hold(now, v6, b"2", 8);
        w.hold(now, vip(3), b"3", 8);
        assert_eq!(
            w.take(&[vip(3), v6]),
            vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
        );
    }

    #[test]
    fn the_table_of_vips_is_bounded() {
        let now = Instant::now();
        let mut w = VipWaits::default();
        for i in 0..MAX_VIP_WAITS {
            let v = IpAddr::from([100, 64, 1, i as u8]);
            assert_eq!(w.hold(now, v, b"x", 8), Hold::Ask);
        }
        assert_eq!(w.hold(now, vip(1), b"x", 8), Hold::Full);
        assert_eq!(w.vips().count(), MAX_VIP_WAITS);
    }

    #[test]
    fn an_unknown_vip_is_dropped_for_a_while_then_asked_again() {
        let now = Instant::now();
        let mut w = VipWaits::default();
        assert_eq!(w.hold(now, vip(9), b"a", 8), Hold::Ask);
        assert_eq!(w.hold(now, vip(9), b"b", 8), Hold::Held);
        assert_eq!(w.fail(now, vip(9), true), 2);
        assert_eq!(w.hold(now, vip(9), b"c", 8), Hold::Unknown);
        let later = now + VIP_NEGATIVE_LIFETIME;
        assert_eq!(w.hold(later, vip(9), b"d", 8), Hold::Ask);
        // A failure that says nothing about the VIP (a timeout) leaves no
        // mark.
        assert_eq!(w.fail(later, vip(9), false), 1);
        assert_eq!(w.hold(later, vip(9), b"e", 8), Hold::Ask);
    }

    #[test]
    fn questions_expire_oldest_first() {
        let now = Instant::now();
        let mut w = VipWaits::default();
        w.hold(now, vip(1), b"a", 8);
        w.hold(now + Duration::from_secs(1), vip(2), b"b", 8);
        let wait = Duration::from_secs(5);
        assert_eq!(w.next_expiry(wait), Some(now + wait));
        assert_eq!(w.expired(now + wait, wait), vec![vip(1)]);
    }
}
