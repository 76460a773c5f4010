//! The operator's commands on the cloud: set it up, manage devices.
//!
//! `init` lays out a data folder:
//!
//! ```text
//! <dir>/            0700
//!   root.pem        root CA certificate (nodes trust it)
//!   root.key        root CA key, 0600 (the AS does not use it); absent with
//!                   `--offline-root <root-dir>`, which gets it instead:
//!                     <root-dir>/root.key  root CA key, 0600
//!                     <root-dir>/root.pem  a copy of the root certificate
//!   as.pem          intermediate CA certificate, which the AS issues with
//!   as.key          intermediate CA key, 0600
//!   cloud.toml      the configuration, every key with its default
//!   cloud.db        the database, migrated
//! ```

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{
    is_dns_label, CloudConfig, ConfigError, Database, AS_CERT_FILE, AS_KEY_FILE, CONFIG_FILE,
    DATABASE_FILE, ROOT_CERT_FILE, ROOT_KEY_FILE,
};
use crate::store::{CertStatus, DeviceKind, DeviceRecord, GeneralNodeRecord, Store, StoreError};
use cyphonic_proto::mac::{BadMac, MacAddr};

/// The shortest password `add_device` and `reset_device` accept from an
/// operator who chooses one.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Random bytes in a generated enrollment password (128 bits).
pub const TOKEN_BYTES: usize = 16;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "{} already exists: this folder already holds a cloud; \
         use another folder, or remove the old one if it is no longer needed",
        path.display()
    )]
    AlreadyInitialized { path: PathBuf },
    #[error(
        "{0:?} is not a valid device ID: use 1 to 63 lowercase letters, digits \
         and '-', not starting or ending with '-'"
    )]
    InvalidDeviceId(String),
    #[error("the password is too short: use at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error(
        "{0:?} is not a valid administrator name: use 1 to 64 lowercase letters, digits, \
         '.', '_', '-' and '@'"
    )]
    InvalidAdminName(String),
    #[error(
        "the administrator password is too short: use at least {MIN_ADMIN_PASSWORD_LEN} characters, \
         or give none and one is made"
    )]
    WeakAdminPassword,
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the CA: {0}")]
    Pki(String),
    #[error(
        "the offline root must be kept apart from the cloud's data folder {}: \
         choose another folder (removable media, an offline machine)",
        path.display()
    )]
    OfflineRootInDataDir { path: PathBuf },
    #[error(
        "the root CA key {} is not there{}: pass --root <folder> with the root's \
         folder (root.key and root.pem, as `cyphonic cloud init --offline-root` wrote them)",
        path.display(),
        if *in_data_dir { " (this cloud keeps its root offline)" } else { "" }
    )]
    RootKeyMissing { path: PathBuf, in_data_dir: bool },
    #[error(
        "the root in {} is not this cloud's root {}: nodes trust only the latter",
        given.display(),
        ours.display()
    )]
    NotOurRoot { given: PathBuf, ours: PathBuf },
    #[error("cannot make the intermediate CA: {0}")]
    Intermediate(String),
    #[error("no <device-id>.csr file in {}", dir.display())]
    NoCsrs { dir: PathBuf },
    #[error("{}: {reason}", path.display())]
    BadCsr { path: PathBuf, reason: String },
    #[error(
        "{} device(s) already exist without a certificate for the key in their CSR, \
         so none was added: {}",
        devices.len(),
        devices.join(", ")
    )]
    DevicesExist { devices: Vec<String> },
    #[error("cannot load the intermediate CA: {0}")]
    Issuer(String),
    #[error(transparent)]
    Mac(BadMac),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}", path.display())]
    Policy {
        path: PathBuf,
        #[source]
        source: crate::policy::PolicyError,
    },
}

