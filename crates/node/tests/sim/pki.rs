//! Certificates for the simulation, made once per test process from fixed
//! keys (`fixtures/`, test-only material): Ed25519 signatures are
//! deterministic, so every process issues the same bytes and a run's
//! packets depend on its seed alone. That is what lets `goldens.txt` pin
//! the transmit hashes of whole runs across builds.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyphonic_pki::{Issuer, NodeKey, Verifier};

pub const DOMAIN: &str = "cyphonic.internal";
const DAY: Duration = Duration::from_secs(86_400);

/// A node's certificate key and chain (leaf, intermediate), DER.
pub struct NodeCert {
    pub key: NodeKey,
    pub chain: Vec<Vec<u8>>,
}

pub struct Pki {
    /// The wall-clock moment every simulation starts at.
    pub wall: SystemTime,
    /// The overlay's root.
    pub verifier: Verifier,
    /// The root of an unrelated CA with the same domain.
    pub foreign_verifier: Verifier,
    /// `n1` … `n6` under the overlay's CA, serial `100 + i`.
    pub certs: BTreeMap<String, NodeCert>,
    /// `n3`, serial 103, but issued by the foreign CA.
    pub foreign_n3: NodeCert,
    /// `n2`, serial 102, under the overlay's CA, expired a day before `wall`.
    pub expired_n2: NodeCert,
    /// `n2`, serial 102, its own key, but carrying n4's virtual IPs.
    pub n2_with_vips_of_n4: NodeCert,
}

pub fn fqdn(name: &str) -> String {
    format!("{name}.{DOMAIN}")
}

pub fn serial(name: &str) -> u64 {
    100 + name[1..].parse::<u64>().expect("node names are n<number>")
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let wall = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let (verifier, issuer) = ca("overlay");
        let (foreign_verifier, foreign_issuer) = ca("foreign");
        let certs = (1..=6)
            .map(|i| {
                let name = format!("n{i}");
                let cert = issue(&issuer, &name, &name, i, wall - DAY, wall + 30 * DAY);
                (name, cert)
            })
            .collect();
        Pki {
            wall,
            verifier,
            foreign_verifier,
            certs,
            foreign_n3: issue(
                &foreign_issuer,
                "foreign-n3",
                "n3",
                3,
                wall - DAY,
                wall + 30 * DAY,
            ),
            expired_n2: issue(&issuer, "expired-n2", "n2", 2, wall - 30 * DAY, wall - DAY),
            n2_with_vips_of_n4: issue(&issuer, "n2", "n2", 4, wall - DAY, wall + 30 * DAY),
        }
    })
}

/// A fixture file's text.
fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sim/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A CA from the fixtures: "overlay" or "foreign" (made with
/// `cyphonic_pki::create_ca` at the simulations' wall clock).
fn ca(name: &str) -> (Verifier, Issuer) {
    let verifier = Verifier::from_pem(&fixture(&format!("{name}-root.pem"))).expect("root");
    let issuer = Issuer::from_pem(
        &fixture(&format!("{name}-intermediate.pem")),
        &fixture(&format!("{name}-intermediate.key")),
    )
    .expect("issuer");
    (verifier, issuer)
}

/// A certificate for `name` with node `vips_of`'s virtual IPs.
fn issue(
    issuer: &Issuer,
    key_name: &str,
    name: &str,
    vips_of: usize,
    not_before: SystemTime,
    not_after: SystemTime,
) -> NodeCert {
    let key = NodeKey::from_pem(&fixture(&format!("{key_name}.key"))).expect("node key");
    let fqdn = fqdn(name);
    let csr = key.csr_pem(&fqdn).expect("csr");
    let vips = [
        crate::harness::vip4(vips_of).into(),
        crate::harness::vip6(vips_of).into(),
    ];
    let issued = issuer
        .issue_node(&csr, &fqdn, &vips, serial(name), not_before, not_after)
        .expect("issue node certificate");
    NodeCert {
        key,
        chain: vec![issued.cert_der, issuer.cert_der().to_vec()],
    }
}
