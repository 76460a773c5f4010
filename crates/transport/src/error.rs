//! Why a datagram was not queued.

use std::net::SocketAddr;

use crate::Transport;

/// Why [`crate::Hub::send`] did not queue a datagram. Every variant means
/// the datagram was dropped; the hub counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The hub carries QUIC and TCP only; UDP goes out of the node's own
    /// tunnel socket.
    #[error("the hub does not carry {0} datagrams")]
    Unsupported(Transport),
    /// cyphonic datagrams are never empty, and on TCP an empty frame is the
    /// keepalive.
    #[error("empty datagram")]
    Empty,
    /// Larger than the leg carries (TCP frames: 65 535 bytes; QUIC legs
    /// report their current limit in `max_datagram_size`).
    #[error("datagram of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The leg's queue is full: the leg drains slower than the caller sends.
    #[error("leg queue full")]
    QueueFull,
    /// The leg is closing; the next send after it is gone dials again.
    #[error("leg closing")]
    LegClosing,
    /// No leg to this address, and this hub (a server) does not dial.
    #[error("no {transport} leg to {to}")]
    NoLeg {
        transport: Transport,
        to: SocketAddr,
    },
    /// A dial to this address failed a moment ago; sends wait for the
    /// backoff to pass instead of dialing again at once.
    #[error("dial to {0} failed recently; backing off")]
    Backoff(SocketAddr),
    /// The hub holds `max_legs` legs already.
    #[error("leg limit reached")]
    TooManyLegs,
    /// The hub was closed.
    #[error("hub closed")]
    Closed,
}
