//! How a cyphonic datagram travels between two parties: the node's own
//! UDP socket, or a leg of `cyphonic-transport` (QUIC or TLS over TCP).
//! Signaling names it on the wire (a Registration says which transport it
//! came by), so it lives here.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How a cyphonic datagram travels between two parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The node's own UDP tunnel socket (not carried by a [`crate::Hub`]).
    Udp,
    /// One QUIC DATAGRAM frame per datagram.
    Quic,
    /// TLS 1.3 over TCP, one length-prefixed frame per datagram.
    Tcp,
}

impl Transport {
    /// Cheapest first: the order a node prefers them in.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Quic, Transport::Tcp];

    /// The wire code (docs/protocol.md §2): 0 UDP, 1 QUIC, 2 TCP.
    pub fn to_u8(self) -> u8 {
        match self {
            Transport::Udp => 0,
            Transport::Quic => 1,
            Transport::Tcp => 2,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Transport::Udp),
            1 => Some(Transport::Quic),
            2 => Some(Transport::Tcp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name was none of `udp`, `quic`, `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected udp, quic or tcp")]
pub struct UnknownTransport(pub String);

impl FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "quic" => Ok(Transport::Quic),
            "tcp" => Ok(Transport::Tcp),
            _ => Err(UnknownTransport(s.to_owned())),
        }
    }
}
