//! `cyphonic lab revoke`: one of three nodes is revoked while the three
//! talk.
//!
//! ```text
//! internet (sw) -- cloud (AS, NMS, TRS), dns, n1, n2, n3 (global IPv4)
//! ```
//!
//! Tunnels n1-n2, n1-n3 and n2-n3 carry a ping from n1 to n3 (every
//! 100 ms) and iperf3 TCP from n1 to n2 and from n2 to n3. Then the
//! operator runs `cyphonic cloud revoke --device n3`, from another process
//! than the cloud's, as an operator would. The scenario measures how long
//! until n1 and n2 have no tunnel with n3 any more (at most 5 s), checks
//! that n3's last ping reply came before that, that n3 gets no new route,
//! that n3 knows it was withdrawn, and that n1 and n2 keep talking.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use super::direct::bring_up;
use super::nat_matrix::establish;
use super::overlay::{
    cloud_cli, has_peer, iperf_finish, iperf_start, reply_times, unix_now, Report, Underlay,
};
use crate::wait_until;

/// The longest a revoked node's tunnels may outlive the revocation.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("revoke: one of three nodes revoked during ping and iperf3");
    if let Err(e) = scenario(bin, &mut report) {
        report.check("scenario", Err(e));
    }
    println!("revoke: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

fn scenario(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut o = bring_up(bin, "revoke", Underlay::V4, &["n1", "n2", "n3"])?;
    report.check("cloud and 3 nodes registered", Ok(String::new()));
    let (n1, n2, n3) = (0, 1, 2);
    let (n3_vip, _) = establish(&o, n1, n3, Duration::from_secs(15)).context("n1 -> n3")?;
    establish(&o, n2, n3, Duration::from_secs(15)).context("n2 -> n3")?;
    let (n2_vip, _) = establish(&o, n1, n2, Duration::from_secs(15)).context("n1 -> n2")?;
    report.check("tunnels n1-n2, n1-n3, n2-n3 up", Ok(String::new()));

    let n1_ns = o.nodes[n1].ns.clone();
    let ping_log = o.lab.dir().join("revoke-ping.log");
    o.lab.spawn(
        &n1_ns,
        &[
            "sh",
            "-c",
            &format!(
                "ping -D -n -i 0.1 -W 1 -w 25 {n3_vip} > {}",
                ping_log.display()
            ),
        ],
        "revoke-ping",
        &[],
    )?;
    let to_n2 = iperf_start(&mut o, n1, n2, &n2_vip, 5201, 20, Some("100M"), "n1-n2")?;
    let to_n3 = iperf_start(&mut o, n2, n3, &n3_vip, 5202, 20, Some("100M"), "n2-n3")?;
    wait_until("pings to n3 answered", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&ping_log).unwrap_or_default();
        Ok((reply_times(&log).len() >= 20).then_some(()))
    })?;

    let f3 = o.fqdn(n3);
    let revoked_unix = unix_now();
    let revoked = Instant::now();
    let out = cloud_cli(
        &o,
        &[
            "cloud",
            "revoke",
            "--config",
            &o.cloud_dir.join("cloud.toml").to_string_lossy(),
            "--device",
            "n3",
        ],
    )?;
    ensure!(out.contains("revoked"), "cloud revoke printed {out:?}");

    for (i, name) in [(n1, "n1"), (n2, "n2")] {
        let r = wait_until(
            &format!("{name} to close its tunnel with n3"),
            Duration::from_secs(15),
            || Ok((!has_peer(&o, i, &f3)?).then(|| revoked.elapsed())),
        )
        .and_then(|took| {
            ensure!(took <= CLOSE_WITHIN, "closed after {took:?}");
            let c = &o.status(i)?["counters"]["peers_revoked"];
            ensure!(c == 1, "peers_revoked = {c}");
            Ok(format!(
                "closed {:.1} s after the revocation",
                took.as_secs_f64()
            ))
        });
        report.check(&format!("{name}'s tunnel with n3 closes within 5 s"), r);
    }
    report.check(
        "n3 is told it was withdrawn, and holds no tunnel",
        wait_until("n3 to know", Duration::from_secs(15), || {
            let s = o.status(n3)?;
            let refused = s["cloud"]["refused"].as_str().map(str::to_owned);
            let peers = s["peers"].as_array().map_or(0, Vec::len);
            Ok(refused.filter(|_| peers == 0))
        })
        .map(|why| format!("after {:.1} s: {why}", revoked.elapsed().as_secs_f64())),
    );

    report.check(
        "n1's transfer to n2 goes on: data every second",
        iperf_finish(&mut o, to_n2, Duration::from_secs(40)).and_then(|figures| {
            ensure!(
                figures.contains(" 0 of "),
                "a second without data: {figures}"
            );
            Ok(figures)
        }),
    );
    // Its time is up by now (it started with n1's): a live transfer
    // would have ended.
    let late = iperf_finish(&mut o, to_n3, Duration::from_secs(3));
    report.check(
        "n2's transfer to n3 stops",
        match late {
            Ok(figures) => Err(anyhow::anyhow!("it completed: {figures}")),
            Err(e) => Ok(format!("{e:#}")),
        },
    );
    report.check(
        "n3's pings stop by the time its tunnels close",
        (|| {
            let log = std::fs::read_to_string(&ping_log)?;
            let times = reply_times(&log);
            let last = times.last().copied().context("no replies at all")?;
            let after = last - revoked_unix;
            ensure!(
                after <= CLOSE_WITHIN.as_secs_f64(),
                "a reply {after:.1} s after the revocation"
            );
            Ok(format!(
                "{} replies, the last {after:.1} s after the revocation",
                times.len()
            ))
        })(),
    );
    report.check(
        "n3 gets no new route",
        (|| {
            let out = o.lab.exec(&o.nodes[n1].ns, &["getent", "hosts", &f3])?;
            ensure!(
                !out.status.success(),
                "getent answered {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            ensure!(!has_peer(&o, n1, &f3)?, "n1 has a peer entry for n3 again");
            Ok("n1's lookup of n3 fails".into())
        })(),
    );
    Ok(())
}
