//! Making the node's local resolver the host's resolver for the overlay
//! domain only, without breaking any other lookup.
//!
//! Call order at node start: [`recover`] (puts back what a crashed run left
//! behind), then [`install`], which returns a [`DnsGuard`] and the host's own
//! upstream resolvers; the node's resolver answers the overlay domain and
//! forwards every other name to those upstreams. Dropping the guard (or
//! [`DnsGuard::restore`]) puts the host's configuration back.
//!
//! On Linux there are two modes:
//! 1. systemd-resolved manages the host's DNS: the TUN link gets our
//!    resolver and the routing-only domain `~<domain>` (`resolvectl`), so
//!    resolved sends only overlay names to us.
//! 2. Otherwise `/etc/resolv.conf` is rewritten in place to name only our
//!    resolver, after a crash-safe backup of the original into the node's
//!    state directory.
//!
//! The text handling of mode 2 is pure and lives in [`resolv_conf`].
//!
//! On Windows one Name Resolution Policy Table rule sends the overlay
//! domain to the resolver ([`nrpt`]).

use std::net::IpAddr;
use std::path::PathBuf;

pub mod nrpt;
pub mod resolv_conf;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::{install, recover, DnsGuard};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{install, recover, DnsGuard, Registry};

/// What [`install`] sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSetup {
    /// Where the node's resolver listens, on port 53 (resolv.conf cannot
    /// name a port), e.g. 127.0.0.153.
    pub listen: IpAddr,
    /// The overlay domain, without dots around it (e.g. `cy.internal`).
    pub domain: String,
    /// The TUN device: systemd-resolved attaches the per-link DNS to it.
    pub tun_name: String,
    /// The node's state directory; the resolv.conf backup lives here so a
    /// crashed run can be undone by [`recover`].
    pub state_dir: PathBuf,
}
