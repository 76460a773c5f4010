//! Port mapping: asks the IPv4 default gateway to forward a public port
//! to the tunnel port, with PCP (RFC 6887, MAP) or, from a gateway that
//! speaks only its predecessor, NAT-PMP (RFC 6886), or, from one that
//! speaks neither, UPnP IGD ([`crate::upnp`]). A node with a mapping
//! is reachable at it like a node without NAT, so no peer's packet has to
//! cross a NAT that has not seen one of ours (`docs/routing.md`).
//!
//! The messages are built and read here; [`run`] is the daemon's task
//! that requests, renews at half the lifetime, and deletes the mapping on
//! exit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// The port PCP and NAT-PMP servers listen on.
pub const SERVER_PORT: u16 = 5351;
/// The lifetime asked for: renewed at half of what the gateway grants.
pub const LIFETIME_SECS: u32 = 7200;
/// Waits for an answer (RFC 6887 §8.1.1 starts at 3 s and doubles; a
/// node waits less: a gateway that speaks either protocol answers at
/// once).
const TRIES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];
/// Without a gateway that maps, asked again this often (and at once when
/// the default route changes).
const RETRY: Duration = Duration::from_secs(600);

const PCP_VERSION: u8 = 2;
const PCP_OPCODE_ANNOUNCE: u8 = 0;
const PCP_OPCODE_MAP: u8 = 1;
const PCP_RESPONSE: u8 = 0x80;
const PCP_UNSUPP_VERSION: u8 = 1;
const PROTO_UDP: u8 = 17;
const NATPMP_VERSION: u8 = 0;
const NATPMP_OP_ADDRESS: u8 = 0;
const NATPMP_OP_MAP_UDP: u8 = 1;

/// Which protocol the gateway granted a mapping with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Pcp,
    NatPmp,
    UpnpIgd,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "nat-pmp",
            Protocol::UpnpIgd => "upnp-igd",
        }
    }
}

/// A mapping the gateway granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub protocol: Protocol,
    pub external: SocketAddrV4,
    pub lifetime: Duration,
}

/// Why a gateway's answer is not a mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("answer too short or not an answer to our request")]
    Malformed,
    #[error("the gateway speaks another version")]
    UnsupportedVersion,
    #[error("the gateway refused: result code {0}")]
    Refused(u16),
    #[error("UPnP: {0}")]
    Upnp(String),
}

fn mapped_v6(ip: Ipv4Addr) -> [u8; 16] {
    ip.to_ipv6_mapped().octets()
}

/// A PCP MAP request (RFC 6887 §7.1, §11.1) for UDP `internal_port` of
/// `client`, suggesting the same external port; lifetime 0 deletes.
pub fn pcp_map_request(
    client: Ipv4Addr,
    internal_port: u16,
    lifetime: u32,
    nonce: [u8; 12],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(60);
    b.extend_from_slice(&[PCP_VERSION, PCP_OPCODE_MAP, 0, 0]);
    b.extend_from_slice(&lifetime.to_be_bytes());
    b.extend_from_slice(&mapped_v6(client));
    b.extend_from_slice(&nonce);
    b.extend_from_slice(&[PROTO_UDP, 0, 0, 0]);
    b.extend_from_slice(&internal_port.to_be_bytes());
    b.extend_from_slice(&internal_port.to_be_bytes());
    b.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
    b
}

/// Reads a PCP MAP answer to the request with `nonce` for
/// `internal_port`.
pub fn pcp_map_answer(
    answer: &[u8],
    internal_port: u16,
    nonce: [u8; 12],
) -> Result<Mapping, AnswerError> {
    match answer {
        // A NAT-PMP gateway answers a version it does not know with its
        // own version and "unsupported version" (RFC 6887 §9).
        [NATPMP_VERSION, ..] => return Err(AnswerError::UnsupportedVersion),
        [PCP_VERSION, op, _, result, ..] if *op == PCP_RESPONSE | PCP_OPCODE_MAP => {
            if *result == PCP_UNSUPP_VERSION {
                return Err(AnswerError::UnsupportedVersion);
            }
            if *result != 0 {
                return Err(AnswerError::Refused(u16::from(*result)));
            }
        }
        _ => return Err(AnswerError::Malformed),
    }
    if answer.len() < 60 || answer[24..36] != nonce || answer[36] != PROTO_UDP {
        return Err(AnswerError::Malformed);
    }
    let be16 = |i: usize| u16::from_be_bytes([answer[i], answer[i + 1]]);
    if be16(40) != internal_port {
        return Err(AnswerError::Malformed);
    }
    let lifetime = u32::from_be_bytes([answer[4], answer[5], answer[6], answer[7]]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&answer[44..60]);
    let ip = Ipv6Addr::from(ip)
        .to_ipv4_mapped()
        .ok_or(AnswerError::Malformed)?;
    Ok(Mapping {
        protocol: Protocol::Pcp,
        external: SocketAddrV4::new(ip, be16(42)),
        lifetime: Duration::from_secs(u64::from(lifetime)),
    })
}

