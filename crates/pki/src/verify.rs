//! Verifying node certificates against the network's root.
//!
//! rustls-webpki decides whether the chain is trustworthy (path to the root,
//! signatures, validity of every certificate, CA constraints, EKU).
//! x509-parser only reads fields out of a leaf webpki has accepted, so a
//! parser quirk cannot turn into a trust decision.

use std::net::IpAddr;
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::ed25519_spki;
use crate::names::comparable;
use crate::pem::MAX_CHAIN_LEN;
use crate::validity::{from_unix_secs, from_unix_time, unix_time};
use crate::PkiError;

/// The only signature algorithm our certificates use. Refusing the rest
/// keeps RSA and ECDSA verification code off the attack surface.
pub(crate) static SUPPORTED_SIG_ALGS: &[&dyn SignatureVerificationAlgorithm] =
    &[webpki::ring::ED25519];

/// What a verified node certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNode {
    /// The node's name (its dNSName SAN, lowercase, no trailing dot).
    pub fqdn: String,
    /// The certificate serial, for revocation checks and logs.
    pub serial: u64,
    /// When the certificate expires; a session should not outlive it.
    pub not_after: SystemTime,
    /// The node's raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// The node's virtual IPs (its iPAddress SANs), in certificate order.
    pub vips: Vec<IpAddr>,
}

/// Verifies node certificate chains against our root. Cheap to clone: the
/// root is the only state.
#[derive(Clone)]
pub struct Verifier {
    root_der: Vec<u8>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("root_der_len", &self.root_der.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Trusts exactly `root_cert_der`, which must be a CA certificate.
    pub fn new(root_cert_der: Vec<u8>) -> Result<Self, PkiError> {
        let (rest, root) = X509Certificate::from_der(&root_cert_der)
            .map_err(|e| PkiError::Malformed(format!("root certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::Malformed(
                "root certificate: trailing data".into(),
            ));
        }
        if !root.is_ca() {
            return Err(PkiError::Malformed(
                "root certificate is not a CA certificate".into(),
            ));
        }
        let anchor =
            webpki::anchor_from_trusted_cert(&CertificateDer::from(root_cert_der.as_slice()))
                .map_err(|e| PkiError::Malformed(format!("root certificate: {e}")))?
                .to_owned();
        Ok(Self {
            root_der: root_cert_der,
            anchors: vec![anchor],
        })
    }

    /// [`Verifier::new`] from the first `CERTIFICATE` block of a PEM file.
    pub fn from_pem(root_cert_pem: &str) -> Result<Self, PkiError> {
        let root = crate::pem::pem_to_der_chain(root_cert_pem)?
            .into_iter()
            .next()
            // Invariant: pem_to_der_chain never returns an empty chain.
            .ok_or_else(|| PkiError::Malformed("no root certificate".into()))?;
        Self::new(root)
    }

    /// The trusted root, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// Verifies `chain` = `[leaf, intermediate...]` (DER) at `now`:
    ///
    /// 1. the leaf chains to the root (else `UnknownIssuer`, or
    ///    `BadSignature` for a tampered certificate);
    /// 2. every certificate on the path is valid at `now` (else `Expired` /
    ///    `NotYetValid` with that certificate's date);
    /// 3. the leaf is not a CA and its EKU, if present, allows clientAuth
    ///    (else `Rejected`);
    /// 4. if `expected_fqdn` is given, one of the leaf's dNSName SANs equals
    ///    it, ignoring case and a trailing dot (else `NameMismatch`).
    ///
    /// Returns the leaf's name, serial, expiry and key. Serials longer than
    /// 64 bits are `Malformed`: we never issue them.
    pub fn verify_node(
        &self,
        chain: &[Vec<u8>],
        expected_fqdn: Option<&str>,
        now: SystemTime,
    ) -> Result<VerifiedNode, PkiError> {
        let (leaf_der, intermediates) = chain
            .split_first()
            .ok_or_else(|| PkiError::Malformed("empty certificate chain".into()))?;
        if chain.len() > MAX_CHAIN_LEN {
            return Err(PkiError::Malformed(format!(
                "{} certificates in chain, at most {MAX_CHAIN_LEN} allowed",
                chain.len()
            )));
        }

        let leaf = CertificateDer::from(leaf_der.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let end_entity = EndEntityCert::try_from(&leaf).map_err(map_webpki_error)?;
        end_entity
            .verify_for_usage(
                SUPPORTED_SIG_ALGS,
                &self.anchors,
                &intermediates,
                unix_time(now),
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(map_webpki_error)?;

        let fields = read_leaf(leaf_der)?;
        let fqdn = match expected_fqdn {
            Some(expected) => {
                let want = comparable(expected);
                fields
                    .dns_names
                    .iter()
                    .find(|n| comparable(n) == want)
                    .map(|n| comparable(n))
                    .ok_or_else(|| PkiError::NameMismatch {
                        expected: expected.to_string(),
                        found: fields.dns_names.clone(),
                    })?
            }
            None => fields
                .dns_names
                .first()
                .map(|n| comparable(n))
                .ok_or_else(|| PkiError::Malformed("node certificate has no DNS name".into()))?,
        };
        Ok(VerifiedNode {
            fqdn,
            serial: fields.serial,
            not_after: fields.not_after,
            public_key: fields.public_key,
            vips: fields.ips,
        })
    }
}

/// The leaf fields we report, read after webpki accepted the chain.
struct LeafFields {
    serial: u64,
    not_after: SystemTime,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    public_key: [u8; 32],
}

fn read_leaf(der: &[u8]) -> Result<LeafFields, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Malformed(format!("leaf certificate: {e}")))?;
    let serial = serial_from_der_integer(cert.raw_serial())?;
    let not_after = from_unix_secs(cert.validity().not_after.timestamp());
    let names: &[GeneralName<'_>] = match cert.subject_alternative_name() {
        Ok(Some(san)) => &san.value.general_names,
        Ok(None) => &[],
        Err(e) => return Err(PkiError::Malformed(format!("leaf subjectAltName: {e}"))),
    };
    let dns_names = names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(n) => Some((*n).to_string()),
            _ => None,
        })
        .collect();
    let mut ips = Vec::new();
    for g in names {
        if let GeneralName::IPAddress(raw) = g {
            ips.push(ip_from_san(raw)?);
        }
    }
    let public_key = ed25519_spki(cert.public_key())
        .map_err(|why| PkiError::Malformed(format!("leaf certificate: {why}")))?;
    Ok(LeafFields {
        serial,
        not_after,
        dns_names,
        ips,
        public_key,
    })
}

