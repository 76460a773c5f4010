//! Bounds-checked big-endian readers and writers for our message bodies.
//!
//! Every field type used in `docs/protocol.md` has one encoder here and one
//! decoder, so the two cannot drift apart. A [`Reader`] never panics: every
//! accessor returns [`WireError`] when the input is short or invalid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a message body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("invalid {field}")]
    Invalid { field: &'static str },
    #[error("{extra} trailing bytes after the message")]
    Trailing { extra: usize },
}

/// Reads fields from a byte slice, front to back.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless every byte was consumed: trailing garbage is an error,
    /// not something to ignore silently.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                extra: self.buf.len(),
            })
        }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid { field }),
        }
    }

    /// `u8 length || UTF-8 bytes`.
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let len = self.u8()? as usize;
        std::str::from_utf8(self.bytes(len)?).map_err(|_| WireError::Invalid { field })
    }

    /// `u16 length || bytes`.
    pub fn blob(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u16()? as usize;
        self.bytes(len)
    }

    pub fn ipv4(&mut self) -> Result<Ipv4Addr, WireError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }

    pub fn ipv6(&mut self) -> Result<Ipv6Addr, WireError> {
        Ok(Ipv6Addr::from(self.array::<16>()?))
    }

    /// `u8 family (4 or 6) || address`.
    pub fn ip_addr(&mut self) -> Result<IpAddr, WireError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(self.ipv4()?)),
            6 => Ok(IpAddr::V6(self.ipv6()?)),
            _ => Err(WireError::Invalid {
                field: "address family",
            }),
        }
    }

    /// `u8 family (4 or 6) || address || u16 port`.
    pub fn socket_addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = self.ip_addr()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// `u8 count || count × socket_addr`.
    pub fn socket_addrs(&mut self) -> Result<Vec<SocketAddr>, WireError> {
        let n = self.u8()? as usize;
        (0..n).map(|_| self.socket_addr()).collect()
    }
}

/// Appends fields to a byte vector.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }

    /// Strings longer than 255 bytes are cut at a character boundary; every
    /// string we send (DNS names, error texts) is shorter by construction.
    pub fn str(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u8(end as u8).bytes(&s.as_bytes()[..end])
    }

    /// Blobs longer than 65535 bytes are a programming error on our side;
    /// they are cut rather than allowed to corrupt the framing.
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        let len = b.len().min(u16::MAX as usize);
        self.u16(len as u16).bytes(&b[..len])
    }

    pub fn ip_addr(&mut self, ip: &IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(ip) => self.u8(4).bytes(&ip.octets()),
            IpAddr::V6(ip) => self.u8(6).bytes(&ip.octets()),
        }
    }

    pub fn socket_addr(&mut self, a: &SocketAddr) -> &mut Self {
        self.ip_addr(&a.ip()).u16(a.port())
    }

    /// At most 255 addresses are written; callers bound their lists lower.
    pub fn socket_addrs(&mut self, addrs: &[SocketAddr]) -> &mut Self {
        let n = addrs.len().min(255);
        self.u8(n as u8);
        for a in &addrs[..n] {
            self.socket_addr(a);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_field() {
        let addrs: Vec<SocketAddr> = vec![
            "192.0.2.1:4501".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        ];
        let mut w = Writer::new();
        w.u8(7).u16(513).u32(70000).u64(1 << 40).bool(true);
        w.str("n1.cyphonic.internal")
            .blob(&[1, 2, 3])
            .socket_addrs(&addrs);
        let buf = w.into_inner();
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u16().unwrap(), 513);
        assert_eq!(r.u32().unwrap(), 70000);
        assert_eq!(r.u64().unwrap(), 1 << 40);
        assert!(r.bool("flag").unwrap());
        assert_eq!(r.str("name").unwrap(), "n1.cyphonic.internal");
        assert_eq!(r.blob().unwrap(), &[1, 2, 3]);
        assert_eq!(r.socket_addrs().unwrap(), addrs);
        r.finish().unwrap();
    }

    #[test]
    fn short_and_invalid_input_is_an_error() {
        assert_eq!(
            Reader::new(&[0, 1]).u32(),
            Err(WireError::Truncated { needed: 2 })
        );
        assert_eq!(
            Reader::new(&[9, 0, 0]).socket_addr(),
            Err(WireError::Invalid {
                field: "address family"
            })
        );
        assert!(Reader::new(&[2, 0xff, 0xfe]).str("name").is_err());
        assert!(Reader::new(&[2]).bool("flag").is_err());
        assert_eq!(
            Reader::new(&[1]).finish(),
            Err(WireError::Trailing { extra: 1 })
        );
    }
}
