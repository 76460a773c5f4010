//! `cyphonic lab bench-peers`: cyphonic side by side with peer overlays
//! (nebula, wireguard-go, boringtun) and the bare underlay, in the same two
//! namespaces on the `direct` topology ([`super::direct::bring_up`]'s
//! cloud, DNS server and bridge).
//!
//! All four overlays run at once, each on its own TUN device, overlay
//! prefix and UDP port:
//!
//! - cyphonic: the two nodes enrolled with the lab's cloud (VIPs from the
//!   cloud, tunnel port 4501);
//! - nebula: a CA and two host certificates from `nebula-cert`, each host
//!   with the other in `static_host_map`, no lighthouse, a firewall that
//!   lets everything in and out, 100.100.1.0/24, UDP 4242;
//! - wireguard-go and boringtun: one userspace device per end configured
//!   with `wg set` (keys from `wg genkey`), MTU 1420 as `wg-quick` sets it,
//!   100.100.2.0/24 on UDP 51820 and 100.100.3.0/24 on UDP 51821.
//!
//! Tests are interleaved (every system once per round, three rounds) and the
//! table gives each figure's median over the rounds: iperf3 TCP with 1 and
//! 4 streams both ways, UDP offered at 1 Gbit/s (received rate and loss),
//! ping RTT (pings 0.05 s and 1 ms apart), setup to the first ping reply, the daemons' CPU time per
//! Gbit/s carried and their resident memory under load; each with
//! cyphonic's ratio to the bare underlay and to the best peer.
//!
//! The peers come from `scripts/peers.sh` (Debian's nebula, wireguard-go
//! and wireguard-tools, crates.io's boringtun-cli); without them the
//! scenario stops and names what is missing.
//!
//! For a look by hand, `CYPHONIC_BENCH_HOLD=<seconds>` keeps every tunnel
//! up that long, or until the file it names is removed, before the rounds
//! (printing the namespaces, each system's address of b and its daemons'
//! PIDs), and `CYPHONIC_BENCH_ROUNDS=<n>`
//! sets the number of rounds (0: none).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};

use super::bench::PROBE;
use super::overlay::{iperf_ns, parse_ping, rss_kib, unix_now, Overlay, Report, Underlay};
use crate::wait_until;

const ROUNDS: usize = 3;
/// Pings per round, 0.05 s apart: each system's round trip is the median
/// (a virtual machine's idle vCPU wakes slowly now and then; the mean
/// follows those outliers).
const PINGS: u32 = 50;
/// Seconds per iperf3 run: the whole bench stays under about 6 minutes.
const SECS: u32 = 3;
/// How long a system gets from starting its daemons to its first reply.
const SETUP_DEADLINE: Duration = Duration::from_secs(20);

/// Pings `argv[2]` (an address, or `name@dns-server` to resolve first) every
/// 2 ms until the first echo reply, ignoring send errors (no route or no key
/// yet), for at most `argv[1]` seconds. Prints "ready" once its sockets are
/// open, then JSON with the Unix times of the DNS answer (when resolving)
/// and of the first reply.
const PINGER: &str = r#"
import json, random, select, socket, struct, sys, time
deadline = time.time() + float(sys.argv[1])
target = sys.argv[2]
STEP = 0.002
out = {}
ic = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def fail(why):
    out["error"] = why
    print(json.dumps(out))
    sys.exit(1)
if "@" in target:
    name, server = target.split("@")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # connected: a refusal (nothing listening yet) comes back at once
    s.connect((server, 53))
    print("ready", flush=True)
    addr = None
    while addr is None:
        if time.time() > deadline:
            fail("no DNS answer for " + name)
        qid = random.randint(0, 65535)
        q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        for part in name.split("."):
            q += bytes([len(part)]) + part.encode()
        q += b"\x00" + struct.pack(">HH", 1, 1)
        try:
            s.send(q)
            if select.select([s], [], [], 0.02)[0]:
                resp = s.recv(4096)
                rid, flags, _, an = struct.unpack(">HHHH", resp[:8])
                if rid == qid and flags & 0xF == 0 and an > 0:
                    addr = socket.inet_ntoa(resp[-4:])
                    out["t_resolved"] = time.time()
                    out["addr"] = addr
        except OSError:
            pass
        if addr is None:
            time.sleep(STEP)
else:
    addr = target
    print("ready", flush=True)
def csum(b):
    if len(b) % 2:
        b += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
