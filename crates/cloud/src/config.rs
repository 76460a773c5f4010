//! The cloud's configuration file, `cloud.toml`.
//!
//! Every key but `data_dir` has a default, so the smallest file is one line.
//! `cyphonic cloud init` writes a complete file with every default spelled
//! out, but for the node certificates' lifetime: it is one of two keys
//! (`cert_validity_days`, `cert_validity_secs`), and neither means 90 days.
//! Loading checks the values, and every error names the key and the fix.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default DNS domain under which devices get their FQDN.
pub const DEFAULT_DOMAIN: &str = "cyphonic.internal";
/// The default TCP port of the AS (Login flow, TLS).
pub const DEFAULT_AS_PORT: u16 = 4501;
/// The default UDP port of the NMS (signaling).
pub const DEFAULT_NMS_PORT: u16 = 4502;

/// The whole shared address space virtual IPv4 addresses may come from
/// (RFC 6598 shared address space).
pub const VIP4_SPACE: Ipv4Prefix = Ipv4Prefix::network(Ipv4Addr::new(100, 64, 0, 0), 10);
/// The whole space virtual IPv6 addresses may come from (RFC 4193 ULAs
/// with the L bit set).
pub const VIP6_SPACE: Ipv6Prefix =
    Ipv6Prefix::network(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 8);

/// File names inside `data_dir`.
pub const ROOT_CERT_FILE: &str = "root.pem";
pub const ROOT_KEY_FILE: &str = "root.key";
pub const AS_CERT_FILE: &str = "as.pem";
pub const AS_KEY_FILE: &str = "as.key";
pub const CONFIG_FILE: &str = "cloud.toml";
pub const DATABASE_FILE: &str = "cloud.db";

/// The configuration of the cloud services (AS and NMS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// DNS domain of the overlay; a device's FQDN is `<device_id>.<domain>`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Folder holding the CA material and, by default, the database.
    pub data_dir: PathBuf,
    /// Where the cloud keeps its state: an SQLite file (`<data_dir>/cloud.db`
    /// when absent), or a `postgres://` URL, which several cloud instances
    /// may share ([`Database`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Database>,
    /// TCP addresses the AS listens on. An IPv6 address is bound IPv6-only,
    /// so `0.0.0.0:4501` and `[::]:4501` can both be bound.
    #[serde(default = "default_as_listen")]
    pub as_listen: Vec<SocketAddr>,
    /// UDP addresses the NMS listens on; nodes are told the first one's port.
    #[serde(default = "default_nms_listen")]
    pub nms_listen: Vec<SocketAddr>,
    /// Addresses nodes use to reach the cloud; they go into the AS server
    /// certificate, beside `localhost`, 127.0.0.1 and ::1.
    #[serde(default)]
    pub public_addrs: Vec<IpAddr>,
    /// Prefix virtual IPv4 addresses are assigned from; inside 100.64.0.0/10.
    #[serde(default = "default_vip4_prefix")]
    pub vip4_prefix: Ipv4Prefix,
    /// Prefix virtual IPv6 addresses are assigned from; inside fd00::/8.
    #[serde(default = "default_vip6_prefix")]
    pub vip6_prefix: Ipv6Prefix,
    /// Lifetime of the node certificates the AS issues, in days (1 to
    /// 3650); without it and `cert_validity_secs`, 90 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_validity_days: Option<u32>,
    /// The same in seconds (60 to 3650 days), for lifetimes that are not
    /// whole days (a lab's certificates of a minute). A file gives at most
    /// one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_validity_secs: Option<u64>,
    /// Lifetime of a Login session (and of its common key).
    #[serde(default = "default_session_lifetime_secs")]
    pub session_lifetime_secs: u64,
    /// Interval at which nodes send keepalives to the NMS.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// How long a relay grant in a route direction is valid; nodes renew
    /// it (a new route) three quarters into its life.
    #[serde(default = "default_relay_grant_secs")]
    pub relay_grant_secs: u64,
    /// Second UDP port of the NMS, on the same addresses as `nms_listen`:
    /// a node seen from two ports reveals its NAT's mapping behaviour
    /// (RFC 4787 §4.1).
    #[serde(default = "default_nms_probe_port")]
    pub nms_probe_port: u16,
    /// UDP addresses the TRS (relay) listens on.
    #[serde(default = "default_trs_listen")]
    pub trs_listen: Vec<SocketAddr>,
    /// Relay addresses the NMS hands to nodes, best first; when empty, each
    /// of `public_addrs` with the first `trs_listen` port.
    #[serde(default)]
    pub trs_public: Vec<SocketAddr>,
    /// NMS signaling addresses this TRS sends its TRS Report to every
    /// second (`docs/protocol.md` §5.18); empty: none. A TRS in the same
    /// process as the NMS reports to it without a socket.
    #[serde(default)]
    pub trs_report_to: Vec<SocketAddr>,
    /// The NMS leaves a TRS that reported and then stayed silent this many
    /// seconds out of new relay grants (at least 2: TRSs report every
    /// second).
    #[serde(default = "default_trs_dead_after_secs")]
    pub trs_dead_after_secs: u64,
    /// What the TRS forwards per relayed tunnel (both directions
    /// together), in Mbit/s, while another tunnel is busy, so one pair of
    /// nodes cannot take a relay's whole capacity from the others (a
    /// tunnel alone may use it all); 0: no limit.
    #[serde(default = "default_trs_session_mbit")]
    pub trs_session_mbit: u64,
    /// UDP addresses of the QUIC listener (signaling and relay over QUIC
    /// DATAGRAM frames, for networks that let only the web out). An empty
    /// list disables it.
    #[serde(default = "default_443")]
    pub quic_listen: Vec<SocketAddr>,
    /// TCP addresses of the TLS-over-TCP listener (signaling and relay in
    /// framed TLS, for networks without UDP). An empty list disables it.
    #[serde(default = "default_443")]
    pub tcp443_listen: Vec<SocketAddr>,
    /// Where `/metrics` (Prometheus text: the NMS's and TRS's counters) is
    /// served over plain HTTP; not at all when absent. Keep it on an
    /// address only the monitoring reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the operator's web console is served; not at all when absent
    /// (docs/console.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_listen: Option<SocketAddr>,
    /// The console speaks HTTPS with the cloud's server certificate (which
    /// chains to the root: browsers must trust the root). `false` serves
    /// plain HTTP for a reverse proxy that terminates TLS, and only on a
    /// loopback address.
    #[serde(default = "default_true")]
    pub console_tls: bool,
    /// This instance's name among the cloud's instances and to linked
    /// NMSs (logs, the link's Hello); the first public address when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Where the NMS link listens (TCP; TLS 1.3 with server certificates
    /// on both sides, `docs/protocol.md` §5.19); none: no link is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_listen: Option<SocketAddr>,
    /// The NMSs this one links to: the other instances of this cloud, and
    /// the NMSs of cooperating domains (`[[link]]` tables).
    #[serde(default, rename = "link", skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkPeerConfig>,
}

