//! `cyphonic lab adapter`: general nodes behind adapters, with clients
//! nobody here wrote. A cloud, a node (n1) and two adapters (a1, a2) on
//! an IPv4 underlay; behind a1 a bridged LAN with gn1 (dual stack:
//! `dhclient -4` and stateful `dhclient -6`) and gn2 (IPv4 only,
//! `dhcpcd`, added to the cloud while a1 runs), behind a2 gn3 (IPv6 only,
//! `dhclient -6`). Each general node gets its VIPs, resolves peers through
//! the adapter, and reaches n1 and the others by name (ping, curl,
//! iperf3); n1 reaches them by their FQDNs; a stranger's MAC gets nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use super::overlay::{
    cloud_cli, cloud_config, iperf_ns, parse_ping, set_config_keys, Overlay, Report, Underlay,
    DOMAIN,
};
use crate::wait_until;

/// The general nodes: name, adapter (index in the overlay), MAC.
pub const GENERAL: &[(&str, usize, &str)] = &[
    ("gn1", 1, "02:00:5e:10:01:01"),
    ("gn2", 1, "02:00:5e:10:01:02"),
    ("gn3", 2, "02:00:5e:10:02:01"),
];
const STRANGER_MAC: &str = "02:00:5e:10:01:66";

/// The overlay with its adapters and their LANs, general nodes configured
/// by their own DHCP clients.
pub struct AdapterLab {
    pub o: Overlay,
    /// Each general node's VIPs as its clients configured them.
    pub gn_vip4: Vec<Option<String>>,
    pub gn_vip6: Vec<Option<String>>,
    /// gn2's dhcpcd, to signal.
    pub gn2_dhcpcd: Option<u32>,
}

/// Gives a dhcpcd its own run and lease directories (its mount namespace
/// is private to its `ip netns exec`).
pub const DHCPCD_PRIVATE: &str = "mkdir -p /run/dhcpcd /var/lib/dhcpcd && mount -t tmpfs tmpfs /run/dhcpcd && mount -t tmpfs tmpfs /var/lib/dhcpcd";

impl AdapterLab {
    pub fn fqdn(name: &str) -> String {
        format!("{name}.{DOMAIN}")
    }

    /// Runs `cmd` in a general node's (or any) namespace; its stdout.
    pub fn sh(&self, ns: &str, cmd: &str) -> anyhow::Result<String> {
        let out = self.o.lab.sh(ns, cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// The adapter's status entry for general node `name`.
    pub fn general_status(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let (_, adapter, _) = GENERAL
            .iter()
            .find(|(n, _, _)| *n == name)
            .with_context(|| format!("no general node {name}"))?;
        let s = self.o.status(*adapter)?;
        s["general_nodes"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["fqdn"] == Self::fqdn(name)).cloned())
            .with_context(|| format!("{name} is not in the adapter's status"))
    }
}

/// Builds and starts everything, up to general nodes with addresses and
/// registered identities, plus `extra` nodes (indexes 3..) beside n1, with
/// `cloud_keys` set in cloud.toml. Checks along the way go into `report`.
pub fn bring_up(
    bin: &Path,
    scenario: &str,
    extra: &[&str],
    cloud_keys: &[(&str, String)],
    report: &mut Report,
) -> anyhow::Result<AdapterLab> {
    let mut names = vec!["n1", "a1", "a2"];
    names.extend_from_slice(extra);
    let mut o = Overlay::build(scenario, bin, Underlay::V4, &names)?;
    // a1's LAN: a bridge with a1, gn1, gn2 and a stranger; a2's: gn3 alone.
    let lab = &mut o.lab;
    for ns in ["lan1", "gn1", "gn2", "gn3", "stranger"] {
        lab.add_ns(ns)?;
    }
    lab.link("a1", "lan0", &[], "lan1", "p0", &[])?;
    for (i, host) in ["gn1", "gn2", "stranger"].iter().enumerate() {
        lab.link(host, "eth0", &[], "lan1", &format!("p{}", i + 1), &[])?;
    }
    lab.sh(
        "lan1",
        "ip link add br0 type bridge mcast_snooping 0 && ip link set br0 up && for p in p0 p1 p2 p3; do ip link set $p master br0; done",
    )?;
    lab.link("a2", "lan0", &[], "gn3", "eth0", &[])?;
    for (name, _, mac) in GENERAL {
        set_mac(lab, name, mac)?;
    }
    set_mac(lab, "stranger", STRANGER_MAC)?;
    for a in ["a1", "a2"] {
        // The LAN interface carries no IP stack of the adapter host's own.
        lab.sh(a, "sysctl -qw net.ipv6.conf.lan0.disable_ipv6=1")?;
    }
    // gn3 is IPv6-only: no IPv4 client runs there, and nothing else gives
    // it an IPv4 address.

    set_config_keys(&o.cloud_dir.join("cloud.toml"), cloud_keys)?;
    o.start_cloud()?;
    let cfg = cloud_config(&o);
    // gn1 and gn3 are known before the adapters start; gn2 is added to a
    // running adapter below.
    for (name, adapter, mac) in GENERAL.iter().filter(|(n, _, _)| *n != "gn2") {
        add_general(&o, &cfg, name, *adapter, mac)?;
    }
    for i in 0..names.len() {
        o.enroll(i)?;
    }
    for i in [1, 2] {
        o.nodes[i].adapter_lan = Some("lan0".into());
    }
    for i in 0..names.len() {
        o.start_node(i)?;
    }
    let registered = (0..names.len())
        .map(|i| o.wait_registered(i, Duration::from_secs(30)).map(drop))
        .collect::<anyhow::Result<Vec<()>>>();
    report.check(
        &format!("{} register with the cloud", names.join(", ")),
        registered.map(|_| String::new()),
    );

    add_general(&o, &cfg, "gn2", 1, GENERAL[1].2)?;
    report.check(
        "gn2, added to the cloud while a1 runs, reaches a1 without a restart",
        wait_until("a1 to list gn2", Duration::from_secs(20), || {
            let s = o.status(1)?;
            let listed = s["general_nodes"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["fqdn"] == AdapterLab::fqdn("gn2")));
            Ok(listed.then(|| format!("list version {}", s["list_version"])))
        }),
    );

