//! The Login flow's messages (`cyphonic_proto::login`): one JSON object
//! per line, parsed with `serde_json` into [`Request`] and [`Response`] as
//! the AS and the node do.
//!
//! Checks: what parses is written by [`encode_line`] as one line (a single
//! trailing newline, none inside) that parses back to the same message; a
//! password or common key never shows in `Debug` output.

use cyphonic_proto::login::{encode_line, LoginOk, Password, Request, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn check(data: &[u8]) {
    // The reader hands over a line without its newline.
    let line = data.strip_suffix(b"\n").unwrap_or(data);
    if let Some(request) = round_trip::<Request>(line) {
        if let Request::Enroll {
            device_id,
            password,
            csr_pem,
        } = &request
        {
            let without = Request::Enroll {
                device_id: device_id.clone(),
                password: Password(String::new()),
                csr_pem: csr_pem.clone(),
            };
            assert_redacted(
                &password.0,
                &format!("{request:?}"),
                &format!("{without:?}"),
            );
        }
    }
    if let Some(response) = round_trip::<Response>(line) {
        if let Response::LoginOk(ok) = &response {
            let mut without = ok.clone();
            without.common_key = String::new();
            let without = Response::LoginOk(without);
            assert_redacted(
                &ok.common_key,
                &format!("{response:?}"),
                &format!("{without:?}"),
            );
        }
    }
    round_trip::<LoginOk>(line);
}

fn round_trip<T>(line: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let message: T = serde_json::from_slice(line).ok()?;
    let encoded = encode_line(&message);
    assert_eq!(encoded.last(), Some(&b'\n'));
    assert!(
        !encoded[..encoded.len() - 1].contains(&b'\n'),
        "a newline inside an encoded line"
    );
    let back: T = serde_json::from_slice(&encoded).expect("our own line parses");
    assert_eq!(back, message);
    Some(message)
}

/// `secret` (of some length, not already part of the rest of the message)
/// does not appear in `debug`.
fn assert_redacted(secret: &str, debug: &str, debug_without_secret: &str) {
    if secret.len() >= 8 && !debug_without_secret.contains(secret) {
        assert!(!debug.contains(secret), "secret in Debug: {debug}");
    }
}
