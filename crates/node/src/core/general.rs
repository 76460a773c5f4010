//! An adapter's list of the general nodes it serves (`docs/adapter.md`):
//! fetched from the NMS page by page (Information Request / Response),
//! polled now and then, and handed to the shell whole, once per version.

use std::time::{Duration, Instant};

use cyphonic_proto::signal::{GeneralNodeInfo, GeneralNodes};

/// What to do after a page.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Ask for the page from this offset.
    Ask(u16),
    /// The whole list of a new version.
    Done {
        version: u64,
        nodes: Vec<GeneralNodeInfo>,
    },
    /// Nothing new.
    Idle,
}

pub(crate) struct GeneralNodesFetch {
    poll: Duration,
    next_poll: Instant,
    /// The version last handed out, if any.
    known: Option<u64>,
    /// The list being collected: its version and the nodes so far.
    collecting: Option<(u64, Vec<GeneralNodeInfo>)>,
}

/// General nodes one adapter may serve (bounds what an NMS can make it
/// hold).
pub const MAX_GENERAL_NODES: usize = 4096;

impl GeneralNodesFetch {
    pub fn new(poll: Duration, now: Instant) -> Self {
        GeneralNodesFetch {
            poll,
            next_poll: now,
            known: None,
            collecting: None,
        }
    }

    pub fn next_poll(&self) -> Instant {
        self.next_poll
    }

    /// Time for the first page again (registered, or the poll interval
    /// passed): ask from the start.
    pub fn poll(&mut self, now: Instant) -> Step {
        self.next_poll = now + self.poll;
        self.collecting = None;
        Step::Ask(0)
    }

    /// A page came.
    pub fn on_page(&mut self, page: GeneralNodes) -> Step {
        if page.offset == 0 {
            if Some(page.version) == self.known {
                self.collecting = None;
                return Step::Idle;
            }
            self.collecting = Some((page.version, Vec::new()));
        }
        let Some((version, nodes)) = self.collecting.as_mut() else {
            return Step::Idle;
        };
        if *version != page.version || usize::from(page.offset) != nodes.len() {
            // The list changed between pages (or a page came twice): start
            // over.
            self.collecting = None;
            return Step::Ask(0);
        }
        let total = usize::from(page.total).min(MAX_GENERAL_NODES);
        let before = nodes.len();
        nodes.extend(page.nodes.into_iter().take(total.saturating_sub(before)));
        // An empty page before the end would ask the same page forever:
        // what came is the list.
        if nodes.len() < total && nodes.len() > before {
            return Step::Ask(nodes.len() as u16);
        }
        let (version, nodes) = self.collecting.take().unwrap_or_default();
        self.known = Some(version);
        Step::Done { version, nodes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn node(i: u8) -> GeneralNodeInfo {
        GeneralNodeInfo {
            mac: [2, 0, 0, 0, 0, i],
            fqdn: format!("gn{i}.cyphonic.internal"),
            vip4: Ipv4Addr::new(100, 64, 1, i),
            vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i as u16),
        }
    }

    fn page(version: u64, all: &[GeneralNodeInfo], offset: usize) -> GeneralNodes {
        let end = (offset + 4).min(all.len());
        GeneralNodes {
            version,
            total: all.len() as u16,
            offset: offset as u16,
            nodes: all[offset.min(end)..end].to_vec(),
        }
    }

    #[test]
    fn pages_are_collected_and_each_version_handed_out_once() {
        let t0 = Instant::now();
        let mut f = GeneralNodesFetch::new(Duration::from_secs(30), t0);
        let all: Vec<_> = (1..=6).map(node).collect();
        assert_eq!(f.poll(t0), Step::Ask(0));
        assert_eq!(f.next_poll(), t0 + Duration::from_secs(30));
        assert_eq!(f.on_page(page(7, &all, 0)), Step::Ask(4));
        assert_eq!(
            f.on_page(page(7, &all, 4)),
            Step::Done {
                version: 7,
                nodes: all.clone()
            }
        );
        // The next poll finds the same version: nothing new.
        assert_eq!(f.poll(t0 + Duration::from_secs(30)), Step::Ask(0));
        assert_eq!(f.on_page(page(7, &all, 0)), Step::Idle);
        // A new version is fetched whole.
        let fewer = &all[..3];
        f.poll(t0 + Duration::from_secs(60));
        assert_eq!(
            f.on_page(page(8, fewer, 0)),
            Step::Done {
                version: 8,
                nodes: fewer.to_vec()
            }
        );
        // An empty list is a list too.
        f.poll(t0 + Duration::from_secs(90));
        assert_eq!(
            f.on_page(page(9, &[], 0)),
            Step::Done {
                version: 9,
                nodes: Vec::new()
            }
        );
    }

    #[test]
    fn a_list_that_changes_between_pages_is_fetched_again() {
        let t0 = Instant::now();
        let mut f = GeneralNodesFetch::new(Duration::from_secs(30), t0);
        let all: Vec<_> = (1..=6).map(node).collect();
        f.poll(t0);
        assert_eq!(f.on_page(page(7, &all, 0)), Step::Ask(4));
        assert_eq!(f.on_page(page(8, &all, 4)), Step::Ask(0));
        // A stray page out of order restarts too; an unasked one is ignored.
        assert_eq!(f.on_page(page(8, &all, 0)), Step::Ask(4));
        assert_eq!(f.on_page(page(8, &all, 0)), Step::Ask(4));
        assert!(matches!(f.on_page(page(8, &all, 4)), Step::Done { .. }));
        assert_eq!(f.on_page(page(8, &all, 4)), Step::Idle);
    }
}
