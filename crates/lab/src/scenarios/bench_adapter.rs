//! `cyphonic lab bench-adapter`: the seed's adapter measurements (its
//! table on a Raspberry Pi 4: route selection 14.21 ms, tunnel
//! establishment 2.38 ms, NDP 0.14 ms, ARP 0.32 ms, DNS via the adapter
//! 23-28 ms, TCP 32.6 Mbit/s, UDP 29.8 Mbit/s), each taken from a general
//! node's side with real tools, on the `adapter` topology plus a second
//! node (n2) for a node's own TCP figure. Prints figures; asserts only
//! that each was measured.

use std::path::Path;

use anyhow::Context;

use super::adapter::{bring_up, mbits, AdapterLab};
use super::bench::PROBE;
use super::overlay::{iperf_ns, Report};

/// Times, from a general node's LAN port, the adapter's answer to an ARP
/// request and to a Neighbor Solicitation for a peer VIP (the proxy), and
/// to a DNS query for a name the overlay knows and one it forwards.
/// Prints JSON, each in ms (median of 20).
const LAN_PROBE: &str = r#"
import json, random, socket, statistics, struct, sys, time
iface, mac, vip4, vip6, peer4, peer6, gw4, overlay, general = sys.argv[1:10]
mac = bytes.fromhex(mac.replace(':', ''))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.settimeout(2)
def csum(b):
    if len(b) % 2: b += b'\x00'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def timed(frame, match):
    t0 = time.perf_counter()
    s.send(frame)
    while True:
        f = s.recv(2048)
        if match(f):
            return (time.perf_counter() - t0) * 1000
def arp():
    a = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(vip4), bytes(6), socket.inet_aton(peer4))
    return timed(b'\xff' * 6 + mac + b'\x08\x06' + a,
                 lambda f: f[12:14] == b'\x08\x06' and f[20:22] == b'\x00\x02' and f[28:32] == socket.inet_aton(peer4))
def ns():
    src, tgt = socket.inet_pton(socket.AF_INET6, vip6), socket.inet_pton(socket.AF_INET6, peer6)
    dst = bytes.fromhex('ff0200000000000000000001ff') + tgt[13:]
    body = struct.pack('!BBHI', 135, 0, 0, 0) + tgt + struct.pack('!BB6s', 1, 1, mac)
    body = body[:2] + struct.pack('!H', csum(src + dst + struct.pack('!I3xB', len(body), 58) + body)) + body[4:]
    ip6 = struct.pack('!IHBB', 0x60000000, len(body), 58, 255) + src + dst
    return timed(bytes.fromhex('3333ff') + tgt[13:] + mac + b'\x86\xdd' + ip6 + body,
                 lambda f: f[12:14] == b'\x86\xdd' and f[20] == 58 and f[54] == 136 and f[62:78] == tgt)
