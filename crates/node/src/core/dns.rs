//! DNS queries for overlay names that wait for route selection: one list
//! of waiting clients per name, answered together when the route is
//! directed (with the peer's VIPs) or fails (with the DNS error the
//! failure maps to).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message as DnsMessage, ResponseCode};

use super::types::{DnsClient, NodeEvent};
use super::Outbox;
use crate::resolver;
use cyphonic_proto::Fqdn;

/// Queries the network can make us hold at once.
pub const MAX_DNS_WAITERS: usize = 256;
/// Names the NMS said do not exist, remembered for answers while the
/// cloud is away.
pub const MAX_NEGATIVE: usize = 1024;
pub const NEGATIVE_LIFETIME: Duration = Duration::from_secs(600);

/// A client's query waiting for its name's route.
type Waiter = (DnsClient, DnsMessage);

#[derive(Default)]
pub(crate) struct DnsWaiters {
    /// Per name: since when its first query waits, whether the cloud was
    /// checked for it, and the queries.
    waiting: BTreeMap<Fqdn, (Instant, bool, Vec<Waiter>)>,
    total: usize,
    /// Names the NMS answered NXDOMAIN for, and when (oldest first).
    negative: VecDeque<(Fqdn, Instant)>,
}

/// No room for another waiting query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl DnsWaiters {
    /// Holds `query` until `name`'s route is known. `Ok(true)`: the first
    /// query for the name (route selection starts now).
    pub fn add(
        &mut self,
        now: Instant,
        name: &Fqdn,
        client: DnsClient,
        query: DnsMessage,
    ) -> Result<bool, Full> {
        if self.total >= MAX_DNS_WAITERS {
            return Err(Full);
        }
        let (_, _, waiting) = self
            .waiting
            .entry(name.clone())
            .or_insert_with(|| (now, false, Vec::new()));
        let first = waiting.is_empty();
        waiting.push((client, query));
        self.total += 1;
        Ok(first)
    }

    /// When a name not checked yet will have waited `wait`.
    pub fn next_check(&self, wait: Duration) -> Option<Instant> {
        self.waiting
            .values()
            .filter(|(_, checked, _)| !checked)
            .map(|(since, _, _)| *since + wait)
            .min()
    }

    /// Whether a name not checked yet has waited `wait` at `now`; marks
    /// every such name checked.
    pub fn check_due(&mut self, now: Instant, wait: Duration) -> bool {
        let mut due = false;
        for (since, checked, _) in self.waiting.values_mut() {
            if !*checked && now >= *since + wait {
                *checked = true;
                due = true;
            }
        }
        due
    }

    /// When a name will have waited `wait`, checked or not.
    pub fn next_wait(&self, wait: Duration) -> Option<Instant> {
        self.waiting
            .values()
            .map(|(since, _, _)| *since + wait)
            .min()
    }

    /// The names whose queries waited `wait` or longer at `now`.
    pub fn waited(&self, now: Instant, wait: Duration) -> Vec<Fqdn> {
        self.waiting
            .iter()
            .filter(|(_, (since, _, _))| now >= *since + wait)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The names with queries waiting.
    pub fn names(&self) -> impl Iterator<Item = &Fqdn> {
        self.waiting.keys()
    }

    /// The NMS said `name` does not exist (`true`) or routed it.
    pub fn set_negative(&mut self, now: Instant, name: &Fqdn, missing: bool) {
        self.negative.retain(|(n, _)| n != name);
        if missing {
            if self.negative.len() >= MAX_NEGATIVE {
                self.negative.pop_front();
            }
            self.negative.push_back((name.clone(), now));
        }
    }

    /// The NMS said lately that `name` does not exist.
    pub fn negative(&self, now: Instant, name: &str) -> bool {
        self.negative
            .iter()
            .any(|(n, at)| n.as_str() == name && now < *at + NEGATIVE_LIFETIME)
    }

    /// Answers every query waiting for `fqdn`.
    pub fn answer(
        &mut self,
        fqdn: &str,
        result: Result<(Ipv4Addr, Ipv6Addr), ResponseCode>,
        out: &mut Outbox,
    ) {
        let waiting = self
            .waiting
            .remove(fqdn)
            .map(|(_, _, w)| w)
            .unwrap_or_default();
        self.total -= waiting.len();
        for (client, query) in waiting {
            let response = match result {
                Ok((v4, v6)) => resolver::answer(&query, v4, v6),
                Err(code) => resolver::error(&query, code),
            };
            out.events
                .push_back(NodeEvent::DnsResponse { client, response });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str) -> DnsMessage {
        let mut m = DnsMessage::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        m
    }

    fn responses(out: &mut Outbox) -> Vec<(DnsClient, DnsMessage)> {
        out.events
            .drain(..)
            .map(|e| match e {
                NodeEvent::DnsResponse { client, response } => {
                    (client, DnsMessage::from_vec(&response).expect("parses"))
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn waiters_of_one_name_are_answered_together() {
        let mut w = DnsWaiters::default();
        let mut out = Outbox::default();
        let name = "n2.cyphonic.internal";
        assert_eq!(
            w.add(
                Instant::now(),
                &Fqdn::new(name),
                1,
                query("n2.cyphonic.internal.")
            ),
            Ok(true)
        );
        assert_eq!(
            w.add(
                Instant::now(),
                &Fqdn::new(name),
                2,
                query("n2.cyphonic.internal.")
            ),
            Ok(false)
        );
        assert_eq!(
            w.add(
                Instant::now(),
                &Fqdn::new("n3.cyphonic.internal"),
                3,
                query("n3.cyphonic.internal.")
            ),
            Ok(true)
        );
        w.answer(
            name,
            Ok((Ipv4Addr::new(100, 64, 0, 2), "fd00::2".parse().expect("v6"))),
            &mut out,
        );
        let got = responses(&mut out);
        assert_eq!(got.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 2]);
        assert!(got.iter().all(|(_, m)| m.answers.len() == 1));
        w.answer(name, Err(ResponseCode::ServFail), &mut out);
        assert!(out.events.is_empty(), "answered once only");
        w.answer(
            "n3.cyphonic.internal",
            Err(ResponseCode::NXDomain),
            &mut out,
        );
        assert_eq!(
            responses(&mut out)[0].1.metadata.response_code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn waiters_are_bounded_and_answering_frees_room() {
        let mut w = DnsWaiters::default();
        let mut out = Outbox::default();
        for i in 0..MAX_DNS_WAITERS {
            let name = format!("n{}.cyphonic.internal", i % 7);
            assert!(w
                .add(
                    Instant::now(),
                    &Fqdn::new(&name),
                    i as u64,
                    query(&format!("{name}."))
                )
                .is_ok());
        }
        assert_eq!(
            w.add(
                Instant::now(),
                &Fqdn::new("x.cyphonic.internal"),
                999,
                query("x.cyphonic.internal.")
            ),
            Err(Full)
        );
        w.answer(
            "n0.cyphonic.internal",
            Err(ResponseCode::ServFail),
            &mut out,
        );
        assert!(w
            .add(
                Instant::now(),
                &Fqdn::new("x.cyphonic.internal"),
                999,
                query("x.cyphonic.internal.")
            )
            .is_ok());
    }

    #[test]
    fn the_negative_memory_is_bounded_and_forgets() {
        let t0 = Instant::now();
        let mut w = DnsWaiters::default();
        let gone = Fqdn::new("gone.cyphonic.internal");
        w.set_negative(t0, &gone, true);
        assert!(w.negative(t0, "gone.cyphonic.internal"));
        assert!(!w.negative(t0 + NEGATIVE_LIFETIME, "gone.cyphonic.internal"));
        w.set_negative(t0, &gone, false);
        assert!(!w.negative(t0, "gone.cyphonic.internal"));
        for i in 0..MAX_NEGATIVE + 5 {
            w.set_negative(t0, &Fqdn::new(&format!("x{i}.cyphonic.internal")), true);
        }
        assert_eq!(w.negative.len(), MAX_NEGATIVE);
        assert!(!w.negative(t0, "x0.cyphonic.internal"), "oldest went first");
        assert!(w.negative(t0, "x5.cyphonic.internal"));
    }

    #[test]
    fn a_waiting_name_is_checked_once_after_the_wait() {
        let t0 = Instant::now();
        let mut w = DnsWaiters::default();
        let wait = Duration::from_millis(250);
        let n = Fqdn::new("n2.cyphonic.internal");
        assert_eq!(w.next_check(wait), None);
        w.add(t0, &n, 1, query("n2.cyphonic.internal."))
            .expect("room");
        w.add(t0 + wait / 2, &n, 2, query("n2.cyphonic.internal."))
            .expect("room");
        assert_eq!(w.next_check(wait), Some(t0 + wait));
        assert!(!w.check_due(t0 + wait / 2, wait));
        assert!(w.check_due(t0 + wait, wait));
        assert!(!w.check_due(t0 + wait * 2, wait), "checked once");
        assert_eq!(w.next_check(wait), None);
        assert_eq!(w.next_wait(wait), Some(t0 + wait));
        assert_eq!(w.waited(t0 + wait, wait), vec![n]);
    }
}
