//! The hub: one party's QUIC and TCP legs behind a datagram interface.
//!
//! Each leg is one connection driven by a supervising task, which owns a
//! reader and a writer task: the writer drains the leg's bounded queue
//! (filled by [`Hub::send`]), the reader feeds the hub's receive queue
//! (drained by [`Hub::recv`]). The supervisor ends when the connection
//! does (idle timeout, peer close, error) and then removes the leg from
//! the table, so the next send to that address dials again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::config::{HubConfig, MAX_DATAGRAM};
use crate::error::SendError;
use crate::fast::{self, FastLeg, FastRoute, FastTable, Slot};
use crate::leg::{lock, Counters, Dialer, Established, LegHandle, LegRun, LegStats, Link, Shared};
use crate::socket::{bind_dial_udp, bind_tcp_listener, bind_udp, canonical, Family, TcpProbe};
use crate::table::LegTable;
use crate::tcp::TcpHandoff;
use crate::tls::{TlsConfigs, TlsIdentity};
use crate::types::{Direction, HubStats, LegEvent, LegId, LegInfo, Received, Transport};
use crate::{quic, tcp};

/// A node's or a server's set of QUIC and TCP legs, keyed by the remote
/// address.
///
/// - [`Hub::send`] never waits: it queues on the leg to the address (each
///   leg's queue is bounded; a full queue drops and counts), and on a node
///   dials the leg first if there is none.
/// - [`Hub::recv`] yields every datagram from every leg, with the address
///   to answer to.
/// - [`Hub::leg_event`] and [`Hub::legs`] report legs; [`Hub::stats`] the
///   hub's counters.
/// - [`Hub::rebind`] after the host's addresses changed.
///
/// Must be created inside a tokio runtime; its methods may then be called
/// from anywhere. Dropping the hub closes every leg (see [`Hub::close`]).
pub struct Hub {
    shared: Arc<Shared>,
    received: tokio::sync::Mutex<mpsc::Receiver<Received>>,
    events: tokio::sync::Mutex<mpsc::Receiver<LegEvent>>,
    quic_listeners: Vec<quinn::Endpoint>,
    /// Every endpoint's fast-path send side (the dialer's first).
    slots: Vec<Arc<Slot>>,
    quic_listen_addrs: Vec<SocketAddr>,
    tcp_listen_addrs: Vec<SocketAddr>,
    listener_tasks: Vec<AbortHandle>,
    own_cert: Arc<crate::tls::OwnCert>,
}

impl Hub {
    /// A node's hub with [`HubConfig::default`]: dials legs on demand with
    /// its node certificate; optionally accepts node-to-node legs on
    /// `quic_listen` and `tcp_listen` (peers must present a node
    /// certificate).
    pub async fn new(
        identity: TlsIdentity,
        quic_listen: Option<SocketAddr>,
        tcp_listen: Option<SocketAddr>,
    ) -> anyhow::Result<Hub> {
        Self::client_with_config(HubConfig::default(), identity, quic_listen, tcp_listen).await
    }

    /// [`Hub::new`] with explicit bounds and timers.
    pub async fn client_with_config(
        config: HubConfig,
        identity: TlsIdentity,
        quic_listen: Option<SocketAddr>,
        tcp_listen: Option<SocketAddr>,
    ) -> anyhow::Result<Hub> {
        let quic: Vec<_> = quic_listen.into_iter().collect();
        let tcp: Vec<_> = tcp_listen.into_iter().collect();
        Self::build(config, &identity, true, &quic, &tcp, true, None).await
    }

    /// [`Hub::client_with_config`] listening on any number of addresses
    /// (a node's QUIC listener on IPv4 and IPv6).
    pub async fn node(
        config: HubConfig,
        identity: TlsIdentity,
        quic_listen: Vec<SocketAddr>,
        tcp_listen: Vec<SocketAddr>,
    ) -> anyhow::Result<Hub> {
        Self::build(
            config,
            &identity,
            true,
            &quic_listen,
            &tcp_listen,
            true,
            None,
        )
        .await
    }