ident = random.randint(0, 65535)
seq, next_send, sent = 0, 0.0, 0
while True:
    now = time.time()
    if now > deadline:
        fail("no echo reply from %s (%d requests sent)" % (addr, sent))
    if now >= next_send:
        seq = (seq + 1) & 0xFFFF
        payload = b"cyphonic-bench-peers"
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload
        try:
            ic.sendto(pkt, (addr, 0))
            sent += 1
        except OSError:
            pass
        next_send = now + STEP
    if select.select([ic], [], [], max(0.0, next_send - time.time()))[0]:
        data, src = ic.recvfrom(2048)
        ihl = (data[0] & 0x0F) * 4
        typ, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if typ == 0 and rid == ident and src[0] == addr:
            out["t_reply"] = time.time()
            out["requests"] = sent
            break
print(json.dumps(out))
"#;

/// The tools the peers need, and where they come from.
const PEER_TOOLS: [&str; 5] = [
    "nebula",
    "nebula-cert",
    "wireguard-go",
    "wg",
    "boringtun-cli",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Veth,
    Cyphonic,
    Nebula,
    WireguardGo,
    Boringtun,
}

const SYSTEMS: [System; 5] = [
    System::Veth,
    System::Cyphonic,
    System::Nebula,
    System::WireguardGo,
    System::Boringtun,
];

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Veth => "veth",
            System::Cyphonic => "cyphonic",
            System::Nebula => "nebula",
            System::WireguardGo => "wireguard-go",
            System::Boringtun => "boringtun",
        }
    }

    fn is_peer(self) -> bool {
        matches!(
            self,
            System::Nebula | System::WireguardGo | System::Boringtun
        )
    }
}

#[derive(Clone, Copy)]
enum Better {
    High,
    Low,
}

// Rows of the table.
const TCP1_AB: usize = 0;
const TCP1_BA: usize = 1;
const TCP4_AB: usize = 2;
const TCP4_BA: usize = 3;
const UDP_RX: usize = 4;
const UDP_LOSS: usize = 5;
const RTT: usize = 6;
const RTT_BUSY: usize = 7;
const SETUP: usize = 8;
const START: usize = 9;
const CPU: usize = 10;
const RSS: usize = 11;
const FIGURES: usize = 12;

/// (label, which way is better, decimals)
const ROWS: [(&str, Better, usize); FIGURES] = [
    ("TCP 1 stream a->b, Mbit/s", Better::High, 0),
    ("TCP 1 stream b->a, Mbit/s", Better::High, 0),
    ("TCP 4 streams a->b, Mbit/s", Better::High, 0),
    ("TCP 4 streams b->a, Mbit/s", Better::High, 0),
    ("UDP 1 Gbit/s a->b, received Mbit/s", Better::High, 0),
    ("UDP 1 Gbit/s a->b, loss %", Better::Low, 2),
    ("ping RTT (50 x 0.05 s, median), ms", Better::Low, 3),
    ("ping RTT (500 x 1 ms, median), ms", Better::Low, 3),
    ("setup to first ping, ms (*)", Better::Low, 1),
    ("daemon start to first ping, ms", Better::Low, 1),
    ("CPU s per Gbit (both daemons)", Better::Low, 3),
    ("RSS under load, MiB (larger end)", Better::Low, 1),
];

/// A system up in both namespaces: where a reaches b, and its daemons.
struct Up {
    system: System,
    /// b's address on this system.
    dst: String,
    /// The daemons on both ends (none for the bare veth).
    pids: Vec<u32>,
}

