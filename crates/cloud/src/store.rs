//! The cloud's persistent state: devices and their virtual IPs, issued
//! certificates, and Login sessions, in SQLite or PostgreSQL through sqlx.
//!
//! One query layer serves both (sqlx's `Any` driver): every statement is
//! written once, with `$N` parameters, which SQLite binds by number too.
//! The schemas are equal column for column: `migrations/` is SQLite's
//! (STRICT tables; already applied migrations are never edited, their
//! checksums are recorded in every database), `migrations-postgres/` is
//! PostgreSQL's (BIGINT for INTEGER, BYTEA for BLOB). Both are embedded in
//! the binary; [`Store::open`] applies those the database lacks.
//!
//! SQLite runs in WAL mode with `synchronous = FULL` and foreign keys on, so
//! a committed change survives a crash of the process or the machine; one
//! file, one host. PostgreSQL may be shared by several cloud instances
//! (separate processes, separate hosts).
//!
//! Every read-modify-write (the lowest free VIP, the Login number, the NMS
//! counter floor, replay floors, certificate issue order, the policy
//! version) runs in a transaction from [`Store::write_tx`], which holds the
//! database's one write lock: `BEGIN IMMEDIATE` on SQLite, a transaction
//! advisory lock on PostgreSQL, which every instance on the database takes.
//! Writers are serialised across processes on either backend, and each one
//! reads what the previous one committed.
//!
//! Sessions end here (Login supersedes older ones, a Registration ends the
//! device's older ones, revocation, disabling, removal, reset, expiry);
//! every deletion is announced to this process's NMS through
//! [`Store::subscribe_ended_sessions`], so a running NMS drops them at once.
//! Another process (the CLI, an AS on another host, another cloud instance
//! on the same PostgreSQL database) cannot reach it: the NMS also re-checks
//! the sessions it holds ([`Store::live_sessions`]).

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use rand::RngCore;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Transaction};
use tokio::sync::broadcast;

use crate::config::{Database, Ipv4Prefix, Ipv6Prefix};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("./migrations");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("./migrations-postgres");

/// The key of the PostgreSQL advisory lock [`Store::write_tx`] takes: one
/// for the whole database, like SQLite's write lock ("cyphonic" in ASCII).
const POSTGRES_WRITE_LOCK: i64 = 0x6379_7068_6f6e_6963;
/// Connections per store: SQLite has one writer at a time anyway;
/// PostgreSQL serves several instances, each with its own pool.
const SQLITE_CONNECTIONS: u32 = 4;
const POSTGRES_CONNECTIONS: u32 = 8;

/// Host number (offset in the VIP prefixes) reserved for the cloud side.
pub const CLOUD_HOST_NUMBER: u128 = 1;
/// The lowest host number a device may get.
const FIRST_DEVICE_HOST_NUMBER: u128 = CLOUD_HOST_NUMBER + 1;
/// A Login ends the device's sessions opened at least this long before it.
/// Younger ones stay until one of the device's sessions registers at the
/// NMS ([`Store::record_registration`]): a node tries its Login at two
/// ports at once and keeps the first answer, so the session it uses may be
/// the older of two opened within its client timeout (5 s).
pub const LOGIN_OVERLAP: Duration = Duration::from_secs(10);
/// Ended-session announcements a slow subscriber may fall behind by before
/// it is told it lagged (and re-checks everything it holds).
const ENDED_SESSIONS_BACKLOG: usize = 1024;
/// Session IDs per query in [`Store::live_sessions`] (SQLite's and
/// PostgreSQL's parameter limits are far above).
const LIVE_SESSIONS_CHUNK: usize = 500;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("device {0} already exists")]
    DeviceExists(String),
    #[error("the FQDN {0} already belongs to another device")]
    FqdnTaken(String),
    #[error("device {0} does not exist")]
    NoSuchDevice(String),
    #[error("console administrator {0} already exists")]
    AdminExists(String),
    #[error("console administrator {0} does not exist")]
    NoSuchAdmin(String),
    /// Unknown device and wrong password alike, so a caller cannot probe
    /// which device IDs exist.
    #[error("wrong device ID or password")]
    BadCredentials,
    /// The right password, but it already enrolled the device (or an
    /// operator replaced it since): enrollment passwords are one-time.
    #[error(
        "the enrollment password of device {0} was already used; ask the operator for a new one \
         (`cyphonic cloud device reset {0}`)"
    )]
    CredentialUsed(String),
    #[error("device {0} is disabled")]
    DeviceDisabled(String),
    #[error("certificate {0:#x} is not recorded")]
    NoSuchCertificate(u64),
    #[error("certificate serial {0:#x} is already recorded")]
    SerialExists(u64),
    #[error("certificate {0:#x} has been revoked")]
    CertificateRevoked(u64),
    /// Each certificate is renewed once: this one already was, by
    /// `successor` (the first certificate of its device issued since).
    #[error("certificate {serial:#x} was already renewed (by {:#x})", successor.serial)]
    AlreadyRenewed {
        serial: u64,
        successor: Box<CertificateRecord>,
    },
    #[error("session {0:#x} does not exist (ended or expired)")]
    NoSuchSession(u64),
    #[error("the NMS's signaling counters are used up (the stored floor is near 2^64)")]
    CountersExhausted,
    #[error("no free virtual IP is left in {vip4_prefix} / {vip6_prefix}")]
    VipsExhausted {
        vip4_prefix: Ipv4Prefix,
        vip6_prefix: Ipv6Prefix,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `database` shows no password.
    #[error("cannot open the database {database}: {source}")]
    Open {
        database: Database,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot bring the database {database} up to date: {source}")]
    Migrate {
        database: Database,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("password hashing failed: {0}")]
    Password(String),
    #[error("corrupt row in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Runs the node daemon and logs in itself.
    Node,
    /// A general device behind an adapter, which acts for it.
    General,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Node => "node",
            DeviceKind::General => "general",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "node" => Ok(DeviceKind::Node),
            "general" => Ok(DeviceKind::General),
            other => Err(format!("unknown device kind {other:?}")),
        }
    }
}

/// A device and its permanent addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub kind: DeviceKind,
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub created_at: SystemTime,
    pub disabled: bool,
}

/// A general node: its device, the adapter that serves it, and the MAC it
/// shows up with on the adapter's LAN (lowercase, colon-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralNodeRecord {
    pub device: DeviceRecord,
    pub adapter_id: String,
    pub mac: String,
}

/// Whether a certificate may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertStatus {
    Good,
    Revoked,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Good => "good",
            CertStatus::Revoked => "revoked",
        }
    }
}

impl fmt::Display for CertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "good" => Ok(CertStatus::Good),
            "revoked" => Ok(CertStatus::Revoked),
            other => Err(format!("unknown certificate status {other:?}")),
        }
    }
}

/// A certificate the intermediate CA issued to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Positive and below 2^63 (a signed 64-bit column).
    pub serial: u64,
    pub device_id: String,
    pub fqdn: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub issued_at: SystemTime,
    pub status: CertStatus,
    pub cert_pem: String,
}

