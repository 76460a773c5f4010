//! The daemon's certificate files: installing a renewal, recovering from a
//! crash halfway through it, and reading a certificate's validity.

use super::*;

use cyphonic_pki::{create_ca, Issuer};
use cyphonic_proto::login::CERT_BACKDATE;

const FQDN: &str = "n1.cyphonic.internal";

/// An intermediate CA and its root (PEM).
fn ca() -> (Issuer, String) {
    let now = SystemTime::now();
    let ca = create_ca("cyphonic.internal", now).unwrap();
    let issuer = Issuer::from_pem(&ca.intermediate_cert_pem, &ca.intermediate_key_pem).unwrap();
    (issuer, ca.root_cert_pem.clone())
}

/// A chain (certificate, then intermediate) for `key` and `fqdn`, issued
/// now for `secs`, backdated as the AS does.
fn chain(
    issuer: &Issuer,
    key: &NodeKey,
    fqdn: &str,
    serial: u64,
    secs: u64,
) -> (String, SystemTime) {
    let now = SystemTime::now();
    let cert = issuer
        .issue_node(
            &key.csr_pem(fqdn).unwrap(),
            fqdn,
            &[],
            serial,
            now - CERT_BACKDATE,
            now + Duration::from_secs(secs),
        )
        .unwrap();
    (
        format!("{}{}", cert.cert_pem, issuer.cert_pem()),
        cert.not_before,
    )
}

/// A state directory with `key`, `chain_pem` and the root.
fn state_dir(key: &NodeKey, chain_pem: &str, root_pem: &str) -> (tempfile_dir::Dir, StatePaths) {
    let dir = tempfile_dir::Dir::new();
    let state = StatePaths::new(dir.path());
    write_private(&state.key(), &key.to_pem()).unwrap();
    write_private(&state.chain(), chain_pem).unwrap();
    write_private(&state.root(), root_pem).unwrap();
    (dir, state)
}

/// A temporary directory removed on drop (the node has no `tempfile`).
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "cyphonic-daemon-test-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            crate::config::private_dir(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn a_certificates_validity_and_serial_are_read_back() {
    let (issuer, root) = ca();
    let key = NodeKey::generate().unwrap();
    let (chain_pem, not_before) = chain(&issuer, &key, FQDN, 77, 60);
    let credentials = Credentials {
        chain_pem,
        key_pem: key.to_pem(),
        root_pem: root,
    };
    let cert = credentials.certificate().unwrap();
    assert_eq!(cert.serial, 77);
    assert_eq!(cert.not_before, not_before);
    assert_eq!(
        cert.not_after.duration_since(cert.not_before).unwrap(),
        CERT_BACKDATE + Duration::from_secs(60)
    );
}

#[test]
fn a_renewal_is_installed_only_for_our_key_and_name() {
    let (issuer, root) = ca();
    let old_key = NodeKey::generate().unwrap();
    let (old_chain, _) = chain(&issuer, &old_key, FQDN, 1, 60);
    let (_dir, state) = state_dir(&old_key, &old_chain, &root);
    let new_key = NodeKey::generate().unwrap();
    write_private(&state.next_key(), &new_key.to_pem()).unwrap();

    // A certificate for another key, or another name: refused, nothing
    // written.
    let (other_key_chain, _) = chain(&issuer, &NodeKey::generate().unwrap(), FQDN, 2, 60);
    let (other_name_chain, _) = chain(&issuer, &new_key, "n2.cyphonic.internal", 3, 60);
    for bad in [&other_key_chain, &other_name_chain] {
        let e = Credentials::install_renewal(&state, FQDN, &root, &new_key.to_pem(), bad);
        assert!(e.is_err());
        assert_eq!(std::fs::read_to_string(state.chain()).unwrap(), old_chain);
        assert_eq!(
            std::fs::read_to_string(state.key()).unwrap(),
            *old_key.to_pem()
        );
        assert!(state.next_key().exists());
    }

    let (new_chain, _) = chain(&issuer, &new_key, FQDN, 4, 60);
    let installed =
        Credentials::install_renewal(&state, FQDN, &root, &new_key.to_pem(), &new_chain).unwrap();
    assert_eq!(installed.certificate().unwrap().serial, 4);
    assert_eq!(std::fs::read_to_string(state.chain()).unwrap(), new_chain);
    assert_eq!(
        std::fs::read_to_string(state.key()).unwrap(),
        *new_key.to_pem()
    );
    assert!(!state.next_key().exists());
    let loaded = Credentials::load(&state, FQDN).unwrap();
    assert_eq!(loaded.key_pem, new_key.to_pem());
}

