//! NMS link frames (`cyphonic_proto::nms_link`, `docs/protocol.md` §5.19)
//! as an NMS reads them from a peer: the length prefix
//! ([`LinkMessage::frame_len`]) and the body ([`LinkMessage::decode`]).
//!
//! Checks: a length the header announces is 1..=MAX_FRAME; a body that
//! decodes re-encodes to a frame whose header announces its body and which
//! decodes to the same message (`decode(encode(decode(x))) == decode(x)`);
//! only answers carry an answer ticket.

use cyphonic_proto::nms_link::{LinkMessage, MAX_FRAME};

pub fn check(data: &[u8]) {
    if let Some(header) = data.get(..4) {
        let header: [u8; 4] = header.try_into().expect("four bytes");
        if let Ok(len) = LinkMessage::frame_len(header) {
            assert!((1..=MAX_FRAME).contains(&len));
        }
    }
    let Ok(message) = LinkMessage::decode(data) else {
        return;
    };
    let frame = message.encode();
    let header: [u8; 4] = frame[..4].try_into().expect("a header");
    assert_eq!(
        LinkMessage::frame_len(header).expect("our own frame's length"),
        frame.len() - 4
    );
    let again = LinkMessage::decode(&frame[4..]).expect("our own frame decodes");
    assert_eq!(again, message);
    let is_answer = matches!(
        message,
        LinkMessage::Directed { .. } | LinkMessage::Refused { .. } | LinkMessage::NotHere { .. }
    );
    assert_eq!(message.answer_ticket().is_some(), is_answer);
}