/// What `init` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub database_path: PathBuf,
    pub root_cert_path: PathBuf,
    /// In the cloud's folder, or in the offline root's.
    pub root_key_path: PathBuf,
    /// The offline root's folder (root.key and a copy of root.pem), when
    /// `init` put the root key there instead of the cloud's folder.
    pub offline_root: Option<PathBuf>,
    pub as_cert_path: PathBuf,
    pub as_key_path: PathBuf,
    pub domain: String,
}

/// Creates a new cloud in `dir`: root and intermediate CA, configuration
/// and database. Refuses if `dir` already holds any of these files.
pub async fn init(
    dir: &Path,
    domain: &str,
    public_addrs: &[IpAddr],
) -> Result<InitReport, AdminError> {
    init_with_root(dir, domain, public_addrs, None).await
}

/// [`init`], with the root CA key written to `offline_root` (with a copy
/// of the root certificate) instead of `dir`: the cloud runs with its
/// intermediate alone, and the root comes back only to make a new
/// intermediate ([`renew_intermediate`]). Refuses a folder that already
/// holds a root, and the cloud's own folder.
pub async fn init_with_root(
    dir: &Path,
    domain: &str,
    public_addrs: &[IpAddr],
    offline_root: Option<&Path>,
) -> Result<InitReport, AdminError> {
    if let Some(root_dir) = offline_root {
        for name in [ROOT_KEY_FILE, ROOT_CERT_FILE] {
            let path = root_dir.join(name);
            if path.exists() {
                return Err(AdminError::AlreadyInitialized { path });
            }
        }
    }
    for name in [
        CONFIG_FILE,
        ROOT_CERT_FILE,
        ROOT_KEY_FILE,
        AS_CERT_FILE,
        AS_KEY_FILE,
        DATABASE_FILE,
    ] {
        let path = dir.join(name);
        if path.exists() {
            return Err(AdminError::AlreadyInitialized { path });
        }
    }
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| AdminError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    set_mode(dir, 0o700).map_err(io_err(dir))?;
    let dir = dir.canonicalize().map_err(io_err(dir))?;
    let offline_root = match offline_root {
        Some(root_dir) => {
            fs::create_dir_all(root_dir).map_err(io_err(root_dir))?;
            let root_dir = root_dir.canonicalize().map_err(io_err(root_dir))?;
            if root_dir.starts_with(&dir) {
                return Err(AdminError::OfflineRootInDataDir { path: dir });
            }
            set_mode(&root_dir, 0o700).map_err(io_err(&root_dir))?;
            Some(root_dir)
        }
        None => None,
    };

    let mut cfg = CloudConfig::new(&dir);
    cfg.domain = domain.to_owned();
    cfg.public_addrs = public_addrs.to_vec();
    cfg.database = Some(Database::Sqlite(dir.join(DATABASE_FILE)));
    cfg.validate()?;

    let ca = cyphonic_pki::create_ca(domain, SystemTime::now())
        .map_err(|e| AdminError::Pki(e.to_string()))?;
    let report = InitReport {
        config_path: dir.join(CONFIG_FILE),
        database_path: dir.join(DATABASE_FILE),
        root_cert_path: cfg.root_cert_path(),
        root_key_path: offline_root.as_deref().unwrap_or(&dir).join(ROOT_KEY_FILE),
        offline_root: offline_root.clone(),
        as_cert_path: cfg.as_cert_path(),
        as_key_path: cfg.as_key_path(),
        domain: domain.to_owned(),
        dir: dir.clone(),
    };
    // The offline root first: if it cannot be written, the cloud's folder
    // holds nothing yet.
    write_new(&report.root_key_path, &ca.root_key_pem, 0o600)?;
    if let Some(root_dir) = &offline_root {
        write_new(&root_dir.join(ROOT_CERT_FILE), &ca.root_cert_pem, 0o644)?;
    }
    write_new(&report.as_key_path, &ca.intermediate_key_pem, 0o600)?;
    write_new(&report.root_cert_path, &ca.root_cert_pem, 0o644)?;
    write_new(&report.as_cert_path, &ca.intermediate_cert_pem, 0o644)?;
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    write_new(
        &dir.join(crate::config::RELAY_SECRET_FILE),
        &hex::encode(secret),
        0o600,
    )?;
    let config_text = format!(
        "# cyphonic cloud configuration, written by `cyphonic cloud init`.\n\
         # Every key is shown with its value; all but data_dir are optional.\n\n{}",
        cfg.to_toml()
    );
    write_new(&report.config_path, &config_text, 0o600)?;
    // An empty file is an empty SQLite database; creating it here gives it
    // (and the WAL files SQLite derives from it) mode 0600.
    write_new(&report.database_path, "", 0o600)?;
    let store = Store::open(&cfg.database()).await?;
    store.close().await;
    Ok(report)
}

