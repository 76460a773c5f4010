//! Signaling (`cyphonic_proto::signal`): the packet layout
//! ([`peek_session`], [`SignalCipher::open`]) and the message bodies
//! ([`Envelope::decode`]).
//!
//! Checks: `peek_session` agrees with the header bytes; a packet that opens
//! (the seeds are sealed with [`fixed::SIGNAL_KEY`]) does not open twice;
//! a body that decodes encodes back to the same bytes (the format is
//! canonical), and survives sealing by one end and opening by the other.

use cyphonic_proto::signal::{
    peek_session, Envelope, Role, SignalCipher, SignalError, MAX_SIGNAL_PACKET, SIGNAL_HEADER_LEN,
    SIGNAL_TAG_LEN, SIGNAL_VERSION, TYPE_SIGNALING,
};

use crate::fixed;

pub fn check(data: &[u8]) {
    check_header(data);
    for role in [Role::Nms, Role::Node] {
        let mut cipher = SignalCipher::new(fixed::SESSION, &fixed::SIGNAL_KEY, role, 0);
        if let Ok(envelope) = cipher.open(data) {
            check_envelope(&envelope);
            assert!(
                matches!(cipher.open(data), Err(SignalError::Replay(_))),
                "a signaling packet opened twice"
            );
        }
    }
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(
            envelope.encode(),
            data,
            "decode then encode changed the body of {envelope:?}"
        );
        check_envelope(&envelope);
    }
}

fn check_header(data: &[u8]) {
    match peek_session(data) {
        Ok(session) => {
            assert_eq!(data[0], TYPE_SIGNALING);
            assert_eq!(data[1], SIGNAL_VERSION);
            assert!((SIGNAL_HEADER_LEN + SIGNAL_TAG_LEN..=MAX_SIGNAL_PACKET).contains(&data.len()));
            assert_eq!(session.to_be_bytes(), data[4..12]);
        }
        Err(SignalError::NotSignaling) => assert_ne!(data.first(), Some(&TYPE_SIGNALING)),
        Err(_) => {}
    }
}

/// Every message either end can decode travels both ways: it fits a
/// datagram and comes out of the other end's cipher unchanged.
fn check_envelope(envelope: &Envelope) {
    let body = envelope.encode();
    assert_eq!(Envelope::decode(&body).as_ref(), Ok(envelope));
    let mut node = SignalCipher::new(fixed::SESSION, &fixed::SIGNAL_KEY, Role::Node, 1);
    let mut nms = SignalCipher::new(fixed::SESSION, &fixed::SIGNAL_KEY, Role::Nms, 1);
    let up = node.seal(envelope);
    assert!(up.len() <= MAX_SIGNAL_PACKET, "{} bytes sealed", up.len());
    assert_eq!(nms.open(&up).as_ref(), Ok(envelope));
    let down = nms.seal(envelope);
    assert_eq!(node.open(&down).as_ref(), Ok(envelope));
    // A node does not take its own packet for the NMS's.
    assert!(node.open(&up).is_err());
}
