//! `cyphonic lab nat-matrix`: NAT traversal on real kernel NAT.
//!
//! The topology ([`super::nat`]): global IPv6-only, IPv4-only and
//! dual-stack nodes, and nodes behind endpoint-independent (`masquerade`)
//! and symmetric (`masquerade fully-random`) NATs, each behind its own
//! router, once behind routers with an input firewall (home routers) and
//! once behind routers that only masquerade, each of those behind an ISP
//! router of its own; two nodes behind one NAT; a NAT that forgets idle
//! UDP mappings after 2 s; two carrier NATs with home routers behind them;
//! two uplinks narrower than the LANs; two routers running miniupnpd, one
//! speaking PCP, NAT-PMP and UPnP IGD (`r-pcp`), one UPnP IGD only
//! (`r-igd`), and the STUN server they need; a second TRS.
//!
//! Checks, in order:
//! 1. the topology itself: every node reaches the cloud over its own
//!    address families only; each NAT maps as its kind says; the
//!    short-timeout NAT really forgets an idle mapping;
//! 2. set-up: enrollment, registration, the NAT kind the cloud detects;
//! 3. the matrix: every ordered pair of placements (MN = `<x>-a`,
//!    CN = `<y>-b`): the name resolves to the CN's VIPs, the tunnel is
//!    established, `ping` 3/3, a 1 s iperf3 TCP transfer, and the path is
//!    the one [`expected_path`] promises (docs/routing.md), over the
//!    expected kind of endpoint; then the same for the routers that only
//!    masquerade, against every placement and the firewalled routers;
//! 4. two nodes behind one NAT talk directly over the LAN;
//! 5. NAT timeout: tunnel keepalives hold a 2 s mapping through 10 s of
//!    silence;
//! 6. relay capture: relayed traffic crosses the TRS's link encrypted;
//! 7. relay failover: a TCP transfer survives the loss of its TRS, and the
//!    tunnel moves to the second TRS;
//! 8. relay -> direct upgrade: a tunnel relayed while the direct path was
//!    blocked moves to the punched path once it opens, under a TCP transfer;
//! 9. port mapping: the nodes behind miniupnpd show a mapping (PCP, UPnP
//!    IGD) at their router's WAN address, and miniupnpd holds its dnat; a
//!    node behind a symmetric NAT reaches each punched, at the mapped
//!    address; a daemon that stops takes its mapping away.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;

use super::nat::{
    NatKind, NatLab, Placement, Topology, CLOUD_V4, CLOUD_V6, TRS2_V4, TRS2_V6, TRS_PORT,
};
use super::overlay::{iperf, parse_ping, send_marker, Overlay, Report};
use super::pcap;
use crate::scenarios::overlay::{iperf_finish, iperf_start};
use crate::wait_until;

/// The path docs/routing.md promises from an MN placed at `mn` to a CN
/// placed at `cn`: "direct" (pattern 1, no NAT in the way), "punched"
/// (pattern 2, a NAT opened from inside) or "relayed" (pattern 3, TRS).
pub fn expected_path(mn: Placement, cn: Placement) -> &'static str {
    cyphonic_cloud_core::route::documented_path(mn, cn)
}

/// How long a pair may take from the name lookup to an established tunnel
/// (route selection, NAT probing, punching or falling back to the relay).
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer in state "failed" this long is taken as given up.
const FAILED_GRACE: Duration = Duration::from_secs(2);
/// How long a tunnel that came up on another path may take to reach the
/// expected one (birthday punching: the relay first, then seconds).
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cloud-side UDP listener of the topology checks: prints
/// `<payload> <local port> <source ip> <source port>` for every datagram
/// to ports 5601-5603, and answers on 5603 at once and again after
/// `argv[2]` seconds (to see whether a NAT still holds the mapping).
const LISTENER: &str = r#"
import select, socket, sys, threading, time
socks = {}
for port in (5601, 5602, 5603):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', port))
    socks[s] = port
print('ready', flush=True)
deadline = time.time() + float(sys.argv[1])
while time.time() < deadline:
    r, _, _ = select.select(list(socks), [], [], 0.2)
    for s in r:
        data, src = s.recvfrom(2048)
        port = socks[s]
        print(data.decode(errors='replace'), port, src[0], src[1], flush=True)
        if port == 5603:
            s.sendto(b'now', src)
            threading.Timer(float(sys.argv[2]), lambda s=s, src=src: s.sendto(b'later', src)).start()
"#;

/// Node side of the idle-mapping check: one datagram to the listener's
/// port 5603 from port 40124, then prints the replies seen for `argv[2]`
/// seconds.
const IDLE_PROBE: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 40124))
s.sendto(sys.argv[1].encode(), ('192.0.2.1', 5603))
got = []
end = time.time() + float(sys.argv[2])
while True:
    left = end - time.time()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        got.append(s.recv(100).decode())
    except socket.timeout:
        break
print('replies', ' '.join(got) or '-', flush=True)
"#;

