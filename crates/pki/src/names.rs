//! DNS names as cyphonic certifies and compares them.
//!
//! DNS names are case-insensitive and a trailing dot only marks them
//! absolute (RFC 4343, RFC 1034 §3.1), so both are normalized away: names
//! are stored lowercase without the dot, and compared the same way.

use rustls_pki_types::DnsName;

use crate::PkiError;

/// Lowercases `name`, drops one trailing dot, and checks it is a DNS name
/// webpki will match: LDH labels, no wildcard, not an IP address.
pub(crate) fn normalize_dns_name(name: &str) -> Result<String, PkiError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let lower = trimmed.to_ascii_lowercase();
    if lower.contains('*') {
        return Err(PkiError::InvalidRequest(format!(
            "wildcard names are not issued: {name:?}"
        )));
    }
    DnsName::try_from(lower.as_str())
        .map_err(|_| PkiError::InvalidRequest(format!("not a valid DNS name: {name:?}")))?;
    Ok(lower)
}

/// The normalized form used for comparisons, without validation: the value
/// comes from a certificate webpki already parsed, or from the caller.
pub(crate) fn comparable(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A dNSName SAN for an already normalized name.
pub(crate) fn dns_san(name: &str) -> Result<rcgen::SanType, PkiError> {
    let ia5 = rcgen::string::Ia5String::try_from(name)
        .map_err(|e| PkiError::InvalidRequest(format!("DNS name {name:?}: {e}")))?;
    Ok(rcgen::SanType::DnsName(ia5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_and_trailing_dot() {
        assert_eq!(
            normalize_dns_name("N1.Cyphonic.Internal.").expect("valid"),
            "n1.cyphonic.internal"
        );
        assert_eq!(comparable("N1.Cyphonic.Internal."), "n1.cyphonic.internal");
        // Single-label names are fine: the AS certifies "localhost" for itself.
        assert_eq!(normalize_dns_name("localhost").expect("valid"), "localhost");
    }

    #[test]
    fn refuses_non_names() {
        for bad in [
            "",
            ".",
            "*.cyphonic.internal",
            "a b.internal",
            "10.0.0.1",
            "-x.internal",
        ] {
            assert!(
                matches!(normalize_dns_name(bad), Err(PkiError::InvalidRequest(_))),
                "{bad:?} accepted"
            );
        }
    }
}
