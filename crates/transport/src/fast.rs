//! The QUIC-shaped fast path (`docs/protocol.md` §11.6): tunnel data
//! packets of a QUIC leg sent straight on the leg's UDP 5-tuple, each after
//! a 9-byte QUIC short header whose connection ID is a *fast-path ID* the
//! receiver handed out, instead of inside DATAGRAM frames.
//!
//! The packets are already sealed end to end by the tunnel's keys (with
//! their replay window); QUIC's packet protection would be a second layer,
//! and quinn's per-packet work, task hand-offs and 10-segment GSO batches
//! cost the QUIC path 2.6 times the CPU per bit of native UDP. The QUIC
//! connection stays: its handshake passes the firewall and authenticates
//! the peer, it migrates, carries everything else, and carries the offers.
//!
//! - Each QUIC leg gets a random ID, registered with its endpoint's socket
//!   wrapper ([`FastSocket`]); the leg offers it to the peer in DATAGRAM
//!   frames `[0xf0][ID]` (again now and then: they may be lost; and every
//!   second while the fast path carries data, so the connection sees the
//!   path the data takes).
//! - A leg that knows the peer's ID sends data packets as
//!   `[0b01xxxxxx][peer's ID][packet]` from its endpoint's socket
//!   ([`FastRoute`]), in GSO trains as native UDP does.
//! - The wrapper hands every received short-header datagram whose ID is
//!   one of ours to the hub's receive queue as the leg's datagram, and all
//!   else to quinn.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{ready, Context, Poll};

use cyphonic_platform::udp::{SendSocket, Sockets, TrainDestination};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::leg::{lock, LegStats};
use crate::socket::canonical;
use crate::types::{LegId, Received, Transport};

/// The hub-level DATAGRAM frame that offers a fast-path ID: this byte,
/// then the 8-byte ID. No cyphonic datagram type is this high.
pub(crate) const TYPE_FAST_OFFER: u8 = 0xf0;
/// The short header before each fast packet: one byte, the 8-byte ID.
pub const FAST_HEADER_LEN: usize = 1 + ID_LEN;
const ID_LEN: usize = 8;
pub(crate) type FastId = [u8; ID_LEN];

/// A short header's first byte: form bit clear, fixed bit set.
fn is_short_header(b: u8) -> bool {
    b & 0xc0 == 0x40
}

/// Unpredictable 64 bits from the OS-seeded SipHash keys (the IDs are
/// seen on the wire; they need only be unguessable in advance and unique).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Takes fast packets where the endpoint reads them ([`crate::Hub::set_fast_sink`]):
/// no copy, no queue, no task between the socket and the data plane.
pub trait FastSink: Send + Sync {
    /// One fast packet of a QUIC leg whose peer is at `from` (the
    /// connection's current path); the sink may change it in place (open
    /// it).
    fn packet(&self, from: SocketAddr, datagram: &mut [u8]);
    /// The end of one receive batch: what the sink gathered goes out.
    fn flush(&self);
}

/// The IDs this hub handed out, and where their datagrams go.
#[derive(Default)]
pub(crate) struct FastTable {
    ids: RwLock<HashMap<FastId, Registered>>,
    /// The hub's receive queue; taken when the hub closes.
    received: Mutex<Option<mpsc::Sender<Received>>>,
    /// Where fast packets go instead of the queue, when set.
    sink: RwLock<Option<Arc<dyn FastSink>>>,
    /// Fast packets dropped because the receive queue was full.
    pub dropped_queue_full: AtomicU64,
}

/// A leg an ID was handed out for.
struct Registered {
    leg: LegId,
    stats: Arc<LegStats>,
    /// `None` in unit tests.
    conn: Option<quinn::Connection>,
}

impl FastTable {
    pub fn set_received(&self, tx: Option<mpsc::Sender<Received>>) {
        *lock(&self.received) = tx;
    }

