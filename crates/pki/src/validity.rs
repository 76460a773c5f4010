//! Conversions between `SystemTime` (the caller's clock), X.509 validity
//! times (whole seconds, years 1950–9999) and webpki's `UnixTime`.
//!
//! Every conversion is checked: `time`'s own `From<SystemTime>` panics on
//! overflow, and times reach us from callers and from certificates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;
use time::OffsetDateTime;

use crate::PkiError;

/// 9999-12-31T23:59:59Z, the last instant X.509 GeneralizedTime can express
/// (RFC 5280 §4.1.2.5).
const LAST_CERT_SECOND: u64 = 253_402_300_799;

/// How far back issued certificates start before "now", so that a peer whose
/// clock lags ours a little still accepts a fresh certificate.
pub(crate) const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// One day, for validity periods.
pub(crate) const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A validity bound as rcgen writes it, plus the same instant as a
/// `SystemTime` truncated to whole seconds, which is what a reader of the
/// certificate will see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertTime {
    pub(crate) encoded: OffsetDateTime,
    pub(crate) system: SystemTime,
}

/// Checks that `t` can be written into a certificate and converts it.
///
/// Times before 1970 are refused too: no cyphonic certificate needs them,
/// and they only arise from a broken clock.
pub(crate) fn cert_time(t: SystemTime, what: &str) -> Result<CertTime, PkiError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::InvalidRequest(format!("{what} is before 1970")))?
        .as_secs();
    if secs > LAST_CERT_SECOND {
        return Err(PkiError::InvalidRequest(format!(
            "{what} is after 9999-12-31, which X.509 cannot express"
        )));
    }
    // Invariant: secs <= LAST_CERT_SECOND, far inside i64 and inside the
    // range OffsetDateTime accepts, so neither conversion can fail.
    let encoded = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| PkiError::InvalidRequest(format!("{what} is out of range")))?;
    let system = UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| PkiError::InvalidRequest(format!("{what} is out of range")))?;
    Ok(CertTime { encoded, system })
}

/// Validity period `[not_before, not_after]`, both checked, in order.
pub(crate) fn cert_period(
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(CertTime, CertTime), PkiError> {
    let nb = cert_time(not_before, "not_before")?;
    let na = cert_time(not_after, "not_after")?;
    if na.system <= nb.system {
        return Err(PkiError::InvalidRequest(
            "not_after must be later than not_before".into(),
        ));
    }
    Ok((nb, na))
}

/// `now - BACKDATE`, clamped to the epoch.
pub(crate) fn backdated(now: SystemTime) -> SystemTime {
    now.checked_sub(BACKDATE)
        .filter(|t| *t >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH)
}

/// `now + d`, or an `InvalidRequest` if that overflows the platform clock.
pub(crate) fn later(now: SystemTime, d: Duration) -> Result<SystemTime, PkiError> {
    now.checked_add(d)
        .ok_or_else(|| PkiError::InvalidRequest("validity period overflows the clock".into()))
}

/// The caller's clock as webpki wants it. A clock before 1970 becomes the
/// epoch, at which every cyphonic certificate is not yet valid.
pub(crate) fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// webpki's time back into a `SystemTime`.
pub(crate) fn from_unix_time(t: UnixTime) -> SystemTime {
    from_unix_secs(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds since the epoch, as x509-parser reports certificate times, into a
/// `SystemTime`. Saturates instead of panicking on values no certificate
/// can hold.
pub(crate) fn from_unix_secs(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_time_truncates_to_seconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        let c = cert_time(t, "t").expect("in range");
        assert_eq!(c.system, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(c.encoded.unix_timestamp(), 1_700_000_000);
    }

    #[test]
    fn cert_time_refuses_what_x509_cannot_hold() {
        let too_late = UNIX_EPOCH + Duration::from_secs(LAST_CERT_SECOND + 1);
        assert!(matches!(
            cert_time(too_late, "t"),
            Err(PkiError::InvalidRequest(_))
        ));
        assert!(cert_time(UNIX_EPOCH + Duration::from_secs(LAST_CERT_SECOND), "t").is_ok());
    }

    #[test]
    fn period_must_be_ordered() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(matches!(
            cert_period(t, t),
            Err(PkiError::InvalidRequest(_))
        ));
        assert!(cert_period(t, t + DAY).is_ok());
    }

    #[test]
    fn unix_round_trip() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(from_unix_time(unix_time(t)), t);
        assert_eq!(from_unix_secs(-5), UNIX_EPOCH - Duration::from_secs(5));
    }
}
