//! The cloud's `/metrics` (Prometheus text): the NMS's and the TRS's
//! counters, served on `metrics_listen` when cloud.toml sets it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cyphonic_cloud_core::nms::NmsCounters;
use cyphonic_cloud_core::trs::TrsCounters;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters that are levels, not totals: exported as gauges.
const GAUGES: [&str; 3] = ["sessions", "trs_live", "trs_dead"];

/// Every number of `counters` (a serialized counters struct) under
/// `cyphonic_cloud_<service>_<name>`.
fn register(registry: &mut Registry, service: &str, counters: serde_json::Value) {
    let Some(fields) = counters.as_object() else {
        return;
    };
    for (name, value) in fields {
        let Some(v) = value.as_u64() else { continue };
        let metric = format!("{service}_{name}");
        let help = format!("the {} {}", service.to_uppercase(), name.replace('_', " "));
        if GAUGES.contains(&name.as_str()) {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            registry.register(metric, help, g);
        } else {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            registry.register(metric, help, c);
        }
    }
}

/// Renders the counters of the services this process runs.
pub fn render(nms: Option<NmsCounters>, trs: Option<TrsCounters>) -> String {
    let mut registry = Registry::with_prefix("cyphonic_cloud");
    if let Some(nms) = nms {
        register(
            &mut registry,
            "nms",
            serde_json::to_value(nms).unwrap_or_default(),
        );
    }
    if let Some(trs) = trs {
        register(
            &mut registry,
            "trs",
            serde_json::to_value(trs).unwrap_or_default(),
        );
    }
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}

/// Where the counters come from on each scrape.
#[derive(Clone)]
pub struct Sources {
    pub nms: Option<tokio::sync::watch::Receiver<NmsCounters>>,
    pub trs: Option<Arc<Mutex<crate::trs::Trs>>>,
}

impl Sources {
    fn render(&self) -> String {
        let nms = self.nms.as_ref().map(|rx| *rx.borrow());
        let trs = self
            .trs
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()).counters());
        render(nms, trs)
    }
}

/// Serves `/metrics` on `listen` until `stop`.
pub async fn serve(
    listen: SocketAddr,
    sources: Sources,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {listen}: {e}"))?;
    tracing::info!(%listen, "metrics on /metrics");
    let render = move || {
        let body = sources.render();
        async move { Some(body) }
    };
    tokio::select! {
        () = cyphonic_transport::metrics_http::serve(listener, render) => {}
        _ = stop.changed() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_totals_and_live_sessions_a_gauge() {
        let nms = NmsCounters {
            sessions: 2,
            registrations: 3,
            directions: 2,
            ..NmsCounters::default()
        };
        let trs = TrsCounters {
            forwarded_bytes: 1500,
            sessions: 4,
            ..TrsCounters::default()
        };
        let text = render(Some(nms), Some(trs));
        for line in [
            "cyphonic_cloud_nms_registrations_total 3",
            "cyphonic_cloud_nms_directions_total 2",
            "cyphonic_cloud_trs_forwarded_bytes_total 1500",
            "cyphonic_cloud_trs_sessions 4",
            "cyphonic_cloud_nms_sessions 2",
            "# TYPE cyphonic_cloud_trs_sessions gauge",
            "# TYPE cyphonic_cloud_nms_trs_live gauge",
            "# TYPE cyphonic_cloud_nms_trs_dead gauge",
            "cyphonic_cloud_nms_trs_reports_bad_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let only_trs = render(None, Some(trs));
        assert!(!only_trs.contains("nms_"), "{only_trs}");
    }
}
