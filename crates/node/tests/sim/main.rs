//! The simulation tests: one NMS, several nodes and up to two TRS, the
//! real sans-IO cores on a virtual clock, joined by an in-memory network
//! ([`harness`]). One test binary, so the harness compiles once; each
//! module is one area:
//!
//! - [`basic`]: Registration, route selection, tunnel establishment and
//!   data, DNS answers, refused certificates, an NMS restart, loss.
//! - [`nat`]: NAT traversal, every pair of placements, relays and spoofing.
//! - [`mobility`]: a node with a tunnel moves to another attachment.
//! - [`transport`]: firewalls, QUIC and TLS-over-TCP legs.
//! - [`lifetime`]: rekeying, key limits, replayed handshakes.
//! - [`policy`]: the access policy: refused routes, filtered packets,
//!   a policy change that withdraws a route.
//!
//! Every simulation's packets are pinned in `goldens.txt` (see the
//! `goldens` module of the harness).

mod general;
mod harness;
mod identities;
mod pki;

mod basic;
mod lifetime;
mod mobility;
mod nat;
mod policy;
mod transport;
