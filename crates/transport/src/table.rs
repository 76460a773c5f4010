//! The leg table: legs by [`LegId`], and the latest remote address of each
//! leg mapped to it. Pure bookkeeping (no IO, time passed in) so that the
//! rules below are tested on their own:
//!
//! - a leg is found by `(transport, remote)`; when a QUIC peer migrates,
//!   [`LegTable::moved`] points the new address at the leg and forgets the
//!   old one;
//! - removing a leg removes its address only if the address still names
//!   that leg, so a stale leg's end never takes a newer leg's address;
//! - the table holds at most `max_legs` legs;
//! - a failed dial to an address blocks new dials to it for a backoff, and
//!   the memory of failures is bounded too.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::types::{LegId, Transport};

/// The key a leg is found by.
pub(crate) type RemoteKey = (Transport, SocketAddr);

pub(crate) struct Entry<T> {
    pub transport: Transport,
    /// The latest remote address.
    pub remote: SocketAddr,
    pub handle: T,
}

pub(crate) struct LegTable<T> {
    /// Ordered so that listings are stable.
    legs: BTreeMap<LegId, Entry<T>>,
    by_remote: HashMap<RemoteKey, LegId>,
    failed_dials: HashMap<RemoteKey, Instant>,
    next_id: u64,
    max_legs: usize,
}

impl<T> LegTable<T> {
    pub fn new(max_legs: usize) -> Self {
        LegTable {
            legs: BTreeMap::new(),
            by_remote: HashMap::new(),
            failed_dials: HashMap::new(),
            next_id: 1,
            max_legs,
        }
    }

    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// The leg whose latest remote address is `remote`.
    pub fn lookup(&self, transport: Transport, remote: SocketAddr) -> Option<(LegId, &Entry<T>)> {
        let id = *self.by_remote.get(&(transport, remote))?;
        self.legs.get(&id).map(|e| (id, e))
    }

    pub fn get(&self, id: LegId) -> Option<&Entry<T>> {
        self.legs.get(&id)
    }

    pub fn get_mut(&mut self, id: LegId) -> Option<&mut Entry<T>> {
        self.legs.get_mut(&id)
    }

    /// Adds a leg and makes `remote` name it (taking the address from any
    /// older leg). Gives the handle back when the table is full.
    pub fn insert(
        &mut self,
        transport: Transport,
        remote: SocketAddr,
        handle: T,
    ) -> Result<LegId, T> {
        if self.legs.len() >= self.max_legs {
            return Err(handle);
        }
        let id = LegId(self.next_id);
        self.next_id += 1;
        self.legs.insert(
            id,
            Entry {
                transport,
                remote,
                handle,
            },
        );
        self.by_remote.insert((transport, remote), id);
        Ok(id)
    }

    /// The leg's peer now sends from `remote`. Returns whether anything
    /// changed.
    pub fn moved(&mut self, id: LegId, remote: SocketAddr) -> bool {
        let Some(entry) = self.legs.get_mut(&id) else {
            return false;
        };
        if entry.remote == remote {
            return false;
        }
        let old = (entry.transport, entry.remote);
        if self.by_remote.get(&old) == Some(&id) {
            self.by_remote.remove(&old);
        }
        entry.remote = remote;
        self.by_remote.insert((entry.transport, remote), id);
        true
    }

    pub fn remove(&mut self, id: LegId) -> Option<Entry<T>> {
        let entry = self.legs.remove(&id)?;
        let key = (entry.transport, entry.remote);
        if self.by_remote.get(&key) == Some(&id) {
            self.by_remote.remove(&key);
        }
        Some(entry)
    }

