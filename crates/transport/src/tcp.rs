//! TCP legs: TLS 1.3 over TCP, ALPN `cyphonic-dgram/1`, datagrams framed
//! as in [`crate::framing`]. For networks where no UDP gets out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cyphonic_pki::Verifier;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsStream};
use tracing::{debug, trace, warn};

use crate::framing::{self, Frame, FrameDecoder};
use crate::leg::{AbortOnDrop, Established, LegRun, LegStats, MakeLeg, Shared};
use crate::socket::{canonical, connect_tcp};
use crate::tls::{self, TCP_ALPN};
use crate::types::{LegId, Received, Transport};

/// Frames written with one `write_all` at most (then flushed).
const WRITE_BATCH: usize = 64 * 1024;
/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 64 * 1024;

type Stream = TlsStream<TcpStream>;

/// Dials a leg to `to`, checking the server certificate against
/// `server_name`.
pub(crate) async fn dial(
    shared: &Shared,
    to: SocketAddr,
    server_name: &str,
) -> Result<Stream, String> {
    let dialer = shared.dialer.as_ref().ok_or("this hub does not dial")?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let handshake = async {
        // MSS capped: the path may drop the ICMP that PMTU discovery needs.
        let tcp = connect_tcp(to)
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        // Each flush is a batch of whole datagrams; do not hold it back.
        let _ = tcp.set_nodelay(true);
        dialer
            .tcp
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    };
    let stream = match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
        Err(_) => return Err("TCP/TLS handshake timed out".into()),
        Ok(r) => TlsStream::Client(r?),
    };
    check_alpn(&stream)?;
    Ok(stream)
}

/// TLS-over-TCP connections on a hub's listeners that negotiated `alpn`
/// rather than `cyphonic-dgram/1`: they go, handshake done, to `streams`
/// (dropped when it is full or closed) instead of becoming legs. See
/// [`crate::Hub::server_with_handoff`].
#[derive(Debug, Clone)]
pub struct TcpHandoff {
    pub alpn: Vec<u8>,
    pub streams: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
}

/// Accepts connections on a listener until the hub closes it.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handoff: Option<TcpHandoff>,
    leg_needs_cert: bool,
    make_leg: MakeLeg,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let remote = canonical(remote);
        if shared.is_closed() {
            return;
        }
        if shared.leg_count() >= shared.config.max_legs {
            shared.refused(Transport::Tcp, remote, "leg limit reached".into());
            continue;
        }
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            shared.refused(
                Transport::Tcp,
                remote,
                "too many handshakes in progress".into(),
            );
            continue;
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let handoff = handoff.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let accepted = match tokio::time::timeout(
                shared.config.handshake_timeout,
                acceptor.accept(tcp),
            )
            .await
            {
                Err(_) => Err("TLS handshake timed out".to_owned()),
                Ok(Err(e)) => Err(format!("TLS: {e}")),
                Ok(Ok(stream)) => {
                    if let Some(h) = handoff
                        .filter(|h| stream.get_ref().1.alpn_protocol() == Some(h.alpn.as_slice()))
                    {
                        if h.streams.try_send((stream, remote)).is_err() {
                            debug!(%remote, "hand-off queue full or closed; dropping connection");
                        }
                        return;
                    }
                    let anonymous = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_none_or(|c| c.is_empty());
                    let stream = TlsStream::Server(stream);
                    if leg_needs_cert && anonymous {
                        Err("a leg needs a node certificate".to_owned())
                    } else {
                        check_alpn(&stream).map(|()| stream)
                    }
                }
            };
            match accepted {
                Ok(stream) => make_leg(&shared, remote, Established::Tcp(Box::new(stream))),
                Err(reason) => shared.refused(Transport::Tcp, remote, reason),
            }
        });
    }
}

fn check_alpn(stream: &Stream) -> Result<(), String> {
    let protocol = match stream {
        TlsStream::Client(s) => s.get_ref().1.alpn_protocol(),
        TlsStream::Server(s) => s.get_ref().1.alpn_protocol(),
    };
    if protocol == Some(TCP_ALPN) {
        Ok(())
    } else {
        Err(format!(
            "peer negotiated ALPN {:?}, not cyphonic-dgram/1",
            protocol.map(String::from_utf8_lossy)
        ))
    }
}