impl CertificateRecord {
    /// The record of `cert`, just issued to `device` at `now`.
    pub fn issued(device: &DeviceRecord, cert: &cyphonic_pki::IssuedCert, now: SystemTime) -> Self {
        CertificateRecord {
            serial: cert.serial,
            device_id: device.device_id.clone(),
            fqdn: device.fqdn.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            issued_at: now,
            status: CertStatus::Good,
            cert_pem: cert.cert_pem.clone(),
        }
    }
}

/// The common key is wiped on drop.
impl Drop for SessionRecord {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.common_key);
    }
}

impl zeroize::ZeroizeOnDrop for SessionRecord {}

/// A Login session: the common key a node and the NMS share for signaling.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Random and non-zero.
    pub session_id: u64,
    pub device_id: String,
    pub fqdn: String,
    pub common_key: [u8; 32],
    pub cert_serial: u64,
    pub expires_at: SystemTime,
    /// The Login's number: a later Login (of any device) has a greater one.
    pub login_seq: u64,
    /// Node -> NMS counters at or below this were accepted by an NMS and
    /// are refused from now on (the counter of the session's latest
    /// Registration; 0 before any).
    pub replay_floor: u64,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("session_id", &self.session_id)
            .field("device_id", &self.device_id)
            .field("fqdn", &self.fqdn)
            .field("common_key", &"<redacted>")
            .field("cert_serial", &self.cert_serial)
            .field("expires_at", &self.expires_at)
            .field("login_seq", &self.login_seq)
            .field("replay_floor", &self.replay_floor)
            .finish()
    }
}

/// A device whose enrollment password just verified: what
/// [`Store::record_enrollment`] needs to spend that very password.
#[derive(Clone)]
pub struct EnrollmentGrant {
    pub device: DeviceRecord,
    /// The password hash that verified; spending it fails if an operator
    /// replaced it meanwhile.
    credential: String,
}

impl fmt::Debug for EnrollmentGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentGrant")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// What [`Store::reset_credential`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialReset {
    /// Serials of the certificates it revoked (those still good).
    pub revoked: Vec<u64>,
    /// Sessions it ended.
    pub ended_sessions: Vec<u64>,
}

/// The cloud's database. Cheap to clone: clones share one connection pool
/// and one announcement channel of ended sessions.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    ended: broadcast::Sender<Vec<u64>>,
}

/// Which database a [`Store`] speaks to: where the SQL differs (taking the
/// write lock, migrations), this decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

const DEVICE_COLUMNS: &str = "device_id, kind, fqdn, vip4, vip6, created_at, disabled";
const CERTIFICATE_COLUMNS: &str =
    "serial, device_id, fqdn, not_before, not_after, issued_at, status, cert_pem";

