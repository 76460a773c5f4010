//! A cyphonic overlay inside a [`Lab`]: the cloud, nodes and the upstream
//! DNS server in their own namespaces on one switch, run with the real
//! binary, plus the checks scenarios share.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::{wait_until, Lab};

pub const DOMAIN: &str = "cyphonic.internal";
/// A general (non-overlay) name served by the lab's upstream DNS server.
pub const GENERAL_NAME: &str = "www.example.com";
pub const GENERAL_ADDR: &str = "198.51.100.80";

/// Which underlay the overlay runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    V4,
    V6Only,
}

impl Underlay {
    pub fn name(self) -> &'static str {
        match self {
            Underlay::V4 => "IPv4 underlay",
            Underlay::V6Only => "IPv6-only underlay",
        }
    }
}

pub struct NodeHandle {
    pub name: String,
    pub ns: String,
    pub state_dir: PathBuf,
    pub underlay: IpAddr,
    pub pid: Option<u32>,
    /// The cloud address this node enrolls with, when not the overlay's
    /// `cloud_addr` (an IPv6-only node next to IPv4 ones).
    pub cloud: Option<IpAddr>,
    /// Set: the node runs as an adapter serving the LAN on this interface.
    pub adapter_lan: Option<String>,
}

/// Results of a scenario's checks, printed as they happen.
#[derive(Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
}

impl Report {
    pub fn check(&mut self, what: &str, r: anyhow::Result<String>) -> bool {
        match r {
            Ok(detail) => {
                self.passed += 1;
                if detail.is_empty() {
                    println!("  ok    {what}");
                } else {
                    println!("  ok    {what}: {detail}");
                }
                true
            }
            Err(e) => {
                self.failed += 1;
                println!("  FAIL  {what}: {e:#}");
                false
            }
        }
    }

    pub fn ok(&self) -> bool {
        self.failed == 0 && self.passed > 0
    }
}

pub struct Overlay {
    pub lab: Lab,
    pub bin: PathBuf,
    pub underlay: Underlay,
    pub cloud_ns: String,
    pub cloud_dir: PathBuf,
    pub cloud_pid: Option<u32>,
    pub cloud_addr: IpAddr,
    pub nodes: Vec<NodeHandle>,
    /// Extra `cyphonic node run` flags for every node (e.g. `--keepalive 1`).
    pub node_args: Vec<String>,
}

const SWITCH: &str = "sw";

impl Overlay {
    /// Namespaces for the cloud, the DNS server and `nodes`, each linked to
    /// a bridge; the cloud initialised with those devices. Nothing runs yet.
    pub fn build(
        scenario: &str,
        bin: &Path,
        underlay: Underlay,
        nodes: &[&str],
    ) -> anyhow::Result<Overlay> {
        let mut lab = Lab::new(scenario)?;
        lab.add_ns(SWITCH)?;
        lab.sh(SWITCH, "ip link add br0 type bridge && ip link set br0 up")?;
        let addr = |host: u8| -> (String, String, IpAddr) {
            let v4 = format!("192.0.2.{host}/24");
            let v6 = format!("2001:db8::{host}/64");
            let ip: IpAddr = match underlay {
                Underlay::V4 => format!("192.0.2.{host}").parse().expect("valid"),
                Underlay::V6Only => format!("2001:db8::{host}").parse().expect("valid"),
            };
            (v4, v6, ip)
        };
        let mut port = 0;
        let mut attach = |lab: &mut Lab, ns: &str, host: u8| -> anyhow::Result<IpAddr> {
            let (v4, v6, ip) = addr(host);
            let addrs: Vec<&str> = match underlay {
                Underlay::V4 => vec![v4.as_str()],
                Underlay::V6Only => vec![v6.as_str()],
            };
            port += 1;
            let sw_if = format!("p{port}");
            lab.link(ns, "eth0", &addrs, SWITCH, &sw_if, &[])?;
            lab.sh(SWITCH, &format!("ip link set {sw_if} master br0"))?;
            Ok(ip)
        };
        let cloud_ns = lab.add_ns("cloud")?;
        let cloud_addr = attach(&mut lab, "cloud", 1)?;
        lab.add_ns("dns")?;
        let dns_addr = attach(&mut lab, "dns", 53)?;
        let mut handles = Vec::new();
        for (i, name) in nodes.iter().enumerate() {
            let ns = lab.add_ns(name)?;
            let host = 11 + i as u8;
            let underlay_ip = attach(&mut lab, name, host)?;
            let state_dir = lab.dir().join(format!("{name}-state"));
            handles.push(NodeHandle {
                name: (*name).to_owned(),
                ns,
                state_dir,
                underlay: underlay_ip,
                pid: None,
                cloud: None,
                adapter_lan: None,
            });
        }
        // The upstream resolver for general names, as a site would have.
        lab.start_dns_server("dns", &[dns_addr], &[(GENERAL_NAME, GENERAL_ADDR.parse()?)])?;
        for n in &handles {
            lab.set_resolv_conf(&n.name, &format!("nameserver {dns_addr}\n"))?;
        }

        let names: Vec<&str> = handles.iter().map(|n| n.name.as_str()).collect();
        let cloud_dir = init_cloud(&lab, bin, &cloud_ns, &names)?;
        Ok(Overlay {
            lab,
            bin: bin.to_owned(),
            underlay,
            cloud_ns,
            cloud_dir,
            cloud_pid: None,
            cloud_addr,
            nodes: handles,
            node_args: Vec::new(),
        })
    }

