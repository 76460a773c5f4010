//! The one datapath: what happens to a packet between the TUN device and
//! the wire, as pure functions on caller-owned buffers. The data-plane
//! threads, the node core (its keepalives, probes and queued packets) and
//! the simulation harness all seal and open through here, so there is one
//! receive path and one send path to get right.
//!
//! Sending: [`encapsulate`] seals the plaintext in place behind room for
//! the headers ([`HEADROOM`]) and frames it for the path (the relay header
//! for a TRS). Receiving: [`decapsulate`] takes a datagram as it came on a
//! leg and classifies it: control traffic for the core, a packet for the
//! TUN device, a keepalive, a tunnel message, or a drop with its reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_proto::data::{data_receiver_index, DataError, DATA_HEADER_LEN, TAG_LEN, TYPE_DATA};
use cyphonic_proto::relay::{self, RELAY_HEADER_LEN};
use cyphonic_proto::LocalIndex;
use cyphonic_proto::{ip, punch};

use crate::core::{Leg, Path, TunnelHandle};
use crate::filter::{Direction, Verdict};
use crate::host::IdentityId;

/// Room in front of a plaintext for the relay header, then our data
/// header, so both are written in place.
pub const HEADROOM: usize = RELAY_HEADER_LEN + DATA_HEADER_LEN;

/// The longest tunnel message (a plaintext that is not an IP packet) the
/// core is handed; longer ones are dropped.
pub const MAX_TUNNEL_MESSAGE: usize = 64;

/// The longest datagram that is not a data packet the core is handed: a
/// signaling packet or a handshake, in Relay Data at most. Longer ones are
/// nothing we know and are dropped before they are copied.
pub const MAX_CONTROL_DATAGRAM: usize = RELAY_HEADER_LEN
    + if cyphonic_proto::signal::MAX_SIGNAL_PACKET > cyphonic_proto::handshake::MAX_HANDSHAKE_LEN {
        cyphonic_proto::signal::MAX_SIGNAL_PACKET
    } else {
        cyphonic_proto::handshake::MAX_HANDSHAKE_LEN
    };

/// Seals the `len` plaintext bytes at `buf[HEADROOM..]` for `tunnel` and
/// frames them for `path`; returns where the datagram lies in `buf`. `buf`
/// must hold `HEADROOM + len + TAG_LEN` bytes. Counts the packet in the
/// tunnel's stats.
pub fn encapsulate(
    tunnel: &TunnelHandle,
    path: Path,
    buf: &mut [u8],
    len: usize,
) -> Result<Range<usize>, DataError> {
    let sealed = tunnel
        .send
        .seal_in_place(&mut buf[RELAY_HEADER_LEN..], len)?;
    tunnel.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
    tunnel
        .stats
        .tx_bytes
        .fetch_add(len as u64, Ordering::Relaxed);
    Ok(match path {
        Path::Direct(_) => RELAY_HEADER_LEN..RELAY_HEADER_LEN + sealed,
        Path::Relay { relay_id, .. } => {
            relay::write_data_header(&mut buf[..RELAY_HEADER_LEN], relay_id);
            0..RELAY_HEADER_LEN + sealed
        }
    })
}

/// [`encapsulate`] into a fresh buffer: for the control path (keepalives,
/// probes, packets held during establishment), not the fast path.
pub fn encapsulate_vec(
    tunnel: &TunnelHandle,
    path: Path,
    packet: &[u8],
) -> Result<Vec<u8>, DataError> {
    let mut buf = vec![0u8; HEADROOM + packet.len() + TAG_LEN];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    let range = encapsulate(tunnel, path, &mut buf, packet.len())?;
    buf.truncate(range.end);
    buf.drain(..range.start);
    Ok(buf)
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Too short or badly framed for a data packet.
    Malformed,
    /// No tunnel has the receiver index.
    UnknownIndex,
    /// The AEAD tag did not verify.
    AuthFailed,
    /// The counter was seen already or is too old for the window.
    Replayed,
    /// The inner source is not the peer's VIP (a peer may only speak for
    /// its own addresses).
    BadInnerSource,
    /// A tunnel message longer than any we send.
    MessageTooLong,
    /// The route's access policy does not let it in ([`crate::filter`]).
    PolicyDenied,
    /// Under keys retired for their age.
    Retired,
}

