//! Tunnel Request / Tunnel Response: the end-to-end handshake that gives two
//! nodes the session keys for [`crate::data`].
//!
//! # Pattern
//!
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, the pattern of WireGuard
//! (whitepaper §5.4), run with `snow`:
//!
//! ```text
//! IKpsk2:
//!   <- s
//!   ...
//!   -> e, es, s, ss          (Tunnel Request,  MN -> CN)
//!   <- e, ee, se, psk        (Tunnel Response, CN -> MN)
//! ```
//!
//! - The initiator (MN) knows the responder's (CN's) static public key in
//!   advance from the NMS's route direction (`<- s`, Noise §7.4 "IK").
//! - The psk (Noise §9) is derived from the 32-byte tunnel key the NMS
//!   hands both ends in its route direction (as is, separately, the key of
//!   each message's mac), so only ends the NMS directed can complete a
//!   handshake. The NMS never sees the static or ephemeral private keys, so
//!   it cannot compute the session keys: `ee` gives forward secrecy, and the
//!   `es`/`ss`/`se` terms need the ends' static private keys.
//! - Each X25519 static key is bound to its node's X.509 certificate by an
//!   Ed25519 signature, made with the certificate's key, over
//!   [`binding_message`]. Each side's Noise payload (encrypted: message 1
//!   under `es`/`ss`, message 2 under all four DH results) carries its
//!   certificate chain and that signature, and the other side checks it
//!   through [`PeerVerifier`], so this module needs no X.509 code.
//! - The prologue (Noise §6) binds the route id and the initiator's index,
//!   so neither can be altered in flight even by a holder of the tunnel key.
//!   The responder's index, chosen after the prologue is fixed, opens its
//!   Noise payload and must equal the one in the header, so it cannot be
//!   altered either.
//! - The session keys are the raw Noise `Split()` output (Noise §5.2),
//!   used as AES-256-GCM keys by [`crate::data::SendKey`] and
//!   [`crate::data::RecvKey`]: the initiator sends with the first and
//!   receives with the second, the responder the reverse.
//!
//! # Packets
//!
//! ```text
//! Tunnel Request (type 2):
//!   [0x02][0 0 0][sender_index u32 BE][route_id u64 BE][Noise message 1][mac 16]
//! Tunnel Response (type 3):
//!   [0x03][0 0 0][sender_index u32 BE][receiver_index u32 BE][Noise message 2][mac 16]
//!
//! mac = HMAC-SHA256(key = tunnel key, every preceding byte of the packet)[..16]
//! ```
//!
//! The mac is checked first, before any Diffie-Hellman, so a packet from
//! anyone the NMS did not direct costs one HMAC (WireGuard's `mac1`,
//! whitepaper §5.4.4). Packets are at most [`MAX_HANDSHAKE_LEN`] bytes so
//! they are never fragmented; an identity too large to fit is
//! [`HandshakeError::TooLarge`].
//!
//! Identity payload (inside Noise, so certificates are not visible on the
//! wire):
//!
//! ```text
//! [cert_count u8 >= 1]{ [len u16 BE][DER certificate] } × cert_count [binding signature 64]
//! ```
//!
//! The Tunnel Response's Noise payload is `[sender_index u32 BE]` followed
//! by the identity payload.
//!
//! # Replayed Tunnel Requests
//!
//! A recorded Tunnel Request still passes the mac and Noise, and answering it
//! would replace the responder's session with one nobody can use. Unlike
//! WireGuard there is no timestamp in the payload (whitepaper §5.1); instead
//! the responder's caller de-duplicates by `(route_id, ephemeral)`, with
//! [`peek_request`] and [`request_ephemeral`]: look the pair up before
//! [`respond`] (to skip the DH work) but record it only after [`respond`]
//! succeeds, so a forged copy with a bad mac cannot block the genuine one.
//!
//! `snow` does not reject low-order ephemeral keys; a peer that sends one
//! only weakens its own session, since `ss` and the psk are still mixed in.

use rand::rngs::StdRng;
use rand::{CryptoRng, RngCore, SeedableRng};
use ring::hmac;
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::data::{RecvKey, SendKey};
use crate::{LocalIndex, RouteId};