type Figures = [Option<f64>; FIGURES];

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    check_tools()?;
    let started = std::time::Instant::now();
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "bench-peers: cyphonic, {}, {}, {} and the bare veth in the same two namespaces",
        version(&["nebula", "-version"]),
        version(&["wireguard-go", "--version"]),
        version(&["boringtun-cli", "--version"]),
    );
    let iperf3 = version(&["iperf3", "--version"]);
    let mut report = Report::default();
    let mut o = Overlay::build("bench-peers", bin, Underlay::V4, &["n1", "n2"])?;
    println!(
        "(a = n1 {}, b = n2 {} on one bridge; {iperf3}; {ROUNDS} interleaved rounds of {SECS} s iperf3 runs)",
        o.nodes[0].underlay, o.nodes[1].underlay
    );
    let dir = o.lab.dir().to_owned();
    std::fs::write(dir.join("probe.py"), PROBE)?;
    std::fs::write(dir.join("pinger.py"), PINGER)?;

    let mut medians: Vec<Figures> = vec![[None; FIGURES]; SYSTEMS.len()];
    let mut ups: Vec<Up> = vec![Up {
        system: System::Veth,
        dst: o.nodes[1].underlay.to_string(),
        pids: Vec::new(),
    }];
    // Setup, one system after the other; every tunnel stays up.
    for (si, system) in SYSTEMS.iter().copied().enumerate().skip(1) {
        let r = match system {
            System::Cyphonic => up_cyphonic(&mut o),
            System::Nebula => up_nebula(&mut o),
            System::WireguardGo | System::Boringtun => up_wireguard(&mut o, system),
            System::Veth => unreachable!(),
        };
        let r = r.map(|(up, setup_ms, start_ms)| {
            medians[si][SETUP] = Some(setup_ms);
            medians[si][START] = Some(start_ms);
            ups.push(up);
            format!(
                "first ping reply {start_ms:.1} ms after starting the daemons{}",
                if system == System::Cyphonic {
                    format!(", {setup_ms:.1} ms after the DNS query (nodes registered); n1 -> n2 direct over UDP")
                } else {
                    String::new()
                }
            )
        });
        report.check(&format!("{} up", system.name()), r);
    }

    if let Some(secs) = std::env::var("CYPHONIC_BENCH_HOLD")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let file = dir.join("hold");
        std::fs::write(&file, b"")?;
        println!(
            "holding {secs} s (or until {} is removed): a = {}, b = {}",
            file.display(),
            o.nodes[0].ns,
            o.nodes[1].ns
        );
        for up in &ups {
            println!(
                "  {}: b at {}, daemons {:?}",
                up.system.name(),
                up.dst,
                up.pids
            );
        }
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        while file.exists() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let rounds_wanted = std::env::var("CYPHONIC_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(ROUNDS);

    // Interleaved rounds: A B C A B C.
    let mut rounds: Vec<Vec<Figures>> = vec![Vec::new(); SYSTEMS.len()];
    for round in 1..=rounds_wanted {
        for up in &ups {
            let si = SYSTEMS.iter().position(|s| *s == up.system).unwrap_or(0);
            let (figs, r) = measure(&mut o, up, round);
            rounds[si].push(figs);
            report.check(&format!("round {round}, {}", up.system.name()), r);
        }
    }
    for (si, runs) in rounds.iter().enumerate() {
        for f in 0..FIGURES {
            if f == SETUP || f == START {
                continue;
            }
            medians[si][f] = median(runs.iter().filter_map(|r| r[f]).collect());
        }
    }
    print_table(&medians);
    drop(o);
    println!(
        "bench-peers: {} passed, {} failed (wall time {:.0} s)",
        report.passed,
        report.failed,
        started.elapsed().as_secs_f64()
    );
    Ok(report.ok())
}

/// Fails naming every peer tool not on PATH, and how to install it.
fn check_tools() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = PEER_TOOLS
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "bench-peers needs {} (not on PATH): run `sudo scripts/peers.sh` (nebula, \
             wireguard-go and wireguard-tools from Debian, boringtun-cli from crates.io), then \
             run the bench again",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The first line a tool prints for its version, named ("?" when it
/// prints none).
fn version(args: &[&str]) -> String {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
        })
        .map(|v| {
            // "Version: 1.6.1" (nebula), "boringtun 0.7.1", "iperf 3.12 ..."
            let v = v.trim_start_matches("Version:").trim().to_owned();
            if v.get(..4).is_some_and(|p| args[0].starts_with(p)) {
                v
            } else {
                format!("{} {v}", args[0])
            }
        })
        .unwrap_or_else(|| format!("{} ?", args[0]))
}

/// Starts the pinger in a towards `target` (an address or
/// `name@resolver`) and waits until it is ready to send (Python takes a
/// while to start): the caller starts the daemons after it.
fn start_pinger(o: &mut Overlay, target: &str, label: &str) -> anyhow::Result<(u32, String)> {
    let script = o.lab.dir().join("pinger.py").to_string_lossy().to_string();
    let log = format!("pinger-{label}");
    let secs = SETUP_DEADLINE.as_secs().to_string();
    let ns = o.nodes[0].ns.clone();
    let pid = o
        .lab
        .spawn(&ns, &["python3", &script, &secs, target], &log, &[])?;
    let lab = &mut o.lab;
    let ready = wait_until("the pinger to start", Duration::from_secs(10), || {
        if let Some(status) = lab.try_wait(pid)? {
            bail!("the pinger exited ({status}): {}", lab.log(&log).trim());
        }
        Ok(lab.log(&log).contains("ready").then_some(()))
    });
    if let Err(e) = ready {
        let _ = o.lab.kill(pid);
        return Err(e);
    }
    Ok((pid, log))
}

