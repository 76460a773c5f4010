//! `cyphonic lab abuse`: the cloud and three nodes under attack from a
//! namespace of their network.
//!
//! ```text
//! internet (sw) -- cloud (AS, NMS, TRS), dns, n1, n2, fresh, attacker
//!                  (IPv4; the cloud and the attacker also on 2001:db8::/64,
//!                   2001:db8:ab::/48 routed to the attacker, which sends
//!                   from any address in it)
//! ```
//!
//! While n1 and n2 talk, the attacker, at once:
//!
//! - (a) replays n1's Registration, captured on the cloud's link when n1
//!   registered, to the NMS;
//! - (b) floods forged Tunnel Requests at n2's tunnel port, 10 000/s;
//! - (c) floods Relay Binds at the TRS from 256 IPv6 /64s of its /48;
//! - (d) sends signaling packets of random session IDs to the NMS;
//! - (e) guesses n2's enrollment password at the AS.
//!
//! Meanwhile the device `fresh` enrolls, starts its daemon, logs in,
//! registers, gets a route to n1 and a first ping answer: the scenario
//! measures how long that takes. Per attack it counts, with nftables
//! counters in the attacker's namespace, the bytes the attacker sent and
//! the bytes that came back to its addresses (the addresses it claimed):
//! each ratio must be at most 3. The cloud's and the nodes' resident
//! memory is printed before and after and must stay bounded.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use rand::Rng;

use super::overlay::{password, rss_kib, Overlay, Report, Underlay};
use crate::wait_until;

/// Password guesses the attacker makes at most.
const MAX_GUESSES: u32 = 40;
/// How long the floods run.
const ATTACK: Duration = Duration::from_secs(16);
/// Forged Tunnel Requests per second at n2.
const TUNNEL_REQUESTS_PER_SEC: u64 = 10_000;
/// The fresh node must be talking within this, attacks or not.
const CONNECT_WITHIN: Duration = Duration::from_secs(1);
/// QUIC's bound: nothing unauthenticated gets more than 3x what it sent.
const MAX_AMPLIFICATION: f64 = 3.0;
/// Growth of a process's resident memory over the second half of the
/// attack that still counts as bounded.
const RSS_GROWTH_KIB: u64 = 32 * 1024;

/// The attacker's source ports, one per attack, and its IPv6 prefix.
const PORT_REPLAY: u16 = 40001;
const PORT_TUNNEL: u16 = 40002;
const PORT_SESSIONS: u16 = 40004;
const SPOOF_PREFIX: &str = "2001:db8:ab::/48";

