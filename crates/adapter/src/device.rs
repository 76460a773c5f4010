//! The general nodes' end of the data plane: packets opened for a general
//! node leave on the LAN as Ethernet frames to its MAC, built in the
//! headroom in front of each packet (no copy); and the table of who is
//! who on the LAN (MAC, identity, VIPs) that both directions read.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use cyphonic_node::dataplane::Device;
use cyphonic_node::host::IdentityId;
use cyphonic_platform::packet::PacketSocket;
use cyphonic_proto::ip;

use crate::frame::{EtherType, EthernetFrame, EthernetRepr, ETHERNET_HEADER_LEN};
use crate::lan::GeneralNodeAddrs;
use crate::MacAddr;

/// The general nodes the adapter stands for in the overlay now, by
/// identity and by MAC.
#[derive(Debug, Default)]
struct Members {
    by_id: HashMap<IdentityId, GeneralNodeAddrs>,
    by_mac: HashMap<MacAddr, IdentityId>,
}

/// The LAN as the data plane's [`Device`].
pub struct LanDevice {
    socket: Arc<PacketSocket>,
    mac: MacAddr,
    members: RwLock<Members>,
}

impl LanDevice {
    pub fn new(socket: Arc<PacketSocket>, mac: MacAddr) -> LanDevice {
        LanDevice {
            socket,
            mac,
            members: RwLock::new(Members::default()),
        }
    }

    /// The general node `addrs` is identity `id` from now on.
    pub fn join(&self, id: IdentityId, addrs: GeneralNodeAddrs) {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = m.by_id.remove(&id) {
            m.by_mac.remove(&old.mac);
        }
        m.by_mac.insert(addrs.mac, id);
        m.by_id.insert(id, addrs);
    }

    pub fn leave(&self, id: IdentityId) {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = m.by_id.remove(&id) {
            m.by_mac.remove(&old.mac);
        }
    }

    /// The adapter's own MAC on the LAN.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The identity standing for the general node with this MAC, if it
    /// may send `src` (one of its own VIPs).
    pub fn sender(&self, mac: MacAddr, src: IpAddr) -> Option<IdentityId> {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        let id = *m.by_mac.get(&mac)?;
        owns(m.by_id.get(&id)?, src).then_some(id)
    }

    /// The identity standing for the general node with this MAC.
    pub fn identity(&self, mac: MacAddr) -> Option<IdentityId> {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        m.by_mac.get(&mac).copied()
    }

    /// Sends a whole frame on the LAN.
    pub fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        self.socket.send(frame)
    }

    /// The MAC of the general node with VIP `dst`.
    fn mac_of(&self, dst: IpAddr) -> Option<MacAddr> {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.values().find(|n| owns(n, dst)).map(|n| n.mac)
    }
}

fn owns(n: &GeneralNodeAddrs, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a == n.vip4,
        IpAddr::V6(a) => a == n.vip6,
    }
}

impl Device for LanDevice {
    /// Each packet goes to the MAC of the general node it is addressed to,
    /// its Ethernet header written into the headroom.
    fn send_batch(&self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()> {
        let mut last = Ok(());
        let Some(at) = offset.checked_sub(ETHERNET_HEADER_LEN) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no room for an Ethernet header",
            ));
        };
        for b in bufs.iter_mut() {
            let packet = &b[offset..];
            let Some(dst) = ip::inner_destination(packet) else {
                continue;
            };
            let Some(dst_mac) = self.mac_of(dst) else {
                continue;
            };
            let ethertype = if dst.is_ipv4() {
                EtherType::Ipv4
            } else {
                EtherType::Ipv6
            };
            EthernetRepr {
                dst_addr: dst_mac,
                src_addr: self.mac,
                ethertype,
            }
            .emit(&mut EthernetFrame::new_unchecked(&mut b[at..offset]));
            if let Err(e) = self.socket.send(&b[at..]) {
                last = Err(e);
            }
        }
        last
    }

    fn delivers_to(&self, id: IdentityId, dst: IpAddr) -> bool {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.get(&id).is_some_and(|n| owns(n, dst))
    }
}
