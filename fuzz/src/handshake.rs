//! Tunnel Request / Tunnel Response (`cyphonic_proto::handshake`).
//!
//! The first byte picks a mode; the rest is the input. Every mode first
//! runs [`peek_request`], [`peek_response`] and [`request_ephemeral`] on
//! the input and checks them against the header bytes.
//!
//! - mode 0: the input is a Tunnel Request for the fixed responder (CN),
//!   which answers it with [`respond_with_rng`]; bit 2 of the mode byte
//!   recomputes the trailing mac first, so mutations reach Noise.
//! - mode 1: the input is a Tunnel Response for the fixed initiator (MN)
//!   ([`Initiator::check_response`], [`Initiator::finish`]); bit 2 again
//!   fixes the mac. A response that completes must give the keys the CN
//!   derived.
//! - mode 2: the input is the identity payload of a genuine Noise message 1,
//!   written here with `snow` as the MN would: the CN's identity parser
//!   must accept exactly the well-formed payloads, and hand the verifier
//!   exactly what was sent.
//! - mode 3: the input is cut into the two nodes' certificate chains and
//!   a whole handshake runs: both ends must derive crossed keys and see
//!   each other's chains unchanged, or both refuse a too-large identity.

use std::cell::RefCell;

use cyphonic_proto::handshake::{
    peek_request, peek_response, request_ephemeral, respond_with_rng, HandshakeError, Initiator,
    LocalIdentity, PeerVerifier, SessionKeys, MAC_LEN, MAX_HANDSHAKE_LEN, MAX_REQUEST_IDENTITY_LEN,
    MAX_RESPONSE_IDENTITY_LEN, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN, TYPE_TUNNEL_REQUEST,
    TYPE_TUNNEL_RESPONSE,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::fixed;

const NOISE_PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE_LABEL: &[u8] = b"cyphonic tunnel v1";

pub fn check(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    check_peeks(input);
    let fix = mode & 4 != 0;
    match mode % 4 {
        0 => request_to_responder(input, fix),
        1 => response_to_initiator(input, fix),
        2 => identity_payload(input),
        _ => whole_handshake(input),
    }
}

fn check_peeks(p: &[u8]) {
    let sized = |min: usize| (min..=MAX_HANDSHAKE_LEN).contains(&p.len());
    match peek_request(p) {
        Ok(h) => {
            assert_eq!(p[..4], [TYPE_TUNNEL_REQUEST, 0, 0, 0]);
            assert!(sized(REQUEST_HEADER_LEN + MAC_LEN));
            assert_eq!(h.sender_index.to_be_bytes(), p[4..8]);
            assert_eq!(h.route_id.to_be_bytes(), p[8..16]);
            let e = request_ephemeral(p).expect("a request that peeks has an ephemeral");
            assert_eq!(e, p[REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + 32]);
        }
        Err(e) => {
            assert_eq!(e, HandshakeError::Malformed);
            assert!(request_ephemeral(p).is_err());
        }
    }
    match peek_response(p) {
        Ok(h) => {
            assert_eq!(p[..4], [TYPE_TUNNEL_RESPONSE, 0, 0, 0]);
            assert!(sized(RESPONSE_HEADER_LEN + MAC_LEN));
            assert_eq!(h.sender_index.to_be_bytes(), p[4..8]);
            assert_eq!(h.receiver_index.to_be_bytes(), p[8..12]);
        }
        Err(e) => assert_eq!(e, HandshakeError::Malformed),
    }
}

/// What a verifier is shown: chain, static key, binding signature.
type Shown = (Vec<Vec<u8>>, [u8; 32], [u8; 64]);

/// Accepts every identity and remembers the last one it saw.
#[derive(Default)]
struct Recorder {
    seen: RefCell<Option<Shown>>,
}

impl PeerVerifier for Recorder {
    fn verify_peer(
        &self,
        chain: &[Vec<u8>],
        static_public: &[u8; 32],
        binding_sig: &[u8; 64],
    ) -> Result<(), String> {
        *self.seen.borrow_mut() = Some((chain.to_vec(), *static_public, *binding_sig));
        Ok(())
    }
}

/// The CN answering `request` for the fixed route.
fn respond(request: &[u8], verifier: &Recorder) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
    respond_with_rng(
        request,
        &fixed::cn(),
        &fixed::mn().static_keys.public,
        &fixed::TUNNEL_KEY,
        fixed::CN_INDEX,
        verifier,
        &mut StdRng::seed_from_u64(fixed::CN_EPHEMERAL_SEED),
    )
}

