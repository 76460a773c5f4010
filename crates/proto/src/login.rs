//! The Login protocol between a node and the AS: one JSON object per line
//! over TLS, each request answered by one response.
//!
//! ```text
//! node -> AS  {"type":"enroll","device_id":"n1","password":"..","csr_pem":".."}
//! AS -> node  {"type":"enrolled","fqdn":"n1.cyphonic.internal","cert_chain_pem":"..","root_pem":".."}
//! node -> AS  {"type":"login"}            (over TLS with the node's certificate)
//! adapter -> AS {"type":"enroll_general","device_id":"camera","csr_pem":".."}
//!                                          (over TLS with the adapter's certificate)
//! AS -> node  {"type":"login_ok","session_id":..,"common_key":"<hex>",..}
//! node -> AS  {"type":"renew","csr_pem":".."}   (over TLS with the node's certificate)
//! AS -> node  {"type":"renewed","fqdn":"n1.cyphonic.internal","cert_chain_pem":".."}
//! AS -> node  {"type":"error","code":"bad_credentials","message":".."}
//! ```
//!
//! Unknown fields are ignored, so either side may add optional ones.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The longest line either side accepts, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// ALPN of the Login flow where it shares TCP 443 with TLS-over-TCP legs
/// (`cyphonic-dgram/1`). The AS's own port needs none.
pub const AS_ALPN: &[u8] = b"cyphonic-as/1";

/// How far the AS dates a node certificate back (its notBefore), so that
/// nodes whose clocks run behind accept it at once. A certificate's
/// validity proper, the one renewal is scheduled by, starts this long
/// after its notBefore (`docs/protocol.md` §2.1).
pub const CERT_BACKDATE: Duration = Duration::from_secs(300);

/// The moments of a node certificate's life that renewal goes by
/// (`docs/protocol.md` §3.3), from its notBefore and notAfter: when it was
/// issued (notBefore + [`CERT_BACKDATE`], or notBefore for a certificate
/// that is not backdated as ours are), from when the AS renews it (a third
/// of its lifetime after issue) and when the node renews it (two thirds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertLife {
    pub issued: SystemTime,
    pub not_after: SystemTime,
}

impl CertLife {
    /// The life of a certificate valid from `not_before` to `not_after`.
    pub fn of(not_before: SystemTime, not_after: SystemTime) -> CertLife {
        let span = not_after.duration_since(not_before).unwrap_or_default();
        let issued = if span > CERT_BACKDATE {
            not_before + CERT_BACKDATE
        } else {
            not_before
        };
        CertLife { issued, not_after }
    }

    /// From issue to notAfter.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.issued)
            .unwrap_or_default()
    }

    /// The AS renews the certificate from this moment on, not before
    /// (a third of its lifetime after issue).
    pub fn renewable_from(&self) -> SystemTime {
        self.issued + self.lifetime() / 3
    }

    /// When its node asks for a new one (two thirds of its lifetime after
    /// issue), leaving a third of it for retries.
    pub fn renew_at(&self) -> SystemTime {
        self.issued + self.lifetime() * 2 / 3
    }
}

/// Error codes in [`Response::Error`].
pub mod code {
    /// Unknown device ID or wrong password.
    pub const BAD_CREDENTIALS: &str = "bad_credentials";
    /// `login`, `renew` or `enroll_general` on a connection without a
    /// client certificate.
    pub const CERTIFICATE_REQUIRED: &str = "certificate_required";
    /// The client certificate is unknown, revoked or does not match its
    /// device.
    pub const CERTIFICATE_REJECTED: &str = "certificate_rejected";
    /// The device exists but an operator disabled it.
    pub const DEVICE_DISABLED: &str = "device_disabled";
    /// The CSR could not be used (bad PEM, bad signature, wrong key type).
    pub const BAD_CSR: &str = "bad_csr";
    /// `enroll_general` for a general node the asking adapter does not serve.
    pub const NOT_SERVED: &str = "not_served";
    /// `renew` with a certificate younger than a third of its lifetime (the
    /// message says how many seconds to wait).
    pub const RENEWAL_TOO_EARLY: &str = "renewal_too_early";
    /// `renew` with a certificate that was already renewed (to another key):
    /// each certificate is renewed once. Two holders of one key, or a
    /// renewal whose answer was lost and whose key is gone.
    pub const ALREADY_RENEWED: &str = "already_renewed";
    /// Not a request this server understands; the AS closes the connection.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The AS failed on its side; trying later may work.
    pub const INTERNAL: &str = "internal";
}

