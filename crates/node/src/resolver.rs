//! The CYPHONIC resolver's DNS logic (seed: resolver module): which queries
//! are for the overlay domain, and the answers to give. Pure functions over
//! hickory-proto messages; the daemon owns the sockets.

use std::net::{Ipv4Addr, Ipv6Addr};

use cyphonic_proto::Fqdn;
use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of overlay answers. VIPs never change, but a short TTL lets a
/// revoked or renamed node drop out of caches soon.
pub const ANSWER_TTL: u32 = 60;

/// What to do with one DNS query.
#[derive(Debug)]
pub enum Classified {
    /// A question about a name in the overlay domain (lower-case, no root dot).
    Overlay {
        query: Message,
        name: Fqdn,
        qtype: RecordType,
    },
    /// Any other name: forward the query bytes upstream unchanged.
    Forward,
    /// Not a well-formed query: send this answer (FORMERR) if there is one.
    Invalid(Option<Vec<u8>>),
}

/// Sorts a query: overlay names (the domain itself and every name under
/// it) are ours; anything else goes upstream.
pub fn classify(query: &[u8], domain: &str) -> Classified {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return Classified::Invalid(formerr_from_raw(query)),
    };
    if msg.metadata.message_type != MessageType::Query {
        // Never answer a response: two resolvers (or one and a spoofed
        // peer) would bounce errors between them without end.
        return Classified::Invalid(None);
    }
    if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
        let resp = Message::error_msg(msg.metadata.id, msg.metadata.op_code, ResponseCode::FormErr);
        return Classified::Invalid(resp.to_vec().ok());
    }
    let q = &msg.queries[0];
    let name = normalize(&q.name().to_ascii());
    let domain = normalize(domain);
    let in_domain = name == domain || name.ends_with(&format!(".{domain}"));
    if !in_domain {
        return Classified::Forward;
    }
    let qtype = q.query_type();
    Classified::Overlay {
        query: msg,
        name,
        qtype,
    }
}

/// The answer for an overlay name with these VIPs: A and/or AAAA records as
/// asked, an empty NOERROR (NODATA) for other types.
pub fn answer(query: &Message, vip4: Ipv4Addr, vip6: Ipv6Addr) -> Vec<u8> {
    let mut resp = response_to(query, ResponseCode::NoError);
    if let Some(q) = query.queries.first() {
        let name: Name = q.name().clone();
        let qtype = q.query_type();
        if matches!(qtype, RecordType::A | RecordType::ANY) {
            resp.add_answer(Record::from_rdata(
                name.clone(),
                ANSWER_TTL,
                RData::A(A(vip4)),
            ));
        }
        if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
            resp.add_answer(Record::from_rdata(
                name,
                ANSWER_TTL,
                RData::AAAA(AAAA(vip6)),
            ));
        }
    }
    encode(resp)
}

/// An error answer (NXDOMAIN for unknown nodes, SERVFAIL when the cloud did
/// not answer in time).
pub fn error(query: &Message, code: ResponseCode) -> Vec<u8> {
    encode(response_to(query, code))
}

/// SERVFAIL: the asker should try again (its identity is not in the
/// overlay yet).
pub fn servfail(query: &Message) -> Vec<u8> {
    error(query, ResponseCode::ServFail)
}

fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata = Metadata::response_from_request(&query.metadata);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = code;
    resp.add_queries(query.queries.iter().cloned());
    resp
}

fn encode(msg: Message) -> Vec<u8> {
    // Encoding a message built from a parsed query cannot fail short of
    // names over 255 bytes, which parsing already rejected; fall back to a
    // bare SERVFAIL header rather than panic.
    msg.to_vec().unwrap_or_else(|_| {
        let id = msg.metadata.id.to_be_bytes();
        vec![id[0], id[1], 0x81, 0x82, 0, 0, 0, 0, 0, 0, 0, 0]
    })
}

/// A FORMERR keeps the query's ID so the client can match it (RFC 1035
/// 4.1.1), even when the rest does not parse.
fn formerr_from_raw(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // QR bit set means this is a response: never answer one.
    if query[2] & 0x80 != 0 {
        return None;
    }
    Some(vec![
        query[0],
        query[1],
        0x80 | (query[2] & 0x79),
        0x81,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ])
}

pub fn normalize(name: &str) -> Fqdn {
    Fqdn::new(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn overlay_names_are_ours_and_others_go_upstream() {
        let d = "cyphonic.internal";
        assert!(matches!(
            classify(&query("n2.cyphonic.internal.", RecordType::A), d),
            Classified::Overlay { ref name, .. } if name == "n2.cyphonic.internal"
        ));
        assert!(matches!(
            classify(&query("N2.Cyphonic.Internal", RecordType::AAAA), d),
            Classified::Overlay {
                qtype: RecordType::AAAA,
                ..
            }
        ));
        assert!(matches!(
            classify(&query("www.example.com.", RecordType::A), d),
            Classified::Forward
        ));
        // A name that merely ends in the same letters is not in the domain.
        assert!(matches!(
            classify(&query("xcyphonic.internal.", RecordType::A), d),
            Classified::Forward
        ));
    }

    #[test]
    fn answers_carry_the_vips_asked_for() {
        let q = query("n2.cyphonic.internal.", RecordType::AAAA);
        let Classified::Overlay { query, .. } = classify(&q, "cyphonic.internal") else {
            panic!("not overlay");
        };
        let v6: Ipv6Addr = "fd7a:6379:7068::3".parse().unwrap();
        let resp = Message::from_vec(&answer(&query, Ipv4Addr::new(100, 64, 0, 3), v6)).unwrap();
        assert_eq!(resp.metadata.id, 0x1234);
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(resp.answers[0].data, RData::AAAA(AAAA(v6)));
        let nx = Message::from_vec(&error(&query, ResponseCode::NXDomain)).unwrap();
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    }

    /// Found by the `dns` fuzz target: a response with one question got a
    /// FORMERR, itself a response, so two resolvers could bounce them
    /// forever.
    #[test]
    fn a_response_is_never_answered() {
        let mut m = Message::from_vec(&query("n2.cyphonic.internal.", RecordType::A)).unwrap();
        m.metadata.message_type = MessageType::Response;
        let bytes = m.to_vec().unwrap();
        assert!(matches!(
            classify(&bytes, "cyphonic.internal"),
            Classified::Invalid(None)
        ));
        let mut other = Message::from_vec(&query("www.example.com.", RecordType::A)).unwrap();
        other.metadata.message_type = MessageType::Response;
        assert!(matches!(
            classify(&other.to_vec().unwrap(), "cyphonic.internal"),
            Classified::Invalid(None)
        ));
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert!(matches!(
            classify(&[1, 2, 3], "x"),
            Classified::Invalid(None)
        ));
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0xff; 5]);
        match classify(&junk, "x") {
            Classified::Invalid(Some(r)) => {
                assert_eq!(&r[..2], &[0xab, 0xcd]);
                assert_eq!(r[3] & 0x0f, 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
