//! Signaling between a node and the NMS: Registration, KeepAlive and route
//! selection (Direction Request, Route Direction to Responder / Confirmation /
//! to Initiator), carried in UDP and sealed with the common key the AS handed
//! the node at Login.
//!
//! Packet layout (`docs/protocol.md`, "Signaling packets"):
//!
//! ```text
//! 0       1         2..4      4..12          12..24            24..
//! type=1  version=1 reserved  session_id BE  nonce (12 bytes)  ChaCha20-Poly1305(body) || tag
//! nonce = direction (0 node->NMS, 1 NMS->node) || 3 zero bytes || counter u64 BE
//! AAD   = bytes 0..24
//! ```
//!
//! Counters start at the sender's wall clock in microseconds and count up, so
//! a restarted sender never reuses a nonce under a key that outlived it (the
//! cloud keeps sessions across restarts), and the receiver's replay window
//! ([`ReplayWindow`]) rejects duplicates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::policy::RouteFilter;
use crate::replay::{ReplayError, ReplayWindow};
use crate::wire::{Reader, WireError, Writer};
use crate::{RelayId, RouteId, SessionId, Transport};

pub const TYPE_SIGNALING: u8 = 1;
pub const SIGNAL_VERSION: u8 = 1;
pub const SIGNAL_HEADER_LEN: usize = 24;
pub const SIGNAL_TAG_LEN: usize = 16;
/// Largest signaling datagram we build or accept.
pub const MAX_SIGNAL_PACKET: usize = 1400;
/// Endpoint lists are bounded so a message always fits one datagram.
pub const MAX_ENDPOINTS: usize = 16;

/// Which end of the signaling channel we are: it picks the nonce direction
/// byte, so the two directions never share a nonce under one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Nms,
}

impl Role {
    fn tx_direction(self) -> u8 {
        match self {
            Role::Node => 0,
            Role::Nms => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("not a signaling packet")]
    NotSignaling,
    #[error("unsupported signaling version {0}")]
    Version(u8),
    #[error("signaling packet truncated or oversized")]
    Malformed,
    #[error("signaling packet for session {got}, expected {expected}")]
    WrongSession { expected: SessionId, got: SessionId },
    #[error("signaling packet from the wrong direction")]
    WrongDirection,
    #[error("signaling packet failed authentication")]
    Auth,
    #[error("signaling packet replayed: {0}")]
    Replay(ReplayError),
    #[error("bad signaling message: {0}")]
    Body(#[from] WireError),
    #[error("unknown signaling message type {0}")]
    UnknownMessage(u8),
    /// The sender's counters reached the end of the range it reserved
    /// (`SignalCipher::with_tx_limit`): sealing more could reuse a nonce.
    #[error("signaling counters used up for this session")]
    CounterExhausted,
}

/// The session ID of a signaling packet, read before any crypto so the NMS
/// can find the session's key.
pub fn peek_session(packet: &[u8]) -> Result<SessionId, SignalError> {
    if packet.first() != Some(&TYPE_SIGNALING) {
        return Err(SignalError::NotSignaling);
    }
    if packet.len() < SIGNAL_HEADER_LEN + SIGNAL_TAG_LEN || packet.len() > MAX_SIGNAL_PACKET {
        return Err(SignalError::Malformed);
    }
    if packet[1] != SIGNAL_VERSION {
        return Err(SignalError::Version(packet[1]));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&packet[4..12]);
    Ok(SessionId(u64::from_be_bytes(id)))
}

/// One end of a signaling session: seals outgoing messages and opens
/// incoming ones, rejecting forgeries and replays.
pub struct SignalCipher {
    key: LessSafeKey,
    session_id: SessionId,
    role: Role,
    tx_counter: u64,
    /// Counters from here on are not ours to use (see `with_tx_limit`).
    tx_limit: u64,
    rx_window: ReplayWindow,
}

impl std::fmt::Debug for SignalCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalCipher")
            .field("session_id", &self.session_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl SignalCipher {
    /// `counter_base` should be the wall clock in microseconds since the
    /// Unix epoch: see the module doc.
    pub fn new(session_id: SessionId, key: &[u8; 32], role: Role, counter_base: u64) -> Self {
        // Invariant: CHACHA20_POLY1305 takes exactly 32-byte keys.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key");
        Self {
            key: LessSafeKey::new(unbound),
            session_id,
            role,
            tx_counter: counter_base,
            tx_limit: u64::MAX,
            rx_window: ReplayWindow::new(),
        }
    }

    /// Seals no counter at or above `limit`: [`SignalCipher::try_seal`]
    /// refuses instead. The NMS reserves `counter_base .. limit` in its
    /// database before it seals anything, so that range is its own even
    /// across restarts and clock steps (`docs/protocol.md` §4.2).
    pub fn with_tx_limit(mut self, limit: u64) -> Self {
        self.tx_limit = limit;
        self
    }

    /// The counter the next sealed packet takes.
    pub fn next_tx_counter(&self) -> u64 {
        self.tx_counter
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Seals `envelope` into a complete signaling packet. For a cipher
    /// without a limit (a node's: its counters come from its clock and its
    /// key from one Login, `docs/protocol.md` §4.2).
    pub fn seal(&mut self, envelope: &Envelope) -> Vec<u8> {
        let counter = self.tx_counter;
        self.tx_counter += 1;
        self.seal_with(counter, envelope)
    }

    /// [`SignalCipher::seal`], refusing once the counter reaches the limit
    /// set by [`SignalCipher::with_tx_limit`] (nothing is sealed then, and
    /// the counter stays).
    pub fn try_seal(&mut self, envelope: &Envelope) -> Result<Vec<u8>, SignalError> {
        if self.tx_counter >= self.tx_limit {
            return Err(SignalError::CounterExhausted);
        }
        Ok(self.seal(envelope))
    }

    fn seal_with(&self, counter: u64, envelope: &Envelope) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        nonce[0] = self.role.tx_direction();
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        let mut packet = Vec::with_capacity(256);
        packet.extend_from_slice(&[TYPE_SIGNALING, SIGNAL_VERSION, 0, 0]);
        packet.extend_from_slice(&self.session_id.to_be_bytes());
        packet.extend_from_slice(&nonce);
        let mut body = envelope.encode();
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&packet[..SIGNAL_HEADER_LEN]),
                &mut body,
            )
            // Invariant: ring fails only for inputs over ~256 GiB.
            .expect("sealing a small message");
        packet.extend_from_slice(&body);
        packet.extend_from_slice(tag.as_ref());
        packet
    }

    /// Opens a signaling packet. The replay window advances only after the
    /// packet authenticated, so forgeries cannot move it.
    pub fn open(&mut self, packet: &[u8]) -> Result<Envelope, SignalError> {
        let session = peek_session(packet)?;
        if session != self.session_id {
            return Err(SignalError::WrongSession {
                expected: self.session_id,
                got: session,
            });
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&packet[12..24]);
        let expected_dir = match self.role {
            Role::Node => Role::Nms.tx_direction(),
            Role::Nms => Role::Node.tx_direction(),
        };
        if nonce[0] != expected_dir || nonce[1..4] != [0, 0, 0] {
            return Err(SignalError::WrongDirection);
        }
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&nonce[4..]);
        let counter = u64::from_be_bytes(counter);
        self.rx_window.check(counter).map_err(SignalError::Replay)?;
        let mut body = packet[SIGNAL_HEADER_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&packet[..SIGNAL_HEADER_LEN]),
                &mut body,
            )
            .map_err(|_| SignalError::Auth)?;
        let envelope = Envelope::decode(plain)?;
        self.rx_window
            .update(counter)
            .map_err(SignalError::Replay)?;
        Ok(envelope)
    }
}