    pub fn bin(&self) -> String {
        self.bin.to_string_lossy().to_string()
    }

    pub fn start_cloud(&mut self) -> anyhow::Result<()> {
        let cfg = self
            .cloud_dir
            .join("cloud.toml")
            .to_string_lossy()
            .to_string();
        let bin = self.bin();
        let pid = self.lab.spawn(
            &self.cloud_ns.clone(),
            &[&bin, "cloud", "run", "--config", &cfg],
            "cloud",
            &[],
        )?;
        self.cloud_pid = Some(pid);
        Ok(())
    }

    pub fn stop_cloud(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.cloud_pid.take() {
            self.lab.kill(pid)?;
        }
        Ok(())
    }

    /// Enrolls a node, retrying while the AS is still starting.
    pub fn enroll(&self, i: usize) -> anyhow::Result<()> {
        self.enroll_with(i, &password(&self.nodes[i].name))
    }

    /// [`Overlay::enroll`] with a one-time password of the operator's.
    pub fn enroll_with(&self, i: usize, one_time: &str) -> anyhow::Result<()> {
        self.enroll_under(i, one_time, &self.cloud_dir.join("root.pem"))
    }

    /// [`Overlay::enroll_with`], trusting the root certificate at `root`
    /// (another domain's, or another instance's copy).
    pub fn enroll_under(&self, i: usize, one_time: &str, root: &Path) -> anyhow::Result<()> {
        let n = &self.nodes[i];
        let cloud = match n.cloud.unwrap_or(self.cloud_addr) {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let root = root.to_string_lossy().to_string();
        let state = n.state_dir.to_string_lossy().to_string();
        let bin = self.bin();
        let args = [
            bin.as_str(),
            "node",
            "enroll",
            "--cloud",
            cloud.as_str(),
            "--device",
            n.name.as_str(),
            "--password",
            one_time,
            "--ca",
            root.as_str(),
            "--state-dir",
            state.as_str(),
        ];
        let lab = &self.lab;
        let ns = n.ns.clone();
        wait_until(
            &format!("{} to enroll", n.name),
            Duration::from_secs(20),
            || {
                let out = lab.exec(&ns, &args)?;
                if out.status.success() {
                    return Ok(Some(()));
                }
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                // Final answers: retrying cannot change them (a spent
                // one-time password needs `cloud device reset`).
                if err.contains("wrong device ID or password")
                    || err.contains("credential_used")
                    || err.contains("was already used")
                {
                    bail!("{err}");
                }
                Err(anyhow::anyhow!("{}", err.trim()))
            },
        )
    }

    /// Starts node `i`: `cyphonic node run`, or `cyphonic adapter run` when
    /// it is an adapter.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let bin = self.bin();
        let n = &self.nodes[i];
        let state = n.state_dir.to_string_lossy().to_string();
        let (ns, name, lan) = (n.ns.clone(), n.name.clone(), n.adapter_lan.clone());
        let mut args = vec![bin.as_str()];
        match &lan {
            Some(lan) => args.extend(["adapter", "run", "--state-dir", &state, "--lan", lan]),
            None => args.extend(["node", "run", "--state-dir", &state, "--tun", "cy0"]),
        }
        // Extra daemon flags for experiments, e.g. CYPHONIC_LAB_NODE_ARGS=--no-offload.
        args.extend(self.node_args.iter().map(String::as_str));
        let extra = std::env::var("CYPHONIC_LAB_NODE_ARGS").unwrap_or_default();
        if lan.is_none() {
            args.extend(extra.split_whitespace());
        }
        let pid = self.lab.spawn(
            &ns,
            &args,
            &name,
            &[(
                "CYPHONIC_LOG",
                "info,cyphonic_node=debug,cyphonic_adapter=debug",
            )],
        )?;
        self.nodes[i].pid = Some(pid);
        Ok(())
    }