/// The mapping probes' source port on the nodes.
const PROBE_PORT: u16 = 40123;
/// Seconds before the listener's second answer; the short-timeout NAT
/// forgets the mapping after 2 s.
const LATE_REPLY_SECS: u32 = 4;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut report = Report::default();
    println!(
        "nat-matrix: cloud, TRS x2, STUN, 27 nodes in 5 placements, 22 NAT routers \
         (2 carrier NATs, 10 without input firewall, 2 of those running miniupnpd)"
    );
    if let Err(e) = run_all(bin, &mut report) {
        report.check("scenario set-up", Err(e));
    }
    println!("  ({:.0} s)", started.elapsed().as_secs_f64());
    println!(
        "nat-matrix: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

/// The lab: the matrix's ten nodes `<placement>-a|b`, each NATed one
/// behind its own router, plus the nodes of the other checks.
fn topology() -> Topology {
    let mut t = Topology::new()
        .router("r-eim-a", NatKind::Eim)
        .router("r-eim-b", NatKind::Eim)
        .router("r-sym-a", NatKind::Sym)
        .router("r-sym-b", NatKind::Sym)
        .router("r-lan", NatKind::Eim)
        .router_with_udp_timeout("r-to", NatKind::Eim, 2)
        .plain_router("r-up-a", NatKind::Eim)
        .plain_router("r-up-b", NatKind::Eim)
        .plain_router("r-eimp-a", NatKind::Eim)
        .plain_router("r-eimp-b", NatKind::Eim)
        .plain_router("r-symp-a", NatKind::Sym)
        .plain_router("r-symp-b", NatKind::Sym)
        .carrier("r-cgh", true)
        .router_behind("r-cgh-a", NatKind::Eim, "r-cgh")
        .router_behind("r-cgh-b", NatKind::Eim, "r-cgh")
        .carrier("r-cgn", false)
        .router_behind("r-cgn-a", NatKind::Eim, "r-cgn")
        .router_behind("r-cgn-b", NatKind::Eim, "r-cgn")
        .narrow_router("r-mtu", NatKind::Eim, NARROW_MTU)
        .silent_narrow_router("r-smtu", NatKind::Eim, NARROW_MTU)
        .upnp_router("r-pcp", NatKind::Eim, true)
        .upnp_router("r-igd", NatKind::Eim, false)
        .second_trs();
    for p in Placement::ALL {
        for side in ["a", "b"] {
            let name = format!("{}-{side}", p.name());
            t = match p {
                Placement::Eim | Placement::Sym => t.node_behind(&name, &format!("r-{name}")),
                _ => t.node(&name, p),
            };
        }
    }
    for name in [
        "eimp-a", "eimp-b", "symp-a", "symp-b", "cgh-a", "cgh-b", "cgn-a", "cgn-b",
    ] {
        t = t.node_behind(name, &format!("r-{name}"));
    }
    t.node_behind("lan-a", "r-lan")
        .node_behind("lan-b", "r-lan")
        .node_behind("to-a", "r-to")
        .node_behind("up-a", "r-up-a")
        .node_behind("up-b", "r-up-b")
        .node_behind("mtu-a", "r-mtu")
        .node_behind("smtu-a", "r-smtu")
        .node_behind("pcp-a", "r-pcp")
        .node_behind("igd-a", "r-igd")
}

fn run_all(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut nl = topology().build("nat-matrix", bin)?;

    println!("topology:");
    report.check(
        "every node reaches the cloud over its own address families only",
        reach_check(&nl),
    );
    mapping_checks(&mut nl, report)?;

    println!("set-up:");
    if !nl.keepalive_flag {
        println!("  note  `cyphonic node run` has no --keepalive: nodes run with the default");
    }
    let registered = nl.start()?;
    let failed: Vec<String> = registered
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{}: {e:#}", nl.o.nodes[i].name))
        })
        .collect();
    report.check(
        &format!("{} nodes enrolled and registered", nl.o.nodes.len()),
        if failed.is_empty() {
            Ok(String::new())
        } else {
            Err(anyhow!("{}", failed.join("\n        ")))
        },
    );
    report.check(
        "second TRS running (cloud run --role trs)",
        nl.trs2_running().and_then(|()| {
            let ns = nl.trs2.as_ref().map(|t| t.ns.clone()).unwrap_or_default();
            let out = nl.o.lab.exec(&ns, &["ss", "-Hlun", "sport = :4503"])?;
            let socks = String::from_utf8_lossy(&out.stdout).lines().count();
            ensure!(socks > 0, "nothing listens on UDP port 4503");
            Ok(format!("{socks} UDP sockets on port 4503"))
        }),
    );
    report.check(
        "the cloud detects each node's NAT kind",
        nat_detection_check(&nl),
    );

    println!("matrix (MN <x>-a -> CN <y>-b: path seen, expected, ping, iperf3):");
    for x in Placement::ALL {
        for y in Placement::ALL {
            let (mn, cn) = (format!("{}-a", x.name()), format!("{}-b", y.name()));
            let r = matrix_pair(&mut nl, &mn, x, &cn, y);
            report.check(&format!("{:>3} -> {:<3}", x.name(), y.name()), r);
        }
    }

    println!(
        "routers that only masquerade (no input firewall, an ISP router between each and the internet):"
    );
    for (mn, x, cn, y) in plain_pairs() {
        let r = matrix_pair(&mut nl, &mn, x, &cn, y);
        report.check(&format!("{mn:>6} -> {cn:<6}"), r);
    }

    println!("carrier NATs (home routers behind one; r-cgh hairpins, r-cgn does not):");
    for (mn, x, cn, y) in carrier_pairs() {
        let r = matrix_pair(&mut nl, &mn, x, &cn, y);
        report.check(&format!("{mn:>6} -> {cn:<6}"), r);
    }
    report.check(
        "two homes behind a hairpinning carrier: cgh-a -> cgh-b direct through the carrier's mappings",
        pair_check(&mut nl, "cgh-a", "cgh-b", "direct", |nl, cn, ep| {
            let public = nl.router_of(cn).map(|r| r.public);
            ensure!(
                public.is_some_and(|p| IpAddr::V4(p) == ep.ip()),
                "endpoint {ep}, not the carrier's address {public:?}"
            );
            Ok(())
        }),
    );
    report.check(
        "two homes behind a carrier that does not hairpin: cgn-a -> cgn-b relayed",
        pair_check(&mut nl, "cgn-a", "cgn-b", "relayed", |nl, _, ep| {
            ensure!(
                nl.relays.iter().any(|r| r.ip() == ep.ip()),
                "endpoint {ep} is not a TRS"
            );
            Ok(())
        }),
    );

    println!("other paths:");
    report.check(
        "same NAT: lan-a -> lan-b goes direct to lan-b's LAN address",
        same_nat_check(&nl),
    );
    report.check(
        &format!("path MTU {NARROW_MTU} on mtu-a's uplink (ICMP says so): too-big, fragments, IPv6 1280 and TCP both ways to eim-b"),
        narrow_path_check(&mut nl, "mtu-a"),
    );
    report.check(
        &format!("path MTU {NARROW_MTU} on smtu-a's uplink (ICMP filtered): size probes find it; too-big, fragments, IPv6 1280 and TCP both ways"),
        narrow_path_check(&mut nl, "smtu-a"),
    );
    report.check(
        "NAT timeout: keepalives hold a 2 s UDP mapping through 10 s of silence",
        timeout_check(&nl),
    );
    report.check(
        "relay capture: sym-a -> sym-b crosses the TRS link encrypted",
        relay_capture_check(&mut nl),
    );
    report.check(
        "relay failover: a TCP transfer survives the loss of its TRS",
        failover_check(&mut nl),
    );
    report.check(
        "relay -> direct: up-a -> up-b (routers that only masquerade) move from the relay to the punched path under TCP",
        upgrade_check(&mut nl),
    );
    report.check(
        "port mapping: pcp-a gets a mapping from miniupnpd (PCP)",
        port_mapping_check(&nl, "pcp-a", "pcp"),
    );
    report.check(
        "port mapping: igd-a gets a mapping from miniupnpd (UPnP IGD only)",
        port_mapping_check(&nl, "igd-a", "upnp-igd"),
    );
    for cn in ["pcp-a", "igd-a"] {
        report.check(
            &format!("port mapping: sym-a -> {cn} (symmetric NAT -> mapped) punched to the mapped address"),
            mapped_pair_check(&mut nl, "sym-a", cn),
        );
    }
    for node in ["pcp-a", "igd-a"] {
        report.check(
            &format!("port mapping: {node}'s daemon stops, miniupnpd's mapping goes"),
            mapping_removed_check(&mut nl, node),
        );
    }
    Ok(())
}

/// The pairs with a router that only masquerades on at least one side
/// (`eimp-*`, `symp-*`): every NATed placement of the matrix behind such a
/// router against every placement, both ways, and against the firewalled
/// routers' nodes.
fn plain_pairs() -> Vec<(String, Placement, String, Placement)> {
    let plain = [("eimp", Placement::Eim), ("symp", Placement::Sym)];
    let mut out = Vec::new();
    for (p, x) in plain {
        for y in Placement::ALL {
            let cn = match y {
                Placement::Eim => "eimp-b".to_owned(),
                Placement::Sym => "symp-b".to_owned(),
                _ => format!("{}-b", y.name()),
            };
            out.push((format!("{p}-a"), x, cn, y));
        }
        for y in [Placement::V6, Placement::V4, Placement::Ds] {
            out.push((format!("{}-a", y.name()), y, format!("{p}-b"), x));
        }
        // Against a firewalled router's node, both ways.
        let firewalled = format!("{}-b", x.name());
        out.push((format!("{p}-a"), x, firewalled, x));
        out.push((format!("{}-a", x.name()), x, format!("{p}-b"), x));
    }
    out
}