/// What [`renew_intermediate`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateRenewal {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The end of the old intermediate (None: it was unreadable).
    pub previous_not_after: Option<SystemTime>,
    pub not_after: SystemTime,
}

/// Makes a new AS intermediate CA (fresh key, 5 years, not past the root)
/// from the root key in `root_dir` (the cloud's folder when `None`) and
/// puts it in place of `as.pem` / `as.key`. The root certificate must be
/// the one this cloud's nodes trust (`root.pem` in the cloud's folder);
/// certificates the old intermediate issued keep verifying under it. The
/// AS uses the new one from its next start.
pub fn renew_intermediate(
    cfg: &CloudConfig,
    root_dir: Option<&Path>,
) -> Result<IntermediateRenewal, AdminError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| AdminError::Io { path, source }
    };
    let key_path = root_dir.unwrap_or(&cfg.data_dir).join(ROOT_KEY_FILE);
    let root_key_pem = match fs::read_to_string(&key_path) {
        Ok(pem) => zeroize::Zeroizing::new(pem),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(AdminError::RootKeyMissing {
                path: key_path,
                in_data_dir: root_dir.is_none(),
            })
        }
        Err(e) => return Err(io_err(&key_path)(e)),
    };
    let ours = cfg.root_cert_path();
    let root_pem = fs::read_to_string(&ours).map_err(io_err(&ours))?;
    if let Some(root_dir) = root_dir {
        let given = root_dir.join(ROOT_CERT_FILE);
        match fs::read_to_string(&given) {
            Ok(copy) if copy.trim() != root_pem.trim() => {
                return Err(AdminError::NotOurRoot { given, ours })
            }
            Ok(_) => {}
            // The key alone is enough: it is checked against our root.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&given)(e)),
        }
    }
    if let Err(e) = cyphonic_pki::NodeKey::from_pem(&root_key_pem) {
        return Err(AdminError::Intermediate(format!(
            "{} is not a root key: {e}",
            key_path.display()
        )));
    }
    let made =
        cyphonic_pki::create_intermediate(&root_pem, &root_key_pem, &cfg.domain, SystemTime::now())
            .map_err(|e| match e {
                cyphonic_pki::PkiError::Key(_) => AdminError::NotOurRoot {
                    given: key_path.clone(),
                    ours: ours.clone(),
                },
                e => AdminError::Intermediate(e.to_string()),
            })?;
    // Checked as the AS will load it.
    cyphonic_pki::Issuer::from_pem(&made.cert_pem, &made.key_pem)
        .map_err(|e| AdminError::Intermediate(e.to_string()))?;
    let previous_not_after = fs::read_to_string(cfg.as_cert_path())
        .ok()
        .zip(
            fs::read_to_string(cfg.as_key_path())
                .ok()
                .map(zeroize::Zeroizing::new),
        )
        .and_then(|(c, k)| cyphonic_pki::Issuer::from_pem(&c, &k).ok())
        .map(|i| i.not_after());
    // Each file is replaced whole (a new file renamed over the old); the
    // key goes first. A crash between the two leaves a pair the AS refuses
    // to load with a clear error, and running this again mends it.
    let (cert_path, key_path) = (cfg.as_cert_path(), cfg.as_key_path());
    replace_file(&key_path, &made.key_pem, 0o600)?;
    replace_file(&cert_path, &made.cert_pem, 0o644)?;
    Ok(IntermediateRenewal {
        cert_path,
        key_path,
        previous_not_after,
        not_after: made.not_after,
    })
}

