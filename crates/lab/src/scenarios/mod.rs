//! The scenarios `cyphonic lab <scenario>` runs. Each builds its own
//! namespaces with [`crate::Lab`], runs the real binary in them, checks what
//! real tools see, prints every check and a summary line, and cleans up.

pub mod adapter;
pub mod bench;
pub mod bench_adapter;
pub mod bench_transports;
pub mod direct;
pub mod firewall;
pub mod mobility;
pub mod nat;
pub mod nat_matrix;
pub mod overlay;
pub mod pcap;

use std::path::Path;

use anyhow::bail;

pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "direct",
        "cloud + three nodes, no NAT (pattern 1), IPv4 then IPv6-only underlay",
    ),
    (
        "demo",
        "a complete local demonstration: cloud and nodes, what connected and how",
    ),
    (
        "adapter",
        "general nodes behind two adapters (dhclient, dhcpcd, rdisc6): VIPs, names, ping, curl, iperf3 with a node and each other",
    ),
    (
        "bench-adapter",
        "the seed's adapter figures from a general node's side: route selection, tunnel, ARP, NDP, DNS, TCP, UDP",
    ),
    (
        "bench",
        "route selection, tunnel establishment, RTT and TCP throughput vs the bare underlay",
    ),
    (
        "mobility",
        "nodes move (global IPv4 -> NAT -> IPv6 only -> back; both ends at once) under TCP and ping: outage per move",
    ),
    (
        "bench-transports",
        "TCP throughput, RTT and per-packet overhead: native UDP, QUIC direct, QUIC relayed, TCP 443 relayed",
    ),
    (
        "firewall",
        "nodes behind nftables firewalls (UDP+TCP 443 only, TCP 443 only, open): QUIC, TCP, UDP; a move behind the QUIC-only one",
    ),
    (
        "nat-matrix",
        "real kernel NAT (eim, symmetric): every placement pair direct/punched/relayed, keepalives, relay failover, relay -> direct",
    ),
];

/// Runs scenario `name` with the cyphonic binary at `bin`; Ok(true) when
/// every check passed.
pub fn run(name: &str, bin: &Path) -> anyhow::Result<bool> {
    match name {
        "direct" => direct::run(bin),
        "demo" => demo(bin),
        "bench" => bench::run(bin),
        "adapter" => adapter::run(bin),
        "bench-adapter" => bench_adapter::run(bin),
        "nat-matrix" => nat_matrix::run(bin),
        "mobility" => mobility::run(bin),
        "firewall" => firewall::run(bin),
        "bench-transports" => bench_transports::run(bin),
        other => {
            let list: Vec<String> = SCENARIOS
                .iter()
                .map(|(n, d)| format!("  {n:<16} {d}"))
                .collect();
            bail!(
                "unknown scenario {other:?}; the scenarios are:\n{}",
                list.join("\n")
            )
        }
    }
}

/// The README's first command: the most telling topology there is so far:
/// a cloud (AS, NMS, TRS) and five nodes placed as users' devices are — on
/// a dual-stack network, behind a home router's NAT, behind a symmetric
/// (carrier-grade) NAT, on an IPv6-only network — every one reaching the
/// others by name, and how.
fn demo(bin: &Path) -> anyhow::Result<bool> {
    use nat::{NatKind, Placement, Topology};
    use overlay::{parse_ping, Report};
    let mut report = Report::default();
    println!("cyphonic demo: a cloud (AS, NMS, TRS) and five nodes in network namespaces,");
    println!("on a dual-stack network, behind NATs and on an IPv6-only network\n");
    let mut nl = Topology::new()
        .router("home", NatKind::Eim)
        .router("carrier", NatKind::Sym)
        .router("office", NatKind::Eim)
        .node("server", Placement::Ds)
        .node_behind("laptop", "home")
        .node_behind("phone", "carrier")
        .node_behind("camera", "office")
        .node("sensor", Placement::V6)
        .build("demo", bin)?;
    for (i, r) in nl.start()?.into_iter().enumerate() {
        if let Err(e) = r {
            report.check(&format!("{} starts", nl.o.nodes[i].name), Err(e));
        }
    }
    for i in 0..nl.o.nodes.len() {
        let s = nl.o.status(i)?;
        println!(
            "  {:<28} {:<13} {:<22} NAT: {}",
            s["fqdn"].as_str().unwrap_or("?"),
            s["vip4"].as_str().unwrap_or("?"),
            s["vip6"].as_str().unwrap_or("?"),
            s["cloud"]["nat"].as_str().unwrap_or("?"),
        );
    }
    println!();
    let pairs = [
        ("laptop", "server"),
        ("laptop", "camera"),
        ("laptop", "phone"),
        ("phone", "sensor"),
        ("server", "sensor"),
    ];
    for (from, to) in pairs {
        let (a, b) = (nl.node(from)?, nl.node(to)?);
        let name = nl.o.fqdn(b);
        let o = &nl.o;
        let r = o.sh(a, &format!("ping -c3 -W2 {name}")).and_then(|out| {
            let (rx, avg) = parse_ping(&out).ok_or_else(|| anyhow::anyhow!("no ping summary"))?;
            anyhow::ensure!(rx >= 2, "{rx}/3 replies");
            let p = o.peer(a, &name)?;
            Ok(format!(
                "{rx}/3 replies, avg {avg:.2} ms: {} via {} ({})",
                p["path"].as_str().unwrap_or("?"),
                p["endpoint"].as_str().unwrap_or("?"),
                p["path_reason"].as_str().unwrap_or("?")
            ))
        });
        report.check(&format!("{from} -> {name}"), r);
    }
    let laptop = nl.node("laptop")?;
    println!("\n`cyphonic status` on the laptop:");
    for line in render(&nl.o.status(laptop)?).lines() {
        println!("  {line}");
    }
    println!("demo: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

fn render(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for p in v["peers"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "{} {} {} {} via {} ({})\n",
            p["fqdn"].as_str().unwrap_or("?"),
            p["vip4"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["path"].as_str().unwrap_or("?"),
            p["endpoint"].as_str().unwrap_or("?"),
            p["path_reason"].as_str().unwrap_or("")
        ));
    }
    out
}
