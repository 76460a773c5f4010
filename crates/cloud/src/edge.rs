//! The cloud's QUIC and TLS-over-TCP listeners (UDP and TCP 443 by
//! default), for nodes behind firewalls that let only the web out.
//!
//! One [`Hub`] carries datagrams from nodes' legs; [`run_edge`] hands each
//! to the core its first byte names: signaling (type 1) to the NMS shell,
//! relay (types 6, 7, 8) to the TRS core, a Reflect Request (type 11) to
//! the NMS, or to the TRS on a host without the NMS. Answers go back on
//! the leg they came by: the cores key everything by `SocketAddr`, and a
//! leg's remote address is that key, so the cores do not change.
//!
//! - NMS: hub datagrams enter the NMS shell's channel with
//!   [`CloudHub::nms_local`] as their `local`; the shell sends whatever the
//!   core addresses from that `local` through [`CloudHub::send`].
//! - TRS: a relay side bound over a leg is keyed by the leg's remote
//!   address; a `Forward` to such an address goes through the hub, any
//!   other over the TRS's UDP sockets (so QUIC, TCP and native UDP sides
//!   relay to each other).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cyphonic_platform::udp::Trains;
use cyphonic_proto::reflect::TYPE_REFLECT_REQUEST;
use cyphonic_proto::relay::{TYPE_RELAY_BIND, TYPE_RELAY_BIND_ACK, TYPE_RELAY_DATA};
use cyphonic_proto::signal::TYPE_SIGNALING;
use cyphonic_transport::{
    FastRoute, Hub, HubConfig, Received, SendError, TcpHandoff, TlsIdentity, TrainDest, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, info, trace, warn};

use crate::as_proto::AS_ALPN;
use crate::as_server::{HandedOff, ServerIdentity};
use crate::config::CloudConfig;
use crate::trs::{Action, Trs};

/// Received datagrams taken from the hub at once.
const BATCH: usize = 64;
/// How often remote addresses of legs that are gone are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// The cloud's hub and which transport each remote address is reached by.
pub struct CloudHub {
    hub: Hub,
    /// Transport of the leg each remote address last sent on.
    remotes: Mutex<HashMap<SocketAddr, Transport>>,
    /// Whether `remotes` has entries: the UDP relay path skips the lock
    /// while no leg has sent anything.
    any_remote: AtomicBool,
    nms_local: SocketAddr,
}

/// What a datagram from the hub goes to.
pub struct EdgeTargets {
    /// The NMS shell's input: `(local, from, datagram)`.
    pub nms: Option<mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>>,
    /// The TRS core and its UDP sockets (for relay peers on native UDP).
    pub trs: Option<(Arc<Mutex<Trs>>, Arc<cyphonic_platform::udp::Sockets>)>,
}

