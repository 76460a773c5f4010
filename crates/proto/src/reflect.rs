//! Reflect: an unauthenticated echo of the address a datagram came from,
//! like a STUN Binding (RFC 8489) but in cyphonic's own framing, for
//! `cyphonic netcheck` (`docs/protocol.md` §4.8).
//!
//! A Reflect Request is padded to [`REQUEST_LEN`], which is larger than
//! any Reflect Response ([`RESPONSE_MAX`]): whoever spoofs a victim's
//! address gets fewer bytes sent to it than it sent itself. The NMS answers
//! with the addresses `netcheck` should try next (its own public
//! addresses, the TRS list); a TRS with the observed address only.

use std::net::SocketAddr;

use crate::wire::{Reader, WireError, Writer};

/// Byte 0 of a Reflect Request.
pub const TYPE_REFLECT_REQUEST: u8 = 0x0b;
/// Byte 0 of a Reflect Response.
pub const TYPE_REFLECT_RESPONSE: u8 = 0x0c;
/// The only version: requests of another are dropped.
pub const VERSION: u8 = 1;
/// `[type][version][2 reserved][txid u64]`.
pub const HEADER_LEN: usize = 12;
/// NMS addresses a response names at most (writers cut longer lists).
pub const MAX_NMS_ADDRS: usize = 4;
/// TRS addresses a response names at most (writers cut longer lists).
pub const MAX_RELAYS: usize = 8;
/// The longest `socket_addr` (an IPv6 one).
const SOCKET_ADDR_MAX: usize = 19;
/// The largest Reflect Response: header, observed address, both lists full
/// of IPv6 addresses.
pub const RESPONSE_MAX: usize = HEADER_LEN
    + SOCKET_ADDR_MAX
    + (1 + MAX_NMS_ADDRS * SOCKET_ADDR_MAX)
    + (1 + MAX_RELAYS * SOCKET_ADDR_MAX);
/// The shortest Reflect Request answered: never shorter than a response.
pub const REQUEST_LEN: usize = 264;

const _: () = assert!(RESPONSE_MAX <= REQUEST_LEN);

/// Why a datagram is not a Reflect message we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReflectError {
    #[error("not a Reflect message (type {0:#04x})")]
    WrongType(u8),
    #[error("Reflect Request of {0} bytes, shorter than {REQUEST_LEN}")]
    TooShort(usize),
    #[error("Reflect version {0}, not {VERSION}")]
    Version(u8),
    #[error("reserved bytes not zero")]
    Reserved,
    #[error("more than {max} addresses in a list")]
    TooManyAddrs { max: usize },
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A Reflect Request: its transaction ID; the rest is padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflectRequest {
    pub txid: u64,
}

impl ReflectRequest {
    /// The request, zero-padded to [`REQUEST_LEN`].
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut p = [0u8; REQUEST_LEN];
        p[..HEADER_LEN].copy_from_slice(&header(TYPE_REFLECT_REQUEST, self.txid));
        p
    }

    /// Accepts a request of at least [`REQUEST_LEN`] bytes; the padding is
    /// not read.
    pub fn parse(p: &[u8]) -> Result<ReflectRequest, ReflectError> {
        if p.len() < REQUEST_LEN {
            return Err(match p.first() {
                Some(&t) if t != TYPE_REFLECT_REQUEST => ReflectError::WrongType(t),
                _ => ReflectError::TooShort(p.len()),
            });
        }
        let txid = parse_header(p, TYPE_REFLECT_REQUEST)?;
        Ok(ReflectRequest { txid })
    }
}

/// A Reflect Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflectResponse {
    /// The request's.
    pub txid: u64,
    /// The request's source address as the answering server saw it.
    pub observed: SocketAddr,
    /// The NMS's public addresses with its signaling port (none from a TRS).
    pub nms: Vec<SocketAddr>,
    /// The TRS addresses the NMS hands out in relay grants, best first
    /// (none from a TRS).
    pub relays: Vec<SocketAddr>,
}

impl ReflectResponse {
    /// The response; lists beyond [`MAX_NMS_ADDRS`] and [`MAX_RELAYS`]
    /// are cut, so it is never longer than [`RESPONSE_MAX`].
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(&header(TYPE_REFLECT_RESPONSE, self.txid))
            .socket_addr(&self.observed)
            .socket_addrs(&self.nms[..self.nms.len().min(MAX_NMS_ADDRS)])
            .socket_addrs(&self.relays[..self.relays.len().min(MAX_RELAYS)]);
        w.into_inner()
    }

    /// Writes the response over the start of `buf` (which held the
    /// request, so it is long enough) and returns its length; `None` if
    /// `buf` is shorter than the response.
    pub fn write_into(&self, buf: &mut [u8]) -> Option<usize> {
        let bytes = self.encode();
        buf.get_mut(..bytes.len())?.copy_from_slice(&bytes);
        Some(bytes.len())
    }

    pub fn parse(p: &[u8]) -> Result<ReflectResponse, ReflectError> {
        let txid = parse_header(p, TYPE_REFLECT_RESPONSE)?;
        let mut r = Reader::new(&p[HEADER_LEN..]);
        let observed = r.socket_addr()?;
        let nms = bounded_addrs(&mut r, MAX_NMS_ADDRS)?;
        let relays = bounded_addrs(&mut r, MAX_RELAYS)?;
        r.finish()?;
        Ok(ReflectResponse {
            txid,
            observed,
            nms,
            relays,
        })
    }
}

