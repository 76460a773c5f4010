//! PEM in and out (RFC 7468).
//!
//! Reading uses rustls-pki-types' parser, which the TLS side uses as well,
//! so a file one side accepts the other accepts too. pki-types has no
//! encoder, hence the small writer here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::PkiError;

/// Most certificates a chain file may hold. Ours hold two (node or server
/// certificate, intermediate), perhaps three with the root; the bound keeps
/// a hostile file from costing more than that.
pub(crate) const MAX_CHAIN_LEN: usize = 4;

/// Every `CERTIFICATE` block of `pem`, in order, as DER.
///
/// Other block kinds (keys, CSRs) are skipped, so a combined file works.
/// No certificate at all, more than [`MAX_CHAIN_LEN`], or a block that does
/// not decode is `Malformed`. The DER inside is not parsed here.
pub fn pem_to_der_chain(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::Malformed(format!("certificate PEM: {e}")))?;
        if chain.len() == MAX_CHAIN_LEN {
            return Err(PkiError::Malformed(format!(
                "more than {MAX_CHAIN_LEN} certificates in one chain"
            )));
        }
        chain.push(cert.as_ref().to_vec());
    }
    if chain.is_empty() {
        return Err(PkiError::Malformed("no CERTIFICATE block in PEM".into()));
    }
    Ok(chain)
}

/// One DER certificate as a `CERTIFICATE` PEM block, with a final newline so
/// blocks can be concatenated into a chain.
pub fn der_to_pem(der: &[u8]) -> String {
    encode("CERTIFICATE", der)
}

/// [`encode`] for a private key: the result and the base64 on the way
/// are wiped when dropped.
pub(crate) fn encode_secret(label: &str, der: &[u8]) -> zeroize::Zeroizing<String> {
    let mut b64 = zeroize::Zeroizing::new(vec![0u8; der.len().div_ceil(3) * 4]);
    // Invariant: the buffer has exactly the padded base64 length.
    let n = STANDARD
        .encode_slice(der, &mut b64[..])
        .expect("base64 buffer of the padded length");
    wrap(label, &b64[..n])
}

/// RFC 7468 strict encoding: 64-column base64 lines, LF line ends.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = wrap(label, b64.as_bytes());
    std::mem::take(&mut *out)
}

/// PEM armor around base64 `b64`, 64 characters a line.
fn wrap(label: &str, b64: &[u8]) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::with_capacity(
        b64.len() + b64.len() / 64 + 2 * label.len() + 40,
    ));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so 64-byte chunks are whole characters.
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_and_skips_other_blocks() {
        let a = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        let b: Vec<u8> = (0..=255).collect();
        let pem = format!(
            "{}{}{}",
            der_to_pem(&a),
            encode("PRIVATE KEY", &[1, 2, 3]),
            der_to_pem(&b)
        );
        assert_eq!(pem_to_der_chain(&pem).expect("valid PEM"), vec![a, b]);
    }

    #[test]
    fn lines_are_64_columns() {
        let pem = der_to_pem(&[0u8; 100]);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
    }

    #[test]
    fn refuses_empty_garbage_and_long_chains() {
        assert!(matches!(pem_to_der_chain(""), Err(PkiError::Malformed(_))));
        assert!(matches!(
            pem_to_der_chain("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            Err(PkiError::Malformed(_))
        ));
        let five = der_to_pem(&[1]).repeat(MAX_CHAIN_LEN + 1);
        assert!(matches!(
            pem_to_der_chain(&five),
            Err(PkiError::Malformed(_))
        ));
    }
}
