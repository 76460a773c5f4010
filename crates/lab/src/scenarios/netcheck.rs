//! `cyphonic lab netcheck`: `cyphonic netcheck --json` on nodes placed
//! everywhere the NAT lab can put them, each answer checked against the
//! placement.
//!
//! ```text
//!   |-- cloud  192.0.2.1  2001:db8::1   AS + NMS + TRS, native ports and 443
//!   |-- pub    192.0.2.11 2001:db8::11  dual stack, its daemon running
//!   |-- v6     2001:db8::12             IPv6 only
//!   |-- eim    masquerade               `-- e1
//!   |-- sym    masquerade fully-random  `-- s1
//!   |-- fwa    masquerade + mode (a) UDP 443 and TCP 443 out only  `-- a1
//!   |-- fwb    masquerade + mode (b) TCP 443 out only              `-- b1
//!   |-- fwc    masquerade + mode (c) open                          `-- c1
//!   `-- upnp   miniupnpd (PCP, NAT-PMP, UPnP IGD) behind an ISP router `-- u1
//! ```
//!
//! Every node is enrolled (firewalls open), then the firewalls take their
//! modes and every node runs netcheck at once; only `pub` runs its daemon,
//! which must stay logged in and registered throughout (netcheck uses
//! sockets of its own and never logs in). Each case prints one line; the
//! cloud's `/metrics` must count the Reflects it answered.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use serde_json::Value;

use super::firewall::{set_firewall_mode, Mode};
use super::nat::{NatKind, NatLab, Placement, Topology};
use super::overlay::{Report, CLOUD_METRICS};

/// netcheck must finish within this even where nothing answers.
const NETCHECK_DEADLINE: Duration = Duration::from_secs(12);