/// A message with its transaction ID. A response carries the ID of its
/// request; retransmissions reuse the ID so the receiver can answer a
/// duplicate from its cache instead of acting twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub txid: u64,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    RegistrationRequest(RegistrationRequest),
    RegistrationResponse(RegistrationResponse),
    KeepAlive,
    KeepAliveAck {
        observed: SocketAddr,
    },
    DirectionRequest {
        target: String,
    },
    RouteDirectionToResponder(RouteDirection),
    RouteDirectionConfirmation {
        route_id: RouteId,
    },
    RouteDirectionToInitiator(RouteDirection),
    DirectionError {
        code: DirectionErrorCode,
        message: String,
    },
    /// The NMS lost this node's registration (it restarted): register again.
    ReRegister,
    /// Sent to the NMS's probe port from the tunnel port: the NMS records
    /// the address it sees for NAT detection.
    NatProbe,
    NatProbeAck {
        observed: SocketAddr,
    },
    /// An adapter asks for the general nodes it serves, from the `offset`th
    /// on (seed: Information Request).
    InformationRequest {
        offset: u16,
    },
    /// One page of the adapter's general nodes (seed: Information
    /// Response): `total` in all, this page from `offset`; `version`
    /// changes whenever the list does, so an adapter that polls sees a
    /// change on the first page.
    InformationResponse(GeneralNodes),
    /// The node `fqdn` with the certificate `cert_serial` left the overlay
    /// (its certificate was revoked, or its device disabled or removed):
    /// close every tunnel with it. Sent by the NMS until acknowledged.
    PeerRevoked {
        fqdn: String,
        cert_serial: u64,
    },
    /// A node acknowledges a notice of the NMS (`PeerRevoked`,
    /// `RouteUpdate`), same txid.
    NoticeAck,
    /// The NMS checks that a new source address of the session is the
    /// node's (RFC 9000 §8.2 path validation): sent to that address only;
    /// the txid is the challenge (random, 64 bits, sealed).
    PathChallenge,
    /// The node's echo of a `PathChallenge`, same txid, sent at once.
    PathResponse,
    /// The access policy changed for the route with the node `fqdn`: apply
    /// `filter` to it from now on; a closed filter (nothing either way)
    /// withdraws the route: close the tunnel. Sent by the NMS until
    /// acknowledged.
    RouteUpdate {
        fqdn: String,
        filter: RouteFilter,
    },
    /// A Direction Request for the node that holds the VIP `vip`: an
    /// application sent a packet to an address of the overlay nobody
    /// looked up by name. Answered as a Direction Request for that node's
    /// name (the Route Direction names it), or with `NotFound`.
    DirectionRequestByVip {
        vip: IpAddr,
    },
    /// The node's tunnels as they stand (path, transport, bytes), for the
    /// operator's console: sent with every KeepAlive and soon after a
    /// tunnel comes up or changes path. Not answered; each report replaces
    /// the last.
    TunnelReport(TunnelReport),
}

/// A node's tunnels: `total` in all, the `tunnels` listed (at most
/// [`MAX_REPORTED_TUNNELS`], the busiest first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TunnelReport {
    pub total: u16,
    pub tunnels: Vec<ReportedTunnel>,
}

/// One tunnel of a [`TunnelReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedTunnel {
    /// The peer, by its VIPv4 (its name is the NMS's to look up).
    pub peer_vip4: Ipv4Addr,
    /// The path it takes now: `Direct`, `Punched` or `Relayed`.
    pub path: RoutePattern,
    pub transport: Transport,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// Tunnels one report lists: 22 bytes each, so a report stays under
/// 1 KB.
pub const MAX_REPORTED_TUNNELS: usize = 40;

/// A page of the general nodes an adapter serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralNodes {
    pub version: u64,
    pub total: u16,
    pub offset: u16,
    pub nodes: Vec<GeneralNodeInfo>,
}

/// One general node: the MAC it shows up with on the adapter's LAN and the
/// identity the adapter stands for on its behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralNodeInfo {
    pub mac: [u8; 6],
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
}