    /// A cloud server's hub (NMS, TRS) with [`HubConfig::default`]: accepts
    /// legs from nodes on every address given and never dials; it answers
    /// on the leg the destination address names.
    ///
    /// `require_client_cert`: refuse peers that present no certificate. A
    /// certificate that is presented must chain to our root either way.
    pub async fn server(
        identity: TlsIdentity,
        quic_listen: Vec<SocketAddr>,
        tcp_listen: Vec<SocketAddr>,
        require_client_cert: bool,
    ) -> anyhow::Result<Hub> {
        Self::server_with_config(
            HubConfig::default(),
            identity,
            quic_listen,
            tcp_listen,
            require_client_cert,
        )
        .await
    }

    /// [`Hub::server`] with explicit bounds and timers.
    pub async fn server_with_config(
        config: HubConfig,
        identity: TlsIdentity,
        quic_listen: Vec<SocketAddr>,
        tcp_listen: Vec<SocketAddr>,
        require_client_cert: bool,
    ) -> anyhow::Result<Hub> {
        Self::build(
            config,
            &identity,
            false,
            &quic_listen,
            &tcp_listen,
            require_client_cert,
            None,
        )
        .await
    }

    /// [`Hub::server_with_config`] whose TCP listeners also accept
    /// `handoff.alpn` and hand those TLS streams to `handoff.streams`
    /// instead of making legs (another service sharing the port, such as
    /// the AS on TCP 443). The same client-certificate rule applies.
    pub async fn server_with_handoff(
        config: HubConfig,
        identity: TlsIdentity,
        quic_listen: Vec<SocketAddr>,
        tcp_listen: Vec<SocketAddr>,
        require_client_cert: bool,
        handoff: TcpHandoff,
    ) -> anyhow::Result<Hub> {
        Self::build(
            config,
            &identity,
            false,
            &quic_listen,
            &tcp_listen,
            require_client_cert,
            Some(handoff),
        )
        .await
    }

    async fn build(
        config: HubConfig,
        identity: &TlsIdentity,
        dial: bool,
        quic_listen: &[SocketAddr],
        tcp_listen: &[SocketAddr],
        require_client_cert: bool,
        handoff: Option<TcpHandoff>,
    ) -> anyhow::Result<Hub> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("a hub must be created inside a tokio runtime")?;
        let tls = TlsConfigs::new(
            identity,
            dial,
            require_client_cert,
            handoff.as_ref().map(|h| h.alpn.as_slice()),
        )?;

