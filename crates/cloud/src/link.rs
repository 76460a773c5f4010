//! The NMS link's shell (`docs/protocol.md` §5.19): TLS 1.3 connections to
//! and from the NMSs in `[[link]]`, carrying [`LinkMessage`] frames.
//!
//! Each NMS dials every peer for its own requests (one connection per
//! peer, dialed again after a loss) and accepts the peers' connections for
//! theirs, so requests and their answers always share a connection. Both
//! sides present their cloud server certificate; the accepting side takes
//! only the configured peers' ([`cyphonic_pki::LinkPeers`]).
//!
//! Requests from a cooperating domain are checked here before the core
//! sees them: the initiator must be named and addressed within that
//! domain, and the target must be a name of this cloud's domain.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cyphonic_cloud_core::nms::{in_domain, normalize, LinkAnswer, LinkScope};
use cyphonic_proto::nms_link::{LinkInitiator, LinkMessage};
use cyphonic_proto::signal::DirectionErrorCode;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{CloudConfig, Ipv4Prefix, Ipv6Prefix, LinkPeerConfig};

/// A dial or a Hello that takes longer than this fails.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Redial after a loss: from the first to the last, doubling.
const REDIAL_FIRST: Duration = Duration::from_millis(500);
const REDIAL_MAX: Duration = Duration::from_secs(10);
/// Requests queued for one peer before new ones fail at once.
const QUEUE: usize = 1024;
/// The ticket notices (`Withdrawn`) are queued under: nothing answers
/// them, and no request uses it ([`Links::on_answer`] knows no such
/// pending request).
const NOTICE_TICKET: u64 = 0;

/// One configured peer.
#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    name: String,
    scope: LinkScope,
    /// Its overlay domain (this cloud's for another instance).
    domain: String,
    root_der: Vec<u8>,
    vip4: Ipv4Prefix,
    vip6: Ipv6Prefix,
}

/// What the links tell the NMS loop.
#[derive(Debug)]
pub enum LinkInput {
    /// A peer's request: hand to `Nms::handle_link_direct` with `token`.
    Request {
        token: u64,
        target: String,
        initiator: Box<LinkInitiator>,
        scope: LinkScope,
    },
    /// A peer's answer to our request `ticket` (`None`: the peer could not
    /// be asked, or its connection was lost before it answered).
    Answer {
        ticket: u64,
        message: Option<LinkMessage>,
    },
    /// A peer's node left the overlay: hand to `Nms::handle_withdrawn`.
    Withdrawn { fqdn: String, cert_serial: u64 },
}

/// Token of a peer's request -> where to answer, and the peer's ticket.
type Replies = Arc<Mutex<HashMap<u64, (mpsc::Sender<LinkMessage>, u64)>>>;

/// Forwarded requests waiting for their peers' answers.
struct Pending {
    target: String,
    waiting: usize,
}

/// The links of one NMS.
pub struct Links {
    peers: Vec<Peer>,
    dialers: Vec<mpsc::Sender<(u64, LinkMessage)>>,
    pending: HashMap<u64, Pending>,
    /// Token of a peer's request -> where to answer, and the peer's ticket.
    replies: Replies,
}

