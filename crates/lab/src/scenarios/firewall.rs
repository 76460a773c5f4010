//! `cyphonic lab firewall`: nodes behind firewalls that let only the web
//! out reach each other over QUIC on UDP 443 or TLS over TCP 443, and over
//! native UDP when nothing is in the way (docs/transports.md).
//!
//! ```text
//!                    "internet": bridge br0 in namespace `sw`
//!   |-- cloud  192.0.2.1    AS + NMS + TRS, native ports and UDP/TCP 443
//!   |-- dns    192.0.2.53
//!   |-- s      192.0.2.11   a public node (QUIC listener on UDP 443)
//!   |-- fw1    WAN 192.0.2.101  masquerade + nftables filter
//!   |     `-- a  198.51.100.10      (later moves to fw3's LAN on lan0)
//!   |-- fw2    WAN 192.0.2.102  masquerade + nftables filter
//!   |     `-- b  198.51.100.138
//!   `-- fw3    WAN 192.0.2.103  masquerade + mode (a) filter, always
//! ```
//!
//! Each firewall filters forwarded traffic in table `inet cyfw` by mode:
//! (a) outbound only to UDP 443 and TCP 443, (b) outbound only to TCP 443,
//! (c) open. Inbound, only replies (conntrack established/related) from
//! those same ports pass, so conntrack entries left from an earlier mode
//! carry nothing.
//!
//! Checks, in order:
//! 1. the firewalls themselves, with raw sockets before any cyphonic runs:
//!    per mode, which of UDP 443/4502/4503 and TCP 443/4501 at the cloud's
//!    address answer from behind fw1 and fw2;
//! 2. set-up: the cloud listens on UDP and TCP 443; a, b and s enroll
//!    (firewalls open: enrollment needs 4501);
//! 3. per mode (c), (b), (a), with the nodes restarted behind the new
//!    rules: every node registers, `cyphonic status --json` names the
//!    signaling transport (`.cloud.transport`); a -> b and a -> s: the
//!    tunnel comes up with the expected path and transport
//!    (`.peers[].path`, `.transport`), ping and an iperf3 TCP transfer by
//!    name succeed; a marker sent a -> b reaches b's TUN device and shows
//!    neither on the TRS's link nor on fw1's WAN, which carry the
//!    expected kind of packets;
//! 4. in mode (a), node a moves from fw1's LAN to fw3's under two TCP
//!    transfers (from s: direct QUIC, from b: relayed QUIC): both survive,
//!    the tunnels come back over QUIC, and the QUIC connections migrate
//!    (short-header packets only from fw3's WAN, no new handshake).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;

use super::nat::{NatKind, NatLab, Placement, Topology, CLOUD_V4};
use super::nat_matrix::{establish, expected_path};
use super::overlay::{
    iperf, longest_gap, parse_ping, reply_times, send_marker, strip_ansi, unix_now, Overlay, Report,
};
use crate::scenarios::overlay::{iperf_finish, iperf_start, LongIperf};
use crate::wait_until;

/// How long a pair may take from the name lookup to an established tunnel.
pub(crate) const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a node may take to register: native UDP gets about a second,
/// then QUIC and TCP are raced.
pub(crate) const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);
/// The nftables table the firewall modes live in, on each firewall.
const TABLE: &str = "cyfw";
/// How long a node's signaling may take to settle on the mode's transport
/// after it registered: QUIC gets a head start in the race, so behind a
/// web-only firewall it should win at once, not at the next re-probe
/// (30 s later).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Seconds of the TCP transfers that span the move.
const MOVE_TRANSFER_SECS: u32 = 12;
/// Ping replies (at 0.05 s) seen before node a moves.
const PINGS_BEFORE_MOVE: usize = 40;

/// What a firewall lets out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// (a) outbound UDP 443 and TCP 443 only: QUIC gets through.
    Web,
    /// (b) outbound TCP 443 only: TLS over TCP gets through.
    TcpOnly,
    /// (c) open: native UDP.
    Open,
}

impl Mode {
    pub fn letter(self) -> &'static str {
        match self {
            Mode::Web => "a",
            Mode::TcpOnly => "b",
            Mode::Open => "c",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Web => "outbound UDP 443 and TCP 443 only",
            Mode::TcpOnly => "outbound TCP 443 only",
            Mode::Open => "open",
        }
    }

    /// The transport signaling (and relayed tunnels) should settle on.
    pub fn transport(self) -> &'static str {
        match self {
            Mode::Web => "quic",
            Mode::TcpOnly => "tcp",
            Mode::Open => "udp",
        }
    }

    /// The `outbound` and `inbound` chains of table `inet cyfw`: outbound by
    /// destination port, inbound only replies from those ports, ICMP
    /// errors about allowed flows; everything else counted and dropped.
    fn nft_script(self) -> String {
        let (out, inbound) = match self {
            Mode::Web => (
                "udp dport 443 accept\n    tcp dport 443 accept",
                "ct state established,related udp sport 443 accept\n    \
                 ct state established,related tcp sport 443 accept\n    \
                 ct state related meta l4proto icmp accept",
            ),
            Mode::TcpOnly => (
                "tcp dport 443 accept",
                "ct state established,related tcp sport 443 accept\n    \
                 ct state related meta l4proto icmp accept",
            ),
            Mode::Open => ("accept", "ct state established,related accept"),
        };
        // Declaring the table first makes the delete succeed when it does
        // not exist yet: the script replaces whatever mode was there.
        format!(
            "table inet {TABLE}\n\
             delete table inet {TABLE}\n\
             table inet {TABLE} {{\n  \
               chain forward_filter {{\n    \
                 type filter hook forward priority 0; policy accept;\n    \
                 iifname \"lan\" oifname \"wan\" jump outbound\n    \
                 iifname \"wan\" oifname \"lan\" jump inbound\n  \
               }}\n  \
               chain outbound {{\n    {out}\n    counter drop\n  }}\n  \
               chain inbound {{\n    {inbound}\n    counter drop\n  }}\n\
             }}\n"
        )
    }

    /// What the raw probe ([`PROBE`]) should print behind this mode.
    fn raw_expectation(self) -> &'static str {
        match self {
            Mode::Web => {
                "udp/443=open udp/4502=blocked udp/4503=blocked tcp/443=open tcp/4501=blocked"
            }
            Mode::TcpOnly => {
                "udp/443=blocked udp/4502=blocked udp/4503=blocked tcp/443=open tcp/4501=blocked"
            }
            Mode::Open => "udp/443=open udp/4502=open udp/4503=open tcp/443=open tcp/4501=open",
        }
    }

    /// The path a node behind this firewall gets to a peer placed at `cn`
    /// (`None`: another node behind a firewall of the same mode). `s` runs
    /// a QUIC listener on UDP 443, so QUIC reaches it directly.
    pub fn expected_path(self, peer_public: bool) -> &'static str {
        match (self, peer_public) {
            (Mode::Open, true) => expected_path(Placement::Eim, Placement::V4),
            (Mode::Open, false) => expected_path(Placement::Eim, Placement::Eim),
            (Mode::Web, true) => "direct",
            _ => "relayed",
        }
    }
}

