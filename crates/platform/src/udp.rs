//! UDP sockets for the fast paths (node data plane, relay): one socket per
//! address family, non-blocking, batched through quinn-udp.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What one received buffer holds (source, length, GRO stride).
pub use quinn_udp::RecvMeta;

/// A pair of UDP sockets, one per address family, on the same port, with
/// batched IO through quinn-udp (recvmmsg with GRO, sendmsg with GSO).
pub struct Sockets {
    pub v4: Option<UdpSocket>,
    pub v6: Option<UdpSocket>,
    pub state: quinn_udp::UdpSocketState,
    /// Ports besides the tunnel port, for birthday punching behind a hard
    /// NAT.
    pub spares: SparePorts,
}

impl Sockets {
    /// Receives a batch from `sock` (one of these sockets) into `bufs`,
    /// `meta[i]` describing `bufs[i]` (a GRO batch holds datagrams of one
    /// source, `stride` apart). Reads before it waits: under load the next
    /// datagrams are already queued and cost no poll. With nothing queued
    /// it waits up to `idle` for the socket and returns `Ok(0)`; after any
    /// other error too (returned, for the caller to log), so a failing
    /// socket never spins. No allocation.
    pub fn recv_batch<const N: usize>(
        &self,
        sock: &UdpSocket,
        bufs: &mut [Vec<u8>; N],
        meta: &mut [RecvMeta; N],
        idle: Duration,
    ) -> io::Result<usize> {
        match self.recv_raw(sock, bufs, meta) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => {
                wait_ready(sock, false, idle);
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(0),
                    _ => Err(e),
                }
            }
        }
    }

    /// What is queued on `sock`, into `bufs` as [`Sockets::recv_batch`]
    /// does, without waiting: `Ok(0)` when nothing is.
    pub fn try_recv_batch<const N: usize>(
        &self,
        sock: &UdpSocket,
        bufs: &mut [Vec<u8>; N],
        meta: &mut [RecvMeta; N],
    ) -> io::Result<usize> {
        match self.recv_raw(sock, bufs, meta) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            other => other,
        }
    }

    fn recv_raw<const N: usize>(
        &self,
        sock: &UdpSocket,
        bufs: &mut [Vec<u8>; N],
        meta: &mut [RecvMeta; N],
    ) -> io::Result<usize> {
        let mut each = bufs.iter_mut();
        let mut iovs: [io::IoSliceMut<'_>; N] =
            std::array::from_fn(|_| io::IoSliceMut::new(each.next().map_or(&mut [], |b| b)));
        self.state.recv(sock.into(), &mut iovs, meta)
    }

    /// Both families on `port`, all addresses.
    pub fn bind(port: u16) -> io::Result<Sockets> {
        Self::bind_addrs(&[
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from(([0u16; 8], port)),
        ])
    }

    /// The first IPv4 and the first IPv6 address of `addrs`; fails only
    /// when neither can be bound.
    pub fn bind_addrs(addrs: &[SocketAddr]) -> io::Result<Sockets> {
        let pick = |v6: bool| addrs.iter().find(|a| a.is_ipv6() == v6).copied();
        let none = || io::Error::new(io::ErrorKind::AddrNotAvailable, "no address of this family");
        let v4 = pick(false).ok_or_else(none).and_then(bind_one);
        if let Err(e) = &v4 {
            tracing::debug!(error = %e, "no IPv4 tunnel socket");
        }
        let v6 = pick(true).ok_or_else(none).and_then(bind_one);
        let (v4, v6) = match (v4, v6) {
            (Err(e), Err(_)) => return Err(e),
            (a, b) => (a.ok(), b.ok()),
        };
        // The state holds what the OS supports (GSO, ECN); it is taken
        // from the first socket that gives it. (Wine's Winsock refuses an
        // IPv6 option quinn-udp reads on IPv4 sockets; its IPv6 socket
        // serves.)
        let mut first_error = None;
        let state = v4
            .iter()
            .chain(v6.iter())
            .find_map(|s| match quinn_udp::UdpSocketState::new(s.into()) {
                Ok(state) => Some(state),
                Err(e) => {
                    first_error.get_or_insert(e);
                    None
                }
            })
            .ok_or_else(|| {
                let e = first_error.unwrap_or_else(|| io::ErrorKind::Unsupported.into());
                io::Error::new(
                    e.kind(),
                    format!("cannot set up the socket's offloads: {e}"),
                )
            })?;
        // quinn-udp sets IP_PMTUDISC_PROBE (always DF, path MTU ignored),
        // which suits QUIC's own path MTU discovery but blackholes a
        // tunnel on a path narrower than the interface. Let the kernel
        // learn the path MTU from ICMP and fragment what does not fit.
        for s in v4.iter().chain(v6.iter()) {
            allow_fragments(s);
        }
        Ok(Sockets {
            v4,
            v6,
            state,
            spares: SparePorts::default(),
        })
    }

    pub fn socket_for(&self, dst: &SocketAddr) -> Option<&UdpSocket> {
        if dst.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    /// [`Sockets::socket_for`], or an error naming what is missing.
    fn socket_or_err(&self, dst: &SocketAddr) -> io::Result<&UdpSocket> {
        self.socket_for(dst).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "no socket for this address family",
            )
        })
    }

    /// Sends one datagram.
    pub fn send_to(&self, payload: &[u8], dst: SocketAddr) -> io::Result<()> {
        send_one(&self.state, self.socket_or_err(&dst)?, payload, dst)
    }

    /// Sends one datagram that goes no further than `ttl` routers (its IP
    /// TTL, or IPv6 hop limit, set for this datagram alone by a control
    /// message: other sends keep the socket's default). Where the platform
    /// cannot, it is sent as any other.
    pub fn send_to_with_ttl(&self, payload: &[u8], dst: SocketAddr, ttl: u8) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let sock = self.socket_or_err(&dst)?;
            send_with_ttl(sock, payload, dst, ttl)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = ttl;
            self.send_to(payload, dst)
        }
    }

    /// Sends one datagram that may be fragmented whatever the path MTU the
    /// kernel knows: for a path that drops ICMP, which path MTU probing
    /// found narrower than the datagram. IPv4 goes without DF (routers
    /// fragment it); IPv6 is fragmented here to 1280 bytes, which every
    /// IPv6 path carries. The socket's own setting is back after the send
    /// (a datagram another thread sends meanwhile may go the same way).
    pub fn send_fragmenting(&self, payload: &[u8], dst: SocketAddr) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let sock = self.socket_or_err(&dst)?;
            let (level, name, on, off) = if dst.is_ipv6() {
                (libc::IPPROTO_IPV6, libc::IPV6_MTU, 1280, 0)
            } else {
                (
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_DONT,
                    libc::IP_PMTUDISC_WANT,
                )
            };
            if set_int(sock, level, name, on) != 0 {
                return Err(io::Error::last_os_error());
            }
            let sent = self.send_to(payload, dst);
            set_int(sock, level, name, off);
            sent
        }
        #[cfg(not(target_os = "linux"))]
        self.send_to(payload, dst)
    }

    /// The path MTU the kernel knows toward `dst` (the route's MTU, lowered
    /// by ICMP Fragmentation Needed / Packet Too Big), read through a
    /// socket connected to it. `None` where it cannot be read.
    pub fn path_mtu(dst: SocketAddr) -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let any: SocketAddr = if dst.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(any).ok()?;
            sock.connect(dst).ok()?;
            let (level, name) = if dst.is_ipv6() {
                (libc::IPPROTO_IPV6, libc::IPV6_MTU)
            } else {
                (libc::IPPROTO_IP, libc::IP_MTU)
            };
            let mut mtu: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid socket, and an int with its size for the
            // kernel to fill, for the duration of the call.
            let r = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    level,
                    name,
                    (&mut mtu as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            (r == 0 && mtu > 0).then_some(mtu as usize)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = dst;
            None
        }
    }

    /// Sends equally sized datagrams laid out back to back in `contents`
    /// (the last may be shorter) with one GSO call where the kernel allows.
    pub fn send_segments(
        &self,
        contents: &[u8],
        segment: usize,
        dst: SocketAddr,
    ) -> io::Result<()> {
        send_train(
            &self.state,
            self.socket_or_err(&dst)?,
            contents,
            segment,
            dst,
        )
    }
}

