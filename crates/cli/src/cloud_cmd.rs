//! The cloud's commands: `cyphonic cloud ...` (Linux and other Unix
//! systems; the cloud is not built for Windows).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use cyphonic_cloud::run::Roles;

#[derive(Subcommand)]
pub enum CloudCmd {
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
    /// Administrators of the web console (`console_listen` in cloud.toml).
    #[command(subcommand)]
    Admin(AdminCmd),
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
pub enum IntermediateCmd {
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
pub enum PolicyCmd {
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
pub enum AdminCmd {
    /// Add a console administrator. The password comes from
    /// CYPHONIC_ADMIN_PASSWORD or, with --password-stdin, the first line
    /// of standard input; without either a random one is made and printed
    /// once.
    Add {
        #[arg(long)]
        config: PathBuf,
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the console administrators.
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove a console administrator (its sessions end).
    Remove {
        #[arg(long)]
        config: PathBuf,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum GeneralNodeCmd {
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
pub enum DeviceCmd {
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
    /// Add a device for every <device-id>.csr in a folder (keys made at
    /// the factory, CSRs collected from it) and issue each its
    /// certificate at once, written to <device-id>.pem beside the CSR:
    /// no enrollment passwords to hand out. Running it again with the
    /// same CSRs adds only the new ones.
    #[command(name = "add-many")]
    AddMany {
        #[arg(long)]
        config: PathBuf,
        /// The folder of <device-id>.csr files (PKCS#10, Ed25519).
        #[arg(long, value_name = "DIR")]
        csr_dir: PathBuf,
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

pub async fn dispatch(cmd: CloudCmd) -> anyhow::Result<()> {
    match cmd {
        CloudCmd::Init {
            dir,
            domain,
            public,
            offline_root,
        } => {
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
        CloudCmd::Intermediate(IntermediateCmd::Renew { config, root }) => {
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
        CloudCmd::Run { config, role } => {
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
        CloudCmd::Device(DeviceCmd::Add {
            config,
            device_id,
            password,
        }) => {
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
        CloudCmd::Device(DeviceCmd::AddMany { config, csr_dir }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let started = std::time::Instant::now();
            let done = cyphonic_cloud::admin::add_devices_from_csrs(&cfg, &csr_dir).await?;
            println!(
                "added {} device(s) in {:.1} s{}; each one's certificate chain is {}/<device-id>.pem",
                done.added.len(),
                started.elapsed().as_secs_f64(),
                match done.already.len() {
                    0 => String::new(),
                    n => format!(" ({n} added before from the same CSRs)"),
                },
                csr_dir.display()
            );
            println!(
                "next, on each device: cyphonic node enroll --cloud <cloud address> --device <device-id> \
                 --certificate <device-id>.pem --key <its key> --ca root.pem"
            );
        }
        CloudCmd::Device(DeviceCmd::Reset {
            config,
            device_id,
            password,
        }) => {
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
        CloudCmd::GeneralNode(GeneralNodeCmd::Add {
            config,
            adapter,
            mac,
            name,
        }) => {
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
        CloudCmd::GeneralNode(GeneralNodeCmd::List { config, adapter }) => {
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
        CloudCmd::GeneralNode(GeneralNodeCmd::Remove { config, name }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::admin::remove_general_node(&cfg, &name).await?;
            println!("removed general node {name}");
        }
        CloudCmd::Device(DeviceCmd::List { config }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            for d in cyphonic_cloud::admin::list_devices(&cfg).await? {
                println!(
                    "{:<20} {:<32} {:<15} {}",
                    d.device_id, d.fqdn, d.vip4, d.vip6
                );
            }
        }
        CloudCmd::Policy(PolicyCmd::Set { config, file }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let set = cyphonic_cloud::admin::set_policy(&cfg, &file).await?;
            print!("policy version {} set:\n{}", set.version, set.summary);
        }
        CloudCmd::Admin(AdminCmd::Add {
            config,
            name,
            password_stdin,
        }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                std::env::var("CYPHONIC_ADMIN_PASSWORD").ok()
            };
            let password =
                cyphonic_cloud::admin::add_admin(&cfg, &name, password.as_deref()).await?;
            if password.generated {
                println!("administrator {name} added; its password (shown only now):");
                println!("{}", password.password);
            } else {
                println!("administrator {name} added");
            }
        }
        CloudCmd::Admin(AdminCmd::List { config }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            for a in cyphonic_cloud::admin::list_admins(&cfg).await? {
                let secs = a
                    .created_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                println!("{:<32} added {secs} (Unix time)", a.name);
            }
        }
        CloudCmd::Admin(AdminCmd::Remove { config, name }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::admin::remove_admin(&cfg, &name).await?;
            println!("administrator {name} removed");
        }
        CloudCmd::Policy(PolicyCmd::Show { config }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            match cyphonic_cloud::admin::show_policy(&cfg).await? {
                Some((version, document)) => {
                    println!("# policy version {version}");
                    print!("{document}");
                }
                None => println!("# no policy set: every device may reach every other"),
            }
        }
        CloudCmd::Revoke {
            config,
            serial,
            device,
        } => {
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
        CloudCmd::Device(DeviceCmd::Disable { config, device_id }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::admin::set_device_disabled(&cfg, &device_id, true).await?;
            println!("disabled {device_id}");
        }
        CloudCmd::Device(DeviceCmd::Enable { config, device_id }) => {
            let cfg = cyphonic_cloud::config::CloudConfig::load(&config)?;
            cyphonic_cloud::admin::set_device_disabled(&cfg, &device_id, false).await?;
            println!("enabled {device_id}");
        }
    }
    Ok(())
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