    let mut al = AdapterLab {
        o,
        gn_vip4: vec![None; GENERAL.len()],
        gn_vip6: vec![None; GENERAL.len()],
        gn2_dhcpcd: None,
    };
    configure(&mut al, report)?;
    for (name, _, _) in GENERAL {
        let r = wait_until(
            &format!("{name} to be registered by its adapter"),
            Duration::from_secs(30),
            || {
                let g = al.general_status(name)?;
                Ok((g["state"] == "registered").then_some(()))
            },
        );
        report.check(
            &format!("{name} logs in and registers through its adapter, as itself"),
            r.map(|()| String::new()),
        );
    }
    Ok(al)
}

fn set_mac(lab: &crate::Lab, ns: &str, mac: &str) -> anyhow::Result<()> {
    lab.sh(
        ns,
        &format!("ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up"),
    )?;
    Ok(())
}

fn add_general(
    o: &Overlay,
    cfg: &str,
    name: &str,
    adapter: usize,
    mac: &str,
) -> anyhow::Result<()> {
    let adapter = o.nodes[adapter].name.clone();
    cloud_cli(
        o,
        &[
            "cloud",
            "general-node",
            "add",
            "--config",
            cfg,
            "--adapter",
            &adapter,
            "--mac",
            mac,
            name,
        ],
    )?;
    Ok(())
}