impl Store {
    /// Opens the configured database and applies the migrations it lacks:
    /// an SQLite file (created if missing), or a PostgreSQL database (which
    /// must exist; its tables are created on first use). Everything that
    /// opens the store comes here (`CloudConfig::database`).
    pub async fn open(database: &Database) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let open_error = |source| StoreError::Open {
            database: database.clone(),
            source,
        };
        let (backend, url, options) = match database {
            Database::Sqlite(path) => (
                Backend::Sqlite,
                sqlite_url(path).map_err(open_error)?,
                AnyPoolOptions::new()
                    .max_connections(SQLITE_CONNECTIONS)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // Per connection: the URL carries none of these.
                            conn.execute(SQLITE_PRAGMAS).await?;
                            Ok(())
                        })
                    }),
            ),
            Database::Postgres(url) => (
                Backend::Postgres,
                url.clone(),
                AnyPoolOptions::new().max_connections(POSTGRES_CONNECTIONS),
            ),
        };
        let pool = options.connect(&url).await.map_err(open_error)?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        // On PostgreSQL the migrator holds an advisory lock of its own, so
        // instances starting together migrate one after the other.
        migrator
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                database: database.clone(),
                source,
            })?;
        let (ended, _) = broadcast::channel(ENDED_SESSIONS_BACKLOG);
        Ok(Store {
            pool,
            backend,
            ended,
        })
    }

    /// Begins a transaction holding the database's write lock, which every
    /// writer of this database takes, in this process or another: SQLite's
    /// (`BEGIN IMMEDIATE`), or on PostgreSQL an advisory lock held until
    /// commit or rollback. A read-modify-write in it (such as "the lowest
    /// free VIP") sees every earlier writer's commit and no concurrent one.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                // Released at commit, after the commit is visible: the next
                // holder's statements (READ COMMITTED, a snapshot each) see it.
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(POSTGRES_WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Announcements of sessions this store (and its clones) ended, after
    /// each commit. A subscriber that lags gets `RecvError::Lagged` and
    /// should re-check what it holds with [`Store::live_sessions`]; changes
    /// made by other processes are never announced here.
    pub fn subscribe_ended_sessions(&self) -> broadcast::Receiver<Vec<u64>> {
        self.ended.subscribe()
    }

    fn announce_ended(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            // No subscriber (the CLI, an AS alone) is fine.
            let _ = self.ended.send(ids);
        }
    }

    /// Adds a node with its password, and gives it the lowest free VIPv4 in
    /// `vip4_prefix` and the VIPv6 with the same host number in
    /// `vip6_prefix`. These addresses stay the device's for as long as it
    /// exists.
    pub async fn add_device(
        &self,
        device_id: &str,
        password: &str,
        fqdn: &str,
        vip4_prefix: Ipv4Prefix,
        vip6_prefix: Ipv6Prefix,
    ) -> Result<DeviceRecord, StoreError> {
        self.add_device_of_kind(
            DeviceKind::Node,
            device_id,
            Some(password),
            fqdn,
            vip4_prefix,
            vip6_prefix,
        )
        .await
    }

    /// [`Store::add_device`] for any kind; a device without a password
    /// cannot log in by password.
    pub async fn add_device_of_kind(
        &self,
        kind: DeviceKind,
        device_id: &str,
        password: Option<&str>,
        fqdn: &str,
        vip4_prefix: Ipv4Prefix,
        vip6_prefix: Ipv6Prefix,
    ) -> Result<DeviceRecord, StoreError> {
        if device_id.is_empty() || fqdn.is_empty() {
            return Err(StoreError::InvalidInput(
                "device ID and FQDN must not be empty".into(),
            ));
        }
        let password_hash = match password {
            Some("") => {
                return Err(StoreError::InvalidInput(
                    "the password must not be empty".into(),
                ))
            }
            Some(pw) => Some(hash_password(pw).await?),
            None => None,
        };
        // The write lock, taken now, keeps two concurrent additions (in
        // this process or another) from picking the same free address.
        let mut tx = self.write_tx().await?;
        let record = insert_device(
            &mut tx,
            kind,
            device_id,
            password_hash,
            fqdn,
            vip4_prefix,
            vip6_prefix,
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Adds nodes that hold a certificate from the start (keys made at
    /// their factory, `admin::add_devices_from_csrs`): each `(device_id,
    /// fqdn)` without an enrollment password, with its VIPs as
    /// [`Store::add_device`] gives them, and the certificate `issue` makes
    /// for it from its record, all in one transaction: no device is left
    /// without the certificate it was added for, and none is added when
    /// one fails.
    pub async fn add_devices_with_certificates(
        &self,
        devices: &[(String, String)],
        vip4_prefix: Ipv4Prefix,
        vip6_prefix: Ipv6Prefix,
        mut issue: impl FnMut(&DeviceRecord) -> Result<CertificateRecord, StoreError>,
    ) -> Result<Vec<(DeviceRecord, CertificateRecord)>, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut pool = VipPool::read(&mut tx, vip4_prefix, vip6_prefix).await?;
        let mut added = Vec::with_capacity(devices.len());
        for (device_id, fqdn) in devices {
            let device =
                insert_device_from(&mut tx, &mut pool, DeviceKind::Node, device_id, None, fqdn)
                    .await?;
            let cert = issue(&device)?;
            if cert.device_id != device.device_id || cert.fqdn != device.fqdn {
                return Err(StoreError::InvalidInput(format!(
                    "a certificate for {} cannot be {device_id}'s",
                    cert.fqdn
                )));
            }
            insert_certificate(&mut tx, &cert).await?;
            added.push((device, cert));
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Adds general node `device_id` (its FQDN, VIPs from the pool) that
    /// adapter `adapter_id` serves on its LAN, where it shows up with
    /// `mac`. The adapter must be a node.
    pub async fn add_general_node(
        &self,
        adapter_id: &str,
        mac: &str,
        device_id: &str,
        fqdn: &str,
        vip4_prefix: Ipv4Prefix,
        vip6_prefix: Ipv6Prefix,
    ) -> Result<GeneralNodeRecord, StoreError> {
        let mut tx = self.write_tx().await?;
        let adapter: Option<(String,)> =
            sqlx::query_as("SELECT kind FROM devices WHERE device_id = $1")
                .bind(adapter_id)
                .fetch_optional(&mut *tx)
                .await?;
        match adapter {
            None => return Err(StoreError::NoSuchDevice(adapter_id.to_owned())),
            Some((kind,)) if kind != DeviceKind::Node.as_str() => {
                return Err(StoreError::InvalidInput(format!(
                    "{adapter_id} is a general node: only a node can be an adapter"
                )))
            }
            Some(_) => {}
        }
        if exists(&mut tx, "SELECT 1 FROM general_nodes WHERE mac = $1", mac).await? {
            return Err(StoreError::InvalidInput(format!(
                "the MAC {mac} already belongs to a general node"
            )));
        }
        let device = insert_device(
            &mut tx,
            DeviceKind::General,
            device_id,
            None,
            fqdn,
            vip4_prefix,
            vip6_prefix,
        )
        .await?;
        sqlx::query("INSERT INTO general_nodes (device_id, adapter_id, mac) VALUES ($1, $2, $3)")
            .bind(device_id)
            .bind(adapter_id)
            .bind(mac)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(GeneralNodeRecord {
            device,
            adapter_id: adapter_id.to_owned(),
            mac: mac.to_owned(),
        })
    }

    /// The general nodes, of one adapter or of all, ordered by device ID.
    pub async fn general_nodes(
        &self,
        adapter_id: Option<&str>,
    ) -> Result<Vec<GeneralNodeRecord>, StoreError> {
        let columns = DEVICE_COLUMNS
            .split(", ")
            .map(|c| format!("d.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        type Row = (
            String,
            String,
            String,
            String,
            String,
            i64,
            i64,
            String,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {columns}, g.adapter_id, g.mac FROM general_nodes g \
             JOIN devices d ON d.device_id = g.device_id \
             WHERE $1 IS NULL OR g.adapter_id = $1 ORDER BY d.device_id"
        ))
        .bind(adapter_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(device_id, kind, fqdn, vip4, vip6, created_at, disabled, adapter_id, mac)| {
                    let device = DeviceRow {
                        device_id,
                        kind,
                        fqdn,
                        vip4,
                        vip6,
                        created_at,
                        disabled,
                    }
                    .into_record()?;
                    Ok(GeneralNodeRecord {
                        device,
                        adapter_id,
                        mac,
                    })
                },
            )
            .collect()
    }

    /// The device with this ID.
    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"
        ))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DeviceRow::into_record).transpose()
    }

    /// The device with this FQDN.
    pub async fn device_by_fqdn(&self, fqdn: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE fqdn = $1"
        ))
        .bind(fqdn)
        .fetch_optional(&self.pool)
        .await?;
        row.map(DeviceRow::into_record).transpose()
    }

    /// Every device, ordered by device ID.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(DeviceRow::into_record).collect()
    }

    /// Removes a device: its sessions end and its certificates are revoked
    /// (their rows stay, as a record). Its VIPs become free for new devices.
    pub async fn remove_device(&self, device_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        if exists(
            &mut tx,
            "SELECT 1 FROM general_nodes WHERE adapter_id = $1",
            device_id,
        )
        .await?
        {
            return Err(StoreError::InvalidInput(format!(
                "{device_id} is the adapter of general nodes: remove them first"
            )));
        }
        sqlx::query("UPDATE certificates SET status = 'revoked' WHERE device_id = $1")
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        let ended = delete_sessions_returning(
            &mut tx,
            "DELETE FROM sessions WHERE device_id = $1 RETURNING session_id",
            device_id,
        )
        .await?;
        let deleted = sqlx::query("DELETE FROM devices WHERE device_id = $1")
            .bind(device_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        }
        tx.commit().await?;
        self.announce_ended(ended);
        Ok(())
    }

    /// Disables or enables a device. Disabling ends its sessions; a disabled
    /// device can neither enroll nor log in.
    pub async fn set_device_disabled(
        &self,
        device_id: &str,
        disabled: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query("UPDATE devices SET disabled = $1 WHERE device_id = $2")
            .bind(i64::from(disabled))
            .bind(device_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NoSuchDevice(device_id.to_owned()));
        }
        let ended = if disabled {
            delete_sessions_returning(
                &mut tx,
                "DELETE FROM sessions WHERE device_id = $1 RETURNING session_id",
                device_id,
            )
            .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        self.announce_ended(ended);
        Ok(())
    }

    /// Checks a device's enrollment password (argon2, on a blocking
    /// thread). An unknown device costs the same work as a wrong password
    /// and gives the same [`StoreError::BadCredentials`]. The right password
    /// of a disabled device gives [`StoreError::DeviceDisabled`]; one that
    /// already enrolled the device gives [`StoreError::CredentialUsed`].
    pub async fn check_password(
        &self,
        device_id: &str,
        password: &str,
    ) -> Result<DeviceRecord, StoreError> {
        Ok(self.check_enrollment(device_id, password).await?.device)
    }

    /// [`Store::check_password`], with what [`Store::record_enrollment`]
    /// needs to spend the password.
    pub async fn check_enrollment(
        &self,
        device_id: &str,
        password: &str,
    ) -> Result<EnrollmentGrant, StoreError> {
        let row: Option<(Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT password_hash, password_used_at FROM devices WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        let (known_hash, used) = match row {
            Some((hash, used_at)) => (hash, used_at.is_some()),
            None => (None, false),
        };
        let found = known_hash.is_some();
        let password = password.to_owned();
        let (matches, known_hash) = tokio::task::spawn_blocking(move || {
            let hash = known_hash.as_deref().unwrap_or_else(|| dummy_hash());
            (cyphonic_pki::verify_password(&password, hash), known_hash)
        })
        .await
        .map_err(|e| StoreError::Password(e.to_string()))?;
        let (true, Some(credential)) = (found && matches, known_hash) else {
            return Err(StoreError::BadCredentials);
        };
        // The device may have been removed meanwhile: same answer.
        let device = self
            .device(device_id)
            .await?
            .ok_or(StoreError::BadCredentials)?;
        if device.disabled {
            return Err(StoreError::DeviceDisabled(device.device_id));
        }
        if used {
            return Err(StoreError::CredentialUsed(device.device_id));
        }
        Ok(EnrollmentGrant { device, credential })
    }

    /// Records the certificate an enrollment issued and spends the
    /// password that enrolled it, in one transaction: of two enrollments
    /// with one password, exactly one is recorded; the other gets
    /// [`StoreError::CredentialUsed`] and nothing is recorded for it.
    pub async fn record_enrollment(
        &self,
        grant: &EnrollmentGrant,
        cert: &CertificateRecord,
    ) -> Result<(), StoreError> {
        let device_id = grant.device.device_id.as_str();
        if cert.device_id != device_id {
            return Err(StoreError::InvalidInput(format!(
                "a certificate for {} cannot spend the password of {device_id}",
                cert.device_id
            )));
        }
        let mut tx = self.write_tx().await?;
        let spent = sqlx::query(
            "UPDATE devices SET password_used_at = $1 \
             WHERE device_id = $2 AND password_hash = $3 AND password_used_at IS NULL \
             AND disabled = 0",
        )
        .bind(unix_secs(SystemTime::now()))
        .bind(device_id)
        .bind(&grant.credential)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent == 0 {
            // Why: gone, disabled, or spent or replaced since the check.
            let row: Option<(i64,)> =
                sqlx::query_as("SELECT disabled FROM devices WHERE device_id = $1")
                    .bind(device_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match row {
                None => StoreError::BadCredentials,
                Some((0,)) => StoreError::CredentialUsed(device_id.to_owned()),
                Some(_) => StoreError::DeviceDisabled(device_id.to_owned()),
            });
        }
        insert_certificate(&mut tx, cert).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives a node a new one-time enrollment password (an operator's
    /// `device reset`): its certificates are revoked and its sessions end,
    /// so only the device that enrolls with the new password is it from
    /// now on.
    pub async fn reset_credential(
        &self,
        device_id: &str,
        password: &str,
    ) -> Result<CredentialReset, StoreError> {
        if password.is_empty() {
            return Err(StoreError::InvalidInput(
                "the password must not be empty".into(),
            ));
        }
        let hash = hash_password(password).await?;
        let mut tx = self.write_tx().await?;
        let kind: Option<(String,)> =
            sqlx::query_as("SELECT kind FROM devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        match kind {
            None => return Err(StoreError::NoSuchDevice(device_id.to_owned())),
            Some((kind,)) if kind != DeviceKind::Node.as_str() => {
                return Err(StoreError::InvalidInput(format!(
                    "{device_id} is a general node: it has no enrollment password \
                     (its adapter enrolls it; remove and add it to start over)"
                )))
            }
            Some(_) => {}
        }
        sqlx::query(
            "UPDATE devices SET password_hash = $1, password_used_at = NULL WHERE device_id = $2",
        )
        .bind(hash)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
        let revoked: Vec<(i64,)> = sqlx::query_as(
            "UPDATE certificates SET status = 'revoked' \
             WHERE device_id = $1 AND status = 'good' RETURNING serial",
        )
        .bind(device_id)
        .fetch_all(&mut *tx)
        .await?;
        let ended = delete_sessions_returning(
            &mut tx,
            "DELETE FROM sessions WHERE device_id = $1 RETURNING session_id",
            device_id,
        )
        .await?;
        tx.commit().await?;
        self.announce_ended(ended.clone());
        let mut revoked: Vec<u64> = revoked
            .into_iter()
            .filter_map(|(s,)| u64::try_from(s).ok())
            .collect();
        revoked.sort_unstable();
        Ok(CredentialReset {
            revoked,
            ended_sessions: ended,
        })
    }

    /// A fresh random certificate serial in 1..2^63 that no recorded
    /// certificate has.
    pub async fn next_serial(&self) -> Result<u64, StoreError> {
        loop {
            let serial = OsRng.next_u64() >> 1;
            if serial == 0 {
                continue;
            }
            let taken: Option<(i64,)> =
                sqlx::query_as("SELECT serial FROM certificates WHERE serial = $1")
                    .bind(serial_to_sql(serial)?)
                    .fetch_optional(&self.pool)
                    .await?;
            if taken.is_none() {
                return Ok(serial);
            }
        }
    }

    /// Records an issued certificate (one no password paid for: a general
    /// node's, which its adapter asked for).
    pub async fn record_certificate(&self, cert: &CertificateRecord) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        insert_certificate(&mut tx, cert).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records `cert`, which renews certificate `renewed` of the same
    /// device (same FQDN), in one transaction with the checks that make a
    /// renewal safe: `renewed` is recorded, good and the device's, the
    /// device is there and enabled, and `renewed` has no successor yet (no
    /// other certificate of the device issued at or after it). So each
    /// certificate is renewed at most once, concurrent requests included;
    /// the certificate it renews stays good until it expires.
    pub async fn record_renewal(
        &self,
        renewed: u64,
        cert: &CertificateRecord,
    ) -> Result<(), StoreError> {
        let sql_renewed =
            i64::try_from(renewed).map_err(|_| StoreError::NoSuchCertificate(renewed))?;
        let mut tx = self.write_tx().await?;
        let old: Option<CertificateRow> = sqlx::query_as(&format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE serial = $1"
        ))
        .bind(sql_renewed)
        .fetch_optional(&mut *tx)
        .await?;
        let old = old
            .ok_or(StoreError::NoSuchCertificate(renewed))?
            .into_record()?;
        if old.device_id != cert.device_id || old.fqdn != cert.fqdn {
            return Err(StoreError::InvalidInput(format!(
                "certificate {renewed:#x} of {} cannot be renewed for {}",
                old.fqdn, cert.fqdn
            )));
        }
        if old.status == CertStatus::Revoked {
            return Err(StoreError::CertificateRevoked(renewed));
        }
        let device: Option<(String, i64)> =
            sqlx::query_as("SELECT fqdn, disabled FROM devices WHERE device_id = $1")
                .bind(&cert.device_id)
                .fetch_optional(&mut *tx)
                .await?;
        match device {
            None => return Err(StoreError::NoSuchDevice(cert.device_id.clone())),
            Some((fqdn, _)) if fqdn != cert.fqdn => {
                return Err(StoreError::InvalidInput(format!(
                    "device {} is now {fqdn}, not {}",
                    cert.device_id, cert.fqdn
                )))
            }
            Some((_, 0)) => {}
            Some(_) => return Err(StoreError::DeviceDisabled(cert.device_id.clone())),
        }
        let successor: Option<CertificateRow> = sqlx::query_as(&format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates \
             WHERE device_id = $1 AND issue_order > \
             (SELECT issue_order FROM certificates WHERE serial = $2) \
             ORDER BY issue_order LIMIT 1"
        ))
        .bind(&old.device_id)
        .bind(sql_renewed)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(successor) = successor {
            return Err(StoreError::AlreadyRenewed {
                serial: renewed,
                successor: Box::new(successor.into_record()?),
            });
        }
        insert_certificate(&mut tx, cert).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The certificate with this serial.
    pub async fn certificate(&self, serial: u64) -> Result<Option<CertificateRecord>, StoreError> {
        let Ok(sql_serial) = i64::try_from(serial) else {
            return Ok(None);
        };
        let row: Option<CertificateRow> = sqlx::query_as(&format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE serial = $1"
        ))
        .bind(sql_serial)
        .fetch_optional(&self.pool)
        .await?;
        row.map(CertificateRow::into_record).transpose()
    }

    /// Every certificate issued to a device, oldest first.
    pub async fn certificates_of(
        &self,
        device_id: &str,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let rows: Vec<CertificateRow> = sqlx::query_as(&format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE device_id = $1 \
             ORDER BY issue_order"
        ))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(CertificateRow::into_record).collect()
    }

    /// Sets a certificate's status. Revoking ends the sessions it opened.
    pub async fn set_certificate_status(
        &self,
        serial: u64,
        status: CertStatus,
    ) -> Result<(), StoreError> {
        let sql_serial =
            i64::try_from(serial).map_err(|_| StoreError::NoSuchCertificate(serial))?;
        let mut tx = self.write_tx().await?;
        let updated = sqlx::query("UPDATE certificates SET status = $1 WHERE serial = $2")
            .bind(status.as_str())
            .bind(sql_serial)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NoSuchCertificate(serial));
        }
        let ended = if status == CertStatus::Revoked {
            delete_sessions_returning(
                &mut tx,
                "DELETE FROM sessions WHERE cert_serial = $1 RETURNING session_id",
                sql_serial,
            )
            .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        self.announce_ended(ended);
        Ok(())
    }

    /// Opens a Login session for a device with a fresh random session ID and
    /// common key, valid for `lifetime` from now, numbered after every
    /// earlier Login. It supersedes the device's sessions opened at least
    /// [`LOGIN_OVERLAP`] before: they end now. Expired sessions are purged
    /// on the way.
    pub async fn create_session(
        &self,
        device_id: &str,
        cert_serial: u64,
        lifetime: Duration,
    ) -> Result<SessionRecord, StoreError> {
        self.create_session_at(device_id, cert_serial, lifetime, SystemTime::now())
            .await
    }

    /// [`Store::create_session`] as if opened at `now` (its creation time,
    /// expiry and which older sessions it supersedes follow from `now`).
    pub async fn create_session_at(
        &self,
        device_id: &str,
        cert_serial: u64,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<SessionRecord, StoreError> {
        let expires_at = from_unix_secs(unix_secs(now + lifetime));
        let sql_serial =
            i64::try_from(cert_serial).map_err(|_| StoreError::NoSuchCertificate(cert_serial))?;
        let mut tx = self.write_tx().await?;
        let mut ended = delete_sessions_returning(
            &mut tx,
            "DELETE FROM sessions WHERE expires_at <= $1 RETURNING session_id",
            unix_secs(now),
        )
        .await?;
        let fqdn: Option<(String,)> =
            sqlx::query_as("SELECT fqdn FROM devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&mut *tx)
                .await?;
        let (fqdn,) = fqdn.ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        if !exists(
            &mut tx,
            "SELECT 1 FROM certificates WHERE serial = $1",
            sql_serial,
        )
        .await?
        {
            return Err(StoreError::NoSuchCertificate(cert_serial));
        }
        let superseded: Vec<(i64,)> = sqlx::query_as(
            "DELETE FROM sessions WHERE device_id = $1 AND created_at <= $2 RETURNING session_id",
        )
        .bind(device_id)
        .bind(unix_secs(now).saturating_sub(LOGIN_OVERLAP.as_secs() as i64))
        .fetch_all(&mut *tx)
        .await?;
        ended.extend(superseded.into_iter().map(|(id,)| session_id_from_sql(id)));
        let (login_seq,): (i64,) =
            sqlx::query_as("UPDATE login_sequence SET last = last + 1 WHERE id = 1 RETURNING last")
                .fetch_one(&mut *tx)
                .await?;
        let mut common_key = [0u8; 32];
        OsRng.fill_bytes(&mut common_key);
        let session_id = loop {
            let id = OsRng.next_u64();
            if id != 0
                && !exists(
                    &mut tx,
                    "SELECT 1 FROM sessions WHERE session_id = $1",
                    session_id_to_sql(id),
                )
                .await?
            {
                break id;
            }
        };
        sqlx::query(
            "INSERT INTO sessions \
             (session_id, device_id, common_key, cert_serial, created_at, expires_at, \
              login_seq, replay_floor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
        )
        .bind(session_id_to_sql(session_id))
        .bind(device_id)
        .bind(&common_key[..])
        .bind(sql_serial)
        .bind(unix_secs(now))
        .bind(unix_secs(expires_at))
        .bind(login_seq)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announce_ended(ended);
        Ok(SessionRecord {
            session_id,
            device_id: device_id.to_owned(),
            fqdn,
            common_key,
            cert_serial,
            expires_at,
            login_seq: u64::try_from(login_seq).map_err(|_| StoreError::Corrupt {
                table: "login_sequence",
                detail: format!("negative login number {login_seq}"),
            })?,
            replay_floor: 0,
        })
    }

    /// The session with this ID, unless it has expired or ended.
    pub async fn session(&self, session_id: u64) -> Result<Option<SessionRecord>, StoreError> {
        self.session_at(session_id, SystemTime::now()).await
    }

    /// [`Store::session`] as seen at `now`.
    pub async fn session_at(
        &self,
        session_id: u64,
        now: SystemTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        type Row = (i64, String, String, Vec<u8>, i64, i64, i64, i64);
        let row: Option<Row> = sqlx::query_as(
            "SELECT s.session_id, s.device_id, d.fqdn, s.common_key, s.cert_serial, s.expires_at, \
                    s.login_seq, s.replay_floor \
             FROM sessions s JOIN devices d ON d.device_id = s.device_id \
             WHERE s.session_id = $1 AND s.expires_at > $2",
        )
        .bind(session_id_to_sql(session_id))
        .bind(unix_secs(now))
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, device_id, fqdn, key, serial, expires_at, login_seq, floor)) = row else {
            return Ok(None);
        };
        let common_key: [u8; 32] = key.try_into().map_err(|_| StoreError::Corrupt {
            table: "sessions",
            detail: "common_key is not 32 bytes".into(),
        })?;
        let non_negative = |column: &str, value: i64| {
            u64::try_from(value).map_err(|_| StoreError::Corrupt {
                table: "sessions",
                detail: format!("negative {column} {value}"),
            })
        };
        Ok(Some(SessionRecord {
            session_id: session_id_from_sql(id),
            device_id,
            fqdn,
            common_key,
            cert_serial: non_negative("cert_serial", serial)?,
            expires_at: from_unix_secs(expires_at),
            login_seq: non_negative("login_seq", login_seq)?,
            replay_floor: counter_from_sql(floor),
        }))
    }

    /// Stores that an NMS accepted a Registration under this session with
    /// node counter `floor` (so no NMS accepts a counter at or below it
    /// again), and ends the device's sessions from earlier Logins: the
    /// session that registers is its device's. Call it before the
    /// Registration takes effect. Returns the sessions it ended;
    /// [`StoreError::NoSuchSession`] when this one has ended or expired.
    pub async fn record_registration(
        &self,
        session_id: u64,
        floor: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let now = SystemTime::now();
        let mut tx = self.write_tx().await?;
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT device_id, login_seq, replay_floor FROM sessions \
             WHERE session_id = $1 AND expires_at > $2",
        )
        .bind(session_id_to_sql(session_id))
        .bind(unix_secs(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((device_id, login_seq, stored)) = row else {
            return Err(StoreError::NoSuchSession(session_id));
        };
        // Compared as u64: the column holds the counter's bits.
        let raised = counter_from_sql(stored).max(floor);
        sqlx::query("UPDATE sessions SET replay_floor = $1 WHERE session_id = $2")
            .bind(counter_to_sql(raised))
            .bind(session_id_to_sql(session_id))
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE devices SET last_seen = $1 WHERE device_id = $2")
            .bind(unix_secs(now))
            .bind(&device_id)
            .execute(&mut *tx)
            .await?;
        let older: Vec<(i64,)> = sqlx::query_as(
            "DELETE FROM sessions WHERE device_id = $1 AND login_seq < $2 RETURNING session_id",
        )
        .bind(&device_id)
        .bind(login_seq)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let ended: Vec<u64> = older
            .into_iter()
            .map(|(id,)| session_id_from_sql(id))
            .collect();
        self.announce_ended(ended.clone());
        Ok(ended)
    }

    /// Reserves the NMS's signaling counters for one run: returns `base`
    /// = max(`wall_micros`, the stored floor) and, in the same transaction
    /// and before returning, raises the floor to `base + range`. Every
    /// counter in `base .. base + range` is this caller's alone: no other
    /// run, earlier or concurrent, got any of them, whatever the wall clock
    /// did in between (`docs/protocol.md` §4.2).
    pub async fn reserve_signal_counters(
        &self,
        wall_micros: u64,
        range: u64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let (floor,): (i64,) = sqlx::query_as("SELECT floor FROM nms_counter_floor WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let base = wall_micros.max(counter_from_sql(floor));
        let Some(end) = base.checked_add(range) else {
            return Err(StoreError::CountersExhausted);
        };
        sqlx::query("UPDATE nms_counter_floor SET floor = $1 WHERE id = 1")
            .bind(counter_to_sql(end))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(base)
    }

    /// Stores a new policy document (already checked); returns its
    /// version, one above the previous.
    pub async fn set_policy(&self, document: &str, now: SystemTime) -> Result<u64, StoreError> {
        // One statement would do on either backend; the write lock keeps
        // the version's order the order of the writers' transactions.
        let mut tx = self.write_tx().await?;
        let (version,): (i64,) = sqlx::query_as(
            "INSERT INTO policy (id, version, document, updated_at) VALUES (1, 1, $1, $2) \
             ON CONFLICT (id) DO UPDATE \
             SET version = policy.version + 1, document = $1, updated_at = $2 \
             RETURNING version",
        )
        .bind(document)
        .bind(unix_secs(now))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version as u64)
    }

    /// The policy's version (0: none was ever set): cheap, for polling.
    pub async fn policy_version(&self) -> Result<u64, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT version FROM policy WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |(v,)| v as u64))
    }

    /// The policy document and its version, if one was set.
    pub async fn policy(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT version, document FROM policy WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(v, d)| (v as u64, d)))
    }

    /// Which of `ids` are still live sessions at `now`: not ended, not
    /// expired, their device not disabled.
    pub async fn live_sessions(
        &self,
        ids: &[u64],
        now: SystemTime,
    ) -> Result<HashSet<u64>, StoreError> {
        let mut live = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(LIVE_SESSIONS_CHUNK) {
            let marks = placeholders(1..=chunk.len());
            let now_mark = chunk.len() + 1;
            let sql = format!(
                "SELECT s.session_id FROM sessions s JOIN devices d ON d.device_id = s.device_id \
                 WHERE s.session_id IN ({marks}) AND s.expires_at > ${now_mark} AND d.disabled = 0"
            );
            let mut query = sqlx::query_as::<_, (i64,)>(&sql);
            for id in chunk {
                query = query.bind(session_id_to_sql(*id));
            }
            let rows = query.bind(unix_secs(now)).fetch_all(&self.pool).await?;
            live.extend(rows.into_iter().map(|(id,)| session_id_from_sql(id)));
        }
        Ok(live)
    }

    /// Deletes sessions that expired by `now`; returns how many.
    pub async fn purge_expired_sessions(&self, now: SystemTime) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let ended = delete_sessions_returning(
            &mut tx,
            "DELETE FROM sessions WHERE expires_at <= $1 RETURNING session_id",
            unix_secs(now),
        )
        .await?;
        tx.commit().await?;
        let count = ended.len() as u64;
        self.announce_ended(ended);
        Ok(count)
    }
}