/// What one case expects of netcheck's JSON.
struct Case {
    label: &'static str,
    node: &'static str,
    /// The firewall mode of its router, if it has one.
    firewall: Option<(&'static str, Mode)>,
    nat: &'static str,
    udp_4502: bool,
    udp_443: bool,
    tcp_443: bool,
    ipv4: bool,
    ipv6: bool,
    /// The transport relays' latency must show over.
    relay_over: &'static str,
    /// A port mapper must answer (and name the router's public address).
    mapper: bool,
}

const CASES: &[Case] = &[
    Case {
        label: "public, dual stack, beside its running daemon",
        node: "pub",
        firewall: None,
        nat: "none",
        udp_4502: true,
        udp_443: true,
        tcp_443: true,
        ipv4: true,
        ipv6: true,
        relay_over: "udp_ms",
        mapper: false,
    },
    Case {
        label: "IPv6 only",
        node: "v6",
        firewall: None,
        nat: "none",
        udp_4502: true,
        udp_443: true,
        tcp_443: true,
        ipv4: false,
        ipv6: true,
        relay_over: "udp_ms",
        mapper: false,
    },
    Case {
        label: "endpoint-independent NAT",
        node: "e1",
        firewall: None,
        nat: "endpoint-independent",
        udp_4502: true,
        udp_443: true,
        tcp_443: true,
        ipv4: true,
        ipv6: false,
        relay_over: "udp_ms",
        mapper: false,
    },
    Case {
        label: "symmetric NAT",
        node: "s1",
        firewall: None,
        nat: "symmetric",
        udp_4502: true,
        udp_443: true,
        tcp_443: true,
        ipv4: true,
        ipv6: false,
        relay_over: "udp_ms",
        mapper: false,
    },
    Case {
        label: "firewall (a) UDP 443 and TCP 443 only",
        node: "a1",
        firewall: Some(("fwa", Mode::Web)),
        nat: "unknown",
        udp_4502: false,
        udp_443: true,
        tcp_443: true,
        ipv4: true,
        ipv6: false,
        relay_over: "quic_ms",
        mapper: false,
    },
    Case {
        label: "firewall (b) TCP 443 only",
        node: "b1",
        firewall: Some(("fwb", Mode::TcpOnly)),
        nat: "unknown",
        udp_4502: false,
        udp_443: false,
        tcp_443: true,
        ipv4: true,
        ipv6: false,
        relay_over: "tcp_ms",
        mapper: false,
    },
    Case {
        label: "firewall (c) open",
        node: "c1",
        firewall: Some(("fwc", Mode::Open)),
        nat: "endpoint-independent",
        udp_4502: true,
        udp_443: true,
        tcp_443: true,
        ipv4: true,
        ipv6: false,
        relay_over: "udp_ms",
        mapper: false,
    },
    Case {
        label: "port-mapping router (miniupnpd)",
        node: "u1",
        firewall: None,
        nat: "endpoint-independent",
        udp_4502: true,
        udp_443: true,
        tcp_443: true,
        ipv4: true,
        ipv6: false,
        relay_over: "udp_ms",
        mapper: true,
    },
];

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut report = Report::default();
    println!("netcheck: cyphonic netcheck --json behind every NAT kind and firewall mode");
    if let Err(e) = run_all(bin, &mut report) {
        report.check("scenario set-up", Err(e));
    }
    println!("  ({:.0} s)", started.elapsed().as_secs_f64());
    println!(
        "netcheck: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

fn run_all(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut nl = Topology::new()
        .router("eim", NatKind::Eim)
        .router("sym", NatKind::Sym)
        .router("fwa", NatKind::Eim)
        .router("fwb", NatKind::Eim)
        .router("fwc", NatKind::Eim)
        .upnp_router("upnp", NatKind::Eim, true)
        .node("pub", Placement::Ds)
        .node("v6", Placement::V6)
        .node_behind("e1", "eim")
        .node_behind("s1", "sym")
        .node_behind("a1", "fwa")
        .node_behind("b1", "fwb")
        .node_behind("c1", "fwc")
        .node_behind("u1", "upnp")
        .build("netcheck", bin)?;

    println!("set-up:");
    nl.o.start_cloud()?;
    enroll_all(&nl)?;
    let p = nl.node("pub")?;
    nl.o.start_node(p)?;
    nl.o.wait_registered(p, Duration::from_secs(20))?;
    let logins_before = logins(&nl, p);
    for case in CASES {
        if let Some((router, mode)) = case.firewall {
            let ns = nl.router(router)?.ns.clone();
            set_firewall_mode(&nl.o, &ns, mode)?;
        }
    }
    report.check(
        "every node enrolled, pub's daemon registered, firewalls in their modes",
        Ok(String::new()),
    );

    println!("cases (netcheck on every node at once):");
    let answers = netcheck_all(&nl)?;
    for (case, answer) in CASES.iter().zip(answers) {
        let checked = answer.and_then(|v| check(&nl, case, &v));
        report.check(&format!("netcheck {}", case.label), checked);
    }

    report.check(
        "the readable report (pub)",
        (|| {
            let n = &nl.o.nodes[p];
            let state = n.state_dir.to_string_lossy().to_string();
            let out =
                nl.o.lab
                    .exec(&n.ns, &[&nl.o.bin(), "netcheck", "--state-dir", &state])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in [
                "* NAT: none",
                "* UDP 4502: yes",
                "* IPv6: yes",
                "* Relays (TRS):",
            ] {
                ensure!(text.contains(line), "no {line:?} in\n{text}");
            }
            for line in text.lines() {
                println!("        {line}");
            }
            Ok(String::new())
        })(),
    );

    println!("afterwards:");
    report.check(
        "pub's daemon undisturbed: still registered, no new Login",
        (|| {
            let status = nl.o.status(p)?;
            ensure!(status["cloud"]["registered"] == true, "{status}");
            let after = logins(&nl, p);
            ensure!(
                after == logins_before,
                "{after} Logins after netcheck, {logins_before} before"
            );
            Ok(format!("{after} Login"))
        })(),
    );
    report.check(
        "the cloud's /metrics counts the Reflects answered",
        (|| {
            let out = nl.o.lab.sh(
                &nl.o.cloud_ns,
                &format!("curl -sSf http://{CLOUD_METRICS}/metrics"),
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let value = |name: &str| -> anyhow::Result<u64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")))
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("no {name}"))
            };
            let nms = value("cyphonic_cloud_nms_reflects_total")?;
            let trs = value("cyphonic_cloud_trs_reflects_total")?;
            ensure!(nms > 0 && trs > 0, "NMS {nms}, TRS {trs}");
            Ok(format!("NMS {nms}, TRS {trs}"))
        })(),
    );
    Ok(())
}

/// Enrolls every node at once (the AS is on TCP 4501: before the firewalls
/// close it).
fn enroll_all(nl: &NatLab) -> anyhow::Result<()> {
    let o = &nl.o;
    let failed: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..o.nodes.len())
            .map(|i| s.spawn(move || o.enroll(i)))
            .collect();
        threads
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let r = t
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("enroll thread panicked")));
                r.err().map(|e| format!("{}: {e:#}", o.nodes[i].name))
            })
            .collect()
    });
    ensure!(failed.is_empty(), "enrolling: {}", failed.join("; "));
    Ok(())
}

