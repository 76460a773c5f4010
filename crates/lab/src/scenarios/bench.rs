//! `cyphonic lab bench`: figures on the `direct` topology (IPv4 underlay):
//! route selection and tunnel establishment times, ping RTT and TCP
//! throughput through the overlay next to the bare underlay, and the
//! daemon's memory. Prints figures; asserts only that each was measured.

use std::path::Path;

use anyhow::{ensure, Context};

use super::direct::bring_up;
use super::overlay::{iperf, parse_ping, Report, Underlay};

/// Times one DNS query to the node's resolver for a peer never contacted,
/// then one ICMP echo to the VIP it returned (the echo waits for the tunnel
/// handshake). Prints JSON: {"dns_ms": .., "first_reply_ms": .., "vip": ..}.
pub const PROBE: &str = r#"
import json, random, socket, struct, sys, time
name, server = sys.argv[1], sys.argv[2]
qid = random.randint(0, 65535)
q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
for part in name.split('.'):
    q += bytes([len(part)]) + part.encode()
q += b'\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
t0 = time.perf_counter()
s.sendto(q, (server, 53))
resp, _ = s.recvfrom(4096)
t1 = time.perf_counter()
# the answer's last 4 bytes are the A record's address
vip = socket.inet_ntoa(resp[-4:])
ic = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ic.settimeout(10)
def csum(b):
    if len(b) % 2: b += b'\x00'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
ident = random.randint(0, 65535)
hdr = struct.pack('!BBHHH', 8, 0, 0, ident, 1)
payload = b'cyphonic-bench'
pkt = struct.pack('!BBHHH', 8, 0, csum(hdr + payload), ident, 1) + payload
t2 = time.perf_counter()
ic.sendto(pkt, (vip, 0))
while True:
    data, addr = ic.recvfrom(2048)
    ihl = (data[0] & 0x0f) * 4
    typ, _, _, rid, _ = struct.unpack('!BBHHH', data[ihl:ihl + 8])
    if typ == 0 and rid == ident:
        break
t3 = time.perf_counter()
print(json.dumps({"dns_ms": (t1 - t0) * 1000, "first_reply_ms": (t3 - t2) * 1000, "vip": vip}))
"#;

/// What the filtered measurement runs under.
const BENCH_POLICY: &str = r#"default = "deny"