fn header(kind: u8, txid: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[1] = VERSION;
    h[4..].copy_from_slice(&txid.to_be_bytes());
    h
}

/// The txid of a header of type `kind`, version [`VERSION`], reserved
/// bytes zero.
fn parse_header(p: &[u8], kind: u8) -> Result<u64, ReflectError> {
    let mut r = Reader::new(p);
    let [t, version, r0, r1] = r.array::<4>()?;
    if t != kind {
        return Err(ReflectError::WrongType(t));
    }
    if version != VERSION {
        return Err(ReflectError::Version(version));
    }
    if r0 != 0 || r1 != 0 {
        return Err(ReflectError::Reserved);
    }
    Ok(r.u64()?)
}

/// `socket_addrs` with a count of at most `max`.
fn bounded_addrs(r: &mut Reader<'_>, max: usize) -> Result<Vec<SocketAddr>, ReflectError> {
    let n = usize::from(r.u8()?);
    if n > max {
        return Err(ReflectError::TooManyAddrs { max });
    }
    (0..n).map(|_| Ok(r.socket_addr()?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_response() -> ReflectResponse {
        let v6 = |h: u16| {
            SocketAddr::new(
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, h).into(),
                4503,
            )
        };
        ReflectResponse {
            txid: 0x0102_0304_0506_0708,
            observed: v6(0x11),
            nms: (1..=10).map(v6).collect(),
            relays: (1..=20).map(v6).collect(),
        }
    }

    #[test]
    fn a_request_round_trips_and_is_padded() {
        let p = ReflectRequest { txid: 42 }.encode();
        assert_eq!(p.len(), REQUEST_LEN);
        assert_eq!(&p[..4], &[TYPE_REFLECT_REQUEST, VERSION, 0, 0]);
        assert!(p[HEADER_LEN..].iter().all(|b| *b == 0));
        assert_eq!(ReflectRequest::parse(&p), Ok(ReflectRequest { txid: 42 }));
        // Longer is fine; the padding is not read.
        let mut long = p.to_vec();
        long.extend_from_slice(&[0xff; 100]);
        assert_eq!(
            ReflectRequest::parse(&long),
            Ok(ReflectRequest { txid: 42 })
        );
    }

    #[test]
    fn a_short_or_odd_request_is_refused() {
        let p = ReflectRequest { txid: 42 }.encode();
        assert_eq!(
            ReflectRequest::parse(&p[..REQUEST_LEN - 1]),
            Err(ReflectError::TooShort(REQUEST_LEN - 1))
        );
        assert_eq!(ReflectRequest::parse(&[]), Err(ReflectError::TooShort(0)));
        let mut v = p;
        v[1] = 2;
        assert_eq!(ReflectRequest::parse(&v), Err(ReflectError::Version(2)));
        let mut r = p;
        r[3] = 1;
        assert_eq!(ReflectRequest::parse(&r), Err(ReflectError::Reserved));
        let mut t = p;
        t[0] = TYPE_REFLECT_RESPONSE;
        assert_eq!(
            ReflectRequest::parse(&t),
            Err(ReflectError::WrongType(TYPE_REFLECT_RESPONSE))
        );
    }

    #[test]
    fn a_response_round_trips_with_its_lists_cut() {
        let full = full_response();
        let bytes = full.encode();
        let back = ReflectResponse::parse(&bytes).expect("a response");
        assert_eq!(back.txid, full.txid);
        assert_eq!(back.observed, full.observed);
        assert_eq!(back.nms, full.nms[..MAX_NMS_ADDRS]);
        assert_eq!(back.relays, full.relays[..MAX_RELAYS]);
        let v4 = ReflectResponse {
            txid: 1,
            observed: "192.0.2.11:40001".parse().expect("addr"),
            nms: vec!["192.0.2.1:4502".parse().expect("addr")],
            relays: Vec::new(),
        };
        assert_eq!(ReflectResponse::parse(&v4.encode()), Ok(v4));
    }

    #[test]
    fn a_response_is_never_longer_than_its_request() {
        let bytes = full_response().encode();
        assert_eq!(bytes.len(), RESPONSE_MAX);
        assert!(bytes.len() <= REQUEST_LEN);
        // Written over the request it answers.
        let mut buf = ReflectRequest { txid: 7 }.encode();
        let n = full_response().write_into(&mut buf).expect("fits");
        assert!(n <= REQUEST_LEN);
        assert!(full_response().write_into(&mut [0u8; 20]).is_none());
    }

    #[test]
    fn a_bad_response_is_an_error_never_a_panic() {
        let bytes = full_response().encode();
        for len in 0..bytes.len() {
            assert!(ReflectResponse::parse(&bytes[..len]).is_err(), "{len}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ReflectResponse::parse(&trailing).is_err());
        let mut many = bytes[..HEADER_LEN + SOCKET_ADDR_MAX].to_vec();
        many.push(MAX_NMS_ADDRS as u8 + 1);
        assert_eq!(
            ReflectResponse::parse(&many),
            Err(ReflectError::TooManyAddrs { max: MAX_NMS_ADDRS })
        );
    }
}
