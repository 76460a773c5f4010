//! Relay framing (`cyphonic_proto::relay`): Relay Bind / Bind Ack
//! ([`Bind::parse`], [`Bind::verify`]), Relay Challenge
//! ([`Challenge::parse`]), a Bind's cookie ([`cookie_valid`]) and Relay
//! Data ([`parse_data`]).
//!
//! Checks: a Bind that parses re-encodes (with the key the TRS derives from
//! its fields) to the same 32 bytes before the mac, parses back to the same
//! fields, and verifies exactly when the input's mac is that mac; a Relay
//! Data header that parses is rewritten byte for byte by
//! [`write_data_header`].

use cyphonic_proto::relay::{
    cookie_key, cookie_valid, parse_data, side_key, write_data_header, Bind, Challenge, RelayError,
    BIND_LEN, CHALLENGE_LEN, RELAY_HEADER_LEN, TYPE_RELAY_DATA,
};

use crate::fixed;

pub fn check(data: &[u8]) {
    check_bind(data);
    check_challenge(data);
    check_relay_data(data);
}

/// A Challenge that parses re-encodes byte for byte; a cookie tail of any
/// bytes is checked without panicking, and only a 24-byte one can pass.
fn check_challenge(data: &[u8]) {
    if let Ok(c) = Challenge::parse(data) {
        assert_eq!(data.len(), CHALLENGE_LEN);
        assert_eq!(c.encode()[..], data[..]);
    }
    let key = cookie_key(fixed::RELAY_SECRET);
    let addr = "198.51.100.7:4501".parse().expect("address");
    let valid = cookie_valid(
        &key,
        addr,
        cyphonic_proto::RelayId(7),
        0,
        data,
        1_900_000_000,
    );
    assert!(!valid || data.len() == 24);
}

fn check_bind(data: &[u8]) {
    let Ok(bind) = Bind::parse(data) else {
        if data.len() != BIND_LEN {
            assert_eq!(
                Bind::verify(data, &[0; 32]),
                Err(RelayError::Malformed),
                "a {}-byte bind verified",
                data.len()
            );
        }
        return;
    };
    assert_eq!(data.len(), BIND_LEN);
    assert!(bind.side <= 1);
    // What the TRS does: derive the side's key from the fields, check the
    // mac with it.
    let key = side_key(fixed::RELAY_SECRET, bind.relay_id, bind.side, bind.expires);
    let encoded = bind.encode(&key);
    assert_eq!(Bind::parse(&encoded), Ok(bind));
    assert_eq!(encoded[..32], data[..32], "fields do not re-encode");
    assert_eq!(Bind::verify(&encoded, &key), Ok(()));
    let verified = Bind::verify(data, &key);
    assert_eq!(verified.is_ok(), encoded[..] == data[..]);
    if verified.is_err() {
        assert_eq!(verified, Err(RelayError::BadMac));
    }
    // A key for the other side never verifies it.
    let other = side_key(
        fixed::RELAY_SECRET,
        bind.relay_id,
        bind.side ^ 1,
        bind.expires,
    );
    assert_eq!(Bind::verify(&encoded, &other), Err(RelayError::BadMac));
}

fn check_relay_data(data: &[u8]) {
    match parse_data(data) {
        Ok(relay_id) => {
            assert!(data.len() > RELAY_HEADER_LEN);
            assert_eq!(data[0], TYPE_RELAY_DATA);
            let mut rewritten = data.to_vec();
            write_data_header(&mut rewritten, relay_id);
            assert_eq!(rewritten, data);
        }
        Err(e) => assert_eq!(e, RelayError::Malformed),
    }
}
