//! A node's name in the overlay, normalised once when it is made:
//! lowercase, without the trailing dot (`n2.cyphonic.internal`), so every
//! comparison and table lookup sees one spelling of each name.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Fqdn(String);

impl Fqdn {
    /// `name` normalised: DNS names compare case-insensitively (RFC 4343)
    /// and a trailing dot only marks the name absolute.
    pub fn new(name: &str) -> Self {
        Fqdn(name.trim_end_matches('.').to_ascii_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Fqdn {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Fqdn {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Fqdn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Fqdn {
    fn from(name: &str) -> Self {
        Fqdn::new(name)
    }
}

impl From<Fqdn> for String {
    fn from(name: Fqdn) -> String {
        name.0
    }
}

impl PartialEq<str> for Fqdn {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Fqdn {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Fqdn {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_name() {
        let a = Fqdn::new("N2.Cyphonic.Internal.");
        assert_eq!(a, "n2.cyphonic.internal");
        assert_eq!(a, Fqdn::new("n2.cyphonic.internal"));
        assert_eq!(a.to_string(), "n2.cyphonic.internal");
        let mut m = std::collections::BTreeMap::new();
        m.insert(a, 1);
        assert_eq!(m.get("n2.cyphonic.internal"), Some(&1));
        assert_eq!(Fqdn::new("."), "");
    }
}
