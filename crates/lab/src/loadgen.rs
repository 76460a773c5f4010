//! The load generator of `cyphonic lab load`: many simulated nodes in one
//! process, each with its own key, certificate, session and UDP socket,
//! doing towards the cloud what a node daemon does, and timing it:
//!
//! - the real Login at the AS ([`cyphonic_node::as_client::login`]: TLS
//!   with the node's certificate, a session ID and common key back);
//! - the Registration, sealed with the real signaling cipher
//!   ([`SignalCipher`]), answering the NMS's PathChallenge (twice, as a
//!   node does) and sending the NAT Probe its answer asks for;
//! - KeepAlives every `keepalive_secs` from then on;
//! - Direction Requests, and as a responder the Route Direction
//!   Confirmation (`docs/protocol.md` §5.3).
//!
//! Requests are retransmitted as a node's are (250 ms, doubling up to
//! 2 s, each copy sealed again; §4.6) until their deadline. A simulated
//! node has no data plane: it never sends a Tunnel Request.
//!
//! The cloud side is a list of [`Instance`]s; node `i` logs in (and so
//! registers) at instance `i % instances`. [`run_in_namespace`] runs the
//! whole load from a thread that joined the lab's generator namespace, so
//! every socket lives there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cyphonic_node::as_client::{self, AsClientError, LoginInfo};
use cyphonic_proto::handshake::StaticKeypair;
use cyphonic_proto::ids::SessionId;
use cyphonic_proto::signal::{
    Envelope, Message, RegistrationRequest, Role, SignalCipher, SignalError,
};
use cyphonic_proto::transport::Transport;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// First retransmission of a request; doubles up to [`RETRANSMIT_CAP`]
/// (a node's schedule, `docs/protocol.md` §4.6).
const RETRANSMIT_FIRST: Duration = Duration::from_millis(250);
const RETRANSMIT_CAP: Duration = Duration::from_secs(2);
/// A Registration, NAT Probe or Direction Request unanswered this long
/// has failed (a node's deadlines).
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Login attempts per simulated node; a node retries after 0.5 s,
/// doubling (§5.1).
const LOGIN_ATTEMPTS: u32 = 3;
/// How long a rate step's last requests may take before the next step.
const DRAIN: Duration = Duration::from_secs(6);
/// The NMS challenges an address on trial again after this long
/// (`PATH_CHALLENGE_RETRANSMIT`, `docs/protocol.md` §4.7).
pub const PATH_CHALLENGE_RETRANSMIT: Duration = Duration::from_millis(150);
/// Requests are sent in slices of this much time.
const TICK: Duration = Duration::from_millis(5);

/// One cloud instance: its AS, where node Logins go; the NMS is the
/// `nms_port` each Login names, on the AS's IP address.
#[derive(Debug, Clone)]
pub struct Instance {
    pub as_addr: SocketAddr,
    /// The name (here an IP address) the AS's certificate carries.
    pub server_name: String,
}

/// One simulated device: its identity as provisioned, and the address its
/// signaling socket binds to.
pub struct SimDevice {
    pub device_id: String,
    pub fqdn: String,
    pub key_pem: zeroize::Zeroizing<String>,
    /// Node certificate, then the intermediate.
    pub chain_pem: String,
    pub source: SocketAddr,
}

/// How hard to push.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Logins under way at once, per instance.
    pub login_concurrency: usize,
    /// Registrations under way at once, in all.
    pub register_window: usize,
    /// Direction Requests per second, one step each, rising; the steps
    /// stop after the first that saturates (an error, or fewer than 90 %
    /// answered within their step).
    pub rates: Vec<u32>,
    pub step: Duration,
}

/// Where the run is, for the caller to take the cloud's measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the first Login.
    Start,
    /// Every Login done.
    LoggedIn,
    /// Every Registration done (NAT Probes answered).
    Registered,
    /// Every node's first KeepAlive done: route directions start.
    Settled,
    /// Rate step `n` (from 0) done, its answers in.
    Step(usize),
}

