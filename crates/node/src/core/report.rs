//! The Tunnel Report (`docs/protocol.md` §4.5, 0x15): the node tells the
//! NMS its tunnels (path, transport, bytes) for the operator's console,
//! with every KeepAlive and soon after a tunnel comes up or changes path.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cyphonic_proto::signal::{Message, ReportedTunnel, TunnelReport, MAX_REPORTED_TUNNELS};

use super::path::path_pattern;
use super::Node;

/// Reports that a tunnel change asks for go out at most this often; the
/// next KeepAlive carries any change in between.
pub const REPORT_SPACING: Duration = Duration::from_secs(1);

impl Node {
    /// The node's established tunnels, the busiest first.
    pub(super) fn tunnel_report(&self) -> TunnelReport {
        let mut tunnels: Vec<ReportedTunnel> = self
            .peers
            .values()
            .filter_map(|p| {
                let t = p.tunnel.as_ref()?;
                Some(ReportedTunnel {
                    peer_vip4: p.direction.peer.vip4,
                    path: path_pattern(t.path, p.direction.pattern),
                    transport: t.path.transport(),
                    tx_bytes: t.stats.tx_bytes.load(Ordering::Relaxed),
                    rx_bytes: t.stats.rx_bytes.load(Ordering::Relaxed),
                })
            })
            .collect();
        let total = tunnels.len().min(usize::from(u16::MAX)) as u16;
        tunnels.sort_by_key(|t| std::cmp::Reverse(t.tx_bytes.saturating_add(t.rx_bytes)));
        tunnels.truncate(MAX_REPORTED_TUNNELS);
        TunnelReport { total, tunnels }
    }

    /// Sends the report now (with a KeepAlive); an empty one only once
    /// after the last tunnel went (a node without tunnels sends none).
    pub(super) fn report_tunnels(&mut self, now: Instant) {
        let report = self.tunnel_report();
        let empty = report.total == 0;
        if empty && std::mem::replace(&mut self.reported_empty, true) {
            return;
        }
        self.reported_empty = empty;
        self.reported_at = Some(now);
        self.signaling
            .send_unanswered(Message::TunnelReport(report), &mut self.rng, &mut self.out);
    }

    /// A tunnel came up or changed path: report it unless a report went
    /// out within [`REPORT_SPACING`] (the next KeepAlive's then carries it).
    pub(super) fn report_tunnels_soon(&mut self, now: Instant) {
        if self
            .reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_SPACING)
        {
            self.report_tunnels(now);
        }
    }
}