/// General nodes per Information Response: with the longest FQDN (253
/// bytes) a page still fits one signaling datagram.
pub const GENERAL_NODES_PER_PAGE: usize = 4;

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::RegistrationRequest(_) => "RegistrationRequest",
            Message::RegistrationResponse(_) => "RegistrationResponse",
            Message::KeepAlive => "KeepAlive",
            Message::KeepAliveAck { .. } => "KeepAliveAck",
            Message::DirectionRequest { .. } => "DirectionRequest",
            Message::RouteDirectionToResponder(_) => "RouteDirectionToResponder",
            Message::RouteDirectionConfirmation { .. } => "RouteDirectionConfirmation",
            Message::RouteDirectionToInitiator(_) => "RouteDirectionToInitiator",
            Message::DirectionError { .. } => "DirectionError",
            Message::ReRegister => "ReRegister",
            Message::NatProbe => "NatProbe",
            Message::NatProbeAck { .. } => "NatProbeAck",
            Message::InformationRequest { .. } => "InformationRequest",
            Message::InformationResponse(_) => "InformationResponse",
            Message::PeerRevoked { .. } => "PeerRevoked",
            Message::NoticeAck => "NoticeAck",
            Message::PathChallenge => "PathChallenge",
            Message::PathResponse => "PathResponse",
            Message::RouteUpdate { .. } => "RouteUpdate",
            Message::DirectionRequestByVip { .. } => "DirectionRequestByVip",
            Message::TunnelReport(_) => "TunnelReport",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRequest {
    /// The node's X25519 static key for tunnel handshakes; bound to its
    /// certificate by the signature it sends in every handshake.
    pub static_public: [u8; 32],
    pub tunnel_port: u16,
    /// The node's own addresses (with `tunnel_port`), as it sees them.
    pub local_addrs: Vec<SocketAddr>,
    /// How this registration travels: UDP to the NMS's own port, or a QUIC
    /// or TLS-over-TCP leg to its 443. A node that registers over a leg is
    /// not reachable on native UDP, so its routes are relayed (or direct
    /// over QUIC to a peer that listens for it).
    pub transport: Transport,
    /// The node's QUIC listener port on its addresses (0: none): peers may
    /// dial it for a direct QUIC path.
    pub quic_port: u16,
    /// A port mapping its router granted for the tunnel port (PCP or
    /// NAT-PMP): the public address peers reach it at, whatever its NAT
    /// does to packets it sends.
    pub mapped: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationResponse {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// The source address the NMS saw: differs from every local address
    /// when a NAT lies between.
    pub observed: SocketAddr,
    pub keepalive_secs: u16,
    /// The NMS's second port (same address): a NAT Probe sent there shows
    /// whether the node's NAT keeps one mapping for both (RFC 4787 §4.1).
    /// Zero when the NMS has none.
    pub probe_port: u16,
}

/// How a tunnel's packets travel (seed: route patterns, table 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutePattern {
    /// Pattern 1: no NAT on the path; the initiator sends straight to the
    /// responder's address.
    Direct,
    /// Pattern 2: a NAT on the path is opened by the side behind it.
    Punched,
    /// Pattern 3: through a TRS.
    Relayed,
    Unknown(u8),
}

impl RoutePattern {
    pub fn to_u8(self) -> u8 {
        match self {
            RoutePattern::Direct => 1,
            RoutePattern::Punched => 2,
            RoutePattern::Relayed => 3,
            RoutePattern::Unknown(v) => v,
        }
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => RoutePattern::Direct,
            2 => RoutePattern::Punched,
            3 => RoutePattern::Relayed,
            v => RoutePattern::Unknown(v),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RoutePattern::Direct => "direct",
            RoutePattern::Punched => "punched",
            RoutePattern::Relayed => "relayed",
            RoutePattern::Unknown(_) => "unknown",
        }
    }
}

/// Certificate status the NMS vouches for in a route direction (like an
/// OCSP answer stapled to the route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked,
    Unknown(u8),
}

impl CertStatus {
    fn to_u8(self) -> u8 {
        match self {
            CertStatus::Good => 0,
            CertStatus::Revoked => 1,
            CertStatus::Unknown(v) => v,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => CertStatus::Good,
            1 => CertStatus::Revoked,
            v => CertStatus::Unknown(v),
        }
    }
}

/// What the NMS tells one end about the other end of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub static_public: [u8; 32],
    pub cert_serial: u64,
    pub cert_status: CertStatus,
    /// Where to send Tunnel Requests, best first.
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct RouteDirection {
    pub route_id: RouteId,
    pub pattern: RoutePattern,
    pub peer: PeerInfo,
    /// Pre-shared key for this route's handshakes (Noise psk): proves the
    /// NMS directed both ends, but yields no end key on its own.
    pub tunnel_key: [u8; 32],
    /// This node sends the Tunnel Request. In pattern 2 the side behind
    /// the NAT initiates, whichever asked for the route.
    pub initiate: bool,
    /// This node sends punch packets to the peer's endpoints, opening its
    /// own NAT for the peer's Tunnel Request (coordinated punching).
    pub punch: bool,
    /// This node's part in birthday punching, for a route relayed because
    /// one end is behind a hard (endpoint-dependent) NAT and the other
    /// behind an easy one (`docs/routing.md`, protocol §5.17).
    pub spray: Spray,
    /// Relay credentials for this node's side, when the cloud runs a TRS:
    /// the path for pattern 3, and the fallback for the others.
    pub relay: Option<RelayOffer>,
    /// The transport to reach `peer.endpoints` by: native UDP, or QUIC to
    /// the peer's QUIC listener (a direct path for a node that only has
    /// UDP 443 out).
    pub via: Transport,
    /// What the access policy lets through this route, from this node's
    /// side; `None`: everything both ways (no filter block on the wire).
    pub filter: Option<RouteFilter>,
}

/// A node's part in birthday punching between a hard NAT (a new random
/// port per destination) and an easy one (one port for every
/// destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spray {
    /// No part: the route's pattern says everything.
    #[default]
    None,
    /// Behind the hard NAT: open many spare ports towards the peer's
    /// mapping, each getting a port of its own on the NAT.
    OpenPorts,
    /// Behind the easy NAT: probe random ports of the peer's public IPv4
    /// address, hoping to hit one of those.
    Probe,
}

/// The tunnel key is wiped when the direction goes (the NMS's pending
/// route, the node's route, the decoded message).
impl Drop for RouteDirection {
    fn drop(&mut self) {
        self.tunnel_key.zeroize();
    }
}

impl ZeroizeOnDrop for RouteDirection {}

/// One side's grant for a relay session (see [`crate::relay`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RelayOffer {
    pub relay_id: RelayId,
    pub side: u8,
    pub expires: u64,
    pub key: [u8; 32],
    /// TRS addresses, best first; a node uses the first of its family and
    /// moves down the list when one stops answering.
    pub servers: Vec<SocketAddr>,
    /// The TRSs' QUIC and TLS-over-TCP port (same addresses as `servers`),
    /// for a node whose signaling travels over a leg; 0: none.
    pub quic_port: u16,
    pub tcp_port: u16,
}

