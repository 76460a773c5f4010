//! Data packets: inner IP packets sealed with a tunnel's session keys.
//!
//! Once a Tunnel Request / Tunnel Response exchange ([`crate::handshake`])
//! has given both ends a pair of 32-byte keys, every inner IP packet travels
//! in one data packet:
//!
//! ```text
//!  0      1              4                  8                         16
//! +------+--------------+------------------+--------------------------+
//! | 0x04 | reserved = 0 | receiver_index   | counter                  |
//! | u8   | 3 bytes      | u32 big-endian   | u64 big-endian           |
//! +------+--------------+------------------+--------------------------+
//! | AES-256-GCM ciphertext of the inner IP packet (same length)       |
//! +--------------------------------------------------------------------+
//! | GCM tag, 16 bytes                                                  |
//! +--------------------------------------------------------------------+
//! ```
//!
//! - `receiver_index` is the index the *receiver* chose in the handshake, so
//!   a node finds the session of a datagram with one lookup
//!   ([`data_receiver_index`]) whatever the sender's address is now (NAT
//!   rebinding, roaming), as in WireGuard's transport message (whitepaper
//!   §5.4.6).
//! - `counter` numbers the packets a [`SendKey`] seals, from 0. The AEAD
//!   nonce is 4 zero bytes followed by the counter (the 96-bit nonce of
//!   RFC 5116 §3.2 / NIST SP 800-38D §8.2.1, deterministic construction), so
//!   a counter is never reused under one key: the sender stops at
//!   [`KEY_MESSAGE_LIMIT`] and the session must be rekeyed (the node rekeys
//!   at [`REKEY_AFTER_MESSAGES`] or [`REKEY_AFTER_TIME`], whichever first).
//! - The whole 16-byte header is the AAD, so the index and counter cannot be
//!   altered without failing authentication.
//! - An empty plaintext is a keepalive: it proves liveness and refreshes NAT
//!   bindings without carrying an inner packet.
//!
//! The receiver rejects replays with a [`ReplayWindow`]: the counter is
//! checked before the AEAD (so forgeries and replays cost no decryption and
//! cannot move the window) and recorded only after the tag verified.
//!
//! Both directions work in place on caller-owned buffers and never allocate,
//! since they run once per packet.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::LocalIndex;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::replay::{ReplayError, ReplayWindow};

/// Type byte of a data packet.
pub const TYPE_DATA: u8 = 4;
/// Length of the data packet header, which is also the AAD.
pub const DATA_HEADER_LEN: usize = 16;
/// Length of the AES-256-GCM tag that ends every data packet.
pub const TAG_LEN: usize = 16;
/// Bytes a data packet adds to the inner IP packet it carries; subtract it
/// (and the outer IP/UDP headers) from the path MTU to get the tunnel MTU.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Why a data packet could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Too short for a header and tag, wrong type byte or non-zero reserved
    /// bytes.
    #[error("malformed data packet")]
    Malformed,
    /// The receiver index is not this key's local index.
    #[error("data packet is for another receiver index")]
    WrongIndex,
    /// The counter was already received, is too old, or is past the limit.
    #[error("data packet rejected by the replay window: {0}")]
    Replay(#[from] ReplayError),
    /// The AEAD tag did not verify: corrupted, forged, or sealed under
    /// another key.
    #[error("data packet failed authentication")]
    Auth,
    /// This key has sealed [`KEY_MESSAGE_LIMIT`] packets; rekey.
    #[error("send counter exhausted, the session must be rekeyed")]
    CounterLimit,
    /// The key was retired (too old: the node core retires a session's keys
    /// [`REJECT_AFTER_TIME`] after its handshake); rekey.
    #[error("session key retired, the session must be rekeyed")]
    Retired,
    /// The buffer cannot hold the header, plaintext and tag.
    #[error("buffer too small for a data packet")]
    BufferTooSmall,
}

/// Packets one send key seals before the node starts a new handshake.
///
/// AES-GCM's limit is on blocks encrypted under one key, not on time:
/// after `2^26` packets of at most 1500 bytes (`2^32.6` blocks) an
/// attacker's advantage in telling ciphertext from random stays below
/// `2^-60` (the bound of the CFRG's AEAD usage limits, the same reasoning
/// as TLS 1.3's `2^24.5` full records, RFC 8446 §5.5).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 26;
/// Packets one send key may ever seal: twice the rekey point, so a rekey
/// has `2^26` packets (75 s at 10 Gbit/s) to complete before sending stops.
pub const KEY_MESSAGE_LIMIT: u64 = 1 << 27;
/// Age at which the initiator of a tunnel starts a new handshake.
pub const REKEY_AFTER_TIME: std::time::Duration = std::time::Duration::from_secs(120);
/// Age at which both ends refuse a session's keys, sending and receiving
/// (WireGuard's `REJECT_AFTER_TIME`): the window of traffic that one
/// compromised session key exposes.
pub const REJECT_AFTER_TIME: std::time::Duration = std::time::Duration::from_secs(180);

