//! The certificate authority: a root CA kept offline by the operator, and
//! the Authentication Server's intermediate CA that issues node and server
//! certificates.
//!
//! ```text
//! root CA  (10 years, pathlen 1)        operator keeps root key offline
//!   └─ AS intermediate (5 years, pathlen 0)   lives on the AS
//!        ├─ node leaf   (clientAuth, one dNSName, its VIPs as iPAddress)
//!        └─ AS server   (serverAuth, DNS names + IPs)
//! ```
//!
//! Each CA's subject carries, besides its common name, a short identifier of
//! its own key (OU). Two installations made for the same domain therefore
//! have different issuer names, and a certificate from one is reported as
//! `UnknownIssuer` by the other rather than as a signature failure against
//! a same-named CA. The root is not name-constrained: the AS's public server
//! certificate may need names outside the overlay domain.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SerialNumber,
};
use ring::signature::{UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::oid_registry::OID_SIG_ED25519;
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::key::{Ed25519PublicKey, NodeKey};
use crate::names::{dns_san, normalize_dns_name};
use crate::pem::der_to_pem;
use crate::validity::{backdated, cert_period, later, DAY};
use crate::PkiError;

/// Root CA lifetime: "10 years".
const ROOT_LIFETIME_DAYS: u32 = 3653;
/// Intermediate CA lifetime: "5 years".
const INTERMEDIATE_LIFETIME_DAYS: u32 = 1827;
/// AS server certificate lifetime. The AS re-issues its own certificate at
/// start-up, so a year leaves a wide margin.
const SERVER_LIFETIME_DAYS: u32 = 365;
/// Largest CSR PEM accepted. Ours are about 400 bytes; the bound is checked
/// before any parsing or signature work.
const MAX_CSR_PEM_LEN: usize = 8 * 1024;
/// Bytes of the key hash shown in a CA's OU, enough to tell installations
/// apart by eye and by path builder.
const CA_KEY_ID_LEN: usize = 8;

/// Files the operator keeps after `cyphonic cloud init`.
///
/// The root key should go offline; the AS needs only the intermediate pair
/// (for [`Issuer::from_pem`]) and the root certificate (for [`crate::Verifier`]).
/// `Debug` omits both keys.
#[derive(Clone)]
pub struct CaMaterial {
    /// Self-signed root certificate, the trust anchor every node pins.
    pub root_cert_pem: String,
    /// Root private key (PKCS#8). Needed only to make a new intermediate.
    pub root_key_pem: String,
    /// The AS intermediate certificate, signed by the root.
    pub intermediate_cert_pem: String,
    /// The AS intermediate private key (PKCS#8).
    pub intermediate_key_pem: String,
}

/// The keys are wiped on drop.
impl Drop for CaMaterial {
    fn drop(&mut self) {
        self.root_key_pem.zeroize();
        self.intermediate_key_pem.zeroize();
    }
}

impl ZeroizeOnDrop for CaMaterial {}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("root_cert_pem", &self.root_cert_pem)
            .field("intermediate_cert_pem", &self.intermediate_cert_pem)
            .finish_non_exhaustive()
    }
}

/// Creates a self-signed root CA ("cyphonic root CA <domain>", 10 years,
/// pathlen 1) and the AS intermediate CA ("cyphonic AS intermediate CA
/// <domain>", 5 years, pathlen 0) signed by it, with fresh Ed25519 keys.
///
/// Both start an hour before `now` so nodes whose clocks lag a little accept
/// them at once.
pub fn create_ca(domain: &str, now: SystemTime) -> Result<CaMaterial, PkiError> {
    let domain = normalize_dns_name(domain)?;
    let not_before = backdated(now);

    let root_key = NodeKey::generate()?;
    let mut root = ca_params(
        &format!("cyphonic root CA {domain}"),
        &root_key,
        1,
        not_before,
        later(now, DAY * ROOT_LIFETIME_DAYS)?,
    )?;
    root.use_authority_key_identifier_extension = false;
    let root_cert = root
        .self_signed(&root_key)
        .map_err(|e| PkiError::Key(format!("cannot sign root CA: {e}")))?;

    let root_issuer = rcgen::Issuer::new(root, &root_key);
    let (intermediate_cert_pem, intermediate_key_pem) = sign_intermediate(
        &domain,
        &root_issuer,
        not_before,
        later(now, DAY * INTERMEDIATE_LIFETIME_DAYS)?,
    )?;

    Ok(CaMaterial {
        root_cert_pem: der_to_pem(root_cert.der()),
        root_key_pem: root_key.to_pem().to_string(),
        intermediate_cert_pem,
        intermediate_key_pem,
    })
}