/// The side key is wiped on drop.
impl Drop for RelayOffer {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl ZeroizeOnDrop for RelayOffer {}

impl std::fmt::Debug for RelayOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOffer")
            .field("relay_id", &self.relay_id)
            .field("side", &self.side)
            .field("expires", &self.expires)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RouteDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteDirection")
            .field("route_id", &self.route_id)
            .field("pattern", &self.pattern)
            .field("peer", &self.peer)
            .field("initiate", &self.initiate)
            .field("punch", &self.punch)
            .field("spray", &self.spray)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectionErrorCode {
    /// No node with that name is registered.
    NotFound,
    /// The responder did not confirm in time.
    Timeout,
    /// The requester is not registered yet.
    NotRegistered,
    /// The requester (or everybody, for this target) asked too often.
    RateLimited,
    /// The access policy lets neither node reach the other.
    Denied,
    Unknown(u8),
}

impl DirectionErrorCode {
    pub fn to_u8(self) -> u8 {
        match self {
            DirectionErrorCode::NotFound => 1,
            DirectionErrorCode::Timeout => 2,
            DirectionErrorCode::NotRegistered => 3,
            DirectionErrorCode::RateLimited => 4,
            DirectionErrorCode::Denied => 5,
            DirectionErrorCode::Unknown(v) => v,
        }
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => DirectionErrorCode::NotFound,
            2 => DirectionErrorCode::Timeout,
            3 => DirectionErrorCode::NotRegistered,
            4 => DirectionErrorCode::RateLimited,
            5 => DirectionErrorCode::Denied,
            v => DirectionErrorCode::Unknown(v),
        }
    }
}

const MSG_REGISTRATION_REQUEST: u8 = 0x01;
const MSG_REGISTRATION_RESPONSE: u8 = 0x02;
const MSG_KEEPALIVE: u8 = 0x03;
const MSG_KEEPALIVE_ACK: u8 = 0x04;
const MSG_DIRECTION_REQUEST: u8 = 0x05;
const MSG_ROUTE_DIRECTION_TO_RESPONDER: u8 = 0x06;
const MSG_ROUTE_DIRECTION_CONFIRMATION: u8 = 0x07;
const MSG_ROUTE_DIRECTION_TO_INITIATOR: u8 = 0x08;
const MSG_DIRECTION_ERROR: u8 = 0x09;
const MSG_REREGISTER: u8 = 0x0a;
const MSG_NAT_PROBE: u8 = 0x0b;
const MSG_NAT_PROBE_ACK: u8 = 0x0c;
const MSG_INFORMATION_REQUEST: u8 = 0x0d;
const MSG_INFORMATION_RESPONSE: u8 = 0x0e;
const MSG_PEER_REVOKED: u8 = 0x0f;
const MSG_NOTICE_ACK: u8 = 0x10;
const MSG_PATH_CHALLENGE: u8 = 0x11;
const MSG_PATH_RESPONSE: u8 = 0x12;
const MSG_ROUTE_UPDATE: u8 = 0x13;
const MSG_DIRECTION_REQUEST_BY_VIP: u8 = 0x14;
const MSG_TUNNEL_REPORT: u8 = 0x15;

