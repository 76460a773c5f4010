//! Signaling requests in flight, by transaction ID: what each is, when it
//! is retransmitted (doubling up to 2 s) and given up, and, for a
//! Registration, when the next transport joins the race. Their timers live
//! in a table beside them, kept in step by every change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cyphonic_proto::signal::Message;

use super::timers::Timers;
use super::types::Transport;
use cyphonic_proto::Fqdn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Registration,
    /// A Registration over cheaper transports than the current one: an
    /// answer moves signaling there.
    TransportProbe,
    KeepAlive,
    Direction,
    NatProbe,
    /// An adapter's Information Request.
    Information,
}

pub(crate) struct OutRequest {
    pub kind: RequestKind,
    pub message: Message,
    pub target: Option<Fqdn>,
    /// When it was first sent (retransmissions keep it): a Direction
    /// Request's answer is timed from here.
    pub sent: Instant,
    pub next_retransmit: Instant,
    pub interval: Duration,
    pub deadline: Instant,
    /// A Direction Request sent before a move: the NMS chose its route
    /// from our old addresses.
    pub before_move: bool,
    /// The transports it is sent over (each retransmission goes on all).
    pub transports: Vec<Transport>,
    /// A Registration: when to race the other transports if unanswered.
    pub race_at: Option<Instant>,
}

impl OutRequest {
    pub fn wake(&self) -> Instant {
        let t = self.next_retransmit.min(self.deadline);
        self.race_at.map_or(t, |r| t.min(r))
    }
}

/// Requests in flight by transaction ID, with their timers in a table.
#[derive(Default)]
pub(crate) struct Requests {
    pub map: BTreeMap<u64, OutRequest>,
    pub timers: Timers<u64>,
}

impl Requests {
    pub fn insert(&mut self, txid: u64, r: OutRequest) {
        self.timers.set(txid, Some(r.wake()));
        self.map.insert(txid, r);
    }

    pub fn remove(&mut self, txid: u64) -> Option<OutRequest> {
        self.timers.remove(&txid);
        self.map.remove(&txid)
    }

    pub fn get(&self, txid: u64) -> Option<&OutRequest> {
        self.map.get(&txid)
    }

    /// Changes a request; its timer follows.
    pub fn update<T>(&mut self, txid: u64, f: impl FnOnce(&mut OutRequest) -> T) -> Option<T> {
        let r = self.map.get_mut(&txid)?;
        let out = f(r);
        self.timers.set(txid, Some(r.wake()));
        Some(out)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&OutRequest) -> bool) {
        let gone: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, r)| !keep(r))
            .map(|(t, _)| *t)
            .collect();
        for txid in gone {
            self.remove(txid);
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.timers.clear();
    }

    pub fn find(&self, f: impl Fn(&OutRequest) -> bool) -> Option<u64> {
        self.map.iter().find(|(_, r)| f(r)).map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: RequestKind, now: Instant) -> OutRequest {
        OutRequest {
            kind,
            message: Message::KeepAlive,
            target: None,
            sent: now,
            next_retransmit: now + Duration::from_millis(250),
            interval: Duration::from_millis(250),
            deadline: now + Duration::from_secs(5),
            before_move: false,
            transports: vec![Transport::Udp],
            race_at: None,
        }
    }

    #[test]
    fn the_timer_table_follows_every_change() {
        let t0 = Instant::now();
        let mut r = Requests::default();
        r.insert(7, request(RequestKind::KeepAlive, t0));
        r.insert(3, request(RequestKind::Direction, t0));
        assert_eq!(
            r.timers.next().map(|(t, _)| t),
            Some(t0 + Duration::from_millis(250))
        );
        // A race due before the retransmission wakes the request earlier.
        r.update(7, |q| q.race_at = Some(t0 + Duration::from_millis(100)));
        assert_eq!(r.timers.next(), Some((t0 + Duration::from_millis(100), &7)));
        assert_eq!(r.timers.due(t0 + Duration::from_millis(100)), vec![7]);
        assert_eq!(r.timers.due(t0 + Duration::from_millis(250)), vec![3, 7]);
        r.retain(|q| q.kind != RequestKind::KeepAlive);
        assert!(r.get(7).is_none());
        assert_eq!(r.timers.due(t0 + Duration::from_secs(9)), vec![3]);
        assert_eq!(r.find(|q| q.kind == RequestKind::Direction), Some(3));
        assert!(r.remove(3).is_some());
        assert!(r.timers.next().is_none());
        assert!(r.update(3, |_| ()).is_none());
    }
}