/// One UDP socket's sending side, with the OS's offloads (GSO trains):
/// for a socket another stack also uses (a second descriptor of a QUIC
/// endpoint's socket), so any thread may send on it.
pub struct SendSocket {
    sock: UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl SendSocket {
    pub fn new(sock: UdpSocket) -> io::Result<SendSocket> {
        let state = quinn_udp::UdpSocketState::new((&sock).into())?;
        Ok(SendSocket { sock, state })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// How many datagrams one GSO send may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// As [`Sockets::send_segments`].
    pub fn send_segments(
        &self,
        contents: &[u8],
        segment: usize,
        dst: SocketAddr,
    ) -> io::Result<()> {
        send_train(&self.state, &self.sock, contents, segment, dst)
    }
}

/// Sends `contents`, datagrams `segment` bytes apart (the last may be
/// shorter), in as few GSO sends as the kernel takes.
fn send_train(
    state: &quinn_udp::UdpSocketState,
    sock: &UdpSocket,
    contents: &[u8],
    segment: usize,
    dst: SocketAddr,
) -> io::Result<()> {
    let segment = segment.max(1);
    // One GSO send is one UDP datagram to the kernel: its payload must fit
    // a datagram's 16-bit length (less the UDP and IPv6 headers), or the
    // call fails (EMSGSIZE) and nothing of it is sent.
    let max = state
        .max_gso_segments()
        .min(MAX_GSO_PAYLOAD / segment)
        .max(1);
    for chunk in contents.chunks(segment * max) {
        let transmit = quinn_udp::Transmit {
            destination: dst,
            ecn: None,
            contents: chunk,
            segment_size: (chunk.len() > segment).then_some(segment),
            src_ip: None,
        };
        match send_blocking(state, sock, &transmit) {
            // A segment larger than the path MTU the kernel learned: GSO
            // refuses the train (EINVAL); one by one, each is fragmented.
            Err(e) if transmit.segment_size.is_some() && is_too_big_for_gso(&e) => {
                for datagram in chunk.chunks(segment) {
                    send_one(state, sock, datagram, dst)?;
                }
            }
            other => other?,
        }
    }
    Ok(())
}

/// Sends one datagram.
fn send_one(
    state: &quinn_udp::UdpSocketState,
    sock: &UdpSocket,
    payload: &[u8],
    dst: SocketAddr,
) -> io::Result<()> {
    let transmit = quinn_udp::Transmit {
        destination: dst,
        ecn: None,
        contents: payload,
        segment_size: None,
        src_ip: None,
    };
    send_blocking(state, sock, &transmit)
}

/// A full send buffer is back-pressure, not loss: wait for room (a bounded
/// while, a second at most) and try again.
fn send_blocking(
    state: &quinn_udp::UdpSocketState,
    sock: &UdpSocket,
    transmit: &quinn_udp::Transmit<'_>,
) -> io::Result<()> {
    for _ in 0..50 {
        match state.try_send(sock.into(), transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(sock, true, Duration::from_millis(20))
            }
            other => return other,
        }
    }
    Err(io::ErrorKind::WouldBlock.into())
}

/// Where a train of datagrams goes.
pub trait TrainDestination: PartialEq {
    /// What each datagram to here starts with.
    fn header(&self) -> &[u8] {
        &[]
    }