const NAMES: &[&str] = &["n1", "n2", "fresh", "attacker"];
const N1: usize = 0;
const N2: usize = 1;
const FRESH: usize = 2;
const ATTACKER: usize = 3;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("abuse: a fresh node connects while an attacker floods the cloud and a node");
    if let Err(e) = scenario(bin, &mut report) {
        report.check("scenario", Err(e));
    }
    println!("abuse: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

fn scenario(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut o = Overlay::build("abuse", bin, Underlay::V4, NAMES)?;
    let attacker_ns = o.nodes[ATTACKER].ns.clone();
    // IPv6 between the attacker and the cloud, and the attacker's /48.
    o.lab
        .sh(&o.cloud_ns, "ip addr add 2001:db8::1/64 dev eth0 nodad")?;
    o.lab.sh(
        &attacker_ns,
        &format!("ip addr add 2001:db8::66/64 dev eth0 nodad && ip -6 route add local {SPOOF_PREFIX} dev lo"),
    )?;
    o.lab.sh(
        &o.cloud_ns,
        &format!("ip -6 route add {SPOOF_PREFIX} via 2001:db8::66"),
    )?;
    counters_setup(&o, &attacker_ns)?;

    o.start_cloud()?;
    for i in [N1, N2] {
        o.enroll(i)?;
    }
    // n1's Registration, as it crossed the cloud's link.
    let mut capture = o.lab.capture(&o.cloud_ns, "eth0")?;
    for i in [N1, N2] {
        o.start_node(i)?;
    }
    for i in [N1, N2] {
        o.wait_registered(i, Duration::from_secs(20))
            .with_context(|| format!("log:\n{}", o.node_log(i)))?;
    }
    let pcap = capture.stop()?;
    let n1_ip = o.nodes[N1].underlay;
    let registration =
        first_signaling_from(&pcap, n1_ip).context("no signaling packet of n1's in the capture")?;
    report.check(
        "n1 and n2 registered; n1's Registration recorded",
        Ok(format!("{} bytes", registration.len())),
    );
    let n2_vip = ping_peer(&o, N1, N2, Duration::from_secs(15))?;
    report.check("n1 pings n2 over the overlay", Ok(n2_vip.clone()));

    let rss_before = rss_all(&o);
    let cloud_v4 = SocketAddr::new(o.cloud_addr, 4502);
    let trs_v6: SocketAddr = "[2001:db8::1]:4503".parse()?;
    let n2_tunnel = SocketAddr::new(o.nodes[N2].underlay, 4501);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut floods: Vec<(&str, JoinHandle<anyhow::Result<u64>>)> = vec![
        (
            "(a) recorded Registration replayed",
            flood(
                &attacker_ns,
                &stop,
                move |rng, socks| {
                    let _ = rng;
                    socks[0].send_to(&registration, cloud_v4)?;
                    Ok(())
                },
                2_000,
                Source::V4(PORT_REPLAY),
            ),
        ),
        (
            "(b) forged Tunnel Requests at n2",
            flood(
                &attacker_ns,
                &stop,
                {
                    // One random body, then per packet a fresh sender
                    // index, route id and ephemeral key (what a node looks
                    // at before the mac): cheap enough for the full rate.
                    let mut p = Vec::new();
                    move |rng, socks| {
                        if p.is_empty() {
                            p = vec![0u8; 900];
                            rng.fill(&mut p[4..]);
                            p[0] = 2;
                        }
                        rng.fill(&mut p[4..48]);
                        socks[0].send_to(&p, n2_tunnel)?;
                        Ok(())
                    }
                },
                TUNNEL_REQUESTS_PER_SEC,
                Source::V4(PORT_TUNNEL),
            ),
        ),
        (
            "(c) Relay Binds from 256 IPv6 /64s",
            flood(
                &attacker_ns,
                &stop,
                move |rng, socks| {
                    let mut p = [0u8; 48];
                    p[0] = 6;
                    rng.fill(&mut p[4..12]);
                    let expires = unix_now() + 3600;
                    p[16..24].copy_from_slice(&expires.to_be_bytes());
                    p[24..32].copy_from_slice(&1u64.to_be_bytes());
                    rng.fill(&mut p[32..]);
                    let s = &socks[rng.gen_range(0..socks.len())];
                    s.send_to(&p, trs_v6)?;
                    Ok(())
                },
                5_000,
                Source::Spoofed(256),
            ),
        ),
        (
            "(d) random session IDs at the NMS",
            flood(
                &attacker_ns,
                &stop,
                move |rng, socks| {
                    let mut p = [0u8; 64];
                    rng.fill(&mut p[..]);
                    p[0] = 1;
                    p[1] = 1;
                    p[12..16].fill(0);
                    socks[0].send_to(&p, cloud_v4)?;
                    Ok(())
                },
                5_000,
                Source::V4(PORT_SESSIONS),
            ),
        ),
    ];
    let guesses = guess_passwords(&o, &attacker_ns, &stop);

    // The fresh node, from nothing, while all that goes on.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let enrolled = enroll_once(&o, FRESH).map(|()| t0.elapsed());
    let t1 = Instant::now();
    let connect = enrolled.and_then(|enroll| {
        o.start_node(FRESH)?;
        let reply = first_ping(&o, FRESH, &o.fqdn(N1), Duration::from_secs(10))?;
        Ok((enroll, t1.elapsed(), reply))
    });
    report.check(
        "a fresh node connects (daemon start to first ping reply) in under a second during the attacks",
        connect.and_then(|(enroll, up, rtt)| {
            println!(
                "  fresh: enrolled in {:.0} ms; daemon start -> login -> registered -> route -> first ping reply in {:.0} ms (ping {rtt})",
                enroll.as_secs_f64() * 1000.0,
                up.as_secs_f64() * 1000.0
            );
            ensure!(up <= CONNECT_WITHIN, "took {up:?}");
            Ok(format!(
                "{:.0} ms (+ {:.0} ms enrolling)",
                up.as_secs_f64() * 1000.0,
                enroll.as_secs_f64() * 1000.0
            ))
        }),
    );
    report.check(
        "n1 still pings n2",
        (|| {
            let out = o.sh(N1, &format!("ping -c3 -i0.2 -W1 {n2_vip}"))?;
            ensure!(out.contains(" 0% packet loss"), "{out}");
            Ok("3/3".into())
        })(),
    );

    // Memory halfway and at the end of the attack: bounded means it has
    // stopped growing (allocators keep what they had; a table or queue
    // without a bound would keep growing with the packets).
    std::thread::sleep((ATTACK / 2).saturating_sub(started.elapsed()));
    let rss_mid = rss_all(&o);
    std::thread::sleep(ATTACK.saturating_sub(started.elapsed()));
    let rss_end = rss_all(&o);
    stop.store(true, Ordering::Relaxed);
    let flooded = started.elapsed().as_secs_f64();
    let mut sent = Vec::new();
    for (what, h) in floods.drain(..) {
        let n = h
            .join()
            .map_err(|_| anyhow::anyhow!("{what}: thread panicked"))??;
        sent.push((what, n));
    }
    // Late answers, if any, have a moment to arrive.
    std::thread::sleep(Duration::from_millis(300));
    let counters = counters_read(&o, &attacker_ns)?;
    for ((what, packets), key) in sent.iter().zip(["a", "b", "c", "d"]) {
        let (out_b, in_b) = (
            counters.get(&format!("{key}_out")).copied().unwrap_or(0),
            counters.get(&format!("{key}_in")).copied().unwrap_or(0),
        );
        let ratio = in_b as f64 / out_b.max(1) as f64;
        report.check(
            &format!("{what}: at most 3x back"),
            (|| {
                ensure!(out_b > 0, "nothing was sent");
                ensure!(ratio <= MAX_AMPLIFICATION, "{in_b} bytes back for {out_b}");
                Ok(format!(
                    "{packets} packets ({:.0}/s), {out_b} bytes sent, {in_b} bytes back ({ratio:.3}x)",
                    *packets as f64 / flooded
                ))
            })(),
        );
    }
    report.check(
        "(e) password guesses are refused, then locked out",
        guesses
            .join()
            .map_err(|_| anyhow::anyhow!("guesser panicked"))
            .and_then(|r| r)
            .and_then(|(tries, locked)| {
                ensure!(tries > 0, "no guess made");
                ensure!(locked > 0, "{tries} guesses, none locked out");
                Ok(format!(
                    "{tries} guesses over TLS (TCP: handshake-bound), {locked} refused as locked out"
                ))
            }),
    );

    let mut lines = Vec::new();
    let mut grown = Vec::new();
    for (name, before) in &rss_before {
        let at = |v: &[(String, u64)]| v.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
        let (Some(mid), Some(end)) = (at(&rss_mid), at(&rss_end)) else {
            continue;
        };
        lines.push(format!("{name} {before} -> {mid} -> {end} KiB"));
        if end.saturating_sub(mid) > RSS_GROWTH_KIB {
            grown.push(name.clone());
        }
    }
    println!(
        "  memory (RSS before, halfway through and at the end of the attack): {}",
        lines.join(", ")
    );
    report.check(
        "memory of the cloud and the nodes stops growing under the attack",
        if grown.is_empty() {
            Ok(lines.join(", "))
        } else {
            Err(anyhow::anyhow!(
                "grew by more than {} MiB in the second half: {grown:?}; {}",
                RSS_GROWTH_KIB / 1024,
                lines.join(", ")
            ))
        },
    );
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a flood sends from.
#[derive(Clone, Copy)]
enum Source {
    /// The attacker's own IPv4 address, this port.
    V4(u16),
    /// This many addresses, one per /64 of the attacker's /48.
    Spoofed(u16),
}

/// Runs `send` in `ns`, `rate` times a second, until `stop`; returns the
/// packets sent.
fn flood(
    ns: &str,
    stop: &Arc<AtomicBool>,
    mut send: impl FnMut(&mut rand::rngs::ThreadRng, &[UdpSocket]) -> anyhow::Result<()>
        + Send
        + 'static,
    rate: u64,
    source: Source,
) -> JoinHandle<anyhow::Result<u64>> {
    let (ns, stop) = (ns.to_owned(), stop.clone());
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        let socks = match source {
            Source::V4(port) => vec![UdpSocket::bind(("0.0.0.0", port))?],
            Source::Spoofed(n) => (0..n)
                .map(|i| {
                    let ip = Ipv6Addr::new(0x2001, 0xdb8, 0xab, i, 0, 0, 0, 1);
                    freebind_v6(SocketAddr::new(IpAddr::V6(ip), 4501))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        for s in &socks {
            s.set_nonblocking(true)?;
        }
        let mut rng = rand::thread_rng();
        let start = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // A full socket buffer is the attacker's loss, not an error.
            if send(&mut rng, &socks).is_ok() {
                sent += 1;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(sent)
    })
}

/// Moves this thread into network namespace `ns` (only this thread: a
/// namespace is per task).
fn enter_netns(ns: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("open namespace {ns}"))?;
    // SAFETY: setns with a namespace fd we hold open; it changes only the
    // calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns {ns}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// A UDP socket bound to `addr`, which need not be configured on any
/// interface (IPV6_FREEBIND; the /48's local route makes it receive too).
fn freebind_v6(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    const IPV6_FREEBIND: libc::c_int = 78;
    let IpAddr::V6(ip) = addr.ip() else {
        bail!("{addr} is not IPv6");
    };
    // SAFETY: plain socket calls on a descriptor we own; on error it is
    // closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sock = UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            IPV6_FREEBIND,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = addr.port().to_be();
        sa.sin6_addr.s6_addr = ip.octets();
        let rc = libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        );
        ensure!(rc == 0, "bind {addr}: {}", std::io::Error::last_os_error());
        Ok(sock)
    }
}

/// nftables counters in the attacker's namespace: bytes out of and back
/// into each attack's addresses (IP lengths both ways).
fn counters_setup(o: &Overlay, ns: &str) -> anyhow::Result<()> {
    let rules = format!(
        "table inet abuse {{
  counter a_out {{}}
  counter a_in {{}}
  counter b_out {{}}
  counter b_in {{}}
  counter c_out {{}}
  counter c_in {{}}
  counter d_out {{}}
  counter d_in {{}}
  chain out {{
    type filter hook output priority 0;
    udp sport {PORT_REPLAY} counter name a_out
    udp sport {PORT_TUNNEL} counter name b_out
    ip6 saddr {SPOOF_PREFIX} counter name c_out
    udp sport {PORT_SESSIONS} counter name d_out
  }}
  chain in {{
    type filter hook input priority 0;
    udp dport {PORT_REPLAY} counter name a_in
    udp dport {PORT_TUNNEL} counter name b_in
    ip6 daddr {SPOOF_PREFIX} counter name c_in
    udp dport {PORT_SESSIONS} counter name d_in
  }}
}}
"
    );
    let path = o.lab.dir().join("abuse.nft");
    std::fs::write(&path, rules)?;
    o.lab.sh(ns, &format!("nft -f {}", path.display()))?;
    Ok(())
}

