//! A timer table: one deadline per key, ordered by time, so the earliest
//! is found in O(log n) and the due ones without a scan of everything.
//!
//! A part that owns many timers (the signaling requests, the peers) keeps
//! one table beside its state and sets a key's deadline whenever that
//! state changes; [`Timers::next`] then feeds `poll_timeout` and
//! [`Timers::due`] tells `handle_timeout` whom to wake.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

#[derive(Debug)]
pub struct Timers<K: Ord + Clone> {
    at: BTreeMap<K, Instant>,
    order: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Clone> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            at: BTreeMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> Timers<K> {
    /// Sets `key`'s deadline (`None`: it has none), replacing any earlier.
    pub fn set(&mut self, key: K, deadline: Option<Instant>) {
        if self.at.get(&key).copied() == deadline {
            return;
        }
        if let Some(old) = self.at.remove(&key) {
            self.order.remove(&(old, key.clone()));
        }
        if let Some(t) = deadline {
            self.at.insert(key.clone(), t);
            self.order.insert((t, key));
        }
    }

    pub fn remove(&mut self, key: &K) {
        if let Some(old) = self.at.remove(key) {
            self.order.remove(&(old, key.clone()));
        }
    }

    pub fn clear(&mut self) {
        self.at.clear();
        self.order.clear();
    }

    /// The earliest deadline and its key.
    pub fn next(&self) -> Option<(Instant, &K)> {
        self.order.first().map(|(t, k)| (*t, k))
    }

    /// The keys due at `now`, in key order (not time order: parts handle
    /// what is due in a fixed order, so a late wake-up changes nothing).
    pub fn due(&self, now: Instant) -> Vec<K> {
        let mut keys: Vec<K> = self
            .order
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.at.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_deadline_wins_and_replacing_moves_it() {
        let t0 = Instant::now();
        let mut t: Timers<&str> = Timers::default();
        assert!(t.next().is_none());
        t.set("b", Some(t0 + Duration::from_secs(2)));
        t.set("a", Some(t0 + Duration::from_secs(3)));
        assert_eq!(t.next(), Some((t0 + Duration::from_secs(2), &"b")));
        t.set("a", Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.next(), Some((t0 + Duration::from_secs(1), &"a")));
        assert_eq!(t.len(), 2);
        t.set("a", None);
        assert_eq!(t.next(), Some((t0 + Duration::from_secs(2), &"b")));
        t.remove(&"b");
        assert!(t.next().is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn due_keys_come_in_key_order_and_later_ones_wait() {
        let t0 = Instant::now();
        let mut t: Timers<u32> = Timers::default();
        t.set(9, Some(t0));
        t.set(3, Some(t0 + Duration::from_millis(5)));
        t.set(5, Some(t0 + Duration::from_millis(50)));
        assert_eq!(t.due(t0), vec![9]);
        assert_eq!(t.due(t0 + Duration::from_millis(10)), vec![3, 9]);
        assert_eq!(t.due(t0 + Duration::from_secs(1)), vec![3, 5, 9]);
        // Due keys stay until their owner sets them anew.
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn equal_deadlines_of_different_keys_are_both_kept() {
        let t0 = Instant::now();
        let mut t: Timers<u8> = Timers::default();
        t.set(1, Some(t0));
        t.set(2, Some(t0));
        t.set(1, Some(t0));
        assert_eq!(t.due(t0), vec![1, 2]);
        t.clear();
        assert!(t.due(t0).is_empty());
    }
}
