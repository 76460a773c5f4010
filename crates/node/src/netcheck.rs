//! `cyphonic netcheck`: what this host's network lets an enrolled node do,
//! measured with Reflect exchanges (`docs/protocol.md` §4.8) from sockets
//! of its own, so it runs beside the daemon without disturbing it: it
//! never logs in (a second Login would end the daemon's session) and never
//! touches the tunnel port.
//!
//! Measured, each with a deadline and all at once:
//! - the NAT kind: one UDP socket asks the NMS's signaling port and its
//!   probe port, and the two addresses seen are classified as the NMS
//!   classifies a Registration and a NAT Probe (`NetInfo::nat`);
//! - the cloud over UDP 4502, QUIC on UDP 443 and TLS on TCP 443 (the legs
//!   authenticate with the node's certificate, as the daemon's do);
//! - IPv4 and IPv6: whether an address of that family answered (the
//!   cloud's addresses of both families come in the NMS's answer);
//! - each TRS's round trip, over UDP and over its 443 legs;
//! - a port-mapping router: PCP ANNOUNCE, the NAT-PMP external address
//!   and a UPnP IGD search, none of which creates a mapping
//!   ([`crate::portmap::probe_gateway`]).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cyphonic_proto::nat::NetInfo;
use cyphonic_proto::reflect::{ReflectRequest, ReflectResponse};
use cyphonic_transport::{Hub, TlsIdentity, Transport};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::config::StatePaths;
use crate::daemon::Credentials;

/// The cloud's default ports (`docs/protocol.md` §1): netcheck cannot ask
/// the AS for them, as that would be a Login.
pub const NMS_PORT: u16 = 4502;
pub const NMS_PROBE_PORT: u16 = 4504;
pub const LEG_PORT: u16 = 443;

/// Round trips taken per target; the best is reported.
const SAMPLES: usize = 3;
/// How long one UDP Reflect may wait for its answer, and how many are
/// sent to a target at most (lost ones included).
const UDP_WAIT: Duration = Duration::from_millis(400);
const UDP_ATTEMPTS: usize = 5;
/// How long a leg may take for its first answer (QUIC or TLS handshake
/// included), and each answer after.
const LEG_FIRST_WAIT: Duration = Duration::from_millis(2500);
const LEG_WAIT: Duration = Duration::from_millis(500);
/// The port-mapping router's deadline (UPnP's search and HTTP included).
const GATEWAY_WAIT: Duration = Duration::from_secs(4);

/// Everything netcheck found: the `--json` output (its keys are stable and
/// listed in the README).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The cloud address the node enrolled with.
    pub cloud: IpAddr,
    pub nat: NatReport,
    pub udp_4502: Reach,
    pub udp_443: Reach,
    pub tcp_443: Reach,
    pub ipv4: Family,
    pub ipv6: Family,
    /// Each relay address the NMS named, in its order.
    pub relays: Vec<RelayReport>,
    pub port_mapping: crate::portmap::GatewayProbe,
    /// How long netcheck took.
    pub elapsed_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NatReport {
    /// `none`, `endpoint-independent`, `symmetric` or `unknown` (nothing
    /// answered on native UDP).
    pub kind: &'static str,
    /// The address the NMS's signaling port saw, and its probe port.
    pub observed: Option<SocketAddr>,
    pub observed_probe: Option<SocketAddr>,
}

/// One way to the cloud.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    pub target: SocketAddr,
    pub reachable: bool,
    /// The best round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// One IP version.
#[derive(Debug, Clone, Serialize)]
pub struct Family {
    pub reachable: bool,
    /// The address a server of the cloud saw this host at over it.
    pub observed: Option<SocketAddr>,
}

/// One TRS address: the best round trip per transport (`None`: no answer).
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    pub addr: SocketAddr,
    pub udp_ms: Option<f64>,
    pub quic_ms: Option<f64>,
    pub tcp_ms: Option<f64>,
}

