//! The Windows Name Resolution Policy Table rule that sends the overlay
//! domain, and nothing else, to the node's resolver (`docs/windows.md`).
//!
//! The rule's values and the choice of which rules are ours are decided
//! here, over a [`RuleStore`]: the registry on Windows, a map in tests. So
//! the logic is tested on every OS, and against wine's registry as a
//! Windows binary.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// Where the local NRPT rules live, under `HKEY_LOCAL_MACHINE`.
pub const POLICY_KEY: &str =
    r"SYSTEM\CurrentControlSet\Services\Dnscache\Parameters\DnsPolicyConfig";

/// Every rule key this node writes starts with this.
pub const KEY_PREFIX: &str = "cyphonic-";

/// Every rule this node writes has a `Comment` starting with this; a key
/// with our prefix but another comment is not ours and stays.
pub const COMMENT_PREFIX: &str = "cyphonic node";

/// `ConfigOptions`: use the servers in `GenericDNSServers`.
pub const CONFIG_GENERIC_DNS: u32 = 0x8;

/// A registry value of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Dword(u32),
    String(String),
    MultiString(Vec<String>),
}

/// The store the rules live in: subkeys of [`POLICY_KEY`] with values.
pub trait RuleStore {
    /// The names of the rules (subkeys) present.
    fn rules(&mut self) -> io::Result<Vec<String>>;
    /// One value of a rule, `None` when the rule or the value is absent.
    fn value(&mut self, rule: &str, name: &str) -> io::Result<Option<Value>>;
    /// Creates the rule (or opens it) and sets these values.
    fn write(&mut self, rule: &str, values: &[(&str, Value)]) -> io::Result<()>;
    /// Deletes the rule and its values; absent is not an error.
    fn delete(&mut self, rule: &str) -> io::Result<()>;
    /// Tells the DNS client to read the table again.
    fn refresh(&mut self) {}
}

/// The rule for one node: its key name and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub key: String,
    pub values: Vec<(&'static str, Value)>,
}

/// The rule sending `.domain` to `server`, for the node whose state lives
/// in `state_dir` (two nodes on one host get two rules).
pub fn rule(domain: &str, server: IpAddr, state_dir: &Path) -> Rule {
    let domain = domain.trim_matches('.');
    Rule {
        key: key_for(state_dir),
        values: vec![
            ("Version", Value::Dword(2)),
            ("Name", Value::MultiString(vec![format!(".{domain}")])),
            ("GenericDNSServers", Value::String(server.to_string())),
            ("ConfigOptions", Value::Dword(CONFIG_GENERIC_DNS)),
            ("IPSECCARestriction", Value::String(String::new())),
            (
                "Comment",
                Value::String(format!("{COMMENT_PREFIX} {}", state_dir.display())),
            ),
            ("DisplayName", Value::String(format!("cyphonic .{domain}"))),
        ],
    }
}

/// The rule key of the node whose state lives in `state_dir`.
pub fn key_for(state_dir: &Path) -> String {
    format!(
        "{KEY_PREFIX}{:016x}",
        crate::stable_hash(state_dir.to_string_lossy().as_bytes())
    )
}

/// Whether the rule named `key` is one this program wrote.
fn is_ours(store: &mut impl RuleStore, key: &str) -> io::Result<bool> {
    if !key.starts_with(KEY_PREFIX) {
        return Ok(false);
    }
    Ok(matches!(
        store.value(key, "Comment")?,
        Some(Value::String(c)) if c.starts_with(COMMENT_PREFIX)
    ))
}

/// Deletes the rules a run of this node that did not stop cleanly left
/// behind (any rule of ours for this state directory), and returns their
/// names. Rules of other programs, and of other nodes' state directories,
/// stay.
pub fn recover(store: &mut impl RuleStore, state_dir: &Path) -> io::Result<Vec<String>> {
    let own = key_for(state_dir);
    let mut removed = Vec::new();
    for key in store.rules()? {
        if key.eq_ignore_ascii_case(&own) && is_ours(store, &key)? {
            store.delete(&key)?;
            removed.push(key);
        }
    }
    if !removed.is_empty() {
        store.refresh();
    }
    Ok(removed)
}

/// Writes `rule` (after [`recover`]) and makes the DNS client read it.
pub fn install(store: &mut impl RuleStore, rule: &Rule) -> io::Result<()> {
    store.write(&rule.key, &rule.values)?;
    store.refresh();
    Ok(())
}

/// Removes `rule` if it is still ours.
pub fn remove(store: &mut impl RuleStore, rule: &Rule) -> io::Result<()> {
    if is_ours(store, &rule.key)? {
        store.delete(&rule.key)?;
        store.refresh();
    }
    Ok(())
}

/// A [`RuleStore`] in memory: for tests, and to show what would be written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStore {
    pub rules: BTreeMap<String, BTreeMap<String, Value>>,
    pub refreshes: usize,
}

