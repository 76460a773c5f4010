//! `cyphonic lab bench-transports` (also part of `cyphonic lab bench`):
//! TCP throughput, RTT and the bytes of overhead per packet of each
//! transport, side by side, on the firewall lab ([`super::firewall`]):
//!
//! - native UDP: mode (c), a -> s (a behind fw1's NAT, s public);
//! - native UDP punched: mode (c), a -> b (both behind NATs);
//! - native UDP relayed: mode (c), a -> b, with fw1 and fw2 dropping UDP
//!   to each other's WAN address (the pair can only meet at the TRS);
//! - QUIC direct: mode (a), a -> s (s has a QUIC listener on UDP 443);
//! - QUIC relayed: mode (a), a -> b (both behind web-only firewalls);
//! - TCP 443 relayed: mode (b), a -> b.
//!
//! The overhead is measured, not taken from the docs: pings of a known
//! size go through the tunnel while a captures on its TUN device and its
//! underlay link; the figure is the underlay IP packet's length minus the
//! inner IP packet's (the most common one over the pings: QUIC packet
//! numbers vary in length; TLS records are one per ping, as pings 0.2 s
//! apart do not coalesce).
//!
//! With `CYPHONIC_BENCH_PERF=<dir>`, each case's TCP transfer is profiled
//! (`perf record -g` of both nodes' daemons, and the cloud's when the
//! path is relayed) into `<dir>/<case>.perf.data`.
//!
//! `CYPHONIC_BENCH_ONLY=<label>[,<label>...]` measures only the cases whose
//! label contains one of them (ignoring case), e.g. `quic direct,native`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{anyhow, ensure, Context};

use super::bench_peers::{finish_profile, start_profile};
use super::firewall::{
    establish_checked, fields, packets, ping, signaling_check, FirewallLab, Mode, ICMP,
};
use super::overlay::{iperf, Report};

/// The ICMP payload of the overhead pings: inner IPv4 packets of 1028
/// bytes, well under every transport's MTU.
const PROBE_PAYLOAD: usize = 1000;
const PROBE_PINGS: u32 = 5;

struct Case {
    label: &'static str,
    mode: Mode,
    /// fw1 and fw2 also drop UDP to each other's WAN address: a and b
    /// meet only at the TRS.
    apart: bool,
    /// The CN: "s" (public) or "b" (behind the other firewall).
    to: &'static str,
}

const CASES: [Case; 6] = [
    Case {
        label: "native UDP",
        mode: Mode::Open,
        apart: false,
        to: "s",
    },
    Case {
        label: "UDP punched",
        mode: Mode::Open,
        apart: false,
        to: "b",
    },
    Case {
        label: "UDP relayed",
        mode: Mode::Open,
        apart: true,
        to: "b",
    },
    Case {
        label: "QUIC direct",
        mode: Mode::Web,
        apart: false,
        to: "s",
    },
    Case {
        label: "QUIC relayed",
        mode: Mode::Web,
        apart: false,
        to: "b",
    },
    Case {
        label: "TCP 443 relayed",
        mode: Mode::TcpOnly,
        apart: false,
        to: "b",
    },
];

#[derive(Default)]
struct Row {
    seen: String,
    /// Per round.
    rtt_ms: Vec<f64>,
    mbps: Vec<f64>,
    /// (inner IP length, overhead: most common, min, max), first round.
    overhead: Option<(usize, usize, usize, usize)>,
}