/// Another NMS this one asks for routes to names it does not hold, and
/// answers for its own (`docs/protocol.md` §5.19).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPeerConfig {
    /// Its `link_listen` address.
    pub addr: SocketAddr,
    /// The name or address its server certificate carries (one of its
    /// `public_addrs`); the IP address of `addr` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A cooperating domain's NMS: that domain. Absent: another instance
    /// of this cloud (the same database and CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The cooperating domain's root certificate (PEM); required with
    /// `domain`. Another instance is checked against this cloud's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// The cooperating domain's VIP prefixes; required with `domain`,
    /// disjoint from this cloud's and within the overlay's address space
    /// (100.64.0.0/10, and the /48 of this cloud's `vip6_prefix`), so its
    /// nodes' VIPs route through every node's TUN device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip4_prefix: Option<Ipv4Prefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip6_prefix: Option<Ipv6Prefix>,
    /// Another instance's addresses for nodes (its `public_addrs`), handed
    /// out at Login so nodes can move there when this one is gone; the IP
    /// address of `addr` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_addrs: Vec<IpAddr>,
}

impl LinkPeerConfig {
    /// The name its certificate must carry.
    pub fn tls_name(&self) -> String {
        self.server_name
            .clone()
            .unwrap_or_else(|| self.addr.ip().to_string())
    }

    /// Where nodes reach it (another instance).
    pub fn node_addrs(&self) -> Vec<IpAddr> {
        if self.public_addrs.is_empty() {
            vec![self.addr.ip()]
        } else {
            self.public_addrs.clone()
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_domain() -> String {
    DEFAULT_DOMAIN.to_owned()
}

fn default_as_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_AS_PORT),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_AS_PORT),
    ]
}

fn default_nms_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_NMS_PORT),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_NMS_PORT),
    ]
}

/// The port of the QUIC and TLS-over-TCP listeners.
pub const DEFAULT_443_PORT: u16 = 443;

fn default_443() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_443_PORT),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_443_PORT),
    ]
}

fn default_vip4_prefix() -> Ipv4Prefix {
    VIP4_SPACE
}

fn default_vip6_prefix() -> Ipv6Prefix {
    Ipv6Prefix::network(Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 0, 0), 48)
}

/// Node certificates' lifetime without `cert_validity_days` or
/// `cert_validity_secs`.
pub const DEFAULT_CERT_VALIDITY_DAYS: u32 = 90;
/// The longest node certificate lifetime, in days.
pub const MAX_CERT_VALIDITY_DAYS: u32 = 3650;
/// The shortest node certificate lifetime, in seconds: a node renews at two
/// thirds of it and needs some of the last third for retries.
pub const MIN_CERT_VALIDITY_SECS: u64 = 60;

fn default_session_lifetime_secs() -> u64 {
    86_400
}

fn default_keepalive_secs() -> u64 {
    15
}

fn default_relay_grant_secs() -> u64 {
    86_400
}