/// A new AS intermediate CA for `domain` under an existing root, with a
/// fresh key: for an intermediate that nears its end, from a root kept
/// offline (`cyphonic cloud intermediate renew`). The first `CERTIFICATE`
/// block of `root_cert_pem` must be a CA certificate whose key is
/// `root_key_pem`. Valid from an hour before `now` for 5 years, but not
/// past the root.
///
/// Certificates the previous intermediate issued stay valid: they chain to
/// the same root, and nodes send their intermediate with their leaf.
pub fn create_intermediate(
    root_cert_pem: &str,
    root_key_pem: &str,
    domain: &str,
    now: SystemTime,
) -> Result<NewIntermediate, PkiError> {
    let domain = normalize_dns_name(domain)?;
    let root_der = crate::pem::pem_to_der_chain(root_cert_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Malformed("no root certificate".into()))?;
    let root_key = NodeKey::from_pem(root_key_pem)?;
    let (_, root) = X509Certificate::from_der(&root_der)
        .map_err(|e| PkiError::Malformed(format!("root certificate: {e}")))?;
    if !root.is_ca() {
        return Err(PkiError::Malformed(
            "root certificate is not a CA certificate".into(),
        ));
    }
    let root_public = ed25519_spki(root.public_key())
        .map_err(|why| PkiError::Malformed(format!("root certificate: {why}")))?;
    if root_public != root_key.public_key() {
        return Err(PkiError::Key(
            "the root key does not belong to the root certificate".into(),
        ));
    }
    let root_end = crate::validity::from_unix_secs(root.validity().not_after.timestamp());
    if root_end <= now {
        return Err(PkiError::InvalidRequest(
            "the root certificate has expired: make a new cloud (`cyphonic cloud init`)".into(),
        ));
    }
    let not_after = later(now, DAY * INTERMEDIATE_LIFETIME_DAYS)?.min(root_end);
    let root_issuer =
        rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(root_der.as_slice()), &root_key)
            .map_err(|e| PkiError::Malformed(format!("root certificate: {e}")))?;
    let (cert_pem, key_pem) = sign_intermediate(&domain, &root_issuer, backdated(now), not_after)?;
    Ok(NewIntermediate {
        cert_pem,
        key_pem,
        // As encoded: whole seconds.
        not_after: cert_period(backdated(now), not_after)?.1.system,
    })
}

/// What [`create_intermediate`] made. `Debug` omits the key.
#[derive(Clone)]
pub struct NewIntermediate {
    pub cert_pem: String,
    /// PKCS#8, PEM.
    pub key_pem: String,
    pub not_after: SystemTime,
}

/// The key is wiped on drop.
impl Drop for NewIntermediate {
    fn drop(&mut self) {
        self.key_pem.zeroize();
    }
}

impl ZeroizeOnDrop for NewIntermediate {}

impl fmt::Debug for NewIntermediate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewIntermediate")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The AS intermediate CA ("cyphonic AS intermediate CA <domain>", pathlen
/// 0) with a fresh key, signed by `root`.
fn sign_intermediate(
    domain: &str,
    root: &rcgen::Issuer<'_, &NodeKey>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(String, String), PkiError> {
    let intermediate_key = NodeKey::generate()?;
    let intermediate = ca_params(
        &format!("cyphonic AS intermediate CA {domain}"),
        &intermediate_key,
        0,
        not_before,
        not_after,
    )?;
    let intermediate_cert = intermediate
        .signed_by(&intermediate_key, root)
        .map_err(|e| PkiError::Key(format!("cannot sign intermediate CA: {e}")))?;
    Ok((
        der_to_pem(intermediate_cert.der()),
        intermediate_key.to_pem().to_string(),
    ))
}