/// What an opened data packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Empty: a keepalive.
    Keepalive,
    /// A tunnel message (path probe or ack) for the core.
    Message,
    /// An IP packet from the peer's VIP, for the TUN device.
    Packet,
}

/// A data packet opened for one of our tunnels.
#[derive(Debug)]
pub struct Opened {
    pub tunnel: Arc<TunnelHandle>,
    /// The path it came by (the TRS and relay session, when relayed).
    pub path: Path,
    /// Where the plaintext lies in the datagram.
    pub plain: Range<usize>,
    pub payload: Payload,
}

impl Opened {
    /// It came on another path than the tunnel's current one: the core
    /// wants to know ([`crate::core::Node::handle_path_seen`]).
    pub fn path_changed(&self) -> bool {
        self.path != self.tunnel.path
    }

    pub fn local_index(&self) -> LocalIndex {
        self.tunnel.recv.local_index()
    }

    /// The first packet opened under keys that were not confirmed: they
    /// are now (true once per tunnel), and the core wants to know
    /// ([`crate::core::Node::handle_key_confirmed`]).
    pub fn confirms_keys(&self) -> bool {
        !self.tunnel.confirmed.load(Ordering::Relaxed)
            && !self.tunnel.confirmed.swap(true, Ordering::Relaxed)
    }
}

/// The tunnels the fast path knows, by identity and destination VIP
/// (sending) and by our receiver index (receiving; an index names its
/// identity, [`crate::host`]). A node has one identity (0); an adapter one
/// per general node, and two of them may have tunnels to the same peer.
/// The data plane keeps one behind a lock; the simulation uses it as is.
#[derive(Default)]
pub struct TunnelTable {
    tx: HashMap<(IdentityId, IpAddr), Arc<TunnelHandle>>,
    rx: HashMap<LocalIndex, (IdentityId, Arc<TunnelHandle>)>,
}

impl TunnelTable {
    /// Installs a tunnel of identity `id`. The peer's current receive key
    /// stays valid (for packets already in flight under it); older ones
    /// are removed. Keys not confirmed yet (a responder's, of a rekey or
    /// a first handshake) only receive: sending moves to them once the
    /// peer has used them ([`Opened::confirms_keys`], then the core
    /// installs them again); until then the peer's older tunnel, if any,
    /// sends.
    pub fn install(&mut self, id: IdentityId, handle: TunnelHandle) {
        let handle = Arc::new(handle);
        let index = handle.recv.local_index();
        let current = self.tx.get(&(id, IpAddr::V4(handle.vip4))).cloned();
        let keep = current.as_ref().map(|h| h.recv.local_index());
        self.rx
            .retain(|i, (owner, h)| *owner != id || h.fqdn != handle.fqdn || Some(*i) == keep);
        self.rx.insert(index, (id, handle.clone()));
        if !handle.confirmed.load(Ordering::Relaxed) {
            return;
        }
        self.tx
            .insert((id, IpAddr::V4(handle.vip4)), handle.clone());
        self.tx.insert((id, IpAddr::V6(handle.vip6)), handle);
    }

    /// Stops sending from `id` to `fqdn` (its packets go to the control
    /// task), while its packets are still received.
    pub fn hold(&mut self, id: IdentityId, fqdn: &str) {
        self.tx
            .retain(|(owner, _), h| *owner != id || h.fqdn != fqdn);
    }

    pub fn remove(&mut self, id: IdentityId, fqdn: &str) {
        self.rx
            .retain(|_, (owner, h)| *owner != id || h.fqdn != fqdn);
        self.hold(id, fqdn);
    }

    /// Forgets every tunnel of identity `id`.
    pub fn remove_identity(&mut self, id: IdentityId) {
        self.rx.retain(|_, (owner, _)| *owner != id);
        self.tx.retain(|(owner, _), _| *owner != id);
    }