/// Latencies of one kind of exchange.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many took `at_least` or longer.
    pub fn count_at_least(&self, at_least: Duration) -> u64 {
        self.0.iter().filter(|d| **d >= at_least).count() as u64
    }

    /// The `p`th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }
}

/// Errors by kind, e.g. `timeout`, `refused too_many_attempts`.
pub type Errors = BTreeMap<String, u64>;

fn count(errors: &mut Errors, kind: impl Into<String>) {
    *errors.entry(kind.into()).or_default() += 1;
}

/// One phase that every node goes through once (Login, Registration).
#[derive(Debug, Clone, Default)]
pub struct PhaseReport {
    pub nodes: usize,
    /// Nodes that got through.
    pub ok: usize,
    pub elapsed: Duration,
    pub latency: Latencies,
    /// Failed attempts and nodes that never got through, by kind.
    pub errors: Errors,
    pub retransmissions: u64,
}

impl PhaseReport {
    /// Successes per second of the phase.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One rate step of Direction Requests.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// Offered Direction Requests per second.
    pub rate: u32,
    pub sent: u64,
    /// Answered with a Route Direction for the peer asked for.
    pub answered: u64,
    pub duration: Duration,
    /// From the step's start until its last answer came in.
    pub span: Duration,
    pub latency: Latencies,
    pub errors: Errors,
    pub retransmissions: u64,
    /// Requests not sent: the target had a request for the requester in
    /// flight (the NMS serves both with one route, §4.6).
    pub skipped: u64,
    /// Requests whose two nodes are at different instances: directed
    /// over the NMS link.
    pub across: u64,
}

impl StepReport {
    /// Route directions completed per second of the step.
    pub fn completed_rate(&self) -> f64 {
        self.answered as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// An error, or under 90 % of the offered rate answered.
    pub fn saturated(&self) -> bool {
        self.failed() > 0 || (self.answered as f64) < 0.9 * self.sent.max(1) as f64
    }
}

/// Everything measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub login: PhaseReport,
    /// RegistrationRequest -> RegistrationResponse.
    pub registration: PhaseReport,
    /// RegistrationResponse -> NatProbeAck.
    pub nat_probe: PhaseReport,
    pub steps: Vec<StepReport>,
    pub path_challenges: u64,
    /// Nodes challenged more than once before their first Registration's
    /// answer: the NMS's challenge timer fired while the Registration
    /// waited for the store, and it may have lost their echo (see
    /// [`LoadReport::settle`]).
    pub challenged_early: u64,
    /// Nodes whose Registration was answered [`PATH_CHALLENGE_RETRANSMIT`]
    /// or later after it was sent: the NMS's challenge timer may have
    /// fired before it took effect.
    pub slow_registrations: u64,
    /// How long the run waited after the Registrations, for every node's
    /// first KeepAlive: route directions are measured in the steady state
    /// (and a KeepAlive has the NMS challenge an address still on trial
    /// again).
    pub settle: Duration,
    pub confirmations: u64,
    pub keepalives_sent: u64,
    pub keepalives_acked: u64,
    pub keepalive_timeouts: u64,
    pub reregisters: u64,
    /// Datagrams a node could not open or did not expect, by kind.
    pub rx_errors: Errors,
}

/// Runs [`generate`] on a thread inside the network namespace at
/// `netns_path` (`/run/netns/<name>`): every socket is made there.
pub fn run_in_namespace(
    netns_path: &std::path::Path,
    devices: Vec<SimDevice>,
    instances: Vec<Instance>,
    root_pem: String,
    plan: Plan,
    on_phase: impl FnMut(Phase) + Send + 'static,
) -> anyhow::Result<LoadReport> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(netns_path)
        .with_context(|| format!("opening {}", netns_path.display()))?;
    raise_fd_limit(devices.len() as u64 + 4096)?;
    let thread = std::thread::Builder::new()
        .name("cyphonic-loadgen".into())
        .spawn(move || -> anyhow::Result<LoadReport> {
            // SAFETY: setns on an open namespace file; it changes this
            // thread's network namespace only, and the runtime's threads,
            // created from here, inherit it.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the generator's runtime")?;
            rt.block_on(generate(devices, instances, root_pem, plan, on_phase))
        })
        .context("starting the generator's thread")?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the generator panicked"))?
}

