//! Ed25519 private keys and bare signatures.
//!
//! Every key in cyphonic is Ed25519 (RFC 8032): small, fast, deterministic
//! signatures with no nonce to get wrong, and one algorithm to audit.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use zeroize::Zeroizing;

use crate::names::normalize_dns_name;
use crate::PkiError;

/// Length of a raw Ed25519 public key (RFC 8032 §5.1.5).
const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature (RFC 8032 §5.1.6).
const SIGNATURE_LEN: usize = 64;

/// A node's (or server's, or CA's) Ed25519 private key. Never leaves the
/// machine that made it: only [`NodeKey::csr_pem`] and
/// [`NodeKey::public_key`] are meant to be sent anywhere.
///
/// Holds the PKCS#8 document (to write it back out unchanged; wiped on
/// drop) and ring's parsed key (to sign; ring does not wipe it, see
/// `docs/security.md` §3). `Debug` prints only the public key.
pub struct NodeKey {
    pkcs8: Zeroizing<Vec<u8>>,
    key: Ed25519KeyPair,
}

impl NodeKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, PkiError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| PkiError::Key("the system random generator failed".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Reads a `PRIVATE KEY` (PKCS#8, v1 or v2) PEM block holding an Ed25519
    /// key. Other key types are refused.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| PkiError::Key(format!("no PKCS#8 PRIVATE KEY block: {e}")))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// Parses PKCS#8 DER. `maybe_unchecked` accepts the v1 documents other
    /// tools (OpenSSL) write as well as ring's v2, and still checks the
    /// embedded public key when there is one.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Self, PkiError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| PkiError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self {
            pkcs8: Zeroizing::new(der.to_vec()),
            key,
        })
    }

    /// The key as a PKCS#8 `PRIVATE KEY` PEM block, wiped when dropped.
    pub fn to_pem(&self) -> Zeroizing<String> {
        crate::pem::encode_secret("PRIVATE KEY", &self.pkcs8)
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        // Invariant: ring's Ed25519 public key is always 32 bytes.
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    /// A PKCS#10 request for `fqdn` (CN and dNSName SAN), signed by this key.
    ///
    /// The AS ignores the names in it and certifies the name it assigned;
    /// they are there so the request reads sensibly in `openssl req -text`.
    pub fn csr_pem(&self, fqdn: &str) -> Result<String, PkiError> {
        let fqdn = normalize_dns_name(fqdn)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, fqdn.as_str());
        params.subject_alt_names = vec![crate::names::dns_san(&fqdn)?];
        let csr = params
            .serialize_request(self)
            .map_err(|e| PkiError::Key(format!("cannot sign request: {e}")))?;
        csr.pem()
            .map_err(|e| PkiError::Key(format!("cannot encode request: {e}")))
    }

    /// An Ed25519 signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        // Invariant: Ed25519 signatures are always 64 bytes.
        out.copy_from_slice(self.key.sign(msg).as_ref());
        out
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public_key", &Hex(self.key.public_key().as_ref()))
            .finish_non_exhaustive()
    }
}

/// Lets rcgen put this key into certificates and CSRs and sign with it,
/// without a second parsed copy of the secret.
impl rcgen::PublicKeyData for NodeKey {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for NodeKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.sign(msg).as_ref().to_vec())
    }
}

/// A bare Ed25519 public key taken from a CSR, for rcgen to certify.
pub(crate) struct Ed25519PublicKey(pub(crate) [u8; PUBLIC_KEY_LEN]);

impl rcgen::PublicKeyData for Ed25519PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// Checks an Ed25519 signature. Any failure, including a signature of the
/// wrong length, is `BadSignature`.
pub fn verify_ed25519(
    public_key: &[u8; PUBLIC_KEY_LEN],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), PkiError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(msg, sig)
        .map_err(|_| PkiError::BadSignature)
}

/// Lowercase hex for `Debug` output.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let k = NodeKey::generate().expect("keygen");
        let back = NodeKey::from_pem(&k.to_pem()).expect("own PEM reads back");
        assert_eq!(k.public_key(), back.public_key());
        assert_eq!(k.to_pem(), back.to_pem());
    }

    #[test]
    fn refuses_non_ed25519_keys() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        assert!(matches!(
            NodeKey::from_pem(&p256.serialize_pem()),
            Err(PkiError::Key(_))
        ));
        assert!(matches!(
            NodeKey::from_pem("nonsense"),
            Err(PkiError::Key(_))
        ));
    }

    #[test]
    fn reads_rcgen_ed25519_keys() {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("keygen");
        let ours = NodeKey::from_pem(&k.serialize_pem()).expect("rcgen's PKCS#8 is readable");
        assert_eq!(ours.public_key().as_slice(), k.public_key_raw());
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let k = NodeKey::generate().expect("keygen");
        let dbg = format!("{k:?}");
        assert!(dbg.contains("public_key"));
        assert!(!dbg.contains("pkcs8"));
    }

    #[test]
    fn sign_verify_round_trip_and_wrong_key() {
        let a = NodeKey::generate().expect("keygen");
        let b = NodeKey::generate().expect("keygen");
        let sig = a.sign(b"hello");
        assert_eq!(verify_ed25519(&a.public_key(), b"hello", &sig), Ok(()));
        assert_eq!(
            verify_ed25519(&b.public_key(), b"hello", &sig),
            Err(PkiError::BadSignature)
        );
        assert_eq!(
            verify_ed25519(&a.public_key(), b"hellO", &sig),
            Err(PkiError::BadSignature)
        );
        assert_eq!(
            verify_ed25519(&a.public_key(), b"hello", &sig[..63]),
            Err(PkiError::BadSignature)
        );
    }
}
