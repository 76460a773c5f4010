//! The adapter's sans-IO parts (`docs/adapter.md`): what it does with the
//! frames of the general nodes' LAN, as pure functions and state machines
//! that take `now` and bytes and return bytes. The shell joins them to an
//! `AF_PACKET` socket on the LAN interface and to the node cores that
//! stand for the general nodes.

#[cfg(target_os = "linux")]
pub mod daemon;
#[cfg(target_os = "linux")]
pub mod device;
pub mod dhcp4;
pub mod dhcp6;
pub mod frame;
#[cfg(target_os = "linux")]
pub mod lan;
pub mod prefix;
pub mod proxy;
pub mod ra;

pub use cyphonic_proto::mac::{BadMac, MacAddr};
