//! Data packet sealing and opening (crates/proto/src/data.rs).

use std::collections::HashSet;
use std::sync::Arc;

use cyphonic_proto::data::{
    data_receiver_index, DataError, RecvKey, SendKey, DATA_HEADER_LEN, DATA_OVERHEAD, TAG_LEN,
    TYPE_DATA,
};
use cyphonic_proto::replay::ReplayError;
use cyphonic_proto::LocalIndex;

const KEY: [u8; 32] = [0x42; 32];
const INDEX: LocalIndex = LocalIndex(0x0102_0304);

fn pair() -> (SendKey, RecvKey) {
    (SendKey::new(&KEY, INDEX), RecvKey::new(&KEY, INDEX))
}

/// Seals `plaintext` into a fresh exact-size buffer.
fn seal(send: &SendKey, plaintext: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_OVERHEAD + plaintext.len()];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    let len = send.seal_in_place(&mut buf, plaintext.len()).unwrap();
    assert_eq!(len, buf.len());
    buf
}

fn open(recv: &RecvKey, packet: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut copy = packet.to_vec();
    let range = recv.open_in_place(&mut copy)?;
    Ok(copy[range].to_vec())
}

#[test]
fn round_trip() {
    let (send, recv) = pair();
    let inner = b"\x45\x00\x00\x1cinner ip packet bytes";
    let packet = seal(&send, inner);

    assert_eq!(packet[0], TYPE_DATA);
    assert_eq!(&packet[1..4], &[0, 0, 0]);
    assert_eq!(&packet[4..8], &INDEX.to_be_bytes());
    assert_eq!(&packet[8..16], &0u64.to_be_bytes());
    assert_eq!(packet.len(), DATA_HEADER_LEN + inner.len() + TAG_LEN);
    assert_ne!(
        &packet[DATA_HEADER_LEN..DATA_HEADER_LEN + inner.len()],
        inner
    );
    assert_eq!(data_receiver_index(&packet), Some(INDEX));

    assert_eq!(open(&recv, &packet).unwrap(), inner);
    assert_eq!(send.sent(), 1);
    assert_eq!(send.remote_index(), INDEX);

    let second = seal(&send, b"second");
    assert_eq!(&second[8..16], &1u64.to_be_bytes());
    assert_eq!(open(&recv, &second).unwrap(), b"second");
}

#[test]
fn seal_in_a_larger_buffer_reports_packet_length() {
    let (send, recv) = pair();
    let mut buf = [0u8; 1500];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 5].copy_from_slice(b"hello");
    let len = send.seal_in_place(&mut buf, 5).unwrap();
    assert_eq!(len, DATA_OVERHEAD + 5);
    let range = recv.open_in_place(&mut buf[..len]).unwrap();
    assert_eq!(&buf[range], b"hello");
}

#[test]
fn keepalive_round_trip() {
    let (send, recv) = pair();
    let packet = seal(&send, &[]);
    assert_eq!(packet.len(), DATA_OVERHEAD);
    let mut copy = packet.clone();
    let range = recv.open_in_place(&mut copy).unwrap();
    assert!(range.is_empty());
    assert_eq!(range.start, DATA_HEADER_LEN);
}

#[test]
fn buffer_too_small_does_not_consume_a_counter() {
    let (send, _) = pair();
    let mut buf = [0u8; DATA_OVERHEAD + 3];
    assert_eq!(
        send.seal_in_place(&mut buf, 4),
        Err(DataError::BufferTooSmall)
    );
    assert_eq!(
        send.seal_in_place(&mut buf[..5], 0),
        Err(DataError::BufferTooSmall)
    );
    assert_eq!(
        send.seal_in_place(&mut buf, usize::MAX),
        Err(DataError::BufferTooSmall)
    );
    assert_eq!(send.sent(), 0);
    assert_eq!(send.seal_in_place(&mut buf, 3), Ok(DATA_OVERHEAD + 3));
    assert_eq!(send.sent(), 1);
}

#[test]
fn tampering_anywhere_fails_auth_and_does_not_advance_the_window() {
    let (send, recv) = pair();
    let packets: Vec<Vec<u8>> = (0..3).map(|_| seal(&send, b"payload bytes")).collect();
    let genuine = &packets[2];

    // Every byte after the type/reserved/index fields: counter (header, AAD),
    // ciphertext and tag.
    for pos in 8..genuine.len() {
        let mut forged = genuine.clone();
        forged[pos] ^= 0x01;
        assert_eq!(open(&recv, &forged), Err(DataError::Auth), "byte {pos}");
    }
    // A forged far-future counter must not slide the window either.
    let mut forged = genuine.clone();
    forged[8..16].copy_from_slice(&1_000_000u64.to_be_bytes());
    assert_eq!(open(&recv, &forged), Err(DataError::Auth));
    assert_eq!(recv.max_counter(), 0);

    // The genuine packets, including the one whose counter was forged, open.
    for (i, packet) in packets.iter().enumerate() {
        assert_eq!(open(&recv, packet).unwrap(), b"payload bytes", "packet {i}");
    }
}

