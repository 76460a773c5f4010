//! TRS Report (`cyphonic_proto::trs_report`, `docs/protocol.md` §5.18): a
//! TRS's liveness and load, authenticated with a key from the relay
//! secret, as the NMS reads it ([`TrsReport::parse`], [`TrsReport::verify`],
//! [`TrsReport::open`]).
//!
//! Checks: a report that parses is `MIN_LEN..=MAX_LEN` bytes and names at
//! most `MAX_RELAY_ADDRS` addresses; re-encoded with the fixed report key
//! it gives exactly the input when, and only when, its MAC verifies with
//! that key (the format is canonical); `open` agrees with parse + verify;
//! a report that verifies under the fixed key never verifies under
//! another relay secret's.

use cyphonic_proto::trs_report::{report_key, TrsReport, MAX_LEN, MAX_RELAY_ADDRS, MIN_LEN};

use crate::fixed;

pub fn check(data: &[u8]) {
    let key = report_key(fixed::RELAY_SECRET);
    let authentic = TrsReport::verify(data, &key).is_ok();
    let parsed = TrsReport::parse(data);
    assert_eq!(
        TrsReport::open(data, &key).ok(),
        parsed.clone().ok().filter(|_| authentic)
    );
    if let Ok(report) = parsed {
        assert!(
            (MIN_LEN..=MAX_LEN).contains(&data.len()),
            "{} bytes",
            data.len()
        );
        assert!(report.relays.len() <= MAX_RELAY_ADDRS);
        assert_eq!(
            report.encode(&key) == data,
            authentic,
            "encode and verify disagree"
        );
    }
    if authentic {
        let other = report_key(b"another relay secret");
        assert!(TrsReport::verify(data, &other).is_err());
    }
}
