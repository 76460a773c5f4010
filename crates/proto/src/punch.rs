//! Path framing outside the AEAD's routing: the punch packet that opens a
//! NAT towards a peer, and the path probe messages carried inside a
//! tunnel (a probe asks the peer to answer on the path it came by; its
//! ack proves the path works both ways). `docs/protocol.md` §§ punching
//! and path probes.

use crate::{RouteId, TYPE_PUNCH};

/// `[9][3 reserved][route_id u64]`.
pub const PUNCH_LEN: usize = 12;

/// A punch packet for route `route_id`.
pub fn encode(route_id: RouteId) -> [u8; PUNCH_LEN] {
    let mut p = [0u8; PUNCH_LEN];
    p[0] = TYPE_PUNCH;
    p[4..12].copy_from_slice(&route_id.to_be_bytes());
    p
}

/// The route a punch packet names; `None` if it is not one (another
/// length or type, or a non-zero reserved byte, as for every other type).
pub fn parse(p: &[u8]) -> Option<RouteId> {
    if p.len() != PUNCH_LEN || p[0] != TYPE_PUNCH || p[1..4] != [0, 0, 0] {
        return None;
    }
    Some(RouteId(u64::from_be_bytes(p[4..12].try_into().ok()?)))
}

/// Tunnel messages: plaintexts of data packets whose first byte is not an
/// IP version nibble (4 or 6).
pub const MSG_PATH_PROBE: u8 = 0x01;
pub const MSG_PATH_PROBE_ACK: u8 = 0x02;
/// "Probe my direct endpoints now": sent over the relay by the side that
/// has just opened its NAT toward the peer's endpoints.
pub const MSG_PROBE_REQUEST: u8 = 0x03;
/// A size probe (path MTU discovery, `docs/protocol.md` §7.7):
/// `[0x04][nonce u64]` and zero padding up to the size probed. Answered
/// by a size ack on the path it came by.
pub const MSG_SIZE_PROBE: u8 = 0x04;
pub const MSG_SIZE_ACK: u8 = 0x05;
/// `[type][nonce u64]`.
pub const PROBE_LEN: usize = 9;

/// A path probe or its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Probe {
        nonce: u64,
    },
    Ack {
        nonce: u64,
    },
    /// Asks the peer to probe our direct endpoints (the nonce is not
    /// answered; it keeps the messages one size).
    Request {
        nonce: u64,
    },
    /// A size probe, as the data plane hands it on: its first
    /// [`PROBE_LEN`] bytes (the padding only gave it its size).
    Size {
        nonce: u64,
    },
    SizeAck {
        nonce: u64,
    },
}

/// A size probe `len` bytes long (at least [`PROBE_LEN`]).
pub fn size_probe(nonce: u64, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(PROBE_LEN)];
    m[0] = MSG_SIZE_PROBE;
    m[1..PROBE_LEN].copy_from_slice(&nonce.to_be_bytes());
    m
}

impl Probe {
    pub fn encode(self) -> [u8; PROBE_LEN] {
        let (t, nonce) = match self {
            Probe::Probe { nonce } => (MSG_PATH_PROBE, nonce),
            Probe::Ack { nonce } => (MSG_PATH_PROBE_ACK, nonce),
            Probe::Request { nonce } => (MSG_PROBE_REQUEST, nonce),
            Probe::Size { nonce } => (MSG_SIZE_PROBE, nonce),
            Probe::SizeAck { nonce } => (MSG_SIZE_ACK, nonce),
        };
        let mut m = [0u8; PROBE_LEN];
        m[0] = t;
        m[1..].copy_from_slice(&nonce.to_be_bytes());
        m
    }

    /// `None`: not a probe message (unknown type or length).
    pub fn parse(m: &[u8]) -> Option<Probe> {
        if m.len() != PROBE_LEN {
            return None;
        }
        let nonce = u64::from_be_bytes(m[1..].try_into().ok()?);
        match m[0] {
            MSG_PATH_PROBE => Some(Probe::Probe { nonce }),
            MSG_PATH_PROBE_ACK => Some(Probe::Ack { nonce }),
            MSG_PROBE_REQUEST => Some(Probe::Request { nonce }),
            MSG_SIZE_PROBE => Some(Probe::Size { nonce }),
            MSG_SIZE_ACK => Some(Probe::SizeAck { nonce }),
            _ => None,
        }
    }

    /// The answer to a probe (the same nonce).
    pub fn ack(self) -> Option<Probe> {
        match self {
            Probe::Probe { nonce } => Some(Probe::Ack { nonce }),
            Probe::Size { nonce } => Some(Probe::SizeAck { nonce }),
            Probe::Ack { .. } | Probe::Request { .. } | Probe::SizeAck { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punches_round_trip_and_junk_is_refused() {
        let p = encode(RouteId(0x0102_0304_0506_0708));
        assert_eq!(p, [9, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(parse(&p), Some(RouteId(0x0102_0304_0506_0708)));
        assert_eq!(parse(&p[..11]), None);
        let mut q = p;
        q[0] = 8;
        assert_eq!(parse(&q), None);
        assert_eq!(parse(&[]), None);
    }

    /// Found by the `data` fuzz target (`parse(encode(parse(x))) == x`):
    /// a punch with a non-zero reserved byte was taken for one.
    #[test]
    fn punches_with_reserved_bytes_set_are_refused() {
        for at in 1..4 {
            let mut p = encode(RouteId(0x4433_5500_1166_7788));
            p[at] = 0x22;
            assert_eq!(parse(&p), None, "reserved byte {at}");
        }
    }

    #[test]
    fn probes_round_trip_and_junk_is_refused() {
        for m in [
            Probe::Probe { nonce: 7 },
            Probe::Ack { nonce: u64::MAX },
            Probe::Request { nonce: 3 },
            Probe::Size { nonce: 4 },
            Probe::SizeAck { nonce: 5 },
        ] {
            assert_eq!(Probe::parse(&m.encode()), Some(m));
        }
        assert_eq!(
            Probe::Probe { nonce: 1 }.encode(),
            [1, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            Probe::Probe { nonce: 5 }.ack(),
            Some(Probe::Ack { nonce: 5 })
        );
        assert_eq!(Probe::Ack { nonce: 5 }.ack(), None);
        assert_eq!(Probe::parse(&[1, 2, 3]), None);
        assert_eq!(Probe::parse(&[6, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        let padded = size_probe(9, 1200);
        assert_eq!(padded.len(), 1200);
        assert_eq!(
            Probe::parse(&padded[..PROBE_LEN]),
            Some(Probe::Size { nonce: 9 })
        );
        assert_eq!(
            Probe::parse(&padded),
            None,
            "the data plane cuts the padding"
        );
        assert_eq!(
            Probe::Size { nonce: 5 }.ack(),
            Some(Probe::SizeAck { nonce: 5 })
        );
        assert_eq!(Probe::parse(&[]), None);
    }
}
