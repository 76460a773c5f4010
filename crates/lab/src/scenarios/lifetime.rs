//! `cyphonic lab lifetime`: tunnels under short lifetimes, as months of
//! running compress into a minute.
//!
//! ```text
//! internet (sw) -- cloud (AS, NMS, TRS; relay grants of 20 s), dns
//!    |-- d1, d2: global IPv4                      (a direct tunnel)
//!    |-- r1 (symmetric NAT) -- s1                 (a relayed tunnel:
//!    `-- r2 (symmetric NAT) -- s2                  no direct path exists)
//! ```
//!
//! Every node rekeys every 5 s (`--rekey-after 5`, keys refused at 7.5 s;
//! other timers at their defaults). A 60 s iperf3 TCP transfer runs on
//! each tunnel at once; both must complete with data in every one-second
//! interval, and each node's `status --json` must count the rekeys (and
//! the relayed pair its grant renewals: a new route every 15 s), with no
//! keys expired unreplaced. Direct routes carry a grant too (the relay is
//! their fallback), so the direct pair also takes a new route every 15 s:
//! a new handshake rather than a rekey, and no gap either.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};

use super::nat::{NatKind, NatLab, Placement, Topology};
use super::nat_matrix::establish;
use super::overlay::{iperf_finish, iperf_start, set_config_keys, Report};

