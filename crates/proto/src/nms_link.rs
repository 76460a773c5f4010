//! The NMS link: how one NMS asks another for a route to a node it does
//! not hold (`docs/protocol.md` §5.19). The peer is another instance of the
//! same cloud (one database, nodes spread over the instances) or the NMS
//! of a cooperating domain. The link runs over TLS 1.3 with certificates on
//! both sides, so these messages carry no keys or MACs of their own.
//!
//! ```text
//! frame = u32 length BE (1..=MAX_FRAME) || body
//! body  = u8 type || fields
//! ```
//!
//! The dialing side sends `Hello` first and then `Direct` requests (and
//! `Withdrawn` notices); the accepting side answers `Hello` with its own
//! and each `Direct` with one `Directed`, `Refused` or `NotHere` carrying
//! the same ticket.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::signal::{self, DirectionErrorCode, RouteDirection, SignalError, MAX_ENDPOINTS};
use crate::transport::Transport;
use crate::wire::{Reader, WireError, Writer};

/// The link's version; a peer speaking another one is refused at `Hello`.
pub const LINK_VERSION: u8 = 1;
/// The largest body a frame may carry: a Route Direction with every list
/// at its limit is far below.
pub const MAX_FRAME: usize = 16 * 1024;

const MSG_HELLO: u8 = 0x01;
const MSG_DIRECT: u8 = 0x02;
const MSG_DIRECTED: u8 = 0x03;
const MSG_REFUSED: u8 = 0x04;
const MSG_NOT_HERE: u8 = 0x05;
const MSG_WITHDRAWN: u8 = 0x06;

/// One link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMessage {
    /// Who speaks: its overlay domain and instance name.
    Hello { domain: String, instance: String },
    /// Direct a route from `initiator` (a node the asking NMS holds) to
    /// the node named `target`.
    Direct {
        ticket: u64,
        target: String,
        initiator: Box<LinkInitiator>,
    },
    /// The target confirmed: this is the initiator's Route Direction.
    Directed {
        ticket: u64,
        direction: Box<RouteDirection>,
    },
    /// The target's NMS holds it but will not or cannot direct the route.
    Refused {
        ticket: u64,
        code: DirectionErrorCode,
        message: String,
    },
    /// The target is not registered here.
    NotHere { ticket: u64 },
    /// The node `fqdn` with certificate `cert_serial` left the overlay
    /// (revoked, disabled, removed): tell every node to close its tunnels
    /// with it. Not answered.
    Withdrawn { fqdn: String, cert_serial: u64 },
}

/// What the responder's NMS needs to know of the initiator: who it is
/// and how it can be reached (its registration, as its NMS sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInitiator {
    /// Its device ID: the access policy's name for it within one cloud.
    pub device_id: String,
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    pub static_public: [u8; 32],
    pub cert_serial: u64,
    pub local_addrs: Vec<SocketAddr>,
    pub observed: SocketAddr,
    pub observed_probe: Option<SocketAddr>,
    pub transport: Transport,
    pub quic_port: u16,
    pub mapped: Option<SocketAddr>,
}

/// What went wrong with a frame from the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link frame of {0} bytes (1..={MAX_FRAME})")]
    FrameSize(usize),
    #[error("unknown link message type {0:#04x}")]
    UnknownType(u8),
    #[error("link version {0}, expected {LINK_VERSION}")]
    Version(u8),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Signal(#[from] SignalError),
}

