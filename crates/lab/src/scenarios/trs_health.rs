//! `cyphonic lab trs-health`: the NMS stops handing out a TRS that died
//! (TRS Reports, `docs/protocol.md` §5.18).
//!
//! ```text
//! internet (sw) -- cloud (AS, NMS; its own TRS not handed out)
//!               -- trs2 192.0.2.2, trs3 192.0.2.3: `cloud run --role trs`,
//!                  each reporting to 192.0.2.1:4502 (`trs_report_to`)
//!               -- ra, rb, rc: symmetric NATs (`masquerade fully-random`)
//!                    `-- a, b, c behind them: every route is relayed
//! ```
//!
//! Both TRSs report; a -> b comes up relayed and carries a 10 Hz ping.
//! The TRS serving it is killed (SIGKILL): the NMS's /metrics shows it
//! dead within seconds (measured); a new route a -> c gets a grant that
//! no longer names it (the cloud's `relay grant` log line); the a -> b
//! tunnel fails over to the other TRS and its ping goes on (the longest
//! gap printed); no report was refused.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use super::nat::{NatKind, NatLab, Topology, CLOUD_V4, TRS2_V4, TRS2_V6, TRS_PORT};
use super::nat_matrix::establish;
use super::overlay::{longest_gap, reply_times, set_config_keys, unix_now, Report, CLOUD_METRICS};
use crate::wait_until;