impl RuleStore for MemoryStore {
    fn rules(&mut self) -> io::Result<Vec<String>> {
        Ok(self.rules.keys().cloned().collect())
    }

    fn value(&mut self, rule: &str, name: &str) -> io::Result<Option<Value>> {
        Ok(self.rules.get(rule).and_then(|r| r.get(name)).cloned())
    }

    fn write(&mut self, rule: &str, values: &[(&str, Value)]) -> io::Result<()> {
        let r = self.rules.entry(rule.to_owned()).or_default();
        for (name, value) in values {
            r.insert((*name).to_owned(), value.clone());
        }
        Ok(())
    }

    fn delete(&mut self, rule: &str) -> io::Result<()> {
        self.rules.remove(rule);
        Ok(())
    }

    fn refresh(&mut self) {
        self.refreshes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn state() -> PathBuf {
        PathBuf::from(r"C:\ProgramData\cyphonic")
    }

    #[test]
    fn the_rule_names_only_the_overlay_domain_and_our_resolver() {
        let r = rule(
            ".cyphonic.internal.",
            "127.0.0.153".parse().unwrap(),
            &state(),
        );
        assert!(r.key.starts_with(KEY_PREFIX));
        let get = |name: &str| r.values.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(
            get("Name"),
            Value::MultiString(vec![".cyphonic.internal".into()])
        );
        assert_eq!(
            get("GenericDNSServers"),
            Value::String("127.0.0.153".into())
        );
        assert_eq!(get("ConfigOptions"), Value::Dword(8));
        assert_eq!(get("Version"), Value::Dword(2));
        assert!(matches!(get("Comment"), Value::String(c) if c.starts_with(COMMENT_PREFIX)));
    }

    #[test]
    fn install_then_remove_leaves_the_table_as_it_was() {
        let mut store = MemoryStore::default();
        store
            .write(
                "{corporate-vpn}",
                &[("Name", Value::MultiString(vec![".corp".into()]))],
            )
            .unwrap();
        let before = store.rules.clone();
        let r = rule(
            "cyphonic.internal",
            "127.0.0.153".parse().unwrap(),
            &state(),
        );
        assert!(recover(&mut store, &state()).unwrap().is_empty());
        install(&mut store, &r).unwrap();
        assert_eq!(store.rules.len(), 2);
        assert_eq!(store.refreshes, 1);
        remove(&mut store, &r).unwrap();
        assert_eq!(store.rules, before);
        assert_eq!(store.refreshes, 2);
    }

    #[test]
    fn a_crashed_runs_rule_is_removed_at_the_next_start_and_no_other() {
        let mut store = MemoryStore::default();
        let ours = rule(
            "cyphonic.internal",
            "127.0.0.153".parse().unwrap(),
            &state(),
        );
        install(&mut store, &ours).unwrap();
        // Another node's rule on the same host, a rule of another program,
        // and a key with our prefix that someone else wrote.
        let other_node = rule(
            "cyphonic.internal",
            "127.0.0.154".parse().unwrap(),
            Path::new(r"D:\second"),
        );
        install(&mut store, &other_node).unwrap();
        store
            .write(
                "{5abe529b-675b-4486-8459-25a634dacc23}",
                &[("Comment", Value::String("x".into()))],
            )
            .unwrap();
        store
            .write(
                &format!("{KEY_PREFIX}lookalike"),
                &[("Comment", Value::String("mine".into()))],
            )
            .unwrap();
        // The process dies here: nothing removes `ours`. The next start:
        let removed = recover(&mut store, &state()).unwrap();
        assert_eq!(removed, vec![ours.key.clone()]);
        assert!(store.rules.contains_key(&other_node.key));
        assert!(store
            .rules
            .contains_key("{5abe529b-675b-4486-8459-25a634dacc23}"));
        assert!(store.rules.contains_key(&format!("{KEY_PREFIX}lookalike")));
        assert_eq!(store.rules.len(), 3);
    }

    #[test]
    fn remove_leaves_a_rule_someone_else_rewrote() {
        let mut store = MemoryStore::default();
        let r = rule(
            "cyphonic.internal",
            "127.0.0.153".parse().unwrap(),
            &state(),
        );
        install(&mut store, &r).unwrap();
        store
            .write(
                &r.key,
                &[("Comment", Value::String("taken over by an admin".into()))],
            )
            .unwrap();
        remove(&mut store, &r).unwrap();
        assert!(store.rules.contains_key(&r.key));
    }

    #[test]
    fn keys_differ_per_state_directory_and_are_stable() {
        assert_eq!(key_for(&state()), key_for(&state()));
        assert_ne!(key_for(&state()), key_for(Path::new(r"D:\second")));
        assert_eq!(crate::stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(crate::stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
