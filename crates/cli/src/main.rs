//! `cyphonic`: one binary for every role of the overlay.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cyphonic_cloud::run::Roles;
use cyphonic_node::config::{parse_cloud, StatePaths, DEFAULT_STATE_DIR};
use cyphonic_node::daemon::{
    self, RunOptions, DEFAULT_AS_PORT, DEFAULT_DNS_LISTEN, DEFAULT_TUNNEL_PORT,
};

#[derive(Parser)]
#[command(
    name = "cyphonic",
    version,
    about = "A zero-trust overlay network: stable virtual IPs and names, end-to-end encrypted"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (coloured only on a terminal; NO_COLOR turns
    /// colour off there too) or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CYPHONIC_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, filtered by `CYPHONIC_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CYPHONIC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// The cloud services: AS (authentication, CA), NMS (node management).
    #[command(subcommand)]
    Cloud(CloudCmd),
    /// The node daemon and its enrollment.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The adapter: gives the overlay to general nodes on a LAN (enroll it
    /// as a node first: `cyphonic node enroll --device <adapter> ...`).
    #[command(subcommand)]
    Adapter(AdapterCmd),
    /// Show this node's state, its peers and their paths.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Ping a peer through its tunnel: which path each reply took, and its
    /// round trip (like `tailscale ping`).
    Ping {
        /// The peer's name, e.g. n2.cyphonic.internal.
        fqdn: String,
        #[arg(short = 'c', long, default_value_t = 4)]
        count: u32,
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Build a scenario in network namespaces, check it with real tools, clean up (root only).
    Lab {
        /// direct | demo | bench
        scenario: String,
        /// The cyphonic binary to run inside the lab (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CloudCmd {
    /// Create the root CA, the AS intermediate CA, the configuration and the database.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cyphonic.internal")]
        domain: String,
        /// Addresses nodes use to reach the cloud (go into the AS certificate).
        #[arg(long = "public")]
        public: Vec<IpAddr>,
        /// Write the root CA key (and a copy of the root certificate) to this
        /// folder instead of --dir: keep it offline; the cloud runs with its
        /// intermediate alone, and the root is needed only to make a new
        /// intermediate (`cloud intermediate renew --root`).
        #[arg(long, value_name = "DIR")]
        offline_root: Option<PathBuf>,
    },
    /// The AS intermediate CA.
    #[command(subcommand)]
    Intermediate(IntermediateCmd),
    /// Run the cloud services.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// all | as | nms | trs
        #[arg(long, default_value = "all")]
        role: String,
    },
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Manage general nodes: devices without a client that an adapter
    /// serves on its LAN.
    #[command(subcommand, name = "general-node")]
    GeneralNode(GeneralNodeCmd),
    /// The access policy: which devices (and groups) may reach which, on
    /// which ports (README, "Access policy").
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Revoke a node certificate by serial (hex or decimal), or every
    /// certificate of a device (--device): its tunnels close within
    /// seconds.
    Revoke {
        #[arg(long)]
        config: PathBuf,
        /// The certificate's serial.
        #[arg(required_unless_present = "device", conflicts_with = "device")]
        serial: Option<String>,
        /// Revoke every certificate of this device instead.
        #[arg(long)]
        device: Option<String>,
    },
}

