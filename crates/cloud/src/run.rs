//! `cyphonic cloud run`: the AS and the NMS in one process (each can also
//! run alone), over one database.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::CloudConfig;
use crate::edge::{CloudHub, EdgeTargets};
use crate::nms::{
    FloorStored, Nms, NmsConfig, NmsCounters, NmsEvent, SessionInfo, SessionStanding,
};
use crate::store::{Store, StoreError};
use cyphonic_cloud_core::policy::Policy;
use cyphonic_proto::signal::GeneralNodes;
use cyphonic_proto::SessionId;

/// How often the NMS re-checks the sessions it holds against the store:
/// sessions another process ended (a `device reset` or `revoke` from the
/// CLI, a Login at an AS elsewhere) or that expired stop within this, and
/// a revoked or disabled node's peers are told at once after.
pub const SESSION_RECHECK: Duration = Duration::from_secs(2);

/// Signaling counters each NMS run reserves (`docs/protocol.md` §4.2):
/// 10^12, more than a run can seal (a million messages a second for
/// eleven days), and little against 2^64 (each run moves the floor by
/// about 11.6 days of microseconds; a million restarts stay far below the
/// counter limit).
pub const SIGNAL_COUNTER_RANGE: u64 = 1_000_000_000_000;
/// The counters one session gets when it is loaded by an NMS whose cloud
/// has other instances (`docs/protocol.md` §5.19): far more than a session
/// ever seals, and small beside the floor's range.
pub const SESSION_COUNTER_RANGE: u64 = 1 << 32;

/// How often a running NMS looks for a new policy version in the store
/// (`cyphonic cloud policy set` from another process): one cheap query.
pub const POLICY_RECHECK: Duration = Duration::from_secs(1);

/// How often the NMS records in the store that its registered nodes were
/// seen (the console's "last seen" of a node that went offline is at most
/// this old).
pub const LAST_SEEN_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    All,
    As,
    Nms,
    Trs,
}

/// Runs the chosen services until `shutdown` resolves.
pub async fn run(
    cfg: CloudConfig,
    roles: Roles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_observed(cfg, roles, shutdown, None).await
}