/// Writes `contents` to a new file beside `path` and renames it over
/// `path`.
fn replace_file(path: &Path, contents: &str, mode: u32) -> Result<(), AdminError> {
    let mut suffix = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", hex::encode(suffix)));
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        AdminError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// The password is wiped on drop.
impl Drop for EnrollmentPassword {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl zeroize::ZeroizeOnDrop for EnrollmentPassword {}

/// A device's one-time enrollment password, as the operator hands it to
/// the device's owner.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentPassword {
    pub password: String,
    /// Made here (the operator chose none): show it, once.
    pub generated: bool,
}

impl std::fmt::Debug for EnrollmentPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentPassword")
            .field("password", &"<redacted>")
            .field("generated", &self.generated)
            .finish()
    }
}

/// What `add_device` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedDevice {
    pub device: DeviceRecord,
    pub password: EnrollmentPassword,
}

/// What `reset_device` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReset {
    pub device_id: String,
    pub password: EnrollmentPassword,
    /// Serials of the certificates it revoked.
    pub revoked: Vec<u64>,
    /// How many sessions ended.
    pub ended_sessions: usize,
}

/// A random enrollment password of [`TOKEN_BYTES`] bytes from the OS,
/// as four dash-separated groups of 8 hex digits.
pub fn generate_password() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes
        .chunks(4)
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join("-")
}

/// The operator's password if they chose one (checked), or a fresh one.
fn enrollment_password(chosen: Option<&str>) -> Result<EnrollmentPassword, AdminError> {
    match chosen {
        Some(pw) if pw.chars().count() < MIN_PASSWORD_LEN => Err(AdminError::WeakPassword),
        Some(pw) => Ok(EnrollmentPassword {
            password: pw.to_owned(),
            generated: false,
        }),
        None => Ok(EnrollmentPassword {
            password: generate_password(),
            generated: true,
        }),
    }
}

/// Adds a node `<device_id>.<domain>` and gives it its VIPs and a one-time
/// enrollment password: the operator's, or (without one) a random one of
/// 128 bits. The first enrollment spends it.
pub async fn add_device(
    cfg: &CloudConfig,
    device_id: &str,
    password: Option<&str>,
) -> Result<AddedDevice, AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = add_device_in(&store, cfg, device_id, password).await;
    store.close().await;
    result
}

/// [`add_device`] in an open store (the console's).
pub async fn add_device_in(
    store: &Store,
    cfg: &CloudConfig,
    device_id: &str,
    password: Option<&str>,
) -> Result<AddedDevice, AdminError> {
    if !is_dns_label(device_id) {
        return Err(AdminError::InvalidDeviceId(device_id.to_owned()));
    }
    let password = enrollment_password(password)?;
    let fqdn = format!("{device_id}.{}", cfg.domain);
    let device = store
        .add_device(
            device_id,
            &password.password,
            &fqdn,
            cfg.vip4_prefix,
            cfg.vip6_prefix,
        )
        .await?;
    Ok(AddedDevice { device, password })
}

/// Lets a node enroll again: a new one-time enrollment password (the
/// operator's, or a random one), its certificates revoked and its sessions
/// ended, so only whoever enrolls with the new password is the device from
/// now on.
pub async fn reset_device(
    cfg: &CloudConfig,
    device_id: &str,
    password: Option<&str>,
) -> Result<DeviceReset, AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = reset_device_in(&store, device_id, password).await;
    store.close().await;
    result
}

