//! Linux: systemd-resolved per-link DNS, or an in-place rewrite of
//! /etc/resolv.conf with a crash-safe backup.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::resolv_conf::{self, is_ours, is_resolved_stub};
use super::DnsSetup;

const RESOLV_CONF: &str = "/etc/resolv.conf";
const RESOLVED_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";
/// resolved's list of the host's real upstream servers.
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
const BACKUP_NAME: &str = "resolv.conf.cyphonic-backup";

/// Undoes [`install`]: on [`DnsGuard::restore`] or drop (errors on drop are
/// logged).
#[derive(Debug)]
pub struct DnsGuard {
    mode: Mode,
    restored: bool,
}

#[derive(Debug)]
enum Mode {
    Resolved { tun: String },
    ResolvConf { path: PathBuf, backup: PathBuf },
}

impl DnsGuard {
    /// Puts the host's configuration back. Idempotent.
    pub fn restore(&mut self) -> io::Result<()> {
        if self.restored {
            return Ok(());
        }
        match &self.mode {
            Mode::Resolved { tun } => revert_link(tun)?,
            Mode::ResolvConf { path, backup } => {
                restore_backup(path, backup)?;
            }
        }
        self.restored = true;
        Ok(())
    }
}

impl Drop for DnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            tracing::error!(error = %e, "could not restore the host's DNS configuration");
        }
    }
}

/// Makes `setup.listen` the resolver for `setup.domain` and returns the
/// host's own resolvers (port 53), read before anything changed, to forward
/// every other name to.
pub fn install(setup: &DnsSetup) -> io::Result<(DnsGuard, Vec<SocketAddr>)> {
    if resolved_manages_dns() {
        install_resolved(setup)
    } else {
        install_resolv_conf(setup, Path::new(RESOLV_CONF))
    }
}

/// Puts back the resolv.conf a crashed run left rewritten, if its backup is
/// in `state_dir`. Returns whether it did. Call before [`install`].
pub fn recover(state_dir: &Path) -> io::Result<bool> {
    recover_at(state_dir, Path::new(RESOLV_CONF))
}

// ---- mode 1: systemd-resolved ----

/// resolved is in charge when its varlink socket exists, `resolvectl`
/// answers, we share its network namespace (it configures links by index in
/// its own namespace, so a node inside `ip netns exec` must not use it), and
/// /etc/resolv.conf actually sends lookups to it.
fn resolved_manages_dns() -> bool {
    if !Path::new(RESOLVED_SOCKET).exists() || !same_netns_as_init() {
        return false;
    }
    let resolv = fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let via_resolved = fs::read_link(RESOLV_CONF)
        .is_ok_and(|target| target.to_string_lossy().contains("/run/systemd/resolve/"))
        || resolv_conf::parse(&resolv)
            .nameservers
            .iter()
            .any(|ns| is_resolved_stub(ns.addr));
    via_resolved && run("resolvectl", &["status"]).is_ok()
}

fn same_netns_as_init() -> bool {
    match (
        fs::metadata("/proc/self/ns/net"),
        fs::metadata("/proc/1/ns/net"),
    ) {
        (Ok(ours), Ok(init)) => ours.ino() == init.ino() && ours.dev() == init.dev(),
        _ => false,
    }
}

fn install_resolved(setup: &DnsSetup) -> io::Result<(DnsGuard, Vec<SocketAddr>)> {
    let conf = resolv_conf::parse(&fs::read_to_string(RESOLVED_UPSTREAMS).unwrap_or_default());
    let mut skip = vec![setup.listen];
    skip.extend(
        conf.nameservers
            .iter()
            .map(|ns| ns.addr)
            .filter(|a| is_resolved_stub(*a)),
    );
    let upstreams = resolv_conf::upstreams(&conf, &skip, if_index);
    let guard = DnsGuard {
        mode: Mode::Resolved {
            tun: setup.tun_name.clone(),
        },
        restored: false,
    };
    // From here on, dropping the guard reverts whatever part succeeded.
    for args in resolvectl_commands(setup) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("resolvectl", &args)?;
    }
    // Keep the link out of resolved's default route (older versions lack
    // the verb; a routing-only domain already implies it there).
    if let Err(e) = run("resolvectl", &["default-route", &setup.tun_name, "false"]) {
        tracing::debug!(error = %e, "resolvectl default-route not applied");
    }
    tracing::info!(
        tun = %setup.tun_name,
        domain = %setup.domain,
        listen = %setup.listen,
        ?upstreams,
        "overlay DNS installed via systemd-resolved"
    );
    Ok((guard, upstreams))
}