impl Links {
    /// Starts the dialers and, with `link_listen`, the listener. `None`
    /// without links configured.
    pub async fn start(
        cfg: &CloudConfig,
        identity: &crate::as_server::ServerIdentity,
        input: mpsc::Sender<LinkInput>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Links>> {
        if cfg.links.is_empty() && cfg.link_listen.is_none() {
            return Ok(None);
        }
        let peers = cfg
            .links
            .iter()
            .map(|l| peer(cfg, l, &identity.root_der))
            .collect::<anyhow::Result<Vec<Peer>>>()?;
        let hello = LinkMessage::Hello {
            domain: cfg.domain.clone(),
            instance: cfg.instance_name(),
        };
        let replies = Arc::new(Mutex::new(HashMap::new()));
        if let Some(listen) = cfg.link_listen {
            let verifier = Arc::new(cyphonic_pki::LinkPeers::new(
                &peers
                    .iter()
                    .map(|p| (p.root_der.clone(), p.name.clone()))
                    .collect::<Vec<_>>(),
            )?);
            let tls = cyphonic_pki::link_server_config(
                &identity.chain_pem,
                &identity.key_pem,
                verifier.clone(),
            )?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot bind the NMS link on {listen}"))?;
            tracing::info!(%listen, peers = peers.len(), "NMS link listening");
            let accept = Acceptor {
                tls: TlsAcceptor::from(tls),
                verifier,
                peers: Arc::new(peers.clone()),
                own_domain: cfg.domain.clone(),
                own4: cfg.vip4_prefix,
                own6: cfg.vip6_prefix,
                hello: hello.clone(),
                input: input.clone(),
                replies: replies.clone(),
                tokens: Arc::new(AtomicU64::new(1)),
            };
            tokio::spawn(accept.run(listener, stop.clone()));
        }
        let mut dialers = Vec::new();
        for p in &peers {
            let (tx, rx) = mpsc::channel(QUEUE);
            let tls = cyphonic_pki::link_client_config(
                &identity.chain_pem,
                &identity.key_pem,
                &p.root_der,
            )?;
            tokio::spawn(dial(
                p.clone(),
                TlsConnector::from(tls),
                hello.clone(),
                rx,
                input.clone(),
                stop.clone(),
            ));
            dialers.push(tx);
        }
        Ok(Some(Links {
            peers,
            dialers,
            pending: HashMap::new(),
            replies,
        }))
    }

    /// Asks the peers of `scope` that could hold `target`. `Some`: the
    /// answer at once (no peer to ask).
    pub fn forward(
        &mut self,
        ticket: u64,
        target: String,
        scope: LinkScope,
        initiator: LinkInitiator,
    ) -> Option<LinkAnswer> {
        let request = LinkMessage::Direct {
            ticket,
            target: target.clone(),
            initiator: Box::new(initiator),
        };
        let mut asked = 0;
        for (peer, dialer) in self.peers.iter().zip(&self.dialers) {
            let fits = peer.scope == scope
                && (scope == LinkScope::Instance || in_domain(&target, &peer.domain));
            if fits && dialer.try_send((ticket, request.clone())).is_ok() {
                asked += 1;
            }
        }
        if asked == 0 {
            return Some(LinkAnswer::NotFound(format!(
                "no linked NMS can be asked for {target}"
            )));
        }
        self.pending.insert(
            ticket,
            Pending {
                target,
                waiting: asked,
            },
        );
        None
    }

    /// A peer's answer (or its loss) for `ticket`: `Some` once the answer
    /// for the NMS is known (the first direction or refusal, or no peer
    /// holding the target).
    pub fn on_answer(&mut self, ticket: u64, message: Option<LinkMessage>) -> Option<LinkAnswer> {
        let pending = self.pending.get_mut(&ticket)?;
        let answer = match message {
            Some(LinkMessage::Directed { direction, .. }) => Some(LinkAnswer::Directed(direction)),
            Some(LinkMessage::Refused { code, message, .. }) => {
                Some(LinkAnswer::Refused { code, message })
            }
            _ => {
                pending.waiting -= 1;
                (pending.waiting == 0).then(|| {
                    LinkAnswer::NotFound(format!("no node named {} is online", pending.target))
                })
            }
        };
        if answer.is_some() {
            self.pending.remove(&ticket);
        }
        answer
    }

    /// Tells every peer that the node `fqdn` (of this cloud) left the
    /// overlay, so their NMSs tell their nodes; a peer unreachable now is
    /// not told.
    pub fn withdrawn(&self, fqdn: &str, cert_serial: u64) {
        let notice = LinkMessage::Withdrawn {
            fqdn: fqdn.to_owned(),
            cert_serial,
        };
        for dialer in &self.dialers {
            let _ = dialer.try_send((NOTICE_TICKET, notice.clone()));
        }
    }

    /// The NMS's answer to a peer's request `token`.
    pub fn reply(&self, token: u64, message: LinkMessage) {
        let Some((tx, peer_ticket)) = self.replies.lock().ok().and_then(|mut r| r.remove(&token))
        else {
            return;
        };
        let _ = tx.try_send(with_ticket(message, peer_ticket));
    }
}

/// A configured peer with its root and prefixes.
fn peer(cfg: &CloudConfig, l: &LinkPeerConfig, own_root: &[u8]) -> anyhow::Result<Peer> {
    let (scope, domain, root_der, vip4, vip6) = match &l.domain {
        None => (
            LinkScope::Instance,
            cfg.domain.clone(),
            own_root.to_vec(),
            cfg.vip4_prefix,
            cfg.vip6_prefix,
        ),
        Some(domain) => {
            let path = l
                .root
                .clone()
                .context("a cooperating domain needs its root")?;
            let pem = std::fs::read_to_string(&path).with_context(|| {
                format!("cannot read the root of {domain} at {}", path.display())
            })?;
            let root = cyphonic_pki::pem_to_der_chain(&pem)
                .ok()
                .and_then(|c| c.into_iter().next())
                .with_context(|| format!("no certificate in {}", path.display()))?;
            (
                LinkScope::Domain,
                normalize(domain),
                root,
                l.vip4_prefix
                    .context("a cooperating domain needs vip4_prefix")?,
                l.vip6_prefix
                    .context("a cooperating domain needs vip6_prefix")?,
            )
        }
    };
    Ok(Peer {
        addr: l.addr,
        name: l.tls_name(),
        scope,
        domain,
        root_der,
        vip4,
        vip6,
    })
}

/// Resolves once `stop` is set (the guard `wait_for` returns is not held
/// across anything).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `message` under another ticket.
fn with_ticket(message: LinkMessage, t: u64) -> LinkMessage {
    match message {
        LinkMessage::Directed { direction, .. } => LinkMessage::Directed {
            ticket: t,
            direction,
        },
        LinkMessage::Refused { code, message, .. } => LinkMessage::Refused {
            ticket: t,
            code,
            message,
        },
        LinkMessage::NotHere { .. } => LinkMessage::NotHere { ticket: t },
        other => other,
    }
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<LinkMessage> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await?;
    let len = LinkMessage::frame_len(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(LinkMessage::decode(&body)?)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, m: &LinkMessage) -> anyhow::Result<()> {
    w.write_all(&m.encode()).await?;
    w.flush().await?;
    Ok(())
}

/// Both sides' Hellos: ours out, theirs in, naming the expected domain.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hello: &LinkMessage,
    domain: &str,
) -> anyhow::Result<String> {
    write_frame(s, hello).await?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(s)).await?? {
        LinkMessage::Hello {
            domain: theirs,
            instance,
        } if normalize(&theirs) == domain => Ok(instance),
        LinkMessage::Hello { domain: theirs, .. } => {
            anyhow::bail!("the peer says it is of domain {theirs}, expected {domain}")
        }
        other => anyhow::bail!("expected Hello, got {other:?}"),
    }
}