impl RelayReport {
    /// The best round trip over any transport.
    pub fn best_ms(&self) -> Option<f64> {
        [self.udp_ms, self.quic_ms, self.tcp_ms]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
    }
}

/// What one target answered: the best round trip and the last answer.
#[derive(Debug, Clone)]
struct Answered {
    rtt: Duration,
    response: ReflectResponse,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Runs every check for the node enrolled in `state_dir`.
pub async fn run(state_dir: &Path) -> anyhow::Result<Report> {
    let started = Instant::now();
    let state = StatePaths::new(state_dir);
    let file = state.load()?;
    let credentials = Credentials::load(&state, &file.fqdn)?;
    let verifier = cyphonic_pki::Verifier::from_pem(&credentials.root_pem)?;
    let (legs, reader) = Legs::new(
        TlsIdentity {
            chain_pem: credentials.chain_pem.clone(),
            key_pem: credentials.key_pem.to_string(),
            root_der: verifier.root_der().to_vec(),
        },
        file.cloud.ip(),
        file.server_name.clone(),
    )
    .await
    .context("cannot set up QUIC and TLS legs")?;
    let cloud = file.cloud.ip();

    let gateway = tokio::spawn(async {
        match crate::addrs::default_gateway_v4() {
            Some(gw) => tokio::time::timeout(GATEWAY_WAIT, crate::portmap::probe_gateway(gw))
                .await
                .unwrap_or_else(|_| crate::portmap::GatewayProbe::at(gw)),
            None => crate::portmap::GatewayProbe::default(),
        }
    });

    // The enrolled address first: NAT kind, UDP 4502, both legs.
    let to_leg = SocketAddr::new(cloud, LEG_PORT);
    let ((observed, observed_probe, local_port), quic, tcp) = tokio::join!(
        nat_pair(cloud),
        legs.clone().reflect(Transport::Quic, to_leg),
        legs.clone().reflect(Transport::Tcp, to_leg),
    );
    // What the answers name: the cloud's addresses of both families, the
    // relays.
    let mut nms: Vec<SocketAddr> = Vec::new();
    let mut relays: Vec<SocketAddr> = Vec::new();
    for a in [&observed, &quic, &tcp].into_iter().flatten() {
        for (list, named) in [
            (&mut nms, &a.response.nms),
            (&mut relays, &a.response.relays),
        ] {
            for n in named {
                if !list.contains(n) {
                    list.push(*n);
                }
            }
        }
    }
    // The cloud at its addresses of the other family, as at the first
    // (a pair of ports: the NAT of IPv4 shows only over IPv4); each
    // relay over UDP, and over the legs at its IP (unless that is the
    // cloud's, measured already).
    let others: Vec<IpAddr> = nms
        .iter()
        .map(|n| n.ip())
        .filter(|ip| *ip != cloud)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let leg_ips: Vec<IpAddr> = relays
        .iter()
        .map(|r| r.ip())
        .filter(|ip| *ip != cloud)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let other_pairs = others.iter().map(|ip| tokio::spawn(nat_pair(*ip)));
    let (other_pairs, relay_udp, relay_quic, relay_tcp) = tokio::join!(
        async {
            let mut out = Vec::new();
            for h in other_pairs.collect::<Vec<_>>() {
                out.push(h.await.unwrap_or((None, None, 0)));
            }
            out
        },
        join_all(relays.iter().map(|r| reflect_udp(*r))),
        join_all(leg_ips.iter().map(|ip| {
            legs.clone()
                .reflect(Transport::Quic, SocketAddr::new(*ip, LEG_PORT))
        })),
        join_all(leg_ips.iter().map(|ip| {
            legs.clone()
                .reflect(Transport::Tcp, SocketAddr::new(*ip, LEG_PORT))
        })),
    );
    legs.hub.close();
    reader.abort();

    let over_leg = |ip: IpAddr, at_cloud: &Option<Answered>, others: &[Option<Answered>]| {
        if ip == cloud {
            return at_cloud.as_ref().map(|a| ms(a.rtt));
        }
        let i = leg_ips.iter().position(|l| *l == ip)?;
        others.get(i)?.as_ref().map(|a| ms(a.rtt))
    };
    let relays: Vec<RelayReport> = relays
        .iter()
        .zip(&relay_udp)
        .map(|(addr, udp)| RelayReport {
            addr: *addr,
            udp_ms: udp.as_ref().map(|a| ms(a.rtt)),
            quic_ms: over_leg(addr.ip(), &quic, &relay_quic),
            tcp_ms: over_leg(addr.ip(), &tcp, &relay_tcp),
        })
        .collect();

    // Any answer over a family shows it works; the UDP ones name the
    // address it is seen at.
    let mut answered: Vec<(SocketAddr, Option<SocketAddr>)> = Vec::new();
    let mut note = |to: SocketAddr, a: &Option<Answered>, udp: bool| {
        if let Some(a) = a {
            answered.push((to, udp.then_some(a.response.observed)));
        }
    };
    note(SocketAddr::new(cloud, NMS_PORT), &observed, true);
    note(SocketAddr::new(cloud, LEG_PORT), &quic, false);
    note(SocketAddr::new(cloud, LEG_PORT), &tcp, false);
    for (ip, (a, _, _)) in others.iter().zip(&other_pairs) {
        note(SocketAddr::new(*ip, NMS_PORT), a, true);
    }
    let relay_answers: Vec<(SocketAddr, bool)> = relays
        .iter()
        .map(|r| (r.addr, r.best_ms().is_some()))
        .collect();
    let family = |v4: bool| Family {
        reachable: answered.iter().any(|(to, _)| to.is_ipv4() == v4)
            || relay_answers.iter().any(|(r, ok)| *ok && r.is_ipv4() == v4),
        observed: answered
            .iter()
            .filter(|(to, _)| to.is_ipv4() == v4)
            .find_map(|(_, seen)| *seen),
    };
    let (ipv4, ipv6) = (family(true), family(false));

    // The NAT kind from a pair seen over IPv4 when there is one, as the
    // NMS would see a node registering over it; else from the first pair.
    let pairs: Vec<(&Answered, Option<&Answered>, u16)> =
        std::iter::once((&observed, &observed_probe, local_port))
            .chain(other_pairs.iter().map(|(a, p, port)| (a, p, *port)))
            .filter_map(|(a, p, port)| Some((a.as_ref()?, p.as_ref(), port)))
            .collect();
    let pair = pairs
        .iter()
        .find(|(a, _, _)| a.response.observed.is_ipv4())
        .or(pairs.first());
    let nat = match pair {
        Some((seen, probe, port)) => {
            let (seen, probe) = (seen.response.observed, probe.map(|p| p.response.observed));
            let info = NetInfo::udp(crate::addrs::local_endpoints(*port), seen, probe);
            NatReport {
                kind: info.nat().as_str(),
                observed: Some(seen),
                observed_probe: probe,
            }
        }
        None => NatReport {
            kind: cyphonic_proto::nat::NatKind::Unknown.as_str(),
            observed: None,
            observed_probe: None,
        },
    };
    let reach = |target: SocketAddr, a: &Option<Answered>| Reach {
        target,
        reachable: a.is_some(),
        rtt_ms: a.as_ref().map(|a| ms(a.rtt)),
    };
    Ok(Report {
        cloud,
        nat,
        udp_4502: reach(SocketAddr::new(cloud, NMS_PORT), &observed),
        udp_443: reach(SocketAddr::new(cloud, LEG_PORT), &quic),
        tcp_443: reach(SocketAddr::new(cloud, LEG_PORT), &tcp),
        ipv4,
        ipv6,
        relays,
        port_mapping: gateway.await.unwrap_or_default(),
        elapsed_ms: ms(started.elapsed()),
    })
}

/// Runs the checks at once (each has its own deadline) and collects
/// their answers in order.
async fn join_all<F>(checks: impl Iterator<Item = F>) -> Vec<Option<Answered>>
where
    F: std::future::Future<Output = Option<Answered>> + Send + 'static,
{
    let handles: Vec<_> = checks.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.ok().flatten());
    }
    out
}

