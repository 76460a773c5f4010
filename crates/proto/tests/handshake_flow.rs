//! Tunnel Request / Tunnel Response between two nodes
//! (crates/proto/src/handshake.rs), with a test `PeerVerifier` that checks
//! the static key binding with ring Ed25519.

use cyphonic_proto::data::{DATA_HEADER_LEN, DATA_OVERHEAD};
use cyphonic_proto::handshake::{
    binding_message, peek_request, peek_response, request_ephemeral, respond_with_rng,
    HandshakeError, Initiator, LocalIdentity, PeerVerifier, SessionKeys, StaticKeypair,
    MAX_HANDSHAKE_LEN, MAX_REQUEST_IDENTITY_LEN, MAX_RESPONSE_IDENTITY_LEN, TYPE_TUNNEL_REQUEST,
    TYPE_TUNNEL_RESPONSE,
};
use cyphonic_proto::{LocalIndex, RouteId};
use rand::rngs::StdRng;
use rand::SeedableRng;
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

const TUNNEL_KEY: [u8; 32] = [0x5a; 32];
const ROUTE_ID: RouteId = RouteId(0x1122_3344_5566_7788);
const MN_INDEX: LocalIndex = LocalIndex(0xaaaa_0001);
const CN_INDEX: LocalIndex = LocalIndex(0xbbbb_0002);
/// Stand-in for a DER certificate: a marker and the Ed25519 public key.
const CERT_MARKER: &[u8] = b"TEST-CERT:";

struct Node {
    identity: LocalIdentity,
    /// The leaf "certificate" a verifier of this node expects.
    leaf: Vec<u8>,
}

fn node(seed: u8) -> Node {
    let cert_key = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let static_keys = StaticKeypair::generate(&mut StdRng::seed_from_u64(u64::from(seed)));
    let sig = cert_key.sign(&binding_message(&static_keys.public));
    let mut leaf = CERT_MARKER.to_vec();
    leaf.extend_from_slice(cert_key.public_key().as_ref());
    Node {
        identity: LocalIdentity {
            static_keys,
            cert_chain_der: vec![leaf.clone(), b"TEST-CA".to_vec()],
            binding_sig: sig.as_ref().try_into().unwrap(),
        },
        leaf,
    }
}

/// Accepts exactly `expected_leaf` and checks the binding signature with the
/// Ed25519 key inside it, as the real X.509 verifier does with the
/// certificate's key.
struct TestVerifier {
    expected_leaf: Vec<u8>,
}

impl PeerVerifier for TestVerifier {
    fn verify_peer(
        &self,
        chain: &[Vec<u8>],
        static_public: &[u8; 32],
        binding_sig: &[u8; 64],
    ) -> Result<(), String> {
        let leaf = chain.first().ok_or("empty chain")?;
        if *leaf != self.expected_leaf {
            return Err("not the expected peer".into());
        }
        let key = leaf.strip_prefix(CERT_MARKER).ok_or("not a test cert")?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&binding_message(static_public), binding_sig)
            .map_err(|_| "binding signature does not cover the static key".to_string())
    }
}

struct Rejecting(&'static str);

impl PeerVerifier for Rejecting {
    fn verify_peer(&self, _: &[Vec<u8>], _: &[u8; 32], _: &[u8; 64]) -> Result<(), String> {
        Err(self.0.to_string())
    }
}

fn verifier_of(node: &Node) -> TestVerifier {
    TestVerifier {
        expected_leaf: node.leaf.clone(),
    }
}

fn start(mn: &Node, cn: &Node, seed: u64) -> (Initiator, Vec<u8>) {
    Initiator::start_with_rng(
        &mn.identity,
        &cn.identity.static_keys.public,
        &TUNNEL_KEY,
        ROUTE_ID,
        MN_INDEX,
        &mut StdRng::seed_from_u64(seed),
    )
    .unwrap()
}

fn respond(
    request: &[u8],
    mn: &Node,
    cn: &Node,
    tunnel_key: &[u8; 32],
    verifier: &dyn PeerVerifier,
) -> Result<(SessionKeys, Vec<u8>), HandshakeError> {
    respond_with_rng(
        request,
        &cn.identity,
        &mn.identity.static_keys.public,
        tunnel_key,
        CN_INDEX,
        verifier,
        &mut StdRng::seed_from_u64(99),
    )
}

/// Recomputes the trailing mac, as a holder of the tunnel key (the NMS)
/// could after altering a packet: HMAC-SHA256 under the tunnel key's mac
/// subkey, `HMAC-SHA256(tunnel key, "cyphonic tunnel mac v1")` (§6.4).
fn remac(packet: &mut [u8], key: &[u8; 32]) {
    let split = packet.len() - 16;
    let mac_key = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        b"cyphonic tunnel mac v1",
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_ref()),
        &packet[..split],
    );
    packet[split..].copy_from_slice(&tag.as_ref()[..16]);
}

