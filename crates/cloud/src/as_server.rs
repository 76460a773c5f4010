//! The AS: the Login flow over TLS (see [`crate::as_proto`]).
//!
//! At start the AS loads the intermediate CA (`as.pem`, `as.key`) and the
//! root (`root.pem`) from `data_dir`, issues itself a TLS server certificate
//! for `public_addrs`, `localhost`, 127.0.0.1 and ::1 (renewed daily), and
//! listens on every `as_listen` address. A client certificate is optional
//! at the TLS layer (enrolling nodes have none yet); when one is presented,
//! rustls has verified its chain to our root before any request is read.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections, of which
//! [`MAX_CONNECTIONS_PER_SOURCE`] from one source (an IPv4 address or an
//! IPv6 /64), [`MAX_LINE`] bytes per request line, [`IDLE_TIMEOUT`] of
//! silence (handshake included), and at most [`MAX_PASSWORD_CHECKS`] argon2
//! verifications at once, so unauthenticated peers cannot take every core.
//!
//! Password guessing is limited ([`Attempts`]): one enrollment per
//! connection, and per device ID and per source [`FREE_FAILURES`] wrong
//! passwords, then a lockout that doubles with every further one (from
//! [`FIRST_LOCKOUT`] up to [`MAX_LOCKOUT`]). A locked attempt costs no
//! argon2 work and is answered [`code::TOO_MANY_ATTEMPTS`].
//!
//! Renewal (`renew`, `docs/protocol.md` §3.3) needs the client certificate
//! a Login needs, at least a third of its lifetime old and not renewed
//! before: each certificate has at most one successor, so a stolen key
//! cannot mint certificates in a loop, and the node that renews second
//! learns that two hold its key ([`code::ALREADY_RENEWED`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use cyphonic_pki::{Issuer, Verifier};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::as_proto::{encode_line, CertLife, LoginOk, Request, Response, CERT_BACKDATE, MAX_LINE};
use crate::config::CloudConfig;
use crate::store::{
    CertStatus, CertificateRecord, DeviceRecord, EnrollmentGrant, Store, StoreError,
};

/// The error codes of `docs/protocol.md` §3.3: those of
/// [`crate::as_proto::code`] and the ones this AS added since.
pub mod code {
    pub use crate::as_proto::code::*;
    /// The enrollment was not tried: too many wrong passwords for this
    /// device ID or from this source (the message says when to try again),
    /// or a second enrollment on one connection (which is then closed).
    pub const TOO_MANY_ATTEMPTS: &str = "too_many_attempts";
    /// The right password, but it already enrolled the device: enrollment
    /// passwords are one-time; the operator resets the device for a new
    /// one.
    pub const CREDENTIAL_USED: &str = "credential_used";
}

/// Silence after which a connection is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections served at once from one source (an IPv4 address or an IPv6
/// /64); more from it are closed at once.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// Password verifications (argon2) at once.
pub const MAX_PASSWORD_CHECKS: usize = 4;
/// Enrollments (password checks) one connection may ask for; a further
/// one is refused and the connection closed.
pub const MAX_ENROLLMENTS_PER_CONNECTION: u32 = 1;
/// Wrong passwords per device ID and per source before a lockout.
pub const FREE_FAILURES: u32 = 5;
/// The first lockout; each further wrong password doubles it.
pub const FIRST_LOCKOUT: Duration = Duration::from_secs(60);
/// The longest lockout.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);
/// The wait asked of an attempt while as many are being checked as a key
/// has failures left (not a lockout: nothing failed yet).
pub const BUSY_WAIT: Duration = Duration::from_secs(1);
/// A device ID or source without a wrong password for this long starts
/// afresh.
pub const FORGET_FAILURES_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Device IDs and sources whose failures are remembered, each; when full,
/// the entry with the oldest failure goes.
pub const MAX_TRACKED: usize = 16_384;
/// How often forgotten failures are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often the AS renews its own TLS server certificate.
const SERVER_CERT_RENEWAL: Duration = Duration::from_secs(24 * 3600);
/// Slack for node clocks that run behind: a certificate is valid from this
/// long before its issue.
const CLOCK_SKEW: Duration = CERT_BACKDATE;
/// How long in-flight connections may finish after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves the AS until `shutdown` completes.
pub async fn serve(
    cfg: Arc<CloudConfig>,
    store: Store,
    shutdown: impl Future,
) -> anyhow::Result<()> {
    AsServer::bind(cfg, store).await?.run(shutdown).await
}

/// [`serve`], reporting the bound addresses on `ready` once listening
/// (useful with port 0).
pub async fn serve_with_ready(
    cfg: Arc<CloudConfig>,
    store: Store,
    shutdown: impl Future,
    ready: oneshot::Sender<Vec<SocketAddr>>,
) -> anyhow::Result<()> {
    let server = AsServer::bind(cfg, store).await?;
    // The receiver may have given up waiting; serving goes on regardless.
    let _ = ready.send(server.local_addrs());
    server.run(shutdown).await
}

/// A bound AS, ready to [`run`](AsServer::run).
pub struct AsServer {
    listeners: Vec<TcpListener>,
    local_addrs: Vec<SocketAddr>,
    identity: ServerIdentity,
    state: Arc<State>,
}