    pub fn set_sink(&self, sink: Option<Arc<dyn FastSink>>) {
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    /// A fresh ID for `leg`, on `conn`.
    fn register(
        &self,
        leg: LegId,
        stats: Arc<LegStats>,
        conn: Option<quinn::Connection>,
    ) -> FastId {
        let mut ids = self.ids.write().unwrap_or_else(|e| e.into_inner());
        loop {
            let id = random_u64().to_be_bytes();
            if let std::collections::hash_map::Entry::Vacant(v) = ids.entry(id) {
                v.insert(Registered { leg, stats, conn });
                return id;
            }
        }
    }

    pub fn unregister(&self, id: &FastId) {
        self.ids
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Delivers the fast packets among the `n` entries received and leaves
    /// the rest for quinn: whether any is left. A GRO entry may mix both
    /// (one 5-tuple): its quinn segments are packed together, so every one
    /// but the last keeps the stride; an entry with none left keeps its
    /// place with length 0 (quinn reads nothing from it).
    fn filter(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) -> bool {
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner());
        if ids.is_empty() {
            return true;
        }
        let sink = self.sink.read().unwrap_or_else(|e| e.into_inner()).clone();
        let received = match sink {
            Some(_) => None,
            None => lock(&self.received).clone(),
        };
        let mut kept = false;
        let mut sunk = false;
        for i in 0..n {
            let m = meta[i];
            let stride = m.stride.max(1);
            let buf = &mut bufs[i][..m.len];
            let mut write = 0;
            let mut off = 0;
            while off < m.len {
                let end = (off + stride).min(m.len);
                let seg = &buf[off..end];
                let leg = (seg.len() > FAST_HEADER_LEN && is_short_header(seg[0]))
                    .then(|| ids.get(&seg[1..FAST_HEADER_LEN]))
                    .flatten();
                match leg {
                    Some(r) => {
                        r.stats.received_fast(seg.len() - FAST_HEADER_LEN);
                        // From the leg's address as the connection knows
                        // it, as its DATAGRAM frames are: a NAT that maps
                        // the peer anew moves the leg once the connection
                        // validated the new path (the sender's offers keep
                        // it within a second of the data).
                        let from = r.conn.as_ref().map_or(m.addr, |c| c.remote_address());
                        if let Some(sink) = &sink {
                            sink.packet(canonical(from), &mut buf[off + FAST_HEADER_LEN..end]);
                            sunk = true;
                            off = end;
                            continue;
                        }
                        let datagram = seg[FAST_HEADER_LEN..].to_vec();
                        let item = Received {
                            transport: Transport::Quic,
                            from: canonical(from),
                            leg: r.leg,
                            datagram,
                        };
                        if received.as_ref().is_none_or(|r| r.try_send(item).is_err()) {
                            self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        buf.copy_within(off..end, write);
                        write += end - off;
                    }
                }
                off = end;
            }
            meta[i].len = write;
            kept |= write > 0;
        }
        if let (true, Some(sink)) = (sunk, &sink) {
            sink.flush();
        }
        kept
    }
}

/// An endpoint's socket as quinn sees it: received fast packets are taken
/// out before quinn sees them; everything else is the inner socket's.
pub(crate) struct FastSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    table: Arc<FastTable>,
}

impl fmt::Debug for FastSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for FastSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            if self.table.filter(bufs, meta, n) {
                return Poll::Ready(Ok(n));
            }
            // All were fast packets: read on (the inner socket registers
            // the waker when it has nothing).
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// What sends fast packets out of one endpoint's socket: a second
/// descriptor of it, with GSO trains (no tokio readiness, so any thread
/// may send).
pub(crate) struct SendSide {
    sock: SendSocket,
    ipv6: bool,
}

/// An endpoint's [`SendSide`], replaced when the endpoint rebinds and
/// dropped when the hub closes (so the port is free again).
#[derive(Default)]
pub(crate) struct Slot(Mutex<Option<Arc<SendSide>>>);

impl Slot {
    pub fn take(&self) {
        lock(&self.0).take();
    }
}

/// Wraps `socket` for a quinn endpoint sharing it with the fast path:
/// the socket quinn gets, and the slot fast packets leave through.
pub(crate) fn wrap(
    socket: UdpSocket,
    table: &Arc<FastTable>,
    slot: &Slot,
) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let send = SendSide {
        ipv6: socket.local_addr()?.is_ipv6(),
        sock: SendSocket::new(socket.try_clone()?)?,
    };
    let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
    *lock(&slot.0) = Some(Arc::new(send));
    Ok(Arc::new(FastSocket {
        inner,
        table: table.clone(),
    }))
}

/// A QUIC leg's fast-path state.
pub(crate) struct FastLeg {
    pub slot: Arc<Slot>,
    /// Ours: fast packets to us carry it.
    pub own: FastId,
    /// The peer's, once offered; 0 until then.
    peer: AtomicU64,
    table: Arc<FastTable>,
}

impl FastLeg {
    pub fn new(
        slot: Arc<Slot>,
        table: Arc<FastTable>,
        leg: LegId,
        stats: Arc<LegStats>,
        conn: quinn::Connection,
    ) -> Self {
        FastLeg {
            own: table.register(leg, stats, Some(conn)),
            slot,
            peer: AtomicU64::new(0),
            table,
        }
    }

    /// The DATAGRAM frame that offers our ID.
    pub fn offer(&self) -> [u8; FAST_HEADER_LEN] {
        let mut o = [TYPE_FAST_OFFER; FAST_HEADER_LEN];
        o[1..].copy_from_slice(&self.own);
        o
    }

