//! QUIC legs: one connection per leg, one DATAGRAM frame per cyphonic
//! datagram (RFC 9221), no streams.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cyphonic_pki::rustls;
use cyphonic_pki::Verifier;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, SendDatagramError, VarInt};
use rustls_pki_types::CertificateDer;
use tracing::trace;

use crate::config::HubConfig;
use crate::fast::{self, FastLeg, FastTable, Slot};
use crate::leg::{AbortOnDrop, Established, LegRun, LegStats, MakeLeg, Shared};
use crate::socket::canonical;
use crate::tls::{self, QUIC_ALPN};
use crate::types::{Received, Transport};

/// Application close code: the hub or the leg was closed.
pub(crate) const CLOSE_HUB: VarInt = VarInt::from_u32(0);
/// Application close code: the peer did not negotiate our ALPN.
const CLOSE_ALPN: VarInt = VarInt::from_u32(1);

/// How often a leg's path is checked for a migration when no datagram
/// arrives to show it.
const PATH_CHECK: Duration = Duration::from_secs(1);

pub(crate) fn client_config(
    tls: Arc<rustls::ClientConfig>,
    config: &HubConfig,
    ipv6: bool,
) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(config.quic_transport(ipv6)?);
    Ok(client)
}

pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    config: &HubConfig,
    ipv6: bool,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(config.quic_transport(ipv6)?);
    server.max_incoming(config.max_pending_handshakes.max(1));
    // Nodes move: their legs follow them (RFC 9000 §9).
    server.migration(true);
    Ok(server)
}

/// A QUIC endpoint on `socket`, which it shares with the fast path
/// (`fast`): fast packets to this hub's IDs are taken out before quinn
/// sees them, and `slot` sends them.
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    table: &Arc<FastTable>,
    slot: &Slot,
) -> std::io::Result<Endpoint> {
    Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        server,
        fast::wrap(socket, table, slot)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Dials a leg to `to`, checking the server certificate against
/// `server_name`.
pub(crate) async fn dial(
    shared: &Shared,
    to: SocketAddr,
    server_name: &str,
) -> Result<Connection, String> {
    let dialer = shared.dialer.as_ref().ok_or("this hub does not dial")?;
    let config = if to.is_ipv4() {
        dialer.quic_v4.clone()
    } else {
        dialer.quic_v6.clone()
    };
    let connecting = dialer
        .endpoint
        .as_ref()
        .ok_or("QUIC is not available on this host")?
        .connect_with(config, to, server_name)
        .map_err(|e| e.to_string())?;
    let conn = match tokio::time::timeout(shared.config.handshake_timeout, connecting).await {
        Err(_) => return Err("QUIC handshake timed out".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(conn)) => conn,
    };
    check_alpn(&conn)?;
    Ok(conn)
}

/// Accepts connections on a listener until the hub closes it.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    slot: Arc<Slot>,
    make_leg: MakeLeg,
) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = canonical(incoming.remote_address());
        if shared.is_closed() {
            incoming.refuse();
            return;
        }
        if shared.leg_count() >= shared.config.max_legs {
            incoming.refuse();
            shared.refused(Transport::Quic, remote, "leg limit reached".into());
            continue;
        }
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            incoming.refuse();
            shared.refused(
                Transport::Quic,
                remote,
                "too many handshakes in progress".into(),
            );
            continue;
        };
        let shared = shared.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let accepted = async {
                let connecting = incoming.accept().map_err(|e| e.to_string())?;
                match tokio::time::timeout(shared.config.handshake_timeout, connecting).await {
                    Err(_) => Err("QUIC handshake timed out".to_owned()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(conn)) => {
                        check_alpn(&conn)?;
                        Ok(conn)
                    }
                }
            };
            match accepted.await {
                // The address after the handshake: the peer may have moved.
                Ok(conn) => make_leg(
                    &shared,
                    canonical(conn.remote_address()),
                    Established::Quic(conn, slot),
                ),
                Err(reason) => shared.refused(Transport::Quic, remote, reason),
            }
        });
    }
}