/// The cloud side of the raw firewall probe: echoes every datagram on UDP
/// 443, 4502 and 4503 and accepts TCP on 443 and 4501.
const LISTENER: &str = r#"
import select, socket
socks = {}
for port in (443, 4502, 4503):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', port))
    socks[s] = 'udp'
for port in (443, 4501):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port))
    s.listen(16)
    socks[s] = 'tcp'
print('ready', flush=True)
while True:
    r, _, _ = select.select(list(socks), [], [])
    for s in r:
        if socks[s] == 'udp':
            data, src = s.recvfrom(2048)
            s.sendto(data, src)
        else:
            c, _ = s.accept()
            c.close()
"#;

/// The node side: one datagram to each UDP port (open if echoed within
/// 0.5 s), one connect to each TCP port (open if it completes in 0.5 s).
const PROBE: &str = r#"
import socket, sys
host = sys.argv[1]
out = []
for port in (443, 4502, 4503):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    s.sendto(b'probe', (host, port))
    try:
        s.recv(100)
        out.append('udp/%d=open' % port)
    except OSError:
        out.append('udp/%d=blocked' % port)
for port in (443, 4501):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        out.append('tcp/%d=open' % port)
    except OSError:
        out.append('tcp/%d=blocked' % port)
print(' '.join(out))
"#;

pub fn run(bin: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut report = Report::default();
    println!(
        "firewall: cloud, a public node and two nodes behind nftables firewalls in three modes"
    );
    if let Err(e) = run_all(bin, &mut report) {
        report.check("scenario set-up", Err(e));
    }
    println!("  ({:.0} s)", started.elapsed().as_secs_f64());
    println!(
        "firewall: {} passed, {} failed",
        report.passed, report.failed
    );
    Ok(report.ok())
}

fn run_all(bin: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut fl = FirewallLab::build("firewall", bin, true)?;

    println!("firewalls (raw sockets, before cyphonic runs):");
    raw_checks(&mut fl, report)?;

    println!("set-up:");
    for note in fl.missing_flags() {
        println!("  note  {note}");
    }
    report.check(
        "cloud listens on UDP 443 (QUIC) and TCP 443 (TLS) besides its native ports",
        fl.start_cloud(),
    );
    report.check("a, b and s enrolled (firewalls open)", fl.enroll());

    for mode in [Mode::Open, Mode::TcpOnly, Mode::Web] {
        println!("mode ({}) {}:", mode.letter(), mode.name());
        mode_checks(&mut fl, mode, report)?;
    }

    println!("mode (a), a moves from fw1 to fw3 (both UDP/TCP 443 only):");
    report.check(
        "a moves under TCP: both transfers survive, the QUIC legs migrate",
        move_check(&mut fl),
    );
    Ok(())
}

/// A lab with firewalls: the NAT lab of [`super::nat`] with routers fw1,
/// fw2 (and fw3), node `a` behind fw1, `b` behind fw2, `s` public.
pub(crate) struct FirewallLab {
    pub nl: NatLab,
    pub a: usize,
    pub b: usize,
    pub s: usize,
    /// `cyphonic node run` has `--transport` / `--quic-port`.
    pub transport_flag: bool,
    pub quic_port_flag: bool,
    /// a's second interface on fw3's LAN (when built with fw3).
    mover: Option<Mover>,
}

struct Mover {
    lan_cidr: String,
    lan_addr: Ipv4Addr,
    gw: Ipv4Addr,
}

impl FirewallLab {
    pub fn build(scenario: &str, bin: &Path, with_fw3: bool) -> anyhow::Result<FirewallLab> {
        let mut t = Topology::new()
            .router("fw1", NatKind::Eim)
            .router("fw2", NatKind::Eim);
        if with_fw3 {
            t = t.router("fw3", NatKind::Eim);
        }
        let mut nl = t
            .node("s", Placement::V4)
            .node_behind("a", "fw1")
            .node_behind("b", "fw2")
            .build(scenario, bin)?;
        let (a, b, s) = (nl.node("a")?, nl.node("b")?, nl.node("s")?);
        let help =
            nl.o.lab
                .exec(&nl.o.cloud_ns, &[&nl.o.bin(), "node", "run", "--help"])
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
        let mut mover = None;
        if with_fw3 {
            // a's way onto fw3's LAN, down until the move (as in the
            // mobility scenario).
            let r = nl.router("fw3")?;
            let (r_ns, gw) = (r.ns.clone(), r.lan_gw);
            let (lan_addr, lan_cidr) = r.roam_addr();
            let a_ns = nl.o.nodes[a].ns.clone();
            nl.o.lab.link(&a_ns, "lan0", &[], &r_ns, "m1", &[])?;
            nl.o.lab.sh(&r_ns, "ip link set m1 master lan")?;
            nl.o.lab.sh(&a_ns, "ip link set lan0 down")?;
            mover = Some(Mover {
                lan_cidr,
                lan_addr,
                gw,
            });
        }
        let fl = FirewallLab {
            nl,
            a,
            b,
            s,
            transport_flag: help.contains("--transport"),
            quic_port_flag: help.contains("--quic-port"),
            mover,
        };
        fl.set_mode("fw1", Mode::Open)?;
        fl.set_mode("fw2", Mode::Open)?;
        if with_fw3 {
            fl.set_mode("fw3", Mode::Web)?;
        }
        Ok(fl)
    }

    pub fn o(&self) -> &Overlay {
        &self.nl.o
    }

    /// What this binary lacks of the interface the scenario needs.
    pub fn missing_flags(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.transport_flag {
            notes.push("`cyphonic node run` has no --transport: nodes run as they are".into());
        }
        if !self.quic_port_flag {
            notes.push(
                "`cyphonic node run` has no --quic-port: s runs without a QUIC listener".into(),
            );
        }
        notes
    }

    /// Replaces `router`'s filter with `mode`'s.
    pub fn set_mode(&self, router: &str, mode: Mode) -> anyhow::Result<()> {
        let ns = self.nl.router(router)?.ns.clone();
        set_firewall_mode(&self.nl.o, &ns, mode).with_context(|| format!("on {router}"))
    }