/// A UDP socket of `to`'s family on an ephemeral port.
async fn udp_socket(to: IpAddr) -> Option<UdpSocket> {
    let any: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(any).await.ok()
}

/// Up to `samples` Reflect round trips from `socket` to `to`: the best,
/// with its answer; `None` if nothing answered.
async fn sample_udp(socket: &UdpSocket, to: SocketAddr, samples: usize) -> Option<Answered> {
    let mut best: Option<Answered> = None;
    let mut got = 0;
    let mut buf = [0u8; 512];
    for _ in 0..UDP_ATTEMPTS {
        if got == samples {
            break;
        }
        let txid = rand::random::<u64>();
        let sent = Instant::now();
        if socket
            .send_to(&ReflectRequest { txid }.encode(), to)
            .await
            .is_err()
        {
            // No route of this family: no use trying again.
            return best;
        }
        let deadline = tokio::time::Instant::now() + UDP_WAIT;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            // Only this attempt's answer from `to`: late answers to
            // earlier attempts and anything else are skipped.
            let Ok(response) = ReflectResponse::parse(&buf[..n]) else {
                continue;
            };
            if from != to || response.txid != txid {
                continue;
            }
            got += 1;
            keep_best(&mut best, sent.elapsed(), response);
            break;
        }
    }
    best
}

