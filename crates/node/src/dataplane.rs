//! The fast path's IO: application packets from the TUN device (or an
//! adapter's LAN, [`Device`]) are sealed
//! and sent to the peer's endpoint; data packets from the UDP sockets (and
//! the QUIC and TCP legs) are opened and written to the TUN device. What
//! happens to a packet in between is [`crate::datapath`]'s; this module
//! keeps the threads, the batches (TUN reads split from offloaded segments,
//! `recvmmsg` with GRO through quinn-udp, GSO trains), the buffers (allocated
//! once; packets are sealed and opened in place), the QUIC size check, the
//! counters and the bounded channel to the control task, which gets
//! everything that is not a packet of a known tunnel.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cyphonic_platform::tun::Tun;
pub use cyphonic_platform::udp::{canonical, wait_ready, Sockets, Trains};
use cyphonic_proto::data::{DataError, DATA_HEADER_LEN, TAG_LEN};
use cyphonic_proto::ip;
use cyphonic_proto::relay::RELAY_HEADER_LEN;
use cyphonic_proto::LocalIndex;
use cyphonic_transport::{Hub, TrainDest};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::core::{Leg, Path, Transport, TunnelHandle};
use crate::datapath::{
    self, Decapsulated, DropReason, Opened, PathReports, Payload, TunnelTable, HEADROOM,
};
use crate::filter::{Direction, Verdict};
use crate::host::{identity_of_index, IdentityId};

/// Packets per batch: the TUN and socket loops never do more work than this
/// per wake-up.
pub const BATCH: usize = 64;
/// Largest UDP payload we receive (GRO may coalesce up to 64 KiB).
const RX_BUF: usize = 65536;

/// What the data plane hands to the control task.
#[derive(Debug)]
pub enum ToControl {
    /// A non-data datagram (signaling, handshake) from the network.
    Datagram { from: Leg, packet: Vec<u8> },
    /// An application packet of identity `identity` with no tunnel for
    /// its destination.
    Outbound {
        identity: IdentityId,
        packet: Vec<u8>,
    },
    /// An authenticated packet of tunnel `index` came on `path`, which is
    /// not the tunnel's current path.
    PathSeen { index: LocalIndex, path: Path },
    /// A tunnel message (path probe or ack) of tunnel `index`, from `path`.
    TunnelMessage {
        index: LocalIndex,
        path: Path,
        message: Vec<u8>,
    },
    /// The first packet under the keys of tunnel `index`, whose keys were
    /// not confirmed yet (a rekey we answered): the peer has them.
    KeyConfirmed { index: LocalIndex },
}

/// The data plane's packet counters, and its drop counters by reason:
/// every dropped packet is counted once.
#[derive(Debug, Default)]
pub struct DataCounters {
    /// Data packets opened (authenticated) for a tunnel, including those
    /// dropped afterwards for what they carry, as the tunnel's own stats
    /// count them.
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub rx_malformed: AtomicU64,
    pub rx_unknown_index: AtomicU64,
    pub rx_auth_failed: AtomicU64,
    pub rx_replayed: AtomicU64,
    pub rx_bad_inner_source: AtomicU64,
    /// Opened packets for an address the tunnel's identity does not own
    /// (an adapter's general node only gets packets for its own VIPs).
    pub rx_bad_inner_destination: AtomicU64,
    /// Tunnel messages longer than any a node sends.
    pub rx_message_too_long: AtomicU64,
    /// Opened packets the route's access policy does not let in (neither
    /// a rule nor an open flow allows them).
    pub rx_policy_denied: AtomicU64,
    /// Application packets the route's access policy does not let out,
    /// dropped before they are sealed.
    pub tx_policy_denied: AtomicU64,
    /// Packets a rule allowed out whose flow the full flow table could not
    /// remember (their replies will be refused).
    pub policy_flows_full: AtomicU64,
    /// Packets under keys that were retired (older than the session limit).
    pub rx_retired: AtomicU64,
    /// Datagrams that are not data packets and longer than any control
    /// datagram (`MAX_CONTROL_DATAGRAM`): dropped before they are copied.
    pub rx_control_too_long: AtomicU64,
    /// Packets that could not be sealed (see `outbound_loop`), sends the
    /// kernel refused, and failed TUN writes.
    pub tx_errors: AtomicU64,
    pub control_queue_full: AtomicU64,
    /// Packets larger than their path carries (QUIC legs, or the tunnel
    /// MTU when the device's is larger): answered with ICMP Fragmentation
    /// Needed / Packet Too Big on the device.
    pub tx_too_big: AtomicU64,
    /// IPv4 packets without DF larger than their tunnel's MTU, sent in
    /// fragments.
    pub tx_fragmented: AtomicU64,
    /// TCP SYNs whose MSS option was lowered to fit the tunnel's MTU (sent
    /// or received).
    pub tx_mss_clamped: AtomicU64,
    /// Packets a QUIC or TCP leg refused (queue full, no leg).
    pub tx_leg_dropped: AtomicU64,
    /// Packets read from the TUN and sent by a receiving thread right
    /// after it wrote there (`Outbound::turn_around`): replies the kernel
    /// made at once.
    pub tx_turned_around: AtomicU64,
    /// Packets read from the TUN and sent by the receiving thread that
    /// waits on the TUN while traffic is light (Linux).
    pub tx_light: AtomicU64,
    /// Times load handed the TUN to its reader thread (Linux).
    pub tun_to_reader: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct DataCountersSnapshot {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_malformed: u64,
    pub rx_unknown_index: u64,
    pub rx_auth_failed: u64,
    pub rx_replayed: u64,
    pub rx_bad_inner_source: u64,
    pub rx_bad_inner_destination: u64,
    pub rx_message_too_long: u64,
    pub rx_policy_denied: u64,
    pub tx_policy_denied: u64,
    pub policy_flows_full: u64,
    pub rx_retired: u64,
    pub rx_control_too_long: u64,
    pub tx_errors: u64,
    pub control_queue_full: u64,
    pub tx_too_big: u64,
    pub tx_fragmented: u64,
    pub tx_mss_clamped: u64,
    pub tx_leg_dropped: u64,
    pub tx_turned_around: u64,
    pub tx_light: u64,
    pub tun_to_reader: u64,
}

impl DataCounters {
    pub fn snapshot(&self) -> DataCountersSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DataCountersSnapshot {
            rx_packets: l(&self.rx_packets),
            tx_packets: l(&self.tx_packets),
            rx_malformed: l(&self.rx_malformed),
            rx_unknown_index: l(&self.rx_unknown_index),
            rx_auth_failed: l(&self.rx_auth_failed),
            rx_replayed: l(&self.rx_replayed),
            rx_bad_inner_source: l(&self.rx_bad_inner_source),
            rx_bad_inner_destination: l(&self.rx_bad_inner_destination),
            rx_message_too_long: l(&self.rx_message_too_long),
            rx_policy_denied: l(&self.rx_policy_denied),
            tx_policy_denied: l(&self.tx_policy_denied),
            policy_flows_full: l(&self.policy_flows_full),
            rx_retired: l(&self.rx_retired),
            rx_control_too_long: l(&self.rx_control_too_long),
            tx_errors: l(&self.tx_errors),
            control_queue_full: l(&self.control_queue_full),
            tx_too_big: l(&self.tx_too_big),
            tx_fragmented: l(&self.tx_fragmented),
            tx_mss_clamped: l(&self.tx_mss_clamped),
            tx_leg_dropped: l(&self.tx_leg_dropped),
            tx_turned_around: l(&self.tx_turned_around),
            tx_light: l(&self.tx_light),
            tun_to_reader: l(&self.tun_to_reader),
        }
    }