    /// How many datagrams one train to here may hold.
    fn max_segments(&self) -> usize {
        usize::MAX
    }
}

/// Datagrams gathered into GSO trains, one destination at a time: a
/// train goes on while the destination is the same, every datagram but the
/// last has the train's size, and the destination takes that many at once.
/// What does not join is sent first (by the caller's `send`, given the
/// destination, the train and its segment size).
pub struct Trains<D> {
    /// The datagrams of `current`, back to back.
    buf: Vec<u8>,
    /// The train's destination and segment size.
    current: Option<(D, usize)>,
}

impl<D: TrainDestination> Trains<D> {
    pub fn with_capacity(bytes: usize) -> Trains<D> {
        Trains {
            buf: Vec::with_capacity(bytes),
            current: None,
        }
    }

    /// Adds a datagram to `dest`: its header, then `body`.
    pub fn push(&mut self, dest: D, body: &[u8], mut send: impl FnMut(&D, &[u8], usize)) {
        let len = dest.header().len() + body.len();
        let joins = self.current.as_ref().is_some_and(|(d, seg)| {
            *d == dest
                && self.buf.len().is_multiple_of(*seg)
                && len <= *seg
                && self.buf.len() / seg < dest.max_segments()
        });
        if !joins {
            self.flush(&mut send);
            self.current = Some((dest, len));
        }
        let Some((dest, seg)) = &self.current else {
            return;
        };
        self.buf.extend_from_slice(dest.header());
        self.buf.extend_from_slice(body);
        // A shorter datagram ends its train.
        if len < *seg {
            self.flush(send);
        }
    }