pub const DEFAULT_NMS_PROBE_PORT: u16 = 4504;
pub const DEFAULT_TRS_PORT: u16 = 4503;
pub const RELAY_SECRET_FILE: &str = "relay.secret";

fn default_nms_probe_port() -> u16 {
    DEFAULT_NMS_PROBE_PORT
}

fn default_trs_session_mbit() -> u64 {
    1000
}

fn default_trs_dead_after_secs() -> u64 {
    3
}

fn default_trs_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), DEFAULT_TRS_PORT),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DEFAULT_TRS_PORT),
    ]
}

/// Where the cloud keeps its state: `database` in `cloud.toml`. A
/// `postgres://` or `postgresql://` URL is PostgreSQL; anything else is the
/// path of an SQLite file, as it always was.
///
/// SQLite is one file on one host: the cloud and the operator's commands
/// there. PostgreSQL may be shared by several cloud instances; the store
/// serialises their writers either way (`crate::store`).
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// The URL as sqlx takes it (libpq's form, `?host=/run/postgresql`
    /// for a Unix socket, `sslmode=verify-full&sslrootcert=...` for TLS);
    /// a password in it is never shown ([`fmt::Display`]).
    Postgres(String),
}

impl Database {
    /// What `database = "<value>"` means.
    pub fn from_setting(value: &str) -> Database {
        let lower = value.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Database::Postgres(value.to_owned())
        } else {
            Database::Sqlite(PathBuf::from(value))
        }
    }

    /// Checks what loading cannot: a URL sqlx can use, and no other
    /// scheme taken for a file name.
    fn check(&self) -> Result<(), String> {
        match self {
            Database::Postgres(url) => url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .map(drop)
                .map_err(|e| format!("= \"{self}\" is not a PostgreSQL URL sqlx can use ({e})")),
            Database::Sqlite(path) if path.to_string_lossy().contains("://") => Err(format!(
                "= {:?} is neither a file path (SQLite) nor a postgres:// URL",
                path.display().to_string()
            )),
            Database::Sqlite(_) => Ok(()),
        }
    }
}

impl fmt::Display for Database {
    /// The path, or the URL with its password (if any) replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}

impl Serialize for Database {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Database::Sqlite(path) => path.serialize(serializer),
            Database::Postgres(url) => url.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Database::from_setting(&String::deserialize(deserializer)?))
    }
}

/// `url` with `***` for its password: in the authority (after `://`, up to
/// the first `/`, `?` or `#`) between the first `:` and the last `@`, and
/// the value of a `password` query parameter.
fn redact_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let mut out = match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let colon = authority.find(':').unwrap_or(at);
            format!("{}***{}", &url[..start + colon + 1], &url[start + at..end])
        }
        _ => url[..end].to_owned(),
    };
    let rest = &url[end..];
    let (before_fragment, fragment) = rest.split_at(rest.find('#').unwrap_or(rest.len()));
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<&str> = query
                .split('&')
                .map(|p| {
                    if p.starts_with("password=") {
                        "password=***"
                    } else {
                        p
                    }
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or name;
    /// `message` is toml's, which names the key and shows the line.
    #[error(
        "{path}: {message}\nhint: fix or remove the key named above; \
         `cyphonic cloud init` writes a file with every key and its default"
    )]
    Parse { path: PathBuf, message: String },
    #[error("{location}`{key}` {problem}; {fix}")]
    Invalid {
        /// `"<path>: "` when the configuration came from a file.
        location: String,
        key: &'static str,
        problem: String,
        fix: String,
    },
}