/// Type byte of a Tunnel Request.
pub const TYPE_TUNNEL_REQUEST: u8 = 2;
/// Type byte of a Tunnel Response.
pub const TYPE_TUNNEL_RESPONSE: u8 = 3;
/// Largest Tunnel Request or Response: fits a 1500-byte path MTU with room
/// for IPv6 and UDP headers and some tunnelling, so it is not fragmented.
pub const MAX_HANDSHAKE_LEN: usize = 1400;
/// Length of the truncated HMAC-SHA256 that ends handshake packets.
pub const MAC_LEN: usize = 16;
/// Length of the Tunnel Request header (type, reserved, sender index, route id).
pub const REQUEST_HEADER_LEN: usize = 16;
/// Length of the Tunnel Response header (type, reserved, both indexes).
pub const RESPONSE_HEADER_LEN: usize = 12;
/// Length of the binding signature in the identity payload.
pub const BINDING_SIG_LEN: usize = 64;

/// Domain separation for the static key binding signature, so the
/// certificate key's signature cannot be taken for any other message.
const BINDING_CONTEXT: &[u8] = b"cyphonic static key v1";
/// Noise prologue label; the route id and initiator index follow it.
const PROLOGUE_LABEL: &[u8] = b"cyphonic tunnel v1";
const NOISE_PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";

const DH_LEN: usize = 32;
const AEAD_TAG_LEN: usize = 16;
/// Noise message 1 without payload: `e`, encrypted `s`, payload tag.
const MESSAGE1_OVERHEAD: usize = DH_LEN + (DH_LEN + AEAD_TAG_LEN) + AEAD_TAG_LEN;
/// Noise message 2 without payload: `e`, payload tag.
const MESSAGE2_OVERHEAD: usize = DH_LEN + AEAD_TAG_LEN;
const MIN_REQUEST_LEN: usize = REQUEST_HEADER_LEN + MESSAGE1_OVERHEAD + MAC_LEN;
const MIN_RESPONSE_LEN: usize = RESPONSE_HEADER_LEN + MESSAGE2_OVERHEAD + MAC_LEN;
/// Largest identity payload a Tunnel Request can carry.
pub const MAX_REQUEST_IDENTITY_LEN: usize = MAX_HANDSHAKE_LEN - MIN_REQUEST_LEN;
/// Largest identity payload a Tunnel Response can carry (after the
/// responder's index, which opens its payload).
pub const MAX_RESPONSE_IDENTITY_LEN: usize = MAX_HANDSHAKE_LEN - MIN_RESPONSE_LEN - 4;

/// Why a handshake step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Wrong length, type byte, reserved bytes, receiver index, or an
    /// identity payload that does not parse (or a local identity without a
    /// certificate).
    #[error("malformed handshake packet")]
    Malformed,
    /// The mac does not match the tunnel key: the sender was not directed by
    /// the NMS, or the packet was altered. No Diffie-Hellman was done.
    #[error("handshake mac does not match the tunnel key")]
    BadMac,
    /// Noise processing failed (wrong keys, tampered ciphertext).
    #[error("noise handshake failed: {0}")]
    Noise(String),
    /// The initiator's static key is not the one the NMS announced.
    #[error("peer static key is not the announced one")]
    UnexpectedStatic,
    /// The [`PeerVerifier`] refused the peer's identity; carries its reason.
    #[error("peer identity rejected: {0}")]
    PeerRejected(String),
    /// The local identity does not fit in a [`MAX_HANDSHAKE_LEN`]-byte packet
    /// (or has more than 255 certificates or one over 65535 bytes).
    #[error("local identity too large for a handshake packet")]
    TooLarge,
}

/// Checks the identity a peer presents in its handshake payload.
pub trait PeerVerifier {
    /// Verify `chain` (leaf first) is the expected peer's valid certificate
    /// and that `binding_sig` by the leaf's key covers `static_public`
    /// (that is, is a signature over [`binding_message`]`(static_public)`).
    /// The error string is returned to the caller in
    /// [`HandshakeError::PeerRejected`].
    fn verify_peer(
        &self,
        chain: &[Vec<u8>],
        static_public: &[u8; 32],
        binding_sig: &[u8; 64],
    ) -> Result<(), String>;
}