/// A PCP ANNOUNCE request (RFC 6887 §14.1): asks whether the gateway
/// speaks PCP, and creates nothing.
pub fn pcp_announce_request(client: Ipv4Addr) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&[PCP_VERSION, PCP_OPCODE_ANNOUNCE, 0, 0]);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&mapped_v6(client));
    b
}

/// Reads a PCP ANNOUNCE answer: `Ok` when the gateway speaks PCP.
pub fn pcp_announce_answer(answer: &[u8]) -> Result<(), AnswerError> {
    match answer {
        [NATPMP_VERSION, ..] => Err(AnswerError::UnsupportedVersion),
        [PCP_VERSION, op, _, result, ..]
            if *op == PCP_RESPONSE | PCP_OPCODE_ANNOUNCE && answer.len() >= 24 =>
        {
            match *result {
                0 => Ok(()),
                PCP_UNSUPP_VERSION => Err(AnswerError::UnsupportedVersion),
                code => Err(AnswerError::Refused(u16::from(code))),
            }
        }
        _ => Err(AnswerError::Malformed),
    }
}

/// What a gateway answered to queries that create no mapping (for
/// `cyphonic netcheck`): PCP ANNOUNCE, the NAT-PMP external address, a
/// UPnP IGD search and its external address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayProbe {
    /// The IPv4 default gateway asked (none: no default route).
    pub gateway: Option<Ipv4Addr>,
    pub pcp: bool,
    pub nat_pmp: bool,
    pub upnp: bool,
    /// The public address NAT-PMP or UPnP named.
    pub external: Option<Ipv4Addr>,
}

impl GatewayProbe {
    /// `gateway`, with nothing answered (yet).
    pub fn at(gateway: Ipv4Addr) -> GatewayProbe {
        GatewayProbe {
            gateway: Some(gateway),
            ..GatewayProbe::default()
        }
    }
}

/// Asks `gateway` which port mapping protocols it speaks, all at once,
/// without creating a mapping.
pub async fn probe_gateway(gateway: Ipv4Addr) -> GatewayProbe {
    let pcp = async {
        let (socket, client) = gateway_socket(gateway).await?;
        ask(&socket, &pcp_announce_request(client), pcp_announce_answer).await
    };
    let natpmp = async {
        let (socket, _) = gateway_socket(gateway).await?;
        ask(&socket, &natpmp_address_request(), natpmp_address_answer).await
    };
    let upnp = async {
        let g = crate::upnp::discover(gateway).await.ok()?;
        Some(crate::upnp::external_address(&g).await.ok())
    };
    let (pcp, natpmp, upnp) = tokio::join!(pcp, natpmp, upnp);
    let natpmp = natpmp.and_then(Result::ok);
    GatewayProbe {
        gateway: Some(gateway),
        pcp: matches!(pcp, Some(Ok(()))),
        nat_pmp: natpmp.is_some(),
        upnp: upnp.is_some(),
        external: natpmp.or(upnp.flatten()),
    }
}

/// A NAT-PMP external address request (RFC 6886 §3.2).
pub fn natpmp_address_request() -> Vec<u8> {
    vec![NATPMP_VERSION, NATPMP_OP_ADDRESS]
}

/// A NAT-PMP UDP mapping request (RFC 6886 §3.3); lifetime 0 deletes.
pub fn natpmp_map_request(internal_port: u16, lifetime: u32) -> Vec<u8> {
    let mut b = vec![NATPMP_VERSION, NATPMP_OP_MAP_UDP, 0, 0];
    b.extend_from_slice(&internal_port.to_be_bytes());
    b.extend_from_slice(&internal_port.to_be_bytes());
    b.extend_from_slice(&lifetime.to_be_bytes());
    b
}

