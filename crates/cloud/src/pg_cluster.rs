//! A private PostgreSQL cluster for tests and labs: `initdb` into a fresh
//! folder under the system's temporary directory, the server listening on
//! a Unix socket in that folder alone (`listen_addresses = ''`: no TCP),
//! no system service involved. Dropping it stops the server (by the PID it
//! started) and removes the folder, also when a test panics.
//!
//! PostgreSQL refuses to run as root; as root the cluster runs as the
//! `postgres` user (Debian's package makes it), which then owns the folder.
//! The server binaries come from `/usr/lib/postgresql/<version>/bin` (the
//! newest), else `PATH`; Debian's `postgresql` package installs them
//! (`scripts/deps.sh`). Authentication is `trust`: only whoever can enter
//! the folder (its owner, and root) can reach the socket.
//!
//! Durability is off (`fsync`, `synchronous_commit`, `full_page_writes`):
//! the data dies with the cluster anyway, and tests run faster. This is no
//! way to run the cloud's production database.
//!
//! Blocking on purpose (the lab is synchronous); an async test may call it
//! directly, starting takes about a second.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The role every cluster is created with (its superuser).
pub const PG_USER: &str = "cyphonic";
/// How long starting or stopping the server may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a cluster could not be started or a database created.
#[derive(Debug, thiserror::Error)]
pub enum PgClusterError {
    #[error(
        "PostgreSQL's server binaries (initdb, postgres) were not found in \
         /usr/lib/postgresql/*/bin or PATH; install Debian's postgresql package \
         (scripts/deps.sh does)"
    )]
    NotInstalled,
    #[error("running as root, but there is no `postgres` user to run PostgreSQL as")]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Failed { what: String, output: String },
}

/// A running private cluster. See the module documentation.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    /// The postmaster; `Some` from the end of [`PgCluster::start`] until
    /// drop.
    server: Option<Child>,
}

impl PgCluster {
    /// The folder holding the server binaries, if they are installed.
    pub fn bin_dir() -> Option<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("postgres").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(bin);
        }
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        })
    }

    /// Creates and starts a cluster; returns once it accepts connections.
    pub fn start() -> Result<PgCluster, PgClusterError> {
        let bin = PgCluster::bin_dir().ok_or(PgClusterError::NotInstalled)?;
        let owner = server_user()?;
        let dir = make_private_dir(owner)?;
        // From here on, dropping `cluster` cleans up whatever was made.
        let mut cluster = PgCluster {
            dir,
            bin,
            server: None,
        };
        let data = cluster.dir.join("data");
        let mut initdb = cluster.server_command("initdb", owner);
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args(["--username", PG_USER, "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C", "--no-sync"]);
        run(&mut initdb, "initdb")?;

        let log = cluster.dir.join("postgres.log");
        let log_file = File::create(&log).map_err(io_error("create postgres.log"))?;
        let log_err = log_file
            .try_clone()
            .map_err(io_error("open postgres.log"))?;
        let mut postgres = cluster.server_command("postgres", owner);
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&cluster.dir)
            .args(["-c", "listen_addresses="])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let server = cluster
            .server
            .insert(postgres.spawn().map_err(io_error("start postgres"))?);

        // postmaster.pid's 8th line becomes "ready" once connections are
        // accepted (PostgreSQL 10 and later).
        let pid_file = data.join("postmaster.pid");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let ready = fs::read_to_string(&pid_file)
                .map(|t| t.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready {
                return Ok(cluster);
            }
            let exited = server.try_wait().map_err(io_error("wait for postgres"))?;
            if exited.is_some() || Instant::now() > deadline {
                return Err(PgClusterError::Failed {
                    what: "starting postgres".into(),
                    output: fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates database `name` (letters, digits and `_`) and returns its
    /// URL ([`PgCluster::url`]).
    pub fn create_database(&self, name: &str) -> Result<String, PgClusterError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(PgClusterError::Failed {
                what: format!("creating database {name:?}"),
                output: "a database name here is letters, digits and '_'".into(),
            });
        }
        let mut createdb = Command::new(self.bin.join("createdb"));
        createdb
            .arg("--host")
            .arg(&self.dir)
            .args(["--username", PG_USER, name]);
        run(&mut createdb, &format!("createdb {name}"))?;
        Ok(self.url(name))
    }

    /// The sqlx URL of database `name`: user [`PG_USER`] over the
    /// cluster's Unix socket (`?host=<folder>`; the host name before it is
    /// not used).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{PG_USER}@localhost/{name}?host={}",
            self.dir.display()
        )
    }

    /// The folder holding the socket (`.s.PGSQL.5432`), the data and the
    /// server's log (`postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's (postmaster's) process ID.
    pub fn pid(&self) -> u32 {
        // Invariant: `server` is Some from the end of start() until drop.
        self.server
            .as_ref()
            .map(Child::id)
            .expect("a started cluster has its server")
    }

    /// A command running server binary `name` as `owner` (None: as we are).
    fn server_command(&self, name: &str, owner: Option<(u32, u32)>) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command.current_dir(&self.dir).env("LC_ALL", "C");
        if let Some((uid, gid)) = owner {
            // std drops root's supplementary groups before setuid.
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for PgCluster {
    /// Fast shutdown (SIGINT: clients are disconnected), SIGKILL if it
    /// takes too long, then the folder goes.
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            if let (Ok(None), Ok(pid)) = (server.try_wait(), libc::pid_t::try_from(server.id())) {
                // SAFETY: kill has no memory preconditions; `pid` is our
                // child, not yet reaped, so it names no other process.
                unsafe { libc::kill(pid, libc::SIGINT) };
                let deadline = Instant::now() + TIMEOUT;
                while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if let Ok(None) = server.try_wait() {
                let _ = server.kill();
            }
            let _ = server.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// As root, the `postgres` user's (uid, gid); else None (we run it).
fn server_user() -> Result<Option<(u32, u32)>, PgClusterError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").map_err(|_| PgClusterError::NoPostgresUser)?;
    // SAFETY: `name` is a valid C string; getpwnam returns NULL or a
    // pointer to a static record we read at once, before any other call
    // that could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(PgClusterError::NoPostgresUser);
    }
    // SAFETY: non-null, as checked; see above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

/// A new folder `cyphonic-pg-<pid>-<random>` in the temporary directory,
/// mode 0700, owned by `owner` when given.
fn make_private_dir(owner: Option<(u32, u32)>) -> Result<PathBuf, PgClusterError> {
    let dir = std::env::temp_dir().join(format!(
        "cyphonic-pg-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::create_dir(&dir).map_err(io_error("create the cluster's folder"))?;
    let made = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(io_error("set the cluster folder's mode"))
        .and_then(|()| match owner {
            Some((uid, gid)) => std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io_error("give the cluster's folder to postgres")),
            None => Ok(()),
        });
    if let Err(e) = made {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Runs `command` to its end; its output is the error if it fails.
fn run(command: &mut Command, what: &str) -> Result<(), PgClusterError> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(io_error(&format!("run {what}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(PgClusterError::Failed {
        what: what.to_owned(),
        output: format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> PgClusterError + '_ {
    move |source| PgClusterError::Io {
        what: what.to_owned(),
        source,
    }
}