/// Seconds of each transfer.
const TRANSFER_SECS: u32 = 60;
/// The nodes' rekey interval, seconds.
const REKEY_SECS: u64 = 5;
/// The relay grants' lifetime, seconds.
const GRANT_SECS: u64 = 20;
/// The node certificates' lifetime, seconds: renewed at two thirds.
const CERT_SECS: u64 = 60;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!(
        "lifetime: rekeys every {REKEY_SECS} s, relay grants of {GRANT_SECS} s and certificates of {CERT_SECS} s under {TRANSFER_SECS} s of TCP on a direct and a relayed tunnel"
    );
    if let Err(e) = scenario(bin, &mut report) {
        report.check("scenario", Err(e));
    }
    println!(
        "lifetime: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

/// A node's counter from `status --json`.
fn counter(nl: &NatLab, i: usize, name: &str) -> anyhow::Result<u64> {
    let s = nl.o.status(i)?;
    s["counters"][name]
        .as_u64()
        .with_context(|| format!("{} reports no counter {name}", nl.o.nodes[i].name))
}

fn scenario(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut nl = Topology::new()
        .router("r1", NatKind::Sym)
        .router("r2", NatKind::Sym)
        .node("d1", Placement::V4)
        .node("d2", Placement::V4)
        .node_behind("s1", "r1")
        .node_behind("s2", "r2")
        .build("lifetime", bin)?;
    set_config_keys(
        &nl.o.cloud_dir.join("cloud.toml"),
        &[
            ("relay_grant_secs", GRANT_SECS.to_string()),
            ("cert_validity_secs", CERT_SECS.to_string()),
        ],
    )?;
    nl.o.node_args = vec!["--rekey-after".into(), REKEY_SECS.to_string()];
    for (i, r) in nl.start()?.into_iter().enumerate() {
        r.with_context(|| format!("{} did not start", nl.o.nodes[i].name))?;
    }
    report.check("cloud and 4 nodes registered", Ok(String::new()));
    let (d1, d2, s1, s2) = (
        nl.node("d1")?,
        nl.node("d2")?,
        nl.node("s1")?,
        nl.node("s2")?,
    );
    let (d2_vip, _) = establish(&nl.o, d1, d2, Duration::from_secs(15)).context("d1 -> d2")?;
    let (s2_vip, _) = establish(&nl.o, s1, s2, Duration::from_secs(15)).context("s1 -> s2")?;
    for (from, to, want) in [(d1, d2, "direct"), (s1, s2, "relayed")] {
        let fqdn = nl.o.fqdn(to);
        let path = nl.o.peer(from, &fqdn)?["path"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        report.check(
            &format!(
                "{} -> {} takes the {want} path",
                nl.o.nodes[from].name, nl.o.nodes[to].name
            ),
            if path == want {
                Ok(String::new())
            } else {
                Err(anyhow::anyhow!("path {path}"))
            },
        );
    }
    let before: Vec<u64> = [d1, d2, s1, s2]
        .iter()
        .map(|&i| counter(&nl, i, "rekeys"))
        .collect::<anyhow::Result<_>>()?;

    let direct = iperf_start(
        &mut nl.o,
        d1,
        d2,
        &d2_vip,
        5201,
        TRANSFER_SECS,
        None,
        "direct",
    )?;
    let relayed = iperf_start(
        &mut nl.o,
        s1,
        s2,
        &s2_vip,
        5202,
        TRANSFER_SECS,
        None,
        "relayed",
    )?;
    let wait = Duration::from_secs(u64::from(TRANSFER_SECS) + 30);
    for (run, label) in [(direct, "direct"), (relayed, "relayed")] {
        let r = iperf_finish(&mut nl.o, run, wait).and_then(|figures| {
            ensure!(
                figures.contains(" 0 of "),
                "a second without data: {figures}"
            );
            Ok(figures)
        });
        report.check(
            &format!("{TRANSFER_SECS} s of TCP on the {label} tunnel, data every second"),
            r,
        );
    }

    let want = u64::from(TRANSFER_SECS) / REKEY_SECS / 2;
    for (k, &i) in [d1, d2, s1, s2].iter().enumerate() {
        let name = nl.o.nodes[i].name.clone();
        let r = (|| {
            let rekeys = counter(&nl, i, "rekeys")? - before[k];
            let expired = counter(&nl, i, "keys_expired")?;
            let failures = counter(&nl, i, "rekey_failures")?;
            ensure!(rekeys >= want, "{rekeys} rekeys, at least {want} expected");
            ensure!(expired == 0, "{expired} keys expired unreplaced");
            Ok(format!(
                "{rekeys} rekeys during the transfer, {failures} rekey retries, none expired"
            ))
        })();
        report.check(&format!("{name} rekeyed all along"), r);
    }
    for &i in &[d1, d2, s1, s2] {
        let name = nl.o.nodes[i].name.clone();
        let r = (|| {
            let s = nl.o.status(i)?;
            let renewals = s["cert_renewals"].as_u64().context("no cert_renewals")?;
            let failures = s["cert_renewal_failures"].as_u64().unwrap_or(0);
            let not_after = s["cert_not_after"].as_u64().context("no cert_not_after")?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            ensure!(renewals >= 1, "{renewals} certificate renewals");
            ensure!(
                failures == 0,
                "{failures} failed renewals: {}",
                s["cert_renewal_error"]
            );
            ensure!(
                not_after > now,
                "its certificate expired {} s ago",
                now - not_after
            );
            Ok(format!(
                "{renewals} renewals, serial {}, valid {} s more",
                s["cert_serial"],
                not_after - now
            ))
        })();
        report.check(&format!("{name} renewed its certificate by itself"), r);
    }
    let renewals = counter(&nl, s1, "grant_renewals")? + counter(&nl, s2, "grant_renewals")?;
    let want = u64::from(TRANSFER_SECS) / GRANT_SECS;
    report.check(
        "the relayed pair renewed its grants",
        if renewals >= want {
            Ok(format!(
                "{renewals} renewals (a new route every {} s)",
                GRANT_SECS * 3 / 4
            ))
        } else {
            Err(anyhow::anyhow!(
                "{renewals} renewals, at least {want} expected"
            ))
        },
    );
    let path = nl.o.peer(s1, &nl.o.fqdn(s2))?["path"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    report.check(
        "the relayed tunnel is still up after its renewals",
        if path == "relayed" {
            Ok(String::new())
        } else {
            Err(anyhow::anyhow!("path {path}"))
        },
    );
    Ok(())
}
