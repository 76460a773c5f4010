//! The cloud's pure cores: no sockets, no clock, no store. The cloud's
//! services (`cyphonic-cloud`) wrap them in tokio and SQLite; the node's
//! simulations drive them on a virtual clock.
//!
//! - [`nms`] — registration, virtual IPs and route selection.
//! - [`policy`] — the access policy: which devices may reach which.
//! - [`reflect`] — answers to Reflect Requests (`cyphonic netcheck`), for
//!   both NMS and TRS.
//! - [`route`] — the route table of `docs/routing.md`.
//! - [`trs`] — the relay.
//! - [`trs_pool`] — TRS Reports: which relays live, and their load.

pub mod nms;
pub mod policy;
pub mod reflect;
pub mod route;
pub mod trs;
pub mod trs_pool;
