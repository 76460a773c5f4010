//! The hub's bounds and timers, and the QUIC transport parameters derived
//! from them.

use std::sync::Arc;
use std::time::Duration;

/// The largest datagram any leg carries: the TCP frame's `u16` length.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// QUIC's UDP payload on IPv4 paths: an Ethernet MTU of 1500 less IPv4 20
/// and UDP 8.
pub const QUIC_UDP_PAYLOAD_V4: u16 = 1500 - 20 - 8;
/// QUIC's UDP payload on IPv6 paths: 1500 less IPv6 40 and UDP 8 (quinn's
/// own default upper bound).
pub const QUIC_UDP_PAYLOAD_V6: u16 = 1500 - 40 - 8;

/// DATAGRAM frames a QUIC leg's peer may receive before it must send an
/// ACK (the ACK frequency extension): our datagrams are never
/// retransmitted, so ACKs serve only congestion control, and one per
/// datagram pair cost the receiver a packet of its own each.
const ACK_ELICITING_THRESHOLD: u32 = 16;

/// Bounds and timers of a [`crate::Hub`]. `Default` suits a node; a cloud
/// server with many legs may want smaller per-leg queues and buffers.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Datagrams queued per leg before [`crate::Hub::send`] drops. The queue
    /// also holds what is sent while a leg is being dialed.
    pub leg_queue: usize,
    /// Received datagrams (all legs) waiting for [`crate::Hub::recv`].
    /// When full, TCP legs stop reading (TCP flow control pushes back) and
    /// QUIC legs leave datagrams in quinn's receive buffer.
    pub recv_queue: usize,
    /// Leg events waiting for [`crate::Hub::leg_event`]; more are dropped.
    pub event_queue: usize,
    /// A leg sends something at least this often so NAT and firewall
    /// bindings stay open (QUIC PING, or an empty TCP frame). Shorter than
    /// common UDP NAT timeouts (30 s and up).
    pub keepalive: Duration,
    /// A leg that received nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Bound on a dial (TCP connect + TLS, or the QUIC handshake) and on a
    /// peer's TLS handshake on a TCP listener.
    pub handshake_timeout: Duration,
    /// After a failed dial, sends to that address are refused this long
    /// rather than dialing again at once.
    pub redial_backoff: Duration,
    /// Legs in the table at most (connecting and established); further
    /// dials and accepts are refused.
    pub max_legs: usize,
    /// QUIC handshakes and TLS-over-TCP handshakes in progress on the
    /// listeners at most.
    pub max_pending_handshakes: usize,
    /// Bytes of received DATAGRAM frames quinn buffers per QUIC leg.
    pub quic_datagram_receive_buffer: usize,
    /// Bytes of DATAGRAM frames quinn queues per QUIC leg while congestion
    /// control holds them; when full the leg's own queue fills and drops.
    pub quic_datagram_send_buffer: usize,
    /// SO_RCVBUF / SO_SNDBUF asked for on UDP sockets (the kernel caps them
    /// at net.core.{r,w}mem_max).
    pub udp_socket_buffer: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            leg_queue: 1024,
            recv_queue: 16 * 1024,
            event_queue: 1024,
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            redial_backoff: Duration::from_secs(1),
            max_legs: 64 * 1024,
            max_pending_handshakes: 1024,
            quic_datagram_receive_buffer: 8 << 20,
            // quinn's default: about 8 ms at 1 Gbit/s, so a congested leg
            // drops instead of building latency the inner TCP would see.
            quic_datagram_send_buffer: 1 << 20,
            udp_socket_buffer: 4 << 20,
        }
    }
}

impl HubConfig {
    /// QUIC transport parameters for paths of one address family.
    pub(crate) fn quic_transport(&self, ipv6: bool) -> anyhow::Result<Arc<quinn::TransportConfig>> {
        let payload = if ipv6 {
            QUIC_UDP_PAYLOAD_V6
        } else {
            QUIC_UDP_PAYLOAD_V4
        };
        let mut t = quinn::TransportConfig::default();
        // Start at full Ethernet size so a data packet fits at once; on a
        // smaller path black-hole detection drops to 1200 (quinn's
        // min_mtu) and MTU discovery searches back up to `payload`.
        t.initial_mtu(payload);
        let mut mtud = quinn::MtuDiscoveryConfig::default();
        mtud.upper_bound(payload);
        t.mtu_discovery_config(Some(mtud));
        t.keep_alive_interval(Some(self.keepalive));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.idle_timeout)
                .map_err(|_| anyhow::anyhow!("idle_timeout {:?} is too long", self.idle_timeout))?,
        ));
        t.datagram_receive_buffer_size(Some(self.quic_datagram_receive_buffer));
        t.datagram_send_buffer_size(self.quic_datagram_send_buffer);
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_ELICITING_THRESHOLD));
        t.ack_frequency_config(Some(ack));
        // Datagrams only: a peer may open no stream at all.
        t.max_concurrent_bidi_streams(0u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        Ok(Arc::new(t))
    }
}
