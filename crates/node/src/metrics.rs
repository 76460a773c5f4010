//! `/metrics` for Prometheus: the node's status (what `cyphonic status
//! --json` prints) as metrics in the text exposition format, so the two
//! always agree. Served by the daemon when `--metrics-listen` is given
//! (off by default, loopback only).

use std::collections::BTreeMap;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;

type Labels = Vec<(String, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The data plane's packet counters; every other number in `dataplane`
/// counts drops (or adjustments) by reason.
const DATAPLANE_PACKETS: [(&str, &str); 2] = [("rx_packets", "rx"), ("tx_packets", "tx")];

/// The counters of tunnels established, by role: `handshakes_total`,
/// not `events_total`.
const HANDSHAKES: [(&str, &str); 2] = [
    ("handshakes_initiator", "initiator"),
    ("handshakes_responder", "responder"),
];

/// A histogram as `status --json` reports it, for the encoder: the
/// status's cumulative counts per bound (ms) become a count per bucket
/// (bounds in seconds), the last above every bound.
#[derive(Debug)]
struct ReportedHistogram {
    sum_seconds: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl ReportedHistogram {
    /// From `{"buckets": [{"le_ms", "count"}...], "count", "sum_ms"}`.
    fn of(v: &Value) -> Option<Self> {
        let count = v["count"].as_u64()?;
        let mut buckets = Vec::new();
        let mut below = 0;
        for b in v["buckets"].as_array()? {
            let cumulative = b["count"].as_u64()?;
            buckets.push((b["le_ms"].as_f64()? / 1e3, cumulative.saturating_sub(below)));
            below = cumulative;
        }
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        Some(ReportedHistogram {
            sum_seconds: v["sum_ms"].as_f64()? / 1e3,
            count,
            buckets,
        })
    }
}

impl EncodeMetric for ReportedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Renders a `status --json` report as Prometheus text.
pub fn render(status: &Value) -> String {
    let mut registry = Registry::with_prefix("cyphonic_node");

    let up = gauge_family(
        &mut registry,
        "cloud",
        "1 when the node is logged in / registered with the NMS",
    );
    for state in ["logged_in", "registered"] {
        let on = status["cloud"][state].as_bool().unwrap_or(false);
        up.get_or_create(&labels(&[("state", state)]))
            .set(i64::from(on));
    }

    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    let tunnels = gauge_family(&mut registry, "tunnels", "Tunnels by path and transport");
    let mut by_path: BTreeMap<(String, String), i64> = BTreeMap::new();
    for p in &peers {
        if p["state"] == "established" {
            let path = p["path"].as_str().unwrap_or("unknown").to_owned();
            let transport = p["transport"].as_str().unwrap_or("unknown").to_owned();
            *by_path.entry((path, transport)).or_default() += 1;
        }
    }
    for ((path, transport), n) in by_path {
        tunnels
            .get_or_create(&labels(&[("path", &path), ("transport", &transport)]))
            .set(n);
    }
    let peer_bytes = counter_family(
        &mut registry,
        "peer_bytes",
        "Bytes through each peer's tunnel",
    );
    let peer_packets = counter_family(
        &mut registry,
        "peer_packets",
        "Packets through each peer's tunnel",
    );
    for p in &peers {
        let peer = p["fqdn"].as_str().unwrap_or("?");
        for (dir, bytes, packets) in [
            ("rx", "rx_bytes", "rx_packets"),
            ("tx", "tx_bytes", "tx_packets"),
        ] {
            let l = labels(&[("peer", peer), ("direction", dir)]);
            peer_bytes.get_or_create(&l).inc_by(u64_of(&p[bytes]));
            peer_packets.get_or_create(&l).inc_by(u64_of(&p[packets]));
        }
    }

    let packets = counter_family(&mut registry, "packets", "Packets through the data plane");
    let drops = counter_family(
        &mut registry,
        "dataplane_events",
        "Data-plane drops and adjustments, by reason",
    );
    if let Some(dataplane) = status["dataplane"].as_object() {
        for (name, value) in dataplane {
            match DATAPLANE_PACKETS.iter().find(|(n, _)| n == name) {
                Some((_, dir)) => packets
                    .get_or_create(&labels(&[("direction", dir)]))
                    .inc_by(u64_of(value)),
                None => drops
                    .get_or_create(&labels(&[("reason", name)]))
                    .inc_by(u64_of(value)),
            };
        }
    }

    let events = counter_family(
        &mut registry,
        "events",
        "Node events (handshakes, punches, failovers, route selections), by kind",
    );
    let handshakes = counter_family(
        &mut registry,
        "handshakes",
        "Tunnels established by a completed handshake, by role (rekeys are events)",
    );
    if let Some(counters) = status["counters"].as_object() {
        for (name, value) in counters {
            if let Some((_, role)) = HANDSHAKES.iter().find(|(n, _)| n == name) {
                handshakes
                    .get_or_create(&labels(&[("role", role)]))
                    .inc_by(u64_of(value));
            } else if value.is_u64() {
                events
                    .get_or_create(&labels(&[("event", name)]))
                    .inc_by(u64_of(value));
            }
        }
    }
    let selection = &status["route_selection"];
    for (event, field) in [
        ("route_selections", "started"),
        ("route_selection_timeouts", "timed_out"),
    ] {
        if let Some(n) = selection[field].as_u64() {
            events.get_or_create(&labels(&[("event", event)])).inc_by(n);
        }
    }
    if let Some(histogram) = ReportedHistogram::of(selection) {
        registry.register_with_unit(
            "route_selection",
            "From a Direction Request to the NMS's answer (a route or an error)",
            Unit::Seconds,
            histogram,
        );
    }
    let moves = counter_family(&mut registry, "moves", "Network moves the node followed");
    moves
        .get_or_create(&Vec::new())
        .inc_by(u64_of(&status["mobility"]["moves"]));
    let renewals = counter_family(
        &mut registry,
        "certificate_renewals",
        "Certificate renewals",
    );
    renewals
        .get_or_create(&Vec::new())
        .inc_by(u64_of(&status["cert_renewals"]));
    let expiry = gauge_family(
        &mut registry,
        "certificate_not_after_seconds",
        "When the node certificate expires (Unix time)",
    );
    expiry
        .get_or_create(&Vec::new())
        .set(i64::try_from(u64_of(&status["cert_not_after"])).unwrap_or(i64::MAX));

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        serde_json::json!({
            "fqdn": "n1.cyphonic.internal",
            "cloud": { "logged_in": true, "registered": true },
            "peers": [
                { "fqdn": "n2.cyphonic.internal", "state": "established", "path": "direct", "transport": "udp",
                  "rx_bytes": 1000, "tx_bytes": 2000, "rx_packets": 10, "tx_packets": 20 },
                { "fqdn": "n3.cyphonic.internal", "state": "established", "path": "relayed", "transport": "udp",
                  "rx_bytes": 5, "tx_bytes": 6, "rx_packets": 1, "tx_packets": 1 },
                { "fqdn": "n4.cyphonic.internal", "state": "selecting", "path": "none", "transport": "udp",
                  "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0 }
            ],
            "dataplane": { "rx_packets": 11, "tx_packets": 21, "rx_auth_failed": 3 },
            "counters": { "handshake_failures": 2, "relay_failovers": 1,
                          "handshakes_initiator": 3, "handshakes_responder": 1 },
            "route_selection": {
                "started": 5, "timed_out": 1,
                "buckets": [{ "le_ms": 1, "count": 0 }, { "le_ms": 5, "count": 2 },
                            { "le_ms": 50, "count": 3 }, { "le_ms": 10000, "count": 3 }],
                "count": 4, "sum_ms": 20512.5
            },
            "mobility": { "moves": 4 },
            "cert_renewals": 1,
            "cert_not_after": 1_900_000_000u64
        })
    }

    #[test]
    fn the_status_becomes_metrics_with_the_same_numbers() {
        let text = render(&sample());
        for line in [
            "cyphonic_node_cloud{state=\"registered\"} 1",
            "cyphonic_node_tunnels{path=\"direct\",transport=\"udp\"} 1",
            "cyphonic_node_tunnels{path=\"relayed\",transport=\"udp\"} 1",
            "cyphonic_node_peer_bytes_total{peer=\"n2.cyphonic.internal\",direction=\"tx\"} 2000",
            "cyphonic_node_packets_total{direction=\"rx\"} 11",
            "cyphonic_node_dataplane_events_total{reason=\"rx_auth_failed\"} 3",
            "cyphonic_node_events_total{event=\"handshake_failures\"} 2",
            "cyphonic_node_events_total{event=\"route_selections\"} 5",
            "cyphonic_node_events_total{event=\"route_selection_timeouts\"} 1",
            "cyphonic_node_handshakes_total{role=\"initiator\"} 3",
            "cyphonic_node_handshakes_total{role=\"responder\"} 1",
            "# TYPE cyphonic_node_route_selection_seconds histogram",
            "cyphonic_node_route_selection_seconds_count 4",
            "cyphonic_node_route_selection_seconds_bucket{le=\"0.005\"} 2",
            "cyphonic_node_route_selection_seconds_bucket{le=\"+Inf\"} 4",
            "cyphonic_node_moves_total 4",
            "cyphonic_node_certificate_not_after_seconds 1900000000",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("path=\"none\""),
            "a tunnel not up is not counted"
        );
        assert!(
            !text.contains("event=\"handshakes_"),
            "handshakes are not events too"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_route_selection_histogram_parses_as_the_status_reports_it() {
        let status = sample();
        let text = render(&status);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("Prometheus text");
        let name = "cyphonic_node_route_selection_seconds";
        let buckets = scrape
            .samples
            .iter()
            .find_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) if s.metric == name => Some(b.clone()),
                _ => None,
            })
            .expect("the histogram");
        let got: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        assert_eq!(
            got,
            vec![
                (0.001, 0.0),
                (0.005, 2.0),
                (0.05, 3.0),
                (10.0, 3.0),
                (f64::INFINITY, 4.0)
            ],
            "the status's cumulative counts, bounds in seconds"
        );
        let plain = |metric: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == metric)
                .map(|s| s.value.clone())
        };
        assert_eq!(
            plain(&format!("{name}_count")),
            Some(prometheus_parse::Value::Untyped(4.0))
        );
        assert_eq!(
            plain(&format!("{name}_sum")),
            Some(prometheus_parse::Value::Untyped(20.5125))
        );
    }

    #[test]
    fn a_status_without_route_selections_has_no_histogram() {
        let mut status = sample();
        status["route_selection"] = Value::Null;
        let text = render(&status);
        assert!(!text.contains("route_selection"), "{text}");
    }
}