/// The password is wiped on drop.
impl Drop for Password {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl zeroize::ZeroizeOnDrop for Password {}

/// A password on the wire; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// What a node asks the AS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First contact: prove the device with its password and get a
    /// certificate for the key in the CSR.
    Enroll {
        device_id: String,
        password: Password,
        csr_pem: String,
    },
    /// Prove the device with the TLS client certificate and open a session.
    Login {},
    /// An adapter (proved by its TLS client certificate) gets a certificate
    /// for general node `device_id`, which it serves, for the key in the
    /// CSR: a key the adapter made and keeps (`docs/adapter.md`).
    EnrollGeneral { device_id: String, csr_pem: String },
    /// Prove the device with the TLS client certificate (as for `login`)
    /// and get a new certificate for the same device and the key in the
    /// CSR, which must be another key than the presented certificate's.
    Renew { csr_pem: String },
}

/// What the AS answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Enrolled {
        fqdn: String,
        /// The node certificate followed by the intermediate CA certificate.
        cert_chain_pem: String,
        root_pem: String,
    },
    LoginOk(LoginOk),
    /// The answer to `renew`: the new certificate, then the intermediate.
    Renewed {
        fqdn: String,
        cert_chain_pem: String,
    },
    Error {
        /// One of [`code`]; kept a string so a newer AS's codes still parse.
        code: String,
        message: String,
    },
}

/// The common key (hex) is wiped on drop.
impl Drop for LoginOk {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.common_key);
    }
}

impl zeroize::ZeroizeOnDrop for LoginOk {}

/// The body of a `login_ok` answer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOk {
    pub session_id: u64,
    /// 32 bytes, hex.
    pub common_key: String,
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub domain: String,
    pub keepalive_secs: u64,
    pub nms_port: u16,
    pub session_expires_in: u64,
    /// Every address the cloud answers on (its `public_addrs`), so a node
    /// that moves into a network of the other IP version still reaches it.
    #[serde(default)]
    pub cloud_addrs: Vec<std::net::IpAddr>,
    /// The cloud's QUIC (UDP) and TLS-over-TCP ports for signaling and
    /// relaying when native UDP is blocked; 0: not offered.
    #[serde(default)]
    pub quic_port: u16,
    #[serde(default)]
    pub tcp_port: u16,
    /// Cooperating domains whose names this cloud's NMS directs routes to
    /// (`docs/protocol.md` §5.19): the node's resolver answers them too,
    /// and their nodes' certificates verify under their roots.
    #[serde(default)]
    pub linked_domains: Vec<LinkedDomain>,
    /// The other instances of this cloud (also in `cloud_addrs`): a node
    /// whose NMS stops answering registers its session at one of them
    /// before it logs in again (§5.19).
    #[serde(default)]
    pub instance_addrs: Vec<std::net::IpAddr>,
}

/// A cooperating domain, as a Login answer names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedDomain {
    pub domain: String,
    /// Its root certificate (PEM): it vouches for names under `domain`
    /// only.
    pub root_pem: String,
}

impl fmt::Debug for LoginOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginOk")
            .field("session_id", &self.session_id)
            .field("common_key", &"<redacted>")
            .field("fqdn", &self.fqdn)
            .field("vip4", &self.vip4)
            .field("vip6", &self.vip6)
            .field("domain", &self.domain)
            .field("keepalive_secs", &self.keepalive_secs)
            .field("nms_port", &self.nms_port)
            .field("session_expires_in", &self.session_expires_in)
            .finish()
    }
}

