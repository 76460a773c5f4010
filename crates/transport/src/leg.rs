//! The legs' shared state: the registry of legs ([`Shared`]) with its
//! counters and events, and what a leg's tasks are handed ([`LegRun`],
//! [`LegStats`]). The transports (`quic`, `tcp`) build on this module; the
//! hub builds on all three and is the only part that knows both
//! transports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use cyphonic_pki::Verifier;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{info, warn};

use crate::config::HubConfig;
use crate::fast::{FastLeg, FastTable, Slot};
use crate::socket::TcpProbe;
use crate::table::LegTable;
use crate::types::{Direction, LegEvent, LegId, Received, Transport};

/// State shared by the hub and its tasks.
pub(crate) struct Shared {
    pub config: HubConfig,
    pub runtime: tokio::runtime::Handle,
    pub table: Mutex<LegTable<LegHandle>>,
    pub server_names: Mutex<HashMap<SocketAddr, String>>,
    /// `None` on servers.
    pub dialer: Option<Dialer>,
    /// Names peers from their certificates.
    pub verifier: Verifier,
    /// Handshakes in progress on the listeners.
    pub handshakes: Arc<Semaphore>,
    /// Taken on close, so `recv` ends once the legs' clones are gone.
    pub received: Mutex<Option<mpsc::Sender<Received>>>,
    pub events: Mutex<Option<mpsc::Sender<LegEvent>>>,
    pub counters: Counters,
    pub closed: AtomicBool,
    /// The fast-path IDs of this hub's QUIC legs.
    pub fast: Arc<FastTable>,
}

pub(crate) struct Dialer {
    /// `None` where no QUIC endpoint could be made (legs go over TCP).
    pub endpoint: Option<quinn::Endpoint>,
    /// Where the endpoint's fast packets leave.
    pub slot: Arc<Slot>,
    /// Per address family, for the MTU (see `HubConfig::quic_transport`).
    pub quic_v4: quinn::ClientConfig,
    pub quic_v6: quinn::ClientConfig,
    pub tcp: tokio_rustls::TlsConnector,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub dropped_queue_full: AtomicU64,
    pub dropped_no_leg: AtomicU64,
    pub dropped_backoff: AtomicU64,
    pub dials_failed: AtomicU64,
    pub refused: AtomicU64,
    pub events_dropped: AtomicU64,
}

/// What the table holds per leg.
pub(crate) struct LegHandle {
    pub direction: Direction,
    pub queue: mpsc::Sender<Vec<u8>>,
    pub stats: Arc<LegStats>,
    pub server_name: Option<String>,
    pub peer: Option<String>,
    /// `None` while a dialed leg connects.
    pub link: Option<Link>,
    pub supervisor: Option<AbortHandle>,
    /// A QUIC leg's fast path, once established.
    pub fast: Option<Arc<FastLeg>>,
}

/// An established leg's connection, for status queries.
pub(crate) enum Link {
    Quic(quinn::Connection),
    Tcp(TcpProbe),
}

/// A connection that finished its handshake, about to become a leg.
pub(crate) enum Established {
    /// With the slot of the endpoint it came through.
    Quic(quinn::Connection, Arc<Slot>),
    Tcp(Box<tokio_rustls::TlsStream<tokio::net::TcpStream>>),
}

/// What a listener does with a connection that finished its handshake: the
/// hub makes it a leg. Running a leg needs both transports, which this
/// module and the listeners in `quic` and `tcp` do not know; the hub does.
pub(crate) type MakeLeg = fn(&Arc<Shared>, SocketAddr, Established);

/// Per-leg counters, shared between the table and the leg's tasks.
#[derive(Default)]
pub(crate) struct LegStats {
    pub tx_datagrams: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_datagrams: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_too_large: AtomicU64,
    /// Of the above, on the fast path.
    pub tx_fast: AtomicU64,
    pub rx_fast: AtomicU64,
}

impl LegStats {
    pub fn sent(&self, datagrams: u64, bytes: u64) {
        self.tx_datagrams.fetch_add(datagrams, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.rx_datagrams.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn received_fast(&self, bytes: usize) {
        self.received(bytes);
        self.rx_fast.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sent_fast(&self, datagrams: u64, bytes: u64) {
        self.sent(datagrams, bytes);
        self.tx_fast.fetch_add(datagrams, Ordering::Relaxed);
    }
}

/// Everything a leg's tasks need once it is up.
pub(crate) struct LegRun {
    pub shared: Arc<Shared>,
    pub id: LegId,
    pub remote: SocketAddr,
    pub queue: mpsc::Receiver<Vec<u8>>,
    pub stats: Arc<LegStats>,
    pub received: mpsc::Sender<Received>,
    /// QUIC legs' fast path.
    pub fast: Option<Arc<FastLeg>>,
}

/// Aborts a task when dropped, so a supervisor's end (or abort) ends its
/// reader and writer.
pub(crate) struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind,
    // still consistent at every await-free step; keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn table(&self) -> MutexGuard<'_, LegTable<LegHandle>> {
        lock(&self.table)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn leg_count(&self) -> usize {
        self.table().len()
    }

    pub fn dial_failed(&self, transport: Transport, to: SocketAddr) {
        self.counters.dials_failed.fetch_add(1, Ordering::Relaxed);
        self.table()
            .dial_failed((transport, to), Instant::now(), self.config.redial_backoff);
    }

    /// A QUIC peer now sends from `remote`.
    pub fn moved(&self, id: LegId, remote: SocketAddr) {
        let mut table = self.table();
        let old = table.get(id).map(|e| e.remote);
        if table.moved(id, remote) {
            info!(leg = %id, old = ?old, new = %remote, "QUIC leg migrated");
        }
    }

    /// A leg's supervisor ended: forget the leg.
    pub fn finish(&self, id: LegId, reason: &str) {
        let entry = self.table().remove(id);
        if let Some(entry) = entry {
            self.closed_leg(id, entry.transport, entry.remote, reason);
        }
    }

    pub fn leg_up(
        &self,
        leg: LegId,
        transport: Transport,
        remote: SocketAddr,
        direction: Direction,
        peer: Option<String>,
    ) {
        info!(%leg, %transport, %remote, ?direction, peer = ?peer, "leg up");
        self.emit(LegEvent::Up {
            leg,
            transport,
            remote,
            direction,
            peer,
        });
    }

    pub fn closed_leg(&self, leg: LegId, transport: Transport, remote: SocketAddr, reason: &str) {
        info!(%leg, %transport, %remote, reason, "leg closed");
        self.emit(LegEvent::Closed {
            leg,
            transport,
            remote,
            reason: reason.to_owned(),
        });
    }

    /// A peer's handshake on a listener failed.
    pub fn refused(&self, transport: Transport, remote: SocketAddr, reason: String) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        warn!(%transport, %remote, reason, "leg refused");
        self.emit(LegEvent::Refused {
            transport,
            remote,
            reason,
        });
    }

    fn emit(&self, event: LegEvent) {
        let events = lock(&self.events);
        if let Some(events) = events.as_ref() {
            if events.try_send(event).is_err() {
                self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