/// [`run`], publishing the NMS's counters on `nms_counters` after every
/// input it handles (for status pages and tests).
pub async fn run_observed(
    cfg: CloudConfig,
    roles: Roles,
    shutdown: impl Future<Output = ()> + Send + 'static,
    nms_counters: Option<tokio::sync::watch::Sender<NmsCounters>>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let store = Store::open(&cfg.database())
        .await
        .with_context(|| format!("cannot open the database {}", cfg.database()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut tasks = tokio::task::JoinSet::new();
    // The NMS's counters, also for /metrics.
    let (nms_counters, nms_counters_rx) = match (nms_counters, cfg.metrics_listen) {
        (Some(tx), _) => {
            let rx = tx.subscribe();
            (Some(tx), Some(rx))
        }
        (None, Some(_)) => {
            let (tx, rx) = tokio::sync::watch::channel(NmsCounters::default());
            (Some(tx), Some(rx))
        }
        (None, None) => (None, None),
    };
    let mut metrics = crate::metrics::Sources {
        nms: None,
        trs: None,
    };
    // The NMS's input and address, when it runs here: a TRS in this
    // process reports to it there (§5.18).
    let mut nms_here: Option<(NmsInputTx, SocketAddr)> = None;
    let as_server = if matches!(roles, Roles::All | Roles::As) {
        Some(crate::as_server::AsServer::bind(cfg.clone(), store.clone()).await?)
    } else {
        None
    };
    // QUIC and TLS over TCP (443) beside the native ports, for the NMS and
    // the TRS; with the AS here too, TCP 443 also serves the Login flow
    // (ALPN cyphonic-as/1).
    let (as_tx, as_rx) = match &as_server {
        Some(_) => {
            let (tx, rx) = mpsc::channel(64);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let edge = if roles == Roles::As {
        None
    } else {
        bind_edge(
            &cfg,
            &store,
            as_server.as_ref().map(|s| s.identity()),
            as_tx,
        )
        .await
    };
    if let Some(server) = as_server {
        tracing::info!(addrs = ?server.local_addrs(), "AS listening (TLS)");
        let mut rx = stop_rx.clone();
        tasks.spawn(async move {
            server
                .run_with_handoff(as_rx, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
    }
    let mut targets = EdgeTargets {
        nms: None,
        trs: None,
    };
    let mut console_view = None;
    if matches!(roles, Roles::All | Roles::Nms) {
        metrics.nms = nms_counters_rx;
        let mut listen = cfg.nms_listen.clone();
        if cfg.nms_probe_port != 0 {
            // The probe port on the same addresses: NAT detection needs the
            // node to reach the NMS at two destinations.
            listen.extend(
                cfg.nms_listen
                    .iter()
                    .map(|a| SocketAddr::new(a.ip(), cfg.nms_probe_port)),
            );
        }
        let sockets = bind_nms(&listen).await?;
        let relay = match load_relay_secret(&cfg) {
            Ok(secret) if !cfg.relay_endpoints().is_empty() => Some(crate::nms::RelayConfig {
                secret,
                servers: cfg.relay_endpoints(),
                quic_port: cfg.leg_ports().0,
                tcp_port: cfg.leg_ports().1,
                lifetime: Duration::from_secs(cfg.relay_grant_secs),
                wall_origin: (
                    Instant::now(),
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                ),
            }),
            Ok(_) => {
                tracing::warn!(
                    "no relay addresses (trs_public or public_addrs): routes get no relay"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "relay disabled");
                None
            }
        };
        tracing::info!(addrs = ?sockets.iter().filter_map(|s| s.local_addr().ok()).collect::<Vec<_>>(), "NMS listening (UDP)");
        let nms_cfg = NmsConfig {
            keepalive: Duration::from_secs(cfg.keepalive_secs.max(1)),
            offline_after: Duration::from_secs(cfg.keepalive_secs.max(1) * 3 + 5),
            probe_port: cfg.nms_probe_port,
            relay,
            public: cfg
                .public_addrs
                .iter()
                .map(|ip| SocketAddr::new(*ip, cfg.nms_port()))
                .collect(),
            trs_dead_after: Duration::from_secs(cfg.trs_dead_after_secs),
            domain: cfg.domain.clone(),
            peer_instances: cfg.links.iter().any(|l| l.domain.is_none()),
            linked_domains: cfg.links.iter().filter_map(|l| l.domain.clone()).collect(),
            ..NmsConfig::default()
        };
        let (link_tx, link_rx) = mpsc::channel(1024);
        let links = if cfg.links.is_empty() && cfg.link_listen.is_none() {
            None
        } else {
            let identity = crate::as_server::server_identity(&cfg, &store).await?;
            crate::link::Links::start(&cfg, &identity, link_tx, stop_rx.clone())
                .await?
                .map(|l| (l, link_rx))
        };
        let store = store.clone();
        let rx = stop_rx.clone();
        let (input_tx, input_rx) = mpsc::channel(4096);
        nms_here = listen.first().map(|l| (input_tx.clone(), *l));
        if edge.is_some() {
            targets.nms = Some(input_tx.clone());
        }
        let nms_edge = edge.clone();
        let views = if cfg.console_listen.is_some() {
            let (tx, rx) = mpsc::channel(16);
            console_view = Some(tx);
            Some(rx)
        } else {
            None
        };
        tasks.spawn(async move {
            run_nms_observed(
                nms_cfg,
                sockets,
                store,
                rx,
                nms_edge,
                (input_tx, input_rx),
                nms_counters,
                views,
                links,
            )
            .await
        });
    }
    if matches!(roles, Roles::All | Roles::Trs) {
        let secret = load_relay_secret(&cfg)?;
        let reporter =
            cyphonic_cloud_core::trs_pool::TrsReporter::new(&secret, cfg.trs_own_addrs());
        let sockets = Arc::new(
            cyphonic_platform::udp::Sockets::bind_addrs(&cfg.trs_listen)
                .with_context(|| format!("cannot bind the TRS on {:?}", cfg.trs_listen))?,
        );
        tracing::info!(v4 = ?sockets.v4.as_ref().and_then(|s| s.local_addr().ok()), v6 = ?sockets.v6.as_ref().and_then(|s| s.local_addr().ok()), "TRS listening (UDP)");
        let trs = Arc::new(std::sync::Mutex::new(crate::trs::Trs::new(
            crate::trs::TrsConfig {
                secret,
                session_rate: cfg.trs_session_mbit * 125_000,
                ..crate::trs::TrsConfig::default()
            },
        )));
        if edge.is_some() {
            targets.trs = Some((trs.clone(), sockets.clone()));
        }
        metrics.trs = Some(trs.clone());
        let rx = stop_rx.clone();
        let trs_edge = edge.clone();
        // Reports to an NMS here only if it hands out this TRS.
        let own = cfg.trs_own_addrs();
        let internal = nms_here
            .take()
            .filter(|_| cfg.relay_endpoints().iter().any(|a| own.contains(a)));
        tasks.spawn(report_trs(
            reporter,
            trs.clone(),
            sockets.clone(),
            cfg.trs_report_to.clone(),
            internal,
            stop_rx.clone(),
        ));
        tasks.spawn(async move { run_trs(trs, sockets, rx, trs_edge).await });
    }
    if let Some(edge) = edge {
        let rx = stop_rx.clone();
        tasks.spawn(crate::edge::run_edge(edge, targets, rx));
    }
    if let Some(listen) = cfg.metrics_listen {
        tasks.spawn(crate::metrics::serve(listen, metrics, stop_rx.clone()));
    }
    if let Some(listen) = cfg.console_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind the console on {listen}"))?;
        let tls = if cfg.console_tls {
            let identity = crate::as_server::server_identity(&cfg, &store).await?;
            Some(cyphonic_pki::web_server_config(
                &identity.chain_pem,
                &identity.key_pem,
            )?)
        } else {
            None
        };
        tracing::info!(%listen, tls = cfg.console_tls, "console listening");
        let console = crate::console::Console::new(store.clone(), cfg.clone(), console_view);
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            crate::console::serve(listener, console, tls, rx).await;
            Ok(())
        });
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = r {
            tracing::error!(error = %format!("{e:#}"), "cloud service failed");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    store.close().await;
    result
}

/// The hub on `quic_listen` and `tcp443_listen`, presenting the AS's
/// server certificate (or one issued now when the AS runs elsewhere).
/// Failing to bind (port 443 needs privileges) leaves the native ports
/// serving and is logged.
async fn bind_edge(
    cfg: &CloudConfig,
    store: &Store,
    as_identity: Option<crate::as_server::ServerIdentity>,
    as_streams: Option<mpsc::Sender<(crate::as_server::HandedOff, SocketAddr)>>,
) -> Option<Arc<CloudHub>> {
    if cfg.quic_listen.is_empty() && cfg.tcp443_listen.is_empty() {
        return None;
    }
    let bound = async {
        let identity = match as_identity {
            Some(identity) => identity,
            None => crate::as_server::server_identity(cfg, store).await?,
        };
        CloudHub::bind(cfg, &identity, as_streams).await
    };
    match bound.await {
        Ok(edge) => edge,
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                quic_listen = ?cfg.quic_listen,
                tcp443_listen = ?cfg.tcp443_listen,
                "cannot start the QUIC and TLS-over-TCP listeners; serving native UDP only \
                 (set quic_listen = [] and tcp443_listen = [] to disable them)"
            );
            None
        }
    }
}

/// Where datagrams for the NMS shell go.
pub type NmsInputTx = mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>;

/// What the NMS shell reads: `(local, from, datagram)` from its UDP
/// sockets and from the hub.
pub type NmsInput = (
    mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
    mpsc::Receiver<(SocketAddr, SocketAddr, Vec<u8>)>,
);

async fn bind_nms(addrs: &[SocketAddr]) -> anyhow::Result<Vec<Arc<UdpSocket>>> {
    let mut out = Vec::new();
    for addr in addrs {
        let domain = if addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let sock =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.set_nonblocking(true)?;
        match sock.bind(&(*addr).into()) {
            Ok(()) => out.push(Arc::new(UdpSocket::from_std(sock.into())?)),
            // A host without IPv6 (or IPv4) still serves the other family.
            Err(e) if addrs.len() > 1 => {
                tracing::warn!(%addr, error = %e, "cannot bind NMS socket")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot bind NMS socket {addr}")),
        }
    }
    anyhow::ensure!(!out.is_empty(), "no NMS socket could be bound");
    Ok(out)
}

/// The NMS shell: sockets in, [`Nms`] in the middle, sockets and the
/// database out.
///
/// `input` also carries datagrams from the hub (`edge`), with
/// [`CloudHub::nms_local`] as their `local`: what the core sends from that
/// `local` goes back through the hub, on the leg to the destination.
///
/// Sessions: lookups answer [`NmsEvent::NeedSession`]; a Registration's
/// replay floor is stored ([`Store::record_registration`]) before it takes
/// effect; sessions this process's store ends reach the core at once
/// ([`Store::subscribe_ended_sessions`]), those other processes end within
/// [`SESSION_RECHECK`].
pub async fn run_nms(
    config: NmsConfig,
    sockets: Vec<Arc<UdpSocket>>,
    store: Store,
    stop: tokio::sync::watch::Receiver<bool>,
    edge: Option<Arc<CloudHub>>,
    input: NmsInput,
) -> anyhow::Result<()> {
    run_nms_observed(config, sockets, store, stop, edge, input, None, None, None).await
}

/// The console's question to the NMS: its registrations, by FQDN.
pub type ViewRequest = tokio::sync::oneshot::Sender<Vec<(String, crate::nms::Registration)>>;

/// A session lookup's answer.
enum Lookup {
    /// With the session's own counter range when instances share the
    /// database ([`Nms::handle_stored_session_with_counters`]).
    Found(SessionInfo, SessionStanding, Option<(u64, u64)>),
    Missing,
    Failed,
}

/// [`run_nms`], publishing the core's counters after every input.
#[allow(clippy::too_many_arguments)]
pub async fn run_nms_observed(
    config: NmsConfig,
    sockets: Vec<Arc<UdpSocket>>,
    store: Store,
    mut stop: tokio::sync::watch::Receiver<bool>,
    edge: Option<Arc<CloudHub>>,
    input: NmsInput,
    counters: Option<tokio::sync::watch::Sender<NmsCounters>>,
    mut views: Option<mpsc::Receiver<ViewRequest>>,
    links: Option<(crate::link::Links, mpsc::Receiver<crate::link::LinkInput>)>,
) -> anyhow::Result<()> {
    let (mut links, mut link_rx) = match links {
        Some((l, rx)) => (Some(l), Some(rx)),
        None => (None, None),
    };
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let base = store
        .reserve_signal_counters(micros, SIGNAL_COUNTER_RANGE)
        .await
        .context("cannot reserve the NMS's signaling counters in the database")?;
    // With other instances on the database, each session loaded gets its
    // own counters, above whatever range another instance sealed it with.
    let own_counters = config.peer_instances;
    let mut nms = Nms::new(config, seed, base).with_counter_limit(base + SIGNAL_COUNTER_RANGE);
    // The policy in force before the first route: never a moment of
    // allowing everything at start.
    let mut policy_version = 0;
    if let Some((version, policy)) = load_policy(&store, 0).await {
        policy_version = version;
        nms.handle_policy(Instant::now(), policy);
    }
    let (tx, mut rx) = input;
    let mut by_local = std::collections::HashMap::new();
    // Dropped on return, which stops the readers and so frees the ports
    // (a cloud restarted in the same process binds them again).
    let mut readers = tokio::task::JoinSet::new();
    for sock in &sockets {
        let local = sock.local_addr()?;
        by_local.insert(local, sock.clone());
        let (sock, tx) = (sock.clone(), tx.clone());
        readers.spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match sock.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if tx.send((local, from, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "NMS receive error"),
                }
            }
        });
    }
    let (session_tx, mut session_rx) = mpsc::channel::<(SessionId, Lookup)>(256);
    let (general_tx, mut general_rx) = mpsc::channel::<(SessionId, u64, GeneralNodes)>(256);
    let (floor_tx, mut floor_rx) = mpsc::channel::<(SessionId, u64, FloorStored)>(256);
    let (recheck_tx, mut recheck_rx) = mpsc::channel::<Vec<SessionId>>(1);
    let (withdrawn_tx, mut withdrawn_rx) = mpsc::channel::<(String, u64)>(256);
    let mut ended = store.subscribe_ended_sessions();
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rechecking = false;
    let (policy_tx, mut policy_rx) = mpsc::channel::<Option<(u64, Policy)>>(1);
    let mut policy_check = tokio::time::interval(POLICY_RECHECK);
    policy_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checking_policy = false;
    let mut seen_tick = tokio::time::interval(LAST_SEEN_EVERY);
    seen_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Link answers known at once (no peer to ask), fed back after the
    // events that caused them.
    let mut link_answers: Vec<(u64, crate::nms::LinkAnswer)> = Vec::new();
    loop {
        for (ticket, answer) in link_answers.drain(..) {
            nms.handle_link_answer(Instant::now(), ticket, answer);
        }
        while let Some(t) = nms.poll_transmit() {
            if let Some(edge) = edge.as_ref().filter(|e| e.nms_local() == t.local) {
                if let Err(e) = edge.send(t.destination, t.payload) {
                    tracing::debug!(dst = %t.destination, error = ?e, "NMS send over a leg dropped");
                }
            } else if let Some(sock) = by_local.get(&t.local) {
                if let Err(e) = sock.send_to(&t.payload, t.destination).await {
                    tracing::debug!(dst = %t.destination, error = %e, "NMS send failed");
                }
            }
        }
        while let Some(ev) = nms.poll_event() {
            match ev {
                NmsEvent::NeedSession { session_id } => {
                    let (store, tx) = (store.clone(), session_tx.clone());
                    tokio::spawn(async move {
                        let found = lookup_session(&store, session_id, own_counters).await;
                        let _ = tx.send((session_id, found)).await;
                    });
                }
                NmsEvent::StoreReplayFloor { session_id, floor } => {
                    let (store, tx) = (store.clone(), floor_tx.clone());
                    tokio::spawn(async move {
                        let outcome = match store.record_registration(session_id.0, floor).await {
                            Ok(_) => FloorStored::Stored,
                            Err(StoreError::NoSuchSession(_)) => FloorStored::SessionEnded,
                            Err(e) => {
                                tracing::warn!(%session_id, error = %e, "cannot store a replay floor");
                                FloorStored::Failed
                            }
                        };
                        let _ = tx.send((session_id, floor, outcome)).await;
                    });
                }
                NmsEvent::SessionEnded { fqdn, cert_serial } => {
                    let (store, tx) = (store.clone(), withdrawn_tx.clone());
                    tokio::spawn(async move {
                        match withdrawal(&store, cert_serial).await {
                            Ok(Some(why)) => {
                                tracing::warn!(%fqdn, serial = format_args!("{cert_serial:#x}"), why, "node left the overlay");
                                let _ = tx.send((fqdn, cert_serial)).await;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(%fqdn, error = %e, "cannot check an ended session's certificate")
                            }
                        }
                    });
                }
                NmsEvent::NatDetected { fqdn, nat } => {
                    tracing::info!(%fqdn, nat = nat.as_str(), "NAT detected")
                }
                NmsEvent::Registered { fqdn, observed } => {
                    tracing::info!(%fqdn, %observed, "Registration")
                }
                NmsEvent::RouteDirected {
                    route_id,
                    initiator,
                    responder,
                    pattern,
                } => {
                    tracing::info!(%route_id, %initiator, %responder, pattern = pattern.as_str(), "Route Direction done")
                }
                NmsEvent::DirectionFailed {
                    initiator,
                    target,
                    reason,
                } => {
                    tracing::info!(%initiator, %target, %reason, "Direction Request failed")
                }
                NmsEvent::LinkDirect {
                    ticket,
                    target,
                    scope,
                    initiator,
                } => {
                    let answer = match links.as_mut() {
                        Some(l) => l.forward(ticket, target, scope, initiator),
                        None => Some(crate::nms::LinkAnswer::NotFound(format!(
                            "no node named {target} is online"
                        ))),
                    };
                    link_answers.extend(answer.map(|a| (ticket, a)));
                }
                NmsEvent::LinkReply { ticket, message } => {
                    if let Some(l) = links.as_ref() {
                        l.reply(ticket, message);
                    }
                }
                NmsEvent::NeedGeneralNodes {
                    session_id,
                    txid,
                    device_id,
                    offset,
                } => {
                    let (store, tx) = (store.clone(), general_tx.clone());
                    tokio::spawn(async move {
                        match store.general_nodes(Some(&device_id)).await {
                            Ok(records) => {
                                let page = crate::general::page(&records, offset);
                                let _ = tx.send((session_id, txid, page)).await;
                            }
                            Err(e) => {
                                tracing::warn!(%device_id, error = %e, "general node lookup failed")
                            }
                        }
                    });
                }
            }
        }
        // After the transmits went out: whoever sees a counter move can
        // rely on the answers to that input having been sent.
        if let Some(counters) = &counters {
            counters.send_if_modified(|c| {
                let now = nms.counters();
                let changed = *c != now;
                *c = now;
                changed
            });
        }
        if !link_answers.is_empty() {
            continue;
        }
        let deadline = nms
            .poll_timeout()
            .map(|(t, _)| tokio::time::Instant::from_std(t))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => nms.handle_timeout(Instant::now()),
            Some((local, from, packet)) = rx.recv() => nms.handle_datagram(Instant::now(), local, from, &packet),
            Some((id, txid, page)) = general_rx.recv() => nms.handle_general_nodes(id, txid, page),
            Some(input) = async {
                match link_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match input {
                crate::link::LinkInput::Request { token, target, initiator, scope } => {
                    nms.handle_link_direct(Instant::now(), token, &target, *initiator, scope)
                }
                crate::link::LinkInput::Withdrawn { fqdn, cert_serial } => {
                    tracing::info!(%fqdn, serial = format_args!("{cert_serial:#x}"), "a linked NMS's node left the overlay");
                    nms.handle_withdrawn(Instant::now(), &fqdn, cert_serial)
                }
                crate::link::LinkInput::Answer { ticket, message } => {
                    if let Some(answer) = links.as_mut().and_then(|l| l.on_answer(ticket, message)) {
                        nms.handle_link_answer(Instant::now(), ticket, answer);
                    }
                }
            },
            Some((id, found)) = session_rx.recv() => match found {
                Lookup::Found(info, standing, None) => nms.handle_stored_session(Instant::now(), info, standing),
                Lookup::Found(info, standing, Some(counters)) => {
                    nms.handle_stored_session_with_counters(Instant::now(), info, standing, counters)
                }
                Lookup::Missing => nms.handle_session_missing(id),
                Lookup::Failed => nms.handle_session_lookup_failed(id),
            },
            Some((id, floor, outcome)) = floor_rx.recv() => {
                nms.handle_replay_floor_stored(Instant::now(), id, floor, outcome)
            }
            _ = seen_tick.tick() => {
                let now = Instant::now();
                let seen: Vec<String> = nms
                    .registrations()
                    .into_iter()
                    .filter(|(_, r)| now.saturating_duration_since(r.last_seen) < LAST_SEEN_EVERY)
                    .map(|(fqdn, _)| fqdn)
                    .collect();
                if !seen.is_empty() {
                    let store = store.clone();
                    tokio::spawn(async move {
                        if let Err(e) = store.touch_last_seen(&seen, SystemTime::now()).await {
                            tracing::debug!(error = %e, "cannot record when nodes were last seen");
                        }
                    });
                }
            }
            Some(reply) = async {
                match views.as_mut() {
                    Some(v) => v.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = reply.send(nms.registrations());
            }
            announced = ended.recv() => match announced {
                Ok(ids) => {
                    let ids: Vec<SessionId> = ids.into_iter().map(SessionId).collect();
                    nms.handle_sessions_ended(Instant::now(), &ids);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "missed ended-session announcements; re-checking every session");
                    recheck.reset_immediately();
                }
                // Invariant: the store (held here) keeps the sender.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            _ = recheck.tick(), if !rechecking => {
                let held = nms.held_sessions();
                if !held.is_empty() {
                    rechecking = true;
                    let (store, tx) = (store.clone(), recheck_tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(ended_among(&store, &held).await).await;
                    });
                }
            }
            _ = policy_check.tick(), if !checking_policy => {
                checking_policy = true;
                let (store, tx) = (store.clone(), policy_tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(load_policy(&store, policy_version).await).await;
                });
            }
            Some(found) = policy_rx.recv() => {
                checking_policy = false;
                if let Some((version, policy)) = found {
                    tracing::info!(version, "applying the access policy");
                    policy_version = version;
                    nms.handle_policy(Instant::now(), policy);
                }
            }
            Some((fqdn, serial)) = withdrawn_rx.recv() => {
                nms.handle_withdrawn(Instant::now(), &fqdn, serial);
                // Nodes of the other instances and linked domains may have
                // tunnels with it too.
                if let Some(l) = links.as_ref() {
                    l.withdrawn(&fqdn, serial);
                }
            }
            Some(gone) = recheck_rx.recv() => {
                rechecking = false;
                if !gone.is_empty() {
                    tracing::info!(sessions = gone.len(), "sessions ended in the store");
                    nms.handle_sessions_ended(Instant::now(), &gone);
                }
            }
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// The stored policy when its version differs from `known` (`None`: the
/// same, none, or unreadable, which is logged and keeps the one in force).
async fn load_policy(store: &Store, known: u64) -> Option<(u64, Policy)> {
    match store.policy_version().await {
        Ok(v) if v == known => return None,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the policy version");
            return None;
        }
    }
    let (version, document) = match store.policy().await {
        Ok(Some(found)) => found,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the policy");
            return None;
        }
    };
    match crate::policy::parse(&document) {
        Ok(parsed) => Some((version, parsed.policy)),
        Err(e) => {
            tracing::error!(version, error = %e, "the stored policy does not parse: keeping the one in force");
            None
        }
    }
}

async fn lookup_session(store: &Store, session_id: SessionId, own_counters: bool) -> Lookup {
    let failed = |e: StoreError| {
        tracing::warn!(error = %e, "session lookup failed");
        Lookup::Failed
    };
    let mut session = match store.session(session_id.0).await {
        Ok(Some(s)) => s,
        Ok(None) => return Lookup::Missing,
        Err(e) => return failed(e),
    };
    let device = match store.device(&session.device_id).await {
        Ok(Some(d)) if !d.disabled => d,
        Ok(_) => return Lookup::Missing,
        Err(e) => return failed(e),
    };
    let counters = if own_counters {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        match store
            .reserve_signal_counters(micros, SESSION_COUNTER_RANGE)
            .await
        {
            Ok(base) => Some((base, base + SESSION_COUNTER_RANGE)),
            Err(e) => return failed(e),
        }
    } else {
        None
    };
    Lookup::Found(
        SessionInfo {
            session_id,
            common_key: session.common_key,
            device_id: std::mem::take(&mut session.device_id),
            fqdn: std::mem::take(&mut session.fqdn),
            vip4: device.vip4,
            vip6: device.vip6,
            cert_serial: session.cert_serial,
        },
        SessionStanding {
            login_seq: session.login_seq,
            replay_floor: session.replay_floor,
        },
        counters,
    )
}

/// Why a certificate no longer belongs to the overlay, if it does not: it
/// was revoked, or its device was disabled or removed.
async fn withdrawal(store: &Store, serial: u64) -> Result<Option<&'static str>, StoreError> {
    let Some(cert) = store.certificate(serial).await? else {
        return Ok(Some("certificate removed"));
    };
    if cert.status == crate::store::CertStatus::Revoked {
        return Ok(Some("certificate revoked"));
    }
    Ok(match store.device(&cert.device_id).await? {
        None => Some("device removed"),
        Some(d) if d.disabled => Some("device disabled"),
        Some(_) => None,
    })
}