#[test]
fn a_crash_between_the_certificate_and_its_key_is_repaired_at_start() {
    let (issuer, root) = ca();
    let old_key = NodeKey::generate().unwrap();
    let new_key = NodeKey::generate().unwrap();
    // node.pem is the renewed certificate, node.key still the old key.
    let (new_chain, _) = chain(&issuer, &new_key, FQDN, 5, 60);
    let (_dir, state) = state_dir(&old_key, &new_chain, &root);

    // Without the renewal's key there is nothing to repair with.
    let e = Credentials::load(&state, FQDN).err().expect("a mismatch");
    assert!(format!("{e:#}").contains("not the key"), "{e:#}");

    write_private(&state.next_key(), &new_key.to_pem()).unwrap();
    let loaded = Credentials::load(&state, FQDN).unwrap();
    assert_eq!(loaded.key_pem, new_key.to_pem());
    assert_eq!(
        std::fs::read_to_string(state.key()).unwrap(),
        *new_key.to_pem()
    );
    assert!(!state.next_key().exists());
}

#[test]
fn a_renewer_keeps_its_key_across_attempts_and_reuses_one_left_behind() {
    let (issuer, root) = ca();
    let key = NodeKey::generate().unwrap();
    let (chain_pem, _) = chain(&issuer, &key, FQDN, 6, 60);
    let (_dir, state) = state_dir(&key, &chain_pem, &root);
    let credentials = Credentials::load(&state, FQDN).unwrap();
    let statics = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut renewer = Renewer::new(&state.dir, &credentials, statics.clone()).unwrap();

    // The first attempt makes a key and writes it before anything is sent.
    let made = renewer.prepare_key(&credentials).unwrap();
    assert_eq!(std::fs::read_to_string(state.next_key()).unwrap(), *made);
    assert_ne!(made, key.to_pem());
    assert_eq!(renewer.prepare_key(&credentials).unwrap(), made, "kept");

    // A restarted daemon takes the key left behind.
    let mut restarted = Renewer::new(&state.dir, &credentials, statics.clone()).unwrap();
    assert_eq!(restarted.prepare_key(&credentials).unwrap(), made);

    // One that is already node.key (the crash came after installing it)
    // is not used again.
    write_private(&state.next_key(), &key.to_pem()).unwrap();
    let mut again = Renewer::new(&state.dir, &credentials, statics).unwrap();
    let fresh = again.prepare_key(&credentials).unwrap();
    assert_ne!(fresh, key.to_pem());
    assert_eq!(std::fs::read_to_string(state.next_key()).unwrap(), *fresh);
    assert!(matches!(again.on_login(0), LoginUse::Session));
}

#[test]
fn a_failed_attempt_is_counted_and_scheduled_again() {
    let (issuer, root) = ca();
    let key = NodeKey::generate().unwrap();
    let (chain_pem, _) = chain(&issuer, &key, FQDN, 8, 60);
    let (_dir, state) = state_dir(&key, &chain_pem, &root);
    let credentials = Credentials::load(&state, FQDN).unwrap();
    let statics = StaticKeypair::generate(&mut rand::rngs::OsRng);
    let mut renewer = Renewer::new(&state.dir, &credentials, statics).unwrap();
    let refused = anyhow::Error::from(crate::as_client::AsClientError::Refused {
        code: cyphonic_proto::login::code::RENEWAL_TOO_EARLY.into(),
        message: "renew in 3 s".into(),
    })
    .context("renew at 192.0.2.1:4501");
    assert_eq!(failure_of(&refused), renewal::Failure::Refused);
    let before = SystemTime::now();
    assert!(renewer.finish(Err(refused), FQDN, &root).is_none());
    let status = renewer.status();
    assert_eq!(status.cert_renewal_failures, 1);
    assert!(status
        .cert_renewal_error
        .as_deref()
        .is_some_and(|e| e.contains("renewal_too_early")));
    // A refusal waits the longest retry: a twelfth of the minute.
    let next = status.cert_next_renewal.unwrap();
    assert!(
        next >= unix_secs(before) + 4 && next <= unix_secs(before) + 6,
        "{next}"
    );
    let internal = anyhow::Error::from(crate::as_client::AsClientError::Refused {
        code: cyphonic_proto::login::code::INTERNAL.into(),
        message: "later".into(),
    });
    assert_eq!(failure_of(&internal), renewal::Failure::Unreachable);
    assert_eq!(renewer.generation(), 0);
}