    /// Sends the train gathered so far.
    pub fn flush(&mut self, mut send: impl FnMut(&D, &[u8], usize)) {
        if let Some((dest, seg)) = self.current.take() {
            if !self.buf.is_empty() {
                send(&dest, &self.buf, seg);
            }
        }
        self.buf.clear();
    }
}

/// Spare IPv4 UDP sockets on ephemeral ports, numbered `1..=MAX_SPARE`:
/// birthday punching opens many behind a hard NAT (each gets a mapping of
/// its own there) and keeps those that carry tunnels. A spare is bound by
/// the first send from it.
#[derive(Default)]
pub struct SparePorts {
    inner: RwLock<SpareInner>,
    /// Wakes [`SparePorts::wait`] when the set changes.
    #[cfg(unix)]
    bell: std::sync::OnceLock<(
        std::os::unix::net::UnixDatagram,
        std::os::unix::net::UnixDatagram,
    )>,
}

#[derive(Default)]
struct SpareInner {
    by_number: BTreeMap<u16, Arc<UdpSocket>>,
    generation: u64,
}

/// The highest spare number.
pub const MAX_SPARE: u16 = 1024;

impl SparePorts {
    /// Spare `k`'s socket, bound now if it is not yet.
    pub fn get_or_bind(&self, k: u16) -> io::Result<Arc<UdpSocket>> {
        if k == 0 || k > MAX_SPARE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no such spare port",
            ));
        }
        if let Some(s) = self.get(k) {
            return Ok(s);
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = inner.by_number.get(&k) {
            return Ok(s.clone());
        }
        let sock = Arc::new(bind_one(SocketAddr::from(([0, 0, 0, 0], 0)))?);
        inner.by_number.insert(k, sock.clone());
        inner.generation += 1;
        drop(inner);
        self.ring();
        Ok(sock)
    }

    pub fn get(&self, k: u16) -> Option<Arc<UdpSocket>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.by_number.get(&k).cloned()
    }

    /// Closes every spare but those numbered in `keep`.
    pub fn keep(&self, keep: &[u16]) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let before = inner.by_number.len();
        inner.by_number.retain(|k, _| keep.contains(k));
        if inner.by_number.len() != before {
            inner.generation += 1;
            drop(inner);
            self.ring();
        }
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.by_number.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open spares and the set's generation (it changes with the set).
    pub fn snapshot(&self) -> (u64, Vec<(u16, Arc<UdpSocket>)>) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let v = inner
            .by_number
            .iter()
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        (inner.generation, v)
    }

    pub fn generation(&self) -> u64 {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.generation
    }

    #[cfg(unix)]
    fn bell(
        &self,
    ) -> Option<&(
        std::os::unix::net::UnixDatagram,
        std::os::unix::net::UnixDatagram,
    )> {
        if self.bell.get().is_none() {
            let pair = std::os::unix::net::UnixDatagram::pair().ok()?;
            pair.0.set_nonblocking(true).ok()?;
            pair.1.set_nonblocking(true).ok()?;
            let _ = self.bell.set(pair);
        }
        self.bell.get()
    }

    /// Wakes [`SparePorts::wait`]: the set changed, or its caller is to
    /// stop.
    pub fn wake(&self) {
        self.ring();
    }

    fn ring(&self) {
        #[cfg(unix)]
        if let Some((tx, _)) = self.bell() {
            let _ = tx.send(&[1]);
        }
    }

    /// Waits until one of `socks` is readable, the set changes
    /// ([`SparePorts::wake`]), or `timeout` passes (`None`: no timeout,
    /// where the set's changes wake the wait, else a second); returns the
    /// indexes (into `socks`) of the readable ones.
    pub fn wait(&self, socks: &[(u16, Arc<UdpSocket>)], timeout: Option<Duration>) -> Vec<usize> {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let bell = self.bell().map(|(_, rx)| rx.as_raw_fd());
            let mut fds: Vec<libc::pollfd> = socks
                .iter()
                .map(|(_, s)| s.as_raw_fd())
                .chain(bell)
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = match (timeout, bell) {
                (Some(t), _) => t.as_millis().min(i32::MAX as u128) as libc::c_int,
                (None, Some(_)) => -1,
                (None, None) => 1000,
            };
            // SAFETY: `fds` is a valid array of pollfds for the call.
            unsafe {
                libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms);
            }
            if let (Some(_), Some((_, rx))) = (bell, self.bell.get()) {
                let mut b = [0u8; 64];
                while rx.recv(&mut b).is_ok() {}
            }
            fds.iter()
                .take(socks.len())
                .enumerate()
                .filter(|(_, p)| p.revents != 0)
                .map(|(i, _)| i)
                .collect()
        }
        #[cfg(windows)]
        {
            // No bell: a change of the set is noticed within the cap.
            let socks: Vec<&UdpSocket> = socks.iter().map(|(_, s)| &**s).collect();
            let cap = Duration::from_millis(50);
            let ready = wsa_poll(&socks, false, timeout.unwrap_or(cap).min(cap));
            ready
                .iter()
                .enumerate()
                .filter(|(_, r)| **r)
                .map(|(i, _)| i)
                .collect()
        }
        #[cfg(not(any(unix, windows)))]
        {
            let cap = Duration::from_millis(20);
            std::thread::sleep(timeout.unwrap_or(cap).min(cap));
            (0..socks.len()).collect()
        }
    }
}

