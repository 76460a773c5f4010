//! Sockets for the hub: UDP for QUIC endpoints, TCP listeners, and the
//! kernel's RTT of a TCP leg; and the TCP sockets of the whole product
//! ([`connect_tcp`], [`bind_tcp_listener`]), all with a conservative MSS
//! ([`CONSERVATIVE_MSS`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;

/// The TCP maximum segment size (`TCP_MAXSEG`) of every TCP socket the
/// product opens or accepts: 1280 (the minimum IPv6 MTU, RFC 8200 §5)
/// − 40 (IPv6 header) − 20 (TCP header) − 20 (room for TCP options such
/// as timestamps, 12 bytes) = 1200 bytes.
///
/// Segments of that size cross any path IPv6 can use, and any IPv4 path
/// that carries 1240-byte packets, even one that drops ICMP, where the
/// kernel's path MTU discovery never learns the real size and full-size
/// segments would be lost for good (a black hole). The cost is a few
/// percent of header overhead on control traffic.
pub const CONSERVATIVE_MSS: u32 = 1200;

/// Caps the MSS of a socket at [`CONSERVATIVE_MSS`]: before `connect` it
/// lowers the MSS the SYN advertises and the segments sent; on a socket
/// before `listen` (Linux) it does the same for every accepted
/// connection, whose SYN-ACK advertises it.
///
/// Best effort: a socket the kernel will not cap still connects, with the
/// MSS the kernel picks.
fn cap_mss(sock: socket2::SockRef<'_>, addr: SocketAddr) {
    #[cfg(unix)]
    if let Err(e) = sock.set_mss(CONSERVATIVE_MSS) {
        debug!(%addr, error = %e, "cannot set TCP_MAXSEG; using the kernel's MSS");
    }
    #[cfg(not(unix))]
    {
        let _ = (sock, addr);
        debug!(%addr, "TCP_MAXSEG is not supported here; using the kernel's MSS");
    }
}

/// Opens a TCP connection to `addr` whose MSS is capped at
/// [`CONSERVATIVE_MSS`] from the SYN on. Otherwise as
/// `TcpStream::connect` (no options set; callers set `TCP_NODELAY`).
pub async fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    cap_mss(socket2::SockRef::from(&sock), addr);
    sock.connect(addr).await
}

/// How a UDP socket for QUIC is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// A listener: an IPv6 socket takes IPv6 only, so `0.0.0.0:P` and
    /// `[::]:P` can both be bound, as the node's UDP sockets are.
    Only,
    /// The dial socket: one IPv6 socket reaching IPv4 peers too, through
    /// IPv4-mapped addresses.
    DualStack,
}

/// A non-blocking UDP socket with large buffers.
pub(crate) fn bind_udp(
    addr: SocketAddr,
    family: Family,
    buffer: usize,
) -> io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(family == Family::Only)?;
    }
    // Bursts of a data plane outrun one wake-up of the endpoint driver; the
    // kernel caps these at net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(buffer);
    let _ = sock.set_send_buffer_size(buffer);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// The socket every QUIC leg a node dials goes out of: dual-stack on an
/// ephemeral port, or IPv4 only where the host has no IPv6.
pub(crate) fn bind_dial_udp(buffer: usize) -> io::Result<std::net::UdpSocket> {
    bind_udp(SocketAddr::from(([0u16; 8], 0)), Family::DualStack, buffer)
        .or_else(|_| bind_udp(SocketAddr::from(([0, 0, 0, 0], 0)), Family::Only, buffer))
}

/// A TCP listener on `addr` whose accepted connections have their MSS
/// capped at [`CONSERVATIVE_MSS`]. IPv6 listeners take IPv6 only, so
/// `0.0.0.0:P` and `[::]:P` can both be bound; `SO_REUSEADDR` (Unix) lets
/// a restarted server bind its port again at once (TIME_WAIT). Backlog
/// 1024. Must be called within a Tokio runtime.
pub fn bind_tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Not on Windows, where SO_REUSEADDR lets another socket take a port
    // in use.
    #[cfg(unix)]
    sock.set_reuse_address(true)?;
    // Before listen(): accepted sockets inherit it.
    cap_mss(socket2::SockRef::from(&sock), addr);
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// `::ffff:a.b.c.d` as `a.b.c.d`: a dual-stack socket reports IPv4 peers
/// that way, and the cores must see one address per peer.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Reads the kernel's RTT estimate of a TCP leg (Linux `TCP_INFO`).
pub(crate) struct TcpProbe {
    /// A duplicate of the leg's socket descriptor, so the probe needs no
    /// access to the stream the leg's tasks own.
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::OwnedFd>,
}

impl TcpProbe {
    pub fn new(tcp: &TcpStream) -> Self {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsFd;
            TcpProbe {
                fd: tcp.as_fd().try_clone_to_owned().ok(),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = tcp;
            TcpProbe {}
        }
    }

    pub fn rtt(&self) -> Option<Duration> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.fd.as_ref()?;
            // SAFETY: tcp_info is plain old data; zeroed is a valid value.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: `fd` is an open socket we own; `info` and `len` are
            // valid for writes of `len` bytes for the duration of the call.
            let rc = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&mut info as *mut libc::tcp_info).cast(),
                    &mut len,
                )
            };
            (rc == 0 && info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:443".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.7:443".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        let v4: SocketAddr = "198.51.100.1:1".parse().unwrap();
        assert_eq!(canonical(v4), v4);
    }

    /// A connection made by [`connect_tcp`] to a listener made by
    /// [`bind_tcp_listener`] has an effective MSS (`TCP_MAXSEG` on a
    /// connected socket) of at most [`CONSERVATIVE_MSS`] on both ends, even
    /// on loopback (MTU 65536), and carries data both ways.
    #[cfg(unix)]
    async fn capped_round_trip(listen: SocketAddr) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = bind_tcp_listener(listen).unwrap();
        let to = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(connect_tcp(to), listener.accept());
        let (mut client, (mut server, _)) = (client.unwrap(), accepted.unwrap());
        for (end, stream) in [("client", &client), ("server", &server)] {
            let mss = socket2::SockRef::from(stream).mss().unwrap();
            assert!(
                mss > 0 && mss <= CONSERVATIVE_MSS,
                "{listen}: {end} MSS is {mss}"
            );
        }

        // 100 kB there and back: many full segments each way.
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let echo = tokio::spawn(async move {
            let mut buf = vec![0u8; 100_000];
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(&buf).await.unwrap();
            server.shutdown().await.unwrap();
        });
        client.write_all(&sent).await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        echo.await.unwrap();
        assert!(back == sent, "{listen}: data changed on the way");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn connections_over_ipv4_have_a_conservative_mss() {
        capped_round_trip("127.0.0.1:0".parse().unwrap()).await;
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn connections_over_ipv6_have_a_conservative_mss() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        }
        capped_round_trip("[::1]:0".parse().unwrap()).await;
    }
}