    /// The counter of received datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::Malformed => &self.rx_malformed,
            DropReason::UnknownIndex => &self.rx_unknown_index,
            DropReason::AuthFailed => &self.rx_auth_failed,
            DropReason::Replayed => &self.rx_replayed,
            DropReason::BadInnerSource => &self.rx_bad_inner_source,
            DropReason::MessageTooLong => &self.rx_message_too_long,
            DropReason::PolicyDenied => &self.rx_policy_denied,
            DropReason::Retired => &self.rx_retired,
        }
    }
}

/// The tunnels the fast path knows ([`TunnelTable`]), behind one lock:
/// the packet loops only read it.
#[derive(Default)]
pub struct Tables {
    table: RwLock<TunnelTable>,
}

impl Tables {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, TunnelTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TunnelTable> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// [`TunnelTable::install`].
    pub fn install(&self, id: IdentityId, handle: TunnelHandle) {
        self.write().install(id, handle);
    }

    /// [`TunnelTable::hold`].
    pub fn hold(&self, id: IdentityId, fqdn: &str) {
        self.write().hold(id, fqdn);
    }

    pub fn remove(&self, id: IdentityId, fqdn: &str) {
        self.write().remove(id, fqdn);
    }

    /// Forgets every tunnel of identity `id` (it left the host).
    pub fn remove_identity(&self, id: IdentityId) {
        self.write().remove_identity(id);
    }

    fn by_destination(&self, id: IdentityId, dst: IpAddr) -> Option<Arc<TunnelHandle>> {
        self.read().by_destination(id, dst)
    }

    fn by_index(&self, index: LocalIndex) -> Option<Arc<TunnelHandle>> {
        self.read().by_index(index)
    }
}

/// How often the shells read the kernel's path MTU of each tunnel's path
/// ([`refresh_kernel_mtus`]).
pub const KERNEL_MTU_CHECK: Duration = Duration::from_secs(2);

/// Gives each sending tunnel the path MTU the kernel learned from ICMP for
/// its path's address, less the tunnel's framing, so packets that would be
/// fragmented get a too-big instead (`docs/protocol.md` §7.7). Native UDP
/// legs only; each address is read once.
pub fn refresh_kernel_mtus(tables: &Tables) {
    let mut known: std::collections::HashMap<SocketAddr, u16> = Default::default();
    for tunnel in tables.read().sending() {
        let leg = tunnel.path.leg();
        if leg.transport != Transport::Udp || leg.local != 0 {
            continue;
        }
        let mtu = *known.entry(leg.addr).or_insert_with(|| {
            let ip = if leg.addr.is_ipv6() { 40 } else { 20 };
            let relay = if tunnel.path.is_relay() {
                RELAY_HEADER_LEN
            } else {
                0
            };
            Sockets::path_mtu(leg.addr)
                .and_then(|m| m.checked_sub(ip + 8 + DATA_HEADER_LEN + TAG_LEN + relay))
                .map_or(0, |m| u16::try_from(m).unwrap_or(u16::MAX))
        });
        if tunnel.mtu.kernel() != mtu {
            tunnel.mtu.set_kernel(mtu);
        }
    }
}

/// Where the data plane delivers opened packets: a node's TUN device, an
/// adapter's LAN.
pub trait Device: Send + Sync + 'static {
    /// Writes each `bufs[i][offset..]` (one whole IP packet); `offset` is
    /// at least [`DATA_HEADER_LEN`], room a device may write into.
    fn send_batch(&self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()>;
    /// Whether a packet to `dst` that came through a tunnel of identity
    /// `id` is that identity's to receive.
    fn delivers_to(&self, id: IdentityId, dst: IpAddr) -> bool;
}

/// A node's TUN device as the receiving threads see it: after writing a
/// few packets the host's stack may answer at once (TCP, echo requests) it
/// takes a turn at the sending half ([`Outbound::turn_around`]); other
/// answers come later, through whoever has the TUN.
struct TunDevice {
    outbound: Arc<Outbound>,
}