/// [`reset_device`] in an open store (the console's).
pub async fn reset_device_in(
    store: &Store,
    device_id: &str,
    password: Option<&str>,
) -> Result<DeviceReset, AdminError> {
    let password = enrollment_password(password)?;
    let reset = store
        .reset_credential(device_id, &password.password)
        .await?;
    Ok(DeviceReset {
        device_id: device_id.to_owned(),
        password,
        revoked: reset.revoked,
        ended_sessions: reset.ended_sessions.len(),
    })
}

/// Devices [`add_devices_from_csrs`] adds per transaction: the write lock
/// a running cloud's Logins and Registrations wait for is held for one
/// read of the VIPs in use and this many insertions at a time.
const PROVISION_BATCH: usize = 100;

/// What [`add_devices_from_csrs`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The devices added now, by device ID.
    pub added: Vec<DeviceRecord>,
    /// Devices an earlier run added from the same CSRs: their certificate
    /// chains were written out again.
    pub already: Vec<String>,
}

/// One `<device-id>.csr` of a provisioning folder, checked.
struct DeviceCsr {
    device_id: String,
    csr_pem: String,
    key: [u8; 32],
}

/// Adds a node for every `<device-id>.csr` in `dir` (PKCS#10 with an
/// Ed25519 key, as `openssl req` or a factory's key store makes it) and
/// issues its certificate for the CSR's key at once: for fleets whose
/// keys are made where the devices are built, so that no enrollment
/// password has to reach each of them. Each certificate chain (the node
/// certificate, then the intermediate) goes to `<device-id>.pem` beside
/// its CSR; the device installs it with its key (`cyphonic node enroll
/// --certificate`) and logs in. The devices have no enrollment password
/// (`device reset` gives one).
///
/// Every CSR is checked before anything is added. A device that already
/// exists is taken as added by an earlier run when it holds a good
/// certificate for the key in its CSR (its chain is written out again);
/// otherwise nothing is added. Devices go in in batches, each in one
/// transaction with its certificates.
pub async fn add_devices_from_csrs(
    cfg: &CloudConfig,
    dir: &Path,
) -> Result<Provisioned, AdminError> {
    let csrs = read_csrs(dir)?;
    let read =
        |path: PathBuf| fs::read_to_string(&path).map_err(|source| AdminError::Io { path, source });
    let root_pem = read(cfg.root_cert_path())?;
    let issuer_pem = read(cfg.as_cert_path())?;
    let issuer_key = zeroize::Zeroizing::new(read(cfg.as_key_path())?);
    let issuer = cyphonic_pki::Issuer::from_pem(&issuer_pem, &issuer_key)
        .map_err(|e| AdminError::Issuer(e.to_string()))?;
    if issuer.not_after() <= SystemTime::now() {
        return Err(AdminError::Issuer(format!(
            "{} has expired: make a new one with `cyphonic cloud intermediate renew`",
            cfg.as_cert_path().display()
        )));
    }
    let verifier =
        cyphonic_pki::Verifier::from_pem(&root_pem).map_err(|e| AdminError::Pki(e.to_string()))?;
    let store = Store::open(&cfg.database()).await?;
    let result = provision(&store, cfg, &issuer, &verifier, dir, csrs).await;
    store.close().await;
    result
}

/// The `<device-id>.csr` files of `dir`, by device ID, each checked.
fn read_csrs(dir: &Path) -> Result<Vec<DeviceCsr>, AdminError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| AdminError::Io { path, source }
    };
    let mut csrs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("csr") {
            continue;
        }
        let device_id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if !is_dns_label(&device_id) {
            return Err(AdminError::InvalidDeviceId(device_id));
        }
        let csr_pem = fs::read_to_string(&path).map_err(io_err(&path))?;
        let key = cyphonic_pki::csr_key(&csr_pem).map_err(|e| AdminError::BadCsr {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        csrs.push(DeviceCsr {
            device_id,
            csr_pem,
            key,
        });
    }
    if csrs.is_empty() {
        return Err(AdminError::NoCsrs {
            dir: dir.to_owned(),
        });
    }
    csrs.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    Ok(csrs)
}

