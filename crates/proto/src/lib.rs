//! cyphonic's wire formats and protocol cryptography, free of IO.
//!
//! Every datagram on a node's UDP port starts with a type byte:
//! 1 signaling (node <-> NMS, [`signal`]), 2 Tunnel Request and 3 Tunnel
//! Response ([`handshake`]), 4 data ([`data`]). `docs/protocol.md` is the
//! specification; this crate is its implementation.

pub mod data;
pub mod handshake;
pub mod ip;
pub mod relay;
pub mod replay;
pub mod signal;
pub mod wire;
