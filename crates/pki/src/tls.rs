//! rustls configurations for talking to the Authentication Server.
//!
//! Both ends are ours, so the configuration is narrow: TLS 1.3 only, the
//! *ring* provider passed explicitly (never the process default, which
//! another crate could install differently), and Ed25519 as the only
//! certificate and handshake signature algorithm.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ConfigBuilder, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme, WantsVerifier,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

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

/// webpki's check of a server certificate chaining to `root_der`;
/// `what` names it in errors.
fn server_verifier(root_der: &[u8], what: &str) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
    WebPkiServerVerifier::builder_with_provider(root_store(root_der)?, provider())
        .build()
        .map_err(|e| PkiError::Tls(format!("{what}: {e}")))
}

/// A TLS 1.3 server presenting `chain_pem` (certificate, then the
/// intermediate) and `key_pem`, checking client certificates with
/// `clients`.
fn tls13_server(
    chain_pem: &str,
    key_pem: &str,
    clients: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let (chain, key) = identity(chain_pem, key_pem)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Tls(format!("server certificate or key: {e}")))?;
    Ok(Arc::new(config))
}

/// A TLS 1.3 client on our provider, at the step that takes the server
/// verifier.
fn tls13_client() -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, PkiError> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))
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
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(root_cert_der)?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))?;
    tls13_server(server_chain_pem, server_key_pem, client_verifier)
}

/// TLS for the operator's web console: the cloud's server certificate
/// (`server_chain_pem`: certificate, then the intermediate), no client
/// certificate (operators log in with a password), ALPN `http/1.1`.
pub fn web_server_config(
    server_chain_pem: &str,
    server_key_pem: &str,
) -> Result<Arc<ServerConfig>, PkiError> {
    let (chain, key) = identity(server_chain_pem, server_key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Tls(format!("server certificate or key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A node's TLS client configuration: trusts only our root, and presents
/// `identity` = (chain PEM: node certificate then intermediate, key PEM)
/// when given. Without an identity it is the enrollment configuration.
///
/// The server is either a cloud server (a certificate with serverAuth for
/// the dialed name or address) or, on a leg between two nodes, the peer
/// node: its node certificate (clientAuth only) naming the dialed FQDN,
/// checked as [`crate::Verifier::verify_node`] checks it.
pub fn node_client_config(
    root_cert_der: &[u8],
    identity: Option<(&str, &str)>,
) -> Result<Arc<ClientConfig>, PkiError> {
    let verifier = ServerOrNodeVerifier {
        server: server_verifier(root_cert_der, "server certificate verifier")?,
        nodes: crate::Verifier::new(root_cert_der.to_vec())?,
    };
    let builder = tls13_client()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
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

/// Accepts a cloud server's certificate as webpki does, or a node
/// certificate for the dialed DNS name (a peer node's listener). The
/// handshake signature checks are webpki's in both cases.
#[derive(Debug)]
struct ServerOrNodeVerifier {
    server: Arc<WebPkiServerVerifier>,
    nodes: crate::Verifier,
}

impl ServerCertVerifier for ServerOrNodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let server_err = match self.server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        // Only a DNS name can be a node's: addresses name cloud servers.
        let ServerName::DnsName(name) = server_name else {
            return Err(server_err);
        };
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.as_ref().to_vec())
            .collect();
        let when = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        match self.nodes.verify_node(&chain, Some(name.as_ref()), when) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            // A certificate that is not a node's either: webpki's reason.
            Err(_) => Err(server_err),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.server.supported_verify_schemes()
    }
}

/// The NMSs a link may come from (`docs/protocol.md` §5.19): per peer, the
/// root its certificate chains to (this cloud's own for another instance,
/// the cooperating domain's for that domain's NMS) and the name or address
/// its certificate must carry. A peer authenticates with its cloud server
/// certificate (serverAuth), so a node certificate (clientAuth only), even
/// one of this cloud, can never pass as an NMS.
#[derive(Debug)]
pub struct LinkPeers {
    peers: Vec<(Arc<WebPkiServerVerifier>, ServerName<'static>)>,
}

impl LinkPeers {
    /// `peers`: (root certificate DER, name or IP address) per peer.
    pub fn new(peers: &[(Vec<u8>, String)]) -> Result<Self, PkiError> {
        let peers = peers
            .iter()
            .map(|(root, name)| {
                let verifier = server_verifier(root, "link peer verifier")?;
                let name = ServerName::try_from(name.clone())
                    .map_err(|e| PkiError::InvalidRequest(format!("link peer name {name}: {e}")))?;
                Ok((verifier, name))
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        Ok(Self { peers })
    }

    /// Which peer (its index in the list given to [`LinkPeers::new`]) a
    /// presented chain belongs to, if any.
    pub fn which(&self, chain: &[CertificateDer<'_>]) -> Option<usize> {
        let (end_entity, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        self.peers.iter().position(|(verifier, name)| {
            verifier
                .verify_server_cert(end_entity, intermediates, name, &[], now)
                .is_ok()
        })
    }
}

impl rustls::server::danger::ClientCertVerifier for LinkPeers {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no NMS link peer configured".into());
        for (verifier, name) in &self.peers {
            match verifier.verify_server_cert(end_entity, intermediates, name, &[], now) {
                Ok(_) => return Ok(rustls::server::danger::ClientCertVerified::assertion()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The link is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ED25519_ONLY)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ED25519_ONLY.supported_schemes()
    }
}

/// TLS for the NMS link's accepting side: this cloud's server certificate
/// (`server_chain_pem`: certificate, then the intermediate), and a client
/// certificate required from one of `peers`. TLS 1.3 only.
pub fn link_server_config(
    server_chain_pem: &str,
    server_key_pem: &str,
    peers: Arc<LinkPeers>,
) -> Result<Arc<ServerConfig>, PkiError> {
    tls13_server(server_chain_pem, server_key_pem, peers)
}

/// TLS for dialing an NMS link: the peer's certificate must chain to
/// `peer_root_der` and carry the dialed name; this cloud's server
/// certificate is presented. TLS 1.3 only.
pub fn link_client_config(
    server_chain_pem: &str,
    server_key_pem: &str,
    peer_root_der: &[u8],
) -> Result<Arc<ClientConfig>, PkiError> {
    let (chain, key) = identity(server_chain_pem, server_key_pem)?;
    let config = tls13_client()?
        .with_webpki_verifier(server_verifier(peer_root_der, "link peer verifier")?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::Tls(format!("client certificate or key: {e}")))?;
    Ok(Arc::new(config))
}