async fn provision(
    store: &Store,
    cfg: &CloudConfig,
    issuer: &cyphonic_pki::Issuer,
    verifier: &cyphonic_pki::Verifier,
    dir: &Path,
    csrs: Vec<DeviceCsr>,
) -> Result<Provisioned, AdminError> {
    let chain_of = |cert_pem: &str| {
        let mut chain = cert_pem.trim_end().to_owned();
        chain.push('\n');
        chain.push_str(issuer.cert_pem());
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain
    };
    let now = SystemTime::now();
    // Devices already there: added by an earlier run from the same CSR
    // (a certificate for its key), or someone else's.
    let (mut new, mut already, mut conflicts) = (Vec::new(), Vec::new(), Vec::new());
    for csr in csrs {
        let Some(device) = store.device(&csr.device_id).await? else {
            new.push(csr);
            continue;
        };
        let mut issued = None;
        for cert in store.certificates_of(&csr.device_id).await? {
            let Some(leaf) = cyphonic_pki::pem_to_der_chain(&cert.cert_pem)
                .ok()
                .and_then(|c| c.into_iter().next())
            else {
                continue;
            };
            let chain = [leaf, issuer.cert_der().to_vec()];
            let key = verifier
                .verify_node(&chain, Some(&device.fqdn), now)
                .map(|n| n.public_key);
            if cert.status == CertStatus::Good && key.ok() == Some(csr.key) {
                issued = Some(cert);
            }
        }
        match issued {
            Some(cert) if device.kind == DeviceKind::Node && !device.disabled => {
                already.push((csr.device_id, chain_of(&cert.cert_pem)))
            }
            _ => conflicts.push(csr.device_id),
        }
    }
    if !conflicts.is_empty() {
        return Err(AdminError::DevicesExist { devices: conflicts });
    }
    for (device_id, chain) in &already {
        write_chain(dir, device_id, chain)?;
    }
    let not_before = now
        .checked_sub(crate::as_proto::CERT_BACKDATE)
        .unwrap_or(now);
    let not_after = now + cfg.cert_validity();
    let mut added = Vec::with_capacity(new.len());
    for batch in new.chunks(PROVISION_BATCH) {
        let mut serials = std::collections::HashSet::new();
        while serials.len() < batch.len() {
            serials.insert(store.next_serial().await?);
        }
        let mut serials = serials.into_iter();
        let devices: Vec<(String, String)> = batch
            .iter()
            .map(|c| {
                (
                    c.device_id.clone(),
                    format!("{}.{}", c.device_id, cfg.domain),
                )
            })
            .collect();
        let done = store
            .add_devices_with_certificates(&devices, cfg.vip4_prefix, cfg.vip6_prefix, |device| {
                let csr = batch
                    .iter()
                    .find(|c| c.device_id == device.device_id)
                    .ok_or_else(|| StoreError::NoSuchDevice(device.device_id.clone()))?;
                let serial = serials
                    .next()
                    .ok_or_else(|| StoreError::InvalidInput("no serial left".into()))?;
                let cert = issuer
                    .issue_node(
                        &csr.csr_pem,
                        &device.fqdn,
                        &[device.vip4.into(), device.vip6.into()],
                        serial,
                        not_before,
                        not_after,
                    )
                    .map_err(|e| StoreError::InvalidInput(e.to_string()))?;
                Ok(crate::store::CertificateRecord::issued(device, &cert, now))
            })
            .await?;
        for (device, cert) in done {
            write_chain(dir, &device.device_id, &chain_of(&cert.cert_pem))?;
            added.push(device);
        }
    }
    Ok(Provisioned {
        added,
        already: already.into_iter().map(|(id, _)| id).collect(),
    })
}