/// The resolvectl invocations for mode 1: our resolver on the TUN link and
/// the overlay domain as routing-only (`~`) domain of that link.
fn resolvectl_commands(setup: &DnsSetup) -> [Vec<String>; 2] {
    [
        vec![
            "dns".into(),
            setup.tun_name.clone(),
            setup.listen.to_string(),
        ],
        vec![
            "domain".into(),
            setup.tun_name.clone(),
            format!("~{}", setup.domain.trim_matches('.')),
        ],
    ]
}

fn revert_link(tun: &str) -> io::Result<()> {
    if !Path::new("/sys/class/net").join(tun).exists() {
        // The link is gone and resolved forgot its configuration with it.
        return Ok(());
    }
    run("resolvectl", &["revert", tun])
}

// ---- mode 2: /etc/resolv.conf ----

fn backup_path(state_dir: &Path) -> PathBuf {
    state_dir.join(BACKUP_NAME)
}

fn install_resolv_conf(setup: &DnsSetup, path: &Path) -> io::Result<(DnsGuard, Vec<SocketAddr>)> {
    fs::create_dir_all(&setup.state_dir)?;
    let backup = backup_path(&setup.state_dir);
    if backup.exists() {
        tracing::warn!(backup = %backup.display(), "restoring DNS left behind by an earlier run");
        restore_backup(path, &backup)?;
    }
    let original = match fs::read_to_string(path) {
        Ok(text) => text,
        // Without a resolv.conf glibc asks 127.0.0.1; an empty one means the
        // same, so the backup of a missing file is an empty file.
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(with_path(e, "reading", path)),
    };
    if is_ours(&original) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} was written by cyphonic but {} holds no backup of the original; \
                 restore it by hand",
                path.display(),
                backup.display()
            ),
        ));
    }
    let conf = resolv_conf::parse(&original);
    let upstreams = resolv_conf::upstreams(&conf, &[setup.listen], if_index);
    write_atomically(&backup, original.as_bytes())?;
    let guard = DnsGuard {
        mode: Mode::ResolvConf {
            path: path.to_owned(),
            backup: backup.clone(),
        },
        restored: false,
    };
    let ours = resolv_conf::render(&setup.domain, setup.listen, &backup, &conf);
    // On failure the guard's drop puts the original back.
    write_in_place(path, ours.as_bytes()).map_err(|e| with_path(e, "writing", path))?;
    tracing::info!(
        resolv_conf = %path.display(),
        domain = %setup.domain,
        listen = %setup.listen,
        ?upstreams,
        "overlay DNS installed in resolv.conf"
    );
    Ok((guard, upstreams))
}

fn recover_at(state_dir: &Path, path: &Path) -> io::Result<bool> {
    let backup = backup_path(state_dir);
    if !backup.exists() {
        return Ok(false);
    }
    tracing::warn!(backup = %backup.display(), "restoring DNS left behind by an earlier run");
    restore_backup(path, &backup)?;
    Ok(true)
}

/// Writes the backup's content back into `path` and deletes the backup.
/// If `path` no longer holds our rewrite (another tool such as a DHCP
/// client replaced it meanwhile), the newer file is left alone.
fn restore_backup(path: &Path, backup: &Path) -> io::Result<()> {
    let original = match fs::read(backup) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(with_path(e, "reading", backup)),
    };
    let current = fs::read_to_string(path).unwrap_or_default();
    // Empty: we crashed between truncating and writing.
    if is_ours(&current) || current.is_empty() {
        write_in_place(path, &original).map_err(|e| with_path(e, "restoring", path))?;
    } else {
        tracing::warn!(
            resolv_conf = %path.display(),
            "resolv.conf was replaced by another program; keeping it"
        );
    }
    fs::remove_file(backup).map_err(|e| with_path(e, "removing", backup))?;
    if let Some(dir) = backup.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Rewrites a file's content without replacing the file: /etc/resolv.conf
/// may be a bind mount (`ip netns exec` mounts /etc/netns/<ns>/resolv.conf
/// over it), where a rename fails with EBUSY.
fn write_in_place(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

/// Temp file, fsync, rename, fsync of the directory: after a crash the
/// backup is either absent or complete.
fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(e, "writing", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "fsync of directory failed");
    }
}