/// A socket per simulated node, and TLS connections beside them.
fn raise_fd_limit(wanted: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < wanted {
            lim.rlim_cur = wanted.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    if lim.rlim_cur < wanted {
        bail!(
            "{wanted} open files needed, the limit is {} (ulimit -n)",
            lim.rlim_cur
        );
    }
    Ok(())
}

/// Counters every node task adds to.
#[derive(Default)]
struct Shared {
    path_challenges: AtomicU64,
    challenged_early: AtomicU64,
    confirmations: AtomicU64,
    keepalives_sent: AtomicU64,
    keepalives_acked: AtomicU64,
    keepalive_timeouts: AtomicU64,
    reregisters: AtomicU64,
    rx_errors: Mutex<Errors>,
}

impl Shared {
    fn rx_error(&self, kind: &str) {
        let mut e = self.rx_errors.lock().unwrap_or_else(|e| e.into_inner());
        count(&mut e, kind);
    }
}

/// What a Registration came to: its latency (or why none), then the NAT
/// Probe's.
struct Registered {
    registration: Result<Duration, &'static str>,
    nat_probe: Result<Duration, &'static str>,
    retransmissions: u64,
}

/// What a Direction Request came to.
struct Directed {
    result: Result<Duration, String>,
    retransmissions: u64,
}

enum Command {
    Register(oneshot::Sender<Registered>),
    Direct {
        target: String,
        reply: oneshot::Sender<Directed>,
    },
}

async fn generate(
    devices: Vec<SimDevice>,
    instances: Vec<Instance>,
    root_pem: String,
    plan: Plan,
    mut on_phase: impl FnMut(Phase),
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(!instances.is_empty(), "no cloud instance");
    let verifier = cyphonic_pki::Verifier::from_pem(&root_pem).context("the cloud's root")?;
    let root_der: Arc<[u8]> = verifier.root_der().into();
    let devices: Arc<Vec<SimDevice>> = Arc::new(devices);
    let instances: Arc<Vec<Instance>> = Arc::new(instances);
    let mut report = LoadReport::default();
    on_phase(Phase::Start);

    // Login, every node, at most `login_concurrency` at once per instance.
    let (login, sessions) = login_all(&devices, &instances, &root_der, &plan).await;
    report.login = login;
    on_phase(Phase::LoggedIn);

    // Registration: a task and a socket per node that logged in.
    let shared = Arc::new(Shared::default());
    let mut nodes: Vec<Option<mpsc::UnboundedSender<Command>>> =
        (0..devices.len()).map(|_| None).collect();
    let mut bind_errors = Errors::new();
    let keepalive = sessions
        .iter()
        .flatten()
        .map(|s| s.keepalive_secs)
        .max()
        .unwrap_or(1);
    for (i, session) in sessions.into_iter().enumerate() {
        let Some(session) = session else { continue };
        let d = &devices[i];
        let socket = match UdpSocket::bind(d.source).await {
            Ok(s) => s,
            Err(e) => {
                count(&mut bind_errors, format!("bind {}: {e}", d.source));
                continue;
            }
        };
        let nms_ip = instances[i % instances.len()].as_addr.ip();
        let (tx, rx) = mpsc::unbounded_channel();
        let node = SimNode::new(
            socket,
            d.source,
            &session,
            SocketAddr::new(nms_ip, session.nms_port),
            shared.clone(),
        );
        tokio::spawn(node.run(rx));
        nodes[i] = Some(tx);
    }
    let (registration, nat_probe) = register_all(&nodes, plan.register_window).await;
    report.registration = registration;
    report.registration.errors.extend(bind_errors);
    report.nat_probe = nat_probe;
    on_phase(Phase::Registered);
    // Steady state first: every node's first KeepAlive. An echo of a
    // PathChallenge that reaches the NMS before the Registration took
    // effect (its replay floor still being stored) validates nothing, and
    // the address stays on trial until the node sends again.
    report.challenged_early = shared.challenged_early.load(Ordering::Relaxed);
    report.slow_registrations = report
        .registration
        .latency
        .count_at_least(PATH_CHALLENGE_RETRANSMIT);
    report.settle = Duration::from_secs(keepalive + 1);
    tokio::time::sleep(report.settle).await;
    on_phase(Phase::Settled);

    // Direction Requests at rising rates between registered nodes.
    let alive: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].is_some()).collect();
    if alive.len() >= 2 {
        for (n, &rate) in plan.rates.iter().enumerate() {
            let step = run_step(&nodes, &alive, &devices, instances.len(), rate, plan.step).await;
            let saturated = step.saturated();
            report.steps.push(step);
            on_phase(Phase::Step(n));
            if saturated {
                break;
            }
        }
    }

    report.path_challenges = shared.path_challenges.load(Ordering::Relaxed);
    report.confirmations = shared.confirmations.load(Ordering::Relaxed);
    report.keepalives_sent = shared.keepalives_sent.load(Ordering::Relaxed);
    report.keepalives_acked = shared.keepalives_acked.load(Ordering::Relaxed);
    report.keepalive_timeouts = shared.keepalive_timeouts.load(Ordering::Relaxed);
    report.reregisters = shared.reregisters.load(Ordering::Relaxed);
    report.rx_errors = shared
        .rx_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // Dropping the senders ends the node tasks and closes their sockets.
    drop(nodes);
    Ok(report)
}