/// The MN's side of the fixed route, and the request it sends.
pub fn start_initiator() -> (Initiator, Vec<u8>) {
    Initiator::start_with_rng(
        &fixed::mn(),
        &fixed::cn().static_keys.public,
        &fixed::TUNNEL_KEY,
        fixed::ROUTE_ID,
        fixed::MN_INDEX,
        &mut StdRng::seed_from_u64(fixed::MN_EPHEMERAL_SEED),
    )
    .expect("the fixed identity fits a request")
}

/// The CN's genuine answer to [`start_initiator`]'s request.
pub fn genuine_response() -> (SessionKeys, Vec<u8>) {
    let (_, request) = start_initiator();
    respond(&request, &Recorder::default()).expect("the CN answers the MN")
}

fn request_to_responder(input: &[u8], fix: bool) {
    let mut request = input.to_vec();
    if fix {
        fixed::fix_mac(&fixed::TUNNEL_KEY, &mut request);
    }
    let verifier = Recorder::default();
    let Ok((keys, response)) = respond(&request, &verifier) else {
        return;
    };
    let header = peek_request(&request).expect("an answered request peeks");
    let answer = peek_response(&response).expect("our response peeks");
    assert_eq!(answer.receiver_index, header.sender_index);
    assert_eq!(answer.sender_index, fixed::CN_INDEX);
    assert_eq!(keys.remote_index, header.sender_index);
    assert_eq!(keys.local_index, fixed::CN_INDEX);
    let (chain, static_public, _) = verifier.seen.take().expect("the verifier was asked");
    assert_eq!(static_public, fixed::mn().static_keys.public);
    assert!(!chain.is_empty());
}

fn response_to_initiator(input: &[u8], fix: bool) {
    let mut response = input.to_vec();
    if fix {
        fixed::fix_mac(&fixed::TUNNEL_KEY, &mut response);
    }
    let (initiator, _) = start_initiator();
    if let Ok(header) = initiator.check_response(&response) {
        assert_eq!(header.receiver_index, fixed::MN_INDEX);
    }
    let verifier = Recorder::default();
    if let Ok(keys) = initiator.finish(&response, &verifier) {
        // Only the CN can complete the handshake, and it answered with
        // these keys.
        let (cn_keys, _) = genuine_response();
        assert_eq!(keys.send, cn_keys.recv);
        assert_eq!(keys.recv, cn_keys.send);
        // The responder's index is authenticated by Noise too: even a
        // holder of the tunnel key (who can recompute the mac) cannot
        // alter it.
        assert_eq!(keys.remote_index, cn_keys.local_index);
        let (chain, _, sig) = verifier.seen.take().expect("the verifier was asked");
        assert_eq!(chain, fixed::cn().cert_chain_der);
        assert_eq!(sig, fixed::cn().binding_sig);
    }
}

/// `[count >= 1]{[len u16][der]}×count[sig 64]`, exactly: the reference the
/// crate's private parser is compared with.
fn parse_identity(mut p: &[u8]) -> Option<(Vec<Vec<u8>>, [u8; 64])> {
    let (&count, rest) = p.split_first()?;
    p = rest;
    if count == 0 {
        return None;
    }
    let mut chain = Vec::new();
    for _ in 0..count {
        if p.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([p[0], p[1]]));
        let der = p.get(2..2 + len)?;
        chain.push(der.to_vec());
        p = &p[2 + len..];
    }
    Some((chain, p.try_into().ok()?))
}

fn identity_payload(input: &[u8]) {
    let payload = &input[..input.len().min(MAX_REQUEST_IDENTITY_LEN)];
    let request = snow_request(payload);
    assert!(request.len() <= MAX_HANDSHAKE_LEN);
    let verifier = Recorder::default();
    let result = respond(&request, &verifier);
    match parse_identity(payload) {
        Some((chain, sig)) => {
            assert!(result.is_ok(), "a well-formed identity refused: {result:?}");
            let (seen_chain, _, seen_sig) = verifier.seen.take().expect("verifier asked");
            assert_eq!(seen_chain, chain);
            assert_eq!(seen_sig, sig);
        }
        None => assert_eq!(result.err(), Some(HandshakeError::Malformed)),
    }
}

