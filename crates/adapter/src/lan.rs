//! The adapter's LAN side as a running service (`docs/adapter.md`): one
//! `AF_PACKET` socket on the LAN interface, one classifier, and the sans-IO
//! parts behind it. What the LAN asks of the adapter itself (ARP and ND for
//! peers and the gateway, Router Solicitations, DHCPv4, DHCPv6) is answered
//! here; what is meant for the overlay (data to peer VIPs, DNS queries to
//! the gateway) comes out of [`Lan::turn`] for the general nodes' cores.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cyphonic_platform::packet::{self, Gso, PacketSocket};

use crate::frame::{self, Checksums, Class};
use crate::prefix::{Ipv4Prefix, Ipv6Prefix};
use crate::proxy::{GeneralNode, Proxy, ProxyConfig};
use crate::ra::{RaConfig, RouterAdvertiser};
use crate::{dhcp4, dhcp6, MacAddr};

/// What the adapter is on the LAN.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// The LAN interface (kept without an IP stack of its own).
    pub iface: String,
    /// The adapter's own VIPs: gateway, DHCP server and DNS server.
    pub gateway4: Ipv4Addr,
    pub gateway6: Ipv6Addr,
    /// The overlay's ranges: on-link for the general nodes.
    pub overlay4: Ipv4Prefix,
    pub overlay6: Ipv6Prefix,
    pub domain: String,
    /// Where the DHCPv4 and DHCPv6 leases are kept, so they outlive a
    /// restart (`None`: in memory only).
    pub lease_file: Option<PathBuf>,
    /// The MTU the general nodes are told (DHCPv4 option 26, the RA's MTU
    /// option): the tunnel's, so their packets fit it (`None`: not told).
    pub mtu: Option<u16>,
}

/// The lease file's contents.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Leases {
    pub dhcp4: Vec<dhcp4::Lease>,
    pub dhcp6: Vec<dhcp6::Lease6>,
}

/// A general node as the LAN side knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralNodeAddrs {
    pub mac: MacAddr,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// The first label of its FQDN (DHCPv4 option 12).
    pub name: String,
}

/// Traffic from a general node for the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanInput {
    /// An IP packet to a peer VIP (the whole packet, no Ethernet header).
    Data {
        src_mac: MacAddr,
        dst_ip: IpAddr,
        packet: Vec<u8>,
    },
    /// A DNS query to the gateway (the UDP payload).
    Dns {
        src_mac: MacAddr,
        src: SocketAddr,
        dst: SocketAddr,
        query: Vec<u8>,
    },
}

/// What the LAN side did, for status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LanCounters {
    pub frames: u64,
    pub proxy_answers: u64,
    pub dhcp4_replies: u64,
    pub dhcp6_replies: u64,
    pub router_advertisements: u64,
    pub to_overlay: u64,
    /// Frames nothing here takes (rogue servers, RAs from the LAN, other
    /// traffic): each part counts its own reasons.
    pub ignored: u64,
    pub send_errors: u64,
}

pub struct Lan {
    socket: Arc<PacketSocket>,
    mac: MacAddr,
    link_local: Ipv6Addr,
    gateway4: Ipv4Addr,
    gateway6: Ipv6Addr,
    dhcp4: dhcp4::Server,
    dhcp6: dhcp6::Dhcp6Server,
    ra: RouterAdvertiser,
    proxy: Proxy,
    counters: LanCounters,
    buf: Vec<u8>,
    lease_file: Option<PathBuf>,
    /// The general nodes' MACs, those seen on the LAN since the start, and
    /// those seen for the first time not yet polled.
    known: HashSet<MacAddr>,
    seen: HashSet<MacAddr>,
    arrivals: VecDeque<MacAddr>,
    /// The lease file's leases, until the first list of general nodes
    /// says whose they are.
    unrestored: Option<Leases>,
}