    /// Packets `router`'s filter dropped on the way out so far.
    pub fn dropped_out(&self, router: &str) -> anyhow::Result<u64> {
        let ns = self.nl.router(router)?.ns.clone();
        let out = self
            .nl
            .o
            .lab
            .sh(&ns, &format!("nft list chain inet {TABLE} outbound"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no drop counter in {text:?}"))
    }

    /// Starts the cloud and waits until UDP 443 and TCP 443 are bound.
    pub fn start_cloud(&mut self) -> anyhow::Result<String> {
        self.nl.o.start_cloud()?;
        let o = &self.nl.o;
        let r = wait_until(
            "the cloud's listeners on 443",
            Duration::from_secs(10),
            || {
                let udp = o.lab.exec(&o.cloud_ns, &["ss", "-Hlun", "sport = :443"])?;
                let tcp = o.lab.exec(&o.cloud_ns, &["ss", "-Hltn", "sport = :443"])?;
                let count = |out: &std::process::Output| {
                    String::from_utf8_lossy(&out.stdout).lines().count()
                };
                let native = o.lab.exec(&o.cloud_ns, &["ss", "-Hlun", "sport = :4502"])?;
                Ok((count(&udp) > 0 && count(&tcp) > 0 && count(&native) > 0)
                    .then(|| format!("{} UDP and {} TCP sockets on 443", count(&udp), count(&tcp))))
            },
        );
        r.with_context(|| format!("cloud log:\n{}", o.lab.log("cloud")))
    }

    /// Enrolls a, b and s (in parallel; the AS is on 4501).
    pub fn enroll(&self) -> anyhow::Result<String> {
        let o = &self.nl.o;
        let results: Vec<anyhow::Result<()>> = std::thread::scope(|sc| {
            let threads: Vec<_> = (0..o.nodes.len())
                .map(|i| sc.spawn(move || o.enroll(i)))
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(anyhow!("enroll thread panicked")))
                })
                .collect()
        });
        let failed: Vec<String> = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.err().map(|e| format!("{}: {e:#}", o.nodes[i].name)))
            .collect();
        ensure!(failed.is_empty(), "{}", failed.join("; "));
        Ok(String::new())
    }

    /// Stops every node, puts fw1 and fw2 in `mode`, starts the nodes
    /// again (s with a QUIC listener on 443) and waits until each
    /// registers. Per node, Ok with its status or why it did not register.
    pub fn restart_nodes(&mut self, mode: Mode) -> anyhow::Result<Vec<anyhow::Result<Value>>> {
        self.restart_nodes_with(mode, |_| Ok(()))
    }

    /// [`FirewallLab::restart_nodes`], calling `rules` after the mode is
    /// set and before the nodes start (more rules on the firewalls).
    pub fn restart_nodes_with(
        &mut self,
        mode: Mode,
        rules: impl FnOnce(&FirewallLab) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<anyhow::Result<Value>>> {
        for i in [self.a, self.b, self.s] {
            self.nl.o.stop_node(i)?;
        }
        self.set_mode("fw1", mode)?;
        self.set_mode("fw2", mode)?;
        rules(self)?;
        let quic: Vec<String> = if self.quic_port_flag {
            vec!["--quic-port".into(), "443".into()]
        } else {
            Vec::new()
        };
        start_node_with(&mut self.nl.o, self.s, &quic)?;
        start_node_with(&mut self.nl.o, self.a, &[])?;
        start_node_with(&mut self.nl.o, self.b, &[])?;
        let o = &self.nl.o;
        let results = std::thread::scope(|sc| {
            let threads: Vec<_> = (0..o.nodes.len())
                .map(|i| {
                    sc.spawn(move || {
                        o.wait_registered(i, REGISTER_TIMEOUT).with_context(|| {
                            format!("{}'s log ends:\n{}", o.nodes[i].name, log_tail(o, i, 8))
                        })
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(anyhow!("status thread panicked")))
                })
                .collect()
        });
        Ok(results)
    }

    /// The address the internet sees `router` from.
    pub fn wan(&self, router: &str) -> anyhow::Result<IpAddr> {
        Ok(self.nl.router(router)?.wan.into())
    }
}

/// Replaces the filter of the router in namespace `ns` (a NAT lab router,
/// LAN `lan`, WAN `wan`) with `mode`'s.
pub(crate) fn set_firewall_mode(o: &Overlay, ns: &str, mode: Mode) -> anyhow::Result<()> {
    nft(o, ns, &mode.nft_script()).with_context(|| format!("setting mode ({})", mode.letter()))
}

/// `cyphonic node run` for node `i` with `extra` flags besides the lab's.
pub(crate) fn start_node_with(o: &mut Overlay, i: usize, extra: &[String]) -> anyhow::Result<()> {
    let saved = o.node_args.clone();
    o.node_args.extend(extra.iter().cloned());
    let r = o.start_node(i);
    o.node_args = saved;
    r
}

/// Per mode, from a and b at once: which cloud ports answer.
fn raw_checks(fl: &mut FirewallLab, report: &mut Report) -> anyhow::Result<()> {
    let dir = fl.nl.o.lab.dir().to_path_buf();
    let (listener_py, probe_py) = (dir.join("fw-listener.py"), dir.join("fw-probe.py"));
    std::fs::write(&listener_py, LISTENER)?;
    std::fs::write(&probe_py, PROBE)?;
    let cloud_ns = fl.nl.o.cloud_ns.clone();
    let listener = fl.nl.o.lab.spawn(
        &cloud_ns,
        &["python3", "-u", &listener_py.to_string_lossy()],
        "fw-listener",
        &[],
    )?;
    let lab = &mut fl.nl.o.lab;
    wait_until("the raw listener", Duration::from_secs(5), || {
        if let Some(st) = lab.try_wait(listener)? {
            bail!("listener exited ({st}): {}", lab.log("fw-listener"));
        }
        Ok(lab.log("fw-listener").contains("ready").then_some(()))
    })?;
    let probe_s = probe_py.to_string_lossy().to_string();
    for mode in [Mode::Web, Mode::TcpOnly, Mode::Open] {
        let r = fl
            .set_mode("fw1", mode)
            .and_then(|()| fl.set_mode("fw2", mode))
            .and_then(|()| {
                let o = &fl.nl.o;
                let (a, b) = (fl.a, fl.b);
                let cmd = format!("python3 {probe_s} {CLOUD_V4}");
                let (ra, rb) = std::thread::scope(|sc| {
                    let ta = sc.spawn(|| o.sh(a, &cmd));
                    let tb = sc.spawn(|| o.sh(b, &cmd));
                    (
                        ta.join().unwrap_or_else(|_| Err(anyhow!("probe panicked"))),
                        tb.join().unwrap_or_else(|_| Err(anyhow!("probe panicked"))),
                    )
                });
                let (ra, rb) = (ra?, rb?);
                let want = mode.raw_expectation();
                for (who, got) in [("a via fw1", ra.trim()), ("b via fw2", rb.trim())] {
                    ensure!(got == want, "{who}: {got}; expected {want}");
                }
                Ok(want.to_owned())
            });
        report.check(&format!("mode ({}) {}", mode.letter(), mode.name()), r);
    }
    fl.nl.o.lab.kill(listener)?;
    fl.set_mode("fw1", Mode::Open)?;
    fl.set_mode("fw2", Mode::Open)
}

fn mode_checks(fl: &mut FirewallLab, mode: Mode, report: &mut Report) -> anyhow::Result<()> {
    let want = mode.transport();
    let registered = fl.restart_nodes(mode)?;
    let names: Vec<String> = fl.o().nodes.iter().map(|n| n.name.clone()).collect();
    let mut statuses = Vec::new();
    let mut failed = Vec::new();
    for (i, r) in registered.into_iter().enumerate() {
        match r {
            Ok(s) => statuses.push((i, s)),
            Err(e) => failed.push(format!("{}: {e:#}", names[i])),
        }
    }
    report.check(
        "a, b and s restarted behind the new rules and registered",
        if failed.is_empty() {
            Ok(String::new())
        } else {
            Err(anyhow!("{}", failed.join("\n        ")))
        },
    );
    report.check(
        &format!("status --json: a and b signal over {want}, s over udp"),
        signaling_check(fl, mode, &statuses, failed.is_empty()),
    );
    let (a, b, s) = (fl.a, fl.b, fl.s);
    if !failed.is_empty() {
        let why = anyhow!("not run: not every node registered");
        report.check("tunnels, ping, iperf3 and the marker", Err(why));
        return Ok(());
    }
    for (cn, public) in [(b, false), (s, true)] {
        let what = format!("a -> {}", names[cn]);
        let r = pair_check(fl, mode, a, cn, public);
        report.check(&what, r);
    }
    report.check(
        "marker a -> b: on b's TUN, never on the TRS's link or fw1's WAN",
        marker_check(fl, mode),
    );
    if mode == Mode::Open {
        report.check(
            "fw1 starts letting only 443 out while a runs: a's lookups and routes move to QUIC within seconds",
            blocked_midrun_check(fl),
        );
    }
    if mode == Mode::TcpOnly {
        report.check(
            "a new device enrolls behind fw1 (TCP 443 out only): `node enroll` reaches the AS on 443",
            enroll_behind_check(fl),
        );
        report.check(
            "a on a TLS-over-TCP leg, b on a QUIC leg (fw2 lets UDP 443 out): a ping of a's tunnel MTU (DF) reaches b through the relay, TCP both ways",
            mixed_legs_check(fl),
        );
    }
    Ok(())
}

/// fw1 lets only TCP 443 out (a relays over TLS on TCP); b restarts behind
/// fw2 letting UDP 443 out too, so it relays over QUIC. The TRS forwards
/// a's datagrams to b's leg on its fast path once b offered one (a UDP
/// datagram each, which carries a's full-size packets); before that, in
/// DATAGRAM frames, which cannot (a QUIC DATAGRAM must fit one packet) and
/// a's size probes lower its tunnel's MTU. Either way, within seconds a
/// ping of a's tunnel MTU with DF set reaches b, and transfers run both
/// ways.
fn mixed_legs_check(fl: &mut FirewallLab) -> anyhow::Result<String> {
    let (a, b) = (fl.a, fl.b);
    fl.nl.o.stop_node(b)?;
    fl.set_mode("fw2", Mode::Web)?;
    start_node_with(&mut fl.nl.o, b, &[])?;
    fl.o().wait_registered(b, REGISTER_TIMEOUT)?;
    wait_until("b to signal over quic", SETTLE_TIMEOUT, || {
        Ok((fl.o().status(b)?["cloud"]["transport"] == "quic").then_some(()))
    })?;
    ensure!(
        fl.o().status(a)?["cloud"]["transport"] == "tcp",
        "a does not signal over tcp"
    );
    let (vip_b, p) = establish_checked(fl, a, b)?;
    let (path, transport, _) = fields(&p);
    ensure!(
        path == "relayed" && transport == "tcp",
        "a -> b {path} over {transport}, expected relayed over tcp"
    );
    let up = Instant::now();
    let (fqdn_a, fqdn_b) = (fl.o().fqdn(a), fl.o().fqdn(b));
    let o = fl.o();
    let mtu = wait_until(
        "a ping of a's tunnel MTU (DF set) to reach b",
        Duration::from_secs(10),
        || {
            let m = o.peer(a, &fqdn_b)?["mtu"].as_u64().unwrap_or(0);
            ensure!(m > 28, "a's tunnel to b has no MTU");
            let out = o.sh(
                a,
                &format!("ping -M do -s {} -c 1 -W 1 {vip_b} || true", m - 28),
            )?;
            let rx = parse_ping(&out).map_or(0, |(rx, _)| rx);
            Ok((rx == 1).then_some(m))
        },
    )?;
    let learned = up.elapsed();
    let pb = fl.o().peer(b, &fqdn_a)?;
    let (path, transport, _) = fields(&pb);
    ensure!(
        path == "relayed" && transport == "quic",
        "b -> a {path} over {transport}, expected relayed over quic"
    );
    let vip_a = fl.o().status(a)?["vip4"]
        .as_str()
        .context("a has no VIPv4")?
        .to_owned();
    let ab = iperf(&mut fl.nl.o, a, b, &vip_b, 1, 2)?;
    let ba = iperf(&mut fl.nl.o, b, a, &vip_a, 1, 2)?;
    ensure!(
        ab > 1.0 && ba > 1.0,
        "TCP a -> b {ab:.1} Mbit/s, b -> a {ba:.1} Mbit/s"
    );
    Ok(format!(
        "a's tunnel MTU {mtu} ({:.1} s after it came up), b's {}; TCP a -> b {ab:.0} Mbit/s, b -> a {ba:.0} Mbit/s",
        learned.as_secs_f64(),
        pb["mtu"]
    ))
}

/// fw1 switches to mode (a), UDP and TCP 443 out only, while a signals
/// over native UDP, without a restart. At once an application on a asks
/// the overlay resolver for a name only the NMS can answer (one that does
/// not exist: NXDOMAIN is the NMS's answer, SERVFAIL the resolver's while
/// the cloud is silent), every second with a fresh name, as stub
/// resolvers retry; then pings b's VIP until it answers (the direct
/// tunnel died with UDP: a new route, relayed over QUIC).
fn blocked_midrun_check(fl: &mut FirewallLab) -> anyhow::Result<String> {
    let (a, b) = (fl.a, fl.b);
    ensure!(
        fl.o().status(a)?["cloud"]["transport"] == "udp",
        "a does not signal over udp before the change"
    );
    let vip_b = fl.o().status(b)?["vip4"]
        .as_str()
        .context("b has no VIPv4")?
        .to_owned();
    fl.set_mode("fw1", Mode::Web)?;
    let started = std::time::Instant::now();
    let o = fl.o();
    let ns = o.nodes[a].ns.clone();
    let domain = o
        .fqdn(b)
        .split_once('.')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let mut n = 0u32;
    let mut last = String::new();
    wait_until(
        "a name answered by the NMS",
        Duration::from_secs(20),
        || {
            n += 1;
            let name = format!("nobody-{n}.{domain}");
            let out = o.lab.exec(
                &ns,
                &["dig", "@127.0.0.153", "+tries=1", "+time=1", &name, "A"],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            last = text
                .lines()
                .find(|l| l.contains("status:"))
                .unwrap_or("no answer")
                .trim()
                .to_owned();
            Ok(text.contains("status: NXDOMAIN").then_some(()))
        },
    )
    .with_context(|| format!("last: {last}"))?;
    let named = started.elapsed();
    let transport = o.status(a)?["cloud"]["transport"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    ensure!(transport == "quic", "a signals over {transport}, not quic");
    wait_until("a ping of b's VIP", Duration::from_secs(30), || {
        let out = o.lab.exec(&ns, &["ping", "-c", "1", "-W", "1", &vip_b])?;
        Ok(out.status.success().then_some(()))
    })?;
    let routed = started.elapsed();
    Ok(format!(
        "a signals over quic; the NMS answers a lookup {:.1} s after the change ({n} tries), b's VIP answers a ping after {:.1} s",
        named.as_secs_f64(),
        routed.as_secs_f64()
    ))
}

/// A device added now enrolls from a's namespace, behind fw1 in its
/// current mode: `cyphonic node enroll --cloud <address>` tries the AS's
/// port and TCP 443.
fn enroll_behind_check(fl: &FirewallLab) -> anyhow::Result<String> {
    let o = fl.o();
    let device = "fw-late";
    let bin = o.bin();
    let cfg = o.cloud_dir.join("cloud.toml").to_string_lossy().to_string();
    let password = super::overlay::password(device);
    let out = o.lab.exec(
        &o.cloud_ns,
        &[
            &bin,
            "cloud",
            "device",
            "add",
            "--config",
            &cfg,
            device,
            "--password",
            &password,
        ],
    )?;
    ensure!(
        out.status.success(),
        "cloud device add: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let state = o.lab.dir().join("fw-late-state");
    let state_s = state.to_string_lossy().to_string();
    let root = o.cloud_dir.join("root.pem").to_string_lossy().to_string();
    let cloud = o.cloud_addr.to_string();
    let started = std::time::Instant::now();
    let out = o.lab.exec(
        &o.nodes[fl.a].ns,
        &[
            &bin,
            "node",
            "enroll",
            "--cloud",
            &cloud,
            "--device",
            device,
            "--password",
            &password,
            "--ca",
            &root,
            "--state-dir",
            &state_s,
        ],
    )?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "node enroll failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let chain = std::fs::read_to_string(state.join("node.pem")).unwrap_or_default();
    ensure!(
        chain.contains("BEGIN CERTIFICATE"),
        "no certificate in {}",
        state.display()
    );
    Ok(format!("enrolled in {:.0} ms", took.as_secs_f64() * 1000.0))
}

/// Every node's `.cloud.transport` is the mode's (udp for s), at once or
/// within [`SETTLE_TIMEOUT`]: `auto` races QUIC and TCP, keeps the first
/// that registers and takes a cheaper one back when it probes again (every
/// 30 s), so a race TCP won settles on QUIC later. The detail names
/// what each node registered over first.
pub(crate) fn signaling_check(
    fl: &FirewallLab,
    mode: Mode,
    first: &[(usize, Value)],
    all_registered: bool,
) -> anyhow::Result<String> {
    ensure!(all_registered, "not every node registered");
    let o = fl.o();
    let expect = |i: usize| if i == fl.s { "udp" } else { mode.transport() };
    let transport = |s: &Value| {
        s["cloud"]["transport"]
            .as_str()
            .unwrap_or("absent")
            .to_owned()
    };
    let started = Instant::now();
    let mut seen = Vec::new();
    for (i, s) in first {
        let name = &o.nodes[*i].name;
        let got = transport(s);
        if got == expect(*i) {
            seen.push(format!("{name} {got}"));
            continue;
        }
        let settled = wait_until(
            &format!("{name} to signal over {}", expect(*i)),
            SETTLE_TIMEOUT.saturating_sub(started.elapsed()),
            || {
                let now = transport(&o.status(*i)?);
                Ok((now == expect(*i)).then_some(now))
            },
        )
        .with_context(|| format!("{name} registered over {got}, not {}", expect(*i)))?;
        seen.push(format!(
            "{name} {settled} ({got} won the race; {settled} taken back after {:.1} s)",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(seen.join(", "))
}

/// Tunnel `mn` -> `cn`: path and transport as `mode` promises, ping 3/3
/// and a 2 s iperf3 TCP transfer by name.
fn pair_check(
    fl: &mut FirewallLab,
    mode: Mode,
    mn: usize,
    cn: usize,
    public: bool,
) -> anyhow::Result<String> {
    let want_path = mode.expected_path(public);
    let want_transport = mode.transport();
    let (_, p) = establish_checked(fl, mn, cn)
        .with_context(|| format!("expected {want_path} over {want_transport}"))?;
    let o = &fl.nl.o;
    let fqdn = o.fqdn(cn);
    let (path, transport, endpoint) = fields(&p);
    let mut problems = Vec::new();
    if path != want_path || transport != want_transport {
        problems.push(format!(
            "{path} over {transport}, expected {want_path} over {want_transport}"
        ));
    }
    match endpoint.parse::<SocketAddr>() {
        Ok(ep) => {
            let ok = match path.as_str() {
                "relayed" => ep.ip() == IpAddr::from(CLOUD_V4),
                _ if mode == Mode::Web => ep == SocketAddr::from((fl.nl.nodes[cn].addrs[0], 443)),
                _ => fl.nl.nodes[cn].public.contains(&ep.ip()),
            };
            if !ok {
                problems.push(format!(
                    "endpoint {ep} does not fit a {path} {transport} path"
                ));
            }
        }
        Err(_) => problems.push(format!("endpoint {endpoint:?} is not an address")),
    }
    let ping_text = match ping(o, mn, &fqdn, 3, "0.2") {
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
    let iperf_text = match iperf(&mut fl.nl.o, mn, cn, &fqdn, 1, 2) {
        Ok(mbps) => format!("{mbps:.0} Mbit/s"),
        Err(e) => {
            problems.push(format!("iperf3: {e:#}"));
            "-".into()
        }
    };
    let line = format!(
        "{path} over {transport} via {endpoint}, ping {fqdn} avg {ping_text}, iperf3 {iperf_text}"
    );
    ensure!(problems.is_empty(), "{line}: {}", problems.join("; "));
    Ok(line)
}

/// A marker a -> b through the tunnel, with captures on the cloud's link
/// (the TRS) and fw1's WAN: absent from both, which carry tunnel packets
/// of the mode's kind.
fn marker_check(fl: &mut FirewallLab, mode: Mode) -> anyhow::Result<String> {
    let (a, b) = (fl.a, fl.b);
    let (vip4, _) = establish(fl.o(), a, b, ESTABLISH_TIMEOUT)?;
    let fw1 = fl.nl.router("fw1")?.ns.clone();
    let fw1_wan = fl.wan("fw1")?;
    let fw2_wan = fl.wan("fw2")?;
    let marker = format!(
        "CYPHONIC-FW-MARKER-{}-{}",
        mode.letter(),
        fl.o().lab.prefix()
    );
    let cloud_ns = fl.nl.o.cloud_ns.clone();
    let b_ns = fl.nl.o.nodes[b].ns.clone();
    let lab = &mut fl.nl.o.lab;
    let mut trs = lab.capture(&cloud_ns, "eth0")?;
    let mut wan = lab.capture(&fw1, "wan")?;
    let mut inner = lab.capture(&b_ns, "cy0")?;
    let trs_bytes = send_marker(&fl.nl.o, a, &vip4, &marker, &mut inner, &mut trs);
    let wan_bytes = wan.stop()?;
    let trs_bytes = trs_bytes?;
    let needle = marker.as_bytes();
    let has = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    ensure!(
        !has(&trs_bytes),
        "the marker crossed the TRS's link in clear"
    );
    ensure!(!has(&wan_bytes), "the marker crossed fw1's WAN in clear");
    let trs_pkts = packets(&trs_bytes);
    let wan_pkts = packets(&wan_bytes);
    let from_fw1 = |p: &&WirePacket| p.src == fw1_wan;
    let (count, kind) = match mode {
        Mode::Web => (
            trs_pkts
                .iter()
                .filter(from_fw1)
                .filter(|p| p.proto == UDP && p.dport == 443)
                .count(),
            "QUIC packets fw1 -> cloud UDP 443 on the TRS's link",
        ),
        Mode::TcpOnly => (
            trs_pkts
                .iter()
                .filter(from_fw1)
                .filter(|p| p.proto == TCP && p.dport == 443 && !p.payload.is_empty())
                .count(),
            "TLS segments fw1 -> cloud TCP 443 on the TRS's link",
        ),
        Mode::Open => (
            wan_pkts
                .iter()
                .filter(from_fw1)
                .filter(|p| p.proto == UDP && p.dst == fw2_wan)
                .count(),
            "UDP packets fw1 -> fw2 (punched) on fw1's WAN",
        ),
    };
    ensure!(count > 0, "no {kind}");
    // Nothing but the allowed ports leaves fw1.
    let stray: Vec<String> = wan_pkts
        .iter()
        .filter(from_fw1)
        .filter(|p| match mode {
            Mode::Web => !(p.dport == 443 && (p.proto == UDP || p.proto == TCP)),
            Mode::TcpOnly => !(p.dport == 443 && p.proto == TCP),
            Mode::Open => false,
        })
        .map(|p| format!("{} {}:{}", proto_name(p.proto), p.dst, p.dport))
        .take(3)
        .collect();
    ensure!(stray.is_empty(), "fw1 let out {}", stray.join(", "));
    let dropped = fl.dropped_out("fw1").unwrap_or(0);
    Ok(format!(
        "absent from {} packets on the TRS's link and {} on fw1's WAN; {count} {kind}; fw1 dropped {dropped} outbound packets since the mode was set",
        trs_pkts.len(),
        wan_pkts.len()
    ))
}

/// a moves from fw1's LAN to fw3's (same rules) while s and b each send
/// it a TCP transfer by name: the transfers complete, a's tunnels come
/// back as direct QUIC (to s) and relayed QUIC, and the QUIC connections
/// to the cloud and to s go on from fw3's WAN with short-header packets
/// only (migrated, not dialled anew).
fn move_check(fl: &mut FirewallLab) -> anyhow::Result<String> {
    let (a, b, s) = (fl.a, fl.b, fl.s);
    let mover = fl.mover.as_ref().context("built without fw3")?;
    let (lan_cidr, lan_addr, gw) = (mover.lan_cidr.clone(), mover.lan_addr, mover.gw);
    let fw3_wan = fl.wan("fw3")?;
    let s_addr = fl.nl.nodes[s].addrs[0];
    // The tunnels as mode (a) left them.
    let fqdn_a = fl.o().fqdn(a);
    for (from, want) in [(s, "direct"), (b, "relayed")] {
        establish(fl.o(), from, a, ESTABLISH_TIMEOUT)
            .with_context(|| format!("{} -> a before the move", fl.o().nodes[from].name))?;
        let p = fl.o().peer(from, &fqdn_a)?;
        let (path, transport, _) = fields(&p);
        ensure!(
            path == want && transport == "quic",
            "before the move {} -> a is {path} over {transport}",
            fl.o().nodes[from].name
        );
    }
    let a_vip4 = fl.o().status(a)?["vip4"]
        .as_str()
        .context("a has no VIPv4")?
        .to_owned();

    let cloud_ns = fl.nl.o.cloud_ns.clone();
    let s_ns = fl.nl.o.nodes[s].ns.clone();
    let a_ns = fl.nl.o.nodes[a].ns.clone();
    let mut cloud_cap = fl.nl.o.lab.capture(&cloud_ns, "eth0")?;
    let mut s_cap = fl.nl.o.lab.capture(&s_ns, "eth0")?;

    let total = MOVE_TRANSFER_SECS;
    let runs = [(s, 5201u16, "s"), (b, 5202, "b")]
        .into_iter()
        .map(|(from, port, label)| {
            iperf_start(
                &mut fl.nl.o,
                from,
                a,
                &fqdn_a,
                port,
                total,
                Some("20M"),
                &format!("move-{label}"),
            )
        })
        .collect::<anyhow::Result<Vec<LongIperf>>>()?;
    let ping_log = "ping-s-a-move";
    fl.nl.o.lab.spawn(
        &s_ns,
        &[
            "ping",
            "-D",
            "-n",
            "-i",
            "0.05",
            "-W",
            "1",
            "-w",
            &(total + 2).to_string(),
            &a_vip4,
        ],
        ping_log,
        &[],
    )?;
    // Move once both transfers are connected and the ping has had
    // replies for a while.
    let lab = &fl.nl.o.lab;
    wait_until(
        "the transfers and the ping to run",
        Duration::from_secs(10),
        || {
            let replies = reply_times(&lab.log(ping_log)).len();
            let out = lab.exec(&a_ns, &["ss", "-Htn", "state", "established"])?;
            let conns = String::from_utf8_lossy(&out.stdout).to_string();
            Ok(
                (replies >= PINGS_BEFORE_MOVE
                    && conns.contains(":5201")
                    && conns.contains(":5202"))
                .then_some(()),
            )
        },
    )?;
    let moved_at = unix_now();
    fl.nl.o.lab.sh(
        &a_ns,
        &format!(
            "ip -4 addr flush dev eth0; ip -4 route flush default 2>/dev/null; \
             ip link set lan0 up && ip addr add {lan_cidr} dev lan0 && ip route replace default via {gw}"
        ),
    )?;
    let mut results = Vec::new();
    for run in runs {
        let label = run.label.clone();
        results.push(
            iperf_finish(&mut fl.nl.o, run, Duration::from_secs(total as u64 + 20))
                .map(|r| format!("{label}: {r}"))
                .with_context(|| format!("the transfer from {label}")),
        );
    }
    let cloud_bytes = cloud_cap.stop()?;
    let s_bytes = s_cap.stop()?;
    let mut problems = Vec::new();
    let mut figures = Vec::new();
    for r in results {
        match r {
            Ok(t) => figures.push(t),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    let outage = longest_gap(&reply_times(&fl.nl.o.lab.log(ping_log)), moved_at);
    // After the move: registration and tunnels over QUIC from fw3.
    let after = (|| {
        let o = fl.o();
        let st = wait_until(
            "a to be registered over QUIC",
            Duration::from_secs(10),
            || {
                let st = o.status(a)?;
                Ok(
                    (st["cloud"]["registered"] == true && st["cloud"]["transport"] == "quic")
                        .then_some(st),
                )
            },
        )
        .with_context(|| {
            let st = o.status(a).unwrap_or_default();
            format!("a's cloud status: {}", st["cloud"])
        })?;
        let mut seen = vec![format!(
            "a signals over {}",
            st["cloud"]["transport"].as_str().unwrap_or("?")
        )];
        for (cn, want) in [(s, "direct"), (b, "relayed")] {
            let fqdn = o.fqdn(cn);
            let p = wait_until(
                &format!("a's tunnel to {fqdn} over QUIC"),
                Duration::from_secs(10),
                || {
                    let p = o.peer(a, &fqdn)?;
                    let (path, transport, _) = fields(&p);
                    Ok(
                        (p["state"] == "established" && path == want && transport == "quic")
                            .then_some(p),
                    )
                },
            )
            .with_context(|| o.peer(a, &fqdn).map(|p| describe(&p)).unwrap_or_default())?;
            seen.push(format!("{}: {}", o.nodes[cn].name, describe(&p)));
        }
        anyhow::Ok(seen.join("; "))
    })();
    match after {
        Ok(t) => figures.push(t),
        Err(e) => problems.push(format!("after the move: {e:#}")),
    }
    // Migration on the wire.
    let from_fw3 = |bytes: &[u8], dst: IpAddr| {
        let pkts: Vec<WirePacket> = packets(bytes)
            .into_iter()
            .filter(|p| p.src == fw3_wan && p.dst == dst && p.proto == UDP && p.dport == 443)
            .collect();
        let long = pkts
            .iter()
            .filter(|p| p.payload.first().is_some_and(|b| b & 0x80 != 0))
            .count();
        (pkts.len(), long)
    };
    for (what, bytes, dst) in [
        ("cloud", &cloud_bytes, IpAddr::from(CLOUD_V4)),
        ("s", &s_bytes, s_addr),
    ] {
        let (n, long) = from_fw3(bytes, dst);
        if n == 0 {
            problems.push(format!(
                "no QUIC packets from fw3's WAN to the {what}'s UDP 443"
            ));
        } else if long > 0 {
            problems.push(format!(
                "{long} of {n} QUIC packets from fw3 to the {what} have a long header: a new handshake, not a migration"
            ));
        } else {
            figures.push(format!(
                "{n} short-header QUIC packets fw3 -> {what}:443, no handshake"
            ));
        }
    }
    let line = format!(
        "a {} -> {lan_addr} behind fw3; ping s -> a outage {}; {}",
        fl.nl.nodes[a].addrs[0],
        outage.map_or("-".into(), |g| format!("{:.0} ms", g * 1000.0)),
        figures.join("; ")
    );
    ensure!(problems.is_empty(), "{line}: {}", problems.join("; "));
    Ok(line)
}

/// Resolves `cn`'s name on `mn` and waits for the tunnel; (CN's VIPv4,
/// `mn`'s peer entry for it). The error says what the peer entry showed.
pub(crate) fn establish_checked(
    fl: &FirewallLab,
    mn: usize,
    cn: usize,
) -> anyhow::Result<(String, Value)> {
    let o = fl.o();
    let fqdn = o.fqdn(cn);
    match establish(o, mn, cn, ESTABLISH_TIMEOUT) {
        Ok((vip4, _)) => Ok((vip4, o.peer(mn, &fqdn)?)),
        Err(e) => {
            let seen = o
                .peer(mn, &fqdn)
                .map(|p| describe(&p))
                .unwrap_or_else(|_| "no peer entry".into());
            bail!("{seen}: {e:#}")
        }
    }
}

/// "relayed over quic via 192.0.2.1:443 (established)".
fn describe(p: &Value) -> String {
    let (path, transport, endpoint) = fields(p);
    format!(
        "{path} over {transport} via {endpoint} ({})",
        p["state"].as_str().unwrap_or("?")
    )
}

/// A peer's (path, transport, endpoint), "absent" where missing.
pub(crate) fn fields(p: &Value) -> (String, String, String) {
    let f = |k: &str| p[k].as_str().unwrap_or("absent").to_owned();
    (f("path"), f("transport"), f("endpoint"))
}

/// Pings `target` from node `i`: (replies, average RTT in ms), whatever
/// ping's exit status.
pub(crate) fn ping(
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

fn nft(o: &Overlay, ns: &str, script: &str) -> anyhow::Result<()> {
    o.lab
        .sh(ns, &format!("nft -f - <<'EOF'\n{script}\nEOF"))
        .map(drop)
}

/// The last `lines` lines of node `i`'s log, without terminal colours,
/// indented under a report line.
fn log_tail(o: &Overlay, i: usize, lines: usize) -> String {
    let log = strip_ansi(&o.node_log(i));
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("          {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) const UDP: u8 = 17;
pub(crate) const TCP: u8 = 6;
pub(crate) const ICMP: u8 = 1;

fn proto_name(p: u8) -> String {
    match p {
        UDP => "udp".into(),
        TCP => "tcp".into(),
        ICMP => "icmp".into(),
        n => format!("proto {n}"),
    }
}

/// One IP packet from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WirePacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// 0 for protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// The IP packet's length from its header (total length for IPv4,
    /// 40 + payload length for IPv6).
    pub ip_len: usize,
    /// The transport payload (after the UDP or TCP header; the whole
    /// ICMP message for ICMP), as captured.
    pub payload: Vec<u8>,
}

/// Every IPv4 and IPv6 packet of a classic pcap file (Ethernet, Linux
/// cooked or raw IP links); unparseable records are skipped.
pub(crate) fn packets(pcap: &[u8]) -> Vec<WirePacket> {
    let mut out = Vec::new();
    let le = match pcap.get(..4) {
        Some([0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]) => true,
        Some([0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d]) => false,
        _ => return out,
    };
    let u32_at = |i: usize| -> Option<u32> {
        let a: [u8; 4] = pcap.get(i..i + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let Some(linktype) = u32_at(20) else {
        return out;
    };
    let mut off = 24;
    while let Some(incl) = u32_at(off + 8) {
        let start = off + 16;
        let end = start + incl as usize;
        let Some(frame) = pcap.get(start..end) else {
            break;
        };
        off = end;
        let ip = match linktype {
            1 if frame.len() > 14 => match u16::from_be_bytes([frame[12], frame[13]]) {
                0x0800 | 0x86dd => &frame[14..],
                _ => continue,
            },
            113 if frame.len() > 16 => &frame[16..],
            101 | 12 | 14 | 228 | 229 => frame,
            _ => continue,
        };
        if let Some(p) = parse_ip(ip) {
            out.push(p);
        }
    }
    out
}

fn parse_ip(ip: &[u8]) -> Option<WirePacket> {
    let (src, dst, proto, ip_len, l4): (IpAddr, IpAddr, u8, usize, &[u8]) = match ip.first()? >> 4 {
        4 => {
            let ihl = (*ip.first()? & 0x0f) as usize * 4;
            let a: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let b: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
            let l4 = ip.get(ihl..total.min(ip.len()))?;
            (a.into(), b.into(), *ip.get(9)?, total, l4)
        }
        6 => {
            let a: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let b: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let payload = u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) as usize;
            let l4 = ip.get(40..(40 + payload).min(ip.len()))?;
            (a.into(), b.into(), *ip.get(6)?, 40 + payload, l4)
        }
        _ => return None,
    };
    let (sport, dport, payload) = match proto {
        UDP if l4.len() >= 8 => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
            &l4[8..],
        ),
        TCP if l4.len() >= 20 => {
            let doff = (l4[12] >> 4) as usize * 4;
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
                l4.get(doff..)?,
            )
        }
        UDP | TCP => return None,
        _ => (0, 0, l4),
    };
    Some(WirePacket {
        src,
        dst,
        proto,
        sport,
        dport,
        ip_len,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_with(linktype: u32, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&0xffffu32.to_le_bytes());
        pcap.extend_from_slice(&linktype.to_le_bytes());
        for f in frames {
            let len = f.len() as u32;
            pcap.extend_from_slice(&[0; 8]);
            pcap.extend_from_slice(&len.to_le_bytes());
            pcap.extend_from_slice(&len.to_le_bytes());
            pcap.extend_from_slice(f);
        }
        pcap
    }

    fn ipv4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0, 192, 0, 2, 101, 192, 0, 2, 1]);
        ip.extend_from_slice(l4);
        ip
    }

    #[test]
    fn reads_udp_tcp_and_icmp_packets() {
        let mut udp = vec![0x11, 0x95, 0x01, 0xbb, 0, 13, 0, 0];
        udp.extend_from_slice(b"hello");
        let mut tcp = vec![0x30, 0x39, 0x01, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x18];
        tcp.extend_from_slice(&[0; 6]);
        tcp.extend_from_slice(b"tls");
        let icmp = vec![8, 0, 0, 0, 0, 1, 0, 1, 0xaa];
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend(ipv4(UDP, &udp));
        let got = packets(&pcap_with(1, &[eth]));
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].proto, got[0].sport, got[0].dport, got[0].ip_len),
            (UDP, 4501, 443, 33)
        );
        assert_eq!(got[0].payload, b"hello");
        assert_eq!(got[0].src, IpAddr::from([192, 0, 2, 101]));
        let got = packets(&pcap_with(101, &[ipv4(TCP, &tcp), ipv4(ICMP, &icmp)]));
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].dport, got[0].payload.as_slice()),
            (443, &b"tls"[..])
        );
        assert_eq!(
            (got[1].proto, got[1].ip_len, got[1].payload[0]),
            (ICMP, 29, 8)
        );
        assert!(packets(&[0; 10]).is_empty());
    }

    #[test]
    fn the_modes_allow_what_they_say() {
        let web = Mode::Web.nft_script();
        assert!(web.contains("udp dport 443 accept") && web.contains("tcp dport 443 accept"));
        let tcp = Mode::TcpOnly.nft_script();
        assert!(!tcp.contains("udp dport") && tcp.contains("tcp dport 443 accept"));
        assert_eq!(Mode::Web.expected_path(true), "direct");
        assert_eq!(Mode::Web.expected_path(false), "relayed");
        assert_eq!(Mode::TcpOnly.expected_path(true), "relayed");
        assert_eq!(Mode::Open.expected_path(false), "punched");
    }

    #[test]
    fn colours_are_stripped() {
        assert_eq!(
            strip_ansi("\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m x"),
            "2026  INFO x"
        );
    }

    #[test]
    fn gaps_after_a_move() {
        let r = [10.0, 10.05, 10.1, 10.9, 10.95];
        let g = longest_gap(&r, 10.07).unwrap();
        assert!((g - 0.8).abs() < 1e-9, "{g}");
        assert_eq!(longest_gap(&r, 9.0), None);
    }
}