    pub fn by_destination(&self, id: IdentityId, dst: IpAddr) -> Option<Arc<TunnelHandle>> {
        self.tx.get(&(id, dst)).cloned()
    }

    pub fn by_index(&self, index: LocalIndex) -> Option<Arc<TunnelHandle>> {
        self.rx.get(&index).map(|(_, h)| h.clone())
    }

    /// The tunnels that send, once each.
    pub fn sending(&self) -> Vec<Arc<TunnelHandle>> {
        let mut v: Vec<Arc<TunnelHandle>> = self.tx.values().cloned().collect();
        v.sort_by_key(|h| Arc::as_ptr(h) as usize);
        v.dedup_by_key(|h| Arc::as_ptr(h) as usize);
        v
    }

    /// Our receiver indexes that open packets of identity `id`.
    pub fn receiving(&self, id: IdentityId) -> Vec<LocalIndex> {
        let mut v: Vec<LocalIndex> = self
            .rx
            .iter()
            .filter(|(_, (owner, _))| *owner == id)
            .map(|(i, _)| *i)
            .collect();
        v.sort();
        v
    }
}

/// A received datagram, classified.
#[derive(Debug)]
pub enum Decapsulated {
    /// Not a data packet of ours (signaling, handshakes, relay binds,
    /// punches): the core's ([`crate::core::Node::handle_datagram`]), as
    /// it came.
    Control,
    Opened(Opened),
    Dropped(DropReason),
}

/// Opens `datagram` (as it came from `from`) in place if it is a data
/// packet, bare or inside Relay Data, of a tunnel `lookup` finds by our
/// receiver index, and checks its inner packet against the route's
/// policy (`now` is read only for a route with a filter). Counts what it
/// opens in the tunnel's stats.
pub fn decapsulate(
    datagram: &mut [u8],
    from: Leg,
    now: impl FnOnce() -> Instant,
    lookup: impl FnOnce(LocalIndex) -> Option<Arc<TunnelHandle>>,
) -> Decapsulated {
    // Relay Data carrying a data packet is ours to open; the relay session
    // and TRS make its path.
    let (path, offset) = match relay::parse_data(datagram) {
        Ok(relay_id) if datagram.get(RELAY_HEADER_LEN) == Some(&TYPE_DATA) => (
            Path::Relay {
                server: from,
                relay_id,
            },
            RELAY_HEADER_LEN,
        ),
        _ => (Path::Direct(from), 0),
    };
    let data = &mut datagram[offset..];
    if data.first() != Some(&TYPE_DATA) {
        return Decapsulated::Control;
    }
    let Some(index) = data_receiver_index(data) else {
        return Decapsulated::Dropped(DropReason::Malformed);
    };
    let Some(tunnel) = lookup(index) else {
        return Decapsulated::Dropped(DropReason::UnknownIndex);
    };
    let range = match tunnel.recv.open_in_place(data) {
        Ok(r) => r,
        Err(DataError::Replay(_)) => return Decapsulated::Dropped(DropReason::Replayed),
        Err(DataError::Auth) => return Decapsulated::Dropped(DropReason::AuthFailed),
        Err(DataError::Retired) => return Decapsulated::Dropped(DropReason::Retired),
        Err(_) => return Decapsulated::Dropped(DropReason::Malformed),
    };
    tunnel.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
    let mut range = range;
    let plain = &data[range.clone()];
    let payload = match plain.first() {
        None => Payload::Keepalive,
        Some(&punch::MSG_SIZE_PROBE) if plain.len() >= punch::PROBE_LEN => {
            // Path MTU discovery: only the size matters, and it came. The
            // core gets the type and nonce.
            range.end = range.start + punch::PROBE_LEN;
            Payload::Message
        }
        Some(b) if !matches!(b >> 4, 4 | 6) => {
            if plain.len() > MAX_TUNNEL_MESSAGE {
                return Decapsulated::Dropped(DropReason::MessageTooLong);
            }
            Payload::Message
        }
        Some(_) => {
            let src_ok = match ip::inner_source(plain) {
                Some(IpAddr::V4(a)) => a == tunnel.vip4,
                Some(IpAddr::V6(a)) => a == tunnel.vip6,
                None => false,
            };
            if !src_ok {
                return Decapsulated::Dropped(DropReason::BadInnerSource);
            }
            if !tunnel.filter.is_open()
                && tunnel.filter.check(Direction::In, plain, now()) == Verdict::Deny
            {
                return Decapsulated::Dropped(DropReason::PolicyDenied);
            }
            tunnel
                .stats
                .rx_bytes
                .fetch_add(plain.len() as u64, Ordering::Relaxed);
            Payload::Packet
        }
    };
    Decapsulated::Opened(Opened {
        tunnel,
        path,
        plain: offset + range.start..offset + range.end,
        payload,
    })
}