/// Logs every device in; the sessions by device index.
async fn login_all(
    devices: &Arc<Vec<SimDevice>>,
    instances: &Arc<Vec<Instance>>,
    root_der: &Arc<[u8]>,
    plan: &Plan,
) -> (PhaseReport, Vec<Option<LoginInfo>>) {
    let permits: Vec<Arc<Semaphore>> = instances
        .iter()
        .map(|_| Arc::new(Semaphore::new(plan.login_concurrency.max(1))))
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..devices.len() {
        let (devices, instances, root_der) = (devices.clone(), instances.clone(), root_der.clone());
        let permits = permits[i % instances.len()].clone();
        tasks.spawn(async move {
            let d = &devices[i];
            let inst = &instances[i % instances.len()];
            let mut failures: Vec<String> = Vec::new();
            let mut backoff = Duration::from_millis(500);
            for attempt in 0..LOGIN_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                let result = {
                    let _permit = permits.acquire().await;
                    let t0 = Instant::now();
                    as_client::login(
                        inst.as_addr,
                        &inst.server_name,
                        &root_der,
                        &d.chain_pem,
                        &d.key_pem,
                    )
                    .await
                    .map(|info| (info, t0.elapsed()))
                };
                match result {
                    Ok((info, took)) => return (i, Some((info, took)), failures),
                    Err(e) => failures.push(login_error(&e)),
                }
            }
            (i, None, failures)
        });
    }
    let mut report = PhaseReport {
        nodes: devices.len(),
        ..PhaseReport::default()
    };
    let mut sessions: Vec<Option<LoginInfo>> = (0..devices.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let Ok((i, login, failures)) = done else {
            count(&mut report.errors, "generator task failed");
            continue;
        };
        for f in failures {
            count(&mut report.errors, f);
        }
        if let Some((info, took)) = login {
            report.ok += 1;
            report.latency.push(took);
            sessions[i] = Some(info);
        } else {
            count(&mut report.errors, "never logged in");
        }
    }
    report.elapsed = started.elapsed();
    (report, sessions)
}

fn login_error(e: &AsClientError) -> String {
    match e {
        AsClientError::Refused { code, .. } => format!("refused {code}"),
        AsClientError::Tls(_) => "TLS".into(),
        AsClientError::Io(e) => format!("IO {:?}", e.kind()),
        AsClientError::Timeout(_) => "timeout".into(),
        AsClientError::Protocol(_) => "protocol".into(),
        AsClientError::Setup(_) => "setup".into(),
    }
}

