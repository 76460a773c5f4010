//! The overlay's VIP ranges as the adapter's parts use them (on-link
//! ranges for the proxy, the mask DHCPv4 hands out, the prefix an RA and
//! DHCPv6 announce): the one prefix type of `cyphonic_proto`.

pub use cyphonic_proto::prefix::{Ipv4Prefix, Ipv6Prefix, PrefixError};