[[rule]]
from = ["n1"]
to = ["n2"]
ports = ["icmp", "tcp/5201"]
"#;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("bench on the direct topology (IPv4 underlay, two namespaces on one bridge):");
    let mut o = bring_up(bin, "bench", Underlay::V4, &["n1", "n2"])?;
    let n2 = o.fqdn(1);
    let probe_path = o.lab.dir().join("probe.py");
    std::fs::write(&probe_path, PROBE)?;
    let probe = o.sh(
        0,
        &format!("python3 {} {n2} 127.0.0.153", probe_path.display()),
    );
    let mut vip = String::new();
    report.check(
        "route selection (DNS query -> answer) and tunnel establishment (-> first ping reply)",
        probe.and_then(|out| {
            let v: serde_json::Value = serde_json::from_str(out.trim()).context("probe output")?;
            vip = v["vip"].as_str().unwrap_or_default().to_owned();
            Ok(format!(
                "route selection {:.2} ms, first ping reply {:.2} ms after the answer",
                v["dns_ms"].as_f64().unwrap_or(f64::NAN),
                v["first_reply_ms"].as_f64().unwrap_or(f64::NAN)
            ))
        }),
    );
    ensure!(!vip.is_empty(), "the probe did not resolve {n2}");
    let bare = o.nodes[1].underlay.to_string();
    for (label, dst) in [("overlay", vip.as_str()), ("bare underlay", bare.as_str())] {
        let r = o
            .sh(0, &format!("ping -c 50 -i 0.02 -q {dst}"))
            .and_then(|out| {
                let (rx, avg) = parse_ping(&out).context("no ping summary")?;
                ensure!(rx > 0, "no replies");
                Ok(format!("avg RTT {avg:.3} ms ({rx}/50 replies)"))
            });
        report.check(&format!("ping RTT, {label}"), r);
    }
    for streams in [1, 4] {
        for (label, dst) in [("overlay", vip.clone()), ("bare underlay", bare.clone())] {
            let r = iperf(&mut o, 0, 1, &dst, streams, 5).map(|m| format!("{m:.0} Mbit/s"));
            report.check(&format!("TCP throughput, {label}, {streams} stream(s)"), r);
        }
    }
    // The same tunnel under a default-deny policy that allows n1 -> n2 on
    // ICMP and tcp/5201: every packet through the filter and the flow
    // table on both ends.
    let filtered = (|| {
        let v = super::policy::set_policy(&o, "bench-policy.toml", BENCH_POLICY)?;
        super::policy::applied(&o, &v)?;
        crate::wait_until(
            "the route's new filter",
            std::time::Duration::from_secs(5),
            || Ok((o.status(0)?["counters"]["route_updates"].as_u64() >= Some(1)).then_some(())),
        )
    })();
    report.check(
        "access policy on (default deny, n1 -> n2 on icmp and tcp/5201)",
        filtered.map(|()| String::new()),
    );
    for streams in [1, 4] {
        let r = iperf(&mut o, 0, 1, &vip, streams, 5).map(|m| format!("{m:.0} Mbit/s"));
        report.check(
            &format!("TCP throughput, overlay with the policy filter, {streams} stream(s)"),
            r,
        );
    }
    for i in 0..2 {
        let r = o
            .node_rss_kib(i)
            .map(|kib| format!("{:.1} MiB", kib as f64 / 1024.0))
            .context("cannot read the daemon's RSS");
        report.check(&format!("daemon RSS, {}", o.nodes[i].name), r);
    }
    drop(o);
    if let Err(e) = patterns(bin, &mut report) {
        report.check("route patterns", Err(e));
    }
    if let Err(e) = super::bench_transports::measure(bin, &mut report) {
        report.check("transports", Err(e));
    }
    println!("bench: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

/// Per route pattern, on real kernel NAT: the time from a DNS query for a
/// peer not yet connected to its answer and on to the first ping reply,
/// and TCP throughput, relayed next to direct.
fn patterns(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    use super::nat::{NatKind, Placement, Topology};
    println!("bench per route pattern (kernel NAT, one TRS):");
    let mut nl = Topology::new()
        .router("r-ea", NatKind::Eim)
        .router("r-eb", NatKind::Eim)
        .router("r-sa", NatKind::Sym)
        .router("r-sb", NatKind::Sym)
        .node("v4-a", Placement::V4)
        .node("v4-b", Placement::V4)
        .node_behind("eim-a", "r-ea")
        .node_behind("eim-b", "r-eb")
        .node_behind("sym-a", "r-sa")
        .node_behind("sym-b", "r-sb")
        .build("bench-nat", bin)?;
    for (i, r) in nl.start()?.into_iter().enumerate() {
        r.with_context(|| format!("{} did not start", nl.o.nodes[i].name))?;
    }
    let probe_path = nl.o.lab.dir().join("probe.py");
    std::fs::write(&probe_path, PROBE)?;
    for (label, from, to) in [
        ("direct (pattern 1), v4 -> v4", "v4-a", "v4-b"),
        ("punched (pattern 2), eim -> v4", "eim-a", "v4-b"),
        ("punched (coordinated), eim -> eim", "eim-a", "eim-b"),
        ("relayed (pattern 3), sym -> sym", "sym-a", "sym-b"),
    ] {
        let (a, b) = (nl.node(from)?, nl.node(to)?);
        let fqdn = nl.o.fqdn(b);
        let r = nl
            .o
            .sh(a, &format!("python3 {} {fqdn} 127.0.0.153", probe_path.display()))
            .and_then(|out| {
                let v: serde_json::Value = serde_json::from_str(out.trim()).context("probe output")?;
                let vip = v["vip"].as_str().unwrap_or_default().to_owned();
                let dns = v["dns_ms"].as_f64().unwrap_or(f64::NAN);
                let first = v["first_reply_ms"].as_f64().unwrap_or(f64::NAN);
                let path = nl.o.peer(a, &fqdn)?["path"].as_str().unwrap_or("?").to_owned();
                let mbps = iperf(&mut nl.o, a, b, &vip, 1, 5)?;
                Ok(format!(
                    "path {path}: DNS answer {dns:.2} ms, first ping reply {:.2} ms after the query, TCP {mbps:.0} Mbit/s",
                    dns + first
                ))
            });
        report.check(label, r);
    }
    Ok(())
}