/// Waits for the pinger; the Unix time of its first reply (and of its DNS
/// answer, when it resolved a name).
fn finish_pinger(o: &mut Overlay, pid: u32, log: &str) -> anyhow::Result<serde_json::Value> {
    let lab = &mut o.lab;
    let status = wait_until(
        "the first ping reply",
        SETUP_DEADLINE + Duration::from_secs(5),
        || lab.try_wait(pid),
    );
    let _ = o.lab.kill(pid);
    status?;
    let text = o.lab.log(log);
    let v: serde_json::Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the pinger printed no JSON: {}", text.trim()))?;
    if let Some(e) = v["error"].as_str() {
        bail!("{e}");
    }
    ensure!(v["t_reply"].is_f64(), "the pinger saw no reply: {v}");
    Ok(v)
}

/// Cyphonic: the cloud, both nodes enrolled and started while the pinger
/// resolves n2 through n1's resolver and pings it (daemon start -> first
/// reply); then both nodes restarted, registered, and [`PROBE`]'s DNS query
/// for n2 -> first reply, as `lab bench` measures it.
fn up_cyphonic(o: &mut Overlay) -> anyhow::Result<(Up, f64, f64)> {
    o.start_cloud()?;
    o.enroll(0)?;
    o.enroll(1)?;
    let n2 = o.fqdn(1);
    let (pinger, log) = start_pinger(o, &format!("{n2}@127.0.0.153"), "cyphonic")?;
    let t0 = unix_now();
    // The responder first, as for every system.
    o.start_node(1)?;
    o.start_node(0)?;
    let v = finish_pinger(o, pinger, &log)
        .with_context(|| format!("n1's log:\n{}\nn2's log:\n{}", o.node_log(0), o.node_log(1)))?;
    let start_ms = (v["t_reply"].as_f64().unwrap_or(f64::NAN) - t0) * 1000.0;
    // A fresh pair for the lookup's figure.
    for i in 0..2 {
        o.stop_node(i)?;
    }
    for i in 0..2 {
        o.start_node(i)?;
    }
    for i in 0..2 {
        o.wait_registered(i, Duration::from_secs(20))?;
    }
    let probe = o.lab.dir().join("probe.py");
    let out = o.sh(0, &format!("python3 {} {n2} 127.0.0.153", probe.display()))?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("probe output")?;
    let setup_ms =
        v["dns_ms"].as_f64().unwrap_or(f64::NAN) + v["first_reply_ms"].as_f64().unwrap_or(f64::NAN);
    let vip = v["vip"].as_str().unwrap_or_default().to_owned();
    let ip: IpAddr = vip.parse().with_context(|| format!("VIP {vip:?}"))?;
    // The peers' prefixes are 100.100.{1,2,3}.0/24: a VIP there would be
    // routed to them.
    ensure!(
        !matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [100, 100]),
        "n2's VIP {vip} falls in 100.100.0.0/16, the peers' prefixes"
    );
    let p = o.peer(0, &n2)?;
    ensure!(
        p["path"] == "direct" && p["transport"] == "udp",
        "n1 -> n2 is {} over {}, not direct over udp",
        p["path"],
        p["transport"]
    );
    let pids = (0..2).filter_map(|i| o.nodes[i].pid).collect();
    Ok((
        Up {
            system: System::Cyphonic,
            dst: vip,
            pids,
        },
        setup_ms,
        start_ms,
    ))
}

