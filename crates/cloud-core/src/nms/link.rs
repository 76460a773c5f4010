//! Routes across NMSs (`docs/protocol.md` §5.19): a Direction Request for a
//! node this NMS does not hold goes to the NMS that holds it — another
//! instance of the same cloud (one database, nodes spread over the
//! instances) or the NMS of a cooperating domain. That NMS directs its
//! node as it directs its own routes, and the initiator's Route Direction
//! comes back over the link.
//!
//! The core never touches a link. It asks the shell to forward
//! ([`NmsEvent::LinkDirect`]) and takes the answer
//! ([`Nms::handle_link_answer`]); it takes requests from links
//! ([`Nms::handle_link_direct`]) and answers them
//! ([`NmsEvent::LinkReply`]). The shell authenticates the peer (mutual
//! TLS) and checks that an initiator from a cooperating domain is named
//! and addressed within that domain before the core sees it.

use std::time::Instant;

use cyphonic_proto::nms_link::{LinkInitiator, LinkMessage};
use cyphonic_proto::policy::RouteFilter;
use cyphonic_proto::signal::{DirectionErrorCode, Message, RouteDirection};
use cyphonic_proto::{RouteId, SessionId};
use rand::Rng;

use super::{normalize, Asker, Nms, NmsEvent, Origin};
use crate::route::NetInfo;

/// Whose NMS a forwarded request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkScope {
    /// The other instances of this cloud: the target is a name of this
    /// cloud's domain that no node registered here holds.
    Instance,
    /// The NMS of the cooperating domain the target's name is in.
    Domain,
}

/// What the links said about a forwarded Direction Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAnswer {
    /// The target's NMS directed its node; this goes to the initiator.
    Directed(Box<RouteDirection>),
    /// The target's NMS refused, with its reason.
    Refused {
        code: DirectionErrorCode,
        message: String,
    },
    /// No NMS holds the target, or none could be asked (links down).
    NotFound(String),
}

/// A Direction Request waiting for the links.
pub(super) struct Forwarded {
    session: SessionId,
    txid: u64,
    target: String,
    scope: LinkScope,
    pub(super) deadline: Instant,
}

/// Whether `name` is `domain` or a name under it.
pub fn in_domain(name: &str, domain: &str) -> bool {
    let domain = normalize(domain);
    !domain.is_empty() && (name == domain || name.ends_with(&format!(".{domain}")))
}

impl Nms {
    /// Where a name this NMS does not hold could be: `None` when no link
    /// could hold it (the request fails with NotFound as before).
    pub(super) fn link_scope(&self, target: &str) -> Option<LinkScope> {
        let own = self.config.domain.is_empty() || in_domain(target, &self.config.domain);
        if own {
            return self.config.peer_instances.then_some(LinkScope::Instance);
        }
        self.config
            .linked_domains
            .iter()
            .any(|d| in_domain(target, d))
            .then_some(LinkScope::Domain)
    }

