//! The node's TUN device: one layer-3 interface carrying the overlay's
//! virtual IPs.
//!
//! [`TunConfig`] says what to create; `Tun` is the per-OS device. On Linux
//! it is a tun-rs device opened with `IFF_NO_PI` (packets are bare IP) and,
//! when [`TunConfig::offload`] is set, `IFF_VNET_HDR` with TSO4/TSO6/USO so
//! the kernel hands over and accepts 64 KB segments that `Tun` splits and
//! coalesces in batches.

use std::net::{Ipv4Addr, Ipv6Addr};

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::Tun;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::Tun;

/// What [`Tun::create`](crate::tun::Tun) sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name; at most 15 bytes on Linux (`IFNAMSIZ` - 1).
    pub name: String,
    /// MTU of the interface: the largest IP packet the kernel hands us, and
    /// the size of the packets a GSO segment is split into.
    pub mtu: u16,
    /// The node's VIPv4 (from 100.64.0.0/10).
    pub vip4: Ipv4Addr,
    /// Prefix length of the overlay's IPv4 range; the kernel routes the
    /// whole prefix to the device (on-link route).
    pub prefix4: u8,
    /// The node's VIPv6 (from the overlay's ULA prefix).
    pub vip6: Ipv6Addr,
    /// Prefix length of the overlay's IPv6 range.
    pub prefix6: u8,
    /// Use virtio-net headers with TCP/UDP segmentation offload, so bulk
    /// traffic crosses the device in large segments.
    pub offload: bool,
}

/// Headroom `Tun::send_batch` needs in front of each packet when offload
/// is on (the virtio-net header is written there). Callers that reserve
/// our 16-byte data header in front of each packet already have enough.
#[cfg(target_os = "linux")]
pub const MIN_SEND_OFFSET: usize = tun_rs::VIRTIO_NET_HDR_LEN;

/// Size of the `scratch` buffer `Tun::recv_batch` needs when offload is on:
/// a virtio-net header plus the largest GSO segment (64 KB).
#[cfg(target_os = "linux")]
pub const RECV_SCRATCH_LEN: usize = tun_rs::VIRTIO_NET_HDR_LEN + 65535;

/// How many packets one `recv_batch` may produce or one `send_batch`
/// should carry: a 64 KB segment split at a small MTU fits.
#[cfg(target_os = "linux")]
pub const IDEAL_BATCH_SIZE: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Windows: no virtio-net header, no GSO segments; a batch is what the
/// wintun ring already holds.
#[cfg(windows)]
pub const MIN_SEND_OFFSET: usize = 0;
#[cfg(windows)]
pub const RECV_SCRATCH_LEN: usize = 0;
#[cfg(windows)]
pub const IDEAL_BATCH_SIZE: usize = 64;

#[cfg(any(target_os = "linux", windows))]
impl Tun {
    /// Blocks until the device holds packets, then reads them as
    /// [`Tun::try_recv_batch`] does, returning how many. Under load the
    /// next packets are already queued and are read without waiting.
    pub fn recv_batch(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        offset: usize,
    ) -> std::io::Result<usize> {
        loop {
            match self.try_recv_batch(scratch, bufs, sizes, offset) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.wait_readable()?,
                other => return other,
            }
        }
    }
}

/// `Tun::recv_batch`'s arguments: at least one buffer, and a size slot
/// for each.
#[cfg(any(target_os = "linux", windows))]
fn check_batch(bufs: &[Vec<u8>], sizes: &[usize]) -> std::io::Result<()> {
    if bufs.is_empty() || sizes.len() < bufs.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "recv_batch needs at least one buffer and a size slot for each",
        ));
    }
    Ok(())
}