impl Response {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Response::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Encodes a message as one line, newline included.
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    // Invariant: our messages hold only strings, numbers and addresses,
    // which JSON can always represent.
    let mut line = serde_json::to_vec(message).expect("Login messages always serialize");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        let r: Request = serde_json::from_str(
            r#"{"type":"enroll","device_id":"n1","password":"pw","csr_pem":"x","extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Enroll {
                device_id: "n1".into(),
                password: Password("pw".into()),
                csr_pem: "x".into()
            }
        );
        assert!(!format!("{r:?}").contains("pw\""));
        let r: Request = serde_json::from_str(r#"{"type":"login"}"#).unwrap();
        assert_eq!(r, Request::Login {});
        let r: Request = serde_json::from_str(r#"{"type":"renew","csr_pem":"x"}"#).unwrap();
        assert_eq!(
            r,
            Request::Renew {
                csr_pem: "x".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"type":"renew"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"type":"bogus"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"type":"enroll"}"#).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let ok = Response::LoginOk(LoginOk {
            session_id: u64::MAX,
            common_key: "00".repeat(32),
            fqdn: "n1.cyphonic.internal".into(),
            vip4: Ipv4Addr::new(100, 64, 0, 2),
            vip6: "fd7a:6379:7068::2".parse().unwrap(),
            domain: "cyphonic.internal".into(),
            keepalive_secs: 15,
            nms_port: 4502,
            session_expires_in: 86400,
            cloud_addrs: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            quic_port: 443,
            tcp_port: 443,
            linked_domains: vec![LinkedDomain {
                domain: "east.example".into(),
                root_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            }],
            instance_addrs: vec!["192.0.2.2".parse().unwrap()],
        });
        let line = encode_line(&ok);
        assert!(line.starts_with(br#"{"type":"login_ok","session_id":18446744073709551615"#));
        assert_eq!(line.last(), Some(&b'\n'));
        let back: Response = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, ok);
        let renewed = Response::Renewed {
            fqdn: "n1.cyphonic.internal".into(),
            cert_chain_pem: "pem".into(),
        };
        let line = encode_line(&renewed);
        assert_eq!(
            line,
            b"{\"type\":\"renewed\",\"fqdn\":\"n1.cyphonic.internal\",\"cert_chain_pem\":\"pem\"}\n"
        );
        assert_eq!(serde_json::from_slice::<Response>(&line).unwrap(), renewed);
        let err = encode_line(&Response::error(code::BAD_REQUEST, "x"));
        assert_eq!(
            err,
            b"{\"type\":\"error\",\"code\":\"bad_request\",\"message\":\"x\"}\n"
        );
    }

    #[test]
    fn a_certificate_is_renewable_after_a_third_and_renewed_at_two_thirds() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Issued at t0 for 60 s, backdated as the AS does.
        let life = CertLife::of(t0 - CERT_BACKDATE, t0 + Duration::from_secs(60));
        assert_eq!(life.issued, t0);
        assert_eq!(life.lifetime(), Duration::from_secs(60));
        assert_eq!(life.renewable_from(), t0 + Duration::from_secs(20));
        assert_eq!(life.renew_at(), t0 + Duration::from_secs(40));
        // 90 days.
        let days = Duration::from_secs(90 * 86_400);
        let life = CertLife::of(t0 - CERT_BACKDATE, t0 + days);
        assert_eq!(life.renew_at(), t0 + Duration::from_secs(60 * 86_400));
        // Not backdated (shorter than the backdate): its notBefore is its
        // issue; inverted: no life at all, renew at once.
        let life = CertLife::of(t0, t0 + Duration::from_secs(90));
        assert_eq!(life.issued, t0);
        assert_eq!(life.renew_at(), t0 + Duration::from_secs(60));
        let life = CertLife::of(t0, t0 - Duration::from_secs(1));
        assert_eq!(life.lifetime(), Duration::ZERO);
        assert_eq!(life.renew_at(), t0);
    }
}