/// Parameters shared by both CA certificates.
fn ca_params(
    common_name: &str,
    key: &NodeKey,
    path_len: u8,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let (nb, na) = cert_period(not_before, not_after)?;
    let mut p = CertificateParams::default();
    p.not_before = nb.encoded;
    p.not_after = na.encoded;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "cyphonic");
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, ca_key_id(key));
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// "key " + hex of the first bytes of SHA-256(public key).
fn ca_key_id(key: &NodeKey) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.public_key());
    let mut id = String::from("key ");
    for b in digest.as_ref().iter().take(CA_KEY_ID_LEN) {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// A certificate the AS just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The serial the caller chose (unique per AS database).
    pub serial: u64,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate alone, PEM. A TLS chain is this followed by
    /// [`Issuer::cert_pem`].
    pub cert_pem: String,
    /// Start of validity, truncated to whole seconds as encoded.
    pub not_before: SystemTime,
    /// End of validity, truncated to whole seconds as encoded.
    pub not_after: SystemTime,
}

/// The AS's issuing side: the intermediate certificate and its key.
///
/// Stateless apart from the key: the caller owns serial allocation and
/// validity policy, and records what was issued.
pub struct Issuer {
    cert_der: Vec<u8>,
    cert_pem: String,
    not_after: SystemTime,
    inner: rcgen::Issuer<'static, NodeKey>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads the intermediate. The first `CERTIFICATE` block of
    /// `intermediate_cert_pem` is the intermediate (a root appended after it
    /// is ignored). It must be a CA certificate with an Ed25519 key, and
    /// `intermediate_key_pem` must be that key: a mismatch would issue
    /// certificates nobody can verify.
    pub fn from_pem(
        intermediate_cert_pem: &str,
        intermediate_key_pem: &str,
    ) -> Result<Self, PkiError> {
        let cert_der = crate::pem::pem_to_der_chain(intermediate_cert_pem)?
            .into_iter()
            .next()
            // Invariant: pem_to_der_chain never returns an empty chain.
            .ok_or_else(|| PkiError::Malformed("no intermediate certificate".into()))?;
        let key = NodeKey::from_pem(intermediate_key_pem)?;

        let (rest, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| PkiError::Malformed(format!("intermediate certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::Malformed(
                "intermediate certificate: trailing data".into(),
            ));
        }
        if !cert.is_ca() {
            return Err(PkiError::Malformed(
                "intermediate certificate is not a CA certificate".into(),
            ));
        }
        let cert_key = ed25519_spki(cert.public_key())
            .map_err(|why| PkiError::Malformed(format!("intermediate certificate: {why}")))?;
        if cert_key != key.public_key() {
            return Err(PkiError::Key(
                "the intermediate key does not belong to the intermediate certificate".into(),
            ));
        }

        let not_after = crate::validity::from_unix_secs(cert.validity().not_after.timestamp());
        let inner =
            rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
                .map_err(|e| PkiError::Malformed(format!("intermediate certificate: {e}")))?;
        Ok(Self {
            cert_pem: der_to_pem(&cert_der),
            not_after,
            cert_der,
            inner,
        })
    }