    /// A received DATAGRAM frame: `true` if it was the peer's offer.
    pub fn take_offer(&self, datagram: &[u8]) -> bool {
        if datagram.len() != FAST_HEADER_LEN || datagram[0] != TYPE_FAST_OFFER {
            return false;
        }
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&datagram[1..]);
        self.peer.store(u64::from_be_bytes(id), Ordering::Relaxed);
        true
    }

    /// The route fast packets to the peer (now at `remote`) take, once the
    /// peer offered its ID.
    pub fn route(&self, remote: SocketAddr, stats: &Arc<LegStats>) -> Option<FastRoute> {
        let peer = self.peer.load(Ordering::Relaxed);
        if peer == 0 {
            return None;
        }
        let send = lock(&self.slot.0).clone()?;
        let to = match remote {
            SocketAddr::V4(v4) if send.ipv6 => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        };
        let mut header = [0u8; FAST_HEADER_LEN];
        // The bits QUIC's header protection would mask look random.
        header[0] = 0x40 | (peer as u8 & 0x3f);
        header[1..].copy_from_slice(&peer.to_be_bytes());
        Some(FastRoute {
            send,
            to,
            header,
            stats: stats.clone(),
        })
    }
}

impl Drop for FastLeg {
    fn drop(&mut self) {
        self.table.unregister(&self.own);
    }
}

/// Where a QUIC leg's fast packets go: its endpoint's socket, the peer's
/// address, the header each packet starts with.
#[derive(Clone)]
pub struct FastRoute {
    send: Arc<SendSide>,
    to: SocketAddr,
    header: [u8; FAST_HEADER_LEN],
    stats: Arc<LegStats>,
}

impl PartialEq for FastRoute {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.send, &other.send) && self.to == other.to && self.header == other.header
    }
}

impl fmt::Debug for FastRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastRoute").field("to", &self.to).finish()
    }
}

impl FastRoute {
    /// What each fast packet starts with.
    pub fn header(&self) -> &[u8; FAST_HEADER_LEN] {
        &self.header
    }

    /// How many packets one [`FastRoute::send`] may carry.
    pub fn max_segments(&self) -> usize {
        self.send.sock.max_segments()
    }

    /// Sends `train`: whole fast packets (header included) `segment`
    /// bytes apart, the last one possibly shorter; as few GSO sends as
    /// the kernel takes. Waits (up to a second) for room in the socket's
    /// buffer, as the native path does.
    pub fn send(&self, train: &[u8], segment: usize) -> io::Result<()> {
        self.send.sock.send_segments(train, segment, self.to)?;
        let n = train.len().div_ceil(segment.max(1));
        let bytes = train.len() - n * FAST_HEADER_LEN;
        self.stats.sent_fast(n as u64, bytes as u64);
        Ok(())
    }
}

/// Where a train of tunnel packets goes: a UDP endpoint from the data
/// plane's sockets, or a QUIC leg's fast path.
#[derive(Debug, PartialEq)]
pub enum TrainDest {
    Udp(SocketAddr),
    Fast(FastRoute),
}

impl TrainDestination for TrainDest {
    fn max_segments(&self) -> usize {
        match self {
            TrainDest::Udp(_) => usize::MAX,
            TrainDest::Fast(route) => route.max_segments(),
        }
    }

    fn header(&self) -> &[u8] {
        match self {
            TrainDest::Udp(_) => &[],
            TrainDest::Fast(route) => route.header(),
        }
    }
}

