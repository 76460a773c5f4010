//! The access policy: which devices may reach which, and on which ports
//! (`docs/protocol.md` §5.15). Pure: the cloud reads the operator's
//! document into a [`Policy`], the NMS asks it for each route's
//! [`RouteFilter`].
//!
//! For the direction *a opens flows to b*:
//!
//! 1. a `deny` rule whose `from` names a and whose `to` names b: nothing;
//! 2. otherwise, if any `allow` rule names (a, b): the union of their
//!    protocol/port items;
//! 3. otherwise the default: everything (`allow`) or nothing (`deny`).
//!
//! A route between a and b exists when either may open something towards
//! the other; each end is told what it may open and what it may be sent
//! (replies of allowed flows always pass).

use std::collections::{BTreeMap, BTreeSet};

use cyphonic_proto::policy::{PortRule, RouteFilter};

/// What pairs no rule names get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultAction {
    /// Everything: the overlay without a policy.
    #[default]
    Allow,
    Deny,
}

/// Whom a rule's `from` or `to` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every device (`*`).
    Any,
    /// One device, by device ID.
    Device(String),
    /// The members of a group (`group:NAME`).
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A deny rule refuses the pairs it names entirely, whatever the allow
    /// rules say; it has no ports.
    pub deny: bool,
    pub from: Vec<Selector>,
    pub to: Vec<Selector>,
    /// What an allow rule lets `from` open towards `to`.
    pub ports: Vec<PortRule>,
}

/// A whole policy, as the cloud stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub default: DefaultAction,
    /// Group name -> device IDs. A device may be in several groups.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    pub rules: Vec<Rule>,
}

/// What `from` may open towards `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    All,
    Only(BTreeSet<PortRule>),
}

impl Policy {
    /// Whether this policy is today's behaviour: everything allowed,
    /// nothing to filter.
    pub fn allows_everything(&self) -> bool {
        self.default == DefaultAction::Allow && self.rules.is_empty()
    }

    fn names(&self, sel: &[Selector], device: &str) -> bool {
        sel.iter().any(|s| match s {
            Selector::Any => true,
            Selector::Device(d) => d == device,
            Selector::Group(g) => self.groups.get(g).is_some_and(|m| m.contains(device)),
        })
    }

    fn access(&self, from: &str, to: &str) -> Access {
        let named: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| self.names(&r.from, from) && self.names(&r.to, to))
            .collect();
        if named.iter().any(|r| r.deny) {
            return Access::Only(BTreeSet::new());
        }
        if named.is_empty() {
            return match self.default {
                DefaultAction::Allow => Access::All,
                DefaultAction::Deny => Access::Only(BTreeSet::new()),
            };
        }
        let items: BTreeSet<PortRule> =
            named.iter().flat_map(|r| r.ports.iter().copied()).collect();
        if items.contains(&PortRule::ANY) {
            Access::All
        } else {
            Access::Only(items)
        }
    }

    /// The filter of the route between devices `me` and `peer`, from
    /// `me`'s side. Closed when neither may open anything towards the
    /// other (no route).
    pub fn filter(&self, me: &str, peer: &str) -> RouteFilter {
        let list = |a: Access| match a {
            Access::All => vec![PortRule::ANY],
            Access::Only(items) => items.into_iter().collect(),
        };
        RouteFilter {
            inbound: list(self.access(peer, me)),
            outbound: list(self.access(me, peer)),
        }
    }

    /// Distinct protocol/port items the rules name: every route's filter
    /// holds at most this many per direction.
    pub fn port_items(&self) -> usize {
        self.rules
            .iter()
            .flat_map(|r| r.ports.iter())
            .collect::<BTreeSet<_>>()
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(from: &[&str], to: &[&str], ports: &[&str]) -> Rule {
        let sel = |v: &[&str]| {
            v.iter()
                .map(|s| match *s {
                    "*" => Selector::Any,
                    s if s.starts_with("group:") => Selector::Group(s[6..].into()),
                    s => Selector::Device(s.into()),
                })
                .collect()
        };
        Rule {
            deny: false,
            from: sel(from),
            to: sel(to),
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    fn items(v: &[&str]) -> Vec<PortRule> {
        v.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn no_policy_allows_everything_both_ways() {
        let p = Policy::default();
        assert!(p.allows_everything());
        assert!(p.filter("n1", "n2").is_open());
    }

    #[test]
    fn default_deny_allows_only_what_a_rule_names_and_in_its_direction() {
        let p = Policy {
            default: DefaultAction::Deny,
            rules: vec![rule(&["n1"], &["n2"], &["icmp", "tcp/5201"])],
            ..Policy::default()
        };
        let f = p.filter("n1", "n2");
        assert_eq!(f.outbound, items(&["icmp", "tcp/5201"]));
        assert!(f.inbound.is_empty());
        assert_eq!(p.filter("n2", "n1"), f.reversed());
        assert!(p.filter("n1", "n3").is_closed());
        assert!(p.filter("n3", "n2").is_closed());
    }

    #[test]
    fn groups_stars_and_several_rules_add_up() {
        let mut groups = BTreeMap::new();
        groups.insert("laptops".into(), BTreeSet::from(["n1".into(), "n4".into()]));
        groups.insert("servers".into(), BTreeSet::from(["n2".into()]));
        let p = Policy {
            default: DefaultAction::Deny,
            groups,
            rules: vec![
                rule(&["group:laptops"], &["group:servers"], &["tcp/22"]),
                rule(&["n1"], &["*"], &["udp/5000-5010"]),
                rule(&["*"], &["n4"], &["*"]),
            ],
        };
        assert_eq!(
            p.filter("n1", "n2").outbound,
            items(&["tcp/22", "udp/5000-5010"])
        );
        assert_eq!(p.filter("n4", "n2").outbound, items(&["tcp/22"]));
        assert_eq!(p.filter("n4", "n2").inbound, items(&["*"]));
        assert!(p.filter("n2", "n3").is_closed());
        assert_eq!(p.port_items(), 3);
    }

    #[test]
    fn a_deny_rule_wins_and_default_allow_keeps_unnamed_pairs_open() {
        let mut deny = rule(&["n3"], &["*"], &[]);
        deny.deny = true;
        let p = Policy {
            default: DefaultAction::Allow,
            rules: vec![deny, rule(&["*"], &["n2"], &["tcp/22"])],
            ..Policy::default()
        };
        assert!(!p.allows_everything());
        // n3 may open nothing, but n1 may still open anything to n3.
        let f = p.filter("n1", "n3");
        assert_eq!(f.outbound, items(&["*"]));
        assert!(f.inbound.is_empty());
        // A named pair gets only what its rules say.
        assert_eq!(p.filter("n1", "n2").outbound, items(&["tcp/22"]));
        assert!(p.filter("n1", "n4").is_open());
        assert!(p.filter("n3", "n2").outbound.is_empty());
    }
}