/// The byte counts of the counters, by name.
fn counters_read(o: &Overlay, ns: &str) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let out = o.lab.sh(ns, "nft list counters table inet abuse")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = std::collections::BTreeMap::new();
    let mut name = None;
    for word in text.split_whitespace().collect::<Vec<_>>().windows(2) {
        match word {
            ["counter", n] => name = Some(n.to_string()),
            ["bytes", b] => {
                if let (Some(n), Ok(b)) = (name.take(), b.parse()) {
                    map.insert(n, b);
                }
            }
            _ => {}
        }
    }
    ensure!(map.len() == 8, "nft printed {text}");
    Ok(map)
}

/// Guesses n2's enrollment password from the attacker until `stop`:
/// (guesses made, guesses refused as locked out).
fn guess_passwords(
    o: &Overlay,
    ns: &str,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<(u32, u32)>> {
    let (bin, ns, stop) = (o.bin(), ns.to_owned(), stop.clone());
    let root = o.cloud_dir.join("root.pem").to_string_lossy().to_string();
    let cloud = o.cloud_addr.to_string();
    let state = o
        .lab
        .dir()
        .join("attacker-state")
        .to_string_lossy()
        .to_string();
    let right = password("n2");
    std::thread::spawn(move || {
        let (mut tries, mut locked) = (0, 0);
        while !stop.load(Ordering::Relaxed) && tries < MAX_GUESSES {
            let guess = format!("guess-{tries}");
            ensure!(guess != right, "guessed it");
            let out = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, &bin, "node", "enroll", "--cloud", &cloud,
                ])
                .args(["--device", "n2", "--password", &guess, "--ca", &root])
                .args(["--state-dir", &state])
                .output()?;
            ensure!(!out.status.success(), "a wrong password enrolled");
            tries += 1;
            let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
            if err.contains("locked") || err.contains("too many") {
                locked += 1;
            }
        }
        Ok((tries, locked))
    })
}