/// Nebula: CA and host certificates, a configuration per host, both
/// daemons started while the pinger pings b's nebula address.
fn up_nebula(o: &mut Overlay) -> anyhow::Result<(Up, f64, f64)> {
    const PORT: u16 = 4242;
    let dir = o.lab.dir().join("nebula");
    std::fs::create_dir_all(&dir)?;
    let d = dir.to_string_lossy().to_string();
    let ns = [o.nodes[0].ns.clone(), o.nodes[1].ns.clone()];
    let underlay = [o.nodes[0].underlay, o.nodes[1].underlay];
    let vpn = ["100.100.1.1", "100.100.1.2"];
    o.lab.sh(
        &ns[0],
        &format!(
            "cd {d} && nebula-cert ca -name cyphonic-lab -duration 2h \
             && nebula-cert sign -name a -ip {}/24 -out-crt a.crt -out-key a.key \
             && nebula-cert sign -name b -ip {}/24 -out-crt b.crt -out-key b.key",
            vpn[0], vpn[1]
        ),
    )?;
    for (i, host) in ["a", "b"].iter().enumerate() {
        let other = 1 - i;
        let cfg = format!(
            "pki:\n  ca: {d}/ca.crt\n  cert: {d}/{host}.crt\n  key: {d}/{host}.key\n\
             static_host_map:\n  \"{}\": [\"{}:{PORT}\"]\n\
             lighthouse:\n  am_lighthouse: false\n  interval: 60\n  hosts: []\n\
             listen:\n  host: 0.0.0.0\n  port: {PORT}\n\
             punchy:\n  punch: false\n\
             tun:\n  disabled: false\n  dev: nebula1\n\
             logging:\n  level: info\n  format: text\n\
             firewall:\n  outbound:\n    - port: any\n      proto: any\n      host: any\n\
             \x20 inbound:\n    - port: any\n      proto: any\n      host: any\n",
            vpn[other], underlay[other]
        );
        std::fs::write(dir.join(format!("{host}.yml")), cfg)?;
    }
    let (pinger, log) = start_pinger(o, vpn[1], "nebula")?;
    let t0 = unix_now();
    let mut pids = Vec::new();
    // The responder first, as for every system.
    for (i, host) in [(1, "b"), (0, "a")] {
        let cfg = format!("{d}/{host}.yml");
        pids.push(o.lab.spawn(
            &ns[i],
            &["nebula", "-config", &cfg],
            &format!("nebula-{host}"),
            &[],
        )?);
    }
    let v = finish_pinger(o, pinger, &log).with_context(|| {
        format!(
            "nebula a's log:\n{}\nnebula b's log:\n{}",
            o.lab.log("nebula-a"),
            o.lab.log("nebula-b")
        )
    })?;
    let ms = (v["t_reply"].as_f64().unwrap_or(f64::NAN) - t0) * 1000.0;
    Ok((
        Up {
            system: System::Nebula,
            dst: vpn[1].to_owned(),
            pids,
        },
        ms,
        ms,
    ))
}

/// wireguard-go or boringtun: keys from `wg genkey`, both daemons started
/// in the foreground, each device configured with `wg set` and `ip` once
/// its UAPI socket is there, while the pinger pings b's address.
fn up_wireguard(o: &mut Overlay, system: System) -> anyhow::Result<(Up, f64, f64)> {
    let (tag, net, port) = match system {
        System::WireguardGo => ("wg", 2, 51820),
        _ => ("bt", 3, 51821),
    };
    let dir = o.lab.dir().join(system.name());
    std::fs::create_dir_all(&dir)?;
    let d = dir.to_string_lossy().to_string();
    let ns = [o.nodes[0].ns.clone(), o.nodes[1].ns.clone()];
    let underlay = [o.nodes[0].underlay, o.nodes[1].underlay];
    // The UAPI sockets live in the host's /var/run/wireguard, shared by
    // every namespace and lab: names unique to this lab and end.
    let ifs = [
        format!("{}-{tag}a", o.lab.prefix()),
        format!("{}-{tag}b", o.lab.prefix()),
    ];
    let addrs = [format!("100.100.{net}.1"), format!("100.100.{net}.2")];
    let mut pubs = Vec::new();
    for host in ["a", "b"] {
        o.lab.sh(
            &ns[0],
            &format!("cd {d} && umask 077 && wg genkey > {host}.key && wg pubkey < {host}.key > {host}.pub"),
        )?;
        let pubkey = std::fs::read_to_string(dir.join(format!("{host}.pub")))?;
        pubs.push(pubkey.trim().to_owned());
    }
    let sockets: Vec<PathBuf> = ifs
        .iter()
        .map(|i| PathBuf::from(format!("/var/run/wireguard/{i}.sock")))
        .collect();
    // In the host's /var/run/wireguard (global, not per namespace).
    for s in &sockets {
        o.lab.remove_at_cleanup(s.clone());
    }
    let (pinger, log) = start_pinger(o, &addrs[1], system.name())?;
    let t0 = unix_now();
    let mut pids = Vec::new();
    // The responder first, as for every system.
    for (i, host) in [(1, "b"), (0, "a")] {
        let pid = match system {
            System::WireguardGo => o.lab.spawn(
                &ns[i],
                &["wireguard-go", "-f", &ifs[i]],
                &format!("wireguard-go-{host}"),
                &[("WG_PROCESS_FOREGROUND", "1")],
            )?,
            _ => o.lab.spawn(
                &ns[i],
                &[
                    "boringtun-cli",
                    &ifs[i],
                    "--foreground",
                    "--disable-drop-privileges",
                ],
                &format!("boringtun-{host}"),
                &[],
            )?,
        };
        pids.push(pid);
    }
    let configured = (|| {
        // Polled every millisecond within each 50 ms step, so that the
        // figure measures the daemon rather than the poll.
        wait_until(
            &format!("{}'s UAPI sockets", system.name()),
            Duration::from_secs(10),
            || {
                for _ in 0..50 {
                    if sockets.iter().all(|s| s.exists()) {
                        return Ok(Some(()));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(None)
            },
        )?;
        let lab = &o.lab;
        let cmds: Vec<String> = (0..2)
            .map(|i| {
                let other = 1 - i;
                format!(
                    "wg set {dev} listen-port {port} private-key {d}/{me}.key \
                     peer {peer} endpoint {ep}:{port} allowed-ips {ip}/32 \
                     && ip addr add {mine}/24 dev {dev} && ip link set {dev} mtu 1420 up",
                    dev = ifs[i],
                    me = ["a", "b"][i],
                    peer = pubs[other],
                    ep = underlay[other],
                    ip = addrs[other],
                    mine = addrs[i],
                )
            })
            .collect();
        // Both ends at once, as two hosts would.
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|i| {
                    let (ns, cmd) = (&ns[i], &cmds[i]);
                    s.spawn(move || lab.sh(ns, cmd).map(drop))
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| anyhow!("configuring thread panicked"))?
            })
        })
    })();
    if let Err(e) = configured {
        let _ = o.lab.kill(pinger);
        return Err(e.context(format!(
            "{} a's log:\n{}\n{} b's log:\n{}",
            system.name(),
            o.lab.log(&format!("{}-a", system.name())),
            system.name(),
            o.lab.log(&format!("{}-b", system.name()))
        )));
    }
    let v = finish_pinger(o, pinger, &log)?;
    let ms = (v["t_reply"].as_f64().unwrap_or(f64::NAN) - t0) * 1000.0;
    Ok((
        Up {
            system,
            dst: addrs[1].clone(),
            pids,
        },
        ms,
        ms,
    ))
}

