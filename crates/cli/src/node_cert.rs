//! `cyphonic node enroll --certificate`: a node whose key was made where
//! it was built, and whose certificate the operator issued from that
//! key's CSR (`cyphonic cloud device add-many`), installs both in its
//! state directory as an enrollment by password leaves them, without
//! asking the AS: its first Login proves the certificate.

use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::{ensure, Context};
use cyphonic_node::config::{private_dir, write_private, NodeFile, StatePaths};
use cyphonic_pki::{NodeKey, Verifier};

/// Checks that `chain_pem` (node certificate, then intermediate) verifies
/// now under `root_pem`, names `device_id` and is for the key in
/// `key_pem`; then writes key, chain, root and `node.toml` to `state`.
/// Nothing is written when a check fails.
pub fn install(
    state: &StatePaths,
    cloud: SocketAddr,
    server_name: &str,
    root_pem: &str,
    device_id: &str,
    chain_pem: &str,
    key_pem: &str,
) -> anyhow::Result<NodeFile> {
    let verifier = Verifier::from_pem(root_pem).context("the --ca file is not a certificate")?;
    let chain = cyphonic_pki::pem_to_der_chain(chain_pem)
        .context("the --certificate file is not a PEM certificate chain")?;
    let cert = verifier
        .verify_node(&chain, None, SystemTime::now())
        .context(
            "the --certificate chain does not verify under the --ca root now \
             (expired, another cloud's, or without the intermediate after the node certificate)",
        )?;
    let (label, domain) = cert.fqdn.split_once('.').unwrap_or((&cert.fqdn, ""));
    ensure!(
        label == device_id,
        "the certificate is {}'s, not {device_id}'s",
        cert.fqdn
    );
    let key =
        NodeKey::from_pem(key_pem).context("the --key file is not an Ed25519 key (PKCS#8 PEM)")?;
    ensure!(
        key.public_key() == cert.public_key,
        "the certificate is not for the key in the --key file"
    );
    let file = NodeFile {
        cloud,
        server_name: server_name.to_owned(),
        device_id: device_id.to_owned(),
        fqdn: cert.fqdn.clone(),
        domain: domain.to_owned(),
    };
    let config = toml::to_string(&file)?;
    private_dir(&state.dir)?;
    write_private(&state.key(), &key.to_pem())?;
    write_private(&state.chain(), chain_pem)?;
    write_private(&state.root(), root_pem)?;
    // What an earlier enrollment or renewal left is not this key's.
    let _ = std::fs::remove_file(state.next_key());
    let _ = std::fs::remove_file(state.enroll_key());
    write_private(&state.config(), &config)?;
    Ok(file)
}
