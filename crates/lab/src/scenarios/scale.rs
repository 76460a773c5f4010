//! The control plane beyond one process (`docs/protocol.md` §5.19).
//!
//! `cyphonic lab scale`: two cloud instances on one PostgreSQL.
//!
//! ```text
//! internet (sw) -- cloud  192.0.2.1  instance a: AS, NMS, TRS; link :4510
//!               -- cloud2 192.0.2.2  instance b: AS, NMS, TRS; link :4510
//!               -- n1, n2 (enrolled at a), n3 (enrolled at b)
//! PostgreSQL: a private cluster on a Unix socket, one database for both
//! ```
//!
//! n1 reaches n3 by name across the instances (a asks b over the link).
//! Under a 10 Hz ping n1 -> n3 and an iperf3 n2 -> n1, instance a is
//! killed: the tunnels go on (the longest ping gap and iperf3's figures
//! printed), n1 and n2 register their sessions at b (same session, same
//! VIPs), and a new route n2 -> n3 comes up through b.
//!
//! `cyphonic lab domains`: two cooperating domains, each its own cloud.
//!
//! ```text
//! internet (sw) -- cloud  192.0.2.1  cyphonic.internal (w1)  100.64.0.0/16
//!               -- cloud2 192.0.2.2  east.example (e1, e2)    100.65.0.0/16
//! ```
//!
//! e1 resolves w1.cyphonic.internal through its own resolver and reaches
//! it directly (east's NMS asks west's); w1 resolves e1 back over the same
//! tunnel; e2 drops UDP from w1 (a firewall), so w1 -> e2 comes up relayed
//! through east's TRS. Each NMS directs only its
//! own node; the links carry the rest.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use cyphonic_cloud::pg_cluster::PgCluster;

use super::nat_matrix::establish;
use super::overlay::{
    iperf_finish, iperf_start, longest_gap, password, reply_times, set_config_keys, unix_now,
    Overlay, Report, Underlay, CLOUD_METRICS, DOMAIN,
};
use crate::wait_until;

const A_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const LINK_PORT: u16 = 4510;
const NMS_PORT: u16 = 4502;
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// `lab scale` runs the default keepalive (15 s; other labs shorten it to
/// 2 s), so the time a node takes to move to the surviving instance is
/// the one users see: the first keepalive after the kill (anywhere in the
/// interval) and three answer waits (5 s; after a miss, keepalives
/// follow one another), and a Registration's round trips.
const DEFAULT_KEEPALIVE_SECS: u64 = 15;
const MOVE_WITHIN: Duration = Duration::from_secs(DEFAULT_KEEPALIVE_SECS + 3 * 5 + 15);
const EAST: &str = "east.example";