fn keep_best(best: &mut Option<Answered>, rtt: Duration, response: ReflectResponse) {
    if best.as_ref().is_none_or(|b| rtt < b.rtt) {
        *best = Some(Answered { rtt, response });
    }
}

/// Reflect round trips to `to` from a socket of its own.
async fn reflect_udp(to: SocketAddr) -> Option<Answered> {
    let socket = udp_socket(to.ip()).await?;
    sample_udp(&socket, to, SAMPLES).await
}

/// From one socket: Reflects to the NMS's signaling port, then one to its
/// probe port. Returns both answers and the socket's port.
async fn nat_pair(cloud: IpAddr) -> (Option<Answered>, Option<Answered>, u16) {
    let Some(socket) = udp_socket(cloud).await else {
        return (None, None, 0);
    };
    let port = socket.local_addr().map_or(0, |a| a.port());
    let main = sample_udp(&socket, SocketAddr::new(cloud, NMS_PORT), SAMPLES).await;
    let probe = match main {
        Some(_) => sample_udp(&socket, SocketAddr::new(cloud, NMS_PROBE_PORT), 1).await,
        None => None,
    };
    (main, probe, port)
}

/// QUIC and TLS legs to cloud servers with the node's certificate, and
/// who waits for which answer.
#[derive(Clone)]
struct Legs {
    hub: Arc<Hub>,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<ReflectResponse>>>>,
}

impl Legs {
    /// The legs, and the task that hands their answers out (aborted by
    /// [`Legs::close`]).
    async fn new(
        identity: TlsIdentity,
        cloud: IpAddr,
        server_name: String,
    ) -> anyhow::Result<(Legs, tokio::task::JoinHandle<()>)> {
        let hub = Arc::new(Hub::new(identity, None, None).await?);
        // The enrolled address answers to the name it enrolled with (an IP
        // or a DNS name); others to their IP, as for the daemon's Login.
        hub.set_server_name(SocketAddr::new(cloud, LEG_PORT), server_name);
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<ReflectResponse>>>> = Arc::default();
        let reader = tokio::spawn({
            let (hub, waiting) = (hub.clone(), waiting.clone());
            async move {
                while let Some(r) = hub.recv().await {
                    let Ok(response) = ReflectResponse::parse(&r.datagram) else {
                        continue;
                    };
                    let tx = lock(&waiting).remove(&response.txid);
                    if let Some(tx) = tx {
                        let _ = tx.send(response);
                    }
                }
            }
        });
        Ok((Legs { hub, waiting }, reader))
    }