/// Sends one datagram from `sock` (with IP TTL `ttl` when given), waiting
/// a bounded while when its send buffer is full.
pub fn send_from(
    sock: &UdpSocket,
    payload: &[u8],
    dst: SocketAddr,
    ttl: Option<u8>,
) -> io::Result<()> {
    for _ in 0..50 {
        let sent = match ttl {
            #[cfg(target_os = "linux")]
            Some(ttl) => send_with_ttl(sock, payload, dst, ttl),
            _ => sock.send_to(payload, dst).map(|_| ()),
        };
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(sock, true, Duration::from_millis(20))
            }
            other => return other,
        }
    }
    Err(io::ErrorKind::WouldBlock.into())
}

/// Whether a GSO send failed because a segment exceeds the path MTU.
fn is_too_big_for_gso(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EMSGSIZE))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// `setsockopt` of an int option; 0 or -1 as the call returns.
#[cfg(target_os = "linux")]
fn set_int(sock: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> i32 {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a pointer to an int of the size given,
    // for the duration of the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    }
}

/// IP_PMTUDISC_WANT (IPv4) and IPV6_PMTUDISC_WANT: datagrams go with DF
/// while they fit the path MTU the kernel knows (learned from ICMP
/// Fragmentation Needed / Packet Too Big, also through NATs, which
/// translate those back), and are fragmented when they do not. (IPv6 also
/// needs IPV6_DONTFRAG off, which quinn-udp turns on.)
fn allow_fragments(sock: &UdpSocket) {
    #[cfg(target_os = "linux")]
    {
        let set = |level, name, value| set_int(sock, level, name, value);
        let v6 = sock.local_addr().is_ok_and(|a| a.is_ipv6());
        let r = if v6 {
            set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0)
                | set(
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MTU_DISCOVER,
                    libc::IPV6_PMTUDISC_WANT,
                )
        } else {
            set(
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_WANT,
            )
        };
        if r != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "cannot let the kernel fragment");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = sock;
}