/// A TLS server certificate the AS CA issued for the cloud's public
/// addresses, `localhost`, 127.0.0.1 and ::1: the AS presents it, and so do
/// the cloud's QUIC and TLS-over-TCP listeners.
#[derive(Clone)]
pub struct ServerIdentity {
    /// The server certificate, then the intermediate (PEM).
    pub chain_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    /// Our root (DER), the only trust anchor.
    pub root_der: Vec<u8>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

/// Loads the CA material from `data_dir` and issues a fresh
/// [`ServerIdentity`] (for hosts that run the cloud's listeners without the
/// AS; with the AS, [`AsServer::identity`] is the same kind of certificate).
pub async fn server_identity(cfg: &CloudConfig, store: &Store) -> anyhow::Result<ServerIdentity> {
    let (_, issuer, verifier) = load_ca(cfg)?;
    issue_identity(cfg, store, &issuer, verifier.root_der()).await
}

/// An intermediate CA closer to its end than this is warned about at start.
pub const INTERMEDIATE_WARNING: Duration = Duration::from_secs(180 * 86_400);

/// The root (PEM), the intermediate CA and a verifier on the root.
fn load_ca(cfg: &CloudConfig) -> anyhow::Result<(String, Issuer, Verifier)> {
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; run `cyphonic cloud init` first or check data_dir",
                path.display()
            )
        })
    };
    let root_pem = read(cfg.root_cert_path())?;
    let as_cert_pem = read(cfg.as_cert_path())?;
    let as_key_pem = read(cfg.as_key_path())?;
    let issuer = Issuer::from_pem(&as_cert_pem, &as_key_pem).with_context(|| {
        format!(
            "cannot load the intermediate CA from {} and {}",
            cfg.as_cert_path().display(),
            cfg.as_key_path().display()
        )
    })?;
    let verifier = Verifier::from_pem(&root_pem)
        .with_context(|| format!("cannot load the root CA {}", cfg.root_cert_path().display()))?;
    // The root key is never needed here, only to make a new intermediate
    // before this one ends.
    let renew = "make a new one from the root: `cyphonic cloud intermediate renew --config \
                 <cloud.toml> --root <folder of root.key>`";
    match issuer.not_after().duration_since(SystemTime::now()) {
        Err(_) => anyhow::bail!(
            "the intermediate CA {} has expired: node certificates it issues would not verify; {renew}",
            cfg.as_cert_path().display()
        ),
        Ok(left) if left < INTERMEDIATE_WARNING => tracing::warn!(
            days_left = left.as_secs() / 86_400,
            "the intermediate CA {} ends soon; {renew}",
            cfg.as_cert_path().display()
        ),
        Ok(_) => {}
    }
    Ok((root_pem, issuer, verifier))
}

struct State {
    cfg: Arc<CloudConfig>,
    store: Store,
    issuer: Issuer,
    verifier: Verifier,
    root_pem: String,
    root_der: Vec<u8>,
    acceptor: RwLock<TlsAcceptor>,
    password_checks: Semaphore,
    attempts: Mutex<Attempts>,
    slots: Arc<ConnectionSlots>,
}

impl AsServer {
    /// Loads the CA material, issues the server certificate and binds every
    /// `as_listen` address.
    pub async fn bind(cfg: Arc<CloudConfig>, store: Store) -> anyhow::Result<AsServer> {
        let (root_pem, issuer, verifier) = load_ca(&cfg)?;
        let root_der = verifier.root_der().to_vec();

        let identity = issue_identity(&cfg, &store, &issuer, &root_der).await?;
        let acceptor = make_acceptor(&identity)?;
        let state = State {
            cfg: cfg.clone(),
            store,
            issuer,
            verifier,
            root_pem,
            root_der,
            acceptor: RwLock::new(acceptor),
            password_checks: Semaphore::new(MAX_PASSWORD_CHECKS),
            attempts: Mutex::new(Attempts::new(MAX_TRACKED)),
            slots: Arc::new(ConnectionSlots::new(MAX_CONNECTIONS_PER_SOURCE)),
        };

        let mut listeners = Vec::new();
        for addr in &cfg.as_listen {
            match bind_tcp(*addr) {
                Ok(l) => listeners.push(l),
                // A host without IPv6 still serves IPv4 with the defaults.
                Err(e)
                    if addr.is_ipv6()
                        && addr.ip().is_unspecified()
                        && !matches!(
                            e.kind(),
                            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                        ) =>
                {
                    warn!(%addr, error = %e, "IPv6 is not available here; not listening on it");
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot listen on {addr} (as_listen in the configuration)")
                    })
                }
            }
        }
        let local_addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<Vec<_>, _>>()?;
        if local_addrs.is_empty() {
            anyhow::bail!("the AS could bind none of as_listen");
        }
        Ok(AsServer {
            listeners,
            local_addrs,
            identity,
            state: Arc::new(state),
        })
    }

    /// The addresses actually bound (ports resolved when 0 was asked).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs.clone()
    }

    /// The server certificate the AS presents (as issued at bind; renewals
    /// replace the AS's own copy only).
    pub fn identity(&self) -> ServerIdentity {
        self.identity.clone()
    }

    /// Accepts and serves connections until `shutdown` completes; then stops
    /// accepting and gives open connections a short grace to finish.
    pub async fn run(self, shutdown: impl Future) -> anyhow::Result<()> {
        self.run_with_handoff(None, shutdown).await
    }

    /// [`AsServer::run`], also serving TLS streams another listener
    /// accepted for the AS (TCP 443, ALPN [`crate::as_proto::AS_ALPN`]).
    pub async fn run_with_handoff(
        self,
        mut handoff: Option<mpsc::Receiver<(HandedOff, SocketAddr)>>,
        shutdown: impl Future,
    ) -> anyhow::Result<()> {
        info!(addrs = ?self.local_addrs, "AS listening");
        let (accepted_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr)>(64);
        let mut acceptors = JoinSet::new();
        for listener in self.listeners {
            acceptors.spawn(accept_loop(listener, accepted_tx.clone()));
        }
        drop(accepted_tx);

        let mut connections = JoinSet::new();
        let mut renewal = tokio::time::interval(SERVER_CERT_RENEWAL);
        renewal.tick().await; // The first tick is immediate; the cert is fresh.
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some((tcp, peer)) = accepted.recv() => {
                    let Some(slot) = admit(&self.state, connections.len(), peer) else {
                        continue;
                    };
                    let state = self.state.clone();
                    connections.spawn(async move {
                        serve_connection(state, tcp, peer).await;
                        drop(slot);
                    });
                }
                Some((tls, peer)) = async { handoff.as_mut()?.recv().await }, if handoff.is_some() => {
                    let Some(slot) = admit(&self.state, connections.len(), peer) else {
                        continue;
                    };
                    let state = self.state.clone();
                    connections.spawn(async move {
                        serve_tls(state, tls, peer).await;
                        drop(slot);
                    });
                }
                _ = prune.tick() => self.state.attempts().prune(Instant::now()),
                Some(done) = connections.join_next() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            warn!(error = %e, "an AS connection task panicked");
                        }
                    }
                }
                _ = renewal.tick() => match issue_identity(&self.state.cfg, &self.state.store, &self.state.issuer, &self.state.root_der).await.and_then(|id| make_acceptor(&id)) {
                    Ok(acceptor) => {
                        *self.state.acceptor.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
                        info!("renewed the AS server certificate");
                    }
                    Err(e) => warn!(error = %format!("{e:#}"), "cannot renew the AS server certificate"),
                },
            }
        }
        acceptors.shutdown().await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        connections.shutdown().await;
        info!("AS stopped");
        Ok(())
    }
}