/// At most this many packets written at once count as a request or a
/// reply rather than a bulk transfer: the writer then sends what the kernel
/// answered at once itself.
const TURNAROUND_MAX: usize = 4;

impl Device for TunDevice {
    fn send_batch(&self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()> {
        let n = bufs.len();
        // Read before the write (coalescing may merge the buffers).
        let answered = n <= TURNAROUND_MAX
            && bufs
                .iter()
                .any(|b| b.get(offset..).is_some_and(ip::may_be_answered_at_once));
        let written = self.outbound.tun.send_batch(bufs, offset);
        if answered {
            self.outbound.turn_around();
        } else if n > TURNAROUND_MAX {
            // Load: the kernel's answers are the TUN reader's to send.
            #[cfg(target_os = "linux")]
            if let Some(h) = &self.outbound.handoff {
                h.to_reader(self.outbound.counters());
            }
        }
        written
    }

    /// The host's stack decides what a node receives.
    fn delivers_to(&self, _id: IdentityId, _dst: IpAddr) -> bool {
        true
    }
}

/// What becomes of a packet larger than its tunnel's MTU.
#[derive(Debug, PartialEq, Eq)]
enum Oversize {
    /// Sealed and sent anyway, the outer datagram fragmented: an IPv6
    /// packet of at most 1280 bytes (IPv6's minimum MTU, which no too-big
    /// may go below) on a path that carries less.
    Send,
    /// IPv4 without DF: fragmented as a router would, each fragment sent.
    Fragment,
    /// Dropped, an ICMP too-big told to its sender.
    TooBig,
}

/// `path_limited`: a path MTU (probed or from ICMP) lowered the tunnel's
/// MTU, rather than a QUIC leg's datagram size, which cannot be fragmented.
fn oversize(packet: &[u8], path_limited: bool) -> Oversize {
    match packet.first().map(|b| b >> 4) {
        Some(6) if path_limited && packet.len() <= IPV6_MIN_MTU => Oversize::Send,
        Some(4) if packet.len() > 7 && packet[6] & 0x40 == 0 => Oversize::Fragment,
        _ => Oversize::TooBig,
    }
}

/// IPv6's minimum link MTU (RFC 8200 §5).
const IPV6_MIN_MTU: usize = 1280;

/// The largest inner packet a QUIC leg carries on a path of this family:
/// the hub's DATAGRAM budget on a 1500-byte link, less our data header and
/// tag and, relayed, the relay header (docs/transports.md).
pub fn quic_inner_limit(ipv6: bool, relayed: bool) -> usize {
    let payload = if ipv6 {
        cyphonic_transport::QUIC_UDP_PAYLOAD_V6
    } else {
        cyphonic_transport::QUIC_UDP_PAYLOAD_V4
    } as usize;
    let relay = if relayed { RELAY_HEADER_LEN } else { 0 };
    payload - QUIC_BUDGET - DATA_HEADER_LEN - TAG_LEN - relay
}

/// Bytes quinn sets aside per DATAGRAM frame in a 1-RTT packet (see
/// `cyphonic-transport`'s crate docs).
const QUIC_BUDGET: usize = 38;

#[cfg(target_os = "linux")]
mod handoff;

/// Tells the data plane's threads to stop: a flag, and (Linux) a bell that
/// wakes those waiting (they wait without timeouts there).
pub struct Stop {
    flag: AtomicBool,
    #[cfg(target_os = "linux")]
    bell: cyphonic_platform::wait::Bell,
    /// Sockets whose spare-port waiter is woken too.
    spares: std::sync::Mutex<Vec<Arc<Sockets>>>,
}

impl Stop {
    pub fn new() -> io::Result<Stop> {
        Ok(Stop {
            flag: AtomicBool::new(false),
            #[cfg(target_os = "linux")]
            bell: cyphonic_platform::wait::Bell::new()?,
            spares: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    pub fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        self.bell.ring();
        for s in self.spares.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            s.spares.wake();
        }
    }

    fn wakes_spares_of(&self, sockets: &Arc<Sockets>) {
        self.spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sockets.clone());
    }
}

/// The running fast path; dropping it stops the threads.
pub struct DataPlane {
    stop: Arc<Stop>,
    /// `None` when run without a TUN device ([`DataPlane::receive_only`]).
    tun: Option<Arc<Tun>>,
    device: Arc<dyn Device>,
    threads: Vec<JoinHandle<()>>,
    tables: Arc<Tables>,
    counters: Arc<DataCounters>,
    control: mpsc::Sender<ToControl>,
}

impl DataPlane {
    /// `hub` carries the tunnels whose path is a QUIC or TCP leg; their
    /// received datagrams come in through [`DataPlane::inbound`].
    pub fn start(
        tun: Arc<Tun>,
        sockets: Arc<Sockets>,
        hub: Option<Arc<Hub>>,
        tables: Arc<Tables>,
        counters: Arc<DataCounters>,
        control: mpsc::Sender<ToControl>,
    ) -> io::Result<DataPlane> {
        let stop = Arc::new(Stop::new()?);
        let mut threads = Vec::new();
        let sender = Sender::new(
            sockets.clone(),
            hub,
            tables.clone(),
            counters.clone(),
            control.clone(),
            usize::from(tun.mtu()),
        );
        // Linux: the first receiving thread has the TUN while traffic is
        // light (`handoff`).
        #[cfg(target_os = "linux")]
        let handoff = {
            let socks: Vec<&std::net::UdpSocket> =
                sockets.v4.iter().chain(sockets.v6.iter()).collect();
            match handoff::Handoff::new(&tun, &socks, &stop) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "the TUN reader keeps the TUN");
                    None
                }
            }
        };
        let outbound = Arc::new(Outbound::new(
            tun.clone(),
            sender,
            #[cfg(target_os = "linux")]
            handoff,
        ));
        {
            let (outbound, stop) = (outbound.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("cy-tun-rx".into())
                    .spawn(move || outbound_loop(&outbound, &stop))?,
            );
        }
        let device: Arc<dyn Device> = Arc::new(TunDevice {
            outbound: outbound.clone(),
        });
        threads.extend(spawn_receivers(
            &sockets,
            &device,
            &tables,
            &counters,
            &control,
            &stop,
            Some(outbound),
        )?);
        Ok(DataPlane {
            stop,
            tun: Some(tun),
            device,
            threads,
            tables,
            counters,
            control,
        })
    }

    /// A receiver for datagrams that arrive on QUIC and TCP legs: the same
    /// checks and the same TUN writes as the UDP sockets' threads.
    pub fn inbound(&self) -> Inbound {
        Inbound::new(
            self.device.clone(),
            &self.tables,
            &self.counters,
            &self.control,
        )
    }

    /// The tunnel port's receivers alone, for a node without a TUN device
    /// (`--no-tun`): signaling reaches the control task; packets that come
    /// through tunnels have nowhere to go and are counted as dropped.
    pub fn receive_only(
        sockets: Arc<Sockets>,
        tables: Arc<Tables>,
        counters: Arc<DataCounters>,
        control: mpsc::Sender<ToControl>,
    ) -> io::Result<DataPlane> {
        let stop = Arc::new(Stop::new()?);
        let device: Arc<dyn Device> = Arc::new(NoDevice);
        let threads =
            spawn_receivers(&sockets, &device, &tables, &counters, &control, &stop, None)?;
        Ok(DataPlane {
            stop,
            tun: None,
            device,
            threads,
            tables,
            counters,
            control,
        })
    }
}