/// Carries `payload` from `send` to `recv` in a data packet.
fn carry(keys_from: &SessionKeys, keys_to: &SessionKeys, payload: &[u8]) -> Vec<u8> {
    let (send, _) = keys_from.data_keys();
    let (_, recv) = keys_to.data_keys();
    let mut buf = vec![0u8; DATA_OVERHEAD + payload.len()];
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
    let len = send.seal_in_place(&mut buf, payload.len()).unwrap();
    let range = recv.open_in_place(&mut buf[..len]).unwrap();
    buf[range].to_vec()
}

#[test]
fn full_handshake_derives_matching_keys() {
    let (mn, cn) = (node(1), node(2));
    let (initiator, request) = start(&mn, &cn, 7);
    assert!(request.len() <= MAX_HANDSHAKE_LEN);
    assert_eq!(request[0], TYPE_TUNNEL_REQUEST);
    let header = peek_request(&request).unwrap();
    assert_eq!(header.sender_index, MN_INDEX);
    assert_eq!(header.route_id, ROUTE_ID);
    // Certificates travel encrypted.
    assert!(!request.windows(CERT_MARKER.len()).any(|w| w == CERT_MARKER));

    let (cn_keys, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    assert_eq!(response[0], TYPE_TUNNEL_RESPONSE);
    let header = peek_response(&response).unwrap();
    assert_eq!(header.sender_index, CN_INDEX);
    assert_eq!(header.receiver_index, MN_INDEX);
    assert!(!response
        .windows(CERT_MARKER.len())
        .any(|w| w == CERT_MARKER));

    assert_eq!(initiator.check_response(&response), Ok(header));
    let mn_keys = initiator.finish(&response, &verifier_of(&cn)).unwrap();

    assert_eq!(mn_keys.send, cn_keys.recv);
    assert_eq!(mn_keys.recv, cn_keys.send);
    assert_ne!(mn_keys.send, mn_keys.recv);
    assert_eq!(mn_keys.local_index, MN_INDEX);
    assert_eq!(mn_keys.remote_index, CN_INDEX);
    assert_eq!(cn_keys.local_index, CN_INDEX);
    assert_eq!(cn_keys.remote_index, MN_INDEX);
    // The psk alone does not give the session keys.
    assert_ne!(mn_keys.send, TUNNEL_KEY);

    assert_eq!(carry(&mn_keys, &cn_keys, b"mn to cn"), b"mn to cn");
    assert_eq!(carry(&cn_keys, &mn_keys, b"cn to mn"), b"cn to mn");
}

#[test]
fn seeded_handshakes_are_deterministic_and_fresh_per_seed() {
    let (mn, cn) = (node(1), node(2));
    let run = |seed| {
        let (initiator, request) = start(&mn, &cn, seed);
        let (cn_keys, response) =
            respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
        let mn_keys = initiator.finish(&response, &verifier_of(&cn)).unwrap();
        (request, response, mn_keys, cn_keys)
    };
    let a = run(1);
    let b = run(1);
    let c = run(2);
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
    assert_ne!(a.2.send, c.2.send);
    assert_ne!(a.2.recv, c.2.recv);
}

#[test]
fn os_randomness_entry_points_work() {
    let (mn, cn) = (node(1), node(2));
    let (initiator, request) = Initiator::start(
        &mn.identity,
        &cn.identity.static_keys.public,
        &TUNNEL_KEY,
        ROUTE_ID,
        MN_INDEX,
    )
    .unwrap();
    let (cn_keys, response) = cyphonic_proto::handshake::respond(
        &request,
        &cn.identity,
        &mn.identity.static_keys.public,
        &TUNNEL_KEY,
        CN_INDEX,
        &verifier_of(&mn),
    )
    .unwrap();
    let mn_keys = initiator.finish(&response, &verifier_of(&cn)).unwrap();
    assert_eq!(mn_keys.send, cn_keys.recv);
}

#[test]
fn wrong_tunnel_key_is_bad_mac_before_any_dh() {
    let (mn, cn) = (node(1), node(2));
    let (_, request) = start(&mn, &cn, 7);
    let other_key = [0x5b; 32];
    assert_eq!(
        respond(&request, &mn, &cn, &other_key, &verifier_of(&mn)).unwrap_err(),
        HandshakeError::BadMac
    );

    // The mac is checked before Noise: a request whose Noise message is
    // garbage is BadMac under the wrong key, and only reaches Noise (and
    // fails there) when its mac is right.
    let mut garbage = request.clone();
    garbage[16..request.len() - 16].fill(0xee);
    remac(&mut garbage, &TUNNEL_KEY);
    assert_eq!(
        respond(&garbage, &mn, &cn, &other_key, &verifier_of(&mn)).unwrap_err(),
        HandshakeError::BadMac
    );
    assert!(matches!(
        respond(&garbage, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err(),
        HandshakeError::Noise(_)
    ));

    // Initiator side: a response mac'd under another key.
    let (initiator, request) = start(&mn, &cn, 8);
    let (_, mut response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    remac(&mut response, &other_key);
    assert_eq!(
        initiator.check_response(&response),
        Err(HandshakeError::BadMac)
    );
    assert_eq!(
        initiator.finish(&response, &verifier_of(&cn)).unwrap_err(),
        HandshakeError::BadMac
    );
}

#[test]
fn every_flipped_request_byte_is_rejected() {
    let (mn, cn) = (node(1), node(2));
    let (_, request) = start(&mn, &cn, 7);
    for pos in 0..request.len() {
        let mut flipped = request.clone();
        flipped[pos] ^= 0x01;
        let err = respond(&flipped, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err();
        let want = if pos < 4 {
            HandshakeError::Malformed
        } else {
            HandshakeError::BadMac
        };
        assert_eq!(err, want, "byte {pos}");
    }
}

#[test]
fn every_flipped_response_byte_is_rejected() {
    let (mn, cn) = (node(1), node(2));
    let (initiator, request) = start(&mn, &cn, 7);
    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    for pos in 0..response.len() {
        let mut flipped = response.clone();
        flipped[pos] ^= 0x01;
        // Type, reserved and receiver index fail the header checks (the
        // latter would route to another Initiator anyway); the rest the mac.
        let want = if pos < 4 || (8..12).contains(&pos) {
            HandshakeError::Malformed
        } else {
            HandshakeError::BadMac
        };
        assert_eq!(initiator.check_response(&flipped), Err(want), "byte {pos}");
    }
    // Junk did not consume the handshake: the genuine response still works.
    assert!(initiator.finish(&response, &verifier_of(&cn)).is_ok());

    // finish itself gives the same errors.
    let (initiator, request) = start(&mn, &cn, 8);
    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    let mut flipped = response.clone();
    flipped[40] ^= 0x80;
    assert_eq!(
        initiator.finish(&flipped, &verifier_of(&cn)).unwrap_err(),
        HandshakeError::BadMac
    );
}

#[test]
fn tunnel_key_holder_cannot_tamper() {
    // The NMS knows the tunnel key and can fix up the mac, but the header is
    // bound by the Noise prologue and the rest by Noise itself.
    let (mn, cn) = (node(1), node(2));
    let (_, request) = start(&mn, &cn, 7);
    for pos in [4, 8, 15, 16, 40, 60, request.len() - 17] {
        let mut tampered = request.clone();
        tampered[pos] ^= 0x01;
        remac(&mut tampered, &TUNNEL_KEY);
        let err = respond(&tampered, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Noise(_)),
            "byte {pos}: {err:?}"
        );
    }

    let (initiator, request) = start(&mn, &cn, 8);
    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    let mut tampered = response.clone();
    tampered[30] ^= 0x01;
    remac(&mut tampered, &TUNNEL_KEY);
    assert!(matches!(
        initiator.finish(&tampered, &verifier_of(&cn)).unwrap_err(),
        HandshakeError::Noise(_)
    ));

    // The responder's index (header bytes 4..8) is outside the prologue,
    // but Noise authenticates it in the payload: an altered one with a
    // recomputed mac is refused, so the initiator never sends its data
    // packets under an index the responder did not choose.
    let (initiator, request) = start(&mn, &cn, 9);
    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    let mut tampered = response.clone();
    tampered[7] ^= 0x01;
    remac(&mut tampered, &TUNNEL_KEY);
    assert_eq!(
        initiator.finish(&tampered, &verifier_of(&cn)).unwrap_err(),
        HandshakeError::Malformed
    );
}

#[test]
fn rejected_identity_is_peer_rejected_with_reason() {
    let (mn, cn) = (node(1), node(2));
    let (initiator, request) = start(&mn, &cn, 7);
    assert_eq!(
        respond(
            &request,
            &mn,
            &cn,
            &TUNNEL_KEY,
            &Rejecting("certificate revoked")
        )
        .unwrap_err(),
        HandshakeError::PeerRejected("certificate revoked".into())
    );
    // The real verifier of another node refuses MN's certificate.
    assert_eq!(
        respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&node(3))).unwrap_err(),
        HandshakeError::PeerRejected("not the expected peer".into())
    );

    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    assert_eq!(
        initiator
            .finish(&response, &Rejecting("wrong organisation"))
            .unwrap_err(),
        HandshakeError::PeerRejected("wrong organisation".into())
    );
}

#[test]
fn binding_signature_over_another_static_key_is_rejected() {
    // MN presents its certificate, but its static key is not the one the
    // certificate key signed.
    let (mut mn, cn) = (node(1), node(2));
    mn.identity.static_keys = StaticKeypair::from_private([9; 32]);
    let (_, request) = start(&mn, &cn, 7);
    assert_eq!(
        respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err(),
        HandshakeError::PeerRejected("binding signature does not cover the static key".into())
    );
}

#[test]
fn unannounced_static_key_is_unexpected() {
    let (mn, cn, other) = (node(1), node(2), node(3));
    // `other` holds a valid identity and the tunnel key, but is not the MN
    // the NMS announced to CN.
    let (_, request) = start(&other, &cn, 7);
    assert_eq!(
        respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&other)).unwrap_err(),
        HandshakeError::UnexpectedStatic
    );

    // An MN that targets the wrong CN static key fails in Noise (es / ss).
    let (_, request) = start(&mn, &other, 7);
    assert!(matches!(
        respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err(),
        HandshakeError::Noise(_)
    ));
}

