//! What `cyphonic status` prints on an adapter: the adapter as a node
//! (its own identity), and each general node with its lease and tunnels.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cyphonic_node::core::{NodeStatus, PeerStatus};
use cyphonic_node::daemon::CertificateStatus;
use cyphonic_node::dataplane::DataCountersSnapshot;
use cyphonic_transport::LegInfo;
use serde::Serialize;

use super::{Adapter, Phase, ADAPTER};
use crate::lan::LanCounters;

#[derive(Debug, Serialize)]
pub struct AdapterStatus {
    #[serde(flatten)]
    pub node: Option<NodeStatus>,
    /// The adapter's own certificate and its renewal.
    #[serde(flatten)]
    pub certificate: CertificateStatus,
    /// The LAN interface, once the LAN side is up.
    pub lan: Option<String>,
    /// The version of the general-node list in use.
    pub list_version: Option<u64>,
    pub general_nodes: Vec<GeneralNodeStatus>,
    pub lan_counters: LanCounters,
    /// Packets from the LAN for the overlay from a MAC whose identity is
    /// not up, or from an address that is not the node's own.
    pub lan_unknown_sender: u64,
    pub dataplane: DataCountersSnapshot,
    pub legs: Vec<LegInfo>,
}

#[derive(Debug, Serialize)]
pub struct GeneralNodeStatus {
    pub mac: String,
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// listed (not seen on the LAN yet), preparing, logging in,
    /// registered, or failed: why.
    pub state: String,
    /// Seconds left of its DHCPv4 and DHCPv6 leases, if it holds them.
    pub lease4_secs: Option<u64>,
    pub lease6_secs: Option<u64>,
    /// Its certificate's notAfter (Unix seconds), once running.
    pub cert_not_after: Option<u64>,
    /// Its certificates the adapter renewed in this run.
    pub cert_renewals: u64,
    /// Why the last renewal attempt failed, if it did and none succeeded
    /// since.
    pub cert_renewal_error: Option<String>,
    pub peers: Vec<PeerStatus>,
}

impl Adapter {
    pub(super) fn status(&self, now: Instant) -> AdapterStatus {
        let snapshot = self
            .lan
            .as_ref()
            .map(|l| l.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let general_nodes = self
            .general
            .iter()
            .map(|(mac, g)| {
                let node = self.host.node(g.id).map(|n| n.status(now));
                let state = match &g.phase {
                    Phase::Listed => "listed".to_owned(),
                    Phase::Preparing => "preparing".to_owned(),
                    Phase::Running(_) if g.registered => "registered".to_owned(),
                    Phase::Running(_) => "logging in".to_owned(),
                    Phase::Failed(why) => format!("failed: {why}"),
                };
                GeneralNodeStatus {
                    mac: mac.to_string(),
                    fqdn: g.info.fqdn.clone(),
                    vip4: g.info.vip4,
                    vip6: g.info.vip6,
                    state,
                    lease4_secs: snapshot
                        .leases
                        .dhcp4
                        .iter()
                        .find(|l| l.mac == *mac)
                        .map(|l| l.expires_unix.saturating_sub(unix)),
                    lease6_secs: snapshot
                        .leases
                        .dhcp6
                        .iter()
                        .find(|l| l.mac == *mac)
                        .map(|l| l.expires.saturating_sub(unix)),
                    cert_not_after: g.renewal.as_ref().map(|r| r.status().not_after),
                    cert_renewals: g.renewal.as_ref().map_or(0, |r| r.renewals()),
                    cert_renewal_error: g.renewal.as_ref().and_then(|r| r.status().last_error),
                    peers: node.map(|n| n.peers).unwrap_or_default(),
                }
            })
            .collect();
        AdapterStatus {
            node: self.host.node(ADAPTER).map(|n| n.status(now)),
            certificate: self.certificate.status(),
            lan: self.lan.as_ref().map(|_| self.opts.lan.clone()),
            list_version: self.list_version,
            general_nodes,
            lan_counters: snapshot.counters,
            lan_unknown_sender: snapshot.unknown_sender,
            dataplane: self.counters.snapshot(),
            legs: self.hub.legs(),
        }
    }
}
