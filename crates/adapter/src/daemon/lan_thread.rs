//! The LAN thread: turns [`Lan`] (DHCP, RA, the proxies), and sends what
//! the general nodes send into the overlay through the node's
//! [`Sender`], sealed in place like a node's TUN packets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyphonic_node::datapath::HEADROOM;
use cyphonic_node::dataplane::{Device, Sender, Stop, BATCH};
use cyphonic_proto::data::{DATA_HEADER_LEN, TAG_LEN};
use cyphonic_proto::ip;
use tokio::sync::mpsc;

use crate::device::LanDevice;
use crate::lan::{GeneralNodeAddrs, Lan, LanCounters, LanInput, Leases};
use crate::MacAddr;

/// What the control loop tells the LAN thread.
pub enum LanCommand {
    SetGeneralNodes(Vec<GeneralNodeAddrs>),
}

/// What the LAN thread tells the control loop.
#[derive(Debug)]
pub enum LanEvent {
    /// A general node's first frame since the start.
    Arrived(MacAddr),
    /// A DNS query to the gateway.
    Dns {
        src_mac: MacAddr,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        query: Vec<u8>,
    },
}

/// The LAN side's figures, as the thread last published them.
#[derive(Debug, Default, Clone)]
pub struct LanSnapshot {
    pub counters: LanCounters,
    pub leases: Leases,
    /// Packets from a MAC with no identity up yet, or from an address not
    /// its own.
    pub unknown_sender: u64,
}

pub struct LanThread {
    pub lan: Lan,
    pub device: Arc<LanDevice>,
    pub sender: Sender,
    pub commands: std::sync::mpsc::Receiver<LanCommand>,
    pub events: mpsc::Sender<LanEvent>,
    pub snapshot: Arc<Mutex<LanSnapshot>>,
    pub events_dropped: Arc<AtomicU64>,
}

impl LanThread {
    pub fn run(mut self, stop: &Stop) {
        let mtu = self.sender.mtu;
        let mut buf = vec![0u8; HEADROOM + 65_536 + TAG_LEN];
        let mut inputs = Vec::with_capacity(BATCH);
        let mut unknown_sender = 0u64;
        // Published at once, then every half second.
        let mut published: Option<std::time::Instant> = None;
        while !stop.is_set() {
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    LanCommand::SetGeneralNodes(nodes) => self.lan.set_general_nodes(&nodes),
                }
            }
            inputs.clear();
            if let Err(e) = self
                .lan
                .turn_batch(Duration::from_millis(100), BATCH, &mut inputs)
            {
                tracing::warn!(error = %e, "LAN read failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            while let Some(mac) = self.lan.poll_arrival() {
                self.event(LanEvent::Arrived(mac));
            }
            for input in inputs.drain(..) {
                match input {
                    LanInput::Data {
                        src_mac, packet, ..
                    } => {
                        let id = ip::inner_source(&packet)
                            .and_then(|src| self.device.sender(src_mac, src));
                        let (Some(id), true) = (id, packet.len() <= 65_535) else {
                            unknown_sender += 1;
                            continue;
                        };
                        let len = packet.len();
                        buf[HEADROOM..HEADROOM + len].copy_from_slice(&packet);
                        let slot = HEADROOM + len.max(mtu) + TAG_LEN;
                        self.sender.packet(id, &mut buf[..slot], len);
                    }
                    LanInput::Dns {
                        src_mac,
                        src,
                        dst,
                        query,
                    } => self.event(LanEvent::Dns {
                        src_mac,
                        src,
                        dst,
                        query,
                    }),
                }
            }
            self.sender.flush();
            if !self.sender.too_big.is_empty() {
                if let Err(e) = self
                    .device
                    .send_batch(&mut self.sender.too_big, DATA_HEADER_LEN)
                {
                    tracing::debug!(error = %e, "LAN write of ICMP too-big failed");
                }
                self.sender.too_big.clear();
            }
            if published.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
                published = Some(std::time::Instant::now());
                let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
                s.counters = self.lan.counters();
                s.leases = self.lan.leases();
                s.unknown_sender = unknown_sender;
            }
        }
    }

    fn event(&self, event: LanEvent) {
        if self.events.try_send(event).is_err() {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