/// The device of a node without a TUN: delivers nothing.
struct NoDevice;

impl Device for NoDevice {
    fn send_batch(&self, _bufs: &mut [Vec<u8>], _offset: usize) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this node runs without a TUN device",
        ))
    }

    fn delivers_to(&self, _id: IdentityId, _dst: IpAddr) -> bool {
        false
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop.set();
        if let Some(tun) = &self.tun {
            tun.shutdown();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One receiving thread per socket of the tunnel port (IPv4, IPv6), each
/// delivering to `device` until `stop` is set. `outbound`: the node's
/// sending half, whose TUN the first of them waits on while traffic is
/// light (Linux).
pub fn spawn_receivers(
    sockets: &Arc<Sockets>,
    device: &Arc<dyn Device>,
    tables: &Arc<Tables>,
    counters: &Arc<DataCounters>,
    control: &mpsc::Sender<ToControl>,
    stop: &Arc<Stop>,
    outbound: Option<Arc<Outbound>>,
) -> io::Result<Vec<JoinHandle<()>>> {
    stop.wakes_spares_of(sockets);
    // The receiving threads' slots in the TUN's handoff: in this order.
    let mut slot = 0;
    let mut threads = Vec::new();
    {
        let inbound = Inbound::new(device.clone(), tables, counters, control);
        let (sockets, stop) = (sockets.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("cy-spare-rx".into())
                .spawn(move || spare_loop(&sockets, inbound, &stop))?,
        );
    }
    for v6 in [false, true] {
        let has = if v6 {
            sockets.v6.is_some()
        } else {
            sockets.v4.is_some()
        };
        if !has {
            continue;
        }
        let inbound = Inbound::new(device.clone(), tables, counters, control);
        let (sockets, stop, outbound) = (sockets.clone(), stop.clone(), outbound.clone());
        let tun = outbound.map(|o| (o, slot));
        slot += 1;
        threads.push(
            std::thread::Builder::new()
                .name(if v6 { "cy-udp6-rx" } else { "cy-udp4-rx" }.into())
                .spawn(move || {
                    let tun = tun.as_ref().map(|(o, slot)| (&**o, *slot));
                    inbound_loop(v6, &sockets, inbound, &stop, tun)
                })?,
        );
    }
    Ok(threads)
}

/// The sending half of a node: its TUN device, and the [`Sender`] with its
/// buffers behind a lock. The TUN reader thread holds the lock only while
/// it reads and sends, never while it waits; a receiving thread that just
/// wrote to the TUN may take a turn in between ([`Outbound::turn_around`]).
/// Whoever holds the lock reads and sends a batch, so packets leave in the
/// order the kernel queued them.
pub struct Outbound {
    tun: Arc<Tun>,
    state: std::sync::Mutex<OutboundState>,
    counters: Arc<DataCounters>,
    /// Which thread waits on the TUN (Linux); `None`: the TUN reader.
    #[cfg(target_os = "linux")]
    handoff: Option<handoff::Handoff>,
}

struct OutboundState {
    sender: Sender,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    scratch: Vec<u8>,
}

impl Outbound {
    fn new(
        tun: Arc<Tun>,
        sender: Sender,
        #[cfg(target_os = "linux")] handoff: Option<handoff::Handoff>,
    ) -> Self {
        let slot = HEADROOM + sender.mtu + TAG_LEN;
        Outbound {
            counters: sender.counters.clone(),
            tun,
            #[cfg(target_os = "linux")]
            handoff,
            state: std::sync::Mutex::new(OutboundState {
                sender,
                bufs: (0..BATCH).map(|_| vec![0u8; slot]).collect(),
                sizes: vec![0; BATCH],
                scratch: vec![0u8; 65536 + 64],
            }),
        }
    }

    #[cfg(target_os = "linux")]
    fn counters(&self) -> &DataCounters {
        &self.counters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboundState> {
        // A panic while sending leaves buffers to be overwritten anyway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads what the TUN holds, without waiting, and sends it: how many
    /// packets, or [`io::ErrorKind::WouldBlock`] when it held none.
    fn drain(&self, st: &mut OutboundState) -> io::Result<usize> {
        let slot = HEADROOM + st.sender.mtu + TAG_LEN;
        for b in st.bufs.iter_mut() {
            b.resize(slot, 0);
        }
        let OutboundState {
            sender,
            bufs,
            sizes,
            scratch,
        } = st;
        let n = self.tun.try_recv_batch(scratch, bufs, sizes, HEADROOM)?;
        for (buf, &size) in bufs.iter_mut().zip(sizes.iter()).take(n) {
            sender.packet(0, buf, size);
        }
        sender.flush();
        if !sender.too_big.is_empty() {
            if let Err(e) = self.tun.send_batch(&mut sender.too_big, DATA_HEADER_LEN) {
                tracing::debug!(error = %e, "TUN write of ICMP too-big failed");
            }
            sender.too_big.clear();
        }
        Ok(n)
    }

    /// Sends what the kernel queued on the TUN in answer to packets just
    /// written (an ICMP echo reply, a TCP ACK: the kernel makes them
    /// before the write returns), on the calling thread, instead of
    /// waking the TUN reader for them: one thread wake less per request
    /// and reply. Does nothing while the TUN reader is at work.
    pub fn turn_around(&self) {
        let Ok(mut st) = self.state.try_lock() else {
            return;
        };
        match self.drain(&mut st) {
            Ok(n) => {
                self.counters
                    .tx_turned_around
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(error = %e, "TUN read after a write failed"),
        }
    }
}

/// TUN -> [`Sender`]: reads and sends until the TUN holds nothing, then
/// waits for it without the lock (on Linux, while it has the TUN:
/// [`handoff::reader_loop`]).
fn outbound_loop(out: &Outbound, stop: &Stop) {
    #[cfg(target_os = "linux")]
    if let Some(h) = &out.handoff {
        return handoff::reader_loop(out, h, stop);
    }
    while !stop.is_set() {
        let drained = out.drain(&mut out.lock());
        let failed = match drained {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.tun.wait_readable().err(),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            if stop.is_set() {
                tracing::debug!(error = %e, "TUN reader stopping");
                return;
            }
            tracing::warn!(error = %e, "TUN read failed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Application packets -> seal -> UDP (or a QUIC / TCP leg): the sending
/// half of the fast path, whatever device the packets come from. Packets
/// to one UDP endpoint that fill whole segments go out in one GSO send.
pub struct Sender {
    sockets: Arc<Sockets>,
    hub: Option<Arc<Hub>>,
    tables: Arc<Tables>,
    counters: Arc<DataCounters>,
    control: mpsc::Sender<ToControl>,
    /// The tunnel MTU: larger packets get a too-big.
    pub mtu: usize,
    /// Sealed packets on their way, in GSO trains.
    trains: Trains<TrainDest>,
    /// ICMP too-big answers for the device, each after
    /// [`DATA_HEADER_LEN`] bytes of headroom.
    pub too_big: Vec<Vec<u8>>,
}

impl Sender {
    pub fn new(
        sockets: Arc<Sockets>,
        hub: Option<Arc<Hub>>,
        tables: Arc<Tables>,
        counters: Arc<DataCounters>,
        control: mpsc::Sender<ToControl>,
        mtu: usize,
    ) -> Sender {
        Sender {
            sockets,
            hub,
            tables,
            counters,
            control,
            mtu,
            trains: Trains::with_capacity((HEADROOM + mtu + TAG_LEN) * BATCH),
            too_big: Vec::new(),
        }
    }

    /// Sends the `len`-byte packet of identity `id` at `buf[HEADROOM..]`
    /// (`buf` holds [`TAG_LEN`] more bytes after it), sealing it in place,
    /// or hands it to the control task when its tunnel is not up.
    pub fn packet(&mut self, id: IdentityId, buf: &mut [u8], len: usize) {
        let counters = &*self.counters;
        let packet = &buf[HEADROOM..HEADROOM + len];
        let Some(dst) = ip::inner_destination(packet) else {
            return;
        };
        let Some(tunnel) = self.tables.by_destination(id, dst) else {
            let msg = ToControl::Outbound {
                identity: id,
                packet: packet.to_vec(),
            };
            if self.control.try_send(msg).is_err() {
                counters.control_queue_full.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        if !tunnel.filter.is_open() {
            match tunnel.filter.check(Direction::Out, packet, Instant::now()) {
                Verdict::Pass => {}
                Verdict::PassUntracked => {
                    counters.policy_flows_full.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Deny => {
                    counters.tx_policy_denied.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let leg = tunnel.path.leg();
        let mut limit = self.mtu;
        if leg.transport == Transport::Quic {
            // A QUIC DATAGRAM frame must fit one packet.
            limit = limit.min(quic_inner_limit(leg.addr.is_ipv6(), tunnel.path.is_relay()));
        }
        let path_limit = tunnel.mtu.limit();
        if let Some(m) = path_limit {
            limit = limit.min(m);
        }
        // TCP's handshake learns the tunnel's size (a backstop for senders
        // that never see a too-big).
        if ip::clamp_tcp_mss(&mut buf[HEADROOM..HEADROOM + len], limit) {
            counters.tx_mss_clamped.fetch_add(1, Ordering::Relaxed);
        }
        let packet = &buf[HEADROOM..HEADROOM + len];
        let mut fragmenting = false;
        if len > limit {
            let udp = leg.transport == Transport::Udp;
            match oversize(packet, path_limit.is_some() && udp) {
                Oversize::Send => fragmenting = true,
                Oversize::Fragment => {
                    if let Some(fragments) = ip::fragment_ipv4(packet, limit) {
                        self.counters.tx_fragmented.fetch_add(1, Ordering::Relaxed);
                        let mut scratch = vec![0u8; HEADROOM + limit + TAG_LEN];
                        for f in fragments {
                            scratch[HEADROOM..HEADROOM + f.len()].copy_from_slice(&f);
                            self.packet(id, &mut scratch, f.len());
                        }
                    } else {
                        self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Oversize::TooBig => {
                    // Tell the sender the path's size (its TCP lowers its
                    // MSS).
                    counters.tx_too_big.fetch_add(1, Ordering::Relaxed);
                    if let Some(icmp) = ip::packet_too_big(packet, limit as u16) {
                        let mut b = vec![0u8; DATA_HEADER_LEN];
                        b.extend_from_slice(&icmp);
                        self.too_big.push(b);
                    }
                    return;
                }
            }
        }
        let wire = match datapath::encapsulate(&tunnel, tunnel.path, buf, len) {
            Ok(range) => range,
            Err(DataError::CounterLimit | DataError::Retired) => {
                // This tunnel's send key has sealed all it may, or is too
                // old: the core holds the packet until the new keys of the
                // rekey it started are up.
                let msg = ToControl::Outbound {
                    identity: id,
                    packet: buf[HEADROOM..HEADROOM + len].to_vec(),
                };
                if self.control.try_send(msg).is_err() {
                    counters.control_queue_full.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(e) => {
                counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(error = %e, len, "cannot seal");
                return;
            }
        };
        counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        if leg.local != 0 {
            // From a spare port (birthday punching): one datagram at a time.
            self.flush();
            let sent =
                self.sockets.spares.get_or_bind(leg.local).and_then(|s| {
                    cyphonic_platform::udp::send_from(&s, &buf[wire], leg.addr, None)
                });
            if let Err(e) = sent {
                self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, dst = %leg.addr, "send from a spare port failed");
            }
            return;
        }
        if leg.transport == Transport::Quic {
            // The leg's fast path, once the peer offered it: the packet
            // goes beside the QUIC connection, in trains as over UDP.
            if let Some(route) = self.hub.as_ref().and_then(|h| h.fast_route(leg.addr)) {
                self.push(TrainDest::Fast(route), &buf[wire]);
                return;
            }
        }
        if leg.transport != Transport::Udp {
            let datagram = buf[wire].to_vec();
            let sent = match &self.hub {
                Some(hub) => hub.send(leg.transport, leg.addr, datagram).is_ok(),
                None => false,
            };
            if !sent {
                counters.tx_leg_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let endpoint = leg.addr;
        if fragmenting {
            self.flush();
            if let Err(e) = self.sockets.send_fragmenting(&buf[wire], endpoint) {
                self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, dst = %endpoint, "fragmenting send failed");
            }
            return;
        }
        self.push(TrainDest::Udp(endpoint), &buf[wire]);
    }

    /// Adds `packet` (sealed) to the train to `dest`.
    fn push(&mut self, dest: TrainDest, packet: &[u8]) {
        let (sockets, counters) = (&self.sockets, &self.counters);
        self.trains.push(dest, packet, |dest, train, seg| {
            send_train(sockets, counters, dest, train, seg)
        });
    }

    /// Sends the train gathered so far.
    pub fn flush(&mut self) {
        let (sockets, counters) = (&self.sockets, &self.counters);
        self.trains
            .flush(|dest, train, seg| send_train(sockets, counters, dest, train, seg));
    }
}

/// Sends one train of sealed packets.
fn send_train(
    sockets: &Sockets,
    counters: &DataCounters,
    dest: &TrainDest,
    train: &[u8],
    seg: usize,
) {
    if let Err(e) = dest.send(sockets, train, seg) {
        counters.tx_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, ?dest, "send failed");
    }
}

/// How a receiving thread waits for its socket. Linux: in a wait set with
/// the stop bell, no timeout (and the TUN, while traffic is light and this
/// thread has it); elsewhere: `poll` for a while, then a look at the stop
/// flag.
enum Waiter<'a> {
    #[cfg(target_os = "linux")]
    Set(cyphonic_platform::wait::WaitSet),
    #[cfg(target_os = "linux")]
    Tun(&'a Outbound, &'a handoff::Handoff, usize),
    Poll(std::marker::PhantomData<&'a ()>),
}

impl<'a> Waiter<'a> {
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    fn new(
        sock: &std::net::UdpSocket,
        stop: &Stop,
        tun: Option<(&'a Outbound, usize)>,
    ) -> Waiter<'a> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            if let Some((out, h, slot)) =
                tun.and_then(|(o, slot)| Some((o, o.handoff.as_ref()?, slot)))
            {
                if h.set(slot).is_some() {
                    return Waiter::Tun(out, h, slot);
                }
            }
            let set = cyphonic_platform::wait::WaitSet::new().and_then(|set| {
                set.add(sock.as_raw_fd(), handoff::TOKEN_SOCKET, false)?;
                set.add(stop.bell.as_raw_fd(), handoff::TOKEN_STOP, false)?;
                Ok(set)
            });
            match set {
                Ok(set) => return Waiter::Set(set),
                Err(e) => tracing::warn!(error = %e, "no wait set; polling"),
            }
        }
        Waiter::Poll(std::marker::PhantomData)
    }

    /// Datagrams came in: the TUN goes with the traffic.
    fn got_datagrams(&self) {
        #[cfg(target_os = "linux")]
        if let Waiter::Tun(_, h, slot) = self {
            h.take(*slot);
        }
    }

    /// For the thread that has the TUN while its socket keeps it busy:
    /// serves the TUN if it is readable (datagrams that write nothing to
    /// the TUN, a flood say, must not starve what the node sends).
    fn look_at_tun(&self) {
        #[cfg(target_os = "linux")]
        if let Waiter::Tun(out, h, slot) = self {
            let mut ready = [0u64; 4];
            if let Some(Ok(n)) = h
                .set(*slot)
                .map(|s| s.wait(&mut ready, Some(Duration::ZERO)))
            {
                if ready[..n].contains(&handoff::TOKEN_TUN) {
                    h.serve(*slot, out);
                }
            }
        }
    }

    /// Until `sock` is readable or the data plane stops (Linux; elsewhere
    /// a while at most); the thread that has the TUN serves it meanwhile,
    /// without a look at the socket in between.
    fn wait(&self, sock: &std::net::UdpSocket, stop: &Stop) {
        while !self.wait_once(sock) && !stop.is_set() {}
    }

    /// One wait: whether the socket may be readable now (or the wait
    /// ended for another reason than the TUN).
    fn wait_once(&self, sock: &std::net::UdpSocket) -> bool {
        let waited: io::Result<bool> = match self {
            #[cfg(target_os = "linux")]
            Waiter::Set(set) => set.wait(&mut [0u64; 4], None).map(|_| true),
            #[cfg(target_os = "linux")]
            Waiter::Tun(out, h, slot) => {
                let mut ready = [0u64; 4];
                match h.set(*slot).map(|s| s.wait(&mut ready, None)) {
                    Some(Ok(n)) => {
                        let ready = &ready[..n];
                        if ready.contains(&handoff::TOKEN_TUN) {
                            h.serve(*slot, out);
                        }
                        Ok(ready.iter().any(|t| *t != handoff::TOKEN_TUN))
                    }
                    Some(Err(e)) => Err(e),
                    None => Ok(true),
                }
            }
            Waiter::Poll(_) => {
                // An empty queue waits at most this long, to notice
                // shutdown.
                wait_ready(sock, false, Duration::from_millis(250));
                Ok(true)
            }
        };
        waited.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "wait failed");
            std::thread::sleep(Duration::from_millis(10));
            true
        })
    }
}

/// UDP -> open -> checks -> TUN. `tun`: the sending half whose TUN this
/// thread may wait on, and serve, while traffic is light (Linux), and the
/// thread's slot in its handoff.
fn inbound_loop(
    v6: bool,
    sockets: &Sockets,
    mut inbound: Inbound,
    stop: &Stop,
    tun: Option<(&Outbound, usize)>,
) {
    let Some(sock) = (if v6 {
        sockets.v6.as_ref()
    } else {
        sockets.v4.as_ref()
    }) else {
        return;
    };
    let waiter = Waiter::new(sock, stop, tun);
    const N_BUFS: usize = 8;
    let mut rx: [Vec<u8>; N_BUFS] = std::array::from_fn(|_| vec![0u8; RX_BUF]);
    let mut meta = [cyphonic_platform::udp::RecvMeta::default(); N_BUFS];
    let mut busy = 0u32;
    while !stop.is_set() {
        // Read before waiting: under load the next datagrams are queued.
        let n = match sockets.try_recv_batch(sock, &mut rx, &mut meta) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                0
            }
        };
        if n == 0 {
            busy = 0;
            waiter.wait(sock, stop);
            continue;
        }
        waiter.got_datagrams();
        busy = busy.wrapping_add(1);
        if busy.is_multiple_of(8) {
            waiter.look_at_tun();
        }
        for (buf, m) in rx.iter_mut().zip(meta.iter()).take(n) {
            let from = Leg::udp(canonical(m.addr));
            let stride = m.stride.max(1);
            let mut off = 0;
            while off < m.len {
                let end = (off + stride).min(m.len);
                inbound.datagram(from, &mut buf[off..end]);
                off = end;
            }
        }
        inbound.flush();
        if n < N_BUFS {
            // The socket held less than a batch, so it held no more: wait
            // (done at once if more came) rather than read it empty.
            busy = 0;
            waiter.wait(sock, stop);
        }
    }
}

/// Spare ports (birthday punching) -> open -> checks -> TUN: waits on
/// every open spare port at once, and for the set to change.
fn spare_loop(sockets: &Sockets, mut inbound: Inbound, stop: &Stop) {
    let mut buf = vec![0u8; RX_BUF];
    let (mut generation, mut open) = sockets.spares.snapshot();
    while !stop.is_set() {
        let ready = sockets.spares.wait(&open, None);
        for i in ready {
            let (k, sock) = &open[i];
            for _ in 0..BATCH {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        inbound.datagram(Leg::spare(*k, canonical(from)), &mut buf[..n]);
                    }
                    Err(_) => break,
                }
            }
        }
        inbound.flush();
        if sockets.spares.generation() != generation {
            (generation, open) = sockets.spares.snapshot();
        }
    }
}

/// Opens received datagrams of known tunnels and writes their packets to
/// the TUN device in batches; hands everything else to the control task.
/// One per receiving thread or task.
pub struct Inbound {
    device: Arc<dyn Device>,
    tables: Arc<Tables>,
    counters: Arc<DataCounters>,
    control: mpsc::Sender<ToControl>,
    reports: PathReports,
    out: Vec<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl Inbound {
    pub fn new(
        device: Arc<dyn Device>,
        tables: &Arc<Tables>,
        counters: &Arc<DataCounters>,
        control: &mpsc::Sender<ToControl>,
    ) -> Self {
        Inbound {
            device,
            tables: tables.clone(),
            counters: counters.clone(),
            control: control.clone(),
            reports: PathReports::default(),
            out: Vec::with_capacity(BATCH),
            spare: Vec::new(),
        }
    }

    /// One datagram from `from`; its packet is written by the next
    /// [`Inbound::flush`] (or sooner, when a batch is full).
    pub fn datagram(&mut self, from: Leg, datagram: &mut [u8]) {
        let tables = &*self.tables;
        match datapath::decapsulate(datagram, from, Instant::now, |index| tables.by_index(index)) {
            Decapsulated::Control if datagram.len() > datapath::MAX_CONTROL_DATAGRAM => {
                self.counters
                    .rx_control_too_long
                    .fetch_add(1, Ordering::Relaxed);
            }
            Decapsulated::Control => {
                let msg = ToControl::Datagram {
                    from,
                    packet: datagram.to_vec(),
                };
                self.hand_over(msg);
            }
            Decapsulated::Opened(opened) => self.opened(opened, datagram),
            Decapsulated::Dropped(reason) => {
                if matches!(
                    reason,
                    DropReason::BadInnerSource
                        | DropReason::MessageTooLong
                        | DropReason::PolicyDenied
                ) {
                    // Opened (authenticated) before what it carries was
                    // refused: received, as the tunnel's stats count it.
                    self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                }
                self.counters
                    .dropped(reason)
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A packet of one of our tunnels, opened in place in `datagram`.
    fn opened(&mut self, opened: Opened, datagram: &[u8]) {
        self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
        let (index, path) = (opened.local_index(), opened.path);
        if opened.confirms_keys() {
            self.hand_over(ToControl::KeyConfirmed { index });
        }
        if opened.path_changed() && self.reports.allow(index, path, Instant::now()) {
            let _ = self.control.try_send(ToControl::PathSeen { index, path });
        }
        let plain = &datagram[opened.plain];
        match opened.payload {
            Payload::Keepalive => {}
            Payload::Message => self.hand_over(ToControl::TunnelMessage {
                index,
                path,
                message: plain.to_vec(),
            }),
            Payload::Packet => {
                let to_identity = ip::inner_destination(plain)
                    .is_some_and(|dst| self.device.delivers_to(identity_of_index(index), dst));
                if !to_identity {
                    self.counters
                        .rx_bad_inner_destination
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mut b = self.spare.pop().unwrap_or_default();
                b.clear();
                b.resize(DATA_HEADER_LEN, 0);
                b.extend_from_slice(plain);
                if let Some(limit) = opened.tunnel.mtu.limit() {
                    // What the peer may send us is its business; what we
                    // send is bounded by our path.
                    if ip::clamp_tcp_mss(&mut b[DATA_HEADER_LEN..], limit) {
                        self.counters.tx_mss_clamped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.out.push(b);
                if self.out.len() == BATCH {
                    self.flush();
                }
            }
        }
    }

    fn hand_over(&self, msg: ToControl) {
        if self.control.try_send(msg).is_err() {
            self.counters
                .control_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the packets gathered so far to the device.
    pub fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if let Err(e) = self.device.send_batch(&mut self.out, DATA_HEADER_LEN) {
            self.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "device write failed");
        }
        self.spare.append(&mut self.out);
    }
}

/// Fast packets of QUIC legs (`docs/protocol.md` §11.6), opened where
/// the QUIC endpoint reads them and written to the device once per
/// receive batch: no copy, queue or task hop per packet
/// ([`cyphonic_transport::Hub::set_fast_sink`]).
pub struct LegSink(std::sync::Mutex<Inbound>);

impl LegSink {
    pub fn new(inbound: Inbound) -> Arc<LegSink> {
        Arc::new(LegSink(std::sync::Mutex::new(inbound)))
    }

    fn inbound(&self) -> std::sync::MutexGuard<'_, Inbound> {
        // A panic mid-packet leaves buffers to be overwritten anyway.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl cyphonic_transport::FastSink for LegSink {
    fn packet(&self, from: SocketAddr, datagram: &mut [u8]) {
        self.inbound()
            .datagram(Leg::new(Transport::Quic, from), datagram);
    }

    fn flush(&self) {
        self.inbound().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoDevice;

    impl Device for NoDevice {
        fn send_batch(&self, _bufs: &mut [Vec<u8>], _offset: usize) -> io::Result<()> {
            Ok(())
        }
        fn delivers_to(&self, _id: IdentityId, _dst: IpAddr) -> bool {
            false
        }
    }

    #[test]
    fn packets_over_the_tunnel_mtu_are_fragmented_sent_or_refused_by_kind() {
        let mut v4 = vec![0u8; 1300];
        v4[0] = 0x45;
        v4[6] = 0x40; // DF
        assert_eq!(oversize(&v4, true), Oversize::TooBig);
        v4[6] = 0;
        assert_eq!(oversize(&v4, true), Oversize::Fragment);
        assert_eq!(oversize(&v4, false), Oversize::Fragment);
        let mut v6 = vec![0u8; 1280];
        v6[0] = 0x60;
        // IPv6 at its minimum MTU goes whatever the path: fragmented
        // outside. Not on a QUIC leg (not path-limited), and never larger.
        assert_eq!(oversize(&v6, true), Oversize::Send);
        assert_eq!(oversize(&v6, false), Oversize::TooBig);
        v6.push(0);
        assert_eq!(oversize(&v6, true), Oversize::TooBig);
        assert_eq!(oversize(&[], true), Oversize::TooBig);
    }

    #[test]
    fn oversized_control_datagrams_are_dropped_before_they_are_copied() {
        let tables = Arc::new(Tables::default());
        let counters = Arc::new(DataCounters::default());
        let (tx, mut rx) = mpsc::channel(8);
        let mut inbound = Inbound::new(Arc::new(NoDevice), &tables, &counters, &tx);
        let from = Leg::udp("192.0.2.9:4501".parse().expect("addr"));
        // A signaling-sized datagram (type 1) goes to the core ...
        let mut fits = vec![1u8; datapath::MAX_CONTROL_DATAGRAM];
        inbound.datagram(from, &mut fits);
        assert!(
            matches!(rx.try_recv(), Ok(ToControl::Datagram { packet, .. }) if packet.len() == fits.len())
        );
        // ... a 64 KiB one does not, and is counted.
        let mut huge = vec![1u8; 65_000];
        inbound.datagram(from, &mut huge);
        assert!(rx.try_recv().is_err());
        assert_eq!(counters.snapshot().rx_control_too_long, 1);
    }
}