impl CloudConfig {
    /// A configuration with every default and the given data folder.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        CloudConfig {
            domain: default_domain(),
            data_dir: data_dir.into(),
            database: None,
            as_listen: default_as_listen(),
            nms_listen: default_nms_listen(),
            public_addrs: Vec::new(),
            vip4_prefix: default_vip4_prefix(),
            vip6_prefix: default_vip6_prefix(),
            cert_validity_days: None,
            cert_validity_secs: None,
            session_lifetime_secs: default_session_lifetime_secs(),
            keepalive_secs: default_keepalive_secs(),
            relay_grant_secs: default_relay_grant_secs(),
            nms_probe_port: default_nms_probe_port(),
            trs_listen: default_trs_listen(),
            trs_public: Vec::new(),
            trs_report_to: Vec::new(),
            trs_dead_after_secs: default_trs_dead_after_secs(),
            trs_session_mbit: default_trs_session_mbit(),
            quic_listen: default_443(),
            tcp443_listen: default_443(),
            metrics_listen: None,
            console_listen: None,
            console_tls: true,
            instance: None,
            link_listen: None,
            links: Vec::new(),
        }
    }

    /// Reads, parses and validates `path`. Relative `data_dir` and `database`
    /// are taken relative to the folder holding the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: CloudConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        if cfg.data_dir.is_relative() {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        if let Some(Database::Sqlite(db)) = &mut cfg.database {
            if db.is_relative() {
                *db = base.join(&*db);
            }
        }
        for link in &mut cfg.links {
            if let Some(root) = &mut link.root {
                if root.is_relative() {
                    *root = base.join(&*root);
                }
            }
        }
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid {
                key, problem, fix, ..
            } => ConfigError::Invalid {
                location: format!("{}: ", path.display()),
                key,
                problem,
                fix,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// The configuration as a TOML document.
    pub fn to_toml(&self) -> String {
        // Invariant: every field is a plain value or an array of plain
        // values, which TOML can always represent.
        toml::to_string(self).expect("CloudConfig always serializes to TOML")
    }

    /// Checks the values that parsing alone does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: String, fix: &str| ConfigError::Invalid {
            location: String::new(),
            key,
            problem,
            fix: fix.to_owned(),
        };
        if let Some(database) = &self.database {
            database.check().map_err(|problem| {
                invalid(
                    "database",
                    problem,
                    "give the path of an SQLite file, or a PostgreSQL URL like \
                     \"postgres://cyphonic@db.example/cyphonic\" \
                     (\"?host=/run/postgresql\" for its Unix socket)",
                )
            })?;
        }
        if !is_dns_name(&self.domain) {
            return Err(invalid(
                "domain",
                format!("= {:?} is not a valid DNS name", self.domain),
                "use lowercase labels of letters, digits and '-', separated by dots, \
                 like \"cyphonic.internal\"",
            ));
        }
        if let Some(listen) = self.console_listen {
            if !self.console_tls && !listen.ip().is_loopback() {
                return Err(invalid(
                    "console_listen",
                    format!(
                        "= \"{listen}\" serves plain HTTP (console_tls = false) beyond this host"
                    ),
                    "keep console_tls = true, or listen on a loopback address behind a \
                     reverse proxy that terminates TLS, like \"127.0.0.1:8443\"",
                ));
            }
        }
        if self.as_listen.is_empty() {
            return Err(invalid(
                "as_listen",
                "is empty".into(),
                "give at least one address, like [\"0.0.0.0:4501\"]",
            ));
        }
        if self.nms_listen.is_empty() {
            return Err(invalid(
                "nms_listen",
                "is empty".into(),
                "give at least one address, like [\"0.0.0.0:4502\"]",
            ));
        }
        for (key, list) in [
            ("quic_listen", &self.quic_listen),
            ("tcp443_listen", &self.tcp443_listen),
        ] {
            if let Some(dup) = first_duplicate(list) {
                return Err(invalid(
                    key,
                    format!("lists {dup} twice"),
                    "list each address once, or [] to disable the listener",
                ));
            }
        }
        // QUIC shares UDP with the NMS and the TRS, TLS over TCP shares TCP
        // with the AS: the same address twice could not be bound.
        let udp_clash = self.quic_listen.iter().find(|a| {
            self.nms_listen.contains(a)
                || self.trs_listen.contains(a)
                || (self.nms_probe_port != 0
                    && a.port() == self.nms_probe_port
                    && self.nms_listen.iter().any(|n| n.ip() == a.ip()))
        });
        if let Some(a) = udp_clash {
            return Err(invalid(
                "quic_listen",
                format!("contains {a}, which the NMS or the TRS already uses"),
                "use another port for QUIC, like 443",
            ));
        }
        // The NMS tells its own UDP sockets from the hub by local address.
        if let Some(a) = self
            .tcp443_listen
            .iter()
            .find(|a| self.as_listen.contains(a) || self.nms_listen.contains(a))
        {
            return Err(invalid(
                "tcp443_listen",
                format!("contains {a}, which the AS or the NMS already uses"),
                "use another port for TLS over TCP, like 443",
            ));
        }
        if let Some(ip) = self
            .public_addrs
            .iter()
            .find(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(invalid(
                "public_addrs",
                format!("contains {ip}, which nodes cannot connect to"),
                "list the unicast addresses nodes use to reach the cloud",
            ));
        }
        if self.trs_session_mbit > 1_000_000 {
            return Err(invalid(
                "trs_session_mbit",
                format!("= {} is over 1000000 (1 Tbit/s)", self.trs_session_mbit),
                "give Mbit/s per relayed tunnel, or 0 for no limit",
            ));
        }
        if !(2..=3600).contains(&self.trs_dead_after_secs) {
            return Err(invalid(
                "trs_dead_after_secs",
                format!("= {} is outside 2..=3600", self.trs_dead_after_secs),
                "TRSs report every second: give a few seconds, like 3",
            ));
        }
        if !self.trs_report_to.is_empty() && self.trs_own_addrs().is_empty() {
            return Err(invalid(
                "trs_report_to",
                "is set, but this TRS has no address to name itself by".into(),
                "set public_addrs (or specific trs_listen addresses) to the addresses \
                 nodes reach this TRS at, as the NMS lists them in trs_public",
            ));
        }
        if !VIP4_SPACE.contains_prefix(&self.vip4_prefix) {
            return Err(invalid(
                "vip4_prefix",
                format!("= \"{}\" is outside 100.64.0.0/10", self.vip4_prefix),
                "use 100.64.0.0/10 or a prefix inside it",
            ));
        }
        if self.vip4_prefix.host_bits() < 2 {
            return Err(invalid(
                "vip4_prefix",
                format!("= \"{}\" has no room for devices", self.vip4_prefix),
                "use a prefix of length 30 or shorter",
            ));
        }
        if !VIP6_SPACE.contains_prefix(&self.vip6_prefix) {
            return Err(invalid(
                "vip6_prefix",
                format!("= \"{}\" is not a ULA (inside fd00::/8)", self.vip6_prefix),
                "use a ULA prefix like \"fd7a:6379:7068::/48\"",
            ));
        }
        // A device's VIPv6 carries the same host number as its VIPv4.
        if self.vip6_prefix.host_bits() < self.vip4_prefix.host_bits() {
            return Err(invalid(
                "vip6_prefix",
                format!(
                    "= \"{}\" has fewer host bits than vip4_prefix \"{}\"",
                    self.vip6_prefix, self.vip4_prefix
                ),
                "use a shorter IPv6 prefix, like a /48",
            ));
        }
        match (self.cert_validity_days, self.cert_validity_secs) {
            (Some(days), Some(secs)) => {
                return Err(invalid(
                    "cert_validity_secs",
                    format!("= {secs} is given beside cert_validity_days = {days}"),
                    "give the certificate lifetime once: remove one of the two keys",
                ))
            }
            (Some(days), None) if !(1..=MAX_CERT_VALIDITY_DAYS).contains(&days) => {
                return Err(invalid(
                    "cert_validity_days",
                    format!("= {days} is out of range"),
                    "use a number of days from 1 to 3650",
                ))
            }
            (None, Some(secs))
                if !(MIN_CERT_VALIDITY_SECS..=u64::from(MAX_CERT_VALIDITY_DAYS) * 86_400)
                    .contains(&secs) =>
            {
                return Err(invalid(
                    "cert_validity_secs",
                    format!("= {secs} is out of range"),
                    "use a number of seconds from 60 to 315360000 (3650 days)",
                ))
            }
            _ => {}
        }
        if !(60..=366 * 86_400).contains(&self.session_lifetime_secs) {
            return Err(invalid(
                "session_lifetime_secs",
                format!("= {} is out of range", self.session_lifetime_secs),
                "use a number of seconds from 60 to 31622400",
            ));
        }
        if !(20..=7 * 86_400).contains(&self.relay_grant_secs) {
            return Err(invalid(
                "relay_grant_secs",
                format!("= {} is out of range", self.relay_grant_secs),
                "use a number of seconds from 20 to 604800",
            ));
        }
        if self.keepalive_secs == 0 || self.keepalive_secs * 2 > self.session_lifetime_secs {
            return Err(invalid(
                "keepalive_secs",
                format!(
                    "= {} must be at least 1 and at most half of session_lifetime_secs",
                    self.keepalive_secs
                ),
                "use a few seconds, like 15",
            ));
        }
        self.validate_links()
    }

    /// `[[link]]` tables: a cooperating domain names its root and VIP
    /// prefixes, which must not overlap this cloud's and must lie in the
    /// overlay's address space.
    fn validate_links(&self) -> Result<(), ConfigError> {
        let invalid = |problem: String, fix: &str| ConfigError::Invalid {
            location: String::new(),
            key: "link",
            problem,
            fix: fix.to_owned(),
        };
        let own6 = Ipv6Prefix::containing(self.vip6_prefix.addr(), 48).ok();
        for (i, link) in self.links.iter().enumerate() {
            if let Some(name) = &link.server_name {
                if name.parse::<IpAddr>().is_err() && !is_dns_name(name) {
                    return Err(invalid(
                        format!(
                            "[{i}] server_name = {name:?} is neither a DNS name nor an address"
                        ),
                        "give the name or address the peer's certificate carries",
                    ));
                }
            }
            let Some(domain) = &link.domain else {
                if link.root.is_some() || link.vip4_prefix.is_some() || link.vip6_prefix.is_some() {
                    return Err(invalid(
                        format!("[{i}] ({}) names a root or VIP prefixes but no domain", link.addr),
                        "another instance of this cloud shares its root and prefixes:                          remove them, or add `domain` for a cooperating domain",
                    ));
                }
                continue;
            };
            let fix = "a cooperating domain needs `domain`, `root` (its root certificate),                        `vip4_prefix` and `vip6_prefix` (its VIP prefixes, disjoint from this                        cloud's, inside 100.64.0.0/10 and the /48 of this cloud's vip6_prefix)";
            if !is_dns_name(domain) || *domain == self.domain {
                return Err(invalid(
                    format!("[{i}] domain = {domain:?} is not another valid DNS name"),
                    fix,
                ));
            }
            let (Some(_), Some(v4), Some(v6)) = (&link.root, link.vip4_prefix, link.vip6_prefix)
            else {
                return Err(invalid(format!("[{i}] ({domain}) is incomplete"), fix));
            };
            let overlaps4 =
                v4.contains(self.vip4_prefix.addr()) || self.vip4_prefix.contains(v4.addr());
            let overlaps6 =
                v6.contains(self.vip6_prefix.addr()) || self.vip6_prefix.contains(v6.addr());
            if overlaps4 || overlaps6 {
                return Err(invalid(
                    format!("[{i}] ({domain}) has VIP prefixes that overlap this cloud's"),
                    fix,
                ));
            }
            if !VIP4_SPACE.contains_prefix(&v4) || !own6.is_some_and(|p| p.contains_prefix(&v6)) {
                return Err(invalid(
                    format!(
                        "[{i}] ({domain}) has VIP prefixes outside the overlay's address space"
                    ),
                    fix,
                ));
            }
        }
        Ok(())
    }

    /// This instance's name (`instance`, else its first public address,
    /// else its first NMS address).
    pub fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(|| {
            self.public_addrs
                .first()
                .map(|ip| ip.to_string())
                .or_else(|| self.nms_listen.first().map(|a| a.ip().to_string()))
                .unwrap_or_else(|| "cloud".into())
        })
    }

    /// The lifetime of the node certificates the AS issues:
    /// `cert_validity_secs`, else `cert_validity_days`, else 90 days.
    pub fn cert_validity(&self) -> Duration {
        match (self.cert_validity_secs, self.cert_validity_days) {
            (Some(secs), _) => Duration::from_secs(secs),
            (None, Some(days)) => Duration::from_secs(u64::from(days) * 86_400),
            (None, None) => Duration::from_secs(u64::from(DEFAULT_CERT_VALIDITY_DAYS) * 86_400),
        }
    }

    /// The database: `database`, else the SQLite file `<data_dir>/cloud.db`.
    pub fn database(&self) -> Database {
        self.database
            .clone()
            .unwrap_or_else(|| Database::Sqlite(self.data_dir.join(DATABASE_FILE)))
    }

    /// The root CA certificate (PEM), which nodes trust.
    pub fn root_cert_path(&self) -> PathBuf {
        self.data_dir.join(ROOT_CERT_FILE)
    }

    /// The intermediate CA certificate (PEM) the AS issues with.
    pub fn as_cert_path(&self) -> PathBuf {
        self.data_dir.join(AS_CERT_FILE)
    }

    /// The intermediate CA private key (PEM).
    pub fn as_key_path(&self) -> PathBuf {
        self.data_dir.join(AS_KEY_FILE)
    }

    /// The relay secret NMS and TRS share (`relay.secret` in `data_dir`):
    /// every host running either needs the same file.
    pub fn relay_secret_path(&self) -> PathBuf {
        self.data_dir.join(RELAY_SECRET_FILE)
    }

    /// Relay addresses for nodes: `trs_public`, or each public address with
    /// the TRS port.
    pub fn relay_endpoints(&self) -> Vec<SocketAddr> {
        if !self.trs_public.is_empty() {
            return self.trs_public.clone();
        }
        let port = self
            .trs_listen
            .first()
            .map(|a| a.port())
            .unwrap_or(DEFAULT_TRS_PORT);
        self.public_addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect()
    }

    /// The relay addresses this TRS names itself by in its TRS Reports:
    /// each `trs_listen` address, an unspecified one replaced by each of
    /// `public_addrs` of its IP version (with its port). The NMS finds
    /// the instance by these among its `trs_public`.
    pub fn trs_own_addrs(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for l in &self.trs_listen {
            if l.ip().is_unspecified() {
                out.extend(
                    self.public_addrs
                        .iter()
                        .filter(|ip| ip.is_ipv4() == l.is_ipv4())
                        .map(|ip| SocketAddr::new(*ip, l.port())),
                );
            } else {
                out.push(*l);
            }
        }
        out
    }

    /// The ports of the cloud's QUIC and TLS-over-TCP listeners (same on
    /// every cloud address and TRS instance), 0 for one that is off.
    pub fn leg_ports(&self) -> (u16, u16) {
        let port = |l: &[SocketAddr]| l.first().map_or(0, SocketAddr::port);
        (port(&self.quic_listen), port(&self.tcp443_listen))
    }

    /// The port nodes send NMS signaling to.
    pub fn nms_port(&self) -> u16 {
        self.nms_listen
            .first()
            .map_or(DEFAULT_NMS_PORT, SocketAddr::port)
    }
}