/// `cyphonic node enroll` for node `i`, once: a retry could not succeed
/// (the password is spent when the certificate is recorded).
fn enroll_once(o: &Overlay, i: usize) -> anyhow::Result<()> {
    let n = &o.nodes[i];
    let root = o.cloud_dir.join("root.pem").to_string_lossy().to_string();
    let state = n.state_dir.to_string_lossy().to_string();
    let out = o.lab.exec(
        &n.ns,
        &[
            &o.bin(),
            "node",
            "enroll",
            "--cloud",
            &o.cloud_addr.to_string(),
            "--device",
            &n.name,
            "--password",
            &password(&n.name),
            "--ca",
            &root,
            "--state-dir",
            &state,
        ],
    )?;
    ensure!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Resident memory (KiB) of the cloud and each running node.
fn rss_all(o: &Overlay) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Some(kib) = o.cloud_pid.and_then(rss_kib) {
        out.push(("cloud".to_owned(), kib));
    }
    for (i, n) in o.nodes.iter().enumerate() {
        if let Some(kib) = o.node_rss_kib(i) {
            out.push((n.name.clone(), kib));
        }
    }
    out
}

/// Node `from` pings node `to` by name until a reply (a route is made on
/// the way); returns `to`'s VIPv4.
fn ping_peer(o: &Overlay, from: usize, to: usize, timeout: Duration) -> anyhow::Result<String> {
    let vip = o.status(to)?["vip4"]
        .as_str()
        .context("no VIPv4")?
        .to_owned();
    first_ping(o, from, &o.fqdn(to), timeout)?;
    Ok(vip)
}

