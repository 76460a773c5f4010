//! The scenarios `cyphonic lab <scenario>` runs. Each builds its own
//! namespaces with [`crate::Lab`], runs the real binary in them, checks what
//! real tools see, prints every check and a summary line, and cleans up.

pub mod abuse;
pub mod adapter;
pub mod bench;
pub mod bench_adapter;
pub mod bench_peers;
pub mod bench_punch;
pub mod bench_transports;
pub mod console;
pub mod direct;
pub mod firewall;
pub mod lifetime;
pub mod load;
pub mod mobility;
pub mod nat;
pub mod nat_matrix;
pub mod netcheck;
pub mod overlay;
pub mod pcap;
pub mod policy;
pub mod revoke;
pub mod scale;
pub mod trs_health;

use std::path::Path;

use anyhow::bail;

use crate::wait_until;

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
        "bench-peers",
        "cyphonic next to nebula, wireguard-go and boringtun in the same namespaces: TCP, UDP, RTT, setup, CPU and memory (scripts/peers.sh installs them)",
    ),
    (
        "firewall",
        "nodes behind nftables firewalls (UDP+TCP 443 only, TCP 443 only, open): QUIC, TCP, UDP; a move behind the QUIC-only one",
    ),
    (
        "lifetime",
        "rekeys every 5 s and relay grants of 20 s under 60 s of TCP on a direct and a relayed tunnel",
    ),
    (
        "revoke",
        "one of three nodes revoked during ping and iperf3: its tunnels close within 5 s, no new route, the others keep talking",
    ),
    (
        "abuse",
        "an attacker replays a Registration, floods Tunnel Requests, Relay Binds from a /48, random sessions, password guesses: a fresh node connects in under a second, nothing amplifies over 3x, memory bounded",
    ),
    (
        "policy",
        "access policy: default deny, n1 -> n2 on ICMP and tcp/5201 only; n2 -> n1 dropped, n1 -> n3 no route; withdrawn during a ping",
    ),
    (
        "bench-punch",
        "hole punching over many fresh trials per NAT pair (home routers, routers that only masquerade, hard <-> easy): success rate and times",
    ),
    (
        "console",
        "the operator's web console in headless Chromium: log in, devices online with their paths, add and enroll a device with the token shown, revoke it",
    ),
    (
        "netcheck",
        "cyphonic netcheck behind no NAT, eim and symmetric NAT, IPv6 only, each firewall mode and a miniupnpd router, beside a running daemon",
    ),
    (
        "nat-matrix",
        "real kernel NAT (eim, symmetric): every placement pair direct/punched/relayed, keepalives, relay failover, relay -> direct",
    ),
    (
        "load",
        "simulated nodes with real keys (--nodes 10000) log in, register and ask for routes at rising rates: per second, p50/p99, memory per node",
    ),
    (
        "scale",
        "two cloud instances on one PostgreSQL, nodes spread over them; one is killed under ping and iperf3: sessions move, tunnels go on, new routes work",
    ),
    (
        "domains",
        "two cooperating domains, each its own cloud: a node of each reaches the other by name, direct and relayed",
    ),
    (
        "trs-health",
        "two TRSs report to the NMS; one is killed under a relayed ping: marked dead within seconds, left out of new grants, the tunnel fails over",
    ),
];

/// Runs scenario `name` with the cyphonic binary at `bin`; Ok(true) when
/// every check passed.
pub fn run(name: &str, bin: &Path) -> anyhow::Result<bool> {
    run_with_options(name, bin, &[])
}

