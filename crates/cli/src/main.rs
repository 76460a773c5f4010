//! `cyphonic`: one binary for every role of the overlay.

#[cfg(unix)]
mod cloud_cmd;
mod node_cert;
#[cfg(windows)]
mod winservice;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    #[cfg(unix)]
    #[command(subcommand)]
    Cloud(cloud_cmd::CloudCmd),
    /// The node daemon and its enrollment.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The adapter: gives the overlay to general nodes on a LAN (enroll it
    /// as a node first: `cyphonic node enroll --device <adapter> ...`).
    #[cfg(unix)]
    #[command(subcommand)]
    Adapter(AdapterCmd),
    /// Show this node's state, its peers and their paths.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// What this network lets the node do: NAT kind, the cloud over UDP
    /// 4502, UDP 443 (QUIC) and TCP 443 (TLS), IPv4 and IPv6, each relay's
    /// round trip, a port-mapping router (like `tailscale netcheck`).
    /// Runs beside the daemon: its own sockets, no Login.
    Netcheck {
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
    #[cfg(unix)]
    Lab {
        /// direct | demo | bench | load | ... (an unknown name lists them)
        scenario: String,
        /// The cyphonic binary to run inside the lab (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The scenario's own options, e.g. `lab load --nodes 10000`
        /// (`lab load -- --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        options: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Enroll this machine with the cloud (device ID + password, once),
    /// or install the certificate the operator issued for its key
    /// (--certificate and --key, from `cloud device add-many`).
    Enroll {
        /// The AS: IP address or host, with an optional :port.
        #[arg(long)]
        cloud: String,
        #[arg(long)]
        device: String,
        #[arg(
            long,
            env = "CYPHONIC_DEVICE_PASSWORD",
            required_unless_present = "certificate"
        )]
        password: Option<String>,
        /// The certificate chain `cloud device add-many` wrote for this
        /// device (<device-id>.pem): installed without asking the AS.
        #[arg(long, requires = "key")]
        certificate: Option<PathBuf>,
        /// The device's key (Ed25519, PKCS#8 PEM) that the certificate is for.
        #[arg(long, requires = "certificate")]
        key: Option<PathBuf>,
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
        #[arg(long, default_value = DEFAULT_TUN)]
        tun: String,
        /// Bring up no TUN device, data plane or resolver: enroll, log in,
        /// register and signal only (hosts without a TUN driver).
        #[arg(long, conflicts_with_all = ["tun", "no_offload"])]
        no_tun: bool,
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
        /// Serve Prometheus metrics (`/metrics`) on this loopback address,
        /// e.g. 127.0.0.1:9101; off by default.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// The node daemon as a Windows service (automatic start, as
    /// LocalSystem, with the default options).
    #[cfg(windows)]
    #[command(subcommand)]
    Service(ServiceCmd),
}

