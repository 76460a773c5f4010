//! rustls configurations for talking to the Authentication Server.
//!
//! Both ends are ours, so the configuration is narrow: TLS 1.3 only, the
//! *ring* provider passed explicitly (never the process default, which
//! another crate could install differently), and Ed25519 as the only
//! certificate and handshake signature algorithm.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::verify::SUPPORTED_SIG_ALGS;
use crate::PkiError;

/// Ed25519 only, for chains and for the TLS 1.3 CertificateVerify.
static ED25519_ONLY: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: SUPPORTED_SIG_ALGS,
    mapping: &[(SignatureScheme::ED25519, SUPPORTED_SIG_ALGS)],
};

/// The *ring* provider restricted to Ed25519 signatures.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        signature_verification_algorithms: ED25519_ONLY,
        ..ring::default_provider()
    })
}

/// A store holding only our root.
fn root_store(root_cert_der: &[u8]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_cert_der.to_vec()))
        .map_err(|e| PkiError::Malformed(format!("root certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// A chain PEM and its key PEM as rustls wants them.
fn identity(
    chain_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let chain = crate::pem::pem_to_der_chain(chain_pem)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Key(format!("no private key in PEM: {e}")))?;
    Ok((chain, key))
}

/// TLS for the AS (TCP: login and enrollment).
///
/// `server_chain_pem` is the AS certificate followed by the intermediate
/// (nodes trust only the root, so the intermediate must be sent). The server
/// asks for a client certificate but does not require one, because
/// enrollment comes without one; a certificate that is presented must chain
/// to `root_cert_der` with clientAuth allowed, or the handshake fails. The
/// application must still check, per request, whether a peer certificate is
/// present and which node it names ([`crate::Verifier::verify_node`] on
/// `ServerConnection::peer_certificates`).
///
/// No ALPN is set; clone the config to add one.
pub fn as_server_config(
    server_chain_pem: &str,
    server_key_pem: &str,
    root_cert_der: &[u8],
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let (chain, key) = identity(server_chain_pem, server_key_pem)?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(root_cert_der)?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Tls(format!("server certificate or key: {e}")))?;
    Ok(Arc::new(config))
}

/// A node's TLS client configuration: trusts only our root, and presents
/// `identity` = (chain PEM: node certificate then intermediate, key PEM)
/// when given. Without an identity it is the enrollment configuration.
pub fn node_client_config(
    root_cert_der: &[u8],
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(root_store(root_cert_der)?, provider.clone())
            .build()
            .map_err(|e| PkiError::Tls(format!("server certificate verifier: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_webpki_verifier(server_verifier);
    let config = match identity {
        Some((chain_pem, key_pem)) => {
            let (chain, key) = self::identity(chain_pem, key_pem)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PkiError::Tls(format!("client certificate or key: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