impl Envelope {
    /// Body layout: `u8 message type || u64 txid || fields`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match &self.message {
            Message::RegistrationRequest(r) => {
                w.u8(MSG_REGISTRATION_REQUEST).u64(self.txid);
                w.bytes(&r.static_public).u16(r.tunnel_port);
                w.socket_addrs(&r.local_addrs[..r.local_addrs.len().min(MAX_ENDPOINTS)]);
                w.u8(r.transport.to_u8()).u16(r.quic_port);
                match &r.mapped {
                    Some(m) => w.u8(1).socket_addr(m),
                    None => w.u8(0),
                };
            }
            Message::RegistrationResponse(r) => {
                w.u8(MSG_REGISTRATION_RESPONSE).u64(self.txid);
                w.str(&r.fqdn)
                    .bytes(&r.vip4.octets())
                    .bytes(&r.vip6.octets());
                w.socket_addr(&r.observed)
                    .u16(r.keepalive_secs)
                    .u16(r.probe_port);
            }
            Message::KeepAlive => {
                w.u8(MSG_KEEPALIVE).u64(self.txid);
            }
            Message::KeepAliveAck { observed } => {
                w.u8(MSG_KEEPALIVE_ACK).u64(self.txid).socket_addr(observed);
            }
            Message::DirectionRequest { target } => {
                w.u8(MSG_DIRECTION_REQUEST).u64(self.txid).str(target);
            }
            Message::RouteDirectionToResponder(d) => {
                w.u8(MSG_ROUTE_DIRECTION_TO_RESPONDER).u64(self.txid);
                encode_direction(&mut w, d);
            }
            Message::RouteDirectionConfirmation { route_id } => {
                w.u8(MSG_ROUTE_DIRECTION_CONFIRMATION)
                    .u64(self.txid)
                    .u64(route_id.0);
            }
            Message::RouteDirectionToInitiator(d) => {
                w.u8(MSG_ROUTE_DIRECTION_TO_INITIATOR).u64(self.txid);
                encode_direction(&mut w, d);
            }
            Message::DirectionError { code, message } => {
                w.u8(MSG_DIRECTION_ERROR).u64(self.txid);
                w.u8(code.to_u8()).str(message);
            }
            Message::ReRegister => {
                w.u8(MSG_REREGISTER).u64(self.txid);
            }
            Message::NatProbe => {
                w.u8(MSG_NAT_PROBE).u64(self.txid);
            }
            Message::NatProbeAck { observed } => {
                w.u8(MSG_NAT_PROBE_ACK).u64(self.txid).socket_addr(observed);
            }
            Message::InformationRequest { offset } => {
                w.u8(MSG_INFORMATION_REQUEST).u64(self.txid).u16(*offset);
            }
            Message::InformationResponse(g) => {
                w.u8(MSG_INFORMATION_RESPONSE).u64(self.txid);
                let page = &g.nodes[..g.nodes.len().min(GENERAL_NODES_PER_PAGE)];
                w.u64(g.version)
                    .u16(g.total)
                    .u16(g.offset)
                    .u8(page.len() as u8);
                for n in page {
                    w.bytes(&n.mac)
                        .str(&n.fqdn)
                        .bytes(&n.vip4.octets())
                        .bytes(&n.vip6.octets());
                }
            }
            Message::PeerRevoked { fqdn, cert_serial } => {
                w.u8(MSG_PEER_REVOKED)
                    .u64(self.txid)
                    .str(fqdn)
                    .u64(*cert_serial);
            }
            Message::NoticeAck => {
                w.u8(MSG_NOTICE_ACK).u64(self.txid);
            }
            Message::PathChallenge => {
                w.u8(MSG_PATH_CHALLENGE).u64(self.txid);
            }
            Message::PathResponse => {
                w.u8(MSG_PATH_RESPONSE).u64(self.txid);
            }
            Message::RouteUpdate { fqdn, filter } => {
                w.u8(MSG_ROUTE_UPDATE).u64(self.txid).str(fqdn);
                filter.encode(&mut w);
            }
            Message::DirectionRequestByVip { vip } => {
                w.u8(MSG_DIRECTION_REQUEST_BY_VIP)
                    .u64(self.txid)
                    .ip_addr(vip);
            }
            Message::TunnelReport(report) => {
                w.u8(MSG_TUNNEL_REPORT).u64(self.txid);
                let listed = &report.tunnels[..report.tunnels.len().min(MAX_REPORTED_TUNNELS)];
                w.u16(report.total).u8(listed.len() as u8);
                for t in listed {
                    w.bytes(&t.peer_vip4.octets())
                        .u8(t.path.to_u8())
                        .u8(t.transport.to_u8())
                        .u64(t.tx_bytes)
                        .u64(t.rx_bytes);
                }
            }
        }
        w.into_inner()
    }

    pub fn decode(body: &[u8]) -> Result<Self, SignalError> {
        let mut r = Reader::new(body);
        let kind = r.u8()?;
        let txid = r.u64()?;
        let message = match kind {
            MSG_REGISTRATION_REQUEST => {
                let static_public = r.array()?;
                let tunnel_port = r.u16()?;
                let local_addrs = r.socket_addrs()?;
                if local_addrs.len() > MAX_ENDPOINTS {
                    return Err(WireError::Invalid {
                        field: "local address count",
                    }
                    .into());
                }
                let transport = transport(r.u8()?)?;
                let quic_port = r.u16()?;
                let mapped = match r.u8()? {
                    0 => None,
                    1 => Some(r.socket_addr()?),
                    _ => {
                        return Err(WireError::Invalid {
                            field: "mapped flag",
                        }
                        .into())
                    }
                };
                Message::RegistrationRequest(RegistrationRequest {
                    static_public,
                    tunnel_port,
                    local_addrs,
                    transport,
                    quic_port,
                    mapped,
                })
            }
            MSG_REGISTRATION_RESPONSE => Message::RegistrationResponse(RegistrationResponse {
                fqdn: r.str("fqdn")?.to_owned(),
                vip4: r.ipv4()?,
                vip6: r.ipv6()?,
                observed: r.socket_addr()?,
                keepalive_secs: r.u16()?,
                probe_port: r.u16()?,
            }),
            MSG_KEEPALIVE => Message::KeepAlive,
            MSG_KEEPALIVE_ACK => Message::KeepAliveAck {
                observed: r.socket_addr()?,
            },
            MSG_DIRECTION_REQUEST => Message::DirectionRequest {
                target: r.str("target")?.to_owned(),
            },
            MSG_ROUTE_DIRECTION_TO_RESPONDER => {
                Message::RouteDirectionToResponder(decode_direction(&mut r)?)
            }
            MSG_ROUTE_DIRECTION_CONFIRMATION => Message::RouteDirectionConfirmation {
                route_id: RouteId(r.u64()?),
            },
            MSG_ROUTE_DIRECTION_TO_INITIATOR => {
                Message::RouteDirectionToInitiator(decode_direction(&mut r)?)
            }
            MSG_DIRECTION_ERROR => Message::DirectionError {
                code: DirectionErrorCode::from_u8(r.u8()?),
                message: r.str("message")?.to_owned(),
            },
            MSG_REREGISTER => Message::ReRegister,
            MSG_NAT_PROBE => Message::NatProbe,
            MSG_NAT_PROBE_ACK => Message::NatProbeAck {
                observed: r.socket_addr()?,
            },
            MSG_INFORMATION_REQUEST => Message::InformationRequest { offset: r.u16()? },
            MSG_INFORMATION_RESPONSE => {
                let (version, total, offset) = (r.u64()?, r.u16()?, r.u16()?);
                let count = r.u8()? as usize;
                if count > GENERAL_NODES_PER_PAGE {
                    return Err(WireError::Invalid {
                        field: "general node count",
                    }
                    .into());
                }
                let mut nodes = Vec::with_capacity(count);
                for _ in 0..count {
                    nodes.push(GeneralNodeInfo {
                        mac: r.array()?,
                        fqdn: r.str("general node fqdn")?.to_owned(),
                        vip4: r.ipv4()?,
                        vip6: r.ipv6()?,
                    });
                }
                Message::InformationResponse(GeneralNodes {
                    version,
                    total,
                    offset,
                    nodes,
                })
            }
            MSG_PEER_REVOKED => Message::PeerRevoked {
                fqdn: r.str("fqdn")?.to_owned(),
                cert_serial: r.u64()?,
            },
            MSG_NOTICE_ACK => Message::NoticeAck,
            MSG_PATH_CHALLENGE => Message::PathChallenge,
            MSG_PATH_RESPONSE => Message::PathResponse,
            MSG_ROUTE_UPDATE => Message::RouteUpdate {
                fqdn: r.str("fqdn")?.to_owned(),
                filter: RouteFilter::decode(&mut r)?,
            },
            MSG_DIRECTION_REQUEST_BY_VIP => Message::DirectionRequestByVip { vip: r.ip_addr()? },
            MSG_TUNNEL_REPORT => {
                let total = r.u16()?;
                let count = r.u8()? as usize;
                if count > MAX_REPORTED_TUNNELS {
                    return Err(WireError::Invalid {
                        field: "reported tunnel count",
                    }
                    .into());
                }
                let mut tunnels = Vec::with_capacity(count);
                for _ in 0..count {
                    let peer_vip4 = r.ipv4()?;
                    let path = RoutePattern::from_u8(r.u8()?);
                    if !matches!(
                        path,
                        RoutePattern::Direct | RoutePattern::Punched | RoutePattern::Relayed
                    ) {
                        return Err(WireError::Invalid {
                            field: "reported tunnel path",
                        }
                        .into());
                    }
                    let transport = transport(r.u8()?)?;
                    tunnels.push(ReportedTunnel {
                        peer_vip4,
                        path,
                        transport,
                        tx_bytes: r.u64()?,
                        rx_bytes: r.u64()?,
                    });
                }
                Message::TunnelReport(TunnelReport { total, tunnels })
            }
            other => return Err(SignalError::UnknownMessage(other)),
        };
        r.finish()?;
        Ok(Envelope { txid, message })
    }
}