    /// Asks the links for `target` on behalf of `mn`'s request `txid`.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        mn: SessionId,
        txid: u64,
        target: String,
        scope: LinkScope,
    ) {
        if self
            .forwarded
            .values()
            .any(|f| f.session == mn && f.txid == txid)
        {
            return; // a retransmission: the links are being asked
        }
        let Some(session) = self.sessions.get(&mn) else {
            return;
        };
        let Some(reg) = session.registration.as_ref() else {
            return;
        };
        if scope == LinkScope::Domain && !self.policy.allows_everything() {
            // This domain's policy governs its own node: a route it closes
            // is never asked for.
            let filter = self.policy.filter(&session.info.device_id, &target);
            if filter.is_closed() {
                self.counters.directions_denied += 1;
                let msg = format!(
                    "the access policy lets neither this node nor {target} reach the other"
                );
                self.fail_direction(mn, txid, &target, DirectionErrorCode::Denied, msg);
                return;
            }
        }
        let initiator = LinkInitiator {
            device_id: session.info.device_id.clone(),
            fqdn: session.info.fqdn.clone(),
            vip4: session.info.vip4,
            vip6: session.info.vip6,
            static_public: reg.static_public,
            cert_serial: session.info.cert_serial,
            local_addrs: reg.local_addrs.clone(),
            observed: reg.observed,
            observed_probe: reg.observed_probe,
            transport: reg.transport,
            quic_port: reg.quic_port,
            mapped: reg.mapped,
        };
        let ticket: u64 = self.rng.gen();
        self.forwarded.insert(
            ticket,
            Forwarded {
                session: mn,
                txid,
                target: target.clone(),
                scope,
                deadline: now + self.config.direction_timeout + LINK_GRACE,
            },
        );
        self.counters.links_forwarded += 1;
        tracing::debug!(initiator = %initiator.fqdn, %target, ?scope, "asking the links");
        self.events.push_back(NmsEvent::LinkDirect {
            ticket,
            target,
            scope,
            initiator,
        });
    }

    /// The links' answer to [`NmsEvent::LinkDirect`] `ticket`; an answer
    /// for no waiting request (late, or after the deadline) is dropped.
    pub fn handle_link_answer(&mut self, _now: Instant, ticket: u64, answer: LinkAnswer) {
        let Some(f) = self.forwarded.remove(&ticket) else {
            return;
        };
        let Some(session) = self.sessions.get(&f.session) else {
            return;
        };
        let Some(reg) = session.registration.clone() else {
            return;
        };
        let mut direction = match answer {
            LinkAnswer::Directed(d) => d,
            LinkAnswer::Refused { code, message } => {
                self.fail_direction(f.session, f.txid, &f.target, code, message);
                return;
            }
            LinkAnswer::NotFound(message) => {
                let code = DirectionErrorCode::NotFound;
                self.fail_direction(f.session, f.txid, &f.target, code, message);
                return;
            }
        };
        if normalize(&direction.peer.fqdn) != f.target {
            // The link answered for another node than the one asked for.
            self.counters.links_bad_answers += 1;
            let msg = format!("the NMS holding {} answered for another node", f.target);
            self.fail_direction(
                f.session,
                f.txid,
                &f.target,
                DirectionErrorCode::NotFound,
                msg,
            );
            return;
        }
        if f.scope == LinkScope::Domain {
            // This node's side of the route follows this domain's policy;
            // the peer's side follows its own.
            let filter = if self.policy.allows_everything() {
                RouteFilter::open()
            } else {
                self.policy
                    .filter(&session.info.device_id, &direction.peer.fqdn)
            };
            if filter.is_closed() {
                self.counters.directions_denied += 1;
                let msg = format!(
                    "the access policy lets neither this node nor {} reach the other",
                    f.target
                );
                self.fail_direction(
                    f.session,
                    f.txid,
                    &f.target,
                    DirectionErrorCode::Denied,
                    msg,
                );
                return;
            }
            direction.filter = (!filter.is_open()).then_some(filter);
        }
        self.counters.directions += 1;
        self.events.push_back(NmsEvent::RouteDirected {
            route_id: direction.route_id,
            initiator: session.info.fqdn.clone(),
            responder: direction.peer.fqdn.clone(),
            pattern: direction.pattern,
        });
        self.answer(
            f.session,
            reg.nms_local,
            reg.observed,
            f.txid,
            Message::RouteDirectionToInitiator(*direction),
            true,
        );
    }

    /// A Direction Request from another NMS (`ticket` is the shell's, to
    /// answer with): directs the node named `target` if it is registered
    /// here, as for a request of this NMS's own nodes, and answers with
    /// [`NmsEvent::LinkReply`].
    pub fn handle_link_direct(
        &mut self,
        now: Instant,
        ticket: u64,
        target: &str,
        initiator: LinkInitiator,
        scope: LinkScope,
    ) {
        self.counters.links_asked += 1;
        let target = normalize(target);
        let Some(&cn) = self.by_fqdn.get(&target) else {
            self.events.push_back(NmsEvent::LinkReply {
                ticket,
                message: LinkMessage::NotHere { ticket },
            });
            return;
        };
        if self
            .routes
            .values()
            .any(|r| matches!(r.origin, Origin::Link { ticket: t, .. } if t == ticket))
        {
            return;
        }
        let per_target = f64::from(self.config.directions_per_target);
        if !self
            .target_directions
            .allow(now, &target, per_target, 2.0 * per_target)
        {
            self.counters.directions_limited += 1;
            let msg = "too many route requests: try again shortly".to_owned();
            self.refuse_link(ticket, DirectionErrorCode::RateLimited, msg);
            return;
        }
        let asker = Asker {
            fqdn: initiator.fqdn.clone(),
            vip4: initiator.vip4,
            vip6: initiator.vip6,
            static_public: initiator.static_public,
            cert_serial: initiator.cert_serial,
            net: NetInfo {
                local_addrs: initiator.local_addrs.clone(),
                observed: initiator.observed,
                observed_probe: initiator.observed_probe,
                transport: initiator.transport,
                quic_port: initiator.quic_port,
                mapped: initiator.mapped,
            },
            policy_name: match scope {
                LinkScope::Instance => initiator.device_id.clone(),
                LinkScope::Domain => normalize(&initiator.fqdn),
            },
        };
        let origin = Origin::Link {
            ticket,
            initiator: Box::new(initiator),
            scope,
        };
        self.direct_responder(now, origin, asker, cn, target);
    }

    /// Answers a link's request with a refusal.
    pub(super) fn refuse_link(&mut self, ticket: u64, code: DirectionErrorCode, message: String) {
        self.events.push_back(NmsEvent::LinkReply {
            ticket,
            message: LinkMessage::Refused {
                ticket,
                code,
                message,
            },
        });
    }

    /// The responder confirmed a route a link asked for: the initiator's
    /// direction goes back over the link.
    pub(super) fn link_confirmed(
        &mut self,
        route_id: RouteId,
        ticket: u64,
        initiator: &str,
        to_initiator: RouteDirection,
    ) {
        self.counters.directions += 1;
        self.events.push_back(NmsEvent::RouteDirected {
            route_id,
            initiator: initiator.to_owned(),
            responder: to_initiator.peer.fqdn.clone(),
            pattern: to_initiator.pattern,
        });
        self.events.push_back(NmsEvent::LinkReply {
            ticket,
            message: LinkMessage::Directed {
                ticket,
                direction: Box::new(to_initiator),
            },
        });
    }

    /// Forwarded requests past their deadline fail as timeouts.
    pub(super) fn expire_forwarded(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| now >= f.deadline)
            .map(|(t, _)| *t)
            .collect();
        for ticket in late {
            if let Some(f) = self.forwarded.remove(&ticket) {
                let msg = format!("the NMS holding {} did not answer in time", f.target);
                self.fail_direction(
                    f.session,
                    f.txid,
                    &f.target,
                    DirectionErrorCode::Timeout,
                    msg,
                );
            }
        }
    }
}

/// A forwarded request waits this much longer than the responder's NMS
/// waits for its node, so that NMS's own timeout answer arrives first.
const LINK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
