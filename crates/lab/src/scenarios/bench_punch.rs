//! `cyphonic lab bench-punch`: how often hole punching succeeds, per NAT
//! pair, over many fresh trials, and how long it takes.
//!
//! Pairs (MN -> CN, each node behind its own router, [`super::nat`]):
//! endpoint-independent NATs behind home routers (input firewall) and
//! behind routers that only masquerade (each behind an ISP router), and a
//! symmetric ("hard") NAT against an endpoint-independent ("easy") one
//! (birthday punching), behind both kinds of router.
//! Each trial restarts both daemons on a tunnel port never used before, so
//! no router holds anything from an earlier trial, resolves the CN's name
//! on the MN and pings the VIP it got; it succeeds when the tunnel is
//! direct (punched) within 5 s of the query. Prints, per pair, the
//! success rate and the median and worst time from the DNS query to the
//! first ping reply and to the tunnel being on its direct path (the first
//! reply's time when the tunnel came up direct; else when `cyphonic
//! status`, polled every 20 ms, shows it moved there). The number of
//! trials is `CYPHONIC_BENCH_TRIALS` (50 by default); `CYPHONIC_BENCH_PAIRS`
//! runs only the pairs whose label contains it (e.g. `hard`). A trial that
//! missed prints what both ends showed (up to five per pair).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::bench::PROBE;
use super::nat::{NatKind, NatLab, Topology};
use super::overlay::Report;

/// A trial succeeds when the tunnel is on its direct path this soon after
/// the query.
const DIRECT_WITHIN: Duration = Duration::from_secs(5);
/// Tunnel ports of the trials: 4601, 4602, ...
const FIRST_PORT: u16 = 4601;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    // Only the pairs whose label contains this, e.g. "hard".
    let pairs = std::env::var("CYPHONIC_BENCH_PAIRS").ok();
    let trials: u16 = std::env::var("CYPHONIC_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .clamp(1, 500);
    let mut report = Report::default();
    println!("bench-punch: {trials} trials per pair, each with fresh daemons on a new tunnel port");
    let mut nl = Topology::new()
        .router("r-home-a", NatKind::Eim)
        .router("r-home-b", NatKind::Eim)
        .plain_router("r-plain-a", NatKind::Eim)
        .plain_router("r-plain-b", NatKind::Eim)
        .router("r-hard", NatKind::Sym)
        .router("r-easy", NatKind::Eim)
        .plain_router("r-hardp", NatKind::Sym)
        .plain_router("r-easyp", NatKind::Eim)
        .node_behind("home-a", "r-home-a")
        .node_behind("home-b", "r-home-b")
        .node_behind("plain-a", "r-plain-a")
        .node_behind("plain-b", "r-plain-b")
        .node_behind("hard", "r-hard")
        .node_behind("easy", "r-easy")
        .node_behind("hardp", "r-hardp")
        .node_behind("easyp", "r-easyp")
        .build("bench-punch", bin)?;
    let started = nl.start()?;
    for (i, r) in started.iter().enumerate() {
        if let Err(e) = r {
            report.check(
                &format!("{} registered", nl.o.nodes[i].name),
                Err(anyhow::anyhow!("{e:#}")),
            );
        }
    }
    let probe = nl.o.lab.dir().join("probe.py");
    std::fs::write(&probe, PROBE)?;
    let mut port = FIRST_PORT;
    for (label, mn, cn) in [
        ("eim <-> eim, home routers", "home-a", "home-b"),
        (
            "eim <-> eim, routers that only masquerade",
            "plain-a",
            "plain-b",
        ),
        (
            "hard (symmetric) <-> easy (eim), home routers",
            "hard",
            "easy",
        ),
        (
            "easy (eim) <-> hard (symmetric), routers that only masquerade",
            "easyp",
            "hardp",
        ),
    ] {
        if pairs.as_deref().is_some_and(|p| !label.contains(p)) {
            continue;
        }
        let (mn, cn) = (nl.node(mn)?, nl.node(cn)?);
        let mut ok = 0usize;
        let mut missed = Vec::new();
        let (mut first_reply, mut direct) = (Vec::new(), Vec::new());
        let mut failures = Vec::new();
        for _ in 0..trials {
            match trial(&mut nl, mn, cn, port, &probe) {
                Ok(t) => {
                    first_reply.push(t.first_reply);
                    if let Some(d) = t.direct {
                        ok += 1;
                        direct.push(d);
                    } else {
                        missed.push(format!("port {port}: {}", t.seen));
                    }
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
            port += 1;
        }
        let rate = 100.0 * ok as f64 / f64::from(trials);
        let figures = format!(
            "direct in {ok}/{trials} ({rate:.0} %); DNS query -> first ping reply median {}, worst {}; -> direct path median {}, worst {}{}",
            ms(median(&mut first_reply)),
            ms(first_reply.iter().max().copied()),
            ms(median(&mut direct)),
            ms(direct.iter().max().copied()),
            if failures.is_empty() {
                String::new()
            } else {
                format!("; {} trials failed to run: {}", failures.len(), failures[0])
            }
        );
        for m in missed.iter().take(5) {
            println!("        missed, {m}");
        }
        report.check(
            label,
            if failures.len() * 10 > usize::from(trials) {
                Err(anyhow::anyhow!("{figures}"))
            } else {
                Ok(figures)
            },
        );
    }
    println!(
        "bench-punch: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

struct Trial {
    /// From the DNS query to the first ping reply.
    first_reply: Duration,
    /// From the DNS query to the tunnel on its direct path, if it got there
    /// within [`DIRECT_WITHIN`].
    direct: Option<Duration>,
    /// What both ends showed at the end of a trial that missed: the path,
    /// birthday punching's counters, the log lines about paths.
    seen: String,
}

/// Node `i`'s view of its tunnel to `peer` and its punching counters, for
/// a trial that stayed relayed.
fn seen(nl: &NatLab, i: usize, peer: &str) -> String {
    let s = match nl.o.status(i) {
        Ok(s) => s,
        Err(e) => return format!("no status: {e:#}"),
    };
    let p = s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["fqdn"] == peer))
        .cloned()
        .unwrap_or_default();
    let c = &s["counters"];
    let log = nl.o.node_log(i);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("birthday") || l.contains("path change") || l.contains("Route Direction")
        })
        .collect();
    format!(
        "{} nat {} path {} ({}), spray_attempts {} spray_probes {} path_changes {}; log: {}",
        nl.o.nodes[i].name,
        s["cloud"]["nat"],
        p["path"],
        p["path_reason"],
        c["spray_attempts"],
        c["spray_probes"],
        c["path_changes"],
        lines[lines.len().saturating_sub(4)..].join(" | ")
    )
}

