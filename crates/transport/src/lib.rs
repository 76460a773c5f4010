//! Legs: cyphonic datagrams carried unchanged over QUIC or over TLS on TCP.
//!
//! cyphonic's cores are transport-agnostic: they emit and accept
//! self-contained datagrams (first byte a type 1..9, `cyphonic-proto`)
//! addressed by `SocketAddr`. A *leg* carries those datagrams between two
//! parties. Native UDP legs are the node's tunnel socket
//! (`cyphonic-platform`); this crate adds the two that pass firewalls which
//! let only the web out (the CYPHONIC-over-QUIC seed):
//!
//! | Transport | Wire | ALPN | One datagram is |
//! |---|---|---|---|
//! | [`Transport::Quic`] | QUIC v1 (RFC 9000) on UDP, usually 443 | `cyphonic/1` | one DATAGRAM frame (RFC 9221), never a stream |
//! | [`Transport::Tcp`] | TLS 1.3 on TCP, usually 443 | `cyphonic-dgram/1` | one frame `u16 BE length ‖ bytes` ([`framing`]) |
//!
//! DATAGRAM frames are unreliable and unordered, so one lost QUIC packet
//! delays nothing else, as with native UDP. The TCP fallback is for
//! networks where no UDP gets out; it is reliable and ordered, so one loss
//! stalls every datagram behind it (head-of-line blocking).
//!
//! Both use mutual TLS with our PKI only: a node presents its node
//! certificate; a server presents a certificate the AS CA issued for its IP
//! or name; each side verifies the other against our root and nothing else
//! (`cyphonic_pki::node_client_config`, `cyphonic_pki::as_server_config`).
//!
//! # The hub
//!
//! A [`Hub`] owns one party's QUIC and TCP legs, keyed by remote address:
//! [`Hub::send`] queues a datagram on the leg to an address (dialing it if
//! needed, on nodes), [`Hub::recv`] yields every datagram received on any
//! leg with its transport and the remote address it came from,
//! [`Hub::legs`] reports state for `cyphonic status`, [`Hub::leg_event`]
//! reports legs coming up, closing and being refused, and [`Hub::rebind`]
//! moves QUIC legs to a new socket after the host's addresses changed (QUIC
//! connection migration, RFC 9000 §9) and re-dials TCP legs.
//!
//! Internally each leg is one connection and a supervising task; the pure
//! parts, the leg table and the TCP frame codec, have no IO and are unit
//! tested on their own.
//!
//! # Overhead and MTU (QUIC)
//!
//! Bytes on the wire around one cyphonic datagram in a QUIC 1-RTT packet
//! (RFC 9000 §17.3.1, §12.4; RFC 9221 §4; RFC 9001 §5.3):
//!
//! | Part | Bytes | Notes |
//! |---|---|---|
//! | IPv6 / IPv4 header | 40 / 20 | |
//! | UDP header | 8 | |
//! | QUIC short header: flags | 1 | |
//! | QUIC short header: Destination Connection ID | 8 | quinn's CID length; QUIC allows 0..20 |
//! | QUIC short header: packet number | 1..4 | |
//! | AEAD tag | 16 | AES-GCM or ChaCha20-Poly1305 |
//! | DATAGRAM frame type | 1 | 0x31 (with length); quinn always writes the length |
//! | DATAGRAM length varint | 2 | for 64..16383 bytes (RFC 9000 §16); 0 for type 0x30 |
//! | **QUIC total** | **29..32** | with 8-byte CIDs |
//!
//! quinn budgets the worst case of every variable part, 38 bytes (flags 1,
//! CID 8, PN 4, tag 16, frame type 1, an 8-byte length varint), so
//! `max_datagram_size = UDP payload MTU − 38`. The hub starts QUIC paths
//! at the largest UDP payload an Ethernet MTU of 1500 allows, 1472 bytes
//! over IPv4 and 1452 over IPv6 (falling back to 1200 if black-hole
//! detection sees those packets lost), which gives:
//!
//! | Path (1500-byte link MTU) | UDP payload | [`Hub::max_datagram_size`] | cyphonic data packet (header + tag 32) leaves for the inner IP packet |
//! |---|---|---|---|
//! | IPv4 | 1472 | 1434 | 1402 |
//! | IPv6 | 1452 | 1414 | 1382 |
//! | after a black hole, either | 1200 | 1162 | 1130 |
//!
//! A full-size data packet of the UDP tunnel (inner 1420 + 32 = 1452 bytes)
//! therefore does **not** fit one DATAGRAM frame on a 1500-byte path (it
//! needs 1452 + 32 = 1484 bytes of UDP payload, 1532 of IPv6 packet). The
//! node must size packets for QUIC paths by [`Hub::max_datagram_size`]
//! (lower TUN MTU, or ICMP Packet Too Big per destination); a datagram
//! larger than the leg allows is dropped and counted
//! ([`LegInfo::dropped_too_large`]).
//!
//! TCP has no per-datagram MTU: frames carry up to 65 535 bytes, TLS 1.3
//! adds 22 bytes per record (5 header + 1 content type + 16 tag) and a
//! record carries up to 16 KiB of frames.

pub mod framing;
pub mod metrics_http;

mod config;
mod error;
mod fast;
mod hub;
mod leg;
mod quic;
mod socket;
mod table;
mod tcp;
mod tls;
mod types;

pub use config::{HubConfig, MAX_DATAGRAM, QUIC_UDP_PAYLOAD_V4, QUIC_UDP_PAYLOAD_V6};
pub use cyphonic_proto::transport::UnknownTransport;
pub use error::SendError;
pub use fast::{FastRoute, FastSink, TrainDest, FAST_HEADER_LEN};
pub use hub::Hub;
pub use socket::{bind_tcp_listener, connect_tcp, CONSERVATIVE_MSS};
pub use tcp::TcpHandoff;
pub use tls::{TlsIdentity, QUIC_ALPN, TCP_ALPN};
pub use types::{Direction, HubStats, LegEvent, LegId, LegInfo, Received, Transport};