/// Rounds over all cases (`CYPHONIC_BENCH_ROUNDS` overrides): the table
/// gives each figure's median, as TCP throughput here moves by a fifth
/// from one transfer to the next.
const ROUNDS: usize = 3;

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Runs the transport bench alone, with its own summary line.
pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    if let Err(e) = measure(bin, &mut report) {
        report.check("transport bench set-up", Err(e));
    }
    println!(
        "bench-transports: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

/// Measures every case, reporting each figure as a check, then prints the
/// table.
pub fn measure(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let only = std::env::var("CYPHONIC_BENCH_ONLY").ok();
    let selected = |case: &Case| match &only {
        None => true,
        Some(only) => only.split(',').map(str::trim).any(|want| {
            !want.is_empty() && case.label.to_lowercase().contains(&want.to_lowercase())
        }),
    };
    ensure!(
        CASES.iter().any(selected),
        "CYPHONIC_BENCH_ONLY={}: no case's label contains any of these (cases: {})",
        only.as_deref().unwrap_or_default(),
        CASES.map(|c| c.label).join(", ")
    );
    let mut rows: Vec<(usize, Row)> = (0..CASES.len())
        .filter(|ci| selected(&CASES[*ci]))
        .map(|ci| (ci, Row::default()))
        .collect();
    println!("bench per transport (nftables firewalls: open, UDP/TCP 443 only, TCP 443 only):");
    let mut fl = FirewallLab::build("bench-transports", bin, false)?;
    for note in fl.missing_flags() {
        println!("  note  {note}");
    }
    fl.start_cloud()?;
    fl.enroll()?;
    let rounds = std::env::var("CYPHONIC_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let mut current: Option<(Mode, bool)> = None;
    // Why the nodes are not up in the current mode, if they are not.
    let mut down: Option<String> = None;
    for round in 1..=rounds {
        for (ci, row) in rows.iter_mut() {
            let case = &CASES[*ci];
            if current != Some((case.mode, case.apart)) {
                current = Some((case.mode, case.apart));
                let rules = |fl: &FirewallLab| if case.apart { keep_apart(fl) } else { Ok(()) };
                down = match fl.restart_nodes_with(case.mode, rules) {
                    Ok(started) => {
                        let mut up = Vec::new();
                        let mut failed = Vec::new();
                        for (i, r) in started.into_iter().enumerate() {
                            match r {
                                Ok(st) => up.push((i, st)),
                                Err(e) => failed.push(format!("{}: {e:#}", fl.o().nodes[i].name)),
                            }
                        }
                        // Measure on the transport the mode settles on.
                        match signaling_check(&fl, case.mode, &up, failed.is_empty()) {
                            Ok(_) => None,
                            Err(e) => {
                                failed.push(format!("{e:#}"));
                                Some(failed.join("\n        "))
                            }
                        }
                    }
                    Err(e) => Some(format!("{e:#}")),
                };
            }
            let r = match &down {
                Some(why) => Err(anyhow!(
                    "mode ({}): nodes not up over the mode's transport: {why}",
                    case.mode.letter()
                )),
                None => measure_case(&mut fl, case, round, row),
            };
            report.check(
                &format!("{} (a -> {}, round {round})", case.label, case.to),
                r,
            );
        }
    }
    print_table(&rows);
    Ok(())
}

/// fw1 and fw2 drop UDP to each other's WAN address, on top of their
/// mode's rules.
fn keep_apart(fl: &FirewallLab) -> anyhow::Result<()> {
    for (router, other) in [("fw1", "fw2"), ("fw2", "fw1")] {
        let ns = fl.nl.router(router)?.ns.clone();
        let wan = fl.wan(other)?;
        fl.o()
            .lab
            .sh(
                &ns,
                &format!("nft insert rule inet cyfw outbound ip daddr {wan} meta l4proto udp counter drop"),
            )
            .with_context(|| format!("{router}: dropping UDP to {other}"))?;
    }
    Ok(())
}

fn measure_case(
    fl: &mut FirewallLab,
    case: &Case,
    round: usize,
    row: &mut Row,
) -> anyhow::Result<String> {
    let a = fl.a;
    let cn = fl.nl.node(case.to)?;
    let fqdn = fl.o().fqdn(cn);
    let want_path = if case.apart {
        "relayed"
    } else {
        case.mode.expected_path(case.to == "s")
    };
    let want_transport = case.mode.transport();
    let (vip4, p) = establish_checked(fl, a, cn)?;
    let (path, transport, endpoint) = fields(&p);
    row.seen = format!("{path}/{transport}");
    ensure!(
        path == want_path && transport == want_transport,
        "{path} over {transport} via {endpoint}, expected {want_path} over {want_transport}"
    );
    let (rx, avg) = ping(fl.o(), a, &vip4, 20, "0.05")?;
    ensure!(rx >= 18, "ping {rx}/20 replies");
    row.rtt_ms.push(avg);
    let profile = std::env::var_os("CYPHONIC_BENCH_PERF")
        .filter(|_| round == 1)
        .map(|dir| {
            let o = fl.o();
            let mut pids: Vec<u32> = [o.nodes[a].pid, o.nodes[cn].pid]
                .into_iter()
                .flatten()
                .collect();
            if path == "relayed" {
                pids.extend(o.cloud_pid);
            }
            let name = format!("{}.perf.data", case.label.replace(' ', "-"));
            start_profile(Path::new(&dir), &name, &pids, 2)
        });
    let mbps = iperf(&mut fl.nl.o, a, cn, &fqdn, 1, 3);
    match profile.map(finish_profile) {
        Some(Ok(file)) => println!("  profile of {} (TCP a -> {}): {file}", case.label, case.to),
        Some(Err(e)) => println!("  no profile: {e:#}"),
        None => {}
    }
    let mbps = mbps?;
    row.mbps.push(mbps);
    if round > 1 {
        return Ok(format!(
            "{path} over {transport} via {endpoint}: RTT {avg:.3} ms, TCP {mbps:.0} Mbit/s"
        ));
    }
    let ep: std::net::SocketAddr = endpoint
        .parse()
        .with_context(|| format!("endpoint {endpoint:?}"))?;
    let (inner, common, min, max) = overhead(fl, &vip4, ep.ip())?;
    row.overhead = Some((inner, common, min, max));
    Ok(format!(
        "{path} over {transport} via {endpoint}: RTT {avg:.3} ms, TCP {mbps:.0} Mbit/s, \
         {common} bytes per packet on the wire ({inner}-byte inner packets{})",
        if min == max {
            String::new()
        } else {
            format!(", {min}..{max}")
        }
    ))
}

/// Pings `vip4` from a with [`PROBE_PAYLOAD`] bytes while capturing a's
/// TUN device and its underlay link: (inner IP length, overhead most
/// common, min, max) of a's packets towards `endpoint`.
fn overhead(
    fl: &mut FirewallLab,
    vip4: &str,
    endpoint: IpAddr,
) -> anyhow::Result<(usize, usize, usize, usize)> {
    let a = fl.a;
    let a_ns = fl.o().nodes[a].ns.clone();
    let a_addr = fl.nl.nodes[a].addrs[0];
    let mut outer = fl.nl.o.lab.capture(&a_ns, "eth0")?;
    let mut inner = fl.nl.o.lab.capture(&a_ns, "cy0")?;
    let sent = fl.o().sh(
        a,
        &format!("ping -c {PROBE_PINGS} -i 0.2 -W 2 -s {PROBE_PAYLOAD} {vip4}"),
    );
    let outer_bytes = outer.stop()?;
    let inner_bytes = inner.stop()?;
    sent.context("the overhead pings")?;
    let vip: IpAddr = vip4.parse().context("VIPv4")?;
    let inner_lens: Vec<usize> = packets(&inner_bytes)
        .into_iter()
        .filter(|p| p.proto == ICMP && p.dst == vip && p.payload.first() == Some(&8))
        .map(|p| p.ip_len)
        .collect();
    let inner_len = *inner_lens
        .first()
        .context("no echo request on a's TUN device")?;
    ensure!(
        inner_lens.iter().all(|l| *l == inner_len),
        "echo requests of several lengths on the TUN device: {inner_lens:?}"
    );
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for p in packets(&outer_bytes) {
        if p.src == a_addr
            && p.dst == endpoint
            && p.ip_len > inner_len
            && p.ip_len <= inner_len + 200
        {
            *counts.entry(p.ip_len - inner_len).or_default() += 1;
        }
    }
    let (&common, _) = counts
        .iter()
        .max_by_key(|(len, n)| (**n, std::cmp::Reverse(**len)))
        .with_context(|| format!("no packet from {a_addr} to {endpoint} fits an echo request"))?;
    let total: usize = counts.values().sum();
    ensure!(
        total >= PROBE_PINGS as usize,
        "only {total} of {PROBE_PINGS} echo requests seen on the underlay ({counts:?})"
    );
    let min = *counts.keys().next().unwrap_or(&common);
    let max = *counts.keys().next_back().unwrap_or(&common);
    Ok((inner_len, common, min, max))
}

fn print_table(rows: &[(usize, Row)]) {
    println!();
    println!("  (median of the rounds; RTT: mean of 20 pings per round)");
    println!(
        "  {:<21} {:<5} {:<14} {:>7} {:>22} {:>18}",
        "transport", "a ->", "path seen", "RTT ms", "TCP Mbit/s (rounds)", "overhead B/packet"
    );
    for (ci, row) in rows {
        let case = &CASES[*ci];
        let rtt = median(&row.rtt_ms).map_or("-".into(), |v| format!("{v:.3}"));
        let mbps = median(&row.mbps).map_or("-".into(), |v| {
            let all: Vec<String> = row.mbps.iter().map(|m| format!("{m:.0}")).collect();
            format!("{v:.0} ({})", all.join("/"))
        });
        let over = row.overhead.map_or("-".into(), |(_, c, min, max)| {
            if min == max {
                c.to_string()
            } else {
                format!("{c} ({min}..{max})")
            }
        });
        println!(
            "  {:<21} {:<5} {:<14} {:>7} {:>22} {:>18}",
            case.label,
            case.to,
            if row.seen.is_empty() { "-" } else { &row.seen },
            rtt,
            mbps,
            over
        );
    }
    if let Some(inner) = rows.iter().find_map(|(_, r)| r.overhead.map(|o| o.0)) {
        println!("  (overhead: underlay IP packet minus the {inner}-byte inner IP packet, measured on a's links)");
    }
    let mbps = |label: &str| {
        rows.iter()
            .find(|(ci, _)| CASES[*ci].label == label)
            .and_then(|(_, r)| median(&r.mbps))
    };
    for (what, of, to) in [
        ("QUIC direct / native UDP", "QUIC direct", "native UDP"),
        ("UDP relayed / UDP punched", "UDP relayed", "UDP punched"),
        ("QUIC relayed / QUIC direct", "QUIC relayed", "QUIC direct"),
    ] {
        if let (Some(x), Some(y)) = (mbps(of), mbps(to)) {
            if y > 0.0 {
                println!("  {what}: {:.0} %", 100.0 * x / y);
            }
        }
    }
    println!();
}