/// A slot for a new connection from `peer`, or `None` (and the connection
/// is dropped, so closed) when the AS or that source is full.
fn admit(state: &State, open: usize, peer: SocketAddr) -> Option<SourceSlot> {
    if open >= MAX_CONNECTIONS {
        warn!(%peer, "too many connections; closing this one");
        return None;
    }
    let slot = ConnectionSlots::acquire(&state.slots, peer.ip());
    if slot.is_none() {
        warn!(%peer, limit = MAX_CONNECTIONS_PER_SOURCE, "too many connections from this source; closing this one");
    }
    slot
}

/// What one connection has asked for so far.
#[derive(Debug, Default)]
struct ConnectionState {
    enrollments: u32,
}

impl State {
    fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one request line. The flag says whether to close the
    /// connection after the answer.
    async fn answer(
        &self,
        line: &[u8],
        peer_chain: Option<&[Vec<u8>]>,
        peer: SocketAddr,
        conn: &mut ConnectionState,
    ) -> (Response, bool) {
        let request: Request = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                // serde_json's message names the field or the unknown type;
                // it does not echo string values such as a password.
                info!(%peer, error = %e, "bad Login request");
                return (
                    Response::error(code::BAD_REQUEST, format!("invalid request: {e}")),
                    true,
                );
            }
        };
        let result = match request {
            Request::Enroll { device_id, .. }
                if conn.enrollments >= MAX_ENROLLMENTS_PER_CONNECTION =>
            {
                warn!(%peer, device_id, "enroll refused: another enrollment on one connection");
                return (
                    Response::error(
                        code::TOO_MANY_ATTEMPTS,
                        format!(
                            "at most {MAX_ENROLLMENTS_PER_CONNECTION} enrollment per connection; \
                             open a new connection"
                        ),
                    ),
                    true,
                );
            }
            Request::Enroll {
                device_id,
                password,
                csr_pem,
            } => {
                conn.enrollments += 1;
                self.enroll(&device_id, &password.0, &csr_pem, peer).await
            }
            Request::Login {} => self.login(peer_chain, peer).await,
            Request::EnrollGeneral { device_id, csr_pem } => {
                self.enroll_general(peer_chain, &device_id, &csr_pem, peer)
                    .await
            }
            Request::Renew { csr_pem } => self.renew(peer_chain, &csr_pem, peer).await,
        };
        match result {
            Ok(response) => (response, false),
            Err(Refusal { code, message }) => (Response::error(code, message), false),
        }
    }

    async fn enroll(
        &self,
        device_id: &str,
        password: &str,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Result<Response, Refusal> {
        // Counted before the check, so concurrent guesses cannot slip past
        // the limit; settled once the outcome is known.
        let attempt = self
            .attempts()
            .begin(device_id, peer.ip(), Instant::now())
            .map_err(|wait| match wait {
                Wait::Locked(retry_after) => {
                    warn!(%peer, device_id, retry_after = retry_after.as_secs(), "enroll refused: too many failed attempts");
                    Refusal::new(
                        code::TOO_MANY_ATTEMPTS,
                        format!(
                            "too many wrong passwords for this device or from this address; \
                             try again in {} s",
                            retry_after.as_secs().max(1)
                        ),
                    )
                }
                Wait::Busy => {
                    info!(%peer, device_id, "enroll deferred: attempts being checked");
                    Refusal::new(
                        code::TOO_MANY_ATTEMPTS,
                        format!(
                            "other enrollments for this device or from this address are being \
                             checked; try again in {} s",
                            BUSY_WAIT.as_secs()
                        ),
                    )
                }
            })?;
        let checked = {
            // Invariant: the semaphore is never closed.
            let _permit = self
                .password_checks
                .acquire()
                .await
                .map_err(|_| Refusal::internal())?;
            self.store.check_enrollment(device_id, password).await
        };
        let failed = matches!(checked, Err(StoreError::BadCredentials));
        self.attempts().settle(attempt, failed);
        if matches!(checked, Err(StoreError::CredentialUsed(_))) {
            if let Some(again) = self.enrolled_again(device_id, csr_pem, peer).await {
                return Ok(again);
            }
        }
        let grant = checked.map_err(|e| enroll_refusal(e, device_id, peer))?;
        self.issue_for(&grant.device, Some(&grant), csr_pem, peer)
            .await
    }

    /// The answer to an enrollment retried with the right, spent password
    /// and the same key: the certificate the first attempt was issued
    /// (its answer was lost, or came after the client gave up), if it is
    /// still good. Anyone else holding the password gets nothing from it:
    /// the certificate is for a key only the enrolling node has.
    async fn enrolled_again(
        &self,
        device_id: &str,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Option<Response> {
        let key = cyphonic_pki::csr_key(csr_pem).ok()?;
        let now = SystemTime::now();
        let certs = self.store.certificates_of(device_id).await.ok()?;
        let cert = certs.into_iter().rev().find(|c| {
            c.status == CertStatus::Good
                && cyphonic_pki::pem_to_der_chain(&c.cert_pem)
                    .ok()
                    .and_then(|chain| chain.into_iter().next())
                    .and_then(|der| self.leaf_key(&der, &c.fqdn, now))
                    == Some(key)
        })?;
        info!(%peer, device_id, serial = format_args!("{:#x}", cert.serial), "enrollment asked again with the same key: the same certificate");
        Some(Response::Enrolled {
            fqdn: cert.fqdn,
            cert_chain_pem: join_pem(&cert.cert_pem, self.issuer.cert_pem()),
            root_pem: self.root_pem.clone(),
        })
    }

    /// A certificate for `device` from the CSR, recorded, with its chain.
    /// With `grant`, recording it spends the password that enrolled it (a
    /// CSR the AS cannot use spends nothing).
    async fn issue_for(
        &self,
        device: &DeviceRecord,
        grant: Option<&EnrollmentGrant>,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Result<Response, Refusal> {
        let device_id = device.device_id.as_str();
        let (cert, record) = self.issue(device, csr_pem, SystemTime::now(), peer).await?;
        let recorded = match grant {
            Some(grant) => self.store.record_enrollment(grant, &record).await,
            None => self.store.record_certificate(&record).await,
        };
        recorded.map_err(|e| enroll_refusal(e, device_id, peer))?;
        info!(%peer, device_id, fqdn = %device.fqdn, serial = format_args!("{:#x}", cert.serial), "enrolled");
        Ok(Response::Enrolled {
            fqdn: device.fqdn.clone(),
            cert_chain_pem: join_pem(&cert.cert_pem, self.issuer.cert_pem()),
            root_pem: self.root_pem.clone(),
        })
    }

    /// A certificate for `device` from the CSR, valid from [`CLOCK_SKEW`]
    /// before `now` for the configured lifetime, and its record (not
    /// recorded yet).
    async fn issue(
        &self,
        device: &DeviceRecord,
        csr_pem: &str,
        now: SystemTime,
        peer: SocketAddr,
    ) -> Result<(cyphonic_pki::IssuedCert, CertificateRecord), Refusal> {
        let device_id = device.device_id.as_str();
        let serial = self.store.next_serial().await.map_err(|e| {
            warn!(%peer, device_id, error = %e, "issuing failed");
            Refusal::internal()
        })?;
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
        let not_after = now + self.cfg.cert_validity();
        let cert = self
            .issuer
            .issue_node(
                csr_pem,
                &device.fqdn,
                &[device.vip4.into(), device.vip6.into()],
                serial,
                not_before,
                not_after,
            )
            .map_err(|e| {
                info!(%peer, device_id, error = %e, "refused: unusable CSR");
                Refusal::new(
                    code::BAD_CSR,
                    format!("cannot issue a certificate from this CSR: {e}"),
                )
            })?;
        let record = CertificateRecord::issued(device, &cert, now);
        Ok((cert, record))
    }

    /// `renew`: the node proves itself with its certificate (as for
    /// Login), which must be at least a third of its lifetime old
    /// ([`CertLife::renewable_from`]) and not renewed before; the new
    /// certificate is for the same device and the CSR's key, which must be
    /// another. The presented certificate stays good until it expires.
    ///
    /// A renewal whose answer was lost is asked for again with the same
    /// CSR key: the certificate already issued for that key is answered
    /// again. Another key gets [`code::ALREADY_RENEWED`].
    async fn renew(
        &self,
        peer_chain: Option<&[Vec<u8>]>,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Result<Response, Refusal> {
        let Authenticated { device, node, cert } =
            self.authenticate(peer_chain, peer, "renew").await?;
        let device_id = device.device_id.as_str();
        let now = SystemTime::now();
        let from = CertLife::of(cert.not_before, cert.not_after).renewable_from();
        if let Some(wait) = from.duration_since(now).ok().filter(|w| !w.is_zero()) {
            info!(%peer, device_id, serial = format_args!("{:#x}", cert.serial), wait = wait.as_secs(), "renew refused: too early");
            return Err(Refusal::new(
                code::RENEWAL_TOO_EARLY,
                format!(
                    "certificate {:#x} is younger than a third of its lifetime; \
                     renew in {} s",
                    cert.serial,
                    wait.as_secs().max(1)
                ),
            ));
        }
        let (issued, record) = self.issue(&device, csr_pem, now, peer).await?;
        let Some(key) = self.leaf_key(&issued.cert_der, &device.fqdn, now) else {
            warn!(%peer, device_id, "renew failed: the new certificate does not verify");
            return Err(Refusal::internal());
        };
        if key == node.public_key {
            info!(%peer, device_id, "renew refused: the CSR has the old key");
            return Err(Refusal::new(
                code::BAD_CSR,
                "a renewal needs a new key: make one and send its CSR",
            ));
        }
        let chain_pem = match self.store.record_renewal(cert.serial, &record).await {
            Ok(()) => {
                info!(
                    %peer,
                    device_id,
                    renewed = format_args!("{:#x}", cert.serial),
                    serial = format_args!("{:#x}", record.serial),
                    "certificate renewed"
                );
                join_pem(&issued.cert_pem, self.issuer.cert_pem())
            }
            Err(StoreError::AlreadyRenewed { serial, successor }) => {
                let same_key = successor.status == CertStatus::Good
                    && cyphonic_pki::pem_to_der_chain(&successor.cert_pem)
                        .ok()
                        .and_then(|c| c.into_iter().next())
                        .and_then(|der| self.leaf_key(&der, &device.fqdn, now))
                        == Some(key);
                if !same_key {
                    warn!(
                        %peer,
                        device_id,
                        renewed = format_args!("{serial:#x}"),
                        successor = format_args!("{:#x}", successor.serial),
                        "renew refused: this certificate was already renewed for another key \
                         (two hold the device's key?)"
                    );
                    return Err(Refusal::new(
                        code::ALREADY_RENEWED,
                        format!(
                            "certificate {serial:#x} was already renewed; if this node did not \
                             renew it, its key is known to someone else: the operator resets \
                             the device (`cyphonic cloud device reset {device_id}`)"
                        ),
                    ));
                }
                info!(%peer, device_id, serial = format_args!("{:#x}", successor.serial), "renewal asked again: the same certificate");
                join_pem(&successor.cert_pem, self.issuer.cert_pem())
            }
            Err(StoreError::CertificateRevoked(serial)) => {
                warn!(%peer, device_id, "renew refused: certificate revoked meanwhile");
                return Err(Refusal::new(
                    code::CERTIFICATE_REJECTED,
                    format!("certificate {serial:#x} has been revoked"),
                ));
            }
            Err(StoreError::DeviceDisabled(id)) => {
                return Err(Refusal::new(
                    code::DEVICE_DISABLED,
                    format!("device {id} is disabled"),
                ))
            }
            Err(StoreError::NoSuchDevice(id)) => {
                return Err(Refusal::new(
                    code::CERTIFICATE_REJECTED,
                    format!("device {id} no longer exists"),
                ))
            }
            Err(e) => return Err(self.internal(peer, e)),
        };
        Ok(Response::Renewed {
            fqdn: device.fqdn,
            cert_chain_pem: chain_pem,
        })
    }

    /// The Ed25519 key of a node certificate this AS issued (DER), if it
    /// verifies for `fqdn` at `now`.
    fn leaf_key(&self, der: &[u8], fqdn: &str, now: SystemTime) -> Option<[u8; 32]> {
        let chain = [der.to_vec(), self.issuer.cert_der().to_vec()];
        self.verifier
            .verify_node(&chain, Some(fqdn), now)
            .ok()
            .map(|n| n.public_key)
    }

    /// `enroll_general`: the adapter proves itself with its certificate (as
    /// for Login); the general node must be one it serves.
    async fn enroll_general(
        &self,
        peer_chain: Option<&[Vec<u8>]>,
        device_id: &str,
        csr_pem: &str,
        peer: SocketAddr,
    ) -> Result<Response, Refusal> {
        let adapter = self
            .authenticate(peer_chain, peer, "enroll_general")
            .await?
            .device;
        let served = self
            .store
            .general_nodes(Some(&adapter.device_id))
            .await
            .map_err(|e| self.internal(peer, e))?
            .into_iter()
            .find(|g| g.device.device_id == device_id);
        let Some(general) = served else {
            warn!(%peer, adapter = %adapter.device_id, device_id, "general node enrollment refused: not served by this adapter");
            return Err(Refusal::new(
                code::NOT_SERVED,
                format!("{device_id} is not a general node of {}", adapter.device_id),
            ));
        };
        if general.device.disabled {
            return Err(Refusal::new(
                code::DEVICE_DISABLED,
                format!("device {device_id} is disabled"),
            ));
        }
        info!(%peer, adapter = %adapter.device_id, device_id, "enrolling a general node for its adapter");
        self.issue_for(&general.device, None, csr_pem, peer).await
    }

    /// The device whose certificate the TLS client presented: issued by
    /// this cloud, not revoked, its device still there and enabled.
    /// `request` names the request in logs.
    async fn authenticate(
        &self,
        peer_chain: Option<&[Vec<u8>]>,
        peer: SocketAddr,
        request: &'static str,
    ) -> Result<Authenticated, Refusal> {
        let Some(chain) = peer_chain.filter(|c| !c.is_empty()) else {
            info!(%peer, request, "refused: no client certificate");
            return Err(Refusal::new(
                code::CERTIFICATE_REQUIRED,
                format!("{request} needs the node certificate; enroll first"),
            ));
        };
        let reject = |reason: String| {
            warn!(%peer, request, reason = %reason, "refused: client certificate");
            Refusal::new(code::CERTIFICATE_REJECTED, reason)
        };
        let now = SystemTime::now();
        let node = self
            .verifier
            .verify_node(chain, None, now)
            .map_err(|e| reject(format!("certificate not acceptable: {e}")))?;
        let serial = node.serial;
        let record = self
            .store
            .certificate(serial)
            .await
            .map_err(|e| self.internal(peer, e))?
            .ok_or_else(|| {
                reject(format!(
                    "certificate {serial:#x} was not issued by this cloud"
                ))
            })?;
        if record.status == CertStatus::Revoked {
            return Err(reject(format!("certificate {serial:#x} has been revoked")));
        }
        let issued_der = cyphonic_pki::pem_to_der_chain(&record.cert_pem)
            .ok()
            .and_then(|c| c.into_iter().next());
        if issued_der.as_deref() != Some(chain[0].as_slice()) || record.fqdn != node.fqdn {
            return Err(reject(format!(
                "certificate {serial:#x} does not match the one this cloud issued"
            )));
        }
        let device = self
            .store
            .device(&record.device_id)
            .await
            .map_err(|e| self.internal(peer, e))?
            .ok_or_else(|| reject(format!("device {} no longer exists", record.device_id)))?;
        if device.fqdn != node.fqdn {
            return Err(reject(format!(
                "certificate {serial:#x} names {} but device {} is {}",
                node.fqdn, device.device_id, device.fqdn
            )));
        }
        if device.disabled {
            warn!(%peer, request, device_id = %device.device_id, "refused: device disabled");
            return Err(Refusal::new(
                code::DEVICE_DISABLED,
                format!("device {} is disabled", device.device_id),
            ));
        }
        Ok(Authenticated {
            device,
            node,
            cert: record,
        })
    }

    async fn login(
        &self,
        peer_chain: Option<&[Vec<u8>]>,
        peer: SocketAddr,
    ) -> Result<Response, Refusal> {
        let Authenticated { device, node, .. } =
            self.authenticate(peer_chain, peer, "login").await?;
        let serial = node.serial;
        let now = SystemTime::now();
        // A session never outlives the certificate that opened it.
        let cert_left = node.not_after.duration_since(now).unwrap_or_default();
        let lifetime = Duration::from_secs(self.cfg.session_lifetime_secs).min(cert_left);
        let lifetime = Duration::from_secs(lifetime.as_secs());
        let session = self
            .store
            .create_session(&device.device_id, serial, lifetime)
            .await
            .map_err(|e| self.internal(peer, e))?;
        info!(
            %peer,
            device_id = %device.device_id,
            session_id = format_args!("{:#x}", session.session_id),
            "login"
        );
        Ok(Response::LoginOk(LoginOk {
            session_id: session.session_id,
            common_key: hex::encode(session.common_key),
            fqdn: device.fqdn,
            vip4: device.vip4,
            vip6: device.vip6,
            domain: self.cfg.domain.clone(),
            keepalive_secs: self.cfg.keepalive_secs,
            nms_port: self.cfg.nms_port(),
            session_expires_in: lifetime.as_secs(),
            // Every instance of this cloud: a node moves to another when
            // this one is gone.
            cloud_addrs: self
                .cfg
                .public_addrs
                .iter()
                .copied()
                .chain(
                    self.cfg
                        .links
                        .iter()
                        .filter(|l| l.domain.is_none())
                        .flat_map(|l| l.node_addrs()),
                )
                .collect(),
            quic_port: self.cfg.leg_ports().0,
            tcp_port: self.cfg.leg_ports().1,
            linked_domains: self.linked_domains(),
            instance_addrs: self
                .cfg
                .links
                .iter()
                .filter(|l| l.domain.is_none())
                .flat_map(|l| l.node_addrs())
                .collect(),
        }))
    }

    /// The cooperating domains with their roots (read from `[[link]]`'s
    /// `root` files; one that cannot be read is left out and logged).
    fn linked_domains(&self) -> Vec<cyphonic_proto::login::LinkedDomain> {
        self.cfg
            .links
            .iter()
            .filter_map(|l| {
                let (domain, root) = (l.domain.clone()?, l.root.as_ref()?);
                match std::fs::read_to_string(root) {
                    Ok(root_pem) => Some(cyphonic_proto::login::LinkedDomain { domain, root_pem }),
                    Err(e) => {
                        warn!(%domain, root = %root.display(), error = %e, "cannot read a linked domain's root");
                        None
                    }
                }
            })
            .collect()
    }

    fn internal(&self, peer: SocketAddr, e: StoreError) -> Refusal {
        warn!(%peer, error = %e, "login failed");
        Refusal::internal()
    }
}

/// A device proved by its TLS client certificate ([`State::authenticate`]).
struct Authenticated {
    device: DeviceRecord,
    node: cyphonic_pki::VerifiedNode,
    /// The presented certificate as recorded.
    cert: CertificateRecord,
}

/// The answer to an enrollment the store refused.
fn enroll_refusal(e: StoreError, device_id: &str, peer: SocketAddr) -> Refusal {
    match e {
        StoreError::BadCredentials => {
            warn!(%peer, device_id, "enroll refused: wrong device ID or password");
            Refusal::new(code::BAD_CREDENTIALS, "wrong device ID or password")
        }
        StoreError::DeviceDisabled(id) => {
            warn!(%peer, device_id, "enroll refused: device disabled");
            Refusal::new(code::DEVICE_DISABLED, format!("device {id} is disabled"))
        }
        e @ StoreError::CredentialUsed(_) => {
            warn!(%peer, device_id, "enroll refused: the enrollment password was already used");
            Refusal::new(code::CREDENTIAL_USED, e.to_string())
        }
        e => {
            warn!(%peer, device_id, error = %e, "enroll failed");
            Refusal::internal()
        }
    }
}

/// An error answer.
struct Refusal {
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    fn internal() -> Self {
        Refusal::new(code::INTERNAL, "the AS failed on its side; try again later")
    }
}

async fn accept_loop(listener: TcpListener, accepted: mpsc::Sender<(TcpStream, SocketAddr)>) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                if accepted.send(conn).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                warn!(error = %e, "AS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(state: Arc<State>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(IDLE_TIMEOUT, state.acceptor().accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake with the AS failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    serve_tls(state, tls, peer).await;
}

/// A TLS stream from another listener (TCP 443) for the AS.
pub type HandedOff = tokio_rustls::server::TlsStream<TcpStream>;

/// Serves requests on a connection whose TLS handshake is done.
async fn serve_tls(state: Arc<State>, tls: HandedOff, peer: SocketAddr) {
    let peer_chain: Option<Vec<Vec<u8>>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect());
    let mut stream = BufReader::new(tls);
    let mut line = Vec::new();
    let mut conn = ConnectionState::default();
    loop {
        line.clear();
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut stream)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line),
        )
        .await;
        let (response, close) = match read {
            Err(_) => {
                debug!(%peer, "AS connection idle; closing");
                break;
            }
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "AS connection read failed");
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Ok(_)) if line.last() != Some(&b'\n') => {
                if line.len() < MAX_LINE {
                    debug!(%peer, "AS connection closed mid-request");
                    break;
                }
                info!(%peer, "Login request line too long");
                (
                    Response::error(
                        code::BAD_REQUEST,
                        format!("request line longer than {MAX_LINE} bytes"),
                    ),
                    true,
                )
            }
            Ok(Ok(_)) => {
                state
                    .answer(&line, peer_chain.as_deref(), peer, &mut conn)
                    .await
            }
        };
        let write = async {
            stream.get_mut().write_all(&encode_line(&response)).await?;
            stream.get_mut().flush().await
        };
        match tokio::time::timeout(IDLE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "AS connection write failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "AS connection write timed out");
                return;
            }
        }
        if close {
            break;
        }
    }
    // Sends TLS close_notify; the peer may already be gone.
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.get_mut().shutdown()).await;
}

