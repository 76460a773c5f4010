//! The cyphonic cloud: the AS (Login flow, intermediate CA, common keys),
//! the NMS (registration, virtual IPs, route selection) and the store they
//! share.
//!
//! - [`config`] — `cloud.toml`.
//! - [`store`] — devices, VIPs, certificates and sessions in SQLite or
//!   PostgreSQL; [`pg_cluster`] — a private PostgreSQL for tests and labs.
//! - [`admin`] — the operator's commands (init, add device, list, revoke).
//! - [`as_proto`], [`as_server`] — the Login flow over TLS (the node's side
//!   is `cyphonic_node::as_client`).
//! - [`link`] — the NMS link to other instances and cooperating domains.
//! - [`nms`], [`trs`], [`route`] — the pure cores (`cyphonic-cloud-core`);
//!   [`run`] runs them as the cloud services.

pub mod admin;
pub mod as_server;
pub mod config;
pub mod console;
pub mod edge;
pub mod general;
pub mod link;
pub mod metrics;
pub mod pg_cluster;
pub mod policy;
pub mod run;
pub mod store;

pub use cyphonic_cloud_core::{nms, route, trs};
pub use cyphonic_proto::login as as_proto;

pub use config::{CloudConfig, Database};
pub use store::{DeviceRecord, SessionRecord, Store, StoreError};