/// The message a node's certificate key signs to bind its X25519 static key:
/// `b"cyphonic static key v1" || static_public`.
pub fn binding_message(static_public: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(BINDING_CONTEXT.len() + static_public.len());
    message.extend_from_slice(BINDING_CONTEXT);
    message.extend_from_slice(static_public);
    message
}

/// A node's X25519 static keypair; the private key is wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StaticKeypair {
    /// Clamped X25519 private key (RFC 7748 §5).
    pub private: [u8; 32],
    pub public: [u8; 32],
}

impl StaticKeypair {
    /// A fresh keypair from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut private = [0u8; 32];
        rng.fill_bytes(&mut private);
        let keys = Self::from_private(private);
        private.zeroize();
        keys
    }

    /// The keypair of a stored private key. The key is clamped (RFC 7748
    /// §5), which X25519 does anyway, so the stored form is canonical.
    pub fn from_private(mut private: [u8; 32]) -> Self {
        private[0] &= 248;
        private[31] &= 127;
        private[31] |= 64;
        let mut public = [0u8; 32];
        // Invariant: snow's default resolver provides Curve25519 whenever its
        // default features are on, and this crate depends on snow with them.
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow's default resolver provides Curve25519");
        dh.set(&private);
        public.copy_from_slice(dh.pubkey());
        Self { private, public }
    }
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// What a node presents in a handshake: its static keys, its certificate
/// chain (leaf first, DER) and the leaf key's signature over
/// [`binding_message`]`(static_keys.public)`.
#[derive(Clone)]
pub struct LocalIdentity {
    pub static_keys: StaticKeypair,
    pub cert_chain_der: Vec<Vec<u8>>,
    pub binding_sig: [u8; 64],
}

impl std::fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("static_keys", &self.static_keys)
            .field("certs", &self.cert_chain_der.len())
            .finish_non_exhaustive()
    }
}

/// The outcome of a handshake: keys for [`SendKey`] / [`RecvKey`] and the
/// indexes each side put in data packets. The keys are wiped on drop (the
/// data plane's copies live in ring's AES-GCM keys, which ring does not
/// wipe: `docs/security.md` §3).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    /// Key to seal our data packets with.
    pub send: [u8; 32],
    /// Key to open the peer's data packets with.
    pub recv: [u8; 32],
    /// Index we chose; the peer writes it into its data packets to us.
    #[zeroize(skip)]
    pub local_index: LocalIndex,
    /// Index the peer chose; we write it into our data packets to it.
    #[zeroize(skip)]
    pub remote_index: LocalIndex,
}

impl SessionKeys {
    /// The data-plane keys of this session.
    pub fn data_keys(&self) -> (SendKey, RecvKey) {
        (
            SendKey::new(&self.send, self.remote_index),
            RecvKey::new(&self.recv, self.local_index),
        )
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

/// The cleartext header of a Tunnel Request. Not authenticated until
/// [`respond`] succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// The initiator's index: our data packets to it carry this.
    pub sender_index: LocalIndex,
    /// The route direction this request belongs to.
    pub route_id: RouteId,
}

/// The cleartext header of a Tunnel Response. Not authenticated until
/// [`Initiator::finish`] succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The responder's index.
    pub sender_index: LocalIndex,
    /// The initiator's index, which routes the response to its [`Initiator`].
    pub receiver_index: LocalIndex,
}

/// Reads a Tunnel Request's header without any cryptography, to find the
/// route and tunnel key it claims. Checks length, type and reserved bytes.
pub fn peek_request(packet: &[u8]) -> Result<RequestHeader, HandshakeError> {
    if !(MIN_REQUEST_LEN..=MAX_HANDSHAKE_LEN).contains(&packet.len())
        || packet[..4] != [TYPE_TUNNEL_REQUEST, 0, 0, 0]
    {
        return Err(HandshakeError::Malformed);
    }
    Ok(RequestHeader {
        sender_index: LocalIndex(be_u32(&packet[4..8])?),
        route_id: RouteId(be_u64(&packet[8..16])?),
    })
}