#[derive(Subcommand)]
enum IntermediateCmd {
    /// Make a new intermediate CA (fresh key, 5 years) from the root, in
    /// place of as.pem / as.key; restart the AS to use it. Nodes keep
    /// verifying: the root stays the same.
    Renew {
        #[arg(long)]
        config: PathBuf,
        /// The folder with the root key (root.key, and root.pem to check
        /// it against this cloud's); default: the cloud's data folder.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Check a policy document (TOML) and make it the policy: a running
    /// cloud applies it within seconds, withdrawing the routes it no
    /// longer allows.
    Set {
        #[arg(long)]
        config: PathBuf,
        file: PathBuf,
    },
    /// Print the policy document in force.
    Show {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum GeneralNodeCmd {
    /// Add a general node `<name>.<domain>` that adapter `--adapter` serves;
    /// it is known on the adapter's LAN by `--mac`.
    Add {
        #[arg(long)]
        config: PathBuf,
        /// The adapter's device ID (a node).
        #[arg(long)]
        adapter: String,
        /// The general node's MAC address, aa:bb:cc:dd:ee:ff.
        #[arg(long)]
        mac: String,
        name: String,
    },
    /// List general nodes with their adapter, MAC, names and VIPs.
    List {
        #[arg(long)]
        config: PathBuf,
        /// Only this adapter's.
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Remove a general node.
    Remove {
        #[arg(long)]
        config: PathBuf,
        name: String,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Add a device with a one-time enrollment password: a random one
    /// (128 bits, printed once) unless --password gives one. Its first
    /// enrollment spends it.
    Add {
        #[arg(long)]
        config: PathBuf,
        device_id: String,
        /// Choose the one-time password yourself (at least 8 characters).
        #[arg(long, env = "CYPHONIC_DEVICE_PASSWORD")]
        password: Option<String>,
    },
    /// Let a device enroll again: a new one-time enrollment password
    /// (printed once, or --password), its certificates revoked and its
    /// sessions ended.
    Reset {
        #[arg(long)]
        config: PathBuf,
        device_id: String,
        /// Choose the new one-time password yourself (at least 8 characters).
        #[arg(long, env = "CYPHONIC_DEVICE_PASSWORD")]
        password: Option<String>,
    },
    /// Disable a device: its sessions end, its peers close their tunnels
    /// with it, and it can neither enroll nor log in until enabled.
    Disable {
        #[arg(long)]
        config: PathBuf,
        device_id: String,
    },
    /// Enable a disabled device again.
    Enable {
        #[arg(long)]
        config: PathBuf,
        device_id: String,
    },
    /// List devices with their names and VIPs.
    List {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Enroll this machine with the cloud (device ID + password, once).
    Enroll {
        /// The AS: IP address or host, with an optional :port.
        #[arg(long)]
        cloud: String,
        #[arg(long)]
        device: String,
        #[arg(long, env = "CYPHONIC_DEVICE_PASSWORD")]
        password: String,
        /// The cloud's root certificate (root.pem from `cyphonic cloud init`).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Run the node daemon.
    Run {
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_TUNNEL_PORT)]
        port: u16,
        #[arg(long, default_value = "cyphonic0")]
        tun: String,
        /// Address of the local resolver (port 53).
        #[arg(long, default_value = DEFAULT_DNS_LISTEN)]
        dns_listen: IpAddr,
        /// Leave the host's DNS configuration alone.
        #[arg(long)]
        no_dns: bool,
        /// Turn off TUN segmentation offloads (virtio-net headers: TSO in,
        /// GRO out), which are on wherever the kernel accepts them.
        #[arg(long)]
        no_offload: bool,
        /// Offloads are on by default; accepted for older scripts.
        #[arg(long, hide = true, conflicts_with = "no_offload")]
        offload: bool,
        /// Do not ask the router for a port mapping (PCP, NAT-PMP or UPnP IGD) for
        /// the tunnel port.
        #[arg(long)]
        no_port_mapping: bool,
        /// Tunnel keepalive interval in seconds: holds NAT bindings and
        /// detects dead paths (after three silent intervals).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        keepalive: u64,
        /// Tunnel keys are replaced by a fresh handshake this often
        /// (seconds), and refused at one and a half times this age.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(2..=3600))]
        rekey_after: u64,
        /// How legs travel: `auto` tries native UDP, then QUIC (UDP 443)
        /// and TLS over TCP 443 when UDP is blocked; `udp`, `quic` or
        /// `tcp` forces one.
        #[arg(long, default_value = "auto", value_parser = parse_transport)]
        transport: TransportChoice,
        /// Accept QUIC legs from peers on this UDP port, so a peer whose
        /// network lets only UDP 443 out reaches this node directly
        /// (0: no listener).
        #[arg(long, default_value_t = 0)]
        quic_port: u16,
    },
}

#[derive(Subcommand)]
enum AdapterCmd {
    /// Run the adapter: log in as itself, serve its general nodes on the
    /// LAN (DHCPv4, RA + DHCPv6, DNS, ARP/ND proxy) and stand for each in
    /// the overlay.
    Run {
        /// The general nodes' LAN interface (the adapter keeps the kernel's
        /// IP stack off it).
        #[arg(long)]
        lan: String,
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = DEFAULT_TUNNEL_PORT)]
        port: u16,
        /// Tunnel keepalive interval in seconds.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        keepalive: u64,
        /// Tunnel keys are replaced by a fresh handshake this often
        /// (seconds), and refused at one and a half times this age.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(2..=3600))]
        rekey_after: u64,
        #[arg(long, default_value = "auto", value_parser = parse_transport)]
        transport: TransportChoice,
        #[arg(long, default_value_t = 0)]
        quic_port: u16,
        /// How often the general-node list is asked for again (seconds):
        /// changes reach the running adapter within this time.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        list_poll: u64,
    },
}

/// `--transport`: `auto` or a forced transport.
#[derive(Debug, Clone, Copy)]
struct TransportChoice(Option<cyphonic_node::core::Transport>);

fn parse_transport(s: &str) -> Result<TransportChoice, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(TransportChoice(None));
    }
    s.parse::<cyphonic_node::core::Transport>()
        .map(|t| TransportChoice(Some(t)))
        .map_err(|e| format!("{e} (or auto)"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cmd {
        Command::Cloud(CloudCmd::Init {
            dir,
            domain,
            public,
            offline_root,
        }) => {
            let report = cyphonic_cloud::admin::init_with_root(
                &dir,
                &domain,
                &public,
                offline_root.as_deref(),
            )
            .await?;
            println!(
                "created cloud for domain {} in {}",
                report.domain,
                report.dir.display()
            );
            println!("  configuration  {}", report.config_path.display());
            println!("  database       {}", report.database_path.display());
            match &report.offline_root {
                Some(root_dir) => println!(
                    "  root CA        {} (key {} only, not in the cloud's folder: \
                     keep that folder offline; it is needed to renew the intermediate)",
                    report.root_cert_path.display(),
                    root_dir.join("root.key").display()
                ),
                None => println!(
                    "  root CA        {} (key {}: keep it offline)",
                    report.root_cert_path.display(),
                    report.root_key_path.display()
                ),
            }
            println!("  AS (intermediate CA) {}", report.as_cert_path.display());
            println!(
                "next: cyphonic cloud device add --config {} <device-id> --password <password>",
                report.config_path.display()
            );
        }
        Command::Cloud(CloudCmd::Intermediate(IntermediateCmd::Renew { config, root })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let done = cyphonic_cloud::admin::renew_intermediate(&cfg, root.as_deref())?;
            // Days from now (negative: past).
            let days =
                |t: std::time::SystemTime| match t.duration_since(std::time::SystemTime::now()) {
                    Ok(d) => (d.as_secs() / 86_400) as i64,
                    Err(e) => -((e.duration().as_secs() / 86_400) as i64),
                };
            println!(
                "new intermediate CA {} (key {}), valid for {} days{}",
                done.cert_path.display(),
                done.key_path.display(),
                days(done.not_after),
                done.previous_not_after
                    .map(|t| format!(" (the old one: {} days left)", days(t)))
                    .unwrap_or_default()
            );
            println!("restart the AS (`cyphonic cloud run`) to issue with it");
        }
        Command::Cloud(CloudCmd::Run { config, role }) => {
            let roles = match role.as_str() {
                "all" => Roles::All,
                "as" => Roles::As,
                "nms" => Roles::Nms,
                "trs" => Roles::Trs,
                other => anyhow::bail!("unknown role {other:?}: use all, as, nms or trs"),
            };
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::run::run(cfg, roles, shutdown_signal()).await?;
        }
        Command::Cloud(CloudCmd::Device(DeviceCmd::Add {
            config,
            device_id,
            password,
        })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let added =
                cyphonic_cloud::admin::add_device(&cfg, &device_id, password.as_deref()).await?;
            let d = &added.device;
            println!(
                "added {} as {} ({} {})",
                d.device_id, d.fqdn, d.vip4, d.vip6
            );
            print_enrollment_password(&d.device_id, &added.password);
        }
        Command::Cloud(CloudCmd::Device(DeviceCmd::Reset {
            config,
            device_id,
            password,
        })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let reset =
                cyphonic_cloud::admin::reset_device(&cfg, &device_id, password.as_deref()).await?;
            let serials: Vec<String> = reset.revoked.iter().map(|s| format!("{s:x}")).collect();
            println!(
                "reset {}: revoked {} certificate(s){}{}, ended {} session(s)",
                reset.device_id,
                serials.len(),
                if serials.is_empty() { "" } else { " " },
                serials.join(" "),
                reset.ended_sessions
            );
            print_enrollment_password(&reset.device_id, &reset.password);
        }
        Command::Cloud(CloudCmd::GeneralNode(GeneralNodeCmd::Add {
            config,
            adapter,
            mac,
            name,
        })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let g = cyphonic_cloud::admin::add_general_node(&cfg, &adapter, &mac, &name).await?;
            println!(
                "added general node {} ({}) as {} ({} {}), served by {}",
                g.device.device_id,
                g.mac,
                g.device.fqdn,
                g.device.vip4,
                g.device.vip6,
                g.adapter_id
            );
        }
        Command::Cloud(CloudCmd::GeneralNode(GeneralNodeCmd::List { config, adapter })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            for g in cyphonic_cloud::admin::list_general_nodes(&cfg, adapter.as_deref()).await? {
                println!(
                    "{:<20} {:<17} {:<20} {:<32} {:<15} {}",
                    g.device.device_id,
                    g.mac,
                    g.adapter_id,
                    g.device.fqdn,
                    g.device.vip4,
                    g.device.vip6
                );
            }
        }
        Command::Cloud(CloudCmd::GeneralNode(GeneralNodeCmd::Remove { config, name })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::admin::remove_general_node(&cfg, &name).await?;
            println!("removed general node {name}");
        }
        Command::Cloud(CloudCmd::Device(DeviceCmd::List { config })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            for d in cyphonic_cloud::admin::list_devices(&cfg).await? {
                println!(
                    "{:<20} {:<32} {:<15} {}",
                    d.device_id, d.fqdn, d.vip4, d.vip6
                );
            }
        }
        Command::Cloud(CloudCmd::Policy(PolicyCmd::Set { config, file })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let set = cyphonic_cloud::admin::set_policy(&cfg, &file).await?;
            print!("policy version {} set:\n{}", set.version, set.summary);
        }
        Command::Cloud(CloudCmd::Policy(PolicyCmd::Show { config })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            match cyphonic_cloud::admin::show_policy(&cfg).await? {
                Some((version, document)) => {
                    println!("# policy version {version}");
                    print!("{document}");
                }
                None => println!("# no policy set: every device may reach every other"),
            }
        }
        Command::Cloud(CloudCmd::Revoke {
            config,
            serial,
            device,
        }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            match (serial, device) {
                (_, Some(device)) => {
                    let serials = cyphonic_cloud::admin::revoke_device(&cfg, &device).await?;
                    if serials.is_empty() {
                        println!("{device} has no certificate left to revoke");
                    }
                    for s in serials {
                        println!("revoked {s:x} ({device})");
                    }
                }
                (Some(serial), None) => {
                    let s = serial.trim_start_matches("0x");
                    let serial = u64::from_str_radix(s, 16)
                        .or_else(|_| serial.parse::<u64>())
                        .with_context(|| format!("{serial:?} is not a serial number"))?;
                    cyphonic_cloud::admin::revoke_certificate(&cfg, serial).await?;
                    println!("revoked {serial:x}");
                }
                (None, None) => anyhow::bail!("give a serial or --device"),
            }
        }
        Command::Cloud(CloudCmd::Device(DeviceCmd::Disable { config, device_id })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::admin::set_device_disabled(&cfg, &device_id, true).await?;
            println!("disabled {device_id}");
        }
        Command::Cloud(CloudCmd::Device(DeviceCmd::Enable { config, device_id })) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::admin::set_device_disabled(&cfg, &device_id, false).await?;
            println!("enabled {device_id}");
        }
        Command::Node(NodeCmd::Enroll {
            cloud,
            device,
            password,
            ca,
            state_dir,
        }) => {
            let (addr, server_name) = parse_cloud(&cloud, DEFAULT_AS_PORT)?;
            let root = std::fs::read_to_string(&ca)
                .with_context(|| format!("cannot read {}", ca.display()))?;
            let f = daemon::enroll(
                &StatePaths::new(&state_dir),
                addr,
                &server_name,
                &root,
                &device,
                &password,
            )
            .await?;
            println!("enrolled as {} (state in {})", f.fqdn, state_dir.display());
        }
        Command::Node(NodeCmd::Run {
            state_dir,
            port,
            tun,
            dns_listen,
            no_dns,
            no_offload,
            offload: _,
            no_port_mapping,
            keepalive,
            rekey_after,
            transport,
            quic_port,
        }) => {
            if !cyphonic_platform::is_root() {
                anyhow::bail!("the node daemon needs root (TUN device, resolver configuration): run it with sudo");
            }
            daemon::run(RunOptions {
                state_dir,
                tunnel_port: port,
                tun_name: tun,
                dns_listen: (!no_dns).then_some(dns_listen),
                offload: !no_offload,
                port_mapping: !no_port_mapping,
                keepalive: std::time::Duration::from_secs(keepalive),
                rekey_after: std::time::Duration::from_secs(rekey_after),
                transport: transport.0,
                quic_port,
            })
            .await?;
        }
        Command::Adapter(AdapterCmd::Run {
            lan,
            state_dir,
            port,
            keepalive,
            rekey_after,
            transport,
            quic_port,
            list_poll,
        }) => {
            if !cyphonic_platform::is_root() {
                anyhow::bail!("the adapter needs root (raw LAN socket): run it with sudo");
            }
            cyphonic_adapter::daemon::run(cyphonic_adapter::daemon::AdapterOptions {
                state_dir,
                lan,
                tunnel_port: port,
                keepalive: std::time::Duration::from_secs(keepalive),
                rekey_after: std::time::Duration::from_secs(rekey_after),
                transport: transport.0,
                quic_port,
                list_poll: std::time::Duration::from_secs(list_poll),
            })
            .await?;
        }
        Command::Status { json, state_dir } => {
            let v = daemon::query_status(&state_dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", daemon::render_status(&v));
            }
        }
        Command::Ping {
            fqdn,
            count,
            state_dir,
        } => {
            let mut answered = 0;
            for i in 0..count.max(1) {
                if i > 0 {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                let v = match daemon::query_ping(&state_dir, &fqdn).await {
                    Ok(v) => v,
                    Err(e) if i == 0 => return Err(e),
                    Err(e) => {
                        println!("no answer: {e:#}");
                        continue;
                    }
                };
                if let Some(p) = v.get("ok") {
                    answered += 1;
                    let rtt = p["rtt_us"].as_u64().unwrap_or(0) as f64 / 1000.0;
                    println!(
                        "pong from {} ({}) via {} ({}, {}) in {rtt:.2} ms",
                        p["fqdn"].as_str().unwrap_or("?"),
                        p["vip4"].as_str().unwrap_or("?"),
                        p["endpoint"].as_str().unwrap_or("?"),
                        p["path"].as_str().unwrap_or("?"),
                        p["transport"].as_str().unwrap_or("?"),
                    );
                } else {
                    println!("{}", v["error"].as_str().unwrap_or("no answer"));
                }
            }
            return Ok(if answered > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Lab { scenario, binary } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe().context("cannot find this binary")?,
            };
            let ok = tokio::task::spawn_blocking(move || {
                cyphonic_lab::scenarios::run(&scenario, &binary)
            })
            .await??;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows a generated enrollment password (once: it is stored only as a
/// hash) and how the device uses it.
fn print_enrollment_password(
    device_id: &str,
    password: &cyphonic_cloud::admin::EnrollmentPassword,
) {
    if password.generated {
        println!(
            "one-time enrollment password (shown only now): {}",
            password.password
        );
    } else {
        println!("its enrollment password is the one you chose; it works once");
    }
    println!(
        "next, on the device: cyphonic node enroll --cloud <cloud address> --device {device_id} \
         --password <that password> --ca root.pem"
    );
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