fn natpmp_result(answer: &[u8], op: u8, len: usize) -> Result<(), AnswerError> {
    if answer.len() < len || answer[0] != NATPMP_VERSION || answer[1] != 0x80 | op {
        return Err(AnswerError::Malformed);
    }
    match u16::from_be_bytes([answer[2], answer[3]]) {
        0 => Ok(()),
        1 => Err(AnswerError::UnsupportedVersion),
        code => Err(AnswerError::Refused(code)),
    }
}

/// Reads a NAT-PMP external address answer.
pub fn natpmp_address_answer(answer: &[u8]) -> Result<Ipv4Addr, AnswerError> {
    natpmp_result(answer, NATPMP_OP_ADDRESS, 12)?;
    Ok(Ipv4Addr::new(answer[8], answer[9], answer[10], answer[11]))
}

/// Reads a NAT-PMP UDP mapping answer for `internal_port`: the external
/// port and lifetime.
pub fn natpmp_map_answer(answer: &[u8], internal_port: u16) -> Result<(u16, u32), AnswerError> {
    natpmp_result(answer, NATPMP_OP_MAP_UDP, 16)?;
    if u16::from_be_bytes([answer[8], answer[9]]) != internal_port {
        return Err(AnswerError::Malformed);
    }
    let port = u16::from_be_bytes([answer[10], answer[11]]);
    let lifetime = u32::from_be_bytes([answer[12], answer[13], answer[14], answer[15]]);
    Ok((port, lifetime))
}

/// Sends `request` to the gateway and returns the first answer `read`
/// accepts, retrying on silence; `None` when nothing acceptable came.
async fn ask<T>(
    socket: &UdpSocket,
    request: &[u8],
    mut read: impl FnMut(&[u8]) -> Result<T, AnswerError>,
) -> Option<Result<T, AnswerError>> {
    let mut buf = [0u8; 1100];
    for wait in TRIES {
        if socket.send(request).await.is_err() {
            return None;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Ok(Ok(n)) => match read(&buf[..n]) {
                    Err(AnswerError::Malformed) => continue,
                    other => return Some(other),
                },
                Ok(Err(_)) => {
                    // ICMP port unreachable: nothing listens there.
                    return None;
                }
                Err(_) => break,
            }
        }
    }
    None
}

/// One request to the gateway over `socket` (connected to it): PCP, then
/// NAT-PMP if the gateway speaks only that. `lifetime` 0 deletes.
async fn request(
    socket: &UdpSocket,
    client: Ipv4Addr,
    internal_port: u16,
    lifetime: u32,
    nonce: [u8; 12],
    prefer: Option<Protocol>,
) -> Option<Result<Mapping, AnswerError>> {
    if prefer != Some(Protocol::NatPmp) {
        let req = pcp_map_request(client, internal_port, lifetime, nonce);
        match ask(socket, &req, |a| pcp_map_answer(a, internal_port, nonce)).await {
            Some(Err(AnswerError::UnsupportedVersion)) => {}
            other => return other,
        }
    }
    let external = match ask(socket, &natpmp_address_request(), natpmp_address_answer).await? {
        Ok(ip) => ip,
        Err(e) => return Some(Err(e)),
    };
    let req = natpmp_map_request(internal_port, lifetime);
    let answer = ask(socket, &req, |a| natpmp_map_answer(a, internal_port)).await?;
    Some(answer.map(|(port, lifetime)| Mapping {
        protocol: Protocol::NatPmp,
        external: SocketAddrV4::new(external, port),
        lifetime: Duration::from_secs(u64::from(lifetime)),
    }))
}

/// A socket to the gateway's mapping port, from the address the node
/// reaches it with (PCP checks that the request's client address is the
/// packet's source).
async fn gateway_socket(gateway: Ipv4Addr) -> Option<(UdpSocket, Ipv4Addr)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    socket.connect((gateway, SERVER_PORT)).await.ok()?;
    match socket.local_addr().ok()? {
        SocketAddr::V4(a) => Some((socket, *a.ip())),
        SocketAddr::V6(_) => None,
    }
}