/// Pings `name` from node `from` until the first reply; returns its time.
fn first_ping(o: &Overlay, from: usize, name: &str, timeout: Duration) -> anyhow::Result<String> {
    wait_until(&format!("a ping reply from {name}"), timeout, || {
        let out = o.lab.sh(&o.nodes[from].ns, &format!("ping -c1 -W1 {name}"));
        let text = match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout).to_string(),
            Err(_) => return Ok(None),
        };
        Ok(text
            .lines()
            .find(|l| l.contains("bytes from"))
            .and_then(|l| l.split("time=").nth(1))
            .map(|t| t.trim().to_owned()))
    })
}

/// The UDP payload of the first signaling packet (type 1) from `src` to
/// the NMS port in a pcap of an Ethernet link.
fn first_signaling_from(pcap: &[u8], src: IpAddr) -> Option<Vec<u8>> {
    let IpAddr::V4(src) = src else {
        return None;
    };
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().ok()?) as usize;
        let frame = pcap.get(at + 16..at + 16 + len)?;
        at += 16 + len;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip[12..16] != src.octets() || ip.len() < ihl + 8 {
            continue;
        }
        let udp = &ip[ihl..];
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        let payload = &udp[8..];
        if dport == 4502 && payload.first() == Some(&1) {
            return Some(payload.to_vec());
        }
    }
    None
}