    /// The intermediate certificate, PEM (one block).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The intermediate certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The end of the intermediate's validity: make a new one from the
    /// root before it (`create_intermediate`).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Verifies the CSR's self-signature, ignores any names and extensions
    /// in it, and issues a leaf for `fqdn`: CN = fqdn, dNSName SAN = fqdn,
    /// an iPAddress SAN for each of the node's virtual IPs `vips` (its peers
    /// check them in the tunnel handshake), key usage digitalSignature, EKU
    /// clientAuth only (so no TLS client that trusts our root takes a node
    /// for a server; our own legs between nodes check node certificates as
    /// such, [`crate::node_client_config`]), not a CA. The CSR's key must
    /// be Ed25519.
    ///
    /// `fqdn` is stored lowercase without a trailing dot. `serial` must not
    /// be 0 (RFC 5280 §4.1.2.2 wants a positive integer).
    pub fn issue_node(
        &self,
        csr_pem: &str,
        fqdn: &str,
        vips: &[IpAddr],
        serial: u64,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        // Cheap checks on our own inputs first, then the untrusted CSR.
        let fqdn = normalize_dns_name(fqdn)?;
        let (nb, na) = cert_period(not_before, not_after)?;
        check_serial(serial)?;
        let subject_key = csr_public_key(csr_pem)?;

        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from(serial));
        p.not_before = nb.encoded;
        p.not_after = na.encoded;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, fqdn.as_str());
        p.subject_alt_names = std::iter::once(dns_san(&fqdn)?)
            .chain(vips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)))
            .collect();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        self.sign(&p, &subject_key, serial, nb.system, na.system)
    }

    /// A TLS server certificate and a fresh key for the AS itself, for the
    /// given DNS names and IP addresses (at least one name in all), valid
    /// from an hour before `now` for a year. EKU serverAuth only, so it
    /// cannot pass as a node certificate. Returns the key as PKCS#8 PEM.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        serial: u64,
        now: SystemTime,
    ) -> Result<(IssuedCert, zeroize::Zeroizing<String>), PkiError> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(PkiError::InvalidRequest(
                "a server certificate needs at least one DNS name or IP address".into(),
            ));
        }
        check_serial(serial)?;
        let (nb, na) = cert_period(backdated(now), later(now, DAY * SERVER_LIFETIME_DAYS)?)?;
        let names = dns_names
            .iter()
            .map(|n| normalize_dns_name(n))
            .collect::<Result<Vec<_>, _>>()?;

        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from(serial));
        p.not_before = nb.encoded;
        p.not_after = na.encoded;
        p.distinguished_name = DistinguishedName::new();
        let cn = match (names.first(), ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => String::new(),
        };
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = names
            .iter()
            .map(|n| dns_san(n))
            .chain(ips.iter().map(|ip| Ok(rcgen::SanType::IpAddress(*ip))))
            .collect::<Result<Vec<_>, _>>()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;

        let key = NodeKey::generate()?;
        let cert = self.sign(&p, &key, serial, nb.system, na.system)?;
        Ok((cert, key.to_pem()))
    }

    fn sign(
        &self,
        params: &CertificateParams,
        subject_key: &impl rcgen::PublicKeyData,
        serial: u64,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        let cert = params
            .signed_by(subject_key, &self.inner)
            .map_err(|e| PkiError::Key(format!("cannot sign certificate: {e}")))?;
        let cert_der = cert.der().to_vec();
        Ok(IssuedCert {
            serial,
            cert_pem: der_to_pem(&cert_der),
            cert_der,
            not_before,
            not_after,
        })
    }
}

fn check_serial(serial: u64) -> Result<(), PkiError> {
    if serial == 0 {
        return Err(PkiError::InvalidRequest(
            "serial 0 is not allowed; serials are positive (RFC 5280 §4.1.2.2)".into(),
        ));
    }
    Ok(())
}

/// The Ed25519 public key a CSR asks a certificate for, once the CSR's
/// self-signature verifies (what [`Issuer::issue_node`] would certify).
pub fn csr_key(csr_pem: &str) -> Result<[u8; 32], PkiError> {
    csr_public_key(csr_pem).map(|k| k.0)
}

/// Parses a PKCS#10 CSR (RFC 2986), checks it is Ed25519 and self-signed,
/// and returns only its public key: names, attributes and extensions in it
/// are the requester's wishes and are not used.
fn csr_public_key(csr_pem: &str) -> Result<Ed25519PublicKey, PkiError> {
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(PkiError::BadCsr(format!(
            "{} bytes, more than the {MAX_CSR_PEM_LEN} allowed",
            csr_pem.len()
        )));
    }
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::BadCsr(format!("no CERTIFICATE REQUEST block: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| PkiError::BadCsr(format!("does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCsr("trailing data after the request".into()));
    }

    let info = &csr.certification_request_info;
    let key = ed25519_spki(&info.subject_pki).map_err(|why| PkiError::BadCsr(why.into()))?;
    if !is_ed25519_alg(&csr.signature_algorithm) {
        return Err(PkiError::BadCsr("not signed with Ed25519".into()));
    }
    let sig = &csr.signature_value;
    if sig.unused_bits != 0 {
        return Err(PkiError::BadCsr(
            "signature is not a whole number of bytes".into(),
        ));
    }
    UnparsedPublicKey::new(&ED25519, key)
        .verify(info.raw, &sig.data)
        .map_err(|_| PkiError::BadCsr("signature does not verify".into()))?;
    Ok(Ed25519PublicKey(key))
}

