//! TRS Report: a TRS tells the NMS once a second that it lives, which
//! relay addresses it serves and how loaded it is (`docs/protocol.md`
//! §5.18). The NMS leaves a TRS that stopped reporting out of new relay
//! grants, and puts the least-loaded one first.
//!
//! ```text
//! TRS Report (TRS relay port -> NMS signaling port), 45..=121 bytes
//!   0 type=0x0d  1 version=1  2..4 reserved
//!   4..12  sent: Unix microseconds, strictly increasing per TRS (replay)
//!   12..20 sessions: live relay sessions
//!   20..28 forwarded_bytes: since the TRS started
//!   28..   relays: socket_addrs (u8 count, at most 4), the TRS's own
//!          public relay addresses
//!   last 16 bytes: mac = HMAC-SHA256(report key, every byte before)[0..16]
//! report key = HMAC-SHA256(key = relay secret, "cyphonic trs report key v1")
//! ```
//!
//! The MAC is by a key derived from the relay secret NMS and TRS already
//! share (§6.7), under its own label, so a report key never verifies a
//! Relay Bind nor the other way round. Nothing answers a report: a forged
//! one costs the NMS one HMAC and sends nothing back.

use std::net::SocketAddr;

use ring::hmac;

use crate::wire::{Reader, WireError, Writer};

/// Byte 0 of a TRS Report.
pub const TYPE_TRS_REPORT: u8 = 0x0d;
/// The only version: reports of another are dropped.
pub const VERSION: u8 = 1;
/// Relay addresses a report names at most (one TRS: one or two in
/// practice, one per IP version).
pub const MAX_RELAY_ADDRS: usize = 4;
/// `[type][version][2 reserved][sent][sessions][forwarded_bytes]`.
pub const HEADER_LEN: usize = 28;
pub const MAC_LEN: usize = crate::relay::MAC_LEN;
/// The shortest report: no address (which names no TRS, so the NMS drops
/// it, but it parses).
pub const MIN_LEN: usize = HEADER_LEN + 1 + MAC_LEN;
/// The longest report: four IPv6 addresses.
pub const MAX_LEN: usize = HEADER_LEN + 1 + MAX_RELAY_ADDRS * 19 + MAC_LEN;
const KEY_LABEL: &[u8] = b"cyphonic trs report key v1";

/// Why a datagram is not a TRS Report the NMS takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrsReportError {
    #[error("not a TRS Report (type {0:#04x})")]
    WrongType(u8),
    #[error("TRS Report of {0} bytes, outside {MIN_LEN}..={MAX_LEN}")]
    Length(usize),
    #[error("TRS Report version {0}, not {VERSION}")]
    Version(u8),
    #[error("reserved bytes not zero")]
    Reserved,
    #[error("more than {MAX_RELAY_ADDRS} relay addresses")]
    TooManyAddrs,
    #[error("TRS Report failed authentication")]
    BadMac,
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A TRS Report's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrsReport {
    /// When the TRS wrote it, in Unix microseconds; each report of a TRS
    /// carries a greater value than the one before.
    pub sent: u64,
    /// Relay sessions the TRS holds now.
    pub sessions: u64,
    /// Bytes forwarded since the TRS started.
    pub forwarded_bytes: u64,
    /// The TRS's own public relay addresses (`trs_listen`, an unspecified
    /// address replaced by `public_addrs`): how the NMS knows which of its
    /// configured TRS instances reports.
    pub relays: Vec<SocketAddr>,
}

/// The key reports are authenticated with, derived from the relay secret.
pub fn report_key(secret: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), KEY_LABEL);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

use crate::relay::mac;

impl TrsReport {
    /// The report with its MAC by `key` ([`report_key`]); addresses beyond
    /// [`MAX_RELAY_ADDRS`] are cut.
    pub fn encode(&self, key: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(TYPE_TRS_REPORT)
            .u8(VERSION)
            .u16(0)
            .u64(self.sent)
            .u64(self.sessions)
            .u64(self.forwarded_bytes)
            .socket_addrs(&self.relays[..self.relays.len().min(MAX_RELAY_ADDRS)]);
        let mut p = w.into_inner();
        let m = mac(key, &p);
        p.extend_from_slice(&m);
        p
    }

