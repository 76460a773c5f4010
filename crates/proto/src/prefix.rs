//! IP prefixes such as `100.64.0.0/10` and `fd7a:6379:7068::/48`: the
//! overlay's VIP ranges, as the cloud assigns from them and the adapter
//! announces them. They parse and print in that form, which is also their
//! serde form; parsing refuses host bits (a typo more often than not).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("\"{0}\" is not an address prefix like \"100.64.0.0/10\"")]
    Syntax(String),
    #[error("prefix length in \"{0}\" is too long")]
    Length(String),
    #[error("\"{given}\" has host bits set; did you mean \"{network}\"?")]
    HostBits { given: String, network: String },
}

macro_rules! prefix_type {
    ($name:ident, $addr:ty, $int:ty, $bits:expr, $doc:expr) => {
        #[doc = $doc]
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name {
            addr: $addr,
            len: u8,
        }

        impl $name {
            /// A prefix; the host bits of `addr` must be zero.
            pub fn new(addr: $addr, len: u8) -> Result<Self, PrefixError> {
                if u32::from(len) > $bits {
                    return Err(PrefixError::Length(format!("{addr}/{len}")));
                }
                let prefix = $name { addr, len };
                let network = <$addr>::from(<$int>::from(addr) & prefix.mask());
                if network != addr {
                    return Err(PrefixError::HostBits {
                        given: format!("{addr}/{len}"),
                        network: format!("{network}/{len}"),
                    });
                }
                Ok(prefix)
            }

            /// The prefix `addr` is in: its first `len` bits, the host bits
            /// cleared (an address with its prefix length, as an interface
            /// carries it).
            pub fn containing(addr: $addr, len: u8) -> Result<Self, PrefixError> {
                if u32::from(len) > $bits {
                    return Err(PrefixError::Length(format!("{addr}/{len}")));
                }
                let prefix = $name { addr, len };
                Ok($name {
                    addr: <$addr>::from(<$int>::from(addr) & prefix.mask()),
                    len,
                })
            }

            /// A prefix from a network address and a length known to fit
            /// (for constants); host bits of `addr` must be zero, and `len`
            /// at most the address's width.
            pub const fn network(addr: $addr, len: u8) -> Self {
                $name { addr, len }
            }

            /// The network address.
            pub fn addr(&self) -> $addr {
                self.addr
            }

            /// The prefix length in bits.
            pub fn prefix_len(&self) -> u8 {
                self.len
            }

            /// The number of host bits.
            pub fn host_bits(&self) -> u32 {
                $bits - u32::from(self.len)
            }

            fn mask(&self) -> $int {
                if self.len == 0 {
                    0
                } else {
                    <$int>::MAX << ($bits - u32::from(self.len))
                }
            }

            /// Whether `addr` is inside this prefix.
            pub fn contains(&self, addr: $addr) -> bool {
                <$int>::from(addr) & self.mask() == <$int>::from(self.addr)
            }

            /// Whether `other` lies wholly inside this prefix.
            pub fn contains_prefix(&self, other: &$name) -> bool {
                other.len >= self.len && self.contains(other.addr)
            }

            /// The address at host number `host`, if the prefix has it.
            pub fn host(&self, host: u128) -> Option<$addr> {
                if self.host_bits() < 128 && host >> self.host_bits() != 0 {
                    return None;
                }
                let host = <$int>::try_from(host).ok()?;
                Some(<$addr>::from(<$int>::from(self.addr) | host))
            }

            /// The host number of `addr` inside this prefix.
            pub fn host_number(&self, addr: $addr) -> Option<u128> {
                self.contains(addr)
                    .then(|| u128::from(<$int>::from(addr) & !self.mask()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.addr, self.len)
            }
        }

        impl FromStr for $name {
            type Err = PrefixError;

            fn from_str(s: &str) -> Result<Self, PrefixError> {
                let syntax = || PrefixError::Syntax(s.to_owned());
                let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
                let addr: $addr = addr.parse().map_err(|_| syntax())?;
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                let len: u8 = len.parse().map_err(|_| PrefixError::Length(s.to_owned()))?;
                $name::new(addr, len)
            }
        }

        impl TryFrom<String> for $name {
            type Error = PrefixError;

            fn try_from(s: String) -> Result<Self, PrefixError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(p: $name) -> String {
                p.to_string()
            }
        }
    };
}

prefix_type!(
    Ipv4Prefix,
    Ipv4Addr,
    u32,
    32,
    "An IPv4 prefix such as `100.64.0.0/10`."
);
prefix_type!(
    Ipv6Prefix,
    Ipv6Addr,
    u128,
    128,
    "An IPv6 prefix such as `fd7a:6379:7068::/48`."
);

impl Ipv4Prefix {
    /// The netmask, e.g. 255.192.0.0 for a /10.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The directed broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}
