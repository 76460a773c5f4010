//! `cyphonic lab load`: how many nodes one cloud serves, and how fast.
//!
//! ```text
//! sw (bridge) -- cloud0  2001:db8::1, 192.0.2.1: `cloud run` (AS, NMS, TRS)
//!             -- cloud1  2001:db8::3, 192.0.2.3  (--instances 2: the same
//!                        cloud, one PostgreSQL database, NMS link to cloud0)
//!             -- gen     2001:db8::2, and one address per source in
//!                        2001:db8:1::/48 (2001:db8:1:<n>::1/128, each in its
//!                        own /64: the AS and NMS count sources per /64)
//! ```
//!
//! The fleet is provisioned first, untimed, through the operator's
//! command for fleets: the lab makes every device's key and CSR, as a
//! factory would, and `cyphonic cloud device add-many` adds the devices
//! and issues their certificates. Then the load generator
//! ([`crate::loadgen`]), in this process but inside `gen`, runs the
//! simulated nodes: every one logs in at the AS (real TLS with its
//! certificate), registers at the NMS from its own address and socket
//! (the real signaling cipher, the PathChallenge answered, the NAT Probe
//! sent), keeps alive, and answers Route Directions as a responder;
//! Direction Requests between random pairs follow at rising rates until
//! the cloud saturates. Printed: Logins/s and Registrations/s with their
//! p50/p99, route directions/s completed per rate with p50/p99, errors by
//! kind, the cloud's memory per node (its RSS before the first Login and
//! after the last Registration), its CPU per phase, and the NMS counters
//! that show where its limits bit.
//!
//! The cloud side is a list of instances, the nodes spread over them
//! (node `i` logs in and registers at instance `i % n`): one on SQLite by
//! default; with `--instances 2` (or `--database postgres`) they share a
//! private PostgreSQL cluster ([`PgCluster`]: a Unix socket, durability
//! off) and link their NMSs (`[[link]]`, `docs/protocol.md` §5.19), so a
//! route between nodes of different instances is directed across the
//! link.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use cyphonic_cloud::pg_cluster::PgCluster;

use super::overlay::{rss_kib, run_ok, set_config_keys, Report, CLOUD_METRICS};
use crate::loadgen::{self, Instance, LoadReport, Phase, PhaseReport, Plan, SimDevice};
use crate::{wait_until, Lab};

/// The generator's address on the cloud's link.
const GEN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The simulated nodes' sources: `2001:db8:1:<n>::1`, a /64 each.
const SOURCES_PREFIX: &str = "2001:db8:1::/48";
/// At most this many sources: the /64s of [`SOURCES_PREFIX`].
const MAX_SOURCES: usize = 65_536;
/// The tunnel port of the first node on a source; the next take the ports
/// after it.
const TUNNEL_PORT: u16 = 4501;
const AS_PORT: u16 = 4501;
/// Cloud instances at most (their addresses are 2001:db8::1, ::3, ...).
const MAX_INSTANCES: usize = 8;
/// Where each instance's NMS link listens.
const LINK_PORT: u16 = 4510;
/// Rate steps without `--rates`: doubling from 250 per second.
const DEFAULT_RATES: [u32; 8] = [250, 500, 1000, 2000, 4000, 8000, 16_000, 32_000];

