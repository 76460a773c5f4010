//! Answering Reflect Requests (`docs/protocol.md` §4.8), for the NMS and
//! the TRS alike: pure, no clock, no sockets.
//!
//! A request needs no session, so anyone may send one from any (spoofed)
//! source. Two things keep that harmless: an answer is never longer than
//! the request it answers (requests shorter than
//! [`cyphonic_proto::reflect::REQUEST_LEN`] are dropped), and each source
//! (an IPv4 address, an IPv6 /64) gets [`ReflectConfig::per_source`]
//! answers a second, in a bounded table of budgets.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use cyphonic_proto::reflect::{ReflectRequest, ReflectResponse};
use serde::Serialize;

use crate::nms::{source_key, KeyedBuckets};

#[derive(Debug, Clone, Copy)]
pub struct ReflectConfig {
    /// Answers per second one source gets (bursts of as many).
    pub per_source: u32,
    /// Sources with a budget at once (beyond, idle budgets are forgotten).
    pub max_sources: usize,
}

impl Default for ReflectConfig {
    fn default() -> Self {
        // `netcheck` sends a handful of requests per port.
        Self {
            per_source: 20,
            max_sources: 4096,
        }
    }
}

/// What happened to Reflect Requests, exported among the NMS's and the
/// TRS's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReflectCounters {
    /// Requests answered.
    pub reflects: u64,
    /// Requests dropped as malformed: too short (an answer would amplify),
    /// another version, reserved bytes set.
    pub reflects_bad: u64,
    /// Requests dropped for their source's rate.
    pub reflects_limited: u64,
}

/// Why a Reflect Request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReflectDrop {
    Malformed,
    RateLimited,
}

pub struct Reflector {
    config: ReflectConfig,
    budgets: KeyedBuckets<IpAddr>,
    counters: ReflectCounters,
}

impl Reflector {
    pub fn new(config: ReflectConfig) -> Self {
        Self {
            budgets: KeyedBuckets::new(config.max_sources),
            config,
            counters: ReflectCounters::default(),
        }
    }

    pub fn counters(&self) -> ReflectCounters {
        self.counters
    }