impl TrainDest {
    /// Sends `train` (datagrams `segment` bytes apart, headers included).
    pub fn send(&self, sockets: &Sockets, train: &[u8], segment: usize) -> io::Result<()> {
        match self {
            TrainDest::Udp(dst) => sockets.send_segments(train, segment, *dst),
            TrainDest::Fast(route) => route.send(train, segment),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(len: usize, stride: usize) -> RecvMeta {
        RecvMeta {
            len,
            stride,
            addr: "[::ffff:192.0.2.7]:443".parse().unwrap(),
            ..Default::default()
        }
    }

    /// Fast packets are taken out of GRO entries that mix them with
    /// quinn's; quinn's segments are packed within their entry, and an
    /// entry of fast packets only is left empty.
    #[test]
    fn fast_packets_are_taken_out_and_the_rest_packed() {
        let table = FastTable::default();
        let (tx, mut rx) = mpsc::channel(16);
        table.set_received(Some(tx));
        let id = table.register(LegId(7), Arc::default(), None);
        let fast = |body: u8| {
            let mut p = vec![0x41];
            p.extend_from_slice(&id);
            p.extend_from_slice(&[body; 11]);
            p
        };
        let quic = |body: u8| {
            let mut p = vec![0x41];
            p.extend_from_slice(&[body; 19]);
            p
        };
        // Entry 0: fast, quinn, fast (stride 20). Entry 1: fast only.
        // Entry 2: quinn, quinn (the last shorter), a long header.
        let e0 = [fast(1), quic(2), fast(3)].concat();
        let e1 = fast(4);
        let mut e2 = [quic(5), quic(6)[..12].to_vec()].concat();
        e2[0] = 0xc0;
        let mut storage = [e0.clone(), e1.clone(), e2.clone()];
        let mut metas = [meta(e0.len(), 20), meta(e1.len(), 20), meta(e2.len(), 20)];
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        assert!(table.filter(&mut bufs, &mut metas, 3));
        assert_eq!(&bufs[0][..metas[0].len], &quic(2)[..]);
        assert_eq!(metas[1].len, 0);
        assert_eq!(&bufs[2][..metas[2].len], &e2[..]);
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            assert_eq!(r.leg, LegId(7));
            assert_eq!(r.from, "192.0.2.7:443".parse().unwrap());
            got.push(r.datagram[0]);
        }
        assert_eq!(got, [1, 3, 4]);
        // Unknown IDs and short datagrams go to quinn untouched.
        table.unregister(&id);
        let mut other = [fast(8)];
        let mut m = [meta(other[0].len(), 20)];
        let mut bufs: Vec<IoSliceMut<'_>> = other.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        assert!(table.filter(&mut bufs, &mut m, 1));
        assert_eq!(m[0].len, other[0].len());
        assert!(rx.try_recv().is_err());
        // Fast packets only: nothing for quinn.
        let id = table.register(LegId(8), Arc::default(), None);
        let mut only = [[vec![0x7f], id.to_vec(), vec![9; 5]].concat()];
        let mut m = [meta(only[0].len(), 20)];
        let mut bufs: Vec<IoSliceMut<'_>> = only.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        assert!(!table.filter(&mut bufs, &mut m, 1));
        assert_eq!(rx.try_recv().unwrap().leg, LegId(8));
    }

    /// What a sink saw: each packet (its first byte, after the sink
    /// changed it in place) with its source, and a mark per flush.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Option<(SocketAddr, u8)>>>);

    impl FastSink for Seen {
        fn packet(&self, from: SocketAddr, datagram: &mut [u8]) {
            datagram[0] ^= 0xff;
            lock(&self.0).push(Some((from, datagram[0])));
        }
        fn flush(&self) {
            lock(&self.0).push(None);
        }
    }

    /// With a sink, fast packets go to it in place, not to the queue, and
    /// a receive batch ends with one flush; quinn's are packed as without.
    #[test]
    fn a_sink_takes_fast_packets_in_place_and_one_flush_per_batch() {
        let table = FastTable::default();
        let (tx, mut rx) = mpsc::channel(16);
        table.set_received(Some(tx));
        let seen = Arc::new(Seen::default());
        table.set_sink(Some(seen.clone()));
        let id = table.register(LegId(3), Arc::default(), None);
        let fast = |body: u8| [vec![0x41], id.to_vec(), vec![body; 11]].concat();
        let quic = [vec![0x41], vec![2; 19]].concat();
        let e0 = [fast(1), quic.clone(), fast(3)].concat();
        let e1 = fast(4);
        let mut storage = [e0.clone(), e1.clone()];
        let mut metas = [meta(e0.len(), 20), meta(e1.len(), 20)];
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        assert!(table.filter(&mut bufs, &mut metas, 2));
        assert_eq!(&bufs[0][..metas[0].len], &quic[..]);
        assert_eq!(metas[1].len, 0);
        assert!(rx.try_recv().is_err(), "nothing on the queue");
        let from: SocketAddr = "192.0.2.7:443".parse().unwrap();
        assert_eq!(
            *lock(&seen.0),
            [Some((from, !1)), Some((from, !3)), Some((from, !4)), None]
        );
        // A batch without fast packets flushes nothing; without the sink
        // they are queued again.
        let mut plain = [quic.clone()];
        let mut m = [meta(quic.len(), 20)];
        let mut bufs: Vec<IoSliceMut<'_>> = plain.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        assert!(table.filter(&mut bufs, &mut m, 1));
        assert_eq!(lock(&seen.0).len(), 4);
        table.set_sink(None);
        let mut again = [fast(5)];
        let mut m = [meta(again[0].len(), 20)];
        let mut bufs: Vec<IoSliceMut<'_>> = again.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        assert!(!table.filter(&mut bufs, &mut m, 1));
        assert_eq!(rx.try_recv().unwrap().datagram[0], 5);
    }
}
