//! DNS queries for overlay names that wait for route selection: one list
//! of waiting clients per name, answered together when the route is
//! directed (with the peer's VIPs) or fails (with the DNS error the
//! failure maps to).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message as DnsMessage, ResponseCode};

use super::types::{DnsClient, NodeEvent};
use super::Outbox;
use crate::resolver;
use cyphonic_proto::Fqdn;

/// Queries the network can make us hold at once.
pub const MAX_DNS_WAITERS: usize = 256;

#[derive(Default)]
pub(crate) struct DnsWaiters {
    waiting: BTreeMap<Fqdn, Vec<(DnsClient, DnsMessage)>>,
    total: usize,
}

/// No room for another waiting query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl DnsWaiters {
    /// Holds `query` until `name`'s route is known. `Ok(true)`: the first
    /// query for the name (route selection starts now).
    pub fn add(&mut self, name: &Fqdn, client: DnsClient, query: DnsMessage) -> Result<bool, Full> {
        if self.total >= MAX_DNS_WAITERS {
            return Err(Full);
        }
        let waiting = self.waiting.entry(name.clone()).or_default();
        let first = waiting.is_empty();
        waiting.push((client, query));
        self.total += 1;
        Ok(first)
    }

    /// Answers every query waiting for `fqdn`.
    pub fn answer(
        &mut self,
        fqdn: &str,
        result: Result<(Ipv4Addr, Ipv6Addr), ResponseCode>,
        out: &mut Outbox,
    ) {
        let waiting = self.waiting.remove(fqdn).unwrap_or_default();
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
            w.add(&Fqdn::new(name), 1, query("n2.cyphonic.internal.")),
            Ok(true)
        );
        assert_eq!(
            w.add(&Fqdn::new(name), 2, query("n2.cyphonic.internal.")),
            Ok(false)
        );
        assert_eq!(
            w.add(
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
                .add(&Fqdn::new(&name), i as u64, query(&format!("{name}.")))
                .is_ok());
        }
        assert_eq!(
            w.add(
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
                &Fqdn::new("x.cyphonic.internal"),
                999,
                query("x.cyphonic.internal.")
            )
            .is_ok());
    }
}