/// Keeps one connection to `peer` for this NMS's requests.
async fn dial(
    peer: Peer,
    tls: TlsConnector,
    hello: LinkMessage,
    mut requests: mpsc::Receiver<(u64, LinkMessage)>,
    input: mpsc::Sender<LinkInput>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = REDIAL_FIRST;
    let name = match ServerName::try_from(peer.name.clone()) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(peer = %peer.addr, name = %peer.name, error = %e, "bad link peer name");
            return;
        }
    };
    // Requests that arrived while the peer was unreachable: each starts a
    // dial at once (a peer that came back is used without waiting out the
    // backoff) and fails only if that dial fails.
    let mut queued: Vec<(u64, LinkMessage)> = Vec::new();
    loop {
        let attempt = tokio::time::Instant::now();
        let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let tcp = TcpStream::connect(peer.addr).await?;
            tcp.set_nodelay(true)?;
            let mut s = tls.connect(name.clone(), tcp).await?;
            let instance = greet(&mut s, &hello, &peer.domain).await?;
            anyhow::Ok((s, instance))
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        let (stream, instance) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = %peer.addr, error = %format!("{e:#}"), "NMS link dial failed");
                for (ticket, _) in queued.drain(..) {
                    let _ = input
                        .send(LinkInput::Answer {
                            ticket,
                            message: None,
                        })
                        .await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    req = requests.recv() => match req {
                        Some(r) => {
                            queued.push(r);
                            tokio::time::sleep_until(attempt + REDIAL_FIRST).await;
                        }
                        None => return,
                    },
                    _ = stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(REDIAL_MAX);
                continue;
            }
        };
        tracing::info!(peer = %peer.addr, %instance, domain = %peer.domain, "NMS link up");
        backoff = REDIAL_FIRST;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut in_flight: HashSet<u64> = HashSet::new();
        let mut unsent = std::mem::take(&mut queued).into_iter();
        let (answers_tx, mut answers) = mpsc::channel::<anyhow::Result<LinkMessage>>(64);
        let reader = tokio::spawn(async move {
            loop {
                let m = read_frame(&mut rd).await;
                let end = m.is_err();
                if answers_tx.send(m).await.is_err() || end {
                    return;
                }
            }
        });
        let lost = loop {
            let next = unsent.next();
            tokio::select! {
                req = async { match next { Some(r) => Some(r), None => requests.recv().await } } => {
                    let Some((ticket, message)) = req else {
                        reader.abort();
                        return;
                    };
                    if let Err(e) = write_frame(&mut wr, &message).await {
                        let _ = input.send(LinkInput::Answer { ticket, message: None }).await;
                        break e;
                    }
                    if ticket != NOTICE_TICKET {
                        in_flight.insert(ticket);
                    }
                }
                got = answers.recv() => match got {
                    Some(Ok(m)) => match m.answer_ticket() {
                        Some(t) if in_flight.remove(&t) => {
                            let _ = input.send(LinkInput::Answer { ticket: t, message: Some(m) }).await;
                        }
                        _ => tracing::debug!(peer = %peer.addr, "NMS link: an answer to nothing asked"),
                    },
                    Some(Err(e)) => break e,
                    None => break anyhow::anyhow!("reader gone"),
                },
                _ = stopped(&mut stop) => {
                    reader.abort();
                    return;
                }
            }
        };
        reader.abort();
        tracing::warn!(peer = %peer.addr, error = %format!("{lost:#}"), "NMS link lost");
        for ticket in in_flight.drain() {
            let _ = input
                .send(LinkInput::Answer {
                    ticket,
                    message: None,
                })
                .await;
        }
    }
}