def dns(name):
    q = struct.pack('>HHHHHH', random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
    for part in name.split('.'):
        q += bytes([len(part)]) + part.encode()
    q += b'\x00' + struct.pack('>HH', 1, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    t0 = time.perf_counter()
    u.sendto(q, (gw4, 53))
    u.recvfrom(4096)
    return (time.perf_counter() - t0) * 1000
out = {}
for name, f in [('arp_ms', arp), ('ndp_ms', ns), ('dns_overlay_ms', lambda: dns(overlay)), ('dns_general_ms', lambda: dns(general))]:
    out[name] = statistics.median(f() for _ in range(20))
print(json.dumps(out))
"#;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("bench-adapter: general nodes behind adapters, measured from the general node's side");
    let mut al = bring_up(bin, "bench-adapter", &["n2"], &[], &mut report)?;
    let dir = al.o.lab.dir().to_path_buf();
    let probe = dir.join("probe.py");
    let lan_probe = dir.join("lan-probe.py");
    std::fs::write(&probe, PROBE)?;
    std::fs::write(&lan_probe, LAN_PROBE)?;
    let (n1, n2) = (al.o.fqdn(0), al.o.fqdn(3));
    let s1 = al.o.status(0)?;
    let gateway = al.o.status(1)?["vip4"]
        .as_str()
        .context("a1 has no VIP")?
        .to_owned();
    let (gn1_v4, gn1_v6) = (
        al.gn_vip4[0].clone().unwrap_or_default(),
        al.gn_vip6[0].clone().unwrap_or_default(),
    );

    // Route selection and tunnel establishment: gn1 asks the adapter for
    // n2 (never contacted), then pings the VIP it got.
    report.check(
        "route selection (gn1's DNS query for n2 -> answer) and tunnel establishment (-> first ping reply)",
        al.sh("gn1", &format!("python3 {} {n2} {gateway}", probe.display()))
            .and_then(|out| {
                let v: serde_json::Value = serde_json::from_str(out.trim()).context("probe output")?;
                Ok(format!(
                    "route selection {:.2} ms, first ping reply {:.2} ms after the answer",
                    v["dns_ms"].as_f64().unwrap_or(f64::NAN),
                    v["first_reply_ms"].as_f64().unwrap_or(f64::NAN)
                ))
            }),
    );
    report.check(
        "the adapter's answers on the LAN, from gn1's port (median of 20)",
        al.sh(
            "gn1",
            &format!(
                "python3 {} eth0 {} {gn1_v4} {gn1_v6} {} {} {gateway} {n1} {}",
                lan_probe.display(),
                super::adapter::GENERAL[0].2,
                s1["vip4"].as_str().unwrap_or_default(),
                s1["vip6"].as_str().unwrap_or_default(),
                super::overlay::GENERAL_NAME,
            ),
        )
        .and_then(|out| {
            let v: serde_json::Value = serde_json::from_str(out.trim()).context("probe output")?;
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            Ok(format!(
                "ARP {:.3} ms, NDP {:.3} ms, DNS (overlay name) {:.3} ms, DNS (forwarded) {:.3} ms",
                f("arp_ms"),
                f("ndp_ms"),
                f("dns_overlay_ms"),
                f("dns_general_ms")
            ))
        }),
    );
    let n1_ns = al.o.nodes[0].ns.clone();
    let n2_ns = al.o.nodes[3].ns.clone();
    let lab = &mut al.o.lab;
    let gn_tcp = iperf_ns(lab, "gn1", &n1_ns, &n1, &[], 5, "iperf-gn1-n1");
    let gn_tcp_in = iperf_ns(
        lab,
        &n1_ns,
        "gn1",
        &AdapterLab::fqdn("gn1"),
        &[],
        5,
        "iperf-n1-gn1",
    );
    let node_tcp = iperf_ns(lab, &n2_ns, &n1_ns, &n1, &[], 5, "iperf-n2-n1");
    let gn_udp = iperf_ns(
        lab,
        "gn1",
        &n1_ns,
        &n1,
        &["-u", "-b", "1G", "-l", "1300"],
        5,
        "iperf-udp",
    );
    let ratio = match (&gn_tcp, &node_tcp) {
        (Ok(g), Ok(n)) if *n > 0.0 => format!(" ({:.0} % of a node's own)", 100.0 * g / n),
        _ => String::new(),
    };
    report.check(
        "TCP gn1 -> n1, through the adapter",
        gn_tcp.and_then(mbits).map(|m| m + &ratio),
    );
    report.check(
        "TCP n1 -> gn1, through the adapter",
        gn_tcp_in.and_then(mbits),
    );
    report.check(
        "TCP n2 -> n1, node to node (for comparison)",
        node_tcp.and_then(mbits),
    );
    report.check(
        "UDP gn1 -> n1 (1300-byte datagrams, offered 1 Gbit/s), received",
        gn_udp.and_then(mbits),
    );
    report.check(
        "adapter a1's memory",
        al.o.node_rss_kib(1)
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .context("no RSS"),
    );
    if !report.ok() {
        let log = al.o.node_log(3);
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        println!("--- n2 log (last lines) ---");
        for l in tail.into_iter().rev() {
            println!("{l}");
        }
    }
    println!(
        "bench-adapter: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}
