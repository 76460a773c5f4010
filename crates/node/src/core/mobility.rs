//! What the node remembers of network moves: how many, and for the last
//! one what changed and how long each peer's tunnel took to carry traffic
//! again (for `cyphonic status` and the mobility lab).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

#[derive(Default)]
pub(crate) struct Mobility {
    pub moves: u64,
    pub last: Option<Move>,
}

pub(crate) struct Move {
    pub at: Instant,
    pub wall: SystemTime,
    pub change: String,
    /// Peer -> time from the move until its tunnel carried traffic again.
    pub back: BTreeMap<String, Duration>,
}

impl Mobility {
    pub fn record(&mut self, at: Instant, wall: SystemTime, change: String) {
        self.moves += 1;
        self.last = Some(Move {
            at,
            wall,
            change,
            back: BTreeMap::new(),
        });
    }

    /// `fqdn`'s tunnel carries traffic again (the first time counts).
    pub fn tunnel_back(&mut self, fqdn: &str, now: Instant) {
        if let Some(m) = self.last.as_mut() {
            m.back
                .entry(fqdn.to_owned())
                .or_insert_with(|| now.saturating_duration_since(m.at));
        }
    }
}

/// "lost 192.0.2.11:4501; gained [2001:db8::11]:4501" and the like.
pub fn describe_change(before: &[SocketAddr], after: &[SocketAddr]) -> String {
    let lost: Vec<String> = before
        .iter()
        .filter(|a| !after.contains(a))
        .map(|a| a.to_string())
        .collect();
    let gained: Vec<String> = after
        .iter()
        .filter(|a| !before.contains(a))
        .map(|a| a.to_string())
        .collect();
    match (lost.is_empty(), gained.is_empty()) {
        (false, false) => format!("lost {}; gained {}", lost.join(", "), gained.join(", ")),
        (false, true) => format!("lost {}", lost.join(", ")),
        (true, false) => format!("gained {}", gained.join(", ")),
        (true, true) => "addresses reordered".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_described_by_what_went_and_came() {
        let a: SocketAddr = "192.0.2.11:4501".parse().expect("addr");
        let b: SocketAddr = "[2001:db8::11]:4501".parse().expect("addr");
        assert_eq!(
            describe_change(&[a], &[b]),
            "lost 192.0.2.11:4501; gained [2001:db8::11]:4501"
        );
        assert_eq!(describe_change(&[a, b], &[b]), "lost 192.0.2.11:4501");
        assert_eq!(describe_change(&[b], &[a, b]), "gained 192.0.2.11:4501");
        assert_eq!(describe_change(&[a, b], &[b, a]), "addresses reordered");
    }

    #[test]
    fn the_first_return_of_each_tunnel_after_a_move_counts() {
        let t0 = Instant::now();
        let mut m = Mobility::default();
        m.tunnel_back("n2", t0);
        assert!(m.last.is_none(), "no move yet");
        m.record(t0, SystemTime::UNIX_EPOCH, "gained 192.0.2.11:4501".into());
        m.tunnel_back("n2", t0 + Duration::from_millis(80));
        m.tunnel_back("n2", t0 + Duration::from_millis(900));
        let back = &m.last.as_ref().expect("move").back;
        assert_eq!(back.get("n2"), Some(&Duration::from_millis(80)));
        m.record(
            t0 + Duration::from_secs(1),
            SystemTime::UNIX_EPOCH,
            "x".into(),
        );
        assert_eq!(m.moves, 2);
        assert!(m.last.as_ref().expect("move").back.is_empty());
    }
}