/// `cyphonic lab load [OPTIONS]`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "cyphonic lab load",
    about = "Simulated nodes with real keys log in, register and ask for routes at rising rates against the cloud"
)]
pub struct LoadOptions {
    /// Simulated nodes, each with its own key, certificate, session,
    /// address and socket.
    #[arg(long, default_value_t = 1000, env = "CYPHONIC_LOAD_NODES")]
    pub nodes: usize,
    /// Direction Requests per second, one step each, e.g. 100,200,400
    /// (default: doubling from 250 up to 32000); the steps stop after the
    /// first that saturates.
    #[arg(long, value_delimiter = ',', env = "CYPHONIC_LOAD_RATES")]
    pub rates: Vec<u32>,
    /// Seconds each rate step lasts.
    #[arg(long, default_value_t = 5, env = "CYPHONIC_LOAD_STEP_SECS")]
    pub step_secs: u64,
    /// Simulated nodes behind one source address (its own /64; the nodes
    /// take consecutive ports from 4501).
    #[arg(long, default_value_t = 1, env = "CYPHONIC_LOAD_NODES_PER_SOURCE")]
    pub nodes_per_source: usize,
    /// Logins under way at once per instance. They all come from the
    /// generator's one address (a node's Login does not choose its
    /// source), and the AS serves at most 16 connections from one source,
    /// each until it has read the client's close: at 16 some are cut off.
    #[arg(long, default_value_t = 8)]
    pub login_concurrency: usize,
    /// Registrations under way at once.
    #[arg(long, default_value_t = 256)]
    pub register_window: usize,
    /// Cloud instances, the nodes spread over them; more than one share a
    /// PostgreSQL database and link their NMSs.
    #[arg(long, default_value_t = 1, env = "CYPHONIC_LOAD_INSTANCES")]
    pub instances: usize,
    /// The cloud's database: sqlite (one instance only) or postgres (a
    /// private cluster the lab starts; durability off). Default: sqlite
    /// for one instance, postgres for more.
    #[arg(long, value_parser = ["sqlite", "postgres"], env = "CYPHONIC_LOAD_DATABASE")]
    pub database: Option<String>,
}

impl LoadOptions {
    fn rates(&self) -> Vec<u32> {
        if self.rates.is_empty() {
            DEFAULT_RATES.to_vec()
        } else {
            self.rates.clone()
        }
    }

    fn postgres(&self) -> bool {
        match self.database.as_deref() {
            Some(db) => db == "postgres",
            None => self.instances > 1,
        }
    }

    fn database_name(&self) -> &'static str {
        if self.postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    fn sources(&self) -> usize {
        self.nodes.div_ceil(self.nodes_per_source.max(1))
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.nodes >= 2, "--nodes: at least 2");
        ensure!(
            self.nodes_per_source >= 1 && self.nodes_per_source <= 1000,
            "--nodes-per-source: 1 to 1000"
        );
        ensure!(
            self.sources() <= MAX_SOURCES,
            "{} sources do not fit {SOURCES_PREFIX}: raise --nodes-per-source",
            self.sources()
        );
        ensure!(
            self.rates().iter().all(|r| *r > 0),
            "--rates: positive numbers"
        );
        ensure!(self.step_secs >= 1, "--step-secs: at least 1");
        ensure!(
            (1..=MAX_INSTANCES).contains(&self.instances),
            "--instances: 1 to {MAX_INSTANCES}"
        );
        ensure!(
            self.instances == 1 || self.postgres(),
            "--instances {}: several instances share one PostgreSQL database, not an SQLite file",
            self.instances
        );
        Ok(())
    }
}

/// Runs the scenario with its command-line options; Ok(true) when every
/// check passed (or help was asked for).
pub fn run(bin: &Path, args: &[String]) -> anyhow::Result<bool> {
    let opts = match LoadOptions::try_parse_from(
        std::iter::once("cyphonic lab load".to_owned()).chain(args.iter().cloned()),
    ) {
        Ok(o) => o,
        Err(e) if !e.use_stderr() => {
            print!("{e}");
            return Ok(true);
        }
        Err(e) => bail!("{e}"),
    };
    opts.check()?;
    let mut report = Report::default();
    println!(
        "load: {} simulated nodes ({} per source address) against {} cloud instance(s) on {}",
        opts.nodes,
        opts.nodes_per_source,
        opts.instances,
        opts.database_name()
    );
    if let Err(e) = scenario(bin, &opts, &mut report) {
        report.check("scenario", Err(e));
    }
    println!("load: {} passed, {} failed", report.passed, report.failed);
    Ok(report.ok())
}

/// One cloud instance in the lab.
struct CloudInstance {
    /// `cloud<k>`: its namespace's short name, its log's name.
    name: String,
    ns: String,
    dir: PathBuf,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    pid: Option<u32>,
}