/// Writes `<dir>/<device_id>.pem` whole (a new file renamed over it), not
/// synced: it is public, and `add_devices_from_csrs` run again writes it
/// again from the database.
fn write_chain(dir: &Path, device_id: &str, chain: &str) -> Result<(), AdminError> {
    let path = dir.join(format!("{device_id}.pem"));
    let tmp = dir.join(format!(".{device_id}.pem.tmp"));
    fs::write(&tmp, chain)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|source| {
            let _ = fs::remove_file(&tmp);
            AdminError::Io { path, source }
        })
}

/// Adds general node `<name>.<domain>`, which adapter `adapter_id` (a node)
/// serves on its LAN where it shows up with `mac`, and gives it its VIPs.
pub async fn add_general_node(
    cfg: &CloudConfig,
    adapter_id: &str,
    mac: &str,
    name: &str,
) -> Result<GeneralNodeRecord, AdminError> {
    if !is_dns_label(name) {
        return Err(AdminError::InvalidDeviceId(name.to_owned()));
    }
    let mac: MacAddr = mac.parse().map_err(AdminError::Mac)?;
    let fqdn = format!("{name}.{}", cfg.domain);
    let store = Store::open(&cfg.database()).await?;
    let result = store
        .add_general_node(
            adapter_id,
            &mac.to_string(),
            name,
            &fqdn,
            cfg.vip4_prefix,
            cfg.vip6_prefix,
        )
        .await;
    store.close().await;
    Ok(result?)
}

/// The general nodes of one adapter, or of all.
pub async fn list_general_nodes(
    cfg: &CloudConfig,
    adapter_id: Option<&str>,
) -> Result<Vec<GeneralNodeRecord>, AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = store.general_nodes(adapter_id).await;
    store.close().await;
    Ok(result?)
}

/// Removes a general node: its device, its sessions and certificates, as
/// `remove_device` does for any device.
pub async fn remove_general_node(cfg: &CloudConfig, name: &str) -> Result<(), AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = match store.device(name).await {
        Ok(Some(d)) if d.kind == DeviceKind::General => store.remove_device(name).await,
        Ok(Some(_)) => Err(StoreError::InvalidInput(format!(
            "{name} is not a general node"
        ))),
        Ok(None) => Err(StoreError::NoSuchDevice(name.to_owned())),
        Err(e) => Err(e),
    };
    store.close().await;
    Ok(result?)
}

/// Every device, ordered by device ID.
pub async fn list_devices(cfg: &CloudConfig) -> Result<Vec<DeviceRecord>, AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = store.devices().await;
    store.close().await;
    Ok(result?)
}

/// Revokes a certificate: it can no longer log in, and the sessions it
/// opened end.
/// Revokes every certificate of `device_id` still good; returns their
/// serials. Its sessions end with them, and its peers close their tunnels
/// with it once the NMS notices (protocol §5.14).
pub async fn revoke_device(cfg: &CloudConfig, device_id: &str) -> Result<Vec<u64>, AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = revoke_device_in(&store, device_id).await;
    store.close().await;
    result
}

/// [`revoke_device`] in an open store (the console's).
pub async fn revoke_device_in(store: &Store, device_id: &str) -> Result<Vec<u64>, AdminError> {
    if store.device(device_id).await?.is_none() {
        return Err(StoreError::NoSuchDevice(device_id.to_owned()).into());
    }
    let mut revoked = Vec::new();
    for c in store.certificates_of(device_id).await? {
        if c.status == CertStatus::Good {
            store
                .set_certificate_status(c.serial, CertStatus::Revoked)
                .await?;
            revoked.push(c.serial);
        }
    }
    Ok(revoked)
}

/// Disables (or enables again) a device: a disabled device's sessions end,
/// it can neither enroll nor log in, and its peers close their tunnels
/// with it.
pub async fn set_device_disabled(
    cfg: &CloudConfig,
    device_id: &str,
    disabled: bool,
) -> Result<(), AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = store.set_device_disabled(device_id, disabled).await;
    store.close().await;
    Ok(result?)
}

