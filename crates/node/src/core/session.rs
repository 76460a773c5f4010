//! One Login's session with the NMS: its cipher, what the NMS saw of us,
//! and the legs the NMS is reached by.

use std::net::SocketAddr;
use std::time::Instant;

use cyphonic_proto::signal::SignalCipher;

use super::types::{Leg, Login, Transport};

/// One Login's session with the NMS.
pub(crate) struct Session {
    pub cipher: SignalCipher,
    pub login: Login,
    pub registered: bool,
    pub observed: Option<SocketAddr>,
    /// The NMS's probe address (its address, second port), when it has one.
    pub probe: Option<SocketAddr>,
    pub observed_probe: Option<SocketAddr>,
    pub next_keepalive: Instant,
    pub missed_keepalives: u32,
    /// The NMS left a KeepAlive unanswered to its deadline and has said
    /// nothing since: DNS queries it would have to answer fail at once.
    pub away: bool,
    /// When to try cheaper transports again (signaling on QUIC or TCP).
    pub next_reprobe: Instant,
}

impl Session {
    /// The NMS's leg on `transport`: its UDP port, or the cloud's QUIC or
    /// TCP port at the same address.
    pub fn nms_leg(&self, transport: Transport) -> Option<Leg> {
        let port = match transport {
            Transport::Udp => self.login.nms.port(),
            Transport::Quic => self.login.quic_port,
            Transport::Tcp => self.login.tcp_port,
        };
        (port != 0).then(|| Leg::new(transport, SocketAddr::new(self.login.nms.ip(), port)))
    }

    pub fn is_nms(&self, from: Leg) -> bool {
        self.nms_leg(from.transport) == Some(from)
            || (from.transport == Transport::Udp && Some(from.addr) == self.probe)
    }
}