/// One round of one system: ping, TCP (1 and 4 streams, both ways), UDP at
/// 1 Gbit/s, and CPU and memory over the single-stream a -> b transfer.
fn measure(o: &mut Overlay, up: &Up, round: usize) -> (Figures, anyhow::Result<String>) {
    let mut f: Figures = [None; FIGURES];
    let mut errors: Vec<String> = Vec::new();
    let mut detail = String::new();
    let (a, b) = (o.nodes[0].ns.clone(), o.nodes[1].ns.clone());
    let dst = up.dst.clone();
    let name = up.system.name();
    let log = format!("iperf3-{name}");

    // Round trips 0.05 s apart (the CPUs idle in between), then 1 ms
    // apart (they stay awake).
    for (fig, count, interval, what) in [
        (RTT, PINGS, "0.05", "RTT"),
        (RTT_BUSY, 500, "0.001", "RTT at 1 ms"),
    ] {
        let out = o.sh(0, &format!("ping -c {count} -i {interval} -W 2 {dst}"));
        match out.and_then(|out| {
            let rx = parse_ping(&out).context("no ping summary")?.0;
            Ok((rx, ping_times(&out)))
        }) {
            Ok((rx, mut times)) if rx >= count * 9 / 10 && !times.is_empty() => {
                times.sort_by(f64::total_cmp);
                let p50 = times[times.len() / 2];
                f[fig] = Some(p50);
                let sep = if detail.is_empty() { "" } else { ", " };
                let _ = write!(detail, "{sep}{what} {p50:.3} ms");
            }
            Ok((rx, _)) => errors.push(format!("ping every {interval} s: {rx}/{count} replies")),
            Err(e) => errors.push(format!("ping every {interval} s: {e:#}")),
        }
    }

    // Single stream a -> b, with the daemons' CPU time and memory (and,
    // with CYPHONIC_BENCH_PERF, a profile of cyphonic's daemons).
    let profile = (up.system == System::Cyphonic && round == 1)
        .then(|| std::env::var_os("CYPHONIC_BENCH_PERF"))
        .flatten()
        .map(|dir| {
            start_profile(
                Path::new(&dir),
                "cyphonic.perf.data",
                &up.pids,
                SECS.saturating_sub(1),
            )
        });
    // cyphonic: how many of each end's packets its receiving threads sent
    // (the kernel's immediate answers, `Outbound::turn_around`).
    let turned = |o: &Overlay| -> Option<[(u64, u64); 2]> {
        (up.system == System::Cyphonic).then_some(())?;
        let mut ends = [(0, 0); 2];
        for (i, end) in ends.iter_mut().enumerate() {
            let d = &o.status(i).ok()?["dataplane"];
            *end = (d["tx_turned_around"].as_u64()?, d["tx_packets"].as_u64()?);
        }
        Some(ends)
    };
    let turned0 = turned(o);
    let cpu0 = cpu_ticks(&up.pids);
    let stop = AtomicBool::new(false);
    let (tcp, rss) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max: Option<u64> = None;
            while !stop.load(Ordering::Relaxed) {
                for &pid in &up.pids {
                    if let Some(kib) = rss_kib(pid) {
                        max = Some(max.map_or(kib, |m| m.max(kib)));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        });
        let r = iperf_ns(&mut o.lab, &a, &b, &dst, &["-P", "1"], SECS, &log);
        stop.store(true, Ordering::Relaxed);
        (r, sampler.join().unwrap_or(None))
    });
    let cpu1 = cpu_ticks(&up.pids);
    if let (Some(t0), Some(t1)) = (turned0, turned(o)) {
        let share = |i: usize| {
            let turned = t1[i].0.saturating_sub(t0[i].0);
            let sent = t1[i].1.saturating_sub(t0[i].1);
            100.0 * turned as f64 / sent.max(1) as f64
        };
        let _ = write!(
            detail,
            ", sent by the receiving thread in 1x a->b: a {:.1} %, b {:.1} %",
            share(0),
            share(1)
        );
    }
    match profile.map(finish_profile) {
        Some(Ok(file)) => println!("  profile of cyphonic's daemons (1 stream a->b): {file}"),
        Some(Err(e)) => println!("  no profile: {e:#}"),
        None => {}
    }
    match tcp {
        Ok(mbps) => {
            f[TCP1_AB] = Some(mbps);
            if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                let gbit = mbps * f64::from(SECS) / 1000.0;
                if gbit > 0.0 {
                    f[CPU] = Some((c1 - c0) as f64 / hz / gbit);
                }
            }
            f[RSS] = rss.map(|kib| kib as f64 / 1024.0);
        }
        Err(e) => errors.push(format!("TCP 1 stream a->b: {e:#}")),
    }

    for (fig, extra, what) in [
        (TCP1_BA, &["-P", "1", "-R"][..], "TCP 1 stream b->a"),
        (TCP4_AB, &["-P", "4"][..], "TCP 4 streams a->b"),
        (TCP4_BA, &["-P", "4", "-R"][..], "TCP 4 streams b->a"),
    ] {
        match iperf_ns(&mut o.lab, &a, &b, &dst, extra, SECS, &log) {
            Ok(mbps) => f[fig] = Some(mbps),
            Err(e) => errors.push(format!("{what}: {e:#}")),
        }
    }
    let _ = write!(
        detail,
        ", TCP 1x {} / {}, 4x {} / {} Mbit/s",
        fmt(f[TCP1_AB], 0),
        fmt(f[TCP1_BA], 0),
        fmt(f[TCP4_AB], 0),
        fmt(f[TCP4_BA], 0)
    );

    // UDP: the received rate from the client, the loss from the server's
    // own summary (its log, one per run).
    let udp_log = format!("iperf3-{name}-udp-{round}");
    match iperf_ns(
        &mut o.lab,
        &a,
        &b,
        &dst,
        &["-u", "-b", "1G"],
        SECS,
        &udp_log,
    ) {
        Ok(mbps) => {
            f[UDP_RX] = Some(mbps);
            match udp_loss(&o.lab.log(&udp_log)) {
                Some(loss) => f[UDP_LOSS] = Some(loss),
                None => errors.push("UDP: no loss figure in the server's summary".into()),
            }
            let _ = write!(
                detail,
                ", UDP {mbps:.0} Mbit/s ({}% lost)",
                fmt(f[UDP_LOSS], 2)
            );
        }
        Err(e) => errors.push(format!("UDP 1 Gbit/s: {e:#}")),
    }
    if !up.pids.is_empty() {
        let _ = write!(
            detail,
            ", {} CPU s/Gbit, {} MiB",
            fmt(f[CPU], 3),
            fmt(f[RSS], 1)
        );
    }
    let r = if errors.is_empty() {
        Ok(detail)
    } else {
        Err(anyhow!("{} ({detail})", errors.join("; ")))
    };
    (f, r)
}