pub(crate) fn encode_direction(w: &mut Writer, d: &RouteDirection) {
    w.u64(d.route_id.0)
        .u8(d.pattern.to_u8())
        .bytes(&d.tunnel_key);
    let p = &d.peer;
    w.str(&p.fqdn)
        .bytes(&p.vip4.octets())
        .bytes(&p.vip6.octets())
        .bytes(&p.static_public)
        .u64(p.cert_serial)
        .u8(p.cert_status.to_u8())
        .socket_addrs(&p.endpoints[..p.endpoints.len().min(MAX_ENDPOINTS)]);
    w.u8(d.initiate as u8
        | (d.punch as u8) << 1
        | (d.filter.is_some() as u8) << 2
        | ((d.spray == Spray::OpenPorts) as u8) << 3
        | ((d.spray == Spray::Probe) as u8) << 4);
    match &d.relay {
        None => {
            w.u8(0);
        }
        Some(r) => {
            w.u8(1)
                .u64(r.relay_id.0)
                .u8(r.side)
                .u64(r.expires)
                .bytes(&r.key);
            w.socket_addrs(&r.servers[..r.servers.len().min(MAX_ENDPOINTS)]);
            w.u16(r.quic_port).u16(r.tcp_port);
        }
    }
    w.u8(d.via.to_u8());
    if let Some(f) = &d.filter {
        f.encode(w);
    }
}

pub(crate) fn transport(code: u8) -> Result<Transport, SignalError> {
    Transport::from_u8(code).ok_or_else(|| WireError::Invalid { field: "transport" }.into())
}