/// The general nodes' own clients configure them: dhclient -4 and -6 on
/// gn1, dhcpcd on gn2, dhclient -6 on gn3; each one's resolver is the
/// DNS server its lease names. A stranger's MAC gets no lease.
fn configure(al: &mut AdapterLab, report: &mut Report) -> anyhow::Result<()> {
    let dir = al.o.lab.dir().to_path_buf();
    let d = |n: &str| dir.join(n).display().to_string();
    // Clients run in the foreground under the lab, which stops them.
    let spawn = |al: &mut AdapterLab, ns: &str, cmd: &str, log: &str| -> anyhow::Result<u32> {
        al.o.lab.spawn(ns, &["sh", "-c", cmd], log, &[])
    };
    spawn(
        al,
        "gn1",
        &format!(
            "exec dhclient -d -4 -pf {} -lf {} eth0",
            d("gn1-4.pid"),
            d("gn1-4.leases")
        ),
        "gn1-dhclient4",
    )?;
    spawn(
        al,
        "gn1",
        &format!(
            "exec dhclient -d -6 -pf {} -lf {} eth0",
            d("gn1-6.pid"),
            d("gn1-6.leases")
        ),
        "gn1-dhclient6",
    )?;
    // dhcpcd keeps its control socket and leases in fixed paths
    // (/run/dhcpcd, /var/lib/dhcpcd) that namespaces share: this one gets
    // its own, in the mount namespace `ip netns exec` made for it, and
    // reports its leases through its hook script (every variable, each
    // time it runs).
    let hook = dir.join("gn2-dhcpcd-hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\nenv >> {}\n", d("gn2-dhcpcd.env")),
    )?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let gn2_dhcpcd = spawn(
        al,
        "gn2",
        &format!(
            "{DHCPCD_PRIVATE} && exec dhcpcd -B -4 --noipv4ll -c {} -f /dev/null eth0",
            hook.display()
        ),
        "gn2-dhcpcd",
    )?;
    al.gn2_dhcpcd = Some(gn2_dhcpcd);
    spawn(
        al,
        "gn3",
        &format!(
            "exec dhclient -d -6 -pf {} -lf {} eth0",
            d("gn3-6.pid"),
            d("gn3-6.leases")
        ),
        "gn3-dhclient6",
    )?;
    spawn(
        al,
        "stranger",
        &format!(
            "exec dhclient -d -4 -pf {} -lf {} eth0",
            d("st-4.pid"),
            d("st-4.leases")
        ),
        "stranger-dhclient4",
    )?;

    for (i, (name, _, _)) in GENERAL.iter().enumerate() {
        let want4 = *name != "gn3";
        let want6 = *name != "gn2";
        let (lab, started) = (&al.o.lab, Instant::now());
        let got = wait_until(
            &format!("{name}'s DHCP clients to configure it"),
            Duration::from_secs(40),
            || {
                let v4 = addr_of(lab, name, "-4", "100.")?;
                let v6 = addr_of(lab, name, "-6", "fd")?;
                let done = (v4.is_some() || !want4) && (v6.is_some() || !want6);
                Ok(done.then_some((v4, v6)))
            },
        );
        let detail = got.as_ref().map(|(v4, v6)| {
            format!(
                "VIPv4 {}, VIPv6 {} ({:.1} s)",
                v4.as_deref().unwrap_or("none"),
                v6.as_deref().unwrap_or("none"),
                started.elapsed().as_secs_f64()
            )
        });
        let what = match *name {
            "gn1" => "gn1 (dhclient -4, dhclient -6) gets its VIPv4 and VIPv6",
            "gn2" => "gn2 (dhcpcd, IPv4 only) gets its VIPv4",
            _ => "gn3 (dhclient -6, IPv6 only) gets its VIPv6 and no IPv4 address",
        };
        let detail = detail.map_err(|e| anyhow::anyhow!("{e:#}"));
        if report.check(what, detail) {
            let (v4, v6) = got.expect("checked");
            al.gn_vip4[i] = v4;
            al.gn_vip6[i] = v6;
        }
    }
    report.check(
        "gn1: rdisc6 sees the adapter's RA with M=1 and O=1, RDNSS = the adapter's VIPv6",
        al.sh("gn1", "rdisc6 -1 -w 3000 eth0").and_then(|ra| {
            let flag = |what: &str| {
                ra.lines()
                    .find(|l| l.contains(what))
                    .is_some_and(|l| l.contains("Yes"))
            };
            ensure!(
                flag("Stateful address conf.") && flag("Stateful other conf."),
                "{ra}"
            );
            let rdnss = ra
                .lines()
                .find(|l| l.contains("Recursive DNS server"))
                .and_then(|l| {
                    l.split(':')
                        .skip(1)
                        .collect::<Vec<_>>()
                        .join(":")
                        .split_whitespace()
                        .next()
                        .map(str::to_owned)
                })
                .context("no RDNSS")?;
            Ok(format!("RDNSS {rdnss}"))
        }),
    );

    // Each general node's resolver: what its lease says (the clients
    // write their lease files after configuring the address: waited for).
    let read_dns = || {
        let lease4 = std::fs::read_to_string(dir.join("gn1-4.leases")).unwrap_or_default();
        let dns4 = lease_value(&lease4, "option domain-name-servers");
        let dns6 = lease_value(
            &std::fs::read_to_string(dir.join("gn3-6.leases")).unwrap_or_default(),
            "option dhcp6.name-servers",
        );
        let dns_gn2 = std::fs::read_to_string(dir.join("gn2-dhcpcd.env"))
            .unwrap_or_default()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("new_domain_name_servers="))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned());
        (dns4, dns6, dns_gn2)
    };
    let _ = wait_until("the lease files", Duration::from_secs(10), || {
        let (a, b, c) = read_dns();
        Ok((a.is_some() && b.is_some() && c.is_some()).then_some(()))
    });
    let (dns4, dns6, dns_gn2) = read_dns();
    report.check(
        "the leases name the adapter as DNS server (dhclient -4, dhcpcd, dhclient -6)",
        (|| {
            let (Some(d4), Some(d6), Some(g2)) = (&dns4, &dns6, &dns_gn2) else {
                bail!(
                    "DNS servers: dhclient -4 {dns4:?}, dhcpcd {dns_gn2:?}, dhclient -6 {dns6:?}"
                );
            };
            Ok(format!("{d4} (gn1), {g2} (gn2), {d6} (gn3)"))
        })(),
    );
    for (ns, server) in [("gn1", &dns4), ("gn2", &dns_gn2), ("gn3", &dns6)] {
        if let Some(server) = server {
            al.o.lab
                .set_resolv_conf(ns, &format!("nameserver {server}\n"))?;
        }
    }
    let lab = &al.o.lab;
    report.check(
        "a stranger's MAC on the LAN gets no lease",
        (|| {
            std::thread::sleep(Duration::from_secs(1));
            let v4 = addr_of(lab, "stranger", "-4", "100.")?;
            ensure!(v4.is_none(), "the stranger got {v4:?}");
            Ok(String::new())
        })(),
    );
    Ok(())
}