    /// Answers the Reflect Request in `buf` from `from`: writes the
    /// response (naming `nms` and `relays`) over the start of `buf` and
    /// returns its length, which is at most the request's.
    pub fn handle_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        nms: &[SocketAddr],
        relays: &[SocketAddr],
    ) -> Result<usize, ReflectDrop> {
        let Ok(request) = ReflectRequest::parse(buf) else {
            self.counters.reflects_bad += 1;
            return Err(ReflectDrop::Malformed);
        };
        let rate = f64::from(self.config.per_source);
        if !self.budgets.allow(now, &source_key(from.ip()), rate, rate) {
            self.counters.reflects_limited += 1;
            return Err(ReflectDrop::RateLimited);
        }
        let response = ReflectResponse {
            txid: request.txid,
            observed: from,
            nms: nms.to_vec(),
            relays: relays.to_vec(),
        };
        // Invariant: a parsed request is at least REQUEST_LEN long, and no
        // response is longer (`reflect::RESPONSE_MAX`).
        let len = response.write_into(buf).ok_or(ReflectDrop::Malformed)?;
        self.counters.reflects += 1;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_proto::reflect::{REQUEST_LEN, TYPE_REFLECT_RESPONSE};
    use std::time::Duration;

    fn ask(r: &mut Reflector, now: Instant, from: &str) -> Result<usize, ReflectDrop> {
        let mut buf = ReflectRequest { txid: 9 }.encode();
        let relays: Vec<SocketAddr> = vec!["192.0.2.1:4503".parse().expect("addr")];
        r.handle_request(now, from.parse().expect("addr"), &mut buf, &[], &relays)
    }

    #[test]
    fn an_answer_names_the_source_and_is_no_longer_than_the_request() {
        let mut r = Reflector::new(ReflectConfig::default());
        let mut buf = ReflectRequest { txid: 9 }.encode();
        let nms: Vec<SocketAddr> = vec!["192.0.2.1:4502".parse().expect("addr")];
        let from: SocketAddr = "198.51.100.7:40001".parse().expect("addr");
        let n = r
            .handle_request(Instant::now(), from, &mut buf, &nms, &[])
            .expect("an answer");
        assert!(n <= REQUEST_LEN);
        assert_eq!(buf[0], TYPE_REFLECT_RESPONSE);
        let answer = ReflectResponse::parse(&buf[..n]).expect("a response");
        assert_eq!((answer.txid, answer.observed), (9, from));
        assert_eq!(answer.nms, nms);
        assert_eq!(r.counters().reflects, 1);
    }

    #[test]
    fn a_short_request_is_dropped_and_counted() {
        let mut r = Reflector::new(ReflectConfig::default());
        let mut short = ReflectRequest { txid: 9 }.encode()[..REQUEST_LEN - 1].to_vec();
        let from = "198.51.100.7:40001".parse().expect("addr");
        assert_eq!(
            r.handle_request(Instant::now(), from, &mut short, &[], &[]),
            Err(ReflectDrop::Malformed)
        );
        assert_eq!(r.counters().reflects_bad, 1);
        assert_eq!(r.counters().reflects, 0);
    }

    #[test]
    fn each_source_gets_its_rate_and_no_more() {
        let config = ReflectConfig {
            per_source: 5,
            max_sources: 16,
        };
        let mut r = Reflector::new(config);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(ask(&mut r, t0, "198.51.100.7:40001").is_ok());
        }
        // Another port of the same address shares the budget.
        assert_eq!(
            ask(&mut r, t0, "198.51.100.7:40002"),
            Err(ReflectDrop::RateLimited)
        );
        // Another address of the same IPv6 /64 too; another /64 does not.
        for _ in 0..5 {
            assert!(ask(&mut r, t0, "[2001:db8::1]:1").is_ok());
        }
        assert_eq!(
            ask(&mut r, t0, "[2001:db8::2]:1"),
            Err(ReflectDrop::RateLimited)
        );
        assert!(ask(&mut r, t0, "[2001:db8:0:1::1]:1").is_ok());
        assert!(ask(&mut r, t0, "192.0.2.9:1").is_ok());
        // A second later the source has its rate again.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..5 {
            assert!(ask(&mut r, t1, "198.51.100.7:40001").is_ok());
        }
        assert_eq!(
            ask(&mut r, t1, "198.51.100.7:40001"),
            Err(ReflectDrop::RateLimited)
        );
        assert_eq!(r.counters().reflects_limited, 3);
    }

    #[test]
    fn the_nms_answers_from_the_socket_asked_with_its_addresses_and_relays() {
        use crate::nms::{Nms, NmsConfig, RelayConfig};
        let relays: Vec<SocketAddr> = vec![
            "192.0.2.1:4503".parse().expect("addr"),
            "[2001:db8::1]:4503".parse().expect("addr"),
        ];
        let public: Vec<SocketAddr> = vec![
            "192.0.2.1:4502".parse().expect("addr"),
            "[2001:db8::1]:4502".parse().expect("addr"),
        ];
        let now = Instant::now();
        let mut nms = Nms::new(
            NmsConfig {
                probe_port: 4504,
                public: public.clone(),
                relay: Some(RelayConfig {
                    secret: b"secret".to_vec(),
                    servers: relays.clone(),
                    quic_port: 443,
                    tcp_port: 443,
                    lifetime: Duration::from_secs(600),
                    wall_origin: (now, 1_700_000_000),
                }),
                ..NmsConfig::default()
            },
            [1; 32],
            0,
        );
        let probe: SocketAddr = "192.0.2.1:4504".parse().expect("addr");
        let from: SocketAddr = "198.51.100.1:40002".parse().expect("addr");
        nms.handle_datagram(now, probe, from, &ReflectRequest { txid: 5 }.encode());
        let t = nms.poll_transmit().expect("an answer");
        assert_eq!((t.local, t.destination), (probe, from));
        let answer = ReflectResponse::parse(&t.payload).expect("a response");
        assert_eq!(answer.observed, from);
        assert_eq!((answer.nms, answer.relays), (public, relays));
        // A short one gets nothing, and is counted apart from signaling.
        let short = &ReflectRequest { txid: 6 }.encode()[..100];
        nms.handle_datagram(now, probe, from, short);
        assert!(nms.poll_transmit().is_none());
        let c = nms.counters();
        assert_eq!(
            (c.reflects, c.reflects_bad, c.rx_packets, c.rx_bad),
            (1, 1, 0, 0)
        );
    }

    #[test]
    fn the_trs_answers_in_place_with_the_observed_address_only() {
        use crate::trs::{Action, Trs, TrsConfig};
        let mut trs = Trs::new(TrsConfig {
            secret: b"secret".to_vec(),
            ..TrsConfig::default()
        });
        let from: SocketAddr = "[2001:db8::11]:40001".parse().expect("addr");
        let mut buf = ReflectRequest { txid: 5 }.encode();
        let Action::Reply(n) = trs.handle_datagram(Instant::now(), 0, from, &mut buf) else {
            panic!("no answer");
        };
        let answer = ReflectResponse::parse(&buf[..n]).expect("a response");
        assert_eq!((answer.txid, answer.observed), (5, from));
        assert!(answer.nms.is_empty() && answer.relays.is_empty());
        let c = trs.counters();
        assert_eq!((c.reflects, c.binds, c.dropped_malformed), (1, 0, 0));
    }

    #[test]
    fn the_budget_table_stays_bounded() {
        let config = ReflectConfig {
            per_source: 1,
            max_sources: 8,
        };
        let mut r = Reflector::new(config);
        let t0 = Instant::now();
        for i in 0..100u8 {
            assert!(ask(&mut r, t0, &format!("198.51.100.{i}:1")).is_ok());
            assert!(r.budgets.len() <= 8, "{}", r.budgets.len());
        }
    }
}