/// An iPAddress SAN's octets (RFC 5280 §4.2.1.6: 4 or 16 of them).
fn ip_from_san(raw: &[u8]) -> Result<IpAddr, PkiError> {
    if let Ok(v4) = <[u8; 4]>::try_from(raw) {
        return Ok(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(raw)
        .map(IpAddr::from)
        .map_err(|_| PkiError::Malformed(format!("iPAddress SAN of {} octets", raw.len())))
}

/// The content octets of a DER INTEGER serial as a `u64`.
///
/// DER adds one leading 0x00 when the top bit of a positive value is set;
/// that byte is dropped. Negative serials and serials wider than 64 bits
/// are `Malformed`: the AS issues neither.
pub(crate) fn serial_from_der_integer(raw: &[u8]) -> Result<u64, PkiError> {
    let Some(&first) = raw.first() else {
        return Err(PkiError::Malformed("empty serial number".into()));
    };
    if first & 0x80 != 0 {
        return Err(PkiError::Malformed("negative serial number".into()));
    }
    let digits = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => raw,
    };
    if digits.len() > 8 {
        return Err(PkiError::Malformed(format!(
            "serial number of {} bytes; at most 8 are accepted",
            digits.len()
        )));
    }
    Ok(digits
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// webpki's verdict in our vocabulary.
pub(crate) fn map_webpki_error(e: webpki::Error) -> PkiError {
    use webpki::Error as W;
    match e {
        W::UnknownIssuer => PkiError::UnknownIssuer,
        W::CertExpired { not_after, .. } => PkiError::Expired {
            not_after: from_unix_time(not_after),
        },
        W::CertNotValidYet { not_before, .. } => PkiError::NotYetValid {
            not_before: from_unix_time(not_before),
        },
        W::InvalidSignatureForPublicKey | W::SignatureAlgorithmMismatch => PkiError::BadSignature,
        W::BadDer
        | W::BadDerTime
        | W::TrailingData(_)
        | W::MalformedExtensions
        | W::ExtensionValueInvalid
        | W::InvalidSerialNumber
        | W::InvalidCertValidity
        | W::MalformedDnsIdentifier
        | W::MalformedNameConstraint
        | W::EmptyEkuExtension => PkiError::Malformed(format!("certificate: {e}")),
        other => PkiError::Rejected(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_decoding() {
        assert_eq!(serial_from_der_integer(&[0x01]), Ok(1));
        assert_eq!(serial_from_der_integer(&[0x00]), Ok(0));
        assert_eq!(
            serial_from_der_integer(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Ok(u64::MAX)
        );
        assert_eq!(serial_from_der_integer(&[0x12, 0x34]), Ok(0x1234));
        assert!(matches!(
            serial_from_der_integer(&[0x01; 9]),
            Err(PkiError::Malformed(_))
        ));
        assert!(matches!(
            serial_from_der_integer(&[0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(PkiError::Malformed(_))
        ));
        assert!(matches!(
            serial_from_der_integer(&[0x80]),
            Err(PkiError::Malformed(_))
        ));
        assert!(matches!(
            serial_from_der_integer(&[]),
            Err(PkiError::Malformed(_))
        ));
    }
}