/// The first address of family `family` on eth0 that starts with `prefix`.
pub fn addr_of(
    lab: &crate::Lab,
    ns: &str,
    family: &str,
    prefix: &str,
) -> anyhow::Result<Option<String>> {
    let out = lab.sh(
        ns,
        &format!("ip {family} -o addr show dev eth0 scope global"),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet" && *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .filter(|a| a.starts_with(prefix))
        .map(str::to_owned))
}

/// A general node in `ns` joins its LAN as a device does: `dhclient -4`
/// (run by the lab) gets its address, and its resolver becomes the DNS
/// server the lease names. Returns the address.
pub fn join_with_dhclient4(lab: &mut crate::Lab, ns: &str) -> anyhow::Result<String> {
    let leases = lab.dir().join(format!("{ns}-4.leases"));
    let pid = lab.dir().join(format!("{ns}-4.pid"));
    lab.spawn(
        ns,
        &[
            "dhclient",
            "-d",
            "-4",
            "-pf",
            &pid.display().to_string(),
            "-lf",
            &leases.display().to_string(),
            "eth0",
        ],
        &format!("{ns}-dhclient4"),
        &[],
    )?;
    let addr = wait_until(
        &format!("{ns} to get an address"),
        Duration::from_secs(30),
        || addr_of(lab, ns, "-4", "100."),
    )?;
    // dhclient configures the address (dhclient-script) before it writes
    // the lease file.
    let dns = wait_until(
        &format!("{ns}'s lease file to name a DNS server"),
        Duration::from_secs(10),
        || {
            Ok(lease_value(
                &std::fs::read_to_string(&leases).unwrap_or_default(),
                "option domain-name-servers",
            ))
        },
    )?;
    lab.set_resolv_conf(ns, &format!("nameserver {dns}\n"))?;
    Ok(addr)
}

