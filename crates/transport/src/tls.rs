//! TLS for legs: our PKI's configurations plus an ALPN per transport.
//!
//! Both ends are ours: TLS 1.3 only, Ed25519 only, trust in our root only
//! (`cyphonic_pki`'s configurations, never the platform's roots).

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use cyphonic_pki::rustls::client::ResolvesClientCert;
use cyphonic_pki::rustls::crypto::CryptoProvider;
use cyphonic_pki::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use cyphonic_pki::rustls::sign::CertifiedKey;
use cyphonic_pki::rustls::{self, ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use cyphonic_pki::Verifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN of a QUIC leg.
pub const QUIC_ALPN: &[u8] = b"cyphonic/1";
/// ALPN of a TLS-over-TCP leg.
pub const TCP_ALPN: &[u8] = b"cyphonic-dgram/1";

/// A hub's TLS identity and trust.
///
/// For a node: its certificate chain (node certificate, then the AS
/// intermediate) and key. For a cloud server: a certificate the AS CA
/// issued for the server's IP addresses or names (`Issuer::issue_server`),
/// then the intermediate. `root_der` is our root, the only trust anchor.
#[derive(Clone)]
pub struct TlsIdentity {
    pub chain_pem: String,
    pub key_pem: String,
    pub root_der: Vec<u8>,
}

/// The key is wiped on drop (rustls keeps its own parsed copy, which it
/// does not wipe: `docs/security.md` §3).
impl Drop for TlsIdentity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pem);
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("chain_pem", &self.chain_pem)
            .field("root_der_len", &self.root_der.len())
            .finish_non_exhaustive()
    }
}

/// The TLS configurations a hub needs.
pub(crate) struct TlsConfigs {
    /// Client side of QUIC legs (nodes only).
    pub quic_client: Option<Arc<ClientConfig>>,
    /// Client side of TCP legs (nodes only).
    pub tcp_client: Option<Arc<ClientConfig>>,
    pub quic_server: Arc<ServerConfig>,
    pub tcp_server: Arc<ServerConfig>,
    /// TCP listeners take a peer without a certificate in the handshake
    /// (the hand-off's, enrollment at the AS), and a leg must then refuse
    /// one that has none.
    pub tcp_leg_needs_cert: bool,
    /// Names the peer of a leg from its certificate chain.
    pub verifier: Verifier,
    /// The certificate every configuration above presents.
    pub own: Arc<OwnCert>,
}

/// The hub's own certificate chain and key, as every TLS configuration of
/// the hub presents it (listeners and dials). A node renews its
/// certificate while it runs: [`OwnCert::replace`] makes every later
/// handshake present the new one; legs already up keep theirs.
pub(crate) struct OwnCert {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl OwnCert {
    fn new(identity: &TlsIdentity, provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let current = RwLock::new(certified_key(identity, &provider)?);
        Ok(OwnCert { provider, current })
    }

    /// Presents `identity`'s chain and key from the next handshake on.
    pub fn replace(&self, identity: &TlsIdentity) -> anyhow::Result<()> {
        let key = certified_key(identity, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl fmt::Debug for OwnCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnCert").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for OwnCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `identity`'s chain and key as rustls presents them; the key must be the
/// certificate's.
fn certified_key(
    identity: &TlsIdentity,
    provider: &CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = cyphonic_pki::pem_to_der_chain(&identity.chain_pem)
        .context("certificate chain PEM")?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("no private key in the key PEM: {e}"))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .context("the certificate's private key")?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .context("the key is not the certificate's")?;
    Ok(Arc::new(certified))
}

impl TlsConfigs {
    /// `dial`: the identity is a node's and may open legs.
    /// `require_client_cert`: listeners refuse peers without a certificate
    /// (a certificate that is presented must chain to our root either way).
    /// `handoff_alpn`: TCP listeners also accept this ALPN (for
    /// [`crate::TcpHandoff`]).
    pub fn new(
        identity: &TlsIdentity,
        dial: bool,
        require_client_cert: bool,
        handoff_alpn: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        let verifier = Verifier::new(identity.root_der.clone())
            .context("root certificate of the TLS identity")?;
        let mut server = server_config(identity, require_client_cert)?;
        let own = Arc::new(OwnCert::new(identity, server.crypto_provider().clone())?);
        server.cert_resolver = own.clone();
        // A device enrolling at the AS through the hand-off has no
        // certificate yet: the TCP listeners let it through the handshake,
        // and legs check for a certificate after it.
        let tcp_leg_needs_cert = require_client_cert && handoff_alpn.is_some();
        let mut tcp_base = if tcp_leg_needs_cert {
            server_config(identity, false)?
        } else {
            server.clone()
        };
        tcp_base.cert_resolver = own.clone();
        let client = |alpn: &[u8]| -> anyhow::Result<Arc<ClientConfig>> {
            let base = cyphonic_pki::node_client_config(
                &identity.root_der,
                Some((&identity.chain_pem, &identity.key_pem)),
            )
            .context("TLS client configuration from the node certificate")?;
            let mut config = (*base).clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            config.client_auth_cert_resolver = own.clone();
            Ok(Arc::new(config))
        };
        let (quic_client, tcp_client) = if dial {
            (Some(client(QUIC_ALPN)?), Some(client(TCP_ALPN)?))
        } else {
            (None, None)
        };
        let with_alpn = |base: &ServerConfig, alpn: &[u8], extra: Option<&[u8]>| {
            let mut config = base.clone();
            config.alpn_protocols = std::iter::once(alpn)
                .chain(extra)
                .map(<[u8]>::to_vec)
                .collect();
            Arc::new(config)
        };
        Ok(TlsConfigs {
            quic_client,
            tcp_client,
            quic_server: with_alpn(&server, QUIC_ALPN, None),
            tcp_server: with_alpn(&tcp_base, TCP_ALPN, handoff_alpn),
            tcp_leg_needs_cert,
            verifier,
            own,
        })
    }
}

/// `cyphonic_pki::as_server_config` (which lets a peer without a
/// certificate in, for enrollment), or the same with a client certificate
/// required: its Ed25519-only provider and its certificate, a verifier
/// without `allow_unauthenticated`.
fn server_config(
    identity: &TlsIdentity,
    require_client_cert: bool,
) -> anyhow::Result<ServerConfig> {
    let base =
        cyphonic_pki::as_server_config(&identity.chain_pem, &identity.key_pem, &identity.root_der)
            .context("TLS server configuration from the certificate chain and key")?;
    if !require_client_cert {
        return Ok((*base).clone());
    }
    let provider = base.crypto_provider().clone();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(identity.root_der.clone()))
        .context("root certificate")?;
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("client certificate verifier")?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(base.cert_resolver.clone());
    Ok(config)
}

/// The FQDN of a peer that presented a node certificate; `None` for a
/// server certificate (serverAuth only) or no certificate. The chain was
/// verified by the handshake; this only reads the name.
pub(crate) fn peer_name(verifier: &Verifier, chain: &[CertificateDer<'_>]) -> Option<String> {
    if chain.is_empty() {
        return None;
    }
    let chain: Vec<Vec<u8>> = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    verifier
        .verify_node(&chain, None, SystemTime::now())
        .ok()
        .map(|node| node.fqdn)
}