/// The sending half of a session: seals inner packets for one peer.
///
/// `&self` is enough to seal, so several threads can encrypt for the same
/// peer at once; each packet takes the next counter atomically.
pub struct SendKey {
    key: LessSafeKey,
    remote_index: LocalIndex,
    /// Next counter to use; at most [`KEY_MESSAGE_LIMIT`].
    counter: AtomicU64,
    retired: AtomicBool,
}

impl SendKey {
    /// `key` is the sending key from the handshake; `remote_index` is the
    /// index the peer chose, written into every packet for the peer's lookup.
    pub fn new(key: &[u8; 32], remote_index: LocalIndex) -> Self {
        Self {
            key: aes_key(key),
            remote_index,
            counter: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// Seals a data packet in place.
    ///
    /// `buf[..DATA_HEADER_LEN]` is space for the header,
    /// `buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]` holds the plaintext, and
    /// `buf` has at least [`TAG_LEN`] more bytes after it. Returns the length
    /// of the packet, `DATA_HEADER_LEN + len + TAG_LEN`, which starts at
    /// `buf[0]`. `len == 0` seals a keepalive. Does not allocate.
    ///
    /// A counter is consumed only once the buffer is known to fit, so
    /// [`BufferTooSmall`](DataError::BufferTooSmall) leaves no gap.
    pub fn seal_in_place(&self, buf: &mut [u8], len: usize) -> Result<usize, DataError> {
        let total = len
            .checked_add(DATA_OVERHEAD)
            .filter(|&total| total <= buf.len())
            .ok_or(DataError::BufferTooSmall)?;

        // Never hand out a counter at or past the limit, and never wrap: a
        // repeated nonce under AES-GCM would reveal the XOR of plaintexts and
        // the authentication key (NIST SP 800-38D Appendix A).
        if self.retired.load(Ordering::Relaxed) {
            return Err(DataError::Retired);
        }
        let counter = self
            .counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < KEY_MESSAGE_LIMIT).then_some(c + 1)
            })
            .map_err(|_| DataError::CounterLimit)?;

        let (header, rest) = buf.split_at_mut(DATA_HEADER_LEN);
        header[0] = TYPE_DATA;
        header[1..4].fill(0);
        header[4..8].copy_from_slice(&self.remote_index.to_be_bytes());
        header[8..16].copy_from_slice(&counter.to_be_bytes());

        let (plaintext, tag_space) = rest.split_at_mut(len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), plaintext)
            // ring refuses only plaintexts over about 64 GiB (the GCM limit,
            // SP 800-38D §5.2.1.1), far beyond any datagram.
            .map_err(|_| DataError::BufferTooSmall)?;
        tag_space[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// The peer's index this key writes into packets.
    pub fn remote_index(&self) -> LocalIndex {
        self.remote_index
    }

    /// How many packets this key has sealed (counters handed out).
    pub fn sent(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// Refuses every later seal ([`DataError::Retired`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for SendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendKey")
            .field("remote_index", &self.remote_index)
            .field("sent", &self.sent())
            .finish_non_exhaustive()
    }
}

/// The receiving half of a session: opens packets addressed to our index and
/// rejects replays.
///
/// `&self` is enough to open, so several threads can decrypt packets of the
/// same session; the replay window is behind a mutex held only for the cheap
/// check and update, never across the AEAD.
pub struct RecvKey {
    key: LessSafeKey,
    local_index: LocalIndex,
    window: Mutex<ReplayWindow>,
    retired: AtomicBool,
}

impl RecvKey {
    /// `key` is the receiving key from the handshake; `local_index` is the
    /// index we chose, which every packet for this session carries.
    pub fn new(key: &[u8; 32], local_index: LocalIndex) -> Self {
        Self {
            key: aes_key(key),
            local_index,
            window: Mutex::new(ReplayWindow::new()),
            retired: AtomicBool::new(false),
        }
    }

    /// Opens a data packet in place and returns the range of the plaintext
    /// (the inner IP packet, empty for a keepalive) within `packet`.
    ///
    /// Cheapest checks first: parse the header
    /// ([`Malformed`](DataError::Malformed),
    /// [`WrongIndex`](DataError::WrongIndex)), check the counter against the
    /// replay window ([`Replay`](DataError::Replay)) before any decryption,
    /// open the AEAD ([`Auth`](DataError::Auth)), and only then record the
    /// counter, so a forged packet never moves the window. Never panics on any
    /// input. On error the bytes after the header are unspecified.
    pub fn open_in_place(&self, packet: &mut [u8]) -> Result<Range<usize>, DataError> {
        let header = parse_header(packet).ok_or(DataError::Malformed)?;
        if header.receiver_index != self.local_index {
            return Err(DataError::WrongIndex);
        }
        if self.retired.load(Ordering::Relaxed) {
            return Err(DataError::Retired);
        }
        self.window().check(header.counter)?;

        // The header is the AAD; copy it (16 bytes) so the rest of the packet
        // can be borrowed mutably for decryption.
        let mut aad = [0u8; DATA_HEADER_LEN];
        aad.copy_from_slice(&packet[..DATA_HEADER_LEN]);
        let plaintext_len = self
            .key
            .open_in_place(
                nonce(header.counter),
                Aad::from(&aad),
                &mut packet[DATA_HEADER_LEN..],
            )
            .map_err(|_| DataError::Auth)?
            .len();

        // Re-checked under the lock: another thread may have accepted the
        // same counter while we were decrypting.
        self.window().update(header.counter)?;
        Ok(DATA_HEADER_LEN..DATA_HEADER_LEN + plaintext_len)
    }