/// Reads a Tunnel Response's header without any cryptography, to find the
/// pending [`Initiator`] by `receiver_index`. Checks length, type and
/// reserved bytes.
pub fn peek_response(packet: &[u8]) -> Result<ResponseHeader, HandshakeError> {
    if !(MIN_RESPONSE_LEN..=MAX_HANDSHAKE_LEN).contains(&packet.len())
        || packet[..4] != [TYPE_TUNNEL_RESPONSE, 0, 0, 0]
    {
        return Err(HandshakeError::Malformed);
    }
    Ok(ResponseHeader {
        sender_index: LocalIndex(be_u32(&packet[4..8])?),
        receiver_index: LocalIndex(be_u32(&packet[8..12])?),
    })
}

/// The initiator's ephemeral public key in a Tunnel Request (the first
/// field of Noise message 1, in clear), for de-duplicating replayed
/// requests by `(route_id, ephemeral)`; see the module doc.
pub fn request_ephemeral(packet: &[u8]) -> Result<[u8; 32], HandshakeError> {
    peek_request(packet)?;
    packet[REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + DH_LEN]
        .try_into()
        .map_err(|_| HandshakeError::Malformed)
}

/// The MN side of a handshake, between sending the Tunnel Request and
/// receiving the Tunnel Response.
///
/// Call order: [`start`](Self::start) (send the request it returns), then
/// for each Tunnel Response whose `receiver_index` is our index,
/// [`check_response`](Self::check_response) and, if it passes,
/// [`finish`](Self::finish).
pub struct Initiator {
    /// snow keeps the ephemeral and static private keys, the psk and the
    /// chaining key inside and does not wipe them (`docs/security.md` §3).
    noise: snow::HandshakeState,
    tunnel_key: Zeroizing<[u8; 32]>,
    remote_static: [u8; 32],
    route_id: RouteId,
    local_index: LocalIndex,
}

impl Initiator {
    /// MN side. `remote_static` is the CN's static public key from the NMS's
    /// route direction, `tunnel_key` its psk, `local_index` the index the CN
    /// will put in data packets to us. The ephemeral key comes from the OS;
    /// [`start_with_rng`](Self::start_with_rng) takes the randomness as an
    /// input instead.
    pub fn start(
        local: &LocalIdentity,
        remote_static: &[u8; 32],
        tunnel_key: &[u8; 32],
        route_id: RouteId,
        local_index: LocalIndex,
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        Self::start_with_rng(
            local,
            remote_static,
            tunnel_key,
            route_id,
            local_index,
            &mut rand::rngs::OsRng,
        )
    }

    /// [`start`](Self::start) with the ephemeral key drawn from `rng`, for
    /// deterministic simulations and tests.
    pub fn start_with_rng(
        local: &LocalIdentity,
        remote_static: &[u8; 32],
        tunnel_key: &[u8; 32],
        route_id: RouteId,
        local_index: LocalIndex,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        let identity = encode_identity(local, MAX_REQUEST_IDENTITY_LEN)?;
        let prologue = prologue(route_id, local_index);
        let psk = psk(tunnel_key);
        let mut noise = builder(rng)?
            .local_private_key(&local.static_keys.private)
            .and_then(|b| b.remote_public_key(remote_static))
            .and_then(|b| b.psk(2, &psk))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(noise_error)?;

        let mut packet = Vec::with_capacity(MAX_HANDSHAKE_LEN);
        packet.extend_from_slice(&[TYPE_TUNNEL_REQUEST, 0, 0, 0]);
        packet.extend_from_slice(&local_index.to_be_bytes());
        packet.extend_from_slice(&route_id.to_be_bytes());
        packet.resize(REQUEST_HEADER_LEN + MESSAGE1_OVERHEAD + identity.len(), 0);
        let written = noise
            .write_message(&identity, &mut packet[REQUEST_HEADER_LEN..])
            .map_err(noise_error)?;
        packet.truncate(REQUEST_HEADER_LEN + written);
        let mac = mac(tunnel_key, &packet);
        packet.extend_from_slice(&mac);

        let initiator = Initiator {
            noise,
            tunnel_key: Zeroizing::new(*tunnel_key),
            remote_static: *remote_static,
            route_id,
            local_index,
        };
        Ok((initiator, packet))
    }