impl Lan {
    /// Opens the LAN interface and starts advertising.
    pub fn open(config: &LanConfig, nodes: &[GeneralNodeAddrs]) -> anyhow::Result<Lan> {
        let socket = Arc::new(
            PacketSocket::open(&config.iface)
                .with_context(|| format!("opening the LAN interface {}", config.iface))?,
        );
        let mac = MacAddr(socket.mac());
        let mut dhcp4_config = dhcp4::Config::new(
            config.gateway4,
            config.overlay4.prefix_len(),
            config.domain.clone(),
        );
        dhcp4_config.interface_mtu = config.mtu;
        let dhcp4 = dhcp4::Server::new(dhcp4_config).context("DHCPv4 configuration")?;
        let dhcp6 = dhcp6::Dhcp6Server::new(dhcp6::Dhcp6Config::new(
            mac,
            config.gateway6,
            &config.domain,
            config.overlay6,
        ))
        .context("DHCPv6 configuration")?;
        let mut ra_config = RaConfig::new(mac, config.overlay6, config.gateway6);
        ra_config.mtu = config.mtu;
        let link_local = ra_config.link_local;
        let seed = u64::from_le_bytes([
            mac.0[0], mac.0[1], mac.0[2], mac.0[3], mac.0[4], mac.0[5], 0, 0,
        ]);
        let ra = RouterAdvertiser::new(ra_config, seed, Instant::now())
            .context("Router Advertisement configuration")?;
        let proxy = Proxy::new(ProxyConfig {
            mac,
            gateway_v4: config.gateway4,
            gateway_v6: config.gateway6,
            overlay_v4: config.overlay4,
            overlay_v6: config.overlay6,
        });
        let mut lan = Lan {
            socket,
            mac,
            link_local,
            gateway4: config.gateway4,
            gateway6: config.gateway6,
            dhcp4,
            dhcp6,
            ra,
            proxy,
            counters: LanCounters::default(),
            // A super-packet (GRO, TSO) of 64 KiB with its Ethernet header.
            buf: vec![0; 65_536 + 64],
            lease_file: config.lease_file.clone(),
            known: HashSet::new(),
            seen: HashSet::new(),
            arrivals: VecDeque::new(),
            unrestored: None,
        };
        if let Some(path) = &config.lease_file {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let leases: Leases = serde_json::from_slice(&bytes)
                        .with_context(|| format!("reading the leases in {}", path.display()))?;
                    lan.unrestored = Some(leases);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        // The leases are restored for the general nodes known: now, when
        // they are given, else once the list comes.
        if !nodes.is_empty() {
            lan.set_general_nodes(nodes);
        }
        Ok(lan)
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The socket, for the data plane's writes to the general nodes.
    pub fn socket(&self) -> Arc<PacketSocket> {
        self.socket.clone()
    }

    /// A general node sent its first frame since the start (it showed up,
    /// or the adapter restarted): time to stand for it in the overlay.
    pub fn poll_arrival(&mut self) -> Option<MacAddr> {
        self.arrivals.pop_front()
    }

    pub fn counters(&self) -> LanCounters {
        self.counters
    }

    /// The leases held now.
    pub fn leases(&self) -> Leases {
        Leases {
            dhcp4: self.dhcp4.leases(),
            dhcp6: self.dhcp6.leases().cloned().collect(),
        }
    }

    /// Writes the leases if they changed (to a temporary file first, so a
    /// crash leaves the old or the new file, never half of one).
    fn save_leases(&mut self) {
        let mut changed = self.dhcp6.poll_leases_changed();
        while let Some(event) = self.dhcp4.poll_event() {
            changed |= matches!(
                event,
                dhcp4::Event::LeaseGranted { .. } | dhcp4::Event::LeaseEnded { .. }
            );
        }
        let Some(path) = self.lease_file.clone().filter(|_| changed) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&self.leases())?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the leases");
        }
    }

    /// The general nodes this adapter serves now; others get nothing.
    pub fn set_general_nodes(&mut self, nodes: &[GeneralNodeAddrs]) {
        self.known = nodes.iter().map(|n| n.mac).collect();
        self.seen.retain(|m| self.known.contains(m));
        for r in self
            .dhcp4
            .set_general_nodes(nodes.iter().map(|n| (n.mac, n.vip4, n.name.clone())))
        {
            tracing::warn!(mac = %r.mac, vip4 = %r.vip4, why = %r.why, "general node left out of DHCPv4");
        }
        self.dhcp6
            .set_general_nodes(nodes.iter().map(|n| (n.mac, n.vip6)));
        self.proxy.set_general_nodes(nodes.iter().map(|n| {
            (
                n.mac,
                GeneralNode {
                    vip4: n.vip4,
                    vip6: n.vip6,
                },
            )
        }));
        if let Some(leases) = self.unrestored.take() {
            let kept4 = self.dhcp4.restore(leases.dhcp4);
            let kept6 = self.dhcp6.restore(unix_now(), leases.dhcp6);
            tracing::info!(kept4, kept6, "leases restored");
            // A node holding a lease from before the restart is on the
            // LAN even if it stays quiet (a camera waiting for
            // connections): it comes back into the overlay now, not when
            // it next speaks.
            let holders: Vec<MacAddr> = self
                .known
                .iter()
                .copied()
                .filter(|m| self.dhcp4.lease(*m).is_some() || self.dhcp6.lease(*m).is_some())
                .collect();
            for mac in holders {
                if self.seen.insert(mac) {
                    self.arrivals.push_back(mac);
                }
            }
        }
    }

    /// Waits at most `wait` for a frame, answers what is the adapter's to
    /// answer, sends what its timers want, and returns traffic for the
    /// overlay, if the frame was such.
    pub fn turn(&mut self, wait: Duration) -> std::io::Result<Option<LanInput>> {
        let mut out = Vec::with_capacity(1);
        self.turn_batch(wait, 1, &mut out)?;
        Ok(out.pop())
    }

