//! `cyphonic lab direct`: the cloud and three nodes on one link, no NAT
//! (route pattern 1), once on an IPv4 underlay and once IPv6-only. Checks
//! name resolution, ping, iperf3, general names, that no plaintext crosses
//! the underlay, that forged, replayed and spoofed packets are dropped and
//! counted, and that nodes recover from a cloud restart.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};

use super::overlay::{
    iperf, longest_gap, parse_ping, reply_times, send_marker, Overlay, Report, Underlay,
    CLOUD_METRICS, GENERAL_ADDR, GENERAL_NAME,
};
use super::pcap;
use crate::wait_until;

/// Where each node serves /metrics (in its own namespace).
const METRICS: &str = "127.0.0.1:9101";

/// The value of the sample `name` with `labels` in a scrape.
fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .with_context(|| format!("no {name}{labels:?} in the scrape"))
}

/// Node `i`'s /metrics, read between two `status --json`: every counter
/// lies between the two reads, gauges equal them.
fn metrics_agree(o: &Overlay, i: usize) -> anyhow::Result<String> {
    let before = o.status(i)?;
    let text = o.sh(i, &format!("curl -sSf http://{METRICS}/metrics"))?;
    let after = o.status(i)?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .context("not Prometheus text")?;
    let value = |name: &str, labels: &[(&str, &str)]| sample(&scrape, name, labels);
    let between = |what: &str, got: f64, lo: &serde_json::Value, hi: &serde_json::Value| {
        let (lo, hi) = (lo.as_f64().unwrap_or(-1.0), hi.as_f64().unwrap_or(-1.0));
        ensure!(
            lo <= got && got <= hi,
            "{what}: metrics {got}, status {lo}..{hi}"
        );
        Ok(())
    };
    for (dir, field) in [("rx", "rx_packets"), ("tx", "tx_packets")] {
        let got = value("cyphonic_node_packets_total", &[("direction", dir)])?;
        between(
            field,
            got,
            &before["dataplane"][field],
            &after["dataplane"][field],
        )?;
    }
    let auth = value(
        "cyphonic_node_dataplane_events_total",
        &[("reason", "rx_auth_failed")],
    )?;
    between(
        "rx_auth_failed",
        auth,
        &before["dataplane"]["rx_auth_failed"],
        &after["dataplane"]["rx_auth_failed"],
    )?;
    let peers = after["peers"].as_array().cloned().unwrap_or_default();
    ensure!(!peers.is_empty(), "n{} has no peers to compare", i + 1);
    for p in &peers {
        let fqdn = p["fqdn"].as_str().unwrap_or_default();
        let got = value(
            "cyphonic_node_peer_bytes_total",
            &[("peer", fqdn), ("direction", "tx")],
        )?;
        let was = before["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|q| q["fqdn"] == fqdn))
            .map(|q| q["tx_bytes"].clone())
            .unwrap_or(serde_json::json!(0));
        between(&format!("{fqdn} tx_bytes"), got, &was, &p["tx_bytes"])?;
    }
    let up = peers
        .iter()
        .filter(|p| p["state"] == "established" && p["path"] == "direct")
        .count();
    let direct = value(
        "cyphonic_node_tunnels",
        &[("path", "direct"), ("transport", "udp")],
    )?;
    ensure!(
        direct as usize == up,
        "direct tunnels: metrics {direct}, status {up}"
    );
    ensure!(value("cyphonic_node_cloud", &[("state", "registered")])? == 1.0);

    // Tunnels established, by role (rekeys apart): n1 has set some up.
    let mut handshakes = 0.0;
    for role in ["initiator", "responder"] {
        let got = value("cyphonic_node_handshakes_total", &[("role", role)])?;
        let field = format!("handshakes_{role}");
        between(
            &field,
            got,
            &before["counters"][&field],
            &after["counters"][&field],
        )?;
        handshakes += got;
    }
    ensure!(handshakes >= 1.0, "{handshakes} handshakes completed");

    // Route selection: one histogram entry per route selection n1 made,
    // each answered; at least one per peer it set a tunnel up to.
    let selections = &after["route_selection"];
    let count = value("cyphonic_node_route_selection_seconds_count", &[])?;
    between(
        "route selections answered",
        count,
        &before["route_selection"]["count"],
        &selections["count"],
    )?;
    let started = selections["started"].as_f64().unwrap_or(-1.0);
    ensure!(
        count == started,
        "the histogram holds {count} route selections, the node made {started}"
    );
    let initiated = peers.iter().filter(|p| p["role"] == "initiator").count();
    ensure!(
        count >= initiated as f64,
        "{count} route selections for {initiated} tunnels initiated"
    );
    let buckets = scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(b)
                if s.metric == "cyphonic_node_route_selection_seconds" =>
            {
                Some(b.clone())
            }
            _ => None,
        })
        .context("no route selection histogram in the scrape")?;
    let status_buckets = selections["buckets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        buckets.len() == status_buckets.len() + 1,
        "{} buckets in /metrics, {} (and +Inf) in the status",
        buckets.len(),
        status_buckets.len()
    );
    for (b, s) in buckets.iter().zip(&status_buckets) {
        let le = s["le_ms"].as_f64().unwrap_or(-1.0) / 1e3;
        ensure!(
            (b.less_than - le).abs() < 1e-9 && b.count == s["count"].as_f64().unwrap_or(-1.0),
            "bucket le {}: {} in /metrics, status {s}",
            b.less_than,
            b.count
        );
    }
    let all = buckets.last().map_or(-1.0, |b| b.count);
    ensure!(all == count, "+Inf bucket {all}, count {count}");
    let fastest = status_buckets
        .iter()
        .find(|b| b["count"].as_f64() == Some(count))
        .map_or_else(|| "+Inf".to_owned(), |b| format!("{} ms", b["le_ms"]));
    Ok(format!(
        "{} samples; {up} direct tunnels, {} peers' bytes; {handshakes} handshakes; \
         {count} route selections, all within {fastest}",
        scrape.samples.len(),
        peers.len()
    ))
}