pub fn run_scale(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("scale: two cloud instances on one PostgreSQL; one dies under ping and iperf3");
    if let Err(e) = scale(bin, &mut report) {
        report.check("scenario", Err(e));
    }
    println!("scale: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

pub fn run_domains(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("domains: two cooperating domains, each with its own cloud, direct and relayed");
    if let Err(e) = domains(bin, &mut report) {
        report.check("scenario", Err(e));
    }
    println!(
        "domains: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

/// A second cloud's namespace `cloud2` at 192.0.2.2 (and 2001:db8::2) on
/// the lab's switch.
fn add_second_cloud_ns(o: &mut Overlay) -> anyhow::Result<()> {
    o.lab.add_ns("cloud2")?;
    o.lab
        .link("cloud2", "eth0", &["192.0.2.2/24"], "sw", "pcloud2", &[])?;
    o.lab.sh("sw", "ip link set pcloud2 master br0")?;
    Ok(())
}

/// `[[link]]` tables appended to a cloud.toml (tables go after the keys).
fn append_links(path: &Path, tables: &[String]) -> anyhow::Result<()> {
    let mut text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for t in tables {
        text.push_str("\n[[link]]\n");
        text.push_str(t);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

/// `cyphonic cloud <what...> --config <cfg> <rest...>` in `ns`, e.g.
/// `(["device", "add"], ["n1", "--password", ...])`.
fn cloud_cmd(
    o: &Overlay,
    ns: &str,
    cfg: &Path,
    what: &[&str],
    rest: &[&str],
) -> anyhow::Result<String> {
    let (bin, cfg_s) = (o.bin(), cfg.to_string_lossy().to_string());
    let mut args = vec![bin.as_str(), "cloud"];
    args.extend_from_slice(what);
    args.extend(["--config", cfg_s.as_str()]);
    args.extend_from_slice(rest);
    let out = o.lab.exec(ns, &args)?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Starts `cloud run` in `ns` with `cfg`; returns its PID.
fn start_cloud_at(o: &mut Overlay, ns: &str, cfg: &Path, log: &str) -> anyhow::Result<u32> {
    let bin = o.bin();
    let cfg_s = cfg.to_string_lossy().to_string();
    o.lab
        .spawn(ns, &[&bin, "cloud", "run", "--config", &cfg_s], log, &[])
}

/// Waits until a cloud's log shows its link to the other one up.
fn wait_link_up(o: &Overlay, log: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{log}'s NMS link up"),
        Duration::from_secs(15),
        || Ok(o.lab.log(log).contains("NMS link up").then_some(())),
    )
}

/// A number from a cloud's /metrics, read inside `ns`.
fn metric(o: &Overlay, ns: &str, name: &str) -> anyhow::Result<u64> {
    let out = o.lab.exec(
        ns,
        &[
            "curl",
            "-sf",
            "--max-time",
            "3",
            &format!("http://{CLOUD_METRICS}/metrics"),
        ],
    )?;
    ensure!(out.status.success(), "no /metrics in {ns}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
        })
        .with_context(|| format!("{name} not in {ns}'s /metrics"))
}

fn scale(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let started = Instant::now();
    let pg = PgCluster::start().context("a private PostgreSQL (scripts/deps.sh installs it)")?;
    let url = pg.create_database("cyphonic")?;
    let mut o = Overlay::build("scale", bin, Underlay::V4, &["n1", "n2", "n3"])?;
    add_second_cloud_ns(&mut o)?;
    let a_dir = o.cloud_dir.clone();
    let a_cfg = a_dir.join("cloud.toml");
    let b_dir = o.lab.dir().join("cloud2");
    super::nat::copy_dir(&a_dir, &b_dir)?;
    let b_cfg = b_dir.join("cloud.toml");
    // Both instances on the one database; each links to the other.
    set_config_keys(
        &a_cfg,
        &[
            ("database", format!("{url:?}")),
            ("instance", "\"a\"".into()),
            ("link_listen", format!("\"{A_V4}:{LINK_PORT}\"")),
            ("keepalive_secs", DEFAULT_KEEPALIVE_SECS.to_string()),
        ],
    )?;
    set_config_keys(
        &b_cfg,
        &[
            ("data_dir", quoted(&b_dir)),
            ("database", format!("{url:?}")),
            ("instance", "\"b\"".into()),
            ("public_addrs", format!("[\"{B_V4}\"]")),
            ("link_listen", format!("\"{B_V4}:{LINK_PORT}\"")),
            ("keepalive_secs", DEFAULT_KEEPALIVE_SECS.to_string()),
        ],
    )?;
    append_links(&a_cfg, &[format!("addr = \"{B_V4}:{LINK_PORT}\"")])?;
    append_links(&b_cfg, &[format!("addr = \"{A_V4}:{LINK_PORT}\"")])?;
    let cloud_ns = o.cloud_ns.clone();
    for n in ["n1", "n2", "n3"] {
        cloud_cmd(
            &o,
            &cloud_ns,
            &a_cfg,
            &["device", "add"],
            &[n, "--password", &password(n)],
        )?;
    }
    o.start_cloud()?;
    start_cloud_at(&mut o, "cloud2", &b_cfg, "cloud2")?;
    o.nodes[2].cloud = Some(IpAddr::V4(B_V4));
    for i in 0..3 {
        o.enroll(i)?;
        o.start_node(i)?;
    }
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(o.wait_registered(i, Duration::from_secs(20))?);
    }
    report.check(
        "two instances on one PostgreSQL, linked; n1, n2 at a, n3 at b",
        (|| {
            wait_link_up(&o, "cloud")?;
            wait_link_up(&o, "cloud2")?;
            let at = |i: usize| before[i]["cloud"]["nms"].as_str().unwrap_or("?").to_owned();
            ensure!(
                at(0) == format!("{A_V4}:{NMS_PORT}") && at(2) == format!("{B_V4}:{NMS_PORT}"),
                "n1 at {}, n3 at {}",
                at(0),
                at(2)
            );
            Ok(format!(
                "{:.1} s; VIPs {} {} {} from one database",
                started.elapsed().as_secs_f64(),
                before[0]["vip4"],
                before[1]["vip4"],
                before[2]["vip4"]
            ))
        })(),
    );

    let n3_vip = report_establish(report, &o, 0, 2, "n1 -> n3 by name across the instances")?;
    let n1_vip = report_establish(report, &o, 1, 0, "n2 -> n1 by name at one instance")?;
    report.check(
        "instance b directed n3's side of n1 -> n3 (asked over the link)",
        metric(&o, "cloud2", "cyphonic_cloud_nms_links_asked_total").and_then(|asked| {
            ensure!(asked >= 1, "b was asked {asked} times");
            Ok(format!("{asked} link request(s) at b"))
        }),
    );

    // Load: a 10 Hz ping n1 -> n3 and an iperf3 n2 -> n1.
    let ping_log = o.lab.dir().join("scale-ping.log");
    let n1_ns = o.nodes[0].ns.clone();
    o.lab.spawn(
        &n1_ns,
        &[
            "sh",
            "-c",
            &format!(
                "ping -D -n -i 0.1 -W 1 -w 40 {n3_vip} > {}",
                ping_log.display()
            ),
        ],
        "scale-ping",
        &[],
    )?;
    wait_until("pings n1 -> n3 answered", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&ping_log).unwrap_or_default();
        Ok((reply_times(&log).len() >= 10).then_some(()))
    })?;
    let iperf = iperf_start(&mut o, 1, 0, &n1_vip, 5301, 20, None, "scale")?;
    std::thread::sleep(Duration::from_secs(3));

    // Instance a dies without a word.
    let a_pid = o.cloud_pid.take().context("instance a not running")?;
    let killed_unix = unix_now();
    let killed = Instant::now();
    // SAFETY: a pid this lab spawned and has not reaped.
    unsafe {
        libc::kill(a_pid as i32, libc::SIGKILL);
    }
    o.lab.kill(a_pid)?;

    let moved = wait_until("n1 and n2 registered at b", MOVE_WITHIN, || {
        let (s1, s2) = (o.status(0)?, o.status(1)?);
        let at_b = |s: &serde_json::Value| {
            s["cloud"]["registered"] == true && s["cloud"]["nms"] == format!("{B_V4}:{NMS_PORT}")
        };
        Ok((at_b(&s1) && at_b(&s2)).then(|| (killed.elapsed(), s1, s2)))
    });
    report.check(
        "n1 and n2 register their sessions at b: same session, same VIPs",
        moved.and_then(|(took, s1, s2)| {
            for (before, now) in [(&before[0], &s1), (&before[1], &s2)] {
                ensure!(
                    before["cloud"]["session"] == now["cloud"]["session"],
                    "session {} became {}",
                    before["cloud"]["session"],
                    now["cloud"]["session"]
                );
                ensure!(
                    before["vip4"] == now["vip4"] && before["vip6"] == now["vip6"],
                    "VIPs changed"
                );
            }
            Ok(format!(
                "{:.1} s after the kill, sessions {} and {} kept",
                took.as_secs_f64(),
                s1["cloud"]["session"],
                s2["cloud"]["session"]
            ))
        }),
    );

    report.check(
        "iperf3 n2 -> n1 runs through the kill",
        iperf_finish(&mut o, iperf, Duration::from_secs(40)),
    );
    report.check(
        "the ping n1 -> n3 goes on (longest gap after the kill)",
        (|| {
            let log = std::fs::read_to_string(&ping_log).unwrap_or_default();
            let replies = reply_times(&log);
            let after = replies.iter().filter(|t| **t > killed_unix).count();
            ensure!(after >= 20, "{after} replies after the kill");
            let gap = longest_gap(&replies, killed_unix).unwrap_or(f64::MAX);
            ensure!(gap < 1.0, "a {gap:.2} s gap");
            Ok(format!(
                "{after} replies after the kill, longest gap {:.0} ms",
                gap * 1e3
            ))
        })(),
    );
    let _ = report_establish(report, &o, 1, 2, "a new route n2 -> n3 through b alone")?;

    report.check(
        "both instances' devices and sessions are the database's",
        cloud_cmd(&o, "cloud2", &b_cfg, &["device", "list"], &[]).and_then(|list| {
            for n in ["n1", "n2", "n3"] {
                ensure!(list.contains(n), "{n} missing from b's list:\n{list}");
            }
            Ok("b lists n1, n2, n3".into())
        }),
    );
    drop(o);
    drop(pg);
    Ok(())
}

/// Establishes `mn` -> `cn` by name (getent, then the tunnel) and reports
/// the path; returns `cn`'s VIPv4.
fn report_establish(
    report: &mut Report,
    o: &Overlay,
    mn: usize,
    cn: usize,
    what: &str,
) -> anyhow::Result<String> {
    let r = establish(o, mn, cn, ESTABLISH_TIMEOUT);
    let vip = r.as_ref().map(|(v, _)| v.clone()).ok();
    report.check(
        what,
        r.and_then(|(vip, _)| {
            let p = o.peer(mn, &o.fqdn(cn))?;
            Ok(format!("{vip}, {} over {}", p["path"], p["transport"]))
        }),
    );
    vip.context("no route")
}

fn domains(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut o = Overlay::build("domains", bin, Underlay::V4, &["w1", "e1", "e2"])?;
    add_second_cloud_ns(&mut o)?;
    let w_dir = o.cloud_dir.clone();
    let w_cfg = w_dir.join("cloud.toml");
    let cloud_ns = o.cloud_ns.clone();
    // The overlay's build added every node to the first cloud: e1 and e2
    // belong to east, so west disables its own devices of those names.
    for n in ["e1", "e2"] {
        cloud_cmd(&o, &cloud_ns, &w_cfg, &["device", "disable"], &[n])?;
    }
    let e_dir = o.lab.dir().join("east");
    let bin_s = o.bin();
    let e_dir_s = e_dir.to_string_lossy().to_string();
    let out = o.lab.exec(
        "cloud2",
        &[
            &bin_s,
            "cloud",
            "init",
            "--dir",
            &e_dir_s,
            "--domain",
            EAST,
            "--public",
            "192.0.2.2",
        ],
    )?;
    ensure!(
        out.status.success(),
        "east's cloud init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e_cfg = e_dir.join("cloud.toml");
    // One overlay address space, split: disjoint prefixes in 100.64.0.0/10
    // and one /48.
    set_config_keys(
        &w_cfg,
        &[
            ("vip4_prefix", "\"100.64.0.0/16\"".into()),
            ("vip6_prefix", "\"fd7a:6379:7068::/64\"".into()),
            ("link_listen", format!("\"{A_V4}:{LINK_PORT}\"")),
        ],
    )?;
    set_config_keys(
        &e_cfg,
        &[
            ("vip4_prefix", "\"100.65.0.0/16\"".into()),
            ("vip6_prefix", "\"fd7a:6379:7068:1::/64\"".into()),
            ("keepalive_secs", "2".into()),
            ("metrics_listen", format!("\"{CLOUD_METRICS}\"")),
            ("link_listen", format!("\"{B_V4}:{LINK_PORT}\"")),
        ],
    )?;
    let link = |addr: Ipv4Addr, domain: &str, root: &Path, v4: &str, v6: &str| {
        format!(
            "addr = \"{addr}:{LINK_PORT}\"\ndomain = \"{domain}\"\nroot = {}\nvip4_prefix = \"{v4}\"\nvip6_prefix = \"{v6}\"",
            quoted(root)
        )
    };
    append_links(
        &w_cfg,
        &[link(
            B_V4,
            EAST,
            &e_dir.join("root.pem"),
            "100.65.0.0/16",
            "fd7a:6379:7068:1::/64",
        )],
    )?;
    append_links(
        &e_cfg,
        &[link(
            A_V4,
            DOMAIN,
            &w_dir.join("root.pem"),
            "100.64.0.0/16",
            "fd7a:6379:7068::/64",
        )],
    )?;
    for n in ["e1", "e2"] {
        cloud_cmd(
            &o,
            "cloud2",
            &e_cfg,
            &["device", "add"],
            &[n, "--password", &password(n)],
        )?;
    }
    o.start_cloud()?;
    start_cloud_at(&mut o, "cloud2", &e_cfg, "cloud2")?;
    o.enroll(0)?;
    for i in [1, 2] {
        o.nodes[i].cloud = Some(IpAddr::V4(B_V4));
        o.enroll_under(i, &password(&o.nodes[i].name), &e_dir.join("root.pem"))?;
    }
    for i in 0..3 {
        o.start_node(i)?;
    }
    let mut regs = Vec::new();
    for i in 0..3 {
        regs.push(o.wait_registered(i, Duration::from_secs(20))?);
    }
    report.check(
        "two clouds, two domains, linked; w1 at west, e1 and e2 at east",
        (|| {
            wait_link_up(&o, "cloud")?;
            wait_link_up(&o, "cloud2")?;
            ensure!(
                regs[1]["fqdn"] == "e1.east.example",
                "e1 is {}",
                regs[1]["fqdn"]
            );
            Ok(format!(
                "{:.1} s; w1 {}, e1 {}, e2 {}",
                started.elapsed().as_secs_f64(),
                regs[0]["vip4"],
                regs[1]["vip4"],
                regs[2]["vip4"]
            ))
        })(),
    );
    // e2 drops every UDP datagram from w1's address: no direct path.
    o.lab.sh(
        &o.nodes[2].ns.clone(),
        &format!(
            "nft add table inet block && nft add chain inet block input '{{ type filter hook input priority 0; }}' && nft add rule inet block input ip saddr {} udp dport != 53 drop",
            o.nodes[0].underlay
        ),
    )?;

    report.check(
        "e1 -> w1.cyphonic.internal by name: direct (east asks west)",
        reach_by_name(&o, 1, &format!("w1.{DOMAIN}"), &regs[0]).and_then(|p| {
            ensure!(p["path"] == "direct", "path {}", p["path"]);
            Ok(format!("{} over {}", p["path"], p["transport"]))
        }),
    );
    report.check(
        "w1 -> e1.east.example by name: the same tunnel",
        reach_by_name(&o, 0, "e1.east.example", &regs[1])
            .map(|p| format!("{} ({})", p["path"], p["state"])),
    );
    report.check(
        "w1 -> e2.east.example by name: relayed (e2's firewall drops w1's UDP)",
        reach_by_name(&o, 0, "e2.east.example", &regs[2]).and_then(|p| {
            ensure!(p["path"] == "relayed", "path {}", p["path"]);
            Ok(format!(
                "{} via {} over {}",
                p["path"], p["endpoint"], p["transport"]
            ))
        }),
    );
    report.check(
        "each NMS answered the other's link requests",
        (|| {
            let west = metric(&o, &cloud_ns, "cyphonic_cloud_nms_links_asked_total")?;
            let east = metric(&o, "cloud2", "cyphonic_cloud_nms_links_asked_total")?;
            ensure!(
                west >= 1 && east >= 1,
                "west asked {west}, east asked {east}"
            );
            Ok(format!("west answered {west}, east {east}"))
        })(),
    );
    Ok(())
}

/// Node `i` resolves `fqdn` (getent, through its own resolver) to the
/// VIPs `status` shows, pings it by name, and returns its peer entry.
fn reach_by_name(
    o: &Overlay,
    i: usize,
    fqdn: &str,
    status: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let vip4 = status["vip4"].as_str().context("no VIPv4")?;
    let ns = o.nodes[i].ns.clone();
    let out = o.lab.exec(&ns, &["getent", "ahosts", fqdn])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        text.contains(vip4),
        "getent ahosts {fqdn}: {:?}, not {vip4}",
        text.trim()
    );
    let p = wait_until(&format!("{fqdn} established"), ESTABLISH_TIMEOUT, || {
        let p = o.peer(i, fqdn).unwrap_or_default();
        Ok((p["state"] == "established").then_some(p))
    })?;
    let out = o
        .lab
        .exec(&ns, &["ping", "-c", "3", "-i", "0.2", "-W", "2", fqdn])?;
    ensure!(
        out.status.success(),
        "ping {fqdn}: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(p)
}
