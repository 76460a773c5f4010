//! `cyphonic lab mobility`: nodes move between networks while TCP and a
//! fast ping run through the overlay, and the scenario measures each move.
//!
//! ```text
//! internet (sw) -- cloud (AS, NMS, TRS), dns, cn (dual stack), cn4 (IPv4 only)
//!    |-- mn  eth0: global IPv4 192.0.2.x, later global IPv6 only
//!    |    `- lan0 (down until used) on r-m's LAN: private IPv4 behind NAT
//!    |-- m1, m2: eth0 global IPv4; lan0 on r-1 / r-2 LANs
//!    `-- r-m, r-1, r-2: endpoint-independent NAT routers
//! ```
//!
//! A move re-addresses the mobile node's interfaces and routes, as a
//! laptop does when it leaves one network for another: global IPv4 ->
//! private IPv4 behind NAT -> IPv6 only -> global IPv4. While mn is IPv6
//! only, its tunnel to the IPv4-only cn4 can only be relayed. Then m1 and
//! m2 move at the same time, both behind their NATs and back. For every
//! move the scenario prints the outage (the longest gap between ping
//! replies, `ping -D -i 0.05`) and the time until each tunnel carried
//! traffic again (from the mover's status); over several rounds, the
//! median and the worst per kind of move. A TCP transfer spanning all the
//! moves must complete without a reset.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};

use super::nat::{NatKind, NatLab, Placement, Topology};
use super::nat_matrix::establish;
use super::overlay::{reply_times, unix_now, Report};
use crate::wait_until;

/// Seconds between moves: room for the outage and for the tunnel to settle.
const SETTLE: f64 = 4.0;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    run_rounds(bin, 2)
}

