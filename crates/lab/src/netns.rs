//! [`Lab`]: namespaces, veth links, routes, processes and a DNS server.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};

use crate::process::{self, Spawner};
use crate::wait::wait_until;

/// Where a lab reserves its prefix (tmpfs: gone after a reboot, like the
/// namespaces themselves).
const RESERVATIONS: &str = "/run/cyphonic-lab";
pub(crate) const NETNS_RUN: &str = "/run/netns";
pub(crate) const NETNS_ETC: &str = "/etc/netns";
/// First veth ifindex; well above what the kernel hands out on its own in
/// a fresh namespace, so explicit indexes never collide with automatic ones.
const FIRST_IFINDEX: u32 = 1000;
/// Linux interface names: IFNAMSIZ (16) including the NUL.
const MAX_IFNAME: usize = 15;
/// Set `CYPHONIC_LAB_KEEP=1` to keep the work directory (logs, captures).
pub(crate) const KEEP_ENV: &str = "CYPHONIC_LAB_KEEP";
const DNS_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// A lab run: a unique prefix and everything created under it.
///
/// Namespaces are named `<prefix>-<name>`; the `ns` argument of every method
/// takes either that full name or the short `<name>`, and refuses any
/// namespace the lab did not create. Veths are created inside their
/// namespaces (never in the host's), so their names only need to be unique
/// per namespace.
///
/// Drop (or [`Lab::cleanup`]) kills every spawned process (SIGTERM, SIGKILL
/// after 2 s, by PID, then reaps it), deletes the lab's namespaces, its
/// `/etc/netns/<ns>` directories and its work directory.
pub struct Lab {
    scenario: String,
    prefix: String,
    dir: PathBuf,
    reservation: PathBuf,
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    /// Files made outside the work directory, removed once the
    /// processes are gone.
    host_files: Vec<PathBuf>,
    processes: Vec<Tracked>,
    next_ifindex: u32,
    dns_servers: u32,
    captures: u32,
    spawner: Spawner,
    cleaned: bool,
}

struct Tracked {
    child: Child,
    log_name: String,
}