    /// Our index, which packets for this session carry.
    pub fn local_index(&self) -> LocalIndex {
        self.local_index
    }

    /// Refuses every later packet ([`DataError::Retired`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The greatest counter accepted so far (0 when none has been).
    pub fn max_counter(&self) -> u64 {
        self.window().max()
    }

    fn window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        // The lock is only held around `ReplayWindow` calls, which do not
        // panic, and update sets the counter's bit last; so even a poisoned
        // window never accepts a replay. Never panic on the data path because
        // some other thread did.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for RecvKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvKey")
            .field("local_index", &self.local_index)
            .field("max_counter", &self.max_counter())
            .finish_non_exhaustive()
    }
}

/// The receiver index of a data packet, without any cryptography: enough to
/// route a datagram to its session. `None` unless `packet` is long enough
/// for a header and tag, has the data type byte and zero reserved bytes.
pub fn data_receiver_index(packet: &[u8]) -> Option<LocalIndex> {
    parse_header(packet).map(|h| h.receiver_index)
}

/// The unauthenticated header fields of a data packet.
struct Header {
    receiver_index: LocalIndex,
    counter: u64,
}

fn parse_header(packet: &[u8]) -> Option<Header> {
    if packet.len() < DATA_OVERHEAD || packet[0] != TYPE_DATA || packet[1..4] != [0, 0, 0] {
        return None;
    }
    let receiver_index = LocalIndex(u32::from_be_bytes(packet[4..8].try_into().ok()?));
    let counter = u64::from_be_bytes(packet[8..16].try_into().ok()?);
    Some(Header {
        receiver_index,
        counter,
    })
}

/// Nonce for `counter`: 4 zero bytes, then the counter big-endian.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aes_key(key: &[u8; 32]) -> LessSafeKey {
    // Invariant: AES-256-GCM takes exactly 32 key bytes, which the array type
    // guarantees, so `UnboundKey::new` cannot fail.
    let key = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM key is 32 bytes");
    LessSafeKey::new(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::REJECT_AFTER_MESSAGES;

    #[test]
    fn send_counter_stops_at_the_limit() {
        let send = SendKey::new(&[1; 32], LocalIndex(7));
        let recv = RecvKey::new(&[1; 32], LocalIndex(7));
        send.counter.store(KEY_MESSAGE_LIMIT - 1, Ordering::Relaxed);

        let mut buf = [0u8; DATA_OVERHEAD];
        assert_eq!(send.seal_in_place(&mut buf, 0), Ok(DATA_OVERHEAD));
        assert_eq!(buf[8..16], (KEY_MESSAGE_LIMIT - 1).to_be_bytes());
        assert_eq!(recv.open_in_place(&mut buf.clone()), Ok(16..16));

        for _ in 0..3 {
            assert_eq!(
                send.seal_in_place(&mut buf, 0),
                Err(DataError::CounterLimit)
            );
        }
        assert_eq!(send.sent(), KEY_MESSAGE_LIMIT);

        // A packet claiming the window's limit is refused before the AEAD.
        buf[8..16].copy_from_slice(&REJECT_AFTER_MESSAGES.to_be_bytes());
        assert_eq!(
            recv.open_in_place(&mut buf),
            Err(DataError::Replay(ReplayError::CounterLimit))
        );
    }

    #[test]
    fn a_retired_key_neither_seals_nor_opens() {
        let send = SendKey::new(&[3; 32], LocalIndex(9));
        let recv = RecvKey::new(&[3; 32], LocalIndex(9));
        let mut buf = [0u8; DATA_OVERHEAD + 4];
        let n = send.seal_in_place(&mut buf, 4).expect("seals");
        let sealed = buf;
        recv.retire();
        assert!(recv.retired());
        assert_eq!(
            recv.open_in_place(&mut { sealed }[..n]),
            Err(DataError::Retired)
        );
        // The refused packet did not move the window.
        assert_eq!(recv.max_counter(), 0);
        send.retire();
        assert_eq!(send.seal_in_place(&mut buf, 4), Err(DataError::Retired));
        assert_eq!(send.sent(), 1, "no counter spent on a refused seal");
    }
}