/// The daemon's port mapping task: keeps a mapping of UDP `tunnel_port`
/// on the IPv4 default gateway while one is granted, reports each change
/// (`None`: no mapping) on `changes`, asks again when `gateway` changes,
/// and deletes the mapping when `stop` turns true (then returns).
pub async fn run(
    tunnel_port: u16,
    mut gateway: watch::Receiver<Option<Ipv4Addr>>,
    mut stop: watch::Receiver<bool>,
    changes: mpsc::Sender<Option<Mapping>>,
) {
    let nonce: [u8; 12] = rand::random();
    let mut current: Option<(Mapping, Ipv4Addr)> = None;
    // The UPnP service of the gateway a UPnP mapping came from.
    let mut igd: Option<crate::upnp::Gateway> = None;
    loop {
        let gw = *gateway.borrow_and_update();
        let mut next = RETRY;
        let mut granted = None;
        if let Some(gw) = gw {
            if let Some((socket, client)) = gateway_socket(gw).await {
                let kept = current.filter(|(_, at)| *at == gw).map(|(m, _)| m);
                let prefer = kept.map(|m| m.protocol);
                let answer = match prefer {
                    // A gateway that answered UPnP has no PCP to wait for.
                    Some(Protocol::UpnpIgd) => None,
                    _ => request(&socket, client, tunnel_port, LIFETIME_SECS, nonce, prefer).await,
                };
                let answer = match answer {
                    None => {
                        let preferred = kept.map_or(tunnel_port, |m| m.external.port());
                        upnp_request(gw, client, tunnel_port, preferred, &mut igd).await
                    }
                    other => other,
                };
                match answer {
                    Some(Ok(m)) if m.lifetime > Duration::ZERO => {
                        next = (m.lifetime / 2).max(Duration::from_secs(30));
                        granted = Some((m, gw));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::info!(gateway = %gw, error = %e, "no port mapping");
                    }
                    None => tracing::debug!(gateway = %gw, "the gateway maps no ports"),
                }
            }
        }
        if granted.map(|g| g.0.external) != current.map(|c| c.0.external) {
            match granted {
                Some((m, gw)) => {
                    tracing::info!(protocol = m.protocol.as_str(), external = %m.external, gateway = %gw, lifetime = ?m.lifetime, "port mapping granted")
                }
                None => tracing::info!("port mapping gone"),
            }
            if changes.send(granted.map(|g| g.0)).await.is_err() {
                return;
            }
        }
        current = granted;
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            r = gateway.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    if let Some((m, gw)) = current {
        // Deleted on the way out, so the gateway forwards nothing to a
        // port nobody listens on.
        let deleted = match (m.protocol, &igd) {
            (Protocol::UpnpIgd, Some(g)) => crate::upnp::unmap(g, m.external.port()).await.is_ok(),
            (Protocol::UpnpIgd, None) => false,
            _ => match gateway_socket(gw).await {
                Some((socket, client)) => matches!(
                    request(&socket, client, tunnel_port, 0, nonce, Some(m.protocol)).await,
                    Some(Ok(_))
                ),
                None => false,
            },
        };
        tracing::info!(external = %m.external, deleted, "port mapping released");
    }
}

/// A UPnP IGD mapping from `gateway` (found again unless `igd` holds its
/// service already): `None` when no UPnP gateway answers.
async fn upnp_request(
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    internal_port: u16,
    preferred: u16,
    igd: &mut Option<crate::upnp::Gateway>,
) -> Option<Result<Mapping, AnswerError>> {
    use crate::upnp;
    if igd.as_ref().is_none_or(|g| *g.control.addr.ip() != gateway) {
        *igd = upnp::discover(gateway).await.ok();
    }
    let g = igd.as_ref()?;
    match upnp::map(g, client, internal_port, preferred, LIFETIME_SECS).await {
        Ok((external, lease)) => Some(Ok(Mapping {
            protocol: Protocol::UpnpIgd,
            external,
            // A permanent mapping is renewed as one of the usual length.
            lifetime: Duration::from_secs(u64::from(if lease == 0 {
                LIFETIME_SECS
            } else {
                lease
            })),
        })),
        Err(e) => {
            // Found again next time: the gateway may have restarted.
            *igd = None;
            Some(Err(AnswerError::Upnp(e.to_string())))
        }
    }
}

/// The public address a mapping gives, as the node registers it.
pub fn registered(m: &Mapping) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(*m.external.ip()), m.external.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 12] = [7; 12];

    /// A PCP server's answer to `req` granting `external` for `lifetime`.
    fn pcp_answer(req: &[u8], result: u8, external: SocketAddrV4, lifetime: u32) -> Vec<u8> {
        let mut a = vec![PCP_VERSION, PCP_RESPONSE | PCP_OPCODE_MAP, 0, result];
        a.extend_from_slice(&lifetime.to_be_bytes());
        a.extend_from_slice(&[0; 16]);
        a.extend_from_slice(&req[24..42]);
        a.extend_from_slice(&external.port().to_be_bytes());
        a.extend_from_slice(&mapped_v6(*external.ip()));
        a
    }

    #[test]
    fn pcp_map_request_and_answer() {
        let req = pcp_map_request(Ipv4Addr::new(198, 51, 100, 10), 4501, 7200, NONCE);
        assert_eq!(req.len(), 60);
        assert_eq!(&req[..4], &[2, 1, 0, 0]);
        assert_eq!(&req[4..8], &7200u32.to_be_bytes());
        assert_eq!(
            &req[8..24],
            &Ipv4Addr::new(198, 51, 100, 10).to_ipv6_mapped().octets()
        );
        assert_eq!(&req[24..36], &NONCE);
        assert_eq!(req[36], 17);
        assert_eq!(&req[40..44], &[0x11, 0x95, 0x11, 0x95]);
        let ext = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 101), 30001);
        let m = pcp_map_answer(&pcp_answer(&req, 0, ext, 3600), 4501, NONCE).unwrap();
        assert_eq!(
            m,
            Mapping {
                protocol: Protocol::Pcp,
                external: ext,
                lifetime: Duration::from_secs(3600)
            }
        );
        // Another request's answer, a refusal, a NAT-PMP-only gateway.
        assert_eq!(
            pcp_map_answer(&pcp_answer(&req, 0, ext, 3600), 4501, [8; 12]),
            Err(AnswerError::Malformed)
        );
        assert_eq!(
            pcp_map_answer(&pcp_answer(&req, 2, ext, 0), 4501, NONCE),
            Err(AnswerError::Refused(2))
        );
        assert_eq!(
            pcp_map_answer(&[0, 0x81, 0, 1, 0, 0, 0, 0], 4501, NONCE),
            Err(AnswerError::UnsupportedVersion)
        );
        for n in 0..req.len() {
            // Truncated answers never pass (nor panic).
            let a = pcp_answer(&req, 0, ext, 3600);
            assert!(pcp_map_answer(&a[..n], 4501, NONCE).is_err());
        }
    }

    /// A gateway at `ip` that speaks NAT-PMP only (`pcp` false) or PCP,
    /// granting 192.0.2.101:30001 for 60 s; returns the requests it got.
    async fn gateway(ip: Ipv4Addr, pcp: bool, requests: mpsc::Sender<Vec<u8>>) {
        let socket = UdpSocket::bind((ip, SERVER_PORT)).await.unwrap();
        let mut buf = [0u8; 1100];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let req = buf[..n].to_vec();
            let _ = requests.send(req.clone()).await;
            let ext = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 101), 30001);
            let answer = match (req[0], req[1]) {
                (2, 1) if pcp => {
                    let lifetime = u32::from_be_bytes([req[4], req[5], req[6], req[7]]);
                    pcp_answer(&req, 0, ext, lifetime.min(60))
                }
                (2, 0) if pcp => {
                    let mut a = vec![2, PCP_RESPONSE, 0, 0];
                    a.extend_from_slice(&[0; 20]);
                    a
                }
                (2, _) => vec![0, 0x81, 0, 1, 0, 0, 0, 0],
                (0, 0) => vec![0, 128, 0, 0, 0, 0, 0, 1, 192, 0, 2, 101],
                (0, 1) => {
                    let mut a = vec![0, 129, 0, 0, 0, 0, 0, 1];
                    a.extend_from_slice(&req[4..6]);
                    a.extend_from_slice(&30001u16.to_be_bytes());
                    let lifetime = u32::from_be_bytes([req[8], req[9], req[10], req[11]]);
                    a.extend_from_slice(&lifetime.min(60).to_be_bytes());
                    a
                }
                _ => continue,
            };
            socket.send_to(&answer, from).await.unwrap();
        }
    }

    #[test]
    fn pcp_announce_request_and_answer() {
        let req = pcp_announce_request(Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(req.len(), 24);
        assert_eq!(&req[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        let mut ok = vec![2, 0x80, 0, 0];
        ok.extend_from_slice(&[0; 20]);
        assert_eq!(pcp_announce_answer(&ok), Ok(()));
        let mut refused = ok.clone();
        refused[3] = 3;
        assert_eq!(pcp_announce_answer(&refused), Err(AnswerError::Refused(3)));
        assert_eq!(
            pcp_announce_answer(&[0, 0x80, 0, 1, 0, 0, 0, 0]),
            Err(AnswerError::UnsupportedVersion)
        );
        for n in 0..ok.len() {
            assert!(pcp_announce_answer(&ok[..n]).is_err());
        }
    }

    /// Probing a gateway creates no mapping: it sends ANNOUNCE and the
    /// external address request only, and reports what answered.
    #[tokio::test]
    async fn probing_a_gateway_maps_nothing() {
        let ip = Ipv4Addr::new(127, 0, 0, 6);
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(gateway(ip, true, tx));
        let probe = probe_gateway(ip).await;
        assert_eq!(
            (probe.gateway, probe.pcp, probe.nat_pmp, probe.upnp),
            (Some(ip), true, true, false)
        );
        assert_eq!(probe.external, Some(Ipv4Addr::new(192, 0, 2, 101)));
        while let Ok(req) = rx.try_recv() {
            // PCP ANNOUNCE (2, 0) and NAT-PMP's address request (0, 0).
            assert!(matches!((req[0], req[1]), (2, 0) | (0, 0)), "{req:?}");
        }
    }

    /// The task maps with the protocol the gateway speaks, reports the
    /// mapping, and deletes it when stopped.
    #[tokio::test]
    async fn the_task_maps_reports_and_deletes() {
        for (ip, pcp) in [
            (Ipv4Addr::new(127, 0, 0, 2), true),
            (Ipv4Addr::new(127, 0, 0, 3), false),
        ] {
            let (req_tx, mut reqs) = mpsc::channel(16);
            let server = tokio::spawn(gateway(ip, pcp, req_tx));
            let (_gw_tx, gw) = watch::channel(Some(ip));
            let (stop_tx, stop) = watch::channel(false);
            let (tx, mut changes) = mpsc::channel(4);
            let task = tokio::spawn(run(4501, gw, stop, tx));
            let m = tokio::time::timeout(Duration::from_secs(5), changes.recv())
                .await
                .expect("a mapping in time")
                .flatten()
                .expect("granted");
            let want = if pcp { Protocol::Pcp } else { Protocol::NatPmp };
            assert_eq!(m.protocol, want);
            assert_eq!(m.external.to_string(), "192.0.2.101:30001");
            assert_eq!(m.lifetime, Duration::from_secs(60));
            stop_tx.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("stops in time")
                .unwrap();
            let mut last = None;
            while let Ok(r) = reqs.try_recv() {
                last = Some(r);
            }
            let last = last.expect("requests");
            // The last request deleted the mapping: lifetime 0.
            let lifetime = if pcp { &last[4..8] } else { &last[8..12] };
            assert_eq!(lifetime, &[0, 0, 0, 0], "{last:?}");
            server.abort();
        }
    }

    /// A UPnP IGD gateway at `ip` (no PCP, no NAT-PMP): answers searches
    /// sent to it, serves its description and control URL, refuses the
    /// internal port as taken, and reports each SOAP action with its body.
    async fn upnp_gateway(ip: Ipv4Addr, actions: mpsc::Sender<(String, String)>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let http = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = http.local_addr().unwrap().port();
        let ssdp = UdpSocket::bind((ip, 1900)).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, from) = ssdp.recv_from(&mut buf).await.unwrap();
                if buf[..n].starts_with(b"M-SEARCH") {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nST: x\r\nLOCATION: http://{ip}:{port}/rootDesc.xml\r\n\r\n"
                    );
                    ssdp.send_to(answer.as_bytes(), from).await.unwrap();
                }
            }
        });
        loop {
            let (mut stream, _) = http.accept().await.unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the headers and, for a POST, the body.
            let (head, body) = loop {
                let n = stream.read(&mut buf).await.unwrap();
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    if body.len() >= len {
                        break (head.to_owned(), body.to_owned());
                    }
                }
            };
            let reply = if head.starts_with("GET /rootDesc.xml") {
                "<root><device><serviceList><service><serviceType>\
                     urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>\
                     <controlURL>/ctl/IPConn</controlURL></service></serviceList></device></root>"
                    .to_owned()
            } else {
                let action = head
                    .lines()
                    .find_map(|l| l.strip_prefix("SOAPAction: "))
                    .and_then(|a| a.trim_matches('"').split('#').nth(1))
                    .unwrap()
                    .to_owned();
                let _ = actions.send((action.clone(), body.clone())).await;
                match action.as_str() {
                    "AddPortMapping" if body.contains("<NewExternalPort>4501<") => {
                        let fault = "<s:Envelope><s:Body><s:Fault><detail><UPnPError>\
                                     <errorCode>718</errorCode></UPnPError></detail>\
                                     </s:Fault></s:Body></s:Envelope>";
                        let r = format!(
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{fault}",
                            fault.len()
                        );
                        stream.write_all(r.as_bytes()).await.unwrap();
                        continue;
                    }
                    "GetExternalIPAddress" => "<u:GetExternalIPAddressResponse>\
                        <NewExternalIPAddress>192.0.2.101</NewExternalIPAddress>\
                        </u:GetExternalIPAddressResponse>"
                        .to_owned(),
                    _ => format!("<u:{action}Response></u:{action}Response>"),
                }
            };
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            );
            stream.write_all(r.as_bytes()).await.unwrap();
        }
    }

    /// A gateway that speaks only UPnP IGD: the task finds it, maps at
    /// another port when the tunnel port is taken, and deletes the mapping
    /// when stopped.
    #[tokio::test]
    async fn the_task_maps_through_upnp_when_the_gateway_speaks_nothing_else() {
        let ip = Ipv4Addr::new(127, 0, 0, 4);
        let (tx, mut actions) = mpsc::channel(32);
        let server = tokio::spawn(upnp_gateway(ip, tx));
        let (_gw_tx, gw) = watch::channel(Some(ip));
        let (stop_tx, stop) = watch::channel(false);
        let (tx, mut changes) = mpsc::channel(4);
        let task = tokio::spawn(run(4501, gw, stop, tx));
        let m = tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .expect("a mapping in time")
            .flatten()
            .expect("granted");
        assert_eq!(m.protocol, Protocol::UpnpIgd);
        assert_eq!(*m.external.ip(), Ipv4Addr::new(192, 0, 2, 101));
        assert_ne!(
            m.external.port(),
            4501,
            "the taken port was not tried again"
        );
        assert_eq!(m.lifetime, Duration::from_secs(u64::from(LIFETIME_SECS)));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops in time")
            .unwrap();
        let mut seen = Vec::new();
        while let Ok(a) = actions.try_recv() {
            seen.push(a);
        }
        let added: Vec<&String> = seen
            .iter()
            .filter(|(a, _)| a == "AddPortMapping")
            .map(|(_, b)| b)
            .collect();
        assert!(added.len() >= 2, "{seen:?}");
        assert!(
            added[0].contains("<NewInternalClient>127.0.0.1<"),
            "{}",
            added[0]
        );
        let (last, body) = seen.last().unwrap();
        assert_eq!(last, "DeletePortMapping");
        assert!(
            body.contains(&format!("<NewExternalPort>{}<", m.external.port())),
            "{body}"
        );
        server.abort();
    }

    #[test]
    fn natpmp_requests_and_answers() {
        assert_eq!(natpmp_address_request(), vec![0, 0]);
        let a = [0, 128, 0, 0, 0, 0, 0, 9, 192, 0, 2, 101];
        assert_eq!(natpmp_address_answer(&a), Ok(Ipv4Addr::new(192, 0, 2, 101)));
        assert_eq!(
            natpmp_map_request(4501, 7200),
            vec![0, 1, 0, 0, 0x11, 0x95, 0x11, 0x95, 0, 0, 0x1c, 0x20]
        );
        let m = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x11, 0x95, 0x75, 0x31, 0, 0, 0x0e, 0x10,
        ];
        assert_eq!(natpmp_map_answer(&m, 4501), Ok((30001, 3600)));
        assert_eq!(natpmp_map_answer(&m, 4502), Err(AnswerError::Malformed));
        let refused = [0, 129, 0, 3, 0, 0, 0, 9, 0x11, 0x95, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            natpmp_map_answer(&refused, 4501),
            Err(AnswerError::Refused(3))
        );
        assert!(natpmp_map_answer(&m[..15], 4501).is_err());
    }
}