pub async fn revoke_certificate(cfg: &CloudConfig, serial: u64) -> Result<(), AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = store
        .set_certificate_status(serial, CertStatus::Revoked)
        .await;
    store.close().await;
    Ok(result?)
}

/// The shortest console administrator password accepted.
pub const MIN_ADMIN_PASSWORD_LEN: usize = 12;

/// Whether `name` may name a console administrator: 1 to 64 of lowercase
/// letters, digits, '.', '_', '-' and '@'.
pub fn is_admin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b))
}

/// Adds a console administrator; without `password`, a random one
/// (returned, to show once).
pub async fn add_admin(
    cfg: &CloudConfig,
    name: &str,
    password: Option<&str>,
) -> Result<EnrollmentPassword, AdminError> {
    if !is_admin_name(name) {
        return Err(AdminError::InvalidAdminName(name.to_owned()));
    }
    let password = match password {
        Some(pw) if pw.chars().count() < MIN_ADMIN_PASSWORD_LEN => {
            return Err(AdminError::WeakAdminPassword)
        }
        Some(pw) => EnrollmentPassword {
            password: pw.to_owned(),
            generated: false,
        },
        None => EnrollmentPassword {
            password: generate_password(),
            generated: true,
        },
    };
    let store = Store::open(&cfg.database()).await?;
    let result = store.add_admin(name, &password.password).await;
    store.close().await;
    result?;
    Ok(password)
}

pub async fn list_admins(
    cfg: &CloudConfig,
) -> Result<Vec<crate::console::store::Admin>, AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = store.admins().await;
    store.close().await;
    Ok(result?)
}

/// Removes a console administrator and ends its sessions.
pub async fn remove_admin(cfg: &CloudConfig, name: &str) -> Result<(), AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = store.remove_admin(name).await;
    store.close().await;
    Ok(result?)
}

/// What `policy set` stored.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub version: u64,
    pub summary: String,
}

/// Checks the policy document at `path` (its TOML, rules and the devices
/// it names, which must exist) and stores it. A running NMS applies it
/// within [`crate::run::SESSION_RECHECK`].
pub async fn set_policy(cfg: &CloudConfig, path: &Path) -> Result<PolicySet, AdminError> {
    let document = fs::read_to_string(path).map_err(|source| AdminError::Io {
        path: path.to_owned(),
        source,
    })?;
    let store = Store::open(&cfg.database()).await?;
    let result = set_policy_in(&store, &document, path).await;
    store.close().await;
    result
}

/// [`set_policy`] of a document in hand, in an open store (the console's);
/// `source` names it in errors.
pub async fn set_policy_in(
    store: &Store,
    document: &str,
    source: &Path,
) -> Result<PolicySet, AdminError> {
    let bad = |e| AdminError::Policy {
        path: source.to_owned(),
        source: e,
    };
    let parsed = crate::policy::parse(document).map_err(bad)?;
    let known = store
        .devices()
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    crate::policy::check_devices(&parsed, &known).map_err(bad)?;
    let version = store.set_policy(document, SystemTime::now()).await?;
    Ok(PolicySet {
        version,
        summary: crate::policy::describe(&parsed.policy),
    })
}

/// The stored policy document and its version (`None`: none was set,
/// everything is allowed).
pub async fn show_policy(cfg: &CloudConfig) -> Result<Option<(u64, String)>, AdminError> {
    let store = Store::open(&cfg.database()).await?;
    let result = store.policy().await;
    store.close().await;
    Ok(result?)
}

/// Writes a file that must not exist yet, with `mode` on Unix.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), AdminError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let io_err = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            AdminError::AlreadyInitialized {
                path: path.to_owned(),
            }
        } else {
            io_err(e)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}