/// The lowest free pair of VIPs: host number `h` from 2 up (0 is the
/// network, 1 the cloud), skipping addresses whose last IPv4 octet is 0 or
/// 255 (some stacks take them for network or broadcast addresses) and the
/// prefix's last address; the VIPv6 has the same host number.
fn allocate_vips(
    vip4_prefix: Ipv4Prefix,
    vip6_prefix: Ipv6Prefix,
    used4: &HashSet<Ipv4Addr>,
    used6: &HashSet<Ipv6Addr>,
) -> Option<(Ipv4Addr, Ipv6Addr)> {
    let hosts = 1u128 << vip4_prefix.host_bits();
    (FIRST_DEVICE_HOST_NUMBER..hosts.saturating_sub(1)).find_map(|h| {
        let v4 = vip4_prefix.host(h)?;
        let last = v4.octets()[3];
        if last == 0 || last == 255 || used4.contains(&v4) {
            return None;
        }
        let v6 = vip6_prefix.host(h)?;
        (!used6.contains(&v6)).then_some((v4, v6))
    })
}

/// A password hash to verify against when the device is unknown, so that
/// answer takes as long as a wrong password.
pub(crate) fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut pw = [0u8; 16];
        OsRng.fill_bytes(&mut pw);
        // If hashing fails here it fails for real passwords too; an empty
        // hash then simply never verifies.
        cyphonic_pki::hash_password(&hex::encode(pw)).unwrap_or_default()
    })
}