/// Restarts both daemons on tunnel port `port`, then times the query and
/// the path.
fn trial(nl: &mut NatLab, mn: usize, cn: usize, port: u16, probe: &Path) -> anyhow::Result<Trial> {
    for i in [mn, cn] {
        nl.o.stop_node(i)?;
    }
    nl.o.node_args = vec!["--port".into(), port.to_string()];
    for i in [mn, cn] {
        nl.o.start_node(i)?;
    }
    nl.o.node_args.clear();
    for i in [mn, cn] {
        nl.o.wait_registered(i, Duration::from_secs(20))?;
        // The NAT kind is known once the NAT Probe is answered: only then
        // does the NMS punch.
        crate::wait_until("the NAT kind", Duration::from_secs(10), || {
            let s = nl.o.status(i)?;
            Ok((s["cloud"]["nat"] != "unknown").then_some(()))
        })?;
    }
    let fqdn = nl.o.fqdn(cn);
    let asked = Instant::now();
    let out = nl.o.sh(
        mn,
        &format!("python3 {} {fqdn} 127.0.0.153", probe.display()),
    )?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("probe output")?;
    let first_reply = Duration::from_secs_f64(
        (v["dns_ms"].as_f64().unwrap_or(0.0) + v["first_reply_ms"].as_f64().unwrap_or(0.0))
            / 1000.0,
    );
    let mut direct = None;
    while asked.elapsed() < DIRECT_WITHIN {
        let s = nl.o.status(mn)?;
        let p = s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["fqdn"] == fqdn.as_str()))
            .cloned()
            .unwrap_or_default();
        if p["state"] == "established" && (p["path"] == "punched" || p["path"] == "direct") {
            // The MN runs afresh with this one peer: no path change means
            // the tunnel came up direct, and the first reply took it.
            let moved = s["counters"]["path_changes"].as_u64().unwrap_or(1) > 0;
            direct = Some(if moved { asked.elapsed() } else { first_reply });
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = if direct.is_none() {
        let mn_fqdn = nl.o.fqdn(mn);
        let cloud = nl.o.lab.log("cloud");
        let names = [nl.o.nodes[mn].name.clone(), nl.o.nodes[cn].name.clone()];
        let lines: Vec<&str> = cloud
            .lines()
            .filter(|l| names.iter().any(|n| l.contains(&format!("{n}.cyphonic"))))
            .collect();
        format!(
            "{}; {}; cloud: {}",
            seen(nl, mn, &fqdn),
            seen(nl, cn, &mn_fqdn),
            lines[lines.len().saturating_sub(8)..].join(" | ")
        )
    } else {
        String::new()
    };
    Ok(Trial {
        first_reply,
        direct,
        seen,
    })
}

fn median(v: &mut [Duration]) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}