impl Lab {
    /// Reserves a fresh prefix (`cy` + 4 hex digits) and creates the work
    /// directory `<tmp>/cyphonic-lab-<prefix>-<scenario>`.
    pub fn new(scenario: &str) -> anyhow::Result<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("cyphonic lab needs root (network namespaces, TUN devices): run it with sudo");
        }
        ensure!(
            !scenario.is_empty()
                && scenario
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "scenario name {scenario:?} must be non-empty [A-Za-z0-9_-]"
        );
        fs::create_dir_all(RESERVATIONS).with_context(|| format!("creating {RESERVATIONS}"))?;
        let (prefix, reservation, dir) = reserve_prefix(scenario)?;
        let spawner = Spawner::new().context("starting the lab's spawner thread")?;
        tracing::info!(%prefix, scenario, dir = %dir.display(), "lab created");
        crate::interrupt::register(&prefix, &dir, &reservation);
        Ok(Lab {
            scenario: scenario.to_owned(),
            prefix,
            dir,
            reservation,
            namespaces: Vec::new(),
            etc_dirs: Vec::new(),
            host_files: Vec::new(),
            processes: Vec::new(),
            next_ifindex: FIRST_IFINDEX,
            dns_servers: 0,
            captures: 0,
            spawner,
            cleaned: false,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Removes `file` (made outside the work directory, by the lab's
    /// processes or for them) at cleanup, after the processes, or when a
    /// signal ends `cyphonic lab` ([`crate::clean_up_on_signals`]).
    pub fn remove_at_cleanup(&mut self, file: PathBuf) {
        crate::interrupt::add_file(&self.prefix, &file);
        self.host_files.push(file);
    }

    pub fn scenario(&self) -> &str {
        &self.scenario
    }

    /// The work directory: process logs, captures, files for the scenario.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The full names of the lab's namespaces, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Creates namespace `<prefix>-<name>` and returns its full name: `lo`
    /// up, IPv4 forwarding off, IPv6 on without duplicate address detection
    /// (addresses usable at once), and an `/etc/netns/<ns>/resolv.conf`
    /// naming no resolver, so nothing run in the namespace ever reads or
    /// rewrites the host's `/etc/resolv.conf`.
    pub fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "namespace name {name:?} must be non-empty [A-Za-z0-9_-]"
        );
        let full = format!("{}-{name}", self.prefix);
        ensure!(
            !self.namespaces.contains(&full),
            "namespace {full} already exists in this lab"
        );
        {
            // Not while a signal's cleanup sweeps (it would miss it).
            let _creating = crate::interrupt::creating();
            run(Command::new("ip").args(["netns", "add", &full]))?;
            self.namespaces.push(full.clone());
            self.set_resolv_conf(
                &full,
                &format!("# cyphonic lab {full}: no resolver configured\n"),
            )?;
        }
        run(Command::new("ip").args(["-n", &full, "link", "set", "lo", "up"]))?;
        self.sysctl(
            &full,
            &[
                ("net.ipv4.ip_forward", "0"),
                ("net.ipv6.conf.all.disable_ipv6", "0"),
                ("net.ipv6.conf.default.disable_ipv6", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ],
        )?;
        tracing::debug!(ns = %full, "namespace added");
        Ok(full)
    }

    /// Turns `ns` into a router: IPv4 and IPv6 forwarding on.
    pub fn router(&mut self, ns: &str) -> anyhow::Result<()> {
        let ns = self.ns(ns)?;
        self.sysctl(
            &ns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv6.conf.default.forwarding", "1"),
            ],
        )
    }

    /// Writes sysctls (`net.ipv4.ip_forward`, ...) inside `ns`.
    pub fn sysctl(&self, ns: &str, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        let ns = self.ns(ns)?;
        let mut args = vec!["sysctl", "-q", "-w"];
        let pairs: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.extend(pairs.iter().map(String::as_str));
        check(&format!("sysctl in {ns}"), self.exec(&ns, &args)?)?;
        Ok(())
    }

    /// A veth pair between two namespaces, `a_if` in `a_ns` and `b_if` in
    /// `b_ns`, with the given CIDR addresses (v4 and/or v6) on each end, both
    /// up. The ends get distinct explicit ifindexes from a counter (1000,
    /// 1001, ...): veth ends that share an index drop traffic for about a
    /// second after coming up. Segmentation offloads stay on (see
    /// [`Lab::set_offloads`]).
    pub fn link(
        &mut self,
        a_ns: &str,
        a_if: &str,
        a_addrs: &[&str],
        b_ns: &str,
        b_if: &str,
        b_addrs: &[&str],
    ) -> anyhow::Result<()> {
        let (a_ns, b_ns) = (self.ns(a_ns)?, self.ns(b_ns)?);
        check_ifname(a_if)?;
        check_ifname(b_if)?;
        let (a_index, b_index) = (self.next_ifindex, self.next_ifindex + 1);
        self.next_ifindex += 2;
        run(Command::new("ip").args([
            "-n",
            &a_ns,
            "link",
            "add",
            a_if,
            "index",
            &a_index.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            &b_ns,
            "index",
            &b_index.to_string(),
        ]))?;
        for (ns, ifname, addrs) in [(&a_ns, a_if, a_addrs), (&b_ns, b_if, b_addrs)] {
            for addr in addrs {
                let mut args = vec!["-n", ns, "addr", "add", addr, "dev", ifname];
                if addr.contains(':') {
                    args.push("nodad");
                }
                run(Command::new("ip").args(&args))?;
            }
            run(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]))?;
        }
        tracing::debug!(%a_ns, a_if, %b_ns, b_if, "veth linked");
        Ok(())
    }

    /// Turns TSO/GSO/GRO on or off on an interface. Turn them off where a
    /// test impairs traffic: with them on, loss and rate limits act on
    /// 64 KB bundles.
    pub fn set_offloads(&self, ns: &str, iface: &str, enabled: bool) -> anyhow::Result<()> {
        let ns = self.ns(ns)?;
        let state = if enabled { "on" } else { "off" };
        let out = self.exec(
            &ns,
            &[
                "ethtool", "-K", iface, "tso", state, "gso", state, "gro", state,
            ],
        )?;
        check(&format!("ethtool -K {iface} in {ns}"), out)?;
        Ok(())
    }

    /// Adds (or replaces) a route in `ns`: `dest` is `default` or a CIDR;
    /// the family follows `via`.
    pub fn route(&self, ns: &str, dest: &str, via: &str) -> anyhow::Result<()> {
        let ns = self.ns(ns)?;
        let family = if via.contains(':') { "-6" } else { "-4" };
        run(Command::new("ip").args(["-n", &ns, family, "route", "replace", dest, "via", via]))
    }

    /// Runs `sh -c cmd` in `ns`; fails, quoting stdout and stderr, when the
    /// exit status is not zero.
    pub fn sh(&self, ns: &str, cmd: &str) -> anyhow::Result<Output> {
        let ns = self.ns(ns)?;
        let out = self.exec(&ns, &["sh", "-c", cmd])?;
        check(&format!("`{cmd}` in {ns}"), out)
    }

    /// Runs a program in `ns` and returns its output, whatever its exit
    /// status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> anyhow::Result<Output> {
        let ns = self.ns(ns)?;
        ensure!(!args.is_empty(), "exec needs a program");
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {args:?} in {ns}"))
    }

    /// Starts a long-running process in `ns` with stdout and stderr
    /// appended to `<dir>/<log_name>.log`, and returns its pid. The lab
    /// tracks it: [`Lab::kill`] or the lab's cleanup stops it.
    pub fn spawn(
        &mut self,
        ns: &str,
        args: &[&str],
        log_name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<u32> {
        let ns = self.ns(ns)?;
        ensure!(!args.is_empty(), "spawn needs a program");
        let log_path = self.log_path(log_name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("spawning {args:?} in {ns}"))?;
        let pid = child.id();
        tracing::debug!(pid, %ns, ?args, log = log_name, "process spawned");
        self.processes.push(Tracked {
            child,
            log_name: log_name.to_owned(),
        });
        Ok(pid)
    }

    /// Stops a spawned process: SIGTERM, SIGKILL after 2 s, then reaps it.
    /// Fine if it already exited.
    pub fn kill(&mut self, pid: u32) -> anyhow::Result<()> {
        let i = self
            .processes
            .iter()
            .position(|p| p.child.id() == pid)
            .ok_or_else(|| anyhow!("pid {pid} is not a process of this lab"))?;
        let mut tracked = self.processes.remove(i);
        let status = process::terminate(&mut tracked.child, libc::SIGTERM)
            .with_context(|| format!("stopping pid {pid} ({})", tracked.log_name))?;
        tracing::debug!(pid, log = %tracked.log_name, ?status, "process stopped");
        Ok(())
    }

    /// The exit status of a spawned process if it has exited (it stays
    /// tracked until [`Lab::kill`] or cleanup).
    pub fn try_wait(&mut self, pid: u32) -> anyhow::Result<Option<ExitStatus>> {
        let tracked = self
            .processes
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .ok_or_else(|| anyhow!("pid {pid} is not a process of this lab"))?;
        Ok(tracked.child.try_wait()?)
    }

    /// Sets `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over
    /// `/etc/resolv.conf` for processes started in `ns` from now on. The
    /// file is rewritten in place, so processes already running see the new
    /// content too.
    pub fn set_resolv_conf(&mut self, ns: &str, content: &str) -> anyhow::Result<()> {
        let ns = self.ns(ns)?;
        let dir = Path::new(NETNS_ETC).join(&ns);
        if !self.etc_dirs.contains(&dir) {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            self.etc_dirs.push(dir.clone());
        }
        let path = dir.join("resolv.conf");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(content.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The current contents of a spawned process's log (empty if none).
    pub fn log(&self, log_name: &str) -> String {
        fs::read(self.log_path(log_name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self, log_name: &str) -> PathBuf {
        self.dir.join(format!("{log_name}.log"))
    }

    /// Starts dnsmasq in `ns` answering `records` (name → address; a name
    /// may appear once per address family) on each `listen` address, port
    /// 53, refusing everything else, and returns its pid once it answers.
    /// The listen addresses must already be configured in `ns`.
    pub fn start_dns_server(
        &mut self,
        ns: &str,
        listen: &[IpAddr],
        records: &[(&str, IpAddr)],
    ) -> anyhow::Result<u32> {
        let ns = self.ns(ns)?;
        ensure!(
            !listen.is_empty(),
            "start_dns_server needs a listen address"
        );
        self.dns_servers += 1;
        let name = format!("dnsmasq-{}-{}", self.short(&ns), self.dns_servers);
        let pid_file = self.dir.join(format!("{name}.pid"));
        let mut args: Vec<String> = [
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--log-queries",
            "--log-facility=-",
        ]
        .map(String::from)
        .into();
        args.push(format!("--pid-file={}", pid_file.display()));
        args.extend(listen.iter().map(|a| format!("--listen-address={a}")));
        args.extend(
            records
                .iter()
                .map(|(n, ip)| format!("--address=/{}/{ip}", n.trim_end_matches('.'))),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = self.spawn(&ns, &argv, &name, &[])?;

        let probe = records.first();
        let ready = wait_until("dnsmasq to answer", DNS_READY_TIMEOUT, || {
            if let Some(status) = self.try_wait(pid)? {
                bail!("dnsmasq exited ({status}): {}", self.log(&name));
            }
            for server in listen {
                let at = format!("@{server}");
                let mut dig = vec!["dig", at.as_str(), "+time=1", "+tries=1", "+short"];
                if let Some((qname, ip)) = probe {
                    dig.extend([*qname, if ip.is_ipv6() { "AAAA" } else { "A" }]);
                }
                let out = self.exec(&ns, &dig)?;
                if !out.status.success() {
                    return Ok(None);
                }
                if let Some((_, ip)) = probe {
                    let answer = String::from_utf8_lossy(&out.stdout);
                    ensure!(
                        answer.lines().any(|l| l.trim() == ip.to_string()),
                        "dnsmasq at {server} answered {answer:?}"
                    );
                }
            }
            Ok(Some(()))
        });
        ready.with_context(|| format!("log of {name}:\n{}", self.log(&name)))?;
        Ok(pid)
    }

    /// Kills the lab's processes, deletes its namespaces, `/etc/netns`
    /// entries and work directory. Idempotent; also run on drop. Keeps
    /// going after an error and returns the first.
    pub fn cleanup(&mut self) -> anyhow::Result<()> {
        if self.cleaned {
            return Ok(());
        }
        self.cleaned = true;
        let mut first_err: Option<anyhow::Error> = None;
        let mut note = |e: anyhow::Error| {
            tracing::warn!(error = %format!("{e:#}"), "lab cleanup");
            first_err.get_or_insert(e);
        };

        let mut children: Vec<&mut Child> =
            self.processes.iter_mut().map(|p| &mut p.child).collect();
        if let Err(e) = process::terminate_all(&mut children, libc::SIGTERM) {
            note(anyhow!(e).context("stopping lab processes"));
        }
        self.processes.clear();
        // Ends the spawner thread: the kernel kills any child it forked
        // that is still alive (e.g. a capture the caller never stopped).
        self.spawner.stop();

        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", &ns])) {
                note(e);
            }
        }
        for f in self.host_files.drain(..) {
            if let Err(e) = fs::remove_file(&f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    note(anyhow!(e).context(format!("removing {}", f.display())));
                }
            }
        }
        for dir in self.etc_dirs.drain(..) {
            if let Err(e) = fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    note(anyhow!(e).context(format!("removing {}", dir.display())));
                }
            }
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            tracing::info!(dir = %self.dir.display(), "keeping lab directory ({KEEP_ENV})");
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                note(anyhow!(e).context(format!("removing {}", self.dir.display())));
            }
        }
        let _ = fs::remove_file(&self.reservation);
        crate::interrupt::deregister(&self.prefix);
        tracing::info!(prefix = %self.prefix, "lab cleaned up");
        first_err.map_or(Ok(()), Err)
    }

    /// Resolves a short or full namespace name to the full name of one of
    /// this lab's namespaces.
    pub fn ns(&self, ns: &str) -> anyhow::Result<String> {
        if self.namespaces.iter().any(|n| n == ns) {
            return Ok(ns.to_owned());
        }
        let full = format!("{}-{ns}", self.prefix);
        if self.namespaces.contains(&full) {
            return Ok(full);
        }
        bail!("{ns} is not a namespace of lab {}", self.prefix)
    }

    fn short<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(&self.prefix)
            .and_then(|s| s.strip_prefix('-'))
            .unwrap_or(full)
    }

    pub(crate) fn spawn_capture(
        &mut self,
        ns: &str,
        iface: &str,
    ) -> anyhow::Result<CaptureProcess> {
        let ns = self.ns(ns)?;
        check_ifname(iface)?;
        self.captures += 1;
        let name = format!("capture-{}-{iface}-{}", self.short(&ns), self.captures);
        let pcap = self.dir.join(format!("{name}.pcap"));
        let log = self.log_path(&name);
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let pcap_arg = pcap.to_string_lossy().into_owned();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &ns, "tcpdump", "-i", iface, "-w", &pcap_arg,
        ])
        .args(["-U", "--immediate-mode", "-n", "-s", "0", "-Z", "root"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
        let child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("spawning tcpdump on {iface} in {ns}"))?;
        Ok(CaptureProcess {
            child,
            pcap,
            log,
            what: format!("tcpdump on {iface} in {ns}"),
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::error!(prefix = %self.prefix, error = %format!("{e:#}"), "lab cleanup failed");
        }
    }
}