impl LinkMessage {
    /// The frame: length prefix and body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(0);
        match self {
            LinkMessage::Hello { domain, instance } => {
                w.u8(MSG_HELLO).u8(LINK_VERSION).str(domain).str(instance);
            }
            LinkMessage::Direct {
                ticket,
                target,
                initiator: i,
            } => {
                w.u8(MSG_DIRECT).u64(*ticket).str(target);
                w.str(&i.device_id)
                    .str(&i.fqdn)
                    .bytes(&i.vip4.octets())
                    .bytes(&i.vip6.octets())
                    .bytes(&i.static_public)
                    .u64(i.cert_serial)
                    .socket_addrs(&i.local_addrs[..i.local_addrs.len().min(MAX_ENDPOINTS)])
                    .socket_addr(&i.observed);
                optional_addr(&mut w, i.observed_probe.as_ref());
                w.u8(i.transport.to_u8()).u16(i.quic_port);
                optional_addr(&mut w, i.mapped.as_ref());
            }
            LinkMessage::Directed { ticket, direction } => {
                w.u8(MSG_DIRECTED).u64(*ticket);
                signal::encode_direction(&mut w, direction);
            }
            LinkMessage::Refused {
                ticket,
                code,
                message,
            } => {
                w.u8(MSG_REFUSED).u64(*ticket).u8(code.to_u8()).str(message);
            }
            LinkMessage::NotHere { ticket } => {
                w.u8(MSG_NOT_HERE).u64(*ticket);
            }
            LinkMessage::Withdrawn { fqdn, cert_serial } => {
                w.u8(MSG_WITHDRAWN).str(fqdn).u64(*cert_serial);
            }
        }
        let mut frame = w.into_inner();
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        frame
    }

    /// The body length a frame header announces, checked against
    /// [`MAX_FRAME`].
    pub fn frame_len(header: [u8; 4]) -> Result<usize, LinkError> {
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(LinkError::FrameSize(len));
        }
        Ok(len)
    }

    /// One body (the frame without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, LinkError> {
        if body.is_empty() || body.len() > MAX_FRAME {
            return Err(LinkError::FrameSize(body.len()));
        }
        let mut r = Reader::new(body);
        let message = match r.u8()? {
            MSG_HELLO => {
                let version = r.u8()?;
                if version != LINK_VERSION {
                    return Err(LinkError::Version(version));
                }
                LinkMessage::Hello {
                    domain: r.str("domain")?.to_owned(),
                    instance: r.str("instance")?.to_owned(),
                }
            }
            MSG_DIRECT => {
                let ticket = r.u64()?;
                let target = r.str("target")?.to_owned();
                let initiator = Box::new(LinkInitiator {
                    device_id: r.str("device id")?.to_owned(),
                    fqdn: r.str("fqdn")?.to_owned(),
                    vip4: r.ipv4()?,
                    vip6: r.ipv6()?,
                    static_public: r.array()?,
                    cert_serial: r.u64()?,
                    local_addrs: r.socket_addrs()?,
                    observed: r.socket_addr()?,
                    observed_probe: read_optional_addr(&mut r)?,
                    transport: signal::transport(r.u8()?)?,
                    quic_port: r.u16()?,
                    mapped: read_optional_addr(&mut r)?,
                });
                if initiator.local_addrs.len() > MAX_ENDPOINTS {
                    return Err(WireError::Invalid {
                        field: "local address count",
                    }
                    .into());
                }
                LinkMessage::Direct {
                    ticket,
                    target,
                    initiator,
                }
            }
            MSG_DIRECTED => LinkMessage::Directed {
                ticket: r.u64()?,
                direction: Box::new(signal::decode_direction(&mut r)?),
            },
            MSG_REFUSED => LinkMessage::Refused {
                ticket: r.u64()?,
                code: DirectionErrorCode::from_u8(r.u8()?),
                message: r.str("message")?.to_owned(),
            },
            MSG_NOT_HERE => LinkMessage::NotHere { ticket: r.u64()? },
            MSG_WITHDRAWN => LinkMessage::Withdrawn {
                fqdn: r.str("fqdn")?.to_owned(),
                cert_serial: r.u64()?,
            },
            t => return Err(LinkError::UnknownType(t)),
        };
        r.finish()?;
        Ok(message)
    }

    /// The ticket of an answer (`Directed`, `Refused`, `NotHere`).
    pub fn answer_ticket(&self) -> Option<u64> {
        match self {
            LinkMessage::Directed { ticket, .. }
            | LinkMessage::Refused { ticket, .. }
            | LinkMessage::NotHere { ticket } => Some(*ticket),
            LinkMessage::Hello { .. }
            | LinkMessage::Direct { .. }
            | LinkMessage::Withdrawn { .. } => None,
        }
    }
}

fn optional_addr(w: &mut Writer, a: Option<&SocketAddr>) {
    match a {
        Some(a) => w.u8(1).socket_addr(a),
        None => w.u8(0),
    };
}

