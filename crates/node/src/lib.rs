//! The cyphonic node: a pure protocol core ([`core`]) with the resolver's
//! DNS logic ([`resolver`]), and the IO around it: the data plane threads
//! ([`dataplane`]) and the tokio daemon ([`daemon`]).

pub mod addrs;
pub mod as_client;
pub mod config;
pub mod core;
pub mod daemon;
pub mod datapath;
pub mod dataplane;
pub mod filter;
pub mod host;
pub mod metrics;
pub mod netcheck;
pub mod portmap;
pub mod resolver;
pub mod upnp;