/// [`run`] with the scenario's own command-line options (`lab load
/// --nodes 10000`); the scenarios without options refuse any.
pub fn run_with_options(name: &str, bin: &Path, options: &[String]) -> anyhow::Result<bool> {
    if name == "load" {
        return load::run(bin, options);
    }
    if let Some(first) = options.first() {
        bail!("scenario {name} takes no options (got {first:?})");
    }
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
        "bench-peers" => bench_peers::run(bin),
        "bench-punch" => bench_punch::run(bin),
        "lifetime" => lifetime::run(bin),
        "revoke" => revoke::run(bin),
        "trs-health" => trs_health::run(bin),
        "scale" => scale::run_scale(bin),
        "domains" => scale::run_domains(bin),
        "abuse" => abuse::run(bin),
        "policy" => policy::run(bin),
        "netcheck" => netcheck::run(bin),
        "console" => console::run(bin),
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
    println!("on a dual-stack network, behind NATs and on an IPv6-only network, and a");
    println!("camera that runs no client, behind the office's adapter\n");
    let mut nl = Topology::new()
        .router("home", NatKind::Eim)
        .router("carrier", NatKind::Sym)
        .router("office", NatKind::Eim)
        .node("server", Placement::Ds)
        .node_behind("laptop", "home")
        .node_behind("phone", "carrier")
        .node_behind("gateway", "office")
        .node("sensor", Placement::V6)
        .build("demo", bin)?;
    // The office's adapter and, on its LAN, the camera (a general node).
    let gateway = nl.node("gateway")?;
    nl.o.nodes[gateway].adapter_lan = Some("lan0".into());
    nl.o.lab.add_ns("camera")?;
    let gw_ns = nl.o.nodes[gateway].ns.clone();
    nl.o.lab.link(&gw_ns, "lan0", &[], "camera", "eth0", &[])?;
    nl.o.lab
        .sh(&gw_ns, "sysctl -qw net.ipv6.conf.lan0.disable_ipv6=1")?;
    let camera_mac = "02:00:5e:10:0c:01";
    nl.o.lab.sh(
        "camera",
        &format!(
            "ip link set eth0 down && ip link set eth0 address {camera_mac} && ip link set eth0 up"
        ),
    )?;
    let cfg = overlay::cloud_config(&nl.o);
    overlay::cloud_cli(
        &nl.o,
        &[
            "cloud",
            "general-node",
            "add",
            "--config",
            &cfg,
            "--adapter",
            "gateway",
            "--mac",
            camera_mac,
            "camera",
        ],
    )?;
    for (i, r) in nl.start()?.into_iter().enumerate() {
        if let Err(e) = r {
            report.check(&format!("{} starts", nl.o.nodes[i].name), Err(e));
        }
    }
    let camera = adapter::AdapterLab::fqdn("camera");
    let joined = adapter::join_with_dhclient4(&mut nl.o.lab, "camera").and_then(|vip| {
        wait_until(
            "the camera to register",
            std::time::Duration::from_secs(30),
            || {
                let s = nl.o.status(gateway)?;
                let registered = s["general_nodes"].as_array().is_some_and(|g| {
                    g.iter()
                        .any(|g| g["fqdn"] == camera.as_str() && g["state"] == "registered")
                });
                Ok(registered.then_some(()))
            },
        )?;
        Ok(vip)
    });
    let camera_vip = joined.as_ref().map(String::clone).unwrap_or_default();
    report.check(
        "the camera gets its VIP from the adapter (dhclient) and registers as itself",
        joined,
    );
    for i in 0..nl.o.nodes.len() {
        let s = nl.o.status(i)?;
        println!(
            "  {:<28} {:<13} {:<22} NAT: {}{}",
            s["fqdn"].as_str().unwrap_or("?"),
            s["vip4"].as_str().unwrap_or("?"),
            s["vip6"].as_str().unwrap_or("?"),
            s["cloud"]["nat"].as_str().unwrap_or("?"),
            if i == gateway { " (adapter)" } else { "" },
        );
    }
    println!("  {camera:<28} {camera_vip:<13} general node behind the adapter, no client\n");
    let pairs = [
        ("laptop", "server"),
        ("laptop", "camera"),
        ("laptop", "phone"),
        ("phone", "sensor"),
        ("server", "sensor"),
        ("sensor", "camera"),
    ];
    for (from, to) in pairs {
        let a = nl.node(from)?;
        // The camera runs IPv4 only (dhclient -4).
        let (name, family) = if to == "camera" {
            (camera.clone(), "-4 ")
        } else {
            (nl.o.fqdn(nl.node(to)?), "")
        };
        let o = &nl.o;
        let r = o
            .sh(a, &format!("ping {family}-c3 -W2 {name}"))
            .and_then(|out| {
                let (rx, avg) =
                    parse_ping(&out).ok_or_else(|| anyhow::anyhow!("no ping summary"))?;
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
    let server = nl.o.fqdn(nl.node("server")?);
    let r = nl
        .o
        .lab
        .sh("camera", &format!("ping -4 -c3 -W2 {server}"))
        .and_then(|out| {
            let out = String::from_utf8_lossy(&out.stdout).to_string();
            let (rx, avg) = parse_ping(&out).ok_or_else(|| anyhow::anyhow!("no ping summary"))?;
            anyhow::ensure!(rx >= 2, "{rx}/3 replies");
            Ok(format!("{rx}/3 replies, avg {avg:.2} ms"))
        });
    report.check(
        &format!("camera (general node) -> {server}, by name through the adapter"),
        r,
    );
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
