//! The identifiers the protocol carries, as types: a route's ID is not a
//! session's, and a tunnel index is not a route. Each wraps the integer on
//! the wire (the field stays public for the codecs) and prints as hex.

use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($int:ty), $width:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $int);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("{:0", $width, "x}"), self.0)
            }
        }

        impl $name {
            pub fn to_be_bytes(self) -> [u8; std::mem::size_of::<$int>()] {
                self.0.to_be_bytes()
            }
        }
    };
}

id!(
    /// A route the NMS directed (one pair of nodes, one pattern). Both
    /// ends' Tunnel Requests and punches name it.
    RouteId(u64),
    16
);

id!(
    /// A relay session at the TRS. A route's relay session is the route's
    /// own ID as a relay ID ([`RouteId::relay_id`]): the NMS grants it
    /// with the route, and a node finds the route of a Bind Ack or of
    /// Relay Data by it.
    RelayId(u64),
    16
);

id!(
    /// A node's signaling session with the NMS, from its Login at the AS;
    /// every signaling packet names it in its clear header.
    SessionId(u64),
    16
);

id!(
    /// The index a node chose for one tunnel: the peer's data packets and
    /// Tunnel Response carry it as their receiver index, so the node finds
    /// the tunnel whatever address the packet came from. Never 0.
    LocalIndex(u32),
    8
);

impl RouteId {
    /// The relay session that carries this route when relayed.
    pub fn relay_id(self) -> RelayId {
        RelayId(self.0)
    }
}

impl RelayId {
    /// The route this relay session carries.
    pub fn route_id(self) -> RouteId {
        RouteId(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_relay_session_is_the_route_and_ids_print_as_hex() {
        let r = RouteId(0xab);
        assert_eq!(r.relay_id().route_id(), r);
        assert_eq!(r.to_string(), "00000000000000ab");
        assert_eq!(LocalIndex(0x1234).to_string(), "00001234");
        assert_eq!(SessionId(1).to_be_bytes(), [0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