/// A Tunnel Request from the fixed MN carrying `payload` as its identity,
/// written with `snow` directly so the payload can be anything.
fn snow_request(payload: &[u8]) -> Vec<u8> {
    let mut prologue = PROLOGUE_LABEL.to_vec();
    prologue.extend_from_slice(&fixed::ROUTE_ID.to_be_bytes());
    prologue.extend_from_slice(&fixed::MN_INDEX.to_be_bytes());
    let mn = fixed::mn();
    let cn = fixed::cn();
    let psk = fixed::handshake_psk(&fixed::TUNNEL_KEY);
    let mut noise = snow::Builder::with_resolver(
        NOISE_PATTERN.parse().expect("pattern"),
        Box::new(SeededResolver(fixed::MN_EPHEMERAL_SEED)),
    )
    .local_private_key(&mn.static_keys.private)
    .and_then(|b| b.remote_public_key(&cn.static_keys.public))
    .and_then(|b| b.psk(2, &psk))
    .and_then(|b| b.prologue(&prologue))
    .and_then(|b| b.build_initiator())
    .expect("noise initiator");
    let mut packet = vec![TYPE_TUNNEL_REQUEST, 0, 0, 0];
    packet.extend_from_slice(&fixed::MN_INDEX.to_be_bytes());
    packet.extend_from_slice(&fixed::ROUTE_ID.to_be_bytes());
    let mut message = vec![0u8; 96 + payload.len()];
    let n = noise
        .write_message(payload, &mut message)
        .expect("noise message 1");
    packet.extend_from_slice(&message[..n]);
    let mac = fixed::handshake_mac(&fixed::TUNNEL_KEY, &packet);
    packet.extend_from_slice(&mac);
    packet
}

fn whole_handshake(input: &[u8]) {
    // [cut u16] MN's leaf || CN's leaf
    let (cut, rest) = match input {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => return,
    };
    let (mn_leaf, cn_leaf) = rest.split_at(cut.min(rest.len()));
    let with_leaf = |mut id: LocalIdentity, leaf: &[u8]| {
        id.cert_chain_der[0] = leaf.to_vec();
        id
    };
    let mn = with_leaf(fixed::mn(), mn_leaf);
    let cn = with_leaf(fixed::cn(), cn_leaf);
    let identity_len =
        |id: &LocalIdentity| 1 + id.cert_chain_der.iter().map(|c| 2 + c.len()).sum::<usize>() + 64;

    let started = Initiator::start_with_rng(
        &mn,
        &cn.static_keys.public,
        &fixed::TUNNEL_KEY,
        fixed::ROUTE_ID,
        fixed::MN_INDEX,
        &mut StdRng::seed_from_u64(fixed::MN_EPHEMERAL_SEED),
    );
    let (initiator, request) = match started {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(e, HandshakeError::TooLarge);
            assert!(identity_len(&mn) > MAX_REQUEST_IDENTITY_LEN);
            return;
        }
    };
    assert!(identity_len(&mn) <= MAX_REQUEST_IDENTITY_LEN);
    assert!(request.len() <= MAX_HANDSHAKE_LEN);

    let cn_saw = Recorder::default();
    let answered = respond_with_rng(
        &request,
        &cn,
        &mn.static_keys.public,
        &fixed::TUNNEL_KEY,
        fixed::CN_INDEX,
        &cn_saw,
        &mut StdRng::seed_from_u64(fixed::CN_EPHEMERAL_SEED),
    );
    let (cn_keys, response) = match answered {
        Ok(a) => a,
        Err(e) => {
            assert_eq!(e, HandshakeError::TooLarge);
            assert!(identity_len(&cn) > MAX_RESPONSE_IDENTITY_LEN);
            return;
        }
    };
    assert!(identity_len(&cn) <= MAX_RESPONSE_IDENTITY_LEN);
    assert!(response.len() <= MAX_HANDSHAKE_LEN);
    let (chain, static_public, sig) = cn_saw.seen.take().expect("CN verified");
    assert_eq!(chain, mn.cert_chain_der);
    assert_eq!(static_public, mn.static_keys.public);
    assert_eq!(sig, mn.binding_sig);

    let mn_saw = Recorder::default();
    let mn_keys = initiator
        .finish(&response, &mn_saw)
        .expect("the MN completes the CN's answer");
    let (chain, static_public, sig) = mn_saw.seen.take().expect("MN verified");
    assert_eq!(chain, cn.cert_chain_der);
    assert_eq!(static_public, cn.static_keys.public);
    assert_eq!(sig, cn.binding_sig);

    assert_eq!(mn_keys.send, cn_keys.recv);
    assert_eq!(mn_keys.recv, cn_keys.send);
    assert_ne!(mn_keys.send, mn_keys.recv);
    assert_eq!(mn_keys.local_index, cn_keys.remote_index);
    assert_eq!(mn_keys.remote_index, cn_keys.local_index);
}

/// snow's primitives with a seeded RNG, as the crate's own resolver.
struct SeededResolver(u64);

struct SeededRandom(StdRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(StdRng::seed_from_u64(self.0))))
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