/// A home behind the hairpinning carrier against every placement, both
/// ways: it behaves as one endpoint-independent NAT.
fn carrier_pairs() -> Vec<(String, Placement, String, Placement)> {
    let mut out = Vec::new();
    for y in Placement::ALL {
        out.push((
            "cgh-a".to_owned(),
            Placement::Eim,
            format!("{}-b", y.name()),
            y,
        ));
        out.push((
            format!("{}-a", y.name()),
            y,
            "cgh-b".to_owned(),
            Placement::Eim,
        ));
    }
    out
}

/// Every node pings the cloud over each family it has, and cannot over
/// the one it lacks.
fn reach_check(nl: &NatLab) -> anyhow::Result<String> {
    let mut problems = Vec::new();
    let mut ok = 0;
    for (i, n) in nl.nodes.iter().enumerate() {
        let ns = &nl.o.nodes[i].ns;
        let has_v4 = n.addrs.iter().any(IpAddr::is_ipv4);
        let has_v6 = n.addrs.iter().any(IpAddr::is_ipv6);
        for (target, want) in [("192.0.2.1", has_v4), ("2001:db8::1", has_v6)] {
            let out = nl.o.lab.exec(ns, &["ping", "-c1", "-W2", target])?;
            if out.status.success() == want {
                ok += 1;
            } else {
                problems.push(format!(
                    "{} {} {target}",
                    nl.o.nodes[i].name,
                    if want { "cannot reach" } else { "reaches" }
                ));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(format!("{ok} pings as expected"))
}

/// One check per NATed node: two datagrams from one socket to two cloud
/// ports arrive from the router's WAN address, from one port (eim) or two
/// (sym). Then the short-timeout router against an ordinary one: a reply
/// 4 s after the last packet gets through only the ordinary one.
fn mapping_checks(nl: &mut NatLab, report: &mut Report) -> anyhow::Result<()> {
    let script = nl.o.lab.dir().join("nat-listener.py");
    std::fs::write(&script, LISTENER)?;
    let probe = nl.o.lab.dir().join("nat-idle-probe.py");
    std::fs::write(&probe, IDLE_PROBE)?;
    let cloud_ns = nl.o.cloud_ns.clone();
    let script_s = script.to_string_lossy().to_string();
    let late = LATE_REPLY_SECS.to_string();
    let listener = nl.o.lab.spawn(
        &cloud_ns,
        &["python3", "-u", &script_s, "60", &late],
        "nat-listener",
        &[],
    )?;
    let lab = &mut nl.o.lab;
    wait_until("the UDP listener", Duration::from_secs(5), || {
        if let Some(st) = lab.try_wait(listener)? {
            bail!("listener exited ({st}): {}", lab.log("nat-listener"));
        }
        Ok(lab.log("nat-listener").contains("ready").then_some(()))
    })?;

    let natted: Vec<usize> = (0..nl.nodes.len())
        .filter(|&i| nl.nodes[i].router.is_some())
        .collect();
    for &i in &natted {
        let name = nl.o.nodes[i].name.clone();
        let Some(r) = nl.router_of(i) else { continue };
        let (kind, wan, rname) = (r.kind, r.public, r.name.clone());
        let what = match kind {
            NatKind::Eim => format!("eim NAT keeps the mapping ({name} via {rname})"),
            NatKind::Sym => format!("sym NAT changes the mapping ({name} via {rname})"),
        };
        let result = (|| {
            nl.o.sh(
                i,
                &format!(
                    "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                     s.bind(('0.0.0.0', {PROBE_PORT})); [s.sendto(b'{name}', ('{CLOUD_V4}', p)) for p in (5601, 5602)]\""
                ),
            )?;
            let lab = &nl.o.lab;
            let seen = wait_until(
                &format!("{name}'s probes at the cloud"),
                Duration::from_secs(3),
                || {
                    let log = lab.log("nat-listener");
                    let lines: Vec<(String, String)> = log
                        .lines()
                        .filter_map(|l| {
                            let f: Vec<&str> = l.split_whitespace().collect();
                            (f.len() == 4 && f[0] == name && f[1] != "5603")
                                .then(|| (f[2].to_owned(), f[3].to_owned()))
                        })
                        .collect();
                    Ok((lines.len() >= 2).then_some(lines))
                },
            )?;
            let sources: Vec<String> = seen.iter().map(|(a, p)| format!("{a}:{p}")).collect();
            ensure!(
                seen.iter().all(|(a, _)| *a == wan.to_string()),
                "sources {sources:?} are not the router's WAN address {wan}"
            );
            let same_port = seen[0].1 == seen[1].1;
            match kind {
                NatKind::Eim => {
                    ensure!(same_port, "two destinations saw two mappings: {sources:?}")
                }
                NatKind::Sym => {
                    ensure!(!same_port, "two destinations saw one mapping: {sources:?}")
                }
            }
            Ok(format!(
                "{PROBE_PORT} -> {} to ports 5601, 5602",
                sources.join(", ")
            ))
        })();
        report.check(&what, result);
    }

    // The short-timeout NAT against an ordinary one, at the same time.
    let probe_s = probe.to_string_lossy().to_string();
    let mut runs = Vec::new();
    for (name, expect_late) in [("to-a", false), ("eim-a", true)] {
        let i = nl.node(name)?;
        let ns = nl.o.nodes[i].ns.clone();
        let log = format!("nat-idle-{name}");
        let wait = (LATE_REPLY_SECS + 2).to_string();
        let pid = nl.o.lab.spawn(
            &ns,
            &["python3", "-u", &probe_s, &format!("idle-{name}"), &wait],
            &log,
            &[],
        )?;
        runs.push((name, expect_late, pid, log));
    }
    let mut outcome = Vec::new();
    for (name, expect_late, pid, log) in &runs {
        let lab = &mut nl.o.lab;
        let r = wait_until(
            &format!("{name}'s idle probe"),
            Duration::from_secs(LATE_REPLY_SECS as u64 + 6),
            || Ok(lab.try_wait(*pid)?.map(|_| ())),
        )
        .and_then(|()| {
            let text = lab.log(log);
            let line = text
                .lines()
                .find(|l| l.starts_with("replies"))
                .with_context(|| format!("no result: {}", text.trim()))?
                .to_owned();
            let got_now = line.contains("now");
            let got_late = line.contains("later");
            ensure!(got_now, "{name}: no immediate reply ({line})");
            ensure!(
                got_late == *expect_late,
                "{name}: the reply {LATE_REPLY_SECS} s later {} ({line})",
                if got_late {
                    "got through: the mapping was not forgotten"
                } else {
                    "was dropped"
                }
            );
            Ok(format!(
                "{name}: late reply {}",
                if got_late { "received" } else { "dropped" }
            ))
        });
        outcome.push(r);
    }
    let _ = nl.o.lab.kill(listener);
    report.check(
        "short-timeout NAT forgets an idle mapping (r-to, 2 s) where an ordinary one keeps it",
        outcome
            .into_iter()
            .collect::<anyhow::Result<Vec<String>>>()
            .map(|v| v.join("; ")),
    );
    Ok(())
}

/// Each node's `cloud.nat` is its placement's NAT kind; a node behind a
/// router that grants port mappings may show "none" instead (a mapped
/// node counts as one without NAT, docs/routing.md).
fn nat_detection_check(nl: &NatLab) -> anyhow::Result<String> {
    let mut wrong = Vec::new();
    for (i, n) in nl.nodes.iter().enumerate() {
        let want = super::nat::expected_nat(n.placement);
        let may_map = nl.router_of(i).is_some_and(|r| r.upnp.is_some());
        match nl.o.status(i) {
            Ok(s) => {
                let got = s["cloud"]["nat"].as_str().unwrap_or("absent").to_owned();
                if got != want && !(may_map && got == "none") {
                    wrong.push(format!("{}: {got}, not {want}", nl.o.nodes[i].name));
                }
            }
            Err(e) => wrong.push(format!("{}: {e:#}", nl.o.nodes[i].name)),
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok("none / endpoint-independent / symmetric as placed (none once mapped)".into())
}

/// One matrix pair: the path docs/routing.md promises, at the address it
/// implies.
fn matrix_pair(
    nl: &mut NatLab,
    mn_name: &str,
    x: Placement,
    cn_name: &str,
    y: Placement,
) -> anyhow::Result<String> {
    let expected = expected_path(x, y);
    pair_check(nl, mn_name, cn_name, expected, |nl, cn, ep| {
        check_endpoint(nl, expected, cn, &ep.to_string())
    })
}

/// One pair: the tunnel comes up on `expected` (within seconds, when it
/// starts on another), its endpoint passes `endpoint_ok`, and `cyphonic
/// ping`, ping and iperf3 go through.
fn pair_check(
    nl: &mut NatLab,
    mn_name: &str,
    cn_name: &str,
    expected: &str,
    endpoint_ok: impl Fn(&NatLab, usize, SocketAddr) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mn = nl.node(mn_name)?;
    let cn = nl.node(cn_name)?;
    let fqdn = nl.o.fqdn(cn);
    let asked = Instant::now();
    let vip4 = match establish(&nl.o, mn, cn, ESTABLISH_TIMEOUT) {
        Ok((vip4, _)) => vip4,
        Err(e) => {
            let seen =
                nl.o.peer(mn, &fqdn)
                    .map(|p| p["path"].as_str().unwrap_or("?").to_owned())
                    .unwrap_or_else(|_| "none".into());
            bail!("path {seen}, expected {expected}: {e:#}");
        }
    };
    // A path that needs more than the handshake (birthday punching after
    // the relay) gets there within seconds.
    let _ = wait_until("the expected path", MOVE_TIMEOUT, || {
        let p = nl.o.peer(mn, &fqdn)?;
        Ok((p["path"] == expected).then_some(()))
    });
    let took = asked.elapsed();
    let peer = nl.o.peer(mn, &fqdn)?;
    let path = peer["path"].as_str().unwrap_or("?").to_owned();
    let endpoint = peer["endpoint"].as_str().unwrap_or("?").to_owned();
    let mut problems = Vec::new();
    if path != expected {
        problems.push(format!("path is {path}, expected {expected}"));
    }
    match endpoint.parse::<SocketAddr>() {
        Ok(ep) if path == expected => {
            if let Err(e) = endpoint_ok(nl, cn, ep) {
                problems.push(format!("{e:#}"));
            }
        }
        Ok(_) => {}
        Err(_) => problems.push(format!("endpoint {endpoint:?} is not an address")),
    }
    // `cyphonic ping` reports the same path for its reply.
    let state = nl.o.nodes[mn].state_dir.to_string_lossy().to_string();
    match nl.o.sh(
        mn,
        &format!("{} ping -c 1 --state-dir {state} {fqdn}", nl.o.bin()),
    ) {
        Ok(out) if out.contains(&format!("({path}, udp)")) => {}
        Ok(out) => problems.push(format!("cyphonic ping printed {:?}", out.trim())),
        Err(e) => problems.push(format!("cyphonic ping: {e:#}")),
    }
    let ping_text = match ping(&nl.o, mn, &fqdn, 3, "0.2") {
        Ok((3, avg)) => format!("{avg:.2} ms"),
        Ok((rx, _)) => {
            problems.push(format!("ping {rx}/3 replies"));
            format!("{rx}/3")
        }
        Err(e) => {
            problems.push(format!("ping: {e:#}"));
            "-".into()
        }
    };
    let iperf_text = match iperf(&mut nl.o, mn, cn, &vip4, 1, 1) {
        Ok(mbps) => format!("{mbps:.0} Mbit/s"),
        Err(e) => {
            problems.push(format!("iperf3: {e:#}"));
            "-".into()
        }
    };
    let line = format!(
        "{} -> {}: path {path} (expected {expected}) {:.0} ms after the query, via {endpoint}, ping avg {ping_text}, iperf3 {iperf_text}",
        nl.o.nodes[mn].name,
        nl.o.nodes[cn].name,
        took.as_secs_f64() * 1000.0
    );
    ensure!(problems.is_empty(), "{line}: {}", problems.join("; "));
    Ok(line)
}

/// The endpoint fits the path: the CN's own address (direct), the address
/// the internet sees it from (punched), or a TRS (relayed).
fn check_endpoint(nl: &NatLab, path: &str, cn: usize, endpoint: &str) -> anyhow::Result<()> {
    let ep: SocketAddr = endpoint
        .parse()
        .with_context(|| format!("endpoint {endpoint:?} is not an address"))?;
    let n = &nl.nodes[cn];
    let (ok, want) = match path {
        "direct" => (n.addrs.contains(&ep.ip()), format!("{:?}", n.addrs)),
        "punched" => (n.public.contains(&ep.ip()), format!("{:?}", n.public)),
        "relayed" => (
            nl.relays.iter().any(|r| r.ip() == ep.ip()),
            format!("a TRS {:?}", nl.relays),
        ),
        other => bail!("unknown path {other:?}"),
    };
    ensure!(ok, "endpoint {ep} for a {path} path is not {want}");
    Ok(())
}

/// Resolves the CN's name on the MN (`getent ahosts` must list both VIPs,
/// which starts route selection) and waits for the tunnel. Returns the
/// CN's (VIPv4, VIPv6).
pub(crate) fn establish(
    o: &Overlay,
    mn: usize,
    cn: usize,
    timeout: Duration,
) -> anyhow::Result<(String, String)> {
    let fqdn = o.fqdn(cn);
    let s = o.status(cn).context("CN status")?;
    let vip4 = s["vip4"].as_str().context("CN has no VIPv4")?.to_owned();
    let vip6 = s["vip6"].as_str().context("CN has no VIPv6")?.to_owned();
    let out = o.lab.exec(&o.nodes[mn].ns, &["getent", "ahosts", &fqdn])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&vip4) && text.contains(&vip6),
        "getent ahosts {fqdn} printed {:?}, not {vip4} and {vip6}",
        text.trim()
    );
    wait_established(o, mn, &fqdn, timeout)?;
    Ok((vip4, vip6))
}

/// Waits until node `mn`'s peer `fqdn` is established; gives up early on
/// a peer that stays failed.
fn wait_established(
    o: &Overlay,
    mn: usize,
    fqdn: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let mut failed_since: Option<Instant> = None;
    let mut last = String::from("no peer entry");
    let r = wait_until("the tunnel to be established", timeout, || {
        let p = match o.peer(mn, fqdn) {
            Ok(p) => p,
            Err(e) => {
                last = format!("{e:#}");
                return Ok(None);
            }
        };
        let state = p["state"].as_str().unwrap_or("?");
        last = format!("state {state}, path {}", p["path"].as_str().unwrap_or("?"));
        if state == "established" {
            return Ok(Some(Ok(p)));
        }
        if state.starts_with("failed") {
            let since = *failed_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= FAILED_GRACE {
                return Ok(Some(Err(anyhow!("{last}"))));
            }
        } else {
            failed_since = None;
        }
        Ok(None)
    });
    match r {
        Ok(r) => r,
        Err(e) => Err(anyhow!("{e:#} (last seen: {last})")),
    }
}

/// Pings `target` from node `i`: (replies, average RTT in ms), whatever
/// ping's exit status.
fn ping(
    o: &Overlay,
    i: usize,
    target: &str,
    count: u32,
    interval: &str,
) -> anyhow::Result<(u32, f64)> {
    let count = count.to_string();
    let out = o.lab.exec(
        &o.nodes[i].ns,
        &["ping", "-c", &count, "-i", interval, "-W", "2", target],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).with_context(|| {
        format!(
            "no ping summary: {} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn same_nat_check(nl: &NatLab) -> anyhow::Result<String> {
    let (mn, cn) = (nl.node("lan-a")?, nl.node("lan-b")?);
    establish(&nl.o, mn, cn, ESTABLISH_TIMEOUT)?;
    let fqdn = nl.o.fqdn(cn);
    let (rx, avg) = ping(&nl.o, mn, &fqdn, 3, "0.2")?;
    ensure!(rx == 3, "ping {rx}/3 replies");
    let p = nl.o.peer(mn, &fqdn)?;
    let path = p["path"].as_str().unwrap_or("?");
    let endpoint = p["endpoint"].as_str().unwrap_or("?");
    let lan_addr = nl.nodes[cn].addrs[0];
    ensure!(path == "direct", "path is {path}, expected direct");
    let ep: SocketAddr = endpoint
        .parse()
        .with_context(|| format!("endpoint {endpoint:?}"))?;
    ensure!(
        ep.ip() == lan_addr,
        "endpoint {ep} is not lan-b's LAN address {lan_addr}"
    );
    Ok(format!("path direct via {ep}, ping avg {avg:.2} ms"))
}

/// The MTU of r-mtu's uplink: IPv6's minimum.
const NARROW_MTU: u16 = 1280;

/// The largest inner packet a [`NARROW_MTU`] path carries over IPv4:
/// less 20 (IP), 8 (UDP) and 32 (our header and tag).
const NARROW_INNER: u64 = NARROW_MTU as u64 - 60;

/// `node` sits behind a router whose uplink carries at most
/// [`NARROW_MTU`] bytes (mtu-a: the routers on it say so with ICMP;
/// smtu-a: they filter it); eim-b behind an ordinary router. Each end's
/// tunnel learns the path's size (ICMP, or its size probes) within
/// seconds; then, each way: 1400-byte pings that may not be fragmented
/// get the truth (a too-big naming the tunnel's MTU) instead of
/// vanishing, 1400-byte pings that may be fragmented, IPv6 pings at
/// IPv6's minimum MTU (1280 bytes, which no too-big may go below) and a
/// TCP transfer all arrive.
fn narrow_path_check(nl: &mut NatLab, node: &str) -> anyhow::Result<String> {
    let (a, b) = (nl.node(node)?, nl.node("eim-b")?);
    let (vip_b, vip6_b) = establish(&nl.o, a, b, ESTABLISH_TIMEOUT)?;
    let up = Instant::now();
    let status_a = nl.o.status(a)?;
    let vip_a = status_a["vip4"].as_str().context("no VIPv4")?.to_owned();
    let vip6_a = status_a["vip6"].as_str().context("no VIPv6")?.to_owned();
    let (fqdn_a, fqdn_b) = (nl.o.fqdn(a), nl.o.fqdn(b));
    for (me, peer) in [(a, &fqdn_b), (b, &fqdn_a)] {
        wait_until(
            &format!("{}'s tunnel to learn the path's size", nl.o.nodes[me].name),
            Duration::from_secs(15),
            || {
                let p = nl.o.peer(me, peer)?;
                let mtu = p["mtu"].as_u64().unwrap_or(0);
                Ok((mtu > 0 && mtu <= NARROW_INNER).then_some(()))
            },
        )?;
    }
    let mut figures = vec![format!(
        "sizes learned {:.1} s after the tunnel came up",
        up.elapsed().as_secs_f64()
    )];
    for (from, to, vip, vip6) in [(a, b, &vip_b, &vip6_b), (b, a, &vip_a, &vip6_a)] {
        let (name_from, name_to) = (nl.o.nodes[from].name.clone(), nl.o.nodes[to].name.clone());
        let ns = nl.o.nodes[from].ns.clone();
        let clamped = |o: &Overlay| -> anyhow::Result<u64> {
            Ok(o.status(from)?["dataplane"]["tx_mss_clamped"]
                .as_u64()
                .unwrap_or(0))
        };
        let clamped_before = clamped(&nl.o)?;
        let mbps = iperf(&mut nl.o, from, to, vip, 1, 2)?;
        ensure!(
            mbps > 1.0,
            "{name_from} -> {name_to}: TCP {mbps:.1} Mbit/s through the tunnel"
        );
        // First, while the application's stack knows nothing of the path
        // (no too-big yet): iperf3's connections opened through the
        // tunnel, their SYNs left with the MSS cut to the tunnel's size.
        let syns = clamped(&nl.o)? - clamped_before;
        ensure!(
            syns >= 1,
            "{name_from} -> {name_to}: no TCP SYN had its MSS clamped"
        );
        let run = |args: &[&str]| -> anyhow::Result<String> {
            let out = nl.o.lab.exec(&ns, args)?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr))
        };
        let df = run(&[
            "ping", "-M", "do", "-s", "1372", "-c", "3", "-i", "0.3", "-W", "1", vip,
        ])?;
        let told = told_mtu(&df);
        ensure!(
            told.is_some_and(|m| m <= NARROW_INNER && m + 16 > NARROW_INNER),
            "{name_from} -> {name_to}: 1400-byte DF pings were not told the tunnel's MTU ({NARROW_INNER}): {df}"
        );
        let frag = run(&[
            "ping", "-M", "dont", "-s", "1372", "-c", "3", "-i", "0.3", "-W", "2", vip,
        ])?;
        let (rx_frag, _) = parse_ping(&frag).with_context(|| format!("no ping summary: {frag}"))?;
        ensure!(
            rx_frag == 3,
            "{name_from} -> {name_to}: 1400-byte pings that may be fragmented {rx_frag}/3 answered"
        );
        let v6 = run(&[
            "ping", "-6", "-s", "1232", "-c", "3", "-i", "0.3", "-W", "2", vip6,
        ])?;
        let (rx_v6, _) = parse_ping(&v6).with_context(|| format!("no ping summary: {v6}"))?;
        ensure!(
            rx_v6 == 3,
            "{name_from} -> {name_to}: 1280-byte IPv6 pings {rx_v6}/3 answered"
        );
        figures.push(format!(
            "{name_from} -> {name_to}: DF pings told mtu {}, fragmentable 1400 {rx_frag}/3, IPv6 1280 {rx_v6}/3, TCP {mbps:.0} Mbit/s ({syns} SYNs clamped)",
            told.unwrap_or(0)
        ));
    }
    Ok(figures.join("; "))
}

/// The MTU ping reports from a too-big: "Frag needed and DF set (mtu =
/// 1220)" or "local error: message too long, mtu=1220".
fn told_mtu(ping: &str) -> Option<u64> {
    ping.split("mtu").skip(1).find_map(|rest| {
        let digits: String = rest
            .trim_start_matches([' ', '='])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// to-a sits behind r-to, whose UDP mappings expire after 2 s idle. After
/// 10 s without application traffic, v4-b pings to-a (inbound through the
/// NAT: only a mapping kept alive lets it in), then to-a pings v4-b.
fn timeout_check(nl: &NatLab) -> anyhow::Result<String> {
    let (mn, cn) = (nl.node("to-a")?, nl.node("v4-b")?);
    let fqdn = nl.o.fqdn(cn);
    let (cn_vip4, _) = establish(&nl.o, mn, cn, ESTABLISH_TIMEOUT)?;
    let (rx, _) = ping(&nl.o, mn, &fqdn, 3, "0.2")?;
    ensure!(rx == 3, "before the silence: ping {rx}/3 replies");
    let mn_vip4 = nl.o.status(mn)?["vip4"]
        .as_str()
        .context("to-a has no VIPv4")?
        .to_owned();
    let before = nl.o.peer(mn, &fqdn)?;
    std::thread::sleep(Duration::from_secs(10));
    let t = Instant::now();
    let (rx_in, _) = ping(&nl.o, cn, &mn_vip4, 3, "0.5")?;
    let took = t.elapsed();
    let (rx_out, _) = ping(&nl.o, mn, &cn_vip4, 3, "0.5")?;
    let after = nl.o.peer(mn, &fqdn)?;
    ensure!(
        rx_in == 3,
        "after 10 s of silence, v4-b -> to-a ping {rx_in}/3 replies (the NAT mapping was not kept)"
    );
    ensure!(
        took <= Duration::from_secs(3),
        "v4-b -> to-a ping took {:.1} s",
        took.as_secs_f64()
    );
    ensure!(rx_out == 3, "to-a -> v4-b ping {rx_out}/3 replies");
    ensure!(
        after["path"] == before["path"] && after["endpoint"] == before["endpoint"],
        "path changed from {} via {} to {} via {}",
        before["path"],
        before["endpoint"],
        after["path"],
        after["endpoint"]
    );
    let rehandshake = if after["last_handshake_unix"] == before["last_handshake_unix"] {
        "no new handshake"
    } else {
        "a new handshake happened"
    };
    Ok(format!(
        "3/3 in and out, path {} via {} unchanged, {rehandshake}",
        after["path"].as_str().unwrap_or("?"),
        after["endpoint"].as_str().unwrap_or("?")
    ))
}

/// A marker sent sym-a -> sym-b (relayed) reaches sym-b's TUN device and
/// never shows on the cloud's link, which carries the relay packets.
fn relay_capture_check(nl: &mut NatLab) -> anyhow::Result<String> {
    let (mn, cn) = (nl.node("sym-a")?, nl.node("sym-b")?);
    let (vip4, _) = establish(&nl.o, mn, cn, ESTABLISH_TIMEOUT)?;
    let p = nl.o.peer(mn, &nl.o.fqdn(cn))?;
    ensure!(p["path"] == "relayed", "path is {}, not relayed", p["path"]);
    let marker = format!("CYPHONIC-RELAY-MARKER-{}", nl.o.lab.prefix());
    // Capture on the link of the TRS serving this tunnel (the NMS spreads
    // routes over the instances).
    let endpoint = p["endpoint"].as_str().unwrap_or_default().to_owned();
    let on_trs2 = [
        SocketAddr::from((TRS2_V4, TRS_PORT)),
        SocketAddr::from((TRS2_V6, TRS_PORT)),
    ]
    .iter()
    .any(|a| a.to_string() == endpoint);
    let trs_ns = match (&nl.trs2, on_trs2) {
        (Some(t), true) => t.ns.clone(),
        _ => nl.o.cloud_ns.clone(),
    };
    let cn_ns = nl.o.nodes[cn].ns.clone();
    let mut outer = nl.o.lab.capture(&trs_ns, "eth0")?;
    let mut inner = nl.o.lab.capture(&cn_ns, "cy0")?;
    let bytes = send_marker(&nl.o, mn, &vip4, &marker, &mut inner, &mut outer)?;
    let seen = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    let relay_packets = pcap::udp_payloads(&bytes, TRS_PORT).len();
    ensure!(!seen, "the marker crossed the TRS's link in clear");
    ensure!(
        relay_packets > 0,
        "no relay packets (UDP port {TRS_PORT}) on the TRS's link"
    );
    Ok(format!(
        "marker seen inside sym-b, absent from {relay_packets} relay packets on the link of the TRS at {endpoint}"
    ))
}

/// A TCP transfer through the relay at 192.0.2.1:4503 while that relay
/// stops (UDP 4503 dropped in the cloud's namespace; AS and NMS keep
/// running): the transfer completes, and the tunnel ends on the second TRS.
fn failover_check(nl: &mut NatLab) -> anyhow::Result<String> {
    let (mn, cn) = (nl.node("sym-a")?, nl.node("sym-b")?);
    let (vip4, _) = establish(&nl.o, mn, cn, ESTABLISH_TIMEOUT)?;
    let fqdn = nl.o.fqdn(cn);
    let p = nl.o.peer(mn, &fqdn)?;
    // The NMS spreads routes over the TRS instances: find the one serving
    // this tunnel, and stop that one.
    let cloud_trs = [
        SocketAddr::from((CLOUD_V4, TRS_PORT)).to_string(),
        SocketAddr::from((CLOUD_V6, TRS_PORT)).to_string(),
    ];
    let trs2 = [
        SocketAddr::from((TRS2_V4, TRS_PORT)).to_string(),
        SocketAddr::from((TRS2_V6, TRS_PORT)).to_string(),
    ];
    let endpoint = p["endpoint"].as_str().unwrap_or_default().to_owned();
    ensure!(
        p["path"] == "relayed" && (cloud_trs.contains(&endpoint) || trs2.contains(&endpoint)),
        "the tunnel is {} via {}, not relayed",
        p["path"],
        p["endpoint"]
    );
    nl.trs2_running()?;
    let (victim_ns, second) = if cloud_trs.contains(&endpoint) {
        (nl.o.cloud_ns.clone(), trs2)
    } else {
        let ns = nl
            .trs2
            .as_ref()
            .map(|t| t.ns.clone())
            .context("no second TRS")?;
        (ns, cloud_trs)
    };
    let run = iperf_start(&mut nl.o, mn, cn, &vip4, 5201, 8, None, "failover")?;
    std::thread::sleep(Duration::from_secs(2));
    let blocked = nft(
        &nl.o,
        &victim_ns,
        &format!(
            "add table inet lab\n\
             add chain inet lab in {{ type filter hook input priority 0; }}\n\
             add rule inet lab in udp dport {TRS_PORT} drop"
        ),
    );
    let transfer = iperf_finish(&mut nl.o, run, Duration::from_secs(30));
    let moved = blocked.and_then(|()| {
        wait_until(
            "the tunnel on the other TRS",
            Duration::from_secs(5),
            || {
                let p = nl.o.peer(mn, &fqdn)?;
                let ep = p["endpoint"].as_str().unwrap_or_default().to_owned();
                Ok(second.contains(&ep).then_some(ep))
            },
        )
        .with_context(|| {
            let p = nl.o.peer(mn, &fqdn).unwrap_or_default();
            format!("endpoint is {} (path {})", p["endpoint"], p["path"])
        })
    });
    let unblocked = nft(&nl.o, &victim_ns, "delete table inet lab");
    let transfer = transfer.context("the transfer across the failover")?;
    let ep = moved?;
    unblocked?;
    Ok(format!("{transfer}; now via {ep}"))
}

/// up-b's router drops UDP from and to up-a's router (not the cloud's): the
/// tunnel comes up relayed. Under a TCP transfer the rules go away; within
/// 15 s the tunnel is punched, and the transfer completes. (Both ways:
/// with inbound dropped only, up-b's probes would still reach up-a through
/// up-a's own mapping, and the direct path would be half open.)
fn upgrade_check(nl: &mut NatLab) -> anyhow::Result<String> {
    let (mn, cn) = (nl.node("up-a")?, nl.node("up-b")?);
    let a_wan = nl.router("r-up-a")?.wan;
    let b_ns = nl.router("r-up-b")?.ns.clone();
    let fqdn = nl.o.fqdn(cn);
    // Inbound before conntrack (raw priority) and outbound before NAT, so
    // blocked packets leave no conntrack state behind.
    nft(
        &nl.o,
        &b_ns,
        &format!(
            "add table inet lab\n\
             add chain inet lab pre {{ type filter hook prerouting priority -300; }}\n\
             add rule inet lab pre iifname \"wan\" ip saddr {a_wan} meta l4proto udp drop\n\
             add chain inet lab toward {{ type filter hook forward priority 0; }}\n\
             add rule inet lab toward oifname \"wan\" ip daddr {a_wan} meta l4proto udp drop"
        ),
    )?;
    let result = (|| {
        let (vip4, _) = establish(&nl.o, mn, cn, ESTABLISH_TIMEOUT)?;
        let p = nl.o.peer(mn, &fqdn)?;
        ensure!(
            p["path"] == "relayed",
            "with the direct path blocked the tunnel came up {} via {}",
            p["path"],
            p["endpoint"]
        );
        let run = iperf_start(&mut nl.o, mn, cn, &vip4, 5201, 12, None, "upgrade")?;
        std::thread::sleep(Duration::from_secs(2));
        let opened = Instant::now();
        let unblocked = nft(&nl.o, &b_ns, "delete table inet lab");
        let punched = unblocked.and_then(|()| {
            wait_until("the punched path", Duration::from_secs(15), || {
                let p = nl.o.peer(mn, &fqdn)?;
                Ok((p["path"] == "punched")
                    .then(|| p["endpoint"].as_str().unwrap_or("?").to_owned()))
            })
            .with_context(|| {
                let p = nl.o.peer(mn, &fqdn).unwrap_or_default();
                format!("path is {} via {}", p["path"], p["endpoint"])
            })
        });
        let took = opened.elapsed();
        let transfer = iperf_finish(&mut nl.o, run, Duration::from_secs(30));
        let ep = punched?;
        let transfer = transfer.context("the transfer across the path change")?;
        Ok(format!(
            "punched via {ep} {:.1} s after the path opened; {transfer}",
            took.as_secs_f64()
        ))
    })();
    // Whatever happened, leave r-up-b open.
    let _ = nft(&nl.o, &b_ns, "delete table inet lab");
    result
}

/// How long a node behind a UPnP router may take to show its mapping
/// (the daemon asks at start; nodes started minutes before).
const MAPPING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long miniupnpd may take to drop a mapping after the node's daemon
/// stopped (it deletes the mapping on its way out).
const UNMAP_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's port mapping as `cyphonic status --json` shows it
/// (`cloud.port_mapping`: `protocol`, `external`, `lifetime_secs`).
struct ShownMapping {
    protocol: String,
    external: SocketAddr,
    lifetime_secs: u64,
}

fn shown_mapping(status: &Value) -> anyhow::Result<Option<ShownMapping>> {
    let m = &status["cloud"]["port_mapping"];
    if m.is_null() {
        return Ok(None);
    }
    let external = m["external"]
        .as_str()
        .with_context(|| format!("port_mapping without an external address: {m}"))?;
    Ok(Some(ShownMapping {
        protocol: m["protocol"].as_str().unwrap_or("?").to_owned(),
        external: external
            .parse()
            .with_context(|| format!("port_mapping.external {external:?}"))?,
        lifetime_secs: m["lifetime_secs"].as_u64().unwrap_or(0),
    }))
}

/// The node's tunnel socket on its LAN address, from `cloud.local_addrs`.
fn tunnel_socket(nl: &NatLab, i: usize, status: &Value) -> anyhow::Result<SocketAddr> {
    let addr = nl.nodes[i]
        .addrs
        .first()
        .copied()
        .context("node without an address")?;
    status["cloud"]["local_addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse::<SocketAddr>().ok())
        .find(|a| a.ip() == addr)
        .with_context(|| {
            format!(
                "no local address {addr} in cloud.local_addrs {}",
                status["cloud"]["local_addrs"]
            )
        })
}

/// miniupnpd's dnat rule for external UDP port `external` to `to`, if
/// the router's `prerouting_miniupnpd` chain holds one.
fn miniupnpd_rule(
    nl: &NatLab,
    router_ns: &str,
    external: u16,
    to: SocketAddr,
) -> anyhow::Result<Option<String>> {
    let out =
        nl.o.lab
            .sh(router_ns, "nft list chain inet filter prerouting_miniupnpd")?;
    Ok(udp_dnat_rule(
        &String::from_utf8_lossy(&out.stdout),
        external,
        to,
    ))
}

/// The line of an nft chain listing that forwards UDP port `external` to
/// `to`, as miniupnpd writes it and nft lists it: `iif "wan" @nh,72,8
/// 0x11 th dport 4501 dnat ip to 203.0.113.90:4501` (0x11: the IP
/// protocol byte, UDP).
fn udp_dnat_rule(chain: &str, external: u16, to: SocketAddr) -> Option<String> {
    let (dport, target) = (external.to_string(), to.to_string());
    chain
        .lines()
        .map(str::trim)
        .find(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let has = |a: &str, b: &str| words.windows(2).any(|w| w[0] == a && w[1] == b);
            let udp = has("@nh,72,8", "0x11") || words.contains(&"udp");
            udp && words.contains(&"dnat") && has("dport", &dport) && has("to", &target)
        })
        .map(str::to_owned)
}

/// `node` sits behind a router running miniupnpd: within
/// [`MAPPING_TIMEOUT`] its status shows a mapping granted over `protocol`
/// ("pcp", "nat-pmp", "upnp-igd") at the router's WAN address, and the
/// router's nftables hold miniupnpd's dnat from that port to the node's
/// tunnel port.
fn port_mapping_check(nl: &NatLab, node: &str, protocol: &str) -> anyhow::Result<String> {
    let i = nl.node(node)?;
    let router = nl.router_of(i).context("not behind a router")?;
    let (wan, router_ns, router_name) = (router.wan, router.ns.clone(), router.name.clone());
    let mut last = String::from("no status");
    let found = wait_until(&format!("{node}'s port mapping"), MAPPING_TIMEOUT, || {
        let status = nl.o.status(i)?;
        last = status["cloud"]["port_mapping"].to_string();
        Ok(shown_mapping(&status)?
            .filter(|m| m.protocol == protocol)
            .map(|m| (m, status)))
    });
    let (m, status) = found.with_context(|| {
        let log = nl.o.node_log(i);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("portmap") || l.contains("port mapping"))
            .collect();
        let logged = if lines.is_empty() {
            "nothing".to_owned()
        } else {
            lines.join(" | ")
        };
        format!(
            "cloud.port_mapping is {last}; the node logged about port mapping: {logged}; {}",
            miniupnpd_tail(nl, &router_name)
        )
    })?;
    ensure!(
        m.external.ip() == IpAddr::V4(wan),
        "{protocol} mapping at {}, not on {router_name}'s WAN address {wan}",
        m.external
    );
    let tunnel = tunnel_socket(nl, i, &status)?;
    let rule = wait_until(
        &format!("miniupnpd's dnat to {tunnel} on {router_name}"),
        Duration::from_secs(2),
        || miniupnpd_rule(nl, &router_ns, m.external.port(), tunnel),
    )
    .with_context(|| {
        let chain =
            nl.o.lab
                .sh(
                    &router_ns,
                    "nft list chain inet filter prerouting_miniupnpd",
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
        format!(
            "the chain holds: {}; {}",
            chain.trim(),
            miniupnpd_tail(nl, &router_name)
        )
    })?;
    Ok(format!(
        "{protocol} {} -> {tunnel} for {} s; {router_name}: {rule}",
        m.external, m.lifetime_secs
    ))
}

/// The last lines router `router`'s miniupnpd logged, without its
/// routine chatter (nft table callbacks, pinhole scans, STUN answers),
/// for a failure's message.
fn miniupnpd_tail(nl: &NatLab, router: &str) -> String {
    let log = nl.o.lab.log(&super::nat::miniupnpd_log(router));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("miniupnpd["))
        .filter(|l| {
            !["table_cb(", "is not a IGD pinhole", "parse_stun_response"]
                .iter()
                .any(|chatter| l.contains(chatter))
        })
        .collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    format!("{router}'s miniupnpd last logged: {}", tail.join(" | "))
}

/// A NATed MN looks up a node with a port mapping: the mapped node counts
/// as one without NAT, so the tunnel is punched (pattern 2, the MN's NAT
/// opened from inside) straight to the mapped address.
fn mapped_pair_check(nl: &mut NatLab, mn: &str, cn: &str) -> anyhow::Result<String> {
    let i = nl.node(cn)?;
    let mapped = shown_mapping(&nl.o.status(i)?)?
        .with_context(|| format!("{cn} shows no port mapping"))?
        .external;
    pair_check(nl, mn, cn, "punched", |_, _, ep| {
        ensure!(
            ep == mapped,
            "endpoint {ep}, not {cn}'s mapped address {mapped}"
        );
        Ok(())
    })
}

/// `node`'s daemon stops (SIGTERM): within [`UNMAP_TIMEOUT`] miniupnpd's
/// dnat for its mapping is gone from the router. The node stays stopped.
fn mapping_removed_check(nl: &mut NatLab, node: &str) -> anyhow::Result<String> {
    let i = nl.node(node)?;
    let router = nl.router_of(i).context("not behind a router")?;
    let (router_ns, router_name) = (router.ns.clone(), router.name.clone());
    let status = nl.o.status(i)?;
    let m = shown_mapping(&status)?.with_context(|| format!("{node} shows no port mapping"))?;
    let tunnel = tunnel_socket(nl, i, &status)?;
    let port = m.external.port();
    ensure!(
        miniupnpd_rule(nl, &router_ns, port, tunnel)?.is_some(),
        "miniupnpd holds no dnat from port {port} to {tunnel} before the daemon stops"
    );
    let stopping = Instant::now();
    nl.o.stop_node(i)?;
    let stopped = stopping.elapsed();
    wait_until(
        &format!("miniupnpd to drop the dnat from port {port} to {tunnel}"),
        UNMAP_TIMEOUT,
        || {
            Ok(miniupnpd_rule(nl, &router_ns, port, tunnel)?
                .is_none()
                .then_some(()))
        },
    )
    .with_context(|| miniupnpd_tail(nl, &router_name))?;
    Ok(format!(
        "dnat {} -> {tunnel} gone {:.0} ms after SIGTERM (the daemon took {:.0} ms to exit)",
        m.external,
        stopping.elapsed().as_secs_f64() * 1000.0,
        stopped.as_secs_f64() * 1000.0
    ))
}

fn nft(o: &Overlay, ns: &str, script: &str) -> anyhow::Result<()> {
    o.lab
        .sh(ns, &format!("nft -f - <<'EOF'\n{script}\nEOF"))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miniupnpd_rules_are_found_in_the_chain_listing() {
        let chain = r#"table inet filter {
	chain prerouting_miniupnpd {
		iif "wan" @nh,72,8 0x6 th dport 4501 dnat ip to 203.0.113.90:4501
		iif "wan" @nh,72,8 0x11 th dport 4501 dnat ip to 203.0.113.90:4501
		iif "wan" @nh,72,8 0x11 th dport 4601 dnat ip to 203.0.113.91:45011
	}
}"#;
        let to: SocketAddr = "203.0.113.90:4501".parse().unwrap();
        assert_eq!(
            udp_dnat_rule(chain, 4501, to).as_deref(),
            Some(r#"iif "wan" @nh,72,8 0x11 th dport 4501 dnat ip to 203.0.113.90:4501"#)
        );
        assert_eq!(udp_dnat_rule(chain, 4601, to), None);
        assert_eq!(
            udp_dnat_rule(chain, 4601, "203.0.113.91:4501".parse().unwrap()),
            None
        );
        assert_eq!(udp_dnat_rule("", 4501, to), None);
    }

    #[test]
    fn the_path_table_matches_routing_md() {
        use Placement::*;
        let direct = [
            (V6, V6),
            (V6, Ds),
            (V4, V4),
            (V4, Ds),
            (Ds, V6),
            (Ds, V4),
            (Ds, Ds),
        ];
        let relayed = [
            (V6, V4),
            (V6, Eim),
            (V6, Sym),
            (V4, V6),
            (Eim, V6),
            (Sym, V6),
            (Sym, Sym),
        ];
        for x in Placement::ALL {
            for y in Placement::ALL {
                let want = if direct.contains(&(x, y)) {
                    "direct"
                } else if relayed.contains(&(x, y)) {
                    "relayed"
                } else {
                    "punched"
                };
                assert_eq!(expected_path(x, y), want, "{x:?} -> {y:?}");
            }
        }
    }
}