impl CloudInstance {
    fn config(&self) -> String {
        self.dir.join("cloud.toml").to_string_lossy().into_owned()
    }
}

/// The cloud's resident memory and CPU time at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    phase: Phase,
    at: Instant,
    rss_kib: u64,
    cpu: Duration,
    /// This process's: the load generator's, mostly.
    gen_cpu: Duration,
}

fn scenario(bin: &Path, opts: &LoadOptions, report: &mut Report) -> anyhow::Result<()> {
    let started = Instant::now();
    let bin_s = bin.to_string_lossy().into_owned();
    // Made before the lab, so dropped after it: the clouds stop first.
    let pg = if opts.postgres() {
        Some(PgCluster::start().context("a private PostgreSQL (scripts/deps.sh installs it)")?)
    } else {
        None
    };
    let database_url = pg
        .as_ref()
        .map(|pg| pg.create_database("cyphonic"))
        .transpose()?;
    let mut lab = Lab::new("load")?;
    lab.add_ns("sw")?;
    lab.sh("sw", "ip link add br0 type bridge && ip link set br0 up")?;
    let gen_ns = lab.add_ns("gen")?;
    lab.link(
        "gen",
        "eth0",
        &[&format!("{GEN_V6}/64"), "192.0.2.2/24"],
        "sw",
        "pgen",
        &[],
    )?;
    lab.sh("sw", "ip link set pgen master br0")?;
    let mut clouds = Vec::new();
    for k in 0..opts.instances {
        let host = 1 + 2 * k as u8;
        let v4 = Ipv4Addr::new(192, 0, 2, host);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host.into());
        let name = format!("cloud{k}");
        let ns = lab.add_ns(&name)?;
        let port = format!("pc{k}");
        lab.link(
            &name,
            "eth0",
            &[&format!("{v6}/64"), &format!("{v4}/24")],
            "sw",
            &port,
            &[],
        )?;
        lab.sh("sw", &format!("ip link set {port} master br0"))?;
        lab.sh(
            &name,
            &format!("ip -6 route add {SOURCES_PREFIX} via {GEN_V6}"),
        )?;
        clouds.push(CloudInstance {
            dir: lab.dir().join(&name),
            name,
            ns,
            v4,
            v6,
            pid: None,
        });
    }

    // The nodes' addresses: one per source, each in a /64 of its own.
    let sources: Vec<Ipv6Addr> = (0..opts.sources())
        .map(|n| Ipv6Addr::new(0x2001, 0xdb8, 1, n as u16, 0, 0, 0, 1))
        .collect();
    let batch = lab.dir().join("sources.ip");
    let mut text = String::new();
    for a in &sources {
        let _ = writeln!(text, "address add {a}/128 dev eth0 nodad");
    }
    std::fs::write(&batch, text).context("writing the sources' batch")?;
    let out = lab.exec(&gen_ns, &["ip", "-batch", &batch.to_string_lossy()])?;
    ensure!(
        out.status.success(),
        "adding {} addresses: {}",
        sources.len(),
        String::from_utf8_lossy(&out.stderr)
    );

    // The cloud: initialised once; its database and CA serve every
    // instance.
    let cloud = &clouds[0];
    let publics = [cloud.v6.to_string(), cloud.v4.to_string()];
    let dir_s = cloud.dir.to_string_lossy().into_owned();
    run_ok(
        &lab,
        &cloud.ns,
        &[
            &bin_s,
            "cloud",
            "init",
            "--dir",
            &dir_s,
            "--public",
            &publics[0],
            "--public",
            &publics[1],
        ],
    )?;
    set_config_keys(
        &cloud.dir.join("cloud.toml"),
        &[("metrics_listen", format!("\"{CLOUD_METRICS}\""))],
    )?;
    if let Some(url) = &database_url {
        set_config_keys(
            &cloud.dir.join("cloud.toml"),
            &[("database", format!("{url:?}"))],
        )?;
    }

    // Provisioning, untimed: keys and CSRs as a factory makes them, the
    // devices added with their certificates by the operator's command.
    let fleet_dir = lab.dir().join("fleet");
    std::fs::create_dir_all(&fleet_dir)?;
    let t = Instant::now();
    let mut keys = Vec::with_capacity(opts.nodes);
    for i in 0..opts.nodes {
        let id = device_id(i);
        let key = cyphonic_pki::NodeKey::generate()?;
        let csr = key.csr_pem(&format!("{id}.{}", super::overlay::DOMAIN))?;
        std::fs::write(fleet_dir.join(format!("{id}.csr")), csr)?;
        keys.push(key.to_pem());
    }
    let made = t.elapsed();
    let t = Instant::now();
    let fleet_s = fleet_dir.to_string_lossy().into_owned();
    let cfg = cloud.config();
    let added = run_ok(
        &lab,
        &cloud.ns,
        &[
            &bin_s,
            "cloud",
            "device",
            "add-many",
            "--config",
            &cfg,
            "--csr-dir",
            &fleet_s,
        ],
    )?;
    let provisioned = t.elapsed();
    ensure!(
        added.starts_with(&format!("added {} device(s)", opts.nodes)),
        "device add-many: {added}"
    );
    let mut devices = Vec::with_capacity(opts.nodes);
    for (i, key_pem) in keys.into_iter().enumerate() {
        let id = device_id(i);
        let chain_pem = std::fs::read_to_string(fleet_dir.join(format!("{id}.pem")))
            .with_context(|| format!("{id}'s certificate"))?;
        let per = opts.nodes_per_source.max(1);
        devices.push(SimDevice {
            fqdn: format!("{id}.{}", super::overlay::DOMAIN),
            device_id: id,
            key_pem,
            chain_pem,
            source: SocketAddr::new(IpAddr::V6(sources[i / per]), TUNNEL_PORT + (i % per) as u16),
        });
    }
    report.check(
        &format!(
            "{} devices provisioned from factory keys (`cloud device add-many`, untimed)",
            opts.nodes
        ),
        Ok(format!(
            "keys and CSRs made in {:.1} s, devices added and certificates issued in {:.1} s",
            made.as_secs_f64(),
            provisioned.as_secs_f64()
        )),
    );

    if clouds.len() > 1 {
        link_instances(&clouds)?;
    }
    for c in &mut clouds {
        let cfg = c.config();
        c.pid = Some(lab.spawn(
            &c.ns,
            &[&bin_s, "cloud", "run", "--config", &cfg],
            &c.name,
            &[],
        )?);
    }
    for c in &clouds {
        wait_until("the cloud to listen", Duration::from_secs(20), || {
            let out = lab.exec(&c.ns, &["ss", "-Hltn", &format!("sport = :{AS_PORT}")])?;
            let metrics = lab.exec(
                &c.ns,
                &["curl", "-sf", &format!("http://{CLOUD_METRICS}/metrics")],
            )?;
            Ok((!out.stdout.is_empty() && metrics.status.success()).then_some(()))
        })?;
        if clouds.len() > 1 {
            wait_until(
                &format!("{}'s NMS links up", c.name),
                Duration::from_secs(20),
                || {
                    let up = lab.log(&c.name).matches("NMS link up").count();
                    Ok((up >= clouds.len() - 1).then_some(()))
                },
            )?;
        }
    }
    let pids: Vec<u32> = clouds.iter().filter_map(|c| c.pid).collect();
    let root_pem = std::fs::read_to_string(clouds[0].dir.join("root.pem"))?;
    let instances: Vec<Instance> = clouds
        .iter()
        .map(|c| Instance {
            as_addr: SocketAddr::new(IpAddr::V6(c.v6), AS_PORT),
            server_name: c.v6.to_string(),
        })
        .collect();
    let plan = Plan {
        login_concurrency: opts.login_concurrency,
        register_window: opts.register_window,
        rates: opts.rates(),
        step: Duration::from_secs(opts.step_secs),
    };
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let recorder = samples.clone();
    let measured = pids.clone();
    let on_phase = move |phase| {
        // The cloud: every instance's process together.
        let sample = Sample {
            phase,
            at: Instant::now(),
            rss_kib: measured.iter().filter_map(|p| rss_kib(*p)).sum(),
            cpu: measured.iter().filter_map(|p| cpu_time(*p)).sum(),
            gen_cpu: cpu_time(std::process::id()).unwrap_or_default(),
        };
        recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
    };
    let netns = Path::new("/run/netns").join(&gen_ns);
    let load = loadgen::run_in_namespace(&netns, devices, instances, root_pem, plan, on_phase)?;
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut nms = std::collections::BTreeMap::<String, u64>::new();
    let mut logs = String::new();
    for c in &clouds {
        for (k, v) in nms_counters(&lab, &c.ns).unwrap_or_default() {
            *nms.entry(k).or_default() += v;
        }
        logs.push_str(&lab.log(&c.name));
        if let Some(pid) = c.pid {
            if let Some(status) = lab.try_wait(pid)? {
                bail!("{} exited ({status}):\n{}", c.name, lab.log(&c.name));
            }
        }
    }

    print_table(&load, &samples, opts.nodes, clouds.len());
    print_limits(&nms, &load, &logs);
    checks(report, &load, &nms, opts.nodes);
    println!("{}", summary(&load, &samples, opts));
    println!("load: {:.1} s in all", started.elapsed().as_secs_f64());
    Ok(())
}