    /// Reads the fields, without checking the MAC (cheap checks first:
    /// [`TrsReport::open`] does both).
    pub fn parse(p: &[u8]) -> Result<TrsReport, TrsReportError> {
        match p.first() {
            Some(&TYPE_TRS_REPORT) => {}
            Some(&t) => return Err(TrsReportError::WrongType(t)),
            None => return Err(TrsReportError::Length(0)),
        }
        if !(MIN_LEN..=MAX_LEN).contains(&p.len()) {
            return Err(TrsReportError::Length(p.len()));
        }
        let mut r = Reader::new(&p[1..p.len() - MAC_LEN]);
        let version = r.u8()?;
        if version != VERSION {
            return Err(TrsReportError::Version(version));
        }
        if r.u16()? != 0 {
            return Err(TrsReportError::Reserved);
        }
        let sent = r.u64()?;
        let sessions = r.u64()?;
        let forwarded_bytes = r.u64()?;
        let relays = r.socket_addrs()?;
        if relays.len() > MAX_RELAY_ADDRS {
            return Err(TrsReportError::TooManyAddrs);
        }
        r.finish()?;
        Ok(TrsReport {
            sent,
            sessions,
            forwarded_bytes,
            relays,
        })
    }

    /// Whether the last 16 bytes are the MAC of the others by `key`
    /// (compared in constant time).
    pub fn verify(p: &[u8], key: &[u8; 32]) -> Result<(), TrsReportError> {
        let Some(split) = p.len().checked_sub(MAC_LEN) else {
            return Err(TrsReportError::Length(p.len()));
        };
        let expected = mac(key, &p[..split]);
        let diff = expected
            .iter()
            .zip(&p[split..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(TrsReportError::BadMac)
        }
    }

    /// Parses, then checks the MAC.
    pub fn open(p: &[u8], key: &[u8; 32]) -> Result<TrsReport, TrsReportError> {
        let report = TrsReport::parse(p)?;
        TrsReport::verify(p, key)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> TrsReport {
        TrsReport {
            sent: 1_900_000_000_000_000,
            sessions: 7,
            forwarded_bytes: 1 << 40,
            relays: vec![
                "203.0.113.10:4503".parse().unwrap(),
                "[2001:db8::10]:4503".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn reports_round_trip_and_only_the_report_key_verifies() {
        let secret = b"relay secret shared by NMS and TRS";
        let key = report_key(secret);
        let p = report().encode(&key);
        assert_eq!(p.len(), HEADER_LEN + 1 + 7 + 19 + MAC_LEN);
        assert_eq!(TrsReport::open(&p, &key), Ok(report()));
        assert_eq!(
            TrsReport::open(&p, &report_key(b"another relay secret, 32 bytes..")),
            Err(TrsReportError::BadMac)
        );
        // The report key is not a side key of any grant, nor the secret.
        let mut secret32 = [0u8; 32];
        secret32[..secret.len().min(32)].copy_from_slice(&secret[..32]);
        assert_eq!(
            TrsReport::verify(&p, &secret32),
            Err(TrsReportError::BadMac)
        );
        for i in 0..p.len() {
            let mut bad = p.clone();
            bad[i] ^= 1;
            assert!(TrsReport::open(&bad, &key).is_err(), "byte {i}");
        }
        for len in 0..p.len() {
            assert!(TrsReport::open(&p[..len], &key).is_err(), "length {len}");
        }
    }

    #[test]
    fn the_longest_report_fits_and_longer_lists_are_cut() {
        let key = report_key(b"relay secret shared by NMS and TRS");
        let v6 = |h: u16| -> SocketAddr {
            (
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, h),
                4503,
            )
                .into()
        };
        let long = TrsReport {
            relays: (1..=9).map(v6).collect(),
            ..report()
        };
        let p = long.encode(&key);
        assert_eq!(p.len(), MAX_LEN);
        assert_eq!(
            TrsReport::open(&p, &key).map(|r| r.relays.len()),
            Ok(MAX_RELAY_ADDRS)
        );
        let none = TrsReport {
            relays: Vec::new(),
            ..report()
        }
        .encode(&key);
        assert_eq!(none.len(), MIN_LEN);
        assert!(TrsReport::open(&none, &key).is_ok());
        // A count above the bound is refused even with a valid MAC.
        let mut over = p[..p.len() - MAC_LEN].to_vec();
        over[HEADER_LEN] = MAX_RELAY_ADDRS as u8 + 1;
        let m = mac(&key, &over);
        over.extend_from_slice(&m);
        assert!(TrsReport::parse(&over).is_err());
        let mut reserved = report().encode(&key);
        reserved[2] = 1;
        assert_eq!(TrsReport::parse(&reserved), Err(TrsReportError::Reserved));
    }
}
