//! The TCP leg's framing in the TLS byte stream
//! (`cyphonic_transport::framing`): `u16 length || datagram`, length 0 a
//! keepalive.
//!
//! The first two bytes say how to cut the rest into reads (as a stream
//! delivers them, in any split); the rest is the stream. Checks: the frames
//! decoded read by read are the frames decoded in one go; the buffer never
//! holds more than one read plus one partial frame; every frame re-encodes,
//! and the encoded frames are exactly the stream's decoded prefix, the
//! pending bytes its suffix.

use cyphonic_transport::framing::{encode, encode_keepalive, Frame, FrameDecoder, HEADER_LEN};
use cyphonic_transport::MAX_DATAGRAM;

pub fn check(data: &[u8]) {
    let (cuts, stream) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return,
    };

    let mut whole = FrameDecoder::new();
    whole.handle_bytes(stream);
    let expected = drain(&mut whole);
    assert!(whole.pending() < HEADER_LEN + MAX_DATAGRAM);

    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    let mut rest = stream;
    let mut step = 0u32;
    while !rest.is_empty() {
        // Read sizes from 1 to 16 bytes, varied by the cut pattern.
        let n = 1 + usize::from((cuts.rotate_left(step) & 0x0f) as u8);
        step += 4;
        let (read, after) = rest.split_at(n.min(rest.len()));
        dec.handle_bytes(read);
        got.extend(drain(&mut dec));
        // Drained: only a partial frame is left.
        assert!(dec.pending() < HEADER_LEN + MAX_DATAGRAM);
        rest = after;
    }
    assert_eq!(got, expected, "frames depend on how the stream was cut");
    assert_eq!(dec.pending(), whole.pending());

    let mut encoded = Vec::new();
    for frame in &expected {
        match frame {
            Frame::Keepalive => encode_keepalive(&mut encoded),
            Frame::Datagram(d) => {
                assert!(!d.is_empty() && d.len() <= MAX_DATAGRAM);
                encode(d, &mut encoded).expect("a decoded datagram fits a frame");
            }
        }
    }
    let (prefix, suffix) = stream.split_at(encoded.len());
    assert_eq!(encoded, prefix);
    assert_eq!(suffix.len(), whole.pending());
}

fn drain(dec: &mut FrameDecoder) -> Vec<Frame> {
    std::iter::from_fn(|| dec.poll_frame()).collect()
}