/// Makes `clouds[1..]` further instances of `clouds[0]` (initialised,
/// its `database` a PostgreSQL URL): the same CA and database, each its
/// own name, addresses and NMS link to every other.
fn link_instances(clouds: &[CloudInstance]) -> anyhow::Result<()> {
    for c in &clouds[1..] {
        super::nat::copy_dir(&clouds[0].dir, &c.dir)?;
        set_config_keys(
            &c.dir.join("cloud.toml"),
            &[
                ("data_dir", format!("{:?}", c.dir.to_string_lossy())),
                ("public_addrs", format!("[\"{}\", \"{}\"]", c.v6, c.v4)),
            ],
        )?;
    }
    for c in clouds {
        let path = c.dir.join("cloud.toml");
        set_config_keys(
            &path,
            &[
                ("instance", format!("{:?}", c.name)),
                ("link_listen", format!("\"[{}]:{LINK_PORT}\"", c.v6)),
            ],
        )?;
        // `[[link]]` tables go after every key.
        let mut text = std::fs::read_to_string(&path)?;
        for other in clouds.iter().filter(|o| o.name != c.name) {
            let _ = write!(
                text,
                "\n[[link]]\naddr = \"[{}]:{LINK_PORT}\"\npublic_addrs = [\"{}\", \"{}\"]\n",
                other.v6, other.v6, other.v4
            );
        }
        std::fs::write(&path, text)?;
    }
    Ok(())
}