#[test]
fn truncated_requests_are_rejected() {
    let (mn, cn) = (node(1), node(2));
    let (_, request) = start(&mn, &cn, 7);
    for len in 0..request.len() {
        let truncated = &request[..len];
        let err = respond(truncated, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err();
        assert!(
            matches!(err, HandshakeError::Malformed | HandshakeError::BadMac),
            "len {len}: {err:?}"
        );
        if len < 128 {
            assert_eq!(peek_request(truncated), Err(HandshakeError::Malformed));
            assert_eq!(request_ephemeral(truncated), Err(HandshakeError::Malformed));
        }
    }
    let mut longer = request.clone();
    longer.push(0);
    assert_eq!(
        respond(&longer, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err(),
        HandshakeError::BadMac
    );
    assert_eq!(
        peek_request(&vec![TYPE_TUNNEL_REQUEST; MAX_HANDSHAKE_LEN + 1]),
        Err(HandshakeError::Malformed)
    );
}

#[test]
fn truncated_responses_are_rejected() {
    let (mn, cn) = (node(1), node(2));
    let (_, request) = start(&mn, &cn, 7);
    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    for len in 0..response.len() {
        // A fresh Initiator for each length, since finish consumes it.
        let (initiator, _) = start(&mn, &cn, 7);
        let err = initiator
            .finish(&response[..len], &verifier_of(&cn))
            .unwrap_err();
        assert!(
            matches!(err, HandshakeError::Malformed | HandshakeError::BadMac),
            "len {len}: {err:?}"
        );
        if len < 76 {
            assert_eq!(
                peek_response(&response[..len]),
                Err(HandshakeError::Malformed)
            );
        }
    }
    let (initiator, _) = start(&mn, &cn, 7);
    assert!(initiator.finish(&response, &verifier_of(&cn)).is_ok());
}

#[test]
fn arbitrary_input_never_panics() {
    let (mn, cn) = (node(1), node(2));
    let (initiator, _) = start(&mn, &cn, 7);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..500 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 1500) as usize;
        let mut packet: Vec<u8> = (0..len).map(|i| (state >> (i % 57)) as u8).collect();
        for (ty, idx) in [(TYPE_TUNNEL_REQUEST, 4), (TYPE_TUNNEL_RESPONSE, 8)] {
            if packet.len() >= 12 {
                packet[..4].copy_from_slice(&[ty, 0, 0, 0]);
                packet[idx..idx + 4].copy_from_slice(&MN_INDEX.to_be_bytes());
            }
            let _ = peek_request(&packet);
            let _ = peek_response(&packet);
            let _ = request_ephemeral(&packet);
            assert!(initiator.check_response(&packet).is_err());
            assert!(respond(&packet, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).is_err());
        }
    }
}