    /// The cheap checks of [`finish`](Self::finish) (header, receiver index,
    /// mac) without consuming the handshake. Call it first so that a junk
    /// datagram does not end a pending handshake.
    pub fn check_response(&self, response: &[u8]) -> Result<ResponseHeader, HandshakeError> {
        let header = peek_response(response)?;
        if header.receiver_index != self.local_index {
            return Err(HandshakeError::Malformed);
        }
        verify_mac(&self.tunnel_key, response)?;
        Ok(header)
    }

    /// Completes the handshake with the CN's Tunnel Response: mac, Noise
    /// (which authenticates the CN as the holder of `remote_static`), then
    /// the CN's identity through `verifier`.
    pub fn finish(
        mut self,
        response: &[u8],
        verifier: &dyn PeerVerifier,
    ) -> Result<SessionKeys, HandshakeError> {
        let header = self.check_response(response)?;
        let message = &response[RESPONSE_HEADER_LEN..response.len() - MAC_LEN];
        let mut payload = [0u8; MAX_HANDSHAKE_LEN];
        let len = self
            .noise
            .read_message(message, &mut payload)
            .map_err(noise_error)?;
        if !self.noise.is_handshake_finished() {
            return Err(HandshakeError::Noise("handshake not finished".into()));
        }
        let payload = payload.get(..len).ok_or(HandshakeError::Malformed)?;
        let (index, identity) = payload
            .split_at_checked(4)
            .ok_or(HandshakeError::Malformed)?;
        // The index in the header is only mac-bound; the one Noise
        // authenticated must match it.
        if index != header.sender_index.to_be_bytes() {
            return Err(HandshakeError::Malformed);
        }
        let (chain, binding_sig) = parse_identity(identity)?;
        verifier
            .verify_peer(&chain, &self.remote_static, &binding_sig)
            .map_err(HandshakeError::PeerRejected)?;

        let (initiator_to_responder, responder_to_initiator) =
            self.noise.dangerously_get_raw_split();
        Ok(SessionKeys {
            send: initiator_to_responder,
            recv: responder_to_initiator,
            local_index: self.local_index,
            remote_index: header.sender_index,
        })
    }

    /// The index the CN's response and data packets carry for us.
    pub fn local_index(&self) -> LocalIndex {
        self.local_index
    }

    /// The route direction this handshake belongs to.
    pub fn route_id(&self) -> RouteId {
        self.route_id
    }
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("route_id", &self.route_id)
            .field("local_index", &self.local_index)
            .field("remote_static", &hex::encode(self.remote_static))
            .finish_non_exhaustive()
    }
}

/// CN side: answers a Tunnel Request.
///
/// Order: header and mac (no DH yet), Noise message 1, the initiator's
/// static key must be `expected_remote_static` (the key the NMS announced
/// in the route direction), its identity must satisfy `verifier`; then
/// writes the Tunnel Response. The ephemeral key comes from the OS;
/// [`respond_with_rng`] takes the randomness as an input instead.
///
/// A replayed request is answered again; see the module doc for the
/// caller's de-duplication.
pub fn respond(
    request: &[u8],
    local: &LocalIdentity,
    expected_remote_static: &[u8; 32],
    tunnel_key: &[u8; 32],
    local_index: LocalIndex,
    verifier: &dyn PeerVerifier,
) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
    respond_with_rng(
        request,
        local,
        expected_remote_static,
        tunnel_key,
        local_index,
        verifier,
        &mut rand::rngs::OsRng,
    )
}