    /// Removes every leg.
    pub fn drain(&mut self) -> Vec<(LegId, Entry<T>)> {
        self.by_remote.clear();
        std::mem::take(&mut self.legs).into_iter().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (LegId, &Entry<T>)> {
        self.legs.iter().map(|(id, e)| (*id, e))
    }

    /// Remembers that a dial to `key` failed at `now`.
    pub fn dial_failed(&mut self, key: RemoteKey, now: Instant, backoff: Duration) {
        if self.failed_dials.len() >= self.max_legs {
            self.failed_dials
                .retain(|_, at| now.saturating_duration_since(*at) < backoff);
        }
        if self.failed_dials.len() < self.max_legs {
            self.failed_dials.insert(key, now);
        }
    }

    /// Whether a dial to `key` may start at `now`.
    pub fn may_dial(&mut self, key: RemoteKey, now: Instant, backoff: Duration) -> bool {
        match self.failed_dials.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < backoff => false,
            Some(_) => {
                self.failed_dials.remove(&key);
                true
            }
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn lookup_by_transport_and_address() {
        let mut t = LegTable::new(8);
        let q = t.insert(Transport::Quic, addr(443), "q").unwrap();
        let c = t.insert(Transport::Tcp, addr(443), "t").unwrap();
        assert_ne!(q, c);
        assert_eq!(t.lookup(Transport::Quic, addr(443)).unwrap().0, q);
        assert_eq!(t.lookup(Transport::Tcp, addr(443)).unwrap().0, c);
        assert!(t.lookup(Transport::Quic, addr(444)).is_none());
    }

    #[test]
    fn migration_moves_the_address_and_keeps_the_id() {
        let mut t = LegTable::new(8);
        let id = t.insert(Transport::Quic, addr(5000), ()).unwrap();
        assert!(t.moved(id, addr(6000)));
        assert!(!t.moved(id, addr(6000)));
        assert!(t.lookup(Transport::Quic, addr(5000)).is_none());
        assert_eq!(t.lookup(Transport::Quic, addr(6000)).unwrap().0, id);
        assert_eq!(t.get(id).unwrap().remote, addr(6000));
        let e = t.remove(id).unwrap();
        assert_eq!(e.remote, addr(6000));
        assert!(t.lookup(Transport::Quic, addr(6000)).is_none());
    }

    #[test]
    fn removing_a_stale_leg_keeps_a_newer_legs_address() {
        let mut t = LegTable::new(8);
        let old = t.insert(Transport::Tcp, addr(1), ()).unwrap();
        let new = t.insert(Transport::Tcp, addr(1), ()).unwrap();
        assert_eq!(t.lookup(Transport::Tcp, addr(1)).unwrap().0, new);
        t.remove(old);
        assert_eq!(t.lookup(Transport::Tcp, addr(1)).unwrap().0, new);

        // A leg migrating onto an address another leg had takes it; the
        // other leg's later removal leaves it alone.
        let a = t.insert(Transport::Quic, addr(2), ()).unwrap();
        let b = t.insert(Transport::Quic, addr(3), ()).unwrap();
        t.moved(b, addr(2));
        t.remove(a);
        assert_eq!(t.lookup(Transport::Quic, addr(2)).unwrap().0, b);
    }

    #[test]
    fn ids_are_never_reused() {
        let mut t = LegTable::new(8);
        let a = t.insert(Transport::Quic, addr(1), ()).unwrap();
        t.remove(a);
        let b = t.insert(Transport::Quic, addr(1), ()).unwrap();
        assert!(b > a);
    }

    #[test]
    fn full_table_refuses() {
        let mut t = LegTable::new(2);
        t.insert(Transport::Quic, addr(1), 1).unwrap();
        t.insert(Transport::Quic, addr(2), 2).unwrap();
        assert_eq!(t.insert(Transport::Quic, addr(3), 3), Err(3));
        assert_eq!(t.len(), 2);
        assert_eq!(t.drain().len(), 2);
        assert!(t.lookup(Transport::Quic, addr(1)).is_none());
    }

    #[test]
    fn dial_backoff_expires_and_is_bounded() {
        let mut t: LegTable<()> = LegTable::new(2);
        let now = Instant::now();
        let backoff = Duration::from_secs(1);
        let k = (Transport::Quic, addr(1));
        assert!(t.may_dial(k, now, backoff));
        t.dial_failed(k, now, backoff);
        assert!(!t.may_dial(k, now + Duration::from_millis(999), backoff));
        assert!(t.may_dial(k, now + backoff, backoff));
        assert!(t.may_dial(k, now, backoff), "forgotten once expired");

        for port in 10..20 {
            t.dial_failed((Transport::Tcp, addr(port)), now, backoff);
        }
        assert!(t.failed_dials.len() <= 2);
        // Expired entries make room again.
        t.dial_failed((Transport::Tcp, addr(99)), now + backoff, backoff);
        assert!(!t.may_dial((Transport::Tcp, addr(99)), now + backoff, backoff));
    }
}