const TRS3_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const TRS3_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
/// The NMS's `trs_dead_after_secs` (the default).
const DEAD_AFTER: Duration = Duration::from_secs(3);
/// Dead after at most: `DEAD_AFTER`, plus a report interval (the last
/// report may have gone out just before the kill), plus the scrape.
const MARKED_WITHIN: Duration = Duration::from_secs(5);
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("trs-health: two TRSs report to the NMS; one dies under a relayed ping");
    if let Err(e) = scenario(bin, &mut report) {
        report.check("scenario", Err(e));
    }
    println!(
        "trs-health: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

/// One standalone TRS: namespace, addresses, pid.
struct Relay {
    name: &'static str,
    v4: SocketAddr,
    v6: SocketAddr,
    pid: u32,
}

fn scenario(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut nl = Topology::new()
        .router("ra", NatKind::Sym)
        .router("rb", NatKind::Sym)
        .router("rc", NatKind::Sym)
        .node_behind("a", "ra")
        .node_behind("b", "rb")
        .node_behind("c", "rc")
        .second_trs()
        .build("trs-health", bin)?;
    let trs2_dir = nl.trs2.as_ref().context("no second TRS")?.dir.clone();
    let trs2_cfg = nl.trs2.as_ref().context("no second TRS")?.config.clone();
    let v4 = |ip: Ipv4Addr| SocketAddr::from((ip, TRS_PORT));
    let v6 = |ip: Ipv6Addr| SocketAddr::from((ip, TRS_PORT));
    let nms = SocketAddr::from((CLOUD_V4, 4502));

    // A third TRS: the second's folder again, on 192.0.2.3.
    nl.o.lab.add_ns("trs3")?;
    nl.o.lab.link(
        "trs3",
        "eth0",
        &[&format!("{TRS3_V4}/24"), &format!("{TRS3_V6}/64")],
        "sw",
        "ptrs3",
        &[],
    )?;
    nl.o.lab.sh("sw", "ip link set ptrs3 master br0")?;
    let trs3_dir = nl.o.lab.dir().join("trs3");
    super::nat::copy_dir(&trs2_dir, &trs3_dir)?;
    let trs3_cfg = trs3_dir.join("cloud.toml");
    let addrs = |list: &[SocketAddr]| {
        let items: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", items.join(", "))
    };
    set_config_keys(
        &trs3_cfg,
        &[
            ("data_dir", format!("{:?}", trs3_dir.to_string_lossy())),
            ("trs_listen", addrs(&[v4(TRS3_V4), v6(TRS3_V6)])),
            ("trs_report_to", addrs(&[nms])),
        ],
    )?;
    set_config_keys(&trs2_cfg, &[("trs_report_to", addrs(&[nms]))])?;
    // The NMS hands out the two standalone TRSs only.
    let relays = [v4(TRS2_V4), v6(TRS2_V6), v4(TRS3_V4), v6(TRS3_V6)];
    set_config_keys(
        &nl.o.cloud_dir.join("cloud.toml"),
        &[("trs_public", addrs(&relays))],
    )?;

    let registered = nl.start()?;
    for (i, r) in registered.into_iter().enumerate() {
        r.with_context(|| format!("node {}", nl.o.nodes[i].name))?;
    }
    let bin_s = bin.to_string_lossy().to_string();
    let trs3_pid = nl.o.lab.spawn(
        "trs3",
        &[
            &bin_s,
            "cloud",
            "run",
            "--config",
            &trs3_cfg.to_string_lossy(),
            "--role",
            "trs",
        ],
        "trs3",
        &[],
    )?;
    let trs2_pid = nl
        .trs2
        .as_ref()
        .and_then(|t| t.pid)
        .context("trs2 not started")?;
    let pool = [
        Relay {
            name: "trs2",
            v4: v4(TRS2_V4),
            v6: v6(TRS2_V6),
            pid: trs2_pid,
        },
        Relay {
            name: "trs3",
            v4: v4(TRS3_V4),
            v6: v6(TRS3_V6),
            pid: trs3_pid,
        },
    ];
    report.check(
        "cloud, two TRSs (cloud run --role trs) and a, b, c behind symmetric NATs up",
        Ok(format!("{:.1} s", started.elapsed().as_secs_f64())),
    );

    report.check(
        "both TRSs report: the NMS counts 2 live",
        wait_until("2 live TRSs", Duration::from_secs(10), || {
            Ok((metric(&nl, "cyphonic_cloud_nms_trs_live")? == 2).then_some(()))
        })
        .map(|()| String::new()),
    );

    let (a, b, c) = (nl.node("a")?, nl.node("b")?, nl.node("c")?);
    let (b_vip, _) = establish(&nl.o, a, b, ESTABLISH_TIMEOUT).context("a -> b")?;
    let b_fqdn = nl.o.fqdn(b);
    let p = nl.o.peer(a, &b_fqdn)?;
    let endpoint = p["endpoint"].as_str().unwrap_or_default().to_owned();
    let Some(victim) = pool
        .iter()
        .position(|r| r.v4.to_string() == endpoint || r.v6.to_string() == endpoint)
    else {
        anyhow::bail!(
            "a -> b is {} via {endpoint}, not on a standalone TRS",
            p["path"]
        );
    };
    ensure!(p["path"] == "relayed", "a -> b is {}", p["path"]);
    let (dead, live) = (&pool[victim], &pool[1 - victim]);
    report.check(
        "a -> b relayed, its grant naming both TRSs",
        (|| {
            let log = nl.o.lab.log("cloud");
            let grant = log
                .lines()
                .rfind(|l| l.contains("relay grant"))
                .context("no relay grant logged")?;
            ensure!(
                grant.contains(&dead.v4.to_string()) && grant.contains(&live.v4.to_string()),
                "{grant}"
            );
            Ok(format!("via {} ({endpoint})", dead.name))
        })(),
    );

    let a_ns = nl.o.nodes[a].ns.clone();
    let ping_log = nl.o.lab.dir().join("trs-health-ping.log");
    nl.o.lab.spawn(
        &a_ns,
        &[
            "sh",
            "-c",
            &format!(
                "ping -D -n -i 0.1 -W 1 -w 40 {b_vip} > {}",
                ping_log.display()
            ),
        ],
        "trs-health-ping",
        &[],
    )?;
    wait_until("pings a -> b answered", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&ping_log).unwrap_or_default();
        Ok((reply_times(&log).len() >= 10).then_some(()))
    })?;

    // Kill the TRS serving a -> b, without a chance to say goodbye.
    let killed_unix = unix_now();
    let killed = Instant::now();
    // SAFETY: a pid of a process this lab spawned and has not reaped.
    unsafe {
        libc::kill(dead.pid as i32, libc::SIGKILL);
    }
    nl.o.lab.kill(dead.pid)?;

    let marked = wait_until(
        "the NMS to mark the TRS dead",
        Duration::from_secs(15),
        || {
            let dead_n = metric(&nl, "cyphonic_cloud_nms_trs_dead")?;
            let live_n = metric(&nl, "cyphonic_cloud_nms_trs_live")?;
            Ok((dead_n == 1 && live_n == 1).then(|| killed.elapsed()))
        },
    );
    let grants_from = nl.o.lab.log("cloud").len();
    report.check(
        &format!(
            "the NMS marks the killed TRS dead within {} s",
            MARKED_WITHIN.as_secs()
        ),
        marked.and_then(|took| {
            ensure!(took <= MARKED_WITHIN, "after {took:?}");
            ensure!(
                took >= DEAD_AFTER - Duration::from_secs(1),
                "after {took:?}, before trs_dead_after"
            );
            Ok(format!(
                "{} dead {:.2} s after the kill (trs_dead_after {} s)",
                dead.name,
                took.as_secs_f64(),
                DEAD_AFTER.as_secs()
            ))
        }),
    );

    let c_fqdn = nl.o.fqdn(c);
    report.check(
        "a new route (a -> c) gets a grant without the dead TRS",
        establish(&nl.o, a, c, ESTABLISH_TIMEOUT)
            .context("a -> c")
            .and_then(|_| {
                let log = nl.o.lab.log("cloud");
                let grants: Vec<&str> = log
                    .get(grants_from..)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("relay grant"))
                    .collect();
                ensure!(!grants.is_empty(), "no relay grant logged since");
                for g in &grants {
                    ensure!(
                        !g.contains(&dead.v4.to_string()) && g.contains(&live.v4.to_string()),
                        "{g}"
                    );
                }
                let p = nl.o.peer(a, &c_fqdn)?;
                let ep = p["endpoint"].as_str().unwrap_or_default();
                ensure!(
                    ep == live.v4.to_string() || ep == live.v6.to_string(),
                    "a -> c via {ep}"
                );
                Ok(format!(
                    "{} grant(s), each naming {} alone; a -> c via {ep}",
                    grants.len(),
                    live.name
                ))
            }),
    );

    report.check(
        "the relayed tunnel a -> b fails over to the other TRS and keeps carrying ping",
        wait_until("a -> b on the other TRS", Duration::from_secs(20), || {
            let p = nl.o.peer(a, &b_fqdn)?;
            let ep = p["endpoint"].as_str().unwrap_or_default().to_owned();
            Ok((ep == live.v4.to_string() || ep == live.v6.to_string()).then_some(ep))
        })
        .and_then(|ep| {
            let moved = unix_now();
            let replies = wait_until("pings after the failover", Duration::from_secs(10), || {
                let log = std::fs::read_to_string(&ping_log).unwrap_or_default();
                let t = reply_times(&log);
                Ok((t.iter().filter(|t| **t > moved).count() >= 20).then_some(t))
            })?;
            let gap = longest_gap(&replies, killed_unix).context("no replies around the kill")?;
            Ok(format!(
                "via {} ({ep}) {:.1} s after the kill; longest gap in the ping {:.1} s",
                live.name,
                moved - killed_unix,
                gap
            ))
        }),
    );

    report.check(
        "the cloud's /metrics counts the TRS Reports, none refused",
        (|| {
            let taken = metric(&nl, "cyphonic_cloud_nms_trs_reports_total")?;
            let bad = metric(&nl, "cyphonic_cloud_nms_trs_reports_bad_total")?;
            let unknown = metric(&nl, "cyphonic_cloud_nms_trs_reports_unknown_total")?;
            ensure!(taken >= 4, "{taken} reports taken");
            ensure!(bad == 0 && unknown == 0, "{bad} bad, {unknown} unknown");
            Ok(format!("{taken} reports taken"))
        })(),
    );
    println!(
        "trs-health: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One unlabelled sample of the cloud's /metrics.
fn metric(nl: &NatLab, name: &str) -> anyhow::Result<u64> {
    let out = nl.o.lab.sh(
        "cloud",
        &format!("curl -sSf http://{CLOUD_METRICS}/metrics"),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} in the cloud's /metrics"))
}