/// [`respond`] with the ephemeral key drawn from `rng`, for deterministic
/// simulations and tests.
pub fn respond_with_rng(
    request: &[u8],
    local: &LocalIdentity,
    expected_remote_static: &[u8; 32],
    tunnel_key: &[u8; 32],
    local_index: LocalIndex,
    verifier: &dyn PeerVerifier,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
    let header = peek_request(request)?;
    verify_mac(tunnel_key, request)?;
    let identity = encode_identity(local, MAX_RESPONSE_IDENTITY_LEN)?;

    let prologue = prologue(header.route_id, header.sender_index);
    let psk = psk(tunnel_key);
    let mut noise = builder(rng)?
        .local_private_key(&local.static_keys.private)
        .and_then(|b| b.psk(2, &psk))
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.build_responder())
        .map_err(noise_error)?;

    let message = &request[REQUEST_HEADER_LEN..request.len() - MAC_LEN];
    let mut payload = [0u8; MAX_HANDSHAKE_LEN];
    let len = noise
        .read_message(message, &mut payload)
        .map_err(noise_error)?;
    if noise.get_remote_static() != Some(&expected_remote_static[..]) {
        return Err(HandshakeError::UnexpectedStatic);
    }
    let peer_identity = payload.get(..len).ok_or(HandshakeError::Malformed)?;
    let (chain, binding_sig) = parse_identity(peer_identity)?;
    verifier
        .verify_peer(&chain, expected_remote_static, &binding_sig)
        .map_err(HandshakeError::PeerRejected)?;

    let mut packet = Vec::with_capacity(MAX_HANDSHAKE_LEN);
    packet.extend_from_slice(&[TYPE_TUNNEL_RESPONSE, 0, 0, 0]);
    packet.extend_from_slice(&local_index.to_be_bytes());
    packet.extend_from_slice(&header.sender_index.to_be_bytes());
    let mut payload = Vec::with_capacity(4 + identity.len());
    payload.extend_from_slice(&local_index.to_be_bytes());
    payload.extend_from_slice(&identity);
    packet.resize(RESPONSE_HEADER_LEN + MESSAGE2_OVERHEAD + payload.len(), 0);
    let written = noise
        .write_message(&payload, &mut packet[RESPONSE_HEADER_LEN..])
        .map_err(noise_error)?;
    packet.truncate(RESPONSE_HEADER_LEN + written);
    let mac = mac(tunnel_key, &packet);
    packet.extend_from_slice(&mac);

    if !noise.is_handshake_finished() {
        return Err(HandshakeError::Noise("handshake not finished".into()));
    }
    let (initiator_to_responder, responder_to_initiator) = noise.dangerously_get_raw_split();
    let keys = SessionKeys {
        send: responder_to_initiator,
        recv: initiator_to_responder,
        local_index,
        remote_index: header.sender_index,
    };
    Ok((keys, packet))
}

/// `label || route_id BE || initiator index BE`: authenticated by Noise
/// (Noise §6), so a holder of the tunnel key cannot move a request to
/// another route or redirect the responder's data packets.
fn prologue(route_id: RouteId, initiator_index: LocalIndex) -> Vec<u8> {
    let mut prologue = Vec::with_capacity(PROLOGUE_LABEL.len() + 12);
    prologue.extend_from_slice(PROLOGUE_LABEL);
    prologue.extend_from_slice(&route_id.to_be_bytes());
    prologue.extend_from_slice(&initiator_index.to_be_bytes());
    prologue
}

/// A snow builder whose randomness (the ephemeral key) comes from `rng`.
fn builder<'a>(rng: &mut (impl RngCore + CryptoRng)) -> Result<snow::Builder<'a>, HandshakeError> {
    let params: NoiseParams = NOISE_PATTERN.parse().map_err(noise_error)?;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    Ok(snow::Builder::with_resolver(
        params,
        Box::new(SeededResolver { seed }),
    ))
}

fn noise_error(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

/// A key of its own for each use of the tunnel key:
/// `HMAC-SHA256(tunnel_key, label)`, so the mac key and the Noise psk are
/// never the same bytes.
fn subkey(tunnel_key: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, tunnel_key);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(hmac::sign(&key, label).as_ref());
    out
}

/// The Noise psk of a route: [`subkey`] "cyphonic tunnel psk v1".
fn psk(tunnel_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    subkey(tunnel_key, b"cyphonic tunnel psk v1")
}