fn first_duplicate(list: &[SocketAddr]) -> Option<SocketAddr> {
    list.iter()
        .enumerate()
        .find(|(i, a)| list[..*i].contains(a))
        .map(|(_, a)| *a)
}

/// Whether `s` is one DNS label as we allow it: 1 to 63 lowercase letters,
/// digits and '-', not starting or ending with '-' (RFC 1123 section 2.1).
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS name of lowercase labels, at most 253 characters,
/// without a trailing dot.
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub use cyphonic_proto::prefix::{Ipv4Prefix, Ipv6Prefix, PrefixError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_reject_host_bits() {
        let p: Ipv4Prefix = "100.64.0.0/10".parse().unwrap();
        assert_eq!(p, VIP4_SPACE);
        assert!(p.contains("100.127.255.255".parse().unwrap()));
        assert!(!p.contains("100.128.0.0".parse().unwrap()));
        assert_eq!(
            "100.64.0.1/10".parse::<Ipv4Prefix>(),
            Err(PrefixError::HostBits {
                given: "100.64.0.1/10".into(),
                network: "100.64.0.0/10".into()
            })
        );
        assert!("100.64.0.0/33".parse::<Ipv4Prefix>().is_err());
        assert!("100.64.0.0".parse::<Ipv4Prefix>().is_err());
        assert!("100.64.0.0/+1".parse::<Ipv4Prefix>().is_err());
        let p6: Ipv6Prefix = "fd7a:6379:7068::/48".parse().unwrap();
        assert_eq!(p6.host(5), Some("fd7a:6379:7068::5".parse().unwrap()));
        assert_eq!(
            p6.host_number("fd7a:6379:7068::1:2".parse().unwrap()),
            Some(0x1_0002)
        );
        assert!("::/0"
            .parse::<Ipv6Prefix>()
            .unwrap()
            .host(u128::MAX)
            .is_some());
        let small: Ipv4Prefix = "100.64.0.0/30".parse().unwrap();
        assert_eq!(small.host(3), Some(Ipv4Addr::new(100, 64, 0, 3)));
        assert_eq!(small.host(4), None);
    }

    #[test]
    fn a_trs_names_itself_by_its_listen_or_public_addresses() {
        let mut cfg = CloudConfig::new("/var/lib/cyphonic");
        assert_eq!(cfg.trs_dead_after_secs, 3);
        assert_eq!(cfg.trs_session_mbit, 1000);
        assert!(cfg.trs_report_to.is_empty());
        assert!(cfg.trs_own_addrs().is_empty());
        cfg.public_addrs = vec![
            "203.0.113.20".parse().unwrap(),
            "2001:db8::20".parse().unwrap(),
        ];
        assert_eq!(
            cfg.trs_own_addrs(),
            vec![
                "203.0.113.20:4503".parse::<SocketAddr>().unwrap(),
                "[2001:db8::20]:4503".parse().unwrap()
            ]
        );
        cfg.trs_listen = vec!["192.0.2.2:4503".parse().unwrap()];
        assert_eq!(cfg.trs_own_addrs(), vec!["192.0.2.2:4503".parse().unwrap()]);
        cfg.trs_report_to = vec!["192.0.2.1:4502".parse().unwrap()];
        assert!(cfg.validate().is_ok());
        // Reporting without an address to be known by, or a dead time the
        // reports cannot keep up with, names the key.
        cfg.trs_listen = default_trs_listen();
        cfg.public_addrs.clear();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("trs_report_to"));
        cfg.trs_report_to.clear();
        cfg.trs_session_mbit = 2_000_000;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("trs_session_mbit"));
        cfg.trs_session_mbit = 0;
        cfg.validate().unwrap();
        cfg.trs_dead_after_secs = 1;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("trs_dead_after_secs"));
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let cfg = CloudConfig::new("/var/lib/cyphonic");
        cfg.validate().unwrap();
        let back: CloudConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
        let minimal: CloudConfig = toml::from_str("data_dir = \"/x\"").unwrap();
        assert_eq!(minimal, CloudConfig::new("/x"));
        assert_eq!(
            minimal.database(),
            Database::Sqlite(PathBuf::from("/x/cloud.db"))
        );
        assert_eq!(minimal.nms_port(), 4502);
        assert_eq!(
            minimal.quic_listen,
            vec![
                "0.0.0.0:443".parse::<SocketAddr>().unwrap(),
                "[::]:443".parse().unwrap()
            ]
        );
        assert_eq!(minimal.tcp443_listen, minimal.quic_listen);
    }

    #[test]
    fn listeners_443_can_be_disabled_and_must_not_clash() {
        let cfg: CloudConfig =
            toml::from_str("data_dir = \"/x\"\nquic_listen = []\ntcp443_listen = []").unwrap();
        cfg.validate().unwrap();
        assert!(cfg.quic_listen.is_empty() && cfg.tcp443_listen.is_empty());

        let mut cfg = CloudConfig::new("/x");
        cfg.quic_listen = vec!["0.0.0.0:4502".parse().unwrap()];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("`quic_listen`"), "{e}");

        let mut cfg = CloudConfig::new("/x");
        cfg.tcp443_listen = vec!["0.0.0.0:4501".parse().unwrap()];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("`tcp443_listen`"), "{e}");

        let mut cfg = CloudConfig::new("/x");
        cfg.tcp443_listen = vec!["0.0.0.0:443".parse().unwrap(); 2];
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = CloudConfig::new("/x");
        cfg.vip4_prefix = "10.0.0.0/8".parse().unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("`vip4_prefix`") && e.contains("100.64.0.0/10"),
            "{e}"
        );

        let mut cfg = CloudConfig::new("/x");
        cfg.vip6_prefix = "2001:db8::/32".parse().unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("`vip6_prefix`"), "{e}");

        let mut cfg = CloudConfig::new("/x");
        cfg.domain = "Bad_Domain".into();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("`domain`"), "{e}");

        let mut cfg = CloudConfig::new("/x");
        cfg.vip6_prefix = "fd00::/120".parse().unwrap();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn certificate_lifetime_in_days_or_seconds_not_both() {
        let parse = |text: &str| -> CloudConfig { toml::from_str(text).unwrap() };
        let cfg = parse("data_dir = \"/x\"");
        cfg.validate().unwrap();
        assert_eq!(cfg.cert_validity(), Duration::from_secs(90 * 86_400));
        assert!(
            !cfg.to_toml().contains("cert_validity"),
            "neither key is written when neither is set"
        );

        let cfg = parse("data_dir = \"/x\"\ncert_validity_days = 30");
        cfg.validate().unwrap();
        assert_eq!(cfg.cert_validity(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse(&cfg.to_toml()), cfg);

        let cfg = parse("data_dir = \"/x\"\ncert_validity_secs = 60");
        cfg.validate().unwrap();
        assert_eq!(cfg.cert_validity(), Duration::from_secs(60));
        assert_eq!(parse(&cfg.to_toml()), cfg);

        let both = parse("data_dir = \"/x\"\ncert_validity_days = 1\ncert_validity_secs = 60");
        let e = both.validate().unwrap_err().to_string();
        assert!(
            e.contains("`cert_validity_secs`") && e.contains("cert_validity_days = 1"),
            "{e}"
        );

        for (text, key) in [
            ("cert_validity_secs = 59", "`cert_validity_secs`"),
            ("cert_validity_secs = 315360001", "`cert_validity_secs`"),
            ("cert_validity_days = 0", "`cert_validity_days`"),
            ("cert_validity_days = 3651", "`cert_validity_days`"),
        ] {
            let e = parse(&format!("data_dir = \"/x\"\n{text}"))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse("data_dir = \"/x\"\ncert_validity_days = 3650")
            .validate()
            .is_ok());
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("n1"));
        assert!(is_dns_label("web-01"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_name("cyphonic.internal"));
        assert!(!is_dns_name("cyphonic..internal"));
        assert!(!is_dns_name("cyphonic.internal."));
    }

    #[test]
    fn database_is_a_path_or_a_postgres_url() {
        let dir = std::env::temp_dir().join(format!("cyphonic-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load = |text: &str| {
            let path = dir.join("cloud.toml");
            std::fs::write(&path, format!("data_dir = \"d\"\n{text}")).unwrap();
            CloudConfig::load(&path)
        };
        // A path, as before: relative to the file's folder.
        let cfg = load("database = \"state/cloud.db\"").unwrap();
        assert_eq!(
            cfg.database(),
            Database::Sqlite(dir.join("state").join("cloud.db"))
        );
        assert_eq!(
            load("").unwrap().database(),
            Database::Sqlite(dir.join("d").join("cloud.db"))
        );
        // A URL is PostgreSQL, taken as written.
        for url in [
            "postgres://cyphonic:s3cret@db.example:5432/cyphonic?sslmode=verify-full",
            "postgresql://cyphonic@localhost/cyphonic?host=/run/postgresql",
        ] {
            let cfg = load(&format!("database = \"{url}\"")).unwrap();
            assert_eq!(cfg.database(), Database::Postgres(url.into()));
            let back: CloudConfig = toml::from_str(&cfg.to_toml()).unwrap();
            assert_eq!(back, cfg);
        }
        // Another scheme or a URL sqlx cannot use names the key.
        for bad in [
            "mysql://db.example/cyphonic",
            "postgres://db.example:port/x",
        ] {
            let e = load(&format!("database = \"{bad}\""))
                .unwrap_err()
                .to_string();
            assert!(e.contains("`database`"), "{bad}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_database_password_is_never_shown() {
        for (url, shown) in [
            (
                "postgres://cyphonic:s3cret@db.example/cyphonic",
                "postgres://cyphonic:***@db.example/cyphonic",
            ),
            (
                "postgres://cyphonic:p@ss:word@db.example",
                "postgres://cyphonic:***@db.example",
            ),
            (
                "postgres://cyphonic@db.example/c?sslmode=require&password=s3cret#x",
                "postgres://cyphonic@db.example/c?sslmode=require&password=***#x",
            ),
            (
                "postgres://db.example/c?host=/run/postgresql",
                "postgres://db.example/c?host=/run/postgresql",
            ),
        ] {
            let db = Database::from_setting(url);
            assert_eq!(db.to_string(), shown);
            assert!(!format!("{db:?}").contains("s3cret"));
        }
        assert_eq!(
            Database::from_setting("/var/lib/cyphonic/cloud.db").to_string(),
            "/var/lib/cyphonic/cloud.db"
        );
    }
}