/// Both ends insist on `cyphonic/1`: another protocol on the same port
/// (HTTP/3 on 443) must never be taken for a leg.
fn check_alpn(conn: &Connection) -> Result<(), String> {
    let protocol = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if protocol.as_deref() == Some(QUIC_ALPN) {
        return Ok(());
    }
    conn.close(CLOSE_ALPN, b"ALPN cyphonic/1 required");
    Err(format!(
        "peer negotiated ALPN {:?}, not cyphonic/1",
        protocol.map(|p| String::from_utf8_lossy(&p).into_owned())
    ))
}

/// The peer's FQDN, if it presented a node certificate.
pub(crate) fn peer_name(verifier: &Verifier, conn: &Connection) -> Option<String> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    tls::peer_name(verifier, &chain)
}

/// Runs an established QUIC leg until the connection ends. Offers the
/// leg's fast-path ID at once, after 1, 2 and 4 s (DATAGRAM frames may be
/// lost), then every 30 s, and every second while the fast path carries
/// data: the connection then sends a packet on the data's path each
/// second, so the peer's QUIC stack sees a NAT's new mapping of us (and
/// migrates the leg) within a second, as it did when the data itself
/// went through it.
pub(crate) async fn run_leg(run: LegRun, conn: Connection) -> String {
    let LegRun {
        shared,
        id,
        remote: _,
        queue,
        stats,
        received,
        fast,
    } = run;
    let _reader = AbortOnDrop(tokio::spawn(read(
        shared.clone(),
        id,
        conn.clone(),
        stats.clone(),
        received,
        fast.clone(),
    )));
    let mut writer = AbortOnDrop(tokio::spawn(write(conn.clone(), queue, stats.clone())));
    let mut path_check = tokio::time::interval(PATH_CHECK);
    let mut ticks = 0u64;
    let mut fast_sent = 0u64;
    loop {
        tokio::select! {
            e = conn.closed() => return e.to_string(),
            w = &mut writer.0 => {
                conn.close(CLOSE_HUB, b"leg closed");
                return w.unwrap_or_else(|e| format!("writer ended: {e}"));
            }
            _ = path_check.tick() => {
                shared.moved(id, canonical(conn.remote_address()));
                if let Some(fast) = &fast {
                    let sent = stats.tx_fast.load(Ordering::Relaxed);
                    if ticks < 3 || ticks == 4 || ticks.is_multiple_of(30) || sent != fast_sent {
                        let _ = conn.send_datagram(fast.offer().to_vec().into());
                    }
                    fast_sent = sent;
                }
                ticks += 1;
            }
        }
    }
}

/// Leg queue -> DATAGRAM frames. Waits while quinn's datagram send buffer
/// is full (congestion control), so the leg's own bounded queue takes the
/// back-pressure and `Hub::send` drops at its end.
async fn write(
    conn: Connection,
    mut queue: tokio::sync::mpsc::Receiver<Vec<u8>>,
    stats: Arc<LegStats>,
) -> String {
    while let Some(datagram) = queue.recv().await {
        let len = datagram.len() as u64;
        match conn.send_datagram_wait(datagram.into()).await {
            Ok(()) => stats.sent(1, len),
            Err(SendDatagramError::TooLarge) => {
                stats.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                trace!(len, max = ?conn.max_datagram_size(), "datagram too large for the QUIC path; dropped");
            }
            Err(e) => return format!("cannot send datagrams: {e}"),
        }
    }
    "closed locally".into()
}

/// DATAGRAM frames -> the hub's receive queue, with the connection's
/// current remote address.
async fn read(
    shared: Arc<Shared>,
    id: crate::LegId,
    conn: Connection,
    stats: Arc<LegStats>,
    received: tokio::sync::mpsc::Sender<Received>,
    fast: Option<Arc<FastLeg>>,
) {
    let mut remote = canonical(conn.remote_address());
    while let Ok(datagram) = conn.read_datagram().await {
        let now = canonical(conn.remote_address());
        if now != remote {
            shared.moved(id, now);
            remote = now;
        }
        // cyphonic datagrams always carry a type byte.
        if datagram.is_empty() || fast.as_ref().is_some_and(|f| f.take_offer(&datagram)) {
            continue;
        }
        stats.received(datagram.len());
        trace!(leg = %id, len = datagram.len(), "QUIC datagram received");
        let item = Received {
            transport: Transport::Quic,
            from: remote,
            leg: id,
            datagram: Vec::from(datagram),
        };
        if received.send(item).await.is_err() {
            return;
        }
    }
}