/// `HMAC-SHA256(mac_key, data)[..16]`, where `mac_key` is [`subkey`]
/// "cyphonic tunnel mac v1" of the tunnel key.
fn mac(tunnel_key: &[u8; 32], data: &[u8]) -> [u8; MAC_LEN] {
    let key = hmac::Key::new(
        hmac::HMAC_SHA256,
        subkey(tunnel_key, b"cyphonic tunnel mac v1").as_slice(),
    );
    let tag = hmac::sign(&key, data);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    mac
}

/// Checks the trailing mac of `packet` (whose length the caller checked is
/// at least [`MAC_LEN`]) in constant time.
fn verify_mac(tunnel_key: &[u8; 32], packet: &[u8]) -> Result<(), HandshakeError> {
    let split = packet
        .len()
        .checked_sub(MAC_LEN)
        .ok_or(HandshakeError::Malformed)?;
    let (body, received) = packet.split_at(split);
    let expected = mac(tunnel_key, body);
    let diff = expected
        .iter()
        .zip(received)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if std::hint::black_box(diff) == 0 {
        Ok(())
    } else {
        Err(HandshakeError::BadMac)
    }
}

fn encode_identity(local: &LocalIdentity, max_len: usize) -> Result<Vec<u8>, HandshakeError> {
    let chain = &local.cert_chain_der;
    if chain.is_empty() {
        return Err(HandshakeError::Malformed);
    }
    let count = u8::try_from(chain.len()).map_err(|_| HandshakeError::TooLarge)?;
    let len = 1 + chain.iter().map(|c| 2 + c.len()).sum::<usize>() + BINDING_SIG_LEN;
    if len > max_len {
        return Err(HandshakeError::TooLarge);
    }
    let mut out = Vec::with_capacity(len);
    out.push(count);
    for cert in chain {
        let cert_len = u16::try_from(cert.len()).map_err(|_| HandshakeError::TooLarge)?;
        out.extend_from_slice(&cert_len.to_be_bytes());
        out.extend_from_slice(cert);
    }
    out.extend_from_slice(&local.binding_sig);
    Ok(out)
}

/// Parses `[count u8 >= 1]{[len u16 BE][der]}×count[sig 64]`, exactly.
fn parse_identity(payload: &[u8]) -> Result<(Vec<Vec<u8>>, [u8; 64]), HandshakeError> {
    let (&count, mut rest) = payload.split_first().ok_or(HandshakeError::Malformed)?;
    if count == 0 {
        return Err(HandshakeError::Malformed);
    }
    let mut chain = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (len, after) = rest.split_at_checked(2).ok_or(HandshakeError::Malformed)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (der, after) = after
            .split_at_checked(len)
            .ok_or(HandshakeError::Malformed)?;
        chain.push(der.to_vec());
        rest = after;
    }
    let binding_sig: [u8; 64] = rest.try_into().map_err(|_| HandshakeError::Malformed)?;
    Ok((chain, binding_sig))
}

fn be_u32(bytes: &[u8]) -> Result<u32, HandshakeError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| HandshakeError::Malformed)
}

fn be_u64(bytes: &[u8]) -> Result<u64, HandshakeError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| HandshakeError::Malformed)
}

/// snow's default primitives, with randomness from a seed drawn from the
/// caller's RNG, so handshakes are deterministic under a seeded RNG
/// (randomness is an input, like time).
struct SeededResolver {
    seed: [u8; 32],
}

