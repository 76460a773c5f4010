//! The hub's vocabulary: transports, leg identities, what it receives and
//! reports.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use cyphonic_proto::transport::Transport;

/// Names one leg for its whole life, whatever its remote address becomes
/// (a QUIC peer's address changes when it migrates). Never reused within a
/// hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LegId(pub(crate) u64);

impl LegId {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leg-{}", self.0)
    }
}

/// Who opened the leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This hub dialed it (on the first send to the address).
    Dialed,
    /// A peer dialed one of this hub's listeners.
    Accepted,
}

/// One datagram received on a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub transport: Transport,
    /// The leg's remote address when the datagram arrived: for QUIC the
    /// connection's current path, so it changes after the peer migrates.
    /// Answer to this address (with the same transport) to use the leg.
    pub from: SocketAddr,
    pub leg: LegId,
    /// Exactly the bytes the peer passed to its `send`.
    pub datagram: Vec<u8>,
}

/// A change in the set of legs. Advisory: [`crate::Hub::legs`] is the
/// truth, and events are dropped (and counted) when nobody reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEvent {
    /// The handshake finished; datagrams flow.
    Up {
        leg: LegId,
        transport: Transport,
        remote: SocketAddr,
        direction: Direction,
        /// The peer's FQDN when it presented a node certificate.
        peer: Option<String>,
    },
    /// The leg is gone (dial failed, idle timeout, closed by the peer,
    /// re-dialed after a rebind ...). A later send dials again.
    Closed {
        leg: LegId,
        transport: Transport,
        remote: SocketAddr,
        reason: String,
    },
    /// A peer's handshake on a listener failed (for example a certificate
    /// from another CA); no leg was made.
    Refused {
        transport: Transport,
        remote: SocketAddr,
        reason: String,
    },
}

/// A leg's state, for `cyphonic status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegInfo {
    pub id: LegId,
    pub transport: Transport,
    /// The current remote address (QUIC: after any migration).
    pub remote: SocketAddr,
    pub direction: Direction,
    /// False while a dialed leg is still connecting.
    pub established: bool,
    /// The name the TLS server certificate was checked against (dialed legs).
    pub server_name: Option<String>,
    /// The peer's FQDN when it presented a node certificate.
    pub peer: Option<String>,
    /// Smoothed round-trip time: QUIC's estimate, or the kernel's for TCP.
    #[serde(rename = "rtt_us", serialize_with = "micros")]
    pub rtt: Option<Duration>,
    /// The largest datagram the leg carries now (QUIC: changes with the
    /// path MTU).
    pub max_datagram_size: Option<usize>,
    pub tx_datagrams: u64,
    pub tx_bytes: u64,
    pub rx_datagrams: u64,
    pub rx_bytes: u64,
    /// Dropped because the leg's queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because they exceeded the leg's `max_datagram_size`.
    pub dropped_too_large: u64,
    /// Of `tx_datagrams` / `rx_datagrams`, those on the QUIC leg's fast
    /// path (`docs/protocol.md` §11.6).
    pub tx_fast: u64,
    pub rx_fast: u64,
}

fn micros<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_micros() as u64)),
        None => s.serialize_none(),
    }
}

/// Hub-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HubStats {
    /// Legs in the table (connecting or established).
    pub legs: usize,
    pub dropped_queue_full: u64,
    /// Sends to an address without a leg on a hub that does not dial.
    pub dropped_no_leg: u64,
    /// Sends refused while a failed dial to the address backs off.
    pub dropped_backoff: u64,
    pub dials_failed: u64,
    /// Handshakes on our listeners that failed.
    pub refused: u64,
    /// Leg events nobody read in time.
    pub events_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_names() {
        for t in [Transport::Udp, Transport::Quic, Transport::Tcp] {
            assert_eq!(t.to_string().parse::<Transport>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!("QUIC".parse::<Transport>(), Ok(Transport::Quic));
        assert!("sctp".parse::<Transport>().is_err());
    }

    #[test]
    fn leg_info_serializes_for_status() {
        let info = LegInfo {
            id: LegId(7),
            transport: Transport::Quic,
            remote: "203.0.113.10:443".parse().unwrap(),
            direction: Direction::Dialed,
            established: true,
            server_name: Some("203.0.113.10".into()),
            peer: None,
            rtt: Some(Duration::from_micros(1500)),
            max_datagram_size: Some(1434),
            tx_datagrams: 1,
            tx_bytes: 2,
            rx_datagrams: 3,
            rx_bytes: 4,
            dropped_queue_full: 5,
            dropped_too_large: 6,
            tx_fast: 1,
            rx_fast: 0,
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["transport"], "quic");
        assert_eq!(v["direction"], "dialed");
        assert_eq!(v["remote"], "203.0.113.10:443");
        assert_eq!(v["rtt_us"], 1500);
        assert_eq!(LegId(7).to_string(), "leg-7");
    }

    #[test]
    fn hub_is_shareable() {
        fn shareable<T: Send + Sync>() {}
        shareable::<crate::Hub>();
        shareable::<Received>();
        shareable::<LegEvent>();
    }
}