fn with_path(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

fn if_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; returns 0 when unknown.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "cyphonic-dns-test-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const ORIGINAL: &str = "# from DHCP\nsearch example.net\nnameserver 192.0.2.53\n\
                            nameserver 2001:db8::53\noptions edns0\n";

    fn setup(tmp: &TempDir) -> DnsSetup {
        DnsSetup {
            listen: "127.0.0.153".parse().unwrap(),
            domain: "cy.internal".into(),
            tun_name: "cy0".into(),
            state_dir: tmp.0.join("state"),
        }
    }

    #[test]
    fn resolv_conf_mode_rewrites_in_place_and_restores() {
        let tmp = TempDir::new();
        let resolv = tmp.0.join("resolv.conf");
        fs::write(&resolv, ORIGINAL).unwrap();
        let inode = fs::metadata(&resolv).unwrap().ino();
        let setup = setup(&tmp);

        let (mut guard, upstreams) = install_resolv_conf(&setup, &resolv).unwrap();
        assert_eq!(
            upstreams,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        let ours = fs::read_to_string(&resolv).unwrap();
        let backup = setup.state_dir.join(BACKUP_NAME);
        assert_eq!(
            ours,
            format!(
                "# cyphonic: overlay domain cy.internal via 127.0.0.153; original saved in {}\n\
                 nameserver 127.0.0.153\nsearch example.net\noptions edns0\n",
                backup.display()
            )
        );
        assert_eq!(
            fs::metadata(&resolv).unwrap().ino(),
            inode,
            "file was replaced"
        );
        assert_eq!(fs::read_to_string(&backup).unwrap(), ORIGINAL);

        guard.restore().unwrap();
        assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
        assert!(!backup.exists());
        assert_eq!(fs::metadata(&resolv).unwrap().ino(), inode);
        guard.restore().unwrap();
        drop(guard);
        assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
    }

    #[test]
    fn drop_restores() {
        let tmp = TempDir::new();
        let resolv = tmp.0.join("resolv.conf");
        fs::write(&resolv, ORIGINAL).unwrap();
        let (guard, _) = install_resolv_conf(&setup(&tmp), &resolv).unwrap();
        assert_ne!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
        drop(guard);
        assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
    }

    #[test]
    fn recover_puts_back_what_a_crashed_run_left() {
        let tmp = TempDir::new();
        let resolv = tmp.0.join("resolv.conf");
        fs::write(&resolv, ORIGINAL).unwrap();
        let setup = setup(&tmp);
        assert!(!recover_at(&setup.state_dir, &resolv).unwrap());
        let (guard, _) = install_resolv_conf(&setup, &resolv).unwrap();
        std::mem::forget(guard); // the crash
        assert!(is_ours(&fs::read_to_string(&resolv).unwrap()));

        assert!(recover_at(&setup.state_dir, &resolv).unwrap());
        assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
        assert!(!recover_at(&setup.state_dir, &resolv).unwrap());
    }

    #[test]
    fn install_after_a_crash_without_recover_still_sees_the_real_upstreams() {
        let tmp = TempDir::new();
        let resolv = tmp.0.join("resolv.conf");
        fs::write(&resolv, ORIGINAL).unwrap();
        let setup = setup(&tmp);
        std::mem::forget(install_resolv_conf(&setup, &resolv).unwrap().0);
        let (guard, upstreams) = install_resolv_conf(&setup, &resolv).unwrap();
        assert_eq!(upstreams.len(), 2, "{upstreams:?}");
        drop(guard);
        assert_eq!(fs::read_to_string(&resolv).unwrap(), ORIGINAL);
    }

    #[test]
    fn our_file_without_a_backup_is_refused() {
        let tmp = TempDir::new();
        let resolv = tmp.0.join("resolv.conf");
        fs::write(
            &resolv,
            "# cyphonic: overlay domain x via 127.0.0.153; ...\n",
        )
        .unwrap();
        let err = install_resolv_conf(&setup(&tmp), &resolv).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_file_replaced_by_another_program_is_kept_on_restore() {
        let tmp = TempDir::new();
        let resolv = tmp.0.join("resolv.conf");
        fs::write(&resolv, ORIGINAL).unwrap();
        let setup = setup(&tmp);
        let (guard, _) = install_resolv_conf(&setup, &resolv).unwrap();
        fs::write(&resolv, "nameserver 198.51.100.7\n").unwrap();
        drop(guard);
        assert_eq!(
            fs::read_to_string(&resolv).unwrap(),
            "nameserver 198.51.100.7\n"
        );
        assert!(!setup.state_dir.join(BACKUP_NAME).exists());
    }

    #[test]
    fn a_missing_resolv_conf_comes_back_empty() {
        let tmp = TempDir::new();
        let resolv = tmp.0.join("resolv.conf");
        let (guard, upstreams) = install_resolv_conf(&setup(&tmp), &resolv).unwrap();
        assert!(upstreams.is_empty());
        assert!(is_ours(&fs::read_to_string(&resolv).unwrap()));
        drop(guard);
        assert_eq!(fs::read_to_string(&resolv).unwrap(), "");
    }

    #[test]
    fn resolvectl_commands_route_only_the_overlay_domain() {
        let tmp = TempDir::new();
        let cmds = resolvectl_commands(&DnsSetup {
            domain: ".cy.internal.".into(),
            ..setup(&tmp)
        });
        assert_eq!(cmds[0], ["dns", "cy0", "127.0.0.153"]);
        assert_eq!(cmds[1], ["domain", "cy0", "~cy.internal"]);
    }
}
