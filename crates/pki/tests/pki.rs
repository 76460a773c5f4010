//! The public API end to end: a CA, node certificates, verification
//! verdicts, and TLS handshakes pumped through memory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cyphonic_pki::{
    create_ca, pem_to_der_chain, verify_ed25519, CaMaterial, IssuedCert, Issuer, NodeKey, PkiError,
    VerifiedNode, Verifier,
};

const DAY: Duration = Duration::from_secs(86_400);
const DOMAIN: &str = "cyphonic.internal";

/// A fixed "now" so every run sees the same dates.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

struct Pki {
    ca: CaMaterial,
    issuer: Issuer,
    verifier: Verifier,
}

fn pki() -> Pki {
    pki_at(now())
}

fn pki_at(t: SystemTime) -> Pki {
    let ca = create_ca(DOMAIN, t).expect("create_ca");
    let issuer = Issuer::from_pem(&ca.intermediate_cert_pem, &ca.intermediate_key_pem)
        .expect("issuer from CA material");
    let verifier = Verifier::from_pem(&ca.root_cert_pem).expect("verifier from root");
    Pki {
        ca,
        issuer,
        verifier,
    }
}

/// A node key and a certificate for `fqdn`, valid for a day from `now()`.
fn node(pki: &Pki, fqdn: &str, serial: u64) -> (NodeKey, IssuedCert) {
    let key = NodeKey::generate().expect("keygen");
    let csr = key.csr_pem(fqdn).expect("csr");
    let cert = pki
        .issuer
        .issue_node(&csr, fqdn, &[], serial, now(), now() + DAY)
        .expect("issue_node");
    (key, cert)
}

fn chain(pki: &Pki, cert: &IssuedCert) -> Vec<Vec<u8>> {
    vec![cert.cert_der.clone(), pki.issuer.cert_der().to_vec()]
}

#[test]
fn issued_node_certificate_verifies_with_its_fields() {
    let pki = pki();
    let (key, cert) = node(&pki, "n1.cyphonic.internal", 42);
    let v = pki
        .verifier
        .verify_node(
            &chain(&pki, &cert),
            Some("n1.cyphonic.internal"),
            now() + DAY / 2,
        )
        .expect("verifies");
    assert_eq!(
        v,
        VerifiedNode {
            fqdn: "n1.cyphonic.internal".into(),
            serial: 42,
            not_after: cert.not_after,
            public_key: key.public_key(),
            vips: Vec::new(),
        }
    );
    assert_eq!(cert.serial, 42);
    assert_eq!(cert.not_after, now() + DAY);
    // Without an expected name the certificate's own name is reported.
    let v = pki
        .verifier
        .verify_node(&chain(&pki, &cert), None, now())
        .expect("verifies");
    assert_eq!(v.fqdn, "n1.cyphonic.internal");
}

#[test]
fn name_comparison_ignores_case_and_trailing_dot() {
    let pki = pki();
    let (_, cert) = node(&pki, "n1.cyphonic.internal", 1);
    let v = pki
        .verifier
        .verify_node(&chain(&pki, &cert), Some("N1.Cyphonic.Internal."), now())
        .expect("same name");
    assert_eq!(v.fqdn, "n1.cyphonic.internal");
}

#[test]
fn wrong_fqdn_is_a_name_mismatch() {
    let pki = pki();
    let (_, cert) = node(&pki, "n3.cyphonic.internal", 3);
    let err = pki
        .verifier
        .verify_node(&chain(&pki, &cert), Some("n2.cyphonic.internal"), now())
        .unwrap_err();
    assert_eq!(
        err,
        PkiError::NameMismatch {
            expected: "n2.cyphonic.internal".into(),
            found: vec!["n3.cyphonic.internal".into()],
        }
    );
    assert_eq!(
        err.to_string(),
        "certificate is for n3.cyphonic.internal, expected n2.cyphonic.internal"
    );
}

#[test]
fn certificate_from_another_ca_is_an_unknown_issuer() {
    let ours = pki();
    let theirs = pki(); // same domain, different keys
    let (_, cert) = node(&theirs, "n1.cyphonic.internal", 1);
    let err = ours
        .verifier
        .verify_node(&chain(&theirs, &cert), Some("n1.cyphonic.internal"), now())
        .unwrap_err();
    assert_eq!(err, PkiError::UnknownIssuer);
    // A leaf alone, without its intermediate, does not chain either.
    let (_, own) = node(&ours, "n1.cyphonic.internal", 2);
    assert_eq!(
        ours.verifier
            .verify_node(&[own.cert_der], None, now())
            .unwrap_err(),
        PkiError::UnknownIssuer
    );
}

