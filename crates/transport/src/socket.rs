//! Sockets for the hub: UDP for QUIC endpoints, TCP listeners, and the
//! kernel's RTT of a TCP leg.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;

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

/// A TCP listener; IPv6 listeners take IPv6 only (as above).
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // A restarted server binds its port again at once (TIME_WAIT).
    sock.set_reuse_address(true)?;
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
}
