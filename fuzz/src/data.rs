//! Data packets (`cyphonic_proto::data`) and the punch and path-probe
//! messages beside them (`cyphonic_proto::punch`).
//!
//! Checks: [`data_receiver_index`] agrees with the header bytes;
//! [`RecvKey::open_in_place`] with the fixed key gives a plaintext range
//! inside the packet and refuses the same packet twice; the input as a
//! plaintext survives `seal_in_place` then `open_in_place`, and any
//! altered byte of the sealed packet is refused; punch and probe messages
//! encode back to their bytes.

use cyphonic_proto::data::{
    data_receiver_index, DataError, RecvKey, SendKey, DATA_HEADER_LEN, DATA_OVERHEAD, TAG_LEN,
    TYPE_DATA,
};
use cyphonic_proto::punch::{self, Probe};

use crate::fixed;

pub fn check(data: &[u8]) {
    check_packet(data);
    check_round_trip(data);
    if let Some(route) = punch::parse(data) {
        assert_eq!(punch::encode(route), data);
    }
    if let Some(probe) = Probe::parse(data) {
        assert_eq!(probe.encode(), data);
        if let Some(ack) = probe.ack() {
            assert_eq!(Probe::parse(&ack.encode()), Some(ack));
        }
    }
}

fn check_packet(data: &[u8]) {
    let index = data_receiver_index(data);
    let well_formed = data.len() >= DATA_OVERHEAD && data[0] == TYPE_DATA && data[1..4] == [0; 3];
    assert_eq!(index.is_some(), well_formed);
    if let Some(index) = index {
        assert_eq!(index.to_be_bytes(), data[4..8]);
    }

    let key = RecvKey::new(&fixed::DATA_KEY, fixed::DATA_INDEX);
    let mut packet = data.to_vec();
    match key.open_in_place(&mut packet) {
        Ok(range) => {
            assert_eq!(index, Some(fixed::DATA_INDEX));
            assert_eq!(range, DATA_HEADER_LEN..data.len() - TAG_LEN);
            let mut again = data.to_vec();
            assert!(matches!(
                key.open_in_place(&mut again),
                Err(DataError::Replay(_))
            ));
        }
        Err(DataError::Malformed) => assert!(index.is_none()),
        Err(DataError::WrongIndex) => assert_ne!(index, Some(fixed::DATA_INDEX)),
        Err(_) => assert_eq!(index, Some(fixed::DATA_INDEX)),
    }
}

fn check_round_trip(plaintext: &[u8]) {
    let send = SendKey::new(&fixed::DATA_KEY, fixed::DATA_INDEX);
    let recv = RecvKey::new(&fixed::DATA_KEY, fixed::DATA_INDEX);
    let mut buf = vec![0u8; DATA_OVERHEAD + plaintext.len()];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    assert_eq!(
        send.seal_in_place(
            &mut buf[..DATA_OVERHEAD + plaintext.len() - 1],
            plaintext.len()
        ),
        Err(DataError::BufferTooSmall)
    );
    let len = send
        .seal_in_place(&mut buf, plaintext.len())
        .expect("seal a datagram");
    assert_eq!(len, buf.len());
    assert_eq!(data_receiver_index(&buf), Some(fixed::DATA_INDEX));

    // One altered byte (chosen by the input) and the packet is refused,
    // without moving the window.
    let at = plaintext.iter().fold(0usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(*b))
    }) % buf.len();
    let mut forged = buf.clone();
    forged[at] ^= 0x01;
    assert!(
        recv.open_in_place(&mut forged).is_err(),
        "byte {at} altered"
    );

    let sealed = buf.clone();
    let range = recv.open_in_place(&mut buf).expect("open what was sealed");
    assert_eq!(&buf[range], plaintext);
    let mut replay = sealed;
    assert!(matches!(
        recv.open_in_place(&mut replay),
        Err(DataError::Replay(_))
    ));
}