/// The sessions among `held` the store no longer has live (ended, expired,
/// device disabled). A store failure ends none.
async fn ended_among(store: &Store, held: &[SessionId]) -> Vec<SessionId> {
    let ids: Vec<u64> = held.iter().map(|s| s.0).collect();
    match store.live_sessions(&ids, SystemTime::now()).await {
        Ok(live) => held
            .iter()
            .copied()
            .filter(|s| !live.contains(&s.0))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-check sessions");
            Vec::new()
        }
    }
}

/// The relay secret shared by NMS and TRS, from `relay.secret`.
pub fn load_relay_secret(cfg: &CloudConfig) -> anyhow::Result<Vec<u8>> {
    let path = cfg.relay_secret_path();
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the relay secret {}: copy it from the host where `cyphonic cloud init` ran",
            path.display()
        )
    })?);
    let mut secret =
        hex::decode(text.trim()).with_context(|| format!("{} is not hex", path.display()))?;
    if secret.len() < 16 {
        zeroize::Zeroize::zeroize(&mut secret);
        anyhow::bail!("{} is too short (at least 16 bytes)", path.display());
    }
    Ok(secret)
}

/// The TRS shell: one thread per socket, each receiving a batch, asking the
/// [`crate::trs::Trs`] core what to do with every datagram, and forwarding
/// in place.
///
/// `edge`: relay sides bound over the hub's legs; forwards to them go
/// through the hub (its own task feeds the same core).
pub async fn run_trs(
    trs: Arc<std::sync::Mutex<crate::trs::Trs>>,
    sockets: Arc<cyphonic_platform::udp::Sockets>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    edge: Option<Arc<CloudHub>>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let halt = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for v6 in [false, true] {
        let present = if v6 {
            sockets.v6.is_some()
        } else {
            sockets.v4.is_some()
        };
        if !present {
            continue;
        }
        let (trs, sockets, halt) = (trs.clone(), sockets.clone(), halt.clone());
        let edge = edge.clone();
        threads.push(
            std::thread::Builder::new()
                .name(if v6 { "trs-udp6" } else { "trs-udp4" }.into())
                .spawn(move || relay_loop(v6, &trs, &sockets, &halt, edge.as_deref()))?,
        );
    }
    let expire = {
        let trs = trs.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                trs.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle_timeout(Instant::now(), unix);
            }
        })
    };
    let _ = stop.wait_for(|s| *s).await;
    expire.abort();
    halt.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    Ok(())
}