impl CloudHub {
    /// A server hub on `quic_listen` and `tcp443_listen` presenting
    /// `identity`, trusting our root only and requiring a client (node)
    /// certificate. `None` when both lists are empty.
    ///
    /// IPv6 addresses are left out on a host without IPv6.
    ///
    /// `as_streams`: TCP connections that negotiate ALPN `cyphonic-as/1`
    /// go there (to the AS) instead of becoming legs.
    pub async fn bind(
        cfg: &CloudConfig,
        identity: &ServerIdentity,
        as_streams: Option<mpsc::Sender<(HandedOff, SocketAddr)>>,
    ) -> anyhow::Result<Option<Arc<CloudHub>>> {
        let ipv6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
        let keep = |list: &[SocketAddr]| -> Vec<SocketAddr> {
            list.iter()
                .copied()
                .filter(|a| {
                    let ok = ipv6 || a.is_ipv4();
                    if !ok {
                        warn!(addr = %a, "IPv6 is not available here; not listening on it");
                    }
                    ok
                })
                .collect()
        };
        let (quic, tcp) = (keep(&cfg.quic_listen), keep(&cfg.tcp443_listen));
        if quic.is_empty() && tcp.is_empty() {
            return Ok(None);
        }
        let tls = TlsIdentity {
            chain_pem: identity.chain_pem.clone(),
            key_pem: identity.key_pem.to_string(),
            root_der: identity.root_der.clone(),
        };
        let hub = match as_streams {
            Some(streams) => {
                let handoff = TcpHandoff {
                    alpn: AS_ALPN.to_vec(),
                    streams,
                };
                Hub::server_with_handoff(HubConfig::default(), tls, quic, tcp, true, handoff)
                    .await?
            }
            None => Hub::server(tls, quic, tcp, true).await?,
        };
        let nms_local = *hub
            .quic_listen_addrs()
            .iter()
            .chain(hub.tcp_listen_addrs())
            .next()
            .expect("a hub with listeners");
        info!(quic = ?hub.quic_listen_addrs(), tcp = ?hub.tcp_listen_addrs(), "QUIC and TLS-over-TCP listeners up");
        Ok(Some(Arc::new(CloudHub {
            hub,
            remotes: Mutex::new(HashMap::new()),
            any_remote: AtomicBool::new(false),
            nms_local,
        })))
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The `local` the NMS core is given for datagrams from the hub; what
    /// it sends from this `local` goes out through [`CloudHub::send`].
    pub fn nms_local(&self) -> SocketAddr {
        self.nms_local
    }

    fn remotes(&self) -> MutexGuard<'_, HashMap<SocketAddr, Transport>> {
        self.remotes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `from` sent on a `transport` leg.
    fn seen(&self, transport: Transport, from: SocketAddr) {
        let mut remotes = self.remotes();
        if remotes.get(&from) != Some(&transport) {
            remotes.insert(from, transport);
            self.any_remote.store(true, Ordering::Relaxed);
        }
    }

    /// The transport of the leg whose remote address is `addr`, if a leg
    /// to it has sent something.
    pub fn transport_of(&self, addr: SocketAddr) -> Option<Transport> {
        if !self.any_remote.load(Ordering::Relaxed) {
            return None;
        }
        self.remotes().get(&addr).copied()
    }

    /// Queues `datagram` on the leg to `to`. `Err(None)`: no leg to `to`
    /// has sent anything (the address is not the hub's).
    pub fn send(&self, to: SocketAddr, datagram: Vec<u8>) -> Result<(), Option<SendError>> {
        let transport = self.transport_of(to).ok_or(None)?;
        self.hub.send(transport, to, datagram).map_err(Some)
    }

    /// Forgets remote addresses without a leg (closed, or a QUIC peer that
    /// migrated).
    fn prune(&self) {
        let legs: std::collections::HashSet<(SocketAddr, Transport)> = self
            .hub
            .legs()
            .into_iter()
            .map(|l| (l.remote, l.transport))
            .collect();
        let mut remotes = self.remotes();
        remotes.retain(|addr, t| legs.contains(&(*addr, *t)));
        self.any_remote
            .store(!remotes.is_empty(), Ordering::Relaxed);
    }
}

/// Dispatches datagrams from the hub until `stop`.
pub async fn run_edge(
    edge: Arc<CloudHub>,
    targets: EdgeTargets,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut batch: Vec<Received> = Vec::with_capacity(BATCH);
    let mut relayed: Vec<Received> = Vec::with_capacity(BATCH);
    let mut actions: Vec<Action> = Vec::with_capacity(BATCH);
    let mut forwarder = targets
        .trs
        .as_ref()
        .map(|(_, sockets)| Forwarder::new(Some(&edge), sockets));
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        batch.clear();
        tokio::select! {
            n = edge.hub.recv_many(&mut batch, BATCH) => if n == 0 {
                return Ok(());
            },
            _ = prune.tick() => {
                edge.prune();
                continue;
            }
            _ = stop.wait_for(|s| *s) => {
                edge.hub.close();
                return Ok(());
            }
        }
        for r in batch.drain(..) {
            edge.seen(r.transport, r.from);
            match r.datagram.first() {
                Some(&TYPE_REFLECT_REQUEST) if targets.nms.is_none() => match &targets.trs {
                    Some(_) => relayed.push(r),
                    None => trace!(from = %r.from, "Reflect Request on a host without NMS or TRS"),
                },
                Some(&(TYPE_SIGNALING | TYPE_REFLECT_REQUEST)) => match &targets.nms {
                    Some(nms) => {
                        if nms
                            .send((edge.nms_local, r.from, r.datagram))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    None => trace!(from = %r.from, "signaling on a host without the NMS"),
                },
                Some(&(TYPE_RELAY_BIND | TYPE_RELAY_BIND_ACK | TYPE_RELAY_DATA)) => {
                    match &targets.trs {
                        Some(_) => relayed.push(r),
                        None => trace!(from = %r.from, "relay on a host without the TRS"),
                    }
                }
                _ => {
                    trace!(from = %r.from, transport = %r.transport, "dropping datagram of unknown type")
                }
            }
        }
        if let (Some((trs, _)), Some(forwarder)) = (&targets.trs, forwarder.as_mut()) {
            relay(&edge, trs, forwarder, &mut relayed, &mut actions);
        }
    }
}

/// Relay datagrams from legs through the TRS core: one lock for the
/// batch, then forwarded in trains (`docs/protocol.md` §6.8).
fn relay(
    edge: &CloudHub,
    trs: &Mutex<Trs>,
    forwarder: &mut Forwarder<'_>,
    batch: &mut Vec<Received>,
    actions: &mut Vec<Action>,
) {
    if batch.is_empty() {
        return;
    }
    let now = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    {
        let mut trs = trs.lock().unwrap_or_else(|e| e.into_inner());
        actions.extend(
            batch
                .iter_mut()
                .map(|r| trs.handle_datagram(now, unix, r.from, &mut r.datagram)),
        );
    }
    for (r, action) in batch.drain(..).zip(actions.drain(..)) {
        let Received {
            transport,
            from,
            mut datagram,
            ..
        } = r;
        match action {
            Action::Forward(dst) => forwarder.forward(&datagram, dst),
            Action::Reply(len) => {
                datagram.truncate(len);
                if let Err(e) = edge.hub.send(transport, from, datagram) {
                    debug!(%from, error = %e, "relay reply dropped");
                }
            }
            Action::Drop(reason) => trace!(%from, ?reason, "relay drop"),
        }
    }
    forwarder.flush();
}

/// Whether `dst` is the remote address of a leg (QUIC or TLS over TCP)
/// rather than a UDP endpoint.
pub(crate) fn is_leg(edge: Option<&CloudHub>, dst: SocketAddr) -> bool {
    edge.is_some_and(|e| e.transport_of(dst).is_some())
}

/// Sends relayed datagrams on: to a QUIC leg's fast path once its peer
/// offered one, and to UDP endpoints, in GSO trains; through the hub to
/// other legs. A batch's datagrams are sent by [`Forwarder::flush`] at the
/// latest.
pub(crate) struct Forwarder<'a> {
    edge: Option<&'a CloudHub>,
    sockets: &'a cyphonic_platform::udp::Sockets,
    trains: Trains<TrainDest>,
    /// Fast routes looked up in this batch (`None`: the leg has none).
    routes: Vec<(SocketAddr, Option<FastRoute>)>,
}

