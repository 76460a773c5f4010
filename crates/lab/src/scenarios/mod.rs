//! The scenarios `cyphonic lab <scenario>` runs. Each builds its own
//! namespaces with [`crate::Lab`], runs the real binary in them, checks what
//! real tools see, prints every check and a summary line, and cleans up.

pub mod bench;
pub mod direct;
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
        "bench",
        "route selection, tunnel establishment, RTT and TCP throughput vs the bare underlay",
    ),
    (
        "mobility",
        "nodes move (global IPv4 -> NAT -> IPv6 only -> back; both ends at once) under TCP and ping: outage per move",
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
        "nat-matrix" => nat_matrix::run(bin),
        "mobility" => mobility::run(bin),
        other => {
            let list: Vec<String> = SCENARIOS
                .iter()
                .map(|(n, d)| format!("  {n:<10} {d}"))
                .collect();
            bail!(
                "unknown scenario {other:?}; the scenarios are:\n{}",
                list.join("\n")
            )
        }
    }
}

/// The README's first command: the most telling topology there is so far.
fn demo(bin: &Path) -> anyhow::Result<bool> {
    use overlay::{parse_ping, Report, Underlay};
    let mut report = Report::default();
    println!("cyphonic demo: a cloud (AS + NMS) and three nodes in network namespaces");
    let o = direct::bring_up(bin, "demo", Underlay::V4, &["n1", "n2", "n3"])?;
    for i in 0..3 {
        let s = o.status(i)?;
        println!(
            "  {} registered: {} {} (underlay {})",
            s["fqdn"].as_str().unwrap_or("?"),
            s["vip4"].as_str().unwrap_or("?"),
            s["vip6"].as_str().unwrap_or("?"),
            o.nodes[i].underlay
        );
    }
    for (from, to) in [(0, 1), (0, 2), (1, 2)] {
        let name = o.fqdn(to);
        let r = o.sh(from, &format!("ping -c3 -W2 {name}")).and_then(|out| {
            let (rx, avg) = parse_ping(&out).ok_or_else(|| anyhow::anyhow!("no ping summary"))?;
            anyhow::ensure!(rx == 3, "{rx}/3 replies");
            let p = o.peer(from, &name)?;
            Ok(format!(
                "{rx}/3 replies, avg {avg:.2} ms, path {} over {} to {}",
                p["path"].as_str().unwrap_or("?"),
                p["transport"].as_str().unwrap_or("?"),
                p["endpoint"].as_str().unwrap_or("?")
            ))
        });
        report.check(&format!("{} -> {name}", o.nodes[from].name), r);
    }
    println!("\n`cyphonic status` on n1:");
    let st = o.status(0)?;
    for line in render(&st).lines() {
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