struct SeededRandom(StdRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(StdRng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trip() {
        let local = LocalIdentity {
            static_keys: StaticKeypair::from_private([7; 32]),
            cert_chain_der: vec![vec![1, 2, 3], vec![], vec![9; 300]],
            binding_sig: [5; 64],
        };
        let encoded = encode_identity(&local, MAX_REQUEST_IDENTITY_LEN).unwrap();
        let (chain, sig) = parse_identity(&encoded).unwrap();
        assert_eq!(chain, local.cert_chain_der);
        assert_eq!(sig, local.binding_sig);

        // Every truncation and any trailing byte is malformed.
        for len in 0..encoded.len() {
            assert_eq!(
                parse_identity(&encoded[..len]),
                Err(HandshakeError::Malformed)
            );
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert_eq!(parse_identity(&longer), Err(HandshakeError::Malformed));
        let mut zero_count = encoded;
        zero_count[0] = 0;
        assert_eq!(parse_identity(&zero_count), Err(HandshakeError::Malformed));
    }

    #[test]
    fn identity_limits() {
        let mut local = LocalIdentity {
            static_keys: StaticKeypair::from_private([7; 32]),
            cert_chain_der: vec![],
            binding_sig: [0; 64],
        };
        assert_eq!(
            encode_identity(&local, MAX_REQUEST_IDENTITY_LEN),
            Err(HandshakeError::Malformed)
        );
        local.cert_chain_der = vec![vec![]; 256];
        assert_eq!(
            encode_identity(&local, usize::MAX),
            Err(HandshakeError::TooLarge)
        );
        local.cert_chain_der = vec![vec![0; 65536]];
        assert_eq!(
            encode_identity(&local, usize::MAX),
            Err(HandshakeError::TooLarge)
        );
        // 1 + 2 + n + 64 == max exactly fits.
        local.cert_chain_der = vec![vec![0; MAX_REQUEST_IDENTITY_LEN - 67]];
        assert!(encode_identity(&local, MAX_REQUEST_IDENTITY_LEN).is_ok());
        local.cert_chain_der = vec![vec![0; MAX_REQUEST_IDENTITY_LEN - 66]];
        assert_eq!(
            encode_identity(&local, MAX_REQUEST_IDENTITY_LEN),
            Err(HandshakeError::TooLarge)
        );
    }

    #[test]
    fn static_keys_session_keys_and_the_initiators_tunnel_key_are_wiped_on_drop() {
        let keys = StaticKeypair::from_private([0xa5; 32]);
        assert_ne!(keys.private, [0; 32]);
        assert_eq!(crate::key_bytes_after_drop!(keys, private), [0; 32]);

        let session = || SessionKeys {
            send: [0xa5; 32],
            recv: [0x5a; 32],
            local_index: LocalIndex(1),
            remote_index: LocalIndex(2),
        };
        assert_eq!(crate::key_bytes_after_drop!(session(), send), [0; 32]);
        assert_eq!(crate::key_bytes_after_drop!(session(), recv), [0; 32]);

        let local = LocalIdentity {
            static_keys: StaticKeypair::from_private([7; 32]),
            cert_chain_der: vec![vec![1; 100]],
            binding_sig: [5; 64],
        };
        let remote = StaticKeypair::from_private([8; 32]);
        let mut rng = StdRng::from_seed([3; 32]);
        let (initiator, _) = Initiator::start_with_rng(
            &local,
            &remote.public,
            &[0xa5; 32],
            RouteId(9),
            LocalIndex(4),
            &mut rng,
        )
        .unwrap();
        assert_eq!(*initiator.tunnel_key, [0xa5; 32]);
        assert_eq!(crate::key_bytes_after_drop!(initiator, tunnel_key), [0; 32]);
        // The subkeys made from it come in a wiping wrapper too.
        let mut psk = psk(&[0xa5; 32]);
        assert_ne!(*psk, [0; 32]);
        psk.zeroize();
        assert_eq!(*psk, [0; 32]);
    }

    #[test]
    fn static_keypair_is_clamped_and_debug_hides_private() {
        let kp = StaticKeypair::from_private([0xff; 32]);
        assert_eq!(kp.private[0] & 7, 0);
        assert_eq!(kp.private[31] & 0xc0, 0x40);
        assert_eq!(StaticKeypair::from_private(kp.private).public, kp.public);
        let debug = format!("{kp:?}");
        assert!(!debug.contains(&hex::encode(kp.private)));
        assert!(debug.contains(&hex::encode(kp.public)));
    }

    #[test]
    fn x25519_matches_rfc7748_vector() {
        // RFC 7748 §6.1, Alice's keys.
        let private: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let kp = StaticKeypair::from_private(private);
        assert_eq!(
            hex::encode(kp.public),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