fn device_id(i: usize) -> String {
    format!("n{i:05}")
}

/// User plus system CPU time of process `pid`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces: state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// The NMS's counters from the cloud's /metrics, by name without the
/// `cyphonic_cloud_nms_` prefix and `_total` suffix.
fn nms_counters(lab: &Lab, ns: &str) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let out = lab.sh(ns, &format!("curl -sSf http://{CLOUD_METRICS}/metrics"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            let name = name.strip_prefix("cyphonic_cloud_nms_")?;
            let name = name.strip_suffix("_total").unwrap_or(name);
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0))
}

fn errors(e: &loadgen::Errors) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table row; `rate` false leaves the per-second column empty (a
/// phase that follows another, not paced by itself).
fn phase_row(name: &str, p: &PhaseReport, rate: bool) -> String {
    format!(
        "  {name:<26} {:>6}/{:<6} {:>9} {:>8} {:>8}  {}{}",
        p.ok,
        p.nodes,
        if rate {
            format!("{:.1}", p.rate())
        } else {
            String::new()
        },
        ms(p.latency.percentile(50.0)),
        ms(p.latency.percentile(99.0)),
        errors(&p.errors),
        if p.retransmissions > 0 {
            format!(" ({} retransmissions)", p.retransmissions)
        } else {
            String::new()
        }
    )
}

fn sample(samples: &[Sample], phase: Phase) -> Option<Sample> {
    samples.iter().find(|s| s.phase == phase).copied()
}

fn print_table(load: &LoadReport, samples: &[Sample], nodes: usize, instances: usize) {
    println!(
        "\n  {:<26} {:>13} {:>9} {:>8} {:>8}  errors",
        "", "done", "per s", "p50 ms", "p99 ms"
    );
    println!("{}", phase_row("Login (AS, TLS)", &load.login, true));
    println!(
        "{}",
        phase_row("Registration (NMS)", &load.registration, true)
    );
    println!(
        "{}",
        phase_row("NAT Probe after it", &load.nat_probe, false)
    );
    for s in &load.steps {
        println!(
            "  {:<26} {:>6}/{:<6} {:>9.1} {:>8} {:>8}  {}{}{}",
            format!("route directions {}/s", s.rate),
            s.answered,
            s.sent,
            s.completed_rate(),
            ms(s.latency.percentile(50.0)),
            ms(s.latency.percentile(99.0)),
            errors(&s.errors),
            if s.retransmissions > 0 {
                format!(" ({} retransmissions)", s.retransmissions)
            } else {
                String::new()
            },
            if s.saturated() { "  <- saturated" } else { "" }
        );
    }
    if instances > 1 {
        let (across, sent): (u64, u64) = load
            .steps
            .iter()
            .fold((0, 0), |(a, s), step| (a + step.across, s + step.sent));
        println!("  route directions between nodes of different instances (over the NMS link): {across} of {sent}");
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    if let (Some(a), Some(b)) = (
        sample(samples, Phase::Start),
        sample(samples, Phase::Registered),
    ) {
        let last = samples.last().copied().unwrap_or(b);
        println!(
            "\n  cloud memory (RSS{}): {:.1} MiB before the first Login, {:.1} MiB with {} nodes \
             registered ({:.2} KiB per node), {:.1} MiB at the end",
            if instances > 1 {
                format!(", {instances} instances together, the database apart")
            } else {
                String::new()
            },
            mib(a.rss_kib),
            mib(b.rss_kib),
            load.registration.ok,
            b.rss_kib.saturating_sub(a.rss_kib) as f64 / nodes.max(1) as f64,
            mib(last.rss_kib)
        );
    }
    // CPU per phase, as a share of one core: the cloud's, per item, and
    // the generator's (this process) beside it, on the same two cores.
    let mut prev: Option<Sample> = None;
    for s in samples {
        let Some(p) = prev.replace(*s) else { continue };
        let wall = s.at.saturating_duration_since(p.at).as_secs_f64().max(1e-9);
        let cloud = s.cpu.saturating_sub(p.cpu).as_secs_f64();
        let generator = s.gen_cpu.saturating_sub(p.gen_cpu).as_secs_f64();
        let (what, items) = match s.phase {
            Phase::LoggedIn => ("Login".to_owned(), load.login.ok as f64),
            Phase::Registered => ("Registration".to_owned(), load.registration.ok as f64),
            Phase::Step(n) => (
                format!(
                    "route directions {}/s",
                    load.steps.get(n).map_or(0, |s| s.rate)
                ),
                load.steps.get(n).map_or(0.0, |s| s.answered as f64),
            ),
            Phase::Start | Phase::Settled => continue,
        };
        println!(
            "  CPU during {what}: cloud {:.0} % of a core ({:.0} µs each), generator {:.0} %",
            100.0 * cloud / wall,
            1e6 * cloud / items.max(1.0),
            100.0 * generator / wall
        );
    }
    println!(
        "  KeepAlives: {} sent, {} answered, {} unanswered; {} ReRegister; PathChallenges answered: {}; \
         Route Directions confirmed as responder: {}",
        load.keepalives_sent,
        load.keepalives_acked,
        load.keepalive_timeouts,
        load.reregisters,
        load.path_challenges,
        load.confirmations
    );
    println!(
        "  route directions measured from {} s after the last Registration (every node's first \
         KeepAlive); Registrations answered after {} ms or later: {}, nodes challenged again \
         before the answer: {}",
        load.settle.as_secs(),
        loadgen::PATH_CHALLENGE_RETRANSMIT.as_millis(),
        load.slow_registrations,
        load.challenged_early
    );
    if load.slow_registrations > 0 || load.challenged_early > 0 {
        println!(
            "    (the NMS challenges an address on trial every {} ms, also while its Registration \
             waits for the replay floor to be stored; an echo that arrives before the Registration \
             takes effect validates the Registration when it does: slow answers are the floor \
             writes queueing)",
            loadgen::PATH_CHALLENGE_RETRANSMIT.as_millis()
        );
    }
    if !load.rx_errors.is_empty() {
        println!("  datagrams the nodes dropped: {}", errors(&load.rx_errors));
    }
}

/// The NMS's own account: what it did, and where its limits bit.
fn print_limits(nms: &std::collections::BTreeMap<String, u64>, load: &LoadReport, cloud_log: &str) {
    let n = |k: &str| nms.get(k).copied().unwrap_or(0);
    println!(
        "  NMS: {} registrations, {} session lookups, {} paths validated, {} route directions, \
         {} direction failures, {} held for an address on trial",
        n("registrations"),
        n("lookups"),
        n("paths_validated"),
        n("directions"),
        n("direction_failures"),
        n("directions_held")
    );
    let limited: Vec<String> = [
        (
            "lookups_limited",
            "session lookups over a source's or the total rate",
        ),
        (
            "directions_limited",
            "Direction Requests over a session's or a target's rate",
        ),
        (
            "directions_coalesced",
            "Direction Requests served by the other end's route",
        ),
        (
            "tx_unvalidated_limited",
            "datagrams to unvalidated addresses held back",
        ),
        ("rx_bad", "bad datagrams"),
        ("rx_below_floor", "datagrams below a replay floor"),
    ]
    .iter()
    .filter(|(k, _)| n(k) > 0)
    .map(|(k, what)| format!("{} {what} ({k})", n(k)))
    .collect();
    if limited.is_empty() {
        println!("  NMS limits: none bit (no session lookup or Direction Request refused)");
    } else {
        println!("  NMS limits that bit: {}", limited.join("; "));
    }
    let login_refused: u64 = load
        .login
        .errors
        .iter()
        .filter(|(k, _)| k.starts_with("refused") || k.starts_with("IO"))
        .map(|(_, n)| n)
        .sum();
    let over_source = cloud_log
        .lines()
        .filter(|l| l.contains("too many connections from this source"))
        .count();
    if login_refused > 0 || over_source > 0 {
        println!(
            "  AS limits that bit: {login_refused} Login attempts refused or cut off; \
             {over_source} connections over the per-source limit (MAX_CONNECTIONS_PER_SOURCE)"
        );
    } else {
        println!("  AS limits: none bit");
    }
}

fn checks(
    report: &mut Report,
    load: &LoadReport,
    nms: &std::collections::BTreeMap<String, u64>,
    nodes: usize,
) {
    let l = &load.login;
    report.check(
        "every node logged in at the AS (TLS with its certificate), no error",
        (|| {
            ensure!(
                l.ok == nodes && l.errors.is_empty(),
                "{}/{nodes}: {}",
                l.ok,
                errors(&l.errors)
            );
            Ok(format!(
                "{} in {:.1} s: {:.0}/s, p50 {} ms, p99 {} ms",
                l.ok,
                l.elapsed.as_secs_f64(),
                l.rate(),
                ms(l.latency.percentile(50.0)),
                ms(l.latency.percentile(99.0))
            ))
        })(),
    );
    let r = &load.registration;
    report.check(
        "every node registered at the NMS: PathChallenge answered, NAT Probe answered, no error",
        (|| {
            ensure!(
                r.ok == nodes && r.errors.is_empty(),
                "{}/{nodes}: {}",
                r.ok,
                errors(&r.errors)
            );
            ensure!(
                load.nat_probe.ok == nodes,
                "NAT Probes: {}/{nodes} answered, {}",
                load.nat_probe.ok,
                errors(&load.nat_probe.errors)
            );
            let validated = nms.get("paths_validated").copied().unwrap_or(0);
            ensure!(
                load.path_challenges >= nodes as u64 && validated >= nodes as u64,
                "{} PathChallenges answered, {validated} paths validated",
                load.path_challenges
            );
            Ok(format!(
                "{} in {:.1} s: {:.0}/s, p50 {} ms, p99 {} ms",
                r.ok,
                r.elapsed.as_secs_f64(),
                r.rate(),
                ms(r.latency.percentile(50.0)),
                ms(r.latency.percentile(99.0))
            ))
        })(),
    );
    report.check(
        "route directions at the lowest rate: every Direction Request answered with a Route Direction",
        (|| {
            let s = load.steps.first().context("no rate step ran")?;
            ensure!(
                s.answered == s.sent && s.sent > 0 && s.errors.is_empty(),
                "{}/{} answered: {}",
                s.answered,
                s.sent,
                errors(&s.errors)
            );
            Ok(format!(
                "{}/s: {} answered, p50 {} ms, p99 {} ms",
                s.rate,
                s.answered,
                ms(s.latency.percentile(50.0)),
                ms(s.latency.percentile(99.0))
            ))
        })(),
    );
    match load.steps.iter().find(|s| s.saturated()) {
        None => {
            report.check(
                "no error or timeout at any rate, KeepAlives all answered",
                (|| {
                    ensure!(
                        load.keepalive_timeouts == 0 && load.reregisters == 0,
                        "{} KeepAlives unanswered, {} ReRegister",
                        load.keepalive_timeouts,
                        load.reregisters
                    );
                    let top = load.steps.last().context("no rate step ran")?;
                    Ok(format!(
                        "up to {}/s: {:.0} route directions/s completed, p99 {} ms",
                        top.rate,
                        top.completed_rate(),
                        ms(top.latency.percentile(99.0))
                    ))
                })(),
            );
        }
        Some(s) => println!(
            "  saturated at {}/s offered: {:.0}/s completed, {}",
            s.rate,
            s.completed_rate(),
            errors(&s.errors)
        ),
    }
}

/// The one line to quote.
fn summary(load: &LoadReport, samples: &[Sample], opts: &LoadOptions) -> String {
    let best = load
        .steps
        .iter()
        .filter(|s| !s.saturated())
        .max_by_key(|s| s.rate);
    let per_node = match (
        sample(samples, Phase::Start),
        sample(samples, Phase::Registered),
    ) {
        (Some(a), Some(b)) => format!(
            "{:.2} KiB of cloud memory per node",
            b.rss_kib.saturating_sub(a.rss_kib) as f64 / opts.nodes.max(1) as f64
        ),
        _ => "cloud memory not measured".into(),
    };
    format!(
        "load summary: {} nodes, {} instance(s) on {}: Login {:.0}/s (p50 {} ms, p99 {} ms), \
         Registration {:.0}/s (p50 {} ms, p99 {} ms), route directions {}, {per_node}",
        opts.nodes,
        opts.instances,
        opts.database_name(),
        load.login.rate(),
        ms(load.login.latency.percentile(50.0)),
        ms(load.login.latency.percentile(99.0)),
        load.registration.rate(),
        ms(load.registration.latency.percentile(50.0)),
        ms(load.registration.latency.percentile(99.0)),
        match best {
            Some(s) => format!(
                "{:.0}/s without error (p50 {} ms, p99 {} ms{})",
                s.completed_rate(),
                ms(s.latency.percentile(50.0)),
                ms(s.latency.percentile(99.0)),
                match load.steps.iter().find(|s| s.saturated()) {
                    Some(sat) => format!("; saturated at {}/s offered", sat.rate),
                    None => String::new(),
                }
            ),
            None => "none without error".into(),
        }
    )
}
