//! `cyphonic lab policy`: the access policy, stated in the cloud and
//! enforced by the NMS and both ends.
//!
//! ```text
//! internet (sw) -- cloud (AS, NMS, TRS), dns, n1, n2, n3 (global IPv4)
//! ```
//!
//! The operator sets a policy with `cyphonic cloud policy set` (default
//! deny; n1 may open ICMP and tcp/5201 to n2). Then: n1's ping of n2 is
//! answered and iperf3 n1 -> n2 carries data; n2's ping of n1 is dropped
//! by n2's data plane (counted); n1 gets no route to n3 (its resolver
//! answers REFUSED, counted). During a 10 Hz ping n1 -> n2, a new document
//! drops the n1 -> n2 rule: the scenario measures how long until n1's
//! tunnel with n2 is closed and when the last reply came (at most 5 s).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use super::direct::bring_up;
use super::nat_matrix::establish;
use super::overlay::{
    cloud_cli, has_peer, iperf_finish, iperf_start, strip_ansi, unix_now, Overlay, Report, Underlay,
};
use crate::wait_until;

/// The longest a withdrawn route's tunnel (and its ping) may last.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

const FIRST: &str = r#"# n1 may reach n2 by ping and iperf3; nothing else is allowed.
default = "deny"

[groups]
clients = ["n1"]

[[rule]]
from = ["group:clients"]
to = ["n2"]
ports = ["icmp", "tcp/5201"]
"#;

const SECOND: &str = r#"# n1 may no longer reach n2; only n3 may reach n2.
default = "deny"

[[rule]]
from = ["n3"]
to = ["n2"]
ports = ["icmp"]
"#;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("policy: default deny, n1 -> n2 on ICMP and tcp/5201 only, then withdrawn");
    if let Err(e) = scenario(bin, &mut report) {
        report.check("scenario", Err(e));
    }
    println!("policy: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

/// The unix times of the replies in a `ping -D` log.
fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
        .collect()
}

fn counter(o: &Overlay, i: usize, section: &str, name: &str) -> anyhow::Result<u64> {
    o.status(i)?[section][name]
        .as_u64()
        .with_context(|| format!("status has no {section}.{name}"))
}

/// Writes `doc` to a file and sets it with `cyphonic cloud policy set`
/// (another process than the cloud's, as an operator would); waits until
/// the running NMS applied that version.
pub(crate) fn set_policy(o: &Overlay, name: &str, doc: &str) -> anyhow::Result<String> {
    let path = o.lab.dir().join(name);
    std::fs::write(&path, doc)?;
    let cfg = o.cloud_dir.join("cloud.toml");
    let out = cloud_cli(
        o,
        &[
            "cloud",
            "policy",
            "set",
            "--config",
            &cfg.to_string_lossy(),
            &path.to_string_lossy(),
        ],
    )?;
    let version = out
        .split_whitespace()
        .nth(2)
        .context("no version printed")?
        .to_owned();
    ensure!(
        out.starts_with("policy version"),
        "policy set printed {out:?}"
    );
    Ok(version)
}

pub(crate) fn applied(o: &Overlay, version: &str) -> anyhow::Result<Duration> {
    let since = Instant::now();
    let needle = format!("version={version}");
    wait_until(
        "the NMS to apply the policy",
        Duration::from_secs(5),
        || {
            let log = strip_ansi(&o.lab.log("cloud"));
            Ok(log
                .lines()
                .any(|l| l.contains("applying the access policy") && l.contains(&needle))
                .then(|| since.elapsed()))
        },
    )
}