    pub fn stop_node(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(pid) = self.nodes[i].pid.take() {
            self.lab.kill(pid)?;
        }
        Ok(())
    }

    /// `cyphonic status --json` of node `i`.
    pub fn status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        let n = &self.nodes[i];
        let state = n.state_dir.to_string_lossy().to_string();
        let out = self.lab.exec(
            &n.ns,
            &[&self.bin(), "status", "--json", "--state-dir", &state],
        )?;
        ensure!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn wait_registered(
        &self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        wait_until(
            &format!("{} to register", self.nodes[i].name),
            timeout,
            || {
                let s = self.status(i)?;
                Ok((s["cloud"]["registered"] == true && s["vip4"].is_string()).then_some(s))
            },
        )
    }

    pub fn fqdn(&self, i: usize) -> String {
        format!("{}.{DOMAIN}", self.nodes[i].name)
    }

    /// Runs a shell command in node `i`'s namespace; fails on non-zero exit.
    pub fn sh(&self, i: usize, cmd: &str) -> anyhow::Result<String> {
        let out = self.lab.sh(&self.nodes[i].ns, cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// The peer entry for `fqdn` in node `i`'s status.
    pub fn peer(&self, i: usize, fqdn: &str) -> anyhow::Result<serde_json::Value> {
        let s = self.status(i)?;
        s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["fqdn"] == fqdn).cloned())
            .with_context(|| format!("{fqdn} is not among {}'s peers", self.nodes[i].name))
    }

    pub fn node_log(&self, i: usize) -> String {
        self.lab.log(&self.nodes[i].name)
    }

    /// Resident memory of node `i`'s daemon, in KiB.
    pub fn node_rss_kib(&self, i: usize) -> Option<u64> {
        // `ip netns exec` execs the program, so the pid is the daemon's.
        rss_kib(self.nodes[i].pid?)
    }
}

/// Where the lab's cloud serves /metrics, in its namespace.
pub const CLOUD_METRICS: &str = "127.0.0.1:9100";

