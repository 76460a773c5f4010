//! What a node keeps on disk after enrollment: its configuration
//! (`node.toml`), its private key (`node.key`, never sent anywhere), its
//! certificate chain (`node.pem`) and the cloud's root (`root.pem`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cyphonic";

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

/// Writes a file readable by its owner only (keys, or files next to them).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
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