/// The TRS's reports (`docs/protocol.md` §5.18): every
/// [`REPORT_INTERVAL`](cyphonic_cloud_core::trs_pool::REPORT_INTERVAL),
/// one to each `to` address from the relay socket of its IP version, and
/// one into the input of an NMS in this process (`internal`: its input
/// and address), with the TRS's live sessions and forwarded bytes.
async fn report_trs(
    mut reporter: cyphonic_cloud_core::trs_pool::TrsReporter,
    trs: Arc<std::sync::Mutex<crate::trs::Trs>>,
    sockets: Arc<cyphonic_platform::udp::Sockets>,
    to: Vec<SocketAddr>,
    internal: Option<(NmsInputTx, SocketAddr)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if to.is_empty() && internal.is_none() {
        return Ok(());
    }
    tracing::info!(to = ?to, internal = internal.is_some(), "TRS reporting");
    let own = sockets
        .v4
        .as_ref()
        .or(sockets.v6.as_ref())
        .and_then(|s| s.local_addr().ok())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut tick = tokio::time::interval(cyphonic_cloud_core::trs_pool::REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let counters = trs.lock().unwrap_or_else(|e| e.into_inner()).counters();
        let unix_micros = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0)
        };
        for dst in &to {
            let report =
                reporter.report(unix_micros(), counters.sessions, counters.forwarded_bytes);
            if let Err(e) = sockets.send_to(&report, *dst) {
                tracing::debug!(%dst, error = %e, "TRS Report not sent");
            }
        }
        if let Some((tx, nms)) = &internal {
            let report =
                reporter.report(unix_micros(), counters.sessions, counters.forwarded_bytes);
            // A full queue drops it: the next one comes in a second.
            let _ = tx.try_send((*nms, own, report));
        }
    }
}