/// Registers every node that has a task, `window` at a time.
async fn register_all(
    nodes: &[Option<mpsc::UnboundedSender<Command>>],
    window: usize,
) -> (PhaseReport, PhaseReport) {
    let permits = Arc::new(Semaphore::new(window.max(1)));
    let started = Instant::now();
    let mut waiting = tokio::task::JoinSet::new();
    for node in nodes.iter().flatten() {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (tx, rx) = oneshot::channel();
        if node.send(Command::Register(tx)).is_err() {
            continue;
        }
        waiting.spawn(async move {
            let answer = rx.await;
            drop(permit);
            answer
        });
    }
    let mut registration = PhaseReport {
        nodes: nodes.iter().flatten().count(),
        ..PhaseReport::default()
    };
    let mut nat_probe = PhaseReport::default();
    while let Some(done) = waiting.join_next().await {
        let Ok(Ok(r)) = done else {
            count(&mut registration.errors, "node task gone");
            continue;
        };
        registration.retransmissions += r.retransmissions;
        match r.registration {
            Ok(took) => {
                registration.ok += 1;
                registration.latency.push(took);
                nat_probe.nodes += 1;
                match r.nat_probe {
                    Ok(took) => {
                        nat_probe.ok += 1;
                        nat_probe.latency.push(took);
                    }
                    Err(why) => count(&mut nat_probe.errors, why),
                }
            }
            Err(why) => count(&mut registration.errors, why),
        }
    }
    registration.elapsed = started.elapsed();
    nat_probe.elapsed = registration.elapsed;
    (registration, nat_probe)
}

/// Sends Direction Requests at `rate` per second for `duration`, each from
/// a random registered node for another, then waits for their answers.
async fn run_step(
    nodes: &[Option<mpsc::UnboundedSender<Command>>],
    alive: &[usize],
    devices: &Arc<Vec<SimDevice>>,
    instances: usize,
    rate: u32,
    duration: Duration,
) -> StepReport {
    let mut step = StepReport {
        rate,
        duration,
        ..StepReport::default()
    };
    // (requester, target) pairs with a request in flight.
    let in_flight: Arc<Mutex<HashSet<(usize, usize)>>> = Arc::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Instant, Directed)>();
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed().min(duration);
        let due = (rate as f64 * elapsed.as_secs_f64()) as u64;
        while step.sent + step.skipped < due {
            let mn = alive[rng.gen_range(0..alive.len())];
            let mut cn = alive[rng.gen_range(0..alive.len() - 1)];
            if cn == mn {
                cn = alive[alive.len() - 1];
            }
            {
                let mut flying = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                if flying.contains(&(cn, mn)) {
                    step.skipped += 1;
                    continue;
                }
                flying.insert((mn, cn));
            }
            let (tx, rx) = oneshot::channel();
            let command = Command::Direct {
                target: devices[cn].fqdn.clone(),
                reply: tx,
            };
            let Some(Ok(())) = nodes[mn].as_ref().map(|n| n.send(command)) else {
                count(&mut step.errors, "node task gone");
                step.sent += 1;
                continue;
            };
            step.sent += 1;
            if mn % instances != cn % instances {
                step.across += 1;
            }
            let (done_tx, in_flight) = (done_tx.clone(), in_flight.clone());
            tokio::spawn(async move {
                let directed = rx.await.unwrap_or(Directed {
                    result: Err("node task gone".into()),
                    retransmissions: 0,
                });
                in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(mn, cn));
                let _ = done_tx.send((Instant::now(), directed));
            });
        }
        if elapsed >= duration {
            break;
        }
    }
    drop(done_tx);
    let mut received = 0u64;
    let deadline = tokio::time::Instant::now() + DRAIN;
    while received < step.sent {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((at, directed))) => {
                received += 1;
                step.span = step.span.max(at.saturating_duration_since(started));
                step.retransmissions += directed.retransmissions;
                match directed.result {
                    Ok(took) => {
                        step.answered += 1;
                        step.latency.push(took);
                    }
                    Err(why) => count(&mut step.errors, why),
                }
            }
            Ok(None) => break,
            Err(_) => {
                let missing = step.sent - received;
                *step.errors.entry("no outcome".into()).or_default() += missing;
                break;
            }
        }
    }
    step
}

