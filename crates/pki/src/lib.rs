//! cyphonic's public-key infrastructure.
//!
//! The cloud Authentication Server (AS) holds an intermediate CA under an
//! operator-held root. Nodes generate their own Ed25519 keys, send a CSR at
//! enrollment, and get back a certificate naming the FQDN the AS assigned.
//! From then on nodes authenticate to the AS with mutual TLS and to each
//! other with those certificates, each side checking the chain against the
//! pinned root and the peer's name against the one it expected.
//!
//! | Role | Items |
//! | --- | --- |
//! | operator, once | [`create_ca`] → [`CaMaterial`] |
//! | operator, with the (offline) root | [`create_intermediate`] |
//! | AS, issuing | [`Issuer`] ([`Issuer::issue_node`], [`Issuer::issue_server`]) → [`IssuedCert`] |
//! | node, keys | [`NodeKey`] (generate, PEM, CSR, sign), [`verify_ed25519`] |
//! | everyone, checking | [`Verifier::verify_node`] → [`VerifiedNode`] |
//! | TLS to the AS | [`as_server_config`], [`node_client_config`] |
//! | enrollment secrets | [`hash_password`], [`verify_password`] |
//!
//! Every key is Ed25519. Nothing here does IO or reads the clock: times
//! are arguments, so tests can move them freely. Randomness comes from the
//! OS (key generation, salts) because keys must not be reproducible.

mod ca;
mod error;
mod key;
mod names;
mod password;
mod pem;
mod tls;
mod validity;
mod verify;

pub use ca::{
    create_ca, create_intermediate, csr_key, CaMaterial, IssuedCert, Issuer, NewIntermediate,
};
pub use error::PkiError;
pub use key::{verify_ed25519, NodeKey};
pub use password::{hash_password, verify_password};
pub use pem::{der_to_pem, pem_to_der_chain};
pub use tls::{
    as_server_config, link_client_config, link_server_config, node_client_config,
    web_server_config, LinkPeers,
};
pub use verify::{VerifiedNode, Verifier};

/// Re-exported so callers name the same rustls the configs are built with.
pub use rustls;