/// `cyphonic cloud init` in `cloud_ns` (public addresses 192.0.2.1 and
/// 2001:db8::1, the lab's domain) into `<lab dir>/cloud`, keepalives
/// shortened to 2 s, /metrics on [`CLOUD_METRICS`], and `devices` added with [`password`]. Returns the
/// cloud directory (its `cloud.toml` is the configuration).
pub fn init_cloud(
    lab: &Lab,
    bin: &Path,
    cloud_ns: &str,
    devices: &[&str],
) -> anyhow::Result<PathBuf> {
    let cloud_dir = lab.dir().join("cloud");
    let bin_s = bin.to_string_lossy().to_string();
    let dir_s = cloud_dir.to_string_lossy().to_string();
    let mut args = vec![
        bin_s.as_str(),
        "cloud",
        "init",
        "--dir",
        dir_s.as_str(),
        "--domain",
        DOMAIN,
    ];
    let publics = ["192.0.2.1".to_string(), "2001:db8::1".to_string()];
    for p in &publics {
        args.push("--public");
        args.push(p);
    }
    run_ok(lab, cloud_ns, &args)?;
    // Short keepalives so the lab sees a cloud restart within seconds.
    let cfg_path = cloud_dir.join("cloud.toml");
    set_config_keys(
        &cfg_path,
        &[
            ("keepalive_secs", "2".to_owned()),
            ("metrics_listen", format!("\"{CLOUD_METRICS}\"")),
        ],
    )?;
    let cfg_s = cfg_path.to_string_lossy().to_string();
    for name in devices {
        run_ok(
            lab,
            cloud_ns,
            &[
                &bin_s,
                "cloud",
                "device",
                "add",
                "--config",
                &cfg_s,
                name,
                "--password",
                &password(name),
            ],
        )?;
    }
    Ok(cloud_dir)
}

