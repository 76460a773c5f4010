//! A general node's credentials: its key is made here once and never
//! leaves the adapter; its certificate comes from the AS, which issues it
//! only to the adapter serving the general node (`enroll_general`, proved
//! by the adapter's own certificate). Both are kept in the state directory
//! (`general/<name>/`), so a restarted adapter logs in with them again.

use std::path::Path;

use anyhow::Context;
use cyphonic_node::config::{write_private, NodeFile, StatePaths};
use cyphonic_node::daemon::Credentials;
use cyphonic_pki::{NodeKey, Verifier};

/// The credentials in `dir` if they are valid for `fqdn`; otherwise new
/// ones: the key in `dir` (made now if there is none) and a certificate
/// the AS issues for it to this adapter (`adapter`).
pub async fn credentials(
    dir: &Path,
    cloud: &NodeFile,
    adapter: &Credentials,
    device_id: &str,
    fqdn: &str,
) -> anyhow::Result<Credentials> {
    let paths = StatePaths::new(dir);
    if let Ok(c) = Credentials::load(&paths, fqdn) {
        return Ok(c);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = match std::fs::read_to_string(paths.key()) {
        Ok(pem) => NodeKey::from_pem(&pem)?,
        Err(_) => {
            let key = NodeKey::generate()?;
            write_private(&paths.key(), &key.to_pem())?;
            key
        }
    };
    let csr = key.csr_pem(device_id)?;
    let root = Verifier::from_pem(&adapter.root_pem)?;
    let enrolled = cyphonic_node::as_client::enroll_general(
        cloud.cloud,
        &cloud.server_name,
        root.root_der(),
        &adapter.chain_pem,
        &adapter.key_pem,
        device_id,
        &csr,
    )
    .await
    .with_context(|| format!("the AS refused a certificate for {device_id}"))?;
    write_private(&paths.chain(), &enrolled.cert_chain_pem)?;
    write_private(&paths.root(), &adapter.root_pem)?;
    Credentials::load(&paths, fqdn)
}

/// A renewal of the general node's certificate in `dir`: a new key (kept
/// as `node.key.next` until the certificate is installed, as the node
/// daemon's renewal does), a certificate the AS issues for it to this
/// adapter, then both installed.
pub async fn reissue(
    dir: &Path,
    cloud: &NodeFile,
    adapter: &Credentials,
    device_id: &str,
    fqdn: &str,
) -> anyhow::Result<Credentials> {
    let paths = StatePaths::new(dir);
    let key = NodeKey::generate()?;
    let key_pem = key.to_pem();
    write_private(&paths.next_key(), &key_pem)?;
    let root = Verifier::from_pem(&adapter.root_pem)?;
    let enrolled = cyphonic_node::as_client::enroll_general(
        cloud.cloud,
        &cloud.server_name,
        root.root_der(),
        &adapter.chain_pem,
        &adapter.key_pem,
        device_id,
        &key.csr_pem(device_id)?,
    )
    .await
    .with_context(|| format!("the AS refused a renewed certificate for {device_id}"))?;
    Credentials::install_renewal(
        &paths,
        fqdn,
        &adapter.root_pem,
        &key_pem,
        &enrolled.cert_chain_pem,
    )
}