async fn exists<'q, T>(
    tx: &mut Transaction<'static, Any>,
    sql: &'q str,
    value: T,
) -> Result<bool, sqlx::Error>
where
    T: 'q + Send + sqlx::Encode<'q, Any> + sqlx::Type<Any>,
{
    Ok(sqlx::query(sql)
        .bind(value)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

/// Runs a `DELETE FROM sessions ... RETURNING session_id` with one
/// parameter and returns the IDs of the sessions it deleted.
async fn delete_sessions_returning<'q, T>(
    tx: &mut Transaction<'static, Any>,
    sql: &'q str,
    value: T,
) -> Result<Vec<u64>, sqlx::Error>
where
    T: 'q + Send + sqlx::Encode<'q, Any> + sqlx::Type<Any>,
{
    let rows: Vec<(i64,)> = sqlx::query_as(sql).bind(value).fetch_all(&mut **tx).await?;
    Ok(rows
        .into_iter()
        .map(|(id,)| session_id_from_sql(id))
        .collect())
}

/// Inserts an issued certificate in the caller's transaction.
async fn insert_certificate(
    tx: &mut Transaction<'static, Any>,
    cert: &CertificateRecord,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO certificates \
         (serial, device_id, fqdn, not_before, not_after, issued_at, status, cert_pem, \
          issue_order) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
          (SELECT COALESCE(MAX(issue_order), 0) + 1 FROM certificates))",
    )
    .bind(serial_to_sql(cert.serial)?)
    .bind(&cert.device_id)
    .bind(&cert.fqdn)
    .bind(unix_secs(cert.not_before))
    .bind(unix_secs(cert.not_after))
    .bind(unix_secs(cert.issued_at))
    .bind(cert.status.as_str())
    .bind(&cert.cert_pem)
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::SerialExists(cert.serial))
        }
        Err(e) => Err(e.into()),
    }
}