/// What a request waits for.
enum Waiting {
    Registration(Option<oneshot::Sender<Registered>>),
    NatProbe,
    KeepAlive,
    Direction {
        target: String,
        reply: oneshot::Sender<Directed>,
    },
}

struct Pending {
    envelope: Envelope,
    to: SocketAddr,
    first: Instant,
    next: Instant,
    interval: Duration,
    deadline: Instant,
    retransmissions: u64,
    waiting: Waiting,
}

/// One simulated node's signaling, driven by its own task.
struct SimNode {
    socket: UdpSocket,
    local: SocketAddr,
    cipher: SignalCipher,
    nms: SocketAddr,
    probe: Option<SocketAddr>,
    static_public: [u8; 32],
    keepalive: Duration,
    next_keepalive: Option<Instant>,
    pending: HashMap<u64, Pending>,
    /// The Registration being answered: its reply, latency and
    /// retransmissions, until the NAT Probe is answered too.
    registering: Option<(oneshot::Sender<Registered>, Duration, u64)>,
    /// PathChallenges that came while the first Registration was
    /// unanswered.
    challenges_before_answer: u32,
    shared: Arc<Shared>,
}

impl SimNode {
    fn new(
        socket: UdpSocket,
        local: SocketAddr,
        login: &LoginInfo,
        nms: SocketAddr,
        shared: Arc<Shared>,
    ) -> SimNode {
        // A node's counters start at its clock (§4.2).
        let counter_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let cipher = SignalCipher::new(
            SessionId(login.session_id),
            &login.common_key,
            Role::Node,
            counter_base,
        );
        // A fresh static key per run, as the daemon makes one.
        let static_keys = StaticKeypair::generate(&mut rand::rngs::OsRng);
        SimNode {
            socket,
            local,
            cipher,
            nms,
            probe: None,
            static_public: static_keys.public,
            keepalive: Duration::from_secs(login.keepalive_secs.max(1)),
            next_keepalive: None,
            pending: HashMap::new(),
            registering: None,
            challenges_before_answer: 0,
            shared,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let wake = self.next_wake();
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = received {
                        self.handle_packet(&buf[..n], from).await;
                    }
                }
                command = commands.recv() => match command {
                    Some(c) => self.handle_command(c).await,
                    None => return,
                },
                () = sleep_until(wake) => self.handle_timeout().await,
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let retransmit = self.pending.values().map(|p| p.next.min(p.deadline)).min();
        [retransmit, self.next_keepalive]
            .into_iter()
            .flatten()
            .min()
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::Register(reply) => self.register(Some(reply)).await,
            Command::Direct { target, reply } => {
                let message = Message::DirectionRequest {
                    target: target.clone(),
                };
                self.request(message, self.nms, Waiting::Direction { target, reply })
                    .await;
            }
        }
    }

    async fn register(&mut self, reply: Option<oneshot::Sender<Registered>>) {
        let message = Message::RegistrationRequest(RegistrationRequest {
            static_public: self.static_public,
            tunnel_port: self.local.port(),
            local_addrs: vec![self.local],
            transport: Transport::Udp,
            quic_port: 0,
            mapped: None,
        });
        self.request(message, self.nms, Waiting::Registration(reply))
            .await;
    }

    async fn request(&mut self, message: Message, to: SocketAddr, waiting: Waiting) {
        let now = Instant::now();
        let txid = rand::random::<u64>();
        let envelope = Envelope { txid, message };
        let deadline = match waiting {
            Waiting::KeepAlive => now + self.keepalive.min(REQUEST_DEADLINE),
            _ => now + REQUEST_DEADLINE,
        };
        self.send(&envelope, to).await;
        self.pending.insert(
            txid,
            Pending {
                envelope,
                to,
                first: now,
                next: now + RETRANSMIT_FIRST,
                interval: RETRANSMIT_FIRST,
                deadline,
                retransmissions: 0,
                waiting,
            },
        );
    }

    async fn send(&mut self, envelope: &Envelope, to: SocketAddr) {
        let packet = self.cipher.seal(envelope);
        if let Err(e) = self.socket.send_to(&packet, to).await {
            self.shared.rx_error(&format!("send: {:?}", e.kind()));
        }
    }

    async fn handle_timeout(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for txid in expired {
            if let Some(p) = self.pending.remove(&txid) {
                self.expire(p);
            }
        }
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next <= now)
            .map(|(t, _)| *t)
            .collect();
        for txid in due {
            let Some(p) = self.pending.get_mut(&txid) else {
                continue;
            };
            p.interval = (p.interval * 2).min(RETRANSMIT_CAP);
            p.next = now + p.interval;
            p.retransmissions += 1;
            let (envelope, to) = (p.envelope.clone(), p.to);
            // Sealed again: a new counter passes the NMS's window (§4.6).
            self.send(&envelope, to).await;
        }
        if self.next_keepalive.is_some_and(|t| t <= now) {
            self.next_keepalive = Some(now + self.keepalive);
            self.shared.keepalives_sent.fetch_add(1, Ordering::Relaxed);
            self.request(Message::KeepAlive, self.nms, Waiting::KeepAlive)
                .await;
        }
    }

    fn expire(&mut self, p: Pending) {
        match p.waiting {
            Waiting::Registration(reply) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Registered {
                        registration: Err("timeout"),
                        nat_probe: Err("not sent"),
                        retransmissions: p.retransmissions,
                    });
                }
            }
            Waiting::NatProbe => self.registered(Err("timeout")),
            Waiting::KeepAlive => {
                self.shared
                    .keepalive_timeouts
                    .fetch_add(1, Ordering::Relaxed);
            }
            Waiting::Direction { reply, .. } => {
                let _ = reply.send(Directed {
                    result: Err("timeout".into()),
                    retransmissions: p.retransmissions,
                });
            }
        }
    }

    /// The NAT Probe after a Registration was answered (or not): the
    /// Registration is done.
    fn registered(&mut self, nat_probe: Result<Duration, &'static str>) {
        if let Some((reply, took, retransmissions)) = self.registering.take() {
            let _ = reply.send(Registered {
                registration: Ok(took),
                nat_probe,
                retransmissions,
            });
        }
    }

    async fn handle_packet(&mut self, packet: &[u8], from: SocketAddr) {
        if from != self.nms && Some(from) != self.probe {
            self.shared.rx_error("from an unknown address");
            return;
        }
        let envelope = match self.cipher.open(packet) {
            Ok(e) => e,
            Err(e) => {
                self.shared.rx_error(signal_error(&e));
                return;
            }
        };
        let now = Instant::now();
        let txid = envelope.txid;
        match envelope.message {
            Message::PathChallenge => {
                // Echoed twice at once, as a node does (§4.5).
                self.shared.path_challenges.fetch_add(1, Ordering::Relaxed);
                if self
                    .pending
                    .values()
                    .any(|p| matches!(p.waiting, Waiting::Registration(Some(_))))
                {
                    self.challenges_before_answer += 1;
                }
                let echo = Envelope {
                    txid,
                    message: Message::PathResponse,
                };
                for _ in 0..2 {
                    self.send(&echo, self.nms).await;
                }
            }
            Message::RegistrationResponse(resp) => {
                let Some(p) = self.take(txid, |w| matches!(w, Waiting::Registration(_))) else {
                    return;
                };
                let took = now - p.first;
                // The NMS sends one challenge right before its answer;
                // one more came from its retransmission timer while the
                // Registration waited for the store (§4.7).
                if matches!(p.waiting, Waiting::Registration(Some(_)))
                    && self.challenges_before_answer >= 2
                {
                    self.shared.challenged_early.fetch_add(1, Ordering::Relaxed);
                }
                self.challenges_before_answer = 0;
                self.keepalive = Duration::from_secs(u64::from(resp.keepalive_secs.max(1)));
                self.next_keepalive = Some(now + self.keepalive);
                self.probe =
                    (resp.probe_port != 0).then(|| SocketAddr::new(self.nms.ip(), resp.probe_port));
                if let Waiting::Registration(Some(reply)) = p.waiting {
                    self.registering = Some((reply, took, p.retransmissions));
                }
                match self.probe {
                    Some(probe) => {
                        self.request(Message::NatProbe, probe, Waiting::NatProbe)
                            .await
                    }
                    None => self.registered(Err("the NMS has no probe port")),
                }
            }
            Message::NatProbeAck { .. } => {
                if let Some(p) = self.take(txid, |w| matches!(w, Waiting::NatProbe)) {
                    self.registered(Ok(now - p.first));
                }
            }
            Message::KeepAliveAck { .. } => {
                if self
                    .take(txid, |w| matches!(w, Waiting::KeepAlive))
                    .is_some()
                {
                    self.shared.keepalives_acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Message::ReRegister => {
                self.take(txid, |w| matches!(w, Waiting::KeepAlive));
                self.shared.reregisters.fetch_add(1, Ordering::Relaxed);
                self.next_keepalive = None;
                self.register(None).await;
            }
            Message::RouteDirectionToResponder(direction) => {
                // A responder confirms every copy, same txid (§4.6).
                self.shared.confirmations.fetch_add(1, Ordering::Relaxed);
                let confirmation = Envelope {
                    txid,
                    message: Message::RouteDirectionConfirmation {
                        route_id: direction.route_id,
                    },
                };
                self.send(&confirmation, self.nms).await;
            }
            Message::RouteDirectionToInitiator(direction) => {
                let Some(p) = self.take(txid, |w| matches!(w, Waiting::Direction { .. })) else {
                    return;
                };
                if let Waiting::Direction { target, reply } = p.waiting {
                    let result = if direction.peer.fqdn == target {
                        Ok(now - p.first)
                    } else {
                        Err("a direction for another peer".into())
                    };
                    let _ = reply.send(Directed {
                        result,
                        retransmissions: p.retransmissions,
                    });
                }
            }
            Message::DirectionError { code, .. } => {
                let Some(p) = self.take(txid, |w| matches!(w, Waiting::Direction { .. })) else {
                    return;
                };
                if let Waiting::Direction { reply, .. } = p.waiting {
                    let _ = reply.send(Directed {
                        result: Err(format!("DirectionError {code:?}")),
                        retransmissions: p.retransmissions,
                    });
                }
            }
            Message::PeerRevoked { .. } | Message::RouteUpdate { .. } => {
                let ack = Envelope {
                    txid,
                    message: Message::NoticeAck,
                };
                self.send(&ack, self.nms).await;
            }
            other => self
                .shared
                .rx_error(&format!("unexpected {}", other.name())),
        }
    }

    /// The pending request `txid` if it waits for this kind of answer; an
    /// answer to nothing pending (late, or a duplicate) is counted.
    fn take(&mut self, txid: u64, kind: impl Fn(&Waiting) -> bool) -> Option<Pending> {
        match self.pending.get(&txid) {
            Some(p) if kind(&p.waiting) => self.pending.remove(&txid),
            _ => {
                self.shared
                    .rx_error("answers to no pending request (late or repeated)");
                None
            }
        }
    }
}

fn signal_error(e: &SignalError) -> &'static str {
    match e {
        SignalError::NotSignaling => "not signaling",
        SignalError::Version(_) => "version",
        SignalError::Malformed => "malformed",
        SignalError::WrongSession { .. } => "wrong session",
        SignalError::WrongDirection => "wrong direction",
        SignalError::Auth => "authentication",
        SignalError::Replay(_) => "replayed",
        SignalError::Body(_) => "bad body",
        SignalError::UnknownMessage(_) => "unknown message",
        SignalError::CounterExhausted => "counter exhausted",
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile(50.0), None);
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(l.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(l.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(l.percentile(0.0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn a_step_with_an_error_or_too_few_answers_is_saturated() {
        let mut s = StepReport {
            sent: 100,
            answered: 100,
            ..StepReport::default()
        };
        assert!(!s.saturated());
        s.answered = 89;
        assert!(s.saturated());
        s.answered = 100;
        count(&mut s.errors, "timeout");
        assert!(s.saturated());
    }
}