fn read_optional_addr(r: &mut Reader<'_>) -> Result<Option<SocketAddr>, WireError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.socket_addr()?)),
        _ => Err(WireError::Invalid {
            field: "optional address flag",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RouteFilter;
    use crate::signal::{CertStatus, PeerInfo, RelayOffer, RoutePattern, Spray};
    use crate::{RelayId, RouteId};

    fn initiator() -> LinkInitiator {
        LinkInitiator {
            device_id: "n1".into(),
            fqdn: "n1.west.example".into(),
            vip4: "100.64.0.2".parse().unwrap(),
            vip6: "fd00:c0::2".parse().unwrap(),
            static_public: [7; 32],
            cert_serial: 0x1234,
            local_addrs: vec!["192.0.2.10:4600".parse().unwrap()],
            observed: "198.51.100.7:40000".parse().unwrap(),
            observed_probe: Some("198.51.100.7:40001".parse().unwrap()),
            transport: Transport::Udp,
            quic_port: 4443,
            mapped: None,
        }
    }

    fn direction() -> RouteDirection {
        RouteDirection {
            route_id: RouteId(9),
            pattern: RoutePattern::from_u8(2),
            peer: PeerInfo {
                fqdn: "n2.east.example".into(),
                vip4: "100.65.0.2".parse().unwrap(),
                vip6: "fd00:c0:0:1::2".parse().unwrap(),
                static_public: [3; 32],
                cert_serial: 77,
                cert_status: CertStatus::Good,
                endpoints: vec!["203.0.113.9:4600".parse().unwrap()],
            },
            tunnel_key: [5; 32],
            initiate: true,
            punch: false,
            spray: Spray::None,
            relay: Some(RelayOffer {
                relay_id: RelayId(4),
                side: 0,
                expires: 1_900_000_000,
                key: [6; 32],
                servers: vec!["203.0.113.1:4700".parse().unwrap()],
                quic_port: 443,
                tcp_port: 443,
            }),
            via: Transport::Udp,
            filter: Some(RouteFilter::open()),
        }
    }

    #[test]
    fn every_message_round_trips() {
        let messages = [
            LinkMessage::Hello {
                domain: "east.example".into(),
                instance: "cloud-b".into(),
            },
            LinkMessage::Direct {
                ticket: 1,
                target: "n2.east.example".into(),
                initiator: Box::new(initiator()),
            },
            LinkMessage::Directed {
                ticket: 2,
                direction: Box::new(direction()),
            },
            LinkMessage::Refused {
                ticket: 3,
                code: DirectionErrorCode::Denied,
                message: "no".into(),
            },
            LinkMessage::NotHere { ticket: 4 },
            LinkMessage::Withdrawn {
                fqdn: "n2.east.example".into(),
                cert_serial: 0x77,
            },
        ];
        for m in messages {
            let frame = m.encode();
            let len = LinkMessage::frame_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, frame.len() - 4);
            assert_eq!(LinkMessage::decode(&frame[4..]).unwrap(), m);
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(matches!(
            LinkMessage::frame_len([0, 0, 0, 0]),
            Err(LinkError::FrameSize(0))
        ));
        assert!(matches!(
            LinkMessage::frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()),
            Err(LinkError::FrameSize(_))
        ));
        assert!(matches!(
            LinkMessage::decode(&[0x7f]),
            Err(LinkError::UnknownType(0x7f))
        ));
        let hello = LinkMessage::Hello {
            domain: "d".into(),
            instance: "i".into(),
        }
        .encode();
        let mut other_version = hello[4..].to_vec();
        other_version[1] = 2;
        assert!(matches!(
            LinkMessage::decode(&other_version),
            Err(LinkError::Version(2))
        ));
        let direct = LinkMessage::Direct {
            ticket: 1,
            target: "t".into(),
            initiator: Box::new(initiator()),
        }
        .encode();
        // Every truncation fails cleanly, and so does a trailing byte.
        for cut in 1..direct.len() - 4 {
            assert!(
                LinkMessage::decode(&direct[4..4 + cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut long = direct[4..].to_vec();
        long.push(0);
        assert!(LinkMessage::decode(&long).is_err());
    }
}