/// argon2id on a blocking thread.
pub(crate) async fn hash_password(password: &str) -> Result<String, StoreError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || cyphonic_pki::hash_password(&password))
        .await
        .map_err(|e| StoreError::Password(e.to_string()))?
        .map_err(|e| StoreError::Password(e.to_string()))
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: String,
    kind: String,
    fqdn: String,
    vip4: String,
    vip6: String,
    created_at: i64,
    /// 0 or 1: an INTEGER on both backends (the `Any` driver decodes no
    /// SQLite INTEGER as a bool).
    disabled: i64,
}

impl DeviceRow {
    fn into_record(self) -> Result<DeviceRecord, StoreError> {
        Ok(DeviceRecord {
            kind: self.kind.parse().map_err(|detail| StoreError::Corrupt {
                table: "devices",
                detail,
            })?,
            vip4: parse_column("devices", "vip4", &self.vip4)?,
            vip6: parse_column("devices", "vip6", &self.vip6)?,
            created_at: from_unix_secs(self.created_at),
            device_id: self.device_id,
            fqdn: self.fqdn,
            disabled: self.disabled != 0,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CertificateRow {
    serial: i64,
    device_id: String,
    fqdn: String,
    not_before: i64,
    not_after: i64,
    issued_at: i64,
    status: String,
    cert_pem: String,
}

impl CertificateRow {
    fn into_record(self) -> Result<CertificateRecord, StoreError> {
        Ok(CertificateRecord {
            serial: u64::try_from(self.serial).map_err(|_| StoreError::Corrupt {
                table: "certificates",
                detail: format!("negative serial {}", self.serial),
            })?,
            device_id: self.device_id,
            fqdn: self.fqdn,
            not_before: from_unix_secs(self.not_before),
            not_after: from_unix_secs(self.not_after),
            issued_at: from_unix_secs(self.issued_at),
            status: self.status.parse().map_err(|detail| StoreError::Corrupt {
                table: "certificates",
                detail,
            })?,
            cert_pem: self.cert_pem,
        })
    }
}

fn parse_column<T: FromStr>(
    table: &'static str,
    column: &str,
    value: &str,
) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        table,
        detail: format!("{column} {value:?} does not parse"),
    })
}

fn serial_to_sql(serial: u64) -> Result<i64, StoreError> {
    match i64::try_from(serial) {
        Ok(s) if s > 0 => Ok(s),
        _ => Err(StoreError::InvalidInput(format!(
            "certificate serial {serial:#x} is not in 1..2^63"
        ))),
    }
}

/// Session IDs use all 64 bits; the database keeps them as the same bits
/// in a signed 64-bit column (SQLite's INTEGER, PostgreSQL's BIGINT).
fn session_id_to_sql(id: u64) -> i64 {
    i64::from_ne_bytes(id.to_ne_bytes())
}

fn session_id_from_sql(id: i64) -> u64 {
    u64::from_ne_bytes(id.to_ne_bytes())
}

/// Signaling counters use all 64 bits too; stored the same way.
fn counter_to_sql(counter: u64) -> i64 {
    session_id_to_sql(counter)
}

fn counter_from_sql(counter: i64) -> u64 {
    session_id_from_sql(counter)
}

/// Seconds since the Unix epoch, negative before it.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

pub(crate) fn from_unix_secs(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `$first, $first+1, ...`: numbered parameters for an `IN (...)` list.
pub(crate) fn placeholders(numbers: RangeInclusive<usize>) -> String {
    numbers
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What every SQLite connection runs first: WAL and `synchronous = FULL`
/// make a commit durable across a crash; foreign keys enforce the
/// schema's references; the busy timeout lets a writer wait for another's
/// lock (another connection, another process) instead of failing.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                              PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;";

/// The `sqlite://` URL the `Any` driver opens `path` by (creating the file
/// if missing). The folder is made absolute and canonical first, as a URL
/// has no relative paths and folds `..`; every byte but letters, digits and
/// `/-._~` is percent-encoded (sqlx decodes the path).
fn sqlite_url(path: &Path) -> Result<String, sqlx::Error> {
    let name = path.file_name().ok_or_else(|| {
        sqlx::Error::Configuration(format!("{} names no file", path.display()).into())
    })?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let full = folder.canonicalize()?.join(name);
    let mut url = String::from("sqlite://");
    for &b in full.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

/// Inserts a device with free VIPs, in the caller's transaction (which
/// holds the write lock, so no other addition can take the same VIPs).
async fn insert_device(
    tx: &mut Transaction<'static, Any>,
    kind: DeviceKind,
    device_id: &str,
    password_hash: Option<String>,
    fqdn: &str,
    vip4_prefix: Ipv4Prefix,
    vip6_prefix: Ipv6Prefix,
) -> Result<DeviceRecord, StoreError> {
    let mut pool = VipPool::read(tx, vip4_prefix, vip6_prefix).await?;
    insert_device_from(tx, &mut pool, kind, device_id, password_hash, fqdn).await
}

/// The VIPs the devices hold, read once in a transaction, and the
/// prefixes new ones come from: [`insert_device_from`] takes the lowest
/// free pair and marks it used, so many devices added in one
/// transaction cost one read of the table, not one each.
struct VipPool {
    vip4_prefix: Ipv4Prefix,
    vip6_prefix: Ipv6Prefix,
    used4: HashSet<Ipv4Addr>,
    used6: HashSet<Ipv6Addr>,
}

impl VipPool {
    async fn read(
        tx: &mut Transaction<'static, Any>,
        vip4_prefix: Ipv4Prefix,
        vip6_prefix: Ipv6Prefix,
    ) -> Result<VipPool, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT vip4, vip6 FROM devices")
            .fetch_all(&mut **tx)
            .await?;
        let mut used4 = HashSet::with_capacity(rows.len());
        let mut used6 = HashSet::with_capacity(rows.len());
        for (v4, v6) in &rows {
            used4.insert(parse_column::<Ipv4Addr>("devices", "vip4", v4)?);
            used6.insert(parse_column::<Ipv6Addr>("devices", "vip6", v6)?);
        }
        Ok(VipPool {
            vip4_prefix,
            vip6_prefix,
            used4,
            used6,
        })
    }
}

/// [`insert_device`] with the VIPs in use already read in `tx`.
async fn insert_device_from(
    tx: &mut Transaction<'static, Any>,
    pool: &mut VipPool,
    kind: DeviceKind,
    device_id: &str,
    password_hash: Option<String>,
    fqdn: &str,
) -> Result<DeviceRecord, StoreError> {
    let now = SystemTime::now();
    if exists(tx, "SELECT 1 FROM devices WHERE device_id = $1", device_id).await? {
        return Err(StoreError::DeviceExists(device_id.to_owned()));
    }
    if exists(tx, "SELECT 1 FROM devices WHERE fqdn = $1", fqdn).await? {
        return Err(StoreError::FqdnTaken(fqdn.to_owned()));
    }
    let (vip4_prefix, vip6_prefix) = (pool.vip4_prefix, pool.vip6_prefix);
    let (vip4, vip6) = allocate_vips(vip4_prefix, vip6_prefix, &pool.used4, &pool.used6).ok_or(
        StoreError::VipsExhausted {
            vip4_prefix,
            vip6_prefix,
        },
    )?;
    sqlx::query(
        "INSERT INTO devices \
         (device_id, kind, password_hash, fqdn, vip4, vip6, created_at, disabled) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
    )
    .bind(device_id)
    .bind(kind.as_str())
    .bind(password_hash)
    .bind(fqdn)
    .bind(vip4.to_string())
    .bind(vip6.to_string())
    .bind(unix_secs(now))
    .execute(&mut **tx)
    .await?;
    pool.used4.insert(vip4);
    pool.used6.insert(vip6);
    Ok(DeviceRecord {
        device_id: device_id.to_owned(),
        kind,
        fqdn: fqdn.to_owned(),
        vip4,
        vip6,
        created_at: from_unix_secs(unix_secs(now)),
        disabled: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_records_common_key_is_wiped_on_drop() {
        let record = SessionRecord {
            session_id: 1,
            device_id: "n1".into(),
            fqdn: "n1.cyphonic.internal".into(),
            common_key: [0xa5; 32],
            cert_serial: 1,
            expires_at: SystemTime::UNIX_EPOCH,
            login_seq: 1,
            replay_floor: 0,
        };
        assert_eq!(
            cyphonic_proto::key_bytes_after_drop!(record, common_key),
            [0; 32]
        );
    }

    fn prefixes(v4: &str, v6: &str) -> (Ipv4Prefix, Ipv6Prefix) {
        (v4.parse().unwrap(), v6.parse().unwrap())
    }

    #[test]
    fn allocation_skips_reserved_hosts() {
        let (p4, p6) = prefixes("100.64.0.0/10", "fd7a:6379:7068::/48");
        let mut used4 = HashSet::new();
        let mut used6 = HashSet::new();
        let (v4, v6) = allocate_vips(p4, p6, &used4, &used6).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(v6, "fd7a:6379:7068::2".parse::<Ipv6Addr>().unwrap());

        // Fill .2 to .254: the next is 100.64.1.1, skipping .255 and .0.
        for h in 2..=254u8 {
            used4.insert(Ipv4Addr::new(100, 64, 0, h));
            used6.insert(p6.host(u128::from(h)).unwrap());
        }
        let (v4, v6) = allocate_vips(p4, p6, &used4, &used6).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 1, 1));
        assert_eq!(v6, "fd7a:6379:7068::101".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn allocation_fills_gaps_and_runs_out() {
        let (p4, p6) = prefixes("100.64.0.0/29", "fd00::/64");
        let mut used4: HashSet<_> = [Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 4)]
            .into_iter()
            .collect();
        let mut used6 = HashSet::new();
        let (v4, _) = allocate_vips(p4, p6, &used4, &used6).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 3));
        // A VIPv6 taken (say, from an older v4 prefix) skips that host too.
        used6.insert("fd00::3".parse().unwrap());
        let (v4, v6) = allocate_vips(p4, p6, &used4, &used6).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 5));
        assert_eq!(v6, "fd00::5".parse::<Ipv6Addr>().unwrap());
        used4.extend([3, 5, 6].map(|h| Ipv4Addr::new(100, 64, 0, h)));
        // .7 is the prefix's last address: nothing is left.
        assert_eq!(allocate_vips(p4, p6, &used4, &used6), None);
    }