fn scenario(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut o = bring_up(bin, "policy", Underlay::V4, &["n1", "n2", "n3"])?;
    let (n1, n2, n3) = (0, 1, 2);
    report.check("cloud and 3 nodes registered", Ok(String::new()));

    // Mistakes are refused, naming the line and the item.
    let bad = o.lab.dir().join("bad-policy.toml");
    std::fs::write(&bad, FIRST.replace("\"n2\"", "\"n9\""))?;
    let cfg = o.cloud_dir.join("cloud.toml");
    let refused = o.lab.exec(
        &o.cloud_ns,
        &[
            &o.bin(),
            "cloud",
            "policy",
            "set",
            "--config",
            &cfg.to_string_lossy(),
            &bad.to_string_lossy(),
        ],
    )?;
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    report.check(
        "a policy naming an unknown device is refused",
        (|| {
            ensure!(!refused.status.success(), "it was accepted");
            ensure!(err.contains("line 9") && err.contains("\"n9\""), "{err}");
            Ok(err.lines().last().unwrap_or_default().trim().to_owned())
        })(),
    );

    let v1 = set_policy(&o, "policy-1.toml", FIRST)?;
    report.check(
        "`cloud policy set` from another process reaches the running NMS",
        applied(&o, &v1).map(|t| format!("version {v1} applied within {:.1} s", t.as_secs_f64())),
    );

    let f2 = o.fqdn(n2);
    let (n2_vip, _) = establish(&o, n1, n2, Duration::from_secs(15)).context("n1 -> n2")?;
    report.check(
        "n1 pings n2 (allowed: icmp)",
        (|| {
            let out = o.sh(n1, &format!("ping -n -c 3 -i 0.2 -W 2 {n2_vip}"))?;
            ensure!(out.contains(" 0% packet loss"), "{out}");
            Ok("3 of 3 answered".into())
        })(),
    );
    let to_n2 = iperf_start(&mut o, n1, n2, &n2_vip, 5201, 3, None, "n1-n2")?;
    report.check(
        "iperf3 n1 -> n2 on tcp/5201 carries data (allowed)",
        iperf_finish(&mut o, to_n2, Duration::from_secs(15)),
    );

    let s1 = o.status(n1)?;
    let n1_vip = s1["vip4"].as_str().context("n1 has no VIPv4")?.to_owned();
    report.check(
        "n2 pings n1: dropped by n2's data plane and counted",
        (|| {
            let before = counter(&o, n2, "dataplane", "tx_policy_denied")?;
            let out = o.lab.exec(
                &o.nodes[n2].ns,
                &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", &n1_vip],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(!out.status.success(), "answered: {text}");
            let after = counter(&o, n2, "dataplane", "tx_policy_denied")?;
            ensure!(after >= before + 3, "tx_policy_denied {before} -> {after}");
            Ok(format!(
                "no reply; n2's tx_policy_denied {before} -> {after}"
            ))
        })(),
    );

    let f3 = o.fqdn(n3);
    report.check(
        "n1 gets no route to n3",
        (|| {
            let out = o.lab.exec(&o.nodes[n1].ns, &["getent", "hosts", &f3])?;
            ensure!(
                !out.status.success(),
                "getent answered {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            ensure!(!has_peer(&o, n1, &f3)?, "n1 has a peer entry for n3");
            let denied = counter(&o, n1, "counters", "directions_denied")?;
            ensure!(denied >= 1, "directions_denied = {denied}");
            Ok(format!("lookup refused; n1's directions_denied = {denied}"))
        })(),
    );

    // A running ping; the operator withdraws n1 -> n2.
    let ping_log = o.lab.dir().join("policy-ping.log");
    o.lab.spawn(
        &o.nodes[n1].ns.clone(),
        &[
            "sh",
            "-c",
            &format!(
                "ping -D -n -i 0.1 -W 1 -w 15 {n2_vip} > {}",
                ping_log.display()
            ),
        ],
        "policy-ping",
        &[],
    )?;
    wait_until("pings to n2 answered", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&ping_log).unwrap_or_default();
        Ok((reply_times(&log).len() >= 10).then_some(()))
    })?;
    let set_unix = unix_now();
    let set_at = Instant::now();
    let v2 = set_policy(&o, "policy-2.toml", SECOND)?;
    report.check(
        "n1's tunnel with n2 closes within 5 s of `policy set`",
        wait_until(
            "n1 to close its tunnel with n2",
            Duration::from_secs(15),
            || Ok((!has_peer(&o, n1, &f2)?).then(|| set_at.elapsed())),
        )
        .and_then(|took| {
            ensure!(took <= CLOSE_WITHIN, "closed after {took:?}");
            let c = counter(&o, n1, "counters", "routes_withdrawn")?;
            ensure!(c == 1, "routes_withdrawn = {c}");
            Ok(format!(
                "version {v2}: closed {:.1} s after the command",
                took.as_secs_f64()
            ))
        }),
    );
    report.check(
        "n2 closes its side too",
        wait_until(
            "n2 to close its tunnel with n1",
            Duration::from_secs(10),
            || Ok((!has_peer(&o, n2, &o.fqdn(n1))?).then(|| set_at.elapsed())),
        )
        .map(|t| format!("{:.1} s after the command", t.as_secs_f64())),
    );
    report.check(
        "the running ping stops within 5 s",
        (|| {
            let log = std::fs::read_to_string(&ping_log)?;
            let times = reply_times(&log);
            let last = times.last().copied().context("no replies at all")?;
            let after = last - set_unix;
            ensure!(
                after <= CLOSE_WITHIN.as_secs_f64(),
                "a reply {after:.1} s after the command"
            );
            Ok(format!(
                "{} replies, the last {after:.2} s after the command",
                times.len()
            ))
        })(),
    );
    report.check(
        "n1 gets no new route to n2",
        (|| {
            let out = o.lab.exec(&o.nodes[n1].ns, &["getent", "hosts", &f2])?;
            ensure!(
                !out.status.success(),
                "getent answered {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            Ok("n1's lookup of n2 is refused".into())
        })(),
    );
    report.check(
        "`cloud policy show` prints the document in force",
        (|| {
            let out = cloud_cli(
                &o,
                &[
                    "cloud",
                    "policy",
                    "show",
                    "--config",
                    &cfg.to_string_lossy(),
                ],
            )?;
            ensure!(out.contains(&format!("# policy version {v2}")), "{out}");
            ensure!(out.contains("from = [\"n3\"]"), "{out}");
            Ok(format!("version {v2}"))
        })(),
    );
    Ok(())
}