    /// Like [`Lan::turn`] for up to `max` frames: waits at most `wait` for
    /// the first, then takes those already there; traffic for the overlay
    /// is appended to `out`.
    pub fn turn_batch(
        &mut self,
        wait: Duration,
        max: usize,
        out: &mut Vec<LanInput>,
    ) -> std::io::Result<()> {
        let now = Instant::now();
        let mut wait = match self.ra.poll_timeout() {
            Some((t, _)) => wait.min(t.saturating_duration_since(now)),
            None => wait,
        };
        for _ in 0..max {
            let Some(f) = self.socket.recv(&mut self.buf, wait)? else {
                break;
            };
            wait = Duration::ZERO;
            let checksums = if f.checksum_not_ready {
                Checksums::NotReady
            } else {
                Checksums::Verify
            };
            let frame = std::mem::take(&mut self.buf);
            self.on_frame(&frame[..f.len], checksums, f.gso, out);
            self.buf = frame;
        }
        self.on_timers();
        Ok(())
    }

    /// One frame: answered here, or its traffic for the overlay appended
    /// to `out` (a super-packet as its segments).
    fn on_frame(
        &mut self,
        frame: &[u8],
        checksums: Checksums,
        gso: Option<Gso>,
        out: &mut Vec<LanInput>,
    ) {
        self.counters.frames += 1;
        if let Some(src) = frame.get(6..12).and_then(|m| <[u8; 6]>::try_from(m).ok()) {
            let src = MacAddr(src);
            if self.known.contains(&src) && self.seen.insert(src) {
                self.arrivals.push_back(src);
            }
        }
        let unix = unix_now();
        let class = frame::classify_received(frame, checksums);
        match &class {
            Class::Arp { .. } | Class::NeighborSolicitation { .. } => {
                if let Some(answer) = self.proxy.answer(&class) {
                    self.counters.proxy_answers += 1;
                    self.send(&answer);
                }
            }
            Class::RouterSolicitation {
                src_mac, src_ip, ..
            } => self
                .ra
                .handle_solicitation(Instant::now(), *src_mac, *src_ip),
            Class::Dhcp4 {
                src_mac, payload, ..
            } => {
                if let Some(r) = self
                    .dhcp4
                    .handle(unix, *src_mac, &frame[payload.clone()])
                    .into_reply()
                {
                    let out = frame::ipv4_udp(
                        self.mac,
                        r.dst_mac,
                        r.src_ip,
                        r.dst_ip,
                        dhcp4::SERVER_PORT,
                        dhcp4::CLIENT_PORT,
                        &r.payload,
                    );
                    self.counters.dhcp4_replies += 1;
                    self.send(&out);
                }
            }
            Class::Dhcp6 {
                src_mac,
                src_ip,
                payload,
                ..
            } => {
                if let Some(r) = self
                    .dhcp6
                    .handle(unix, *src_mac, *src_ip, &frame[payload.clone()])
                {
                    let out = frame::ipv6_udp(
                        self.mac,
                        r.dst_mac,
                        self.link_local,
                        r.dst_ip,
                        dhcp6::SERVER_PORT,
                        r.dst_port,
                        &r.payload,
                    );
                    self.counters.dhcp6_replies += 1;
                    self.send(&out);
                }
            }
            Class::Dns {
                src_mac,
                src,
                dst,
                payload,
            } if dst.ip() == IpAddr::V4(self.gateway4) || dst.ip() == IpAddr::V6(self.gateway6) => {
                self.counters.to_overlay += 1;
                out.push(LanInput::Dns {
                    src_mac: *src_mac,
                    src: *src,
                    dst: *dst,
                    query: frame[payload.clone()].to_vec(),
                });
            }
            Class::Data {
                src_mac,
                dst_ip,
                packet,
                ..
            } => {
                self.counters.to_overlay += 1;
                let mut packet = frame[packet.clone()].to_vec();
                let data = |packet| LanInput::Data {
                    src_mac: *src_mac,
                    dst_ip: *dst_ip,
                    packet,
                };
                if let Some(gso) = gso {
                    // One super-packet for many wire frames (GRO, a
                    // sender's TSO): cut into what the wire carried.
                    let mut segments = Vec::new();
                    match packet::split_gso(&mut packet, gso, &mut segments) {
                        Ok(()) => out.extend(segments.into_iter().map(data)),
                        Err(e) => {
                            self.counters.ignored += 1;
                            tracing::debug!(error = %e, "cannot split a super-packet");
                        }
                    }
                    return;
                }
                if checksums == Checksums::NotReady {
                    // Left to offload by the sender's stack: the peer
                    // checks it end to end, so it is made whole here.
                    frame::complete_transport_checksum(&mut packet);
                }
                out.push(data(packet));
            }
            _ => self.counters.ignored += 1,
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(ad) = self.ra.poll_advertisement(now) {
            let out = frame::ipv6_icmp(
                ad.src_mac,
                ad.dst_mac,
                ad.src_ip,
                ad.dst_ip,
                ad.hop_limit,
                &ad.icmpv6,
            );
            self.counters.router_advertisements += 1;
            self.send(&out);
        }
        self.dhcp4.handle_timeout(unix_now());
        self.save_leases();
    }

    /// Sends a whole frame on the LAN (answers, and packets from the
    /// overlay to a general node).
    pub fn send(&mut self, frame: &[u8]) {
        if frame.is_empty() {
            return;
        }
        if let Err(e) = self.socket.send(frame) {
            self.counters.send_errors += 1;
            tracing::debug!(error = %e, "LAN send failed");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