/// How often one tunnel's packets on one other path are reported to the
/// core, however fast they come.
pub const PATH_REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// (tunnel, path) pairs remembered before the memory starts over.
const MAX_PATH_REPORTS: usize = 4096;

/// Bounds path reports to the core: at most one per tunnel and path each
/// [`PATH_REPORT_INTERVAL`].
#[derive(Default)]
pub struct PathReports {
    last: HashMap<(LocalIndex, Path), Instant>,
}

impl PathReports {
    pub fn allow(&mut self, index: LocalIndex, path: Path, now: Instant) -> bool {
        if self.last.len() > MAX_PATH_REPORTS {
            self.last.clear();
        }
        match self.last.get(&(index, path)) {
            Some(t) if now.saturating_duration_since(*t) < PATH_REPORT_INTERVAL => false,
            _ => {
                self.last.insert((index, path), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::TunnelStats;
    use cyphonic_proto::data::{RecvKey, SendKey};
    use cyphonic_proto::{LocalIndex, RelayId};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    fn pair(path: Path) -> (TunnelHandle, Arc<TunnelHandle>) {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let a = TunnelHandle {
            fqdn: "b.cyphonic.internal".into(),
            vip4: Ipv4Addr::new(100, 64, 0, 2),
            vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            path,
            send: Arc::new(SendKey::new(&k1, LocalIndex(22))),
            recv: Arc::new(RecvKey::new(&k2, LocalIndex(11))),
            stats: Arc::new(TunnelStats::default()),
            confirmed: Arc::new(true.into()),
            filter: Default::default(),
            mtu: Default::default(),
        };
        let b = TunnelHandle {
            fqdn: "a.cyphonic.internal".into(),
            vip4: Ipv4Addr::new(100, 64, 0, 1),
            vip6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
            path,
            send: Arc::new(SendKey::new(&k2, LocalIndex(11))),
            recv: Arc::new(RecvKey::new(&k1, LocalIndex(22))),
            stats: Arc::new(TunnelStats::default()),
            confirmed: Arc::new(true.into()),
            filter: Default::default(),
            mtu: Default::default(),
        };
        (a, Arc::new(b))
    }

    /// `base` with fresh keys under `index`, confirmed or not.
    fn rekeyed(base: &TunnelHandle, index: u32, confirmed: bool) -> TunnelHandle {
        TunnelHandle {
            send: Arc::new(SendKey::new(&[index as u8; 32], LocalIndex(index + 1000))),
            recv: Arc::new(RecvKey::new(&[index as u8; 32], LocalIndex(index))),
            confirmed: Arc::new(confirmed.into()),
            ..base.clone()
        }
    }

    #[test]
    fn unconfirmed_keys_receive_but_sending_waits_for_the_peer() {
        let path = Path::udp("192.0.2.2:4501".parse().expect("addr"));
        let (a, _) = pair(path);
        let vip = IpAddr::V4(a.vip4);
        let mut t = TunnelTable::default();
        t.install(0, a.clone());
        let sends = |t: &TunnelTable| t.by_destination(0, vip).map(|h| h.recv.local_index());
        assert_eq!(sends(&t), Some(LocalIndex(11)));

        // A rekey we answered: both keys receive, the old one sends.
        let r1 = rekeyed(&a, 31, false);
        t.install(0, r1.clone());
        assert_eq!(t.receiving(0), vec![LocalIndex(11), LocalIndex(31)]);
        assert_eq!(sends(&t), Some(LocalIndex(11)));

        // A replayed request's keys, never used by anyone, replace r1 in
        // receiving and still do not send.
        let r2 = rekeyed(&a, 32, false);
        t.install(0, r2.clone());
        assert_eq!(t.receiving(0), vec![LocalIndex(11), LocalIndex(32)]);
        assert_eq!(sends(&t), Some(LocalIndex(11)));

        // The peer's first packet under r2 confirms it, once; installed
        // again, it sends, and the old key still receives.
        let mut buf = [0u8; HEADROOM + TAG_LEN];
        let peer_send = SendKey::new(&[32; 32], LocalIndex(32));
        let n = peer_send
            .seal_in_place(&mut buf[RELAY_HEADER_LEN..], 0)
            .expect("seal");
        let mut datagram = buf[RELAY_HEADER_LEN..RELAY_HEADER_LEN + n].to_vec();
        let from = Leg::udp("192.0.2.2:4501".parse().expect("addr"));
        let Decapsulated::Opened(o) =
            decapsulate(&mut datagram, from, Instant::now, |i| t.by_index(i))
        else {
            panic!("the peer's packet opens under the new key");
        };
        assert!(o.confirms_keys());
        assert!(!o.confirms_keys(), "only the first packet confirms");
        t.install(0, r2);
        assert_eq!(sends(&t), Some(LocalIndex(32)));
        assert_eq!(t.receiving(0), vec![LocalIndex(11), LocalIndex(32)]);

        // A responder's first keys receive at once and send only once
        // confirmed: the initiator may not have them yet.
        let mut fresh = TunnelTable::default();
        let first = rekeyed(&a, 40, false);
        fresh.install(0, first.clone());
        assert_eq!(fresh.receiving(0), vec![LocalIndex(40)]);
        assert_eq!(sends(&fresh), None);
        first.confirmed.store(true, Ordering::Relaxed);
        fresh.install(0, first);
        assert_eq!(sends(&fresh), Some(LocalIndex(40)));
    }

    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p
    }

    fn leg() -> Leg {
        Leg::udp(SocketAddr::from(([192, 0, 2, 1], 4501)))
    }

    fn open(b: &Arc<TunnelHandle>, wire: &mut [u8], from: Leg) -> Decapsulated {
        decapsulate(wire, from, Instant::now, |i| {
            (i == LocalIndex(22)).then(|| b.clone())
        })
    }

    #[test]
    fn a_sealed_packet_opens_to_the_same_bytes_directly_and_relayed() {
        let direct = Path::Direct(leg());
        let relayed = Path::Relay {
            server: Leg::udp(SocketAddr::from(([192, 0, 2, 9], 4503))),
            relay_id: RelayId(0x77),
        };
        for path in [direct, relayed] {
            let (a, b) = pair(direct);
            // From node A (VIP 100.64.0.1) to B, opened at B with the
            // handle for A.
            let inner = ipv4(b.vip4, a.vip4);
            let mut wire = encapsulate_vec(&a, path, &inner).expect("seal");
            assert_eq!(a.stats.tx_packets.load(Ordering::Relaxed), 1);
            assert_eq!(path.is_relay(), wire[0] == relay::TYPE_RELAY_DATA);
            let from = path.leg();
            match open(&b, &mut wire, from) {
                Decapsulated::Opened(o) => {
                    assert_eq!(o.payload, Payload::Packet);
                    assert_eq!(&wire[o.plain.clone()], &inner[..]);
                    assert_eq!(o.path, path);
                    assert_eq!(o.path_changed(), path != direct);
                    assert_eq!(o.local_index(), LocalIndex(22));
                }
                other => panic!("not opened: {other:?}"),
            }
            assert_eq!(b.stats.rx_packets.load(Ordering::Relaxed), 1);
            assert_eq!(b.stats.rx_bytes.load(Ordering::Relaxed), inner.len() as u64);
        }
    }

    #[test]
    fn each_bad_datagram_is_dropped_with_its_reason() {
        let (a, b) = pair(Path::Direct(leg()));
        let good = ipv4(b.vip4, a.vip4);
        let sealed = encapsulate_vec(&a, a.path, &good).expect("seal");
        // Replayed.
        let mut once = sealed.clone();
        assert!(matches!(
            open(&b, &mut once, leg()),
            Decapsulated::Opened(_)
        ));
        let mut again = sealed.clone();
        assert!(matches!(
            open(&b, &mut again, leg()),
            Decapsulated::Dropped(DropReason::Replayed)
        ));
        // Tampered.
        let mut bad = encapsulate_vec(&a, a.path, &good).expect("seal");
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            open(&b, &mut bad, leg()),
            Decapsulated::Dropped(DropReason::AuthFailed)
        ));
        // Another tunnel's index.
        let mut other = encapsulate_vec(&a, a.path, &good).expect("seal");
        assert!(matches!(
            decapsulate(&mut other, leg(), Instant::now, |_| None),
            Decapsulated::Dropped(DropReason::UnknownIndex)
        ));
        // Truncated.
        let mut short = vec![TYPE_DATA, 0, 0];
        assert!(matches!(
            open(&b, &mut short, leg()),
            Decapsulated::Dropped(DropReason::Malformed)
        ));
        // Another node's VIP as the inner source.
        let spoofed = ipv4(Ipv4Addr::new(100, 64, 0, 9), a.vip4);
        let mut s = encapsulate_vec(&a, a.path, &spoofed).expect("seal");
        assert!(matches!(
            open(&b, &mut s, leg()),
            Decapsulated::Dropped(DropReason::BadInnerSource)
        ));
        // A tunnel message longer than any we send.
        let mut long = encapsulate_vec(&a, a.path, &[1u8; MAX_TUNNEL_MESSAGE + 1]).expect("seal");
        assert!(matches!(
            open(&b, &mut long, leg()),
            Decapsulated::Dropped(DropReason::MessageTooLong)
        ));
        // Keepalives and messages are opened for the core.
        let mut ka = encapsulate_vec(&a, a.path, &[]).expect("seal");
        assert!(matches!(
            open(&b, &mut ka, leg()),
            Decapsulated::Opened(Opened {
                payload: Payload::Keepalive,
                ..
            })
        ));
        let mut msg = encapsulate_vec(&a, a.path, &[1u8; 9]).expect("seal");
        assert!(matches!(
            open(&b, &mut msg, leg()),
            Decapsulated::Opened(Opened {
                payload: Payload::Message,
                ..
            })
        ));
        // A size probe of any length: the core gets its type and nonce.
        let probe = cyphonic_proto::punch::size_probe(77, 1300);
        let mut sized = encapsulate_vec(&a, a.path, &probe).expect("seal");
        match open(&b, &mut sized, leg()) {
            Decapsulated::Opened(o) => {
                assert_eq!(o.payload, Payload::Message);
                assert_eq!(
                    cyphonic_proto::punch::Probe::parse(&sized[o.plain]),
                    Some(cyphonic_proto::punch::Probe::Size { nonce: 77 })
                );
            }
            _ => panic!("a size probe is opened"),
        }
        // Not data at all: the core's.
        let mut signal = vec![cyphonic_proto::signal::TYPE_SIGNALING, 1, 2, 3];
        assert!(matches!(
            open(&b, &mut signal, leg()),
            Decapsulated::Control
        ));
    }

    #[test]
    fn path_reports_are_rate_limited_per_tunnel_and_path() {
        let t0 = Instant::now();
        let mut r = PathReports::default();
        let p = Path::Direct(leg());
        assert!(r.allow(LocalIndex(1), p, t0));
        assert!(!r.allow(LocalIndex(1), p, t0 + Duration::from_millis(50)));
        assert!(r.allow(LocalIndex(2), p, t0 + Duration::from_millis(50)));
        assert!(r.allow(LocalIndex(1), p, t0 + PATH_REPORT_INTERVAL));
    }
}
