//! cyphonic's OS integration: the parts of a node that touch the host.
//!
//! - [`tun`]: the TUN device that carries the node's virtual IPs, with
//!   batched, offload-aware packet IO for the data path.
//! - [`packet`]: raw Ethernet frames on one interface (the adapter's LAN).
//! - [`dns`]: making the node's local resolver the host's resolver for the
//!   overlay domain only, and putting the host's configuration back.
//!
//! Each module is a facade: the types that describe what to do are
//! OS-independent, the implementation is chosen per target (Linux now,
//! Windows later).

pub mod dns;
pub mod netwatch;
#[cfg(target_os = "linux")]
pub mod packet;
pub mod tun;
pub mod udp;

/// Whether this process runs with an effective user id of 0.
///
/// Creating TUN devices and rewriting the resolver configuration need it;
/// callers check first so they can say so instead of failing on `EPERM`.
#[cfg(unix)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
