//! The TCP leg's framing: cyphonic datagrams in a TLS byte stream.
//!
//! ```text
//! frame = length (u16, big-endian) || datagram [length]
//! ```
//!
//! A frame of length 0 is a keepalive: it carries no datagram (cyphonic
//! datagrams always have at least their type byte) and only shows the peer
//! that the leg is alive. Every `u16` is a valid length, so no byte stream
//! is malformed; a stream that ends inside a frame just ends.
//!
//! Pure: [`encode`] appends to a caller's buffer, [`FrameDecoder`] takes
//! bytes as they arrive, in any split, and yields whole frames.

use crate::config::MAX_DATAGRAM;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 2;

/// Appends one frame carrying `datagram` to `out`.
///
/// `datagram` must be 1..=65 535 bytes (the hub checks before queueing);
/// anything longer would not survive the `u16` length, so it is refused
/// here rather than truncated.
pub fn encode(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), FrameTooLarge> {
    let len = u16::try_from(datagram.len()).map_err(|_| FrameTooLarge(datagram.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Appends a keepalive (an empty frame) to `out`.
pub fn encode_keepalive(out: &mut Vec<u8>) {
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// A datagram longer than a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} bytes do not fit a frame (at most {MAX_DATAGRAM})")]
pub struct FrameTooLarge(pub usize);

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Keepalive,
    Datagram(Vec<u8>),
}

/// Reassembles frames from stream bytes.
///
/// Call [`FrameDecoder::handle_bytes`] with whatever the stream gave, then
/// [`FrameDecoder::poll_frame`] until it returns `None`, then read again.
/// Holding to that order bounds the buffer to one read plus one partial
/// frame (at most 65 537 bytes).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the undecoded bytes in `buf`.
    pos: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes read from the stream.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        // Drop what was decoded before appending, so the buffer does not
        // grow with the stream.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if the bytes so far hold one.
    #[must_use]
    pub fn poll_frame(&mut self) -> Option<Frame> {
        let rest = &self.buf[self.pos..];
        let (len, body) = match rest {
            [hi, lo, body @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), body),
            _ => return None,
        };
        if body.len() < len {
            return None;
        }
        let frame = if len == 0 {
            Frame::Keepalive
        } else {
            Frame::Datagram(body[..len].to_vec())
        };
        self.pos += HEADER_LEN + len;
        Some(frame)
    }

    /// Bytes of a frame received only in part.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(datagrams: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for d in datagrams {
            encode(d, &mut out).unwrap();
        }
        out
    }

    fn drain(dec: &mut FrameDecoder, into: &mut Vec<Frame>) {
        while let Some(f) = dec.poll_frame() {
            into.push(f);
        }
    }

    #[test]
    fn round_trip_whole() {
        let datagrams = vec![
            vec![4u8; 1],
            vec![1, 2, 3],
            vec![9u8; 1452],
            vec![7u8; MAX_DATAGRAM],
        ];
        let bytes = frames(&datagrams);
        let mut dec = FrameDecoder::new();
        dec.handle_bytes(&bytes);
        let mut got = Vec::new();
        drain(&mut dec, &mut got);
        let want: Vec<Frame> = datagrams.into_iter().map(Frame::Datagram).collect();
        assert_eq!(got, want);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn every_split_point_and_byte_by_byte() {
        let datagrams: Vec<Vec<u8>> = (1..40u8).map(|n| vec![n; n as usize * 7]).collect();
        let mut bytes = frames(&datagrams);
        encode_keepalive(&mut bytes);
        let mut want: Vec<Frame> = datagrams.iter().cloned().map(Frame::Datagram).collect();
        want.push(Frame::Keepalive);

        // Two pieces, split at every offset.
        for cut in 0..=bytes.len() {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in [&bytes[..cut], &bytes[cut..]] {
                dec.handle_bytes(piece);
                drain(&mut dec, &mut got);
            }
            assert_eq!(got, want, "cut at {cut}");
        }
        // One byte at a time.
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            dec.handle_bytes(std::slice::from_ref(b));
            drain(&mut dec, &mut got);
            assert!(dec.pending() <= HEADER_LEN + 39 * 7);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn keepalive_is_an_empty_frame() {
        let mut out = Vec::new();
        encode_keepalive(&mut out);
        assert_eq!(out, [0, 0]);
        let mut dec = FrameDecoder::new();
        dec.handle_bytes(&out);
        assert_eq!(dec.poll_frame(), Some(Frame::Keepalive));
        assert_eq!(dec.poll_frame(), None);
    }

    #[test]
    fn header_is_big_endian() {
        let mut out = Vec::new();
        encode(&[0xAA; 0x0102], &mut out).unwrap();
        assert_eq!(&out[..2], &[0x01, 0x02]);
    }

    #[test]
    fn oversized_datagram_is_refused_not_truncated() {
        let mut out = Vec::new();
        assert_eq!(
            encode(&vec![0; MAX_DATAGRAM + 1], &mut out),
            Err(FrameTooLarge(MAX_DATAGRAM + 1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn truncated_stream_yields_nothing_more() {
        let bytes = frames(&[vec![1; 10], vec![2; 10]]);
        let mut dec = FrameDecoder::new();
        dec.handle_bytes(&bytes[..bytes.len() - 1]);
        assert_eq!(dec.poll_frame(), Some(Frame::Datagram(vec![1; 10])));
        assert_eq!(dec.poll_frame(), None);
        assert_eq!(dec.pending(), 11);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Any stream decodes: every u16 is a valid length.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut dec = FrameDecoder::new();
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 300) as usize;
            let chunk: Vec<u8> = (0..n).map(|i| (seed >> (i % 56)) as u8).collect();
            dec.handle_bytes(&chunk);
            while dec.poll_frame().is_some() {}
            assert!(dec.pending() < HEADER_LEN + MAX_DATAGRAM);
        }
    }
}
