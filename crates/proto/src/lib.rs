//! cyphonic's wire formats and protocol cryptography, free of IO.
//!
//! Every datagram on a node's UDP port starts with a type byte:
//! 1 signaling (node <-> NMS, [`signal`]), 2 Tunnel Request and 3 Tunnel
//! Response ([`handshake`]), 4 data ([`data`]), 6 Relay Bind, 7 Relay Bind
//! Ack, 8 Relay Data and 10 Relay Challenge ([`relay`]), 9 punch
//! ([`TYPE_PUNCH`]); 11 Reflect Request and 12 Reflect Response
//! ([`reflect`], for `cyphonic netcheck`, never on a node's tunnel port);
//! 13 TRS Report ([`trs_report`], TRS -> NMS, never on a node's port).
//! `docs/protocol.md` is the
//! specification; this crate is its implementation.
//!
//! Besides the datagrams: the Login flow's messages between a node and the
//! AS ([`login`], JSON lines over TLS) and the NAT classification both the
//! NMS and the node compute ([`nat`]).

/// A punch packet: `[9][3 reserved][route_id u64]`. It only opens the
/// sender's NAT towards the peer; the receiver drops it.
pub const TYPE_PUNCH: u8 = 9;

pub mod data;
pub mod fqdn;
pub mod handshake;
pub mod ids;
pub mod ip;
pub mod login;
pub mod mac;
pub mod nat;
pub mod nms_link;
pub mod policy;
pub mod prefix;
pub mod punch;
pub mod reflect;
pub mod relay;
pub mod replay;
pub mod secret;
pub mod signal;
pub mod transport;
pub mod trs_report;
pub mod wire;

pub use fqdn::Fqdn;
pub use ids::{LocalIndex, RelayId, RouteId, SessionId};
pub use transport::Transport;