/// Starts `perf record` (call graphs, 999 Hz) on `pids` for `secs`
/// seconds (most of one iperf3 run), writing `name` in `dir`.
pub(crate) fn start_profile(
    dir: &Path,
    name: &str,
    pids: &[u32],
    secs: u32,
) -> anyhow::Result<(std::process::Child, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(name);
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(&file)
        .args(["-p", &pids.join(",")])
        .args(["--", "sleep", &secs.max(1).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting perf (Debian: linux-perf)")?;
    Ok((child, file))
}

/// Waits for the profile of [`start_profile`]; the file it wrote.
pub(crate) fn finish_profile(
    started: anyhow::Result<(std::process::Child, PathBuf)>,
) -> anyhow::Result<String> {
    let (child, file) = started?;
    let out = child.wait_with_output().context("waiting for perf")?;
    ensure!(
        out.status.success(),
        "perf record failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(file.display().to_string())
}

/// The loss of iperf3's UDP receiver summary, "... 12/3456 (0.35%)
/// receiver", from the counts (the percentage is printed with two
/// significant digits only).
fn udp_loss(server_log: &str) -> Option<f64> {
    let line = server_log
        .lines()
        .rev()
        .find(|l| l.contains("%)") && l.contains("receiver"))?;
    let (lost, total) = line
        .split_whitespace()
        .filter_map(|t| t.split_once('/'))
        .find_map(|(l, t)| Some((l.parse::<u64>().ok()?, t.parse::<u64>().ok()?)))?;
    (total > 0).then(|| lost as f64 * 100.0 / total as f64)
}

/// utime + stime of all `pids` (clock ticks); None if any is gone.
fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14 and stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        sum += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 && n.is_finite() && d.is_finite() => {
            let r = n / d;
            if r < 0.1 {
                format!("{r:.3}x")
            } else {
                format!("{r:.2}x")
            }
        }
        _ => "-".into(),
    }
}

fn print_table(m: &[Figures]) {
    let col = |s: System| SYSTEMS.iter().position(|x| *x == s).unwrap_or(0);
    println!();
    println!(
        "  {:<36} {:>9} {:>9} {:>9} {:>12} {:>9} {:>8} {:>9}",
        "median of 3 rounds",
        "veth",
        "cyphonic",
        "nebula",
        "wireguard-go",
        "boringtun",
        "cy/veth",
        "cy/best"
    );
    for (f, (label, better, decimals)) in ROWS.iter().enumerate() {
        let v = |s: System| m[col(s)][f];
        let peers = SYSTEMS
            .iter()
            .filter(|s| s.is_peer())
            .filter_map(|s| v(*s))
            .filter(|x| x.is_finite());
        let best = match better {
            Better::High => peers.reduce(f64::max),
            Better::Low => peers.reduce(f64::min),
        };
        println!(
            "  {:<36} {:>9} {:>9} {:>9} {:>12} {:>9} {:>8} {:>9}",
            label,
            fmt(v(System::Veth), *decimals),
            fmt(v(System::Cyphonic), *decimals),
            fmt(v(System::Nebula), *decimals),
            fmt(v(System::WireguardGo), *decimals),
            fmt(v(System::Boringtun), *decimals),
            ratio(v(System::Cyphonic), v(System::Veth)),
            ratio(v(System::Cyphonic), best),
        );
    }
    for note in [
        "(*) cyphonic: from the DNS query for a peer not yet connected (both nodes registered)",
        "    to the first reply; peers: from starting both daemons (b's first; for the",
        "    WireGuards, with `wg set` and `ip` on both ends) to the first reply of a ping every",
        "    2 ms. \"daemon start\": that for every system (cyphonic: both node daemons, the cloud",
        "    already up, registering and the lookup included). Measured once, not per round.",
        "CPU: utime+stime of both ends' daemons over the single-stream a->b run, per Gbit carried;",
        "RSS: the larger end's VmRSS, sampled every 100 ms during that run.",
        "cy/best: cyphonic over the best peer (highest rate, lowest otherwise); veth: the bare",
        "underlay (veth + bridge), measured in every round too.",
    ] {
        println!("  {note}");
    }
    println!();
}

/// The round trips `ping` printed, one per reply (`time=0.123 ms`).
fn ping_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}
