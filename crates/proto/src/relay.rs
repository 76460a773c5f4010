//! Relaying through a TRS (route pattern 3).
//!
//! The TRS forwards a node's packets to the other end of a relay session
//! the NMS set up. It never holds a key that opens them: what it forwards
//! are the nodes' own Tunnel Requests, Responses and data packets, sealed
//! end to end.
//!
//! Authorization is stateless, in the manner of TURN's time-limited
//! credentials (RFC 8489 §9.2 and the TURN REST API): the NMS and every TRS
//! share a relay secret; for a relay session the NMS derives one key per
//! side, `HMAC-SHA256(secret, "cyphonic relay v1" || relay_id || side ||
//! expires)`, and hands it to that side's node only. A node proves it may
//! use a side by a MAC over its Relay Bind with that key. Any TRS holding the
//! secret can therefore serve any session, and no message from the NMS to
//! the TRS is needed: failing over to another TRS is a new Bind.
//!
//! ```text
//! Relay Bind      (node -> TRS, 48 bytes)
//!   0 type=6  1..4 reserved  4..12 relay_id  12 side (0|1)  13..16 reserved
//!   16..24 expires (Unix seconds)  24..32 counter  32..48 mac
//! Relay Bind Ack  (TRS -> node, 48 bytes): same layout, type=7, MAC by the
//!   same side key, so the node knows the TRS holds the secret.
//! Relay Data      (node <-> TRS <-> node)
//!   0 type=8  1..4 reserved  4..12 relay_id  12.. an inner packet
//!   (Tunnel Request, Tunnel Response or data)
//! ```
//!
//! The counter must grow with every Bind of a side, so a captured Bind
//! cannot steer the session back to an old address.

use ring::hmac;

use crate::RelayId;

pub const TYPE_RELAY_BIND: u8 = 6;
pub const TYPE_RELAY_BIND_ACK: u8 = 7;
pub const TYPE_RELAY_DATA: u8 = 8;
pub const BIND_LEN: usize = 48;
pub const RELAY_HEADER_LEN: usize = 12;
const MAC_LEN: usize = 16;
const LABEL: &[u8] = b"cyphonic relay v1";

/// One side of a relay session's credentials, as the NMS gives it to a node.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayGrant {
    pub relay_id: RelayId,
    pub side: u8,
    pub expires: u64,
    pub key: [u8; 32],
}

impl std::fmt::Debug for RelayGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayGrant")
            .field("relay_id", &self.relay_id)
            .field("side", &self.side)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Derives a side's key from the relay secret (NMS and TRS both do this).
pub fn side_key(secret: &[u8], relay_id: RelayId, side: u8, expires: u64) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(LABEL);
    ctx.update(&relay_id.to_be_bytes());
    ctx.update(&[side]);
    ctx.update(&expires.to_be_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn mac(key: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), body);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

/// A parsed Relay Bind or Bind Ack, before its MAC is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind {
    pub ack: bool,
    pub relay_id: RelayId,
    pub side: u8,
    pub expires: u64,
    pub counter: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("malformed relay packet")]
    Malformed,
    #[error("relay bind failed authentication")]
    BadMac,
}

impl Bind {
    pub fn encode(&self, key: &[u8; 32]) -> [u8; BIND_LEN] {
        let mut p = [0u8; BIND_LEN];
        p[0] = if self.ack {
            TYPE_RELAY_BIND_ACK
        } else {
            TYPE_RELAY_BIND
        };
        p[4..12].copy_from_slice(&self.relay_id.to_be_bytes());
        p[12] = self.side;
        p[16..24].copy_from_slice(&self.expires.to_be_bytes());
        p[24..32].copy_from_slice(&self.counter.to_be_bytes());
        let m = mac(key, &p[..32]);
        p[32..].copy_from_slice(&m);
        p
    }

    /// Reads the fields without checking the MAC (the TRS needs them to
    /// derive the key to check it with).
    pub fn parse(p: &[u8]) -> Result<Bind, RelayError> {
        if p.len() != BIND_LEN || p[1..4] != [0, 0, 0] || p[13..16] != [0, 0, 0] || p[12] > 1 {
            return Err(RelayError::Malformed);
        }
        let ack = match p[0] {
            TYPE_RELAY_BIND => false,
            TYPE_RELAY_BIND_ACK => true,
            _ => return Err(RelayError::Malformed),
        };
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Bind {
            ack,
            relay_id: RelayId(u64_at(4)),
            side: p[12],
            expires: u64_at(16),
            counter: u64_at(24),
        })
    }

    /// Constant-time MAC check.
    pub fn verify(p: &[u8], key: &[u8; 32]) -> Result<(), RelayError> {
        if p.len() != BIND_LEN {
            return Err(RelayError::Malformed);
        }
        let expected = mac(key, &p[..32]);
        let diff = expected
            .iter()
            .zip(&p[32..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(RelayError::BadMac)
        }
    }
}

/// Writes the relay header for `relay_id` into `buf[..RELAY_HEADER_LEN]`.
pub fn write_data_header(buf: &mut [u8], relay_id: RelayId) {
    buf[0] = TYPE_RELAY_DATA;
    buf[1..4].copy_from_slice(&[0, 0, 0]);
    buf[4..12].copy_from_slice(&relay_id.to_be_bytes());
}

/// The relay id of a Relay Data packet and where its inner packet starts.
pub fn parse_data(p: &[u8]) -> Result<RelayId, RelayError> {
    if p.len() <= RELAY_HEADER_LEN || p[0] != TYPE_RELAY_DATA || p[1..4] != [0, 0, 0] {
        return Err(RelayError::Malformed);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[4..12]);
    Ok(RelayId(u64::from_be_bytes(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_round_trip_and_only_the_right_key_verifies() {
        let secret = b"relay secret shared by NMS and TRS";
        let k0 = side_key(secret, RelayId(7), 0, 1_900_000_000);
        let k1 = side_key(secret, RelayId(7), 1, 1_900_000_000);
        assert_ne!(k0, k1);
        let b = Bind {
            ack: false,
            relay_id: RelayId(7),
            side: 0,
            expires: 1_900_000_000,
            counter: 3,
        };
        let p = b.encode(&k0);
        assert_eq!(Bind::parse(&p), Ok(b));
        assert_eq!(Bind::verify(&p, &k0), Ok(()));
        assert_eq!(Bind::verify(&p, &k1), Err(RelayError::BadMac));
        // Another expiry, another key: a grant cannot be extended.
        assert_ne!(side_key(secret, RelayId(7), 0, 1_900_000_001), k0);
        for i in 0..BIND_LEN {
            let mut bad = p;
            bad[i] ^= 1;
            // Either the fields no longer parse, or the key derived from
            // them (as the TRS derives it) does not verify the MAC.
            if let Ok(f) = Bind::parse(&bad) {
                let key = side_key(secret, f.relay_id, f.side, f.expires);
                assert_eq!(
                    Bind::verify(&bad, &key),
                    Err(RelayError::BadMac),
                    "byte {i}"
                );
            }
        }
        for len in 0..BIND_LEN {
            assert!(Bind::parse(&p[..len]).is_err());
        }
    }

    #[test]
    fn data_header() {
        let mut buf = [0u8; 20];
        write_data_header(&mut buf, RelayId(0x0102_0304_0506_0708));
        assert_eq!(parse_data(&buf), Ok(RelayId(0x0102_0304_0506_0708)));
        assert!(parse_data(&buf[..RELAY_HEADER_LEN]).is_err());
        buf[2] = 1;
        assert!(parse_data(&buf).is_err());
    }
}