        let fast = Arc::new(FastTable::default());
        let mut slots = Vec::new();
        let dialer = match (&tls.quic_client, &tls.tcp_client) {
            (Some(quic_tls), Some(tcp_tls)) => {
                // QUIC is one transport of several: a host where no
                // endpoint can be made dials TCP legs only.
                let slot = Arc::new(Slot::default());
                slots.push(slot.clone());
                let endpoint = bind_dial_udp(config.udp_socket_buffer)
                    .context("UDP socket for dialing QUIC legs")
                    .and_then(|socket| {
                        quic::endpoint(socket, None, &fast, &slot)
                            .context("QUIC endpoint for dialing")
                    });
                let endpoint = match endpoint {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "no QUIC legs; TCP legs only");
                        None
                    }
                };
                Some(Dialer {
                    endpoint,
                    slot,
                    quic_v4: quic::client_config(quic_tls.clone(), &config, false)?,
                    quic_v6: quic::client_config(quic_tls.clone(), &config, true)?,
                    tcp: tokio_rustls::TlsConnector::from(tcp_tls.clone()),
                })
            }
            _ => None,
        };

        let mut quic_listeners = Vec::new();
        let mut quic_listen_addrs = Vec::new();
        for addr in quic_listen {
            let socket = bind_udp(*addr, Family::Only, config.udp_socket_buffer)
                .with_context(|| format!("binding QUIC listener {addr}"))?;
            let server = quic::server_config(tls.quic_server.clone(), &config, addr.is_ipv6())?;
            let slot = Arc::new(Slot::default());
            let endpoint = quic::endpoint(socket, Some(server), &fast, &slot)
                .with_context(|| format!("QUIC listener {addr}"))?;
            quic_listen_addrs.push(endpoint.local_addr()?);
            quic_listeners.push((endpoint, slot));
        }
        let mut tcp_listeners = Vec::new();
        let mut tcp_listen_addrs = Vec::new();
        for addr in tcp_listen {
            let listener =
                bind_tcp_listener(*addr).with_context(|| format!("binding TCP listener {addr}"))?;
            tcp_listen_addrs.push(listener.local_addr()?);
            tcp_listeners.push(listener);
        }

        let (received_tx, received_rx) = mpsc::channel(config.recv_queue.max(1));
        fast.set_received(Some(received_tx.clone()));
        let (events_tx, events_rx) = mpsc::channel(config.event_queue.max(1));
        let shared = Arc::new(Shared {
            table: Mutex::new(LegTable::new(config.max_legs)),
            handshakes: Arc::new(Semaphore::new(config.max_pending_handshakes.max(1))),
            config,
            runtime,
            server_names: Mutex::new(HashMap::new()),
            dialer,
            verifier: tls.verifier.clone(),
            received: Mutex::new(Some(received_tx)),
            events: Mutex::new(Some(events_tx)),
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            fast,
        });

        let mut listener_tasks = Vec::new();
        for ((endpoint, slot), addr) in quic_listeners.iter().zip(&quic_listen_addrs) {
            info!(listen = %addr, "QUIC listener up");
            slots.push(slot.clone());
            let task = tokio::spawn(quic::accept_loop(
                shared.clone(),
                endpoint.clone(),
                slot.clone(),
                Shared::accepted,
            ));
            listener_tasks.push(task.abort_handle());
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.tcp_server.clone());
        for (listener, addr) in tcp_listeners.into_iter().zip(&tcp_listen_addrs) {
            info!(listen = %addr, "TCP listener up");
            let task = tokio::spawn(tcp::accept_loop(
                shared.clone(),
                listener,
                acceptor.clone(),
                handoff.clone(),
                tls.tcp_leg_needs_cert,
                Shared::accepted,
            ));
            listener_tasks.push(task.abort_handle());
        }

        Ok(Hub {
            shared,
            received: tokio::sync::Mutex::new(received_rx),
            events: tokio::sync::Mutex::new(events_rx),
            quic_listeners: quic_listeners.into_iter().map(|(e, _)| e).collect(),
            slots,
            quic_listen_addrs,
            tcp_listen_addrs,
            listener_tasks,
            own_cert: tls.own.clone(),
        })
    }

    /// Queues `datagram` to `to` over `transport` (QUIC or TCP).
    ///
    /// Finds the leg whose remote address is `to` (for QUIC its current
    /// one); a node dials one if there is none, with the server name set by
    /// [`Hub::set_server_name`] or else `to`'s IP. Never waits: a full
    /// queue drops the datagram and counts it. An `Err` always means the
    /// datagram was dropped.
    pub fn send(
        &self,
        transport: Transport,
        to: SocketAddr,
        datagram: Vec<u8>,
    ) -> Result<(), SendError> {
        self.shared.send(transport, canonical(to), datagram)
    }

    /// Presents `identity`'s certificate chain and key from the next TLS
    /// handshake on, as client and as server (a node renewed its
    /// certificate). Legs already up keep the certificate they were set up
    /// with. The trust anchor stays the one the hub was made with; an
    /// `Err` (a key that is not the certificate's, bad PEM) changes
    /// nothing.
    pub fn set_identity(&self, identity: &TlsIdentity) -> anyhow::Result<()> {
        self.own_cert.replace(identity)
    }

    /// The name a dialed leg to `to` checks the server's certificate
    /// against: a peer node's FQDN for node-to-node legs, or a cloud
    /// server's DNS name. Without one, the IP of `to` is used. Applies to
    /// legs dialed from now on.
    pub fn set_server_name(&self, to: SocketAddr, name: String) {
        lock(&self.shared.server_names).insert(canonical(to), name);
    }

    /// Fast packets of QUIC legs (`docs/protocol.md` §11.6) go to `sink`
    /// where the endpoint reads them, instead of [`Hub::recv`]; `None`
    /// puts them back on the queue. Everything else stays on the queue.
    pub fn set_fast_sink(&self, sink: Option<Arc<dyn crate::FastSink>>) {
        self.shared.fast.set_sink(sink);
    }

    /// The next datagram received on any leg. `None` once the hub is
    /// closed.
    pub async fn recv(&self) -> Option<Received> {
        self.received.lock().await.recv().await
    }

    /// Waits for at least one datagram, then takes up to `limit` into
    /// `into`. Returns how many were added (0 once the hub is closed).
    pub async fn recv_many(&self, into: &mut Vec<Received>, limit: usize) -> usize {
        self.received.lock().await.recv_many(into, limit).await
    }

    /// The next change in the set of legs. `None` once the hub is closed.
    pub async fn leg_event(&self) -> Option<LegEvent> {
        self.events.lock().await.recv().await
    }

    /// Every leg, in the order they were made.
    pub fn legs(&self) -> Vec<LegInfo> {
        let table = self.shared.table();
        table
            .iter()
            .map(|(id, e)| {
                let h = &e.handle;
                let (rtt, max) = match &h.link {
                    Some(Link::Quic(conn)) => (Some(conn.rtt()), conn.max_datagram_size()),
                    Some(Link::Tcp(probe)) => (probe.rtt(), Some(MAX_DATAGRAM)),
                    None => (None, None),
                };
                let s = &h.stats;
                LegInfo {
                    id,
                    transport: e.transport,
                    remote: e.remote,
                    direction: h.direction,
                    established: h.link.is_some(),
                    server_name: h.server_name.clone(),
                    peer: h.peer.clone(),
                    rtt,
                    max_datagram_size: max,
                    tx_datagrams: s.tx_datagrams.load(Ordering::Relaxed),
                    tx_bytes: s.tx_bytes.load(Ordering::Relaxed),
                    rx_datagrams: s.rx_datagrams.load(Ordering::Relaxed),
                    rx_bytes: s.rx_bytes.load(Ordering::Relaxed),
                    dropped_queue_full: s.dropped_queue_full.load(Ordering::Relaxed),
                    dropped_too_large: s.dropped_too_large.load(Ordering::Relaxed),
                    tx_fast: s.tx_fast.load(Ordering::Relaxed),
                    rx_fast: s.rx_fast.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// The largest datagram the established leg to `to` carries now, or
    /// `None` without one. QUIC: `path MTU − 38` (see the crate docs), which
    /// changes with MTU discovery; TCP: 65 535.
    pub fn max_datagram_size(&self, transport: Transport, to: SocketAddr) -> Option<usize> {
        let table = self.shared.table();
        let (_, entry) = table.lookup(transport, canonical(to))?;
        match entry.handle.link.as_ref()? {
            Link::Quic(conn) => conn.max_datagram_size(),
            Link::Tcp(_) => Some(MAX_DATAGRAM),
        }
    }

    /// The fast path of the established QUIC leg to `to`
    /// (`docs/protocol.md` §11.6), once the peer offered its ID: tunnel data
    /// packets sent along it (each after [`FastRoute::header`]) bypass the
    /// QUIC connection. `None`: send through [`Hub::send`].
    pub fn fast_route(&self, to: SocketAddr) -> Option<FastRoute> {
        let table = self.shared.table();
        let (_, entry) = table.lookup(Transport::Quic, canonical(to))?;
        let fast = entry.handle.fast.as_ref()?;
        match entry.handle.link.as_ref()? {
            Link::Quic(conn) => fast.route(conn.remote_address(), &entry.handle.stats),
            Link::Tcp(_) => None,
        }
    }

    /// Hub-wide counters.
    pub fn stats(&self) -> HubStats {
        let c = &self.shared.counters;
        HubStats {
            legs: self.shared.table().len(),
            dropped_queue_full: c.dropped_queue_full.load(Ordering::Relaxed),
            dropped_no_leg: c.dropped_no_leg.load(Ordering::Relaxed),
            dropped_backoff: c.dropped_backoff.load(Ordering::Relaxed),
            dials_failed: c.dials_failed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            events_dropped: c.events_dropped.load(Ordering::Relaxed),
        }
    }

    /// After the host's addresses changed.
    ///
    /// QUIC legs this hub dialed move to a fresh UDP socket on a new port
    /// (quinn `Endpoint::rebind`): their next packets come from the new
    /// address and the peer validates the path (RFC 9000 §9); the legs keep
    /// their ids and queues. Dialed TCP legs are closed and dialed again.
    /// Legs peers dialed to our listeners stay: a QUIC server does not
    /// migrate (RFC 9000 §9), so their peers re-dial if the path broke.
    pub fn rebind(&self) -> anyhow::Result<()> {
        let shared = &self.shared;
        let Some(dialer) = &shared.dialer else {
            return Ok(());
        };
        if let Some(endpoint) = &dialer.endpoint {
            // The new socket registers with the runtime's reactor, which the
            // caller's thread may not be inside.
            let _runtime = shared.runtime.enter();
            let old = endpoint.local_addr()?;
            let family = if old.is_ipv6() {
                Family::DualStack
            } else {
                Family::Only
            };
            let socket = bind_udp(
                SocketAddr::new(old.ip(), 0),
                family,
                shared.config.udp_socket_buffer,
            )
            .context("new UDP socket for QUIC legs")?;
            let socket = fast::wrap(socket, &shared.fast, &dialer.slot)
                .context("new UDP socket for QUIC legs")?;
            endpoint
                .rebind_abstract(socket)
                .context("moving QUIC legs to the new socket")?;
            let new = endpoint.local_addr()?;
            info!(%old, %new, "QUIC legs moved to a new socket");
        }

        let mut table = shared.table();
        let tcp_dialed: Vec<(LegId, SocketAddr)> = table
            .iter()
            .filter(|(_, e)| {
                e.transport == Transport::Tcp && e.handle.direction == Direction::Dialed
            })
            .map(|(id, e)| (id, e.remote))
            .collect();
        for (id, remote) in tcp_dialed {
            if let Some(entry) = table.remove(id) {
                if let Some(task) = &entry.handle.supervisor {
                    task.abort();
                }
                shared.closed_leg(
                    id,
                    Transport::Tcp,
                    remote,
                    "re-dialed after the host's addresses changed",
                );
            }
            if let Err(e) = shared.start_dial(&mut table, Transport::Tcp, remote, None) {
                warn!(%remote, error = %e, "cannot re-dial TCP leg");
            }
        }
        Ok(())
    }

    /// The local address QUIC legs are dialed from (changes on
    /// [`Hub::rebind`]); `None` on a server.
    pub fn dial_addr(&self) -> Option<SocketAddr> {
        self.shared
            .dialer
            .as_ref()?
            .endpoint
            .as_ref()?
            .local_addr()
            .ok()
    }

    /// The QUIC listeners' bound addresses (ports resolved if 0 was given).
    pub fn quic_listen_addrs(&self) -> &[SocketAddr] {
        &self.quic_listen_addrs
    }

    /// The TCP listeners' bound addresses (ports resolved if 0 was given).
    pub fn tcp_listen_addrs(&self) -> &[SocketAddr] {
        &self.tcp_listen_addrs
    }

    /// Closes every leg (QUIC peers get a CONNECTION_CLOSE) and the
    /// listeners. Sends fail from then on with [`SendError::Closed`];
    /// `recv` returns `None` once the legs' tasks are gone. Idempotent.
    pub fn close(&self) {
        let shared = &self.shared;
        if shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for task in &self.listener_tasks {
            task.abort();
        }
        for endpoint in &self.quic_listeners {
            endpoint.close(quic::CLOSE_HUB, b"hub closed");
        }
        if let Some(endpoint) = shared.dialer.as_ref().and_then(|d| d.endpoint.as_ref()) {
            endpoint.close(quic::CLOSE_HUB, b"hub closed");
        }
        for (_, entry) in shared.table().drain() {
            if let Some(task) = entry.handle.supervisor {
                task.abort();
            }
        }
        lock(&shared.received).take();
        shared.fast.set_received(None);
        shared.fast.set_sink(None);
        for slot in &self.slots {
            slot.take();
        }
        lock(&shared.events).take();
        info!("hub closed");
    }

    /// [`Hub::close`], then waits until QUIC peers were told (at most a
    /// second) and the listeners' ports are free again (at most two more),
    /// so a hub started next can bind the same ports at once.
    pub async fn shutdown(mut self) {
        self.close();
        let mut endpoints = std::mem::take(&mut self.quic_listeners);
        endpoints.extend(self.shared.dialer.as_ref().and_then(|d| d.endpoint.clone()));
        let idle = async {
            for endpoint in &endpoints {
                endpoint.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
        drop(endpoints);
        // quinn's drivers and the legs' aborted tasks hold the sockets until
        // they unwind; nothing reports that, so ask the OS.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let ports = self
            .quic_listen_addrs
            .iter()
            .map(|a| (Transport::Quic, *a))
            .chain(self.tcp_listen_addrs.iter().map(|a| (Transport::Tcp, *a)));
        for (transport, addr) in ports {
            while !port_free(transport, addr) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Whether a listener on `addr` could be bound now (bind only, no listen).
fn port_free(transport: Transport, addr: SocketAddr) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let (ty, proto) = match transport {
        Transport::Tcp => (Type::STREAM, Protocol::TCP),
        _ => (Type::DGRAM, Protocol::UDP),
    };
    let Ok(sock) = Socket::new(domain, ty, Some(proto)) else {
        return true;
    };
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(true);
    }
    if transport == Transport::Tcp {
        // As the listener binds: TIME_WAIT leftovers do not count.
        let _ = sock.set_reuse_address(true);
    }
    sock.bind(&addr.into()).is_ok()
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("dials", &self.shared.dialer.is_some())
            .field("quic_listen", &self.quic_listen_addrs)
            .field("tcp_listen", &self.tcp_listen_addrs)
            .field("legs", &self.shared.table().len())
            .finish()
    }
}

/// What the hub does with a connection that depends on its transport.
impl Established {
    fn link(&self) -> Link {
        match self {
            Established::Quic(conn, _) => Link::Quic(conn.clone()),
            Established::Tcp(stream) => Link::Tcp(TcpProbe::new(stream.get_ref().0)),
        }
    }

    fn transport(&self) -> Transport {
        match self {
            Established::Quic(..) => Transport::Quic,
            Established::Tcp(_) => Transport::Tcp,
        }
    }

    fn close(self) {
        if let Established::Quic(conn, _) = self {
            conn.close(quic::CLOSE_HUB, b"hub closed");
        }
    }
}

/// The hub's side of the registry: dialing, accepting and running legs,
/// which needs both transports.
impl Shared {
    fn send(
        self: &Arc<Self>,
        transport: Transport,
        to: SocketAddr,
        datagram: Vec<u8>,
    ) -> Result<(), SendError> {
        if transport == Transport::Udp {
            return Err(SendError::Unsupported(transport));
        }
        if datagram.is_empty() {
            return Err(SendError::Empty);
        }
        if datagram.len() > MAX_DATAGRAM {
            return Err(SendError::TooLarge {
                len: datagram.len(),
                max: MAX_DATAGRAM,
            });
        }
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let mut table = self.table();
        if let Some((_, entry)) = table.lookup(transport, to) {
            return match entry.handle.queue.try_send(datagram) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    entry
                        .handle
                        .stats
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    Err(SendError::QueueFull)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::LegClosing),
            };
        }
        if self.dialer.is_none() {
            self.counters.dropped_no_leg.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::NoLeg { transport, to });
        }
        self.start_dial(&mut table, transport, to, Some(datagram))
            .map(|_| ())
    }

    /// Adds a leg to `to` in the connecting state, with `first` queued, and
    /// starts dialing it.
    fn start_dial(
        self: &Arc<Self>,
        table: &mut LegTable<LegHandle>,
        transport: Transport,
        to: SocketAddr,
        first: Option<Vec<u8>>,
    ) -> Result<LegId, SendError> {
        if !table.may_dial((transport, to), Instant::now(), self.config.redial_backoff) {
            self.counters
                .dropped_backoff
                .fetch_add(1, Ordering::Relaxed);
            return Err(SendError::Backoff(to));
        }
        let (queue, queue_rx) = mpsc::channel(self.config.leg_queue.max(1));
        if let Some(first) = first {
            // Invariant: a fresh channel has room for one.
            let _ = queue.try_send(first);
        }
        let server_name = lock(&self.server_names)
            .get(&to)
            .cloned()
            .unwrap_or_else(|| to.ip().to_string());
        let handle = LegHandle {
            direction: Direction::Dialed,
            queue,
            stats: Arc::default(),
            server_name: Some(server_name.clone()),
            peer: None,
            link: None,
            supervisor: None,
            fast: None,
        };
        let id = table
            .insert(transport, to, handle)
            .map_err(|_| SendError::TooManyLegs)?;
        debug!(leg = %id, %transport, remote = %to, server_name, "dialing leg");
        let task = self.runtime.spawn(dial_and_run(
            self.clone(),
            id,
            transport,
            to,
            server_name,
            queue_rx,
        ));
        if let Some(entry) = table.get_mut(id) {
            entry.handle.supervisor = Some(task.abort_handle());
        }
        Ok(id)
    }

    /// A dialed leg finished its handshake. `None` if the leg was removed
    /// meanwhile (hub closed, rebind); the caller then drops the connection.
    fn dialed_up(&self, id: LegId, conn: &Established) -> Option<DialedUp> {
        let received = lock(&self.received).clone()?;
        let peer = self.peer_of(conn);
        let mut table = self.table();
        let entry = table.get_mut(id)?;
        entry.handle.link = Some(conn.link());
        entry.handle.peer = peer.clone();
        let (transport, remote) = (entry.transport, entry.remote);
        let stats = entry.handle.stats.clone();
        let fast = self.fast_leg(id, conn, &stats);
        entry.handle.fast = fast.clone();
        drop(table);
        self.leg_up(id, transport, remote, Direction::Dialed, peer);
        Some((stats, received, remote, fast))
    }

    /// A QUIC leg's fast path: its ID, registered with the endpoint's
    /// socket (dropped with the leg).
    fn fast_leg(
        &self,
        id: LegId,
        conn: &Established,
        stats: &Arc<LegStats>,
    ) -> Option<Arc<FastLeg>> {
        match conn {
            Established::Quic(conn, slot) => Some(Arc::new(FastLeg::new(
                slot.clone(),
                self.fast.clone(),
                id,
                stats.clone(),
                conn.clone(),
            ))),
            Established::Tcp(_) => None,
        }
    }

    /// A peer's handshake on a listener succeeded: make it a leg.
    fn accepted(self: &Arc<Self>, remote: SocketAddr, conn: Established) {
        let transport = conn.transport();
        let Some(received) = lock(&self.received).clone().filter(|_| !self.is_closed()) else {
            conn.close();
            return;
        };
        let peer = self.peer_of(&conn);
        let (queue, queue_rx) = mpsc::channel(self.config.leg_queue.max(1));
        let stats = Arc::<LegStats>::default();
        let handle = LegHandle {
            direction: Direction::Accepted,
            queue,
            stats: stats.clone(),
            server_name: None,
            peer: peer.clone(),
            link: Some(conn.link()),
            supervisor: None,
            fast: None,
        };
        let mut table = self.table();
        let id = match table.insert(transport, remote, handle) {
            Ok(id) => id,
            Err(_) => {
                drop(table);
                self.refused(transport, remote, "leg limit reached".into());
                conn.close();
                return;
            }
        };
        let fast = self.fast_leg(id, &conn, &stats);
        if let Some(entry) = table.get_mut(id) {
            entry.handle.fast = fast.clone();
        }
        let run = LegRun {
            shared: self.clone(),
            id,
            remote,
            queue: queue_rx,
            stats,
            received,
            fast,
        };
        let shared = self.clone();
        let task = self.runtime.spawn(async move {
            let reason = run_leg(run, conn).await;
            shared.finish(id, &reason);
        });
        if let Some(entry) = table.get_mut(id) {
            entry.handle.supervisor = Some(task.abort_handle());
        }
        drop(table);
        self.leg_up(id, transport, remote, Direction::Accepted, peer);
    }

    fn peer_of(&self, conn: &Established) -> Option<String> {
        match conn {
            Established::Quic(c, _) => quic::peer_name(&self.verifier, c),
            Established::Tcp(s) => tcp::peer_name(&self.verifier, s),
        }
    }
}

/// What a dialed leg's run needs once it is up: its counters, the
/// receive queue, its remote address, its fast path (QUIC).
type DialedUp = (
    Arc<LegStats>,
    mpsc::Sender<Received>,
    SocketAddr,
    Option<Arc<FastLeg>>,
);

/// A dialed leg's supervisor: dial, run until the connection ends, forget
/// the leg.
async fn dial_and_run(
    shared: Arc<Shared>,
    id: LegId,
    transport: Transport,
    to: SocketAddr,
    server_name: String,
    queue: mpsc::Receiver<Vec<u8>>,
) {
    let dialed = match transport {
        Transport::Quic => quic::dial(&shared, to, &server_name).await.and_then(|c| {
            let slot = shared.dialer.as_ref().map(|d| d.slot.clone());
            slot.map(|slot| Established::Quic(c, slot))
                .ok_or_else(|| "this hub does not dial".to_owned())
        }),
        Transport::Tcp => tcp::dial(&shared, to, &server_name)
            .await
            .map(|s| Established::Tcp(Box::new(s))),
        Transport::Udp => Err("the hub does not carry udp".to_owned()),
    };
    let reason = match dialed {
        Ok(conn) => match shared.dialed_up(id, &conn) {
            Some((stats, received, remote, fast)) => {
                let run = LegRun {
                    shared: shared.clone(),
                    id,
                    remote,
                    queue,
                    stats,
                    received,
                    fast,
                };
                run_leg(run, conn).await
            }
            None => {
                conn.close();
                return;
            }
        },
        Err(e) => {
            shared.dial_failed(transport, to);
            format!("dial failed: {e}")
        }
    };
    shared.finish(id, &reason);
}

/// Runs an established leg until it ends; returns why it ended.
async fn run_leg(run: LegRun, conn: Established) -> String {
    match conn {
        Established::Quic(conn, _) => quic::run_leg(run, conn).await,
        Established::Tcp(stream) => tcp::run_leg(run, *stream).await,
    }
}