/// `key value;` from a dhclient lease file (the last lease).
fn lease_value(leases: &str, key: &str) -> Option<String> {
    leases
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| {
            v.trim()
                .trim_end_matches(';')
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .filter(|v| !v.is_empty())
}

/// `ping -c3` in `ns`; Ok with replies and RTT when at least two came.
pub fn ping(al: &AdapterLab, ns: &str, args: &str) -> anyhow::Result<String> {
    let out =
        al.o.lab
            .exec(ns, &["sh", "-c", &format!("ping -c3 -W2 {args}")])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (rx, avg) = parse_ping(&text).with_context(|| {
        format!(
            "no ping summary: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    ensure!(rx >= 2, "{rx}/3 replies");
    Ok(format!("{rx}/3 replies, avg {avg:.2} ms"))
}

/// Fetches a page a small HTTP server in `server_ns` serves, with curl in
/// `client_ns`, at `url`.
fn curl(
    al: &mut AdapterLab,
    server_ns: &str,
    client_ns: &str,
    url: &str,
    tag: &str,
) -> anyhow::Result<String> {
    let dir = al.o.lab.dir().join(format!("www-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let marker = format!("cyphonic-adapter-{tag}");
    std::fs::write(dir.join("index.html"), &marker)?;
    let dir_s = dir.display().to_string();
    let pid = al.o.lab.spawn(
        server_ns,
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "::",
            "--directory",
            &dir_s,
        ],
        &format!("http-{tag}"),
        &[],
    )?;
    let lab = &al.o.lab;
    let result = wait_until("the HTTP server to listen", Duration::from_secs(5), || {
        let out = lab.exec(server_ns, &["ss", "-Hltn", "sport = :8080"])?;
        Ok((!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(()))
    })
    .and_then(|()| {
        let out = lab.exec(client_ns, &["curl", "-sS", "-m", "10", "-g", url])?;
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        ensure!(
            body.contains(&marker),
            "curl {url}: {}{}",
            body.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(format!("{} bytes", body.len()))
    });
    let _ = al.o.lab.kill(pid);
    result
}

/// Sends, on the LAN, a burst of DHCPDISCOVERs from random MACs
/// (starvation), a rogue DHCPOFFER for gn1 and a rogue Router
/// Advertisement, from the stranger's port.
const ROGUE: &str = r#"
import random, socket, struct, sys
iface, count, victim = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3].replace(':', ''))
me = bytes.fromhex('02005e100166')
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
def csum(b):
    if len(b) % 2: b += b'\x00'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def udp4(src, dst, sport, dport, payload):
    udp = struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return ip + udp
def bootp(op, mac, yiaddr, options):
    b = struct.pack('!BBBBIHH4s4s4s4s', op, 1, 6, 0, random.getrandbits(32), 0, 0x8000, bytes(4), socket.inet_aton(yiaddr), bytes(4), bytes(4))
    b += mac + bytes(10) + bytes(192) + bytes.fromhex('63825363') + options + b'\xff'
    return b + bytes(max(0, 300 - len(b)))
for _ in range(count):
    mac = bytes([2] + [random.randrange(256) for _ in range(5)])
    s.send(b'\xff' * 6 + mac + b'\x08\x00' + udp4('0.0.0.0', '255.255.255.255', 68, 67, bootp(1, mac, '0.0.0.0', b'\x35\x01\x01')))
offer = b'\x35\x01\x02' + b'\x36\x04' + socket.inet_aton('192.0.2.250') + b'\x01\x04' + socket.inet_aton('255.255.255.0') + b'\x03\x04' + socket.inet_aton('192.0.2.250') + b'\x33\x04' + struct.pack('!I', 3600)
s.send(b'\xff' * 6 + me + b'\x08\x00' + udp4('192.0.2.250', '255.255.255.255', 67, 68, bootp(2, victim, '192.0.2.77', offer)))
src = socket.inet_pton(socket.AF_INET6, 'fe80::5eff:fe10:166')
dst = socket.inet_pton(socket.AF_INET6, 'ff02::1')
pio = struct.pack('!BBBBIII16s', 3, 4, 64, 0xc0, 3600, 3600, 0, socket.inet_pton(socket.AF_INET6, '2001:db8:bad::'))
ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 0, 0, 0) + pio
pseudo = src + dst + struct.pack('!I3xB', len(ra), 58)
ra = ra[:2] + struct.pack('!H', csum(pseudo + ra)) + ra[4:]
ip6 = struct.pack('!IHBB', 0x60000000, len(ra), 58, 255) + src + dst
s.send(bytes.fromhex('333300000001') + me + b'\x86\xdd' + ip6 + ra)
print('sent', count + 2)
"#;

/// The LAN's hygiene, on a1's LAN: a burst of DHCPDISCOVERs from random
/// MACs, a rogue DHCP server's offer and a rogue RA change nothing the
/// adapter gives its general nodes: no lease for a stranger, the known
/// nodes' leases kept, gn2 renews, gn1's traffic flows on.
fn hygiene(al: &AdapterLab, report: &mut Report, n1: &str) {
    let before = al.o.status(1);
    let script = al.o.lab.dir().join("rogue.py");
    let sent = std::fs::write(&script, ROGUE)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            al.sh(
                "stranger",
                &format!("python3 {} eth0 300 {}", script.display(), GENERAL[0].2),
            )
        });
    let result = (|| {
        let before = before?;
        ensure!(sent?.contains("sent 302"), "the rogue frames were not sent");
        let field = |v: &serde_json::Value, k: &str| v["lan_counters"][k].as_u64().unwrap_or(0);
        // The rogue offer and RA, sent after the burst, are ignored (the
        // figures are published every half second); nothing is answered.
        let after = wait_until(
            "a1 to ignore the rogue offer and RA",
            Duration::from_secs(10),
            || {
                let s = al.o.status(1)?;
                Ok((field(&s, "ignored") >= field(&before, "ignored") + 2).then_some(s))
            },
        )?;
        ensure!(
            field(&after, "frames") >= field(&before, "frames") + 302,
            "a1 saw {} frames",
            field(&after, "frames") - field(&before, "frames")
        );
        let replies = field(&after, "dhcp4_replies") - field(&before, "dhcp4_replies");
        ensure!(replies == 0, "{replies} DHCPv4 replies to the burst");
        let leases = |v: &serde_json::Value| {
            v["general_nodes"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .map(|g| {
                            (
                                g["fqdn"].clone(),
                                g["vip4"].clone(),
                                g["lease4_secs"].is_u64(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        ensure!(
            leases(&before) == leases(&after),
            "leases changed: {:?} -> {:?}",
            leases(&before),
            leases(&after)
        );
        // gn2 renews with the adapter, and gets its own address again.
        // SIGUSR1: dhcpcd renews its leases.
        let pid = al.gn2_dhcpcd.context("gn2's dhcpcd is not running")?;
        // SAFETY: kill(2) on a pid the lab started and still tracks.
        let rc = unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
        ensure!(rc == 0, "cannot signal gn2's dhcpcd");
        wait_until("gn2's renewal", Duration::from_secs(15), || {
            let s = al.o.status(1)?;
            Ok((field(&s, "dhcp4_replies") > field(&after, "dhcp4_replies")).then_some(()))
        })?;
        let v4 = addr_of(&al.o.lab, "gn2", "-4", "100.")?;
        ensure!(v4 == al.gn_vip4[1], "gn2 now has {v4:?}");
        ping(al, "gn1", &format!("-4 {n1}"))?;
        Ok(format!(
            "302 frames, no reply; leases kept; gn2 renewed {}",
            v4.unwrap_or_default()
        ))
    })();
    report.check(
        "a DHCP starvation burst, a rogue DHCP offer and a rogue RA change nothing the adapter gives",
        result,
    );
}

/// An adapter's uplink moves (a2 takes a new address) under a 20 Hz ping
/// from gn3: its general node's tunnels follow it. Then an adapter
/// restarts (a1): gn1 keeps its lease and is back in the overlay as soon
/// as it sends.
fn resilience(al: &mut AdapterLab, report: &mut Report, n1: &str) {
    let gn3 = AdapterLab::fqdn("gn3");
    let moved = (|| {
        let pid = al.o.lab.spawn(
            "gn3",
            &["ping", "-6", "-n", "-i", "0.05", "-w", "8", n1],
            "gn3-ping-move",
            &[],
        )?;
        let lab = &mut al.o.lab;
        wait_until("gn3's ping to get replies", Duration::from_secs(5), || {
            Ok(lab
                .log("gn3-ping-move")
                .contains("icmp_seq=5 ")
                .then_some(()))
        })?;
        lab.sh(
            "a2",
            // (Deleting a primary IPv4 address deletes its secondaries: the
            // old one goes first.)
            "ip addr del 192.0.2.13/24 dev eth0 && ip addr add 192.0.2.23/24 dev eth0",
        )?;
        let o = &al.o;
        let endpoint = wait_until(
            "n1 to see gn3 at a2's new address",
            Duration::from_secs(10),
            || {
                let p = o.peer(0, &gn3)?;
                let e = p["endpoint"].as_str().unwrap_or_default().to_owned();
                Ok(e.starts_with("192.0.2.23:").then_some(e))
            },
        )?;
        let lab = &mut al.o.lab;
        wait_until("gn3's ping to end", Duration::from_secs(15), || {
            lab.try_wait(pid)
        })?;
        let log = lab.log("gn3-ping-move");
        let sent = log
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
            .context("no ping summary")?;
        let (received, _) = parse_ping(&log).context("no ping summary")?;
        let last = log
            .lines()
            .rfind(|l| l.contains("icmp_seq="))
            .unwrap_or_default()
            .to_owned();
        let last_seq: u32 = last
            .split("icmp_seq=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        ensure!(
            last_seq + 10 >= sent,
            "replies stopped at icmp_seq {last_seq} of {sent}"
        );
        Ok(format!(
            "{received}/{sent} replies at 20 Hz (outage about {} ms); n1 sees gn3 at {endpoint}",
            (sent - received) * 50
        ))
    })();
    report.check(
        "a2's uplink moves under gn3's ping: gn3's tunnel follows",
        moved,
    );

    let restarted = (|| {
        al.o.stop_node(1)?;
        al.o.start_node(1)?;
        let started = Instant::now();
        al.o.wait_registered(1, Duration::from_secs(20))?;
        wait_until("gn1 to reach n1 again", Duration::from_secs(30), || {
            let out = al.o.lab.exec("gn1", &["ping", "-4", "-c1", "-W1", n1])?;
            Ok(out.status.success().then_some(()))
        })?;
        let back = started.elapsed().as_secs_f64();
        let v4 = addr_of(&al.o.lab, "gn1", "-4", "100.")?;
        ensure!(v4 == al.gn_vip4[0], "gn1 now has {v4:?}");
        // The status shows the LAN side's figures of the last half second.
        wait_until("a1 to show gn1's lease", Duration::from_secs(5), || {
            let g = al.general_status("gn1")?;
            Ok(g["lease4_secs"].as_u64().is_some().then_some(()))
        })?;
        Ok(format!(
            "gn1 keeps {} and reaches n1 {back:.1} s after the restart",
            v4.unwrap_or_default()
        ))
    })();
    report.check(
        "a1 restarts: gn1's lease is kept, and it is back in the overlay",
        restarted,
    );
}

/// The nftables table of a2's web-only firewall.
const WEB_TABLE: &str = "cyweb";

/// a2's host firewall lets out only what `allowed` accepts (and DNS), and
/// in only replies: the uplink of a web-only network.
fn web_firewall(allowed: &str) -> String {
    format!(
        "table inet {WEB_TABLE}\n\
         delete table inet {WEB_TABLE}\n\
         table inet {WEB_TABLE} {{\n  \
           chain output {{\n    \
             type filter hook output priority 0; policy accept;\n    \
             oifname \"eth0\" jump outbound\n  \
           }}\n  \
           chain input {{\n    \
             type filter hook input priority 0; policy accept;\n    \
             iifname \"eth0\" jump inbound\n  \
           }}\n  \
           chain outbound {{\n    {allowed}\n    meta l4proto {{ tcp, udp }} th dport 53 accept\n    counter drop\n  }}\n  \
           chain inbound {{\n    ct state established,related accept\n    counter drop\n  }}\n\
         }}\n"
    )
}

/// a2's uplink becomes a network that lets only the web out (UDP and TCP
/// 443), then only TCP 443: a2 moves its legs to QUIC, then to TLS over
/// TCP, by itself, and gn3 keeps reaching n1 through its tunnel.
fn web_only(al: &AdapterLab, report: &mut Report, n1: &str) {
    for (mode, allowed, transport) in [
        (
            "outbound UDP 443 and TCP 443 only",
            "udp dport 443 accept\n    tcp dport 443 accept",
            "quic",
        ),
        ("outbound TCP 443 only", "tcp dport 443 accept", "tcp"),
    ] {
        let r = (|| {
            al.o.lab.sh(
                "a2",
                &format!("nft -f - <<'EOF'\n{}\nEOF", web_firewall(allowed)),
            )?;
            let started = Instant::now();
            wait_until(
                &format!("a2's signaling to move to {transport}"),
                Duration::from_secs(60),
                || {
                    let s = al.o.status(2)?;
                    Ok((s["cloud"]["transport"] == transport).then_some(()))
                },
            )?;
            let moved = started.elapsed().as_secs_f64();
            let peer = wait_until(
                &format!("gn3's tunnel to n1 over {transport}"),
                Duration::from_secs(30),
                || {
                    let out = al.o.lab.exec("gn3", &["ping", "-6", "-c1", "-W1", n1])?;
                    if !out.status.success() {
                        return Ok(None);
                    }
                    let g = al.general_status("gn3")?;
                    Ok(g["peers"]
                        .as_array()
                        .and_then(|p| p.iter().find(|p| p["fqdn"] == n1).cloned())
                        .filter(|p| p["transport"] == transport))
                },
            )?;
            Ok(format!(
                "a2 on {transport} {moved:.1} s after the firewall; gn3 -> n1 {} over {}",
                peer["path"].as_str().unwrap_or("?"),
                peer["transport"].as_str().unwrap_or("?")
            ))
        })();
        report.check(
            &format!("a2's uplink lets {mode}: gn3 reaches n1 over {transport}"),
            r,
        );
    }
    let _ =
        al.o.lab
            .sh("a2", &format!("nft delete table inet {WEB_TABLE}"));
}

/// A throughput figure that shows data flowed.
pub fn mbits(m: f64) -> anyhow::Result<String> {
    ensure!(m >= 1.0, "only {m:.2} Mbit/s");
    Ok(format!("{m:.0} Mbit/s"))
}

/// The adapter lab's certificate lifetime: renewed at two thirds, 80 s.
const CERT_SECS: u64 = 120;

/// Each adapter renewed its general nodes' certificates (and they still
/// reach n1), as it renews its own.
fn renewals(al: &AdapterLab, report: &mut Report, n1: &str) {
    for (name, _, _) in GENERAL {
        let r = wait_until(
            &format!("{name}'s certificate to be renewed"),
            Duration::from_secs(CERT_SECS),
            || {
                let g = al.general_status(name)?;
                let renewed = g["cert_renewals"].as_u64().unwrap_or(0) >= 1;
                Ok((renewed && g["state"] == "registered").then_some(g))
            },
        )
        .and_then(|g| {
            let family = if *name == "gn2" { "-4" } else { "-6" };
            let out = ping(al, name, &format!("{family} {n1}"))?;
            Ok(format!(
                "{} renewal(s), valid until {}; {out}",
                g["cert_renewals"], g["cert_not_after"]
            ))
        });
        report.check(
            &format!("{name}'s certificate renewed by its adapter, and {name} still reaches n1"),
            r,
        );
    }
    for i in [1, 2] {
        let r = al.o.status(i).and_then(|s| {
            let n = s["cert_renewals"].as_u64().unwrap_or(0);
            ensure!(n >= 1, "no renewal of its own certificate: {s}");
            Ok(format!("{n} renewal(s)"))
        });
        report.check(
            &format!("{} renewed its own certificate", al.o.nodes[i].name),
            r,
        );
    }
}

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let mut report = Report::default();
    println!("adapter: a cloud, a node (n1) and two adapters; behind them general nodes");
    println!("configured by dhclient, dhcpcd and rdisc6, reaching the overlay by name\n");
    // Certificates of two minutes: every node, adapter and general node
    // renews its own (the adapters their general nodes') while the
    // checks run.
    let keys = [("cert_validity_secs", CERT_SECS.to_string())];
    let mut al = bring_up(bin, "adapter", &[], &keys, &mut report)?;
    let n1 = al.o.fqdn(0);
    let s = al.o.status(0)?;
    let (n1_v4, n1_v6) = (
        s["vip4"].as_str().unwrap_or_default().to_owned(),
        s["vip6"].as_str().unwrap_or_default().to_owned(),
    );
    let (gn1, gn2, gn3) = (
        AdapterLab::fqdn("gn1"),
        AdapterLab::fqdn("gn2"),
        AdapterLab::fqdn("gn3"),
    );

    report.check(
        &format!("gn1: getent ahosts {n1} gives both of n1's VIPs (through a1's resolver)"),
        al.sh("gn1", &format!("getent ahosts {n1}"))
            .and_then(|out| {
                ensure!(out.contains(&n1_v4) && out.contains(&n1_v6), "{out}");
                Ok(format!("{n1_v4}, {n1_v6}"))
            }),
    );
    report.check(
        "gn1: names outside the overlay are forwarded to a1's resolvers",
        al.sh(
            "gn1",
            &format!("getent hosts {}", super::overlay::GENERAL_NAME),
        )
        .and_then(|out| {
            ensure!(out.contains(super::overlay::GENERAL_ADDR), "{out}");
            Ok(out.trim().to_owned())
        }),
    );
    let pings = [
        ("gn1", format!("-4 {n1}"), "gn1 -> n1 over IPv4, by name"),
        ("gn1", format!("-6 {n1}"), "gn1 -> n1 over IPv6, by name"),
        ("gn2", format!("-4 {n1}"), "gn2 (IPv4 only) -> n1, by name"),
        ("gn3", format!("-6 {n1}"), "gn3 (IPv6 only) -> n1, by name"),
        (
            "gn1",
            format!("-6 {gn3}"),
            "gn1 -> gn3, behind two adapters, by name",
        ),
        (
            "gn3",
            format!("-6 {gn1}"),
            "gn3 -> gn1, behind two adapters, by name",
        ),
        (
            "gn2",
            format!("-4 {gn1}"),
            "gn2 -> gn1, two general nodes of one adapter",
        ),
    ];
    for (ns, args, what) in pings {
        report.check(what, ping(&al, ns, &args));
    }
    let n1_ns = al.o.nodes[0].ns.clone();
    for (args, what) in [
        (format!("-4 {gn1}"), "n1 -> gn1 over IPv4, by its FQDN"),
        (format!("-6 {gn1}"), "n1 -> gn1 over IPv6, by its FQDN"),
        (format!("-4 {gn2}"), "n1 -> gn2, by its FQDN"),
        (format!("-6 {gn3}"), "n1 -> gn3, by its FQDN"),
    ] {
        report.check(what, ping(&al, &n1_ns, &args));
    }
    let r = curl(
        &mut al,
        &n1_ns,
        "gn1",
        &format!("http://{n1}:8080/"),
        "gn1-n1",
    );
    report.check("curl gn1 -> n1 (HTTP server on n1)", r);
    let r = curl(
        &mut al,
        &n1_ns,
        "gn3",
        &format!("http://{n1}:8080/"),
        "gn3-n1",
    );
    report.check("curl gn3 (IPv6 only) -> n1", r);
    let r = curl(
        &mut al,
        "gn1",
        &n1_ns,
        &format!("http://{gn1}:8080/"),
        "n1-gn1",
    );
    report.check("curl n1 -> gn1 by its FQDN (HTTP server on gn1)", r);
    let r = curl(
        &mut al,
        "gn3",
        "gn1",
        &format!("http://{gn3}:8080/"),
        "gn1-gn3",
    );
    report.check("curl gn1 -> gn3, behind two adapters", r);
    let r = iperf_ns(&mut al.o.lab, "gn1", &n1_ns, &n1, &[], 3, "iperf3-gn1-n1");
    report.check("iperf3 gn1 -> n1 (TCP)", r.and_then(mbits));
    let r = iperf_ns(&mut al.o.lab, &n1_ns, "gn1", &gn1, &[], 3, "iperf3-n1-gn1");
    report.check("iperf3 n1 -> gn1 by its FQDN (TCP)", r.and_then(mbits));

    hygiene(&al, &mut report, &n1);
    report.check(
        "`cyphonic status` on a1 lists gn1 with its lease and its tunnel to n1",
        al.general_status("gn1").and_then(|g| {
            ensure!(g["lease4_secs"].as_u64().is_some_and(|s| s > 0), "{g}");
            ensure!(g["lease6_secs"].as_u64().is_some_and(|s| s > 0), "{g}");
            let peer = g["peers"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["fqdn"] == n1.as_str()).cloned())
                .context("no tunnel to n1")?;
            Ok(format!(
                "{} {} {} lease v4 {}s v6 {}s; n1 {} via {} ({})",
                g["mac"].as_str().unwrap_or("?"),
                g["vip4"].as_str().unwrap_or("?"),
                g["vip6"].as_str().unwrap_or("?"),
                g["lease4_secs"],
                g["lease6_secs"],
                peer["state"].as_str().unwrap_or("?"),
                peer["path"].as_str().unwrap_or("?"),
                peer["transport"].as_str().unwrap_or("?"),
            ))
        }),
    );
    resilience(&mut al, &mut report, &n1);
    web_only(&al, &mut report, &n1);
    renewals(&al, &mut report, &n1);
    println!("\n`cyphonic status` on a1:");
    let state = al.o.nodes[1].state_dir.display().to_string();
    let a1_ns = al.o.nodes[1].ns.clone();
    if let Ok(out) =
        al.o.lab
            .exec(&a1_ns, &[&al.o.bin(), "status", "--state-dir", &state])
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("  {line}");
        }
    }
    println!(
        "adapter: {} passed, {} failed",
        report.passed, report.failed
    );
    if !report.ok() {
        for i in 1..3 {
            let log = al.o.node_log(i);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            println!("--- {} log (last lines) ---", al.o.nodes[i].name);
            for l in tail.into_iter().rev() {
                println!("{l}");
            }
        }
    }
    Ok(report.ok())
}