/// Binds a listening TCP socket; IPv6 sockets are IPv6-only so the same
/// port can also be bound on 0.0.0.0, and accepted connections have their
/// MSS capped ([`cyphonic_transport::CONSERVATIVE_MSS`]).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    cyphonic_transport::bind_tcp_listener(addr)
}

/// Issues a fresh server certificate for the public addresses and
/// localhost.
async fn issue_identity(
    cfg: &CloudConfig,
    store: &Store,
    issuer: &Issuer,
    root_der: &[u8],
) -> anyhow::Result<ServerIdentity> {
    let mut ips = cfg.public_addrs.clone();
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let dns_names = vec!["localhost".to_owned()];
    let serial = store.next_serial().await?;
    let (cert, key_pem) = issuer
        .issue_server(&dns_names, &ips, serial, SystemTime::now())
        .context("cannot issue the AS server certificate")?;
    Ok(ServerIdentity {
        chain_pem: join_pem(&cert.cert_pem, issuer.cert_pem()),
        key_pem,
        root_der: root_der.to_vec(),
    })
}

/// The AS's TLS acceptor on a server certificate.
fn make_acceptor(identity: &ServerIdentity) -> anyhow::Result<TlsAcceptor> {
    let config =
        cyphonic_pki::as_server_config(&identity.chain_pem, &identity.key_pem, &identity.root_der)
            .context("cannot build the AS TLS configuration")?;
    Ok(TlsAcceptor::from(config))
}