/// Ed25519 with the absent parameters RFC 8410 §3 requires.
fn is_ed25519_alg(alg: &AlgorithmIdentifier<'_>) -> bool {
    alg.algorithm == OID_SIG_ED25519 && alg.parameters.is_none()
}

/// The raw key of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4).
pub(crate) fn ed25519_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<[u8; 32], &'static str> {
    if !is_ed25519_alg(&spki.algorithm) {
        return Err("public key is not Ed25519");
    }
    if spki.subject_public_key.unused_bits != 0 {
        return Err("public key is not a whole number of bytes");
    }
    <[u8; 32]>::try_from(spki.subject_public_key.data.as_ref())
        .map_err(|_| "Ed25519 public key is not 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn issuer() -> (CaMaterial, Issuer) {
        let ca = create_ca("cyphonic.internal", now()).expect("create_ca");
        let issuer =
            Issuer::from_pem(&ca.intermediate_cert_pem, &ca.intermediate_key_pem).expect("issuer");
        (ca, issuer)
    }

    #[test]
    fn a_new_intermediate_from_the_root_issues_certificates_that_verify_beside_the_old_ones() {
        let (ca, old) = issuer();
        let made = create_intermediate(
            &ca.root_cert_pem,
            &ca.root_key_pem,
            "cyphonic.internal",
            now() + DAY * 1700,
        )
        .expect("new intermediate");
        let new = Issuer::from_pem(&made.cert_pem, &made.key_pem).expect("issuer");
        assert_eq!(new.not_after(), made.not_after);
        assert_ne!(new.cert_der(), old.cert_der());
        let verifier = crate::Verifier::from_pem(&ca.root_cert_pem).expect("verifier");
        let at = now() + DAY * 1701;
        for (issuer, serial) in [(&old, 1), (&new, 2)] {
            let leaf = NodeKey::generate().expect("key");
            let csr = leaf.csr_pem("n1.cyphonic.internal").expect("csr");
            let cert = issuer
                .issue_node(
                    &csr,
                    "n1.cyphonic.internal",
                    &[],
                    serial,
                    at - DAY,
                    at + DAY,
                )
                .expect("issued");
            verifier
                .verify_node(
                    &[cert.cert_der, issuer.cert_der().to_vec()],
                    Some("n1.cyphonic.internal"),
                    at,
                )
                .expect("chain verifies");
        }
        // Late in the root's life: not past the root's own end.
        let late = create_intermediate(
            &ca.root_cert_pem,
            &ca.root_key_pem,
            "cyphonic.internal",
            now() + DAY * 3000,
        )
        .expect("late intermediate");
        let late = &crate::pem_to_der_chain(&late.cert_pem).expect("pem")[0];
        let (_, inter) = X509Certificate::from_der(late).expect("parses");
        let root_der = &crate::pem_to_der_chain(&ca.root_cert_pem).expect("pem")[0];
        let (_, root) = X509Certificate::from_der(root_der).expect("root parses");
        assert_eq!(inter.validity().not_after, root.validity().not_after);
        assert_eq!(inter.issuer(), root.subject());
    }

    #[test]
    fn a_new_intermediate_needs_the_roots_own_key() {
        let (ca, _) = issuer();
        let other = create_ca("cyphonic.internal", now()).expect("create_ca");
        let err = create_intermediate(
            &ca.root_cert_pem,
            &other.root_key_pem,
            "cyphonic.internal",
            now(),
        )
        .expect_err("a foreign key");
        assert!(err.to_string().contains("does not belong"), "{err}");
        // The intermediate's certificate is no root to sign with.
        assert!(create_intermediate(
            &ca.intermediate_cert_pem,
            &ca.root_key_pem,
            "cyphonic.internal",
            now()
        )
        .is_err());
    }

    #[test]
    fn ca_certificates_have_the_promised_shape() {
        let (ca, issuer) = issuer();
        let root_der = &crate::pem_to_der_chain(&ca.root_cert_pem).expect("pem")[0];
        let (_, root) = X509Certificate::from_der(root_der).expect("root parses");
        let (_, inter) = X509Certificate::from_der(issuer.cert_der()).expect("intermediate parses");

        let root_cn = root.subject().iter_common_name().next().expect("CN");
        assert_eq!(
            root_cn.as_str().expect("utf8"),
            "cyphonic root CA cyphonic.internal"
        );
        let bc = root
            .basic_constraints()
            .expect("ok")
            .expect("present")
            .value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(1));
        let bc = inter
            .basic_constraints()
            .expect("ok")
            .expect("present")
            .value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        assert_eq!(inter.issuer(), root.subject());

        let years = |c: &X509Certificate<'_>| {
            (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86400 / 365
        };
        assert_eq!(years(&root), 10);
        assert_eq!(years(&inter), 5);
    }

    #[test]
    fn issuer_refuses_a_key_that_is_not_its_own() {
        let (ca, _) = issuer();
        let err = Issuer::from_pem(&ca.intermediate_cert_pem, &ca.root_key_pem).unwrap_err();
        assert!(matches!(err, PkiError::Key(_)), "{err}");
    }

    #[test]
    fn issuer_refuses_a_leaf_as_intermediate() {
        let (_, issuer) = issuer();
        let key = NodeKey::generate().expect("keygen");
        let leaf = issuer
            .issue_node(
                &key.csr_pem("n1.cyphonic.internal").expect("csr"),
                "n1.cyphonic.internal",
                &[],
                1,
                now(),
                now() + DAY,
            )
            .expect("issue");
        let err = Issuer::from_pem(&leaf.cert_pem, &key.to_pem()).unwrap_err();
        assert!(matches!(err, PkiError::Malformed(_)), "{err}");
    }

    #[test]
    fn leaf_uses_the_assigned_name_not_the_requested_one() {
        let (_, issuer) = issuer();
        let key = NodeKey::generate().expect("keygen");
        let csr = key.csr_pem("evil.example.com").expect("csr");
        let leaf = issuer
            .issue_node(
                &csr,
                "N7.Cyphonic.Internal.",
                &[
                    "100.64.0.7".parse().expect("ip"),
                    "fd7a::7".parse().expect("ip"),
                ],
                7,
                now(),
                now() + DAY,
            )
            .expect("issue");
        let (_, cert) = X509Certificate::from_der(&leaf.cert_der).expect("parses");
        let cn = cert.subject().iter_common_name().next().expect("CN");
        assert_eq!(cn.as_str().expect("utf8"), "n7.cyphonic.internal");
        let san = cert
            .subject_alternative_name()
            .expect("ok")
            .expect("present")
            .value;
        assert_eq!(
            san.general_names,
            vec![
                x509_parser::extensions::GeneralName::DNSName("n7.cyphonic.internal"),
                x509_parser::extensions::GeneralName::IPAddress(&[100, 64, 0, 7]),
                x509_parser::extensions::GeneralName::IPAddress(
                    &"fd7a::7"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("ip")
                        .octets()
                ),
            ]
        );
        assert!(!cert.is_ca());
        let eku = cert
            .extended_key_usage()
            .expect("ok")
            .expect("present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
        let ku = cert.key_usage().expect("ok").expect("present").value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert_eq!(ed25519_spki(cert.public_key()), Ok(key.public_key()));
    }

    #[test]
    fn refuses_bad_requests() {
        let (_, issuer) = issuer();
        let key = NodeKey::generate().expect("keygen");
        let csr = key.csr_pem("n1.cyphonic.internal").expect("csr");
        let n = "n1.cyphonic.internal";
        for (serial, nb, na, name) in [
            (0, now(), now() + DAY, n),
            (1, now(), now(), n),
            (1, now() + DAY, now(), n),
            (1, now(), now() + DAY, "*.cyphonic.internal"),
        ] {
            assert!(matches!(
                issuer.issue_node(&csr, name, &[], serial, nb, na),
                Err(PkiError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn csr_with_bad_signature_is_refused() {
        let (_, issuer) = issuer();
        let key = NodeKey::generate().expect("keygen");
        let csr = key.csr_pem("n1.cyphonic.internal").expect("csr");
        let mut der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                .expect("pem")
                .as_ref()
                .to_vec();
        // The signature is the last 64 bytes; flip a bit in it.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = crate::pem::encode("CERTIFICATE REQUEST", &der);
        let err = issuer
            .issue_node(
                &tampered,
                "n1.cyphonic.internal",
                &[],
                1,
                now(),
                now() + DAY,
            )
            .unwrap_err();
        assert_eq!(err, PkiError::BadCsr("signature does not verify".into()));
    }

    #[test]
    fn csr_for_a_non_ed25519_key_is_refused() {
        let (_, issuer) = issuer();
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let csr = CertificateParams::new(vec!["n1.cyphonic.internal".to_string()])
            .expect("params")
            .serialize_request(&p256)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = issuer
            .issue_node(&csr, "n1.cyphonic.internal", &[], 1, now(), now() + DAY)
            .unwrap_err();
        assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
    }

    #[test]
    fn garbage_csr_is_refused() {
        let (_, issuer) = issuer();
        for csr in [
            String::new(),
            "hello".to_string(),
            crate::pem::encode("CERTIFICATE REQUEST", &[0x30, 0x80, 0xff]),
            "A".repeat(MAX_CSR_PEM_LEN + 1),
        ] {
            assert!(matches!(
                issuer.issue_node(&csr, "n1.cyphonic.internal", &[], 1, now(), now() + DAY),
                Err(PkiError::BadCsr(_))
            ));
        }
    }

    #[test]
    fn server_certificate_carries_names_and_ips() {
        let (_, issuer) = issuer();
        let ip: IpAddr = "192.0.2.10".parse().expect("ip");
        let (cert, key_pem) = issuer
            .issue_server(&["as.cyphonic.internal".into()], &[ip], 2, now())
            .expect("issue");
        let key = NodeKey::from_pem(&key_pem).expect("key");
        let (_, parsed) = X509Certificate::from_der(&cert.cert_der).expect("parses");
        assert_eq!(ed25519_spki(parsed.public_key()), Ok(key.public_key()));
        let san = parsed
            .subject_alternative_name()
            .expect("ok")
            .expect("present")
            .value;
        let names: Vec<String> = san.general_names.iter().map(|g| format!("{g}")).collect();
        assert_eq!(names.len(), 2);
        let eku = parsed
            .extended_key_usage()
            .expect("ok")
            .expect("present")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(cert.not_before < now() && cert.not_after > now() + DAY * 364);
        assert!(matches!(
            issuer.issue_server(&[], &[], 3, now()),
            Err(PkiError::InvalidRequest(_))
        ));
    }

    #[test]
    fn serials_wider_than_64_bits_are_malformed_on_read() {
        let (ca, issuer) = issuer();
        let key = NodeKey::generate().expect("keygen");
        let mut p =
            CertificateParams::new(vec!["n1.cyphonic.internal".to_string()]).expect("params");
        p.not_before = time::OffsetDateTime::from_unix_timestamp(1_749_000_000).expect("t");
        p.not_after = time::OffsetDateTime::from_unix_timestamp(1_751_000_000).expect("t");
        p.serial_number = Some(SerialNumber::from(vec![0x01; 9]));
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer.inner).expect("sign");
        let verifier = crate::Verifier::from_pem(&ca.root_cert_pem).expect("verifier");
        let chain = vec![cert.der().to_vec(), issuer.cert_der().to_vec()];
        let err = verifier.verify_node(&chain, None, now()).unwrap_err();
        assert!(matches!(err, PkiError::Malformed(_)), "{err}");
        // The same certificate with an 8-byte serial is fine.
        p.serial_number = Some(SerialNumber::from(vec![0x01; 8]));
        let cert = p.signed_by(&key, &issuer.inner).expect("sign");
        let chain = vec![cert.der().to_vec(), issuer.cert_der().to_vec()];
        let v = verifier.verify_node(&chain, None, now()).expect("verifies");
        assert_eq!(v.serial, 0x0101_0101_0101_0101);
    }

    #[test]
    fn issuer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Issuer>();
        assert_send_sync::<NodeKey>();
        assert_send_sync::<crate::Verifier>();
    }
}