pub fn run_rounds(bin: &Path, rounds: usize) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("mobility: nodes move while TCP and ping run through the overlay ({rounds} rounds)");
    match scenario(bin, rounds, &mut report) {
        Ok(()) => {}
        Err(e) => {
            report.check("scenario", Err(e));
        }
    }
    println!(
        "mobility: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

struct Mover {
    idx: usize,
    ns: String,
    /// eth0's global addresses (CIDR) and lan0's private one, with gateway.
    global_v4: String,
    global_v6: String,
    lan_v4: String,
    lan_gw: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Net {
    GlobalV4,
    Nat,
    V6Only,
}

impl Net {
    fn name(self) -> &'static str {
        match self {
            Net::GlobalV4 => "global IPv4",
            Net::Nat => "private IPv4 behind NAT",
            Net::V6Only => "IPv6 only",
        }
    }
}

/// Takes the node off every network (its links down, as a cable pulled or
/// Wi-Fi lost).
const LEAVE: &str = "ip -4 addr flush dev eth0; ip -6 addr flush dev eth0 scope global; \
                     ip -4 addr flush dev lan0; ip link set lan0 down; ip -4 route flush default 2>/dev/null; true";

/// How long a link-down move keeps the node off every network.
const LINK_DOWN: f64 = 1.0;

/// Commands that take the node from any network to `to`.
fn move_cmd(m: &Mover, to: Net) -> String {
    format!("{LEAVE}; {}", enter_cmd(m, to))
}

/// Commands that bring the node (off every network) onto `to`.
fn enter_cmd(m: &Mover, to: Net) -> String {
    match to {
        Net::GlobalV4 => format!("ip link set eth0 up && ip addr add {} dev eth0", m.global_v4),
        Net::Nat => format!(
            "ip link set lan0 up && ip addr add {} dev lan0 && ip route replace default via {}",
            m.lan_v4, m.lan_gw
        ),
        Net::V6Only => format!(
            "ip link set eth0 up && sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0 && ip -6 addr add {} dev eth0 nodad",
            m.global_v6
        ),
    }
}

fn scenario(bin: &Path, rounds: usize, report: &mut Report) -> anyhow::Result<()> {
    let mut nl = Topology::new()
        .router("r-m", NatKind::Eim)
        .router("r-1", NatKind::Eim)
        .router("r-2", NatKind::Eim)
        .node("cn", Placement::Ds)
        .node("cn4", Placement::V4)
        .node("mn", Placement::V4)
        .node("m1", Placement::V4)
        .node("m2", Placement::V4)
        .build("mobility", bin)?;
    let movers = [("mn", "r-m", 30u8), ("m1", "r-1", 31), ("m2", "r-2", 32)]
        .iter()
        .map(|(name, router, host)| add_lan_leg(&mut nl, name, router, *host))
        .collect::<anyhow::Result<Vec<Mover>>>()?;
    let started = nl.start()?;
    for (i, r) in started.into_iter().enumerate() {
        r.with_context(|| format!("{} did not start", nl.o.nodes[i].name))?;
    }
    report.check("cloud and 5 nodes registered", Ok(String::new()));
    let cn = nl.node("cn")?;
    let cn4 = nl.node("cn4")?;
    let (mn, m1, m2) = (movers[0].idx, movers[1].idx, movers[2].idx);

    // Tunnels up before anything moves.
    let (mn_vip, _) = establish(&nl.o, cn, mn, Duration::from_secs(15)).context("cn -> mn")?;
    let (mn_vip_b, _) = establish(&nl.o, cn4, mn, Duration::from_secs(15)).context("cn4 -> mn")?;
    let (m2_vip, _) = establish(&nl.o, m1, m2, Duration::from_secs(15)).context("m1 -> m2")?;
    ensure!(mn_vip == mn_vip_b, "mn has two VIPv4s");

    // Background traffic for the whole run: a TCP transfer and fast pings.
    // mn: 3 (A->NAT->v6->A counted as 3 moves) + both-move there and back
    // + mn's link down into the NAT and out again.
    let moves_per_round = 3 + 2 + 2;
    let total = (rounds * (moves_per_round + 1)) as f64 * SETTLE + 10.0;
    let dir = nl.o.lab.dir().to_path_buf();
    let cn_ns = nl.o.nodes[cn].ns.clone();
    let cn4_ns = nl.o.nodes[cn4].ns.clone();
    let mn_ns = nl.o.nodes[mn].ns.clone();
    let m1_ns = nl.o.nodes[m1].ns.clone();
    let iperf_log = dir.join("mobility-iperf.json");
    nl.o.lab.spawn(
        &mn_ns,
        &["iperf3", "-s", "-1", "-p", "5201"],
        "mobility-iperf-server",
        &[],
    )?;
    wait_until("the iperf3 server", Duration::from_secs(5), || {
        let out = nl.o.lab.exec(&mn_ns, &["ss", "-Hltn", "sport = :5201"])?;
        Ok((!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(()))
    })?;
    let iperf_cmd = format!(
        "iperf3 -c {mn_vip} -p 5201 -t {} -b 50M -J > {} 2>&1",
        total as u64,
        iperf_log.display()
    );
    let iperf_pid = nl.o.lab.spawn(
        &cn_ns,
        &["sh", "-c", &iperf_cmd],
        "mobility-iperf-client",
        &[],
    )?;
    let ping_cmd = |vip: &str| format!("ping -D -n -i 0.05 -W 1 -w {} {vip}", total as u64 + 5);
    nl.o.lab
        .spawn(&cn_ns, &["sh", "-c", &ping_cmd(&mn_vip)], "ping-cn-mn", &[])?;
    nl.o.lab.spawn(
        &cn4_ns,
        &["sh", "-c", &ping_cmd(&mn_vip)],
        "ping-cn4-mn",
        &[],
    )?;
    nl.o.lab
        .spawn(&m1_ns, &["sh", "-c", &ping_cmd(&m2_vip)], "ping-m1-m2", &[])?;
    std::thread::sleep(Duration::from_secs(2));

    // (kind, ping log, mover index, unix time of the move, peer fqdn) per move.
    let mut moves: Vec<(String, &'static str, usize, f64, String)> = Vec::new();
    // (kind, ping log, unix time the link came up) per link-down move.
    let mut up_moves: Vec<(String, &'static str, f64)> = Vec::new();
    let cn_fqdn = nl.o.fqdn(cn);
    let cn4_fqdn = nl.o.fqdn(cn4);
    let m1_fqdn = nl.o.fqdn(m1);
    let mut net = Net::GlobalV4;
    for _ in 0..rounds {
        for to in [Net::Nat, Net::V6Only, Net::GlobalV4] {
            let kind = format!("{} -> {}", net.name(), to.name());
            let t = unix_now();
            nl.o.lab.sh(&movers[0].ns, &move_cmd(&movers[0], to))?;
            moves.push((kind.clone(), "ping-cn-mn", mn, t, cn_fqdn.clone()));
            if to == Net::V6Only || net == Net::V6Only {
                moves.push((
                    format!("{kind} (peer IPv4 only: relay)"),
                    "ping-cn4-mn",
                    mn,
                    t,
                    cn4_fqdn.clone(),
                ));
            }
            net = to;
            std::thread::sleep(Duration::from_secs_f64(SETTLE));
        }
        for to in [Net::Nat, Net::GlobalV4] {
            let kind = format!(
                "both ends at once: {}",
                if to == Net::Nat {
                    "into NATs"
                } else {
                    "out of NATs"
                }
            );
            let t = unix_now();
            // Both moves started together, from two threads.
            let (a, b) = (move_cmd(&movers[1], to), move_cmd(&movers[2], to));
            let lab = &nl.o.lab;
            let (ns1, ns2) = (movers[1].ns.clone(), movers[2].ns.clone());
            std::thread::scope(|s| {
                let h1 = s.spawn(|| lab.sh(&ns1, &a));
                let h2 = s.spawn(|| lab.sh(&ns2, &b));
                let _ = h1.join();
                let _ = h2.join();
            });
            moves.push((kind, "ping-m1-m2", m2, t, m1_fqdn.clone()));
            std::thread::sleep(Duration::from_secs_f64(SETTLE));
        }
        // The link goes down for a second and comes up on another network
        // (mn is on global IPv4 here): the outage counts from the link
        // coming up.
        for to in [Net::Nat, Net::GlobalV4] {
            let kind = format!("link down {LINK_DOWN:.0} s, then {}", to.name());
            nl.o.lab.sh(&movers[0].ns, LEAVE)?;
            std::thread::sleep(Duration::from_secs_f64(LINK_DOWN));
            let t = unix_now();
            nl.o.lab.sh(&movers[0].ns, &enter_cmd(&movers[0], to))?;
            up_moves.push((kind, "ping-cn-mn", t));
            std::thread::sleep(Duration::from_secs_f64(SETTLE));
        }
    }

    // The TCP transfer must end normally.
    let ended = wait_until(
        "the TCP transfer to end",
        Duration::from_secs_f64(total + 20.0),
        || Ok(nl.o.lab.try_wait(iperf_pid)?.map(|_| ())),
    );
    let tcp = ended.and_then(|()| {
        let text = std::fs::read_to_string(&iperf_log).context("iperf3 output")?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 printed no JSON: {text}"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("iperf3: {e}");
        }
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("no received total")?;
        let retr = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        Ok(format!(
            "{:.0} Mbit/s over {} s, {retr} retransmits, no reset",
            bps / 1e6,
            total as u64
        ))
    });
    report.check(
        "a TCP connection inside the overlay survives every move",
        tcp,
    );

    // Outage per move, from the ping logs.
    let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (kind, log, _, t, _) in &moves {
        let replies = reply_times(&nl.o.lab.log(log));
        let gap = longest_gap(&replies, *t - 0.5, *t + SETTLE - 0.3);
        match gap {
            Some(g) => by_kind.entry(kind.clone()).or_default().push(g * 1000.0),
            None => {
                report.check(
                    &format!("{kind}: ping replies around the move"),
                    Err(anyhow::anyhow!("none seen in {log}")),
                );
            }
        }
    }
    for (kind, log, up) in &up_moves {
        // From the link coming up to the first reply after it.
        let replies = reply_times(&nl.o.lab.log(log));
        match replies.iter().find(|r| **r >= *up) {
            Some(r) => {
                by_kind
                    .entry(format!("{kind} (from the link up)"))
                    .or_default()
                    .push((r - up) * 1000.0);
            }
            None => {
                report.check(
                    &format!("{kind}: ping replies after the link came up"),
                    Err(anyhow::anyhow!("none seen in {log}")),
                );
            }
        }
    }
    for (kind, outages) in &by_kind {
        let mut v = outages.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        let worst = v[v.len() - 1];
        report.check(
            &format!("outage, {kind}"),
            // A tunnel that never came back leaves a gap as long as the
            // window: that is a failure, anything shorter is a figure.
            if worst < (SETTLE - 1.0) * 1000.0 {
                Ok(format!(
                    "median {median:.0} ms, worst {worst:.0} ms over {} moves",
                    v.len()
                ))
            } else {
                Err(anyhow::anyhow!(
                    "worst {worst:.0} ms: the tunnel did not come back within the window"
                ))
            },
        );
    }
    // Status says when the last move happened, what changed, and when
    // each tunnel was back.
    let s = nl.o.status(mn)?;
    report.check(
        "status reports the move and when each tunnel was back",
        (|| {
            let m = &s["mobility"];
            let moves = m["moves"].as_u64().unwrap_or(0);
            ensure!(moves >= (3 * rounds) as u64, "{moves} moves counted");
            let last = &m["last_move"];
            let change = last["change"].as_str().unwrap_or_default();
            ensure!(change.contains("gained"), "change: {change:?}");
            let back = last["tunnels_back_ms"]
                .as_object()
                .context("no tunnels_back_ms")?;
            ensure!(!back.is_empty(), "no tunnel recorded back");
            Ok(format!(
                "{moves} moves; last: {change}; back: {}",
                serde_json::to_string(back)?
            ))
        })(),
    );
    // VIPs never changed.
    let s_after = nl.o.status(mn)?;
    report.check(
        "the mobile node's VIPs are unchanged",
        if s_after["vip4"].as_str() == Some(mn_vip.as_str()) {
            Ok(mn_vip.clone())
        } else {
            Err(anyhow::anyhow!("VIPv4 is now {}", s_after["vip4"]))
        },
    );
    Ok(())
}

/// Gives `name` a second interface `lan0` on `router`'s LAN (down until a
/// move brings it up) and returns how to move it.
fn add_lan_leg(nl: &mut NatLab, name: &str, router: &str, host: u8) -> anyhow::Result<Mover> {
    let idx = nl.node(name)?;
    let ns = nl.o.nodes[idx].ns.clone();
    let r = nl.router(router)?;
    let (r_ns, gw) = (r.ns.clone(), r.lan_gw);
    let (_, lan_cidr) = r.roam_addr();
    let port = format!("m{host}");
    nl.o.lab.link(&ns, "lan0", &[], &r_ns, &port, &[])?;
    nl.o.lab
        .sh(&r_ns, &format!("ip link set {port} master lan"))?;
    nl.o.lab.sh(&ns, "ip link set lan0 down")?;
    let v4 = nl.nodes[idx]
        .addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .context("mover has no global IPv4")?;
    let v6 = match v4 {
        IpAddr::V4(v) => format!("2001:db8::{:x}", 0x100 + v.octets()[3] as u16),
        IpAddr::V6(_) => unreachable!("filtered to IPv4"),
    };
    Ok(Mover {
        idx,
        ns,
        global_v4: format!("{v4}/24"),
        global_v6: format!("{v6}/64"),
        lan_v4: lan_cidr,
        lan_gw: gw.to_string(),
    })
}

/// The longest interval without a reply inside `[from, to]`, counting the
/// window's edges as replies only if a reply came before `from`.
fn longest_gap(replies: &[f64], from: f64, to: f64) -> Option<f64> {
    let before = replies.iter().rev().find(|t| **t <= from).copied()?;
    let inside: Vec<f64> = replies
        .iter()
        .copied()
        .filter(|t| *t > from && *t <= to)
        .collect();
    let mut last = before.max(from);
    let mut gap: f64 = 0.0;
    for t in inside {
        gap = gap.max(t - last);
        last = t;
    }
    Some(gap.max(to - last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_between_replies() {
        let log = "[100.00] 64 bytes from x\n[100.05] 64 bytes from x\n[100.50] 64 bytes from x\n[100.55] 64 bytes from x\nno answer yet\n";
        let r = reply_times(log);
        assert_eq!(r.len(), 4);
        let g = longest_gap(&r, 100.01, 100.56).unwrap();
        assert!((g - 0.45).abs() < 1e-9, "{g}");
        // No reply after the window's start: the gap runs to its end.
        let g = longest_gap(&r, 100.56, 101.0).unwrap();
        assert!((g - 0.44).abs() < 1e-9, "{g}");
        assert_eq!(longest_gap(&r, 99.0, 99.5), None);
    }
}