#[test]
fn header_fields_outside_aad_checks() {
    let (send, recv) = pair();
    let genuine = seal(&send, b"x");

    let mut wrong_type = genuine.clone();
    wrong_type[0] = 3;
    assert_eq!(open(&recv, &wrong_type), Err(DataError::Malformed));

    for pos in 1..4 {
        let mut reserved = genuine.clone();
        reserved[pos] = 1;
        assert_eq!(
            open(&recv, &reserved),
            Err(DataError::Malformed),
            "byte {pos}"
        );
    }

    for pos in 4..8 {
        let mut index = genuine.clone();
        index[pos] ^= 0x80;
        assert_eq!(
            open(&recv, &index),
            Err(DataError::WrongIndex),
            "byte {pos}"
        );
    }

    let other_session = RecvKey::new(&KEY, LocalIndex(INDEX.0 + 1));
    assert_eq!(open(&other_session, &genuine), Err(DataError::WrongIndex));
    let other_key = RecvKey::new(&[0x43; 32], INDEX);
    assert_eq!(open(&other_key, &genuine), Err(DataError::Auth));

    assert_eq!(open(&recv, &genuine).unwrap(), b"x");
}

#[test]
fn replayed_packet_is_rejected() {
    let (send, recv) = pair();
    let packet = seal(&send, b"once");
    assert_eq!(open(&recv, &packet).unwrap(), b"once");
    assert_eq!(
        open(&recv, &packet),
        Err(DataError::Replay(ReplayError::Duplicate))
    );
}

#[test]
fn reordered_packets_open_and_old_ones_do_not() {
    let (send, recv) = pair();
    let packets: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| seal(&send, &i.to_be_bytes()))
        .collect();
    assert_eq!(
        open(&recv, &packets[9_999]).unwrap(),
        9_999u32.to_be_bytes()
    );
    assert_eq!(
        open(&recv, &packets[5_000]).unwrap(),
        5_000u32.to_be_bytes()
    );
    // 9_999 - 8_128 = 1_871 is just outside the window.
    assert_eq!(
        open(&recv, &packets[1_871]),
        Err(DataError::Replay(ReplayError::TooOld))
    );
    assert_eq!(
        open(&recv, &packets[1_872]).unwrap(),
        1_872u32.to_be_bytes()
    );
}

#[test]
fn truncated_packets_are_malformed() {
    let (send, recv) = pair();
    let packet = seal(&send, b"sixteen bytes!!!");
    assert_eq!(packet.len(), 48);
    for len in 0..=32usize {
        let mut truncated = packet[..len.min(packet.len())].to_vec();
        let result = recv.open_in_place(&mut truncated);
        if len < DATA_OVERHEAD {
            assert_eq!(result, Err(DataError::Malformed), "len {len}");
            assert_eq!(data_receiver_index(&packet[..len]), None, "len {len}");
        } else {
            // A full header and 16 bytes: parses, fails authentication.
            assert_eq!(result, Err(DataError::Auth), "len {len}");
        }
    }
    for len in 33..packet.len() {
        assert_eq!(
            open(&recv, &packet[..len]),
            Err(DataError::Auth),
            "len {len}"
        );
    }
    assert!(open(&recv, &packet).is_ok());
}

#[test]
fn arbitrary_input_never_panics() {
    let (_, recv) = pair();
    // A cheap deterministic generator is enough to reach every branch.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..2_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 96) as usize;
        let mut packet: Vec<u8> = (0..len)
            .map(|i| (state.rotate_left(i as u32 % 64) as u8) ^ i as u8)
            .collect();
        if round % 2 == 0 && len >= DATA_HEADER_LEN {
            packet[..8].copy_from_slice(&[TYPE_DATA, 0, 0, 0, 1, 2, 3, 4]);
        }
        let _ = data_receiver_index(&packet);
        assert!(recv.open_in_place(&mut packet).is_err());
    }
}

#[test]
fn concurrent_seals_use_distinct_counters() {
    let send = Arc::new(SendKey::new(&KEY, INDEX));
    let per_thread = 2_000;
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let send = Arc::clone(&send);
            std::thread::spawn(move || {
                let mut counters = Vec::with_capacity(per_thread);
                let mut buf = [0u8; DATA_OVERHEAD + 4];
                for _ in 0..per_thread {
                    send.seal_in_place(&mut buf, 4).unwrap();
                    counters.push(u64::from_be_bytes(buf[8..16].try_into().unwrap()));
                }
                counters
            })
        })
        .collect();
    let mut all = HashSet::new();
    for handle in handles {
        for counter in handle.join().unwrap() {
            assert!(all.insert(counter), "counter {counter} used twice");
        }
    }
    assert_eq!(all.len(), 2 * per_thread);
    assert_eq!(send.sent(), 2 * per_thread as u64);
    assert!(all.iter().all(|&c| c < 2 * per_thread as u64));
}

#[test]
fn concurrent_opens_accept_each_packet_once() {
    let (send, recv) = pair();
    let recv = Arc::new(recv);
    let packets: Arc<Vec<Vec<u8>>> = Arc::new((0..500).map(|_| seal(&send, b"dup")).collect());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let recv = Arc::clone(&recv);
            let packets = Arc::clone(&packets);
            std::thread::spawn(move || packets.iter().filter(|p| open(&recv, p).is_ok()).count())
        })
        .collect();
    let accepted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(accepted, 500);
}