pub(crate) fn decode_direction(r: &mut Reader<'_>) -> Result<RouteDirection, SignalError> {
    let route_id = RouteId(r.u64()?);
    let pattern = RoutePattern::from_u8(r.u8()?);
    let tunnel_key = r.array()?;
    let peer = PeerInfo {
        fqdn: r.str("peer fqdn")?.to_owned(),
        vip4: r.ipv4()?,
        vip6: r.ipv6()?,
        static_public: r.array()?,
        cert_serial: r.u64()?,
        cert_status: CertStatus::from_u8(r.u8()?),
        endpoints: r.socket_addrs()?,
    };
    if peer.endpoints.len() > MAX_ENDPOINTS {
        return Err(WireError::Invalid {
            field: "endpoint count",
        }
        .into());
    }
    let flags = r.u8()?;
    if flags & !0b1_1111 != 0 || flags & 0b1_1000 == 0b1_1000 {
        return Err(WireError::Invalid {
            field: "direction flags",
        }
        .into());
    }
    let relay = match r.u8()? {
        0 => None,
        1 => {
            let offer = RelayOffer {
                relay_id: RelayId(r.u64()?),
                side: r.u8()?,
                expires: r.u64()?,
                key: r.array()?,
                servers: r.socket_addrs()?,
                quic_port: r.u16()?,
                tcp_port: r.u16()?,
            };
            if offer.side > 1 || offer.servers.len() > MAX_ENDPOINTS {
                return Err(WireError::Invalid {
                    field: "relay offer",
                }
                .into());
            }
            Some(offer)
        }
        _ => {
            return Err(WireError::Invalid {
                field: "relay presence",
            }
            .into())
        }
    };
    Ok(RouteDirection {
        route_id,
        pattern,
        peer,
        tunnel_key,
        initiate: flags & 1 != 0,
        punch: flags & 2 != 0,
        spray: match flags & 0b1_1000 {
            0b0_1000 => Spray::OpenPorts,
            0b1_0000 => Spray::Probe,
            _ => Spray::None,
        },
        relay,
        via: transport(r.u8()?)?,
        filter: if flags & 4 != 0 {
            Some(RouteFilter::decode(r)?)
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SignalCipher, SignalCipher) {
        let key = [7u8; 32];
        (
            SignalCipher::new(SessionId(42), &key, Role::Node, 1_000),
            SignalCipher::new(SessionId(42), &key, Role::Nms, 5_000),
        )
    }

    fn sample_messages() -> Vec<Message> {
        let peer = PeerInfo {
            fqdn: "n2.cyphonic.internal".into(),
            vip4: Ipv4Addr::new(100, 64, 0, 3),
            vip6: "fd7a:6379:7068::3".parse().unwrap(),
            static_public: [9; 32],
            cert_serial: 0x1234_5678,
            cert_status: CertStatus::Good,
            endpoints: vec!["192.0.2.12:4501".parse().unwrap()],
        };
        let dir = RouteDirection {
            route_id: RouteId(99),
            pattern: RoutePattern::Direct,
            peer,
            tunnel_key: [3; 32],
            initiate: true,
            punch: false,
            spray: Spray::None,
            relay: None,
            via: Transport::Udp,
            filter: None,
        };
        let mut relayed = dir.clone();
        relayed.pattern = RoutePattern::Relayed;
        relayed.initiate = false;
        relayed.punch = true;
        relayed.spray = Spray::Probe;
        relayed.relay = Some(RelayOffer {
            relay_id: RelayId(77),
            side: 1,
            expires: 1_900_000_000,
            key: [5; 32],
            servers: vec![
                "192.0.2.1:4503".parse().unwrap(),
                "[2001:db8::1]:4503".parse().unwrap(),
            ],
            quic_port: 443,
            tcp_port: 443,
        });
        relayed.via = Transport::Quic;
        relayed.filter = Some(RouteFilter {
            inbound: vec!["icmp".parse().unwrap(), "tcp/5201".parse().unwrap()],
            outbound: Vec::new(),
        });
        vec![
            Message::RegistrationRequest(RegistrationRequest {
                static_public: [1; 32],
                tunnel_port: 4501,
                local_addrs: vec![
                    "192.0.2.11:4501".parse().unwrap(),
                    "[2001:db8::11]:4501".parse().unwrap(),
                ],
                transport: Transport::Tcp,
                quic_port: 443,
                mapped: Some("192.0.2.101:4501".parse().unwrap()),
            }),
            Message::RegistrationResponse(RegistrationResponse {
                fqdn: "n1.cyphonic.internal".into(),
                vip4: Ipv4Addr::new(100, 64, 0, 2),
                vip6: "fd7a:6379:7068::2".parse().unwrap(),
                observed: "192.0.2.11:4501".parse().unwrap(),
                keepalive_secs: 15,
                probe_port: 4504,
            }),
            Message::KeepAlive,
            Message::KeepAliveAck {
                observed: "[2001:db8::11]:4501".parse().unwrap(),
            },
            Message::DirectionRequest {
                target: "n2.cyphonic.internal".into(),
            },
            Message::RouteDirectionToResponder(dir.clone()),
            Message::RouteDirectionConfirmation {
                route_id: RouteId(99),
            },
            Message::RouteDirectionToInitiator(dir),
            Message::DirectionError {
                code: DirectionErrorCode::NotFound,
                message: "no node n9.cyphonic.internal".into(),
            },
            Message::ReRegister,
            Message::RouteDirectionToResponder(relayed),
            Message::NatProbe,
            Message::NatProbeAck {
                observed: "203.0.113.7:31000".parse().unwrap(),
            },
            Message::InformationRequest { offset: 4 },
            Message::InformationResponse(GeneralNodes {
                version: 0xfeed,
                total: 5,
                offset: 4,
                nodes: vec![GeneralNodeInfo {
                    mac: [2, 0, 0x5e, 0x10, 0, 1],
                    fqdn: "camera.cyphonic.internal".into(),
                    vip4: Ipv4Addr::new(100, 64, 0, 9),
                    vip6: "fd7a:6379:7068::9".parse().unwrap(),
                }],
            }),
            Message::PeerRevoked {
                fqdn: "n2.cyphonic.internal".into(),
                cert_serial: 0x1234_5678_9abc_def0,
            },
            Message::NoticeAck,
            Message::PathChallenge,
            Message::PathResponse,
            Message::RouteUpdate {
                fqdn: "n2.cyphonic.internal".into(),
                filter: RouteFilter::default(),
            },
            Message::DirectionRequestByVip {
                vip: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3)),
            },
            Message::DirectionRequestByVip {
                vip: "fd7a:6379:7068::3".parse().unwrap(),
            },
            Message::DirectionError {
                code: DirectionErrorCode::Denied,
                message: "the access policy does not allow it".into(),
            },
            Message::TunnelReport(TunnelReport {
                total: 2,
                tunnels: vec![
                    ReportedTunnel {
                        peer_vip4: Ipv4Addr::new(100, 64, 0, 3),
                        path: RoutePattern::Punched,
                        transport: Transport::Udp,
                        tx_bytes: 1 << 40,
                        rx_bytes: 12_345,
                    },
                    ReportedTunnel {
                        peer_vip4: Ipv4Addr::new(100, 64, 0, 4),
                        path: RoutePattern::Relayed,
                        transport: Transport::Quic,
                        tx_bytes: 0,
                        rx_bytes: u64::MAX,
                    },
                ],
            }),
            Message::TunnelReport(TunnelReport::default()),
        ]
    }

    #[test]
    fn a_full_tunnel_report_fits_one_datagram_and_bad_paths_are_refused() {
        let tunnel = ReportedTunnel {
            peer_vip4: Ipv4Addr::BROADCAST,
            path: RoutePattern::Relayed,
            transport: Transport::Tcp,
            tx_bytes: u64::MAX,
            rx_bytes: u64::MAX,
        };
        let full = Envelope {
            txid: u64::MAX,
            message: Message::TunnelReport(TunnelReport {
                total: u16::MAX,
                // Longer lists are cut to the limit.
                tunnels: vec![tunnel; MAX_REPORTED_TUNNELS + 5],
            }),
        };
        let body = full.encode();
        assert_eq!(body.len(), 9 + 3 + 22 * MAX_REPORTED_TUNNELS);
        assert!(body.len() + 40 <= MAX_SIGNAL_PACKET);
        match Envelope::decode(&body).unwrap().message {
            Message::TunnelReport(r) => assert_eq!(r.tunnels.len(), MAX_REPORTED_TUNNELS),
            other => panic!("decoded {other:?}"),
        }
        // A count above the limit, an unknown path and an unknown transport.
        let mut over = body.clone();
        over[11] = MAX_REPORTED_TUNNELS as u8 + 1;
        assert!(Envelope::decode(&over).is_err());
        let mut bad_path = body.clone();
        bad_path[12 + 4] = 9;
        assert!(Envelope::decode(&bad_path).is_err());
        let mut bad_transport = body;
        bad_transport[12 + 5] = 3;
        assert!(Envelope::decode(&bad_transport).is_err());
    }

    #[test]
    fn a_full_page_of_the_longest_names_fits_one_datagram() {
        let name = format!("{}.cyphonic.internal", "a".repeat(253 - 18));
        let page = GeneralNodes {
            version: u64::MAX,
            total: u16::MAX,
            offset: 0,
            nodes: vec![
                GeneralNodeInfo {
                    mac: [0xff; 6],
                    fqdn: name,
                    vip4: Ipv4Addr::BROADCAST,
                    vip6: Ipv6Addr::UNSPECIFIED,
                };
                GENERAL_NODES_PER_PAGE
            ],
        };
        let (_, mut nms) = pair();
        let packet = nms.seal(&Envelope {
            txid: 1,
            message: Message::InformationResponse(page),
        });
        assert!(packet.len() <= MAX_SIGNAL_PACKET, "{} bytes", packet.len());
    }

    #[test]
    fn the_largest_route_direction_with_a_full_filter_fits_one_datagram() {
        let v6 = |i: u16| SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i).into(), i);
        let full: Vec<crate::policy::PortRule> = (1..=crate::policy::MAX_FILTER_RULES as u16)
            .map(|p| crate::policy::PortRule {
                proto: crate::policy::RuleProto::Udp,
                first: p,
                last: p,
            })
            .collect();
        let dir = RouteDirection {
            route_id: RouteId(u64::MAX - 1),
            pattern: RoutePattern::Relayed,
            peer: PeerInfo {
                fqdn: "a".repeat(255),
                vip4: Ipv4Addr::BROADCAST,
                vip6: Ipv6Addr::UNSPECIFIED,
                static_public: [0xff; 32],
                cert_serial: u64::MAX,
                cert_status: CertStatus::Good,
                endpoints: (1..=MAX_ENDPOINTS as u16).map(v6).collect(),
            },
            tunnel_key: [0xff; 32],
            initiate: true,
            punch: false,
            spray: Spray::None,
            relay: Some(RelayOffer {
                relay_id: RelayId(u64::MAX),
                side: 1,
                expires: u64::MAX,
                key: [0xff; 32],
                servers: (1..=MAX_ENDPOINTS as u16).map(v6).collect(),
                quic_port: 443,
                tcp_port: 443,
            }),
            via: Transport::Quic,
            filter: None,
        };
        let (_, mut nms) = pair();
        let bare = nms.seal(&Envelope {
            txid: 1,
            message: Message::RouteDirectionToResponder(dir.clone()),
        });
        // §4.1: the largest Route Direction without a filter.
        assert_eq!(bare.len(), 1073);
        let mut filtered = dir.clone();
        filtered.filter = Some(RouteFilter {
            inbound: full.clone(),
            outbound: full,
        });
        let packet = nms.seal(&Envelope {
            txid: 1,
            message: Message::RouteDirectionToResponder(filtered),
        });
        assert_eq!(
            packet.len(),
            1073 + 3 + 2 * 5 * crate::policy::MAX_FILTER_RULES
        );
        assert!(packet.len() <= MAX_SIGNAL_PACKET);
    }

    #[test]
    fn an_information_response_with_too_many_nodes_is_refused() {
        let mut body = Envelope {
            txid: 1,
            message: Message::InformationResponse(GeneralNodes {
                version: 1,
                total: 1,
                offset: 0,
                nodes: Vec::new(),
            }),
        }
        .encode();
        let count_at = body.len() - 1;
        body[count_at] = GENERAL_NODES_PER_PAGE as u8 + 1;
        assert!(Envelope::decode(&body).is_err());
    }

    /// A direction cannot give both parts of birthday punching.
    #[test]
    fn a_direction_both_opening_and_probing_is_refused() {
        let dir = sample_messages()
            .into_iter()
            .find_map(|m| match m {
                Message::RouteDirectionToResponder(d) => Some(d),
                _ => None,
            })
            .expect("a sample direction");
        let body = |spray| {
            let mut d = dir.clone();
            d.spray = spray;
            Envelope {
                txid: 1,
                message: Message::RouteDirectionToResponder(d),
            }
            .encode()
        };
        let (none, open) = (body(Spray::None), body(Spray::OpenPorts));
        // The one byte that differs is the flags byte.
        let at = (0..none.len())
            .find(|&i| none[i] != open[i])
            .expect("the flags differ");
        let decoded = |b: &[u8]| match Envelope::decode(b).map(|e| e.message) {
            Ok(Message::RouteDirectionToResponder(d)) => Some(d.spray),
            _ => None,
        };
        assert_eq!(decoded(&open), Some(Spray::OpenPorts));
        let mut probe = open.clone();
        probe[at] ^= 0b1_1000;
        assert_eq!(decoded(&probe), Some(Spray::Probe));
        let mut both = open.clone();
        both[at] |= 0b1_0000;
        assert!(Envelope::decode(&both).is_err());
    }

    #[test]
    fn every_message_round_trips_through_the_cipher() {
        let (mut node, mut nms) = pair();
        for (i, message) in sample_messages().into_iter().enumerate() {
            let env = Envelope {
                txid: i as u64 + 1,
                message,
            };
            let packet = node.seal(&env);
            assert_eq!(peek_session(&packet), Ok(SessionId(42)));
            assert_eq!(nms.open(&packet).unwrap(), env);
            let back = nms.seal(&env);
            assert_eq!(node.open(&back).unwrap(), env);
        }
    }

    #[test]
    fn forged_replayed_and_reflected_packets_are_refused() {
        let (mut node, mut nms) = pair();
        let env = Envelope {
            txid: 1,
            message: Message::KeepAlive,
        };
        let packet = node.seal(&env);
        for i in 0..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x40;
            assert!(nms.open(&bad).is_err(), "flipped byte {i} accepted");
        }
        // The forgeries did not advance the window: the genuine one opens.
        assert!(nms.open(&packet).is_ok());
        assert!(matches!(nms.open(&packet), Err(SignalError::Replay(_))));
        // A node's own packet sent back to it is not accepted as the NMS's.
        let mut node2 = SignalCipher::new(SessionId(42), &[7u8; 32], Role::Node, 0);
        assert_eq!(node2.open(&packet), Err(SignalError::WrongDirection));
    }

    #[test]
    fn tunnel_keys_and_relay_side_keys_are_wiped_on_drop() {
        let Message::RouteDirectionToResponder(direction) = sample_messages().remove(10) else {
            panic!("sample 10 is a relayed route direction");
        };
        assert_eq!(direction.tunnel_key, [3; 32]);
        assert_eq!(
            crate::key_bytes_after_drop!(direction.clone(), tunnel_key),
            [0; 32]
        );
        let offer = direction.relay.clone().expect("relayed");
        assert_eq!(offer.key, [5; 32]);
        assert_eq!(crate::key_bytes_after_drop!(offer, key), [0; 32]);
    }

    #[test]
    fn no_counter_at_or_above_the_limit_is_sealed() {
        let mut nms =
            SignalCipher::new(SessionId(42), &[7u8; 32], Role::Nms, 5_000).with_tx_limit(5_002);
        let env = Envelope {
            txid: 1,
            message: Message::ReRegister,
        };
        let counters: Vec<u64> = (0..2)
            .map(|_| {
                let p = nms.try_seal(&env).unwrap();
                u64::from_be_bytes(p[16..24].try_into().unwrap())
            })
            .collect();
        assert_eq!(counters, [5_000, 5_001]);
        assert_eq!(nms.try_seal(&env), Err(SignalError::CounterExhausted));
        assert_eq!(nms.next_tx_counter(), 5_002);
    }

    #[test]
    fn truncated_packets_never_panic() {
        let (mut node, mut nms) = pair();
        let packet = node.seal(&Envelope {
            txid: 5,
            message: sample_messages().remove(0),
        });
        for len in 0..packet.len() {
            assert!(nms.open(&packet[..len]).is_err());
        }
        let body = Envelope {
            txid: 5,
            message: sample_messages().remove(7),
        }
        .encode();
        for len in 0..body.len() {
            assert!(Envelope::decode(&body[..len]).is_err());
        }
        assert!(matches!(
            Envelope::decode(&[0xee, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(SignalError::UnknownMessage(0xee))
        ));
    }
}
