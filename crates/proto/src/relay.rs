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
//!
//! Return routability: a Bind from an address the side is not bound to
//! takes effect only with a cookie the TRS sent to that address (a
//! [`Challenge`], like a DTLS HelloVerifyRequest or QUIC's Retry): a MAC
//! over the address and the time, so the TRS keeps no state for a source
//! that has not answered, and a Bind from a spoofed source binds nothing.
//!
//! ```text
//! Relay Challenge (TRS -> node, 48 bytes)
//!   0 type=10  1..4 reserved  4..12 relay_id  12 side  13..16 reserved
//!   16..24 counter (the Bind's)  24..32 issued (Unix seconds)  32..48 cookie
//! Relay Bind with cookie (node -> TRS, 72 bytes)
//!   0..48 a Relay Bind  48..56 issued  56..72 cookie (from the Challenge)
//! ```

use ring::hmac;

use crate::RelayId;

pub const TYPE_RELAY_BIND: u8 = 6;
pub const TYPE_RELAY_BIND_ACK: u8 = 7;
pub const TYPE_RELAY_DATA: u8 = 8;
pub const TYPE_RELAY_CHALLENGE: u8 = 10;
pub const BIND_LEN: usize = 48;
/// A Relay Bind carrying a cookie: the Bind, `issued`, the cookie.
pub const BIND_WITH_COOKIE_LEN: usize = BIND_LEN + COOKIE_TAIL_LEN;
pub const CHALLENGE_LEN: usize = 48;
/// What a node appends to its Bind: `issued` (u64 BE) and the cookie.
pub const COOKIE_TAIL_LEN: usize = 8 + COOKIE_LEN;
const COOKIE_LEN: usize = 16;
/// A cookie is accepted this many seconds after it was issued.
pub const COOKIE_LIFETIME_SECS: u64 = 10;
const COOKIE_KEY_LABEL: &[u8] = b"cyphonic relay cookie key v1";
const COOKIE_LABEL: &[u8] = b"cyphonic relay cookie v1";
pub const RELAY_HEADER_LEN: usize = 12;
/// Bytes of a truncated HMAC-SHA256 tag (relay control and TRS Reports).
pub(crate) const MAC_LEN: usize = 16;
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

/// HMAC-SHA256 of `body` under `key`, truncated to [`MAC_LEN`] bytes.
pub(crate) fn mac(key: &[u8; 32], body: &[u8]) -> [u8; MAC_LEN] {
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

/// The key a TRS makes cookies with: derived from the relay secret, so
/// every TRS instance accepts the cookies of the others.
pub fn cookie_key(secret: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), COOKIE_KEY_LABEL);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The cookie for a Bind of `relay_id`'s `side` from `addr`, issued at
/// Unix second `issued`.
pub fn cookie(
    key: &[u8; 32],
    addr: std::net::SocketAddr,
    relay_id: RelayId,
    side: u8,
    issued: u64,
) -> [u8; COOKIE_LEN] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    ctx.update(COOKIE_LABEL);
    match addr.ip() {
        std::net::IpAddr::V4(a) => {
            ctx.update(&[4]);
            ctx.update(&a.octets());
        }
        std::net::IpAddr::V6(a) => {
            ctx.update(&[6]);
            ctx.update(&a.octets());
        }
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.update(&relay_id.to_be_bytes());
    ctx.update(&[side]);
    ctx.update(&issued.to_be_bytes());
    let mut out = [0u8; COOKIE_LEN];
    out.copy_from_slice(&ctx.sign().as_ref()[..COOKIE_LEN]);
    out
}

/// Whether the 24-byte `tail` of a Bind with cookie holds a cookie for
/// this address and side, issued at most [`COOKIE_LIFETIME_SECS`] before
/// `unix_now` (and not after it, a second of clock step allowed).
pub fn cookie_valid(
    key: &[u8; 32],
    addr: std::net::SocketAddr,
    relay_id: RelayId,
    side: u8,
    tail: &[u8],
    unix_now: u64,
) -> bool {
    if tail.len() != COOKIE_TAIL_LEN {
        return false;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&tail[..8]);
    let issued = u64::from_be_bytes(b);
    if issued > unix_now + 1 || unix_now.saturating_sub(issued) > COOKIE_LIFETIME_SECS {
        return false;
    }
    let expected = cookie(key, addr, relay_id, side, issued);
    expected
        .iter()
        .zip(&tail[8..])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// A Relay Challenge: the TRS's answer to a Bind from an address the side
/// is not bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub relay_id: RelayId,
    pub side: u8,
    /// The counter of the Bind it answers.
    pub counter: u64,
    pub issued: u64,
    pub cookie: [u8; COOKIE_LEN],
}

impl Challenge {
    pub fn encode(&self) -> [u8; CHALLENGE_LEN] {
        let mut p = [0u8; CHALLENGE_LEN];
        p[0] = TYPE_RELAY_CHALLENGE;
        p[4..12].copy_from_slice(&self.relay_id.to_be_bytes());
        p[12] = self.side;
        p[16..24].copy_from_slice(&self.counter.to_be_bytes());
        p[24..32].copy_from_slice(&self.issued.to_be_bytes());
        p[32..48].copy_from_slice(&self.cookie);
        p
    }

    pub fn parse(p: &[u8]) -> Result<Challenge, RelayError> {
        if p.len() != CHALLENGE_LEN
            || p[0] != TYPE_RELAY_CHALLENGE
            || p[1..4] != [0, 0, 0]
            || p[13..16] != [0, 0, 0]
            || p[12] > 1
        {
            return Err(RelayError::Malformed);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&p[32..48]);
        Ok(Challenge {
            relay_id: RelayId(u64_at(4)),
            side: p[12],
            counter: u64_at(16),
            issued: u64_at(24),
            cookie,
        })
    }

    /// What the node appends to its next Bind.
    pub fn tail(&self) -> [u8; COOKIE_TAIL_LEN] {
        let mut t = [0u8; COOKIE_TAIL_LEN];
        t[..8].copy_from_slice(&self.issued.to_be_bytes());
        t[8..].copy_from_slice(&self.cookie);
        t
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
    fn cookies_name_the_address_side_and_time() {
        let key = cookie_key(b"relay secret shared by NMS and TRS");
        let a: std::net::SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let c = Challenge {
            relay_id: RelayId(7),
            side: 1,
            counter: 3,
            issued: 1_900_000_000,
            cookie: cookie(&key, a, RelayId(7), 1, 1_900_000_000),
        };
        let p = c.encode();
        assert_eq!(Challenge::parse(&p), Ok(c));
        let tail = c.tail();
        let ok = |addr, side, now| cookie_valid(&key, addr, RelayId(7), side, &tail, now);
        assert!(ok(a, 1, 1_900_000_000));
        assert!(ok(a, 1, 1_900_000_000 + COOKIE_LIFETIME_SECS));
        assert!(!ok(a, 1, 1_900_000_001 + COOKIE_LIFETIME_SECS), "too old");
        assert!(!ok(a, 1, 1_900_000_000 - 2), "from the future");
        assert!(!ok("198.51.100.7:40001".parse().unwrap(), 1, 1_900_000_000));
        assert!(!ok(
            "[2001:db8::7]:40000".parse().unwrap(),
            1,
            1_900_000_000
        ));
        assert!(!ok(a, 0, 1_900_000_000), "the other side");
        for len in 0..CHALLENGE_LEN {
            assert!(Challenge::parse(&p[..len]).is_err());
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