/// `cyphonic netcheck --json` on every case's node at once.
fn netcheck_all(nl: &NatLab) -> anyhow::Result<Vec<anyhow::Result<Value>>> {
    let o = &nl.o;
    let mut nodes = Vec::new();
    for case in CASES {
        nodes.push(nl.node(case.node)?);
    }
    let answers = std::thread::scope(|s| {
        let threads: Vec<_> = nodes
            .iter()
            .map(|&i| {
                s.spawn(move || -> anyhow::Result<Value> {
                    let n = &o.nodes[i];
                    let state = n.state_dir.to_string_lossy().to_string();
                    let started = Instant::now();
                    let out = o.lab.exec(
                        &n.ns,
                        &[&o.bin(), "netcheck", "--json", "--state-dir", &state],
                    )?;
                    let took = started.elapsed();
                    ensure!(
                        out.status.success(),
                        "netcheck failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    ensure!(
                        took < NETCHECK_DEADLINE,
                        "netcheck took {took:?}, over {NETCHECK_DEADLINE:?}"
                    );
                    Ok(serde_json::from_slice(&out.stdout)?)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow!("netcheck thread panicked")))
            })
            .collect()
    });
    Ok(answers)
}

/// Checks one answer against its case; Ok with a one-line summary.
fn check(nl: &NatLab, case: &Case, v: &Value) -> anyhow::Result<String> {
    let mut wrong = Vec::new();
    let mut expect = |what: &str, got: &Value, want: Value| {
        if *got != want {
            wrong.push(format!("{what} {got}, expected {want}"));
        }
    };
    expect("nat", &v["nat"]["kind"], case.nat.into());
    expect(
        "udp_4502",
        &v["udp_4502"]["reachable"],
        case.udp_4502.into(),
    );
    expect("udp_443", &v["udp_443"]["reachable"], case.udp_443.into());
    expect("tcp_443", &v["tcp_443"]["reachable"], case.tcp_443.into());
    expect("ipv4", &v["ipv4"]["reachable"], case.ipv4.into());
    expect("ipv6", &v["ipv6"]["reachable"], case.ipv6.into());
    let relays = v["relays"].as_array().cloned().unwrap_or_default();
    let relay_ms: Vec<f64> = relays
        .iter()
        .filter_map(|r| r[case.relay_over].as_f64())
        .collect();
    if relays.len() != nl.relays.len() || relay_ms.is_empty() {
        wrong.push(format!(
            "relays {}, expected {} named and a latency over {}",
            v["relays"],
            nl.relays.len(),
            case.relay_over
        ));
    }
    let pm = &v["port_mapping"];
    let found = ["pcp", "nat_pmp", "upnp"]
        .into_iter()
        .filter(|p| pm[*p] == true)
        .collect::<Vec<_>>();
    if case.mapper {
        let public: IpAddr = nl
            .router_of(nl.node(case.node)?)
            .context("no router")?
            .public
            .into();
        if found.is_empty() || pm["external"] != public.to_string().as_str() {
            wrong.push(format!("port_mapping {pm}, expected one naming {public}"));
        }
    } else if !found.is_empty() {
        wrong.push(format!("port_mapping {pm}, expected none"));
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    let best = relay_ms.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(format!(
        "nat {}, udp 4502 {}, udp 443 {}, tcp 443 {}, ipv4 {}, ipv6 {}, relay {best:.2} ms ({}), port mapping {}, {:.0} ms",
        case.nat,
        yes(case.udp_4502),
        yes(case.udp_443),
        yes(case.tcp_443),
        yes(case.ipv4),
        yes(case.ipv6),
        case.relay_over.trim_end_matches("_ms"),
        if found.is_empty() { "none".to_owned() } else { found.join("+") },
        v["elapsed_ms"].as_f64().unwrap_or(0.0),
    ))
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// How many Logins node `i`'s daemon has logged.
fn logins(nl: &NatLab, i: usize) -> usize {
    nl.o.node_log(i)
        .lines()
        .filter(|l| l.contains("Login done"))
        .count()
}
