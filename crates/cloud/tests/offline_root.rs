//! The security review's finding "`cloud init` leaves the root CA key on
//! the AS host": `init --offline-root` writes the root key elsewhere, the
//! cloud enrolls and renews with its intermediate alone, and a new
//! intermediate made from the offline root leaves every node verifying.

mod common;

use std::path::Path;
use std::time::SystemTime;

use common::{CloudDir, Running};
use cyphonic_cloud::admin::{self, AdminError};
use cyphonic_cloud::run::Roles;
use cyphonic_pki::{pem_to_der_chain, Verifier};

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The base64 body of a PEM, joined: what any copy of the key contains.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

fn verify(dir: &CloudDir, chain_pem: &str, fqdn: &str) {
    let root = std::fs::read_to_string(dir.cfg.root_cert_path()).unwrap();
    Verifier::from_pem(&root)
        .unwrap()
        .verify_node(
            &pem_to_der_chain(chain_pem).unwrap(),
            Some(fqdn),
            SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{fqdn}'s chain does not verify: {e}"));
}

#[tokio::test]
async fn a_cloud_with_an_offline_root_enrolls_and_renews_its_intermediate_from_it() {
    let dir = CloudDir::with_offline_root(Some("offline-root")).await;
    let offline = dir.tmp().join("offline-root");
    let data = dir.cfg.data_dir.clone();

    // On disk: the root key is in the offline folder only, with a copy of
    // the root certificate; nothing in the cloud's folder holds the key.
    let root_key = std::fs::read_to_string(offline.join("root.key")).unwrap();
    assert!(root_key.contains("PRIVATE KEY"));
    assert_eq!(
        std::fs::read_to_string(offline.join("root.pem")).unwrap(),
        std::fs::read_to_string(dir.cfg.root_cert_path()).unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&offline.join("root.key")), 0o600);
        assert_eq!(mode(&offline), 0o700);
    }
    let body = pem_body(&root_key);
    let check_no_root_key = |when: &str| {
        assert!(
            !data.join("root.key").exists(),
            "{when}: root.key in the cloud's folder"
        );
        for path in files(&data) {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&body),
                "{when}: {} holds the root key",
                path.display()
            );
        }
    };
    check_no_root_key("after init");

    // The cloud runs without it: a node enrolls and its chain verifies.
    let pw1 = dir.add("n1", None).await;
    let pw2 = dir.add("n2", None).await;
    let cloud = Running::start(&dir, Roles::All).await;
    let n1 = dir.enroll(dir.as_v4(), "n1", &pw1).await.unwrap();
    verify(&dir, &n1.0.cert_chain_pem, "n1.cyphonic.internal");
    dir.login(&n1).await;
    cloud.stop().await;
    check_no_root_key("after a run");
    let old_intermediate = std::fs::read_to_string(dir.cfg.as_cert_path()).unwrap();

    // A new intermediate needs the root: without it, a clear refusal and
    // nothing changed.
    let err = admin::renew_intermediate(&dir.cfg, None).unwrap_err();
    assert!(matches!(err, AdminError::RootKeyMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("--root"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.cfg.as_cert_path()).unwrap(),
        old_intermediate
    );
    // Another installation's root is refused too.
    let other = CloudDir::with_offline_root(Some("elsewhere")).await;
    let err =
        admin::renew_intermediate(&dir.cfg, Some(&other.tmp().join("elsewhere"))).unwrap_err();
    assert!(matches!(err, AdminError::NotOurRoot { .. }), "{err:?}");

    // With the offline root: a new intermediate, the same root.
    let renewal = admin::renew_intermediate(&dir.cfg, Some(&offline)).unwrap();
    let new_intermediate = std::fs::read_to_string(dir.cfg.as_cert_path()).unwrap();
    assert_ne!(new_intermediate, old_intermediate);
    assert!(renewal.not_after > SystemTime::now());
    check_no_root_key("after the renewal");

    // The restarted cloud issues under the new intermediate; the node
    // enrolled before still verifies and still logs in.
    let cloud = Running::start(&dir, Roles::All).await;
    let n2 = dir.enroll(dir.as_v4(), "n2", &pw2).await.unwrap();
    verify(&dir, &n2.0.cert_chain_pem, "n2.cyphonic.internal");
    let issuer_of = |chain: &str| pem_to_der_chain(chain).unwrap()[1].clone();
    assert_eq!(
        issuer_of(&n2.0.cert_chain_pem),
        pem_to_der_chain(&new_intermediate).unwrap()[0]
    );
    assert_eq!(
        issuer_of(&n1.0.cert_chain_pem),
        pem_to_der_chain(&old_intermediate).unwrap()[0]
    );
    verify(&dir, &n1.0.cert_chain_pem, "n1.cyphonic.internal");
    dir.login(&n1).await;
    dir.login(&n2).await;
    cloud.stop().await;
}

#[tokio::test]
async fn the_offline_root_is_refused_inside_the_clouds_folder_or_over_another_root() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = tmp.path().join("cloud");
    let err = admin::init_with_root(&cloud, "cyphonic.internal", &[], Some(&cloud.join("root")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AdminError::OfflineRootInDataDir { .. }),
        "{err:?}"
    );

    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("root.key"), b"precious").unwrap();
    let err = admin::init_with_root(
        &tmp.path().join("c2"),
        "cyphonic.internal",
        &[],
        Some(&root),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, AdminError::AlreadyInitialized { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(root.join("root.key")).unwrap(), b"precious");
    assert!(
        !tmp.path().join("c2").exists(),
        "nothing made for the cloud"
    );
}