/// What [`Lab::spawn_capture`] hands to [`crate::Capture`].
pub(crate) struct CaptureProcess {
    pub(crate) child: Child,
    pub(crate) pcap: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) what: String,
}

/// Picks a prefix no namespace, `/etc/netns` entry or live lab uses and
/// reserves it (an exclusive create, so two labs cannot both win).
fn reserve_prefix(scenario: &str) -> anyhow::Result<(String, PathBuf, PathBuf)> {
    let pid = std::process::id();
    for _ in 0..64 {
        let n = (pid.wrapping_mul(0x9e37_79b9) ^ rand::random::<u32>()) & 0xffff;
        let prefix = format!("cy{n:04x}");
        let taken = |dir: &str| {
            fs::read_dir(dir).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{prefix}-"))
                })
            })
        };
        if taken(NETNS_RUN) || taken(NETNS_ETC) {
            continue;
        }
        let reservation = Path::new(RESERVATIONS).join(&prefix);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&reservation)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "pid {pid} scenario {scenario}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!(e).context(format!("creating {}", reservation.display()))),
        }
        let dir = std::env::temp_dir().join(format!("cyphonic-lab-{prefix}-{scenario}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((prefix, reservation, dir)),
            Err(e) => {
                let _ = fs::remove_file(&reservation);
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(anyhow!(e).context(format!("creating {}", dir.display())));
                }
            }
        }
    }
    bail!("no free lab prefix after 64 tries (stale entries in {RESERVATIONS}?)")
}

fn check_ifname(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_IFNAME
            && !name.contains(|c: char| c == '/' || c.is_whitespace()),
        "interface name {name:?} must be 1 to {MAX_IFNAME} bytes without '/' or spaces"
    );
    Ok(())
}

/// Runs a command to completion; fails with its output on a non-zero exit.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    check(&what, out).map(drop)
}

fn check(what: &str, out: Output) -> anyhow::Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    bail!(
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}