/// The cloud's /metrics: the NMS registered the three nodes (at least
/// once each) and the TRS reports its live sessions.
fn cloud_metrics(o: &Overlay) -> anyhow::Result<String> {
    let out = o.lab.sh(
        "cloud",
        &format!("curl -sSf http://{CLOUD_METRICS}/metrics"),
    )?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .context("not Prometheus text")?;
    let value = |name: &str| sample(&scrape, name, &[]);
    let registrations = value("cyphonic_cloud_nms_registrations_total")?;
    ensure!(registrations >= 3.0, "{registrations} registrations");
    let sessions = value("cyphonic_cloud_trs_sessions")?;
    ensure!(sessions >= 0.0);
    Ok(format!(
        "{registrations} registrations, {sessions} relay sessions"
    ))
}

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    for underlay in [Underlay::V4, Underlay::V6Only] {
        println!("direct, {}:", underlay.name());
        if let Err(e) = run_one(bin, underlay, &mut report) {
            report.check("scenario set-up", Err(e));
        }
    }
    println!("direct: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

/// Brings the cloud and `n` nodes up and waits until all are registered.
pub fn bring_up(
    bin: &Path,
    scenario: &str,
    underlay: Underlay,
    names: &[&str],
) -> anyhow::Result<Overlay> {
    bring_up_with(bin, scenario, underlay, names, &[])
}

/// [`bring_up`], each node run with `node_args` too.
pub fn bring_up_with(
    bin: &Path,
    scenario: &str,
    underlay: Underlay,
    names: &[&str],
    node_args: &[&str],
) -> anyhow::Result<Overlay> {
    let mut o = Overlay::build(scenario, bin, underlay, names)?;
    o.node_args = node_args.iter().map(|a| (*a).to_owned()).collect();
    o.start_cloud()?;
    for i in 0..names.len() {
        o.enroll(i)?;
    }
    for i in 0..names.len() {
        o.start_node(i)?;
    }
    for (i, name) in names.iter().enumerate() {
        o.wait_registered(i, Duration::from_secs(20))
            .with_context(|| {
                format!(
                    "log of {}:\n{}\ncloud log:\n{}",
                    name,
                    o.node_log(i),
                    o.lab.log("cloud")
                )
            })?;
    }
    Ok(o)
}

fn run_one(bin: &Path, underlay: Underlay, report: &mut Report) -> anyhow::Result<()> {
    let mut o = bring_up_with(
        bin,
        "direct",
        underlay,
        &["n1", "n2", "n3"],
        &["--metrics-listen", METRICS],
    )?;
    let s2 = o.status(1)?;
    let (vip4, vip6) = (
        s2["vip4"].as_str().context("n2 has no VIPv4")?.to_owned(),
        s2["vip6"].as_str().context("n2 has no VIPv6")?.to_owned(),
    );
    let n2 = o.fqdn(1);
    report.check(
        "cloud up, three nodes enrolled and registered",
        Ok(format!("n2 = {vip4}, {vip6}")),
    );

    report.check(
        &format!("getent hosts {n2} gives n2's VIPv4 and VIPv6"),
        (|| {
            let out = o.sh(0, &format!("getent ahosts {n2}"))?;
            ensure!(
                out.contains(&vip4) && out.contains(&vip6),
                "getent ahosts printed {out:?}"
            );
            let hosts = o.sh(0, &format!("getent hosts {n2}"))?;
            ensure!(
                hosts.contains(&vip4) || hosts.contains(&vip6),
                "getent hosts printed {hosts:?}"
            );
            Ok(hosts.trim().to_owned())
        })(),
    );
    let s3 = o.status(2)?;
    let n3_vip6 = s3["vip6"].as_str().context("n3 has no VIPv6")?.to_owned();
    report.check(
        "n2 and n3 ping each other's VIPv4 at the same instant, never looked up: every reply arrives",
        simultaneous_vip_pings(&mut o),
    );
    report.check(
        &format!("n1 pings n3's VIPv6 {n3_vip6}, never looked up: every reply arrives"),
        (|| {
            let out = o.sh(0, &format!("ping -6 -c3 -W3 {n3_vip6}"))?;
            let (rx, avg) = parse_ping(&out).context("no ping summary")?;
            ensure!(rx == 3, "{rx}/3 replies:\n{out}");
            Ok(format!("3/3 replies, avg {avg:.2} ms"))
        })(),
    );
    report.check(
        &format!(
            "ping -c3 {n2}: one thread per node reads its socket and the TUN while traffic is light \
             (n1 sends the requests, n2 the replies from the thread that wrote the requests)"
        ),
        (|| {
            let counter = |o: &Overlay, i: usize, name: &str| -> anyhow::Result<u64> {
                o.status(i)?["dataplane"][name]
                    .as_u64()
                    .with_context(|| format!("no dataplane.{name} in the status"))
            };
            let light = counter(&o, 0, "tx_light")?;
            let turned = counter(&o, 1, "tx_turned_around")?;
            let out = o.sh(0, &format!("ping -c3 -W2 {n2}"))?;
            let (rx, avg) = parse_ping(&out).context("no ping summary")?;
            ensure!(rx == 3, "{rx}/3 replies");
            let light = counter(&o, 0, "tx_light")?.saturating_sub(light);
            let turned = counter(&o, 1, "tx_turned_around")?.saturating_sub(turned);
            // No other thread waits on the TUN while traffic is light: no
            // race for the replies.
            ensure!(turned == 3, "{turned}/3 echo replies sent by n2's receiving thread");
            ensure!(light >= 3, "{light} of n1's packets sent by its receiving thread");
            Ok(format!(
                "3/3 replies, avg {avg:.2} ms; n1's receiving thread sent {light} packets, \
                 n2's turned 3/3 replies around"
            ))
        })(),
    );
    report.check(
        &format!("ping -6 -c3 {n2}"),
        (|| {
            let out = o.sh(0, &format!("ping -6 -c3 -W2 {n2}"))?;
            let (rx, avg) = parse_ping(&out).context("no ping summary")?;
            ensure!(rx == 3, "{rx}/3 replies");
            Ok(format!("3/3 replies, avg {avg:.2} ms"))
        })(),
    );
    report.check(
        "n1 -> n2 path is direct over UDP",
        (|| {
            let p = o.peer(0, &n2)?;
            ensure!(p["path"] == "direct", "path is {}", p["path"]);
            ensure!(p["transport"] == "udp", "transport is {}", p["transport"]);
            ensure!(p["state"] == "established", "state is {}", p["state"]);
            let ep = p["endpoint"].as_str().unwrap_or_default().to_owned();
            let want = o.nodes[1].underlay;
            ensure!(
                ep.contains(&want.to_string()),
                "endpoint {ep} is not n2's address {want}"
            );
            Ok(format!("endpoint {ep}"))
        })(),
    );
    report.check(
        &format!("cyphonic ping {n2} shows the path of each reply"),
        (|| {
            let state = o.nodes[0].state_dir.to_string_lossy().to_string();
            let out = o.sh(
                0,
                &format!("{} ping -c 2 --state-dir {state} {n2}", o.bin()),
            )?;
            let pongs: Vec<&str> = out.lines().filter(|l| l.starts_with("pong from")).collect();
            ensure!(pongs.len() == 2, "{out}");
            ensure!(pongs.iter().all(|l| l.contains("(direct, udp)")), "{out}");
            Ok(pongs[0].to_owned())
        })(),
    );
    report.check(
        "iperf3 TCP through the overlay: load hands the TUN to its reader thread on both nodes",
        (|| {
            let to_reader = |o: &Overlay| -> anyhow::Result<[u64; 2]> {
                let mut n = [0; 2];
                for (i, v) in n.iter_mut().enumerate() {
                    *v = o.status(i)?["dataplane"]["tun_to_reader"]
                        .as_u64()
                        .context("no dataplane.tun_to_reader in the status")?;
                }
                Ok(n)
            };
            let before = to_reader(&o)?;
            let mbps = iperf(&mut o, 0, 1, &vip4, 1, 2)?;
            let after = to_reader(&o)?;
            ensure!(
                after[0] > before[0] && after[1] > before[1],
                "the TUN reader never took the TUN: {before:?} -> {after:?}"
            );
            Ok(format!("{mbps:.0} Mbit/s"))
        })(),
    );
    report.check(
        "/metrics, scraped with curl and parsed as Prometheus text, agrees with status --json",
        metrics_agree(&o, 0),
    );
    report.check(
        "the cloud's /metrics counts the registrations and relay sessions",
        cloud_metrics(&o),
    );
    report.check(
        &format!("general name {GENERAL_NAME} still resolves through the host's resolver"),
        (|| {
            let out = o.sh(0, &format!("getent hosts {GENERAL_NAME}"))?;
            ensure!(out.contains(GENERAL_ADDR), "getent printed {out:?}");
            Ok(out.trim().to_owned())
        })(),
    );
    report.check("no plaintext on the underlay", marker_check(&mut o, &vip4));
    report.check(
        "tampered and replayed data packets are dropped and counted",
        forgery_check(&mut o, &vip4),
    );
    report.check(
        "a packet with another node's VIP as inner source is dropped",
        spoof_check(&mut o, &vip4),
    );
    report.check(
        "a running direct tunnel does not notice the cloud's death",
        cloud_death_check(&mut o, &vip4),
    );
    report.check(
        "cloud restart: nodes re-register, VIPs unchanged, new lookups work",
        restart_check(&mut o),
    );
    Ok(())
}

/// n2 and n3, which never looked each other up, start pinging each
/// other's VIPv4 at the same instant: the first packets start route
/// selection by VIP on both sides, one route serves both, and no reply is
/// lost (the first included: the responder's packets must not overtake
/// its Tunnel Response, protocol §5.4).
fn simultaneous_vip_pings(o: &mut Overlay) -> anyhow::Result<String> {
    let vip = |o: &Overlay, i: usize| -> anyhow::Result<String> {
        Ok(o.status(i)?["vip4"]
            .as_str()
            .context("no VIPv4")?
            .to_owned())
    };
    let (v2, v3) = (vip(o, 1)?, vip(o, 2)?);
    let mut logs = Vec::new();
    for (i, to) in [(1, &v3), (2, &v2)] {
        let log = o.lab.dir().join(format!("vip-ping-{i}.log"));
        let ns = o.nodes[i].ns.clone();
        let cmd = format!("ping -n -c 5 -i 0.2 -W 3 {to} > {}", log.display());
        o.lab
            .spawn(&ns, &["sh", "-c", &cmd], &format!("vip-ping-{i}"), &[])?;
        logs.push(log);
    }
    let outs = wait_until("both pings to end", Duration::from_secs(20), || {
        let outs: Vec<String> = logs
            .iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect();
        Ok(outs
            .iter()
            .all(|o| o.contains("packets transmitted"))
            .then_some(outs))
    })?;
    let mut figures = Vec::new();
    for (name, out) in ["n2 -> n3", "n3 -> n2"].iter().zip(&outs) {
        let (rx, avg) = parse_ping(out).context("no ping summary")?;
        ensure!(rx == 5, "{name}: {rx}/5 replies:\n{out}");
        let first = out
            .lines()
            .find(|l| l.contains("icmp_seq=1 "))
            .and_then(|l| l.split("time=").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or("?");
        figures.push(format!(
            "{name} 5/5 (first reply {first} ms, avg {avg:.2} ms)"
        ));
    }
    Ok(figures.join("; "))
}

/// Sends a marker through the tunnel: it must reach n2's TUN device (so it
/// was really sent) and never appear on n1's underlay link.
fn marker_check(o: &mut Overlay, vip4: &str) -> anyhow::Result<String> {
    let marker = format!("CYPHONIC-MARKER-{}", o.lab.prefix());
    let mut underlay = o.lab.capture(&o.nodes[0].ns.clone(), "eth0")?;
    let mut inner = o.lab.capture(&o.nodes[1].ns.clone(), "cy0")?;
    let bytes = send_marker(o, 0, vip4, &marker, &mut inner, &mut underlay)?;
    let seen_on_underlay = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    let underlay_packets = pcap::udp_payloads(&bytes, 4501).len();
    ensure!(
        !seen_on_underlay,
        "the marker crossed the underlay in clear"
    );
    ensure!(
        underlay_packets > 0,
        "no tunnel packets were captured on the underlay"
    );
    Ok(format!(
        "marker seen inside n2, absent from {underlay_packets} underlay tunnel packets"
    ))
}

/// Replays a captured data packet and sends a tampered copy to n2: both are
/// dropped and counted, and the tunnel keeps working.
fn forgery_check(o: &mut Overlay, vip4: &str) -> anyhow::Result<String> {
    let mut cap = o.lab.capture(&o.nodes[1].ns.clone(), "eth0")?;
    o.sh(0, &format!("ping -c2 -W2 {vip4}"))?;
    let packets = pcap::udp_payloads(&cap.stop()?, 4501);
    let data = packets
        .into_iter()
        .find(|(_, dport, p)| *dport == 4501 && p.first() == Some(&4))
        .map(|(_, _, p)| p)
        .context("no data packet captured towards n2")?;
    let before = o.status(1)?["dataplane"].clone();
    // A forgery with a counter never used: it passes the replay window
    // and must fail authentication.
    let mut tampered = data.clone();
    let counter = u64::from_be_bytes(tampered[8..16].try_into()?) + 1_000;
    tampered[8..16].copy_from_slice(&counter.to_be_bytes());
    let n2_addr = o.nodes[1].underlay;
    for packet in [&data, &data, &tampered] {
        send_udp(o, 0, n2_addr, 4501, packet)?;
    }
    let after = wait_until(
        "n2 to count the forged packets",
        Duration::from_secs(5),
        || {
            let s = o.status(1)?["dataplane"].clone();
            let replayed = s["rx_replayed"].as_u64().unwrap_or(0)
                - before["rx_replayed"].as_u64().unwrap_or(0);
            let forged = s["rx_auth_failed"].as_u64().unwrap_or(0)
                - before["rx_auth_failed"].as_u64().unwrap_or(0);
            Ok((replayed >= 2 && forged >= 1).then_some((replayed, forged)))
        },
    )?;
    let out = o.sh(0, &format!("ping -c2 -W2 {vip4}"))?;
    let (rx, _) = parse_ping(&out).context("no ping summary")?;
    ensure!(rx == 2, "tunnel broken after forgeries: {rx}/2 replies");
    Ok(format!(
        "{} replays and {} forgery counted; tunnel still answers",
        after.0, after.1
    ))
}

/// n1 sends through its tunnel with a source address that is not its VIP.
fn spoof_check(o: &mut Overlay, vip4: &str) -> anyhow::Result<String> {
    let s1 = o.status(0)?;
    let n1_vip = s1["vip4"].as_str().context("n1 VIP")?.to_owned();
    // Another node's VIP: n3's.
    let n3_vip = o.status(2)?["vip4"].as_str().context("n3 VIP")?.to_owned();
    ensure!(n3_vip != n1_vip, "n1 and n3 share a VIP");
    let before = o.status(1)?["dataplane"]["rx_bad_inner_source"]
        .as_u64()
        .unwrap_or(0);
    o.sh(0, &format!("ip addr add {n3_vip}/32 dev cy0"))?;
    let _ = o.lab.sh(
        &o.nodes[0].ns.clone(),
        &format!("ping -c2 -W1 -I {n3_vip} {vip4}"),
    );
    o.sh(0, &format!("ip addr del {n3_vip}/32 dev cy0"))?;
    let count = wait_until(
        "n2 to count the spoofed packets",
        Duration::from_secs(5),
        || {
            let c = o.status(1)?["dataplane"]["rx_bad_inner_source"]
                .as_u64()
                .unwrap_or(0);
            Ok((c > before).then_some(c - before))
        },
    )?;
    Ok(format!("{count} packets claiming {n3_vip} dropped by n2"))
}

/// The longest a running direct tunnel may go without a reply while the
/// cloud dies (pings every 10 ms; the gap was about 200 ms once).
const CLOUD_DEATH_GAP: f64 = 0.1;

/// Pings n2 from n1 every 10 ms over their direct tunnel, stops the cloud
/// a second in, and keeps pinging for 8 s more (the nodes notice the
/// cloud's absence in that time: keepalives every 2 s in the lab): the
/// longest gap between replies after the stop and the replies lost (the
/// last ping may go unanswered at the deadline). The cloud is started
/// again and the nodes registered before it returns.
fn cloud_death_check(o: &mut Overlay, vip4: &str) -> anyhow::Result<String> {
    let log = o.lab.dir().join("cloud-death-ping.log");
    let ns = o.nodes[0].ns.clone();
    o.lab.spawn(
        &ns,
        &[
            "sh",
            "-c",
            &format!("ping -D -n -i 0.01 -W 1 -w 9 {vip4} > {}", log.display()),
        ],
        "cloud-death-ping",
        &[],
    )?;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        "100 replies before the cloud stops",
        Duration::from_secs(10),
        || Ok((reply_times(&read()).len() >= 100).then_some(())),
    )?;
    let stopped = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    o.stop_cloud()?;
    let out = wait_until("the ping to end", Duration::from_secs(20), || {
        let out = read();
        Ok(out.contains("packets transmitted").then_some(out))
    })?;
    let times = reply_times(&out);
    let after = times.iter().filter(|t| **t > stopped).count();
    let gap = longest_gap(&times, stopped).context("no reply after the cloud stopped")?;
    let sent = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .context("no ping summary")?;
    let lost = sent.saturating_sub(times.len());
    let figures = format!(
        "{after} replies after the cloud stopped, longest gap {:.0} ms, {lost} of {sent} lost",
        gap * 1000.0
    );
    ensure!(after >= 300, "too few replies: {figures}");
    ensure!(gap <= CLOUD_DEATH_GAP && lost <= 1, "{figures}");
    o.start_cloud()?;
    for i in 0..o.nodes.len() {
        o.wait_registered(i, Duration::from_secs(30))?;
    }
    Ok(figures)
}

fn restart_check(o: &mut Overlay) -> anyhow::Result<String> {
    let vips_before: Vec<(String, String)> = (0..3)
        .map(|i| {
            o.status(i)
                .map(|s| (s["vip4"].to_string(), s["vip6"].to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    o.stop_cloud()?;
    o.start_cloud()?;
    // Nodes notice through their keepalives (2 s in the lab) and register
    // again by themselves.
    let n3 = o.fqdn(2);
    let lab_ns = o.nodes[0].ns.clone();
    let lab = &o.lab;
    let out = wait_until(
        &format!("n1 to resolve {n3} after the restart"),
        Duration::from_secs(30),
        || {
            let out = lab.exec(&lab_ns, &["getent", "hosts", &n3])?;
            Ok(out
                .status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
        },
    )?;
    for (i, before) in vips_before.iter().enumerate() {
        let s = o.wait_registered(i, Duration::from_secs(20))?;
        ensure!(
            (s["vip4"].to_string(), s["vip6"].to_string()) == *before,
            "{}'s VIPs changed across the restart",
            o.nodes[i].name
        );
    }
    let out_ping = o.sh(0, &format!("ping -c2 -W2 {n3}"))?;
    let (rx, _) = parse_ping(&out_ping).context("no ping summary")?;
    ensure!(rx == 2, "{rx}/2 replies from n3 after the restart");
    Ok(format!("{out}; ping ok"))
}

/// Sends one UDP datagram from node `i`'s namespace (from its tunnel
/// port's neighbour, so n2 sees a different source port).
fn send_udp(o: &Overlay, i: usize, dst: IpAddr, port: u16, payload: &[u8]) -> anyhow::Result<()> {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let family = if dst.is_ipv4() { "AF_INET" } else { "AF_INET6" };
    o.sh(
        i,
        &format!(
            "python3 -c \"import socket; s=socket.socket(socket.{family}, socket.SOCK_DGRAM); s.sendto(bytes.fromhex('{hex}'), ('{dst}', {port}))\""
        ),
    )?;
    Ok(())
}