#[test]
fn identity_size_limits() {
    let (mut mn, mut cn) = (node(1), node(2));

    // An identity that exactly fills a 1400-byte request still works.
    let fill = MAX_REQUEST_IDENTITY_LEN - (1 + 2 + mn.leaf.len() + 2 + 64);
    mn.identity.cert_chain_der[1] = vec![0xca; fill];
    let (initiator, request) = start(&mn, &cn, 7);
    assert_eq!(request.len(), MAX_HANDSHAKE_LEN);
    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    assert!(initiator.finish(&response, &verifier_of(&cn)).is_ok());

    // One byte more does not.
    mn.identity.cert_chain_der[1].push(0);
    let err = Initiator::start_with_rng(
        &mn.identity,
        &cn.identity.static_keys.public,
        &TUNNEL_KEY,
        ROUTE_ID,
        MN_INDEX,
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap_err();
    assert_eq!(err, HandshakeError::TooLarge);

    // Same for the response.
    mn.identity.cert_chain_der[1] = b"TEST-CA".to_vec();
    let fill = MAX_RESPONSE_IDENTITY_LEN - (1 + 2 + cn.leaf.len() + 2 + 64);
    cn.identity.cert_chain_der[1] = vec![0xca; fill];
    let (initiator, request) = start(&mn, &cn, 7);
    let (_, response) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    assert_eq!(response.len(), MAX_HANDSHAKE_LEN);
    assert!(initiator.finish(&response, &verifier_of(&cn)).is_ok());
    cn.identity.cert_chain_der[1].push(0);
    assert_eq!(
        respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap_err(),
        HandshakeError::TooLarge
    );
}

#[test]
fn replayed_request_is_answered_again_and_identified_by_ephemeral() {
    // The module leaves de-duplication to the caller, keyed by
    // (route_id, ephemeral); both are readable without crypto.
    let (mn, cn) = (node(1), node(2));
    let (_, request) = start(&mn, &cn, 7);
    let (_, other_request) = start(&mn, &cn, 8);
    assert!(respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).is_ok());
    assert!(respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).is_ok());
    assert_eq!(
        request_ephemeral(&request),
        Ok(request[16..48].try_into().unwrap())
    );
    assert_ne!(
        request_ephemeral(&request),
        request_ephemeral(&other_request)
    );
}

#[test]
fn debug_output_hides_secrets() {
    let (mn, cn) = (node(1), node(2));
    let (initiator, request) = start(&mn, &cn, 7);
    let (cn_keys, _) = respond(&request, &mn, &cn, &TUNNEL_KEY, &verifier_of(&mn)).unwrap();
    let secrets = [
        hex::encode(cn_keys.send),
        hex::encode(cn_keys.recv),
        hex::encode(mn.identity.static_keys.private),
        hex::encode(TUNNEL_KEY),
    ];
    let debug = format!(
        "{cn_keys:?} {:?} {:?} {initiator:?}",
        mn.identity, mn.identity.static_keys
    );
    let debug_bytes = format!("{cn_keys:?}{:?}", mn.identity.static_keys);
    for secret in &secrets {
        assert!(!debug.contains(secret.as_str()));
    }
    assert!(!debug_bytes.contains(&format!("{:?}", cn_keys.send)));
}

#[test]
fn initiator_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Initiator>();
    assert_send::<SessionKeys>();
}