/// The peer's FQDN, if it presented a node certificate.
pub(crate) fn peer_name(verifier: &Verifier, stream: &Stream) -> Option<String> {
    let chain = match stream {
        TlsStream::Client(s) => s.get_ref().1.peer_certificates(),
        TlsStream::Server(s) => s.get_ref().1.peer_certificates(),
    }?;
    tls::peer_name(verifier, chain)
}

/// Runs an established TCP leg until either direction ends.
pub(crate) async fn run_leg(run: LegRun, stream: Stream) -> String {
    let LegRun {
        shared,
        id,
        remote,
        queue,
        stats,
        received,
        fast: _,
    } = run;
    let (rd, wr) = tokio::io::split(stream);
    let idle = shared.config.idle_timeout;
    let keepalive = shared.config.keepalive;
    drop(shared);
    let mut reader = AbortOnDrop(tokio::spawn(read(
        id,
        remote,
        rd,
        stats.clone(),
        received,
        idle,
    )));
    let mut writer = AbortOnDrop(tokio::spawn(write(wr, queue, stats, keepalive)));
    tokio::select! {
        r = &mut reader.0 => r.unwrap_or_else(|e| format!("reader ended: {e}")),
        w = &mut writer.0 => w.unwrap_or_else(|e| format!("writer ended: {e}")),
    }
}

/// Leg queue -> frames, batched per write; an empty frame when nothing
/// was sent for `keepalive`.
async fn write(
    mut wr: WriteHalf<Stream>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    stats: Arc<LegStats>,
    keepalive: Duration,
) -> String {
    let mut out = Vec::with_capacity(WRITE_BATCH + framing::HEADER_LEN + crate::MAX_DATAGRAM);
    loop {
        out.clear();
        let (mut datagrams, mut bytes) = (0u64, 0u64);
        match tokio::time::timeout(keepalive, queue.recv()).await {
            Err(_) => framing::encode_keepalive(&mut out),
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
                return "closed locally".into();
            }
            Ok(Some(first)) => {
                let mut next = Some(first);
                while let Some(d) = next {
                    // Invariant: `Hub::send` queues only 1..=65 535 bytes.
                    if framing::encode(&d, &mut out).is_ok() {
                        datagrams += 1;
                        bytes += d.len() as u64;
                    }
                    next = if out.len() < WRITE_BATCH {
                        queue.try_recv().ok()
                    } else {
                        None
                    };
                }
            }
        }
        if let Err(e) = wr.write_all(&out).await {
            return format!("write: {e}");
        }
        if let Err(e) = wr.flush().await {
            return format!("write: {e}");
        }
        stats.sent(datagrams, bytes);
    }
}

/// Frames -> the hub's receive queue. Ends the leg when nothing, not even
/// a keepalive, arrived for `idle`.
async fn read(
    id: LegId,
    remote: SocketAddr,
    mut rd: ReadHalf<Stream>,
    stats: Arc<LegStats>,
    received: mpsc::Sender<Received>,
    idle: Duration,
) -> String {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match tokio::time::timeout(idle, rd.read(&mut buf)).await {
            Err(_) => return format!("idle timeout: nothing received for {idle:?}"),
            Ok(Ok(0)) => return "closed by the peer".into(),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return format!("read: {e}"),
        };
        decoder.handle_bytes(&buf[..n]);
        while let Some(frame) = decoder.poll_frame() {
            let Frame::Datagram(datagram) = frame else {
                continue;
            };
            stats.received(datagram.len());
            trace!(leg = %id, len = datagram.len(), "TCP datagram received");
            let item = Received {
                transport: Transport::Tcp,
                from: remote,
                leg: id,
                datagram,
            };
            if received.send(item).await.is_err() {
                return "hub closed".into();
            }
        }
    }
}