/// Concatenates two PEM documents, one per line.
fn join_pem(first: &str, second: &str) -> String {
    let mut out = String::with_capacity(first.len() + second.len() + 1);
    out.push_str(first);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(second);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Whom connection and guessing limits count against: an IPv4 address, or
/// an IPv6 /64 (one subscriber's usual allocation, RFC 6177); an
/// IPv4-mapped IPv6 address counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    SourceKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

/// Open connections per source, each held by a [`SourceSlot`]. Entries
/// exist only for sources with open connections, so the table never holds
/// more than the AS's connections.
struct ConnectionSlots {
    per_source: usize,
    open: Mutex<HashMap<SourceKey, usize>>,
}

impl ConnectionSlots {
    fn new(per_source: usize) -> ConnectionSlots {
        ConnectionSlots {
            per_source,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn acquire(this: &Arc<ConnectionSlots>, ip: IpAddr) -> Option<SourceSlot> {
        let source = SourceKey::of(ip);
        let mut open = this.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(source).or_insert(0);
        if *count >= this.per_source {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            slots: this.clone(),
            source,
        })
    }
}

/// One open connection of a source; dropping it frees the slot.
struct SourceSlot {
    slots: Arc<ConnectionSlots>,
    source: SourceKey,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// Wrong enrollment passwords, per device ID and per source; pure (the
/// caller passes `now`).
///
/// Use: [`Attempts::begin`] before checking a password (it refuses while
/// either key is locked out, and while as many attempts are being checked
/// as the key has failures left, so concurrent guesses cannot exceed the
/// limit; those wait [`BUSY_WAIT`]), then [`Attempts::settle`] with
/// whether the password was wrong. Only wrong passwords lock a key out:
/// devices behind one NAT enrolling at once, or a client retrying while
/// the AS is slow, are made to wait a second, not locked out.
/// [`Attempts::prune`] now and then drops forgotten entries.
pub struct Attempts {
    devices: FailureTable<String>,
    sources: FailureTable<SourceKey>,
}

/// Why [`Attempts::begin`] refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wrong passwords locked the device ID or the source out for this long.
    Locked(Duration),
    /// As many attempts are being checked as failures are left: try again
    /// after [`BUSY_WAIT`].
    Busy,
}

/// An attempt [`Attempts::begin`] counted, to [`Attempts::settle`].
#[derive(Debug)]
#[must_use = "settle the attempt with its outcome"]
pub struct Attempt {
    device: String,
    source: SourceKey,
    at: Instant,
}

/// Device IDs longer than this are counted by their first this many bytes
/// (no device ID is longer than a DNS label, 63), so keys stay small.
const MAX_DEVICE_KEY: usize = 64;

impl Attempts {
    /// Remembers at most `max_tracked` device IDs and as many sources.
    pub fn new(max_tracked: usize) -> Attempts {
        Attempts {
            devices: FailureTable::new(max_tracked),
            sources: FailureTable::new(max_tracked),
        }
    }

    /// Counts an attempt on `device_id` from `ip`, or refuses it with how
    /// long the lockout still lasts.
    pub fn begin(&mut self, device_id: &str, ip: IpAddr, now: Instant) -> Result<Attempt, Wait> {
        let mut end = device_id.len().min(MAX_DEVICE_KEY);
        while !device_id.is_char_boundary(end) {
            end -= 1;
        }
        let device = device_id[..end].to_owned();
        let source = SourceKey::of(ip);
        let wait = self
            .devices
            .locked(&device, now)
            .max(self.sources.locked(&source, now));
        if !wait.is_zero() {
            return Err(Wait::Locked(wait));
        }
        if self.devices.busy(&device) || self.sources.busy(&source) {
            return Err(Wait::Busy);
        }
        self.devices.begin(device.clone(), now);
        self.sources.begin(source, now);
        Ok(Attempt {
            device,
            source,
            at: now,
        })
    }

    /// The attempt's outcome: `failed` when the password was wrong (or the
    /// device unknown), which counts; otherwise nothing is remembered.
    pub fn settle(&mut self, attempt: Attempt, failed: bool) {
        self.devices.settle(&attempt.device, failed, attempt.at);
        self.sources.settle(&attempt.source, failed, attempt.at);
    }

    /// Forgets device IDs and sources without a failure for
    /// [`FORGET_FAILURES_AFTER`].
    pub fn prune(&mut self, now: Instant) {
        self.devices.prune(now);
        self.sources.prune(now);
    }

    /// Device IDs and sources remembered.
    pub fn tracked(&self) -> (usize, usize) {
        (self.devices.entries.len(), self.sources.entries.len())
    }
}

struct Failures {
    /// Wrong passwords.
    count: u32,
    /// Attempts being checked.
    pending: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failures per key, at most `max` keys.
struct FailureTable<K> {
    max: usize,
    entries: HashMap<K, Failures>,
}

impl<K: Hash + Eq + Clone> FailureTable<K> {
    fn new(max: usize) -> Self {
        FailureTable {
            max: max.max(1),
            entries: HashMap::new(),
        }
    }

    /// How long `key` stays locked out (zero: not locked).
    fn locked(&self, key: &K, now: Instant) -> Duration {
        self.entries
            .get(key)
            .and_then(|f| f.locked_until)
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// As many attempts are being checked as `key` has failures left
    /// before a lockout (one at a time once it has been locked out).
    fn busy(&self, key: &K) -> bool {
        self.entries
            .get(key)
            .is_some_and(|f| f.pending >= FREE_FAILURES.saturating_sub(f.count).max(1))
    }

    /// An attempt on `key` is being checked.
    fn begin(&mut self, key: K, now: Instant) {
        if let Some(f) = self.entries.get(&key) {
            if f.pending == 0 && now.saturating_duration_since(f.last) >= FORGET_FAILURES_AFTER {
                self.entries.remove(&key);
            }
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max {
            self.prune(now);
            if self.entries.len() >= self.max {
                // The oldest failure is the one least worth remembering.
                // Bounded work: argon2 bounds the rate of failures.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        let f = self.entries.entry(key).or_insert(Failures {
            count: 0,
            pending: 0,
            last: now,
            locked_until: None,
        });
        f.pending = f.pending.saturating_add(1);
        f.last = now;
    }

    /// An attempt on `key` begun at `at` was checked: `failed` counts.
    fn settle(&mut self, key: &K, failed: bool, at: Instant) {
        let Some(f) = self.entries.get_mut(key) else {
            return;
        };
        f.pending = f.pending.saturating_sub(1);
        if failed {
            f.count = f.count.saturating_add(1);
            f.last = at;
            if f.count >= FREE_FAILURES {
                f.locked_until = Some(at + lockout(f.count));
            }
        }
        if f.count == 0 && f.pending == 0 {
            self.entries.remove(key);
        }
    }

    fn prune(&mut self, now: Instant) {
        self.entries.retain(|_, f| {
            f.pending > 0 || now.saturating_duration_since(f.last) < FORGET_FAILURES_AFTER
        });
    }
}

/// The lockout after the `count`th failure (`count` ≥ [`FREE_FAILURES`]):
/// [`FIRST_LOCKOUT`], doubling with each further failure, at most
/// [`MAX_LOCKOUT`].
fn lockout(count: u32) -> Duration {
    let doublings = count.saturating_sub(FREE_FAILURES).min(16);
    FIRST_LOCKOUT
        .saturating_mul(1 << doublings)
        .min(MAX_LOCKOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            SourceKey::of(a("2001:db8:1:2:aaaa::1")),
            SourceKey::of(a("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            SourceKey::of(a("2001:db8:1:2::1")),
            SourceKey::of(a("2001:db8:1:3::1"))
        );
        assert_eq!(SourceKey::of(a("::ffff:198.51.100.7")), SourceKey::of(V4));
        assert_ne!(
            SourceKey::of(a("198.51.100.7")),
            SourceKey::of(a("198.51.100.8"))
        );
    }

    #[test]
    fn five_failures_then_a_lockout_that_doubles_up_to_an_hour() {
        let mut attempts = Attempts::new(16);
        let mut now = Instant::now();
        for _ in 0..FREE_FAILURES {
            let a = attempts.begin("n1", V4, now).expect("free attempts");
            attempts.settle(a, true);
        }
        assert_eq!(
            attempts.begin("n1", V4, now).unwrap_err(),
            Wait::Locked(FIRST_LOCKOUT)
        );
        let mut expected = FIRST_LOCKOUT;
        for _ in 0..8 {
            now += expected;
            let a = attempts.begin("n1", V4, now).expect("after the lockout");
            attempts.settle(a, true);
            expected = (expected * 2).min(MAX_LOCKOUT);
            assert_eq!(
                attempts.begin("n1", V4, now).unwrap_err(),
                Wait::Locked(expected)
            );
        }
        assert_eq!(expected, MAX_LOCKOUT);
        // A day without failures and it starts afresh.
        now += FORGET_FAILURES_AFTER + MAX_LOCKOUT;
        attempts.prune(now);
        assert_eq!(attempts.tracked(), (0, 0));
        let a = attempts.begin("n1", V4, now).unwrap();
        attempts.settle(a, false);
    }

    #[test]
    fn device_and_source_count_apart_and_right_passwords_are_not_counted() {
        let mut attempts = Attempts::new(16);
        let now = Instant::now();
        let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        // Four wrong passwords for n1 from V4 and one from elsewhere: n1 is
        // locked from everywhere, V4 only for n1 (V4 has 4 failures).
        for _ in 0..4 {
            let a = attempts.begin("n1", V4, now).unwrap();
            attempts.settle(a, true);
        }
        let a = attempts.begin("n1", other, now).unwrap();
        attempts.settle(a, true);
        assert!(attempts.begin("n1", V4, now).is_err());
        assert!(attempts.begin("n1", other, now).is_err());
        // Right passwords (or used, disabled) are not failures.
        for _ in 0..10 {
            let a = attempts.begin("n2", V4, now).unwrap();
            attempts.settle(a, false);
        }
        let a = attempts.begin("n2", V4, now).unwrap();
        attempts.settle(a, true);
        // That was V4's fifth failure: V4 is locked for every device now.
        assert!(attempts.begin("n3", V4, now).is_err());
        assert!(attempts.begin("n3", other, now).is_ok());
    }

    #[test]
    fn concurrent_attempts_cannot_pass_the_limit() {
        let mut attempts = Attempts::new(16);
        let now = Instant::now();
        let in_flight: Vec<_> = (0..FREE_FAILURES)
            .map(|_| attempts.begin("n1", V4, now).unwrap())
            .collect();
        assert_eq!(
            attempts.begin("n1", V4, now).unwrap_err(),
            Wait::Busy,
            "the sixth waits, locked out by nothing"
        );
        for a in in_flight {
            attempts.settle(a, false);
        }
        assert!(attempts.begin("n1", V4, now).is_ok());
    }

    #[test]
    fn attempts_being_checked_never_lock_a_source_out() {
        // Devices behind one NAT enroll at once: those beyond the failures
        // left wait a second; none is locked out, and one wrong password
        // among them counts once.
        let mut attempts = Attempts::new(16);
        let now = Instant::now();
        let in_flight: Vec<_> = (0..FREE_FAILURES)
            .map(|i| attempts.begin(&format!("n{i}"), V4, now).unwrap())
            .collect();
        assert_eq!(attempts.begin("n9", V4, now).unwrap_err(), Wait::Busy);
        for (i, a) in in_flight.into_iter().enumerate() {
            attempts.settle(a, i == 0);
        }
        for i in 0..FREE_FAILURES - 1 {
            let a = attempts.begin(&format!("m{i}"), V4, now).unwrap();
            attempts.settle(a, false);
        }
        // One failure so far: four more attempts may be checked at once.
        let in_flight: Vec<_> = (0..FREE_FAILURES - 1)
            .map(|i| attempts.begin(&format!("k{i}"), V4, now).unwrap())
            .collect();
        assert_eq!(attempts.begin("k9", V4, now).unwrap_err(), Wait::Busy);
        for a in in_flight {
            attempts.settle(a, false);
        }
    }

    #[test]
    fn tables_stay_bounded_and_keys_small() {
        let mut attempts = Attempts::new(8);
        let now = Instant::now();
        for i in 0..100u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, i));
            let a = attempts.begin(&format!("ghost{i}"), ip, now).unwrap();
            attempts.settle(a, true);
        }
        assert_eq!(attempts.tracked(), (8, 8));
        let long = "x".repeat(MAX_LINE);
        let a = attempts.begin(&long, V4, now).unwrap();
        assert!(a.device.len() <= MAX_DEVICE_KEY);
        attempts.settle(a, true);
        // Multi-byte characters are cut at a boundary.
        let a = attempts.begin(&"é".repeat(100), V4, now).unwrap();
        assert!(a.device.len() <= MAX_DEVICE_KEY);
        attempts.settle(a, true);
    }

    #[test]
    fn connection_slots_per_source() {
        let slots = Arc::new(ConnectionSlots::new(2));
        let a = ConnectionSlots::acquire(&slots, V4).unwrap();
        let b = ConnectionSlots::acquire(&slots, V4).unwrap();
        assert!(ConnectionSlots::acquire(&slots, V4).is_none());
        assert!(ConnectionSlots::acquire(&slots, "2001:db8::1".parse().unwrap()).is_some());
        drop(a);
        let c = ConnectionSlots::acquire(&slots, V4).unwrap();
        drop((b, c));
        assert!(
            slots.open.lock().unwrap().is_empty(),
            "no entry outlives its connections"
        );
    }
}