/// The accepting side.
#[derive(Clone)]
struct Acceptor {
    tls: TlsAcceptor,
    verifier: Arc<cyphonic_pki::LinkPeers>,
    peers: Arc<Vec<Peer>>,
    own_domain: String,
    own4: Ipv4Prefix,
    own6: Ipv6Prefix,
    hello: LinkMessage,
    input: mpsc::Sender<LinkInput>,
    replies: Replies,
    tokens: Arc<AtomicU64>,
}

impl Acceptor {
    async fn run(self, listener: TcpListener, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped(&mut stop) => return,
            };
            {
                match accepted {
                    Ok((tcp, from)) => {
                        let this = self.clone();
                        let stop = stop.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.serve(tcp, from, stop).await {
                                tracing::info!(%from, error = %format!("{e:#}"), "NMS link connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "NMS link accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    async fn serve(
        self,
        tcp: TcpStream,
        from: SocketAddr,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        tcp.set_nodelay(true)?;
        let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(tcp)).await??;
        let chain = s
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .to_vec();
        let peer = self
            .verifier
            .which(&chain)
            .and_then(|i| self.peers.get(i))
            .context("a certificate no configured peer has")?
            .clone();
        let instance = greet(&mut s, &self.hello, &peer.domain).await?;
        tracing::info!(%from, %instance, domain = %peer.domain, "NMS link accepted");
        let (mut rd, mut wr) = tokio::io::split(s);
        let (out_tx, mut out) = mpsc::channel::<LinkMessage>(QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(m) = out.recv().await {
                if write_frame(&mut wr, &m).await.is_err() {
                    return;
                }
            }
        });
        let result = loop {
            let m = tokio::select! {
                m = read_frame(&mut rd) => m,
                _ = stopped(&mut stop) => break Ok(()),
            };
            let (ticket, target, initiator) = match m {
                Ok(LinkMessage::Direct {
                    ticket,
                    target,
                    initiator,
                }) => (ticket, target, initiator),
                Ok(LinkMessage::Withdrawn { fqdn, cert_serial }) => {
                    // A peer speaks for its own domain's nodes only.
                    if in_domain(&normalize(&fqdn), &peer.domain) {
                        let notice = LinkInput::Withdrawn { fqdn, cert_serial };
                        if self.input.send(notice).await.is_err() {
                            break Ok(());
                        }
                    } else {
                        tracing::warn!(%from, domain = %peer.domain, %fqdn, "link withdrawal of a node outside the peer's domain ignored");
                    }
                    continue;
                }
                Ok(other) => break Err(anyhow::anyhow!("unexpected {other:?}")),
                Err(e) => break Err(e),
            };
            if let Err(why) = self.check(&peer, &target, &initiator) {
                tracing::warn!(%from, domain = %peer.domain, initiator = %initiator.fqdn, %target, why, "link request refused");
                let _ = out_tx.try_send(LinkMessage::Refused {
                    ticket,
                    code: DirectionErrorCode::Denied,
                    message: why.to_owned(),
                });
                continue;
            }
            let target = normalize(&target);
            if !in_domain(&target, &self.own_domain) {
                let _ = out_tx.try_send(LinkMessage::NotHere { ticket });
                continue;
            }
            let token = self.tokens.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut r) = self.replies.lock() {
                r.insert(token, (out_tx.clone(), ticket));
            }
            let request = LinkInput::Request {
                token,
                target,
                initiator,
                scope: peer.scope,
            };
            if self.input.send(request).await.is_err() {
                break Ok(());
            }
        };
        writer.abort();
        result
    }

    /// An initiator must be named and addressed within its NMS's domain.
    fn check(&self, peer: &Peer, target: &str, i: &LinkInitiator) -> Result<(), &'static str> {
        let fqdn = normalize(&i.fqdn);
        if !in_domain(&fqdn, &peer.domain) {
            return Err("the initiator's name is outside the linked domain");
        }
        if !peer.vip4.contains(i.vip4) || !peer.vip6.contains(i.vip6) {
            return Err("the initiator's VIPs are outside the linked domain's prefixes");
        }
        if peer.scope == LinkScope::Domain
            && (self.own4.contains(i.vip4) || self.own6.contains(i.vip6))
        {
            return Err("the initiator claims this cloud's VIPs");
        }
        if normalize(target).is_empty() {
            return Err("no target");
        }
        Ok(())
    }
}