    /// Up to [`SAMPLES`] Reflect round trips over a `transport` leg to
    /// `to`: the best, with its answer.
    async fn reflect(self, transport: Transport, to: SocketAddr) -> Option<Answered> {
        let mut best: Option<Answered> = None;
        for i in 0..SAMPLES {
            let txid = rand::random::<u64>();
            let (tx, rx) = oneshot::channel();
            lock(&self.waiting).insert(txid, tx);
            let sent = Instant::now();
            let wait = if i == 0 { LEG_FIRST_WAIT } else { LEG_WAIT };
            let answer =
                match self
                    .hub
                    .send(transport, to, ReflectRequest { txid }.encode().to_vec())
                {
                    Ok(()) => tokio::time::timeout(wait, rx)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    Err(_) => None,
                };
            lock(&self.waiting).remove(&txid);
            let Some(response) = answer else {
                // A leg that never answered will not start now.
                best.as_ref()?;
                continue;
            };
            keep_best(&mut best, sent.elapsed(), response);
        }
        best
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The readable report, like `tailscale netcheck`'s.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let rtt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
    let mut out = String::new();
    let _ = writeln!(out, "Report (cloud {}, {:.0} ms):", r.cloud, r.elapsed_ms);
    let _ = writeln!(out, "\t* NAT: {}", r.nat.kind);
    if let Some(o) = r.nat.observed {
        let probe = r
            .nat
            .observed_probe
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let _ = writeln!(
            out,
            "\t* seen at {o} (port {NMS_PORT}), {probe} (port {NMS_PROBE_PORT})"
        );
    }
    for (name, reach) in [
        ("UDP 4502", &r.udp_4502),
        ("UDP 443 (QUIC)", &r.udp_443),
        ("TCP 443 (TLS)", &r.tcp_443),
    ] {
        let _ = writeln!(
            out,
            "\t* {name}: {}{}",
            yes_no(reach.reachable),
            reach
                .rtt_ms
                .map(|v| format!(", {v:.2} ms"))
                .unwrap_or_default()
        );
    }
    for (name, f) in [("IPv4", &r.ipv4), ("IPv6", &r.ipv6)] {
        let seen = f.observed.map(|o| format!(", {o}")).unwrap_or_default();
        let _ = writeln!(out, "\t* {name}: {}{seen}", yes_no(f.reachable));
    }
    let pm = &r.port_mapping;
    let mut found: BTreeSet<&str> = BTreeSet::new();
    for (on, name) in [(pm.pcp, "PCP"), (pm.nat_pmp, "NAT-PMP"), (pm.upnp, "UPnP")] {
        if on {
            found.insert(name);
        }
    }
    let mapper = if found.is_empty() {
        "none".to_owned()
    } else {
        let names: Vec<&str> = found.into_iter().collect();
        let ext = pm
            .external
            .map(|e| format!(", external address {e}"))
            .unwrap_or_default();
        format!("{}{ext}", names.join(", "))
    };
    let _ = writeln!(out, "\t* Port mapping: {mapper}");
    let _ = writeln!(out, "\t* Relays (TRS):");
    if r.relays.is_empty() {
        let _ = writeln!(out, "\t\t(none named)");
    }
    for t in &r.relays {
        let _ = writeln!(
            out,
            "\t\t- {}: udp {}, quic {}, tcp {}",
            t.addr,
            rtt(t.udp_ms),
            rtt(t.quic_ms),
            rtt(t.tcp_ms)
        );
    }
    out
}
