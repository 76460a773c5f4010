//! Reflect (`cyphonic_proto::reflect`, `docs/protocol.md` §4.8): the
//! unauthenticated address echo `cyphonic netcheck` asks the NMS and the
//! TRS for.
//!
//! Checks: a Reflect Request parses only at [`REQUEST_LEN`] bytes or more,
//! and its header re-encodes byte for byte; any answer to it (with both
//! lists over-full) fits in the request's own bytes, so no answer is ever
//! larger than what was asked; a Reflect Response that parses re-encodes
//! byte for byte (the format is canonical) and is at most
//! [`RESPONSE_MAX`] bytes.

use std::net::SocketAddr;

use cyphonic_proto::reflect::{
    ReflectRequest, ReflectResponse, HEADER_LEN, REQUEST_LEN, RESPONSE_MAX,
};

pub fn check(data: &[u8]) {
    if let Ok(request) = ReflectRequest::parse(data) {
        assert!(data.len() >= REQUEST_LEN, "a {}-byte request", data.len());
        assert_eq!(request.encode()[..HEADER_LEN], data[..HEADER_LEN]);
        let v6 = |h: u16| -> SocketAddr {
            (
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, h),
                4503,
            )
                .into()
        };
        let answer = ReflectResponse {
            txid: request.txid,
            observed: v6(0x11),
            nms: (1..=9).map(v6).collect(),
            relays: (1..=17).map(v6).collect(),
        };
        let mut buf = data.to_vec();
        let n = answer
            .write_into(&mut buf)
            .expect("an answer fits its request");
        assert!(n <= data.len());
        assert_eq!(
            ReflectResponse::parse(&buf[..n]).map(|r| r.txid),
            Ok(request.txid)
        );
    }
    if let Ok(response) = ReflectResponse::parse(data) {
        assert!(data.len() <= RESPONSE_MAX);
        assert_eq!(response.encode(), data, "not canonical");
    }
}