#[cfg(windows)]
#[derive(Subcommand)]
enum ServiceCmd {
    /// Register the service and start it (the node must be enrolled).
    Install {
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Stop and delete the service; remove the overlay's NRPT rule.
    Uninstall {
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// What the service control manager runs.
    Run {
        #[arg(long, env = "CYPHONIC_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// The command line the service control manager starts: the executable
/// and the state directory, each quoted (both may hold spaces).
#[cfg_attr(not(windows), allow(dead_code))]
fn service_command_line(exe: &std::path::Path, state_dir: &std::path::Path) -> String {
    format!(
        "\"{}\" node service run --state-dir \"{}\"",
        exe.display(),
        state_dir.display()
    )
}

/// The daemon's options when nothing on the command line changes them.
#[cfg_attr(not(windows), allow(dead_code))]
fn default_run_options(state_dir: PathBuf) -> RunOptions {
    RunOptions {
        state_dir,
        tunnel_port: DEFAULT_TUNNEL_PORT,
        tun_name: DEFAULT_TUN.into(),
        no_tun: false,
        dns_listen: DEFAULT_DNS_LISTEN.parse().ok(),
        offload: true,
        port_mapping: true,
        keepalive: std::time::Duration::from_secs(5),
        rekey_after: std::time::Duration::from_secs(120),
        transport: None,
        quic_port: 0,
        metrics_listen: None,
    }
}

/// The TUN device's (the wintun adapter's) name.
#[cfg(unix)]
const DEFAULT_TUN: &str = "cyphonic0";
#[cfg(windows)]
const DEFAULT_TUN: &str = "cyphonic";

#[cfg(unix)]
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
        #[cfg(unix)]
        Command::Cloud(cmd) => cloud_cmd::dispatch(cmd).await?,
        Command::Node(NodeCmd::Enroll {
            cloud,
            device,
            password,
            certificate,
            key,
            ca,
            state_dir,
        }) => {
            let (addr, server_name) = parse_cloud(&cloud, DEFAULT_AS_PORT)?;
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let root = read(&ca)?;
            let state = StatePaths::new(&state_dir);
            let f = match (certificate, key, password) {
                (Some(certificate), Some(key), _) => node_cert::install(
                    &state,
                    addr,
                    &server_name,
                    &root,
                    &device,
                    &read(&certificate)?,
                    &zeroize::Zeroizing::new(read(&key)?),
                )?,
                (_, _, Some(password)) => {
                    daemon::enroll(&state, addr, &server_name, &root, &device, &password).await?
                }
                _ => anyhow::bail!("give --password, or --certificate and --key"),
            };
            println!("enrolled as {} (state in {})", f.fqdn, state_dir.display());
        }
        Command::Node(NodeCmd::Run {
            state_dir,
            port,
            tun,
            no_tun,
            dns_listen,
            no_dns,
            no_offload,
            offload: _,
            no_port_mapping,
            keepalive,
            rekey_after,
            transport,
            quic_port,
            metrics_listen,
        }) => {
            if !no_tun && !cyphonic_platform::is_root() {
                #[cfg(unix)]
                anyhow::bail!("the node daemon needs root (TUN device, resolver configuration): run it with sudo");
                #[cfg(windows)]
                anyhow::bail!("the node daemon needs an administrator (TUN adapter, NRPT rule): run it from an elevated prompt, or as the service");
            }
            daemon::run(RunOptions {
                state_dir,
                tunnel_port: port,
                tun_name: tun,
                no_tun,
                dns_listen: (!no_dns && !no_tun).then_some(dns_listen),
                offload: !no_offload,
                port_mapping: !no_port_mapping,
                keepalive: std::time::Duration::from_secs(keepalive),
                rekey_after: std::time::Duration::from_secs(rekey_after),
                transport: transport.0,
                quic_port,
                metrics_listen,
            })
            .await?;
        }
        #[cfg(windows)]
        Command::Node(NodeCmd::Service(cmd)) => match cmd {
            ServiceCmd::Install { state_dir } => {
                let exe = std::env::current_exe().context("cannot find this binary")?;
                let state_dir = std::path::absolute(&state_dir)?;
                anyhow::ensure!(
                    state_dir.join("node.toml").exists(),
                    "{} holds no enrolled node: run `cyphonic node enroll` first",
                    state_dir.display()
                );
                winservice::install(&exe, &state_dir)?;
                println!("service {} installed and started", winservice::SERVICE_NAME);
            }
            ServiceCmd::Uninstall { state_dir } => {
                if winservice::uninstall(&state_dir)? {
                    println!("service {} stopped and removed", winservice::SERVICE_NAME);
                } else {
                    println!("no service {} was installed", winservice::SERVICE_NAME);
                }
            }
            ServiceCmd::Run { state_dir } => {
                tokio::task::spawn_blocking(move || {
                    winservice::run(default_run_options(state_dir))
                })
                .await??;
            }
        },
        #[cfg(unix)]
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
        Command::Netcheck { json, state_dir } => {
            let report = cyphonic_node::netcheck::run(&state_dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", cyphonic_node::netcheck::render(&report));
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
        #[cfg(unix)]
        Command::Lab {
            scenario,
            binary,
            options,
        } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe().context("cannot find this binary")?,
            };
            // Ctrl-C leaves no namespace or daemon behind.
            cyphonic_lab::clean_up_on_signals().context("installing signal handlers")?;
            let ok = tokio::task::spawn_blocking(move || {
                cyphonic_lab::scenarios::run_with_options(&scenario, &binary, &options)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_command_line_quotes_paths_with_spaces() {
        let line = service_command_line(
            std::path::Path::new(r"C:\Program Files\cyphonic\cyphonic.exe"),
            std::path::Path::new(r"C:\ProgramData\cyphonic"),
        );
        assert_eq!(
            line,
            r#""C:\Program Files\cyphonic\cyphonic.exe" node service run --state-dir "C:\ProgramData\cyphonic""#
        );
        // What the service runs parses as the CLI it is.
        let args = ["cyphonic", "node", "run", "--state-dir", "x"];
        assert!(Cli::try_parse_from(args).is_ok());
        let options = default_run_options(PathBuf::from("x"));
        assert_eq!(options.tunnel_port, DEFAULT_TUNNEL_PORT);
        assert!(options.dns_listen.is_some_and(|a| a.is_loopback()));
        assert!(!options.no_tun);
    }
}
