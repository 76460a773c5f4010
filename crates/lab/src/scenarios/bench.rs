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
const PROBE: &str = r#"
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
    for i in 0..2 {
        let r = o
            .node_rss_kib(i)
            .map(|kib| format!("{:.1} MiB", kib as f64 / 1024.0))
            .context("cannot read the daemon's RSS");
        report.check(&format!("daemon RSS, {}", o.nodes[i].name), r);
    }
    println!("bench: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}