/// The most payload one GSO send carries: 65535 less the UDP (8) and IPv6
/// (40) headers.
const MAX_GSO_PAYLOAD: usize = 65_535 - 8 - 40;

fn bind_one(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Large buffers absorb bursts between batches; the kernel caps them at
    // net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    // Non-blocking: recvmmsg on a blocking socket would wait for a full
    // batch. The loops wait for readiness with poll(2) instead.
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Waits until `sock` is readable (or writable) or `timeout` passes.
#[cfg(windows)]
pub fn wait_ready(sock: &UdpSocket, write: bool, timeout: Duration) {
    wsa_poll(&[sock], write, timeout);
}

/// `WSAPoll` on `socks` for reading (or writing); which are ready.
#[cfg(windows)]
fn wsa_poll(socks: &[&UdpSocket], write: bool, timeout: Duration) -> Vec<bool> {
    use std::os::windows::io::AsRawSocket;
    use windows_sys::Win32::Networking::WinSock::{WSAPoll, POLLRDNORM, POLLWRNORM, WSAPOLLFD};
    let mut fds: Vec<WSAPOLLFD> = socks
        .iter()
        .map(|s| WSAPOLLFD {
            fd: s.as_raw_socket() as usize,
            events: if write { POLLWRNORM } else { POLLRDNORM },
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of WSAPOLLFDs for the call.
    unsafe {
        WSAPoll(
            fds.as_mut_ptr(),
            fds.len() as u32,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        );
    }
    fds.iter().map(|f| f.revents != 0).collect()
}

/// Waits until `sock` is readable (or writable) or `timeout` passes.
#[cfg(unix)]
pub fn wait_ready(sock: &UdpSocket, write: bool, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: if write { libc::POLLOUT } else { libc::POLLIN },
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int);
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(std::net::IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// `sendmsg` with an `IP_TTL` (IPv4) or `IPV6_HOPLIMIT` (IPv6) control
/// message.
#[cfg(target_os = "linux")]
fn send_with_ttl(sock: &UdpSocket, payload: &[u8], dst: SocketAddr, ttl: u8) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let addr = socket2::SockAddr::from(dst);
    let (level, kind) = if dst.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_TTL)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT)
    };
    let value = libc::c_int::from(ttl.max(1));
    let int_len = std::mem::size_of::<libc::c_int>() as u32;
    // Aligned for a cmsghdr; room for one int-sized control message.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data (zero is a valid empty value); every
    // pointer in it (address, iovec, control buffer) outlives the
    // sendmsg call, the control buffer is aligned and larger than
    // CMSG_SPACE(int), and CMSG_FIRSTHDR of a buffer that large is
    // non-null.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(int_len) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(int_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), value);
        libc::sendmsg(sock.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A train longer than one UDP datagram's 64 KiB (64 sealed packets of
    /// a full-size tunnel, as a batch of TUN or LAN packets makes) is sent
    /// in several GSO calls, and every segment arrives.
    #[test]
    fn a_train_longer_than_one_datagram_arrives_whole() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let _ = socket2::SockRef::from(&receiver).set_recv_buffer_size(4 << 20);
        let sockets = Sockets::bind_addrs(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let (segment, count) = (1440usize, 64usize);
        let contents: Vec<u8> = (0..segment * count).map(|i| (i / segment) as u8).collect();
        sockets
            .send_segments(&contents, segment, receiver.local_addr().unwrap())
            .expect("sent");
        let mut buf = [0u8; 2048];
        let mut seen = vec![false; count];
        for _ in 0..count {
            let (n, _) = receiver.recv_from(&mut buf).expect("a segment");
            assert_eq!(n, segment);
            seen[usize::from(buf[0])] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    /// The TTL of the datagram as it arrives on `receiver` (IP_RECVTTL).
    #[cfg(target_os = "linux")]
    fn arriving_ttl(receiver: &std::net::UdpSocket) -> i32 {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        let mut buf = [0u8; 64];
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as in send_with_ttl: plain data, pointers that outlive
        // the calls, an aligned control buffer; the received control
        // message is checked for level and type before its int is read.
        unsafe {
            let fd = receiver.as_raw_fd();
            assert_eq!(
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_RECVTTL,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                ),
                0
            );
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            assert!(libc::recvmsg(fd, &mut msg, 0) > 0);
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null());
            assert_eq!(
                ((*cmsg).cmsg_level, (*cmsg).cmsg_type),
                (libc::IPPROTO_IP, libc::IP_TTL)
            );
            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>())
        }
    }

    /// A datagram sent with a TTL carries it; the next one, sent plainly,
    /// the socket's default again.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_ttl_applies_to_one_datagram() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sockets = Sockets::bind_addrs(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let to = receiver.local_addr().unwrap();
        sockets.send_to_with_ttl(b"low", to, 3).expect("sent");
        assert_eq!(arriving_ttl(&receiver), 3);
        sockets.send_to(b"plain", to).expect("sent");
        assert!(arriving_ttl(&receiver) > 3);
    }

    /// Trains keep one destination and one size; a shorter datagram ends
    /// its train, a longer one or another destination starts a new one,
    /// and a full train is sent before the next datagram.
    #[test]
    fn trains_are_cut_where_segments_cannot_join() {
        #[derive(Debug, PartialEq, Clone, Copy)]
        struct To(char);
        impl TrainDestination for To {
            fn header(&self) -> &[u8] {
                b"h"
            }
            fn max_segments(&self) -> usize {
                3
            }
        }
        let mut trains: Trains<To> = Trains::with_capacity(64);
        let mut sent: Vec<(char, Vec<u8>, usize)> = Vec::new();
        let mut push = |trains: &mut Trains<To>, d: char, body: &[u8]| {
            trains.push(To(d), body, |d: &To, t: &[u8], seg| {
                sent.push((d.0, t.to_vec(), seg))
            });
        };
        push(&mut trains, 'a', b"12");
        push(&mut trains, 'a', b"34");
        push(&mut trains, 'a', b"56");
        // Three segments: full, so the fourth starts a train.
        push(&mut trains, 'a', b"78");
        // Longer: a new train; shorter: joins and ends it.
        push(&mut trains, 'a', b"9xy");
        push(&mut trains, 'a', b"z");
        push(&mut trains, 'b', b"00");
        push(&mut trains, 'c', b"11");
        trains.flush(|d: &To, t: &[u8], seg| sent.push((d.0, t.to_vec(), seg)));
        let got: Vec<(char, &[u8], usize)> =
            sent.iter().map(|(d, t, s)| (*d, &t[..], *s)).collect();
        assert_eq!(
            got,
            [
                ('a', &b"h12h34h56"[..], 3),
                ('a', &b"h78"[..], 3),
                ('a', &b"h9xyhz"[..], 4),
                ('b', &b"h00"[..], 3),
                ('c', &b"h11"[..], 3),
            ]
        );
    }
}
