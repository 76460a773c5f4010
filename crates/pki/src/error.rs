//! The one error type of this crate.
//!
//! Each variant says what an operator (or the peer, via the caller) needs to
//! know to fix the problem: which name was expected, when a certificate
//! expired. Variants carry owned data only, so errors can cross threads and
//! outlive the input that caused them.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything that can go wrong issuing, reading or verifying certificates,
/// keys, TLS configurations and password hashes.
///
/// `#[non_exhaustive]`: new failure kinds may be added as the PKI grows
/// (revocation, for one), so matches need a catch-all arm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The chain does not lead to this network's root CA: the certificate
    /// comes from another cyphonic installation or from no CA at all.
    #[error("certificate was not issued by this network's CA (unknown issuer)")]
    UnknownIssuer,

    /// The certificate is valid but names another node.
    #[error("{}", NameMismatch { expected, found })]
    NameMismatch {
        /// The name the caller asked for.
        expected: String,
        /// The dNSName SANs the certificate does carry.
        found: Vec<String>,
    },

    /// The certificate (or one above it in the chain) expired.
    #[error("certificate expired at {}", Timestamp(*not_after))]
    Expired {
        /// The `notAfter` of the expired certificate.
        not_after: SystemTime,
    },

    /// The certificate (or one above it in the chain) is not valid yet; often
    /// a clock that is behind.
    #[error("certificate is not valid before {}; is the clock right?", Timestamp(*not_before))]
    NotYetValid {
        /// The `notBefore` of the certificate.
        not_before: SystemTime,
    },

    /// A signature does not verify: a tampered certificate, a certificate
    /// signed by another CA using our CA's name, or a bad Ed25519 signature.
    #[error("signature does not verify")]
    BadSignature,

    /// A certificate signing request that cannot be accepted.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),

    /// Input that does not parse or breaks a structural rule (PEM, DER,
    /// serial numbers, missing names).
    #[error("malformed input: {0}")]
    Malformed(String),

    /// A private key that cannot be read, generated or used.
    #[error("private key: {0}")]
    Key(String),

    /// A TLS configuration that rustls refuses.
    #[error("TLS configuration: {0}")]
    Tls(String),

    /// A well-formed chain that policy forbids for this use: a CA or AS
    /// server certificate presented as a node certificate, a path-length
    /// violation, an unsupported algorithm.
    #[error("certificate rejected: {0}")]
    Rejected(String),

    /// The issuing side was asked for something it must not produce: an
    /// invalid DNS name, serial 0, an empty or inverted validity period.
    #[error("cannot issue certificate: {0}")]
    InvalidRequest(String),

    /// Argon2 refused to hash a password.
    #[error("password hashing: {0}")]
    Password(String),
}

/// Says which names a certificate carries and which one was wanted.
struct NameMismatch<'a> {
    expected: &'a str,
    found: &'a [String],
}

impl fmt::Display for NameMismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.found.is_empty() {
            write!(
                f,
                "certificate carries no DNS name, expected {}",
                self.expected
            )
        } else {
            write!(
                f,
                "certificate is for {}, expected {}",
                self.found.join(", "),
                self.expected
            )
        }
    }
}

/// Shows a time as UTC calendar time; operators compare it with `date -u`.
///
/// Hand-written because the workspace's `time` has no `formatting` feature,
/// and a log line is no reason to add one.
pub(crate) struct Timestamp(pub(crate) SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).ok(),
            Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
        };
        match secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok()) {
            Some(t) => write!(
                f,
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            None => write!(f, "{:?}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn name_mismatch_reads_like_a_sentence() {
        let e = PkiError::NameMismatch {
            expected: "n2.cyphonic.internal".into(),
            found: vec!["n3.cyphonic.internal".into()],
        };
        assert_eq!(
            e.to_string(),
            "certificate is for n3.cyphonic.internal, expected n2.cyphonic.internal"
        );
        let e = PkiError::NameMismatch {
            expected: "n2.cyphonic.internal".into(),
            found: vec![],
        };
        assert_eq!(
            e.to_string(),
            "certificate carries no DNS name, expected n2.cyphonic.internal"
        );
    }

    #[test]
    fn expiry_shows_calendar_time() {
        let e = PkiError::Expired {
            not_after: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        assert_eq!(
            e.to_string(),
            "certificate expired at 2023-11-14 22:13:20 UTC"
        );
    }
}
