//! The operator's policy document (TOML) and its checks
//! (`docs/protocol.md` §5.15, README "Access policy").
//!
//! ```toml
//! default = "deny"            # or "allow" (the default)
//!
//! [groups]
//! laptops = ["n1", "n4"]      # device IDs; a device may be in several
//!
//! [[rule]]
//! from = ["group:laptops"]    # device IDs, group:NAME, or "*"
//! to = ["n2"]
//! ports = ["icmp", "tcp/5201", "udp/5000-5010"]   # optional: "*"
//!
//! [[rule]]
//! action = "deny"             # refuses the pairs it names, whatever else
//! from = ["n4"]
//! to = ["*"]
//! ```
//!
//! Every error names the line and the item. Device IDs must exist in the
//! store when the document is set ([`check_devices`]).

use std::collections::{BTreeMap, BTreeSet};

use cyphonic_cloud_core::policy::{DefaultAction, Policy, Rule, Selector};
use cyphonic_proto::policy::{PortRule, MAX_FILTER_RULES};
use serde::Deserialize;
use toml::Spanned;

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}: {message}")]
pub struct PolicyError {
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    default: Option<Spanned<String>>,
    #[serde(default)]
    groups: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    action: Option<Spanned<String>>,
    from: Vec<Spanned<String>>,
    to: Vec<Spanned<String>>,
    ports: Option<Vec<Spanned<String>>>,
}

/// A checked policy and the device IDs it names, for [`check_devices`].
#[derive(Debug, Clone)]
pub struct Parsed {
    pub policy: Policy,
    /// Each device ID named, with the line of its first mention.
    pub devices: BTreeMap<String, usize>,
}

fn line_of(doc: &str, at: usize) -> usize {
    doc[..at.min(doc.len())].matches('\n').count() + 1
}