fn relay_loop(
    v6: bool,
    trs: &std::sync::Mutex<crate::trs::Trs>,
    sockets: &cyphonic_platform::udp::Sockets,
    halt: &std::sync::atomic::AtomicBool,
    edge: Option<&CloudHub>,
) {
    use crate::trs::Action;
    use std::sync::atomic::Ordering;
    let Some(sock) = (if v6 {
        sockets.v6.as_ref()
    } else {
        sockets.v4.as_ref()
    }) else {
        return;
    };
    const N: usize = 32;
    let mut bufs: [Vec<u8>; N] = std::array::from_fn(|_| vec![0u8; 65536]);
    let mut meta = [cyphonic_platform::udp::RecvMeta::default(); N];
    // Datagrams to legs (QUIC fast paths in trains, others through the hub).
    let mut forwarder = crate::edge::Forwarder::new(edge, sockets);
    while !halt.load(Ordering::Relaxed) {
        let n = match sockets.recv_batch(sock, &mut bufs, &mut meta, Duration::from_millis(250)) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "relay receive failed");
                continue;
            }
        };
        let now = Instant::now();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // One lock per batch, not per datagram.
        let mut trs = trs.lock().unwrap_or_else(|e| e.into_inner());
        for (buf, m) in bufs.iter_mut().zip(meta.iter()).take(n) {
            let from = cyphonic_platform::udp::canonical(m.addr);
            let stride = m.stride.max(1);
            // A GRO batch holds datagrams of one source, back to back;
            // those forwarded over UDP to one destination leave as one GSO
            // train (`start..end` of the buffer), the rest one by one.
            let mut train: Option<(SocketAddr, usize, usize)> = None;
            let mut off = 0;
            while off < m.len {
                let start = off;
                let end = (off + stride).min(m.len);
                off = end;
                let action = trs.handle_datagram(now, unix, from, &mut buf[start..end]);
                if let Action::Forward(dst) = action {
                    if !crate::edge::is_leg(edge, dst) {
                        match train.as_mut() {
                            Some((d, _, e)) if *d == dst && *e == start => *e = end,
                            _ => {
                                send_train(sockets, buf, train.take(), stride);
                                train = Some((dst, start, end));
                            }
                        }
                        continue;
                    }
                }
                send_train(sockets, buf, train.take(), stride);
                let datagram = &buf[start..end];
                let result = match action {
                    Action::Forward(dst) => {
                        forwarder.forward(datagram, dst);
                        Ok(())
                    }
                    Action::Reply(len) => sockets.send_to(&datagram[..len], from),
                    Action::Drop(reason) => {
                        tracing::trace!(%from, ?reason, "relay drop");
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "relay send failed");
                }
            }
            send_train(sockets, buf, train.take(), stride);
        }
        forwarder.flush();
    }
}

/// Sends the forwarded datagrams `start..end` of `buf` (`stride` apart) to
/// their destination: one GSO call where the kernel allows.
fn send_train(
    sockets: &cyphonic_platform::udp::Sockets,
    buf: &[u8],
    train: Option<(SocketAddr, usize, usize)>,
    stride: usize,
) {
    let Some((dst, start, end)) = train else {
        return;
    };
    if let Err(e) = sockets.send_segments(&buf[start..end], stride, dst) {
        tracing::debug!(%dst, error = %e, "relay send failed");
    }
}
