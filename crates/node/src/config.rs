//! What a node keeps on disk after enrollment: its configuration
//! (`node.toml`), its private key (`node.key`, never sent anywhere), its
//! certificate chain (`node.pem`) and the cloud's root (`root.pem`); while
//! a renewal of the certificate is under way, the key it is for
//! (`node.key.next`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[cfg(not(windows))]
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cyphonic";
#[cfg(windows)]
pub const DEFAULT_STATE_DIR: &str = r"C:\ProgramData\cyphonic";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// The AS: address and TLS port.
    pub cloud: SocketAddr,
    /// The name (or IP address) the AS's TLS certificate carries.
    pub server_name: String,
    pub device_id: String,
    pub fqdn: String,
    pub domain: String,
}

pub struct StatePaths {
    pub dir: PathBuf,
}

impl StatePaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    pub fn chain(&self) -> PathBuf {
        self.dir.join("node.pem")
    }
    /// The key a certificate renewal is for, from before it is asked for
    /// until `node.key` is that key: a renewal asked again after a restart
    /// (its answer lost) is for the same key, and a crash between writing
    /// `node.pem` and `node.key` leaves the key that goes with `node.pem`.
    pub fn next_key(&self) -> PathBuf {
        self.dir.join("node.key.next")
    }
    /// The key an enrollment is for, from before it is asked for until it
    /// succeeds: an enrollment asked again (its answer lost, or late) is
    /// for the same key, and the AS answers it with the certificate it
    /// issued instead of refusing the spent password.
    pub fn enroll_key(&self) -> PathBuf {
        self.dir.join("node.key.enrolling")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("node.sock")
    }
    /// The peers this node had tunnels with, one FQDN a line: asked for
    /// again after a restart.
    pub fn peers(&self) -> PathBuf {
        self.dir.join("peers")
    }

    pub fn load(&self) -> anyhow::Result<NodeFile> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: enroll this node first (cyphonic node enroll ...)",
                path.display()
            )
        })?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid node configuration", path.display()))
    }
}

/// Writes a file readable by its owner only (keys, or files next to them),
/// atomically: a new temporary file of an unpredictable name, created
/// exclusively (so never through a symlink or into a file someone else
/// opened), then renamed over `path`.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = (|| -> anyhow::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        // Windows: the file takes the state directory's ACL (under
        // %ProgramData%\cyphonic: SYSTEM and Administrators write).
        let mut f = options
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates the state directory (and its parents) and makes it private to
/// its owner (0700), whatever the umask.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

/// Parses `host[:port]` for the cloud, defaulting the AS port.
pub fn parse_cloud(s: &str, default_port: u16) -> anyhow::Result<(SocketAddr, String)> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr, addr.ip().to_string()));
    }
    if let Ok(ip) = s
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Ok((SocketAddr::new(ip, default_port), ip.to_string()));
    }
    use std::net::ToSocketAddrs;
    let (host, with_port) = match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), s.to_owned()),
        _ => (s.to_owned(), format!("{s}:{default_port}")),
    };
    let Some(addr) = with_port.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        bail!("cannot resolve cloud address {s:?}: give an IP address, or host:port");
    };
    Ok((addr, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_and_never_written_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cyphonic-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        private_dir(&dir).expect("dir");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // Someone planted a symlink where a predictable temporary file
        // would go, pointing at a file of theirs.
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join("node.key.tmp")).expect("symlink");
        let key = dir.join("node.key");
        write_private(&key, "secret").expect("write");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "secret");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        // A symlink at the target is replaced, not followed.
        std::fs::remove_file(&key).expect("rm");
        std::os::unix::fs::symlink(&victim, &key).expect("symlink");
        write_private(&key, "again").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        assert!(!std::fs::symlink_metadata(&key)
            .expect("meta")
            .file_type()
            .is_symlink());
        let leftovers = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".tmp") && e.file_name() != "node.key.tmp"
            })
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn cloud_addresses_parse() {
        let (a, n) = parse_cloud("192.0.2.1", 4501).unwrap();
        assert_eq!(a, "192.0.2.1:4501".parse().unwrap());
        assert_eq!(n, "192.0.2.1");
        let (a, n) = parse_cloud("[2001:db8::1]:9000", 4501).unwrap();
        assert_eq!(a, "[2001:db8::1]:9000".parse().unwrap());
        assert_eq!(n, "2001:db8::1");
        let (a, _) = parse_cloud("2001:db8::1", 4501).unwrap();
        assert_eq!(a.port(), 4501);
        assert!(parse_cloud("no such host .invalid", 4501).is_err());
    }
}