impl<'a> Forwarder<'a> {
    pub fn new(
        edge: Option<&'a CloudHub>,
        sockets: &'a cyphonic_platform::udp::Sockets,
    ) -> Forwarder<'a> {
        Forwarder {
            edge,
            sockets,
            trains: Trains::with_capacity(64 * 1024),
            routes: Vec::new(),
        }
    }

    /// Sends `datagram` to `dst` (now, or with its train).
    pub fn forward(&mut self, datagram: &[u8], dst: SocketAddr) {
        let leg = self.edge.and_then(|e| Some((e, e.transport_of(dst)?)));
        let dest = match leg {
            None => TrainDest::Udp(dst),
            Some((edge, transport)) => match self.fast_route(edge, transport, dst) {
                Some(route) => TrainDest::Fast(route),
                None => {
                    if let Err(e) = edge.hub.send(transport, dst, datagram.to_vec()) {
                        debug!(%dst, error = %e, "relay forward over a leg dropped");
                    }
                    return;
                }
            },
        };
        let sockets = self.sockets;
        self.trains
            .push(dest, datagram, |d, t, seg| send_train(sockets, d, t, seg));
    }

    /// The fast route to the QUIC leg at `dst`, looked up once a batch.
    fn fast_route(
        &mut self,
        edge: &CloudHub,
        transport: Transport,
        dst: SocketAddr,
    ) -> Option<FastRoute> {
        if transport != Transport::Quic {
            return None;
        }
        if let Some((_, route)) = self.routes.iter().find(|(a, _)| *a == dst) {
            return route.clone();
        }
        let route = edge.hub.fast_route(dst);
        self.routes.push((dst, route.clone()));
        route
    }

    /// Sends the trains gathered so far; the next batch looks routes up
    /// afresh.
    pub fn flush(&mut self) {
        let sockets = self.sockets;
        self.trains
            .flush(|d, t, seg| send_train(sockets, d, t, seg));
        self.routes.clear();
    }
}

fn send_train(
    sockets: &cyphonic_platform::udp::Sockets,
    dest: &TrainDest,
    train: &[u8],
    seg: usize,
) {
    if let Err(e) = dest.send(sockets, train, seg) {
        debug!(?dest, error = %e, "relay send failed");
    }
}