    /// Through the `Any` driver SQLite keeps its durability settings, and
    /// a path of any bytes a URL would mangle opens the file it names.
    #[tokio::test]
    async fn sqlite_opens_the_exact_path_with_its_pragmas() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("a b%20c?d#e..");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("cloud.db");
        let store = Store::open(&Database::Sqlite(path.clone())).await.unwrap();
        assert!(path.is_file());
        let mut conn = store.pool.acquire().await.unwrap();
        for (pragma, column, want) in [
            ("journal_mode", "journal_mode", "wal"),
            ("synchronous", "synchronous", "2"),
            ("foreign_keys", "foreign_keys", "1"),
            ("busy_timeout", "timeout", "5000"),
        ] {
            let row: (String,) = sqlx::query_as(&format!(
                "SELECT CAST({column} AS TEXT) FROM pragma_{pragma}"
            ))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            assert_eq!(row.0, want, "{pragma}");
        }
        drop(conn);
        store.close().await;
        assert!(sqlite_url(&folder.join("..").join("x").join("cloud.db")).is_err());
    }

    #[test]
    fn times_and_ids_round_trip() {
        for secs in [0i64, 1, -1, 1_700_000_000, -86_400] {
            assert_eq!(unix_secs(from_unix_secs(secs)), secs);
        }
        for id in [1u64, u64::MAX, 1 << 63, 42] {
            assert_eq!(session_id_from_sql(session_id_to_sql(id)), id);
        }
        assert!(serial_to_sql(0).is_err());
        assert!(serial_to_sql(1 << 63).is_err());
        assert_eq!(serial_to_sql(5).unwrap(), 5);
    }
}