/// Parses and checks a policy document: its shape, group names, selectors
/// (known groups, well-formed device IDs), protocol/port items.
pub fn parse(doc: &str) -> Result<Parsed, PolicyError> {
    let err = |at: usize, message: String| PolicyError {
        line: line_of(doc, at),
        message,
    };
    let d: Document = toml::from_str(doc).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        err(at, e.message().trim().to_owned())
    })?;
    let default = match &d.default {
        None => DefaultAction::Allow,
        Some(s) => match s.get_ref().as_str() {
            "allow" => DefaultAction::Allow,
            "deny" => DefaultAction::Deny,
            other => {
                return Err(err(
                    s.span().start,
                    format!("default = {other:?}: write \"allow\" or \"deny\""),
                ))
            }
        },
    };
    let mut devices: BTreeMap<String, usize> = BTreeMap::new();
    let mut device = |s: &Spanned<String>, what: &str| -> Result<String, PolicyError> {
        let id = s.get_ref();
        if !crate::config::is_dns_label(id) {
            return Err(err(
                s.span().start,
                format!("{what}: {id:?} is not a device ID, group:NAME or \"*\""),
            ));
        }
        devices
            .entry(id.clone())
            .or_insert_with(|| line_of(doc, s.span().start));
        Ok(id.clone())
    };
    let mut groups = BTreeMap::new();
    for (name, members) in &d.groups {
        if !crate::config::is_dns_label(name.get_ref()) {
            return Err(err(
                name.span().start,
                format!(
                    "group {:?}: use 1 to 63 lowercase letters, digits and '-'",
                    name.get_ref()
                ),
            ));
        }
        let mut set = BTreeSet::new();
        for m in members {
            set.insert(device(m, &format!("group {}", name.get_ref()))?);
        }
        groups.insert(name.get_ref().clone(), set);
    }
    let mut rules = Vec::new();
    let mut items = BTreeSet::new();
    for (i, r) in d.rule.iter().enumerate() {
        let at = r.span().start;
        let r = r.get_ref();
        let n = i + 1;
        let deny = match r
            .action
            .as_ref()
            .map(|a| (a.get_ref().as_str(), a.span().start))
        {
            None | Some(("allow", _)) => false,
            Some(("deny", _)) => true,
            Some((other, at)) => {
                return Err(err(
                    at,
                    format!("rule {n}: action = {other:?}: write \"allow\" or \"deny\""),
                ))
            }
        };
        let mut selectors = |list: &[Spanned<String>], what: &str| {
            if list.is_empty() {
                return Err(err(at, format!("rule {n}: `{what}` names nobody")));
            }
            list.iter()
                .map(|s| {
                    let text = s.get_ref().as_str();
                    if text == "*" {
                        Ok(Selector::Any)
                    } else if let Some(g) = text.strip_prefix("group:") {
                        if groups.contains_key(g) {
                            Ok(Selector::Group(g.to_owned()))
                        } else {
                            Err(err(
                                s.span().start,
                                format!("rule {n} `{what}`: unknown group {g:?} (define it under [groups])"),
                            ))
                        }
                    } else {
                        device(s, &format!("rule {n} `{what}`")).map(Selector::Device)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let from = selectors(&r.from, "from")?;
        let to = selectors(&r.to, "to")?;
        let ports = match (&r.ports, deny) {
            (Some(p), true) => {
                let at = p.first().map_or(at, |s| s.span().start);
                return Err(err(
                    at,
                    format!("rule {n}: a deny rule refuses the whole pair and has no `ports`"),
                ));
            }
            (None, _) => {
                if deny {
                    Vec::new()
                } else {
                    vec![PortRule::ANY]
                }
            }
            (Some(p), false) => {
                if p.is_empty() {
                    return Err(err(
                        at,
                        format!("rule {n}: `ports` is empty (leave it out for every port)"),
                    ));
                }
                p.iter()
                    .map(|s| {
                        s.get_ref()
                            .parse::<PortRule>()
                            .map_err(|e| err(s.span().start, format!("rule {n} `ports`: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        items.extend(ports.iter().copied());
        if items.len() > MAX_FILTER_RULES {
            return Err(err(
                at,
                format!(
                    "rule {n}: the policy names more than {MAX_FILTER_RULES} distinct protocol/port \
                     items; merge port ranges (e.g. tcp/8000-8010)"
                ),
            ));
        }
        rules.push(Rule {
            deny,
            from,
            to,
            ports,
        });
    }
    Ok(Parsed {
        policy: Policy {
            default,
            groups,
            rules,
        },
        devices,
    })
}

/// Refuses a document that names a device the store does not know.
pub fn check_devices(parsed: &Parsed, known: &BTreeSet<String>) -> Result<(), PolicyError> {
    match parsed.devices.iter().find(|(d, _)| !known.contains(*d)) {
        Some((d, &line)) => Err(PolicyError {
            line,
            message: format!(
                "unknown device {d:?} (`cyphonic cloud device list` shows the devices)"
            ),
        }),
        None => Ok(()),
    }
}

/// The document, printed back in a normal form (for `policy show` when
/// the stored text is wanted as the NMS reads it).
pub fn describe(p: &Policy) -> String {
    let sel = |s: &[Selector]| {
        s.iter()
            .map(|s| match s {
                Selector::Any => "*".to_owned(),
                Selector::Device(d) => d.clone(),
                Selector::Group(g) => format!("group:{g}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "default: {}\n",
        match p.default {
            DefaultAction::Allow => "allow",
            DefaultAction::Deny => "deny",
        }
    );
    for (g, m) in &p.groups {
        out += &format!(
            "group {g}: {}\n",
            m.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for (i, r) in p.rules.iter().enumerate() {
        if r.deny {
            out += &format!("rule {}: deny {} -> {}\n", i + 1, sel(&r.from), sel(&r.to));
        } else {
            let ports: Vec<String> = r.ports.iter().map(|p| p.to_string()).collect();
            out += &format!(
                "rule {}: allow {} -> {} on {}\n",
                i + 1,
                sel(&r.from),
                sel(&r.to),
                ports.join(", ")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"default = "deny"

[groups]
laptops = ["n1", "n4"]

[[rule]]
from = ["group:laptops"]
to = ["n2"]
ports = ["icmp", "tcp/5201"]

[[rule]]
action = "deny"
from = ["n4"]
to = ["*"]
"#;

    #[test]
    fn a_document_parses_into_the_policy_it_says() {
        let p = parse(DOC).unwrap();
        assert_eq!(p.policy.default, DefaultAction::Deny);
        assert_eq!(p.policy.rules.len(), 2);
        assert!(p.policy.rules[1].deny);
        assert_eq!(
            p.devices.keys().cloned().collect::<Vec<_>>(),
            ["n1", "n2", "n4"]
        );
        let f = p.policy.filter("n1", "n2");
        assert_eq!(f.outbound.len(), 2);
        assert!(p.policy.filter("n4", "n2").outbound.is_empty());
        assert_eq!(
            describe(&p.policy),
            "default: deny\ngroup laptops: n1, n4\nrule 1: allow group:laptops -> n2 on icmp, tcp/5201\nrule 2: deny n4 -> *\n"
        );
        // An empty document is today's behaviour.
        assert!(parse("").unwrap().policy.allows_everything());
    }

    #[test]
    fn each_mistake_is_refused_naming_its_line_and_item() {
        let cases = [
            (DOC.replace("\"tcp/5201\"", "\"tcp/99999\""), 9, "tcp/99999"),
            (
                DOC.replace("group:laptops", "group:phones"),
                7,
                "unknown group \"phones\"",
            ),
            (
                DOC.replace("default = \"deny\"", "default = \"maybe\""),
                1,
                "\"maybe\"",
            ),
            (
                DOC.replace("action = \"deny\"", "action = \"drop\""),
                12,
                "rule 2",
            ),
            (DOC.replace("to = [\"n2\"]", "to = [\"N 2\"]"), 8, "\"N 2\""),
            (
                DOC.replace("to = [\"*\"]", "to = [\"*\"]\nports = [\"icmp\"]"),
                15,
                "no `ports`",
            ),
            (DOC.replace("ports = [", "port = ["), 9, "port"),
            (
                DOC.replace("from = [\"group:laptops\"]", "from = []"),
                6,
                "rule 1: `from` names nobody",
            ),
        ];
        for (doc, line, needle) in cases {
            let e = parse(&doc).unwrap_err();
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        let too_many: String = (1..=33)
            .map(|p| format!("[[rule]]\nfrom = [\"*\"]\nto = [\"*\"]\nports = [\"tcp/{p}\"]\n"))
            .collect();
        let e = parse(&too_many).unwrap_err();
        assert!(e.message.contains("more than 32"), "{e}");
    }

    #[test]
    fn unknown_devices_are_refused_with_their_line() {
        let p = parse(DOC).unwrap();
        let known: BTreeSet<String> = ["n1", "n2"].iter().map(|s| s.to_string()).collect();
        let e = check_devices(&p, &known).unwrap_err();
        assert_eq!((e.line, e.message.contains("\"n4\"")), (4, true), "{e}");
        let all: BTreeSet<String> = ["n1", "n2", "n4"].iter().map(|s| s.to_string()).collect();
        assert!(check_devices(&p, &all).is_ok());
    }
}