#[test]
fn validity_window_is_enforced_with_dates() {
    let pki = pki();
    let (_, cert) = node(&pki, "n1.cyphonic.internal", 1);
    let c = chain(&pki, &cert);
    let name = Some("n1.cyphonic.internal");

    let err = pki
        .verifier
        .verify_node(&c, name, cert.not_after + Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(
        err,
        PkiError::Expired {
            not_after: cert.not_after
        }
    );

    let err = pki
        .verifier
        .verify_node(&c, name, cert.not_before - Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(
        err,
        PkiError::NotYetValid {
            not_before: cert.not_before
        }
    );

    // Both ends of the window are inside it.
    assert!(pki.verifier.verify_node(&c, name, cert.not_before).is_ok());
    assert!(pki.verifier.verify_node(&c, name, cert.not_after).is_ok());
}

#[test]
fn tampered_certificates_are_errors_not_panics() {
    let pki = pki();
    let (_, cert) = node(&pki, "n1.cyphonic.internal", 1);
    let good = chain(&pki, &cert);
    let mut failures = 0;
    // Flip every byte of the leaf in turn, and of the intermediate at a
    // stride: each result must be an error (or, for bytes webpki ignores,
    // success), never a panic.
    for (which, stride) in [(0usize, 1usize), (1, 7)] {
        for i in (0..good[which].len()).step_by(stride) {
            let mut c = good.clone();
            c[which][i] ^= 0xff;
            if pki.verifier.verify_node(&c, None, now()).is_err() {
                failures += 1;
            }
        }
    }
    assert!(
        failures > good[0].len() / 2,
        "tampering mostly went unnoticed"
    );

    // Flipping a bit in the leaf's signature is specifically a bad signature.
    let mut c = good.clone();
    let last = c[0].len() - 1;
    c[0][last] ^= 0x01;
    assert_eq!(
        pki.verifier.verify_node(&c, None, now()).unwrap_err(),
        PkiError::BadSignature
    );

    // Truncations and junk.
    for len in [0, 1, 10, good[0].len() / 2, good[0].len() - 1] {
        let c = vec![good[0][..len].to_vec(), good[1].clone()];
        assert!(pki.verifier.verify_node(&c, None, now()).is_err());
    }
    assert!(matches!(
        pki.verifier.verify_node(&[], None, now()),
        Err(PkiError::Malformed(_))
    ));
}

#[test]
fn csr_with_bad_signature_is_bad_csr() {
    let pki = pki();
    let key = NodeKey::generate().expect("keygen");
    let csr = key.csr_pem("n1.cyphonic.internal").expect("csr");
    // Tamper with the DER inside the PEM: a byte in the middle of the
    // request info (inside the public key or the names).
    let der = pem_der(&csr, "CERTIFICATE REQUEST");
    let mut tampered = der.clone();
    let mid = der.len() / 2;
    tampered[mid] ^= 0x01;
    let err = pki
        .issuer
        .issue_node(
            &to_pem("CERTIFICATE REQUEST", &tampered),
            "n1.cyphonic.internal",
            &[],
            1,
            now(),
            now() + DAY,
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
    // The untampered request is accepted.
    assert!(pki
        .issuer
        .issue_node(&csr, "n1.cyphonic.internal", &[], 1, now(), now() + DAY)
        .is_ok());
}

#[test]
fn large_serials_round_trip() {
    let pki = pki();
    for serial in [1, 0x7f, 0x80, 0xff, 1 << 32, u64::MAX >> 1, u64::MAX] {
        let (_, cert) = node(&pki, "n1.cyphonic.internal", serial);
        let v = pki
            .verifier
            .verify_node(&chain(&pki, &cert), None, now())
            .expect("verifies");
        assert_eq!(v.serial, serial);
    }
}

#[test]
fn server_certificate_is_not_a_node_certificate() {
    let pki = pki();
    let (server, _) = pki
        .issuer
        .issue_server(&["as.cyphonic.internal".into()], &[], 9, now())
        .expect("issue_server");
    let err = pki
        .verifier
        .verify_node(&chain(&pki, &server), None, now())
        .unwrap_err();
    assert!(matches!(err, PkiError::Rejected(_)), "{err}");
}

#[test]
fn ca_certificates_are_not_node_certificates() {
    let pki = pki();
    let err = pki
        .verifier
        .verify_node(&[pki.issuer.cert_der().to_vec()], None, now())
        .unwrap_err();
    assert!(matches!(err, PkiError::Rejected(_)), "{err}");
}

#[test]
fn verifier_refuses_a_non_ca_root() {
    let pki = pki();
    let (_, cert) = node(&pki, "n1.cyphonic.internal", 1);
    assert!(matches!(
        Verifier::new(cert.cert_der),
        Err(PkiError::Malformed(_))
    ));
    assert_eq!(
        Verifier::from_pem(&pki.ca.root_cert_pem)
            .expect("root")
            .root_der(),
        pem_to_der_chain(&pki.ca.root_cert_pem).expect("pem")[0].as_slice()
    );
}

#[test]
fn node_signatures_verify_only_with_the_signing_key() {
    let a = NodeKey::generate().expect("keygen");
    let b = NodeKey::generate().expect("keygen");
    let sig = a.sign(b"tunnel request");
    assert_eq!(
        verify_ed25519(&a.public_key(), b"tunnel request", &sig),
        Ok(())
    );
    assert_eq!(
        verify_ed25519(&b.public_key(), b"tunnel request", &sig),
        Err(PkiError::BadSignature)
    );
}

#[test]
fn password_hash_accepts_the_right_password_only() {
    let phc = cyphonic_pki::hash_password("enroll-me-7").expect("hash");
    assert!(cyphonic_pki::verify_password("enroll-me-7", &phc));
    assert!(!cyphonic_pki::verify_password("enroll-me-8", &phc));
}

fn pem_der(pem: &str, label: &str) -> Vec<u8> {
    use base64::Engine as _;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).expect("begin") + begin.len();
    let stop = pem.find(&end).expect("end");
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
}

fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

mod tls {
    //! Real handshakes between rustls endpoints, bytes moved by hand.

    use super::*;
    use cyphonic_pki::rustls::pki_types::ServerName;
    use cyphonic_pki::rustls::{ClientConnection, ServerConnection};
    use cyphonic_pki::{as_server_config, node_client_config};

    /// rustls checks validity against the real clock, so the TLS tests make
    /// their CA now rather than at the fixed test time.
    fn live_pki() -> Pki {
        pki_at(SystemTime::now())
    }

    const AS_NAME: &str = "as.cyphonic.internal";

    /// The AS's server config, built from a fresh server certificate.
    fn server(pki: &Pki) -> ServerConnection {
        let (cert, key_pem) = pki
            .issuer
            .issue_server(
                &[AS_NAME.to_string()],
                &["192.0.2.1".parse().expect("ip")],
                1000,
                SystemTime::now(),
            )
            .expect("server cert");
        let chain_pem = format!("{}{}", cert.cert_pem, pki.issuer.cert_pem());
        let config =
            as_server_config(&chain_pem, &key_pem, pki.verifier.root_der()).expect("server config");
        ServerConnection::new(config).expect("server connection")
    }

    fn client(pki: &Pki, identity: Option<(&str, &str)>) -> ClientConnection {
        let config = node_client_config(pki.verifier.root_der(), identity).expect("client config");
        let name = ServerName::try_from(AS_NAME).expect("name");
        ClientConnection::new(config, name).expect("client connection")
    }

    /// A node certificate valid now (rustls uses the real clock).
    fn node_identity(pki: &Pki, fqdn: &str) -> (String, String) {
        let key = NodeKey::generate().expect("keygen");
        let csr = key.csr_pem(fqdn).expect("csr");
        let t = SystemTime::now();
        let cert = pki
            .issuer
            .issue_node(&csr, fqdn, &[], 77, t - DAY, t + DAY)
            .expect("issue");
        (
            format!("{}{}", cert.cert_pem, pki.issuer.cert_pem()),
            key.to_pem().to_string(),
        )
    }

    /// Outcome of pumping a handshake to completion or failure.
    struct Outcome {
        client: Result<(), cyphonic_pki::rustls::Error>,
        server: Result<(), cyphonic_pki::rustls::Error>,
    }

    fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Outcome {
        let mut client_result = Ok(());
        let mut server_result = Ok(());
        for _ in 0..20 {
            let mut moved = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).expect("write to a Vec");
            }
            if !buf.is_empty() && server_result.is_ok() {
                moved = true;
                let mut rd = buf.as_slice();
                while !rd.is_empty() {
                    server.read_tls(&mut rd).expect("read from a slice");
                }
                server_result = server.process_new_packets().map(|_| ());
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).expect("write to a Vec");
            }
            if !buf.is_empty() && client_result.is_ok() {
                moved = true;
                let mut rd = buf.as_slice();
                while !rd.is_empty() {
                    client.read_tls(&mut rd).expect("read from a slice");
                }
                client_result = client.process_new_packets().map(|_| ());
            }
            if !moved {
                break;
            }
        }
        Outcome {
            client: client_result,
            server: server_result,
        }
    }

    #[test]
    fn node_certificate_handshake_shows_the_peer_chain() {
        let pki = live_pki();
        let (chain_pem, key_pem) = node_identity(&pki, "n5.cyphonic.internal");
        let mut c = client(&pki, Some((&chain_pem, &key_pem)));
        let mut s = server(&pki);
        let out = pump(&mut c, &mut s);
        assert!(out.client.is_ok(), "client: {:?}", out.client);
        assert!(out.server.is_ok(), "server: {:?}", out.server);
        assert!(!c.is_handshaking() && !s.is_handshaking());

        let peer: Vec<Vec<u8>> = s
            .peer_certificates()
            .expect("client presented a certificate")
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        assert_eq!(peer, pem_to_der_chain(&chain_pem).expect("pem"));
        let v = pki
            .verifier
            .verify_node(&peer, Some("n5.cyphonic.internal"), SystemTime::now())
            .expect("peer chain verifies");
        assert_eq!(v.serial, 77);

        // Application data flows both ways.
        use std::io::{Read, Write};
        c.writer().write_all(b"login").expect("write");
        let _ = pump(&mut c, &mut s);
        let mut got = [0u8; 5];
        s.reader().read_exact(&mut got).expect("read");
        assert_eq!(&got, b"login");
    }

    /// A node's listener (a peer leg's server side) presenting its node
    /// certificate.
    fn node_server(pki: &Pki, fqdn: &str) -> ServerConnection {
        let (chain_pem, key_pem) = node_identity(pki, fqdn);
        let config =
            as_server_config(&chain_pem, &key_pem, pki.verifier.root_der()).expect("server config");
        ServerConnection::new(config).expect("server connection")
    }

    fn dial(pki: &Pki, name: &str) -> ClientConnection {
        let config = node_client_config(pki.verifier.root_der(), None).expect("client config");
        let name = ServerName::try_from(name.to_string()).expect("name");
        ClientConnection::new(config, name).expect("client connection")
    }

    #[test]
    fn a_peer_node_is_a_server_for_its_own_name_only() {
        let pki = live_pki();
        let out = pump(
            &mut dial(&pki, "n5.cyphonic.internal"),
            &mut node_server(&pki, "n5.cyphonic.internal"),
        );
        assert!(out.client.is_ok(), "client: {:?}", out.client);
        for other in ["n6.cyphonic.internal", AS_NAME, "192.0.2.1"] {
            let out = pump(
                &mut dial(&pki, other),
                &mut node_server(&pki, "n5.cyphonic.internal"),
            );
            assert!(
                matches!(
                    out.client,
                    Err(cyphonic_pki::rustls::Error::InvalidCertificate(_))
                ),
                "dialing {other}: {:?}",
                out.client
            );
        }
    }

    #[test]
    fn node_certificates_are_no_tls_servers_to_others_trusting_our_root() {
        // A stock rustls client trusting our root (a browser or tool an
        // operator pointed at it) must not take a node for a server.
        let pki = live_pki();
        let mut roots = cyphonic_pki::rustls::RootCertStore::empty();
        roots
            .add(pki.verifier.root_der().to_vec().into())
            .expect("root");
        let provider = std::sync::Arc::new(cyphonic_pki::rustls::crypto::ring::default_provider());
        let config = cyphonic_pki::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("n5.cyphonic.internal").expect("name");
        let mut c = ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let out = pump(&mut c, &mut node_server(&pki, "n5.cyphonic.internal"));
        assert!(
            matches!(
                out.client,
                Err(cyphonic_pki::rustls::Error::InvalidCertificate(
                    cyphonic_pki::rustls::CertificateError::InvalidPurpose
                        | cyphonic_pki::rustls::CertificateError::InvalidPurposeContext { .. }
                ))
            ),
            "client: {:?}",
            out.client
        );
        // The cloud's own server certificate still passes that client.
        let mut c = ClientConnection::new(
            std::sync::Arc::new({
                let mut roots = cyphonic_pki::rustls::RootCertStore::empty();
                roots
                    .add(pki.verifier.root_der().to_vec().into())
                    .expect("root");
                cyphonic_pki::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    cyphonic_pki::rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth()
            }),
            ServerName::try_from(AS_NAME).expect("name"),
        )
        .expect("client");
        let out = pump(&mut c, &mut server(&pki));
        assert!(out.client.is_ok(), "client: {:?}", out.client);
    }

    #[test]
    fn enrollment_handshake_without_client_certificate_is_allowed() {
        let pki = live_pki();
        let mut c = client(&pki, None);
        let mut s = server(&pki);
        let out = pump(&mut c, &mut s);
        assert!(
            out.client.is_ok() && out.server.is_ok(),
            "{:?} {:?}",
            out.client,
            out.server
        );
        assert!(!s.is_handshaking());
        assert!(s.peer_certificates().is_none());
    }

    #[test]
    fn client_certificate_from_another_ca_is_refused() {
        let pki = live_pki();
        let other = live_pki();
        let (chain_pem, key_pem) = node_identity(&other, "n5.cyphonic.internal");
        let mut c = client(&pki, Some((&chain_pem, &key_pem)));
        let mut s = server(&pki);
        let out = pump(&mut c, &mut s);
        assert!(
            matches!(
                out.server,
                Err(cyphonic_pki::rustls::Error::InvalidCertificate(_))
            ),
            "server: {:?}",
            out.server
        );
        // The server's alert reaches the client, which fails too.
        assert!(out.client.is_err(), "client: {:?}", out.client);
        assert!(s.peer_certificates().is_none());
    }

    #[test]
    fn server_from_another_ca_is_refused_by_the_node() {
        let pki = live_pki();
        let other = live_pki();
        let mut c = client(&pki, None);
        let mut s = server(&other);
        let out = pump(&mut c, &mut s);
        assert!(
            matches!(
                out.client,
                Err(cyphonic_pki::rustls::Error::InvalidCertificate(_))
            ),
            "client: {:?}",
            out.client
        );
    }

    /// A cloud server identity (chain PEM, key PEM) for `ip`.
    fn server_identity(pki: &Pki, ip: &str) -> (String, String) {
        let (cert, key_pem) = pki
            .issuer
            .issue_server(&[], &[ip.parse().expect("ip")], 2000, SystemTime::now())
            .expect("server cert");
        (
            format!("{}{}", cert.cert_pem, pki.issuer.cert_pem()),
            key_pem.to_string(),
        )
    }

    fn link_dial(identity: &(String, String), peer_root: &[u8], name: &str) -> ClientConnection {
        let config = cyphonic_pki::link_client_config(&identity.0, &identity.1, peer_root)
            .expect("link client config");
        let name = ServerName::try_from(name.to_string()).expect("name");
        ClientConnection::new(config, name).expect("client connection")
    }

    #[test]
    fn an_nms_link_takes_only_the_configured_peers_server_certificates() {
        let here = live_pki();
        let east = live_pki();
        let own = server_identity(&here, "198.51.100.10");
        let peers = std::sync::Arc::new(
            cyphonic_pki::LinkPeers::new(&[
                (here.verifier.root_der().to_vec(), "198.51.100.11".into()),
                (east.verifier.root_der().to_vec(), "203.0.113.20".into()),
            ])
            .expect("peers"),
        );
        let accept = || {
            let config = cyphonic_pki::link_server_config(&own.0, &own.1, peers.clone())
                .expect("link server config");
            ServerConnection::new(config).expect("server connection")
        };
        // Another instance of this cloud, and the cooperating domain's NMS.
        for (pki, ip, index) in [(&here, "198.51.100.11", 0), (&east, "203.0.113.20", 1)] {
            let mut s = accept();
            let mut c = link_dial(
                &server_identity(pki, ip),
                here.verifier.root_der(),
                "198.51.100.10",
            );
            let out = pump(&mut c, &mut s);
            assert!(out.client.is_ok(), "{ip} client: {:?}", out.client);
            assert!(out.server.is_ok(), "{ip} server: {:?}", out.server);
            let chain = s.peer_certificates().expect("a client certificate");
            assert_eq!(peers.which(chain), Some(index));
        }
        // Refused: a node certificate of this cloud, a server certificate
        // for another address, one of a root nobody configured.
        let stranger = live_pki();
        for (identity, what) in [
            (node_identity(&here, "n5.cyphonic.internal"), "a node"),
            (server_identity(&here, "198.51.100.99"), "another address"),
            (server_identity(&stranger, "198.51.100.11"), "another root"),
        ] {
            let mut s = accept();
            let mut c = link_dial(&identity, here.verifier.root_der(), "198.51.100.10");
            let out = pump(&mut c, &mut s);
            assert!(out.server.is_err(), "{what} was taken for an NMS");
        }
        // The dialing side checks the accepting NMS too.
        let mut s = accept();
        let mut c = link_dial(
            &server_identity(&here, "198.51.100.11"),
            east.verifier.root_der(),
            "198.51.100.10",
        );
        assert!(pump(&mut c, &mut s).client.is_err());
    }
}