/// Sets top-level keys of a TOML file (`key = value`, the value already in
/// TOML syntax): replaces each key's line (with an array's continuation
/// lines), or adds the key before the first table.
pub fn set_config_keys(path: &Path, keys: &[(&str, String)]) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out: Vec<String> = Vec::new();
    let mut done = vec![false; keys.len()];
    let flush = |out: &mut Vec<String>, done: &mut [bool]| {
        for (i, (k, v)) in keys.iter().enumerate() {
            if !done[i] {
                out.push(format!("{k} = {v}"));
                done[i] = true;
            }
        }
    };
    // Open brackets of the value being skipped (a multi-line array).
    let mut skip_depth = 0;
    let mut in_table = false;
    for line in text.lines() {
        if skip_depth > 0 {
            skip_depth += bracket_depth(line);
            continue;
        }
        if !in_table && line.trim_start().starts_with('[') {
            in_table = true;
            flush(&mut out, &mut done);
        }
        let hit = line.split_once('=').and_then(|(k, v)| {
            let k = k.trim().trim_matches('"');
            let i = keys.iter().position(|(key, _)| *key == k)?;
            Some((i, v))
        });
        match hit {
            Some((i, value)) if !in_table => {
                let (k, v) = &keys[i];
                if !done[i] {
                    out.push(format!("{k} = {v}"));
                    done[i] = true;
                }
                skip_depth = bracket_depth(value);
            }
            _ => out.push(line.to_owned()),
        }
    }
    flush(&mut out, &mut done);
    std::fs::write(path, out.join("\n") + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// '[' minus ']' outside quoted strings: how many arrays a TOML line opens.
fn bracket_depth(line: &str) -> i32 {
    let (mut depth, mut quoted) = (0, None);
    for c in line.chars() {
        match (quoted, c) {
            (None, '"' | '\'') => quoted = Some(c),
            (Some(q), c) if c == q => quoted = None,
            (None, '[') => depth += 1,
            (None, ']') => depth -= 1,
            (None, '#') => break,
            _ => {}
        }
    }
    depth
}

/// Sends `marker` in UDP datagrams from node `from` to `dst_vip4` port 9
/// and waits (5 s) until the capture `inner` (on the receiver's TUN
/// device) holds it: proof the marker really went through the tunnel.
/// Then stops `outer` (an underlay capture) and returns its bytes.
pub fn send_marker(
    o: &Overlay,
    from: usize,
    dst_vip4: &str,
    marker: &str,
    inner: &mut crate::Capture,
    outer: &mut crate::Capture,
) -> anyhow::Result<Vec<u8>> {
    let send = format!(
        "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'{marker}', ('{dst_vip4}', 9)) for _ in range(5)]\""
    );
    o.sh(from, &send)?;
    let seen = wait_until(
        "the marker on the receiver's TUN device",
        Duration::from_secs(5),
        || Ok(inner.contains(marker.as_bytes()).then_some(())),
    );
    let bytes = outer.stop()?;
    inner.stop()?;
    seen?;
    Ok(bytes)
}

/// The cloud's configuration file, as an argument.
pub fn cloud_config(o: &Overlay) -> String {
    o.cloud_dir.join("cloud.toml").to_string_lossy().to_string()
}

/// Runs `cyphonic <args>` in the cloud's namespace; its stdout.
pub fn cloud_cli(o: &Overlay, args: &[&str]) -> anyhow::Result<String> {
    let bin = o.bin();
    let mut all = vec![bin.as_str()];
    all.extend_from_slice(args);
    run_ok(&o.lab, &o.cloud_ns, &all)
}

pub fn password(device: &str) -> String {
    format!("enroll-{device}-secret")
}

/// Runs `args` in `ns`; its stdout, or an error with its stderr.
pub(crate) fn run_ok(lab: &Lab, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = lab.exec(ns, args)?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        args[1..].join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Parses ping's summary: (received, average RTT in ms).
pub fn parse_ping(out: &str) -> Option<(u32, f64)> {
    let received = out
        .lines()
        .find(|l| l.contains("packets transmitted"))?
        .split(',')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let avg = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Some((received, avg))
}

/// An iperf3 TCP transfer running in the background
/// ([`iperf_start`] .. [`iperf_finish`]).
pub struct LongIperf {
    server: u32,
    client: u32,
    client_log: String,
    pub label: String,
}

/// Starts an iperf3 server on node `to` (one client, `port`) and, once it
/// listens, a `secs`-long TCP transfer from node `from` to `dst`, at most
/// `rate` (iperf3's `-b`) when given.
#[allow(clippy::too_many_arguments)]
pub fn iperf_start(
    o: &mut Overlay,
    from: usize,
    to: usize,
    dst: &str,
    port: u16,
    secs: u32,
    rate: Option<&str>,
    label: &str,
) -> anyhow::Result<LongIperf> {
    let to_ns = o.nodes[to].ns.clone();
    let from_ns = o.nodes[from].ns.clone();
    let port_s = port.to_string();
    let server = o.lab.spawn(
        &to_ns,
        &["iperf3", "-s", "-1", "-p", &port_s],
        &format!("iperf3-server-{label}"),
        &[],
    )?;
    let lab = &o.lab;
    let listening = wait_until(
        "the iperf3 server to listen",
        Duration::from_secs(5),
        || {
            let out = lab.exec(&to_ns, &["ss", "-Hltn", &format!("sport = :{port}")])?;
            Ok((!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(()))
        },
    );
    if let Err(e) = listening {
        let _ = o.lab.kill(server);
        return Err(e);
    }
    let client_log = format!("iperf3-client-{label}");
    let secs = secs.to_string();
    let mut args = vec![
        "iperf3",
        "-c",
        dst,
        "-p",
        &port_s,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if let Some(rate) = rate {
        args.extend(["-b", rate]);
    }
    let client = o.lab.spawn(&from_ns, &args, &client_log, &[])?;
    Ok(LongIperf {
        server,
        client,
        client_log,
        label: label.to_owned(),
    })
}

/// Waits for the client; Ok with the figures when it exited 0 without an
/// error (a reset connection is an error).
pub fn iperf_finish(o: &mut Overlay, run: LongIperf, timeout: Duration) -> anyhow::Result<String> {
    let lab = &mut o.lab;
    let status = wait_until("iperf3 to finish", timeout, || lab.try_wait(run.client));
    let _ = o.lab.kill(run.client);
    let _ = o.lab.kill(run.server);
    let status = status?;
    let log = o.lab.log(&run.client_log);
    let json = log
        .find('{')
        .zip(log.rfind('}'))
        .map(|(a, b)| &log[a..=b])
        .with_context(|| format!("iperf3 printed no JSON: {}", log.trim()))?;
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3's JSON")?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3: {err}");
    }
    ensure!(status.success(), "iperf3 exited with {status}");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no received throughput")?;
    let intervals = v["intervals"].as_array().cloned().unwrap_or_default();
    let stalled = intervals
        .iter()
        .filter(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0) == 0.0)
        .count();
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok(format!(
        "TCP {:.0} Mbit/s, {stalled} of {} intervals without data, {retransmits} retransmits",
        bps / 1e6,
        intervals.len()
    ))
}

/// Runs an iperf3 TCP transfer from node `from` to `dst` (server in node
/// `to`); returns the receiver's throughput in Mbit/s.
pub fn iperf(
    o: &mut Overlay,
    from: usize,
    to: usize,
    dst: &str,
    streams: u32,
    secs: u32,
) -> anyhow::Result<f64> {
    let (from_ns, to_ns) = (o.nodes[from].ns.clone(), o.nodes[to].ns.clone());
    let log = format!("iperf3-server-{}", o.nodes[to].name);
    iperf_ns(
        &mut o.lab,
        &from_ns,
        &to_ns,
        dst,
        &["-P", &streams.to_string()],
        secs,
        &log,
    )
}

/// Runs an iperf3 transfer from namespace `from_ns` to `dst` (server in
/// `to_ns`) with the client's `extra` flags (`-P 4`, `-u -b 100M`);
/// returns the receiver's throughput in Mbit/s.
pub fn iperf_ns(
    lab: &mut Lab,
    from_ns: &str,
    to_ns: &str,
    dst: &str,
    extra: &[&str],
    secs: u32,
    log: &str,
) -> anyhow::Result<f64> {
    let server = lab.spawn(to_ns, &["iperf3", "-s", "-1", "-p", "5201"], log, &[])?;
    let listening = wait_until(
        "the iperf3 server to listen",
        Duration::from_secs(5),
        || {
            let out = lab.exec(to_ns, &["ss", "-Hltn", "sport = :5201"])?;
            Ok((!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(()))
        },
    );
    let cmd = format!(
        "iperf3 -c {dst} -p 5201 -t {secs} {} -J --connect-timeout 3000",
        extra.join(" ")
    );
    let result = listening.and_then(|()| {
        let out = lab.sh(from_ns, &cmd)?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| {
                format!(
                    "iperf3 reported no received throughput: {}",
                    v["error"].as_str().unwrap_or("no error given")
                )
            })?;
        Ok(bps / 1e6)
    });
    let _ = lab.kill(server);
    result
}

pub fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The wall clock in Unix seconds (to compare with `ping -D` times).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whether node `i` has a peer entry for `fqdn`.
pub fn has_peer(o: &Overlay, i: usize, fqdn: &str) -> anyhow::Result<bool> {
    let s = o.status(i)?;
    Ok(s["peers"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["fqdn"] == fqdn)))
}

/// `text` without terminal escape sequences (colours in logs).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Unix times of ping replies (`ping -D` prefixes `[seconds.micros]`).
pub fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// The longest interval between replies that spans or follows `from`
/// (None without replies on both sides of it).
pub fn longest_gap(replies: &[f64], from: f64) -> Option<f64> {
    let before = replies.iter().rev().find(|t| **t <= from).copied()?;
    let mut last = before;
    let mut gap: Option<f64> = None;
    for &t in replies.iter().filter(|t| **t > from) {
        gap = Some(gap.unwrap_or(0.0).max(t - last));
        last = t;
    }
    gap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_replaced_or_added() {
        let dir = std::env::temp_dir().join(format!("cyphonic-lab-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cloud.toml");
        std::fs::write(
            &path,
            "domain = \"x\"\nkeepalive_secs = 15\ntrs_listen = [\n    \"0.0.0.0:4503\",\n    \"[::]:4503\",\n]\ntrs_public = []\n",
        )
        .unwrap();
        set_config_keys(
            &path,
            &[
                ("keepalive_secs", "2".into()),
                (
                    "trs_listen",
                    r#"["192.0.2.2:4503", "[2001:db8::2]:4503"]"#.into(),
                ),
                ("nms_probe_port", "4504".into()),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            "domain = \"x\"\nkeepalive_secs = 2\ntrs_listen = [\"192.0.2.2:4503\", \"[2001:db8::2]:4503\"]\ntrs_public = []\nnms_probe_port = 4504\n"
        );
    }
}
